"""The hostile corpus, served by the real local server: every document and chunk comes back exactly.

Listing and fetching go through plain httpx (``.json()``, as ``runbook.extract`` reads the raw answers) and
through the official ``llama_cloud`` client. Served fields must equal the corpus's exactly: same types and
key order, NaN as NaN, -0.0 as -0.0, integers beyond 64 bits exact, NUL, lone surrogates and NFD text as
they are, vectors bit for bit.
"""

from __future__ import annotations

import math
import struct
import unicodedata
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from llama_cloud import LlamaCloud

from runbook.rehearsal import cloud_emulator, corpus
from runbook.source import path_id

from .conftest import API_KEY

PID = corpus.HOSTILE_PIPELINE_ID
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# ids that runbook.source.path_id leaves to httpx, which removes dot segments and refuses control characters
CLIENT_MISENCODED = {".", "..", "tab\there\nnewline"}


def diff(a, b, at="$") -> str | None:
    """Where two JSON values differ (None when equal): types exact (1 != 1.0 != True), NaN equals NaN,
    -0.0 differs from 0.0, dict key order counts."""
    if type(a) is not type(b):
        return f"{at}: {type(a).__name__} {a!r:.80} != {type(b).__name__} {b!r:.80}"
    if isinstance(a, float):
        if math.isnan(a) and math.isnan(b):
            return None
        return None if struct.pack("<d", a) == struct.pack("<d", b) else f"{at}: {a!r} != {b!r}"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{at}: keys {list(a)!r:.200} != {list(b)!r:.200}"
        for k in a:
            d = diff(a[k], b[k], f"{at}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{at}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = diff(x, y, f"{at}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{at}: {a!r:.80} != {b!r:.80}"


def url_id(doc_id: str) -> str:
    """An id as one path segment: every reserved character percent-encoded, dot segments too."""
    return quote(doc_id, safe="") if doc_id.strip(".") else doc_id.replace(".", "%2E")


@pytest.fixture(scope="module")
def hostile():
    return corpus.build_hostile_corpus()


@pytest.fixture(scope="module", params=[False, True], ids=["no-embeddings", "embeddings"])
def served(request, hostile):
    with cloud_emulator.EmulatorServer(hostile, API_KEY, serve_embeddings=request.param) as srv:
        yield srv, request.param


def test_every_case_is_present(hostile):
    docs = hostile.documents
    cases = [d["metadata"]["case"] for d in docs.values()]
    assert set(cases) == set(corpus.HOSTILE_CASES) and 25 <= len(docs) <= 45
    assert all(1 <= len(hostile.chunks[d]) <= 4 for d in docs if docs[d]["metadata"]["case"] != "zero_chunks")
    by_case = {}
    for d in docs.values():
        by_case.setdefault(d["metadata"]["case"], []).append(d)
    assert [len(hostile.chunks[d["id"]]) for d in by_case["zero_chunks"]] == [0]
    long_doc = by_case["id_long"][0]["id"]
    assert len(long_doc) >= 300 and all(len(c["id_"]) >= 300 for c in hostile.chunks[long_doc])
    for needle in ("/", "%", "%2F", "#", "?", " "):
        assert any(needle in d for d in docs), needle
    assert any(d != d.strip() for d in docs)  # leading/trailing space
    nfc, nfd = (d["id"] for d in by_case["id_nfc_nfd"])
    assert nfc != nfd and unicodedata.normalize("NFC", nfd) == nfc
    texts = [c["text"] for cs in hostile.chunks.values() for c in cs]
    assert "" in texts and "  \n\t" in texts and "before\x00after" in texts
    assert any("\ud800" in t for t in texts) and max(len(t) for t in texts) >= 200 * 1024
    a, b = (c["text"] for c in hostile.chunks[by_case["text_nfd_nfc"][0]["id"]])
    assert a != b and unicodedata.normalize("NFC", b) == a
    meta = by_case["meta_long_string"][0]["metadata"]
    assert len(meta["long"]) >= 100 * 1024
    dup = [hostile.chunks[d["id"]][0] for d in by_case["dup_chunk_id"]]
    assert dup[0]["id_"] == dup[1]["id_"] and dup[0]["text"] != dup[1]["text"]


def test_vectors_are_as_each_case_says(hostile):
    def vec(doc_id, k):
        return hostile.vector(doc_id, hostile.chunks[doc_id][k]["id_"])

    assert not vec("vec-zero", 0).any()
    assert np.isnan(vec("vec-nan-element", 0)).sum() == 1
    assert (
        np.isposinf(vec("vec-inf-element", 0)).sum() == 1
        and np.isneginf(vec("vec-inf-element", 1)).sum() == 1
    )
    assert vec("vec-wrong-dim", 0).shape == (383,)
    assert np.linalg.norm(vec("vec-non-unit", 0)) == pytest.approx(7.5, rel=1e-6)
    assert vec("vec-identical", 0).tobytes() == vec("vec-identical", 1).tobytes()
    assert vec("dup-chunk-a", 0).tobytes() != vec("dup-chunk-b", 0).tobytes()
    ordinary = [vec(d, 0) for d in ("meta-korean", "key-empty", "text-long")]
    assert all(v.shape == (384,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6) for v in ordinary)
    assert (
        vec("meta-korean", 0).tobytes()
        == corpus.build_hostile_corpus().vector("meta-korean", "meta-korean-0").tobytes()
    )
    assert {(d, why) for d, _, why in hostile.unsearchable} == {
        ("vec-zero", "zero vector"),
        ("vec-nan-element", "non-finite element(s)"),
        ("vec-inf-element", "non-finite element(s)"),
        ("vec-wrong-dim", "dimension 383, not 384"),
    }


def _list_all(url: str, limit: int = 7) -> list[dict]:
    out, skip = [], 0
    while True:
        page = httpx.get(
            f"{url}/api/v1/pipelines/{PID}/documents/paginated",
            params={"skip": skip, "limit": limit},
            headers=AUTH,
        )
        assert page.status_code == 200
        body = page.json()
        out += body["documents"]
        skip = body["offset"] + len(body["documents"])
        if not body["documents"] or skip >= body["total_count"]:
            return out


def test_every_document_and_chunk_is_served_exactly(served, hostile):
    srv, with_embeddings = served
    docs = _list_all(srv.url)
    assert [d["id"] for d in docs] == list(hostile.documents)
    for d in docs:
        assert diff(d, hostile.documents[d["id"]]) is None, diff(d, hostile.documents[d["id"]])
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as http:
        for doc_id, want_doc in hostile.documents.items():
            r = http.get(f"/api/v1/pipelines/{PID}/documents/{url_id(doc_id)}")
            assert r.status_code == 200, (doc_id, r.text[:200])
            assert diff(r.json(), want_doc) is None, (doc_id, diff(r.json(), want_doc))
            r = http.get(f"/api/v1/pipelines/{PID}/documents/{url_id(doc_id)}/chunks")
            assert r.status_code == 200, (doc_id, r.text[:200])
            got, want = r.json(), hostile.get_chunks(doc_id, with_embeddings)
            assert diff(got, want) is None, (doc_id, diff(got, want))
            for node in got:
                v = hostile.vector(doc_id, node["id_"])
                if with_embeddings:
                    served_v = np.asarray(node["embedding"], dtype=np.float32)
                    assert served_v.shape == v.shape and served_v.tobytes() == v.tobytes(), (
                        doc_id,
                        node["id_"],
                    )
                else:
                    assert node["embedding"] is None


def test_raw_json_tokens(served):
    srv, _ = served
    get = lambda d, tail="": httpx.get(f"{srv.url}/api/v1/pipelines/{PID}/documents/{d}{tail}", headers=AUTH)  # noqa: E731
    body = get("meta-nonfinite").content
    assert b'"nan": NaN' in body and b'"inf": Infinity' in body and b'"ninf": -Infinity' in body
    body = get("meta-big-ints").content
    assert b'"pow70": 1180591620717411303424' in body and b'"int64_min": -9223372036854775808' in body
    assert b'"text": "before\\u0000after"' in get("text-nul", "/chunks").content
    assert b"before \\ud800 after" in get("text-lone-surrogate", "/chunks").content  # an escape: valid UTF-8
    nfd = unicodedata.normalize("NFD", "한글 건강검진 결과").encode()
    assert nfd in get("text-nfd-nfc", "/chunks").content  # combining jamo sent as they are


def test_official_client_reads_everything(served, hostile):
    srv, with_embeddings = served
    c = LlamaCloud(api_key=API_KEY, base_url=srv.url, max_retries=0)
    listed = list(c.pipelines.documents.list(pipeline_id=PID, limit=5))
    assert [d.id for d in listed] == list(hostile.documents)
    for d in listed:
        want = hostile.documents[d.id]
        assert diff(d.text, want["text"]) is None and diff(d.metadata, want["metadata"]) is None, d.id
        if d.id in CLIENT_MISENCODED:
            continue  # see test_client_path_encoding_of_dot_and_control_ids
        assert c.pipelines.documents.get(document_id=path_id(d.id), pipeline_id=PID).id == d.id
        nodes = c.pipelines.documents.get_chunks(document_id=path_id(d.id), pipeline_id=PID)
        want_nodes = hostile.get_chunks(d.id, with_embeddings)
        assert [n.id for n in nodes] == [n["id_"] for n in want_nodes]
        for n, w in zip(nodes, want_nodes, strict=True):
            assert diff(n.text, w["text"]) is None and diff(n.extra_info, w["extra_info"]) is None, d.id
            assert diff(n.embedding, w["embedding"]) is None, d.id


def test_client_path_encoding_of_dot_and_control_ids(served):
    srv, _ = served
    c = LlamaCloud(api_key=API_KEY, base_url=srv.url, max_retries=0)
    for doc_id in sorted(CLIENT_MISENCODED):
        assert c.pipelines.documents.get(document_id=path_id(doc_id), pipeline_id=PID).id == doc_id


def test_retrieve_searches_only_searchable_vectors(served, hostile):
    srv, _ = served
    r = httpx.post(
        f"{srv.url}/api/v1/pipelines/{PID}/retrieve",
        json={"query": "건강검진 결과", "dense_similarity_top_k": 100, "dense_similarity_cutoff": -2},
        headers=AUTH,
    )
    assert r.status_code == 200
    nodes = r.json()["retrieval_nodes"]
    skipped = {(d, cid) for d, cid, _ in hostile.unsearchable}
    got = {(n["node"]["relationships"]["1"]["node_id"], n["node"]["id_"]) for n in nodes}
    assert len(nodes) == hostile.total_chunks() - len(skipped) and not got & skipped
    assert all(math.isfinite(n["score"]) for n in nodes) and "unsearchable_chunks" in r.json()["metadata"]


def test_cli_serves_the_hostile_corpus(monkeypatch, hostile):
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", API_KEY)
    h = cloud_emulator.start_subprocess("hostile", "LLAMA_CLOUD_API_KEY", serve_embeddings=True)
    try:
        assert [d["id"] for d in _list_all(h.url, limit=100)] == list(hostile.documents)
        r = httpx.get(f"{h.url}/api/v1/pipelines/{PID}/documents/vec-nan-element/chunks", headers=AUTH)
        v = np.asarray(r.json()[0]["embedding"], dtype=np.float32)
        assert v.tobytes() == hostile.vector("vec-nan-element", "vec-nan-0").tobytes()
    finally:
        h.stop()


def test_the_exporter_reads_every_chunk_exactly_and_skips_the_nan_walk_only_where_none_can_be(
    served, hostile, monkeypatch
):
    """``extract.fetch_chunks`` reads a response with orjson where that is exact and says so (``finite``),
    so the export rows' JSON is written without walking it for NaN: the exporter's largest CPU cost per
    chunk. A document holding NaN, Infinity, a lone surrogate or an integer beyond 64 bits is read by
    Python's json instead, and its rows are the same either way."""
    from runbook import export_format, extract, records
    from runbook.source import Source

    srv, with_embeddings = served
    src = Source(LlamaCloud(api_key=API_KEY, base_url=srv.url, max_retries=0), srv.url, "")
    walked = []
    real_walk = records._has_nonfinite
    monkeypatch.setattr(records, "_has_nonfinite", lambda o: walked.append(1) or real_walk(o))
    fast = slow = 0
    for doc_id in hostile.documents:
        if doc_id in CLIENT_MISENCODED:
            continue
        got, want = extract.fetch_chunks(src, PID, doc_id), hostile.get_chunks(doc_id, with_embeddings)
        assert diff(list(got), want) is None, (doc_id, diff(list(got), want))
        if any(real_walk(n) for n in want):
            assert not got.finite, doc_id  # orjson refuses NaN and Infinity: Python's json read it
        walked.clear()
        rows = [export_format.node_to_row(doc_id, k, n, got.finite) for k, n in enumerate(got)]
        if got.finite:
            fast += 1
            assert not walked, doc_id  # what orjson read is not walked for NaN
        else:
            slow += 1
        assert rows == [export_format.node_to_row(doc_id, k, n) for k, n in enumerate(got)], doc_id
    assert fast > 3 * slow > 0, (fast, slow)  # most documents take the fast path; the odd ones the exact one
