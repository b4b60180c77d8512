"""Phase 05: the cloud arm against the local arm on a question set, per query and overall, with gates.

Three known ways a naive comparison misleads, and what this module does about each:
(a) the local arm embeds queries with the model that made the stored vectors (checked in phase 04);
(b) scores are compared as cosine similarity on both arms (Chroma distance 1 - cosine, not exp(-d));
(c) a hybrid or reranked cloud preset is not what a dense-only local index does: an ablation arm asks
    the cloud for dense-only results (alpha 1, reranking off -- sent by the raw client, since
    LlamaCloudRetriever drops falsy settings).

The latency gate is judged so that a busy machine cannot flip it: the two arms are timed in turn, query by
query (``run_interleaved``), so whatever load the machine has falls on both alike; each query is timed
``repetitions`` times per arm and keeps its fastest run (load only adds time, so the fastest run is what
the system can do); the gate compares the p95 of those per-query bests with a relative margin, and its
detail says so. The p50/p95/p99 of every timed run stay in the summary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import embeddings, plugins
from .paths import PACKAGE_DATA, resolve


def load_questions(path: str = "", corpus: str = "") -> list[dict]:
    """JSONL or YAML list of {id, question, expected_document_ids?, kind?}; "" = the demo question set.
    ``kind`` (e.g. keyword, paraphrase) groups the questions in ``hits_by_kind``. A relative path is the
    project root's; with no path, the rehearsal ``corpus`` "demo-ko" brings its Korean question set."""
    if not path and corpus == "demo-ko":
        return plugins.rehearsal("the demo-ko corpus's questions").questions(corpus)
    p = resolve(path) if path else PACKAGE_DATA / "demo_questions.jsonl"
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
                "kind": str(q.get("kind") or ""),
            }
        )
    return out


@dataclass
class ArmRun:
    name: str
    # per query: ids, docs, scores (of its first run), latency_ms (its fastest run), runs_ms (every run's
    # latency, in the order timed), + embed_ms/search_ms (of the fastest run) on the local arm
    rows: list[dict] = field(default_factory=list)
    interleaved: bool = False  # timed in turn with the other arm, query by query

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def _cloud_once(src, pipeline_id: str, q: dict, top_k: int, extra: dict) -> dict:
    t = time.perf_counter()
    raw = src.client.pipelines.with_raw_response.retrieve(
        pipeline_id=pipeline_id, query=q["question"], dense_similarity_top_k=top_k, **extra
    )
    body = raw.http_response.json()
    ms = (time.perf_counter() - t) * 1000
    nodes = body.get("retrieval_nodes") or []
    return {
        "id": q["id"],
        "latency_ms": ms,
        "ids": [n["node"]["id_"] for n in nodes][:top_k],
        "docs": [((n["node"].get("relationships") or {}).get("1") or {}).get("node_id") for n in nodes][
            :top_k
        ],
        "scores": [float(n.get("score") or 0.0) for n in nodes][:top_k],
    }


def _local_once(collection, spec: embeddings.ModelSpec, q: dict, top_k: int) -> dict:
    t0 = time.perf_counter()
    vec = embeddings.embed_query(q["question"], spec)
    t1 = time.perf_counter()
    res = collection.query(query_embeddings=vec[None, :], n_results=top_k, include=["metadatas", "distances"])
    t2 = time.perf_counter()
    return {
        "id": q["id"],
        "embed_ms": (t1 - t0) * 1000,
        "search_ms": (t2 - t1) * 1000,
        "latency_ms": (t2 - t0) * 1000,
        "ids": res["ids"][0],
        "docs": [m.get("ref_doc_id") for m in res["metadatas"][0]],
        "scores": [1.0 - d for d in res["distances"][0]],  # cosine space: distance = 1 - cosine
    }


def _retriever_once(retriever, q: dict, top_k: int) -> dict:
    """One query through a LlamaIndex retriever (the local arm as the service runs it: hybrid, reranked)."""
    t0 = time.perf_counter()
    nodes = retriever.retrieve(q["question"])[:top_k]
    ms = (time.perf_counter() - t0) * 1000

    def doc(n):
        md = n.node.metadata or {}
        return n.node.ref_doc_id or md.get("ref_doc_id") or md.get("document_id")

    return {
        "id": q["id"],
        "latency_ms": ms,
        "ids": [n.node.node_id for n in nodes],
        "docs": [doc(n) for n in nodes],
        "scores": [float(n.score or 0.0) for n in nodes],
    }


# ---- arms: each a function of one question giving one timed result row
def cloud_arm(src, pipeline_id: str, top_k: int, dense_only: bool = False):
    """The cloud index as its preset says (or dense-only: alpha 1, reranking off, sent by the raw client
    since LlamaCloudRetriever drops falsy settings)."""
    extra = {"alpha": 1.0, "enable_reranking": False} if dense_only else {}
    return lambda q: _cloud_once(src, pipeline_id, q, top_k, extra)


def local_dense_arm(collection, spec: embeddings.ModelSpec, top_k: int):
    """Chroma alone, queried directly (embedding and search timed apart)."""
    embeddings.embed_query("warm-up", spec)
    return lambda q: _local_once(collection, spec, q, top_k)


def retriever_arm(retriever, top_k: int):
    """Any LlamaIndex retriever: the local hybrid and reranked modes as ``rag_switch`` builds them."""
    retriever.retrieve("warm-up")
    return lambda q: _retriever_once(retriever, q, top_k)


def run_arms(arms: dict, questions: list[dict], repetitions: int = 3, timed: tuple = ()) -> dict:
    """Every arm on every question, query by query and in turn (the order rotates with each repetition, so
    load on the machine falls on all arms alike). The ``timed`` arms (the two the latency gate compares; all
    when empty) run ``repetitions`` times per query, the others once (a cloud arm's run is a billed query);
    each query keeps its first run's results and its fastest run's timings. Returns {name: ArmRun}."""
    check_latency_params(repetitions, 0.0)
    names = list(arms)
    timed = tuple(timed) or tuple(names)
    out = {n: ArmRun(n, interleaved=n in timed and len(timed) > 1) for n in names}
    for q in questions:
        runs: dict[str, list] = {n: [] for n in names}
        for r in range(repetitions):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                if r == 0 or n in timed:
                    runs[n].append(arms[n](q))
        for n in names:
            out[n].rows.append(_best_of(runs[n]))
    return out


CLOUD = "cloud as configured"
CLOUD_DENSE = "cloud dense-only"


def build_arms(src, pipeline_id: str, cfg, collection, top_k: int, hybrid: bool) -> dict:
    """Phase 05's arms: the cloud as its preset says; the cloud dense-only (when the preset is hybrid or
    reranked); the local modes: dense (Chroma alone), hybrid (when the collection has a sparse index; with
    the configured mode's ``alpha``, else the cloud's), and hybrid + rerank (when a local reranker is
    configured). The local arm ``cfg`` (config.env) configures is among them, named ``cfg.retrieval.label``.
    Hybrid and reranked arms are the retrievers ``rag_switch`` builds for the service."""
    from dataclasses import replace

    from . import rag_switch, retrieval_modes

    arms = {CLOUD: cloud_arm(src, pipeline_id, top_k)}
    if hybrid:
        arms[CLOUD_DENSE] = cloud_arm(src, pipeline_id, top_k, dense_only=True)
    mode = cfg.retrieval
    arms[retrieval_modes.Mode().label] = local_dense_arm(collection, cfg.embed, top_k)
    if mode.sparse_path:
        modes = [replace(mode, mode="hybrid", rerank="", rerank_top_n=0)]
        if mode.rerank:
            modes.append(replace(mode, mode="hybrid"))
        if mode.mode == "dense" and mode.rerank:
            modes.append(mode)
        for m in modes:
            arms[m.label] = retriever_arm(rag_switch.build_retriever(replace(cfg, retrieval=m)), top_k)
    elif mode.rerank:
        arms[mode.label] = retriever_arm(rag_switch.build_retriever(cfg), top_k)
    return arms


def alpha_sweep(cfg, cloud: ArmRun, questions: list[dict], k: int, alphas: list) -> list[dict]:
    """The local hybrid mode at each ``alpha`` (0 sparse only ... 1 dense only), one run per question, each
    against the ``cloud`` arm's results and the labels: the figures a team picks its ``alpha`` by. Needs the
    collection's sparse index (``cfg.retrieval.sparse_path``); local queries only, nothing billed."""
    from dataclasses import replace

    from . import rag_switch

    if not cfg.retrieval.sparse_path:
        return []
    runs = {CLOUD: cloud}
    for a in sorted({float(x) for x in alphas}):
        mode = replace(cfg.retrieval, mode="hybrid", alpha=a, rerank="", rerank_top_n=0).check()
        arm = retriever_arm(rag_switch.build_retriever(replace(cfg, retrieval=mode)), k)
        runs[a] = run_arms({a: arm}, questions, 1)[a]
    rows = arms_table(runs, CLOUD, questions, k)[1:]
    return [{"alpha": r.pop("arm"), **r} for r in rows]


def sweep_figure(sweep: list[dict], k: int, configured: float | None, cloud_alpha: float | None):
    """Label hit@k and MRR of the local hybrid by alpha, the configured and the cloud's alpha marked."""
    import plotly.graph_objects as go

    fig = go.Figure()
    x = [r["alpha"] for r in sweep]
    for col in (f"hit@{k} (labels)", "MRR (labels)", f"recall@{k} of {CLOUD}"):
        if any(r.get(col) is not None for r in sweep):
            fig.add_scatter(x=x, y=[r.get(col) for r in sweep], mode="lines+markers", name=col)
    for a, what in ((configured, "configured"), (cloud_alpha, "cloud's alpha")):
        if a is not None:
            fig.add_vline(x=a, line_dash="dot", annotation_text=what)
    fig.update_layout(
        height=360,
        title="Local hybrid by alpha (0 sparse only, 1 dense only)",
        xaxis_title="alpha",
        yaxis_range=[0, 1.05],
    )
    return fig


def skipped_arms(cfg) -> list[dict]:
    """The local arms ``build_arms`` leaves out for this configuration, and why (shown on the page)."""
    mode, out = cfg.retrieval, []
    if not mode.sparse_path:
        out.append(
            {"arm": "local hybrid", "why": "the collection has no sparse index (phase 03: sparse_index)"}
        )
    if not mode.rerank:
        out.append(
            {"arm": "local hybrid + rerank", "why": "no local reranker configured (phase 04: local_rerank)"}
        )
    return out


def gated_settings(cfg) -> dict:
    """The config.env retrieval settings of the configured local mode, as phase 05 gated them: phase 06
    refuses to switch to any others."""
    from . import retrieval_modes

    return retrieval_modes.entries(cfg.retrieval)


def arms_figure(table: list[dict], k: int):
    """Label hit@k, MRR and recall of the cloud's top-k, per arm: one grouped bar chart."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for col in (f"hit@{k} (labels)", "MRR (labels)", f"recall@{k} of {CLOUD}"):
        if any(r.get(col) is not None for r in table):
            fig.add_bar(name=col, x=[r["arm"] for r in table], y=[r.get(col) for r in table])
    fig.update_layout(barmode="group", height=380, title="Retrieval quality per arm", yaxis_range=[0, 1.05])
    return fig


def modes_verdict(table: list[dict], configured: str, k: int, tolerance: float) -> str:
    """One sentence on the local modes: which meet the label gates against the cloud, and what to do when
    the configured one does not."""
    rows = {r["arm"]: r for r in table}
    if rows[configured][f"hit@{k} (labels)"] is None:
        return f"The service is configured for **{configured}**; the question set has no labels to judge modes by."
    meeting = modes_meeting(table, CLOUD, k, tolerance)
    c = rows[CLOUD]
    head = (
        f"The cloud as configured: hit@{k} {c[f'hit@{k} (labels)']:.3f}, MRR {c['MRR (labels)']:.3f}. "
        + "Local modes "
        + (
            f"meeting the label gates: **{', '.join(meeting)}**."
            if meeting
            else "meeting the label gates: **none**."
        )
    )
    if configured in meeting:
        return head + f" The service is configured for **{configured}**."
    fix = (
        f" Set local_retrieval_mode (and local_hybrid_alpha, or local_rerank) in phase 04 for **{meeting[0]}** "
        "and run 04 and 05 again."
        if meeting
        else " No local mode answers as well as the cloud: do not cut over."
    )
    return head + f" The configured **{configured}** does not meet them." + fix


def arms_table(runs: dict, reference: str, questions: list[dict], k: int) -> list[dict]:
    """One row per arm: recall of the ``reference`` arm's top-k, label hit@k and MRR (when labelled),
    p50/p95 of the queries' fastest runs."""
    labels = {q["id"]: set(q["expected_document_ids"]) for q in questions}
    labelled = any(labels.values())
    ref = {row["id"]: row["ids"][:k] for row in runs[reference].rows}
    table = []
    for name, run in runs.items():
        recall, hits, rr = [], [], []
        for row in run.rows:
            a, b = ref[row["id"]], row["ids"][:k]
            recall.append(len(set(a) & set(b)) / len(a) if a else 1.0)
            want = labels.get(row["id"])
            if want:
                docs = row["docs"][:k]
                hits.append(float(bool(want & set(docs))))
                rank = next((i + 1 for i, d in enumerate(docs) if d in want), None)
                rr.append(1.0 / rank if rank else 0.0)
        lat = [row["latency_ms"] for row in run.rows]
        table.append(
            {
                "arm": name,
                f"recall@{k} of {reference}": round(float(np.mean(recall)), 4),
                f"hit@{k} (labels)": round(float(np.mean(hits)), 4) if labelled else None,
                "MRR (labels)": round(float(np.mean(rr)), 4) if labelled else None,
                "p50 ms": round(float(np.percentile(lat, 50)), 1),
                "p95 ms": round(float(np.percentile(lat, 95)), 1),
            }
        )
    return table


def _best_of(runs: list[dict]) -> dict:
    """One query's row: the first run's results, the fastest run's timings, every run's latency."""
    fastest = min(runs, key=lambda r: r["latency_ms"])
    timings = {k: fastest[k] for k in ("latency_ms", "embed_ms", "search_ms") if k in fastest}
    return {**runs[0], **timings, "runs_ms": [round(r["latency_ms"], 2) for r in runs]}


def run_cloud(
    src, pipeline_id: str, questions: list[dict], top_k: int, dense_only: bool = False, name: str = "cloud"
) -> ArmRun:
    """The cloud arm alone, one run per query (the ablation arm; ``run_interleaved`` times the gate's)."""
    run = ArmRun(name)
    extra = {"alpha": 1.0, "enable_reranking": False} if dense_only else {}
    for q in questions:
        run.rows.append(_best_of([_cloud_once(src, pipeline_id, q, top_k, extra)]))
    return run


def run_local(
    collection, spec: embeddings.ModelSpec, questions: list[dict], top_k: int, name: str = "local"
) -> ArmRun:
    """The local arm alone, one run per query."""
    run = ArmRun(name)
    embeddings.embed_query("warm-up", spec)
    for q in questions:
        run.rows.append(_best_of([_local_once(collection, spec, q, top_k)]))
    return run


def run_interleaved(
    src,
    pipeline_id: str,
    collection,
    spec: embeddings.ModelSpec,
    questions: list[dict],
    top_k: int,
    repetitions: int = 3,
    cloud_name: str = "cloud",
    local_name: str = "local",
) -> tuple[ArmRun, ArmRun]:
    """Both arms, query by query and in turn: cloud then local, then local then cloud, ... ``repetitions``
    runs per query and arm. Load on the machine then falls on both arms alike (timing one arm after the
    other let a burst of load land on one of them only), and each query keeps its fastest run per arm.
    Results (ids, scores) are the first run's: the later runs only time, they do not change any quality
    measure. Each repetition is one more cloud query."""
    check_latency_params(repetitions, 0.0)
    cloud, local = ArmRun(cloud_name, interleaved=True), ArmRun(local_name, interleaved=True)
    embeddings.embed_query("warm-up", spec)
    for q in questions:
        c_runs, l_runs = [], []
        for r in range(repetitions):
            # alternate which arm goes first, so neither always runs right after the other
            for arm in ("cloud", "local") if r % 2 == 0 else ("local", "cloud"):
                if arm == "cloud":
                    c_runs.append(_cloud_once(src, pipeline_id, q, top_k, {}))
                else:
                    l_runs.append(_local_once(collection, spec, q, top_k))
        cloud.rows.append(_best_of(c_runs))
        local.rows.append(_best_of(l_runs))
    return cloud, local


# ---- the cloud's chunk ids are the export's (checked at run time: the API reference does not say so)
def known_chunk_ids(ids, export_dir: str | os.PathLike = "", collection=None) -> set[str]:
    """Those of ``ids`` that the export holds (exported, or listed and refused by phase 01) or that the local
    ``collection`` holds (chunks phase 07 added since). Reads one column of the export; asks Chroma by id."""
    want = {str(x) for x in ids}
    found: set[str] = set()
    if export_dir and want:
        import pyarrow as pa
        import pyarrow.compute as pc

        from . import export_format

        exp = export_format.open_export(export_dir)
        found |= {x["chunk_id"] for x in exp.manifest.get("refused", []) if x.get("chunk_id") in want}
        value_set = pa.array(sorted(want), type=pa.string())
        for batch in exp.iter_chunk_batches(columns=["chunk_id"], batch_size=65536):
            col = batch.column(0)
            found.update(col.filter(pc.is_in(col, value_set=value_set)).to_pylist())
    rest = sorted(want - found)
    if collection is not None:
        for i in range(0, len(rest), 500):
            found.update(collection.get(ids=rest[i : i + 500], include=[])["ids"])
    return found


def retrieved_ids_check(
    runs: list[ArmRun], export_dir: str | os.PathLike = "", collection=None, gated: bool = True, show: int = 5
) -> dict:
    """Whether every chunk id the cloud's ``retrieve`` returned (``runs``: the cloud arms of phase 05) is a
    chunk id of the export or the local collection. Overlap, recall and RBO compare the arms by chunk id,
    which assumes ``retrieve`` names a chunk by the id the chunk listing (``/chunks``) gave phase 01; the
    LlamaCloud API reference does not say so. Returns the counts, up to ``show`` unknown ids and a ``check``
    row for ``display.checks``: failed when any id is unknown, unless ``gated`` is False (the recall gate is
    off: the row passes and says the id-based figures mean nothing)."""
    retrieved = list(dict.fromkeys(str(i) for r in runs for row in r.rows for i in row["ids"]))
    found = known_chunk_ids(retrieved, export_dir, collection)
    unknown = [i for i in retrieved if i not in found]
    out = {"retrieved ids": len(retrieved), "found": len(retrieved) - len(unknown), "unknown": len(unknown)}
    out["unknown examples"] = unknown[:show]
    counts = (
        f"{out['found']} of {len(retrieved)} retrieved chunk ids are in the export or the local collection"
    )
    if not unknown:
        detail = counts
    else:
        what = (
            "none of them is: this source's retrieve names chunks by other ids than its chunk listing"
            if not out["found"]
            else "the others are not: the index changed since the export, or retrieve names some chunks "
            "by other ids than the chunk listing"
        )
        detail = (
            f"{counts}; {what} (unknown: {', '.join(map(repr, unknown[:show]))}"
            f"{', ...' if len(unknown) > show else ''}). Recall@k, overlap and RBO by chunk id cannot be "
            "measured against this source as it is. What to do: if the index changed, run phase 07 (delta "
            "sync) and then phase 05 again; if the ids differ, set gate_min_recall: 0 and judge by a labelled "
            "question set (questions_file, gate_min_local_hit_rate), which compares documents, not chunk ids"
        )
        if not gated:
            detail = f"recall gate off (gate_min_recall 0), id-based figures are not meaningful: {detail}"
    out["check"] = {
        "check": "the cloud's retrieved chunk ids are the exported chunk ids",
        "ok": not unknown or not gated,
        "detail": detail,
    }
    return out


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
            "cloud_ms": c["latency_ms"],  # the query's fastest run
            "local_ms": loc["latency_ms"],
            "cloud_runs_ms": c.get("runs_ms", [c["latency_ms"]]),
            "local_runs_ms": loc.get("runs_ms", [loc["latency_ms"]]),
            "interleaved": cloud.interleaved and local.interleaved,
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


def latency_figures(cloud_runs: list[list[float]], local_runs: list[list[float]], interleaved: bool) -> dict:
    """The latency figures of a comparison, from every timed run of every query (one list per query):
    p50/p95/p99 of all runs per arm, and the p95 of each query's fastest run -- what the gate compares."""
    out = {}
    for arm, runs in (("cloud", cloud_runs), ("local", local_runs)):
        every = [ms for r in runs for ms in r]
        for q in (50, 95, 99):
            out[f"{arm} latency p{q} ms"] = round(float(np.percentile(every, q)), 2)
    for arm, runs in (("cloud", cloud_runs), ("local", local_runs)):
        out[f"{arm} best-run latency p95 ms"] = round(float(np.percentile([min(r) for r in runs], 95)), 2)
    out["latency runs per query"] = min(len(r) for r in [*cloud_runs, *local_runs])
    out["latency runs interleaved"] = bool(interleaved)
    return out


def summary(df: pd.DataFrame, k: int) -> dict:
    def pct(col, q):
        return float(np.percentile(df[col], q))

    out = {"queries": len(df)}
    out.update(
        latency_figures(list(df["cloud_runs_ms"]), list(df["local_runs_ms"]), bool(df["interleaved"].all()))
    )
    if df["local_embed_ms"].notna().all():  # the dense arm times embedding and search apart
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


LATENCY_CHECK = "local p95 latency not above the cloud's (with margin)"
INJECTED_LATENCY = "of each cloud latency, injected by the rehearsal server, ms"


def injected_latency_ms(emulator_corpus: str, emulator_query_latency_ms: float) -> float:
    """The delay the rehearsal server adds to every retrieve (``emulator_query_latency_ms``) when the cloud
    arm is that server (``emulator_corpus`` set); 0 against the real cloud, where the param does nothing."""
    return float(emulator_query_latency_ms or 0.0) if emulator_corpus else 0.0


def injected_latency_note(ms: float) -> str:
    """What the page says next to the latency figures when ``injected_latency_ms`` is not 0."""
    return (
        f"Rehearsal: the cloud arm is the local rehearsal server, which waits {ms:g} ms on every retrieve "
        f"(emulator_query_latency_ms: {ms:g}) to stand in for the network a real cloud query crosses. Every "
        f"cloud latency on this page includes those {ms:g} ms; the local arm's do not."
    )


def _injected_suffix(s: dict) -> str:
    ms = s.get(INJECTED_LATENCY) or 0
    return (
        f"; the cloud figure includes {ms:g} ms per query injected by the rehearsal server "
        "(emulator_query_latency_ms)"
        if ms
        else ""
    )


def _latency_how(s: dict) -> str:
    n = s.get("latency runs per query", 1)
    if n == 1:
        return "one run per query" + (", interleaved" if s.get("latency runs interleaved") else "")
    return (
        f"each query's best of {n}" + (" interleaved" if s.get("latency runs interleaved") else "") + " runs"
    )


def latency_check(s: dict, margin: float) -> dict:
    """The latency gate: local p95 <= cloud p95 x (1 + margin), each p95 taken over the queries' fastest
    runs (``latency_figures``); the detail says how the figures were made."""
    c, loc = s["cloud best-run latency p95 ms"], s["local best-run latency p95 ms"]
    limit = c * (1 + margin)
    return {
        "check": LATENCY_CHECK,
        "ok": loc <= limit,
        "detail": f"local {loc:.1f} ms vs cloud {c:.1f} ms (p95 of {_latency_how(s)}; "
        f"margin {margin:.0%}: at most {limit:.1f} ms)" + _injected_suffix(s),
    }


def check_latency_params(repetitions: int, margin: float) -> None:
    if repetitions < 1:
        raise ValueError(f"latency_repetitions must be at least 1 (got {repetitions})")
    if not margin >= 0:
        raise ValueError(
            f"gate_latency_margin must be 0 or more, a fraction of the cloud's p95 (got {margin})"
        )


def gates(
    s: dict,
    k: int,
    min_recall: float,
    max_empty: int,
    local_p95_below_cloud: bool,
    min_local_hit_rate: float = 0.0,
    latency_margin: float = 0.25,
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
        rows.append(latency_check(s, latency_margin))
    if min_local_hit_rate and f"local hit@{k} (labels)" in s:
        rows.append(
            {
                "check": f"local hit@{k} on labelled questions",
                "ok": s[f"local hit@{k} (labels)"] >= min_local_hit_rate,
                "detail": f"{s[f'local hit@{k} (labels)']:.3f} (gate >= {min_local_hit_rate})",
            }
        )
    return rows


def hits_by_kind(runs: dict, questions: list[dict], k: int) -> list[dict]:
    """Label hit@k per arm and per kind of question (keyword, paraphrase, ...): where each arm wins or
    loses. Empty when the questions carry no kinds or no labels."""
    kinds = {q["id"]: q.get("kind") for q in questions if q.get("kind") and q["expected_document_ids"]}
    labels = {q["id"]: set(q["expected_document_ids"]) for q in questions}
    if not kinds:
        return []
    order = list(dict.fromkeys(kinds.values()))
    table = []
    for name, run in runs.items():
        row: dict = {"arm": name}
        for kind in order:
            hits = [
                float(bool(labels[r["id"]] & set(r["docs"][:k])))
                for r in run.rows
                if kinds.get(r["id"]) == kind
            ]
            row[f"{kind} hit@{k} ({len(hits)})"] = round(float(np.mean(hits)), 4)
        table.append(row)
    return table


def label_gates(table: list[dict], arm: str, cloud: str, k: int, tolerance: float) -> list[dict]:
    """Label quality first: ``arm``'s hit@k and MRR on the labelled questions no lower than the ``cloud``
    arm's minus ``tolerance``. No rows when the question set is unlabelled."""
    rows = {r["arm"]: r for r in table}
    a, c = rows[arm], rows[cloud]
    if a[f"hit@{k} (labels)"] is None:
        return []
    out = []
    for what in (f"hit@{k} (labels)", "MRR (labels)"):
        floor = c[what] - tolerance
        out.append(
            {
                "check": f"{arm}: {what.replace(' (labels)', '')} on labelled questions, vs {cloud}",
                "ok": a[what] >= floor - 1e-9,
                "detail": f"{a[what]:.3f} vs {c[what]:.3f} (gate >= {floor:.3f}: the cloud's minus {tolerance:g})",
            }
        )
    return out


def modes_meeting(
    table: list[dict], cloud: str, k: int, tolerance: float, local_prefix: str = "local"
) -> list[str]:
    """The local arms whose label quality meets the label gates against ``cloud`` (every local arm when the
    question set is unlabelled: then only agreement with the cloud can judge)."""
    return [
        r["arm"]
        for r in table
        if r["arm"].startswith(local_prefix)
        and all(g["ok"] for g in label_gates(table, r["arm"], cloud, k, tolerance))
    ]


def gate_plan(
    k: int,
    min_recall: float,
    max_empty: int,
    local_p95_below_cloud: bool,
    min_local_hit_rate: float = 0.0,
    latency_margin: float = 0.25,
    latency_repetitions: int = 3,
    label_tolerance: float = 0.02,
) -> list[dict]:
    """The gates ``label_gates`` and ``gates`` would apply (same checks, same order), before any comparison: a dry run."""
    check_latency_params(latency_repetitions, latency_margin)
    rows = [
        {
            "check": f"the configured local mode's hit@{k} and MRR on labelled questions, vs the cloud's",
            "gate": f">= the cloud's minus {label_tolerance:g} (when the question set is labelled)",
        },
        {"check": f"mean recall@{k} of the cloud's results", "gate": f">= {min_recall}"},
        {"check": "queries with empty local results", "gate": f"<= {max_empty}"},
    ]
    if local_p95_below_cloud:
        how = _latency_how({"latency runs per query": latency_repetitions, "latency runs interleaved": True})
        rows.append(
            {
                "check": LATENCY_CHECK,
                "gate": f"local p95 <= cloud p95 x {1 + latency_margin:g} (p95 of {how})",
            }
        )
    if min_local_hit_rate:
        rows.append(
            {
                "check": f"local hit@{k} on labelled questions",
                "gate": f">= {min_local_hit_rate} (when the question set is labelled)",
            }
        )
    return rows


def page_inputs(base_path: str, run_dir: str = "", dry_run: bool = False) -> tuple[dict, dict, dict]:
    """Phase 05's inputs: the hand-offs of phases 01 and 04 and the collection verified last
    (``handoff.verified_collection``). A dry run before those phases have run gets absent records
    (``handoff.is_absent``), each said in one line; a real run stops naming the phase to run first."""
    from . import handoff

    read = {"base_path": base_path, "run_dir": run_dir, "dry_run": dry_run}
    h01 = handoff.read("01_extract", **read)
    h04 = handoff.read("04_rag_service", **read)
    return h01, h04, handoff.verified_collection(**read)


def open_cloud(
    dry_run: bool,
    h01: dict,
    index_name: str,
    base_url: str,
    api_key_env: str,
    emulator_corpus: str = "",
    emulator_serve_embeddings: bool = False,
    embed_cache: str = "",
    emulator_query_latency_ms: float = 0.0,
):
    """The cloud arm's source for phases 04 and 05 (``source.open_for``: the rehearsal server started when
    ``emulator_corpus`` names one), on the index phase 01 exported. A dry run that cannot tell which index
    (phase 01 has not run) or has no key in ``api_key_env`` does not connect: it says why in one line and
    gets a source that is not connected, which the page shows as a plan. A real run always connects, and
    stops with the usual errors (no key, source unreachable)."""
    from . import source

    absent = handoff_absent(h01)
    if dry_run and absent and index_name:  # named, but only phase 01 finds its id
        why = f"phase 01 has not run, so the id of index {index_name!r} is not known"
        print(f"dry run: {why}; the cloud arm is not contacted, it is shown as a plan")
        return source.Source(None, base_url, api_key_env, not_connected=why)
    return source.open_for(
        dry_run,
        source.index_ref("" if absent else h01.get("index_id", ""), index_name),
        base_url,
        api_key_env,
        emulator_corpus=emulator_corpus,
        emulator_serve_embeddings=emulator_serve_embeddings,
        embed_cache=embed_cache,
        emulator_query_latency_ms=emulator_query_latency_ms,
    )


def handoff_absent(rec: dict | None) -> bool:
    """Whether a hand-off stands for a phase that has not run (``handoff.is_absent``)."""
    from . import handoff

    return handoff.is_absent(rec)


def connected(src) -> bool:
    """Whether ``src`` (``open_cloud``) talks to the cloud; a dry run's plan-only source does not."""
    return src is not None and src.connected


def cloud_row(src, h01: dict, index_name: str = "") -> dict:
    """The cloud arm as the page shows it: where, and which index (placeholders before phase 01 has run)."""
    where = src.describe()  # says why a dry run did not contact it
    if handoff_absent(h01):
        return {"cloud arm": where, "index": f"{index_name or '(not named)'} (id: phase 01 has not run)"}
    return {"cloud arm": where, "index": f"{h01['index_name']} ({h01['index_id']})"}


def cloud_preset(src, pipeline_id: str | None) -> tuple[dict | None, bool | None]:
    """The cloud index's preset retrieval parameters (read-only), and whether they are hybrid or reranked
    (``retrieval_modes.preset_needs_dense_arm``: then a dense-only cloud arm shows how much of a difference
    that explains). ``(None, None)`` when the source is not connected or the index is not known (a dry run)."""
    from . import retrieval_modes

    if not connected(src) or not pipeline_id:
        return None, None
    pipeline = src.client.pipelines.get(pipeline_id=pipeline_id).model_dump(mode="json")
    preset = pipeline.get("preset_retrieval_parameters") or {}
    return preset, retrieval_modes.preset_needs_dense_arm(preset)


def preset_row(h01: dict, preset: dict | None, hybrid: bool | None) -> dict:
    """The cloud index, its preset in words and whether phase 05 adds a dense-only cloud arm."""
    from . import retrieval_modes

    dense_arm = "unknown until the preset is read" if hybrid is None else ("yes" if hybrid else "no")
    return {
        "cloud index": (h01 or {}).get("index_id") or "(phase 01 has not run)",
        "cloud preset": retrieval_modes.describe_preset(preset),
        "preset parameters": preset,
        "hybrid/reranked: a dense-only cloud arm": dense_arm,
    }


def gate_settings(
    k: int,
    min_recall: float,
    max_empty: int,
    local_p95_below_cloud: bool,
    min_local_hit_rate: float = 0.0,
    latency_margin: float = 0.25,
    latency_repetitions: int = 3,
    label_tolerance: float = 0.02,
) -> dict:
    """Phase 05's gate parameters in one dict (``gate_plan(**settings)``, ``outcome``), checked first."""
    check_latency_params(latency_repetitions, latency_margin)
    return {
        "k": k,
        "min_recall": min_recall,
        "max_empty": max_empty,
        "local_p95_below_cloud": local_p95_below_cloud,
        "min_local_hit_rate": min_local_hit_rate,
        "latency_margin": latency_margin,
        "latency_repetitions": latency_repetitions,
        "label_tolerance": label_tolerance,
    }


def plan(
    questions: list[dict],
    h01: dict,
    preset: dict | None,
    hybrid: bool | None,
    collection: dict,
    k: int,
    gate_rows: list[dict],
) -> dict:
    """Dry run of phase 05: the question set, the arms it would compare and the gates; nothing is queried.
    ``collection`` is ``handoff.verified_collection(...)``. Where an earlier phase has not run or the cloud
    was not asked (``preset`` None), the arms say so instead of naming what only that phase can tell."""
    from . import retrieval_modes

    absent = handoff_absent(h01)
    index_id = "(phase 01 has not run)" if absent else h01["index_id"]
    model = (
        "(the model phase 01 records)" if absent else embeddings.ModelSpec(**h01["embedding_spec"]).model_id
    )
    if not collection.get("collection"):
        what_local = "the collection phase 03 verifies (phase 03 has not run)"
    else:
        where = (
            collection.get("chroma_path")
            if collection.get("chroma_mode") != "http"
            else (f"{collection.get('chroma_host')}:{collection.get('chroma_port')}")
        )
        what_local = (
            f"collection {collection.get('collection')} ({collection.get('count')} records) at {where}"
        )
    preset_text = retrieval_modes.describe_preset(preset) + (f" {preset}" if preset else "")
    arms = [{"arm": CLOUD, "what": f"index {index_id} over HTTP, top {k}, preset {preset_text}"}]
    if hybrid or hybrid is None:
        when = "" if hybrid else " (only if the preset is hybrid or reranked: not known until it is read)"
        arms.append(
            {"arm": CLOUD_DENSE, "what": f"the same index with alpha 1, reranking off (ablation){when}"}
        )
    arms.append({"arm": "local", "what": f"{what_local}, queries embedded with {model}, top {k}"})
    return {
        "questions": len(questions),
        "labelled": sum(bool(q["expected_document_ids"]) for q in questions),
        "arms": arms,
        "gates": gate_rows,
    }


def outcome(
    table: list[dict], s: dict, ids_check: dict, cfg, gate_cfg: dict, preset: dict | None, hybrid: bool | None
) -> dict:
    """Phase 05's result, as its hand-off records it: the gates (label quality of the configured local
    mode first, then agreement, emptiness, latency, and the chunk-id check), passed or not, the summary,
    every arm, the local modes meeting the label gates, the cloud preset it detected and the config.env
    retrieval settings it gated (phase 06 switches to exactly these)."""
    g = dict(gate_cfg)
    k, tolerance, configured = g["k"], g["label_tolerance"], cfg.retrieval.label
    rows = label_gates(table, configured, CLOUD, k, tolerance)
    rows += gates(
        s,
        k,
        g["min_recall"],
        g["max_empty"],
        g["local_p95_below_cloud"],
        g["min_local_hit_rate"],
        g["latency_margin"],
    )
    rows += [ids_check["check"]]
    return {
        "passed": all(x["ok"] for x in rows),
        "gates": rows,
        "summary": s,
        "arms": table,
        "configured_mode": configured,
        "modes_meeting_label_gates": modes_meeting(table, CLOUD, k, tolerance),
        "cloud_preset": preset,
        "cloud_dense_arm": bool(hybrid),
        "retrieval_entries": gated_settings(cfg),
    }


def planned_outcome(plan: dict, preset: dict | None, hybrid: bool | None) -> dict:
    """A dry run's result: nothing compared (``passed`` None), the gates and the plan it would run."""
    return {
        "passed": None,
        "gates": plan["gates"],
        "summary": None,
        "plan": plan,
        "cloud_preset": preset,
        "cloud_dense_arm": hybrid,
    }


def smoke_questions(given: list, corpus: str = "", n: int = 5) -> list[str]:
    """Phase 04's side-by-side questions: those given, else the first ``n`` of the question set."""
    return list(given) if given else [q["question"] for q in load_questions("", corpus)[:n]]


def show_figures(df: pd.DataFrame, k: int, injected_ms: float = 0.0) -> None:
    """Show ``figures`` one after the other."""
    from . import display

    for fig in figures(df, k, injected_ms):
        display.show_figure(fig)


ENGLISH_ONLY = ("all-MiniLM-L6-v2",)


def model_note(spec: embeddings.ModelSpec) -> str:
    """What the page must say about the dense side's model, when it is one trained on English only."""
    if any(m in spec.model_name for m in ENGLISH_ONLY):
        return (
            f"Dense retrieval embeds with {spec.model_name}, a model trained on English text: on Korean text "
            "it matches little more than shared Latin terms and numbers. The dense-only arms show what that "
            "costs; the hybrid arms add keyword (BM25) matching."
        )
    return f"Dense retrieval embeds queries with {spec.model_id}, the model that made the stored vectors."


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


def figures(df: pd.DataFrame, k: int, injected_ms: float = 0.0) -> list:
    """Latency per query, recall per query, top-1 scores. ``injected_ms``: the rehearsal server's added
    delay (``injected_latency_ms``), named on the cloud's latency box."""
    import plotly.express as px
    import plotly.graph_objects as go

    cloud = f"cloud (HTTP, incl. {injected_ms:g} ms injected)" if injected_ms else "cloud (HTTP)"
    lat = pd.concat(
        [
            pd.DataFrame({"arm": cloud, "ms": df["cloud_ms"]}),
            pd.DataFrame({"arm": "local (configured mode)", "ms": df["local_ms"]}),
            *(
                [pd.DataFrame({"arm": "local search only", "ms": df["local_search_ms"]})]
                if df["local_search_ms"].notna().all()
                else []
            ),
        ]
    )
    f1 = px.box(lat, x="arm", y="ms", points="all", title="Latency per query (its fastest run)")
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
    f3.update_layout(
        title="Top-1 score, cloud vs local (cosine when dense only; fused or reranked scores otherwise)",
        xaxis_title="cloud",
        yaxis_title="local",
    )
    for f in (f1, f2, f3):
        f.update_layout(height=360)
    return [f1, f2, f3]


def verdict(gate_rows: list[dict], s: dict, k: int) -> str:
    ok = all(g["ok"] for g in gate_rows)
    head = "**PASS** — the local index may replace the cloud." if ok else "**FAIL** — do not cut over."
    if f"local hit@{k} (labels)" in s:
        head += (
            f" On the labelled questions the local arm finds the right document in its top {k} for "
            f"{s[f'local hit@{k} (labels)']:.1%} of them (the cloud {s[f'cloud hit@{k} (labels)']:.1%}), MRR "
            f"{s['local MRR (labels)']:.3f} (the cloud {s['cloud MRR (labels)']:.3f})."
        )
    return (
        f"{head} Mean recall@{k} of the cloud's results {s[f'mean recall@{k} of cloud']:.3f}, "
        f"RBO {s['mean rbo']:.3f}; local p95 {s['local best-run latency p95 ms']} ms vs cloud p95 "
        f"{s['cloud best-run latency p95 ms']} ms ({_latency_how(s)}{_injected_suffix(s)})."
    )
