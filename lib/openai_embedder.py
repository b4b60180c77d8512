"""Re-embedding through an OpenAI-compatible embeddings API at the account's rate limit.

What the service does to a long job, and what this does about it:
- Requests- and tokens-per-minute limits: requests are paced by two token buckets at ``headroom`` of the
  limits (the params' figures, or the ``x-ratelimit-limit-*`` headers the service sends, whichever is lower),
  several in flight at once so the per-request latency does not cap the rate. A request waits when the
  service says its remaining tokens or requests would not cover it (``x-ratelimit-remaining-*``).
- 429 ``rate_limit_exceeded``: every worker pauses for the ``retry-after`` the service asks, then the batch is
  sent again. ``insufficient_quota`` is not retried: the account is out of money (``QuotaExhausted``).
- 5xx, timeouts and dropped connections: retried with exponential backoff and jitter, ``max_retries`` times.
- Limits per request (inputs, tokens per input, tokens per request): batches are cut by tiktoken counts
  (cl100k_base, as the service counts), so no request is refused for its size; an input over the per-input
  limit is named (``InputTooLong``) before anything is sent.
- Spend: the billed ``usage.prompt_tokens`` are added up; a batch that could take the spend over
  ``max_cost_usd`` is not sent (``SpendCapReached``), after the batches in flight are stored.

Results go to ``sink(hashes, vectors)`` in the calling thread as each batch completes (the embedding cache:
a killed run pays nothing twice). Memory holds only the batches in flight.
"""

from __future__ import annotations

import base64
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from .errors import RunbookError

ENCODING = "cl100k_base"
OPENAI_BASE_URL = "https://api.openai.com/v1"
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000


class EmbedderError(RunbookError, RuntimeError):
    pass


class InputTooLong(EmbedderError):
    pass


class SpendCapReached(EmbedderError):
    pass


class QuotaExhausted(EmbedderError):
    pass


class EmbeddingRequestFailed(EmbedderError):
    pass


class Stopped(EmbedderError):
    """A worker's request was not sent because the run was stopping."""


MAX_RETRY_AFTER_S = 120.0  # a longer retry-after is a daily or account limit: say so instead of sleeping


_encoding = None
_encoding_lock = threading.Lock()


def encoding():
    """tiktoken's cl100k_base, loaded offline: tiktoken fetches its BPE file from the internet on first use,
    but LlamaIndex ships that file and ``get_tokenizer`` loads it into tiktoken's registry."""
    global _encoding
    with _encoding_lock:
        if _encoding is None:
            import tiktoken
            from llama_index.core.utils import get_tokenizer

            get_tokenizer()  # gpt-3.5-turbo's encoding: cl100k_base, from LlamaIndex's bundled cache
            _encoding = tiktoken.get_encoding(ENCODING)
        return _encoding


def count_tokens(texts: list[str]) -> list[int]:
    """Tokens of each text as the embeddings API counts them (cl100k_base). One text after another: tiktoken's
    ``encode_ordinary_batch`` maps the same call over a thread pool, and its futures cost more than they
    saved (20,000 texts: 0.20-0.39 s against 0.13-0.22 s; phase 01's charts of 100k chunks took 14 s)."""
    enc = encoding()
    return [len(enc.encode_ordinary(t)) for t in texts]


def truncate(text: str, max_tokens: int) -> str:
    """The text cut to its first ``max_tokens`` tokens."""
    enc = encoding()
    return enc.decode(enc.encode_ordinary(text)[:max_tokens])


@dataclass
class Limits:
    """What the account allows (0: unknown, taken from the service's headers once it answers)."""

    rpm: int = 0
    tpm: int = 0
    max_inputs: int = MAX_INPUTS
    max_input_tokens: int = MAX_INPUT_TOKENS
    max_request_tokens: int = MAX_REQUEST_TOKENS


@dataclass
class Progress:
    chunks: int = 0
    tokens: int = 0  # billed (usage.prompt_tokens)
    usd: float = 0.0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429s answered by the service
    waited_s: float = 0.0  # time workers paused on the service's retry-after
    errors: dict = field(default_factory=dict)  # transient errors by kind

    def as_dict(self) -> dict:
        return {
            "chunks": self.chunks,
            "tokens billed": self.tokens,
            "spent $": round(self.usd, 6),
            "requests": self.requests,
            "retries": self.retries,
            "429 answered": self.rate_limited,
            "paused for retry-after s": round(self.waited_s, 2),
            "transient errors": dict(self.errors),
        }


class _Bucket:
    """A token bucket: ``rate`` per second, holding at most ``capacity``; starts full."""

    def __init__(self, per_minute: float, burst_s: float, floor: float):
        self.set(per_minute, burst_s, floor)
        self.level = self.capacity
        self.t = time.monotonic()

    def set(self, per_minute: float, burst_s: float, floor: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * burst_s, floor)

    def wait_time(self, amount: float, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now
        if self.level >= amount:
            return 0.0
        return (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount


def _retry_after_s(headers) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    s = headers.get("retry-after")
    if s:
        try:
            return float(s)
        except ValueError:
            return None
    return None


class RateLimitedEmbedder:
    """Embeds ``(hash, text)`` items with one model through an OpenAI-compatible API at the rate limit."""

    def __init__(
        self,
        model: str,
        api_key: str,
        base_url: str = "",
        dimensions: int | None = None,
        limits: Limits | None = None,
        concurrency: int = 8,
        max_retries: int = 8,
        headroom: float = 0.95,
        burst_s: float = 2.0,
        batch_tokens: int = 0,
        price_per_mtok: float = 0.0,
        max_cost_usd: float = 0.0,
        timeout_s: float = 120.0,
        seed: int | None = None,
    ):
        import openai

        self.model = model
        self.dimensions = dimensions
        self.limits = limits or Limits()
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max_retries
        self.headroom = headroom
        self.burst_s = burst_s
        self.batch_tokens = batch_tokens
        self.price_per_mtok = price_per_mtok
        self.max_cost_usd = max_cost_usd
        self.progress = Progress()
        self._client = openai.OpenAI(
            # never None: the client would take OPENAI_BASE_URL from the environment, and a stray one would send
            # the key elsewhere and cache another endpoint's vectors as OpenAI's
            api_key=api_key,
            base_url=base_url or OPENAI_BASE_URL,
            max_retries=0,
            timeout=timeout_s,
        )
        self._lock = threading.Lock()
        self._pause_until = 0.0
        self._stop = threading.Event()  # set when the run stops: no worker sends another request
        self._too_large = 0  # the smallest request the service called too large
        self._admitted: deque[tuple[float, int]] = deque()  # (time, tokens) of the requests of the last 2 min
        self._rng = random.Random(seed)
        self._req_bucket: _Bucket | None = None
        self._tok_bucket: _Bucket | None = None
        self._configure_buckets()

    # --- pacing
    def _configure_buckets(self) -> None:
        lim = self.limits
        floor_tokens = min(lim.max_request_tokens, self._target_tokens())
        if lim.rpm:
            if self._req_bucket is None:
                self._req_bucket = _Bucket(lim.rpm * self.headroom, self.burst_s, 1)
            else:
                self._req_bucket.set(lim.rpm * self.headroom, self.burst_s, 1)
        if lim.tpm:
            if self._tok_bucket is None:
                self._tok_bucket = _Bucket(lim.tpm * self.headroom, self.burst_s, floor_tokens)
            else:
                self._tok_bucket.set(lim.tpm * self.headroom, self.burst_s, floor_tokens)

    def _target_tokens(self) -> int:
        """Tokens per request: enough that the request limit does not cap the token rate, small enough that
        pacing stays smooth (about 3 seconds of the token limit) and within the per-request limit."""
        lim = self.limits
        cap = (
            lim.max_request_tokens
            if not self._too_large
            else min(lim.max_request_tokens, self._too_large // 2)
        )
        if self.batch_tokens:
            return max(1, min(self.batch_tokens, cap))
        target = 100_000
        if lim.tpm:
            target = lim.tpm // 20
            if lim.rpm:
                target = max(target, int(1.5 * lim.tpm / lim.rpm))
        return max(1, min(target, cap))

    def _learn(self, headers, sent: float) -> None:
        """Adopt the service's own limits when they are lower than (or instead of) the configured ones, and
        what it says remains of them: the account's other users (the live service's queries) spend them too.
        The service counted its remaining budget when it took the request sent at ``sent``; since then it has
        refilled at its limit's rate and our requests admitted after that one will spend from it. Our bucket
        never holds more than that."""
        changed = False
        for kind, attr in (("requests", "rpm"), ("tokens", "tpm")):
            lim = headers.get(f"x-ratelimit-limit-{kind}")
            if lim and lim.isdigit():
                v = int(lim)
                cur = getattr(self.limits, attr)
                if v and (not cur or v < cur):
                    setattr(self.limits, attr, v)
                    changed = True
        if changed:
            self._configure_buckets()
        now = time.monotonic()
        for kind, attr, bucket in (
            ("requests", "rpm", self._req_bucket),
            ("tokens", "tpm", self._tok_bucket),
        ):
            rem = headers.get(f"x-ratelimit-remaining-{kind}")
            if bucket is None or not rem or not rem.isdigit():
                continue
            since = sum((1 if kind == "requests" else n) for t, n in self._admitted if t > sent)
            estimate = float(rem) + (now - sent) * getattr(self.limits, attr) / 60.0 - since
            bucket.wait_time(0, now)  # brings the level up to now
            bucket.level = min(bucket.level, estimate)

    def _acquire(self, tokens: int) -> float:
        """Wait until the request fits the pacing buckets and any pause; the time it was admitted."""
        while True:
            with self._lock:
                now = time.monotonic()
                wait_s = max(0.0, self._pause_until - now)
                if self._req_bucket is not None:
                    wait_s = max(wait_s, self._req_bucket.wait_time(1, now))
                if self._tok_bucket is not None:
                    wait_s = max(
                        wait_s, self._tok_bucket.wait_time(min(tokens, self._tok_bucket.capacity), now)
                    )
                if wait_s <= 0:
                    if self._req_bucket is not None:
                        self._req_bucket.take(1)
                    if self._tok_bucket is not None:
                        self._tok_bucket.take(tokens)
                    self._admitted.append((now, tokens))
                    while self._admitted and self._admitted[0][0] < now - 120:
                        self._admitted.popleft()
                    return now
            self._sleep(min(wait_s, 5.0))

    # --- one request
    def _post(self, texts: list[str], tokens: int) -> tuple[np.ndarray, int]:
        import openai

        attempt = 0
        while True:
            sent = self._acquire(tokens)
            kw = {"dimensions": self.dimensions} if self.dimensions and "3-" in self.model else {}
            try:
                raw = self._client.embeddings.with_raw_response.create(
                    model=self.model, input=texts, encoding_format="base64", **kw
                )
                with self._lock:
                    self._learn(raw.headers, sent)
                    self.progress.requests += 1
                body = raw.http_response.json()
                return self._decode(body, len(texts)), int(body.get("usage", {}).get("prompt_tokens", tokens))
            except openai.RateLimitError as e:
                code = _error_code(e)
                if _error_message(e).startswith("Request too large"):  # more than the TPM bucket ever holds
                    return self._split(texts, tokens, e)
                if code == "insufficient_quota":
                    raise QuotaExhausted(
                        f"the embeddings API refused for lack of quota ({_error_message(e)}): add credit to "
                        "the account, then run the phase again (what was embedded is cached)"
                    ) from None
                after = _retry_after_s(e.response.headers)
                if after is None:
                    after = min(60.0, 0.5 * 2**attempt) * (0.5 + self._rng.random())
                if after > MAX_RETRY_AFTER_S:
                    raise EmbeddingRequestFailed(
                        f"the embeddings API asks to wait {after:.0f} s ({_error_message(e)}): a daily or "
                        "account limit, not a per-minute one. Run the phase again later (what was embedded is "
                        "cached)"
                    ) from None
                with self._lock:
                    self.progress.rate_limited += 1
                    self.progress.retries += 1
                    self._learn(e.response.headers, sent)
                    until = time.monotonic() + after
                    if until > self._pause_until:  # the time all workers pause, counted once
                        self.progress.waited_s += until - max(self._pause_until, time.monotonic())
                        self._pause_until = until
                attempt += 1
                if attempt > self.max_retries * 4:  # a limit that never lets the batch through
                    raise EmbeddingRequestFailed(
                        f"rate-limited {attempt} times in a row for one batch of {len(texts)} inputs "
                        f"({tokens} tokens): {_error_message(e)}"
                    ) from None
            except (openai.InternalServerError, openai.APIConnectionError, openai.ConflictError) as e:
                self._transient(e, attempt := attempt + 1, len(texts))
            except openai.APIStatusError as e:  # 400, 401, 403, 404...: not worth retrying (408 is)
                if e.status_code == 408:
                    self._transient(e, attempt := attempt + 1, len(texts))
                    continue
                raise EmbeddingRequestFailed(
                    f"the embeddings API answered {e.status_code} ({_error_message(e)}) for a batch of "
                    f"{len(texts)} inputs with model {self.model!r}"
                ) from None

    def _transient(self, e, attempt: int, n: int) -> None:
        """Count a transient failure (5xx, 408, 409, timeout, dropped connection) and back off, or give up."""
        import openai

        if isinstance(e, openai.APIStatusError):
            kind = str(e.status_code)
        else:
            kind = "timeout" if isinstance(e, openai.APITimeoutError) else "connection"
        with self._lock:
            self.progress.errors[kind] = self.progress.errors.get(kind, 0) + 1
            self.progress.retries += 1
        if attempt > self.max_retries:
            raise EmbeddingRequestFailed(
                f"{kind} from the embeddings API {attempt} times for one batch of {n} inputs; nothing of this "
                "batch was stored. Run the phase again later (what was embedded is cached)"
            ) from None
        self._sleep(min(30.0, 0.25 * 2**attempt) * (0.5 + self._rng.random()))

    def _sleep(self, seconds: float) -> None:
        """Wait, unless the run is being stopped (then no further request is sent: ``Stopped``)."""
        if self._stop.wait(seconds):
            raise Stopped("the re-embedding was stopped")

    def _split(self, texts: list[str], tokens: int, e) -> tuple[np.ndarray, int]:
        """A request the account can never take at once: later batches are kept under half its size, and
        this one goes as two halves."""
        if len(texts) < 2:
            raise EmbeddingRequestFailed(
                f"one input of {tokens} tokens is more than the account's tokens-per-minute limit lets through "
                f"at once ({_error_message(e)})"
            ) from None
        with self._lock:
            self._too_large = min(self._too_large or tokens, tokens)
            self.progress.retries += 1
        half = len(texts) // 2
        counts = count_tokens(texts)
        a, billed_a = self._post(texts[:half], sum(counts[:half]))
        b, billed_b = self._post(texts[half:], sum(counts[half:]))
        return np.concatenate([a, b]), billed_a + billed_b

    def _decode(self, body: dict, n: int) -> np.ndarray:
        """The vectors in input order, checked before anything is stored: one per input, by index."""
        data = sorted(body.get("data") or [], key=lambda d: d["index"])
        if [d["index"] for d in data] != list(range(n)):
            raise EmbeddingRequestFailed(
                f"the embeddings API returned vectors for indices {[d['index'] for d in data][:10]}... for "
                f"{n} inputs: not one per input; nothing of this batch was stored"
            )
        rows = []
        for d in data:
            e = d["embedding"]
            if isinstance(e, str):
                rows.append(np.frombuffer(base64.b64decode(e), dtype="<f4"))
            else:
                rows.append(np.asarray(e, dtype=np.float32))
        sizes = {len(r) for r in rows}
        if len(sizes) != 1 or (self.dimensions and sizes != {self.dimensions}):
            raise EmbeddingRequestFailed(
                f"the embeddings API returned vectors of {sorted(sizes)} dimensions, not {self.dimensions}; "
                "nothing of this batch was stored"
            )
        return np.stack(rows).astype(np.float32, copy=False)

    # --- batching
    def batches(self, items: Iterable[tuple]) -> Iterator[tuple[list[str], list[str], int]]:
        """(hashes, texts, tokens) batches within the per-request limits, in the order given. An item is
        (hash, text) or (hash, text, tokens); a text without its count (or with None) is counted here."""
        lim = self.limits
        hs: list[str] = []
        ts: list[str] = []
        total = 0
        pending: list[tuple] = []

        def flush_pending():
            nonlocal hs, ts, total
            target = self._target_tokens()  # lower once the service called a request too large
            unknown = [j for j, item in enumerate(pending) if len(item) < 3 or item[2] is None]
            counts = [item[2] if len(item) > 2 else None for item in pending]
            for j, n in zip(unknown, count_tokens([pending[j][1] for j in unknown]), strict=True):
                counts[j] = n
            for (h, t, *_), n in zip(pending, counts, strict=True):
                if n > lim.max_input_tokens:
                    raise InputTooLong(
                        f"an input of {n} tokens is over the model's limit of {lim.max_input_tokens} (text "
                        f"hash {h[:12]}): nothing was sent for it"
                    )
                if n == 0:
                    raise InputTooLong(f"an empty input (text hash {h[:12]}): the API refuses empty strings")
                if ts and (len(ts) >= lim.max_inputs or total + n > target):
                    yield hs, ts, total
                    hs, ts, total = [], [], 0
                hs.append(h)
                ts.append(t)
                total += n
            pending.clear()

        for item in items:
            pending.append(item)
            if len(pending) >= 512:
                yield from flush_pending()
        yield from flush_pending()
        if ts:
            yield hs, ts, total

    # --- the run
    def run(
        self,
        items: Iterable[tuple],
        sink: Callable[[list[str], np.ndarray], None],
        on_progress: Callable[[int, Progress], None] | None = None,
    ) -> Progress:
        """Embed every item; ``sink`` stores each batch as it completes (in this thread)."""
        inflight: dict[Future, tuple[list[str], int]] = {}
        reserved = 0

        def store(f: Future, hs: list[str]) -> None:
            vecs, billed = f.result()
            sink(hs, vecs)
            self.progress.chunks += len(hs)
            self.progress.tokens += billed
            self.progress.usd += billed * self.price_per_mtok / 1e6
            if on_progress is not None:
                on_progress(len(hs), self.progress)

        def collect(done) -> None:
            """Store every completed batch, then raise the first failure."""
            nonlocal reserved
            failure = None
            for f in done:
                hs, tokens = inflight.pop(f)
                reserved -= tokens
                if f.exception() is None:
                    store(f, hs)
                else:
                    failure = failure or f.exception()
            if failure is not None:
                raise failure

        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="embed")
        self._stop.clear()
        try:
            for hs, ts, tokens in self.batches(items):
                if self.max_cost_usd and self.price_per_mtok:
                    would = (self.progress.tokens + reserved + tokens) * self.price_per_mtok / 1e6
                    if would > self.max_cost_usd:
                        if inflight:
                            collect(wait(inflight).done)
                        raise SpendCapReached(
                            f"spend cap ${self.max_cost_usd} reached: ${self.progress.usd:.4f} spent on "
                            f"{self.progress.chunks} chunks; the next batch ({tokens} tokens) would take it "
                            f"over. What was embedded is stored; raise max_embedding_cost_usd and run again"
                        )
                while len(inflight) >= self.concurrency * 2:
                    collect(wait(inflight, return_when=FIRST_COMPLETED).done)
                inflight[pool.submit(self._post, ts, tokens)] = (hs, tokens)
                reserved += tokens
            while inflight:
                collect(wait(inflight, return_when=FIRST_COMPLETED).done)
        except BaseException:
            # stopping (a failure, the spend cap, Ctrl-C): nothing new is sent, queued batches are dropped,
            # and what the requests already on the wire bring back is stored -- it is paid for
            self._stop.set()
            for f in inflight:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            for f, (hs, _tokens) in list(inflight.items()):
                if not f.cancelled() and f.exception() is None:
                    store(f, hs)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self.progress


def _error_code(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("code") or err.get("type") or "")
    return str(getattr(e, "code", "") or "")


def _error_message(e) -> str:
    """The API's own message (keys it quotes, even masked, left out)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return re.sub(r"sk-\S+", "sk-***", str(err["message"]))[:300]
    return type(e).__name__
