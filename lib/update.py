"""Phase 07: keep the local index current.

- Local documents: a folder of txt/md/pdf files is chunked with the cloud pipeline's own splitter settings
  (from the export's snapshot), embedded with the collection's model, and upserted by a stable document
  id. A changed file replaces all its old chunks (Chroma's upsert would merge metadata and leave orphans),
  a removed file (or one listed in a deletions file) is deleted, an unchanged one is left alone.
- Delta sync from the cloud (the shadow window before cutover): a new export generation is seeded with the
  last export's shards and *resumed* against the source, so only new or changed documents are fetched and
  deleted ones dropped; the collection then gets exactly the difference, and the two id sets are reconciled.
- Safety: a snapshot of ``chroma_db/`` before any change (restorable with one parameter); dry runs plan only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import atomic, embeddings, export_format, extract, load, reembed
from .paths import Layout

ORIGIN_KEY = "runbook_origin"  # "local_folder" on chunks this phase adds from files
HASH_KEY = "runbook_source_sha256"


# ---------------------------------------------------------------- snapshots
def snapshot(layout: Layout, label: str = "") -> Path:
    """Copy ``chroma_db/`` (take it while no writer has the path open) to ``backup/chroma_snapshots/``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    dest = layout.backup / "chroma_snapshots" / (stamp + (f"-{label}" if label else ""))
    tmp = dest.with_name(dest.name + ".partial")
    shutil.copytree(layout.chroma_db, tmp)
    os.replace(tmp, dest)  # a snapshot is either complete or absent
    return dest


def list_snapshots(layout: Layout) -> list[str]:
    d = layout.backup / "chroma_snapshots"
    return (
        sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.endswith(".partial"))
        if d.exists()
        else []
    )


def restore(layout: Layout, name: str) -> Path:
    """Put a snapshot back as ``chroma_db/``; the current one is kept aside, never deleted."""
    src = layout.backup / "chroma_snapshots" / name
    if not src.is_dir():
        raise FileNotFoundError(f"no snapshot {name!r}; snapshots: {list_snapshots(layout)}")
    aside = layout.base / f"chroma_db.replaced-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
    tmp = layout.base / "chroma_db.restoring"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    os.replace(layout.chroma_db, aside)
    os.replace(tmp, layout.chroma_db)
    return aside


class paused_reference_service:
    """Embedded Chroma has one writer per path: the demo's reference service (a reader holding the path)
    is stopped around the update and restarted after. In production use chroma_mode http (``chroma run``)."""

    def __init__(self, layout: Layout, restart_command: str = "", health_url: str = ""):
        from . import service_ctl

        self.pidfile = layout.base / "service" / "service.pid"
        self.was_running = self.pidfile.exists()
        self.restart_command, self.health_url = restart_command, health_url
        self._ctl = service_ctl

    def __enter__(self):
        if self.was_running:
            self._ctl.stop(self.pidfile)
        return self

    def __exit__(self, *exc):
        if self.was_running and self.restart_command:
            from .cutover import Cutover

            co = Cutover(Path(), self.restart_command, self.health_url, health_arm_key="")
            co.restart()
            co.wait_health(expected_local=True)
        return False


# ---------------------------------------------------------------- rows and applying them
def splitter_settings(pipeline: dict) -> tuple[int, int]:
    tc = (pipeline or {}).get("transform_config") or {}
    if tc.get("mode") == "advanced":
        cc = tc.get("chunking_config") or {}
        return int(cc.get("chunk_size") or 1024), int(cc.get("chunk_overlap") or 200)
    return int(tc.get("chunk_size") or 1024), int(tc.get("chunk_overlap") or 200)


def rows_for_document(doc_id: str, text: str, metadata: dict, chunk_size: int, overlap: int) -> list[dict]:
    """Chunk a document like the cloud pipeline and return export rows (no vectors yet)."""
    from llama_index.core.node_parser import SentenceSplitter

    pieces = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=overlap).split_text(text)
    h = hashlib.sha256(text.encode("utf-8")).hexdigest()
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc_id}#{h}#{k}")) for k in range(len(pieces))]
    rows, pos = [], 0
    for k, piece in enumerate(pieces):
        start = text.find(piece[:40], max(0, pos - overlap * 8))
        start = start if start >= 0 else None
        if start is not None:
            pos = start + 1
        rels = {
            "1": {
                "node_id": doc_id,
                "node_type": "4",
                "metadata": {},
                "hash": h,
                "class_name": "RelatedNodeInfo",
            }
        }
        if k:
            rels["2"] = {
                "node_id": ids[k - 1],
                "node_type": "1",
                "metadata": {},
                "hash": None,
                "class_name": "RelatedNodeInfo",
            }
        if k + 1 < len(pieces):
            rels["3"] = {
                "node_id": ids[k + 1],
                "node_type": "1",
                "metadata": {},
                "hash": None,
                "class_name": "RelatedNodeInfo",
            }
        node = {
            "id_": ids[k],
            "text": piece,
            "extra_info": {**metadata, "document_id": doc_id},
            "relationships": rels,
            "start_char_idx": start,
            "end_char_idx": start + len(piece) if start is not None else None,
            "excluded_embed_metadata_keys": [HASH_KEY, ORIGIN_KEY, "document_id", "file_path"],
            "excluded_llm_metadata_keys": [HASH_KEY, ORIGIN_KEY, "document_id", "file_path"],
        }
        rows.append(export_format.node_to_row(doc_id, k, node))
    return rows


def embed_rows(rows: list[dict], spec: embeddings.ModelSpec, cache_path) -> None:
    cache = embeddings.EmbeddingCache(cache_path)
    try:
        need = [r for r in rows if r["embedding"] is None]
        vecs, _ = embeddings.embed_texts([export_format.embed_text(r) for r in need], spec, cache)
        for r, v in zip(need, vecs, strict=True):
            r["embedding"] = v.tolist()
            r["embedding_source"] = "computed"
    finally:
        cache.close()


def _delete_doc(col, doc_id: str) -> int:
    ids = col.get(where={"ref_doc_id": doc_id}, include=[])["ids"]
    for i in range(0, len(ids), 5000):
        col.delete(ids=ids[i : i + 5000])
    return len(ids)


def _add_rows(client, col, rows: list[dict]) -> int:
    step = int(client.get_max_batch_size())
    for i in range(0, len(rows), step):
        ids, docs, embs, metas, _ = load._prepare(rows[i : i + step])
        col.add(ids=ids, documents=docs, embeddings=embs, metadatas=metas)
    return len(rows)


# ---------------------------------------------------------------- local documents
@dataclass
class Plan:
    rows: list[dict] = field(default_factory=list)  # one per document: action, chunks
    new_rows: dict = field(default_factory=dict)  # doc id -> export rows to add

    def table(self) -> list[dict]:
        return self.rows

    def counts(self) -> dict:
        out: dict = {}
        for r in self.rows:
            a = out.setdefault(r["action"], {"documents": 0, "chunks added": 0, "chunks removed": 0})
            a["documents"] += 1
            a["chunks added"] += r.get("chunks added", 0)
            a["chunks removed"] += r.get("chunks removed", 0)
        return out


def read_folder(folder: Path) -> dict[str, tuple[str, dict]]:
    """doc id -> (text, metadata) for every txt/md/pdf file (Korean names pass through)."""
    from llama_index.core import SimpleDirectoryReader

    if not folder.exists():
        return {}
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in (".txt", ".md", ".pdf") and p.is_file()
    )
    out = {}
    for f in files:
        docs = SimpleDirectoryReader(input_files=[str(f)]).load_data()
        text = "\n\n".join(d.text for d in docs)
        rel = f.relative_to(folder).as_posix()
        meta = {
            "file_name": f.name,
            "file_path": rel,
            ORIGIN_KEY: "local_folder",
            HASH_KEY: hashlib.sha256(f.read_bytes()).hexdigest(),
        }
        out[f"local:{rel}"] = (text, meta)
    return out


def plan_local(col, folder: Path, deletions: list[str], chunk_size: int, overlap: int) -> Plan:
    plan = Plan()
    present = read_folder(folder)
    existing: dict[str, tuple[str, int]] = {}
    got = col.get(where={ORIGIN_KEY: "local_folder"}, include=["metadatas"])
    for m in got["metadatas"]:
        d = m.get("ref_doc_id")
        h, n = existing.get(d, (m.get(HASH_KEY), 0))
        existing[d] = (h, n + 1)
    for doc_id, (text, meta) in present.items():
        if doc_id in deletions:
            continue
        old = existing.get(doc_id)
        if old and old[0] == meta[HASH_KEY]:
            plan.rows.append({"document": doc_id, "action": "unchanged", "chunks": old[1]})
            continue
        rows = rows_for_document(doc_id, text, meta, chunk_size, overlap)
        plan.new_rows[doc_id] = rows
        plan.rows.append(
            {
                "document": doc_id,
                "action": "replaced" if old else "added",
                "chunks added": len(rows),
                "chunks removed": old[1] if old else 0,
            }
        )
    for doc_id, (_, n) in existing.items():
        if doc_id not in present or doc_id in deletions:
            plan.rows.append({"document": doc_id, "action": "deleted", "chunks removed": n})
    return plan


def apply_local(client, col, plan: Plan, spec: embeddings.ModelSpec, cache_path) -> dict:
    for r in plan.rows:
        if r["action"] in ("replaced", "deleted"):
            _delete_doc(col, r["document"])  # all old chunks: no orphans
        if r["action"] in ("added", "replaced"):
            rows = plan.new_rows[r["document"]]
            embed_rows(rows, spec, cache_path)
            _add_rows(client, col, rows)
    return plan.counts()


# ---------------------------------------------------------------- delta sync from the cloud
def seed_generation(prev_export: Path, exports_dir: Path, pipeline_id: str) -> Path:
    """A new export folder whose committed shards are the previous export's (hard links), as an export in
    flight: resuming it against the source fetches only what changed."""
    prev = export_format.open_export(prev_export)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = exports_dir / f"{stamp}-delta-of-{prev_export.name}"[:120]
    dest.mkdir(parents=True)
    for sh in prev.shards:
        for key in ("chunks_file", "documents_file"):
            try:
                os.link(prev_export / sh[key], dest / sh[key])
            except OSError:
                shutil.copy2(prev_export / sh[key], dest / sh[key])
    state = {
        k: v
        for k, v in prev.manifest.items()
        if k
        not in (
            "status",
            "exported_at",
            "embeddings",
            "embedding_dimension",
            "total_documents",
            "total_chunks",
            "source_total_count",
        )
    }
    state.update(
        export_id=dest.name,
        previous_export=prev_export.name,
        index_id=pipeline_id,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    atomic.write_json(dest / "manifest.partial.json", state)
    return dest


def _doc_hashes(exp) -> dict[str, str]:
    return {d["document_id"]: d["content_sha256"] for d in exp.iter_documents()}


def delta_sync(
    src,
    client,
    col,
    layout: Layout,
    prev_export: Path,
    spec: embeddings.ModelSpec,
    cache_path,
    dry_run: bool = False,
    index_id: str = "",
    index_name: str = "",
    project_name: str = "Default",
) -> dict:
    prev = export_format.open_export(prev_export)
    if dry_run:
        from .extract import _list_pages

        now = {}
        for docs, _ in _list_pages(src, prev.manifest["index_id"], 100):
            for d in docs:
                now[d["id"]] = export_format.document_hash(d["text"], d.get("metadata") or {})
        old = _doc_hashes(prev)
        return {
            "plan": {
                "added": sorted(set(now) - set(old)),
                "deleted": sorted(set(old) - set(now)),
                "changed": sorted(k for k in set(now) & set(old) if now[k] != old[k]),
            }
        }
    gen = seed_generation(prev_export, layout.exports, prev.manifest["index_id"])
    res = extract.export_index(
        src, layout.exports, index_id=prev.manifest["index_id"], export_id=gen.name, progress=False
    )
    reembed.apply(res.path, spec, cache_path, progress=False)
    new = export_format.open_export(res.path)
    old_h, new_h = _doc_hashes(prev), _doc_hashes(new)
    added = sorted(set(new_h) - set(old_h))
    deleted = sorted(set(old_h) - set(new_h))
    changed = sorted(d for d in set(new_h) & set(old_h) if new_h[d] != old_h[d])
    removed_chunks = sum(_delete_doc(col, d) for d in deleted + changed)
    todo = set(added + changed)
    rows = [r for r in new.iter_chunks() if r["document_id"] in todo]
    _add_rows(client, col, rows)
    meta = dict(col.metadata or {})
    meta.update(export_id=new.manifest["export_id"], export_manifest_sha256=new.manifest_sha256)
    col.modify(metadata=meta)
    recon = reconcile(col, new)
    return {
        "export": str(res.path),
        "fetched documents": res.fetched_documents,
        "added": added,
        "changed": changed,
        "deleted": deleted,
        "chunks added": len(rows),
        "chunks removed": removed_chunks,
        "reconciliation": recon,
    }


def reconcile(col, exp) -> dict:
    """The collection's cloud-origin ids against the export's: counts equal, nothing on one side only."""
    export_ids = {r["chunk_id"] for b in exp.iter_chunk_batches(columns=["chunk_id"]) for r in b.to_pylist()}
    coll_ids = set()
    got = col.get(include=["metadatas"])
    for i, m in zip(got["ids"], got["metadatas"], strict=True):
        if (m or {}).get(ORIGIN_KEY) != "local_folder":
            coll_ids.add(i)
    only_c, only_e = sorted(coll_ids - export_ids), sorted(export_ids - coll_ids)
    return {
        "collection (cloud-origin)": len(coll_ids),
        "export": len(export_ids),
        "only in collection": only_c[:20],
        "only in export": only_e[:20],
        "clean": not only_c and not only_e,
    }
