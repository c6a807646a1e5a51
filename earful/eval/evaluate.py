"""``earful evaluate``: WER and CER of a CTC checkpoint on labelled manifests, greedy and with an LM.

For each manifest (a *split*, named by the caller, as a study names its ``corpus.test``, or else by the file's
stem) the model transcribes every utterance in batches of at most ``device_seconds`` padded audio (an utterance
longer than that gets a batch of its own: nothing is left out or cropped: :func:`earful.eval.decode.scoring_budget`).
Greedy CTC decoding always runs; with an ARPA (or KenLM binary + lexicon) LM the flashlight lexicon beam search runs
on the same logits. References are normalised with the checkpoint's vocabulary (lower-cased, its text mapping
applied, and ``text_mapping``'s entries over it: ``--text-mapping``); a character it cannot spell is an error naming
the manifest and the utterance, and so is a manifest whose references are all empty (no error rate), before anything
is transcribed. Rows without a transcript are transcribed, not scored: WER / CER are over the others, and the
summaries and the log say how many had none, with a few ids (none labelled: hypotheses only, said so).

Writes, per split and decoder, ``OUT/SPLIT.greedy.jsonl`` / ``OUT/SPLIT.lm.jsonl`` (one hypothesis a
line, with its errors) and ``...summary.json`` (corpus WER / CER with counts), via
:func:`earful.eval.report.write_hypotheses`, and ``OUT/summary.json`` over all splits. An ``OUT`` is one
checkpoint's (by its weights' SHA-256) with one text mapping and one precision (each split's entries and files
record it, and the ``device_seconds`` it was batched by): another's is refused before any work
(:func:`_earlier_splits`); evaluated again there, a split's files are replaced (its ``SPLIT.lm.*`` removed by a run
without an LM) and ``summary.json`` keeps the splits evaluated there before beside this run's, each split's LM
settings in its ``lm`` entry. ``summary.json`` is written again once each split's files are, so a run stopped
midway leaves it describing the files there. One evaluation works in an ``OUT`` at a time: it holds the folder's lock
(:func:`earful.lock.holding`) from start to end, and a second is refused (``FolderBusy``).

Checkpoints imported from `transformers` (``earful import-hf``) carry that vocabulary (``<pad>`` as the
blank, ``<s>``/``</s>``/``<unk>``, often upper-case letters); it is adapted: the first symbol is the
blank, other multi-character symbols are never written into hypotheses, letters are lower-cased.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from earful.atomic import atomic_write_json
from earful.checkpoint import load_model, same_weights, weights_sha256
from earful.config import plain_name
from earful.data.audio import AudioError, check_frames
from earful.data.dataset import check_headers, make_loader
from earful.data.manifest import Utterance, read_manifest
from earful.eval.beam import BeamOptions, LMBeamDecoder
from earful.eval.decode import check_device_seconds, decode_batch, scoring_budget
from earful.eval.metrics import error_counts
from earful.eval.report import write_hypotheses
from earful.eval.vocab import BLANK, CharVocab, placeholder
from earful.lock import holding
from earful.model import Wav2Vec2ForCTC, batch_invariant
from earful.train.distributed import resolve_device
from earful.train.state import require_checkpoint
from earful.train.step import autocast

log = logging.getLogger(__name__)

def vocab_from_checkpoint(vocab: dict[str, Any] | None, where: str = "checkpoint") -> CharVocab:
    """The :class:`CharVocab` of a checkpoint's ``model.json`` ``vocab`` entry (earful or imported)."""
    if not vocab or "symbols" not in vocab:
        raise ValueError(f"{where}: no vocabulary (not a fine-tuned CTC checkpoint?)")
    symbols = list(vocab["symbols"])
    if symbols and symbols[0] == BLANK:
        return CharVocab.from_dict(vocab)
    # an imported (transformers) vocabulary: index 0 (<pad>) is the CTC blank
    out = [BLANK]
    for i, s in enumerate(symbols[1:], 1):
        if len(s) == 1:
            low = s.lower()  # 'İ' lower-cases to two characters ('i' and U+0307): it keeps its case
            out.append(low if len(low) == 1 and low not in symbols else s)
        else:
            out.append(placeholder(i))
    return CharVocab(out, mapping=vocab.get("mapping") or None)


def load_ctc(ckpt: str | Path, command: str = "evaluate") -> tuple[Wav2Vec2ForCTC, CharVocab, Path, dict[str, Any]]:
    """A CTC model (batch-invariant: :func:`earful.model.batch_invariant`), its vocabulary, the checkpoint and its
    ``model.json`` as the weights were loaded with it, from a checkpoint or run folder (its latest:
    :func:`earful.train.state.require_checkpoint`); ``command``, the one that needs it, is named by the error about
    a checkpoint of another kind."""
    path = require_checkpoint(ckpt)
    model, info = load_model(path)
    if not isinstance(model, Wav2Vec2ForCTC):
        raise ValueError(f"{path}: a {info.get('kind')} checkpoint; {command} needs a fine-tuned (CTC) one")
    vocab = vocab_from_checkpoint(info.get("vocab"), str(path))
    if len(vocab) != model.lm_head.out_features:
        raise ValueError(f"{path}: {len(vocab)} symbols but the head has {model.lm_head.out_features} outputs")
    return batch_invariant(model), vocab, path, info


@torch.no_grad()
def transcribe(
    model: Wav2Vec2ForCTC,
    utts: Sequence[Utterance],
    vocab: CharVocab,
    *,
    device_seconds: float = 200.0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    beam: LMBeamDecoder | None = None,
    num_workers: int = 0,
    desc: str = "evaluate",
) -> tuple[dict[str, str], dict[str, str] | None]:
    """Greedy (and, with ``beam``, LM) transcripts by utterance id, batched by seconds of padded audio. A progress
    bar (``desc``) counts the utterances, on a terminal only (as ``earful transcribe``'s): 3000 utterances on a
    CPU, with an LM, had been minutes without a line. The files of ``utts`` are the caller's to check first
    (``check_headers``, as ``evaluate`` does for every split)."""
    device = resolve_device(device, "--device")
    model.eval().to(device)
    greedy: dict[str, str] = {}
    lm: dict[str, str] | None = {} if beam is not None else None
    if not utts:
        return greedy, lm
    budget = scoring_budget(utts, device_seconds)  # an utterance longer than device_seconds: a batch of its own
    loader = make_loader(utts, budget, shuffle=False, endless=False, num_workers=num_workers,
                         names={"device_seconds": "--device-seconds", "max_seconds": None, "min_seconds": None,
                                "crop_seconds": None, "skip_bad": None}, evaluation=True,
                         checked=True)  # evaluate checked every split's files before transcribing any
    with tqdm(total=len(utts), unit="utt", desc=desc, dynamic_ncols=True, disable=None) as bar:
        for batch in loader:
            with autocast(precision, device):
                logits, flen = model(*batch.model_inputs(device))
            greedy_hyps, lm_hyps = decode_batch(logits.float().cpu(), flen.cpu(), vocab, beam)
            greedy.update(zip(batch.ids, greedy_hyps, strict=True))
            if lm is not None and lm_hyps is not None:
                lm.update(zip(batch.ids, lm_hyps, strict=True))
            bar.update(len(batch.ids))
    missing = [u.id for u in utts if u.id not in greedy]
    if missing:  # the loader only leaves out unreadable files with skip_bad, which is off here
        raise RuntimeError(f"{len(missing)} utterances were not transcribed, e.g. {missing[:5]}")
    return greedy, lm


def _unreadable(manifest: str | Path, split: str, e: AudioError) -> AudioError:
    """A file of ``split`` evaluate cannot read (``e`` names it and its utterance), with the manifest and the way
    out."""
    return AudioError(f"{manifest} (split {split!r}): {e}; evaluate scores every utterance of its manifests: mend "
                      "the file, or leave its row out of the manifest")


def split_names(manifests: Mapping[str, str | Path] | Sequence[str | Path]) -> dict[str, str | Path]:
    """Split name → manifest: a mapping's own names (plain names: they name files in OUT), else each manifest's
    name as given (``test-clean=LS/test-clean/manifest.jsonl``, where no file has that whole name and the name
    holds no "/") or its file
    stem, ``-2``, ``-3``… added to repeats (``a/test.jsonl``, ``b/test.jsonl``: ``test``, ``test-2``)."""
    if isinstance(manifests, Mapping):
        return {plain_name(name, "split name"): m for name, m in manifests.items()}
    if isinstance(manifests, str | Path):
        raise TypeError(f"manifests={manifests!r}: expected a list of manifests or a mapping name → manifest")
    named = {m: m.split("=", 1) for m in manifests  # not a path with a "=" (runs/lr=1e-4/dev.jsonl)
             if isinstance(m, str) and "=" in m and "/" not in m.split("=", 1)[0] and not Path(m).exists()}
    given: dict[str, str | Path] = {}
    for m, (name, path) in named.items():
        if plain_name(name, f"{m}: the split name") in given:
            raise ValueError(f"{m}: split {name!r} is given twice; name each split once")
        given[name] = path
    names: dict[str, str | Path] = {}
    for m in manifests:
        if m in named:
            names[named[m][0]] = named[m][1]
            continue
        base = Path(m).name.removesuffix(".jsonl").removesuffix(".json")
        name, k = base, 2
        while name in names or name in given:
            name, k = f"{base}-{k}", k + 1
        names[name] = m
    return names


def _check_same_manifest(out: Path, split: str, manifest: str | Path) -> None:
    """A split evaluated in ``out`` before from another manifest (``a/test.jsonl``, then ``b/test.jsonl`` in
    another command): its results would have been replaced, and summary.json would not say which manifest they
    are of. Refused where the earlier manifest (as its split's summary records it) is another file found from here;
    a warning where it is not found (moved, or named from another folder)."""
    path = out / f"{split}.greedy.summary.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        before, where = saved.get("manifest"), saved.get("manifest_resolved")  # as given; from /
    except (OSError, ValueError, AttributeError):  # none (a new split), or unreadable: replaced as before
        return
    if isinstance(where, str):  # (recorded since 2026-12-07: the same relative name from another folder is not it)
        before = where
        if where == str(Path(manifest).resolve()):
            return
    elif not isinstance(before, str) or before == str(manifest):
        return
    if not Path(before).exists():
        log.warning("%s: split %r held the evaluation of %s (not found from here); %s's replaces it", out, split,
                    before, manifest)
    elif not Path(manifest).exists() or not Path(before).samefile(manifest):
        raise ValueError(f"{out}: split {split!r} holds the evaluation of {before}; {manifest} takes that name "
                         f"and would replace it: name the split otherwise (NAME={manifest}), or give another --out")


def references(utts: Sequence[Utterance], vocab: CharVocab) -> list[str | None]:
    """Each utterance's transcript normalised with ``vocab`` (None where it has none). A manifest whose
    references (of the utterances that have one) are all empty has no error rate: refused here, before anything
    is transcribed.

    Raises:
        ValueError: every character ``vocab`` cannot spell (each with an utterance), or only empty references.
    """
    vocab.check_texts(((u.id, u.transcript) for u in utts if u.transcript is not None), "the references")
    refs = [None if u.transcript is None else vocab.normalize(u.transcript, utt_id=u.id) for u in utts]
    scored = [r for r in refs if r is not None]
    if scored:  # what write_hypotheses scores: the utterances that have a reference
        error_counts(scored, [""] * len(scored), "char")  # raises when the error rate is undefined
    return refs


def evaluate(
    ckpt: str | Path,
    manifests: Mapping[str, str | Path] | Sequence[str | Path],
    out_dir: str | Path,
    *,
    device_seconds: float = 200.0,
    device: str = "auto",
    precision: str = "fp32",
    lm: str | Path | None = None,
    lexicon: str | Path | None = None,
    beam_options: BeamOptions | None = None,
    num_workers: int = 0,
    text_mapping: Mapping[str, str] | None = None,
    keep_greedy: bool = False,
) -> dict[str, Any]:
    """Transcribe every manifest, score it, write hypotheses and summaries; returns ``OUT/summary.json``.

    ``manifests``: a mapping split name → manifest (a study's ``corpus.test``), or a list of manifests, each a
    split named by its file stem or as given, ``NAME=MANIFEST`` (:func:`split_names`); a split name evaluated in
    ``out_dir`` before from another manifest is refused. ``text_mapping``: characters of the references to replace
    (or remove: ``""``) before scoring, over the checkpoint's own mapping (fine-tuning's ``text_mapping``).
    ``keep_greedy`` (with ``lm``): each split's greedy results, evaluated in ``out_dir`` before, are kept as they
    are and only the LM's are written (a study that gained an LM decodes its finished evaluations so): nothing is
    replaced, so a split's manifest may be at another path than greedy's was (a study's moved corpus, whose
    manifests' contents its fingerprint compared); the LM's files record the manifest they were decoded from."""
    splits = split_names(manifests)
    if not splits:
        raise ValueError("no manifest to evaluate")
    check_device_seconds(device_seconds)  # before the checkpoint is loaded and every file checked
    out = Path(out_dir)
    if out.exists() and not out.is_dir():  # before any work: mkdir said "[Errno 17] File exists" at the end
        raise NotADirectoryError(f"--out {out}: a file, not a folder: evaluate writes its results (SPLIT.greedy.jsonl, "
                                 "summary.json, ...) into a folder; give a new one, or an earlier evaluation's")
    # one evaluation an OUT at a time, from reading summary.json to writing it last: two at once each wrote it
    # from what it had read, and the last to finish dropped the other's splits (or another checkpoint's mixed in)
    with holding(out, "earful evaluate"):
        return _evaluate_held(ckpt, splits, out, device_seconds=device_seconds, device=device, precision=precision,
                              lm=lm, lexicon=lexicon, beam_options=beam_options, num_workers=num_workers,
                              text_mapping=text_mapping, keep_greedy=keep_greedy)


def _evaluate_held(
    ckpt: str | Path,
    splits: dict[str, str | Path],
    out: Path,
    *,
    device_seconds: float,
    device: str,
    precision: str,
    lm: str | Path | None,
    lexicon: str | Path | None,
    beam_options: BeamOptions | None,
    num_workers: int,
    text_mapping: Mapping[str, str] | None,
    keep_greedy: bool,
) -> dict[str, Any]:
    """:func:`evaluate`'s work, in ``out`` held (its lock)."""
    dev = resolve_device(device, "--device")
    model, spelling, path, info = load_ctc(ckpt)
    # the search spells (the LM's words too) as the model was fine-tuned to; the extra mapping is for scoring alone
    # (it had spelled the lexicon too: words the model never writes, and other hypotheses)
    vocab = CharVocab(spelling.symbols, {**spelling.mapping, **text_mapping}) if text_mapping else spelling
    read: dict[str, tuple[Sequence[Utterance], list[str | None]]] = {}
    for split, manifest in splits.items():  # every split's references checked before anything is transcribed
        utts = read_manifest(manifest, check_files=True)
        # utterances the model gives no output for, named before anything is transcribed (the loader stopped
        # the evaluation midway, naming the audio file alone)
        check_frames(utts, f"{manifest} (split {split!r})", "frame of the model", "the model gives them no output")
        try:  # every file's header (a corrupt one stopped the evaluation at its split, after the others)
            check_headers(utts)
        except AudioError as e:
            raise _unreadable(manifest, split, e) from None
        try:
            read[split] = utts, references(utts, vocab)
        except ValueError as e:
            raise ValueError(f"{manifest} (split {split!r}): {e}") from e
    # the hash of the weights loaded (read again from the folder, a checkpoint replaced meanwhile, `best` written
    # again by a training, gave another's)
    record = {"checkpoint": str(path), "weights_sha256": weights_sha256(info), "text_mapping": vocab.mapping}
    earlier = _earlier_splits(out, record, precision)  # refuses another checkpoint's results, before any work
    if keep_greedy and (lm is None or (missing := [s for s in splits if "greedy" not in earlier.get(s, {})])):
        raise ValueError(f"{out}: keep_greedy decodes with an LM the splits evaluated greedily there before; "
                         + ("no LM is given" if lm is None else f"{', '.join(missing)} were not"))
    for split, manifest in (splits if not keep_greedy else {}).items():  # kept, greedy's results replace none
        _check_same_manifest(out, split, manifest)
    beam = LMBeamDecoder(spelling, lm, lexicon, beam_options) if lm is not None else None
    lm_settings: dict[str, Any] | None = None
    if beam is not None:
        lm_settings = {"path": str(lm), "lexicon": str(lexicon) if lexicon else None, **beam.options.settings()}
    evaluated: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for split, manifest in splits.items():
        utts, refs = read[split]
        # a line a split for a log without a terminal (the bar shows on one only)
        log.info("%s: transcribing %d utterances (%.2f h of audio), greedy%s", split, len(utts),
                 sum(u.seconds for u in utts) / 3600, " and with the LM" if beam else "")
        try:
            greedy, lm_hyps = transcribe(model, utts, spelling, device_seconds=device_seconds, device=dev,
                                         precision=precision, beam=beam, num_workers=num_workers,
                                         desc=f"evaluate {split}")
        except AudioError as e:  # the loader names the file (and the utterance); the manifest and way out here
            raise _unreadable(manifest, split, e) from None
        ids = [u.id for u in utts]
        greedy = {i: vocab.normalize_hypothesis(h) for i, h in greedy.items()}  # as the references are
        if lm_hyps is not None:
            lm_hyps = {i: vocab.normalize_hypothesis(h) for i, h in lm_hyps.items()}
        meta = {"split": split, "manifest": str(manifest), "manifest_resolved": str(Path(manifest).resolve()),
                "checkpoint": str(path), "precision": precision, "device_seconds": device_seconds}
        results = {} if keep_greedy else {
            "greedy": write_hypotheses(out, ids, [greedy[i] for i in ids], refs, f"{split}.greedy",
                                       {**meta, "decoder": "greedy"})}
        if lm_hyps is not None and lm_settings is not None:
            results["lm"] = write_hypotheses(out, ids, [lm_hyps[i] for i in ids], refs, f"{split}.lm",
                                             {**meta, "decoder": "lm", **lm_settings})
        else:  # an earlier evaluation's LM hypotheses of this split would stand beside these
            for stale in (out / f"{split}.lm.jsonl", out / f"{split}.lm.summary.json"):
                stale.unlink(missing_ok=True)
        evaluated[split] = {**(earlier[split] if keep_greedy else {}),
                            **{name: {k: r[k] for k in SPLIT_KEYS if k in r} for name, r in results.items()}}
        if lm_settings is not None:
            evaluated[split]["lm"]["settings"] = lm_settings
        # written with each split's files (an entry whose files were removed goes with them): a run stopped in a
        # later split had left the earlier summary naming the settings and scores of the files replaced
        summary = {**record, "splits": {**earlier, **evaluated}}  # each split's precision and batch in its entries
        atomic_write_json(out / "summary.json", summary)
    for split, res in evaluated.items():
        log.info("%s: %s", split, ", ".join(_scores(name, r) for name, r in res.items()))
    kept = [split for split in earlier if split not in evaluated]
    if kept:
        log.info("%s/summary.json also holds this checkpoint's earlier evaluation of %s", out, ", ".join(kept))
    return summary


def _earlier_splits(out: Path, record: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """The splits an earlier evaluation wrote in ``out`` (its ``summary.json``), which this one keeps beside its
    own where it evaluates the same checkpoint (by the weights' SHA-256; by path where the summary records none)
    with the same text mapping: an ``--out`` then holds that checkpoint's latest result of every split evaluated
    there, each split's files of one run. Another checkpoint's results (or another mapping's) are refused, as
    a probe's are (:func:`earful.probe.suite._check_out`): these would have replaced them in part, dev from one
    checkpoint beside test from another. So are splits evaluated in another ``precision`` (bf16 beside fp32: a
    near-tie frame may go the other way), as each split's entries record it; a split evaluated before they did
    (unknown) is kept with a warning."""
    path = out / "summary.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        splits = dict(saved["splits"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an evaluation summary ({e}); give another --out, or remove it") from None
    if not same_weights(saved, record):
        raise ValueError(f"{out}: holds the evaluation of another checkpoint ({saved.get('checkpoint')}: "
                         f"{', '.join(splits) or 'no split'}), which this one ({record['checkpoint']}) would mix with; "
                         f"give another --out, or remove {out}")
    if saved.get("text_mapping", {}) != record["text_mapping"]:
        raise ValueError(f"{out}: holds an evaluation of this checkpoint with another text mapping "
                         f"({saved.get('text_mapping')}, now {record['text_mapping']}), whose scores would not compare "
                         f"with these; give another --out, or remove {out}")
    recorded = {(split, r.get("precision")) for split, res in splits.items() if isinstance(res, dict)
                for r in res.values() if isinstance(r, dict)}
    other = sorted(f"{split}: {p}" for split, p in recorded if p is not None and p != precision)
    if other:
        raise ValueError(f"{out}: holds an evaluation of this checkpoint in another precision ({', '.join(other)}; "
                         f"now {precision}), whose scores would not compare with these; evaluate in that precision "
                         f"(--precision), give another --out, or remove {out}")
    unknown = sorted({split for split, p in recorded if p is None})
    if unknown:
        log.warning("%s: %s evaluated there before the precision was recorded (unknown), kept beside this %s "
                    "evaluation", out, ", ".join(unknown), precision)
    return splits


SPLIT_KEYS = ("utterances", "scored", "unlabelled", "unlabelled_ids", "wer", "cer", "precision",
              "device_seconds")  # a split's in summary.json (each decoder's entry)


def _scores(decoder: str, r: Mapping[str, Any]) -> str:
    """One decoder's result for the log: its WER / CER and over how many utterances, or why there are none."""
    if "wer" not in r:
        return f"{decoder}: no WER/CER (none of the {r['utterances']} utterances has a transcript)"
    text = f"{decoder} WER {100 * r['wer']:.2f} % CER {100 * r['cer']:.2f} %"
    if r.get("unlabelled"):
        text += (f" over {r['scored']} of {r['utterances']} utterances ({r['unlabelled']} without a transcript, "
                 f"e.g. {', '.join(r['unlabelled_ids'][:3])})")
    return text
