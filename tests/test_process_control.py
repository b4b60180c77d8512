"""Pid files outlive their processes and pids are reused: the rehearsal's process control (the pm2 stand-in
and the reference service's) must signal only a process it started, never whoever holds that pid now."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from runbook import processes
from runbook.rehearsal import service_ctl
from runbook.rehearsal.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_pid_reused_by_a_thread_or_a_process_of_another_session_is_never_signalled(tmp_path):
    got = []
    old = signal.signal(signal.SIGTERM, lambda *a: got.append("SIGTERM"))
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    stranger = subprocess.Popen(SLEEPER)  # this process's session: not a leader
    try:
        sup = Supervisor(tmp_path / "sup")
        sup.home.mkdir()
        for pid in (t.native_id, stranger.pid):  # what a stale pid file may name after reuse
            sup.pidfile("WELLO_BE").write_text(str(pid))
            assert sup.pid("WELLO_BE") is None and sup.stop("WELLO_BE") is False
            assert not sup.pidfile("WELLO_BE").exists()
            pidfile = tmp_path / "service.pid"
            pidfile.write_text(str(pid))
            assert service_ctl.stop(pidfile) is False and not pidfile.exists()
        assert got == [] and stranger.poll() is None  # nobody was signalled
    finally:
        signal.signal(signal.SIGTERM, old)
        stop.set()
        stranger.kill()
        stranger.wait()


def test_the_process_it_started_is_stopped_with_its_group(tmp_path):
    sup = Supervisor(tmp_path / "sup")
    pid = sup.start("WELLO_BE", SLEEPER)
    assert processes.leader_alive(pid) and sup.pid("WELLO_BE") == pid
    assert sup.stop("WELLO_BE", timeout=10) is True
    assert not processes.leader_alive(pid) and sup.pid("WELLO_BE") is None
    assert not sup.pidfile("WELLO_BE").exists()
