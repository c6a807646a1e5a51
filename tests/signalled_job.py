"""A test seam: a study's stage as a submitit job of several tasks, each one rank of a tiny pre-training, signalled
at known points of the run from inside the task's own process (as Slurm signals each task). Registered by value
in submitit's (cloud)pickle, as ``tests/pausing.py`` is: the job's process need not import it."""

import os
import signal
from pathlib import Path
from typing import Any


def signalled_pretraining(out: Path, train: Path, steps: int, signals: dict[int, list[tuple[str, int, str]]]
                          ) -> dict[str, Any]:
    """Pre-train ``steps`` steps of 4 s on ``train`` into ``out``/run as a study's stage does (``StudyStopped``
    for a stopped run); its summary's step. ``signals``, by rank: (where: ``"start"`` of the step, before its
    statistics are all-reduced, or ``"after"`` it, once a stop in it is agreed; the step, from 1; the signal's
    name), each sent by the rank to its own process in the job's first start only. Each start of a rank appends
    the rank to ``out``/starts."""
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask, run_pretraining
    from earful.study.pool import StudyStopped
    from earful.train.engine import Trainer
    from earful.train.state import RunDir

    rank = int(os.environ.get("RANK", "0"))
    with open(out / "starts", "a") as f:
        f.write(f"{rank}\n")
    first = (out / "starts").read_text().split().count(str(rank)) == 1
    mine = signals.get(rank, []) if first else []

    def send(where: str, step: int) -> None:
        for at, n, name in mine:
            if (at, n) == (where, step):
                os.kill(os.getpid(), signal.Signals[name])

    real_start, real_after = PretrainTask.start_step, Trainer.after_step

    def start_step(self, step: int) -> None:
        real_start(self, step)
        send("start", step + 1)

    def after_step(self) -> None:
        real_after(self)
        send("after", self.step)

    PretrainTask.start_step, Trainer.after_step = start_step, after_step
    cfg = load_pretrain_config(None, [
        "model_preset=tiny", f"data.train={train}", "data.valid=null", "batch_seconds=8", "device_seconds=4",
        f"max_steps={steps}", "log_every=1", "valid_every=0", "ckpt_every=1000", "data.num_workers=0",
        "data.min_seconds=0.5", "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu"])
    rdir = out / "run"
    summary = run_pretraining(cfg, rdir, resume=RunDir(rdir).started())
    if summary.get("stopped_by"):
        raise StudyStopped(f"pre-training stopped by {summary['stopped_by']}", summary["stopped_by"])
    return {"step": summary["step"]}
