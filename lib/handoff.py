"""Hand-off between phases: each phase records its key results; later phases read them.

The record is written twice, atomically: ``<base>/state/handoff/<phase>.json`` (the migration's latest
state, what later phases read) and ``<run_dir>/handoff/<phase>.json`` (the run's audit copy).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from . import atomic
from .paths import Layout, resolve


class MissingHandoffError(RuntimeError):
    pass


def record(phase: str, data: dict, *, base_path: str, run_dir: str = "") -> dict:
    rec = {"phase": phase, "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **data}
    layout = Layout.from_params(base_path)
    atomic.write_json(layout.state / "handoff" / f"{phase}.json", rec)
    if run_dir:
        atomic.write_json(resolve(run_dir) / "handoff" / f"{phase}.json", rec)
    return rec


def read(phase: str, *, base_path: str) -> dict:
    path: Path = Layout.from_params(base_path).state / "handoff" / f"{phase}.json"
    if not path.exists():
        raise MissingHandoffError(
            f"no hand-off from phase {phase} under {path.parent}: run phase {phase} first "
            f"(python -m runbook run <params> --only {phase.split('_')[0]})"
        )
    return atomic.read_json(path)


def read_optional(phase: str, *, base_path: str) -> dict | None:
    try:
        return read(phase, base_path=base_path)
    except MissingHandoffError:
        return None
