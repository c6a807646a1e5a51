"""``RUN/machines.jsonl``: where each stretch of a run's steps trained (another CPU gives other bits), a line each
time a process starts or resumes it."""

from __future__ import annotations

import platform

import torch

from earful.cli import main
from earful.train.machine import cpu_model, machines_of


def _pretrain(train, out, steps: int, *extra: str) -> int:
    return main(["pretrain", f"data.train={train}", "model_preset=tiny", "batch_seconds=4", "device_seconds=4",
                 f"max_steps={steps}", "valid_every=0", "ckpt_every=1", "data.num_workers=0", "data.min_seconds=0.5",
                 "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu", "--out", str(out), *extra])


def test_each_start_and_resume_says_where_it_trained(tmp_path, tiny_corpus) -> None:
    train = tiny_corpus[0]
    assert _pretrain(train, tmp_path / "run", 1) == 0
    assert _pretrain(train, tmp_path / "run", 2, "--resume", "--allow-changes") == 0
    first, resumed = machines_of(tmp_path / "run")
    assert (first["step"], resumed["step"]) == (0, 1)
    for entry in (first, resumed):
        assert entry["cpu"] == cpu_model() and entry["cpu"] and entry["device"] == "cpu"
        assert entry["torch"] == torch.__version__ and entry["python"] == platform.python_version()
        assert entry["world_size"] == 1 and entry["threads"] == 1 and entry["cuda"] is None
        assert entry["time"].endswith("Z") and entry["host"]
    assert machines_of(tmp_path / "elsewhere") == []  # a run of before: none


def test_a_start_that_reached_no_checkpoint_is_not_where_the_run_trained(tmp_path, tiny_corpus, monkeypatch) -> None:
    """A process stopped before its first checkpoint (a fresh start, or a resume) trained none of the run's steps:
    its line went with it, as its history segment does; a finished run resumed as it was trains nothing."""
    import earful.train.machine as machine
    from earful.train.engine import Trainer

    train, run = tiny_corpus[0], tmp_path / "run"
    step = Trainer.train_step

    def killed(self, batches):
        raise RuntimeError("killed")

    for steps, extra in ((1, ()), (2, ("--allow-changes",))):
        monkeypatch.setattr(machine, "cpu_model", lambda: "Elsewhere")
        monkeypatch.setattr(Trainer, "train_step", killed)
        assert _pretrain(train, run, steps, "--resume-or-start", *extra) == 2
        monkeypatch.setattr(machine, "cpu_model", cpu_model)
        monkeypatch.setattr(Trainer, "train_step", step)
        assert _pretrain(train, run, steps, "--resume-or-start", *extra) == 0
    monkeypatch.setattr(machine, "cpu_model", lambda: "Elsewhere")
    assert _pretrain(train, run, 2, "--resume") == 0  # finished: nothing trained
    assert [(m["step"], m["cpu"]) for m in machines_of(run)] == [(0, cpu_model()), (1, cpu_model())]
