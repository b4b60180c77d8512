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


def read(
    phase: str, *, base_path: str, run_dir: str = "", dry_run: bool = False, _optional: bool = False
) -> dict:
    """The latest record of ``phase``. In a dry run, this run's dry-run record comes first (what the
    earlier phase would have done), then the real state; a real run reads the real state only.

    A dry run with no record at all goes on: it says so in one line and gets an :func:`absent` record
    (``{"phase", "dry_run": True, "absent": True}``), so the page can still show what it would do. A real run
    stops with :class:`MissingHandoffError` naming the phase to run first."""
    if dry_run and run_dir:
        p = resolve(run_dir) / "handoff" / f"{phase}.json"
        if p.exists():
            return atomic.read_json(p)
    path: Path = Layout.from_params(base_path).state / "handoff" / f"{phase}.json"
    if not path.exists() and dry_run and not _optional:
        return absent(phase, path.parent)
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


def absent(phase: str, where: Path | str = "") -> dict:
    """The record a dry run reads when ``phase`` has not run: it prints one line saying so."""
    print(
        f"phase {phase} has not run{f' under {where}' if where else ''}: this dry run goes on without its "
        "record (a real run stops here until it has run)"
    )
    return {"phase": phase, "dry_run": True, "absent": True}


def is_absent(rec: dict | None) -> bool:
    """Whether ``rec`` stands for a phase that has not run (a dry run's :func:`absent` record, or None)."""
    return not rec or bool(rec.get("absent"))


def read_optional(phase: str, *, base_path: str, run_dir: str = "", dry_run: bool = False) -> dict | None:
    try:
        return read(phase, base_path=base_path, run_dir=run_dir, dry_run=dry_run, _optional=True)
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
