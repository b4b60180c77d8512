"""Property: any record the source can serve comes back equal after the documented undo, or is named.

Hypothesis generates small corpora of odd ids, metadata, texts and vectors; the local LlamaCloud-compatible
server serves them; the runbook exports, re-embeds unusable vectors, verifies and loads them; each record is
read back with plain chromadb and through LlamaIndex's ``ChromaVectorStore``. Every source chunk is either
equal to its source (text, metadata after ``records.from_flat``, node JSON, vector) or listed as refused or
skipped with its document and chunk named. Examples are derandomised: CI sees the same cases every run."""

import copy
import itertools
import math
import unicodedata

import chromadb
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from runbook import export_format, extract, load, records, reembed, source, verify
from runbook.rehearsal import cloud_emulator, corpus

from .test_records import ODD_KEYS

API_KEY = "property-test-key"
DIM = corpus.HOSTILE_DIM
SEEN: set[str] = set()  # classes the examples covered (checked by the last test of this module)
_counter = itertools.count()
_ahead = itertools.cycle([True, False])  # the explicit example (every class at once) goes first


def _utf8(s) -> bool:
    try:
        s.encode("utf-8")
        return True
    except (UnicodeEncodeError, AttributeError):
        return False


# ----------------------------------------------------------------------------- strategies
KEYS = st.one_of(st.sampled_from(ODD_KEYS), st.text(max_size=8))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**63 - 1, -(2**63), 2**63, 2**70, math.nan, math.inf, -math.inf, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.text(max_size=8).map(lambda s: "json:" + s),
    st.sampled_from(["json:", 'json:{"a":1}', "a\x00b", "\ud800", "x" * 400, "한국어"]),
)
VALUES = st.recursive(
    SCALARS, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(KEYS, ch, max_size=3), max_leaves=6
)
METADATA = st.dictionaries(KEYS, VALUES, max_size=5)
TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "  \n\t",
            "before\x00after",
            "lone \ud800 surrogate",
            unicodedata.normalize("NFD", "당뇨병은"),
            "당뇨병은 HbA1c 6.5% 이상",
            "y" * 400,
        ]
    ),
)
CHUNK_IDS = st.one_of(
    st.sampled_from(
        ["c1", "c2", "a/b", "%2F", "#x", "sp ace", "q?x", "z" * 300, "\ud800id", "", "한국어-청크"]
    ),
    st.text(min_size=1, max_size=12),
)
DOC_IDS = st.one_of(
    st.sampled_from(["d/1", "%41", "..", ".", "tab\there", "문서", " lead", "w" * 300]),
    st.text(min_size=1, max_size=12).filter(lambda s: s != "paginated"),
)
VECTORS = st.sampled_from(["unit", "unit", "unit", "zero", "nan", "inf", "short", "big", "same"])


@st.composite
def corpora(draw):
    docs = draw(st.lists(DOC_IDS, min_size=1, max_size=4, unique=True))
    out = []
    for d in docs:
        chunks = draw(
            st.lists(st.tuples(CHUNK_IDS, TEXTS, METADATA, VECTORS, st.integers(0, 10**6)), max_size=3)
        )
        out.append((d, draw(TEXTS), draw(METADATA), chunks))
    return out


def _vector(kind: str, seed: int) -> np.ndarray | None:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    v /= np.linalg.norm(v)
    if kind == "zero":
        return np.zeros(DIM, np.float32)
    if kind == "nan":
        v[3] = np.nan
    elif kind == "inf":
        v[5] = np.inf
    elif kind == "short":
        return v[: DIM - 1]
    elif kind == "big":
        return v * 7.5
    elif kind == "same":
        return _vector("unit", 7)
    return v


def _build(spec) -> corpus.StaticCorpus:
    base = corpus.build_hostile_corpus()
    c = corpus.StaticCorpus(copy.deepcopy(base.project), copy.deepcopy(base.pipeline), base.query_spec)
    for doc_id, doc_text, doc_meta, chunks in spec:
        doc = {
            "id": doc_id,
            "text": doc_text,
            "metadata": doc_meta,
            "excluded_embed_metadata_keys": [],
            "excluded_llm_metadata_keys": [],
            "page_positions": None,
            "status_metadata": None,
        }
        ids = [x[0] for x in chunks]
        nodes = [
            corpus.node_json(
                cid,
                text,
                meta,
                doc_id,
                {},
                ids[k - 1] if k else None,
                ids[k + 1] if k + 1 < len(ids) else None,
                None,
                None,
            )
            for k, (cid, text, meta, _, _) in enumerate(chunks)
        ]
        c.put_document(doc, nodes, [_vector(kind, seed) for _, _, _, kind, seed in chunks])
    return c


# ----------------------------------------------------------------------------- the property
@pytest.fixture(scope="module")
def server():
    with cloud_emulator.EmulatorServer(corpus.build_hostile_corpus(), API_KEY, serve_embeddings=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def chroma():
    return chromadb.EphemeralClient()


def _classes(doc_id, cid, text, meta, kind) -> set[str]:
    out = {f"vector {kind}"}
    if not _utf8(text):
        out.add("text lone surrogate")
    elif not text.strip():
        out.add("empty text")
    if "\x00" in text:
        out.add("text NUL")
    if not cid:
        out.add("empty chunk id")
    for k, v in meta.items():
        if records.key_kind(k):
            out.add("key: " + records.key_kind(k))
        if records.value_kind(v):
            out.add("value: " + records.value_kind(v).split(" ")[0])
    return out


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking in CI: a failure prints its example as drawn
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(spec=corpora())
@example(  # every class at least once, whatever the generated examples happen to draw
    spec=[
        (
            "every/class",
            "",
            {"$where": 1},
            [
                (
                    "c1",
                    "",
                    {"big": 2**70, "nan": math.nan, "null": None, "neg": -0.0, "$where": 1},
                    "zero",
                    1,
                ),
                (
                    "c2",
                    "a\x00b",
                    {"document_id": "x", "meta_$where": 2, "s": "json:{}", "o": {"a": 1}},
                    "nan",
                    2,
                ),
                ("c3", "\ud800", {"e": [], "l": [1, 2], "m": [1, "a"]}, "inf", 3),
                ("c4", "text", {"chroma:x": "v"}, "short", 4),
                ("c1", "text", {}, "big", 5),
                ("", "text", {}, "same", 6),
            ],
        ),
        ("other", "text", {}, [("c1", "other text", {}, "same", 7)]),
    ]
)
@example(  # drawn once: Chroma's JSON parser returned 2.2085929889708077e+177 for this value; the third key
    # has the form of the key where the runbook keeps x's exact value
    spec=[
        (
            "d",
            "",
            {},
            [
                (
                    "c",
                    "t",
                    {"x": 2.208592988970808e177, "ts": 1732961234.1234567, 'meta_json:["x"]': 1.5},
                    "unit",
                    1,
                )
            ],
        )
    ]
)
def test_every_odd_record_round_trips_or_is_named(spec, server, chroma, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", API_KEY)
    work = tmp_path_factory.mktemp("prop")
    server.state.corpus = _build(spec)
    src = source.open_source(server.url, "LLAMA_CLOUD_API_KEY", max_retries=0)
    res = extract.export_index(src, work / "exports", index_id=corpus.HOSTILE_PIPELINE_ID, progress=False)
    reembed.apply(res.path, corpus.HOSTILE_SPEC, work / "cache.sqlite", progress=False)
    report = verify.verify_export(res.path, source=src, sample=20)
    assert report.ok, ([c for c in report.checks if not c["ok"]], report.issues[:5])
    manifest = export_format.open_export(res.path).manifest
    name = f"prop{next(_counter)}"
    col = chroma.create_collection(name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None)
    try:
        # every other example prepares its batches (of 2 records, the first here) in a second process
        ahead = next(_ahead)
        SEEN.add(f"prepared {'in a second process' if ahead else 'here'}")
        result = load.load_export(
            chroma,
            col,
            res.path,
            work / "cp.json",
            progress=False,
            batch_size=2 if ahead else 5000,
            second_process=ahead,
        )
        _check(spec, manifest, result, col, server.state.corpus)
        v = load.verify_load(chroma, col, res.path, None, sample=50, recall_queries=5)
        failed = [c for c in v["checks"] if not c["ok"]]
        if manifest["total_chunks"] and not result.tally.expected_in_collection():
            # every chunk refused or skipped: phase 03 must not call that a passed load
            assert [c["check"] for c in failed] == ["records loaded"], failed
        else:
            assert not failed, (failed, v["issues"][:5])
    finally:
        chroma.delete_collection(name)


def _check(spec, manifest, result, col, served_corpus):
    from llama_index.vector_stores.chroma import ChromaVectorStore

    store = ChromaVectorStore(chroma_collection=col)
    refused_export = {(x["document_id"], x["chunk_id"]) for x in manifest.get("refused", [])}
    refused_docs = set(manifest.get("refused_documents", []))
    replaced = {(x["document_id"], x["chunk_id"]) for x in manifest.get("replaced_vectors", [])}
    listed = {(x["document"], x["chunk"]): x for x in result.tally.listed}
    used: set[str] = set()
    for doc_id, _doc_text, _doc_meta, chunks in spec:
        for cid, text, meta, kind, _seed in chunks:
            SEEN.update(_classes(doc_id, cid, text, meta, kind))
            if doc_id in refused_docs or not _utf8(cid) or not _utf8(text):
                assert (doc_id, cid) in refused_export, (doc_id, cid)  # named with document and chunk
                continue
            found = None
            for chroma_id in (f"{cid}@{doc_id}", cid):
                got = (
                    col.get(ids=[chroma_id], include=["documents", "metadatas", "embeddings"])
                    if chroma_id
                    else None
                )
                if got and got["ids"] and chroma_id not in used:  # a record answers for one chunk only
                    node = records.loads(got["metadatas"][0]["_node_content"])
                    same_chunk = node["relationships"]["1"]["node_id"] == doc_id and node["id_"] == cid
                    if same_chunk and got["documents"][0] == text:  # one id twice in a document: by text
                        found = (chroma_id, got, node)
                        break
            if found is None:
                entry = listed.get((doc_id, cid)) or listed.get((doc_id, cid or None))
                assert entry and ("refused" in entry["treatment"] or "skipped" in entry["treatment"]), (
                    doc_id,
                    cid,
                    result.tally.listed,
                )
                continue
            chroma_id, got, node = found
            used.add(chroma_id)
            assert got["documents"][0] == text
            assert records.same(records.from_flat(got["metadatas"][0]), meta), (meta, got["metadatas"][0])
            assert records.same(node["metadata"], meta)
            emb = np.asarray(got["embeddings"][0], dtype=np.float32)
            if (doc_id, cid) in replaced:
                assert np.isfinite(emb).all() and np.any(emb) and len(emb) == DIM
            else:
                served = served_corpus.vector(doc_id, cid)  # one per (document, id): what the server served
                assert np.allclose(emb, served, rtol=0, atol=1e-6)
            li = store.get_nodes(node_ids=[chroma_id])
            assert len(li) == 1 and li[0].node_id == cid and li[0].get_content() == text
            assert records.same(li[0].metadata, meta)


def test_the_examples_covered_every_class():
    """The property above ran over every class the policy names (derandomised, so this is stable)."""
    need = {
        "vector zero",
        "vector nan",
        "vector inf",
        "vector short",
        "vector big",
        "vector same",
        "text lone surrogate",
        "empty text",
        "text NUL",
        "key: key Chroma reserves",
        "key: key LlamaIndex writes itself",
        "key: key that looks like an escaped one",
        "key: key that looks like an exact-value key",
        "value: null",
        "value: float",
        "value: NaN",
        "value: integer",
        "value: string",
        "value: nested",
        "value: empty",
        "value: list",
        "prepared in a second process",
        "prepared here",
    }
    if not SEEN:
        pytest.skip("run with the property test")
    assert need <= SEEN, sorted(need - SEEN)
