"""Start, stop and restart the reference RAG service with a pid file (the demo's stand-in for
``pm2 restart WELLO_BE``). Production params name the real restart command instead.

    python -m runbook.rehearsal.service_ctl restart --config <config.env> --port 8790 --pidfile <dir>/service.pid
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..processes import leader_alive


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
            [
                sys.executable,
                "-m",
                "runbook.rehearsal.reference_service",
                "--config",
                config,
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=out,
            start_new_session=True,
            env=os.environ.copy(),
        )
    pidfile.write_text(str(proc.pid))
    return proc.pid


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runbook.rehearsal.service_ctl",
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
