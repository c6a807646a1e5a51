"""Model configuration: one dataclass, YAML presets in ``earful/configs/model/``.

Field names are earful's, most of them `transformers`' or fairseq's: docs/ARCHITECTURE.md ("Model") tables every
field whose name differs in either, and ``earful/interop/hf.py`` maps them to transformers'.

The ``recipe`` switches select where the paper's code (nanow2v2) differs from fairseq, so both can be run:

==========================  =====================  ===========================================
switch                      fairseq                nanow2v2 (the paper's code)
==========================  =====================  ===========================================
``conv_padding``            False (49 Hz)          True (padded convs, exactly 50 Hz)
``quantizer_input``         "normed"               "raw" (CNN output before the LayerNorm)
``loss_normalisation``      "fairseq"              "nanow2v2" (auxiliary losses unnormalised)
``mask_style``              "fairseq"              "nanow2v2"
``negatives_style``         "fairseq" (not self)   "nanow2v2" (self drawable, then −inf)
``require_same_masks``      True                   False
``dropout_after_pos_conv``  True                   False
``weight_init``             "fairseq"              "nanow2v2"
==========================  =====================  ===========================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from earful.config import PRESET_DIR, ConfigError, at_least, load_config, preset_file

MODEL_PRESET_DIR = PRESET_DIR / "model"


@dataclass
class ModelConfig:
    # --- feature encoder (CNN on the raw waveform) ---
    conv_dim: list[int] = field(default_factory=lambda: [512] * 7)
    conv_kernel: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_stride: list[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    conv_bias: bool = False
    conv_padding: bool = False  # nanow2v2: pad each conv so the output is exactly 50 frames/s
    feat_extract_norm: Literal["group", "layer"] = "group"  # group: first layer only; layer: every layer
    # the zero padding of a batch in the CNN. "excluded": the first layer's GroupNorm takes its statistics over
    # each utterance's real samples only (and a padded conv, conv_padding, sees zeros past its end), so every
    # utterance's outputs are the ones it gets alone, whatever its batch. "included": fairseq's (and the
    # paper's) GroupNorm over the padded batch, zeros counted: outputs depend on the batch-mates' lengths.
    # Files from before this field get "excluded". Fine-tuning sets "excluded" unless told otherwise, and
    # evaluate / transcribe / features always run "excluded". Why pre-training does too:
    # docs/batch-invariance.md.
    group_norm_padding: Literal["excluded", "included"] = "excluded"
    feature_grad_mult: float = 0.1  # gradient multiplier on the CNN (fairseq's feature_grad_mult; 0: no autograd)
    normalize_waveform: bool = False  # per-utterance zero mean, unit variance (LARGE recipes)

    # --- projection and transformer ---
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    layer_norm_first: bool = False  # False: post-LN (BASE); True: pre-LN (LARGE)
    layer_norm_eps: float = 1e-5
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    # transformer Linear layers: "fairseq" N(0, 0.02) weights, zero biases (init_bert_params; transformers
    # does the same); "nanow2v2" Xavier-uniform fused QKV (gain 1/sqrt 2) and out-projection, zero biases;
    # "torch" PyTorch's defaults (the CPU presets, with which their recipes were measured). Called init before, the
    # name of the weights a training starts from (a training config's bare init, another setting)
    weight_init: Literal["fairseq", "nanow2v2", "torch"] = "fairseq"

    # --- dropout ---
    dropout: float = 0.1  # residual / hidden dropout
    dropout_after_pos_conv: bool = True  # fairseq: `dropout` on the transformer's input too; nanow2v2: none
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = 0.1  # after the feature projection
    dropout_features: float = 0.1  # on the quantizer's input
    layerdrop: float = 0.05
    final_dropout: float = 0.1  # before the CTC head

    # --- masking ---
    mask_style: Literal["fairseq", "nanow2v2"] = "fairseq"
    # fairseq: distractors never the frame itself, and one quantized like the target scores -inf;
    # nanow2v2: any masked frame of the utterance, itself included, and only that draw scores -inf
    negatives_style: Literal["fairseq", "nanow2v2"] = "fairseq"
    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    require_same_masks: bool = True  # fairseq: every utterance of a batch gets the same masked count
    mask_channel_prob: float = 0.0  # fine-tuning
    mask_channel_length: int = 10

    # --- quantizer and contrastive head ---
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256  # concatenated size of the G selected codewords
    final_dim: int = 256  # shared space of context and targets
    quantizer_input: Literal["normed", "raw"] = "normed"
    temperature_start: float = 2.0
    temperature_end: float = 0.5
    temperature_decay: float = 0.999995  # per optimizer step
    num_negatives: int = 100
    logit_temperature: float = 0.1
    diversity_weight: float = 0.1
    diversity_start_step: int = 0  # no diversity loss before this optimizer step (small-scale recipes)
    diversity_warmup_steps: int = 0  # then ramp its weight linearly from 0 over these steps
    feature_penalty_weight: float = 10.0
    loss_normalisation: Literal["fairseq", "nanow2v2"] = "fairseq"

    def __post_init__(self) -> None:
        n = len(self.conv_dim)
        if not (len(self.conv_kernel) == len(self.conv_stride) == n):
            raise ValueError("conv_dim, conv_kernel and conv_stride must have the same length")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % self.pos_conv_groups:
            raise ValueError("hidden_size must be divisible by pos_conv_groups")
        if self.codevector_dim % self.num_codevector_groups:
            raise ValueError("codevector_dim must be divisible by num_codevector_groups")
        check_feature_grad_mult(self.feature_grad_mult)
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Values no model can train with, named by their key (before, a meaningless run: ``num_negatives=0``
        trained on a contrastive loss of 0, ``logit_temperature=0`` on NaN; or torch's error naming no key)."""
        def bad(key: str, value: object, expected: str) -> ValueError:
            return ValueError(f"model.{key}={value}: expected {expected}")

        for key in ("dropout", "attention_dropout", "activation_dropout", "dropout_input", "dropout_features",
                    "layerdrop", "final_dropout", "mask_prob", "mask_channel_prob"):
            v = getattr(self, key)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise bad(key, v, "a probability in [0, 1]")
        for key in ("logit_temperature", "temperature_start", "temperature_end", "layer_norm_eps"):
            v = getattr(self, key)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise bad(key, v, "a finite number > 0")
        if not (0 < self.temperature_decay <= 1):
            raise bad("temperature_decay", self.temperature_decay, "a factor in (0, 1] a step")
        for key in ("diversity_weight", "feature_penalty_weight"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v >= 0):
                raise bad(key, v, "a finite weight >= 0")
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "pos_conv_kernel",
                    "pos_conv_groups", "num_codevector_groups", "codevector_dim", "final_dim", "num_negatives"):
            at_least(f"model.{key}", getattr(self, key), 1)
        at_least("model.num_codevectors_per_group", self.num_codevectors_per_group, 2,
                 " (with one codeword a group every frame quantizes to it: nothing to choose or compare)")
        for key, prob in (("mask_length", self.mask_prob), ("mask_channel_length", self.mask_channel_prob)):
            if prob > 0 and getattr(self, key) < 1:  # unused without masks (transformers' configs may say 0)
                raise bad(key, getattr(self, key), "an integer >= 1 where its mask probability is > 0")
        for key in ("min_masks", "diversity_start_step", "diversity_warmup_steps"):
            at_least(f"model.{key}", getattr(self, key), 0)
        for key in ("conv_dim", "conv_kernel", "conv_stride"):
            if not getattr(self, key) or min(getattr(self, key)) < 1:
                raise bad(key, getattr(self, key), "a non-empty list of integers >= 1")

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame (400 for the standard CNN)."""
        rf = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride), strict=True):
            rf = (rf - 1) * s + k
        return rf

    @property
    def total_stride(self) -> int:
        out = 1
        for s in self.conv_stride:
            out *= s
        return out

    @property
    def conv_paddings(self) -> list[int]:
        """Padding per conv: fairseq none; nanow2v2 (k - s + 1) // 2, i.e. 3,1,1,1,1,0,0 (exactly 50 Hz)."""
        if not self.conv_padding:
            return [0] * len(self.conv_kernel)
        return [max(0, (k - s + 1) // 2) for k, s in zip(self.conv_kernel, self.conv_stride, strict=True)]


def check_feature_grad_mult(value: object) -> None:
    """Refuse a CNN gradient multiplier (``model.feature_grad_mult``) no run can train with, naming the key: NaN or
    inf passed a check for ``< 0`` only, and a NaN multiplier makes every CNN gradient NaN."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"model.feature_grad_mult={value}: expected a finite multiplier >= 0 (0 freezes the CNN, 1 "
                         "trains it fully)")


def preset_differs(preset: str, model: ModelConfig) -> bool:
    """Whether model preset ``preset`` (a name or YAML path) names another architecture than ``model``'s: CNN
    widths, width, layers, heads, feed-forward (a preset given with an initial model, which decides them). A
    preset that does not resolve from here is not compared."""
    try:
        other = load_model_config(preset)
    except (OSError, ValueError):
        return False
    shape = [(c.conv_dim, c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size) for c in (other, model)]
    return shape[0] != shape[1]


def model_presets() -> list[str]:
    return sorted(p.stem for p in MODEL_PRESET_DIR.glob("*.yaml"))


def load_model_config(preset_or_path: str | Path | None = None, overrides: list[str] | None = None) -> ModelConfig:
    """A preset name (``tiny``, ``small``, ``base``, ``large``, ``base-nanow2v2``) or a YAML path, then
    ``key=value`` overrides (a renamed setting's old name refused in either, as a training config's ``model.*``)."""
    if preset_or_path is not None:  # resolved here: read_yaml's own presets are the training's
        preset_or_path = preset_file(preset_or_path, MODEL_PRESET_DIR, "model preset")
    try:
        return load_config(ModelConfig, preset_or_path, overrides, within="model")
    except ConfigError as e:  # which file: a preset's keys are the model section's (its init is model.init)
        raise ConfigError(f"model preset {preset_or_path}: {e}" if preset_or_path is not None else str(e)) from None
