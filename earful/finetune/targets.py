"""Transcripts → CTC targets, checked once before training starts.

Every transcript is normalised and encoded with the run's :class:`CharVocab` up front, so characters outside
the vocabulary stop the run at once, every one of them named with how often and where it occurs (an empty
transcript with its utterance's id), not hours in; rows without a transcript, with an empty one, or shorter than
one frame of the model stop it naming how many and a few ids, or with ``data.skip_bad`` are left out, counted and
logged. Utterances too short for their transcript (CTC
needs a frame per character, plus one between repeated characters) are counted and logged: ``zero_infinity``
gives them a zero loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from earful.data.audio import RECEPTIVE_FIELD, shorter_than_a_frame
from earful.data.budget import SAMPLE_RATE
from earful.data.manifest import Utterance
from earful.eval.vocab import CharVocab

log = logging.getLogger(__name__)


def labelled(utts: Sequence[Utterance], where: str, skip_bad: bool) -> tuple[Sequence[Utterance], list[str]]:
    """``utts`` that have a transcript (``utts`` itself where all have one), and the ids of those that have none.
    Those without one are refused (ValueError naming the manifest, how many, a few ids and the ways out) unless
    ``skip_bad`` (data.skip_bad), which leaves them out for the caller to count and log; a manifest with no
    transcript at all is refused."""
    missing = [u.id for u in utts if u.transcript is None]
    if not missing:
        return utts, missing
    kept = [u for u in utts if u.transcript is not None]
    some = _some(missing)
    if not kept:
        raise ValueError(f"{where}: none of its {len(utts)} utterances has a transcript (fine-tuning needs labels), "
                         f"e.g. {some}: give a manifest of labelled rows")
    if not skip_bad:
        raise ValueError(f"{where}: {len(missing)} of {len(utts)} utterances have no transcript (fine-tuning needs "
                         f"labels), e.g. {some}: set data.skip_bad=true to leave them out, or give a manifest of "
                         "labelled rows")
    return kept, missing


def trainable(utts: Sequence[Utterance], targets: dict[str, list[int]], where: str, skip_bad: bool,
              min_seconds: float | None = None) -> tuple[Sequence[Utterance], dict[str, list[str]]]:
    """Of ``utts`` (training rows, labelled, encoded to ``targets``), those a CTC step can take, and the ids of
    the others by why: an empty transcript once normalised, and fewer samples than one frame of the model needs
    (no output at all; the loader had stopped the run at the first, midway, naming its file alone, after a
    warning that promised a zero loss), unless ``min_seconds`` (data.min_seconds) leaves them out anyway. Refused
    (ValueError naming the manifest, how many of each and a few ids, at once: they had been named one a run)
    unless ``skip_bad``, which leaves them out for the caller to count and log (by why: "with an empty
    transcript …")."""
    empty = [u.id for u in utts if not targets[u.id]]
    short = [u.id for u in shorter_than_a_frame(utts) if not (min_seconds and u.seconds < min_seconds)]
    bad = {why: ids for why, ids in (
        ("with an empty transcript (once lower-cased and text_mapping applied)", empty),
        (f"with fewer samples than one frame of the model needs ({RECEPTIVE_FIELD} at {SAMPLE_RATE} Hz)", short),
    ) if ids}  # fmt: skip
    if not bad:
        return utts, {}
    left = set(empty) | set(short)
    kept = [u for u in utts if u.id not in left]
    said = "; ".join(f"{len(ids)} of {len(utts)} utterances {why}, e.g. {_some(ids)}" for why, ids in bad.items())
    if not kept:
        raise ValueError(f"{where}: none of its utterances can be trained on: {said}")
    if not skip_bad:
        raise ValueError(f"{where}: {said}: set data.skip_bad=true to leave them out (counted in the log), or leave "
                         "them out of the manifest")
    return kept, bad


def _some(ids: Sequence[str]) -> str:
    return ", ".join(repr(i) for i in ids[:3]) + (", …" if len(ids) > 3 else "")


# fine-tuning's other way out of characters its vocabulary cannot spell (CharVocab.check_texts)
VOCAB_REMEDY = ("vocab=data makes the vocabulary of every character in the training (and validation) "
                "transcripts, vocab=init the initial CTC model's. ")


def _per_transcript(utts: Sequence[Utterance], fn: Callable[..., Any], where: str, vocab: CharVocab,
                    remedy: str = "") -> dict[str, Any]:
    """``{utterance id: fn(transcript)}``; raises ValueError naming the first utterance without a transcript,
    or every character ``vocab`` cannot spell in any of them (all at once: one rerun, not one a character), with
    ``remedy`` (fine-tuning's: ``VOCAB_REMEDY``)."""
    missing = next((u.id for u in utts if u.transcript is None), None)
    if missing is not None:
        raise ValueError(f"{where}: utterance {missing!r} has no transcript (fine-tuning needs labels)")
    vocab.check_texts(((u.id, str(u.transcript)) for u in utts), where, remedy)
    return {u.id: fn(u.transcript, utt_id=u.id) for u in utts}


def encode_transcripts(utts: Sequence[Utterance], vocab: CharVocab, where: str, *,
                       allow_empty: bool = False, remedy: str = "") -> dict[str, list[int]]:
    """``{utterance id: target ids}``; raises ValueError naming the first bad utterance (an empty
    transcript is one, unless ``allow_empty``: a validation set may score silence)."""
    out = _per_transcript(utts, vocab.encode, where, vocab, remedy)
    empty = [i for i, ids in out.items() if not ids]
    if empty and not allow_empty:
        raw = {u.id: u.transcript for u in utts}
        emptied = [i for i in empty if str(raw[i]).strip()]  # text that the normalisation (text_mapping) removed
        if emptied:
            raise ValueError(f"{where}: {len(empty)} utterance(s) have no characters left once normalised (lower-"
                             f"cased, text_mapping applied), e.g. {emptied[0]!r}: {raw[emptied[0]]!r}; remove them "
                             "from the manifest, or change text_mapping")
        raise ValueError(f"{where}: utterance {empty[0]!r} has an empty transcript (remove it from the manifest, "
                         "or give it its text)")
    return out


def normalised_references(utts: Sequence[Utterance], vocab: CharVocab, where: str, remedy: str = ""
                          ) -> dict[str, str]:
    """``{utterance id: normalised transcript}`` (what WER is measured against)."""
    return _per_transcript(utts, vocab.normalize, where, vocab, remedy)


def ctc_frames_needed(ids: Sequence[int]) -> int:
    """Minimum frames for a CTC alignment: one per token plus a blank between equal neighbours."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:], strict=False) if a == b)


def too_short(
    utts: Sequence[Utterance], targets: dict[str, list[int]], frames: Callable[[torch.Tensor], torch.Tensor],
    sample_rate: int = SAMPLE_RATE,
) -> list[str]:
    """Ids of utterances with fewer frames (``frames`` of their samples) than their transcript needs."""
    if not utts:
        return []
    samples = torch.tensor([u.samples_at(sample_rate) for u in utts], dtype=torch.long)
    return unalignable([u.id for u in utts], frames(samples).tolist(), targets)


def unalignable(ids: Sequence[str], frames: Sequence[int], targets: dict[str, list[int]]) -> list[str]:
    """Of ``ids``, with ``frames`` frames each, those with fewer than their targets need: CTC cannot align them."""
    return [i for i, f in zip(ids, frames, strict=True) if f < ctc_frames_needed(targets[i])]


def batch_targets(ids: Sequence[str], targets: dict[str, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated targets (sum of lengths,) and their lengths (batch,) for ``F.ctc_loss``."""
    seqs = [targets[i] for i in ids]
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    flat = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    return flat, lengths
