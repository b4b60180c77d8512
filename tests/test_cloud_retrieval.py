"""The local LlamaCloud-compatible server's hybrid search and reranking (``alpha``, ``sparse_similarity_top_k``,
``enable_reranking``, ``rerank_top_n``), through real HTTP and the official client, on a small corpus whose
dense scores are set by hand; and the ranking pieces (``runbook.rehearsal.cloud_ranking``) alone."""

from __future__ import annotations

import math
import uuid

import httpx
import numpy as np
import pytest
from llama_cloud import LlamaCloud

from runbook.rehearsal import cloud_emulator, cloud_ranking, corpus
from runbook.rehearsal.cloud_ranking import fuse, rerank, tokenize

from .conftest import API_KEY

PID = "ranking-pipeline"
# (chunk id, category, the chunk's cosine to every query, text): the dense order is fixed by the vectors,
# the sparse order by the words
CHUNKS = [
    ("bp", "A", 0.95, "Blood pressure readings and healthy habits for adults."),
    ("chol", "A", 0.60, "Cholesterol and heart health: an overview of lipid tests."),
    ("exercise", "B", 0.85, "Exercise plans for adults who sit for most of the day."),
    ("iron-foods", "A", 0.90, "Iron rich foods such as spinach and lentils keep blood iron levels up."),
    ("dm", "B", 0.30, "당뇨병 환자는 공복혈당을 정기적으로 확인합니다."),
    ("ldl", "A", 0.20, "LDL-C 수치가 높으면 이상지질혈증을 의심합니다."),
    (
        "minerals",
        "B",
        0.15,
        "Minerals: iron, zinc, copper, magnesium, calcium, potassium, sodium, selenium, iodine, "
        "manganese, chromium and molybdenum, with the foods that hold each of them.",
    ),
    ("ferritin", "B", 0.10, "Ferritin measures iron stores in the body."),
]
DENSE_ORDER = [c[0] for c in sorted(CHUNKS, key=lambda c: -c[2])]


def _vector(cos: float) -> np.ndarray:
    return np.array([cos, math.sqrt(1.0 - cos * cos)], dtype=np.float32)


def ranking_corpus(preset: dict | None = None) -> corpus.StaticCorpus:
    """One document per chunk; every query embeds to (1, 0), so a chunk's cosine is the one in CHUNKS."""
    pipeline = corpus._pipeline(
        PID,
        "ranking",
        corpus.DEMO_PROJECT["id"],
        {"type": "HASH_EMBEDDING", "component": {"model_name": "hash", "dimensions": 2}},
        {"mode": "auto", "chunk_size": 1024, "chunk_overlap": 200},
    )
    pipeline["preset_retrieval_parameters"].update(
        {"dense_similarity_top_k": 30, "sparse_similarity_top_k": 30, **(preset or {})}
    )
    c = corpus.StaticCorpus(
        dict(corpus.DEMO_PROJECT), pipeline, None, lambda q: np.array([1.0, 0.0], dtype=np.float32)
    )
    for cid, cat, cos, text in CHUNKS:
        doc_id = f"doc-{cid}"
        doc = {"id": doc_id, "text": text, "metadata": {"file_name": f"{cid}.txt", "category": cat}}
        meta = {"document_id": doc_id, "category": cat}
        node = corpus.node_json(cid, text, meta, doc_id, {}, None, None, 0, len(text))
        c.put_document(doc, [node], [_vector(cos)])
    return c


@pytest.fixture
def srv():
    with cloud_emulator.EmulatorServer(ranking_corpus(), API_KEY) as s:
        yield s


def post(s, **body) -> httpx.Response:
    return httpx.post(
        f"{s.url}/api/v1/pipelines/{PID}/retrieve",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )


def ranked(s, **body) -> list[tuple[str, float]]:
    r = post(s, **body)
    assert r.status_code == 200, r.text
    return [(n["node"]["id_"], n["score"]) for n in r.json()["retrieval_nodes"]]


def ids(s, **body) -> list[str]:
    return [i for i, _ in ranked(s, **body)]


# ---------------------------------------------------------------- alpha
def test_alpha_one_is_the_dense_ranking(srv):
    srv.corpus.pipeline["preset_retrieval_parameters"]["alpha"] = None  # the API's default: dense only
    plain = ranked(srv, query="iron")
    assert [i for i, _ in plain] == DENSE_ORDER
    assert ranked(srv, query="iron", alpha=1.0) == plain == ranked(srv, query="iron", alpha=1)
    assert all(abs(s - dict((c[0], c[2]) for c in CHUNKS)[i]) < 1e-6 for i, s in plain)  # the cosines
    r = post(srv, query="iron", alpha=1.0).json()
    assert set(r["retrieval_latency"]) == {"dense_retrieval"}
    assert r["metadata"]["search"].startswith("exact dense cosine") and "sparse" not in r["metadata"]


def test_alpha_zero_is_the_bm25_ranking(srv):
    # "ferritin" is in one chunk only, the one with the lowest cosine
    got = ranked(srv, query="ferritin", alpha=0.0)
    assert got == [("ferritin", 1.0)]
    assert ids(srv, query="ferritin", alpha=1.0)[0] == "bp"
    # every chunk holding "iron", best BM25 first (the short chunk with both words first), zero-score ones out
    iron = ranked(srv, query="ferritin iron", alpha=0)
    assert [i for i, _ in iron] == ["ferritin", "iron-foods", "minerals"]
    assert iron[0][1] == 1.0 and iron[-1][1] == 0.0  # min-max normalised over the candidates
    r = post(srv, query="ferritin iron", alpha=0).json()
    assert set(r["retrieval_latency"]) == {"sparse_retrieval"}  # no dense search at alpha 0
    assert r["metadata"]["search"].startswith("sparse only") and "BM25" in r["metadata"]["sparse"]
    assert ranked(srv, query="zebra quantum", alpha=0) == []


def test_alpha_between_mixes_both_rankings(srv):
    dense = ids(srv, query="ferritin iron", alpha=1.0)
    sparse = ids(srv, query="ferritin iron", alpha=0.0)
    hybrid = ranked(srv, query="ferritin iron", alpha=0.5)
    order = [i for i, _ in hybrid]
    # iron-foods is second in the dense list and in the sparse one, but first when both count
    assert order[0] == "iron-foods" != dense[0] and order[0] != sparse[0]
    assert order != dense and order[: len(sparse)] != sparse
    assert len(order) == len(CHUNKS)  # up to max(dense top k, sparse top k), every candidate once
    scores = [s for _, s in hybrid]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    r = post(srv, query="ferritin iron", alpha=0.5).json()
    assert set(r["retrieval_latency"]) == {"dense_retrieval", "sparse_retrieval"}
    assert r["metadata"]["search"].startswith("hybrid: alpha 0.5")
    # the result keeps up to max(dense_similarity_top_k, sparse_similarity_top_k)
    assert (
        len(ids(srv, query="ferritin iron", alpha=0.5, dense_similarity_top_k=2, sparse_similarity_top_k=3))
        == 3
    )
    # a low alpha leans on the keywords, a high one on the vectors
    assert ids(srv, query="ferritin iron", alpha=0.1)[0] == "ferritin"
    assert ids(srv, query="ferritin iron", alpha=0.9)[0] == "bp"


def test_official_client_sends_hybrid_and_rerank_settings(srv):
    c = LlamaCloud(api_key=API_KEY, base_url=srv.url)
    r = c.pipelines.retrieve(
        pipeline_id=PID, query="ferritin iron", alpha=0.5, enable_reranking=True, rerank_top_n=2
    )
    assert len(r.retrieval_nodes) == 2 and {"sparse", "reranking"} <= set(r.metadata)
    assert r.retrieval_latency["reranking"] >= 0


# ---------------------------------------------------------------- presets and the body
def test_preset_applies_when_the_body_omits_a_field_and_the_body_wins():
    preset = {"alpha": 0.0, "enable_reranking": True, "rerank_top_n": 1}
    with cloud_emulator.EmulatorServer(ranking_corpus(preset), API_KEY) as s:
        assert ids(s, query="ferritin iron") == ["ferritin"]  # sparse only, reranked to 1
        assert ids(s, query="ferritin iron", rerank_top_n=2) == ["ferritin", "iron-foods"]
        # body fields override the preset (falsy ones too)
        assert ids(s, query="ferritin iron", enable_reranking=False) == ["ferritin", "iron-foods", "minerals"]
        assert ids(s, query="ferritin iron", alpha=1.0, enable_reranking=False) == DENSE_ORDER
        # a null in the body counts as not given: the preset applies
        assert ids(s, query="ferritin iron", alpha=None) == ["ferritin"]
        s.corpus.pipeline["preset_retrieval_parameters"].update(
            alpha=None, enable_reranking=None, rerank_top_n=None, dense_similarity_top_k=None
        )
        # nothing in the body or preset: the API's defaults (dense only, 30 chunks, no reranking)
        assert ids(s, query="ferritin iron") == DENSE_ORDER
        s.corpus.pipeline["preset_retrieval_parameters"]["dense_similarity_top_k"] = 3
        assert ids(s, query="ferritin iron") == DENSE_ORDER[:3]
        assert ids(s, query="ferritin iron", dense_similarity_top_k=4) == DENSE_ORDER[:4]


# ---------------------------------------------------------------- reranking
def test_rerank_top_n_caps_and_coverage_reorders(srv):
    dense = ids(srv, query="ferritin iron stores", alpha=1.0)
    got = ranked(srv, query="ferritin iron stores", alpha=1.0, enable_reranking=True, rerank_top_n=3)
    assert len(got) == 3
    # the chunk holding every query word comes first although its cosine is the lowest
    assert dense[-1] == "ferritin" and got[0][0] == "ferritin"
    assert got[1][0] == "iron-foods"  # one of three words, and the better cosine of the two that have it
    assert all(0.0 <= s <= 1.0 for _, s in got) and [s for _, s in got] == sorted([s for _, s in got])[::-1]
    r = post(srv, query="ferritin iron stores", alpha=1.0, enable_reranking=True, rerank_top_n=3).json()
    assert r["metadata"]["reranking"].startswith("reranked:") and "top 3" in r["metadata"]["reranking"]
    assert set(r["retrieval_latency"]) == {"dense_retrieval", "reranking"}
    # rerank_top_n bounds the result, never pads it
    assert len(ids(srv, query="ferritin", alpha=0.0, enable_reranking=True, rerank_top_n=6)) == 1
    # reranking off: rerank_top_n has no effect
    assert len(ids(srv, query="x", alpha=1.0, enable_reranking=False, rerank_top_n=2)) == len(CHUNKS)


# ---------------------------------------------------------------- filters
def test_search_filters_restrict_sparse_and_hybrid_results(srv):
    only_a = {"filters": [{"key": "category", "value": "A", "operator": "=="}]}
    cats = {c[0]: c[1] for c in CHUNKS}
    for alpha in (0.0, 0.5):
        got = ids(srv, query="ferritin iron", alpha=alpha, search_filters=only_a)
        assert got and all(cats[i] == "A" for i in got), (alpha, got)
    # filters apply before the sparse top k is taken: the best category-A chunk, not nothing
    assert ids(srv, query="ferritin iron", alpha=0.0, sparse_similarity_top_k=1, search_filters=only_a) == [
        "iron-foods"
    ]
    # a preset's filters too
    srv.corpus.pipeline["preset_retrieval_parameters"]["search_filters"] = only_a
    assert ids(srv, query="ferritin iron", alpha=0.0) == ["iron-foods"]


# ---------------------------------------------------------------- Korean and awkward words
def test_korean_particles_and_hyphenated_terms_match(srv):
    assert ids(srv, query="당뇨병은 어떻게 관리하나요?", alpha=0.0)[0] == "dm"
    assert ids(srv, query="LDL-C", alpha=0.0) == ["ldl"]
    assert ids(srv, query="ldl-c 수치", alpha=0.0) == ["ldl"]
    assert ids(srv, query="당뇨병은 어떻게 관리하나요?", alpha=0.3)[0] == "dm"


# ---------------------------------------------------------------- validation and faults
@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("alpha", 1.5, "less than or equal to 1"),
        ("alpha", -0.1, "greater than or equal to 0"),
        ("alpha", "half", "valid number"),
        ("dense_similarity_top_k", -1, "greater than or equal to 0"),
        ("sparse_similarity_top_k", 2.5, "valid integer"),
        ("rerank_top_n", 0, "greater than or equal to 1"),
        ("enable_reranking", "yes", "valid boolean"),
    ],
)
def test_bad_retrieval_params_are_422(srv, field, value, msg):
    r = post(srv, query="iron", **{field: value})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", field] and msg in err["msg"] and err["type"]


def test_a_bad_preset_value_is_named_as_such(srv):
    srv.corpus.pipeline["preset_retrieval_parameters"]["alpha"] = 2
    r = post(srv, query="iron")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["preset_retrieval_parameters", "alpha"]
    assert post(srv, query="iron", alpha=0.5).status_code == 200  # the body's value is the one used


def test_other_ids_fault_applies_to_hybrid_results(srv):
    srv.set_faults(retrieve_ids="other")
    got = ids(srv, query="ferritin iron", alpha=0.5, enable_reranking=True)
    assert len(got) == 6  # rerank_top_n from the preset
    assert set(got) <= {str(uuid.uuid5(uuid.NAMESPACE_URL, f"retrieve/{c[0]}")) for c in CHUNKS}


def test_corpus_without_text_search_answers_dense_only():
    syn = corpus.SyntheticCorpus(20, dim=16, chunks_per_doc=5)
    with cloud_emulator.EmulatorServer(syn, API_KEY) as s:
        r = httpx.post(
            f"{s.url}/api/v1/pipelines/{syn.pipeline['id']}/retrieve",
            json={"query": "lorem", "alpha": 0.5, "dense_similarity_top_k": 4},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
        )
    assert r.status_code == 200 and len(r.json()["retrieval_nodes"]) == 4
    meta = r.json()["metadata"]
    assert "dense cosine only" in meta["sparse"] and meta["search"].startswith("exact dense cosine")


def test_sparse_index_follows_corpus_changes(srv):
    assert ids(srv, query="ferritin", alpha=0.0) == ["ferritin"]
    srv.corpus.delete_document("doc-ferritin")
    assert ids(srv, query="ferritin", alpha=0.0) == []
    text = "Serum ferritin is low in iron deficiency."
    node = corpus.node_json("new", text, {"category": "A"}, "doc-new", {}, None, None, 0, len(text))
    srv.corpus.put_document({"id": "doc-new", "text": text, "metadata": {}}, [node], [_vector(0.5)])
    assert ids(srv, query="ferritin", alpha=0.0) == ["new"]


# ---------------------------------------------------------------- the pieces
def test_tokenize():
    assert tokenize("당뇨병은") == ["당뇨", "뇨병", "병은"]
    assert tokenize("병 검사") == ["병", "검사"]  # a one-syllable run stays a unigram
    assert tokenize("LDL-C") == ["ldl", "c"]
    assert tokenize("HbA1c 6.5%") == ["hba1c", "6", "5"]
    assert tokenize("γ-GTP") == ["γ", "gtp"]
    assert tokenize("ＬＤＬ콜레스테롤") == ["ldl", "콜레", "레스", "스테", "테롤"]  # NFKC: full-width letters
    assert tokenize("Straße") == ["strasse"]  # casefold
    assert tokenize("snake_case, x-ray!") == ["snake", "case", "x", "ray"]
    # an NFD (decomposed) syllable sequence reads as the NFC one
    import unicodedata

    assert (
        tokenize(unicodedata.normalize("NFD", "검진결과")) == tokenize("검진결과") == ["검진", "진결", "결과"]
    )
    assert tokenize("") == tokenize(None) == tokenize("  ... ") == []


def test_sparse_index_bm25():
    ix = cloud_ranking.SparseIndex(["당뇨병 관리", "LDL-C 수치", "", "당뇨병 당뇨병 합병증 관리"])
    s = ix.scores("당뇨병은")
    assert s.shape == (4,) and s[1] == s[2] == 0.0 and s[0] > 0 and s[3] > 0
    # Lucene's BM25 by hand for chunk 0: tokens 당뇨, 뇨병, 관리 (length 3; average length 13 / 4)
    n, avgdl = 4, 13 / 4
    idf = math.log(1 + (n - 2 + 0.5) / (2 + 0.5))
    tf_part = 1 * 2.2 / (1 + 1.2 * (1 - 0.75 + 0.75 * 3 / avgdl))
    assert s[0] == pytest.approx(2 * idf * tf_part)
    assert ix.scores("zzz").tolist() == [0.0] * 4
    assert cloud_ranking.SparseIndex([]).scores("x").shape == (0,)


def test_fuse():
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    sparse = [("c", 12.0), ("d", 6.0), ("a", 2.0)]
    assert [k for k, _ in fuse(dense, sparse, 1.0)] == ["a", "b", "c"]  # sparse-only "d" not merged in
    assert [k for k, _ in fuse(dense, sparse, 0.0)] == ["c", "d", "a"]
    got = dict(fuse(dense, sparse, 0.5))
    assert got["a"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)
    assert got["c"] == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)
    assert got["d"] == pytest.approx(0.5 * 0.4)
    assert got["b"] == pytest.approx(0.5 * 0.5)
    # ties: dense rank first (a before c), then key (b before d, both missing from one list)
    assert [k for k, _ in fuse(dense, sparse, 0.5)] == ["a", "c", "b", "d"]
    assert fuse([("x", 0.3)], [], 0.5) == [("x", 0.5)]  # a single candidate normalises to 1
    assert fuse([], [], 0.5) == []
    with pytest.raises(ValueError, match="alpha"):
        fuse(dense, sparse, 1.5)


def test_rerank():
    cands = [
        ("far", "ferritin " + "filler " * 30 + "iron", 0.9),
        ("none", "nothing relevant here", 1.0),
        ("near", "ferritin iron " + "filler " * 30, 0.1),
        ("half", "iron only", 0.5),
    ]
    got = rerank("ferritin iron", cands, top_n=3)
    assert [k for k, _ in got] == ["near", "far", "half"]  # full coverage, closer terms first
    assert all(0.0 <= s <= 1.0 for _, s in got)
    assert got[0][1] == pytest.approx(0.6 + 0.3 + 0.0)  # adjacent terms, lowest incoming score
    assert len(rerank("ferritin iron", cands, top_n=10)) == 4
    # idf weights: the rare word found counts for more than the common one
    weighted = rerank(
        "ferritin iron", [("i", "iron", 0.0), ("f", "ferritin", 0.0)], 2, {"ferritin": 3.0, "iron": 0.5}
    )
    assert [k for k, _ in weighted] == ["f", "i"]
    assert rerank("", cands, 2) == [("none", pytest.approx(0.1)), ("far", pytest.approx(0.1 * 0.8 / 0.9))]
    with pytest.raises(ValueError, match="top_n"):
        rerank("x", cands, 0)
