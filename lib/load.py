"""Phase 03: stream an export into a Chroma collection, resumably, and verify it record by record.

Each chunk becomes one Chroma record: its id, its text as the document, its vector, and flat metadata
that LlamaIndex's ``ChromaVectorStore`` reads back into the same node (``_node_content`` holds the node
JSON with the exact original metadata and relationships; values Chroma cannot store are converted the
way ``verify`` announced). Chroma's ``add`` ignores ids it already has, so re-running a batch after a
crash changes nothing; a checkpoint after every batch lets a killed load skip what is done.
"""

from __future__ import annotations

import math
import os
import random
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import atomic, export_format, memory, records
from .errors import RunbookError

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
    the row's TextNode (the source's metadata, then LlamaIndex's own keys over it)."""
    metadata, own = _node_parts(row)
    return {**metadata, **own}


def _node_parts(row: dict) -> tuple[dict, dict]:
    """The source's metadata and LlamaIndex's own keys (``_node_content`` ...), built straight from the
    export's JSON (no pydantic round-trip: ~20x faster)."""
    metadata, f1 = records.loads_checked(row["metadata_json"])
    extra, f2 = records.loads_checked(row["node_extra_json"] or "{}")
    rels, f3 = records.loads_checked(row["relationships_json"] or "{}")
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
    ref = "None" if ref is None else ref
    own = {
        # the node's other fields are strings, ints and None: it is finite when what orjson read is
        "_node_content": records.dumps(node, sort_keys=False, finite=f1 and f2 and f3),
        "_node_type": "TextNode",
        "document_id": ref,
        "doc_id": ref,
        "ref_doc_id": ref,
    }
    return metadata, own


def to_chroma_metadata(row: dict) -> tuple[dict, list[tuple[str, str]]]:
    """Flat Chroma metadata for one export row (``records.to_flat`` of the source's metadata, then
    LlamaIndex's own keys, which never collide: a source key of that name is escaped), and the (key, kind)
    of each reversible conversion. ``records.from_flat`` undoes it."""
    metadata, own = _node_parts(row)
    md, conversions = records.to_flat(metadata, own)
    md.update(own)
    return md, conversions


from_chroma_value = records.decode_value


@dataclass
class LoadResult:
    collection: str
    loaded_now: int = 0
    skipped_by_checkpoint: int = 0
    total: int = 0
    seconds: float = 0.0
    batch_size: int = 0
    tally: records.Tally = field(default_factory=records.Tally)
    # the peak memory of the process that prepared the batches after the first (None: prepared here)
    second_process_peak_rss_mb: float | None = None

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
            **{f"chunks {k}": v for k, v in sorted(self.tally.counts.items())},
            # the page's memory figures are this process's: the second one's peak comes on top of them
            **(
                {
                    "peak RSS MB (the second process, preparing batches)": round(
                        self.second_process_peak_rss_mb, 1
                    )
                }
                if self.second_process_peak_rss_mb is not None
                else {}
            ),
        }


def _batches(exp, batch_size: int, start_shard: int, start_row: int):
    """(shard position, row offset after the batch, Arrow record batch) in export order, from the checkpoint on."""
    for pos, sh in enumerate(exp.shards):
        if pos < start_shard:
            continue
        offset = 0
        for batch in export_format.read_batches(exp.path / sh["chunks_file"], batch_size=batch_size):
            n = batch.num_rows
            if pos == start_shard and offset + n <= start_row:
                offset += n
                continue
            if pos == start_shard and offset < start_row:
                batch = batch.slice(start_row - offset)
            offset += n
            yield pos, offset, batch


@dataclass
class Context:
    """What decides each record's fate: the collection's dimension, the export's ids, the policy."""

    dim: int
    ids: records.IdIndex
    policy: records.Policy


def context(exp, policy: records.Policy | None = None, dim: int | None = None) -> Context:
    """The dimension is the export's (or the one most vectors have: the others are refused, listed)."""
    return Context(
        dim or export_format.main_dimension(exp), records.IdIndex.of_export(exp), policy or records.Policy()
    )


def planned_ids(exp, policy: records.Policy | None = None) -> set[str]:
    """The Chroma ids the export's records are loaded under (qualified ids included, refused and skipped
    records left out)."""
    ctx = context(exp, policy)
    out, pos = set(), 0
    for batch in exp.iter_chunk_batches(columns=["chunk_id", "document_id", "text", "embedding"]):
        problems = records.vector_problems(batch.column("embedding"), ctx.dim)
        for i, r in enumerate(batch.drop_columns(["embedding"]).to_pylist()):
            d = records.decide(r, pos + i, problems[i], ctx.ids, ctx.policy)
            if d.action == "load":
                out.add(d.chroma_id)
        pos += batch.num_rows
    return out


def prepare_records(rows: list[dict], ctx: Context | None = None, start: int = 0):
    """(ids, documents, vectors, metadatas, [(row, decision, conversions)]) for a list of export rows.
    Without ``ctx`` the rows stand alone (phase 07's additions): a record that would not load is an error."""
    import pyarrow as pa

    emb = pa.array([r["embedding"] for r in rows], type=pa.list_(pa.float32()))
    strict = ctx is None
    if ctx is None:
        dim = next((len(r["embedding"]) for r in rows if r["embedding"] is not None), 0)
        ctx = Context(dim, records.IdIndex((r["chunk_id"], r["document_id"]) for r in rows), records.Policy())
    out = _prepare_rows(rows, emb, ctx, start)
    bad = [(r, d) for r, d, _ in out[4] if d.action != "load"]
    if strict and bad:
        raise LoadError(
            "; ".join(
                f"chunk {r['chunk_id']!r} of document {r['document_id']!r}: {d.notes}" for r, d in bad[:5]
            )
            + f" ({len(bad)} record(s) not loadable)"
        )
    return out


def _prepare_batch(batch, ctx: Context, start: int):
    """The same for an Arrow record batch; vectors go straight from Arrow to numpy."""
    emb = batch.column(batch.schema.get_field_index("embedding"))
    rows = batch.drop_columns(["embedding"]).to_pylist()
    return _prepare_rows(rows, emb, ctx, start)


def _prepare_rows(rows: list[dict], emb, ctx: Context, start: int):
    problems = records.vector_problems(emb, ctx.dim)
    ids, docs, metas, keep, fates = [], [], [], [], []
    for i, r in enumerate(rows):
        d = records.decide(r, start + i, problems[i], ctx.ids, ctx.policy)
        conversions: list = []
        if d.action == "load":
            md, conversions = to_chroma_metadata(r)
            ids.append(d.chroma_id)
            docs.append(r["text"])
            metas.append(md)
            keep.append(i)
        fates.append((r, d, conversions))
    vectors = records.vector_matrix(emb, ctx.dim, keep) if keep else np.zeros((0, ctx.dim), dtype=np.float32)
    return ids, docs, vectors, metas, fates


class LoadError(RunbookError, RuntimeError):
    pass


# a load of more rows than this (after its first batch) prepares its batches in a second process; below it there
# is little preparation to hide (45-75 us a record), and the second process costs its start (about 0.3 s of CPU
# for its imports, beside Chroma)
AHEAD_MIN_ROWS = 4096
# the first batch a second process's load prepares here: small, so Chroma starts soon, and large enough that
# its ``add`` hides the second process's start and first batch (about 2 s while Chroma indexes beside it: 1,000
# records' add, 1.5 s, did not at 10k)
FIRST_BATCH = 2000
# records the verification reads back from Chroma in one get
VERIFY_BATCH = 5000


def prepared_batches(exp, ctx: Context, batch_size: int, shard: int, row: int):
    """(shard position, row offset after the batch, rows, ids, documents, vectors, metadatas, tally of the
    batch's rows) for each batch from (shard, row) on: everything the load does before Chroma sees a batch.
    Runs here or in a second process (``ahead.Ahead``); the rows themselves stay where they were read."""
    shard_start = np.concatenate([[0], np.cumsum([sh["rows"] for sh in exp.shards])]).tolist()
    for pos, offset, batch in _batches(exp, batch_size, shard, row):
        first = int(shard_start[pos]) + offset - batch.num_rows
        ids, docs, vectors, metas, fates = _prepare_batch(batch, ctx, first)
        part = records.Tally()
        for r, d, conversions in fates:
            part.add(r, d, conversions)
        yield pos, offset, batch.num_rows, ids, docs, vectors, metas, part.state()


def _batches_to_load(
    exp, ctx: Context, batch_size: int, shard: int, row: int, second_process: bool, res: LoadResult
):
    """The prepared batches of a load. With ``second_process`` the first (of ``FIRST_BATCH`` rows) is prepared
    here and all others in a second process while Chroma indexes: embedded Chroma holds Python's interpreter
    for the whole of ``add`` (benchmarks/chroma_gil.py), so a thread here could not prepare meanwhile."""
    from . import ahead

    if not second_process:
        yield from prepared_batches(exp, ctx, batch_size, shard, row)
        return
    first = next(prepared_batches(exp, ctx, min(batch_size, FIRST_BATCH), shard, row), None)
    if first is None:
        return
    rest = ahead.Ahead(
        prepared_batches, (exp, ctx, batch_size, first[0], first[1]), "prepares the load's next batches"
    )
    with rest:
        yield first
        yield from rest
    res.second_process_peak_rss_mb = rest.peak_rss_mb


def load_export(
    client,
    col,
    export_dir: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    batch_size: int = 5000,
    progress: bool = True,
    before_batch=None,
    policy: records.Policy | None = None,
    chroma_path: str | os.PathLike | None = None,
    second_process: bool | None = None,
) -> LoadResult:
    """Every record is decided by ``records.decide`` (loaded, converted, skipped or refused, and listed)
    before Chroma sees its batch. ``before_batch(n)`` is called before each ``add`` of ``n`` records (the
    disk guard); whatever it raises stops the load after the last checkpointed batch, so a re-run resumes
    there. The tally lives in the checkpoint, so a resumed load still accounts for every chunk.
    ``second_process``: prepare the batches after the first in a second process, so that it runs while Chroma
    indexes (default: for loads of more than ``FIRST_BATCH + AHEAD_MIN_ROWS`` rows)."""
    from . import ahead, disk

    exp = export_format.open_export(export_dir)
    sha = exp.manifest_sha256
    batch_size = max(1, min(int(batch_size), int(client.get_max_batch_size())))
    policy = policy or records.Policy()
    cp_path = Path(checkpoint_path)
    cp = atomic.read_json(cp_path) if cp_path.exists() else {}
    same_target = cp.get("export_manifest_sha256") == sha and cp.get("collection") == col.name
    if same_target and cp.get("collection_id", str(col.id)) != str(col.id):
        same_target = False  # a collection of that name was made anew: its records are not the checkpoint's
    if same_target and cp.get("policy", vars(records.Policy())) != vars(policy) and col.count() > 0:
        raise LoadError(
            f"collection {col.name} was loaded with {cp.get('policy', vars(records.Policy()))}, now asked for "
            f"{vars(policy)}: records already loaded would keep the old treatment. Load into a new collection "
            "(versioned_collection: true, or another collection_name), or set the policy back"
        )
    # a checkpoint without flat_format was written before floats Chroma would change kept a number
    if same_target and cp.get("flat_format", 1) != records.FLAT_FORMAT and col.count() > 0:
        raise LoadError(
            f"collection {col.name} was begun by an earlier version of the runbook, which stored some metadata "
            f"differently (flat format {cp.get('flat_format', 1)}, now {records.FLAT_FORMAT}: a float Chroma "
            "would change was stored as text): records already loaded would keep the old form. Load into a new "
            "collection (versioned_collection: true, or another collection_name)"
        )
    if (
        not same_target
        or cp.get("policy", vars(records.Policy())) != vars(policy)
        or cp.get("flat_format", 1) != records.FLAT_FORMAT
    ):
        cp = {
            "export_manifest_sha256": sha,
            "collection": col.name,
            "collection_id": str(col.id),
            "policy": vars(policy),
            "flat_format": records.FLAT_FORMAT,
            "shard": 0,
            "row": 0,
            "loaded": 0,
            "rows_done": 0,
            "tally": {},
        }
    ctx = context(exp, policy)
    tally = records.Tally(state=cp.get("tally"))
    res = LoadResult(
        col.name,
        total=exp.manifest["total_chunks"],
        batch_size=batch_size,
        skipped_by_checkpoint=cp["loaded"],
        tally=tally,
    )
    bar = None
    if progress:
        from .display import progress as tqdm

        bar = tqdm(
            total=res.total, initial=cp.get("rows_done", 0), desc=f"loading into {col.name}", unit="chunk"
        )
    if second_process is None:
        second_process = res.total - cp.get("rows_done", 0) > FIRST_BATCH + AHEAD_MIN_ROWS
    batches = _batches_to_load(exp, ctx, batch_size, cp["shard"], cp["row"], second_process, res)
    last_shard = cp["shard"]
    t0 = time.time()
    try:
        for pos, offset, n_rows, ids, docs, embs, metas, part in batches:
            if ids:
                if before_batch is not None:
                    before_batch(len(ids))
                try:
                    col.add(ids=ids, documents=docs, embeddings=embs, metadatas=metas)
                except Exception as e:
                    translated = disk.translate(e, chroma_path or "")
                    if translated is not e:
                        raise translated from e
                    raise LoadError(
                        f"Chroma refused the batch of {len(ids)} records from {exp.shards[pos]['chunks_file']} "
                        f"(chunks {ids[0]!r} … {ids[-1]!r}): {e}. Nothing of this batch is counted as loaded; "
                        "the records before it are checkpointed. Report the chunk ids with this message."
                    ) from e
            tally.merge(part)
            res.loaded_now += len(ids)
            cp.update(
                shard=pos,
                row=offset,
                loaded=cp["loaded"] + len(ids),
                rows_done=cp.get("rows_done", 0) + n_rows,
                tally=tally.state(),
            )
            atomic.write_json(cp_path, cp)
            if bar is not None:
                bar.update(n_rows)
            if pos != last_shard:  # a new shard: what the last one's batches left in the heaps goes back
                memory.release()
                last_shard = pos
    except ahead.AheadError as e:
        raise LoadError(
            f"{e}. Nothing after the last checkpoint (shard {cp['shard']}, row {cp['row']}) is counted as "
            "loaded. Run phase 03 again (it resumes there) and report this message if it repeats"
        ) from None
    finally:
        batches.close()
        if bar is not None:
            bar.close()
    memory.release()  # before verification, which opens the index again beside what the load kept
    res.seconds = time.time() - t0
    cp["complete"] = True
    atomic.write_json(cp_path, cp)
    return res


# ---------------------------------------------------------------- verification after load
def dir_size(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _exact_topk(exp, queries: np.ndarray, k: int, ctx: Context, workers: int = 2) -> list[list[str]]:
    """Exact cosine top-k over the loadable export vectors (by their Chroma ids), streamed block by block.

    The shards are split into ``workers`` runs of consecutive shards of about equal rows, searched in threads
    (decoding Parquet and numpy's products let go of the interpreter: at 1M chunks the search is three
    quarters decoding the vectors) and merged in order; a tie goes to the earlier record, as in one pass."""
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    shards = exp.shards
    starts = np.concatenate([[0], np.cumsum([sh["rows"] for sh in shards])]).astype(np.int64).tolist()
    cut = (
        [0]
        + [int(np.searchsorted(starts, starts[-1] * w / workers)) for w in range(1, max(1, workers))]
        + [len(shards)]
    )
    runs = [range(cut[w], cut[w + 1]) for w in range(len(cut) - 1) if cut[w + 1] > cut[w]]

    def search(run) -> tuple[np.ndarray, np.ndarray, dict]:
        best_s = np.full((len(qn), k), -np.inf, dtype=np.float32)
        best_p = np.full((len(qn), k), -1, dtype=np.int64)  # the records' positions in the export
        id_of: dict[int, str] = {}
        for si in run:
            pos = starts[si]
            # blocks of 4,096: Parquet decodes a block's vectors at about twice their size (20,000 a block held
            # 385 MB of Arrow memory at 1,536 dimensions, 4,096 holds 208)
            for batch in exp.shard_batches(
                shards[si], columns=["chunk_id", "document_id", "text", "embedding"], batch_size=4096
            ):
                rows = batch.drop_columns(["embedding"]).to_pylist()
                emb = batch.column("embedding")
                problems = records.vector_problems(emb, ctx.dim)
                keep, ids = [], []
                for i, r in enumerate(rows):
                    d = records.decide(r, pos + i, problems[i], ctx.ids, ctx.policy)
                    if d.action == "load":
                        keep.append(i)
                        ids.append(d.chroma_id)
                if keep:
                    # in place: no copy of the block's vectors
                    mat = records.vector_matrix(emb, ctx.dim, keep)
                    sc = (qn @ mat.T) / np.sqrt(np.einsum("ij,ij->i", mat, mat))  # cosine, no normalised copy
                    at = pos + np.asarray(keep, dtype=np.int64)
                    all_s = np.concatenate([best_s, sc], axis=1)
                    all_p = np.concatenate([best_p, np.broadcast_to(at, sc.shape)], axis=1)
                    top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
                    best_s = np.take_along_axis(all_s, top, axis=1)
                    best_p = np.take_along_axis(all_p, top, axis=1)
                    for q, j in zip(*np.nonzero(top >= k), strict=True):  # entered from this block
                        id_of[int(best_p[q, j])] = ids[int(top[q, j]) - k]
                pos += len(rows)
            id_of = {int(x): id_of[int(x)] for x in np.unique(best_p) if x >= 0}
        return best_s, best_p, id_of

    if len(runs) > 1:
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            found = list(pool.map(search, runs))
    else:
        found = [search(runs[0] if runs else range(0))]
    best_s = np.concatenate([f[0] for f in found], axis=1)  # runs in export order: earlier records first
    best_p = np.concatenate([f[1] for f in found], axis=1)
    id_of = {p: i for f in found for p, i in f[2].items()}
    top = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
    return [[id_of.get(int(p)) for p in row] for row in np.take_along_axis(best_p, top, axis=1)]


def search_at(col, queries, ef: int, k: int, include: list[str], count: int) -> dict:
    """``col.query`` as at ``ef_search=ef`` whatever ``ef_search`` the index was loaded with (as long as that is
    not higher): hnswlib searches with max(ef_search, n_results) candidates and keeps the best n_results, so the
    first ``k`` of ``ef`` results are the top ``k`` at ``ef`` (the same lists as a reloaded index gives, checked in
    tests, but for the order of records that tie exactly). Raising ``ef_search`` with ``collection.modify``
    takes effect only when the index is loaded again (reloading a 1M-chunk index took about 10 s), so measuring
    this way needs no reload."""
    wide = min(max(k, ef), count)  # Chroma warns when asked for more results than it holds
    res = col.query(query_embeddings=queries, n_results=wide, include=include)
    return {key: [row[:k] for row in res[key]] for key in ("ids", *include)}


def one_ahead(items):
    """Yield each item of ``items`` once the next one has been taken from it (the last at the end): a
    generator whose items start work when taken then has the next one's work running while the caller
    handles this one."""
    held, have = None, False
    for item in items:
        if have:
            yield held
        held, have = item, True
    if have:
        yield held


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
    policy: records.Policy | None = None,
    tune_ef_search: bool = False,
) -> dict:
    """Count, ids, sampled records field by field, self-retrieval, HNSW recall@k vs exact, LlamaIndex read-back.

    Every search is made at the collection's recorded ``ef_search`` whatever the index loaded in memory has
    (``search_at``). With ``tune_ef_search``, below ``min_recall`` ``ef_search`` is doubled (up to
    ``max_ef_search``) and the last value tried recorded with ``collection.modify``: in force wherever the
    index is next loaded, with no reload here. On a Chroma server the server's own search must agree, after
    ``reopen(client, name) -> (client, collection)`` fetches the collection again (see
    ``chroma_target.reload_collection``), or the check says to restart it. The result's
    ``client``/``collection`` are the ones to use afterwards; an embedded index this process has loaded keeps
    searching with the value it was loaded with (phase 03 searches no more after this)."""
    # where the verification's time goes, step by step (its share of the load's time is a goal at 1M chunks)
    steps: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(step: str):
        now = time.perf_counter()
        steps[step] = steps.get(step, 0.0) + now - clock[0]
        clock[0] = now

    exp = export_format.open_export(export_dir)
    ctx = context(exp, policy)
    lap("the export's ids indexed")
    checks, issues = [], []

    def check(name, ok, detail):
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    # one pass: every record's fate (independently of the load's own tally), every planned id present,
    # a reservoir sample of the loaded records on the way
    rng = random.Random(seed)
    tally = records.Tally()
    picked: list[tuple[dict, str]] = []
    missing, differ, seen = [], [], 0
    maxb = int(client.get_max_batch_size())
    n_missing = n_differ = 0
    # Chroma reads the records in one thread (it lets go of the GIL) while this one works out what they should
    # hold, and the read of the next batch is asked for before this batch is compared: asked for only with its
    # own batch, Chroma's read (about 100 us of CPU a record, whatever is included) sat idle while this thread
    # compared (the whole verification of a 100k collection, old and new alternated: medians 21.4 and 20.1 s)
    reader = ThreadPoolExecutor(max_workers=1)

    def read_ahead():
        at = 0
        for batch in exp.iter_chunk_batches(batch_size=min(maxb, VERIFY_BATCH)):
            emb = batch.column("embedding")
            problems = records.vector_problems(emb, ctx.dim)
            rows = batch.drop_columns(["embedding"]).to_pylist()  # vectors only for the sample, below
            decided = [
                records.decide(r, at + i, problems[i], ctx.ids, ctx.policy) for i, r in enumerate(rows)
            ]
            at += len(rows)
            load_ids = [d.chroma_id for d in decided if d.action == "load"]
            reading = (
                reader.submit(col.get, ids=load_ids, include=["documents", "metadatas"]) if load_ids else None
            )
            yield emb, rows, decided, reading

    try:
        for emb, rows, decided, reading in one_ahead(read_ahead()):
            planned = []
            for i, (r, d) in enumerate(zip(rows, decided, strict=True)):
                want_md, conversions = to_chroma_metadata(r) if d.action == "load" else ({}, [])
                tally.add(r, d, conversions)
                if d.action != "load":
                    continue
                planned.append((d.chroma_id, r, want_md))
                seen += 1
                if len(picked) < sample:
                    picked.append(({**r, "embedding": emb[i].as_py()}, d.chroma_id))
                elif (j := rng.randrange(seen)) < sample:
                    picked[j] = ({**r, "embedding": emb[i].as_py()}, d.chroma_id)
            got = reading.result() if reading is not None else None
            by_id = (
                dict(zip(got["ids"], zip(got["documents"], got["metadatas"], strict=True), strict=True))
                if got
                else {}
            )
            for cid, r, want_md in planned:
                rec = by_id.get(cid)
                if rec is None:
                    n_missing += 1
                    if len(missing) < 20:
                        missing.append(cid)
                elif rec[0] != r["text"] or rec[1] != want_md:
                    n_differ += 1
                    if len(differ) < 20:
                        differ.append((cid, r, rec))
    finally:
        reader.shutdown()
    memory.release()
    lap("every record read back and compared")
    n = col.count()
    want = tally.expected_in_collection()
    check(
        "count equals records to load",
        n == want,
        f"collection {n}; export {exp.manifest['total_chunks']} = {want} to load"
        f" + {tally.counts.get('skipped', 0)} skipped + {tally.counts.get('refused', 0)} refused",
    )
    check(
        "records loaded",
        want > 0 or exp.manifest["total_chunks"] == 0,
        f"{want} of {exp.manifest['total_chunks']} exported chunks are loadable"
        + ("" if want or not exp.manifest["total_chunks"] else ": every one was refused or skipped (listed)"),
    )
    check(
        "every id to load present",
        not n_missing,
        f"{n_missing} missing" + (f", e.g. {missing[:3]}" if missing else ""),
    )
    check(
        "every record's text and metadata equal the export",
        not n_differ,
        f"{tally.expected_in_collection() - n_missing} compared; {n_differ} differ"
        + (f", e.g. {differ[0][0]!r}" if differ else ""),
    )
    for _cid, r, (doc, md) in differ[:20]:
        want = to_chroma_metadata(r)[0]
        extra = sorted(set(md or {}) - set(want))
        issues.append(
            {
                "where": f"chunk {r['chunk_id']} of document {r['document_id']}",
                "problem": "text differs"
                if doc != r["text"]
                else "metadata differs"
                + (
                    f" (keys the export does not have: {extra}; Chroma 1.5.9 can attach array metadata "
                    "of a deleted collection to a new record)"
                    if extra
                    else ""
                ),
                "what to do": "load into a new collection (versioned_collection: true) under a new base_path, or a "
                "fresh Chroma server",
            }
        )
    for m in missing[:20]:
        issues.append(
            {
                "where": f"chunk {m}",
                "problem": "not in the collection",
                "what to do": "run phase 03 again (it resumes)",
            }
        )

    # sampled records field by field, against the SOURCE's values (the undo of every conversion)
    got = (
        col.get(ids=[cid for _, cid in picked], include=["documents", "metadatas", "embeddings"])
        if picked
        else {"ids": [], "documents": [], "metadatas": [], "embeddings": []}
    )
    by_id = {
        i: (d, m, e)
        for i, d, m, e in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True)
    }
    diffs, differing = 0, set()  # differences (fields), and the sampled records that have any
    for r, cid in picked:
        rec = by_id.get(cid)
        where = f"chunk {r['chunk_id']} of document {r['document_id']}"
        if rec is None:
            continue
        doc, meta, emb = rec
        source_meta = records.loads(r["metadata_json"])
        node = records.loads(meta.get("_node_content", "{}")) if isinstance(meta, dict) else {}
        for name, ok in (
            ("text", doc == r["text"]),
            ("metadata (flat, undone)", records.same(records.from_flat(meta or {}), source_meta)),
            ("metadata (node JSON)", records.same(node.get("metadata"), source_meta)),
            ("chunk id (node JSON)", node.get("id_") == r["chunk_id"]),
            (
                "vector",
                np.allclose(
                    np.asarray(emb, dtype=np.float32), np.asarray(r["embedding"], dtype=np.float32), atol=1e-6
                ),
            ),
        ):
            if not ok:
                diffs += 1
                differing.add(cid)
                issues.append(
                    {
                        "where": where,
                        "problem": f"{name} differs from the source",
                        "what to do": "reload into a new collection; report it if it persists",
                    }
                )
    lap("sampled records against the source")
    check(
        "sampled records equal the source",
        diffs == 0,
        f"{len(picked)} records: text and metadata (after undoing the conversion; node JSON too) against the "
        f"source's values as exported, vector against the export; {diffs} difference(s)",
    )

    # recall@k of HNSW vs exact search, raising ef_search until it holds; then self-retrieval (a chunk's own vector
    # finds it first; identical vectors tie: any of them counts) at the ef_search finally recorded. At 1M chunks
    # it used to be judged at the starting 100 before recall raised it to 200; 3 of 200 chunks still missed
    # themselves at 200, 400 and 800 alike: a graph that does not reach them, which a denser graph mends and a
    # higher ef_search does not
    vecs = np.asarray([r["embedding"] for r, _ in picked], dtype=np.float32).reshape(len(picked), ctx.dim)
    hnsw = (col.configuration or {}).get("hnsw") or {}
    ef = int(hnsw.get("ef_search") or 100)
    recall, per_query = 1.0, []
    if picked:
        qrng = np.random.default_rng(seed)
        base = vecs[qrng.integers(0, len(vecs), size=min(recall_queries, len(vecs)))]
        queries = base + qrng.normal(0, 0.05, size=base.shape).astype(np.float32)
        exact = _exact_topk(exp, queries, min(k, n), ctx)
        memory.release()
        lap("exact search for the recall queries")
        tried, stale, start = [], "", ef
        from . import chroma_target  # not at the top: the second process imports this module, not chromadb

        while True:
            found = search_at(col, queries, ef, min(k, n), ["distances"], n)
            approx = found["ids"]
            per_query = [len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)]
            recall = float(np.mean(per_query))
            tried.append(f"{ef}: {recall:.3f}")
            if recall >= min_recall or ef >= max_ef_search or not tune_ef_search:
                break
            ef = min(ef * 2, max_ef_search)
        if ef != start:  # recorded: in force wherever the index is next loaded
            col.modify(configuration={"hnsw": {"ef_search": ef}})
        if chroma_target.is_served(client):
            # a Chroma server keeps the index it has loaded, with the ef_search it had then: its plain search
            # must find neighbours as near as the value recorded here finds, or the service would not get the
            # recall measured (distances, not ids: of records that tie exactly, either search may keep any)
            if ef != start and reopen is not None:
                client, col = reopen(client, col.name)
            plain = col.query(query_embeddings=queries, n_results=min(k, n), include=["distances"])
            if not np.allclose(plain["distances"], found["distances"], rtol=0, atol=1e-6):
                stale = (
                    f"; ef_search={ef} is stored but not in force yet (a Chroma server applies it when it loads the"
                    " index): restart the server and run this verification again"
                )
        lap("HNSW recall at the ef_search values tried")
    res = (
        search_at(col, vecs, ef, min(10, n), ["distances"], n)
        if len(picked)
        else {"ids": [], "distances": []}
    )
    lap("self-retrieval")
    self_fail = 0
    for (r, cid), ids, dists in zip(picked, res["ids"], res["distances"], strict=True):
        tied = [i for i, dd in zip(ids, dists, strict=True) if abs(dd - dists[0]) < 1e-6]
        if cid not in tied:
            self_fail += 1
            issues.append(
                {
                    "where": f"chunk {r['chunk_id']}",
                    "problem": f"its own vector ranks {ids[0]} first (distance {dists[0]:.6f}) at ef_search {ef}",
                    "what to do": "the graph does not reach it from its own vector: rebuild it denser (phase 03's "
                    "hnsw_rebuild, as for short recall; a higher ef_search did not help at 1M chunks), or raise "
                    "hnsw_ef_search in phase 02, then run phase 03 again",
                }
            )
    check(
        "self-retrieval at rank 1",
        self_fail == 0,
        f"{len(picked) - self_fail}/{len(picked)} sampled chunks find themselves first (ties count)"
        + (f" at ef_search={ef}" if picked else ""),
    )
    if not picked:
        check(f"HNSW recall@{k} vs exact search", True, "no records to search")
    else:
        check(
            f"HNSW recall@{k} vs exact search",
            recall >= min_recall and not stale,
            f"{recall:.4f} over {len(queries)} queries at ef_search={ef} (goal {min_recall}; tried {', '.join(tried)}){stale}",
        )
        if recall < min_recall and not stale and ef >= max_ef_search:
            issues.append(recall_remedy(col, recall, ef, min_recall, k))

    # LlamaIndex reads back the exported nodes
    li_ok, li_n = _llamaindex_roundtrip(col, picked[:20])
    lap("LlamaIndex read-back")
    check(
        "LlamaIndex ChromaVectorStore reads equal nodes",
        li_ok == li_n,
        f"{li_ok}/{li_n} nodes equal (id, text, metadata, relationships)",
    )

    disk = dir_size(chroma_path) if chroma_path else None
    export_odd, chunkless = records.export_listing(exp.manifest, exp.iter_documents())
    lap("disk size and the export's documents")
    figures = {
        "records": n,
        "ef_search": ef,
        f"recall@{k}": round(recall, 4),
        # what the samples can tell: the share of records that could differ unseen, how far recall could be off
        "sampled records differing, 95% upper bound": f"{wilson(len(differing), len(picked))[1]:.1%} "
        f"({len(differing)} of {len(picked)} sampled differ; every record's text and metadata compared in full)",
        f"recall@{k}, 95% interval": recall_interval(per_query, k),
        "chroma_db bytes": disk,
        "chroma_db MB": round(disk / 2**20, 1) if disk else None,
        "peak RSS MB (this process)": round(peak_rss_mb(), 1),
        "verification s": round(sum(steps.values()), 1),
        "verification s by step": "; ".join(f"{k} {v:.1f}" for k, v in steps.items()),
    }
    return {
        "checks": checks,
        "issues": issues,
        "figures": figures,
        "client": client,
        "collection": col,
        "tally": tally,
        "reconciliation": records.reconciliation(exp.manifest, tally, chunkless),
        "odd": export_odd + tally.listed,  # what phase 01 did, then what this load did
        "seconds": dict(steps),
    }


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a share seen as ``successes`` of ``n``: with 0 of 100
    sampled records differing, fewer than 3.7% of all records differ, at 95%. It never has zero width for a
    finite ``n``, whatever the share seen."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    div = 1 + z * z / n
    return max(0.0, (centre - spread) / div), min(1.0, (centre + spread) / div)


def recall_interval(per_query: list[float], k: int = 10) -> str:
    """``lo-hi over N queries``: the Wilson interval of the neighbours found over the ``k`` x N sought (the
    mean recall is their share)."""
    if not per_query:
        return "no queries"
    slots = k * len(per_query)
    lo, hi = wilson(round(float(np.sum(per_query)) * k), slots)
    return f"{lo:.4f}-{hi:.4f} over {len(per_query)} queries"


def recall_remedy(col, recall: float, ef: int, min_recall: float, k: int = 10) -> dict:
    """The issue phase 03 lists when recall stays short at the highest ``ef_search``: which denser graph to
    build (``chroma_target.next_rebuild``) and the parameter that builds it, a copy of phase 02's collection
    (also when ``col`` is itself such a copy: the next one is again made from phase 02's)."""
    from . import chroma_target

    cur = chroma_target.current_hnsw(col)
    step = chroma_target.next_rebuild(cur)
    now = f"max_neighbors {cur.get('max_neighbors')}, ef_construction {cur.get('ef_construction')}"
    base = (col.metadata or {}).get("rebuilt_from") or col.name
    if step is None:
        what = (
            f"the graph is already as dense as phase 03 proposes ({now}): check the vectors (phase 01's "
            "verification, the embedding model), or lower min_recall deliberately and say so on the go/no-go"
        )
    else:
        spec = chroma_target.rebuild_spec(step)
        what = (
            f"rebuild the graph denser: run phase 03 again with hnsw_rebuild: '{spec}'. It loads a new collection "
            f"{chroma_target.rebuilt_name(base, step)} from the same export and verifies it (resumable; two to three "
            f"times the build time, measured in BENCHMARKS.md); the service follows the collection phase 03 "
            f"verified. {base} stays, so Chroma's disk about doubles until you delete it once the new one is in "
            "service"
        )
    return {
        "where": f"collection {col.name} ({now})",
        "problem": f"recall@{k} {recall:.4f} at ef_search {ef}, the highest tried, is short of the goal {min_recall}",
        "what to do": what,
    }


def _llamaindex_roundtrip(col, picked: list[tuple[dict, str]]) -> tuple[int, int]:
    """Each record read through LlamaIndex's ``ChromaVectorStore`` (as the RAG service reads it, by its
    Chroma id) equals the exported node: id, text, metadata, relationships, ref doc id."""
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    if not picked:
        return 0, 0
    # what ChromaVectorStore does with each record of a query or get answer (llama-index-vector-stores-chroma)
    res = col.get(ids=[cid for _, cid in picked], include=["documents", "metadatas"])
    nodes = {
        i: metadata_dict_to_node(m, text=d)
        for i, d, m in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
    }
    ok = 0
    for r, cid in picked:
        got, want = nodes.get(cid), export_format.row_to_llama_node(r)
        if (
            got is not None
            and got.node_id == want.node_id
            and got.get_content() == want.get_content()
            and records.same(got.metadata, want.metadata)
            and {k: v.node_id for k, v in got.relationships.items()}
            == {k: v.node_id for k, v in want.relationships.items()}
            and got.ref_doc_id == want.ref_doc_id
        ):
            ok += 1
    return ok, len(picked)


def loaded_rows(export_dir, policy: records.Policy | None = None, batch_size: int = 4096):
    """The records ``load_export`` puts into Chroma, in export order, as the sparse index takes them:
    ``{chunk_id: the Chroma id (qualified where it is), document_id, text, metadata: the flat Chroma
    metadata without LlamaIndex's node JSON}``, so ids, texts and filterable metadata are the collection's."""
    exp = export_format.open_export(export_dir)
    ctx = context(exp, policy)
    pos = 0
    for batch in exp.iter_chunk_batches(batch_size=batch_size):
        ids, docs, _, metas, _ = _prepare_batch(batch, ctx, pos)
        pos += batch.num_rows
        for cid, text, md in zip(ids, docs, metas, strict=True):
            yield {
                "chunk_id": cid,
                "document_id": md.get("ref_doc_id"),
                "text": text,
                "metadata": sparse_metadata(md),
            }


def sparse_metadata(md: dict) -> dict:
    """A record's flat Chroma metadata as the sparse index keeps it: what filters see on Chroma, without
    LlamaIndex's node JSON and node type (the document id keys stay: filters see them too)."""
    return {k: v for k, v in md.items() if k not in ("_node_content", "_node_type")}


# ---------------------------------------------------------------- phase 03 as steps a page calls
PLANNED_COLLECTION = "<the collection phase 02 creates>"


@dataclass
class LoadJob:
    """Phase 03's load: the collection phase 02 recorded, the policy for odd records and the batch size. A
    real run holds the open client and collection (replaced by those verification returns); a dry run
    holds only its plan (``preflight.load_plan``), and nothing is opened."""

    h02: dict
    base_path: str
    policy: records.Policy
    batch_size: int
    dry_run: bool
    plan: dict = field(default_factory=dict)
    checked: dict = field(default_factory=dict)
    client: object = None
    collection: object = None
    rebuilt: dict = field(default_factory=dict)  # phase 03's denser copy of phase 02's collection, if asked

    @property
    def target(self):
        from . import chroma_target

        return chroma_target.Target.of_record(self.h02, self.base_path)

    @property
    def layout(self):
        from .paths import Layout

        return Layout.from_params(self.base_path)

    @property
    def export_dir(self) -> str:
        return self.h02["export_dir"]

    def summary(self) -> dict:
        """What the page shows before loading: the plan (dry run), or the collection as it is now."""
        if self.dry_run:
            return self.plan
        return {
            "collection": self.collection.name,
            **self.rebuilt,
            "records now": self.collection.count(),
            **self.checked,
            "batch size": min(self.batch_size, self.client.get_max_batch_size()),
        }


def planned_h02(h01: dict | None, base_path: str) -> dict:
    """What a dry run of phase 03 takes for phase 02's record when phase 02 has not run: placeholders for
    what only phase 02 can tell (the collection, where Chroma is), phase 01's export where it is known. The
    collection is a placeholder, so the plan never opens Chroma."""
    from . import preflight
    from .paths import Layout

    export_dir = (h01 or {}).get("export_dir") or "<the export phase 01 writes>"
    return {
        "phase": "02_init_chroma",
        "collection": PLANNED_COLLECTION,
        "export_dir": export_dir,
        "chroma_mode": "<chroma_mode of phase 02>",
        "chroma_host": "<chroma_host of phase 02>",
        "chroma_port": "<chroma_port of phase 02>",
        "chroma_path": str(Layout.from_params(base_path).chroma_db),
        "provenance": {"export_manifest_sha256": preflight.PLANNED_MANIFEST_SHA256},
    }


def open_load(
    h02: dict,
    h01: dict | None,
    base_path: str,
    policy: records.Policy,
    batch_size: int,
    dry_run: bool,
    hnsw_rebuild: str = "",
) -> LoadJob:
    """Phase 03's first step. A real run verifies the export phase 02 named (``verify.ensure_verified``
    refuses an unsound one, or one verified with another policy) and opens the collection. A dry run plans
    the load read-only (``preflight.load_plan``), on :func:`planned_h02` when phase 02 has not run.

    With ``hnsw_rebuild`` (``"max_neighbors=48,ef_construction=400"``, what the recall check proposes when
    ``ef_search`` alone falls short) the load goes into a denser copy of phase 02's collection
    (``chroma_target.rebuild``), made once and resumed like any load; phase 02's collection is left as it is."""
    from . import chroma_target, handoff, preflight, verify

    step = chroma_target.parse_rebuild(hnsw_rebuild)  # a malformed value stops before anything is opened
    if dry_run and handoff.is_absent(h02):
        h02 = planned_h02(h01, base_path)
    job = LoadJob(h02, base_path, policy, int(batch_size), dry_run)
    if dry_run:
        planned = h02
        if step:  # the plan is the copy's: its name, its count and checkpoint
            full = chroma_target.full_step(step, h02.get("hnsw") or {})
            if h02["collection"] != PLANNED_COLLECTION:
                planned = {**h02, "collection": chroma_target.rebuilt_name(h02["collection"], full)}
            job.rebuilt = {
                "rebuilt from": h02["collection"],
                "rebuilt with": chroma_target.rebuild_spec(full),
            }
        job.plan = {**preflight.load_plan(planned, h01, batch_size, base_path), **job.rebuilt}
        if isinstance(job.plan["records in export"], str) and not (h01 or {}).get("total_chunks"):
            unknown = "<known once phase 01 has run>"  # no export, no estimate: not a load of 0 records
            job.plan.update({"records in export": unknown, "would load": unknown, "batches": unknown})
        return job
    job.checked = verify.ensure_verified(job.export_dir, h01, policy)
    job.client = job.target.open()
    if step:
        job.collection, status, full = chroma_target.rebuild(
            job.client, h02["collection"], hnsw_rebuild, h02.get("hnsw")
        )
        job.rebuilt = {
            "rebuilt from": h02["collection"],
            "rebuilt with": chroma_target.rebuild_spec(full),
            "rebuild": status,
        }
    else:
        job.collection = job.client.get_collection(h02["collection"], embedding_function=None)
    return job


def run_load(job: LoadJob) -> LoadResult | None:
    """Phase 03's load (None in a dry run): :func:`load_export` with its checkpoint under ``state/``, logged
    before and after. Embedded, a disk guard stops it before a batch would fill the disk (a server's disk is
    the server's to watch)."""
    if job.dry_run:
        return None
    from . import disk, runlog

    col, embedded = job.collection, job.target.embedded
    runlog.log(job.layout, "03_migrate", "load started", collection=col.name)
    result = load_export(
        job.client,
        col,
        job.export_dir,
        job.layout.state / f"load-{col.name}.json",
        job.batch_size,
        policy=job.policy,
        before_batch=disk.guard_for_export(job.layout.chroma_db, job.export_dir) if embedded else None,
        chroma_path=job.layout.chroma_db if embedded else None,
    )
    runlog.log(job.layout, "03_migrate", "load finished", **{k: str(v) for k, v in result.summary().items()})
    return result


def verify_job(job: LoadJob, sample: int, recall_queries: int, min_recall: float) -> dict | None:
    """Phase 03's verification (None in a dry run): :func:`verify_load` on the loaded collection, raising
    ``ef_search`` until recall meets its goal; the job then holds the client and collection it returns."""
    if job.dry_run:
        return None
    t = job.target
    v = verify_load(
        job.client,
        job.collection,
        job.export_dir,
        t.chroma_path if t.embedded else None,
        sample=sample,
        recall_queries=recall_queries,
        min_recall=min_recall,
        policy=job.policy,
        reopen=t.reopener(),  # a Chroma server applies a raised ef_search when it loads the index again
        tune_ef_search=True,
    )
    job.client, job.collection = v["client"], v["collection"]
    return v


def sparse_step(job: LoadJob, enabled: bool) -> dict | None:
    """Phase 03's sparse index (None in a dry run): built and verified beside the collection when
    ``enabled``; otherwise an older index of the same collection is set aside (it would describe other
    records). Returns {path, stats, checks, caption}."""
    if job.dry_run:
        return None
    from . import export_format, sparse_sync

    col = job.collection
    if enabled:
        sp = sparse_sync.build_for_load(job.layout, col, job.export_dir, job.policy)
        return {**sp, "caption": f"sparse index for hybrid retrieval: {sp['path']}"}
    stamp = export_format.open_export(job.export_dir).manifest_sha256[:12]
    stats = {
        "sparse index": "not built (sparse_index: false)",
        "older one set aside": sparse_sync.set_aside(job.layout, col.name, stamp),
    }
    return {"path": "", "stats": stats, "checks": [], "caption": "no sparse index"}


def phase_outcome(job: LoadJob, result: LoadResult | None, v: dict | None, sp: dict | None) -> dict:
    """The keys of phase 03's hand-off: the dry run's plan, or the loaded and verified collection (logged
    to the migration log as verified: the page's checks have passed by the time this runs)."""
    if job.dry_run:
        return job.plan
    from . import runlog

    runlog.log(job.layout, "03_migrate", "verification passed", **v["figures"])
    col = job.collection
    return {
        "collection": col.name,
        "count": col.count(),
        "export_manifest_sha256": export_format.open_export(job.export_dir).manifest_sha256,
        **{k: job.h02[k] for k in ("chroma_mode", "chroma_path", "chroma_host", "chroma_port")},
        "load": result.summary(),
        "reconciliation": v["reconciliation"],
        "policy": vars(job.policy),
        **(
            {"rebuilt_from": job.rebuilt["rebuilt from"], "hnsw_rebuild": job.rebuilt["rebuilt with"]}
            if job.rebuilt
            else {}
        ),
        **v["figures"],
        "sparse_index": sp["path"],
        "checks": v["checks"] + sp["checks"],
    }
