"""Re-embedding through the OpenAI-compatible endpoint of the local server, as production re-embeds through
OpenAI's: faults, kill -9 and resume, inputs over the token limit, the spend cap, pacing to the rate limit.
The server is the real one (its ``/v1/embeddings`` is what the official ``openai`` client calls)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from runbook import embeddings, export_format, extract, openai_embedder, reembed, source
from runbook.rehearsal import cloud_emulator, openai_stand_in

from .conftest import API_KEY

OPENAI_KEY = "sk-rehearsal-test-0001-openai"
MODEL = "text-embedding-3-small"


@pytest.fixture
def oa_server(demo_corpus, monkeypatch):
    """The local server with the demo corpus and its OpenAI stand-in (cheap ``hash`` vectors)."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", API_KEY)
    with cloud_emulator.EmulatorServer(
        demo_corpus, API_KEY, openai_key=OPENAI_KEY, openai_vectors="hash"
    ) as srv:
        yield srv


def spec_for(srv) -> embeddings.ModelSpec:
    return embeddings.ModelSpec("openai", MODEL, 1536, "OPENAI_API_KEY", api_base=srv.url + "/v1")


def export_of(srv, root, **kw):
    src = source.open_source(srv.url, "LLAMA_CLOUD_API_KEY", max_retries=8)
    return extract.export_index(src, root, index_name="Dr.Welno", shard_rows=40, progress=False, **kw).path


def log(srv) -> list[dict]:
    return srv.openai.log()


def requested_hashes(srv) -> set[str]:
    return {h for entry in log(srv) if entry["status"] == 200 for h in entry["hashes"]}


def expected(texts: list[str]) -> np.ndarray:
    return openai_stand_in.vectors_for(texts, MODEL, 1536, "hash")


def assert_vectors_are_the_endpoints(path):
    """Every chunk's stored vector is exactly what the endpoint returns for its text."""
    rows = list(export_format.open_export(path).iter_chunks())
    texts = [export_format.embed_text(r) for r in rows]
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert got.shape == (len(rows), 1536)
    assert np.array_equal(got, expected(texts))
    assert {r["embedding_source"] for r in rows} == {"computed"}


def tree_bytes(path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_faults_leave_every_vector_equal_to_the_endpoints(oa_server, tmp_path):
    path = export_of(oa_server, tmp_path / "exports")
    # 10% of the requests fail (5xx or 429); at most 4 inputs a request, so there are many requests
    oa_server.openai.set_limits(error_rate=0.05, rate_429=0.05, retry_after_ms=20, seed=11, max_inputs=4)
    out = reembed.apply(
        path,
        spec_for(oa_server),
        tmp_path / "cache.sqlite",
        allow_spend=True,
        max_cost_usd=1.0,
        progress=False,
        concurrency=4,
        limits=reembed.Limits(max_inputs=4),
    )
    n = oa_server.corpus.total_chunks()
    assert out["embedded"] == n == out["computed_now"]
    stats = oa_server.openai.stats()
    assert sum(stats["injected"].values()) > 0, stats  # the faults really happened...
    assert out["api"]["retries"] >= sum(stats["injected"].values())  # ...and each was retried
    assert_vectors_are_the_endpoints(path)
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert {sh["embedding_model"] for sh in m["shards"]} == {spec_for(oa_server).model_id}
    assert "via http://127.0.0.1" in spec_for(oa_server).model_id  # never cached as OpenAI's own vectors
    # billed tokens are the server's count, and the spend follows the price
    billed = sum(e["tokens"] for e in log(oa_server) if e["status"] == 200)
    assert out["api"]["tokens billed"] == billed == out["tokens (cl100k)"]
    assert out["api"]["spent $"] == pytest.approx(billed * 0.02 / 1e6, abs=1e-6)


RUN_APPLY = """
import sys
from runbook import embeddings, reembed
spec = embeddings.ModelSpec("openai", "text-embedding-3-small", 1536, "OPENAI_API_KEY", api_base=sys.argv[3])
reembed.apply(sys.argv[1], spec, sys.argv[2], allow_spend=True, max_cost_usd=1.0, progress=False, concurrency=1,
              limits=reembed.Limits(max_inputs=8))
"""


def cached_hashes(cache_path, model_id: str) -> set[str]:
    db = sqlite3.connect(cache_path)
    try:
        return {h for (h,) in db.execute("SELECT h FROM emb WHERE model=?", (model_id,))}
    finally:
        db.close()


def test_kill_9_mid_reembedding_then_resume_pays_nothing_twice(oa_server, tmp_path):
    path = export_of(oa_server, tmp_path / "exports")
    spec = spec_for(oa_server)
    cache = tmp_path / "cache.sqlite"
    embeddings.EmbeddingCache(cache).close()  # the table exists before the child writes
    oa_server.openai.set_limits(latency_ms=150)
    env = {**os.environ, "OPENAI_API_KEY": OPENAI_KEY}
    child = subprocess.Popen([sys.executable, "-c", RUN_APPLY, str(path), str(cache), spec.api_base], env=env)
    try:
        deadline = time.time() + 120
        while len(cached_hashes(cache, spec.model_id)) < 60:  # proven: some batches stored, more to come
            assert child.poll() is None, "the re-embedding ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    stored = cached_hashes(cache, spec.model_id)
    rows = list(export_format.open_export(path).iter_chunks())  # the manifest names whole shards only
    texts = [export_format.embed_text(r) for r in rows]
    waiting = {embeddings.text_hash(export_format.embed_text(r)) for r in rows if r["embedding"] is None}
    assert 60 <= len(stored) < len(set(texts)) and waiting
    oa_server.openai.clear_log()
    out = reembed.apply(
        path, spec, cache, allow_spend=True, max_cost_usd=1.0, progress=False, limits=reembed.Limits(tpm=0)
    )
    again = requested_hashes(oa_server)
    assert again and not (again & stored)  # no request for a chunk already embedded
    assert again | stored >= {embeddings.text_hash(t) for t in texts}
    assert out["already cached"] == len(
        stored & waiting
    )  # embedded, not yet in a shard: taken from the cache
    assert_vectors_are_the_endpoints(path)


def long_document(demo_corpus) -> tuple[str, str]:
    """A document with one chunk over the 8,192-token input limit (Korean text, as Dr.Welno's is)."""
    doc_id, chunks = next(iter(demo_corpus.chunks.items()))
    doc = dict(demo_corpus.documents[doc_id])
    long_chunk = dict(chunks[0])
    long_chunk["text"] = "공복혈당 126 mg/dL 이상, HbA1c 6.5% 이상이면 당뇨병으로 진단합니다. " * 500
    demo_corpus.put_document(doc, [long_chunk, *chunks[1:]])
    return doc_id, long_chunk["id_"]


def test_a_chunk_over_the_token_limit_is_named_with_its_document(oa_server, tmp_path):
    doc_id, chunk_id = long_document(oa_server.corpus)
    path = export_of(oa_server, tmp_path / "exports")
    spec = spec_for(oa_server)
    before = tree_bytes(path)
    p = reembed.plan(path, spec, tmp_path / "cache.sqlite")
    assert p.too_long_count == 1 and p.too_long[0]["document_id"] == doc_id
    assert p.too_long[0]["chunk_id"] == chunk_id and p.too_long[0]["tokens"] > 8192
    with pytest.raises(reembed.InputTooLong) as e:
        reembed.apply(
            path, spec, tmp_path / "cache.sqlite", allow_spend=True, max_cost_usd=1.0, progress=False
        )
    assert doc_id in str(e.value) and chunk_id in str(e.value) and "truncate_long_inputs" in str(e.value)
    assert log(oa_server) == [] and tree_bytes(path) == before  # nothing sent, nothing written
    # allowed: embedded cut to the limit, and listed
    reembed.apply(
        path,
        spec,
        tmp_path / "cache.sqlite",
        allow_spend=True,
        max_cost_usd=1.0,
        progress=False,
        truncate_long=True,
    )
    m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert m["truncated_inputs_count"] == 1
    assert (
        m["truncated_inputs"][0]["document_id"] == doc_id and m["truncated_inputs"][0]["chunk_id"] == chunk_id
    )
    assert max(e["tokens"] for e in log(oa_server)) <= 300_000
    row = next(r for r in export_format.open_export(path).iter_chunks() if r["chunk_id"] == chunk_id)
    cut = openai_embedder.truncate(export_format.embed_text(row), 8192)
    assert len(openai_embedder.encoding().encode_ordinary(cut)) <= 8192
    assert np.array_equal(np.array(row["embedding"], dtype=np.float32), expected([cut])[0])


def counted_texts(monkeypatch) -> list[str]:
    """Every text tokenised from now on, by the plan, by apply or by the embedder's batching."""
    seen: list[str] = []
    real = openai_embedder.count_tokens

    def spy(texts):
        seen.extend(texts)
        return real(texts)

    monkeypatch.setattr(openai_embedder, "count_tokens", spy)
    monkeypatch.setattr(reembed, "count_tokens", spy)
    return seen


def test_each_text_is_tokenised_once_when_apply_reuses_the_plan(oa_server, tmp_path, monkeypatch):
    """Tokenising was phase 01's largest own cost at a million chunks, done three times over (the plan,
    apply, the embedder's batching); with the plan's counts it is done once, and a text cut to the limit is
    counted again (its count changed), nothing else."""
    doc_id, chunk_id = long_document(oa_server.corpus)
    path = export_of(oa_server, tmp_path / "exports")
    spec = spec_for(oa_server)
    seen = counted_texts(monkeypatch)
    p = reembed.plan(path, spec, tmp_path / "cache.sqlite", truncate_long=True)
    n = oa_server.corpus.total_chunks()
    assert len(seen) == n == p.chunks_to_embed and sum(map(len, p.counts.values())) == n
    seen.clear()
    out = reembed.apply(
        path,
        spec,
        tmp_path / "cache.sqlite",
        allow_spend=True,
        max_cost_usd=1.0,
        progress=False,
        truncate_long=True,
        planned=p,
        limits=reembed.Limits(max_inputs=8),
    )
    assert out["computed_now"] == n
    row = next(r for r in export_format.open_export(path).iter_chunks() if r["chunk_id"] == chunk_id)
    assert seen == [openai_embedder.truncate(export_format.embed_text(row), 8192)]
    # batched by the plan's counts, the requests kept to the limits and billed what the plan counted
    # (the long text at its cut length)
    assert max(len(e["hashes"]) for e in log(oa_server)) <= 8
    billed = sum(e["tokens"] for e in log(oa_server) if e["status"] == 200)
    assert billed == p.tokens
    rows = [r for r in export_format.open_export(path).iter_chunks() if r["chunk_id"] != chunk_id]
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert np.array_equal(got, expected([export_format.embed_text(r) for r in rows]))


def test_counts_that_do_not_fit_the_shard_are_not_used(oa_server, tmp_path, monkeypatch):
    path = export_of(oa_server, tmp_path / "exports")
    spec = spec_for(oa_server)
    p = reembed.plan(path, spec, tmp_path / "cache.sqlite")
    first = next(iter(p.counts))
    p.counts[first] = p.counts[first][:-1]  # one short: not this shard's chunks
    seen = counted_texts(monkeypatch)
    reembed.apply(
        path, spec, tmp_path / "cache.sqlite", allow_spend=True, max_cost_usd=1.0, progress=False, planned=p
    )
    assert len(seen) == len(p.counts[first]) + 1  # that shard's texts counted again, once (the rest: none)
    assert_vectors_are_the_endpoints(path)


def test_the_spend_cap_refuses_before_any_request_when_the_estimate_is_over(oa_server, tmp_path):
    path = export_of(oa_server, tmp_path / "exports")
    before = tree_bytes(path)
    p = reembed.plan(path, spec_for(oa_server), tmp_path / "cache.sqlite")
    with pytest.raises(reembed.SpendNotAllowed, match="exceeds"):
        reembed.apply(
            path,
            spec_for(oa_server),
            tmp_path / "cache.sqlite",
            allow_spend=True,
            max_cost_usd=p.est_cost_usd * 0.5,
            progress=False,
        )
    assert log(oa_server) == [] and tree_bytes(path) == before


def test_the_spend_cap_stops_a_run_before_it_is_exceeded(oa_server, tmp_path):
    """The cap also holds while the run goes (the estimate can be wrong: a resumed run, another price): no
    request that could take the billed total over it is sent, and what was paid for is stored."""
    texts = [f"검진 항목 {i}: 총콜레스테롤, LDL-C, HDL-C, 중성지방 " * 20 for i in range(200)]
    items = [(embeddings.text_hash(t), t) for t in texts]
    tokens = sum(openai_embedder.count_tokens(texts))
    price = 0.02
    cap = tokens * price / 1e6 * 0.6
    stored: dict[str, np.ndarray] = {}
    emb = openai_embedder.RateLimitedEmbedder(
        MODEL,
        OPENAI_KEY,
        oa_server.url + "/v1",
        1536,
        concurrency=3,
        batch_tokens=2_000,
        price_per_mtok=price,
        max_cost_usd=cap,
    )
    with pytest.raises(openai_embedder.SpendCapReached, match="spend cap"):
        emb.run(items, lambda hs, vecs: stored.update(zip(hs, vecs, strict=True)))
    billed = sum(e["tokens"] for e in log(oa_server) if e["status"] == 200)
    assert 0 < billed * price / 1e6 <= cap  # stopped before the cap, after real work
    assert emb.progress.tokens == billed and emb.progress.usd <= cap
    assert set(stored) == requested_hashes(oa_server)  # everything paid for was stored
    for h, t in zip(*zip(*items, strict=True), strict=True):
        if h in stored:
            assert np.array_equal(stored[h], expected([t])[0])


def test_requests_paced_to_the_limit_are_never_refused(oa_server, tmp_path):
    """With the account's tokens-per-minute given, the client paces itself under it: the server's limiter
    never answers 429, and the run takes at least as long as the limit says it must."""
    texts = [f"문서 {i}: 간기능 검사 AST, ALT, γ-GTP 수치의 해석 " * 8 for i in range(150)]
    tokens = sum(openai_embedder.count_tokens(texts))
    tpm = 240_000  # 4,000 tokens a second
    oa_server.openai.set_limits(tpm=tpm, burst_seconds=4)
    emb = openai_embedder.RateLimitedEmbedder(
        MODEL, OPENAI_KEY, oa_server.url + "/v1", 1536, limits=openai_embedder.Limits(tpm=tpm), concurrency=4
    )
    t0 = time.monotonic()
    emb.run([(embeddings.text_hash(t), t) for t in texts], lambda hs, vecs: None)
    elapsed = time.monotonic() - t0
    assert tokens > 20_000
    assert [e for e in log(oa_server) if e["status"] == 429] == []
    assert emb.progress.rate_limited == 0 and emb.progress.tokens == tokens
    # the server's bucket holds 4 s of the limit; the rest cannot come faster than the limit
    assert elapsed >= (tokens - tpm / 60 * 4) / (tpm / 60) * 0.95


def test_a_request_larger_than_the_account_lets_through_is_split(oa_server):
    """A low tier's tokens-per-minute can be below one full request: the service answers "Request too
    large" (a 429 that waiting does not cure); the batch goes as halves and later batches stay smaller."""
    texts = [f"문서 {i}: 간기능 검사 AST, ALT, γ-GTP 수치의 해석 " * 8 for i in range(60)]
    oa_server.openai.set_limits(tpm=240_000, burst_seconds=1)  # the bucket holds 4,000 tokens
    emb = openai_embedder.RateLimitedEmbedder(
        MODEL, OPENAI_KEY, oa_server.url + "/v1", 1536, batch_tokens=12_000
    )
    got = {}
    emb.run(
        [(embeddings.text_hash(t), t) for t in texts], lambda hs, vecs: got.update(zip(hs, vecs, strict=True))
    )
    assert len(got) == len(texts)
    assert all(
        np.array_equal(got[embeddings.text_hash(t)], v) for t, v in zip(texts, expected(texts), strict=True)
    )
    assert oa_server.openai.stats()["limited"]["too_large"] >= 1
    assert max(e["tokens"] for e in log(oa_server) if e["status"] == 200) <= 4_000


def test_the_limit_learnt_from_the_headers_when_none_is_configured(oa_server):
    """With no limits given (the params' 0), the first answer's x-ratelimit headers set the pace."""
    oa_server.openai.set_limits(rpm=600, tpm=1_000_000)
    emb = openai_embedder.RateLimitedEmbedder(MODEL, OPENAI_KEY, oa_server.url + "/v1", 1536)
    emb.run([(embeddings.text_hash("혈압"), "혈압")], lambda hs, vecs: None)
    assert (emb.limits.rpm, emb.limits.tpm) == (600, 1_000_000)


def test_a_bad_key_stops_at_once_and_never_shows_the_key(oa_server, tmp_path, monkeypatch):
    path = export_of(oa_server, tmp_path / "exports")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-that-must-not-leak-123")
    before = tree_bytes(path)
    with pytest.raises(openai_embedder.EmbeddingRequestFailed, match="401") as e:
        reembed.apply(
            path,
            spec_for(oa_server),
            tmp_path / "c.sqlite",
            allow_spend=True,
            max_cost_usd=1.0,
            progress=False,
        )
    assert "sk-wrong-key" not in str(e.value) and OPENAI_KEY not in str(e.value)
    assert tree_bytes(path) == before  # nothing half-written


def test_no_api_base_means_openai_itself_whatever_the_environment_says(oa_server, monkeypatch):
    """The openai client would take OPENAI_BASE_URL from the environment: a stray one (a rehearsal's) would
    get production's key, and its vectors would be cached as OpenAI's own."""
    monkeypatch.setenv("OPENAI_BASE_URL", oa_server.url + "/v1")
    emb = openai_embedder.RateLimitedEmbedder(MODEL, OPENAI_KEY, "", 1536)
    assert str(emb._client.base_url).startswith("https://api.openai.com/v1")
    assert embeddings.ModelSpec("openai", MODEL, 1536).model_id == "openai:text-embedding-3-small@1536"
