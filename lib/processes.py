"""Process groups named by pid files: whether the process a pid file names is still the one that wrote it."""

from __future__ import annotations

from pathlib import Path


def leader_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process leading its own session, as one started with ``start_new_session``
    does. A pid file outlives its process, and the pid is reused: by another process, or by a thread of one
    (a thread's id is a pid to kill(2), which then signals that whole process). Signalling such a pid would
    hit a stranger -- seen when a rehearsal's SIGTERM reached a test runner -- so it is not ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    # after the command: state, ppid, process group, session
    return stat[0] not in ("Z", "X") and int(stat[2]) == pid and int(stat[3]) == pid
