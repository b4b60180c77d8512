"""Hand-off between phases: each phase records its key results; later phases read them.

A real record is written twice, atomically: ``<base>/state/handoff/<phase>.json`` (the migration's latest
state, what later phases read) and ``<run_dir>/handoff/<phase>.json`` (the run's audit copy).

A **dry run** touches nothing under the base path: its record (what the phase *would* do, marked
``"dry_run": true``) goes to the run folder only. Later phases of the same dry run read it there; a real
run never accepts a dry-run record (it would act on something that was never done).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from . import atomic, credentials
from .errors import RunbookError
from .paths import Layout, resolve


class MissingHandoffError(RunbookError, RuntimeError):
    pass


def record(phase: str, data: dict, *, base_path: str, run_dir: str = "", dry_run: bool = False) -> dict:
    rec = {"phase": phase, "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **data}
    # an error message quoting a key stays out of the state and the run folder
    rec = credentials.scrub_data(rec)
    if dry_run:
        rec["dry_run"] = True
        if not run_dir:
            return rec  # a dry run outside the runner: nothing to keep, nothing written
        atomic.write_json(resolve(run_dir) / "handoff" / f"{phase}.json", rec)
        return rec
    rec.pop("dry_run", None)
    layout = Layout.from_params(base_path)
    atomic.write_json(layout.state / "handoff" / f"{phase}.json", rec)
    if run_dir:
        atomic.write_json(resolve(run_dir) / "handoff" / f"{phase}.json", rec)
    return rec


def read(phase: str, *, base_path: str, run_dir: str = "", dry_run: bool = False) -> dict:
    """The latest record of ``phase``. In a dry run, this run's dry-run record comes first (what the
    earlier phase would have done), then the real state; a real run reads the real state only."""
    if dry_run and run_dir:
        p = resolve(run_dir) / "handoff" / f"{phase}.json"
        if p.exists():
            return atomic.read_json(p)
    path: Path = Layout.from_params(base_path).state / "handoff" / f"{phase}.json"
    if not path.exists():
        raise MissingHandoffError(
            f"no hand-off from phase {phase} under {path.parent}: run phase {phase} first "
            f"(python -m runbook run <params> --only {phase.split('_')[0]})"
        )
    rec = atomic.read_json(path)
    if rec.get("dry_run") and not dry_run:
        raise MissingHandoffError(
            f"the hand-off of phase {phase} at {path} is from a dry run: run phase {phase} for real first"
        )
    return rec


def read_optional(phase: str, *, base_path: str, run_dir: str = "", dry_run: bool = False) -> dict | None:
    try:
        return read(phase, base_path=base_path, run_dir=run_dir, dry_run=dry_run)
    except MissingHandoffError:
        return None


def verified_collection(*, base_path: str, run_dir: str = "", dry_run: bool = False) -> dict:
    """The collection this migration verified last: phase 03's, or the new version phase 07 built when
    that is newer. Phases 04-06 name this one collection, so the service is only ever switched to a
    collection that was verified (03/07) and compared with the cloud (05).

    Keys: ``collection``, ``count``, ``export_manifest_sha256``, ``chroma_mode``, ``chroma_path``,
    ``chroma_host``, ``chroma_port``, ``phase`` (which record it came from)."""
    h03 = read("03_migrate", base_path=base_path, run_dir=run_dir, dry_run=dry_run)
    h07 = read_optional("07_update_vectors", base_path=base_path, run_dir=run_dir, dry_run=dry_run)
    pick = h03
    if h07 and h07.get("collection") and h07.get("recorded_at", "") >= h03.get("recorded_at", ""):
        pick = h07
    keys = ("collection", "count", "export_manifest_sha256", "chroma_mode", "chroma_path", "chroma_host")
    return {**{k: pick.get(k) for k in keys}, "chroma_port": pick.get("chroma_port"), "phase": pick["phase"]}
