"""Phase 07 library: local documents (add, replace, delete, no-op), cloud delta sync, snapshot restore."""

import chromadb
import pytest

from runbook import (
    chroma_target,
    cloud_emulator,
    corpus,
    embeddings,
    export_format,
    extract,
    load,
    reembed,
    source,
    update,
)
from runbook.paths import Layout

from .conftest import API_KEY, CACHE

MINILM = embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384)
DOC = "건강검진_결과_상담.md"


@pytest.fixture
def migrated(tmp_path, demo_corpus, key_env):
    """A source (local LlamaCloud server), its export, and the collection loaded from it."""
    layout = Layout.from_params(str(tmp_path / "base"))
    layout.ensure()
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        src = source.open_source(srv.url, key_env)
        res = extract.export_index(src, layout.exports, index_name="Dr.Welno", shard_rows=60, progress=False)
        reembed.apply(res.path, MINILM, CACHE, progress=False)
        client = chroma_target.open_client("embedded", str(layout.base))
        exp = export_format.open_export(res.path)
        prov = chroma_target.provenance(exp, MINILM.model_id)
        col, _ = chroma_target.create_or_verify(
            client, "welno_medical_knowledge", chroma_target.HnswSettings(), prov
        )
        load.load_export(client, col, res.path, layout.state / "cp.json", progress=False)
        yield {"layout": layout, "src": src, "srv": srv, "client": client, "col": col, "export": res.path}


def top_docs(col, question, k=3):
    q = embeddings.embed_query(question, MINILM)
    return [
        m["ref_doc_id"]
        for m in col.query(query_embeddings=q[None, :], n_results=k, include=["metadatas"])["metadatas"][0]
    ]


def test_local_documents_add_replace_delete_and_noop(migrated, tmp_path):
    col, client = migrated["col"], migrated["client"]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / DOC).write_text(
        "# 검진 결과 상담\nAfter the checkup, a nurse explains each abnormal result by phone within "
        "two weeks and books a clinic visit for results marked as suspected disease.\n",
        encoding="utf-8",
    )
    n0 = col.count()
    plan = update.plan_local(col, folder, [], 48, 8)
    assert [r["action"] for r in plan.table()] == ["added"]
    update.apply_local(client, col, plan, MINILM, CACHE)
    doc_id = f"local:{DOC}"
    added = col.get(where={"ref_doc_id": doc_id}, include=[])["ids"]
    assert added and col.count() == n0 + len(added)
    assert doc_id in top_docs(col, "Who explains abnormal checkup results by phone?")
    # a second run with nothing changed changes nothing
    again = update.plan_local(col, folder, [], 48, 8)
    assert [r["action"] for r in again.table()] == ["unchanged"]
    assert update.apply_local(client, col, again, MINILM, CACHE) == {
        "unchanged": {"documents": 1, "chunks added": 0, "chunks removed": 0}
    }
    # an edit replaces every old chunk: no orphans
    (folder / DOC).write_text(
        "# 검진 결과 상담\nResults are now sent through the app. A doctor calls only when a result "
        "needs treatment. Questions go to the help desk on weekdays.\n",
        encoding="utf-8",
    )
    update.apply_local(client, col, update.plan_local(col, folder, [], 48, 8), MINILM, CACHE)
    now = col.get(where={"ref_doc_id": doc_id}, include=["documents"])
    assert not set(now["ids"]) & set(added) and all(
        "app" in d or "doctor" in d or "help desk" in d or "검진" in d for d in now["documents"]
    )
    assert col.count() == n0 + len(now["ids"])
    # deleting the file removes its chunks
    (folder / DOC).unlink()
    update.apply_local(client, col, update.plan_local(col, folder, [], 48, 8), MINILM, CACHE)
    assert col.get(where={"ref_doc_id": doc_id}, include=[])["ids"] == [] and col.count() == n0


def test_cloud_add_edit_delete_are_mirrored_and_reconciled(migrated):
    col, client, srv, layout = migrated["col"], migrated["client"], migrated["srv"], migrated["layout"]
    c = srv.corpus
    ids = list(c.documents)
    gone, edited = ids[1], ids[2]
    c.delete_document(gone)
    doc = dict(c.documents[edited], text=c.documents[edited]["text"] + "\nUpdated guidance 2026.")
    chunks = [dict(x, text=x["text"] + " (2026)") for x in c.chunks[edited]]
    c.put_document(doc, chunks, None)
    new_doc = {
        "id": "건강검진/새문서/new.md",
        "text": "New document about 치매 예방.",
        "metadata": {"file_name": "새문서.pdf"},
        "excluded_embed_metadata_keys": [],
        "excluded_llm_metadata_keys": [],
        "page_positions": None,
        "status_metadata": None,
    }
    c.put_document(
        new_doc,
        [
            corpus.node_json(
                "new-chunk-1",
                "Dementia prevention: exercise, hearing aids, blood pressure.",
                {"file_name": "새문서.pdf"},
                new_doc["id"],
                {},
                None,
                None,
                0,
                60,
            )
        ],
        None,
    )
    plan = update.delta_sync(
        migrated["src"], client, col, layout, migrated["export"], MINILM, CACHE, dry_run=True
    )["plan"]
    assert plan == {"added": [new_doc["id"]], "deleted": [gone], "changed": [edited]}
    before_requests = len(srv.requests)
    out = update.delta_sync(migrated["src"], client, col, layout, migrated["export"], MINILM, CACHE)
    chunk_requests = [r for r in srv.requests[before_requests:] if r[1].endswith("/chunks")]
    assert len(chunk_requests) == 2  # only the new and the edited document were fetched
    assert out["reconciliation"]["clean"] and out["added"] == [new_doc["id"]] and out["deleted"] == [gone]
    assert col.get(where={"ref_doc_id": gone}, include=[])["ids"] == []
    assert all(
        d.endswith(" (2026)")
        for d in col.get(where={"ref_doc_id": edited}, include=["documents"])["documents"]
    )
    assert col.get(ids=["new-chunk-1"], include=[])["ids"] == ["new-chunk-1"]
    assert col.count() == c.total_chunks()
    assert (col.metadata or {})["export_manifest_sha256"] == export_format.open_export(
        out["export"]
    ).manifest_sha256


def test_restore_from_snapshot_returns_the_earlier_state(migrated, tmp_path):
    layout, col = migrated["layout"], migrated["col"]
    before = sorted(col.get(include=[])["ids"])
    snap = update.snapshot(layout, "test")
    col.delete(ids=before[:25])
    assert col.count() == len(before) - 25
    aside = update.restore(layout, snap.name)
    assert aside.exists()
    chromadb.api.client.SharedSystemClient.clear_system_cache()  # reopen from disk, not from this process's cache
    fresh = chroma_target.open_client("embedded", str(layout.base)).get_collection("welno_medical_knowledge")
    assert sorted(fresh.get(include=[])["ids"]) == before
    with pytest.raises(FileNotFoundError, match="no snapshot"):
        update.restore(layout, "nope")
