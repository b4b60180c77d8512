"""Each phase's verdict in one line, from what the runner recorded and the phase's own hand-off.

The same line opens the phase's page (verdict first) and fills the summary page's phase table, so the two
can never disagree. A verdict is ``{"status", "reason", "todo"}``; status is one of ``PASS``, ``FAIL``,
``DRY RUN``, ``INTERRUPTED``, ``AWAITING APPROVAL``, ``NOT RUN``.
"""

from __future__ import annotations

import re

PASS, FAIL, DRY_RUN, INTERRUPTED, AWAITING, NOT_RUN = (
    "PASS",
    "FAIL",
    "DRY RUN",
    "INTERRUPTED",
    "AWAITING APPROVAL",
    "NOT RUN",
)


def number(v, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000 or digits == 0:
            return f"{v:,.0f}"
        text = f"{v:,.{digits}f}".rstrip("0")
        return text + "0" if text.endswith(".") else text  # 1.0, 0.96, 50.4
    return str(v)


def metric(summary: dict, side: str, name: str):
    """``summary["local hit@5 (labels)"]`` whatever k is: the first key of ``side`` naming ``name``."""
    for key, value in (summary or {}).items():
        if key.startswith(side + " ") and name in key:
            return value
    return None


def _error_parts(error: str) -> tuple[str, str]:
    """(what happened, what to do first) from a runner error line ``cell N (...): Kind: message``."""
    text = re.sub(r"^cell \d+ \(execution count [^)]*\): ", "", error or "").strip()
    text = re.sub(r"^[A-Za-z_.]+(Error|Failed|Exception|Interrupt)\w*: ", "", text)
    lines = [ln.strip(" -") for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "the phase stopped", "open the phase's page for the details"
    first = lines[0]
    rest = " ".join(lines[1:])
    if first.endswith(":") and rest:  # "2 check(s) failed:" and the list of them: the list is the reason
        return f"{first} {rest}", (
            "the red rows of the phase's check table say what failed and how to fix it; then run the phase again"
        )
    todo = ""
    m = re.search(
        r"[:;] ((?:run|set|free|stop|remove|check|fix|delete|start|give|raise|use|wait)\b.*)$", first
    )
    if m:
        todo, first = m.group(1), first[: m.start()]
    elif rest:
        todo = rest
    return first, todo or "read the message above; the phase's page has the details"


def phase_line(stem: str, h: dict) -> str:
    """What the phase did, in one sentence, from its hand-off."""
    phase = stem[:2]
    if phase == "00":
        src = h.get("source") or {}
        disk = h.get("disk") or {}
        return (
            f"source index {src.get('index')} reachable with {number(src.get('documents'))} documents; "
            f"disk after the migration {number(disk.get('projected use %'), 1)}% used "
            f"(limit {number(disk.get('limit %'), 0)}%)"
        )
    if phase == "01":
        return (
            f"exported {number(h.get('total_documents'))} documents, {number(h.get('total_chunks'))} chunks "
            f"({h.get('embedding_model')}, {h.get('embedding_dimension')} dimensions), checksummed"
        )
    if phase == "02":
        return f"collection {h.get('collection')} {h.get('status', '')}".strip()
    if phase == "03":
        return (
            f"loaded {number(h.get('count'))} chunks into {h.get('collection')}; verified "
            f"(recall@10 {number(h.get('recall@10'))} at ef_search {h.get('ef_search')})"
        )
    if phase == "04":
        return (
            f"service settings prepared for {h.get('collection')} "
            f"({h.get('retrieval_mode') or 'local dense'}); nothing switched yet"
        )
    if phase == "05":
        s = h.get("summary") or {}
        verdict = (
            "answers as well as the cloud" if h.get("passed") else "does NOT answer as well as the cloud"
        )
        return f"the local index {verdict}: {ab_numbers(s)}"
    if phase == "06":
        if h.get("direction") == "rollback":
            return "rolled back: the service reads the cloud index again"
        return f"switched: the service now reads the local index {h.get('collection')}"
    if phase == "07":
        if not h.get("changed"):
            return "no document changed: nothing to update"
        return f"updated into {h.get('collection')} ({number(h.get('count'))} chunks); {h.get('next', '')}".rstrip(
            "; "
        )
    if phase == "08":
        return h.get("verdict_line") or "service probed"
    return "done"


def ab_numbers(summary: dict) -> str:
    """The A/B decision's three key numbers, local vs cloud."""
    parts = []
    for label, name, digits, unit in (
        ("hit rate", "hit@", 2, ""),
        ("MRR", "MRR", 2, ""),
        ("p95 latency", "best-run latency p95", 0, " ms"),
    ):
        local, cloud = metric(summary, "local", name), metric(summary, "cloud", name)
        if local is None or cloud is None:
            continue
        if unit:
            parts.append(f"{label} {local:,.0f}{unit} vs {cloud:,.0f}{unit}")
        else:
            parts.append(f"{label} {local:.{digits}f} vs {cloud:.{digits}f}")
    return ", ".join(parts) + (" (local vs cloud)" if parts else "no figures recorded")


def phase_verdict(stem: str, entry: dict, handoff: dict | None) -> dict:
    """The verdict of one phase: the runner's status first, then the hand-off's facts."""
    status = entry.get("status")
    if status in ("failed",):
        reason, todo = _error_parts(entry.get("error", ""))
        return {"status": FAIL, "reason": reason, "todo": todo}
    if status == "interrupted":
        return {
            "status": INTERRUPTED,
            "reason": entry.get("error") or "stopped by a signal",
            "todo": "run the phase again: every write of the runbook resumes",
        }
    if status in ("pending", "running", "prepared", None):
        return {"status": NOT_RUN, "reason": f"not executed ({status or 'pending'})", "todo": ""}
    h = handoff or {}
    if h.get("dry_run"):
        return {
            "status": DRY_RUN,
            "reason": "nothing was written or switched; " + _safe_line(stem, h),
            "todo": "",
        }
    if not h:
        return {"status": PASS, "reason": "the phase ran to its end", "todo": ""}
    return {"status": PASS, "reason": _safe_line(stem, h), "todo": ""}


def _safe_line(stem: str, h: dict) -> str:
    try:
        return phase_line(stem, h)
    except (TypeError, ValueError, KeyError, AttributeError):  # an older or partial record: say less
        return "the phase ran to its end"
