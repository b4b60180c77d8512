"""Pages 02 and 03 over the library: the steps their cells call (chroma_target.open_setup/init_collection,
load.open_load/run_load/verify_job/sparse_step/phase_outcome), dry runs with earlier phases absent, and both
notebooks executed against a real ``chroma run`` server (chroma_mode http) on a real export."""

from __future__ import annotations

import pytest

from runbook import chroma_target, export_format, handoff, load, preflight, records
from runbook.paths import Layout
from runbook.rehearsal import cloud_emulator

from .conftest import run_notebook
from .test_load import start_chroma


def h01_of(export_dir) -> dict:
    """The keys of phase 01's hand-off that phases 02 and 03 read, for a verified export."""
    exp = export_format.open_export(export_dir)
    m = exp.manifest
    return {
        "export_dir": str(exp.path),
        "export_id": m["export_id"],
        "manifest_sha256": exp.manifest_sha256,
        "index_id": m["index_id"],
        "index_name": m["index_name"],
        "total_chunks": m["total_chunks"],
        "embedding_dimension": m["embedding_dimension"],
        "embedding_model": "sentence-transformers/all-MiniLM-L6-v2",
    }


# ---- dry runs: nothing is opened, placeholders where an earlier phase has not run --------------------------


def test_phase_02_dry_run_without_phase_01_plans_with_placeholders_and_opens_nothing(tmp_path, capsys):
    base = str(tmp_path / "base")
    h01 = handoff.read("01_extract", base_path=base, dry_run=True)
    assert handoff.is_absent(h01) and "phase 01_extract has not run" in capsys.readouterr().out
    target = chroma_target.Target("embedded", base)
    setup = chroma_target.open_setup(h01, "", target, dry_run=True)
    assert setup.client is None and setup.export is None
    assert setup.summary()["phase 01"].startswith("has not run")
    out = chroma_target.init_collection(setup, "welno_medical_knowledge", False, chroma_target.HnswSettings())
    assert out["collection"] == "welno_medical_knowledge" and out["status"].startswith("would create")
    assert out["export_dir"] == chroma_target.PLANNED_EXPORT_DIR
    assert all(preflight.is_planned(v) for v in out["provenance"].values()), out["provenance"]
    assert setup.shown(out) is out
    assert not (tmp_path / "base").exists()  # no chroma_db/, no log


def test_phase_03_dry_run_without_phase_02_plans_with_placeholders_and_opens_nothing(tmp_path, demo_export):
    base = str(tmp_path / "base")
    h02 = handoff.read("02_init_chroma", base_path=base, dry_run=True)
    job = load.open_load(h02, None, base, records.Policy(), 5000, dry_run=True)
    plan = job.summary()
    assert plan["collection"] == load.PLANNED_COLLECTION
    assert plan["records in export"] == plan["would load"] == "<known once phase 01 has run>"
    assert all(preflight.is_planned(plan[k]) for k in ("chroma_mode", "chroma_host", "chroma_port"))
    # each later step does nothing in a dry run; the hand-off is the plan
    assert load.run_load(job) is None and load.verify_job(job, 10, 5, 0.99) is None
    assert load.sparse_step(job, True) is None
    assert load.phase_outcome(job, None, None, None) is plan
    assert not (tmp_path / "base").exists()
    # phase 01's export, where it is known, is planned for real: its records and batches
    job = load.open_load(h02, h01_of(demo_export), base, records.Policy(), 100, dry_run=True)
    total = export_format.open_export(demo_export).manifest["total_chunks"]
    assert job.plan["records in export"] == job.plan["would load"] == total
    assert job.plan["export_dir"] == str(demo_export) and job.plan["batches"] >= total // 100
    assert not (tmp_path / "base").exists()


def test_a_real_run_without_an_export_or_a_hand_off_stops(tmp_path):
    target = chroma_target.Target("embedded", str(tmp_path / "base"))
    with pytest.raises(handoff.MissingHandoffError, match="run phase 01 first"):
        chroma_target.open_setup(None, "", target, dry_run=False)
    with pytest.raises(handoff.MissingHandoffError, match="run phase 02_init_chroma first"):
        handoff.read("02_init_chroma", base_path=str(tmp_path / "base"), dry_run=False)


# ---- the real steps, embedded ------------------------------------------------------------------------------


def test_the_steps_of_pages_02_and_03_create_load_verify_and_record(tmp_path, demo_export):
    base = str(tmp_path / "base")
    layout = Layout.from_params(base)
    h01 = h01_of(demo_export)
    target = chroma_target.Target("embedded", base)
    setup = chroma_target.open_setup(h01, "", target, dry_run=False)
    assert setup.checked["verified by"].startswith("phase 01")
    assert setup.summary()["chunks"] == h01["total_chunks"]
    hnsw = chroma_target.HnswSettings(ef_search=60)
    h02 = chroma_target.init_collection(setup, "welno", True, hnsw)
    assert h02["collection"] == f"welno__{h01['export_id']}" and h02["status"] == "created"
    assert h02["provenance"]["export_manifest_sha256"] == h01["manifest_sha256"]
    assert h02["provenance"]["embedding_model"] == h01["embedding_model"]
    assert h02["chroma_mode"] == "embedded" and h02["chroma_path"] == str(layout.chroma_db)
    assert setup.shown(h02)["hnsw.ef_search"] == 60
    assert "collection created" in layout.migration_log.read_text()
    again = chroma_target.init_collection(
        chroma_target.open_setup(h01, "", target, False), "welno", True, hnsw
    )
    assert again["status"] == "verified"

    job = load.open_load(h02, h01, base, records.Policy(), 100, dry_run=False)
    assert job.summary()["records now"] == 0 and job.summary()["batch size"] == 100
    result = load.run_load(job)
    assert result.loaded_now == h01["total_chunks"]
    assert (layout.state / f"load-{h02['collection']}.json").exists()
    v = load.verify_job(job, 10, 10, 0.9)
    assert all(c["ok"] for c in v["checks"]), v["checks"]
    assert job.collection is v["collection"]
    sp = load.sparse_step(job, False)
    assert sp["path"] == "" and sp["checks"] == [] and sp["stats"]["older one set aside"] == ""
    out = load.phase_outcome(job, result, v, sp)
    assert out["collection"] == h02["collection"] and out["count"] == h01["total_chunks"]
    assert out["export_manifest_sha256"] == h01["manifest_sha256"] and out["sparse_index"] == ""
    assert out["load"]["loaded now"] == h01["total_chunks"] and out["policy"] == vars(records.Policy())
    log = layout.migration_log.read_text()
    assert "load started" in log and "load finished" in log and "verification passed" in log


# ---- both pages as notebooks, on a Chroma server (chroma_mode http) --------------------------------------


def run_page(stem: str, out_dir, **params) -> dict:
    return run_notebook(stem, out_dir, **params).nb


@pytest.mark.notebook_branch
def test_pages_02_and_03_in_http_mode_load_a_chroma_server(tmp_path, demo_export):
    base = str(tmp_path / "base")
    layout = Layout.from_params(base)
    h01 = handoff.record("01_extract", h01_of(demo_export), base_path=base)
    port = cloud_emulator.free_port()
    proc = start_chroma(tmp_path / "server_db", port)
    try:
        server = dict(chroma_mode="http", chroma_host="127.0.0.1", chroma_port=port)
        run_page("02_init_chroma", tmp_path, base_path=base, dry_run=False, **server)
        h02 = handoff.read("02_init_chroma", base_path=base)
        assert h02["collection"] == "welno_medical_knowledge" and h02["status"] == "created"
        assert {k: h02[k] for k in server} == server
        assert h02["export_dir"] == h01["export_dir"]
        assert h02["provenance"]["export_manifest_sha256"] == h01["manifest_sha256"]

        run_page("03_migrate", tmp_path, base_path=base, dry_run=False, readback_sample=20, recall_queries=10)
        h03 = handoff.read("03_migrate", base_path=base)
        assert h03["collection"] == "welno_medical_knowledge"
        assert h03["count"] == h01["total_chunks"] == h03["load"]["records in export"]
        assert {k: h03[k] for k in server} == server
        assert all(c["ok"] for c in h03["checks"]) and h03["sparse_index"]
        assert h03["chroma_db MB"] is None  # a server's disk is the server's to measure
        # the records are on the server, and nothing opened an embedded store under the base path
        client = chroma_target.open_client("http", host="127.0.0.1", port=port)
        assert (
            client.get_collection("welno_medical_knowledge", embedding_function=None).count()
            == h01["total_chunks"]
        )
        assert not layout.chroma_db.exists()
        assert handoff.verified_collection(base_path=base)["chroma_port"] == port
    finally:
        proc.terminate()
        proc.wait(10)
