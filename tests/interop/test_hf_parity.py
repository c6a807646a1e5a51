"""earful == transformers, tensor by tensor (fp32, eval mode), and lossless export/import."""

import json
import logging

import pytest
import torch
import transformers

from earful.interop.hf import export_hf, import_hf
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, load_model_config
from earful.model.masking import compute_mask, sample_negatives

transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)

TINY_LAYER = [
    "feat_extract_norm=layer", "conv_bias=true", "layer_norm_first=true", "normalize_waveform=false"
]  # fmt: skip
BASE_SMALL = ["num_layers=2"]  # BASE widths, two layers: parity of every block at full size, in seconds
LARGE_SMALL = ["num_layers=2", "normalize_waveform=false"]

SHAPES = {
    "tiny-group": ("tiny", []),
    "tiny-layer": ("tiny", TINY_LAYER),
    "base-group": ("base", BASE_SMALL),
    "large-layer": ("large", LARGE_SMALL),
}


def make_batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    wave = torch.randn(len(lengths), int(lens.max()), generator=g) * 0.1
    att = (torch.arange(wave.shape[1])[None] < lens[:, None]).long()
    return wave * att, lens, att


def randomise(model: torch.nn.Module) -> None:
    """Non-trivial values everywhere (norm gains and biases are 1 and 0 at init)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_hidden_states_and_ctc_logits_match(shape, tmp_path) -> None:
    """A padded batch with transformers' attention mask: its GroupNorm counts the padding, as earful's "included"
    (for layer-norm CNNs the setting changes nothing)."""
    preset, overrides = SHAPES[shape]
    cfg = load_model_config(preset, [*overrides, "group_norm_padding=included"])
    ours = Wav2Vec2ForCTC(cfg, vocab_size=32).eval()
    randomise(ours)
    export_hf(ours, tmp_path)
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    wave, lens, att = make_batch((16000, 11000))
    with torch.no_grad():
        h = theirs(wave, attention_mask=att, output_hidden_states=True)
        out = ours.wav2vec2(wave, lens, output_hidden_states=True)
        logits, flen = ours(wave, lens)
    assert len(h.hidden_states) == len(out.hidden_states) == cfg.num_layers + 1
    for a, b in zip(h.hidden_states, out.hidden_states, strict=True):
        for i, n in enumerate(flen.tolist()):
            assert (a[i, :n] - b[i, :n]).abs().max() <= 1e-4
    for i, n in enumerate(flen.tolist()):
        assert (h.logits[i, :n] - logits[i, :n]).abs().max() <= 1e-4


@pytest.mark.parametrize("shape", ["tiny-group", "base-group"])
def test_batch_invariant_model_gives_each_utterance_what_transformers_gives_it_alone(shape, tmp_path) -> None:
    """earful's default ("excluded") in a padded batch == transformers on each utterance unpadded (the ASR
    pipeline's way: one at a time)."""
    preset, overrides = SHAPES[shape]
    ours = Wav2Vec2ForCTC(load_model_config(preset, overrides), vocab_size=32).eval()
    randomise(ours)
    export_hf(ours, tmp_path)
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    wave, lens, _ = make_batch((16000, 5000))  # the first over 3x the second
    with torch.no_grad():
        logits, flen = ours(wave, lens)
        for i, n in enumerate(lens.tolist()):
            alone = theirs(wave[i : i + 1, :n]).logits[0]  # (frames, vocab)
            assert alone.shape[0] == flen[i] and (alone - logits[i, : flen[i]]).abs().max() <= 1e-4


@pytest.mark.parametrize("shape", ["tiny-group", "tiny-layer", "base-group"])
def test_pretraining_logits_and_losses_match(shape, tmp_path) -> None:
    preset, overrides = SHAPES[shape]
    cfg = load_model_config(preset, overrides + ["require_same_masks=false", "group_norm_padding=included"])
    ours = Wav2Vec2ForPreTraining(cfg).eval()
    randomise(ours)
    export_hf(ours, tmp_path)
    theirs = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path).eval()
    wave, lens, att = make_batch((16000, 12000), seed=1)
    flen = ours.frame_lengths(lens)
    frames = int(flen.max())
    g = torch.Generator().manual_seed(3)
    mask = compute_mask(flen, frames, 0.65, 10, min_masks=2, generator=g)
    neg = sample_negatives(mask, cfg.num_negatives, generator=g)  # (batch, frames, K), within-utterance
    offset = (torch.arange(len(lens)) * frames)[:, None, None]
    with torch.no_grad():
        h = theirs(wave, attention_mask=att, mask_time_indices=mask, sampled_negative_indices=neg + offset)
        o = ours(wave, lens, mask=mask, negatives=neg)
        c = ours.final_proj(ours.wav2vec2(wave, lens, mask=mask).hidden)
    n = int(o.num_masked)
    # projected context and targets
    assert (h.projected_states[mask] - c[mask]).abs().max() <= 1e-4
    # contrastive loss: HF sums over masked frames, as we do
    assert abs(h.contrastive_loss.item() - o.contrastive.item()) <= 1e-4 * max(1.0, abs(o.contrastive.item()))
    # logits: rebuild HF's from its projected states and compare with ours
    q = h.projected_quantized_states  # (batch, frames, final_dim)
    negq = q.view(-1, q.shape[-1])[(neg + offset).view(-1)].view(*neg.shape, -1)
    targets = torch.cat([q[:, :, None], negq], dim=2)  # (batch, frames, 1 + K, dim)
    hf_logits = torch.cosine_similarity(h.projected_states[:, :, None].float(), targets.float(), dim=-1) / 0.1
    same = (negq == q[:, :, None]).all(-1)
    hf_logits[:, :, 1:][same] = float("-inf")
    hf_logits = hf_logits[mask]
    finite = torch.isfinite(hf_logits)
    assert torch.equal(finite, torch.isfinite(o.logits))
    assert (hf_logits[finite] - o.logits[finite]).abs().max() <= 1e-3  # logits are ×10 cosines
    # diversity: HF uses the hard (argmax) perplexity in eval mode, over masked frames
    gv = cfg.num_codevector_groups * cfg.num_codevectors_per_group
    assert abs(h.codevector_perplexity.item() - o.perplexity_hard.sum().item()) <= 1e-3
    expected_div = (gv - o.perplexity_hard.sum()) / gv * n
    assert abs(h.diversity_loss.item() - expected_div.item()) <= 1e-3


@pytest.mark.parametrize("kind", ["pretraining", "ctc"])
def test_export_transformers_import_is_identity(kind, tmp_path) -> None:
    cfg = load_model_config("tiny", TINY_LAYER)
    ours = Wav2Vec2ForPreTraining(cfg) if kind == "pretraining" else Wav2Vec2ForCTC(cfg, vocab_size=29)
    randomise(ours)
    export_hf(ours, tmp_path / "a")
    cls = transformers.Wav2Vec2ForPreTraining if kind == "pretraining" else transformers.Wav2Vec2ForCTC
    hf = cls.from_pretrained(tmp_path / "a")
    hf.save_pretrained(tmp_path / "b")  # transformers writes its own folder
    back, _ = import_hf(tmp_path / "b")
    assert type(back) is type(ours)
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_vocabulary_without_a_word_delimiter_is_refused_naming_its_checkpoint(tmp_path) -> None:
    """tokenizer_config's ValueError did not name the checkpoint, as the config errors beside it do."""
    model = Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=3)
    with pytest.raises(ValueError, match=r"^runs/ft/checkpoints/best: the vocabulary has no word delimiter '\|'"):
        export_hf(model, tmp_path / "hf", ["<b>", "a", "b"], source="runs/ft/checkpoints/best")
    assert not (tmp_path / "hf").exists()


def test_padded_convs_refuse_export(tmp_path) -> None:
    model = Wav2Vec2ForPreTraining(load_model_config("tiny", ["conv_padding=true"]))
    with pytest.raises(ValueError, match="padded"):
        export_hf(model, tmp_path)


def test_export_refuses_what_is_not_an_earful_model(tmp_path) -> None:
    """checkpoint.model_kind names the kind (a stray module was labelled "ctc", then failed on its attributes)."""
    with pytest.raises(TypeError, match="not an earful model: Linear"):
        export_hf(torch.nn.Linear(2, 2), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_waveform_normalisation_survives_export_and_import(tmp_path) -> None:
    """It lives in preprocessor_config.json (do_normalize), not in config.json."""
    cfg = load_model_config("tiny", ["normalize_waveform=true"])
    ours = Wav2Vec2ForCTC(cfg, vocab_size=29).eval()
    randomise(ours)
    export_hf(ours, tmp_path)
    back, _ = import_hf(tmp_path)
    assert back.cfg.normalize_waveform
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    del pre["do_normalize"]  # transformers' feature extractor then normalises (its default)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    assert import_hf(tmp_path)[0].cfg.normalize_waveform
    wave, lens, _ = make_batch((16000, 11000))
    with torch.no_grad():
        assert torch.equal(ours(wave * 3.0, lens)[0], back.eval()(wave * 3.0, lens)[0])


def test_import_of_a_model_saved_without_mask_embedding(tmp_path) -> None:
    """transformers creates masked_spec_embed only when its config masks; such a folder still imports."""
    ours = Wav2Vec2ForCTC(load_model_config("tiny", ["mask_prob=0"]), vocab_size=29)
    randomise(ours)
    export_hf(ours, tmp_path / "a")
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path / "a")
    hf.save_pretrained(tmp_path / "b")
    assert not any("masked_spec_embed" in k for k in hf.state_dict())
    back, _ = import_hf(tmp_path / "b")
    a, b = ours.state_dict(), back.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k != "wav2vec2.mask_emb")
    assert b["wav2vec2.mask_emb"].shape == a["wav2vec2.mask_emb"].shape


@pytest.mark.parametrize("kind", ["pretraining", "ctc"])
def test_a_model_that_masks_nothing_exports_no_mask_embedding(kind, tmp_path) -> None:
    """export-hf wrote masked_spec_embed always; transformers creates it only where its config masks, so a model
    exported with mask_prob=0 loaded with an unexpected key. It is left out there, kept where either masks."""
    from safetensors.torch import load_file

    for masks, overrides in ((False, ["mask_prob=0"]), (True, ["mask_prob=0", "mask_channel_prob=0.1"])):
        cfg = load_model_config("tiny", overrides)
        ours = Wav2Vec2ForPreTraining(cfg) if kind == "pretraining" else Wav2Vec2ForCTC(cfg, vocab_size=29)
        out = tmp_path / str(masks)
        export_hf(ours, out)
        assert ("wav2vec2.masked_spec_embed" in load_file(out / "model.safetensors")) == masks
        cls = transformers.Wav2Vec2ForPreTraining if kind == "pretraining" else transformers.Wav2Vec2ForCTC
        _, info = cls.from_pretrained(out, output_loading_info=True)
        assert not info["unexpected_keys"] and not info["missing_keys"], info
        back, _ = import_hf(out)
        a, b = ours.state_dict(), back.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a if masks or k != "wav2vec2.mask_emb")


def test_import_without_spec_augment_masks_nothing(tmp_path) -> None:
    """transformers' apply_spec_augment=false turns masking off whatever mask_time_prob says: the import does too."""
    no_dropout = ["dropout=0", "attention_dropout=0", "activation_dropout=0", "dropout_input=0", "final_dropout=0"]
    cfg = load_model_config("tiny", [*no_dropout, "mask_prob=0.5", "mask_channel_prob=0.3"])
    ours = Wav2Vec2ForCTC(cfg, vocab_size=29)
    randomise(ours)
    wave, lens, _ = make_batch((16000, 11000))
    for apply, masks in ((True, True), (False, False)):
        export_hf(ours, tmp_path / str(apply))
        hf_cfg = json.loads((tmp_path / str(apply) / "config.json").read_text())
        (tmp_path / str(apply) / "config.json").write_text(json.dumps({**hf_cfg, "apply_spec_augment": apply}))
        back, _ = import_hf(tmp_path / str(apply))
        assert (back.cfg.mask_prob, back.cfg.mask_channel_prob) == ((0.5, 0.3) if apply else (0.0, 0.0))
        with torch.no_grad():
            evaluated = back.eval()(wave, lens)[0]
            trained = back.train()(wave, lens, generator=torch.Generator().manual_seed(0))[0]
        assert torch.equal(evaluated, trained) != masks  # without dropout, only masking tells train from eval


def test_import_moves_a_transformers_blank_to_index_0(tmp_path) -> None:
    """transformers' CTC blank is config.pad_token_id, anywhere in vocab.json; earful's is index 0."""
    from safetensors.torch import load_file, save_file

    symbols = ["<b>", "'", "a", "b", "|", "x"]
    ours = Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=len(symbols))
    randomise(ours)
    export_hf(ours, tmp_path, vocab_symbols=symbols)
    theirs = [1, 2, 3, 0, 4, 5]  # their order: the blank at index 3
    w = load_file(str(tmp_path / "model.safetensors"))
    w["lm_head.weight"], w["lm_head.bias"] = w["lm_head.weight"][theirs], w["lm_head.bias"][theirs]
    save_file(w, str(tmp_path / "model.safetensors"))
    (tmp_path / "vocab.json").write_text(json.dumps({symbols[j]: i for i, j in enumerate(theirs)}))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "pad_token_id": 3}))
    back, vocab = import_hf(tmp_path)
    assert vocab == symbols
    assert torch.equal(back.lm_head.weight, ours.lm_head.weight) and torch.equal(back.lm_head.bias, ours.lm_head.bias)


def test_import_refuses_what_earful_would_drop(tmp_path) -> None:
    """An adapter (transformers' add_adapter) changes the model's output; importing without it gave another
    model silently (its tensors were thrown away). The config and any unknown tensor are refused, naming the
    folder."""
    from earful.checkpoint import CheckpointError

    hf_cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[32] * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=12, add_adapter=True,
        adapter_stride=2, output_hidden_size=32)
    transformers.Wav2Vec2ForCTC(hf_cfg).save_pretrained(tmp_path / "adapter")
    with pytest.raises(CheckpointError, match=r"adapter.*config\.json: add_adapter"):
        import_hf(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "config.json").read_text())
    (tmp_path / "adapter" / "config.json").write_text(json.dumps({**cfg, "add_adapter": False}))
    with pytest.raises(CheckpointError, match=r"wav2vec 2.0 has no place for, e.g. \['wav2vec2\.adapter"):
        import_hf(tmp_path / "adapter")


def test_import_names_the_file_of_each_problem(tmp_path) -> None:
    from earful.checkpoint import CheckpointError

    ours = Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=29)
    export_hf(ours, tmp_path / "a")
    (tmp_path / "a" / "preprocessor_config.json").write_text("{'do_normalize': true}")
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json: corrupt JSON"):
        import_hf(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text('{"hidden_act": "relu",}')
    with pytest.raises(CheckpointError, match=r"a/config\.json: corrupt JSON"):
        import_hf(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({**ours_cfg_json(ours), "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match=r"a/config\.json: unsupported hidden_act 'relu'"):
        import_hf(tmp_path / "a")
    bare = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[32] * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2))
    bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(CheckpointError, match=r"bare: lacks .* no 'wav2vec2\.' prefix: a bare transformers"):
        import_hf(tmp_path / "bare")


def ours_cfg_json(model) -> dict:
    from earful.interop.hf import hf_config

    return hf_config(model.cfg, kind="ctc", vocab_size=model.lm_head.out_features)


def test_a_config_without_a_key_means_transformers_default(tmp_path) -> None:
    """config_from_hf fills what a config.json leaves out with transformers' defaults (it took earful's: 0.1
    input dropout where transformers has 0, masks of 0.65 where it has 0.05)."""
    from earful.interop.hf import HF_DEFAULTS, config_from_hf

    theirs = transformers.Wav2Vec2Config()
    for key, value in HF_DEFAULTS.items():
        got = getattr(theirs, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert config_from_hf({}) == config_from_hf(theirs.to_dict())


def test_mask_lengths_of_0_without_masks_load_and_other_bad_values_name_the_file() -> None:
    """Fine-tuning scripts save mask_time_length 0 with mask_time_prob 0 (transformers accepts it); earful's
    model checks had refused them. A value no model trains with names config.json."""
    from earful.interop.hf import config_from_hf

    cfg = config_from_hf({"mask_time_length": 0, "mask_time_prob": 0.0, "mask_feature_length": 0,
                          "mask_feature_prob": 0.0})
    assert (cfg.mask_length, cfg.mask_channel_length, cfg.mask_prob) == (0, 0, 0.0)
    with pytest.raises(ValueError, match=r"^x/config.json: mask_time_length=0: expected an integer >= 1 where its "
                                         r"mask probability is > 0"):
        config_from_hf({"mask_time_length": 0, "mask_time_prob": 0.05}, "x/config.json")
    with pytest.raises(ValueError, match=r"^x/config.json: hidden_dropout=1.5: expected a probability"):
        config_from_hf({"hidden_dropout": 1.5}, "x/config.json")
    with pytest.raises(ValueError, match=r"^x/config.json: num_hidden_layers=null, mask_time_prob=null: a value "
                                         r"belongs there"):  # it had been Python's "'<' not supported" for ints
        config_from_hf({"mask_time_prob": None, "num_hidden_layers": None}, "x/config.json")


def test_reexport_without_a_vocabulary_removes_the_earlier_tokenizer(tmp_path) -> None:
    cfg = load_model_config("tiny")
    export_hf(Wav2Vec2ForCTC(cfg, vocab_size=6), tmp_path, vocab_symbols=["<b>", "'", "a", "b", "|", "x"])
    assert (tmp_path / "vocab.json").exists()
    export_hf(Wav2Vec2ForPreTraining(cfg), tmp_path)
    assert not (tmp_path / "vocab.json").exists() and not (tmp_path / "tokenizer_config.json").exists()


def test_a_minimum_channel_mask_count_matters_only_where_channels_are_masked(tmp_path) -> None:
    from earful.checkpoint import CheckpointError

    export_hf(Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=29), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "mask_feature_min_masks": 2, "mask_feature_prob": 0}))
    assert import_hf(tmp_path)[0].cfg.mask_channel_prob == 0  # transformers masks no channels: nothing to refuse
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "mask_feature_min_masks": 2, "mask_feature_prob": 0.1}))
    with pytest.raises(CheckpointError, match="mask_feature_min_masks=2"):
        import_hf(tmp_path)


def test_the_training_settings_transformers_has_no_place_for_survive_export_and_import(tmp_path, caplog,
                                                                                       hub_models) -> None:
    """config.json had no place for earful's training recipe: continued pre-training from an exported LARGE model
    (earful pretrain --init FOLDER) trained with BASE's feature_grad_mult 0.1, final Gumbel temperature 0.5 and
    feature penalty 10, silently. export-hf keeps them as earful_training, which transformers keeps and ignores.
    A Hub model id (init=ORG/NAME) is its folder: the same model settings, and the same warning."""
    from earful.checkpoint import CheckpointError
    from earful.config import to_dict
    from earful.pretrain.config import load_pretrain_config

    cfg = load_model_config("tiny", ["feature_grad_mult=1.0", "temperature_end=0.1", "feature_penalty_weight=0",
                                     "group_norm_padding=included", "loss_normalisation=nanow2v2"])
    ours = Wav2Vec2ForPreTraining(cfg)
    export_hf(ours, tmp_path)
    assert to_dict(import_hf(tmp_path)[0].cfg) == {**to_dict(cfg), "weight_init": "torch"}
    assert to_dict(load_pretrain_config(None, [], init=str(tmp_path)).model) == to_dict(cfg)
    theirs = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path)
    assert theirs.config.earful_training["feature_grad_mult"] == 1.0
    saved = json.loads((tmp_path / "config.json").read_text())
    for bad in ({"temperature": 2}, [], None):  # a falsy one ([], null) was taken for none
        (tmp_path / "config.json").write_text(json.dumps({**saved, "earful_training": bad}))
        with pytest.raises(CheckpointError, match=r"config\.json: earful_training: expected a mapping.*remove the key"):
            import_hf(tmp_path)
    del saved["earful_training"]  # transformers' own folder: earful's defaults, said when pre-training goes on
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert import_hf(tmp_path)[0].cfg.feature_grad_mult == 0.1
    with caplog.at_level(logging.WARNING, logger="earful.pretrain.config"):
        load_pretrain_config(None, [], init=str(tmp_path))
    assert "a transformers folder without earful's training settings" in caplog.text
    assert "model.feature_grad_mult=0.1" in caplog.text
    hub_models.repos["someone/theirs"] = tmp_path
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="earful.pretrain.config"):
        from_hub = load_pretrain_config(None, [], init="someone/theirs")
    assert to_dict(from_hub.model) == to_dict(load_pretrain_config(None, [], init=str(tmp_path)).model)
    assert "init someone/theirs: a transformers folder without earful's training settings" in caplog.text


def test_a_quantizer_of_the_raw_cnn_output_survives_export_and_import(tmp_path, caplog) -> None:
    """quantizer_input: raw was lost on export (hf_config warned, the import took normed): pretrain --init FOLDER
    trained another model, its contrastive loss other with the same weights, mask and negatives. It travels in
    earful_training; a folder without it quantizes the normed features, as transformers does."""
    from earful.pretrain.config import load_pretrain_config

    cfg = load_model_config("tiny", ["quantizer_input=raw"])
    ours = Wav2Vec2ForPreTraining(cfg).eval()
    randomise(ours)
    with caplog.at_level(logging.WARNING, logger="earful.interop.hf"):
        export_hf(ours, tmp_path)
    assert "this model's quantizer reads the raw CNN output" in caplog.text
    back = import_hf(tmp_path)[0].eval()
    assert back.cfg.quantizer_input == "raw"
    assert load_pretrain_config(None, [], init=str(tmp_path)).model.quantizer_input == "raw"
    wave, lens, _ = make_batch((16000, 12000), seed=1)
    flen = ours.frame_lengths(lens)
    g = torch.Generator().manual_seed(3)
    mask = compute_mask(flen, int(flen.max()), 0.65, 10, min_masks=2, generator=g)
    neg = sample_negatives(mask, cfg.num_negatives, generator=g)
    with torch.no_grad():
        assert torch.equal(ours(wave, lens, mask=mask, negatives=neg).contrastive,
                           back(wave, lens, mask=mask, negatives=neg).contrastive)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["earful_training"]["quantizer_input"]  # a folder exported before it travelled: transformers' normed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert import_hf(tmp_path)[0].cfg.quantizer_input == "normed"


def test_the_warning_of_a_folder_without_training_settings_names_what_the_run_trains_with(tmp_path, caplog) -> None:
    """It named earful's defaults even where the YAML or the overrides set them (model.feature_grad_mult=1.0
    continued with 1.0 and was told 0.1); it names the values the run takes from the defaults, and is silent
    where all are set."""
    from earful.pretrain.config import load_pretrain_config

    export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["earful_training"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="earful.pretrain.config"):
        cfg = load_pretrain_config(None, ["model.feature_grad_mult=1.0"], init=str(tmp_path))
    assert cfg.model.feature_grad_mult == 1.0
    assert "without earful's training settings" in caplog.text and "model.temperature_end=0.5" in caplog.text
    assert "feature_grad_mult" not in caplog.text
    caplog.clear()
    every = ["model.feature_grad_mult=1.0", "model.temperature_start=2", "model.temperature_end=0.1",
             "model.feature_penalty_weight=0"]
    with caplog.at_level(logging.WARNING, logger="earful.pretrain.config"):
        load_pretrain_config(None, every, init=str(tmp_path))
    assert "training settings" not in caplog.text


def test_a_transformers_folder_masking_at_its_fine_tuning_rate_is_named_in_pre_training(tmp_path, caplog) -> None:
    """A transformers folder of its own (no earful_training) holds transformers' SpecAugment settings for
    fine-tuning: mask_time_prob 0.05, where pre-training (fairseq's BASE and LARGE) masks 0.65. A continued
    pre-training from it masked 5 % of the frames while the warning said only the four settings transformers has
    no place for were earful's; now it names what config.json sets against the pre-training recipe too."""
    from earful.pretrain.config import load_pretrain_config

    export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["earful_training"]
    saved["mask_time_prob"] = 0.05  # transformers' default, which its converter writes
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="earful.pretrain.config"):
        cfg = load_pretrain_config(None, [], init=str(tmp_path))
    assert cfg.model.mask_prob == 0.05  # config.json's, as before: the warning says so
    assert "model.mask_prob=0.05" in caplog.text and "0.65" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="earful.pretrain.config"):
        assert load_pretrain_config(None, ["model.mask_prob=0.65"], init=str(tmp_path)).model.mask_prob == 0.65
    assert "mask_prob" not in caplog.text
