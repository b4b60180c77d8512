"""Monitoring after cutover (``08_monitor``, run on a schedule): the service's error rate and latency,
its memory, the disk; appended to a history under ``logs/`` and plotted across all runs so far."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .cutover import http_json
from .paths import Layout


def probe(query_url: str, questions: list[str]) -> dict:
    """Synthetic traffic: a few real questions through the service (what a user would send)."""
    ok = failed = 0
    for q in questions:
        status, _ = http_json(query_url, {"question": q}, timeout=30)
        ok += status == 200
        failed += status != 200
    return {"probe ok": ok, "probe failed": failed}


def sample(metrics_url: str, base_path: str, history_file: Path) -> dict:
    status, m = http_json(metrics_url, timeout=10)
    if status != 200:
        raise RuntimeError(f"metrics endpoint {metrics_url} answered HTTP {status}")
    prev = None
    if history_file.exists():
        lines = [ln for ln in history_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        prev = json.loads(lines[-1]) if lines else None
    same_process = (
        prev is not None and prev.get("pid") == m["pid"] and prev.get("requests", 0) <= m["requests"]
    )
    d_req = m["requests"] - (prev["requests"] if same_process else 0)
    d_err = m["errors"] - (prev["errors"] if same_process else 0)
    lat = np.asarray(m["recent_latencies_ms"] or [np.nan])
    du = shutil.disk_usage(Layout.from_params(base_path).base)
    s = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "arm": m.get("arm"),
        "pid": m["pid"],
        "requests": m["requests"],
        "errors": m["errors"],
        "requests since last": d_req,
        "errors since last": d_err,
        "error rate": (d_err / d_req) if d_req else 0.0,
        "p50 ms": float(np.nanpercentile(lat, 50)),
        "p95 ms": float(np.nanpercentile(lat, 95)),
        "p99 ms": float(np.nanpercentile(lat, 99)),
        "service RSS MB": m.get("rss_mb"),
        "disk used %": round(du.used / du.total * 100, 2),
    }
    history_file.parent.mkdir(parents=True, exist_ok=True)
    with open(history_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(s) + "\n")
    return s


def history(history_file: Path) -> pd.DataFrame:
    rows = [json.loads(x) for x in history_file.read_text(encoding="utf-8").splitlines() if x.strip()]
    df = pd.DataFrame(rows)
    df["at"] = pd.to_datetime(df["at"])
    return df


def figures(df: pd.DataFrame, max_disk_pct: float) -> list:
    import plotly.express as px

    f1 = px.line(df, x="at", y="error rate", markers=True, title="Error rate per monitoring run")
    f2 = px.line(
        df.melt(
            id_vars="at", value_vars=["p50 ms", "p95 ms", "p99 ms"], var_name="percentile", value_name="ms"
        ),
        x="at",
        y="ms",
        color="percentile",
        markers=True,
        title="Latency",
    )
    f3 = px.line(df, x="at", y="service RSS MB", markers=True, title="Service memory (RSS)")
    f4 = px.line(df, x="at", y="disk used %", markers=True, title="Disk use of the base volume")
    f4.add_hline(y=max_disk_pct, line_dash="dot", annotation_text=f"{max_disk_pct}% limit")
    for f in (f1, f2, f3, f4):
        f.update_layout(height=300)
    return [f1, f2, f3, f4]


def checks(s: dict, max_error_rate: float, max_p95_ms: float, max_disk_pct: float) -> list[dict]:
    return [
        {
            "check": "error rate",
            "ok": s["error rate"] <= max_error_rate,
            "detail": f"{s['error rate']:.3f} over {s['requests since last']} request(s) (limit {max_error_rate})",
        },
        {
            "check": "p95 latency",
            "ok": s["p95 ms"] <= max_p95_ms,
            "detail": f"{s['p95 ms']:.1f} ms (limit {max_p95_ms})",
        },
        {
            "check": "disk use",
            "ok": s["disk used %"] <= max_disk_pct,
            "detail": f"{s['disk used %']}% (limit {max_disk_pct}%)",
        },
    ]
