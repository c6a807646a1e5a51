"""A run that diverges at its last step (the trainer's stop on non-finite steps, or a non-finite last
validation) is a result of the grid, recorded as diverged: the rerun had marked it done and the report counted it
as a normal result."""

import json
from pathlib import Path

import pytest

from earful.study.config import PlannedRun, StudyConfig
from earful.train.state import TRAINING_FORMAT

RUN = PlannedRun(tag="16s", batch_seconds=16, devices=1, device_seconds=16, lr=1e-3, steps=4, hours=4 * 16 / 3600,
                 seed=1)


def _final(rdir: Path, steps: int, nan_in_a_row: int = 0, valid_loss: float | None = None) -> None:
    """What the trainer leaves: the final checkpoint's trainer.json (and valid.jsonl's record at that step)."""
    ck = rdir / "checkpoints" / f"step-{steps:07d}"
    ck.mkdir(parents=True, exist_ok=True)
    (ck / "trainer.json").write_text(json.dumps({"format": TRAINING_FORMAT, "step": steps, "stopped_by": "",
                                                 "nan_in_a_row": nan_in_a_row, "best_metric": "loss"}))
    (rdir / "checkpoints" / "latest.json").write_text(json.dumps({"name": ck.name}))
    if valid_loss is not None:
        (rdir / "valid.jsonl").write_text(json.dumps({"step": steps - 2, "loss": 3.0}) + "\n"
                                          + json.dumps({"step": steps, "loss": valid_loss}) + "\n")


@pytest.fixture
def stage(monkeypatch):
    from earful.pretrain.config import PretrainConfig

    monkeypatch.setattr("earful.study.stages.pretrain_config", lambda study, run, root: PretrainConfig())
    study = StudyConfig()
    study.corpus.train, study.corpus.valid = "train.jsonl", None
    return study


def test_a_pretraining_stopped_for_non_finite_steps_at_its_last_step_is_recorded_as_diverged(
        tmp_path, monkeypatch, stage) -> None:
    """The trainer stops with TrainingStopped after max_nan_steps non-finite steps, writing its final checkpoint;
    the rerun 'resumes' it as a finished run (step 4 of 4, not stopped by a signal) and marked it done."""
    import earful.pretrain.task as pretrain
    from earful.study.stages import run_pretraining_stage
    from earful.train.engine import TrainingStopped

    rdir = tmp_path / "pretrain" / RUN.name

    def diverges(cfg, rdir_, resume):
        _final(rdir, 4, nan_in_a_row=10)
        raise TrainingStopped("10 non-finite steps in a row at step 4: stopped")

    monkeypatch.setattr(pretrain, "run_pretraining", diverges)
    record = run_pretraining_stage(stage, RUN, tmp_path, tmp_path)
    assert record["diverged"] is True and "10 non-finite steps in a row at step 4" in record["diverged_because"]
    assert json.loads((rdir / "done.json").read_text())["diverged"] is True

    (rdir / "done.json").unlink()  # the rerun of before: the trainer resumes the final checkpoint as finished
    monkeypatch.setattr(pretrain, "run_pretraining", lambda cfg, rdir_, resume: {"step": 4, "stopped_by": ""})
    assert run_pretraining_stage(stage, RUN, tmp_path, tmp_path)["diverged"] is True
    (rdir / "done.json").write_text(json.dumps({"run": RUN.name, "step": 4}))  # marked done by an earlier version
    assert run_pretraining_stage(stage, RUN, tmp_path, tmp_path)["diverged"] is True
    assert json.loads((rdir / "done.json").read_text())["diverged"] is True


def test_a_non_finite_last_validation_is_diverged_and_a_stop_before_the_end_is_not(tmp_path, monkeypatch,
                                                                                   stage) -> None:
    import earful.pretrain.task as pretrain
    from earful.study.stages import run_pretraining_stage
    from earful.train.engine import TrainingStopped

    rdir = tmp_path / "pretrain" / RUN.name
    _final(rdir, 4, valid_loss=float("nan"))
    monkeypatch.setattr(pretrain, "run_pretraining", lambda cfg, rdir_, resume: {"step": 4, "stopped_by": ""})
    record = run_pretraining_stage(stage, RUN, tmp_path, tmp_path)
    assert record["diverged"] is True and "validation loss at step 4 is nan" in record["diverged_because"]

    other = tmp_path / "other"
    _final(other / "pretrain" / RUN.name, 4, valid_loss=2.5)  # finite: a normal result
    assert "diverged" not in run_pretraining_stage(stage, RUN, other, tmp_path)

    def stops_early(cfg, rdir_, resume):  # stopped at step 2 of 4: an error, the study stops
        raise TrainingStopped("10 non-finite steps in a row at step 2: stopped")

    monkeypatch.setattr(pretrain, "run_pretraining", stops_early)
    with pytest.raises(TrainingStopped):
        run_pretraining_stage(stage, RUN, tmp_path / "third", tmp_path)


def test_a_diverged_finetuning_is_flagged_in_its_results(tmp_path, monkeypatch) -> None:
    import earful.eval.evaluate as evaluation
    import earful.finetune.task as finetune
    from earful.study.stages import finetune_and_evaluate

    fdir = tmp_path / "out" / "finetune" / "ft"

    def diverges(cfg, fdir_, resume):
        _final(fdir, cfg.max_steps, nan_in_a_row=cfg.max_nan_steps)
        return {"step": cfg.max_steps, "stopped_by": ""}

    def evaluate(ckpt, splits, out):  # as evaluate does: the splits it is given, beside those evaluated before
        out.mkdir(parents=True, exist_ok=True)
        before = json.loads((out / "summary.json").read_text())["splits"] if (out / "summary.json").exists() else {}
        (out / "summary.json").write_text(json.dumps({"splits": {**before, **{
            split: {"greedy": {"wer": 0.5, "cer": 0.2}} for split in splits}}}))

    monkeypatch.setattr(finetune, "run_finetuning", diverges)
    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    study = StudyConfig()
    study.corpus.label_sets = {"10h": "labelled.jsonl"}
    study.finetune.overrides = ["max_steps=3"]
    summary = finetune_and_evaluate(study, "ft", tmp_path / "init", "10h", 1, tmp_path / "out", tmp_path, None)
    assert summary["diverged"] is True and json.loads((fdir / "done.json").read_text())["diverged"] is True
    (fdir / "done.json").write_text(json.dumps({"name": "ft"}))  # marked done by an earlier version
    assert finetune_and_evaluate(study, "ft", tmp_path / "init", "10h", 1, tmp_path / "out", tmp_path,
                                 None)["diverged"] is True
    # judged diverged by a version that read the validation WER (0 read as missing): judged again, and it is not
    _final(fdir, 3, valid_loss=0.5)
    (fdir / "done.json").write_text(json.dumps({"name": "ft", "diverged": True,
                                                "diverged_because": "its validation wer at step 3 is 0.0"}))
    assert "diverged" not in finetune_and_evaluate(study, "ft", tmp_path / "init", "10h", 1, tmp_path / "out",
                                                   tmp_path, None)
    assert json.loads((fdir / "done.json").read_text()) == {"name": "ft"}


def test_the_report_shows_diverged_runs_and_leaves_them_out_of_its_statistics(tmp_path) -> None:
    from earful.study.report import build_report

    runs = [{"run": f"{b}s-seed{k}", "tag": f"{b}s", "batch_seconds": b, "seed": k, "steps": 4, "hours": 0.01,
             **({"diverged": True, "diverged_because": "10 non-finite steps in a row at step 4"}
                if (b, k) == (8, 2) else {})} for b in (4, 8) for k in (1, 2)]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    results = [{"pretrain": r["run"], "tag": r["tag"], "batch_seconds": r["batch_seconds"], "seed": r["seed"],
                "checkpoint": "final", "hours_padded": 0.01, "step": 4, "label_set": "10h", "split": "test",
                "decoder": "greedy", "wer": 0.9, "cer": 0.5 if r["run"] != "4s-seed2" else 0.7,
                **({"diverged": True} if r["run"] == "4s-seed2" else {})} for r in runs if not r.get("diverged")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (tmp_path / "study.json").write_text(json.dumps({"name": "toy"}))
    for r in runs:
        (tmp_path / "pretrain" / r["run"]).mkdir(parents=True)
        loss = float("nan") if r.get("diverged") else 2.0
        (tmp_path / "pretrain" / r["run"] / "valid.jsonl").write_text(json.dumps(
            {"step": 4, "hours_padded": 0.01, "loss": loss, "accuracy": 0.5, "ppl_hard_0": 3.0}) + "\n")
    text = build_report(tmp_path).read_text()
    assert ("## Diverged runs\n\nPre-trainings that diverged: 8s-seed2 (10 non-finite steps in a row at step 4)"
            in text)
    assert "Fine-tunings that diverged: 4s-seed2 (final) on 10h." in text
    assert "left out of every table, finding and claim below" in text
    assert "nan" not in text.split("## Diverged runs")[1]  # its NaN validation is not in the table
    assert "| 4s (final) | 0.00444 | 0.01 | 50.0 |" in text  # the diverged fine-tuning's 70 % is not in the mean
    csv = (tmp_path / "report" / "pretrain_valid.csv").read_text()
    assert "8s-seed2" not in csv


def test_a_perfect_or_wordless_fine_tuning_is_not_diverged_and_the_recorded_stop_decides(tmp_path) -> None:
    """Divergence reads the validation loss, not the metric that picks best: a fine-tuning whose last validation WER is
    0 (perfect) had been recorded as diverged (0 read as missing, then NaN), as one whose validation set has no words
    (WER NaN). The trainer's recorded stop decides over the streak against today's max_nan_steps (an operational
    setting a resume may change)."""
    from earful.study.stages import divergence

    rdir = tmp_path / "ft"
    _final(rdir, 4)
    info_path = rdir / "checkpoints" / "step-0000004" / "trainer.json"
    info = {**json.loads(info_path.read_text()), "best_metric": "wer"}
    info_path.write_text(json.dumps(info))
    for wer in (0.0, float("nan")):
        (rdir / "valid.jsonl").write_text(json.dumps({"step": 4, "loss": 0.5, "wer": wer}) + "\n")
        assert divergence(rdir, 4, 10) == ""
    (rdir / "valid.jsonl").write_text(json.dumps({"step": 4, "loss": float("nan"), "wer": 1.0}) + "\n")
    assert divergence(rdir, 4, 10) == "its validation loss at step 4 is nan"
    (rdir / "valid.jsonl").write_text(json.dumps({"step": 4, "loss": 0.5, "wer": 0.0}) + "\n")
    info_path.write_text(json.dumps({**info, "nan_in_a_row": 3, "nonfinite_stop": False}))
    assert divergence(rdir, 4, 2) == ""  # three in a row, but the trainer did not stop on them
    info_path.write_text(json.dumps({**info, "nan_in_a_row": 3, "nonfinite_stop": True}))
    assert divergence(rdir, 4, 10).startswith("3 non-finite steps in a row at step 4")


@pytest.mark.parametrize(("diverged", "said"), [({(4, 3), (8, 3)}, "2 seed(s)"), ({(8, 3)}, "2–3 seed(s)")])
def test_the_pretraining_section_counts_the_seeds_it_shows(tmp_path, diverged, said) -> None:
    """Diverged runs are left out of the pre-training table, whose heading said "over 2 seeds" while its footnote
    counted the study's seeds ("3 seed(s) per batch size"): both count the values shown."""
    from earful.study.report import build_report

    runs = [{"run": f"{b}s-seed{k}", "tag": f"{b}s", "batch_seconds": b, "seed": k, "steps": 4, "hours": 0.01,
             **({"diverged": True, "diverged_because": "10 non-finite steps"} if (b, k) in diverged else {})}
            for b in (4, 8) for k in (1, 2, 3)]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    (tmp_path / "study.json").write_text(json.dumps({"name": "toy", "seeds": [1, 2, 3]}))
    (tmp_path / "results.jsonl").write_text("")
    for r in runs:
        (tmp_path / "pretrain" / r["run"]).mkdir(parents=True)
        (tmp_path / "pretrain" / r["run"] / "valid.jsonl").write_text(json.dumps(
            {"step": 4, "hours_padded": 0.01, "loss": 2.0 + r["seed"] / 10, "accuracy": 0.5, "ppl_hard_0": 3.0})
            + "\n")
    pre = build_report(tmp_path).read_text().split("## Pre-training: final validation")[1].split("\n## ")[0]
    assert f"mean ± SE over {said.removesuffix(' seed(s)')} seeds" in pre
    assert f"; {said} per batch size" in pre and "; 3 seed(s)" not in pre
