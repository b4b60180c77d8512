"""Shared fixtures: the demo corpus (built once), a real local LlamaCloud-compatible server per test,
temporary base paths and run folders. Nothing here is mocked: servers and databases are real."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from runbook import source
from runbook.paths import PROJECT_ROOT
from runbook.rehearsal import cloud_emulator, corpus

API_KEY = "test-key-for-local-server"
CACHE = PROJECT_ROOT / "data" / "cache" / "embeddings.sqlite"


@pytest.fixture(scope="session")
def demo_corpus_master():
    return corpus.build_demo_corpus(CACHE)


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory, demo_corpus_master):
    """A complete, re-embedded export of the demo corpus (built once per test session)."""
    from runbook import embeddings, extract, reembed

    key = "session-export-key-1234"
    root = tmp_path_factory.mktemp("exports")
    with cloud_emulator.EmulatorServer(copy.deepcopy(demo_corpus_master), key) as srv:
        os.environ["SESSION_EXPORT_KEY"] = key
        res = extract.export_index(
            source.open_source(srv.url, "SESSION_EXPORT_KEY"),
            root,
            index_name="Dr.Welno",
            shard_rows=60,
            progress=False,
        )
    reembed.apply(
        res.path,
        embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384),
        CACHE,
        progress=False,
    )
    return res.path


@pytest.fixture
def demo_corpus(demo_corpus_master):
    """A private copy: tests may change it (add, delete, edit documents)."""
    return copy.deepcopy(demo_corpus_master)


@pytest.fixture
def server(demo_corpus):
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY) as srv:
        yield srv


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", API_KEY)
    return "LLAMA_CLOUD_API_KEY"


@pytest.fixture
def src(server, key_env):
    return source.open_source(server.url, key_env, max_retries=8)


@pytest.fixture
def outputs(tmp_path, monkeypatch) -> Path:
    out = tmp_path / "outputs"
    monkeypatch.setenv("RUNBOOK_OUTPUTS", str(out))
    return out


@pytest.fixture(autouse=True)
def _forget_remembered_secrets():
    """Secret values a test's process read stay with that test: a later test's text is not masked by them
    (the order of tests must not change what they see)."""
    from runbook import credentials

    before = set(credentials._known_values)
    yield
    credentials._known_values.clear()
    credentials._known_values.update(before)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # loopback only: never route test traffic through a proxy
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield


def synthetic_export(syn, root: Path, shard_rows: int | None = None, key_env: str = "SYNTHETIC_EXPORT_KEY"):
    """Export the synthetic corpus ``syn`` (vectors served) through a real local server into ``root``;
    returns the export's folder."""
    from runbook import extract

    key = f"{key_env.lower()}-123456"
    os.environ[key_env] = key
    with cloud_emulator.EmulatorServer(syn, key, serve_embeddings=True) as srv:
        return extract.export_index(
            source.open_source(srv.url, key_env),
            root,
            index_name=syn.pipeline["name"],
            progress=False,
            **({"shard_rows": shard_rows} if shard_rows else {}),
        ).path


def write_params(tmp_path: Path, **overrides) -> Path:
    """A params file (YAML) for a test run under tmp_path."""
    import yaml

    params = {
        "base_path": str(tmp_path / "base"),
        "emulator_corpus": "demo",
        "index_name": "Dr.Welno",
        "expected_chunks": 300,
        "embedding_dimension": 384,
        "embedding_cache": str(CACHE),
        "verify_sample": 20,
    }
    params.update(overrides)
    p = tmp_path / "test-params.yaml"
    p.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return p


@dataclass
class Executed:
    """A notebook executed by :func:`run_notebook`: the notebook's JSON and its outputs as one text."""

    nb: dict
    text: str


def run_notebook(stem: str, out_dir: Path, **parameters) -> Executed:
    """Execute the project notebook ``stem`` (``NN_name``) as plain papermill does, with the runbook kernel
    and the notebooks folder as its working directory; the executed copy goes to ``out_dir``."""
    import json

    import papermill

    from runbook import kernels
    from runbook.paths import NOTEBOOKS_DIR

    out = Path(out_dir) / f"{stem}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / f"{stem}.ipynb"),
        str(out),
        parameters=parameters,
        kernel_name=kernels.ensure_kernel(),
        cwd=str(NOTEBOOKS_DIR),
        progress_bar=False,
    )
    nb = json.loads(out.read_text(encoding="utf-8"))
    return Executed(nb, json.dumps([c.get("outputs", []) for c in nb["cells"]], ensure_ascii=False))


os.environ.setdefault("RUNBOOK_HEADLESS", "1")
# tests that load the offline models themselves (not through the library) stay off the model hub too
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
