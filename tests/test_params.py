"""Parameters are checked before anything runs: their types (as the notebooks declare them), and the params
file itself (a file with nothing in it is refused, not read as "the defaults")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from runbook import cli, config, kernels, params, runner
from runbook.paths import NOTEBOOKS_DIR, PARAMS_DIR, PROJECT_ROOT

from .conftest import write_params

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
ALL_STEMS = [p.stem for p in NOTEBOOKS]
PROJECT_DRY_RUN = PROJECT_ROOT / "data" / "dry-run"  # the notebooks' default base_path


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def _cells(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    first = next(c for c in cells[i + 1 :] if c["cell_type"] == "code")
    return "".join(cells[i]["source"]), "".join(first["source"])


# ---- the rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_name, good, bad",
    [
        ("bool", [True, False], ["false", "true", 0, 1, None, "no"]),
        ("int", [0, 300, -1], [True, False, "300", "three hundred", 3.0, 3.5, None]),
        ("float", [0, 3, 0.99, -1.5], [True, "0.99", None]),
        ("str", ["", "demo", "건강검진/가이드"], [3, 3.5, True, None, ["a"]]),
        ("list", [[], ["a", 1]], ["a", {}, None]),
        ("dict", [{}, {"a": 1}], [[], "a", None]),
    ],
)
def test_type_rules(type_name, good, bad):
    assert all(params.accepts(type_name, v) for v in good)
    assert not any(params.accepts(type_name, v) for v in bad), [
        v for v in bad if params.accepts(type_name, v)
    ]


def test_every_notebook_checks_its_types_first_after_the_parameters_cell():
    for path in NOTEBOOKS:
        _, first = _cells(path)
        code = [ln for ln in first.splitlines() if ln.strip()]
        assert code[:2] == [
            "from runbook.params import check_types",
            "check_types(globals())  # parameter types, before anything runs",
        ], path.name


def test_a_name_has_one_type_in_every_notebook_that_declares_it():
    types: dict[str, set] = {}
    for path in NOTEBOOKS:
        for name, d in config.notebook_parameters(path).items():
            types.setdefault(name, set()).add(d["inferred_type_name"])
            assert params.type_name(d["inferred_type_name"]), f"{path.name}: {name} has an unchecked type"
    assert {n: t for n, t in types.items() if len(t) > 1} == {}


def test_shipped_params_files_and_the_notebooks_defaults_pass():
    declared = {p.stem: config.notebook_parameters(p) for p in NOTEBOOKS}
    for f in sorted(PARAMS_DIR.glob("*.yaml")):
        params.check_params(config.load_params(f), declared, source=f.name)
    for path in NOTEBOOKS:  # the parameters cell alone, then with the defaults injected as papermill does
        src, first = _cells(path)
        ns: dict = {}
        exec(src, ns)
        params.check_types(ns)
        for name, value in config.load_defaults().items():
            if name in ns:
                ns[name] = value
        exec(first.split("\n\n")[0] + "\ncheck_types(globals())", ns)


# ---- the runner ------------------------------------------------------------------------------------------


def test_runner_refuses_a_wrong_type_before_anything_runs(tmp_path, outputs, capsys):
    before = _tree(PROJECT_DRY_RUN)
    p = write_params(tmp_path, expected_chunks="three hundred", load_batch_size=True, index_name=123)
    with pytest.raises(config.ParameterError) as e:
        runner.run(p)
    msg = str(e.value)
    assert str(p) in msg and "nothing was run" in msg
    assert (
        "expected_chunks must be int (a whole number, without quotes), as declared by 00_preflight; "
        'the value given is "three hundred" (a string)' in msg
    )
    assert (
        "load_batch_size must be int" in msg
        and "00_preflight, 03_migrate" in msg
        and "true (a boolean)" in msg
    )
    assert "index_name must be str" in msg and 'write index_name: "123"' in msg
    assert not outputs.exists() and not (tmp_path / "base").exists() and _tree(PROJECT_DRY_RUN) == before
    assert cli.main(["run", str(p)]) == 2
    out = capsys.readouterr()
    assert "three hundred" in out.err and "run complete" not in out.out


def test_quoted_false_is_not_a_boolean_and_runs_nothing(tmp_path, outputs, capsys):
    """``dry_run: "false"`` used to run every phase as a dry run, write nothing, and say "run complete"."""
    p = write_params(tmp_path, dry_run="false", expected_chunks="삼백")
    with pytest.raises(config.ParameterError) as e:
        runner.run(p)
    msg = str(e.value)
    assert (
        f"dry_run must be bool (true or false, without quotes), as declared by {', '.join(ALL_STEMS)}" in msg
    )
    assert 'the value given is "false" (a string): write dry_run: false in the params file' in msg
    assert '"삼백" (a string)' in msg  # Korean passes through unchanged
    assert not outputs.exists() and not (tmp_path / "base").exists()
    assert cli.main(["run", str(p)]) == 2
    out = capsys.readouterr()
    assert "dry_run must be bool" in out.err and "run complete" not in out.out


# ---- plain papermill -------------------------------------------------------------------------------------


def test_check_types_in_the_kernel_namespace_names_everything_and_hides_secrets(monkeypatch):
    monkeypatch.setenv("SOME_API_KEY", "a-secret-value-0123456789")
    ns = {
        "__annotations__": {"dry_run": bool, "top_k": int, "min_recall": float, "index_name": str, "x": list},
        "dry_run": "False",
        "top_k": "sk-proj-abcdefghijklmnop0123456789",
        "min_recall": 1,  # an int is a float
        "index_name": "건강검진",
        "x": "a-secret-value-0123456789",
    }
    with pytest.raises(config.ParameterError) as e:
        params.check_types(ns)
    msg = str(e.value)
    assert "this phase stopped before doing anything" in msg
    assert "dry_run must be bool" in msg and "write dry_run: false" in msg and "08_monitor" in msg
    assert "top_k must be int" in msg and "04_rag_service, 05_ab_compare" in msg
    assert "sk-proj" not in msg and "a-secret-value" not in msg and msg.count("looks like a secret") == 2
    assert "min_recall" not in msg and "index_name" not in msg


def test_plain_papermill_stops_in_the_first_cell_naming_the_parameter(tmp_path):
    """``papermill nb.ipynb out.ipynb -f runbook_params/defaults.yaml -f x.yaml``: the notebook stops right
    after the injected parameters, before the layout is created."""
    kernels.ensure_kernel()
    base = tmp_path / "base"
    bad = tmp_path / "x.yaml"
    bad.write_text(
        yaml.safe_dump({"base_path": str(base), "expected_chunks": "three hundred", "dry_run": "false"}),
        encoding="utf-8",
    )
    out = tmp_path / "out.ipynb"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(NOTEBOOKS_DIR / "00_preflight.ipynb"),
            str(out),
            "-f",
            str(PARAMS_DIR / "defaults.yaml"),
            "-f",
            str(bad),
            "--cwd",
            str(NOTEBOOKS_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0
    assert "ParameterError" in r.stderr
    assert "expected_chunks must be int" in r.stderr and "as declared by 00_preflight" in r.stderr
    assert "dry_run must be bool" in r.stderr and "write dry_run: false" in r.stderr
    cells = [c for c in json.loads(out.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c["metadata"].get("tags", []))
    failed = [i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c["outputs"])]
    assert failed == [injected + 1]  # the first code cell after the parameters
    assert all(c.get("execution_count") is None for c in cells[injected + 2 :])  # nothing else ran
    assert not base.exists()


def test_each_notebook_refuses_a_quoted_boolean_in_its_first_cell():
    """What papermill does, without a kernel per notebook: the parameters cell, the injected values, then the
    first lines of the next cell."""
    for path in NOTEBOOKS:
        src, first = _cells(path)
        ns: dict = {}
        exec(src, ns)
        exec('dry_run = "false"' if "dry_run" in ns else 'base_path = ["data"]', ns)
        with pytest.raises(config.ParameterError, match=path.stem):
            exec(first.split("\n\n")[0] + "\ncheck_types(globals())", ns)


# ---- the params file itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "holds no parameters"),
        (b"\n# just a comment\n#base_path: /data/x\n", "holds no parameters"),
        (b"{}\n", "holds no parameters"),
        (b"- base_path\n- demo\n", "must be a mapping of parameter names to values, not a list"),
        (b"base_path /data/x\n", "must be a mapping of parameter names to values, not a str"),
        (b"\xff\xfebase_path: x\n", "cannot read the params file: not UTF-8"),
        (None, "is a folder, not a params file"),
    ],
    ids=["empty", "only-comments", "empty-mapping", "list", "text", "not-utf8", "folder"],
)
def test_an_empty_or_unreadable_params_file_is_refused_before_anything_is_written(
    tmp_path, outputs, capsys, content, says
):
    before = _tree(PROJECT_DRY_RUN)
    p = tmp_path / "params.yaml"
    if content is None:
        p.mkdir()
    else:
        p.write_bytes(content)
    with pytest.raises(config.ParameterError) as e:
        runner.run(p)
    msg = str(e.value)
    assert str(p) in msg and says in msg
    assert "base_path" in msg and "runbook_params/demo.yaml" in msg  # what to put in it
    assert cli.main(["run", str(p)]) == 2
    assert says in capsys.readouterr().err
    # nothing written: no run folder, no layout, no migration.log in the project's default base path
    assert not outputs.exists()
    assert _tree(PROJECT_DRY_RUN) == before


def test_a_word_outside_a_parameters_choices_is_refused_before_anything_runs(tmp_path, outputs):
    """empty_texts: drop used to pass the runner and stop phase 01 only after the whole export and its
    re-embedding."""
    p = write_params(tmp_path, empty_texts="drop", duplicate_chunk_ids="rename")
    with pytest.raises(config.ParameterError) as e:
        runner.run(p)
    msg = str(e.value)
    assert 'empty_texts must be one of load, skip; the value given is "drop"' in msg
    assert "duplicate_chunk_ids must be one of qualify, refuse" in msg and "nothing was run" in msg
    assert not outputs.exists() and not (tmp_path / "base").exists()
    ns = {"__annotations__": {"empty_texts": str}, "empty_texts": "drop"}
    with pytest.raises(config.ParameterError, match="empty_texts must be one of load, skip"):
        params.check_types(ns, "03_migrate")


def test_a_number_below_its_least_value_is_refused_before_anything_runs(tmp_path, outputs):
    """latency_repetitions: 0 used to pass the runner and stop phase 05 only after phases 00-04."""
    p = write_params(tmp_path, latency_repetitions=0, gate_latency_margin=-0.1)
    with pytest.raises(config.ParameterError) as e:
        runner.run(p)
    msg = str(e.value)
    assert "latency_repetitions must be at least 1; the value given is 0" in msg
    assert (
        "gate_latency_margin must be at least 0; the value given is -0.1" in msg and "nothing was run" in msg
    )
    assert not outputs.exists()
    ns = {"__annotations__": {"latency_repetitions": int}, "latency_repetitions": 0}
    with pytest.raises(config.ParameterError, match="latency_repetitions must be at least 1"):
        params.check_types(ns, "05_ab_compare")
    params.check_types({"__annotations__": {"latency_repetitions": int}, "latency_repetitions": 1})


def test_params_command_writes_one_notebooks_parameters_and_stops_on_a_typo(tmp_path, capsys):
    """``python -m runbook params <file> NN``: only what that notebook declares (papermill then warns about
    nothing), the params file over the defaults, and a misspelt name refused with a suggestion."""
    out = tmp_path / "03.yaml"
    assert cli.main(["params", str(PARAMS_DIR / "demo.yaml"), "03", "-o", str(out)]) == 0
    values = yaml.safe_load(out.read_text(encoding="utf-8"))
    declared = config.notebook_parameters(NOTEBOOKS_DIR / "03_migrate.ipynb")
    demo = config.load_params(PARAMS_DIR / "demo.yaml")
    assert values and set(values) <= set(declared)
    assert values == {k: v for k, v in demo.items() if k in declared}
    assert "run_dir" not in values and "source_api_key_env" not in values  # 03 does not take it
    assert cli.main(["params", str(PARAMS_DIR / "demo.yaml"), "05_ab_compare"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["gate_latency_margin"] == 9.0  # 05 takes it, 03 does not
    assert "gate_latency_margin" not in values
    typo = tmp_path / "typo.yaml"
    typo.write_text("base_path: data/x\ncolection_name: x\n", encoding="utf-8")
    assert cli.main(["params", str(typo), "03"]) == 2
    assert "colection_name (did you mean collection_name?)" in capsys.readouterr().err
    assert cli.main(["params", str(PARAMS_DIR / "demo.yaml"), "42"]) == 2
