"""``emulator_serve_embeddings``: a rehearsal whose local server fills ``embedding`` in /chunks (real
LlamaCloud does not), set from a params file -- through the runner and through plain papermill."""

from __future__ import annotations

import json

import psutil
from llama_cloud import LlamaCloud

from runbook import config, runner, source
from runbook.paths import NOTEBOOKS_DIR
from runbook.rehearsal import corpus, hooks
from runbook.source import path_id

from .conftest import API_KEY, CACHE, write_params

OPENS_THE_SOURCE = ["00_preflight", "01_extract", "04_rag_service", "05_ab_compare", "07_update_vectors"]


def _first_chunk_embedding(url: str, key: str):
    c = LlamaCloud(api_key=key, base_url=url)
    doc = next(iter(c.pipelines.documents.list(pipeline_id=corpus.DEMO_PIPELINE_ID, limit=1)))
    nodes = c.pipelines.documents.get_chunks(document_id=path_id(doc.id), pipeline_id=corpus.DEMO_PIPELINE_ID)
    return nodes[0].embedding


def test_every_notebook_that_takes_emulator_corpus_declares_it():
    for path in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")):
        declared = config.notebook_parameters(path)
        if "emulator_corpus" in declared:
            d = declared.get("emulator_serve_embeddings")
            assert d and d["inferred_type_name"] == "bool" and d["default"] == "False", path.name
            assert "/chunks" in d["help"] and "re-embedding" in d["help"], path.name
            assert "emulator_serve_embeddings=emulator_serve_embeddings" in path.read_text(encoding="utf-8")
    assert sorted(
        p.stem
        for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")
        if "emulator_serve_embeddings" in config.notebook_parameters(p)
    ) == sorted(OPENS_THE_SOURCE)


def test_runner_accepts_it_and_its_server_serves_vectors(tmp_path, outputs, monkeypatch):
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", API_KEY)
    monkeypatch.setenv("GOOGLE_API_KEY", "google-stand-in-key")
    p = write_params(tmp_path, emulator_serve_embeddings=True)
    res = runner.run(p, prepare_only=True)  # the name and type checks, then every notebook parameterised
    for stem in OPENS_THE_SOURCE:
        nb = json.loads((res.run_dir / f"{stem}.ipynb").read_text(encoding="utf-8"))
        injected = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
        assert "emulator_serve_embeddings = True" in "".join(injected["source"]), stem
    # the server the runner starts for this run
    handle = hooks.start_local_server(config.load_params(p))
    try:
        assert len(_first_chunk_embedding(handle.url, API_KEY)) == 384
    finally:
        handle.stop()
    without = hooks.start_local_server(config.load_params(write_params(tmp_path)))
    try:
        assert _first_chunk_embedding(without.url, API_KEY) is None  # like the real cloud by default
    finally:
        without.stop()


def test_plain_papermill_path_starts_the_server_with_vectors(monkeypatch):
    """The notebooks open the source with ``source.open_source(..., emulator_serve_embeddings=...)``; outside
    the runner that starts the local server itself."""
    monkeypatch.setenv("LLAMA_CLOUD_API_KEY", API_KEY)
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    src = source.open_source(
        "",
        "LLAMA_CLOUD_API_KEY",
        emulator_corpus="demo",
        embed_cache=str(CACHE),
        emulator_serve_embeddings=True,
    )
    try:
        assert len(_first_chunk_embedding(src.base_url, API_KEY)) == 384
    finally:  # the server this test started (it would otherwise live until the test session ends)
        for child in psutil.Process().children(recursive=True):
            if child.pid not in before and "runbook.rehearsal.cloud_emulator" in " ".join(child.cmdline()):
                child.terminate()
                child.wait(10)
