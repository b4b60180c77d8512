"""A small process supervisor for rehearsals: what ``pm2`` is to the real Welno backend.

It keeps named processes running detached (their own session, like pm2's daemon children), remembers
how to start them, and restarts them by name -- the runbook calls it only through the restart command
in the params, exactly as it calls ``pm2 restart WELLO_BE`` in production::

    python -m runbook.rehearsal.supervisor --home data/rehearsal/supervisor start WELLO_BE -- <command...>
    python -m runbook.rehearsal.supervisor --home data/rehearsal/supervisor restart WELLO_BE
    python -m runbook.rehearsal.supervisor --home data/rehearsal/supervisor stop WELLO_BE
    python -m runbook.rehearsal.supervisor --home data/rehearsal/supervisor status

Like pm2, ``restart`` returns as soon as the new process is started: it does not wait for the service
to be healthy (the runbook checks health itself). ``<home>/<name>.pid`` holds the live pid (for phase
08's memory reading). A rehearsal can make ``restart`` misbehave with ``<home>/<name>.faults.json``:
``{"hang_s": 600}`` starts the process, then hangs (with a child of its own, as a stuck shell would),
``{"hang_s": 600, "times": 1}`` does so once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..processes import leader_alive


class Supervisor:
    def __init__(self, home: str | os.PathLike):
        self.home = Path(home)

    def _spec_path(self, name: str) -> Path:
        return self.home / f"{name}.json"

    def pidfile(self, name: str) -> Path:
        return self.home / f"{name}.pid"

    def spec(self, name: str) -> dict:
        p = self._spec_path(name)
        if not p.exists():
            raise SystemExit(f"[supervisor] unknown process {name!r}: start it first (no {p})")
        return json.loads(p.read_text(encoding="utf-8"))

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self.pidfile(name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if leader_alive(pid) else None  # a reused pid is not ours

    def start(self, name: str, command: list[str], cwd: str = "") -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        # like pm2, a restart keeps the environment the process was started with (no variable exported
        # since then reaches it); only the names are kept on disk, never a value
        spec = {"name": name, "command": command, "cwd": cwd or os.getcwd(), "env_names": sorted(os.environ)}
        tmp = self._spec_path(name).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(spec, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, self._spec_path(name))
        return self._launch(spec)

    def _launch(self, spec: dict) -> int:
        log = self.home / f"{spec['name']}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                spec["command"],
                cwd=spec["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # detached: outlives this command, as pm2's children do
                env={k: v for k, v in os.environ.items() if k in set(spec.get("env_names") or os.environ)},
            )
        self.pidfile(spec["name"]).write_text(str(proc.pid))
        return proc.pid

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        pid = self.pid(name)
        if pid is None:
            self.pidfile(name).unlink(missing_ok=True)
            return False
        try:  # the group only: the pid was checked to lead its own session, as _launch started it
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.time() + timeout
        while leader_alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if leader_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        self.pidfile(name).unlink(missing_ok=True)  # only once the process is gone
        return True

    def restart(self, name: str) -> int:
        spec = self.spec(name)
        self.stop(name)
        pid = self._launch(spec)
        self._misbehave(name)
        return pid

    def _misbehave(self, name: str) -> None:
        """Rehearsal faults of the restart command itself (a hung pm2, a stuck shell)."""
        f = self.home / f"{name}.faults.json"
        if not f.exists():
            return
        faults = json.loads(f.read_text(encoding="utf-8") or "{}")
        if not faults.get("hang_s"):
            return
        if "times" in faults:
            if int(faults["times"]) <= 0:
                return
            faults["times"] = int(faults["times"]) - 1
            f.write_text(json.dumps(faults), encoding="utf-8")
        # a child in this command's process group, as a stuck script would leave behind
        child = subprocess.Popen(["sleep", str(float(faults["hang_s"]))])
        child.wait()

    def status(self) -> list[dict]:
        rows = []
        for p in sorted(self.home.glob("*.json")):
            if p.name.endswith(".faults.json"):
                continue
            name = p.stem
            rows.append({"name": name, "pid": self.pid(name), "online": self.pid(name) is not None})
        return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runbook.rehearsal.supervisor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--home", required=True, help="folder of the supervisor's state (like PM2_HOME)")
    ap.add_argument("action", choices=["start", "restart", "stop", "status"])
    ap.add_argument("name", nargs="?", default="")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="start: -- the command to run")
    args = ap.parse_args(argv)
    sup = Supervisor(args.home)
    if args.action == "status":
        for row in sup.status():
            print(f"{row['name']:<16} {'online' if row['online'] else 'stopped':<8} pid {row['pid']}")
        return 0
    if not args.name:
        ap.error(f"{args.action} needs a process name")
    if args.action == "start":
        cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not cmd:
            ap.error("start NAME -- command ...")
        print(f"[supervisor] {args.name} started, pid {sup.start(args.name, cmd)}")
    elif args.action == "restart":
        print(f"[supervisor] {args.name} restarted, pid {sup.restart(args.name)}", flush=True)
    else:
        print(f"[supervisor] {args.name} {'stopped' if sup.stop(args.name) else 'was not running'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
