"""``earful study run``: pre-train every grid run, fine-tune the chosen checkpoints on every label set
(plus from-scratch baselines), evaluate on the test splits, and write the report.

Resumable at every level (``earful/study/stages.py``); results are rebuilt from the evaluation summaries each
time, so a study killed mid-way ends with the same report. With ``jobs: N`` N runs go at once
(``earful/study/pool.py``): the pre-trainings first, then each run's fine-tunings as soon as it has finished.
With ``launcher: slurm`` each is a Slurm job instead, submitted through submitit (``earful/study/slurm.py``).

::

    OUT/study.json                  the study config, its plan and its recipe fingerprint
    OUT/pretrain/<run>/             pre-training run folders (+ done.json)
    OUT/finetune/<run>__<ckpt>__<labels>/   fine-tuning run folders (+ done.json)
    OUT/eval/<run>__<ckpt>__<labels>/       evaluation hypotheses and summary.json
    OUT/gradvar/<run>.json, <run>__<ckpt>.json   gradient noise of the final checkpoint, of another
                                    (gradvar_checkpoints)
    OUT/runs.jsonl, results.jsonl, probes.jsonl   what the report reads: each run's plan (its `hours`: the
                                    planned batch × steps), one record per evaluated model and split, per probed
                                    model and metric (their `hours_padded`: the audio fed, as in the logs;
                                    `hours_nominal`: the paper's batch × steps)
    OUT/report/                     report.md, CSVs, plots
    OUT/logs/                       the workers' logs (jobs > 1)
    OUT/submitit/<job id>/          a Slurm job's script, pickles and logs (launcher: slurm)
    OUT/tracking/                   the experiment trackers' local stores (tracking.backends)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from earful.atomic import atomic_write_json, atomic_write_lines
from earful.config import flatten, parse_overrides, to_dict
from earful.lock import hold_folder
from earful.study.config import (
    FBANK_TAG,
    RANDOM_INIT_TAG,
    PlannedRun,
    StudyConfig,
    cycle_minima,
    finetuned_label_sets,
    plan_runs,
    unknown_checkpoints,
)
from earful.study.corpus import check_probe_corpus, ensure_corpus, manifest_digests
from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, grid_planner, recipe_fingerprint
from earful.study.plan import plan_table, planned_milestones, why_no_best
from earful.study.pool import Job, execute
from earful.study.report import build_report
from earful.study.stages import (
    BASELINES,
    checkpoints_to_finetune,
    chosen_checkpoints,
    evaluated,
    finetune_and_evaluate,
    finetune_recipe,
    finetune_run_settings,
    finetuned_on,
    gradvar_measured,
    gradvar_record,
    gradvar_stage,
    hours_of,
    kept_checkpoints,
    pretrain_recipe,
    pretrain_run_settings,
    pretrained,
    probe_stage,
    probed,
    run_pretraining_stage,
    shared_weights,
)
from earful.train.config import nominal_hours, nominal_steps
from earful.train.tracking import require

log = logging.getLogger(__name__)


@dataclass
class Finetuning:
    """One planned fine-tuning and the record its results are written under."""

    name: str
    init: Path
    label_set: str
    baseline: str | None
    record: dict[str, Any]


def planned_finetunings(study: StudyConfig, run: PlannedRun, out: Path, first_of_seed: bool,
                        diverged: bool = False) -> list[Finetuning]:
    """What can start once ``run`` has pre-trained: its checkpoints on every label set (its milestones on those of
    ``finetune.milestone_label_sets``; none when it diverged), and, for the first run of a seed, the from-scratch
    baselines from its random init (same architecture)."""
    label_sets = finetuned_label_sets(study)
    todo = []
    chosen = {} if diverged else checkpoints_to_finetune(study, run, out)
    on = {ls: finetuned_on(study, chosen, ls) for ls in label_sets}
    # a milestone at the last step is fine-tuned once, as the final (or under the name its fine-tuning began as)
    job = {ls: shared_weights(on[ls], lambda name, ls=ls: (out / "finetune" / f"{run.name}__{name}__{ls}").exists())
           for ls in label_sets}
    for ck_name, ck in chosen.items():
        hours, step = hours_of(ck)
        todo += [Finetuning(f"{run.name}__{job[ls][ck_name]}__{ls}", chosen[job[ls][ck_name]], ls, None,
                            {"pretrain": run.name, "tag": run.tag, "batch_seconds": run.batch_seconds,
                             "seed": run.seed, "checkpoint": ck_name, "hours_padded": hours,
                             "hours_nominal": nominal_hours(run.batch_seconds, step), "step": step, "label_set": ls})
                 for ls in label_sets if ck_name in on[ls]]
    if first_of_seed:
        init = out / "pretrain" / run.name / "checkpoints" / "init"
        todo += [Finetuning(f"{base}-seed{run.seed}__init__{ls}", init, ls, base,
                            {"pretrain": base, "tag": base, "batch_seconds": None, "seed": run.seed,
                             "checkpoint": "init", "hours_padded": 0.0, "hours_nominal": 0.0, "step": 0,
                             "label_set": ls})
                 for base in study.finetune.baselines for ls in label_sets]
    return todo


def unique(planned: list[Any]) -> list[Any]:
    """One of each job name: checkpoints of the same weights share one (``shared_weights``)."""
    return list({p.name: p for p in planned}.values())


@dataclass
class Probing:
    """One upstream to probe (a checkpoint folder or ``fbank``) and the record its metrics are written under."""

    name: str
    upstream: str
    record: dict[str, Any]


def planned_probes(study: StudyConfig, run: PlannedRun, out: Path, first_of_seed: bool, fbank: bool,
                   diverged: bool = False) -> list[Probing]:
    """Every checkpoint of ``run`` the study keeps (cycle minima or milestones, and the final; none when it
    diverged); for the first run of a seed its random init (every run of a seed starts from it), and once per
    study filterbanks."""
    todo = []
    kept = {} if diverged else kept_checkpoints(study, run, out)
    same = shared_weights(kept, lambda name: (out / "probe" / f"{run.name}__{name}").exists())
    for ck_name, path in kept.items():
        hours, step = hours_of(path)
        job = same[ck_name]  # checkpoints of one step (the same weights) are probed once
        todo.append(Probing(f"{run.name}__{job}", str(kept[job]), {
            "pretrain": run.name, "tag": run.tag, "batch_seconds": run.batch_seconds, "seed": run.seed,
            "checkpoint": ck_name, "step": step, "hours_padded": hours,
            "hours_nominal": nominal_hours(run.batch_seconds, step)}))
    if first_of_seed:
        todo.append(Probing(f"init-seed{run.seed}", str(out / "pretrain" / run.name / "checkpoints" / "init"), {
            "pretrain": RANDOM_INIT_TAG, "tag": RANDOM_INIT_TAG, "batch_seconds": None, "seed": run.seed,
            "checkpoint": "init", "step": 0, "hours_padded": 0.0, "hours_nominal": 0.0}))
    if fbank:
        todo.append(Probing("fbank", "fbank", {
            "pretrain": FBANK_TAG, "tag": FBANK_TAG, "batch_seconds": None, "seed": None, "checkpoint": "fbank",
            "step": 0, "hours_padded": 0.0, "hours_nominal": 0.0}))
    return todo


def planned_gradvar(study: StudyConfig, run: PlannedRun, out: Path, diverged: bool = False) -> dict[str, Path]:
    """The checkpoints of ``run`` whose gradient noise the study measures (``gradvar_checkpoints``; none without
    ``gradvar_batches`` or when it diverged), by the name their record takes: checkpoints of one step are measured
    once (``shared_weights``: a milestone at the last step is the final)."""
    if not study.gradvar_batches or diverged:
        return {}
    chosen = chosen_checkpoints(study, run, out, study.gradvar_checkpoints, "gradvar_checkpoints",
                                "measured (its gradient noise)")
    same = shared_weights(chosen, partial(gradvar_measured, out, run))
    return {same[name]: chosen[same[name]] for name in chosen}


@dataclass
class WorkAfter:
    """What a finished pre-training lets start."""

    finetunings: list[Finetuning]
    probes: list[Probing]
    gradvar: dict[str, Path]  # its gradient noise, by checkpoint (``planned_gradvar``)


def work_after(study: StudyConfig, run: PlannedRun, out: Path, first_of_seed: bool, diverged: bool) -> WorkAfter:
    """What ``run``, pre-trained in study folder ``out``, lets start: its fine-tunings, its probes and its gradient
    noise. A run that diverged lets start only what its seed's random init serves (baselines, the init's probes).
    Every job of it but the filterbanks' probe reads the run's weights."""
    return WorkAfter(planned_finetunings(study, run, out, first_of_seed, diverged),
                     planned_probes(study, run, out, first_of_seed, fbank=first_of_seed and run.seed == study.seeds[0],
                                    diverged=diverged) if study.probes else [],
                     planned_gradvar(study, run, out, diverged))


def write_probes(out: Path, runs: list[PlannedRun], probing: dict[str, list[Probing]], done: dict[str, Any]
                 ) -> None:
    """``probes.jsonl``: one record per (upstream, probe seed, task metric), in plan order."""
    records = [{**p.record, "probe_seed": r["seed"], "task": r["task"], "metric": r["metric"], "value": r["value"]}
               for run in runs for p in probing.get(run.name, []) for r in done[f"probe:{p.name}"]]
    if records or (out / "probes.jsonl").exists():
        atomic_write_lines(out / "probes.jsonl", (json.dumps(rec) for rec in records))


def _finetune_override_lists(study: StudyConfig) -> list[tuple[str, list[str]]]:
    """The study's fine-tuning override lists, each with the setting that holds it (as errors name it)."""
    return [("finetune.overrides", study.finetune.overrides), *(
        (f"finetune.per_label_set[{ls!r}]", overrides) for ls, overrides in study.finetune.per_label_set.items())]


def _refuse_run_settings(study: StudyConfig) -> None:
    """Refuse an override of a training key the study sets for each run (``stages.pretrain_run_settings``,
    ``stages.finetune_run_settings``), naming the study setting to use: the run's value overwrote it without a word
    (``pretrain_overrides: [optim.lr=1e-2]`` trained with the study's lr)."""
    runs = plan_runs(study)
    label_sets = finetuned_label_sets(study)
    lists = [("pretrain_overrides", study.pretrain_overrides,
              pretrain_run_settings(study, runs[0], Path.cwd()) if runs else {})]
    if label_sets:  # the same keys for every label set (none fine-tuned: its overrides set nothing)
        fine = finetune_run_settings(study, label_sets[0], Path(), 0, Path.cwd())
        lists += [(where, overrides, fine) for where, overrides in _finetune_override_lists(study)]
    said = [f"{where}: {item!r} sets {key}, which the study sets for each run: set {sets[key][1]} instead"
            for where, overrides, sets in lists for item in overrides
            for key in flatten(parse_overrides([item])) if key in sets]
    if said:
        raise ValueError("; ".join(said) + " (each run's own value would overwrite the override without a word)")


def _say_what_baselines_keep(study: StudyConfig) -> None:
    """Warn of a fine-tuning override of a key a baseline sets itself (``stages.BASELINES``: the scratch-*-cnn
    baselines' freeze_feature_encoder): it holds for every other fine-tuning, not for that baseline."""
    for base in study.finetune.baselines:
        for where, overrides in _finetune_override_lists(study):
            for item in overrides:
                for key in set(flatten(parse_overrides([item]))) & set(BASELINES[base]):
                    log.warning("%s: %r sets %s, which the baseline %s sets itself (%s): that baseline keeps its "
                                "own, the other fine-tunings take the override", where, item, key, base,
                                BASELINES[base][key])


def check_recipes(study: StudyConfig) -> None:
    """The pre-training recipe (as every grid entry sets it) and the fine-tuning recipe of every label set (with its
    ``per_label_set`` overrides) load with the study's overrides, ``finetune.checkpoints`` names checkpoints the
    pre-training writes, and the label sets, baselines and probe tasks named exist: an unknown key, a wrong value
    or a checkpoint no run will have is named here, by ``study plan`` too, not after the corpus is built and every
    run pre-trained. An override of a key the study sets for each run (its lr, steps, batch, seed, data, ...) is
    refused, naming the study key to set instead."""
    pre = pretrain_recipe(study)
    finetune_recipe(study)
    for label_set in finetuned_label_sets(study):  # each as stages.finetune_config loads it
        if study.finetune.per_label_set.get(label_set):
            try:
                finetune_recipe(study, label_set)
            except ValueError as e:
                raise ValueError(f"finetune.per_label_set[{label_set!r}]: {e}") from e
    # each grid entry's own settings (its lr, layout, steps) as its run will load them: a wrong one stopped the
    # study only when that run started, after the runs before it had trained (looked up here: tests patch it)
    from earful.study.stages import pretrain_config

    runs = plan_runs(study)
    for run in {r.tag: r for r in runs}.values():
        try:
            pretrain_config(study, run, Path.cwd())
        except ValueError as e:
            raise ValueError(f"grid entry {run.tag} (run {run.name}): {e}") from e
    if why := unknown_checkpoints("finetune.checkpoints", study.finetune.checkpoints):
        raise ValueError(why)
    unknown = [ls for ls in study.finetune.label_sets or [] if ls not in study.corpus.label_sets]
    if unknown:
        raise ValueError(f"finetune.label_sets {unknown} are not in corpus.label_sets {list(study.corpus.label_sets)}")
    for base in study.finetune.baselines:
        if base not in BASELINES:
            raise ValueError(f"finetune.baselines: unknown {base!r} ({' | '.join(BASELINES)})")
    from earful.probe.suite import TASKS

    unknown_tasks = [t for t in study.probes if t not in TASKS]
    if unknown_tasks:
        raise ValueError(f"probes: unknown task(s) {unknown_tasks} ({' | '.join(TASKS)})")
    _refuse_run_settings(study)  # its label sets known to exist
    _say_what_baselines_keep(study)
    # said, not refused: a study folder made before this check must still continue (adding seeds)
    for key, names, done in (("finetune.checkpoints", study.finetune.checkpoints, "fine-tuned"),
                             ("gradvar_checkpoints", study.gradvar_checkpoints if study.gradvar_batches else [],
                              "measured")):
        if "best" in names and (why := why_no_best(study, pre)):
            log.warning("%s: `best` is the pre-training's best validation checkpoint, but %s: no run will have one, "
                        "so none is %s; name `final` (or `milestones`), or give the pre-training a validation set "
                        "with keep_best=true", key, why, done)
        if "milestones" in names and not any(planned_milestones(study, r) - {r.steps} for r in runs):
            log.warning("%s: `milestones` are the checkpoints of ckpt_hours and the cycle minima, but no run writes "
                        "one before its end (ckpt_hours=%s, cycles=%d), so none is %s; set ckpt_hours within the "
                        "runs, or cycles: 2 or more", key, study.ckpt_hours, study.cycles, done)
    if past := [h for h in study.ckpt_hours
                if all(nominal_steps(h, r.batch_seconds) > r.steps for r in runs)]:
        log.warning("ckpt_hours %s: past the end of every run (the longest sees %.3g h, nominal): never written",
                    ", ".join(f"{h:g}" for h in past), max(r.hours for r in runs))


def study_manifests(study: StudyConfig, root: Path) -> dict[str, Path]:
    """The manifests the study reads, by the setting that names them: the pre-training's train (and valid) and,
    when it fine-tunes, the fine-tuning's validation, each label set it fine-tunes on and every test split. (The probes'
    manifests are checked by ``check_probe_corpus``.)"""
    c = study.corpus
    named = {"corpus.train": c.train, "corpus.valid": c.valid}
    label_sets = finetuned_label_sets(study)
    if label_sets:
        named["corpus.finetune_valid"] = c.finetune_valid
        named.update({f"corpus.label_sets[{ls!r}]": c.label_sets[ls] for ls in label_sets})
        named.update({f"corpus.test[{k!r}]" if c.test else f"corpus.test (default {k!r})": v
                      for k, v in c.test_sets().items()})
    return {role: Path(c.path(rel, root)) for role, rel in named.items() if rel}


def check_manifests(study: StudyConfig, root: Path) -> None:
    """Every manifest the study reads exists, before study.json is written and any run starts (a missing label
    set or test manifest stopped the study only after every pre-training, with a bare [Errno 2])."""
    missing = [f"{role}: {path}" for role, path in study_manifests(study, root).items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"the study's manifest(s) do not exist ({'; '.join(missing)}); prepare them "
                                "(`earful prepare`, `earful synth`) or fix the path(s), which are relative to "
                                "corpus.dir")


def check_lm(study: StudyConfig, root: Path | None = None) -> None:
    """The ``lm:`` section's needs, before any training: flashlight-text installed and, given ``root`` (the folder
    its paths are relative to), its LM file and lexicon there. A missing one had stopped the
    study at its first evaluation, after pre-training."""
    if study.lm is None:
        return
    from earful.eval.beam import INSTALL_HINT, flashlight_available

    if not flashlight_available():
        raise RuntimeError(f"lm: the study decodes with an n-gram LM ({study.lm.path}); {INSTALL_HINT}, or set "
                           "lm: null for greedy decoding alone")
    if root is None:
        return
    path, lexicon = study.lm.resolved(root)
    missing = [f"lm.{key}: {p}" for key, p in (("path", path), ("lexicon", lexicon)) if p is not None
               and not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the study's LM file(s) do not exist ({'; '.join(missing)}); download them "
                                "(LibriSpeech's 4-gram: openslr.org/11) or build one (`earful lm build`), or fix the "
                                "path(s), which are relative to the folder earful runs in, as corpus.dir")


def check_environment(study: StudyConfig, root: Path | None = None) -> None:
    """What this machine must have to run the study, before any training: flashlight and, given ``root``, the LM's
    files (``check_lm``), the trackers' packages, submitit (``launcher: slurm``). ``study plan`` says what of it is
    missing, as a warning (a plan may be made on another machine than the run)."""
    check_lm(study, root)
    for backend in study.tracking.backends:
        require(backend)
    if study.launcher == "slurm":
        from earful.study.slurm import import_submitit

        import_submitit()


def check_study(study: StudyConfig) -> None:
    """The recipes (``check_recipes``) and the machine (``check_environment``; the LM's files once the root is
    known: ``check_lm``). (The probes' manifests are checked once the corpus is there: ``check_probe_corpus``.)"""
    check_recipes(study)
    check_environment(study)
    if study.launcher == "slurm":  # before anything is submitted: every run fits the nodes
        from earful.study.slurm import resources

        for entry in study.entries():
            resources(study.slurm, entry.devices)


def left_out(study: StudyConfig, runs: list[PlannedRun], out: Path) -> list[str]:
    """The finished work in study folder ``out`` that this plan leaves out (a rerun with fewer seeds or probe
    seeds): its pre-training runs by name, then its probe seeds."""
    planned = {r.name for r in runs}
    names = [p.parent.name for p in sorted((out / "pretrain").glob("[!.]*/done.json")) if p.parent.name not in planned]
    probe_seeds = {int(p.parent.name.removeprefix("seed-")) for p in (out / "probe").glob("*/seed-*/summary.json")}
    return names + [f"probe seed {k}" for k in sorted(probe_seeds - set(study.probe_seeds))]


def warn_left_out(left: list[str]) -> None:
    """Say what of the folder's finished work (``left_out``) the results and the report leave out."""
    if left:
        log.warning("this folder holds finished work that this study's plan leaves out: %s. runs.jsonl, "
                    "results.jsonl, probes.jsonl and the report cover only the planned runs; rerun with their seeds, "
                    "probe seeds or grid entries to include them", ", ".join(left))


def run_study(study: StudyConfig, out_dir: str | Path, *, root: str | Path | None = None) -> Path:
    root = Path(root or Path.cwd())
    out = Path(out_dir)
    with hold_folder(out, "earful study"):
        return _run_study(study, out, root)


def _run_study(study: StudyConfig, out: Path, root: Path) -> Path:
    t0 = time.time()
    check_study(study)
    ensure_corpus(study, root)
    check_probe_corpus(study, root)  # on the corpus as built: before any run starts, not after pre-training
    check_manifests(study, root)  # before study.json: its fingerprint holds no missing manifest
    check_lm(study, root)  # and no missing LM file
    runs, table = plan_table(study)
    fingerprint = recipe_fingerprint(study, runs, root)
    check_same_recipe(out, fingerprint, lambda: manifest_digests(study, root, file_bytes=True),
                      grid_planner(study))
    atomic_write_json(out / "study.json", {**to_dict(study), "format": STUDY_FORMAT, "plan": table,
                                           "cycle_minima": cycle_minima(study), "fingerprint": fingerprint})
    log.info("study %s: %d pre-training runs\n%s", study.name, len(runs), table)
    left = left_out(study, runs, out)
    warn_left_out(left)  # before the runs (a user may stop it there) and again with the report

    first_of_seed = {seed: next(r for r in runs if r.seed == seed) for seed in study.seeds}
    planned: dict[str, list[Finetuning]] = {}

    probing: dict[str, list[Probing]] = {}

    def after_pretraining(run: PlannedRun, record: dict[str, Any]) -> list[Job]:
        """The jobs of ``work_after`` the run."""
        after = work_after(study, run, out, first_of_seed.get(run.seed) is run, bool(record.get("diverged")))
        planned[run.name] = after.finetunings
        jobs = [Job(f.name, finetune_and_evaluate, (study, f.name, f.init, f.label_set, run.seed, out, root,
                                                    f.baseline),
                    done=partial(evaluated, out, f.name, study.corpus.test_sets(), study.lm is not None))
                for f in unique(after.finetunings)]
        if study.probes:
            probing[run.name] = after.probes
            jobs += [Job(f"probe:{p.name}", probe_stage, (study, p.name, p.upstream, out, root),
                         done=partial(probed, study, out, p.name))
                     for p in unique(after.probes)]
        jobs += [Job(f"gradvar:{gradvar_record(out, run, name).stem}", gradvar_stage,
                     (study, run, out, root, name, ckpt), done=partial(gradvar_measured, out, run, name))
                 for name, ckpt in after.gradvar.items()]
        return jobs

    jobs = [Job(f"pretrain:{r.name}", run_pretraining_stage, (study, r, out, root),
                then=lambda rec, r=r: after_pretraining(r, rec), devices=r.devices,
                done=partial(pretrained, out, r), cost=r.hours / r.devices) for r in runs]
    if study.launcher == "slurm":
        from earful.study.slurm import execute_on_slurm

        done = execute_on_slurm(jobs, study, out)
    else:
        done = execute(jobs, study.jobs, out / "logs")
    write_results(out, runs, planned, done)
    write_probes(out, runs, probing, done)
    report = build_report(out)
    warn_left_out(left)
    log.info("study %s finished in %.1f min; report: %s", study.name, (time.time() - t0) / 60, report)
    return report


def write_results(out: Path, runs: list[PlannedRun], planned: dict[str, list[Finetuning]],
                  done: dict[str, Any]) -> None:
    """``runs.jsonl`` and ``results.jsonl`` in plan order, whichever order the jobs finished in: pre-trained
    models first, then the baselines."""
    atomic_write_lines(out / "runs.jsonl", (json.dumps(done[f"pretrain:{r.name}"]) for r in runs))
    results: list[dict[str, Any]] = []
    finetunings = sorted((f for r in runs for f in planned[r.name]), key=lambda f: f.record["batch_seconds"] is None)
    for f in finetunings:
        for split, res in done[f.name]["splits"].items():
            for decoder, r in res.items():
                if "wer" in r:
                    results.append({**f.record, "split": split, "decoder": decoder, "wer": r["wer"], "cer": r["cer"],
                                    **({"diverged": True} if done[f.name].get("diverged") else {})})
    atomic_write_lines(out / "results.jsonl", (json.dumps(rec) for rec in results))


__all__ = ["run_study", "plan_runs"]
