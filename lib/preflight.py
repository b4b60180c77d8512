"""Phase 00: the directory layout, the migration log, versions, credentials, the source, the disk.

Also what phases 02 and 03 would do in a dry run (``collection_plan``, ``load_plan``), read-only.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

from . import atomic, credentials, disk
from .paths import Layout


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


def config_settings(
    base_path: str, collection_name: str, src_info: dict, source_api_key_env: str, openai_api_key_env: str
) -> dict:
    """The non-secret settings ``config.json`` holds (key variables by name only)."""
    layout = Layout.from_params(base_path)
    return {
        "base_path": str(layout.base),
        "chroma_db": str(layout.chroma_db),
        "collection_name": collection_name,
        "source_index_id": src_info["index id"],
        "source_index_name": src_info["index"],
        "source_api_key_env": source_api_key_env,
        "openai_api_key_env": openai_api_key_env,
    }


def credentials_table(names: dict[str, str], required: list[str] | tuple = ()) -> list[dict]:
    """Which needed environment variables are set: names and purposes only, never values. One row a
    variable: a variable named for two purposes (the LlamaCloud key is also in ``required_env``) is one row
    naming both; ``required`` marks those the run cannot go without (variables only named there get a row
    of their own)."""
    rows: dict[str, dict] = {}
    for purpose, name in [*names.items(), *(("required by this run (required_env)", n) for n in required)]:
        key = name or f"(unnamed: {purpose})"
        row = rows.setdefault(
            key,
            {
                "purpose": purpose,
                "variable": name,
                "required": False,
                "set": bool(name and os.environ.get(name)),
            },
        )
        if purpose not in row["purpose"].split("; ") and not purpose.startswith("required by"):
            row["purpose"] += f"; {purpose}"
        if name in required:
            row["required"] = True
    return list(rows.values())


def projected_bytes(chunks: int, dimension: int, **kw) -> int:
    """Total bytes the migration writes (``disk.projection``: export, Chroma, cache, snapshots...)."""
    kw.setdefault("reembed", True)
    kw.setdefault("snapshots", 1)
    return disk.total(disk.projection(chunks, dimension, **kw))


def _component_paths(layout: Layout, embedding_cache: str) -> dict[str, Path]:
    """Where each component of the projection is written (they may live on different volumes)."""
    from .paths import resolve

    return {
        "export": layout.exports,
        "chroma": layout.chroma_db,
        "embedding cache": resolve(embedding_cache)
        if embedding_cache
        else layout.cache / "embeddings.sqlite",
        "snapshots (phase 07)": layout.backup / "chroma_snapshots",
        "collection versions (phase 07)": layout.chroma_db,
        "sparse index": layout.chroma_db,
    }


USE_PCT_MEANS = "(used + projected need) / (used + free), as df's Use% (space reserved for root excluded)"


def _volume_figures(u: disk.Usage) -> dict:
    """A volume's size in GB (10^9 bytes, two decimals) such that the figures shown add up (total = used +
    free + reserved), and how full it is now."""
    total, used, free = (round(b / 1e9, 2) for b in (u.total, u.used, u.free))
    return {
        "total GB": total,
        "used GB": used,
        "free GB": free,
        "reserved GB (root only)": round(max(0.0, total - used - free), 2),
        "use % now": round(disk.use_pct(u), 2),
    }


def disk_check(
    base_path: str,
    chunks: int,
    dimension: int,
    max_use_pct: float = 80.0,
    reembed: bool = True,
    snapshots: int = 1,
    versions: int = 1,
    payload_bytes: float | None = None,
    sparse_index: bool = False,
    batch_size: int = disk.DEFAULT_BATCH,
    embedding_cache: str = "",
) -> dict:
    """Free disk against the calibrated projection (``disk.projection``), volume by volume: refused
    (``ok`` false) when any volume would pass ``max_use_pct``. ``components`` lists each part with its basis."""
    layout = Layout.from_params(base_path)
    rows = disk.projection(
        chunks,
        dimension,
        reembed=reembed,
        snapshots=snapshots,
        sparse_index=sparse_index,
        payload_bytes=payload_bytes,
        versions=versions,
        batch_size=batch_size,
    )
    paths = _component_paths(layout, embedding_cache)
    volumes: dict[str, dict] = {}
    components = []
    for r in rows:
        if r["component"] == "total":
            continue
        where = paths[r["component"]]
        vol = str(disk.mount_point(where))
        v = volumes.setdefault(vol, {"volume": vol, "need": 0, "probe": where})
        v["need"] += r["bytes"]
        components.append(
            {
                "component": r["component"],
                "projected MB": round(r["bytes"] / 1e6, 1),
                "written to": str(where),
                "basis": r["basis"],
            }
        )
    components.append(
        {
            "component": "total",
            "projected MB": round(disk.total(rows) / 1e6, 1),
            "written to": ", ".join(volumes) if len(volumes) > 1 else str(layout.base),
            "basis": rows[-1]["basis"],
        }
    )
    checked = []
    for v in volumes.values():
        u = disk.usage(v["probe"])
        after = disk.use_pct(u, v["need"])
        checked.append(
            {
                "volume": v["volume"],
                **_volume_figures(u),
                "projected need GB": round(v["need"] / 1e9, 3),
                "projected use %": round(after, 2),
                "ok": after <= max_use_pct and v["need"] <= u.free,
            }
        )
    worst = max(checked, key=lambda c: c["projected use %"])
    u = disk.usage(layout.base)
    return {
        "volume of": str(disk.existing(layout.base)),
        **_volume_figures(u),
        "projected need GB": round(sum(v["need"] for v in volumes.values()) / 1e9, 3),
        "projected use %": worst["projected use %"],
        "limit %": max_use_pct,
        "use % means": USE_PCT_MEANS,
        "ok": all(c["ok"] for c in checked),
        "basis": rows[-1]["basis"],
        "components": components,
        "volumes": checked,
    }


def disk_summary(check: dict) -> dict:
    """``disk_check`` without its tables (for a key/value display)."""
    return {k: v for k, v in check.items() if k not in ("components", "volumes")}


def disk_basis(src_info: dict, expected_chunks: int) -> dict:
    """What the disk projection rests on, from ``source_check``: the larger of ``expected_chunks`` and the
    source's estimate, re-embedding unless every sampled chunk came with its vector, and the sampled payload
    per chunk. A source not reached leaves ``expected_chunks`` with re-embedding (the larger projection).
    The keys are ``disk_check``'s keyword arguments."""
    estimated = src_info.get("estimated chunks")
    return {
        "chunks": max(int(expected_chunks), estimated if isinstance(estimated, int) else 0),
        "reembed": not src_info.get("vectors served (sample)"),
        "payload_bytes": src_info.get("payload bytes per chunk (sample)"),
    }


def disk_verdict(check: dict, dry_run: bool = False) -> dict:
    """The check row of ``disk_check``: projected use against its limit, and what to do when it is past.
    A dry run shows a shortfall in red and goes on (``display.checks(rows, fail=not dry_run)``), as it does
    for a missing credential; its detail says a real run stops there."""
    detail = (
        f"{check['projected use %']}% of the usable space after the migration (limit {check['limit %']}%; "
        f"{check['use % now']}% now): {check['projected need GB']} GB projected, {check['free GB']} GB free"
    )
    if not check["ok"]:
        detail += "; free space or move base_path to a larger volume, then run again"
        if dry_run:
            detail += " (a real run stops here)"
    return {"check": "projected disk use", "ok": check["ok"], "detail": detail}


def log_start(base_path: str, run_dir: str, dry_run: bool) -> dict:
    """Append "preflight started" to the migration log (a real run); a dry run only says where it would."""
    layout = Layout.from_params(base_path)
    if dry_run:
        return {"migration log": str(layout.migration_log), "appended": "nothing (dry run)"}
    from . import runlog

    runlog.log(layout, "00_preflight", "preflight started", run_dir=run_dir, base_path=str(layout.base))
    return {"migration log": str(layout.migration_log), "appended": "preflight started"}


def credential_checks(creds: list[dict], dry_run: bool) -> list[dict]:
    """One check a required variable of ``credentials_table``: set or not. A dry run shows a missing one in
    red and goes on (``display.checks(rows, fail=not dry_run)``); its detail says a real run stops there."""
    rows = []
    for c in creds:
        if not c["required"]:
            continue
        detail = c["purpose"]
        if not c["set"] and dry_run:
            detail += " (not set: a real run stops here)"
        rows.append({"check": f"{c['variable']} set", "ok": c["set"], "detail": detail})
    return rows


def postgres_step(dsn_env: str, tables: list[str], base_path: str, scratch_db: str, dry_run: bool) -> dict:
    """Phase 00's PostgreSQL backup (``pg_backup.backup``), or in a dry run what it would dump where
    (``postgres_plan``, connecting to nothing)."""
    if dry_run:
        return postgres_plan(dsn_env, tables, base_path, scratch_db)
    from . import pg_backup

    return pg_backup.backup(dsn_env, tables, base_path, scratch_db)


def postgres_checks(pg: dict, base_path: str) -> list[dict]:
    """The restore check of a backup ``postgres_step`` made, logged to the migration log; none when no
    backup was made (skipped, or a dry run's plan)."""
    if pg.get("status") != "ok":
        return []
    from . import runlog

    restore = pg["restore_check"]
    runlog.log(
        Layout.from_params(base_path),
        "00_preflight",
        "postgres backup ok",
        dump=pg["dump"],
        sha256=pg["sha256"],
        rows=pg["row_counts"],
    )
    return [{"check": "PostgreSQL dump restorable", "ok": restore["ok"], "detail": restore["method"]}]


def handoff_record(
    folders: list[dict],
    config_json,
    src_info: dict,
    disk_result: dict,
    pg: dict,
    *,
    base_path: str,
    run_dir: str,
    dry_run: bool,
) -> dict:
    """Record phase 00's hand-off (the layout, ``config.json``'s path, the source, the disk check, the
    PostgreSQL backup) and, in a real run, log "preflight passed" with the source's document count."""
    from . import handoff, runlog

    results = {
        "layout": folders,
        "config_json": str(config_json),
        "source": src_info,
        "disk": disk_result,
        "postgres_backup": pg,
    }
    rec = handoff.record("00_preflight", results, base_path=base_path, run_dir=run_dir, dry_run=dry_run)
    if not dry_run:
        layout = Layout.from_params(base_path)
        runlog.log(layout, "00_preflight", "preflight passed", documents=src_info.get("documents"))
    return rec


def source_check(
    src, index_id: str, index_name: str, project_name: str, organization_id: str = "", sample_docs: int = 20
) -> dict:
    """Reach the source index; count its documents; estimate chunks from a sample of documents.

    A source a dry run did not connect to (``source.open_for``: no source named, no key) gives the same
    keys, each a placeholder or None: the disk projection then rests on ``expected_chunks``."""
    from .source import find_pipeline

    if not src.connected:
        return {
            "source": src.describe(),
            "project": project_name,
            "index": index_name or NOT_REACHED,
            "index id": index_id or NOT_REACHED,
            "documents": None,
            "chunks per document (sample)": None,
            "estimated chunks": None,
            "embedding": None,
            "embedding model": NOT_REACHED,
            "payload bytes per chunk (sample)": None,
            "vectors served (sample)": None,
            "not contacted": src.not_connected,
        }
    project, pipeline = find_pipeline(src, index_id, index_name, project_name, organization_id)
    return describe_source(src, project, pipeline, sample_docs)


def describe_source(src, project, pipeline, sample_docs: int = 20) -> dict:
    """``source_check`` for a pipeline already found (read-only: one listing page, a sample's chunks)."""
    from .extract import fetch_chunks, list_pages

    docs, total = next(list_pages(src, pipeline.id, max(1, sample_docs)))
    sample = [(d["id"], fetch_chunks(src, pipeline.id, d["id"]) or []) for d in docs]
    sizes = [len(nodes) for _, nodes in sample]
    per_doc = (sum(sizes) / len(sizes)) if sizes else 0.0
    payload, served = sample_payload(sample)
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
        # for the disk projection: what Chroma stores per chunk, and whether phase 01 must re-embed
        "payload bytes per chunk (sample)": payload,
        "vectors served (sample)": served,
    }


def sample_payload(sample: list[tuple[str, list[dict]]]) -> tuple[int | None, bool]:
    """(mean ``disk.payload_bytes`` of the sampled chunks or None without any, whether every sampled chunk
    came with its vector) for ``[(document id, chunks as the source serves them)]``."""
    from .export_format import node_to_row

    sizes, served = [], True
    for doc_id, nodes in sample:
        for k, node in enumerate(nodes):
            try:
                sizes.append(disk.payload_bytes(node_to_row(doc_id, k, node)))
            except Exception:  # noqa: BLE001 -- a chunk phase 01 would refuse: it takes no room in Chroma
                continue
            served = served and bool(node.get("embedding"))
    return (round(sum(sizes) / len(sizes)) if sizes else None), (served and bool(sizes))


# ---------------------------------------------------------------- dry runs: what a phase would do
# A dry run records its plan in the run folder (``handoff.record(..., dry_run=True)``) with the keys later
# phases read. Values only a real run can know are placeholders in angle brackets, stated as such.
PLANNED_EXPORT_ID = "<export id of the real run>"
NOT_REACHED = "<unknown until the source is reached>"
PLANNED_MANIFEST_SHA256 = "<sha256 of the real export's manifest>"


def is_planned(value) -> bool:
    """A placeholder a dry run recorded for a value only the real run will know."""
    return isinstance(value, str) and re.search(r"<[^<>]+>", value) is not None


def postgres_plan(dsn_env: str, tables: list[str], base_path: str, scratch_db: str = "") -> dict:
    """Dry run of phase 00's PostgreSQL backup: what would be dumped where; nothing is connected to."""
    if not dsn_env:
        return {"status": "skipped", "reason": "no pg_dsn_env in the params: no PostgreSQL backup asked for"}
    dest = Layout.from_params(base_path).backup / "postgres"
    return {
        "status": "planned (dry run)",
        "DSN variable": dsn_env,
        "DSN variable set": bool(os.environ.get(dsn_env)),
        "tables": list(tables),
        "would dump to": str(dest / "<database>-<UTC time>.dump") + " (pg_dump -Fc, 0600, sha256)",
        "restore check": f"restore into {scratch_db}" if scratch_db else "pg_restore --list",
    }


def _complete_export(path: str):
    """The export at ``path`` when it exists and is complete; None when a dry run only planned it."""
    from . import export_format

    if not path or is_planned(path) or not (Path(path) / "manifest.json").exists():
        return None
    return export_format.open_export(path)


def _chroma_present(mode: str, base_path: str) -> bool:
    """Whether Chroma may be opened in a dry run: a server, or an embedded directory that already exists
    (``PersistentClient`` creates its directory, which a dry run must not)."""
    return mode != "embedded" or Layout.from_params(base_path).chroma_db.exists()


def collection_plan(
    h01: dict | None,
    export_dir: str,
    collection_name: str,
    versioned: bool,
    hnsw,
    chroma_mode: str = "embedded",
    base_path: str = "",
    chroma_host: str = "127.0.0.1",
    chroma_port: int = 8000,
) -> dict:
    """Dry run of phase 02: the collection it would create or verify, with the keys of its hand-off.

    Opens Chroma only where it already exists, and then only reads: an existing collection is checked
    the way phase 02 checks it (and a mismatch stops the dry run, as it would stop the real one), but
    nothing is modified (``ef_search`` is reported, not set)."""
    from . import chroma_target

    h01 = h01 or {}
    path = export_dir or h01.get("export_dir", "")
    exp = _complete_export(path)
    if exp is not None:
        model = h01.get("embedding_model") or ",".join(exp.manifest["embeddings"]["computed_with"]) or "cloud"
        provenance = chroma_target.provenance(exp, model)
        name = chroma_target.collection_name(collection_name, exp.manifest["export_id"], versioned)
    else:
        provenance = {
            "source_index_id": h01.get("index_id"),
            "source_index_name": h01.get("index_name"),
            "export_id": PLANNED_EXPORT_ID,
            "export_manifest_sha256": PLANNED_MANIFEST_SHA256,
            "embedding_model": h01.get("embedding_model"),
            "dimension": h01.get("embedding_dimension"),
        }
        name = f"{collection_name}__{PLANNED_EXPORT_ID}" if versioned else collection_name
    layout = Layout.from_params(base_path)
    status = "would create (and create chroma_db/)" if chroma_mode == "embedded" else "would create"
    if _chroma_present(chroma_mode, base_path):
        client = chroma_target.open_client(chroma_mode, base_path, chroma_host, chroma_port)
        status = _check_existing(client, name, hnsw, provenance)
    return {
        "collection": name,
        "status": status,
        "chroma_mode": chroma_mode,
        "chroma_host": chroma_host,
        "chroma_port": chroma_port,
        "chroma_path": str(layout.chroma_db),
        "export_dir": str(path),
        "hnsw": hnsw.configuration()["hnsw"],
        "provenance": provenance,
    }


def _check_existing(client, name: str, hnsw, provenance: dict) -> str:
    """``chroma_target.create_or_verify`` without writing: what phase 02 would do with ``name``."""
    from . import chroma_target

    existing = {c.name if hasattr(c, "name") else c for c in client.list_collections()}
    if name not in existing:
        return "would create"
    col = client.get_collection(name, embedding_function=None)
    cur = chroma_target.current_hnsw(col)
    want = hnsw.configuration()["hnsw"]
    diffs = [
        f"{k}: existing {cur.get(k)!r}, wanted {want[k]!r}"
        for k in chroma_target.IMMUTABLE_HNSW
        if cur.get(k) is not None and cur.get(k) != want[k]
    ]
    meta = col.metadata or {}
    unknown = [k for k, v in provenance.items() if is_planned(v)]
    for k in ("source_index_id", "export_manifest_sha256", "embedding_model", "dimension"):
        if k in provenance and k not in unknown and meta.get(k) != provenance[k]:
            diffs.append(f"{k}: existing {meta.get(k)!r}, this load {provenance[k]!r}")
    if diffs:
        raise chroma_target.CollectionMismatch(
            f"a real run would stop: collection {name!r} exists with a different configuration or source:"
            "\n  - " + "\n  - ".join(diffs)
        )
    note = "would verify"
    if cur.get("ef_search") != want["ef_search"]:
        note += f" and set ef_search {cur.get('ef_search')} -> {want['ef_search']}"
    if "export_manifest_sha256" in unknown:
        note += (
            " (exists: a real run compares it with the new export, whose checksum differs from any "
            "earlier one; versioned_collection: true gives a new export its own collection)"
        )
    return note


def load_plan(h02: dict, h01: dict | None, load_batch_size: int, base_path: str) -> dict:
    """Dry run of phase 03: how many records it would load, in how many batches, into which collection;
    with the keys of its hand-off (``handoff.verified_collection`` reads them), planned where unknown."""
    from . import chroma_target

    exp = _complete_export(h02["export_dir"])
    records = exp.manifest["total_chunks"] if exp else int((h01 or {}).get("total_chunks") or 0)
    sha = exp.manifest_sha256 if exp else h02["provenance"]["export_manifest_sha256"]
    max_batch, now = None, None
    if _chroma_present(h02["chroma_mode"], base_path) and not is_planned(h02["collection"]):
        client = chroma_target.open_client(
            h02["chroma_mode"], base_path, h02["chroma_host"], h02["chroma_port"]
        )
        max_batch = int(client.get_max_batch_size())
        names = {c.name if hasattr(c, "name") else c for c in client.list_collections()}
        now = (
            client.get_collection(h02["collection"], embedding_function=None).count()
            if h02["collection"] in names
            else None
        )
    batch = max(1, min(int(load_batch_size), max_batch or int(load_batch_size)))
    cp_path = Layout.from_params(base_path).state / f"load-{h02['collection']}.json"
    cp = atomic.read_json(cp_path) if cp_path.exists() else {}
    done = cp.get("loaded", 0) if cp.get("export_manifest_sha256") == sha and exp else 0
    rows = [sh["rows"] for sh in exp.shards] if exp else [records]
    if done:  # a resumed load starts at the checkpoint's shard and row
        rows = [r - (cp["row"] if i == cp["shard"] else 0) for i, r in enumerate(rows) if i >= cp["shard"]]
    batches = sum(math.ceil(r / batch) for r in rows if r > 0)
    return {
        "collection": h02["collection"],
        "records in export": records if exp else f"{records} (estimated by phase 01's dry run)",
        "records now in the collection": now,
        "already loaded (checkpoint)": done,
        "would load": records - done,
        "batch size": batch if max_batch else f"{batch} (capped at Chroma's maximum once it is opened)",
        "batches": batches,
        "count": records,
        "export_manifest_sha256": sha,
        "export_dir": h02["export_dir"],
        **{k: h02[k] for k in ("chroma_mode", "chroma_path", "chroma_host", "chroma_port")},
    }
