"""Greedy CTC decoding, vectorised over a batch; what ``evaluate`` and ``transcribe`` share: the batches a model is
scored in, a batch's transcripts (greedy, and with an LM).

Per frame the arg-max token is taken; runs of the same token collapse to one, then blanks are dropped
(so ``a <b> a`` is ``aa`` while ``a a`` is ``a``); ``|`` becomes a space and spaces are merged/stripped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from earful.data.budget import SAMPLE_RATE, BatchBudget
from earful.data.manifest import Utterance, lengths_at_rate
from earful.eval.vocab import CharVocab, strip_placeholders

if TYPE_CHECKING:
    from earful.eval.beam import LMBeamDecoder


def check_device_seconds(device_seconds: float) -> None:
    """Refuse a ``device_seconds`` (``--device-seconds``) that is not a finite number of seconds > 0; the commands
    call it before any work (the checkpoint loaded, an output made)."""
    if not math.isfinite(device_seconds) or device_seconds <= 0:
        raise ValueError(f"device_seconds (--device-seconds) = {device_seconds}: expected a finite number of "
                         "seconds > 0")


def scoring_budget(utts: Sequence[Utterance], device_seconds: float, world_size: int = 1) -> BatchBudget:
    """The budget that scores every one of ``utts`` whole (``evaluate``, fine-tuning's validation): batches of at
    most ``device_seconds`` of padded audio, and an utterance longer than that in a batch of its own.

    The sampler packs batches to ``micro_seconds`` and leaves out only what is longer than ``device_seconds``
    (see :mod:`earful.data.budget`), so ``device_seconds`` admits the longest utterance while the step's
    ``batch_seconds`` (one micro-batch a device) keeps the packing at ``device_seconds``."""
    check_device_seconds(device_seconds)
    longest = int(lengths_at_rate(utts).max(initial=0))
    admitted = max(device_seconds, (longest + 1) / SAMPLE_RATE)
    return BatchBudget(device_seconds * world_size, admitted, world_size)


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def greedy_ids(
    logits: torch.Tensor | np.ndarray,
    frame_lengths: torch.Tensor | np.ndarray | None = None,
    blank_id: int = 0,
) -> list[list[int]]:
    """Collapsed token ids per utterance (blanks removed) from ``(batch, frames, vocab)`` scores.

    Args:
        logits: scores or log-probabilities, ``(batch, frames, vocab)``; only the arg-max is used.
        frame_lengths: ``(batch,)`` real frames per utterance; frames beyond are ignored. ``None``: all.
        blank_id: the CTC blank index.
    """
    scores = _as_tensor(logits)
    if scores.dim() != 3:
        raise ValueError(f"logits must be (batch, frames, vocab), got shape {tuple(scores.shape)}")
    best = scores.argmax(dim=-1)  # (B, T)
    return collapse_ids(best, frame_lengths, blank_id)


def collapse_ids(
    best: torch.Tensor | np.ndarray,
    frame_lengths: torch.Tensor | np.ndarray | None = None,
    blank_id: int = 0,
) -> list[list[int]]:
    """CTC-collapse ``(batch, frames)`` frame labels: merge repeats, then drop blanks and padding."""
    best = _as_tensor(best).detach().to("cpu", torch.long)
    if best.dim() != 2:
        raise ValueError(f"frame labels must be (batch, frames), got shape {tuple(best.shape)}")
    b, t = best.shape
    if frame_lengths is None:
        lengths = torch.full((b,), t, dtype=torch.long)
    else:
        lengths = _as_tensor(frame_lengths).detach().to("cpu", torch.long).reshape(-1)
        if lengths.numel() != b:
            raise ValueError(f"{lengths.numel()} frame lengths for a batch of {b}")
        if (lengths < 0).any() or (lengths > t).any():
            raise ValueError(f"frame lengths must lie in [0, {t}], got {lengths.tolist()}")
    valid = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    changed = torch.ones_like(valid)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = valid & changed & (best != blank_id)
    counts = keep.sum(dim=1).tolist()
    flat = best[keep].tolist()  # row-major, so utterances come out in order
    out: list[list[int]] = []
    start = 0
    for c in counts:
        out.append(flat[start : start + c])
        start += c
    return out


def greedy_decode(
    logits: torch.Tensor | np.ndarray,
    frame_lengths: torch.Tensor | np.ndarray | None,
    vocab: CharVocab,
) -> list[str]:
    """Greedy CTC transcripts for a batch: ``(batch, frames, vocab)`` scores + frame lengths -> strings, without
    the stand-ins of an imported vocabulary's multi-character symbols (``<s>``, ``<unk>``): what evaluate, transcribe
    and fine-tuning's validation all score (validation had counted them as errors)."""
    scores = _as_tensor(logits)
    if scores.dim() == 3 and scores.shape[-1] != len(vocab):
        raise ValueError(f"logits have {scores.shape[-1]} classes, the vocabulary {len(vocab)}")
    return [strip_placeholders(vocab.decode(ids)) for ids in greedy_ids(scores, frame_lengths, vocab.blank_id)]


def decode_batch(
    logits: torch.Tensor,
    frame_lengths: torch.Tensor | None,
    vocab: CharVocab,
    beam: LMBeamDecoder | None = None,
) -> tuple[list[str], list[str] | None]:
    """A batch's greedy transcripts (:func:`greedy_decode`) and, with ``beam``, its LM beam search's (None
    without)."""
    return greedy_decode(logits, frame_lengths, vocab), None if beam is None else beam.decode(logits, frame_lengths)
