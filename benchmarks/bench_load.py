"""Load throughput into Chroma of N x 1536 clustered vectors, side by side in one run, each arm in its own
process (peak RSS per arm):

- this loader (``runbook.load.load_export`` from a Parquet export, batch 5000) with the runbook's default
  HNSW settings (Chroma's own: ef_construction 100, max_neighbors 16); ``--arms loader_here``: the same with
  every batch prepared in the loading process, to see whether the second process pays beside Chroma's threads;
- raw ``collection.add`` of the same records (prepared before the clock starts), batch 5000, with Chroma's
  default HNSW settings and with a bulk-load candidate (ef_construction 64, HNSW batch 5000, sync 50000)
  -- the goal is >= 0.95x the better of the two;
- raw ``collection.add`` of minimal records (no LlamaIndex node JSON): what LlamaIndex compatibility costs;
- llama-index ``ChromaVectorStore.add`` (one call with all nodes first, which fails above
  ``get_max_batch_size()``; then calls of 5000 nodes);
- a FAISS HNSW build (M 16, efConstruction 100) on the same vectors: the physical reference.

The loader's and the raw arms' time inside Chroma's ``add`` (summed, ``add_s``) and outside it
(``outside_add_s``): what the loader costs besides Chroma, whatever the machine's speed that hour (the same
1M load took 2,469 s at one hour and 3,396 s two hours later; an arm of an hour cannot be interleaved finely).

Recall@10 of each index against exact search on 100 queries at ef_search 100 (Chroma's default) and 800, the
smallest ef_search of 100/200/400/800 that reaches 0.99 (the runbook's verification raises it the same way),
and single-query latency p50/p99 at that ef_search. ``.venv/bin/python benchmarks/bench_load.py [--sizes 10000 100000]``

``--grid`` measures instead what phase 03 proposes when recall stays short (``chroma_target.REBUILD_STEPS``):
this loader with Chroma's default graph and with each denser step, build time, disk and the recall sweep, on
either synthetic shape (``--shapes isotropic realistic``: the hard case and one shaped like text embeddings).
``.venv/bin/python benchmarks/bench_load.py --grid --sizes 100000 --dim 384 --shapes isotropic realistic``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import markdown, run_arm, spread, table, write_section

from runbook import export_format
from runbook.rehearsal import corpus

BULK = {"ef_construction": 64, "max_neighbors": 16, "batch_size": 5000, "sync_threshold": 50000}


COMMON = """
import json, sys, time
import numpy as np
queries = np.load(sys.argv[2])
EF = (100, 200, 400, 800)  # ef_search sweep: what the runbook's verification does when recall falls short
OPENED = {}  # the collection of the client last opened by the sweep (the first one's is stopped with it)
def search(col, ef):
    global client
    col = OPENED.get("col", col)
    if ef != 100:  # ef_search applies when Chroma loads the index: modify, then open the path afresh
        import chromadb
        from chromadb.api.client import SharedSystemClient
        from chromadb.config import Settings
        col.modify(configuration={"hnsw": {"ef_search": ef}})
        # the old client's system stopped first, as the runbook's reload does: left running, it kept its index
        # loaded, and at 1M chunks four of them (6 GB each) ran this machine out of memory
        system = client._system  # looked up in the cache that the next line clears
        SharedSystemClient.clear_system_cache()
        system.stop()
        client = chromadb.PersistentClient(path=DB_PATH, settings=Settings(anonymized_telemetry=False))
        col = OPENED["col"] = client.get_collection(col.name, embedding_function=None)
        assert col.configuration["hnsw"]["ef_search"] == ef
    ids = col.query(query_embeddings=queries, n_results=10, include=[])["ids"]
    lat = []
    for q in queries[:100]:
        t = time.perf_counter(); col.query(query_embeddings=q[None, :], n_results=10, include=[]); lat.append((time.perf_counter() - t) * 1000)
    return {"ids": ids, "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2)}
ADD_S = []  # seconds inside Chroma's add, summed (an arm that times it): Chroma's own share of the arm's time
def timed_add(col):
    ADD_S.append(0.0)
    inner = col.add
    def add(*a, **k):
        t0 = time.time()
        try:
            return inner(*a, **k)
        finally:
            ADD_S[0] += time.time() - t0
    col.add = add
    return col
def answer(col, seconds, n, search=search, **extra):
    sweep = {ef: search(col, ef) for ef in EF}
    timed = {"add_s": round(ADD_S[0], 1), "outside_add_s": round(seconds - ADD_S[0], 1)} if ADD_S else {}
    print(json.dumps({"records": n, "seconds": round(seconds, 1), "records_per_s": round(n / seconds, 1),
                      **timed, "sweep": sweep, **extra}))
"""

LOADER = (
    COMMON
    + """
from runbook import chroma_target, load
from runbook import display, handoff, records  # what phase 03's kernel has imported when it loads (pandas among
# them, which pyarrow imports at its first conversion to numpy: 0.6 s in a fresh process; the raw arm imports it
# preparing its records before the clock)
client = chroma_target.open_client("embedded", sys.argv[3])
DB_PATH = sys.argv[3] + "/chroma_db"
conf = json.loads(sys.argv[4])
second_process = conf.pop("second_process", None)  # None: the loader's own choice (by the rows left)
hnsw = chroma_target.HnswSettings(**conf)
col, _ = chroma_target.create_or_verify(client, "bench", hnsw, {"source_index_id": "bench"})
col = timed_add(col)
t = time.time()
res = load.load_export(
    client, col, sys.argv[1], sys.argv[3] + "/cp.json", batch_size=5000, progress=False,
    second_process=second_process,
)
answer(col, time.time() - t, res.loaded_now, second_process_rss_mb=res.second_process_peak_rss_mb)
"""
)

RAW = (
    COMMON
    + """
import chromadb
from chromadb.config import Settings
from runbook import export_format, load
exp = export_format.open_export(sys.argv[1])
client = chromadb.PersistentClient(path=sys.argv[3], settings=Settings(anonymized_telemetry=False))
DB_PATH = sys.argv[3]
arm = json.loads(sys.argv[4])
conf = {"hnsw": {"space": "cosine", **arm["hnsw"]}}
col = timed_add(client.create_collection("bench", configuration=conf, embedding_function=None))
batches = []  # prepared before the clock starts: this arm measures Chroma alone
for b in exp.iter_chunk_batches(batch_size=5000):
    rows = b.to_pylist()
    if arm["records"] == "full":  # exactly the records the loader writes (LlamaIndex-readable)
        ids, docs, emb, metas, _ = load.prepare_records(rows)
    else:  # id, text, vector and the chunk's own flat metadata only
        ids, docs = [r["chunk_id"] for r in rows], [r["text"] for r in rows]
        emb = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        metas = [json.loads(r["metadata_json"]) for r in rows]
    batches.append((ids, docs, metas, emb))
t = time.time(); n = 0
for ids, docs, metas, emb in batches:
    col.add(ids=ids, documents=docs, metadatas=metas, embeddings=emb); n += len(ids)
answer(col, time.time() - t, n)
"""
)

LLAMA = (
    COMMON
    + """
import chromadb
from chromadb.config import Settings
from llama_index.vector_stores.chroma import ChromaVectorStore
from runbook import export_format
rows = list(export_format.open_export(sys.argv[1]).iter_chunks())
nodes = []
for r in rows:
    node = export_format.row_to_llama_node(r); node.embedding = r["embedding"]; nodes.append(node)
client = chromadb.PersistentClient(path=sys.argv[3], settings=Settings(anonymized_telemetry=False))
DB_PATH = sys.argv[3]
col = client.get_or_create_collection("bench", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
store = ChromaVectorStore(chroma_collection=col)
one_call = "ok"
try:
    store.add(nodes)
except Exception as e:
    one_call = (type(e).__name__ + ": " + str(e))[:120]
    client.delete_collection("bench")
    col = client.get_or_create_collection("bench", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
    store = ChromaVectorStore(chroma_collection=col)
    t = time.time()
    for i in range(0, len(nodes), 5000):
        store.add(nodes[i:i + 5000])
    seconds = time.time() - t
else:
    seconds = float("nan")
import io, contextlib
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    answer(col, seconds, len(nodes))
out = json.loads(buf.getvalue()); out["note"] = "one call with all nodes: " + one_call
print(json.dumps(out))
"""
)

FAISS = (
    COMMON
    + """
import faiss
from runbook import export_format
exp = export_format.open_export(sys.argv[1])
vecs = np.concatenate([np.asarray(b.column("embedding").flatten(), dtype=np.float32).reshape(b.num_rows, -1)
                       for b in exp.iter_chunk_batches(columns=["embedding"], batch_size=20000)])
ids = [r for b in exp.iter_chunk_batches(columns=["chunk_id"]) for r in b.column("chunk_id").to_pylist()]
faiss.normalize_L2(vecs)
index = faiss.IndexHNSWFlat(vecs.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
index.hnsw.efConstruction = 100
t = time.time(); index.add(vecs); seconds = time.time() - t
q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
def faiss_search(_, ef):
    index.hnsw.efSearch = ef
    _, I = index.search(q, 10)
    lat = []
    for x in q[:100]:
        t0 = time.perf_counter(); index.search(x[None, :], 10); lat.append((time.perf_counter() - t0) * 1000)
    return {"ids": [[ids[j] for j in row] for row in I], "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3)}
answer(None, seconds, len(ids), faiss_search)
"""
)


def recall_columns(sweep: dict, exact: list) -> dict:
    """recall@10 at Chroma's default ef_search (100) and at 800; the smallest ef_search reaching 0.99 and the
    query latency there (the runbook's verification raises ef_search the same way)."""
    recall = {
        int(ef): float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(r["ids"], exact, strict=True)]))
        for ef, r in sweep.items()
    }
    ok = [ef for ef in sorted(recall) if recall[ef] >= 0.99]
    at = ok[0] if ok else max(recall)
    return {
        "recall@10": round(recall[100], 4),
        "recall_ef800": round(recall[800], 4),
        "ef_for_0.99": ok[0] if ok else f">{max(recall)}",
        "p50_ms": sweep[str(at)]["p50_ms"],
        "p99_ms": sweep[str(at)]["p99_ms"],
    }


ARM_KEYS = ("loader", "loader_here", "raw", "bulk", "minimal", "llama", "faiss")


def default_arms(keys=ARM_KEYS) -> list[tuple[str, str, str]]:
    arms = {
        "loader": (
            "this loader (runbook defaults = Chroma's HNSW defaults)",
            LOADER,
            json.dumps({"space": "cosine"}),
        ),
        "loader_here": (  # whether the second process pays on this machine's cores, beside Chroma's threads
            "this loader, every batch prepared in the loading process (no second process)",
            LOADER,
            json.dumps({"space": "cosine", "second_process": False}),
        ),
        "raw": (
            "raw add, same records, Chroma default HNSW",
            RAW,
            json.dumps({"hnsw": {}, "records": "full"}),
        ),
        "bulk": (
            "raw add, same records, bulk HNSW settings",
            RAW,
            json.dumps({"hnsw": BULK, "records": "full"}),
        ),
        "minimal": (
            "raw add, minimal records, Chroma default HNSW",
            RAW,
            json.dumps({"hnsw": {}, "records": "minimal"}),
        ),
        "llama": ("llama-index ChromaVectorStore.add", LLAMA, ""),
        "faiss": ("FAISS HNSW (reference)", FAISS, ""),
    }
    return [arms[k] for k in ARM_KEYS if k in keys]


def grid_arms(n_steps: int | None = None) -> list[tuple[str, str, str]]:
    """This loader with Chroma's default graph, then with each denser step phase 03 proposes (the first
    ``n_steps`` of them: each costs about twice the build time of the one before)."""
    from runbook import chroma_target

    steps = [{"max_neighbors": 16, "ef_construction": 100}, *chroma_target.REBUILD_STEPS[:n_steps]]
    return [
        (
            f"this loader, M {s['max_neighbors']}, ef_construction {s['ef_construction']}",
            LOADER,
            json.dumps({"space": "cosine", **s}),
        )
        for s in steps
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--shapes", nargs="+", default=["isotropic"], choices=corpus.SyntheticCorpus.SHAPES)
    ap.add_argument(
        "--grid", action="store_true", help="the denser graphs phase 03 proposes, not the loaders"
    )
    ap.add_argument("--grid-steps", type=int, default=None, help="with --grid: only the first N denser steps")
    ap.add_argument(
        "--arms", nargs="+", default=list(ARM_KEYS), choices=ARM_KEYS, help="which loaders to run"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="interleaved repetitions: medians with their spread"
    )
    ap.add_argument(
        "--page", default="", help="write the table into this section of BENCHMARKS.md (make bench)"
    )
    args = ap.parse_args()
    all_rows = []
    for n in args.sizes:
        for shape in args.shapes:
            arms = grid_arms(args.grid_steps) if args.grid else default_arms(args.arms)
            all_rows.extend(run_size(n, args.dim, shape, arms, args.repeat))
    print("\n" + table(all_rows, COLS))
    if args.page:
        write_section(args.page, markdown(all_rows, COLS))


def run_size(n: int, dim: int, shape: str, arms: list[tuple[str, str, str]], repeat: int = 1) -> list[dict]:
    """Every arm on the same export, the arms in turn ``repeat`` times (a busy spell falls on all of them)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vecs = corpus.write_synthetic_export(n, dim, tmp / "export", shape)
        ids = [
            r
            for b in export_format.open_export(tmp / "export").iter_chunk_batches(columns=["chunk_id"])
            for r in b.column("chunk_id").to_pylist()
        ]
        rng = np.random.default_rng(1)
        queries = vecs[rng.integers(0, n, 100)] + rng.normal(0, 0.02, (100, dim)).astype(np.float32)
        np.save(tmp / "q.npy", queries)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)  # in place: at 1M x 1536 a copy is 6 GB more
        qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        exact = [[ids[j] for j in np.argsort(-row)[:10]] for row in qn @ vecs.T]
        del vecs
        runs = []
        for rep in range(1, repeat + 1):
            for name, code, conf in arms:
                db = tmp / f"db-{rep}-{len(runs)}"
                # an hour is short for a million chunks (a load alone took 56-67 min here beside other work)
                limit = max(3600.0, n * 0.012)
                out = run_arm(code, str(tmp / "export"), str(tmp / "q.npy"), str(db), conf, timeout=limit)
                if "sweep" in out:
                    out.update(recall_columns(out.pop("sweep"), exact))
                # the loader's memory: its own peak and its second process's (the sum of the two peaks, an upper
                # bound), and the pair's joint peak sampled every 0.1 s (tree_peak_rss_mb, a lower bound)
                if out.get("second_process_rss_mb"):
                    out["peak_rss_mb"] = round(out["peak_rss_mb"] + out["second_process_rss_mb"], 1)
                out.pop("second_process_rss_mb", None)
                if db.exists():
                    out["disk_mb"] = round(
                        sum(p.stat().st_size for p in db.rglob("*") if p.is_file()) / 2**20, 1
                    )
                    shutil.rmtree(db, ignore_errors=True)  # a million chunks' database is gigabytes
                runs.append({"records": n, "shape": shape, "arm": name, "repetition": rep, **out})
                print(table(runs[-1:], COLS + ["repetition"]), flush=True)
        return summarise(runs, repeat)


def summarise(runs: list[dict], repeat: int) -> list[dict]:
    """One row an arm: single figures when run once; otherwise the median (min-max) of its repetitions. The
    loader's ratios are paired: each repetition's loader against that repetition's raw arms."""
    if repeat == 1:
        rows = [dict(r) for r in runs]
    else:
        rows = []
        for arm in dict.fromkeys(r["arm"] for r in runs):
            got = [r for r in runs if r["arm"] == arm and "error" not in r]
            row = {
                k: v for k, v in (got or [r for r in runs if r["arm"] == arm])[0].items() if k != "repetition"
            }
            for k in (
                "seconds",
                "records_per_s",
                "peak_rss_mb",
                "tree_peak_rss_mb",
                "add_s",
                "outside_add_s",
                "disk_mb",
                "recall@10",
                "recall_ef800",
                "p50_ms",
                "p99_ms",
            ):
                vals = [r[k] for r in got if isinstance(r.get(k), int | float)]
                if vals:
                    row[k] = spread(vals, 4 if k.startswith("recall") else 2 if k.endswith("_ms") else 1)
            efs = sorted({str(r["ef_for_0.99"]) for r in got if "ef_for_0.99" in r})
            if efs:
                row["ef_for_0.99"] = " / ".join(efs)  # each repetition's, when they differ
            row["runs"] = len(got)
            rows.append(row)
    loader = next((a for a in dict.fromkeys(r["arm"] for r in runs) if a.startswith("this loader (")), None)
    if loader:
        for key, prefix in (
            ("vs_raw_same", "raw add, same records, Chroma default"),
            ("vs_best_raw", "raw add, same"),
        ):
            ratios = []
            for rep in range(1, repeat + 1):
                mine = [r.get("records_per_s") for r in runs if r["arm"] == loader and r["repetition"] == rep]
                raw = [
                    r.get("records_per_s") or 0
                    for r in runs
                    if r["arm"].startswith(prefix) and r["repetition"] == rep and "error" not in r
                ]
                if mine and mine[0] and raw and max(raw):
                    ratios.append(mine[0] / max(raw))
            if ratios:
                rows[[r["arm"] for r in rows].index(loader)][key] = spread(ratios, 2)
    return rows


COLS = [
    "records",
    "shape",
    "arm",
    "runs",
    "seconds",
    "add_s",
    "outside_add_s",
    "records_per_s",
    "vs_raw_same",
    "vs_best_raw",
    "recall@10",
    "recall_ef800",
    "ef_for_0.99",
    "p50_ms",
    "p99_ms",
    "peak_rss_mb",
    "tree_peak_rss_mb",
    "disk_mb",
    "note",
    "error",
]

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
