"""The hostile corpus (every class of odd record) through phases 00 -> 03 with the default policy, as a new
user would run it: the pages list each odd record and its treatment, the counts reconcile, and no value in
Chroma differs from the source except as the policy documents."""

import json
import math

import numpy as np

from runbook import chroma_target, records, runner
from runbook.rehearsal import corpus

from .conftest import write_params


def _utf8(s):
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def test_hostile_corpus_goes_through_01_to_03_with_the_default_policy(tmp_path, outputs):
    p = write_params(
        tmp_path,
        emulator_corpus="hostile",
        emulator_serve_embeddings=True,
        index_name="hostile",
        expected_chunks=100,
        verify_sample=200,
        recall_queries=20,
    )
    res = runner.run(p, only=["00", "01", "02", "03"])
    m = json.loads((res.run_dir / "manifest.json").read_text())
    assert m["status"] == "ok", m
    h01 = json.loads((res.run_dir / "handoff" / "01_extract.json").read_text())
    h03 = json.loads((res.run_dir / "handoff" / "03_migrate.json").read_text())
    assert all(c["ok"] for c in h03["checks"]), h03["checks"]
    recon = {r["item"].strip(): r["count"] for r in h03["reconciliation"]}
    assert recon["exported chunks = loaded + skipped + refused"] == "yes"
    export = json.loads(
        (tmp_path / "base" / "backup" / "exports" / h01["export_id"] / "manifest.json").read_text()
    )

    # every source chunk: in Chroma equal to the source after the documented undo, or listed with its treatment
    src = corpus.build_hostile_corpus()
    client = chroma_target.open_client("embedded", str(tmp_path / "base"))
    col = client.get_collection(h03["collection"], embedding_function=None)
    got = col.get(include=["documents", "metadatas", "embeddings"])
    by_node: dict[tuple, list] = {}
    for cid, doc, meta, emb in zip(
        got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
    ):
        node = records.loads(meta["_node_content"])
        by_node.setdefault((node["id_"], doc), []).append((cid, meta, emb, node))
    nb03 = (res.run_dir / "03_migrate.ipynb").read_text(encoding="utf-8")
    refused_export = {(x["document_id"], x["chunk_id"]) for x in export.get("refused", [])}
    replaced = {x["chunk_id"] for x in export.get("replaced_vectors", [])}
    loaded = not_loaded = 0
    seen_ids: set[str] = set()
    for doc_id in src.documents:
        for n in src.get_chunks(doc_id, with_embeddings=True) or []:
            cid = n["id_"]
            if not _utf8(doc_id) or not _utf8(cid) or not _utf8(n["text"] or ""):
                assert (doc_id, cid) in refused_export or (doc_id, None) in refused_export, (doc_id, cid)
                not_loaded += 1
                continue
            hits = by_node.get((cid, n["text"]), [])
            if not hits:
                # skipped or refused at load: named on phase 03's page
                assert json.dumps(cid, ensure_ascii=False)[1:-1][:40] in nb03 or cid[:40] in nb03, cid
                not_loaded += 1
                continue
            chroma_id, meta, emb, node = hits[0]
            back = records.from_flat(meta)
            assert records.same(back, n["extra_info"]), (
                cid,
                {k: (back.get(k), n["extra_info"].get(k)) for k in {*back, *n["extra_info"]}}
                if not records.same(set(back), set(n["extra_info"]))
                else {k: (back[k], v) for k, v in n["extra_info"].items() if not records.same(back[k], v)},
            )
            assert records.same(node["metadata"], n["extra_info"]), cid
            served = np.asarray(n["embedding"], dtype=np.float32)
            if cid in replaced:
                assert np.isfinite(emb).all() and np.any(emb)  # re-embedded, listed in the manifest
            else:
                # float32 as served; Chroma returns some elements one float32 step away (as verify allows)
                assert np.allclose(np.asarray(emb, dtype=np.float32), served, rtol=0, atol=1e-6), cid
            assert chroma_id == cid or chroma_id == f"{cid}@{doc_id}"
            assert chroma_id not in seen_ids
            seen_ids.add(chroma_id)
            loaded += 1
    assert loaded == col.count() and loaded + not_loaded >= sum(
        len(src.get_chunks(d, False) or []) for d in src.documents
    )
    # the classes the policy names appear on the pages with their treatment
    nb01 = (res.run_dir / "01_extract.ipynb").read_text(encoding="utf-8")
    for what in ("empty text", "NUL in text", "chunk id used by another document", "document without chunks"):
        assert what in nb01, what
    assert "json:NaN" in nb01 and "integer beyond 64 bits" in nb01 and "key Chroma reserves" in nb01
    # phase 03 names what phase 01 did too (refused at export, vectors re-embedded), and counts it
    assert "refused at export" in nb03 and "re-embedded with the pipeline" in nb03
    assert (
        recon["of which the vector was re-embedded in phase 01 (the source's was unusable)"]
        == len(replaced)
        > 0
    )
    html = (res.run_dir / "03_migrate.html").read_text(encoding="utf-8")
    assert "&lt;id&gt;@&lt;document id&gt;" in html  # text, not swallowed as an HTML tag
    for page in (nb01, nb03):  # the written policy is on the pages, not only in the README
        assert "the policy for odd records" in page and "duplicate_chunk_ids: refuse" in page
    assert math.isfinite(h03["recall@10"])
