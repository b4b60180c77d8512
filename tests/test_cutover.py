"""Phase 06 against the Welno-like backend stand-in, restarted by the rehearsal supervisor the way pm2
restarts the real one. Real processes throughout: the backend (FastAPI, switch factory, Gemini stand-in),
the local LlamaCloud-compatible server, Chroma on disk. Every failure must end with the backend's
config.env byte-identical to before and the backend back on the cloud arm."""

import contextlib
import copy
import datetime as dt
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from runbook import cutover, handoff
from runbook.paths import Layout
from runbook.rehearsal import cloud_emulator
from runbook.rehearsal.__main__ import SEED_CONFIG
from runbook.rehearsal.supervisor import Supervisor

from .conftest import API_KEY

GOOGLE_KEY = "google-key-for-gemini-stand-in"
COLLECTION = "welno_medical_knowledge__rehearsal"
SPEC = {
    "provider": "huggingface",
    "model_name": "sentence-transformers/all-MiniLM-L6-v2",
    "dimension": 384,
    "api_key_env": "",
}
QUESTION = "What should I eat before a colonoscopy?"

LOAD = """
import sys
from runbook import chroma_target, export_format, load
exp = export_format.open_export(sys.argv[2])
client = chroma_target.open_client("embedded", sys.argv[1])
prov = chroma_target.provenance(exp, "huggingface:sentence-transformers/all-MiniLM-L6-v2")
col, _ = chroma_target.create_or_verify(client, sys.argv[3], chroma_target.HnswSettings(), prov)
load.load_export(client, col, sys.argv[2], sys.argv[1] + "/cp.json", progress=False)
print(exp.manifest_sha256)
"""


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, demo_export, demo_corpus_master):
    """The backend stand-in on the cloud arm, a verified local collection beside it."""
    root = tmp_path_factory.mktemp("rehearsal")
    base = root / "base"
    sha = subprocess.run(
        [sys.executable, "-c", LOAD, str(base), str(demo_export), COLLECTION],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    with cloud_emulator.EmulatorServer(
        copy.deepcopy(demo_corpus_master), API_KEY, google_key=GOOGLE_KEY
    ) as srv:
        port = cloud_emulator.free_port()
        cfg = root / "backend" / "config.env"
        cfg.parent.mkdir()
        cfg.write_text(
            SEED_CONFIG.format(
                backend_port=port, google_key=GOOGLE_KEY, cloud_key=API_KEY, cloud_url=srv.url
            ),
            encoding="utf-8",
        )
        faults = root / "backend" / "faults.json"
        faults.write_text("{}")
        sup = Supervisor(root / "supervisor")
        cmd = [
            sys.executable,
            "-m",
            "runbook.rehearsal.welno_backend",
            "--config",
            str(cfg),
            "--port",
            str(port),
            "--faults",
            str(faults),
        ]
        sup.start("WELLO_BE", cmd)
        try:
            yield _ready(root, base, cfg, faults, sup, srv, port, sha)
        finally:
            sup.stop("WELLO_BE")


def _ready(root, base, cfg, faults, sup, srv, port, sha) -> SimpleNamespace:
    """The stand-in's handles, once its health answers on the cloud arm."""
    r = SimpleNamespace(
        root=root,
        base=base,
        cfg=cfg,
        faults=faults,
        sup=sup,
        server=srv,
        health=f"http://127.0.0.1:{port}/health",
        query=f"http://127.0.0.1:{port}/api/rag/query",
        restart=f"{sys.executable} -m runbook.rehearsal.supervisor --home {sup.home} restart WELLO_BE",
        verified={
            "collection": COLLECTION,
            "count": 257,
            "export_manifest_sha256": sha,
            "chroma_mode": "embedded",
            "chroma_path": str(Layout.from_params(str(base)).chroma_db),
        },
    )
    cutover.Cutover(cfg, "", r.health, health_timeout_s=180).wait_health(cutover.Expect("cloud"))
    return r


@pytest.fixture
def stand_in(rehearsal):
    """Each test starts with no faults and the backend on the cloud arm, and ends the same way."""
    rehearsal.faults.write_text("{}")
    (rehearsal.sup.home / "WELLO_BE.faults.json").unlink(missing_ok=True)
    before = rehearsal.cfg.read_bytes()
    yield rehearsal
    rehearsal.faults.write_text("{}")
    (rehearsal.sup.home / "WELLO_BE.faults.json").unlink(missing_ok=True)
    if rehearsal.cfg.read_bytes() != before:  # a test that switched on purpose: put the cloud back
        rehearsal.cfg.write_bytes(before)
        co = cutover.Cutover(rehearsal.cfg, rehearsal.restart, rehearsal.health, health_timeout_s=120)
        co.restart()
        co.wait_health(cutover.Expect("cloud"))


def make(r, **kw) -> cutover.Cutover:
    kw = {"health_timeout_s": 120.0, "restart_timeout_s": 60.0, "smoke_timeout_s": 30.0, **kw}
    return cutover.Cutover(
        r.cfg,
        r.restart,
        r.health,
        r.query,
        [QUESTION],
        layout=Layout.from_params(str(r.base)),
        missing_ids=cutover.missing_ids_checker(r.verified, str(r.base)),
        **kw,
    )


def changes(r) -> dict:
    from dotenv import dotenv_values

    return cutover.switch_changes(r.verified, SPEC, dotenv_values(r.cfg))


EXPECT = cutover.Expect("local", COLLECTION, 257)
BACK = cutover.Expect("cloud")


def health(r) -> dict:
    return cutover.http_json(r.health)[1]


def assert_rolled_back(r, before: bytes, err: pytest.ExceptionInfo, *cause: str):
    msg = str(err.value)
    for c in cause:
        assert c in msg, msg
    assert "config.env restored byte-identical" in msg and "cloud arm again" in msg, msg
    assert r.cfg.read_bytes() == before
    assert health(r)["arm"] == "cloud"
    status, body = cutover.http_json(r.query, {"question": QUESTION}, timeout=60)
    assert status == 200 and body["arm"] == "cloud" and body["results"]


def test_cutover_writes_the_whole_switch_and_proves_it(stand_in):
    r = stand_in
    before = r.cfg.read_text(encoding="utf-8")
    co = make(r)
    co.switch(changes(r), EXPECT, BACK)
    after = r.cfg.read_text(encoding="utf-8")
    h = health(r)
    assert (h["arm"], h["collection"], h["count"]) == ("local", COLLECTION, 257)
    assert h["embedding_model"] == "huggingface:sentence-transformers/all-MiniLM-L6-v2"
    # every setting the factory needs; every other line and comment byte for byte
    assert f"LOCAL_VECTOR_DB_COLLECTION={COLLECTION}\n" in after
    assert f"LOCAL_VECTOR_DB_PATH={r.verified['chroma_path']}\n" in after
    assert "USE_LOCAL_VECTOR_DB=true  # true: 로컬, false: LlamaCloud\n" in after
    changed = {"USE_LOCAL_VECTOR_DB", "LOCAL_VECTOR_DB_PATH", "LOCAL_VECTOR_DB_COLLECTION"}
    kept_before = [ln for ln in before.splitlines() if ln.split("=", 1)[0] not in changed]
    assert all(ln in after.splitlines() for ln in kept_before)
    # the backend answers from the verified collection, with Gemini (the stand-in of its API)
    status, body = cutover.http_json(r.query, {"question": "How is Helicobacter pylori treated?"}, timeout=60)
    assert status == 200 and body["arm"] == "local" and body["results"][0]["title"] == "헬리코박터"
    assert body["answer"] and "헬리코박터" in body["answer"], body["answer"]
    assert any("generateContent" in path for _, path in r.server.requests)
    assert Path(str(r.cfg) + ".backup").stat().st_mode & 0o777 == 0o600
    # and back on purpose (direction: rollback)
    co2 = make(r)
    co2.switch({"USE_LOCAL_VECTOR_DB": "false"}, BACK, EXPECT)
    assert health(r)["arm"] == "cloud"
    log = Layout.from_params(str(r.base)).migration_log.read_text(encoding="utf-8")
    assert "[06_cutover] health: ok" in log and "[06_cutover] smoke queries: ok" in log


def test_restart_exits_0_but_the_backend_is_dead(stand_in):
    r = stand_in
    r.faults.write_text(json.dumps({"crash_on_start": {"when": "local"}}))
    before = r.cfg.read_bytes()
    with pytest.raises(cutover.CutoverFailed) as err:
        make(r, health_timeout_s=20).switch(changes(r), EXPECT, BACK)
    assert_rolled_back(r, before, err, "health did not show the local arm", "no answer", "within 20 s")


@pytest.mark.parametrize(
    "lie, named",
    [
        ({"arm": "cloud"}, "health reports the cloud arm, expected local"),
        ({"collection": "welno_medical_knowledge"}, "health reports collection 'welno_medical_knowledge'"),
        ({"count": 12}, "health reports 12 records, expected 257"),
    ],
)
def test_health_200_with_the_wrong_arm_collection_or_count(stand_in, lie, named):
    r = stand_in
    r.faults.write_text(json.dumps({"health_lie": {"when": "local", **lie}}))
    before = r.cfg.read_bytes()
    with pytest.raises(cutover.CutoverFailed) as err:  # the lie never ends: a short settle is enough
        make(r, settle_s=3.0).switch(changes(r), EXPECT, BACK)
    assert_rolled_back(r, before, err, named, "held for 3 s")


def test_health_answers_plain_text(stand_in):
    r = stand_in
    r.faults.write_text(json.dumps({"health_plain_text": {"when": "local"}}))
    before = r.cfg.read_bytes()
    with pytest.raises(cutover.CutoverFailed) as err:
        make(r, settle_s=3.0).switch(changes(r), EXPECT, BACK)
    assert_rolled_back(r, before, err, "non-JSON", "'OK'", "held for 3 s")


def test_restart_hangs_past_its_timeout(stand_in):
    """The hung restart is ended with its whole process group, and after the restore's restart hangs too
    the runbook looks at health before saying what state the backend is in (it is back on the cloud)."""
    r = stand_in
    (r.sup.home / "WELLO_BE.faults.json").write_text(json.dumps({"hang_s": 600, "times": 2}))
    before = r.cfg.read_bytes()
    co = make(r, restart_timeout_s=8)
    with pytest.raises(cutover.CutoverFailed) as err:
        co.switch(changes(r), EXPECT, BACK)
    assert_rolled_back(r, before, err, "restart command timed out after 8 s", "process group")
    assert len(co.restart_groups) == 2
    # no live process is left in either group (zombies waiting for init to reap them do not count)
    assert not any(cutover.group_alive(g) for g in co.restart_groups), "a restart command's process survived"
    steps = {s["step"]: s for s in co.steps}
    assert (
        not steps["restart after restore"]["ok"]
        and "probing health" in steps["restart after restore"]["detail"]
    )


def test_smoke_query_times_out(stand_in):
    r = stand_in
    r.faults.write_text(json.dumps({"query_sleep_s": {"when": "local", "s": 20}}))
    before = r.cfg.read_bytes()
    with pytest.raises(cutover.CutoverFailed) as err:
        make(r, smoke_timeout_s=3).switch(changes(r), EXPECT, BACK)
    assert_rolled_back(r, before, err, "timed out after 3 s")


SWITCH = """
import json, sys
from pathlib import Path
from runbook import cutover
a = json.loads(sys.argv[1])
co = cutover.Cutover(Path(a["cfg"]), a["restart"], a["health"], a["query"], ["q"], health_timeout_s=300)
real_wait_health = co.wait_health
def wait_health(*args, **kw):  # tells the test when the restart is done and health is being waited for
    print("WAITING FOR HEALTH", flush=True)
    return real_wait_health(*args, **kw)
co.wait_health = wait_health
try:
    co.switch(a["changes"], cutover.Expect("local", a["collection"], 257), cutover.Expect("cloud"))
except cutover.CutoverFailed as e:
    print("FAILED:", e, flush=True)
    sys.exit(1)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_cutover_rolls_back(stand_in, sig):
    """Ctrl-C or SIGTERM while the switched backend is being waited for: restored, restarted, on the cloud."""
    r = stand_in
    r.faults.write_text(json.dumps({"crash_on_start": {"when": "local"}}))  # health never shows local
    before = r.cfg.read_bytes()
    args = {"cfg": str(r.cfg), "restart": r.restart, "health": r.health, "query": r.query}
    args.update(changes=changes(r), collection=COLLECTION)
    p = subprocess.Popen([sys.executable, "-c", SWITCH, json.dumps(args)], stdout=subprocess.PIPE, text=True)
    first = p.stdout.readline()  # the restart is done, health is being waited for (it never shows local)
    assert first == "WAITING FOR HEALTH\n", first + p.communicate(timeout=240)[0]
    assert b"USE_LOCAL_VECTOR_DB=true" in r.cfg.read_bytes(), "the switch was written"
    p.send_signal(sig)
    out, _ = p.communicate(timeout=240)
    out = first + out
    assert p.returncode == 1, out
    cause = "interrupted (SIGINT" if sig == signal.SIGINT else "terminated (SIGTERM)"
    assert cause in out and "config.env restored byte-identical" in out and "cloud arm again" in out, out
    assert r.cfg.read_bytes() == before
    assert health(r)["arm"] == "cloud"


def test_restore_reports_what_its_comparison_found(tmp_path):
    """The restore step is ok only when the bytes match, and says so either way."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")
    co = cutover.Cutover(cfg, "false", "http://127.0.0.1:9/health", health_timeout_s=1, restore_timeout_s=1)

    def tamper(data):  # a write that does not put back what it was given
        cfg.write_bytes(data + b"# changed on the way\n")

    co._replace = tamper
    msg = co.restore(b"USE_LOCAL_VECTOR_DB=false\n", BACK)
    step = next(s for s in co.steps if s["step"] == "restore config.env from backup")
    assert not step["ok"] and "DIFFERS" in step["detail"]
    assert "NOT byte-identical" in msg and "restored byte-identical" not in msg


def test_restore_that_cannot_write_says_so_and_still_brings_the_service_back(tmp_path):
    """A restore whose write fails (a full disk, a read-only mount) never raises: it names the failure, says
    the file differs from the backup and where the backup is, and goes on to restart and probe."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=true\n")
    marker = tmp_path / "restarted"
    co = cutover.Cutover(
        cfg, f"touch {marker}", "http://127.0.0.1:9/health", health_timeout_s=1, restore_timeout_s=1
    )

    def full_disk(data):
        raise OSError(28, "No space left on device")

    co._replace = full_disk
    msg = co.restore(b"USE_LOCAL_VECTOR_DB=false\n", BACK)
    steps = [s for s in co.steps if s["step"] == "restore config.env from backup"]
    assert [s["ok"] for s in steps] == [False, False]
    assert "could not write it" in steps[0]["detail"] and "No space left on device" in steps[0]["detail"]
    assert "DIFFERS" in steps[1]["detail"] and str(co.backup_path) in steps[1]["detail"]
    assert msg.startswith("config.env NOT byte-identical") and "BUT the service is not back" in msg
    assert marker.exists()  # the restart still ran


def test_restore_that_writes_the_backup_says_byte_identical(tmp_path):
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=true\n")
    co = cutover.Cutover(cfg, "true", "http://127.0.0.1:9/health", health_timeout_s=1, restore_timeout_s=1)
    msg = co.restore(b"USE_LOCAL_VECTOR_DB=false\n", BACK)
    assert cfg.read_bytes() == b"USE_LOCAL_VECTOR_DB=false\n"
    step = next(s for s in co.steps if s["step"] == "restore config.env from backup")
    assert step["ok"] is True and step["detail"] == "byte-identical to the backup"
    assert msg.startswith("config.env restored byte-identical, BUT the service is not back")


def test_restore_whose_restart_fails_says_so_and_still_probes_health(tmp_path):
    """A restart that fails after the backup went back is a failed step with its cause, and the service is
    looked at anyway: the message says the file is right and the service is not back."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=true\n")
    co = cutover.Cutover(
        cfg,
        "sh -c 'echo cannot bind >&2; exit 3'",
        "http://127.0.0.1:9/health",
        health_timeout_s=0.5,
        restore_timeout_s=0.5,
    )
    msg = co.restore(b"USE_LOCAL_VECTOR_DB=false\n", BACK)
    step = next(s for s in co.steps if s["step"] == "restart after restore")
    assert step["ok"] is False
    assert step["detail"] == "restart command exited 3: cannot bind\n; probing health"
    assert [s["step"] for s in co.steps] == [
        "restore config.env from backup",
        "restart after restore",
        "service after restore",
    ]
    after = co.steps[-1]
    assert after["ok"] is False and after["detail"].startswith(
        "health did not show the cloud arm (last: no answer"
    )
    assert msg == (
        f"config.env restored byte-identical, BUT the service is not back on the cloud arm: {after['detail']}. "
        "Act now."
    )


class _Health(http.server.BaseHTTPRequestHandler):
    """A health endpoint: 503 (still starting) until ``up_at``, then 200 with ``body``."""

    up_at = 0.0
    body: dict = {"status": "ok", "arm": "cloud"}

    def do_GET(self):  # noqa: N802 - http.server's name
        up = time.monotonic() >= self.up_at
        data = json.dumps(self.body if up else {"status": "starting"}).encode()
        self.send_response(200 if up else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 - a query: one record, from the arm health reports
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = json.dumps({"arm": self.body.get("arm"), "results": [{"id": "c-1", "text": "위염"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@contextlib.contextmanager
def health_server(body: dict | None = None, up_in_s: float = 0.0):
    """A real HTTP health endpoint (GET) and query endpoint (POST) on a free loopback port; yields the
    health URL (the query URL is the same address)."""
    attrs = {"up_at": time.monotonic() + up_in_s, **({"body": body} if body else {})}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Health,), attrs))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/health"
    finally:
        srv.shutdown()
        srv.server_close()


def test_restore_waits_for_the_service_with_the_longer_restore_timeout(tmp_path):
    """A service that takes longer than ``health_timeout_s`` to come back after a restore is still waited
    for, up to ``restore_timeout_s``: the restore does not say "not back" while it is coming up."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=true\n")
    with health_server(up_in_s=2.0) as url:
        co = cutover.Cutover(cfg, "true", url, health_timeout_s=0.5, restore_timeout_s=120)
        msg = co.restore(b"USE_LOCAL_VECTOR_DB=false\n", BACK)
    assert "BUT" not in msg and "the service answers again" in msg, msg
    assert [s["step"] for s in co.steps][-1] == "health"


def test_a_rollback_switch_puts_the_backup_back_byte_for_byte_and_keeps_it(tmp_path):
    """``replace_with`` (phase 06's rollback): the bytes given are written as they are, ``config.env.backup``
    is left as it was, the current file gets a time-stamped copy, and the steps say so."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=true\nLOCAL_VECTOR_DB_COLLECTION=c\n")
    backup = cfg.with_name("config.env.backup")
    backup.write_bytes(b"# \xea\xb0\x80\r\nUSE_LOCAL_VECTOR_DB=false\r\n")
    with health_server({"status": "ok", "arm": "cloud"}) as url:
        co = cutover.Cutover(cfg, "true", url, url, ["위염이란?"], health_timeout_s=30)
        steps = co.switch({}, BACK, EXPECT, replace_with=backup.read_bytes())
    assert cfg.read_bytes() == backup.read_bytes() == b"# \xea\xb0\x80\r\nUSE_LOCAL_VECTOR_DB=false\r\n"
    stamped = [p for p in tmp_path.iterdir() if p.name.startswith("config.env.backup.")]
    assert [p.read_text() for p in stamped] == ["USE_LOCAL_VECTOR_DB=true\nLOCAL_VECTOR_DB_COLLECTION=c\n"]
    assert steps is co.steps and [(s["step"], s["ok"]) for s in steps] == [
        ("backup", True),
        ("write config.env atomically", True),
        ("restart", True),
        ("health", True),
        ("smoke queries", True),
    ]
    assert steps[1]["detail"] == f"{backup} (taken before the cutover) put back byte for byte"


def test_a_failed_switch_restores_the_file_it_replaced_and_proves_the_old_arm(tmp_path):
    """Health keeps showing the cloud arm after a switch to local: the switch fails, names the cause,
    restores the original bytes and proves the cloud arm is back."""
    cfg = tmp_path / "config.env"
    original = b"USE_LOCAL_VECTOR_DB=false  # \xeb\xa1\x9c\xec\xbb\xac\n"
    cfg.write_bytes(original)
    with health_server({"status": "ok", "arm": "cloud"}) as url:
        co = cutover.Cutover(cfg, "true", url, health_timeout_s=30, settle_s=0.5)
        with pytest.raises(cutover.CutoverFailed) as err:
            co.switch({"USE_LOCAL_VECTOR_DB": "true"}, EXPECT, BACK)
    msg = str(err.value)
    assert msg.startswith(f"switch to {EXPECT.describe()} failed: health did not show the local arm"), msg
    assert "Automatic rollback: config.env restored byte-identical; the service answers again" in msg
    assert cfg.read_bytes() == original and co.backup_path.read_bytes() == original
    switch = next(s for s in co.steps if s["step"] == "switch")
    assert switch["ok"] is False and switch["detail"].startswith("health did not show the local arm")
    assert [s["step"] for s in co.steps][-3:] == ["restore config.env from backup", "restart", "health"]


CRASH = """
import os, sys, time
from pathlib import Path
from runbook import cutover
real_replace = os.replace
def slow_replace(a, b):
    if str(b).endswith("config.env"):
        open(sys.argv[2], "w").write("in rename")
        time.sleep(60)
    return real_replace(a, b)
os.replace = slow_replace
co = cutover.Cutover(Path(sys.argv[1]), "true", "http://127.0.0.1:9/health")
co.backup()
co.write({"USE_LOCAL_VECTOR_DB": "true"})
"""


def test_crash_between_backup_and_rename_leaves_config_whole(tmp_path):
    cfg = tmp_path / "config.env"
    cfg.write_text(
        "# backend settings\nUSE_LOCAL_VECTOR_DB=false  # cloud\nLLAMA_CLOUD_API_KEY=llx-keep-me\n"
    )
    before = cfg.read_bytes()
    marker = tmp_path / "marker"
    p = subprocess.Popen([sys.executable, "-c", CRASH, str(cfg), str(marker)])
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert marker.exists(), "the writer reached the rename"
    assert cfg.read_bytes() == before  # never half-written: the old file until the rename
    assert (tmp_path / "config.env.backup").read_bytes() == before
    co = cutover.Cutover(cfg, "true", "")
    co.write({"USE_LOCAL_VECTOR_DB": "true"})
    assert (
        cfg.read_text()
        == "# backend settings\nUSE_LOCAL_VECTOR_DB=true  # cloud\nLLAMA_CLOUD_API_KEY=llx-keep-me\n"
    )


# --- preconditions: refusals before anything is written ------------------------------------------------
def _state(base: str, *, h05_collection=COLLECTION, h05_sha="sha-A", passed=True, h04_collection=COLLECTION):
    handoff.record(
        "01_extract",
        {
            "index_id": "1bcef115-bb95-4d14-9c29-d38bb097a39c",
            "embedding_spec": SPEC,
            "manifest_sha256": "sha-A",
        },
        base_path=base,
    )
    handoff.record(
        "03_migrate",
        {
            "collection": COLLECTION,
            "count": 257,
            "export_manifest_sha256": "sha-A",
            "chroma_mode": "embedded",
            "chroma_path": base + "/chroma_db",
        },
        base_path=base,
    )
    handoff.record("04_rag_service", {"collection": h04_collection}, base_path=base)
    handoff.record(
        "05_ab_compare",
        {"passed": passed, "collection": h05_collection, "export_manifest_sha256": h05_sha},
        base_path=base,
    )


def _plan(base, cfg, **kw):
    args = _plan_args(base, cfg)
    args.update(kw)
    return {r["check"]: r for r in cutover.plan(**args).rows}


def test_cutover_refuses_a_collection_other_than_the_one_05_passed(tmp_path, monkeypatch):
    monkeypatch.delenv("CUTOVER_TEST_KEY", raising=False)
    base = str(tmp_path / "base")
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\nCUTOVER_TEST_KEY=abc\n")
    _state(base, h05_collection="welno_medical_knowledge__older")
    rows = _plan(base, cfg)
    row = rows["phase 05 compared this collection"]
    assert not row["ok"] and "welno_medical_knowledge__older" in row["detail"] and COLLECTION in row["detail"]
    _state(base, h05_sha="sha-B")
    assert not _plan(base, cfg)["phase 05 compared this export"]["ok"]
    _state(base, h04_collection="other")
    assert not _plan(base, cfg)["phase 04 configured this collection"]["ok"]
    _state(base, passed=False)
    assert not _plan(base, cfg)["phase 05 gates passed"]["ok"]
    _state(base)
    rows = _plan(base, cfg, approval="")
    assert (
        not rows["a human go for this cutover"]["ok"]
        and "--approve" in rows["a human go for this cutover"]["detail"]
    )
    # a backend that cannot prove the switch is refused unless allowed, and the allowance is named
    rows = _plan(base, cfg)
    assert not rows["health can prove the switch"]["ok"]
    assert not rows["smoke questions through the backend"]["ok"]
    rows = _plan(base, cfg, allow_unverified_health=True)
    assert rows["smoke questions through the backend"]["ok"]
    # the collection on disk must hold what 03 verified (here: nothing is there at all)
    assert not _plan(base, cfg)["collection on disk"]["ok"]


def test_preconditions_name_a_missing_config_and_key(tmp_path, monkeypatch):
    monkeypatch.delenv("CUTOVER_TEST_KEY", raising=False)
    base = str(tmp_path / "base")
    Layout.from_params(base).base.mkdir(parents=True)
    rows = _plan(base, "", direction="rollback")
    assert (
        not rows["backend config.env"]["ok"]
        and "config_env_path is empty" in rows["backend config.env"]["detail"]
    )
    rows = _plan(base, tmp_path, direction="rollback")
    assert "is not a file" in rows["backend config.env"]["detail"]
    env = tmp_path / "config.env"
    env.write_text("USE_LOCAL_VECTOR_DB=true\n", encoding="utf-8")
    rows = _plan(base, env, direction="rollback")
    assert (
        not rows["cloud key kept for rollback"]["ok"]
        and "missing" in rows["cloud key kept for rollback"]["detail"]
    )


def test_a_go_is_checked_again_outside_the_runner(tmp_path, monkeypatch):
    """Plain papermill or JupyterLab can set any approval text: only a valid --approve or the params' own
    auto_approve count."""
    monkeypatch.setenv("RUNBOOK_OUTPUTS", str(tmp_path / "outputs"))
    base = str(tmp_path / "base")
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\nCUTOVER_TEST_KEY=abc\n")
    _state(base)
    go = "a human go for this cutover"
    assert not _plan(base, cfg, approval="yes")[go]["ok"]
    assert "no such run" in _plan(base, cfg, approval="--approve 20260101T000000Z-x by me")[go]["detail"]
    auto = "auto-approved by the params file demo.yaml (auto_approve: true)"
    assert not _plan(base, cfg, approval=auto)[go]["ok"]
    assert _plan(base, cfg, approval=auto, auto_approve=True)[go]["ok"]
    assert _plan(base, cfg, approval="", dry_run=True)[go]["ok"]


def test_an_empty_or_foreign_config_refuses_instead_of_passing(tmp_path):
    base = str(tmp_path / "base")
    _state(base)
    cfg = tmp_path / "config.env"
    cfg.write_text("# comments only\n")
    rows = _plan(base, cfg)
    assert (
        not rows["backend config.env"]["ok"]
        and "no USE_LOCAL_VECTOR_DB" in rows["backend config.env"]["detail"]
    )
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")
    assert not _plan(base, cfg)["backend serves the exported index"]["ok"]  # names no index at all
    assert not _plan(base, cfg, restart_command=" ")["restart command"]["ok"]


def test_a_rollback_is_not_blocked_by_a_dead_local_arm(tmp_path, monkeypatch):
    """When the local arm crash-loops (no health, no answers) going back to the cloud must still be allowed."""
    monkeypatch.setenv("CUTOVER_TEST_KEY", "abc")
    base = str(tmp_path / "base")
    Layout.from_params(base).base.mkdir(parents=True)
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=true\n")
    rows = _plan(base, cfg, direction="rollback", max_disk_pct=0.001)
    assert all(r["ok"] for r in rows.values()), rows
    assert (
        "a rollback goes ahead regardless"
        in next(r for k, r in rows.items() if k.startswith("disk"))["detail"]
    )
    assert not all(r["ok"] for r in _plan(base, cfg, direction="cutover").values())


def test_a_stop_request_before_the_first_write_writes_nothing(tmp_path):
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")
    (tmp_path / "STOP").write_text("SIGINT\n")
    co = cutover.Cutover(cfg, "true", "http://127.0.0.1:9/health", stop_file=tmp_path / "STOP")
    with pytest.raises(cutover.CutoverFailed, match="nothing was written"):
        co.switch({"USE_LOCAL_VECTOR_DB": "true"}, EXPECT, BACK)
    assert cfg.read_text() == "USE_LOCAL_VECTOR_DB=false\n" and not co.backup_path.exists()


def test_the_write_keeps_line_endings_and_writes_through_a_symlink(tmp_path):
    real = tmp_path / "backend" / "config.env"
    real.parent.mkdir()
    real.write_bytes(b"# settings\r\nUSE_LOCAL_VECTOR_DB=false\r\nOTHER=1\r\n")
    os.chmod(real, 0o640)
    link = tmp_path / "config.env"
    link.symlink_to(real)
    co = cutover.Cutover(link, "true", "")
    co.write({"USE_LOCAL_VECTOR_DB": "true", "LOCAL_VECTOR_DB_COLLECTION": "의학_지식"})
    assert link.is_symlink() and real.stat().st_mode & 0o777 == 0o640
    assert real.read_bytes() == (
        "# settings\r\nUSE_LOCAL_VECTOR_DB=true\r\nOTHER=1\r\nLOCAL_VECTOR_DB_COLLECTION=의학_지식\r\n".encode()
    )
    assert {k: co.steps[-1][k] for k in ("step", "ok", "detail")} == {
        "step": "write config.env atomically",
        "ok": True,
        "detail": "USE_LOCAL_VECTOR_DB=true, LOCAL_VECTOR_DB_COLLECTION=의학_지식",
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_the_write_keeps_the_files_owner_and_group(tmp_path):
    """A backend that runs as another user must still read its config.env after the switch."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")
    os.chown(cfg, 4321, 8765)
    cutover.Cutover(cfg, "true", "").write({"USE_LOCAL_VECTOR_DB": "true"})
    st = cfg.stat()
    assert (st.st_uid, st.st_gid) == (4321, 8765) and cfg.read_text() == "USE_LOCAL_VECTOR_DB=true\n"


def test_the_write_goes_ahead_when_the_owner_cannot_be_kept(tmp_path, monkeypatch):
    """Not root and the file belongs to another user: the new file is the runbook user's, and is written."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")

    def refused(*a):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chown", refused)
    cutover.Cutover(cfg, "true", "").write({"USE_LOCAL_VECTOR_DB": "true"})
    assert cfg.read_text() == "USE_LOCAL_VECTOR_DB=true\n"


@pytest.mark.parametrize(
    "before,changes,after",
    [
        # every other line byte for byte; the key set where it stands, with its comment
        (
            "# top\nA=1\nUSE_LOCAL_VECTOR_DB=false  # the switch\n\nB = 2\n",
            {"USE_LOCAL_VECTOR_DB": "true"},
            "# top\nA=1\nUSE_LOCAL_VECTOR_DB=true  # the switch\n\nB = 2\n",
        ),
        # `export KEY=`, spaces around `=`; a key that only starts like another is left alone
        (
            "export CHROMA_PATH = /old\nCHROMA_PATH_OLD=/x\n",
            {"CHROMA_PATH": "/new"},
            "export CHROMA_PATH=/new\nCHROMA_PATH_OLD=/x\n",
        ),
        # a key the file lacks is appended, in the order given; CRLF stays CRLF
        ("A=1\r\n", {"B": "2", "C": "3"}, "A=1\r\nB=2\r\nC=3\r\n"),
        # a '#' inside a value without a space before it is part of the value, not a comment
        ("URL=http://h/#frag\n", {"URL": "http://k/"}, "URL=http://k/\n"),
        # a commented-out setting is a comment, not a setting
        (
            "# USE_LOCAL_VECTOR_DB=true\n",
            {"USE_LOCAL_VECTOR_DB": "false"},
            "# USE_LOCAL_VECTOR_DB=true\nUSE_LOCAL_VECTOR_DB=false\n",
        ),
        ("", {"A": "1"}, "A=1\n"),
        # '=' inside the old value and inside the comment: the key is cut at its own '=', the comment kept whole
        ("DSN_ENV=a=b  # was x=y\n", {"DSN_ENV": "c"}, "DSN_ENV=c  # was x=y\n"),
    ],
)
def test_update_env_text_changes_only_the_keys_it_is_given(before, changes, after):
    assert cutover.update_env_text(before, changes) == after


def test_the_backup_is_kept_twice_private_and_byte_for_byte(tmp_path):
    cfg = tmp_path / "config.env"
    cfg.write_bytes(b"USE_LOCAL_VECTOR_DB=false\nKEY=\xea\xb0\x80\n")
    co = cutover.Cutover(cfg, "true", "")
    assert co.backup() == cfg.read_bytes()
    stamped = [p for p in tmp_path.iterdir() if p.name.startswith("config.env.backup.")]
    assert co.backup_path.read_bytes() == cfg.read_bytes() and len(stamped) == 1
    assert stamped[0].read_bytes() == cfg.read_bytes()
    assert co.backup_path.stat().st_mode & 0o777 == 0o600 and stamped[0].stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"config\.env\.backup\.\d{8}T\d{6}Z", stamped[0].name), stamped[0].name
    assert co.steps[-1]["step"] == "backup" and co.steps[-1]["ok"] is True
    assert co.steps[-1]["detail"] == f"{cfg} -> {co.backup_path} (0600)"


TRAPS_TERM = """
import signal, sys, time
def on_term(*a):
    time.sleep(1.0)  # a clean-up that takes a while: it must be given the time
    open(sys.argv[1], "w").write("cleaned up")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(120)
"""

IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(120)
"""


def _group(code, *args):
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout.readline().strip() == "ready"  # its handler is in place
    return proc


def test_ending_a_group_gives_it_the_grace_period_then_kills_what_ignores_sigterm(tmp_path):
    proc = _group(TRAPS_TERM, str(tmp_path / "done"))
    cutover.end_group(proc, grace_s=30)
    assert (tmp_path / "done").read_text() == "cleaned up"  # SIGTERM first, and time to act on it
    assert proc.returncode == 0 and not cutover.group_alive(proc.pid)
    stubborn = _group(IGNORES_TERM)
    cutover.end_group(stubborn, grace_s=0.5)
    assert stubborn.returncode == -signal.SIGKILL and not cutover.group_alive(stubborn.pid)


def test_cutover_refuses_retrieval_settings_other_than_the_ones_05_gated(tmp_path, monkeypatch):
    """Phase 06 switches the backend to the retrieval mode 04 wrote only if 05 gated exactly those settings
    (mode, alpha, sparse index, candidates, reranker), and writes them with the other switch settings."""
    from runbook import retrieval_modes

    monkeypatch.delenv("CUTOVER_TEST_KEY", raising=False)
    base = str(tmp_path / "base")
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\nCUTOVER_TEST_KEY=abc\n")
    mode = retrieval_modes.Mode(mode="hybrid", alpha=0.3, sparse_path=str(tmp_path / "sp"))
    entries = retrieval_modes.entries(mode)
    _state(base)
    handoff.record("04_rag_service", {"collection": COLLECTION, "entries": entries}, base_path=base)
    check = "phase 05 gated the retrieval settings phase 04 configured"

    def h05(**kw):
        handoff.record(
            "05_ab_compare",
            {"passed": True, "collection": COLLECTION, "export_manifest_sha256": "sha-A", **kw},
            base_path=base,
        )

    h05(configured_mode=mode.label, retrieval_entries=entries)
    p = cutover.plan(**_plan_args(base, cfg))
    assert {r["check"]: r for r in p.rows}[check]["ok"]
    assert p.changes["LOCAL_RETRIEVAL_MODE"] == "hybrid" and p.changes["LOCAL_HYBRID_ALPHA"] == "0.3"
    h05(configured_mode=mode.label, retrieval_entries={**entries, "LOCAL_CANDIDATES_TOP_K": "10"})
    row = _plan(base, cfg)[check]
    assert not row["ok"] and "the settings differ" in row["detail"]
    h05()  # a phase 05 from before the modes gated none
    assert not _plan(base, cfg)[check]["ok"]


def _plan_args(base, cfg):
    return dict(
        base_path=base,
        run_dir="",
        dry_run=False,
        direction="cutover",
        config_env=str(cfg),
        health_url="http://127.0.0.1:9/health",
        query_url="",
        approval="--approve run-x",
        allow_unverified_health=False,
        max_disk_pct=99.9,
        cloud_key_env="CUTOVER_TEST_KEY",
        restart_command="true",
    )


# --- what the page's cells call -------------------------------------------------------------------------
def test_service_settings_choose_the_backend_for_each_mode_and_direction(tmp_path):
    base = str(tmp_path / "base")
    backend = cutover.Backend("backend/config.env", "pm2 restart WELLO_BE", "http://h/health", "http://h/q")
    ext = cutover.service_settings(cutover.Run(base, dry_run=False), "external", backend)
    assert ext["config_env"].endswith("/backend/config.env") and Path(ext["config_env"]).is_absolute()
    assert ext["restart_command"] == "pm2 restart WELLO_BE" and "note" not in ext
    # reference mode, dry run: nothing is started, the page says so
    dry = cutover.service_settings(cutover.Run(base, dry_run=True), "reference", backend)
    assert "starts the demo's stand-in" in dry["note"]
    # reference mode, rollback: back to the stand-in the cutover started (phase 06's record names it)
    started = {"config_env": "/srv/stand-in/config.env", "health_url": "http://127.0.0.1:5/health"}
    handoff.record("06_cutover", {"direction": "cutover", "service": started}, base_path=base)
    back = cutover.service_settings(
        cutover.Run(base, dry_run=False, direction="rollback"), "reference", backend
    )
    assert back["config_env"] == started["config_env"] and back["health_url"] == started["health_url"]
    assert back["restart_command"] == "pm2 restart WELLO_BE"  # what the record does not name: the params'


def test_a_rollback_plans_to_put_the_cutover_backup_back_else_flips_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("CUTOVER_TEST_KEY", "abc")
    base = str(tmp_path / "base")
    cfg = tmp_path / "config.env"
    cloud = "# settings\nUSE_LOCAL_VECTOR_DB=false\nOTHER=1\n"
    cfg.write_text(
        cutover.update_env_text(cloud, {"USE_LOCAL_VECTOR_DB": "true", "LOCAL_VECTOR_DB_COLLECTION": "c"})
    )
    args = {**_plan_args(base, cfg), "direction": "rollback"}
    p = cutover.plan(**args)  # no backup: the flag only
    assert p.restore is None and p.changes == {"USE_LOCAL_VECTOR_DB": "false"}
    assert "does not exist" in {r["check"]: r for r in p.rows}["what the rollback writes"]["detail"]
    cfg.with_name("config.env.backup").write_text(cloud)
    p = cutover.plan(**args)
    assert p.restore == cloud.encode() and p.restore_from.endswith("config.env.backup") and p.ok, p.rows
    assert p.changes == {"LOCAL_VECTOR_DB_COLLECTION": "(removed)", "USE_LOCAL_VECTOR_DB": "false"}
    steps = {
        s["step"]: s["what"]
        for s in cutover.steps_planned(p, {"config_env": str(cfg)}, ["q"], cutover.Timeouts())
    }
    assert "byte for byte" in steps["write config.env atomically"] and "the cloud arm" in steps["health"]
    cfg.with_name("config.env.backup").write_text("USE_LOCAL_VECTOR_DB=true\n")  # not the cloud: not put back
    assert cutover.plan(**args).restore is None


def test_a_switch_that_puts_bytes_back_keeps_the_backup_it_restores(tmp_path):
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=true\nLOCAL_VECTOR_DB_COLLECTION=c\n")
    backup = cfg.with_name("config.env.backup")
    backup.write_text("USE_LOCAL_VECTOR_DB=false\n")
    co = cutover.Cutover(cfg, "true", "")
    original = co.backup(keep_backup=True)
    assert backup.read_text() == "USE_LOCAL_VECTOR_DB=false\n"  # not overwritten by the file it replaces
    stamped = [p for p in tmp_path.iterdir() if p.name.startswith("config.env.backup.")]
    assert [p.read_bytes() for p in stamped] == [original]
    assert stamped[0].stat().st_mode & 0o777 == 0o600
    assert co.steps[-1]["detail"] == f"{cfg} -> {stamped[0]} (0600); {backup} kept: it is what goes back"


def test_a_dry_run_before_the_earlier_phases_plans_with_placeholders(tmp_path, capsys):
    base = str(tmp_path / "base")
    run = cutover.Run(base, dry_run=True)
    svc = cutover.service_settings(run, "external", cutover.Backend())
    p = cutover.plan_switch(run, svc, 80.0, "CUTOVER_TEST_KEY")
    rows = {r["check"]: r for r in p.rows}
    assert "01_extract, 03_migrate, 04_rag_service not run yet" in rows["hand-offs of 01-05"]["detail"]
    assert (
        p.changes["USE_LOCAL_VECTOR_DB"] == "true"
        and "has not run" in p.changes["LOCAL_VECTOR_DB_COLLECTION"]
    )
    assert len([ln for ln in capsys.readouterr().out.splitlines() if "has not run" in ln]) == 3
    rec = cutover.outcome(run, p, svc, None)
    assert rec["dry_run"] and rec["result"].startswith("dry run") and "DRY RUN" in cutover.verdict(rec)
    assert not (tmp_path / "base").exists()
    real = cutover.plan_switch(cutover.Run(base, dry_run=False), svc, 80.0, "CUTOVER_TEST_KEY")
    row = {r["check"]: r for r in real.rows}["hand-offs of 01-04"]  # a real run still refuses, naming it
    assert not row["ok"] and "run phase 01_extract first" in row["detail"] and not real.ok


def test_sigterm_during_a_switch_raises_terminated_and_the_old_handler_comes_back():
    """Inside ``signals_as_exceptions`` SIGTERM is an exception the switch turns into a rollback; outside it
    the handler that was there before is in force again."""
    seen = []
    before = signal.signal(signal.SIGTERM, lambda n, f: seen.append(n))
    try:
        with pytest.raises(cutover.Terminated, match="^SIGTERM$"):
            with cutover.signals_as_exceptions():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the signal arrives before this ends
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_restore_holds_off_sigint_and_sigterm_until_it_is_done():
    """Inside ``signals_deferred`` neither signal interrupts: both are noted, in order; afterwards the
    handlers that were there before are in force again."""
    seen = []
    before = {s: signal.signal(s, lambda n, f: seen.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with cutover.signals_deferred() as got:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while len(got) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert got == [signal.SIGINT, signal.SIGTERM] and seen == []
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGINT, signal.SIGTERM]
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_signal_handling_is_left_alone_outside_the_main_thread():
    """Python sets handlers only in the main thread: elsewhere both guards are no-ops instead of errors."""
    errors = []

    def worker():
        try:
            with cutover.signals_as_exceptions():
                pass
            with cutover.signals_deferred() as got:
                assert got is None
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == []


def test_restart_runs_the_command_and_names_what_went_wrong(tmp_path):
    """The restart command's outcome, each way: exit 0 is a step; no command, a missing program and a
    non-zero exit stop the switch naming the cause (the last 300 characters of its output)."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")
    co = cutover.Cutover(cfg, "true", "http://127.0.0.1:9/health")
    co.restart()
    assert co.steps[-1]["step"] == "restart" and co.steps[-1]["ok"] is True
    assert co.steps[-1]["detail"] == "true (exit 0)" and len(co.restart_groups) == 1
    for command, message in [
        ("", "restart command could not run: restart_command is empty"),
        ("/nonexistent/restart-it", "restart command could not run: [Errno 2] No such file or directory"),
        (
            f"{sys.executable} -c \"print('x' * 400 + 'TAIL'); raise SystemExit(7)\"",
            "restart command exited 7: ",
        ),
    ]:
        with pytest.raises(cutover.CutoverFailed) as err:
            cutover.Cutover(cfg, command, "http://127.0.0.1:9/health").restart()
        assert str(err.value).startswith(message), str(err.value)
    assert str(err.value) == "restart command exited 7: " + ("x" * 400 + "TAIL\n")[-300:]


def test_a_stop_request_after_the_write_rolls_the_switch_back(tmp_path):
    """The runner's stop file, dropped while the restart runs, is honoured before the next step: the
    switch restores the backup instead of waiting for health, and says why."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")
    stop = tmp_path / "STOP"
    co = cutover.Cutover(
        cfg,
        f"sh -c 'echo SIGTERM > {stop}'",
        "http://127.0.0.1:9/health",
        stop_file=stop,
        health_timeout_s=0.5,
        restore_timeout_s=0.5,
    )
    with pytest.raises(cutover.CutoverFailed) as err:
        co.switch({"USE_LOCAL_VECTOR_DB": "true"}, EXPECT, BACK)
    msg = str(err.value)
    assert msg.startswith("switch to the local arm") and "stop requested by the runner (SIGTERM)" in msg, msg
    assert "Automatic rollback: config.env restored byte-identical" in msg
    assert cfg.read_text() == "USE_LOCAL_VECTOR_DB=false\n"
    assert [s["step"] for s in co.steps][:4] == ["backup", "write config.env atomically", "restart", "switch"]
    assert not any(s["step"] == "health" for s in co.steps)


def test_an_interrupted_restart_ends_the_commands_process_group(tmp_path):
    """Ctrl-C while the restart command runs: its whole process group is ended before the interrupt goes
    on to the switch (which then rolls back)."""
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")
    started, child = tmp_path / "started", tmp_path / "child"
    co = cutover.Cutover(
        cfg, f"sh -c 'sleep 60 & echo $! > {child}; touch {started}; wait'", "http://127.0.0.1:9/health"
    )

    def interrupt_once_started():
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        co.restart()
    assert len(co.restart_groups) == 1 and not cutover.group_alive(co.restart_groups[0])
    assert not _alive(int(child.read_text())), "what the restart command started outlived it"


def _alive(pid: int) -> bool:
    """A process that runs (a zombie waiting to be reaped does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_restart_command_runs_in_the_project_folder_with_its_errors_captured(tmp_path, monkeypatch):
    """Relative paths in a restart command resolve against the project folder (as every path parameter
    does), wherever the runbook was started from; what it writes to stderr is in the error."""
    from runbook.paths import PROJECT_ROOT

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "config.env"
    cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")
    where = tmp_path / "where"
    cutover.Cutover(cfg, f"sh -c 'pwd > {where}'", "").restart()
    assert where.read_text().strip() == str(PROJECT_ROOT)
    with pytest.raises(cutover.CutoverFailed, match="exited 1: pm2: process WELLO_BE not found"):
        cutover.Cutover(cfg, "sh -c 'echo pm2: process WELLO_BE not found >&2; exit 1'", "").restart()


def test_the_backups_time_stamp_is_utc_whatever_the_machines_zone(tmp_path, monkeypatch):
    """Backups from a Seoul server and a UTC CI sort the same way: the stamp is UTC."""
    monkeypatch.setenv("TZ", "Asia/Seoul")
    time.tzset()
    try:
        cfg = tmp_path / "config.env"
        cfg.write_text("USE_LOCAL_VECTOR_DB=false\n")
        before = dt.datetime.now(dt.UTC)
        cutover.Cutover(cfg, "true", "").backup()
        (stamped,) = [p for p in tmp_path.iterdir() if p.name.startswith("config.env.backup.")]
        stamp = dt.datetime.strptime(stamped.name.rsplit(".", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        assert abs((stamp - before).total_seconds()) < 600, (stamp, before)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
