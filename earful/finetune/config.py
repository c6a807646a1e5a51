"""Fine-tuning configuration: defaults ← YAML (a path or a preset such as ``finetune-fairseq-10m``) ←
``key=value`` overrides (``optim.lr=3e-5``, ``model.mask_prob=0.65``).

The defaults are the paper's recipe (docs/paper.md §5, the CTC head of §2.7; nanow2v2's ``config/ft_asr.yaml``):

* Adam (AdamW with weight decay 0 is the same update), betas (0.9, 0.98), eps 1e-8, peak lr 5e-5;
* tri-stage schedule: 10 % linear warm-up from lr/100, 40 % hold, 50 % exponential decay to lr/20;
* 180 s of padded audio per step (1 GPU, no accumulation), utterances up to 30 s;
* CNN, feature projection and its LayerNorm always frozen; transformer (with positional conv and mask
  vector) frozen for the first 5,000 steps, so only the CTC head trains then;
* time masking p = 0.05, span 10; no channel masking; dropout 0.1; LayerDrop 0;
* CTC head initialised as the paper's ``init_linear_for_ctc`` (blank bias + 5, other rows × 0.1);
* 12,000 steps (the 10-minute condition; 13k for 1 h, 20k for 10 h, 80k for 100 h, 320k for 960 h);
* seed 123. The paper trains in fp16 and validates every 5k steps; the defaults here are fp32 (CPU-friendly)
  and every 1k steps: ``finetune-paper`` sets the paper's (and its scratch model, the paper's ``base-nanow2v2``).

fairseq's BASE recipes are presets: ``finetune-fairseq-10m`` and ``finetune-fairseq-100h``.

**CTC loss normalisation** (``ctc_normalisation``; called ``loss_normalisation`` before, the name of the
pre-training's ``model.loss_normalisation``, another setting). The CTC loss of every utterance is summed over
micro-batches and ranks and divided once by a global count: ``sentence`` (default) divides by the number
of utterances, fairseq's ``sentence_avg: true`` used by all its wav2vec 2.0 fine-tuning recipes;
``token`` divides by the number of target characters (fairseq's default for other tasks). The paper's
code uses ``F.ctc_loss``'s ``mean`` (each utterance divided by its length, then averaged): per step
that is only a different weighting of utterances, which Adam largely absorbs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from earful.config import ConfigError, at_least, load_config, preset_file
from earful.eval.vocab import check_mapping
from earful.model.config import ModelConfig, check_feature_grad_mult
from earful.train.config import DataConfig, OptimConfig, TrainingConfig, config_source
from earful.train.recipe import written_by_a_run


@dataclass
class FinetuneDataConfig(DataConfig):
    # train, valid: labelled manifests (every training utterance needs a transcript)
    max_seconds: float | None = 30.0  # longer utterances are left out (counted and logged)


@dataclass
class RegularisationConfig:
    """Model settings put on top of the initial model's config for fine-tuning (``None`` keeps the value
    the initial model has, e.g. from its pre-training config)."""

    mask_prob: float | None = 0.05  # time masking (fairseq: 0.65; 0.5 for 960 h)
    mask_length: int | None = 10
    mask_channel_prob: float | None = 0.0  # channel masking (fairseq: 0.25-0.5; 0.1 for 960 h)
    mask_channel_length: int | None = 10  # fairseq: 64
    dropout: float | None = 0.1  # fairseq: 0.0
    attention_dropout: float | None = None  # fairseq: 0.0
    activation_dropout: float | None = None  # fairseq: 0.1
    dropout_input: float | None = None  # fairseq: 0.0
    final_dropout: float | None = None  # before the CTC head; fairseq: 0.0
    layerdrop: float | None = 0.0  # fairseq: 0.1 (0.05 for 10 h)
    # the CNN's gradient scale where freeze_feature_encoder is false (fairseq's fine-tuning feature_grad_mult);
    # None: the initial model's (BASE's pre-training: 0.1)
    feature_grad_mult: float | None = None
    # each utterance's CNN statistics over its real samples, whatever the pre-training used, so fine-tuning,
    # validation and evaluation see the same features (ModelConfig.group_norm_padding; fairseq: "included")
    group_norm_padding: Literal["excluded", "included"] | None = "excluded"

    def apply(self, cfg: ModelConfig) -> ModelConfig:
        """``cfg`` with the non-``None`` settings replaced (validated by ModelConfig)."""
        changes = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(cfg, **changes)


def _finetune_optim() -> OptimConfig:
    return OptimConfig(
        lr=5e-5, lr_scaling="none", reference_batch_seconds=180.0, schedule="tristage",
        tristage_ratios=[0.1, 0.4, 0.5], tristage_init_scale=0.01, tristage_final_scale=0.05,
        betas=[0.9, 0.98], eps=1e-8, weight_decay=0.0, clip_norm=0.0,
    )  # fmt: skip


@dataclass
class FinetuneConfig(TrainingConfig):
    # pre-training or CTC checkpoint folder, a run folder (its latest), a HF folder, or scratch; "" (none given) is
    # refused: a run that forgot --init would train a random model for hours (the paper's scratch baseline)
    init: str = ""
    model_preset: str = "base"  # the architecture of a ``scratch`` model (preset name or YAML path)
    model: RegularisationConfig = field(default_factory=RegularisationConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    optim: OptimConfig = field(default_factory=_finetune_optim)
    # the CTC vocabulary: english (blank, |, ', a-z), data (every character of the training and validation
    # transcripts, once mapped), init (the initial CTC model's, whose head is kept)
    vocab: Literal["english", "data", "init"] = "english"
    text_mapping: dict[str, str] = field(default_factory=dict)  # e.g. {"-": " ", "é": "e"}; "" removes
    ctc_normalisation: Literal["sentence", "token"] = "sentence"  # fairseq: sentence_avg (true: sentence)
    head_init: Literal["paper", "xavier", "torch"] = "paper"  # fairseq: xavier (bias 0)
    freeze_feature_encoder: bool = True  # the CNN (fairseq: feature_grad_mult 0)
    freeze_feature_projection: bool = True  # LayerNorm + Linear after the CNN (fairseq trains them)
    freeze_transformer_steps: int = 5000  # steps during which only the head trains (fairseq 10m: 10k)
    # the engine's settings, with fine-tuning's defaults
    batch_seconds: float = 180.0
    device_seconds: float | Literal["auto"] = 180.0
    max_steps: int = 12_000
    seed: int = 123
    valid_every: int = 1000  # validation CTC loss, greedy WER and CER (data.valid); 0 = only at the end

    def validate(self) -> None:
        super().validate()
        at_least("freeze_transformer_steps", self.freeze_transformer_steps, 0)
        if self.model.feature_grad_mult is not None:  # None: the initial model's
            check_feature_grad_mult(self.model.feature_grad_mult)
        check_mapping(self.text_mapping, "text_mapping")

    def check_init(self) -> None:
        """Refuse a run with no initial model named: checked once ``--init`` is applied (after loading)."""
        if not str(self.init).strip():
            raise ValueError("init: no initial model: give --init CKPT (a pre-training run or checkpoint, a CTC "
                             "checkpoint, a transformers folder or Hub model id), or init=scratch to fine-tune a "
                             "randomly initialised model (the paper's from-scratch baseline)")


def load_finetune_config(path: str | Path | None, overrides: list[str] | None = None, *,
                         overrides_from: str = "command-line overrides") -> FinetuneConfig:
    """Defaults ← YAML (path or preset name) ← ``key=value`` overrides (``overrides_from``: whose, as an error
    names them). A run folder's config.yaml (or config-N.yaml), which earful wrote, is read with today's names of
    renamed settings (``RENAMED_SETTINGS``); any other file or override that says an old name is refused."""
    given = None if path is None else preset_file(path, command="finetune")  # its refusal names the word itself
    try:  # an unknown key or a wrong type, as a setting no run can train with: named with where it came from
        cfg = load_config(FinetuneConfig, given, overrides, saved=path is not None and written_by_a_run(path))
        cfg.validate()
    except ValueError as e:
        raise ConfigError(f"{config_source(path, overrides, overrides_from)}: {e}") from None
    return cfg


def config_summary(cfg: FinetuneConfig) -> dict[str, Any]:
    """The settings worth one log line."""
    return {
        "init": cfg.init, "steps": cfg.max_steps, "lr": cfg.effective_lr(), "batch_seconds": cfg.batch_seconds,
        "freeze_transformer_steps": cfg.freeze_transformer_steps, "mask_prob": cfg.model.mask_prob,
        "mask_channel_prob": cfg.model.mask_channel_prob, "ctc_normalisation": cfg.ctc_normalisation,
    }  # fmt: skip
