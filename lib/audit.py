"""Tamper evidence for run folders: every file's sha256 in the manifest, and a chain of manifests.

When a run ends, the runner *seals* its folder: ``manifest.json`` lists the sha256 of every other file in
the folder (``files``). At its start, each run names the run before it for the same migration (same
``base_path``) and the sha256 of that run's ``manifest.json`` (``previous_run``). ``python -m runbook audit
<run folder>`` recomputes both and names every file that was changed, added or removed since, and every
earlier manifest of the chain that was edited, removed or never sealed.

This shows that something was changed after the fact; it does not stop a person with write access from
rewriting a whole folder and the chain after it (for that, copy the manifests' sha256 somewhere they
cannot write, e.g. the change ticket).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import sha256_file
from .paths import resolve

MANIFEST = "manifest.json"


sha256_of = sha256_file


def file_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of every regular file under the run folder but its manifest, by POSIX relative path."""
    run_dir = Path(run_dir)
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and not p.is_symlink() and p != run_dir / MANIFEST:
            out[p.relative_to(run_dir).as_posix()] = sha256_of(p)
    return out


def _same_migration(manifest: dict, base_path: str) -> bool:
    theirs = (manifest.get("parameters") or {}).get("base_path")
    if not theirs or not base_path:
        return False
    return resolve(str(theirs)) == resolve(str(base_path))


def previous_run(run_dir: Path, base_path: str) -> dict | None:
    """The latest earlier run folder beside ``run_dir`` for the same ``base_path``, with its manifest's sha256."""
    run_dir = Path(run_dir)
    for other in sorted((p for p in run_dir.parent.iterdir() if p.is_dir()), reverse=True):
        if other.name >= run_dir.name or not (other / MANIFEST).is_file():
            continue
        try:
            m = json.loads((other / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _same_migration(m, base_path):
            return {"run_id": other.name, "manifest_sha256": sha256_of(other / MANIFEST)}
    return None


def seal(run_dir: Path, manifest: dict) -> dict:
    """Record the sha256 of every file of the folder in the manifest (the runner writes it after this)."""
    manifest["files"] = file_hashes(run_dir)
    manifest["sealed"] = True
    return manifest


@dataclass
class AuditReport:
    run_dir: Path
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0
    chain: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_string(self) -> str:
        head = (
            f"audit {self.run_dir}: "
            + ("OK" if self.ok else f"FAILED ({len(self.problems)} problem(s))")
            + f"; {self.files_checked} file(s) checked; chain: {' <- '.join(self.chain) or '(none)'}"
        )
        return "\n".join([head, *(f"- {p}" for p in self.problems)])


def _read_manifest(run_dir: Path, report: AuditReport) -> dict | None:
    path = run_dir / MANIFEST
    if not path.is_file():
        report.problems.append(f"{path}: missing (not a run folder, or its manifest was removed)")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        report.problems.append(f"{path}: not valid JSON ({e}): it was edited or damaged")
        return None


def audit(run_dir: str | os.PathLike) -> AuditReport:
    """Check the files of ``run_dir`` against its manifest, then every link of the chain before it."""
    run_dir = Path(run_dir).resolve()
    report = AuditReport(run_dir)
    m = _read_manifest(run_dir, report)
    if m is None:
        return report
    if not m.get("sealed") or not isinstance(m.get("files"), dict):
        report.problems.append(
            f"{run_dir / MANIFEST}: no file list: the run never finished (killed?) or the list was removed"
        )
        return report
    listed: dict = m["files"]
    found = file_hashes(run_dir)
    report.files_checked = len(found)
    for rel in sorted(set(listed) | set(found)):
        if rel not in found:
            report.problems.append(f"{run_dir / rel}: removed (the manifest lists it)")
        elif rel not in listed:
            report.problems.append(f"{run_dir / rel}: added after the run was sealed")
        elif found[rel] != listed[rel]:
            report.problems.append(
                f"{run_dir / rel}: changed (sha256 {found[rel][:12]}…, sealed {listed[rel][:12]}…)"
            )
    _check_chain(run_dir, m, report)
    return report


def _check_chain(run_dir: Path, manifest: dict, report: AuditReport) -> None:
    report.chain.append(run_dir.name)
    seen = {run_dir.name}
    link = manifest.get("previous_run")
    while link:
        prev = run_dir.parent / str(link.get("run_id", ""))
        if not link.get("run_id") or prev.name in seen:
            report.problems.append(f"{run_dir / MANIFEST}: broken link to the previous run ({link})")
            return
        seen.add(prev.name)
        report.chain.append(prev.name)
        path = prev / MANIFEST
        if not path.is_file():
            report.problems.append(f"{path}: missing (an earlier run of this migration was removed)")
            return
        if sha256_of(path) != link.get("manifest_sha256"):
            report.problems.append(
                f"{path}: edited after the next run started (its sha256 is not the one the next run recorded)"
            )
            return
        try:
            link = json.loads(path.read_text(encoding="utf-8")).get("previous_run")
        except ValueError:
            report.problems.append(f"{path}: not valid JSON")
            return
