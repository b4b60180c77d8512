"""Pages 06-08 executed as notebooks on their non-default branches, asserting what they record.

Phase 06 on purpose back to the cloud (``direction: rollback``) against a small backend stand-in: an HTTP
server in this process whose health and query answers report the arm its config.env names, restarted by a
command that only leaves a mark. (The full rehearsal backend runs the same branch through the runner in
tests/test_rehearsal.py::test_rollback_on_purpose; this one checks the bytes and the record, in seconds.)"""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from runbook import cutover

from .conftest import run_notebook

CLOUD_CONFIG = (
    "# Welno backend settings\n"
    "USE_LOCAL_VECTOR_DB=false  # true: 로컬, false: LlamaCloud\n"
    "LLAMACLOUD_INDEX_NAME=Dr.Welno\n"
    "LLAMA_CLOUD_API_KEY=llx-rollback-page-test\n"
)
SWITCH = {
    "USE_LOCAL_VECTOR_DB": "true",
    "LOCAL_VECTOR_DB_COLLECTION": "welno_medical_knowledge__u20260101T000000Z",
    "LOCAL_VECTOR_DB_PATH": "/data/vector_db/welno/chroma_db",
    "LOCAL_EMBED_PROVIDER": "huggingface",
    "LOCAL_EMBED_MODEL": "sentence-transformers/all-MiniLM-L6-v2",
}


class _Backend(http.server.BaseHTTPRequestHandler):
    """Health and query answers name the arm the backend's config.env is on now."""

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _arm(self) -> str:
        return "local" if cutover.env_flag(self.server.config_env) else "cloud"

    def do_GET(self):  # noqa: N802 - the http.server name
        self._answer({"arm": self._arm()})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._answer({"arm": self._arm(), "results": [{"id": "chunk-1", "text": "..."}]})

    def log_message(self, *args):
        pass


@pytest.fixture
def switched_backend(tmp_path):
    """A backend a cutover switched: config.env on the local arm, config.env.backup the cloud one."""
    cfg = tmp_path / "backend" / "config.env"
    cfg.parent.mkdir()
    backup = cfg.with_name("config.env.backup")
    backup.write_text(CLOUD_CONFIG, encoding="utf-8")
    backup.chmod(0o600)
    cfg.write_text(cutover.update_env_text(CLOUD_CONFIG, SWITCH), encoding="utf-8")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    srv.config_env = cfg
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield {"cfg": cfg, "backup": backup, "health": url + "/health", "query": url + "/api/rag/query"}
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.notebook_branch
def test_06_rollback_page_puts_the_backup_back_byte_for_byte(switched_backend, tmp_path):
    b = switched_backend
    before_cutover = b["backup"].read_bytes()
    switched = b["cfg"].read_bytes()
    marker = tmp_path / "restarted"
    base, run_dir = tmp_path / "base", tmp_path / "run"
    page = run_notebook(
        "06_cutover",
        tmp_path,
        base_path=str(base),
        run_dir=str(run_dir),
        dry_run=False,
        direction="rollback",
        config_env_path=str(b["cfg"]),
        restart_command=f"touch {marker}",
        health_url=b["health"],
        query_url=b["query"],
        smoke_questions=["What should I eat before a colonoscopy?"],
        health_timeout_s=20.0,
    ).text
    # config.env is the file as it was before the cutover, byte for byte; that backup is kept as it was
    assert b["cfg"].read_bytes() == before_cutover
    assert b["backup"].read_bytes() == before_cutover
    stamped = [p for p in b["cfg"].parent.iterdir() if p.name.startswith("config.env.backup.")]
    assert [p.read_bytes() for p in stamped] == [switched]  # the switched file, kept aside
    assert marker.exists() and cutover.http_json(b["health"])[1]["arm"] == "cloud"
    # the hand-off says what happened (state and the run folder's copy agree)
    rec = json.loads((base / "state" / "handoff" / "06_cutover.json").read_text(encoding="utf-8"))
    assert rec == json.loads((run_dir / "handoff" / "06_cutover.json").read_text(encoding="utf-8"))
    assert rec["direction"] == "rollback" and "dry_run" not in rec
    assert rec["result"].startswith("Rolled back to the cloud arm") and "byte for byte" in rec["result"]
    steps = {s["step"]: s for s in rec["steps"]}
    assert (
        all(s["ok"] for s in rec["steps"])
        and "put back byte for byte" in steps["write config.env atomically"]["detail"]
    )
    assert steps["smoke queries"]["ok"] and steps["health"]["ok"]
    assert rec["changes"]["USE_LOCAL_VECTOR_DB"] == "false"
    assert rec["changes"]["LOCAL_VECTOR_DB_COLLECTION"] == "(removed)"
    assert "Rolled back to the cloud arm" in page and "Traceback" not in page
