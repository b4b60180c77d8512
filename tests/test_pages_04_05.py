"""Phases 04 and 05 as runbook pages: what their cells call (the inputs, the cloud arm opened or only
planned, the cloud preset's kind, the config.env entries, the outcome), and both notebooks executed on a
hybrid, reranked cloud preset, asserting what they record. Real servers, real Chroma; nothing is mocked."""

from __future__ import annotations

import json
import os

import pytest

from runbook import compare, credentials, handoff, rag_arms, retrieval_modes
from runbook.rehearsal import korean_demo

from .conftest import API_KEY, run_notebook
from .test_retrieval_parity import _local, ko_export, ko_master, ko_server  # noqa: F401 (fixtures)

ABSENT01 = {"phase": "01_extract", "dry_run": True, "absent": True}
NO_COLLECTION = {k: None for k in ("collection", "count", "export_manifest_sha256", "chroma_path")}
NO_COLLECTION["phase"] = "03_migrate"


def test_a_dry_run_before_phase_01_plans_the_cloud_arm_without_connecting(capsys, monkeypatch):
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", "set-but-unused")
    src = compare.open_cloud(True, ABSENT01, "", "", "LLAMA_CLOUD_API_KEY")
    out = capsys.readouterr().out
    assert not compare.connected(src) and out.count("\n") == 1 and "no source named" in out
    assert compare.cloud_preset(src, None) == (None, None)
    assert compare.cloud_row(src, ABSENT01)["index"] == "(not named) (id: phase 01 has not run)"
    compare.open_cloud(True, ABSENT01, "Dr.Welno", "", "LLAMA_CLOUD_API_KEY")
    assert "the id of index 'Dr.Welno' is not known" in capsys.readouterr().out
    # the index is known but the key is not set: one line, not connected; a real run stops naming the key
    monkeypatch.delenv("LLAMA_CLOUD_API_KEY")
    h01 = {"phase": "01_extract", "index_id": "pipe-1", "index_name": "Dr.Welno"}
    src = compare.open_cloud(True, h01, "", "http://127.0.0.1:9", "LLAMA_CLOUD_API_KEY")
    assert not compare.connected(src) and "($LLAMA_CLOUD_API_KEY is not set)" in capsys.readouterr().out
    with pytest.raises(credentials.MissingSecretError, match="LLAMA_CLOUD_API_KEY is not set"):
        compare.open_cloud(False, h01, "", "http://127.0.0.1:9", "LLAMA_CLOUD_API_KEY")


def test_the_hybrid_preset_is_read_from_the_cloud_and_a_dense_one_is_not_hybrid(
    ko_server,  # noqa: F811
    server,
    key_env,
):
    ko = compare.open_cloud(False, {}, "", ko_server.url, key_env)
    preset, hybrid = compare.cloud_preset(ko, ko_server.corpus.pipeline["id"])
    assert preset["alpha"] == 0.5 and preset["enable_reranking"] and hybrid is True
    row = compare.preset_row({"index_id": "x"}, preset, hybrid)
    assert row["cloud preset"] == "hybrid (alpha 0.5), reranked (top 6)"
    dense = compare.open_cloud(False, {}, "", server.url, key_env)
    preset, hybrid = compare.cloud_preset(dense, server.corpus.pipeline["id"])
    assert preset["alpha"] == 1.0 and hybrid is False
    assert compare.preset_row({}, preset, hybrid)["hybrid/reranked: a dense-only cloud arm"] == "no"


def test_phase_04_entries_name_the_phase_that_fills_each_placeholder(tmp_path):
    mode = rag_arms.local_mode("match-cloud", None, NO_COLLECTION, str(tmp_path), True)
    assert mode.mode == "dense" and mode.sparse_path == "(the sparse index phase 03 builds)"
    row = rag_arms.mode_row("match-cloud", None, mode)
    assert row["cloud preset"].startswith("unknown") and "a real run follows" in row["note"]
    # a hybrid preset with no sparse index is refused in a real run, naming what to do
    with pytest.raises(retrieval_modes.RetrievalModeError, match="sparse_index: true"):
        rag_arms.local_mode("match-cloud", {"alpha": 0.5}, {"collection": "c"}, str(tmp_path), False)
    settings = rag_arms.service_settings("Default", "LLAMA_CLOUD_API_KEY", 5, 0.0, "gemini", "GOOGLE_API_KEY")
    e = rag_arms.page_entries(ABSENT01, NO_COLLECTION, None, None, mode, settings)
    assert e["LOCAL_VECTOR_DB_COLLECTION"] == "(phase 03 has not run)"
    assert e["LLAMACLOUD_INDEX_ID"] == e["LOCAL_EMBED_MODEL"] == "(phase 01 has not run)"
    assert e["RAG_TOP_K"] == 5 and e["LLAMACLOUD_API_KEY_ENV"] == "LLAMA_CLOUD_API_KEY"
    check = rag_arms.collection_check(NO_COLLECTION, dry_run=True)
    assert not check["ok"] and "phase 03 has not run" in check["detail"]
    assert rag_arms.collection_check(NO_COLLECTION)["detail"] == "run phase 03 again"
    # a dry run writes nothing and builds no arm
    cfg_path = rag_arms.config_env_path(str(tmp_path / "base"))
    assert rag_arms.prepare_local(cfg_path, e, dry_run=True) is None and not cfg_path.exists()
    parity = rag_arms.parity_or_plan(None, 50, 0.999)
    assert rag_arms.build_arms(None) == {}
    rec = rag_arms.page_record(cfg_path, NO_COLLECTION, e, parity, mode, {}, 5, 0.0)
    assert rec["parity"] == "not checked (dry run)" and rec["answers"] == "no arm built (dry run)"
    assert rec["retrieval_mode"] == "local dense" and rec["collection"] is None


def test_phase_05_plan_and_outcome():
    gate_cfg = compare.gate_settings(5, 0.9, 0, False, label_tolerance=0.1)
    rows = compare.gate_plan(**gate_cfg)
    plan = compare.plan([{"expected_document_ids": ["d"]}], ABSENT01, None, None, NO_COLLECTION, 5, rows)
    assert [a["arm"] for a in plan["arms"]] == [compare.CLOUD, compare.CLOUD_DENSE, "local"]
    assert "not known until it is read" in plan["arms"][1]["what"]
    assert "phase 03 has not run" in plan["arms"][2]["what"] and plan["labelled"] == 1
    planned = compare.planned_outcome(plan, None, None)
    assert planned["passed"] is None and planned["gates"] == rows and planned["plan"] is plan

    class Cfg:  # what outcome reads of a RagConfig
        retrieval = retrieval_modes.Mode(mode="hybrid", alpha=0.3, sparse_path="/s")

    local = "local hybrid (alpha 0.3)"
    table = [
        {"arm": compare.CLOUD, "hit@5 (labels)": 0.9, "MRR (labels)": 0.8},
        {"arm": "local dense", "hit@5 (labels)": 0.5, "MRR (labels)": 0.4},
        {"arm": local, "hit@5 (labels)": 0.85, "MRR (labels)": 0.75},
    ]
    s = {"mean recall@5 of cloud": 0.95, "queries with empty local results": 0}
    ids = {"check": {"check": "every chunk id the cloud returned is known", "ok": True, "detail": ""}}
    out = compare.outcome(table, s, ids, Cfg(), gate_cfg, {"alpha": 0.5}, True)
    assert [g["check"].split(":")[0] for g in out["gates"][:2]] == [local, local]  # label gates first
    assert out["gates"][-1] == ids["check"] and out["passed"] is True
    assert out["modes_meeting_label_gates"] == [local] and out["configured_mode"] == local
    assert out["cloud_dense_arm"] is True and out["retrieval_entries"]["LOCAL_HYBRID_ALPHA"] == "0.3"
    worse = compare.outcome(table, s, ids, Cfg(), {**gate_cfg, "label_tolerance": 0.01}, None, False)
    assert worse["passed"] is False and worse["modes_meeting_label_gates"] == []


@pytest.mark.notebook_branch
def test_04_and_05_as_notebooks_on_a_hybrid_reranked_cloud_preset(
    tmp_path,
    ko_export,  # noqa: F811
    ko_server,  # noqa: F811
    key_env,
    monkeypatch,
):
    """The cloud preset is hybrid (alpha 0.5) and reranked: 04 configures the local hybrid (at the alpha asked
    for), 05 detects the preset, adds the dense-only cloud arm and gates the configured mode."""
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    base = tmp_path / "base"
    layout, col, built = _local(base, ko_export)
    exp = json.loads((ko_export / "manifest.json").read_text(encoding="utf-8"))
    from runbook import export_format

    sha = export_format.open_export(ko_export).manifest_sha256
    spec = {
        "provider": "huggingface",
        "model_name": "sentence-transformers/all-MiniLM-L6-v2",
        "dimension": 384,
    }
    handoff.record(
        "01_extract",
        {
            "export_dir": str(ko_export),
            "index_id": exp["index_id"],
            "index_name": exp["index_name"],
            "embedding_spec": {**spec, "api_key_env": ""},
        },
        base_path=str(base),
    )
    where = {"collection": col.name, "chroma_mode": "embedded", "chroma_path": str(layout.chroma_db)}
    handoff.record(
        "03_migrate", {**where, "count": col.count(), "export_manifest_sha256": sha}, base_path=str(base)
    )
    questions = tmp_path / "questions.jsonl"
    picked = korean_demo.questions()[::20]  # a few labelled questions of several kinds
    questions.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in picked), encoding="utf-8")
    run_dir = tmp_path / "run"
    common = {
        "base_path": str(base),
        "run_dir": str(run_dir),
        "dry_run": False,
        "source_base_url": ko_server.url,
        "index_name": "Dr.Welno",
    }
    run_notebook("04_rag_service", tmp_path, **common, local_hybrid_alpha=0.3, parity_sample=10)
    h04 = handoff.read("04_rag_service", base_path=str(base))
    assert h04["retrieval_mode"] == "local hybrid (alpha 0.3)" and h04["collection"] == col.name
    assert h04["entries"]["LOCAL_SPARSE_INDEX_PATH"] == built["path"]
    assert (base / "state" / "rag" / "config.env").stat().st_mode & 0o777 == 0o600
    assert h04["parity"]["min cosine"] >= 0.999

    run_notebook(
        "05_ab_compare",
        tmp_path,
        **common,
        questions_file=str(questions),
        latency_repetitions=1,
        gate_local_p95_below_cloud=False,
        gate_min_recall=0.0,
        gate_label_tolerance=1.0,
        alpha_sweep=[],
    )
    rec = handoff.read("05_ab_compare", base_path=str(base))
    assert rec["cloud_preset"]["alpha"] == 0.5 and rec["cloud_preset"]["enable_reranking"] is True
    assert rec["cloud_dense_arm"] is True
    local = "local hybrid (alpha 0.3)"
    assert [a["arm"] for a in rec["arms"]] == [compare.CLOUD, compare.CLOUD_DENSE, "local dense", local]
    assert rec["configured_mode"] == local and rec["retrieval_entries"]["LOCAL_RETRIEVAL_MODE"] == "hybrid"
    assert rec["retrieval_entries"]["LOCAL_HYBRID_ALPHA"] == "0.3"
    checks = [g["check"] for g in rec["gates"]]
    assert checks[0].startswith(f"{local}: hit@5 on labelled questions") and len(checks) == 5
    assert "chunk id" in checks[-1] and rec["passed"] is True
    assert rec["summary"]["queries"] == len(picked)
    assert rec["collection"] == col.name and rec["export_manifest_sha256"] == sha
    assert os.path.exists(run_dir / "handoff" / "05_ab_compare.json")
    assert API_KEY not in (run_dir / "handoff" / "05_ab_compare.json").read_text(encoding="utf-8")
