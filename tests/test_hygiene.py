"""Notebooks are committed clean and thin: one parameters cell, typed, each with help, no outputs."""

import ast
import json

import pytest

from runbook.paths import NOTEBOOKS_DIR

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterised(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "stored outputs"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert nb["cells"][0]["cell_type"] == "markdown" and "Roll back" in "".join(nb["cells"][0]["source"])
    src = "".join(tagged[0]["source"])
    tree = ast.parse(src)
    names = []
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign), f"untyped parameter: {ast.unparse(node)}"
        names.append(node.target.id)
    lines = [line for line in src.splitlines() if line.strip()]
    assert all("# help:" in line for line in lines), "every parameter has a '# help:' comment"
    assert "run_dir" in names and "base_path" in names
    if "dry_run" in names:
        assert "dry_run: bool = True" in src, "defaults are a safe dry run"


def test_papermill_reads_every_parameter():
    from runbook import config

    for path in NOTEBOOKS:
        declared = config.notebook_parameters(path)
        src = "".join(
            next(
                c
                for c in json.loads(path.read_text())["cells"]
                if "parameters" in c.get("metadata", {}).get("tags", [])
            )["source"]
        )
        assert len(declared) == len([ln for ln in src.splitlines() if ln.strip()]), path.name
        assert all(d["help"] for d in declared.values()), path.name


def test_every_shared_default_and_params_key_is_a_notebook_parameter():
    import yaml

    from runbook import config
    from runbook.paths import PARAMS_DIR

    known = set().union(*(set(config.notebook_parameters(p)) for p in NOTEBOOKS))
    for f in sorted(PARAMS_DIR.glob("*.yaml")):
        keys = set(yaml.safe_load(f.read_text(encoding="utf-8")) or {})
        assert keys <= known, f"{f.name}: {sorted(keys - known)}"
