"""What the training engine reads: the settings every task shares (batch budget, steps, precision, intervals,
optimizer, health thresholds). A task's config (``earful/pretrain/config.py``, ``earful/finetune/config.py``)
extends ``TrainingConfig`` with its model and data; YAML files and ``key=value`` overrides set both alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from earful.config import at_least
from earful.data.budget import BatchBudget, check_seconds, to_samples


def nominal_steps(hours: float, batch_seconds: float) -> int:
    """The step at which batches of ``batch_seconds`` reach ``hours`` of audio (batch × steps, the paper's
    hours seen), rounded half up: 1.5 h is 338 steps of 16 s and 113 of 48 s alike."""
    return math.floor(hours * 3600 / batch_seconds + 0.5)


def hours_reached(seen: float, hours: float) -> bool:
    """Whether ``seen`` hours of audio reach ``hours``, within a relative 1e-9: a running sum of the steps' hours
    rounds in its last bits (63 full steps of 4 s sum to 0.06999999999999997 h, not 0.07)."""
    return hours <= seen * (1 + 1e-9)


def nominal_hours(batch_seconds: float | None, step: int | None) -> float:
    """Batch × steps, in hours, the inverse of ``nominal_steps`` (0 for a baseline without a batch)."""
    return (batch_seconds or 0.0) * (step or 0) / 3600


def scale_lr(lr: float, batch_seconds: float, reference_seconds: float, rule: str) -> float:
    """The paper's rules: ``linear`` lr·B/B_ref, ``sqrt`` lr·sqrt(B/B_ref), ``none`` lr."""
    ratio = batch_seconds / reference_seconds
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


@dataclass
class OptimConfig:
    lr: float = 5e-4  # peak learning rate at the reference batch size
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # rule relative to reference_batch_seconds
    reference_batch_seconds: float = 6000.0  # the paper: 5e-4 at 100 min
    schedule: Literal["polynomial", "tristage", "cyclic", "constant"] = "polynomial"
    warmup_fraction: float = 0.08  # polynomial: warm-up share of max_steps (fairseq: 32k of 400k)
    end_lr: float = 0.0  # polynomial: lr at max_steps
    tristage_ratios: list[float] = field(default_factory=lambda: [0.1, 0.4, 0.5])  # warm-up, hold, decay
    tristage_init_scale: float = 0.01
    tristage_final_scale: float = 0.05
    cyclic_step_size: int = 25_000  # cyclic: steps from lr/100 up to lr (and down again)
    cyclic_base_fraction: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 0.0  # 0 = no clipping (the paper); the norm is logged either way

    def validate(self) -> None:
        """Refuse settings the schedule or the optimizer would fail on only once training starts."""
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"optim.lr={self.lr}: expected a finite number > 0")
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"optim.warmup_fraction={self.warmup_fraction}: expected a fraction in [0, 1]")
        r = self.tristage_ratios
        if len(r) != 3 or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6:
            raise ValueError(f"optim.tristage_ratios={r}: expected three fractions summing to 1")
        at_least("optim.cyclic_step_size", self.cyclic_step_size, 1)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas={self.betas}: expected two numbers in [0, 1)")
        if not (self.clip_norm >= 0 and math.isfinite(self.clip_norm)):  # NaN turned clipping off
            raise ValueError(f"optim.clip_norm={self.clip_norm}: expected a finite number >= 0 (0: no clipping)")
        if not (self.reference_batch_seconds > 0 and math.isfinite(self.reference_batch_seconds)):
            raise ValueError(f"optim.reference_batch_seconds={self.reference_batch_seconds}: expected a finite "
                             "number of seconds > 0")
        if not (self.end_lr >= 0 and math.isfinite(self.end_lr)):  # a negative or NaN lr at the schedule's end
            raise ValueError(f"optim.end_lr={self.end_lr}: expected a finite learning rate >= 0")
        for name in ("tristage_init_scale", "tristage_final_scale", "cyclic_base_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"optim.{name}={getattr(self, name)}: expected a fraction of optim.lr in [0, 1]")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"optim.eps={self.eps}: expected a finite number > 0")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"optim.weight_decay={self.weight_decay}: expected a finite number >= 0")


@dataclass
class HealthConfig:
    """Thresholds of the health warnings (see earful/train/monitor.py)."""

    after_steps: int = 200  # no warning of any kind before this step (early collapse is normal, paper §6.4)
    collapse_perplexity: float = 2.0  # hard perplexity per group at or under this: codebook collapse
    stuck_accuracy_margin: float = 0.02  # accuracy within this of chance (1/(K+1)) is "stuck at chance"
    saturated_accuracy: float = 0.995  # accuracy at or above this: fake accuracy (collapsed codebook)
    grad_norm_factor: float = 10.0  # grad norm above factor × running median of the last 200 logged: exploding

    def validate(self) -> None:
        """Refuse a threshold no check can use, naming its key: NaN turned a warning off without a word (every
        comparison with it is false), a negative margin never warned, a negative factor at every log."""
        at_least("health.after_steps", self.after_steps, 0)
        for key, ok, expected in (
                ("collapse_perplexity", lambda v: v >= 0, "hard perplexity >= 0 (0: no collapse warning)"),
                ("stuck_accuracy_margin", lambda v: 0 <= v <= 1, "accuracy margin in [0, 1]"),
                ("saturated_accuracy", lambda v: 0 < v <= 1, "accuracy in (0, 1]"),
                ("grad_norm_factor", lambda v: v > 0, "factor > 0 of the running median")):
            v = getattr(self, key)
            if not (math.isfinite(v) and ok(v)):
                raise ValueError(f"health.{key}={v}: expected a finite {expected}")


@dataclass
class DataConfig:
    """The data settings every task has; a task's data config adds its manifests' roles."""

    train: str = ""  # manifest of the training audio
    # manifest of the held-out set checked every ``valid_every`` steps (the pre-training's validation loss,
    # accuracy and perplexity; the fine-tuning's CTC loss, WER and CER: labelled); it picks checkpoints/best
    valid: str | None = None
    min_seconds: float | None = None  # shorter utterances are left out (counted and logged)
    max_seconds: float | None = None  # longer utterances (after cropping) are left out (counted and logged)
    num_workers: int = 2
    skip_bad: bool = False  # count and log bad input, not stop: unreadable files, empty rows, rows too long to batch
    bucket_size: int = 1000
    shape_seconds: float | None = None  # pad batches to multiples of this: a few fixed shapes (earful/data/budget.py)

    def limits(self) -> dict[str, float | None]:
        """The utterance limits and the shape grid of the batch budget."""
        return {"min_seconds": self.min_seconds, "max_seconds": self.max_seconds, "shape_seconds": self.shape_seconds}


@dataclass
class TrackingConfig:
    """Experiment trackers beside TensorBoard (``earful/train/tracking.py``); each is an optional package
    (``pip install 'earful[tracking]'``). Records go to the trackers at the log and validation intervals."""

    backends: list[Literal["wandb", "mlflow", "trackio"]] = field(default_factory=list)
    project: str = "earful"  # the W&B / trackio project; MLflow's experiment when no group is set
    group: str | None = None  # runs compared together: W&B and trackio group, MLflow experiment (a study: its name)
    name: str | None = None  # the run's name (default: its folder's name)
    dir: str | None = None  # local stores: DIR/wandb, DIR/mlruns, DIR/trackio (default: RUN/tracking)
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: `wandb sync DIR/wandb/offline-run-*` later
    mlflow_uri: str | None = None  # another MLflow store (http://…; sqlite:///… needs the full mlflow package)

    def validate(self) -> None:
        if len(set(self.backends)) < len(self.backends):
            raise ValueError(f"tracking.backends={self.backends}: a backend is named twice")
        if not self.project:
            raise ValueError("tracking.project: empty (the trackers file runs under it)")


@dataclass
class TrainingConfig:
    """The engine's settings (defaults: pre-training's; a task's config may change them)."""

    batch_seconds: float = 5600.0  # global padded audio per optimizer step (fairseq BASE: 64 × 87.5 s)
    # the most padded audio one micro-batch holds on one device; auto: the largest that fits the GPU, by trial
    device_seconds: float | Literal["auto"] = 87.5
    max_steps: int = 400_000
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 1
    log_every: int = 100
    valid_every: int = 5000  # 0 = only at the end (fine-tuning) or never (pre-training)
    valid_seconds: float | None = None  # padded audio per validation batch on one device (default: device_seconds)
    ckpt_every: int = 1000
    keep_last: int = 2  # periodic step checkpoints kept, 0: all (milestones, best and the latest stay)
    keep_best: bool = True  # also keep checkpoints/best: the task's best validation metric (loss, validation WER)
    max_nan_steps: int = 10  # consecutive non-finite steps before the run stops
    tensorboard: bool = True  # scalars in RUN/tb (tensorboard is a dependency of earful)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)
    # torch.compile the CNN and the transformer layers (GPUs; on these CPUs it did not pay: benchmarks/README.md).
    # inductor draws dropout from its own random stream (reproducible for a seed, resumes exactly, but other draws
    # than eager's, so turning it on in a resume changes the run's draws); aot_eager and eager keep eager's
    compile: bool = False
    compile_backend: str = "inductor"
    # torch.compile's mode: "reduce-overhead" (and "max-autotune") replay CUDA graphs, one set per batch shape:
    # they pay only where shapes repeat (data.shape_seconds), and need one micro-batch a step. Not yet measured on a
    # GPU (benchmarks/README.md)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    optim: OptimConfig = field(default_factory=OptimConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def budget(self, world_size: int) -> BatchBudget:
        """The training batch budget on ``world_size`` devices (``device_seconds`` resolved: not ``auto``)."""
        if self.device_seconds == "auto":
            raise ValueError("device_seconds=auto is resolved by the trainer on its device")
        return BatchBudget(self.batch_seconds, self.device_seconds, world_size, **self.data.limits())

    def valid_device_seconds(self) -> float:
        """Padded audio per validation batch on one device."""
        return self.valid_seconds or float(self.device_seconds)

    def effective_lr(self) -> float:
        """``optim.lr`` rescaled by ``optim.lr_scaling`` from ``optim.reference_batch_seconds``."""
        return scale_lr(self.optim.lr, self.batch_seconds, self.optim.reference_batch_seconds, self.optim.lr_scaling)

    def _check_cropped_grid(self) -> None:
        """Batches cropped to their shortest utterance (pre-training's ``data.padding=false``) are cut down to the
        shape grid: a grid that does not divide ``data.min_seconds`` cut them below it (grid 0.7 s, shortest
        2.0 s: 1.4 s)."""
        grid, least = self.data.shape_seconds, self.data.min_seconds
        if getattr(self.data, "padding", True) or not grid or not least:
            return
        if to_samples(least) % to_samples(grid):
            raise ValueError(f"data.shape_seconds={grid:g} with cropped batches (data.padding=false) cuts a batch of "
                             f"the shortest utterances (data.min_seconds={least:g}) down to "
                             f"{to_samples(least) // to_samples(grid) * grid:g} s: choose a grid that divides "
                             "data.min_seconds, or data.padding=true")

    def validate(self) -> None:
        """Refuse settings that cannot train as asked, naming the key and what it accepts."""
        for key, value in self.data.limits().items():
            check_seconds(f"data.{key}", value, optional=True, allow_zero=key == "min_seconds")
        check_seconds("valid_seconds", self.valid_seconds, optional=True)
        if self.device_seconds == "auto":  # resolved on the device (earful/train/memory.py)
            check_seconds("batch_seconds", self.batch_seconds, optional=False)
        else:
            self.budget(1)  # finite, positive batch and device seconds; a bounded accumulation
        for key in ("max_steps", "log_every", "ckpt_every", "max_nan_steps"):
            at_least(key, getattr(self, key), 1)
        for key in ("valid_every", "keep_last", "threads", "seed"):
            at_least(key, getattr(self, key), 0)
        at_least("data.bucket_size", self.data.bucket_size, 1)
        self._check_cropped_grid()
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"compile_mode={self.compile_mode} needs compile=true")
        if self.compile_mode != "default" and self.compile_backend != "inductor":
            raise ValueError(f"compile_mode={self.compile_mode} is inductor's: compile_backend="
                             f"{self.compile_backend} would ignore it (compile_backend=cudagraphs records CUDA graphs)")
        at_least("data.num_workers", self.data.num_workers, 0)
        self.optim.validate()
        self.health.validate()
        self.tracking.validate()


def config_source(path: object, overrides: list[str] | None, overrides_from: str = "command-line overrides") -> str:
    """How a config error names where the settings came from (``overrides_from``: whose overrides they are)."""
    if path is not None and overrides:
        return f"{path} with {overrides_from}"
    return str(path) if path is not None else (overrides_from if overrides else "the defaults")

