"""Parameters: one loader for the params files and the notebooks' ``parameters`` cells.

A params file is a flat YAML mapping of parameter names to values, merged over the shared defaults in
``runbook_params/defaults.yaml`` -- so plain papermill works too:
``papermill nb.ipynb out.ipynb -f runbook_params/defaults.yaml -f runbook_params/demo.yaml``.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

import yaml

from .errors import RunbookError
from .paths import PARAMS_DIR, resolve

DEFAULTS_FILE = PARAMS_DIR / "defaults.yaml"
# set by the runner for every notebook; never written in a params file
RUNNER_PARAMETERS = ("run_dir",)


class ParameterError(RunbookError, ValueError):
    pass


_WHAT_TO_PUT = (
    "put the parameters of this migration in it, one 'name: value' per line -- at least base_path and the "
    "source (index_name or index_id; emulator_corpus: demo for a rehearsal); runbook_params/demo.yaml and "
    "runbook_params/welno.yaml are examples, and each notebook's parameters cell lists what it takes"
)


def _read_yaml(path: Path, required: bool = False) -> dict:
    """The mapping in a params file. ``required``: a file with no parameters (empty, only comments) is an
    error, not "the defaults" -- the defaults alone would run a real migration under a made-up base path."""
    if not path.exists():
        raise ParameterError(f"params file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ParameterError(
            f"{path}: cannot read the params file: not UTF-8 text ({e.reason}); save it as UTF-8 and "
            + _WHAT_TO_PUT
        ) from None
    except OSError as e:
        raise ParameterError(
            f"{path}: cannot read the params file ({e.strerror or e}): make it readable and " + _WHAT_TO_PUT
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParameterError(f"{path}: not valid YAML: {e}") from None
    if data is None or data == {}:
        if required:
            raise ParameterError(
                f"{path}: the params file holds no parameters (it is empty or only comments); {_WHAT_TO_PUT}"
            )
        return {}
    if not isinstance(data, dict):
        raise ParameterError(
            f"{path}: must be a mapping of parameter names to values, not a {type(data).__name__}; {_WHAT_TO_PUT}"
        )
    return data


def load_defaults() -> dict:
    return dict(_read_yaml(DEFAULTS_FILE)) if DEFAULTS_FILE.exists() else {}


def load_params(path: str | Path) -> dict:
    """Shared defaults, then the params file over them. A params file must set something: refused
    empty (or only comments), unreadable or not a mapping before anything is created."""
    path = resolve(path)
    if path.is_dir():
        raise ParameterError(f"{path}: is a folder, not a params file; {_WHAT_TO_PUT}")
    params = load_defaults() if path != DEFAULTS_FILE else {}
    own = _read_yaml(path, required=True)
    for name in RUNNER_PARAMETERS:
        if name in own:
            raise ParameterError(f"{path}: {name} is set by the runner; remove it from the params file")
    params.update(own)
    return params


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def notebook_parameters(nb_path: str | Path) -> dict[str, dict]:
    """The names, types, defaults and help of a notebook's ``parameters`` cell (papermill's inspection)."""
    import papermill

    return papermill.inspect_notebook(str(nb_path))


def split_by_notebook(params: dict, declared: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """For each notebook, the params it declares. A name no notebook declares is an error (a typo),
    except a shared default that these notebooks do not use."""
    known = set().union(*(set(d) for d in declared.values())) if declared else set()
    defaults = load_defaults()
    unknown = sorted(k for k in set(params) - known if not (k in defaults and params[k] == defaults[k]))
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            lines.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ParameterError(
            "unknown parameter(s), declared by no notebook of this run: "
            + ", ".join(lines)
            + ". Fix the name in the params file; each notebook's parameters cell lists what it takes."
        )
    return {nb: {k: v for k, v in params.items() if k in decl} for nb, decl in declared.items()}


def parameters_for(
    params_path: str | Path, phase: str, notebooks_dir: Path | None = None
) -> tuple[Path, dict]:
    """One notebook's parameters from a params file (the shared defaults under it), for plain papermill:
    ``python -m runbook params <params file> <NN>`` writes them, so ``papermill -f`` gets only names the
    notebook declares (no "Passed unknown parameter" warnings) and a misspelt name still stops here, with a
    suggestion, exactly as in the runner. Returns the notebook's path and its parameters."""
    from . import credentials
    from .params import check_params
    from .paths import NOTEBOOKS_DIR

    notebooks = sorted((notebooks_dir or NOTEBOOKS_DIR).glob("[0-9][0-9]_*.ipynb"))
    wanted = [p for p in notebooks if p.name[:2] == str(phase).zfill(2) or p.stem == phase]
    if len(wanted) != 1:
        raise ParameterError(
            f"no phase {phase!r}: the phases are {', '.join(p.stem for p in notebooks)} (give NN or the name)"
        )
    params = load_params(params_path)
    credentials.check_parameters(params)
    declared = {p.stem: notebook_parameters(p) for p in notebooks}
    per_nb = split_by_notebook(params, declared)
    check_params(params, declared, source=str(resolve(params_path)))
    return wanted[0], per_nb[wanted[0].stem]
