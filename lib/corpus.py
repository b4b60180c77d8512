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
import uuid
from pathlib import Path

import numpy as np
import yaml

from . import embeddings
from .paths import PACKAGE_DATA

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
    """Documents and chunks held in memory, with a vector per chunk for exact cosine search."""

    def __init__(self, project: dict, pipeline: dict, query_spec: embeddings.ModelSpec | None):
        self.project = project
        self.pipeline = pipeline
        self.query_spec = query_spec
        self._lock = threading.RLock()
        self.documents: dict[str, dict] = {}  # insertion-ordered
        self.chunks: dict[str, list[dict]] = {}
        self._vectors: dict[str, np.ndarray] = {}  # chunk id -> unit vector
        self._matrix = None  # (ids, matrix, metas) built lazily

    def __deepcopy__(self, memo):
        """An independent copy (tests change corpora; vectors are shared read-only arrays)."""
        new = StaticCorpus(copy.deepcopy(self.project), copy.deepcopy(self.pipeline), self.query_spec)
        with self._lock:
            new.documents = copy.deepcopy(self.documents)
            new.chunks = copy.deepcopy(self.chunks)
            new._vectors = dict(self._vectors)
        return new

    # --- mutation (also used by tests to change the corpus mid-export) ---
    def put_document(self, doc: dict, chunks: list[dict], vectors: np.ndarray | None) -> None:
        with self._lock:
            old = self.chunks.get(doc["id"], [])
            for c in old:
                self._vectors.pop(c["id_"], None)
            self.documents.pop(doc["id"], None)
            self.documents[doc["id"]] = doc
            self.chunks[doc["id"]] = chunks
            if vectors is not None:
                for c, v in zip(chunks, vectors, strict=True):
                    self._vectors[c["id_"]] = np.asarray(v, dtype=np.float32) / (np.linalg.norm(v) or 1.0)
            self._matrix = None

    def delete_document(self, doc_id: str) -> bool:
        with self._lock:
            if doc_id not in self.documents:
                return False
            for c in self.chunks.pop(doc_id, []):
                self._vectors.pop(c["id_"], None)
            del self.documents[doc_id]
            self._matrix = None
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

    def get_chunks(self, doc_id: str, with_embeddings: bool) -> list[dict] | None:
        with self._lock:
            chunks = self.chunks.get(doc_id)
            if chunks is None:
                return None
            out = []
            for c in chunks:
                c = dict(c)
                v = self._vectors.get(c["id_"])
                c["embedding"] = v.tolist() if (with_embeddings and v is not None) else None
                out.append(c)
            return out

    def _search_matrix(self):
        with self._lock:
            if self._matrix is None:
                ids, rows, nodes = [], [], []
                for chunks in self.chunks.values():
                    for c in chunks:
                        v = self._vectors.get(c["id_"])
                        if v is not None:
                            ids.append(c["id_"])
                            rows.append(v)
                            nodes.append(c)
                mat = np.stack(rows) if rows else np.zeros((0, 1), dtype=np.float32)
                self._matrix = (ids, mat, nodes)
            return self._matrix

    def search(self, query: str, top_k: int, cutoff: float, predicate) -> list[tuple[dict, float]]:
        if self.query_spec is None:
            raise NotImplementedError("this corpus has no query embedding model")
        ids, mat, nodes = self._search_matrix()
        if not ids:
            return []
        q = embeddings.embed_query(query, self.query_spec)
        q = q / (np.linalg.norm(q) or 1.0)
        scores = mat @ q
        order = np.argsort(-scores, kind="stable")
        out = []
        for i in order:
            s = float(scores[i])
            if s < cutoff:
                break
            if predicate(nodes[i].get("extra_info") or {}):
                out.append((nodes[i], s))
                if len(out) >= top_k:
                    break
        return out


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
        {"mode": "auto", "chunk_size": DEMO_CHUNK_SIZE, "chunk_overlap": DEMO_CHUNK_OVERLAP},
    )
    corpus = StaticCorpus(project, pipeline, MINILM)
    splitter = SentenceSplitter(chunk_size=DEMO_CHUNK_SIZE, chunk_overlap=DEMO_CHUNK_OVERLAP)
    pending = []
    base_time = dt.datetime(2025, 3, 2, 9, 0, tzinfo=dt.UTC)
    for i, t in enumerate(demo_topics()):
        doc_id = demo_document_id(i, t)
        text, pages = demo_document_text(t)
        file_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"welno-demo-file/{t['slug']}"))
        file_name = f"{t['ko']}_가이드.pdf"
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
            start = text.find(ctext[:40], max(0, search_from - DEMO_CHUNK_OVERLAP * 8))
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
        from .export_format import embed_text, node_to_row

        # vectors of what a LlamaIndex pipeline embeds: non-excluded metadata, then the chunk text
        all_texts = [
            embed_text(node_to_row(doc["id"], k, c)) for doc, chunks in pending for k, c in enumerate(chunks)
        ]
        vectors, _ = embeddings.embed_texts(all_texts, MINILM, cache)
        if cache:
            cache.close()
    row = 0
    for doc, chunks in pending:
        v = vectors[row : row + len(chunks)] if vectors is not None else None
        row += len(chunks)
        corpus.put_document(doc, chunks, v)
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
    from . import export_format

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
        vecs = [r["embedding"] for r in rows]
        v = np.asarray(vecs, dtype=np.float32) if rows and all(x is not None for x in vecs) else None
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


# ---------------------------------------------------------------- synthetic corpus
class SyntheticCorpus:
    """N chunks x D dims with clustered vectors, generated on demand (memory does not grow with N)."""

    def __init__(
        self, n_chunks: int, dim: int = 1536, chunks_per_doc: int = 50, clusters: int = 64, seed: int = 7
    ):
        self.n_chunks, self.dim, self.per_doc, self.seed = int(n_chunks), int(dim), int(chunks_per_doc), seed
        self.n_docs = (self.n_chunks + self.per_doc - 1) // self.per_doc
        rng = np.random.default_rng(seed)
        c = rng.standard_normal((clusters, self.dim)).astype(np.float32)
        self.centers = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.project = copy.deepcopy(DEMO_PROJECT)
        self.pipeline = _pipeline(
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"synthetic/{n_chunks}/{dim}")),
            f"synthetic-{n_chunks}x{dim}",
            self.project["id"],
            {"type": "HASH_EMBEDDING", "component": {"model_name": "hash", "dimensions": self.dim}},
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
        n = self._n_in_doc(d)
        rng = np.random.default_rng((self.seed, d))
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


def load(corpus: str, embed_cache: str | Path | None = None, serve_vectors_for_export: bool = False):
    """``demo``, ``synthetic:N[:D[:chunks_per_doc]]`` or the path of an export folder."""
    if corpus == "demo":
        return build_demo_corpus(embed_cache)
    if corpus.startswith("synthetic:"):
        parts = [int(x) for x in corpus.split(":")[1:]]
        return SyntheticCorpus(*parts)
    p = Path(corpus)
    if (p / "manifest.json").exists():
        return corpus_from_export(p)
    raise ValueError(
        f"corpus {corpus!r}: use 'demo', 'synthetic:N[:D[:chunks_per_doc]]' or an export folder with manifest.json"
    )
