"""Soak the test suite: run it whole, again and again, and stop at the first red run (issue 17: "the full
suite passes ten times in a row, including once while another CPU-heavy process runs on the machine").

    python benchmarks/soak.py --runs 10                  # ten quiet runs (about 35 min each on 2 cores)
    python benchmarks/soak.py --runs 1 --stress          # one run while every core is kept busy
    python benchmarks/soak.py --runs 10 --stress-every 5 # ten runs, the 5th and 10th under load

Each run is the README's test command minus lint (``pytest -q``) in its own temporary folder. ``--stress``
starts one busy-looping process per core (``os.cpu_count()``), niced to 0 like the suite, for the whole
run: what a second job on a shared build machine does. The record of every run (start, duration, passed,
failed, stressed, the failing tests' names) is appended to ``.soak/runs.jsonl`` (ignored by git) and printed
as a table; a red run's whole pytest output is kept beside it. Nothing here is timed against a bound: a slow
run is only reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import table

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".soak"


def _burn() -> None:  # pragma: no cover - runs in the load processes
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2147483648


def start_load(n: int) -> list[mp.Process]:
    """``n`` processes that each keep a core busy until stopped."""
    procs = [mp.Process(target=_burn, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def stop_load(procs: list[mp.Process]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(5)


SUMMARY = re.compile(r"^=*\s*(\d+ \w+.*?) in ([\d.]+)s", re.M)


def parse_summary(output: str) -> dict:
    """Counts from pytest's last line ("3 failed, 600 passed, 2 skipped in 2000.1s") and failing names."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    found = SUMMARY.findall(output)
    if found:
        for n, word in re.findall(r"(\d+) (\w+)", found[-1][0]):
            key = {"error": "errors", "errors": "errors"}.get(word, word)
            if key in counts:
                counts[key] = int(n)
    counts["failing"] = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)))
    return counts


def run_suite(index: int, stressed: bool, pytest_args: list[str]) -> dict:
    procs = start_load(os.cpu_count() or 1) if stressed else []
    start = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix=f"soak{index}-") as tmp:
            p = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    f"--basetemp={tmp}/t",
                    *pytest_args,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
    finally:
        stop_load(procs)
    output = p.stdout + p.stderr
    row = {
        "run": index,
        "started": start.strftime("%Y-%m-%d %H:%M"),
        "minutes": round((time.monotonic() - t0) / 60, 1),
        "stressed": stressed,
        "exit": p.returncode,
        **parse_summary(output),
    }
    row["result"] = "pass" if p.returncode == 0 else "FAIL"
    if p.returncode != 0:
        log = OUT / f"run-{start.strftime('%Y%m%dT%H%M%SZ')}.log"
        log.write_text(output, encoding="utf-8")
        row["log"] = str(log.relative_to(ROOT))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="how many runs in a row (default 10)")
    ap.add_argument("--stress", action="store_true", help="every run under load on every core")
    ap.add_argument("--stress-every", type=int, default=0, help="every Nth run under load (0: none)")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest after -- (default: the whole suite)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.stress_every < 0:
        ap.error("--runs must be at least 1 and --stress-every at least 0")
    OUT.mkdir(exist_ok=True)
    rows = []
    for i in range(1, args.runs + 1):
        stressed = args.stress or (args.stress_every > 0 and i % args.stress_every == 0)
        row = run_suite(i, stressed, args.pytest_args)
        with open(OUT / "runs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        rows.append(row)
        print(
            table(
                rows[-1:], ["run", "started", "minutes", "stressed", "passed", "failed", "errors", "result"]
            )
        )
        if row["result"] != "pass":
            print("red run: stopped. Failing:", *row["failing"], f"(whole output: {row['log']})", sep="\n  ")
            break
    print()
    print(
        table(
            rows, ["run", "started", "minutes", "stressed", "passed", "failed", "errors", "skipped", "result"]
        )
    )
    passed = sum(1 for r in rows if r["result"] == "pass")
    print(
        f"\n{passed} of {args.runs} run(s) passed in a row"
        + ("" if passed == args.runs else " (stopped at a red one)")
    )
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
