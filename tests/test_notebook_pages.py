"""Notebooks are runbook pages over the library: each code cell is a short call and a display (logic, loops
and retries live in lib/, where tests reach them), and each notebook run with nothing but its own defaults --
as a newcomer does in JupyterLab, or with plain papermill -- completes as a dry run that says so at the top,
reaches nothing and writes nothing."""

from __future__ import annotations

import json
import os
import re

import pytest

from runbook.paths import NOTEBOOKS_DIR, PROJECT_ROOT

from .conftest import run_notebook

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
MAX_LINES = 12
LOGIC = re.compile(r"^\s*(for|while|try|except)\b", re.M)


def code_cells(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for i, c in enumerate(cells):
        if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", []):
            yield i, "".join(c["source"])


def heavy_cells(path) -> list[str]:
    out = []
    for i, src in code_cells(path):
        lines = [ln for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if len(lines) > MAX_LINES or LOGIC.search(src):
            out.append(
                f"{path.name} cell {i}: {len(lines)} lines"
                + (" with a loop/try" if LOGIC.search(src) else "")
            )
    return out


def test_the_shape_check_catches_a_loop_and_a_long_cell(tmp_path):
    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "\n".join(["x = 1"] * 30)},
            {"cell_type": "code", "metadata": {}, "source": "for i in range(3):\n    print(i)"},
            {"cell_type": "code", "metadata": {}, "source": "\n".join(["f()"] * 13)},
            {"cell_type": "code", "metadata": {}, "source": "# a comment\n" * 20 + "f()"},
        ]
    }
    p = tmp_path / "99_probe.ipynb"
    p.write_text(json.dumps(nb))
    assert heavy_cells(p) == [
        "99_probe.ipynb cell 1: 2 lines with a loop/try",
        "99_probe.ipynb cell 2: 13 lines",
    ]


def test_every_code_cell_is_a_short_call_and_display():
    assert len(NOTEBOOKS) == 9
    heavy = [h for p in NOTEBOOKS for h in heavy_cells(p)]
    assert heavy == [], "notebook cells that hold logic belonging in lib/:\n" + "\n".join(heavy)


def _snapshot(root):
    return {p for p in root.rglob("*")} if root.exists() else set()


@pytest.mark.notebook_smoke
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_own_defaults_run_as_a_dry_run_that_reaches_and_writes_nothing(path, tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.endswith("_API_KEY") or name.endswith("_DSN"):
            monkeypatch.delenv(name)
    watched = [PROJECT_ROOT / "data" / "dry-run", NOTEBOOKS_DIR]
    before = [_snapshot(w) for w in watched]
    page = run_notebook(path.stem, tmp_path)  # no parameters at all
    first = next(c for c in page.nb["cells"] if c["cell_type"] == "code" and c.get("outputs"))
    assert "DRY RUN" in json.dumps(first["outputs"], ensure_ascii=False), "no DRY RUN banner at the top"
    assert "Traceback" not in page.text
    after = [_snapshot(w) for w in watched]
    assert [sorted(map(str, a - b)) for a, b in zip(after, before, strict=True)] == [[], []], (
        "a default dry run wrote files"
    )
