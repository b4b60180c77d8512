"""The human go a cutover needs: ``--approve <run id>`` names a run whose phase 05 passed its gates for the
collection and export verified now. The runner checks it before phase 06 runs, and phase 06 checks it again
(plain papermill and JupyterLab bypass the runner)."""

from __future__ import annotations

import datetime as dt
import json
import os

from . import config
from .paths import outputs_root, resolve


def check_approval(run_id: str, params: dict) -> str:
    """A go is valid for a run whose phase 05 passed for the collection and export verified now."""
    import getpass

    from . import handoff

    run_dir = outputs_root() / run_id
    if not run_id or "/" in run_id or not (run_dir / "manifest.json").exists():
        raise config.ParameterError(f"--approve {run_id}: no such run under {outputs_root()}")
    m = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    rec = run_dir / "handoff" / "05_ab_compare.json"
    if not rec.exists():
        raise config.ParameterError(f"--approve {run_id}: that run has no phase 05 record to approve")
    h05 = json.loads(rec.read_text(encoding="utf-8"))
    if h05.get("dry_run"):
        raise config.ParameterError(f"--approve {run_id}: that run was a dry run")
    if h05.get("passed") is not True:
        raise config.ParameterError(f"--approve {run_id}: phase 05 of that run did not pass its gates")
    if not (h05.get("collection") and h05.get("export_manifest_sha256")):
        raise config.ParameterError(f"--approve {run_id}: that run's phase 05 names no collection or export")
    if resolve(str(m["parameters"].get("base_path", ""))) != resolve(str(params.get("base_path", ""))):
        raise config.ParameterError(
            f"--approve {run_id}: that run migrated {m['parameters'].get('base_path')}, "
            f"these params {params.get('base_path')}"
        )
    try:
        v = handoff.verified_collection(base_path=params["base_path"])
    except handoff.MissingHandoffError as e:
        raise config.ParameterError(f"--approve {run_id}: {e}") from None
    diffs = [
        f"{what}: approved {h05.get(key)}, now {v.get(key)}"
        for what, key in (("collection", "collection"), ("export sha256", "export_manifest_sha256"))
        if h05.get(key) != v.get(key)
    ]
    if diffs:
        raise config.ParameterError(
            f"--approve {run_id}: that run's phase 05 was for something else than what is verified now ("
            + "; ".join(diffs)
            + "): run phase 05 again and approve that run"
        )
    who = os.environ.get("SUDO_USER") or getpass.getuser()
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return (
        f"--approve {run_id} by {who} at {at}: phase 05 passed for {h05['collection']} "
        f"(export {h05['export_manifest_sha256'][:12]}…)"
    )
