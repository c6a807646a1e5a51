"""`earful import-fairseq`: fairseq wav2vec 2.0 checkpoints, made here as fairseq lays them out (its module names,
its settings in a Namespace or a hydra dict, the training's leftovers beside them), into earful checkpoints."""

import argparse
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from earful.checkpoint import CheckpointError, load_model
from earful.cli import main
from earful.interop.fairseq import conv_layers, read_fairseq
from earful.interop.hf import to_hf_state_dict
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, load_model_config

LETTERS = ["|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "W", "C", "F", "G", "Y", "P", "B",
           "V", "K", "'", "X", "J", "Q", "Z"]  # wav2vec_small_960h's dict.ltr.txt, in its order


class Meter:
    """A class of the training's, as fairseq's meters are: the file names it; earful must not need it."""

    def __init__(self) -> None:
        self.sum, self.count = 3.5, 7


def leave_a_mark(path: str) -> str:
    """What a hostile object in a checkpoint would call when unpickled."""
    Path(path).write_text("ran")
    return path


class Marking:
    """Unpickled by plain pickle, calls ``leave_a_mark``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return leave_a_mark, (self.path,)


def fairseq_state_dict(model: torch.nn.Module, kind: str, layer_norm: bool) -> dict[str, torch.Tensor]:
    """``model``'s tensors under fairseq's names (Wav2Vec2Model's modules; a CTC model's inside Wav2VecEncoder)."""
    cfg = model.cfg
    hf = to_hf_state_dict(model.state_dict(), cfg, "ctc" if kind == "ctc" else "pretraining")
    out = {}
    for k, v in hf.items():
        name = k.removeprefix("wav2vec2.")
        for pattern, to in (
            (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
            (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.",
             r"feature_extractor.conv_layers.\1.2.1." if layer_norm else r"feature_extractor.conv_layers.\1.2."),
            (r"feature_projection\.layer_norm\.", "layer_norm."),
            (r"feature_projection\.projection\.", "post_extract_proj."),
            (r"masked_spec_embed", "mask_emb"),
            (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
            (r"encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
            (r"encoder\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
            (r"\.attention\.", ".self_attn."),
            (r"layers\.(\d+)\.layer_norm\.", r"layers.\1.self_attn_layer_norm."),
            (r"feed_forward\.intermediate_dense", "fc1"),
            (r"feed_forward\.output_dense", "fc2"),
            (r"quantizer\.codevectors", "quantizer.vars"),
            (r"project_hid", "final_proj"),
        ):
            name = re.sub(pattern, to, name)
        if kind == "ctc":
            name = "w2v_encoder.proj." + name.split(".")[-1] if name.startswith("lm_head.") else \
                "w2v_encoder.w2v_model." + name
        out[name] = v.clone()
    return out


def fairseq_model_settings(cfg, **more) -> dict:
    """fairseq's Wav2Vec2Config of the earful model ``cfg`` (a checkpoint's settings hold every field)."""
    spec = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride,
                                                              strict=True))
    return {
        "_name": "wav2vec2", "extractor_mode": "layer_norm" if cfg.feat_extract_norm == "layer" else "default",
        "encoder_layers": cfg.num_layers, "encoder_embed_dim": cfg.hidden_size,
        "encoder_ffn_embed_dim": cfg.intermediate_size, "encoder_attention_heads": cfg.num_heads,
        "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1, "attention_dropout": 0.1,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.1, "dropout_features": 0.1,
        "final_dim": cfg.final_dim, "layer_norm_first": cfg.layer_norm_first, "conv_feature_layers": spec,
        "conv_bias": cfg.conv_bias, "logit_temp": 0.1, "quantize_targets": True, "quantize_input": False,
        "same_quantizer": False, "target_glu": False, "feature_grad_mult": 0.1, "quantizer_depth": 1,
        "quantizer_factor": 3, "latent_vars": cfg.num_codevectors_per_group, "latent_groups":
        cfg.num_codevector_groups, "latent_dim": cfg.codevector_dim, "mask_length": 10, "mask_prob": 0.65,
        "mask_selection": "static", "mask_other": 0.0, "no_mask_overlap": False, "mask_min_space": 1,
        "require_same_masks": True, "mask_channel_length": 10, "mask_channel_prob": 0.0,
        "mask_channel_selection": "static", "num_negatives": 100, "negatives_from_everywhere": False,
        "cross_sample_negatives": 0, "codebook_negatives": 0, "conv_pos": cfg.pos_conv_kernel,
        "conv_pos_groups": cfg.pos_conv_groups, "pos_conv_depth": 1, "latent_temp": [2.0, 0.25, 0.999995],
        **more,
    }


def leftovers(tmp_path: Path) -> dict:
    """What fairseq's trainer saves beside the model: meters (a class of its own), numpy scalars, optimizer state."""
    return {"optimizer_history": [{"criterion_name": "Wav2vecCriterion", "num_updates": 400000,
                                   "lr_scheduler_state": {"best": np.float64(2.5)}}],
            "extra_state": {"metrics": {"train": [("loss", 0, "AverageMeter", Meter())]},
                            "previous_training_time": np.float32(1234.5), "train_iterator": {"epoch": 3}},
            "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(2)}}}, "task_state": {}}


def settings_of(model: dict, style: str, task: dict, criterion: dict) -> dict:
    """The settings as a fairseq of ``style`` saves them: ``args`` (a Namespace) or ``cfg`` (a dict)."""
    if style == "args":  # fairseq's argparse kept tuples and lists of numbers as their text
        text = {k: str(tuple(v)) if k == "latent_temp" else str(v) for k, v in {**model, **criterion}.items()
                if k in ("latent_temp", "loss_weights")}
        return {"args": argparse.Namespace(**{**model, **task, **criterion, **text, "arch": model["_name"]})}
    return {"args": None, "cfg": {"model": model, "task": task, "criterion": criterion, "common": {"seed": 1}}}


@pytest.mark.parametrize("style, variant", [("args", []), ("cfg", ["feat_extract_norm=layer", "layer_norm_first=true",
                                                                    "conv_bias=true", "normalize_waveform=true"])])
def test_a_pretrained_fairseq_checkpoint_imports_exactly(style, variant, tmp_path, caplog) -> None:
    """A fairseq user's wav2vec_small.pt / checkpoint_best.pt could reach earful only through transformers'
    conversion script, which needs fairseq installed (and unpickles the file): import-fairseq reads its tensors
    and settings with nothing of the file run, and the earful model is the same tensor for tensor; the training
    settings (Gumbel temperatures, the loss weights, the CNN's gradient scale, normalisation) come with it."""
    torch.manual_seed(0)
    cfg = load_model_config("tiny", variant)
    model = Wav2Vec2ForPreTraining(cfg)
    settings = fairseq_model_settings(cfg)
    state = {"model": fairseq_state_dict(model, "pretraining", cfg.feat_extract_norm == "layer"),
             **settings_of(settings, style, {"normalize": style == "cfg", "_name": "audio_pretraining"},
                           {"loss_weights": [0.2, 5.0], "_name": "wav2vec"}), **leftovers(tmp_path)}
    torch.save(state, tmp_path / "checkpoint_best.pt")
    assert main(["import-fairseq", str(tmp_path / "checkpoint_best.pt"), str(tmp_path / "ckpt")]) == 0
    back, info = load_model(tmp_path / "ckpt")
    assert info["kind"] == "pretraining" and isinstance(back, Wav2Vec2ForPreTraining)
    mine = model.state_dict()
    assert set(back.state_dict()) == set(mine)
    for k, v in back.state_dict().items():
        assert torch.equal(v, mine[k]), k
    got = back.cfg
    for field in ("conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "hidden_size",
                  "num_layers", "num_heads", "intermediate_size", "layer_norm_first", "pos_conv_kernel",
                  "pos_conv_groups", "num_codevector_groups", "num_codevectors_per_group", "codevector_dim",
                  "final_dim"):
        assert getattr(got, field) == getattr(cfg, field), field
    assert (got.temperature_start, got.temperature_end, got.temperature_decay) == (2.0, 0.25, 0.999995)
    assert (got.diversity_weight, got.feature_penalty_weight, got.feature_grad_mult) == (0.2, 5.0, 0.1)
    assert (got.layerdrop, got.dropout_input, got.mask_prob, got.normalize_waveform) == (0.05, 0.1, 0.65,
                                                                                          style == "cfg")
    wave = torch.randn(1, 4000)
    model.eval(), back.eval()
    with torch.no_grad():
        assert torch.equal(model.wav2vec2(wave, None).hidden, back.wav2vec2(wave, None).hidden)


def test_a_fine_tuned_fairseq_checkpoint_imports_with_its_letters(tmp_path, caplog) -> None:
    """A fairseq CTC model (Wav2VecCtc: the backbone inside w2v_encoder, its head w2v_encoder.proj) holds no
    letters: they are the fine-tuning's dict.ltr.txt after fairseq's <s>, <pad>, </s>, <unk>, whose <s> is the
    CTC blank. The imported head keeps fairseq's order (blank first, as earful's), the vocabulary names the blank
    <pad> as transformers' converted models do, and the model's training settings are the fine-tuning's."""
    torch.manual_seed(1)
    cfg = load_model_config("tiny")
    model = Wav2Vec2ForCTC(cfg, vocab_size=4 + len(LETTERS))
    pretraining = fairseq_model_settings(cfg)
    finetuning = {"_name": "wav2vec_ctc", "w2v_path": "/gone/wav2vec_small.pt", "mask_prob": 0.5,
                  "mask_channel_prob": 0.1, "mask_channel_length": 64, "layerdrop": 0.1, "final_dropout": 0.0,
                  "dropout": 0.0, "feature_grad_mult": 0.0, "normalize": False,
                  "w2v_args": {"model": pretraining, "task": {"normalize": False}}}
    state = {"model": fairseq_state_dict(model, "ctc", False),
             **settings_of(finetuning, "cfg", {"_name": "audio_finetuning", "normalize": False}, {"_name": "ctc"}),
             **leftovers(tmp_path)}
    torch.save(state, tmp_path / "wav2vec_small_960h.pt")
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} {1000 - i}\n" for i, s in enumerate(LETTERS)))
    ckpt, pt = tmp_path / "ckpt", str(tmp_path / "wav2vec_small_960h.pt")
    assert main(["import-fairseq", pt, str(ckpt)]) == 2  # without its letters
    assert "a fine-tuned (CTC) model, whose letters fairseq keeps beside it: give the fine-tuning's dictionary " \
           "with --dict" in caplog.text and not ckpt.exists()
    (tmp_path / "short.txt").write_text("".join(f"{s} 1\n" for s in LETTERS[:-1]))
    assert main(["import-fairseq", pt, str(ckpt), "--dict", str(tmp_path / "short.txt")]) == 2
    assert "27 symbols and fairseq's 4 special ones make 31, and the CTC head has 32 outputs" in caplog.text
    assert main(["import-fairseq", pt, str(ckpt), "--dict", str(tmp_path / "dict.ltr.txt")]) == 0
    back, info = load_model(ckpt)
    assert info["vocab"]["symbols"] == ["<pad>", "<s>", "</s>", "<unk>", *LETTERS]
    for k, v in back.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    got = back.cfg
    assert (got.mask_prob, got.mask_channel_prob, got.mask_channel_length, got.layerdrop, got.dropout,
            got.feature_grad_mult) == (0.5, 0.1, 64, 0.1, 0.0, 0.0)


@pytest.mark.parametrize("mode", ["add", "set"])
def test_a_fine_tuned_models_blank_weight_is_in_its_logits(mode, tmp_path, caplog) -> None:
    """fairseq's Wav2VecCtc adds its blank_weight to the logit of index 0 (blank_mode "add") or sets that logit to
    it ("set") on every frame: the imported model's logits are fairseq's, and a blank_mode fairseq has not is
    refused."""
    torch.manual_seed(2)
    cfg = load_model_config("tiny")
    model = Wav2Vec2ForCTC(cfg, vocab_size=4 + len(LETTERS)).eval()
    finetuning = {"_name": "wav2vec_ctc", "blank_weight": 1.5, "blank_mode": mode,
                  "w2v_args": {"model": fairseq_model_settings(cfg), "task": {"normalize": False}}}
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in LETTERS))
    for run, blank_mode in (("ok", mode), ("odd", "mul")):
        torch.save({"model": fairseq_state_dict(model, "ctc", False),
                    **settings_of({**finetuning, "blank_mode": blank_mode}, "cfg", {}, {})}, tmp_path / f"{run}.pt")
    assert main(["import-fairseq", str(tmp_path / "ok.pt"), str(tmp_path / "ckpt"), "--dict",
                 str(tmp_path / "dict.ltr.txt")]) == 0
    back, _ = load_model(tmp_path / "ckpt")
    back.eval()
    wave = torch.randn(2, 4000)
    with torch.no_grad():
        fairseq_logits, _ = model(wave, None)
        if mode == "add":
            fairseq_logits[..., 0] += 1.5
        else:
            fairseq_logits[..., 0] = 1.5
        logits, _ = back(wave, None)
    torch.testing.assert_close(logits, fairseq_logits, rtol=0, atol=1e-6)
    assert main(["import-fairseq", str(tmp_path / "odd.pt"), str(tmp_path / "odd"), "--dict",
                 str(tmp_path / "dict.ltr.txt")]) == 2
    assert "blank_mode='mul': fairseq knows 'add' and 'set' alone" in caplog.text


def test_nothing_the_file_names_is_run(tmp_path, caplog) -> None:
    """The file is read with torch's weights_only unpickler: a class or function it names is a stand-in that
    does nothing (the call a plain unpickler would make never happens) and the model still imports; a file that
    names what no fairseq checkpoint does (os.system, shutil.rmtree) is refused, and nothing of it runs."""
    cfg = load_model_config("tiny")
    model = Wav2Vec2ForPreTraining(cfg)
    mark = tmp_path / "mark"
    state = {"model": fairseq_state_dict(model, "pretraining", False),
             **settings_of(fairseq_model_settings(cfg), "args", {"normalize": False}, {}),
             "extra_state": {"hostile": Marking(str(mark))}}
    torch.save(state, tmp_path / "a.pt")
    assert main(["import-fairseq", str(tmp_path / "a.pt"), str(tmp_path / "a")]) == 0
    assert not mark.exists() and (tmp_path / "a" / "model.json").exists()

    class System:
        def __reduce__(self):
            return os.system, (f"touch {mark}",)

    class Remove:
        def __reduce__(self):
            return shutil.rmtree, (str(tmp_path / "a"),)

    for hostile, named in ((System(), "posix.system"), (Remove(), "shutil.rmtree")):
        torch.save({**state, "extra_state": hostile}, tmp_path / "b.pt")
        caplog.clear()
        assert main(["import-fairseq", str(tmp_path / "b.pt"), str(tmp_path / "b")]) == 2
        assert f"b.pt: refused: it names GLOBAL {named}, which no fairseq checkpoint does" in caplog.text
        assert not mark.exists() and (tmp_path / "a").is_dir() and not (tmp_path / "b").exists()


def test_what_earful_cannot_import_is_named(tmp_path, caplog) -> None:
    """Other fairseq models (HuBERT, data2vec), wav2vec 2.0 variants earful's model is not (a conformer, targets
    not quantized) and a conv_feature_layers that is no literal are refused, naming the setting; a tensor no rule
    knows too (earful would make another model than fairseq's)."""
    cfg = load_model_config("tiny")
    weights = fairseq_state_dict(Wav2Vec2ForPreTraining(cfg), "pretraining", False)
    cases = [({"_name": "hubert"}, weights, "a fairseq 'hubert' model; earful imports wav2vec 2.0"),
             ({"layer_type": "conformer"}, weights, "layer_type='conformer': earful's layers are transformer"),
             ({"quantize_targets": False}, weights, "quantize_targets=false (the targets are projected CNN"),
             ({"crop_seq_to_multiple": 2}, weights, "crop_seq_to_multiple=2: earful's transformer reads every CNN"),
             ({"conv_feature_layers": "__import__('os').system('x')"}, weights, "is no list of (dim, kernel, stride)"),
             ({}, {**weights, "encoder.layers.0.adapter.weight": torch.zeros(1)},
              "1 tensors earful's wav2vec 2.0 has no place for, e.g. ['encoder.layers.0.adapter.weight']")]
    for n, (more, tensors, said) in enumerate(cases):
        torch.save({"model": tensors, **settings_of(fairseq_model_settings(cfg, **more), "cfg", {}, {})},
                   tmp_path / f"{n}.pt")
        caplog.clear()
        assert main(["import-fairseq", str(tmp_path / f"{n}.pt"), str(tmp_path / f"out{n}")]) == 2
        assert said in caplog.text, (n, caplog.text)
        assert not (tmp_path / f"out{n}").exists()
    torch.save({"weights": weights}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'model' state dict: not a fairseq checkpoint"):
        read_fairseq(tmp_path / "other.pt")


def test_conv_feature_layers_are_read_as_fairseq_writes_them() -> None:
    assert conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]", "x") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert conv_layers("[(512, 10, 5), (256, 8, 4)]*2", "x") == [(512, 10, 5), (256, 8, 4)] * 2


def test_a_model_without_a_feature_projection_gets_the_identity(tmp_path) -> None:
    """fairseq builds no post_extract_proj where the CNN's width is the transformer's: the identity stands in,
    and the model computes what fairseq's does."""
    cfg = load_model_config("tiny", ["conv_dim=[64,64,64,64,64,64,64]"])
    model = Wav2Vec2ForPreTraining(cfg)
    with torch.no_grad():
        model.wav2vec2.feature_projection.projection.weight.copy_(torch.eye(64))
        model.wav2vec2.feature_projection.projection.bias.zero_()
    weights = {k: v for k, v in fairseq_state_dict(model, "pretraining", False).items()
               if not k.startswith("post_extract_proj")}
    torch.save({"model": weights, **settings_of(fairseq_model_settings(cfg), "cfg", {}, {})}, tmp_path / "w.pt")
    assert main(["import-fairseq", str(tmp_path / "w.pt"), str(tmp_path / "ckpt")]) == 0
    back, _ = load_model(tmp_path / "ckpt")
    for k, v in back.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_logging_is_quiet_about_stand_ins(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    cfg = load_model_config("tiny")
    torch.save({"model": fairseq_state_dict(Wav2Vec2ForPreTraining(cfg), "pretraining", False),
                **settings_of(fairseq_model_settings(cfg), "args", {}, {}), **leftovers(tmp_path)},
               tmp_path / "x.pt")
    assert main(["import-fairseq", str(tmp_path / "x.pt"), str(tmp_path / "ckpt")]) == 0
    assert "wrote an earful checkpoint of fairseq's wav2vec2 model to" in caplog.text


@pytest.mark.parametrize("zipped", [True, False])
def test_either_torch_format_is_read_and_a_zip_file_in_one_pass(zipped, tmp_path, monkeypatch) -> None:
    """fairseq's released checkpoints of 2020 are in torch's legacy format, later ones in its zip format: both
    import, the training's leftovers as stand-ins. A zip file's classes are listed without unpickling it, so it
    is unpickled once, not once a class (a BASE checkpoint is 360 MB)."""
    import earful.interop.fairseq as fairseq

    cfg = load_model_config("tiny")
    model = Wav2Vec2ForPreTraining(cfg)
    torch.save({"model": fairseq_state_dict(model, "pretraining", False),
                **settings_of(fairseq_model_settings(cfg), "args", {"normalize": False}, {}), **leftovers(tmp_path)},
               tmp_path / "x.pt", _use_new_zipfile_serialization=zipped)
    loads = []
    real = torch.load
    monkeypatch.setattr(fairseq.torch, "load", lambda *a, **k: loads.append(1) or real(*a, **k))
    state = read_fairseq(tmp_path / "x.pt")
    assert len(loads) == (1 if zipped else 4)  # legacy: Meter, numpy's dtype and scalar found one a try
    assert isinstance(state["extra_state"]["metrics"]["train"][0][3], fairseq.Unread)
    assert state["args"].encoder_layers == cfg.num_layers
    for k, v in fairseq_state_dict(model, "pretraining", False).items():
        assert torch.equal(state["model"][k], v), k


@pytest.mark.parametrize("content, said", [
    (b"hello", "unreadable as a PyTorch file (damaged, or not one): KeyError"),
    (b"", "unreadable as a PyTorch file: it ends early (empty or cut short)"),
    (pickle.dumps({"model": {}}, protocol=5), "unreadable as a PyTorch file (damaged, or not one): Unsupported "
                                              "operand 149"),
], ids=["text", "empty", "plain pickle"])
def test_a_file_that_is_no_pytorch_checkpoint_is_named(content, said, tmp_path, caplog) -> None:
    """A text file given for the .pt stopped the command with a KeyError traceback, a plain pickle was "refused:
    it names Weights only load failed. ..., which no fairseq checkpoint does (a file made to run code?)", an
    empty file was "unreadable as a PyTorch file: " and nothing more: each is now named as no PyTorch file."""
    (tmp_path / "x.pt").write_bytes(content)
    assert main(["import-fairseq", str(tmp_path / "x.pt"), str(tmp_path / "ckpt")]) == 2
    assert f"x.pt: {said}" in caplog.text and "refused" not in caplog.text
    assert not (tmp_path / "ckpt").exists()


def test_a_dictionary_that_gives_a_symbol_a_second_id_is_refused(tmp_path, caplog) -> None:
    """fairseq's Dictionary gives a symbol already there and marked #fairseq:overwrite a second id (its CTC head an
    output more): earful kept one, so such a dictionary was taken for a head one output smaller (the letters after
    it one id off), and refused for the head it was made with. It is refused, naming the line; #fairseq:overwrite
    on a new symbol and CRLF line ends read as fairseq reads them."""
    cfg = load_model_config("tiny")
    model = Wav2Vec2ForCTC(cfg, vocab_size=4 + len(LETTERS))
    torch.save({"model": fairseq_state_dict(model, "ctc", False),
                **settings_of({"_name": "wav2vec_ctc", "w2v_args": {"model": fairseq_model_settings(cfg)}}, "cfg",
                              {}, {})}, tmp_path / "ctc.pt")
    lines = [f"{s} 1" for s in LETTERS]
    (tmp_path / "twice.txt").write_text("\n".join([*lines[:3], "E 5 #fairseq:overwrite", *lines[3:]]) + "\n")
    (tmp_path / "crlf.txt").write_bytes(("\r\n".join([*lines[:-1], "Z 1 #fairseq:overwrite"]) + "\r\n").encode())
    pt = str(tmp_path / "ctc.pt")
    assert main(["import-fairseq", pt, str(tmp_path / "a"), "--dict", str(tmp_path / "twice.txt")]) == 2
    assert "twice.txt:4: 'E' again, with #fairseq:overwrite: fairseq gives it a second id" in caplog.text
    assert not (tmp_path / "a").exists()
    assert main(["import-fairseq", pt, str(tmp_path / "b"), "--dict", str(tmp_path / "crlf.txt")]) == 0
    assert load_model(tmp_path / "b")[1]["vocab"]["symbols"] == ["<pad>", "<s>", "</s>", "<unk>", *LETTERS]


def test_a_dictionary_saved_with_a_byte_order_mark_is_named_as_such(tmp_path) -> None:
    """A dict.ltr.txt an editor saved with a UTF-8 byte-order mark was refused as "no word delimiter '|': not a
    letter dictionary" (the mark glued to its first symbol, '|'): the mark is named."""
    from earful.interop.fairseq import read_dictionary

    (tmp_path / "dict.ltr.txt").write_text("\ufeff| 10\nE 5\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="dict.ltr.txt: starts with a byte-order mark"):
        read_dictionary(tmp_path / "dict.ltr.txt")
