"""Phase 05: the cloud arm against the local arm on a question set, per query and overall, with gates.

Three known ways a naive comparison misleads, and what this module does about each:
(a) the local arm embeds queries with the model that made the stored vectors (checked in phase 04);
(b) scores are compared as cosine similarity on both arms (Chroma distance 1 - cosine, not exp(-d));
(c) a hybrid or reranked cloud preset is not what a dense-only local index does: an ablation arm asks
    the cloud for dense-only results (alpha 1, reranking off -- sent by the raw client, since
    LlamaCloudRetriever drops falsy settings).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import embeddings
from .paths import PACKAGE_DATA


def load_questions(path: str = "") -> list[dict]:
    """JSONL or YAML list of {id, question, expected_document_ids?}; "" = the demo question set."""
    p = Path(path) if path else PACKAGE_DATA / "demo_questions.jsonl"
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        items = yaml.safe_load(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    out = []
    for i, q in enumerate(items):
        if isinstance(q, str):
            q = {"question": q}
        if not q.get("question"):
            raise ValueError(f"{p}: item {i + 1} has no 'question'")
        out.append(
            {
                "id": q.get("id") or f"q{i + 1:03d}",
                "question": q["question"],
                "expected_document_ids": list(q.get("expected_document_ids") or []),
            }
        )
    return out


@dataclass
class ArmRun:
    name: str
    rows: list[dict] = field(
        default_factory=list
    )  # per query: ids, docs, scores, latency_ms (+ embed/search)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def run_cloud(
    src, pipeline_id: str, questions: list[dict], top_k: int, dense_only: bool = False, name: str = "cloud"
) -> ArmRun:
    run = ArmRun(name)
    extra = {"alpha": 1.0, "enable_reranking": False} if dense_only else {}
    for q in questions:
        t = time.perf_counter()
        raw = src.client.pipelines.with_raw_response.retrieve(
            pipeline_id=pipeline_id, query=q["question"], dense_similarity_top_k=top_k, **extra
        )
        body = raw.http_response.json()
        ms = (time.perf_counter() - t) * 1000
        nodes = body.get("retrieval_nodes") or []
        run.rows.append(
            {
                "id": q["id"],
                "latency_ms": ms,
                "ids": [n["node"]["id_"] for n in nodes][:top_k],
                "docs": [
                    ((n["node"].get("relationships") or {}).get("1") or {}).get("node_id") for n in nodes
                ][:top_k],
                "scores": [float(n.get("score") or 0.0) for n in nodes][:top_k],
            }
        )
    return run


def run_local(
    collection, spec: embeddings.ModelSpec, questions: list[dict], top_k: int, name: str = "local"
) -> ArmRun:
    run = ArmRun(name)
    embeddings.embed_query("warm-up", spec)
    for q in questions:
        t0 = time.perf_counter()
        vec = embeddings.embed_query(q["question"], spec)
        t1 = time.perf_counter()
        res = collection.query(
            query_embeddings=vec[None, :], n_results=top_k, include=["metadatas", "distances"]
        )
        t2 = time.perf_counter()
        run.rows.append(
            {
                "id": q["id"],
                "embed_ms": (t1 - t0) * 1000,
                "search_ms": (t2 - t1) * 1000,
                "latency_ms": (t2 - t0) * 1000,
                "ids": res["ids"][0],
                "docs": [m.get("ref_doc_id") for m in res["metadatas"][0]],
                "scores": [1.0 - d for d in res["distances"][0]],  # cosine space: distance = 1 - cosine
            }
        )
    return run


def rbo(a: list, b: list, p: float = 0.9) -> float:
    """Rank-biased overlap (Webber et al. 2010), extrapolated, of two top-k lists: 1 for equal lists."""
    k = max(len(a), len(b))
    if k == 0:
        return 1.0
    seen_a, seen_b, total, agreement = set(), set(), 0.0, 0.0
    for d in range(1, k + 1):
        if d <= len(a):
            seen_a.add(a[d - 1])
        if d <= len(b):
            seen_b.add(b[d - 1])
        agreement = len(seen_a & seen_b) / d
        total += agreement * p**d
    return (1 - p) / p * total + agreement * p**k


def kendall_tau(a: list, b: list) -> float | None:
    shared = [x for x in a if x in b]
    if len(shared) < 2:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau([a.index(x) for x in shared], [b.index(x) for x in shared]).statistic
    return float(tau) if tau == tau else None


def per_query(cloud: ArmRun, local: ArmRun, questions: list[dict], k: int) -> pd.DataFrame:
    labels = {q["id"]: set(q["expected_document_ids"]) for q in questions}
    text = {q["id"]: q["question"] for q in questions}
    rows = []
    for c, loc in zip(cloud.rows, local.rows, strict=True):
        a, b = c["ids"][:k], loc["ids"][:k]
        shared = set(a) & set(b)
        cs = dict(zip(c["ids"], c["scores"], strict=False))
        ls = dict(zip(loc["ids"], loc["scores"], strict=False))
        deltas = [ls[x] - cs[x] for x in shared]
        row = {
            "id": c["id"],
            "question": text[c["id"]],
            "cloud_ms": c["latency_ms"],
            "local_ms": loc["latency_ms"],
            "local_embed_ms": loc.get("embed_ms"),
            "local_search_ms": loc.get("search_ms"),
            f"overlap@{k}": len(shared) / k,
            "jaccard": len(shared) / len(set(a) | set(b)) if (a or b) else 1.0,
            "rbo": rbo(a, b),
            f"recall@{k} of cloud": len(shared) / len(a) if a else 1.0,
            "kendall_tau": kendall_tau(a, b),
            "score_delta_mean": float(np.mean(deltas)) if deltas else None,
            "score_delta_max_abs": float(np.max(np.abs(deltas))) if deltas else None,
            "local_results": len(b),
            "cloud_top_score": c["scores"][0] if c["scores"] else None,
            "local_top_score": loc["scores"][0] if loc["scores"] else None,
        }
        if labels[c["id"]]:
            for arm, r in (("cloud", c), ("local", loc)):
                docs = r["docs"][:k]
                row[f"{arm}_hit@{k}"] = float(bool(labels[c["id"]] & set(docs)))
                rank = next((i + 1 for i, d in enumerate(docs) if d in labels[c["id"]]), None)
                row[f"{arm}_mrr"] = 1.0 / rank if rank else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, k: int) -> dict:
    def pct(col, q):
        return float(np.percentile(df[col], q))

    out = {"queries": len(df)}
    for arm in ("cloud", "local"):
        for q in (50, 95, 99):
            out[f"{arm} latency p{q} ms"] = round(pct(f"{arm}_ms", q), 2)
    out["local embedding p50 ms"] = round(pct("local_embed_ms", 50), 2)
    out["local search p50 ms"] = round(pct("local_search_ms", 50), 2)
    for col in (f"overlap@{k}", "jaccard", "rbo", f"recall@{k} of cloud"):
        out[f"mean {col}"] = round(float(df[col].mean()), 4)
    out["mean kendall tau (shared)"] = (
        round(float(df["kendall_tau"].dropna().mean()), 4) if df["kendall_tau"].notna().any() else None
    )
    out["mean |score delta| (shared)"] = (
        round(float(df["score_delta_mean"].dropna().abs().mean()), 5)
        if df["score_delta_mean"].notna().any()
        else None
    )
    out["queries with empty local results"] = int((df["local_results"] == 0).sum())
    for arm in ("cloud", "local"):
        if f"{arm}_hit@{k}" in df:
            out[f"{arm} hit@{k} (labels)"] = round(float(df[f"{arm}_hit@{k}"].mean()), 4)
            out[f"{arm} MRR (labels)"] = round(float(df[f"{arm}_mrr"].mean()), 4)
    return out


def gates(
    s: dict,
    k: int,
    min_recall: float,
    max_empty: int,
    local_p95_below_cloud: bool,
    min_local_hit_rate: float = 0.0,
) -> list[dict]:
    rows = [
        {
            "check": f"mean recall@{k} of the cloud's results",
            "ok": s[f"mean recall@{k} of cloud"] >= min_recall,
            "detail": f"{s[f'mean recall@{k} of cloud']:.3f} (gate >= {min_recall})",
        },
        {
            "check": "queries with empty local results",
            "ok": s["queries with empty local results"] <= max_empty,
            "detail": f"{s['queries with empty local results']} (gate <= {max_empty})",
        },
    ]
    if local_p95_below_cloud:
        rows.append(
            {
                "check": "local p95 latency below the cloud's",
                "ok": s["local latency p95 ms"] < s["cloud latency p95 ms"],
                "detail": f"local {s['local latency p95 ms']} ms vs cloud {s['cloud latency p95 ms']} ms",
            }
        )
    if min_local_hit_rate and f"local hit@{k} (labels)" in s:
        rows.append(
            {
                "check": f"local hit@{k} on labelled questions",
                "ok": s[f"local hit@{k} (labels)"] >= min_local_hit_rate,
                "detail": f"{s[f'local hit@{k} (labels)']:.3f} (gate >= {min_local_hit_rate})",
            }
        )
    return rows


def gate_plan(
    k: int,
    min_recall: float,
    max_empty: int,
    local_p95_below_cloud: bool,
    min_local_hit_rate: float = 0.0,
) -> list[dict]:
    """The gates ``gates`` would apply (same checks, same order), before any comparison: a dry run."""
    rows = [
        {"check": f"mean recall@{k} of the cloud's results", "gate": f">= {min_recall}"},
        {"check": "queries with empty local results", "gate": f"<= {max_empty}"},
    ]
    if local_p95_below_cloud:
        rows.append({"check": "local p95 latency below the cloud's", "gate": "local p95 < cloud p95"})
    if min_local_hit_rate:
        rows.append(
            {
                "check": f"local hit@{k} on labelled questions",
                "gate": f">= {min_local_hit_rate} (when the question set is labelled)",
            }
        )
    return rows


def cloud_preset(src, pipeline_id: str) -> tuple[dict, bool]:
    """The cloud index's preset retrieval parameters (read-only), and whether they are hybrid or reranked
    (then a dense-only cloud arm shows how much of a difference that explains)."""
    pipeline = src.client.pipelines.get(pipeline_id=pipeline_id).model_dump(mode="json")
    preset = pipeline.get("preset_retrieval_parameters") or {}
    hybrid = (preset.get("alpha") is not None and preset["alpha"] < 1) or bool(preset.get("enable_reranking"))
    return preset, hybrid


def plan(
    questions: list[dict],
    index_id: str,
    preset: dict,
    hybrid: bool,
    collection: dict,
    spec: embeddings.ModelSpec,
    k: int,
    gate_rows: list[dict],
) -> dict:
    """Dry run of phase 05: the question set, the arms it would compare and the gates; nothing is queried.
    ``collection`` is ``handoff.verified_collection(...)``."""
    where = (
        collection.get("chroma_path")
        if collection.get("chroma_mode") != "http"
        else (f"{collection.get('chroma_host')}:{collection.get('chroma_port')}")
    )
    arms = [{"arm": "cloud as configured", "what": f"index {index_id} over HTTP, top {k}, preset {preset}"}]
    if hybrid:
        arms.append(
            {"arm": "cloud dense-only", "what": "the same index with alpha 1, reranking off (ablation)"}
        )
    arms.append(
        {
            "arm": "local",
            "what": f"collection {collection.get('collection')} ({collection.get('count')} records) at {where}, "
            f"queries embedded with {spec.model_id}, top {k}",
        }
    )
    return {
        "questions": len(questions),
        "labelled": sum(bool(q["expected_document_ids"]) for q in questions),
        "arms": arms,
        "gates": gate_rows,
    }


def cost_table(price_per_query: float, monthly_queries: int, local_monthly_cost: float = 0.0) -> dict:
    cloud = price_per_query * monthly_queries
    return {
        "cloud $/query": price_per_query,
        "queries/month": monthly_queries,
        "cloud $/month": round(cloud, 2),
        "local $/month (params)": local_monthly_cost,
        "saving $/month": round(cloud - local_monthly_cost, 2),
    }


def process_rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def figures(df: pd.DataFrame, k: int) -> list:
    import plotly.express as px
    import plotly.graph_objects as go

    lat = pd.concat(
        [
            pd.DataFrame({"arm": "cloud (HTTP)", "ms": df["cloud_ms"]}),
            pd.DataFrame({"arm": "local (embed + search)", "ms": df["local_ms"]}),
            pd.DataFrame({"arm": "local search only", "ms": df["local_search_ms"]}),
        ]
    )
    f1 = px.box(lat, x="arm", y="ms", points="all", title="Latency per query")
    f2 = px.bar(
        df,
        x="id",
        y=f"recall@{k} of cloud",
        hover_data=["question"],
        title=f"Per-query recall@{k} of the cloud's results",
    )
    f2.update_yaxes(range=[0, 1.05])
    f3 = go.Figure(
        go.Scatter(x=df["cloud_top_score"], y=df["local_top_score"], mode="markers", text=df["question"])
    )
    lo = float(np.nanmin([df["cloud_top_score"].min(), df["local_top_score"].min()]))
    f3.add_shape(type="line", x0=lo, y0=lo, x1=1, y1=1, line={"dash": "dot"})
    f3.update_layout(title="Top-1 cosine score, cloud vs local", xaxis_title="cloud", yaxis_title="local")
    for f in (f1, f2, f3):
        f.update_layout(height=360)
    return [f1, f2, f3]


def verdict(gate_rows: list[dict], s: dict, k: int) -> str:
    ok = all(g["ok"] for g in gate_rows)
    head = "**PASS** — the local index may replace the cloud." if ok else "**FAIL** — do not cut over."
    return (
        f"{head} Mean recall@{k} of the cloud's results {s[f'mean recall@{k} of cloud']:.3f}, "
        f"RBO {s['mean rbo']:.3f}; local p95 {s['local latency p95 ms']} ms vs cloud p95 {s['cloud latency p95 ms']} ms."
    )
