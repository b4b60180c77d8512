"""Where things live: the project tree, run folders, and the layout under a migration's base path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
PARAMS_DIR = PROJECT_ROOT / "runbook_params"
PACKAGE_DATA = Path(__file__).resolve().parent / "data"


def outputs_root() -> Path:
    """Root of the run folders (``outputs/``); ``RUNBOOK_OUTPUTS`` moves it (tests use a temp dir)."""
    return Path(os.environ.get("RUNBOOK_OUTPUTS") or PROJECT_ROOT / "outputs")


def resolve(path: str | os.PathLike) -> Path:
    """A path from the params: absolute as given, relative to the project root otherwise."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else PROJECT_ROOT / p


@dataclass(frozen=True)
class Layout:
    """The seed's directory layout under the base path (``/data/vector_db/welno`` in production)."""

    base: Path

    @classmethod
    def from_params(cls, base_path: str) -> Layout:
        if not base_path:
            raise ValueError("base_path is empty: set it in the params file (e.g. /data/vector_db/welno).")
        return cls(resolve(base_path))

    @property
    def chroma_db(self) -> Path:
        return self.base / "chroma_db"

    @property
    def backup(self) -> Path:
        return self.base / "backup"

    @property
    def exports(self) -> Path:
        return self.backup / "exports"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def migration_log(self) -> Path:
        return self.logs / "migration.log"

    @property
    def config_json(self) -> Path:
        return self.base / "config.json"

    @property
    def state(self) -> Path:
        """Hand-off records and checkpoints: the latest state of this migration, read by later phases."""
        return self.base / "state"

    @property
    def cache(self) -> Path:
        return self.base / "cache"

    def ensure(self) -> None:
        for d in (self.base, self.chroma_db, self.backup, self.exports, self.logs, self.state, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.backup, 0o700)
