"""The RAG service switch: one factory the backend's ``rag_service.py`` calls, reading ``config.env``.

``USE_LOCAL_VECTOR_DB=false`` gives the LlamaCloud arm (``LlamaCloudIndex``), ``true`` the local arm
(``VectorStoreIndex`` over ``ChromaVectorStore``, embedding queries with the model that made the stored
vectors). Both arms report **cosine similarity**: ``ChromaVectorStore`` scores ``exp(-distance)`` (for
cosine space, distance = 1 - cosine), so the local arm's scores are turned back into cosine, and a
``SIMILARITY_CUTOFF`` keeps one meaning on both arms.

In ``backend/app/services/checkup_design/rag_service.py``::

    from runbook.rag_switch import load_config, build_query_engine
    query_engine = build_query_engine(load_config("backend/config.env"))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import atomic, credentials, embeddings, retrieval_modes
from .errors import RunbookError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
GOOGLE_DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"


class RagConfigError(RunbookError, ValueError):
    pass


class GeminiUnavailable(RunbookError, RuntimeError):
    """A Google key is set, so answers by Gemini are expected, and they cannot be had: never degrade
    silently to retrieval only. The message names the model, the base URL and what to do (never the key)."""


@dataclass
class RagConfig:
    use_local: bool
    local_path: str = ""
    collection: str = "welno_medical_knowledge"
    chroma_host: str = ""  # set: a chroma run server instead of the embedded path
    chroma_port: int = 8000
    cloud_index_name: str = ""
    cloud_index_id: str = ""
    cloud_project: str = "Default"
    cloud_base_url: str = ""
    cloud_key_env: str = "LLAMA_CLOUD_API_KEY"
    embed: embeddings.ModelSpec = field(
        default_factory=lambda: embeddings.ModelSpec("openai", "text-embedding-3-small", 1536)
    )
    top_k: int = 5
    similarity_cutoff: float = 0.0  # cosine, both arms
    llm_model: str = "gemini-2.0-flash"
    llm_key_env: str = "GOOGLE_API_KEY"
    llm_base_url: str = ""  # GEMINI_BASE_URL: "" is Google's own endpoint; the rehearsal server stands in
    retrieval: retrieval_modes.Mode = field(default_factory=retrieval_modes.Mode)  # the local arm's mode
    values: dict = field(default_factory=dict, repr=False)  # the file's other entries (may hold keys)

    @property
    def arm(self) -> str:
        return "local" if self.use_local else "cloud"

    def secret(self, env_name: str, purpose: str, required: bool = True):
        """A key from config.env itself (as the seed's backend keeps them) or else the environment."""
        if env_name and self.values.get(env_name):
            return credentials.Secret(env_name, self.values[env_name])
        return credentials.get_secret(env_name, required=required, purpose=purpose)


def load_config(path: str | os.PathLike) -> RagConfig:
    from dotenv import dotenv_values

    path = Path(path)
    if not path.exists():
        raise RagConfigError(
            f"{path} not found: the RAG service reads USE_LOCAL_VECTOR_DB and friends from it"
        )
    v = {k: (x or "") for k, x in dotenv_values(path).items()}
    for k, x in v.items():
        # *_KEY_ENV entries name a variable; they are not keys themselves (masking them garbles outputs)
        # nor are numbers and switches (MAX_TOKENS=1024 would mask every "1024" of every page)
        secretish = any(s in k for s in ("KEY", "TOKEN", "SECRET", "PASSWORD")) and not k.endswith("_ENV")
        if secretish and x and not x.strip().isdigit() and x.strip().lower() not in TRUE | FALSE:
            credentials.remember(x)
    flag = v.get("USE_LOCAL_VECTOR_DB", "").strip().lower()
    if flag not in TRUE | FALSE:
        raise RagConfigError(
            f"{path}: USE_LOCAL_VECTOR_DB must be true or false, not {v.get('USE_LOCAL_VECTOR_DB')!r}"
        )
    spec = embeddings.ModelSpec(
        v.get("LOCAL_EMBED_PROVIDER", "openai"),
        v.get("LOCAL_EMBED_MODEL", "text-embedding-3-small"),
        int(v["LOCAL_EMBED_DIMENSION"]) if v.get("LOCAL_EMBED_DIMENSION") else None,
        v.get("LOCAL_EMBED_API_KEY_ENV", "OPENAI_API_KEY"),
        v.get("LOCAL_EMBED_API_BASE", "").strip(),
    )
    return RagConfig(
        use_local=flag in TRUE,
        local_path=v.get("LOCAL_VECTOR_DB_PATH", ""),
        collection=v.get("LOCAL_VECTOR_DB_COLLECTION", "welno_medical_knowledge"),
        chroma_host=v.get("LOCAL_VECTOR_DB_HOST", ""),
        chroma_port=int(v.get("LOCAL_VECTOR_DB_PORT") or 8000),
        cloud_index_name=v.get("LLAMACLOUD_INDEX_NAME", ""),
        cloud_index_id=v.get("LLAMACLOUD_INDEX_ID", ""),
        cloud_project=v.get("LLAMACLOUD_PROJECT", "Default"),
        cloud_base_url=v.get("LLAMA_CLOUD_BASE_URL", ""),
        cloud_key_env=v.get("LLAMACLOUD_API_KEY_ENV", "LLAMA_CLOUD_API_KEY"),
        embed=spec,
        top_k=int(v.get("RAG_TOP_K") or 5),
        similarity_cutoff=float(v.get("SIMILARITY_CUTOFF") or 0.0),
        llm_model=v.get("GEMINI_MODEL", "gemini-2.0-flash"),
        llm_key_env=v.get("GEMINI_API_KEY_ENV", "GOOGLE_API_KEY"),
        llm_base_url=v.get("GEMINI_BASE_URL", "").strip(),
        retrieval=_retrieval(path, v),
        values=v,
    )


def _retrieval(path: Path, v: dict) -> retrieval_modes.Mode:
    local = (v.get("USE_LOCAL_VECTOR_DB") or "").strip().lower() in TRUE
    try:
        return retrieval_modes.from_values(v, check=local)
    except retrieval_modes.RetrievalModeError as e:
        raise RagConfigError(f"{path}: {e}") from None


def write_config(path: str | os.PathLike, entries: dict, mode: int = 0o600) -> Path:
    """Write a config.env atomically (owner-only: it may hold keys). Values are written as given."""
    lines = [f"{k}={_quote(str(v))}" for k, v in entries.items()]
    atomic.write_text(path, "\n".join(lines) + "\n", mode=mode)
    return Path(path)


def _quote(v: str) -> str:
    return f'"{v}"' if any(c in v for c in " #\"'") else v


def chroma_score_to_cosine(score: float) -> float:
    """ChromaVectorStore's exp(-distance) back to cosine similarity (cosine space)."""
    return 1.0 + math.log(score) if score > 0 else -1.0


def cosine_to_chroma_score(cos: float) -> float:
    return math.exp(cos - 1.0)


def _filtered_retriever(inner, cutoff: float, to_cosine=None):
    """Wraps a retriever: scores turned into cosine (``to_cosine``), results below the cutoff dropped."""
    from llama_index.core.retrievers import BaseRetriever

    class CosineCutoffRetriever(BaseRetriever):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def _retrieve(self, query_bundle):
            out = []
            for n in self.inner.retrieve(query_bundle):
                if to_cosine is not None and n.score is not None:
                    n.score = to_cosine(n.score)
                if n.score is None or n.score >= cutoff:
                    out.append(n)
            return out

    return CosineCutoffRetriever()


def open_local_collection(cfg: RagConfig):
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if cfg.chroma_host:
        client = chromadb.HttpClient(host=cfg.chroma_host, port=cfg.chroma_port, settings=settings)
    else:
        if not cfg.local_path or not Path(cfg.local_path).exists():
            raise RagConfigError(f"LOCAL_VECTOR_DB_PATH {cfg.local_path!r} does not exist")
        client = chromadb.PersistentClient(path=cfg.local_path, settings=settings)
    try:
        return client.get_collection(cfg.collection, embedding_function=None)
    except Exception as e:  # noqa: BLE001 - chroma raises several types for a missing collection
        raise RagConfigError(
            f"collection {cfg.collection!r} not found in {cfg.local_path or cfg.chroma_host}: {e}"
        ) from None


def chroma_nodes(col, ids: list[str]) -> list:
    """The collection's records as LlamaIndex nodes, in the order of ``ids``, read back exactly as
    ``ChromaVectorStore`` reads a query's results (so a hybrid search fuses one node per chunk)."""
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    if not ids:
        return []
    got = col.get(ids=list(ids), include=["documents", "metadatas"])
    by_id = {
        i: metadata_dict_to_node(m, text=t)
        for i, t, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
    }
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise RagConfigError(
            f"the sparse index names {len(missing)} record(s) the collection {col.name!r} does not hold "
            f"(e.g. {missing[0]!r}): it is out of step; run phase 07 (or phase 03) to rebuild it"
        )
    return [by_id[i] for i in ids]


def build_retriever(cfg: RagConfig, filters=None):
    """The retriever for the arm the flag selects, scores in cosine on both arms (fused or reranked scores
    on a hybrid or reranked arm). ``filters``: LlamaIndex ``MetadataFilters``, on either arm."""
    if cfg.use_local:
        from llama_index.core import VectorStoreIndex
        from llama_index.vector_stores.chroma import ChromaVectorStore

        col = open_local_collection(cfg)
        spec = cfg.embed
        if spec.paid and cfg.values.get(spec.api_key_env):
            os.environ.setdefault(spec.api_key_env, cfg.values[spec.api_key_env])
        index = VectorStoreIndex.from_vector_store(
            ChromaVectorStore(chroma_collection=col), embed_model=embeddings.build(spec)
        )

        def dense(k: int, filters=None):
            return _filtered_retriever(
                index.as_retriever(similarity_top_k=k, filters=filters),
                cfg.similarity_cutoff,
                chroma_score_to_cosine,
            )

        llm = None
        if cfg.retrieval.rerank == "gemini":
            llm = build_llm(cfg, cfg.secret(cfg.llm_key_env, "Google API key (Gemini reranking)"))
        return retrieval_modes.build(
            cfg.retrieval, dense, cfg.top_k, llm, filters, lambda ids: chroma_nodes(col, ids)
        )
    from llama_cloud.lib.index import LlamaCloudIndex

    key = cfg.secret(cfg.cloud_key_env, "LlamaCloud API key")
    with credentials.scrubbed_errors():
        ident = {"index_id": cfg.cloud_index_id} if cfg.cloud_index_id else {"name": cfg.cloud_index_name}
        index = LlamaCloudIndex(
            **ident, project_name=cfg.cloud_project, api_key=key.reveal(), base_url=cfg.cloud_base_url or None
        )
    # LlamaCloudRetriever drops falsy settings (0.0 never reaches the server): filter the cutoff here
    inner = index.as_retriever(dense_similarity_top_k=cfg.top_k, filters=filters)
    return _filtered_retriever(inner, cfg.similarity_cutoff)


@dataclass
class Answerer:
    """Retrieval plus, when a Google key is present, a Gemini answer; otherwise retrieval only (said so).

    The answer is synthesised from the very nodes returned (one retrieval per question). When Gemini fails
    at ask time, ``ask`` raises ``GeminiUnavailable``: a missing answer never stands in for a broken LLM."""

    retriever: object
    llm: object | None
    note: str
    cfg: RagConfig | None = field(default=None, repr=False)

    def ask(self, question: str) -> dict:
        nodes = self.retriever.retrieve(question)
        answer = None
        if self.llm is not None:
            from llama_index.core.response_synthesizers import get_response_synthesizer

            # what RetrieverQueryEngine.query does after retrieving: the same "compact" synthesizer
            synth = get_response_synthesizer(llm=self.llm)
            try:
                answer = str(_in_worker_thread(synth.synthesize, question, nodes))
            except Exception as e:  # noqa: BLE001 - re-raised as a clear error without the key
                if self.cfg is None:
                    raise
                raise GeminiUnavailable(gemini_error(self.cfg, e, "could not answer")) from None
        return {"question": question, "nodes": nodes, "answer": answer, "note": self.note}


def _in_worker_thread(fn, *args):
    """GoogleGenAI's sync chat runs ``asyncio.run``, which fails inside a running event loop (a Jupyter
    kernel) and leaves the calling thread without an event loop (LlamaCloudIndex then complains): run it
    in a worker thread, with the caller's context (LlamaIndex instrumentation lives in contextvars)."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="gemini") as pool:
        return pool.submit(contextvars.copy_context().run, fn, *args).result()


GEMINI_TIMEOUT_MS = 120_000  # per request: an endpoint that never answers must not hang the service


def gemini_where(cfg: RagConfig) -> str:
    return cfg.llm_base_url or f"{GOOGLE_DEFAULT_BASE_URL} (Google's default; GEMINI_BASE_URL is empty)"


def _unreachable(exc: BaseException) -> bool:
    import httpx

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def gemini_error(cfg: RagConfig, exc: BaseException, doing: str) -> str:
    """A clear message for a Gemini failure: model, base URL, what went wrong, what to do; keys scrubbed."""
    code, status = getattr(exc, "code", None), getattr(exc, "status", None)
    detail = getattr(exc, "message", None) or str(exc)
    off = f"or unset {cfg.llm_key_env} for retrieval only"
    if isinstance(code, int) and (code in (401, 403) or "API_KEY" in str(exc) or "API key" in detail):
        why = f"the Google key in {cfg.llm_key_env} was refused ({code} {status}: {detail})"
        fix = f"put a valid key for this endpoint in {cfg.llm_key_env}, {off}"
    elif code == 404:
        why = f"the model or route was not found ({code} {status}: {detail})"
        fix = f"set GEMINI_MODEL to a model this endpoint serves and check GEMINI_BASE_URL, {off}"
    elif isinstance(code, int):
        why = f"the endpoint answered {code} {status}: {detail}"
        fix = f"retry later or check the quota, GEMINI_MODEL and GEMINI_BASE_URL, {off}"
    elif _unreachable(exc):
        why = f"the endpoint cannot be reached ({type(exc).__name__}: {exc})"
        fix = (
            "check GEMINI_BASE_URL (empty means Google's own endpoint) and that this machine reaches it "
            f"(a rehearsal needs the local server running), {off}"
        )
    else:
        why = f"{type(exc).__name__}: {exc}"
        fix = f"check GEMINI_MODEL, GEMINI_BASE_URL and {cfg.llm_key_env}, {off}"
    return credentials.scrub(
        f"Gemini answers ({cfg.llm_key_env} is set): model {cfg.llm_model!r} at {gemini_where(cfg)} "
        f"{doing}: {why}; {fix}"
    )


def build_llm(cfg: RagConfig, key: credentials.Secret):
    """LlamaIndex's GoogleGenAI for ``cfg`` (base URL from GEMINI_BASE_URL). Its constructor reads the
    model's metadata (``GET {base}/v1beta/models/{model}``), so a wrong key, URL or model fails here."""
    try:
        from llama_index.llms.google_genai import GoogleGenAI
    except ImportError as e:
        raise GeminiUnavailable(
            f"Gemini answers ({cfg.llm_key_env} is set): model {cfg.llm_model!r} at {gemini_where(cfg)} "
            f"needs llama-index-llms-google-genai, which cannot be imported ({e}): install the "
            f"requirements (.venv/bin/pip install -r requirements.txt), or unset {cfg.llm_key_env} for "
            "retrieval only"
        ) from None
    http_options = {"timeout": GEMINI_TIMEOUT_MS}
    if cfg.llm_base_url:
        http_options["base_url"] = cfg.llm_base_url
    try:
        return GoogleGenAI(model=cfg.llm_model, api_key=key.reveal(), http_options=http_options)
    except Exception as e:  # noqa: BLE001 - re-raised as a clear error, scrubbed of keys
        raise GeminiUnavailable(gemini_error(cfg, e, "could not be set up")) from None


def build_query_engine(cfg: RagConfig) -> Answerer:
    """The retriever of the flagged arm, plus Gemini answers when the Google key is set. With the key set,
    Gemini must work (``GeminiUnavailable`` otherwise); without it, retrieval only, said in ``note``."""
    retriever = build_retriever(cfg)
    key = cfg.secret(cfg.llm_key_env, "Gemini answers", required=False)
    if not key:
        return Answerer(
            retriever, None, f"retrieval only: {cfg.llm_key_env} is not set, no answer is generated"
        )
    llm = build_llm(cfg, key)
    return Answerer(retriever, llm, f"answers by {cfg.llm_model} at {gemini_where(cfg)}", cfg)


class EmbeddingMismatch(RunbookError, RuntimeError):
    pass


def check_embedding_parity(
    collection, spec: embeddings.ModelSpec, sample: int = 50, min_cosine: float = 0.999, seed: int = 0
) -> dict:
    """Embed a sample of stored chunks with the local arm's query embedder; each must match its stored
    vector (cosine >= min_cosine), or queries would be embedded in another space than the index."""
    import random

    from . import export_format

    stored_model = (collection.metadata or {}).get("embedding_model", "unknown")
    got = collection.get(include=["documents", "metadatas", "embeddings"], limit=max(sample * 4, sample))
    idx = list(range(len(got["ids"])))
    random.Random(seed).shuffle(idx)
    idx = idx[:sample]
    rows = []
    for i in idx:
        md = got["metadatas"][i]
        node = __import__("json").loads(md["_node_content"])
        rows.append(
            {
                "chunk_id": got["ids"][i],
                "text": got["documents"][i],
                "metadata_json": export_format.dumps(node.get("metadata") or {}),
                "relationships_json": export_format.dumps(node.get("relationships") or {}),
                "node_extra_json": export_format.dumps(
                    {
                        "excluded_embed_metadata_keys": node.get("excluded_embed_metadata_keys"),
                        "excluded_llm_metadata_keys": node.get("excluded_llm_metadata_keys"),
                        "metadata_template": node.get("metadata_template"),
                        "metadata_seperator": node.get("metadata_separator"),
                        "text_template": node.get("text_template"),
                    }
                ),
                "start_char_idx": node.get("start_char_idx"),
                "end_char_idx": node.get("end_char_idx"),
                "stored": np.asarray(got["embeddings"][i], dtype=np.float32),
            }
        )
    stored = np.stack([r["stored"] for r in rows])
    if spec.dimension and spec.dimension != stored.shape[1]:
        raise EmbeddingMismatch(
            f"the local query embedder {spec.model_id} makes {spec.dimension}-d vectors; the "
            f"collection holds {stored.shape[1]}-d vectors from {stored_model}: use {stored_model}"
        )
    vecs, _ = embeddings.embed_texts([export_format.embed_text(r) for r in rows], spec)
    if vecs.shape[1] != stored.shape[1]:
        raise EmbeddingMismatch(
            f"the local query embedder {spec.model_id} makes {vecs.shape[1]}-d vectors; the "
            f"collection holds {stored.shape[1]}-d vectors from {stored_model}: use {stored_model}"
        )
    cos = np.sum(vecs * stored, axis=1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(stored, axis=1))
    result = {
        "embedder": spec.model_id,
        "collection model": stored_model,
        "sampled": len(rows),
        "min cosine": round(float(cos.min()), 6),
        "mean cosine": round(float(cos.mean()), 6),
        "goal": min_cosine,
    }
    if cos.min() < min_cosine:
        raise EmbeddingMismatch(
            f"query-embedding parity failed: the local embedder {spec.model_id} reproduces the stored vectors "
            f"(made by {stored_model}) only to cosine {cos.min():.4f} (goal {min_cosine}); set the local arm's "
            f"embedding model to {stored_model}"
        )
    return result


def config_entries(
    use_local: bool,
    chroma_path: str,
    collection: str,
    spec: embeddings.ModelSpec,
    index_name: str,
    index_id: str,
    project: str,
    base_url: str,
    cloud_key_env: str,
    top_k: int,
    cutoff: float,
    llm_model: str,
    llm_key_env: str,
    gemini_base_url: str = "",
    retrieval: retrieval_modes.Mode | None = None,
) -> dict:
    """The settings of a config.env for the switch (names of key variables, never their values).
    ``gemini_base_url``: "" for Google's own endpoint, or the rehearsal server's URL. ``retrieval``: the
    local arm's mode (``retrieval_modes.choose``); None is dense."""
    return {
        "USE_LOCAL_VECTOR_DB": "true" if use_local else "false",
        "LOCAL_VECTOR_DB_PATH": chroma_path,
        "LOCAL_VECTOR_DB_COLLECTION": collection,
        "LOCAL_EMBED_PROVIDER": spec.provider,
        "LOCAL_EMBED_MODEL": spec.model_name,
        "LOCAL_EMBED_DIMENSION": spec.dimension or "",
        "LOCAL_EMBED_API_KEY_ENV": spec.api_key_env,
        "LOCAL_EMBED_API_BASE": spec.api_base,
        "LLAMACLOUD_INDEX_NAME": index_name,
        "LLAMACLOUD_INDEX_ID": index_id,
        "LLAMACLOUD_PROJECT": project,
        "LLAMA_CLOUD_BASE_URL": base_url,
        "LLAMACLOUD_API_KEY_ENV": cloud_key_env,
        "RAG_TOP_K": top_k,
        "SIMILARITY_CUTOFF": cutoff,
        "GEMINI_MODEL": llm_model,
        "GEMINI_API_KEY_ENV": llm_key_env,
        "GEMINI_BASE_URL": gemini_base_url,
        **retrieval_modes.entries(retrieval or retrieval_modes.Mode()),
    }


def with_flag(cfg: RagConfig, use_local: bool) -> RagConfig:
    from dataclasses import replace

    return replace(cfg, use_local=use_local)


def side_by_side(arms: dict, questions: list[str]) -> list[dict]:
    """Each question through each arm: top titles and cosine scores (and answers when an LLM is set)."""
    rows = []
    for q in questions:
        row = {"question": q}
        for name, answerer in arms.items():
            out = answerer.ask(q)
            row[f"{name}: top results"] = "; ".join(
                f"{(n.node.metadata or {}).get('title') or (n.node.metadata or {}).get('file_name') or n.node.node_id} "
                f"({n.score:.3f})"
                for n in out["nodes"][:3]
            )
            if out["answer"] is not None:
                row[f"{name}: answer"] = out["answer"]
        rows.append(row)
    return rows


def health_report(cfg: RagConfig, collection=None) -> dict:
    """What the backend's health route returns, so that a cutover can *prove* the switch: the live arm,
    on the local arm the collection and its record count, and the model that embeds queries. In the
    backend (FastAPI)::

        cfg = rag_switch.load_config("backend/config.env")

        @app.get("/health")
        def health():
            return rag_switch.health_report(cfg)
    """
    info = {"status": "ok", "arm": cfg.arm}
    if cfg.use_local:
        col = collection if collection is not None else open_local_collection(cfg)
        info.update(
            collection=col.name,
            count=col.count(),
            embedding_model=cfg.embed.model_id,
            retrieval=cfg.retrieval.label,
            chroma=f"{cfg.chroma_host}:{cfg.chroma_port}" if cfg.chroma_host else cfg.local_path,
        )
    else:
        info.update(index=cfg.cloud_index_id or cfg.cloud_index_name)
    return info


def query_answer(cfg: RagConfig, out: dict) -> dict:
    """What a backend's query route returns for ``Answerer.ask``'s result: the arm, the answer and the
    records it used (ids first: phase 06's smoke questions check them against the verified collection)."""
    return {
        "arm": cfg.arm,
        "answer": out["answer"],
        "note": out["note"],
        "results": [
            {
                "id": n.node.node_id,
                "score": n.score,
                "title": (n.node.metadata or {}).get("title"),
                "text": n.node.get_content()[:300],
            }
            for n in out["nodes"]
        ],
    }
