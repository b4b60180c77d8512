"""Importing the library changes nothing in the importing process: a backend that imports runbook.rag_switch
keeps its environment. The offline model settings come with loading a local model."""

import json
import subprocess
import sys

import pytest

from runbook.paths import PROJECT_ROOT

PROBE = """
import importlib, json, os, pkgutil, sys
before = dict(os.environ)
import runbook
for info in pkgutil.walk_packages(runbook.__path__, "runbook."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
after_import = dict(os.environ)
from runbook import embeddings
embeddings.build(embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384))
print(json.dumps({
    "changed_by_import": sorted(k for k in set(before) | set(after_import) if before.get(k) != after_import.get(k)),
    "offline_after_load": os.environ.get("HF_HUB_OFFLINE"),
}))
"""


def test_import_changes_no_environment_variable_and_loading_a_model_goes_offline():
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.pop("TOKENIZERS_PARALLELISM", None)
    r = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["changed_by_import"] == []
    assert out["offline_after_load"] == "1"


def test_jsonschema_does_not_build_rfc3987_syntax_grammars_in_the_runbooks_processes():
    """``import runbook`` keeps jsonschema (under chromadb and papermill) from importing rfc3987_syntax, whose 38
    grammar parsers cost 3-5 s of CPU in every runner and kernel; jsonschema still validates."""
    probe = (
        "import sys, json\n{first}\nimport chromadb, papermill, jsonschema\n"
        "jsonschema.validate({{'a': 1}}, {{'type': 'object', 'properties': {{'a': {{'type': 'integer'}}}}}})\n"
        "print(json.dumps(sys.modules.get('rfc3987_syntax') is not None))"
    )

    def loaded(first: str) -> bool:
        r = subprocess.run(
            [sys.executable, "-c", probe.format(first=first)],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    if not loaded("pass"):
        pytest.skip(
            "rfc3987_syntax is not installed (jupyter-events no longer pulls it in): nothing to keep out"
        )
    assert not loaded("import runbook")
