"""Phase 00: the directory layout, the migration log, versions, credentials, the source, the disk."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from . import atomic, credentials
from .paths import Layout

# bytes per chunk beyond its vectors: text + metadata in the export (compressed) and in Chroma's SQLite,
# plus HNSW links; measured on the demo corpus and rounded up
OVERHEAD_PER_CHUNK = 6 * 1024


def create_layout(base_path: str, dry_run: bool) -> list[dict]:
    layout = Layout.from_params(base_path)
    rows = []
    for name, p in (
        ("base", layout.base),
        ("chroma_db/", layout.chroma_db),
        ("backup/", layout.backup),
        ("backup/exports/", layout.exports),
        ("logs/", layout.logs),
        ("state/", layout.state),
        ("cache/", layout.cache),
    ):
        existed = p.exists()
        if not dry_run:
            p.mkdir(parents=True, exist_ok=True)
        rows.append(
            {
                "folder": name,
                "path": str(p),
                "status": "exists" if existed else ("would create" if dry_run else "created"),
            }
        )
    if not dry_run:
        os.chmod(layout.backup, 0o700)
        os.chmod(layout.exports, 0o700)
    for r in rows:
        p = Path(r["path"])
        r["mode"] = oct(stat.S_IMODE(p.stat().st_mode)) if p.exists() else ""
    return rows


def write_config(base_path: str, settings: dict, dry_run: bool) -> Path:
    """``config.json``: the non-secret settings of this migration (secrets are named, never stored)."""
    credentials.check_parameters({k: v for k, v in settings.items() if not isinstance(v, (list, dict))})
    layout = Layout.from_params(base_path)
    if not dry_run:
        atomic.write_json(layout.config_json, settings)
    return layout.config_json


def credentials_table(names: dict[str, str]) -> list[dict]:
    """Which needed environment variables are set: names and purposes only, never values."""
    return [
        {"purpose": purpose, "variable": name, "set": bool(name and os.environ.get(name))}
        for purpose, name in names.items()
    ]


def projected_bytes(chunks: int, dimension: int) -> int:
    # the vector lives twice (export shard + Chroma), plus HNSW and text overhead
    return int(chunks * (2 * 4 * dimension + OVERHEAD_PER_CHUNK))


def disk_check(base_path: str, chunks: int, dimension: int, max_use_pct: float = 80.0) -> dict:
    layout = Layout.from_params(base_path)
    probe = layout.base
    while not probe.exists():
        probe = probe.parent
    du = shutil.disk_usage(probe)
    need = projected_bytes(chunks, dimension)
    after = (du.used + need) / du.total * 100
    return {
        "volume of": str(probe),
        "total GB": round(du.total / 1e9, 1),
        "used GB": round(du.used / 1e9, 1),
        "free GB": round(du.free / 1e9, 1),
        "projected need GB": round(need / 1e9, 3),
        "projected use %": round(after, 2),
        "limit %": max_use_pct,
        "ok": after <= max_use_pct,
        "basis": f"{chunks:,} chunks x {dimension}-d",
    }


def source_check(
    src, index_id: str, index_name: str, project_name: str, organization_id: str = "", sample_docs: int = 20
) -> dict:
    """Reach the source index; count its documents; estimate chunks from a sample of documents."""
    from .extract import _fetch_chunks, _list_pages
    from .source import find_pipeline

    project, pipeline = find_pipeline(src, index_id, index_name, project_name, organization_id)
    docs, total = next(_list_pages(src, pipeline.id, max(1, sample_docs)))
    sizes = [len(_fetch_chunks(src, pipeline.id, d["id"]) or []) for d in docs]
    per_doc = (sum(sizes) / len(sizes)) if sizes else 0.0
    emb = pipeline.model_dump(mode="json", by_alias=True).get("embedding_config") or {}
    return {
        "source": src.describe(),
        "project": project.name,
        "index": pipeline.name,
        "index id": pipeline.id,
        "documents": total or 0,
        "chunks per document (sample)": round(per_doc, 2),
        "estimated chunks": int(round((total or 0) * per_doc)),
        "embedding": emb.get("type"),
        "embedding model": (emb.get("component") or {}).get("model_name"),
    }
