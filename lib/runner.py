"""Run the numbered notebooks headless with papermill; every run is a new, immutable audit folder.

``outputs/<UTC timestamp>-<params name>/`` holds the executed ``NN_<phase>.ipynb``, their code-hidden
pages (``runbook.report``: verdict first), ``summary.html``, ``index.html``, ``manifest.json`` (params and
sha256, resolved parameters, git commit, package versions, per-phase status, verdicts and timings) and the
phases' hand-off records. When the run ends the manifest is sealed with every file's sha256 and the sha256
of the previous run's manifest (``runbook.audit``).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import approvals, atomic, audit, config, credentials, kernels, plugins, run_folder
from .errors import RunbookError
from .params import check_params
from .paths import NOTEBOOKS_DIR, PROJECT_ROOT, resolve


class RunFailed(RunbookError, RuntimeError):
    def __init__(self, message: str, run_dir: Path | None = None):
        super().__init__(message)
        self.run_dir = run_dir


class AwaitingApproval(RunbookError, RuntimeError):
    """The run stopped after phase 05 on purpose: a person decides go / no-go (not a failure)."""

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


class RunInterrupted(RunbookError, RuntimeError):
    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


CUTOVER_PHASE = "06"
# what the runner itself rewrites in a run folder while it runs (phases never write these)
RUNNER_FILES = ("manifest.json", "index.html", "summary.html", "glossary.html", "assets", "STOP")
DECISION_PHASE = "05"


@dataclass
class Phase:
    number: str
    name: str
    path: Path

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass
class RunResult:
    run_dir: Path
    phases: list[dict] = field(default_factory=list)
    ok: bool = True


def discover(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Phase]:
    phases = []
    for p in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        phases.append(Phase(p.name[:2], p.stem[3:], p))
    return phases


def select(phases: list[Phase], only: list[str] | None = None, from_: str | None = None) -> list[Phase]:
    numbers = {p.number for p in phases}
    for n in (only or []) + ([from_] if from_ else []):
        if n.zfill(2) not in numbers:
            raise config.ParameterError(f"no phase {n}: the phases are {', '.join(sorted(numbers))}")
    if only:
        wanted = {n.zfill(2) for n in only}
        return [p for p in phases if p.number in wanted]
    if from_:
        return [p for p in phases if p.number >= from_.zfill(2)]
    return phases


def _approval_for(
    params: dict, params_path: Path, approve: str, phases: list[Phase], dry_run: bool
) -> tuple[str, list[Phase], bool]:
    """(approval text, phases to run, stop after 05 for a decision). A cutover needs a human go."""
    cutting = (
        any(p.number == CUTOVER_PHASE for p in phases)
        and not dry_run
        and params.get("direction", "cutover") == "cutover"
    )
    if approve:
        text = approvals.check_approval(approve, params)
        return text, [p for p in phases if p.number >= CUTOVER_PHASE], False
    if not cutting:
        return "", phases, False
    if params.get("auto_approve") is True:
        return f"auto-approved by the params file {params_path.name} (auto_approve: true)", phases, False
    if any(p.number == DECISION_PHASE for p in phases):
        return "", phases, True
    raise config.ParameterError(
        f"phase {CUTOVER_PHASE} switches the backend: it runs only with a go, "
        "python -m runbook run <params> --approve <run id of a run whose phase 05 passed>"
    )


class _Interrupts:
    """Ctrl-C / SIGTERM during a phase: the kernel is interrupted (so a cutover rolls back in its cell),
    a STOP file in the run folder tells phase 06 not to start a step (the kernel ignores SIGINT while it
    starts or between cells), and the run stops after that phase, recorded as interrupted. Only a third
    signal stops at once: a rollback in progress is not cut short by an impatient second Ctrl-C."""

    def __init__(self, run_dir: Path | None = None):
        self.signals: list[str] = []
        self._old = {}
        self.run_dir = run_dir

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, h in self._old.items():
            signal.signal(sig, h)

    def _on_signal(self, signum, frame):
        import signal

        self.signals.append(signal.Signals(signum).name)
        if len(self.signals) > 2:
            raise KeyboardInterrupt
        if self.run_dir is not None:
            (self.run_dir / "STOP").write_text(self.signals[0] + "\n", encoding="utf-8")
        if len(self.signals) > 1:
            print(
                "[runner] still finishing the phase (a rollback is never cut short); a third signal abandons it"
            )
            return
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                if any("ipykernel" in part for part in child.cmdline()):
                    child.send_signal(signal.SIGINT)
            except psutil.Error:
                pass


def run(
    params_path: str | Path,
    only: list[str] | None = None,
    from_: str | None = None,
    prepare_only: bool = False,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    log=print,
    approve: str = "",
    rollback: bool = False,
) -> RunResult:
    params_path = resolve(params_path)
    params = config.load_params(params_path)
    if "approval" in params:
        raise config.ParameterError(
            f"{params_path}: approval is set by the runner from --approve <run id>; remove it from the params file"
        )
    if rollback:
        params["direction"] = "rollback"
        only, from_ = [CUTOVER_PHASE], None
    credentials.check_parameters(params)
    all_phases = discover(notebooks_dir)
    if not all_phases:
        raise RunFailed(f"no numbered notebooks in {notebooks_dir}")
    declared = {p.stem: config.notebook_parameters(p.path) for p in all_phases}
    for stem, decl in declared.items():
        missing = [n for n in config.RUNNER_PARAMETERS if n not in decl]
        if missing:
            raise RunFailed(f"{stem}.ipynb: its parameters cell must declare {', '.join(missing)}")
    per_nb = config.split_by_notebook(params, declared)
    check_params(params, declared, source=str(params_path))  # before anything runs or is written
    phases = select(all_phases, only, from_)
    dry_run = params.get("dry_run") is True
    approval, phases, decide_after_05 = _approval_for(params, params_path, approve, phases, dry_run)
    if not phases:
        raise config.ParameterError("no phase left to run")

    run_dir = run_folder.new_run_dir(params_path.stem)
    log(f"run folder: {run_dir}")
    manifest = {
        "run_id": run_dir.name,
        "params_file": str(
            params_path.relative_to(PROJECT_ROOT) if params_path.is_relative_to(PROJECT_ROOT) else params_path
        ),
        "params_sha256": config.sha256_file(params_path),
        "parameters": params,
        "git": run_folder.git_commit(),
        "packages": run_folder.package_versions(),
        "run_by": run_folder.run_by(),
        "previous_run": audit.previous_run(run_dir, str(params.get("base_path") or "")),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "prepare_only": prepare_only,
        "approval": approval,
        "status": "running",
        "phases": [{"notebook": p.stem, "status": "pending"} for p in phases],
    }
    atomic.write_json(run_dir / "manifest.json", manifest)
    result = RunResult(run_dir)

    if prepare_only:
        import papermill

        for i, ph in enumerate(phases):
            out = run_dir / f"{ph.stem}.ipynb"
            papermill.execute_notebook(
                str(ph.path),
                str(out),
                parameters={
                    **per_nb[ph.stem],
                    "run_dir": str(run_dir),
                    **({"approval": approval} if "approval" in declared[ph.stem] else {}),
                },
                prepare_only=True,
                kernel_name=kernels.KERNEL_NAME,
            )
            manifest["phases"][i].update(status="prepared")
        manifest.update(status="prepared", finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        run_folder.finish_folder(run_dir, manifest)
        log(
            f"prepared {len(phases)} notebook(s) in {run_dir}: "
            + ", ".join(f"{ph.stem}.ipynb" for ph in phases)
            + "; open them in JupyterLab with the 'runbook' kernel (summary.html lists them)"
        )
        return result

    import papermill
    from papermill.exceptions import PapermillExecutionError

    kernel = kernels.ensure_kernel()
    os.environ["RUNBOOK_HEADLESS"] = "1"  # plain-text progress bars in executed notebooks
    env_names = {v for k, v in params.items() if k.endswith("_env") and isinstance(v, str) and v}
    emulator = (
        plugins.rehearsal("emulator_corpus").start_local_server(params)
        if params.get("emulator_corpus")
        else None
    )
    failure = None
    stopped = ""  # "awaiting approval" | "interrupted"
    layout = _migration_layout(params, dry_run)
    interrupts = _Interrupts(run_dir)
    earlier_files: dict[str, str] = {}
    try:
        interrupts.__enter__()
        extra = {"approval": approval}
        if emulator is not None:
            extra["source_base_url"] = emulator.url
            extra["gemini_base_url"] = params.get("gemini_base_url") or emulator.url  # Gemini's stand-in too
            manifest["emulator"] = {"url": emulator.url, "corpus": params.get("emulator_corpus")}
        for i, ph in enumerate(phases):
            entry = manifest["phases"][i]
            if interrupts.signals:  # a signal between phases: the next one never starts
                stopped, failure = "interrupted", failure or f"{interrupts.signals[0]} before {ph.stem}"
                break
            nb_params = {**per_nb[ph.stem], "run_dir": str(run_dir)}
            nb_params.update({k: v for k, v in extra.items() if k in declared[ph.stem]})
            out = run_dir / f"{ph.stem}.ipynb"
            t0 = time.time()
            entry.update(status="running", started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
            atomic.write_json(run_dir / "manifest.json", manifest)
            log(f"[{ph.number}] {ph.stem} ...")
            try:
                papermill.execute_notebook(
                    str(ph.path),
                    str(out),
                    parameters=nb_params,
                    kernel_name=kernel,
                    cwd=str(notebooks_dir),
                    progress_bar=False,
                    log_output=False,
                    config=kernels.kernel_config(),
                )
                entry["status"] = "ok"
            except PapermillExecutionError as e:
                entry["status"] = "interrupted" if e.ename == "KeyboardInterrupt" else "failed"
                evalue = credentials.scrub(str(e.evalue), credentials.secret_env_values(env_names))
                entry["error"] = f"cell {e.cell_index} (execution count {e.exec_count}): {e.ename}: {evalue}"
                failure = f"phase {ph.stem} {entry['status']} in {out.name}, {entry['error']}"
            except KeyboardInterrupt:
                entry["status"] = "interrupted"
                entry["error"] = "interrupted three times: stopped at once"
                failure = f"phase {ph.stem} interrupted"
            except Exception as e:  # kernel died, notebook unreadable, ...
                entry["status"] = "failed"
                entry["error"] = credentials.scrub(
                    f"{type(e).__name__}: {e}", credentials.secret_env_values(env_names)
                )
                failure = f"phase {ph.stem} could not run: {entry['error']}"
            entry["duration_s"] = round(time.time() - t0, 1)
            entry["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            # the executed notebook, its hand-off and anything else the phase wrote in the run folder
            try:
                leaked = credentials.scrub_files(run_dir, credentials.secret_env_values(env_names))
            except credentials.SecretInBinaryFile as e:  # text is masked; a binary file stops the run
                leaked = {}
                entry["status"] = "failed"
                entry["error"] = str(e)
                failure = f"phase {ph.stem}: {e}"
            if leaked:
                entry["secrets_scrubbed"] = sum(leaked.values())
                entry["secrets_scrubbed_from"] = sorted(leaked)
            handoff_file = run_dir / "handoff" / f"{ph.stem}.json"
            if handoff_file.exists():
                entry["handoff"] = f"handoff/{handoff_file.name}"
            # a phase writes only its own records: what earlier phases left in the folder stays as it was
            now = audit.file_hashes(run_dir)
            touched = run_folder.changed_since(earlier_files, now)
            if touched and entry["status"] == "ok":
                entry["status"] = "failed"
                entry["error"] = (
                    f"{ph.stem} changed what an earlier phase wrote in the run folder ({', '.join(touched)}): "
                    "a phase writes only its own records; fix the phase, then run it again"
                )
                failure = f"phase {ph.stem}: {entry['error']}"
            run_folder.render_phase(run_dir, manifest, i)
            earlier_files = {
                rel: sha
                for rel, sha in audit.file_hashes(run_dir).items()
                if rel.split("/")[0] not in RUNNER_FILES
            }
            if interrupts.signals and entry["status"] == "ok":
                failure = f"{' and '.join(interrupts.signals)} during {ph.stem}: the run stopped after it"
            if interrupts.signals:
                stopped = "interrupted"
                entry["interrupted_by"] = interrupts.signals[0]
            _log_phase_end(layout, ph.stem, entry)
            result.phases.append(entry)
            atomic.write_json(run_dir / "manifest.json", manifest)
            log(f"[{ph.number}] {entry['status']} in {entry['duration_s']} s")
            if failure:
                break
            if decide_after_05 and ph.number == DECISION_PHASE:
                stopped = "awaiting approval"
                manifest["decision"] = _decision(run_dir, params_path)
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        failure = failure or "interrupted"
        for entry in manifest["phases"]:
            if entry["status"] == "running":
                entry.update(status="interrupted", error="interrupted three times: stopped at once")
                _log_phase_end(layout, entry["notebook"], entry)
    finally:
        interrupts.__exit__()
        if params.get("service_mode") == "reference" and params.get("base_path"):
            plugins.rehearsal("service_mode: reference").stop_reference_service(params["base_path"])
        if emulator is not None:
            emulator.stop()
        manifest["status"] = stopped or ("failed" if failure else "ok")
        manifest["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        manifest["duration_s"] = round(
            (
                dt.datetime.fromisoformat(manifest["finished_at"])
                - dt.datetime.fromisoformat(manifest["started_at"])
            ).total_seconds(),
            1,
        )
        run_folder.finish_folder(run_dir, manifest)
    if stopped == "interrupted":
        result.ok = False
        raise RunInterrupted(f"run interrupted: {failure}\nsee {run_dir / 'summary.html'}", run_dir)
    if failure:
        result.ok = False
        raise RunFailed(failure + f"\nsee {run_dir / 'summary.html'}", run_dir)
    if stopped == "awaiting approval":
        d = manifest["decision"]
        raise AwaitingApproval(
            f"awaiting approval: phase 05 passed for {d['collection']}; nothing was switched.\n"
            f"Read {run_dir / 'summary.html'}, then say go with:\n  {d['approve with']}",
            run_dir,
        )
    return result


def _migration_layout(params: dict, dry_run: bool):
    """Where phase ends are logged: the migration's own log, never in a dry run (it touches nothing)."""
    from .paths import Layout

    if dry_run or not params.get("base_path"):
        return None
    return Layout.from_params(str(params["base_path"]))


def _log_phase_end(layout, stem: str, entry: dict) -> None:
    """``migration.log`` records every phase's end: ok, failed (with the message), rolled back, interrupted."""
    from . import runlog

    if layout is None or not layout.base.exists():
        return
    status, error = entry["status"], entry.get("error") or ""
    if status == "failed" and "Automatic rollback" in error:
        incomplete = "Act now" in error or "NOT byte-identical" in error or "UNVERIFIED" in error
        status = "failed, rollback INCOMPLETE" if incomplete else "failed, rolled back"
    runlog.log(
        layout, stem, f"phase end: {status}", seconds=entry.get("duration_s"), error=entry.get("error", "")
    )


def _decision(run_dir: Path, params_path: Path) -> dict:
    h05 = atomic.read_json(run_dir / "handoff" / f"{DECISION_PHASE}_ab_compare.json")
    rel = params_path.relative_to(PROJECT_ROOT) if params_path.is_relative_to(PROJECT_ROOT) else params_path
    return {
        "status": "awaiting approval: nothing was switched",
        "phase 05 gates": "passed" if h05.get("passed") else "FAILED",
        "collection": h05.get("collection"),
        "export sha256": h05.get("export_manifest_sha256"),
        "approve with": f"python -m runbook run {rel} --approve {run_dir.name}",
    }
