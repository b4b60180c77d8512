"""Crash-safe file writes: write a temporary file beside the target, fsync, rename, fsync the folder.

A reader never sees a half-written file: either the old content or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike, mode: int | None = None):
    """Yield a temporary path in the target's folder; on success it replaces the target atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if mode is not None:
            os.chmod(tmp_path, mode)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    with atomic_path(target, mode) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str, mode: int | None = None) -> None:
    write_bytes(target, text.encode("utf-8"), mode)


def write_json(target: str | os.PathLike, obj, mode: int | None = None) -> None:
    text = json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (named in a refusal): \u escapes, read back exactly
        text = json.dumps(obj, indent=2, sort_keys=False, default=str)
    write_text(target, text + "\n", mode)


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))
