"""One log for all phases: ``<base>/logs/migration.log``, appended, secrets scrubbed."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from . import credentials


def log(layout, phase: str, message: str, **fields) -> str:
    """Append one line ``<UTC time> [phase] message {fields}`` to the migration log and return it."""
    ts = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    extra = (" " + json.dumps(fields, ensure_ascii=False, default=str)) if fields else ""
    # values this process read, and those of secret-named variables a library may have read by itself
    line = credentials.scrub(f"{ts} [{phase}] {message}{extra}", credentials.secret_env_values())
    path: Path = layout.migration_log
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return line
