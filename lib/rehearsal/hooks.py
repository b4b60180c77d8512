"""What production code asks of the rehearsal machinery, through the ``runbook.plugins`` entry point
(``runbook.plugins.rehearsal()``): production modules never import this package, so a deployment that
leaves it out runs every production path, and a params file that asks for a rehearsal says so by name.

- ``start_local_server(params)``: the runner's LlamaCloud-compatible server for a run (``emulator_corpus``);
- ``ensure_local_server(...)``: the same for one notebook run by hand (JupyterLab, plain papermill);
- ``reference_backend(layout, entries, port)``: phase 06's stand-in backend (``service_mode: reference``);
- ``stop_reference_service(base_path)``: the runner stops that stand-in when the run ends;
- ``questions(corpus)``: a rehearsal corpus's labelled question set (``demo-ko``), or None.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shlex
import sys
import urllib.parse

from .. import atomic, rag_switch
from ..cutover import Cutover, Expect
from ..errors import RunbookError
from ..paths import Layout, resolve
from . import cloud_emulator, service_ctl


class RehearsalError(RunbookError, RuntimeError):
    """The rehearsal machinery cannot do what the params ask."""


def ensure_local_server(
    base_url: str,
    emulator_corpus: str,
    api_key_env: str,
    embed_cache: str = "",
    query_latency_ms: float = 0.0,
    serve_embeddings: bool = False,
) -> str:
    """Rehearsal mode outside the runner (plain papermill, JupyterLab): start the local server if
    nothing answers at ``base_url``. Returns the URL to use. ``serve_embeddings``: the server fills
    ``embedding`` in its /chunks answers (real LlamaCloud does not), so phase 01 needs no re-embedding."""
    if base_url:
        try:
            cloud_emulator.wait_healthy(base_url, timeout=1.5)
            return base_url
        except (TimeoutError, RuntimeError):
            pass
    port = int(urllib.parse.urlsplit(base_url).port or 0) if base_url else 0
    if not os.environ.get(api_key_env):
        raise RehearsalError(
            f"rehearsal mode: set {api_key_env} to any value; the local server accepts that key"
        )
    handle = _start(emulator_corpus, api_key_env, "", port, embed_cache, serve_embeddings, query_latency_ms)
    atexit.register(handle.stop)
    return handle.url


def _start(corpus, key_env, google_env, port, embed_cache, serve_embeddings, latency_ms):
    handle = cloud_emulator.start_subprocess(
        corpus=corpus,
        api_key_env=key_env,
        port=port,
        embed_cache=embed_cache,
        serve_embeddings=serve_embeddings,
        google_key_env=google_env or "GOOGLE_API_KEY",
    )
    if latency_ms:
        cloud_emulator.set_faults_remote(
            handle.url, os.environ[key_env], latency_ms=float(latency_ms), path_pattern="/retrieve$"
        )
    return handle


def start_local_server(params: dict):
    """Rehearsal mode: start the LlamaCloud-compatible server for this run when the params ask for it."""
    corpus = params.get("emulator_corpus")
    if not corpus:
        return None
    key_env = params.get("source_api_key_env") or "LLAMA_CLOUD_API_KEY"
    google_env = params.get("google_api_key_env") or "GOOGLE_API_KEY"
    for name in (key_env, google_env):  # the stand-ins accept whatever these hold; a fresh key otherwise
        if not os.environ.get(name):
            os.environ[name] = "emu-" + secrets.token_urlsafe(24)
    cache = str(resolve(params["embedding_cache"])) if params.get("embedding_cache") else ""
    serve = bool(params.get("emulator_serve_embeddings", False))
    return _start(corpus, key_env, google_env, 0, cache, serve, params.get("emulator_query_latency_ms"))


def stop_reference_service(base_path: str) -> bool:
    """Stop the demo's reference service that phase 06 started under ``base_path``, if it runs."""
    return service_ctl.stop(Layout.from_params(base_path).base / "service" / "service.pid")


def questions(corpus: str) -> list[dict] | None:
    """The labelled questions a rehearsal corpus brings (``demo-ko``: Korean), or None."""
    if corpus == "demo-ko":
        from . import korean_demo

        return korean_demo.questions()
    return None


def reference_backend(layout: Layout, entries: dict, port: int) -> dict:
    """Write the stand-in backend's config.env (cloud arm: the state before the migration), start the
    reference service on it, and return the commands and URLs phase 06 uses."""
    d = layout.base / "service"
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "config.env"
    pidfile = d / "service.pid"
    service_ctl.stop(pidfile)
    rag_switch.write_config(cfg, {**entries, "USE_LOCAL_VECTOR_DB": "false"})
    restart = (
        f"{shlex.quote(sys.executable)} -m runbook.rehearsal.service_ctl restart --config {shlex.quote(str(cfg))} "
        f"--port {port} --pidfile {shlex.quote(str(pidfile))}"
    )
    service_ctl.start(str(cfg), port, pidfile)
    base = f"http://127.0.0.1:{port}"
    Cutover(cfg, "", base + "/health", health_timeout_s=120).wait_health(Expect("cloud"))
    atomic.write_json(d / "service.json", {"port": port, "pidfile": str(pidfile), "config_env": str(cfg)})
    return {
        "config_env": str(cfg),
        "restart_command": restart,
        "health_url": base + "/health",
        "query_url": base + "/query",
        "metrics_url": base + "/metrics",
        "pidfile": str(pidfile),
    }
