"""Gemini answers through the RAG switch, against the rehearsal server's Gemini stand-in (real servers, the
real google-genai client and LlamaIndex's GoogleGenAI; nothing mocked). With a Google key set, answers must
work or fail loudly, never degrade silently to retrieval only."""

import asyncio
import json
import sys
import traceback
import urllib.error
import urllib.request

import pytest

from runbook import embeddings, rag_switch
from runbook.rehearsal import cloud_emulator

from .conftest import API_KEY, CACHE

MINILM = embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384)
GOOGLE_KEY = "google-test-key-for-local-server"
WRONG_KEY = "google-wrong-key-0123456789"
MODEL = "gemini-2.0-flash"
QUESTION = "What should I eat before a colonoscopy?"
GENERATE = ("POST", f"/v1beta/models/{MODEL}:generateContent")


@pytest.fixture
def gserver(demo_corpus):
    """The rehearsal server with a Google key given at start (LlamaCloud and Gemini on one base URL)."""
    with cloud_emulator.EmulatorServer(demo_corpus, API_KEY, google_key=GOOGLE_KEY) as srv:
        yield srv


@pytest.fixture
def google_env(monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", GOOGLE_KEY)
    return "GOOGLE_API_KEY"


def config(tmp_path, cloud_url, gemini_base_url, name="config.env"):
    entries = rag_switch.config_entries(
        False,
        "",
        "welno_medical_knowledge",
        MINILM,
        "Dr.Welno",
        "",
        "Default",
        cloud_url,
        "LLAMA_CLOUD_API_KEY",
        5,
        0.0,
        MODEL,
        "GOOGLE_API_KEY",
        gemini_base_url=gemini_base_url,
    )
    return rag_switch.load_config(rag_switch.write_config(tmp_path / name, entries))


def first_sentence(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return " ".join(lines).split(". ")[0]


def shown(exc_info) -> str:
    """All a user would see of an error: message and formatted traceback (chained causes included)."""
    return str(exc_info.value) + "".join(traceback.format_exception(exc_info.value))


def test_cloud_arm_answers_from_the_retrieved_nodes(tmp_path, gserver, key_env, google_env):
    cfg = config(tmp_path, gserver.url, gserver.url)
    assert cfg.llm_base_url == gserver.url
    rag = rag_switch.build_query_engine(cfg)
    assert rag.llm is not None and gserver.url in rag.note
    before = len(gserver.requests)
    out = rag.ask(QUESTION)
    answer, nodes = out["answer"], out["nodes"]
    assert answer and nodes
    top = nodes[0].node
    # built from the very nodes returned: their number, the top node's title and first sentence
    assert answer.startswith(f"Based on {len(nodes)} passages:"), answer
    assert top.metadata["title"] in answer and first_sentence(top.get_content()) in answer, answer
    asked = gserver.requests[before:]
    assert GENERATE in asked
    assert sum(p.endswith("/retrieve") for _, p in asked) == 1  # one retrieval per question
    # the GoogleGenAI constructor read the model's metadata from the stand-in
    assert ("GET", f"/v1beta/models/{MODEL}") in gserver.requests[:before]


def test_answers_work_inside_a_running_event_loop(tmp_path, gserver, key_env, google_env):
    """A Jupyter kernel runs cells inside an event loop; GoogleGenAI's sync chat calls asyncio.run."""
    rag = rag_switch.build_query_engine(config(tmp_path, gserver.url, gserver.url))

    async def in_a_cell():
        return rag.ask(QUESTION)

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(in_a_cell())["answer"].startswith("Based on")
    finally:
        loop.close()


def test_wrong_google_key_fails_loudly_without_the_key(tmp_path, gserver, key_env, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", WRONG_KEY)
    with pytest.raises(rag_switch.GeminiUnavailable) as e:
        rag_switch.build_query_engine(config(tmp_path, gserver.url, gserver.url))
    msg = str(e.value)
    assert MODEL in msg and gserver.url in msg and "GOOGLE_API_KEY" in msg
    assert "refused" in msg and "API key not valid" in msg, msg
    assert WRONG_KEY not in shown(e) and GOOGLE_KEY not in shown(e)


def test_key_refused_at_ask_time_fails_loudly(tmp_path, gserver, key_env, google_env):
    rag = rag_switch.build_query_engine(config(tmp_path, gserver.url, gserver.url))
    gserver.set_google_key("google-rotated-key-9876543210")  # the key was revoked after start-up
    with pytest.raises(rag_switch.GeminiUnavailable, match="refused") as e:
        rag.ask(QUESTION)
    assert MODEL in str(e.value) and GOOGLE_KEY not in shown(e)


def test_nothing_listening_fails_loudly_at_setup(tmp_path, server, key_env, google_env):
    dead = f"http://127.0.0.1:{cloud_emulator.free_port()}"
    with pytest.raises(rag_switch.GeminiUnavailable) as e:
        rag_switch.build_query_engine(config(tmp_path, server.url, dead))
    msg = str(e.value)
    assert "cannot be reached" in msg and dead in msg and MODEL in msg and "GEMINI_BASE_URL" in msg, msg
    assert GOOGLE_KEY not in shown(e)


def test_nothing_listening_at_ask_time_fails_loudly(tmp_path, server, key_env, google_env, monkeypatch):
    """A Gemini stand-in in its own process (as the runner starts it), gone between start-up and a question:
    ask raises instead of answering None."""
    monkeypatch.setenv("REHEARSAL_GOOGLE_KEY", GOOGLE_KEY)
    h = cloud_emulator.start_subprocess(
        "demo", key_env, embed_cache=str(CACHE), google_key_env="REHEARSAL_GOOGLE_KEY"
    )
    try:
        rag = rag_switch.build_query_engine(config(tmp_path, server.url, h.url))
        assert rag.ask(QUESTION)["answer"].startswith("Based on")
    finally:
        h.stop()
    with pytest.raises(rag_switch.GeminiUnavailable) as e:
        rag.ask(QUESTION)
    msg = str(e.value)
    assert "could not answer" in msg and "cannot be reached" in msg and h.url in msg, msg


def test_missing_package_fails_loudly(tmp_path, server, key_env, google_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_index.llms.google_genai", None)  # as if not installed
    with pytest.raises(rag_switch.GeminiUnavailable, match="llama-index-llms-google-genai") as e:
        rag_switch.build_query_engine(config(tmp_path, server.url, server.url))
    assert "requirements" in str(e.value) and "GOOGLE_API_KEY" in str(e.value)


def test_without_a_key_retrieval_only_and_gemini_untouched(tmp_path, gserver, key_env, monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    out = rag_switch.build_query_engine(config(tmp_path, gserver.url, gserver.url)).ask(QUESTION)
    assert out["answer"] is None and "retrieval only" in out["note"] and out["nodes"]
    assert not any(p.startswith("/v1beta") for _, p in gserver.requests)


def _call(url, path, body=None, headers=None):
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_stand_in_authenticates_like_google_and_keeps_the_keys_apart(gserver):
    path = f"/v1beta/models/{MODEL}:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Hello. Anyone?"}]}]}
    status, err = _call(gserver.url, path, body)
    assert status == 403 and err["error"]["status"] == "PERMISSION_DENIED"
    status, err = _call(gserver.url, path, body, {"x-goog-api-key": WRONG_KEY})
    assert status == 400 and err["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    # the LlamaCloud key is no Google key, and the Google key opens no LlamaCloud route
    status, _ = _call(gserver.url, path, body, {"x-goog-api-key": API_KEY})
    assert status == 400
    status, _ = _call(gserver.url, "/api/v1/projects", headers={"authorization": f"Bearer {GOOGLE_KEY}"})
    assert status == 401
    status, ok = _call(gserver.url, path, body, {"x-goog-api-key": GOOGLE_KEY})
    assert status == 200 and ok["candidates"][0]["finishReason"] == "STOP"
    assert "Hello." in ok["candidates"][0]["content"]["parts"][0]["text"]
    assert ok["usageMetadata"]["totalTokenCount"] > 0
    status, err = _call(
        gserver.url, "/v1beta/models/gpt-4:generateContent", body, {"x-goog-api-key": GOOGLE_KEY}
    )
    assert status == 404 and err["error"]["status"] == "NOT_FOUND"
    assert gserver.requests.count(("POST", path)) == 4  # recorded, refused ones included
