"""Phase 07: keep the local index current, without touching the collection in service.

- Local documents: a folder of txt/md/pdf files is chunked with the cloud pipeline's own splitter settings
  (from the export's snapshot), embedded with the collection's model, and written by a stable document
  id. A changed file replaces all its old chunks (Chroma's upsert would merge metadata and leave orphans),
  a removed file (or one listed in a deletions file) is deleted, an unchanged one is left alone.
- Delta sync from the cloud (the shadow window before cutover): a new export generation is seeded with the
  last export's shards and *resumed* against the source, so only new or changed documents are fetched and
  deleted ones dropped; the collection then gets exactly the difference, and the two id sets are reconciled.
- Where the changes go. Embedded Chroma (one directory, possibly held open by the serving process): never
  into the collection this phase starts from (the verified one, which the service reads or will read) but
  into a **new collection version** ``<name>__u<UTC time>`` in the same Chroma, built as a copy of it (same
  HNSW configuration, provenance saying what it was built from) and then changed. A small state file
  (``state/update-<collection>.json``) makes a killed build finish the same version on the next run. The
  version is verified here and handed to phases 04-06 through the 07 hand-off
  (``handoff.verified_collection``). A Chroma server (``chroma_mode: http``) is written in place, and the
  page says that the live collection changed and phase 05 must run again.
- Safety: a snapshot of ``chroma_db/`` before a build (embedded, only when something will change), restorable
  with one parameter; dry runs plan only and write nothing under the base path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from . import (
    atomic,
    chroma_target,
    embeddings,
    export_format,
    extract,
    handoff,
    load,
    processes,
    reembed,
    runlog,
    sparse_sync,
)
from .paths import Layout, resolve

PHASE = "07_update_vectors"
ORIGIN_KEY = "runbook_origin"  # "local_folder" on chunks this phase adds from files
HASH_KEY = "runbook_source_sha256"
DOC_KEY = "ref_doc_id"  # metadata key naming a chunk's document (cloud and local chunks alike)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------- snapshots
def snapshot(layout: Layout, label: str = "", note: dict | None = None) -> Path:
    """Copy ``chroma_db/`` to ``backup/chroma_snapshots/``, with the sparse indexes beside it (inside the
    snapshot as ``sparse_index/``: both indexes come back together); ``note`` (e.g. the verified collection
    at that moment) is kept beside it as ``<name>.json`` for ``restore``."""
    stamp = _now().strftime("%Y%m%dT%H%M%S%fZ")
    dest = layout.backup / "chroma_snapshots" / (stamp + (f"-{label}" if label else ""))
    tmp = dest.with_name(dest.name + ".partial")
    shutil.copytree(layout.chroma_db, tmp)
    sparse_sync.snapshot_into(layout, tmp)
    if note is not None:
        atomic.write_json(dest.with_name(dest.name + ".json"), note)
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
    """Put a snapshot back as ``chroma_db/`` and its sparse indexes as ``sparse_index/``; the current ones
    are kept aside, never deleted."""
    src = layout.backup / "chroma_snapshots" / name
    if not src.is_dir():
        raise FileNotFoundError(f"no snapshot {name!r}; snapshots: {list_snapshots(layout)}")
    stamp = _now().strftime("%Y%m%dT%H%M%SZ")
    aside = layout.base / f"chroma_db.replaced-{stamp}"
    tmp = layout.base / "chroma_db.restoring"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=lambda d, names: [sparse_sync.DIRNAME] if Path(d) == src else [])
    staged = sparse_sync.stage_restore(layout, src)  # both copies made before either swap
    os.replace(layout.chroma_db, aside)
    os.replace(tmp, layout.chroma_db)
    sparse_sync.finish_restore(layout, staged, layout.base / f"{sparse_sync.DIRNAME}.replaced-{stamp}")
    return aside


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
    ids = col.get(where={DOC_KEY: doc_id}, include=[])["ids"]
    for i in range(0, len(ids), 5000):
        col.delete(ids=ids[i : i + 5000])
    return len(ids)


def _add_rows(client, col, rows: list[dict]) -> int:
    step = int(client.get_max_batch_size())
    for i in range(0, len(rows), step):
        ids, docs, embs, metas, _ = load.prepare_records(rows[i : i + step])
        # Chroma ignores an add of an id it has: a chunk id another document already holds would vanish
        taken = col.get(ids=ids, include=["metadatas"])
        if taken["ids"]:
            held = [
                (cid, (m or {}).get(DOC_KEY)) for cid, m in zip(taken["ids"], taken["metadatas"], strict=True)
            ]
            raise load.LoadError(
                f"chunk id(s) already in collection {col.name}, held by other documents: {held[:5]}"
                f"{' …' if len(held) > 5 else ''}. Nothing of this batch was added; phase 07 does not qualify "
                "duplicate ids: rebuild from a new export with phases 01-03 (duplicate_chunk_ids: qualify)"
            )
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


def read_folder(folder: Path | None) -> dict[str, tuple[str, dict]]:
    """doc id -> (text, metadata) for every txt/md/pdf file (Korean names pass through)."""
    from llama_index.core import SimpleDirectoryReader

    if folder is None or not Path(folder).exists():
        return {}
    folder = Path(folder)
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


NOT_DELETED = "not deleted: no document indexed from files has this id (cloud documents follow delta sync)"
CHANGES = ("added", "replaced", "deleted")


def plan_local(col, folder: Path | None, deletions: list[str], chunk_size: int, overlap: int) -> Plan:
    """What the folder changes in ``col`` (read only). Without a folder (``None``) only the deletions
    count: the documents indexed from files earlier are left alone."""
    plan = Plan()
    present = read_folder(folder)
    existing: dict[str, tuple[str, int]] = {}
    got = (
        col.get(where={ORIGIN_KEY: "local_folder"}, include=["metadatas"])
        if col is not None
        else {"metadatas": []}
    )
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
        if doc_id in deletions or (folder is not None and doc_id not in present):
            plan.rows.append({"document": doc_id, "action": "deleted", "chunks removed": n})
    for doc_id in dict.fromkeys(deletions):
        if col is not None and doc_id not in existing:  # said, never silently ignored
            plan.rows.append({"document": doc_id, "action": NOT_DELETED})
    return plan


def apply_local(client, col, plan: Plan, spec: embeddings.ModelSpec, cache_path) -> dict:
    """Idempotent: a document is removed whole (no orphans; also what an interrupted run left) and
    written again, so the same plan applied twice gives the same collection."""
    for r in plan.rows:
        if r["action"] in ("added", "replaced", "deleted"):
            _delete_doc(col, r["document"])
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
    stamp = _now().strftime("%Y%m%dT%H%M%SZ")
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
        started_at=_now().isoformat(timespec="seconds"),
    )
    atomic.write_json(dest / "manifest.partial.json", state)
    return dest


def _doc_hashes(exp) -> dict[str, str]:
    return {d["document_id"]: d["content_sha256"] for d in exp.iter_documents()}


def cloud_plan(src, prev_export: Path) -> dict:
    """What the source changed since ``prev_export`` (documents listed, nothing fetched, nothing written)."""
    from .extract import list_pages

    prev = export_format.open_export(prev_export)
    now = {}
    for docs, _ in list_pages(src, prev.manifest["index_id"], 100):
        for d in docs:
            now[d["id"]] = export_format.document_hash(d["text"], d.get("metadata") or {})
    old = _doc_hashes(prev)
    return {
        "added": sorted(set(now) - set(old)),
        "deleted": sorted(set(old) - set(now)),
        "changed": sorted(k for k in set(now) & set(old) if now[k] != old[k]),
    }


def export_generation(
    src, layout: Layout, prev_export: Path, spec, cache_path, generation: str | Path = ""
) -> tuple[Path, int]:
    """(path, documents fetched) of a new export generation seeded with ``prev_export``; ``generation``
    (an unfinished or finished one of an earlier, interrupted run) is resumed or reused instead."""
    prev = export_format.open_export(prev_export)
    gen = Path(generation) if generation else None
    if gen is not None and (gen / "manifest.json").exists():
        return gen, 0
    if gen is None or not (gen / "manifest.partial.json").exists():
        gen = seed_generation(prev_export, layout.exports, prev.manifest["index_id"])
    res = extract.export_index(
        src, layout.exports, index_id=prev.manifest["index_id"], export_id=gen.name, progress=False
    )
    reembed.apply(res.path, spec, cache_path, progress=False)
    return res.path, res.fetched_documents


def _doc_chunk_ids(col, doc_ids: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {d: set() for d in doc_ids}
    for i in range(0, len(doc_ids), 500):
        part = doc_ids[i : i + 500]
        got = col.get(where={DOC_KEY: {"$in": part}}, include=["metadatas"])
        for cid, m in zip(got["ids"], got["metadatas"], strict=True):
            out.setdefault((m or {}).get(DOC_KEY), set()).add(cid)
    return out


def _export_chunk_ids(exp, doc_ids: set[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {d: set() for d in doc_ids}
    for b in exp.iter_chunk_batches(columns=["chunk_id", "document_id"]):
        for r in b.to_pylist():
            if r["document_id"] in doc_ids:
                out[r["document_id"]].add(r["chunk_id"])
    return out


def apply_cloud(client, col, prev_export: Path, new_export: Path, original=None) -> dict:
    """Give ``col`` exactly the difference between two export generations, then reconcile the ids.
    Idempotent: every touched document is removed whole first (also the leftovers of an interrupted run)
    and written again. Chunks removed are counted in ``original`` (the collection ``col`` was built from;
    ``col`` itself when it is changed in place)."""
    prev, new = export_format.open_export(prev_export), export_format.open_export(new_export)
    old_h, new_h = _doc_hashes(prev), _doc_hashes(new)
    added = sorted(set(new_h) - set(old_h))
    deleted = sorted(set(old_h) - set(new_h))
    changed = sorted(d for d in set(new_h) & set(old_h) if new_h[d] != old_h[d])
    removed = sum(len(v) for v in _doc_chunk_ids(original or col, deleted + changed).values())
    for d in deleted + changed + added:
        _delete_doc(col, d)
    todo = set(added + changed)
    rows = [r for r in new.iter_chunks() if r["document_id"] in todo]
    _add_rows(client, col, rows)
    meta = dict(col.metadata or {})
    meta.update(export_id=new.manifest["export_id"], export_manifest_sha256=new.manifest_sha256)
    col.modify(metadata=meta)
    return {
        "export": str(new.path),
        "added": added,
        "changed": changed,
        "deleted": deleted,
        "chunks added": len(rows),
        "chunks removed": removed,
        "reconciliation": reconcile(col, new),
    }


def delta_sync(
    src, client, col, layout: Layout, prev_export: Path, spec, cache_path, dry_run: bool = False
) -> dict:
    """Mirror the source's changes into ``col`` in place (``{"plan": ...}`` only on a dry run). Phase 07
    calls the parts itself (``cloud_plan``, ``export_generation``, ``apply_cloud``) on a new version."""
    if dry_run:
        return {"plan": cloud_plan(src, prev_export)}
    gen, fetched = export_generation(src, layout, Path(prev_export), spec, cache_path)
    return {"fetched documents": fetched, **apply_cloud(client, col, Path(prev_export), gen)}


def reconcile(col, exp, policy=None) -> dict:
    """The collection's cloud-origin ids against the ids the export's records are loaded under (odd records
    decided as phase 03 decides them): counts equal, nothing on one side only."""
    export_ids = load.planned_ids(exp, policy)
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


# ---------------------------------------------------------------- collection versions
VERSION_SEP = "__"


def version_name(start: str, when: dt.datetime | None = None) -> str:
    """``<base name>__u<UTC time>``: the base name is the start's name without its version suffix."""
    stamp = "u" + (when or _now()).strftime("%Y%m%dT%H%M%SZ")
    return chroma_target.collection_name(start.split(VERSION_SEP, 1)[0], stamp, versioned=True)


def _names(client) -> set[str]:
    return {c.name if hasattr(c, "name") else c for c in client.list_collections()}


def fingerprint(col, sample: int = 20) -> dict:
    """Count, a digest of every id and one of a spread sample of whole records (ids, embeddings,
    documents, metadata): equal fingerprints before and after mean the collection was left as it was."""
    import json

    import numpy as np

    ids = sorted(col.get(include=[])["ids"])
    pick = ids[:: max(1, len(ids) // sample)][:sample] if ids else []
    h = hashlib.sha256()
    if pick:
        got = col.get(ids=pick, include=["embeddings", "documents", "metadatas"])
        order = sorted(range(len(got["ids"])), key=lambda k: got["ids"][k])
        for k in order:
            h.update(got["ids"][k].encode())
            h.update(np.asarray(got["embeddings"][k], dtype=np.float32).tobytes())
            h.update(str(got["documents"][k]).encode())
            h.update(json.dumps(got["metadatas"][k], sort_keys=True, default=str).encode())
    return {
        "count": col.count(),
        "ids sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "sample": len(pick),
        "sample sha256": h.hexdigest(),
    }


def build_version(client, original, name: str, state: dict, save=lambda: None):
    """The collection ``name`` as a copy of ``original``: same HNSW configuration, the original's
    provenance plus what it was built from. ``collection.fork`` where Chroma has it (chromadb 1.5.9 local
    raises NotImplementedError), otherwise the records are copied page by page (ids, embeddings,
    documents, metadatas; pages of at most ``get_max_batch_size()``), checkpointed in ``state["copied"]``
    so an interrupted copy resumes. ``original`` is only read."""
    hnsw = {k: v for k, v in chroma_target.current_hnsw(original).items() if v is not None}
    meta = {
        **(original.metadata or {}),
        "built_from": original.name,
        "built_by": PHASE,
        "built_at": state.get("started_at") or _now().isoformat(timespec="seconds"),
    }
    if name not in _names(client):
        state["copied"] = 0  # a recorded checkpoint is void without its collection (e.g. after a restore)
        try:
            col = original.fork(name)
            col.modify(metadata=meta)
            state.update(copy="fork", copied=col.count())
            save()
            return col
        except NotImplementedError:
            pass  # "Collection forking is not implemented for Local Chroma": copy the records
        col = client.create_collection(
            name, configuration={"hnsw": hnsw}, metadata=meta, embedding_function=None
        )
        state["copy"] = "records"
        save()
    else:
        col = client.get_collection(name, embedding_function=None)
    step, total, done = int(client.get_max_batch_size()), original.count(), int(state.get("copied", 0))
    while done < total:
        got = original.get(include=["embeddings", "documents", "metadatas"], limit=step, offset=done)
        if not got["ids"]:
            break
        col.upsert(  # upsert: the page after the last checkpoint may be there already
            ids=got["ids"],
            embeddings=got["embeddings"],
            documents=got["documents"],
            metadatas=got["metadatas"],
        )
        done += len(got["ids"])
        state["copied"] = done
        save()
    return col


def state_path(layout: Layout, start: str) -> Path:
    """The checkpoint of a version being built from ``start`` (removed once the version is recorded)."""
    return layout.state / f"update-{start}.json"


# ---------------------------------------------------------------- phase 07, step by step
@dataclass
class Context:
    """Where phase 07 starts: the verified collection, its Chroma, its export, the embedding model."""

    base_path: str
    run_dir: str
    dry_run: bool
    layout: Layout
    chroma_mode: str
    chroma_path: str
    chroma_host: str
    chroma_port: int
    start: str  # the verified collection (03's, or the version an earlier 07 built)
    start_phase: str
    prior: dict  # handoff.verified_collection() as this run found it
    export_dir: Path  # the export the start collection corresponds to
    spec: embeddings.ModelSpec
    cache_path: str
    chunk_size: int = 1024
    overlap: int = 200
    notes: list = field(default_factory=list)
    restored: dict = field(default_factory=dict)
    absent: list = field(default_factory=list)  # a dry run: earlier phases not run yet (nothing to read)
    _client: object = None

    @property
    def embedded(self) -> bool:
        return self.chroma_mode == "embedded"

    def client(self):
        """The Chroma client. A dry run on an embedded Chroma reads a temporary copy of ``chroma_db/``:
        chromadb writes to its files (sqlite, HNSW segments) whenever a process opens them, even to read."""
        if self._client is None:
            if self.dry_run and self.embedded:
                import chromadb
                from chromadb.config import Settings

                tmp = tempfile.mkdtemp(prefix="welno-07-dry-run-")
                weakref.finalize(self, shutil.rmtree, tmp, True)
                copy = Path(tmp) / "chroma_db"
                if self.layout.chroma_db.exists():
                    shutil.copytree(self.layout.chroma_db, copy)
                self._client = chromadb.PersistentClient(
                    path=str(copy), settings=Settings(anonymized_telemetry=False, allow_reset=False)
                )
            else:
                self._client = chroma_target.open_client(
                    self.chroma_mode, self.base_path, self.chroma_host, self.chroma_port
                )
        return self._client

    def collection(self, name: str):
        return self.client().get_collection(name, embedding_function=None)

    def describe(self) -> dict:
        if self.absent:
            return {
                "starts from (verified)": self.start,
                "phases not run yet": ", ".join(self.absent) + " (a real run stops until they have)",
                "chroma": f"{self.chroma_mode}: {self.chroma_path} (not opened)",
                "export it corresponds to": str(self.export_dir),
                "embedding model": self.spec.model_name,
                "snapshots before this run": list_snapshots(self.layout) or "(none)",
            }
        st = state_path(self.layout, self.start)
        return {
            "starts from (verified)": f"{self.start} (phase {self.start_phase})",
            "records when verified": self.prior.get("count"),
            "chroma": f"{self.chroma_mode}: "
            + (self.chroma_path if self.embedded else f"{self.chroma_host}:{self.chroma_port}"),
            "changes go to": "a new collection version; the verified one is never written"
            if self.embedded
            else "the live collection, in place (Chroma server)",
            "export it corresponds to": str(self.export_dir),
            "embedding model": self.spec.model_id,
            "chunk size / overlap": f"{self.chunk_size} / {self.overlap}",
            "snapshots before this run": list_snapshots(self.layout) or "(none)",
            "unfinished version": atomic.read_json(st).get("target") if st.exists() else "(none)",
            **({"notes": self.notes} if self.notes else {}),
        }


def context(base_path: str, run_dir: str = "", dry_run: bool = True, embedding_cache: str = "") -> Context:
    """Read the hand-offs (this run's dry-run records first on a dry run) and find the start collection."""
    kw = {"base_path": base_path, "run_dir": run_dir, "dry_run": dry_run}
    layout = Layout.from_params(base_path)
    h01 = handoff.read("01_extract", **kw)
    h02 = handoff.read("02_init_chroma", **kw)
    h03 = handoff.read("03_migrate", **kw)
    absent = [r["phase"] for r in (h01, h02, h03) if handoff.is_absent(r)]
    if absent:  # only a dry run gets here (a real run stopped naming the phase to run first)
        return _context_without_records(base_path, run_dir, layout, absent, embedding_cache)
    v = handoff.verified_collection(**kw)
    h07 = handoff.read_optional(PHASE, **kw) if v["phase"] == PHASE else None
    export_dir = Path((h07 or {}).get("export_dir") or h02.get("export_dir") or h01["export_dir"])
    ctx = Context(
        base_path=base_path,
        run_dir=run_dir,
        dry_run=dry_run,
        layout=layout,
        chroma_mode=v.get("chroma_mode") or h02["chroma_mode"],
        chroma_path=v.get("chroma_path") or h02.get("chroma_path") or str(layout.chroma_db),
        chroma_host=v.get("chroma_host") or h02.get("chroma_host") or "127.0.0.1",
        chroma_port=int(v.get("chroma_port") or h02.get("chroma_port") or 8000),
        start=v.get("collection") or h02["collection"],
        start_phase=v["phase"],
        prior=v,
        export_dir=export_dir,
        spec=embeddings.ModelSpec(**h01["embedding_spec"]),
        cache_path=str(resolve(embedding_cache))
        if embedding_cache
        else str(layout.cache / "embeddings.sqlite"),
    )
    if (export_dir / "manifest.json").exists():
        pipeline = export_format.open_export(export_dir).manifest.get("pipeline") or {}
        ctx.chunk_size, ctx.overlap = splitter_settings(pipeline)
    elif dry_run:
        ctx.notes.append(f"export {export_dir} does not exist yet (dry run): default splitter settings")
    else:
        export_format.open_export(export_dir)  # raises, naming what is wrong
    return ctx


def _context_without_records(
    base_path: str, run_dir: str, layout: Layout, absent: list[str], embedding_cache: str
) -> Context:
    """A dry run before phases 01-03 have run: placeholders where only they can tell; nothing is opened."""
    return Context(
        base_path=base_path,
        run_dir=run_dir,
        dry_run=True,
        layout=layout,
        chroma_mode="embedded",
        chroma_path=str(layout.chroma_db),
        chroma_host="127.0.0.1",
        chroma_port=8000,
        start="(phase 03 has not run: it names the collection)",
        start_phase="03_migrate",
        prior={},
        export_dir=Path("(phase 01 has not run: it names the export)"),
        spec=embeddings.ModelSpec("", "(phase 01 has not run: it names the model)"),
        cache_path=str(resolve(embedding_cache))
        if embedding_cache
        else str(layout.cache / "embeddings.sqlite"),
        absent=absent,
    )


def restore_if_asked(ctx: Context, name: str) -> dict:
    """``restore_snapshot``: put the snapshot back as ``chroma_db/`` instead of updating. Refused while the
    demo's reference service reads the directory (stop it first; an external service likewise)."""
    if not name:
        return {"restore": "not asked (restore_snapshot is empty)"}
    if name not in list_snapshots(ctx.layout):
        raise FileNotFoundError(f"no snapshot {name!r}; snapshots: {list_snapshots(ctx.layout)}")
    pidfile = ctx.layout.base / "service" / "service.pid"
    pid = pidfile.read_text().strip() if pidfile.exists() else ""
    if pid.isdigit() and processes.leader_alive(int(pid)):
        raise RuntimeError(
            f"the reference service (pid {pid}) reads {ctx.layout.chroma_db}: stop it first "
            f"(python -m runbook.rehearsal.service_ctl stop --pidfile {pidfile}), restore, then start it again"
        )
    note_file = ctx.layout.backup / "chroma_snapshots" / f"{name}.json"
    note = atomic.read_json(note_file) if note_file.exists() else {}
    if ctx.dry_run:
        ctx.restored = {"would restore": name}
        return dict(ctx.restored)
    aside = restore(ctx.layout, name)
    ctx.restored = {"restored": name, "previous chroma_db kept at": str(aside), "note": note}
    runlog.log(ctx.layout, PHASE, f"restored snapshot {name}", previous_kept_at=str(aside))
    return {k: v for k, v in ctx.restored.items() if k != "note"}


def open_cloud(
    sync_from_cloud: bool,
    emulator_corpus: str = "",
    source_base_url: str = "",
    source_api_key_env: str = "LLAMA_CLOUD_API_KEY",
    embedding_cache: str = "",
    emulator_serve_embeddings: bool = False,
    dry_run: bool = False,
):
    """The source for delta sync (read-only), or None when not asked. A dry run whose key variable is not
    set (and no local server) does not connect: it says so in one line and gets a :class:`NotContacted`,
    which the plan shows as what a real run would fetch. A real run stops naming the missing variable."""
    if not sync_from_cloud:
        return None
    from . import credentials, source

    if dry_run and not emulator_corpus and not credentials.get_secret(source_api_key_env, required=False):
        why = f"${source_api_key_env} is not set"
        print(f"dry run: {why}; the cloud is not contacted, the delta sync is planned without it")
        return NotContacted(why, source_base_url)
    return source.open_source(
        source_base_url,
        source_api_key_env,
        emulator_corpus=emulator_corpus,
        embed_cache=embedding_cache,
        emulator_serve_embeddings=emulator_serve_embeddings,
    )


@dataclass
class NotContacted:
    """The cloud a dry run did not contact (why: no key)."""

    why: str
    base_url: str = ""

    def describe(self) -> str:
        return f"{self.base_url or 'https://api.cloud.llamaindex.ai'}; not contacted: {self.why}"


def cloud_overview(src) -> dict:
    """The delta-sync row of the page: the source, or that it was not asked."""
    return {"delta sync from the cloud": src.describe() if src is not None else "not asked"}


@dataclass
class UpdatePlan:
    start: str
    target: str = ""  # the collection the changes go to ("" when there is nothing to do)
    in_place: bool = False
    resumed: bool = False
    start_exists: bool = True
    start_count: int = 0
    local: Plan | None = None
    cloud: dict | None = None  # {"added", "deleted", "changed"}: document ids
    src: object = None
    cloud_chunks: dict = field(default_factory=dict)  # cloud document id -> its chunks in the start
    original: dict = field(default_factory=dict)  # fingerprint of the start collection
    notes: list = field(default_factory=list)

    @property
    def empty(self) -> bool:
        local = any(r["action"] in CHANGES for r in (self.local.rows if self.local else []))
        return not local and not any((self.cloud or {}).values())

    def table(self) -> list[dict]:
        rows = [
            {
                "source": "local folder",
                "document": r["document"],
                "action": r["action"],
                "chunks added": r.get("chunks added", ""),
                "chunks removed": r.get("chunks removed", ""),
                "chunks kept": r.get("chunks", ""),
            }
            for r in (self.local.rows if self.local else [])
        ]
        for action, key in (("added", "added"), ("replaced", "changed"), ("deleted", "deleted")):
            rows += [
                {
                    "source": "cloud",
                    "document": d,
                    "action": action,
                    "chunks added": "as fetched" if key != "deleted" else "",
                    "chunks removed": self.cloud_chunks.get(d, 0) if key != "added" else "",
                    "chunks kept": "",
                }
                for d in (self.cloud or {}).get(key, [])
            ]
        return rows or [{"source": "-", "document": "(none)", "action": "nothing to do"}]

    def summary(self) -> dict:
        where = (
            "nothing: no changes"
            if self.empty
            else (
                f"{self.target} in place (Chroma server)" if self.in_place else f"new version {self.target}"
            )
        )
        return {
            "starts from": self.start,
            "records in it": self.start_count,
            "documents to change": sum(r["action"] in CHANGES for r in self.table()),
            "builds": where,
            "finishes an interrupted build": self.resumed,
            **({"steps of a real run": self.steps()} if not self.empty else {}),
            **({"notes": self.notes} if self.notes else {}),
        }

    def steps(self) -> list[str]:
        """What a real run does with this plan, in order."""
        out = (
            []
            if self.in_place
            else [
                "snapshot chroma_db/ (and the sparse index) to backup/chroma_snapshots/ (snapshot_before)",
                f"copy {self.start} to {self.target} (same HNSW settings); {self.start} is never written",
            ]
        )
        if self.local is not None:
            out.append(
                f"local documents into {self.target}: "
                + ", ".join(f"{k} {v['documents']}" for k, v in self.local.counts().items())
            )
        if self.cloud is not None:
            out.append("delta sync: a new export generation fetches what changed; the difference is applied")
        return out + [
            "the sparse index follows the changed documents",
            "verify: count, each changed document's chunks, deletions, export ids"
            + ("" if self.in_place else f", {self.start} untouched"),
            "hand-off 07_update_vectors.json (phases 04-06 then use the new version)",
        ]


def plan_update(ctx: Context, documents_folder: str = "", deletions_file: str = "", src=None) -> UpdatePlan:
    """What would change, against the start collection (read only), and where it would go."""
    plan = UpdatePlan(start=ctx.start, src=src, in_place=not ctx.embedded)
    if ctx.restored:
        plan.notes.append("snapshot restore run: no update")
        return plan
    if not (documents_folder or deletions_file or src is not None):
        plan.notes.append(
            "nothing asked: documents_folder and deletions_file are empty, sync_from_cloud is false"
        )
    if ctx.absent:
        return _plan_unconnected(ctx, plan, documents_folder, deletions_file, src)
    client = ctx.client()
    plan.start_exists = ctx.start in _names(client)
    if not plan.start_exists and not ctx.dry_run:
        raise RuntimeError(f"collection {ctx.start!r} (verified by phase {ctx.start_phase}) is not in Chroma")
    col = ctx.collection(ctx.start) if plan.start_exists else None
    if col is None:
        plan.notes.append(f"{ctx.start} does not exist yet (dry run of the chain): planned against nothing")
    plan.start_count = col.count() if col is not None else 0
    deletions = resolve(deletions_file).read_text(encoding="utf-8").split() if deletions_file else []
    if documents_folder or deletions:
        folder = resolve(documents_folder) if documents_folder else None
        plan.local = plan_local(col, folder, deletions, ctx.chunk_size, ctx.overlap)
    if isinstance(src, NotContacted):
        plan.cloud = {"added": [], "deleted": [], "changed": []}
        plan.notes.append(
            f"delta sync not planned ({src.why}): a real run fetches what changed since the export"
        )
    elif src is not None:
        plan.cloud = {"added": [], "deleted": [], "changed": []}
        if (ctx.export_dir / "manifest.json").exists():
            plan.cloud = cloud_plan(src, ctx.export_dir)
        else:
            plan.notes.append(f"delta sync: no export at {ctx.export_dir} to compare with yet (dry run)")
        if col is not None:
            touched = plan.cloud["deleted"] + plan.cloud["changed"]
            plan.cloud_chunks = {d: len(ids) for d, ids in _doc_chunk_ids(col, touched).items()}
    st = state_path(ctx.layout, ctx.start)
    unfinished = atomic.read_json(st) if st.exists() and ctx.embedded else {}
    if plan.empty:
        if unfinished.get("target"):
            plan.notes.append(
                f"an unfinished version {unfinished['target']} of an earlier run is left as it is "
                "(nothing to change now; it is finished by the next run that has changes)"
            )
        return plan
    plan.resumed = bool(unfinished.get("target"))
    plan.target = ctx.start if plan.in_place else (unfinished.get("target") or version_name(ctx.start))
    if not ctx.dry_run and not plan.in_place:
        plan.original = fingerprint(col)
    return plan


def _plan_unconnected(
    ctx: Context, plan: UpdatePlan, documents_folder: str, deletions_file: str, src
) -> UpdatePlan:
    """A dry run that cannot look at what it would change (earlier phases not run, or no key for the cloud):
    the folder and the deletions are read, the rest is said in notes; nothing is opened."""
    plan.start_exists = False
    if ctx.absent:
        plan.notes.append(f"{', '.join(ctx.absent)} not run yet: planned against no collection")
    deletions = resolve(deletions_file).read_text(encoding="utf-8").split() if deletions_file else []
    if documents_folder or deletions:
        folder = resolve(documents_folder) if documents_folder else None
        plan.local = plan_local(None, folder, deletions, ctx.chunk_size, ctx.overlap)
    if src is not None:
        plan.cloud = {"added": [], "deleted": [], "changed": []}
        why = src.why if isinstance(src, NotContacted) else "no export to compare with yet"
        plan.notes.append(f"delta sync not planned ({why}): a real run fetches what changed since the export")
    if not plan.empty:
        plan.target = "<the verified collection>__u<UTC time>" if ctx.absent else version_name(ctx.start)
    return plan


def _expected_count(plan: UpdatePlan, applied: dict) -> int:
    n = plan.start_count
    for a in (applied.get("local") or {}).values():
        n += a.get("chunks added", 0) - a.get("chunks removed", 0)
    cloud = applied.get("cloud") or {}
    return n + cloud.get("chunks added", 0) - cloud.get("chunks removed", 0)


def apply_update(ctx: Context, plan: UpdatePlan, snapshot_before: bool = True) -> dict:
    """Build (embedded) or change in place (server) the collection. Nothing on a dry run or an empty plan;
    then (no snapshot, no collection, no export generation, no state file)."""
    if ctx.dry_run or plan.empty or ctx.restored:
        why = "dry run" if ctx.dry_run else ("snapshot restored" if ctx.restored else "nothing to do")
        out: dict = {"applied": False, "why": why}
        if plan.cloud is not None and not ctx.dry_run and plan.start_exists and not ctx.restored:
            exp = export_format.open_export(ctx.export_dir)
            out["cloud"] = {
                "export": str(exp.path),
                "reconciliation": reconcile(ctx.collection(plan.start), exp),
            }
        return out
    client, layout = ctx.client(), ctx.layout
    original = ctx.collection(plan.start)
    st_file = state_path(layout, plan.start)
    state: dict = {}

    def save():
        if not plan.in_place:
            atomic.write_json(st_file, state)

    if not plan.in_place:
        state = atomic.read_json(st_file) if st_file.exists() else {}
        if state.get("target") != plan.target:
            state = {
                "source": plan.start,
                "target": plan.target,
                "started_at": _now().isoformat(timespec="seconds"),
            }
        state["stage"] = "building"
        save()
        if snapshot_before and not state.get("snapshot"):
            note = {"verified": ctx.prior, "export_dir": str(ctx.export_dir), "building": plan.target}
            state["snapshot"] = snapshot(layout, "before-07", note).name
            save()
        target = build_version(client, original, plan.target, state, save)
    else:
        target = original
    out = {
        "applied": True,
        "collection": target.name,
        "built from": plan.start,
        "in place": plan.in_place,
        "copy": state.get("copy", ""),
        "snapshot": state.get("snapshot", ""),
        "resumed": plan.resumed,
    }
    if plan.local is not None:
        out["local"] = apply_local(client, target, plan.local, ctx.spec, ctx.cache_path)
    if plan.cloud is not None and any(plan.cloud.values()):
        prev = export_format.open_export(ctx.export_dir)
        gen = Path(state.get("generation") or "")
        if not state.get("generation"):
            gen = seed_generation(ctx.export_dir, layout.exports, prev.manifest["index_id"])
            state["generation"] = str(gen)
            save()
        gen, fetched = export_generation(plan.src, layout, ctx.export_dir, ctx.spec, ctx.cache_path, gen)
        base = None if plan.in_place else original
        out["cloud"] = {
            "fetched documents": fetched,
            **apply_cloud(client, target, ctx.export_dir, gen, base),
        }
    elif plan.cloud is not None:
        exp = export_format.open_export(ctx.export_dir)
        out["cloud"] = {"export": str(exp.path), "added": [], "changed": [], "deleted": []}
        out["cloud"].update(
            {"chunks added": 0, "chunks removed": 0, "reconciliation": reconcile(target, exp)}
        )
    out["expected count"] = _expected_count(plan, out)
    touched = sparse_sync.touched_documents(out, plan.local.rows if plan.local is not None else None)
    out["sparse"] = sparse_sync.after_update(layout, plan.start, target, touched)
    state["stage"] = "applied"
    save()
    return out


def brief(d: dict) -> dict:
    """A result or hand-off without its bulky parts (shown in their own tables)."""
    return {k: v for k, v in d.items() if k not in ("cloud", "checks", "plan", "sparse")}


def applied_table(ctx: Context, applied: dict) -> dict:
    """``apply_update``'s result for the page: the snapshot this run took named as such, and the snapshots
    kept now (``Context.describe`` lists those from before the run)."""
    out = {}
    for k, v in brief(applied).items():
        if k == "snapshot":
            out["snapshot taken by this run"] = v or "(none)"
        else:
            out[k] = v
    out["snapshots kept now"] = list_snapshots(ctx.layout) or "(none)"
    return out


def _export_of(ctx: Context, applied: dict):
    return export_format.open_export((applied.get("cloud") or {}).get("export") or ctx.export_dir)


def verify_update(ctx: Context, plan: UpdatePlan, applied: dict) -> list[dict]:
    """The new version (or the collection changed in place) against the plan: count, every changed
    document's chunks, deletions, the export's ids; and the start collection left exactly as it was."""
    recon = (applied.get("cloud") or {}).get("reconciliation")
    rec_check = (
        [{"check": "collection and export ids agree", "ok": recon["clean"], "detail": recon}] if recon else []
    )
    if not applied.get("applied"):
        return [
            {"check": f"nothing written ({applied['why']})", "ok": True, "detail": plan.summary()["builds"]}
        ] + rec_check
    target, exp = ctx.collection(applied["collection"]), _export_of(ctx, applied)
    rows: list[dict] = []

    def check(name, ok, detail):  # a dict or list stays one (the page shows it as a table)
        rows.append(
            {
                "check": name,
                "ok": bool(ok),
                "detail": detail if isinstance(detail, (dict, list)) else str(detail),
            }
        )

    if not plan.in_place:
        now = fingerprint(ctx.collection(plan.start))
        check(f"{plan.start} untouched (count, every id, sampled records)", now == plan.original, now)
        want = chroma_target.current_hnsw(ctx.collection(plan.start))
        got = chroma_target.current_hnsw(target)
        same = all(got.get(k) == want.get(k) for k in (*chroma_target.IMMUTABLE_HNSW, "ef_search"))
        check(
            "same HNSW configuration as the original",
            same,
            {k: got.get(k) for k in chroma_target.IMMUTABLE_HNSW},
        )
        meta = target.metadata or {}
        check(
            "provenance: built from the original, names its export",
            meta.get("built_from") == plan.start
            and meta.get("export_manifest_sha256") == exp.manifest_sha256,
            {k: meta.get(k) for k in ("built_from", "export_id", "export_manifest_sha256")},
        )
    n = target.count()
    check(
        "count = original ± changes",
        n == applied["expected count"],
        f"{n} (expected {applied['expected count']})",
    )
    want_ids: dict[str, set[str]] = {}
    gone: list[str] = []
    for r in plan.local.rows if plan.local else []:
        if r["action"] in ("added", "replaced"):
            want_ids[r["document"]] = {x["chunk_id"] for x in plan.local.new_rows[r["document"]]}
        elif r["action"] == "deleted":
            gone.append(r["document"])
    cloud = applied.get("cloud") or {}
    want_ids.update(_export_chunk_ids(exp, set(cloud.get("added", []) + cloud.get("changed", []))))
    gone += cloud.get("deleted", [])
    have = _doc_chunk_ids(target, sorted(want_ids) + gone)
    short = [d for d, ids in want_ids.items() if have.get(d, set()) != ids]
    check(
        "each added or replaced document's chunks present (and only those)",
        not short,
        short or f"{len(want_ids)} documents",
    )
    left = [d for d in gone if have.get(d)]
    check("deleted documents gone", not left, left or f"{len(gone)} documents")
    if not recon:
        recon = reconcile(target, exp)
        rec_check = [{"check": "collection and export ids agree", "ok": recon["clean"], "detail": recon}]
    return rows + rec_check + list((applied.get("sparse") or {}).get("checks") or [])


def _next_step(ctx: Context, plan: UpdatePlan, applied: dict) -> str:
    if ctx.restored:
        return "restart the service on the restored chroma_db/, then phases 04 and 05, then 06 with approval"
    if ctx.absent:
        return f"a real run needs {', '.join(ctx.absent)} first"
    if ctx.dry_run:
        if plan.empty:
            return "nothing to do"
        what = f"change {plan.target} in place" if plan.in_place else f"build {plan.target}"
        return f"Run with dry_run: false to {what}"
    if not applied.get("applied"):
        return f"{plan.start} stays the verified collection"
    if plan.in_place:
        return f"the live collection {plan.target} changed in place: run phase 05 again on it (then 06 with approval)"
    return f"next: phases 04 and 05 on {applied['collection']}, then 06 with approval"


def record_update(ctx: Context, plan: UpdatePlan, applied: dict, checks: list[dict]) -> dict:
    """The 07 hand-off. A built (or in-place changed) collection is named with the keys
    ``handoff.verified_collection`` reads, so phases 04-06 switch to it; a run that changed nothing carries
    the verified version of an earlier 07 run forward unchanged (and names none when that was 03's)."""
    changed = bool(applied.get("applied"))
    data: dict = {
        "changed": changed,
        "built_from": plan.start,
        "in_place": plan.in_place,
        "plan": plan.summary(),
        "local": applied.get("local") or (plan.local.counts() if plan.local else {}),
        "cloud": applied.get("cloud") or ({"plan": plan.cloud} if plan.cloud is not None else {}),
        "snapshot": applied.get("snapshot", ""),
        "checks": checks,
        "next": _next_step(ctx, plan, applied),
    }
    where = {
        "chroma_mode": ctx.chroma_mode,
        "chroma_path": ctx.chroma_path,
        "chroma_host": ctx.chroma_host,
        "chroma_port": ctx.chroma_port,
    }
    if ctx.dry_run:
        data["would_build"] = "" if plan.empty else plan.target
    elif changed:
        exp = _export_of(ctx, applied)
        data.update(
            collection=applied["collection"],
            count=ctx.collection(applied["collection"]).count(),
            export_manifest_sha256=exp.manifest_sha256,
            export_dir=str(exp.path),
            export_id=exp.manifest["export_id"],
            **where,
        )
    else:
        carry, export_dir = ctx.prior, str(ctx.export_dir)
        if ctx.restored:
            data["restored"] = {k: v for k, v in ctx.restored.items() if k != "note"}
            note = ctx.restored.get("note") or {}
            carry, export_dir = note.get("verified") or {}, note.get("export_dir", "")
        if carry.get("phase") == PHASE and carry.get("collection"):
            keys = ("collection", "count", "export_manifest_sha256")
            data.update({k: carry.get(k) for k in keys}, export_dir=export_dir, carried_forward=True, **where)
    rec = handoff.record(PHASE, data, base_path=ctx.base_path, run_dir=ctx.run_dir, dry_run=ctx.dry_run)
    if not ctx.dry_run:
        runlog.log(
            ctx.layout,
            PHASE,
            "update applied" if changed else "nothing to do",
            collection=data.get("collection", ""),
            count=data.get("count", ""),
            next=data["next"],
        )
        if changed and not plan.in_place:
            state_path(ctx.layout, plan.start).unlink(missing_ok=True)
    return rec


def verdict(rec: dict) -> str:
    """The page's last word (Markdown)."""
    nxt = rec.get("next", "")
    if rec.get("dry_run"):
        what = (
            f"it would build **{rec['would_build']}**" if rec.get("would_build") else "there is nothing to do"
        )
        return f"**DRY RUN** — nothing was written under the base path; {what}. {nxt}."
    if rec.get("restored"):
        return f"**Snapshot {rec['restored'].get('restored')} restored** as chroma_db/. {nxt}."
    if not rec.get("changed"):
        return f"**Nothing to do** — the index is current; nothing was written (no snapshot, no new collection). {nxt}."
    if rec.get("in_place"):
        return (
            f"**The live collection {rec['collection']} changed in place** ({rec['count']:,} records, Chroma "
            f"server): the service already reads the changes. **Phase 05 must be run again** — {nxt}."
        )
    return (
        f"**Built and verified {rec['collection']}** ({rec['count']:,} records) from {rec['built_from']}, "
        f"which is untouched and still what the service reads. **{nxt}.**"
    )


def run_update(
    base_path: str,
    run_dir: str = "",
    dry_run: bool = True,
    documents_folder: str = "",
    deletions_file: str = "",
    sync_from_cloud: bool = False,
    snapshot_before: bool = True,
    restore_snapshot: str = "",
    emulator_corpus: str = "",
    source_base_url: str = "",
    source_api_key_env: str = "LLAMA_CLOUD_API_KEY",
    embedding_cache: str = "",
    emulator_serve_embeddings: bool = False,
) -> dict:
    """Phase 07 in one call (what the notebook does cell by cell); returns the hand-off record and raises
    ``display.CheckFailed`` when the verification fails (nothing recorded then; a re-run resumes)."""
    from . import display

    ctx = context(base_path, run_dir, dry_run, embedding_cache)
    restore_if_asked(ctx, restore_snapshot)
    src = open_cloud(
        sync_from_cloud,
        emulator_corpus,
        source_base_url,
        source_api_key_env,
        embedding_cache,
        emulator_serve_embeddings=emulator_serve_embeddings,
        dry_run=dry_run,
    )
    plan = plan_update(ctx, documents_folder, deletions_file, src)
    applied = apply_update(ctx, plan, snapshot_before)
    checks = verify_update(ctx, plan, applied)
    display.checks(checks, show=False)
    return record_update(ctx, plan, applied, checks)
