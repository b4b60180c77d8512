"""A reference RAG service: stands in for the team's backend in the demo and in tests.

It builds its retriever through ``rag_switch`` from ``config.env`` at start-up (a broken config means it
does not start) and serves ``GET /health`` (live arm, collection count), ``POST /query`` and
``GET /metrics`` (requests, errors, latency histogram, recent latencies, its own memory).

    python -m runbook.rehearsal.reference_service --config data/demo/service/config.env --port 8790
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import deque

from pydantic import BaseModel

BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Query(BaseModel):
    question: str


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.histogram = dict.fromkeys([*map(str, BUCKETS_MS), "+Inf"], 0)
        self.recent: deque = deque(maxlen=2000)
        self.started = time.time()

    def observe(self, ms: float, error: bool):
        with self.lock:
            self.requests += 1
            self.errors += int(error)
            self.recent.append(ms)
            for b in BUCKETS_MS:
                if ms <= b:
                    self.histogram[str(b)] += 1
                    break
            else:
                self.histogram["+Inf"] += 1

    def snapshot(self) -> dict:
        import psutil

        with self.lock:
            return {
                "requests": self.requests,
                "errors": self.errors,
                "latency_histogram_ms": dict(self.histogram),
                "recent_latencies_ms": list(self.recent),
                "uptime_s": round(time.time() - self.started, 1),
                "rss_mb": round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1),
                "pid": os.getpid(),
            }


def create_app(config_path: str):
    from fastapi import FastAPI, HTTPException

    from .. import rag_switch

    cfg = rag_switch.load_config(config_path)
    engine = rag_switch.build_query_engine(cfg)  # raises: the service does not come up on a broken config
    col = rag_switch.open_local_collection(cfg) if cfg.use_local else None
    app = FastAPI(title="Welno reference RAG service")
    metrics = Metrics()
    faults = {"error_rate": 0.0}

    @app.get("/health")
    def health():
        return {**rag_switch.health_report(cfg, col), "config": str(config_path), "pid": os.getpid()}

    @app.post("/query")
    def query(q: Query):
        t = time.perf_counter()
        try:
            if faults["error_rate"] and random.random() < faults["error_rate"]:
                raise RuntimeError("injected error")
            out = engine.ask(q.question)
        except Exception as e:  # noqa: BLE001 - counted, then answered as a 500
            metrics.observe((time.perf_counter() - t) * 1000, True)
            raise HTTPException(status_code=500, detail=f"{type(e).__name__}") from None
        metrics.observe((time.perf_counter() - t) * 1000, False)
        return rag_switch.query_answer(cfg, out)

    @app.get("/metrics")
    def get_metrics():
        return {"arm": cfg.arm, **metrics.snapshot()}

    @app.post("/_admin/faults")
    def set_faults(body: dict):
        faults["error_rate"] = float(body.get("error_rate", 0.0))
        return faults

    return app


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m runbook.rehearsal.reference_service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--config", required=True, help="the config.env the service reads")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8790)
    args = ap.parse_args(argv)
    import uvicorn

    try:
        app = create_app(args.config)
    except Exception as e:  # noqa: BLE001 - a service that cannot build its retriever must not come up
        from ..credentials import scrub

        print(f"rag_service: cannot start: {scrub(f'{type(e).__name__}: {e}')}", file=sys.stderr)
        return 3
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
