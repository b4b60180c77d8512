"""What the demo pages said against themselves, each fixed at its source: a credential listed twice (00),
disk figures that did not add up (00, 06, 08), the re-embedding plan shown twice (01), the cloud's injected
rehearsal latency not disclosed (05), "cloud key kept" above "key present: False" (06), "snapshots: []"
after taking one (07), a trend chart of one point on a millisecond axis (08)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from runbook import compare, cutover, disk, monitor, preflight, reembed, update
from runbook.paths import Layout


# ---------------------------------------------------------------- 00: one row a credential
def test_a_credential_needed_for_two_reasons_is_one_row(monkeypatch):
    monkeypatch.setenv("PAGE_TEST_CLOUD_KEY", "x" * 12)
    monkeypatch.delenv("PAGE_TEST_OPENAI", raising=False)
    rows = preflight.credentials_table(
        {"LlamaCloud API key": "PAGE_TEST_CLOUD_KEY", "OpenAI key": "PAGE_TEST_OPENAI"},
        required=["PAGE_TEST_CLOUD_KEY", "PAGE_TEST_CLOUD_KEY", "PAGE_TEST_DSN"],
    )
    assert [r["variable"] for r in rows] == ["PAGE_TEST_CLOUD_KEY", "PAGE_TEST_OPENAI", "PAGE_TEST_DSN"]
    by = {r["variable"]: r for r in rows}
    assert by["PAGE_TEST_CLOUD_KEY"] == {
        "purpose": "LlamaCloud API key",
        "variable": "PAGE_TEST_CLOUD_KEY",
        "required": True,
        "set": True,
    }
    assert not by["PAGE_TEST_OPENAI"]["required"] and by["PAGE_TEST_DSN"]["required"]


# ---------------------------------------------------------------- 00/06/08: disk figures that add up
# the demo machine's volume: 270.55 GB, of which 161.61 GB are reserved for root
VOLUME = disk.Usage(total=270_553_174_016, used=54_109_581_312, free=54_834_712_576)


def test_disk_figures_add_up_and_every_phase_reads_the_same_use_percent(tmp_path, monkeypatch):
    monkeypatch.setattr(disk, "usage", lambda p: VOLUME)
    base = tmp_path / "base"
    base.mkdir()
    check = preflight.disk_check(str(base), 100_000, 384, 80.0, payload_bytes=3000)
    s = preflight.disk_summary(check)
    assert s["total GB"] == pytest.approx(
        s["used GB"] + s["free GB"] + s["reserved GB (root only)"], abs=1e-9
    )
    assert s["reserved GB (root only)"] == pytest.approx(161.61)
    usable = VOLUME.used + VOLUME.free
    need = sum(c["projected MB"] for c in check["components"] if c["component"] != "total") * 1e6
    assert s["use % now"] == pytest.approx(VOLUME.used / usable * 100, abs=0.01)  # df's Use%: 49.67
    assert s["use % now"] == pytest.approx(49.67, abs=0.01)
    assert s["projected use %"] == pytest.approx((VOLUME.used + need) / usable * 100, abs=0.05)
    assert s["use % now"] < s["projected use %"] and "df" in s["use % means"]
    assert s["projected need GB"] * 1000 == pytest.approx(check["components"][-1]["projected MB"], abs=1)
    # phase 08 and phase 06 measure the same volume the same way
    assert monitor.disk(str(base))["disk used %"] == s["use % now"]
    assert monitor.disk(str(base))["disk free GB"] == s["free GB"]  # GB of 10^9 bytes on both pages
    p = cutover.plan(
        base_path=str(base),
        run_dir="",
        dry_run=True,
        direction="rollback",
        config_env=str(tmp_path / "absent.env"),
        health_url="",
        query_url="",
        approval="",
        allow_unverified_health=False,
        max_disk_pct=80.0,
        cloud_key_env="PAGE_TEST_KEY",
    )
    row = next(r for r in p.rows if r["check"].startswith("disk below"))
    assert row["detail"].startswith(f"{s['use % now']:.1f}% of the usable space")


# ---------------------------------------------------------------- 01: the plan once
def test_the_reembedding_outcome_does_not_repeat_the_plan():
    done = {
        "embedded": 255,
        "computed_now": 5,
        "model": "huggingface:m",
        "chunks to embed": 255,
        "already cached": 250,
        "tokens (cl100k)": 0,
        "estimated cost $": 0,
    }
    out = reembed.outcome(done)
    assert out == {
        "model": "huggingface:m",
        "chunks given a vector": 255,
        "computed now": 5,
        "from the cache": 250,
    }
    assert "embedding API" in reembed.outcome({**done, "api": {"tokens billed": 10}})


# ---------------------------------------------------------------- 05: the injected latency, disclosed
def test_the_rehearsal_servers_injected_latency_is_named_beside_the_cloud_latency():
    assert compare.injected_latency_ms("demo-ko", 60) == 60.0
    assert compare.injected_latency_ms("", 60) == 0.0  # the real cloud: the param does nothing
    assert "60 ms" in compare.injected_latency_note(60.0)
    s = {
        "cloud best-run latency p95 ms": 99.4,
        "local best-run latency p95 ms": 50.8,
        "latency runs per query": 3,
        "latency runs interleaved": True,
        "mean recall@5 of cloud": 0.48,
        "mean rbo": 0.52,
    }
    plain = compare.latency_check(s, 0.25)["detail"]
    assert "injected" not in plain
    rehearsed = {**s, compare.INJECTED_LATENCY: 60.0}
    assert (
        "includes 60 ms per query injected by the rehearsal server"
        in compare.latency_check(rehearsed, 0.25)["detail"]
    )
    assert "60 ms per query injected" in compare.verdict([], rehearsed, 5)
    df = pd.DataFrame(
        {
            "id": ["a"],
            "question": ["q"],
            "cloud_ms": [90.0],
            "local_ms": [40.0],
            "local_search_ms": [None],
            "recall@5 of cloud": [1.0],
            "cloud_top_score": [0.5],
            "local_top_score": [0.6],
        }
    )
    arms = set(compare.figures(df, 5, 60.0)[0].data[0].x)
    assert "cloud (HTTP, incl. 60 ms injected)" in arms
    assert "cloud (HTTP)" in set(compare.figures(df, 5)[0].data[0].x)


# ---------------------------------------------------------------- 06: where the cloud key is
def _service(tmp_path: Path, key_line: str = "") -> Path:
    cfg = tmp_path / "config.env"
    body = "LLAMACLOUD_API_KEY_ENV=PAGE_TEST_KEY\nUSE_LOCAL_VECTOR_DB={}\n" + key_line
    cfg.write_text(body.format("true"))
    (tmp_path / "config.env.backup").write_text(body.format("false"))
    (tmp_path / "config.env.backup").chmod(0o600)
    return cfg


def test_the_key_table_and_the_rollback_check_say_the_same_thing(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGE_TEST_KEY", "k" * 16)
    cfg = _service(tmp_path)
    t = cutover.key_backup_check(cfg, "LLAMA_CLOUD_API_KEY")
    assert t["PAGE_TEST_KEY in the backup of config.env"] is False
    assert t["PAGE_TEST_KEY in the live config.env (after the switch)"] is False
    assert t["PAGE_TEST_KEY in the environment"] is True
    assert t["cloud key kept for rollback"] is True and "in the environment" in t["where a rollback finds it"]
    assert t["backup file mode"] == "0o600"
    # the plan's row "cloud key kept for rollback" comes from the same function, in the same words
    plan_row = cutover.cloud_key_whereabouts({"LLAMACLOUD_API_KEY_ENV": "PAGE_TEST_KEY"}, "X")
    assert plan_row["kept"] is True and plan_row["where"] == t["where a rollback finds it"]
    assert "config.env holds no key" in plan_row["where"]

    monkeypatch.delenv("PAGE_TEST_KEY")
    missing = cutover.key_backup_check(cfg, "LLAMA_CLOUD_API_KEY")
    assert (
        missing["cloud key kept for rollback"] is False and "missing" in missing["where a rollback finds it"]
    )

    in_file = cutover.key_backup_check(_service(tmp_path, "PAGE_TEST_KEY=" + "k" * 16 + "\n"), "X")
    assert in_file["PAGE_TEST_KEY in the backup of config.env"] is True
    assert in_file["cloud key kept for rollback"] is True


# ---------------------------------------------------------------- 07: the snapshot this run took
def test_the_applied_table_names_the_snapshot_taken_and_those_kept_now(tmp_path):
    layout = Layout.from_params(str(tmp_path / "base"))
    ctx = SimpleNamespace(layout=layout)
    assert (
        update.applied_table(ctx, {"applied": False, "why": "nothing to do"})["snapshots kept now"]
        == "(none)"
    )
    name = "20261128T222755237891Z-before-07"
    (layout.backup / "chroma_snapshots" / name).mkdir(parents=True)
    out = update.applied_table(ctx, {"applied": True, "snapshot": name, "cloud": {"x": 1}})
    assert out["snapshot taken by this run"] == name and out["snapshots kept now"] == [name]
    assert "snapshot" not in out and "cloud" not in out


# ---------------------------------------------------------------- 08: a trend of one point
def _history(times: list[str]) -> pd.DataFrame:
    rows = [
        {
            "at": t,
            "error rate": 0.0,
            "p50 ms": 45.5,
            "p95 ms": 51.5,
            "p99 ms": 52.6,
            "service RSS MB": 1287.1,
            "disk used %": 49.7,
        }
        for t in times
    ]
    df = pd.DataFrame(rows)
    df["at"] = pd.to_datetime(df["at"], utc=True)
    return df


def test_a_single_monitoring_run_is_a_labelled_point_on_a_readable_time_axis():
    fig = monitor.trend_figure(_history(["2026-11-28T22:28:05+00:00"]), monitor.Limits(0.05, 30000, 80, 3))
    for trace in fig.data:
        assert "markers" in trace.mode and "text" in trace.mode and trace.texttemplate
    lo, hi = (pd.Timestamp(x) for x in fig.layout.xaxis.range)
    assert hi - lo >= pd.Timedelta(minutes=60)  # not a few milliseconds around the point
    assert "%L" not in fig.layout.xaxis.tickformat and "%H:%M" in fig.layout.xaxis.tickformat
    assert fig.layout.yaxis2.range[0] == 0 and fig.layout.yaxis2.range[1] > 52.6  # from 0, room for labels
    titles = [a.text for a in fig.layout.annotations]
    # a 30 s limit over 50 ms probes is named, not drawn (it would flatten the points into the axis)
    assert any("30,000 ms, far above: not drawn" in t for t in titles)
    assert {s.y0 for s in fig.layout.shapes} == {0.05, 80}
    many = monitor.trend_figure(
        _history([f"2026-11-{d:02d}T10:00:00+00:00" for d in range(1, 21)]), monitor.Limits(0.05, 60, 80, 3)
    )
    assert "text" not in many.data[0].mode  # many runs: a line, values on hover
    assert len(many.layout.shapes) == 3


def test_a_health_answer_reads_as_text_and_a_cut_is_marked():
    body = {"status": "ok", "arm": "local", "count": 255, "config": "/x" * 300, "pid": 11355}
    line = cutover.health_text(body)
    assert line.startswith("status: ok; arm: local; count: 255; config: /x/x")
    assert line.endswith("…") and len(line) == 400 and "{" not in line and '"' not in line
    assert cutover.health_text({"arm": "cloud", "pid": 11355}) == "arm: cloud; pid: 11355"
