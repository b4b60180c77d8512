"""Hybrid search and reranking as the local LlamaCloud-compatible server imitates them (rehearsal machinery).

LlamaCloud's retrieve endpoint can mix a sparse (keyword) ranking into its dense one (``alpha``) and rerank
the result with a model (``enable_reranking``, ``rerank_top_n``). How it does so is not public (the
reference, ``llamacloud-api.md`` "What is not known": "how hybrid scores are fused"), so this module is an
**approximation**, built to be deterministic and independent of the local side of the migration (which uses
morphological tokens, bm25s and LlamaIndex's fusion): an A/B comparison against it then compares two
different systems, as it would against the real service.

- ``tokenize``: NFKC + casefold; runs of Hangul (and other CJK scripts) become overlapping character
  bigrams, the approach of Lucene's CJK analyzer (a one-character run stays a unigram); runs of letters and
  digits of other scripts become words, split on anything else ("LDL-C" -> "ldl", "c").
- ``SparseIndex``: BM25 (k1 1.2, b 0.75, Lucene's idf ``log(1 + (N - df + 0.5) / (df + 0.5))``) over those
  tokens, with numpy and scipy.sparse.
- ``fuse``: each list min-max normalised over its own candidates, ``alpha * dense + (1 - alpha) * sparse``
  (a candidate missing from a list counts 0 there).
- ``rerank``: a deterministic stand-in for a reranking model: query-term coverage, how close together the
  found terms are, and a little of the incoming score.

Nothing here is what LlamaCloud runs; it only behaves like a hybrid, reranked service would (keyword hits
can outrank close paraphrases; a reranked list is shorter and reordered).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
from scipy import sparse as sp

K1 = 1.2
B = 0.75
# reranker weights: coverage, proximity (scaled by coverage) and the incoming score; they sum to 1
W_COVERAGE, W_PROXIMITY, W_PRIOR = 0.6, 0.3, 0.1

# Hangul syllables and jamo, kana, CJK ideographs: the scripts Lucene's CJK analyzer bigrams
_CJK = (
    "\u1100-\u11ff\u3040-\u309f\u30a0-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff\uf900-\ufaff"
)
# a CJK run, or a run of letters/digits (any other script; no underscore) that are not CJK
_TOKEN_RUN = re.compile(f"([{_CJK}]+)|((?:(?![{_CJK}])[^\\W_])+)")


def normalize(text: str) -> str:
    """NFKC and casefold (casefolding can un-normalise a few characters, so NFKC again)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def tokenize(text: str | None) -> list[str]:
    """The tokens of ``text`` in order: CJK runs as overlapping character bigrams ("당뇨병은" -> "당뇨",
    "뇨병", "병은"; a one-character run stays as it is), other runs of letters and digits as words
    ("HbA1c" -> "hba1c", "γ-GTP" -> "γ", "gtp"). Nothing else (punctuation, spaces, symbols, "_") is a
    token, and no stop words are removed (bigrams make Korean particles harmless)."""
    if not text:
        return []
    out: list[str] = []
    for m in _TOKEN_RUN.finditer(normalize(text)):
        cjk, word = m.group(1), m.group(2)
        if word:
            out.append(word)
        elif len(cjk) == 1:
            out.append(cjk)
        else:
            out.extend(cjk[i : i + 2] for i in range(len(cjk) - 1))
    return out


class SparseIndex:
    """BM25 over a fixed list of texts (``scores(query)`` gives one score per text, in the list's order).

    A query token counts once per occurrence in the query (as each term clause of a Lucene query does);
    tokens no text has score nothing. The per-(text, token) BM25 weights are computed once, at build time,
    into a sparse matrix, so a query costs one sparse column slice and a product."""

    def __init__(self, texts: Sequence[str | None], k1: float = K1, b: float = B):
        self.n = len(texts)
        self.vocabulary: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        lengths = np.zeros(self.n, dtype=np.float64)
        for i, text in enumerate(texts):
            tokens = tokenize(text)
            lengths[i] = len(tokens)
            rows.extend([i] * len(tokens))
            cols.extend(self.vocabulary.setdefault(t, len(self.vocabulary)) for t in tokens)
        shape = (self.n, len(self.vocabulary))
        tf = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=shape, dtype=np.float64)
        tf.sum_duplicates()  # term frequencies
        df = np.bincount(tf.indices, minlength=shape[1]).astype(np.float64)
        self.idf_values = np.log1p((self.n - df + 0.5) / (df + 0.5))
        avgdl = float(lengths.mean()) if self.n else 0.0
        norm = k1 * (1.0 - b + b * lengths / avgdl) if avgdl > 0 else np.full(self.n, k1)
        row_of = np.repeat(np.arange(self.n), np.diff(tf.indptr))
        weights = self.idf_values[tf.indices] * tf.data * (k1 + 1.0) / (tf.data + norm[row_of])
        self._weights = sp.csr_matrix((weights, tf.indices, tf.indptr), shape=shape).tocsc()

    def idf(self) -> dict[str, float]:
        """Every indexed token's idf (for ``rerank``)."""
        return {t: float(self.idf_values[j]) for t, j in self.vocabulary.items()}

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every text for ``query`` (float64, 0 where no query token occurs)."""
        counts: dict[int, int] = {}
        for t in tokenize(query):
            j = self.vocabulary.get(t)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return np.zeros(self.n, dtype=np.float64)
        cols = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        qtf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        return np.asarray(self._weights[:, cols] @ qtf, dtype=np.float64).reshape(-1)


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores mapped onto [0, 1] by the list's own minimum and maximum; a single score, or all-equal
    scores, map to 1.0."""
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if not hi > lo:
        return [1.0] * len(scores)
    return [(s - lo) / (hi - lo) for s in scores]


def fuse(
    dense: Sequence[tuple[Hashable, float]], sparse: Sequence[tuple[Hashable, float]], alpha: float
) -> list[tuple[Hashable, float]]:
    """Relative-score fusion of a dense and a sparse ranking (each a best-first list of (key, score)).

    Each list is min-max normalised over its own candidates; a candidate's fused score is
    ``alpha * dense + (1 - alpha) * sparse``, counting 0 in a list it is missing from. The result is sorted
    by fused score, ties broken by dense rank (candidates only in the sparse list after those in it), then
    by key. ``alpha`` 1 returns the dense list's keys in its own order (the sparse list is ignored), 0 the
    sparse list's; the scores are then that list's normalised ones."""
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    if alpha == 1.0:
        return [(k, s) for (k, _), s in zip(dense, min_max([s for _, s in dense]), strict=True)]
    if alpha == 0.0:
        return [(k, s) for (k, _), s in zip(sparse, min_max([s for _, s in sparse]), strict=True)]
    d_norm = dict(zip((k for k, _ in dense), min_max([s for _, s in dense]), strict=True))
    s_norm = dict(zip((k for k, _ in sparse), min_max([s for _, s in sparse]), strict=True))
    dense_rank = {k: r for r, (k, _) in reversed(list(enumerate(dense)))}  # a repeated key: its first rank
    keys = list(dict.fromkeys([k for k, _ in dense] + [k for k, _ in sparse]))
    fused = {k: alpha * d_norm.get(k, 0.0) + (1.0 - alpha) * s_norm.get(k, 0.0) for k in keys}
    unranked = len(dense)
    keys.sort(key=lambda k: (-fused[k], dense_rank.get(k, unranked), k))
    return [(k, fused[k]) for k in keys]


def shortest_window(positions: Iterable[tuple[int, str]], needed: int) -> int:
    """The length (in tokens) of the shortest stretch holding ``needed`` distinct terms, from
    (position, term) pairs sorted by position (0 when ``needed`` is 0)."""
    pos = list(positions)
    if needed <= 0:
        return 0
    best = math.inf
    counts: dict[str, int] = {}
    left = 0
    for p_right, term in pos:
        counts[term] = counts.get(term, 0) + 1
        while len(counts) == needed:
            p_left, t_left = pos[left]
            best = min(best, p_right - p_left + 1)
            counts[t_left] -= 1
            if not counts[t_left]:
                del counts[t_left]
            left += 1
    return int(best) if best != math.inf else 0


def _coverage_and_proximity(query_terms: Mapping[str, float], text: str | None) -> tuple[float, float]:
    """(weighted share of the query's distinct terms found in ``text``, closeness of the found terms: 1 when
    adjacent, 0 when the shortest window holding them spans the whole text)."""
    total = sum(query_terms.values())
    tokens = tokenize(text)
    hits = [(p, t) for p, t in enumerate(tokens) if t in query_terms]
    found = {t for _, t in hits}
    if not found or total <= 0:
        return 0.0, 0.0
    coverage = sum(query_terms[t] for t in found) / total
    window = shortest_window(hits, len(found))
    slack = len(tokens) - len(found)
    proximity = 1.0 if slack <= 0 else 1.0 - (window - len(found)) / slack
    return coverage, max(0.0, min(1.0, proximity))


def rerank(
    query: str,
    candidates: Sequence[tuple[Hashable, str | None, float]],
    top_n: int,
    idf: Mapping[str, float] | None = None,
) -> list[tuple[Hashable, float]]:
    """The best ``top_n`` of ``candidates`` ((key, text, incoming score), best first) by a deterministic
    stand-in for a reranking model, as (key, score) with scores in [0, 1]:

    ``0.6 * coverage + 0.3 * coverage * proximity + 0.1 * incoming``, where coverage is the share of the
    query's distinct tokens found in the text (each weighted by ``idf`` when given; a token it lacks weighs
    as much as its rarest one), proximity how short the shortest window holding the found tokens is relative
    to the text's length, and incoming the candidate's score min-max normalised over the candidates. Ties
    keep the incoming order."""
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n!r}")
    distinct = list(dict.fromkeys(tokenize(query)))
    default = max(idf.values(), default=1.0) if idf else 1.0
    weights = {t: (idf.get(t, default) if idf else 1.0) for t in distinct}
    prior = min_max([float(s) for _, _, s in candidates])
    scored = []
    for i, (key, text, _) in enumerate(candidates):
        coverage, proximity = _coverage_and_proximity(weights, text)
        score = W_COVERAGE * coverage + W_PROXIMITY * coverage * proximity + W_PRIOR * prior[i]
        scored.append((min(1.0, max(0.0, score)), i, key))
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [(key, score) for score, _, key in scored[:top_n]]
