"""Verify an export on its own: checksums, counts, vectors, ids, texts, metadata, and a re-fetch sample.

Every problem names its place (shard, row, chunk id) and what to do. ``python -m runbook verify-export
<folder>`` runs it without a notebook.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from . import export_format
from .export_format import ExportError


@dataclass
class Report:
    checks: list[dict] = field(default_factory=list)
    issues: list[dict] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)
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
        return pd.DataFrame(self.metadata, columns=["key", "kind", "chunks", "conversion at load"])

    def to_string(self) -> str:
        out = self.checks_frame().to_string(index=False)
        if self.issues:
            out += "\n\n" + self.issues_frame().to_string(index=False)
        return out


def classify_value(key: str, v) -> str | None:
    """Why Chroma cannot store this metadata value as it is (None if it can)."""
    if key.startswith(("#", "$")) or key == "chroma:document":
        return "reserved key"
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "nested object"
    if isinstance(v, list):
        if not v:
            return "empty list"
        kinds = {type(x) for x in v}
        if len(kinds) > 1 or not kinds <= {str, int, float, bool}:
            return "list of mixed or nested values"
    return None


CONVERSION = {
    "null": "dropped from Chroma metadata (kept in _node_content; listed)",
    "nested object": "stored as a JSON string with the prefix 'json:' (kept exactly in _node_content)",
    "empty list": "stored as a JSON string with the prefix 'json:'",
    "list of mixed or nested values": "stored as a JSON string with the prefix 'json:'",
    "reserved key": "renamed with the prefix 'meta_'",
}


def verify_export(
    export_dir: str | os.PathLike, source=None, sample: int = 50, seed: int = 0, expect_vectors: bool = True
) -> Report:
    """Check an export folder; with ``source`` (a ``runbook.source.Source``) also compare with the cloud."""
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
    if m.get("source_total_count") is not None:
        r.check(
            "documents vs source total_count at export",
            docs_total == m["source_total_count"],
            f"{docs_total} exported, source reported {m['source_total_count']}",
        )

    # chunks: ids, texts, vectors, metadata
    seen: set[str] = set()
    dup = empty = nan_rows = missing = 0
    dims: dict[int, int] = {}
    norms = []
    meta_kinds: dict[tuple[str, str], int] = {}
    doc_chunks: dict[str, int] = {}
    for sh in m["shards"]:
        pf = pq.ParquetFile(path / sh["chunks_file"])
        row0 = 0
        for batch in pf.iter_batches(
            batch_size=8192, columns=["chunk_id", "document_id", "text", "metadata_json", "embedding"]
        ):
            ids = batch.column("chunk_id").to_pylist()
            texts = batch.column("text").to_pylist()
            docs = batch.column("document_id").to_pylist()
            metas = batch.column("metadata_json").to_pylist()
            emb = batch.column("embedding")
            for i, cid in enumerate(ids):
                where = f"{sh['chunks_file']} row {row0 + i} (chunk {cid})"
                if cid in seen:
                    dup += 1
                    r.issue(
                        where,
                        "duplicate chunk id",
                        "the source served a chunk twice: re-export; if it persists, report it",
                    )
                seen.add(cid)
                doc_chunks[docs[i]] = doc_chunks.get(docs[i], 0) + 1
                if not (texts[i] or "").strip():
                    empty += 1
                    r.issue(
                        where,
                        "empty text",
                        "check the source document; Chroma stores it, but it cannot be found by text",
                    )
                for k, v in json.loads(metas[i]).items():
                    kind = classify_value(k, v)
                    if kind:
                        meta_kinds[(k, kind)] = meta_kinds.get((k, kind), 0) + 1
            valid = emb.is_valid().to_numpy(zero_copy_only=False)
            missing += int((~valid).sum())
            if valid.any():
                lists = emb.filter(emb.is_valid())
                lens = np.asarray(lists.value_lengths())
                for d in np.unique(lens):
                    dims[int(d)] = dims.get(int(d), 0) + int((lens == d).sum())
                if len(np.unique(lens)) == 1:
                    vecs = np.asarray(lists.flatten(), dtype=np.float32).reshape(len(lens), int(lens[0]))
                    finite = np.isfinite(vecs).all(axis=1)
                    valid_idx = np.nonzero(valid)[0]
                    for j in np.nonzero(~finite)[0]:
                        nan_rows += 1
                        row = int(valid_idx[j])
                        r.issue(
                            f"{sh['chunks_file']} row {row0 + row} (chunk {ids[row]})",
                            "vector has NaN or inf",
                            "re-embed this chunk (reembed: true) or re-export",
                        )
                    norms.append(np.linalg.norm(vecs[finite], axis=1))
            row0 += len(ids)
    r.check("unique chunk ids", dup == 0, f"{len(seen)} ids, {dup} duplicate(s)")
    r.check("no empty texts", empty == 0, f"{empty} empty chunk text(s)")
    main_dim = max(dims, key=dims.get) if dims else None
    if len(dims) > 1:
        for d, n in dims.items():
            if d != main_dim:
                r.issue(
                    f"{n} chunk(s)",
                    f"dimension {d}, most vectors have {main_dim}",
                    "vectors from another model were mixed in: re-embed with reembed: true and one model",
                )
    r.check("one vector dimension", len(dims) <= 1, f"dimensions found: {dims or 'none'}")
    if m.get("embedding_dimension") and main_dim and m["embedding_dimension"] != main_dim:
        r.check(
            "manifest dimension", False, f"manifest says {m['embedding_dimension']}, vectors have {main_dim}"
        )
    r.check("no NaN/inf in vectors", nan_rows == 0, f"{nan_rows} vector(s) with NaN/inf")
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
    for (k, kind), n in sorted(meta_kinds.items()):
        r.metadata.append({"key": k, "kind": kind, "chunks": n, "conversion at load": CONVERSION[kind]})

    # documents agree with chunks
    doc_mismatch = 0
    for d in exp.iter_documents():
        if doc_chunks.get(d["document_id"], 0) != d["chunk_count"]:
            doc_mismatch += 1
            r.issue(
                f"document {d['document_id']}",
                f"{doc_chunks.get(d['document_id'], 0)} chunks exported, {d['chunk_count']} listed",
                "run phase 01 into a new export_id",
            )
    r.check(
        "chunks per document", doc_mismatch == 0, f"{doc_mismatch} document(s) with a chunk count mismatch"
    )

    if source is not None:
        _compare_with_source(r, exp, source, sample, seed)
    return r


def _compare_with_source(r: Report, exp, src, sample: int, seed: int):
    """Source count now, and a random sample of chunks re-fetched and compared field by field."""
    from .extract import _fetch_chunks
    from .source import document_count

    m = exp.manifest
    now = document_count(src, m["index_id"])
    r.check(
        "documents vs source now",
        now == m["total_documents"],
        f"source has {now} now, export has {m['total_documents']}"
        + (
            ""
            if now == m["total_documents"]
            else " (the source changed since: phase 07's delta sync catches up)"
        ),
    )
    rng = random.Random(seed)
    picked: list[dict] = []
    n = 0
    for row in exp.iter_chunks():  # reservoir sample, one pass, bounded memory
        n += 1
        if len(picked) < sample:
            picked.append(row)
        else:
            j = rng.randrange(n)
            if j < sample:
                picked[j] = row
    by_doc: dict[str, list[dict]] = {}
    for row in picked:
        by_doc.setdefault(row["document_id"], []).append(row)
    mismatches = 0
    for doc_id, rows in by_doc.items():
        nodes = _fetch_chunks(src, m["index_id"], doc_id)
        live = {x["id_"]: export_format.node_to_row(doc_id, k, x) for k, x in enumerate(nodes or [])}
        for row in rows:
            where = f"chunk {row['chunk_id']} of document {doc_id}"
            cur = live.get(row["chunk_id"])
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
            if cur["embedding"] is not None and row["embedding"] is not None:
                if not np.allclose(cur["embedding"], row["embedding"], atol=1e-6):
                    mismatches += 1
                    r.issue(where, "vector differs from the source's", "re-export")
    r.check(
        "sample re-fetched from source",
        mismatches == 0,
        f"{len(picked)} chunk(s) from {len(by_doc)} document(s) compared; {mismatches} difference(s)",
    )
