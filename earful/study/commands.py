"""Sub-commands: study plan | run | report."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("earful.study")


def _plan(args: argparse.Namespace) -> int:
    from earful.study.config import load_study
    from earful.study.plan import plan_table
    from earful.study.run import check_recipes

    study = load_study(args.study, args.overrides)
    check_recipes(study)
    _, table = plan_table(study, args.throughput)
    log.info("study %s (%s)\n%s", study.name, study.mode, table)
    return 0


def _run(args: argparse.Namespace) -> int:
    from earful.study.config import load_study
    from earful.study.pool import StudyStopped
    from earful.study.run import run_study
    from earful.train.engine import EXIT_STOPPED

    study = load_study(args.study, args.overrides)
    try:
        report = run_study(study, args.out)
    except StudyStopped as e:
        log.warning("%s", e)
        return EXIT_STOPPED
    log.info("report written to %s", report)
    return 0


def _report(args: argparse.Namespace) -> int:
    from earful.study.report import build_report

    log.info("report written to %s", build_report(args.out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="the batch-size study: plan, run, report")
    ss = p.add_subparsers(dest="study_command", required=True)
    q = ss.add_parser("plan", help="print the table of runs and their estimated cost")
    q.add_argument("study", help="study YAML (see studies/)")
    q.add_argument("overrides", nargs="*", help="key=value overrides")
    q.add_argument("--throughput", type=float, default=None, help="audio seconds per second per device")
    q.set_defaults(func=_plan)
    q = ss.add_parser("run", help="run (or continue) the whole study and write its report")
    q.add_argument("study")
    q.add_argument("overrides", nargs="*")
    q.add_argument("--out", required=True, help="study output folder")
    q.set_defaults(func=_run)
    q = ss.add_parser("report", help="(re)write report.md, CSVs and plots from a study folder")
    q.add_argument("out", help="study output folder")
    q.set_defaults(func=_report)
