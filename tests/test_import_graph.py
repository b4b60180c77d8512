"""Production code never imports the rehearsal machinery (``runbook.rehearsal``): it reaches it only through
``runbook.plugins`` when params ask for a rehearsal, so a reader can tell which modules run in production and
a deployment without the rehearsal package runs every production path."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runbook import plugins
from runbook.paths import PROJECT_ROOT

LIB = PROJECT_ROOT / "lib"
REHEARSAL = LIB / "rehearsal"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["runbook", *parts])


def _imports(path: Path, text: str | None = None) -> list[str]:
    """Every module ``path`` imports, absolute, including imports inside functions and dynamic ones."""
    tree = ast.parse(path.read_text(encoding="utf-8") if text is None else text)
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append(mod)
            found += [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append(arg.value)
    return found


def production_modules() -> list[Path]:
    return sorted(p for p in LIB.rglob("*.py") if REHEARSAL not in p.parents)


def test_the_rehearsal_package_holds_the_stand_ins():
    names = {p.stem for p in REHEARSAL.glob("*.py")}
    assert {"cloud_emulator", "corpus", "reference_service", "service_ctl", "hooks"} <= names
    assert not {"cloud_emulator", "corpus", "rag_service", "service_ctl"} & {p.stem for p in LIB.glob("*.py")}


def test_no_production_module_imports_the_rehearsal_package():
    offenders = {
        str(p.relative_to(PROJECT_ROOT)): [m for m in _imports(p) if m.startswith("runbook.rehearsal")]
        for p in production_modules()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert len(production_modules()) > 30
    assert offenders == {}, f"production modules import the rehearsal machinery: {offenders}"


@pytest.mark.parametrize(
    "where,line",
    [
        ("cutover.py", "from .rehearsal import hooks"),
        ("cutover.py", "from . import rehearsal"),
        ("report/pages.py", "from ..rehearsal.corpus import build"),
        ("runner.py", "def f():\n    import runbook.rehearsal.cloud_emulator"),
        ("source.py", "import importlib\nimportlib.import_module('runbook.rehearsal.hooks')"),
    ],
)
def test_the_checker_sees_relative_absolute_in_function_and_dynamic_imports(where, line):
    assert any(m.startswith("runbook.rehearsal") for m in _imports(LIB / where, line))


PROBE = """
import importlib, json, sys
names = json.loads(sys.argv[1])
for n in names:
    importlib.import_module(n)
print(json.dumps({"imported": len(names), "rehearsal": sorted(m for m in sys.modules if m.startswith("runbook.rehearsal"))}))
"""


def test_importing_every_production_module_loads_no_rehearsal_module():
    names = [_module_name(p) for p in production_modules() if p.stem != "__main__"]
    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(names)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["imported"] > 30
    assert out["rehearsal"] == []


def test_the_plugin_is_found_through_its_entry_point_and_a_missing_one_is_named(monkeypatch):
    hooks = plugins.rehearsal("a test")
    assert hooks.__name__ == "runbook.rehearsal.hooks"
    for name in ("start_local_server", "ensure_local_server", "reference_backend", "stop_reference_service"):
        assert callable(getattr(hooks, name))
    monkeypatch.setattr(plugins, "entry_points", lambda **kw: [])
    with pytest.raises(plugins.PluginMissing, match="emulator_corpus needs the rehearsal machinery"):
        plugins.rehearsal("emulator_corpus")


def test_production_params_never_need_the_plugin(tmp_path):
    """welno.yaml names no emulator corpus and an external backend: nothing in its path asks for the plugin."""
    from runbook import config

    welno = config.load_params(PROJECT_ROOT / "runbook_params" / "welno.yaml")
    assert not welno.get("emulator_corpus")
    assert welno.get("service_mode", "external") == "external"
    assert json.dumps(welno).find("runbook.rehearsal") == -1
