"""``summary.html`` and ``index.html`` of a run folder: what a stakeholder reads first.

The summary says, in a minute of reading: rehearsal or production, what was migrated from where to where,
each phase's verdict in one line, the A/B decision with its key numbers, the cutover and how to roll it
back, and who ran it when with which code and params. Everything comes from the manifest and the hand-offs
of the run folder (never from the live state, which later runs change).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .. import atomic
from . import pages, verdicts

READABLE = 0o644


def _esc(v) -> str:
    return html.escape("" if v is None else str(v))


def handoffs(run_dir: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((Path(run_dir) / "handoff").glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            continue
    return out


def rehearsal_banner(manifest: dict) -> str:
    emu = manifest.get("emulator")
    if emu:
        latency = (manifest.get("parameters") or {}).get("emulator_query_latency_ms")
        extra = f"; {latency:g} ms added to each cloud query to stand for the network" if latency else ""
        return (
            f"REHEARSAL: the source is the project's local LlamaCloud-compatible server ({emu.get('url')}, "
            f"corpus {emu.get('corpus')}), not the production index{extra}."
        )
    return ""


def _kind(manifest: dict) -> str:
    if (manifest.get("parameters") or {}).get("dry_run") is True:
        return "DRY RUN"
    return "REHEARSAL" if manifest.get("emulator") else "PRODUCTION"


def run_verdict(manifest: dict, handoffs_of: dict | None = None) -> dict:
    status = manifest.get("status")
    failed = [p for p in manifest.get("phases", []) if p.get("status") in ("failed", "interrupted")]
    if status == "awaiting approval":
        d = manifest.get("decision") or {}
        return {
            "status": verdicts.AWAITING,
            "reason": "phase 05 passed; nothing was switched. A person decides go or no-go.",
            "todo": f"to go: {d.get('approve with', '')}",
        }
    if failed:
        v = failed[0].get("verdict") or verdicts.phase_verdict(failed[0]["notebook"], failed[0], None)
        return {
            "status": v["status"],
            "reason": f"{pages.phase_title(failed[0]['notebook'])}: {v['reason']}",
            "todo": v.get("todo", ""),
        }
    if status == "prepared":
        return {"status": verdicts.NOT_RUN, "reason": "notebooks prepared, nothing executed", "todo": ""}
    if (manifest.get("parameters") or {}).get("dry_run") is True:
        return {
            "status": verdicts.DRY_RUN,
            "reason": "every phase walked through; nothing written",
            "todo": "",
        }
    if status == "ok":
        n = len(manifest.get("phases", []))
        h06 = (handoffs_of or {}).get("06_cutover") or {}
        tail = f"; {verdicts.phase_line('06_cutover', h06)}" if h06 and not h06.get("dry_run") else ""
        return {"status": verdicts.PASS, "reason": f"all {n} phase(s) of this run passed{tail}", "todo": ""}
    return {"status": verdicts.NOT_RUN, "reason": f"run {status}", "todo": ""}


def _kv(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _what(h: dict[str, dict]) -> str:
    h01, h00 = h.get("01_extract") or {}, h.get("00_preflight") or {}
    src = h00.get("source") or {}
    return _kv(
        [
            ("index", _esc(h01.get("index_name") or src.get("index"))),
            ("index id", f"<code>{_esc(h01.get('index_id') or src.get('index id'))}</code>"),
            ("documents", _esc(verdicts.number(h01.get("total_documents") or src.get("documents")))),
            ("chunks", _esc(verdicts.number(h01.get("total_chunks")))),
            ("embedding model", _esc(h01.get("embedding_model") or src.get("embedding model"))),
            ("dimension", _esc(h01.get("embedding_dimension"))),
        ]
    )


def _destination(h: dict[str, dict]) -> tuple[dict, str]:
    """The collection this run migrated into (phase 03's), and a newer version phase 07 built, if any."""
    dest = h.get("03_migrate") or h.get("02_init_chroma") or {}
    newer = (h.get("07_update_vectors") or {}).get("collection") or ""
    return dest, newer if newer != dest.get("collection") else ""


def _newer_note(newer: str) -> str:
    return (
        f"; phase 07 built a newer version, {newer}, in service only once phases 04-06 switch to it"
        if newer
        else ""
    )


def _where(manifest: dict, h: dict[str, dict]) -> str:
    src = (h.get("00_preflight") or {}).get("source") or {}
    dest, newer = _destination(h)
    where = (
        dest.get("chroma_path")
        if dest.get("chroma_mode") != "server"
        else (f"Chroma server {dest.get('chroma_host')}:{dest.get('chroma_port')}")
    )
    source = src.get("source") or (manifest.get("emulator") or {}).get("url") or "LlamaCloud"
    if manifest.get("emulator"):
        source = f"the local LlamaCloud-compatible server (rehearsal), {source}"
    return _kv(
        [
            (
                "from",
                _esc(
                    f"LlamaCloud project {src.get('project', '?')}, index {src.get('index', '?')} — {source}"
                ),
            ),
            (
                "to",
                _esc(
                    f"ChromaDB at {where}, collection {dest.get('collection', '(not created)')}"
                    + _newer_note(newer)
                ),
            ),
            ("export (checksummed copy)", _esc((h.get("01_extract") or {}).get("export_dir", "(none)"))),
        ]
    )


def _phases(manifest: dict, detail: str = "in one line") -> str:
    """Each phase's link, verdict, one line (or, in the index, the runner's error first) and seconds."""
    rows = []
    for ph in manifest.get("phases", []):
        v = ph.get("verdict") or verdicts.phase_verdict(ph["notebook"], ph, None)
        cls = v["status"].lower().replace(" ", "-")
        text = v["reason"] if detail == "in one line" else ph.get("error") or v["reason"]
        rows.append(
            f'<tr><td><a href="{_esc(ph["notebook"])}.html">{_esc(pages.phase_title(ph["notebook"]))}</a></td>'
            f'<td class="status {cls}">{_esc(v["status"])}</td><td>{_esc(text)}</td>'
            f'<td class="num">{_esc(ph.get("duration_s", ""))}</td></tr>'
        )
    return (
        f'<table class="phases"><tr><th>phase</th><th>verdict</th><th>{_esc(detail)}</th><th>seconds</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _ab(h: dict[str, dict]) -> str:
    h05 = h.get("05_ab_compare")
    if not h05:
        return "<p>No A/B comparison in this run.</p>"
    if h05.get("dry_run"):
        return "<p>Dry run: the comparison was planned, not run.</p>"
    s = h05.get("summary") or {}
    decision = (
        f"The local copy answers the {verdicts.number(s.get('queries'))} test questions as well as the cloud "
        f"({_esc(h05.get('configured_mode') or 'local')}), so it may replace it"
        if h05.get("passed")
        else "The local copy does NOT answer as well as the cloud: do not switch"
    )
    return (
        f"<p class='decision'><b>{_esc(decision)}.</b> {_esc(verdicts.ab_numbers(s))}. "
        '<a href="05_ab_compare.html">Full comparison</a> · terms in the '
        '<a href="glossary.html">glossary</a>.</p>'
    )


def _cutover(manifest: dict, h: dict[str, dict]) -> str:
    h06 = h.get("06_cutover")
    params = manifest.get("parameters") or {}
    rollback = f"python -m runbook run {manifest.get('params_file')} --rollback"
    if not h06:
        if manifest.get("status") == "awaiting approval":
            return "<p>Nothing was switched: the run waits for a go (above).</p>"
        return "<p>No cutover in this run: the service was not switched.</p>"
    if h06.get("dry_run"):
        return "<p>Dry run: the cutover was planned, nothing was switched.</p>"
    steps = h06.get("steps") or []
    backup = next((s.get("detail", "") for s in steps if s.get("step") == "backup"), "")
    rows = [
        ("result", _esc(verdicts.phase_line("06_cutover", h06))),
        ("approved", _esc(h06.get("approval") or params.get("approval") or "")),
        ("steps", _esc(", ".join(f"{s.get('step')} {'ok' if s.get('ok') else 'FAILED'}" for s in steps))),
        ("backup of the service settings", _esc(backup or "(none recorded)")),
    ]
    if h06.get("direction") != "rollback":
        rows.append(("to go back to the cloud", f"<code>{_esc(rollback)}</code> (restores the backup)"))
    return _kv(rows)


def _who(manifest: dict) -> str:
    git = manifest.get("git") or {}
    by = manifest.get("run_by") or {}
    return _kv(
        [
            ("run", _esc(manifest.get("run_id"))),
            ("by", _esc(f"{by.get('user', '?')} on {by.get('host', '?')}")),
            ("when", _esc(f"{manifest.get('started_at')} to {manifest.get('finished_at', '…')} (UTC)")),
            (
                "code",
                _esc(
                    f"commit {git.get('commit')}"
                    + (" (with uncommitted changes)" if git.get("dirty") else "")
                ),
            ),
            (
                "params",
                _esc(f"{manifest.get('params_file')} (sha256 {str(manifest.get('params_sha256'))[:16]}…)"),
            ),
            (
                "audit",
                "<code>python -m runbook audit " + _esc(manifest.get("run_id")) + "</code> checks every file",
            ),
        ]
    )


def _glance(manifest: dict, h: dict[str, dict]) -> str:
    """Four lines: what moved from where to where, the decision, the cutover."""
    h01, src = h.get("01_extract") or {}, (h.get("00_preflight") or {}).get("source") or {}
    dest, newer = _destination(h)
    docs = verdicts.number(h01.get("total_documents") or src.get("documents"))
    chunks = verdicts.number(h01.get("total_chunks") or src.get("estimated chunks"))
    origin = (
        "the local LlamaCloud-compatible server (rehearsal)" if manifest.get("emulator") else "LlamaCloud"
    )
    h06 = h.get("06_cutover") or {}
    if h06 and not h06.get("dry_run"):
        cut = verdicts.phase_line("06_cutover", h06)
    elif manifest.get("status") == "awaiting approval":
        cut = "not yet: waiting for a person's go"
    else:
        cut = "not in this run"
    return _kv(
        [
            (
                "migrated",
                _esc(
                    f"index {h01.get('index_name') or src.get('index', '?')}: {docs} documents, {chunks} chunks"
                ),
            ),
            (
                "from",
                _esc(
                    f"LlamaCloud index {src.get('index', '?')} (project {src.get('project', '?')}), read from {origin}"
                ),
            ),
            (
                "to",
                _esc(
                    f"ChromaDB on this server's disk, collection {dest.get('collection', '(not created yet)')}"
                    + _newer_note(newer)
                ),
            ),
            ("decision", _decision_line(h)),
            ("cutover", _esc(cut)),
        ]
    )


def _decision_line(h: dict[str, dict]) -> str:
    h05 = h.get("05_ab_compare")
    if not h05:
        return "no A/B comparison in this run"
    if h05.get("dry_run"):
        return "dry run: planned, not compared"
    verdict = "may replace the cloud" if h05.get("passed") else "must NOT replace the cloud"
    return _esc(f"the local copy {verdict}: {verdicts.ab_numbers(h05.get('summary') or {})}")


def write_summary(run_dir: Path, manifest: dict) -> Path:
    h = handoffs(run_dir)
    kind = _kind(manifest)
    body = (
        f"<h1>Migration run {_esc(manifest.get('run_id'))} — {_esc(kind)}</h1>"
        f"{_glance(manifest, h)}"
        f"<h2>Decision</h2>{_ab(h)}"
        f"<h2>Cutover and how to go back</h2>{_cutover(manifest, h)}"
        f"<h2>Each phase</h2>{_phases(manifest)}"
        f"<h2>What was migrated</h2>{_what(h)}"
        f"<h2>From where to where, exactly</h2>{_where(manifest, h)}"
        f"<h2>Who, when, what</h2>{_who(manifest)}"
    )
    text = pages.page(
        f"Summary · run {manifest.get('run_id')}",
        body,
        nav={"prev": None, "next": _first_page(manifest)},
        verdict=run_verdict(manifest, h),
        banner=rehearsal_banner(manifest),
    )
    out = Path(run_dir) / "summary.html"
    atomic.write_text(out, text, mode=READABLE)
    return out


def _first_page(manifest: dict):
    phases = manifest.get("phases") or []
    if not phases:
        return None
    stem = phases[0]["notebook"]
    return (f"{stem}.html", pages.phase_title(stem))


def write_index(run_dir: Path, manifest: dict) -> Path:
    decision = manifest.get("decision") or {}
    decision_html = _kv([(k, _esc(v)) for k, v in decision.items()]) if decision else ""
    body = (
        f"<h1>Run {_esc(manifest.get('run_id'))}</h1>"
        '<p><a href="summary.html"><b>Read the summary first</b></a>.</p>'
        + (f"<h2>Go / no-go</h2>{decision_html}" if decision_html else "")
        + f"<h2>Phases</h2>{_phases(manifest, detail='detail')}"
        f"<p>Params <code>{_esc(manifest.get('params_file'))}</code> (sha256 "
        f"{_esc(str(manifest.get('params_sha256'))[:12])}…), commit "
        f"<code>{_esc((manifest.get('git') or {}).get('commit'))}</code>, status <b>{_esc(manifest.get('status'))}</b>."
        ' The record of everything: <a href="manifest.json">manifest.json</a>.</p>'
    )
    text = pages.page(
        f"Run {manifest.get('run_id')}",
        body,
        nav={"prev": ("summary.html", "Summary"), "next": _first_page(manifest)},
        verdict=run_verdict(manifest, handoffs(run_dir)),
        banner=rehearsal_banner(manifest),
    )
    out = Path(run_dir) / "index.html"
    atomic.write_text(out, text, mode=READABLE)
    return out
