"""An OpenAI-compatible embeddings endpoint for rehearsals: the logic of ``POST /v1/embeddings``, which
``runbook.rehearsal.cloud_emulator`` serves at the same base URL as its LlamaCloud and Gemini stand-ins (point the
official ``openai`` client or LlamaIndex's ``OpenAIEmbedding`` at ``<url>/v1``). No HTTP server here:
``OpenAIStandIn.handle(headers, body)`` answers one request as ``(status, payload, headers)``.

What it imitates (see ``shared/reference/openai-embeddings.md``): Bearer auth; the models
``text-embedding-3-small`` (1536-d), ``text-embedding-3-large`` (3072-d) and ``text-embedding-ada-002``
(1536-d); ``dimensions`` for the text-embedding-3 models only; ``input`` as a string, a list of strings, a
token array or a list of token arrays; the per-request limits (inputs, tokens per input, tokens per
request; tokens counted with tiktoken's cl100k_base); ``encoding_format`` float or base64; OpenAI's error
shape ``{"error": {"message", "type", "param", "code"}}``; rate limits per minute as token buckets with the
``x-ratelimit-*`` headers and ``retry-after``/``retry-after-ms`` on a 429; injected latency, 5xx and 429.

The vectors are deterministic functions of (model, text), so a re-run and a stored export compare exactly:

- ``"semantic"``: the text's all-MiniLM-L6-v2 vector (384-d) times a fixed matrix with orthonormal columns
  (full dimension x 384, from a seed derived from the model name). That is an isometry: cosine similarities,
  and so retrieval rankings, are MiniLM's. Each row is projected on its own (one matrix-vector product of
  the same shape every time), so a vector does not depend on which other texts shared its request.
- ``"hash"``: unit vectors seeded from sha256(model + NUL + text): cheap, not semantic (benchmarks).
  Nearly isotropic: the hardest case for HNSW, far from what text embeddings are.
- ``"clustered"``: as cheap and as seeded, but shaped like text embeddings (one of 512 topics in 48 dimensions,
  projected into the full dimension, around a common mean, as ``corpus.SyntheticCorpus``'s realistic shape):
  for benchmarks of production's shape whose recall should be what real vectors give, not the worst case.

With ``dimensions=d`` the vector is the full vector's first d components renormalised to unit length, as
OpenAI documents for the text-embedding-3 models. ``vectors_for`` computes exactly what the endpoint
serves (tests use it for the expected values). For MiniLM vectors to match a corpus built from a cache
bit for bit, give the stand-in the same embedding cache.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import math
import os
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import embeddings

MODEL_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
DIMENSIONS_MODELS = ("text-embedding-3-small", "text-embedding-3-large")  # accept ``dimensions``
MINILM = embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384)
VECTOR_MODES = ("semantic", "hash", "clustered")
ORGANIZATION = "org-rehearsal"
REQUEST_FIELDS = {"model", "input", "dimensions", "encoding_format", "user"}
_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
)
_LIMITS_PAGE = "Visit https://platform.openai.com/account/rate-limits to learn more."


@dataclass
class Limits:
    """The stand-in's limits and injected faults (0 = unlimited for ``rpm`` and ``tpm``).

    Rate limits are two token buckets, one of requests and one of tokens: each holds ``limit *
    burst_seconds / 60`` (the request bucket at least 1), is refilled continuously at ``limit / 60`` per
    second and starts full. A request is admitted when the request bucket holds at least 1 and the token
    bucket at least the request's tokens; otherwise it gets a 429 saying how long until it would fit. A
    request with more tokens than the token bucket can ever hold never fits (a 429 "Request too large", as
    OpenAI answers over a low tier's TPM): keep ``tpm * burst_seconds / 60 >= max_request_tokens`` (e.g.
    ``burst_seconds >= 60 * max_request_tokens / tpm``) unless that is what a rehearsal wants to see.

    ``error_rate`` and ``rate_429`` are fractions of the admitted requests answered with an injected 500 or
    503 (even odds) or an injected 429 (with ``retry-after-ms: retry_after_ms``); ``seed`` fixes their
    random stream. ``latency_ms`` is slept at the start of every request, outside any lock.
    """

    rpm: int = 0
    tpm: int = 0
    max_inputs: int = 2048
    max_input_tokens: int = 8192
    max_request_tokens: int = 300_000
    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_429: float = 0.0
    retry_after_ms: int = 200
    burst_seconds: float = 60.0
    seed: int | None = None

    def __post_init__(self):
        for name in ("rpm", "tpm", "retry_after_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        for name in ("max_inputs", "max_input_tokens", "max_request_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("error_rate", "rate_429"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)}")
        if self.error_rate + self.rate_429 > 1.0:
            raise ValueError("error_rate + rate_429 must not exceed 1")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, not {self.latency_ms}")
        if not self.burst_seconds > 0:
            raise ValueError(f"burst_seconds must be > 0, not {self.burst_seconds}")


# ---------------------------------------------------------------- tokens (tiktoken cl100k_base)
_enc_lock = threading.Lock()
_encoding = None


def encoding():
    """tiktoken's cl100k_base. tiktoken downloads its BPE file on first use; unless TIKTOKEN_CACHE_DIR (or
    DATA_GYM_CACHE_DIR) names a cache, it is read from the copy llama-index-core ships (as LlamaIndex's own
    tokenizer does), so no network is needed."""
    global _encoding
    with _enc_lock:
        if _encoding is None:
            import tiktoken

            if os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR"):
                _encoding = tiktoken.get_encoding("cl100k_base")
            else:
                import llama_index.core

                static = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"
                os.environ["TIKTOKEN_CACHE_DIR"] = str(static)
                try:
                    _encoding = tiktoken.get_encoding("cl100k_base")
                finally:
                    os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        return _encoding


def count_tokens(texts: list[str]) -> list[int]:
    """cl100k_base token counts of ``texts`` (special tokens as plain text, as the API counts them)."""
    if not texts:
        return []
    return [len(t) for t in encoding().encode_ordinary_batch([_unicode(t) for t in texts])]


def _unicode(text: str) -> str:
    """``text`` with any lone surrogate (JSON can carry one; it is not Unicode text) replaced by U+FFFD,
    as ``export_format.embed_text`` does: what a model is given."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def text_sha256(text: str) -> str:
    """sha256 hex of the text's UTF-8 (a lone surrogate as its surrogate-escaped bytes)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------- vectors
_proj_lock = threading.Lock()
_projections: dict[str, np.ndarray] = {}


def projection(model: str) -> np.ndarray:
    """The model's fixed (full dimension x 384) float64 matrix with orthonormal columns (cached)."""
    with _proj_lock:
        q = _projections.get(model)
        if q is None:
            seed = int.from_bytes(hashlib.sha256(f"openai-stand-in\0{model}".encode()).digest()[:8], "little")
            a = np.random.default_rng(seed).standard_normal((MODEL_DIMS[model], MINILM.dimension))
            q, r = np.linalg.qr(a)
            q = np.ascontiguousarray(q * np.sign(np.diag(r)))  # the sign convention of a positive R diagonal
            q.flags.writeable = False
            _projections[model] = q
        return q


def _finish(full: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Unit length; with ``dimensions`` the first d components, renormalised (float64 in, float32 out)."""
    v = full if dimensions is None else full[:dimensions]
    norm = math.sqrt(float(np.dot(v, v)))
    return (v / norm if norm > 0 else v).astype(np.float32)


def project_minilm(minilm: np.ndarray, model: str, dimensions: int | None = None) -> np.ndarray:
    """Rows of MiniLM vectors (n x 384) as the ``semantic`` stand-in serves them for ``model``."""
    q = projection(model)
    m = np.asarray(minilm, dtype=np.float64).reshape(-1, MINILM.dimension)
    out = np.empty((m.shape[0], dimensions or q.shape[0]), dtype=np.float32)
    for i in range(m.shape[0]):  # one product of the same shape per row: independent of the batch
        out[i] = _finish(q @ m[i], dimensions)
    return out


def hash_vector(text: str, model: str, dimensions: int | None = None) -> np.ndarray:
    """The ``hash`` mode's vector: seeded from sha256(model + NUL + text), unit length."""
    digest = hashlib.sha256((model + "\0" + text).encode("utf-8", "surrogatepass")).digest()
    full = np.random.default_rng(int.from_bytes(digest, "little")).standard_normal(MODEL_DIMS[model])
    return _finish(full, dimensions)


_CLUSTERED_DIM, _CLUSTERED_TOPICS = 48, 512


@functools.cache
def _clustered_frame(model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(basis k x D with orthonormal rows, unit mean, topics) of the ``clustered`` mode, seeded by the model."""
    seed = int.from_bytes(hashlib.sha256(("clustered\0" + model).encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    full = MODEL_DIMS[model]
    basis, _ = np.linalg.qr(rng.standard_normal((full, _CLUSTERED_DIM)))
    mean = rng.standard_normal(full)
    return basis.T, mean / np.linalg.norm(mean), rng.standard_normal((_CLUSTERED_TOPICS, _CLUSTERED_DIM))


def clustered_vector(text: str, model: str, dimensions: int | None = None) -> np.ndarray:
    """The ``clustered`` mode's vector: a topic and the offsets from it seeded from sha256(model + NUL + text),
    in 48 dimensions projected into the model's, near a common mean (cosines about 0.4, as text embeddings
    have), unit length."""
    basis, mean, topics = _clustered_frame(model)
    digest = hashlib.sha256((model + "\0" + text).encode("utf-8", "surrogatepass")).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    z = topics[rng.integers(0, len(topics))] + 0.8 * rng.standard_normal(_CLUSTERED_DIM)
    z = z / np.linalg.norm(z)
    noise = rng.standard_normal(len(mean)) / math.sqrt(len(mean))
    return _finish(z @ basis + 0.8 * mean + 0.15 * noise, dimensions)


def vectors_for(
    texts: list[str], model: str, dimensions: int | None, mode: str = "semantic", cache=None
) -> np.ndarray:
    """Exactly the vectors the stand-in serves for ``texts`` (float32, one row each). ``cache``: an
    ``embeddings.EmbeddingCache`` or its path, for the MiniLM vectors of the semantic mode."""
    if model not in MODEL_DIMS:
        raise ValueError(f"unknown model {model!r}: {', '.join(MODEL_DIMS)}")
    if dimensions is not None and dimensions == MODEL_DIMS[model]:
        dimensions = None  # the full vector, already unit length: the same values either way
    width = dimensions or MODEL_DIMS[model]
    if not texts:
        return np.zeros((0, width), dtype=np.float32)
    if mode in ("hash", "clustered"):
        one = hash_vector if mode == "hash" else clustered_vector
        return np.stack([one(t, model, dimensions) for t in texts])
    if mode != "semantic":
        raise ValueError(f"vector mode {mode!r}: use one of {VECTOR_MODES}")
    opened = None
    if isinstance(cache, str | Path):
        cache = opened = embeddings.EmbeddingCache(cache)
    try:
        minilm, _ = embeddings.embed_texts([_unicode(t) for t in texts], MINILM, cache)
    finally:
        if opened is not None:
            opened.close()
    return project_minilm(minilm, model, dimensions)


# ---------------------------------------------------------------- errors and rate limits
def error(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
    """(status, body) in OpenAI's error shape."""
    return status, {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _fail(status: int, message: str, type_="invalid_request_error", param=None, code=None, headers=None):
    """(status, body, headers) of an error answer."""
    return (*error(status, message, type_, param, code), headers or {})


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers and messages write it: "120ms", "1.2s", "6m0s"."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    sec = f"{rem / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if h:
        return f"{h}h{m}m{sec}"
    return f"{m}m{sec}" if m else sec


class _Bucket:
    """A token bucket: ``capacity`` units, refilled at ``rate`` per second, starting full."""

    def __init__(self, per_minute: int, burst_seconds: float, now: float, at_least: float = 0.0):
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(at_least, per_minute * burst_seconds / 60.0)
        self.level = self.capacity
        self.t = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(0.0, now - self.t) * self.rate)
        self.t = now

    def wait(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0: it fits now)."""
        return max(0.0, (amount - self.level) / self.rate)

    def headers(self, kind: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{kind}": str(self.limit),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level + 1e-9))),
            f"x-ratelimit-reset-{kind}": format_duration((self.capacity - self.level) / self.rate),
        }


@dataclass
class _Request:
    """What one request asked for (filled as far as parsing got)."""

    model: str = ""
    texts: list | None = None
    tokens: int = 0


# ---------------------------------------------------------------- the endpoint
class OpenAIStandIn:
    """``POST /v1/embeddings``: ``handle(headers, body) -> (status, payload, headers)``. Thread-safe.

    ``api_key``: the Bearer key it accepts ("": it refuses every key). ``vectors``: "semantic" or "hash".
    ``embed_cache``: an ``embeddings.EmbeddingCache`` or its path (opened once) for MiniLM vectors.
    """

    def __init__(
        self,
        api_key: str,
        limits: Limits | dict | None = None,
        vectors: str = "semantic",
        embed_cache=None,
        clock=time.monotonic,
    ):
        if vectors not in VECTOR_MODES:
            raise ValueError(f"vectors {vectors!r}: use one of {VECTOR_MODES}")
        self.api_key = api_key
        self.vectors = vectors
        self._cache_arg = embed_cache
        self._cache = None
        self._clock = clock
        self._lock = threading.Lock()
        self._log: list[dict] = []
        self._counters = self._zero_counters()
        self._apply(limits if isinstance(limits, Limits) else Limits(**(limits or {})))

    @staticmethod
    def _zero_counters() -> dict:
        return {
            "requests": 0,
            "by_status": {},
            "served_requests": 0,
            "inputs_served": 0,
            "tokens_served": 0,
            "injected": {"429": 0, "500": 0, "503": 0},
            "limited": {"requests": 0, "tokens": 0, "too_large": 0},
        }

    def _apply(self, limits: Limits) -> None:
        now = self._clock()
        with self._lock:
            self.limits = limits
            self._rng = random.Random(limits.seed)
            self._req_bucket = _Bucket(limits.rpm, limits.burst_seconds, now, 1.0) if limits.rpm else None
            self._tok_bucket = _Bucket(limits.tpm, limits.burst_seconds, now) if limits.tpm else None

    # ---- settings, log and counters
    def set_limits(self, **kw) -> Limits:
        """Replace the limits (fields not given take their defaults); the buckets start full again and the
        fault stream restarts from ``seed``."""
        limits = Limits(**kw)
        self._apply(limits)
        return limits

    def set_api_key(self, key: str) -> None:
        with self._lock:
            self.api_key = key

    def log(self) -> list[dict]:
        """One entry per request: ``t``, ``status``, ``inputs``, ``tokens``, ``hashes`` (sha256 of each input
        text's UTF-8; token arrays decoded), ``model``, ``code`` (the error code, if any)."""
        with self._lock:
            return [dict(e, hashes=list(e["hashes"])) for e in self._log]

    def clear_log(self) -> int:
        with self._lock:
            n = len(self._log)
            self._log.clear()
            return n

    def stats(self) -> dict:
        now = self._clock()
        with self._lock:
            out = json.loads(json.dumps(self._counters))
            out["limits"] = asdict(self.limits)
            for kind, b in (("requests", self._req_bucket), ("tokens", self._tok_bucket)):
                if b is not None:
                    b.refill(now)
                    out[f"remaining_{kind}"] = math.floor(b.level + 1e-9)
            out["log_entries"] = len(self._log)
            key_set = bool(self.api_key)
        out.update(vectors=self.vectors, models=dict(MODEL_DIMS), key_set=key_set)
        return out

    # ---- one request
    def handle(self, headers: dict, body: bytes) -> tuple[int, dict, dict]:
        with self._lock:
            limits = self.limits
        if limits.latency_ms:
            time.sleep(limits.latency_ms / 1000)  # outside any lock: concurrent requests overlap
        req = _Request()
        h = {str(k).lower(): v for k, v in (headers or {}).items()}
        try:
            status, payload, out_headers = self._process(h, body, limits, req)
        except Exception as e:  # noqa: BLE001 - the API answers an internal failure with a 500
            status, payload = error(
                500, f"The server had an error while processing your request: {e}", "server_error"
            )
            out_headers = {}
        out_headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")
        entry = {
            "t": time.time(),
            "status": status,
            "model": req.model,
            "inputs": len(req.texts or []),
            "tokens": req.tokens,
            "hashes": [text_sha256(t) for t in req.texts or []],
            "code": payload.get("error", {}).get("code") if status != 200 else None,
        }
        with self._lock:
            self._log.append(entry)
            c = self._counters
            c["requests"] += 1
            c["by_status"][str(status)] = c["by_status"].get(str(status), 0) + 1
            if status == 200:
                c["served_requests"] += 1
                c["inputs_served"] += entry["inputs"]
                c["tokens_served"] += req.tokens
        return status, payload, out_headers

    def _authorized(self, h: dict) -> tuple[int, dict] | None:
        """None when the Bearer key is the one accepted, else the 401 (status, body)."""
        auth = h.get("authorization") or ""
        scheme, _, sent = auth.partition(" ")
        if scheme.lower() != "bearer" or not sent.strip():
            return error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        with self._lock:
            key = self.api_key
        if not key or not hmac.compare_digest(sent.strip().encode(), key.encode()):
            # never echo the key, not even in part
            return error(
                401,
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    def _process(self, h: dict, body: bytes, limits: Limits, req: _Request):
        refused = self._authorized(h)
        if refused:
            return (*refused, {})
        try:
            data = json.loads(body.decode("utf-8")) if body else None
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            return _fail(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
                "not valid JSON.)",
            )
        extra = sorted(set(data) - REQUEST_FIELDS)
        if extra:
            return _fail(400, f"Unrecognized request argument supplied: {extra[0]}")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            return _fail(400, "you must provide a model parameter")
        req.model = model
        if model not in MODEL_DIMS:
            msg = f"The model `{model}` does not exist or you do not have access to it."
            return _fail(404, msg, code="model_not_found")
        fmt = data.get("encoding_format")
        if fmt is not None and fmt not in ("float", "base64"):
            msg = f"Invalid value for 'encoding_format' = {fmt}. Supported values are: 'float' and 'base64'."
            return _fail(400, msg, param="encoding_format", code="invalid_value")
        dims = data.get("dimensions")
        if dims is not None:
            full = MODEL_DIMS[model]
            if model not in DIMENSIONS_MODELS:
                return _fail(400, "This model does not support specifying dimensions.", param="dimensions")
            if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= full:
                msg = f"Invalid value for 'dimensions' = {dims}. Must be an integer between 1 and {full}."
                return _fail(400, msg, param="dimensions", code="invalid_value")
        if "input" not in data:
            msg = "Missing required parameter: 'input'."
            return _fail(400, msg, param="input", code="missing_required_parameter")
        texts, counts = self._inputs(data["input"])
        if texts is None:
            return _fail(400, _INVALID_INPUT)
        req.texts = texts
        if len(texts) > limits.max_inputs:
            msg = f"Too many inputs: {len(texts)} were given, at most {limits.max_inputs} are allowed per request."
            return _fail(400, msg, param="input")
        counts = counts if counts is not None else count_tokens(texts)
        req.tokens = total = sum(counts)
        for n in counts:
            if n > limits.max_input_tokens:
                msg = (
                    f"This model's maximum context length is {limits.max_input_tokens} tokens, however you "
                    f"requested {n} tokens ({n} in your prompt; 0 for the completion). Please reduce your "
                    "prompt; or completion length."
                )
                return _fail(400, msg, param="input")
        if total > limits.max_request_tokens:
            msg = f"Requested {total} tokens, max {limits.max_request_tokens} tokens per request"
            return _fail(400, msg, code="max_tokens_per_request")
        limited = self._admit(model, total, limits)
        if limited is not None:
            return limited
        rate_headers = self._rate_headers()
        with self._lock:
            r = self._rng.random()
            kind = None
            if r < limits.rate_429:
                kind = "429"
            elif r < limits.rate_429 + limits.error_rate:
                kind = "500" if self._rng.random() < 0.5 else "503"
            if kind:
                self._counters["injected"][kind] += 1
        if kind == "429":
            wait = limits.retry_after_ms / 1000
            msg = (
                f"Rate limit reached for {model} in organization {ORGANIZATION} (an injected 429 of the "
                f"rehearsal server). Please try again in {format_duration(wait)}. {_LIMITS_PAGE}"
            )
            return _fail(
                429,
                msg,
                "requests",
                code="rate_limit_exceeded",
                headers={**rate_headers, **_retry_headers(wait)},
            )
        if kind == "500":
            return _fail(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        if kind == "503":
            return _fail(503, "The engine is currently overloaded, please try again later.", "server_error")
        vecs = vectors_for(texts, model, dims, self.vectors, self._embed_cache())
        if fmt == "base64":
            items = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vecs]
        else:
            items = [v.tolist() for v in vecs]  # float32 values, exactly, as JSON numbers
        payload = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
        return 200, payload, rate_headers

    @staticmethod
    def _inputs(raw) -> tuple[list[str] | None, list[int] | None]:
        """``input`` as (texts, None) for strings, (decoded texts, lengths) for token arrays, or (None, None)
        when it is none of the API's forms: a non-empty string, a list of them, a token array (a non-empty
        list of token ids) or a list of token arrays."""

        def is_tokens(x):
            return (
                isinstance(x, list)
                and bool(x)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in x)
            )

        if isinstance(raw, str):
            raw = [raw]
        elif is_tokens(raw):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            return None, None
        if all(isinstance(x, str) and x for x in raw):
            return list(raw), None
        if all(is_tokens(x) for x in raw):
            enc = encoding()
            if any(not 0 <= i < enc.n_vocab for x in raw for i in x):
                return None, None
            return [enc.decode(x) for x in raw], [len(x) for x in raw]
        return None, None

    def _admit(self, model: str, tokens: int, limits: Limits):
        """None when the rate limits admit the request (and it is charged), else the 429 to answer."""
        now = self._clock()
        with self._lock:
            rb, tb = self._req_bucket, self._tok_bucket
            for b in (rb, tb):
                if b is not None:
                    b.refill(now)
            if tb is not None and tokens > tb.capacity:
                self._counters["limited"]["too_large"] += 1
                extra = (
                    f" (the rehearsal server's bucket holds {tb.capacity:.0f} tokens: burst_seconds="
                    f"{limits.burst_seconds:g})"
                    if limits.burst_seconds != 60
                    else ""
                )
                msg = (
                    f"Request too large for {model} in organization {ORGANIZATION} on tokens per min (TPM): "
                    f"Limit {tb.limit}, Requested {tokens}{extra}. The input or output tokens must be reduced "
                    f"in order to run successfully. {_LIMITS_PAGE}"
                )
                return _fail(
                    429, msg, "tokens", code="rate_limit_exceeded", headers=self._rate_headers_locked()
                )
            waits = []
            if rb is not None and rb.wait(1) > 0:
                waits.append((rb.wait(1), "requests", "RPM", rb, 1))
            if tb is not None and tb.wait(tokens) > 0:
                waits.append((tb.wait(tokens), "tokens", "TPM", tb, tokens))
            if not waits:
                if rb is not None:
                    rb.level -= 1
                if tb is not None:
                    tb.level -= tokens
                return None
            wait, kind, short, b, asked = max(waits, key=lambda w: w[0])
            self._counters["limited"][kind] += 1
            used = max(0, round(b.capacity - b.level))
            msg = (
                f"Rate limit reached for {model} in organization {ORGANIZATION} on {kind} per min ({short}): "
                f"Limit {b.limit}, Used {used}, Requested {asked}. Please try again in "
                f"{format_duration(wait)}. {_LIMITS_PAGE}"
            )
            headers = {**self._rate_headers_locked(), **_retry_headers(wait)}
            return _fail(429, msg, kind, code="rate_limit_exceeded", headers=headers)

    def _rate_headers(self) -> dict[str, str]:
        with self._lock:
            return self._rate_headers_locked()

    def _rate_headers_locked(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, b in (("requests", self._req_bucket), ("tokens", self._tok_bucket)):
            if b is not None:
                out.update(b.headers(kind))
        return out

    def _embed_cache(self):
        if self.vectors != "semantic" or self._cache_arg is None:
            return None
        with self._lock:
            if self._cache is None:
                arg = self._cache_arg
                self._cache = embeddings.EmbeddingCache(arg) if isinstance(arg, str | Path) else arg
            return self._cache


def _retry_headers(wait: float) -> dict[str, str]:
    ms = max(1, math.ceil(wait * 1000))
    return {"retry-after-ms": str(ms), "retry-after": str(max(1, math.ceil(wait)))}
