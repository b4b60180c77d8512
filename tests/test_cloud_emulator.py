"""The official llama-cloud client and LlamaCloudIndex talk to the local server unchanged (real HTTP)."""

import json
import math
import time
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import llama_cloud
import numpy as np
import pytest
from llama_cloud import LlamaCloud

from runbook import embeddings
from runbook.rehearsal import cloud_emulator, corpus
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


def test_every_connection_sends_small_answers_at_once(server):
    """The server writes headers and body separately: with Nagle's algorithm on, a small body waited for the
    client's delayed ACK, about 40-50 ms on every small answer after a connection's first (lookups, listing
    pages), which a real service does not add and which made the rehearsal's listing slower than production's.
    Every connection the server accepts has TCP_NODELAY, the LlamaCloud paths' as much as the OpenAI one's."""
    import socket

    handler = server.httpd.RequestHandlerClass
    seen = []
    setup = handler.setup

    def setup_and_look(self):
        setup(self)
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    handler.setup = setup_and_look
    try:
        c = client(server)
        c.projects.list()
        c.pipelines.list(pipeline_name="Dr.Welno")
        with httpx.Client() as plain:
            plain.post(
                server.url + "/v1/embeddings", json={}
            )  # the OpenAI stand-in's path, on its own connection
    finally:
        handler.setup = setup
    assert len(seen) >= 2 and all(seen), seen


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
    assert "reranking" in rr.metadata and "sparse" in rr.metadata  # says what it did (hybrid, reranked)


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


def test_faults_429_then_success_with_retry_after(server, monkeypatch):
    # the waits the client asks for, recorded instead of slept: what it waits is read, never timed
    from llama_cloud import _base_client

    sleeps: list[float] = []
    monkeypatch.setattr(_base_client, "time", SimpleNamespace(sleep=sleeps.append, time=time.time))

    def projects_requests():
        return sum(1 for r in server.requests if r[1] == "/api/v1/projects")

    server.set_faults(rate_429=1.0, retry_after_ms=20, path_pattern="/projects$")
    c = client(server, max_retries=2)
    with pytest.raises(llama_cloud.RateLimitError):
        c.projects.list()
    assert projects_requests() == 3  # 1 + 2 retries
    # retry-after-ms (0.02 s), not retry-after (the server rounds it up to 1 s) nor the client's own
    # backoff (0.5 s and more)
    assert sleeps == [0.02, 0.02]
    server.set_faults(rate_429=0.5, retry_after_ms=20, seed=3)
    before, sleeps[:] = projects_requests(), []
    for _ in range(10):
        client(server, max_retries=10).projects.list()
    answered_429 = projects_requests() - before - 10  # every call ends with one answer that is not a 429
    assert answered_429 > 0 and sleeps == [0.02] * answered_429


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


# ---- vectors replayed faithfully, JSON as Python writes it, ids in paths (defect 5)
TINY_DIM = 8


def _tiny_pipeline():
    return corpus._pipeline(
        "tiny-pipeline",
        "tiny",
        corpus.DEMO_PROJECT["id"],
        {"type": "HASH_EMBEDDING", "component": {"model_name": "hash", "dimensions": TINY_DIM}},
        {"mode": "auto", "chunk_size": 1024, "chunk_overlap": 200},
    )


def _tiny_vectors() -> dict[tuple[str, str], np.ndarray | None]:
    """(document id, chunk id) -> vector: non-unit, one NaN element, zero, wrong dimension, none, and one chunk
    id shared by two documents with different vectors."""
    rng = np.random.default_rng(5)
    odd = (rng.standard_normal(TINY_DIM) * 3.3).astype(np.float32)  # norm far from 1, awkward float32 values
    nan = rng.standard_normal(TINY_DIM).astype(np.float32)
    nan[2] = np.nan
    return {
        ("doc-a", "shared"): odd,
        ("doc-a", "nan"): nan,
        ("doc-a", "zero"): np.zeros(TINY_DIM, np.float32),
        ("doc-b", "shared"): rng.standard_normal(TINY_DIM).astype(np.float32),
        ("doc-c", "ok"): np.array([0.5, -0.25, 1e-30, -0.0, 3.0, 2.5e-41, 7.0, -1.0], np.float32),
        # a document whose chunks have vectors of another dimension, or none at all
        ("doc-d", "short"): rng.standard_normal(TINY_DIM - 3).astype(np.float32),
        ("doc-d", "none"): None,
    }


def _tiny_docs(vectors):
    docs: dict[str, list] = {}
    for (d, cid), v in vectors.items():
        docs.setdefault(d, []).append((cid, v))
    return docs


def _tiny_corpus(vectors=None) -> corpus.StaticCorpus:
    vectors = _tiny_vectors() if vectors is None else vectors
    c = corpus.StaticCorpus(
        dict(corpus.DEMO_PROJECT), _tiny_pipeline(), embeddings.ModelSpec("hash", "hash", TINY_DIM)
    )
    for d, items in _tiny_docs(vectors).items():
        doc = {"id": d, "text": f"text of {d}", "metadata": {"file_name": f"{d}.txt"}}
        chunks = [
            corpus.node_json(cid, f"{d}/{cid}", {"document_id": d}, d, {}, None, None, 0, 1)
            for cid, _ in items
        ]
        vecs = [v for _, v in items]
        if all(v is None for v in vecs):
            vecs = None
        elif all(v is not None and v.shape == vecs[0].shape for v in vecs):
            vecs = np.stack(vecs)  # the 2-D array callers have always passed
        c.put_document(doc, chunks, vecs)
    return c


def _served_vectors(srv, doc_ids) -> dict[tuple[str, str], list | None]:
    out = {}
    for d in doc_ids:
        r = httpx.get(
            f"{srv.url}/api/v1/pipelines/tiny-pipeline/documents/{quote(d, safe='')}/chunks",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert r.status_code == 200, r.text
        for n in r.json():
            out[(d, n["id_"])] = n["embedding"]
    return out


def _assert_bit_for_bit(served, expected):
    assert set(served) == set(expected)
    for key, v in expected.items():
        if v is None:
            assert served[key] is None, key
        else:
            got = np.asarray(served[key], dtype=np.float32)
            assert got.shape == v.shape and got.tobytes() == v.tobytes(), key


def test_served_vectors_are_the_given_vectors_bit_for_bit():
    vectors = {k: v for k, v in _tiny_vectors().items() if k[0] != "doc-d"}
    with cloud_emulator.EmulatorServer(_tiny_corpus(vectors), API_KEY, serve_embeddings=True) as srv:
        served = _served_vectors(srv, ["doc-a", "doc-b", "doc-c"])
    assert abs(np.linalg.norm(served[("doc-a", "shared")]) - 1.0) > 0.5  # not unit-normalised
    nan = served[("doc-a", "nan")]
    assert sum(math.isnan(x) for x in nan) == 1 and math.isnan(nan[2])  # one NaN element stays one
    assert served[("doc-a", "shared")] != served[("doc-b", "shared")]  # each document its own vector
    assert served[("doc-a", "zero")] == [0.0] * TINY_DIM
    assert math.copysign(1.0, served[("doc-c", "ok")][3]) == -1.0  # -0.0 and subnormals kept
    _assert_bit_for_bit(served, vectors)


def test_served_vectors_of_any_dimension_or_none():
    vectors = _tiny_vectors()
    with cloud_emulator.EmulatorServer(_tiny_corpus(vectors), API_KEY, serve_embeddings=True) as srv:
        served = _served_vectors(srv, ["doc-a", "doc-b", "doc-c", "doc-d"])
    assert len(served[("doc-d", "short")]) == TINY_DIM - 3 and served[("doc-d", "none")] is None
    _assert_bit_for_bit(served, vectors)


def test_search_skips_vectors_that_cannot_be_searched():
    c = _tiny_corpus()
    assert {(d, cid) for d, cid, _ in c.unsearchable} == {
        ("doc-a", "nan"),
        ("doc-a", "zero"),
        ("doc-d", "short"),
    }
    with cloud_emulator.EmulatorServer(c, API_KEY) as srv:
        r = client(srv).pipelines.retrieve(
            pipeline_id="tiny-pipeline", query="q", dense_similarity_top_k=50, dense_similarity_cutoff=-2.0
        )
    got = [(n.node.relationships["1"].node_id, n.node.id) for n in r.retrieval_nodes]
    assert sorted(got) == [("doc-a", "shared"), ("doc-b", "shared"), ("doc-c", "ok")]
    assert all(math.isfinite(n.score) and -1.0001 <= n.score <= 1.0001 for n in r.retrieval_nodes)
    assert "unsearchable_chunks" in r.metadata
    # search scores use a unit copy: the served vector is untouched
    assert c.vector("doc-a", "shared").tobytes() == _tiny_vectors()[("doc-a", "shared")].tobytes()


def _write_export(path, c: corpus.StaticCorpus, vectors) -> None:
    """A minimal export folder (manifest + one Parquet shard pair) holding the corpus and its vectors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from runbook import export_format

    path.mkdir(parents=True)
    chunk_rows, doc_rows = [], []
    for d, doc in c.documents.items():
        for k, n in enumerate(c.chunks[d]):
            v = vectors[(d, n["id_"])]
            chunk_rows.append(
                {
                    "chunk_id": n["id_"],
                    "document_id": d,
                    "seq": k,
                    "text": n["text"],
                    "text_sha256": "",
                    "metadata_json": json.dumps(n["extra_info"]),
                    "relationships_json": json.dumps(n["relationships"]),
                    "node_extra_json": "{}",
                    "start_char_idx": n["start_char_idx"],
                    "end_char_idx": n["end_char_idx"],
                    "embedding": None if v is None else v.tolist(),
                    "embedding_source": None if v is None else "cloud",
                }
            )
        doc_rows.append(
            {
                "document_id": d,
                "text": doc["text"],
                "metadata_json": json.dumps(doc["metadata"]),
                "content_sha256": "",
                "chunk_count": len(c.chunks[d]),
            }
        )
    pq.write_table(pa.Table.from_pylist(chunk_rows, schema=export_format.CHUNK_SCHEMA), path / "c.parquet")
    pq.write_table(pa.Table.from_pylist(doc_rows, schema=export_format.DOC_SCHEMA), path / "d.parquet")
    manifest = {
        "format": export_format.FORMAT,
        "project": c.project,
        "pipeline": c.pipeline,
        "shards": [{"index": 0, "chunks_file": "c.parquet", "documents_file": "d.parquet"}],
    }
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_export_folder_vectors_are_served_as_exported(tmp_path):
    vectors = _tiny_vectors()
    _write_export(tmp_path / "export", _tiny_corpus(vectors), vectors)
    c = corpus.load(str(tmp_path / "export"))
    for (d, cid), v in vectors.items():
        got = c.vector(d, cid)
        assert (got is None) if v is None else (got.tobytes() == v.tobytes()), (d, cid)
    with cloud_emulator.EmulatorServer(c, API_KEY, serve_embeddings=True) as srv:
        _assert_bit_for_bit(_served_vectors(srv, ["doc-a", "doc-b", "doc-c", "doc-d"]), vectors)
    assert len(c.unsearchable) == 3


def test_json_is_served_as_python_writes_it_and_read_back():
    c = _tiny_corpus({("doc-a", "x"): None})
    meta = {
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": float("-inf"),
        "big": 2**70,
        "neg_big": -(2**70),
        "u64": 2**64 - 1,
        "nul": "a\x00b",
    }
    doc = {"id": "doc-j", "text": "before\x00after \ud800 한글", "metadata": meta}
    chunk = corpus.node_json("c\x00", "x\ud800y\x00", meta, "doc-j", meta, None, None, 0, 1)
    c.put_document(doc, [chunk], None)
    with cloud_emulator.EmulatorServer(c, API_KEY) as srv:
        base = f"{srv.url}/api/v1/pipelines/tiny-pipeline/documents/doc-j"
        raw = httpx.get(base, headers={"Authorization": f"Bearer {API_KEY}"})
        body = raw.content
        assert b'"nan": NaN' in body and b'"inf": Infinity' in body and b'"ninf": -Infinity' in body
        assert b'"big": 1180591620717411303424' in body and b'"neg_big": -1180591620717411303424' in body
        assert b'"text": "before\\u0000after \\ud800 \xed\x95\x9c\xea\xb8\x80"' in body  # Korean as UTF-8
        got = raw.json()
        assert got["text"] == doc["text"] and got["metadata"]["big"] == 2**70
        assert math.isnan(got["metadata"]["nan"]) and got["metadata"]["ninf"] == float("-inf")
        chunks = httpx.get(base + "/chunks", headers={"Authorization": f"Bearer {API_KEY}"}).json()
        assert chunks[0]["id_"] == "c\x00" and chunks[0]["text"] == "x\ud800y\x00"
        # the official client parses the same JSON (models are built without validation)
        lc = client(srv)
        d = lc.pipelines.documents.get(document_id="doc-j", pipeline_id="tiny-pipeline")
        assert d.text == doc["text"] and d.metadata["u64"] == 2**64 - 1 and math.isnan(d.metadata["nan"])
        n = lc.pipelines.documents.get_chunks(document_id="doc-j", pipeline_id="tiny-pipeline")[0]
        assert n.text == "x\ud800y\x00" and n.extra_info["neg_big"] == -(2**70)
        # ... but dumping a client model as JSON turns NaN into null (pydantic's default)
        assert d.model_dump(mode="json")["metadata"]["nan"] is None


IDS_IN_PATHS = [
    "A",
    "%41",
    "%2541",
    "a%2Fb",
    "a/b",
    "/",
    "what?x=1&y=2#frag",
    " lead and trail ",
    "100%",
    "건강검진/결과 🩺",
    "긴/" + "가?#% " * 80,
    "tab\tnew\nline",
]


def test_ids_in_paths_are_decoded_exactly_once():
    c = _tiny_corpus({("doc-a", "x"): None})
    for i in IDS_IN_PATHS:
        c.put_document(
            {"id": i, "text": i, "metadata": {}}, [corpus.node_json("c", i, {}, i, {}, *[None] * 4)], None
        )
    assert len(IDS_IN_PATHS[-2]) > 300
    with cloud_emulator.EmulatorServer(c, API_KEY) as srv:
        for i in IDS_IN_PATHS:
            enc = quote(i, safe="")
            base = f"{srv.url}/api/v1/pipelines/tiny-pipeline/documents/{enc}"
            r = httpx.get(base, headers={"Authorization": f"Bearer {API_KEY}"})
            assert r.status_code == 200 and r.json()["id"] == i, i
            r = httpx.get(base + "/chunks", headers={"Authorization": f"Bearer {API_KEY}"})
            assert r.status_code == 200 and r.json()[0]["text"] == i, i
        # not decoded twice: %2541 is the id "%41", and %41 the id "A" only when the client sent it raw
        r = httpx.get(
            f"{srv.url}/api/v1/pipelines/tiny-pipeline/documents/%41",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert r.json()["id"] == "A"
        r = httpx.get(
            f"{srv.url}/api/v1/pipelines/tiny-pipeline/documents/%FF%FE",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert r.status_code == 404  # escapes that are not UTF-8: not found, not a server error
