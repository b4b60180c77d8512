"""What the LlamaCloud-compatible server serves: the demo corpus, an export folder, or synthetic chunks.

Every corpus answers the same questions the API asks: a page of documents, one document, a document's
chunks (TextNode JSON as LlamaCloud returns them), and an exact cosine search over the chunk vectors.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import threading
import unicodedata
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from .. import embeddings
from ..paths import PACKAGE_DATA

DEMO_PROJECT = {
    "id": "7f1a3c52-5d0e-4c1b-9a57-0d5f2b7c1e01",
    "name": "Default",
    "organization_id": "0b6c2a8e-3f41-4d2a-8e6f-1c9d7e5a4b02",
    "is_default": True,
    "created_at": "2025-03-02T09:00:00Z",
    "updated_at": "2025-03-02T09:00:00Z",
    "ad_hoc_eval_dataset_id": None,
}
DEMO_PIPELINE_ID = "1bcef115-bb95-4d14-9c29-d38bb097a39c"  # the seed's index id, so params read alike
DEMO_CHUNK_SIZE, DEMO_CHUNK_OVERLAP = 48, 8
MINILM = embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384)


def _pipeline(pid, name, project_id, embedding_config, transform_config, top_k=6):
    now = "2025-03-02T09:00:00Z"
    return {
        "id": pid,
        "name": name,
        "project_id": project_id,
        "pipeline_type": "MANAGED",
        "status": "CREATED",
        "embedding_config": embedding_config,
        "transform_config": transform_config,
        "preset_retrieval_parameters": {
            "dense_similarity_top_k": top_k,
            "dense_similarity_cutoff": 0.0,
            "sparse_similarity_top_k": top_k,
            "enable_reranking": False,
            "rerank_top_n": 6,
            "alpha": 1.0,
            "retrieval_mode": "chunks",
            "files_top_k": 1,
            "search_filters": None,
        },
        "sparse_model_config": None,
        "config_hash": None,
        "metadata_config": None,
        "created_at": now,
        "updated_at": now,
    }


_SYSTEM_KEYS = [
    "file_id",
    "pipeline_id",
    "document_id",
    "file_size",
    "last_modified_at",
    "external_file_id",
    "pipeline_file_id",
]


def node_json(
    chunk_id,
    text,
    metadata,
    doc_id,
    doc_meta,
    prev_id,
    next_id,
    start,
    end,
    embedding=None,
    excluded_embed=None,
):
    """A chunk as LlamaCloud's ``/chunks`` returns it: ``id_``, ``extra_info``, relationships by number."""
    rel = {
        "1": {
            "node_id": doc_id,
            "node_type": "4",
            "metadata": doc_meta,
            "hash": hashlib.sha256(doc_id.encode()).hexdigest(),
            "class_name": "RelatedNodeInfo",
        }
    }
    if prev_id:
        rel["2"] = {
            "node_id": prev_id,
            "node_type": "1",
            "metadata": {},
            "hash": None,
            "class_name": "RelatedNodeInfo",
        }
    if next_id:
        rel["3"] = {
            "node_id": next_id,
            "node_type": "1",
            "metadata": {},
            "hash": None,
            "class_name": "RelatedNodeInfo",
        }
    return {
        "id_": chunk_id,
        "embedding": embedding,
        "extra_info": metadata,
        "excluded_embed_metadata_keys": list(_SYSTEM_KEYS if excluded_embed is None else excluded_embed),
        "excluded_llm_metadata_keys": list(_SYSTEM_KEYS),
        "relationships": rel,
        "metadata_template": "{key}: {value}",
        "metadata_seperator": "\n",
        "text": text,
        "mimetype": "text/plain",
        "start_char_idx": start,
        "end_char_idx": end,
        "text_template": "{metadata_str}\n\n{content}",
        "class_name": "TextNode",
    }


class StaticCorpus:
    """Documents and chunks held in memory, with a vector per chunk for exact cosine search.

    Each chunk's vector is kept exactly as it was given (float32: same values, NaN and infinite elements,
    zero vectors and any dimension as they are), keyed by (document id, chunk id) so two documents that
    share a chunk id keep their own vectors; ``/chunks`` serves it unchanged. Search uses a separate
    unit-normalised copy of the vectors that can be searched: those of the query model's dimension with
    finite elements and a finite, non-zero norm. The others are left out of search (``unsearchable``
    says which and why) instead of poisoning every score.

    A query is embedded with ``query_embed(text)`` when given (a corpus whose vectors no local model makes
    directly), else with the ``query_spec`` model.
    """

    def __init__(
        self,
        project: dict,
        pipeline: dict,
        query_spec: embeddings.ModelSpec | None,
        query_embed: Callable[[str], np.ndarray] | None = None,
    ):
        self.project = project
        self.pipeline = pipeline
        self.query_spec = query_spec
        self.query_embed = query_embed
        self._lock = threading.RLock()
        self.documents: dict[str, dict] = {}  # insertion-ordered
        self.chunks: dict[str, list[dict]] = {}
        self._vectors: dict[tuple[str, str], np.ndarray] = {}  # (doc id, chunk id) -> vector as given
        self._matrix = None  # (nodes, unit matrix, unsearchable) built lazily
        self._sparse = None  # (nodes, cloud_ranking.SparseIndex) over every chunk's text, built lazily

    def __deepcopy__(self, memo):
        """An independent copy (tests change corpora; vectors are shared read-only arrays)."""
        new = StaticCorpus(
            copy.deepcopy(self.project), copy.deepcopy(self.pipeline), self.query_spec, self.query_embed
        )
        with self._lock:
            new.documents = copy.deepcopy(self.documents)
            new.chunks = copy.deepcopy(self.chunks)
            new._vectors = dict(self._vectors)
        return new

    # --- mutation (also used by tests to change the corpus mid-export) ---
    def put_document(self, doc: dict, chunks: list[dict], vectors=None) -> None:
        """Add or replace a document with its chunks. ``vectors``: None, or one vector per chunk (a 2-D
        array, or a sequence whose items are array-likes of any length, or None for a chunk without one)."""
        if vectors is not None and len(vectors) != len(chunks):
            raise ValueError(f"document {doc['id']!r}: {len(chunks)} chunks but {len(vectors)} vectors")
        with self._lock:
            self._drop_vectors(doc["id"])
            self.documents.pop(doc["id"], None)
            self.documents[doc["id"]] = doc
            self.chunks[doc["id"]] = chunks
            if vectors is not None:
                for c, v in zip(chunks, vectors, strict=True):
                    if v is None:
                        continue
                    arr = np.array(v, dtype=np.float32).reshape(-1)  # a copy: same float32 values, NaN too
                    arr.flags.writeable = False
                    self._vectors[(doc["id"], c["id_"])] = arr
            self._matrix = None
            self._sparse = None

    def _drop_vectors(self, doc_id: str) -> None:
        for c in self.chunks.get(doc_id, []):
            self._vectors.pop((doc_id, c["id_"]), None)

    def delete_document(self, doc_id: str) -> bool:
        with self._lock:
            if doc_id not in self.documents:
                return False
            self._drop_vectors(doc_id)
            self.chunks.pop(doc_id, None)
            del self.documents[doc_id]
            self._matrix = None
            self._sparse = None
            return True

    # --- reads ---
    def total_documents(self) -> int:
        return len(self.documents)

    def total_chunks(self) -> int:
        return sum(len(c) for c in self.chunks.values())

    def documents_page(self, skip: int, limit: int) -> tuple[list[dict], int]:
        with self._lock:
            docs = list(self.documents.values())
        return docs[skip : skip + limit], len(docs)

    def get_document(self, doc_id: str) -> dict | None:
        return self.documents.get(doc_id)

    def vector(self, doc_id: str, chunk_id: str) -> np.ndarray | None:
        """The chunk's vector exactly as it was given (read-only), or None."""
        return self._vectors.get((doc_id, chunk_id))

    def get_chunks(self, doc_id: str, with_embeddings: bool) -> list[dict] | None:
        with self._lock:
            chunks = self.chunks.get(doc_id)
            if chunks is None:
                return None
            out = []
            for c in chunks:
                c = dict(c)
                v = self._vectors.get((doc_id, c["id_"]))
                # float32 -> Python float is exact, and JSON writes floats so they read back the same
                c["embedding"] = v.tolist() if (with_embeddings and v is not None) else None
                out.append(c)
            return out

    def search_dimension(self) -> int | None:
        """The dimension a searchable vector has: the query model's, else the most common one."""
        if self.query_spec is not None and self.query_spec.dimension:
            return int(self.query_spec.dimension)
        dims: dict[int, int] = {}
        for v in self._vectors.values():
            dims[v.shape[0]] = dims.get(v.shape[0], 0) + 1
        return max(dims, key=dims.get) if dims else None

    @property
    def unsearchable(self) -> list[tuple[str, str, str]]:
        """(document id, chunk id, reason) of every chunk whose vector search leaves out."""
        return list(self._search_matrix()[2])

    def _search_matrix(self):
        with self._lock:
            if self._matrix is None:
                dim = self.search_dimension()
                rows, nodes, skipped = [], [], []
                for doc_id, chunks in self.chunks.items():
                    for c in chunks:
                        v = self._vectors.get((doc_id, c["id_"]))
                        if v is None:
                            continue
                        why = _unsearchable_reason(v, dim)
                        if why:
                            skipped.append((doc_id, c["id_"], why))
                            continue
                        v64 = v.astype(np.float64)
                        rows.append((v64 / np.linalg.norm(v64)).astype(np.float32))
                        nodes.append(c)
                mat = np.stack(rows) if rows else np.zeros((0, dim or 1), dtype=np.float32)
                self._matrix = (nodes, mat, skipped)
            return self._matrix

    def search(self, query: str, top_k: int, cutoff: float, predicate) -> list[tuple[dict, float]]:
        if self.query_spec is None and self.query_embed is None:
            raise NotImplementedError("this corpus has no query embedding model")
        nodes, mat, _ = self._search_matrix()
        if not nodes:
            return []
        if self.query_embed is not None:
            q = np.asarray(self.query_embed(query), dtype=np.float64).reshape(-1)
        else:
            q = embeddings.embed_query(query, self.query_spec).astype(np.float64)
        q = (q / (np.linalg.norm(q) or 1.0)).astype(np.float32)
        return _best(nodes, mat @ q, top_k, predicate, lambda s: s >= cutoff)

    def _sparse_index(self):
        with self._lock:
            if self._sparse is None:
                from .cloud_ranking import SparseIndex  # the server's imitation of LlamaCloud

                nodes = [c for chunks in self.chunks.values() for c in chunks]
                self._sparse = (nodes, SparseIndex([n.get("text") for n in nodes]))
            return self._sparse

    def sparse_search(self, query: str, top_k: int, predicate) -> list[tuple[dict, float]]:
        """The ``top_k`` chunks with the best BM25 score for ``query`` over their text (every chunk, with a
        vector or without: see ``runbook.rehearsal.cloud_ranking``), best first, as (node, score); chunks
        ``predicate`` refuses are left out before the top k is taken, chunks that score 0 (no query token)
        are never returned, and equal scores keep the corpus's order."""
        nodes, index = self._sparse_index()
        if top_k <= 0 or not nodes:
            return []
        return _best(nodes, index.scores(query), top_k, predicate, lambda s: s > 0.0)


def _best(nodes: list[dict], scores: np.ndarray, top_k: int, predicate, keep) -> list[tuple[dict, float]]:
    """The ``top_k`` best-scored nodes ``predicate`` allows (filters before the cut), best first, equal
    scores in corpus order, stopping at the first score ``keep`` refuses."""
    out = []
    for i in np.argsort(-scores, kind="stable"):
        s = float(scores[i])
        if not keep(s):
            break
        if predicate(nodes[i].get("extra_info") or {}):
            out.append((nodes[i], s))
            if len(out) >= top_k:
                break
    return out


def _unsearchable_reason(v: np.ndarray, dim: int | None) -> str:
    """Why a vector cannot be searched ("" when it can)."""
    if dim is not None and v.shape[0] != dim:
        return f"dimension {v.shape[0]}, not {dim}"
    if not np.all(np.isfinite(v)):
        return "non-finite element(s)"
    norm = float(np.linalg.norm(v.astype(np.float64)))
    if not np.isfinite(norm) or norm == 0.0:
        return "zero vector" if norm == 0.0 else "norm overflows"
    return ""


# ---------------------------------------------------------------- demo corpus
def demo_topics() -> list[dict]:
    return yaml.safe_load((PACKAGE_DATA / "demo_topics.yaml").read_text(encoding="utf-8"))


def demo_document_id(i: int, topic: dict) -> str:
    # every fifth id is a Korean path with a slash, so URL encoding and non-ASCII ids are exercised
    if i % 5 == 0:
        return f"건강검진/{topic['ko']}/{topic['slug']}.md"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"welno-demo/{topic['slug']}"))


def demo_document_text(t: dict) -> tuple[str, list[int]]:
    sections = [
        (
            f"{t['en']} ({t['ko']})",
            f"{t['en']} is part of the health checkup topic '{t['cat']}'. {t['advice']}",
        ),
        ("Screening test", t["test"]),
        ("Reference values", t["range"]),
        (
            "Who is at risk",
            f"People at higher risk of {t['en'].split(' (')[0].lower()} include those with "
            + ", ".join(t["risks"][:-1])
            + (" and " if len(t["risks"]) > 1 else "")
            + t["risks"][-1]
            + ".",
        ),
        ("Prevention and lifestyle", t["advice"]),
        ("Follow-up", t["followup"]),
    ]
    parts, pages, pos = [], [], 0
    for k, (head, body) in enumerate(sections):
        if k % 2 == 0:
            pages.append(pos)
        block = f"## {head}\n{body}\n\n" if k else f"# {head}\n{body}\n\n"
        parts.append(block)
        pos += len(block)
    return "".join(parts).rstrip() + "\n", pages


def build_demo_corpus(embed_cache: str | Path | None = None, with_vectors: bool = True) -> StaticCorpus:
    """The demo index: 50 health-checkup documents, Korean titles and file names, MiniLM vectors."""
    return build_topic_corpus(
        demo_topics(), demo_document_text, DEMO_CHUNK_SIZE, DEMO_CHUNK_OVERLAP, embed_cache, with_vectors
    )


def build_topic_corpus(
    topics: list[dict],
    text_of,
    chunk_size: int,
    chunk_overlap: int,
    embed_cache: str | Path | None = None,
    with_vectors: bool = True,
    preset: dict | None = None,
    file_suffix: str = "_가이드.pdf",
) -> StaticCorpus:
    """A demo index from topics (one document each, ``text_of(topic) -> (text, page starts)``), chunked by
    LlamaIndex's SentenceSplitter as a LlamaCloud pipeline would, with MiniLM vectors; ``preset`` overrides
    the pipeline's ``preset_retrieval_parameters``."""
    from llama_index.core.node_parser import SentenceSplitter

    project = copy.deepcopy(DEMO_PROJECT)
    pipeline = _pipeline(
        DEMO_PIPELINE_ID,
        "Dr.Welno",
        project["id"],
        {
            "type": "HUGGINGFACE_API_EMBEDDING",
            "component": {
                "model_name": MINILM.model_name,
                "embed_batch_size": 32,
                "class_name": "HuggingFaceInferenceAPIEmbedding",
            },
        },
        {"mode": "auto", "chunk_size": chunk_size, "chunk_overlap": chunk_overlap},
    )
    pipeline["preset_retrieval_parameters"].update(preset or {})
    corpus = StaticCorpus(project, pipeline, MINILM)
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    pending = []
    base_time = dt.datetime(2025, 3, 2, 9, 0, tzinfo=dt.UTC)
    for i, t in enumerate(topics):
        doc_id = demo_document_id(i, t)
        text, pages = text_of(t)
        file_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"welno-demo-file/{t['slug']}"))
        file_name = f"{t['ko']}{file_suffix}"
        doc_meta = {
            "file_id": file_id,
            "file_name": file_name,
            "pipeline_id": DEMO_PIPELINE_ID,
            "file_size": len(text.encode()) * 7,
            "last_modified_at": (base_time + dt.timedelta(days=i)).isoformat(),
            "category": t["cat"],
            "title": t["ko"],
            "title_en": t["en"],
            "external_file_id": f"welno-kb/{t['cat']}/{file_name}",
        }
        doc = {
            "id": doc_id,
            "text": text,
            "metadata": doc_meta,
            "excluded_embed_metadata_keys": [],
            "excluded_llm_metadata_keys": [],
            "page_positions": pages,
            "status_metadata": None,
        }
        nodes = splitter.split_text(text)
        chunk_ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc_id}#chunk{k}")) for k in range(len(nodes))]
        chunks, search_from = [], 0
        for k, ctext in enumerate(nodes):
            start = text.find(ctext[:40], max(0, search_from - chunk_overlap * 8))
            start = start if start >= 0 else None
            end = start + len(ctext) if start is not None else None
            if start is not None:
                search_from = start + 1
            page = max(1, sum(1 for p in pages if p <= start)) if start is not None else 1
            meta = {
                **doc_meta,
                "document_id": doc_id,
                "page_label": str(page),
                "start_page_index": page - 1,
                "end_page_index": page - 1,
                "pipeline_file_id": file_id,
                "tags": list(t["risks"][:3]),  # homogeneous list: Chroma 1.5 stores it
                "source": {"publisher": "Welno 건강연구소", "year": 2024 + (i % 2)},  # nested: Chroma cannot
                "reviewed_by": None if i % 3 == 0 else "김의사",
            }
            if i % 7 == 0:
                meta["codes"] = [1, "A"]  # a mixed list: Chroma cannot
            chunks.append(
                node_json(
                    chunk_ids[k],
                    ctext,
                    meta,
                    doc_id,
                    doc_meta,
                    chunk_ids[k - 1] if k else None,
                    chunk_ids[k + 1] if k + 1 < len(nodes) else None,
                    start,
                    end,
                    excluded_embed=[key for key in meta if key != "title_en"],
                )
            )
        pending.append((doc, chunks))
    vectors = None
    if with_vectors:
        cache = embeddings.EmbeddingCache(embed_cache) if embed_cache else None
        vectors, _ = embeddings.embed_texts(_embed_texts(pending), MINILM, cache)
        if cache:
            cache.close()
    row = 0
    for doc, chunks in pending:
        v = vectors[row : row + len(chunks)] if vectors is not None else None
        row += len(chunks)
        corpus.put_document(doc, chunks, v)
    return corpus


def _embed_texts(pending: list[tuple[dict, list[dict]]]) -> list[str]:
    """What a LlamaIndex pipeline embeds for each chunk: non-excluded metadata, then the chunk text."""
    from ..export_format import embed_text, node_to_row

    return [embed_text(node_to_row(doc["id"], k, c)) for doc, chunks in pending for k, c in enumerate(chunks)]


# the embedding_config a real LlamaCloud pipeline on its managed OpenAI model reports (llama_cloud's
# EmbeddingConfigManagedOpenAIEmbeddingConfig: model_name is the literal "openai-text-embedding-3-small")
MANAGED_OPENAI_EMBEDDING = {
    "type": "MANAGED_OPENAI_EMBEDDING",
    "component": {
        "model_name": "openai-text-embedding-3-small",
        "embed_batch_size": 10,
        "class_name": "ManagedOpenAIEmbedding",
    },
}
OPENAI_SMALL = "text-embedding-3-small"


def demo_openai_query_vector(query: str) -> np.ndarray:
    """A query of the ``demo-openai`` corpus: its MiniLM query vector, projected as the OpenAI stand-in's
    semantic text-embedding-3-small vectors are (1536-d; cosines equal MiniLM's)."""
    from . import openai_stand_in

    return openai_stand_in.project_minilm(embeddings.embed_query(query, MINILM), OPENAI_SMALL)[0]


def build_demo_openai_corpus(embed_cache: str | Path | None = None) -> StaticCorpus:
    """The demo index as if LlamaCloud had embedded it with its managed OpenAI model (the production shape):
    the same documents, chunks and ids, the pipeline's ``embedding_config`` MANAGED_OPENAI_EMBEDDING, and
    1536-d chunk vectors: what the OpenAI stand-in (``runbook.rehearsal.openai_stand_in``, semantic mode)
    answers for text-embedding-3-small, i.e. the demo's MiniLM vectors projected isometrically. Retrieval
    embeds the query the same way, so it ranks exactly as on the ``demo`` corpus."""
    from . import openai_stand_in

    base = build_demo_corpus(embed_cache, with_vectors=False)
    pipeline = copy.deepcopy(base.pipeline)
    pipeline["embedding_config"] = copy.deepcopy(MANAGED_OPENAI_EMBEDDING)
    spec = embeddings.spec_from_pipeline(pipeline["embedding_config"])
    corpus = StaticCorpus(base.project, pipeline, spec, demo_openai_query_vector)
    pending = [(base.documents[d], base.chunks[d]) for d in base.documents]
    cache = embeddings.EmbeddingCache(embed_cache) if embed_cache else None
    try:
        vectors = openai_stand_in.vectors_for(_embed_texts(pending), OPENAI_SMALL, 1536, "semantic", cache)
    finally:
        if cache:
            cache.close()
    row = 0
    for doc, chunks in pending:
        corpus.put_document(doc, chunks, vectors[row : row + len(chunks)])
        row += len(chunks)
    return corpus


def demo_questions() -> list[dict]:
    """The labelled test query set for the demo corpus (one question per topic)."""
    out = []
    for i, t in enumerate(demo_topics()):
        out.append(
            {
                "id": f"q{i + 1:02d}",
                "question": t["q"],
                "expected_document_ids": [demo_document_id(i, t)],
                "topic": t["slug"],
            }
        )
    return out


# ---------------------------------------------------------------- export folder
def corpus_from_export(
    export_dir: str | Path, query_spec: embeddings.ModelSpec | None = None
) -> StaticCorpus:
    """Serve an export written by phase 01 (rehearse against a copy of production)."""
    from .. import export_format

    exp = export_format.open_export(export_dir)
    m = exp.manifest
    pipeline = dict(m["pipeline"])
    project = dict(m.get("project") or {**DEMO_PROJECT, "id": pipeline.get("project_id", DEMO_PROJECT["id"])})
    if query_spec is None:
        try:
            query_spec = embeddings.spec_from_pipeline(pipeline.get("embedding_config") or {})
        except embeddings.EmbeddingConfigError:
            query_spec = None
    corpus = StaticCorpus(project, pipeline, query_spec)
    docs = {d["document_id"]: d for d in exp.iter_documents()}
    by_doc: dict[str, list] = {}
    for row in exp.iter_chunks():
        by_doc.setdefault(row["document_id"], []).append(row)
    for doc_id, d in docs.items():
        rows = sorted(by_doc.get(doc_id, []), key=lambda r: r["seq"])
        chunks = [export_format.row_to_node_json(r) for r in rows]
        # each row's vector as exported (float32, any length, NaN kept); None where the export has none
        v = [r["embedding"] for r in rows]
        doc = {
            "id": doc_id,
            "text": d["text"],
            "metadata": json.loads(d["metadata_json"]),
            "excluded_embed_metadata_keys": [],
            "excluded_llm_metadata_keys": [],
            "page_positions": None,
            "status_metadata": None,
        }
        corpus.put_document(doc, chunks, v)
    return corpus


# ---------------------------------------------------------------- hostile corpus
HOSTILE_PIPELINE_ID = "5e0a7d3c-9b1f-4c2e-8a6d-0f4b3e2d1c0a"
HOSTILE_DIM = 384
HOSTILE_SEED = 20251102
HOSTILE_SPEC = embeddings.ModelSpec("hash", "hash", HOSTILE_DIM)
_LONG_ID = "긴-아이디/" + "long id ?#%2F 검진 " * 18 + "end"  # 300+ characters, every awkward character
_NFC = unicodedata.normalize("NFC", "한글 건강검진 결과")
_NFD = unicodedata.normalize("NFD", _NFC)

HOSTILE_CASES: dict[str, str] = {
    "id_korean_emoji": "document and chunk ids in Korean with emoji (multi-byte UTF-8 in the URL path)",
    "id_slash": "ids with '/' (one path segment only when the client encodes it as %2F)",
    "id_percent": "ids with a bare '%' and '%41' (decoded twice, '%41' would become 'A')",
    "id_encoded_slash": "ids containing the literal text '%2F' (decoded twice it would become '/')",
    "id_hash": "ids with '#' (a fragment when sent unencoded: the rest of the path is lost)",
    "id_question": "ids with '?', '=' and '&' (a query string when sent unencoded)",
    "id_spaces": "ids with inner, leading and trailing spaces",
    "id_long": "a 300+ character id (Korean, spaces, '/', '?', '#', '%2F') for the document and its chunks",
    "id_nfc_nfd": "two documents whose ids look the same: one NFC Korean, one NFD (combining jamo)",
    "id_dot_segments": "document ids '.' and '..' (dot segments: URL libraries drop them from paths)",
    "id_control_chars": "ids with a tab and a newline (not allowed raw in a URL: must be percent-encoded)",
    "meta_structures": "nested dicts, lists (empty, mixed types, nested), null, booleans, -0.0",
    "meta_nonfinite": "NaN, Infinity, -Infinity (also inside lists and nested dicts), 1e308, 5e-324, and "
    "123456789.12345679, which Chroma's JSON parser returns one step off, beside a key named like the one "
    "where the runbook keeps its exact value",
    "meta_big_ints": "integers beyond 64 bits (2**70, -2**70, 2**64) and the int64 bounds",
    "meta_long_string": "a 100 KB string value",
    "meta_marker_strings": "strings that look like encoding markers: 'json:{\"a\":1}', 'json:', 'meta_x'",
    "meta_nul_string": "a string value with a NUL character",
    "meta_korean": "Korean keys and values, and two keys that differ only by NFC/NFD",
    "key_reserved": "keys '$where', '#doc', 'chroma:document', 'meta_where' next to '$where', 'meta_$where'",
    "key_llamaindex": "keys LlamaIndex uses itself: '_node_content', 'document_id', 'doc_id', 'ref_doc_id'",
    "key_empty": "an empty metadata key ''",
    "text_empty": "a chunk and a document with empty text ''",
    "text_whitespace": "text of whitespace only: '  \\n\\t'",
    "text_nul": "text with a NUL in the middle: 'before\\x00after'",
    "text_lone_surrogate": "text with a lone surrogate '\\ud800' (not valid UTF-8: JSON carries it as an escape)",
    "text_long": "a 200 KB chunk text",
    "text_nfd_nfc": "the same Korean words in NFC and NFD (combining jamo) in two chunks: never normalise",
    "vec_zero": "a zero vector (cannot be normalised or searched)",
    "vec_nan_element": "a vector with one NaN element",
    "vec_inf_element": "vectors with one +Infinity and one -Infinity element",
    "vec_wrong_dim": "a 383-dimensional vector in a 384-dimensional index",
    "vec_non_unit": "a vector of norm 7.5 (not unit length)",
    "vec_identical": "two chunks with identical vectors",
    "dup_chunk_id": "the same chunk id in two different documents (different text and vectors)",
    "zero_chunks": "a document with no chunks",
}


def _unit(seed: tuple, dim: int = HOSTILE_DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _hostile_records() -> list[dict]:
    """One dict per document: ``case``, ``id``, ``text`` (None: its chunks' texts joined), ``meta`` (extra
    document metadata) and ``chunks`` [(chunk id, text, extra chunk metadata, vector or None for a seeded
    unit vector)]."""
    recs = []

    def rec(case, doc_id, chunks, meta=None, text=None):
        recs.append({"case": case, "id": doc_id, "chunks": chunks, "meta": meta or {}, "text": text})

    def plain(n, prefix, words="Plain chunk"):
        return [(f"{prefix}{k}", f"{words} {k} of a hostile document.", {}, None) for k in range(n)]

    rec(
        "id_korean_emoji",
        "건강검진-결과-🩺😀",
        [(f"청크-{k}-🧪", f"한국어 청크 {k} 🩺", {}, None) for k in range(2)],
    )
    rec(
        "id_slash",
        "reports/2024/혈액검사.md",
        [(f"reports/2024/혈액검사.md/chunk/{k}", f"slash {k}", {}, None) for k in range(2)],
    )
    rec("id_slash", "/leading/and/trailing/", plain(1, "/chunk/"))
    rec("id_percent", "100% sure %41%zz", [("50% %41 chunk", "percent chunk", {}, None)])
    rec(
        "id_encoded_slash",
        "a%2Fb%2fc%252F",
        [("x%2Fy-0", "encoded slash 0", {}, None), ("x%2Fy-1", "encoded slash 1", {}, None)],
    )
    rec("id_hash", "notes#section-2", [("notes#section-2#c0", "hash chunk", {}, None)])
    rec("id_question", "what?x=1&y=2", [("what?x=1&y=2&chunk=0", "question chunk", {}, None)])
    rec("id_spaces", "  spaced id with  double  spaces ", [(" chunk with spaces ", "spaces chunk", {}, None)])
    rec("id_long", _LONG_ID, [(f"{_LONG_ID}#chunk-{k}", f"long id chunk {k}", {}, None) for k in range(3)])
    rec(
        "id_nfc_nfd", unicodedata.normalize("NFC", "검진결과"), [("nfc-chunk-0", "NFC id document", {}, None)]
    )
    rec(
        "id_nfc_nfd", unicodedata.normalize("NFD", "검진결과"), [("nfd-chunk-0", "NFD id document", {}, None)]
    )
    rec("id_dot_segments", ".", [(".", "a document and chunk named '.'", {}, None)])
    rec("id_dot_segments", "..", [("..", "a document and chunk named '..'", {}, None)])
    rec("id_control_chars", "tab\there\nnewline", [("tab\tchunk\n0", "control characters in ids", {}, None)])

    structures = {
        "nested": {"a": {"b": {"c": [1, {"d": None}]}}, "empty": {}},
        "list_empty": [],
        "list_mixed": [1, "two", 3.5, None, True, {"k": "v"}, [1, [2, []]]],
        "list_nested": [[1, 2], [], [[3]]],
        "null": None,
        "true": True,
        "false": False,
        "zero": 0,
        "neg_zero": -0.0,
        "float_int": 1.0,
    }
    rec("meta_structures", "meta-structures", plain(2, "meta-structures-"), structures)
    nonfinite = {
        "nan": float("nan"),
        "inf": float("inf"),
        "ninf": float("-inf"),
        "in_list": [float("nan"), 1.0, float("inf"), float("-inf")],
        "in_dict": {"x": float("nan")},
        "max": 1e308,
        "tiny": 5e-324,
        "one_step_off": 123456789.12345679,  # Chroma's JSON parser returns 123456789.1234568
        'meta_json:["one_step_off"]': 1.5,  # the form of the key where the runbook keeps its exact value
    }
    rec("meta_nonfinite", "meta-nonfinite", plain(2, "meta-nonfinite-"), nonfinite)
    big = {
        "pow70": 2**70,
        "neg_pow70": -(2**70),
        "pow64": 2**64,
        "uint64_max": 2**64 - 1,
        "int64_max": 2**63 - 1,
        "int64_min": -(2**63),
        "int64_max_plus_1": 2**63,
        "in_list": [2**70, -(2**63)],
    }
    rec("meta_big_ints", "meta-big-ints", plain(1, "meta-big-ints-"), big)
    long_value = ("건강검진 long metadata value " * 4096)[: 100 * 1024]
    rec("meta_long_string", "meta-long-string", plain(1, "meta-long-string-"), {"long": long_value})
    markers = {
        "marker_json": 'json:{"a":1}',
        "marker_json_empty": "json:",
        "marker_meta": "meta_x",
        "list": ["json:[]"],
    }
    rec("meta_marker_strings", "meta-marker-strings", plain(1, "meta-marker-strings-"), markers)
    rec(
        "meta_nul_string",
        "meta-nul-string",
        plain(1, "meta-nul-string-"),
        {"nul": "a\x00b", "nul_only": "\x00"},
    )
    korean = {
        "검진항목": "혈압",
        "결과": ["정상", "주의"],
        "담당의": {"이름": "김의사", "과": "내과"},
        unicodedata.normalize("NFC", "한글키"): "NFC key",
        unicodedata.normalize("NFD", "한글키"): "NFD key",
    }
    rec(
        "meta_korean",
        "meta-korean",
        [("meta-korean-0", "한국어 메타데이터", {"청크키": "청크값"}, None)],
        korean,
    )

    reserved = {
        "$where": "dollar",
        "#doc": "hash",
        "chroma:document": "colon",
        "meta_where": "the real key meta_where",
        "meta_$where": "dollar after meta_",
        "$and": [{"x": 1}],
    }
    rec("key_reserved", "key-reserved", plain(2, "key-reserved-"), reserved)
    llama_keys = {
        "_node_content": '{"id_": "forged", "text": "not this chunk"}',
        "document_id": "some-other-document",
        "doc_id": "yet-another-document",
        "ref_doc_id": "a-third-document",
        "_node_type": "TextNode",
    }
    rec("key_llamaindex", "key-llamaindex", plain(1, "key-llamaindex-"), llama_keys)
    rec("key_empty", "key-empty", plain(1, "key-empty-"), {"": "empty key", " ": "space key"})

    rec("text_empty", "text-empty", [("text-empty-0", "", {}, None)], text="")
    rec("text_whitespace", "text-whitespace", [("text-whitespace-0", "  \n\t", {}, None)], text="  \n\t")
    rec("text_nul", "text-nul", [("text-nul-0", "before\x00after", {}, None)])
    rec(
        "text_lone_surrogate",
        "text-lone-surrogate",
        [
            ("text-lone-surrogate-0", "before \ud800 after", {}, None),
            ("text-lone-surrogate-1", "low \udc80 too", {}, None),
        ],
    )
    long_text = ("건강검진 결과를 해석하는 긴 문서. A long chunk of text. " * 5000)[: 200 * 1024]
    rec("text_long", "text-long", [("text-long-0", long_text, {}, None)])
    rec(
        "text_nfd_nfc",
        "text-nfd-nfc",
        [("text-nfc-0", _NFC, {"form": "NFC"}, None), ("text-nfd-1", _NFD, {"form": "NFD"}, None)],
    )

    def with_vec(prefix, vectors):
        return [(f"{prefix}{k}", f"{prefix} chunk {k}", {}, v) for k, v in enumerate(vectors)]

    nan_v = _unit((HOSTILE_SEED, 1001))
    nan_v[17] = np.nan
    inf_v, ninf_v = _unit((HOSTILE_SEED, 1002)), _unit((HOSTILE_SEED, 1003))
    inf_v[3], ninf_v[200] = np.inf, -np.inf
    same = _unit((HOSTILE_SEED, 1004))
    rec("vec_zero", "vec-zero", with_vec("vec-zero-", [np.zeros(HOSTILE_DIM, np.float32), None]))
    rec("vec_nan_element", "vec-nan-element", with_vec("vec-nan-", [nan_v, None]))
    rec("vec_inf_element", "vec-inf-element", with_vec("vec-inf-", [inf_v, ninf_v, None]))
    rec(
        "vec_wrong_dim",
        "vec-wrong-dim",
        with_vec("vec-wrong-dim-", [_unit((HOSTILE_SEED, 1005), HOSTILE_DIM - 1), None]),
    )
    rec(
        "vec_non_unit",
        "vec-non-unit",
        with_vec(
            "vec-non-unit-", [(_unit((HOSTILE_SEED, 1006)).astype(np.float64) * 7.5).astype(np.float32)]
        ),
    )
    rec("vec_identical", "vec-identical", with_vec("vec-identical-", [same, same.copy(), None, None]))

    rec(
        "dup_chunk_id",
        "dup-chunk-a",
        [("shared-chunk-id", "the shared id in document A", {"side": "A"}, None)],
    )
    rec(
        "dup_chunk_id",
        "dup-chunk-b",
        [("shared-chunk-id", "the shared id in document B (different)", {"side": "B"}, None)],
    )
    rec("zero_chunks", "zero-chunks", [], text="A document that has no chunks at all.")
    return recs


def build_hostile_corpus(seed: int = HOSTILE_SEED) -> StaticCorpus:
    """A small corpus of everything an exporter must carry exactly (see ``HOSTILE_CASES``): awkward ids,
    metadata that JSON, Parquet and Chroma each struggle with, odd texts and unusable vectors. Every
    document's metadata names its case under ``case``. Vectors are 384-d, seeded, unit length unless the
    case says otherwise; the query model is the ``hash`` embedding, so retrieval works offline."""
    project = copy.deepcopy(DEMO_PROJECT)
    pipeline = _pipeline(
        HOSTILE_PIPELINE_ID,
        "hostile",
        project["id"],
        {"type": "HASH_EMBEDDING", "component": {"model_name": "hash", "dimensions": HOSTILE_DIM}},
        {"mode": "auto", "chunk_size": 1024, "chunk_overlap": 200},
    )
    corpus = StaticCorpus(project, pipeline, HOSTILE_SPEC)
    for d_i, r in enumerate(_hostile_records()):
        doc_id, texts = r["id"], [c[1] for c in r["chunks"]]
        text = r["text"] if r["text"] is not None else "\n\n".join(texts)
        doc_meta = {
            "case": r["case"],
            "file_name": f"hostile-{d_i:02d}.txt",
            "pipeline_id": HOSTILE_PIPELINE_ID,
            **r["meta"],
        }
        doc = {
            "id": doc_id,
            "text": text,
            "metadata": doc_meta,
            "excluded_embed_metadata_keys": [],
            "excluded_llm_metadata_keys": [],
            "page_positions": None,
            "status_metadata": None,
        }
        ids = [c[0] for c in r["chunks"]]
        chunks, vectors, pos = [], [], 0
        for k, (cid, ctext, extra, vec) in enumerate(r["chunks"]):
            start = text.find(ctext, pos) if ctext else pos
            start = start if start >= 0 else None
            end = start + len(ctext) if start is not None else None
            pos = end if end is not None else pos
            meta = {"document_id": doc_id, **doc_meta, "chunk_index": k, **extra}
            chunks.append(
                node_json(
                    cid,
                    ctext,
                    meta,
                    doc_id,
                    doc_meta,
                    ids[k - 1] if k else None,
                    ids[k + 1] if k + 1 < len(ids) else None,
                    start,
                    end,
                )
            )
            vectors.append(_unit((seed, d_i, k)) if vec is None else np.asarray(vec, dtype=np.float32))
        corpus.put_document(doc, chunks, vectors)
    return corpus


# ---------------------------------------------------------------- synthetic corpus
class SyntheticCorpus:
    """N chunks x D dims, generated on demand (memory does not grow with N), in one of two shapes:

    - ``isotropic`` (the default): 64 cluster centres, each chunk its centre plus noise spread evenly over all
      D dimensions (cosine within a cluster about 0.11). Nearly isotropic: the hard case for HNSW, which
      needs a raised ``ef_search`` or a denser graph to reach recall 0.99 at 100k chunks.
    - ``realistic``: shaped like text embeddings. Vectors live near a subspace of ``INTRINSIC_DIM`` dimensions
      (a fixed random projection into D, plus a little noise in all D), share a common direction (any two
      chunks have a positive cosine, as OpenAI embeddings do), and cluster by topic, the chunks of one
      document near their document's topic. HNSW reaches high recall on such data at its default settings.

    ``embedding="openai"`` makes the pipeline report LlamaCloud's managed text-embedding-3-small (1536-d), as
    Dr.Welno's does: served without vectors (as LlamaCloud serves them), phase 01 re-embeds every chunk
    through the OpenAI-compatible API, e.g. the stand-in's rate-limited ``/v1/embeddings``.
    """

    SHAPES = ("isotropic", "realistic")
    EMBEDDINGS = ("hash", "openai")
    INTRINSIC_DIM = 48
    TOPICS = 512

    def __init__(
        self,
        n_chunks: int,
        dim: int = 1536,
        chunks_per_doc: int = 50,
        clusters: int = 64,
        seed: int = 7,
        shape: str = "isotropic",
        embedding: str = "hash",
    ):
        if shape not in self.SHAPES:
            raise ValueError(f"synthetic corpus shape {shape!r}: use one of {', '.join(self.SHAPES)}")
        if embedding not in self.EMBEDDINGS or (embedding == "openai" and int(dim) != 1536):
            raise ValueError(
                f"synthetic corpus embedding {embedding!r} at {dim} dimensions: use hash (any dimension) or "
                "openai (text-embedding-3-small, 1536)"
            )
        self.n_chunks, self.dim, self.per_doc, self.seed = int(n_chunks), int(dim), int(chunks_per_doc), seed
        self.shape = shape
        self.n_docs = (self.n_chunks + self.per_doc - 1) // self.per_doc
        rng = np.random.default_rng(seed)
        c = rng.standard_normal((clusters, self.dim)).astype(np.float32)
        self.centers = c / np.linalg.norm(c, axis=1, keepdims=True)
        if shape == "realistic":
            k = min(self.INTRINSIC_DIM, self.dim)
            basis, _ = np.linalg.qr(rng.standard_normal((self.dim, k)))  # D x k, orthonormal columns
            self.basis = basis.T.astype(np.float32)  # k x D
            mean = rng.standard_normal(self.dim).astype(np.float32)
            self.mean = mean / np.linalg.norm(mean)
            self.topics = rng.standard_normal((self.TOPICS, k)).astype(np.float32)
        tags = [t for t in (shape, embedding) if t not in ("isotropic", "hash")]
        self.project = copy.deepcopy(DEMO_PROJECT)
        self.pipeline = _pipeline(
            str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join([f"synthetic/{n_chunks}/{dim}", *tags]))),
            "-".join([f"synthetic-{n_chunks}x{dim}", *tags]),
            self.project["id"],
            copy.deepcopy(MANAGED_OPENAI_EMBEDDING)
            if embedding == "openai"
            else {"type": "HASH_EMBEDDING", "component": {"model_name": "hash", "dimensions": self.dim}},
            {"mode": "auto", "chunk_size": 1024, "chunk_overlap": 200},
        )
        self.query_spec = embeddings.ModelSpec("hash", "hash", self.dim)
        self._deleted: set[int] = set()
        self._lock = threading.Lock()

    def doc_id(self, d: int) -> str:
        return f"syn-doc-{d:08d}"

    def _doc_index(self, doc_id: str) -> int | None:
        if not doc_id.startswith("syn-doc-"):
            return None
        try:
            d = int(doc_id[8:])
        except ValueError:
            return None
        return d if 0 <= d < self.n_docs and d not in self._deleted else None

    def _n_in_doc(self, d: int) -> int:
        return min(self.per_doc, self.n_chunks - d * self.per_doc)

    def total_documents(self) -> int:
        return self.n_docs - len(self._deleted)

    def total_chunks(self) -> int:
        return sum(self._n_in_doc(d) for d in range(self.n_docs) if d not in self._deleted)

    def _doc(self, d: int) -> dict:
        return {
            "id": self.doc_id(d),
            "text": f"Synthetic document {d}.",
            "metadata": {"file_name": f"syn-{d}.txt", "n": d},
            "excluded_embed_metadata_keys": [],
            "excluded_llm_metadata_keys": [],
            "page_positions": None,
            "status_metadata": None,
        }

    def documents_page(self, skip: int, limit: int):
        live = [d for d in range(self.n_docs) if d not in self._deleted] if self._deleted else None
        total = self.total_documents()
        idx = live[skip : skip + limit] if live is not None else range(skip, min(skip + limit, self.n_docs))
        return [self._doc(d) for d in idx], total

    def get_document(self, doc_id: str):
        d = self._doc_index(doc_id)
        return None if d is None else self._doc(d)

    def delete_document(self, doc_id: str) -> bool:
        d = self._doc_index(doc_id)
        if d is None:
            return False
        with self._lock:
            self._deleted.add(d)
        return True

    def vectors_for(self, d: int) -> np.ndarray:
        """Document ``d``'s chunk vectors, unit length, the same on every call (seeded by the document)."""
        n = self._n_in_doc(d)
        rng = np.random.default_rng((self.seed, d))
        if self.shape == "realistic":
            k = len(self.basis)
            topic = self.topics[rng.integers(0, len(self.topics))]
            doc = topic + 0.6 * rng.standard_normal(k).astype(np.float32)
            z = doc + 0.5 * rng.standard_normal((n, k)).astype(np.float32)
            z = z / np.linalg.norm(z, axis=1, keepdims=True)
            noise = rng.standard_normal((n, self.dim)).astype(np.float32) / np.sqrt(self.dim)
            v = z @ self.basis + 0.8 * self.mean + 0.15 * noise
        else:
            cl = rng.integers(0, len(self.centers), size=n)
            v = (
                self.centers[cl]
                + 0.35 * rng.standard_normal((n, self.dim)).astype(np.float32) / np.sqrt(self.dim) * 8
            )
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def get_chunks(self, doc_id: str, with_embeddings: bool):
        d = self._doc_index(doc_id)
        if d is None:
            return None
        n = self._n_in_doc(d)
        vecs = self.vectors_for(d) if with_embeddings else None
        ids = [f"syn-{d:08d}-{k:04d}" for k in range(n)]
        out = []
        for k in range(n):
            text = f"Synthetic chunk {k} of document {d}: " + ("lorem ipsum " * 40)
            meta = {
                "document_id": doc_id,
                "file_name": f"syn-{d}.txt",
                "page_label": str(k // 10 + 1),
                "k": k,
            }
            out.append(
                node_json(
                    ids[k],
                    text,
                    meta,
                    doc_id,
                    {"file_name": f"syn-{d}.txt"},
                    ids[k - 1] if k else None,
                    ids[k + 1] if k + 1 < n else None,
                    0,
                    len(text),
                    vecs[k].tolist() if vecs is not None else None,
                )
            )
        return out

    def search(self, query, top_k, cutoff, predicate):
        if self.n_chunks * self.dim > 200_000_000:
            raise NotImplementedError("exact search over a synthetic corpus above 200M floats is not offered")
        q = embeddings.embed_query(query, self.query_spec)
        best: list[tuple[float, dict]] = []
        for d in range(self.n_docs):
            if d in self._deleted:
                continue
            s = self.vectors_for(d) @ q
            for k in np.argsort(-s)[:top_k]:
                best.append((float(s[k]), {"d": d, "k": int(k)}))
        best.sort(key=lambda x: -x[0])
        out = []
        for s, pos in best:
            if s < cutoff:
                break
            node = self.get_chunks(self.doc_id(pos["d"]), False)[pos["k"]]
            if predicate(node["extra_info"]):
                out.append((node, s))
            if len(out) >= top_k:
                break
        return out


def write_synthetic_export(n: int, dim: int, path: Path, shape: str = "isotropic") -> np.ndarray:
    """An export of N synthetic chunks with their vectors, written by phase 01's own shard writer (a
    benchmark's or a test's input, with no server to export from); returns the vectors."""
    from .. import export_format, extract

    syn = SyntheticCorpus(n, dim, chunks_per_doc=50, shape=shape)
    header = {
        "format": export_format.FORMAT,
        "export_id": path.name,
        "index_name": syn.pipeline["name"],
        "index_id": syn.pipeline["id"],
        "project": syn.project,
        "pipeline": syn.pipeline,
    }
    w = extract._Writer(path, header, shard_rows=20000)
    vecs = np.empty((n, dim), dtype=np.float32)  # not a list of Python floats: 1M x 1536 of those is ~50 GB
    at = 0
    for d in range(syn.n_docs):
        nodes = syn.get_chunks(syn.doc_id(d), with_embeddings=True)
        rows = [export_format.node_to_row(syn.doc_id(d), k, x) for k, x in enumerate(nodes)]
        vecs[at : at + len(nodes)] = [x["embedding"] for x in nodes]
        at += len(nodes)
        w.add(
            {
                "document_id": syn.doc_id(d),
                "text": "",
                "metadata_json": "{}",
                "content_sha256": "",
                "chunk_count": len(rows),
            },
            rows,
        )
    w.finalize({"exported_at": "bench", "source_total_count": syn.n_docs})
    return vecs[:at]


def synthetic(spec: str) -> SyntheticCorpus:
    """``synthetic:N[:D[:chunks_per_doc]][:isotropic|realistic][:openai]``, e.g.
    ``synthetic:100000:1536:50:realistic:openai`` (see :class:`SyntheticCorpus`)."""
    parts = spec.split(":")[1:]
    words = {"shape": "isotropic", "embedding": "hash"}
    while parts and not parts[-1].isdigit():
        word = parts.pop()
        key = (
            "shape"
            if word in SyntheticCorpus.SHAPES
            else "embedding"
            if word in SyntheticCorpus.EMBEDDINGS
            else ""
        )
        if not key:
            parts = []  # an unknown word: refused below
            break
        words[key] = word
    numbers = [int(x) for x in parts if x.isdigit()]
    if not 1 <= len(numbers) <= 3 or len(numbers) != len(parts) or min(numbers) < 1:
        raise ValueError(
            f"corpus {spec!r}: use synthetic:N[:D[:chunks_per_doc]][:isotropic|realistic][:openai] with positive "
            "whole numbers, e.g. synthetic:100000:1536:50:realistic"
        )
    return SyntheticCorpus(*numbers, **words)


def load(corpus: str, embed_cache: str | Path | None = None, serve_vectors_for_export: bool = False):
    """``demo``, ``demo-openai``, ``demo-ko`` (Korean text, hybrid reranked preset), ``hostile``, ``synthetic:N[:D[:chunks_per_doc]][:isotropic|realistic][:openai]`` or the path of an export
    folder."""
    if corpus == "demo":
        return build_demo_corpus(embed_cache)
    if corpus == "demo-openai":
        return build_demo_openai_corpus(embed_cache)
    if corpus == "demo-ko":
        from . import korean_demo

        return korean_demo.build(embed_cache)
    if corpus == "hostile":
        return build_hostile_corpus()
    if corpus.startswith("synthetic:"):
        return synthetic(corpus)
    p = Path(corpus)
    if (p / "manifest.json").exists():
        return corpus_from_export(p)
    raise ValueError(
        f"corpus {corpus!r}: use 'demo', 'demo-openai', 'demo-ko', 'hostile', 'synthetic:N[:D[:chunks_per_doc]][:realistic][:openai]' or an export folder with manifest.json"
    )
