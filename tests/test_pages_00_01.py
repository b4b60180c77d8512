"""Phases 00 and 01 as pages over the library: the functions their cells call, in a real run and in a dry
run (with the source named and reachable, or not named / without its key), and phase 01 executed as a
notebook in a dry run against the local server, asserting the record it leaves."""

from __future__ import annotations

import json
import os

import pytest

from runbook import credentials, display, extract, handoff, preflight, reembed, source, verify
from runbook.paths import Layout

from .conftest import CACHE, run_notebook

NO_KEY = "H1_TEST_UNSET_KEY"


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv(NO_KEY, raising=False)
    return NO_KEY


# ------------------------------------------------------------------------- the source, named or not


def test_a_dry_run_without_a_named_source_or_key_says_so_in_one_line_and_connects_nowhere(
    no_key, key_env, capsys
):
    unnamed = source.index_ref("", "")
    src = source.open_for(True, unnamed, "http://127.0.0.1:9", key_env)  # nothing listens there
    assert not src.connected and src.not_connected.startswith("no source named")
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and "no source named" in said[0] and "not contacted" in said[0]

    src = source.open_for(True, source.index_ref("", "Dr.Welno"), "", no_key)
    assert not src.connected and f"${no_key} is not set" in src.not_connected
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert "not contacted" in src.describe()


def test_a_real_run_still_stops_for_a_missing_key_or_an_unnamed_source(no_key, server, key_env, tmp_path):
    with pytest.raises(credentials.MissingSecretError, match=f"{no_key} is not set"):
        source.open_for(False, source.index_ref("", "Dr.Welno"), server.url, no_key)
    src = source.open_for(False, source.index_ref("", ""), server.url, key_env)  # a real run connects
    assert src.connected
    with pytest.raises(source.SourceError, match="set index_id or index_name"):
        preflight.source_check(src, **source.index_ref("", ""))
    with pytest.raises(source.SourceError, match="set index_id or index_name"):
        extract.export_step(src, source.index_ref("", ""), Layout.from_params(str(tmp_path)), {}, False)


def test_overview_names_the_index_or_says_it_is_not_named():
    src = source.Source(None, "", "K", not_connected="no source named")
    assert source.overview(src, source.index_ref("", ""))["index"].startswith("(not named")
    row = source.overview(src, source.index_ref("", "Dr.Welno"), {"exports folder": "/x"})
    assert row["index"] == "Dr.Welno" and row["exports folder"] == "/x"


# ------------------------------------------------------------------------------------------ phase 00


def test_source_check_not_contacted_gives_placeholders_and_the_disk_rests_on_expected_chunks():
    src = source.Source(None, "", "K", not_connected="no source named")
    info = preflight.source_check(src, **source.index_ref("", "", "Default"))
    assert preflight.is_planned(info["index id"]) and preflight.is_planned(info["index"])
    assert info["documents"] is None and info["not contacted"] == "no source named"
    # every key a reached source gives is there, so config.json and the hand-off keep their shape
    assert {"estimated chunks", "vectors served (sample)", "payload bytes per chunk (sample)"} <= set(info)
    assert preflight.disk_basis(info, 1234) == {"chunks": 1234, "reembed": True, "payload_bytes": None}
    settings = preflight.config_settings("b", "c", info, "K", "O")
    credentials.check_parameters(settings)  # the placeholders are not mistaken for secrets


def test_disk_basis_takes_the_larger_count_and_skips_reembedding_when_vectors_are_served():
    reached = {
        "estimated chunks": 5000,
        "vectors served (sample)": True,
        "payload bytes per chunk (sample)": 900,
    }
    assert preflight.disk_basis(reached, 300) == {"chunks": 5000, "reembed": False, "payload_bytes": 900}
    assert preflight.disk_basis({**reached, "vectors served (sample)": False}, 9000)["chunks"] == 9000
    assert preflight.disk_basis({**reached, "vectors served (sample)": False}, 9000)["reembed"] is True


def test_disk_verdict_names_the_limit_and_the_fix_only_when_past_it():
    check = {
        "ok": True,
        "projected use %": 61.9,
        "limit %": 80.0,
        "use % now": 51.0,
        "projected need GB": 11.9,
        "free GB": 53.4,
    }
    row = preflight.disk_verdict(check)
    assert row["check"] == "projected disk use" and row["ok"] is True
    assert row["detail"].startswith("61.9% of the usable space after the migration (limit 80.0%; 51.0% now)")
    assert "free space" not in row["detail"]
    bad = preflight.disk_verdict({**check, "ok": False, "projected use %": 95.0})
    assert bad["ok"] is False and bad["detail"].endswith("move base_path to a larger volume, then run again")
    assert preflight.disk_verdict({**check, "ok": False}, dry_run=True)["detail"].endswith(
        "then run again (a real run stops here)"
    )
    assert "real run" not in preflight.disk_verdict(check, dry_run=True)["detail"]


def test_a_disk_shortfall_is_red_in_a_dry_run_that_goes_on_and_stops_a_real_run(tmp_path, outputs):
    """A dry run reports what would stop a real run and goes on, whatever this machine's free disk: the
    CI once failed on a dry run of the defaults because the machine had filled past the limit."""
    from runbook import runner

    from .conftest import write_params

    (tmp_path / "dry").mkdir()
    dry = run_notebook(
        "00_preflight", tmp_path / "dry", base_path=str(tmp_path / "dry-base"), max_disk_use_pct=0.5
    )
    assert "Traceback" not in dry.text
    assert "projected disk use" in dry.text and "(a real run stops here)" in dry.text
    assert not (tmp_path / "dry-base").exists()
    with pytest.raises(runner.RunFailed, match="projected disk use"):
        runner.run(write_params(tmp_path, max_disk_use_pct=0.5), only=["00"])


def test_credential_checks_list_required_variables_and_a_dry_run_goes_on(no_key, key_env):
    creds = preflight.credentials_table(
        {"LlamaCloud API key": key_env, "unused": "SOME_OTHER_VARIABLE"}, required=[key_env, no_key]
    )
    rows = preflight.credential_checks(creds, dry_run=True)
    assert [(r["check"], r["ok"]) for r in rows] == [(f"{key_env} set", True), (f"{no_key} set", False)]
    assert rows[1]["detail"].endswith("(not set: a real run stops here)") and "stops" not in rows[0]["detail"]
    display.checks(rows, fail=False)  # what the dry-run page does: shown in red, and on
    real = preflight.credential_checks(creds, dry_run=False)
    assert "stops" not in real[1]["detail"]
    with pytest.raises(display.CheckFailed, match=no_key):
        display.checks(real)


def test_migration_log_postgres_and_handoff_write_only_in_a_real_run(tmp_path, monkeypatch):
    base, run_dir = str(tmp_path / "base"), str(tmp_path / "run")
    layout = Layout.from_params(base)
    assert preflight.log_start(base, run_dir, True)["appended"] == "nothing (dry run)"
    monkeypatch.delenv("H1_PG_DSN", raising=False)
    pg = preflight.postgres_step("H1_PG_DSN", ["wello.t"], base, "", dry_run=True)
    assert pg["status"] == "planned (dry run)" and pg["DSN variable set"] is False
    assert preflight.postgres_checks(pg, base) == []
    folders = preflight.create_layout(base, True)
    kw = {"base_path": base, "run_dir": run_dir}
    rec = preflight.handoff_record(folders, "cfg", {"documents": 3}, {"ok": True}, pg, **kw, dry_run=True)
    assert rec["dry_run"] is True and rec["source"] == {"documents": 3} and rec["postgres_backup"] == pg
    assert not (tmp_path / "base").exists()  # the dry run wrote in the run folder only
    assert (
        json.loads((tmp_path / "run" / "handoff" / "00_preflight.json").read_text())["config_json"] == "cfg"
    )

    assert preflight.log_start(base, run_dir, False)["appended"] == "preflight started"
    done = {"status": "ok", "dump": "d.dump", "sha256": "ab", "row_counts": {"t": 2}}
    rows = preflight.postgres_checks(
        {**done, "restore_check": {"ok": True, "method": "pg_restore --list"}}, base
    )
    assert rows == [{"check": "PostgreSQL dump restorable", "ok": True, "detail": "pg_restore --list"}]
    preflight.handoff_record(
        folders, "cfg", {"documents": 3}, {}, {}, base_path=base, run_dir="", dry_run=False
    )
    log = layout.migration_log.read_text(encoding="utf-8").splitlines()
    said = [line.split("] ", 1)[1].split(" {")[0] for line in log]
    assert said == ["preflight started", "postgres backup ok", "preflight passed"]
    assert '"documents": 3' in log[2]
    assert handoff.read("00_preflight", base_path=base)["source"] == {"documents": 3}


# ------------------------------------------------------------------------------------------ phase 01


def test_groupings_are_the_keyword_arguments_they_stand_for():
    assert reembed.choice("auto", "", 0, "OPENAI_API_KEY", "")["dimension"] is None
    assert reembed.options(True, False, True) == {"force": True, "replace_bad": False, "truncate_long": True}
    spend = reembed.spending(True, 2.5, 3000, 1_000_000, 4)
    assert spend["limits"].rpm == 3000 and spend["limits"].tpm == 1_000_000 and spend["concurrency"] == 4
    assert extract.export_options("e1", 2, 10, 40) == {
        "export_id": "e1",
        "concurrency": 2,
        "page_size": 10,
        "shard_rows": 40,
    }


def test_a_dry_run_without_the_source_plans_with_placeholders_and_every_later_step_says_it_did_not_run(
    tmp_path, capsys
):
    layout = Layout.from_params(str(tmp_path / "base"))
    src = source.Source(None, "", "K", not_connected="no source named (index_id and index_name are empty)")
    where = source.index_ref("", "", "Default")
    how = extract.export_options()
    export = extract.export_step(src, where, layout, how, True, reembed.choice())
    assert export.dry_run and export.title.startswith("dry run")
    plan = export.summary()
    assert plan["action"].startswith("none: the source was not contacted, no source named")
    assert plan["total_documents"] is None and plan["total_chunks"] is None
    assert preflight.is_planned(plan["index_id"]) and preflight.is_planned(plan["export_id"])
    assert preflight.is_planned(plan["embedding_model"]) and plan["embedding_spec"] is None
    assert plan["export_dir"].startswith(str(layout.exports))
    # phase 03's dry run reads these counts as a number
    assert int(plan["total_chunks"] or 0) == 0

    spec = extract.embedding_spec(export, reembed.choice())
    assert spec is None and extract.reembed_plan(export, spec, "c.sqlite", reembed.options()) is None
    assert reembed.plan_table(None, None)["plan"].startswith("not made (dry run)")
    spend = reembed.spending()
    assert extract.reembed_apply(export, spec, "c.sqlite", reembed.options(), spend, layout)[
        "re-embedding"
    ].startswith("not run (dry run)")
    assert extract.verify_step(export, src, 10, None) is None
    capsys.readouterr()
    extract.show_verification(None)
    extract.show_odd_records(None)
    extract.show_issues(None)
    extract.show_charts(export)
    shown = capsys.readouterr().out
    assert shown.count("not run (dry run): nothing was exported") == 2
    assert extract.handoff_step(export, spec, None, None) is plan
    assert not (tmp_path / "base").exists()

    # a model named in the params is known without the source
    named = reembed.choice("openai", "text-embedding-3-small", 1536, "OPENAI_API_KEY")
    plan = extract.export_step(src, where, layout, how, True, named).plan
    assert (
        plan["embedding_model"] == "openai:text-embedding-3-small@1536"
        and plan["embedding_dimension"] == 1536
    )
    assert "paid" in plan["vectors"]


def test_the_real_steps_export_embed_verify_and_hand_on(src, server, tmp_path, monkeypatch):
    """The real path of the page, step by step (the demo walks it too): logged, embedded with the pipeline's
    own model, verified, and the hand-off names the export."""
    layout = Layout.from_params(str(tmp_path / "base"))
    where = source.index_ref("", "Dr.Welno")
    export = extract.export_step(
        src, where, layout, extract.export_options(shard_rows=60, page_size=20), False
    )
    assert not export.dry_run and export.title is None
    assert export.manifest["total_chunks"] == server.corpus.total_chunks()
    spec = extract.embedding_spec(export, reembed.choice())
    assert (spec.provider, spec.model_name) == ("huggingface", "sentence-transformers/all-MiniLM-L6-v2")
    which = reembed.options()
    plan = extract.reembed_plan(export, spec, CACHE, which)
    assert plan.chunks_to_embed == export.manifest["total_chunks"]
    assert reembed.plan_table(plan, spec) == plan.as_dict()
    counted = []
    count = reembed.plan
    monkeypatch.setattr(reembed, "plan", lambda *a, **k: counted.append(a) or count(*a, **k))
    done = extract.reembed_apply(export, spec, CACHE, which, reembed.spending(), layout, plan)
    assert done["chunks given a vector"] == export.manifest["total_chunks"]
    assert counted == []  # the plan shown above is the one applied: every text is not tokenised again
    report = extract.verify_step(export, src, 20, None)
    assert report.ok, report.to_string()
    out = extract.handoff_step(export, spec, report, None)
    assert out["export_dir"] == str(export.path) and out["total_chunks"] == server.corpus.total_chunks()
    assert out["embedding_model"] == spec.model_id and out["vectors"]["missing"] == 0
    log = layout.migration_log.read_text(encoding="utf-8")
    assert all(m in log for m in ("export started", "export complete", "vectors complete")), log
    assert {method for method, _ in server.requests} == {"GET"}

    unsound = verify.Report()
    unsound.check("chunk count", False, "3 chunks missing")
    with pytest.raises(display.CheckFailed, match="3 chunks missing"):
        extract.handoff_step(export, spec, unsound, None)


# --------------------------------------------------------------- phase 01 as a notebook, in a dry run


@pytest.mark.notebook_branch
def test_01_as_a_notebook_in_a_dry_run_records_what_it_would_export(server, key_env, tmp_path):
    """01_extract executed on its own (papermill) with the params of a rehearsal dry run against the local
    server: its dry-run record holds the counts the source gives and a planned export under the base path;
    nothing is written there and only GET requests reach the source. (tests/test_dry_run.py walks the
    same phase inside a whole dry run through the runner.)"""
    base, run_dir = tmp_path / "base", tmp_path / "run"
    params = {
        "base_path": str(base),
        "run_dir": str(run_dir),
        "dry_run": True,
        "emulator_corpus": "demo",
        "source_base_url": server.url,  # the local server is up: the notebook uses it
        "source_api_key_env": key_env,
        "index_name": "Dr.Welno",
        "embedding_cache": str(CACHE),
    }
    page = run_notebook("01_extract", tmp_path, **params)
    rec = json.loads((run_dir / "handoff" / "01_extract.json").read_text(encoding="utf-8"))
    corpus = server.corpus
    docs, total = corpus.documents_page(0, 20)  # phase 01 estimates chunks from one listing page of 20
    per_doc = sum(len(corpus.chunks[d["id"]]) for d in docs) / len(docs)
    assert rec["dry_run"] is True and rec["phase"] == "01_extract"
    assert rec["total_documents"] == total == 50
    assert rec["total_chunks"] == int(round(total * per_doc)) and rec["total_chunks"] > 0
    assert (rec["index_id"], rec["index_name"]) == (corpus.pipeline["id"], "Dr.Welno")
    assert rec["action"] == "start an export (GET requests only)"
    assert rec["export_dir"].startswith(str(base / "backup" / "exports")) and preflight.is_planned(
        rec["export_id"]
    )
    assert rec["embedding_spec"]["provider"] == "huggingface" and rec["embedding_dimension"] == 384
    assert rec["manifest_sha256"] == preflight.PLANNED_MANIFEST_SHA256
    assert not base.exists(), "a dry run wrote under the base path"
    assert {method for method, _ in server.requests} == {"GET"}
    text = page.text
    assert "DRY RUN" in text and "Traceback" not in text
    assert "not run (dry run): nothing was exported" in text  # re-embedding and verification said so
    assert os.environ[key_env]  # the key the notebook used came from the environment, not the params
