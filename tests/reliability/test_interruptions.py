"""Interruptions: fine-tuning SIGKILLed at a random step and resumed ends with the parameters of an
uninterrupted run (pre-training: tests/train/test_resume.py); a process SIGKILLed in the middle of writing
a checkpoint leaves the previous one complete, verified and loadable."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from earful.checkpoint import load_model
from earful.finetune.config import load_finetune_config
from earful.finetune.task import FinetuneTask
from earful.train.engine import Trainer
from earful.train.state import RunDir, load_trainer_state

STEPS = 24


def _latest_step(out: Path) -> int:
    try:
        return int(json.loads((out / "checkpoints" / "latest.json").read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def _finetune_args(rel, train: Path) -> list[str]:
    return rel.finetune_overrides(train, STEPS, "ckpt_every=1", "keep_last=2")


def test_finetuning_sigkilled_at_a_random_step_resumes_exactly(tmp_path, tones, rel, paused_training) -> None:
    """SIGKILL while the run waits after step ``kill_after + 1``, ``kill_after`` checkpointed (polling latest.json
    for it left the kill a race with the run's end: 1.9-3.4 s here)."""
    seed = int(os.environ.get("RELIABILITY_SEED", random.randrange(1 << 30)))
    kill_after = random.Random(seed).randint(3, STEPS // 2)
    why = f"(RELIABILITY_SEED={seed}: SIGKILL after step {kill_after + 1}, step {kill_after} checkpointed)"
    ref = Trainer(FinetuneTask(load_finetune_config(None, _finetune_args(rel, tones))), tmp_path / "ref").fit()
    assert ref["step"] == STEPS

    out = tmp_path / "run"
    cli = ["finetune", *_finetune_args(rel, tones), "--out", str(out)]
    cmd = [sys.executable, "-m", "earful.cli", *cli]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pause = paused_training(kill_after + 1)
    proc = subprocess.Popen(pause.command(cli), cwd=rel.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    pause.wait(proc)
    proc.send_signal(signal.SIGKILL)
    pause.go()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"{why}: the run ended by itself\n{err[-2000:]}"
    killed_at = _latest_step(out)
    assert killed_at == kill_after, f"{why}: latest checkpoint at step {killed_at}"

    r = subprocess.run([*cmd, "--resume"], cwd=rel.ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, f"{why}\n{r.stderr[-3000:]}"
    assert f"resumed from {out / 'checkpoints'}" in r.stderr, why
    a = load_file(str(tmp_path / "ref" / "checkpoints" / f"step-{STEPS:07d}" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / f"step-{STEPS:07d}" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), why
    steps = [rec["step"] for rec in rel.read_jsonl(out / "train.jsonl")]
    assert steps == list(range(1, STEPS + 1)), why  # every step logged once, none twice
    assert not list((out / "checkpoints").glob(".tmp-*")), why  # a write the kill interrupted is cleaned up


# ---------------------------------------------------------------------------------------------- killed mid-write

CHILD = r'''
import os, sys, time
from pathlib import Path
import torch
import earful.atomic as A
import earful.checkpoint as C
from earful.model import Wav2Vec2ForPreTraining, load_model_config
from earful.train.state import RunDir

root, stage = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
model = Wav2Vec2ForPreTraining(load_model_config("tiny"))
run = RunDir(root)
run.prepare()
run.save("step-0000001", model, state={"opt": torch.zeros(3)}, trainer={"step": 1})
run.save("best", model, state=None, trainer={"step": 1}, make_latest=False)
C.save_file(model.state_dict(), str(root / "original.safetensors"))  # what both must still hold
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)


def hang(what):
    (root / "HANGING").write_text(what)
    time.sleep(600)


if stage == "weights":  # part of the new weights written
    def save_file(tensors, filename, *a, **k):
        Path(filename).write_bytes(b"\0" * 4096)
        hang(stage)
    C.save_file = save_file
elif stage == "state":  # weights done, part of state.pt written
    def save(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04")
        hang(stage)
    torch.save = save
elif stage == "latest":  # the new folder complete, latest.json being replaced
    real = A._fsync_replace
    def fsync_replace(tmp, path):
        if Path(path).name == "latest.json":
            hang(stage)
        real(tmp, path)
    A._fsync_replace = fsync_replace
elif stage == "swap":  # re-saving "best": the old one moved aside, the new one not yet renamed in
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if Path(src).name == "best":
            hang(stage)
    os.replace = replace
name = "best" if stage == "swap" else "step-0000002"
run.save(name, model, state={"opt": torch.ones(3)}, trainer={"step": 2}, make_latest=stage != "swap")
raise SystemExit("the write was not interrupted")
'''

STAGES = ("weights", "state", "latest", "swap")


@pytest.fixture(scope="module")
def killed_mid_write(tmp_path_factory, rel) -> dict[str, Path]:
    """One child process per stage (run side by side), each SIGKILLed while it hangs inside ``RunDir.save``."""
    roots = {s: tmp_path_factory.mktemp(f"kill-{s}") / "run" for s in STAGES}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {s: subprocess.Popen([sys.executable, "-c", CHILD, str(roots[s]), s], cwd=rel.ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for s in STAGES}
    deadline = time.time() + 120
    try:
        for s, proc in procs.items():
            while not (roots[s] / "HANGING").exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            assert (roots[s] / "HANGING").exists(), f"{s}: {proc.communicate()[1][-2000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
    return roots


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(stage, killed_mid_write) -> None:
    root = killed_mid_write[stage]
    ckpts = root / "checkpoints"
    run = RunDir(root)
    latest = run.latest()
    assert latest is not None and latest.name == "step-0000001"
    model, _ = load_model(latest)  # size and SHA-256 verified
    info, state = load_trainer_state(latest)
    assert info["step"] == 1 and state is not None and torch.equal(state["opt"], torch.zeros(3))
    original = load_file(str(root / "original.safetensors"))
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    if stage == "latest":  # killed after the new folder was renamed into place: it is whole too
        model, _ = load_model(ckpts / "step-0000002")
        assert load_trainer_state(ckpts / "step-0000002")[0]["step"] == 2
    # the next start (any --resume) clears the partial write and restores a checkpoint moved aside
    if stage == "swap":
        assert not (root / "checkpoints" / "best").exists()
    run.prepare()
    left = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("."))
    assert not left, left
    best, _ = load_model(ckpts / "best")
    assert all(torch.equal(v, original[k]) for k, v in best.state_dict().items())


class _Killed(BaseException):
    """Ends a run like SIGKILL would (nothing catches it), at a chosen point."""


def _kill_in_checkpoint(monkeypatch, name: str) -> None:
    """Checkpoint ``name``'s write ends the run (``_Killed``), nothing of it written."""
    real_save = RunDir.save

    def killed_in_save(self: RunDir, saved: str, *args, **kwargs):
        if saved == name:
            raise _Killed(saved)
        return real_save(self, saved, *args, **kwargs)

    monkeypatch.setattr(RunDir, "save", killed_in_save)


def test_killed_before_its_first_checkpoint_restarts_without_duplicate_records(tmp_path, tiny_corpus, rel,
                                                                               monkeypatch) -> None:
    """Killed inside the first periodic checkpoint, after that step's records were logged: --resume finds
    no checkpoint and starts over; the log must not keep the dead attempt's records."""
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 3, "ckpt_every=2"))
    with monkeypatch.context() as m:
        _kill_in_checkpoint(m, "step-0000002")
        with pytest.raises(_Killed):
            Trainer(PretrainTask(cfg), tmp_path / "run").fit()
    assert [r["step"] for r in rel.read_jsonl(tmp_path / "run" / "train.jsonl")] == [1, 2]
    assert RunDir(tmp_path / "run").latest() is None
    assert Trainer(PretrainTask(cfg), tmp_path / "run", resume=True).fit()["step"] == 3
    assert [r["step"] for r in rel.read_jsonl(tmp_path / "run" / "train.jsonl")] == [1, 2, 3]


def test_killed_before_its_first_checkpoint_restarts_without_the_dead_attempt_s_tensorboard_points(
        tmp_path, tiny_corpus, rel, monkeypatch) -> None:
    """The same for TensorBoard: the dead attempt's steps 1 and 2 had stayed beside the restart's (each step
    twice, other values where the restart trains otherwise, as with another seed), where train.jsonl was cut."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    def config(seed: int):
        return load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 3, "ckpt_every=2", "tensorboard=true",
                                                                 f"seed={seed}"))

    with monkeypatch.context() as m:
        _kill_in_checkpoint(m, "step-0000002")
        with pytest.raises(_Killed):
            Trainer(PretrainTask(config(1)), tmp_path / "run").fit()
    assert Trainer(PretrainTask(config(2)), tmp_path / "run", resume=True).fit()["step"] == 3
    logged = {r["step"]: r["loss"] for r in rel.read_jsonl(tmp_path / "run" / "train.jsonl")}
    tb = EventAccumulator(str(tmp_path / "run" / "tb"))
    tb.Reload()
    points = [(e.step, e.value) for e in tb.Scalars("train/loss")]
    assert [step for step, _ in points] == [1, 2, 3] == sorted(logged), points
    assert all(value == pytest.approx(logged[step]) for step, value in points)


def test_a_signal_stops_after_the_step_that_shares_it(tmp_path, tiny_corpus, rel, monkeypatch) -> None:
    """Every rank must stop after the same step, so a signal counts from the next all-reduce of the step's
    statistics on. One that lands after step 2's all-reduce (here: in step 2's logging and validation
    hook) stops the run after step 3, with a checkpoint there, instead of letting this rank stop a step
    before ranks that did not see it yet (they would wait in the next step's gradient all-reduce forever)."""
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 6))
    trainer = Trainer(PretrainTask(cfg), tmp_path / "run")
    real_after = trainer.after_step

    def after_step() -> None:
        real_after()
        if trainer.step == 2:
            trainer._on_signal(signal.SIGTERM, None)

    monkeypatch.setattr(trainer, "after_step", after_step)
    summary = trainer.fit()
    assert summary["step"] == 3 and summary["stopped_by"] == "SIGTERM"
    assert RunDir(tmp_path / "run").latest().name == "step-0000003"


def test_a_first_ctrl_c_checkpoints_and_stops_a_second_aborts(tmp_path, tiny_corpus, rel, monkeypatch,
                                                              caplog) -> None:
    """Ctrl-C (SIGINT) during training stopped at once (KeyboardInterrupt), losing up to ckpt_every steps and
    saying nothing. The first now stops as SIGTERM does, after the step every rank shares it in, with a
    checkpoint, saying so and how to stop at once; a second aborts (KeyboardInterrupt: status 130)."""
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 6))
    trainer = Trainer(PretrainTask(cfg), tmp_path / "run")
    real_after = trainer.after_step
    before = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN where the tests run in the background

    def after_step() -> None:
        real_after()
        if trainer.step == 2:
            signal.raise_signal(signal.SIGINT)  # delivered to the handler fit() installed

    monkeypatch.setattr(trainer, "after_step", after_step)
    with caplog.at_level(logging.WARNING):
        summary = trainer.fit()
    assert summary["step"] == 3 and summary["stopped_by"] == "SIGINT"
    assert RunDir(tmp_path / "run").latest().name == "step-0000003"
    assert "Ctrl-C again stops at once" in caplog.text and "stopped by SIGINT at step 3" in caplog.text
    again = Trainer(PretrainTask(cfg), tmp_path / "run", resume=True)
    real_after = again.after_step

    def twice() -> None:
        real_after()
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(again, "after_step", twice)
    with pytest.raises(KeyboardInterrupt):
        again.fit()
    assert RunDir(tmp_path / "run").latest().name == "step-0000003"  # aborted: no checkpoint
    assert signal.getsignal(signal.SIGINT) is before  # fit() put the handler it found back


def test_a_log_line_cut_by_a_kill_does_not_block_the_resume(tmp_path, caplog) -> None:
    """A kill in the middle of appending to train.jsonl leaves half a line: on resume it is dropped with a
    warning (its step is logged again); a broken line before the last is an error naming file and line."""
    from earful.train.monitor import JsonlLog

    path = tmp_path / "train.jsonl"
    path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n{"step": 3, "lo')
    JsonlLog(path).truncate_after(2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert "its last line is incomplete" in caplog.text
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 2.5}\n')
    with pytest.raises(ValueError, match=r"train.jsonl: line 1 is not JSON .* mend or remove it"):
        JsonlLog(path).truncate_after(2)


def test_a_signal_in_the_last_step_leaves_a_finished_run(tmp_path, tiny_corpus, rel, monkeypatch) -> None:
    """A SIGTERM shared in the run's last step stops nothing: every step is trained and the final checkpoint
    written as an uninterrupted run's. It had been recorded as stopped (``stopped_by``) in that checkpoint for good:
    status 4 and "continue with --resume", a model card saying "not the run's end", and a study's torchrun stage,
    which reads trainer.json, stopping on every rerun (a --resume of the finished run rewrites nothing)."""
    from earful.interop.card import model_card
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask

    real_step = PretrainTask.start_step

    def start_step(self, step):
        real_step(self, step)
        if step == 2:  # the last of 3 steps: the signal lands before its statistics are all-reduced
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PretrainTask, "start_step", start_step)
    out = tmp_path / "run"
    summary = Trainer(PretrainTask(load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 3))), out).fit()
    assert summary["step"] == 3 and summary["stopped_by"] == ""
    final = RunDir(out).latest()
    assert final.name == "step-0000003" and load_trainer_state(final)[0]["stopped_by"] == ""
    assert "not the run's end" not in model_card(final, 1)


@pytest.mark.parametrize("late", [False, True], ids=["in-the-last-step", "after-a-stop"])
def test_a_signal_that_stops_nothing_is_handed_on(late, tmp_path, tiny_corpus, rel, monkeypatch, caplog) -> None:
    """SIGUSR1 in the run's last step (a Slurm job's time-limit notice) stops nothing: the run finishes. It had been
    swallowed, the handler outside training (submitit's: requeue) never called, and the job went on to its
    evaluation with only ``signal_delay_s`` left, after a log saying "will checkpoint and stop". Now ``fit``
    hands it on once the run has finished; so too a SIGTERM that comes after a SIGUSR1 has stopped the run (during
    its checkpoint): it outranks it, and a Slurm job must not requeue a cancelled job."""
    from earful.data.parallel import signals_handled
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask

    real_step, real_after = PretrainTask.start_step, Trainer.after_step

    def start_step(self, step):
        real_step(self, step)
        if step == (1 if late else 2):  # before the step's statistics are all-reduced: the last of 3, or step 2
            os.kill(os.getpid(), signal.SIGUSR1)

    def after_step(self):
        real_after(self)
        if late and self.step == 2:  # the stop is agreed: this SIGTERM is too late to be the run's
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PretrainTask, "start_step", start_step)
    monkeypatch.setattr(Trainer, "after_step", after_step)
    handed: list[int] = []
    trainer = Trainer(PretrainTask(load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 3))),
                      tmp_path / "run")
    with caplog.at_level(logging.WARNING), signals_handled((signal.SIGUSR1, signal.SIGTERM),
                                                           lambda signum, _: handed.append(signum)):
        summary = trainer.fit()
    if late:
        assert (summary["step"], summary["stopped_by"], handed) == (2, "SIGUSR1", [signal.SIGTERM])
        assert "received SIGTERM while the run stops by SIGUSR1" in caplog.text
        assert "SIGTERM stopped nothing in training (the run stopped by SIGUSR1): handing it on" in caplog.text
    else:
        assert (summary["step"], summary["stopped_by"], handed) == (3, "", [signal.SIGUSR1])
        assert "will checkpoint and stop" not in caplog.text
        assert "received SIGUSR1 as the run ends" in caplog.text
        assert "SIGUSR1 stopped nothing in training (the run has finished): handing it on" in caplog.text
