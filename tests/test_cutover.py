"""Phase 06 and 08 with a real reference service process on loopback (and a real local LlamaCloud server)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from dotenv import dotenv_values

from runbook import cloud_emulator, cutover, rag_switch, service_ctl
from runbook.paths import Layout

from .conftest import write_params

LOAD = """
import sys
from runbook import chroma_target, export_format, load
exp = export_format.open_export(sys.argv[2])
client = chroma_target.open_client("embedded", sys.argv[1])
prov = {"source_index_id": exp.manifest["index_id"], "export_manifest_sha256": exp.manifest_sha256,
        "embedding_model": "huggingface:sentence-transformers/all-MiniLM-L6-v2", "dimension": 384}
col, _ = chroma_target.create_or_verify(client, "welno_medical_knowledge", chroma_target.HnswSettings(), prov)
load.load_export(client, col, sys.argv[2], sys.argv[1] + "/cp.json", progress=False)
"""


@pytest.fixture
def backend(tmp_path, demo_export, server, key_env):
    """The demo's stand-in backend: config.env on the cloud arm, the reference service started on it."""
    base = tmp_path / "base"
    subprocess.run([sys.executable, "-c", LOAD, str(base), str(demo_export)], check=True)
    layout = Layout.from_params(str(base))
    from runbook import embeddings

    spec = embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384)
    entries = rag_switch.config_entries(
        False,
        str(layout.chroma_db),
        "welno_medical_knowledge",
        spec,
        "Dr.Welno",
        "",
        "Default",
        server.url,
        key_env,
        5,
        0.0,
        "gemini-2.0-flash",
        "NO_GOOGLE_KEY",
    )
    svc = cutover.reference_backend(layout, entries, cloud_emulator.free_port())
    co = cutover.Cutover(
        cutover.Path(svc["config_env"]),
        svc["restart_command"],
        svc["health_url"],
        svc["query_url"],
        ["What should I eat before a colonoscopy?"],
        health_timeout_s=60,
        layout=layout,
    )
    co.wait_health(expected_local=False)
    yield svc, co, layout
    service_ctl.stop(cutover.Path(svc["pidfile"]))


def test_cutover_then_explicit_rollback(backend):
    svc, co, layout = backend
    co.switch(to_local=True)
    status, body = cutover.http_json(svc["query_url"], {"question": "How is Helicobacter pylori treated?"})
    assert status == 200 and body["arm"] == "local" and body["results"][0]["title"] == "헬리코박터"
    assert cutover.http_json(svc["health_url"])[1]["count"] == 257
    backup = co.backup_path
    assert backup.exists() and backup.stat().st_mode & 0o777 == 0o600
    assert dotenv_values(backup)["USE_LOCAL_VECTOR_DB"] == "false"
    co.switch(to_local=False)  # direction: rollback, on purpose
    assert cutover.http_json(svc["health_url"])[1]["arm"] == "cloud"
    log = layout.migration_log.read_text(encoding="utf-8")
    assert "[06_cutover] backup: ok" in log and "[06_cutover] smoke queries: ok" in log


def test_restart_into_a_broken_config_rolls_back_byte_identical(backend):
    svc, co, _ = backend
    cfg = cutover.Path(svc["config_env"])
    # the local arm will not start: its collection does not exist
    cfg.write_text(
        cutover.update_env_text(cfg.read_text(), {"LOCAL_VECTOR_DB_COLLECTION": "no_such_collection"})
    )
    before = cfg.read_bytes()
    co.health_timeout_s = 12
    with pytest.raises(cutover.CutoverFailed) as e:
        co.switch(to_local=True)
    msg = str(e.value)
    assert "not healthy" in msg and "restored byte-identical" in msg and "cloud arm" in msg
    assert cfg.read_bytes() == before
    status, body = cutover.http_json(svc["query_url"], {"question": "What is the FIT stool test for?"})
    assert status == 200 and body["arm"] == "cloud" and body["results"]


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
    # a finished write keeps every other line and comment
    co = cutover.Cutover(cfg, "true", "")
    co.write({"USE_LOCAL_VECTOR_DB": "true"})
    assert (
        cfg.read_text()
        == "# backend settings\nUSE_LOCAL_VECTOR_DB=true  # cloud\nLLAMA_CLOUD_API_KEY=llx-keep-me\n"
    )


def test_monitor_notebook_fails_on_injected_error_rate(backend, tmp_path, outputs):
    from runbook import runner

    svc, co, layout = backend
    co.switch(to_local=True)
    cutover.http_json(svc["health_url"].replace("/health", "/_admin/faults"), {"error_rate": 0.6})
    p = write_params(
        tmp_path,
        base_path=str(layout.base),
        metrics_url=svc["metrics_url"],
        query_url=svc["query_url"],
        probe_questions=10,
        max_error_rate=0.05,
    )
    with pytest.raises(runner.RunFailed, match="error rate"):
        runner.run(p, only=["08"])
    hist = [json.loads(x) for x in (layout.logs / "monitor_history.jsonl").read_text().splitlines()]
    assert hist[-1]["error rate"] > 0.05
    cutover.http_json(svc["health_url"].replace("/health", "/_admin/faults"), {"error_rate": 0.0})
    res = runner.run(p, only=["08"])  # healthy again: the next scheduled run passes
    assert json.loads((res.run_dir / "manifest.json").read_text())["status"] == "ok"


def test_preconditions_name_a_missing_config_and_key(tmp_path, monkeypatch):
    """External mode with no config_env_path (or a folder) fails the check with a message saying what to set."""
    monkeypatch.delenv("CUTOVER_TEST_KEY", raising=False)
    base = str(tmp_path / "base")
    Layout.from_params(base).base.mkdir(parents=True)
    rows = {
        r["check"]: r
        for r in cutover.preconditions(base, cutover.Path(""), "CUTOVER_TEST_KEY", "x", 99.9, "rollback")
    }
    assert (
        not rows["config.env exists"]["ok"]
        and "config_env_path is empty" in rows["config.env exists"]["detail"]
    )
    assert (
        not rows["cloud key kept for rollback"]["ok"]
        and "missing" in rows["cloud key kept for rollback"]["detail"]
    )
    rows = {
        r["check"]: r
        for r in cutover.preconditions(base, tmp_path, "CUTOVER_TEST_KEY", "x", 99.9, "rollback")
    }
    assert not rows["config.env exists"]["ok"] and "is not a file" in rows["config.env exists"]["detail"]
    env = tmp_path / "config.env"
    env.write_text("USE_LOCAL_VECTOR_DB=false\nCUTOVER_TEST_KEY=abc\n", encoding="utf-8")
    rows = cutover.preconditions(base, env, "CUTOVER_TEST_KEY", "x", 99.9, "rollback")
    assert all(r["ok"] for r in rows), rows
    # a cutover also needs phase 05's gates for this export: with no phase 05 hand-off it is refused
    rows = {r["check"]: r for r in cutover.preconditions(base, env, "CUTOVER_TEST_KEY", "x", 99.9, "cutover")}
    assert not rows["phase 05 gates passed"]["ok"]
