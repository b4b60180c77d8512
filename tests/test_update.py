"""Phase 07: local documents (add, replace, delete, no-op), cloud delta sync, snapshot restore, and the
embedded path: every change goes into a new collection version, the served collection is never written.
Real Chroma, a real local LlamaCloud-compatible server, real subprocesses; nothing is mocked."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chromadb
import nbformat
import pytest

from runbook import (
    chroma_target,
    embeddings,
    export_format,
    extract,
    handoff,
    load,
    reembed,
    runner,
    source,
    update,
)
from runbook.paths import PACKAGE_DATA, PROJECT_ROOT, Layout
from runbook.rehearsal import cloud_emulator, corpus

from .conftest import API_KEY, CACHE, run_notebook, write_params

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


def edit_the_cloud(c) -> dict:
    """At the source: one document deleted, one edited, one added (Korean names). Returns their ids."""
    ids = list(c.documents)
    gone, edited = ids[1], ids[2]
    c.delete_document(gone)
    doc = dict(c.documents[edited], text=c.documents[edited]["text"] + "\nUpdated guidance 2026.")
    c.put_document(doc, [dict(x, text=x["text"] + " (2026)") for x in c.chunks[edited]], None)
    new_doc = {
        "id": "건강검진/새문서/new.md",
        "text": "New document about 치매 예방.",
        "metadata": {"file_name": "새문서.pdf"},
        "excluded_embed_metadata_keys": [],
        "excluded_llm_metadata_keys": [],
        "page_positions": None,
        "status_metadata": None,
    }
    node = corpus.node_json(
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
    c.put_document(new_doc, [node], None)
    return {"gone": gone, "edited": edited, "new": new_doc["id"]}


def test_delta_sync_in_place_mirrors_add_edit_delete_and_reconciles(migrated):
    """The in-place primitive (what chroma_mode http does to the live collection)."""
    col, client, srv, layout = migrated["col"], migrated["client"], migrated["srv"], migrated["layout"]
    c = srv.corpus
    e = edit_the_cloud(c)
    gone, edited = e["gone"], e["edited"]
    plan = update.delta_sync(
        migrated["src"], client, col, layout, migrated["export"], MINILM, CACHE, dry_run=True
    )["plan"]
    assert plan == {"added": [e["new"]], "deleted": [gone], "changed": [edited]}
    before_requests = len(srv.requests)
    out = update.delta_sync(migrated["src"], client, col, layout, migrated["export"], MINILM, CACHE)
    chunk_requests = [r for r in srv.requests[before_requests:] if r[1].endswith("/chunks")]
    assert len(chunk_requests) == 2  # only the new and the edited document were fetched
    assert out["reconciliation"]["clean"] and out["added"] == [e["new"]] and out["deleted"] == [gone]
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


# ---------------------------------------------------------------- phase 07 on embedded Chroma: new versions
NEW_DOCS = PACKAGE_DATA / "demo_new_documents"
NEW_DOC_ID = "local:갑상선암_검진_안내.md"
NAME = "welno_medical_knowledge"

READER = r"""
import hashlib, json, sys
import chromadb
from chromadb.config import Settings

col = chromadb.PersistentClient(sys.argv[1], Settings(anonymized_telemetry=False)).get_collection(
    sys.argv[2], embedding_function=None
)

def look():
    got = col.get(include=["embeddings", "documents"])
    order = sorted(range(len(got["ids"])), key=got["ids"].__getitem__)
    h = hashlib.sha256()
    for k in order:
        h.update(got["ids"][k].encode() + got["embeddings"][k].astype("float32").tobytes())
        h.update(got["documents"][k].encode())
    q = col.query(query_embeddings=[got["embeddings"][order[0]].tolist()], n_results=5, include=[])
    return {"count": col.count(), "digest": h.hexdigest(), "top5": q["ids"][0]}

print(json.dumps(look()), flush=True)
sys.stdin.readline()
print(json.dumps(look()), flush=True)
"""


def record_migration(m) -> str:
    """Phases 01-03 as they hand off (the fixture did their work): the collection is the verified one."""
    base, col = str(m["layout"].base), m["col"]
    exp = export_format.open_export(m["export"])
    spec = {"provider": MINILM.provider, "model_name": MINILM.model_name, "dimension": MINILM.dimension}
    handoff.record(
        "01_extract",
        {
            "export_dir": str(exp.path),
            "export_id": exp.manifest["export_id"],
            "manifest_sha256": exp.manifest_sha256,
            "index_id": exp.manifest["index_id"],
            "index_name": exp.manifest["index_name"],
            "embedding_model": MINILM.model_id,
            "embedding_spec": {**spec, "api_key_env": ""},
        },
        base_path=base,
    )
    where = {
        "collection": col.name,
        "chroma_mode": "embedded",
        "chroma_host": "127.0.0.1",
        "chroma_port": 8000,
        "chroma_path": str(m["layout"].chroma_db),
    }
    handoff.record("02_init_chroma", {**where, "export_dir": str(exp.path)}, base_path=base)
    rec03 = {**where, "count": col.count(), "export_manifest_sha256": exp.manifest_sha256}
    handoff.record("03_migrate", rec03, base_path=base)
    time.sleep(1.1)  # hand-off times have one-second resolution; 07 comes later than 03
    return base


def whole(col) -> dict:
    """Every id with its embedding and document, digested; the count."""
    import hashlib

    got = col.get(include=["embeddings", "documents", "metadatas"])
    h = hashlib.sha256()
    for k in sorted(range(len(got["ids"])), key=got["ids"].__getitem__):
        h.update(got["ids"][k].encode() + got["embeddings"][k].astype("float32").tobytes())
        h.update((got["documents"][k] + json.dumps(got["metadatas"][k], sort_keys=True)).encode())
    return {"count": col.count(), "sha256": h.hexdigest()}


def names(client) -> set[str]:
    return {c.name for c in client.list_collections()}


def fresh_client(layout):
    """A client that reads the directory afresh (not this process's cached view of it)."""
    chromadb.api.client.SharedSystemClient.clear_system_cache()
    return chroma_target.open_client("embedded", str(layout.base))


def test_embedded_update_builds_a_new_version_and_never_writes_the_served_collection(migrated):
    m, layout = migrated, migrated["layout"]
    base = record_migration(m)
    before = whole(m["col"])
    # a second process holds the original open and queries it, as the serving backend does
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(layout.chroma_db), NAME],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def seen():
        line = reader.stdout.readline()
        assert line, f"the reading process failed: {reader.communicate()[1][-600:]}"
        return json.loads(line)

    try:
        seen_before = seen()
        rec = update.run_update(
            base, dry_run=False, documents_folder=str(NEW_DOCS), embedding_cache=str(CACHE)
        )
        reader.stdin.write("go\n")
        reader.stdin.flush()
        seen_after = seen()
    finally:
        reader.kill()
        reader.wait()
    assert seen_after == seen_before and seen_before["count"] == before["count"]
    client = m["client"]
    assert whole(client.get_collection(NAME)) == before  # the original: every record as it was
    new_name = rec["collection"]
    assert new_name.startswith(NAME + "__u") and names(client) == {NAME, new_name}
    new = client.get_collection(new_name)
    added = new.get(where={"ref_doc_id": NEW_DOC_ID}, include=[])["ids"]
    assert added and new.count() == before["count"] + len(added) == rec["count"]
    assert set(m["col"].get(include=[])["ids"]) <= set(new.get(include=[])["ids"])
    assert not m["col"].get(where={"ref_doc_id": NEW_DOC_ID}, include=[])["ids"]
    assert NEW_DOC_ID in top_docs(
        new, "Is a neck ultrasound for thyroid cancer recommended without symptoms?"
    )
    assert chroma_target.current_hnsw(new)["space"] == "cosine" and new.metadata["built_from"] == NAME
    exp = export_format.open_export(m["export"])
    assert rec["export_manifest_sha256"] == exp.manifest_sha256 == new.metadata["export_manifest_sha256"]
    assert rec["chroma_mode"] == "embedded" and rec["chroma_path"] == str(layout.chroma_db)
    assert rec["local"]["added"]["documents"] == 1 and all(c["ok"] for c in rec["checks"])
    vc = handoff.verified_collection(base_path=base)
    assert (vc["collection"], vc["count"], vc["phase"]) == (new_name, rec["count"], "07_update_vectors")
    assert f"next: phases 04 and 05 on {new_name}, then 06 with approval" in update.verdict(rec)
    assert len(update.list_snapshots(layout)) == 1  # something changed: one snapshot, taken first
    assert not update.state_path(layout, NAME).exists()  # the build is finished and recorded


def test_a_run_with_nothing_to_do_makes_no_snapshot_and_no_collection(migrated, key_env):
    m, layout = migrated, migrated["layout"]
    base = record_migration(m)
    kw = {"sync_from_cloud": True, "source_base_url": m["srv"].url, "source_api_key_env": key_env}
    kw["embedding_cache"] = str(CACHE)
    # the cloud has not changed since the export: nothing to do, and no collection is named
    rec = update.run_update(base, dry_run=False, **kw)
    assert not rec["changed"] and "collection" not in rec and rec["cloud"]["reconciliation"]["clean"]
    assert names(m["client"]) == {NAME} and update.list_snapshots(layout) == []
    assert handoff.verified_collection(base_path=base)["collection"] == NAME
    # a real change builds one version; the same run again changes nothing
    built = update.run_update(base, dry_run=False, documents_folder=str(NEW_DOCS), **kw)
    snaps, colls = update.list_snapshots(layout), names(m["client"])
    assert len(snaps) == 1 and colls == {NAME, built["collection"]}
    again = update.run_update(base, dry_run=False, documents_folder=str(NEW_DOCS), **kw)
    assert not again["changed"] and update.list_snapshots(layout) == snaps and names(m["client"]) == colls
    assert not list(layout.state.glob("update-*.json")) and len(list(layout.exports.iterdir())) == 1
    # the version built earlier stays the one phases 04-06 switch to
    assert (again["collection"], again["count"]) == (built["collection"], built["count"])
    assert handoff.verified_collection(base_path=base)["collection"] == built["collection"]
    assert "Nothing to do" in update.verdict(again)


def tree(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size if n in filenames else -1, st.st_mtime_ns)
    return out


def test_dry_run_notebook_writes_nothing_under_the_base_path(migrated, tmp_path, outputs, key_env):
    m, layout = migrated, migrated["layout"]
    base = record_migration(m)
    e = edit_the_cloud(m["srv"].corpus)
    before = tree(layout.base)
    p = write_params(
        tmp_path,
        base_path=base,
        dry_run=True,
        documents_folder=str(NEW_DOCS),
        sync_from_cloud=True,
        emulator_corpus="",
        source_base_url=m["srv"].url,
    )
    res = runner.run(p, only=["07"])
    assert tree(layout.base) == before  # no snapshot, collection, export generation, state file or log line
    nb = nbformat.read(res.run_dir / "07_update_vectors.ipynb", as_version=4)
    page = json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)
    assert "DRY RUN" in page and NEW_DOC_ID in page and e["gone"] in page
    rec = json.loads((res.run_dir / "handoff" / "07_update_vectors.json").read_text(encoding="utf-8"))
    assert rec["dry_run"] and rec["would_build"].startswith(NAME + "__u") and "collection" not in rec
    assert rec["cloud"]["plan"] == {"added": [e["new"]], "deleted": [e["gone"]], "changed": [e["edited"]]}
    assert not (layout.state / "handoff" / "07_update_vectors.json").exists()


def test_cloud_delta_sync_goes_into_a_new_version_and_reconciles(migrated, key_env):
    m, layout, srv = migrated, migrated["layout"], migrated["srv"]
    base = record_migration(m)
    h01_file = layout.state / "handoff" / "01_extract.json"
    h01_before, before = h01_file.read_bytes(), whole(m["col"])
    e = edit_the_cloud(srv.corpus)
    n_requests = len(srv.requests)
    rec = update.run_update(
        base,
        dry_run=False,
        sync_from_cloud=True,
        source_base_url=srv.url,
        source_api_key_env=key_env,
        embedding_cache=str(CACHE),
    )
    chunk_requests = [r for r in srv.requests[n_requests:] if r[1].endswith("/chunks")]
    assert len(chunk_requests) == 2  # only the new and the edited document were fetched
    client = m["client"]
    assert whole(client.get_collection(NAME)) == before
    new = client.get_collection(rec["collection"])
    assert rec["cloud"]["reconciliation"]["clean"] and rec["cloud"]["added"] == [e["new"]]
    assert new.get(where={"ref_doc_id": e["gone"]}, include=[])["ids"] == []
    edited = new.get(where={"ref_doc_id": e["edited"]}, include=["documents"])["documents"]
    assert edited and all(d.endswith(" (2026)") for d in edited)
    assert new.get(ids=["new-chunk-1"], include=[])["ids"] == ["new-chunk-1"]
    assert new.count() == srv.corpus.total_chunks() == rec["count"]
    gen = export_format.open_export(rec["cloud"]["export"])
    assert rec["export_manifest_sha256"] == gen.manifest_sha256 == new.metadata["export_manifest_sha256"]
    assert rec["export_dir"] == str(gen.path) != str(m["export"])
    assert h01_file.read_bytes() == h01_before  # another phase's hand-off is never rewritten
    assert handoff.verified_collection(base_path=base)["export_manifest_sha256"] == gen.manifest_sha256


KILLED_RUN = """
import sys
from runbook import update
update.run_update(sys.argv[1], dry_run=False, documents_folder=sys.argv[2], sync_from_cloud=True,
                  source_base_url=sys.argv[3], embedding_cache=sys.argv[4])
"""


def test_a_killed_build_is_finished_by_the_next_run_not_started_again(migrated, key_env):
    m, layout, srv = migrated, migrated["layout"], migrated["srv"]
    base = record_migration(m)
    n_original = m["col"].count()
    e = edit_the_cloud(srv.corpus)
    srv.set_faults(slow_rate=1.0, slow_seconds=60, path_pattern="/chunks$")  # the fetch hangs: kill it there

    def chunk_fetches():
        return sum(1 for r in list(srv.requests) if r[1].endswith("/chunks"))

    fetched_before = chunk_fetches()
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, base, str(NEW_DOCS), srv.url, str(CACHE)], cwd=PROJECT_ROOT
    )
    st = update.state_path(layout, NAME)
    deadline = time.time() + 180
    while not (st.exists() and "generation" in json.loads(st.read_text())) and time.time() < deadline:
        assert proc.poll() is None, "the update ended before it could be killed"
        time.sleep(0.2)
    # killed inside the hanging fetch, whatever the machine's speed: the server has the request
    while chunk_fetches() == fetched_before and time.time() < deadline:
        assert proc.poll() is None, "the update ended before it could be killed"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    srv.set_faults()
    state = json.loads(st.read_text())
    half = state["target"]
    client = fresh_client(layout)
    assert names(client) == {NAME, half} and len(update.list_snapshots(layout)) == 1
    rec = update.run_update(
        base,
        dry_run=False,
        documents_folder=str(NEW_DOCS),
        sync_from_cloud=True,
        source_base_url=srv.url,
        source_api_key_env=key_env,
        embedding_cache=str(CACHE),
    )
    client = fresh_client(layout)
    assert rec["collection"] == half and names(client) == {NAME, half}  # finished, not a third one
    assert len(update.list_snapshots(layout)) == 1 and not st.exists()
    assert rec["cloud"]["export"] == state["generation"] and rec["cloud"]["reconciliation"]["clean"]
    new = client.get_collection(half)
    local = new.get(where={"ref_doc_id": NEW_DOC_ID}, include=[])["ids"]
    assert local and new.count() == srv.corpus.total_chunks() + len(local) == rec["count"]
    assert new.get(where={"ref_doc_id": e["gone"]}, include=[])["ids"] == []
    assert client.get_collection(NAME).count() == n_original


def test_on_a_chroma_server_the_live_collection_changes_in_place_and_says_so(tmp_path, demo_export):
    """chroma_mode http: concurrent access is the server's job; 07 writes in place, no snapshot, no version."""
    import shutil

    port = cloud_emulator.free_port()
    chroma = shutil.which("chroma", path=os.path.dirname(sys.executable))
    proc = subprocess.Popen(
        [chroma, "run", "--path", str(tmp_path / "server_db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                client = chroma_target.open_client("http", host="127.0.0.1", port=port)
                break
            except ConnectionError:
                assert time.time() < deadline and proc.poll() is None, "chroma run did not start"
                time.sleep(0.3)
        exp = export_format.open_export(demo_export)
        prov = chroma_target.provenance(exp, MINILM.model_id)
        col, _ = chroma_target.create_or_verify(client, NAME, chroma_target.HnswSettings(), prov)
        load.load_export(client, col, demo_export, tmp_path / "cp.json", progress=False)
        n0 = col.count()
        layout = Layout.from_params(str(tmp_path / "base"))
        m = {"layout": layout, "col": col, "export": demo_export}
        base = record_migration(m)
        where = {"chroma_mode": "http", "chroma_host": "127.0.0.1", "chroma_port": port, "collection": NAME}
        handoff.record("02_init_chroma", {**where, "export_dir": str(demo_export)}, base_path=base)
        handoff.record("03_migrate", {**where, "count": n0}, base_path=base)
        time.sleep(1.1)
        rec = update.run_update(
            base, dry_run=False, documents_folder=str(NEW_DOCS), embedding_cache=str(CACHE)
        )
        added = col.get(where={"ref_doc_id": NEW_DOC_ID}, include=[])["ids"]
        assert rec["in_place"] and rec["collection"] == NAME and names(client) == {NAME}
        assert added and col.count() == n0 + len(added) == rec["count"]
        assert rec["chroma_mode"] == "http" and rec["chroma_port"] == port
        assert rec["export_manifest_sha256"] == exp.manifest_sha256
        assert not rec["snapshot"] and update.list_snapshots(layout) == []
        assert not list(layout.state.glob("update-*.json"))
        assert "Phase 05 must be run again" in update.verdict(rec) and "changed in place" in update.verdict(
            rec
        )
    finally:
        proc.terminate()
        proc.wait(10)


def test_restoring_the_snapshot_of_a_build_hands_back_what_was_verified_then(migrated):
    m, layout = migrated, migrated["layout"]
    base = record_migration(m)
    built = update.run_update(base, dry_run=False, documents_folder=str(NEW_DOCS), embedding_cache=str(CACHE))
    assert handoff.verified_collection(base_path=base)["collection"] == built["collection"]
    (snap,) = update.list_snapshots(layout)
    time.sleep(1.1)
    rec = update.run_update(base, dry_run=False, restore_snapshot=snap)
    assert rec["restored"]["restored"] == snap and "collection" not in rec and not rec["changed"]
    assert names(fresh_client(layout)) == {NAME}  # the chroma_db/ of before the build
    assert handoff.verified_collection(base_path=base)["collection"] == NAME  # 03's again, not a ghost
    assert any(p.name.startswith("chroma_db.replaced-") for p in layout.base.iterdir())


# ---------------------------------------------------------------- page 07 executed as a notebook
def run_07(tmp_path, base: str, **parameters) -> str:
    """Phase 07's notebook for real on ``base`` with ``parameters``; its outputs as text."""
    params = {"base_path": base, "dry_run": False, "embedding_cache": str(CACHE), **parameters}
    return run_notebook("07_update_vectors", tmp_path, **params).text


def handoff_07(layout) -> dict:
    return json.loads((layout.state / "handoff" / "07_update_vectors.json").read_text(encoding="utf-8"))


@pytest.mark.notebook_branch
def test_restore_snapshot_page_puts_the_collection_back_as_it_was(migrated, tmp_path):
    m, layout = migrated, migrated["layout"]
    base = record_migration(m)
    ids_then = sorted(m["col"].get(include=[])["ids"])
    snap = update.snapshot(layout, "page-test").name
    m["col"].delete(ids=ids_then[:25])
    assert m["col"].count() == len(ids_then) - 25
    page = run_07(tmp_path, base, restore_snapshot=snap)
    back = fresh_client(layout).get_collection(NAME)
    assert sorted(back.get(include=[])["ids"]) == ids_then and back.count() == len(ids_then)
    rec = handoff_07(layout)
    assert rec["restored"]["restored"] == snap and not rec["changed"] and "collection" not in rec
    aside = Path(rec["restored"]["previous chroma_db kept at"])
    assert aside.is_dir() and aside.parent == layout.base  # the replaced chroma_db/ is kept, not deleted
    assert f"Snapshot {snap} restored" in page and "Traceback" not in page


@pytest.mark.notebook_branch
def test_deletions_file_page_removes_that_document_and_keeps_the_others(migrated, tmp_path):
    m, layout, client = migrated, migrated["layout"], migrated["client"]
    base = record_migration(m)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / DOC).write_text(
        "# 검진 결과 상담\nAfter the checkup, a nurse explains each abnormal result by phone within two weeks.\n",
        encoding="utf-8",
    )
    (docs / "갑상선암_검진_안내.md").write_bytes((NEW_DOCS / "갑상선암_검진_안내.md").read_bytes())
    first = update.run_update(base, dry_run=False, documents_folder=str(docs), embedding_cache=str(CACHE))
    v1 = client.get_collection(first["collection"])
    gone = v1.get(where={"ref_doc_id": NEW_DOC_ID}, include=[])["ids"]
    kept = v1.get(where={"ref_doc_id": f"local:{DOC}"}, include=[])["ids"]
    ids_v1 = set(v1.get(include=[])["ids"])
    assert gone and kept
    deletions = tmp_path / "deletions.txt"
    deletions.write_text(NEW_DOC_ID + "\n", encoding="utf-8")
    page = run_07(tmp_path, base, deletions_file=str(deletions))
    rec = handoff_07(layout)
    assert rec["built_from"] == first["collection"] != rec["collection"]
    v2 = fresh_client(layout).get_collection(rec["collection"])
    assert v2.get(where={"ref_doc_id": NEW_DOC_ID}, include=[])["ids"] == []
    assert set(v2.get(include=[])["ids"]) == ids_v1 - set(gone)  # every other record stays
    assert sorted(v2.get(where={"ref_doc_id": f"local:{DOC}"}, include=[])["ids"]) == sorted(kept)
    assert rec["count"] == len(ids_v1) - len(gone) == v2.count()
    assert rec["local"] == {"deleted": {"documents": 1, "chunks added": 0, "chunks removed": len(gone)}}
    assert all(c["ok"] for c in rec["checks"])
    assert fresh_client(layout).get_collection(first["collection"]).count() == len(ids_v1)  # untouched
    assert NEW_DOC_ID in page and "Traceback" not in page


def test_a_dry_run_before_phases_01_to_03_plans_without_opening_anything(tmp_path, capsys):
    base = str(tmp_path / "base")
    ctx = update.context(base, dry_run=True)
    assert ctx.absent == ["01_extract", "02_init_chroma", "03_migrate"]
    assert len([ln for ln in capsys.readouterr().out.splitlines() if "has not run" in ln]) == 3
    plan = update.plan_update(ctx, documents_folder=str(NEW_DOCS))
    assert [(r["document"], r["action"]) for r in plan.table()] == [(NEW_DOC_ID, "added")]
    assert plan.target.endswith("__u<UTC time>") and any(
        "snapshot" in s for s in plan.summary()["steps of a real run"]
    )
    assert ctx._client is None  # no Chroma was opened
    applied = update.apply_update(ctx, plan)
    rec = update.record_update(ctx, plan, applied, update.verify_update(ctx, plan, applied))
    assert rec["dry_run"] and rec["next"] == "a real run needs 01_extract, 02_init_chroma, 03_migrate first"
    assert not (tmp_path / "base").exists()
    with pytest.raises(handoff.MissingHandoffError, match="01_extract"):  # a real run stops, naming it
        update.context(base, dry_run=False)


def test_a_deletion_of_an_id_no_file_indexed_is_said_not_ignored(tmp_path):
    client = chromadb.EphemeralClient()
    col = client.create_collection("deletions_probe", embedding_function=None)
    col.add(ids=["c1"], embeddings=[[0.1, 0.2]], documents=["x"], metadatas=[{"ref_doc_id": "cloud-doc"}])
    plan = update.plan_local(col, None, ["cloud-doc"], 1024, 200)
    assert plan.rows == [{"document": "cloud-doc", "action": update.NOT_DELETED}]
    up = update.UpdatePlan(start="deletions_probe", local=plan)
    assert up.empty and up.summary()["documents to change"] == 0  # nothing is built for it
