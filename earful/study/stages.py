"""The stages of a study, each resumable on its own: pre-train one grid run; fine-tune one checkpoint on one
label set and evaluate it. A finished stage leaves ``done.json`` (or ``summary.json``) and is skipped; an
interrupted one continues from its latest checkpoint. Run configs are built from the plan as typed objects."""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from earful.atomic import atomic_write_json
from earful.config import load_config, save_yaml
from earful.finetune.config import FinetuneConfig, load_finetune_config
from earful.pretrain.config import PretrainConfig, load_pretrain_config
from earful.probe.config import ProbeConfig
from earful.study.config import (
    OVERRIDES_FROM,
    PlannedRun,
    StudyConfig,
    cycle_minima,
    milestone_label_sets,
    unknown_checkpoints,
)
from earful.study.pool import StudyStopped
from earful.train.config import TrainingConfig
from earful.train.distributed import launched_processes
from earful.train.state import RunDir, nonfinite_stop, read_trainer_info

log = logging.getLogger(__name__)

# the from-scratch baselines: the same architecture from its random init, fine-tuned with the study's recipe
# (scratch) or with the CNN trainable / frozen whatever the recipe says
BASELINES: dict[str, dict[str, Any]] = {"scratch": {}, "scratch-trainable-cnn": {"freeze_feature_encoder": False},
                                        "scratch-frozen-cnn": {"freeze_feature_encoder": True}}


def tracked(study: StudyConfig, cfg: TrainingConfig, out: Path, name: str) -> None:
    """A run's trackers in a study: the study's ``tracking:`` if it names backends (else the recipe's own), the
    run named after its folder, grouped under the study's name, the local stores in ``OUT/tracking``."""
    t = replace(study.tracking) if study.tracking.backends else cfg.tracking
    t.group, t.name = t.group or study.name, t.name or name
    t.dir = t.dir or str((out / "tracking").resolve())
    cfg.tracking = t


def read_record(path: Path) -> Any:
    """A study folder's JSON record (a done.json, a summary, a checkpoint's model.json); one that cannot be read is
    a ValueError naming it and the way out."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); remove its folder from the study folder (its work is then "
                         "done again) or repair it") from None


def done_record(path: Path) -> dict[str, Any] | None:
    """The done.json of run folder ``path``: its record once finished, else None."""
    p = path / "done.json"
    return read_record(p) if p.exists() else None


def divergence(rdir: Path, steps: int, max_nan_steps: int) -> str:
    """Why the run in ``rdir`` diverged at its last step ``steps`` ("" when it did not, or has not got there),
    from its final checkpoint's ``trainer.json``: stopped by ``max_nan_steps`` non-finite steps in a row (the
    trainer's stop, recorded; a rerun stops there again), or its validation loss at that step not finite."""
    final = rdir / "checkpoints" / f"step-{steps:07d}"
    if not (final / "trainer.json").exists():
        return ""
    info = read_trainer_info(final)
    if nonfinite_stop(info, max_nan_steps):
        return f"{info['nan_in_a_row']} non-finite steps in a row at step {info['step']} (max_nan_steps " \
               f"{max_nan_steps})"
    valid = rdir / "valid.jsonl"
    lines = valid.read_text(encoding="utf-8").strip().splitlines() if valid.exists() else []
    last = json.loads(lines[-1]) if lines else {}
    # the validation loss, not the metric that picks best: a WER of 0 is perfect, one of NaN a validation set
    # without words
    value = last.get("loss")
    if last.get("step") == info["step"] and value is not None and not math.isfinite(float(value)):
        return f"its validation loss at step {info['step']} is {value}"
    return ""


def finished_or_diverged(train: Any, rdir: Path, steps: int, max_nan_steps: int) -> tuple[dict[str, Any], str]:
    """``train()``'s summary and why the run diverged at its last step (""). A run the trainer stops at its last
    step for non-finite steps (``TrainingStopped``, its final checkpoint written) has diverged: that is its
    result (a grid's large lr may diverge), not an error; one stopped earlier is (the study stops, naming it)."""
    from earful.train.engine import TrainingStopped

    try:
        summary = train()
    except TrainingStopped:
        why = divergence(rdir, steps, max_nan_steps)
        if not why:
            raise
        return read_trainer_info(rdir / "checkpoints" / f"step-{steps:07d}"), why
    return summary, divergence(rdir, steps, max_nan_steps) if summary.get("step", 0) >= steps else ""


def _mark_diverged(record: dict[str, Any], what: str, why: str) -> dict[str, Any]:
    if why:
        log.warning("%s diverged: %s; recorded as diverged (the report shows it and leaves it out of its "
                    "statistics)", what, why)
        return {**record, "diverged": True, "diverged_because": why}
    return record


# ---------------------------------------------------------------------- finished stages
# Each stage's own check that it has finished (then it only reads its results): the stage uses it, and so does a
# cluster launcher, which then does not submit the stage again.
def pretrained(out: Path, run: PlannedRun) -> bool:
    return done_record(out / "pretrain" / run.name) is not None


def evaluation_summary(out: Path, name: str) -> Path:
    return out / "eval" / name / "summary.json"


def evaluated(out: Path, name: str, splits: Iterable[str], lm: bool = False) -> bool:
    """Fine-tuned and evaluated on every split of ``splits`` (the evaluation comes last); with ``lm`` (a study's
    ``lm:``), decoded with the LM too."""
    return set(splits) <= evaluated_splits(out, name, "lm" if lm else None)


def planned_evaluations(study: StudyConfig, out: Path) -> list[str]:
    """The evaluations in study folder ``out`` (``eval/NAME``) of fine-tunings ``study``'s plan holds: of its
    pre-training runs' checkpoints and of its seeds' baselines. A folder rerun with fewer seeds holds those of the
    others too, which this plan never evaluates again (a test split or an LM set since is not theirs)."""
    from earful.study.config import plan_runs

    of = {r.name for r in plan_runs(study)} | {f"{base}-seed{seed}" for base in study.finetune.baselines
                                                for seed in study.seeds}
    return [d.name for d in sorted((out / "eval").glob("[!.]*")) if d.is_dir() and d.name.split("__")[0] in of]


def evaluated_splits(out: Path, name: str, decoder: str | None = None) -> set[str]:
    """The splits fine-tuning ``name`` was evaluated on (its evaluation comes last): none before it finished;
    with ``decoder`` (``lm``), those it was decoded on so."""
    path = evaluation_summary(out, name)
    if not path.exists():
        return set()
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))["splits"]
        return {split for split, res in splits.items() if decoder is None or decoder in res}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an evaluation summary ({e!r}); remove {path.parent} and rerun the study to "
                         "evaluate it again") from None


def gradvar_record(out: Path, run: PlannedRun, checkpoint: str = "final") -> Path:
    """The gradient noise record of ``run``'s ``checkpoint`` (its name in the study): ``gradvar/RUN.json`` for the
    final, ``gradvar/RUN__CHECKPOINT.json`` for another (``gradvar_checkpoints``), as fine-tunings are named."""
    return out / "gradvar" / (f"{run.name}.json" if checkpoint == "final" else f"{run.name}__{checkpoint}.json")


def gradvar_measured(out: Path, run: PlannedRun, checkpoint: str = "final") -> bool:
    return gradvar_record(out, run, checkpoint).exists()


def probe_summary(out: Path, name: str, seed: int) -> Path:
    return out / "probe" / name / f"seed-{seed}" / "summary.json"


def probed_tasks(out: Path, name: str, seed: int) -> dict[str, dict[str, float]]:
    """The metrics of each task probe seed ``seed`` has probed ``name`` on (none yet: {})."""
    path = probe_summary(out, name, seed)
    return json.loads(path.read_text()) if path.exists() else {}


def probed(study: StudyConfig, out: Path, name: str) -> bool:
    """Every probe seed of the study has probed ``name`` on every task (a rerun may add seeds and tasks)."""
    return all(set(study.probes) <= set(probed_tasks(out, name, seed)) for seed in study.probe_seeds)


# the stages of a study folder, each a subfolder, and what their units are called
STAGES = {"pretrain": "pre-trainings", "finetune": "fine-tunings", "eval": "evaluations", "probe": "probes",
          "gradvar": "gradient noise records"}


def finished_records(out: Path) -> list[Path]:
    """The file that marks each finished unit of work in study folder ``out`` as finished, its result (a unit is
    the record's folder, a gradient noise record itself): pre-training and fine-tuning runs (``done.json``),
    evaluations and probes, one probe seed each (``summary.json``), gradient noise records."""
    # "[!.]*": not a temporary copy (a merge's .merge-*, killed before it renamed it into place)
    return [*(done for stage in ("pretrain", "finetune") for done in sorted((out / stage).glob("[!.]*/done.json"))),
            *sorted((out / "eval").glob("[!.]*/summary.json")),
            *sorted((out / "probe").glob("[!.]*/seed-*/summary.json")), *sorted((out / "gradvar").glob("[!.]*.json"))]


def runs_unfinished(out: Path) -> list[Path]:
    """The pre-training and fine-tuning runs of study folder ``out`` that have a checkpoint (but ``init``, which a
    fresh start writes again) and are not finished."""
    return [rdir for stage in ("pretrain", "finetune") for rdir in sorted((out / stage).glob("[!.]*"))
            if rdir.is_dir() and not (rdir / "done.json").exists() and RunDir(rdir).checkpoints()]


def trained_outputs(out: Path) -> list[Path]:
    """What study folder ``out`` holds that was trained or measured: unfinished runs and finished work."""
    return [*runs_unfinished(out), *finished_records(out)]


# ---------------------------------------------------------------------- pre-training
def pretrain_recipe(study: StudyConfig) -> PretrainConfig:
    """The study's pre-training recipe as its YAML and overrides give it, before any run's settings."""
    return load_pretrain_config(study.pretrain_config, study.pretrain_overrides,
                                overrides_from=OVERRIDES_FROM["pretrain"])


def _set_each(cfg: TrainingConfig, settings: dict[str, tuple[Any, str]]) -> None:
    """Set each dotted training key of ``settings`` (``optim.lr``) to its value, over ``cfg``'s recipe."""
    for key, (value, _) in settings.items():
        *sections, name = key.split(".")
        node: Any = cfg
        for section in sections:
            node = getattr(node, section)
        setattr(node, name, value)


@contextmanager
def recipe_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op threads at a recipe's ``threads`` (0: as they are) for a stage that trains nothing (the
    gradient noise, the probes' features, an evaluation), as the trainer sets them for a training; restored after.
    They had run on whatever the process was left with: 1 after a training of the study's (``threads=1``), torch's
    default in a rerun with none left to do, so a study cut and rerun gave other numbers than one uninterrupted."""
    import torch

    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pretrain_run_settings(study: StudyConfig, run: PlannedRun, root: Path) -> dict[str, tuple[Any, str]]:
    """What the study sets in each run's pre-training config, over its recipe: ``{training key: (value, the study
    setting it comes from)}``. :func:`pretrain_config` sets them; ``check_recipes`` refuses an override of one
    (``pretrain_overrides``), which would be overwritten without a word."""
    c = study.corpus
    settings: dict[str, tuple[Any, str]] = {
        "data.train": (c.path(c.train, root), "corpus.train"),
        "data.valid": (c.path(c.valid, root) if c.valid else None, "corpus.valid"),
        "batch_seconds": (run.batch_seconds, "grid"),
        "device_seconds": (run.device_seconds, "device_seconds, or a grid entry's"),
        "max_steps": (run.steps, "steps (fixed-steps) or hours (fixed-hours)"),
        "optim.lr": (run.lr, "lr and lr_scaling, or a grid entry's lr"),
        "optim.lr_scaling": ("none", "lr_scaling"),  # the study already applied its rule
        "seed": (run.seed, "seeds"),
        "ckpt_hours": (sorted(study.ckpt_hours), "ckpt_hours"),
        "ckpt_hours_basis": ("nominal", "ckpt_hours (nominal hours)")}  # the plan's and the paper's: batch × steps
    if study.cycles:  # the paper's design: whole triangular cycles, a checkpoint at every minimum
        settings |= {"optim.schedule": ("cyclic", "cycles"),
                     "optim.cyclic_step_size": (run.steps // (2 * study.cycles), "cycles"),
                     "ckpt_steps": (cycle_minima(study), "cycles (a checkpoint at each cycle minimum)")}
    return settings


def pretrain_config(study: StudyConfig, run: PlannedRun, root: Path) -> PretrainConfig:
    """The study's pre-training recipe for one planned run: its batch, layout, steps, lr, seed and data
    (:func:`pretrain_run_settings`)."""
    cfg = pretrain_recipe(study)
    _set_each(cfg, pretrain_run_settings(study, run, root))
    cfg.validate()
    return cfg


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _stop_with_parent() -> None:
    """In torchrun's process before it starts (Linux): SIGTERM once the process that started it dies, so a
    killed study's multi-device pre-training checkpoints and stops instead of writing on unseen."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_to_the_end(cmd: list[str], cwd: Path) -> int:
    """Run ``cmd`` (torchrun) to its end, its exit status; dying with the study process (``_stop_with_parent``).
    Where the study stops while it runs (a signal to it: ``StudyStopped``, Ctrl-C), it gets SIGTERM, which torchrun
    passes on (every rank checkpoints and stops), and the study waits for it: subprocess.run would SIGKILL it,
    orphaning the ranks (they run in sessions of their own), still training and holding the run folder's lock."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=os.environ.copy(), preexec_fn=_stop_with_parent)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()  # a second signal meanwhile is said and ignored (pool._signals_stop_the_study)
        raise


def _torchrun(cfg: PretrainConfig, devices: int, rdir: Path, root: Path) -> dict[str, Any]:
    """A multi-device pre-training: torchrun ``earful pretrain`` on the resolved config, written beside the run."""
    config = rdir.parent / f"{rdir.name}.yaml"
    save_yaml(cfg, config)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",  # a free port
           "-m", "earful.cli", "pretrain", str(config), "--out", str(rdir), "--resume-or-start"]
    rc = run_to_the_end(cmd, root)
    latest = RunDir(rdir).latest()
    summary = read_trainer_info(latest) if latest is not None else {"step": 0, "stopped_by": ""}
    if rc != 0 and not summary["stopped_by"] and not (summary["step"] >= cfg.max_steps and divergence(
            rdir, cfg.max_steps, cfg.max_nan_steps)):  # stopped (earful: 4, torchrun: 1) or diverged at the end (3)
        raise RuntimeError(f"pre-training {rdir.name}: torchrun exited with status {rc}; its log says why")
    return summary


def run_pretraining_stage(study: StudyConfig, run: PlannedRun, out: Path, root: Path) -> dict[str, Any]:
    from earful.pretrain.task import run_pretraining

    rdir = out / "pretrain" / run.name
    done = done_record(rdir)
    if done and "diverged" not in done:  # marked done before divergence was recorded: look once more
        why = divergence(rdir, run.steps, pretrain_config(study, run, root).max_nan_steps)
        if why:
            done = _mark_diverged(done, f"pre-training {run.name}", why)
            atomic_write_json(rdir / "done.json", done)
    if done:
        log.info("pre-training %s: done (step %d%s)", run.name, done["step"], ", diverged" * bool(done.get("diverged")))
        return done
    cfg = pretrain_config(study, run, root)
    log.info("pre-training %s: %g s × %d steps (%.3g h), lr %.3g", run.name, run.batch_seconds, run.steps,
             run.hours, run.lr)
    tracked(study, cfg, out, run.name)
    # in this process: one device, or this process is already one of the run's ranks (a submitit task)
    here = run.devices == 1 or launched_processes() == run.devices
    summary, why = finished_or_diverged(
        # started, or resumed on a rerun of the study (--resume refuses a folder in which no run was started)
        lambda: run_pretraining(cfg, rdir, resume=RunDir(rdir).started()) if here
        else _torchrun(cfg, run.devices, rdir, root),
        rdir, run.steps, cfg.max_nan_steps)
    if summary.get("stopped_by"):
        raise StudyStopped(f"pre-training {run.name} stopped by {summary['stopped_by']}", summary["stopped_by"])
    if summary["step"] < run.steps:  # e.g. torchrun's ranks stopped by a signal and exited cleanly
        raise StudyStopped(f"pre-training {run.name} stopped at step {summary['step']} of {run.steps}")
    record = _mark_diverged({**asdict(run), "run": run.name, "step": summary["step"]}, f"pre-training {run.name}", why)
    atomic_write_json(rdir / "done.json", record)
    return record


def kept_checkpoints(study: StudyConfig, run: PlannedRun, out: Path) -> dict[str, Path]:
    """The checkpoints of ``run`` the study keeps, by the name the study gives them: the milestones (``hours-H``)
    and cycle minima (``steps-N``) that were written, then ``final``."""
    ck = out / "pretrain" / run.name / "checkpoints"
    names = [f"hours-{h:g}" for h in study.ckpt_hours] + [f"steps-{n}" for n in cycle_minima(study)]
    return {**{name: ck / name for name in names if (ck / name).exists()}, "final": ck / f"step-{run.steps:07d}"}


def chosen_checkpoints(study: StudyConfig, run: PlannedRun, out: Path, names: list[str], key: str, done: str
                       ) -> dict[str, Path]:
    """The checkpoints of ``run`` that ``names`` (final | best | milestones) choose, as study setting ``key``
    (``finetune.checkpoints``, ``gradvar_checkpoints``) names them to be ``done`` (fine-tuned, measured)."""
    ck, kept = out / "pretrain" / run.name / "checkpoints", kept_checkpoints(study, run, out)
    chosen: dict[str, Path] = {}
    for spec in names:
        if spec == "final":
            chosen["final"] = kept["final"]
        elif spec == "best":
            if (ck / "best").exists():
                chosen["best"] = ck / "best"
            else:  # a recipe that keeps none (check_recipes said so), or none left (every validation NaN)
                log.warning("pre-training %s has no %s: its `best` is not %s", run.name, ck / "best", done)
        elif spec == "milestones":
            chosen.update({name: path for name, path in kept.items() if name != "final"})
        else:
            raise ValueError(unknown_checkpoints(key, [spec]))
    return chosen


def checkpoints_to_finetune(study: StudyConfig, run: PlannedRun, out: Path) -> dict[str, Path]:
    """The checkpoints of ``run`` that ``finetune.checkpoints`` chooses."""
    return chosen_checkpoints(study, run, out, study.finetune.checkpoints, "finetune.checkpoints", "fine-tuned")


def finetuned_on(study: StudyConfig, chosen: dict[str, Path], label_set: str) -> dict[str, Path]:
    """Of the checkpoints ``checkpoints_to_finetune`` chose, those fine-tuned on ``label_set``: final and best on
    every label set, the milestones on those of ``finetune.milestone_label_sets`` (default: every one)."""
    if label_set in milestone_label_sets(study):
        return dict(chosen)
    return {name: path for name, path in chosen.items() if name in ("final", "best")}


def shared_weights(ckpts: dict[str, Path], begun: Callable[[str], bool] = lambda name: False) -> dict[str, str]:
    """The name each checkpoint is fine-tuned and probed under. Checkpoints the trainer wrote at the same step
    hold the same weights (a milestone the last step reaches is the final; one on a cycle minimum is that
    minimum; ``best`` of the last validation is the final), so their work is done once, under one name: one whose
    work has ``begun`` (a rerun goes on with it, whatever the order of ``finetune.checkpoints`` or the name an
    earlier version gave it), else ``final``, else the first by name, ``best`` last. A checkpoint whose
    trainer.json gives no step shares with none."""
    by_step: dict[int | str, list[str]] = {}
    for name, path in ckpts.items():
        by_step.setdefault(_step_of(path, name), []).append(name)
    same = {}
    for names in by_step.values():
        first = min(names, key=lambda n: (not begun(n), n != "final", n == "best", n))
        same.update(dict.fromkeys(names, first))
    return {name: same[name] for name in ckpts}


def _step_of(ckpt: Path, name: str) -> int | str:
    """The step ``ckpt`` was written at, from its trainer.json; ``name`` where it cannot say."""
    try:
        return int(json.loads((ckpt / "trainer.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return name


def hours_of(ckpt: Path) -> tuple[float, int]:
    """(padded hours seen, step) of a pre-training checkpoint."""
    p = ckpt / "trainer.json"
    if not p.exists():
        return 0.0, 0
    info = json.loads(p.read_text())
    return float(info.get("hours_padded", 0.0)), int(info.get("step", 0))


# ---------------------------------------------------------------------- fine-tuning and evaluation
def finetune_recipe(study: StudyConfig, label_set: str | None = None) -> FinetuneConfig:
    """The study's fine-tuning recipe as its YAML and overrides give it (then ``label_set``'s own, where one is
    named), before any run's settings."""
    overrides = study.finetune.overrides if label_set is None else study.finetune.overrides_for(label_set)
    return load_finetune_config(study.finetune.config, overrides, overrides_from=OVERRIDES_FROM["finetune"])


def finetune_config(study: StudyConfig, label_set: str, init: Path, seed: int, root: Path,
                    baseline: str | None = None) -> FinetuneConfig:
    """The fine-tuning recipe for one label set: the study's overrides, the label set's own, the baseline's
    settings, then the run's init, data and seed."""
    cfg = finetune_recipe(study, label_set)
    for key, value in BASELINES[baseline].items() if baseline else ():
        setattr(cfg, key, value)
    _set_each(cfg, finetune_run_settings(study, label_set, init, seed, root))
    cfg.validate()
    return cfg


def finetune_run_settings(study: StudyConfig, label_set: str, init: Path, seed: int, root: Path
                          ) -> dict[str, tuple[Any, str]]:
    """What the study sets in each fine-tuning's config, over its recipe: ``{training key: (value, the study
    setting it comes from)}``. :func:`finetune_config` sets them; ``check_recipes`` refuses an override of one
    (``finetune.overrides``, ``finetune.per_label_set``)."""
    c = study.corpus
    return {"init": (str(init), "finetune.checkpoints or finetune.baselines"),
            "data.train": (c.path(c.label_sets[label_set], root), "corpus.label_sets"),
            "data.valid": (c.path(c.finetune_valid, root), "corpus.finetune_valid"),
            "seed": (seed, "seeds")}


def finetune_and_evaluate(study: StudyConfig, name: str, init: Path, label_set: str, seed: int, out: Path,
                          root: Path, baseline: str | None) -> dict[str, Any]:
    from earful.eval.evaluate import evaluate
    from earful.finetune.task import run_finetuning

    c = study.corpus
    fdir = out / "finetune" / name
    done = done_record(fdir)
    # marked done before divergence was recorded, or judged by an earlier version from the validation WER / CER (a
    # WER of 0 read as missing, one of NaN from a validation set without words): look once more (at a run with a
    # training state)
    judged_by_wer = str(done.get("diverged_because", "") if done else "").startswith(("its validation wer",
                                                                                      "its validation cer"))
    if done and ("diverged" not in done or judged_by_wer) and (fdir / "checkpoints" / "latest.json").exists():
        cfg = finetune_config(study, label_set, init, seed, root, baseline)
        why = divergence(fdir, cfg.max_steps, cfg.max_nan_steps)
        if why or judged_by_wer:
            done = _mark_diverged({k: v for k, v in done.items() if not k.startswith("diverged")},
                                  f"fine-tuning {name}", why)
            atomic_write_json(fdir / "done.json", done)
    if not done:
        cfg = finetune_config(study, label_set, init, seed, root, baseline)
        tracked(study, cfg, out, name)
        log.info("fine-tuning %s", name)
        # started, or resumed on a rerun of the study (--resume refuses a folder in which no run was started)
        summary, why = finished_or_diverged(lambda: run_finetuning(cfg, fdir, resume=RunDir(fdir).started()), fdir,
                                            cfg.max_steps, cfg.max_nan_steps)
        if summary.get("stopped_by"):
            raise StudyStopped(f"fine-tuning {name} stopped by {summary['stopped_by']}", summary["stopped_by"])
        done = _mark_diverged({"name": name}, f"fine-tuning {name}", why)
        atomic_write_json(fdir / "done.json", done)
    summary = evaluation_summary(out, name)
    done_splits = evaluated_splits(out, name)
    tests = {split: c.path(m, root) for split, m in c.test_sets().items()}
    todo = {split: m for split, m in tests.items() if split not in done_splits}
    with_lm: dict[str, Any] = {}
    lm_todo: dict[str, str] = {}
    if study.lm is not None:  # with the LM too; splits evaluated greedily before it was set: with the LM alone
        lm, lexicon = study.lm.resolved(root)
        with_lm = {"lm": lm, "lexicon": lexicon, "beam_options": study.lm.beam_options()}
        lm_todo = {split: m for split, m in tests.items()
                   if split in done_splits and split not in evaluated_splits(out, name, "lm")}
    ckpt = fdir / "checkpoints" / "best"
    if not ckpt.exists():
        ckpt = fdir
    with recipe_threads(finetune_recipe(study, label_set).threads):
        if todo:
            if done_splits:
                log.info("evaluating %s on the test split(s) added to the study: %s", name, ", ".join(todo))
            evaluate(ckpt, todo, summary.parent, **with_lm)  # the summary keeps the splits evaluated before
        if lm_todo:
            log.info("decoding %s with the study's LM (its greedy results kept): %s", name, ", ".join(lm_todo))
            evaluate(ckpt, lm_todo, summary.parent, keep_greedy=True, **with_lm)
    return {**json.loads(summary.read_text()), **({"diverged": True} if done.get("diverged") else {})}


# ---------------------------------------------------------------------- gradient noise
def gradvar_stage(study: StudyConfig, run: PlannedRun, out: Path, root: Path, checkpoint: str = "final",
                  ckpt: Path | None = None) -> dict[str, Any]:
    """``earful gradvar`` on the run's checkpoint named ``checkpoint`` (folder ``ckpt``; default: the kept checkpoint
    of that name, ``kept_checkpoints``) with batches of its own size (``gradvar_record``)."""
    from earful.pretrain.gradvar import gradient_noise, recorded_batches

    path = gradvar_record(out, run, checkpoint)
    if path.exists():
        return json.loads(path.read_text())
    cfg = pretrain_config(study, run, root)
    ckpt = ckpt or kept_checkpoints(study, run, out)[checkpoint]
    budget, padding = recorded_batches(ckpt)  # the run's batches on one device, as `earful gradvar` takes
    log.info("gradient noise of %s at %s: %d batches of %g s", run.name, checkpoint, study.gradvar_batches,
             run.batch_seconds)
    with recipe_threads(cfg.threads):
        result = gradient_noise(ckpt, cfg.data.train, budget, num_batches=study.gradvar_batches, seed=run.seed,
                                device=cfg.device, padding=padding, skip_bad=cfg.data.skip_bad,
                                options=False)
    record = {**result, "run": run.name, "batch_seconds": run.batch_seconds, "seed": run.seed}
    atomic_write_json(path, record)
    return record


# ---------------------------------------------------------------------- probes
def probe_config(study: StudyConfig) -> ProbeConfig:
    """The study's probe recipes: the shipped ones (``earful/probe/config.py``) with ``probe_overrides``."""
    return load_config(ProbeConfig, None, study.probe_overrides)


def probe_stage(study: StudyConfig, name: str, upstream: str, out: Path, root: Path) -> list[dict[str, Any]]:
    """``earful probe``'s suite on one upstream (a checkpoint folder, or ``fbank``) with every probe seed:
    ``OUT/probe/NAME/seed-K/results.json``; tasks added to a study that has probed the upstream are probed alone
    (each task's head is seeded on its own: its result does not depend on the tasks probed with it), into
    ``seed-K/added-TASKS/``. ``seed-K/summary.json`` holds every task's metrics. The upstream's cached features are
    removed afterwards (they are hundreds of MB a checkpoint). Returns ``[{"seed", "task", "metric", "value"},
    ...]``."""
    import shutil

    import torch

    from earful.probe.features import Upstream
    from earful.probe.suite import run_suite

    rows = []
    cache = out / "probe-cache" / name
    config = probe_config(study)
    # extracted on the pre-training recipe's device and threads, as the gradient noise is measured (auto: CUDA
    # where there is one); it had been auto whatever the recipe said
    recipe = pretrain_recipe(study)
    source = Upstream.parse(upstream, device=recipe.device, device_key="device")
    for seed in study.probe_seeds:
        done = probe_summary(out, name, seed)
        metrics = probed_tasks(out, name, seed)
        if todo := [t for t in study.probes if t not in metrics]:
            folder = done.parent / f"added-{'-'.join(todo)}" if metrics else done.parent
            with torch.random.fork_rng(devices=[]), recipe_threads(recipe.threads):
                metrics |= run_suite(source, study.probe_dir(root), folder, todo, seed, cache_dir=cache,
                                     config=config, progress=False)
            atomic_write_json(done, metrics)
            metrics = probed_tasks(out, name, seed)  # as a rerun reads them
        rows += [{"seed": seed, "task": t, "metric": m, "value": v}
                 for t in study.probes for m, v in metrics[t].items()]
    shutil.rmtree(cache, ignore_errors=True)
    return rows
