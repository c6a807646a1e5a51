"""The wav2vec 2.0 model: shapes, parameter counts, determinism, learning, gradients."""

import pytest
import torch

from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, count_parameters, load_model_config


def batch(seed: int = 0, lengths=(16000, 12000, 6000)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    wave = torch.randn(len(lengths), int(lens.max()), generator=g)
    wave = wave * (torch.arange(wave.shape[1])[None] < lens[:, None])
    return wave, lens


def test_base_has_95m_parameters() -> None:
    model = Wav2Vec2ForPreTraining(load_model_config("base"))
    assert count_parameters(model) == 95_044_608  # docs/paper.md §2.8
    backbone = count_parameters(model.wav2vec2)
    assert backbone == 94_371_712


def test_frame_rates() -> None:
    fairseq = Wav2Vec2ForPreTraining(load_model_config("tiny"))
    nano = Wav2Vec2ForPreTraining(load_model_config("tiny", ["conv_padding=true"]))
    secs = torch.tensor([16000, 240000, 480000])
    assert fairseq.frame_lengths(secs).tolist() == [49, 749, 1499]
    assert nano.frame_lengths(secs).tolist() == [50, 750, 1500]
    # the analytic lengths agree with what the convolutions produce
    for m in (fairseq, nano):
        wave = torch.zeros(1, 16000 * 2 + 123)
        out = m.wav2vec2.feature_encoder(wave)
        assert out.shape[-1] == m.frame_lengths(torch.tensor([wave.shape[1]])).item()


def test_eval_is_deterministic_and_train_is_not() -> None:
    cfg = load_model_config("tiny", ["dropout=0.2", "attention_dropout=0.2"])
    model = Wav2Vec2ForCTC(cfg, vocab_size=30)
    wave, lens = batch()
    model.eval()
    with torch.no_grad():
        a, _ = model(wave, lens)
        b, _ = model(wave, lens)
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, _ = model(wave, lens)
        d, _ = model(wave, lens)
    assert not torch.equal(c, d)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_padding_does_not_change_real_frames(norm) -> None:
    """An utterance's outputs do not depend on how much padding its batch has (key-padding mask, and the
    GroupNorm's statistics over real frames: tests/model/test_batch_invariance.py)."""
    cfg = load_model_config("tiny", [f"feat_extract_norm={norm}"])
    model = Wav2Vec2ForCTC(cfg, vocab_size=10).eval()
    wave, lens = batch(lengths=(9000,))
    padded = torch.nn.functional.pad(wave, (0, 7000))
    with torch.no_grad():
        a, fa = model(wave, lens)
        b, fb = model(padded, lens)
    n = int(fa[0])
    assert torch.allclose(a[0, :n], b[0, :n], atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny", "tiny-nanow2v2"])
def test_overfit_one_batch_and_gradients_reach_codebook(preset: str) -> None:
    overrides = ["dropout=0.0", "attention_dropout=0.0", "dropout_input=0.0", "dropout_features=0.0"]
    if preset == "tiny-nanow2v2":
        overrides += ["conv_padding=true", "quantizer_input=raw", "loss_normalisation=nanow2v2", "mask_style=nanow2v2"]
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(load_model_config("tiny", overrides))
    wave, lens = batch(1, (16000, 16000, 16000, 16000))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(40):
        out = model(wave, lens, generator=torch.Generator().manual_seed(0))
        loss = out.objective(out.num_masked, 1)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert model.quantizer.codevectors.grad.abs().sum() > 0
            assert model.quantizer.weight_proj.weight.grad.abs().sum() > 0
            assert model.wav2vec2.feature_encoder.layers[0].conv.weight.grad.abs().sum() > 0
        opt.step()
        losses.append((out.contrastive / out.num_masked).item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_loss_terms_are_sums() -> None:
    """Splitting a batch in two and summing the terms gives the whole batch's terms (fairseq mode)."""
    cfg = load_model_config("tiny", ["require_same_masks=false"])
    model = Wav2Vec2ForPreTraining(cfg).eval()
    wave, lens = batch(2, (16000, 16000))
    f = int(model.frame_lengths(lens)[0])
    g = torch.Generator().manual_seed(5)
    from earful.model.masking import compute_mask, sample_negatives

    mask = compute_mask(torch.tensor([f, f]), f, 0.65, 10, min_masks=2, generator=g)
    neg = sample_negatives(mask, cfg.num_negatives, generator=g)
    with torch.no_grad():
        whole = model(wave, lens, mask=mask, negatives=neg)
        parts = [
            model(wave[i : i + 1], lens[i : i + 1], mask=mask[i : i + 1], negatives=neg[i : i + 1]) for i in range(2)
        ]
    assert whole.num_masked == sum(p.num_masked for p in parts)
    torch.testing.assert_close(whole.contrastive, sum(p.contrastive for p in parts), rtol=1e-5, atol=1e-4)
    total = whole.objective(whole.num_masked)
    split = sum(p.objective(whole.num_masked) for p in parts)
    # contrastive and penalty are additive; diversity uses batch marginals, so only close
    assert abs(total.item() - split.item()) / total.item() < 0.05


def test_layerdrop_keeps_every_parameter_in_the_graph() -> None:
    cfg = load_model_config("tiny", ["layerdrop=0.99"])
    model = Wav2Vec2ForPreTraining(cfg).train()
    wave, lens = batch()
    out = model(wave, lens)
    out.objective(out.num_masked).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"


def test_temperature_schedule() -> None:
    model = Wav2Vec2ForPreTraining(load_model_config("tiny"))
    model.set_step(0)
    assert model.quantizer.temperature == 2.0
    model.set_step(100_000)
    assert abs(model.quantizer.temperature - 2.0 * 0.999995**100_000) < 1e-9
    model.set_step(400_000)
    assert model.quantizer.temperature == 0.5


def test_quantizer_eval_is_argmax() -> None:
    model = Wav2Vec2ForPreTraining(load_model_config("tiny")).eval()
    x = torch.randn(50, model.cfg.conv_dim[-1])
    q, codes, soft = model.quantizer(x)
    assert torch.equal(codes, soft.argmax(-1))
    book = model.quantizer.codevectors.view(model.cfg.num_codevector_groups, model.cfg.num_codevectors_per_group, -1)
    expected = torch.cat([book[g][codes[:, g]] for g in range(codes.shape[1])], dim=-1)
    torch.testing.assert_close(q, expected)


def test_diversity_schedule() -> None:
    model = Wav2Vec2ForPreTraining(
        load_model_config("tiny", ["diversity_start_step=10", "diversity_warmup_steps=20", "diversity_weight=0.1"])
    )
    assert model.diversity_weight_at(0) == 0.0 and model.diversity_weight_at(9) == 0.0
    assert model.diversity_weight_at(20) == pytest.approx(0.05)
    assert model.diversity_weight_at(30) == pytest.approx(0.1) and model.diversity_weight_at(1000) == pytest.approx(0.1)
    wave, lens = batch()
    model.set_step(5)
    assert model(wave, lens).diversity_weight == 0.0


def test_channel_mask_applies_after_the_time_mask() -> None:
    """fairseq and transformers: masked frames get the mask embedding, then masked channels are zeroed in every
    frame, the masked ones included."""
    cfg = load_model_config("tiny", ["mask_prob=0.5", "mask_channel_prob=0.3", "mask_channel_length=4",
                                     "dropout_input=0.0"])  # fmt: skip
    model = Wav2Vec2ForCTC(cfg, vocab_size=8).train()
    with torch.no_grad():
        model.wav2vec2.mask_emb.fill_(1.0)
    seen: list[torch.Tensor] = []
    model.wav2vec2.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    wave, lens = batch()
    out = model.wav2vec2(wave, lens, mask=True, generator=torch.Generator().manual_seed(0))
    x = seen[0]  # (batch, frames, hidden): the transformer's input
    real = ~out.padding_mask
    zero_everywhere = ((x == 0) | ~real[..., None]).all(1)  # (batch, hidden)
    assert zero_everywhere.any(), "no channel was masked"
    masked = out.mask & real
    assert masked.any()
    # in masked frames every channel is the embedding (1.0) or a masked channel (0.0)
    assert torch.equal(x[masked] == 0, zero_everywhere[:, None, :].expand_as(x)[masked])


def test_transformer_init_schemes() -> None:
    """fairseq / transformers: N(0, 0.02) weights and zero biases; nanow2v2: Xavier QKV and out-projection
    with zero biases; torch: PyTorch's defaults (non-zero biases)."""
    base = ["num_layers=1", "hidden_size=256", "num_heads=4", "intermediate_size=1024"]
    layer = {s: Wav2Vec2ForPreTraining(load_model_config("base", [*base, f"weight_init={s}"]))
             .wav2vec2.encoder.layers[0] for s in ("fairseq", "nanow2v2", "torch")}  # fmt: skip
    f = layer["fairseq"]
    for lin in (f.attention.qkv, f.attention.out_proj, f.feed_forward.fc1, f.feed_forward.fc2):
        assert abs(lin.weight.std().item() - 0.02) < 0.002 and not lin.bias.any()
    n = layer["nanow2v2"]
    bound = (1 / 2**0.5) * (6 / (256 + 3 * 256)) ** 0.5  # Xavier-uniform of the fused (256 → 768) QKV
    assert n.attention.qkv.weight.abs().max() <= bound and n.attention.qkv.weight.abs().max() > 0.9 * bound
    assert not n.attention.qkv.bias.any() and not n.attention.out_proj.bias.any()
    assert layer["torch"].attention.qkv.bias.abs().max() > 0
    assert load_model_config("base").weight_init == "fairseq"
    assert load_model_config("base-nanow2v2").weight_init == "nanow2v2"


def test_dropout_after_the_positional_conv_is_fairseqs_only() -> None:
    for preset, expect in (("base", 0.1), ("base-nanow2v2", 0.0)):
        cfg = load_model_config(preset, ["num_layers=1"])
        assert Wav2Vec2ForCTC(cfg, vocab_size=8).wav2vec2.encoder.dropout.p == expect


def test_large_preset_is_fairseqs_large_librivox() -> None:
    """examples/wav2vec/config/pretraining/wav2vec2_large_librivox.yaml: latent_temp [2.0, 0.1, 0.999995],
    no input/feature/attention dropout, feature_grad_mult 1.0, loss_weights [0.1, 0]."""
    c = load_model_config("large")
    assert (c.temperature_start, c.temperature_end, c.temperature_decay) == (2.0, 0.1, 0.999995)
    assert c.dropout_input == c.dropout_features == c.attention_dropout == c.dropout == c.layerdrop == 0.0
    assert c.feature_grad_mult == 1.0 and c.diversity_weight == 0.1 and c.feature_penalty_weight == 0.0


@pytest.mark.parametrize("norm", ["included", "excluded"])
def test_lengths_none_means_no_padding_and_no_attention_mask(monkeypatch, norm) -> None:
    """lengths=None (every utterance fills the batch) gives what full lengths give, and attention gets no key
    mask (so SDPA may pick FlashAttention on a GPU). Bit for bit on a CPU with nn.GroupNorm ("included"); with
    "excluded", full lengths take the masked statistics, which sum in another order (and lengths=None takes
    nn.GroupNorm, as transformers)."""
    import torch.nn.functional as F

    masks: list[object] = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    cfg = load_model_config("tiny", [f"group_norm_padding={norm}"])
    wave = torch.randn(3, 12000, generator=torch.Generator().manual_seed(0))
    full = torch.full((3,), 12000)
    same = torch.equal if norm == "included" else lambda x, y: torch.allclose(x, y, rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(cfg).train()
    outs = []
    for lengths in (full, None):
        masks.clear()
        torch.manual_seed(1)  # dropout
        out = model(wave, lengths, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad(out.objective(float(out.num_masked)), list(model.parameters()))
        outs.append((out, grads, list(masks)))
    (a, ga, ma), (b, gb, mb) = outs
    assert all(m is not None for m in ma) and all(m is None for m in mb) and len(mb) == cfg.num_layers
    assert same(a.logits, b.logits) and torch.equal(a.mask, b.mask)
    assert all(same(x, y) for x, y in zip(ga, gb, strict=True))
    ctc = Wav2Vec2ForCTC(cfg, vocab_size=8).eval()
    with torch.no_grad():
        (la, fa), (lb, fb) = ctc(wave, full), ctc(wave, None)
    assert same(la, lb) and torch.equal(fa, fb)


def test_contrastive_scores_stay_fp32_under_bf16_autocast() -> None:
    """bf16 scores near 1/temperature are 0.06 apart: the positive would tie its distractors."""
    model = Wav2Vec2ForPreTraining(load_model_config("tiny")).train()
    wave, lens = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(wave, lens, generator=torch.Generator().manual_seed(0))
    assert out.logits.dtype == torch.float32 and out.contrastive.dtype == torch.float32


def test_a_micro_batch_without_masked_frames_is_refused_clearly() -> None:
    model = Wav2Vec2ForPreTraining(load_model_config("tiny")).train()
    wave, lens = batch()
    frames = int(model.frame_lengths(lens).max())
    with pytest.raises(ValueError, match="this micro-batch has none"):
        model(wave, lens, mask=torch.zeros(3, frames, dtype=torch.bool))


@pytest.mark.parametrize(("overrides", "advice"), [
    (["mask_style=nanow2v2"], "the nanow2v2 mask style (which does not read model.min_masks) can leave an utterance of "
                              "fewer than 10 frames (under 3280 samples at 16 kHz) without a masked frame: "
                              "data.min_seconds=0.205 leaves such utterances out"),
    (["min_masks=0"], "model.min_masks=1 or more gives every utterance a masked frame (model.min_masks=0 can leave "
                      "one of fewer than 16 frames, under 5200 samples at 16 kHz, without: data.min_seconds=0.325"),
])
def test_a_micro_batch_without_masked_frames_is_told_what_helps_its_mask_style(overrides, advice) -> None:
    """nanow2v2's mask style leaves utterances under 10 frames unmasked at times; a micro-batch of them stopped the run
    advising min_masks, which that style never reads (model.min_masks=5 died the same). The advice now fits the
    style, with the length below which a mask can fail (from ``sure_mask_samples``: 10 frames start at 3280 samples
    on tiny's CNN) and the data.min_seconds that leaves such utterances out."""
    model = Wav2Vec2ForPreTraining(load_model_config("tiny", overrides)).train()
    frames, samples = model.sure_mask_samples()
    flen = model.frame_lengths(torch.tensor([samples, samples - 1])).tolist()
    assert flen == [frames, frames - 1]
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([samples - 1] * 4)  # one frame short of sure: some draw masks none of them
    wave = torch.randn(4, samples - 1, generator=g)
    for _ in range(200):
        mask, _, _ = model.draw_mask(lens, samples - 1, g, torch.device("cpu"))
        if not mask.any():
            break
    else:
        pytest.fail("no draw left the micro-batch without a masked frame")
    with pytest.raises(ValueError, match="this micro-batch has none") as e:
        model(wave, lens, mask=mask)
    assert advice in str(e.value) and "raise min_masks" not in str(e.value)


def test_hard_perplexity_counts_the_codes_the_logits_choose() -> None:
    """ppl_hard is the perplexity of the codes the quantizer's logits choose (fairseq's code_perplexity), not of the
    Gumbel-noised codes training samples: without dropout, a training forward and an eval forward agree on it."""
    cfg = load_model_config("tiny", ["dropout=0", "attention_dropout=0", "activation_dropout=0", "dropout_input=0",
                                     "dropout_features=0", "layerdrop=0"])
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(cfg)
    wave, lens = torch.randn(2, 16000), torch.tensor([16000, 12000])
    mask = model.wav2vec2.draw_mask(lens, 16000, torch.Generator().manual_seed(1))
    out = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        out[mode] = model(wave, lens, mask=mask, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out["train"].perplexity_hard, out["eval"].perplexity_hard)
    assert not torch.equal(out["train"].contrastive, out["eval"].contrastive)  # training did sample its targets


def test_feature_grad_mult_zero_runs_the_cnn_without_autograd(tmp_path) -> None:
    """fairseq's feature_grad_mult 0 runs the CNN without autograd: no gradient at all (zeros, as a 0 multiplier
    gave, still let AdamW's weight decay shrink the CNN), the transformer still trains, and DDP, which must not
    wait for gradients that never come, takes two steps (no_grad around the CNN failed there)."""
    import torch.distributed as dist

    model = Wav2Vec2ForPreTraining(load_model_config("tiny", ["feature_grad_mult=0", "layerdrop=0"])).train()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = torch.nn.parallel.DistributedDataParallel(model)
        wave, lens = batch()
        for step in range(2):
            out = net(wave, lens, generator=torch.Generator().manual_seed(step))
            out.objective(out.num_masked).backward()
    finally:
        dist.destroy_process_group()
    assert all(p.grad is None for p in model.wav2vec2.feature_encoder.parameters())
    assert model.wav2vec2.encoder.layers[0].attention.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"model\.feature_grad_mult=-1\.0: expected a finite multiplier >= 0"):
        load_model_config("tiny", ["feature_grad_mult=-1"])
