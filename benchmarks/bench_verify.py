"""Phase 03's checks on one retained collection, arm against arm: the goal is that they take at most a tenth of
the load at 1M chunks, and a 1M collection takes 20-40 minutes to build, so it is built once (``--work``, kept)
and each arm then runs ``load.verify_load`` as phase 03 calls it (200 sampled records, 50 recall queries, goal
0.99, ``ef_search`` raised as needed) in a fresh process, ``ef_search`` reset to 100 first, arms alternated.

An arm is a folder that holds a ``runbook`` package (``--arm NAME=FOLDER``; ``--arm here`` is this checkout):
the code before a change, checked out elsewhere with its ``lib`` linked as ``<folder>/runbook``, runs beside the
code after it. Prints each run's seconds by step and the checks over the load's seconds (this script's own load,
``load.load_export`` as phase 03 runs it, timed when it builds the collection).

``.venv/bin/python benchmarks/bench_verify.py --work /tmp/verify1m --chunks 1000000 --repeat 2 --arm here
--arm before=/tmp/before/pp`` (about 30 min to build at 1M, then 2-3 min a run)
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
from pathlib import Path

from common import markdown, run_arm

LIB = Path(__file__).resolve().parent.parent / "lib"

BUILD = """
import json, sys, time
from pathlib import Path
from runbook import chroma_target, load
from runbook.rehearsal import corpus
work, n, dim, shape = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if not (work / "export" / "manifest.json").exists():
    corpus.write_synthetic_export(n, dim, work / "export", shape)
total = json.loads((work / "export" / "manifest.json").read_text())["total_chunks"]
if total != n:
    raise SystemExit(f"{work} holds an export of {total} chunks, not {n}: give another --work or --chunks {total}")
client = chroma_target.open_client("embedded", str(work))
col, _ = chroma_target.create_or_verify(client, "bench", chroma_target.HnswSettings(), {"source_index_id": "bench"})
t = time.time()
res = load.load_export(client, col, str(work / "export"), str(work / "cp.json"), batch_size=5000, progress=False)
seconds = time.time() - t
if res.loaded_now == col.count():  # the whole load in this run: its time is the one to compare the checks with
    (work / "load.json").write_text(json.dumps({"load_s": round(seconds, 1), "records": col.count()}))
print(json.dumps({"loaded_now": res.loaded_now, "seconds": round(seconds, 1)}))
"""

VERIFY = """
import inspect, json, sys, time
from runbook import chroma_target, load
work = sys.argv[1]
client = chroma_target.open_client("embedded", work)
col = client.get_collection("bench", embedding_function=None)
col.modify(configuration={"hnsw": {"ef_search": 100}})
client, col = chroma_target.reload_collection(client, "bench", "embedded", work)
kw = dict(sample=200, recall_queries=50, reopen=chroma_target.reopener("embedded", work))
if "tune_ef_search" in inspect.signature(load.verify_load).parameters:  # code before it raised ef_search only with reopen
    kw["tune_ef_search"] = True
t = time.time()
v = load.verify_load(client, col, work + "/export", None, **kw)
print(json.dumps({
    "checks_s": round(time.time() - t, 1),
    "steps": v["seconds"],
    "recall": v["figures"]["recall@10"],
    "ef_search": v["figures"]["ef_search"],
}))
"""


def step(steps: dict, prefix: str) -> float | None:
    found = [v for k, v in steps.items() if k.startswith(prefix)]
    return round(sum(found), 1) if found else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="the folder the collection is built in and kept")
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--shape", default="realistic", choices=["isotropic", "realistic"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--arm", action="append", default=[], help="NAME=FOLDER holding a runbook package, or 'here'"
    )
    a = ap.parse_args()
    here = Path(tempfile.mkdtemp(prefix="bench_verify_"))  # a folder whose `runbook` is this checkout's lib
    atexit.register(shutil.rmtree, here, True)
    (here / "runbook").symlink_to(LIB)
    for x in a.arm:
        if x != "here" and ("=" not in x or not (Path(x.split("=", 1)[1]) / "runbook").exists()):
            raise SystemExit(f"--arm {x!r}: give 'here' or NAME=FOLDER, a folder holding a runbook package")
    arms = [("here", str(here)) if x == "here" else tuple(x.split("=", 1)) for x in a.arm] or [
        ("here", str(here))
    ]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    built = run_arm(
        BUILD, str(work), str(a.chunks), str(a.dim), a.shape, env={"PYTHONPATH": str(here)}, timeout=4 * 3600
    )
    if "error" in built:
        raise SystemExit(f"building the collection in {work} failed: {built['error']}")
    if not (work / "load.json").exists():
        raise SystemExit(
            f"{work}: its collection was loaded in parts (or by another tool): no load time to compare with"
        )
    load_s = json.loads((work / "load.json").read_text())["load_s"]
    print(f"collection: {a.chunks} chunks in {work}, loaded in {load_s} s (this time: {built})", flush=True)
    rows = []
    for rep in range(1, a.repeat + 1):
        for name, folder in arms:
            r = run_arm(VERIFY, str(work), env={"PYTHONPATH": folder}, timeout=3600)
            if "error" in r:
                print(json.dumps({"arm": name, "repetition": rep, **r}), flush=True)
                continue
            steps = r["steps"]
            rows.append(
                {
                    "arm": name,
                    "repetition": rep,
                    "checks_s": r["checks_s"],
                    "compared_s": step(steps, "every record read back"),
                    "exact_s": step(steps, "exact search"),
                    "recall_s": step(steps, "HNSW recall"),
                    "self_s": step(steps, "self-retrieval"),
                    "over_load": round(r["checks_s"] / load_s, 3),
                    "recall": r["recall"],
                    "ef_search": r["ef_search"],
                    "peak_rss_mb": r["peak_rss_mb"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if rows:
        print(markdown(rows, list(rows[0])))


if __name__ == "__main__":
    main()
