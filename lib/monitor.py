"""Monitoring after cutover (``08_monitor``, hourly from cron for the 24 hours after the switch).

The runbook measures the backend **itself**; it needs nothing from the backend beyond its query URL:

* **probes**: N questions POSTed to the backend's query URL (``{"question": q}``), each with a timeout.
  A probe fails on a non-200, a timeout, a refused or dropped connection, a body that is not JSON, or an
  answer with no results (a list under ``results``, ``nodes`` or ``source_nodes``). Latency percentiles
  (over all probes: a timeout is what a user waits too) and the error rate come from these probes; the
  arm that answered is recorded when the response names it (``arm``). With no query URL, the probes go
  through the switch factory on the backend's ``config.env`` inside this process: that is the runbook's
  view of the index, not the backend's own latency or errors, and the page says so.
* **memory** of the backend process (RSS of the process and its children) with psutil, found by a pid
  file or by a process name / command-line substring (or a pm2 app name);
* **disk** use of the base volume and the size of ``chroma_db/``;
* optionally the service's own metrics JSON (``metrics_url``): shown and recorded, never required.

Each run appends one JSON line to ``<base>/logs/monitor_history.jsonl`` (keys ``at``, ``error rate``,
``p50 ms``, ``p95 ms``, ``p99 ms``, ``service RSS MB``, ``disk used %`` as before), plots the trend of
all runs, and fails past the limits. A dry run sends nothing and appends nothing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import credentials, handoff, runlog
from . import disk as disk_mod
from .errors import RunbookError
from .paths import Layout, resolve

PHASE = "08_monitor"
RESULT_KEYS = ("results", "nodes", "source_nodes")
NOT_MEASURED = "not measured (no pid file or process name given)"
FACTORY_NOTE = (
    "the runbook's view: the switch factory on the backend's config.env, queried inside this process; "
    "not the backend's own latency or errors (set query_url to probe the backend itself)"
)


class MonitorError(RunbookError, RuntimeError):
    pass


# --- what this run probes and measures --------------------------------------------------------------
@dataclass
class Target:
    query_url: str = ""
    config_env: str = ""
    pidfile: str = ""
    process_name: str = ""
    metrics_url: str = ""
    sources: dict = field(default_factory=dict)  # name -> "params" | "phase 06 hand-off"

    @property
    def via(self) -> str:
        if self.query_url:
            return "query URL"
        if self.config_env:
            return "switch factory"
        return ""


@dataclass(frozen=True)
class Limits:
    max_error_rate: float
    max_p95_ms: float
    max_disk_use_pct: float
    min_probes: int

    @property
    def needed(self) -> int:
        """Probes that must answer: never fewer than one (no run passes on no evidence)."""
        return max(1, int(self.min_probes))


def resolve_target(
    base_path: str,
    run_dir: str = "",
    dry_run: bool = False,
    query_url: str = "",
    config_env_path: str = "",
    service_pidfile: str = "",
    service_process_name: str = "",
    metrics_url: str = "",
) -> Target:
    """The params first; what phase 06 recorded about the service (its hand-off) fills the gaps."""
    rec = handoff.read_optional("06_cutover", base_path=base_path, run_dir=run_dir, dry_run=dry_run) or {}
    svc = rec.get("service") or {}
    t = Target(process_name=service_process_name)
    for attr, given, key in (
        ("query_url", query_url, "query_url"),
        ("config_env", config_env_path, "config_env"),
        ("pidfile", service_pidfile, "pidfile"),
        ("metrics_url", metrics_url, "metrics_url"),
    ):
        if given:
            setattr(t, attr, str(given))
            t.sources[attr] = "params"
        elif svc.get(key):
            setattr(t, attr, str(svc[key]))
            t.sources[attr] = "phase 06 hand-off"
    if service_process_name:
        t.sources["process_name"] = "params"
    return t


def questions(n: int, path: str = "") -> list[str]:
    """``n`` probe questions from the question set (repeated in turn when ``n`` is larger than the set)."""
    from . import compare

    qs = [q["question"] for q in compare.load_questions(path)]
    return [qs[i % len(qs)] for i in range(max(0, int(n)))] if qs else []


def history_file(base_path: str) -> Path:
    return Layout.from_params(base_path).logs / "monitor_history.jsonl"


def describe(
    target: Target, base_path: str, n_questions: int, timeout_s: float, limits: Limits, dry_run: bool
) -> dict:
    """What this run probes and measures (the whole content of a dry run's page)."""
    src = target.sources
    if target.query_url:
        probe = f"POST {target.query_url} × {n_questions} question(s), timeout {timeout_s:g} s each"
    elif target.config_env:
        probe = f"switch factory on {target.config_env} × {n_questions} question(s): {FACTORY_NOTE}"
    else:
        probe = "nothing: query_url and config_env_path are empty and no phase 06 hand-off names the service"
    layout = Layout.from_params(base_path)
    return {
        "mode": "DRY RUN: sends nothing, measures nothing, appends nothing" if dry_run else "real run",
        "probes": probe,
        "query URL": _with_source(target.query_url, src.get("query_url")),
        "config.env": _with_source(target.config_env, src.get("config_env")),
        "memory": _memory_plan(target),
        "disk": f"disk use of the volume holding {layout.base}; size of {layout.chroma_db}",
        "metrics URL (optional)": _with_source(target.metrics_url, src.get("metrics_url")),
        "history": ("would append" if dry_run else "appends") + f" one line to {history_file(base_path)}",
        "limit: error rate": f"≤ {limits.max_error_rate:g} of the probes",
        "limit: p95 latency": f"≤ {limits.max_p95_ms:g} ms",
        "limit: disk use": f"≤ {limits.max_disk_use_pct:g}%",
        "limit: probes answered": f"≥ {limits.needed}",
    }


def _with_source(value: str, source: str | None) -> str:
    return f"{value} (from {source})" if value else "not set"


def _memory_plan(t: Target) -> str:
    if t.pidfile:
        return f"RSS of the process in pid file {t.pidfile} and its children"
    if t.process_name:
        return (
            f"RSS of the processes matching {t.process_name!r} (name, command line or pm2 app) and children"
        )
    return NOT_MEASURED


def plan_checks(target: Target, base_path: str) -> list[dict]:
    """A dry run's verdict: would a real run have something to probe, and somewhere to write?"""
    base = Layout.from_params(base_path).base
    rows = [
        {
            "check": "something to probe",
            "ok": bool(target.via),
            "detail": (
                f"via {target.via}: {target.query_url or target.config_env}"
                if target.via
                else "set query_url (the backend's query endpoint) or config_env_path, or run phase 06 first"
            ),
        },
        {  # a dry run of the whole chain plans the layout; phase 00 creates it
            "check": "base path",
            "ok": True,
            "detail": f"{base}" + ("" if base.is_dir() else " does not exist yet: phase 00 creates it"),
        },
    ]
    if not target.query_url and target.config_env:
        p = resolve(target.config_env)
        rows.append({"check": "config.env exists", "ok": p.is_file(), "detail": str(p)})
    return rows


# --- probes ------------------------------------------------------------------------------------------
def _opener(url: str):
    """Loopback never goes through a proxy (a cron environment may set one for the outside world)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    handlers = [urllib.request.ProxyHandler({})] if loopback else []
    return urllib.request.build_opener(*handlers)


def http_call(url: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    """One HTTP request (POST JSON when ``body`` is given, else GET); never raises for the network.

    Returns ``status`` (0 when no response), ``json`` (None when the body is not JSON), ``ms`` and
    ``error`` (None, "timeout", "connection failed: ...", "HTTP <code>", "not JSON")."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        headers={"content-type": "application/json", "accept": "application/json"},
        method="POST" if body is not None else "GET",
    )
    out = {"status": 0, "json": None, "error": None}
    t0 = time.perf_counter()
    try:
        with _opener(url).open(req, timeout=timeout) as r:
            out["status"] = r.status
            raw = r.read()
    except urllib.error.HTTPError as e:
        out["status"] = e.code
        out["error"] = f"HTTP {e.code}"
        raw = None
    except urllib.error.URLError as e:
        timed_out = isinstance(e.reason, TimeoutError)
        out["error"] = "timeout" if timed_out else f"connection failed: {e.reason}"
        raw = None
    except TimeoutError:
        out["error"] = "timeout"
        raw = None
    except (OSError, ValueError) as e:  # reset, dropped mid-answer, bad status line, bad URL
        out["error"] = f"connection failed: {type(e).__name__}: {e}"
        raw = None
    out["ms"] = (time.perf_counter() - t0) * 1000
    if raw is not None:
        try:
            out["json"] = json.loads(raw)
        except ValueError:
            out["error"] = "not JSON"
        if out["status"] != 200 and not out["error"]:
            out["error"] = f"HTTP {out['status']}"
    return out


def _results_of(body) -> list | None:
    if isinstance(body, dict):
        for k in RESULT_KEYS:
            if isinstance(body.get(k), list):
                return body[k]
    return None


def probe_http(query_url: str, qs: list[str], timeout_s: float) -> list[dict]:
    """Each question POSTed to the backend's query URL; one row per probe."""
    rows = []
    for q in qs:
        r = http_call(query_url, {"question": q}, timeout=timeout_s)
        body = r["json"]
        results = _results_of(body)
        error = r["error"]
        if not error and results is None:
            error = "no results (no list under " + ", ".join(RESULT_KEYS) + ")"
        elif not error and not results:
            error = "no results (empty list)"
        arm = body.get("arm") if isinstance(body, dict) else None
        rows.append(
            {
                "question": q,
                "ms": round(r["ms"], 1),
                "status": r["status"] or None,
                "arm": arm,
                "results": len(results) if results is not None else None,
                "error": error,
            }
        )
    return rows


def probe_factory(config_env: str, qs: list[str], timeout_s: float) -> list[dict]:
    """Each question through ``build_query_engine(load_config(config.env)).ask(q)`` in this process (the
    runbook's view). A call slower than the timeout counts as a timeout (it cannot be cut short)."""
    from . import rag_switch

    try:
        cfg = rag_switch.load_config(resolve(config_env))
        engine = rag_switch.build_query_engine(cfg)
    except Exception as e:  # noqa: BLE001 - every probe fails, saying why
        msg = credentials.scrub(f"cannot build the query engine: {type(e).__name__}: {e}")[:300]
        return [
            {"question": q, "ms": None, "status": None, "arm": None, "results": None, "error": msg}
            for q in qs
        ]
    rows = []
    for q in qs:
        t0 = time.perf_counter()
        error, nodes = None, None
        try:
            nodes = engine.ask(q)["nodes"]
        except Exception as e:  # noqa: BLE001 - a failed probe is a measurement
            error = credentials.scrub(f"{type(e).__name__}: {e}")[:300]
        ms = (time.perf_counter() - t0) * 1000
        if not error and ms > timeout_s * 1000:
            error = "timeout"
        if not error and not nodes:
            error = "no results (empty list)"
        rows.append(
            {
                "question": q,
                "ms": round(ms, 1),
                "status": None,
                "arm": cfg.arm,
                "results": len(nodes) if nodes is not None else None,
                "error": error,
            }
        )
    return rows


def probe(target: Target, qs: list[str], timeout_s: float) -> list[dict]:
    if target.query_url:
        return probe_http(target.query_url, qs, timeout_s)
    if target.config_env:
        return probe_factory(target.config_env, qs, timeout_s)
    raise MonitorError(
        "nothing to probe: query_url and config_env_path are empty and no phase 06 hand-off names the "
        "service. Set query_url (the backend's query endpoint, e.g. http://127.0.0.1:8000/api/rag/query) "
        "in the params file, or config_env_path to probe through the switch factory."
    )


def probe_title(target: Target) -> str:
    if target.query_url:
        return f"probes: POST {target.query_url}"
    return f"probes via the switch factory on {target.config_env}: {FACTORY_NOTE}"


def probe_table(rows: list[dict]) -> pd.DataFrame:
    """One row a probe, formatted for the page (the sample keeps the numbers)."""

    def cell(v, fmt="{}"):
        return "" if v is None else fmt.format(v)

    return pd.DataFrame(
        [
            {
                "question": r["question"][:70],
                "ms": cell(r["ms"], "{:,.1f}"),
                "status": cell(r["status"]),
                "arm": cell(r["arm"]),
                "results": cell(r["results"]),
                "error": cell(r["error"]),
            }
            for r in rows
        ]
    )


def summarize_probes(rows: list[dict]) -> dict:
    n = len(rows)
    failed = [r for r in rows if r["error"]]
    lat = np.asarray([r["ms"] for r in rows if r["ms"] is not None], dtype=float)
    arms = Counter(r["arm"] for r in rows if r.get("arm"))

    def pct(q):
        return round(float(np.percentile(lat, q)), 1) if lat.size else None

    return {
        "probes": n,
        "probes ok": n - len(failed),
        "probe errors": len(failed),
        "error rate": round(len(failed) / n, 4) if n else None,
        "p50 ms": pct(50),
        "p95 ms": pct(95),
        "p99 ms": pct(99),
        "arm": (
            None
            if not arms
            else next(iter(arms))
            if len(arms) == 1
            else ", ".join(f"{a} ×{c}" for a, c in arms.most_common())
        ),
        "error kinds": dict(Counter(_kind(r["error"]) for r in failed)),
    }


def _kind(error: str) -> str:
    return error if len(error) <= 60 else error[:57] + "..."


# --- memory of the backend, disk -------------------------------------------------------------------
def _tree_rss(roots) -> tuple[float, list[int]]:
    import psutil

    procs = {}
    for p in roots:
        procs[p.pid] = p
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    rss = 0
    for p in procs.values():
        try:
            rss += p.memory_info().rss
        except psutil.Error:  # a child that ended meanwhile
            pass
    return rss / 2**20, sorted(procs)


def _running(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def service_memory(pidfile: str = "", process_name: str = "") -> dict:
    """RSS (MB) of the backend process and its children. ``service ok`` is False (with the reason) when
    a pid file is given but unreadable or names a process that is not running, or when no process
    matches the name; neither given: not measured, and not a failure."""
    import psutil

    out = {"service RSS MB": None, "service pids": [], "service": NOT_MEASURED, "service ok": True}
    if pidfile:
        path = resolve(pidfile)
        try:
            pid = int(path.read_text(encoding="utf-8").split()[0])
        except (OSError, ValueError, IndexError) as e:
            reason = "does not exist" if isinstance(e, FileNotFoundError) else f"holds no pid ({e})"
            return {
                **out,
                "service": f"pid file {path} {reason}: is the service running?",
                "service ok": False,
            }
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            proc = None
        if proc is None or not _running(proc):
            return {
                **out,
                "service": f"pid file {path} names pid {pid}, which is not running "
                "(the service is down, or the pid file is stale)",
                "service ok": False,
            }
        mb, pids = _tree_rss([proc])
        return {
            **out,
            "service RSS MB": round(mb, 1),
            "service pids": pids,
            "service": f"pid {pid} from pid file {path}"
            + (f" and {len(pids) - 1} child(ren)" if len(pids) > 1 else ""),
        }
    if process_name:
        roots = find_processes(process_name)
        if not roots:
            return {
                **out,
                "service": f"no running process matches {process_name!r} (name, command line or pm2 app name)",
                "service ok": False,
            }
        mb, pids = _tree_rss(roots)
        return {
            **out,
            "service RSS MB": round(mb, 1),
            "service pids": pids,
            "service": f"{len(pids)} process(es) matching {process_name!r}: {pids[:10]}",
        }
    return out


def find_processes(needle: str) -> list:
    """Processes whose name is ``needle``, whose command line contains it, or that pm2 runs under that
    app name; only the topmost of a matching family, never this process or its ancestors."""
    import psutil

    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    found = {}
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        if p.pid in skip:
            continue
        info = p.info
        cmd = " ".join(info.get("cmdline") or [])
        hit = info.get("name") == needle or needle in cmd
        if not hit:
            try:
                env = p.environ()
                hit = env.get("name") == needle and "pm_id" in env
            except (psutil.Error, OSError):
                hit = False
        if hit and _running(p):
            found[p.pid] = p
    roots = []
    for p in found.values():
        try:
            if not any(a.pid in found for a in p.parents()):
                roots.append(p)
        except psutil.Error:
            pass
    return roots


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def disk(base_path: str) -> dict:
    layout = Layout.from_params(base_path)
    if not layout.base.is_dir():
        raise MonitorError(f"base path {layout.base} does not exist: check base_path in the params file")
    du = disk_mod.usage(layout.base)
    return {
        "disk used %": round(disk_mod.use_pct(du), 2),  # df's Use%, as phase 00 projects it
        "disk free GB": round(du.free / 1e9, 2),
        "chroma_db MB": round(_dir_size(layout.chroma_db) / 2**20, 1) if layout.chroma_db.is_dir() else None,
    }


def resources(base_path: str, target: Target) -> dict:
    """The backend's memory (measured here, with psutil) and the disk."""
    return {**service_memory(target.pidfile, target.process_name), **disk(base_path)}


# --- the service's own metrics: optional -----------------------------------------------------------
def fetch_metrics(metrics_url: str, timeout_s: float = 10.0) -> dict:
    """The metrics JSON's scalar fields, or why there are none; never raises, never required."""
    if not metrics_url:
        return {}
    r = http_call(metrics_url, timeout=timeout_s)
    if r["error"] or not isinstance(r["json"], dict):
        return {"metrics error": f"{metrics_url}: {r['error'] or 'not a JSON object'}"}
    return {k: v for k, v in r["json"].items() if isinstance(v, (str, int, float, bool)) or v is None}


# --- the sample, the history -----------------------------------------------------------------------
def sample(target: Target, probes: list[dict], res: dict, metrics: dict) -> dict:
    s = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "via": target.via,
        "probed": target.query_url or target.config_env,
        **summarize_probes(probes),
        **res,
    }
    for k, v in metrics.items():
        s[k if k.startswith("metrics ") else f"metrics {k}"] = v
    return s


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def record(base_path: str, target: Target, probes: list[dict], res: dict, metrics: dict) -> dict:
    """Build this run's sample, append it to the history and the migration log; return it."""
    s = {k: _clean(v) for k, v in sample(target, probes, res, metrics).items()}
    path = history_file(base_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(s, ensure_ascii=False, allow_nan=False, default=str) + "\n")
    keys = ("via", "arm", "probes", "error rate", "p95 ms", "service RSS MB", "disk used %")
    runlog.log(Layout.from_params(base_path), PHASE, "sample", **{k: s.get(k) for k in keys})
    return s


TREND_COLUMNS = ("error rate", "p50 ms", "p95 ms", "p99 ms", "service RSS MB", "disk used %", "chroma_db MB")


def history(path: Path) -> pd.DataFrame:
    """All runs so far (older lines without the newer keys included)."""
    rows = []
    if Path(path).exists():
        rows = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["at"])
    df["at"] = pd.to_datetime(df["at"], utc=True, format="ISO8601")
    for c in TREND_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df else np.nan
    return df.sort_values("at")


FEW_SAMPLES = 12  # up to this many runs, each point carries its value as a label


def _limit_title(title: str, limit: float, unit: str, values, on: str = "") -> tuple[str, bool]:
    """A subplot's title naming its limit, and whether the limit is drawn: a limit far above every value
    (a p95 limit of 30 s over 50 ms probes) would squash the values into the axis, so it is named only."""
    top = max((float(v) for v in values if v is not None and math.isfinite(float(v))), default=0.0)
    drawn = top > 0 and limit <= 3 * top or top == 0 and limit <= 1
    return f"{title} (limit{on}: {limit:,g}{unit}{'' if drawn else ', far above: not drawn'})", drawn


def trend_figure(df: pd.DataFrame, limits: Limits):
    """One figure, a row per measure, across every monitoring run so far; limits dotted. With few runs each
    value is labelled; the time axis reads in minutes (UTC) and, around a single run, spans an hour."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    df = df.copy()
    at = pd.to_datetime(df["at"], utc=True)
    df["at"] = at.dt.tz_convert("UTC").dt.tz_localize(None)
    n = len(df)
    err_t, err_drawn = _limit_title("Error rate of the probes", limits.max_error_rate, "", df["error rate"])
    lat_t, lat_drawn = _limit_title("Probe latency, ms", limits.max_p95_ms, " ms", df["p95 ms"], " on p95")
    titles = (err_t, lat_t, "Backend memory, RSS (MB)", f"Disk use, % (limit: {limits.max_disk_use_pct:g}%)")
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.07)
    few = n <= FEW_SAMPLES
    mode = "lines+markers+text" if few else "lines+markers"

    def trace(col, name, row, fmt, where="top center", label=""):
        fig.add_trace(
            go.Scatter(
                x=df["at"],
                y=df[col],
                name=name,
                mode=mode,
                marker={"size": 9},
                texttemplate=(label + fmt) if few else None,
                textposition=where,
                hovertemplate=f"%{{x|%Y-%m-%d %H:%M}} UTC<br>{name}: {fmt}<extra></extra>",
            ),
            row=row,
            col=1,
        )

    trace("error rate", "error rate", 1, "%{y:.3f}")
    trace("p50 ms", "p50 ms", 2, "%{y:.1f}", "bottom center", "p50 ")
    trace("p95 ms", "p95 ms", 2, "%{y:.1f}", "middle right", "p95 ")
    trace("p99 ms", "p99 ms", 2, "%{y:.1f}", "top center", "p99 ")
    trace("service RSS MB", "RSS MB", 3, "%{y:,.0f}")
    trace("disk used %", "disk used %", 4, "%{y:.1f}")
    dotted = {"line_dash": "dot", "line_color": "firebrick"}
    for drawn, y, row in (
        (err_drawn, limits.max_error_rate, 1),
        (lat_drawn, limits.max_p95_ms, 2),
        (True, limits.max_disk_use_pct, 4),
    ):
        if drawn:
            fig.add_hline(y=y, row=row, col=1, **dotted)
    for row, cols, limit in (
        (1, ["error rate"], limits.max_error_rate if err_drawn else 0.0),
        (2, ["p50 ms", "p95 ms", "p99 ms"], limits.max_p95_ms if lat_drawn else 0.0),
        (3, ["service RSS MB"], 0.0),
    ):  # from 0, with room above the highest point for its label
        top = max([limit, *(float(v) for c in cols for v in df[c] if pd.notna(v))])
        fig.update_yaxes(range=[0, top * 1.3 if top > 0 else 1], row=row, col=1)
    fig.update_yaxes(range=[0, 105], row=4, col=1)  # disk use on its whole scale, the limit on it
    fig.update_xaxes(tickformat="%Y-%m-%d<br>%H:%M", hoverformat="%Y-%m-%d %H:%M")
    fig.update_xaxes(title_text="time of the run (UTC)", row=4, col=1)
    if n:
        first, last = df["at"].min(), df["at"].max()
        pad = max(pd.Timedelta(minutes=30), (last - first) * 0.08)  # one run: an hour around it
        fig.update_xaxes(range=[first - pad, last + pad])
    runs = f"{n} run(s)" + (" so far: the trend fills in as the hourly runs add points" if n < 3 else "")
    fig.update_layout(title=f"Monitoring history: {runs}; dotted lines are the limits", height=900)
    return fig


# --- the verdict -----------------------------------------------------------------------------------
def outcome(s: dict, checks_: list[dict]) -> dict:
    """Phase 08's record: the sample's headline figures and one line for the summary page."""
    failed = [c["check"] for c in checks_ if not c.get("ok")]
    if not s:  # a dry run: what it would check
        line = f"would probe and measure; {len(checks_)} check(s) planned"
    else:
        p95 = s.get("p95 ms")
        line = (
            f"the service answered {s.get('probes ok') or 0} of {s.get('probes') or 0} probes via "
            f"{s.get('via') or 'nothing'} ({s.get('arm') or 'arm unknown'} arm)"
            + (f", p95 {p95:,.0f} ms" if isinstance(p95, (int, float)) else "")
            + (f"; failed: {', '.join(failed)}" if failed else "; every check passed")
        )
    keys = (
        "at",
        "via",
        "arm",
        "probes",
        "probes ok",
        "error rate",
        "p95 ms",
        "service RSS MB",
        "disk used %",
    )
    return {"sample": {k: s.get(k) for k in keys if k in s}, "checks": checks_, "verdict_line": line}


def checks(s: dict, limits: Limits) -> list[dict]:
    """Red past a limit, and red on no evidence: a run needs at least ``min_probes`` (≥ 1) answers."""
    n, ok = s.get("probes") or 0, s.get("probes ok") or 0
    rate, p95 = s.get("error rate"), s.get("p95 ms")
    kinds = ", ".join(f"{k} ×{c}" for k, c in (s.get("error kinds") or {}).items())
    return [
        {
            "check": "probes answered",
            "ok": ok >= limits.needed,
            "detail": f"{ok} of {n} probe(s) answered via {s.get('via') or 'nothing'} "
            f"(at least {limits.needed} needed)",
        },
        {
            "check": "error rate",
            "ok": rate is not None and rate <= limits.max_error_rate,
            "detail": (
                f"{rate:.3f} over {n} probe(s) (limit {limits.max_error_rate:g})"
                + (f": {kinds}" if kinds else "")
                if rate is not None
                else "no probe sent"
            ),
        },
        {
            "check": "p95 latency",
            "ok": p95 is not None and p95 <= limits.max_p95_ms,
            "detail": (
                f"{p95:.1f} ms over {n} probe(s) (limit {limits.max_p95_ms:g} ms)"
                if p95 is not None
                else "no latency measured"
            ),
        },
        {"check": "backend process", "ok": bool(s.get("service ok", True)), "detail": s.get("service", "")},
        {
            "check": "disk use",
            "ok": s["disk used %"] <= limits.max_disk_use_pct,
            "detail": f"{s['disk used %']}% of the base volume's usable space, as df counts it "
            f"(limit {limits.max_disk_use_pct:g}%)",
        },
    ]
