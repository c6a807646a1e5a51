"""CTC fine-tuning as a task of the engine (``earful.train.engine.Trainer``).

Each micro-batch's CTC loss is a SUM over its utterances; the engine divides the gradients once by the
global number of utterances (``ctc_normalisation: sentence``, fairseq's ``sentence_avg``) or of target
characters (``token``), summed over micro-batches and ranks. The learning rate is tri-stage by default.

Freezing is described in :mod:`earful.finetune.init`. Dev loss, greedy WER and CER are measured every
``valid_every`` steps (``valid.jsonl``); the lowest validation WER is kept in ``checkpoints/best``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from earful.checkpoint import CheckpointError, model_config, read_info
from earful.data.budget import BatchBudget
from earful.data.dataset import Batch, make_loader
from earful.data.manifest import read_manifest
from earful.eval.decode import greedy_decode, scoring_budget
from earful.eval.metrics import ErrorCounts, error_counts
from earful.eval.vocab import BLANK, DELIMITER, CharVocab
from earful.finetune import targets as T
from earful.finetune.config import FinetuneConfig, config_summary
from earful.finetune.init import (
    apply_permanent_freeze,
    build_initial_model,
    init_vocab,
    phase_frozen,
)
from earful.model import Wav2Vec2ForCTC
from earful.model.wav2vec2 import to_device
from earful.train import distributed as D
from earful.train.engine import Trainer
from earful.train.init import initial_weights
from earful.train.step import autocast
from earful.train.task import Task

log = logging.getLogger(__name__)


class FinetuneTask(Task):
    name = "fine-tuning"
    model_kind = "ctc"
    reads_labels = ("transcript",)  # its targets (and vocab=data): phonemes, intents and speakers it does not read
    cfg: FinetuneConfig
    model: Wav2Vec2ForCTC
    best_metric = "wer"
    validate_at_end = True  # the final validation WER decides "best" even without periodic validation

    def __init__(self, cfg: FinetuneConfig) -> None:
        cfg.validate()
        cfg.check_init()
        self.cfg = cfg
        # vocab=data and vocab=init are made in build_model, from the transcripts or the initial model
        self.vocab = CharVocab(mapping=cfg.text_mapping or None) if cfg.vocab == "english" else None
        self.spelling: dict[str, Any] | None = None  # vocab=init: the initial model's own (init_vocab)
        self.frozen = False

    # ------------------------------------------------------------------ model and data
    def build_model(self, d: D.Dist, resume_from: Path | None) -> None:
        self.d = d
        self.init_weights = initial_weights(self.cfg.init, resume_from)
        if self.vocab is None:
            self.vocab = self._vocabulary(resume_from)
        self.model = self._architecture(resume_from).to(d.device)
        self.frozen_names = apply_permanent_freeze(self.model, self.cfg)
        params = dict(self.model.named_parameters())
        self.phase_names = phase_frozen(self.model, self.cfg)
        self.phase_params = [params[n] for n in self.phase_names]
        # On one device the backbone runs under no_grad while it is frozen (same result, less work);
        # under DDP it must take part in the backward pass (see earful.finetune.init).
        self.no_grad_while_frozen = not d.enabled

    def probe_loss(self, wave: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        logits, _ = self.model(wave, lengths)
        return logits.float().logsumexp(-1).sum()  # the CTC loss's cost is the head's: any scalar of the logits

    def _vocabulary(self, resume_from: Path | None) -> CharVocab:
        """``vocab=data``: blank, ``|``, then every character of the training and validation transcripts once mapped
        (NFC, lower-cased, ``text_mapping``), in code-point order: the same transcripts give the same vocabulary,
        so a resumed run checks it against its checkpoint's. ``vocab=init``: the initial CTC model's, or resuming,
        the run's own (its checkpoint holds it: the initial model may have moved since)."""
        cfg = self.cfg
        if cfg.vocab == "init" and resume_from is not None:
            entry = read_info(resume_from)["vocab"]
            saved, self.spelling = CharVocab.from_dict(entry), entry.get("spelling")
            vocab = CharVocab(saved.symbols, {**saved.mapping, **cfg.text_mapping} or None)
        elif cfg.vocab == "init":
            vocab, self.spelling = init_vocab(self.init_weights, cfg.text_mapping)
        else:
            mapper = CharVocab(mapping=cfg.text_mapping or None)
            chars: set[str] = set()
            for manifest in (m for m in (cfg.data.train, cfg.data.valid) if m):
                for u in read_manifest(manifest):
                    chars.update(c for c in mapper.mapped(u.transcript or "") if not c.isspace())
            chars.discard(DELIMITER)  # the word delimiter stands for a space: one in a transcript is named later
            vocab = CharVocab((BLANK, DELIMITER, *sorted(chars)), cfg.text_mapping or None)
        log.info("vocabulary (vocab=%s): %d symbols: %s", cfg.vocab, len(vocab), " ".join(vocab.symbols[1:]))
        return vocab

    def recipe_extras(self) -> dict[str, Any]:
        return {"init.sha256": self.init_weights.sha256}

    def _architecture(self, resume_from: Path | None) -> Wav2Vec2ForCTC:
        """The initial model, or (resuming) the run's architecture, checked against this run's vocabulary."""
        if resume_from is None:
            return build_initial_model(self.cfg, self.vocab, self.init_weights)
        info = read_info(resume_from)  # its kind is the engine's to check (Trainer: a resume of another kind)
        saved = CharVocab.from_dict(info["vocab"])
        if saved.symbols != self.vocab.symbols:
            raise CheckpointError(f"{resume_from}: vocabulary {saved.symbols} differs from this run's")
        base = model_config(resume_from, info)
        return Wav2Vec2ForCTC(self.cfg.model.apply(base), len(self.vocab))

    def build_data(self, budget: BatchBudget) -> None:
        cfg, d = self.cfg, self.d
        if not cfg.data.train:
            raise ValueError("data.train (--train): no training manifest given")
        utts, unlabelled = T.labelled(read_manifest(cfg.data.train, check_files=True), cfg.data.train,
                                      cfg.data.skip_bad)
        self.targets = T.encode_transcripts(utts, self.vocab, cfg.data.train, remedy=T.VOCAB_REMEDY, allow_empty=True)
        utts, bad = T.trainable(utts, self.targets, cfg.data.train, cfg.data.skip_bad, cfg.data.min_seconds)
        self.targets = {u.id: self.targets[u.id] for u in utts}
        self.left_out = {"train": (cfg.data.train, {"without a transcript": unlabelled, **bad})}
        short = T.too_short(utts, self.targets, self.model.frame_lengths)
        if short:
            log.warning("train: %d utterances have fewer frames than their transcript needs (zero loss), "
                        "e.g. %s", len(short), short[:5])
        self.loader = make_loader(
            utts, budget, shuffle=True, seed=cfg.seed, rank=d.rank, endless=True, bucket_size=cfg.data.bucket_size,
            skip_bad=cfg.data.skip_bad, num_workers=cfg.data.num_workers, pin_memory=d.device.type == "cuda",
            source=str(cfg.data.train),
        )  # fmt: skip
        self.valid_loader = None
        if cfg.data.valid:
            vutts, unlabelled = T.labelled(read_manifest(cfg.data.valid, check_files=True), cfg.data.valid,
                                           cfg.data.skip_bad)
            # (a validation file too short for the model is the validation files' check's, before training)
            self.left_out["valid"] = (cfg.data.valid, {"without a transcript": unlabelled})
            self.valid_refs = T.normalised_references(vutts, self.vocab, cfg.data.valid, T.VOCAB_REMEDY)
            self.valid_targets = T.encode_transcripts(vutts, self.vocab, cfg.data.valid, allow_empty=True)
            valid = scoring_budget(vutts, cfg.valid_device_seconds(), d.world_size)  # every utterance, whole
            self.valid_loader = make_loader(vutts, valid, shuffle=False, seed=cfg.seed, rank=d.rank, endless=False,
                                            skip_bad=cfg.data.skip_bad, num_workers=0, evaluation=True,
                                            source=str(cfg.data.valid))

    # ------------------------------------------------------------------ one step
    def announce(self) -> None:
        cfg = self.cfg
        for split, (manifest, left) in self.left_out.items():
            for why, ids in left.items():
                if ids:
                    log.warning("%s: %d utterances %s are left out of %s (data.skip_bad=true), e.g. %s",
                                manifest, len(ids), why, split, ids[:5])
        log.info("fine-tuning: %d frozen tensors, %d more frozen for %d steps; %s", len(self.frozen_names),
                 len(self.phase_names), cfg.freeze_transformer_steps, config_summary(cfg))
        if cfg.freeze_transformer_steps >= cfg.max_steps:
            log.warning("freeze_transformer_steps=%d >= max_steps=%d: only the CTC head will train",
                        cfg.freeze_transformer_steps, cfg.max_steps)

    def start_step(self, step: int) -> None:
        self.step = step
        self.frozen = step < self.cfg.freeze_transformer_steps

    def micro_step(
        self, net: nn.Module, batch: Batch, generator: torch.Generator, host_generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The time mask is drawn on the host and the frame lengths counted there (as pre-training's mask), and
        the targets copied without waiting: a GPU queues the forward without a sync. ``F.ctc_loss`` itself
        still waits once (it stages its lengths through the host)."""
        device = self.d.device
        targets, target_lengths = T.batch_targets(batch.ids, self.targets)  # on the host
        mask = self.model.wav2vec2.draw_mask(batch.lengths, batch.wave.shape[1], host_generator)  # (batch, frames)
        logits, _ = net(*batch.model_inputs(device), mask=None if mask is None else to_device(mask, device),
                        generator=generator, host_generator=host_generator,
                        freeze_backbone=self.frozen and self.no_grad_while_frozen)  # (batch, frames, vocab)
        flen = self.model.frame_lengths(batch.lengths).clamp(max=logits.shape[1])  # (batch,) on the host
        loss = self.model.ctc_loss(logits, flen, to_device(targets, device), target_lengths)
        return loss, {"tokens": int(target_lengths.sum())}

    def denominator(self, tot: dict[str, Any]) -> float:
        return max(tot["utterances"] if self.cfg.ctc_normalisation == "sentence" else tot["tokens"], 1.0)

    def before_update(self) -> None:
        if self.frozen:  # the optimizer skips parameters without a gradient
            for p in self.phase_params:
                p.grad = None

    def step_record(self, tot: dict[str, Any]) -> dict[str, float]:
        return {"loss_sum": tot["loss"], "tokens": tot["tokens"], "denom": self.denominator(tot)}

    def interval_record(self, sums: dict[str, float], steps: float) -> dict[str, Any]:
        return {
            "loss": sums["loss_sum"] / max(sums["denom"], 1.0),  # per utterance (sentence) or per token
            "loss_per_utterance": sums["loss_sum"] / max(sums["utterances"], 1.0),
            "loss_per_token": sums["loss_sum"] / max(sums["tokens"], 1.0),
            "transformer_frozen": self.frozen,
        }

    def postfix(self, rec: dict[str, Any], last_valid: float) -> dict[str, str]:
        post = {"loss": f"{rec['loss']:.3f}", "lr": f"{rec['lr']:.2g}"}
        if math.isfinite(last_valid):
            post["wer"] = f"{100 * last_valid:.1f}"
        return post

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, Any] | None:
        """Validation CTC loss and greedy WER / CER (corpus level, summed over ranks)."""
        if self.valid_loader is None:
            return None
        cfg, d, model, loader = self.cfg, self.d, self.model, self.valid_loader
        model.eval()
        loader.rewind()
        stats = torch.zeros(11, dtype=torch.float64, device=d.device)  # loss, utterances, tokens, word/char SDIH
        for batch in loader:
            if loader.is_repeat(batch):
                continue  # a batch repeated only to give every rank the same count
            targets, target_lengths = T.batch_targets(batch.ids, self.valid_targets)
            with autocast(cfg.precision, d.device):
                logits, flen = model(*batch.model_inputs(d.device))
            stats[0] += model.ctc_loss(logits, flen, targets.to(d.device), target_lengths.to(d.device)).double()
            stats[1] += len(batch)
            stats[2] += target_lengths.sum()
            hyps = [self.vocab.normalize_hypothesis(h) for h in greedy_decode(logits.float(), flen, self.vocab)]
            refs = [self.valid_refs[i] for i in batch.ids]
            for off, unit in ((3, "word"), (7, "char")):
                c = error_counts(refs, hyps, unit, allow_empty=True)  # type: ignore[arg-type]
                stats[off : off + 4] += torch.tensor([c.substitutions, c.deletions, c.insertions, c.hits],
                                                     dtype=torch.float64, device=d.device)
        D.all_reduce_sum(stats, d)
        model.train()
        words = ErrorCounts(*(int(x) for x in stats[3:7].tolist()))
        chars = ErrorCounts(*(int(x) for x in stats[7:11].tolist()))
        utts, tokens = float(stats[1]), float(stats[2])
        denom = max(utts if cfg.ctc_normalisation == "sentence" else tokens, 1.0)
        return {
            "loss": float(stats[0]) / denom, "loss_per_token": float(stats[0]) / max(tokens, 1.0),
            "utterances": utts, "wer": words.rate if words.reference_length else math.nan,
            "cer": chars.rate if chars.reference_length else math.nan, "word_errors": words.errors,
            "reference_words": words.reference_length, "char_errors": chars.errors,
            "reference_chars": chars.reference_length,
        }  # fmt: skip

    def describe_validation(self, step: int, rec: dict[str, Any]) -> str:
        return f"valid step {step}: loss {rec['loss']:.4f} WER {100 * rec['wer']:.2f} % CER {100 * rec['cer']:.2f} %"

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"vocab": {**self.vocab.to_dict(), **({"spelling": self.spelling} if self.spelling else {})}}

    def trainer_info(self) -> dict[str, Any]:
        return {"init": self.cfg.init, "init_checkpoint": self.init_weights.path,
                "init_sha256": self.init_weights.sha256}


def run_finetuning(cfg: FinetuneConfig, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says into run folder ``out_dir``; returns the summary (``trainer.json``'s fields)."""
    return Trainer(FinetuneTask(cfg), out_dir, resume=resume).fit_and_leave()
