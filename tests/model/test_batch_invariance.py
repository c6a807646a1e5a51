"""An utterance's outputs and its batch: group_norm_padding "excluded" (earful's default) gives every utterance what
it gets alone; "included" (fairseq, the paper's code) counts the padding in the first GroupNorm's statistics."""

from __future__ import annotations

import pytest
import torch

from earful.finetune.config import RegularisationConfig
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, batch_invariant, load_model_config

CNNS = {
    "group": [],  # BASE's CNN
    "group-padded-convs": ["conv_padding=true"],  # nanow2v2's: its convolutions' zero padding meets the batch's
    "layer-padded-convs": ["feat_extract_norm=layer", "conv_padding=true"],
}


def model(cnn: str, norm: str) -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    m = Wav2Vec2ForCTC(load_model_config("tiny", [*CNNS[cnn], f"group_norm_padding={norm}"]), vocab_size=12).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero norm biases: a padded frame's CNN output is then non-zero
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return m


def short_and_long() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(short (1, 7000), long (1, 21000), the batch of both (2, 21000)) with an offset, as recordings have."""
    g = torch.Generator().manual_seed(2)
    short = 0.1 * torch.randn(1, 7000, generator=g) + 0.05
    long = 0.1 * torch.randn(1, 21000, generator=g)
    batch = torch.zeros(2, 21000)
    batch[0, :7000], batch[1] = short[0], long[0]
    return short, long, batch


@pytest.mark.parametrize("cnn", list(CNNS))
def test_excluded_gives_an_utterance_what_it_gets_alone(cnn) -> None:
    m = model(cnn, "excluded")
    short, long, batch = short_and_long()
    with torch.no_grad():
        both, frames = m(batch, torch.tensor([7000, 21000]))
        alone = [m(short, None)[0][0], m(long, None)[0][0]]  # (frames, vocab) each
        states = m.wav2vec2(batch, torch.tensor([7000, 21000]), output_hidden_states=True).hidden_states
        alone_states = m.wav2vec2(short, None, output_hidden_states=True).hidden_states
    for i in range(2):
        assert alone[i].shape[0] == frames[i]
        assert (both[i, : frames[i]] - alone[i]).abs().max() <= 1e-5, i
    for a, b in zip(states, alone_states, strict=True):
        assert (a[0, : frames[0]] - b[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("cnn", list(CNNS))
def test_included_counts_the_padding_as_fairseq_does(cnn) -> None:
    """The longest utterance (no padding) is what it is alone; a padded one is what it is alone followed by the
    same zeros, its real length given: the zeros enter its GroupNorm statistics (and, with padded convs, its
    last frames, whatever the norm), so beside a longer utterance it is not what it is alone."""
    m = model(cnn, "included")
    short, long, batch = short_and_long()
    lengths = torch.tensor([7000, 21000])
    with torch.no_grad():
        both, frames = m(batch, lengths)
        padded_alone = m(batch[:1], lengths[:1])[0][0]
        long_alone = m(long, None)[0][0]
        short_alone = m(short, None)[0][0]
    n = int(frames[0])
    assert (both[1] - long_alone).abs().max() <= 1e-5
    assert (both[0, :n] - padded_alone[:n]).abs().max() <= 1e-5
    assert (both[0, :n] - short_alone).abs().max() > 1e-2  # what "excluded" removes


def test_masked_statistics_under_bf16_autocast_stay_close() -> None:
    """The masked statistics are taken in fp32 under autocast, as nn.GroupNorm's are."""
    m = model("group", "excluded")
    short, _, batch = short_and_long()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        both, frames = m(batch, torch.tensor([7000, 21000]))
        alone = m(short, None)[0][0]
    assert (both[0, : frames[0]].float() - alone.float()).abs().max() <= 0.1 * alone.float().abs().max()


def test_pretraining_model_is_batch_invariant_too() -> None:
    torch.manual_seed(0)
    m = Wav2Vec2ForPreTraining(load_model_config("tiny")).eval()
    short, _, batch = short_and_long()
    with torch.no_grad():
        out = m.wav2vec2(batch, torch.tensor([7000, 21000]))
        alone = m.wav2vec2(short, None)
    n = int(out.frame_lengths[0])
    assert (out.hidden[0, :n] - alone.hidden[0]).abs().max() <= 1e-5
    assert (out.features[0, :n] - alone.features[0]).abs().max() <= 1e-5


def test_fine_tuning_and_inference_exclude_the_padding_whatever_the_pre_training() -> None:
    cfg = load_model_config("tiny", ["group_norm_padding=included"])
    assert RegularisationConfig().apply(cfg).group_norm_padding == "excluded"
    assert RegularisationConfig(group_norm_padding=None).apply(cfg).group_norm_padding == "included"
    m = Wav2Vec2ForCTC(cfg, vocab_size=12)
    assert batch_invariant(m) is m and m.cfg.group_norm_padding == m.wav2vec2.cfg.group_norm_padding == "excluded"
    assert load_model_config("tiny").group_norm_padding == "excluded"  # the default: files without the field too


def test_masked_group_norm_gradients() -> None:
    """Exact gradients with padding (gradcheck, fp64), and with every frame real it is nn.GroupNorm."""
    from earful.model.components import MaskedGroupNorm

    torch.manual_seed(0)
    norm = MaskedGroupNorm(3, 3).double()
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = (torch.randn(2, 3, 9, dtype=torch.float64) + 1.0).requires_grad_()
    valid = torch.arange(9)[None] < torch.tensor([9, 4])[:, None]
    assert torch.autograd.gradcheck(lambda x, w, b: norm.__class__.forward(norm, x, valid) * 1.0, (x, norm.weight,
                                    norm.bias))  # fmt: skip
    everything = torch.ones(2, 9, dtype=torch.bool)
    g = torch.randn(2, 3, 9, dtype=torch.float64)
    ours = torch.autograd.grad((norm(x, everything) * g).sum(), [x, norm.weight, norm.bias])
    theirs = torch.autograd.grad((torch.nn.GroupNorm.forward(norm, x) * g).sum(), [x, norm.weight, norm.bias])
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(ours, theirs, strict=True))
    with torch.no_grad():  # the path without autograd gives the same
        assert torch.allclose(norm(x, valid), norm.__class__.forward(norm, x, valid).detach(), atol=1e-12)


def test_fine_tuning_gradients_do_not_depend_on_the_batch() -> None:
    """The gradient an utterance's frames send to every weight (the CNN's too) is the same alone and beside a
    3x longer utterance."""
    torch.manual_seed(0)
    cfg = load_model_config("tiny", ["dropout=0", "attention_dropout=0", "dropout_input=0", "final_dropout=0",
                                     "mask_prob=0", "feature_grad_mult=1.0"])  # fmt: skip
    m = Wav2Vec2ForCTC(cfg, vocab_size=12).train()
    short, _, batch = short_and_long()
    params = list(m.parameters())
    logits, frames = m(batch, torch.tensor([7000, 21000]))
    together = torch.autograd.grad(logits[0, : frames[0]].square().sum(), params, allow_unused=True)
    logits, _ = m(short, None)
    alone = torch.autograd.grad(logits[0].square().sum(), params, allow_unused=True)
    for (name, _), a, b in zip(m.named_parameters(), together, alone, strict=True):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name
