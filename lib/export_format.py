"""The export: ``manifest.json`` plus Parquet shards, checksummed, written so nothing is half-visible.

Layout of an export folder::

    manifest.json            present only when the export is complete and consistent
    manifest.partial.json    progress of an export in flight (committed shards only)
    chunks-00000.parquet     one row per chunk (see CHUNK_SCHEMA)
    documents-00000.parquet  the documents whose chunks are in chunks-00000 (whole documents per shard)

A shard pair appears in a manifest only after both files are completely written, fsynced and renamed
into place; files that no manifest names are leftovers of a killed run and are removed on resume.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import atomic, records
from .errors import RunbookError

FORMAT = "welno-runbook-export/1"
CHUNK_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("document_id", pa.string()),
        ("seq", pa.int32()),  # order of the chunk within its document
        ("text", pa.string()),
        ("text_sha256", pa.string()),
        ("metadata_json", pa.string()),  # extra_info exactly as the API returned it
        ("relationships_json", pa.string()),
        ("node_extra_json", pa.string()),  # excluded keys, templates, mimetype, class_name
        ("start_char_idx", pa.int64()),
        ("end_char_idx", pa.int64()),
        ("embedding", pa.list_(pa.float32())),  # null where the source served none (yet)
        ("embedding_source", pa.string()),  # "cloud" | "computed" | null
    ]
)
DOC_SCHEMA = pa.schema(
    [
        ("document_id", pa.string()),
        ("text", pa.string()),
        ("metadata_json", pa.string()),
        ("content_sha256", pa.string()),  # of text + metadata: a changed document is re-fetched whole
        ("chunk_count", pa.int32()),
    ]
)
NODE_EXTRA_KEYS = (
    "excluded_embed_metadata_keys",
    "excluded_llm_metadata_keys",
    "metadata_template",
    "metadata_seperator",
    "text_template",
    "mimetype",
    "class_name",
)


class ExportError(RunbookError, RuntimeError):
    pass


def dumps(obj, finite: bool = False) -> str:
    """Canonical JSON: sorted keys, compact, UTF-8 as it is (Korean stays Korean); NaN, Infinity, integers
    of any size and lone surrogates are kept (``records.dumps``), never turned into null or an error."""
    return records.dumps(obj, finite=finite)


def sha256_text(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()


def unstorable(row: dict) -> str | None:
    """Why an export row (as :func:`node_to_row` makes it) cannot be written at all (Parquet holds UTF-8 text
    only), or None."""
    for name in ("chunk_id", "document_id", "text"):
        v = row.get(name)
        if name != "text" and not isinstance(v, str):
            return f"{name} is {type(v).__name__}, not a string"
        if isinstance(v, str) and not records.is_utf8(v):
            return f"{name} has a lone surrogate (not valid Unicode text)"
    for name in ("metadata_json", "relationships_json"):
        # written by ``dumps`` (compact JSON), so an object is what opens with "{": reading it back to see
        # was 8% of the exporter's CPU per chunk
        if not row[name].startswith("{"):
            return f"{name.split('_')[0]} is not a JSON object"
    return None


def document_hash(text: str, metadata: dict) -> str:
    return sha256_text(text + "\x00" + dumps(metadata or {}))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def node_to_row(document_id: str, seq: int, node: dict, finite: bool = False) -> dict:
    """One chunk (TextNode JSON from ``/chunks``) as an export row. ``finite``: the node was read by orjson
    (``records.loads_checked`` said so), so it holds no NaN or Infinity and its JSON parts are written
    without looking for them (that walk was most of the exporter's CPU per chunk)."""
    text = node.get("text") or ""
    emb = node.get("embedding")
    return {
        "chunk_id": node["id_"]
        if node.get("id_") is not None
        else node.get("id"),  # "" stays "" (refused at load)
        "document_id": document_id,
        "seq": seq,
        "text": text,
        "text_sha256": sha256_text(text),
        "metadata_json": dumps(node.get("extra_info") or node.get("metadata") or {}, finite=finite),
        "relationships_json": dumps(node.get("relationships") or {}, finite=finite),
        "node_extra_json": dumps({k: node.get(k) for k in NODE_EXTRA_KEYS if k in node}, finite=finite),
        "start_char_idx": node.get("start_char_idx"),
        "end_char_idx": node.get("end_char_idx"),
        "embedding": emb,
        "embedding_source": "cloud" if emb else None,
    }


def row_to_node_json(row: dict) -> dict:
    """Back to LlamaCloud's TextNode JSON (as served by ``/chunks``)."""
    node = {
        "id_": row["chunk_id"],
        "embedding": None,
        "extra_info": json.loads(row["metadata_json"]),
        "relationships": json.loads(row["relationships_json"]),
        "text": row["text"],
        "start_char_idx": row["start_char_idx"],
        "end_char_idx": row["end_char_idx"],
    }
    node.update(json.loads(row["node_extra_json"] or "{}"))
    return node


def row_to_llama_node(row: dict):
    """A LlamaIndex ``TextNode`` equal to the exported chunk (metadata, relationships, offsets)."""
    from llama_index.core.schema import TextNode

    extra = json.loads(row["node_extra_json"] or "{}")
    kwargs = {
        k: extra[k]
        for k in (
            "excluded_embed_metadata_keys",
            "excluded_llm_metadata_keys",
            "metadata_template",
            "text_template",
            "mimetype",
        )
        if extra.get(k) is not None
    }
    if extra.get("metadata_seperator") is not None:
        kwargs["metadata_separator"] = extra["metadata_seperator"]
    return TextNode(
        id_=row["chunk_id"],
        text=row["text"],
        metadata=json.loads(row["metadata_json"]),
        relationships=json.loads(row["relationships_json"]),
        start_char_idx=row["start_char_idx"],
        end_char_idx=row["end_char_idx"],
        **kwargs,
    )


# TextNode's defaults (llama-index-core 0.14), for the rows that do not set their own
_DEFAULTS = ("{metadata_str}\n\n{content}", "{key}: {value}", "\n")


@functools.lru_cache(maxsize=256)
def _embed_settings(node_extra_json: str) -> tuple[str, str, str, frozenset] | None:
    """(text template, metadata template, separator, keys excluded from embedding) of a chunk's node extras
    with TextNode's defaults, or None where TextNode would validate, coerce or refuse them. Chunks of one
    index share a few distinct extras, so each is read once."""
    extra = json.loads(node_extra_json or "{}")
    if not isinstance(extra, dict):
        return None
    got = [extra.get(k) for k in ("text_template", "metadata_template", "metadata_seperator")]
    tt, mt, sep = (d if v is None else v for v, d in zip(got, _DEFAULTS, strict=True))
    excluded = extra.get("excluded_embed_metadata_keys")
    excluded = [] if excluded is None else excluded
    if not (all(type(x) is str for x in (tt, mt, sep)) and type(excluded) is list):
        return None
    if not all(type(k) is str for k in excluded):
        return None
    return tt, mt, sep, frozenset(excluded)


def _embed_text_direct(row: dict) -> str | None:
    """``TextNode.get_content(MetadataMode.EMBED)`` computed from the row without building the node (whose
    validation was most of the re-embedding plan's CPU per chunk), or None where the row holds anything
    TextNode would validate, coerce or refuse (then the node is built). A property test holds them equal."""
    settings = _embed_settings(row["node_extra_json"])
    meta = json.loads(row["metadata_json"])
    text = row["text"]
    if settings is None or not isinstance(meta, dict) or type(text) is not str:
        return None
    tt, mt, sep, skip = settings
    try:
        md = sep.join([mt.format(key=k, value=str(v)) for k, v in meta.items() if k not in skip]).strip()
        return tt.format(content=text, metadata_str=md).strip() if md else text
    except Exception:  # a template TextNode fails on too: let it say so
        return None


def embed_text(row: dict) -> str:
    """The text a LlamaIndex pipeline embeds for a chunk: metadata not excluded from embedding, then text."""
    text = _embed_text_direct(row)
    if text is None:
        from llama_index.core.schema import MetadataMode

        text = row_to_llama_node(row).get_content(metadata_mode=MetadataMode.EMBED)
    if not records.is_utf8(text):  # a lone surrogate in metadata: models take Unicode text only (input only)
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def read_batches(
    path: str | os.PathLike, columns: list[str] | None = None, batch_size: int = 4096
) -> Iterator[pa.RecordBatch]:
    """The record batches of a Parquet file, read as they are needed. pyarrow's default pre-buffers the
    columns' data ahead of decoding it (a gain on remote object stores, not on a local disk): reading a
    shard of 20,000 chunks of 1,536 dimensions then held 222-225 MB of Arrow memory at its peak, 113-118 MB
    without (the same CPU). The loader's second process, the verifications and the exact search read every
    shard this way."""
    pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file, read as ``read_batches`` reads (without pre-buffering its columns' data): for
    the writers that rewrite a shard (re-embedding, removing documents), the export writer's resume, the
    export's statistics and its document listing."""
    return pq.read_table(path, columns=columns, pre_buffer=False, buffer_size=1 << 20)


def write_table_atomic(table: pa.Table, path: Path) -> str:
    """Write a Parquet file under a temporary name, fsync, rename; return its sha256."""
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return sha256_file(path)


def chunk_table(rows: list[dict]) -> pa.Table:
    cols = {name: [r[name] for r in rows] for name in CHUNK_SCHEMA.names}
    return pa.Table.from_pydict(cols, schema=CHUNK_SCHEMA)


def doc_table(rows: list[dict]) -> pa.Table:
    cols = {name: [r[name] for r in rows] for name in DOC_SCHEMA.names}
    return pa.Table.from_pydict(cols, schema=DOC_SCHEMA)


@dataclass
class Export:
    """A complete export, opened for reading."""

    path: Path
    manifest: dict

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    def iter_chunk_batches(
        self, columns: list[str] | None = None, batch_size: int = 4096
    ) -> Iterator[pa.RecordBatch]:
        for sh in self.shards:
            yield from self.shard_batches(sh, columns, batch_size)

    def shard_batches(
        self, shard: dict, columns: list[str] | None = None, batch_size: int = 4096
    ) -> Iterator[pa.RecordBatch]:
        """The chunks of one shard (an entry of ``shards``), in record batches."""
        yield from read_batches(self.path / shard["chunks_file"], columns, batch_size)

    def iter_chunks(self, columns: list[str] | None = None) -> Iterator[dict]:
        for batch in self.iter_chunk_batches(columns):
            yield from batch.to_pylist()

    def iter_documents(self) -> Iterator[dict]:
        for sh in self.shards:
            yield from read_table(self.path / sh["documents_file"]).to_pylist()

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(self.path / "manifest.json")


def open_export(path: str | os.PathLike) -> Export:
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.exists():
        if (path / "manifest.partial.json").exists():
            raise ExportError(
                f"{path} is an unfinished export (manifest.partial.json only): run phase 01 again "
                "to resume it"
            )
        raise ExportError(f"{path} has no manifest.json: not an export folder")
    m = atomic.read_json(mf)
    if m.get("format") != FORMAT:
        raise ExportError(f"{mf}: format {m.get('format')!r}, expected {FORMAT!r}")
    return Export(path, m)


def main_dimension(exp: Export) -> int:
    """The vector dimension of the export: the manifest's, or the one most vectors have (0: no vectors)."""
    d = exp.manifest.get("embedding_dimension")
    if isinstance(d, int):
        return d
    import pyarrow.compute as pc

    counts: dict[int, int] = {}
    for batch in exp.iter_chunk_batches(columns=["embedding"]):
        lens = pc.list_value_length(batch.column("embedding")).drop_null().to_numpy()
        for dd, n in zip(*np.unique(lens, return_counts=True), strict=True):
            counts[int(dd)] = counts.get(int(dd), 0) + int(n)
    return max(counts, key=counts.get) if counts else 0


def content_digest(export_dir: str | os.PathLike) -> str:
    """One sha256 over the export's content in chunk-id order, independent of sharding and file names:
    two exports of the same index are equal exactly when their digests are."""
    exp = open_export(export_dir)
    rows = []
    for batch in exp.iter_chunk_batches():
        for r in batch.to_pylist():
            emb = r["embedding"]
            rows.append(
                (
                    r["chunk_id"],
                    sha256_text(
                        dumps(
                            [
                                r["document_id"],
                                r["seq"],
                                r["text"],
                                r["metadata_json"],
                                r["relationships_json"],
                                r["node_extra_json"],
                                r["start_char_idx"],
                                r["end_char_idx"],
                                None
                                if emb is None
                                else hashlib.sha256(np.asarray(emb, dtype=np.float32).tobytes()).hexdigest(),
                            ]
                        )
                    ),
                )
            )
    docs = sorted((d["document_id"], d["content_sha256"], d["chunk_count"]) for d in exp.iter_documents())
    h = hashlib.sha256()
    for cid, rh in sorted(rows):
        h.update(f"{cid}\t{rh}\n".encode())
    h.update(dumps(docs).encode())
    return h.hexdigest()
