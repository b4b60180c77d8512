"""The sparse (BM25) index beside each Chroma collection: built by phase 03, kept current by phase 07,
snapshotted and restored with ``chroma_db/``.

One index per collection, at ``<base_path>/sparse_index/<collection>/`` (``runbook.sparse_index``). Its ids,
texts and filterable metadata are the collection's own (``load.loaded_rows``; phase 07 reads the changed
documents back from Chroma), so the hybrid arm's sparse results name the same records as its dense ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import load, records
from .paths import Layout

DIRNAME = "sparse_index"


def index_path(layout: Layout, collection: str) -> Path:
    return layout.base / DIRNAME / collection


def exists(layout: Layout, collection: str) -> bool:
    return (index_path(layout, collection) / "meta.json").exists()


def build_for_load(
    layout: Layout, col, export_dir, policy: records.Policy | None = None, probes: int = 20
) -> dict:
    """Build the collection's sparse index from the records phase 03 loaded (an existing one is replaced
    whole, atomically), then verify it against the collection: the same chunk count as Chroma, every
    loaded document, term queries that must find their chunk. Returns {path, stats, checks}."""
    docs: set = set()

    def rows():
        for r in load.loaded_rows(export_dir, policy):
            docs.add(r["document_id"])
            yield r

    from . import sparse_index

    path = index_path(layout, col.name)
    idx = sparse_index.SparseIndex.build(path, rows(), show_progress=True)
    checks = idx.verify(
        expected_documents=len(docs),
        expected_chunks=col.count(),
        probes=probes,
        expected_chunk_ids=col.get(include=[])["ids"],  # Chroma's own ids, not the rows it was built from
    )
    return {"path": str(path), "stats": idx.stats(), "checks": checks}


def _rows_of(col, doc_id: str) -> list[dict]:
    got = col.get(where={"ref_doc_id": doc_id}, include=["documents", "metadatas"])
    out = []
    for cid, text, md in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
        md = load.sparse_metadata(md or {})
        out.append({"chunk_id": cid, "document_id": doc_id, "text": text or "", "metadata": md})
    return out


def touched_documents(applied: dict, local_rows: list[dict] | None = None) -> list[str]:
    """The documents phase 07 added, replaced or deleted: its local folder plan's rows and the cloud delta."""
    out = [r["document"] for r in (local_rows or []) if r.get("action") in ("added", "replaced", "deleted")]
    cloud = applied.get("cloud") or {}
    for key in ("added", "changed", "deleted"):
        out += list(cloud.get(key) or [])
    return list(dict.fromkeys(out))


def after_update(layout: Layout, start: str, col, touched: list[str]) -> dict:
    """Bring the sparse index of ``col`` (phase 07's new version, or ``start`` changed in place) to the
    collection: copied from ``start``'s index when ``col`` is a new version, then every touched document
    re-read from Chroma (gone from Chroma: gone from the index). Idempotent. Nothing when ``start`` has no
    sparse index (a dense-only migration)."""
    if not exists(layout, start):
        return {"sparse index": f"none for {start} (dense only)"}
    from . import sparse_index

    path = index_path(layout, col.name)
    if col.name != start and not exists(layout, col.name):
        tmp = path.with_name(path.name + ".copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(index_path(layout, start), tmp)
        tmp.replace(path)
    idx = sparse_index.SparseIndex.open(path)
    rows = [r for d in touched for r in _rows_of(col, d)]
    # one atomic rewrite: every touched document's chunks replaced by Chroma's (none: the document is gone)
    changed = idx.upsert_documents(rows, document_ids=touched) if touched else {}
    stats = idx.stats()
    checks = [
        {
            "check": "sparse index holds the collection's chunks",
            "ok": stats["chunks"] == col.count(),
            "detail": f"{stats['chunks']} in {path} vs {col.count()} in {col.name}",
        }
    ]
    return {
        "path": str(path),
        "documents re-read": len(touched),
        "changed": changed,
        "stats": stats,
        "checks": checks,
    }


def snapshot_into(layout: Layout, dest: Path) -> bool:
    """Copy every collection's sparse index into a snapshot folder being written (``update.snapshot``)."""
    src = layout.base / DIRNAME
    if not src.is_dir():
        return False
    shutil.copytree(src, dest / DIRNAME)
    return True


def stage_restore(layout: Layout, snap: Path) -> Path | None:
    """Copy a snapshot's sparse indexes to ``sparse_index.restoring`` before ``chroma_db/`` is swapped, so
    the two swaps that follow are renames only (None: the snapshot holds none)."""
    staged = layout.base / f"{DIRNAME}.restoring"
    shutil.rmtree(staged, ignore_errors=True)
    if not (snap / DIRNAME).is_dir():
        return None
    shutil.copytree(snap / DIRNAME, staged)
    return staged


def finish_restore(layout: Layout, staged: Path | None, aside: Path) -> bool:
    """Put the staged sparse indexes in place, the current ones kept at ``aside``; a snapshot without any
    leaves none, as it was when the snapshot was taken."""
    cur = layout.base / DIRNAME
    if cur.exists():
        cur.replace(aside)
    if staged is None:
        return False
    staged.replace(cur)
    return True


def set_aside(layout: Layout, collection: str, stamp: str) -> str:
    """Phase 03 without a sparse index: an older index of the same collection name is moved aside (it
    would describe another load), so phase 04 never configures a hybrid arm over it. Returns where."""
    path = index_path(layout, collection)
    if not path.exists():
        return ""
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    path.replace(aside)
    return str(aside)
