"""Phase 06: switch the RAG service to the verified local collection, or back, and prove it.

Preconditions (``plan``): a human go for this export, phase 05's gates passed for the very collection
phases 03/07 verified, the collection on disk holding the verified count and provenance, hand-offs
02-05 agreeing, the backend's ``config.env`` on the expected arm for the same index, health that can
prove the switch, the cloud key kept for a rollback, disk below the limit. Any mismatch refuses, naming it.

The switch (``Cutover.switch``): back up ``config.env`` to ``config.env.backup`` (owner-only) -> write
every setting the switch factory needs (``USE_LOCAL_VECTOR_DB``, the collection, its path or server,
the query embedder), leaving every other line and comment byte for byte, atomically -> run the restart
command (its own process group, ended whole on a timeout) -> health must report the expected arm,
collection and count -> smoke questions through the backend's query URL must return records of that
collection. **Anything** that goes wrong after the first write -- a failed check, an exception, a
timeout, Ctrl-C (SIGINT) or SIGTERM -- restores the backup byte for byte, restarts, checks health is
back on the previous arm, and fails saying what failed and what was restored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, credentials, disk, plugins, retrieval_modes, runlog
from .errors import RunbookError
from .paths import PROJECT_ROOT, Layout, resolve


def health_text(body) -> str:
    """A health answer as one line for a reader (its fields joined by "; "), cut at 400 characters with "…"."""
    from .display import clip, plain_text

    return clip(plain_text(body) if isinstance(body, dict) else str(body), 400)


class CutoverFailed(RunbookError, RuntimeError):
    pass


class RestartTimedOut(CutoverFailed):
    pass


class Terminated(BaseException):
    """SIGTERM during a cutover: handled like Ctrl-C (roll back, then fail)."""


def update_env_text(text: str, changes: dict) -> str:
    """Set KEY=value lines, keeping every other line (comments, keys, order, line endings) as it was."""
    eol = "\r\n" if "\r\n" in text else "\n"
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
    return eol.join(lines) + eol


def env_flag(path: Path) -> bool | None:
    from dotenv import dotenv_values

    v = (dotenv_values(path).get("USE_LOCAL_VECTOR_DB") or "").strip().lower()
    return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(v)


def http_json(url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    """(status, JSON body). A body that is not JSON raises ``ValueError`` naming what came back."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        headers={"content-type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        return e.code, {"detail": e.read().decode("utf-8", "replace")[:300]}
    except http.client.HTTPException as e:  # a broken answer (IncompleteRead, BadStatusLine...)
        raise ConnectionError(f"{url}: broken HTTP answer ({type(e).__name__})") from None
    try:
        body = json.loads(raw or b"{}")
        if not isinstance(body, dict):
            raise ValueError
        return status, body
    except ValueError:
        raise ValueError(
            f"{url} answered HTTP {status} with non-JSON: {raw[:60].decode('utf-8', 'replace')!r}"
        ) from None


def result_ids(body: dict) -> list[str]:
    """Record ids in a backend's query answer: a list under ``results``, ``nodes`` or ``source_nodes``
    whose items carry ``id``, ``id_`` or ``node_id`` (or a nested ``node``)."""
    for key in ("results", "nodes", "source_nodes"):
        items = body.get(key)
        if isinstance(items, list):
            out = []
            for it in items:
                it = it.get("node", it) if isinstance(it, dict) else {}
                rid = it.get("id") or it.get("id_") or it.get("node_id")
                if rid:
                    out.append(str(rid))
            return out
    return []


@dataclass
class Expect:
    """What health must report after a restart: the arm and, on the local arm, collection and count."""

    arm: str
    collection: str = ""
    count: int | None = None

    def describe(self) -> str:
        if self.arm == "local" and self.collection:
            return f"the local arm on {self.collection}" + (
                f" ({self.count:,} records)" if self.count is not None else ""
            )
        return f"the {self.arm} arm"


def describe_failure(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (SIGINT / Ctrl-C)"
    if isinstance(e, Terminated):  # a SIGTERM, or the runner's stop file (which names its signal)
        return "terminated (SIGTERM)" if str(e) == "SIGTERM" else str(e)
    if isinstance(e, CutoverFailed):
        return str(e)
    return credentials.scrub(f"{type(e).__name__}: {e}")


@contextlib.contextmanager
def signals_as_exceptions():
    """SIGTERM raises ``Terminated`` (SIGINT already raises KeyboardInterrupt) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        raise Terminated("SIGTERM")

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def signals_deferred():
    """A restore is never cut short: SIGINT and SIGTERM are held off until it is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    old = {s: signal.signal(s, lambda n, f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class Cutover:
    config_env: Path
    restart_command: str
    health_url: str
    query_url: str = ""
    smoke_questions: list = field(default_factory=list)
    restart_timeout_s: float = 60.0
    health_timeout_s: float = 90.0
    smoke_timeout_s: float = 30.0
    layout: Layout | None = None
    allow_unverified_health: bool = False
    # the ids a smoke answer returned that the verified collection does not hold (local arm)
    missing_ids: Callable[[list[str]], list[str]] | None = None
    stop_file: Path | None = None  # <run folder>/STOP, written by the runner on Ctrl-C / SIGTERM
    settle_s: float = 10.0  # a contradicting health answer must hold this long before it fails the switch
    restore_timeout_s: float = 180.0  # after a restore, wait longer before saying the service is not back
    steps: list = field(default_factory=list)
    restart_groups: list = field(default_factory=list)  # process groups of the restart commands run
    handoff: dict = field(default_factory=dict)  # phase 06's record, once the switch succeeded

    @property
    def backup_path(self) -> Path:
        return self.config_env.with_name(self.config_env.name + ".backup")

    def step(self, name: str, ok: bool, detail: str):
        detail = credentials.scrub(detail)
        self.steps.append(
            {"step": name, "ok": ok, "detail": detail, "at": dt.datetime.now(dt.UTC).strftime("%H:%M:%S")}
        )
        if self.layout:
            try:  # best effort: a log that cannot be written never stops a switch or a restore
                runlog.log(self.layout, "06_cutover", f"{name}: {'ok' if ok else 'FAILED'}", detail=detail)
            except Exception:  # noqa: BLE001
                self.steps[-1]["detail"] += " (not logged: migration.log could not be written)"

    # --- the pieces
    def backup(self, keep_backup: bool = False) -> bytes:
        """Copy config.env to ``config.env.backup`` and a time-stamped copy (both 0600). ``keep_backup``
        (a rollback that puts ``config.env.backup`` back): that file is left as it is, only the stamped
        copy of the current config.env is written."""
        original = self.config_env.read_bytes()
        if not keep_backup:
            atomic.write_bytes(self.backup_path, original, mode=0o600)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        stamped = self.config_env.with_name(f"{self.config_env.name}.backup.{stamp}")
        atomic.write_bytes(stamped, original, mode=0o600)
        self.step(
            "backup",
            True,
            f"{self.config_env} -> {stamped} (0600); {self.backup_path} kept: it is what goes back"
            if keep_backup
            else f"{self.config_env} -> {self.backup_path} (0600)",
        )
        return original

    def write(self, changes: dict):
        new = update_env_text(self.config_env.read_bytes().decode("utf-8"), changes)
        self._replace(new.encode("utf-8"))
        self.step("write config.env atomically", True, ", ".join(f"{k}={v}" for k, v in changes.items()))

    def _replace(self, data: bytes) -> None:
        """Atomically replace the real file behind ``config_env`` (through a symlink), keeping its mode,
        owner and group (a backend that runs as another user must still read it)."""
        real = self.config_env.resolve()
        st = real.stat()
        with atomic.atomic_path(real, st.st_mode & 0o777) as tmp:
            tmp.write_bytes(data)
            with contextlib.suppress(PermissionError):
                os.chown(tmp, st.st_uid, st.st_gid)

    def restart(self):
        """Run the restart command in a process group of its own; on a timeout (or an interrupt) the
        whole group is ended, so nothing it started in that group outlives it."""
        with tempfile.TemporaryFile() as out:
            try:
                argv = shlex.split(self.restart_command)
                if not argv:
                    raise ValueError("restart_command is empty")
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_ROOT,
                    start_new_session=True,
                )
            except (OSError, ValueError) as e:
                raise CutoverFailed(f"restart command could not run: {e}") from None
            self.restart_groups.append(proc.pid)
            try:
                rc = proc.wait(timeout=self.restart_timeout_s)
            except subprocess.TimeoutExpired:
                end_group(proc)
                raise RestartTimedOut(
                    f"restart command timed out after {self.restart_timeout_s:g} s; its process group "
                    f"{proc.pid} was ended"
                ) from None
            except BaseException:
                end_group(proc)
                raise
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
        if rc != 0:
            raise CutoverFailed(f"restart command exited {rc}: {text[-300:]}")
        self.step("restart", True, f"{self.restart_command} (exit 0)")

    def probe_health(self) -> tuple[bool, dict | None, str]:
        """One look at health: (answered 200, JSON body or None, what was seen)."""
        try:
            status, body = http_json(self.health_url, timeout=3)
        except ValueError as e:
            return False, None, str(e)
        except OSError as e:
            return False, None, f"no answer ({type(e).__name__})"
        if status != 200:
            return False, None, f"HTTP {status}"
        return True, body, health_text(body)

    def health_matches(self, body: dict, expect: Expect) -> str:
        """'' when health proves ``expect``; otherwise what differs."""
        if "arm" not in body:
            return "health does not report the arm (add rag_switch.health_report to the health route)"
        if body.get("arm") != expect.arm:
            return f"health reports the {body.get('arm')} arm, expected {expect.arm}"
        if expect.arm == "local" and expect.collection:
            if body.get("collection") != expect.collection:
                return f"health reports collection {body.get('collection')!r}, expected {expect.collection!r}"
            if expect.count is not None and body.get("count") != expect.count:
                return f"health reports {body.get('count')} records, expected {expect.count}"
        return ""

    def wait_health(self, expect: Expect, timeout_s: float | None = None) -> dict:
        """Wait for health to prove ``expect``. No answer: keep waiting (a backend takes a while to load)
        up to the timeout. An answer that contradicts ``expect``: fail once it has held for ``settle_s``
        (after a restart command returns, the answers come from the restarted process)."""
        timeout_s = self.health_timeout_s if timeout_s is None else timeout_s
        deadline = time.time() + timeout_s
        last, contradicted_since = "no answer", None
        while time.time() < deadline:
            ok, body, seen = self.probe_health()
            diff = self.health_matches(body, expect) if ok else ""
            if ok and not diff:
                self.step("health", True, f"{expect.describe()}: {seen}")
                return body
            if ok and self.allow_unverified_health and "arm" not in body:
                self.step("health (UNVERIFIED)", True, f"HTTP 200, arm not reported: {seen}")
                return body
            answered = ok or "non-JSON" in seen  # HTTP 5xx or no answer: still starting
            last = diff or seen
            if answered:
                contradicted_since = contradicted_since or time.time()
                if time.time() - contradicted_since >= self.settle_s:
                    break
            else:
                contradicted_since = None
            time.sleep(0.5)
        raise CutoverFailed(
            f"health did not show {expect.describe()} (last: {last})"
            + (
                f" within {timeout_s:g} s"
                if contradicted_since is None
                else f", held for {self.settle_s:g} s"
            )
        )

    def smoke(self, expect: Expect):
        if not self.query_url:
            if self.allow_unverified_health:
                self.step("smoke queries (UNVERIFIED)", True, "no query_url: no question was asked")
                return
            raise CutoverFailed("no query_url: smoke questions cannot prove the switch")
        for q in self.smoke_questions:
            try:
                status, body = http_json(self.query_url, {"question": q}, timeout=self.smoke_timeout_s)
            except TimeoutError:
                raise CutoverFailed(f"smoke query {q!r} timed out after {self.smoke_timeout_s:g} s") from None
            except ValueError as e:
                raise CutoverFailed(f"smoke query {q!r}: {e}") from None
            except OSError as e:
                if "timed out" in str(e):
                    raise CutoverFailed(
                        f"smoke query {q!r} timed out after {self.smoke_timeout_s:g} s"
                    ) from None
                raise CutoverFailed(f"smoke query {q!r} failed: {type(e).__name__}: {e}") from None
            ids = result_ids(body) if status == 200 else []
            if status != 200 or not ids:
                raise CutoverFailed(f"smoke query {q!r} returned no records: HTTP {status} {str(body)[:200]}")
            if body.get("arm") not in (None, expect.arm):
                raise CutoverFailed(f"smoke query {q!r} answered from the {body.get('arm')} arm")
            if expect.arm == "local" and self.missing_ids is not None:
                missing = self.missing_ids(ids)
                if missing:
                    raise CutoverFailed(
                        f"smoke query {q!r} returned {len(missing)} record(s) that {expect.collection!r} "
                        f"does not hold (e.g. {missing[0]!r}): the backend serves another collection"
                    )
        self.step("smoke queries", True, f"{len(self.smoke_questions)} answered from {expect.describe()}")

    # --- the whole move
    def switch(self, changes: dict, expect: Expect, back: Expect, replace_with: bytes | None = None) -> list:
        """Back up, write ``changes``, restart, prove ``expect``; on any failure restore and prove ``back``.
        ``replace_with``: write these bytes instead of ``changes`` (a rollback putting back the backup the
        cutover took, byte for byte; ``config.env.backup`` is then kept as it is)."""
        try:
            self.check_stop()
        except Terminated as e:
            raise CutoverFailed(f"{e}: nothing was written") from None
        original = self.backup(keep_backup=replace_with is not None)
        with signals_as_exceptions():
            try:
                if replace_with is None:
                    self.write(changes)
                else:
                    self._replace(replace_with)
                    self.step(
                        "write config.env atomically",
                        self.config_env.read_bytes() == replace_with,
                        f"{self.backup_path} (taken before the cutover) put back byte for byte",
                    )
                for step in (self.restart, lambda: self.wait_health(expect), lambda: self.smoke(expect)):
                    self.check_stop()
                    step()
                return self.steps
            except BaseException as e:  # noqa: BLE001 - whatever it was, the backup goes back first
                with signals_deferred():  # from here on a signal waits: the restore is never cut short
                    cause = describe_failure(e)
                    self.step("switch", False, cause)
                    rolled = self.restore(original, back)
                raise CutoverFailed(
                    f"switch to {expect.describe()} failed: {cause}. Automatic rollback: {rolled}"
                ) from None

    def check_stop(self) -> None:
        """The runner drops a stop file into the run folder on Ctrl-C / SIGTERM (the kernel may be
        between cells or starting when the signal comes): honour it before each step."""
        if self.stop_file is not None and self.stop_file.exists():
            raise Terminated(f"stop requested by the runner ({self.stop_file.read_text().strip()})")

    def restore(self, original: bytes, back: Expect) -> str:
        """Put the backup back, restart, prove ``back``. Never raises: it says what it did and did not."""
        try:
            self._replace(original)
            same = self.config_env.read_bytes() == original
        except Exception as e:  # noqa: BLE001 - say so, and still try to bring the service back
            same = False
            self.step("restore config.env from backup", False, f"could not write it: {describe_failure(e)}")
        self.step(
            "restore config.env from backup",
            same,
            "byte-identical to the backup"
            if same
            else f"DIFFERS from {self.backup_path}: copy the backup over it by hand",
        )
        restored = "config.env restored byte-identical" if same else "config.env NOT byte-identical"
        try:
            self.restart()
        except Exception as e:  # noqa: BLE001 - a hung or failing restart: look at the service anyway
            self.step("restart after restore", False, f"{describe_failure(e)}; probing health")
        try:
            body = self.wait_health(back, max(self.health_timeout_s, self.restore_timeout_s))
            if self.query_url:
                self.smoke(back)
        except Exception as e:  # noqa: BLE001
            cause = describe_failure(e)
            self.step("service after restore", False, cause)
            return f"{restored}, BUT the service is not back on {back.describe()}: {cause}. Act now."
        if "arm" not in body or not self.query_url:
            return f"{restored}; the service answers again (UNVERIFIED: it cannot show which arm it serves)"
        return f"{restored}; health and smoke queries show {back.describe()} again"


def end_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:  # pragma: no mutate
    """SIGTERM the process group ``proc`` leads, then SIGKILL what is left after ``grace_s``.

    The lines marked ``no mutate`` hold only timings (the default grace, the wait after SIGKILL, the poll
    interval, ``<`` against ``<=`` on a clock) and the last reap of a process SIGKILL has already ended:
    mutation testing leaves them alone, since no test can tell their variants apart without asserting
    wall-clock times (which the suite never does) or a process that survives SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):  # pragma: no mutate
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone (its leader reaped): the reap below is a no-op
            break  # pragma: no mutate
        deadline = time.time() + wait
        while time.time() < deadline and group_alive(proc.pid):  # pragma: no mutate
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)  # pragma: no mutate
        if not group_alive(proc.pid):
            break  # pragma: no mutate
    with contextlib.suppress(subprocess.TimeoutExpired):  # pragma: no mutate
        proc.wait(timeout=1)  # pragma: no mutate


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies of the group count as gone
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[2]) == pgid and stat[0] != "Z":
            return True
    return False


# --- preconditions: what must agree before the first write ------------------------------------------
@dataclass
class Plan:
    direction: str
    rows: list = field(default_factory=list)  # check rows: check, ok, detail
    changes: dict = field(default_factory=dict)
    expect: Expect | None = None
    back: Expect | None = None
    diff: list = field(default_factory=list)  # config.env lines: key, now, after
    verified: dict = field(default_factory=dict)
    restore: bytes | None = None  # a rollback: the bytes of config.env.backup, written back as they are
    restore_from: str = ""  # where those bytes come from

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)

    def diff_table(self) -> list[dict]:
        """The config.env lines the switch changes (one placeholder row when none)."""
        return self.diff or [{"setting": "(none)", "now": "", "after": ""}]

    def check(self, name: str, ok: bool, detail: str):
        self.rows.append({"check": name, "ok": bool(ok), "detail": detail})


def switch_changes(verified: dict, spec: dict, current: dict, retrieval: dict | None = None) -> dict:
    """Every setting the switch factory needs for the verified collection (nothing else): where it is, the
    query embedder and the retrieval mode (``retrieval``: the LOCAL_RETRIEVAL_MODE... entries phase 04
    wrote and phase 05 gated)."""
    ch = {"USE_LOCAL_VECTOR_DB": "true", "LOCAL_VECTOR_DB_COLLECTION": verified["collection"]}
    if verified.get("chroma_mode") == "http":
        ch["LOCAL_VECTOR_DB_HOST"] = verified.get("chroma_host") or "127.0.0.1"
        ch["LOCAL_VECTOR_DB_PORT"] = verified.get("chroma_port") or 8000
    else:
        ch["LOCAL_VECTOR_DB_PATH"] = verified["chroma_path"]
        if current.get("LOCAL_VECTOR_DB_HOST"):
            ch["LOCAL_VECTOR_DB_HOST"] = ""  # an old server setting would win over the path
    ch.update(
        LOCAL_EMBED_PROVIDER=spec["provider"],
        LOCAL_EMBED_MODEL=spec["model_name"],
        LOCAL_EMBED_DIMENSION=spec.get("dimension") or "",
        LOCAL_EMBED_API_KEY_ENV=spec.get("api_key_env") or "",
    )
    if spec.get("api_base") or current.get("LOCAL_EMBED_API_BASE"):
        ch["LOCAL_EMBED_API_BASE"] = spec.get("api_base") or ""  # the endpoint 04 tested (not OpenAI's own)
    ch.update(retrieval or {})
    return {k: str(v) for k, v in ch.items()}


def _open_verified(verified: dict, base_path: str):
    from . import chroma_target

    if verified.get("chroma_mode") == "http":
        client = chroma_target.open_client("http", "", verified["chroma_host"], verified["chroma_port"])
    else:
        import chromadb
        from chromadb.config import Settings

        if not Path(verified["chroma_path"]).is_dir():
            raise FileNotFoundError(f"{verified['chroma_path']} does not exist")
        client = chromadb.PersistentClient(
            path=verified["chroma_path"], settings=Settings(anonymized_telemetry=False)
        )
    return client.get_collection(verified["collection"], embedding_function=None)


def plan(
    *,
    base_path: str,
    run_dir: str,
    dry_run: bool,
    direction: str,
    config_env: str,
    health_url: str,
    query_url: str,
    approval: str,
    allow_unverified_health: bool,
    max_disk_pct: float,
    cloud_key_env: str,
    restart_command: str = "",
    auto_approve: bool = False,
) -> Plan:
    """Everything that must agree before ``config.env`` is touched, and the switch it implies.
    A check that cannot be made (a value missing on either side) is a refusal, never a pass."""
    from dotenv import dotenv_values

    from . import handoff

    p = Plan(direction)
    if direction not in ("cutover", "rollback"):
        p.check("direction", False, f"direction is {direction!r}: cutover or rollback")
        return p
    cfg_path = Path(config_env) if config_env else None
    current: dict = {}
    if not config_env or str(config_env) == ".":
        p.check("backend config.env", False, "config_env_path is empty: name the backend's config.env")
    elif not cfg_path.is_file():
        p.check("backend config.env", False, f"{config_env} is not a file: check config_env_path")
    else:
        current = {k: (v or "") for k, v in dotenv_values(cfg_path).items()}
        p.check(
            "backend config.env",
            "USE_LOCAL_VECTOR_DB" in current,
            str(cfg_path)
            + (
                ""
                if "USE_LOCAL_VECTOR_DB" in current
                else ": no USE_LOCAL_VECTOR_DB line (is it the backend's?)"
            ),
        )
    live_local = env_flag(cfg_path) if current else None
    p.check(
        "restart command",
        bool(restart_command.strip()),
        restart_command or "restart_command is empty: name the command that restarts the backend",
    )

    read = {"base_path": base_path, "run_dir": run_dir, "dry_run": dry_run}
    if direction == "cutover":
        _go_check(p, approval, auto_approve, dry_run, base_path)
        try:
            h01 = handoff.read("01_extract", **read)
            p.verified = v = handoff.verified_collection(**read)
            h04 = handoff.read("04_rag_service", **read)
        except handoff.MissingHandoffError as e:
            p.check("hand-offs of 01-04", False, str(e))
            return p
        h03 = handoff.read_optional("03_migrate", **read)
        got = {"01_extract": h01, "03_migrate": h03, "04_rag_service": h04}
        absent = [phase for phase, r in got.items() if handoff.is_absent(r)]
        if absent:  # a dry run before the phases it reads have run: what it can show without them
            _without_records(p, absent, current, live_local)
        else:
            h05 = handoff.read_optional("05_ab_compare", **read) or {}
            name, sha = v.get("collection"), v.get("export_manifest_sha256")
            p.check(
                "a verified collection", bool(name and sha), f"{name} (from {v.get('phase')}), export {sha}"
            )
            p.check(
                "phase 05 gates passed",
                h05.get("passed") is True,
                "passed" if h05.get("passed") is True else "run phase 05 until its gates pass",
            )
            p.check(
                "phase 05 compared this collection",
                bool(name) and h05.get("collection") == name,
                f"phase 05 compared {h05.get('collection')!r}; the verified collection is {name!r}",
            )
            p.check(
                "phase 05 compared this export",
                bool(sha) and h05.get("export_manifest_sha256") == sha,
                f"phase 05 export {str(h05.get('export_manifest_sha256'))[:12]}…, verified {str(sha)[:12]}…",
            )
            p.check(
                "phase 04 configured this collection",
                bool(name) and h04.get("collection") == name,
                f"phase 04 wrote config for {h04.get('collection')!r}",
            )
            mode = _tested_retrieval(h04)
            if h05.get("configured_mode") is not None or mode:
                try:
                    label, err = retrieval_modes.from_values(mode).label, ""
                except retrieval_modes.RetrievalModeError as e:
                    label, err = None, f"; the settings cannot work: {e}"
                gated = h05.get("retrieval_entries")
                same = gated == mode if gated is not None else h05.get("configured_mode") == label
                p.check(
                    "phase 05 gated the retrieval settings phase 04 configured",
                    same and not err,
                    f"phase 04 configured {label!r}; phase 05 gated {h05.get('configured_mode')!r}"
                    + ("" if same else " (the settings differ: run 04 and 05 again)")
                    + err,
                )
            if not dry_run and name:
                try:
                    col = _open_verified(v, base_path)
                    count, prov = col.count(), col.metadata or {}
                    p.check(
                        "collection on disk holds the verified count",
                        count == v.get("count"),
                        f"{name}: {count:,} records, verified {v.get('count')}",
                    )
                    p.check(
                        "collection provenance names the verified export",
                        prov.get("export_manifest_sha256") == sha,
                        f"collection says {str(prov.get('export_manifest_sha256'))[:12]}…",
                    )
                except Exception as e:  # noqa: BLE001 - any failure to open it is a refusal, named
                    p.check("collection on disk", False, f"cannot open {name!r}: {type(e).__name__}: {e}")
            if current:
                _index_check(p, current, h01)
                p.check(
                    "backend is on the cloud arm now",
                    live_local is False,
                    "USE_LOCAL_VECTOR_DB=" + (current.get("USE_LOCAL_VECTOR_DB") or "(missing)"),
                )
            if name:
                p.changes = switch_changes(v, _tested_embedder(h04, h01), current, _tested_retrieval(h04))
            p.expect = Expect("local", name or "", v.get("count"))
            p.back = Expect("cloud")
    else:
        if current:
            p.check(
                "backend is on the local arm now",
                live_local is True,
                "USE_LOCAL_VECTOR_DB=" + (current.get("USE_LOCAL_VECTOR_DB") or "(missing)"),
            )
        p.changes = {"USE_LOCAL_VECTOR_DB": "false"}
        p.expect = Expect("cloud")
        p.back = Expect("local", current.get("LOCAL_VECTOR_DB_COLLECTION", ""))
        if current:
            _rollback_source(p, cfg_path, current)
    p.diff = [
        {
            "setting": k,
            "now": current.get(k, "(absent)") if current else "(config.env not read)",
            "after": val,
        }
        for k, val in p.changes.items()
        if current.get(k) != val
    ]
    differs = bool(p.diff) or (p.restore is not None and p.restore != cfg_path.read_bytes())
    p.check("something to switch", differs or dry_run, f"{len(p.diff)} setting(s) change")
    # a rollback is what one runs when the local arm is broken or the disk is full: those never block it
    informational = direction == "rollback"
    _health_checks(p, health_url, query_url, allow_unverified_health, live_local, informational)
    key = cloud_key_whereabouts(current, cloud_key_env)
    p.check("cloud key kept for rollback", key["kept"], key["where"])
    base = Layout.from_params(base_path).base
    if base.exists():
        pct = disk.use_pct(disk.usage(base))  # as phase 00 and 08 measure it (df's Use%)
        note = " (a rollback goes ahead regardless)" if informational and pct >= max_disk_pct else ""
        p.check(
            f"disk below {max_disk_pct}%",
            pct < max_disk_pct or informational,
            f"{pct:.1f}% of the usable space used{note}",
        )
    else:
        p.check(f"disk below {max_disk_pct}%", dry_run or informational, f"{base} does not exist")
    return p


PLACEHOLDER = "(phase {} has not run: it names this)"


def _without_records(p: Plan, absent: list[str], current: dict, live_local) -> None:
    """A dry run whose earlier phases have not run: one row says so, the switch is shown with placeholders
    where only those phases can tell (a real run stops before this with the phase to run first)."""
    p.check(
        "hand-offs of 01-05",
        False,
        f"{', '.join(absent)} not run yet: a real run stops here; the checks against their records are not made",
    )
    if current:
        p.check(
            "backend is on the cloud arm now",
            live_local is False,
            "USE_LOCAL_VECTOR_DB=" + (current.get("USE_LOCAL_VECTOR_DB") or "(missing)"),
        )
    p.changes = {
        "USE_LOCAL_VECTOR_DB": "true",
        "LOCAL_VECTOR_DB_COLLECTION": PLACEHOLDER.format("03/07"),
        "LOCAL_VECTOR_DB_PATH": PLACEHOLDER.format("02/03"),
        "LOCAL_EMBED_PROVIDER / _MODEL / _DIMENSION": PLACEHOLDER.format("04"),
    }
    p.expect = Expect("local", PLACEHOLDER.format("03/07"))
    p.back = Expect("cloud")


def _rollback_source(p: Plan, cfg_path: Path, current: dict) -> None:
    """A rollback puts back ``config.env.backup`` -- the file as it was before the cutover -- byte for byte
    when that backup is on the cloud arm; otherwise (no backup, or one on the local arm) it sets
    ``USE_LOCAL_VECTOR_DB=false`` only. The row says which; it never blocks the rollback."""
    from dotenv import dotenv_values

    b = cfg_path.with_name(cfg_path.name + ".backup")
    if b.is_file() and env_flag(b) is False:
        p.restore, p.restore_from = b.read_bytes(), str(b)
        before = {k: (v or "") for k, v in dotenv_values(b).items()}
        p.changes = {
            k: before.get(k, "(removed)") for k in {**current, **before} if before.get(k) != current.get(k)
        }
        p.changes = {k: p.changes[k] for k in sorted(p.changes)}
        detail = f"{b} (on the cloud arm) goes back byte for byte"
    else:
        why = "does not exist" if not b.is_file() else "is not on the cloud arm"
        detail = f"{b} {why}: the rollback sets USE_LOCAL_VECTOR_DB=false only, every other line kept"
    p.check("what the rollback writes", True, detail)


def _go_check(p: Plan, approval: str, auto_approve: bool, dry_run: bool, base_path: str) -> None:
    """The go is checked here again (plain papermill or JupyterLab bypass the runner): a runner's
    ``--approve <run id>`` still valid now, or the params' own ``auto_approve: true``."""
    if dry_run:
        p.check("a human go for this cutover", True, "dry run: none needed")
        return
    if approval.startswith("--approve "):
        from . import approvals, config

        run_id = approval.split()[1]
        try:
            approvals.check_approval(run_id, {"base_path": base_path})
            p.check("a human go for this cutover", True, approval)
        except config.ParameterError as e:
            p.check("a human go for this cutover", False, str(e))
        return
    if approval.startswith("auto-approved"):
        p.check("a human go for this cutover", auto_approve is True, approval)
        return
    p.check(
        "a human go for this cutover",
        False,
        (f"{approval!r} is not a go the runner gave; " if approval else "none: ")
        + "python -m runbook run <params> --approve <run id>",
    )


def _index_check(p: Plan, current: dict, h01: dict) -> None:
    idx, name = current.get("LLAMACLOUD_INDEX_ID"), current.get("LLAMACLOUD_INDEX_NAME")
    if idx:
        ok, detail = idx == h01.get("index_id"), f"backend LLAMACLOUD_INDEX_ID {idx}"
    elif name:
        ok, detail = name == h01.get("index_name"), f"backend LLAMACLOUD_INDEX_NAME {name}"
    else:
        ok, detail = False, "the backend's config.env names no LLAMACLOUD_INDEX_ID or _NAME"
    p.check(
        "backend serves the exported index",
        ok,
        f"{detail}; exported {h01.get('index_name')} ({h01.get('index_id')})",
    )


def _tested_retrieval(h04: dict) -> dict:
    """The retrieval-mode entries of the config.env phase 04 wrote ({} from a phase 04 before modes)."""
    e = h04.get("entries") or {}
    return {k: e[k] for k in retrieval_modes.entries(retrieval_modes.Mode()) if k in e}


def _tested_embedder(h04: dict, h01: dict) -> dict:
    """The query embedder phase 04 checked for parity and 05 compared with (else the export's)."""
    e = h04.get("entries") or {}
    if e.get("LOCAL_EMBED_PROVIDER"):
        return {
            "provider": e["LOCAL_EMBED_PROVIDER"],
            "model_name": e.get("LOCAL_EMBED_MODEL", ""),
            "dimension": e.get("LOCAL_EMBED_DIMENSION") or "",
            "api_key_env": e.get("LOCAL_EMBED_API_KEY_ENV", ""),
            "api_base": e.get("LOCAL_EMBED_API_BASE", ""),
        }
    return h01["embedding_spec"]


def _health_checks(
    p: Plan, health_url: str, query_url: str, allow_unverified: bool, live_local, informational: bool = False
) -> None:
    """Health must be able to prove the switch before anything is written: JSON naming the arm now.
    (For a rollback these checks inform; they never block going back to the cloud.)"""
    if not health_url:
        p.check(
            "health can prove the switch",
            informational,
            "health_url is empty: name the backend's health URL",
        )
        return
    probe = Cutover(Path("."), "", health_url)
    ok, body, seen = probe.probe_health()
    now = "local" if live_local else "cloud"
    verifiable = ok and body is not None and "arm" in body
    if verifiable:
        p.check(
            "health reports the live arm", body.get("arm") == now or informational, f"{health_url}: {seen}"
        )
    else:
        detail = f"{health_url}: {seen}" + (
            "" if not ok else " (no 'arm': add rag_switch.health_report to the backend's health route)"
        )
        p.check(
            "health can prove the switch"
            + (" (UNVERIFIED: allowed by allow_unverified_health)" if allow_unverified else ""),
            (ok and allow_unverified) or informational,
            detail,
        )
    p.check(
        "smoke questions through the backend",
        bool(query_url) or allow_unverified or informational,
        query_url or "query_url is empty: smoke questions cannot prove the switch",
    )


def missing_ids_checker(verified: dict, base_path: str) -> Callable[[list[str]], list[str]]:
    """For smoke answers on the local arm: the ids the verified collection does not hold."""

    def missing(ids: list[str]) -> list[str]:
        col = _open_verified(verified, base_path)
        have = set(col.get(ids=list(dict.fromkeys(ids)), include=[])["ids"])
        return [i for i in ids if i not in have]

    return missing


def result_text(p: Plan, dry_run: bool = False) -> str:
    """What phase 06 did, in the words its record keeps (``result``)."""
    if dry_run:
        return f"dry run: nothing switched ({p.direction} planned)"
    if p.direction == "rollback":
        how = (
            f"config.env is {p.restore_from} again, byte for byte"
            if p.restore is not None
            else "USE_LOCAL_VECTOR_DB=false written"
        )
        return f"Rolled back to {(p.expect or Expect('cloud')).describe()}: {how}"
    return f"Switched to {(p.expect or Expect('local')).describe()}"


def record(
    p: Plan, svc: dict, approval: str, steps: list, *, base_path: str, run_dir: str, dry_run: bool = False
) -> dict:
    """Phase 06's hand-off (and, for a real switch, its line in migration.log)."""
    from . import handoff

    rec = handoff.record(
        "06_cutover",
        {
            "direction": p.direction,
            "approval": approval,
            "service": svc,
            "collection": p.expect.collection if p.expect else "",
            "result": result_text(p, dry_run),
            "changes": p.changes,
            "steps": steps,
        },
        base_path=base_path,
        run_dir=run_dir,
        dry_run=dry_run,
    )
    if not dry_run:
        with contextlib.suppress(Exception):  # the record is what counts; the log line is best effort
            runlog.log(
                Layout.from_params(base_path), "06_cutover", f"{p.direction} complete: {p.expect.describe()}"
            )
    return rec


def cloud_key_whereabouts(entries: dict, cloud_key_env: str) -> dict:
    """Where the cloud key a rollback needs is, by presence only (never its value): a ``<name>=`` line in
    the backend's config.env (``entries``) or the environment variable ``<name>``, the name being the one
    config.env gives in LLAMACLOUD_API_KEY_ENV (else ``cloud_key_env``). ``where`` says which, precisely."""
    name = entries.get("LLAMACLOUD_API_KEY_ENV") or cloud_key_env
    in_file = bool(entries.get(name))
    in_env = bool(credentials.get_secret(name, required=False))
    if in_file:
        where = f"{name} in config.env"
    elif in_env:
        where = (
            f"{name} in the environment (config.env holds no key: the backend reads it from the environment)"
        )
    else:
        where = f"{name} missing: neither a line in config.env nor an environment variable"
    return {
        "name": name,
        "in config.env": in_file,
        "in the environment": in_env,
        "kept": in_file or in_env,
        "where": where,
    }


def key_backup_check(config_env: Path, cloud_key_env: str) -> dict:
    """After a switch: where the cloud key a rollback needs is (presence and file mode only, never the
    value), in the same terms as the plan's check "cloud key kept for rollback": in the backup of
    config.env taken before the switch, in the live config.env written by it, in the environment."""
    from dotenv import dotenv_values

    b = config_env.with_name(config_env.name + ".backup")
    live = {k: (v or "") for k, v in dotenv_values(config_env).items()} if config_env.is_file() else {}
    backup = {k: (v or "") for k, v in dotenv_values(b).items()} if b.is_file() else {}
    key = cloud_key_whereabouts(live or backup, cloud_key_env)
    name = key["name"]
    return {
        "config.env backup (taken before the switch)": str(b) if b.exists() else f"{b} (missing)",
        "backup file mode": oct(b.stat().st_mode & 0o777) if b.exists() else "",
        f"{name} in the backup of config.env": bool(backup.get(name)),
        f"{name} in the live config.env (after the switch)": bool(live.get(name)),
        f"{name} in the environment": key["in the environment"],
        "cloud key kept for rollback": bool(backup.get(name)) or key["kept"],
        "where a rollback finds it": f"{name} in the backup of config.env"
        if backup.get(name)
        else key["where"],
    }


# --- what phase 06's cells call ------------------------------------------------------------------
@dataclass
class Run:
    """How this phase 06 runs: where, for real or not, which way, and who said go."""

    base_path: str
    run_dir: str = ""
    dry_run: bool = True
    direction: str = "cutover"
    approval: str = ""
    auto_approve: bool = False
    allow_unverified_health: bool = False


@dataclass
class Backend:
    """The backend as the params name it (external mode); reference mode starts the demo's stand-in."""

    config_env: str = ""
    restart_command: str = ""
    health_url: str = ""
    query_url: str = ""
    pidfile: str = ""
    port: int = 0  # reference mode: the stand-in's port (0: a free one)


@dataclass
class Timeouts:
    restart_s: float = 60.0
    health_s: float = 90.0
    smoke_s: float = 30.0


def show_go_banners(run: Run) -> None:
    """The banners under the DRY RUN one: who said go, and any switch that cannot be proven."""
    from . import display

    for text, colour in go_banners(
        run.direction, run.approval, run.auto_approve, run.allow_unverified_health
    ):
        display.banner(text, colour)


def service_settings(run: Run, service_mode: str, backend: Backend) -> dict:
    """The backend phase 06 switches. External: the params (relative paths are the project folder's,
    wherever the kernel runs). Reference: a rollback goes back to the stand-in the cutover started (phase
    06's hand-off names it); a dry run starts nothing and says so; a real cutover starts the demo's stand-in
    on phase 04's config.env."""
    from . import handoff

    svc = {
        "config_env": str(resolve(backend.config_env)) if backend.config_env else "",
        "restart_command": backend.restart_command,
        "health_url": backend.health_url,
        "query_url": backend.query_url,
        "pidfile": str(resolve(backend.pidfile)) if backend.pidfile else "",
    }
    if service_mode != "reference":
        return svc
    if run.direction == "rollback":
        h06 = handoff.read_optional("06_cutover", base_path=run.base_path)
        return {**svc, **(h06 or {}).get("service", {})}
    if run.dry_run:
        return {**svc, "note": "reference mode: a real run starts the demo's stand-in service here"}
    from dotenv import dotenv_values

    h04 = handoff.read("04_rag_service", base_path=run.base_path)
    return plugins.rehearsal("service_mode: reference").reference_backend(
        Layout.from_params(run.base_path), dotenv_values(h04["config_env"]), backend.port or _free_port()
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def go_banners(direction: str, approval: str, auto_approve: bool, allow_unverified_health: bool) -> list:
    """(text, colour) lines for the top of the page: who said go, and any switch that cannot be proven."""
    out = []
    if direction == "cutover" and approval:
        red = auto_approve and approval.startswith("auto")
        out.append(
            (
                ("AUTO-APPROVED by the params file — no human go: " if red else "GO: ") + approval,
                "#f8d7da" if red else "#d4edda",
            )
        )
    if allow_unverified_health:
        out.append(
            (
                "UNVERIFIED SWITCH ALLOWED (allow_unverified_health): health and smoke questions may "
                "not prove which collection the backend serves",
                "#f8d7da",
            )
        )
    return out


def plan_switch(run: Run, svc: dict, max_disk_pct: float, cloud_key_env: str) -> Plan:
    """:func:`plan` for this run and backend."""
    return plan(
        base_path=run.base_path,
        run_dir=run.run_dir,
        dry_run=run.dry_run,
        direction=run.direction,
        config_env=svc["config_env"],
        health_url=svc["health_url"],
        query_url=svc.get("query_url", ""),
        approval=run.approval,
        allow_unverified_health=run.allow_unverified_health,
        max_disk_pct=max_disk_pct,
        cloud_key_env=cloud_key_env,
        restart_command=svc["restart_command"],
        auto_approve=run.auto_approve,
    )


def smoke_list(smoke_questions: list) -> list[str]:
    """The smoke questions: the params' own, else three of the demo question set."""
    from . import compare

    return list(smoke_questions) or [q["question"] for q in compare.load_questions()[:3]]


def steps_planned(p: Plan, svc: dict, questions: list, timeouts: Timeouts) -> list[dict]:
    """The steps a real run takes, in order, with what each needs (what a dry run shows)."""
    cfg = svc.get("config_env") or "config.env (config_env_path is empty)"
    if p.restore is not None:
        write = f"{p.restore_from} (taken before the cutover) over {cfg}, byte for byte"
        backup = f"{cfg} -> a time-stamped copy beside it (0600); {p.restore_from} is what goes back"
    else:
        write = "; ".join(f"{k}={v}" for k, v in p.changes.items()) or "(nothing to write)"
        backup = f"{cfg} -> config.env.backup and a time-stamped copy beside it (0600)"
    expect, back = (p.expect or Expect("?")).describe(), (p.back or Expect("?")).describe()
    health = svc.get("health_url") or "(health_url is empty)"
    query = svc.get("query_url") or "(query_url is empty)"
    restart = svc.get("restart_command") or "(restart_command is empty)"
    return [
        {"step": "backup", "what": backup},
        {"step": "write config.env atomically", "what": write},
        {
            "step": "restart",
            "what": f"{restart} (within {timeouts.restart_s:g} s; its process group ended on a timeout)",
        },
        {"step": "health", "what": f"{health} must show {expect} within {timeouts.health_s:g} s"},
        {
            "step": "smoke queries",
            "what": f"{len(questions)} question(s) through {query}: answered from {expect}",
        },
        {"step": "record", "what": "hand-off 06_cutover.json and logs/migration.log"},
        {
            "step": "on any failure",
            "what": f"config.env restored from the backup byte for byte, restarted, {back} proven again",
        },
    ]


def carry_out(run: Run, p: Plan, svc: dict, smoke_questions: list, timeouts: Timeouts) -> Cutover | None:
    """A real run: :func:`execute` (its steps shown green or red, whatever happens). A dry run: the steps
    a real run would take, shown; nothing is run (None)."""
    from . import display

    questions = smoke_list(smoke_questions)
    if run.dry_run:
        display.table(
            steps_planned(p, svc, questions, timeouts), "the steps a real run takes (none is taken now)"
        )
        return None
    return execute(
        p,
        svc,
        base_path=run.base_path,
        smoke_questions=questions,
        restart_timeout_s=timeouts.restart_s,
        health_timeout_s=timeouts.health_s,
        smoke_timeout_s=timeouts.smoke_s,
        allow_unverified_health=run.allow_unverified_health,
        run_dir=run.run_dir,
        approval=run.approval,
    )


def rollback_key(run: Run, svc: dict, cloud_key_env: str) -> dict:
    """After a switch: :func:`key_backup_check`. A dry run switched nothing: the plan's row says where it is."""
    if not run.dry_run:
        return key_backup_check(Path(svc["config_env"]), cloud_key_env)
    return {
        "dry run": "nothing switched, no backup taken: the plan's check 'cloud key kept for rollback' says where it is now"
    }


def outcome(run: Run, p: Plan, svc: dict, co: Cutover | None) -> dict:
    """Phase 06's record: a real switch recorded it the moment it succeeded; a dry run records its plan."""
    if not run.dry_run and co is not None:
        return co.handoff
    return record(p, svc, run.approval, [], base_path=run.base_path, run_dir=run.run_dir, dry_run=True)


def brief(rec: dict) -> dict:
    """The record without its bulky parts (the steps and the changes have their own tables)."""
    return {k: v for k, v in rec.items() if k not in ("steps", "changes")}


def verdict(rec: dict) -> str:
    """The page's last word (Markdown)."""
    if rec.get("dry_run"):
        return (
            f"**DRY RUN** — nothing was switched; a real run would {rec.get('direction')}: "
            f"{len(rec.get('changes') or {})} config.env setting(s), then the steps above."
        )
    return f"**{rec.get('result', '')}.** Every step is in logs/migration.log."


def execute(
    p: Plan,
    svc: dict,
    *,
    base_path: str,
    smoke_questions: list,
    restart_timeout_s: float,
    health_timeout_s: float,
    smoke_timeout_s: float,
    allow_unverified_health: bool,
    run_dir: str = "",
    approval: str = "",
) -> Cutover:
    """Run the switch the plan describes (phase 06 refuses before this unless every check passed) and
    record its hand-off the moment it succeeds (an interrupt after that cannot lose the record)."""
    if not p.ok:
        raise CutoverFailed("preconditions failed: " + "; ".join(r["check"] for r in p.rows if not r["ok"]))
    co = Cutover(
        Path(svc["config_env"]),
        svc["restart_command"],
        svc["health_url"],
        svc.get("query_url", ""),
        smoke_questions,
        restart_timeout_s,
        health_timeout_s,
        smoke_timeout_s,
        Layout.from_params(base_path),
        allow_unverified_health,
        missing_ids_checker(p.verified, base_path) if p.direction == "cutover" else None,
        stop_file=resolve(run_dir) / "STOP" if run_dir else None,
    )
    from . import display

    try:
        co.switch(p.changes, p.expect, p.back, p.restore)
        with signals_deferred():
            co.handoff = record(p, svc, approval, co.steps, base_path=base_path, run_dir=run_dir)
    finally:  # the steps, green and red, are on the page whatever happened
        display.checks(
            [{"check": s["step"], "ok": s["ok"], "detail": s["detail"]} for s in co.steps], fail=False
        )
    return co
