"""Export throughput against the local LlamaCloud-compatible server with 50 ms injected latency per request:
this exporter (bounded concurrency, sharded Parquet) vs a sequential one-request-at-a-time client, at 10k and
100k chunks of a synthetic corpus (50 chunks per document, no vectors served, as LlamaCloud does), with the
peak RSS of each in its own process.

    .venv/bin/python benchmarks/bench_extract.py [--sizes 10000 100000] [--latency-ms 50] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import urllib.request

from common import run_arm, table

from runbook.rehearsal import cloud_emulator

EXPORTER = """
import json, sys, time
from runbook import extract, source
src = source.open_source(sys.argv[1], "LLAMA_CLOUD_API_KEY")
t = time.time()
res = extract.export_index(src, sys.argv[2], index_name=sys.argv[3], concurrency=int(sys.argv[4]), page_size=100,
                           shard_rows=20000, progress=False)
dt = time.time() - t
print(json.dumps({"chunks": res.manifest["total_chunks"], "seconds": round(dt, 1),
                  "chunks_per_s": round(res.manifest["total_chunks"] / dt, 1)}))
"""

SEQUENTIAL = """
import json, sys, time
from runbook import extract, source
src = source.open_source(sys.argv[1], "LLAMA_CLOUD_API_KEY")
t = time.time()
pid = src.client.pipelines.list(pipeline_name=sys.argv[3])[0].id
n = extract.sequential_export_count(src, pid, page_size=100)
dt = time.time() - t
print(json.dumps({"chunks": n, "seconds": round(dt, 1), "chunks_per_s": round(n / dt, 1)}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("LLAMA_CLOUD_API_KEY", "bench-key-0123456789")
    rows = []
    for n in args.sizes:
        corpus = f"synthetic:{n}:1536:50"
        h = cloud_emulator.start_subprocess(corpus, "LLAMA_CLOUD_API_KEY")
        try:
            req = urllib.request.Request(
                h.url + "/_emulator/faults",
                data=json.dumps({"latency_ms": args.latency_ms}).encode(),
                headers={
                    "Authorization": "Bearer " + os.environ["LLAMA_CLOUD_API_KEY"],
                    "content-type": "application/json",
                },
                method="POST",
            )
            urllib.request.urlopen(req).read()
            name = f"synthetic-{n}x1536"
            with tempfile.TemporaryDirectory() as d:
                ours = run_arm(EXPORTER, h.url, d, name, str(args.concurrency))
            seq = run_arm(SEQUENTIAL, h.url, "", name)
        finally:
            h.stop()
        speedup = (
            round(ours["chunks_per_s"] / seq["chunks_per_s"], 1)
            if "chunks_per_s" in ours and "chunks_per_s" in seq
            else ""
        )
        rows.append(
            {"chunks": n, "arm": f"exporter (concurrency {args.concurrency})", **ours, "speedup": speedup}
        )
        rows.append({"chunks": n, "arm": "sequential client", **seq})
        print(
            table(rows[-2:], ["chunks", "arm", "seconds", "chunks_per_s", "speedup", "peak_rss_mb", "error"]),
            flush=True,
        )
    print("\n" + table(rows, ["chunks", "arm", "seconds", "chunks_per_s", "speedup", "peak_rss_mb", "error"]))


if __name__ == "__main__":
    main()
