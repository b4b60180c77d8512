"""Every message that tells the user to set a parameter names a parameter that exists.

A message that says ``reembed: true`` when the parameter is ``reembed_all`` sends the user to write a name
the runner refuses (or, in plain papermill, one that is silently ignored). The messages are the string
literals of the library (``lib/``, read with ``ast``: messages, docstrings) and the notebooks' text
(markdown, string literals, the parameters cell's help). Two conventions mark a parameter named to be set:

- YAML style, a name and a literal value: ``allow_embedding_spend: true``, ``dry_run: false``,
  ``expected_chunks: 300``, ``emulator_corpus: "demo"`` (a one-word name with true/false only: "lists: 1"
  is prose), or any value inside backticks (a YAML snippet: ``chroma_mode: http``);
- ``set <name>`` followed by ``to``, ``in``, ``and``, ``or``, ``(``, ``:`` or the end of a phrase
  (``set index_id or index_name in the params``, ``set query_url (the backend's ...)``), where the name
  has an underscore (``set up``, ``set it`` are English) or is written ``--flag`` (the runner's options).

The name must be declared by a notebook's parameters cell, or be one of the runner's own options.
"""

from __future__ import annotations

import ast
import json
import re

from runbook import config
from runbook.paths import NOTEBOOKS_DIR, PROJECT_ROOT

LIB = PROJECT_ROOT / "lib"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))

_VALUE = r"""(?:true|false|-?\d+(?:\.\d+)?|"[^"\n]*"|'[^'\n]*')"""
_END = r"(?=[\s`),.;:\]}]|$)"
# YAML style: a lowercase name (not part of a longer word, path, attribute or option) then a literal value;
# a one-word name only with true/false (``reembed: true``): "lists: 1 for equal" is prose
YAML_STYLE = re.compile(
    rf"(?<![\w.$/-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\s*:[ \t]*{_VALUE}{_END}"
    rf"|(?<![\w.$/-])([a-z][a-z0-9]*)\s*:[ \t]*(?:true|false){_END}"
)
# a YAML snippet in backticks, any value: ``empty_texts: skip``, `chroma_mode: http`
SNIPPET_STYLE = re.compile(r"(?<!`)`{1,2}([a-z][a-z0-9_]*)\s*:[ \t]+[^`\s][^`\n]*`{1,2}(?!`)")
# "set <name> ..." telling the user what to set
SET_STYLE = re.compile(
    r"\b[Ss]et\s+`*([a-z][a-z0-9]*(?:_[a-z0-9]+)+|--[a-z][a-z0-9-]*)`*"
    r"(?=\s+(?:to|in|and|or)\b|\s*[(:,.;]|\s*$)"
)

# matches that are clearly not parameters ("<file>:<name>"); keep it empty unless a match is not meant as
# one, and say why
ALLOWED: dict[str, str] = {
    "lib/embeddings.py:provider": "the docstring of model_spec() describes its own argument ``provider``"
    " (the function's, fed from embed_provider), not a params-file name",
}


def _runner_options() -> set[str]:
    """The options of ``python -m runbook run`` (``--approve``, ``--rollback``, ...), without the dashes."""
    tree = ast.parse((LIB / "cli.py").read_text(encoding="utf-8"))
    return {
        arg.value[2:]
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
        for arg in node.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--")
    }


def _declared() -> set[str]:
    return set().union(*(set(config.notebook_parameters(p)) for p in NOTEBOOKS))


def _literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal; an f-string's placeholders become ``{...}``."""
    out = []
    nodes = list(ast.walk(ast.parse(source)))
    # the pieces of an f-string are read as one text, never one by one
    parts = {id(v) for n in nodes if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in nodes:
        if id(node) in parts:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{...}" for v in node.values)
            out.append((node.lineno, text))
    return out


def _texts() -> list[tuple[str, str]]:
    """(where, text) of every message-like text: lib's string literals, the notebooks' text."""
    texts = []
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(PROJECT_ROOT)
        texts += [(f"{rel}:{line}", s) for line, s in _literals(path.read_text(encoding="utf-8"))]
    for path in NOTEBOOKS:
        for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            src = "".join(cell["source"])
            where = f"{path.relative_to(PROJECT_ROOT)} cell {i}"
            if cell["cell_type"] != "code":
                texts.append((where, src))
                continue
            try:
                texts += [(f"{where} line {line}", s) for line, s in _literals(src)]
            except SyntaxError:  # IPython syntax: the raw text then
                texts.append((where, src))
            texts += [(where, c) for c in re.findall(r"#.*", src)]  # help comments and notes
    return texts


def mentions(text: str) -> list[tuple[str, str]]:
    """(name, the words around it) of every parameter a text tells the user to set."""
    found = {}
    for rx in (YAML_STYLE, SNIPPET_STYLE, SET_STYLE):
        for m in rx.finditer(text):
            name = next(g for g in m.groups() if g)
            start = m.start(m.lastindex or 1)
            found.setdefault(start, (name, text[max(0, m.start() - 30) : m.end() + 10].replace("\n", " ")))
    return [found[k] for k in sorted(found)]


def test_the_conventions_catch_the_usual_phrasings():
    names = [
        n
        for text in (
            "re-embed this chunk (reembed: true) or re-export",
            "set allow_embedding_spend: true (and max_embedding_cost_usd) to allow it",
            "Run with dry_run: false to build it",
            "``expected_chunks: 300``",
            'emulator_corpus: "demo"',
            "set index_id or index_name in the params",
            "set query_url (the backend's query endpoint)",
            "approve it with --approve, or set --rollback.",
            "in the params (``chroma_mode: http``)",
        )
        for n, _ in mentions(text)
    ]
    assert names == [
        "reembed",
        "allow_embedding_spend",
        "dry_run",
        "expected_chunks",
        "emulator_corpus",
        "index_id",
        "query_url",
        "--rollback",
        "chroma_mode",
    ]
    # statements, code and other tools' settings are not instructions to set a parameter
    for text in (
        "would verify and set ef_search 100 -> 200",
        "PRAGMA journal_mode=WAL",
        "set up the cache",
        "status: ok",
        "{'top_k': 5}",
        "x.dry_run: true",
        "http://host:8000/api",
        "```python\nx = 1\n```",
        "the `dict` type: a mapping",
    ):
        assert mentions(text) == [], text


def test_every_message_that_says_to_set_a_parameter_names_one_that_exists():
    known = _declared()
    options = _runner_options()
    assert {"reembed_all", "allow_embedding_spend", "dry_run"} <= known and "approve" in options
    wrong = []
    for where, text in _texts():
        for name, context in mentions(text):
            ok = name[2:] in options if name.startswith("--") else name in known
            if not ok and f"{where.split(':')[0].split(' cell')[0]}:{name}" not in ALLOWED:
                close = [n for n in sorted(known) if name in n or n in name]
                wrong.append(f"{where}: {name!r} in ...{context}... (parameters like it: {close})")
    assert not wrong, "messages naming a parameter no notebook declares:\n" + "\n".join(wrong)
