"""The summary page and the one-line verdicts: what a stakeholder reads first, from the run folder alone."""

import json
import re

from runbook.report import summary, verdicts

H01 = {
    "phase": "01_extract",
    "index_name": "Dr.Welno",
    "index_id": "idx-123",
    "total_documents": 50,
    "total_chunks": 255,
    "embedding_model": "openai:text-embedding-3-small",
    "embedding_dimension": 1536,
    "export_dir": "/data/welno/backup/exports/e1",
}
H00 = {"phase": "00_preflight", "source": {"index": "Dr.Welno", "project": "Default", "documents": 50}}
H03 = {
    "phase": "03_migrate",
    "collection": "welno_medical_knowledge",
    "count": 255,
    "recall@10": 1.0,
    "ef_search": 100,
    "chroma_mode": "embedded",
    "chroma_path": "/data/welno/chroma_db",
}
H05 = {
    "phase": "05_ab_compare",
    "passed": True,
    "configured_mode": "local hybrid (alpha 0.3)",
    "summary": {
        "queries": 145,
        "cloud hit@5 (labels)": 0.9586,
        "local hit@5 (labels)": 0.9586,
        "cloud MRR (labels)": 0.9086,
        "local MRR (labels)": 0.9092,
        "cloud best-run latency p95 ms": 99.44,
        "local best-run latency p95 ms": 50.8,
    },
}
H06 = {
    "phase": "06_cutover",
    "direction": "cutover",
    "collection": "welno_medical_knowledge",
    "approval": "--approve 20261128T000000Z-welno by kim at 2026-11-28T10:00:00+00:00",
    "steps": [
        {"step": "backup", "ok": True, "detail": "config.env -> config.env.backup (0600)"},
        {"step": "health", "ok": True, "detail": "{'status': 'ok'}"},
    ],
}


def _run_folder(tmp_path, records, **manifest):
    run = tmp_path / "20261128T120000Z-welno"
    (run / "handoff").mkdir(parents=True)
    for rec in records:
        (run / "handoff" / f"{rec['phase']}.json").write_text(json.dumps(rec), encoding="utf-8")
    m = {
        "run_id": run.name,
        "params_file": "runbook_params/welno.yaml",
        "params_sha256": "ab" * 32,
        "parameters": {"base_path": "/data/welno"},
        "git": {"commit": "c0ffee", "dirty": False},
        "run_by": {"user": "kim", "host": "welno-db-1"},
        "started_at": "2026-11-28T12:00:00+00:00",
        "finished_at": "2026-11-28T12:30:00+00:00",
        "status": "ok",
        "phases": [
            {"notebook": r["phase"], "status": "ok", "duration_s": 1.0}
            for r in sorted(records, key=lambda r: r["phase"])
        ],
        **manifest,
    }
    return run, m


def _text(page: str) -> str:
    page = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def test_summary_says_what_moved_where_the_decision_and_the_way_back(tmp_path):
    run, m = _run_folder(tmp_path, [H00, H01, H03, H05, H06])
    text = _text(summary.write_summary(run, m).read_text(encoding="utf-8"))
    assert "PRODUCTION" in text and "REHEARSAL" not in text
    assert "Dr.Welno: 50 documents, 255 chunks" in text
    assert "collection welno_medical_knowledge" in text
    assert "may replace the cloud" in text and "hit rate 0.96 vs 0.96" in text and "51 ms vs 99 ms" in text
    assert "switched: the service now reads the local index welno_medical_knowledge" in text
    assert "python -m runbook run runbook_params/welno.yaml --rollback" in text
    assert "kim on welno-db-1" in text and "c0ffee" in text
    assert "{'" not in text and '{"' not in text  # nested records are never shown as reprs


def test_a_rehearsal_says_so_with_its_injected_latency(tmp_path):
    run, m = _run_folder(
        tmp_path,
        [H00, H01],
        emulator={"url": "http://127.0.0.1:5000", "corpus": "demo-ko"},
        parameters={"base_path": "/x", "emulator_query_latency_ms": 60},
    )
    text = _text(summary.write_summary(run, m).read_text(encoding="utf-8"))
    assert "REHEARSAL" in text and "not the production index" in text and "60 ms added" in text


def test_a_failed_comparison_says_do_not_switch(tmp_path):
    run, m = _run_folder(tmp_path, [H00, H01, H03, {**H05, "passed": False}])
    text = _text(summary.write_summary(run, m).read_text(encoding="utf-8"))
    assert "must NOT replace the cloud" in text and "may replace" not in text


def test_failed_phase_verdict_gives_the_message_and_what_to_do_first():
    v = verdicts.phase_verdict(
        "03_migrate",
        {
            "status": "failed",
            "error": "cell 7 (execution count 7): CheckFailed: recall@10 0.84 is below 0.99: "
            "raise hnsw_ef_search or rebuild with hnsw_max_neighbors 32",
        },
        None,
    )
    assert v["status"] == "FAIL"
    assert v["reason"] == "recall@10 0.84 is below 0.99"
    assert v["todo"] == "raise hnsw_ef_search or rebuild with hnsw_max_neighbors 32"


def test_dry_run_and_interrupted_verdicts():
    dry = verdicts.phase_verdict("01_extract", {"status": "ok"}, {**H01, "dry_run": True})
    assert dry["status"] == "DRY RUN" and "nothing was written" in dry["reason"]
    stopped = verdicts.phase_verdict("06_cutover", {"status": "interrupted", "error": "SIGTERM"}, None)
    assert stopped["status"] == "INTERRUPTED"
    ok = verdicts.phase_verdict("03_migrate", {"status": "ok"}, H03)
    assert ok == {
        "status": "PASS",
        "reason": "loaded 255 chunks into welno_medical_knowledge; verified (recall@10 1.0 at ef_search 100)",
        "todo": "",
    }


def test_a_failed_check_list_is_the_reason_not_the_advice():
    v = verdicts.phase_verdict(
        "05_ab_compare",
        {
            "status": "failed",
            "error": "cell 21 (execution count 21): CheckFailed: 1 check(s) failed:\n- p95: 565 ms",
        },
        None,
    )
    assert v["reason"] == "1 check(s) failed: p95: 565 ms" and "red rows" in v["todo"]


def test_monitoring_verdict_line_from_phase_08s_record():
    from runbook import monitor

    s = {"probes": 5, "probes ok": 5, "via": "query_url", "arm": "local", "p95 ms": 123.4}
    ok = [{"check": "p95 latency", "ok": True, "detail": ""}]
    rec = {"phase": "08_monitor", **monitor.outcome(s, ok)}
    v = verdicts.phase_verdict("08_monitor", {"status": "ok"}, rec)
    assert (
        v["reason"]
        == "the service answered 5 of 5 probes via query_url (local arm), p95 123 ms; every check passed"
    )
    bad = monitor.outcome(s, [{"check": "error rate", "ok": False, "detail": ""}])
    assert bad["verdict_line"].endswith("failed: error rate")


def test_numbers_read_as_numbers():
    assert (
        verdicts.number(80.0, 0) == "80"
        and verdicts.number(1.0) == "1.0"
        and verdicts.number(0.9586, 2) == "0.96"
    )
    line = verdicts.phase_verdict(
        "00_preflight",
        {"status": "ok"},
        {
            "source": {"index": "Dr.Welno", "documents": 50},
            "disk": {"projected use %": 50.4, "limit %": 80.0},
        },
    )["reason"]
    assert line.endswith("50.4% used (limit 80%)")
