"""A run's folder: created new for every run (a run is immutable), its provenance (commit, packages, who ran
it), the reader's pages beside the notebooks, and the seal that ends it (``runbook.audit``)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

from . import atomic, audit
from .errors import RunbookError
from .paths import PROJECT_ROOT, outputs_root
from .report import glossary, pages, summary, verdicts


class RunFolderError(RunbookError, RuntimeError):
    """No new run folder could be made."""


PACKAGES = (
    "chromadb",
    "llama-cloud",
    "llama-index-core",
    "llama-index-vector-stores-chroma",
    "llama-index-indices-managed-llama-cloud",
    "papermill",
    "pandas",
    "plotly",
    "pyarrow",
    "numpy",
    "sentence-transformers",
    "torch",
    "jupyterlab",
)


def new_run_dir(params_name: str, root: Path | None = None) -> Path:
    root = root or outputs_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for i in range(1000):
        name = f"{stamp}-{params_name}" + (f"-{i + 1}" if i else "")
        d = root / name
        try:
            d.mkdir()  # never an existing folder: a run is immutable
            return d
        except FileExistsError:
            continue
    raise RunFolderError(f"could not create a new run folder under {root}")


def git_commit() -> dict:
    def git(*args):
        r = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def run_by() -> dict:
    """Who ran it, for the summary page: the login behind sudo if any, and the host."""
    import getpass
    import socket

    return {"user": os.environ.get("SUDO_USER") or getpass.getuser(), "host": socket.gethostname()}


def package_versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _page_nav(manifest: dict, i: int) -> dict:
    phases = manifest["phases"]

    def link(j):
        if 0 <= j < len(phases):
            stem = phases[j]["notebook"]
            return (f"{stem}.html", pages.phase_title(stem))
        return None

    return {"prev": link(i - 1) or ("summary.html", "Summary"), "next": link(i + 1)}


def render_phase(run_dir: Path, manifest: dict, i: int) -> Path | None:
    """The phase's verdict (from its status and hand-off) and its code-hidden page, verdict first."""
    entry = manifest["phases"][i]
    stem = entry["notebook"]
    rec = run_dir / "handoff" / f"{stem}.json"
    h = atomic.read_json(rec) if rec.exists() else None
    entry["verdict"] = verdicts.phase_verdict(stem, entry, h)
    nb = run_dir / f"{stem}.ipynb"
    if not nb.exists():
        return None
    return pages.render_phase_page(
        nb,
        run_dir=run_dir,
        title=f"{pages.phase_title(stem)} · run {run_dir.name}",
        nav=_page_nav(manifest, i),
        verdict=entry["verdict"],
        banner=summary.rehearsal_banner(manifest),
    )


def write_reports(run_dir: Path, manifest: dict) -> None:
    """The reader's pages beside the notebooks: summary, index, glossary and the shared assets."""
    pages.ensure_assets(run_dir)
    glossary.write_glossary(run_dir)
    summary.write_summary(run_dir, manifest)
    summary.write_index(run_dir, manifest)


def publish_modes(run_dir: Path) -> None:
    """Reports, hand-offs and the manifest readable like the notebooks papermill writes (the umask's
    mode): secrets never reach the run folder (the runner scrubs it), backups elsewhere stay owner-only."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [run_dir, *run_dir.rglob("*")]:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def changed_since(before: dict[str, str], now: dict[str, str]) -> list[str]:
    return sorted(rel for rel, sha in before.items() if now.get(rel) != sha)


def finish_folder(run_dir: Path, manifest: dict) -> None:
    """Reports, modes, then the seal: the manifest lists every file's sha256 (``python -m runbook audit``).
    A fault in the reports never costs the run its record: it is noted in the manifest, which is sealed."""
    try:
        write_reports(run_dir, manifest)
    except Exception as e:  # noqa: BLE001 - the manifest and notebooks are the record; pages are a view
        manifest["report_error"] = f"{type(e).__name__}: {e}"
    publish_modes(run_dir)
    audit.seal(run_dir, manifest)
    atomic.write_json(run_dir / "manifest.json", manifest, mode=0o666 & ~_umask())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
