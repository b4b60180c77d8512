"""Does embedded Chroma let other Python threads run while it works? (Phase 03's loader and verification)

A Python thread counts in a loop while the main thread calls ``collection.add``, ``get`` and ``query`` on an
embedded Chroma; its progress during each call, against its rate alone, is the share of the call during
which Chroma let go of the interpreter (0% holds it throughout: no Python thread overlaps that call).

    ../.venv/bin/python chroma_gil.py            # about a minute on 2 cores
    ../.venv/bin/python chroma_gil.py --records 2000 --dim 1536
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np
from common import BackgroundThread


class Spinner(BackgroundThread):
    """A thread counting in a loop: how far it got is how much of the interpreter it was given."""

    def __init__(self):
        self.count = 0
        super().__init__()

    def _run(self):
        while not self._stop.is_set():
            for _ in range(1000):
                pass
            self.count += 1


def spin_rate(seconds: float = 1.0) -> float:
    with Spinner() as s:
        t0 = time.time()
        time.sleep(seconds)
        done, took = s.count, time.time() - t0
    return done / took


def share_during(call, rate: float) -> tuple[float, float]:
    """(seconds the call took, the spinner's progress during it as a share of its rate alone)."""
    with Spinner() as s:
        time.sleep(0.05)  # the spinner is running before the call starts
        before, t0 = s.count, time.time()
        call()
        took, done = time.time() - t0, s.count - before
    return took, done / (rate * took)


def main():
    import chromadb
    from chromadb.config import Settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=5000, help="records per add (the loader's batch)")
    ap.add_argument("--dim", type=int, default=1536)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp(prefix="chroma-gil-")
    try:
        client = chromadb.PersistentClient(path=tmp, settings=Settings(anonymized_telemetry=False))
        col = client.create_collection(
            "probe", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )

        def batch(k: int) -> dict:
            n = args.records
            return {
                "ids": [f"{k}-{i}" for i in range(n)],
                "documents": [f"건강검진 결과 {i}: 공복혈당과 간 수치를 확인합니다. " * 6 for i in range(n)],
                "metadatas": [
                    {"k": i, "file_name": f"검진-{i % 50}.pdf", "_node_content": "{}"} for i in range(n)
                ],
                "embeddings": rng.normal(size=(n, args.dim)).astype(np.float32),
            }

        first, second = batch(0), batch(1)
        col.add(**first)
        rate = spin_rate()
        ids = first["ids"][:2048]
        rows = []
        for name, call in (
            (f"add of {args.records} records", lambda: col.add(**second)),
            (
                f"get of {len(ids)} records by id (documents, metadatas)",
                lambda: col.get(ids=ids, include=["documents", "metadatas"]),
            ),
            (
                "query of 50 vectors, top 10",
                lambda: col.query(query_embeddings=first["embeddings"][:50], n_results=10),
            ),
        ):
            took, share = share_during(call, rate)
            rows.append((name, took, share))
        print(f"chromadb {chromadb.__version__}, {args.dim}-d, a Python thread's progress during each call:")
        print(f"{'call':<52} {'seconds':>8} {'other thread ran':>17}")
        for name, took, share in rows:
            print(f"{name:<52} {took:8.2f} {share:16.0%}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
