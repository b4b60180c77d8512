"""The local arm's retrieval modes, behind the same switch (``config.env``) as the arm itself.

LlamaCloud retrieves by dense similarity, by sparse (keyword) similarity fused with it by ``alpha`` (0 sparse
only, 1 dense only), and can rerank the fused candidates down to ``rerank_top_n``. A local Chroma collection
holds the dense side only (chromadb 1.5.9 refuses sparse indexes in local collections), so:

- ``dense``: Chroma alone, as before.
- ``hybrid``: Chroma's dense candidates plus a BM25 index over the same chunks (``runbook.sparse_index``:
  Korean morphemes by kiwipiepy, scored by bm25s), fused by LlamaIndex's ``QueryFusionRetriever``
  (relative-score fusion, weights ``alpha`` and ``1 - alpha``).
- either, plus an optional reranking step (LlamaIndex node postprocessors): ``cross-encoder:<local path>``
  (sentence-transformers, loaded from disk) or ``gemini`` (LLMRerank through the answer model's settings).

``config.env`` entries: ``LOCAL_RETRIEVAL_MODE`` (dense | hybrid), ``LOCAL_HYBRID_ALPHA``,
``LOCAL_SPARSE_INDEX_PATH``, ``LOCAL_CANDIDATES_TOP_K`` (dense and sparse candidates before fusion),
``LOCAL_RERANK`` ("" | cross-encoder:<path> | gemini) and ``LOCAL_RERANK_TOP_N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import RunbookError

MODES = ("dense", "hybrid")


class RetrievalModeError(RunbookError, ValueError):
    """A retrieval setting that cannot work; the message names the setting and what to do."""


@dataclass(frozen=True)
class Mode:
    mode: str = "dense"
    alpha: float = 0.5
    sparse_path: str = ""
    candidates: int = 30
    rerank: str = ""
    rerank_top_n: int = 0  # 0: the arm's top_k

    @property
    def label(self) -> str:
        """The arm's name on phase 05's page: "local dense", "local hybrid (alpha 0.5) + rerank"."""
        name = "local dense" if self.mode == "dense" else f"local hybrid (alpha {self.alpha:g})"
        return name + (" + rerank" if self.rerank else "")

    def check(self) -> Mode:
        if self.mode not in MODES:
            raise RetrievalModeError(
                f"LOCAL_RETRIEVAL_MODE {self.mode!r} is not one of {', '.join(MODES)} "
                "(set local_retrieval_mode in phase 04)"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise RetrievalModeError(
                f"LOCAL_HYBRID_ALPHA {self.alpha} must lie in [0, 1] (0 sparse only, 1 dense only)"
            )
        if self.rerank_top_n < 0:
            raise RetrievalModeError(f"LOCAL_RERANK_TOP_N {self.rerank_top_n} must be 0 (the top_k) or more")
        if self.candidates < 1:
            raise RetrievalModeError(f"LOCAL_CANDIDATES_TOP_K {self.candidates} must be at least 1")
        if self.mode == "hybrid" and not self.sparse_path:
            raise RetrievalModeError(
                "LOCAL_RETRIEVAL_MODE is hybrid but LOCAL_SPARSE_INDEX_PATH is empty: phase 03 builds the "
                "sparse index and phase 04 writes its path"
            )
        if self.rerank and not (self.rerank == "gemini" or self.rerank.startswith("cross-encoder:")):
            raise RetrievalModeError(
                f"LOCAL_RERANK {self.rerank!r}: use '' (no reranking), 'cross-encoder:<local model path>' "
                "or 'gemini'"
            )
        if self.rerank.startswith("cross-encoder:"):
            path = self.rerank.split(":", 1)[1]
            if not Path(path).is_dir():
                raise RetrievalModeError(
                    f"LOCAL_RERANK names a cross-encoder at {path!r}, which is not a folder: download the "
                    "model once (e.g. huggingface-cli download <model> --local-dir <path>) and name that path"
                )
        return self


def from_values(v: dict, check: bool = True) -> Mode:
    """The mode from config.env's entries (absent entries: dense, as before these settings existed);
    ``check``: refuse settings that cannot work (off while the flag selects the cloud arm, so a broken local
    setting never blocks going back to the cloud)."""

    def num(key, cast, default):
        raw = str(v.get(key) or "").strip()
        if not raw:
            return default
        try:
            return cast(raw)
        except ValueError:
            raise RetrievalModeError(f"{key}={raw!r} is not a number") from None

    mode = Mode(
        mode=(v.get("LOCAL_RETRIEVAL_MODE") or "dense").strip().lower(),
        alpha=num("LOCAL_HYBRID_ALPHA", float, 0.5),
        sparse_path=(v.get("LOCAL_SPARSE_INDEX_PATH") or "").strip(),
        candidates=num("LOCAL_CANDIDATES_TOP_K", int, 30),
        rerank=(v.get("LOCAL_RERANK") or "").strip(),
        rerank_top_n=num("LOCAL_RERANK_TOP_N", int, 0),
    )
    return mode.check() if check else mode


def entries(mode: Mode) -> dict:
    """config.env entries of a mode (the inverse of ``from_values``)."""
    return {
        "LOCAL_RETRIEVAL_MODE": mode.mode,
        "LOCAL_HYBRID_ALPHA": f"{mode.alpha:g}",
        "LOCAL_SPARSE_INDEX_PATH": mode.sparse_path,
        "LOCAL_CANDIDATES_TOP_K": str(mode.candidates),
        "LOCAL_RERANK": mode.rerank,
        "LOCAL_RERANK_TOP_N": str(mode.rerank_top_n or ""),
    }


def preset_fuses_sparse(preset: dict | None) -> bool:
    """Whether a LlamaCloud index's ``preset_retrieval_parameters`` fuse sparse (keyword) results in: an
    ``alpha`` given and below 1 (null or 1 is dense only)."""
    alpha = (preset or {}).get("alpha")
    return alpha is not None and float(alpha) < 1


def preset_needs_dense_arm(preset: dict | None) -> bool:
    """Whether the cloud's preset is hybrid or reranked: then phase 05 adds a dense-only cloud arm (alpha 1,
    reranking off), which shows how much of the difference between the arms the preset explains."""
    return preset_fuses_sparse(preset) or bool((preset or {}).get("enable_reranking"))


def describe_preset(preset: dict | None) -> str:
    """The preset in words: "dense", "hybrid (alpha 0.5), reranked (top 6)"; None (the preset was not read,
    as in a dry run that does not connect) is "unknown"."""
    if preset is None:
        return "unknown (the cloud was not asked)"
    text = f"hybrid (alpha {float(preset['alpha']):g})" if preset_fuses_sparse(preset) else "dense"
    if preset.get("enable_reranking"):
        text += f", reranked (top {preset.get('rerank_top_n') or 'default'})"
    return text


def choose(
    requested: str, preset: dict, sparse_path: str, rerank: str = "", alpha: float | None = None
) -> Mode:
    """Phase 04's choice. ``requested`` "match-cloud" follows the cloud index's preset: hybrid with its
    ``alpha`` when the preset fuses sparse results in (alpha below 1), reranked when the preset reranks and a
    local reranker is configured (``rerank``); else "dense" or "hybrid" as asked. The hybrid's ``alpha``:
    as given (phase 05's alpha sweep shows which one answers best), else the preset's, else 0.5."""
    if alpha is None or alpha < 0:
        alpha = preset.get("alpha")
        alpha = 0.5 if alpha is None or not 0 <= float(alpha) < 1 else float(alpha)
    candidates = int(
        max(preset.get("dense_similarity_top_k") or 30, preset.get("sparse_similarity_top_k") or 30)
    )
    if requested == "match-cloud":
        mode = "hybrid" if preset_fuses_sparse(preset) else "dense"
        rr = rerank if preset.get("enable_reranking") else ""
    elif requested in MODES:
        mode, rr = requested, rerank
    else:
        raise RetrievalModeError(f"local_retrieval_mode {requested!r}: use match-cloud, {' or '.join(MODES)}")
    if mode == "hybrid" and not sparse_path:
        why = (
            f"the cloud's preset is hybrid (alpha {preset.get('alpha')})"
            if requested == "match-cloud"
            else ("hybrid was asked for")
        )
        raise RetrievalModeError(
            f"{why}, but the collection has no sparse index: run phase 03 with sparse_index: true to build it, "
            "or set local_retrieval_mode: dense in phase 04 (the comparison of phase 05 will show what that costs)"
        )
    return Mode(
        mode=mode,
        alpha=alpha,
        sparse_path=sparse_path,  # kept for a dense mode too: phase 05 then also tries the hybrid
        candidates=candidates,
        rerank=rr,
        rerank_top_n=int(preset.get("rerank_top_n") or 0) if rr else 0,
    ).check()


def _postprocessed(inner, postprocessor, top_k: int):
    """A retriever: ``inner``'s nodes through a LlamaIndex node postprocessor (if any), at most ``top_k``."""
    from llama_index.core.retrievers import BaseRetriever

    class RerankedRetriever(BaseRetriever):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def _retrieve(self, query_bundle):
            nodes = self.inner.retrieve(query_bundle)
            if postprocessor is not None:
                nodes = postprocessor.postprocess_nodes(nodes, query_bundle=query_bundle)
            return nodes[:top_k]

    return RerankedRetriever()


def reranker(mode: Mode, top_n: int, llm=None):
    """The LlamaIndex node postprocessor of ``mode.rerank`` ("" gives None)."""
    if not mode.rerank:
        return None
    if mode.rerank == "gemini":
        if llm is None:
            raise RetrievalModeError(
                "LOCAL_RERANK is gemini but no Gemini model is available (the Google key is not set)"
            )
        from llama_index.core.postprocessor import LLMRerank

        return LLMRerank(llm=llm, top_n=top_n)
    from .embeddings import offline_models

    offline_models()  # before sentence-transformers is imported
    from llama_index.core.postprocessor import SentenceTransformerRerank

    return SentenceTransformerRerank(model=mode.rerank.split(":", 1)[1], top_n=top_n, device="cpu")


def build(mode: Mode, dense_factory, top_k: int, llm=None, filters=None, nodes_from=None):
    """The local retriever of ``mode``: ``dense_factory(k, filters)`` gives Chroma's dense retriever for k
    results (scores in cosine, the cutoff applied); hybrid adds the sparse index; reranking comes last.
    ``filters`` (LlamaIndex ``MetadataFilters``) restrict the dense and the sparse candidates alike;
    ``nodes_from(chroma ids)`` gives the sparse hits as the collection's own nodes (the same node for a chunk
    both sides find). Returns at most ``top_k`` nodes per query."""
    mode.check()
    final = mode.rerank_top_n or top_k
    want = max(mode.candidates, top_k, final) if (mode.rerank or mode.mode == "hybrid") else top_k
    if mode.mode == "dense":
        base = dense_factory(want, filters)
    else:
        from . import sparse_index

        sparse = sparse_index.SparseRetriever(
            sparse_index.SparseIndex.open(mode.sparse_path),
            similarity_top_k=want,
            filters=filters,
            nodes_from=nodes_from,
        )
        fused = want if mode.rerank else top_k
        base = sparse_index.hybrid_retriever(dense_factory(want, filters), sparse, mode.alpha, fused)
    rr = reranker(mode, min(final, top_k), llm)
    # alpha 1 and 0 give one side's retriever itself, with all its candidates: cap at top_k here too
    return _postprocessed(base, rr, top_k) if rr is not None or want != top_k else base
