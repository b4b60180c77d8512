"""Parameter types: every value must have the type its notebook's ``parameters`` cell declares.

The parameters cells are typed (``expected_chunks: int = 100000  # help: ...``). A value of another type
would fail deep in a cell (``"three hundred"``) or, worse, quietly mean something else: ``dry_run: "false"``
is a non-empty string, so a phase would run as a dry run and the run would still report success. So the
types are checked before anything runs, with one message for both ways of running:

- the runner (``python -m runbook run <params.yaml>``) calls ``check_params`` with what papermill reads from
  every notebook's parameters cell, before it creates the run folder;
- plain papermill (``papermill nb.ipynb out.ipynb -f runbook_params/defaults.yaml -f x.yaml``): the first
  code cell after the parameters cell of every notebook calls ``check_types(globals())``. The parameters
  cell's annotated assignments fill the kernel's ``__annotations__``; papermill's injected cell assigns the
  values given, without annotations.

Rules: ``bool`` takes only YAML booleans (``true``/``false``, never the string ``"false"``); ``int`` takes
whole numbers (not booleans, not strings); ``float`` takes whole or decimal numbers (not booleans); ``str``
takes strings only; ``list`` and ``dict`` take a YAML list and mapping.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import credentials
from .config import ParameterError

TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict}

_WHAT = {
    "bool": "true or false, without quotes",
    "int": "a whole number, without quotes",
    "float": "a number, without quotes",
    "str": "text",
    "list": "a YAML list, e.g. [a, b]",
    "dict": "a YAML mapping, e.g. {key: value}",
}
_GIVE = {
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
    "str": "text (in quotes if YAML would read it as something else)",
    "list": "a YAML list",
    "dict": "a YAML mapping",
}
_KIND = {
    bool: "a boolean",
    int: "a whole number",
    float: "a decimal number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "nothing (null)",
}


def type_name(annotation: object) -> str:
    """``int`` for ``int`` or ``"int"`` (an annotation object or papermill's ``inferred_type_name``); ""
    for a type this module does not check."""
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return name if name in TYPES else ""


def accepts(type_name_: str, value: object) -> bool:
    if type_name_ == "bool":
        return isinstance(value, bool)
    if type_name_ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name_ == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    expected = TYPES.get(type_name_)
    return expected is None or isinstance(value, expected)


def _shown(value: object) -> str:
    """The value as the user wrote it (Korean and other text unchanged), never a secret."""
    secrets = credentials.secret_env_values()
    if credentials.looks_like_secret_value(value) or (isinstance(value, str) and value in secrets):
        return "a value that looks like a secret (not shown)"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        return "nothing (null)"
    else:
        text = repr(value)
    text = credentials.scrub(text, secrets)
    if len(text) > 80:
        text = text[:77] + "..."
    kind = next((k for t, k in _KIND.items() if type(value) is t), type(value).__name__)
    return f"{text} ({kind})"


def _suggestion(name: str, type_name_: str, value: object) -> str:
    """What to write instead, when the value is the right one in the wrong type (``"false"``, ``"300"``)."""
    if isinstance(value, str):
        v = value.strip()
        if type_name_ == "bool" and v.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return f"{name}: {'true' if v.lower() in ('true', 'yes', 'on', '1') else 'false'}"
        if type_name_ in ("int", "float"):
            try:
                number = int(v) if type_name_ == "int" else float(v)
            except ValueError:
                return ""
            return f"{name}: {number}"
    if type_name_ == "int" and isinstance(value, float) and value.is_integer():
        return f"{name}: {int(value)}"
    if type_name_ == "str" and isinstance(value, int | float) and not isinstance(value, bool):
        return f'{name}: "{value}"'
    return ""


def problem(name: str, type_name_: str, value: object, notebooks: Iterable[str]) -> str:
    """One line naming the parameter, the notebook(s) declaring it, the type expected and the value given."""
    nbs = ", ".join(sorted(notebooks)) or "this notebook"
    hint = _suggestion(name, type_name_, value)
    fix = f"write {hint}" if hint else f"give {_GIVE[type_name_]}"
    return (
        f"{name} must be {type_name_} ({_WHAT[type_name_]}), as declared by {nbs}; "
        f"the value given is {_shown(value)}: {fix} in the params file"
    )


def _choices() -> dict[str, tuple[str, ...]]:
    """Parameters that take one of a few words: checked with the types, before anything runs."""
    from .records import DUPLICATE_ID_POLICIES, EMPTY_TEXT_POLICIES

    return {
        "empty_texts": EMPTY_TEXT_POLICIES,
        "duplicate_chunk_ids": DUPLICATE_ID_POLICIES,
        "chroma_mode": ("embedded", "http"),
        "direction": ("cutover", "rollback"),
        "local_retrieval_mode": ("match-cloud", "dense", "hybrid"),
    }


def choice_problem(name: str, value: object) -> str:
    allowed = _choices().get(name)
    if allowed is None or not isinstance(value, str) or value in allowed:
        return ""
    return f"{name} must be one of {', '.join(allowed)}; the value given is {_shown(value)}: fix it in the params file"


# numeric parameters with a least value (a repetition count of 0 would divide by nothing)
_AT_LEAST = {
    "latency_repetitions": 1,
    "gate_latency_margin": 0,
    "embed_concurrency": 1,
    "embed_rpm": 0,
    "embed_tpm": 0,
    "max_embedding_cost_usd": 0,
    "gate_label_tolerance": 0,
}


def range_problem(name: str, value: object) -> str:
    least = _AT_LEAST.get(name)
    if least is None or isinstance(value, bool) or not isinstance(value, int | float) or value >= least:
        return ""
    return f"{name} must be at least {least}; the value given is {_shown(value)}: fix it in the params file"


def _raise(problems: list[str], where: str) -> None:
    if problems:
        raise ParameterError(
            f"wrong parameter type{'s' if len(problems) > 1 else ''}{where}:\n  - " + "\n  - ".join(problems)
        )


def check_params(params: Mapping, declared: Mapping[str, Mapping[str, dict]], source: str = "") -> None:
    """The runner's check, before anything runs: ``declared`` is papermill's inspection of every notebook
    (``{notebook stem: {name: {"inferred_type_name": ...}}}``)."""
    problems = []
    for name, value in params.items():
        by_type: dict[str, list[str]] = {}
        for nb, decl in declared.items():
            t = type_name((decl.get(name) or {}).get("inferred_type_name", ""))
            if name in decl and t:
                by_type.setdefault(t, []).append(nb)
        for t, nbs in sorted(by_type.items()):
            if not accepts(t, value):
                problems.append(problem(name, t, value, nbs))
        if by_type and (p := choice_problem(name, value) or range_problem(name, value)):
            problems.append(p)
    _raise(problems, (f" in {source}" if source else "") + "; nothing was run")


def _declaring_notebooks(name: str, notebooks_dir: Path | None = None) -> list[str]:
    """The project notebooks whose parameters cell declares ``name`` (for the message only)."""
    import re

    from .paths import NOTEBOOKS_DIR

    pattern = re.compile(rf"^{re.escape(name)}\s*:", re.M)
    found = []
    for path in sorted((notebooks_dir or NOTEBOOKS_DIR).glob("[0-9][0-9]_*.ipynb")):
        try:
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        except (OSError, ValueError, KeyError):
            continue
        for c in cells:
            if "parameters" in c.get("metadata", {}).get("tags", []) and pattern.search("".join(c["source"])):
                found.append(path.stem)
    return found


def check_types(namespace: Mapping, notebook: str = "") -> None:
    """The notebooks' check (plain papermill, JupyterLab): call ``check_types(globals())`` in the first
    code cell after the parameters cell. Raises ``ParameterError`` naming every wrong value."""
    annotations = namespace.get("__annotations__") or {}
    problems = []
    for name, annotation in annotations.items():
        t = type_name(annotation)
        if not t or name not in namespace:
            continue
        value = namespace[name]
        if not accepts(t, value):
            nbs = [notebook] if notebook else _declaring_notebooks(name)
            problems.append(problem(name, t, value, nbs))
        elif p := choice_problem(name, value) or range_problem(name, value):
            problems.append(p)
    _raise(problems, "; this phase stopped before doing anything")
