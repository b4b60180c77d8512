"""Re-embedding throughput against the local OpenAI-compatible endpoint with 300 ms per request and a
tokens-per-minute limit: the runbook's re-embedder (concurrent requests paced to the limit) vs LlamaIndex's
``OpenAIEmbedding`` sending batches of 64 one after another (what phase 01 did before), each in its own
process storing into an on-disk embedding cache, with its peak RSS.

The endpoint's rate-limit bucket holds ``--burst-seconds`` of the limit and starts full, so what the limit
allows over a run of T seconds is ``burst + tpm / 60 * T`` tokens; "of limit" is the tokens embedded over that.

    .venv/bin/python benchmarks/bench_reembed.py [--sizes 50000 500000] [--tpm 10000000] [--latency-ms 300]
        [--baseline-max 50000]

Chunk texts are generated (Korean medical sentences with lab names, codes and numbers, as Dr.Welno's are),
about 590 tokens on average (cl100k_base), from about 170 to 1,000. The sequential arm runs up to
``--baseline-max`` chunks only: its throughput is bound by one request's latency, not by the size.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from common import run_arm, table

from runbook.rehearsal import cloud_emulator

TEXTS = """
import random
SENTENCES = [
    "공복혈당 126 mg/dL 이상 또는 당화혈색소(HbA1c) 6.5% 이상이면 당뇨병으로 진단합니다.",
    "LDL-C 160 mg/dL 이상은 고콜레스테롤혈증이며 생활습관 교정과 약물치료를 고려합니다.",
    "γ-GTP 수치가 높으면 음주, 지방간, 약물에 의한 간손상을 의심할 수 있습니다.",
    "혈압이 140/90 mmHg 이상으로 반복 측정되면 고혈압으로 분류하고 추적 관찰합니다.",
    "Metformin 500 mg twice daily is the usual first-line therapy for type 2 diabetes.",
    "eGFR below 60 mL/min/1.73m2 for three months indicates chronic kidney disease (CKD stage 3).",
    "위내시경 검사 전 8시간 이상 금식하고, 아스피린 복용 여부를 의료진에게 알려야 합니다.",
    "갑상선자극호르몬(TSH)이 높고 유리 T4가 낮으면 갑상선기능저하증을 시사합니다.",
]
def texts(n, seed=7):
    rng = random.Random(seed)
    for i in range(n):
        k = rng.randint(4, 24)
        yield f"[{i}] " + " ".join(rng.choice(SENTENCES) for _ in range(k))
"""

RUNBOOK = (
    TEXTS
    + """
import json, sys, time
from runbook import embeddings, openai_embedder
n, url, tpm, cache_path = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
cache = embeddings.EmbeddingCache(cache_path)
emb = openai_embedder.RateLimitedEmbedder("text-embedding-3-small", "sk-bench", url, 1536,
    limits=openai_embedder.Limits(tpm=tpm), concurrency=int(sys.argv[5]))
t = time.time()
emb.run(((embeddings.text_hash(x), x) for x in texts(n)),
        lambda hs, vecs: cache.put_many("bench", dict(zip(hs, vecs))))
dt = time.time() - t
p = emb.progress
print(json.dumps({"chunks": p.chunks, "tokens": p.tokens, "seconds": round(dt, 1), "requests": p.requests,
                  "429s": p.rate_limited}))
"""
)

LLAMAINDEX = (
    TEXTS
    + """
import json, sys, time
from itertools import islice
from llama_index.embeddings.openai import OpenAIEmbedding
from runbook import embeddings, openai_embedder
n, url, cache_path = int(sys.argv[1]), sys.argv[2], sys.argv[4]
cache = embeddings.EmbeddingCache(cache_path)
model = OpenAIEmbedding(model="text-embedding-3-small", api_key="sk-bench", api_base=url, dimensions=1536,
                        embed_batch_size=64)
it = texts(n)
t = time.time()
chunks = tokens = 0
while batch := list(islice(it, 64)):
    vecs = model.get_text_embedding_batch(batch)
    cache.put_many("bench", {embeddings.text_hash(x): v for x, v in zip(batch, vecs)})
    chunks += len(batch)
    tokens += sum(openai_embedder.count_tokens(batch))
dt = time.time() - t
print(json.dumps({"chunks": chunks, "tokens": tokens, "seconds": round(dt, 1), "requests": -(-n // 64),
                  "429s": "?"}))
"""
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000])
    ap.add_argument("--tpm", type=int, default=10_000_000)
    ap.add_argument("--latency-ms", type=float, default=300)
    ap.add_argument("--burst-seconds", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--baseline-max", type=int, default=50_000, help="largest size the sequential arm runs")
    args = ap.parse_args()
    os.environ.setdefault("LLAMA_CLOUD_API_KEY", "bench-key")
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    burst = args.tpm / 60 * args.burst_seconds
    rows = []
    for n in args.sizes:
        arms = [("runbook re-embedder", RUNBOOK)]
        if n <= args.baseline_max:
            arms.append(("LlamaIndex sequential x64", LLAMAINDEX))
        for name, code in arms:
            limits = {"tpm": args.tpm, "latency_ms": args.latency_ms, "burst_seconds": args.burst_seconds}
            srv = cloud_emulator.start_subprocess(
                "synthetic:1:8", openai_vectors="hash", openai_limits=limits
            )
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    r = run_arm(
                        code,
                        str(n),
                        srv.url + "/v1",
                        str(args.tpm),
                        os.path.join(tmp, "cache.sqlite"),
                        str(args.concurrency),
                        timeout=6 * 3600,
                    )
                st = cloud_emulator.admin_request(srv.url, "/_emulator/openai", "bench-key")
            finally:
                srv.stop()
            if "error" in r:
                rows.append({"chunks": n, "arm": name, "error": r["error"]})
                continue
            allowed = burst + args.tpm / 60 * r["seconds"]
            rows.append(
                {
                    "chunks": n,
                    "arm": name,
                    "seconds": r["seconds"],
                    "chunks/s": round(r["chunks"] / r["seconds"], 1),
                    "tokens/min": f"{r['tokens'] / r['seconds'] * 60:,.0f}",
                    "of limit": round(r["tokens"] / allowed, 3),
                    "requests": r["requests"],
                    "429 answered": sum(st["limited"].values()),
                    "peak RSS MB": r["peak_rss_mb"],
                }
            )
            print(rows[-1], flush=True)
    print(
        f"\nendpoint: {args.latency_ms:.0f} ms per request, {args.tpm:,} tokens/min, bucket "
        f"{args.burst_seconds:g} s; re-embedder concurrency {args.concurrency}\n"
    )
    cols = ["chunks", "arm", "seconds", "chunks/s", "tokens/min", "of limit", "requests", "429 answered"]
    print(table(rows, [*cols, "peak RSS MB", "error"]))


if __name__ == "__main__":
    main()
