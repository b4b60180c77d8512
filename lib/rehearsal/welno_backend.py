"""A Welno-like backend for rehearsals: the stand-in for ``WELLO_BE`` that phase 06 switches over.

It behaves like the seed's backend after the switch code went in: it reads its own ``config.env`` in
the seed's format (comments, database settings, ``GOOGLE_API_KEY``, the ``LLAMACLOUD_*`` keys and the
``USE_LOCAL_VECTOR_DB`` block) once at start-up, builds its RAG engine through the switch factory
(``runbook.rag_switch``, the lines the README shows), answers with Gemini when a key is set, and serves

- ``GET /health``: ``rag_switch.health_report`` (arm, collection, record count, embedding model);
- ``POST /api/rag/query`` ``{"question": ...}``: ``{"arm", "answer", "note", "results": [{"id", ...}]}``.

It is restarted only by a supervisor command (``runbook.rehearsal.supervisor``), the way pm2 restarts
the real one. Rehearsals make it misbehave through a faults file (``--faults``, read at start-up and on
every request), each fault active when the live arm matches ``"when"`` (``local``, ``cloud`` or ``any``)::

    {"crash_on_start": {"when": "local"}}            exits at start-up (restart "succeeds", service dead)
    {"health_plain_text": {"when": "local"}}         /health answers 200 "OK" as plain text
    {"health_lie": {"when": "local", "arm": "cloud", "collection": "x", "count": 1}}
    {"query_sleep_s": {"when": "local", "s": 30}}    /api/rag/query answers only after s seconds

    python -m runbook.rehearsal.welno_backend --config data/rehearsal/backend/config.env --port 8790
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel

QUERY_PATH = "/api/rag/query"


class Query(BaseModel):  # at module level: FastAPI resolves the (postponed) annotation here
    question: str


def read_faults(path: str, arm: str) -> dict:
    if not path or not Path(path).exists():
        return {}
    try:
        faults = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except ValueError:
        return {}
    return {k: v for k, v in faults.items() if isinstance(v, dict) and v.get("when", "any") in ("any", arm)}


def create_app(config_path: str, faults_path: str = ""):
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import PlainTextResponse

    from .. import rag_switch

    cfg = rag_switch.load_config(config_path)
    if "crash_on_start" in read_faults(faults_path, cfg.arm):
        raise RuntimeError(f"rehearsal fault crash_on_start on the {cfg.arm} arm")
    engine = rag_switch.build_query_engine(cfg)  # a broken config: the backend does not come up
    col = rag_switch.open_local_collection(cfg) if cfg.use_local else None
    app = FastAPI(title="Welno backend (rehearsal stand-in)")

    @app.get("/health")
    def health():
        faults = read_faults(faults_path, cfg.arm)
        if "health_plain_text" in faults:
            return PlainTextResponse("OK")
        info = rag_switch.health_report(cfg, col)
        lie = faults.get("health_lie")
        if lie:
            info.update({k: v for k, v in lie.items() if k != "when"})
        return {**info, "pid": os.getpid()}

    @app.post(QUERY_PATH)
    def query(q: Query):
        sleep = read_faults(faults_path, cfg.arm).get("query_sleep_s")
        if sleep:
            time.sleep(float(sleep.get("s", 30)))
        try:
            out = engine.ask(q.question)
        except Exception as e:  # noqa: BLE001 - the backend answers 500, as the real one would
            from ..credentials import scrub

            raise HTTPException(status_code=500, detail=scrub(f"{type(e).__name__}: {e}")[:300]) from None
        return rag_switch.query_answer(cfg, out)

    return app


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runbook.rehearsal.welno_backend",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", required=True, help="the backend's config.env")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8790)
    ap.add_argument("--faults", default="", help="rehearsal faults file (JSON)")
    args = ap.parse_args(argv)
    import uvicorn

    try:
        app = create_app(args.config, args.faults)
    except Exception as e:  # noqa: BLE001 - a backend that cannot build its engine must not come up
        from ..credentials import scrub

        print(f"welno_backend: cannot start: {scrub(f'{type(e).__name__}: {e}')}", file=sys.stderr)
        return 3
    print(f"welno_backend: serving on {args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
