"""``make bench`` writes each benchmark's table into its own marked section of BENCHMARKS.md, stamped with
when, where and by which command; the rest of the page stays as it was."""

from __future__ import annotations

import os

import pytest

from benchmarks import common


def test_a_section_is_replaced_and_nothing_else(tmp_path):
    page = tmp_path / "B.md"
    page.write_text(
        "# 벤치마크\nintro\n<!-- bench:load -->\nold table\n<!-- /bench:load -->\nafter\n"
        "<!-- bench:extract -->\nkept\n<!-- /bench:extract -->\n",
        encoding="utf-8",
    )
    rows = [
        {"arm": "this loader", "seconds": "7.9 (7.5-8.3)", "note": ""},
        {"arm": "raw | add", "seconds": 8},
    ]
    common.write_section("load", common.markdown(rows, ["arm", "seconds", "note"]), str(page))
    text = page.read_text(encoding="utf-8")
    head, section = text.split("<!-- bench:load -->\n")
    assert head == "# 벤치마크\nintro\n"
    body, tail = section.split("<!-- /bench:load -->")
    assert tail == "\nafter\n<!-- bench:extract -->\nkept\n<!-- /bench:extract -->\n"
    stamp, table = body.split("\n\n", 1)
    assert (
        stamp.startswith("_Measured ") and " UTC on " in stamp and " cores, " in stamp and "`python " in stamp
    )
    # the empty column is left out; a | inside a cell is escaped
    assert table == "| arm | seconds |\n|---|---|\n| this loader | 7.9 (7.5-8.3) |\n| raw \\| add | 8 |\n"
    assert "old table" not in text and not (tmp_path / "B.md.tmp").exists()
    # again: the same section is replaced, not added
    common.write_section("load", "second", str(page))
    assert page.read_text(encoding="utf-8").count("<!-- bench:load -->") == 1 and "second" in page.read_text()


def test_a_page_without_the_section_is_left_alone_and_the_markers_are_named(tmp_path):
    page = tmp_path / "B.md"
    page.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="has no <!-- bench:e2e --> ... <!-- /bench:e2e --> section"):
        common.write_section("e2e", "x", str(page))
    assert page.read_text(encoding="utf-8") == "no markers\n"


_TREE = r"""
import os, subprocess, sys, time
sentinel, mode = sys.argv[1], sys.argv[2]
def hold(tag):
    open(sentinel + "." + tag, "w").close()
    deadline = time.monotonic() + 120  # a test that failed never says go: end rather than hold 300 MB
    while not os.path.exists(sentinel + ".go." + tag):
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.02)
block = b"x" * (300 << 20)  # written: resident
if mode == "child":
    hold("child")
    sys.exit(0)
if mode == "apart":
    del block  # given back (a block this large is its own mapping) before the child takes as much
    hold("parent")
subprocess.run([sys.executable, __file__, sentinel, "child"], check=True)
print(int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))) // 1024)
"""


def _hold_until_sampled(tm, sentinel, tag, p=None):
    """Wait until the process has said it holds its memory (``<sentinel>.<tag>``), then until ``tm`` has
    sampled again, then let it go on: no sleep decides what the sampler sees."""
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(f"{sentinel}.{tag}"):
        assert time.monotonic() < deadline and (p is None or p.poll() is None), f"{tag} never held its memory"
        time.sleep(0.02)
    seen = tm.samples
    while tm.samples < seen + 2:  # one sample may have begun before the memory was held
        assert time.monotonic() < deadline, "the sampler never sampled"
        time.sleep(0.02)
    open(f"{sentinel}.go.{tag}", "w").close()


def _tree(tmp_path, mode):
    """A parent that holds 300 MB while its child takes 300 MB (``together``), or frees its 300 MB first
    (``apart``); returns the sampled joint peak and the parent's own peak."""
    import subprocess
    import sys

    script = tmp_path / "tree.py"
    script.write_text(_TREE, encoding="utf-8")
    sentinel = str(tmp_path / "s")
    p = subprocess.Popen([sys.executable, str(script), sentinel, mode], stdout=subprocess.PIPE, text=True)
    try:
        with common.TreeMemory(p.pid, interval=0.02) as tm:
            for tag in ("parent", "child") if mode == "apart" else ("child",):
                _hold_until_sampled(tm, sentinel, tag, p)
            out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:  # a failed wait: the tree is let go and ended, not left holding its memory
            for tag in ("parent", "child"):
                open(f"{sentinel}.go.{tag}", "w").close()
            p.kill()
            p.wait()
    assert p.returncode == 0
    return tm.peak_mb, float(out.split()[-1])


def test_the_joint_peak_of_a_process_tree_counts_the_processes_it_started(tmp_path):
    joint, parent_peak = _tree(tmp_path, "together")
    assert parent_peak >= 300 and joint >= 600  # both blocks at once: a parent's own peak sees one


def test_the_joint_peak_is_below_the_sum_of_peaks_when_the_processes_peak_apart(tmp_path):
    joint, parent_peak = _tree(tmp_path, "apart")
    # the parent's peak (300 MB and more) and the child's (as much) summed would be 600 and more; together they
    # never held more than one block and two interpreters
    assert parent_peak >= 300 and 300 <= joint < 500


def test_an_arm_reports_the_joint_peak_of_its_processes(tmp_path, monkeypatch):
    import threading

    made = []

    class Recorded(common.TreeMemory):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(common, "TreeMemory", Recorded)
    script = tmp_path / "tree.py"
    script.write_text(_TREE, encoding="utf-8")
    sentinel = str(tmp_path / "s")
    code = (
        "import subprocess, sys, json\n"
        "subprocess.run([sys.executable, sys.argv[1], sys.argv[2], 'child'], check=True)\n"
        "print(json.dumps({'ok': 1}))\n"
    )
    got = {}
    t = threading.Thread(
        target=lambda: got.update(common.run_arm(code, str(script), sentinel, timeout=180)), daemon=True
    )
    t.start()
    import time

    try:
        deadline = time.monotonic() + 120
        while not made:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        _hold_until_sampled(made[0], sentinel, "child")
    finally:
        open(f"{sentinel}.go.child", "w").close()  # whatever happened, the arm's child goes on and ends
    t.join(180)
    # the arm itself never held the block; the process it started did, while it ran
    assert got["ok"] == 1 and got["peak_rss_mb"] < 150 and got["tree_peak_rss_mb"] >= 300


def test_the_end_to_end_benchmark_reads_phase_03s_load_and_verification_apart(tmp_path):
    """From the executed notebook's own cell timings (papermill's), the cells that make each call summed."""
    import json

    from benchmarks import bench_e2e

    def cell(src, seconds):
        return {"cell_type": "code", "source": src, "metadata": {"papermill": {"duration": seconds}}}

    nb = {
        "cells": [
            cell("job = load.open_load(h02)", 1.5),
            cell(["result = load.run_load(job)\n", "display.table(result.summary())"], 200.0),
            cell("v = load.verify_job(job, 100, 50, 0.99)", 24.0),
            # a markdown cell that names the call is not one that makes it
            {
                "cell_type": "markdown",
                "source": "verify_job( in prose",
                "metadata": {"papermill": {"duration": 9.0}},
            },
        ]
    }
    (tmp_path / "03_migrate.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    log = f"starting\nrun folder: {tmp_path}\n"
    assert bench_e2e.cell_seconds(log, "03_migrate.ipynb", "run_load(") == 200.0
    assert bench_e2e.cell_seconds(log, "03_migrate.ipynb", "verify_job(") == 24.0
    assert bench_e2e.cell_seconds(log, "01_extract.ipynb", "reembed_apply(") is None  # not this phase's
