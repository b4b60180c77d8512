"""Phase 01's and 03's export verification, in process and in seconds: each check's exact verdict and wording,
each issue's place, problem and what to do, on a small synthetic export (120 chunks of 8-d vectors, 12
documents, 3 shards of 40) damaged one way per test. The same checks on the demo export, through the real
pipeline, are in test_extract.py; these are the fast ones a mutation run leans on."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runbook import atomic, export_format, records, source, verify
from runbook.export_format import ExportError
from runbook.rehearsal import cloud_emulator, corpus

from .conftest import synthetic_export

N, DIM, PER_DOC, SHARD = 120, 8, 10, 40
KEY_ENV, KEY = "VERIFY_SOURCE_KEY", "verify-source-key-123456"
RE_EXPORT = "run phase 01 into a new export_id"


def syn() -> corpus.SyntheticCorpus:
    return corpus.SyntheticCorpus(N, DIM, chunks_per_doc=PER_DOC)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return synthetic_export(
        syn(), tmp_path_factory.mktemp("verify"), shard_rows=SHARD, key_env="VERIFY_EXPORT_KEY"
    )


@pytest.fixture
def exp(pristine, tmp_path):
    """A private copy of the export, free to damage."""
    return shutil.copytree(pristine, tmp_path / pristine.name)


def manifest(path) -> dict:
    return atomic.read_json(path / "manifest.json")


def edit_manifest(path, fn) -> dict:
    m = manifest(path)
    fn(m)
    atomic.write_json(path / "manifest.json", m)
    return m


def rewrite(path, shard: int, fn, key: str = "chunks_file") -> str:
    """Apply ``fn`` to one shard's table and register the new file in the manifest (checksum and row count):
    an export consistent with itself but wrong, so the content checks, not the checksum, must find it."""
    m = manifest(path)
    sh = m["shards"][shard]
    t = fn(pq.read_table(path / sh[key]))
    pq.write_table(t, path / sh[key])
    sh[key.replace("_file", "_sha256")] = export_format.sha256_file(path / sh[key])
    sh["rows" if key == "chunks_file" else "documents"] = t.num_rows
    atomic.write_json(path / "manifest.json", m)
    return sh[key]


def set_cell(t: pa.Table, column: str, row: int, value) -> pa.Table:
    i = t.schema.get_field_index(column)
    values = t.column(column).to_pylist()
    values[row] = value
    return t.set_column(i, column, pa.array(values, type=t.schema.field(i).type))


def checks(rep) -> dict[str, tuple[bool, str]]:
    return {c["check"]: (c["ok"], c["detail"]) for c in rep.checks}


def test_a_clean_export_passes_every_check_and_says_so_exactly(exp):
    rep = verify.verify_export(exp)
    got = checks(rep)
    m = manifest(exp)
    assert got.pop("manifest") == (True, f"{m['index_name']} ({m['index_id']}), exported {m['exported_at']}")
    assert got == {
        "shard checksums and row counts": (True, "3 shard pair(s); 0 bad"),
        "manifest totals": (True, "chunks 120 (manifest 120), documents 12 (manifest 12)"),
        "documents vs source total_count at export": (True, "12 exported, source reported 12"),
        "chunk ids": (True, "every chunk id unique"),
        "texts": (True, "0 empty or whitespace-only (empty_texts: load), 0 with a NUL character; all listed"),
        "vectors loadable": (
            True,
            "0 with NaN/Infinity, 0 all zeros, 0 of another dimension, 0 missing: none",
        ),
        "every chunk has a vector": (True, "0 chunk(s) without a vector"),
        "vector norms": (True, "min 1.0000, mean 1.0000, max 1.0000 (unit vectors)"),
        "chunks per document": (True, "0 document(s) with a chunk count mismatch"),
    }
    assert rep.ok and rep.issues == [] and rep.odd == []
    assert rep.norms["unit"] is True and set(rep.norms) == {"min", "mean", "max", "unit"}
    assert rep.norms["min"] == pytest.approx(1.0, abs=1e-5) and rep.norms["max"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert {r["item"].strip(): r["count"] for r in rep.reconciliation}["exported"] == N


def test_missing_files_are_each_named_and_the_checks_stop_there(exp):
    m = manifest(exp)
    for key in ("chunks_file", "documents_file"):
        (exp / m["shards"][1][key]).unlink()
    rep = verify.verify_export(exp)
    assert rep.issues == [
        {
            "where": m["shards"][1][key],
            "problem": "file missing",
            "what to do": "restore it from a copy or delete the export and run phase 01 again",
        }
        for key in ("chunks_file", "documents_file")
    ]
    assert [c["check"] for c in rep.checks] == ["manifest", "shard checksums and row counts"]
    assert checks(rep)["shard checksums and row counts"] == (False, "3 shard pair(s); 2 bad")
    assert not rep.ok


def test_a_checksum_mismatch_names_both_sums_and_says_not_to_load(exp):
    m = manifest(exp)
    for key in ("chunks_file", "documents_file"):
        f = exp / m["shards"][2][key]
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    rep = verify.verify_export(exp)
    want = []
    for key, sha in (("chunks_file", "chunks_sha256"), ("documents_file", "documents_sha256")):
        actual = export_format.sha256_file(exp / m["shards"][2][key])
        want.append(
            {
                "where": m["shards"][2][key],
                "problem": f"sha256 {actual[:12]}… does not match the manifest's {m['shards'][2][sha][:12]}… "
                "(corrupted or truncated)",
                "what to do": "do not load this export; run phase 01 into a new export_id",
            }
        )
    assert rep.issues == want
    assert checks(rep)["shard checksums and row counts"] == (False, "3 shard pair(s); 2 bad")


def test_a_shard_whose_checksum_matches_but_is_not_parquet_is_refused(exp):
    """Both files of a shard damaged before their checksums were taken: each is read, each is named."""
    m = manifest(exp)
    for key in ("chunks_file", "documents_file"):
        f = exp / m["shards"][0][key]
        f.write_bytes(b"PAR1" + f.read_bytes()[4:-8] + b"\x00" * 8)
        sha = key.replace("_file", "_sha256")
        edit_manifest(exp, lambda m, sha=sha, f=f: m["shards"][0].update({sha: export_format.sha256_file(f)}))
    rep = verify.verify_export(exp)
    assert [(i["where"], i["what to do"]) for i in rep.issues] == [
        (m["shards"][0][key], RE_EXPORT) for key in ("chunks_file", "documents_file")
    ]
    assert all(i["problem"].startswith("not readable as Parquet: ") for i in rep.issues)
    assert checks(rep)["shard checksums and row counts"] == (False, "3 shard pair(s); 2 bad")


def test_each_files_rows_are_counted_against_its_own_manifest_entry(exp):
    """The chunk file against ``rows``, the document file against ``documents``."""

    def wrong(m):
        m["shards"][1]["rows"] += 1
        m["shards"][2]["documents"] += 1

    m = edit_manifest(exp, wrong)
    rep = verify.verify_export(exp)
    assert rep.issues == [
        {
            "where": m["shards"][1]["chunks_file"],
            "problem": "40 rows, manifest says 41",
            "what to do": RE_EXPORT,
        },
        {
            "where": m["shards"][2]["documents_file"],
            "problem": "4 rows, manifest says 5",
            "what to do": RE_EXPORT,
        },
    ]
    assert checks(rep)["shard checksums and row counts"] == (False, "3 shard pair(s); 2 bad")


def test_stray_parquet_files_are_named_and_ignored(exp):
    shutil.copy(exp / "chunks-00000.parquet", exp / "chunks-00009.parquet")
    (exp / "notes.txt").write_text("not a shard")
    rep = verify.verify_export(exp)
    assert checks(rep)["shard checksums and row counts"] == (
        True,
        "3 shard pair(s); 0 bad; stray files ignored: ['chunks-00009.parquet']",
    )
    assert rep.ok


@pytest.mark.parametrize(
    "field, detail",
    [
        ("total_chunks", "chunks 120 (manifest 121), documents 12 (manifest 12)"),
        ("total_documents", "chunks 120 (manifest 120), documents 12 (manifest 13)"),
    ],
)
def test_the_manifests_totals_must_each_match_the_shards(exp, field, detail):
    edit_manifest(exp, lambda m: m.update({field: m[field] + 1}))
    rep = verify.verify_export(exp)
    assert checks(rep)["manifest totals"] == (False, detail) and not rep.ok


def test_documents_refused_at_export_count_toward_the_sources_total(exp):
    refused = {
        "document_id": "bad\udc80id",
        "problem": "id not valid Unicode",
        "what to do": "fix it at the source",
    }
    edit_manifest(exp, lambda m: m.update(source_total_count=13, refused_documents=[refused]))
    rep = verify.verify_export(exp)
    assert checks(rep)["documents vs source total_count at export"] == (
        True,
        "12 exported + 1 refused (listed), source reported 13",
    )
    edit_manifest(exp, lambda m: m.update(source_total_count=14))
    assert checks(verify.verify_export(exp))["documents vs source total_count at export"] == (
        False,
        "12 exported + 1 refused (listed), source reported 14",
    )
    edit_manifest(exp, lambda m: m.pop("source_total_count"))
    assert "documents vs source total_count at export" not in checks(verify.verify_export(exp))


def test_a_vector_of_another_dimension_is_listed_and_counted(exp):
    # 12-d, longer than the others: the most common dimension is not the largest
    rewrite(exp, 0, lambda t: set_cell(t, "embedding", 3, [0.5] * 12))
    rep = verify.verify_export(exp)
    assert rep.ok  # a policy matter: refused at load, listed, not a broken export
    assert rep.issues == [
        {
            "where": "1 chunk(s)",
            "problem": "dimension 12, most vectors have 8",
            "what to do": "vectors from another model were mixed in: run phase 01 with reembed_bad_vectors: true",
        }
    ]
    assert checks(rep)["vectors loadable"] == (
        True,
        "0 with NaN/Infinity, 0 all zeros, 1 of another dimension, 0 missing: "
        "1 refused at load (listed); phase 01 re-embeds them with reembed_bad_vectors: true",
    )
    assert "manifest dimension" not in checks(rep)


def test_a_manifest_that_names_another_dimension_fails(exp):
    """Phase 03 creates the collection with the manifest's dimension: most vectors must have it. (This check
    could never fail before: the dimension it compared with was the manifest's own.)"""
    edit_manifest(exp, lambda m: m.update(embedding_dimension=9))
    rep = verify.verify_export(exp)
    assert checks(rep)["manifest dimension"] == (
        False,
        "manifest says 9, most vectors have 8 (120 of 120): the manifest was edited or the vectors come from "
        "another model; run phase 01 into a new export_id",
    )
    assert rep.issues == []  # one dimension among the vectors: nothing mixed in to list
    assert not rep.ok


def test_nan_and_zero_vectors_are_refused_at_load_and_left_out_of_the_norms(exp):
    def damage(t):
        v = t.column("embedding")[2].as_py()
        v[1] = float("nan")
        t = set_cell(t, "embedding", 2, v)
        t = set_cell(t, "embedding", 5, [0.0] * DIM)
        return set_cell(t, "embedding", 7, [2.0 / DIM**0.5] * DIM)  # norm 2: loadable, not unit

    rewrite(exp, 1, damage)
    rep = verify.verify_export(exp)
    got = checks(rep)
    assert got["vectors loadable"] == (
        True,
        "1 with NaN/Infinity, 1 all zeros, 0 of another dimension, 0 missing: "
        "2 refused at load (listed); phase 01 re-embeds them with reembed_bad_vectors: true",
    )
    assert got["vector norms"] == (
        True,
        "min 1.0000, mean 1.0085, max 2.0000 (not unit: cosine space normalises them)",
    )
    assert rep.norms["unit"] is False and rep.norms["min"] == pytest.approx(1.0, abs=1e-5)
    # the mean is over the 118 loadable vectors: (117 x 1 + 2) / 118
    treatment = "refused: run phase 01 with reembed_bad_vectors: true to re-embed it"
    assert [(o["chunk"], o["what"], o["treatment"]) for o in rep.odd] == [
        ("syn-00000004-0002", "vector with NaN or Infinity", treatment),
        ("syn-00000004-0005", "vector of zeros (no direction for cosine)", treatment),
    ]


def test_reembedding_replaces_exactly_the_unusable_served_vectors_and_keeps_the_rest(exp, tmp_path):
    """reembed_bad_vectors: NaN, zeros and another dimension are re-embedded and named in the manifest, the
    missing vector is filled, every other served vector stays as it was, bit for bit; without it only the
    missing one is filled; reembed_all takes every chunk."""
    from runbook import embeddings, reembed

    def damage(t):
        v = t.column("embedding")[2].as_py()
        v[1] = float("nan")
        t = set_cell(t, "embedding", 2, v)
        t = set_cell(t, "embedding", 5, [0.0] * DIM)
        t = set_cell(t, "embedding", 7, [0.5] * (DIM - 3))
        return set_cell(t, "embedding", 9, None)

    rewrite(exp, 1, damage)
    spec = embeddings.ModelSpec("hash", "hash", DIM)
    cache = tmp_path / "cache.sqlite"
    assert reembed.plan(exp, spec, cache).chunks_to_embed == 4
    assert reembed.plan(exp, spec, cache, replace_bad=False).chunks_to_embed == 1
    assert reembed.plan(exp, spec, cache, force=True).chunks_to_embed == N
    before = {r["chunk_id"]: r["embedding"] for r in export_format.open_export(exp).iter_chunks()}
    stale = reembed.Plan("hash:another-model", 0, 0, 0.0, 0)  # a plan for another model is not this one's
    done = reembed.apply(exp, spec, cache, progress=False, planned=stale)
    assert done["embedded"] == 4
    m = manifest(exp)
    assert m["replaced_vectors_count"] == 3
    assert [(x["chunk_id"], x["served"]) for x in m["replaced_vectors"]] == [
        ("syn-00000004-0002", "with NaN or Infinity"),
        ("syn-00000004-0005", "of zeros (no direction for cosine)"),
        ("syn-00000004-0007", f"of dimension {DIM - 3} (the collection's is {DIM})"),
    ]
    redone = {f"syn-00000004-{k:04d}" for k in (2, 5, 7, 9)}
    for r in export_format.open_export(exp).iter_chunks():
        if r["chunk_id"] in redone:
            want = embeddings.embed_texts([export_format.embed_text(r)], spec)[0][0]
            assert r["embedding_source"] == "computed" and r["embedding"] == want.tolist(), r["chunk_id"]
        else:
            assert r["embedding"] == before[r["chunk_id"]] and r["embedding_source"] == "cloud", r["chunk_id"]
    assert checks(verify.verify_export(exp))["vectors loadable"][1].startswith(
        "0 with NaN/Infinity, 0 all zeros, 0 of another dimension, 0 missing: none now; 3 served vector(s)"
    )
    # a plan counted with other options (only the missing vector) is not the one applied either
    rewrite(exp, 1, damage)
    fewer = reembed.plan(exp, spec, cache, replace_bad=False)
    assert (
        fewer.chunks_to_embed == 1
        and reembed.apply(exp, spec, cache, progress=False, planned=fewer)["embedded"] == 4
    )


def test_a_chunk_without_a_vector_fails_only_when_vectors_are_expected(exp):
    rewrite(exp, 2, lambda t: set_cell(t, "embedding", 0, None))
    rep = verify.verify_export(exp)
    assert checks(rep)["every chunk has a vector"] == (
        False,
        "1 chunk(s) without a vector (run the re-embedding step)",
    )
    assert checks(rep)["vectors loadable"][1].endswith(
        "0 of another dimension, 1 missing: 1 refused at load (listed); "
        "phase 01 re-embeds them with reembed_bad_vectors: true"
    )
    assert not rep.ok
    rep = verify.verify_export(exp, expect_vectors=False)
    assert checks(rep)["every chunk has a vector"] == (
        True,
        "1 chunk(s) without a vector (run the re-embedding step)",
    )
    assert rep.ok


def test_vectors_replaced_by_re_embedding_are_counted_on_the_page(exp):
    replaced = [
        {"document_id": "d", "chunk_id": f"c{i}", "served": "of zeros (no direction for cosine)"}
        for i in range(3)
    ]
    edit_manifest(exp, lambda m: m.update(replaced_vectors=replaced))
    prefix = "0 with NaN/Infinity, 0 all zeros, 0 of another dimension, 0 missing: "
    rep = verify.verify_export(exp)
    assert checks(rep)["vectors loadable"] == (
        True,
        prefix + "none now; 3 served vector(s) were replaced by re-embedding (listed)",
    )
    assert [o["chunk"] for o in rep.odd] == ["c0", "c1", "c2"]
    edit_manifest(exp, lambda m: m.update(replaced_vectors_count=5))  # the list is capped, the count is not
    assert checks(verify.verify_export(exp))["vectors loadable"][1] == (
        prefix + "none now; 5 served vector(s) were replaced by re-embedding (listed)"
    )


def test_ids_and_texts_that_phase_03_treats_specially_are_counted(exp):
    m = manifest(exp)
    first = pq.read_table(exp / m["shards"][0]["chunks_file"]).column("chunk_id")[0].as_py()

    def odd(t):
        t = set_cell(t, "chunk_id", 15, first)  # a chunk of document 1 reusing document 0's id
        t = set_cell(t, "text", 21, " \n ")
        return set_cell(t, "text", 22, "a\x00b")

    rewrite(exp, 0, odd)
    rep = verify.verify_export(exp)
    got = checks(rep)
    assert got["chunk ids"] == (
        True,
        "1 id(s) used by more than one chunk (1 later use(s): duplicate_chunk_ids: qualify)",
    )
    assert got["texts"] == (
        True,
        "1 empty or whitespace-only (empty_texts: load), 1 with a NUL character; all listed",
    )
    rep = verify.verify_export(exp, policy=records.Policy(empty_texts="skip", duplicate_chunk_ids="refuse"))
    got = checks(rep)
    assert got["chunk ids"][1].endswith("duplicate_chunk_ids: refuse)")
    assert got["texts"][1].startswith("1 empty or whitespace-only (empty_texts: skip)")


def test_a_documents_chunk_count_is_checked_against_its_chunks(exp):
    m = manifest(exp)
    docs = pq.read_table(exp / m["shards"][1]["documents_file"])
    doc_id = docs.column("document_id")[2].as_py()
    rewrite(exp, 1, lambda t: set_cell(t, "chunk_count", 2, 11), key="documents_file")
    rep = verify.verify_export(exp)
    assert rep.issues == [
        {"where": f"document {doc_id}", "problem": "10 chunks exported, 11 listed", "what to do": RE_EXPORT}
    ]
    assert checks(rep)["chunks per document"] == (False, "1 document(s) with a chunk count mismatch")


# ------------------------------------------------------------------------------------------ ensure_verified
def test_an_export_phase_01_verified_is_trusted_only_as_it_was(exp):
    sha = export_format.open_export(exp).manifest_sha256
    h01 = {"export_dir": str(exp), "manifest_sha256": sha, "policy": vars(records.Policy())}
    trusted = {"export": str(exp), "verified by": "phase 01 (same manifest sha256)", "sha256": sha}
    assert verify.ensure_verified(exp, h01) == trusted
    assert verify.ensure_verified(exp, h01, records.Policy()) == trusted
    assert verify.ensure_verified(exp, {**h01, "policy": None}, records.Policy(empty_texts="skip")) == trusted
    again = {"export": str(exp), "verified by": "this phase (verify_export, offline)", "sha256": sha}
    assert verify.ensure_verified(exp, h01, records.Policy(empty_texts="skip")) == again
    assert verify.ensure_verified(exp, {**h01, "export_dir": str(exp) + "-elsewhere"}) == again
    assert verify.ensure_verified(exp, {**h01, "manifest_sha256": "0" * 64}) == again
    assert verify.ensure_verified(exp, None) == again
    assert verify.ensure_verified(exp, {}) == again


def test_every_failed_check_is_named_in_the_refusal(exp):
    edit_manifest(exp, lambda m: m.update(total_chunks=121, embedding_dimension=9))
    with pytest.raises(ExportError) as e:
        verify.ensure_verified(exp, None)
    assert str(e.value).startswith(
        f"{exp} did not pass verification (manifest totals: chunks 120 (manifest 121), documents 12 (manifest "
        "12); manifest dimension: manifest says 9, most vectors have 8 (120 of 120): "
    )


def test_an_export_that_fails_verification_is_refused_with_the_failed_checks_named(exp):
    m = manifest(exp)
    (exp / m["shards"][0]["chunks_file"]).unlink()
    edit_manifest(exp, lambda m: m.update(total_chunks=1))
    with pytest.raises(ExportError) as e:
        verify.ensure_verified(exp, None)
    assert str(e.value) == (
        f"{exp} did not pass verification (shard checksums and row counts: 3 shard pair(s); 1 bad). It was not "
        "verified by phase 01 in this layout; run `python -m runbook verify-export <folder>` for the details, "
        "or export again with phase 01"
    )


# ---------------------------------------------------------------------------------- against the live source
@pytest.fixture
def live(monkeypatch):
    """A real local server over the corpus the export came from; ``live.corpus.get_chunks`` may be wrapped."""
    monkeypatch.setenv(KEY_ENV, KEY)
    with cloud_emulator.EmulatorServer(syn(), KEY, serve_embeddings=True) as srv:
        srv.src = source.open_source(srv.url, KEY_ENV)
        yield srv


def change_at_source(srv, monkeypatch, doc_id: str, fn):
    served = srv.corpus.get_chunks

    def get_chunks(d, with_embeddings):
        out = served(d, with_embeddings)
        return fn(out) if d == doc_id and out is not None else out

    monkeypatch.setattr(srv.corpus, "get_chunks", get_chunks)


def test_every_chunk_compared_with_an_unchanged_source_agrees(exp, live):
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    got = checks(rep)
    assert got["documents vs source now"] == (True, "source has 12 now, export has 12")
    assert got["sample re-fetched from source"] == (
        True,
        "120 chunk(s) from 12 document(s) compared field by field, and each document's chunk count; 0 difference(s)",
    )
    assert rep.ok and rep.issues == []


@pytest.mark.parametrize("sample", [0, 1, 7, 40])
def test_the_sample_has_the_size_asked_for(exp, live, sample):
    rep = verify.verify_export(exp, source=live.src, sample=sample)
    assert checks(rep)["sample re-fetched from source"][1].startswith(f"{sample} chunk(s) from ")


@pytest.mark.parametrize("n, k", [(10, 3), (7, 6)])
def test_the_reservoir_sample_is_uniform_and_follows_its_seed(n, k):
    """Every item is drawn with probability k/n: 20,000 draws put each item's frequency within 0.015 of it
    (six standard deviations; the seeds are fixed, so the figures are the same on every run)."""
    counts = [0] * n
    trials = 20_000
    for seed in range(trials):
        got = verify.reservoir_sample(iter(range(n)), k, seed)
        assert len(got) == k and len(set(got)) == k
        for x in got:
            counts[x] += 1
    assert all(abs(c / trials - k / n) < 0.015 for c in counts), [c / trials for c in counts]
    assert verify.reservoir_sample(range(100), 5, 3) == verify.reservoir_sample(range(100), 5, 3)
    assert verify.reservoir_sample(range(100), 5, 3) != verify.reservoir_sample(range(100), 5, 4)
    assert verify.reservoir_sample(range(3), 5, 0) == [0, 1, 2]
    assert verify.reservoir_sample(range(3), 0, 0) == []


def test_sampled_rows_are_the_reservoir_sample_of_the_rows_themselves(pristine):
    """Drawn over positions, then read: the same rows, in the same order, as the seeded reservoir sample over
    every row read whole (which turned every vector into Python floats), for samples smaller than the export,
    equal to it and larger."""
    exp = export_format.open_export(pristine)
    rows = list(exp.iter_chunks())
    for k, seed in ((1, 0), (7, 3), (50, 0), (len(rows), 1), (len(rows) + 5, 2)):
        assert verify.sample_rows(exp, k, seed) == verify.reservoir_sample(iter(rows), k, seed), (k, seed)
    assert verify.sample_rows(exp, 0, 0) == []


def test_the_sample_follows_its_seed_and_reaches_every_shard(exp, live):
    """A reservoir sample: different seeds pick different chunks, and over a few seeds every shard (the last
    rows included) is reached, not only the first rows read."""
    fetched = []
    served = live.corpus.get_chunks

    def spy(d, with_embeddings):
        fetched.append(d)
        return served(d, with_embeddings)

    live.corpus.get_chunks = spy
    picks = []
    for seed in range(6):
        fetched.clear()
        verify.verify_export(exp, source=live.src, sample=3, seed=seed)
        picks.append(frozenset(fetched))
    assert len(set(picks)) > 1
    fetched.clear()
    verify.verify_export(exp, source=live.src, sample=3, seed=0)
    assert frozenset(fetched) == picks[0]  # the same seed, the same sample
    assert set().union(*picks) & {live.corpus.doc_id(d) for d in (8, 9, 10, 11)}


def test_a_changed_text_a_vanished_chunk_and_a_changed_vector_are_each_named(exp, live, monkeypatch):
    doc_id = live.corpus.doc_id(3)

    def change(chunks):
        chunks[0]["text"] += " 개정됨"
        chunks[1]["id_"] += "-replaced"
        if chunks[2].get("embedding"):
            chunks[2]["embedding"] = [-x for x in chunks[2]["embedding"]]
        chunks[3]["end_char_idx"] += 1
        return chunks

    change_at_source(live, monkeypatch, doc_id, change)
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    ids = [f"syn-{3:08d}-{k:04d}" for k in range(4)]
    assert sorted((i["where"], i["problem"], i["what to do"]) for i in rep.issues) == sorted(
        [
            (
                f"chunk {ids[0]} of document {doc_id}",
                "field text differs from the source",
                "re-export this document (phase 01 resumes)",
            ),
            (
                f"chunk {ids[1]} of document {doc_id}",
                "no longer at the source",
                "the source changed since the export: run phase 07's delta sync",
            ),
            (f"chunk {ids[2]} of document {doc_id}", "vector differs from the source's", "re-export"),
            (
                f"chunk {ids[3]} of document {doc_id}",
                "field end_char_idx differs from the source",
                "re-export this document (phase 01 resumes)",
            ),
        ]
    )
    assert checks(rep)["sample re-fetched from source"][0] is False
    assert checks(rep)["sample re-fetched from source"][1].endswith("; 4 difference(s)")


def test_a_vector_the_export_computed_itself_is_not_compared_with_the_sources(exp, live, monkeypatch):
    rewrite(exp, 0, lambda t: set_cell(t, "embedding_source", 0, "reembedded"))
    doc_id = live.corpus.doc_id(0)

    def change(chunks):
        chunks[0]["embedding"] = [-x for x in chunks[0]["embedding"]]
        return chunks

    change_at_source(live, monkeypatch, doc_id, change)
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    assert rep.issues == [] and rep.ok


def test_a_documents_chunk_count_at_the_source_is_compared_with_refused_chunks_counted(
    exp, live, monkeypatch
):
    doc_id = live.corpus.doc_id(5)
    change_at_source(live, monkeypatch, doc_id, lambda chunks: [*chunks, {**chunks[-1], "id_": "added"}])
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    assert rep.issues == [
        {
            "where": f"document {doc_id}",
            "problem": "the source serves 11 chunk(s), the export holds 10 (+0 refused)",
            "what to do": "the source changed or a chunk was missed: export again (phase 01 into a new export_id)",
        }
    ]
    # a chunk phase 01 refused (listed in the manifest) is one the source serves and the export does not hold
    refused = {"document_id": doc_id, "chunk_id": "added", "problem": "p", "what to do": "w"}
    edit_manifest(exp, lambda m: m.update(refused=[refused, {**refused, "chunk_id": None}]))
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    assert [i for i in rep.issues if i["where"] == f"document {doc_id}"] == []


def test_the_sources_count_now_counts_refused_documents_as_had(exp, live):
    live.corpus.delete_document(live.corpus.doc_id(11))
    rep = verify.verify_export(exp, source=live.src, sample=0)
    assert checks(rep)["documents vs source now"] == (
        False,
        "source has 11 now, export has 12 (the source changed since: phase 07's delta sync catches up)",
    )
    edit_manifest(exp, lambda m: m.update(refused_documents=[{"document_id": "x"}]))
    rep = verify.verify_export(exp, source=live.src, sample=0)
    assert checks(rep)["documents vs source now"][1].startswith("source has 11 now, export has 13")


def test_a_mixed_export_whose_manifest_lists_its_dimensions_is_not_failed_for_it(exp):
    """Phase 01 writes the list of dimensions when vectors of several were served; the main one is then the
    dimension most vectors have."""
    rewrite(exp, 0, lambda t: set_cell(t, "embedding", 3, [0.5] * 5))
    edit_manifest(exp, lambda m: m.update(embedding_dimension=[5, 8]))
    rep = verify.verify_export(exp)
    assert "manifest dimension" not in checks(rep) and rep.ok
    assert [i["problem"] for i in rep.issues] == ["dimension 5, most vectors have 8"]


def test_a_manifest_without_a_refused_list_is_compared_with_the_source(exp, live):
    """Exports written before refused chunks were listed carry no ``refused`` key."""
    edit_manifest(exp, lambda m: m.pop("refused", None))
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    assert rep.ok and checks(rep)["sample re-fetched from source"][1].endswith("; 0 difference(s)")


def drop_document_row(exp) -> str:
    """Remove one row of the second shard's documents table (the manifest's totals made to agree); its id."""
    m = manifest(exp)
    doc_id = pq.read_table(exp / m["shards"][1]["documents_file"]).column("document_id")[1].as_py()
    rewrite(exp, 1, lambda t: t.filter(pa.array([i != 1 for i in range(t.num_rows)])), key="documents_file")
    edit_manifest(exp, lambda m: m.update(total_documents=11, source_total_count=11))
    return doc_id


def test_chunks_of_a_document_the_export_does_not_list_are_found(exp):
    doc_id = drop_document_row(exp)
    rep = verify.verify_export(exp)
    assert rep.issues == [
        {
            "where": f"document {doc_id}",
            "problem": "10 chunks exported, the document is not listed",
            "what to do": RE_EXPORT,
        }
    ]
    assert checks(rep)["chunks per document"] == (False, "1 document(s) with a chunk count mismatch")


def test_the_source_comparison_counts_an_unlisted_document_as_holding_nothing(exp, live, monkeypatch):
    doc_id = drop_document_row(exp)
    again = "the source changed or a chunk was missed: export again (phase 01 into a new export_id)"
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    problem = "the source serves 10 chunk(s), the export holds 0 (+0 refused)"
    assert {"where": f"document {doc_id}", "problem": problem, "what to do": again} in rep.issues
    change_at_source(
        live, monkeypatch, doc_id, lambda chunks: chunks[:1]
    )  # 1 served, 0 held: still a difference
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    problem = "the source serves 1 chunk(s), the export holds 0 (+0 refused)"
    assert {"where": f"document {doc_id}", "problem": problem, "what to do": again} in rep.issues


def test_each_document_whose_count_differs_at_the_source_is_one_difference(exp, live, monkeypatch):
    for d in (2, 6):
        change_at_source(
            live,
            monkeypatch,
            live.corpus.doc_id(d),
            lambda c: [*c, {**c[-1], "id_": c[-1]["id_"] + "+"}, {**c[-1], "id_": c[-1]["id_"] + "++"}],
        )
    refused = {"document_id": live.corpus.doc_id(6), "chunk_id": "x", "problem": "p", "what to do": "w"}
    edit_manifest(exp, lambda m: m.update(refused=[refused]))
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    assert sorted(i["problem"] for i in rep.issues) == [
        "the source serves 12 chunk(s), the export holds 10 (+0 refused)",
        "the source serves 12 chunk(s), the export holds 10 (+1 refused)",
    ]
    assert checks(rep)["sample re-fetched from source"][1].endswith("; 2 difference(s)")


def test_a_chunk_the_source_now_serves_at_another_position_is_compared_with_itself(exp, live, monkeypatch):
    """The comparison finds each sampled chunk by its id, wherever the source now serves it, and names the
    moved position: the first two chunks of a document swapped at the source differ only in ``seq``."""
    doc_id = live.corpus.doc_id(4)
    change_at_source(live, monkeypatch, doc_id, lambda c: [c[1], c[0], *c[2:]])
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    assert sorted((i["where"], i["problem"]) for i in rep.issues) == [
        (f"chunk syn-{4:08d}-{k:04d} of document {doc_id}", "field seq differs from the source")
        for k in (0, 1)
    ]


def test_vectors_are_compared_as_the_export_stores_them_float32_nan_included(exp, live, monkeypatch):
    """A real source serves JSON numbers with more digits than float32 holds: the export keeps float32, so a
    vector equal after that rounding is the same vector. A NaN the export kept as served is equal to itself."""
    import numpy as np

    doc_id = live.corpus.doc_id(0)

    def more_digits(chunks):
        for c in chunks:
            v = np.asarray(c["embedding"], dtype=np.float64)
            c["embedding"] = (v + np.abs(v) * 1e-12).tolist()  # rounds to the same float32 values
        chunks[3]["embedding"][2] = float("nan")
        return chunks

    change_at_source(live, monkeypatch, doc_id, more_digits)

    def nan(t):
        v = t.column("embedding")[3].as_py()
        v[2] = float("nan")
        return set_cell(t, "embedding", 3, v)

    rewrite(exp, 0, nan)
    rep = verify.verify_export(exp, source=live.src, sample=1000)
    assert [i for i in rep.issues if "vector" in i["problem"]] == []
    assert checks(rep)["sample re-fetched from source"] == (
        True,
        "120 chunk(s) from 12 document(s) compared field by field, and each document's chunk count; 0 difference(s)",
    )


def test_a_folder_without_a_finished_manifest_fails_the_manifest_check_alone(tmp_path):
    (tmp_path / "manifest.partial.json").write_text("{}")
    rep = verify.verify_export(tmp_path)
    assert [(c["check"], c["ok"]) for c in rep.checks] == [("manifest", False)] and not rep.ok
    assert "resume" in rep.checks[0]["detail"]


def test_by_default_fifty_chunks_drawn_with_seed_0_are_compared(exp, live, monkeypatch):
    asked = []
    draw = verify.reservoir_sample

    def spy(items, k, seed):
        asked.append((k, seed))
        return draw(items, k, seed)

    monkeypatch.setattr(verify, "reservoir_sample", spy)
    rep = verify.verify_export(exp, source=live.src)
    assert asked == [(50, 0)]
    assert checks(rep)["sample re-fetched from source"][1].startswith("50 chunk(s) from ")


def test_metadata_chroma_cannot_store_is_listed_for_the_records_that_will_load(exp):
    """Lists, nulls and nested objects are converted reversibly at load: listed per key with the number of
    chunks, counting only the records that will be loaded (a refused record converts nothing)."""
    import json

    def odd_metadata(t):
        md = {**json.loads(t.column("metadata_json")[1].as_py()), "tags": ["검진", "b"], "reviewed": None}
        md["nested"] = {"x": 1}
        for row in (1, 2, 5):
            t = set_cell(t, "metadata_json", row, json.dumps(md, ensure_ascii=False))
        v = t.column("embedding")[5].as_py()
        v[0] = float("nan")
        return set_cell(t, "embedding", 5, v)  # row 5 is refused at load

    rewrite(exp, 0, odd_metadata)
    rep = verify.verify_export(exp)
    assert rep.metadata == [
        {
            "key": "nested",
            "kind": "nested object",
            "chunks": 2,
            "treatment": "stored as 'json:' + canonical JSON",
        },
        {"key": "reviewed", "kind": "null", "chunks": 2, "treatment": "stored as 'json:null' (reversible)"},
        {
            "key": "tags",
            "kind": "list",
            "chunks": 2,
            "treatment": "stored as 'json:' + JSON, not as a Chroma array (Chroma 1.5.9 leaks arrays of deleted "
            "collections)",
        },
    ]


def test_a_chunk_id_reused_in_a_later_shard_is_a_later_use_and_one_served_twice_is_not(exp):
    """Positions run on across shards: a chunk of the last shard reusing an id of the first is its later use
    (``duplicate_chunk_ids``); an id served twice within one document is counted apart."""
    m = manifest(exp)
    first = pq.read_table(exp / m["shards"][0]["chunks_file"]).column("chunk_id")[0].as_py()
    rewrite(exp, 2, lambda t: set_cell(t, "chunk_id", 35, first))
    got = checks(verify.verify_export(exp))["chunk ids"]
    assert got == (True, "1 id(s) used by more than one chunk (1 later use(s): duplicate_chunk_ids: qualify)")
    second = pq.read_table(exp / m["shards"][1]["chunks_file"]).column("chunk_id")[0].as_py()
    rewrite(exp, 1, lambda t: set_cell(t, "chunk_id", 1, second))  # same document, served twice
    rewrite(exp, 2, lambda t: set_cell(t, "chunk_id", 35, f"syn-{11:08d}-{5:04d}"))  # back as it was
    got = checks(verify.verify_export(exp))["chunk ids"]
    assert got == (True, "1 id(s) used by more than one chunk (0 later use(s): duplicate_chunk_ids: qualify)")


def test_near_unit_norms_count_as_unit_and_every_listed_document_is_counted(exp):
    """Norms within 0.001 of 1 are unit vectors (float32 rounding of real embeddings); a listed document with
    no chunks exported and another with a count off by one are two mismatches."""
    import numpy as np

    def nearly_unit(t):
        v = np.asarray(t.column("embedding")[4].as_py(), dtype=np.float64)
        return set_cell(t, "embedding", 4, (v * 1.0005).tolist())

    rewrite(exp, 1, nearly_unit)
    rep = verify.verify_export(exp)
    assert checks(rep)["vector norms"][1].endswith("(unit vectors)") and rep.norms["unit"] is True
    m = manifest(exp)
    docs = pq.read_table(exp / m["shards"][0]["documents_file"]).column("document_id").to_pylist()
    rewrite(exp, 0, lambda t: t.slice(10))  # document 0's ten chunks gone
    rewrite(exp, 0, lambda t: set_cell(t, "chunk_count", 2, 11), key="documents_file")
    edit_manifest(exp, lambda m: m.update(total_chunks=110))
    rep = verify.verify_export(exp)
    assert [(i["where"], i["problem"]) for i in rep.issues] == [
        (f"document {docs[0]}", "0 chunks exported, 10 listed"),
        (f"document {docs[2]}", "10 chunks exported, 11 listed"),
    ]
    assert checks(rep)["chunks per document"] == (False, "2 document(s) with a chunk count mismatch")


def test_the_listing_of_vectors_replaced_in_phase_01_is_capped_and_the_reconciliation_is_a_forecast(exp):
    replaced = [{"document_id": "d", "chunk_id": f"c{i}", "served": "of zeros"} for i in range(450)]
    edit_manifest(exp, lambda m: m.update(replaced_vectors=replaced))
    rep = verify.verify_export(exp)
    assert len(rep.odd) == 2 * rep.max_issues == 400
    items = [r["item"].strip() for r in rep.reconciliation]
    assert "will be loaded exactly as exported" in items and "will be refused at load" in items
