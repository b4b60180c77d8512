"""Disk calibration: bytes per chunk of each thing the migration writes, measured, for ``runbook.disk``.

For N realistic chunks (600-1000 characters of Korean and English, ~10 flat metadata keys, relationships to the
document and its neighbours, so the ``_node_content`` JSON Chroma stores is ~1.5 KB) and vectors of D dims:

- the export (``backup/exports/<id>/``): Parquet shards written by phase 01's writer (zstd);
- Chroma (``chroma_db/``): the runbook's own loader (``load.load_export``) into a collection made by
  ``chroma_target.create_or_verify`` with the runbook's default HNSW settings (cosine); the folder is measured
  before every batch and after the last (the peak is what fills a disk), then after the client is stopped;
- the embedding cache (``cache/embeddings.sqlite``): ``EmbeddingCache.put_many`` in batches of 64, the way
  ``embeddings.embed_texts`` commits, with its WAL;
- a snapshot (phase 07): a copy of ``chroma_db/`` (``update.snapshot`` uses ``shutil.copytree``).

Two chunk shapes ("full": the above, P ~ 3,700 payload bytes; "small": 225 characters and one key, P ~ 1,680).
Sizes are allocated bytes (``st_blocks * 512``, what fills a volume) and apparent bytes (``st_size``). Each
(shape, D, N) runs in its own process. Then a linear fit per component of
bytes = fixed + N * (a + b * D + c * P) [+ min(N, 5000) * (q0 + q1 * D + q2 * P) for Chroma's log], and the
ratio of ``runbook.disk.projection`` to each measurement.

``.venv/bin/python benchmarks/disk_calibration.py [--sizes 2000 5000 10000] [--dims 384 768 1536]``: about 10
minutes on 2 cores (10,000 chunks make two batches, which separates the log from the collection);
``--report /tmp/disk_calibration.json`` prints the tables again from the raw figures of a run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import run_arm, table

ARM = r"""
import json, os, random, shutil, sys
from pathlib import Path
import numpy as np
from runbook import chroma_target, disk, embeddings, export_format, extract, load
from runbook.rehearsal import corpus

n, dim, root, payload = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

def size(p):
    files = [p] if Path(p).is_file() else [x for x in Path(p).rglob("*") if x.is_file()]
    st = [x.stat() for x in files if x.exists()]
    return {"alloc": sum(s.st_blocks * 512 for s in st), "apparent": sum(s.st_size for s in st)}

KO = ("건강검진 결과 공복혈당이 높게 나온 경우 식이요법과 운동을 병행하는 것이 권장됩니다 "
      "고혈압 환자는 정기적으로 혈압을 측정하고 의사와 상담해야 합니다 콜레스테롤 수치 간기능 검사 "
      "위내시경 대장내시경 갑상선 초음파 골밀도 검사 결과 해석 생활습관 개선 금연 절주 수면").split()
EN = ("fasting glucose HbA1c blood pressure LDL cholesterol triglycerides liver enzymes ALT AST GGT "
      "screening follow-up recommended lifestyle diet exercise physician consultation result normal range "
      "elevated borderline risk factor guideline annual checkup ultrasound endoscopy").split()
rng = random.Random(dim * 100003 + n + len(payload))

def text():
    words, length = [], rng.randint(600, 1000)
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(KO) if rng.random() < 0.6 else rng.choice(EN))
        if rng.random() < 0.08:
            words[-1] += "."
    return " ".join(words)[:length]

per_doc, cats = 20, ["검진", "내과", "영상의학", "생활습관"]
vrng = np.random.default_rng(dim)
centers = vrng.standard_normal((64, dim)).astype(np.float32)
exp_dir = root / "backup" / "exports" / "calib"
exp_dir.mkdir(parents=True)
header = {"format": export_format.FORMAT, "export_id": "calib", "index_name": "calib", "index_id": "calib",
          "project": {}, "pipeline": {}}
w = extract._Writer(exp_dir, header, shard_rows=20000)
all_vecs, texts, payloads = [], [], []
for d in range((n + per_doc - 1) // per_doc):
    doc_id = f"doc-{d:06d}-{'%032x' % rng.getrandbits(128)}"
    fname = f"{rng.choice(KO)}_{rng.choice(KO)}_가이드_{d}.pdf"
    if payload == "full":  # the Dr.Welno shape: LlamaCloud's file metadata plus the index's own keys
        doc_meta = {"file_id": "%032x" % rng.getrandbits(128), "file_name": fname, "pipeline_id": "calib-pipeline",
                    "file_size": rng.randint(10**4, 10**7), "last_modified_at": "2025-03-02T09:00:00+00:00",
                    "category": rng.choice(cats), "title": fname[:-4], "title_en": "Health checkup guide",
                    "external_file_id": f"welno-kb/{rng.choice(cats)}/{fname}"}
    else:  # a lean index: short chunks, a file name only
        doc_meta = {"file_name": f"doc{d}.txt"}
    k = min(per_doc, n - d * per_doc)
    ids = [f"{doc_id}-c{j:03d}" for j in range(k)]
    v = centers[vrng.integers(0, 64, size=k)] + 0.3 * vrng.standard_normal((k, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows, pos, doc_text = [], 0, []
    for j in range(k):
        t = text() if payload == "full" else text()[: rng.randint(150, 300)]
        texts.append(t); doc_text.append(t)
        meta = {**doc_meta, "page_label": str(j // 3 + 1), "chunk_index": j} if payload == "full" else dict(doc_meta)
        node = corpus.node_json(ids[j], t, meta, doc_id, doc_meta, ids[j - 1] if j else None,
                                ids[j + 1] if j + 1 < k else None, pos, pos + len(t), embedding=v[j].tolist())
        pos += len(t)
        row = export_format.node_to_row(doc_id, j, node)
        rows.append(row)
        payloads.append(disk.payload_bytes(row))
    all_vecs.append(v)
    w.add({"document_id": doc_id, "text": " ".join(doc_text), "metadata_json": json.dumps(doc_meta, ensure_ascii=False),
           "content_sha256": "", "chunk_count": k}, rows)
w.finalize({"exported_at": "calibration", "source_total_count": n})
out = {"n": n, "dim": dim, "payload": payload, "payload_bytes": round(sum(payloads) / n), "export": size(exp_dir)}
row = next(export_format.open_export(exp_dir).iter_chunks())
md, _ = load.to_chroma_metadata(row)
out["node_content_chars"] = len(md["_node_content"])
out["metadata_keys"] = len(json.loads(row["metadata_json"]))
out["text_chars_mean"] = round(sum(len(t) for t in texts) / len(texts))

client = chroma_target.open_client("embedded", str(root))
col, _ = chroma_target.create_or_verify(client, "calib", chroma_target.HnswSettings(), {"source_index_id": "calib"})
db = root / "chroma_db"
out["chroma_empty"] = size(db)
peak = {"alloc": 0, "apparent": 0}
def watch(_n):
    s = size(db)
    for key in peak:
        peak[key] = max(peak[key], s[key])
load.load_export(client, col, exp_dir, root / "cp.json", batch_size=5000, progress=False, before_batch=watch)
watch(0)
out["chroma_peak"] = peak
out["chroma_open"] = size(db)
assert col.count() == n
from chromadb.api.client import SharedSystemClient
system = client._system
SharedSystemClient.clear_system_cache()
system.stop()
out["chroma_closed"] = size(db)
out["chroma_files"] = sorted({p.name for p in db.rglob("*") if p.is_file()})
out["chroma_by_file"] = {p.name: p.stat().st_blocks * 512 for p in db.rglob("*") if p.is_file()}
import sqlite3
con = sqlite3.connect(db / "chroma.sqlite3")
try:
    q = "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 12"
    out["chroma_sqlite_tables"] = dict(con.execute(q).fetchall())
except sqlite3.Error as e:
    out["chroma_sqlite_tables"] = str(e)
out["chroma_queue_rows"] = con.execute("SELECT COUNT(*) FROM embeddings_queue").fetchone()[0]
con.close()
snap = root / "snapshot"
shutil.copytree(db, snap)
out["snapshot"] = size(snap)

cache_path = root / "cache" / "embeddings.sqlite"
cache = embeddings.EmbeddingCache(cache_path)
vecs = np.concatenate(all_vecs)
hashes = [embeddings.text_hash(t) for t in texts]
for i in range(0, n, 64):
    cache.put_many("huggingface:sentence-transformers/all-MiniLM-L6-v2", dict(zip(hashes[i:i + 64], vecs[i:i + 64])))
out["cache_open"] = size(cache_path.parent)
cache.close()
out["cache_closed"] = size(cache_path.parent)
print(json.dumps(out))
"""


BATCH = 5000  # the loader's batch here and the runbook's default load_batch_size
FEATURES = {  # name -> value for (N, D, P); m = min(N, BATCH): records in Chroma's log at once
    "fixed": lambda n, d, p: 1.0,
    "per chunk": lambda n, d, p: n,
    "per chunk x D": lambda n, d, p: n * d,
    "per chunk x P": lambda n, d, p: n * p,
    "log": lambda n, d, p: min(n, BATCH),
    "log x D": lambda n, d, p: min(n, BATCH) * d,
    "log x P": lambda n, d, p: min(n, BATCH) * p,
}
MODELS = {  # which terms each component's fit uses
    "export": ["fixed", "per chunk", "per chunk x D", "per chunk x P"],
    "chroma": list(FEATURES),
    "cache": ["fixed", "per chunk", "per chunk x D"],
}


def fit(points: list[tuple[int, int, int, int]], terms: list[str]) -> dict:
    """Least squares of bytes over (N, D, P, bytes) points with the given terms; worst under-prediction."""
    x = np.array([[FEATURES[t](n, d, p) for t in terms] for n, d, p, _ in points])
    y = np.array([float(b) for *_, b in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    pred = x @ coef
    worst = max((yy - pp) / yy for yy, pp in zip(y, pred, strict=True))
    return {**{t: round(c, 3) for t, c in zip(terms, coef, strict=True)}, "worst under": f"{worst:+.1%}"}


COMPONENTS = {
    "export": "export",
    "chroma peak": "chroma_peak",
    "chroma stopped": "chroma_closed",
    "snapshot": "snapshot",
    "cache": "cache_closed",
    "cache open (WAL)": "cache_open",
}


def report(results: list[dict]) -> None:
    first = (
        next(r for r in results if r["payload"] == "full")
        if any(r["payload"] == "full" for r in results)
        else results[0]
    )
    print(
        f"\n'full' chunks: text {first['text_chars_mean']} chars on average, {first['metadata_keys']} metadata keys, "
        f"_node_content {first['node_content_chars']} chars, payload {first['payload_bytes']} bytes; "
        f"chroma files: {', '.join(first['chroma_files'])}"
    )
    rows = []
    for r in results:
        row = {"payload": f"{r['payload']} ({r['payload_bytes']} B)", "dim": r["dim"], "chunks": r["n"]}
        for label, key in COMPONENTS.items():
            row[label] = round(r[key]["alloc"] / r["n"])
        rows.append(row)
    print("\nallocated bytes per chunk (total / N, fixed part included):")
    print(table(rows, ["payload", "dim", "chunks", *COMPONENTS]))
    marginal = []
    for payload in dict.fromkeys(r["payload"] for r in results):
        for dim in dict.fromkeys(r["dim"] for r in results):
            rs = sorted(
                (r for r in results if r["dim"] == dim and r["payload"] == payload), key=lambda r: r["n"]
            )
            for lo, hi in zip(rs, rs[1:], strict=False):
                row = {"payload": payload, "dim": dim, "N": f"{lo['n']}->{hi['n']}"}
                for label, key in COMPONENTS.items():
                    row[label] = round((hi[key]["alloc"] - lo[key]["alloc"]) / (hi["n"] - lo["n"]))
                marginal.append(row)
    if marginal:
        print("\nmarginal allocated bytes per chunk between sizes:")
        print(table(marginal, ["payload", "dim", "N", *COMPONENTS]))
    print(
        "\nlinear fits of allocated bytes (N chunks, D dims, P payload bytes per chunk, "
        f"log = min(N, {BATCH}) records in Chroma's write-ahead log at once):"
    )
    for label, key in COMPONENTS.items():
        terms = MODELS["chroma" if label.startswith(("chroma", "snapshot")) else label.split()[0]]
        if len({r["payload"] for r in results}) < 2:
            terms = [t for t in terms if "x P" not in t]
        pts = [(r["n"], r["dim"], r["payload_bytes"], r[key]["alloc"]) for r in results]
        f = fit(pts, terms)
        print(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in f.items()))
    if not hasattr(__import__("runbook.disk").disk, "projection"):
        return
    print("\nprojection (runbook.disk) against each measurement (allocated bytes; ratio >= 1 means covered):")
    from runbook import disk

    checks = []
    for r in results:
        proj = {
            row["component"]: row["bytes"]
            for row in disk.projection(
                r["n"], r["dim"], reembed=True, snapshots=1, payload_bytes=r["payload_bytes"]
            )
        }
        # the export as it stands once written (re-embedding also counts a shard rewritten beside the old one)
        proj["export"] = disk.projection(
            r["n"], r["dim"], reembed=False, snapshots=0, payload_bytes=r["payload_bytes"]
        )[0]["bytes"]
        checks.append(
            {
                "payload": r["payload"],
                "dim": r["dim"],
                "chunks": r["n"],
                "export": round(proj["export"] / r["export"]["alloc"], 2),
                "chroma": round(proj["chroma"] / r["chroma_peak"]["alloc"], 2),
                "snapshot": round(proj["snapshots (phase 07)"] / r["snapshot"]["alloc"], 2),
                "cache": round(proj["embedding cache"] / r["cache_open"]["alloc"], 2),
            }
        )
    print(table(checks, ["payload", "dim", "chunks", "export", "chroma", "snapshot", "cache"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000])
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 768, 1536])
    ap.add_argument("--payloads", nargs="+", default=["full", "small"], choices=["full", "small"])
    ap.add_argument("--report", help="only report these raw figures (a JSON file an earlier run wrote)")
    args = ap.parse_args()
    import chromadb

    print(f"chromadb {chromadb.__version__}, Python {sys.version.split()[0]}, {platform.platform()}")
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return
    results = []
    for payload in args.payloads:
        for dim in args.dims:
            for n in args.sizes:
                with tempfile.TemporaryDirectory(prefix="disk-calib-") as tmp:
                    r = run_arm(ARM, str(n), str(dim), tmp, payload, timeout=3600)
                if "error" in r:
                    raise SystemExit(f"{payload} D={dim} N={n}: {r['error']}")
                results.append(r)
                print(json.dumps(r), flush=True)
    out = Path(tempfile.gettempdir()) / "disk_calibration.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nraw figures: {out}")
    report(results)


if __name__ == "__main__":
    main()
