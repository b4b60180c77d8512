"""A production-shaped rehearsal: the services ``runbook_params/rehearsal.yaml`` talks to, started once and
left running between runs (as production's are), so that a run can stop for a go and be approved later.

    export LLAMA_CLOUD_API_KEY=any-value GOOGLE_API_KEY=any-value OPENAI_API_KEY=any-value   # accepted keys
    python -m runbook.rehearsal up      # the LlamaCloud + Gemini stand-in and the Welno backend (WELLO_BE)
    python -m runbook.rehearsal status
    python -m runbook.rehearsal down

``up`` starts, under the rehearsal supervisor (``runbook.rehearsal.supervisor``, the stand-in for pm2):
``LLAMACLOUD``, the LlamaCloud-compatible server with the ``demo-openai`` corpus -- the demo documents in an
index that embeds with OpenAI's text-embedding-3-small at 1536 dimensions, as Dr.Welno's does -- which also
speaks the Gemini API and the OpenAI embeddings API (``<cloud_url>/v1/embeddings``, at a tier-1 account's
limits with OpenAI-like latency and a few transient errors: ``OPENAI_LIMITS``), and
``WELLO_BE``, the Welno-like backend, on the cloud arm, reading ``<home>/backend/config.env`` in the seed's
format. An existing ``config.env`` is kept (it is the backend's state: a rehearsal cutover changed it);
``--fresh`` writes it anew.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from ..paths import PROJECT_ROOT, resolve
from .supervisor import Supervisor

DEFAULT_HOME = "data/rehearsal"

SEED_CONFIG = """# Welno backend settings (backend/config.env)
APP_ENV=production
PORT={backend_port}
# database
DB_HOST=127.0.0.1
DB_PORT=5432
DB_NAME=wello
DB_USER=wello
# answers
GOOGLE_API_KEY={google_key}
GEMINI_MODEL=gemini-2.0-flash
GEMINI_BASE_URL={cloud_url}
# LlamaCloud (Dr.Welno)
LLAMA_CLOUD_API_KEY={cloud_key}
LLAMACLOUD_INDEX_NAME=Dr.Welno
LLAMACLOUD_INDEX_ID=1bcef115-bb95-4d14-9c29-d38bb097a39c
LLAMACLOUD_PROJECT=Default
LLAMA_CLOUD_BASE_URL={cloud_url}
RAG_TOP_K=5

# 로컬 벡터 DB 설정
USE_LOCAL_VECTOR_DB=false  # true: 로컬, false: LlamaCloud
LOCAL_VECTOR_DB_PATH=/data/vector_db/welno/chroma_db
LOCAL_VECTOR_DB_COLLECTION=welno_medical_knowledge
"""


def _wait(url: str, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"rehearsal: {what} did not answer at {url} within {timeout:.0f} s")


# What the OpenAI embeddings stand-in imposes: a tier-1 account's limits for text-embedding-3-small (3,000
# requests and 1,000,000 tokens a minute), a latency like the real API's, and 1% transient 5xx -- what a long
# re-embedding meets in production, so phase 01 is rehearsed against it rather than against a kind server.
OPENAI_LIMITS = {"rpm": 3000, "tpm": 1_000_000, "latency_ms": 150, "error_rate": 0.01}


def up(
    home: str = DEFAULT_HOME,
    cloud_port: int = 8787,
    backend_port: int = 8790,
    corpus: str = "demo-openai",
    query_latency_ms: float = 250.0,
    fresh: bool = False,
    cloud_key_env: str = "LLAMA_CLOUD_API_KEY",
    google_key_env: str = "GOOGLE_API_KEY",
    openai_key_env: str = "OPENAI_API_KEY",
    openai_limits: dict | None = None,
) -> dict:
    missing = [n for n in (cloud_key_env, google_key_env, openai_key_env) if not os.environ.get(n)]
    if missing:
        raise SystemExit(
            f"rehearsal: set {' and '.join(missing)} to any value first; the stand-ins accept those keys"
        )
    root = resolve(home)
    sup = Supervisor(root / "supervisor")
    cloud_url = f"http://127.0.0.1:{cloud_port}"
    cache = str(PROJECT_ROOT / "data" / "cache" / "embeddings.sqlite")
    py = sys.executable
    sup.stop("LLAMACLOUD")
    sup.start(
        "LLAMACLOUD",
        [
            py, "-m", "runbook.rehearsal.cloud_emulator", "--corpus", corpus, "--port", str(cloud_port),
            "--api-key-env", cloud_key_env, "--google-key-env", google_key_env, "--embed-cache", cache,
            "--openai-key-env", openai_key_env,
            "--openai-limits", json.dumps(OPENAI_LIMITS if openai_limits is None else openai_limits),
        ],
        cwd=str(PROJECT_ROOT),
    )  # fmt: skip
    _wait(cloud_url + "/_emulator/health", 300, "the LlamaCloud stand-in")
    if query_latency_ms:
        from .cloud_emulator import set_faults_remote

        # a real cloud query crosses a network (the seed measured 500-1000 ms); loopback does not
        set_faults_remote(
            cloud_url, os.environ[cloud_key_env], latency_ms=query_latency_ms, path_pattern="/retrieve$"
        )
    backend = root / "backend"
    backend.mkdir(parents=True, exist_ok=True)
    cfg = backend / "config.env"
    if fresh or not cfg.exists():
        text = SEED_CONFIG.format(
            backend_port=backend_port,
            google_key=os.environ[google_key_env],
            cloud_key=os.environ[cloud_key_env],
            cloud_url=cloud_url,
        )
        tmp = cfg.with_name(".config.env.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, cfg)
    faults = backend / "faults.json"
    if fresh or not faults.exists():
        faults.write_text("{}", encoding="utf-8")
    sup.stop("WELLO_BE")
    sup.start(
        "WELLO_BE",
        [
            py, "-m", "runbook.rehearsal.welno_backend", "--config", str(cfg), "--port", str(backend_port),
            "--faults", str(faults),
        ],
        cwd=str(PROJECT_ROOT),
    )  # fmt: skip
    backend_url = f"http://127.0.0.1:{backend_port}"
    _wait(backend_url + "/health", 300, "the Welno backend stand-in")
    info = {
        "cloud_url": cloud_url,
        "config_env": str(cfg),
        "faults": str(faults),
        "embed_api_base": cloud_url + "/v1",
        "restart_command": f"{py} -m runbook.rehearsal.supervisor --home {sup.home} restart WELLO_BE",
        "health_url": backend_url + "/health",
        "query_url": backend_url + "/api/rag/query",
        "service_pidfile": str(sup.pidfile("WELLO_BE")),
        "supervisor_home": str(sup.home),
    }
    (root / "rehearsal.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


def down(home: str = DEFAULT_HOME) -> None:
    sup = Supervisor(resolve(home) / "supervisor")
    for name in ("WELLO_BE", "LLAMACLOUD"):
        sup.stop(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runbook.rehearsal",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("action", choices=["up", "down", "status"])
    ap.add_argument("--home", default=DEFAULT_HOME, help="the rehearsal's folder (git-ignored under data/)")
    ap.add_argument("--cloud-port", type=int, default=8787)
    ap.add_argument("--backend-port", type=int, default=8790)
    ap.add_argument(
        "--corpus", default="demo-openai", help="demo-openai | demo | an export folder | synthetic:N:D"
    )
    ap.add_argument("--query-latency-ms", type=float, default=250.0, help="network delay of cloud retrieve")
    ap.add_argument("--fresh", action="store_true", help="write the backend's config.env anew")
    args = ap.parse_args(argv)
    if args.action == "up":
        info = up(
            args.home, args.cloud_port, args.backend_port, args.corpus, args.query_latency_ms, args.fresh
        )
        for k, v in info.items():
            print(f"{k:<16} {v}")
    elif args.action == "down":
        down(args.home)
        print("rehearsal services stopped")
    else:
        for row in Supervisor(Path(resolve(args.home)) / "supervisor").status():
            print(f"{row['name']:<12} {'online' if row['online'] else 'stopped':<8} pid {row['pid']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
