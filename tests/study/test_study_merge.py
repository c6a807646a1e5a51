"""``earful study merge``: seeds run in two study folders (two machines) give, merged, the results each gave, and
a study run on the merged folder does none of the work again; without weights the same, a few KB a checkpoint;
results that differ and recipes that differ are refused before anything is copied."""

import json
import logging
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from earful.checkpoint import LEFT_OUT_FILE
from earful.cli import main
from earful.config import flatten, to_dict
from earful.lock import hold_folder
from earful.study.config import LMSpec, load_study, plan_runs
from earful.study.fingerprint import check_same_recipe, recipe_fingerprint
from earful.study.merge import Merged, describe, merge_studies
from earful.study.run import run_study
from earful.study.stages import finetune_recipe

STUDY = """
name: toy-merge
corpus:
  dir: {corpus}
  synth: {{hours: 0.01, domain: commands, seed: 5, labelled_fraction: 1.0}}
  label_sets: {{10h: manifests/labelled-10h.jsonl}}
  test: {{test: manifests/test.jsonl}}
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
probes: [ic]
probe_overrides: [ic.steps=10]
finetune:
  overrides: [model_preset=tiny, batch_seconds=8, device_seconds=8, max_steps=2, valid_every=2, log_every=1,
              ckpt_every=2, freeze_transformer_steps=1, data.num_workers=0, tensorboard=false, threads=1,
              optim.lr=1.0e-3]
  checkpoints: [final]
  baselines: []
seeds: [1]
"""
WORK = ("pretrain", "finetune", "eval", "probe", "gradvar")


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The study's YAML, and two folders of it: seed 1 run in one, seed 2 in the other."""
    root = tmp_path_factory.mktemp("merge")
    path = root / "toy.yaml"
    path.write_text(STUDY.format(corpus=root / "corpus"))
    for seed in (1, 2):
        run_study(load_study(path, [f"seeds=[{seed}]"]), root / f"machine-{seed}")
    return path, root / "machine-1", root / "machine-2"


def _lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


def _work(folder: Path) -> dict[str, int]:
    """Every file of the folder's work, with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for stage in WORK for p in (folder / stage).rglob("*")
            if p.is_file()}


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != ".lock"}


@pytest.mark.parametrize("weights", [True, False])
def test_two_machines_merged_give_their_results_and_nothing_is_done_again(two_machines, tmp_path, weights) -> None:
    study, one, two = two_machines
    out = tmp_path / "merged"
    argv = ["study", "merge", str(one), str(two), "--out", str(out)] + ([] if weights else ["--without-weights"])
    assert main(argv) == 0
    saved = json.loads((out / "study.json").read_text())
    assert saved["seeds"] == [1, 2] and saved["fingerprint"] == json.loads((one / "study.json").read_text())[
        "fingerprint"]
    def weight_files(folder: Path) -> set[str]:
        return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in (".safetensors", ".pt")}

    if weights:
        assert weight_files(out) == weight_files(one) | weight_files(two)
    else:
        assert weight_files(out) == set()
        assert (out / "pretrain" / "4s-seed2" / "checkpoints" / "steps-2" / LEFT_OUT_FILE).is_file()
        left = json.loads((out / "pretrain" / "2s-seed1" / "checkpoints" / "init" / LEFT_OUT_FILE).read_text())
        assert set(left["files"]) == {"model.safetensors"}
        assert json.loads((out / "pretrain" / "2s-seed1" / "checkpoints" / "init" / "model.json").read_text()) == \
            json.loads((one / "pretrain" / "2s-seed1" / "checkpoints" / "init" / "model.json").read_text())
    before = _work(out)
    run_study(load_study(study, ["seeds=[1, 2]"]), out)  # reads the finished work: no file of it is written again
    assert _work(out) == before
    for results in ("runs.jsonl", "results.jsonl", "probes.jsonl"):
        assert _lines(out / results) == sorted(set(_lines(one / results) + _lines(two / results))), results
    # per seed 2 runs × (minimum, final) and the init; the filterbanks once, both folders probed them alike
    assert len(_lines(out / "probes.jsonl")) == 2 * (2 * 2 + 1) + 1
    assert (out / "report" / "report.md").is_file()
    if not weights:  # a stage added later that needs the weights is refused, naming the checkpoint
        with pytest.raises(Exception, match=r"model\.safetensors: missing: this checkpoint was copied without its "
                                            r"weights"):
            run_study(load_study(study, ["seeds=[1, 2]", "probes=[ic, pr]", "probe_overrides=[ic.steps=10, "
                                         "pr.epochs=1]"]), out)


def test_a_merge_again_leaves_the_work_as_it_was_and_a_new_seed_joins(two_machines, tmp_path, caplog) -> None:
    _, one, two = two_machines
    out = tmp_path / "merged"
    merge_studies([one], out, weights=False)
    before = _work(out)
    again = merge_studies([one], out, weights=False)
    # 2 runs, each fine-tuned and evaluated, each probed at its minimum and end, the init and filterbanks probed
    assert again.copied == {} and again.present == {"pretrain": 2, "finetune": 2, "eval": 2, "probe": 6, "gradvar": 2}
    assert _work(out) == before
    grown = merge_studies([one, two], out, weights=False)
    assert grown.copied == {"pretrain": 2, "finetune": 2, "eval": 2, "probe": 5, "gradvar": 2}
    assert grown.seeds == [1, 2] and "4 pre-trainings" not in describe(grown, out)
    assert "2 pre-trainings, 2 fine-tunings, 2 evaluations, 5 probes, 2 gradient noise records" in describe(grown, out)


def test_results_that_differ_are_refused_before_anything_is_copied(two_machines, tmp_path) -> None:
    _, one, two = two_machines
    other = tmp_path / "machine-3"  # seed 2 again, elsewhere: one probe's result differs
    shutil.copytree(two, other)
    summary = other / "probe" / "4s-seed2__final" / "seed-0" / "summary.json"
    metrics = json.loads(summary.read_text())
    metrics["ic"]["accuracy"] += 0.01
    summary.write_text(json.dumps(metrics))
    out = tmp_path / "merged"
    with pytest.raises(ValueError, match=r"1 unit\(s\) of finished work have different results in two folders .*"
                                         r"probe/4s-seed2__final/seed-0/summary\.json \(.*machine-2 and .*machine-3\)"):
        merge_studies([one, two, other], out)
    assert _tree(out) == set()  # nothing copied, no study.json
    merge_studies([one, two], out)
    with pytest.raises(ValueError, match=r"probe/4s-seed2__final/seed-0/summary\.json \(.*merged and .*machine-3\)"):
        merge_studies([other], out)
    elsewhere = tmp_path / "elsewhere"  # the same results in a folder of another name (they record their paths)
    shutil.copytree(two, elsewhere)
    summary = elsewhere / "eval" / "4s-seed2__final__10h" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "checkpoint": "elsewhere/its/checkpoint"}))
    assert merge_studies([elsewhere], out).copied == {}


def test_a_run_folder_a_trainer_still_holds_is_not_replaced(two_machines, tmp_path) -> None:
    """A Slurm job of a study process that died trains on, holding its run folder's lock alone: a merge that
    would replace the folder (its run finished elsewhere) is refused, nothing copied."""
    from earful.lock import FolderBusy

    _, one, _ = two_machines
    out = tmp_path / "merged"
    (out / "pretrain" / "4s-seed1").mkdir(parents=True)
    shutil.copy(one / "study.json", out / "study.json")
    lock = hold_folder(out / "pretrain" / "4s-seed1", "earful run")
    try:
        with pytest.raises(FolderBusy, match=r"4s-seed1: another earful run is running in this folder .*; nothing "
                                             r"was merged"):
            merge_studies([one], out)
    finally:
        lock.close()
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["4s-seed1"]
    assert not any((out / "pretrain" / "4s-seed1").iterdir()) or list((out / "pretrain" / "4s-seed1").iterdir()) == [
        out / "pretrain" / "4s-seed1" / ".lock"]


def test_studies_of_other_recipes_are_refused_and_a_grown_one_is_taken(two_machines, tmp_path) -> None:
    _, one, two = two_machines

    def edited(src: Path, name: str, edit) -> Path:
        copy = tmp_path / name
        shutil.copytree(src, copy)
        saved = json.loads((copy / "study.json").read_text())
        edit(saved["fingerprint"])
        (copy / "study.json").write_text(json.dumps(saved))
        return copy

    steps = edited(two, "steps", lambda fp: fp["study"].update({"steps": 5}))
    with pytest.raises(ValueError, match=r"steps and .*machine-1 hold different studies.*differs in study\.steps") as e:
        merge_studies([one, steps], tmp_path / "out")
    assert "remove the folder" not in str(e.value)  # a study run's advice: here it would name a source
    assert not (tmp_path / "out" / "study.json").exists()
    grown = edited(two, "grown", lambda fp: fp["study"].update({"probes": ["ic", "pr"]}))
    for order in ([one, grown], [grown, one]):  # the wider recipe, whichever comes first
        out = tmp_path / f"out-{order[0].name}"
        merge_studies(order, out)
        saved = json.loads((out / "study.json").read_text())
        assert saved["fingerprint"]["study"]["probes"] == ["ic", "pr"]
        assert sorted(saved["seeds"]) == [1, 2]
    with pytest.raises(ValueError, match="the destination is also a source"):
        merge_studies([one, out], out)
    with pytest.raises(FileNotFoundError, match=r"not a study folder \(no study\.json\)"):
        merge_studies([tmp_path / "steps" / "pretrain"], tmp_path / "out")


def test_unfinished_work_is_not_merged_and_is_named(two_machines, tmp_path) -> None:
    _, one, _ = two_machines
    stopped = tmp_path / "stopped"  # its 4 s run stopped after its step-2 checkpoint
    shutil.copytree(one, stopped)
    (stopped / "pretrain" / "4s-seed1" / "done.json").unlink()
    out = tmp_path / "merged"
    merged = merge_studies([stopped], out)
    assert not (out / "pretrain" / "4s-seed1").exists() and (out / "pretrain" / "2s-seed1" / "done.json").is_file()
    assert merged.unfinished == [f"pretrain/4s-seed1 (in {stopped})"]
    assert "not merged, unfinished: pretrain/4s-seed1" in describe(merged, out)
    merge_studies([one], out)  # the finished run, from the folder where it finished
    assert (out / "pretrain" / "4s-seed1" / "done.json").is_file()


def test_runs_of_other_weights_are_refused_and_a_grown_unit_or_its_weights_are_taken(two_machines, tmp_path) -> None:
    _, one, _ = two_machines
    other = tmp_path / "other-machine"  # seed 1 again: its done.json is the same, its weights are not
    shutil.copytree(one, other)
    model = other / "pretrain" / "2s-seed1" / "checkpoints" / "step-0000004" / "model.json"
    info = json.loads(model.read_text())
    info["files"]["model.safetensors"]["sha256"] = "0" * 64
    model.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"pretrain/2s-seed1/done\.json"):
        merge_studies([one, other], tmp_path / "mixed")
    out = tmp_path / "merged"
    merge_studies([one], out, weights=False)
    grown = tmp_path / "grown"  # a probe task added to a probe seed's summary
    shutil.copytree(one, grown)
    summary = grown / "probe" / "fbank" / "seed-0" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "pr": {"per": 0.5}}))
    again = merge_studies([grown], out)  # the grown unit, and the weights the destination lacked
    assert set(json.loads((out / "probe" / "fbank" / "seed-0" / "summary.json").read_text())) == {"ic", "pr"}
    assert again.copied["probe"] == 1 and again.copied["pretrain"] == 2
    assert not list(out.rglob(LEFT_OUT_FILE))


def test_a_killed_merge_leaves_nothing_that_counts_as_work(two_machines, tmp_path) -> None:
    _, one, _ = two_machines
    out = tmp_path / "merged"
    merge_studies([one], out)
    stale = out / "finetune" / ".merge-99999-2s-seed1__final__10h"  # a copy killed before its rename
    shutil.copytree(one / "finetune" / "2s-seed1__final__10h", stale)
    assert not merge_studies([out], tmp_path / "again").copied.get("finetune", 0) > 2
    merge_studies([one], out)
    assert not stale.exists()


def test_the_report_says_where_the_runs_trained(two_machines, tmp_path) -> None:
    """Another CPU gives other bits: a study merged from two kinds of machine says which runs trained where."""
    from earful.study.report import build_report
    from earful.train.machine import cpu_model

    study, one, two = two_machines
    out = tmp_path / "merged"
    merge_studies([one, two], out, weights=False)
    run_study(load_study(study, ["seeds=[1, 2]"]), out)
    text = (out / "report" / "report.md").read_text()
    assert f"All 4 pre-training runs on one kind of machine: {cpu_model()}, cpu, torch " in text
    machines = out / "pretrain" / "4s-seed2" / "machines.jsonl"
    machines.write_text(machines.read_text().replace(json.dumps(cpu_model()), '"Other CPU"'))
    text = build_report(out).read_text()
    assert "The pre-training runs trained on 2 kinds of machine" in text
    torch_version = torch.__version__
    assert f"| {cpu_model()}, cpu, torch {torch_version} | 2s-seed1, 4s-seed1, 2s-seed2 |" in text
    assert f"| Other CPU, cpu, torch {torch_version} | 4s-seed2 |" in text
    machines.unlink()  # a run of an earful before machines.jsonl: named apart, not a kind of machine
    text = build_report(out).read_text()
    assert f"3 of the 4 pre-training runs on one kind of machine: {cpu_model()}, cpu, torch {torch_version}" in text
    assert "Not recorded (runs of an earful before machines.jsonl): 4s-seed2." in text


def test_status_says_how_far_a_study_has_come_without_reading_results(two_machines, tmp_path, caplog) -> None:
    """`earful study status`: each planned run's step and state, the finished units of the other stages."""
    from earful.study.status import study_status

    _, one, _ = two_machines
    out = tmp_path / "stopped"
    shutil.copytree(one, out)
    (out / "pretrain" / "4s-seed1" / "done.json").unlink()  # stopped after its step-2 checkpoint
    saved = json.loads((out / "study.json").read_text())
    (out / "study.json").write_text(json.dumps({**saved, "seeds": [1, 2]}))  # seed 2 added, not started
    (out / "pretrain" / "2s-seed2").mkdir()
    (out / "pretrain" / "2s-seed2" / "history.jsonl").write_text("{}\n")  # started, killed before a checkpoint
    text = study_status(out)  # copied: no process holds its folders (the lock files name the process that did)
    assert text.startswith(f"study toy-merge ({out}, no study process running): 1 of 4 pre-training runs finished "
                           "(seeds [1, 2]); finished units of the other stages: 2 fine-tunings, 2 evaluations, 6 "
                           "probes, 2 gradient noise records")
    interrupted = "interrupted (no process holds it: killed, or its machine gone; a rerun resumes it)"
    for row in ("| 2s-seed1 | 2 s | 4 / 4 | done |", f"| 4s-seed1 | 4 s | 4 / 4 | {interrupted} |",
                f"| 2s-seed2 | 2 s | - / 4 | {interrupted} |", "| 4s-seed2 | 4 s | - / 4 | not started |"):
        assert row in text, row
    with hold_folder(out, "earful study"), hold_folder(out / "pretrain" / "4s-seed1"), \
            hold_folder(out / "pretrain" / "2s-seed2"):  # held by a live process
        text = study_status(out)
    assert f"({out}, study process running (pid {os.getpid()})):" in text
    assert "| 4s-seed1 | 4 s | 4 / 4 | running |" in text
    assert "| 2s-seed2 | 2 s | - / 4 | running, no checkpoint yet |" in text
    (out / "pretrain" / "4s-seed1" / ".lock").write_text("123 node-7")  # a cluster's node: not known from here
    assert "| 4s-seed1 | 4 s | 4 / 4 | running on node-7, or stopped there (pid 123; this machine cannot tell) |" \
        in study_status(out)
    caplog.set_level(logging.INFO)
    assert main(["study", "status", str(out)]) == 0 and "| 4s-seed2 | 4 s | - / 4 | not started |" in caplog.text
    (out / "study.json").write_text(json.dumps({**saved, "seeds": [2]}))  # a rerun with seed 2 alone
    assert "finished work this plan leaves out (counted above): 2s-seed1" in study_status(out)
    assert main(["study", "status", str(tmp_path)]) == 2 and "not a study folder (no study.json)" in caplog.text


def _weighted_units(folder: Path) -> set[str]:
    """The runs (stage/name) of which a checkpoint holds weights."""
    return {"/".join(p.relative_to(folder).parts[:2]) for p in folder.rglob("*.safetensors")}


def test_without_weights_a_run_whose_planned_work_is_not_finished_keeps_them(two_machines, tmp_path) -> None:
    """A study stopped midway, merged without weights: each run whose weights planned work needs that no folder has
    finished keeps them, named; a study run on the merged folder does that work and gives the results of the study
    that was not stopped. Where no folder holds such weights, the merge warns."""
    study, one, _ = two_machines
    midway = tmp_path / "midway"
    shutil.copytree(one, midway)
    shutil.rmtree(midway / "probe" / "4s-seed1__final")  # a pre-training's probe to come
    (midway / "gradvar" / "2s-seed1.json").unlink()  # a pre-training's gradient noise
    shutil.rmtree(midway / "eval" / "4s-seed1__final__10h")  # a fine-tuning's evaluation
    out = tmp_path / "merged"
    merged = merge_studies([midway], out, weights=False)
    assert merged.weights_kept == {"pretrain/2s-seed1": ["gradient noise 2s-seed1"],
                                   "pretrain/4s-seed1": ["probe 4s-seed1__final"],
                                   "finetune/4s-seed1__final__10h": ["evaluation 4s-seed1__final__10h"]}
    assert _weighted_units(out) == set(merged.weights_kept)
    assert any((out / "finetune" / "2s-seed1__final__10h" / "checkpoints").rglob(LEFT_OUT_FILE))
    assert "kept with their weights, as work that needs them is not finished" in describe(merged, out)
    assert not merged.weights_missing
    run_study(load_study(study, ["seeds=[1]"]), out)
    for results in ("runs.jsonl", "results.jsonl", "probes.jsonl"):
        assert _lines(out / results) == _lines(one / results), results
    measured, before = (json.loads((f / "gradvar" / "2s-seed1.json").read_text()) for f in (out, one))
    assert measured.pop("checkpoint") != before.pop("checkpoint") and measured == before  # the same, but its path

    bare = tmp_path / "bare"  # the weights in no folder: said, as a study run on it would stop there
    merge_studies([one], bare, weights=False)
    (bare / "gradvar" / "2s-seed1.json").unlink()
    again = merge_studies([bare], tmp_path / "again", weights=False)
    assert again.weights_missing == {"pretrain/2s-seed1": ["gradient noise 2s-seed1"]} and again.weights_kept == {}
    assert "WARNING: work that needs weights no folder holds is not finished" in describe(again, tmp_path / "again")
    assert merge_studies([midway], tmp_path / "again", weights=False).weights_missing == {}  # a folder that has them
    held = tmp_path / "held"  # the destination holds them already: named as kept, though nothing is copied
    merge_studies([midway], held)
    assert merge_studies([midway], held, weights=False).weights_kept == merged.weights_kept

    left = tmp_path / "left"  # a rerun with seed 2 alone wrote study.json: seed 1's runs are left out of its plan
    shutil.copytree(midway, left)
    saved = json.loads((left / "study.json").read_text())
    (left / "study.json").write_text(json.dumps({**saved, "seeds": [2]}))
    assert merge_studies([left], tmp_path / "left-merged", weights=False).weights_kept == merged.weights_kept
    (left / "pretrain" / "4s-seed1" / "done.json").write_text("{")  # read before the plan is: named
    with pytest.raises(ValueError, match=r"4s-seed1/done\.json: unreadable"):
        merge_studies([left], tmp_path / "left-broken", weights=False)


def test_grid_entries_run_on_two_machines_merge_into_one_grid(two_machines, tmp_path, caplog) -> None:
    """docs/cluster.md: "A study's seeds (or grid entries) may run on machines that share nothing". Folders of one
    study, each with grid entries of its own, were refused ("neither recipe grows the other … differs in grid.2s"):
    now the merged study holds both grids, and a study run on it with every entry does none of the work again. An
    entry of one tag resolved otherwise in the other folder (its lr) is still refused."""
    study = two_machines[0]
    light = ["probes=[]", "gradvar_batches=0"]
    a, b = tmp_path / "a", tmp_path / "b"
    run_study(load_study(study, [*light, "grid=[2]"]), a)
    run_study(load_study(study, [*light, "grid=[4]"]), b)
    out = tmp_path / "merged"
    merged = merge_studies([a, b], out)
    assert json.loads((out / "study.json").read_text())["grid"] == [2, 4]
    assert "'grid=[2, 4]'" in describe(merged, out)
    before = _work(out)
    run_study(load_study(study, [*light, "grid=[2, 4]"]), out)
    assert _work(out) == before  # nothing trained, fine-tuned or evaluated again
    assert {json.loads(x)["pretrain"] for x in (out / "results.jsonl").read_text().splitlines()} == {
        "2s-seed1", "4s-seed1"}
    other_lr = tmp_path / "other-lr"
    run_study(load_study(study, [*light, "grid=[{batch_seconds: 2, lr: 2.0e-3}]"]), other_lr)
    with pytest.raises(ValueError, match=r"hold different studies .*differs in grid\.2s"):
        merge_studies([a, other_lr], tmp_path / "refused")
    # merged into the folder that holds the union already: the grid to run it with is still printed (it had not
    # been: the destination held every entry)
    assert "'grid=[2, 4]'" in describe(merge_studies([a], out), out)
    # a folder of the whole grid merged with one of a part of it: the part's study file needs the whole grid
    text = describe(merge_studies([out, a], tmp_path / "whole"), tmp_path / "whole")
    assert f"grew that of {a} (differs in study.grid): with its study file, add 'grid=[2, 4]' to that command" in text
    # two entries of one batch size (tags of their own) are no grid a study runs: refused, not merged (the grid
    # printed would have been refused after everything was copied)
    tagged = tmp_path / "tagged"
    run_study(load_study(study, [*light, "grid=[{batch_seconds: 2, tag: two}]"]), tagged)
    with pytest.raises(ValueError, match=r"hold different studies"):
        merge_studies([a, tagged], tmp_path / "refused-tags")
    assert not (tmp_path / "refused-tags" / "study.json").exists()


def test_a_grown_recipe_merged_says_what_a_narrower_study_file_needs(two_machines, tmp_path) -> None:
    """A test split, a label set and a probe task added on one machine: the merged study.json holds that wider
    recipe, and the command the merge printed, run with the other machine's study file, was refused ("differs in
    study.corpus.test.dev"), the merge saying nothing of it. Now it prints the overrides that bring that study file
    to the merged recipe, and with them the merged folder takes it; where no override does (an LM set on one
    machine: where its files are is no part of the recipe), it names the folder whose study file to run with."""
    study, one, two = two_machines
    grown = tmp_path / "grown"  # seed 2 again, its study file grown (its new work not done: merge compares units)
    shutil.copytree(two, grown)
    wider = load_study(study, ["seeds=[2]", "corpus.test.dev=manifests/dev.jsonl", "probes=[ic, pr]",
                               "probe_overrides=[ic.steps=10, pr.epochs=1]",
                               "corpus.label_sets.1h=manifests/labelled-1h.jsonl",
                               "finetune.per_label_set.1h=[max_steps=1]"])
    saved = json.loads((grown / "study.json").read_text())
    (grown / "study.json").write_text(json.dumps({**saved, **to_dict(wider), "fingerprint": recipe_fingerprint(
        wider, plan_runs(wider), Path.cwd())}))
    out = tmp_path / "merged"
    text = describe(merge_studies([one, grown], out, weights=False), out)
    command = re.search(rf"`earful study run STUDY\.yaml --out {re.escape(str(out))} ([^`]*)`", text)
    added = re.search(rf"the merged recipe grew that of {re.escape(str(one))} \(differs in "
                      r"study\.corpus\.label_sets\.1h, study\.corpus\.test\.dev, study\.finetune\.per_label_set\.1h, "
                      r"study\.probes, probe\.pr\): with its study file, add (.*) to that command", text)
    assert command and added, text
    assert str(grown) not in text.split("grew that of", 1)[-1]  # its recipe is the merged one: nothing to add

    def run_on_merged(words: list[str]) -> None:  # what `earful study run` checks before it writes study.json
        loaded = load_study(study, words)
        check_same_recipe(out, recipe_fingerprint(loaded, plan_runs(loaded), Path.cwd()))

    with pytest.raises(ValueError, match=r"differs in study\.corpus\.label_sets\.1h, study\.corpus\.test\.dev"):
        run_on_merged(shlex.split(command[1]))
    run_on_merged(shlex.split(command[1]) + shlex.split(added[1]))  # taken

    lm = tmp_path / "lm"  # an LM set on one machine
    shutil.copytree(two, lm)
    saved = json.loads((lm / "study.json").read_text())
    spec = to_dict(LMSpec(path="lm/4gram.arpa"))
    saved["fingerprint"]["study"].update({f"lm.{k}": v for k, v in flatten(spec).items()
                                          if k not in ("path", "lexicon")})
    (lm / "study.json").write_text(json.dumps({**saved, "lm": spec, "fingerprint": {
        **saved["fingerprint"], "lm": {"path": "0" * 64, "lexicon": None}}}))
    out = tmp_path / "merged-lm"
    text = describe(merge_studies([one, lm], out, weights=False), out)
    assert re.search(rf"WARNING: the merged recipe grew that of {re.escape(str(one))} \(differs in study\.lm\.beam, "
                     rf".*\), which overrides of that command do not give: run it with the study file of "
                     rf"{re.escape(str(lm))} \(the merged recipe\)", text), text


def _wider(study: Path, two: Path, folder: Path, words: list[str], edit=None) -> None:
    """``folder``: a copy of ``two`` whose study.json holds the study file with ``words`` (then ``edit``, on the
    config), its fingerprint recomputed (its new work not done: merge compares units)."""
    shutil.copytree(two, folder)
    wider = load_study(study, ["seeds=[2]", *words])
    if edit is not None:
        edit(wider)
    saved = json.loads((folder / "study.json").read_text())
    (folder / "study.json").write_text(json.dumps({**saved, **to_dict(wider), "fingerprint": recipe_fingerprint(
        wider, plan_runs(wider), Path.cwd())}))


def _older(folder: Path) -> None:
    """``folder``'s study.json as an earful of before wrote it: ctc_normalisation called loss_normalisation."""
    saved = json.loads((folder / "study.json").read_text())
    old = ["loss_normalisation=token"]
    saved["finetune"]["per_label_set"]["1h"] = saved["fingerprint"]["study"]["finetune.per_label_set.1h"] = old
    (folder / "study.json").write_text(json.dumps(saved))


@pytest.mark.parametrize("words, edit, older", [
    # a label set whose name holds a '.': no override key can say it, its mapping is given whole
    (["corpus.label_sets={10h: manifests/labelled-10h.jsonl, 1.5h: manifests/labelled-1h.jsonl}"], None, False),
    # a grid entry's lr of 5e-05, which JSON writes without a decimal point: read back as text
    (["grid=[2, 4, {batch_seconds: 8, lr: 5.0e-5}]"], None, False),
    # a test split whose path is no plain YAML ('[...'): the merge stopped at it, with a WARNING
    (["corpus.test.dev='[dev] 1.jsonl'"], None, False),
    # a label set's overrides holding ' #', which starts a comment inside a list given as an override
    (["corpus.label_sets.1h=manifests/labelled-1h.jsonl"],
     lambda s: s.finetune.per_label_set.update({"1h": ["max_steps=1", "tracking.name=label set #1h"]}), False),
    # a study.json of an earlier earful, its label set's overrides naming a setting renamed since
    (["corpus.label_sets.1h=manifests/labelled-1h.jsonl", "finetune.per_label_set.1h=[ctc_normalisation=token]"],
     None, True),
])
def test_the_overrides_a_merge_prints_give_the_merged_recipe(two_machines, tmp_path, words, edit, older) -> None:
    """The overrides that bring a narrower folder's study file to the merged recipe read back, as a shell passes
    them to `earful study run`, as that recipe: a setting's name holding '.', a float JSON writes without a point,
    a path that is no plain YAML and a list holding ' #' gave no override (a WARNING) or one that read back as
    text; an earlier earful's study.json gave a setting's old name, which the fine-tuning refuses."""
    study, one, two = two_machines
    shutil.copy(Path(load_study(study).corpus.dir) / "manifests" / "dev.jsonl",
                Path(load_study(study).corpus.dir) / "[dev] 1.jsonl")
    grown = tmp_path / "grown"
    _wider(study, two, grown, words, edit)
    if older:
        _older(grown)
    out = tmp_path / "merged"
    text = describe(merge_studies([one, grown], out, weights=False), out)
    command = re.search(rf"`earful study run STUDY\.yaml --out {re.escape(str(out))} ([^`]*)`", text)
    added = re.search(rf"the merged recipe grew that of {re.escape(str(one))} \(differs in [^)]*\): with its study "
                      r"file, add (.*) to that command", text)
    assert command and added and "WARNING" not in text, text
    loaded = load_study(study, shlex.split(command[1]) + shlex.split(added[1]))
    check_same_recipe(out, recipe_fingerprint(loaded, plan_runs(loaded), Path.cwd()))  # taken
    for label_set in loaded.corpus.label_sets:  # what the study fine-tunes with
        finetune_recipe(loaded, label_set)


def test_the_command_a_merge_prints_reads_back_as_its_folder_and_grid(two_machines, tmp_path) -> None:
    """The command printed to run the merged study, split as a shell splits it: a folder whose path holds a space
    was two words, and a grid entry's lr of 5e-05 (JSON's 5e-05) was read back as text."""
    study, _, _ = two_machines
    out = tmp_path / "two machines" / "merged"
    grid = [2, {"batch_seconds": 8, "lr": 5e-05}]
    command = re.search(r"`earful study run STUDY\.yaml (.*)`", describe(Merged(seeds=[1, 2], grid=grid), out))
    assert command
    words = shlex.split(command[1])
    assert words[:2] == ["--out", str(out)]
    assert load_study(study, words[2:]).grid == grid


def test_a_folder_whose_lists_the_merged_recipe_reorders_needs_no_overrides(two_machines, tmp_path) -> None:
    """Two folders whose probe tasks are the same, listed in another order: a study run takes either study file on
    the merged folder, but the merge said the merged recipe grew the other's and that without its overrides the
    study file was refused."""
    study, _, two = two_machines
    words = ["corpus.test.dev=manifests/dev.jsonl", "probe_overrides=[ic.steps=10, pr.epochs=1]"]
    first, second = tmp_path / "first", tmp_path / "second"
    _wider(study, two, first, [*words, "probes=[ic, pr]"])
    _wider(study, two, second, [*words, "probes=[pr, ic]"])
    out = tmp_path / "merged"
    text = describe(merge_studies([first, second], out, weights=False), out)
    assert "grew" not in text and "WARNING" not in text, text
    loaded = load_study(study, ["seeds=[2]", *words, "probes=[ic, pr]"])  # the first's study file: taken
    check_same_recipe(out, recipe_fingerprint(loaded, plan_runs(loaded), Path.cwd()))
