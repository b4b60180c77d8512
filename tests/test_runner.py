"""The runner: parameter checks, failing phases, secret hygiene, and the demo runbook end to end."""

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
import yaml

from runbook import audit, config, credentials, runner
from runbook.paths import PROJECT_ROOT

from .conftest import CACHE, write_params


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "runbook", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
    )


def test_misspelt_parameter_stops_before_anything_runs(tmp_path, outputs):
    p = write_params(tmp_path, colection_name="x")
    with pytest.raises(config.ParameterError, match=r"colection_name \(did you mean collection_name\?\)"):
        runner.run(p)
    assert not outputs.exists() or not any(outputs.iterdir())
    r = cli("run", str(p))
    assert r.returncode == 2 and "colection_name" in r.stderr


def test_secret_looking_parameter_stops_the_run(tmp_path, outputs):
    p = write_params(tmp_path, source_base_url="https://user:hunter2hunter2@api.example.com")
    r = cli("run", str(p), env={"RUNBOOK_OUTPUTS": str(outputs)})
    assert r.returncode == 2 and "source_base_url" in r.stderr and "hunter2hunter2" not in r.stderr
    p2 = write_params(tmp_path, openai_api_key="sk-abcdefabcdefabcdefabcdef")
    with pytest.raises(credentials.SecretParameterError, match="openai_api_key"):
        runner.run(p2)


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "runbook", "display_name": "Python (runbook)", "language": "python"}
    params = nbformat.v4.new_code_cell(
        'run_dir: str = ""  # help: run folder\nbase_path: str = ""  # help: base'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test\nRoll back: nothing."), params] + [
        nbformat.v4.new_code_cell(c) for c in cells
    ]
    nbformat.write(nb, path)


def test_failing_phase_stops_the_run_naming_notebook_and_cell(tmp_path, outputs):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_ok.ipynb", ["print('fine')"])
    _notebook(nbs / "01_broken.ipynb", ["x = 1", "raise RuntimeError('the export is short by 3 chunks')"])
    _notebook(nbs / "02_never.ipynb", ["print('must not run')"])
    p = write_params(tmp_path)
    params = {k: v for k, v in __import__("yaml").safe_load(p.read_text()).items() if k == "base_path"}
    p.write_text(json.dumps(params))
    with pytest.raises(runner.RunFailed) as e:
        runner.run(p, notebooks_dir=nbs)
    msg = str(e.value)
    # the cell is counted in the executed notebook (papermill adds one); the message is the notebook's own
    assert "01_broken" in msg and "cell 4" in msg and "short by 3 chunks" in msg
    m = json.loads((e.value.run_dir / "manifest.json").read_text())
    assert [ph["status"] for ph in m["phases"]] == ["ok", "failed", "pending"] and m["status"] == "failed"
    assert (e.value.run_dir / "01_broken.html").exists() and (e.value.run_dir / "index.html").exists()
    assert not (e.value.run_dir / "02_never.ipynb").exists()


def test_leak_in_a_notebook_is_scrubbed_from_the_run_folder(tmp_path, outputs, monkeypatch):
    canary = "canary-LEAK-7f3e9a1b2c"
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", canary)
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_leaky.ipynb", ["import os; print(os.environ['LLAMA_CLOUD_API_KEY'])"])
    p = tmp_path / "p.yaml"
    p.write_text(json.dumps({"base_path": str(tmp_path / "b")}))
    res = runner.run(p, notebooks_dir=nbs)
    m = json.loads((res.run_dir / "manifest.json").read_text())
    assert m["phases"][0]["secrets_scrubbed"] >= 1  # the leak was found and reported
    assert credentials.scan_for_values(res.run_dir, [canary]) == []


def test_prepare_only_writes_parameterised_notebooks(tmp_path, outputs):
    p = write_params(tmp_path)
    res = runner.run(p, only=["01"], prepare_only=True)
    nb = nbformat.read(res.run_dir / "01_extract.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "index_name = " in injected[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_demo_runbook_end_to_end_with_canary_key(tmp_path, outputs, monkeypatch, capfd):
    """The demo params run every phase; canaries of every kind of secret in the environment appear in no
    file of the run folder or the base path, and nowhere on the console."""
    from .test_secret_canaries import CANARIES, NEEDLES

    for name, value in CANARIES.items():  # the LlamaCloud key is the local server's, the Google key Gemini's
        monkeypatch.setenv(name, value)
    # the shipped demo params, as `make demo` runs them; only the base path moves under tmp_path
    demo = yaml.safe_load((PROJECT_ROOT / "runbook_params" / "demo.yaml").read_text(encoding="utf-8"))
    p = write_params(tmp_path, **{**demo, "base_path": str(tmp_path / "base"), "embedding_cache": str(CACHE)})
    res = runner.run(p)
    m = json.loads((res.run_dir / "manifest.json").read_text())
    assert m["status"] == "ok" and all(ph["status"] == "ok" for ph in m["phases"])
    assert m["params_sha256"] == config.sha256_file(p) and m["packages"]["chromadb"]
    for ph in m["phases"]:
        assert (res.run_dir / f"{ph['notebook']}.ipynb").exists() and (
            res.run_dir / f"{ph['notebook']}.html"
        ).exists()
        assert "secrets_scrubbed" not in ph  # nothing leaked in the first place
    assert (res.run_dir / "index.html").exists()
    h03 = json.loads((res.run_dir / "handoff" / "03_migrate.json").read_text())
    assert h03["records"] == 255 and h03["recall@10"] >= 0.99 and all(c["ok"] for c in h03["checks"])
    assert h03["sparse_index"] and any("term queries" in c["check"] for c in h03["checks"])
    h05 = json.loads((res.run_dir / "handoff" / "05_ab_compare.json").read_text())
    # the Korean corpus, a hybrid reranked cloud: label quality gated first, on the mode phase 04 configured
    arms = {a["arm"]: a for a in h05["arms"]}
    assert list(arms) == [
        "cloud as configured",
        "cloud dense-only",
        "local dense",
        "local hybrid (alpha 0.3)",
    ]
    assert (
        h05["passed"]
        and h05["configured_mode"] == "local hybrid (alpha 0.3)" in h05["modes_meeting_label_gates"]
    )
    assert h05["gates"][0]["check"].startswith("local hybrid (alpha 0.3): hit@5 on labelled questions")
    cloud, local = arms["cloud as configured"], arms["local hybrid (alpha 0.3)"]
    assert (
        local["MRR (labels)"] >= cloud["MRR (labels)"] - 0.02
        and local["hit@5 (labels)"] >= cloud["hit@5 (labels)"] - 0.02
    )
    # and the page shows how far dense retrieval alone (an English model on Korean text) falls short
    assert arms["local dense"]["hit@5 (labels)"] < local["hit@5 (labels)"] - 0.3
    page = (res.run_dir / "05_ab_compare.html").read_text(encoding="utf-8")
    assert "trained on English" in page and "Local hybrid by alpha" in page
    assert "Plotly.newPlot" in (res.run_dir / "05_ab_compare.html").read_text(encoding="utf-8")
    html = (res.run_dir / "01_extract.html").read_text(encoding="utf-8")
    assert "Plotly.newPlot" in html and "Chunks per document" in html
    h06 = json.loads((res.run_dir / "handoff" / "06_cutover.json").read_text())
    assert h06["direction"] == "cutover" and all(s["ok"] for s in h06["steps"])
    h07 = json.loads((res.run_dir / "handoff" / "07_update_vectors.json").read_text())
    assert h07["local"]["added"]["documents"] == 1 and h07["cloud"]["reconciliation"]["clean"]
    assert (res.run_dir / "08_monitor.html").exists()
    log = (tmp_path / "base" / "logs" / "migration.log").read_text(encoding="utf-8")
    assert "[03_migrate] verification passed" in log and "[06_cutover] cutover complete" in log
    # every file of the run folder and of the base path (logs, state, export, Chroma), and the console
    assert credentials.scan_for_values(res.run_dir, NEEDLES) == []
    assert credentials.scan_for_values(tmp_path / "base", NEEDLES) == []
    out, err = capfd.readouterr()
    assert [n[:12] for n in NEEDLES if n in out + err] == []
    assert "[08] ok" in out  # the console was captured
    assert "without encryption" not in out + err  # the kernels talk over Unix sockets, not loopback TCP
    assert "Based on" in (res.run_dir / "04_rag_service.html").read_text(encoding="utf-8")  # Gemini answered
    # a second run is a new folder; the first is untouched
    before = sorted(p.name for p in res.run_dir.iterdir())
    res2 = runner.run(p, only=["00"])
    assert res2.run_dir != res.run_dir and sorted(p.name for p in res.run_dir.iterdir()) == before
    # the run folder's pages, as a stakeholder reads them in a browser (tests/browser.py: real Chromium)
    _reader_sees_the_demo(res.run_dir)
    # sealed: every file's sha256 in the manifest, and the next run names this one's manifest
    assert audit.audit(res.run_dir).ok and audit.audit(res2.run_dir).ok
    assert (
        json.loads((res2.run_dir / "manifest.json").read_text())["previous_run"]["run_id"] == res.run_dir.name
    )
    size = sum(f.stat().st_size for f in res.run_dir.rglob("*") if f.is_file())
    assert size < 8e6, f"the demo run folder holds {size / 1e6:.1f} MB"


def _reader_sees_the_demo(run_dir):
    from .browser import view

    s = view(run_dir / "summary.html")
    first = s["first_screen"]
    assert s["title"].startswith("Summary") and s["scroll_width"] <= 1280
    assert "PASS" in first and "REHEARSAL" in first, first
    assert "LlamaCloud" in first and "Dr.Welno" in first and "ChromaDB" in first, first  # from where to where
    assert "hit rate" in first and "vs" in first, first  # the A/B decision with its numbers
    p05 = view(run_dir / "05_ab_compare.html")
    assert "PASS" in p05["first_screen"] and "REHEARSAL" in p05["first_screen"], p05["first_screen"]
    assert p05["title"].startswith("Phase 05") and p05["plots"] >= 1  # plotly.js from assets/, offline
    for page in (s, p05):  # not one brace in what the reader sees (scripts and styles aside)
        assert "{" not in page["all_text"], page["all_text"][page["all_text"].index("{") - 80 :][:160]
    for path in sorted(run_dir.glob("*.html")):  # and no dict or JSON text on any page
        raw = re.findall(r".{0,40}\{['\"].{0,40}", view(path)["all_text"])
        assert not raw, f"{path.name}: raw dict text on the page: {raw[:3]}"


INTERRUPTIBLE = """
import sys
from pathlib import Path
from runbook import runner
try:
    runner.run(Path(sys.argv[1]), notebooks_dir=Path(sys.argv[2]))
except runner.RunInterrupted as e:
    print("INTERRUPTED:", e, flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_run_is_recorded_as_interrupted(tmp_path, outputs, sig):
    """Ctrl-C or SIGTERM mid-phase: the phase and the run say 'interrupted' (never 'ok'), in the manifest,
    the index and the migration log, and no later phase runs."""
    import signal
    import time

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    marker = tmp_path / "in-phase-01"
    _notebook(nbs / "00_ok.ipynb", ["print('fine')"])
    _notebook(
        nbs / "01_slow.ipynb",
        [f"import time; open({str(marker)!r}, 'w').write('x'); time.sleep(120)"],
    )
    _notebook(nbs / "02_never.ipynb", ["print('must not run')"])
    base = tmp_path / "base"
    (base / "logs").mkdir(parents=True)
    p = tmp_path / "p.yaml"
    p.write_text(json.dumps({"base_path": str(base)}))
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, str(p), str(nbs)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "RUNBOOK_OUTPUTS": str(outputs)},
    )
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "phase 01 started"
    proc.send_signal(getattr(signal, sig))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "INTERRUPTED" in out, out
    run_dir = next(outputs.iterdir())
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "interrupted"
    assert [ph["status"] for ph in m["phases"]] == ["ok", "interrupted", "pending"]
    assert m["phases"][1]["interrupted_by"] == sig
    assert "interrupted" in (run_dir / "index.html").read_text(encoding="utf-8")
    log = (base / "logs" / "migration.log").read_text(encoding="utf-8")
    assert "[00_ok] phase end: ok" in log and "[01_slow] phase end: interrupted" in log
    assert not (run_dir / "02_never.ipynb").exists()


def test_a_failed_phase_is_logged_with_its_message(tmp_path, outputs):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_broken.ipynb", ["raise RuntimeError('the export is short by 3 chunks')"])
    base = tmp_path / "base"
    (base / "logs").mkdir(parents=True)
    p = tmp_path / "p.yaml"
    p.write_text(json.dumps({"base_path": str(base)}))
    with pytest.raises(runner.RunFailed):
        runner.run(p, notebooks_dir=nbs)
    log = (base / "logs" / "migration.log").read_text(encoding="utf-8")
    assert "[00_broken] phase end: failed" in log and "short by 3 chunks" in log
