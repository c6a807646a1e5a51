"""The batch budget: how much audio an optimizer step and a micro-batch hold, in seconds — one small object
that the sampler, the loaders, the trainers, ``evaluate`` and ``gradvar`` all take.

The vocabulary, used the same way in configs, code, logs and docs:

* ``batch_seconds`` — the global padded audio of one optimizer step, over every device and micro-batch;
* ``device_seconds`` — the most padded audio one micro-batch may hold on one device (the memory limit);
* ``accumulation`` — micro-batches per step on each device: ``ceil(batch / (device × world_size))``;
* ``micro_seconds`` — what micro-batches are packed to: ``batch / (world_size × accumulation)`` ≤ device
  (packing to ``device_seconds`` would overshoot the step when it does not divide evenly: 6 s on 4 s
  devices would take 8 s a step; in samples it is floored, so that a step never holds more than
  ``batch_seconds``). An utterance longer than this but within ``device_seconds`` still trains, in a
  micro-batch of its own;
* ``crop_seconds`` — longer utterances are cut to this at a random offset (pre-training); None: whole;
* ``min_seconds`` / ``max_seconds`` — shorter / longer utterances (after cropping) are left out, counted;
* ``shape_seconds`` — a batch's padded length is rounded up to a multiple of this (cropped batches: down; never
  past the micro-batch's share where the batch fits it, so a step holds at most its batch), and the sampler puts
  as many utterances in each batch as that length allows, so batches come in a small, fixed set of shapes — what
  ``cudnn.benchmark``, ``torch.compile`` and CUDA graphs need to pay once per shape; the padding it adds is
  counted as padding. None: batches as long as their longest utterance.

Pre-training's validation has no step: ``BatchBudget.per_device(device_seconds)``; ``evaluate`` and fine-tuning's
validation score every utterance whole (``earful.eval.decode.scoring_budget``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 16000  # Hz: every model input, everywhere in earful
MAX_ACCUMULATION = 100_000  # micro-batches a step: beyond this a setting is a typo, not a recipe


def to_samples(seconds: float) -> int:
    """Seconds to samples at ``SAMPLE_RATE``, by rounding (``int`` would make 2.01 s 32159 samples and refuse a
    32160-sample file)."""
    return round(seconds * SAMPLE_RATE)


def min_seconds_keeping(samples: int) -> float:
    """The shortest ``data.min_seconds``, to the millisecond, that keeps an utterance of ``samples`` samples (and
    leaves out shorter ones): what a warning names as the way to leave shorter utterances out."""
    return math.ceil(1000 * samples / SAMPLE_RATE) / 1000


def check_seconds(name: str, value: float | None, *, optional: bool, allow_zero: bool = False) -> None:
    if value is None:
        if optional:
            return
        raise ValueError(f"{name}: required, a number of seconds > 0")
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r}: expected a finite number of seconds {what}"
                         + (" (or null for none)" if optional else ""))


@dataclass(frozen=True)
class BatchBudget:
    batch_seconds: float
    device_seconds: float
    world_size: int = 1
    crop_seconds: float | None = None
    min_seconds: float | None = None
    max_seconds: float | None = None
    shape_seconds: float | None = None

    def __post_init__(self) -> None:
        check_seconds("batch_seconds", self.batch_seconds, optional=False)
        check_seconds("device_seconds", self.device_seconds, optional=False)
        check_seconds("crop_seconds", self.crop_seconds, optional=True)
        check_seconds("min_seconds", self.min_seconds, optional=True, allow_zero=True)
        check_seconds("max_seconds", self.max_seconds, optional=True)
        check_seconds("shape_seconds", self.shape_seconds, optional=True)
        if self.world_size < 1:
            raise ValueError(f"world_size={self.world_size}: expected >= 1")
        raw = self.batch_seconds / (self.device_seconds * self.world_size)
        if raw > MAX_ACCUMULATION:
            raise ValueError(
                f"batch_seconds={self.batch_seconds:g} on {self.world_size} device(s) of device_seconds="
                f"{self.device_seconds:g} needs {raw:.3g} micro-batches a step (at most {MAX_ACCUMULATION:,}): "
                "lower batch_seconds or raise device_seconds")

    @classmethod
    def per_device(cls, device_seconds: float, world_size: int = 1, **limits: float | None) -> BatchBudget:
        """A budget without accumulation: each device's batch is one micro-batch of ``device_seconds``."""
        return cls(device_seconds * world_size, device_seconds, world_size, **limits)

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step on each device."""
        return max(1, math.ceil(self.batch_seconds / (self.device_seconds * self.world_size) - 1e-9))

    @property
    def micro_seconds(self) -> float:
        """The padded audio micro-batches are packed to (see the module docstring)."""
        return self.batch_seconds / (self.world_size * self.accumulation)

    def samples(self) -> dict[str, Any]:
        """The budget in samples, as the sampler cuts epochs with it (its resume layout)."""
        return {
            "world_size": self.world_size,
            "device_samples": to_samples(self.device_seconds),
            # floored: rounded to the nearest sample, world_size × accumulation micro-batches overshot the step
            # (5600 s on 3 devices of 87.5 s by 16 samples); the same number wherever the division is exact
            "micro_samples": min(to_samples(self.batch_seconds) // (self.world_size * self.accumulation),
                                 to_samples(self.device_seconds)),
            "crop_samples": to_samples(self.crop_seconds) if self.crop_seconds else None,
            "min_samples": to_samples(self.min_seconds) if self.min_seconds else 0,
            "max_samples": to_samples(self.max_seconds) if self.max_seconds else None,
            "shape_samples": to_samples(self.shape_seconds) if self.shape_seconds else None,
        }

    def describe(self) -> str:
        """One line for the run's log."""
        return (f"batch {self.batch_seconds:g} s = {self.world_size} device(s) × {self.micro_seconds:.4g} s × "
                f"{self.accumulation} accumulation (padded audio, at most, but an utterance longer than a "
                f"micro-batch's share trains alone; device_seconds {self.device_seconds:g})")


def shape_length(longest: np.ndarray | int, grid: int | None, cap: int | None,
                 within: int | None = None) -> np.ndarray | int:
    """The padded length of batches whose longest utterance is ``longest`` samples: rounded up to a multiple of
    ``grid`` (never beyond ``cap``, the longest length admitted, unless the utterance itself is longer), and a batch
    whose longest fits ``within`` (a micro-batch's share) never beyond it: rounded up past it, a 24.5 s utterance
    in a 25 s micro-batch on a 2 s grid trained 26 s, a step over its batch that nothing said."""
    if not grid:
        return longest
    rounded = -(-np.asarray(longest) // grid) * grid  # ceil to the grid
    if cap:
        rounded = np.minimum(rounded, np.maximum(np.asarray(longest), cap))
    if within:
        rounded = np.where(np.asarray(longest) <= within, np.minimum(rounded, within), rounded)
    return rounded if isinstance(longest, np.ndarray) else int(rounded)
