"""The export's shard writer: the piece that makes an export resumable and lets a second listing pass remove
documents deleted at the source, without ever leaving a manifest that names a file that is not there."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from runbook import atomic, export_format, extract


def _rows(export_dir):
    exp = export_format.open_export(export_dir)
    docs = list(exp.iter_documents())
    chunks: dict[str, list[dict]] = {}
    for row in exp.iter_chunks():
        chunks.setdefault(row["document_id"], []).append(row)
    return docs, chunks


def _writer(tmp_path, docs, chunks, n_docs=12):
    path = tmp_path / "export"
    path.mkdir()
    w = extract._Writer(path, {"index_id": "ix", "export_id": "e1"}, shard_rows=15)
    for d in docs[:n_docs]:
        refused = [
            {"document_id": d["document_id"], "chunk_id": "c-x", "problem": "empty id", "what to do": "-"}
        ]
        w.add(d, chunks[d["document_id"]], refused)
    w.flush()
    return path, w


def _doc_ids(path, sh):
    return [d["document_id"] for d in pq.read_table(path / sh["documents_file"]).to_pylist()]


def test_removing_documents_rewrites_only_their_shards_and_drops_empty_ones(demo_export, tmp_path):
    docs, chunks = _rows(demo_export)
    path, w = _writer(tmp_path, docs, chunks)
    shards = [dict(s) for s in w.state["shards"]]
    assert len(shards) >= 3 and all(s["generation"] == 0 for s in shards)
    first, second, third = (_doc_ids(path, s) for s in shards[:3])
    # all of the second shard and one document of the third; the first shard is not touched
    gone = set(second) | {third[0]}
    removed = w.remove_documents(gone)
    assert removed == len(gone)  # counted over every shard it touched
    names = [s["index"] for s in w.state["shards"]]
    assert shards[1]["index"] not in names  # a shard left without documents is dropped
    assert w.state["shards"][0] == shards[0]  # untouched: same files, same checksums
    rewritten = next(s for s in w.state["shards"] if s["index"] == shards[2]["index"])
    assert rewritten["generation"] == 1 and rewritten["chunks_file"].endswith("-1.parquet")
    assert _doc_ids(path, rewritten) == third[1:]
    assert rewritten["rows"] == sum(len(chunks[d]) for d in third[1:])
    for old in (shards[1], shards[2]):  # the replaced files are gone
        assert not (path / old["chunks_file"]).exists() and not (path / old["documents_file"]).exists()
    assert {x["document_id"] for x in w.state["refused"]} == {d["document_id"] for d in docs[:12]} - gone
    # what is on disk is what the writer holds: a killed export resumes from it
    assert atomic.read_json(path / "manifest.partial.json") == w.state

    # a second removal in the same shard: generation 2, and a shard without a hit is skipped, not the end
    assert w.remove_documents({third[1]}) == 1
    again = next(s for s in w.state["shards"] if s["index"] == shards[2]["index"])
    assert again["generation"] == 2 and again["documents_file"].endswith("-2.parquet")
    assert not (path / rewritten["documents_file"]).exists()
    assert w.remove_documents({"no-such-document"}) == 0

    resumed = extract._Writer(path, {"index_id": "other"}, shard_rows=15)
    kept = set(first) | set(third[2:]) | {d for s in shards[3:] for d in _doc_ids(path, s)}
    assert set(resumed.committed_documents()) == kept
    named = {s[k] for s in resumed.state["shards"] for k in ("chunks_file", "documents_file")}
    assert {p.name for p in path.glob("*.parquet")} == named  # no file the manifest does not name


def test_a_resumed_writer_removes_files_a_killed_one_left_behind(demo_export, tmp_path):
    docs, chunks = _rows(demo_export)
    path, w = _writer(tmp_path, docs, chunks, n_docs=4)
    (path / "chunks-00099.parquet").write_bytes(b"half written")  # a shard never committed
    (path / "x.parquet.tmp").write_bytes(b"")
    resumed = extract._Writer(path, {"index_id": "ix"}, shard_rows=15)
    assert not (path / "chunks-00099.parquet").exists() and not (path / "x.parquet.tmp").exists()
    assert resumed.state == w.state and resumed._next_index() == w.state["shards"][-1]["index"] + 1


def test_a_refused_document_replaces_its_earlier_entries(tmp_path):
    path = tmp_path / "e"
    path.mkdir()
    w = extract._Writer(path, {"index_id": "ix"}, shard_rows=10)
    w.refuse_document("d1", [{"document_id": "d1", "chunk_id": "a", "problem": "chunk id empty"}])
    w.refuse_document("d2", [])
    w.refuse_document("d1", [])  # seen again (a second listing pass): one entry, the latest
    assert w.state["refused"] == [
        {
            "document_id": "d2",
            "chunk_id": None,
            "problem": "document id has a lone surrogate (not valid Unicode text)",
            "what to do": "fix the document at the source, then export again",
        },
        {
            "document_id": "d1",
            "chunk_id": None,
            "problem": "document id has a lone surrogate (not valid Unicode text)",
            "what to do": "fix the document at the source, then export again",
        },
    ]
    assert w.state["refused_documents"] == ["d1", "d2"]
    assert atomic.read_json(path / "manifest.partial.json") == w.state


def test_a_removal_cut_short_leaves_a_manifest_that_names_only_files_that_exist(demo_export, tmp_path):
    """Killed between two rewritten shards: the first is swapped in the partial manifest, the second not yet;
    every file the manifest names is there, so the resumed export reads a whole shard set."""
    docs, chunks = _rows(demo_export)
    path, w = _writer(tmp_path, docs, chunks)
    shards = [dict(s) for s in w.state["shards"]]
    gone = {_doc_ids(path, shards[0])[0], _doc_ids(path, shards[1])[0]}
    real, calls = w._write_pair, []

    def write_pair_then_die(*a, **kw):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    w._write_pair = write_pair_then_die
    try:
        w.remove_documents(gone)
    except KeyboardInterrupt:
        pass
    on_disk = atomic.read_json(path / "manifest.partial.json")
    named = [s[k] for s in on_disk["shards"] for k in ("chunks_file", "documents_file")]
    assert all((path / f).exists() for f in named)
    assert on_disk["shards"][0]["generation"] == 1 and on_disk["shards"][1] == shards[1]
    assert not (path / shards[0]["documents_file"]).exists()


def test_a_shard_written_before_generations_existed_and_a_writer_with_nothing_refused(demo_export, tmp_path):
    docs, chunks = _rows(demo_export)
    path, w = _writer(tmp_path, docs, chunks, n_docs=2)
    del w.state["shards"][0]["generation"]  # a partial manifest from before generations were recorded
    del w.state["refused"]
    doc = _doc_ids(path, w.state["shards"][0])[0]
    assert w.remove_documents({doc}) == 1
    assert w.state["shards"][0]["generation"] == 1 and w.state["refused"] == []
    assert w.state["shards"][0]["documents_file"].endswith("-1.parquet")


def test_the_newest_unfinished_export_of_the_same_index_is_the_one_resumed(tmp_path):
    for name, index_id, partial in (
        ("20261101T000000Z", "ix", True),
        ("20261102T000000Z", "ix", True),
        ("20261103T000000Z", "other", True),
        ("20261104T000000Z", "ix", False),  # complete: nothing to resume
    ):
        (tmp_path / name).mkdir()
        f = "manifest.partial.json" if partial else "manifest.json"
        atomic.write_json(tmp_path / name / f, {"index_id": index_id})
    assert extract.find_resumable(tmp_path, "ix") == tmp_path / "20261102T000000Z"
    assert extract.find_resumable(tmp_path, "other") == tmp_path / "20261103T000000Z"
    assert extract.find_resumable(tmp_path, "none") is None


def test_finalize_writes_the_complete_manifest_and_drops_the_partial_one(demo_export, tmp_path):
    docs, chunks = _rows(demo_export)
    path, w = _writer(tmp_path, docs, chunks, n_docs=5)
    m = w.finalize({"finished_at": "now"})
    assert m == atomic.read_json(path / "manifest.json") and not (path / "manifest.partial.json").exists()
    assert m["status"] == "complete" and m["finished_at"] == "now" and m["export_id"] == "e1"
    assert m["shards"] == w.state["shards"] and m["total_documents"] == 5
    assert m["total_chunks"] == sum(len(chunks[d["document_id"]]) for d in docs[:5])
    assert m["embedding_dimension"] == 384 == m["embeddings"]["dimension"]


def test_shards_are_named_from_zero_and_cut_once_they_hold_shard_rows(demo_export, tmp_path):
    docs, chunks = _rows(demo_export)
    sizes = [len(chunks[d["document_id"]]) for d in docs]
    path = tmp_path / "e"
    path.mkdir()
    w = extract._Writer(path, {"index_id": "ix"}, shard_rows=sizes[0] + sizes[1])
    w.add(docs[0], chunks[docs[0]["document_id"]])
    assert w.state["shards"] == []  # below shard_rows: still buffered
    w.add(docs[1], chunks[docs[1]["document_id"]])  # exactly shard_rows: the shard is cut
    first = w.state["shards"][0]
    assert (first["index"], first["chunks_file"], first["documents_file"]) == (
        0,
        "chunks-00000.parquet",
        "documents-00000.parquet",
    )
    assert first["rows"] == sizes[0] + sizes[1] and first["documents"] == 2 and w.buf_chunks == []


def test_the_export_charts_count_every_chunk_once_and_stop_at_the_cap(demo_export):
    """Phase 01's charts read the export a batch at a time; their frame must hold each chunk's own figures."""
    from runbook import charts
    from runbook.openai_embedder import count_tokens

    rows = [
        r
        for b in export_format.open_export(demo_export).iter_chunk_batches(
            columns=["document_id", "text", "metadata_json"]
        )
        for r in b.to_pylist()
    ]
    df = charts.export_frame(demo_export)
    assert df["document_id"].tolist() == [r["document_id"] for r in rows]
    assert df["chars"].tolist() == [len(r["text"]) for r in rows]
    assert df["tokens"].tolist() == count_tokens([r["text"] for r in rows])
    assert df["file_name"].tolist() == [json.loads(r["metadata_json"]).get("file_name", "") for r in rows]
    assert len(charts.export_frame(demo_export, max_rows=3)) == 3
    assert charts.export_frame(demo_export, with_tokens=False)["tokens"].isna().all()
    assert len(charts.export_figures(df)) == 3
