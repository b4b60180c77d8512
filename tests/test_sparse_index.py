"""The sparse (BM25) index beside Chroma: real kiwipiepy and bm25s on small Korean medical corpora."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from llama_index.core.llms import MockLLM
from llama_index.core.retrievers import BaseRetriever, QueryFusionRetriever
from llama_index.core.schema import NodeWithScore
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from runbook import export_format
from runbook.sparse_index import (
    KoreanTokenizer,
    SparseIndex,
    SparseIndexError,
    SparseRetriever,
    _State,
    build,
    build_from_export,
    hybrid_retriever,
    open_index,
)

tokens = KoreanTokenizer()

DOCS = {
    "문서-당뇨-01": (
        "당뇨",
        [
            (
                "청크:당뇨-1",
                "당뇨병은 혈당이 높은 상태가 지속되는 질환입니다. HbA1c 6.5% 이상이면 당뇨병으로 진단합니다.",
            ),
            ("청크:당뇨-2", "제2형 당뇨병 환자는 식이요법과 운동으로 인슐린 저항성을 개선할 수 있습니다."),
        ],
    ),
    "문서-지질-02": (
        "이상지질혈증",
        [
            ("청크:지질-1", "LDL-C가 160 mg/dL 이상이면 스타틴 치료를 고려합니다."),
            (
                "청크:지질-2",
                "HDL 콜레스테롤은 높을수록 심혈관 질환 위험이 낮습니다. 중성지방(TG)도 함께 확인합니다.",
            ),
        ],
    ),
    "문서-간-03": (
        "간",
        [
            ("🩺 청크:간-1", "감마지티피(γ-GTP) 수치가 상승했다면 음주 습관을 확인해야 합니다."),
            ("청크:간-2", "ALT와 AST는 간세포 손상을 반영하는 효소입니다. 간 질환 선별에 씁니다."),
        ],
    ),
    "문서-혈압-04": (
        "고혈압",
        [
            ("청크:혈압-1", "고혈압이 있으면 염분 섭취를 줄이고 규칙적으로 혈압을 측정하세요."),
            (
                "청크:혈압-2",
                "수축기 혈압 140 mmHg 이상, 이완기 혈압 90 mmHg 이상을 고혈압으로 봅니다. 당뇨병 환자는 130 미만.",
            ),
        ],
    ),
}


def make_rows(docs=DOCS):
    rows = []
    for doc, (topic, chunks) in docs.items():
        for seq, (cid, text) in enumerate(chunks):
            rows.append(
                {
                    "chunk_id": cid,
                    "document_id": doc,
                    "text": text,
                    "metadata": {
                        "topic": topic,
                        "출처": "웰노 건강정보 · Dr.Welno",
                        "seq": seq,
                        "tags": [topic, "건강"],
                        "nested": {"키": ["값", 1.5, None]},
                    },
                }
            )
    return rows


ROWS = make_rows()
ALL_IDS = [r["chunk_id"] for r in ROWS]


def ids(hits):
    return [cid for cid, _ in hits]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("sparse") / "sparse_index" / "dr_welno"
    return build(path, ROWS)


# ---- tokenizer


def test_tokenizer_drops_particles_and_endings():
    base = tokens("당뇨병")
    assert base and set(base) <= set(tokens("당뇨병은")) and tokens("당뇨병은")
    assert set(tokens("고혈압")) <= set(tokens("고혈압이 있으면"))
    assert "고혈압" in tokens("고혈압이 있으면") and "혈압" in tokens("고혈압이 있으면")
    for t in ("은", "이", "으면", "가", "를", "다"):
        assert t not in tokens("당뇨병은 고혈압이 있으면 혈당을 잰다")
    assert tokens("") == [] and tokens("  ...  ") == []


def test_tokenizer_keeps_codes_whole_and_in_parts():
    mixed = tokens("LDL-C가 160 mg/dL 이상")
    query = tokens("LDL-C 수치")
    assert "ldl-c" in mixed and "ldl-c" in query
    assert {"ldl-c", "160"} <= set(mixed) & set(tokens("LDL-C 160"))
    assert "mg/dl" in mixed and {"mg", "dl"} <= set(mixed)
    assert "γ-gtp" in tokens("γ-GTP가 높다") and "γ-gtp" in tokens("감마지티피(γ-GTP) 수치")
    assert {"hba1c", "hba"} <= set(tokens("HbA1c 6.5% 이상"))
    assert "c" not in tokens("HbA1c") and "c" not in tokens("LDL-C")  # one-character pieces of codes
    assert "c" in tokens("비타민 C")  # a lone letter is a token
    assert "ldl-c" in tokens("ＬＤＬ－Ｃ")  # full-width (NFKC)
    assert "1000mg" in tokens("1,000mg 복용")
    assert tokens("HbA1c") == tokens("hba1c") and "t4" in tokens("free T4")


def test_tokenizer_batch_equals_one_by_one():
    texts = [r["text"] for r in ROWS] + ["", "LDL-C"]
    assert tokens.tokenize_batch(texts) == [tokens(t) for t in texts]
    assert tokens.info()["name"] == "kiwi-content-morphemes/1"


# ---- build, open, search


def test_build_open_round_trip(built):
    idx = open_index(built.path)
    assert isinstance(idx, SparseIndex) and isinstance(built, SparseIndex)
    assert len(idx) == 8 and idx.document_ids() == sorted(DOCS)
    assert idx.chunk_ids() == ALL_IDS  # Korean, emoji and spaces in ids pass through unchanged
    st = idx.stats()
    assert st["documents"] == 4 and st["chunks"] == 8 and st["vocabulary"] > 30 and st["bytes"] > 0
    meta = json.loads((idx.path / "meta.json").read_text(encoding="utf-8"))
    assert meta["format"] == "welno-runbook-sparse-index/1" and meta["chunks"] == 8
    assert meta["tokenizer"]["name"] == "kiwi-content-morphemes/1" and meta["tokenizer"]["kiwipiepy"]
    table = pq.read_table(idx.path / "chunks.parquet")
    assert table.column("tokens").to_pylist()[2] == tokens(ROWS[2]["text"])
    assert not [p for p in idx.path.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    n = idx.node("🩺 청크:간-1")
    assert n.id_ == "🩺 청크:간-1" and n.text == ROWS[4]["text"]
    assert n.metadata == ROWS[4]["metadata"] and n.ref_doc_id == "문서-간-03"
    assert list(n.metadata) == sorted(ROWS[4]["metadata"])  # canonical key order, as Chroma's nodes have


def test_search_ranks_the_keyword_chunk_first(built):
    assert ids(built.search("LDL-C 수치", 3))[0] == "청크:지질-1"
    assert ids(built.search("γ-GTP", 3)) == ["🩺 청크:간-1"]
    assert ids(built.search("HbA1c 기준", 3))[0] == "청크:당뇨-1"
    assert ids(built.search("고혈압 진단 기준 mmHg", 2))[0] == "청크:혈압-2"
    hits = built.search("당뇨병", 10)
    assert set(ids(hits)) == {"청크:당뇨-1", "청크:당뇨-2", "청크:혈압-2"}
    assert all(s > 0 for _, s in hits) and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert built.search("없는단어 xyzzy", 5) == [] and built.search("", 5) == []


def test_top_k_larger_than_the_index(built):
    hits = built.search("당뇨병 혈압 간 LDL-C", 1000)
    assert 1 <= len(hits) <= 8 and len(set(ids(hits))) == len(hits)
    assert built.search("당뇨병", 0) == []


def test_filters_exclude_before_the_cut(built):
    only_bp = MetadataFilters(filters=[MetadataFilter(key="topic", value="고혈압")])
    # "당뇨병" matches both diabetes chunks best; filtered, the one hypertension chunk mentioning it is first
    assert ids(built.search("당뇨병", 1, filters=only_bp)) == ["청크:혈압-2"]
    not_dm = MetadataFilters(
        filters=[MetadataFilter(key="topic", value="당뇨", operator=FilterOperator.EQ)],
        condition=FilterCondition.NOT,
    )
    assert ids(built.search("당뇨병", 10, filters=not_dm)) == ["청크:혈압-2"]
    tagged = MetadataFilters(
        filters=[MetadataFilter(key="tags", value="건강", operator=FilterOperator.CONTAINS)]
    )
    assert ids(built.search("당뇨병", 10, filters=tagged)) == ids(built.search("당뇨병", 10))
    as_dict = {"filters": [{"key": "출처", "value": "Dr.Welno", "operator": "text_match"}]}
    assert ids(built.search("LDL-C", 5, filters=as_dict)) == ["청크:지질-1"]
    assert built.search("LDL-C", 5, filters={"filters": [{"key": "topic", "value": "없음"}]}) == []
    with pytest.raises(ValueError, match="'regex'"):
        built.search("LDL-C", 5, filters={"filters": [{"key": "topic", "value": "x", "operator": "regex"}]})


def test_open_errors_name_the_folder(tmp_path):
    with pytest.raises(SparseIndexError, match="run phase 03 to build it") as e:
        open_index(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    idx = build(tmp_path / "ix", ROWS[:3])
    p = idx.path / "chunks.parquet"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(SparseIndexError, match="corrupt.*run phase 03") as e:
        open_index(idx.path)
    assert str(idx.path) in str(e.value)
    (idx.path / "meta.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(SparseIndexError, match="corrupt"):
        open_index(idx.path)


def test_bad_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="given twice"):
        build(tmp_path / "ix", ROWS + [dict(ROWS[0], document_id="다른 문서")])
    with pytest.raises(ValueError, match="chunk_id"):
        build(tmp_path / "ix", [{"chunk_id": "", "document_id": "d", "text": "x"}])
    with pytest.raises(ValueError, match="metadata_json is not a JSON object"):
        build(tmp_path / "ix", [{"chunk_id": "a", "document_id": "d", "text": "x", "metadata_json": "[1]"}])
    assert not (tmp_path / "ix").exists() and not list(tmp_path.glob("ix.tmp-*"))


def test_empty_index(tmp_path):
    idx = build(tmp_path / "empty", [])
    assert len(idx) == 0 and idx.search("당뇨병", 5) == [] and idx.stats()["vocabulary"] == 0
    assert all(r["ok"] for r in idx.verify(0, 0))
    idx.upsert_documents([ROWS[0]])
    assert ids(idx.search("당뇨병", 5)) == ["청크:당뇨-1"]
    # chunks without a word (empty, punctuation only) have no tokens: nothing to probe, and that is fine
    blank = build(tmp_path / "blank", [{"chunk_id": "x", "document_id": "d", "text": t} for t in ("",)])
    blank.upsert_documents([{"chunk_id": "y", "document_id": "e", "text": " ... !!"}])
    assert blank.search("...", 5) == [] and all(r["ok"] for r in blank.verify(2, 2))


# ---- updates


def test_upsert_replaces_and_delete_removes(tmp_path):
    idx = build(tmp_path / "ix", ROWS)
    assert ids(idx.search("스타틴", 5)) == ["청크:지질-1"]
    new = [
        {
            "chunk_id": "청크:지질-1b",
            "document_id": "문서-지질-02",
            "text": "에제티미브는 LDL-C를 추가로 낮춥니다.",
            "metadata": {"topic": "이상지질혈증", "개정": 2},
        },
        {
            "chunk_id": "청크:갑상선-1",
            "document_id": "문서-갑상선-05",
            "text": "TSH와 free T4로 갑상선 기능을 평가합니다.",
            "metadata": {"topic": "갑상선"},
        },
    ]
    res = idx.upsert_documents(new)
    assert res == {"added": 1, "replaced": 1, "deleted": 0, "chunks_added": 2, "chunks_removed": 2}
    assert idx.search("스타틴", 5) == [] and idx.search("HDL 콜레스테롤", 5) == []  # old text gone
    assert ids(idx.search("에제티미브", 5)) == ["청크:지질-1b"]
    assert ids(idx.search("갑상선 TSH", 5)) == ["청크:갑상선-1"]
    assert "청크:지질-1" not in idx and idx.node("청크:지질-1b").metadata == {
        "topic": "이상지질혈증",
        "개정": 2,
    }
    # the unchanged chunks kept their stored tokens, and the change is on disk
    again = open_index(idx.path)
    assert len(again) == 8 and ids(again.search("에제티미브", 5)) == ["청크:지질-1b"]
    assert again.meta["documents"] == 5

    res = idx.delete_documents(["문서-당뇨-01", "없는 문서"])
    assert res == {"added": 0, "replaced": 0, "deleted": 1, "chunks_added": 0, "chunks_removed": 2}
    assert set(ids(idx.search("당뇨병", 10))) == {"청크:혈압-2"}
    assert "문서-당뇨-01" not in open_index(idx.path).document_ids()
    assert idx.delete_documents(["없는 문서"])["deleted"] == 0

    # a document named but given no rows is removed by an upsert too
    res = idx.upsert_documents([], document_ids=["문서-갑상선-05"])
    assert res["deleted"] == 1 and idx.search("갑상선", 5) == []
    assert not [p for p in idx.path.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_upsert_refuses_a_chunk_id_of_another_document(tmp_path):
    idx = build(tmp_path / "ix", ROWS)
    clash = dict(ROWS[0], document_id="문서-새-09", text="다른 내용")
    with pytest.raises(ValueError, match="청크:당뇨-1"):
        idx.upsert_documents([clash])
    assert ids(open_index(idx.path).search("HbA1c", 3))[0] == "청크:당뇨-1"


def test_an_update_reads_what_is_on_disk(tmp_path):
    """Two objects over one folder: the second one's update keeps the first one's change."""
    a = build(tmp_path / "ix", ROWS)
    b = open_index(a.path)
    a.delete_documents(["문서-간-03"])
    b.upsert_documents([{"chunk_id": "x1", "document_id": "새", "text": "골다공증 검사", "metadata": {}}])
    final = open_index(a.path)
    assert "문서-간-03" not in final.document_ids() and "새" in final.document_ids()


def _dir_renames(monkeypatch, fail_at: int):
    real = os.replace
    seen = []

    def flaky(src, dst, *a, **kw):
        if Path(src).is_dir():
            seen.append((str(src), str(dst)))
            if len(seen) == fail_at:
                raise OSError("simulated crash at the second rename")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", flaky)
    return seen


def test_a_failed_swap_leaves_the_old_index(tmp_path, monkeypatch):
    idx = build(tmp_path / "ix", ROWS)
    before = idx.search("LDL-C 스타틴", 5)
    seen = _dir_renames(monkeypatch, fail_at=2)
    with pytest.raises(OSError, match="simulated"):
        idx.upsert_documents([dict(ROWS[2], text="완전히 바뀐 내용")])
    monkeypatch.undo()
    assert ".old-" in seen[0][1] and ".tmp-" in seen[1][0]  # old moved away, then the new one failed
    again = open_index(idx.path)
    assert again.search("LDL-C 스타틴", 5) == before and len(again) == 8
    assert not [p for p in idx.path.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_crash_between_the_renames_is_repaired(tmp_path):
    """Killed after moving the old index away (no rollback ran): open puts the old one back."""
    idx = build(tmp_path / "ix", ROWS)
    before = idx.search("고혈압", 5)
    os.replace(idx.path, idx.path.with_name("ix.old-999999"))
    junk = idx.path.with_name("ix.tmp-999999")
    junk.mkdir()
    (junk / "chunks.parquet").write_bytes(b"half")
    again = open_index(idx.path)
    assert again.search("고혈압", 5) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["ix"]
    # a leftover temporary folder alone is cleaned by the next write
    junk.mkdir()
    build(idx.path, ROWS[:2])
    assert not junk.exists() and len(open_index(idx.path)) == 2


# ---- verify


def test_verify_passes_on_a_good_index(built):
    checks = built.verify(4, 8, probes=8, expected_chunk_ids=ALL_IDS)
    assert [c["check"] for c in checks] == [
        "documents in the sparse index",
        "chunks in the sparse index",
        "index files agree",
        "term queries that must hit",
    ]
    assert all(c["ok"] for c in checks), checks
    assert "8/8" in checks[-1]["detail"]


def test_verify_names_a_missing_chunk(tmp_path):
    idx = build(tmp_path / "ix", [r for r in ROWS if r["chunk_id"] != "청크:지질-2"])
    checks = {c["check"]: c for c in idx.verify(4, 8, expected_chunk_ids=ALL_IDS)}
    bad = checks["chunks in the sparse index"]
    assert not bad["ok"] and "청크:지질-2" in bad["detail"] and "7 chunks, expected 8" in bad["detail"]
    assert checks["documents in the sparse index"]["ok"]
    assert not idx.verify(4, 8)[1]["ok"]  # by count alone too


def test_verify_probes_catch_a_misaligned_index(tmp_path):
    idx = build(tmp_path / "ix", ROWS)
    order = [0, 1, 4, 3, 2, 5, 6, 7]  # rows 2 and 4 swapped: they no longer match their BM25 documents
    st = idx._st
    idx._st = _State(st.meta, st.table.take(order), st.bm25)
    probe = idx.verify(4, 8, probes=8)[-1]
    assert not probe["ok"] and "청크:지질-1" in probe["detail"] and "🩺 청크:간-1" in probe["detail"]


# ---- from an export


def _write_export(root: Path, rows: list[dict]) -> Path:
    root.mkdir(parents=True)
    pq.write_table(export_format.chunk_table(rows), root / "chunks-00000.parquet")
    manifest = {
        "format": export_format.FORMAT,
        "index_id": "pipe-1",
        "exported_at": "2026-11-28T00:00:00Z",
        "total_chunks": len(rows),
        "shards": [{"chunks_file": "chunks-00000.parquet", "documents_file": "documents-00000.parquet"}],
    }
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


def test_build_from_export_streams_and_restricts(tmp_path):
    rows = []
    for seq, r in enumerate(ROWS):
        node = {
            "id_": r["chunk_id"],
            "text": r["text"],
            "extra_info": r["metadata"],
            "relationships": {
                "1": {"node_id": r["document_id"], "node_type": "4", "metadata": {}, "hash": None}
            },
            "start_char_idx": 0,
            "end_char_idx": len(r["text"]),
        }
        rows.append(export_format.node_to_row(r["document_id"], seq, node))
    dup = dict(rows[0], document_id="다른 문서", text="중복 아이디")
    exp = _write_export(tmp_path / "export", rows + [dup])
    loaded = set(ALL_IDS) - {"청크:간-2"}
    idx = build_from_export(tmp_path / "ix", exp, chunk_ids=loaded)
    assert set(idx.chunk_ids()) == loaded
    assert idx.meta["source"]["skipped"] == {"not_loaded": 1, "duplicate_id": 1, "no_id": 0}
    assert idx.search("중복 아이디", 5) == []  # the first in export order keeps the id
    # the node equals the exported one (and so the one Chroma serves): same hash, so fusion merges them
    for r in rows:
        if r["chunk_id"] in loaded:
            want = export_format.row_to_llama_node(r)
            got = idx.node(r["chunk_id"])
            assert (got.id_, got.text, got.metadata, got.ref_doc_id) == (
                want.id_,
                want.text,
                want.metadata,
                want.ref_doc_id,
            )
            assert got.hash == want.hash and got.start_char_idx == want.start_char_idx
    # updates carry the source forward
    idx.delete_documents(["문서-간-03"])
    assert open_index(idx.path).meta["source"]["index_id"] == "pipe-1"


# ---- retrievers


class FixedRetriever(BaseRetriever):
    """A dense retriever stand-in: the same ranked list for every query (fresh objects each time)."""

    def __init__(self, ranked):
        self.ranked = ranked
        super().__init__()

    def _retrieve(self, query_bundle):
        return [NodeWithScore(node=n, score=s) for n, s in self.ranked]


def _as_pairs(results):
    return [(r.node.node_id, round(r.score, 6)) for r in results]


def test_sparse_retriever(built):
    r = SparseRetriever(built, similarity_top_k=2)
    res = r.retrieve("LDL-C 160 mg/dL")
    assert res[0].node.node_id == "청크:지질-1" and res[0].node.ref_doc_id == "문서-지질-02"
    assert _as_pairs(res) == [(c, round(s, 6)) for c, s in built.search("LDL-C 160 mg/dL", 2)]
    filtered = SparseRetriever(
        built, similarity_top_k=5, filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="간")])
    )
    assert {n.node.metadata["topic"] for n in filtered.retrieve("간 수치 질환 확인")} == {"간"}
    with pytest.raises(ValueError, match="'regex'"):
        SparseRetriever(built, filters={"filters": [{"key": "a", "value": 1, "operator": "regex"}]})
    assert len(SparseRetriever(built.path, similarity_top_k=3).retrieve("당뇨병")) == 3  # from a path


def test_hybrid_alpha_ends_and_middle(built):
    dense = FixedRetriever(
        [
            (built.node("🩺 청크:간-1"), 0.9),
            (built.node("청크:당뇨-1"), 0.8),
            (built.node("청크:혈압-1"), 0.1),
        ]
    )
    sparse = SparseRetriever(built, similarity_top_k=3)
    q = "당뇨병 HbA1c"
    assert _as_pairs(hybrid_retriever(dense, sparse, 1, 3).retrieve(q)) == _as_pairs(dense.retrieve(q))
    assert _as_pairs(hybrid_retriever(dense, sparse, 0.0, 3).retrieve(q)) == _as_pairs(sparse.retrieve(q))
    h = hybrid_retriever(dense, sparse, 0.5, 3)
    assert isinstance(h, QueryFusionRetriever) and isinstance(h._llm, MockLLM)  # no default LLM looked up
    res = h.retrieve(q)
    got = [r.node.node_id for r in res]
    assert got[0] == "청크:당뇨-1" and len(got) == len(set(got)) == 3  # merged: in both lists, once
    assert res[0].score == pytest.approx(0.5 * (0.8 - 0.1) / (0.9 - 0.1) + 0.5 * 1.0)
    # alpha near 1 follows the dense order, near 0 the sparse one
    assert hybrid_retriever(dense, sparse, 0.99, 3).retrieve(q)[0].node.node_id == "🩺 청크:간-1"
    assert (
        hybrid_retriever(dense, sparse, 0.01, 3).retrieve(q)[0].node.node_id
        == sparse.retrieve(q)[0].node.node_id
    )
    # the same chunk with its metadata written differently (Chroma's flat form) is still one result
    flat = built.node("청크:당뇨-1").model_copy(
        update={"metadata": {"topic": "당뇨", "_node_type": "TextNode"}}
    )
    assert flat.hash != built.node("청크:당뇨-1").hash
    dense_flat = FixedRetriever(
        [(built.node("🩺 청크:간-1"), 0.9), (flat, 0.8), (built.node("청크:혈압-1"), 0.1)]
    )
    res2 = hybrid_retriever(dense_flat, sparse, 0.5, 3).retrieve(q)
    assert [r.node.node_id for r in res2] == got and res2[0].score == pytest.approx(res[0].score)
    assert res2[0].node.metadata == flat.metadata  # the dense retriever's node
    import asyncio

    ares = asyncio.run(hybrid_retriever(dense_flat, sparse, 0.5, 3).aretrieve(q))
    assert _as_pairs(ares) == _as_pairs(res2)
    for bad in (-0.1, 1.5, float("nan"), "0.5", None, True):
        with pytest.raises(ValueError, match="alpha"):
            hybrid_retriever(dense, sparse, bad, 3)
    with pytest.raises(ValueError, match="top_k"):
        hybrid_retriever(dense, sparse, 0.5, 0)


def test_korean_metadata_and_ids_pass_through(tmp_path):
    odd = [
        {
            "chunk_id": "ĉhunk/ü?#%20 청크 ①",
            "document_id": "문서 ✓ «1»",
            "text": "골밀도 T-score -2.5 이하면 골다공증입니다.",
            "metadata": {"제목": "골다공증 🦴", "값": [1, "둘", {"셋": None}], "큰수": 2**70, "비율": 0.25},
        }
    ]
    idx = build(tmp_path / "ix", odd)
    (hit,) = idx.search("골다공증 T-score", 5)
    assert hit[0] == odd[0]["chunk_id"]
    n = open_index(idx.path).node(hit[0])
    assert n.metadata == odd[0]["metadata"] and n.ref_doc_id == "문서 ✓ «1»"
    assert idx.document_ids() == ["문서 ✓ «1»"]


def test_verify_passes_on_boilerplate_chunks(tmp_path):
    """Chunks no three terms can single out (the same notice in every document, once, twice or three
    times) pass when their scores are what their own tokens give."""
    notice = "본 자료는 웰노 건강정보이며 진료를 대신하지 않습니다. 증상이 있으면 의료기관을 방문하세요. "
    rows = [
        {"chunk_id": f"안내-{i}", "document_id": f"문서-{i}", "text": notice * (1 + i % 3), "metadata": {}}
        for i in range(20)
    ]
    idx = build(tmp_path / "ix", ROWS + rows)
    probe = idx.verify(24, 28, probes=28)[-1]
    assert probe["ok"], probe
    assert "not distinctive" in probe["detail"]
    # a score that does not match the tokens still fails
    st = idx._st
    idx._st = _State(st.meta, st.table.take([*range(8), *range(9, 28), 8]), st.bm25)
    assert not idx.verify(24, 28, probes=28)[-1]["ok"]


def test_build_with_progress_bars(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RUNBOOK_HEADLESS", "1")
    idx = build(tmp_path / "ix", iter(ROWS), show_progress=True)
    assert len(idx) == 8
    assert "sparse index" in capsys.readouterr().err


def test_searching_while_another_thread_updates(tmp_path):
    import threading

    idx = build(tmp_path / "ix", ROWS)
    retriever = SparseRetriever(idx, similarity_top_k=3)
    errors, stop = [], threading.Event()

    def search():
        while not stop.is_set():
            try:
                for q in ("당뇨병 HbA1c", "LDL-C", "고혈압"):
                    for n in retriever.retrieve(q):
                        assert n.node.text
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for k in range(3):
            idx.delete_documents(["문서-당뇨-01"])
            idx.upsert_documents(ROWS[:2] if k % 2 == 0 else [dict(ROWS[0], text="당뇨병 새 내용")])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
