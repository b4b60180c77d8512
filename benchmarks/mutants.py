"""Mutation testing of the safety-critical code with mutmut: ``make mutants`` (or this script).

mutmut names a mutant after the file's path, while the tests import the library as ``runbook`` (the
package lives in ``lib/``, a layout fixed by the user). So the run happens in a scratch workspace,
``.mutants/`` (ignored by git), where ``runbook/`` is a copy of ``lib/`` next to copies of the tests,
notebooks and params. mutmut mutates the functions in ``MODULES`` there, runs for each mutant the tests that
reach the mutated function in-process (a mutant is judged by them; notebook kernels and servers started as
subprocesses run the unmutated library), and this script prints the score per module: killed (a test
failed, or the mutant hung past mutmut's timeout) over all mutants in scope, a mutant no test reaches
counting as a survivor.

    python benchmarks/mutants.py                       # every module below (about an hour on 2 cores)
    python benchmarks/mutants.py credentials cutover   # some of them
    python benchmarks/mutants.py --survivors --diffs   # after a run: scores, and each survivor's change
    python benchmarks/mutants.py --work .mutants-load load  # a second run beside the first, own workspace

Each run re-tests every mutant of the modules it names, with a fresh map of which tests reach which function.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutants"

# module -> (the functions that hold its safety-critical code, the test files that guard it). A function is a
# mutmut name glob: ``x_<function>`` or ``xǁ<Class>ǁ<method>``. The scope is what issue 17 names: all of
# verify and credentials, load's checkpointed load and resume, extract's resumable writer, cutover's
# backup, write, restart, restore and rollback. For load and verify only their fast, in-process test files
# run: the demo-export tests of test_extract.py and test_load.py reach the same code but cost minutes per
# surviving mutant (each re-exports the demo corpus). Leaving tests out can only lose kills, so the score
# printed is a lower bound of the whole suite's.
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "credentials": (["*"], ["tests/test_credentials.py", "tests/test_secret_canaries.py"]),
    "cutover": (
        [
            "xǁCutoverǁbackup",
            "xǁCutoverǁwrite",
            "xǁCutoverǁ_replace",
            "xǁCutoverǁrestart",
            "xǁCutoverǁswitch",
            "xǁCutoverǁcheck_stop",
            "xǁCutoverǁrestore",
            "x_update_env_text",
            "x_end_group",
            "x_signals_*",
        ],
        ["tests/test_cutover.py"],
    ),
    "load": (
        ["x_load_export", "x__batches"],
        ["tests/test_load_resume.py", "tests/test_odd_records_property.py"],
    ),
    "extract": (
        ["xǁ_Writerǁ*", "x_find_resumable"],
        ["tests/test_extract.py", "tests/test_export_writer.py"],
    ),
    "verify": (
        ["x_verify_export", "x__compare_with_source", "x_reservoir_sample", "x_ensure_verified"],
        ["tests/test_verify.py", "tests/test_odd_records_property.py"],
    ),
}


def in_scope(module: str, key: str) -> bool:
    """Whether the mutant ``key`` (``runbook.<module>.<function>__mutmut_<n>``) is in the module's scope."""
    function = key.split(".", 2)[2].rsplit("__mutmut_", 1)[0]
    return any(fnmatch.fnmatchcase(function, f) for f in MODULES[module][0])


def sync(modules: list[str], keep_stats: bool = False) -> None:
    """Refresh the workspace from the working tree. The tests run are those of ``modules`` (another
    selection than the last run's makes mutmut forget every result, so a run's scores are printed at its
    end and recorded in BENCHMARKS.md, not kept for the next run)."""
    WORK.mkdir(exist_ok=True)
    for name in ("runbook", "tests", "notebooks", "runbook_params"):
        src = ROOT / ("lib" if name == "runbook" else name)
        dst = WORK / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    tests = sorted({t for m in modules for t in MODULES[m][1] if (ROOT / t).exists()})
    only = ", ".join(f'"runbook/{m}.py"' for m in MODULES)
    (WORK / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["runbook"]\n'
        f"only_mutate = [{only}]\n"
        'also_copy = ["tests", "notebooks", "runbook_params"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore"]\n'
        # each mutant's tests run in a process forked from a server that has only collected the tests: forked
        # from mutmut's own process (which ran the suite, with Chroma's and the servers' threads) a worker
        # could deadlock on a lock another thread held at the fork, then count as a timeout, that is killed
        'process_isolation = "forkserver"\n'
        # a mutant that makes a test wait forever (a queue never closed, a loop never left) uses no CPU, so only
        # mutmut's wall limit ends it: 6 times the tests' usual time, not the default 15 (a load mutant sat
        # 25 minutes per worker), still far above what a busy machine stretches a passing run to
        "timeout_multiplier = 6.0\n"
        # logging and messages that only decorate an error are not behaviour worth a test each
        'do_not_mutate_patterns = ["^\\\\s*log\\\\.", "progress=", "desc="]\n'
        "\n[tool.pytest.ini_options]\n"
        'testpaths = ["tests"]\n'
        'markers = ["slow: takes more than a few seconds"]\n',
        encoding="utf-8",
    )
    # mutmut re-collects its test-to-function map only for tests it has not seen: a function added since (or a
    # test that now reaches another function) would keep a stale map and its mutants run too few tests. The
    # map is made afresh each run (the runs below name their mutants, so mutmut re-tests them all anyway).
    if not keep_stats:
        (WORK / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    # the demo's embedding cache is read, not rebuilt, by the mutated tree's tests
    data = WORK / "mutants" / "data"
    data.parent.mkdir(exist_ok=True)
    if not data.exists() and (ROOT / "data").exists():
        data.symlink_to(ROOT / "data")


def _functions(path: Path) -> dict[str, str]:
    """Each function's source in ``path``, by mutmut's name for it (``x_f``, ``xǁClassǁmethod``)."""
    src = path.read_text(encoding="utf-8")
    out = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out[f"x_{node.name}"] = ast.get_source_segment(src, node)
        elif isinstance(node, ast.ClassDef):
            for f in node.body:
                if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef):
                    out[f"xǁ{node.name}ǁ{f.name}"] = ast.get_source_segment(src, f)
    return out


def recheck_names(module: str) -> list[str]:
    """What ``--recheck`` runs again for ``module``: the last run's survivors and unchecked mutants, and every
    mutant of a function in scope whose code changed (or that is new) since that run (its mutants are
    numbered anew)."""
    last = WORK / "runbook" / f"{module}.py"
    if not last.exists():
        raise SystemExit(f"--recheck {module}: no earlier run in {WORK}; run it whole first")
    before, now = _functions(last), _functions(ROOT / "lib" / f"{module}.py")
    changed = [  # a function new since that run counts as changed: none of its mutants ran
        f for f in now if before.get(f) != now[f] and in_scope(module, f"runbook.{module}.{f}")
    ]
    rows = scores([module])[0]
    kept = [k.split()[0] for k in rows.get("survivors", [])]
    kept = [k for k in kept if k.split(".", 2)[2].rsplit("__mutmut_", 1)[0] not in changed]
    meta = json.loads((WORK / "mutants" / "runbook" / f"{module}.py.meta").read_text())
    unchecked = [k for k, c in meta["exit_code_by_key"].items() if c is None and in_scope(module, k)]
    return sorted(set(kept + unchecked)) + [f"runbook.{module}.{f}__mutmut_*" for f in changed]


def scores(modules: list[str]) -> list[dict]:
    from mutmut.stats import status_by_exit_code

    rows = []
    for m in modules:
        meta = WORK / "mutants" / "runbook" / f"{m}.py.meta"
        if not meta.exists():
            rows.append({"module": m, "error": "no results (not run yet)"})
            continue
        codes = {k: c for k, c in json.loads(meta.read_text())["exit_code_by_key"].items() if in_scope(m, k)}
        status = {k: status_by_exit_code[c] for k, c in codes.items()}
        counted = [k for k, s in status.items() if s not in ("skipped", "not checked")]
        killed = sum(1 for k in counted if status[k] in ("killed", "timeout"))
        # as mutmut's own score: a mutant no test reaches counts against the score
        survivors = sorted(k for k in counted if status[k] not in ("killed", "timeout"))
        rows.append(
            {
                "module": m,
                "mutants": len(codes),
                "killed": killed,
                "survived": sum(1 for k in survivors if status[k] == "survived"),
                "no tests": sum(1 for k in survivors if status[k] == "no tests"),
                # killed by mutmut's wall/CPU limit (a mutant that loops); listed so a stall shows
                "timeouts": sum(1 for k in counted if status[k] == "timeout"),
                "not checked": sum(1 for s in status.values() if s == "not checked"),
                # a run cut short leaves mutants not checked: no score then, rather than a flattering one
                "score %": round(100 * killed / len(counted), 1)
                if counted and not any(s == "not checked" for s in status.values())
                else None,
                "survivors": [f"{k} ({status[k]})" for k in survivors],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    global WORK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"modules to mutate (default: {' '.join(MODULES)})")
    ap.add_argument("--max-children", type=int, default=2, help="parallel test processes (default 2)")
    ap.add_argument(
        "--work",
        default=str(WORK),
        help="scratch workspace (default .mutants/); give each of two runs side by side its own",
    )
    ap.add_argument(
        "--recheck",
        action="store_true",
        help="run again only the last run's survivors and unchecked mutants (and every mutant of a function "
        "changed since): after writing the tests that kill them",
    )
    ap.add_argument("--survivors", action="store_true", help="only print the scores and the survivors")
    ap.add_argument("--diffs", action="store_true", help="with --survivors: show each survivor's change")
    args = ap.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    modules = args.modules or list(MODULES)
    WORK = Path(args.work).resolve()
    if not args.survivors:
        names = (
            [n for m in modules for n in recheck_names(m)]
            if args.recheck
            else [f"runbook.{m}.{f}__mutmut_*" for m in modules for f in MODULES[m][0]]
        )
        sync(modules, keep_stats=args.recheck)
        # subprocesses (notebook kernels, servers) import the unmutated library: a mutant is judged by the
        # tests that reach it in-process
        env = dict(os.environ)
        mutmut = Path(sys.executable).with_name("mutmut")
        cmd = [str(mutmut), "run", "--max-children", str(args.max_children), *names]
        # mutmut's workers outlive an interrupted parent: run it in a process group of its own, ended whole
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below runs
        proc = subprocess.Popen(cmd, cwd=WORK, env=env, start_new_session=True)
        try:
            proc.wait()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    rows = scores(modules)
    for r in rows:
        surv = r.pop("survivors", [])
        print(json.dumps(r, ensure_ascii=False))
        for s in surv:
            print("   survived:", s)
            if args.diffs:
                show = subprocess.run(
                    [str(Path(sys.executable).with_name("mutmut")), "show", s.split()[0]],
                    cwd=WORK,
                    capture_output=True,
                    text=True,
                )
                lines = [x for x in show.stdout.splitlines() if x[:1] in "+-" and x[:3] not in ("+++", "---")]
                print("\n".join("      " + x for x in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
