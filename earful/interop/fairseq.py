"""fairseq's wav2vec 2.0 checkpoints into earful checkpoints, without fairseq and without running the file's code.

A fairseq checkpoint (``checkpoint_best.pt``, the released ``wav2vec_small.pt``, a fine-tuned
``wav2vec_small_960h.pt``) is a pickle: the model's tensors (``model``), its settings (``cfg``, a plain dict since
fairseq 0.10's hydra; ``args``, an ``argparse.Namespace``, before) and the training's leftovers (meters, optimizer
state, iterator positions). It is read with torch's ``weights_only`` unpickler, which builds tensors and plain
containers only; ``argparse.Namespace`` (an attribute bag) is allowed, and every other class the file names (a
meter, a numpy scalar) is read as an inert stand-in that keeps nothing (:class:`Unread`): nothing the file names is
imported or run, and only ``model`` and the settings are used.

The tensors are renamed to transformers' layout (one line per tensor: the names of transformers' conversion
script, ``convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py``) and the settings written as a transformers
``config.json`` with earful's training settings (fairseq's Gumbel temperatures, feature gradient scale and loss
weights), into a temporary transformers folder that import-hf then reads with all its checks: so an imported
fairseq model is exactly the transformers model that script would make, and earful's checkpoint of it. A
fine-tuned (CTC) checkpoint holds no vocabulary: its letters are fairseq's dictionary file (``dict.ltr.txt`` of the
fine-tuning's data folder), after fairseq's four special symbols; the CTC blank is ``<s>`` (index 0), as fairseq's
decoders take it, renamed ``<pad>`` as transformers' converted models name it.
"""

from __future__ import annotations

import argparse
import ast
import logging
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from earful.atomic import atomic_write_json
from earful.checkpoint import CheckpointError, atomic_save_tensors
from earful.eval.vocab import DELIMITER
from earful.interop.hf import (
    HF_CONFIG,
    MODEL_FILE,
    NORMALISING_EXTRACTOR,
    PREPROCESSOR,
    TOKENIZER,
    VOCAB,
    tokenizer_config,
    write_checkpoint,
)

log = logging.getLogger(__name__)

PRETRAINING, CTC = "wav2vec2", "wav2vec_ctc"  # fairseq's model names (cfg.model._name, args.arch)
FINETUNED_PREFIX = "w2v_encoder.w2v_model."  # a CTC model's backbone, inside fairseq's Wav2VecEncoder
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's Dictionary: bos (the CTC blank), pad, eos, unk
# modules whose names a fairseq checkpoint never holds: a file naming them was made to run code (read as stand-ins
# they would run nothing, but such a file is refused, not half read); torch refuses sys, os, posix and nt itself
SUSPECT = ("builtins", "subprocess", "shutil", "socket", "importlib", "runpy", "pty", "webbrowser", "code", "sys",
           "os", "posix", "nt")
MAX_TRIES = 64  # classes a file may name that are read as stand-ins (a fairseq file names a handful)


class Unread:
    """What any class a fairseq file names, but ``argparse.Namespace``, is read as: built from anything, it keeps
    nothing. Only ``model`` and the settings are read, and they hold none."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __new__(cls, *args: Any, **kwargs: Any) -> Unread:
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        pass


def read_fairseq(path: str | Path) -> dict[str, Any]:
    """The pickled dict of the fairseq checkpoint ``path``, read with ``weights_only`` (see the module's
    docstring); a CheckpointError naming the file where it is none."""
    stand_ins: list[tuple[Any, str]] = [(argparse.Namespace, "argparse.Namespace")]
    try:  # a zip-format file's names, read without unpickling: one pass (the legacy format: found one a try)
        listed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - the legacy format, or no PyTorch file: the load below says which
        listed = []
    stand_ins += [(Unread, _harmless(name, path)) for name in listed if name != "argparse.Namespace"]
    for _ in range(MAX_TRIES):
        try:
            with torch.serialization.safe_globals(stand_ins):
                state = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as e:
            named = re.search(r"GLOBAL ([\w.]+)", str(e))
            if named is None:  # no class named: a plain pickle (an opcode torch's files have not) or a damaged file
                why = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
                raise CheckpointError(f"{path}: unreadable as a PyTorch file (damaged, or not one): "
                                      f"{why.group(1) if why else str(e).splitlines()[0]}") from None
            if "is blocked" in str(e):
                raise _made_to_run_code(named.group(1), path) from None
            stand_ins.append((Unread, _harmless(named.group(1), path)))
        except (RuntimeError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable as a PyTorch file: {e}") from None
        except EOFError:
            raise CheckpointError(f"{path}: unreadable as a PyTorch file: it ends early (empty or cut short)") \
                from None
        except Exception as e:  # noqa: BLE001 - what torch's reader raises on other bytes varies (KeyError, ...)
            raise CheckpointError(f"{path}: unreadable as a PyTorch file (damaged, or not one): "
                                  f"{type(e).__name__}: {e}") from None
    else:
        raise CheckpointError(f"{path}: names over {MAX_TRIES} classes: not a fairseq checkpoint")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: no 'model' state dict: not a fairseq checkpoint")
    log.debug("%s: read, the classes %s as stand-ins", path, [name for _, name in stand_ins[1:]])
    return state


def _harmless(name: str, path: str | Path) -> str:
    """``name``, a global the file names, where a fairseq checkpoint may name it; else a CheckpointError: a file
    naming ``os.system`` or ``shutil.rmtree`` was made to run code (as a stand-in it would run nothing, but such a
    file is refused, not half read)."""
    if name.split(".")[0] in SUSPECT:
        raise _made_to_run_code(name, path)
    return name


def _made_to_run_code(name: str, path: str | Path) -> CheckpointError:
    """The refusal of a file naming the global ``name``, which no fairseq checkpoint names (torch blocks it, or
    :data:`SUSPECT`)."""
    return CheckpointError(f"{path}: refused: it names GLOBAL {name}, which no fairseq checkpoint does (a file made "
                           "to run code when loaded?); nothing of it was run")


def _plain(settings: Any) -> dict[str, Any]:
    """A Namespace or dict of settings as a dict (None: {})."""
    if settings is None:
        return {}
    return dict(vars(settings)) if isinstance(settings, argparse.Namespace) else dict(settings)


def fairseq_settings(state: dict[str, Any], where: str) -> tuple[str, dict[str, Any], dict[str, Any],
                                                                   dict[str, Any], dict[str, Any]]:
    """``(name, model, task, criterion, finetuning)``: fairseq's model name and the settings of its model (for a
    CTC model, those of the pre-trained model it wraps), task and criterion, and a CTC model's own settings
    (``{}`` for a pre-trained one), from ``cfg`` (fairseq ≥ 0.10) or ``args`` (before)."""
    if state.get("cfg"):
        cfg = _plain(state["cfg"])
        model, task, criterion = _plain(cfg.get("model")), _plain(cfg.get("task")), _plain(cfg.get("criterion"))
        name = model.get("_name", "")
    elif state.get("args") is not None:
        args = _plain(state["args"])
        model, task, criterion, name = args, args, args, args.get("arch", "")
    else:
        raise CheckpointError(f"{where}: neither 'cfg' nor 'args': no settings to build the model from")
    if not name.startswith((PRETRAINING, CTC)):
        raise CheckpointError(f"{where}: a fairseq {name or 'unnamed'!r} model; earful imports wav2vec 2.0 "
                              f"({PRETRAINING}, {CTC}) alone")
    if not name.startswith(CTC):
        return PRETRAINING, model, task, criterion, {}
    inner = model.get("w2v_args")
    if inner is None:
        raise CheckpointError(f"{where}: a {CTC} model without w2v_args (the pre-trained model's settings)")
    inner_cfg = _plain(inner)
    if "model" in inner_cfg:  # fairseq >= 0.10: the pre-training's whole cfg
        return CTC, _plain(inner_cfg["model"]), _plain(inner_cfg.get("task")), {}, model
    return CTC, inner_cfg, inner_cfg, {}, model  # before: the pre-training's args


def conv_layers(text: str, where: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers``, e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"``, read
    as literals joined by ``+`` and repeated by ``* N`` (no code is evaluated)."""
    layers: list[tuple[int, int, int]] = []
    try:
        for term in text.split("+"):
            literal, _, times = term.partition("]")
            value = ast.literal_eval(literal + "]")
            repeat = int(times.replace("*", "").strip() or 1) if times.strip() else 1
            layers += [tuple(int(x) for x in layer) for layer in value] * repeat  # type: ignore[misc]
    except (ValueError, SyntaxError, TypeError) as e:
        raise CheckpointError(f"{where}: conv_feature_layers {text!r} is no list of (dim, kernel, stride): "
                              f"{e}") from None
    if not layers or any(len(layer) != 3 for layer in layers):
        raise CheckpointError(f"{where}: conv_feature_layers {text!r} is no list of (dim, kernel, stride)")
    return layers


# fairseq's Wav2Vec2Config defaults (fairseq/models/wav2vec/wav2vec2.py) for every setting read here: a checkpoint
# whose settings leave one out was saved with that default
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
    "dropout_features": 0.0, "final_dim": 0, "layer_norm_first": False,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]", "conv_bias": False,
    "logit_temp": 0.1, "quantize_targets": False, "quantize_input": False, "same_quantizer": False,
    "target_glu": False, "feature_grad_mult": 1.0, "quantizer_depth": 1, "latent_vars": 320, "latent_groups": 2,
    "latent_dim": 0, "mask_length": 10, "mask_prob": 0.65, "mask_selection": "static", "mask_channel_length": 10,
    "mask_channel_prob": 0.0, "mask_channel_selection": "static", "num_negatives": 100,
    "negatives_from_everywhere": False, "cross_sample_negatives": 0, "codebook_negatives": 0, "conv_pos": 128,
    "conv_pos_groups": 16, "pos_conv_depth": 1, "latent_temp": (2, 0.5, 0.999995), "require_same_masks": True,
    "crop_seq_to_multiple": 1,
}  # fmt: skip
# what earful's wav2vec 2.0 cannot be: (setting, the value it must have, why)
_MUST = (
    ("layer_type", "transformer", "earful's layers are transformer layers (no conformer)"),
    ("pos_conv_depth", 1, "earful's positional embedding is one convolution"),
    ("quantize_input", False, "earful quantizes the targets, not the transformer's input"),
    ("same_quantizer", False, "earful has one quantizer"),
    ("target_glu", False, "earful projects the targets without a GLU"),
    ("quantizer_depth", 1, "earful's quantizer projects with one linear layer"),
    ("crop_seq_to_multiple", 1, "earful's transformer reads every CNN frame (fairseq drops the last ones to a "
                                "multiple)"),
    ("activation_fn", "gelu", "fairseq's CNN is GELU's, and earful uses one activation for the CNN and the "
                              "transformer"),
)
# fairseq's pre-training settings earful's training has not: imported, they do not travel (a warning names them)
_NOT_KEPT = ("negatives_from_everywhere", "cross_sample_negatives", "codebook_negatives", "mask_selection",
             "mask_channel_selection")


def hf_config_from_fairseq(name: str, model: dict[str, Any], criterion: dict[str, Any],
                           finetuning: dict[str, Any], where: str) -> dict[str, Any]:
    """A transformers ``config.json`` (with earful's training settings) of the fairseq model whose settings
    :func:`fairseq_settings` gave. A CTC model's training settings (dropouts, masks, LayerDrop, the CNN's gradient
    scale) are its fine-tuning's, as fairseq's Wav2VecEncoder overrides the pre-trained model's with them."""

    def get(key: str) -> Any:
        value = model.get(key)
        return FAIRSEQ_DEFAULTS[key] if value is None else value

    def trained(key: str, finetuning_key: str | None = None) -> Any:  # a CTC model's: its fine-tuning's setting
        value = finetuning.get(finetuning_key or key)
        return get(key) if value is None else value

    for key, must, why in _MUST:
        if get(key) != must:
            raise CheckpointError(f"{where}: {key}={get(key)!r}: {why}, so earful cannot import this model")
    if name == PRETRAINING and not get("quantize_targets"):
        raise CheckpointError(f"{where}: quantize_targets=false (the targets are projected CNN features): earful's "
                              "pre-training quantizes them, so it has no model for this one")
    odd = [f"{k}={get(k)!r}" for k in _NOT_KEPT if get(k) != FAIRSEQ_DEFAULTS[k]]
    if odd and name == PRETRAINING:
        log.warning("%s: %s: fairseq training settings earful has not; a pre-training continued in earful does "
                    "without them (the model is exact)", where, ", ".join(odd))
    layers = conv_layers(get("conv_feature_layers"), where)
    hidden = int(get("encoder_embed_dim"))
    final_dim = int(get("final_dim")) or hidden
    temperature = _numbers(get("latent_temp"), "latent_temp", 3, where)
    # fairseq's BASE and LARGE recipes' loss weights (wav2vec2_base.yaml) where the criterion's are not saved
    weights = _numbers(criterion.get("loss_weights") or [0.1, 10], "loss_weights", None, where)
    return {
        "model_type": "wav2vec2",
        "architectures": ["Wav2Vec2ForCTC" if name == CTC else "Wav2Vec2ForPreTraining"],
        "conv_dim": [d for d, _, _ in layers], "conv_kernel": [k for _, k, _ in layers],
        "conv_stride": [s for _, _, s in layers], "num_feat_extract_layers": len(layers),
        "conv_bias": bool(get("conv_bias")),
        "feat_extract_norm": "layer" if get("extractor_mode") == "layer_norm" else "group",
        "feat_extract_activation": "gelu", "hidden_act": "gelu",
        "hidden_size": hidden, "num_hidden_layers": int(get("encoder_layers")),
        "num_attention_heads": int(get("encoder_attention_heads")),
        "intermediate_size": int(get("encoder_ffn_embed_dim")), "layer_norm_eps": 1e-5,
        "do_stable_layer_norm": bool(get("layer_norm_first")),
        "num_conv_pos_embeddings": int(get("conv_pos")), "num_conv_pos_embedding_groups": int(get("conv_pos_groups")),
        "hidden_dropout": float(trained("dropout")), "attention_dropout": float(trained("attention_dropout")),
        "activation_dropout": float(trained("activation_dropout")),
        "feat_proj_dropout": float(trained("dropout_input")), "feat_quantizer_dropout": float(get("dropout_features")),
        "final_dropout": float(finetuning.get("final_dropout") or 0.0),
        "layerdrop": float(trained("encoder_layerdrop", "layerdrop")),
        "apply_spec_augment": True,
        "mask_time_prob": float(trained("mask_prob")), "mask_time_length": int(trained("mask_length")),
        "mask_time_min_masks": 2,  # fairseq's wav2vec 2.0 masks with min_masks=2
        "mask_feature_prob": float(trained("mask_channel_prob")),
        "mask_feature_length": int(trained("mask_channel_length")), "mask_feature_min_masks": 0,
        "num_codevector_groups": int(get("latent_groups")), "num_codevectors_per_group": int(get("latent_vars")),
        "codevector_dim": int(get("latent_dim")) or final_dim, "proj_codevector_dim": final_dim,
        "contrastive_logits_temperature": float(get("logit_temp")), "num_negatives": int(get("num_negatives")),
        "diversity_loss_weight": float(weights[0]), "pad_token_id": 0,
        "earful_training": {
            "feature_grad_mult": float(trained("feature_grad_mult")),
            "require_same_masks": bool(trained("require_same_masks")),
            "temperature_start": float(temperature[0]), "temperature_end": float(temperature[1]),
            "temperature_decay": float(temperature[2]),
            "feature_penalty_weight": float(weights[1]) if len(weights) > 1 else 0.0,
        },
    }  # fmt: skip


def _numbers(value: Any, key: str, count: int | None, where: str) -> list[float]:
    """A setting of numbers (``latent_temp``, ``loss_weights``), saved as a list or, by fairseq's argparse
    versions, as its text (``"(2,0.5,0.999995)"``), read as a literal (no code is evaluated)."""
    try:
        if isinstance(value, str):
            value = ast.literal_eval(value)
        numbers = [float(x) for x in value]
    except (ValueError, SyntaxError, TypeError):
        raise CheckpointError(f"{where}: {key}={value!r} is no list of numbers") from None
    if count is not None and len(numbers) != count or not numbers:
        raise CheckpointError(f"{where}: {key}={value!r}: expected {count or 'some'} numbers")
    return numbers


# fairseq's tensor names (less a CTC model's FINETUNED_PREFIX) -> transformers' (Wav2Vec2ForPreTraining's, whose
# backbone Wav2Vec2ForCTC shares): transformers' conversion script's mapping, one rule a module
_RENAME = [(re.compile(pattern), to) for pattern, to in (
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"wav2vec2.feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.(?:1\.)?(weight|bias)",  # group norm (layer 0); layer norm
     r"wav2vec2.feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"wav2vec2.feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"wav2vec2.feature_projection.projection.\1"),
    (r"mask_emb", "wav2vec2.masked_spec_embed"),
    (r"encoder\.pos_conv\.0\.(weight_g|weight_v|bias|parametrizations\.weight\.original[01])",
     r"wav2vec2.encoder.pos_conv_embed.conv.\1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"wav2vec2.encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv]|out)_proj\.(weight|bias)",
     r"wav2vec2.encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"wav2vec2.encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"wav2vec2.encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"wav2vec2.encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"wav2vec2.encoder.layers.\1.final_layer_norm.\2"),
    (r"quantizer\.vars", "quantizer.codevectors"),
    (r"quantizer\.weight_proj\.(weight|bias)", r"quantizer.weight_proj.\1"),
    (r"project_q\.(weight|bias)", r"project_q.\1"),
    (r"final_proj\.(weight|bias)", r"project_hid.\1"),
)]  # fmt: skip


def hf_weights_from_fairseq(weights: dict[str, torch.Tensor], name: str, hidden_size: int,
                            where: str) -> dict[str, torch.Tensor]:
    """The fairseq ``model`` tensors of a ``name`` model under transformers' names; a tensor no rule knows is
    refused, naming it (earful would make another model than fairseq's without it). A model whose CNN output has
    the transformer's width has no ``post_extract_proj`` in fairseq: it becomes the identity, which is exact."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in weights.items():
        if name == CTC and key in ("w2v_encoder.proj.weight", "w2v_encoder.proj.bias"):
            out[f"lm_head.{key.rsplit('.', 1)[1]}"] = value
            continue
        inner = key[len(FINETUNED_PREFIX):] if name == CTC and key.startswith(FINETUNED_PREFIX) else None
        inner = key if name == PRETRAINING else inner
        hf = next((rule.sub(to, inner) for rule, to in _RENAME if inner is not None and rule.fullmatch(inner)), None)
        if hf is None:
            unknown.append(key)
        else:
            out[hf] = value
    if unknown:
        raise CheckpointError(f"{where}: {len(unknown)} tensors earful's wav2vec 2.0 has no place for, e.g. "
                              f"{unknown[:3]}: importing without them would give another model than fairseq's")
    projection = "wav2vec2.feature_projection.projection"
    norm = out.get("wav2vec2.feature_projection.layer_norm.weight")
    if f"{projection}.weight" not in out and norm is not None and norm.numel() == hidden_size:
        out[f"{projection}.weight"] = torch.eye(hidden_size, dtype=norm.dtype)
        out[f"{projection}.bias"] = torch.zeros(hidden_size, dtype=norm.dtype)
    return out


def fold_blank_weight(weights: dict[str, torch.Tensor], finetuning: dict[str, Any], where: str) -> None:
    """Fold a CTC model's ``blank_weight`` into its head's ``weights``: fairseq's Wav2VecCtc adds it to the logit
    of index 0 (``blank_mode`` "add") or sets that logit to it ("set") on every output, which earful's head gives
    with the bias (and, for "set", a zero weight row)."""
    blank_weight = float(finetuning.get("blank_weight") or 0.0)
    mode = finetuning.get("blank_mode") or "add"
    if blank_weight == 0:
        return
    weight, bias = weights["lm_head.weight"].clone(), weights["lm_head.bias"].clone()
    if mode == "add":
        bias[0] += blank_weight
    elif mode == "set":
        weight[0], bias[0] = 0.0, blank_weight
        log.warning("%s: blank_mode=set: the blank's logit is the constant %g, as its head's bias with a zero "
                    "weight row; a fine-tuning continued in earful trains that row", where, blank_weight)
    else:
        raise CheckpointError(f"{where}: blank_mode={mode!r}: fairseq knows 'add' and 'set' alone")
    weights["lm_head.weight"], weights["lm_head.bias"] = weight, bias


def read_dictionary(path: str | Path) -> list[str]:
    """The symbols of fairseq's ``Dictionary`` saved in ``path`` (``dict.ltr.txt``: a line ``SYMBOL COUNT`` each,
    perhaps with ``#fairseq:overwrite``, which adds a symbol not there yet), after its four special symbols, in
    fairseq's order (its ids)."""
    symbols = list(SPECIALS)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable fairseq dictionary: {e}") from None
    if lines and lines[0].startswith("\ufeff"):  # fairseq would read it as part of the first symbol
        raise CheckpointError(f"{path}: starts with a byte-order mark (U+FEFF, as some editors save UTF-8), which "
                              "fairseq reads as part of the first symbol: the dictionary of its model has none; save "
                              "it without one")
    for number, line in enumerate(lines, 1):
        words = line.rstrip().split(" ")
        overwrite = words[-1] == "#fairseq:overwrite"
        if overwrite:
            words = words[:-1]
        if len(words) < 2 or not words[-1].lstrip("-").isdigit():
            raise CheckpointError(f"{path}:{number}: {line!r} is no 'SYMBOL COUNT' line of a fairseq dictionary")
        symbol = " ".join(words[:-1])
        if symbol in symbols and not overwrite:
            raise CheckpointError(f"{path}:{number}: {symbol!r} twice (fairseq refuses it too)")
        if symbol in symbols:  # fairseq gives it a second id (its CTC head an output more), the first kept
            raise CheckpointError(f"{path}:{number}: {symbol!r} again, with #fairseq:overwrite: fairseq gives it a "
                                  "second id, and an earful (or transformers) vocabulary has one id a symbol")
        symbols.append(symbol)
    return symbols


def ctc_vocabulary(symbols: list[str], outputs: int, dictionary: str | Path) -> tuple[list[str], int]:
    """The CTC head's symbols as a transformers tokenizer names them, and the blank's id: fairseq's blank is
    ``<ctc_blank>`` where the dictionary has it, else ``<s>`` (index 0), named ``<pad>`` (and fairseq's ``<pad>``,
    which the model never emits, ``<s>``), as transformers' converted models name them."""
    if len(symbols) != outputs:
        raise CheckpointError(f"{dictionary}: {len(symbols) - len(SPECIALS)} symbols and fairseq's "
                              f"{len(SPECIALS)} special ones make {len(symbols)}, and the CTC head has {outputs} "
                              "outputs: the dictionary of another fine-tuning?")
    if "<ctc_blank>" in symbols:
        return symbols, symbols.index("<ctc_blank>")
    if DELIMITER not in symbols:
        raise CheckpointError(f"{dictionary}: no word delimiter {DELIMITER!r}: not a letter dictionary "
                              "(dict.ltr.txt) of a wav2vec 2.0 fine-tuning")
    return ["<pad>", "<s>", *symbols[2:]], 0


def write_hf_folder(state: dict[str, Any], folder: Path, dictionary: str | Path | None, where: str) -> str:
    """Write the fairseq checkpoint ``state`` as a transformers folder in ``folder``; its kind (``wav2vec2``,
    ``wav2vec_ctc``)."""
    name, model, task, criterion, finetuning = fairseq_settings(state, where)
    try:
        config = hf_config_from_fairseq(name, model, criterion, finetuning, where)
    except (ValueError, TypeError) as e:  # a setting not of its kind (a number's text that is none)
        raise CheckpointError(f"{where}: a model setting earful cannot read: {e}") from None
    weights = hf_weights_from_fairseq(state["model"], name, config["hidden_size"], where)
    normalize = finetuning.get("normalize", task.get("normalize", False))
    if name == CTC:
        fold_blank_weight(weights, finetuning, where)
        if dictionary is None:
            raise CheckpointError(f"{where}: a fine-tuned (CTC) model, whose letters fairseq keeps beside it: give "
                                  "the fine-tuning's dictionary with --dict (dict.ltr.txt, in its data folder)")
        symbols, blank = ctc_vocabulary(read_dictionary(dictionary), int(weights["lm_head.weight"].shape[0]),
                                        dictionary)
        config["pad_token_id"], config["vocab_size"] = blank, len(symbols)
        atomic_write_json(folder / VOCAB, {s: i for i, s in enumerate(symbols)})
        atomic_write_json(folder / TOKENIZER, {**tokenizer_config(symbols), "pad_token": symbols[blank]})
    elif dictionary is not None:
        raise CheckpointError(f"{where}: a pre-trained model has no letters: --dict is for a fine-tuned one")
    atomic_write_json(folder / HF_CONFIG, config)
    atomic_write_json(folder / PREPROCESSOR, {**NORMALISING_EXTRACTOR, "do_normalize": bool(normalize)})
    atomic_save_tensors(weights, folder / MODEL_FILE)
    return name


def import_fairseq(path: str | Path, ckpt: str | Path, *, dictionary: str | Path | None = None) -> str:
    """Import the fairseq checkpoint ``path`` into the earful checkpoint folder ``ckpt`` (written whole, or left
    as it was), through a transformers folder that import-hf reads; the model's kind, fairseq's name."""
    state = read_fairseq(path)
    with tempfile.TemporaryDirectory(prefix="earful-fairseq-") as tmp:
        name = write_hf_folder(state, Path(tmp), dictionary, str(path))
        del state
        write_checkpoint(tmp, ckpt, source=str(Path(path).resolve()))
    return name



