"""``python -m runbook``: run the runbook's phases, write one notebook's parameters for plain papermill,
verify an export, audit a run folder.

The rehearsal services (the LlamaCloud-compatible server, the backend stand-in) have their own command,
``python -m runbook.rehearsal``."""

from __future__ import annotations

import argparse
import sys

# exit status of a run that stopped after phase 05 for a go / no-go: not a failure, not done either
EXIT_AWAITING_APPROVAL = 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runbook", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the numbered notebooks with a params file")
    r.add_argument("params", help="a params file, e.g. runbook_params/demo.yaml")
    r.add_argument("--only", action="append", metavar="NN", help="run only this phase (repeatable)")
    r.add_argument("--from", dest="from_", metavar="NN", help="run from this phase on")
    r.add_argument(
        "--prepare-only", action="store_true", help="write parameterised notebooks, execute nothing"
    )
    r.add_argument(
        "--approve",
        metavar="RUN_ID",
        default="",
        help="the go for a run that stopped at phase 05 awaiting approval: runs 06 onward",
    )
    r.add_argument(
        "--rollback", action="store_true", help="phase 06 with direction: rollback (back to the cloud)"
    )
    v = sub.add_parser("verify-export", help="verify an export folder (checksums, counts, vectors)")
    v.add_argument("export_dir")
    v.add_argument("--empty-texts", default="load", help="load | skip (as phase 03's empty_texts)")
    v.add_argument(
        "--duplicate-chunk-ids",
        default="qualify",
        help="qualify | refuse (as phase 03's duplicate_chunk_ids)",
    )
    pp = sub.add_parser(
        "params",
        help="one notebook's parameters from a params file, as YAML for plain papermill's -f",
        description="Writes the parameters phase NN declares, from the params file over defaults.yaml, and "
        "stops on a name no notebook declares. Then: papermill notebooks/<NN_name>.ipynb out.ipynb -f <file>",
    )
    pp.add_argument("params", help="a params file, e.g. runbook_params/demo.yaml")
    pp.add_argument("phase", help="NN (e.g. 03) or the notebook's name (03_migrate)")
    pp.add_argument("-o", "--output", default="", help="write to this file (default: print)")
    a = sub.add_parser(
        "audit", help="check a run folder against its manifest (every file's sha256, the chain of runs)"
    )
    a.add_argument("run", help="a run folder, or a run id under outputs/")
    args = ap.parse_args(argv)

    if args.cmd == "run":
        from . import config, credentials, runner

        try:
            res = runner.run(
                args.params,
                only=args.only,
                from_=args.from_,
                prepare_only=args.prepare_only,
                approve=args.approve,
                rollback=args.rollback,
            )
        except (config.ParameterError, credentials.SecretParameterError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except runner.AwaitingApproval as e:
            print(str(e))
            return EXIT_AWAITING_APPROVAL
        except runner.RunInterrupted as e:
            print(f"interrupted: {e}", file=sys.stderr)
            return 130
        except runner.RunFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"run complete: {res.run_dir}/summary.html")
        return 0
    if args.cmd == "verify-export":
        from . import records, verify

        try:
            policy = records.Policy(args.empty_texts, args.duplicate_chunk_ids)
        except records.PolicyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        report = verify.verify_export(args.export_dir, policy=policy)
        print(report.to_string())
        return 0 if report.ok else 1
    if args.cmd == "params":
        import yaml

        from . import atomic, config, credentials

        try:
            nb, values = config.parameters_for(args.params, args.phase)
        except (config.ParameterError, credentials.SecretParameterError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        text = f"# parameters of {nb.name} from {args.params} (python -m runbook params)\n" + yaml.safe_dump(
            values, allow_unicode=True, sort_keys=False
        )
        if args.output:
            atomic.write_text(args.output, text)
            print(f"wrote {len(values)} parameters of {nb.name} to {args.output}", file=sys.stderr)
        else:
            print(text, end="")
        return 0
    if args.cmd == "audit":
        from pathlib import Path

        from . import audit
        from .paths import outputs_root

        run_dir = Path(args.run)
        if not run_dir.is_dir() and (outputs_root() / args.run).is_dir():
            run_dir = outputs_root() / args.run
        if not run_dir.is_dir():
            print(f"error: {args.run}: no such run folder (nor under {outputs_root()})", file=sys.stderr)
            return 2
        report = audit.audit(run_dir)
        print(report.to_string())
        return 0 if report.ok else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
