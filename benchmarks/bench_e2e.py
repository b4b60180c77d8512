"""The runbook end to end at scale: phases 00-03 through the runner (``python -m runbook run <params> --only NN``,
each phase its own process, as papermill in batch runs them) against the local LlamaCloud-compatible server
serving a synthetic corpus, into an embedded Chroma. Per phase: wall time, CPU seconds of the phase (the runner
and its notebook kernel) apart from the server's, the phase's peak RSS (its largest process; and the joint peak
of the notebook kernel with the processes it starts, the loader's second process, sampled), and the disk the
base path holds after it, against phase 00's own projection (from its hand-off: the payload it sampled from the
source, ``disk.MARGIN``) and the formula's estimate without the margin, component by component.

    .venv/bin/python benchmarks/bench_e2e.py --chunks 100000 --shape realistic --reembed --repeat 3   # make bench
    .venv/bin/python benchmarks/bench_e2e.py --chunks 100000                   # 1536-d, vectors served
    .venv/bin/python benchmarks/bench_e2e.py --chunks 1000000 --shape realistic --reembed --work /data/bench-1m

``--reembed`` is production's shape (LlamaCloud serves no vectors): the pipeline reports LlamaCloud's managed
text-embedding-3-small and phase 01 re-embeds every chunk through the server's OpenAI-compatible
``/v1/embeddings`` at the limits given (``--embed-tpm``, ``--embed-rpm``, ``--embed-latency-ms``), with cheap
vectors seeded by the text: ``clustered`` ones shaped like text embeddings with ``--shape realistic``, nearly
isotropic ``hash`` ones otherwise (the hard case for HNSW). Phase 01's row holds the rate-limited wait, and
``embed_s`` says how much of it the re-embedding cell took (``wall_s_without_embed``: the rest); phase 03's row
holds its load's and its verification's cells apart (``load_s``, ``verify_s``, ``verify_over_load``). Without
``--reembed`` the server serves the vectors (as JSON: the stand-in's encoding dominates phase 01 then). With
``--repeat`` the whole pipeline runs that many times, each into a fresh base path; the table gives each
phase's median and its spread (min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import TreeMemory, markdown, proc_cpu_seconds, spread, table, write_section
from runbook import disk
from runbook.load import dir_size
from runbook.rehearsal import cloud_emulator, corpus

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("00", "01", "02", "03")
KEY_ENV = "LLAMA_CLOUD_API_KEY"
OPENAI_ENV = "OPENAI_API_KEY"


def write_params(path: Path, base: Path, url: str, syn: corpus.SyntheticCorpus, args) -> Path:
    import yaml

    params = {
        "base_path": str(base),
        "source_base_url": url,
        "index_name": syn.pipeline["name"],
        "expected_chunks": syn.n_chunks,
        "embedding_dimension": syn.dim,
        "embedding_cache": str(base / "cache" / "embeddings.sqlite"),
        "required_env": [KEY_ENV, *([OPENAI_ENV] if args.reembed else [])],
        "collection_name": "bench",
        "verify_sample": args.verify_sample,
        "readback_sample": args.readback_sample,
        "sparse_index": args.sparse_index,
        # phases 00-03 only: phase 07's snapshot and collection version are never written here, so preflight
        # does not reserve room for them (at 1M they are 38 of its 76 GB)
        "disk_snapshots": 0,
        "disk_collection_versions": 0,
    }
    if args.reembed:
        params.update(
            embed_api_base=url + "/v1",
            allow_embedding_spend=True,
            max_embedding_cost_usd=1000.0,  # the stand-in bills nothing; the cap only has to let it run
            embed_tpm=args.embed_tpm,
            embed_rpm=args.embed_rpm,
        )
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def run_phase(params: Path, phase: str, outputs: Path, server_pid: int) -> dict:
    """One phase in its own runner process: wall, its CPU (the runner and every process it waited for: the
    notebook kernel), its largest process's peak RSS (``wait4``'s rusage), the server's CPU meanwhile."""
    env = {**os.environ, "RUNBOOK_OUTPUTS": str(outputs)}
    log = outputs / f"phase-{phase}-{time.time_ns()}.log"
    outputs.mkdir(parents=True, exist_ok=True)
    s0, t0 = proc_cpu_seconds(server_pid), time.time()
    with open(log, "w", encoding="utf-8") as f:
        p = subprocess.Popen(
            [sys.executable, "-m", "runbook", "run", str(params), "--only", phase],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        with TreeMemory(p.pid, include_root=False) as kernel:  # the kernel and its second process
            _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    row = {
        "phase": phase,
        "wall_s": round(time.time() - t0, 1),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
        "server_cpu_s": round(proc_cpu_seconds(server_pid) - s0, 1),
        "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
    }
    if kernel.measured_mb is not None:  # left out rather than None: the summary's spread takes numbers only
        row["kernel_tree_peak_rss_mb"] = kernel.measured_mb
    text = log.read_text(encoding="utf-8", errors="replace")
    row["run_folder"] = str(run_folder(text) or "")
    embed = embedding_wait(text)
    if embed is not None:
        row["embed_s"] = round(embed, 1)
        row["wall_s_without_embed"] = round(row["wall_s"] - embed, 1)
    # phase 03: the load and its verification apart (the verification's share of the load is a goal at 1M)
    loaded, verified = (cell_seconds(text, "03_migrate.ipynb", c) for c in ("run_load(", "verify_job("))
    if loaded and verified is not None:
        row["load_s"], row["verify_s"] = round(loaded, 1), round(verified, 1)
        row["verify_over_load"] = round(verified / loaded, 3)
    if p.returncode != 0:
        tail = text.strip().splitlines()[-3:]
        row["error"] = f"exit {p.returncode}: " + " | ".join(tail)[:300]
    return row


def run_folder(runner_log: str) -> Path | None:
    """The run folder the runner names in its log (``run folder: <path>``)."""
    folders = [ln.split(":", 1)[1].strip() for ln in runner_log.splitlines() if ln.startswith("run folder:")]
    return Path(folders[-1]) if folders else None


def cell_seconds(runner_log: str, notebook: str, call: str) -> float | None:
    """Seconds the executed ``notebook`` of the run spent in its cells that make ``call``, from papermill's own
    cell timings; None when the run has no such notebook (another phase)."""
    folder = run_folder(runner_log)
    nb = folder / notebook if folder else None
    if nb is None or not nb.exists():
        return None
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    return sum(
        (c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0)
        for c in cells
        if c.get("cell_type") == "code" and call in "".join(c.get("source", ""))
    )


def embedding_wait(runner_log: str) -> float | None:
    """Seconds phase 01 spent in its re-embedding cell (``extract.reembed_apply``: the requests to the rate
    limited embeddings API); None for another phase."""
    return cell_seconds(runner_log, "01_extract.ipynb", "reembed_apply(")


def preflight_projection(rows: list[dict]) -> dict[str, float]:
    """The disk projection phase 00 made (with the payload it sampled from the source, and ``disk.MARGIN``),
    MB per component, from its hand-off in the first complete repetition's run folder."""
    for r in complete(rows):
        if r["phase"] == "00" and r.get("run_folder"):
            h = json.loads(
                (Path(r["run_folder"]) / "handoff" / "00_preflight.json").read_text(encoding="utf-8")
            )
            return {c["component"]: float(c["projected MB"]) for c in h["disk"]["components"]}
    return {}


def one_pipeline(args, syn, url: str, server_pid: int, work: Path, rep: int) -> list[dict]:
    base = work / f"base-{rep}"
    shutil.rmtree(base, ignore_errors=True)
    params = write_params(work / f"params-{rep}.yaml", base, url, syn, args)
    rows = []
    for phase in PHASES:
        row = {"repetition": rep, **run_phase(params, phase, work / "outputs", server_pid)}
        row["base_path_mb"] = round(dir_size(base) / 2**20, 1)
        rows.append(row)
        print(table([row], COLS), flush=True)
        if "error" in row:
            break
    from runbook.paths import Layout

    lay = Layout.from_params(str(base))
    layout = {"export": lay.exports, "chroma": lay.chroma_db, "embedding cache": base / "cache"}
    measured = {k: dir_size(v) for k, v in layout.items()}
    rows[-1]["disk"] = {k: round(v / 2**20, 1) for k, v in measured.items()}
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--shape", choices=corpus.SyntheticCorpus.SHAPES, default="isotropic")
    ap.add_argument("--repeat", type=int, default=1, help="whole pipelines, each into a fresh base path")
    ap.add_argument("--verify-sample", type=int, default=200)
    ap.add_argument("--readback-sample", type=int, default=200)
    ap.add_argument("--sparse-index", action="store_true", help="phase 03 builds the BM25 index too")
    ap.add_argument(
        "--reembed", action="store_true", help="no vectors served: phase 01 re-embeds (see above)"
    )
    ap.add_argument("--embed-tpm", type=int, default=10_000_000, help="with --reembed: tokens per minute")
    ap.add_argument("--embed-rpm", type=int, default=10_000, help="with --reembed: requests per minute")
    ap.add_argument("--embed-latency-ms", type=float, default=300.0, help="with --reembed: per request")
    ap.add_argument("--page", default="", help="write the tables into this section of BENCHMARKS.md")
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one, removed after)")
    args = ap.parse_args(argv)
    os.environ.setdefault(KEY_ENV, "bench-key-0123456789")
    os.environ.setdefault(OPENAI_ENV, "bench-openai-key-0123456789")
    spec = f"synthetic:{args.chunks}:{args.dim}:50:{args.shape}" + (":openai" if args.reembed else "")
    syn = corpus.synthetic(spec)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.reembed:
        limits = {
            "tpm": args.embed_tpm,
            "rpm": args.embed_rpm,
            "latency_ms": args.embed_latency_ms,
            # a bucket of 2 s of the limit (as bench_reembed.py's), big enough for the largest request
            "burst_seconds": max(2.0, 60 * 300_000 / args.embed_tpm),
        }
        # the stand-in's vectors are what phase 01 stores: seeded by the text, of the shape asked for
        vectors = "clustered" if args.shape == "realistic" else "hash"
        h = cloud_emulator.start_subprocess(spec, KEY_ENV, openai_vectors=vectors, openai_limits=limits)
    else:
        h = cloud_emulator.start_subprocess(spec, KEY_ENV, serve_embeddings=True)
    try:
        rows = []
        for rep in range(1, args.repeat + 1):
            rows.extend(one_pipeline(args, syn, h.url, h.proc.pid, work, rep))
        proj = preflight_projection(rows)  # read from the run folders before a temporary work folder goes
    finally:
        h.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    how = "re-embedded at the limits given" if args.reembed else "vectors served"
    title = f"{spec}, {how}, {args.repeat} repetition(s): each phase's median (min-max)"
    phases = summarise(rows)
    print(f"\n{title}\n" + table(phases, SUMMARY_COLS))
    disk_rows = disk_against_projection(rows, proj)
    if disk_rows:
        print("\ndisk against preflight's projection (MB)\n" + table(disk_rows, DISK_COLS))
    # nothing to summarise when no repetition completed: the page then shows each phase as it ran, errors too
    if args.page and not complete(rows):
        write_section(args.page, f"{spec}, {how}: no repetition completed\n\n{markdown(rows, COLS)}")
    elif args.page:
        write_section(
            args.page, f"{title}\n\n{markdown(phases, SUMMARY_COLS)}\n\n{markdown(disk_rows, DISK_COLS)}"
        )
    return 0 if all("error" not in r for r in rows) else 1


def disk_against_projection(rows: list[dict], proj: dict[str, float]) -> list[dict]:
    """Each component's measured size after phase 03 (median over the repetitions) against preflight's
    projection (MB), as preflight shows it (with its margin) and as the formula's estimate (without it)."""
    last = [r for r in complete(rows) if "disk" in r]
    if not last:
        return []
    got = {k: statistics.median(r["disk"][k] for r in last) for k in last[0]["disk"]}
    out = []
    for k in got:
        row = {"component": k, "measured MB": got[k]}
        if proj.get(k):
            row["projected MB"] = proj[k]
            row["measured / projected"] = round(got[k] / proj[k], 2)
            row[f"measured / estimate (projection / {disk.MARGIN})"] = round(
                got[k] * disk.MARGIN / proj[k], 2
            )
        out.append(row)
    return out


def complete(rows: list[dict]) -> list[dict]:
    """The rows of the repetitions that ran every phase without an error (a failed one is not a figure)."""
    bad = {r["repetition"] for r in rows if "error" in r}
    done = {r["repetition"] for r in rows if r["phase"] == PHASES[-1]}
    return [r for r in rows if r["repetition"] in done - bad]


def summarise(rows: list[dict]) -> list[dict]:
    rows = complete(rows)
    out = []
    for phase in PHASES:
        got = [r for r in rows if r["phase"] == phase and "error" not in r]
        if not got:
            continue
        row = {"phase": phase, "runs": len(got)}
        for k in METRICS:
            if all(k in r for r in got):
                row[k] = spread([r[k] for r in got], 3 if k == "verify_over_load" else 1)
        out.append(row)
    total = [
        sum(r["wall_s"] for r in rows if r["repetition"] == rep) for rep in {r["repetition"] for r in rows}
    ]
    if total:
        reps = sorted({r["repetition"] for r in rows})
        without = [
            sum(r.get("wall_s_without_embed", r["wall_s"]) for r in rows if r["repetition"] == rep)
            for rep in reps
        ]
        out.append(
            {
                "phase": "00-03",
                "runs": len(total),
                "wall_s": spread(total),
                "wall_s_without_embed": spread(without),
            }
        )
    return out


METRICS = (
    "wall_s",
    "embed_s",
    "wall_s_without_embed",
    "cpu_s",
    "server_cpu_s",
    "peak_rss_mb",
    "kernel_tree_peak_rss_mb",
    "load_s",
    "verify_s",
    "verify_over_load",
    "base_path_mb",
)
COLS = ["repetition", "phase", *METRICS, "error"]
SUMMARY_COLS = ["phase", "runs", *METRICS]
DISK_COLS = [
    "component",
    "measured MB",
    "projected MB",
    "measured / projected",
    f"measured / estimate (projection / {disk.MARGIN})",
]

if __name__ == "__main__":
    sys.exit(main())
