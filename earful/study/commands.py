"""Sub-commands: study plan | run | report | merge | status."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("earful.study")


def _plan(args: argparse.Namespace) -> int:
    from earful.study.config import finite_positive, load_study
    from earful.study.plan import plan_table
    from earful.study.run import check_environment, check_recipes

    study = load_study(args.study, args.overrides)
    if args.throughput is not None and not finite_positive(args.throughput):
        raise ValueError(f"--throughput {args.throughput}: expected audio seconds a second per device, a finite "
                         "number > 0")
    check_recipes(study)
    try:  # the run refuses these before any training; a plan made on another machine than the run's is no error
        check_environment(study, Path.cwd())
    except (ValueError, RuntimeError, OSError) as e:
        log.warning("`earful study run` on this machine would stop before any training: %s", e)
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


def _merge(args: argparse.Namespace) -> int:
    from earful.study.merge import describe, merge_studies

    log.info("%s", describe(merge_studies(args.sources, args.out, weights=not args.without_weights), args.out))
    return 0


def _status(args: argparse.Namespace) -> int:
    from earful.study.status import study_status

    log.info("%s", study_status(args.out))
    return 0


STUDY_HELP = ("a study YAML file, or the name of one of earful's: demo, cpu-paper, paper, gpu... (the files of "
              "studies/ in a checkout, earful/configs/studies/ in the package)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="the batch-size study: plan, run, report, merge, status")
    ss = p.add_subparsers(dest="study_command", required=True)
    q = ss.add_parser("plan", help="print the table of runs and their estimated cost")
    q.add_argument("study", help=STUDY_HELP)
    q.add_argument("overrides", nargs="*", help="key=value overrides")
    q.add_argument("--throughput", type=float, default=None, help="audio seconds per second per device")
    q.set_defaults(func=_plan)
    q = ss.add_parser(
        "run", help="run (or continue) the whole study and write its report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Plan the runs, pre-train the grid, then fine-tune, evaluate, probe and measure gradient noise\n"
                    "as the study asks, and write OUT/report/report.md.\n\n"
                    "Run it again on the same --out to continue: finished stages are kept, an interrupted run\n"
                    "resumes from its checkpoint. Once something in OUT was trained with it, the recipe may only\n"
                    "grow: grid entries, probes, finetune.baselines / checkpoints / label_sets /\n"
                    "milestone_label_sets and test splits (corpus.test) may be added; a changed or removed\n"
                    "setting is refused, naming it (docs/paper-at-cpu-scale.md, \"How a study continues\").\n"
                    "SIGTERM / SIGUSR1 stop it after each running training checkpoints (status 4).",
        epilog="examples:\n  earful study run studies/demo.yaml --out runs/demo   # or: earful study run demo ...\n"
               "  earful study run studies/cpu-paper.yaml --out runs/cpu-paper jobs=1 'seeds=[1,2,3,4]'\n"
               "  earful study run my.yaml --out runs/my 'grid=[8, 16, 32]' pretrain_overrides=[threads=2]")
    q.add_argument("study", help=STUDY_HELP)
    q.add_argument("overrides", nargs="*", help="key=value overrides of the study's settings (dotted keys, YAML "
                                                "values: corpus.dir=D, 'seeds=[1,2]', jobs=2)")
    q.add_argument("--out", required=True, help="study output folder (a rerun continues it)")
    q.set_defaults(func=_run)
    q = ss.add_parser("report", help="(re)write report.md, CSVs and plots from a study folder")
    q.add_argument("out", help="study output folder")
    q.set_defaults(func=_report)
    q = ss.add_parser(
        "merge", help="merge the finished work of study folders into one (seeds run on several machines)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Copy the finished work of each SOURCE study folder (pre-trainings, fine-tunings, evaluations,\n"
                    "probes, gradient noise) into OUT, a new study folder or one of the same study. The folders must\n"
                    "hold the same recipe (or one that grew, as `earful study run` lets a study grow); a unit of\n"
                    "work two folders hold with different results is refused, naming both. Unfinished runs are\n"
                    "not merged. Then `earful study run STUDY.yaml --out OUT` (with every seed) writes the results\n"
                    "and the report: it reads the finished work and does none of it again.",
        epilog="examples:\n  earful study merge /mnt/machine-a/runs/cpu-paper /mnt/machine-b/runs/cpu-paper --out "
               "runs/cpu-paper\n  earful study merge runs/cpu-paper --out results/cpu-paper --without-weights   "
               "# the results, a few MB")
    q.add_argument("sources", nargs="+", help="study folders (each an --out of `earful study run`)")
    q.add_argument("--out", required=True, help="the study folder to merge into (made if need be)")
    q.add_argument("--without-weights", action="store_true",
                   help="leave the checkpoints' weights and training states out (the report needs none), but "
                        "those of runs whose planned work is not finished (named); a stage added later that needs "
                        "them is refused")
    q.set_defaults(func=_merge)
    q = ss.add_parser("status", help="how far a study folder has come: each run's step and whether a process "
                                     "still runs it, the finished work (reads no result, runs nothing)")
    q.add_argument("out", help="study output folder")
    q.set_defaults(func=_status)
