"""Corpus-level word and character error rates with jiwer (3.x or 4.x), with their counts.

Texts are compared after white space is merged and stripped (no other normalisation: transcripts are
expected to be normalised already, e.g. by :class:`earful.eval.vocab.CharVocab`). CER counts the
spaces between words as characters, as jiwer does.

Edge cases: an utterance with an empty reference contributes its hypothesis as insertions (its error
rate alone would be undefined); an empty hypothesis contributes its reference as deletions. A corpus
whose references are *all* empty has no defined error rate: :func:`error_counts` raises ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import jiwer

Unit = Literal["word", "char"]


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations between references and hypotheses, summed over a corpus."""

    substitutions: int
    deletions: int
    insertions: int
    hits: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_length(self) -> int:
        """Words (or characters) in the references: hits + substitutions + deletions."""
        return self.hits + self.substitutions + self.deletions

    @property
    def rate(self) -> float:
        """Errors / reference length (can exceed 1 through insertions)."""
        if self.reference_length == 0:
            raise ValueError("error rate undefined: the references are empty")
        return self.errors / self.reference_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
        )

    def to_dict(self, unit: Unit = "word") -> dict[str, Any]:
        """Counts, reference length and rate (``None`` when undefined), JSON-able."""
        d: dict[str, Any] = asdict(self)
        d[f"reference_{unit}s"] = self.reference_length
        d["errors"] = self.errors
        d["rate"] = self.rate if self.reference_length else None
        return d


def _clean(text: str) -> str:
    return " ".join(text.split())


def _length(text: str, unit: Unit) -> int:
    return len(text.split()) if unit == "word" else len(text)


def error_counts(
    references: Sequence[str], hypotheses: Sequence[str], unit: Unit = "word", allow_empty: bool = False
) -> ErrorCounts:
    """Corpus-level edit counts in words or characters.

    Args:
        references, hypotheses: parallel lists of transcripts.
        unit: ``"word"`` (WER) or ``"char"`` (CER).
        allow_empty: accept a corpus whose references are all empty (the rate is then undefined).

    Raises:
        ValueError: different list lengths, an empty corpus, or only empty references (unless allowed).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    refs = [_clean(r) for r in references]
    hyps = [_clean(h) for h in hypotheses]
    if not refs and not allow_empty:
        raise ValueError("no utterances to score")
    total = ErrorCounts(0, 0, 0, 0)
    both_r: list[str] = []
    both_h: list[str] = []
    for r, h in zip(refs, hyps, strict=True):
        if not r:
            total += ErrorCounts(0, 0, _length(h, unit), 0)
        elif not h:
            total += ErrorCounts(0, _length(r, unit), 0, 0)
        else:
            both_r.append(r)
            both_h.append(h)
    if both_r:
        process = jiwer.process_words if unit == "word" else jiwer.process_characters
        out = process(both_r, both_h)
        total += ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits)
    if total.reference_length == 0 and not allow_empty:
        raise ValueError("all references are empty: the error rate is undefined")
    return total


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus-level word error rate."""
    return error_counts(references, hypotheses, "word").rate


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus-level character error rate (spaces count)."""
    return error_counts(references, hypotheses, "char").rate


def score(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, Any]:
    """WER and CER with their counts: ``{"wer", "cer", "words": {...}, "chars": {...}, "utterances"}``."""
    words = error_counts(references, hypotheses, "word")
    chars = error_counts(references, hypotheses, "char")
    return {
        "wer": words.rate,
        "cer": chars.rate,
        "utterances": len(references),
        "words": words.to_dict("word"),
        "chars": chars.to_dict("char"),
    }
