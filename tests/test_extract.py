"""Phase 01 library: export, resume after kill -9, faults, corpus changes, and verify's findings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runbook import (
    atomic,
    embeddings,
    export_format,
    extract,
    records,
    reembed,
    source,
    verify,
)
from runbook.rehearsal import cloud_emulator

from .conftest import API_KEY, CACHE

MINILM = embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384)


def export(src, root, **kw):
    kw.setdefault("shard_rows", 40)
    return extract.export_index(src, root, index_name="Dr.Welno", progress=False, **kw)


def test_export_is_complete_read_only_and_verifies(src, server, tmp_path):
    res = export(src, tmp_path / "exports")
    m = res.manifest
    assert m["total_documents"] == 50 and m["total_chunks"] == server.corpus.total_chunks()
    assert m["total_documents"] == m["source_total_count"]
    assert m["pipeline"]["embedding_config"]["type"] == "HUGGINGFACE_API_EMBEDDING"
    assert m["embeddings"]["missing"] == m["total_chunks"]  # the server served no vectors
    assert len(m["shards"]) > 1 and not (res.path / "manifest.partial.json").exists()
    # Korean ids, file names and metadata pass through unchanged
    ids = {d["document_id"] for d in export_format.open_export(res.path).iter_documents()}
    assert ids == set(server.corpus.documents)
    row = next(
        r
        for r in export_format.open_export(res.path).iter_chunks()
        if r["document_id"].startswith("건강검진/")
    )
    assert json.loads(row["metadata_json"])["file_name"].endswith("_가이드.pdf")
    # re-embed with the pipeline's model, then the export verifies against the source
    out = reembed.apply(res.path, MINILM, CACHE, progress=False)
    assert out["embedded"] == m["total_chunks"]
    rep = verify.verify_export(res.path, source=src, sample=30)
    assert rep.ok, rep.to_string()
    assert {r["key"] for r in rep.metadata} >= {"source", "reviewed_by", "codes"}
    # the exporter never sent a write
    assert {method for method, _ in server.requests} == {"GET"}


def test_the_last_shard_is_written_while_the_confirming_listing_is_asked_for(src, tmp_path, monkeypatch):
    """The shard the first pass leaves in the buffer is written while the second listing confirms (they
    overlap: the write waits here until a confirming page has been asked for); the export is the same as a
    sequential one, and the writer is touched again only once that write has ended (finishing it twice
    would commit the same documents in two shards)."""
    import threading

    started, confirming = threading.Event(), threading.Event()
    overlapped, begun = [], []
    pages = []
    write_pair = extract._Writer._write_pair
    get_page = extract._get_page

    def slow_write(self, *a, **kw):
        started.set()
        overlapped.append(confirming.wait(timeout=30))  # set only by a page the confirming listing asks for
        return write_pair(self, *a, **kw)

    def page(*a):
        pages.append(a[2])
        if pages.count(0) > 1 and not confirming.is_set():  # the confirming listing's first page
            begun.append(started.wait(timeout=30))  # the write has begun before the confirmation ends
            confirming.set()
        return get_page(*a)

    monkeypatch.setattr(extract._Writer, "_write_pair", slow_write)
    monkeypatch.setattr(extract, "_get_page", page)
    res = export(src, tmp_path / "exports", shard_rows=100_000)
    assert begun == [True] and overlapped == [
        True
    ]  # one shard, written while the confirming listing was asked for
    assert res.listing_passes == 2 and len(res.manifest["shards"]) == 1
    assert res.manifest["total_documents"] == 50 == res.manifest["source_total_count"]
    rep = verify.verify_export(res.path, source=src, sample=10, expect_vectors=False)  # no vectors served
    assert rep.ok, rep.to_string()


def test_a_shard_write_failing_beside_the_confirming_listing_stops_the_export(src, tmp_path, monkeypatch):
    """A disk that fills while the last shard is written beside the confirming listing stops the export with
    that error (not swallowed, not silently retried), and running it again resumes to a complete export."""
    write_pair = extract._Writer._write_pair
    failed = []

    def full_disk(self, *a, **kw):
        if not failed:
            failed.append(1)
            raise OSError(28, "No space left on device")
        return write_pair(self, *a, **kw)

    monkeypatch.setattr(extract._Writer, "_write_pair", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export(src, tmp_path / "exports", shard_rows=100_000)
    (partial,) = (tmp_path / "exports").iterdir()
    assert not (partial / "manifest.json").exists()
    res = export(src, tmp_path / "exports", shard_rows=100_000)
    assert res.path == partial and res.manifest["total_documents"] == 50 == res.manifest["source_total_count"]


def test_reembedding_needs_permission_to_spend(src, tmp_path, monkeypatch):
    res = export(src, tmp_path / "exports")
    paid = embeddings.ModelSpec("openai", "text-embedding-3-small", 1536, "OPENAI_API_KEY")
    p = reembed.plan(res.path, paid, tmp_path / "cache.sqlite")
    assert p.tokens > 0 and p.est_cost_usd > 0
    with pytest.raises(reembed.SpendNotAllowed, match="allow_embedding_spend"):
        reembed.apply(res.path, paid, tmp_path / "cache.sqlite", allow_spend=False, progress=False)
    with pytest.raises(reembed.SpendNotAllowed, match="exceeds"):
        reembed.apply(
            res.path, paid, tmp_path / "cache.sqlite", allow_spend=True, max_cost_usd=1e-9, progress=False
        )


def test_faults_still_yield_an_identical_export(demo_corpus, key_env, tmp_path):
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        clean = export(source.open_source(srv.url, key_env), tmp_path / "a")
        srv.set_faults(rate_429=0.04, rate_500=0.03, rate_503=0.03, retry_after_ms=10, seed=11)
        faulty = export(source.open_source(srv.url, key_env, max_retries=10), tmp_path / "b")
        injected = dict(srv.state.injected)
    assert export_format.content_digest(clean.path) == export_format.content_digest(faulty.path)
    assert injected.get("429", 0) > 0 and injected.get("500", 0) + injected.get("503", 0) > 0, injected


def test_listing_pages_fetched_ahead_survive_a_server_that_caps_the_page_size(demo_corpus, key_env, tmp_path):
    """Pages are requested ahead in parallel; a server returning fewer documents than asked must not make the
    listing skip any (the stride is what the server returned, a short page falls back to plain paging)."""
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        clean = export(source.open_source(srv.url, key_env), tmp_path / "a", page_size=10)
        srv.set_faults(max_page_size=7)
        capped = export(source.open_source(srv.url, key_env), tmp_path / "b", page_size=10)
        srv.set_faults(max_page_size=0)
        s, pid = source.open_source(srv.url, key_env), clean.manifest["index_id"]
        pages = list(extract.list_pages(s, pid, 3, 4))
        # a confirming listing asks for the pages of the last one's stride and total with its first; where
        # those were wrong (the server capped the page differently, documents came or went) none is lost
        hinted = [
            list(extract.list_pages(s, pid, 3, 4, known=k)) for k in ((3, 50), (5, 40), (3, 200), (2, 9))
        ]
        srv.set_faults(max_page_size=2)
        hinted.append(list(extract.list_pages(s, pid, 3, 4, known=(3, 50))))
    assert capped.listing_passes == clean.listing_passes and capped.manifest["total_documents"] == len(
        demo_corpus.documents
    )
    assert export_format.content_digest(clean.path) == export_format.content_digest(capped.path)
    ids = [d["id"] for docs, _ in pages for d in docs]
    assert ids == list(demo_corpus.documents)  # in listing order, once each
    for h in hinted:
        assert [d["id"] for docs, _ in h for d in docs] == ids


def test_document_deleted_during_export_is_reconciled(demo_corpus, key_env, tmp_path):
    """Deleted after all of pass 1's documents were fetched (a deterministic point, whatever order the
    parallel requests take): pass 1 exported it, pass 2 finds it gone and removes it."""
    victim = list(demo_corpus.documents)[3]
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        srv.set_faults(change_after_chunks=50, change={"action": "delete", "document_id": victim})
        res = export(source.open_source(srv.url, key_env), tmp_path / "e", page_size=20)
    exp = export_format.open_export(res.path)
    ids = {d["document_id"] for d in exp.iter_documents()}
    assert victim not in ids and ids == set(demo_corpus.documents)
    assert res.manifest["total_documents"] == 49 == res.manifest["source_total_count"]
    assert res.removed_documents == 1 and res.listing_passes >= 2
    assert verify.verify_export(res.path, expect_vectors=False).ok


def test_document_deleted_between_listing_pages_is_reconciled(demo_corpus, key_env, tmp_path):
    """Deleted after the second listing page was served: the shifted offsets make a later page skip a
    document, and the victim is either exported then removed or answered 404 when its chunks are fetched
    (which one depends on how the parallel requests interleave); either way the export ends exact."""
    victim = list(demo_corpus.documents)[3]
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        srv.set_faults(change_after_listings=2, change={"action": "delete", "document_id": victim})
        res = export(source.open_source(srv.url, key_env), tmp_path / "e", page_size=20)
    exp = export_format.open_export(res.path)
    ids = {d["document_id"] for d in exp.iter_documents()}
    assert victim not in ids and ids == set(demo_corpus.documents)
    assert res.manifest["total_documents"] == 49 == res.manifest["source_total_count"]
    assert res.removed_documents in (0, 1) and res.listing_passes >= 2
    assert verify.verify_export(res.path, expect_vectors=False).ok


def test_changed_document_is_refetched_whole_on_resume(demo_corpus, key_env, tmp_path):
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        src = source.open_source(srv.url, key_env)
        first = export(src, tmp_path / "x", export_id="run")
        # turn the complete export back into an unfinished one, then change a document at the source
        m = atomic.read_json(first.path / "manifest.json")
        (first.path / "manifest.json").unlink()
        atomic.write_json(first.path / "manifest.partial.json", {k: m[k] for k in m if k not in ("status",)})
        doc_id = list(demo_corpus.documents)[5]
        doc = dict(
            demo_corpus.documents[doc_id], text=demo_corpus.documents[doc_id]["text"] + "\nRevised 2026."
        )
        chunks = [dict(c, text=c["text"] + " (rev)") for c in demo_corpus.chunks[doc_id]]
        demo_corpus.put_document(doc, chunks, None)
        res = extract.export_index(
            src, tmp_path / "x", index_name="Dr.Welno", export_id="run", shard_rows=40, progress=False
        )
    assert res.refetched_documents == 1 and res.resumed_documents == 50
    rows = [r for r in export_format.open_export(res.path).iter_chunks() if r["document_id"] == doc_id]
    assert rows and all(r["text"].endswith(" (rev)") for r in rows)
    assert len(rows) == len(chunks)
    assert verify.verify_export(res.path, expect_vectors=False).ok


KILL_SCRIPT = """
import sys, threading
from runbook import extract, source
# the first 20 documents' chunks are fetched; every later fetch waits until this process is killed, so the
# export is mid-way when the test kills it, however fast or slow the machine is
real_fetch, started, lock = extract.fetch_chunks, [0], threading.Lock()
def fetch_then_hang(*a):
    with lock:
        started[0] += 1
        n = started[0]
    if n > 20:
        threading.Event().wait()
    return real_fetch(*a)
extract.fetch_chunks = fetch_then_hang
src = source.open_source(sys.argv[1], "LLAMA_CLOUD_API_KEY", max_retries=8)
extract.export_index(src, sys.argv[2], index_name="Dr.Welno", export_id="killed", shard_rows=10, concurrency=2,
                     page_size=5, progress=False)
"""


def test_kill_9_mid_export_then_resume_is_identical(demo_corpus, key_env, tmp_path):
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        reference = export(source.open_source(srv.url, key_env), tmp_path / "ref", shard_rows=10)
        target = tmp_path / "exports"
        partial = target / "killed" / "manifest.partial.json"
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, srv.url, str(target)], env=os.environ.copy()
        )
        # 20 documents hold about 100 chunks: 4 shards of 10 are written before the export stops to wait
        deadline = time.time() + 120  # a bound on a wait, not on speed: the export cannot finish by itself
        while time.time() < deadline and proc.poll() is None:
            if partial.exists() and len(atomic.read_json(partial)["shards"]) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the export ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = len(atomic.read_json(partial)["shards"])
        assert done_before >= 4 and not (target / "killed" / "manifest.json").exists()
        res = extract.export_index(
            source.open_source(srv.url, key_env),
            target,
            index_name="Dr.Welno",
            export_id="killed",
            shard_rows=10,
            progress=False,
        )
    assert res.resumed_documents > 0 and res.fetched_documents < 50
    assert export_format.content_digest(res.path) == export_format.content_digest(reference.path)
    assert verify.verify_export(res.path, expect_vectors=False).ok


# ---------------------------------------------------------------- verify finds each kind of damage
@pytest.fixture
def good_export(src, tmp_path):
    res = export(src, tmp_path / "exports")
    reembed.apply(res.path, MINILM, CACHE, progress=False)
    assert verify.verify_export(res.path).ok
    return res.path


def _rewrite_chunks(path: Path, fn):
    """Apply fn to the first shard's chunk table and re-register the file's checksum (a consistent but
    wrong export, so verify's content checks, not the checksum, must find the problem)."""
    m = atomic.read_json(path / "manifest.json")
    sh = m["shards"][0]
    t = pq.read_table(path / sh["chunks_file"])
    t = fn(t)
    pq.write_table(t, path / sh["chunks_file"])
    sh["chunks_sha256"] = export_format.sha256_file(path / sh["chunks_file"])
    sh["rows"] = t.num_rows
    atomic.write_json(path / "manifest.json", m)
    return sh["chunks_file"]


def _problems(path):
    rep = verify.verify_export(path)
    assert not rep.ok
    return rep, " | ".join(
        f"{i['where']}: {i['problem']}" for i in rep.issues
    ) + " || " + rep.checks_frame().to_string()


def test_verify_reports_corrupted_shard(good_export):
    m = atomic.read_json(good_export / "manifest.json")
    f = good_export / m["shards"][1]["chunks_file"]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    _, text = _problems(good_export)
    assert m["shards"][1]["chunks_file"] in text and "sha256" in text


def test_verify_reports_truncated_shard(good_export):
    m = atomic.read_json(good_export / "manifest.json")
    f = good_export / m["shards"][0]["documents_file"]
    f.write_bytes(f.read_bytes()[:100])
    _, text = _problems(good_export)
    assert m["shards"][0]["documents_file"] in text and "truncated" in text


def test_verify_reads_each_shard_even_when_its_checksum_matches(good_export):
    """A shard damaged before its checksum was taken (the manifest agrees with the bad file): only reading
    it as Parquet shows the damage."""
    m = atomic.read_json(good_export / "manifest.json")
    f = good_export / m["shards"][1]["chunks_file"]
    f.write_bytes(b"PAR1" + f.read_bytes()[4:-8] + b"\x00" * 8)  # the footer is gone
    m["shards"][1]["chunks_sha256"] = export_format.sha256_file(f)
    atomic.write_json(good_export / "manifest.json", m)
    rep, text = _problems(good_export)
    assert m["shards"][1]["chunks_file"] in text and "not readable as Parquet" in text
    assert "sha256" not in text
    assert not next(c for c in rep.checks if c["check"] == "shard checksums and row counts")["ok"]


def test_verify_counts_each_shards_rows_against_the_manifest(good_export):
    """A shard that lost rows before its checksum was taken: its row count, not its checksum, is wrong."""
    m = atomic.read_json(good_export / "manifest.json")
    f = good_export / m["shards"][0]["documents_file"]
    t = pq.read_table(f)
    pq.write_table(t.slice(0, t.num_rows - 2), f)
    m["shards"][0]["documents_sha256"] = export_format.sha256_file(f)
    atomic.write_json(good_export / "manifest.json", m)
    rep, text = _problems(good_export)
    assert f"{t.num_rows - 2} rows, manifest says {t.num_rows}" in text and "sha256" not in text
    assert not next(c for c in rep.checks if c["check"] == "shard checksums and row counts")["ok"]


def _set_vector(t, i, vec):
    emb = t.column("embedding").to_pylist()
    emb[i] = vec
    return t.set_column(
        t.schema.get_field_index("embedding"), "embedding", pa.array(emb, type=pa.list_(pa.float32()))
    )


def _odd(path, **policy):
    """Verify an export whose odd records are a policy matter: it stays ok, and each is listed by name."""
    rep = verify.verify_export(path, policy=records.Policy(**policy))
    assert rep.ok, rep.to_string()
    return rep, rep.odd_frame().to_string() + " || " + rep.checks_frame().to_string()


def test_verify_lists_wrong_dimension(good_export):
    _rewrite_chunks(good_export, lambda t: _set_vector(t, 3, [0.1] * 100))
    rep, text = _odd(good_export)
    row = pq.read_table(
        good_export / atomic.read_json(good_export / "manifest.json")["shards"][0]["chunks_file"]
    )
    cid = row.column("chunk_id")[3].as_py()
    odd = [o for o in rep.odd if o["chunk"] == cid]
    assert odd and "dimension 100" in odd[0]["what"] and "reembed_bad_vectors" in odd[0]["treatment"]
    assert "1 of another dimension" in text


def test_verify_lists_nan(good_export):
    def nan(t):
        v = t.column("embedding")[2].as_py()
        v[7] = float("nan")
        return _set_vector(t, 2, v)

    _rewrite_chunks(good_export, nan)
    rep, text = _odd(good_export)
    assert "1 with NaN/Infinity" in text and any("NaN" in o["what"] for o in rep.odd)


def test_verify_lists_zero_vector(good_export):
    """Defect 6: a zero vector used to pass verify (the norm check was always ok)."""
    _rewrite_chunks(good_export, lambda t: _set_vector(t, 4, [0.0] * 384))
    rep, text = _odd(good_export)
    assert "1 all zeros" in text and any("zeros" in o["what"] for o in rep.odd)


def test_verify_lists_duplicate_id(good_export):
    def dup(t):
        ids = t.column("chunk_id").to_pylist()
        ids[1] = ids[0]
        return t.set_column(0, "chunk_id", pa.array(ids, type=pa.string()))

    _rewrite_chunks(good_export, dup)
    rep, text = _odd(good_export)
    assert "1 id(s) used by more than one chunk" in text
    assert any(
        o["what"] == "chunk served twice in one document" and "refused" in o["treatment"] for o in rep.odd
    )


def test_verify_reports_manifest_count_mismatch(good_export):
    m = atomic.read_json(good_export / "manifest.json")
    m["shards"][0]["rows"] += 1
    atomic.write_json(good_export / "manifest.json", m)
    _, text = _problems(good_export)
    assert m["shards"][0]["chunks_file"] in text and "manifest says" in text


def test_verify_reports_unfinished_export(tmp_path):
    (tmp_path / "manifest.partial.json").write_text("{}")
    rep = verify.verify_export(tmp_path)
    assert not rep.ok and "resume" in rep.checks[0]["detail"]


def test_verify_cli(good_export):
    r = subprocess.run(
        [sys.executable, "-m", "runbook", "verify-export", str(good_export)], capture_output=True, text=True
    )
    assert r.returncode == 0 and "every chunk id unique" in r.stdout
    # defect 12: the CLI prints the metadata-conversion table the notebook shows, and the reconciliation
    assert "converted reversibly" in r.stdout and "reviewed_by" in r.stdout and "json:null" in r.stdout
    assert "every chunk accounted for" in r.stdout


def test_a_chunk_the_export_does_not_hold_is_found_by_the_source_comparison(good_export, src, server):
    """Trial as a new user: one chunk more at the source than in the export passed every check, and the
    page still said every chunk of the source was accounted for."""
    docs = {d["document_id"] for d in export_format.open_export(good_export).iter_documents()}
    doc_id = sorted(docs)[0]
    doc = server.corpus.documents[doc_id]
    chunks = server.corpus.get_chunks(doc_id, with_embeddings=False)
    extra = {**chunks[-1], "id_": chunks[-1]["id_"] + "-extra", "text": "added at the source"}
    server.corpus.put_document(doc, [*chunks, extra])
    rep = verify.verify_export(good_export, source=src, sample=1000)
    assert not rep.ok
    assert any(
        i["where"] == f"document {doc_id}" and f"the source serves {len(chunks) + 1} chunk(s)" in i["problem"]
        for i in rep.issues
    )


def test_the_source_comparison_names_each_changed_field_and_each_vanished_chunk(good_export, src, server):
    """The same chunk ids at the source with a changed text, changed metadata and a replaced chunk: each
    difference is named, field by field (the chunk count alone would not show them)."""
    docs = sorted({d["document_id"] for d in export_format.open_export(good_export).iter_documents()})
    doc_id = docs[1]
    doc = server.corpus.documents[doc_id]
    chunks = server.corpus.get_chunks(doc_id, with_embeddings=False)
    assert len(chunks) >= 3
    changed = [
        {**chunks[0], "text": chunks[0]["text"] + " 개정됨"},
        {**chunks[1], "extra_info": {**chunks[1]["extra_info"], "reviewed_by": "someone else"}},
        {**chunks[2], "id_": chunks[2]["id_"] + "-replaced"},
        *chunks[3:],
    ]
    server.corpus.put_document(doc, changed)
    rep = verify.verify_export(good_export, source=src, sample=1000)
    assert not rep.ok
    by_where = {}
    for i in rep.issues:
        by_where.setdefault(i["where"], []).append(i["problem"])
    assert "field text differs from the source" in by_where[f"chunk {chunks[0]['id_']} of document {doc_id}"]
    assert (
        "field metadata_json differs from the source"
        in by_where[f"chunk {chunks[1]['id_']} of document {doc_id}"]
    )
    assert by_where[f"chunk {chunks[2]['id_']} of document {doc_id}"] == ["no longer at the source"]
    assert len(rep.issues) == 3  # nothing else differs: every other document and chunk matched
    check = next(c for c in rep.checks if c["check"] == "sample re-fetched from source")
    assert not check["ok"] and "3 difference(s)" in check["detail"]


def test_the_source_count_now_is_compared_with_the_export(good_export, src, server):
    rep = verify.verify_export(good_export, source=src, sample=5)
    check = next(c for c in rep.checks if c["check"] == "documents vs source now")
    assert check["ok"] and check["detail"] == "source has 50 now, export has 50"
    sampled = next(c for c in rep.checks if c["check"] == "sample re-fetched from source")
    assert sampled["ok"] and sampled["detail"].startswith("5 chunk(s) from ")  # the sample size is kept
    doc = dict(next(iter(server.corpus.documents.values())), id="added-after-the-export")
    server.corpus.put_document(doc, [])
    rep = verify.verify_export(good_export, source=src, sample=5)
    check = next(c for c in rep.checks if c["check"] == "documents vs source now")
    assert not check["ok"]
    assert check["detail"] == (
        "source has 51 now, export has 50 (the source changed since: phase 07's delta sync catches up)"
    )


def test_the_next_listing_pages_are_asked_for_before_the_first_is_handed_on(demo_corpus, key_env):
    """While phase 01 works through a listing page (submitting its documents' chunk requests, taking their
    answers), the pages after it must already be on their way: asked for only when the caller came back for
    them, the second page of a 10k-chunk export came a third of the way into it."""
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        src = source.open_source(srv.url, key_env)
        pages = extract.list_pages(src, src.client.pipelines.list()[0].id, 3, 4)
        first, _ = next(pages)
        listings = lambda: sum(p.endswith("/documents/paginated") for _, p in srv.requests)  # noqa: E731
        deadline = time.time() + 10
        while time.time() < deadline and listings() < 2:
            time.sleep(0.01)
        asked = listings()
        rest = [d["id"] for docs, _ in pages for d in docs]
    assert asked >= 2, "only the first page was asked for before it was handed on"
    assert [d["id"] for d in first] + rest == list(demo_corpus.documents)


def test_an_export_keeps_its_connections_open_whatever_its_concurrency(key_env, tmp_path):
    """The official client keeps 20 connections open between requests: with more in flight (phase 01's
    concurrency plus the listing pages asked ahead), each connection past 20 was closed after its request and
    a new one opened for the next (a TCP and TLS handshake each against LlamaCloud; at 10k chunks and 50 ms a
    request, 24 in flight took half as long again as 20). The export opens no more connections than it has
    requests in flight at once."""
    ports = set()

    def seen(response):
        ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])

    from runbook.rehearsal import corpus

    concurrency = 24
    with cloud_emulator.EmulatorServer(corpus.synthetic("synthetic:2000:8:5"), API_KEY) as srv:
        srv.set_faults(latency_ms=20)  # requests overlap as they would over a network
        src = source.open_source(srv.url, key_env)
        src.client._client.event_hooks["response"].append(seen)  # the httpx client under the official one
        res = extract.export_index(
            src, tmp_path, index_name="synthetic-2000x8", concurrency=concurrency, progress=False
        )
    assert res.fetched_documents == 400 and res.listing_passes == 2
    # the chunk requests, the listing pages ahead and the first page; then the confirming listing's pages, which
    # reuse those connections unless httpx has closed them (it closes a connection idle 5 s, which a busy
    # machine's pause between the two listings can reach); churning, this export opened 143-291
    assert len(ports) <= (concurrency + 4 + 1) + (16 + 1), len(ports)


def test_an_index_named_is_taken_only_from_the_project_named(demo_corpus, key_env, monkeypatch):
    """The index is asked for by its project's name while the project is looked up; a server that ignores
    ``project_name`` (answering with another project's index of that name) or refuses it does not make the
    runbook read another project's index: the answer is checked against the project found, and asked again by
    project id when it does not match."""
    import llama_cloud

    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        src = source.open_source(srv.url, key_env)
        project, pipeline = source.find_pipeline(src, index_name="Dr.Welno")
        real = src.client.pipelines.list
        foreign = pipeline.model_copy(update={"id": "another-index", "project_id": "another-project"})
        asked = []

        def ignores_project_name(**kw):
            asked.append(sorted(kw))
            return [foreign] if "project_name" in kw else real(**kw)

        monkeypatch.setattr(src.client.pipelines, "list", ignores_project_name)
        got = source.find_pipeline(src, index_name="Dr.Welno")
        assert (got[0].id, got[1].id) == (project.id, pipeline.id)
        assert asked == [["pipeline_name", "project_name"], ["pipeline_name", "project_id"]]

        def refuses_project_name(**kw):
            if "project_name" in kw:
                raise llama_cloud.UnprocessableEntityError(
                    "project_name",
                    response=httpx.Response(422, request=httpx.Request("GET", srv.url)),
                    body=None,
                )
            return real(**kw)

        monkeypatch.setattr(src.client.pipelines, "list", refuses_project_name)
        assert source.find_pipeline(src, index_name="Dr.Welno")[1].id == pipeline.id


def test_the_connections_close_when_the_source_is_dropped(demo_corpus, key_env):
    """The official client closes only an httpx client it made itself; the one ``open_source`` gives it (to
    keep more connections) closes when the source is collected, with its idle connections."""
    import gc

    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        src = source.open_source(srv.url, key_env)
        http = src.client._client
        src.client.pipelines.list()  # a connection opened and kept
        assert not http.is_closed
        del src
        gc.collect()
        assert http.is_closed
