"""Export throughput against the local LlamaCloud-compatible server with 50 ms and 200 ms injected latency per
request: this exporter (bounded concurrency, sharded Parquet) vs a sequential one-request-at-a-time client, at
10k and 100k chunks of a synthetic corpus (50 chunks per document, no vectors served, as LlamaCloud does), each
arm in its own process.

The arms alternate (exporter, sequential, exporter, sequential, ...) ``--repeat`` times (default 3) so a busy
spell of the machine falls on both; each figure is the median with its spread (min-max), and the speed-up is
the median of each repetition's own ratio. The server shares the machine's cores with the arm it serves, so
each arm's own CPU seconds per 1,000 chunks are given apart from the server's: the exporter's efficiency is
visible whatever the machine's load. Each arm's clock starts once the client is open and has imported its
resource modules (which it does at first use, about 0.1 s), as the interpreter's own imports are left out.

    .venv/bin/python benchmarks/bench_extract.py [--sizes 10000 100000] [--latencies-ms 50 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import urllib.request

from common import markdown, proc_cpu_seconds, run_arm, spread, table, write_section

from runbook.rehearsal import cloud_emulator

EXPORTER = """
import json, sys, time
from runbook import extract, source
src = source.open_source(sys.argv[1], "LLAMA_CLOUD_API_KEY")
src.client.pipelines.documents  # the client imports its resource modules at first use (0.1 s): left out of both
t, c = time.time(), time.process_time()
res = extract.export_index(src, sys.argv[2], index_name=sys.argv[3], concurrency=int(sys.argv[4]), page_size=100,
                           shard_rows=20000, progress=False)
dt = time.time() - t
print(json.dumps({"chunks": res.manifest["total_chunks"], "seconds": round(dt, 1), "work_cpu_s": time.process_time() - c,
                  "chunks_per_s": round(res.manifest["total_chunks"] / dt, 1)}))
"""

SEQUENTIAL = """
import json, sys, time
from runbook import extract, source
src = source.open_source(sys.argv[1], "LLAMA_CLOUD_API_KEY")
src.client.pipelines.documents  # the client imports its resource modules at first use (0.1 s): left out of both
t, c = time.time(), time.process_time()
pid = src.client.pipelines.list(pipeline_name=sys.argv[3])[0].id
n = extract.sequential_export_count(src, pid, page_size=100)
dt = time.time() - t
print(json.dumps({"chunks": n, "seconds": round(dt, 1), "work_cpu_s": time.process_time() - c, "chunks_per_s": round(n / dt, 1)}))
"""


def set_latency(url: str, latency_ms: float) -> None:
    req = urllib.request.Request(
        url + "/_emulator/faults",
        data=json.dumps({"latency_ms": latency_ms}).encode(),
        headers={
            "Authorization": "Bearer " + os.environ["LLAMA_CLOUD_API_KEY"],
            "content-type": "application/json",
        },
        method="POST",
    )
    urllib.request.urlopen(req).read()


def measure(arm: str, code: str, h, *args: str) -> dict:
    """One arm's run, with the server's CPU seconds over the same time."""
    s0 = proc_cpu_seconds(h.proc.pid)
    out = run_arm(code, h.url, *args)
    return {"arm": arm, **out, "server_cpu_s": round(proc_cpu_seconds(h.proc.pid) - s0, 2)}


def summary(n: int, latency: float, runs: list[dict]) -> list[dict]:
    rows = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        got = [r for r in runs if r["arm"] == arm and "error" not in r]
        if not got:
            error = next(r.get("error", "") for r in runs if r["arm"] == arm)
            rows.append({"chunks": n, "latency_ms": latency, "arm": arm, "error": error})
            continue
        rows.append(
            {
                "chunks": n,
                "latency_ms": latency,
                "arm": arm,
                "runs": len(got),
                "seconds": spread([r["seconds"] for r in got]),
                "chunks_per_s": spread([r["chunks_per_s"] for r in got], 0),
                # the arm's CPU over its work alone (the interpreter's start and imports left out)
                "cpu_s_per_1k": spread([1000 * r["work_cpu_s"] / r["chunks"] for r in got], 3),
                "server_cpu_s_per_1k": spread([1000 * r["server_cpu_s"] / r["chunks"] for r in got], 3),
                "peak_rss_mb": spread([r["peak_rss_mb"] for r in got], 0),
            }
        )
    # each repetition's own ratio, from the rates (the seconds are rounded to 0.1 s)
    pairs = [
        (a["chunks_per_s"], b["chunks_per_s"])
        for a, b in zip(runs[0::2], runs[1::2], strict=False)
        if "error" not in a and "error" not in b and b["chunks_per_s"]
    ]
    if pairs:
        rows[0]["speedup"] = spread([a / b for a, b in pairs], 1) + "×"
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--latencies-ms", type=float, nargs="+", default=[50.0, 200.0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repetitions of each arm")
    ap.add_argument("--page", action="store_true", help="write the table into BENCHMARKS.md (make bench)")
    args = ap.parse_args()
    os.environ.setdefault("LLAMA_CLOUD_API_KEY", "bench-key-0123456789")
    rows = []
    for n in args.sizes:
        h = cloud_emulator.start_subprocess(f"synthetic:{n}:1536:50", "LLAMA_CLOUD_API_KEY")
        name = f"synthetic-{n}x1536"
        try:
            for latency in args.latencies_ms:
                set_latency(h.url, latency)
                runs = []
                for _ in range(args.repeat):
                    with tempfile.TemporaryDirectory() as d:
                        runs.append(
                            measure(
                                f"exporter (concurrency {args.concurrency})",
                                EXPORTER,
                                h,
                                d,
                                name,
                                str(args.concurrency),
                            )
                        )
                    runs.append(measure("sequential client", SEQUENTIAL, h, "", name))
                rows.extend(summary(n, latency, runs))
                print(table(rows[-2:], COLS), flush=True)
        finally:
            h.stop()
    print("\n" + table(rows, COLS))
    if args.page:
        write_section("extract", markdown(rows, COLS))


COLS = [
    "chunks",
    "latency_ms",
    "arm",
    "runs",
    "seconds",
    "chunks_per_s",
    "speedup",
    "cpu_s_per_1k",
    "server_cpu_s_per_1k",
    "peak_rss_mb",
    "error",
]


if __name__ == "__main__":
    main()
