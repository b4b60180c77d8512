"""Phases 04-05 library: the switch by flag alone, cosine on both arms, parity, and the gates."""

import numpy as np
import pytest

from runbook import chroma_target, compare, embeddings, export_format, load, rag_switch

MINILM = embeddings.ModelSpec("huggingface", "sentence-transformers/all-MiniLM-L6-v2", 384)


@pytest.fixture
def local_db(demo_export, tmp_path):
    client = chroma_target.open_client("embedded", str(tmp_path))
    e = export_format.open_export(demo_export)
    prov = chroma_target.provenance(e, MINILM.model_id)
    col, _ = chroma_target.create_or_verify(
        client, "welno_medical_knowledge", chroma_target.HnswSettings(), prov
    )
    load.load_export(client, col, demo_export, tmp_path / "cp.json", progress=False)
    return tmp_path / "chroma_db", col


def config(tmp_path, server, chroma_path, use_local, cutoff=0.0, top_k=5, spec=MINILM):
    entries = rag_switch.config_entries(
        use_local,
        str(chroma_path),
        "welno_medical_knowledge",
        spec,
        "Dr.Welno",
        "",
        "Default",
        server.url,
        "LLAMA_CLOUD_API_KEY",
        top_k,
        cutoff,
        "gemini-2.0-flash",
        "NO_GOOGLE_KEY_HERE",
    )
    return rag_switch.load_config(rag_switch.write_config(tmp_path / f"config-{use_local}.env", entries))


def test_the_flag_alone_selects_the_arm(tmp_path, server, key_env, local_db):
    chroma_path, _ = local_db
    q = "What should I eat before a colonoscopy?"
    cloud = rag_switch.build_query_engine(config(tmp_path, server, chroma_path, False))
    local = rag_switch.build_query_engine(config(tmp_path, server, chroma_path, True))
    n_before = len(server.requests)
    out_local = local.ask(q)
    assert len(server.requests) == n_before  # the local arm never calls the cloud
    out_cloud = cloud.ask(q)
    assert any(r[1].endswith("/retrieve") for r in server.requests[n_before:])
    assert [n.node.node_id for n in out_local["nodes"]] == [n.node.node_id for n in out_cloud["nodes"]]
    # both arms report cosine similarity: the same numbers for the same vectors
    assert np.allclose(
        [n.score for n in out_local["nodes"]], [n.score for n in out_cloud["nodes"]], atol=1e-4
    )
    assert out_local["answer"] is None and "retrieval only" in out_local["note"]
    assert (tmp_path / "config-True.env").stat().st_mode & 0o777 == 0o600


def test_translated_cutoff_keeps_the_same_results_on_both_arms(tmp_path, server, key_env, local_db):
    chroma_path, _ = local_db
    q = "How often should I get a gastroscopy for stomach cancer screening?"
    probe = rag_switch.build_retriever(config(tmp_path, server, chroma_path, False, top_k=20)).retrieve(q)
    scores = sorted(n.score for n in probe)
    cutoff = (scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2  # between two results
    cloud = rag_switch.build_retriever(config(tmp_path, server, chroma_path, False, cutoff, 20)).retrieve(q)
    local = rag_switch.build_retriever(config(tmp_path, server, chroma_path, True, cutoff, 20)).retrieve(q)
    assert 0 < len(cloud) < 20
    assert {n.node.node_id for n in cloud} == {n.node.node_id for n in local}
    # the pitfall it avoids: the same number as a cutoff on ChromaVectorStore's exp(-distance) keeps another set
    everything = rag_switch.build_retriever(config(tmp_path, server, chroma_path, True, 0.0, 20)).retrieve(q)
    naive = [n for n in everything if rag_switch.cosine_to_chroma_score(n.score) >= cutoff]
    assert len(naive) > len(local)


def test_wrong_local_embedder_fails_parity_naming_both_models(local_db):
    _, col = local_db
    ok = rag_switch.check_embedding_parity(col, MINILM, sample=20)
    assert ok["min cosine"] >= 0.999
    wrong = embeddings.ModelSpec("hash", "hash", 384)
    with pytest.raises(rag_switch.EmbeddingMismatch) as e:
        rag_switch.check_embedding_parity(col, wrong, sample=20)
    assert "hash:hash" in str(e.value) and MINILM.model_id in str(e.value)
    with pytest.raises(rag_switch.EmbeddingMismatch, match="1536-d"):
        rag_switch.check_embedding_parity(col, embeddings.ModelSpec("hash", "hash", 1536), sample=5)


def _ab(server, src_key_env, col, questions):
    from runbook import source

    src = source.open_source(server.url, src_key_env)
    cloud = compare.run_cloud(src, server.corpus.pipeline["id"], questions, 5)
    local = compare.run_local(col, MINILM, questions, 5)
    df = compare.per_query(cloud, local, questions, 5)
    return df, compare.summary(df, 5)


def test_gates_pass_on_a_complete_copy(server, key_env, local_db):
    _, col = local_db
    questions = compare.load_questions()
    df, s = _ab(server, key_env, col, questions)
    assert s["mean recall@5 of cloud"] >= 0.98 and s["mean rbo"] > 0.9 and s["local hit@5 (labels)"] >= 0.9
    g = compare.gates(s, 5, 0.9, 0, local_p95_below_cloud=False)
    assert all(x["ok"] for x in g)
    assert len(compare.figures(df, 5)) == 3 and "PASS" in compare.verdict(g, s, 5)


def test_a_collection_missing_a_tenth_fails_the_gates(server, key_env, local_db):
    _, col = local_db
    ids = col.get(include=[])["ids"]
    col.delete(ids=ids[::10])  # a tenth of the chunks gone
    questions = compare.load_questions()
    _, s = _ab(server, key_env, col, questions)
    g = compare.gates(s, 5, 0.95, 0, local_p95_below_cloud=False)
    assert not g[0]["ok"], s
    from runbook import display

    with pytest.raises(display.CheckFailed, match="recall@5"):
        display.checks(g, show=False)


def test_metric_helpers():
    assert compare.rbo(list("abc"), list("abc")) == pytest.approx(1.0)
    assert compare.rbo(list("abc"), list("xyz")) == 0.0
    assert 0 < compare.rbo(list("abcde"), list("bacde")) < 1
    assert compare.kendall_tau(list("abc"), list("abc")) == pytest.approx(1.0)
    assert compare.kendall_tau(list("abc"), list("cba")) == pytest.approx(-1.0)
    assert compare.cost_table(0.02, 10000)["saving $/month"] == 200.0


def test_config_keys_are_masked_but_variable_names_are_not(tmp_path):
    """A key kept in config.env is scrubbed from outputs; *_KEY_ENV entries only name variables and stay readable."""
    from runbook import credentials

    path = tmp_path / "config.env"
    path.write_text(
        "USE_LOCAL_VECTOR_DB=false\nLLAMACLOUD_API_KEY_ENV=LLAMA_CLOUD_API_KEY\n"
        "LLAMA_CLOUD_API_KEY=llx-config-canary-0123456789\n",
        encoding="utf-8",
    )
    cfg = rag_switch.load_config(path)
    assert cfg.cloud_key_env == "LLAMA_CLOUD_API_KEY"
    text = credentials.scrub("key llx-config-canary-0123456789 from $LLAMA_CLOUD_API_KEY")
    assert text == "key *** from $LLAMA_CLOUD_API_KEY"
