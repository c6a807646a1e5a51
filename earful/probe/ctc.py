"""The sequence tasks: a CTC head on the layer-weighted sum of frozen features, greedy decoding.

- **PR**, phoneme recognition: targets are the manifest's ``phonemes`` (earful's 40-phoneme inventory,
  :mod:`earful.data.phonemes`); phoneme error rate (``per``).
- **ASR**, character recognition: targets are the transcripts in :class:`~earful.eval.vocab.CharVocab`
  (other characters replaced or removed by the recipe's ``asr.text_mapping``); ``wer`` and ``cer``.

Training: Adam with the learning rate decayed linearly to zero, utterances shuffled by the seed; after each
epoch the dev error (PER, or CER for ASR) is measured and the best epoch's head is the one tested.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from earful.data.manifest import Utterance
from earful.data.phonemes import PHONEMES, parse
from earful.eval.decode import greedy_ids
from earful.eval.metrics import error_counts, score
from earful.eval.vocab import BLANK, CharVocab
from earful.finetune.targets import batch_targets, encode_transcripts, normalised_references, unalignable
from earful.probe.config import SequenceRecipe, diverged
from earful.probe.report import TaskResult
from earful.probe.splits import Split, require
from earful.probe.weighting import LayerWeightedSum

log = logging.getLogger(__name__)


@dataclass
class Transcription:
    """What a CTC task predicts: its symbols (index 0 the blank), each split's targets and references, and how
    hypotheses are decoded and scored. ``main`` is the dev metric that picks the epoch (lower is better)."""

    name: str
    symbols: tuple[str, ...]
    targets: Callable[[Split], dict[str, list[int]]]
    references: Callable[[Split], dict[str, str]]
    decode: Callable[[list[int]], str]
    score: Callable[[list[str], list[str]], dict[str, float]]
    main: str


def phonemes_task() -> Transcription:
    symbols = (BLANK, *PHONEMES)
    index = {s: i for i, s in enumerate(symbols)}

    def references(split: Split) -> dict[str, str]:
        require(split, "phonemes", f"write them with `earful phonemize {split.manifest} --out NEW.jsonl` "
                "(espeak-ng's G2P of the transcripts)")
        return {u.id: " ".join(parse(str(u.phonemes), f"{split.manifest}: utterance {u.id!r}"))
                for u in split.utts}

    def targets(split: Split) -> dict[str, list[int]]:
        return {i: [index[p] for p in ref.split()] for i, ref in references(split).items()}

    return Transcription(
        "pr", symbols, targets, references, decode=lambda ids: " ".join(symbols[i] for i in ids),
        score=lambda refs, hyps: {"per": error_counts(refs, hyps, "word").rate}, main="per")


def characters_task(text_mapping: Mapping[str, str] | None = None) -> Transcription:
    """ASR's task; ``text_mapping``: the recipe's ``asr.text_mapping``, named by the error about a character
    outside the vocabulary."""
    vocab = CharVocab(mapping=text_mapping or None, setting="asr.text_mapping")

    def transcribed(split: Split) -> list[Utterance]:
        require(split, "transcript", "ASR needs a transcript for every utterance")
        return split.utts

    def scores(refs: list[str], hyps: list[str]) -> dict[str, float]:
        s = score(refs, hyps)
        return {"wer": s["wer"], "cer": s["cer"]}

    return Transcription(
        "asr", vocab.symbols, lambda s: encode_transcripts(transcribed(s), vocab, str(s.manifest)),
        lambda s: normalised_references(transcribed(s), vocab, str(s.manifest)), vocab.decode, scores, main="cer")


class CTCProbe(nn.Module):
    """Layer-weighted sum → (Linear → GELU) → Linear to the symbols; per-frame log-probabilities."""

    def __init__(self, num_layers: int, dim: int, num_symbols: int, hidden: int = 0, layer: int | None = None
                 ) -> None:
        super().__init__()
        self.weighted = LayerWeightedSum(num_layers, layer)
        self.head: nn.Module = nn.Linear(dim, num_symbols) if not hidden else nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_symbols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, frames, layers, dim) → (batch, frames, symbols)
        return self.head(self.weighted(x)).log_softmax(-1)


def _predict(model: CTCProbe, task: Transcription, split: Split, batch: int) -> list[str]:
    hyps: list[str] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(split.utts), batch):
            x, frames = split.feats.batch(range(start, min(start + batch, len(split.utts))))
            hyps.extend(task.decode(ids) for ids in greedy_ids(model(x), frames))
    return hyps


def references_in_order(task: Transcription, split: Split) -> list[str]:
    """``split``'s references for ``task``, in its utterances' order (what :func:`evaluate` scores against)."""
    refs = task.references(split)
    return [refs[u.id] for u in split.utts]


def evaluate(model: CTCProbe, task: Transcription, split: Split, refs: list[str], batch: int = 32) -> dict[str, float]:
    """``task``'s metrics of ``model``'s greedy hypotheses on ``split`` against ``refs``
    (:func:`references_in_order`)."""
    return task.score(refs, _predict(model, task, split, batch))


SORTED_BATCHES = 8  # batches of an epoch sorted by length together


def _batches(rng: np.random.Generator, frames: np.ndarray, size: int) -> list[list[int]]:
    """An epoch's batches of ``size`` utterances: shuffled, then sorted by length within each run of
    ``SORTED_BATCHES`` batches (less padding), the batches in a shuffled order."""
    order = rng.permutation(len(frames))
    span = size * SORTED_BATCHES
    grouped = np.concatenate([part[np.argsort(frames[part], kind="stable")]
                              for part in np.split(order, range(span, len(order), span))])
    batches = [grouped[b : b + size].tolist() for b in range(0, len(grouped), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def check_labels(task: Transcription, train: Split, *others: Split) -> None:
    """ValueError naming the manifest (and the utterance) whose labels ``task`` cannot read, or (``train``'s) cannot
    train on (an ASR transcript ``asr.text_mapping`` empties; a dev or test split may score silence): before any
    feature is extracted, before any head is trained."""
    task.targets(train)
    for split in others:
        task.references(split)


def train_ctc(task: Transcription, train: Split, dev: Split, test: Split, recipe: SequenceRecipe,
              seed: int) -> TaskResult:
    """Train ``task``'s head on ``train``, keep the epoch best on ``dev``, score it on ``test``."""
    if recipe.epochs < 1 or recipe.batch_utterances < 1:
        raise ValueError(f"{task.name}: epochs and batch_utterances must be >= 1, got {recipe}")
    start = time.perf_counter()
    targets = task.targets(train)  # dev's and test's labels are checked as their references are built,
    dev_refs, test_refs = references_in_order(task, dev), references_in_order(task, test)  # once, not every epoch
    too_short = unalignable([u.id for u in train.utts], train.feats.frames.tolist(), targets)
    if too_short:
        log.warning("%s: %d of %d utterances have fewer frames than their %s targets need (CTC cannot align "
                    "them; they add nothing), e.g. %s", train.manifest, len(too_short), len(train.utts), task.name,
                    too_short[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CTCProbe(train.feats.num_layers, train.feats.dim, len(task.symbols), recipe.hidden, recipe.layer)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    n = len(train.utts)
    steps = recipe.epochs * -(-n // recipe.batch_utterances)  # every epoch has ceil(n / size) batches
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    rng = np.random.default_rng(seed)
    ids = [u.id for u in train.utts]
    best_error, best_epoch, best_state, best_dev = float("inf"), 0, model.state_dict(), {}
    history = []
    frames_of = train.feats.frames.numpy()
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        total = 0.0
        for idx in _batches(rng, frames_of, recipe.batch_utterances):
            x, frames = train.feats.batch(idx)  # (batch, frames, layers, dim), (batch,)
            flat, lengths = batch_targets([ids[i] for i in idx], targets)
            logp = model(x).transpose(0, 1)  # (frames, batch, symbols)
            loss = F.ctc_loss(logp, flat, frames, lengths, blank=0, zero_infinity=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if not math.isfinite(total):
            raise diverged(task.name, f"epoch {epoch}", recipe.lr)
        dev_metrics = evaluate(model, task, dev, dev_refs)
        history.append({"epoch": epoch, "loss": total / n, **{f"dev_{k}": v for k, v in dev_metrics.items()}})
        log.debug("%s epoch %d: loss %.3f, dev %s", task.name, epoch, total / n, dev_metrics)
        if dev_metrics[task.main] < best_error:
            best_error, best_epoch, best_state, best_dev = (dev_metrics[task.main], epoch,
                                                            copy.deepcopy(model.state_dict()), dev_metrics)
    model.load_state_dict(best_state)
    return TaskResult(task=task.name, test=evaluate(model, task, test, test_refs), dev=best_dev,
                      layer_weights=model.weighted.weights().tolist(), best=best_epoch, history=history,
                      seconds=time.perf_counter() - start)
