"""Start, stop and restart the reference RAG service with a pid file (the demo's stand-in for
``pm2 restart WELLO_BE``). Production params name the real restart command instead.

    python -m runbook.service_ctl restart --config <config.env> --port 8790 --pidfile <dir>/service.pid
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
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


def stop(pidfile: Path, timeout: float = 10.0) -> bool:
    """Stop the process group the pid file names, if it is still the one this module started."""
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().strip())
    except ValueError:
        pidfile.unlink(missing_ok=True)
        return False
    if not leader_alive(pid):
        pidfile.unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except OSError:
            break
        deadline = time.time() + wait
        while leader_alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if not leader_alive(pid):
            break
    pidfile.unlink(missing_ok=True)
    return True


def start(config: str, port: int, pidfile: Path, log: Path | None = None) -> int:
    log = log or pidfile.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runbook.rag_service", "--config", config, "--port", str(port)],
            stdout=out,
            stderr=out,
            start_new_session=True,
            env=os.environ.copy(),
        )
    pidfile.write_text(str(proc.pid))
    return proc.pid


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runbook.service_ctl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("action", choices=["start", "stop", "restart"])
    ap.add_argument("--config", default="")
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--pidfile", required=True)
    args = ap.parse_args(argv)
    pidfile = Path(args.pidfile)
    if args.action in ("stop", "restart"):
        stop(pidfile)
    if args.action in ("start", "restart"):
        if not args.config:
            print("error: --config is required to start", file=sys.stderr)
            return 2
        pid = start(args.config, args.port, pidfile)
        print(f"started pid {pid} on port {args.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
