"""Importing the library changes nothing in the importing process: a backend that imports runbook.rag_switch
keeps its environment. The offline model settings come with loading a local model."""

import json
import subprocess
import sys

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
