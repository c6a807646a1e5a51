"""Weights and configs to and from Hugging Face `transformers`' wav2vec 2.0 layout.

Export and import need no `transformers` install: a HF model folder is ``config.json`` plus
``model.safetensors`` (or a ``pytorch_model.bin`` read with ``weights_only=True``). The mapping is
explicit, one line per tensor, and round-trip tested; earful's fused QKV is split into HF's
q/k/v projections in that order.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from earful.atomic import atomic_write_json
from earful.checkpoint import (
    _LAYER,
    CheckpointError,
    atomic_save_tensors,
    check_sizes,
    model_kind,
    read_json,
    safe_torch_load,
)
from earful.eval.vocab import DELIMITER
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


def hf_config(cfg: ModelConfig, *, kind: str, vocab_size: int | None = None) -> dict[str, Any]:
    """A ``Wav2Vec2Config`` as a dict (what ``config.json`` holds)."""
    if cfg.conv_padding:
        raise ValueError("transformers' wav2vec 2.0 has no padded convolutions: conv_padding=true cannot be exported")
    if kind == "pretraining" and cfg.quantizer_input == "raw":
        log.warning("transformers quantizes the LayerNormed features; this model's quantizer reads the raw "
                    "CNN output, so the exported pre-training head differs (the backbone is exact)")
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
    try:
        return _hf_model_config(get, act, spec_augment)
    except (ValueError, TypeError) as e:  # a value earful's model cannot take (a null for a number: TypeError)
        message = str(e)
        named = (*_SAME_FIELDS, ("mask_prob", "mask_time_prob"), ("mask_channel_prob", "mask_feature_prob"),
                 *((k, k) for k in ("conv_dim", "conv_kernel", "conv_stride")))
        for ours, theirs in named:  # as config.json names it
            message = message.replace(f"model.{ours}=", f"{theirs}=", 1)
        raise ValueError(f"{where}: {message}") from None


def _hf_model_config(get: Any, act: str, spec_augment: bool) -> ModelConfig:
    from dataclasses import replace

    return replace(
        ModelConfig(),
        **{name: get(hf) for name, hf in _SAME_FIELDS},
        conv_dim=list(get("conv_dim")),
        conv_kernel=list(get("conv_kernel")),
        conv_stride=list(get("conv_stride")),
        conv_padding=False,
        activation=_ACT_FROM_HF[act],
        # apply_spec_augment false: transformers masks nothing, whatever the probabilities say
        mask_prob=get("mask_time_prob") if spec_augment else 0.0,
        mask_channel_prob=get("mask_feature_prob") if spec_augment else 0.0,
        quantizer_input="normed",
    )


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
        bare = not any(k.startswith("wav2vec2.") for k in hf) and any(k.startswith("feature_extractor.") for k in hf)
        raise CheckpointError(f"{where}: lacks {len(missing)} tensors, e.g. {missing[:3]}" + (
            " (its names have no 'wav2vec2.' prefix: a bare transformers Wav2Vec2Model; save a "
            "Wav2Vec2ForPreTraining or Wav2Vec2ForCTC)" if bare else ""))
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
def feature_extractor_config(cfg: ModelConfig) -> dict[str, Any]:
    """``preprocessor_config.json``: a ``Wav2Vec2FeatureExtractor``. ``return_attention_mask`` follows
    transformers' convention: false for a group-norm CNN (such models, wav2vec2-base among them, take a
    zero-padded batch without a mask), true for a layer-norm one. Either way one utterance at a time (the
    ASR pipeline's default) gives what earful gives in any batch; docs/batch-invariance.md has the rest."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "processor_class": "Wav2Vec2Processor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": cfg.normalize_waveform,
        "return_attention_mask": cfg.feat_extract_norm == "layer",
    }


def tokenizer_config(symbols: list[str]) -> dict[str, Any]:
    """``tokenizer_config.json``: a ``Wav2Vec2CTCTokenizer`` over ``vocab.json`` whose pad token is the CTC
    blank (index 0, dropped from transcripts) and whose word delimiter is ``|``, decoding as earful's greedy
    decoder does: no lower-casing, no clean-up of spaces around apostrophes. ``<s>``, ``</s>``, ``<unk>`` are
    named only when the vocabulary has them (an imported one), so the tokenizer adds no symbols."""
    if DELIMITER not in symbols:
        raise ValueError(f"the vocabulary has no word delimiter {DELIMITER!r}: {symbols}")
    return {
        "tokenizer_class": "Wav2Vec2CTCTokenizer",
        "processor_class": "Wav2Vec2Processor",
        "pad_token": symbols[0],
        "word_delimiter_token": DELIMITER,
        "replace_word_delimiter_char": " ",
        "unk_token": "<unk>" if "<unk>" in symbols else None,
        "bos_token": "<s>" if "<s>" in symbols else None,
        "eos_token": "</s>" if "</s>" in symbols else None,
        "do_lower_case": False,
        "clean_up_tokenization_spaces": False,
    }


def export_hf(model: torch.nn.Module, out_dir: str | Path, vocab_symbols: list[str] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` so that
    ``Wav2Vec2ForPreTraining/ForCTC.from_pretrained(out_dir)`` loads it; for a CTC model with its vocabulary
    also ``vocab.json`` and ``tokenizer_config.json``, which make the folder a whole processor:
    ``transformers.pipeline("automatic-speech-recognition", model=out_dir)`` transcribes with it."""
    kind = model_kind(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.cfg
    vocab_size = model.lm_head.out_features if kind == "ctc" else None
    if vocab_symbols is not None and len(vocab_symbols) != vocab_size:
        raise ValueError(f"{len(vocab_symbols)} vocabulary symbols for a model with {vocab_size} outputs")
    atomic_save_tensors(to_hf_state_dict(model.state_dict(), cfg, kind), out / "model.safetensors")
    atomic_write_json(out / "config.json", hf_config(cfg, kind=kind, vocab_size=vocab_size))
    atomic_write_json(out / "preprocessor_config.json", feature_extractor_config(cfg))
    if vocab_symbols is not None:
        atomic_write_json(out / "vocab.json", {s: i for i, s in enumerate(vocab_symbols)})
        atomic_write_json(out / "tokenizer_config.json", tokenizer_config(list(vocab_symbols)))
    else:
        for stale in ("vocab.json", "tokenizer_config.json"):  # an earlier export's: another model's tokenizer
            if (out / stale).exists():
                log.warning("%s: removed, an earlier export's (this model has no vocabulary)", out / stale)
                (out / stale).unlink()
        if kind == "ctc":
            log.warning("%s: no vocabulary given: the folder has no tokenizer (transformers' pipeline needs one)",
                        out)
    return out


def read_hf_folder(hf_dir: str | Path, *, trust_pickle: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``config.json`` and the weights: ``model.safetensors``, else ``pytorch_model.bin`` read with
    ``weights_only`` (a file that needs more is refused unless ``trust_pickle``)."""
    d = Path(hf_dir)
    cfg_path = d / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{d}: no config.json (not a transformers model folder)")
    hf_cfg = read_json(cfg_path)
    if not isinstance(hf_cfg, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object (a transformers config)")
    if hf_cfg.get("model_type") not in (None, "wav2vec2"):
        raise CheckpointError(f"{cfg_path}: model_type {hf_cfg.get('model_type')!r} is not wav2vec2")
    if (d / "model.safetensors").exists():
        try:
            weights = load_file(str(d / "model.safetensors"))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{d / 'model.safetensors'}: unreadable safetensors file: {e}") from e
    elif (d / "pytorch_model.bin").exists():
        if trust_pickle:
            log.warning("%s: unpickling without restrictions (--trust-pickle): this runs any code the file "
                        "holds", d / "pytorch_model.bin")
        loaded = safe_torch_load(d / "pytorch_model.bin", trust_pickle=trust_pickle)
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{d / 'pytorch_model.bin'}: not a state dict ({{name: tensor}})")
        weights = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if len(weights) < len(loaded):  # e.g. a fairseq-style "args" beside the tensors: not weights
            log.warning("%s: left out %d entries that are not tensors: %s", d / "pytorch_model.bin",
                        len(loaded) - len(weights), sorted(set(loaded) - set(weights))[:5])
    else:
        raise CheckpointError(f"{d}: no model.safetensors or pytorch_model.bin")
    return hf_cfg, weights


def read_vocab(path: Path, outputs: int) -> list[str]:
    """A ``Wav2Vec2CTCTokenizer``'s ``vocab.json`` ({symbol: id}) as the symbols in id order; the ids must be
    exactly 0 … outputs-1, one per output of the CTC head (a gap or a short file would put letters on
    the wrong outputs)."""
    mapping = read_json(path)
    if not isinstance(mapping, dict) or not all(type(i) is int for i in mapping.values()):
        raise CheckpointError(f"{path}: not a {{symbol: id}} mapping with integer ids (a multilingual "
                              "vocabulary, one mapping per language, is not supported)")
    ids = sorted(mapping.values())
    if ids != list(range(outputs)):
        missing = sorted(set(range(outputs)) - set(ids))
        extra = sorted({i for i in ids if not 0 <= i < outputs})
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        problems = [f"{name} {found[:5]}{' …' if len(found) > 5 else ''}"
                    for name, found in (("missing ids", missing), ("ids out of range", extra),
                                        ("repeated ids", repeated)) if found]
        raise CheckpointError(f"{path}: {len(mapping)} symbols for a CTC head with {outputs} outputs; the ids must "
                              f"be exactly 0…{outputs - 1} ({'; '.join(problems)})")
    return [s for s, _ in sorted(mapping.items(), key=lambda kv: kv[1])]


def import_hf(hf_dir: str | Path, *, trust_pickle: bool = False,
              need_vocab: bool = False) -> tuple[torch.nn.Module, list[str] | None]:
    """Build an earful model from a HF folder; returns the model and the CTC vocabulary if any (``vocab.json``,
    checked against the head; ``need_vocab``: a CTC folder without one is refused, as an earful checkpoint of
    a CTC model needs it). ``trust_pickle`` lets a ``pytorch_model.bin`` unpickle arbitrary objects (only for
    trusted files)."""
    hf_cfg, weights = read_hf_folder(hf_dir, trust_pickle=trust_pickle)
    where = str(Path(hf_dir) / "config.json")
    try:
        cfg = config_from_hf(hf_cfg, where)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    pre = Path(hf_dir) / "preprocessor_config.json"
    if pre.exists():  # the waveform normalisation is the feature extractor's, not the model config's
        # transformers' Wav2Vec2FeatureExtractor normalises unless told otherwise
        pre_cfg = read_json(pre)
        if not isinstance(pre_cfg, dict):
            raise CheckpointError(f"{pre}: not a JSON object (a transformers feature extractor config)")
        cfg.normalize_waveform = bool(pre_cfg.get("do_normalize", True))
    else:
        log.warning("%s: no preprocessor_config.json; assuming the model takes unnormalised waveforms "
                    "(set normalize_waveform if it was trained on normalised ones)", hf_dir)
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
    blank = int(hf_cfg.get("pad_token_id") or 0)  # transformers' CTC blank; earful's is index 0
    model: torch.nn.Module
    if is_ctc:
        vocab_path = Path(hf_dir) / "vocab.json"
        if vocab_path.exists():
            vocab = read_vocab(vocab_path, vocab_size)  # type: ignore[arg-type]
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
        order = [blank, *(i for i in range(state["lm_head.weight"].shape[0]) if i != blank)]
        state["lm_head.weight"], state["lm_head.bias"] = state["lm_head.weight"][order], state["lm_head.bias"][order]
        if vocab is not None:
            vocab = [vocab[i] for i in order]
        log.info("%s: CTC blank %r (pad_token_id=%d) moved to index 0", hf_dir, vocab[0] if vocab else blank, blank)
    if "wav2vec2.mask_emb" not in state:
        log.info("%s: no masked_spec_embed (the model was saved without masking); the mask embedding keeps "
                 "its fresh U(0, 1) initialisation", hf_dir)
        state["wav2vec2.mask_emb"] = model.state_dict()["wav2vec2.mask_emb"]
    model.load_state_dict(state, strict=True)
    return model, vocab
