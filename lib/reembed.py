"""Vectors for the chunks the cloud served without one (LlamaCloud is not known to return them).

First ``plan`` shows what it would cost (tokens by tiktoken, $ by the model's price) and names every chunk
over the API's per-input token limit; ``apply`` spends only with ``allow_spend`` for a paid model, within
``max_cost_usd``. An OpenAI-compatible model is called at the account's rate limit, concurrently
(``openai_embedder``). Vectors are cached by (model, text hash) as each request completes, so a re-run --
after a kill, a spend cap, an outage -- pays nothing twice. Each shard is rewritten under a new name, the
manifest swapped atomically, then the old file removed: the manifest always matches the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import atomic, embeddings, export_format, records
from .errors import RunbookError
from .export_format import ExportError
from .openai_embedder import InputTooLong, Limits, SpendCapReached, count_tokens, truncate

__all__ = [
    "InputTooLong",
    "Limits",
    "Plan",
    "SpendCapReached",
    "SpendNotAllowed",
    "apply",
    "choice",
    "options",
    "plan",
    "plan_table",
    "spending",
]

MAX_LISTED = 1000  # replaced vectors named in the manifest; all are counted


class SpendNotAllowed(RunbookError, RuntimeError):
    pass


@dataclass
class Plan:
    model_id: str
    chunks_to_embed: int
    tokens: int
    price_per_mtok: float
    cached: int
    max_input_tokens: int = 0  # the API's per-input limit (0: the model has none known here)
    too_long: list = None  # the first MAX_LISTED chunks over it: {document_id, chunk_id, tokens}
    too_long_count: int = 0
    options: dict = None  # which chunks it counted (``options``): apply reuses a plan only for the same ones
    # the token count of each chunk to embed, by shard file (int32, in the shard's order): apply and the
    # embedder's batching use them instead of tokenising every text twice more (0.3 ms a chunk on one core)
    counts: dict = None

    @property
    def est_cost_usd(self) -> float:
        return (self.tokens / 1e6) * self.price_per_mtok

    def as_dict(self) -> dict:
        return {
            "model": self.model_id,
            "chunks to embed": self.chunks_to_embed,
            "already cached": self.cached,
            "tokens (cl100k)": self.tokens,
            "price $/1M tokens": self.price_per_mtok,
            "estimated cost $": round(self.est_cost_usd, 4),
            "chunks over the per-input token limit": self.too_long_count,
        }

    def too_long_message(self) -> str:
        named = ", ".join(
            f"{c['document_id']}/{c['chunk_id']} ({c['tokens']:,} tokens)" for c in (self.too_long or [])[:10]
        )
        more = f" and {self.too_long_count - 10} more" if self.too_long_count > 10 else ""
        return (
            f"{self.too_long_count} chunk(s) are longer than {self.model_id}'s limit of "
            f"{self.max_input_tokens:,} tokens per input: {named}{more}. The API refuses them (and the whole "
            "request they are in). Shorten them at the source, or set truncate_long_inputs: true to embed "
            "their first tokens (each is listed in the manifest as truncated_inputs)"
        )


def choice(
    provider: str = "auto",
    model_name: str = "",
    dimension: int = 0,
    api_key_env: str = "",
    api_base: str = "",
) -> dict:
    """The params' choice of embedding model as one argument (``embeddings.spec_from_params``'s keyword
    arguments but the pipeline's config): ``auto`` is the pipeline's own model; a dimension of 0 the model's
    default."""
    return {
        "provider": provider or "auto",
        "model_name": model_name,
        "dimension": dimension or None,
        "api_key_env": api_key_env,
        "api_base": api_base,
    }


def options(force: bool = False, replace_bad: bool = True, truncate_long: bool = False) -> dict:
    """Which chunks get a vector, as one argument (the keyword arguments ``plan`` and ``apply`` share):
    every chunk (``force``), served vectors that cannot be loaded (``replace_bad``), chunks over the
    per-input token limit cut to it (``truncate_long``)."""
    return {"force": force, "replace_bad": replace_bad, "truncate_long": truncate_long}


def spending(
    allow_spend: bool = False, max_cost_usd: float = 0.0, rpm: int = 0, tpm: int = 0, concurrency: int = 8
) -> dict:
    """What ``apply`` may spend and how fast it may call the API, as one argument (its keyword arguments):
    the account's requests and tokens a minute (0: learnt from the API's headers)."""
    return {
        "allow_spend": allow_spend,
        "max_cost_usd": max_cost_usd,
        "limits": Limits(rpm=rpm, tpm=tpm),
        "concurrency": concurrency,
    }


def plan_table(p: Plan | None, spec: embeddings.ModelSpec | None) -> dict:
    """The re-embedding plan for the page (``Plan.as_dict``); without a plan (a dry run: nothing exported
    yet) the model a real run would use and what it does before any spend."""
    if p is not None:
        return p.as_dict()
    unknown = spec is None  # auto, and the pipeline was not reached
    return {
        "model": "the pipeline's own model (the source was not contacted)" if unknown else spec.model_id,
        "paid": None if unknown else spec.paid,
        "plan": "not made (dry run): a real run counts the chunks, tokens and cost here, after the export "
        "and before any spend",
    }


def _unusable(emb, dim: int) -> str | None:
    """Why a served vector cannot be loaded (``records.vector_problems``), or None; missing ones are computed
    anyway."""
    if emb is None:
        return None
    return records.vector_problems(pa.array([emb], type=pa.list_(pa.float32())), dim or len(emb))[0]


def expected_dim(exp, spec) -> int:
    """The dimension vectors must have: the model's, else the one most served vectors have."""
    return int(spec.dimension) if spec.dimension else export_format.main_dimension(exp)


def _needs(batch, force: bool, bad_dim: int | None = None) -> list[int]:
    """Rows of an Arrow batch or table to embed: missing vectors, all with ``force``, unusable ones when
    ``bad_dim`` is given. Read from the Arrow column as it is: turning every served vector into Python floats
    to find none missing was most of phase 01's own time (153 million floats at 100k chunks x 1536)."""
    if force:
        return list(range(batch.num_rows))
    emb = batch.column("embedding")
    if isinstance(emb, pa.ChunkedArray):
        emb = emb.combine_chunks()
    if bad_dim is not None:
        return [i for i, why in enumerate(records.vector_problems(emb, bad_dim)) if why]
    return np.flatnonzero(~np.asarray(emb.is_valid().to_numpy(zero_copy_only=False), dtype=bool)).tolist()


def _texts(rows: list[dict], idx: list[int], limit: int, truncate_long: bool, counts=None):
    """The texts to embed for rows ``idx``, their token counts (``counts`` when the plan has them), and the
    rows over ``limit`` tokens (cut to their first ``limit`` tokens with ``truncate_long``)."""
    texts = [export_format.embed_text(rows[i]) for i in idx]
    counts = count_tokens(texts) if counts is None else [int(c) for c in counts]
    over = []
    for j, (i, c) in enumerate(zip(idx, counts, strict=True)):
        if limit and c == 0:  # an empty string: the API refuses it, and the whole request with it
            raise InputTooLong(
                f"chunk {rows[i]['chunk_id']} of document {rows[i]['document_id']} has nothing to embed (no text, "
                "no metadata) and the embeddings API refuses empty inputs; nothing was sent. Remove the chunk at "
                "the source or re-embed with a model that takes it"
            )
        if limit and c > limit:
            over.append({"document_id": rows[i]["document_id"], "chunk_id": rows[i]["chunk_id"], "tokens": c})
            if truncate_long:
                texts[j] = truncate(texts[j], limit)
    return texts, counts, over


def list_array(vecs: np.ndarray) -> pa.ListArray:
    """An (n, d) float32 matrix as an Arrow list<float32> array over the same memory (no Python floats, no
    copy: ``pa.array(list(vecs))`` held a second shard of vectors at the peak of phase 01)."""
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    offsets = (np.arange(len(vecs) + 1, dtype=np.int64) * vecs.shape[1]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(vecs.reshape(-1)))


def with_rows_replaced(column, idx: list[int], vecs: np.ndarray) -> pa.Array:
    """The list<float32> ``column`` with rows ``idx`` (ascending) set to the rows of ``vecs``, the others as they
    are, built in Arrow: a shard's vectors as Python floats took gigabytes (3.5 GB peak at 20,000 x 1536)."""
    old = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not idx:
        return old
    vecs = np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(idx), -1)
    take = np.zeros(len(old), dtype=bool)
    take[idx] = True
    lengths = np.where(take, vecs.shape[1], 0).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    new = pa.ListArray.from_arrays(pa.array(offsets), pa.array(vecs.reshape(-1)), mask=pa.array(~take))
    return pc.if_else(pa.array(take), new.cast(old.type), old)


def plan(
    export_dir: str | os.PathLike,
    spec: embeddings.ModelSpec,
    cache_path: str | os.PathLike,
    force: bool = False,
    price_per_mtok: float | None = None,
    replace_bad: bool = True,
    max_input_tokens: int = Limits.max_input_tokens,
    truncate_long: bool = False,
) -> Plan:
    exp = export_format.open_export(export_dir)
    bad_dim = expected_dim(exp, spec) if replace_bad else None
    limit = max_input_tokens if spec.provider == "openai" else 0
    cache = embeddings.EmbeddingCache(cache_path)
    n = tokens = cached = too_long_count = 0
    too_long: list[dict] = []
    by_shard: dict[str, np.ndarray] = {}
    for sh in exp.shards:
        shard_counts = []
        for batch in exp.shard_batches(sh):
            idx = _needs(batch, force, bad_dim)
            if not idx:
                continue
            rows = batch.drop_columns(["embedding"]).to_pylist()  # the texts to embed; not the vectors
            texts, counts, over = _texts(rows, idx, limit, truncate_long)
            shard_counts.extend(counts)
            too_long_count += len(over)
            too_long.extend(over[: MAX_LISTED - len(too_long)])
            hashes = [embeddings.text_hash(t) for t in texts]
            hits = cache.get_many(spec.model_id, hashes)
            for h, c in zip(hashes, counts, strict=True):
                if h in hits:
                    cached += 1
                else:
                    tokens += min(c, limit) if limit else c
            n += len(idx)
        if shard_counts:
            by_shard[sh["chunks_file"]] = np.asarray(shard_counts, dtype=np.int32)
    cache.close()
    price = (
        price_per_mtok
        if price_per_mtok is not None
        else (embeddings.PRICE_PER_MTOK.get(f"{spec.provider}:{spec.model_name}", 0.0) if spec.paid else 0.0)
    )
    which = options(force, replace_bad, truncate_long)
    return Plan(spec.model_id, n, tokens, price, cached, limit, too_long, too_long_count, which, by_shard)


def outcome(done: dict) -> dict:
    """What ``apply`` did, for the page, without repeating the plan shown before it (``Plan.as_dict``):
    the vectors written, how many were computed now and how many came from the cache, and the API's tally
    (tokens billed, spend, rate limits) when it was called."""
    embedded, now = int(done.get("embedded") or 0), int(done.get("computed_now") or 0)
    out = {
        "model": done.get("model", ""),
        "chunks given a vector": embedded,
        "computed now": now,
        "from the cache": embedded - now,
    }
    if "api" in done:
        out["embedding API"] = done["api"]
    return out


def apply(
    export_dir: str | os.PathLike,
    spec: embeddings.ModelSpec,
    cache_path: str | os.PathLike,
    allow_spend: bool = False,
    max_cost_usd: float = 0.0,
    force: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    price_per_mtok: float | None = None,
    replace_bad: bool = True,
    limits: Limits | None = None,
    concurrency: int = 8,
    truncate_long: bool = False,
    planned: Plan | None = None,
) -> dict:
    """Fill missing vectors (all vectors with ``force``; served vectors that cannot be loaded -- NaN, zeros,
    another dimension -- with ``replace_bad``, each listed in the manifest) and record which were computed,
    with what model.

    An OpenAI-compatible model runs at the rate limit (``limits``: the account's; 0 figures are learnt from
    the API's headers) with up to ``concurrency`` requests in flight. A chunk over the per-input token limit
    stops everything before any spend unless ``truncate_long`` (then it is embedded cut to the limit and
    listed in the manifest). The spend cap holds during the run too: a request that could take the billed
    total over ``max_cost_usd`` is not sent (``SpendCapReached``); what was embedded is cached, no shard is
    half-written, and the manifest still names the files it did.

    ``planned``: what ``plan`` returned moments before for the same export and options (phase 01 shows it
    before any spend); it is not counted again (tokenising every text twice cost 20 s at 100k chunks)."""
    export_dir = Path(export_dir)
    limits = limits or Limits()
    same = (
        planned is not None
        and planned.model_id == spec.model_id
        and planned.max_input_tokens == (limits.max_input_tokens if spec.provider == "openai" else 0)
        and (price_per_mtok is None or planned.price_per_mtok == price_per_mtok)
        and planned.options == options(force, replace_bad, truncate_long)
    )
    p = (
        planned
        if same
        else plan(
            export_dir,
            spec,
            cache_path,
            force,
            price_per_mtok,
            replace_bad,
            limits.max_input_tokens,
            truncate_long,
        )
    )
    if p.chunks_to_embed == 0:
        return {"embedded": 0, "computed_now": 0, **p.as_dict()}
    if p.too_long_count and not truncate_long:
        raise InputTooLong(p.too_long_message())
    if spec.paid and p.tokens and not allow_spend:
        raise SpendNotAllowed(
            f"re-embedding {p.chunks_to_embed} chunks with {spec.model_id} costs about ${p.est_cost_usd:.2f} "
            f"({p.tokens:,} tokens); set allow_embedding_spend: true (and max_embedding_cost_usd) to allow it"
        )
    if spec.paid and max_cost_usd and p.est_cost_usd > max_cost_usd:
        raise SpendNotAllowed(
            f"estimated ${p.est_cost_usd:.2f} exceeds max_embedding_cost_usd={max_cost_usd}"
        )
    exp = export_format.open_export(export_dir)
    manifest = exp.manifest
    bad_dim = expected_dim(exp, spec) if replace_bad else None
    cache = embeddings.EmbeddingCache(cache_path)
    computed_total = 0
    replaced = list(manifest.get("replaced_vectors", []))
    replaced_count = int(manifest.get("replaced_vectors_count", len(replaced)))
    truncated = list(manifest.get("truncated_inputs", []))
    embedder = None
    if spec.provider == "openai" and p.cached < p.chunks_to_embed:  # something to send (the key is read now)
        embedder = embeddings.rate_limited(
            spec,
            limits=limits,
            concurrency=concurrency,
            price_per_mtok=p.price_per_mtok,
            max_cost_usd=max_cost_usd if spec.paid else 0.0,
        )
    bar = None
    if progress:
        from .display import progress as tqdm

        bar = tqdm(total=p.chunks_to_embed, desc=f"re-embedding ({spec.model_id})", unit="chunk")

    def on_done(n: int) -> None:
        if bar is None:
            return
        bar.update(n)
        if embedder is not None:
            st = embedder.progress
            bar.set_postfix_str(
                f"{st.tokens:,} tokens, ${st.usd:.4f}, {st.rate_limited} × 429", refresh=False
            )

    try:
        for pos, sh in enumerate(manifest["shards"]):
            table = export_format.read_table(export_dir / sh["chunks_file"])
            idx = _needs(table, force, bad_dim)
            if not idx:
                continue
            rows = table.drop_columns(["embedding"]).to_pylist()
            served = table.column("embedding")
            for i in idx:
                why = _unusable(served[i].as_py(), bad_dim or 0)
                if why:
                    replaced_count += 1
                if why and len(replaced) < MAX_LISTED:
                    replaced.append(
                        {
                            "document_id": rows[i]["document_id"],
                            "chunk_id": rows[i]["chunk_id"],
                            "served": why,
                        }
                    )
            planned_counts = (p.counts or {}).get(sh["chunks_file"])
            if planned_counts is not None and len(planned_counts) != len(idx):
                planned_counts = None  # not the shard the plan counted: count again
            texts, counts, over = _texts(rows, idx, p.max_input_tokens, truncate_long, planned_counts)
            # the embedder batches by these counts; a text cut here to the limit it counts itself
            cut_at = p.max_input_tokens if truncate_long else 0
            sent = [None if cut_at and c > cut_at else c for c in counts]
            vecs, computed = embeddings.embed_texts(
                texts, spec, cache, batch_size, embedder=embedder, on_done=on_done, tokens=sent
            )
            computed_total += computed
            if bar is not None:
                bar.update(len(idx) - computed)  # the cached ones
            got = records.vector_problems(list_array(vecs), bad_dim or vecs.shape[1])
            if any(got):
                bad = [(rows[idx[j]]["chunk_id"], why) for j, why in enumerate(got) if why][:5]
                raise ExportError(
                    f"{spec.model_id} returned unusable vectors for shard {sh['chunks_file']}: {bad}; nothing of "
                    "this shard was written. Check the embedding model (embed_provider, embed_model)"
                )
            src = table.column("embedding_source").to_pylist()
            for i in idx:
                src[i] = "computed"
            table = table.set_column(
                table.schema.get_field_index("embedding"),
                "embedding",
                with_rows_replaced(table.column("embedding"), idx, vecs),
            )
            table = table.set_column(
                table.schema.get_field_index("embedding_source"),
                "embedding_source",
                pa.array(src, type=pa.string()),
            )
            gen = sh.get("generation", 0) + 1
            new_name = f"chunks-{sh['index']:05d}-{gen}.parquet"
            sha = export_format.write_table_atomic(table, export_dir / new_name)
            old = sh["chunks_file"]
            manifest["replaced_vectors"] = replaced  # the first MAX_LISTED, named
            manifest["replaced_vectors_count"] = replaced_count
            if over:  # embedded cut to the per-input limit (only with truncate_long)
                truncated.extend({**o, "embedded_tokens": p.max_input_tokens} for o in over)
                manifest["truncated_inputs"] = truncated[:MAX_LISTED]
                manifest["truncated_inputs_count"] = int(manifest.get("truncated_inputs_count", 0)) + len(
                    over
                )
            manifest["shards"][pos] = {
                **sh,
                "chunks_file": new_name,
                "chunks_sha256": sha,
                "generation": gen,
                "embedding_model": spec.model_id,
            }
            atomic.write_json(export_dir / "manifest.json", manifest)  # the swap: new file named, old unnamed
            (export_dir / old).unlink(missing_ok=True)
    finally:
        cache.close()
        if bar is not None:
            bar.close()
    from .extract import embedding_stats

    manifest["embeddings"] = embedding_stats(export_dir, manifest["shards"])
    manifest["embedding_dimension"] = manifest["embeddings"]["dimension"]
    atomic.write_json(export_dir / "manifest.json", manifest)
    out = {"embedded": p.chunks_to_embed, "computed_now": computed_total, **p.as_dict()}
    if embedder is not None:
        out["api"] = embedder.progress.as_dict()
    return out
