"""`gradvar_checkpoints`: the checkpoints of each run whose gradient noise a study measures, as
`finetune.checkpoints` names them (default `[final]`, as before the setting; `milestones`: the hours-H and cycle
minima steps-N too, as the paper measured its progress checkpoints): planned, counted, run, merged and reported
(the noise over training; C6 stays at the final), and added to a finished study as new work alone."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from earful.config import ConfigError
from earful.study.config import StudyConfig, load_study, plan_runs

STUDY = """
name: toy-gradvar
corpus:
  dir: {corpus}
  synth: {{hours: 0.01, domain: commands, seed: 5, labelled_fraction: 1.0}}
pretrain_config: null
pretrain_overrides: [model_preset=tiny, log_every=2, valid_every=2, ckpt_every=2, data.num_workers=0,
                     data.crop_seconds=2.0, data.min_seconds=0.3, tensorboard=false, threads=1]
grid: [2, 4]
mode: fixed-steps
cycles: 2
steps: 4
lr: 1.0e-3
lr_scaling: none
device_seconds: 4
gradvar_batches: 2
finetune: {{baselines: []}}
seeds: [1]
"""


def test_bad_gradvar_checkpoints_are_refused_at_load_naming_the_file_and_key(tmp_path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text("grid: [16]\ngradvar_batches: 2\n")
    assert load_study(y).gradvar_checkpoints == ["final"]  # the default: the final's alone, as before
    given = rf"{y} with command-line overrides: "
    with pytest.raises(ConfigError, match=given + r"gradvar_checkpoints: unknown \['finall'\] \(choose among "
                                          r"final \| best \| milestones\)"):
        load_study(y, ["gradvar_checkpoints=[finall]"])
    with pytest.raises(ConfigError, match=given + r"gradvar_checkpoints=\['milestones'\]: name final too \(C6 "
                                          r"judges"):
        load_study(y, ["gradvar_checkpoints=[milestones]"])
    assert load_study(y, ["gradvar_checkpoints=[milestones, final]"]).gradvar_checkpoints == ["milestones", "final"]


def test_the_checkpoints_measured_are_those_fine_tuning_would_choose_each_step_once(tmp_path, planned_run,
                                                                                   kept_checkpoints) -> None:
    """The milestones the run wrote and the final, under their records' names; a milestone at the last step
    (hours-0.0089 of 4 s batches is step 8 of 8) is the final's measurement; none without gradvar_batches or
    when the run diverged."""
    from earful.study.run import planned_gradvar, work_after
    from earful.study.stages import gradvar_record

    run = planned_run
    study = StudyConfig(mode="fixed-steps", steps=8, cycles=2, ckpt_hours=[0.0089, 0.5], gradvar_batches=2)
    ck = kept_checkpoints(tmp_path, run, {"steps-4": 4, "hours-0.0089": 8, "step-0000008": 8})  # 0.5 h: never reached
    assert planned_gradvar(study, run, tmp_path) == {"final": ck / "step-0000008"}  # the default
    study.gradvar_checkpoints = ["final", "milestones"]
    assert planned_gradvar(study, run, tmp_path) == {"final": ck / "step-0000008", "steps-4": ck / "steps-4"}
    assert work_after(study, run, tmp_path, False, False).gradvar == planned_gradvar(study, run, tmp_path)
    assert planned_gradvar(study, run, tmp_path, diverged=True) == {}
    assert [gradvar_record(tmp_path, run, name).name for name in ("final", "steps-4")] == [
        "4s-seed1.json", "4s-seed1__steps-4.json"]  # the final's as before the setting
    study.gradvar_batches = 0
    assert planned_gradvar(study, run, tmp_path) == {}


def test_the_plan_counts_the_milestones_measurements(tmp_path) -> None:
    """2 seeds × 2 batch sizes × (1 cycle minimum + the final); an hours milestone on the last step counts once."""
    from earful.study.plan import later_stages, plan_table

    y = tmp_path / "s.yaml"
    y.write_text("grid: [8, 16]\nmode: fixed-steps\nsteps: 20\ncycles: 2\nseeds: [1, 2]\ngradvar_batches: 2\n"
                 "gradvar_checkpoints: [final, milestones]\n")
    study = load_study(y)
    assert later_stages(study, plan_runs(study))["gradvar"] == 4 * 2
    on_end = load_study(y, ["ckpt_hours=[0.0444445]"])  # 16 s × 10 steps: 8 s at step 20, 16 s at its minimum
    assert later_stages(on_end, plan_runs(on_end))["gradvar"] == 4 * 2
    assert "8 gradient-noise measurements" in plan_table(study)[1]
    final = load_study(y, ["gradvar_checkpoints=[final]"])
    assert later_stages(final, plan_runs(final))["gradvar"] == 4


def _work(folder: Path) -> dict[str, int]:
    """Every file of the folder's work, with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for stage in ("pretrain", "gradvar")
            for p in (folder / stage).rglob("*") if p.is_file()}


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_milestones_added_to_a_finished_study_are_measured_alone_reported_and_merged(tmp_path) -> None:
    """A study of before the setting (its study.json without it) measured its final checkpoints; with
    `gradvar_checkpoints: [final, milestones]` it continues, measures the cycle minima alone (nothing trained or
    measured again), counts them in its status and reports the noise over training. Folders with and without them
    merge (the widest study.json); dropping them again is refused."""
    from earful.study.merge import merge_studies
    from earful.study.run import run_study
    from earful.study.status import study_status

    path = tmp_path / "s.yaml"
    path.write_text(STUDY.format(corpus=tmp_path / "corpus"))
    out = tmp_path / "out"
    text = run_study(load_study(path), out).read_text()
    assert sorted(p.name for p in (out / "gradvar").iterdir()) == ["2s-seed1.json", "4s-seed1.json"]
    assert "Gradient noise over training" not in text and not (out / "report" / "gradvar.csv").exists()
    saved = json.loads((out / "study.json").read_text())
    assert not [k for k in saved["fingerprint"]["study"] if k.startswith("gradvar_checkpoints")]
    del saved["gradvar_checkpoints"]  # a study.json of before the setting
    (out / "study.json").write_text(json.dumps(saved))
    before = tmp_path / "before"
    shutil.copytree(out, before)
    work = _work(out)

    grown = load_study(path, ["gradvar_checkpoints=[final, milestones]"])
    text = run_study(grown, out).read_text()
    after = _work(out)
    assert {k: v for k, v in after.items() if k in work} == work  # nothing trained or measured again
    assert sorted(set(after) - set(work)) == ["gradvar/2s-seed1__steps-2.json", "gradvar/4s-seed1__steps-2.json"]
    assert json.loads((out / "gradvar" / "4s-seed1__steps-2.json").read_text())["step"] == 2
    assert "4 gradient noise records" in study_status(out)
    assert "## Gradient noise over training" in text and "**Does the small batches' gradient noise rise" in text
    assert "| C6 | gradient std |" in text
    rows = _csv(out / "report" / "gradvar.csv")
    assert [(r["run"], r["checkpoint"], r["step"]) for r in rows] == [
        ("2s-seed1", "steps-2", "2"), ("2s-seed1", "final", "4"), ("4s-seed1", "steps-2", "2"),
        ("4s-seed1", "final", "4")]
    assert (out / "report" / "plots" / "gradvar_vs_steps.png").stat().st_size > 0
    with pytest.raises(ValueError, match=r"gradvar_checkpoints may gain items"):  # the milestones' records would go
        run_study(load_study(path), out)

    for order in ((before, out), (out, before)):  # with and without the milestones, either way round
        merged = tmp_path / f"merged-{order[0].name}"
        merge_studies(list(order), merged)
        assert json.loads((merged / "study.json").read_text())["gradvar_checkpoints"] == ["final", "milestones"]
        assert sorted(p.name for p in (merged / "gradvar").iterdir()) == sorted(p.name for p in (out / "gradvar")
                                                                                 .iterdir())
        work = _work(merged)
        run_study(grown, merged)
        assert _work(merged) == work
    (before / "gradvar" / "2s-seed1.json").unlink()  # without weights: a run whose measurement is to come keeps them
    shutil.copy(out / "study.json", before / "study.json")
    kept = merge_studies([before], tmp_path / "light", weights=False).weights_kept
    assert kept == {"pretrain/2s-seed1": ["gradient noise 2s-seed1", "gradient noise 2s-seed1__steps-2"],
                    "pretrain/4s-seed1": ["gradient noise 4s-seed1__steps-2"]}


def _records(out: Path, stds: dict[tuple[float, int, int], float], last: int = 4) -> dict:
    """gradvar records of the runs of ``stds`` ((batch, seed, step) → std), the final at step ``last``; runs.jsonl's
    records by name."""
    (out / "gradvar").mkdir(parents=True, exist_ok=True)
    runs = {}
    for (b, seed, step), std in stds.items():
        name = f"{b:g}s-seed{seed}"
        runs[name] = {"run": name, "tag": f"{b:g}s", "batch_seconds": b, "seed": seed, "steps": last}
        stem = name if step == last else f"{name}__steps-{step}"
        (out / "gradvar" / f"{stem}.json").write_text(json.dumps({"batch_seconds": b, "seed": seed, "step": step,
                                                                   "mean_param_grad_std": std}))
    return runs


def test_the_report_says_whether_the_small_batches_noise_rises_and_c6_takes_the_finals(tmp_path) -> None:
    """The noise over training, per batch size: rising at 4 s and 8 s beyond the seed spread, falling at 16 s and
    32 s; C6's slope is the finals' (-0.5), whatever the minima measured."""
    from earful.study.report import claims_section, gradvar_section

    stds = {}
    for b in (4.0, 8.0, 16.0, 32.0):
        for seed in (1, 2):
            final = 0.3 * b**-0.5 * (1 + 0.01 * seed)
            stds[(b, seed, 4)] = final
            stds[(b, seed, 2)] = final * (0.5 if b < 16 else 1.5)
    runs = _records(tmp_path, stds)
    rep = tmp_path / "report"
    (rep / "plots").mkdir(parents=True)
    study = {"gradvar_batches": 2, "gradvar_checkpoints": ["final", "milestones"]}
    text = "\n".join(gradvar_section(tmp_path, runs, study, rep))
    assert "Yes: it rises beyond 2 standard errors at each of the smaller batch sizes (4 s, 8 s)" in text
    assert "32 s 0.0807 at step 2 → 0.0538 at step 4, lower (beyond 2 standard errors)" in text
    assert len(_csv(rep / "gradvar.csv")) == 16 and (rep / "plots" / "gradvar_vs_steps.png").exists()
    claims = {"steps": 4, "cycles": 2, "cycle_minima": [2, 4], "seeds": [1, 2]}
    c6 = "\n".join(claims_section(tmp_path, {}, runs, claims, [], None, {}, {}, rep))
    assert "| C6 | gradient std | **reproduced** | log-log slope -0.50" in c6 and "over 8 runs" in c6

    for (b, seed, step), std in stds.items():  # 8 s falls too: rises at one of the smaller half
        if b == 8.0 and step == 2:
            (tmp_path / "gradvar" / f"8s-seed{seed}__steps-2.json").write_text(json.dumps({
                "batch_seconds": b, "seed": seed, "step": 2, "mean_param_grad_std": std * 3}))
    text = "\n".join(gradvar_section(tmp_path, runs, study, rep))
    assert "In part: it rises beyond 2 standard errors at 4 s of the smaller batch sizes (4 s, 8 s)" in text
    assert "C6's verdict" not in text  # a study without cycles has no C6
    one_seed = {k: v for k, v in runs.items() if k.endswith("seed1")}
    assert "Not judged: at 4 s, 8 s of the smaller batch sizes (4 s, 8 s) one seed (or no spread over seeds) " \
        "cannot tell" in "\n".join(gradvar_section(tmp_path, one_seed, study, rep))  # 4 s rises, 8 s falls: no SE
    for p in (tmp_path / "gradvar").glob("*__*.json"):  # the finals alone: no section, no stale plot
        p.unlink()
    assert gradvar_section(tmp_path, runs, study, rep) == []
    assert not (rep / "plots" / "gradvar_vs_steps.png").exists()


def test_the_smaller_batches_are_the_study_s_and_best_is_no_point_of_training(tmp_path) -> None:
    """The review of the report's answer: (1) the smaller half was taken of the batch sizes measured over training,
    so where only the large ones reach a milestone (fixed steps with ckpt_hours) it answered "yes" of 8 s, the
    second largest; (2) `best`, at another step in each seed, was a point of its own, judged on one seed; (3) one
    seed whose noise falls was a firm "no"."""
    from earful.study.report import gradvar_section

    rep = tmp_path / "report"
    (rep / "plots").mkdir(parents=True)
    study = {"gradvar_batches": 2, "gradvar_checkpoints": ["final", "milestones"], "cycles": 2}
    stds = {(b, seed, 4): 0.3 * (1 + 0.01 * seed) for b in (2.0, 4.0, 8.0, 16.0) for seed in (1, 2)}
    stds.update({(b, seed, 2): 0.1 * (1 + 0.01 * seed) for b in (8.0, 16.0) for seed in (1, 2)})
    text = "\n".join(gradvar_section(tmp_path, _records(tmp_path, stds), study, rep))
    assert "Not judged: none of the smaller batch sizes (2 s, 4 s) was measured at more than one point" in text, text
    assert "C6's verdict takes the final checkpoints alone" in text

    shutil.rmtree(tmp_path / "gradvar")
    runs = _records(tmp_path, {(b, seed, 4): 0.3 * (1 + 0.01 * seed) for b in (4.0, 16.0) for seed in (1, 2)})
    for b in (4.0, 16.0):
        for seed, step in ((1, 1), (2, 3)):
            (tmp_path / "gradvar" / f"{b:g}s-seed{seed}__best.json").write_text(json.dumps({
                "batch_seconds": b, "seed": seed, "step": step, "mean_param_grad_std": 0.1}))
    best = {**study, "gradvar_checkpoints": ["final", "best"]}
    text = "\n".join(gradvar_section(tmp_path, runs, best, rep))
    assert "Not judged: none of the smaller batch sizes (4 s) was measured at more than one point" in text, text
    assert "`best` there alone" in text and len(_csv(rep / "gradvar.csv")) == 8  # in the CSV, not judged

    shutil.rmtree(tmp_path / "gradvar")
    falls = _records(tmp_path, {(4.0, 1, 4): 0.1, (4.0, 1, 2): 0.3, (16.0, 1, 4): 0.1, (16.0, 1, 2): 0.3})
    text = "\n".join(gradvar_section(tmp_path, falls, study, rep))
    assert "Not judged: at 4 s of the smaller batch sizes (4 s) one seed" in text, text


def test_best_that_no_run_keeps_is_said_up_front_for_the_gradient_noise_too(tmp_path, caplog) -> None:
    """`gradvar_checkpoints: [final, best]` with keep_best=false measured no `best`, said only run by run."""
    import logging

    from earful.study.run import check_recipes

    y = tmp_path / "s.yaml"
    y.write_text(STUDY.format(corpus=tmp_path / "corpus"))
    with caplog.at_level(logging.WARNING):
        check_recipes(load_study(y, ["gradvar_checkpoints=[final, best]", "pretrain_overrides=[keep_best=false]"]))
    assert "gradvar_checkpoints: `best` is the pre-training's best validation checkpoint, but the pre-training " \
           "recipe has keep_best=false: no run will have one, so none is measured" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_recipes(load_study(y, ["gradvar_checkpoints=[final, best]", "gradvar_batches=0",
                                     "pretrain_overrides=[keep_best=false]"]))
    assert "gradvar_checkpoints" not in caplog.text  # nothing measured: nothing to say


def test_milestones_no_run_writes_are_said_up_front(tmp_path, caplog) -> None:
    """`milestones` chosen where no run writes one (no cycles, no ckpt_hours), or a ckpt_hours past every run's end,
    passed `study plan` in silence: nothing was fine-tuned or measured at them, said only run by run once training."""
    import logging

    from earful.study.run import check_recipes

    y = tmp_path / "s.yaml"
    y.write_text(STUDY.format(corpus=tmp_path / "corpus"))  # 2 and 4 s batches, 4 steps: 0.0044 h at most
    with caplog.at_level(logging.WARNING):
        check_recipes(load_study(y, ["cycles=0", "gradvar_checkpoints=[final, milestones]",
                                     "finetune.checkpoints=[final, milestones]", "ckpt_hours=[1.0, 0.0044, 3]"]))
    assert "ckpt_hours 1, 3: past the end of every run (the longest sees 0.00444 h, nominal): never written" \
           in caplog.text, caplog.text
    for key, done in (("finetune.checkpoints", "fine-tuned"), ("gradvar_checkpoints", "measured")):
        assert f"{key}: `milestones` are the checkpoints of ckpt_hours and the cycle minima, but no run writes one " \
               f"before its end (ckpt_hours=[1.0, 0.0044, 3.0], cycles=0), so none is {done}" in caplog.text
    caplog.clear()
    # 0.0044 h is the last step of 4 s batches (the final), past the end of 2 s; 0.002 h is step 2 of 4 s batches
    with caplog.at_level(logging.WARNING):  # the cycle minimum at step 2
        check_recipes(load_study(y, ["gradvar_checkpoints=[final, milestones]", "ckpt_hours=[0.002]",
                                     "finetune.checkpoints=[final, milestones]"]))
        check_recipes(load_study(y, ["cycles=0", "gradvar_checkpoints=[final, milestones]", "ckpt_hours=[0.002]",
                                     "finetune.checkpoints=[final, milestones]"]))
    assert "milestones" not in caplog.text and "ckpt_hours" not in caplog.text, caplog.text


def test_what_a_rerun_measures_runs_at_the_recipes_threads_and_gives_the_uninterrupted_numbers(
        cluster_study, tmp_path, monkeypatch) -> None:
    """The gradient noise, the probes' features and the evaluations ran on whatever torch threads the study's
    process was left with: 1 after a training of the study's (threads=1), torch's default in a rerun of a cut study
    with no training left to do, so that rerun gave other gradient noise (1e-7 apart) than an uninterrupted study.
    They run at the recipe's threads, whatever ran before."""
    import torch

    import earful.eval.evaluate
    import earful.pretrain.gradvar
    import earful.probe.suite
    from earful.study.run import run_study

    threads: dict[str, set[int]] = {}

    def spy(real):  # ``real``, noting the threads it runs on
        def call(*args, **kwargs):
            threads.setdefault(real.__name__, set()).add(torch.get_num_threads())
            return real(*args, **kwargs)
        return call

    for module, name in ((earful.pretrain.gradvar, "gradient_noise"), (earful.probe.suite, "run_suite"),
                         (earful.eval.evaluate, "evaluate")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    study = load_study(cluster_study, ["gradvar_batches=2", "probes=[ic]", "probe_overrides=[ic.steps=5]"])
    out = tmp_path / "out"
    before = torch.get_num_threads()
    try:
        run_study(study, out)  # trains, then measures in a process its training left at 1 thread
        first = {p.name: json.loads(p.read_text()) for p in (out / "gradvar").glob("*.json")}
        # as a study cut after its training: its measurements done again by a process that trained nothing
        shutil.rmtree(out / "gradvar")
        shutil.rmtree(out / "probe")
        shutil.rmtree(out / "eval")
        threads.clear()
        torch.set_num_threads(3)
        run_study(study, out)
    finally:
        torch.set_num_threads(before)
    assert threads == {"gradient_noise": {1}, "run_suite": {1}, "evaluate": {1}}
    assert {p.name: json.loads(p.read_text()) for p in (out / "gradvar").glob("*.json")} == first
