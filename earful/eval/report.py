"""Per-utterance hypotheses (JSONL) and a summary (JSON) for one decoding of one split."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from earful.atomic import atomic_open, atomic_write_json
from earful.eval.metrics import error_counts, score

log = logging.getLogger(__name__)
UNLABELLED_IDS = 5  # ids of utterances without a reference named in a summary and its warning


def write_hypotheses(
    out_dir: str | Path,
    ids: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str | None] | None = None,
    name: str = "greedy",
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``OUT/NAME.jsonl`` (one ``{"id", "hyp"[, "ref", word/char error counts]}`` a line) and
    ``OUT/NAME.summary.json`` (corpus WER/CER with counts over the utterances that have a reference, plus
    ``meta``: split, checkpoint, decoder options, ...). Returns the summary.

    Where some references are None (a manifest row without a transcript) the summary also has ``scored`` (the
    utterances WER/CER are over), ``unlabelled`` (how many have none) and ``unlabelled_ids`` (the first
    few), and a warning says so; where none has one, there is no WER/CER and the warning says that.
    """
    n = len(ids)
    if len(hypotheses) != n or (references is not None and len(references) != n):
        raise ValueError(
            f"{n} ids, {len(hypotheses)} hypotheses, "
            f"{'no' if references is None else len(references)} references"
        )
    if len(set(ids)) != n:
        raise ValueError("utterance ids are not unique")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / f"{name}.jsonl"
    with atomic_open(jsonl) as f:
        for i, utt in enumerate(ids):
            row: dict[str, Any] = {"id": utt, "hyp": hypotheses[i]}
            ref = references[i] if references is not None else None
            if ref is not None:
                w = error_counts([ref], [hypotheses[i]], "word", allow_empty=True)
                c = error_counts([ref], [hypotheses[i]], "char", allow_empty=True)
                row.update(
                    ref=ref,
                    word_errors=w.errors,
                    reference_words=w.reference_length,
                    char_errors=c.errors,
                    reference_chars=c.reference_length,
                )
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary: dict[str, Any] = {"name": name, "utterances": n}
    labelled = [i for i in range(n) if references is not None and references[i] is not None]
    if references is not None and len(labelled) < n:
        unlabelled = [ids[i] for i in range(n) if references[i] is None]
        summary.update(scored=len(labelled), unlabelled=len(unlabelled), unlabelled_ids=unlabelled[:UNLABELLED_IDS])
        shown = ", ".join(unlabelled[:UNLABELLED_IDS]) + (", ..." if len(unlabelled) > UNLABELLED_IDS else "")
        if labelled:
            log.warning("%s: %d of %d utterances have no transcript (%s): WER/CER over the other %d", name,
                        len(unlabelled), n, shown, len(labelled))
        else:
            log.warning("%s: none of the %d utterances has a transcript (%s): hypotheses only, no WER/CER", name,
                        n, shown)
    if labelled:
        scores = score([references[i] for i in labelled], [hypotheses[i] for i in labelled])  # type: ignore[index, misc]
        summary.update({k: v for k, v in scores.items() if k != "utterances"})  # all of them, not only the scored
    summary.update(meta or {})
    summary["hypotheses"] = jsonl.name
    atomic_write_json(out_dir / f"{name}.summary.json", summary)
    if "wer" in summary:
        log.info(
            "%s: WER %.2f %%, CER %.2f %% over %d utterances",
            name,
            100 * summary["wer"],
            100 * summary["cer"],
            len(labelled),
        )
    return summary
