"""Weights and configs to and from Hugging Face `transformers`' wav2vec 2.0 layout.

Export and import need no `transformers` install: a HF model folder is ``config.json`` plus
``model.safetensors`` (or a ``pytorch_model.bin`` read with ``weights_only=True``, or either's shards), the
feature extractor's settings (``preprocessor_config.json``, or transformers 5's ``processor_config.json``) and,
for a CTC model, its tokenizer (``vocab.json``, ``tokenizer_config.json``, ``added_tokens.json``) and, where
fine-tuning had one, its ``text_mapping`` as ``config.json``'s ``earful_text_mapping`` (a key of earful's own,
which transformers' ``PretrainedConfig`` keeps and ignores; import-hf reads it back so that ``evaluate`` normalises
references as before). The mapping of weights is explicit, one line per tensor, and round-trip tested; earful's
fused QKV is split into HF's q/k/v projections in that order. Both directions check everything before writing
anything, then move the new files into their folder from a temporary one inside it
(``earful.atomic.atomic_folder``): never over the folder they read nor the other format.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from earful.atomic import FOLDER_TMP, atomic_folder, atomic_write_json, atomic_write_lines
from earful.checkpoint import (
    _LAYER,
    INFO_FILE,
    MODEL_FILE,
    CheckpointError,
    atomic_save_tensors,
    check_sizes,
    model_kind,
    read_json,
    safe_torch_load,
    save_model,
    what_it_is,
)
from earful.config import from_dict, renamed_settings, to_dict
from earful.data.budget import SAMPLE_RATE
from earful.eval.vocab import DELIMITER, check_mapping
from earful.model import ModelConfig, Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

log = logging.getLogger(__name__)

_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
_ACT_FROM_HF = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------
# ModelConfig fields that transformers' Wav2Vec2Config holds as they are, under its names (earful, transformers)
_SAME_FIELDS = (
    ("conv_bias", "conv_bias"), ("feat_extract_norm", "feat_extract_norm"), ("hidden_size", "hidden_size"),
    ("num_layers", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
    ("intermediate_size", "intermediate_size"), ("layer_norm_eps", "layer_norm_eps"),
    ("layer_norm_first", "do_stable_layer_norm"), ("pos_conv_kernel", "num_conv_pos_embeddings"),
    ("pos_conv_groups", "num_conv_pos_embedding_groups"), ("dropout", "hidden_dropout"),
    ("attention_dropout", "attention_dropout"), ("activation_dropout", "activation_dropout"),
    ("dropout_input", "feat_proj_dropout"), ("dropout_features", "feat_quantizer_dropout"),
    ("final_dropout", "final_dropout"), ("layerdrop", "layerdrop"), ("mask_length", "mask_time_length"),
    ("min_masks", "mask_time_min_masks"), ("mask_channel_length", "mask_feature_length"),
    ("num_codevector_groups", "num_codevector_groups"), ("num_codevectors_per_group", "num_codevectors_per_group"),
    ("codevector_dim", "codevector_dim"), ("final_dim", "proj_codevector_dim"),
    ("logit_temperature", "contrastive_logits_temperature"), ("num_negatives", "num_negatives"),
    ("diversity_weight", "diversity_loss_weight"),
)  # fmt: skip


# ModelConfig fields transformers' config has no place for: earful's training recipe (none changes what the backbone
# computes in eval mode; quantizer_input is the pre-training head's, which transformers' cannot follow). export-hf
# keeps them in config.json under a key of earful's own (transformers keeps it and ignores it, as
# earful_text_mapping), so that a continued pre-training or a fine-tuning from the folder trains as one from the
# earful checkpoint does; a folder without it (transformers' own) takes earful's defaults (quantizer_input: normed,
# as transformers)
TRAINING = "earful_training"
# (by today's names: a folder exported before a setting was renamed is read with them, ``RENAMED_SETTINGS``)
_TRAINING_FIELDS = (
    "feature_grad_mult", "group_norm_padding", "weight_init", "dropout_after_pos_conv", "mask_style",
    "negatives_style", "require_same_masks", "temperature_start", "temperature_end", "temperature_decay",
    "diversity_start_step", "diversity_warmup_steps", "feature_penalty_weight", "loss_normalisation",
    "quantizer_input",
)  # fmt: skip


def hf_config(cfg: ModelConfig, *, kind: str, vocab_size: int | None = None) -> dict[str, Any]:
    """A ``Wav2Vec2Config`` as a dict (what ``config.json`` holds), with earful's training settings
    (:data:`TRAINING`)."""
    if cfg.conv_padding:
        raise ValueError("transformers' wav2vec 2.0 has no padded convolutions: a model with conv_padding=true (the "
                         "paper's preset base-nanow2v2) cannot be exported; earful features gives its layers")
    if kind == "pretraining" and cfg.quantizer_input == "raw":
        log.warning("transformers quantizes the LayerNormed features; this model's quantizer reads the raw "
                    "CNN output, so transformers' pre-training head differs (the backbone is exact; earful reads "
                    "quantizer_input back from %s)", TRAINING)
    out: dict[str, Any] = {
        "model_type": "wav2vec2",
        "architectures": ["Wav2Vec2ForPreTraining" if kind == "pretraining" else "Wav2Vec2ForCTC"],
        "conv_dim": list(cfg.conv_dim),
        "conv_kernel": list(cfg.conv_kernel),
        "conv_stride": list(cfg.conv_stride),
        "num_feat_extract_layers": len(cfg.conv_dim),
        "feat_extract_activation": _ACT_TO_HF[cfg.activation],
        "hidden_act": _ACT_TO_HF[cfg.activation],
        **{hf: getattr(cfg, name) for name, hf in _SAME_FIELDS},
        "apply_spec_augment": True,
        "mask_time_prob": cfg.mask_prob,
        "mask_feature_prob": cfg.mask_channel_prob,
        "feat_extract_dropout": 0.0,
        "ctc_loss_reduction": "sum",
        "ctc_zero_infinity": True,
        "pad_token_id": 0,
    }
    if vocab_size is not None:
        out["vocab_size"] = vocab_size
    out[TRAINING] = {name: getattr(cfg, name) for name in _TRAINING_FIELDS}
    return out


# transformers' Wav2Vec2Config defaults (transformers 4.x-5.x) for every key earful reads: a config.json that
# leaves a key out means transformers' default, not earful's (a test checks them against transformers)
HF_DEFAULTS: dict[str, Any] = {
    "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False, "feat_extract_norm": "group", "hidden_act": "gelu", "feat_extract_activation": "gelu",
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "layer_norm_eps": 1e-5, "do_stable_layer_norm": False, "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16, "hidden_dropout": 0.1, "attention_dropout": 0.1,
    "activation_dropout": 0.1, "feat_proj_dropout": 0.0, "feat_quantizer_dropout": 0.0, "final_dropout": 0.1,
    "layerdrop": 0.1, "apply_spec_augment": True, "mask_time_prob": 0.05, "mask_time_length": 10,
    "mask_time_min_masks": 2, "mask_feature_prob": 0.0, "mask_feature_length": 10, "mask_feature_min_masks": 0,
    "num_codevector_groups": 2, "num_codevectors_per_group": 320, "codevector_dim": 256,
    "proj_codevector_dim": 256, "contrastive_logits_temperature": 0.1, "num_negatives": 100,
    "diversity_loss_weight": 0.1, "add_adapter": False,
}  # fmt: skip


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """A ModelConfig from a HF ``config.json`` dict; a key it leaves out takes transformers' default
    (:data:`HF_DEFAULTS`). A setting earful's model does not have (an adapter, channel masks with a minimum
    count, two activations) is a ValueError naming ``where``."""

    def get(key: str) -> Any:
        return hf.get(key, HF_DEFAULTS[key])

    nulls = [k for k in HF_DEFAULTS if k in hf and hf[k] is None]  # none of these has null among its values
    if nulls:
        raise ValueError(f"{where}: {', '.join(f'{k}=null' for k in nulls)}: a value belongs there (leave the key "
                         "out for transformers' default)")
    act = get("hidden_act")
    if act not in _ACT_FROM_HF:
        raise ValueError(f"{where}: unsupported hidden_act {act!r} (earful has {', '.join(_ACT_FROM_HF)})")
    if get("feat_extract_activation") != act:
        raise ValueError(f"{where}: feat_extract_activation {get('feat_extract_activation')!r} differs from "
                         f"hidden_act {act!r}; earful uses one activation for the CNN and the transformer")
    if get("add_adapter"):
        raise ValueError(f"{where}: add_adapter: earful's wav2vec 2.0 has no adapter layers after the transformer")
    spec_augment = bool(get("apply_spec_augment"))
    if get("mask_feature_min_masks") and spec_augment and get("mask_feature_prob") > 0:  # else no channel masks
        raise ValueError(f"{where}: mask_feature_min_masks={get('mask_feature_min_masks')}: earful's channel masks "
                         "have no minimum count (fairseq's); set it to 0")
    training = hf.get(TRAINING, {})  # not `or {}`: a null, 0 or [] there is refused as any other non-mapping
    if isinstance(training, dict):  # exported before a setting was renamed (model.init): today's names
        training = renamed_settings(training, "model")
    if not isinstance(training, dict) or set(training) - set(_TRAINING_FIELDS):
        raise ValueError(f"{where}: {TRAINING}: expected a mapping of earful's training settings "
                         f"({', '.join(_TRAINING_FIELDS)}), got {training!r}; mend it, or remove the key to take "
                         "earful's defaults")
    try:
        return _hf_model_config(get, act, spec_augment, training)
    except ValueError as e:  # a value earful's model cannot take, named as config.json names it
        theirs = {**dict(_SAME_FIELDS), "mask_prob": "mask_time_prob", "mask_channel_prob": "mask_feature_prob",
                  "activation": "hidden_act"}
        message = re.sub(r"\bmodel\.(\w+)", lambda m: theirs.get(m.group(1), m.group(1)), str(e))
        raise ValueError(f"{where}: {message}") from None


def _hf_model_config(get: Any, act: str, spec_augment: bool, training: dict[str, Any]) -> ModelConfig:
    """The ModelConfig, built through :func:`earful.config.from_dict` as ``load_model`` builds it from
    ``model.json`` (so a value load would refuse, ``feat_extract_norm: batch`` say, is refused here)."""
    values = {
        **to_dict(ModelConfig()),
        **training,
        **{name: get(hf) for name, hf in _SAME_FIELDS},
        "conv_dim": get("conv_dim"),
        "conv_kernel": get("conv_kernel"),
        "conv_stride": get("conv_stride"),
        "conv_padding": False,
        "activation": _ACT_FROM_HF[act],
        # apply_spec_augment false: transformers masks nothing, whatever the probabilities say
        "mask_prob": get("mask_time_prob") if spec_augment else 0.0,
        "mask_channel_prob": get("mask_feature_prob") if spec_augment else 0.0,
    }
    return from_dict(ModelConfig, values, "model")


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------
def _backbone_pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(earful name, HF name) for every backbone tensor except the fused attention projections."""
    pairs = [("wav2vec2.mask_emb", "wav2vec2.masked_spec_embed")]
    for i in range(len(cfg.conv_dim)):
        e, h = f"wav2vec2.feature_encoder.layers.{i}", f"wav2vec2.feature_extractor.conv_layers.{i}"
        pairs.append((f"{e}.conv.weight", f"{h}.conv.weight"))
        if cfg.conv_bias:
            pairs.append((f"{e}.conv.bias", f"{h}.conv.bias"))
        if cfg.feat_extract_norm == "layer" or i == 0:
            pairs += [(f"{e}.norm.weight", f"{h}.layer_norm.weight"), (f"{e}.norm.bias", f"{h}.layer_norm.bias")]
    for n in ("layer_norm.weight", "layer_norm.bias", "projection.weight", "projection.bias"):
        pairs.append((f"wav2vec2.feature_projection.{n}", f"wav2vec2.feature_projection.{n}"))
    pc_e, pc_h = "wav2vec2.encoder.pos_conv.conv", "wav2vec2.encoder.pos_conv_embed.conv"
    pairs += [
        (f"{pc_e}.bias", f"{pc_h}.bias"),
        (f"{pc_e}.parametrizations.weight.original0", f"{pc_h}.parametrizations.weight.original0"),
        (f"{pc_e}.parametrizations.weight.original1", f"{pc_h}.parametrizations.weight.original1"),
        ("wav2vec2.encoder.layer_norm.weight", "wav2vec2.encoder.layer_norm.weight"),
        ("wav2vec2.encoder.layer_norm.bias", "wav2vec2.encoder.layer_norm.bias"),
    ]
    for i in range(cfg.num_layers):
        e, h = f"wav2vec2.encoder.layers.{i}", f"wav2vec2.encoder.layers.{i}"
        for en, hn in (
            ("attention.out_proj", "attention.out_proj"),
            ("attn_layer_norm", "layer_norm"),
            ("feed_forward.fc1", "feed_forward.intermediate_dense"),
            ("feed_forward.fc2", "feed_forward.output_dense"),
            ("final_layer_norm", "final_layer_norm"),
        ):
            pairs += [(f"{e}.{en}.weight", f"{h}.{hn}.weight"), (f"{e}.{en}.bias", f"{h}.{hn}.bias")]
    return pairs


def _head_pairs(kind: str) -> list[tuple[str, str]]:
    if kind == "pretraining":
        return [
            ("quantizer.codevectors", "quantizer.codevectors"),
            ("quantizer.weight_proj.weight", "quantizer.weight_proj.weight"),
            ("quantizer.weight_proj.bias", "quantizer.weight_proj.bias"),
            ("project_q.weight", "project_q.weight"),
            ("project_q.bias", "project_q.bias"),
            ("final_proj.weight", "project_hid.weight"),
            ("final_proj.bias", "project_hid.bias"),
        ]
    return [("lm_head.weight", "lm_head.weight"), ("lm_head.bias", "lm_head.bias")]


def _qkv_names(cfg: ModelConfig) -> dict[str, list[str]]:
    """earful's fused QKV tensor name -> HF's q, k, v projection names, in the order the fused rows hold them."""
    names = {}
    for i in range(cfg.num_layers):
        at = f"wav2vec2.encoder.layers.{i}.attention"
        for part in ("weight", "bias"):
            names[f"{at}.qkv.{part}"] = [f"{at}.{p}_proj.{part}" for p in "qkv"]
    return names


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig, kind: str) -> dict[str, torch.Tensor]:
    out = {h: state[e] for e, h in _backbone_pairs(cfg) + _head_pairs(kind)}
    for e, names in _qkv_names(cfg).items():
        out.update(zip(names, state[e].chunk(3, dim=0), strict=True))
    return {k: v.contiguous() for k, v in out.items()}


# transformers creates the mask embedding only when its config masks (mask_time_prob or mask_feature_prob > 0)
_OPTIONAL_HF = {"wav2vec2.masked_spec_embed"}


def from_hf_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig, kind: str,
                       where: str = "HF weights") -> dict[str, torch.Tensor]:
    """earful's tensors from a HF state dict; an optional tensor HF left out is left out here too. Every
    tensor must be used: one the mapping does not know (an adapter, another architecture's part) would make a
    model other than the one transformers runs, and is refused; the other head's tensors (a pre-training
    folder's quantizer in a CTC one) are left out with a warning, as transformers does."""
    hf = _normalise_hf_keys(hf)
    pairs = _backbone_pairs(cfg) + _head_pairs(kind)
    qkv = _qkv_names(cfg)
    missing = [h for _, h in pairs if h not in hf and h not in _OPTIONAL_HF]
    missing += [h for names in qkv.values() for h in names if h not in hf]
    if missing:
        raise CheckpointError(f"{where}: lacks {len(missing)} tensors, e.g. {missing[:3]}" + (
            " (its names have no 'wav2vec2.' prefix: a bare transformers Wav2Vec2Model, which earful fine-tunes "
            "(finetune --init) but cannot import or pre-train; save a Wav2Vec2ForPreTraining or Wav2Vec2ForCTC)"
            if _bare(hf) else ""))
    used = {h for _, h in pairs} | {h for names in qkv.values() for h in names}
    other = {h for _, h in _head_pairs("ctc" if kind == "pretraining" else "pretraining")}
    unknown = sorted(k for k in hf if k not in used and k not in other)
    if unknown:
        raise CheckpointError(f"{where}: {len(unknown)} tensors earful's wav2vec 2.0 has no place for, e.g. "
                              f"{unknown[:3]}: importing without them would give another model than transformers'")
    if any(k in other for k in hf):
        log.warning("%s: the %s head's tensors are left out (a %s model has none)", where,
                    "CTC" if kind == "pretraining" else "pre-training", kind)
    out = {e: hf[h] for e, h in pairs if h in hf}
    out.update({e: torch.cat([hf[h] for h in names], dim=0) for e, names in qkv.items()})
    return out


def _bare(hf: dict[str, torch.Tensor]) -> bool:
    """Whether ``hf`` is a bare ``Wav2Vec2Model``'s state dict (no ``wav2vec2.`` prefix, no head)."""
    return not any(k.startswith("wav2vec2.") for k in hf) and any(k.startswith("feature_extractor.") for k in hf)


def _normalise_hf_keys(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older checkpoints name the weight-norm tensors ``weight_g``/``weight_v``."""
    out = {}
    for k, v in hf.items():
        k = k.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        k = k.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------
HF_CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"  # a feature extractor saved alone; what export-hf writes
PROCESSOR = "processor_config.json"  # transformers 5's Wav2Vec2Processor: the feature extractor inside
# the least preprocessor_config.json of a model trained on normalised waveforms (transformers reads it too)
NORMALISING_EXTRACTOR = {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
                         "sampling_rate": SAMPLE_RATE, "do_normalize": True}
TOKENIZER = "tokenizer_config.json"
VOCAB = "vocab.json"
TEXT_MAPPING = "earful_text_mapping"  # config.json: a fine-tuned vocabulary's text mapping (transformers keeps it)
ADDED_TOKENS = "added_tokens.json"
CARD = "README.md"  # the model card
BIN = "pytorch_model.bin"
# what export-hf writes: a folder holding nothing else is an earlier export, which a new one replaces whole
EXPORT_FILES = frozenset({HF_CONFIG, MODEL_FILE, PREPROCESSOR, VOCAB, TOKENIZER, CARD})
IMPORT_FILES = frozenset({INFO_FILE, MODEL_FILE})  # what import-hf writes: an earful model checkpoint
# heads of transformers' wav2vec 2.0 that earful has not: a folder of one is named, not read
_OTHER_HEADS = {
    "Wav2Vec2ForSequenceClassification": "an utterance classification head",
    "Wav2Vec2ForAudioFrameClassification": "a frame classification head",
    "Wav2Vec2ForXVector": "a speaker-embedding (x-vector) head",
}
_SPECIAL = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}  # transformers' names by default


def feature_extractor_config(cfg: ModelConfig) -> dict[str, Any]:
    """``preprocessor_config.json``: a ``Wav2Vec2FeatureExtractor``. ``return_attention_mask`` follows
    transformers' convention: false for a group-norm CNN (such models, wav2vec2-base among them, take a
    zero-padded batch without a mask), true for a layer-norm one. Either way one utterance at a time (the
    ASR pipeline's default) gives what earful gives in any batch; docs/batch-invariance.md has the rest."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "processor_class": "Wav2Vec2Processor",
        "feature_size": 1,
        "sampling_rate": SAMPLE_RATE,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": cfg.normalize_waveform,
        "return_attention_mask": cfg.feat_extract_norm == "layer",
    }


def tokenizer_config(symbols: list[str], special: dict[str, str] | None = None) -> dict[str, Any]:
    """``tokenizer_config.json``: a ``Wav2Vec2CTCTokenizer`` over ``vocab.json`` whose pad token is the CTC
    blank (index 0, dropped from transcripts) and whose word delimiter is ``|``, decoding as earful's greedy
    decoder does: no lower-casing, no clean-up of spaces around apostrophes. The unknown, start and end tokens
    are ``special``'s (by role, ``{"unk_token": "[UNK]"}``: what import-hf recorded of the folder it read), else
    ``<unk>``, ``<s>``, ``</s>``, each named only when the vocabulary has it, so the tokenizer adds no symbols.
    Without an unknown token (earful's own vocabulary) transformers' tokenizer cannot encode a character
    outside the vocabulary (README.md, "In transformers")."""
    if DELIMITER not in symbols:
        raise ValueError(f"the vocabulary has no word delimiter {DELIMITER!r}: {symbols}")
    names = {role: (special or {}).get(role, name) for role, name in _SPECIAL.items()}
    return {
        "tokenizer_class": "Wav2Vec2CTCTokenizer",
        "processor_class": "Wav2Vec2Processor",
        "pad_token": symbols[0],
        "word_delimiter_token": DELIMITER,
        "replace_word_delimiter_char": " ",
        **{role: name if name in symbols else None for role, name in names.items()},
        "do_lower_case": False,
        "clean_up_tokenization_spaces": False,
    }


EARFUL_TAG = "earful"  # in the model card's tags: a folder export-hf wrote (:func:`written_by_export`)


IMPORTED_FROM = "imported_from"  # model.json: what an import read (a folder, a Hub id, a fairseq file)


def written_by_import(folder: Path) -> bool:
    """Whether ``folder`` is an earlier ``import-hf`` / ``import-fairseq`` output: its ``model.json`` records what it
    was imported from (an earful checkpoint a training wrote, or its copy, records none)."""
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and IMPORTED_FROM in info


def written_by_export(folder: Path) -> bool:
    """Whether ``folder`` is an earlier ``export-hf`` output: its model card's front matter lists earful's tag (a
    folder ``save_pretrained`` wrote has no card, or the Hub's own)."""
    try:
        text = (folder / CARD).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return earful_card(text)


# how each command knows its earlier output, which it replaces: (the test, what an output of another lacks, the
# earlier earful whose output lacks it too)
_IMPORTED = (written_by_import, f"its {INFO_FILE} names nothing it was imported from",
             "an import by an earful before imports were marked")
EARLIER: dict[str, tuple[Callable[[Path], bool], str, str]] = {
    "export-hf": (written_by_export, f"no earful model card, {CARD}", "an export by an earful before model cards"),
    "import-hf": _IMPORTED,
    "import-fairseq": _IMPORTED,
}


# a model card's YAML front matter, between its first two ``---`` lines (as the Hub reads it)
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$", re.DOTALL | re.MULTILINE)


def earful_card(text: str) -> bool:
    """Whether the model card ``text`` (a ``README.md``, a folder's or a Hub repository's) is one export-hf wrote:
    its front matter's ``tags`` list (block or flow style) has earful's tag as an item. A substring had taken an
    emotion model's ``fearful`` for it, and its folder was replaced whole."""
    found = _FRONT_MATTER.match(text)
    try:
        front = yaml.safe_load(found.group(1)) if found else None
    except yaml.YAMLError:  # not YAML: no card export-hf wrote
        return False
    tags = front.get("tags") if isinstance(front, dict) else None
    return isinstance(tags, list) and EARFUL_TAG in tags


def check_output_folder(out: str | Path, *, source: str | Path | None, writes: frozenset[str],
                        other: tuple[str, str], command: str, keep: tuple[str | Path, ...] = ()) -> None:
    """Refuse an output folder that ``command`` must not replace: the ``source`` folder it reads or one it must
    ``keep`` (an exported model's initial weights), a file, a folder holding ``other`` (the other format's file,
    and what that is), one holding anything besides the files ``command`` writes (``writes``), or, with
    one of the same file names that ``command`` did not write (:data:`EARLIER`: a transformers folder of your own, a
    copied earful checkpoint). A new or empty folder, or an earlier output, passes: the command replaces it whole."""
    out = Path(out)
    if source is not None and out.exists() and out.resolve() == Path(source).resolve():
        raise CheckpointError(f"{out}: the output folder is the folder {command} reads: give another one")
    for kept in keep:
        if out.exists() and Path(kept).exists() and out.resolve() == Path(kept).resolve():
            raise CheckpointError(f"{out}: the output folder holds the weights the model's training started from "
                                  f"(its trainer.json's init), which {command} would replace: give another one")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: a file, not a folder")
    if not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith(FOLDER_TMP))  # a killed run's: removed
    if other[0] in names:
        raise CheckpointError(f"{out}: holds {other[1]} ({other[0]}), which {command} would replace: give "
                              "another output folder")
    foreign = [n for n in names if n not in writes]
    if foreign:
        raise CheckpointError(f"{out}: holds {', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}, which "
                              f"{command} does not write: not an earlier {command} folder (it would be replaced "
                              "whole); give a new or empty folder")
    written_by, lacks, before = EARLIER[command]
    if names and not written_by(out):
        raise CheckpointError(f"{out}: holds {', '.join(names[:5])}, not written by {command} ({lacks}): a model of "
                              f"your own, which {command} would replace; give a new or empty folder ({before}: "
                              "remove it first)")
    if names:
        log.info("%s: replacing the earlier %s folder", out, command)


def export_hf(model: torch.nn.Module, out_dir: str | Path, vocab_symbols: list[str] | None = None, *,
              special: dict[str, str] | None = None, card: str | None = None,
              source: str | Path | None = None, text_mapping: dict[str, str] | None = None,
              keep: tuple[str | Path, ...] = ()) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` so that
    ``Wav2Vec2ForPreTraining/ForCTC.from_pretrained(out_dir)`` loads it; for a CTC model with its vocabulary
    also ``vocab.json`` and ``tokenizer_config.json`` (``special``: see :func:`tokenizer_config`), which make
    the folder a whole processor: ``transformers.pipeline("automatic-speech-recognition", model=out_dir)``
    transcribes with it; ``card``: the text of ``README.md``; ``text_mapping``: the vocabulary's text mapping,
    kept in ``config.json`` as ``earful_text_mapping`` (:func:`read_text_mapping`). Without a ``card``, a short
    one that names earful (:func:`written_by_export`: a later export may replace the folder). The mask embedding
    (``masked_spec_embed``) is left out where the config masks nothing, as transformers has none there.

    Every file is made, and checked, before anything is written; the files are then written into a temporary
    folder inside ``out_dir`` and moved into place (:func:`earful.atomic.atomic_folder`): a refused or failed
    export leaves ``out_dir`` as it was. It must be new, empty or an earlier export, whose files are replaced
    (:func:`check_output_folder`; ``source``: the checkpoint exported, refused as the output, as are the
    folders to ``keep``)."""
    kind = model_kind(model)
    out = Path(out_dir)
    cfg: ModelConfig = model.cfg
    vocab_size = model.lm_head.out_features if kind == "ctc" else None
    if vocab_symbols is not None and len(vocab_symbols) != vocab_size:
        raise ValueError(f"{len(vocab_symbols)} vocabulary symbols for a model with {vocab_size} outputs")
    try:  # what transformers cannot hold, a vocabulary its tokenizer cannot take: name the checkpoint
        files = {HF_CONFIG: hf_config(cfg, kind=kind, vocab_size=vocab_size),
                 PREPROCESSOR: feature_extractor_config(cfg)}
        if vocab_symbols is not None:
            files[TOKENIZER] = tokenizer_config(list(vocab_symbols), special)
            files[VOCAB] = {s: i for i, s in enumerate(vocab_symbols)}
    except ValueError as e:
        raise ValueError(f"{source}: {e}" if source is not None else str(e)) from None
    if text_mapping:
        files[HF_CONFIG][TEXT_MAPPING] = check_mapping(text_mapping, "text_mapping")
    if vocab_symbols is None and kind == "ctc":
        log.warning("%s: no vocabulary given: the folder has no tokenizer (transformers' pipeline needs one)", out)
    weights = to_hf_state_dict(model.state_dict(), cfg, kind)
    if not (files[HF_CONFIG]["mask_time_prob"] > 0 or files[HF_CONFIG]["mask_feature_prob"] > 0):
        del weights["wav2vec2.masked_spec_embed"]  # transformers has none (_OPTIONAL_HF): an unexpected key there
    check_output_folder(out, source=source, writes=EXPORT_FILES, other=(INFO_FILE, "an earful checkpoint"),
                        command="export-hf", keep=keep)
    if card is None:
        card = (f"---\nlibrary_name: transformers\ntags: [wav2vec2, speech, {EARFUL_TAG}]\n---\n\n# wav2vec 2.0 "
                f"({'CTC' if kind == 'ctc' else 'pre-training'})\n\nExported by earful (earful.interop.hf.export_hf).")
    with atomic_folder(out) as tmp:
        atomic_save_tensors(weights, tmp / MODEL_FILE)
        for name, content in files.items():
            atomic_write_json(tmp / name, content)
        if card is not None:
            atomic_write_lines(tmp / CARD, [card])
    return out


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    """A transformers folder's ``config.json``, checked: there, a JSON object, a wav2vec 2.0 model."""
    cfg_path = hf_dir / HF_CONFIG
    if not cfg_path.exists():
        raise CheckpointError(f"{hf_dir}: no config.json (not a transformers model folder)"
                              f"{what_it_is(hf_dir, transformers_ok=True)}")
    hf_cfg = read_json(cfg_path)
    if not isinstance(hf_cfg, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object (a transformers config)")
    if hf_cfg.get("model_type") not in (None, "wav2vec2"):
        raise CheckpointError(f"{cfg_path}: model_type {hf_cfg.get('model_type')!r} is not wav2vec2")
    return hf_cfg


def _other_head(hf_cfg: dict[str, Any]) -> str | None:
    """The architecture of ``hf_cfg`` whose head earful has not (:data:`_OTHER_HEADS`), if any."""
    architectures = hf_cfg.get("architectures")
    return next((a for a in architectures if a in _OTHER_HEADS), None) if isinstance(architectures, list) else None


def _blank(hf_cfg: dict[str, Any]) -> int:
    """The CTC blank of a transformers config: its ``pad_token_id`` (earful's is index 0)."""
    return int(hf_cfg.get("pad_token_id") or 0)


def read_hf_folder(hf_dir: str | Path, *, trust_pickle: bool = False,
                   backbone_only: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``config.json`` and the weights, the first of these that the folder has, in transformers' order
    (``modeling_utils``), so that earful imports the weights ``from_pretrained`` loads: ``model.safetensors``,
    the safetensors shards that ``model.safetensors.index.json`` names, ``pytorch_model.bin``, the shards that
    ``pytorch_model.bin.index.json`` names (a ``.bin`` read with ``weights_only``: a file that needs more is
    refused unless ``trust_pickle``). A folder of a head earful has not (classification, x-vector) is refused
    unless ``backbone_only`` (a fine-tuning's init, which keeps the backbone alone)."""
    d = Path(hf_dir)
    hf_cfg = read_hf_config(d)
    head = _other_head(hf_cfg)
    if head is not None and not backbone_only:
        raise CheckpointError(f"{d / HF_CONFIG}: a {head}, {_OTHER_HEADS[head]}, which earful does not import (it "
                              "imports Wav2Vec2ForPreTraining and Wav2Vec2ForCTC folders; finetune --init takes "
                              "its backbone)")
    for name in (MODEL_FILE, BIN):  # a legacy .bin beside safetensors shards is not what transformers loads
        if (d / name).exists():
            return hf_cfg, _read_weights(d / name, trust_pickle)
        if (d / f"{name}.index.json").exists():
            return hf_cfg, _read_shards(d / f"{name}.index.json", trust_pickle)
    raise CheckpointError(f"{d}: no {MODEL_FILE} or {BIN} (nor a sharded one's .index.json)")


def _read_weights(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: unreadable safetensors file: {e}") from e
    if trust_pickle:
        log.warning("%s: unpickling without restrictions (--trust-pickle): this runs any code the file holds", path)
    loaded = safe_torch_load(path, trust_pickle=trust_pickle)
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: not a state dict ({{name: tensor}})")
    weights = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if len(weights) < len(loaded):  # e.g. a fairseq-style "args" beside the tensors: not weights
        log.warning("%s: left out %d entries that are not tensors: %s", path, len(loaded) - len(weights),
                    sorted(set(loaded) - set(weights))[:5])
    return weights


def _read_shards(index: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """A sharded checkpoint: ``index``'s ``weight_map`` ({tensor: shard file}) and the shards it names."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not (isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())):
        raise CheckpointError(f"{index}: no \"weight_map\" ({{tensor name: shard file}})")
    weights: dict[str, torch.Tensor] = {}
    for name in sorted(set(weight_map.values())):
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise CheckpointError(f"{index}: shard {name!r} is not a file name in the folder")
        if not (index.parent / name).exists():
            raise CheckpointError(f"{index.parent / name}: missing (a shard that {index.name} names)")
        weights.update(_read_weights(index.parent / name, trust_pickle))
    missing = sorted(set(weight_map) - set(weights))
    if missing:
        raise CheckpointError(f"{index}: {len(missing)} tensors it maps are in no shard, e.g. {missing[:3]}")
    return weights


def read_feature_extractor(hf_dir: str | Path) -> tuple[dict[str, Any], str] | None:
    """The feature extractor's settings, and where they were read, as transformers reads them:
    ``processor_config.json``'s ``"feature_extractor"`` (what transformers 5's ``Wav2Vec2Processor.save_pretrained``
    writes), else ``preprocessor_config.json`` (a feature extractor saved alone, earlier processors, earful's
    export); None without either. A sampling rate other than 16 kHz or features other than the waveform
    (``feature_size`` 1) are refused, naming the file and key: earful's models read 16 kHz waveforms."""
    d = Path(hf_dir)
    settings: Any = None
    if (d / PROCESSOR).exists():
        processor = read_json(d / PROCESSOR)
        if not isinstance(processor, dict):
            raise CheckpointError(f"{d / PROCESSOR}: not a JSON object (a transformers processor config)")
        key = next((k for k in ("feature_extractor", "audio_processor") if k in processor), None)
        if key is not None:
            settings, where = processor[key], f"{d / PROCESSOR} (\"{key}\")"
    if settings is None and (d / PREPROCESSOR).exists():
        settings, where = read_json(d / PREPROCESSOR), str(d / PREPROCESSOR)
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{where}: not a JSON object (a transformers feature extractor config)")
    for key, want in (("sampling_rate", SAMPLE_RATE), ("feature_size", 1)):  # transformers' defaults
        if settings.get(key, want) != want:
            raise CheckpointError(f"{where}: {key}={settings[key]!r}: earful's models read waveforms (feature_size "
                                  f"1) at 16 kHz (sampling_rate {SAMPLE_RATE}; its audio loaders resample to it)")
    return settings, where


def _tokenizer_settings(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / TOKENIZER
    if not path.exists():
        return {}
    settings = read_json(path)
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: not a JSON object (a transformers tokenizer config)")
    return settings


def _added_tokens(hf_dir: Path, tokenizer: dict[str, Any]) -> tuple[dict[str, int], list[str]]:
    """The tokens a ``Wav2Vec2CTCTokenizer`` adds to ``vocab.json`` ({token: id}), from ``added_tokens.json``
    and ``tokenizer``'s (``tokenizer_config.json``'s) ``added_tokens_decoder``, and the files that name any."""
    found: dict[str, int] = {}
    files = []
    path = hf_dir / ADDED_TOKENS
    if path.exists():
        added = read_json(path)
        if not (isinstance(added, dict) and all(type(i) is int for i in added.values())):
            raise CheckpointError(f"{path}: not a {{token: id}} mapping with integer ids")
        found.update(added)
        files.append(ADDED_TOKENS)
    decoder = tokenizer.get("added_tokens_decoder")
    if decoder:
        path = hf_dir / TOKENIZER
        if not isinstance(decoder, dict):
            raise CheckpointError(f"{path}: added_tokens_decoder is not a {{id: token}} mapping")
        for i, token in decoder.items():
            content = token.get("content") if isinstance(token, dict) else None
            if not (isinstance(content, str) and str(i).isdigit()):
                raise CheckpointError(f"{path}: added_tokens_decoder[{i!r}] is not a token ({{\"content\": …}}) "
                                      "under an integer id")
            if found.setdefault(content, int(i)) != int(i):
                raise CheckpointError(f"{path}: added token {content!r} has id {i}, {ADDED_TOKENS} gives it "
                                      f"{found[content]}")
        files.append(f"{TOKENIZER}'s added_tokens_decoder")
    return found, files


def read_vocab(hf_dir: str | Path, outputs: int) -> list[str]:
    """A ``Wav2Vec2CTCTokenizer``'s vocabulary as the symbols in id order: ``vocab.json`` ({symbol: id}) and
    the tokens the tokenizer adds to it (:func:`_added_tokens`: the ``<s>``, ``</s>`` of the Hugging Face blog's
    fine-tuning recipe, whose model has ``len(tokenizer)`` outputs). The ids must be exactly 0 … outputs-1, one
    per output of the CTC head (a gap or a short file would put letters on the wrong outputs); an added token
past the head (the default ``<s>``, ``</s>`` of a tokenizer whose model has none) is left out. The tokenizer's
    word delimiter (``word_delimiter_token``, ``|`` by default) becomes earful's ``|``."""
    d = Path(hf_dir)
    path = d / VOCAB
    mapping = read_json(path)
    if not isinstance(mapping, dict) or not all(type(i) is int for i in mapping.values()):
        raise CheckpointError(f"{path}: not a {{symbol: id}} mapping with integer ids (a multilingual "
                              "vocabulary, one mapping per language, is not supported)")
    tokenizer = _tokenizer_settings(d)
    added, files = _added_tokens(d, tokenizer)
    beyond = sorted(t for t, i in added.items() if i >= outputs and t not in mapping)
    if beyond:  # e.g. the <s>, </s> a tokenizer adds to a vocab.json that has none, when the head has no outputs
        log.info("%s: the tokenizer's added tokens %s have no output of the CTC head: left out", d, beyond)
    for token, i in added.items():
        if token in beyond:
            continue
        if mapping.setdefault(token, i) != i:
            raise CheckpointError(f"{path}: {token!r} has id {mapping[token]}, {' and '.join(files)} give it {i}")
    where = f"{path} (with {' and '.join(files)})" if files else str(path)
    ids = sorted(mapping.values())
    if ids != list(range(outputs)):
        missing = sorted(set(range(outputs)) - set(ids))
        extra = sorted({i for i in ids if not 0 <= i < outputs})
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        problems = [f"{name} {found[:5]}{' …' if len(found) > 5 else ''}"
                    for name, found in (("missing ids", missing), ("ids out of range", extra),
                                        ("repeated ids", repeated)) if found]
        raise CheckpointError(f"{where}: {len(mapping)} symbols for a CTC head with {outputs} outputs; the ids must "
                              f"be exactly 0…{outputs - 1} ({'; '.join(problems)})")
    symbols = [s for s, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    delimiter = tokenizer.get("word_delimiter_token", DELIMITER)
    if delimiter == DELIMITER:
        return symbols
    if delimiter not in symbols or DELIMITER in symbols:
        problem = (f"is none of {where}'s symbols" if delimiter not in symbols else
                   f"and {DELIMITER!r} is another symbol: earful's decoder has {DELIMITER!r} as the delimiter")
        raise CheckpointError(f"{d / TOKENIZER}: word_delimiter_token={delimiter!r} {problem}")
    log.info("%s: the word delimiter %r becomes earful's %r", d / TOKENIZER, delimiter, DELIMITER)
    return [DELIMITER if s == delimiter else s for s in symbols]


def special_tokens(hf_dir: str | Path, symbols: list[str]) -> dict[str, str]:
    """The tokenizer's unknown, start and end tokens that are symbols of ``symbols``, by role
    (``{"unk_token": "[UNK]"}``), from ``tokenizer_config.json``: what import-hf records and export-hf names
    again (:func:`tokenizer_config`)."""
    settings = _tokenizer_settings(Path(hf_dir))
    out = {}
    for role in _SPECIAL:
        name = settings.get(role)
        name = name.get("content") if isinstance(name, dict) else name  # an AddedToken, serialised
        if isinstance(name, str) and name in symbols:
            out[role] = name
    return out


def read_text_mapping(hf_dir: str | Path) -> dict[str, str] | None:
    """The text mapping export-hf kept in ``config.json`` (``earful_text_mapping``), checked; None without one."""
    where = Path(hf_dir) / HF_CONFIG
    mapping = read_json(where).get(TEXT_MAPPING)
    if mapping is None:
        return None
    try:
        return check_mapping(mapping, f"{where}: {TEXT_MAPPING}")
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _usable_vocab(symbols: list[str], where: Path) -> None:
    """Refuse a vocabulary that ``earful evaluate`` and ``transcribe`` could not read, read as they read it."""
    from earful.eval.evaluate import vocab_from_checkpoint

    if DELIMITER not in symbols:
        raise CheckpointError(f"{where}: no word delimiter {DELIMITER!r} (nor another that {TOKENIZER}'s "
                              "word_delimiter_token names): earful's decoder needs the symbol between words")
    try:
        vocab_from_checkpoint({"symbols": symbols}, str(where))
    except ValueError as e:
        raise CheckpointError(f"{where}: {e} (as earful's decoder reads it: evaluate and transcribe could not use "
                              "it)") from None


def training_settings_given(init: str | Path) -> bool | None:
    """Whether the transformers folder ``init`` holds earful's training settings (:data:`TRAINING`, written by
    ``export-hf``); None where ``init`` is no transformers folder (an earful checkpoint or run)."""
    path = Path(init)
    if (path / INFO_FILE).exists() or not (path / HF_CONFIG).is_file():
        return None
    return TRAINING in read_hf_config(path)


def hf_model_config(hf_dir: str | Path) -> ModelConfig:
    """The earful model settings of a transformers folder (``config.json`` and its feature extractor's
    normalisation), without reading its weights; a folder without a feature extractor is not warned of here
    (``import_hf`` warns, when the weights load)."""
    return _model_config(read_hf_config(Path(hf_dir)), hf_dir, warn=False)


def _model_config(hf_cfg: dict[str, Any], hf_dir: str | Path, *, warn: bool) -> ModelConfig:
    try:
        cfg = config_from_hf(hf_cfg, str(Path(hf_dir) / HF_CONFIG))
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    # the waveform normalisation is the feature extractor's, not the model config's
    extractor = read_feature_extractor(hf_dir)
    if extractor is not None:  # transformers' Wav2Vec2FeatureExtractor normalises unless told otherwise
        cfg.normalize_waveform = bool(extractor[0].get("do_normalize", True))
    elif warn:  # no command takes normalize_waveform for an imported model: the folder's feature extractor says it
        log.warning("%s: no %s nor %s; assuming the model takes unnormalised waveforms. If it was trained on "
                    "normalised ones (each utterance zero mean, unit variance: fairseq's normalize: true, the LARGE "
                    "recipes), write %s holding %s and run the command again", hf_dir, PREPROCESSOR, PROCESSOR,
                    Path(hf_dir) / PREPROCESSOR, json.dumps(NORMALISING_EXTRACTOR))
    return cfg


def blank_first(blank: int, outputs: int) -> list[int]:
    """The order of a transformers CTC head's outputs in earful's model: the blank (``pad_token_id``) first,
    the others as they were (earful's CTC blank is index 0)."""
    return [blank, *(i for i in range(outputs) if i != blank)]


def ctc_vocab(hf_dir: str | Path, outputs: int) -> list[str]:
    """A transformers CTC folder's vocabulary in the order :func:`import_hf` gives its head (:func:`blank_first`),
    without reading the weights: what a fine-tuning with ``vocab=init`` from the folder trains."""
    blank = _blank(read_hf_config(Path(hf_dir)))
    symbols = read_vocab(hf_dir, outputs)
    return [symbols[i] for i in blank_first(blank, outputs)] if blank in range(outputs) else symbols


def write_checkpoint(hf_dir: str | Path, ckpt: str | Path, *, trust_pickle: bool = False,
                     source: str | None = None) -> None:
    """Import the transformers folder ``hf_dir`` into the earful checkpoint folder ``ckpt`` (written whole, or
    left as it was), as import-hf does: a CTC model with its vocabulary, the tokenizer's special tokens and the
    text mapping export-hf kept, which export-hf names again. ``model.json`` records what it was imported from
    (``source``, by default ``hf_dir``: a folder, absolute, or a Hub snapshot's), which marks the folder as an
    import that a later one may replace."""
    model, symbols = import_hf(hf_dir, trust_pickle=trust_pickle, need_vocab=True)
    vocab = None
    if symbols is not None:
        tokens = special_tokens(hf_dir, symbols)
        mapping = read_text_mapping(hf_dir)
        vocab = {"symbols": symbols, **({"tokens": tokens} if tokens else {})}
        if mapping:
            vocab["mapping"] = mapping
    with atomic_folder(ckpt) as tmp:  # the new checkpoint's files, or what was there before
        save_model(tmp, model, vocab=vocab, extra={IMPORTED_FROM: source or str(Path(hf_dir).resolve())})


def import_hf(hf_dir: str | Path, *, trust_pickle: bool = False, need_vocab: bool = False,
              backbone_only: bool = False) -> tuple[torch.nn.Module, list[str] | None]:
    """Build an earful model from a HF folder; returns the model and the CTC vocabulary if any (``vocab.json``
    with the tokenizer's added tokens, checked against the head; ``need_vocab``: a CTC folder without one, or
    with one earful's decoder cannot read, is refused, as an earful checkpoint of a CTC model needs it).
    ``trust_pickle`` lets a ``pytorch_model.bin`` unpickle arbitrary objects (only for trusted files).
    ``backbone_only`` (a fine-tuning's init, which keeps the backbone alone): a bare ``Wav2Vec2Model`` is taken
    too, as a pre-training model whose quantizer and projections are freshly initialised."""
    hf_cfg, weights = read_hf_folder(hf_dir, trust_pickle=trust_pickle, backbone_only=backbone_only)
    where = str(Path(hf_dir) / HF_CONFIG)
    cfg = _model_config(hf_cfg, hf_dir, warn=True)
    other_head = _other_head(hf_cfg) is not None
    if backbone_only and (_bare(weights) or other_head):  # the backbone, and fresh heads that will not be used
        heads = to_hf_state_dict(Wav2Vec2ForPreTraining(cfg).state_dict(), cfg, "pretraining")
        backbone = {f"wav2vec2.{k}": v for k, v in weights.items()} if _bare(weights) else {
            k: v for k, v in weights.items() if k.startswith("wav2vec2.")}
        left = sorted({k.split(".")[0] for k in weights if not k.startswith("wav2vec2.")}) if other_head else []
        weights = {**backbone, **{h: heads[h] for _, h in _head_pairs("pretraining")}}
        log.info("%s: %s: its backbone%s", hf_dir, "a bare Wav2Vec2Model" if not other_head else
                 f"a {', '.join(hf_cfg['architectures'])}", f" (its {', '.join(left)} left out)" if left else "")
    is_ctc = "lm_head.weight" in weights
    kind = "ctc" if is_ctc else "pretraining"
    vocab_size = int(weights["lm_head.weight"].shape[0]) if is_ctc else None
    layers = {int(m.group(1)) for k in weights if (m := _LAYER.search(k))}
    if len(layers) != cfg.num_layers:  # before anything per layer is made: a hostile config can ask for millions
        raise CheckpointError(f"{where}: num_hidden_layers={cfg.num_layers}, the weights hold {len(layers)} layers")
    state = from_hf_state_dict(weights, cfg, kind, str(Path(hf_dir)))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    shapes.setdefault("wav2vec2.mask_emb", (cfg.hidden_size,))  # optional in transformers' folders
    check_sizes(kind, cfg, vocab_size, shapes, where)  # every shape, on the meta device, before allocating
    vocab: list[str] | None = None
    blank = _blank(hf_cfg)
    model: torch.nn.Module
    vocab_path = Path(hf_dir) / VOCAB
    if is_ctc:
        if vocab_path.exists():
            vocab = read_vocab(hf_dir, vocab_size)  # type: ignore[arg-type]
        elif need_vocab:
            raise CheckpointError(f"{vocab_path}: missing: a CTC model's checkpoint needs its vocabulary (the "
                                  "tokenizer's {symbol: id} mapping)")
        if blank not in range(vocab_size):  # type: ignore[arg-type]
            raise CheckpointError(f"{where}: pad_token_id={blank} (the CTC blank) is not one of the head's "
                                  f"{vocab_size} outputs")
        model = Wav2Vec2ForCTC(cfg, vocab_size)  # type: ignore[arg-type]
    else:
        model = Wav2Vec2ForPreTraining(cfg)
    if is_ctc and blank != 0:
        order = blank_first(blank, vocab_size)  # type: ignore[arg-type]
        state["lm_head.weight"], state["lm_head.bias"] = state["lm_head.weight"][order], state["lm_head.bias"][order]
        if vocab is not None:
            vocab = [vocab[i] for i in order]
        log.info("%s: CTC blank %r (pad_token_id=%d) moved to index 0", hf_dir, vocab[0] if vocab else blank, blank)
    if vocab is not None and need_vocab:
        _usable_vocab(vocab, vocab_path)
    if "wav2vec2.mask_emb" not in state:
        log.info("%s: no masked_spec_embed (the model was saved without masking); the mask embedding keeps "
                 "its fresh U(0, 1) initialisation", hf_dir)
        state["wav2vec2.mask_emb"] = model.state_dict()["wav2vec2.mask_emb"]
    model.load_state_dict(state, strict=True)
    return model, vocab
