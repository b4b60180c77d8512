"""Dry runs: every phase 00-05 records what it WOULD do in the run folder, later phases of the same dry run
accept that plan, a real run never does, and nothing under the base path is created."""

from __future__ import annotations

import json

import pytest
import yaml

from runbook import chroma_target, compare, handoff, preflight, runner
from runbook.paths import PROJECT_ROOT

from .conftest import CACHE, write_params

PHASES = [
    "00_preflight",
    "01_extract",
    "02_init_chroma",
    "03_migrate",
    "04_rag_service",
    "05_ab_compare",
    "06_cutover",
    "07_update_vectors",
    "08_monitor",
]


@pytest.mark.slow
def test_dry_run_of_production_params_walks_00_to_08_and_touches_nothing(tmp_path, outputs, monkeypatch):
    """`run welno.yaml` with dry_run: true reaches 08 without a go (nothing is switched), touches nothing
    under the base path, and every page says DRY RUN at the top."""
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", "dry-run-test-key")
    monkeypatch.setenv(
        "OPENAI_API_KEY", "dry-run-never-used"
    )  # welno.yaml requires it; a dry run calls nothing
    prod = yaml.safe_load((PROJECT_ROOT / "runbook_params" / "welno.yaml").read_text(encoding="utf-8"))
    base = tmp_path / "prod-base"
    params = {**prod, "dry_run": True, "base_path": str(base), "emulator_corpus": "demo"}
    p = write_params(tmp_path, **params, embedding_cache=str(CACHE))

    res = runner.run(p)  # all phases: a dry run does not stop for a go

    m = json.loads((res.run_dir / "manifest.json").read_text())
    assert [(ph["notebook"], ph["status"]) for ph in m["phases"]] == [(s, "ok") for s in PHASES]
    assert not base.exists(), "a dry run created something under the base path"
    h = {}
    for stem in PHASES:
        nb = json.loads((res.run_dir / f"{stem}.ipynb").read_text(encoding="utf-8"))
        first = next(c for c in nb["cells"] if c["cell_type"] == "code" and c.get("outputs"))
        assert "DRY RUN" in json.dumps(first["outputs"], ensure_ascii=False), f"{stem}: no DRY RUN at the top"
        assert "DRY RUN" in (res.run_dir / f"{stem}.html").read_text(encoding="utf-8")
        if stem == "08_monitor":  # monitoring appends history; it hands nothing to a later phase
            continue
        h[stem] = json.loads((res.run_dir / "handoff" / f"{stem}.json").read_text(encoding="utf-8"))
        assert h[stem]["dry_run"] is True and h[stem]["phase"] == stem
        assert m["phases"][PHASES.index(stem)]["handoff"] == f"handoff/{stem}.json"

    # what each phase would do, read by the next one
    assert {r["status"] for r in h["00_preflight"]["layout"]} == {"would create"}
    assert h["00_preflight"]["source"]["documents"] == 50 and h["00_preflight"]["disk"]["basis"]
    h01 = h["01_extract"]
    assert h01["index_id"] == prod["index_id"] and h01["index_name"] == "Dr.Welno"
    assert h01["total_documents"] == 50 and h01["total_chunks"] > 0
    assert h01["export_dir"].startswith(str(base / "backup" / "exports")) and preflight.is_planned(
        h01["export_id"]
    )
    assert h01["embedding_spec"]["provider"] == "huggingface" and h01["embedding_dimension"] == 384
    h02 = h["02_init_chroma"]
    assert h02["collection"] == f"welno_medical_knowledge__{preflight.PLANNED_EXPORT_ID}"
    assert h02["status"].startswith("would create") and h02["hnsw"]["space"] == "cosine"
    assert h02["provenance"]["source_index_id"] == prod["index_id"]
    h03 = h["03_migrate"]
    assert h03["count"] == h01["total_chunks"] and h03["would load"] == h01["total_chunks"]
    assert h03["batches"] == 1 and h03["collection"] == h02["collection"]
    assert h03["chroma_path"] == str(base / "chroma_db")
    h04 = h["04_rag_service"]
    assert h04["collection"] == h02["collection"] and h04["config_env"] == str(base / "state/rag/config.env")
    assert h04["entries"]["LOCAL_VECTOR_DB_COLLECTION"] == h02["collection"]
    assert h04["entries"]["LOCAL_EMBED_MODEL"] == h01["embedding_spec"]["model_name"]
    h05 = h["05_ab_compare"]
    assert h05["passed"] is None and h05["summary"] is None and h05["plan"]["questions"] == 50
    assert [a["arm"] for a in h05["plan"]["arms"]] == ["cloud as configured", "local"]
    assert h05["collection"] == h02["collection"]
    assert h05["export_manifest_sha256"] == preflight.PLANNED_MANIFEST_SHA256
    h06 = h["06_cutover"]  # the switch it would write, for the collection the chain would verify
    assert h06["direction"] == "cutover" and h06["collection"] == h02["collection"] and h06["steps"] == []
    assert h06["changes"]["LOCAL_VECTOR_DB_COLLECTION"] == h02["collection"]
    assert h06["changes"]["USE_LOCAL_VECTOR_DB"] == "true"
    assert "would_build" in h["07_update_vectors"] or "collection" not in h["07_update_vectors"]


def test_a_real_run_refuses_a_dry_run_record(tmp_path):
    base, run_dir = str(tmp_path / "base"), str(tmp_path / "run")
    handoff.record("01_extract", {"export_dir": "<planned>"}, base_path=base, run_dir=run_dir, dry_run=True)
    assert not (tmp_path / "base").exists()
    assert handoff.read("01_extract", base_path=base, run_dir=run_dir, dry_run=True)["dry_run"] is True
    with pytest.raises(handoff.MissingHandoffError):
        handoff.read("01_extract", base_path=base, run_dir=run_dir)
    # a dry-run record in the real state (copied there by hand) is refused as well, naming why
    state = tmp_path / "base" / "state" / "handoff"
    state.mkdir(parents=True)
    (tmp_path / "run" / "handoff" / "01_extract.json").rename(state / "01_extract.json")
    with pytest.raises(handoff.MissingHandoffError, match="from a dry run"):
        handoff.read("01_extract", base_path=base, run_dir=run_dir)


def test_a_dry_run_without_an_earlier_phase_goes_on_saying_so_in_one_line(tmp_path, capsys):
    base = str(tmp_path / "base")
    rec = handoff.read("01_extract", base_path=base, dry_run=True)
    assert rec == {"phase": "01_extract", "dry_run": True, "absent": True} and handoff.is_absent(rec)
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("phase 01_extract has not run under ")
    assert handoff.read_optional("07_update_vectors", base_path=base, dry_run=True) is None
    assert capsys.readouterr().out == ""  # an optional record is not announced
    with pytest.raises(handoff.MissingHandoffError, match="run phase 01_extract first"):
        handoff.read("01_extract", base_path=base)  # a real run stops
    assert not (tmp_path / "base").exists()


def test_dry_run_of_02_checks_an_existing_collection_without_changing_it(tmp_path):
    base = str(tmp_path / "base")
    client = chroma_target.open_client("embedded", base)
    created = {"source_index_id": "idx-1", "embedding_model": "huggingface:m", "dimension": 384}
    chroma_target.create_or_verify(client, "welno_medical_knowledge", chroma_target.HnswSettings(), created)
    h01 = {
        "index_id": "idx-1",
        "index_name": "n",
        "embedding_model": "huggingface:m",
        "embedding_dimension": 384,
    }
    wider = chroma_target.HnswSettings(ef_search=200)

    plan = preflight.collection_plan(h01, "", "welno_medical_knowledge", False, wider, "embedded", base)

    assert plan["status"].startswith("would verify and set ef_search 100 -> 200")
    col = client.get_collection("welno_medical_knowledge", embedding_function=None)
    assert chroma_target.current_hnsw(col)["ef_search"] == 100  # reported, not set
    with pytest.raises(chroma_target.CollectionMismatch, match="a real run would stop"):
        preflight.collection_plan(
            {**h01, "index_id": "other"}, "", "welno_medical_knowledge", False, wider, base_path=base
        )


def test_gate_plan_names_the_gates_the_comparison_applies():
    s = {
        "mean recall@5 of cloud": 1.0,
        "queries with empty local results": 0,
        "local best-run latency p95 ms": 1.0,
        "cloud best-run latency p95 ms": 2.0,
        "latency runs per query": 3,
        "latency runs interleaved": True,
        "local hit@5 (labels)": 1.0,
    }
    planned = compare.gate_plan(5, 0.9, 0, True, 0.8)
    # label quality first (compare.label_gates, named by the configured arm), then the gates in order
    assert "hit@5 and MRR on labelled questions, vs the cloud's" in planned[0]["check"]
    assert [g["check"] for g in planned[1:]] == [g["check"] for g in compare.gates(s, 5, 0.9, 0, True, 0.8)]
