"""Phase 08 against a real backend process: the reference RAG service on loopback, on the local arm of a
real Chroma collection (the demo export), started once for this module. The monitor measures it itself:
probes through its query URL (or the switch factory), its memory by pid file or process name, the disk."""

import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nbformat
import pytest

from runbook import config, embeddings, handoff, monitor, rag_switch, runner
from runbook.paths import NOTEBOOKS_DIR, Layout
from runbook.rehearsal import cloud_emulator, service_ctl

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


@pytest.fixture(scope="module")
def backend(tmp_path_factory, demo_export):
    """The demo's stand-in backend, switched to the local arm: its config.env, pid file and URLs."""
    mp = pytest.MonkeyPatch()
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        mp.delenv(k, raising=False)
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    base = tmp_path_factory.mktemp("monitor") / "base"
    subprocess.run([sys.executable, "-c", LOAD, str(base), str(demo_export)], check=True)
    layout = Layout.from_params(str(base))
    layout.ensure()
    spec = embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384)
    entries = rag_switch.config_entries(
        True,
        str(layout.chroma_db),
        "welno_medical_knowledge",
        spec,
        "Dr.Welno",
        "",
        "Default",
        "http://127.0.0.1:9",
        "LLAMA_CLOUD_API_KEY",
        5,
        0.0,
        "gemini-2.0-flash",
        "NO_GOOGLE_KEY",
    )
    d = layout.base / "service"
    d.mkdir(parents=True, exist_ok=True)
    cfg, pidfile = d / "config.env", d / "service.pid"
    rag_switch.write_config(cfg, entries)
    port = cloud_emulator.free_port()
    service_ctl.start(str(cfg), port, pidfile)
    url = f"http://127.0.0.1:{port}"
    svc = {
        "config_env": str(cfg),
        "pidfile": str(pidfile),
        "query_url": url + "/query",
        "metrics_url": url + "/metrics",
        "faults_url": url + "/_admin/faults",
    }
    try:
        deadline = time.time() + 120
        health = {}
        while time.time() < deadline and health.get("arm") != "local":
            health = monitor.http_call(url + "/health", timeout=2)["json"] or {}
            time.sleep(0.3)
        assert health.get("arm") == "local", f"the reference service did not come up: {health}"
        yield svc, layout
    finally:
        service_ctl.stop(pidfile)
        mp.undo()


def _history(layout) -> list[dict]:
    p = layout.logs / "monitor_history.jsonl"
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()] if p.exists() else []


def _requests(svc) -> int:
    """The service's own count of /query requests (the test's witness of what the monitor sent)."""
    return monitor.http_call(svc["metrics_url"])["json"]["requests"]


def _params(tmp_path, layout, **kw):
    # emulator_corpus "": the runner starts no LlamaCloud stand-in; phase 08 does not need one
    # a generous p95 limit: loopback on 2 shared cores is no latency benchmark (the gate is tested directly)
    return write_params(
        tmp_path, base_path=str(layout.base), emulator_corpus="", **{"max_p95_ms": 60000.0, **kw}
    )


def _executed(res_or_dir) -> str:
    run_dir = getattr(res_or_dir, "run_dir", res_or_dir)
    return (run_dir / "08_monitor.ipynb").read_text(encoding="utf-8")


# --- the notebook through the runner, against the real service -------------------------------------
def test_probes_the_backend_by_query_url_and_measures_its_memory(backend, tmp_path, outputs):
    svc, layout = backend
    before, sent = _history(layout), _requests(svc)
    p = _params(
        tmp_path, layout, query_url=svc["query_url"], service_pidfile=svc["pidfile"], probe_questions=6
    )
    res = runner.run(p, only=["08"])
    assert json.loads((res.run_dir / "manifest.json").read_text())["status"] == "ok"
    hist = _history(layout)
    assert len(hist) == len(before) + 1
    s = hist[-1]
    assert s["via"] == "query URL" and s["probed"] == svc["query_url"]
    assert s["probes"] == 6 and s["probes ok"] == 6 and s["error rate"] == 0
    assert 0 < s["p50 ms"] <= s["p95 ms"] <= s["p99 ms"]
    assert s["arm"] == "local"
    pid = int(open(svc["pidfile"]).read())
    assert s["service ok"] and s["service RSS MB"] > 20 and pid in s["service pids"]
    assert 0 < s["disk used %"] < 100 and s["chroma_db MB"] > 0
    assert not any(k.startswith("metrics") for k in s), (
        "no metrics_url: nothing from the service's own metrics"
    )
    assert _requests(svc) == sent + 6  # the probes reached the backend, which counted them
    nb = _executed(res)
    assert "Monitoring history" in nb and "DRY RUN" not in nb
    assert "[08_monitor] sample" in layout.migration_log.read_text(encoding="utf-8")


def test_injected_error_rate_turns_the_run_red(backend, tmp_path, outputs):
    svc, layout = backend
    p = _params(
        tmp_path, layout, query_url=svc["query_url"], probe_questions=20, max_error_rate=0.05, min_probes=1
    )
    monitor.http_call(svc["faults_url"], {"error_rate": 0.6})
    try:
        with pytest.raises(runner.RunFailed, match="error rate"):
            runner.run(p, only=["08"])
    finally:
        monitor.http_call(svc["faults_url"], {"error_rate": 0.0})
    s = _history(layout)[-1]
    assert s["error rate"] > 0.05 and s["error kinds"].get("HTTP 500", 0) == s["probe errors"] > 0
    assert s["probes"] == 20


def test_without_a_query_url_probes_through_the_switch_factory(backend, tmp_path, outputs):
    svc, layout = backend
    sent = _requests(svc)
    # the process found by a command-line substring: the service's config path is on its command line
    p = _params(
        tmp_path,
        layout,
        config_env_path=svc["config_env"],
        service_process_name=svc["config_env"],
        probe_questions=3,
    )
    res = runner.run(p, only=["08"])
    assert json.loads((res.run_dir / "manifest.json").read_text())["status"] == "ok"
    s = _history(layout)[-1]
    assert s["via"] == "switch factory" and s["arm"] == "local" and s["probes ok"] == 3
    assert s["service RSS MB"] > 20 and int(open(svc["pidfile"]).read()) in s["service pids"]
    assert _requests(svc) == sent  # the factory queried the index in the notebook's process, not the service
    assert "the runbook&#x27;s view" in _executed(res) or "the runbook's view" in _executed(res)


def test_dry_run_sends_nothing_and_appends_nothing(backend, tmp_path, outputs):
    svc, layout = backend
    before, sent = _history(layout), _requests(svc)
    log_before = layout.migration_log.read_bytes() if layout.migration_log.exists() else b""
    p = _params(
        tmp_path,
        layout,
        dry_run=True,
        query_url=svc["query_url"],
        metrics_url=svc["metrics_url"],
        service_pidfile=svc["pidfile"],
    )
    res = runner.run(p, only=["08"])
    assert json.loads((res.run_dir / "manifest.json").read_text())["status"] == "ok"
    assert _requests(svc) == sent and _history(layout) == before
    assert (layout.migration_log.read_bytes() if layout.migration_log.exists() else b"") == log_before
    nb = _executed(res)
    assert "DRY RUN" in nb and svc["query_url"] in nb and svc["pidfile"] in nb


def test_a_pid_file_naming_a_dead_process_fails_naming_the_pid_file(backend, tmp_path, outputs):
    svc, layout = backend
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pidfile = tmp_path / "WELLO_BE-0.pid"
    pidfile.write_text(f"{gone.pid}\n")
    p = _params(tmp_path, layout, query_url=svc["query_url"], service_pidfile=str(pidfile), probe_questions=3)
    dead = r"backend process: pid file " + re.escape(str(pidfile)) + r" names pid \d+, which is not running"
    with pytest.raises(runner.RunFailed, match=dead) as e:
        runner.run(p, only=["08"])
    assert "1 check(s) failed" in str(e.value)  # the probes themselves were fine
    s = _history(layout)[-1]
    assert s["service ok"] is False and s["service RSS MB"] is None and s["probes ok"] == 3


# --- the library, directly --------------------------------------------------------------------------
class _Odd(BaseHTTPRequestHandler):
    """A backend answering each path a different wrong way; /slow answers only once ``release`` is set."""

    release = threading.Event()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = {
            "/ok-nodes": b'{"nodes": [{"id": "a"}], "arm": "cloud"}',
            "/ok-source-nodes": b'{"source_nodes": [{"id": "a"}]}',
            "/empty": b'{"results": []}',
            "/no-list": b'{"answer": "yes"}',
            "/html": b"<html>502 Bad Gateway</html>",
        }.get(self.path)
        if self.path == "/slow":
            self.release.wait(120)  # past any probe's timeout, however slow the machine
            body = b'{"results": [1]}'
        if self.path == "/drop":
            self.connection.close()
            return
        try:
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"{}")
        except BrokenPipeError:  # the slow answer: the probe gave up first
            pass

    def log_message(self, *a):
        pass


def test_what_counts_as_a_failed_probe():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}"
    _Odd.release.clear()
    try:
        # a timeout no busy machine reaches on loopback; only /slow, which never answers in time, times out
        one = lambda path, timeout_s=60: monitor.probe_http(url + path, ["q"], timeout_s)[0]  # noqa: E731
        assert one("/ok-nodes")["error"] is None and one("/ok-nodes")["arm"] == "cloud"
        assert one("/ok-source-nodes")["error"] is None
        assert one("/empty")["error"] == "no results (empty list)"
        assert one("/no-list")["error"].startswith("no results")
        assert one("/html")["error"] == "not JSON"
        assert one("/missing")["error"] == "HTTP 404"
        assert one("/slow", 0.5)["error"] == "timeout"
        assert one("/drop")["error"].startswith("connection failed")
    finally:
        _Odd.release.set()
        srv.shutdown()
    refused = monitor.probe_http(f"http://127.0.0.1:{cloud_emulator.free_port()}/query", ["q"], 1)[0]
    assert refused["error"].startswith("connection failed") and refused["status"] is None


def test_no_successful_probe_never_passes():
    limits = monitor.Limits(0.05, 2000, 99.9, 0)
    nothing = {**monitor.summarize_probes([]), "disk used %": 10.0, "service ok": True}
    rows = {r["check"]: r for r in monitor.checks(nothing, limits)}
    assert (
        not rows["probes answered"]["ok"] and not rows["error rate"]["ok"] and not rows["p95 latency"]["ok"]
    )
    all_failed = [{"ms": 3.0, "error": "HTTP 500", "arm": None}] * 4
    rows = {
        r["check"]: r for r in monitor.checks({**nothing, **monitor.summarize_probes(all_failed)}, limits)
    }
    assert not rows["probes answered"]["ok"] and "HTTP 500 ×4" in rows["error rate"]["detail"]
    slow = [{"ms": 3000.0, "error": None, "arm": "local"}] * 4
    rows = {r["check"]: r for r in monitor.checks({**nothing, **monitor.summarize_probes(slow)}, limits)}
    assert rows["probes answered"]["ok"] and rows["error rate"]["ok"] and not rows["p95 latency"]["ok"]


def test_memory_not_measured_when_nothing_names_the_process():
    m = monitor.service_memory("", "")
    assert m["service ok"] and m["service RSS MB"] is None
    assert m["service"] == "not measured (no pid file or process name given)"
    m = monitor.service_memory("", "no-such-process-a9f3e1")
    assert not m["service ok"] and "no running process matches" in m["service"]


def test_targets_come_from_params_then_the_phase_06_handoff(tmp_path):
    base = str(tmp_path / "base")
    assert monitor.resolve_target(base).via == ""
    with pytest.raises(monitor.MonitorError, match="query_url"):
        monitor.probe(monitor.resolve_target(base), ["q"], 1)
    svc = {"query_url": "http://h/query", "config_env": "/b/config.env", "pidfile": "/b/s.pid"}
    handoff.record("06_cutover", {"direction": "cutover", "service": svc}, base_path=base)
    t = monitor.resolve_target(base, service_process_name="uvicorn")
    assert (t.query_url, t.config_env, t.pidfile, t.process_name) == (*svc.values(), "uvicorn")
    assert t.sources["query_url"] == "phase 06 hand-off" and t.metrics_url == ""
    t = monitor.resolve_target(base, query_url="http://other/q")
    assert t.query_url == "http://other/q" and t.sources["query_url"] == "params"


def test_metrics_url_is_an_optional_extra(backend):
    svc, _ = backend
    m = monitor.fetch_metrics(svc["metrics_url"])
    assert m["arm"] == "local" and m["requests"] >= 0 and "recent_latencies_ms" not in m
    down = monitor.fetch_metrics(f"http://127.0.0.1:{cloud_emulator.free_port()}/metrics", 1)
    assert "connection failed" in down["metrics error"]
    assert monitor.fetch_metrics("") == {}


def test_history_keeps_reading_older_lines(tmp_path):
    base = str(tmp_path / "base")
    path = monitor.history_file(base)
    path.parent.mkdir(parents=True)
    old = {"at": "2025-01-01T00:00:00+00:00", "arm": "local", "pid": 1, "requests": 9, "errors": 0}
    old |= {"error rate": 0.0, "p50 ms": 5.0, "p95 ms": 9.0, "p99 ms": 9.5, "service RSS MB": 300.0}
    path.write_text(json.dumps(old | {"disk used %": 40.0}) + "\n")
    t = monitor.Target(query_url="http://x/q")
    res = {"service RSS MB": None, "service ok": True, "service": "not measured", "disk used %": 41.0}
    monitor.record(base, t, [{"ms": 4.0, "error": None, "arm": "local"}], res, {})
    df = monitor.history(path)
    assert len(df) == 2 and df["service RSS MB"].isna().tolist() == [False, True]
    fig = monitor.trend_figure(df, monitor.Limits(0.05, 2000, 80, 1))
    assert "2 run(s)" in fig.layout.title.text


def test_parameters_cell_declares_what_production_sets():
    declared = config.notebook_parameters(NOTEBOOKS_DIR / "08_monitor.ipynb")
    assert set(declared) == {
        "run_dir",
        "base_path",
        "dry_run",
        "query_url",
        "config_env_path",
        "service_pidfile",
        "service_process_name",
        "metrics_url",
        "probe_questions",
        "probe_timeout_s",
        "max_error_rate",
        "max_p95_ms",
        "max_disk_use_pct",
        "min_probes",
    }
    nb = nbformat.read(NOTEBOOKS_DIR / "08_monitor.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"][1:]
    assert all(len(s.splitlines()) <= 12 and not re.search(r"^\s*(for|while|try)\b", s, re.M) for s in code)
    assert "display.checks(" in code[-1]
