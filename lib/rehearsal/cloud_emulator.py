"""A LlamaCloud-compatible local server ("rehearsal mode").

The official ``llama-cloud`` client and ``LlamaCloudIndex``/``LlamaCloudRetriever`` talk to it unchanged
through ``base_url``/``LLAMA_CLOUD_BASE_URL``. It serves the read API an exporter and a retriever use
(projects, pipelines, documents, chunks, files, retrieve) with the same paths, parameters and JSON
shapes, Bearer auth, FastAPI-shaped errors, a log of every request, and fault injection.

The same server (same base URL) stands in for the **Gemini API** that ``google-genai`` (and so LlamaIndex's
``GoogleGenAI``) calls: ``GET /v1beta/models[/{model}]`` and ``POST /v1beta/models/{model}:generateContent``
(also ``:streamGenerateContent`` and ``:countTokens``), authenticated by the ``x-goog-api-key`` header the
way Google does (missing: 403 PERMISSION_DENIED, wrong: 400 API_KEY_INVALID), answering in Gemini's JSON
shape. The answer is deterministic and built from the context passages in the prompt ("Based on 3
passages: [1] <title>: <first sentence> ..."), so a rehearsal can check that answers reflect retrieval.
Point the client at it with ``http_options={"base_url": url}`` (``GEMINI_BASE_URL`` in config.env).

It also stands in for the **OpenAI embeddings API**: ``POST /v1/embeddings`` as the official ``openai``
client and LlamaIndex's ``OpenAIEmbedding`` call it with ``base_url=<url>/v1`` (Bearer key from
``--openai-key-env``, default OPENAI_API_KEY; unset: every key is refused), OpenAI's limits, error shape and
``x-ratelimit-*`` headers, rate limits (``--openai-rpm``/``--openai-tpm``) and injected latency and errors;
deterministic vectors (``--openai-vectors semantic``: MiniLM projected isometrically to 1536/3072-d, or
``hash``). The logic and its settings are in ``runbook.rehearsal.openai_stand_in``; ``/_emulator/openai``
(stats), ``/_emulator/openai/log`` (GET, DELETE) and ``/_emulator/openai/limits`` (POST) manage it.

``POST /pipelines/{id}/retrieve`` imitates LlamaCloud's hybrid search and reranking (an approximation: how
the service does it is not public; the ranking code is ``runbook.rehearsal.cloud_ranking``). Each ranking
field (``dense_similarity_top_k``, ``dense_similarity_cutoff``, ``sparse_similarity_top_k``, ``alpha``,
``enable_reranking``, ``rerank_top_n``, ``search_filters``) comes from the body, else the pipeline's
``preset_retrieval_parameters``, else the API's default (30, 0, 30, null, null, 6, none); a null counts as
not given. Out-of-range values are a FastAPI-shaped 422.

- ``alpha`` null or 1: exact dense cosine, ``dense_similarity_top_k`` chunks at or above the cutoff; the
  score is the cosine.
- ``alpha`` 0: BM25 over the chunk texts only (character bigrams for Korean), ``sparse_similarity_top_k``
  chunks with a score above 0; the score is the BM25 score min-max normalised over those candidates (the
  best is 1.0).
- ``0 < alpha < 1``: the dense candidates (top k after the cutoff) and the sparse ones, each min-max
  normalised over its own list, fused as ``alpha * dense + (1 - alpha) * sparse`` (0 where a chunk is
  missing from a list); **up to max(dense_similarity_top_k, sparse_similarity_top_k) results**, scored by
  the fused score in [0, 1].
- ``enable_reranking`` true: those results reordered by a deterministic stand-in for a reranking model
  (query-term coverage and proximity, a little of the incoming score), at most ``rerank_top_n`` of them,
  scored in [0, 1].
- ``search_filters`` restrict the dense and the sparse candidates before their top k is taken. A corpus
  without text search (``SyntheticCorpus``) answers dense-only and says so in ``metadata["sparse"]``.

``retrieval_latency`` gives ``dense_retrieval``, ``sparse_retrieval`` and ``reranking`` (ms) for what ran;
``metadata`` says what was done (``search``, ``sparse``, ``reranking``, ``unsearchable_chunks``).

    python -m runbook.rehearsal.cloud_emulator --corpus demo --port 8787   # Gemini key from GOOGLE_API_KEY
    python -m runbook.rehearsal.cloud_emulator --corpus /data/vector_db/welno/backup/exports/<id> --port 8787
    python -m runbook.rehearsal.cloud_emulator --corpus hostile --serve-embeddings   # every awkward case at once
    python -m runbook.rehearsal.cloud_emulator --corpus demo-openai --openai-tpm 1000000   # a text-embedding-3-small index
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import metadata_filters
from . import cloud_ranking, openai_stand_in
from . import corpus as corpus_mod

API = "/api/v1"


@dataclass
class Faults:
    """Fault injection. Rates are probabilities per API request (health and admin paths are exempt)."""

    latency_ms: float = 0.0
    rate_429: float = 0.0
    retry_after_ms: int = 50
    rate_500: float = 0.0
    rate_503: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    drop_rate: float = 0.0
    path_pattern: str = ""  # only paths matching this regex get faults ("" = all API paths)
    # a server that returns at most this many documents per listing page, whatever `limit` asks (0: no cap)
    max_page_size: int = 0
    # corpus change between two listings: after this many paginated listing requests, apply `change`
    change_after_listings: int = 0
    # or after this many chunk requests were answered (a change that lands after those documents were fetched)
    change_after_chunks: int = 0
    change: dict = field(default_factory=dict)  # {"action": "delete"|"add", "document_id": ...}
    # how retrieve names the chunks it returns: "listing" (the ids /chunks serves) or "other" (another id for
    # each chunk: a source where phase 05 cannot compare the arms by chunk id)
    retrieve_ids: str = "listing"
    seed: int | None = None


class _State:
    def __init__(
        self,
        corpus,
        api_key: str,
        serve_embeddings: bool,
        google_key: str = "",
        openai: openai_stand_in.OpenAIStandIn | None = None,
    ):
        self.corpus = corpus
        self.api_key = api_key
        self.google_key = google_key  # the key the Gemini stand-in accepts ("": it refuses every key)
        self.openai = openai or openai_stand_in.OpenAIStandIn("")  # POST /v1/embeddings
        self.serve_embeddings = serve_embeddings
        self.faults = Faults()
        self.rng = random.Random()
        self.requests: list[tuple[str, str]] = []
        self.listings = 0
        self.chunk_requests = 0
        self.injected: dict[str, int] = {}
        self.lock = threading.Lock()

    def set_faults(self, **kw):
        with self.lock:
            self.faults = Faults(**kw)
            self.rng = random.Random(self.faults.seed)
            self.listings = 0
            self.chunk_requests = 0


def _unquote_segments(path: str) -> list[str]:
    """The path's segments, each percent-decoded exactly once (``%2F`` inside an id stays in that id,
    ``%2541`` is the id ``%41``)."""
    return [urllib.parse.unquote(s, errors="strict") for s in path.split("/")]


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_bytes(body) -> bytes:
    """A response body as Python's ``json`` writes it (``NaN``, ``Infinity``, ``-Infinity``, integers of any
    size, control characters such as NUL as ``\\u0000``), UTF-8 with non-ASCII as it is. A lone surrogate
    (a str that is not valid Unicode) cannot be UTF-8: it is written as its ``\\udXXX`` escape, which
    Python's ``json`` (and so httpx's ``.json()``) reads back as the same lone surrogate."""
    text = json.dumps(body, ensure_ascii=False)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8")


def _validation_error(loc, msg, typ="value_error"):
    return 422, {"detail": [{"loc": loc, "msg": msg, "type": typ}]}


def _int_param(q, name, default, lo=0, hi=10_000):
    raw = q.get(name, [None])[0]
    if raw is None or raw == "":
        return default, None
    try:
        v = int(raw)
    except ValueError:
        return None, _validation_error(["query", name], "Input should be a valid integer", "int_parsing")
    if v < lo or v > hi:
        return None, _validation_error(
            ["query", name], f"Input should be between {lo} and {hi}", "value_error"
        )
    return v, None


# LlamaCloud's search_filters (MetadataFilters, nested allowed): the one implementation the local arm uses too
make_predicate = metadata_filters.predicate


OPENAI_EMBEDDINGS = "/v1/embeddings"  # the OpenAI embeddings stand-in (before the Gemini routes under /v1/)

# ---- the Gemini API stand-in (google-genai's routes; see the module docstring)
GEMINI_PREFIXES = ("/v1beta/", "/v1/", "/v1alpha/")
_GEMINI_MODEL = re.compile(r"^(gemini|gemma)-[A-Za-z0-9.\-]+$")
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_GOOGLE_MESSAGE = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}


def _google_error(code: int, message: str = "", details: list | None = None):
    """(status, body) in the shape Google's APIs answer errors with."""
    err = {"code": code, "message": message or _GOOGLE_MESSAGE.get(code, ""), "status": _GOOGLE_STATUS[code]}
    if details:
        err["details"] = details
    return code, {"error": err}


def _key_invalid():
    msg = "API key not valid. Please pass a valid API key."
    return _google_error(
        400,
        msg,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": msg},
        ],
    )


def _gemini_model(model_id: str) -> dict:
    return {
        "name": f"models/{model_id}",
        "version": "local-1",
        "displayName": f"{model_id} (local stand-in)",
        "description": "Deterministic stand-in: answers from the context passages in the prompt",
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 8192,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
        "temperature": 1.0,
        "maxTemperature": 2.0,
        "topP": 0.95,
        "topK": 64,
    }


_CONTEXT = re.compile(r"-{5,}\n(.*?)\n-{5,}", re.S)  # LlamaIndex's QA/refine templates fence the context
_META_LINE = re.compile(r"^[A-Za-z_][\w\- ]{0,40}: ?")


def _first_sentence(text: str, limit: int = 200) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    flat = " ".join(" ".join(lines).split())
    m = re.match(r"(.+?[.!?。])(?=\s|$)", flat)
    out = m.group(1) if m else flat
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _passages(context: str) -> list[dict]:
    """Context passages as LlamaIndex formats nodes: an optional "key: value" metadata block, a blank line,
    the text (itself possibly several paragraphs); passages are joined by blank lines."""
    blocks = [b.strip("\n") for b in re.split(r"\n\s*\n", context) if b.strip()]

    def meta(block):
        lines = block.splitlines()
        if not all(_META_LINE.match(ln) for ln in lines):
            return None
        return dict(ln.split(":", 1) for ln in lines)

    metas = [meta(b) for b in blocks]
    with_meta = any(m is not None for m in metas)
    out: list[dict] = []
    for block, m in zip(blocks, metas, strict=True):
        if m is not None:
            out.append({"meta": {k.strip(): v.strip() for k, v in m.items()}, "text": ""})
        elif not with_meta or not out:
            out.append({"meta": {}, "text": block})
        elif not out[-1]["text"]:
            out[-1]["text"] = block
    return out


def gemini_answer(prompt: str, shown: int = 3) -> str:
    """The stand-in's deterministic answer: how many passages the prompt's context holds, and the title and
    first sentence of the first ``shown`` of them."""
    m = _CONTEXT.search(prompt)
    if not m:
        return f"(local Gemini stand-in: no context passages in the prompt) {_first_sentence(prompt)}"
    passages = _passages(m.group(1))
    parts = []
    for i, p in enumerate(passages[:shown], 1):
        title = p["meta"].get("title") or p["meta"].get("file_name") or ""
        sentence = _first_sentence(p["text"]) if p["text"] else ""
        parts.append(f"[{i}] " + (f"{title}: {sentence}" if title and sentence else title or sentence))
    if len(passages) > shown:
        parts.append(f"(and {len(passages) - shown} more)")
    n = len(passages)
    return f"Based on {n} passage{'' if n == 1 else 's'}: " + " ".join(parts)


def _prompt_text(body: dict) -> str:
    """The text of the last user turn (where LlamaIndex puts the context and the question)."""
    contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
    users = [c for c in contents if c.get("role", "user") == "user"] or contents
    parts = (users[-1].get("parts") if users else None) or []
    return "\n".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


def _tokens(text: str) -> int:
    return len(text.split())


def _gemini_response(
    model_id: str, answer: str, prompt_tokens: int, final: bool = True, answer_tokens: int | None = None
) -> dict:
    out = {
        "candidates": [{"content": {"parts": [{"text": answer}], "role": "model"}, "index": 0}],
        "modelVersion": model_id,
    }
    if final:
        answer_tokens = _tokens(answer) if answer_tokens is None else answer_tokens
        out["candidates"][0]["finishReason"] = "STOP"
        out["usageMetadata"] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": answer_tokens,
            "totalTokenCount": prompt_tokens + answer_tokens,
        }
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llamacloud-emulator/1"
    # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds a small body until the
    # client's delayed ACK, about 40-50 ms on every small answer of a kept-alive connection (a lookup, a listing
    # page, a short document's chunks), which a real service does not add; the first request of a connection
    # was spared, so the stall showed only from the second request on
    disable_nagle_algorithm = True
    state: _State  # set on the subclass made per server

    def log_message(self, *args):  # quiet
        pass

    # ---- plumbing
    def _send(self, status: int, body, headers: dict | None = None):
        data = json_bytes(body)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        return json.loads(raw.decode("utf-8"))

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method: str):
        st = self.state
        parsed = urllib.parse.urlsplit(self.path)
        raw_path = parsed.path
        query = urllib.parse.parse_qs(parsed.query)
        if raw_path == OPENAI_EMBEDDINGS:
            return self._openai(method)
        if raw_path.startswith(GEMINI_PREFIXES):
            return self._gemini(method, raw_path, query)
        try:
            body = self._body() if method in ("POST", "PUT", "PATCH") else None
        except (ValueError, UnicodeDecodeError):
            return self._send(
                422, {"detail": [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]}
            )
        if raw_path == "/_emulator/health":
            return self._send(200, {"status": "ok"})
        if not self._authorized():
            with st.lock:
                st.requests.append((method, urllib.parse.unquote(raw_path)))
            return self._send(401, {"detail": "Invalid authentication token"})
        if raw_path.startswith("/_emulator/"):
            return self._admin(method, raw_path, body)
        with st.lock:
            st.requests.append((method, urllib.parse.unquote(raw_path)))
        if self._inject_fault(raw_path):
            return
        if method != "GET" and not raw_path.endswith("/retrieve"):
            return self._send(
                405, {"detail": "Method Not Allowed: the local server serves the read API only"}
            )
        try:
            status, payload = self._route(method, raw_path, query, body)
        except Exception as e:  # noqa: BLE001 - an internal error is a 500, as the real API would answer
            status, payload = 500, {"detail": f"internal error: {type(e).__name__}: {e}"}
        self._send(status, payload)

    def _authorized(self) -> bool:
        auth = self.headers.get("authorization") or ""
        return bool(self.state.api_key) and auth == f"Bearer {self.state.api_key}"

    def _inject_fault(self, path: str, google: bool = False) -> bool:
        st = self.state
        f = st.faults
        if f.path_pattern and not re.search(f.path_pattern, urllib.parse.unquote(path)):
            return False
        if f.latency_ms:
            time.sleep(f.latency_ms / 1000)
        with st.lock:
            r = st.rng.random()
        edges = [
            ("drop", f.drop_rate),
            ("429", f.rate_429),
            ("500", f.rate_500),
            ("503", f.rate_503),
            ("slow", f.slow_rate),
        ]
        acc = 0.0
        for name, rate in edges:
            acc += rate
            if r < acc:
                with st.lock:
                    st.injected[name] = st.injected.get(name, 0) + 1
                if name == "drop":
                    self._drop()
                elif google:  # Gemini paths answer faults in Google's error shape
                    code = {"429": 429, "500": 500, "503": 503}.get(name)
                    if code is None:
                        time.sleep(f.slow_seconds)
                        return False
                    self._send(*_google_error(code))
                elif name == "429":
                    self._send(
                        429,
                        {"detail": "Too Many Requests"},
                        {
                            "retry-after-ms": str(f.retry_after_ms),
                            "retry-after": str(max(1, f.retry_after_ms // 1000)),
                        },
                    )
                elif name == "500":
                    self._send(500, {"detail": "Internal Server Error"})
                elif name == "503":
                    self._send(503, {"detail": "Service Unavailable"})
                else:
                    time.sleep(f.slow_seconds)
                    return False  # the slow response still answers (the client may have given up)
                return True
        return False

    def _admin(self, method, path, body):
        st = self.state
        if path.startswith("/_emulator/openai"):
            return self._openai_admin(method, path, body)
        if path == "/_emulator/requests":
            with st.lock:
                return self._send(200, {"requests": [list(r) for r in st.requests]})
        if path == "/_emulator/faults" and method == "POST":
            st.set_faults(**(body or {}))
            return self._send(200, asdict(st.faults))
        if path == "/_emulator/delete_document" and method == "POST":
            return self._send(200, {"deleted": st.corpus.delete_document(body["document_id"])})
        if path == "/_emulator/stats":
            return self._send(
                200, {"documents": st.corpus.total_documents(), "chunks": st.corpus.total_chunks()}
            )
        return self._send(404, {"detail": "Not Found"})

    # ---- the OpenAI embeddings stand-in (runbook.rehearsal.openai_stand_in holds the logic)
    def _openai(self, method: str):
        st = self.state
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""  # read first: the connection is reused
        with st.lock:
            st.requests.append((method, OPENAI_EMBEDDINGS))
        if method != "POST":
            return self._send(
                *openai_stand_in.error(405, f"Invalid method for URL ({method} {OPENAI_EMBEDDINGS})")
            )
        self._send(*st.openai.handle(dict(self.headers.items()), raw))

    def _openai_admin(self, method, path, body):
        oai = self.state.openai
        if path == "/_emulator/openai" and method == "GET":
            return self._send(200, oai.stats())
        if path == "/_emulator/openai/log" and method == "GET":
            return self._send(200, {"log": oai.log()})
        if path == "/_emulator/openai/log" and method == "DELETE":
            return self._send(200, {"cleared": oai.clear_log()})
        if path == "/_emulator/openai/limits" and method == "POST":
            try:
                limits = oai.set_limits(**(body or {}))
            except (TypeError, ValueError) as e:
                return self._send(*_validation_error(["body"], str(e)))
            return self._send(200, asdict(limits))
        return self._send(404, {"detail": "Not Found"})

    # ---- the Gemini API stand-in
    def _gemini(self, method: str, raw_path: str, query: dict):
        st = self.state
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""  # read first: the connection is reused
        path = urllib.parse.unquote(raw_path)
        with st.lock:
            st.requests.append((method, path))
        sent = self.headers.get("x-goog-api-key") or (query.get("key") or [""])[0]
        if not sent:
            return self._send(
                *_google_error(
                    403,
                    "Method doesn't allow unregistered callers (callers without established identity). "
                    "Please use API Key or other form of API consumer identity to call this API.",
                )
            )
        if not st.google_key or sent != st.google_key:
            return self._send(*_key_invalid())
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except (ValueError, UnicodeDecodeError):
            return self._send(*_google_error(400, "Invalid JSON payload received."))
        if self._inject_fault(raw_path, google=True):
            return
        version, _, rest = path[1:].partition("/")
        if rest == "models" and method == "GET":
            return self._send(
                200, {"models": [_gemini_model("gemini-2.0-flash"), _gemini_model("gemini-2.5-flash")]}
            )
        m = re.fullmatch(r"models/([^/:]+)(?::(\w+))?", rest)
        if not m:
            return self._send(*_google_error(404, "Method not found."))
        model_id, verb = m.groups()
        if not _GEMINI_MODEL.match(model_id):
            return self._send(
                *_google_error(
                    404,
                    f"models/{model_id} is not found for API version {version}, or is not supported for "
                    f"{verb or 'get'}. Call ListModels to see the list of available models and their "
                    "supported methods.",
                )
            )
        if verb is None and method == "GET":
            return self._send(200, _gemini_model(model_id))
        if method != "POST" or verb not in ("generateContent", "streamGenerateContent", "countTokens"):
            return self._send(*_google_error(404, "Method not found."))
        if not isinstance(body, dict) or not body.get("contents"):
            return self._send(
                *_google_error(400, "* GenerateContentRequest.contents: contents is not specified\n")
            )
        prompt = _prompt_text(body)
        system = (body.get("systemInstruction") or body.get("system_instruction") or {}).get("parts") or []
        prompt_tokens = _tokens(prompt) + sum(_tokens(p.get("text") or "") for p in system)
        if verb == "countTokens":
            return self._send(200, {"totalTokens": prompt_tokens})
        answer = gemini_answer(prompt)
        if verb == "generateContent":
            return self._send(200, _gemini_response(model_id, answer, prompt_tokens))
        # streamGenerateContent: two chunks, the last with finishReason and usage (SSE with alt=sse)
        cut = len(answer) // 2
        chunks = [
            _gemini_response(model_id, answer[:cut], prompt_tokens, final=False),
            _gemini_response(model_id, answer[cut:], prompt_tokens, answer_tokens=_tokens(answer)),
        ]
        if (query.get("alt") or [""])[0] != "sse":
            return self._send(200, chunks)
        data = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\r\n\r\n" for c in chunks).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # ---- the API
    def _route(self, method, raw_path, q, body):
        st = self.state
        c = st.corpus
        if not raw_path.startswith(API + "/"):
            return 404, {"detail": "Not Found"}
        try:
            seg = _unquote_segments(raw_path[len(API) + 1 :])
        except UnicodeDecodeError:  # percent-escapes that are not UTF-8 name nothing served here
            return 404, {"detail": "Not Found: the path's percent-escapes are not UTF-8"}
        project, pipeline = c.project, c.pipeline
        if seg == ["projects"]:
            items = [project]
            if q.get("project_name") and q["project_name"][0] != project["name"]:
                items = []
            if q.get("organization_id") and q["organization_id"][0] != project["organization_id"]:
                items = []
            return 200, items
        if len(seg) == 2 and seg[0] == "projects":
            return (200, project) if seg[1] == project["id"] else (404, {"detail": "Project not found"})
        if seg == ["pipelines"]:
            ok = True
            for key, val in (
                ("project_id", project["id"]),
                ("project_name", project["name"]),
                ("pipeline_name", pipeline["name"]),
                ("pipeline_type", pipeline["pipeline_type"]),
                ("organization_id", project["organization_id"]),
            ):
                if q.get(key) and q[key][0] != val:
                    ok = False
            return 200, [pipeline] if ok else []
        if len(seg) < 2 or seg[0] != "pipelines":
            return 404, {"detail": "Not Found"}
        if seg[1] != pipeline["id"]:
            return 404, {"detail": f"Pipeline {seg[1]} not found"}
        rest = seg[2:]
        if rest == []:
            return 200, pipeline
        if rest == ["status"]:
            return 200, {"status": "SUCCESS", "job_id": None, "error": None, "pipeline_id": pipeline["id"]}
        if rest in (["documents"], ["documents", "paginated"]):
            skip, err = _int_param(q, "skip", 0, 0, 10**9)
            if err:
                return err
            limit, err = _int_param(q, "limit", 10, 1, 10_000)  # both listings default to 10
            if err:
                return err
            if self.state.faults.max_page_size:
                limit = min(limit, self.state.faults.max_page_size)
            docs, total = c.documents_page(skip, limit)
            if rest == ["documents"]:
                return 200, docs
            self._maybe_change()
            return 200, {"documents": docs, "limit": limit, "offset": skip, "total_count": total}
        if len(rest) == 2 and rest[0] == "documents":
            doc = c.get_document(rest[1])
            return (200, doc) if doc else (404, {"detail": f"Document {rest[1]} not found"})
        if len(rest) == 3 and rest[0] == "documents" and rest[2] == "chunks":
            chunks = c.get_chunks(rest[1], st.serve_embeddings)
            self._maybe_change(chunks=True)
            return (200, chunks) if chunks is not None else (404, {"detail": f"Document {rest[1]} not found"})
        if rest == ["files2"]:
            limit, err = _int_param(q, "limit", 100, 1, 10_000)
            if err:
                return err
            offset, err = _int_param(q, "offset", 0, 0, 10**9)
            if err:
                return err
            docs, total = c.documents_page(offset, limit)
            files = [
                {
                    "id": (d["metadata"] or {}).get("file_id") or d["id"],
                    "name": (d["metadata"] or {}).get("file_name"),
                    "pipeline_id": pipeline["id"],
                    "project_id": project["id"],
                    "status": "SUCCESS",
                    "file_size": (d["metadata"] or {}).get("file_size"),
                }
                for d in docs
            ]
            return 200, {"files": files, "limit": limit, "offset": offset, "total_count": total}
        if rest == ["retrieve"] and method == "POST":
            return self._retrieve(body or {})
        return 404, {"detail": "Not Found"}

    def _maybe_change(self, chunks: bool = False):
        st = self.state
        f = st.faults
        with st.lock:
            if chunks:
                st.chunk_requests += 1
                fire = f.change_after_chunks and st.chunk_requests == f.change_after_chunks and f.change
            else:
                st.listings += 1
                fire = f.change_after_listings and st.listings == f.change_after_listings and f.change
        if fire:
            if f.change.get("action") == "delete":
                st.corpus.delete_document(f.change["document_id"])
            elif f.change.get("action") == "add":
                st.corpus.put_document(f.change["document"], f.change.get("chunks", []), None)

    def _retrieve(self, body):
        st = self.state
        if not isinstance(body.get("query"), str):
            return _validation_error(["body", "query"], "Field required", "missing")
        preset = st.corpus.pipeline.get("preset_retrieval_parameters") or {}
        mode = body.get("retrieval_mode") or "chunks"
        if mode != "chunks":
            return 400, {"detail": f"retrieval_mode {mode!r} is not served by the local server; use 'chunks'"}
        params, err = retrieval_params(body, preset)
        if err:
            return err
        try:
            predicate = make_predicate(params["search_filters"])
        except ValueError as e:
            return _validation_error(["body", "search_filters"], str(e))
        try:
            hits, latency, meta = rank_chunks(st.corpus, body["query"], params, predicate)
        except NotImplementedError as e:
            return 501, {"detail": str(e)}
        nodes = []
        for node, score in hits:
            n = dict(node)
            n["embedding"] = None
            if st.faults.retrieve_ids == "other":
                n["id_"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"retrieve/{n['id_']}"))
            nodes.append({"node": n, "score": score, "class_name": "TextNodeWithScore"})
        return 200, {
            "pipeline_id": st.corpus.pipeline["id"],
            "retrieval_nodes": nodes,
            "image_nodes": [],
            "page_figure_nodes": [],
            "retrieval_latency": latency,
            "metadata": meta,
            "inferred_search_filters": None,
            "class_name": "RetrieveResults",
        }


# ---- retrieve: parameters, and dense / hybrid / reranked ranking (see the module docstring)
RETRIEVAL_DEFAULTS = {  # the API's defaults (ref: RetrievalParams)
    "dense_similarity_top_k": 30,
    "dense_similarity_cutoff": 0.0,
    "sparse_similarity_top_k": 30,
    "enable_reranking": None,
    "rerank_top_n": 6,
    "alpha": None,
    "search_filters": None,
}


def retrieval_params(body: dict, preset: dict) -> tuple[dict, tuple | None]:
    """Every ranking field of ``RETRIEVAL_DEFAULTS`` from the request body, else the pipeline's
    ``preset_retrieval_parameters``, else the API's default (a null counts as not given), checked as FastAPI
    would: (params, None), or (None, a 422 naming the field; a bad preset value is named under
    ``preset_retrieval_parameters``)."""
    params = {}
    for name, default in RETRIEVAL_DEFAULTS.items():
        if body.get(name) is not None:
            value, loc = body[name], ["body", name]
        elif preset.get(name) is not None:
            value, loc = preset[name], ["preset_retrieval_parameters", name]
        else:
            params[name] = default
            continue
        value, problem = _check_param(name, value)
        if problem:
            return None, _validation_error(loc, *problem)
        params[name] = value
    return params, None


def _check_param(name: str, value):
    """(the value to use, None) or (None, (message, pydantic error type))."""
    if name in ("dense_similarity_top_k", "sparse_similarity_top_k", "rerank_top_n"):
        least = 1 if name == "rerank_top_n" else 0
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return None, ("Input should be a valid integer", "int_type")
        if value < least:
            return None, (f"Input should be greater than or equal to {least}", "greater_than_equal")
        return value, None
    if name in ("alpha", "dense_similarity_cutoff"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, ("Input should be a valid number", "float_type")
        value = float(value)
        if not math.isfinite(value):
            return None, ("Input should be a finite number", "finite_number")
        if name == "alpha" and not 0.0 <= value <= 1.0:
            bound = "greater than or equal to 0" if value < 0 else "less than or equal to 1"
            return None, (
                f"Input should be {bound}",
                "greater_than_equal" if value < 0 else "less_than_equal",
            )
        return value, None
    if name == "enable_reranking":
        if not isinstance(value, bool):
            return None, ("Input should be a valid boolean", "bool_type")
        return value, None
    if not isinstance(value, dict):  # search_filters
        return None, ("Input should be a valid dictionary or instance of MetadataFilters", "model_type")
    return value, None


def _timed(latency: dict, name: str, fn, *args):
    """``fn(*args)``, its wall time in ms recorded under ``latency[name]``."""
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        latency[name] = (time.perf_counter() - t0) * 1000


def _node_key(node: dict) -> tuple[str, str]:
    """A chunk's identity across the dense and sparse lists: (its document's id, its chunk id)."""
    source = (node.get("relationships") or {}).get("1") or {}
    return str(source.get("node_id") or ""), str(node.get("id_"))


def _sparse_hits(corpus, query: str, top_k: int, predicate, latency: dict):
    """(the corpus's BM25 hits, or None when it has no text search; what ``metadata["sparse"]`` says)."""
    search = getattr(corpus, "sparse_search", None)
    if search is None:
        return None, "not available for this corpus (no text search): dense cosine only"
    try:
        hits = _timed(latency, "sparse_retrieval", search, query, top_k, predicate)
    except NotImplementedError as e:
        latency.pop("sparse_retrieval", None)
        return None, f"not available for this corpus ({e}): dense cosine only"
    note = (
        f"BM25 over character bigrams and words (local imitation): {len(hits)} candidate(s), "
        f"sparse_similarity_top_k {top_k}"
    )
    return hits, note


def rank_chunks(corpus, query: str, p: dict, predicate) -> tuple[list[tuple[dict, float]], dict, dict]:
    """The retrieved chunks as (node, score), best first, with ``retrieval_latency`` and ``metadata``.

    Raises NotImplementedError when the dense search it needs is not offered."""
    latency: dict[str, float] = {}
    meta: dict[str, str] = {}
    alpha = p["alpha"]
    sparse_hits = None
    if alpha is not None and alpha < 1.0:
        sparse_hits, meta["sparse"] = _sparse_hits(
            corpus, query, p["sparse_similarity_top_k"], predicate, latency
        )
    dense_hits = []
    if sparse_hits is None or alpha > 0.0:
        args = (query, p["dense_similarity_top_k"], p["dense_similarity_cutoff"], predicate)
        dense_hits = _timed(latency, "dense_retrieval", corpus.search, *args)
        skipped = getattr(corpus, "unsearchable", None)
        if skipped:
            meta["unsearchable_chunks"] = (
                f"{len(skipped)} chunk(s) left out of dense search: their vectors have the wrong dimension, "
                "non-finite elements or a zero norm"
            )
    if sparse_hits is None:
        hits = dense_hits
        meta["search"] = "exact dense cosine (local LlamaCloud-compatible server)"
    else:
        hits, meta["search"] = _fused(dense_hits, sparse_hits, alpha, p)
    if p["enable_reranking"]:
        top_n = p["rerank_top_n"]
        candidates = [(i, node.get("text"), score) for i, (node, score) in enumerate(hits)]
        ranked = _timed(latency, "reranking", cloud_ranking.rerank, query, candidates, top_n)
        hits = [(hits[i][0], score) for i, score in ranked]
        meta["reranking"] = (
            f"reranked: query-term coverage and proximity (local imitation of a reranking model), "
            f"top {top_n} of {len(candidates)}"
        )
    return hits, latency, meta


def _fused(dense_hits, sparse_hits, alpha: float, p: dict):
    """(the fused list as (node, score), what ``metadata["search"]`` says)."""
    by_key = {_node_key(n): n for n, _ in dense_hits + sparse_hits}
    fused = cloud_ranking.fuse(
        [(_node_key(n), s) for n, s in dense_hits], [(_node_key(n), s) for n, s in sparse_hits], alpha
    )
    if alpha == 0.0:
        return [(by_key[k], s) for k, s in fused], (
            "sparse only (alpha 0): BM25 over character bigrams and words (local imitation), scores "
            "min-max normalised over the candidates"
        )
    keep = max(p["dense_similarity_top_k"], p["sparse_similarity_top_k"])
    note = (
        f"hybrid: alpha {alpha:g}, exact dense cosine + BM25 over character bigrams (local imitation), each "
        f"min-max normalised, fused as alpha * dense + (1 - alpha) * sparse; up to {keep} results"
    )
    return [(by_key[k], s) for k, s in fused[:keep]], note


class EmulatorServer:
    """The server in a background thread of this process; a context manager for tests."""

    def __init__(
        self,
        corpus,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        serve_embeddings: bool = False,
        google_key: str = "",
        openai_key: str = "",
        openai_limits: openai_stand_in.Limits | dict | None = None,
        openai_vectors: str = "semantic",
        embed_cache=None,
    ):
        """``openai_key``: the Bearer key ``POST /v1/embeddings`` accepts ("": it refuses every key);
        ``openai_limits``: ``openai_stand_in.Limits`` or its fields; ``embed_cache``: the embedding cache (or
        its path) the semantic OpenAI stand-in reads MiniLM vectors from (the corpus's own, for vectors equal
        to the ones it was built with)."""
        oai = openai_stand_in.OpenAIStandIn(openai_key, openai_limits, openai_vectors, embed_cache)
        self.state = _State(corpus, api_key, serve_embeddings, google_key, oai)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 128
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="llamacloud-emulator", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def corpus(self):
        return self.state.corpus

    def set_faults(self, **kw):
        self.state.set_faults(**kw)

    def set_google_key(self, key: str):
        """The key the Gemini stand-in accepts from now on ("" refuses every key)."""
        with self.state.lock:
            self.state.google_key = key

    @property
    def openai(self) -> openai_stand_in.OpenAIStandIn:
        """The OpenAI embeddings stand-in (its ``log()``, ``stats()``, ``set_limits(...)``)."""
        return self.state.openai

    def set_openai_key(self, key: str):
        """The key the OpenAI embeddings stand-in accepts from now on ("" refuses every key)."""
        self.state.openai.set_api_key(key)

    def set_openai_limits(self, **limits) -> openai_stand_in.Limits:
        """Replace the OpenAI stand-in's limits (``openai_stand_in.Limits`` fields; others take defaults)."""
        return self.state.openai.set_limits(**limits)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SubprocessHandle:
    proc: subprocess.Popen
    url: str

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def admin_request(url: str, path: str, api_key: str, body: dict | None = None) -> dict:
    """A running server's admin route (``/_emulator/...``): GET, or POST with ``body``. ``api_key``: the
    server's LlamaCloud key."""
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {api_key}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def set_faults_remote(url: str, api_key: str, **faults) -> dict:
    """Set fault injection on a running server (e.g. one started with ``start_subprocess``)."""
    return admin_request(url, "/_emulator/faults", api_key, faults)


def set_openai_limits_remote(url: str, api_key: str, **limits) -> dict:
    """Replace the OpenAI embeddings stand-in's limits on a running server (``openai_stand_in.Limits``
    fields; those not given take their defaults)."""
    return admin_request(url, "/_emulator/openai/limits", api_key, limits)


def wait_healthy(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the local LlamaCloud-compatible server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_emulator/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(
        f"the local LlamaCloud-compatible server at {url} did not become healthy in {timeout:.0f} s"
    )


def start_subprocess(
    corpus: str,
    api_key_env: str = "LLAMA_CLOUD_API_KEY",
    port: int = 0,
    embed_cache: str = "",
    serve_embeddings: bool = False,
    google_key_env: str = "GOOGLE_API_KEY",
    openai_key_env: str = "OPENAI_API_KEY",
    openai_vectors: str = "semantic",
    openai_limits: dict | None = None,
) -> SubprocessHandle:
    """Start ``python -m runbook.rehearsal.cloud_emulator`` on a free loopback port; the keys come from the env
    (the Gemini stand-in accepts the value of ``google_key_env``, the OpenAI embeddings stand-in that of
    ``openai_key_env``; each refuses every key when its variable is unset). ``openai_limits``: fields of
    ``openai_stand_in.Limits`` (e.g. ``{"tpm": 1_000_000, "latency_ms": 80, "error_rate": 0.01}``)."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "runbook.rehearsal.cloud_emulator",
        "--corpus",
        corpus,
        "--port",
        str(port),
        "--api-key-env",
        api_key_env,
        "--google-key-env",
        google_key_env,
        "--openai-key-env",
        openai_key_env,
        "--openai-vectors",
        openai_vectors,
    ]
    if openai_limits:
        cmd += ["--openai-limits", json.dumps(openai_limits)]
    if embed_cache:
        cmd += ["--embed-cache", embed_cache]
    if serve_embeddings:
        cmd.append("--serve-embeddings")
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc=proc)
    except Exception:
        proc.kill()
        err = proc.stderr.read().decode("utf-8", "replace")[-2000:] if proc.stderr else ""
        raise RuntimeError(f"could not start the local server for corpus {corpus!r}:\n{err}") from None
    return SubprocessHandle(proc, url)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m runbook.rehearsal.cloud_emulator``."""
    ap = argparse.ArgumentParser(
        prog="python -m runbook.rehearsal.cloud_emulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--corpus",
        default="demo",
        help="demo | demo-openai | demo-ko | hostile | synthetic:N[:D[:chunks_per_doc]][:realistic][:openai] | an export folder",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8787)
    ap.add_argument(
        "--api-key-env",
        default="LLAMA_CLOUD_API_KEY",
        help="environment variable holding the key clients must send (Bearer)",
    )
    ap.add_argument(
        "--google-key-env",
        default="GOOGLE_API_KEY",
        help="environment variable holding the key Gemini clients must send (x-goog-api-key); "
        "unset: the Gemini stand-in refuses every key",
    )
    ap.add_argument(
        "--openai-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the key OpenAI clients must send to /v1/embeddings (Bearer); "
        "unset: the OpenAI embeddings stand-in refuses every key",
    )
    ap.add_argument(
        "--openai-vectors",
        choices=openai_stand_in.VECTOR_MODES,
        default="semantic",
        help="the stand-in's vectors: semantic (MiniLM, projected isometrically), hash (fast, not semantic, nearly "
        "isotropic) or clustered (fast, not semantic, shaped like text embeddings)",
    )
    ap.add_argument("--openai-rpm", type=int, default=None, help="requests per minute (0: unlimited)")
    ap.add_argument("--openai-tpm", type=int, default=None, help="tokens per minute (0: unlimited)")
    ap.add_argument("--openai-latency-ms", type=float, default=None, help="latency added to every request")
    ap.add_argument(
        "--openai-error-rate", type=float, default=None, help="fraction of requests answered 500/503"
    )
    ap.add_argument(
        "--openai-burst-seconds",
        type=float,
        default=None,
        help="rate-limit bucket capacity in seconds of the limit (default 60)",
    )
    ap.add_argument(
        "--openai-limits",
        default="",
        help="JSON of openai_stand_in.Limits fields (the --openai-* options above take precedence)",
    )
    ap.add_argument(
        "--embed-cache", default="", help="SQLite embedding cache (demo vectors are computed once)"
    )
    ap.add_argument(
        "--serve-embeddings",
        action="store_true",
        help="fill `embedding` in /chunks (real LlamaCloud is not known to)",
    )
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..paths import PROJECT_ROOT

    key = os.environ.get(args.api_key_env)
    if not key:
        print(f"error: set {args.api_key_env} to the key clients must send", file=sys.stderr)
        return 2
    try:
        limits = openai_stand_in.Limits(**_openai_limits(args))
    except (TypeError, ValueError) as e:
        print(f"error: OpenAI stand-in limits: {e}", file=sys.stderr)
        return 2
    cache = args.embed_cache or str(PROJECT_ROOT / "data" / "cache" / "embeddings.sqlite")
    t0 = time.time()
    corpus = corpus_mod.load(args.corpus, cache)
    google_key = os.environ.get(args.google_key_env, "") if args.google_key_env else ""
    openai_key = os.environ.get(args.openai_key_env, "") if args.openai_key_env else ""
    srv = EmulatorServer(
        corpus,
        key,
        args.host,
        args.port,
        args.serve_embeddings,
        google_key,
        openai_key,
        limits,
        args.openai_vectors,
        cache,
    )
    print(
        f"serving {corpus.total_documents()} documents / {corpus.total_chunks()} chunks of "
        f"{corpus.pipeline['name']!r} at {srv.url} (loaded in {time.time() - t0:.1f} s); Gemini stand-in "
        + (
            f"at the same base URL, key from {args.google_key_env}"
            if google_key
            else f"refuses every key ({args.google_key_env or '--google-key-env'} is not set)"
        )
        + "; OpenAI embeddings stand-in at /v1/embeddings "
        + (
            f"({args.openai_vectors} vectors), key from {args.openai_key_env}"
            if openai_key
            else f"refuses every key ({args.openai_key_env or '--openai-key-env'} is not set)"
        ),
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.httpd.server_close()
    return 0


def _openai_limits(args) -> dict:
    """The OpenAI stand-in's Limits fields from ``--openai-limits`` (JSON) and the ``--openai-*`` options."""
    out = json.loads(args.openai_limits) if args.openai_limits else {}
    if not isinstance(out, dict):
        raise ValueError("--openai-limits must be a JSON object of Limits fields")
    for field_name, value in (
        ("rpm", args.openai_rpm),
        ("tpm", args.openai_tpm),
        ("latency_ms", args.openai_latency_ms),
        ("error_rate", args.openai_error_rate),
        ("burst_seconds", args.openai_burst_seconds),
    ):
        if value is not None:
            out[field_name] = value
    return out


if __name__ == "__main__":
    sys.exit(main())
