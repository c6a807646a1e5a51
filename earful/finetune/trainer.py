"""The CTC fine-tuning loop, built like the pre-training loop (``earful/train/pretrain.py``) from its parts.

One optimizer step = ``accumulation`` micro-batches of at most ``device_seconds`` padded audio on each of
``world_size`` devices. Each micro-batch's CTC loss is a SUM over its utterances; it is back-propagated as
it is (DDP synchronises on the last micro-batch only, ``no_sync`` before) and the gradients are divided once
by the global number of utterances (``loss_normalisation: sentence``, fairseq's ``sentence_avg``) or of
target characters (``token``), summed over micro-batches and ranks. The learning rate (tri-stage by
default) moves once per optimizer step.

Randomness is keyed by (seed, step, global micro-batch index) with :func:`step_seed`, and the data position,
optimizer, scaler and RNG are in every checkpoint, so a resumed run ends with exactly the parameters of an
uninterrupted one. SIGTERM / SIGUSR1 checkpoint and stop after the current step.

Freezing is described in :mod:`earful.finetune.init`. Dev loss, greedy WER and CER are measured every
``valid_every`` steps (``valid.jsonl``); the lowest dev WER is kept in ``checkpoints/best``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from earful.checkpoint import MODEL_FILE, CheckpointError, load_model
from earful.config import save_yaml
from earful.data.dataset import AudioLoader, Batch, make_loader
from earful.data.manifest import Utterance, read_manifest
from earful.eval.decode import greedy_decode
from earful.eval.metrics import ErrorCounts, error_counts
from earful.eval.vocab import CharVocab
from earful.finetune import targets as T
from earful.finetune.config import FinetuneConfig, config_summary
from earful.finetune.init import apply_permanent_freeze, build_initial_model, phase_frozen
from earful.model import Wav2Vec2ForCTC, count_parameters
from earful.train import distributed as D
from earful.train.config import HealthConfig
from earful.train.loop import StepLoop
from earful.train.monitor import Health, JsonlLog, Meter, TensorBoard, distance_from
from earful.train.pretrain import (
    TrainingStopped,
    apply_update,
    autocast,
    oom_message,
    step_seed,
)
from earful.train.schedule import lr_at
from earful.train.state import (
    RunDir,
    load_trainer_state,
    restore_training_state,
    training_state,
    warn_if_layout_changed,
)

log = logging.getLogger(__name__)

SR = 16000


def _filter_long(utts: list[Utterance], max_seconds: float | None, where: str) -> list[Utterance]:
    if not max_seconds:
        return utts
    keep = [u for u in utts if u.seconds <= max_seconds]
    if len(keep) < len(utts):
        log.warning("%s: %d of %d utterances are longer than data.max_seconds=%g and are left out",
                    where, len(utts) - len(keep), len(utts), max_seconds)
    return keep


class Finetuner(StepLoop):
    """Builds model, data, optimizer and run directory; ``fit()`` trains to ``max_steps``."""

    validate_at_end = True  # the final dev WER decides "best" even without periodic validation

    def __init__(self, cfg: FinetuneConfig, out_dir: str | Path, *, resume: bool = False) -> None:
        cfg.validate()
        self.cfg = cfg
        self.d = D.setup(cfg.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.run = RunDir(out_dir)
        self.accum = cfg.accumulation(self.d.world_size)
        self.peak_lr = cfg.effective_lr()
        self.vocab = CharVocab(mapping=cfg.text_mapping or None)
        latest = self.run.latest() if resume else None
        if not resume and self.run.latest() is not None:
            raise ValueError(f"{self.run.root} already holds checkpoints: add --resume, or choose another --out")
        self.model = self._build_model(latest).to(self.d.device)
        self.frozen_names = apply_permanent_freeze(self.model, cfg)
        params = dict(self.model.named_parameters())
        self.phase_names = phase_frozen(self.model, cfg)
        self.phase_params = [params[n] for n in self.phase_names]
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.ddp: torch.nn.Module = self.model
        if self.d.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.d.local_rank] if self.d.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        # On one device the backbone runs under no_grad while it is frozen (same result, less work);
        # under DDP it must take part in the backward pass (see earful.finetune.init).
        self.no_grad_while_frozen = not self.d.enabled
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=self.peak_lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.scaler = torch.amp.GradScaler(self.d.device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self.hours_real = 0.0
        self.hours_padded = 0.0
        self.nan_steps = 0
        self.nan_in_a_row = 0
        self.overflow_steps = 0
        self.best_wer = math.inf
        self.last_wer = math.nan
        self.train_log = JsonlLog(self.run.root / "train.jsonl", self.d.is_main)
        self.valid_log = JsonlLog(self.run.root / "valid.jsonl", self.d.is_main)
        self.tb = TensorBoard(self.run.root / "tb", cfg.tensorboard and self.d.is_main)
        self.health = Health(HealthConfig(), num_negatives=1)  # only its exploding-gradient check applies
        self._build_data()
        if self.d.is_main:
            self.run.prepare()
            save_yaml(cfg, self.run.root / "config.yaml")
        D.barrier(self.d)
        if latest is not None:
            self._resume(latest)
        elif resume:
            log.info("no checkpoint in %s: starting from step 0", self.run.ckpt)
        if self.step == 0:  # a fresh start (or a run killed before its first checkpoint): no stale records
            self.train_log.truncate_after(0)
            self.valid_log.truncate_after(0)
        if self.step == 0 and self.d.is_main and not (self.run.ckpt / "init" / MODEL_FILE).exists():
            self.run.save("init", self.model, state=None, trainer={"step": 0}, vocab=self.vocab.to_dict(),
                          make_latest=False)
        D.barrier(self.d)
        self._init_params = {k: v.float() for k, v in load_file(str(self.run.ckpt / "init" / MODEL_FILE)).items()}

    # ------------------------------------------------------------------ model and data
    def _build_model(self, latest: Path | None) -> Wav2Vec2ForCTC:
        if latest is None:
            return build_initial_model(self.cfg, self.vocab)
        src, info = load_model(latest)
        if not isinstance(src, Wav2Vec2ForCTC):
            raise CheckpointError(f"{latest}: not a CTC checkpoint")
        saved = CharVocab.from_dict(info["vocab"])
        if saved.symbols != self.vocab.symbols:
            raise CheckpointError(f"{latest}: vocabulary {saved.symbols} differs from this run's")
        model = Wav2Vec2ForCTC(self.cfg.model.apply(src.cfg), len(self.vocab))
        model.load_state_dict(src.state_dict())
        return model

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.d
        if not cfg.data.train:
            raise ValueError("data.train (--train): no training manifest given")
        utts = _filter_long(read_manifest(cfg.data.train, check_files=True), cfg.data.max_seconds, "train")
        self.targets = T.encode_transcripts(utts, self.vocab, cfg.data.train)
        short = T.too_short(utts, self.targets, self.model.frame_lengths)
        if short:
            log.warning("train: %d utterances have fewer frames than their transcript needs (zero loss), "
                        "e.g. %s", len(short), short[:5])
        self.loader: AudioLoader = make_loader(
            utts, cfg.device_seconds, pack_seconds=cfg.micro_seconds(d.world_size), min_seconds=cfg.data.min_seconds,
            shuffle=True, seed=cfg.seed,
            rank=d.rank, world_size=d.world_size, endless=True, bucket_size=cfg.data.bucket_size,
            skip_bad=cfg.data.skip_bad, num_workers=cfg.data.num_workers, pin_memory=d.device.type == "cuda",
        )  # fmt: skip
        self.dev_loader: AudioLoader | None = None
        if cfg.data.dev:
            dutts = read_manifest(cfg.data.dev, check_files=True)
            self.dev_refs = T.normalised_references(dutts, self.vocab, cfg.data.dev)
            self.dev_targets = T.encode_transcripts(dutts, self.vocab, cfg.data.dev, allow_empty=True)
            longest = max((u.seconds for u in dutts), default=1.0)
            self.dev_loader = make_loader(
                dutts, max(cfg.valid_seconds or cfg.device_seconds, longest + 1.0 / SR), shuffle=False,
                seed=cfg.seed, rank=d.rank, world_size=d.world_size, endless=False, skip_bad=cfg.data.skip_bad,
                num_workers=0,
            )  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def _trainer_info(self) -> dict[str, Any]:
        return {**self.progress_info(), "best_wer": _json_float(self.best_wer),
                "dev_wer": _json_float(self.last_wer), "init": self.cfg.init}

    def save(self, name: str, *, make_latest: bool = True) -> None:
        state = training_state(self.optimizer, self.scaler, self.loader, self.d)  # every rank; rank 0 writes
        if self.d.is_main:
            path = self.run.save(name, self.model, state=state, trainer=self._trainer_info(),
                                 vocab=self.vocab.to_dict(), make_latest=make_latest)
            log.info("checkpoint %s (step %d)", path, self.step)
            self.run.prune(self.cfg.keep_last)
        D.barrier(self.d)

    def _resume(self, ckpt: Path) -> None:
        info, state = load_trainer_state(ckpt)
        warn_if_layout_changed(info, self.d.world_size, self.accum)
        if state is None:
            raise CheckpointError(f"{ckpt}: no training state to resume from")
        restore_training_state(state, self.optimizer, self.scaler, self.loader, self.d)
        self.restore_progress(info)
        self.best_wer = _float(info.get("best_wer"), math.inf)
        self.last_wer = _float(info.get("dev_wer"), math.nan)
        self.train_log.truncate_after(self.step)
        self.valid_log.truncate_after(self.step)
        log.info("resumed from %s at step %d", ckpt, self.step)

    # ------------------------------------------------------------------ one step
    def transformer_frozen(self, step: int | None = None) -> bool:
        return (self.step if step is None else step) < self.cfg.freeze_transformer_steps

    def _forward(self, wave: torch.Tensor, lengths: torch.Tensor | None, gen: torch.Generator, frozen: bool):
        if frozen and self.no_grad_while_frozen:
            # Wav2Vec2ForCTC.forward, with the backbone outside autograd: identical draws and outputs
            m = self.model
            with torch.no_grad():
                out = m.wav2vec2(wave, lengths, mask=True, generator=gen)
            return m.lm_head(m.dropout(out.hidden)), out.frame_lengths
        return self.ddp(wave, lengths, generator=gen)

    def train_step(self, batches: Any) -> dict[str, float]:
        """Accumulate ``self.accum`` micro-batches, synchronise, normalise once, update."""
        cfg, d, model = self.cfg, self.d, self.model
        lr = lr_at(self.step, self.peak_lr, cfg.max_steps, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        frozen = self.transformer_frozen()
        self.ddp.train()
        # [loss sum, utterances, target tokens, real samples, padded samples, micro-batches, stop signal]
        stats = torch.zeros(7, dtype=torch.float64, device=d.device)
        data_wait = 0.0
        for micro in range(self.accum):
            t0 = time.perf_counter()
            batch: Batch = next(batches)
            data_wait += time.perf_counter() - t0
            wave, lengths = batch.model_inputs(d.device)
            targets, target_lengths = T.batch_targets(batch.ids, self.targets)
            j = micro * d.world_size + d.rank  # global micro-batch index, as in pre-training
            torch.manual_seed(step_seed(cfg.seed, self.step, 0, j))  # dropout, LayerDrop
            gen = torch.Generator(device=d.device).manual_seed(step_seed(cfg.seed, self.step, 1, j))
            try:
                with D.no_sync(self.ddp, micro < self.accum - 1), autocast(cfg.precision, d.device):
                    logits, flen = self._forward(wave, lengths, gen, frozen)
                    loss = model.ctc_loss(logits, flen, targets.to(d.device), target_lengths.to(d.device))
                    if self.step in getattr(cfg, "_fault_nan_steps", ()):
                        loss = loss * float("nan")
                    self.scaler.scale(loss).backward()
            except torch.OutOfMemoryError as e:
                raise RuntimeError(oom_message(cfg, d.device)) from e  # type: ignore[arg-type]
            with torch.no_grad():
                stats[0] += loss.detach().double()
                real, padded = batch.samples()
                stats[1] += len(batch)
                stats[2] += int(target_lengths.sum())
                stats[3] += real
                stats[4] += padded
                stats[5] += 1
        stats[6] = float(self.signal_received > 0)
        D.all_reduce_sum(stats, d)
        tot = stats.tolist()  # one device-to-host copy for the whole step
        utts, tokens = tot[1], tot[2]
        denom = max(utts if cfg.loss_normalisation == "sentence" else tokens, 1.0)
        if frozen:  # the optimizer skips parameters without a gradient
            for p in self.phase_params:
                p.grad = None
        grad_norm, outcome = apply_update(self, self.trainable, tot[0], denom)
        finite = outcome == "ok"
        self.step += 1
        self.hours_real += tot[3] / SR / 3600
        self.hours_padded += tot[4] / SR / 3600
        self.agree_stop(tot[6])
        rec = {
            "loss_sum": tot[0], "utterances": utts, "tokens": tokens, "denom": denom, "lr": lr,
            "grad_norm": grad_norm, "finite": float(finite), "overflow": float(outcome == "overflow"),
            "transformer_frozen": float(frozen),
            "real_seconds": tot[3] / SR, "padded_seconds": tot[4] / SR, "data_wait": data_wait,
            "loss_scale": float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0,
        }  # fmt: skip
        if self.nan_in_a_row >= cfg.max_nan_steps:
            self.save(f"step-{self.step:07d}")
            raise TrainingStopped(
                f"{self.nan_in_a_row} non-finite steps in a row at step {self.step}: stopped. A checkpoint was "
                f"written; lower optim.lr, use precision=fp32 or bf16, or set optim.clip_norm"
            )
        return rec

    # ------------------------------------------------------------------ dev WER
    @torch.no_grad()
    def validate(self) -> dict[str, Any] | None:
        """Dev CTC loss and greedy WER / CER (corpus level, summed over ranks)."""
        if self.dev_loader is None:
            return None
        cfg, d, model = self.cfg, self.d, self.model
        model.eval()
        loader = self.dev_loader
        loader.load_state_dict({"epoch": 0, "position": 0})
        # [loss, utterances, tokens, word S D I H, char S D I H]
        stats = torch.zeros(11, dtype=torch.float64, device=d.device)
        for batch in loader:
            if loader.is_repeat(batch):
                continue  # a batch repeated only to give every rank the same count
            wave, lengths = batch.model_inputs(d.device)
            targets, target_lengths = T.batch_targets(batch.ids, self.dev_targets)
            with autocast(cfg.precision, d.device):
                logits, flen = model(wave, lengths)
            stats[0] += model.ctc_loss(logits, flen, targets.to(d.device), target_lengths.to(d.device)).double()
            stats[1] += len(batch)
            stats[2] += target_lengths.sum()
            hyps = greedy_decode(logits.float(), flen, self.vocab)
            refs = [self.dev_refs[i] for i in batch.ids]
            for off, unit in ((3, "word"), (7, "char")):
                c = error_counts(refs, hyps, unit, allow_empty=True)  # type: ignore[arg-type]
                stats[off : off + 4] += torch.tensor([c.substitutions, c.deletions, c.insertions, c.hits],
                                                     dtype=torch.float64, device=d.device)
        D.all_reduce_sum(stats, d)
        model.train()
        words = ErrorCounts(*(int(x) for x in stats[3:7].tolist()))
        chars = ErrorCounts(*(int(x) for x in stats[7:11].tolist()))
        utts, tokens = float(stats[1]), float(stats[2])
        denom = max(utts if cfg.loss_normalisation == "sentence" else tokens, 1.0)
        return {
            "step": self.step, "hours": self.hours_padded, "loss": float(stats[0]) / denom,
            "loss_per_token": float(stats[0]) / max(tokens, 1.0), "utterances": utts,
            "wer": words.rate if words.reference_length else math.nan,
            "cer": chars.rate if chars.reference_length else math.nan,
            "word_errors": words.errors, "ref_words": words.reference_length,
            "char_errors": chars.errors, "ref_chars": chars.reference_length,
        }  # fmt: skip

    def _validate_and_keep_best(self) -> None:
        rec = self.validate()
        if rec is None:
            return
        self.last_wer = rec["wer"]
        self.valid_log.write(rec)
        self.tb.write("valid", rec, self.step)
        if self.d.is_main:
            log.info("dev step %d: loss %.4f WER %.2f %% CER %.2f %%", self.step, rec["loss"], 100 * rec["wer"],
                     100 * rec["cer"])
        if self.cfg.keep_best and rec["wer"] < self.best_wer:
            self.best_wer = rec["wer"]
            self.save("best", make_latest=False)

    # ------------------------------------------------------------------ hooks of the step loop
    def announce(self) -> None:
        cfg = self.cfg
        log.info(
            "fine-tuning %s trainable parameters (%d frozen tensors, %d more frozen for %d steps): batch "
            "%.1f s = %d device(s) × %.4g s × %d accumulation; %s",
            f"{count_parameters(self.model):,}", len(self.frozen_names), len(self.phase_names),
            cfg.freeze_transformer_steps, cfg.batch_seconds, self.d.world_size, cfg.micro_seconds(self.d.world_size),
            self.accum,
            config_summary(cfg),
        )  # fmt: skip
        if cfg.freeze_transformer_steps >= cfg.max_steps:
            log.warning("freeze_transformer_steps=%d >= max_steps=%d: only the CTC head will train",
                        cfg.freeze_transformer_steps, cfg.max_steps)

    def _log_interval(self, meter: Meter, seconds: float, bar: tqdm) -> None:
        s = meter.sums
        steps = s["steps"]
        rec: dict[str, Any] = {"step": self.step, "hours": self.hours_padded, "hours_real": self.hours_real}
        rec["loss"] = s["loss_sum"] / max(s["denom"], 1.0)  # per utterance (sentence) or per token
        rec["loss_per_utterance"] = s["loss_sum"] / max(s["utterances"], 1.0)
        rec["loss_per_token"] = s["loss_sum"] / max(s["tokens"], 1.0)
        rec["grad_norm"] = s["grad_norm"] / steps
        rec["lr"] = self.optimizer.param_groups[0]["lr"]
        rec["transformer_frozen"] = bool(self.transformer_frozen(self.step - 1))
        rec["loss_scale"] = s["loss_scale"] / steps
        rec["audio_seconds_per_second"] = s["real_seconds"] / max(seconds, 1e-9)
        rec["padded_seconds_per_second"] = s["padded_seconds"] / max(seconds, 1e-9)
        rec["data_wait_fraction"] = s["data_wait"] / max(seconds, 1e-9)
        rec["skipped_steps"] = steps - s["finite"] - s["overflow"]
        rec["overflow_steps"] = s["overflow"]
        rec["distance_from_init"] = distance_from(self.model, self._init_params)
        rec["bad_files"] = self.bad_files()
        self.health.check(self.step, rec)
        if self.d.is_main:
            self.train_log.write(rec)
            self.tb.write("train", rec, self.step)
            post = {"loss": f"{rec['loss']:.3f}", "lr": f"{rec['lr']:.2g}"}
            if math.isfinite(self.last_wer):
                post["wer"] = f"{100 * self.last_wer:.1f}"
            bar.set_postfix(post)


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _float(x: Any, default: float) -> float:
    return default if x is None else float(x)


def run_finetuning(cfg: FinetuneConfig, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says into run directory ``out_dir``; returns a summary."""
    return Finetuner(cfg, out_dir, resume=resume).fit_and_leave()
