"""Pre-training configuration. YAML files (``earful/configs/pretrain-*.yaml`` or your own) override these
defaults; ``key=value`` overrides on the command line override the YAML (``optim.lr=1e-4``). The engine's
settings (batch budget, steps, intervals, optimizer) are ``earful.train.config.TrainingConfig``'s.

``model_preset`` picks the model preset the ``model:`` section starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from earful.config import ConfigError, from_dict, merge, parse_overrides, read_yaml, to_dict
from earful.model.config import ModelConfig, load_model_config
from earful.train.config import DataConfig, TrainingConfig, config_source


@dataclass
class PretrainDataConfig(DataConfig):
    valid: str | None = None  # manifest of the held-out audio (validation loss, accuracy, perplexity)
    # instead of data.train: the folder `earful shard` wrote (a path or fsspec URL): train streaming its shards
    shards: str | None = None
    shards_relayout: bool = False  # resuming from shards with other devices/workers/budget starts the next epoch
    crop_seconds: float | None = 15.6  # about fairseq's 250k samples (15.625 s); None = whole utterances (paper)
    min_seconds: float | None = 2.0  # fairseq leaves out utterances under 32k samples (counted)
    padding: bool = False  # fairseq crops a batch to its shortest utterance; true pads (the paper's code)

    def limits(self) -> dict[str, float | None]:
        return {**super().limits(), "crop_seconds": self.crop_seconds}


@dataclass
class PretrainConfig(TrainingConfig):
    model_preset: str = "base"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    ckpt_hours: list[float] = field(default_factory=list)  # extra checkpoints at these hours seen
    # what an hour in ckpt_hours counts: "padded" audio seen (measured), or "nominal" batch_seconds × steps (the
    # paper's hours, which a study uses: a milestone then lands at step nominal_steps(hours, batch_seconds))
    ckpt_hours_basis: Literal["padded", "nominal"] = "padded"
    ckpt_steps: list[int] = field(default_factory=list)  # extra checkpoints ``steps-N`` after these steps (kept)


def load_pretrain_config(path: str | Path | None, overrides: list[str] | None = None, *,
                         overrides_from: str = "command-line overrides") -> PretrainConfig:
    """Defaults ← model preset ← YAML ← overrides (``overrides_from``: whose, as an error names them)."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    over = parse_overrides(overrides or [])
    preset = over.get("model_preset", data.get("model_preset", PretrainConfig.model_preset))
    base = to_dict(PretrainConfig())
    base["model_preset"] = preset
    base["model"] = to_dict(load_model_config(preset))
    try:  # an unknown key or a wrong type, as a setting no run can train with: named with where it came from
        cfg = from_dict(PretrainConfig, merge(merge(base, data), over))
        cfg.validate()
    except ValueError as e:
        raise ConfigError(f"{config_source(path, overrides, overrides_from)}: {e}") from None
    return cfg
