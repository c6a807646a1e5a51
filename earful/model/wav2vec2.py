"""wav2vec 2.0: the backbone, the pre-training model (quantizer + contrastive head) and the CTC model.

Read top to bottom: ``Wav2Vec2Model`` turns a padded waveform batch into contextual frames;
``Wav2Vec2ForPreTraining`` adds the quantizer and the three loss terms; ``Wav2Vec2ForCTC`` adds a
linear character head.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from earful.data.budget import min_seconds_keeping
from earful.model.components import (
    FeatureEncoder,
    FeatureProjection,
    GumbelQuantizer,
    TransformerEncoder,
    grad_multiply,
)
from earful.model.config import ModelConfig
from earful.model.masking import compute_channel_mask, compute_mask, sample_negatives, sure_mask_frames

log = logging.getLogger(__name__)


@dataclass
class BackboneOutput:
    hidden: torch.Tensor  # (batch, frames, hidden) transformer output
    features: torch.Tensor  # (batch, frames, conv_dim) CNN output (after the gradient multiplier)
    normed_features: torch.Tensor  # (batch, frames, conv_dim) LayerNormed CNN output
    padding_mask: torch.Tensor  # (batch, frames) True = padding
    frame_lengths: torch.Tensor  # (batch,)
    mask: torch.Tensor | None  # (batch, frames) True = masked (replaced by the mask embedding)
    hidden_states: list[torch.Tensor] = field(default_factory=list)


class Wav2Vec2Model(nn.Module):
    """Feature encoder → projection → (masking) → positional conv → transformer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_encoder = FeatureEncoder(cfg)
        if cfg.feature_grad_mult == 0:  # fairseq runs the CNN without autograd: no gradient, no weight decay
            self.feature_encoder.requires_grad_(False)  # (and DDP expects none from it)
        self.feature_projection = FeatureProjection(cfg)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(cfg.hidden_size).uniform_())
        self.encoder = TransformerEncoder(cfg)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.feature_encoder.output_lengths(lengths)

    def draw_mask(
        self, lengths: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """The span mask (batch, frames), True = masked, for utterances of ``lengths`` samples padded to
        ``num_samples``: the config's ``mask_prob``, ``mask_length``, ``min_masks`` and style, drawn from
        ``generator`` on ``lengths``' device. None when ``mask_prob`` is 0. Lengths on the host and a CPU
        generator draw it without waiting for the device (what the pre-training task does)."""
        c = self.cfg
        if c.mask_prob <= 0:
            return None
        frames = int(self.frame_lengths(torch.tensor(num_samples)))
        flen = self.frame_lengths(lengths).clamp(max=frames)  # (batch,)
        return compute_mask(flen, frames, c.mask_prob, c.mask_length, min_masks=c.min_masks, style=c.mask_style,
                            require_same_masks=c.require_same_masks, generator=generator)

    def extract_features(
        self, wave: torch.Tensor, lengths: torch.Tensor, *, padded: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN features (batch, frames, conv_dim) and the padding mask (batch, frames). ``padded`` False: no
        utterance of the batch is padded (lengths are all the batch's length)."""
        if self.cfg.normalize_waveform:
            wave = _normalize(wave, lengths)
        exclude = padded and self.cfg.group_norm_padding == "excluded"
        feats = self.feature_encoder(wave, lengths if exclude else None).transpose(1, 2)  # (batch, frames, conv_dim)
        feats = grad_multiply(feats, self.cfg.feature_grad_mult) if self.training else feats
        flen = self.frame_lengths(lengths).clamp(max=feats.shape[1])
        padding_mask = torch.arange(feats.shape[1], device=feats.device)[None, :] >= flen[:, None]
        return feats, padding_mask

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | None,
        *,
        mask: torch.Tensor | bool | None = None,
        output_hidden_states: bool = False,
        generator: torch.Generator | None = None,
        host_generator: torch.Generator | None = None,
    ) -> BackboneOutput:
        """wave: (batch, samples) zero-padded; lengths: (batch,) samples, or None when every utterance fills
        the batch (as transformers' attention_mask=None): attention then runs without a key mask, which lets
        SDPA use FlashAttention on a GPU (on a CPU the results are the same either way).

        ``mask``: a (batch, frames) bool tensor to use, ``True`` to draw one from the config's ``mask_prob``
        (from ``generator``), or None / False for no masking. With masking, ``mask_channel_prob`` > 0 adds
        channel masks. ``host_generator``: a CPU generator for the draws that steer the computation (channel
        masks, LayerDrop), so that they need no sync with the device; ``generator`` when not given.
        """
        unpadded = lengths is None
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[1], device=wave.device)
        feats, padding_mask = self.extract_features(wave, lengths, padded=not unpadded)
        flen = (~padding_mask).sum(1)
        x, normed = self.feature_projection(feats)  # (batch, frames, hidden), (batch, frames, conv_dim)
        x = self.dropout_input(x)
        masking = mask is not None and mask is not False
        host = generator if host_generator is None else host_generator
        if mask is True:
            mask = self.draw_mask(lengths, wave.shape[1], generator)
        elif mask is False:
            mask = None
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        if masking and self.cfg.mask_channel_prob > 0:  # after the time mask, as fairseq and transformers do:
            cmask = compute_channel_mask(  # a masked channel is zero in masked frames too
                x.shape[0], x.shape[2], self.cfg.mask_channel_prob, self.cfg.mask_channel_length,
                device=host.device if host is not None else x.device, generator=host,
            )  # (batch, hidden)
            cmask = to_device(cmask, x.device)
            x = x.masked_fill(cmask[:, None, :], 0.0)
        hidden, states = self.encoder(
            x, None if unpadded else padding_mask, output_hidden_states=output_hidden_states, generator=host
        )
        return BackboneOutput(hidden, feats, normed, padding_mask, flen, mask, states)


def _normalize(wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its real samples (padding stays 0)."""
    valid = torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]
    n = lengths.clamp(min=1)[:, None].to(wave.dtype)
    mean = (wave * valid).sum(1, keepdim=True) / n
    var = (((wave - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return ((wave - mean) / torch.sqrt(var + 1e-7)) * valid


# --------------------------------------------------------------------------------------------------
# Pre-training
# --------------------------------------------------------------------------------------------------
@dataclass
class PretrainOutput:
    """Loss terms are SUMS over the micro-batch's masked frames so the trainer can normalise once by
    the global count (summed over micro-batches and ranks); see ``objective``. The diversity term is the
    exception: its perplexity is this micro-batch's (fairseq's and nanow2v2's convention), so it depends on how a
    batch is split into micro-batches where the contrastive loss and the (fairseq-style) penalty do not."""

    contrastive: torch.Tensor  # Σ over masked frames of the cross-entropy
    diversity: torch.Tensor  # fairseq: (GV − Σ_g PPL_g)/GV × masked; nanow2v2: Σ_g (V − PPL_g)
    penalty: torch.Tensor  # fairseq-style: Σ over masked frames of mean_c(f²); nanow2v2: mean(f²)
    num_masked: torch.Tensor  # masked frames in this micro-batch
    num_correct: torch.Tensor  # masked frames whose positive scored highest (ties excluded)
    perplexity_soft: torch.Tensor  # (G,) perplexity of the mean softmax per group
    perplexity_hard: torch.Tensor  # (G,) perplexity of the argmax code histogram per group
    logits: torch.Tensor  # (masked, 1 + K) contrastive logits, positive first
    diversity_weight: float
    penalty_weight: float
    normalisation: str
    mask: torch.Tensor  # (batch, frames)
    negatives: torch.Tensor  # (batch, frames, K)

    def loss_sum(self) -> torch.Tensor:
        """The weighted loss of this micro-batch, a sum: contrastive + diversity + feature penalty."""
        return self.contrastive + self.diversity_weight * self.diversity + self.penalty_weight * self.penalty

    def objective(self, num_masked_global: float, num_micro_global: int = 1) -> torch.Tensor:
        """This micro-batch's share of the step's loss. Summing it over all micro-batches and ranks
        gives fairseq's loss per masked frame (or the paper's mean of per-micro-batch sums)."""
        return self.loss_sum() / loss_denominator(self.normalisation, float(num_masked_global), num_micro_global)


def loss_denominator(normalisation: str, masked: float, micro_batches: float) -> float:
    """What a step's summed losses (and gradients) are divided by: the masked frames over all its micro-batches
    (fairseq's ``sample_size``), or with ``nanow2v2`` the number of micro-batches (the paper's code)."""
    return micro_batches if normalisation == "nanow2v2" else max(masked, 1.0)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``, copied without waiting: a host tensor bound for a GPU goes through pinned memory (a
    pageable one may be staged synchronously)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _flat_indices(mask: torch.Tensor) -> torch.Tensor:
    """(batch, frames) bool → (n,) flat indices of its True entries, in row-major order. A nonzero: on a GPU it
    waits for the device."""
    return mask.reshape(-1).nonzero().squeeze(1)


def _perplexity(probs: torch.Tensor) -> torch.Tensor:
    """probs: (G, V) marginals → (G,) exp(entropy)."""
    return torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1))


class Wav2Vec2ForPreTraining(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.quantizer = GumbelQuantizer(cfg, cfg.conv_dim[-1])
        self.project_q = nn.Linear(cfg.codevector_dim, cfg.final_dim)
        self.final_proj = nn.Linear(cfg.hidden_size, cfg.final_dim)
        self.step = 0

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.wav2vec2.frame_lengths(lengths)

    def sure_mask_samples(self) -> tuple[int, int] | None:
        """(frames, samples): the fewest frames, and the fewest samples that give them, from which the configured
        span mask always masks a frame of an utterance (``masking.sure_mask_frames``); None if it never masks."""
        c = self.cfg
        frames = sure_mask_frames(c.mask_prob, c.mask_length, min_masks=c.min_masks, style=c.mask_style)
        if frames is None:
            return None
        hi = 1
        while int(self.frame_lengths(torch.tensor(hi))) < frames:
            hi *= 2
        lo = hi // 2  # frame_lengths(lo) < frames <= frame_lengths(hi), or lo = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if int(self.frame_lengths(torch.tensor(mid))) >= frames else (mid, hi)
        return frames, hi

    def no_mask_advice(self) -> str:
        """What leaves no micro-batch without a masked frame, for the configured mask style."""
        c = self.cfg
        if c.mask_prob <= 0:
            return "raise model.mask_prob"
        frames, samples = self.sure_mask_samples()  # type: ignore[misc]
        seconds = min_seconds_keeping(samples)
        if c.mask_style == "nanow2v2":
            return (f"the nanow2v2 mask style (which does not read model.min_masks) can leave an utterance of fewer "
                    f"than {frames} frames (under {samples} samples at 16 kHz) without a masked frame: "
                    f"data.min_seconds={seconds:g} leaves such utterances out")
        if c.min_masks < 1:
            return (f"model.min_masks=1 or more gives every utterance a masked frame (model.min_masks={c.min_masks} "
                    f"can leave one of fewer than {frames} frames, under {samples} samples at 16 kHz, without: "
                    f"data.min_seconds={seconds:g} leaves those out)")
        return "raise model.mask_prob or model.min_masks"

    def draw_mask(
        self, lengths: torch.Tensor, num_samples: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``forward``'s ``mask`` (batch, frames), ``mask_indices`` (masked,) and ``real_indices`` (real,), drawn
        from ``generator`` with ``lengths`` (batch,) samples padded to ``num_samples``, and copied to ``device``
        without waiting. ``real_indices``: the flat indices of the real frames, which nanow2v2's normalisation
        quantizes, when the batch is padded; None otherwise. The pre-training task draws them on the host: a GPU
        step then has no sync before its loss (the nonzeros and the mask's span count run on the CPU)."""
        mask = self.wav2vec2.draw_mask(lengths, num_samples, generator)
        if mask is None:
            raise ValueError("pre-training needs masked frames; raise mask_prob or min_masks")
        real = None
        if self.cfg.loss_normalisation == "nanow2v2" and bool((lengths < num_samples).any()):  # padded
            flen = self.frame_lengths(lengths).clamp(max=mask.shape[1])  # (batch,)
            real = _flat_indices(torch.arange(mask.shape[1], device=mask.device)[None, :] < flen[:, None])
        masked = _flat_indices(mask)
        return to_device(mask, device), to_device(masked, device), None if real is None else to_device(real, device)

    def temperature_at(self, step: int) -> float:
        c = self.cfg
        return max(c.temperature_start * c.temperature_decay**step, c.temperature_end)

    def set_step(self, step: int) -> None:
        """Advance the Gumbel temperature (and the diversity warm-up) to optimizer step ``step``."""
        self.step = step
        self.quantizer.temperature = self.temperature_at(step)

    def diversity_weight_at(self, step: int) -> float:
        """0 before ``diversity_start_step``, then a linear ramp over ``diversity_warmup_steps``."""
        c = self.cfg
        if step < c.diversity_start_step:
            return 0.0
        warm = c.diversity_warmup_steps
        return c.diversity_weight * (min(1.0, (step - c.diversity_start_step) / warm) if warm > 0 else 1.0)

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | None,
        *,
        mask: torch.Tensor | None = None,
        mask_indices: torch.Tensor | None = None,
        real_indices: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        host_generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        """wave (batch, samples), lengths (batch,) or None (no padding); optional mask (batch, frames) bool
        and negatives (batch, frames, K) frame indices within the utterance (drawn here if not given).
        ``mask_indices`` (masked,) and ``real_indices`` (real,): the flat indices of the masked and of the real
        frames, as ``draw_mask`` gives them with the mask; without them they are found here, which waits for the
        device. ``host_generator``: see ``Wav2Vec2Model``."""
        cfg = self.cfg
        out = self.wav2vec2(wave, lengths, mask=True if mask is None else mask, generator=generator,
                            host_generator=host_generator)
        mask = out.mask
        if mask is None:
            raise ValueError("pre-training needs masked frames; raise mask_prob or min_masks")
        # flat indices of the masked frames, in boolean-indexing order: they serve every gather and scatter below
        # instead of one boolean index each (and its sync), and tell an empty mask
        mask_idx = _flat_indices(mask) if mask_indices is None else mask_indices  # (masked,)
        if mask_idx.numel() == 0:
            raise ValueError(f"pre-training needs masked frames and this micro-batch has none; {self.no_mask_advice()}")
        b, t, _ = out.hidden.shape
        if negatives is None:
            negatives = sample_negatives(mask, cfg.num_negatives, generator,
                                         exclude_self=cfg.negatives_style == "fairseq")  # (batch, frames, K)
        valid = ~out.padding_mask  # (batch, frames)

        # --- targets: quantize the frames the losses need (masked; all real ones for nanow2v2) ---
        qin = out.features if cfg.quantizer_input == "raw" else out.normed_features
        qin = self.dropout_features(qin)
        if cfg.loss_normalisation == "nanow2v2":  # every real frame (the masked ones are real)
            if lengths is None:
                sel_idx = torch.arange(b * t, device=mask.device)
            else:
                sel_idx = _flat_indices(mask | valid) if real_indices is None else real_indices
        else:
            sel_idx = mask_idx
        x_sel = qin.reshape(b * t, -1).index_select(0, sel_idx)
        q_sel, codes_sel, soft_sel = self.quantizer(x_sel, generator)  # (n, D), (n, G), (n, G, V)
        q = q_sel.new_zeros(b * t, q_sel.shape[-1]).index_copy(0, sel_idx, q_sel).view(b, t, -1)
        q = self.project_q(q)  # (batch, frames, final_dim)
        codes = torch.full((b * t, cfg.num_codevector_groups), -1, dtype=torch.long, device=q.device)
        codes = codes.index_copy(0, sel_idx, codes_sel).view(b, t, -1)

        # --- contrastive logits: cosine similarity of context and targets / temperature ---
        c = self.final_proj(out.hidden)  # (batch, frames, final_dim)
        cn = F.normalize(c.float(), dim=-1, eps=1e-8)
        qn = F.normalize(q.float(), dim=-1, eps=1e-8)
        with torch.autocast(cn.device.type, enabled=False):  # fp32 scores: bf16 would tie the positive at ~0.06
            sim = torch.bmm(cn, qn.transpose(1, 2)) / cfg.logit_temperature  # (batch, frames, frames)
        pos = sim.diagonal(dim1=1, dim2=2)  # (batch, frames)
        neg = sim.gather(2, negatives)  # (batch, frames, K)
        if cfg.negatives_style == "fairseq":  # a distractor quantized like the target is not a distractor
            neg_codes = codes.gather(1, negatives.reshape(b, -1, 1).expand(-1, -1, codes.shape[-1]))
            same = (neg_codes.view(b, t, -1, codes.shape[-1]) == codes[:, :, None, :]).all(-1)  # (b, t, K)
        else:  # nanow2v2: only a draw of the frame itself
            same = negatives == torch.arange(t, device=negatives.device)[None, :, None]  # (b, t, K)
        neg = neg.masked_fill(same, float("-inf"))
        logits = torch.cat([pos[..., None], neg], dim=-1).view(b * t, -1).index_select(0, mask_idx)  # (masked, 1+K)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        contrastive = F.cross_entropy(logits, target, reduction="sum")
        num_masked = mask.sum()

        with torch.no_grad():
            is_max = logits.argmax(-1) == 0
            is_min = logits.argmin(-1) == 0
            num_correct = (is_max & ~is_min).sum()
            g, v = cfg.num_codevector_groups, cfg.num_codevectors_per_group
            # the codes the logits choose, before the Gumbel noise of training (fairseq's code_perplexity)
            hist = F.one_hot(soft_sel.argmax(-1), v).float().mean(0)  # (G, V)
            ppl_hard = _perplexity(hist)

        # --- auxiliary losses ---
        soft_marginal = soft_sel.mean(0)  # (G, V) over the quantized frames
        ppl_soft = _perplexity(soft_marginal)
        feat_sq = (out.features.float() ** 2).mean(-1)  # (batch, frames)
        if cfg.loss_normalisation == "nanow2v2":
            diversity = (v - ppl_soft).sum()
            penalty = (feat_sq * valid).sum() / valid.sum().clamp(min=1)  # mean over real frames
        else:
            diversity = (g * v - ppl_soft.sum()) / (g * v) * num_masked
            penalty = feat_sq.reshape(-1).index_select(0, mask_idx).sum()  # Σ over masked frames: additive
        return PretrainOutput(
            contrastive=contrastive, diversity=diversity, penalty=penalty, num_masked=num_masked,
            num_correct=num_correct, perplexity_soft=ppl_soft.detach(), perplexity_hard=ppl_hard,
            logits=logits, diversity_weight=self.diversity_weight_at(self.step),
            penalty_weight=cfg.feature_penalty_weight,
            normalisation=cfg.loss_normalisation, mask=mask, negatives=negatives,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------------
class Wav2Vec2ForCTC(nn.Module):
    """Backbone + dropout + Linear(hidden → vocab). Logits are per frame; index 0 is the CTC blank."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.dropout = nn.Dropout(cfg.final_dropout)
        self.lm_head = nn.Linear(cfg.hidden_size, vocab_size)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.wav2vec2.frame_lengths(lengths)

    def forward(
        self,
        wave: torch.Tensor,
        lengths: torch.Tensor | None,
        *,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        host_generator: torch.Generator | None = None,
        freeze_backbone: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits (batch, frames, vocab) and frame lengths (batch,). Time and channel masking
        (``mask_prob``, ``mask_channel_prob``) apply in training only: the time mask is ``mask`` (batch, frames)
        when given (drawn beforehand, ``Wav2Vec2Model.draw_mask``), else drawn here from ``generator``.
        ``freeze_backbone``: run the backbone outside autograd (the same draws; outputs equal to rounding: the
        CNN's masked GroupNorm rounds differently without autograd, ≤ 1e-6; only the head gets gradients).
        ``host_generator``: see ``Wav2Vec2Model``."""
        masking = (mask if mask is not None else True) if self.training else None
        with torch.no_grad() if freeze_backbone else nullcontext():
            out = self.wav2vec2(wave, lengths, mask=masking, generator=generator, host_generator=host_generator)
        return self.lm_head(self.dropout(out.hidden)), out.frame_lengths

    def ctc_loss(
        self, logits: torch.Tensor, frame_lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Summed CTC loss (blank 0, zero_infinity); the trainer divides by the global count."""
        logp = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (frames, batch, vocab)
        return F.ctc_loss(
            logp, targets, frame_lengths, target_lengths, blank=0, reduction="sum", zero_infinity=True
        )


def compile_blocks(model: Wav2Vec2ForPreTraining | Wav2Vec2ForCTC, backend: str = "inductor",
                   mode: str = "default") -> None:
    """``torch.compile`` in place the parts whose control flow does not depend on the data — the CNN and every
    transformer layer; masking, negatives and losses (data-dependent shapes) stay eager. Parameter names and
    checkpoints are unchanged. ``mode``: torch.compile's (``reduce-overhead``: CUDA graphs of each part)."""
    options = {"backend": backend} if mode == "default" else {"backend": backend, "mode": mode}
    backbone = model.wav2vec2
    backbone.feature_encoder.compile(**options)
    for layer in backbone.encoder.layers:
        layer.compile(**options)


def uses_cuda_graphs(backend: str, mode: str) -> bool:
    """Whether torch.compile with ``backend`` and ``mode`` replays CUDA graphs (whose outputs a later replay
    overwrites: each micro-step then starts with ``torch.compiler.cudagraph_mark_step_begin``): the
    ``cudagraphs`` backend, or inductor in a mode that records them (other backends ignore the mode)."""
    return backend == "cudagraphs" or (backend == "inductor" and mode in ("reduce-overhead", "max-autotune"))


def batch_invariant(model: nn.Module) -> nn.Module:
    """``model`` set to compute every utterance as it is alone in a batch (``group_norm_padding="excluded"``),
    as inference (evaluate, transcribe, features) always does: a model trained with "included" statistics
    then gives each utterance what it gives unpadded, and no result depends on the batch."""
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    if cfg.group_norm_padding != "excluded":
        log.info("inference takes the CNN's statistics over each utterance's real samples (the model was "
                 "trained with group_norm_padding=%s)", cfg.group_norm_padding)
        cfg.group_norm_padding = "excluded"  # the one config object the model and its backbone share
    return model


def count_parameters(module: nn.Module) -> int:
    """The number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
