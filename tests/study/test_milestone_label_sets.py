"""`finetune.milestone_label_sets`: the label sets the milestones (hours-H, the cycle minima steps-N) are fine-tuned
on, as the paper fine-tunes its 50k progress checkpoints on 10 min and 100 h only and best on all five; and
studies/paper.yaml, which takes the paper's cyclic design (docs/paper.md §3.3, §6.3)."""

import json
from pathlib import Path

import pytest

from earful.study.config import StudyConfig, load_study, plan_runs

ROOT = Path(__file__).resolve().parents[2]


def test_the_milestones_are_fine_tuned_on_their_label_sets_and_the_rest_on_every_one(tmp_path, planned_run,
                                                                                     kept_checkpoints) -> None:
    """The milestones on `milestone_label_sets` alone, final, best and the baselines on every label set; a milestone
    on the last step is the final's fine-tuning where the label set has both, the final's alone where not."""
    from earful.study.run import planned_finetunings, unique

    run = planned_run
    study = StudyConfig(mode="fixed-steps", steps=8, cycles=2, ckpt_hours=[0.0089])
    study.corpus.label_sets = {"a": "a.jsonl", "b": "b.jsonl", "c": "c.jsonl"}
    study.finetune.checkpoints = ["best", "final", "milestones"]
    study.finetune.milestone_label_sets = ["b"]
    kept_checkpoints(tmp_path, run, {"steps-4": 4, "hours-0.0089": 8, "step-0000008": 8, "best": 6})
    planned = planned_finetunings(study, run, tmp_path, True)
    assert [(f.record["checkpoint"], f.label_set, f.name) for f in planned if f.baseline is None] == [
        ("best", "a", "4s-seed1__best__a"), ("best", "b", "4s-seed1__best__b"), ("best", "c", "4s-seed1__best__c"),
        ("final", "a", "4s-seed1__final__a"), ("final", "b", "4s-seed1__final__b"),
        ("final", "c", "4s-seed1__final__c"),
        ("hours-0.0089", "b", "4s-seed1__final__b"), ("steps-4", "b", "4s-seed1__steps-4__b")]
    assert sorted(f.name for f in planned if f.baseline) == [f"scratch-seed1__init__{ls}" for ls in "abc"]
    assert len(unique(planned)) == 3 + 3 + 1 + 3  # best, final, steps-4 on b, the baselines
    # the default: every label set, as before the setting
    study.finetune.milestone_label_sets = None
    assert {(f.record["checkpoint"], f.label_set) for f in planned_finetunings(study, run, tmp_path, False)} == {
        (ck, ls) for ck in ("best", "final", "steps-4", "hours-0.0089") for ls in "abc"}
    study.finetune.milestone_label_sets = []  # none
    assert {f.record["checkpoint"] for f in planned_finetunings(study, run, tmp_path, False)} == {"best", "final"}


def test_the_plan_counts_the_milestones_on_their_label_sets(tmp_path) -> None:
    """4 runs × (final on 3 label sets + 1 cycle minimum on 1) + 2 seeds × the scratch baseline on 3."""
    from earful.study.plan import later_stages

    y = tmp_path / "s.yaml"
    y.write_text("grid: [8, 16]\nmode: fixed-steps\nsteps: 20\ncycles: 2\nseeds: [1, 2]\n"
                 "corpus: {label_sets: {a: a.jsonl, b: b.jsonl, c: c.jsonl}}\n"
                 "finetune: {checkpoints: [final, milestones], milestone_label_sets: [a]}\n")
    study = load_study(y)
    assert later_stages(study, plan_runs(study))["finetunings"] == 4 * (3 + 1) + 2 * 3
    every = load_study(y, ["finetune.milestone_label_sets=null"])
    assert later_stages(every, plan_runs(every))["finetunings"] == 4 * (3 + 3) + 2 * 3


def test_a_milestone_label_set_the_study_does_not_fine_tune_on_is_refused(tmp_path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text("grid: [16]\ncorpus: {label_sets: {10h: a.jsonl, 1h: b.jsonl}}\n"
                 "finetune: {milestone_label_sets: [10min]}\n")
    with pytest.raises(ValueError, match=r"finetune.milestone_label_sets names \['10min'\], not in "
                                         r"corpus.label_sets \['10h', '1h'\]"):
        load_study(y)
    with pytest.raises(ValueError, match=r"finetune.milestone_label_sets names \['1h'\], not in "
                                         r"finetune.label_sets \['10h'\]"):
        load_study(y, ["finetune.label_sets=[10h]", "finetune.milestone_label_sets=[1h]"])
    assert load_study(y, ["finetune.milestone_label_sets=[1h]"]).finetune.milestone_label_sets == ["1h"]


def _fingerprint(tmp_path: Path, *overrides: str) -> dict:
    from earful.study.fingerprint import recipe_fingerprint

    corpus = tmp_path / "corpus"
    for name in ("train.jsonl", "dev.jsonl", "a.jsonl", "b.jsonl", "test.jsonl"):
        corpus.mkdir(exist_ok=True)
        (corpus / name).write_text('{"id": "a"}\n')
    y = tmp_path / "s.yaml"
    y.write_text(f"grid: [10]\nmode: fixed-steps\nsteps: 8\ncycles: 2\ncorpus: {{dir: {corpus}, train: train.jsonl, "
                 "valid: dev.jsonl, finetune_valid: dev.jsonl, label_sets: {a: a.jsonl, b: b.jsonl}, "
                 "test: {test: test.jsonl}}\nfinetune: {checkpoints: [final, milestones]}\n")
    study = load_study(y, list(overrides))
    return recipe_fingerprint(study, plan_runs(study), tmp_path)


def test_a_study_folder_of_before_the_setting_continues_and_the_setting_may_grow_not_shrink(tmp_path, planned_run,
                                                                                           kept_checkpoints) -> None:
    """A study.json written before `milestone_label_sets` existed (no such key in its config or fingerprint)
    continues with the default and plans the same fine-tunings; the milestones' label sets may gain one on a
    finished study (new work), not lose one."""
    from earful.config import to_dict
    from earful.study.config import study_of_record
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe
    from earful.study.run import planned_finetunings

    fp = _fingerprint(tmp_path)
    assert not [k for k in fp["study"] if "milestone" in k]  # the default fingerprints as before the setting
    out = tmp_path / "out"
    (out / "eval" / "x").mkdir(parents=True)
    (out / "eval" / "x" / "summary.json").write_text("{}")  # something finished: the recipe may only grow
    saved = to_dict(load_study(tmp_path / "s.yaml"))
    del saved["finetune"]["milestone_label_sets"]
    (out / "study.json").write_text(json.dumps({**saved, "format": STUDY_FORMAT, "fingerprint": fp}))
    check_same_recipe(out, _fingerprint(tmp_path))
    before = study_of_record(json.loads((out / "study.json").read_text()))
    assert before.finetune.milestone_label_sets is None
    run = planned_run
    kept_checkpoints(tmp_path, run, {"steps-4": 4, "step-0000008": 8})
    assert {(f.record["checkpoint"], f.label_set) for f in planned_finetunings(before, run, tmp_path, False)} == {
        ("final", "a"), ("final", "b"), ("steps-4", "a"), ("steps-4", "b")}
    # fewer label sets for the milestones: their finished fine-tunings would leave the plan
    with pytest.raises(ValueError, match=r"differs in study\.finetune\.milestone_label_sets\) \(finetune\."
                                         r"milestone_label_sets may gain items"):
        check_same_recipe(out, _fingerprint(tmp_path, "finetune.milestone_label_sets=[a]"))
    narrow = _fingerprint(tmp_path, "finetune.milestone_label_sets=[a]")
    (out / "study.json").write_text(json.dumps({**saved, "format": STUDY_FORMAT, "fingerprint": narrow}))
    check_same_recipe(out, _fingerprint(tmp_path, "finetune.milestone_label_sets=[a, b]"))
    check_same_recipe(out, _fingerprint(tmp_path))  # back to every label set: grown
    with pytest.raises(ValueError, match=r"differs in study\.finetune\.milestone_label_sets"):
        check_same_recipe(out, _fingerprint(tmp_path, "finetune.milestone_label_sets=[b]"))


def test_the_papers_study_takes_the_papers_design() -> None:
    """studies/paper.yaml: 8 cycles of 50k steps (checkpoints at the lr minima, 50k … 350k, and the end), no
    hours milestones (at other batch sizes' lr peaks), the milestones fine-tuned on 10 min and 100 h, best and final
    on all five, gradient noise on 10 batches at the minima and the end, fine-tuning validated on val-960: the
    report judges the claims."""
    from earful.config import to_dict
    from earful.study.config import cycle_minima
    from earful.study.plan import later_stages
    from earful.study.report import scope_section
    from earful.study.stages import pretrain_config

    study = load_study(ROOT / "studies" / "paper.yaml")
    runs = plan_runs(study)
    assert study.cycles == 8 and cycle_minima(study) == [50_000 * k for k in range(1, 8)]
    cfg = pretrain_config(study, runs[0], ROOT)
    assert (cfg.optim.schedule, cfg.optim.cyclic_step_size, cfg.ckpt_steps, cfg.ckpt_hours) == (
        "cyclic", 25_000, cycle_minima(study), [])
    assert study.finetune.milestone_label_sets == ["10min", "100h"]
    assert study.finetune.checkpoints == ["best", "final", "milestones"]
    assert study.gradvar_batches == 10 and study.corpus.finetune_valid == "val-960.jsonl"
    # 7 runs × (best and final on 5 label sets + 7 minima on 2) + scratch on 5 (best counted apart from the final);
    # the gradient noise of each run at its 7 minima and its end
    assert study.gradvar_checkpoints == ["final", "milestones"]
    assert later_stages(study, runs) == {"finetunings": 7 * (2 * 5 + 7 * 2) + 5, "probe_upstreams": 0,
                                         "probe_heads": 0, "gradvar": 7 * (7 + 1)}
    scope = " ".join(scope_section(to_dict(study)))
    assert "It can test: " in scope and "C4 (equal hours" in scope and "C6 (gradient noise" in scope


def _cyclic(tmp_path: Path, head: str, finetune: str = "") -> tuple[StudyConfig, dict, dict]:
    """A fixed-steps study of 8 steps in 2 cycles (its minimum at step 4), 2 seeds, label sets a and b, its
    milestones fine-tuned; ``head``: its grid (and more); ``finetune``: more of its finetune section. (The study,
    its study.json, its runs.jsonl by name.)"""
    from earful.config import to_dict

    y = tmp_path / "s.yaml"
    y.write_text(f"{head}\nmode: fixed-steps\nsteps: 8\ncycles: 2\nseeds: [1, 2]\n"
                 "corpus: {label_sets: {a: a.jsonl, b: b.jsonl}}\n"
                 f"finetune: {{checkpoints: [final, milestones], {finetune}baselines: []}}\n")
    study = load_study(y)
    return (study, {**to_dict(study), "cycle_minima": [4]},
            {r.name: {**r.__dict__, "run": r.name} for r in plan_runs(study)})


def _results(study: StudyConfig, checkpoints) -> list[dict]:
    """results.jsonl's records of each planned run's ``checkpoints(run)`` ((name, step, label sets)): the CER
    falls with the hours seen, a little noise by seed; the WER 1."""
    return [{"pretrain": r.name, "tag": r.tag, "batch_seconds": r.batch_seconds, "seed": r.seed, "checkpoint": ck,
             "step": step, "hours_padded": 0.0, "label_set": ls, "split": "test", "wer": 1.0,
             "cer": 0.9 - 0.05 * (r.batch_seconds * step / 32) ** 0.5 + 0.002 * r.seed}
            for r in plan_runs(study) for ck, step, sets in checkpoints(r) for ls in sets]


def test_the_report_pairs_cycle_minima_at_equal_hours_and_leaves_the_cells_not_fine_tuned_empty(tmp_path) -> None:
    """A cyclic study without hours milestones (studies/paper.yaml's design): the findings compare batch sizes at
    equal nominal hours from the cycle minima and the ends, (B, 2T) with (2B, T), as C4 does; a label set whose
    milestones are not fine-tuned has an empty cell at them and no equal-hours line, not an error."""
    from earful.study.claims import judge
    from earful.study.report import design_rows, findings, finetuning_tables

    study, saved, runs = _cyclic(tmp_path, "grid: [4, 8, 16]", "milestone_label_sets: [a], ")
    ft = _results(study, lambda r: (("steps-4", 4, ["a"]), ("final", 8, ["a", "b"])))
    lines = findings(ft, saved, "test", "cer")
    equal = [x for x in lines if "Equal nominal hours" in x]
    assert len(equal) == 2 and all(", a:**" in x for x in equal), lines
    assert "4 s at step 8, 8 s at step 4" in equal[0] and "8 s at step 8, 16 s at step 4" in equal[1]
    table = "\n".join(finetuning_tables(ft, runs, "test", tmp_path))
    assert "| 4s (steps-4)" in table and table.count("| – |") == 2 * 3  # b at each minimum, in WER and CER
    verdicts = {v.metric: v for v in judge(design_rows({}, runs, saved, ft, "test"), {"cer_a": False, "cer_b": False})
                if v.claim == "C4"}
    assert "2 pairs" in verdicts["cer_a"].evidence
    assert verdicts["cer_b"].evidence.startswith("no equal-hours pairs")


def test_milestones_on_some_label_sets_added_to_a_study_that_fine_tuned_none(tmp_path) -> None:
    """A finished study whose finetune.checkpoints had no milestones fine-tuned none: milestones on fewer label
    sets than it fine-tunes on are new work, not label sets lost (they had been refused); a study that fine-tuned
    its milestones on the label sets of a narrower finetune.label_sets may add label sets and keep the
    milestones on those."""
    from earful.config import to_dict
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe

    out = tmp_path / "out"
    (out / "eval" / "x").mkdir(parents=True)
    (out / "eval" / "x" / "summary.json").write_text("{}")  # something finished: the recipe may only grow
    for before, after in ((["finetune.checkpoints=[final]"], ["finetune.milestone_label_sets=[a]"]),
                          (["finetune.checkpoints=[final]", "finetune.milestone_label_sets=null"],
                           ["finetune.milestone_label_sets=[b]"]),
                          (["finetune.label_sets=[a]"], ["finetune.label_sets=[a, b]",
                                                         "finetune.milestone_label_sets=[a]"])):
        fp = _fingerprint(tmp_path, *before)
        saved = to_dict(load_study(tmp_path / "s.yaml", before))
        (out / "study.json").write_text(json.dumps({**saved, "format": STUDY_FORMAT, "fingerprint": fp}))
        check_same_recipe(out, _fingerprint(tmp_path, *after))
    # milestones fine-tuned on a and b: one of them left out is still refused
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": _fingerprint(tmp_path)}))
    with pytest.raises(ValueError, match=r"finetune\.milestone_label_sets may gain items"):
        check_same_recipe(out, _fingerprint(tmp_path, "finetune.milestone_label_sets=[a]"))


def test_an_hours_milestone_on_a_cycle_minimum_is_one_finding(tmp_path) -> None:
    """An hours milestone that falls on a cycle minimum (4 s at its end, 8 s at its minimum: 32 s of audio each)
    pairs the fine-tunings the cycle minima pair at equal hours: the findings compare them once (they had given
    the same comparison twice), in WER and CER, on each label set."""
    from earful.study.report import findings

    study, saved, runs = _cyclic(tmp_path, "grid: [4, 8]\nckpt_hours: [0.0088889]")
    ft = _results(study, lambda r: (("steps-4", 4, ["a", "b"]), ("final", 8, ["a", "b"]),
                                    ("hours-0.0088889", 8 if r.batch_seconds == 4 else 4, ["a", "b"])))
    for metric in ("wer", "cer"):
        equal = [x for x in findings(ft, saved, "test", metric) if "Equal nominal hours" in x]
        assert len(equal) == 2, equal  # one a label set: the milestone's
        assert all(x.startswith("- **Equal nominal hours (hours-0.0088889)") for x in equal), equal
