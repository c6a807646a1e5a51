"""What a training task supplies to the engine (``earful.train.engine.Trainer``).

The engine owns everything two tasks share: the run folder, devices and DDP, the optimizer and loss scaler,
the step loop with gradient accumulation, logs, checkpoints and resume, signals and the non-finite stop. A
task — pre-training (``earful/pretrain/task.py``), CTC fine-tuning (``earful/finetune/task.py``) — supplies
the model, its data, and the loss of one micro-batch with the statistics worth logging::

    class MyTask(Task):
        name = "my task"
        def build_model(self, d, resume_from): ...      # self.model
        def build_data(self, budget): ...               # self.loader (and validation data)
        def micro_step(self, net, batch, generator, host_generator):  # -> (loss summed over it, statistics)
        def denominator(self, tot): ...                 # the step's global count the gradients are divided by
        def validate(self): ...                         # -> a record, or None without validation data

Losses are SUMS over a micro-batch (frames, utterances); the engine divides the gradients once by
``denominator`` of the statistics summed over micro-batches and ranks, so 1 device × 8 micro-batches gives
the update of 8 devices × 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from earful.data.budget import BatchBudget
from earful.data.dataset import AudioLoader, Batch
from earful.data.digest import LABELS
from earful.train import distributed as D
from earful.train.config import TrainingConfig


class Task:
    name: str = "training"
    model_kind: str = ""  # what its checkpoints hold (model.json's kind): a resume of another kind is refused
    # the manifests' labels it reads (earful.data.digest.LABELS): a resume after only others changed continues
    reads_labels: tuple[str, ...] = LABELS
    cfg: TrainingConfig
    model: nn.Module  # what checkpoints hold (the engine wraps it in DDP for the forward)
    loader: AudioLoader  # training batches, endless
    best_metric: str = "loss"  # validation record key kept in checkpoints/best: lower is better
    validate_at_end: bool = False  # validate after the last step even when ``valid_every`` is 0
    chance_accuracy: float | None = None  # for the health check "accuracy stuck at chance", if any

    def build_model(self, d: D.Dist, resume_from: Path | None) -> None:
        """Make ``model`` on ``d.device``, with what never trains frozen. On a resume the engine loads
        ``resume_from``'s weights into it afterwards: build only its architecture then."""
        raise NotImplementedError

    def probe_loss(self, wave: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """A scalar whose backward costs what a training micro-batch of ``wave`` (batch, samples) with
        ``lengths`` (None: no padding) costs: what ``device_seconds: auto`` measures memory with."""
        raise NotImplementedError

    def pads_batches(self) -> bool:
        """Whether training batches are padded (the model's key-mask path), or every utterance fills its batch
        (cropped to the shortest). ``device_seconds: auto`` tries the path training will take."""
        return True

    def build_data(self, budget: BatchBudget) -> None:
        """Make ``loader`` (training batches within ``budget``) and the validation data."""
        raise NotImplementedError

    def trainable(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def announce(self) -> None:
        """Log what is particular to this run (called once, on the main rank)."""

    def start_step(self, step: int) -> None:
        """Called before optimizer step ``step`` (0-based): move what depends on the step."""

    def micro_step(
        self, net: nn.Module, batch: Batch, generator: torch.Generator, host_generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The loss summed over ``batch`` (the engine back-propagates it) and named statistics to sum over the
        step (tensors stay on the device). ``net`` is the model as the engine runs it (DDP-wrapped). The micro-
        batch's draws come from ``generator`` (on the device) and ``host_generator`` (on the CPU: the draws that
        steer the computation; the same generator on a CPU), see ``earful.train.step.seed_micro_batch``."""
        raise NotImplementedError

    def denominator(self, tot: dict[str, Any]) -> float:
        """The step's global count (over micro-batches and ranks) the summed gradients are divided by."""
        raise NotImplementedError

    def before_update(self) -> None:
        """Called after the backward passes, before the update (fine-tuning drops phase-frozen gradients)."""

    def step_record(self, tot: dict[str, Any]) -> dict[str, float]:
        """Per-step values (from the reduced statistics) whose interval sums ``interval_record`` reads."""
        return {}

    def interval_record(self, sums: dict[str, float], steps: float) -> dict[str, Any]:
        """The task's fields of a ``train.jsonl`` record from the interval's sums of ``step_record`` values."""
        return {}

    def postfix(self, rec: dict[str, Any], last_valid: float) -> dict[str, str]:
        """What the progress bar shows after a log interval."""
        return {"loss": f"{rec.get('loss', float('nan')):.3f}"}

    def validate(self) -> dict[str, Any] | None:
        """Validation metrics (a collective: every rank calls it), or None without validation data."""
        return None

    def describe_validation(self, step: int, rec: dict[str, Any]) -> str:
        return f"valid step {step}: {self.best_metric} {rec[self.best_metric]:.4f}"

    def checkpoint_extras(self) -> dict[str, Any]:
        """Keyword arguments of ``RunDir.save`` besides the model (fine-tuning: its vocabulary)."""
        return {}

    def recipe_extras(self) -> dict[str, Any]:
        """The task's entries of the run's recipe besides its config's (fine-tuning: its initial weights' digest)."""
        return {}

    def trainer_info(self) -> dict[str, Any]:
        """The task's fields of ``trainer.json``."""
        return {}

    def restore(self, info: dict[str, Any]) -> None:
        """The inverse of ``trainer_info`` on resume."""

    def after_step(self, trainer: Any) -> None:
        """Called after each step's logging and validation (pre-training: hours-seen milestones)."""
