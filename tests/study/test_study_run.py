"""A whole study, end to end, at toy scale: plan → pre-train grid → fine-tune → evaluate → report,
and a study killed mid-way (between stages, or inside a pre-training run) continues to the same report."""

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from earful.study.config import load_study
from earful.study.report import build_report
from earful.study.run import run_study
from earful.train.state import RunDir

STUDY = """
name: toy
corpus:
  dir: {corpus}
  synth: {{hours: 0.01, domain: commands, seed: 5, labelled_fraction: 1.0}}
  label_sets: {{10h: manifests/labelled-10h.jsonl}}
  test: {{test: manifests/test.jsonl}}
pretrain_config: null
pretrain_overrides: [model_preset=tiny, log_every=2, valid_every=2, ckpt_every=2, data.num_workers=0,
                     data.crop_seconds=2.0, data.min_seconds=0.3, tensorboard=false, threads=1]
grid: [4, 8]
mode: fixed-steps
steps: 4
lr: 1.0e-3
lr_scaling: sqrt
reference_batch_seconds: 8
device_seconds: 4
ckpt_hours: [0.004]
finetune:
  overrides: [model_preset=tiny, batch_seconds=8, device_seconds=8, max_steps=3, valid_every=3, log_every=1,
              ckpt_every=3, freeze_transformer_steps=1, data.num_workers=0, tensorboard=false, threads=1,
              optim.lr=1.0e-3]
  checkpoints: [final, milestones]
  baselines: [scratch]
seeds: [1]
"""


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    path = root / "toy.yaml"
    path.write_text(STUDY.format(corpus=root / "corpus"))
    return path


def test_toy_study_end_to_end_and_resumes(study_file, tmp_path, monkeypatch) -> None:
    study = load_study(study_file)
    out = tmp_path / "out"
    report = run_study(study, out)
    text = report.read_text()
    assert "## WER after fine-tuning" in text and "## Findings" in text
    assert "### In WER (`test`)" in text and "### In CER (`test`)" in text
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    names = {(r["pretrain"], r["checkpoint"]) for r in results}
    assert ("4s-seed1", "final") in names and ("8s-seed1", "final") in names
    assert ("scratch", "init") in names
    assert any(ck.startswith("hours-") for _, ck in names)
    # milestones count the plan's hours (batch × steps, as the paper): 0.004 h of 8 s batches is step 2
    ck = json.loads((out / "pretrain" / "8s-seed1" / "checkpoints" / "hours-0.004" / "trainer.json").read_text())
    assert ck["step"] == 2
    for r in results:
        assert 0.0 <= r["cer"] and r["split"] == "test"
    plots = {p.name for p in (out / "report" / "plots").glob("*.png")}
    assert {"wer_vs_batch.png", "wer_vs_hours.png", "cer_vs_batch.png", "cer_vs_hours.png",
            "valid_accuracy_vs_hours.png"} <= plots
    # a killed study: remove a finished fine-tuning and its evaluation, and the report; rerun
    first = text
    (out / "report" / "report.md").unlink()
    victim = next((out / "finetune").iterdir())
    (victim / "done.json").unlink()
    for p in (out / "eval" / victim.name).iterdir():
        p.unlink()
    (out / "eval" / victim.name).rmdir()
    again = run_study(load_study(study_file), out).read_text()
    assert again == first
    assert build_report(out).read_text() == first

    # killed inside a pre-training run, after its step-2 records were logged and before its step-2 checkpoint
    # was complete (latest.json not yet written, but best and the 0.004 h milestone of step 2 are): the rerun
    # resumes from the step-2 checkpoint written last and ends with the same report, without duplicate records
    victim = "8s-seed1"
    shutil.rmtree(out / "pretrain" / victim)
    for stage in ("finetune", "eval"):
        for d in (out / stage).glob(f"{victim}__*"):
            shutil.rmtree(d)
    (out / "report" / "report.md").unlink()
    real_save = RunDir.save

    def killed_in_save(self: RunDir, name: str, *args, **kwargs):
        if self.root.name == victim and name == "step-0000002":
            raise _Killed(name)
        return real_save(self, name, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(RunDir, "save", killed_in_save)
        with pytest.raises(_Killed):
            run_study(load_study(study_file), out)
    valid = out / "pretrain" / victim / "valid.jsonl"
    assert [json.loads(line)["step"] for line in valid.read_text().splitlines()] == [2]
    assert not (out / "pretrain" / victim / "checkpoints" / "latest.json").exists()
    assert run_study(load_study(study_file), out).read_text() == first
    for log in ("train.jsonl", "valid.jsonl"):
        steps = [json.loads(line)["step"] for line in (out / "pretrain" / victim / log).read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 4, (log, steps)

    # a test split added to the finished study: each finished fine-tuning is evaluated on it alone (the study was
    # refused: "test splits may not change or be added"), nothing is trained again, the earlier split's results stay
    evals = sorted((out / "eval").iterdir())
    before = {d.name: (d / "test.greedy.jsonl").read_bytes() for d in evals}
    trained = {p: p.stat().st_mtime_ns for p in (out / "finetune").glob("*/checkpoints/*/model.safetensors")}
    more = load_study(study_file, ["corpus.test={test: manifests/test.jsonl, dev: manifests/dev.jsonl}"])
    text = run_study(more, out).read_text()
    for d in evals:
        assert set(json.loads((d / "summary.json").read_text())["splits"]) == {"test", "dev"}, d
        assert (d / "test.greedy.jsonl").read_bytes() == before[d.name]
    assert trained == {p: p.stat().st_mtime_ns for p in trained}
    assert "### In CER (`test`)" in text  # the main split, as before
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_split = {split: sorted((r["pretrain"], r["checkpoint"]) for r in rows if r["split"] == split)
                for split in ("test", "dev")}
    assert len(rows) == 2 * len(by_split["test"]) and by_split["dev"] == by_split["test"] == sorted(names)
    assert "Not finished" not in text
    # the study grown (a seed, a test split, a probe task) and stopped before its end: the report of its last finish
    # said nothing of the plan's table holding runs it did not cover. It names them
    grown = json.loads((out / "study.json").read_text())
    grown["seeds"], grown["probes"] = [1, 2], ["pr"]
    grown["corpus"]["test"]["other"] = "manifests/dev.jsonl"
    (out / "study.json").write_text(json.dumps(grown))
    stale = build_report(out).read_text()
    assert "**Not finished:** the study's plan (above) holds 4s-seed2, 8s-seed2, test split other, probe task pr," \
           in stale
    with pytest.raises(ValueError, match=r"differs in study\.corpus\.test\.test, .*\(test splits may be added, "
                                         r"not changed or removed\)"):
        run_study(load_study(study_file, ["corpus.test={test: manifests/dev.jsonl, dev: manifests/dev.jsonl}"]), out)


def _trained(out: Path, run: str = "4s-seed1") -> None:
    """A finished pre-training in study folder ``out``, as the study marks it: its recipe was trained with."""
    (out / "pretrain" / run).mkdir(parents=True)
    (out / "pretrain" / run / "done.json").write_text(json.dumps({"run": run, "step": 4}))


class _Killed(BaseException):
    """Ends the study like SIGKILL would: nothing catches it."""


def test_parallel_jobs_give_the_same_study(study_file, tmp_path) -> None:
    """jobs=2 runs the pre-trainings and fine-tunings in two worker processes, fine-tunings as soon as their
    pre-training is done; with the same threads per run the results and the report are those of jobs=1."""
    serial = run_study(load_study(study_file), tmp_path / "serial").read_text()
    parallel = run_study(load_study(study_file, ["jobs=2"]), tmp_path / "parallel")
    assert parallel.read_text() == serial
    for name in ("runs.jsonl", "results.jsonl"):
        assert (tmp_path / "parallel" / name).read_text() == (tmp_path / "serial" / name).read_text()
    logs = list((tmp_path / "parallel" / "logs").glob("worker-*.log"))
    assert logs and any("fine-tuning" in p.read_text() for p in logs)


def test_a_corpus_built_with_other_settings_is_an_error(study_file) -> None:
    from earful.study.corpus import ensure_corpus

    root = study_file.parent
    ensure_corpus(load_study(study_file), root)  # builds it, or finds it as asked
    with pytest.raises(ValueError, match=r"requested_hours: 0.01 there, 0.02 asked"):
        ensure_corpus(load_study(study_file, ["corpus.synth.hours=0.02"]), root)


def test_a_study_folder_refuses_another_recipe(study_file, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    study = load_study(study_file)
    fp = recipe_fingerprint(study, plan_runs(study), study_file.parent)
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": fp}))
    check_same_recipe(out, fp)  # the same study continues
    other = load_study(study_file, ["jobs=2", "throughput=5"])  # how it runs is not what it is
    check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), study_file.parent))
    other = load_study(study_file, ["steps=5"])
    with pytest.raises(ValueError, match=r"another recipe \(differs in study\.steps, grid\.4s, grid\.8s\) "
                                         r"\(was -> now: study\.steps: 4 -> 5\); use another --out"):
        check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), study_file.parent))  # values said too
    other = load_study(study_file, ["finetune.overrides=[max_steps=9]"])  # the list's effect, key by key
    with pytest.raises(ValueError, match=r"differs in finetune\..*finetune\.max_steps"):
        check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), study_file.parent))
    # a config named by its preset or by its file's path (studies run from anywhere name presets) is one recipe
    configs = Path(__file__).resolve().parents[2] / "earful" / "configs"
    fps = [recipe_fingerprint(s, plan_runs(s), study_file.parent) for s in (
        load_study(study_file, [f"pretrain_config={c}", f"finetune.config={f}"]) for c, f in (
            ("pretrain-demo", "finetune-demo"), (configs / "pretrain-demo.yaml", configs / "finetune-demo.yaml")))]
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": fps[0]}))
    check_same_recipe(out, fps[1])
    other = load_study(study_file, ["pretrain_config=pretrain-paper", "finetune.config=finetune-demo"])
    with pytest.raises(ValueError, match=r"another recipe \(differs in .*pretrain\."):
        check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), study_file.parent))


def _a_study_key_renamed(study_file: Path, tmp_path: Path, old: str, new: str, training: str, override: str,
                         other: str, differs: str) -> tuple[Path, dict]:
    """Study key ``new`` was called ``old`` (``training``, the training's key it sets, had ``new`` already). A study
    file, or the overrides (``override``), that still say ``old`` are refused with the new name; a study folder
    (one run trained) whose study.json says ``old``, in its config and its fingerprint, continues with the same
    recipe and is refused with ``other`` (an override of ``new``), naming what ``differs``. The folder and its
    study.json."""
    from earful.config import ConfigError, to_dict
    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    old_file = tmp_path / "old.yaml"
    old_file.write_text(study_file.read_text().replace(f"{new}:", f"{old}:"))
    with pytest.raises(ConfigError, match=rf"{old_file}: {old} is now called {new} \(the same values\), as the "
                                          rf"training's {training}"):
        load_study(old_file)
    with pytest.raises(ConfigError, match=rf"the overrides: {old} is now called {new}"):
        load_study(study_file, [override])
    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    study = load_study(study_file)
    fp = recipe_fingerprint(study, plan_runs(study), study_file.parent)
    before = json.loads(json.dumps(fp))
    before["study"][old] = before["study"].pop(new)
    record = {**{(old if k == new else k): v for k, v in json.loads(json.dumps(to_dict(study))).items()},
              "format": STUDY_FORMAT, "fingerprint": before}
    (out / "study.json").write_text(json.dumps(record))
    check_same_recipe(out, fp)
    changed = load_study(study_file, [other])
    with pytest.raises(ValueError, match=rf"differs in {differs}"):
        check_same_recipe(out, recipe_fingerprint(changed, plan_runs(changed), study_file.parent))
    return out, record


def test_lr_rule_is_lr_scaling_and_a_study_folder_of_before_continues(study_file, tmp_path) -> None:
    """The study's lr rule had a name of its own (lr_rule) for the training's optim.lr_scaling (the same rule,
    the same values). A study file that still says lr_rule is refused with the new name; a study folder whose
    study.json says it continues with the same value, and is refused with another."""
    from earful.study.report import unfinished_section

    out, record = _a_study_key_renamed(study_file, tmp_path, "lr_rule", "lr_scaling", "optim.lr_scaling",
                                       "lr_rule=linear", "lr_scaling=linear", r"study\.lr_scaling, grid\.4s")
    assert any("4s-seed" in line for line in unfinished_section(record, {}, [], out))  # the report reads it


def test_milestone_hours_is_ckpt_hours_and_a_study_folder_of_before_continues(study_file, tmp_path) -> None:
    """The study's milestones had a name of their own (milestone_hours) for the training's ckpt_hours, which the
    study passes them into (counted nominal). A study file or override that still says milestone_hours is refused
    with the new name; a study folder whose study.json says it continues with the same hours (and is refused with
    others), and its status and its report's unfinished section read its plan."""
    from earful.study.report import unfinished_section
    from earful.study.status import study_status

    out, record = _a_study_key_renamed(study_file, tmp_path, "milestone_hours", "ckpt_hours", "ckpt_hours",
                                       "milestone_hours=[0.002]", "ckpt_hours=[0.002]", r"study\.ckpt_hours")
    status = study_status(out)
    assert "1 of 2 pre-training runs finished" in status and re.search(r"\| 8s-seed1 +\| 8 s +\|", status), status
    assert any("8s-seed1" in line for line in unfinished_section(record, {"4s-seed1": {}}, [], out))


def test_corpus_dev_is_finetune_valid_and_a_study_folder_of_before_continues(study_file, tmp_path) -> None:
    """The fine-tuning's validation manifest was the study's corpus.dev (the fine-tuning's data.dev, now its
    data.valid, as the pre-training's): corpus.finetune_valid. A study file or override that still says
    corpus.dev is refused with the new name; a study folder whose study.json says it (its config, its
    fingerprint's study part and the manifest's role in the data part) continues as the same recipe, is refused
    with another manifest there, and is written again with today's names only (``earful study merge``)."""
    from earful.config import ConfigError, to_dict
    from earful.study.config import plan_runs, study_of_record
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint, with_todays_names

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, rows in (("dev.jsonl", 1), ("other.jsonl", 2)):
        (corpus / name).write_text("".join(json.dumps({"id": f"u{i}", "path": f"u{i}.flac", "seconds": 1.0}) + "\n"
                                           for i in range(rows)))
    here = tmp_path / "toy.yaml"
    here.write_text(study_file.read_text().replace("  label_sets:", "  finetune_valid: dev.jsonl\n  label_sets:")
                    .replace(f"  dir: {study_file.parent / 'corpus'}", f"  dir: {corpus}"))
    old_file = tmp_path / "old.yaml"
    old_file.write_text(here.read_text().replace("finetune_valid:", "dev:"))
    said = r"corpus\.dev is now called corpus\.finetune_valid \(the same values\), as the training's data\.valid"
    with pytest.raises(ConfigError, match=rf"{old_file}: {said}"):
        load_study(old_file)
    with pytest.raises(ConfigError, match=rf"the overrides: {said}"):
        load_study(here, ["corpus.dev=dev.jsonl"])
    assert load_study(here, ["corpus.test={dev: dev.jsonl}"]).corpus.test == {"dev": "dev.jsonl"}  # a split's name
    study = load_study(here)
    fp = recipe_fingerprint(study, plan_runs(study), tmp_path)
    assert fp["study"]["corpus.finetune_valid"] == "dev.jsonl" and "finetune_valid" in fp["data"]
    before = json.loads(json.dumps(fp))
    before["study"]["corpus.dev"] = before["study"].pop("corpus.finetune_valid")
    before["data"]["dev"] = before["data"].pop("finetune_valid")
    config = json.loads(json.dumps(to_dict(study)))
    config["corpus"]["dev"] = config["corpus"].pop("finetune_valid")
    record = {**config, "format": STUDY_FORMAT, "fingerprint": before}
    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    (out / "study.json").write_text(json.dumps(record))
    check_same_recipe(out, fp)
    assert study_of_record(record).corpus.finetune_valid == "dev.jsonl"
    changed = load_study(here, ["corpus.finetune_valid=other.jsonl"])
    with pytest.raises(ValueError, match=r"differs in .*study\.corpus\.finetune_valid"):
        check_same_recipe(out, recipe_fingerprint(changed, plan_runs(changed), tmp_path))
    written = with_todays_names(record)
    assert "dev" not in written["corpus"] and written["corpus"]["finetune_valid"] == "dev.jsonl"
    assert "corpus.dev" not in written["fingerprint"]["study"] and "dev" not in written["fingerprint"]["data"]


def test_a_study_json_of_an_earlier_earful_continues_when_only_run_settings_differ(study_file, tmp_path) -> None:
    """A study.json holding settings that only say where or how fast a run goes (log_every, compile) or the raw
    override lists (whose effect the pretrain and finetune parts hold key by key) is the same recipe (before,
    adding compile_mode refused every existing study folder). What may change results is not: validation
    settings (they pick checkpoints/best and make the validation loss), and a setting an earlier study.json does
    not know (added since: its default may not be the earlier behaviour)."""
    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    study = load_study(study_file)
    fp = recipe_fingerprint(study, plan_runs(study), study_file.parent)
    assert "compile_mode" not in fp["pretrain"] and "log_every" not in fp["pretrain"]
    assert "valid_every" in fp["finetune"] and "pretrain_overrides" not in fp["study"]
    earlier = json.loads(json.dumps(fp))
    earlier["pretrain"].update({"log_every": 7, "compile": False})  # held by study.json files of before
    earlier["study"]["pretrain_overrides"] = ["compile=true"]
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": earlier}))
    check_same_recipe(out, fp)
    for part, key, value in (("finetune", "valid_every", 12345), ("finetune", "keep_best", False)):
        changed = json.loads(json.dumps(fp))
        changed[part][key] = value
        with pytest.raises(ValueError, match=rf"differs in {part}\.{key}\)"):
            check_same_recipe(out, changed)
    unknown = json.loads(json.dumps(earlier))
    del unknown["pretrain"]["model.mask_channel_prob"]  # as if the setting did not exist then
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": unknown}))
    with pytest.raises(ValueError, match=r"differs in pretrain\.model\.mask_channel_prob\)"):
        check_same_recipe(out, fp)


def test_a_folder_from_an_earlier_development_version_is_refused(study_file, tmp_path) -> None:
    """There is no release: a study.json without this version's format is refused, naming the way out."""
    from earful.config import to_dict
    from earful.study.config import plan_runs
    from earful.study.fingerprint import check_same_recipe, recipe_fingerprint

    study = load_study(study_file)
    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    (out / "study.json").write_text(json.dumps({**to_dict(study), "plan": "| run |"}))
    with pytest.raises(ValueError, match=r"earlier development version of earful \(format None.*use another --out"):
        check_same_recipe(out, recipe_fingerprint(study, plan_runs(study), study_file.parent))


def test_a_recipe_nothing_was_trained_with_may_change(study_file, tmp_path, caplog) -> None:
    """study.json is written before the first run starts: a pre-training that failed on a setting (a batch the
    corpus cannot fill) left a folder whose fix (data.skip_bad=true, as the error says) was refused as another
    recipe. Until something is trained or measured with it (a checkpoint but init, a done.json, an evaluation, a
    probe, a gradient noise record) the folder takes the new recipe, saying so; after, it is refused as before."""
    import logging

    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    study = load_study(study_file)
    out = tmp_path / "out"
    (out / "pretrain").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": recipe_fingerprint(
        study, plan_runs(study), study_file.parent)}))
    failed = out / "pretrain" / "4s-seed1"
    for left in ("checkpoints/init", "checkpoints/.tmp-step-0000002-99"):  # the random init; a killed write
        (failed / left).mkdir(parents=True)
        (failed / left / "trainer.json").write_text(json.dumps({"step": 0}))
    (failed / "train.jsonl").write_text("")
    (out / "pretrain" / "8s-seed1.yaml").write_text("")  # a multi-device run's config
    fixed = load_study(study_file)
    fixed.pretrain_overrides.append("data.skip_bad=true")
    fp = recipe_fingerprint(fixed, plan_runs(fixed), study_file.parent)
    with caplog.at_level(logging.WARNING):
        check_same_recipe(out, fp)
    assert re.search(r"its study.json holds another recipe \(differs in pretrain\.data\.skip_bad\), but nothing in "
                     r"the folder was trained or measured with that recipe yet .*: the folder takes this recipe",
                     caplog.text)
    (out / "study.json").write_text(json.dumps({"format": 1}))  # an earlier development version's: the same
    check_same_recipe(out, fp)
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": recipe_fingerprint(
        study, plan_runs(study), study_file.parent)}))
    trained = [failed / "checkpoints" / "step-0000002" / "trainer.json", out / "pretrain" / "8s-seed1" / "done.json",
               out / "finetune" / "4s-seed1__final__10h" / "checkpoints" / "best" / "trainer.json",
               out / "eval" / "scratch-seed1__init__10h" / "summary.json",
               out / "probe" / "fbank" / "seed-0" / "summary.json", out / "gradvar" / "4s-seed1.json"]
    for path in trained:
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        with pytest.raises(ValueError, match=r"another recipe \(differs in pretrain\.data\.skip_bad\)"):
            check_same_recipe(out, fp)
        path.unlink()
        check_same_recipe(out, fp)  # without it, nothing was trained


def test_a_pretraining_that_stops_short_is_not_marked_done(tmp_path, monkeypatch) -> None:
    """torchrun's ranks, stopped by a signal, exit cleanly: the study must not take step 120 of 338 as done."""
    import earful.pretrain.task as pretrain
    from earful.study.config import PlannedRun, StudyConfig
    from earful.study.pool import StudyStopped
    from earful.study.stages import run_pretraining_stage

    monkeypatch.setattr(pretrain, "run_pretraining", lambda cfg, rdir, resume: {"step": 120})
    from earful.pretrain.config import PretrainConfig

    monkeypatch.setattr("earful.study.stages.pretrain_config", lambda study, run, root: PretrainConfig())
    run = PlannedRun(tag="16s", batch_seconds=16, devices=1, device_seconds=16, lr=1e-3,
                     steps=338, hours=1.5, seed=1)
    study = StudyConfig()
    study.corpus.train, study.corpus.valid = "train.jsonl", None
    with pytest.raises(StudyStopped, match="stopped at step 120 of 338"):
        run_pretraining_stage(study, run, tmp_path, tmp_path)
    assert not (tmp_path / "pretrain" / "16s-seed1" / "done.json").exists()
    monkeypatch.setattr(pretrain, "run_pretraining", lambda cfg, rdir, resume: {"step": 338})
    assert run_pretraining_stage(study, run, tmp_path, tmp_path)["step"] == 338
    assert (tmp_path / "pretrain" / "16s-seed1" / "done.json").exists()


def test_a_finished_study_continues_with_more_seeds(study_file, tmp_path) -> None:
    """Seeds and the name say which runs a folder holds, not what a run computes: adding seeds continues it."""
    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    study = load_study(study_file)
    fp = recipe_fingerprint(study, plan_runs(study), study_file.parent)
    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": fp}))
    for seeds in ("[1, 2]", "[2, 3]"):  # the first run's seed is not part of the recipe either
        more = load_study(study_file, [f"seeds={seeds}", "name=toy-more"])
        check_same_recipe(out, recipe_fingerprint(more, plan_runs(more), study_file.parent))
    other = load_study(study_file, ["seeds=[1, 2]", "steps=5"])
    with pytest.raises(ValueError, match=r"differs in study\.steps"):
        check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), study_file.parent))


def test_a_finished_study_continues_with_a_batch_size_added(study_file, tmp_path) -> None:
    """C2 one doubling further: a batch size added to a finished study continues it (its runs are new, the
    finished ones kept), before or after the others; an entry the folder was made with may not change or go."""
    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, grid_planner, recipe_fingerprint

    study = load_study(study_file)  # grid [4, 8], lr sqrt-scaled around 8 s
    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT,
                                                "fingerprint": recipe_fingerprint(study, plan_runs(study),
                                                                                  study_file.parent)}))
    for grid in ("[4, 8, 16]", "[2, 4, 8]", "[{batch_seconds: 2, lr: 1.0e-4}, 4, 8]"):
        more = load_study(study_file, [f"grid={grid}"])
        check_same_recipe(out, recipe_fingerprint(more, plan_runs(more), study_file.parent))
    for grid, entry in (("[4, {batch_seconds: 8, lr: 1.0e-4}]", "8s"), ("[4, 16]", "8s"),
                        ("[{batch_seconds: 4, device_seconds: 2}, 8]", "4s")):
        other = load_study(study_file, [f"grid={grid}"])
        with pytest.raises(ValueError, match=rf"differs in grid\.{entry}\) \(grid entries may be added"):
            check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), study_file.parent))
    other = load_study(study_file, ["grid=[4, 8, 16]", "reference_batch_seconds=16"])  # every entry's lr moves
    with pytest.raises(ValueError, match=r"differs in study\.reference_batch_seconds, grid\.4s, grid\.8s\)"):
        check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), study_file.parent))
    # the cyclic schedule's step size is the entries' only where the study sets it (cycles): here, the recipe's
    cyclic = [f"pretrain_overrides=[model_preset=tiny, optim.schedule=cyclic, optim.cyclic_step_size={n}]"
              for n in (1, 2)]
    first = load_study(study_file, [cyclic[0]])
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": recipe_fingerprint(
        first, plan_runs(first), study_file.parent)}))
    other = load_study(study_file, [cyclic[1]])
    with pytest.raises(ValueError, match=r"differs in pretrain\.optim\.cyclic_step_size\)"):
        check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), study_file.parent))
    # a study.json written before grid entries were fingerprinted: its entries are planned again from the grid it
    # lists, so it grows as one of today (runs/cpu-paper-c2, 128 s, was refused 256 s: "differs in study.grid")
    before = recipe_fingerprint(study, plan_runs(study), study_file.parent)
    del before["grid"]
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": before}))
    check_same_recipe(out, recipe_fingerprint(study, plan_runs(study), study_file.parent))
    for grid in ("[4, 8, 16]", "[2, 4, 8]"):
        more = load_study(study_file, [f"grid={grid}"])
        check_same_recipe(out, recipe_fingerprint(more, plan_runs(more), study_file.parent), None,
                          grid_planner(more))
    for grid, entry in (("[4, {batch_seconds: 8, lr: 1.0e-4}]", "8s"), ("[4, 16]", "8s")):
        other = load_study(study_file, [f"grid={grid}"])
        with pytest.raises(ValueError, match=rf"differs in grid\.{entry}\) \(grid entries may be added"):
            check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), study_file.parent), None,
                              grid_planner(other))
    # where the planner no longer gives what that study.json recorded for its first run, its grid is compared whole
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": {
        **before, "pretrain": {**before["pretrain"], "optim.lr": 2 * before["pretrain"]["optim.lr"]}}}))
    more = load_study(study_file, ["grid=[4, 8, 16]"])
    with pytest.raises(ValueError, match=r"differs in study\.grid, pretrain\.optim\.lr\)"):
        check_same_recipe(out, recipe_fingerprint(more, plan_runs(more), study_file.parent), None,
                          grid_planner(more))


def test_a_finished_study_continues_with_probe_tasks_baselines_and_label_sets_added(study_file, tmp_path,
                                                                                     caplog) -> None:
    """As a batch size added: a probe task, a baseline, a checkpoint or a label set to fine-tune added to a
    finished study is work of its own, the finished work stays what the new recipe makes (the added task's
    recipe and manifests are new, the others' unchanged), so the folder continues; so does a test split added. An
    item removed, a finished task's recipe or label set's overrides changed, or a test split changed or removed is
    refused, naming the setting."""
    import logging

    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    corpus = tmp_path / "corpus"
    (corpus / "manifests").mkdir(parents=True)
    for name in ("train", "dev", "test", "labelled-10h", "labelled-1h"):
        (corpus / "manifests" / f"{name}.jsonl").write_text(f'{{"id": "{name}"}}\n')
    both = "corpus.label_sets={10h: manifests/labelled-10h.jsonl, 1h: manifests/labelled-1h.jsonl}"

    def fingerprint(*more: str) -> dict:
        study = load_study(study_file, [f"corpus.dir={corpus}", both, "finetune.label_sets=[10h]", "probes=[pr, ic]",
                                        *more])
        return recipe_fingerprint(study, plan_runs(study), tmp_path)

    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": fingerprint()}))
    grown = fingerprint("probes=[pr, ic, sid]")
    assert set(grown["probe"]) - set(fingerprint()["probe"]) == {"sid.steps", "sid.lr", "sid.weight_decay"}
    assert set(grown["data"]) - set(fingerprint()["data"]) == {"probe.labelled-10h"}
    with caplog.at_level(logging.WARNING):
        for more in (["probes=[pr, ic, sid]"], ["probes=[sid, ic, pr]", "probe_overrides=[sid.steps=5]"],
                     ["finetune.baselines=[scratch, scratch-frozen-cnn]"],
                     ["finetune.checkpoints=[final, milestones, best]"],
                     ["finetune.label_sets=[10h, 1h]", "finetune.per_label_set={1h: [max_steps=2]}"],
                     ["finetune.label_sets=null"],  # every label set of the corpus
                     [both.replace("}", ", 10min: manifests/dev.jsonl}"), "finetune.label_sets=[10h, 10min]"],
                     ["probes=[pr, ic, sid, asr]", "finetune.baselines=[scratch, scratch-trainable-cnn]",
                      "finetune.label_sets=[10h, 1h]"],
                     ["corpus.test={test: manifests/test.jsonl, other: manifests/dev.jsonl}"]):
            check_same_recipe(out, fingerprint(*more))
    assert not caplog.records, caplog.text
    for more, named in (
            (["probes=[pr]"], r"study\.probes, probe\.ic\.lr, .*\) \(probes may gain items, not lose or change one\)"),
            (["probes=[pr, sid]"], r"study\.probes, probe\.ic\.lr, probe\.ic\.steps, probe\.ic\.weight_decay\) "
                                   r"\(probes may gain items"),
            (["finetune.baselines=[]"], r"study\.finetune\.baselines\) \(finetune\.baselines may gain items"),
            (["finetune.checkpoints=[final]"], r"study\.finetune\.checkpoints\)"),
            (["finetune.label_sets=[1h]"], r"study\.finetune\.label_sets\)"),
            (["probes=[pr, ic, sid]", "probe_overrides=[pr.epochs=3]"], r"probe\.pr\.epochs\)"),
            (["finetune.per_label_set={10h: [max_steps=2]}"], r"study\.finetune\.per_label_set\.10h\)"),
            (["corpus.label_sets={10h: manifests/labelled-1h.jsonl, 1h: manifests/labelled-1h.jsonl}"],
             r"study\.corpus\.label_sets\.10h, data\.label_set\.10h\)"),
            (["corpus.test={test: manifests/dev.jsonl}"],
             r"study\.corpus\.test\.test, data\.test\.test\) \(test splits may be added, not changed or removed")):
        with pytest.raises(ValueError, match=rf"another recipe \(differs in {named}"):
            check_same_recipe(out, fingerprint(*more))
    # a test split removed
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": fingerprint(
        "corpus.test={test: manifests/test.jsonl, other: manifests/dev.jsonl}")}))
    with pytest.raises(ValueError, match=r"in study\.corpus\.test\.other, data\.test\.other\) \(test splits may"):
        check_same_recipe(out, fingerprint())


def test_a_probe_task_added_probes_the_finished_upstreams_with_it_alone(tmp_path, monkeypatch) -> None:
    """A probe summary of the first tasks counted as probed: a task added to a finished study was never probed
    on its finished upstreams. It is, alone (into added-TASKS/), and the summary holds every task."""
    import earful.probe.suite as suite
    from earful.study.config import StudyConfig
    from earful.study.stages import probe_stage, probe_summary, probed

    calls = []

    def run_suite(upstream, corpus, out_dir, tasks, seed, **kwargs) -> dict:
        calls.append((Path(out_dir).relative_to(tmp_path).as_posix(), list(tasks)))
        return {t: {"metric": 0.5} for t in tasks}

    monkeypatch.setattr(suite, "run_suite", run_suite)
    study = StudyConfig(probes=["pr", "ic"], probe_seeds=[0])
    assert not probed(study, tmp_path, "fbank")
    probe_stage(study, "fbank", "fbank", tmp_path, tmp_path)
    assert probed(study, tmp_path, "fbank") and calls == [("probe/fbank/seed-0", ["pr", "ic"])]
    study.probes = ["pr", "ic", "sid"]
    assert not probed(study, tmp_path, "fbank")
    rows = probe_stage(study, "fbank", "fbank", tmp_path, tmp_path)
    assert calls[1:] == [("probe/fbank/seed-0/added-sid", ["sid"])] and probed(study, tmp_path, "fbank")
    assert list(json.loads(probe_summary(tmp_path, "fbank", 0).read_text())) == ["pr", "ic", "sid"]
    assert [r["task"] for r in rows] == ["pr", "ic", "sid"]
    probe_stage(study, "fbank", "fbank", tmp_path, tmp_path)
    assert len(calls) == 2  # nothing left to probe


def test_a_studys_probes_extract_on_its_pre_training_recipes_device(tmp_path, monkeypatch) -> None:
    """A study's probes took `auto` whatever its recipe said (a CPU study resumed on a GPU machine probed its
    remaining checkpoints on CUDA, whose features differ in their last bits): the recipe's `device` now."""
    import earful.probe.suite as suite
    from earful.checkpoint import save_model
    from earful.model import Wav2Vec2ForPreTraining, load_model_config
    from earful.study.config import StudyConfig
    from earful.study.stages import probe_stage

    ckpt = save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    given = []
    monkeypatch.setattr(suite, "run_suite", lambda upstream, *a, **k: given.append(upstream) or {"pr": {"per": 0.5}})
    monkeypatch.setattr("earful.train.distributed.torch.cuda.is_available", lambda: True)  # auto would say cuda
    study = StudyConfig(probes=["pr"], probe_seeds=[0], pretrain_overrides=["device=cpu"])
    probe_stage(study, "8s-seed1", str(ckpt), tmp_path / "out", tmp_path)
    assert given[0].device == "cpu" and given[0].ckpt == str(ckpt.resolve())
    assert "device" not in given[0].fingerprint()  # a CPU's features: the cache keys of before
    # a device the machine lacks is named as the recipe's setting: a study has no --device
    monkeypatch.setattr("earful.train.distributed.torch.cuda.is_available", lambda: False)
    study.pretrain_overrides = ["device=cuda"]
    with pytest.raises(ValueError, match=r"^device=cuda: no CUDA"):
        probe_stage(study, "8s-seed2", str(ckpt), tmp_path / "out", tmp_path)


def test_a_rerun_that_leaves_finished_runs_out_says_so(tmp_path, monkeypatch, caplog) -> None:
    """A finished seeds-[1, 2] study run again with seeds [2] rewrote runs.jsonl, results.jsonl and the report
    with seed 2 alone, without a word of seed 1's finished runs in the folder: now a warning names them, before
    the runs and with the report (a report on a subset may be what the user wants)."""
    import logging
    from dataclasses import asdict

    from earful.study.config import plan_runs
    from earful.study.run import left_out

    corpus = tmp_path / "corpus" / "manifests"
    corpus.mkdir(parents=True)
    for name in ("train", "dev"):
        (corpus / f"{name}.jsonl").write_text('{"id": "a"}\n')
    path = tmp_path / "few.yaml"
    path.write_text(f"name: few\ncorpus: {{dir: {corpus.parent}}}\ngrid: [10]\nmode: fixed-steps\nsteps: 10\n"
                    "seeds: [1, 2]\nfinetune: {baselines: []}\n")  # pre-training only
    out = tmp_path / "out"
    for run in plan_runs(load_study(path)):  # finished, as the study marks a pre-training
        (out / "pretrain" / run.name).mkdir(parents=True)
        (out / "pretrain" / run.name / "done.json").write_text(json.dumps({**asdict(run), "run": run.name,
                                                                            "step": run.steps}))
    monkeypatch.setattr("earful.study.run.build_report", lambda out: out / "report" / "report.md")
    with caplog.at_level(logging.WARNING):
        run_study(load_study(path, ["seeds=[2]"]), out, root=tmp_path)
    said = [r.getMessage() for r in caplog.records if "leaves out" in r.getMessage()]
    assert len(said) == 2, caplog.text  # before the runs and with the report
    assert re.search(r"finished work that this study's plan leaves out: 10s-seed1\. runs\.jsonl, results\.jsonl, "
                     r"probes\.jsonl and the report cover only the planned runs; rerun with their seeds", said[0])
    assert [json.loads(line)["seed"] for line in (out / "runs.jsonl").read_text().splitlines()] == [2]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_study(load_study(path), out, root=tmp_path)
    assert "leaves out" not in caplog.text
    assert [json.loads(line)["seed"] for line in (out / "runs.jsonl").read_text().splitlines()] == [1, 2]
    (out / "probe" / "fbank" / "seed-3").mkdir(parents=True)  # probe seeds too
    (out / "probe" / "fbank" / "seed-3" / "summary.json").write_text("{}")
    study = load_study(path, ["seeds=[2]", "probes=[pr]", "probe_seeds=[0]"])
    assert left_out(study, plan_runs(study), out) == ["10s-seed1", "probe seed 3"]


def test_one_study_process_per_folder(tmp_path) -> None:
    """A second `earful study run` into a folder in use stops at once, naming the process that holds it."""
    import os

    from earful.lock import FolderBusy, hold_folder

    with hold_folder(tmp_path), pytest.raises(FolderBusy, match=rf"running in this folder \(pid {os.getpid()} on "):
        hold_folder(tmp_path)
    hold_folder(tmp_path).close()  # free again once the first has finished


def test_a_pool_worker_exits_when_the_study_process_is_gone() -> None:
    """The watch a pool worker runs: a parent pid that is no longer its parent means the study was killed."""
    import subprocess
    import sys

    code = "from earful.study.pool import _exit_with; _exit_with(parent=1, every=0.05)"  # 1 is never our parent
    r = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert r.returncode == 1


def test_torchrun_stops_when_the_study_process_dies(tmp_path) -> None:
    """A multi-device pre-training is a torchrun child: a killed study must not leave it training."""
    import subprocess
    import sys
    import time

    parent = (
        "import subprocess, sys\n"
        "from earful.study.stages import _stop_with_parent\n"
        "p = subprocess.Popen(['sleep', '60'], preexec_fn=_stop_with_parent, stdout=subprocess.DEVNULL,\n"
        "                     stderr=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
        "import os; os._exit(0)\n"  # the study process dies without cleaning up
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{child}").exists():
        time.sleep(0.1)
    gone = not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    if not gone:
        subprocess.run(["kill", str(child)], check=False)
    assert gone


TORCHRUN_STAND_IN = """
import pathlib, signal, sys, time
def stop(signum, frame):
    pathlib.Path(sys.argv[1], "child").write_text("SIGTERM")
    sys.exit(4)
signal.signal(signal.SIGTERM, stop)
pathlib.Path(sys.argv[1], "started").touch()
time.sleep(60)
pathlib.Path(sys.argv[1], "child").write_text("still running")
"""

STUDY_OF_ONE_TORCHRUN = """
import pathlib, sys
from earful.study.pool import Job, execute
from earful.study.stages import run_to_the_end
out = pathlib.Path(sys.argv[1])
cmd = [sys.executable, str(out / "torchrun.py"), str(out)]
execute([Job("pretrain", run_to_the_end, (cmd, out))], 1, out / "logs")
"""


def test_a_signal_to_a_study_of_one_job_at_a_time_stops_its_torchrun_with_sigterm(tmp_path, await_files) -> None:
    """With jobs: 1, SIGTERM to the study raised StudyStopped inside subprocess.run, which SIGKILLed torchrun: its
    ranks, in sessions of their own, trained on unseen, holding the run's lock. torchrun gets SIGTERM (which it
    passes to the ranks: each checkpoints) and the study waits for it."""
    (tmp_path / "torchrun.py").write_text(TORCHRUN_STAND_IN)
    proc = subprocess.Popen([sys.executable, "-c", STUDY_OF_ONE_TORCHRUN, str(tmp_path)], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    await_files(proc, tmp_path / "started")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert "StudyStopped: the study received SIGTERM" in err, err
    assert (tmp_path / "child").read_text() == "SIGTERM"


def test_a_corpus_prepared_again_is_another_recipe(study_file, tmp_path) -> None:
    """Manifests are fingerprinted by their rows: runs trained on the old corpus are not reused for a new one
    under the same paths; the same rows with their audio elsewhere (prepared again on another disk: other
    absolute paths) are the same corpus (they were another recipe), and a study.json of an earlier version,
    which recorded the file's SHA-256, still continues."""
    from earful.study.config import plan_runs
    from earful.study.corpus import manifest_digests
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text('{"id": "a"}\n')
    study = load_study(study_file, [f"corpus.dir={corpus}", "corpus.train=train.jsonl"])
    fp = recipe_fingerprint(study, plan_runs(study), tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": fp}))
    check_same_recipe(out, fp)
    (corpus / "train.jsonl").write_text('{"id": "b"}\n')
    again = recipe_fingerprint(study, plan_runs(study), tmp_path)
    with pytest.raises(ValueError, match=r"differs in data\.train\) \(a manifest's rows changed"):
        check_same_recipe(out, again)
    # the same rows with their audio elsewhere (a corpus prepared again on another disk): the same study
    (corpus / "train.jsonl").write_text('{"id": "a", "path": "/data/a.flac"}\n')
    fp = recipe_fingerprint(study, plan_runs(study), tmp_path)
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": fp}))
    (corpus / "train.jsonl").write_text('{"id": "a", "path": "/scratch/job7/a.flac"}\n')
    check_same_recipe(out, recipe_fingerprint(study, plan_runs(study), tmp_path))
    # a study.json of an earlier version recorded the file's SHA-256: the same file is the same manifest
    legacy = {**fp, "data": {"train": hashlib.sha256((corpus / "train.jsonl").read_bytes()).hexdigest()}}
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": legacy}))
    now = recipe_fingerprint(study, plan_runs(study), tmp_path)
    check_same_recipe(out, now, lambda: manifest_digests(study, tmp_path, file_bytes=True))
    with pytest.raises(ValueError, match=r"differs in data\.train\)"):
        check_same_recipe(out, now)  # (what a caller not giving the files' digests compares)


def _ship_default(monkeypatch, recipe: type, name: str, value: object) -> None:
    """A shipped probe recipe default changed, as an edit of earful/probe/config.py would change it."""
    from dataclasses import fields

    defaults = list(recipe.__init__.__defaults__)  # every field of a probe recipe has a default
    defaults[[f.name for f in fields(recipe)].index(name)] = value
    monkeypatch.setattr(recipe.__init__, "__defaults__", tuple(defaults))


def test_the_probe_recipe_and_the_probe_manifests_are_part_of_the_recipe(study_file, tmp_path, monkeypatch) -> None:
    """A study resumed after the shipped probe recipe changed, or after a manifest only the probes read was
    written again, is refused: its probe results would mix two recipes. Only the recipes of the tasks it probes
    count, and a study without probes has no probe part (its folders continue as before)."""
    from earful.probe.config import ProbeConfig, SequenceRecipe
    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    corpus = tmp_path / "corpus"
    (corpus / "manifests").mkdir(parents=True)
    (corpus / "pretrain.jsonl").write_text('{"id": "p"}\n')  # what the study trains on; the probes read manifests/
    for name in ("train", "dev", "test", "labelled-10h"):
        (corpus / "manifests" / f"{name}.jsonl").write_text(f'{{"id": "{name}"}}\n')

    def fingerprint(*more: str) -> dict:
        study = load_study(study_file, [f"corpus.dir={corpus}", "corpus.train=pretrain.jsonl", *more])
        return recipe_fingerprint(study, plan_runs(study), tmp_path)

    fp = fingerprint("probes=[pr]", "probe_overrides=[pr.lr=0.01]")
    assert fp["probe"] == {"pr.epochs": 10, "pr.lr": 0.01, "pr.batch_utterances": 16, "pr.hidden": 0}
    # a setting added later (pr.layer) is in the recipe only where set: a folder fingerprinted before continues
    assert fingerprint("probes=[pr]", "probe_overrides=[pr.layer=1]")["probe"]["pr.layer"] == 1
    assert {k for k in fp["data"] if k.startswith("probe.")} == {"probe.train", "probe.dev", "probe.test"}
    without = fingerprint()
    assert "probe" not in without and not any(k.startswith("probe.") for k in without["data"])
    ic_only = fingerprint("probes=[ic]")
    out = tmp_path / "out"
    out.mkdir()
    _trained(out)
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": fp}))
    check_same_recipe(out, fingerprint("probes=[pr]", "probe_overrides=[pr.lr=0.01]"))  # the same study continues

    _ship_default(monkeypatch, SequenceRecipe, "epochs", 11)
    assert ProbeConfig().pr.epochs == 11
    with pytest.raises(ValueError, match=r"another recipe \(differs in probe\.pr\.epochs\) \(was -> now: "
                                         r"probe\.pr\.epochs: 10 -> 11\); use another --out"):
        check_same_recipe(out, fingerprint("probes=[pr]", "probe_overrides=[pr.lr=0.01]"))
    assert fingerprint("probes=[ic]") == ic_only  # a task the study does not probe
    monkeypatch.undo()

    (corpus / "manifests" / "train.jsonl").write_text('{"id": "train-again"}\n')  # the study never trains on it
    with pytest.raises(ValueError, match=r"differs in data\.probe\.train\) \(a manifest's rows changed"):
        check_same_recipe(out, fingerprint("probes=[pr]", "probe_overrides=[pr.lr=0.01]"))

    # a folder whose study.json predates the probe part: refused, saying why
    earlier = {**fp, "data": {k: v for k, v in fp["data"].items() if not k.startswith("probe.")}}
    del earlier["probe"]
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": earlier}))
    with pytest.raises(ValueError, match=r"does not record its probe recipe and probe manifests"):
        check_same_recipe(out, fingerprint("probes=[pr]", "probe_overrides=[pr.lr=0.01]"))


def _prepared_corpus(study_file: Path, root: Path, **edits) -> Path:
    """The toy corpus's four manifests written into ``root`` (as `earful prepare` writes its own: no synth.json),
    ``edits`` (manifest name → a function of an Utterance) applied."""
    from earful.data.manifest import read_manifest, write_manifest
    from earful.study.corpus import ensure_corpus

    ensure_corpus(load_study(study_file), study_file.parent)
    for name in ("train", "dev", "test", "labelled-10h"):
        edit = edits.get(name, lambda u: u)
        toy = read_manifest(study_file.parent / "corpus" / "manifests" / f"{name}.jsonl")
        write_manifest([edit(u) for u in toy], root / f"{name}.jsonl")
    return root


def test_probes_that_cannot_run_on_the_corpus_stop_the_study_before_any_training(study_file, tmp_path,
                                                                                  monkeypatch) -> None:
    """A study with probes on a prepared corpus (as studies/paper.yaml) fails at once, naming the manifests the
    probes read and the tasks that read them, or the task, the manifest and the labels it lacks: not after
    every pre-training has finished."""
    from dataclasses import replace

    def no_training(*args) -> None:
        raise AssertionError("a pre-training started")

    monkeypatch.setattr("earful.study.run.run_pretraining_stage", no_training)
    prepared = _prepared_corpus(study_file, tmp_path / "prepared")
    corpus = [f"corpus.dir={prepared}", "corpus.synth=null", "corpus.train=train.jsonl", "corpus.valid=dev.jsonl",
              "corpus.finetune_valid=dev.jsonl", "corpus.label_sets={10h: labelled-10h.jsonl}",
              "corpus.test={test: test.jsonl}"]
    study = load_study(study_file, [*corpus, "probes=[pr, sid]"])
    with pytest.raises(FileNotFoundError, match=r"missing .*/manifests/dev.jsonl \(read by pr\); "
                                                r".*/manifests/labelled-10h.jsonl \(read by sid\); "
                                                r".*/manifests/test.jsonl \(read by pr, sid\); .*"
                                                r"probes \['pr', 'sid'\] read .*whatever corpus.train"):
        run_study(study, tmp_path / "out")
    assert not (tmp_path / "out" / "pretrain").exists()

    for task, edits, problem in (
        ("pr", {"dev": lambda u: replace(u, phonemes=None)}, r"manifests/dev.jsonl: \d+ of \d+ utterances have no "
                                                             r"phonemes .*earful phonemize"),
        ("ic", {"test": lambda u: replace(u, intent=None)}, r"manifests/test.jsonl: \d+ of \d+ utterances have no "
                                                            r"intent"),
        ("sid", {"labelled-10h": lambda u: replace(u, speaker="stranger")},
         r"manifests/labelled-10h.jsonl: \d+ of \d+ utterances are by speakers not in .*manifests/train.jsonl"),
    ):
        _prepared_corpus(study_file, prepared / "manifests", **edits)
        with pytest.raises(ValueError, match=rf"probe {task}: .*{problem}.*probes \['{task}'\] read"):
            run_study(load_study(study_file, [*corpus, f"probes=[{task}]"]), tmp_path / f"out-{task}")
        assert not (tmp_path / f"out-{task}" / "pretrain").exists()


def test_probe_corpus_lets_a_study_on_prepared_data_probe_on_a_synth_corpus(study_file, tmp_path) -> None:
    """`probe_corpus` names the folder the probes read (SUPERB-style: a corpus of their own), so a study that
    trains on prepared manifests can probe; its manifests' contents are in the fingerprint, not its path."""
    from earful.study.config import plan_runs
    from earful.study.corpus import _digest, check_probe_corpus
    from earful.study.fingerprint import recipe_fingerprint

    prepared = _prepared_corpus(study_file, tmp_path / "prepared")
    toy = study_file.parent / "corpus"  # made by `earful synth` (the toy study's corpus.synth)
    corpus = [f"corpus.dir={prepared}", "corpus.synth=null", "corpus.train=train.jsonl", "corpus.valid=dev.jsonl",
              "corpus.finetune_valid=dev.jsonl", "corpus.label_sets={10h: labelled-10h.jsonl}",
              "corpus.test={test: test.jsonl}"]
    with pytest.raises(FileNotFoundError, match=r"point `probe_corpus` at such a corpus"):
        check_probe_corpus(load_study(study_file, [*corpus, "probes=[pr, sid, ic]"]), tmp_path)
    study = load_study(study_file, [*corpus, "probes=[pr, sid, ic]", f"probe_corpus={toy}"])
    check_probe_corpus(study, tmp_path)
    fp = recipe_fingerprint(study, plan_runs(study), tmp_path)
    assert fp["data"]["probe.labelled-10h"] == _digest(toy / "manifests" / "labelled-10h.jsonl")
    assert "probe_corpus" not in fp["study"]
    moved = load_study(study_file, [*corpus, "probes=[pr, sid, ic]", "probe_corpus=toy-copy"])
    (tmp_path / "toy-copy").symlink_to(toy)  # the same manifests elsewhere: the same recipe
    assert recipe_fingerprint(moved, plan_runs(moved), tmp_path) == fp


PAPER_DESIGN = STUDY.replace("grid: [4, 8]", "grid: [2, 4, 8]").replace("ckpt_hours: [0.004]\n", "") \
    .replace("mode: fixed-steps\n", "mode: fixed-steps\ncycles: 2\ngradvar_batches: 2\n") \
    .replace("checkpoints: [final, milestones]", "checkpoints: [final]") \
    .replace("baselines: [scratch]", "baselines: []").replace("seeds: [1]", "seeds: [1, 2]")


def test_the_papers_design_cyclic_schedule_cycle_minima_and_verdicts(study_file, tmp_path) -> None:
    """``cycles``: every batch size the same steps on whole triangular cycles, a checkpoint at each minimum,
    the gradient noise of each final checkpoint, and a verdict per claim in the report."""
    path = tmp_path / "paper.yaml"
    path.write_text(PAPER_DESIGN.format(corpus=study_file.parent / "corpus"))
    out = tmp_path / "out"
    text = run_study(load_study(path), out).read_text()
    for run in ("2s-seed1", "4s-seed2", "8s-seed1"):
        ck = out / "pretrain" / run / "checkpoints"
        assert (ck / "steps-2").is_dir() and (ck / "step-0000004").is_dir()
        optim = yaml.safe_load((out / "pretrain" / run / "config.yaml").read_text())["optim"]
        assert optim["schedule"] == "cyclic" and optim["cyclic_step_size"] == 1  # 4 steps = 2 whole cycles
        grad = json.loads((out / "gradvar" / f"{run}.json").read_text())
        assert grad["batches"] == 2 and grad["batch_seconds"] == float(run.split("s-")[0])
    design = (out / "report" / "design.csv").read_text().splitlines()
    assert len(design) == 1 + 3 * 2 * 2  # batch sizes × seeds × (minimum, end)
    assert "## The paper's claims at this scale" in text
    for claim in ("| C1 | valid_loss |", "| C2 | valid_accuracy |", "| C4 | cer_10h |", "| C6 | gradient std |",
                  "| C7 | codebook |"):
        assert claim in text, claim
    assert all(v in ("reproduced", "not reproduced", "inconclusive")
               for v in (line.split("| **")[1].split("**")[0] for line in text.splitlines() if "| **" in line))


def test_probes_of_every_kept_checkpoint_and_the_baselines_reach_the_report(study_file, tmp_path) -> None:
    """``probes:`` probe each run's cycle-minimum and final checkpoints, the seed's random init and filterbanks
    (once), write probes.jsonl, a table, plots, the learning test, and the probe metrics' verdicts."""
    design = PAPER_DESIGN.replace("grid: [2, 4, 8]", "grid: [2, 4]").replace("seeds: [1, 2]", "seeds: [1]") \
        .replace("gradvar_batches: 2\n", "probes: [pr, ic]\nprobe_overrides: [pr.epochs=2, ic.steps=20]\n")
    path = tmp_path / "probes.yaml"
    path.write_text(design.format(corpus=study_file.parent / "corpus"))
    out = tmp_path / "out"
    text = run_study(load_study(path), out).read_text()
    records = [json.loads(x) for x in (out / "probes.jsonl").read_text().splitlines()]
    upstreams = {(r["pretrain"], r["checkpoint"]) for r in records}
    assert upstreams == {("2s-seed1", "steps-2"), ("2s-seed1", "final"), ("4s-seed1", "steps-2"),
                         ("4s-seed1", "final"), ("random-init", "init"), ("fbank", "fbank")}
    assert {(r["task"], r["metric"]) for r in records} == {("pr", "per"), ("ic", "accuracy")}
    assert all(math.isfinite(r["value"]) and r["value"] >= 0 for r in records)  # (PER may pass 1: insertions)
    assert "## Probes of frozen features" in text and "| pr.per ↓ | ic.accuracy ↑ |" in text
    assert "final models" in text and "| C1 | pr.per |" in text
    assert (out / "report" / "plots" / "probe_pr_per_vs_hours.png").exists()
    assert not (out / "probe-cache").exists() or not any((out / "probe-cache").iterdir())  # features removed
    # a task added to the finished study: probed on every finished upstream, the others' results kept
    run_study(load_study(path, ["probes=[pr, ic, sid]", "probe_overrides=[pr.epochs=2, ic.steps=20, sid.steps=20]"]),
              out)
    grown = [json.loads(x) for x in (out / "probes.jsonl").read_text().splitlines()]
    assert [r for r in grown if r["task"] != "sid"] == records
    assert {(r["pretrain"], r["checkpoint"]) for r in grown if r["task"] == "sid"} == upstreams


def test_probes_and_finetunings_name_the_same_kept_checkpoints(tmp_path) -> None:
    """The checkpoints a run keeps (milestones and cycle minima that were written, and the final) are named once:
    the probes take them all, ``finetune.checkpoints: [final, milestones]`` the same, under the same names."""
    from earful.study.config import PlannedRun, StudyConfig
    from earful.study.run import planned_probes
    from earful.study.stages import checkpoints_to_finetune

    run = PlannedRun(tag="4s", batch_seconds=4, devices=1, device_seconds=4, lr=1e-3, steps=8,
                     hours=8 * 4 / 3600, seed=1)
    study = StudyConfig(mode="fixed-steps", steps=8, cycles=2, ckpt_hours=[0.002, 0.5])
    ck = tmp_path / "pretrain" / run.name / "checkpoints"
    for name, step in (("steps-4", 4), ("hours-0.002", 2), ("step-0000008", 8)):  # 0.5 h was never reached
        (ck / name).mkdir(parents=True)
        (ck / name / "trainer.json").write_text(json.dumps({"step": step, "hours_padded": step * 4 / 3600}))
    study.finetune.checkpoints = ["final", "milestones"]
    chosen = checkpoints_to_finetune(study, run, tmp_path)
    assert chosen == {"final": ck / "step-0000008", "hours-0.002": ck / "hours-0.002", "steps-4": ck / "steps-4"}
    probes = {p.record["checkpoint"]: p for p in planned_probes(study, run, tmp_path, False, False)}
    assert {name: Path(p.upstream) for name, p in probes.items()} == chosen
    assert [(p.name, p.record["step"]) for p in probes.values()] == [
        ("4s-seed1__hours-0.002", 2), ("4s-seed1__steps-4", 4), ("4s-seed1__final", 8)]
    # `hours` is the audio fed (padded), as in the logs and results.jsonl; `hours_nominal` is batch × steps
    (ck / "steps-4" / "trainer.json").write_text(json.dumps({"step": 4, "hours_padded": 0.003}))
    record = next(p.record for p in planned_probes(study, run, tmp_path, False, False) if p.name.endswith("steps-4"))
    assert record["hours_padded"] == 0.003 and record["hours_nominal"] == 4 * 4 / 3600


def test_checkpoints_of_one_step_are_fine_tuned_and_probed_once(tmp_path) -> None:
    """A milestone the last step reaches (hours-0.0089 of 4 s batches is step 8 of 8) holds the final's weights,
    one on a cycle minimum that minimum's, best of the last validation the final's: each is fine-tuned and probed
    once, its records kept under both names."""
    from earful.study.config import PlannedRun, StudyConfig
    from earful.study.run import planned_finetunings, planned_probes, unique

    run = PlannedRun(tag="4s", batch_seconds=4, devices=1, device_seconds=4, lr=1e-3, steps=8,
                     hours=8 * 4 / 3600, seed=1)
    study = StudyConfig(mode="fixed-steps", steps=8, cycles=2, ckpt_hours=[0.0044, 0.0089])
    study.corpus.label_sets = {"a": "a.jsonl"}
    study.finetune.checkpoints = ["final", "milestones"]
    ck = tmp_path / "pretrain" / run.name / "checkpoints"
    for name, step in (("hours-0.0044", 4), ("hours-0.0089", 8), ("steps-4", 4), ("step-0000008", 8)):
        (ck / name).mkdir(parents=True)
        (ck / name / "trainer.json").write_text(json.dumps({"step": step, "hours_padded": step * 4 / 3600}))
    finetunings = planned_finetunings(study, run, tmp_path, False)
    assert [(f.record["checkpoint"], f.name, f.init.name) for f in finetunings] == [
        ("final", "4s-seed1__final__a", "step-0000008"),
        ("hours-0.0044", "4s-seed1__hours-0.0044__a", "hours-0.0044"),
        ("hours-0.0089", "4s-seed1__final__a", "step-0000008"),
        ("steps-4", "4s-seed1__hours-0.0044__a", "hours-0.0044")]
    assert [f.name for f in unique(finetunings)] == ["4s-seed1__final__a", "4s-seed1__hours-0.0044__a"]
    probes = planned_probes(study, run, tmp_path, False, False)
    assert [(p.record["checkpoint"], p.name) for p in probes] == [
        ("hours-0.0044", "4s-seed1__hours-0.0044"), ("hours-0.0089", "4s-seed1__final"),
        ("steps-4", "4s-seed1__hours-0.0044"), ("final", "4s-seed1__final")]
    assert len(unique(probes)) == 2
    # best of the last step's validation is the final too (it was fine-tuned a second time)
    study.finetune.checkpoints = ["final", "best"]
    (ck / "best").mkdir()
    (ck / "best" / "trainer.json").write_text(json.dumps({"step": 8, "hours_padded": 8 * 4 / 3600}))
    assert [(f.record["checkpoint"], f.name) for f in planned_finetunings(study, run, tmp_path, False)] == [
        ("final", "4s-seed1__final__a"), ("best", "4s-seed1__final__a")]
    (ck / "best" / "trainer.json").write_text(json.dumps({"step": 4, "hours_padded": 4 * 4 / 3600}))
    assert [f.name for f in planned_finetunings(study, run, tmp_path, False)] == [
        "4s-seed1__final__a", "4s-seed1__best__a"]


def test_checkpoints_of_one_step_keep_the_job_their_work_began_under(tmp_path) -> None:
    """A study that fine-tuned `[milestones]`, then `[final, milestones]` (a list that may grow), or one made
    before checkpoints of one step shared a job: the milestone at the last step was fine-tuned as hours-H, and the
    rerun named the job `final` and fine-tuned it all over again. A job that has begun keeps its name; a
    trainer.json that gives no step shares with nothing (it stopped the planning)."""
    from earful.study.config import PlannedRun, StudyConfig
    from earful.study.run import planned_finetunings, planned_probes

    run = PlannedRun(tag="4s", batch_seconds=4, devices=1, device_seconds=4, lr=1e-3, steps=8,
                     hours=8 * 4 / 3600, seed=1)
    study = StudyConfig(mode="fixed-steps", steps=8, ckpt_hours=[0.0089])
    study.corpus.label_sets = {"a": "a.jsonl", "b": "b.jsonl"}
    study.finetune.checkpoints = ["final", "milestones"]
    ck = tmp_path / "pretrain" / run.name / "checkpoints"
    for name in ("hours-0.0089", "step-0000008"):
        (ck / name).mkdir(parents=True)
        (ck / name / "trainer.json").write_text(json.dumps({"step": 8, "hours_padded": 8 * 4 / 3600}))
    (tmp_path / "finetune" / "4s-seed1__hours-0.0089__a").mkdir(parents=True)  # begun as hours-H, on `a` only
    (tmp_path / "probe" / "4s-seed1__hours-0.0089").mkdir(parents=True)
    assert {(f.record["checkpoint"], f.label_set): f.name for f in planned_finetunings(study, run, tmp_path, False)} \
        == {("final", "a"): "4s-seed1__hours-0.0089__a", ("hours-0.0089", "a"): "4s-seed1__hours-0.0089__a",
            ("final", "b"): "4s-seed1__final__b", ("hours-0.0089", "b"): "4s-seed1__final__b"}
    assert {p.name for p in planned_probes(study, run, tmp_path, False, False)} == {"4s-seed1__hours-0.0089"}
    (ck / "hours-0.0089" / "trainer.json").write_text(json.dumps({"hours_padded": 8 * 4 / 3600}))
    assert {p.record["checkpoint"]: p.name for p in planned_probes(study, run, tmp_path, False, False)} == {
        "hours-0.0089": "4s-seed1__hours-0.0089", "final": "4s-seed1__final"}


def test_evaluation_splits_are_named_by_the_study_corpus_test_keys(tmp_path) -> None:
    """{clean: a/test.jsonl, other: b/test.jsonl} are the splits `clean` and `other` (the manifests' stems made them
    `test` and `test-2`, and the report took whichever was called `test` for its main split)."""
    import numpy as np
    import soundfile as sf
    import torch

    from earful.checkpoint import save_model
    from earful.data.manifest import Utterance, write_manifest
    from earful.eval.vocab import CharVocab
    from earful.model import Wav2Vec2ForCTC, load_model_config
    from earful.study.config import StudyConfig
    from earful.study.stages import finetune_and_evaluate

    vocab = CharVocab()
    torch.manual_seed(0)
    fdir = tmp_path / "out" / "finetune" / "ft"
    save_model(fdir / "checkpoints" / "best", Wav2Vec2ForCTC(load_model_config("tiny"), len(vocab)),
               vocab=vocab.to_dict())
    (fdir / "done.json").write_text(json.dumps({"name": "ft"}))  # fine-tuned: only the evaluation is left
    for folder, text in [("a", "a b"), ("b", "b a b")]:
        wav = tmp_path / "corpus" / folder / "u.wav"
        wav.parent.mkdir(parents=True)
        sf.write(wav, (0.1 * np.random.RandomState(0).randn(8000)).astype(np.float32), 16000)
        write_manifest([Utterance(f"{folder}-0", str(wav), 8000, 16000, "s", text)], wav.parent / "test.jsonl")
    study = StudyConfig()
    study.corpus.dir = str(tmp_path / "corpus")
    study.corpus.test = {"clean": "a/test.jsonl", "other": "b/test.jsonl"}
    summary = finetune_and_evaluate(study, "ft", tmp_path / "init", "10h", 1, tmp_path / "out", tmp_path, None)
    assert list(summary["splits"]) == ["clean", "other"]
    ev = tmp_path / "out" / "eval" / "ft"
    assert json.loads((ev / "other.greedy.summary.json").read_text())["manifest"].endswith("b/test.jsonl")
    assert not (ev / "test.greedy.jsonl").exists()


def test_a_studys_probe_stage_takes_a_transformers_folder_or_hub_id(tmp_path, hub_models, monkeypatch) -> None:
    """The stage that probes a study's upstream resolves it as `earful probe` does: a transformers folder and a Hub
    model id (its snapshot) are imported once, into the earful cache, and probed as that checkpoint."""
    import torch

    import earful.probe.suite as suite
    from earful.checkpoint import load_model
    from earful.interop.hf import export_hf
    from earful.model import Wav2Vec2ForPreTraining, load_model_config
    from earful.study.config import StudyConfig
    from earful.study.stages import probe_stage

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    model = Wav2Vec2ForPreTraining(load_model_config("tiny"))
    folder = export_hf(model, tmp_path / "theirs")
    hub_models.repos["someone/tiny"] = folder
    given = []
    monkeypatch.setattr(suite, "run_suite", lambda upstream, *a, **k: given.append(upstream) or {"pr": {"per": 0.5}})
    study = StudyConfig(probes=["pr"], probe_seeds=[0], pretrain_overrides=["device=cpu"])
    for name, upstream in (("folder", str(folder)), ("hub", "someone/tiny")):
        rows = probe_stage(study, name, upstream, tmp_path / "out", tmp_path)
        assert rows == [{"seed": 0, "task": "pr", "metric": "per", "value": 0.5}]
    assert [up.kind for up in given] == ["checkpoint", "checkpoint"] and given[0].ckpt == given[1].ckpt
    ckpt = Path(str(given[0].ckpt))
    assert ckpt.parent == tmp_path / "cache" / "imports" and given[0].fingerprint()["kind"] == "checkpoint"
    imported = load_model(ckpt)[0].state_dict()
    assert all(torch.equal(v, imported[k]) for k, v in model.state_dict().items())
