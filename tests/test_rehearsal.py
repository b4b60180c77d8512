"""The production-shaped rehearsal end to end: runbook_params/rehearsal.yaml (welno.yaml with the source
swapped) against the stand-ins `python -m runbook.rehearsal up` starts -- the LlamaCloud and Gemini
stand-in and the Welno-like backend under its supervisor. The run stops after 05 for a go; --approve runs
06 -> 08; the cron line runs 08; --rollback goes back. Real processes throughout."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from dotenv import dotenv_values

from runbook import config, cutover, runner
from runbook.paths import PARAMS_DIR, PROJECT_ROOT
from runbook.rehearsal import __main__ as rehearsal
from runbook.rehearsal import cloud_emulator

from .conftest import CACHE

KEYS = {
    "LLAMA_CLOUD_API_KEY": "rehearsal-cloud-key-5f3a",
    "GOOGLE_API_KEY": "rehearsal-google-key-9c1d",
    "OPENAI_API_KEY": "sk-rehearsal-openai-key-7e2b",
}


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    home = tmp_path_factory.mktemp("rehearsal")
    saved = {k: os.environ.get(k) for k in (*KEYS, "RUNBOOK_OUTPUTS")}
    os.environ.update(KEYS)
    os.environ["RUNBOOK_OUTPUTS"] = str(home / "outputs")
    try:
        info = rehearsal.up(
            home=str(home),
            cloud_port=cloud_emulator.free_port(),
            backend_port=cloud_emulator.free_port(),
            query_latency_ms=250,
        )
        params = yaml.safe_load((PARAMS_DIR / "rehearsal.yaml").read_text(encoding="utf-8"))
        params.update(
            base_path=str(home / "vector_db"),
            source_base_url=info["cloud_url"],
            gemini_base_url=info["cloud_url"],
            embed_api_base=info["embed_api_base"],
            config_env_path=info["config_env"],
            restart_command=info["restart_command"],
            health_url=info["health_url"],
            query_url=info["query_url"],
            service_pidfile=info["service_pidfile"],
            embedding_cache=str(CACHE),
            verify_sample=30,
        )
        p = home / "rehearsal.yaml"
        p.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
        yield {"home": home, "params": p, "info": info, "runs": {}}
    finally:  # whatever came up is stopped, even when `up` itself failed half way
        rehearsal.down(str(home))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def health(stage) -> dict:
    return cutover.http_json(stage["info"]["health_url"])[1]


def test_a_production_run_stops_after_05_awaiting_a_go(stage):
    cfg = stage["info"]["config_env"]
    before = open(cfg, "rb").read()
    with pytest.raises(runner.AwaitingApproval) as e:
        runner.run(stage["params"])
    run_dir = e.value.run_dir
    stage["runs"]["approved"] = run_dir.name
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "awaiting approval"
    assert [p["status"] for p in m["phases"]] == ["ok"] * 6 + ["pending"] * 3
    assert m["decision"]["approve with"].endswith(f"--approve {run_dir.name}")
    page = (run_dir / "index.html").read_text(encoding="utf-8")
    assert "awaiting approval" in page and f"--approve {run_dir.name}" in page
    assert open(cfg, "rb").read() == before and health(stage)["arm"] == "cloud"
    # phase 04/05 answered through Gemini's API shape (the stand-in), side by side
    assert "Based on" in (run_dir / "04_rag_service.html").read_text(encoding="utf-8")


def test_the_cutover_phase_alone_is_refused_without_a_go(stage):
    r = subprocess.run(
        [sys.executable, "-m", "runbook", "run", str(stage["params"]), "--only", "06"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert r.returncode == 2 and "--approve" in r.stderr


def test_approve_refuses_a_run_that_did_not_pass_for_this_collection(stage):
    outputs = stage["home"] / "outputs"
    with pytest.raises(config.ParameterError, match="no such run"):
        runner.run(stage["params"], approve="20260101T000000Z-nothing")
    good = outputs / stage["runs"]["approved"]
    other = outputs / (good.name + "-other-collection")
    shutil.copytree(good, other)
    rec = other / "handoff" / "05_ab_compare.json"
    h05 = json.loads(rec.read_text())
    h05["collection"] = "welno_medical_knowledge__an-older-export"
    rec.write_text(json.dumps(h05))
    with pytest.raises(config.ParameterError) as e:
        runner.run(stage["params"], approve=other.name)
    assert (
        "collection: approved welno_medical_knowledge__an-older-export, now welno_medical_knowledge__"
        in str(e.value)
    )
    h05["passed"] = False
    rec.write_text(json.dumps(h05))
    with pytest.raises(config.ParameterError, match="did not pass"):
        runner.run(stage["params"], approve=other.name)


def test_approved_run_switches_the_backend_and_monitoring_runs_from_cron(stage):
    run_id = stage["runs"]["approved"]
    res = runner.run(stage["params"], approve=run_id)
    m = json.loads((res.run_dir / "manifest.json").read_text())
    assert [p["notebook"][:2] for p in m["phases"]] == ["06", "07", "08"]
    assert m["status"] == "ok" and run_id in m["approval"]
    h = health(stage)
    h03 = json.loads((stage["home"] / "vector_db" / "state" / "handoff" / "03_migrate.json").read_text())
    assert h["arm"] == "local" and h["collection"] == h03["collection"] and h["count"] == h03["count"]
    assert h03["collection"].startswith("welno_medical_knowledge__")
    env = dotenv_values(stage["info"]["config_env"])
    assert (
        env["LOCAL_VECTOR_DB_COLLECTION"] == h03["collection"]
        and env["GOOGLE_API_KEY"] == KEYS["GOOGLE_API_KEY"]
    )
    status, body = cutover.http_json(
        stage["info"]["query_url"], {"question": "대장내시경 전 식사"}, timeout=60
    )
    assert status == 200 and body["arm"] == "local" and body["answer"].startswith("Based on")
    assert f"GO: --approve {run_id}" in (res.run_dir / "06_cutover.html").read_text(encoding="utf-8")
    log = (stage["home"] / "vector_db" / "logs" / "migration.log").read_text(encoding="utf-8")
    assert "[06_cutover] phase end: ok" in log and "[05_ab_compare] phase end: ok" in log
    # the README's cron line, on these params
    r = subprocess.run(
        [sys.executable, "-m", "runbook", "run", str(stage["params"]), "--only", "08"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_rollback_on_purpose(stage):
    res = runner.run(stage["params"], rollback=True)
    assert json.loads((res.run_dir / "manifest.json").read_text())["status"] == "ok"
    assert health(stage)["arm"] == "cloud"
    assert dotenv_values(stage["info"]["config_env"])["USE_LOCAL_VECTOR_DB"] == "false"
