"""Pre-training configuration. YAML files (``earful/configs/pretrain-*.yaml`` or your own) override these
defaults; ``key=value`` overrides on the command line override the YAML (``optim.lr=1e-4``).

``model_preset`` picks the model preset the ``model:`` section starts from."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from earful.config import from_dict, merge, parse_overrides, read_yaml, to_dict
from earful.model.config import ModelConfig, load_model_config


def nominal_steps(hours: float, batch_seconds: float) -> int:
    """The step at which batches of ``batch_seconds`` reach ``hours`` of audio (batch × steps, the paper's
    hours seen), rounded half up: 1.5 h is 338 steps of 16 s and 113 of 48 s alike."""
    return math.floor(hours * 3600 / batch_seconds + 0.5)


def accumulation_steps(batch_seconds: float, device_seconds: float, world_size: int) -> int:
    """Micro-batches per optimizer step on each device: ceil(batch / (device × world))."""
    return max(1, math.ceil(batch_seconds / (device_seconds * world_size) - 1e-9))


def scale_lr(lr: float, batch_seconds: float, reference_seconds: float, rule: str) -> float:
    """The paper's rules: ``linear`` lr·B/B_ref, ``sqrt`` lr·sqrt(B/B_ref), ``none`` lr."""
    ratio = batch_seconds / reference_seconds
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


@dataclass
class DataConfig:
    train: str = ""  # manifest of the pre-training audio
    valid: str | None = None  # manifest of the held-out audio (validation loss, accuracy, perplexity)
    crop_seconds: float | None = 15.6  # fairseq crops to 250k samples; None = whole utterances (paper)
    min_seconds: float | None = 2.0  # fairseq leaves out utterances under 32k samples (counted)
    padding: bool = False  # fairseq crops a batch to its shortest utterance; true pads (the paper's code)
    num_workers: int = 2
    skip_bad: bool = False  # count and log unreadable files instead of stopping
    bucket_size: int = 1000


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


@dataclass
class HealthConfig:
    """Thresholds of the health warnings (see docs/monitoring.md)."""

    after_steps: int = 200  # no warnings before this step (early collapse is normal, paper §6.4)
    collapse_perplexity: float = 2.0  # hard perplexity per group at or under this: codebook collapse
    stuck_accuracy_margin: float = 0.02  # accuracy within this of chance (1/(K+1)) is "stuck at chance"
    saturated_accuracy: float = 0.995  # accuracy above this with a tiny codebook use: fake accuracy
    grad_norm_factor: float = 10.0  # grad norm above factor × running median: exploding


class SecondsBatching:
    """For a config with ``batch_seconds``, ``device_seconds`` and ``optim`` (pre-training and fine-tuning)."""

    batch_seconds: float
    device_seconds: float
    optim: OptimConfig

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each device."""
        return accumulation_steps(self.batch_seconds, self.device_seconds, world_size)

    def micro_seconds(self, world_size: int) -> float:
        """The padded audio training micro-batches are packed to: ``batch_seconds`` shared evenly over the
        devices and accumulation steps, at most ``device_seconds``. (Packing every micro-batch up to
        ``device_seconds`` would overshoot the batch when it does not divide evenly: 6 s on 4 s devices
        would take 8 s a step.) An utterance longer than this, within ``device_seconds``, is still trained
        on, in a micro-batch of its own."""
        return self.batch_seconds / (world_size * self.accumulation(world_size))

    def effective_lr(self) -> float:
        """``optim.lr`` rescaled by ``optim.lr_scaling`` from ``optim.reference_batch_seconds``."""
        return scale_lr(self.optim.lr, self.batch_seconds, self.optim.reference_batch_seconds, self.optim.lr_scaling)


@dataclass
class PretrainConfig(SecondsBatching):
    model_preset: str = "base"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    batch_seconds: float = 5600.0  # global padded audio per optimizer step (fairseq BASE: 64 × 87.5 s)
    device_seconds: float = 87.5  # padded audio per micro-batch on one device
    max_steps: int = 400_000
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    seed: int = 1
    log_every: int = 100
    valid_every: int = 5000
    valid_seconds: float | None = None  # micro-batch size for validation (default: device_seconds)
    ckpt_every: int = 1000
    keep_last: int = 2
    ckpt_hours: list[float] = field(default_factory=list)  # extra checkpoints at these hours seen
    # what an hour in ckpt_hours counts: "padded" audio seen (measured), or "nominal" batch_seconds × steps (the
    # paper's hours, which a study uses: a milestone then lands at step nominal_steps(hours, batch_seconds))
    ckpt_hours_basis: str = "padded"
    max_nan_steps: int = 10  # consecutive non-finite steps before the run stops
    tensorboard: bool = True
    threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)



def load_pretrain_config(path: str | Path | None, overrides: list[str] | None = None) -> PretrainConfig:
    """Defaults ← model preset ← YAML ← overrides."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    over = parse_overrides(overrides or [])
    preset = over.get("model_preset", data.get("model_preset", PretrainConfig.model_preset))
    base = to_dict(PretrainConfig())
    base["model_preset"] = preset
    base["model"] = to_dict(load_model_config(preset))
    cfg = from_dict(PretrainConfig, merge(merge(base, data), over))
    if cfg.ckpt_hours_basis not in ("padded", "nominal"):
        raise ValueError(f"ckpt_hours_basis: {cfg.ckpt_hours_basis!r}, expected padded or nominal")
    return cfg
