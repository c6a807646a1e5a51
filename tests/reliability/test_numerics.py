"""Numerics: a NaN loss is skipped and counted; NaNs in a row stop the run with a clear message, a
checkpoint and exit code 3; fp16 overflow is the GradScaler's business — skipped, logged, not a failure.

NaNs are forced by patching the tasks (the ``nan_steps`` fixture: steps whose loss is multiplied by NaN).
fp16 runs on the CPU here (torch.autocast float16 + ``GradScaler('cpu')``); at torch's initial scale of 65536
(patched in: earful starts at fairseq's 128) the tiny model's summed losses overflow for the first few steps.
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from earful.checkpoint import load_model
from earful.cli import main
from earful.finetune.config import load_finetune_config
from earful.finetune.task import FinetuneTask
from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train.engine import Trainer, TrainingStopped
from earful.train.schedule import lr_at
from earful.train.state import RunDir, load_trainer_state


def _weights(run, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def _task(kind: str, cfg):
    return (PretrainTask if kind == "pretrain" else FinetuneTask)(cfg)


def _trainer(kind: str, tmp_path, tiny_corpus, tones, rel, steps: int, *extra: str):
    if kind == "pretrain":
        cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], steps, *extra))
    else:
        cfg = load_finetune_config(None, rel.finetune_overrides(tones, steps, *extra))
    return Trainer(_task(kind, cfg), tmp_path / "run")


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_a_nan_loss_is_skipped_and_counted(kind, tmp_path, tiny_corpus, tones, rel, caplog, nan_steps) -> None:
    trainer = _trainer(kind, tmp_path, tiny_corpus, tones, rel, 4, "ckpt_every=1", "keep_last=10")
    nan_steps.add(2)
    summary = trainer.fit()
    assert summary["step"] == 4 and summary["nan_steps"] == 1 and summary["overflow_steps"] == 0
    log = {r["step"]: r for r in rel.read_jsonl(tmp_path / "run" / "train.jsonl")}
    assert [log[s]["skipped_steps"] for s in (1, 2, 3, 4)] == [0, 0, 1, 0]  # step index 2 is logged as 3
    # the warning names that step as the log does (it said step 2)
    assert "step 3: non-finite loss or gradient; update skipped (1 in a row, 1 in all)" in caplog.text
    a, b, c = (_weights(tmp_path / "run", f"step-000000{s}") for s in (2, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the NaN step left the weights alone
    assert not all(torch.equal(b[k], c[k]) for k in b)  # and training went on
    assert all(torch.isfinite(v).all() for v in c.values())


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_nans_in_a_row_stop_with_a_checkpoint_then_resume(kind, tmp_path, tiny_corpus, tones, rel, nan_steps) -> None:
    trainer = _trainer(kind, tmp_path, tiny_corpus, tones, rel, 8, "max_nan_steps=3")
    nan_steps.update(range(1, 100))
    with pytest.raises(TrainingStopped, match=r"3 non-finite steps in a row at step 4: stopped. A checkpoint was "
                                              r"written; lower optim.lr"):
        trainer.fit()
    ckpt = RunDir(tmp_path / "run").latest()
    assert ckpt is not None and ckpt.name == "step-0000004"
    info, state = load_trainer_state(ckpt)  # verified by size and hash
    assert info["nan_steps"] == 3 and state is not None
    model, _ = load_model(ckpt)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the cause fixed, the run continues from that checkpoint
    nan_steps.clear()
    resumed = Trainer(_task(kind, trainer.cfg), tmp_path / "run", resume=True)
    assert resumed.step == 4
    assert resumed.fit()["step"] == 8


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_the_interval_a_run_diverges_in_is_logged_before_it_stops(kind, tmp_path, tiny_corpus, tones, rel,
                                                                   nan_steps) -> None:
    """The stop after max_nan_steps came before the step's statistics were added to the log interval: the record
    that says why the run stopped (its NaN loss, skipped_steps) went to no log, TensorBoard or tracker, and the
    checkpoint's interval lacked the last step. Now that interval is logged, then the checkpoint written."""
    trainer = _trainer(kind, tmp_path, tiny_corpus, tones, rel, 8, "max_nan_steps=3", "log_every=5")
    nan_steps.update(range(1, 100))
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row at step 4"):
        trainer.fit()
    (rec,) = rel.read_jsonl(tmp_path / "run" / "train.jsonl")
    assert rec["step"] == 4 and rec["skipped_steps"] == 3 and math.isnan(rec["loss"])
    info, _ = load_trainer_state(RunDir(tmp_path / "run").latest())
    assert not info["log_interval"] or not info["log_interval"].get("steps")  # logged: nothing left to carry


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_a_nan_streak_survives_a_resume(kind, tmp_path, tiny_corpus, tones, rel, nan_steps) -> None:
    """NaN at step indices 2, 3 and 4 with max_nan_steps=3 stops the run after step 5, also when it was
    interrupted after step 4 (two in a row so far) and resumed."""
    first = _trainer(kind, tmp_path, tiny_corpus, tones, rel, 4, "max_nan_steps=3")
    nan_steps.update({2, 3, 4})
    assert first.fit()["step"] == 4
    cfg = first.cfg
    cfg.max_steps = 6  # another recipe (the schedule spans 6 steps): continued on purpose
    resumed = Trainer(_task(kind, cfg), tmp_path / "run", resume=True, allow_changes=True)
    assert resumed.nan_in_a_row == 2
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row at step 5"):
        resumed.fit()


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_a_run_stopped_by_nans_at_its_last_step_stays_stopped_on_resume(kind, tmp_path, tiny_corpus, tones, rel,
                                                                        nan_steps, monkeypatch) -> None:
    """Stopped by max_nan_steps at its last step, a run resumed stops again, changing nothing: it had ended
    "finished" (exit 0), validated its NaN model and rewritten its checkpoint. Trackers hear "failed" (they had
    heard "finished": it had reached max_steps)."""
    from earful.train.tracking import Tracking

    told = []
    monkeypatch.setattr(Tracking, "finish", lambda self, status: told.append(status))
    first = _trainer(kind, tmp_path, tiny_corpus, tones, rel, 3, "max_nan_steps=3")
    nan_steps.update(range(100))
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row at step 3"):
        first.fit()
    written = (tmp_path / "run" / "checkpoints" / "step-0000003" / "trainer.json").stat().st_mtime_ns
    with pytest.raises(TrainingStopped, match=r"3 non-finite steps in a row at step 3, its last: the run stopped "
                                              r"there \(its checkpoint says so\)"):
        Trainer(_task(kind, first.cfg), tmp_path / "run", resume=True).fit()
    assert (tmp_path / "run" / "checkpoints" / "step-0000003" / "trainer.json").stat().st_mtime_ns == written
    assert not (tmp_path / "run" / "valid.jsonl").exists() or not (tmp_path / "run" / "valid.jsonl").read_text()
    first.cfg.max_nan_steps = 10  # an operational setting: the checkpoint's recorded stop decides, not the streak
    with pytest.raises(TrainingStopped, match="its last: the run stopped there"):
        Trainer(_task(kind, first.cfg), tmp_path / "run", resume=True).fit()
    first.cfg.device_seconds = 2.0 if kind == "pretrain" else 3.5  # another layout: nothing trains in it either
    with pytest.raises(TrainingStopped, match="its last: the run stopped there"):
        Trainer(_task(kind, first.cfg), tmp_path / "run", resume=True).fit()
    assert len((tmp_path / "run" / "history.jsonl").read_text().splitlines()) == 1  # no segment of it
    assert not (tmp_path / "run" / "config-2.yaml").exists()
    assert told == ["failed"] * 4


def test_cli_exit_code_3_on_repeated_nans(tmp_path, tiny_corpus, tones, rel, caplog, nan_steps) -> None:
    nan_steps.update(range(100))
    rc = main(["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 5, "max_nan_steps=2"), "--out",
               str(tmp_path / "pre")])
    assert rc == 3 and "2 non-finite steps in a row at step 2: stopped" in caplog.text
    assert json.loads((tmp_path / "pre" / "checkpoints" / "latest.json").read_text())["step"] == 2
    caplog.clear()
    overrides = [o for o in rel.finetune_overrides(tones, 5, "max_nan_steps=2") if not o.startswith("data.train")]
    rc = main(["finetune", "--train", str(tones), "--out", str(tmp_path / "ft"), *overrides])
    assert rc == 3 and "2 non-finite steps in a row at step 2: stopped" in caplog.text
    assert json.loads((tmp_path / "ft" / "checkpoints" / "latest.json").read_text())["step"] == 2


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_fp16_overflow_is_the_scalers_business(kind, tmp_path, tiny_corpus, tones, rel, caplog, nan_steps,
                                               monkeypatch) -> None:
    """With ``max_nan_steps=2``, the scaler's first overflows (several in a row) would stop the run if they
    counted as non-finite steps. They are skipped, halve ``loss_scale``, are logged and counted apart, and leave
    the interval's grad_norm out of it; a NaN *loss* under fp16 still counts as non-finite."""
    import earful.train.engine as engine

    assert engine.FP16_INIT_SCALE == 128.0  # fairseq's; torch's 65536 is patched in to force overflows
    monkeypatch.setattr(engine, "FP16_INIT_SCALE", 65536.0)
    steps = 10
    trainer = _trainer(kind, tmp_path, tiny_corpus, tones, rel, steps, "precision=fp16", "max_nan_steps=2")
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 65536.0
    nan_steps.add(steps - 1)
    with caplog.at_level(logging.INFO):
        summary = trainer.fit()
    overflows = summary["overflow_steps"]
    assert summary["step"] == steps and summary["nan_steps"] == 1
    assert 2 <= overflows < steps - 1, overflows  # overflowed, and then trained
    log = rel.read_jsonl(tmp_path / "run" / "train.jsonl")
    assert sum(r["overflow_steps"] for r in log) == overflows
    assert sum(r["skipped_steps"] for r in log) == 1 and log[-1]["skipped_steps"] == 1
    assert log[-1]["overflow_steps"] == 0  # the NaN loss is not an overflow
    assert log[-1]["loss_scale"] == 65536.0 / 2 ** (overflows + 1)  # every skipped step halved it
    assert all(b["loss_scale"] <= a["loss_scale"] for a, b in zip(log, log[1:], strict=False))
    assert caplog.text.count("fp16 gradient overflow; update skipped, loss scale lowered to") == overflows
    said = Counter(int(m) for m in re.findall(r"step (\d+): fp16 gradient overflow", caplog.text))
    assert said == {r["step"]: r["overflow_steps"] for r in log if r["overflow_steps"]}  # named as the log does
    # an overflow updated nothing and took no step (fairseq's num_updates): the first step was tried again with
    # each next batch until the scale fitted, and the schedule waited (each step had been one batch, overflowed
    # or not, so the lr schedule and the freeze ran ahead of the updates)
    assert [r["step"] for r in log] == list(range(1, steps + 1)) and log[0]["overflow_steps"] >= 2
    assert [r["lr"] for r in log] == [lr_at(r["step"] - 1, trainer.peak_lr, steps, trainer.cfg.optim) for r in log]
    final = _weights(tmp_path / "run", f"step-{steps:07d}")
    assert all(torch.isfinite(v).all() for v in final.values())
    assert not all(torch.equal(final[k], _weights(tmp_path / "run", "init")[k]) for k in final)
    assert math.isfinite(log[-2]["loss"]) and math.isnan(log[-1]["loss"])  # the NaN step is visible in the log
    assert all(math.isfinite(r["grad_norm"]) for r in log[:-1])  # each record holds a step taken: overflows left out


def test_a_stop_during_an_fp16_overflow_resumes_exactly(tmp_path, tiny_corpus, rel, monkeypatch) -> None:
    """A signal shared in a batch that overflowed stops the run at the step it was trying again (step 0 here): its
    checkpoint holds the data position past that batch and the lowered scale, and the resumed run ends with the
    weights of one never stopped."""
    import earful.train.engine as engine

    monkeypatch.setattr(engine, "FP16_INIT_SCALE", 65536.0)
    steps = 4
    whole = _trainer("pretrain", tmp_path / "whole", tiny_corpus, None, rel, steps, "precision=fp16")
    assert whole.fit()["overflow_steps"] >= 2
    cut = _trainer("pretrain", tmp_path / "cut", tiny_corpus, None, rel, steps, "precision=fp16")
    real, calls = cut.train_step, []

    def train_step(batches):
        calls.append(cut.step)
        if len(calls) == 2:  # the second batch, an overflow: the step is still 0
            cut._on_signal(signal.SIGTERM, None)
        return real(batches)

    monkeypatch.setattr(cut, "train_step", train_step)
    summary = cut.fit()
    assert calls == [0, 0] and summary["step"] == 0 and summary["stopped_by"] == "SIGTERM"
    assert summary["overflow_steps"] == 2
    cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], steps, "precision=fp16"))
    resumed = Trainer(PretrainTask(cfg), tmp_path / "cut" / "run", resume=True)
    assert resumed.step == 0 and resumed.scaler.get_scale() == 65536.0 / 4
    assert resumed.fit()["step"] == steps
    a, b = (_weights(tmp_path / run / "run", f"step-{steps:07d}") for run in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_autocast_wraps_the_forward_and_not_the_backward(tmp_path, tiny_corpus, rel, monkeypatch) -> None:
    """As PyTorch's AMP recipe: the backward runs outside autocast, so a backward written to stay in fp32 (the
    CNN's masked GroupNorm, the contrastive scores) is not cast down by an autocast still open around it."""
    seen: list[tuple[str, bool]] = []
    real_backward, real_forward = torch.Tensor.backward, PretrainTask.micro_step

    def backward(self, *a, **k):
        seen.append(("backward", torch.is_autocast_enabled("cpu")))
        return real_backward(self, *a, **k)

    def micro_step(self, *a, **k):
        seen.append(("forward", torch.is_autocast_enabled("cpu")))
        return real_forward(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    monkeypatch.setattr(PretrainTask, "micro_step", micro_step)
    cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 1, "precision=bf16"))
    Trainer(PretrainTask(cfg), tmp_path / "run").fit()
    assert seen == [("forward", True), ("backward", False)]


def test_clip_norm_clips_the_gradient_the_optimizer_applies(tmp_path, tiny_corpus, rel, monkeypatch) -> None:
    """optim.clip_norm=0.001: the gradient the optimizer steps with has norm 0.001, while train.jsonl logs the
    norm before clipping (far above it)."""
    trainer = _trainer("pretrain", tmp_path, tiny_corpus, None, rel, 2, "optim.clip_norm=0.001")
    applied, step = [], trainer.optimizer.step

    def recording_step(*a, **k):
        applied.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.params
                                                                   if p.grad is not None]))))
        return step(*a, **k)

    monkeypatch.setattr(trainer.optimizer, "step", recording_step)
    trainer.fit()
    assert applied == pytest.approx([0.001, 0.001], rel=1e-4)
    assert all(r["grad_norm"] > 0.1 for r in rel.read_jsonl(tmp_path / "run" / "train.jsonl"))
