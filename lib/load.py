"""Phase 03: stream an export into a Chroma collection, resumably, and verify it record by record.

Each chunk becomes one Chroma record: its id, its text as the document, its vector, and flat metadata
that LlamaIndex's ``ChromaVectorStore`` reads back into the same node (``_node_content`` holds the node
JSON with the exact original metadata and relationships; values Chroma cannot store are converted the
way ``verify`` announced). Chroma's ``add`` ignores ids it already has, so re-running a batch after a
crash changes nothing; a checkpoint after every batch lets a killed load skip what is done.
"""

from __future__ import annotations

import json
import os
import queue
import random
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from . import atomic, export_format
from .verify import classify_value

_NODE_DEFAULTS = {
    "excluded_embed_metadata_keys": [],
    "excluded_llm_metadata_keys": [],
    "metadata_template": "{key}: {value}",
    "metadata_separator": "\n",
    "mimetype": "text/plain",
    "text_template": "{metadata_str}\n\n{content}",
}


def node_metadata(row: dict) -> dict:
    """What llama-index's ``node_to_metadata_dict(node, remove_text=True, flat_metadata=False)`` returns for
    the row's TextNode, built straight from the export's JSON (no pydantic round-trip: ~20x faster)."""
    metadata = orjson.loads(row["metadata_json"])
    extra = orjson.loads(row["node_extra_json"] or "{}")
    rels = orjson.loads(row["relationships_json"] or "{}")
    node = {"id_": row["chunk_id"], "embedding": None, "metadata": metadata}
    for k in ("excluded_embed_metadata_keys", "excluded_llm_metadata_keys", "metadata_template"):
        node[k] = extra.get(k) if extra.get(k) is not None else _NODE_DEFAULTS[k]
    node["relationships"] = rels
    node["metadata_template"] = node.pop("metadata_template")
    sep = extra.get("metadata_seperator")
    node["metadata_separator"] = sep if sep is not None else _NODE_DEFAULTS["metadata_separator"]
    node["text"] = ""
    node["mimetype"] = extra.get("mimetype") or _NODE_DEFAULTS["mimetype"]
    node["start_char_idx"] = row["start_char_idx"]
    node["end_char_idx"] = row["end_char_idx"]
    node["text_template"] = extra.get("text_template") or _NODE_DEFAULTS["text_template"]
    node["class_name"] = "TextNode"
    source = rels.get("1")
    ref = source.get("node_id") if isinstance(source, dict) else None
    md = dict(metadata)
    md["_node_content"] = orjson.dumps(node).decode("utf-8")
    md["_node_type"] = "TextNode"
    md["document_id"] = md["doc_id"] = md["ref_doc_id"] = ref if ref is not None else "None"
    return md


def to_chroma_metadata(row: dict) -> tuple[dict, list[str]]:
    """Flat Chroma metadata for one export row, and the keys dropped because they were null."""
    md = node_metadata(row)
    out, dropped = {}, []
    for k, v in md.items():
        kind = classify_value(k, v)
        if kind is None:
            out[k] = v
        elif kind == "null":
            dropped.append(k)
        elif kind == "reserved key":
            out["meta_" + k.lstrip("#$").replace(":", "_")] = (
                v if classify_value("x", v) is None else "json:" + json.dumps(v, ensure_ascii=False)
            )
        else:
            out[k] = "json:" + json.dumps(v, ensure_ascii=False, sort_keys=True)
    return out, dropped


def from_chroma_value(v):
    """Undo the conversion of one value (``json:`` prefixed strings back to objects)."""
    if isinstance(v, str) and v.startswith("json:"):
        return json.loads(v[5:])
    return v


@dataclass
class LoadResult:
    collection: str
    loaded_now: int = 0
    skipped_by_checkpoint: int = 0
    total: int = 0
    seconds: float = 0.0
    batch_size: int = 0
    null_keys_dropped: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.loaded_now / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {
            "collection": self.collection,
            "records in export": self.total,
            "loaded now": self.loaded_now,
            "skipped (checkpoint)": self.skipped_by_checkpoint,
            "batch size": self.batch_size,
            "seconds": round(self.seconds, 1),
            "records/s": round(self.rate, 1),
            "null metadata keys dropped": self.null_keys_dropped,
        }


def _batches(exp, batch_size: int, start_shard: int, start_row: int):
    """(shard position, row offset after the batch, Arrow record batch) in export order, from the checkpoint on."""
    import pyarrow.parquet as pq

    for pos, sh in enumerate(exp.shards):
        if pos < start_shard:
            continue
        pf = pq.ParquetFile(exp.path / sh["chunks_file"])
        offset = 0
        for batch in pf.iter_batches(batch_size=batch_size):
            n = batch.num_rows
            if pos == start_shard and offset + n <= start_row:
                offset += n
                continue
            if pos == start_shard and offset < start_row:
                batch = batch.slice(start_row - offset)
            offset += n
            yield pos, offset, batch


def _vectors(column) -> np.ndarray:
    """An Arrow list<float32> column as an (n, dim) float32 matrix, without Python floats in between."""
    if column.null_count:
        raise export_format.ExportError(
            f"{column.null_count} chunk(s) have no vector: run phase 01's re-embedding step before loading"
        )
    lengths = np.asarray(column.value_lengths())
    if len(lengths) and (lengths != lengths[0]).any():
        raise export_format.ExportError(
            f"vectors of different sizes in one batch: {sorted(set(lengths.tolist()))}"
        )
    flat = np.asarray(column.flatten(), dtype=np.float32)
    return flat.reshape(len(column), int(lengths[0]) if len(lengths) else 0)


def _prepare(rows: list[dict]):
    """(ids, documents, vectors, metadatas, null keys dropped) for a list of export rows."""
    import pyarrow as pa

    emb = pa.array([r["embedding"] for r in rows], type=pa.list_(pa.float32()))
    return _prepare_rows(rows, _vectors(emb))


def _prepare_batch(batch):
    """The same for an Arrow record batch; vectors go straight from Arrow to numpy."""
    emb = batch.column(batch.schema.get_field_index("embedding"))
    vectors = _vectors(emb)
    rows = batch.drop_columns(["embedding"]).to_pylist()
    return _prepare_rows(rows, vectors)


def _prepare_rows(rows: list[dict], vectors: np.ndarray):
    ids, docs, metas, dropped = [], [], [], {}
    for r in rows:
        md, nulls = to_chroma_metadata(r)
        for k in nulls:
            dropped[k] = dropped.get(k, 0) + 1
        ids.append(r["chunk_id"])
        docs.append(r["text"])
        metas.append(md)
    return ids, docs, vectors, metas, dropped


def load_export(
    client,
    col,
    export_dir: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    batch_size: int = 5000,
    progress: bool = True,
) -> LoadResult:
    exp = export_format.open_export(export_dir)
    sha = exp.manifest_sha256
    batch_size = max(1, min(int(batch_size), int(client.get_max_batch_size())))
    cp_path = Path(checkpoint_path)
    cp = atomic.read_json(cp_path) if cp_path.exists() else {}
    if cp.get("export_manifest_sha256") != sha or cp.get("collection") != col.name:
        cp = {"export_manifest_sha256": sha, "collection": col.name, "shard": 0, "row": 0, "loaded": 0}
    res = LoadResult(
        col.name,
        total=exp.manifest["total_chunks"],
        batch_size=batch_size,
        skipped_by_checkpoint=cp["loaded"],
    )
    bar = None
    if progress:
        from .display import progress as tqdm

        bar = tqdm(total=res.total, initial=cp["loaded"], desc=f"loading into {col.name}", unit="chunk")
    # prepare the next batch (Parquet -> records) while Chroma indexes the current one
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def producer():
        try:
            for pos, offset, rows in _batches(exp, batch_size, cp["shard"], cp["row"]):
                if stop.is_set():
                    return
                q.put((pos, offset, _prepare_batch(rows)))
            q.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    t = threading.Thread(target=producer, daemon=True)
    t0 = time.time()
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            pos, offset, (ids, docs, embs, metas, dropped) = item
            col.add(ids=ids, documents=docs, embeddings=embs, metadatas=metas)
            for k, n in dropped.items():
                res.null_keys_dropped[k] = res.null_keys_dropped.get(k, 0) + n
            res.loaded_now += len(ids)
            cp.update(shard=pos, row=offset, loaded=cp["loaded"] + len(ids))
            atomic.write_json(cp_path, cp)
            if bar is not None:
                bar.update(len(ids))
    finally:
        stop.set()
        if bar is not None:
            bar.close()
    res.seconds = time.time() - t0
    cp["complete"] = True
    atomic.write_json(cp_path, cp)
    return res


# ---------------------------------------------------------------- verification after load
def dir_size(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _exact_topk(exp, queries: np.ndarray, k: int) -> list[list[str]]:
    """Exact cosine top-k over all export vectors, streamed shard by shard (bounded memory)."""
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_s = np.full((len(qn), k), -np.inf, dtype=np.float32)
    best_i = np.empty((len(qn), k), dtype=object)
    for batch in exp.iter_chunk_batches(columns=["chunk_id", "embedding"], batch_size=20000):
        ids = np.asarray(batch.column("chunk_id").to_pylist(), dtype=object)
        emb = batch.column("embedding")
        dim = len(emb[0].as_py())
        mat = np.asarray(emb.flatten(), dtype=np.float32).reshape(len(ids), dim)
        mat = mat / np.linalg.norm(mat, axis=1, keepdims=True)
        s = qn @ mat.T
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(all_s, top, axis=1)
        best_i = np.take_along_axis(all_i, top, axis=1)
    return [list(r) for r in best_i]


def verify_load(
    client,
    col,
    export_dir: str | os.PathLike,
    chroma_path: str | os.PathLike | None = None,
    sample: int = 100,
    recall_queries: int = 50,
    k: int = 10,
    min_recall: float = 0.99,
    max_ef_search: int = 800,
    seed: int = 0,
    reopen=None,
) -> dict:
    """Count, ids, sampled records field by field, self-retrieval, HNSW recall@k vs exact, LlamaIndex read-back.

    Below ``min_recall``, ``ef_search`` is doubled (up to ``max_ef_search``) and the collection reopened with
    ``reopen(client, name) -> (client, collection)`` (see ``chroma_target.reload_collection``) so the new value
    is in force; without ``reopen`` the first measurement stands. The result's ``client``/``collection`` are
    the ones to use afterwards."""
    exp = export_format.open_export(export_dir)
    checks, issues = [], []

    def check(name, ok, detail):
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    n = col.count()
    check(
        "count equals export",
        n == exp.manifest["total_chunks"],
        f"collection {n}, export {exp.manifest['total_chunks']}",
    )

    # every id present; reservoir sample on the way
    rng = random.Random(seed)
    picked: list[dict] = []
    missing, seen = [], 0
    maxb = int(client.get_max_batch_size())
    for batch in exp.iter_chunk_batches(batch_size=maxb):
        rows = batch.to_pylist()
        ids = [r["chunk_id"] for r in rows]
        got = set(col.get(ids=ids, include=[])["ids"])
        missing.extend(i for i in ids if i not in got)
        for r in rows:
            seen += 1
            if len(picked) < sample:
                picked.append(r)
            elif (j := rng.randrange(seen)) < sample:
                picked[j] = r
    check(
        "every exported id present",
        not missing,
        f"{len(missing)} missing" + (f", e.g. {missing[:3]}" if missing else ""),
    )
    for m in missing[:20]:
        issues.append(
            {
                "where": f"chunk {m}",
                "problem": "not in the collection",
                "what to do": "run phase 03 again (it resumes)",
            }
        )

    # sampled records field by field
    got = col.get(ids=[r["chunk_id"] for r in picked], include=["documents", "metadatas", "embeddings"])
    by_id = {
        i: (d, m, e)
        for i, d, m, e in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True)
    }
    diffs = 0
    for r in picked:
        rec = by_id.get(r["chunk_id"])
        where = f"chunk {r['chunk_id']}"
        if rec is None:
            continue
        doc, meta, emb = rec
        want_meta, _ = to_chroma_metadata(r)
        for name, ok in (
            ("text", doc == r["text"]),
            ("metadata", meta == want_meta),
            (
                "vector",
                np.allclose(
                    np.asarray(emb, dtype=np.float32), np.asarray(r["embedding"], dtype=np.float32), atol=1e-6
                ),
            ),
        ):
            if not ok:
                diffs += 1
                issues.append(
                    {
                        "where": where,
                        "problem": f"{name} differs from the export",
                        "what to do": "reload into a new collection",
                    }
                )
    check(
        "sampled records equal export",
        diffs == 0,
        f"{len(picked)} records compared field by field, {diffs} difference(s)",
    )

    # self-retrieval: a chunk's own vector finds it first (ties with identical vectors count)
    vecs = np.asarray([r["embedding"] for r in picked], dtype=np.float32)
    res = col.query(query_embeddings=vecs, n_results=2, include=["distances"])
    self_fail = 0
    for r, ids, dists in zip(picked, res["ids"], res["distances"], strict=True):
        if ids[0] != r["chunk_id"] and not (
            len(ids) > 1 and ids[1] == r["chunk_id"] and abs(dists[1] - dists[0]) < 1e-6
        ):
            self_fail += 1
            issues.append(
                {
                    "where": f"chunk {r['chunk_id']}",
                    "problem": f"its own vector ranks {ids[0]} first",
                    "what to do": "check for duplicate vectors or raise ef_search",
                }
            )
    check(
        "self-retrieval at rank 1",
        self_fail == 0,
        f"{len(picked) - self_fail}/{len(picked)} sampled chunks find themselves first",
    )

    # recall@k of HNSW vs exact search, raising ef_search until it holds
    qrng = np.random.default_rng(seed)
    base = vecs[qrng.integers(0, len(vecs), size=min(recall_queries, len(vecs)))]
    queries = base + qrng.normal(0, 0.05, size=base.shape).astype(np.float32)
    exact = _exact_topk(exp, queries, min(k, n))
    hnsw = (col.configuration or {}).get("hnsw") or {}
    ef = int(hnsw.get("ef_search") or 100)
    tried, previous, stale = [], None, ""
    while True:
        approx = col.query(query_embeddings=queries, n_results=min(k, n), include=[])["ids"]
        recall = float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)]))
        tried.append(f"{ef}: {recall:.3f}")
        if previous is not None and approx == previous and recall < min_recall:
            # not one result moved after doubling ef_search: the index in memory still has the old value
            stale = (
                f"; ef_search={ef} is stored but not in force yet (a Chroma server applies it when it loads the"
                " index): restart the server and run this verification again"
            )
            break
        if recall >= min_recall or ef >= max_ef_search or reopen is None:
            break
        previous = approx
        ef = min(ef * 2, max_ef_search)
        col.modify(configuration={"hnsw": {"ef_search": ef}})
        client, col = reopen(client, col.name)  # ef_search applies when the index is loaded
    check(
        f"HNSW recall@{k} vs exact search",
        recall >= min_recall,
        f"{recall:.4f} over {len(queries)} queries at ef_search={ef} (goal {min_recall}; tried {', '.join(tried)}){stale}",
    )

    # LlamaIndex reads back the exported nodes
    li_ok, li_n = _llamaindex_roundtrip(col, picked[:10])
    check(
        "LlamaIndex ChromaVectorStore reads equal nodes",
        li_ok == li_n,
        f"{li_ok}/{li_n} nodes equal (id, text, metadata, relationships)",
    )

    disk = dir_size(chroma_path) if chroma_path else None
    figures = {
        "records": n,
        "ef_search": ef,
        f"recall@{k}": round(recall, 4),
        "chroma_db bytes": disk,
        "chroma_db MB": round(disk / 2**20, 1) if disk else None,
        "peak RSS MB (this process)": round(peak_rss_mb(), 1),
    }
    return {"checks": checks, "issues": issues, "figures": figures, "client": client, "collection": col}


def _llamaindex_roundtrip(col, rows: list[dict]) -> tuple[int, int]:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import QueryBundle
    from llama_index.vector_stores.chroma import ChromaVectorStore

    if not rows:
        return 0, 0
    store = ChromaVectorStore(chroma_collection=col)
    # what the RAG service does; queries carry their vector here, so the embedder is never called
    index = VectorStoreIndex.from_vector_store(
        store, embed_model=MockEmbedding(embed_dim=len(rows[0]["embedding"]))
    )
    retriever = index.as_retriever(similarity_top_k=1)
    ok = 0
    for r in rows:
        hits = retriever.retrieve(QueryBundle(query_str="", embedding=list(map(float, r["embedding"]))))
        if not hits:
            continue
        got, want = hits[0].node, export_format.row_to_llama_node(r)
        if (
            got.node_id == want.node_id
            and got.get_content() == want.get_content()
            and got.metadata == want.metadata
            and {k: v.node_id for k, v in got.relationships.items()}
            == {k: v.node_id for k, v in want.relationships.items()}
            and got.ref_doc_id == want.ref_doc_id
        ):
            ok += 1
    return ok, len(rows)
