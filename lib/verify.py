"""Verify an export on its own: checksums, counts, vectors, ids, texts, metadata, and a re-fetch sample.

Every problem names its place (shard, row, chunk id) and what to do. ``python -m runbook verify-export
<folder>`` runs it without a notebook.
"""

from __future__ import annotations

import bisect
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from . import export_format, load, records
from .export_format import ExportError


@dataclass
class Report:
    checks: list[dict] = field(default_factory=list)
    issues: list[dict] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)
    odd: list[dict] = field(default_factory=list)
    reconciliation: list[dict] = field(default_factory=list)
    norms: dict = field(default_factory=dict)
    max_issues: int = 200

    def check(self, name: str, ok: bool, detail: str):
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})

    def issue(self, where: str, problem: str, action: str):
        if len(self.issues) < self.max_issues:
            self.issues.append({"where": where, "problem": problem, "what to do": action})

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def checks_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.checks, columns=["check", "ok", "detail"])

    def issues_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.issues, columns=["where", "problem", "what to do"])

    def metadata_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.metadata, columns=["key", "kind", "chunks", "treatment"])

    def odd_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.odd, columns=["document", "chunk", "what", "treatment"])

    def reconciliation_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.reconciliation, columns=["item", "count"])

    def to_string(self) -> str:
        out = self.checks_frame().to_string(index=False)
        for title, frame in (
            ("odd records and what phase 03 will do with them", self.odd_frame()),
            ("metadata Chroma cannot store as it is: converted reversibly", self.metadata_frame()),
            ("every chunk accounted for", self.reconciliation_frame()),
            ("issues", self.issues_frame()),
        ):
            if len(frame):
                out += f"\n\n{title}\n" + frame.to_string(index=False)
        return out


def verify_export(
    export_dir: str | os.PathLike,
    source=None,
    sample: int = 50,
    seed: int = 0,
    expect_vectors: bool = True,
    policy: records.Policy | None = None,
) -> Report:
    """Check an export folder; with ``source`` (a ``runbook.source.Source``) also compare with the cloud.
    Odd records are listed with what phase 03 will do with each (``records.decide`` under ``policy``), and
    every chunk is accounted for; only what breaks the export itself fails a check."""
    r = Report()
    path = Path(export_dir)
    try:
        exp = export_format.open_export(path)
    except ExportError as e:
        r.check("manifest", False, str(e))
        return r
    m = exp.manifest
    r.check("manifest", True, f"{m['index_name']} ({m['index_id']}), exported {m.get('exported_at')}")

    # shards: present, checksums, readable, counts
    bad_shards = 0
    for sh in m["shards"]:
        for key, sha_key in (("chunks_file", "chunks_sha256"), ("documents_file", "documents_sha256")):
            f = path / sh[key]
            if not f.exists():
                bad_shards += 1
                r.issue(
                    sh[key],
                    "file missing",
                    "restore it from a copy or delete the export and run phase 01 again",
                )
                continue
            actual = export_format.sha256_file(f)
            if actual != sh[sha_key]:
                bad_shards += 1
                r.issue(
                    sh[key],
                    f"sha256 {actual[:12]}… does not match the manifest's {sh[sha_key][:12]}… "
                    "(corrupted or truncated)",
                    "do not load this export; run phase 01 into a new export_id",
                )
                continue
            try:
                meta = pq.ParquetFile(f).metadata
            except Exception as e:  # noqa: BLE001
                bad_shards += 1
                r.issue(sh[key], f"not readable as Parquet: {e}", "run phase 01 into a new export_id")
                continue
            expected = sh["rows"] if key == "chunks_file" else sh["documents"]
            if meta.num_rows != expected:
                bad_shards += 1
                r.issue(
                    sh[key],
                    f"{meta.num_rows} rows, manifest says {expected}",
                    "run phase 01 into a new export_id",
                )
    named = {sh[k] for sh in m["shards"] for k in ("chunks_file", "documents_file")}
    strays = [p.name for p in path.glob("*.parquet") if p.name not in named]
    r.check(
        "shard checksums and row counts",
        bad_shards == 0,
        f"{len(m['shards'])} shard pair(s); {bad_shards} bad"
        + (f"; stray files ignored: {strays}" if strays else ""),
    )
    if bad_shards:
        return r

    rows_total = sum(sh["rows"] for sh in m["shards"])
    docs_total = sum(sh["documents"] for sh in m["shards"])
    r.check(
        "manifest totals",
        rows_total == m["total_chunks"] and docs_total == m["total_documents"],
        f"chunks {rows_total} (manifest {m['total_chunks']}), documents {docs_total} (manifest {m['total_documents']})",
    )
    refused_docs = len(m.get("refused_documents", []))
    if m.get("source_total_count") is not None:
        r.check(
            "documents vs source total_count at export",
            docs_total + refused_docs == m["source_total_count"],
            f"{docs_total} exported"
            + (f" + {refused_docs} refused (listed)" if refused_docs else "")
            + f", source reported {m['source_total_count']}",
        )

    # chunks: ids, texts, vectors, metadata -- each decided as phase 03 will
    policy = policy or records.Policy()
    main_dim = export_format.main_dimension(exp)
    ids = records.IdIndex.of_export(exp)
    tally = records.Tally(max_listed=r.max_issues)
    missing = nonfinite = zeros = 0
    dims: dict[int, int] = {}
    norms = []
    doc_chunks: dict[str, int] = {}
    pos = 0
    for sh in m["shards"]:
        for batch in export_format.read_batches(
            path / sh["chunks_file"],
            batch_size=8192,
            columns=[
                "chunk_id",
                "document_id",
                "text",
                "metadata_json",
                "relationships_json",
                "node_extra_json",
                "start_char_idx",
                "end_char_idx",
                "embedding",
            ],
        ):
            rows = batch.drop_columns(["embedding"]).to_pylist()
            emb = batch.column("embedding")
            problems = records.vector_problems(emb, main_dim or 0)
            for i, row in enumerate(rows):
                doc_chunks[row["document_id"]] = doc_chunks.get(row["document_id"], 0) + 1
                d = records.decide(row, pos + i, problems[i], ids, policy)
                conversions = load.to_chroma_metadata(row)[1] if d.action == "load" else []
                tally.add(row, d, conversions)
                p = problems[i] or ""
                missing += p == "missing"
                nonfinite += "NaN" in p
                zeros += "zeros" in p
            pos += len(rows)
            valid = emb.is_valid().to_numpy(zero_copy_only=False)
            if valid.any():
                lens = np.asarray((emb if valid.all() else emb.filter(emb.is_valid())).value_lengths())
                for dd in np.unique(lens):
                    dims[int(dd)] = dims.get(int(dd), 0) + int((lens == dd).sum())
            ok = [j for j, p in enumerate(problems) if p is None]
            if ok:
                mat = records.vector_matrix(emb, main_dim, ok)
                norms.append(np.sqrt(np.einsum("ij,ij->i", mat, mat)))
    dup = tally.classes.get("chunk id used by another document", 0)
    r.check(
        "chunk ids",
        True,
        f"{len(ids.positions)} id(s) used by more than one chunk ({dup} later use(s): "
        f"duplicate_chunk_ids: {policy.duplicate_chunk_ids})"
        if ids.positions
        else "every chunk id unique",
    )
    r.check(
        "texts",
        True,
        f"{tally.classes.get('empty text', 0)} empty or whitespace-only (empty_texts: {policy.empty_texts}), "
        f"{tally.classes.get('NUL in text', 0)} with a NUL character; all listed",
    )
    if len(dims) > 1:
        for dd, n in dims.items():
            if dd != main_dim:
                r.issue(
                    f"{n} chunk(s)",
                    f"dimension {dd}, most vectors have {main_dim}",
                    "vectors from another model were mixed in: run phase 01 with reembed_bad_vectors: true",
                )
    # a manifest naming one dimension (not the list of a mixed export) is what phase 03 creates the collection
    # with: most vectors must have it
    most = max(dims, key=dims.get) if dims else None
    if isinstance(m.get("embedding_dimension"), int) and most and m["embedding_dimension"] != most:
        r.check(
            "manifest dimension",
            False,
            f"manifest says {m['embedding_dimension']}, most vectors have {most} ({dims[most]} of "
            f"{sum(dims.values())}): the manifest was edited or the vectors come from another model; "
            "run phase 01 into a new export_id",
        )
    bad = sum(n for cls, n in tally.classes.items() if cls.startswith("vector "))
    r.check(
        "vectors loadable",
        True,
        f"{nonfinite} with NaN/Infinity, {zeros} all zeros, "
        f"{sum(n for dd, n in dims.items() if dd != main_dim)} of another dimension, {missing} missing: "
        + (
            (
                "none"
                if not m.get("replaced_vectors")
                else f"none now; {m.get('replaced_vectors_count', len(m['replaced_vectors']))} served vector(s) were "
                "replaced by re-embedding (listed)"
            )
            if not bad
            else f"{bad} refused at load (listed); phase 01 re-embeds them with reembed_bad_vectors: true"
        ),
    )
    r.check(
        "every chunk has a vector",
        missing == 0 or not expect_vectors,
        f"{missing} chunk(s) without a vector" + (" (run the re-embedding step)" if missing else ""),
    )
    if norms:
        allnorm = np.concatenate(norms)
        unit = bool(np.allclose(allnorm, 1.0, atol=1e-3))
        r.norms = {
            "min": float(allnorm.min()),
            "mean": float(allnorm.mean()),
            "max": float(allnorm.max()),
            "unit": unit,
        }
        r.check(
            "vector norms",
            True,
            f"min {allnorm.min():.4f}, mean {allnorm.mean():.4f}, max {allnorm.max():.4f}"
            + (" (unit vectors)" if unit else " (not unit: cosine space normalises them)"),
        )
    r.metadata = tally.metadata_rows()
    r.odd = list(tally.listed)
    export_odd, chunkless = records.export_listing(m, exp.iter_documents(), 2 * r.max_issues)
    r.odd.extend(export_odd)
    r.reconciliation = records.reconciliation(m, tally, chunkless, forecast=True)

    # documents agree with chunks
    doc_mismatch = 0
    listed = set()
    for d in exp.iter_documents():
        listed.add(d["document_id"])
        if doc_chunks.get(d["document_id"], 0) != d["chunk_count"]:
            doc_mismatch += 1
            r.issue(
                f"document {d['document_id']}",
                f"{doc_chunks.get(d['document_id'], 0)} chunks exported, {d['chunk_count']} listed",
                "run phase 01 into a new export_id",
            )
    for doc_id, n in doc_chunks.items():  # chunks of a document the export does not list
        if doc_id not in listed:
            doc_mismatch += 1
            r.issue(
                f"document {doc_id}",
                f"{n} chunks exported, the document is not listed",
                "run phase 01 into a new export_id",
            )
    r.check(
        "chunks per document", doc_mismatch == 0, f"{doc_mismatch} document(s) with a chunk count mismatch"
    )

    if source is not None:
        _compare_with_source(r, exp, source, sample, seed)
    return r


def reservoir_sample(items, k: int, seed: int) -> list:
    """``k`` items drawn uniformly without replacement from an iterable of unknown length, in one pass and
    bounded memory (Algorithm R); the same seed draws the same items."""
    rng = random.Random(seed)
    picked: list = []
    for n, item in enumerate(items, start=1):
        if len(picked) < k:
            picked.append(item)
        else:
            j = rng.randrange(n)
            if j < k:
                picked[j] = item
    return picked


def sample_rows(exp, k: int, seed: int) -> list[dict]:
    """``reservoir_sample`` of the export's chunk rows, drawn over their positions (the same seeded draw as over
    the rows themselves), then only the rows drawn read whole: not every chunk's vector turned into Python
    floats to keep fifty (at 100k chunks x 1536 that was a quarter of phase 01's verification)."""
    total = sum(b.num_rows for b in exp.iter_chunk_batches(columns=["chunk_id"], batch_size=65536))
    slots = reservoir_sample(range(total), k, seed)
    want = sorted(set(slots))
    got: dict[int, dict] = {}
    start = 0
    for batch in exp.iter_chunk_batches():
        end = start + batch.num_rows
        lo, hi = bisect.bisect_left(want, start), bisect.bisect_left(want, end)
        if hi > lo:
            local = [p - start for p in want[lo:hi]]
            got.update(zip(want[lo:hi], batch.take(local).to_pylist(), strict=True))
        start = end
    return [got[p] for p in slots]


def _compare_with_source(r: Report, exp, src, sample: int, seed: int):
    """Source count now, and a random sample of chunks re-fetched and compared field by field."""
    from .extract import fetch_chunks
    from .source import document_count

    m = exp.manifest
    now = document_count(src, m["index_id"])
    had = m["total_documents"] + len(m.get("refused_documents", []))
    r.check(
        "documents vs source now",
        now == had,
        f"source has {now} now, export has {had}"
        + ("" if now == had else " (the source changed since: phase 07's delta sync catches up)"),
    )
    picked = sample_rows(exp, sample, seed)
    by_doc: dict[str, list[dict]] = {}
    for row in picked:
        by_doc.setdefault(row["document_id"], []).append(row)
    mismatches = 0
    held = {d["document_id"]: d["chunk_count"] for d in exp.iter_documents() if d["document_id"] in by_doc}
    refused_in = {}
    for x in m.get("refused", []):
        if x.get("chunk_id") is not None:
            refused_in[x["document_id"]] = refused_in.get(x["document_id"], 0) + 1
    for doc_id, rows in by_doc.items():
        nodes = fetch_chunks(src, m["index_id"], doc_id)
        if nodes is not None and len(nodes) != held.get(doc_id, 0) + refused_in.get(doc_id, 0):
            mismatches += 1
            r.issue(
                f"document {doc_id}",
                f"the source serves {len(nodes)} chunk(s), the export holds {held.get(doc_id, 0)}"
                f" (+{refused_in.get(doc_id, 0)} refused)",
                "the source changed or a chunk was missed: export again (phase 01 into a new export_id)",
            )
        live: dict = {}  # chunk id -> {seq: row} (a source may serve one id twice in a document)
        for k, x in enumerate(nodes or []):
            row_now = export_format.node_to_row(doc_id, k, x)
            live.setdefault(row_now["chunk_id"], {})[k] = row_now
        for row in rows:
            where = f"chunk {row['chunk_id']} of document {doc_id}"
            at = live.get(row["chunk_id"])
            cur = None if at is None else at.get(row["seq"], next(iter(at.values())))
            if cur is None:
                mismatches += 1
                r.issue(
                    where,
                    "no longer at the source",
                    "the source changed since the export: run phase 07's delta sync",
                )
                continue
            for f in ("text", "metadata_json", "relationships_json", "start_char_idx", "end_char_idx", "seq"):
                if cur[f] != row[f]:
                    mismatches += 1
                    r.issue(
                        where,
                        f"field {f} differs from the source",
                        "re-export this document (phase 01 resumes)",
                    )
            # a vector the export computed (missing or replaced as unusable) is not the source's to compare
            if (
                cur["embedding"] is not None
                and row["embedding"] is not None
                and row.get("embedding_source") == "cloud"
            ):
                a = np.asarray(cur["embedding"], dtype=np.float32)
                b = np.asarray(row["embedding"], dtype=np.float32)
                if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                    mismatches += 1
                    r.issue(where, "vector differs from the source's", "re-export")
    r.check(
        "sample re-fetched from source",
        mismatches == 0,
        f"{len(picked)} chunk(s) from {len(by_doc)} document(s) compared field by field, and each document's "
        f"chunk count; {mismatches} difference(s)",
    )


def ensure_verified(
    export_dir: str | os.PathLike, h01: dict | None, policy: records.Policy | None = None
) -> dict:
    """An export that phase 01 verified (same folder, same manifest sha256) is trusted; any other -- given
    through ``export_dir``, changed since, or from another run -- is verified again here, offline, and
    refused if a check fails. Returns how it was established."""
    exp = export_format.open_export(export_dir)
    sha = exp.manifest_sha256
    same_policy = policy is None or (h01 or {}).get("policy") in (None, vars(policy))
    if h01 and h01.get("export_dir") == str(exp.path) and h01.get("manifest_sha256") == sha and same_policy:
        return {"export": str(exp.path), "verified by": "phase 01 (same manifest sha256)", "sha256": sha}
    # the policy decides what phase 03 will do with odd records, never whether the export is sound: no check
    # that can fail depends on it
    report = verify_export(exp.path)
    if not report.ok:
        failed = "; ".join(f"{c['check']}: {c['detail']}" for c in report.checks if not c["ok"])
        raise ExportError(
            f"{exp.path} did not pass verification ({failed}). It was not verified by phase 01 in this "
            "layout; run `python -m runbook verify-export <folder>` for the details, or export again with phase 01"
        )
    return {"export": str(exp.path), "verified by": "this phase (verify_export, offline)", "sha256": sha}
