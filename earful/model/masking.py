"""Span masking and distractor sampling, vectorised over the batch, run where their inputs are (training draws the
span mask on the host, ``Wav2Vec2ForPreTraining.draw_mask``; the distractors on the model's device).

All functions take ``frame_lengths: (batch,)`` so padded frames are never masked nor drawn, and an
optional ``torch.Generator`` so a run is reproducible from one seed.
"""

from __future__ import annotations

import math

import torch


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=generator)


def _random_subset(valid: torch.Tensor, count: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Per row, ``count[b]`` distinct random positions among ``valid[b]`` (without replacement).

    valid: (batch, n) bool; count: (batch,) long ≤ valid.sum(1). Returns (batch, n) bool.
    """
    keys = _rand(tuple(valid.shape), valid.device, generator)  # (batch, n)
    keys = torch.where(valid, keys, torch.full_like(keys, -1.0))
    order = keys.argsort(dim=1, descending=True)  # valid positions first, in random order
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(valid.shape[1], device=valid.device).expand_as(order))
    return (rank < count[:, None]) & valid


def compute_mask(
    frame_lengths: torch.Tensor,
    num_frames: int,
    mask_prob: float,
    mask_length: int,
    *,
    min_masks: int = 0,
    style: str = "fairseq",
    require_same_masks: bool = False,
    one_count: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Span mask of shape (batch, num_frames), True = masked.

    ``style="fairseq"`` follows ``fairseq.data.data_utils.compute_mask_indices`` (static spans, its main
    branch's ``num_mask_ver=2``): ``num = max(min_masks, int(mask_prob * L / mask_length + U[0,1)))``, one draw
    of U a row (``one_count``: one for the whole batch, as fairseq 0.12 and transformers draw it when no row is
    padded: what channel masks take); starts drawn without replacement from ``[0, L - mask_length)`` (a shorter
    range for short utterances, never past L so that every utterance gets a masked frame), each masking
    ``mask_length`` frames, spans clipped at L; with ``require_same_masks`` every row is then thinned at random to
    the smallest masked count in the batch.
    ``style="nanow2v2"`` follows the paper's code: ``n = max(span, L - span)``,
    ``num = max(1, ceil(n * mask_prob / span))`` starts from ``[0, n)``.
    """
    device = frame_lengths.device
    lengths = frame_lengths.long()
    batch = lengths.shape[0]
    if batch == 0 or mask_prob <= 0:
        return torch.zeros(batch, num_frames, dtype=torch.bool, device=device)
    span = mask_length
    if style not in ("fairseq", "nanow2v2"):
        raise ValueError(f"unknown mask style {style!r}")
    u = _rand((1,) if one_count else (batch,), device, generator).expand(batch) if style == "fairseq" else None
    num, start_range = _span_counts(lengths, mask_prob, span, min_masks, style, u)
    max_range = int(start_range.max().item()) if batch else 0
    positions = torch.arange(max_range, device=device)
    valid_starts = positions[None, :] < start_range[:, None]  # (batch, max_range)
    starts = _random_subset(valid_starts, num, generator)  # (batch, max_range) bool
    mask = spread_starts(starts, span, num_frames)
    frames = torch.arange(num_frames, device=device)
    mask &= frames[None, :] < lengths[:, None]
    if require_same_masks and batch > 1:
        counts = mask.sum(1)
        mask = _random_subset(mask, counts.min().expand(batch), generator)
    return mask


def _span_counts(lengths: torch.Tensor, mask_prob: float, span: int, min_masks: int, style: str,
                 u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute_mask``'s span count per row and the range ``[0, start_range)`` its starts are drawn from (without
    replacement). ``u`` (batch,): fairseq's uniform draw of each row's count (unused by nanow2v2)."""
    if style == "fairseq":
        num = torch.floor(mask_prob * lengths.double() / span + u.double()).long()
        num = num.clamp(min=min_masks)
        # fairseq: if L - span <= num, shrink the span used for the range to L - num - 1
        start_range = torch.where(lengths - span > num, lengths - span, num + 1)
        # ... but never start past the end (fairseq may then mask nothing in a very short utterance)
        start_range = torch.minimum(start_range, lengths.clamp(min=1))
    else:  # nanow2v2
        n = torch.clamp(lengths - span, min=span)
        num = torch.ceil(n.double() * mask_prob / span).long().clamp(min=1)
        start_range = n
    return torch.minimum(num, start_range), start_range


def sure_mask_frames(mask_prob: float, mask_length: int, *, min_masks: int = 0, style: str = "fairseq") -> int | None:
    """The fewest frames from which ``compute_mask`` always masks a frame of an utterance (of that length or any
    longer one), whatever its draws; None if it never masks (``mask_prob`` 0). Read off ``_span_counts``: a start
    s < L masks frame s, so a row is sure of a masked frame when it draws a start (num ≥ 1) and fewer of its
    candidate starts lie at or past L than it draws (start_range − L < num). fairseq's count is
    smallest at its draw u = 0; past ``max(2·span, span / mask_prob)`` frames both styles are sure (nanow2v2 draws
    its starts from [0, L − span), fairseq at least one from [0, L)). fairseq with ``min_masks`` ≥ 1: 1 frame;
    nanow2v2 (which reads no ``min_masks``): ``mask_length`` frames at any ``mask_prob`` ≤ 1 (below, an utterance
    of L frames gets none with probability (span − L) / span)."""
    if mask_prob <= 0:
        return None
    bound = max(2 * mask_length, math.ceil(mask_length / mask_prob)) + 1
    lengths = torch.arange(1, bound + 1)
    u = torch.zeros(len(lengths), dtype=torch.double) if style == "fairseq" else None
    num, start_range = _span_counts(lengths, mask_prob, mask_length, min_masks, style, u)
    sure = (num >= 1) & (start_range - torch.minimum(lengths, start_range) < num)
    unsure = (~sure).nonzero()
    return 1 if len(unsure) == 0 else int(lengths[unsure[-1, 0]]) + 1


def spread_starts(starts: torch.Tensor, span: int, num_frames: int) -> torch.Tensor:
    """(batch, n) bool span starts → (batch, num_frames) bool: frame t is masked if a start lies in
    (t - span, t]. Counted with an integer cumulative sum, exactly (a 1-channel convolution did this before;
    under a GPU's bf16 autocast it went to cuDNN, which serves such a shape badly)."""
    n = starts.shape[1]
    c = torch.nn.functional.pad(starts.long().cumsum(1), (1, 0))  # (batch, n + 1): c[:, j] = #starts in [0, j)
    t = torch.arange(num_frames, device=starts.device)
    hi, lo = (t + 1).clamp(max=n), (t + 1 - span).clamp(min=0, max=n)
    return (c[:, hi] - c[:, lo]) > 0  # #starts in [t - span + 1, t]


def compute_channel_mask(
    batch: int,
    channels: int,
    mask_prob: float,
    mask_length: int,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Channel (feature-dimension) mask of shape (batch, channels), fairseq's ``mask_channel_*``: one count of
    spans for the batch, as transformers and fairseq 0.12 draw it (fairseq's main branch draws one a row and thins
    every row to the smallest count, so that at its 960 h recipe's p 0.1, spans of 64 of 768 channels, 1.2
    expected, no batch of 8 ever masks two), and, as ``compute_mask_indices`` defaults, every row thinned to the
    batch's smallest masked count."""
    lengths = torch.full((batch,), channels, device=device, dtype=torch.long)
    return compute_mask(lengths, channels, mask_prob, mask_length, min_masks=0, require_same_masks=True,
                        one_count=True, generator=generator)


def sample_negatives(
    mask: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None, *, exclude_self: bool = True
) -> torch.Tensor:
    """Distractor frame indices, (batch, frames, K), drawn uniformly with replacement from the masked
    frames of the same utterance and never the frame itself (fairseq's shift trick), or, with
    ``exclude_self=False`` (nanow2v2), from all of them, the frame itself included.

    Rows of unmasked frames are filled too but are never used. An utterance with a single masked
    frame has no valid distractor: its indices point at the frame itself, and the loss masks them out
    as identical to the target.
    """
    batch, frames = mask.shape
    device = mask.device
    count = mask.sum(1)  # (batch,) masked frames per utterance
    # masked frame positions first, in order: (batch, frames)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    # rank of each frame among the masked frames of its utterance
    rank = torch.cumsum(mask.long(), dim=1) - 1  # (batch, frames)
    u = _rand((batch, frames, num_negatives), device, generator).double()
    if exclude_self:
        high = (count - 1).clamp(min=0).double()  # choices excluding self
        j = torch.floor(u * high[:, None, None]).long()  # in [0, count - 2]
        j = j + (j >= rank[:, :, None]).long()  # skip self
    else:
        j = torch.floor(u * count.double()[:, None, None]).long()  # in [0, count - 1]
    j = torch.minimum(j, (count - 1).clamp(min=0)[:, None, None])
    neg = torch.gather(order, 1, j.view(batch, -1)).view(batch, frames, num_negatives)
    single = (count <= 1)[:, None, None]
    self_idx = torch.arange(frames, device=device)[None, :, None]
    return torch.where(single, self_idx.expand_as(neg), neg)

