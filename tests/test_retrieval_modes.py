"""The local arm's retrieval modes (config.env), phase 04's choice, and phase 05's multi-arm figures."""

import pytest

from runbook import compare, rag_switch, retrieval_modes
from runbook.retrieval_modes import Mode, RetrievalModeError

HYBRID_RERANKED = {
    "dense_similarity_top_k": 30,
    "sparse_similarity_top_k": 20,
    "alpha": 0.4,
    "enable_reranking": True,
    "rerank_top_n": 6,
}


def test_match_cloud_follows_a_hybrid_reranked_preset(tmp_path):
    m = retrieval_modes.choose(
        "match-cloud", HYBRID_RERANKED, str(tmp_path), "cross-encoder:" + str(tmp_path)
    )
    assert (m.mode, m.alpha, m.candidates, m.rerank_top_n) == ("hybrid", 0.4, 30, 6)
    assert m.label == "local hybrid (alpha 0.4) + rerank"
    # no local reranker configured: hybrid without reranking (phase 05 shows what that costs)
    m = retrieval_modes.choose("match-cloud", HYBRID_RERANKED, str(tmp_path))
    assert (m.mode, m.rerank, m.label) == ("hybrid", "", "local hybrid (alpha 0.4)")


def test_match_cloud_on_a_dense_preset_is_dense_and_never_reranks_unasked(tmp_path):
    preset = {"alpha": 1.0, "enable_reranking": False}
    assert retrieval_modes.choose("match-cloud", preset, str(tmp_path), "gemini").label == "local dense"
    assert retrieval_modes.choose("match-cloud", {}, "").mode == "dense"  # alpha null: dense


def test_hybrid_without_a_sparse_index_says_what_to_do():
    with pytest.raises(RetrievalModeError, match="sparse_index: true.*local_retrieval_mode: dense"):
        retrieval_modes.choose("match-cloud", HYBRID_RERANKED, "")
    with pytest.raises(RetrievalModeError, match="hybrid was asked for"):
        retrieval_modes.choose("hybrid", {}, "")
    with pytest.raises(RetrievalModeError, match="use match-cloud, dense or hybrid"):
        retrieval_modes.choose("sparse", {}, "")


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (Mode(mode="bm25"), "LOCAL_RETRIEVAL_MODE 'bm25'"),
        (Mode(mode="hybrid", alpha=1.5, sparse_path="x"), r"LOCAL_HYBRID_ALPHA 1.5 must lie in \[0, 1\]"),
        (Mode(candidates=0), "LOCAL_CANDIDATES_TOP_K 0"),
        (Mode(rerank="cohere"), "LOCAL_RERANK 'cohere'"),
        (Mode(rerank="cross-encoder:/nonexistent/model"), "not a folder"),
    ],
)
def test_bad_settings_are_refused_by_name(mode, message):
    with pytest.raises(RetrievalModeError, match=message):
        mode.check()


def test_config_env_round_trip_and_a_bad_value_names_the_file(tmp_path):
    m = Mode(mode="hybrid", alpha=0.25, sparse_path=str(tmp_path / "sparse 색인"), candidates=40)
    assert retrieval_modes.from_values(retrieval_modes.entries(m)) == m
    assert retrieval_modes.from_values({}) == Mode()  # a config.env from before the modes: dense
    path = tmp_path / "config.env"
    path.write_text("USE_LOCAL_VECTOR_DB=true\nLOCAL_RETRIEVAL_MODE=hybrid\nLOCAL_HYBRID_ALPHA=half\n")
    with pytest.raises(
        rag_switch.RagConfigError, match=r"config.env: LOCAL_HYBRID_ALPHA='half' is not a number"
    ):
        rag_switch.load_config(path)


def _row(qid, ids, docs, ms=1.0):
    return {"id": qid, "ids": ids, "docs": docs, "scores": [1.0] * len(ids), "latency_ms": ms}


def _runs():
    qs = [
        {"id": "a", "question": "?", "expected_document_ids": ["D1"], "kind": "keyword"},
        {"id": "b", "question": "?", "expected_document_ids": ["D2"], "kind": "paraphrase"},
    ]
    cloud = compare.ArmRun(compare.CLOUD, [_row("a", ["x", "y"], ["D1", "D9"]), _row("b", ["z"], ["D2"])])
    good = compare.ArmRun(
        "local hybrid (alpha 0.5)", [_row("a", ["y", "x"], ["D9", "D1"]), _row("b", ["z"], ["D2"])]
    )
    dense = compare.ArmRun("local dense", [_row("a", ["q"], ["D7"]), _row("b", ["z"], ["D2"])])
    return qs, {r.name: r for r in (cloud, good, dense)}


def test_arms_table_label_gates_and_the_modes_verdict():
    qs, runs = _runs()
    table = {r["arm"]: r for r in compare.arms_table(runs, compare.CLOUD, qs, 2)}
    assert table["local hybrid (alpha 0.5)"]["hit@2 (labels)"] == 1.0
    assert table["local hybrid (alpha 0.5)"]["MRR (labels)"] == 0.75  # rank 2 then rank 1
    assert table["local dense"]["recall@2 of cloud as configured"] == 0.5
    rows = list(table.values())
    gates = compare.label_gates(rows, "local hybrid (alpha 0.5)", compare.CLOUD, 2, 0.02)
    assert [g["ok"] for g in gates] == [True, False]  # MRR 0.75 < 1.0 - 0.02
    assert compare.label_gates(rows, "local hybrid (alpha 0.5)", compare.CLOUD, 2, 0.25)[1]["ok"]
    assert compare.modes_meeting(rows, compare.CLOUD, 2, 0.25) == ["local hybrid (alpha 0.5)"]
    v = compare.modes_verdict(rows, "local dense", 2, 0.25)
    assert "does not meet them" in v and "**local hybrid (alpha 0.5)**" in v
    assert "do not cut over" in compare.modes_verdict(rows, "local dense", 2, 0.0)
    kinds = {r["arm"]: r for r in compare.hits_by_kind(runs, qs, 2)}
    assert kinds["local dense"] == {
        "arm": "local dense",
        "keyword hit@2 (1)": 0.0,
        "paraphrase hit@2 (1)": 1.0,
    }


def test_run_arms_repeats_only_the_timed_arms_and_rotates_the_order():
    calls = []

    def arm(name):
        def run(q):
            calls.append(name)
            return _row(q["id"], [name], [name], ms=len(calls))

        return run

    qs = [{"id": "a", "question": "?", "expected_document_ids": []}]
    runs = compare.run_arms({n: arm(n) for n in ("c", "l", "x")}, qs, 3, timed=("c", "l"))
    assert calls == ["c", "l", "x", "l", "c", "c", "l"]  # x once; the order rotates each repetition
    assert [len(runs[n].rows[0]["runs_ms"]) for n in ("c", "l", "x")] == [3, 3, 1]
    assert runs["c"].rows[0]["latency_ms"] == 1  # the fastest run's timing
    assert runs["c"].interleaved and not runs["x"].interleaved


def test_a_broken_local_setting_never_blocks_the_cloud_arm(tmp_path):
    """Rollback flips USE_LOCAL_VECTOR_DB only: a reranker folder gone since must not stop the cloud arm."""
    body = "LOCAL_RETRIEVAL_MODE=hybrid\nLOCAL_SPARSE_INDEX_PATH=/x\nLOCAL_RERANK=cross-encoder:/nonexistent/ce\n"
    (tmp_path / "cloud.env").write_text("USE_LOCAL_VECTOR_DB=false\n" + body)
    (tmp_path / "local.env").write_text("USE_LOCAL_VECTOR_DB=true\n" + body)
    assert not rag_switch.load_config(tmp_path / "cloud.env").use_local
    with pytest.raises(rag_switch.RagConfigError, match="not a folder"):
        rag_switch.load_config(tmp_path / "local.env")


def test_fusion_keeps_apart_two_documents_that_share_a_chunk_id():
    from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

    from runbook.sparse_index import _same_chunk_same_node

    def hit(doc, text):
        n = TextNode(id_="c1", text=text)
        n.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc)
        return NodeWithScore(node=n, score=1.0)

    dense = [hit("docA", "A의 청크"), hit("docB", "B의 청크")]
    sparse = [hit("docB", "B의 청크 (희소)")]
    out = _same_chunk_same_node({("q", 0): dense, ("q", 1): sparse})
    assert [n.node.ref_doc_id for n in out[("q", 0)]] == ["docA", "docB"]
    assert out[("q", 1)][0].node is out[("q", 0)][1].node  # the same chunk of docB: one node


def test_whether_a_cloud_preset_is_hybrid_or_reranked_and_how_it_reads():
    """Phase 05 adds a dense-only cloud arm for these presets; phase 04's match-cloud follows the same rule."""
    cases = [
        (None, False, False, "unknown (the cloud was not asked)"),
        ({}, False, False, "dense"),  # alpha null: dense only
        ({"alpha": 1.0}, False, False, "dense"),
        ({"alpha": 0.5}, True, True, "hybrid (alpha 0.5)"),
        ({"alpha": 0.0}, True, True, "hybrid (alpha 0)"),
        ({"alpha": 1.0, "enable_reranking": True, "rerank_top_n": 6}, False, True, "dense, reranked (top 6)"),
    ]
    for preset, fuses, dense_arm, text in cases:
        assert retrieval_modes.preset_fuses_sparse(preset) is fuses, preset
        assert retrieval_modes.preset_needs_dense_arm(preset) is dense_arm, preset
        assert retrieval_modes.describe_preset(preset) == text
        if preset is not None:
            mode = retrieval_modes.choose("match-cloud", preset, "/sparse")
            assert mode.mode == ("hybrid" if fuses else "dense"), preset
