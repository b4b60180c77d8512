"""The OpenAI embeddings stand-in (``POST /v1/embeddings`` of the rehearsal server) against the real official
clients, ``openai.OpenAI`` and LlamaIndex's ``OpenAIEmbedding``, and raw HTTP where the exact status, body
and headers matter. Nothing is mocked: a real server on a loopback port, real MiniLM vectors (cached)."""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from runbook import embeddings
from runbook.rehearsal import cloud_emulator, corpus
from runbook.rehearsal import openai_stand_in as osi

from .conftest import API_KEY, CACHE

KEY = "sk-rehearsal-openai-key-0123456789"
WRONG_KEY = "sk-wrong-key-abcdef987654"
SMALL, LARGE, ADA = "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"
TEXTS = [
    "Colonoscopy preparation: eat a clear liquid diet the day before the test.",
    "대장내시경 전날에는 맑은 유동식을 드세요.",
    "Blood pressure of 140/90 mmHg or more on repeated readings means hypertension.",
]
ERROR_KEYS = {"message", "type", "param", "code"}
HTTP = httpx.Client(timeout=120)  # one client: a new httpx client costs tens of milliseconds


@pytest.fixture(scope="module")
def srv():
    """One server for the module (each test resets the stand-in's limits, key and log)."""
    with cloud_emulator.EmulatorServer(
        corpus.build_hostile_corpus(), API_KEY, openai_key=KEY, embed_cache=str(CACHE)
    ) as s:
        # the MiniLM model loaded and these texts' vectors cached first: tests that time rate limits measure
        # the buckets, not the model
        assert (
            post(s, {"model": SMALL, "input": [*TEXTS, "hi"], "encoding_format": "base64"}).status_code == 200
        )
        yield s


@pytest.fixture
def oai(srv):
    srv.set_openai_limits()
    srv.set_openai_key(KEY)
    srv.openai.clear_log()
    return srv


def client(srv, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(api_key=kw.pop("api_key", KEY), base_url=srv.url + "/v1", **kw)


def post(srv, body, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return HTTP.post(srv.url + "/v1/embeddings", json=body, headers=headers)


def want(texts, model=SMALL, dimensions=None, mode="semantic") -> np.ndarray:
    return osi.vectors_for(list(texts), model, dimensions, mode, str(CACHE))


def ntokens(text: str) -> int:
    return len(osi.encoding().encode_ordinary(text))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokens_of(n: int, seed: str = "Regular health checkups find disease early. ") -> list[int]:
    """A token array of exactly ``n`` tokens (of real text, so it decodes to text)."""
    ids = osi.encoding().encode_ordinary(seed * (n // 4 + 2))
    assert len(ids) >= n
    return ids[:n]


def assert_error(r: httpx.Response, status: int, code=None, param=None, type_="invalid_request_error") -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == ERROR_KEYS
    assert (err["type"], err["code"], err["param"]) == (type_, code, param), err
    return err["message"]


def counted(srv, before: dict, kind: str) -> dict:
    """What the stand-in counted under ``limited`` or ``injected`` since ``before`` (its ``stats()``)."""
    now = srv.openai.stats()[kind]
    return {k: now[k] - before[kind][k] for k in now}


def cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ---------------------------------------------------------------- vectors through the official clients
def test_official_client_gets_exactly_the_stand_in_vectors(oai):
    c = client(oai)
    r = c.embeddings.create(model=SMALL, input=TEXTS)  # the client asks for base64 and decodes it itself
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    expected = want(TEXTS)
    assert got.shape == (3, 1536) and np.array_equal(got, expected)
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == SMALL and r.object == "list"
    assert np.allclose(np.linalg.norm(expected.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(ntokens(t) for t in TEXTS)
    floats = c.embeddings.create(model=SMALL, input=TEXTS, encoding_format="float")
    as_float = np.array([d.embedding for d in floats.data])
    assert np.allclose(as_float, expected, atol=1e-6) and np.array_equal(
        as_float.astype(np.float32), expected
    )
    # a vector does not depend on the other texts of its request
    alone = c.embeddings.create(model=SMALL, input=TEXTS[1])
    assert np.array_equal(np.array(alone.data[0].embedding, dtype=np.float32), expected[1])


def test_raw_http_float_is_the_default_and_base64_is_little_endian_float32(oai):
    r = post(oai, {"model": SMALL, "input": TEXTS[0]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"object", "data", "model", "usage"}
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0 and isinstance(item["embedding"], list)
    assert np.array_equal(np.array(item["embedding"], dtype=np.float32), want(TEXTS[:1])[0])
    r64 = post(oai, {"model": SMALL, "input": [TEXTS[0]], "encoding_format": "base64"})
    raw = base64.b64decode(r64.json()["data"][0]["embedding"])
    assert len(raw) == 1536 * 4
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), want(TEXTS[:1])[0])


def test_dimensions_give_the_full_vectors_prefix_renormalised(oai):
    c = client(oai)
    got = np.array(
        [d.embedding for d in c.embeddings.create(model=SMALL, input=TEXTS[:2], dimensions=256).data]
    )
    full = want(TEXTS[:2]).astype(np.float64)
    prefix = full[:, :256] / np.linalg.norm(full[:, :256], axis=1, keepdims=True)
    assert got.shape == (2, 256) and np.allclose(got, prefix, atol=1e-6)
    assert np.array_equal(got.astype(np.float32), want(TEXTS[:2], dimensions=256))
    assert not np.allclose(got, full[:, :256], atol=1e-4)  # renormalised, not just cut
    large = np.array([d.embedding for d in c.embeddings.create(model=LARGE, input=TEXTS[:2]).data])
    assert large.shape == (2, 3072) and np.array_equal(large.astype(np.float32), want(TEXTS[:2], LARGE))
    # another model, another projection: other vectors, the same geometry
    assert abs(cos(large[0][:1536], full[0])) < 0.2
    assert abs(cos(large[0], large[1]) - cos(full[0], full[1])) < 1e-5


def test_semantic_vectors_keep_minilm_cosines_and_hash_vectors_do_not(oai):
    texts = [
        TEXTS[0],
        "How do I prepare for a colonoscopy? Drink only clear liquids the day before.",
        TEXTS[2],
    ]
    minilm, _ = embeddings.embed_texts(texts, osi.MINILM, embeddings.EmbeddingCache(CACHE))
    got = np.array([d.embedding for d in client(oai).embeddings.create(model=SMALL, input=texts).data])
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert abs(cos(got[i], got[j]) - cos(minilm[i], minilm[j])) < 1e-5, (i, j)
    assert cos(got[0], got[1]) > cos(got[0], got[2]) + 0.2  # it is semantic
    assert np.count_nonzero(np.abs(got[0][384:]) > 1e-4) > 1000  # spread over 1536 dimensions, not padded
    hashed = want(texts, mode="hash")
    assert max(abs(cos(hashed[i], hashed[j])) for i, j in ((0, 1), (0, 2), (1, 2))) < 0.15


def test_llamaindex_openai_embedding_works_through_the_stand_in(oai):
    from llama_index.embeddings.openai import OpenAIEmbedding

    emb = OpenAIEmbedding(
        model=SMALL,
        api_key=KEY,
        api_base=oai.url + "/v1",
        dimensions=1536,
        embed_batch_size=2,
        max_retries=0,
    )
    texts = [*TEXTS, "Fasting glucose\nof 126 mg/dL or more"]
    got = np.array(emb.get_text_embedding_batch(texts))
    sent = [t.replace("\n", " ") for t in texts]  # LlamaIndex sends newlines as spaces
    assert got.shape == (4, 1536) and np.allclose(got, want(sent), atol=1e-6)
    question = "What should I eat before a colonoscopy?"
    q = np.array(emb.get_query_embedding(question))
    assert np.allclose(q, want([question])[0], atol=1e-6)
    log = oai.openai.log()
    assert [e["inputs"] for e in log] == [2, 2, 1] and {e["status"] for e in log} == {200}
    assert [h for e in log for h in e["hashes"]] == [sha(t) for t in [*sent, question]]


def test_token_arrays_are_counted_by_length_and_decoded_to_text(oai):
    ids = osi.encoding().encode_ordinary(TEXTS[0])
    r = post(oai, {"model": SMALL, "input": ids})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(ids)
    assert np.array_equal(np.array(r.json()["data"][0]["embedding"], dtype=np.float32), want(TEXTS[:1])[0])
    two = [ids, osi.encoding().encode_ordinary(TEXTS[2])]
    r = post(oai, {"model": SMALL, "input": two, "encoding_format": "base64"})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(two[0]) + len(two[1])
    assert oai.openai.log()[-1]["hashes"] == [sha(TEXTS[0]), sha(TEXTS[2])]
    for bad in ([[-1]], [[10**9]], [1.5], [[1, "a"]], [True], [["a"]], {"a": 1}, 7, ["text", [1, 2]]):
        assert_error(post(oai, {"model": SMALL, "input": bad}), 400)


def test_korean_text_passes_through_unchanged(oai):
    text = "건강검진 결과: 공복 혈당이 126 mg/dL 이상이면 당뇨병을 의심합니다. 🩺"
    r = client(oai).embeddings.create(model=SMALL, input=[text])
    assert np.array_equal(np.array(r.data[0].embedding, dtype=np.float32), want([text])[0])
    assert r.usage.prompt_tokens == ntokens(text) > len(text.split())
    assert oai.openai.log()[-1]["hashes"] == [sha(text)]


# ---------------------------------------------------------------- OpenAI's limits and errors
def test_too_many_inputs(oai):
    msg = assert_error(post(oai, {"model": SMALL, "input": ["a"] * 2049}), 400, param="input")
    assert "2049" in msg and "2048" in msg
    oai.set_openai_limits(max_inputs=3)
    assert post(oai, {"model": SMALL, "input": ["a", "b", "c"]}).status_code == 200
    assert "at most 3" in assert_error(post(oai, {"model": SMALL, "input": ["a"] * 4}), 400, param="input")
    with pytest.raises(openai.BadRequestError) as e:
        client(oai).embeddings.create(model=SMALL, input=["a"] * 4)
    assert e.value.status_code == 400 and e.value.param == "input"


def test_an_input_over_the_context_length(oai):
    assert post(oai, {"model": SMALL, "input": [tokens_of(8192)]}).status_code == 200
    msg = assert_error(
        post(oai, {"model": SMALL, "input": [tokens_of(3), tokens_of(8193)]}), 400, param="input"
    )
    assert msg == (
        "This model's maximum context length is 8192 tokens, however you requested 8193 tokens (8193 in your "
        "prompt; 0 for the completion). Please reduce your prompt; or completion length."
    )
    text = "Regular health checkups find disease early. " * 1100
    n = ntokens(text)
    assert n > 8192
    msg = assert_error(post(oai, {"model": SMALL, "input": text}), 400, param="input")
    assert f"however you requested {n} tokens ({n} in your prompt" in msg


def test_empty_inputs_are_refused(oai):
    for bad in ("", ["ok", ""], [], [[]], None):
        msg = assert_error(post(oai, {"model": SMALL, "input": bad}), 400)
        assert "'$.input' is invalid" in msg, bad
    assert_error(post(oai, {"model": SMALL}), 400, code="missing_required_parameter", param="input")


def test_too_many_tokens_in_one_request(oai):
    body = {"model": SMALL, "input": [tokens_of(8192)] * 37}  # 303,104 tokens, each input within 8,192
    msg = assert_error(post(oai, body), 400, code="max_tokens_per_request")
    assert msg == "Requested 303104 tokens, max 300000 tokens per request"
    oai.set_openai_limits(max_request_tokens=10)
    assert post(oai, {"model": SMALL, "input": [tokens_of(5), tokens_of(5)]}).status_code == 200
    assert_error(
        post(oai, {"model": SMALL, "input": [tokens_of(5), tokens_of(6)]}), 400, code="max_tokens_per_request"
    )


def test_a_wrong_or_missing_key_is_refused_without_showing_it(oai):
    r = post(oai, {"model": SMALL, "input": "hi"}, key=WRONG_KEY)
    msg = assert_error(r, 401, code="invalid_api_key")
    assert msg.startswith("Incorrect API key provided") and "sk-" not in r.text and "987654" not in r.text
    assert "didn't provide an API key" in assert_error(
        post(oai, {"model": SMALL, "input": "hi"}, key=None), 401
    )
    with pytest.raises(openai.AuthenticationError) as e:
        client(oai, api_key=WRONG_KEY).embeddings.create(model=SMALL, input="hi")
    assert e.value.code == "invalid_api_key" and WRONG_KEY[3:] not in str(e.value)
    assert_error(post(oai, {"model": SMALL, "input": "hi"}, key=API_KEY), 401, code="invalid_api_key")
    oai.set_openai_key("")  # no key configured: every key is refused, the right one too
    assert_error(post(oai, {"model": SMALL, "input": "hi"}), 401, code="invalid_api_key")
    assert [e["status"] for e in oai.openai.log()] == [401] * 5


def test_models_and_dimensions(oai):
    msg = assert_error(post(oai, {"model": ADA, "input": "hi", "dimensions": 256}), 400, param="dimensions")
    assert "does not support specifying dimensions" in msg
    ada = post(oai, {"model": ADA, "input": TEXTS[0]})
    assert ada.status_code == 200 and len(ada.json()["data"][0]["embedding"]) == 1536
    assert np.array_equal(
        np.array(ada.json()["data"][0]["embedding"], dtype=np.float32), want(TEXTS[:1], ADA)[0]
    )
    assert not np.allclose(want(TEXTS[:1], ADA), want(TEXTS[:1]), atol=1e-3)
    for bad in (0, 1537, -5, True, "256", 25.5):
        assert_error(
            post(oai, {"model": SMALL, "input": "hi", "dimensions": bad}), 400, "invalid_value", "dimensions"
        )
    assert_error(
        post(oai, {"model": LARGE, "input": "hi", "dimensions": 3073}), 400, "invalid_value", "dimensions"
    )
    ok = post(oai, {"model": SMALL, "input": TEXTS[0], "dimensions": 1536})
    assert np.array_equal(np.array(ok.json()["data"][0]["embedding"], dtype=np.float32), want(TEXTS[:1])[0])
    msg = assert_error(post(oai, {"model": "text-embedding-4", "input": "hi"}), 404, code="model_not_found")
    assert "`text-embedding-4` does not exist" in msg
    with pytest.raises(openai.NotFoundError):
        client(oai).embeddings.create(model="gpt-4o", input="hi")
    assert_error(post(oai, {"input": "hi"}), 400)
    fmt = post(oai, {"model": SMALL, "input": "hi", "encoding_format": "int8"})
    assert_error(fmt, 400, "invalid_value", "encoding_format")
    assert "supplied: foo" in assert_error(post(oai, {"model": SMALL, "input": "hi", "foo": 1}), 400)
    bad_json = HTTP.post(
        oai.url + "/v1/embeddings", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert "could not parse the JSON body" in assert_error(bad_json, 400)
    assert HTTP.get(oai.url + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"}).status_code == 405


# ---------------------------------------------------------------- rate limits
def test_requests_per_minute(oai):
    before = oai.openai.stats()
    oai.set_openai_limits(rpm=2)
    raw = client(oai).embeddings.with_raw_response
    first = raw.create(model=SMALL, input="hi")
    h = first.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert 29.0 < float(h["x-ratelimit-reset-requests"].rstrip("s")) <= 30.0  # one request back in 30 s
    assert "x-ratelimit-limit-tokens" not in h  # no tpm set
    assert first.parse().data[0].embedding
    second = raw.create(model=SMALL, input="hi").headers
    assert second["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"1m0s|5\d(\.\d+)?s", second["x-ratelimit-reset-requests"])  # both back in a minute
    with pytest.raises(openai.RateLimitError) as e:
        client(oai).embeddings.create(model=SMALL, input="hi")
    err, h = e.value, e.value.response.headers
    assert err.code == "rate_limit_exceeded" and err.body["type"] == "requests"
    assert "on requests per min (RPM): Limit 2, Used 2, Requested 1. Please try again in 29." in err.message
    assert 29_000 < int(h["retry-after-ms"]) <= 30_000 and h["retry-after"] == "30"
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("2", "0")
    assert [x["status"] for x in oai.openai.log()] == [200, 200, 429]
    assert counted(oai, before, "limited") == {"requests": 1, "tokens": 0, "too_large": 0}


def test_tokens_per_minute_and_retry_after(oai):
    # MiniLM vectors of these texts in the cache first: the test measures the bucket, not the model
    warm = post(
        oai,
        {"model": SMALL, "input": [tokens_of(n) for n in (500, 200, 100, 60)], "encoding_format": "base64"},
    )
    assert warm.status_code == 200
    before = oai.openai.stats()
    oai.set_openai_limits(tpm=600)  # a bucket of 600 tokens, refilled at 10 tokens a second
    ok = post(oai, {"model": SMALL, "input": [tokens_of(500)]})
    assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-tokens"] == "600"
    assert ok.headers["x-ratelimit-remaining-tokens"] == "100"
    assert 49.0 < float(ok.headers["x-ratelimit-reset-tokens"].rstrip("s")) <= 50.0
    assert "x-ratelimit-limit-requests" not in ok.headers
    r = post(oai, {"model": SMALL, "input": [tokens_of(200)]})
    msg = assert_error(r, 429, "rate_limit_exceeded", type_="tokens")
    m = re.search(
        r"in organization org-rehearsal on tokens per min \(TPM\): Limit 600, Used (\d+), Requested 200\. "
        r"Please try again in (\d+(?:\.\d+)?)s\.",
        msg,
    )
    used, wait = int(m.group(1)), float(m.group(2))  # 500 used, less what was refilled since
    assert 480 <= used <= 500 and abs(wait - (200 - (600 - used)) / 10) < 0.2
    assert 8_000 < int(r.headers["retry-after-ms"]) <= 10_000 and r.headers["retry-after"] == "10"
    assert abs(int(r.headers["retry-after-ms"]) / 1000 - wait) < 0.2
    assert 100 <= int(r.headers["x-ratelimit-remaining-tokens"]) <= 120
    never = post(oai, {"model": SMALL, "input": [tokens_of(700)]})  # more than the bucket holds: never fits
    assert "Request too large for text-embedding-3-small" in assert_error(
        never, 429, "rate_limit_exceeded", type_="tokens"
    )
    assert "retry-after-ms" not in never.headers and never.headers["x-ratelimit-limit-tokens"] == "600"
    # a bucket of 100 tokens, 100 a second; waiting what retry-after-ms says is enough
    oai.set_openai_limits(tpm=6000, burst_seconds=1)
    assert post(oai, {"model": SMALL, "input": [tokens_of(100)]}).status_code == 200
    r = post(oai, {"model": SMALL, "input": [tokens_of(60)]})
    assert r.status_code == 429 and 200 <= int(r.headers["retry-after-ms"]) <= 600
    time.sleep(int(r.headers["retry-after-ms"]) / 1000 + 0.01)
    assert post(oai, {"model": SMALL, "input": [tokens_of(60)]}).status_code == 200
    assert counted(oai, before, "limited") == {"requests": 0, "tokens": 2, "too_large": 1}


def test_the_official_client_waits_as_retry_after_says(oai):
    before = oai.openai.stats()
    oai.set_openai_limits(rpm=60, burst_seconds=1)  # one request in the bucket, one more each second
    c = client(oai, max_retries=4)
    t0 = time.monotonic()
    for _ in range(3):
        assert len(c.embeddings.create(model=SMALL, input=TEXTS[0]).data[0].embedding) == 1536
    assert time.monotonic() - t0 > 1.8  # three requests at one a second
    statuses = [e["status"] for e in oai.openai.log()]
    assert statuses.count(200) == 3 and 429 in statuses
    assert counted(oai, before, "limited")["requests"] == statuses.count(429)


# ---------------------------------------------------------------- injected faults, latency, log
def _statuses(srv, n: int) -> list[int]:
    out = []
    for _ in range(n):
        r = post(srv, {"model": SMALL, "input": "hi", "encoding_format": "base64"})
        out.append(r.status_code)
        if r.status_code != 200:
            assert set(r.json()["error"]) == ERROR_KEYS
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded" and r.headers["retry-after-ms"] == "150"
        elif r.status_code >= 500:
            assert r.json()["error"]["type"] == "server_error"
    return out


def test_injected_errors_follow_the_seed(oai):
    before = oai.openai.stats()
    oai.set_openai_limits(error_rate=0.3, rate_429=0.2, retry_after_ms=150, seed=11)
    first = _statuses(oai, 40)
    injected = counted(oai, before, "injected")
    assert {k: first.count(int(k)) for k in ("429", "500", "503")} == injected
    assert all(injected[k] >= 1 for k in injected) and 10 <= sum(injected.values()) <= 30
    assert first.count(200) == 40 - sum(injected.values())
    oai.set_openai_limits(error_rate=0.3, rate_429=0.2, retry_after_ms=150, seed=11)
    assert _statuses(oai, 40) == first  # the same seed, the same answers
    oai.set_openai_limits(error_rate=0.3, rate_429=0.2, retry_after_ms=150, seed=12)
    assert _statuses(oai, 40) != first
    oai.set_openai_limits()
    assert set(_statuses(oai, 10)) == {200}


def test_the_official_client_retries_injected_errors_and_the_log_shows_each_try(oai):
    oai.set_openai_limits(error_rate=0.5, seed=3)  # seed 3: two errors, then an answer
    r = client(oai, max_retries=8).embeddings.create(model=SMALL, input=TEXTS[:2])
    assert np.array_equal(np.array([d.embedding for d in r.data], dtype=np.float32), want(TEXTS[:2]))
    log = oai.openai.log()
    assert len(log) == 3 and log[-1]["status"] == 200 and all(e["status"] in (500, 503) for e in log[:-1])
    assert all(e["hashes"] == [sha(TEXTS[0]), sha(TEXTS[1])] for e in log)


def test_latency_is_per_request_and_concurrent_requests_overlap(oai):
    assert post(oai, {"model": SMALL, "input": "hi"}).status_code == 200  # warm (vectors cached)
    oai.set_openai_limits(latency_ms=600)
    t0 = time.monotonic()
    assert post(oai, {"model": SMALL, "input": "hi"}).status_code == 200
    assert time.monotonic() - t0 >= 0.6
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(post(oai, {"model": SMALL, "input": "hi"}).status_code)
        )
        for _ in range(4)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4 and time.monotonic() - t0 < 1.8  # one after another: 2.4 s


def test_log_stats_and_admin_routes(oai):
    before = oai.openai.stats()  # counters are the server's since it started (the log can be cleared)
    client(oai).embeddings.create(model=SMALL, input=TEXTS[:2])
    post(oai, {"model": SMALL, "input": "hi"}, key=WRONG_KEY)
    admin = {"Authorization": f"Bearer {API_KEY}"}
    log = HTTP.get(oai.url + "/_emulator/openai/log", headers=admin).json()["log"]
    assert [(e["status"], e["inputs"], e["model"]) for e in log] == [(200, 2, SMALL), (401, 0, "")]
    assert log[0]["hashes"] == [sha(TEXTS[0]), sha(TEXTS[1])] and log[0]["tokens"] == ntokens(
        TEXTS[0]
    ) + ntokens(TEXTS[1])
    assert log[1]["code"] == "invalid_api_key" and time.time() - 60 < log[0]["t"] <= log[1]["t"]
    for key in (KEY, "nope"):  # the OpenAI key opens no admin route
        assert (
            HTTP.get(
                oai.url + "/_emulator/openai/log", headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 401
        )
    stats = HTTP.get(oai.url + "/_emulator/openai", headers=admin).json()
    assert stats["requests"] - before["requests"] == 2 and stats["log_entries"] == 2
    assert stats["served_requests"] - before["served_requests"] == 1
    assert {
        k: v - before["by_status"].get(k, 0) for k, v in stats["by_status"].items() if k in ("200", "401")
    } == {
        "200": 1,
        "401": 1,
    }
    assert stats["tokens_served"] - before["tokens_served"] == log[0]["tokens"]
    assert stats["inputs_served"] - before["inputs_served"] == 2
    assert (
        stats["vectors"] == "semantic" and stats["key_set"] is True and stats["limits"]["max_inputs"] == 2048
    )
    set_ = HTTP.post(oai.url + "/_emulator/openai/limits", headers=admin, json={"rpm": 5, "seed": 3})
    assert set_.status_code == 200 and set_.json() == {**stats["limits"], "rpm": 5, "seed": 3}
    assert oai.openai.limits.rpm == 5 and oai.openai.stats()["remaining_requests"] == 5
    for bad in ({"nope": 1}, {"error_rate": 2}, {"burst_seconds": 0}):
        assert HTTP.post(oai.url + "/_emulator/openai/limits", headers=admin, json=bad).status_code == 422
    assert oai.openai.limits.rpm == 5  # a refused change changes nothing
    assert cloud_emulator.set_openai_limits_remote(oai.url, API_KEY, tpm=1000)["tpm"] == 1000
    assert oai.openai.limits.rpm == 0  # the limits are replaced, not merged
    cleared = HTTP.delete(oai.url + "/_emulator/openai/log", headers=admin).json()
    assert cleared == {"cleared": 2} and oai.openai.log() == []
    assert ("POST", "/v1/embeddings") in oai.requests


def test_hash_vectors_are_deterministic_per_model_and_text():
    with cloud_emulator.EmulatorServer(
        corpus.build_hostile_corpus(), API_KEY, openai_key=KEY, openai_vectors="hash"
    ) as s:
        c = client(s)
        a = np.array(
            [d.embedding for d in c.embeddings.create(model=SMALL, input=TEXTS).data], dtype=np.float32
        )
        b = np.array(c.embeddings.create(model=SMALL, input=TEXTS[2]).data[0].embedding, dtype=np.float32)
        assert np.array_equal(a, want(TEXTS, mode="hash")) and np.array_equal(a[2], b)
        d = np.array(c.embeddings.create(model=SMALL, input=TEXTS[0], dimensions=64).data[0].embedding)
        assert np.allclose(d, a[0][:64] / np.linalg.norm(a[0][:64].astype(np.float64)), atol=1e-6)
        ada = np.array(c.embeddings.create(model=ADA, input=TEXTS[0]).data[0].embedding, dtype=np.float32)
        assert not np.allclose(ada, a[0], atol=1e-3)
        assert s.openai.stats()["vectors"] == "hash"


def test_clustered_vectors_are_seeded_by_the_text_and_shaped_like_text_embeddings():
    """Through the official client: the same text gives the same vector whatever shares its request, and
    2,000 texts are spread as text embeddings are (mean cosine near 0.4, each with close neighbours among
    the same topic), not as the hash mode's nearly orthogonal ones."""
    texts = [
        f"chunk {k} of document {d}: 검진 결과 " + "lorem ipsum " * 5 for d in range(40) for k in range(50)
    ]
    with cloud_emulator.EmulatorServer(
        corpus.build_hostile_corpus(), API_KEY, openai_key=KEY, openai_vectors="clustered"
    ) as s:
        c = client(s)
        got = np.array(
            [
                d.embedding
                for i in range(0, 2000, 500)
                for d in c.embeddings.create(model=SMALL, input=texts[i : i + 500]).data
            ],
            dtype=np.float32,
        )
        one = np.array(c.embeddings.create(model=SMALL, input=texts[7]).data[0].embedding, dtype=np.float32)
        assert s.openai.stats()["vectors"] == "clustered"
    assert np.array_equal(got, want(texts, mode="clustered")) and np.array_equal(got[7], one)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    sims = got @ got.T
    n = len(got)
    mean = (sims.sum() - n) / (n * n - n)
    np.fill_diagonal(sims, -1)
    assert 0.3 < mean < 0.5, mean
    assert np.median(sims.max(axis=1)) > 0.75, np.median(sims.max(axis=1))  # a topic's other texts
    hashed = want(texts[:200], mode="hash")
    assert abs(float(np.mean(hashed @ hashed.T - np.eye(200)))) < 0.01
    assert not np.allclose(want(texts[:1], model=ADA, mode="clustered"), got[:1], atol=1e-3)


# ---------------------------------------------------------------- the command line and a subprocess
def test_command_line_options_and_start_subprocess(key_env, monkeypatch):
    args = cloud_emulator.build_parser().parse_args(
        ["--openai-limits", '{"rpm": 1, "seed": 3}', "--openai-rpm", "7", "--openai-burst-seconds", "2"]
    )
    assert cloud_emulator._openai_limits(args) == {"rpm": 7, "seed": 3, "burst_seconds": 2.0}
    args = cloud_emulator.build_parser().parse_args(
        ["--openai-tpm", "1000", "--openai-latency-ms", "5", "--openai-error-rate", "0.1"]
    )
    assert cloud_emulator._openai_limits(args) == {"tpm": 1000, "latency_ms": 5.0, "error_rate": 0.1}
    assert args.openai_key_env == "OPENAI_API_KEY" and args.openai_vectors == "semantic"
    monkeypatch.setenv("REHEARSAL_OPENAI_KEY", KEY)
    h = cloud_emulator.start_subprocess(
        "hostile",
        key_env,
        openai_key_env="REHEARSAL_OPENAI_KEY",
        openai_vectors="hash",
        openai_limits={"rpm": 1, "max_inputs": 5},
    )
    try:
        stats = HTTP.get(h.url + "/_emulator/openai", headers={"Authorization": f"Bearer {API_KEY}"}).json()
        assert stats["vectors"] == "hash" and stats["key_set"] is True
        assert (stats["limits"]["rpm"], stats["limits"]["max_inputs"]) == (1, 5)
        r = client(h).embeddings.create(model=SMALL, input=TEXTS[:1])
        assert np.array_equal(
            np.array(r.data[0].embedding, dtype=np.float32), want(TEXTS[:1], mode="hash")[0]
        )
        with pytest.raises(openai.RateLimitError):
            client(h).embeddings.create(model=SMALL, input=TEXTS[:1])
    finally:
        h.stop()


# ---------------------------------------------------------------- the demo-openai corpus
def test_demo_openai_corpus_is_the_demo_with_managed_openai_vectors(demo_corpus_master):
    from llama_cloud.types import Pipeline
    from pydantic import TypeAdapter

    from runbook.export_format import embed_text, node_to_row

    oc = corpus.load("demo-openai", CACHE)
    with cloud_emulator.EmulatorServer(oc, API_KEY, openai_key=KEY, embed_cache=str(CACHE)) as s:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        raw = HTTP.get(f"{s.url}/api/v1/pipelines/{corpus.DEMO_PIPELINE_ID}", headers=auth)
        p = TypeAdapter(Pipeline).validate_json(raw.content, strict=True)
        assert p.embedding_config.type == "MANAGED_OPENAI_EMBEDDING"
        assert p.embedding_config.component.api_model_name == "openai-text-embedding-3-small"
        assert (
            embeddings.spec_from_pipeline(raw.json()["embedding_config"]).model_id
            == "openai:text-embedding-3-small@1536"
        )
        # the same documents and chunks as the demo corpus; 1536-d vectors the stand-in answers for them
        assert list(oc.documents) == list(demo_corpus_master.documents)
        assert oc.total_chunks() == demo_corpus_master.total_chunks()
        doc_id = list(oc.documents)[3]
        chunks = oc.chunks[doc_id]
        assert chunks == demo_corpus_master.chunks[doc_id]
        texts = [embed_text(node_to_row(doc_id, k, c)) for k, c in enumerate(chunks)]
        stored = np.stack([oc.vector(doc_id, c["id_"]) for c in chunks])
        assert stored.shape == (len(chunks), 1536)
        served = client(s).embeddings.create(model=SMALL, input=texts[1:3])  # a re-embedding compares exactly
        assert np.array_equal(np.array([d.embedding for d in served.data], dtype=np.float32), stored[1:3])
        minilm = np.stack([demo_corpus_master.vector(doc_id, c["id_"]) for c in chunks])
        assert abs(cos(stored[0], stored[1]) - cos(minilm[0], minilm[1])) < 1e-5
        # retrieval ranks as on the demo corpus
        for q in corpus.demo_questions()[:4]:
            r = HTTP.post(
                f"{s.url}/api/v1/pipelines/{corpus.DEMO_PIPELINE_ID}/retrieve",
                json={"query": q["question"], "dense_similarity_top_k": 6},
                headers=auth,
                timeout=60,
            )
            got = [(n["node"]["id_"], n["score"]) for n in r.json()["retrieval_nodes"]]
            ref = demo_corpus_master.search(q["question"], 6, 0.0, lambda m: True)
            assert [i for i, _ in got] == [n["id_"] for n, _ in ref], q["question"]
            assert np.allclose([x for _, x in got], [x for _, x in ref], atol=1e-5)
            assert got[0][0] in {c["id_"] for d in q["expected_document_ids"] for c in oc.chunks[d]}
    copy.deepcopy(oc).search("colonoscopy", 1, 0.0, lambda m: True)  # a copy keeps the query embedding
    with pytest.raises(ValueError, match="demo-openai"):
        corpus.load("no-such-corpus")
