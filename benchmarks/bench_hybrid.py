"""The local hybrid retrieval mode (Chroma dense + the BM25 sparse index, fused) against dense only, at one
size (default 100,000 chunks): what the sparse index costs to build and keep, and what hybrid adds to a
query's latency. Phase 03 builds the sparse index beside the Chroma collection;
``LOCAL_RETRIEVAL_MODE=hybrid`` then answers every query from both, so both costs must be known before
choosing hybrid in production.

Corpus: N synthetic Korean medical chunks made of the real Korean demo text
(``runbook.rehearsal.korean_demo.topics()``: 50 topics). Each document (3 to 7 chunks) is about one topic;
each chunk is 3 to 5 sentences, consecutive sentences of its topic with now and then one of another topic,
all drawn from a seeded generator (the same corpus on every run). Metadata ``{category, title}`` (in Chroma
also ``document_id``, as the loader writes it). The
vocabulary is that of the 50 topics (a few thousand tokens), so index size and vocabulary are at the low end
of a real corpus's while posting lists are long (common words in many chunks), the costly case for search.
Dense vectors are seeded random unit vectors of ``--dim`` dimensions: Chroma's search speed does not depend
on what the vectors mean, and no embedding model is timed.

Measured, each step on its own:

- sparse index build (``SparseIndex.build``, progress shown) in a child process, cold as phase 03 runs it:
  wall and CPU seconds, the rise of its peak RSS over what it held before (the chunks themselves), bytes on
  disk, and of these what loading kiwi's model took (a fixed cost, whatever the size); then the tokeniser
  alone on up to 10,000 of the chunks (kiwi warm), in chunks/s;
- Chroma load of the same chunks with their vectors (cosine, the runbook's HNSW defaults, batches of
  ``min(5000, get_max_batch_size())``) in another child process, for context;
- query latency in this process over ``--queries`` queries (the Korean demo questions, cycled; one seeded
  random vector per distinct question): (a) dense only, ``collection.query(n_results=5)``; (b) sparse only,
  ``SparseIndex.search(q, 30)``; (c) hybrid, the runbook's own ``sparse_index.hybrid_retriever`` (alpha 0.5,
  top 5) over a dense retriever that queries Chroma with the precomputed vector for 30 candidates and a
  ``SparseRetriever`` of 30. No query is embedded, so (c) - (a) is what hybrid adds to a dense query. The
  three arms run interleaved query by query (machine load falls on all alike), each query 3 times in a
  rotating arm order; each query's figure is the median of its 3 runs. "hybrid overhead p50" is the median
  over queries of (hybrid - dense) for the same query.

    .venv/bin/python benchmarks/bench_hybrid.py [--chunks 100000] [--dim 384] [--queries 200]
        [--workdir DIR] [--keep] [--json out.json]

``make bench-hybrid`` runs it at 100,000 chunks: about 10 minutes on 2 cores (estimated from 3,000 chunks),
mostly tokenising.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import table

SEED = 7
COLLECTION = "bench_hybrid"
TOP_K, CANDIDATES, ALPHA = 5, 30, 0.5
RUNS, WARMUP = 3, 5
TOKENISE_SAMPLE = 10_000
BUILD_BATCH = 512  # SparseIndex.build's default batch; the tokenise-only pass uses the same


# ------------------------------------------------------------------------------------------------ corpus


def topic_sentences(topic: dict) -> list[str]:
    """A topic's Korean text as sentences, in the order a guide page gives them (test, range, risks,
    advice, followup, detail; the risk list as one sentence, as ``korean_demo.document_text`` writes it)."""
    out = []
    for key in ("test", "range", "risks", "advice", "followup", "detail"):
        value = topic.get(key)
        if not value:
            continue
        if isinstance(value, list):
            value = ", ".join(value) + " 등이 위험 요인입니다."
        out.extend(s for s in re.split(r"(?<=[.?!])\s+", value.strip()) if s)
    return out


def make_corpus(n: int, seed: int = SEED) -> list[dict]:
    """N chunk rows ``{chunk_id, document_id, text, metadata}`` (see the module docstring), deterministic."""
    from runbook.rehearsal import korean_demo

    topics = korean_demo.topics()
    sents = [topic_sentences(t) for t in topics]
    rng = random.Random(seed)
    rows: list[dict] = []
    d = 0
    while len(rows) < n:
        t = rng.randrange(len(topics))
        own = sents[t]
        doc_id = f"bench-doc-{d:06d}"
        meta = {"category": topics[t]["cat"], "title": topics[t]["ko"]}
        for k in range(min(rng.randint(3, 7), n - len(rows))):
            start, length = rng.randrange(len(own)), rng.randint(3, 5)
            chunk = [own[(start + j) % len(own)] for j in range(length)]
            if rng.random() < 0.25:  # now and then a sentence about another topic
                other = sents[rng.randrange(len(topics))]
                chunk[rng.randrange(length)] = rng.choice(other)
            rows.append(
                {
                    "chunk_id": f"{doc_id}-{k}",
                    "document_id": doc_id,
                    "text": " ".join(chunk),
                    "metadata": meta,
                }
            )
        d += 1
    return rows


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """N seeded random unit vectors (float32)."""
    v = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


# ------------------------------------------------------------------------------------- child processes


def _proc_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB (as ``common.run_arm`` reads it)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024


def _reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # all threads (kiwi analyses on worker threads)
    return ru.ru_utime + ru.ru_stime


def build_sparse(path: str, n: int) -> dict:
    """In a child: build the sparse index of the N chunks at ``path``, then time the tokeniser alone."""
    from runbook.sparse_index import KoreanTokenizer, SparseIndex, shared_kiwi

    rows = make_corpus(n)
    reset = _reset_peak_rss()
    rss0, cpu0, t0 = _proc_mb("VmRSS"), _cpu_s(), time.perf_counter()
    shared_kiwi()  # what the build would do first; timed apart to tell the fixed cost from the rest
    kiwi_s, kiwi_rss = time.perf_counter() - t0, _proc_mb("VmRSS") - rss0
    idx = SparseIndex.build(path, rows, show_progress=True)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    peak = _proc_mb("VmHWM")
    stats = idx.stats()

    tok = KoreanTokenizer()
    texts = [r["text"] for r in rows[:TOKENISE_SAMPLE]]
    tok.tokenize_batch(texts[:BUILD_BATCH])  # warm (kiwi is loaded already; its caches too)
    t1 = time.perf_counter()
    for i in range(0, len(texts), BUILD_BATCH):
        tok.tokenize_batch(texts[i : i + BUILD_BATCH])
    tok_s = time.perf_counter() - t1
    return {
        "build_s": round(wall, 1),
        "build_cpu_s": round(cpu, 1),
        "build_rss_before_mb": round(rss0, 1),
        "build_peak_rss_mb": round(peak, 1),
        "build_peak_rss_rise_mb": round(peak - rss0, 1) if reset else None,
        "kiwi_load_s": round(kiwi_s, 1),
        "kiwi_rss_mb": round(kiwi_rss, 1),
        "index_bytes": stats["bytes"],
        "documents": stats["documents"],
        "vocabulary": stats["vocabulary"],
        "tokens": stats["tokens"],
        "tokenise_sample": len(texts),
        "tokenise_chunks_per_s": round(len(texts) / tok_s, 1),
    }


def load_chroma(base: str, n: int, dim: int) -> dict:
    """In a child: load the N chunks with their vectors into an embedded Chroma collection under ``base``."""
    from runbook import chroma_target

    rows = make_corpus(n)
    vecs = unit_vectors(n, dim, SEED)
    client = chroma_target.open_client("embedded", base)
    col, _ = chroma_target.create_or_verify(
        client, COLLECTION, chroma_target.HnswSettings(), {"source_index_id": "bench-hybrid"}
    )
    batch = min(5000, client.get_max_batch_size())
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        part = rows[i : i + batch]
        col.add(
            ids=[r["chunk_id"] for r in part],
            embeddings=vecs[i : i + batch],
            documents=[r["text"] for r in part],
            metadatas=[{**r["metadata"], "document_id": r["document_id"]} for r in part],
        )
    wall = time.perf_counter() - t0
    assert col.count() == n, (col.count(), n)
    return {
        "chroma_load_s": round(wall, 1),
        "chroma_batch": batch,
        "chroma_peak_rss_mb": round(_proc_mb("VmHWM"), 1),
    }


def in_child(fn, *args) -> dict:
    """``fn(*args)`` in a freshly started Python (spawn: its own peak RSS, nothing inherited)."""
    pool = mp.get_context("spawn").Pool(1)
    try:
        return pool.apply(fn, args)
    finally:
        pool.close()  # let the worker exit on its own (terminating it leaks tqdm's semaphore)
        pool.join()


# ------------------------------------------------------------------------------------------- queries


def chroma_retriever(col, top_k: int):
    """A LlamaIndex retriever: Chroma's ``top_k`` nearest chunks to the query's precomputed vector
    (``QueryBundle.embedding``), each ``NodeWithScore(TextNode(id, text, metadata), cosine similarity)``,
    the fields the dense-only arm fetches too."""
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, TextNode

    class ChromaVectorRetriever(BaseRetriever):
        def _retrieve(self, query_bundle):
            res = col.query(query_embeddings=[query_bundle.embedding], n_results=top_k)
            return [
                NodeWithScore(node=TextNode(id_=i, text=doc, metadata=meta), score=1.0 - dist)
                for i, doc, meta, dist in zip(
                    res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0], strict=True
                )
            ]

    return ChromaVectorRetriever()


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 2)


def measure_queries(col, idx, questions: list[str], vectors: dict[str, list[float]], n_queries: int) -> dict:
    """Per-query latency (ms, median of RUNS) of dense only, sparse only and hybrid, interleaved."""
    from llama_index.core.schema import QueryBundle

    from runbook.sparse_index import SparseRetriever, hybrid_retriever

    hybrid = hybrid_retriever(
        chroma_retriever(col, CANDIDATES), SparseRetriever(idx, similarity_top_k=CANDIDATES), ALPHA, TOP_K
    )
    arms = {
        "dense": lambda q: col.query(query_embeddings=[vectors[q]], n_results=TOP_K),
        "sparse": lambda q: idx.search(q, CANDIDATES),
        "hybrid": lambda q: hybrid.retrieve(QueryBundle(query_str=q, embedding=vectors[q])),
    }
    for q in questions[:WARMUP]:  # load the HNSW index, kiwi and the BM25 matrices before timing
        for fn in arms.values():
            fn(q)
        got = arms["hybrid"](q)
        assert len(got) == TOP_K, f"hybrid gave {len(got)} results for {q!r}"
    names = list(arms)
    lat: dict[str, list[float]] = {a: [] for a in names}
    for i in range(n_queries):
        q = questions[i % len(questions)]
        runs: dict[str, list[float]] = {a: [] for a in names}
        for r in range(RUNS):
            for a in names[r % 3 :] + names[: r % 3]:  # rotate the order: no arm always first
                t0 = time.perf_counter()
                arms[a](q)
                runs[a].append((time.perf_counter() - t0) * 1000)
        for a in names:
            lat[a].append(statistics.median(runs[a]))
    out = {}
    for a in names:
        out[f"{a}_p50_ms"], out[f"{a}_p99_ms"] = _pct(lat[a], 50), _pct(lat[a], 99)
    out["hybrid_overhead_p50_ms"] = _pct(
        [h - d for h, d in zip(lat["hybrid"], lat["dense"], strict=True)], 50
    )
    return out


# ---------------------------------------------------------------------------------------------- main


BUILD_COLS = [
    "chunks",
    "dim",
    "build s",
    "build CPU s",
    "build peak RSS +MB",
    "index MB",
    "tokenise chunks/s",
    "chroma load s",
]
QUERY_COLS = [
    "chunks",
    "queries",
    "dense p50 ms",
    "dense p99 ms",
    "sparse p50 ms",
    "sparse p99 ms",
    "hybrid p50 ms",
    "hybrid p99 ms",
    "hybrid overhead p50 ms",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument(
        "--workdir", help="where the index and the collection go (default: a new temporary folder)"
    )
    ap.add_argument(
        "--keep", action="store_true", help="leave the sparse index and the Chroma folder in place"
    )
    ap.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = ap.parse_args()

    import bm25s
    import chromadb
    import kiwipiepy

    from runbook import chroma_target
    from runbook.rehearsal import korean_demo
    from runbook.sparse_index import SparseIndex

    made_tmp = args.workdir is None
    base = Path(args.workdir or tempfile.mkdtemp(prefix="bench_hybrid-")).resolve()
    sparse_root, chroma_dir = base / "sparse_index", base / "chroma_db"
    if sparse_root.exists() or chroma_dir.exists():
        sys.exit(f"{base} already holds sparse_index/ or chroma_db/: give an empty --workdir")
    base.mkdir(parents=True, exist_ok=True)
    sparse_path = sparse_root / COLLECTION
    n = args.chunks
    print(f"{n:,} chunks, dim {args.dim}, {args.queries} queries; work folder {base}", flush=True)
    try:
        res: dict = {"chunks": n, "dim": args.dim, "queries": args.queries}
        res.update(in_child(build_sparse, str(sparse_path), n))
        print(f"sparse index built in {res['build_s']} s", flush=True)
        res.update(in_child(load_chroma, str(base), n, args.dim))
        print(f"Chroma loaded in {res['chroma_load_s']} s", flush=True)

        questions = [q["question"] for q in korean_demo.questions()]
        qv = unit_vectors(len(questions), args.dim, SEED + 1)
        vectors = {q: qv[k].tolist() for k, q in enumerate(questions)}
        client = chroma_target.open_client("embedded", str(base))
        col = client.get_collection(COLLECTION, embedding_function=None)
        res.update(measure_queries(col, SparseIndex.open(sparse_path), questions, vectors, args.queries))
    finally:
        if not args.keep:
            if made_tmp:
                shutil.rmtree(base, ignore_errors=True)
            else:
                for p in (sparse_root, chroma_dir):
                    shutil.rmtree(p, ignore_errors=True)
    res["environment"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "chromadb": chromadb.__version__,
        "bm25s": bm25s.__version__,
        "kiwipiepy": kiwipiepy.__version__,
    }

    row = {
        "chunks": f"{n:,}",
        "dim": args.dim,
        "queries": args.queries,
        "build s": res["build_s"],
        "build CPU s": res["build_cpu_s"],
        "build peak RSS +MB": res["build_peak_rss_rise_mb"]
        if res["build_peak_rss_rise_mb"] is not None
        else "?",
        "index MB": round(res["index_bytes"] / 2**20, 1),
        "tokenise chunks/s": f"{res['tokenise_chunks_per_s']:,.0f}",
        "chroma load s": res["chroma_load_s"],
        **{f"{a} p{p} ms": res[f"{a}_p{p}_ms"] for a in ("dense", "sparse", "hybrid") for p in (50, 99)},
        "hybrid overhead p50 ms": res["hybrid_overhead_p50_ms"],
    }
    print()
    print(table([row], BUILD_COLS))
    print()
    print(table([row], QUERY_COLS))
    notes = [
        f"sparse index: {res['documents']:,} documents, {res['vocabulary']:,} terms, "
        f"{res['tokens']:,} tokens",
        f"build process: {res['build_rss_before_mb']:,.0f} MB before the build, peak "
        f"{res['build_peak_rss_mb']:,.0f} MB; loading kiwi's model took {res['kiwi_load_s']} s and "
        f"{res['kiwi_rss_mb']:,.0f} MB of the build's figures",
        f"tokenising alone ({res['tokenise_sample']:,} chunks, kiwi warm) would take "
        f"{n / res['tokenise_chunks_per_s']:.1f} s of the build's {res['build_s']} s",
        f"Chroma load: batches of {res['chroma_batch']}, peak RSS {res['chroma_peak_rss_mb']:,.0f} MB",
        f"latencies: median of {RUNS} runs per query, no query embedding; hybrid = alpha {ALPHA}, "
        f"{CANDIDATES} + {CANDIDATES} candidates, top {TOP_K}",
    ]
    print("\n" + "\n".join(notes))
    env = res["environment"]
    print(", ".join(f"{k} {v}" for k, v in env.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
