"""The official llama-cloud client and LlamaCloudIndex talk to the local server unchanged (real HTTP)."""

import time

import httpx
import llama_cloud
import pytest
from llama_cloud import LlamaCloud

from runbook import cloud_emulator, corpus
from runbook.source import path_id

from .conftest import API_KEY, CACHE


def client(srv, **kw):
    return LlamaCloud(api_key=API_KEY, base_url=srv.url, **kw)


def test_projects_pipelines_and_paging(server):
    c = client(server)
    assert [p.name for p in c.projects.list()] == ["Default"]
    assert c.projects.list(project_name="nope") == []
    pl = c.pipelines.list(pipeline_name="Dr.Welno")
    assert len(pl) == 1 and pl[0].embedding_config.type == "HUGGINGFACE_API_EMBEDDING"
    assert c.pipelines.get(pipeline_id=pl[0].id).transform_config.chunk_size == corpus.DEMO_CHUNK_SIZE
    # the client's pager follows total_count with skip = offset + len(documents)
    docs = list(c.pipelines.documents.list(pipeline_id=pl[0].id, limit=7))
    assert len(docs) == 50 == len({d.id for d in docs})
    paged = [r for r in server.requests if r[1].endswith("/documents/paginated")]
    assert len(paged) == 8  # ceil(50 / 7)


def test_chunks_are_textnode_json_with_relationships(server):
    c = client(server)
    pid = corpus.DEMO_PIPELINE_ID
    doc = next(d for d in c.pipelines.documents.list(pipeline_id=pid, limit=50) if "/" in d.id)
    assert doc.id.startswith("건강검진/")  # Korean and a slash in the id
    raw = httpx.get(
        f"{server.url}/api/v1/pipelines/{pid}/documents/{path_id(doc.id)}/chunks",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ).json()
    assert {
        "id_",
        "extra_info",
        "relationships",
        "start_char_idx",
        "end_char_idx",
        "metadata_seperator",
    } <= set(raw[0])
    assert "metadata" not in raw[0] and raw[0]["embedding"] is None
    assert (
        raw[1]["relationships"]["2"]["node_id"] == raw[0]["id_"]
        and raw[0]["relationships"]["3"]["node_id"] == raw[1]["id_"]
    )
    assert raw[0]["relationships"]["1"]["node_id"] == doc.id
    nodes = c.pipelines.documents.get_chunks(document_id=path_id(doc.id), pipeline_id=pid)
    assert [n.id for n in nodes] == [r["id_"] for r in raw]
    assert c.pipelines.documents.get(document_id=path_id(doc.id), pipeline_id=pid).id == doc.id
    assert raw[0]["extra_info"]["file_name"].endswith("_가이드.pdf")


def test_embeddings_can_be_served(demo_corpus):
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY, serve_embeddings=True) as srv:
        d = next(iter(demo_corpus.documents))
        nodes = client(srv).pipelines.documents.get_chunks(
            document_id=path_id(d), pipeline_id=corpus.DEMO_PIPELINE_ID
        )
        assert len(nodes[0].embedding) == 384


def test_files2_envelope(server):
    r = httpx.get(
        f"{server.url}/api/v1/pipelines/{corpus.DEMO_PIPELINE_ID}/files2?limit=5&offset=45",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ).json()
    assert r["total_count"] == 50 and r["offset"] == 45 and len(r["files"]) == 5


def test_wrong_or_missing_key_is_401(server):
    with pytest.raises(llama_cloud.AuthenticationError):
        LlamaCloud(api_key="wrong", base_url=server.url).projects.list()
    r = httpx.get(f"{server.url}/api/v1/projects")
    assert r.status_code == 401 and r.json() == {"detail": "Invalid authentication token"}


def test_validation_errors_are_fastapi_shaped(server):
    r = httpx.get(
        f"{server.url}/api/v1/pipelines/{corpus.DEMO_PIPELINE_ID}/documents/paginated?skip=x",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "skip"]


def test_retrieve_filters_and_cutoff(server):
    c = client(server)
    pid = corpus.DEMO_PIPELINE_ID
    r = c.pipelines.retrieve(
        pipeline_id=pid, query="What HbA1c value means I have diabetes?", dense_similarity_top_k=5
    )
    assert len(r.retrieval_nodes) == 5
    scores = [n.score for n in r.retrieval_nodes]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert r.retrieval_nodes[0].node.extra_info["title"].startswith("당뇨병")
    f = c.pipelines.retrieve(
        pipeline_id=pid,
        query="cancer screening",
        dense_similarity_top_k=10,
        search_filters={"filters": [{"key": "category", "value": "암검진", "operator": "=="}]},
    )
    assert f.retrieval_nodes and all(n.node.extra_info["category"] == "암검진" for n in f.retrieval_nodes)
    o = c.pipelines.retrieve(
        pipeline_id=pid,
        query="cancer screening",
        dense_similarity_top_k=10,
        search_filters={
            "condition": "or",
            "filters": [
                {"key": "category", "value": ["신경", "감염"], "operator": "in"},
                {"key": "start_page_index", "value": 2, "operator": ">="},
            ],
        },
    )
    assert all(
        n.node.extra_info["category"] in ("신경", "감염") or n.node.extra_info["start_page_index"] >= 2
        for n in o.retrieval_nodes
    )
    cut = c.pipelines.retrieve(
        pipeline_id=pid,
        query="What HbA1c value means I have diabetes?",
        dense_similarity_top_k=50,
        dense_similarity_cutoff=scores[2] - 1e-6,
    )
    assert len(cut.retrieval_nodes) == 3
    rr = c.pipelines.retrieve(pipeline_id=pid, query="x", enable_reranking=True, alpha=0.5)
    assert "reranking" in rr.metadata and "sparse" in rr.metadata  # says what it does not imitate


def test_llamacloudindex_and_retriever_work_unchanged(server):
    from llama_cloud.lib.index import LlamaCloudIndex

    idx = LlamaCloudIndex(name="Dr.Welno", project_name="Default", api_key=API_KEY, base_url=server.url)
    assert idx.pipeline.id == corpus.DEMO_PIPELINE_ID
    nodes = idx.as_retriever(dense_similarity_top_k=3).retrieve("What should I eat before a colonoscopy?")
    assert len(nodes) == 3 and nodes[0].node.metadata["title"] == "대장내시경 준비"
    idx2 = LlamaCloudIndex(id=corpus.DEMO_PIPELINE_ID, api_key=API_KEY, base_url=server.url)
    assert idx2.name == "Dr.Welno"


def test_labelled_questions_hit_rate(server, capsys):
    """Most labelled questions find their document in the top 5 (the figure is printed)."""
    c = client(server)
    qs = corpus.demo_questions()
    hits = 0
    for q in qs:
        r = c.pipelines.retrieve(
            pipeline_id=corpus.DEMO_PIPELINE_ID, query=q["question"], dense_similarity_top_k=5
        )
        docs = {n.node.relationships["1"].node_id for n in r.retrieval_nodes}
        hits += bool(docs & set(q["expected_document_ids"]))
    rate = hits / len(qs)
    with capsys.disabled():
        print(f"\ndemo question set: {hits}/{len(qs)} = {rate:.0%} answered in the top 5")
    assert len(qs) == 50 and rate >= 0.8


def test_faults_429_then_success_with_retry_after(server):
    server.set_faults(rate_429=1.0, retry_after_ms=20, path_pattern="/projects$")
    c = client(server, max_retries=2)
    with pytest.raises(llama_cloud.RateLimitError):
        c.projects.list()
    assert sum(1 for r in server.requests if r[1] == "/api/v1/projects") == 3  # 1 + 2 retries
    server.set_faults(rate_429=0.5, retry_after_ms=20, seed=3)
    t0 = time.time()
    for _ in range(10):
        client(server, max_retries=10).projects.list()
    assert time.time() - t0 < 10  # the client waited retry-after-ms, not its own long backoff


@pytest.mark.parametrize(
    "fault,exc",
    [("rate_500", llama_cloud.InternalServerError), ("rate_503", llama_cloud.InternalServerError)],
)
def test_faults_5xx(server, fault, exc):
    server.set_faults(**{fault: 1.0})
    with pytest.raises(exc) as e:
        client(server, max_retries=1).projects.list()
    assert e.value.status_code == (500 if fault == "rate_500" else 503)


def test_fault_slow_response_times_out(server):
    server.set_faults(slow_rate=1.0, slow_seconds=1.5)
    with pytest.raises(llama_cloud.APITimeoutError):
        client(server, max_retries=0, timeout=0.5).projects.list()


def test_fault_dropped_connection(server):
    server.set_faults(drop_rate=1.0)
    with pytest.raises(llama_cloud.APIConnectionError):
        client(server, max_retries=1).projects.list()


def test_corpus_change_between_listings(server):
    victim = list(server.corpus.documents)[-1]
    server.set_faults(change_after_listings=1, change={"action": "delete", "document_id": victim})
    c = client(server)
    first = c.pipelines.documents.list(pipeline_id=corpus.DEMO_PIPELINE_ID, limit=100)
    second = c.pipelines.documents.list(pipeline_id=corpus.DEMO_PIPELINE_ID, limit=100)
    assert first.total_count == 50 and second.total_count == 49


def test_module_entry_point_serves_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", API_KEY)
    h = cloud_emulator.start_subprocess("demo", "LLAMA_CLOUD_API_KEY", embed_cache=str(CACHE))
    try:
        c = LlamaCloud(api_key=API_KEY, base_url=h.url)
        assert c.pipelines.documents.list(pipeline_id=corpus.DEMO_PIPELINE_ID, limit=1).total_count == 50
    finally:
        h.stop()
