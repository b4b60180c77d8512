"""Contract tests: the LlamaCloud API shapes and behaviours the runbook relies on, checked against the local
LlamaCloud-compatible server with raw HTTP (httpx), as ``../shared/reference/llamacloud-api.md`` documents
them ("ref §..." below), and validated with the official client's own pydantic response types
(``llama_cloud.types``, the types its methods return). A difference between the local server and the real
service then shows here instead of as a wrong A/B figure.

Endpoints the runbook calls (``lib/source.py``, ``lib/extract.py`` for phases 00/01/07 and verify,
``lib/compare.py`` for phase 05, ``LlamaCloudIndex``/``LlamaCloudRetriever`` in ``lib/rag_switch.py``):
``GET /projects``, ``GET /projects/{id}``, ``GET /pipelines``, ``GET /pipelines/{id}``,
``GET /pipelines/{id}/documents/paginated``, ``GET /pipelines/{id}/documents/{doc}/chunks`` and
``POST /pipelines/{id}/retrieve``.

What the reference leaves unknown -- whether ``retrieve`` names chunks by the ids of the chunk listing -- is
checked at run time by phase 05 (``compare.retrieved_ids_check``); its tests are at the end.
"""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from llama_cloud import LlamaCloud
from llama_cloud.types import (
    Pipeline,
    PipelineListResponse,
    PipelineRetrieveResponse,
    Project,
    ProjectListResponse,
)
from llama_cloud.types.pipeline_retrieve_response import RetrievalNode
from llama_cloud.types.pipelines import CloudDocument, DocumentGetChunksResponse, TextNode
from pydantic import TypeAdapter

from runbook import compare, extract, source
from runbook.rehearsal import cloud_emulator, corpus
from runbook.source import path_id

KEY = "contract-test-key-0123456789"
PID = corpus.DEMO_PIPELINE_ID
PROJECT_ID = corpus.DEMO_PROJECT["id"]
ORG_ID = corpus.DEMO_PROJECT["organization_id"]
AUTH = {"Authorization": f"Bearer {KEY}"}  # ref §Client: header ``Authorization: Bearer <key>``
# ref §Schemas, Pipeline.embedding_config: the types the real service uses
EMBEDDING_TYPES = {
    "MANAGED_OPENAI_EMBEDDING",
    "OPENAI_EMBEDDING",
    "AZURE_EMBEDDING",
    "COHERE_EMBEDDING",
    "GEMINI_EMBEDDING",
    "HUGGINGFACE_API_EMBEDDING",
    "VERTEXAI_EMBEDDING",
    "BEDROCK_EMBEDDING",
}


@pytest.fixture(scope="module")
def srv(demo_corpus_master):
    """One server for the read-only contract tests (nothing here changes the corpus or sets faults)."""
    with cloud_emulator.EmulatorServer(copy.deepcopy(demo_corpus_master), KEY) as s:
        yield s


def api(s) -> str:
    return f"{s.url}/api/v1"


def get(s, path: str, **params) -> httpx.Response:
    return httpx.get(api(s) + path, params=params, headers=AUTH, timeout=60)


def retrieve(s, body: dict, pid: str = PID, **params) -> httpx.Response:
    return httpx.post(
        f"{api(s)}/pipelines/{pid}/retrieve", params=params, json=body, headers=AUTH, timeout=120
    )


def strict(type_, r: httpx.Response):
    """The body read by the official client's pydantic type in strict JSON mode (no coercion: a number sent
    as a string, a list where an object belongs... fail)."""
    assert r.status_code == 200, r.text
    return TypeAdapter(type_).validate_json(r.content, strict=True)


def undeclared(model, obj: dict) -> set[str]:
    """Keys of ``obj`` that the client's model does not declare (the client would keep them as extras)."""
    return set(obj) - {f.alias or name for name, f in model.model_fields.items()}


def walk(s, limit: int) -> tuple[list[dict], list[dict]]:
    """Every document, paging as the official pager does (ref §Endpoints, note below the table: next
    ``skip = offset + len(documents)`` while that is below ``total_count``); also the page envelopes."""
    docs, pages, skip = [], [], 0
    while True:
        r = get(s, f"/pipelines/{PID}/documents/paginated", skip=skip, limit=limit)
        assert r.status_code == 200, r.text
        page = r.json()
        pages.append(page)
        docs += page["documents"]
        skip = page["offset"] + len(page["documents"])
        if not page["documents"] or skip >= page["total_count"]:
            return docs, pages


# ---------------------------------------------------------------- auth: every endpoint the runbook uses
ENDPOINTS = [
    ("GET", "/projects"),
    ("GET", f"/projects/{PROJECT_ID}"),
    ("GET", "/pipelines"),
    ("GET", f"/pipelines/{PID}"),
    ("GET", f"/pipelines/{PID}/documents/paginated"),
    ("GET", f"/pipelines/{PID}/documents/x/chunks"),
    ("POST", f"/pipelines/{PID}/retrieve"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}])
def test_every_endpoint_refuses_a_missing_or_wrong_key_with_401(srv, method, path, headers):
    r = httpx.request(
        method, api(srv) + path, headers=headers, json={"query": "q"} if method == "POST" else None
    )
    # ref §Client: 401 -> AuthenticationError (source.find_pipeline says "rejected the key");
    # ref §Schemas, Errors: 401 ``{"detail": "Invalid authentication token"}``
    assert r.status_code == 401
    assert r.json() == {"detail": "Invalid authentication token"}


# ---------------------------------------------------------------- projects
def test_projects_list_and_get(srv):
    # ref §Endpoints: GET /projects (organization_id, project_name) -> Project[]
    projects = strict(ProjectListResponse, get(srv, "/projects"))
    assert [p.name for p in projects] == ["Default"]
    raw = get(srv, "/projects").json()
    # ref §Schemas, Project: {id, name, organization_id, created_at, updated_at, ad_hoc_eval_dataset_id, is_default}
    assert {"id", "name", "organization_id"} <= set(raw[0]) and not undeclared(Project, raw[0])
    # source.find_pipeline passes organization_id and matches the name exactly (ref §Client, index classes)
    assert [p.id for p in strict(ProjectListResponse, get(srv, "/projects", organization_id=ORG_ID))] == [
        PROJECT_ID
    ]
    assert strict(ProjectListResponse, get(srv, "/projects", project_name="no such project")) == []
    # ref §Endpoints: GET /projects/{project_id} -> Project (find_pipeline by index id)
    assert strict(Project, get(srv, f"/projects/{PROJECT_ID}")).id == PROJECT_ID


def test_unknown_project_is_404(srv):
    # ref §Client: 404 -> NotFoundError (find_pipeline: "not found"); ref §Schemas, Errors: FastAPI-shaped
    r = get(srv, "/projects/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and isinstance(r.json()["detail"], str)


# ---------------------------------------------------------------- pipelines
def test_pipelines_list_is_a_plain_array_filtered_by_project_and_name(srv):
    # ref §Endpoints: GET /pipelines (project_id, pipeline_name, ...) -> Pipeline[] (plain array)
    r = get(srv, "/pipelines", project_id=PROJECT_ID, pipeline_name="Dr.Welno")
    assert isinstance(r.json(), list)
    pipelines = strict(PipelineListResponse, r)
    assert [(p.id, p.name, p.project_id) for p in pipelines] == [(PID, "Dr.Welno", PROJECT_ID)]
    assert strict(PipelineListResponse, get(srv, "/pipelines", pipeline_name="no such index")) == []
    assert strict(PipelineListResponse, get(srv, "/pipelines", project_id="another-project")) == []
    # project_name filters too (find_pipeline asks by it while it looks the project up)
    named = get(srv, "/pipelines", project_name="Default", pipeline_name="Dr.Welno")
    assert [p.id for p in strict(PipelineListResponse, named)] == [PID]
    assert strict(PipelineListResponse, get(srv, "/pipelines", project_name="another project")) == []


def test_pipeline_get_shape(srv):
    # ref §Endpoints: GET /pipelines/{id} -> Pipeline (find_pipeline; compare.cloud_preset)
    r = get(srv, f"/pipelines/{PID}")
    p = strict(Pipeline, r)
    raw = r.json()
    assert not undeclared(Pipeline, raw)
    # ref §Schemas, Pipeline: required id, name, project_id, embedding_config; embedding_config keyed on type
    assert {"id", "name", "project_id", "embedding_config"} <= set(raw)
    assert raw["embedding_config"]["type"] in EMBEDDING_TYPES
    assert raw["embedding_config"]["component"]["model_name"]  # phase 01 re-embeds with this model
    assert p.pipeline_type == "MANAGED"  # ref §Schemas, Pipeline: pipeline_type ("MANAGED")
    # ref §Schemas, Pipeline: preset_retrieval_parameters holds RetrievalParams fields (cloud_preset reads alpha
    # and enable_reranking to decide on the dense-only ablation arm)
    preset = raw["preset_retrieval_parameters"]
    assert {"dense_similarity_top_k", "alpha", "enable_reranking"} <= set(preset)
    # ref §Schemas, transform_config: auto {"mode": "auto", "chunk_size", "chunk_overlap"} (phase 07's splitter)
    assert raw["transform_config"]["mode"] == "auto" and p.transform_config.chunk_size


def test_unknown_pipeline_is_404_on_every_pipeline_path(srv):
    # ref §Client: 404 -> NotFoundError; find_pipeline turns it into "index id ... not found"
    for method, path in ENDPOINTS[3:]:
        path = path.replace(PID, "00000000-0000-0000-0000-00000000dead")
        r = httpx.request(
            method, api(srv) + path, headers=AUTH, json={"query": "q"} if method == "POST" else None
        )
        assert r.status_code == 404, (path, r.status_code)
        assert isinstance(r.json()["detail"], str)  # ref §Schemas, Errors: FastAPI-shaped


# ---------------------------------------------------------------- the document listing
def test_paginated_listing_envelope(srv):
    # ref §Endpoints: /documents/paginated -> {documents, limit, offset, total_count} (all four required)
    r = get(srv, f"/pipelines/{PID}/documents/paginated", skip=5, limit=7)
    page = r.json()
    assert set(page) == {"documents", "limit", "offset", "total_count"}
    docs = TypeAdapter(list[CloudDocument]).validate_json(json.dumps(page["documents"]), strict=True)
    # ref §Schemas, CloudDocument: {id, text, metadata, excluded_*_metadata_keys, page_positions, status_metadata}
    assert all(not undeclared(CloudDocument, d) for d in page["documents"])
    assert len(docs) == 7 and page["limit"] == 7 and page["offset"] == 5
    assert page["total_count"] == srv.corpus.total_documents() == 50
    # ref §Endpoints: skip (0), limit (10) by default
    first = get(srv, f"/pipelines/{PID}/documents/paginated").json()
    assert first["offset"] == 0 and len(first["documents"]) == first["limit"] == 10


@pytest.mark.parametrize("limit", [1, 7, 50, 100])
def test_paging_covers_every_document_once_in_a_stable_order(srv, limit):
    # ref §Endpoints, pager note: skip = offset + len(documents) while below total_count. Phase 01 requests
    # pages concurrently at computed skips (extract.list_pages), so the order must not depend on the page size
    docs, pages = walk(srv, limit)
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)) == pages[0]["total_count"]
    assert all(p["total_count"] == pages[0]["total_count"] for p in pages)
    reference, _ = walk(srv, 13)
    assert ids == [d["id"] for d in reference]
    # the same page asked twice is the same page
    again = get(srv, f"/pipelines/{PID}/documents/paginated", skip=limit, limit=limit).json()
    assert [d["id"] for d in again["documents"]] == ids[limit : 2 * limit]


def test_official_pager_agrees_with_raw_paging(srv):
    # ref §Endpoints, pager note: the client's pager itself (source.document_count reads total_count with limit 1)
    c = LlamaCloud(api_key=KEY, base_url=srv.url, max_retries=0)
    page = c.pipelines.documents.list(pipeline_id=PID, limit=1)
    assert page.total_count == 50 and page.offset == 0 and len(page.documents) == 1
    assert [d.id for d in c.pipelines.documents.list(pipeline_id=PID, limit=9)] == [
        d["id"] for d in walk(srv, 9)[0]
    ]


def test_paging_past_the_end_is_an_empty_page(srv):
    # not stated in the reference; extract.list_pages's prefetch may ask for a page beyond a shrunken total
    # and relies on an empty page with the total (not an error)
    page = get(srv, f"/pipelines/{PID}/documents/paginated", skip=50, limit=10).json()
    assert page["documents"] == [] and page["total_count"] == 50


def test_bad_paging_parameter_is_a_fastapi_422(srv):
    # ref §Schemas, Errors: 422 {"detail": [{"loc": [...], "msg": ..., "type": ...}]}
    r = get(srv, f"/pipelines/{PID}/documents/paginated", skip="x")
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["query", "skip"] and {"msg", "type"} <= set(err)


# ---------------------------------------------------------------- chunks
def test_chunks_are_the_whole_textnode_list(srv):
    docs, _ = walk(srv, 50)
    total = 0
    for d in docs:
        # ref §Client: path parameters percent-encoded (``/`` -> ``%2F``); source.path_id encodes ids whole
        r = get(srv, f"/pipelines/{PID}/documents/{path_id(d['id'])}/chunks")
        nodes = strict(DocumentGetChunksResponse, r)
        raw = r.json()
        total += len(raw)
        for n, node in zip(raw, nodes, strict=True):
            # ref §Schemas, TextNode: id_, extra_info (no metadata key), relationships by number, class_name
            assert not undeclared(TextNode, n)
            assert node.id and "metadata" not in n and isinstance(n["extra_info"], dict)
            assert n["class_name"] == "TextNode" and n["metadata_seperator"] == "\n"
            # relationships "1" is the source document: phase 05's hit rate reads the document id there
            assert n["relationships"]["1"]["node_id"] == d["id"]
            # ref §What is not known: every real /chunks output has embedding null (phase 01 re-embeds)
            assert n["embedding"] is None
        # ref §Schemas, TextNode relationships: "2" previous, "3" next, in the list's order
        for a, b in zip(raw, raw[1:], strict=False):
            assert (
                a["relationships"]["3"]["node_id"] == b["id_"]
                and b["relationships"]["2"]["node_id"] == a["id_"]
            )
    # ref §Endpoints: /chunks is the whole list, no paging
    assert total == srv.corpus.total_chunks()


def test_ids_with_a_slash_are_decoded_once(srv):
    doc = next(d for d in walk(srv, 50)[0] if "/" in d["id"])
    # ref §Client: the client percent-encodes path parameters (``/`` -> ``%2F``)
    r = get(srv, f"/pipelines/{PID}/documents/{path_id(doc['id'])}/chunks")
    assert r.status_code == 200 and r.json()[0]["relationships"]["1"]["node_id"] == doc["id"]


def test_chunks_of_an_unknown_document_are_404(srv):
    # ref §Client: 404 -> NotFoundError; extract.fetch_chunks reads it as "deleted since it was listed"
    r = get(srv, f"/pipelines/{PID}/documents/{path_id('no/such document')}/chunks")
    assert r.status_code == 404 and isinstance(r.json()["detail"], str)


# ---------------------------------------------------------------- retrieve
QUESTION = corpus.demo_questions()[0]["question"]


@pytest.mark.parametrize(
    "body",
    [
        # compare.run_cloud, the cloud arm as configured
        {"query": QUESTION, "dense_similarity_top_k": 5},
        # compare.run_cloud(dense_only=True): the ablation arm (raw client: falsy values do reach the server)
        {"query": QUESTION, "dense_similarity_top_k": 5, "alpha": 1.0, "enable_reranking": False},
        # LlamaCloudRetriever (rag_switch): retrieval_mode "chunks", top k
        {"query": QUESTION, "dense_similarity_top_k": 5, "retrieval_mode": "chunks"},
    ],
)
def test_retrieve_response_shape(srv, body):
    # ref §Endpoints: POST /pipelines/{id}/retrieve, query: project_id, organization_id; body RetrievalParams
    r = retrieve(srv, body, project_id=PROJECT_ID, organization_id=ORG_ID)
    res = strict(PipelineRetrieveResponse, r)
    raw = r.json()
    # ref §Schemas, RetrieveResults: {pipeline_id, retrieval_nodes: [{node, score, class_name}], retrieval_latency,
    # metadata, inferred_search_filters, class_name: "RetrieveResults"}
    assert not undeclared(PipelineRetrieveResponse, raw)
    assert raw["class_name"] == "RetrieveResults" and res.pipeline_id == PID
    assert isinstance(raw["retrieval_latency"], dict) and isinstance(raw["metadata"], dict)
    # dense_similarity_top_k bounds the result (phase 05 asks for top_k and compares the first k)
    assert 0 < len(res.retrieval_nodes) <= 5
    for n in raw["retrieval_nodes"]:
        assert not undeclared(RetrievalNode, n) and not undeclared(TextNode, n["node"])
        assert n["class_name"] == "TextNodeWithScore"
        # what compare.run_cloud reads: node.id_, node.relationships["1"].node_id, score (a number)
        assert isinstance(n["node"]["id_"], str) and n["node"]["relationships"]["1"]["node_id"]
        assert isinstance(n["score"], float) and "metadata" not in n["node"]
    # not stated in the reference: phase 05 takes list position as rank (RBO, Kendall tau, MRR)
    scores = [n.score for n in res.retrieval_nodes]
    assert scores == sorted(scores, reverse=True)


def test_retrieve_needs_only_the_query(srv):
    # ref §Schemas, RetrievalParams: only query required (the preset fills the rest)
    res = strict(PipelineRetrieveResponse, retrieve(srv, {"query": QUESTION}))
    assert res.retrieval_nodes
    # ref §Schemas, Errors: a missing query is a FastAPI 422 naming body.query
    r = retrieve(srv, {"dense_similarity_top_k": 3})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "query"]


def test_retrieved_nodes_name_listed_documents_and_chunks(srv):
    """The local server's behaviour, which the reference leaves unknown for the real service: retrieve names
    each chunk by its /chunks id and its document by the listing's id. Phase 05 checks this at run time
    against the real source (``compare.retrieved_ids_check``, tested below)."""
    listed = {}
    for d in walk(srv, 50)[0]:
        for n in get(srv, f"/pipelines/{PID}/documents/{path_id(d['id'])}/chunks").json():
            listed[n["id_"]] = d["id"]
    for q in corpus.demo_questions()[:5]:
        for n in retrieve(srv, {"query": q["question"], "dense_similarity_top_k": 5}).json()[
            "retrieval_nodes"
        ]:
            assert listed.get(n["node"]["id_"]) == n["node"]["relationships"]["1"]["node_id"]


# ---------------------------------------------------------------- phase 05's run-time check of the id assumption
def open_src(url: str) -> source.Source:
    with pytest.MonkeyPatch.context() as mp:  # the key is read once, when the client is made
        mp.setenv("CONTRACT_TEST_KEY", KEY)
        return source.open_source(url, "CONTRACT_TEST_KEY")


@pytest.fixture(scope="module")
def export_dir(srv, tmp_path_factory):
    """Phase 01's export of the module's server (ids only matter here: no re-embedding)."""
    res = extract.export_index(
        open_src(srv.url), tmp_path_factory.mktemp("contract_exports"), index_name="Dr.Welno", progress=False
    )
    return res.path


def cloud_arm(url: str, questions: list[dict]) -> compare.ArmRun:
    """Phase 05's cloud arm, as it collects results."""
    return compare.run_cloud(open_src(url), PID, questions, top_k=5)


QUESTIONS = corpus.demo_questions()[:4]


def test_retrieved_ids_check_passes_when_retrieve_names_chunks_as_listed(srv, export_dir):
    res = compare.retrieved_ids_check([cloud_arm(srv.url, QUESTIONS)], export_dir)
    assert res["check"]["ok"] is True and res["unknown"] == 0
    assert res["found"] == res["retrieved ids"] > 0
    assert "are in the export" in res["check"]["detail"]


def test_retrieved_ids_check_stops_phase_05_when_retrieve_names_chunks_otherwise(
    demo_corpus_master, export_dir
):
    # a source whose retrieve returns other ids than its chunk listing (the emulator's fault setting)
    with cloud_emulator.EmulatorServer(copy.deepcopy(demo_corpus_master), KEY) as other:
        other.set_faults(retrieve_ids="other")
        run = cloud_arm(other.url, QUESTIONS)
    res = compare.retrieved_ids_check([run], export_dir)
    row = res["check"]
    assert row["ok"] is False and res["found"] == 0 and res["unknown"] == res["retrieved ids"] > 0
    # the message names a few unknown ids, says what cannot be measured and what to do
    assert (
        all(repr(i) in row["detail"] for i in res["unknown examples"]) and len(res["unknown examples"]) == 5
    )
    assert run.rows[0]["ids"][0] in res["unknown examples"]
    assert "other ids than its chunk listing" in row["detail"]
    assert "cannot be measured against this source" in row["detail"]
    assert "gate_min_recall: 0" in row["detail"] and "phase 07" in row["detail"]
    # phase 05 stops on it: display.checks raises with the detail
    from runbook import display

    with pytest.raises(display.CheckFailed, match="cannot be measured"):
        display.checks([row], show=False)
    # with the recall gate off the row passes but still says the id-based figures mean nothing
    off = compare.retrieved_ids_check([run], export_dir, gated=False)["check"]
    assert off["ok"] is True and "not meaningful" in off["detail"]


def test_retrieved_ids_check_knows_refused_and_later_chunks(export_dir, tmp_path):
    import shutil

    import chromadb

    from runbook import atomic, export_format

    exp = export_format.open_export(export_dir)
    some = [r["chunk_id"] for r in exp.iter_chunks(columns=["chunk_id"])][:3]
    run = compare.ArmRun("cloud", [{"id": "q1", "ids": [*some, "refused-at-export", "added-by-07", "new"]}])
    # a chunk phase 01 listed and refused is known to the export (the manifest's ``refused``)
    copy_dir = tmp_path / "export"
    shutil.copytree(export_dir, copy_dir)
    m = atomic.read_json(copy_dir / "manifest.json")
    m["refused"] = [{"document_id": "d", "chunk_id": "refused-at-export", "problem": "p", "what to do": "w"}]
    (copy_dir / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    # a chunk phase 07 added since is known to the local collection
    # a persistent client under tmp_path: nothing outlives the test (the ephemeral one is process-wide)
    col = chromadb.PersistentClient(path=str(tmp_path / "chroma")).create_collection("contract_ids")
    col.add(ids=["added-by-07"], embeddings=[[0.1, 0.2]])
    res = compare.retrieved_ids_check([run], copy_dir, col)
    assert (res["found"], res["unknown"], res["unknown examples"]) == (5, 1, ["new"])
    assert res["check"]["ok"] is False and "the index changed since the export" in res["check"]["detail"]
