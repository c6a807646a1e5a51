"""Learning-rate schedules (``earful/train/schedule.py``): known values at the steps where each changes phase, and
the lr a run logs is the schedule's."""

import json
import math

import pytest

from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train.config import OptimConfig
from earful.train.engine import Trainer
from earful.train.schedule import lr_at


def lrs(steps: list[int], max_steps: int = 100, **optim) -> list[float]:
    return [lr_at(s, 1.0, max_steps, OptimConfig(**optim)) for s in steps]


def test_polynomial_warms_up_linearly_then_decays_linearly_to_end_lr() -> None:
    """10 warm-up steps of 100: step k uses (k+1)/10 of the peak; then a straight line down to end_lr at 100."""
    assert lrs([0, 4, 9, 10, 55, 100, 120], warmup_fraction=0.1) == pytest.approx([0.1, 0.5, 1, 1, 0.5, 0, 0])
    assert lrs([55, 100], warmup_fraction=0.1, end_lr=0.1) == pytest.approx([0.55, 0.1])
    assert lrs([0, 1, 2], warmup_fraction=0.0) == pytest.approx([1, 1, 1 - 1 / 99])  # no warm-up: one step of it


def test_tristage_warms_up_holds_and_decays_exponentially() -> None:
    """Ratios 0.1 / 0.4 / 0.5 of 100 steps: 0.01 → 1 over steps 0-10, 1 over 10-50, then exp down to 0.05."""
    got = lrs([0, 5, 10, 49, 50, 75, 100, 150], schedule="tristage")
    assert got == pytest.approx([0.01, 0.505, 1, 1, 1, math.sqrt(0.05), 0.05, 0.05])
    assert lrs([75], schedule="tristage", tristage_final_scale=0.0) == pytest.approx([0.5])  # linear to 0


def test_cyclic_is_triangular_between_a_hundredth_of_the_peak_and_the_peak() -> None:
    """Step size 10: minima at 0, 20, 40, maxima at 10, 30, half-way between at 5, 25."""
    got = lrs([0, 5, 10, 15, 20, 25, 30, 40], schedule="cyclic", cyclic_step_size=10)
    assert got == pytest.approx([0.01, 0.505, 1, 0.505, 0.01, 0.505, 1, 0.01])
    assert lrs([0, 37], schedule="constant") == [1.0, 1.0]


def test_a_run_logs_and_uses_the_schedules_lr(tmp_path, tiny_corpus) -> None:
    """Polynomial over 5 steps with 2 of warm-up, peak 5e-4: the record of step s holds the lr of update s-1."""
    cfg = load_pretrain_config(None, [
        "model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=4", "max_steps=5",
        "log_every=1", "valid_every=0", "data.num_workers=0", "data.min_seconds=0.5", "data.crop_seconds=2.0",
        "tensorboard=false", "threads=1", "device=cpu", "optim.lr=5e-4", "optim.warmup_fraction=0.4"])
    Trainer(PretrainTask(cfg), tmp_path / "run").fit()
    logged = [json.loads(line)["lr"] for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([2.5e-4, 5e-4, 5e-4, 5e-4 * 2 / 3, 5e-4 / 3])
