"""Phase 06: switch the RAG service to the local index, or back, without ever half-writing its config.

Steps: preconditions (phase 05's gates passed for the current export, disk below the limit, the cloud
key still there for a rollback) -> back up ``config.env`` to ``config.env.backup`` (owner-only) -> write
the new ``config.env`` atomically (temp file + rename) -> run the restart command with a timeout -> wait
for health -> smoke queries. If any step after the backup fails: restore the backup byte for byte,
restart, check the service answers again, and fail saying what happened.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, credentials, runlog
from .paths import Layout


class CutoverFailed(RuntimeError):
    pass


def update_env_text(text: str, changes: dict) -> str:
    """Set KEY=value lines, keeping every other line (comments, keys, order) as it was."""
    lines = text.splitlines()
    done = set()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*(export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if m and m.group(2) in changes:
            comment = ""
            c = re.search(r"\s+#.*$", line.split("=", 1)[1])
            if c:
                comment = c.group(0)
            lines[i] = f"{m.group(1) or ''}{m.group(2)}={changes[m.group(2)]}{comment}"
            done.add(m.group(2))
    lines += [f"{k}={v}" for k, v in changes.items() if k not in done]
    return "\n".join(lines) + "\n"


def env_flag(path: Path) -> bool | None:
    from dotenv import dotenv_values

    v = (dotenv_values(path).get("USE_LOCAL_VECTOR_DB") or "").strip().lower()
    return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(v)


def http_json(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        headers={"content-type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {"detail": e.read().decode("utf-8", "replace")[:300]}


@dataclass
class Cutover:
    config_env: Path
    restart_command: str
    health_url: str
    query_url: str = ""
    smoke_questions: list = field(default_factory=list)
    health_arm_key: str = "arm"
    restart_timeout_s: float = 60.0
    health_timeout_s: float = 90.0
    layout: Layout | None = None
    steps: list = field(default_factory=list)

    @property
    def backup_path(self) -> Path:
        return self.config_env.with_name(self.config_env.name + ".backup")

    def step(self, name: str, ok: bool, detail: str):
        self.steps.append(
            {
                "step": name,
                "ok": ok,
                "detail": credentials.scrub(detail),
                "at": dt.datetime.now(dt.UTC).strftime("%H:%M:%S"),
            }
        )
        if self.layout:
            runlog.log(
                self.layout,
                "06_cutover",
                f"{name}: {'ok' if ok else 'FAILED'}",
                detail=credentials.scrub(detail),
            )

    # --- the pieces
    def backup(self) -> bytes:
        original = self.config_env.read_bytes()
        atomic.write_bytes(self.backup_path, original, mode=0o600)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        atomic.write_bytes(
            self.config_env.with_name(f"{self.config_env.name}.backup.{stamp}"), original, mode=0o600
        )
        self.step("backup", True, f"{self.config_env} -> {self.backup_path} (0600)")
        return original

    def write(self, changes: dict):
        mode = self.config_env.stat().st_mode & 0o777
        new = update_env_text(self.config_env.read_text(encoding="utf-8"), changes)
        atomic.write_text(self.config_env, new, mode=mode)
        self.step("write config.env atomically", True, ", ".join(f"{k}={v}" for k, v in changes.items()))

    def restart(self):
        try:
            r = subprocess.run(
                shlex.split(self.restart_command),
                capture_output=True,
                text=True,
                timeout=self.restart_timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise CutoverFailed(f"restart command timed out after {self.restart_timeout_s:.0f} s") from None
        except OSError as e:
            raise CutoverFailed(f"restart command could not run: {e}") from None
        if r.returncode != 0:
            raise CutoverFailed(f"restart command exited {r.returncode}: {(r.stderr or r.stdout)[-300:]}")
        self.step("restart", True, self.restart_command)

    def wait_health(self, expected_local: bool) -> dict:
        deadline = time.time() + self.health_timeout_s
        last = "no answer"
        while time.time() < deadline:
            try:
                status, body = http_json(self.health_url, timeout=3)
                if status == 200:
                    arm = body.get(self.health_arm_key) if self.health_arm_key else None
                    want = "local" if expected_local else "cloud"
                    if not self.health_arm_key or arm == want:
                        self.step("health", True, json.dumps(body, ensure_ascii=False))
                        return body
                    last = f"healthy but serving the {arm} arm, expected {want}"
                else:
                    last = f"HTTP {status}"
            except OSError as e:
                last = type(e).__name__
            time.sleep(0.5)
        raise CutoverFailed(f"service not healthy within {self.health_timeout_s:.0f} s ({last})")

    def smoke(self, expected_local: bool):
        if not self.query_url:
            self.step("smoke queries", True, "no query_url: health only")
            return
        for q in self.smoke_questions:
            status, body = http_json(self.query_url, {"question": q}, timeout=30)
            if status != 200 or not body.get("results"):
                raise CutoverFailed(f"smoke query {q!r} failed: HTTP {status} {str(body)[:200]}")
            if self.health_arm_key and body.get("arm") != ("local" if expected_local else "cloud"):
                raise CutoverFailed(f"smoke query {q!r} answered from the {body.get('arm')} arm")
        self.step("smoke queries", True, f"{len(self.smoke_questions)} answered")

    # --- the whole move
    def switch(self, to_local: bool) -> list:
        original = self.backup()
        try:
            self.write({"USE_LOCAL_VECTOR_DB": "true" if to_local else "false"})
            self.restart()
            self.wait_health(to_local)
            self.smoke(to_local)
            return self.steps
        except CutoverFailed as e:
            self.step("switch", False, str(e))
            rolled = self.restore(original)
            raise CutoverFailed(
                f"{'cutover' if to_local else 'rollback'} failed: {e}. Automatic rollback: {rolled}"
            ) from None

    def restore(self, original: bytes) -> str:
        atomic.write_bytes(self.config_env, original, mode=self.config_env.stat().st_mode & 0o777)
        self.step(
            "restore config.env from backup", self.config_env.read_bytes() == original, "byte-identical"
        )
        was_local = bool(env_flag(self.config_env))
        try:
            self.restart()
            self.wait_health(was_local)
            self.smoke(was_local)
        except CutoverFailed as e:
            self.step("service after restore", False, str(e))
            return f"config.env restored byte-identical, BUT the service did not come back: {e}. Act now."
        return f"config.env restored byte-identical; the service answers from the {'local' if was_local else 'cloud'} arm again"


def preconditions(
    base_path: str, config_env: Path, cloud_key_env: str, export_sha: str, max_disk_pct: float, direction: str
) -> list[dict]:
    from dotenv import dotenv_values

    from . import handoff

    rows = []
    if direction == "cutover":
        h05 = handoff.read_optional("05_ab_compare", base_path=base_path)
        rows.append(
            {
                "check": "phase 05 gates passed",
                "ok": bool(h05 and h05.get("passed")),
                "detail": "passed" if h05 and h05.get("passed") else "run phase 05 until its gates pass",
            }
        )
        rows.append(
            {
                "check": "gates were for the current export",
                "ok": bool(h05) and h05.get("export_manifest_sha256") == export_sha,
                "detail": f"phase 05 export {str((h05 or {}).get('export_manifest_sha256'))[:12]}…, current {export_sha[:12]}…",
            }
        )
    layout = Layout.from_params(base_path)
    du = shutil.disk_usage(layout.base)
    pct = du.used / du.total * 100
    rows.append(
        {"check": f"disk below {max_disk_pct}%", "ok": pct < max_disk_pct, "detail": f"{pct:.1f}% used"}
    )
    if str(config_env) in ("", "."):
        detail = "config_env_path is empty: name the service's config.env (or service_mode: reference for the demo)"
    elif not config_env.is_file():
        detail = f"{config_env} is not a file: check config_env_path"
    else:
        detail = str(config_env)
    rows.append(
        {
            "check": "config.env exists",
            "ok": config_env.is_file(),
            "detail": detail,
        }
    )
    in_file = bool(config_env.is_file() and (dotenv_values(config_env).get(cloud_key_env)))
    in_env = bool(credentials.get_secret(cloud_key_env, required=False))
    rows.append(
        {
            "check": "cloud key kept for rollback",
            "ok": in_file or in_env,
            "detail": f"{cloud_key_env} "
            + ("in config.env" if in_file else "in the environment" if in_env else "missing"),
        }
    )
    return rows


def key_backup_check(config_env: Path, cloud_key_env: str) -> dict:
    """The cloud key stays in config.env.backup (never printed): presence and file mode only."""
    from dotenv import dotenv_values

    b = config_env.with_name(config_env.name + ".backup")
    present = b.exists() and bool(dotenv_values(b).get(cloud_key_env))
    return {
        "backup": str(b),
        "exists": b.exists(),
        f"{cloud_key_env} present": present,
        "mode": oct(b.stat().st_mode & 0o777) if b.exists() else "",
    }


# --- the demo's stand-in backend (the reference service) -----------------------------------------
def reference_backend(layout: Layout, entries: dict, port: int) -> dict:
    """Write the stand-in backend's config.env (cloud arm: the state before the migration), start the
    reference service on it, and return the commands and URLs phase 06 uses."""
    from . import rag_switch, service_ctl

    d = layout.base / "service"
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "config.env"
    pidfile = d / "service.pid"
    service_ctl.stop(pidfile)
    rag_switch.write_config(cfg, {**entries, "USE_LOCAL_VECTOR_DB": "false"})
    restart = (
        f"{shlex.quote(sys.executable)} -m runbook.service_ctl restart --config {shlex.quote(str(cfg))} "
        f"--port {port} --pidfile {shlex.quote(str(pidfile))}"
    )
    service_ctl.start(str(cfg), port, pidfile)
    base = f"http://127.0.0.1:{port}"
    atomic.write_json(d / "service.json", {"port": port, "pidfile": str(pidfile), "config_env": str(cfg)})
    return {
        "config_env": str(cfg),
        "restart_command": restart,
        "health_url": base + "/health",
        "query_url": base + "/query",
        "metrics_url": base + "/metrics",
        "pidfile": str(pidfile),
    }
