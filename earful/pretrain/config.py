"""Pre-training configuration. YAML files (``earful/configs/pretrain-*.yaml`` or your own) override these
defaults; ``key=value`` overrides on the command line override the YAML (``optim.lr=1e-4``). The engine's
settings (batch budget, steps, intervals, optimizer) are ``earful.train.config.TrainingConfig``'s.

``model_preset`` picks the model preset the ``model:`` section starts from (one that sets every model setting, as
a run folder's config.yaml does, does not read it: the file it names may be gone, or relative to another folder);
with ``init`` (continued pre-training from a checkpoint or a transformers folder) the ``model:`` section starts
from that model's settings instead, and ``model_preset`` is recorded as ``init``."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from earful.checkpoint import INFO_FILE, CheckpointError, read_info, read_json
from earful.config import (
    ConfigError,
    from_dict,
    given_settings,
    merge,
    parse_overrides,
    preset_file,
    read_yaml,
    to_dict,
)
from earful.model.config import ModelConfig, load_model_config, preset_differs
from earful.train.config import DataConfig, TrainingConfig, config_source, hours_reached, nominal_steps
from earful.train.init import SCRATCH, init_model_config, init_path
from earful.train.recipe import written_by_a_run

log = logging.getLogger(__name__)


@dataclass
class PretrainDataConfig(DataConfig):
    # instead of data.train: the folder `earful shard` wrote (a path or fsspec URL): train streaming its shards
    shards: str | None = None
    shards_relayout: bool = False  # resuming from shards with other devices/workers/budget starts the next epoch
    crop_seconds: float | None = 15.6  # about fairseq's 250k samples (15.625 s); None = whole utterances (paper)
    min_seconds: float | None = 2.0  # fairseq leaves out utterances under 32k samples (counted)
    padding: bool = False  # fairseq crops a batch to its shortest utterance; true pads (the paper's code)

    def limits(self) -> dict[str, float | None]:
        return {**super().limits(), "crop_seconds": self.crop_seconds}


FROM_INIT = "init"  # model_preset of a run whose model is its init's (load_pretrain_config)


@dataclass
class PretrainConfig(TrainingConfig):
    # the weights to continue pre-training from (an earful pre-training checkpoint or run folder, a transformers
    # Wav2Vec2ForPreTraining folder) or scratch (random): the model's settings are then the initial model's
    init: str = SCRATCH
    model_preset: str = "base"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    ckpt_hours: list[float] = field(default_factory=list)  # extra checkpoints at these hours seen
    # what an hour in ckpt_hours counts: "padded" audio seen (measured), or "nominal" batch_seconds × steps (the
    # paper's hours, which a study uses: a milestone then lands at step nominal_steps(hours, batch_seconds))
    ckpt_hours_basis: Literal["padded", "nominal"] = "padded"
    ckpt_steps: list[int] = field(default_factory=list)  # extra checkpoints ``steps-N`` after these steps (kept)

    def validate(self) -> None:
        """The training's checks, and milestones that can be reached: a negative hour made a checkpoint named
        ``hours--1`` at the first step, and a step of 0 or below was never written, without a word."""
        super().validate()
        bad = [h for h in self.ckpt_hours if not (isinstance(h, int | float) and math.isfinite(h) and h > 0)]
        if bad:
            raise ValueError(f"ckpt_hours={self.ckpt_hours}: {bad} not hours seen > 0")
        if any(n < 1 for n in self.ckpt_steps):
            raise ValueError(f"ckpt_steps={self.ckpt_steps}: a checkpoint is taken after a step >= 1")

    def milestones_past_the_end(self) -> list[str]:
        """The milestones this run never reaches, as ``key=value``: steps past ``max_steps``; hours whose step
        (``nominal``) is past it, or (``padded``) past ``batch_seconds`` × ``max_steps``, which padded hours seen
        never exceed. A study gives every run its milestones, and a small batch's run reaches fewer of them."""
        def past(h: float) -> bool:
            if self.ckpt_hours_basis == "nominal":
                return nominal_steps(h, self.batch_seconds) > self.max_steps
            return not hours_reached(self.batch_seconds * self.max_steps / 3600, h)

        return [f"ckpt_steps={n}" for n in self.ckpt_steps if n > self.max_steps] + \
            [f"ckpt_hours={h:g}" for h in self.ckpt_hours if past(h)]


def load_pretrain_config(path: str | Path | None, overrides: list[str] | None = None, *, init: str | None = None,
                         overrides_from: str = "command-line overrides",
                         resume_from: str | Path | None = None) -> PretrainConfig:
    """Defaults ← model preset (or, with ``init``, the initial model's settings) ← YAML ← overrides
    (``overrides_from``: whose, as an error names them). ``init`` (``--init``) is set as given, over the YAML's
    and the overrides' (a path is not read as YAML). ``resume_from``: the run folder a ``--resume`` continues;
    where its ``init`` no longer resolves (moved, removed), the model settings are the run's own checkpoint's (the
    task then resumes with the initial weights the run recorded). A run folder's config.yaml (or config-N.yaml),
    which earful wrote, is read with today's names of renamed settings (``RENAMED_SETTINGS``); any other file or
    override that says an old name is refused."""
    data: dict[str, Any] = read_yaml(preset_file(path, command="pretrain")) if path is not None else {}
    try:  # a renamed setting's old name (model.init): refused, naming the new, but in a run folder's config.yaml
        data = given_settings(PretrainConfig, data, overrides, saved=path is not None and written_by_a_run(path))
    except ConfigError as e:
        raise ConfigError(f"{config_source(path, overrides, overrides_from)}: {e}") from None
    over = parse_overrides(overrides or [])
    if init is not None:
        over["init"] = init
    base = to_dict(PretrainConfig())
    start = over.get("init", data.get("init", SCRATCH))
    try:  # the initial model's errors name it (init PATH: ...), not the config's sources
        model, folder = _init_model(str(start), resume_from) if start != SCRATCH else (None, None)
    except (ValueError, OSError, CheckpointError) as e:  # each names the path; and where init was set, but --init
        given_in = None if init is not None else overrides_from if "init" in over else path
        raise ConfigError(f"{given_in}: {e}" if given_in is not None else str(e)) from None
    try:  # an unknown key or a wrong type, as a setting no run can train with: named with where it came from
        if model is not None:
            given = over.get("model_preset", data.get("model_preset"))
            if given not in (None, FROM_INIT) and preset_differs(str(given), model):
                log.warning("model_preset=%s is not used: the model is init %s's (%d layers of %d)", given, start,
                            model.num_layers, model.hidden_size)
            base["model"], over["model_preset"] = to_dict(model), FROM_INIT
        else:
            preset = over.get("model_preset", data.get("model_preset", PretrainConfig.model_preset))
            if not isinstance(preset, str):  # Path(7) raised a bare TypeError, past the command line's handler
                raise ValueError(f"model_preset={preset!r}: expected a model preset name or a YAML path")
            base["model_preset"] = preset
            if not _sets_every_field(data.get("model"), over.get("model")):  # else the preset sets nothing
                base["model"] = to_dict(load_model_config(preset))
        cfg = from_dict(PretrainConfig, merge(merge(base, data, PretrainConfig), over, PretrainConfig))
        cfg.validate()
    except (ValueError, OSError, CheckpointError) as e:
        raise ConfigError(f"{config_source(path, overrides, overrides_from)}: {e}") from None
    if folder is not None:  # what the run trains with, less what the YAML or the overrides set
        _warn_recipe_unknown(str(start), folder, cfg.model, {*(data.get("model") or {}), *(over.get("model") or {})})
    return cfg


def _sets_every_field(*sections: object) -> bool:
    """Whether the ``model:`` sections given (the YAML's, the overrides') set every model setting between them, as
    a run folder's config.yaml does: the model preset then sets none, and is not read (a relative or since-deleted
    ``model_preset`` file had made the run's own config.yaml unloadable)."""
    given = {k for section in sections if isinstance(section, dict) for k in section}
    return given >= {f.name for f in fields(ModelConfig)}


def no_pretraining_model(init: str, kind: str) -> str:
    """Why ``init``, a model of class ``kind`` (fine-tuned with CTC), cannot be continued by pre-training."""
    return (f"init={init}: a {kind} (fine-tuned with CTC): its quantizer and projections, which pre-training trains, "
            "are gone; continue from a pre-training checkpoint or a transformers Wav2Vec2ForPreTraining folder")


def _is_ctc(path: Path) -> bool:
    """Whether the earful checkpoint or transformers folder ``path`` is a CTC model (its settings alone read)."""
    if (path / INFO_FILE).exists():
        return read_info(path).get("kind") == "ctc"
    hf = read_json(path / "config.json")
    return isinstance(hf, dict) and "Wav2Vec2ForCTC" in (hf.get("architectures") or [])


def _init_model(init: str, resume_from: str | Path | None) -> tuple[ModelConfig, Path | None]:
    """The model settings of ``init`` and the folder it resolved to; resuming a run whose ``init`` no longer
    resolves, its own checkpoint's settings (and None)."""
    try:
        path = init_path(init, "init")
        if _is_ctc(path):  # refused here (--print-config too), as the run would refuse it
            raise ValueError(no_pretraining_model(init, "Wav2Vec2ForCTC"))
        return init_model_config(path), path
    except (OSError, CheckpointError):
        from earful.checkpoint import model_config
        from earful.train.state import resolve_checkpoint

        try:
            run = resolve_checkpoint(resume_from) if resume_from is not None and Path(resume_from).is_dir() else None
        except CheckpointError:
            run = None
        if run is None:
            raise
        return model_config(run), None


# the pre-training settings of BASE's recipe that a transformers config.json has no place for (LARGE's differ)
_RECIPE_FIELDS = ("feature_grad_mult", "temperature_start", "temperature_end", "feature_penalty_weight")
# the masking of BASE's and LARGE's pre-training recipes (ModelConfig's defaults), which config.json does hold, as
# transformers' SpecAugment for fine-tuning: its converter writes transformers' defaults there (mask_time_prob 0.05)
_SHARED_FIELDS = ("mask_prob", "mask_length", "mask_channel_prob")


def _warn_recipe_unknown(init: str, folder: Path, model: ModelConfig, given: set[str]) -> None:
    """Where ``init`` (resolved to ``folder``) is a transformers folder without earful's training settings
    (export-hf writes them), say which of :data:`_RECIPE_FIELDS` the run takes from earful's defaults, and which of
    :data:`_SHARED_FIELDS` it takes from config.json unlike the pre-training recipe: those not ``given`` as
    ``model.*``."""
    from earful.interop.hf import training_settings_given

    unset = [name for name in _RECIPE_FIELDS if name not in given]
    recipe = ModelConfig()
    differ = [name for name in _SHARED_FIELDS if name not in given and getattr(model, name) != getattr(recipe, name)]
    if not (unset or differ) or training_settings_given(folder) is not False:
        return
    said = [f"the pre-training settings transformers has no place for are earful's defaults, BASE's recipe "
            f"({', '.join(f'model.{name}={getattr(model, name):g}' for name in unset)})"] if unset else []
    if differ:
        said.append("config.json's settings (transformers' for fine-tuning) are not fairseq's pre-training recipe ("
                    + ", ".join(f"model.{name}={getattr(model, name):g}, the recipe's {getattr(recipe, name):g}"
                                for name in differ) + ")")
    log.warning("init %s: a transformers folder without earful's training settings (config.json has no "
                "earful_training, which earful export-hf writes): %s; set model.* to continue it with others",
                init, "; ".join(said))
