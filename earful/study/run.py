"""``earful study run``: pre-train every grid run, fine-tune the chosen checkpoints on every label set
(plus from-scratch baselines), evaluate on the test splits, and write the report.

Resumable at every level: a finished stage leaves ``done.json`` and is skipped; an interrupted
pre-training or fine-tuning run continues from its latest checkpoint. Results are rebuilt from the
evaluation summaries each time, so a study killed mid-way ends with the same report.

::

    OUT/study.json                  the study config and its plan
    OUT/pretrain/<run>/             pre-training run directories (+ done.json)
    OUT/finetune/<run>__<ckpt>__<labels>/   fine-tuning run directories (+ done.json)
    OUT/eval/<run>__<ckpt>__<labels>/       evaluation hypotheses and summary.json
    OUT/runs.jsonl, results.jsonl   what the report reads
    OUT/report/                     report.md, CSVs, plots
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from earful.checkpoint import atomic_write_json
from earful.config import to_dict
from earful.study.config import PlannedRun, StudyConfig, plan_runs
from earful.study.plan import plan_table
from earful.study.report import build_report

log = logging.getLogger(__name__)


def ensure_corpus(study: StudyConfig, root: Path) -> None:
    train = Path(study.corpus.path(study.corpus.train, root))
    if train.exists():
        return
    if study.corpus.synth is None:
        raise FileNotFoundError(f"{train}: the study's training manifest does not exist (and no corpus.synth given)")
    from earful.data.synth import synthesize

    s = study.corpus.synth
    out = Path(study.corpus.path(".", root))
    log.info("building the built-in corpus in %s (%.2f h, %s domain)", out, s.hours, s.domain)
    synthesize(out, s.hours, domain=s.domain, seed=s.seed, labelled_fraction=s.labelled_fraction)


def _done(path: Path) -> dict[str, Any] | None:
    p = path / "done.json"
    return json.loads(p.read_text()) if p.exists() else None


def pretrain_overrides(study: StudyConfig, run: PlannedRun, root: Path) -> list[str]:
    c = study.corpus
    return [
        *study.pretrain_overrides,
        f"data.train={c.path(c.train, root)}",
        f"data.valid={c.path(c.valid, root)}" if c.valid else "data.valid=null",
        f"batch_seconds={run.batch_seconds}",
        f"device_seconds={run.device_seconds}",
        f"max_steps={run.steps}",
        f"optim.lr={run.lr}",
        "optim.lr_scaling=none",  # the study already applied its rule
        f"seed={run.seed}",
        f"ckpt_hours={json.dumps(sorted(study.milestone_hours))}",
    ]


def run_pretraining_stage(study: StudyConfig, run: PlannedRun, out: Path, root: Path) -> dict[str, Any]:
    from earful.train.config import load_pretrain_config
    from earful.train.pretrain import run_pretraining

    rdir = out / "pretrain" / run.name
    done = _done(rdir)
    if done:
        log.info("pre-training %s: done (step %d)", run.name, done["step"])
        return done
    overrides = pretrain_overrides(study, run, root)
    log.info("pre-training %s: %g s × %d steps (%.3g h), lr %.3g", run.name, run.batch_seconds, run.steps,
             run.hours, run.lr)
    if run.devices > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={run.devices}", "-m", "earful.cli",
               "pretrain", study.pretrain_config or overrides[0], *overrides, "--out", str(rdir), "--resume"]
        subprocess.run(cmd, check=True, cwd=root, env=os.environ.copy())
        summary = json.loads((rdir / "checkpoints" / "latest.json").read_text())
    else:
        cfg = load_pretrain_config(study.pretrain_config, overrides)
        summary = run_pretraining(cfg, rdir, resume=True)
    if summary.get("stopped_by"):
        raise KeyboardInterrupt(f"pre-training {run.name} stopped by {summary['stopped_by']}")
    record = {**asdict(run), "run": run.name, "step": summary["step"]}
    atomic_write_json(rdir / "done.json", record)
    return record


def checkpoints_to_finetune(study: StudyConfig, run: PlannedRun, out: Path) -> dict[str, Path]:
    ck = out / "pretrain" / run.name / "checkpoints"
    chosen: dict[str, Path] = {}
    for spec in study.finetune.checkpoints:
        if spec == "final":
            chosen["final"] = ck / f"step-{run.steps:07d}"
        elif spec == "best":
            if (ck / "best").exists():
                chosen["best"] = ck / "best"
        elif spec == "milestones":
            for h in study.milestone_hours:
                if (ck / f"hours-{h:g}").exists():
                    chosen[f"hours-{h:g}"] = ck / f"hours-{h:g}"
        else:
            raise ValueError(f"finetune.checkpoints: unknown {spec!r} (final | best | milestones)")
    return chosen


def hours_of(ckpt: Path) -> tuple[float, int]:
    p = ckpt / "trainer.json"
    if not p.exists():
        return 0.0, 0
    info = json.loads(p.read_text())
    return float(info.get("hours_padded", 0.0)), int(info.get("step", 0))


def finetune_and_evaluate(study: StudyConfig, name: str, init: Path, label_set: str, seed: int, out: Path,
                          root: Path, extra: list[str]) -> dict[str, Any]:
    from earful.eval.evaluate import evaluate
    from earful.finetune.config import load_finetune_config
    from earful.finetune.trainer import run_finetuning

    c = study.corpus
    fdir = out / "finetune" / name
    if not _done(fdir):
        overrides = [*study.finetune.overrides, *extra, f"init={init}",
                     f"data.train={c.path(c.label_sets[label_set], root)}", f"data.dev={c.path(c.dev, root)}",
                     f"seed={seed}"]
        cfg = load_finetune_config(study.finetune.config, overrides)
        log.info("fine-tuning %s", name)
        summary = run_finetuning(cfg, fdir, resume=True)
        if summary.get("stopped_by"):
            raise KeyboardInterrupt(f"fine-tuning {name} stopped by {summary['stopped_by']}")
        atomic_write_json(fdir / "done.json", {"name": name})
    edir = out / "eval" / name
    if not (edir / "summary.json").exists():
        ckpt = fdir / "checkpoints" / "best"
        if not ckpt.exists():
            ckpt = fdir
        manifests = [c.path(m, root) for m in c.test_sets().values()]
        evaluate(ckpt, manifests, edir)
    return json.loads((edir / "summary.json").read_text())


def run_study(study: StudyConfig, out_dir: str | Path, *, root: str | Path | None = None) -> Path:
    root = Path(root or Path.cwd())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ensure_corpus(study, root)
    runs, table = plan_table(study)
    atomic_write_json(out / "study.json", {**to_dict(study), "plan": table})
    log.info("study %s: %d pre-training runs\n%s", study.name, len(runs), table)
    records = [run_pretraining_stage(study, r, out, root) for r in runs]
    with open(out / "runs.jsonl.tmp", "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    os.replace(out / "runs.jsonl.tmp", out / "runs.jsonl")

    label_sets = study.finetune.label_sets or list(study.corpus.label_sets)
    unknown = [ls for ls in label_sets if ls not in study.corpus.label_sets]
    if unknown:
        raise ValueError(f"finetune.label_sets {unknown} are not in corpus.label_sets {list(study.corpus.label_sets)}")
    results: list[dict[str, Any]] = []

    def add(summary: dict[str, Any], base: dict[str, Any]) -> None:
        for split, res in summary["splits"].items():
            for decoder, r in res.items():
                if "wer" in r:
                    results.append({**base, "split": split, "decoder": decoder, "wer": r["wer"], "cer": r["cer"]})

    for run in runs:
        for ck_name, ck in checkpoints_to_finetune(study, run, out).items():
            hours, step = hours_of(ck)
            for ls in label_sets:
                name = f"{run.name}__{ck_name}__{ls}"
                summary = finetune_and_evaluate(study, name, ck, ls, run.seed, out, root, [])
                add(summary, {"pretrain": run.name, "tag": run.tag, "batch_seconds": run.batch_seconds,
                              "seed": run.seed, "checkpoint": ck_name, "hours": hours, "step": step,
                              "label_set": ls})
    for seed in study.seeds:
        first = next(r for r in runs if r.seed == seed)
        init = out / "pretrain" / first.name / "checkpoints" / "init"  # same architecture, random weights
        for base in study.finetune.baselines:
            extra = {"scratch": [], "scratch-trainable-cnn": ["freeze_feature_encoder=false"],
                     "scratch-frozen-cnn": ["freeze_feature_encoder=true"]}.get(base)
            if extra is None:
                raise ValueError(f"finetune.baselines: unknown {base!r} "
                                 "(scratch | scratch-trainable-cnn | scratch-frozen-cnn)")
            for ls in label_sets:
                name = f"{base}-seed{seed}__init__{ls}"
                summary = finetune_and_evaluate(study, name, init, ls, seed, out, root, extra)
                add(summary, {"pretrain": base, "tag": base, "batch_seconds": None, "seed": seed,
                              "checkpoint": "init", "hours": 0.0, "step": 0, "label_set": ls})
    with open(out / "results.jsonl.tmp", "w", encoding="utf-8") as f:
        for rec in results:
            f.write(json.dumps(rec) + "\n")
    os.replace(out / "results.jsonl.tmp", out / "results.jsonl")
    report = build_report(out)
    log.info("study %s finished in %.1f min; report: %s", study.name, (time.time() - t0) / 60, report)
    return report


__all__ = ["run_study", "plan_runs"]
