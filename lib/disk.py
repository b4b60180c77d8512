"""Disk: a calibrated projection of what the migration writes, free space, and a guard for phase 03.

**Projection.** Every byte the migration puts on disk, component by component, from formulas fitted to
measurements (``benchmarks/disk_calibration.py`` prints them; re-run it after a chromadb upgrade and update
the constants below). N chunks, D dimensions, P payload bytes per chunk (the UTF-8 bytes of the chunk's
text plus the metadata keys and values the loader writes, ``_node_content`` included: ``payload_bytes``):

- the export (phase 01, Parquet, zstd): float32 vectors barely compress, text and metadata do;
- Chroma (phase 03): SQLite keeps each record's metadata, an index over its string values and a full-text
  index of the document (about 5 bytes per payload byte); HNSW keeps the vector and its links; and while a
  batch is applied Chroma's write-ahead log holds the whole batch (vectors included) in SQLite, whose pages
  stay in the file afterwards;
- the embedding cache (phase 01 when it re-embeds): one SQLite row per vector, plus its WAL;
- phase 07: a snapshot of ``chroma_db/`` under ``backup/`` and a new collection version inside Chroma, each
  about as large as the collection;
- a sparse index (none is built yet: an estimate, flagged as such, only when asked).

Measured 2026-11-28 with chromadb 1.5.9 (embedded ``PersistentClient``, the runbook's own loader and HNSW
settings: cosine, ef_construction 100, max_neighbors 16), Python 3.11.7, Linux 6.18 x86_64 (2 vCPU Xeon, ext4),
allocated bytes (``st_blocks``): 2,000 / 5,000 / 10,000 chunks x 384 / 768 / 1536 dims x two chunk shapes
(P = 3,690: 800 characters of Korean and English, 11 metadata keys, ``_node_content`` 1.5 KB; P = 1,680:
225 characters, one key), batches of 5,000. Per chunk at 10,000 chunks (P = 3,690 / 1,680):

    dims   export        Chroma           embedding cache
    384    2,078 / 1,690   23,629 / 12,443   2,196
    768    3,506 / 3,117   26,295 / 14,547   4,250
    1536   6,357 / 5,966   30,998 / 19,581   8,348

The fits below are rounded up and under-predict no measurement by more than 2%; ``MARGIN`` (1.25) is
applied on top of them. (The issue's 9.9 KB per 384-d chunk is this formula at P of about 1,000 bytes.)

**Guard.** ``guard(path, bytes_per_record)`` is phase 03's ``before_batch``: it raises ``DiskFull`` before a
batch that would leave less than the reserve free, so the load stops after its last checkpoint and resumes
when run again. ``translate`` turns Chroma's errors of a full disk (``InternalError: Error in compaction:
Failed to apply logs...``, which never mention the disk) into the same ``DiskFull``.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import RunbookError

MEASURED = (
    "measured 2026-11-28, chromadb 1.5.9, Linux x86_64 (benchmarks/disk_calibration.py): "
    "2k-10k chunks x 384/768/1536 dims"
)
MARGIN = 1.25  # on top of every measured formula
DEFAULT_BATCH = 5000  # phase 03's default load_batch_size: the records Chroma's log holds at once
DEFAULT_PAYLOAD_BYTES = 3700  # P of the calibration's realistic chunk: used without a sample of the source
DEFAULT_RESERVE = 64 * 2**20  # the guard keeps this much free beyond a batch's projected need
EXPORT_SHARD_ROWS = 20000  # phase 01 default: re-embedding rewrites one shard at a time beside the old one


@dataclass(frozen=True)
class Fit:
    """bytes = fixed + N * (per_chunk + per_dim * D + per_payload * P)
    + min(N, batch) * (log + log_per_dim * D + log_per_payload * P)  (the log terms: Chroma only)."""

    fixed: float
    per_chunk: float
    per_dim: float
    per_payload: float = 0.0
    log: float = 0.0
    log_per_dim: float = 0.0
    log_per_payload: float = 0.0

    def per_record(self, dim: int, payload: float) -> float:
        return self.per_chunk + self.per_dim * dim + self.per_payload * payload

    def log_per_record(self, dim: int, payload: float) -> float:
        return self.log + self.log_per_dim * dim + self.log_per_payload * payload

    def bytes(self, chunks: int, dim: int, payload: float, batch: int = DEFAULT_BATCH) -> float:
        if chunks <= 0:
            return 0.0
        return (
            self.fixed
            + chunks * self.per_record(dim, payload)
            + min(chunks, max(1, batch)) * self.log_per_record(dim, payload)
        )


# least-squares fits (printed by the calibration script), rounded up
# export: fixed 647 KB, -124 + 3.71 D + 0.19 P per chunk (zstd shrinks float32 a little, text a lot)
EXPORT = Fit(fixed=1 * 2**20, per_chunk=0, per_dim=4.0, per_payload=0.25)
# Chroma: fixed 425 KB, 211 + 4.07 D + 5.09 P per chunk, and for min(N, batch) records 182 + 4.43 D + 1.18 P
CHROMA = Fit(
    fixed=512 * 2**10,
    per_chunk=256,
    per_dim=4.1,
    per_payload=5.1,
    log=256,
    log_per_dim=4.5,
    log_per_payload=1.2,
)
# embedding cache: 148 + 5.34 D per vector (a 1536-d vector spills to overflow pages), the WAL up to ~4.4 MB
CACHE = Fit(fixed=8 * 2**20, per_chunk=160, per_dim=5.4)
# a sparse index is not built yet: (token id, weight) pairs for about a quarter of the payload's bytes,
# 8 bytes each, kept twice (the vectors and the inverted index) -- an estimate, not a measurement
SPARSE_PER_PAYLOAD_BYTE = 4.0


def payload_bytes(row: dict) -> int:
    """Bytes of text and metadata Chroma stores for one export row: the document's UTF-8 text plus each
    metadata key and value the loader writes (``load.to_chroma_metadata``, ``_node_content`` included)."""
    from .load import to_chroma_metadata

    md, _ = to_chroma_metadata(row)
    n = len((row.get("text") or "").encode("utf-8", "surrogatepass"))
    for k, v in md.items():
        n += len(str(k).encode("utf-8", "surrogatepass"))
        n += len(v.encode("utf-8", "surrogatepass")) if isinstance(v, str) else 8
    return n


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def record_bytes(dim: int, payload: float | None = None) -> int:
    """What one more record costs Chroma while it is loaded (its share of the collection and of the log),
    with the margin: ``bytes_per_record`` for ``guard`` in phase 03."""
    p = DEFAULT_PAYLOAD_BYTES if payload is None else payload
    return int(MARGIN * (CHROMA.per_record(dim, p) + CHROMA.log_per_record(dim, p)))


def export_payload(export_dir: str | os.PathLike, sample: int = 500) -> float | None:
    """Mean ``payload_bytes`` of the first ``sample`` chunks of an export (None when it has none)."""
    from . import export_format

    sizes = []
    for batch in export_format.open_export(export_dir).iter_chunk_batches(batch_size=sample):
        sizes.extend(payload_bytes(r) for r in batch.drop_columns(["embedding"]).to_pylist())
        if len(sizes) >= sample:
            break
    return sum(sizes) / len(sizes) if sizes else None


def projection(
    chunks: int,
    dim: int,
    reembed: bool,
    snapshots: int,
    sparse_index: bool = False,
    payload_bytes: float | None = None,
    versions: int = 0,
    batch_size: int = DEFAULT_BATCH,
) -> list[dict]:
    """Rows ``{component, bytes, basis}`` of what the migration writes, then a ``total`` row.

    ``reembed``: phase 01 computes vectors (the embedding cache fills, a shard is rewritten at a time);
    ``snapshots``: copies of ``chroma_db/`` phase 07 keeps under ``backup/chroma_snapshots/``; ``versions``:
    collection versions phase 07 builds beside the verified one inside Chroma; ``payload_bytes``: P measured
    on a sample of the source (``DEFAULT_PAYLOAD_BYTES`` otherwise); ``batch_size``: phase 03's batch."""
    chunks, dim = max(0, int(chunks)), max(0, int(dim))
    sampled = payload_bytes is not None and payload_bytes > 0
    p = float(payload_bytes) if sampled else float(DEFAULT_PAYLOAD_BYTES)
    shape = f"{chunks:,} chunks x {dim}-d, {p:,.0f} B of text+metadata per chunk " + (
        "(sampled from the source)" if sampled else "(the calibration's typical chunk: no sample)"
    )
    margin = f"x{MARGIN} margin"
    rows = []

    export = EXPORT.bytes(chunks, dim, p, batch_size)
    basis = f"Parquet (zstd) ~{EXPORT.per_record(dim, p):,.0f} B/chunk"
    if reembed and chunks:
        export += min(chunks, EXPORT_SHARD_ROWS) * EXPORT.per_record(dim, p)
        basis += f", plus one shard of {min(chunks, EXPORT_SHARD_ROWS):,} chunks rewritten while re-embedding"
    rows.append({"component": "export", "bytes": int(MARGIN * export), "basis": f"{basis}; {margin}"})

    chroma = CHROMA.bytes(chunks, dim, p, batch_size)
    rows.append(
        {
            "component": "chroma",
            "bytes": int(MARGIN * chroma),
            "basis": (
                f"~{CHROMA.per_record(dim, p):,.0f} B/chunk (SQLite metadata, string index, full-text index, "
                f"HNSW) + ~{CHROMA.log_per_record(dim, p):,.0f} B/record for the {min(chunks, batch_size):,} "
                f"records of one batch in Chroma's log; {margin}"
            ),
        }
    )

    if reembed:
        cache = CACHE.bytes(chunks, dim, p)
        basis = f"SQLite ~{CACHE.per_record(dim, p):,.0f} B/vector + {_mb(CACHE.fixed)} WAL; {margin}"
    else:
        cache, basis = 0.0, "no re-embedding: phase 01 keeps the source's vectors and fills no cache"
    rows.append({"component": "embedding cache", "bytes": int(MARGIN * cache), "basis": basis})

    n_snap = max(0, int(snapshots))
    rows.append(
        {
            "component": "snapshots (phase 07)",
            "bytes": int(MARGIN * chroma * n_snap),
            "basis": f"{n_snap} {'copy' if n_snap == 1 else 'copies'} of chroma_db/ under backup/chroma_snapshots/, "
            "each as large as Chroma",
        }
    )
    n_ver = max(0, int(versions))
    if n_ver:
        rows.append(
            {
                "component": "collection versions (phase 07)",
                "bytes": int(MARGIN * chroma * n_ver),
                "basis": f"{n_ver} new collection {'version' if n_ver == 1 else 'versions'} inside chroma_db/, "
                "each a copy of the collection",
            }
        )
    if sparse_index:
        rows.append(
            {
                "component": "sparse index",
                "bytes": int(MARGIN * chunks * SPARSE_PER_PAYLOAD_BYTE * p),
                "basis": (
                    f"estimate, not measured (no sparse index is built yet): ~{SPARSE_PER_PAYLOAD_BYTE:g} B per "
                    f"payload byte; x{MARGIN} margin"
                ),
            }
        )
    else:
        rows.append({"component": "sparse index", "bytes": 0, "basis": "none yet (no sparse index is built)"})
    rows.append(
        {
            "component": "total",
            "bytes": sum(r["bytes"] for r in rows),
            "basis": f"{shape}; {MEASURED}, x{MARGIN} margin",
        }
    )
    return rows


def total(rows: list[dict]) -> int:
    """The ``total`` row of ``projection``."""
    return next(r["bytes"] for r in rows if r["component"] == "total")


# ---------------------------------------------------------------- free space
@dataclass(frozen=True)
class Usage:
    total: int
    used: int
    free: int


def existing(path: str | os.PathLike) -> Path:
    """``path`` or its nearest existing parent (a folder not created yet lives on its parent's volume)."""
    p = Path(os.path.abspath(os.fspath(path) or "."))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the volume holding ``path``."""
    p = existing(path)
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def use_pct(u: Usage, extra: int = 0) -> float:
    """How full the volume is (with ``extra`` more bytes written), in percent of the space a user can fill:
    ``(used + extra) / (used + free)``, what ``df`` shows as Use%. Blocks reserved for root count in neither
    part: ``used / total`` would read a volume with reserved blocks as emptier than it is for the migration
    (and free + used would not add up to the total shown beside it)."""
    usable = u.used + u.free
    return (u.used + extra) / usable * 100 if usable > 0 else 100.0


def reserved(u: Usage) -> int:
    """Bytes of the volume neither used nor free for this user (reserved for root, file system overhead)."""
    return max(0, u.total - u.used - u.free)


def usage(path: str | os.PathLike) -> Usage:
    """Total, used and free bytes of the volume holding ``path`` (free: what this process may write)."""
    du = shutil.disk_usage(existing(path))
    return Usage(du.total, du.used, du.free)


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the volume holding ``path`` (statvfs of the nearest existing parent)."""
    return usage(path).free


class DiskFull(RunbookError, RuntimeError):
    """The volume holding ``path`` has too little free space (phase 03 stops; it resumes when run again)."""

    def __init__(self, path: str | os.PathLike, free: int, needed: int, detail: str = ""):
        self.path = str(path)
        self.volume = str(mount_point(path)) if str(path) else "?"
        self.free = int(free)
        self.needed = int(needed)
        self.detail = detail
        super().__init__(self._message())

    def _message(self) -> str:
        if self.path:
            what = f"disk full: the volume mounted at {self.volume} (holding {self.path}) has {_mb(self.free)} free"
        else:
            what = "disk full: the volume Chroma writes to is full"
        if self.needed:
            what += f", {_mb(self.needed)} needed"
        if self.detail:
            what += f" ({self.detail})"
        return (
            what + ". Free space or move base_path to a larger volume, then run phase 03 again: the load "
            "resumes from its checkpoint (collections already in Chroma are intact)."
        )


def guard(path: str | os.PathLike, bytes_per_record: float, reserve_bytes: int = DEFAULT_RESERVE):
    """``before_batch(n)`` for ``load.load_export``: raises ``DiskFull`` before a batch of ``n`` records whose
    projected ``n * bytes_per_record`` would leave less than ``reserve_bytes`` free on the volume of ``path``."""

    def before_batch(n: int) -> None:
        free = free_bytes(path)
        need = int(n * bytes_per_record)
        if free - need < reserve_bytes:
            raise DiskFull(
                path,
                free,
                need + reserve_bytes,
                f"the next batch of {n:,} records needs about {_mb(need)} plus a reserve of "
                f"{_mb(reserve_bytes)}; stopped before writing it",
            )

    return before_batch


def guard_for_export(
    chroma_path: str | os.PathLike, export_dir: str | os.PathLike, reserve_bytes: int = DEFAULT_RESERVE
):
    """``guard`` for loading ``export_dir`` into the Chroma at ``chroma_path``: bytes per record from the
    calibration at the export's dimension and the payload of its first chunks (phase 03's ``before_batch``)."""
    from . import export_format

    dim = export_format.main_dimension(export_format.open_export(export_dir))
    return guard(chroma_path, record_bytes(dim, export_payload(export_dir)), reserve_bytes)


# Chroma 1.5.9 on a full disk: "Error in compaction: Failed to apply logs to the metadata segment" (the add),
# "Error sending backfill request to compactor: ..." (every call after it until space is freed)
_FULL_TEXTS = (
    "no space left",
    "database or disk is full",
    "disk is full",
    "disk full",
    "sqlite_full",
    "enospc",
    "os error 28",
    "errno 28",
    "[errno 28]",
    "not enough space",
)
_LOG_TEXTS = ("error in compaction", "failed to apply logs", "backfill request to compactor")
# a failure to apply Chroma's log counts as a full disk when this little is free afterwards (about what one
# batch's metadata needs: the failed write is rolled back, so some of what it took is free again)
LOW_FREE_BYTES = 256 * 2**20
LOW_FREE_FRACTION = 0.25  # of a small volume


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def translate(exc: BaseException, path: str | os.PathLike = "") -> BaseException:
    """A ``DiskFull`` naming the disk when ``exc`` (or what caused it) is a full disk; otherwise ``exc`` itself.

    Explicit signs (ENOSPC, "No space left", SQLite's "database or disk is full") are enough. Chroma's
    own "Error in compaction: Failed to apply logs..." says nothing of the cause: it counts as a full disk
    when the volume of ``path`` has little left (under 256 MB, or a quarter of a smaller volume); without a
    path it is left alone."""
    if isinstance(exc, DiskFull):
        return exc
    chain = list(_chain(exc))
    texts = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    low = texts.lower()
    explicit = any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain) or any(
        t in low for t in _FULL_TEXTS
    )
    log_failure = any(t in low for t in _LOG_TEXTS)
    if not (explicit or log_failure) or (not explicit and not str(path)):
        return exc
    try:
        u = usage(path) if str(path) else None
    except OSError:
        u = None
    if not explicit:
        if u is None or u.free >= min(LOW_FREE_BYTES, LOW_FREE_FRACTION * u.total):
            return exc
    first = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return DiskFull(path, u.free if u else 0, 0, f"Chroma said {first[:200]!r}")
