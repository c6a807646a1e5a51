"""The pre-training loop.

One optimizer step = ``accumulation`` micro-batches of at most ``device_seconds`` padded audio on each
of ``world_size`` devices. Each micro-batch's loss terms are SUMS; they are back-propagated as they are
(DDP synchronises only on the last micro-batch, ``no_sync`` before), and the gradients are divided once
by the global number of masked frames summed over micro-batches and ranks (fairseq's ``sample_size``).
With ``loss_normalisation: nanow2v2`` they are divided by the number of micro-batches instead (the
paper's code). Temperature and learning rate move once per optimizer step.

Randomness is keyed by (seed, step, global micro-batch index), so a resumed run draws exactly what an
uninterrupted one would (the data position is part of the checkpoint), and 2 ranks × 1 micro-batch
draw the same masks as 1 rank × 2 micro-batches.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from earful.checkpoint import MODEL_FILE, CheckpointError, load_model
from earful.config import save_yaml
from earful.data.dataset import make_loader
from earful.data.manifest import read_manifest
from earful.model import Wav2Vec2ForPreTraining, count_parameters
from earful.train import distributed as D
from earful.train.config import PretrainConfig, nominal_steps
from earful.train.loop import StepLoop
from earful.train.monitor import Health, JsonlLog, Meter, TensorBoard, codeword_similarity, distance_from
from earful.train.schedule import lr_at
from earful.train.state import (
    RunDir,
    load_trainer_state,
    restore_training_state,
    training_state,
    warn_if_layout_changed,
)

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (repeated non-finite steps); a checkpoint was written."""


def step_seed(seed: int, step: int, stream: int, index: int = 0) -> int:
    """A distinct, reproducible seed per (run seed, step, stream, index)."""
    return (seed * 1_000_003 + step * 10_007 + stream * 100_003 + index) % (2**63 - 1)


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


MIN_LOSS_SCALE = 1e-4  # fairseq's min_loss_scale: fp16 overflows at a lower loss scale count as non-finite


def step_outcome(scaler: torch.amp.GradScaler, loss: float, grad_norm: float) -> str:
    """How an optimizer step went: ``"ok"``; ``"overflow"`` — fp16, a finite loss whose scaled gradient
    overflowed: the scaler skips the update and halves the loss scale, which is how it finds its scale,
    so it is logged (``overflow_steps``) but not a failure; ``"nonfinite"`` — a non-finite loss, or a
    non-finite gradient without a scaler (or with the scale already under ``MIN_LOSS_SCALE``): the update
    is skipped and counted towards ``max_nan_steps``."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return "ok"
    if scaler.is_enabled() and math.isfinite(loss) and scaler.get_scale() > MIN_LOSS_SCALE:
        return "overflow"
    return "nonfinite"


def apply_update(
    run: Any, params: list[torch.nn.Parameter], loss: float, denom: float
) -> tuple[float, str]:
    """The end of an optimizer step, shared by pre-training and fine-tuning: the gradients (summed over
    micro-batches, averaged over ranks by DDP) are unscaled and multiplied by world_size / ``denom``,
    clipped, checked, applied (or skipped and counted), and zeroed. ``run`` has ``optimizer``,
    ``scaler``, ``d``, ``cfg.optim.clip_norm``, ``step`` and the counters ``nan_steps``,
    ``nan_in_a_row`` and ``overflow_steps`` (checkpointed in trainer.json).
    Returns the gradient norm before clipping and the ``step_outcome``."""
    run.scaler.unscale_(run.optimizer)
    factor = run.d.world_size / denom
    grads = [p for p in params if p.grad is not None]
    for p in grads:
        p.grad.mul_(factor)
    clip = run.cfg.optim.clip_norm if run.cfg.optim.clip_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, clip)) if grads else 0.0
    outcome = step_outcome(run.scaler, loss, grad_norm)
    if outcome == "ok":
        run.scaler.step(run.optimizer)
        run.nan_in_a_row = 0
    elif outcome == "overflow":
        run.overflow_steps += 1
    else:
        run.nan_steps += 1
        run.nan_in_a_row += 1
        log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row, %d in all)",
                    run.step, run.nan_in_a_row, run.nan_steps)
    run.scaler.update()
    if outcome == "overflow":
        log.info("step %d: fp16 gradient overflow; update skipped, loss scale lowered to %g", run.step,
                 run.scaler.get_scale())
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm, outcome


def oom_message(cfg: PretrainConfig, device: torch.device) -> str:
    return (f"out of memory on {device} with device_seconds={cfg.device_seconds:g}: lower device_seconds "
            f"(accumulation then rises to keep batch_seconds={cfg.batch_seconds:g})")


class Pretrainer(StepLoop):
    def __init__(self, cfg: PretrainConfig, out_dir: str | Path, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.d = D.setup(cfg.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.run = RunDir(out_dir)
        self.accum = cfg.accumulation(self.d.world_size)
        self.peak_lr = cfg.effective_lr()
        torch.manual_seed(cfg.seed)
        self.model = Wav2Vec2ForPreTraining(cfg.model).to(self.d.device)
        self.ddp: torch.nn.Module = self.model
        if self.d.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.d.local_rank] if self.d.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.peak_lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
            fused=self.d.device.type in ("cpu", "cuda"),  # one kernel for all parameters (benchmarks/README.md)
        )
        self.scaler = torch.amp.GradScaler(self.d.device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self.hours_real = 0.0
        self.hours_padded = 0.0
        self.nan_steps = 0
        self.nan_in_a_row = 0
        self.overflow_steps = 0
        self.best_valid = math.inf
        self.milestones_done: list[float] = []
        self._init_params: dict[str, torch.Tensor] = {}
        self.train_log = JsonlLog(self.run.root / "train.jsonl", self.d.is_main)
        self.valid_log = JsonlLog(self.run.root / "valid.jsonl", self.d.is_main)
        self.tb = TensorBoard(self.run.root / "tb", cfg.tensorboard and self.d.is_main)
        self.health = Health(cfg.health, cfg.model.num_negatives)
        self._build_data()
        if self.d.is_main:
            self.run.prepare()
            save_yaml(cfg, self.run.root / "config.yaml")
        D.barrier(self.d)
        if resume:
            self._resume()
        if self.step == 0:  # a fresh start (or a run killed before its first checkpoint): no stale records
            self.train_log.truncate_after(0)
            self.valid_log.truncate_after(0)
        if self.step == 0 and self.d.is_main and not (self.run.ckpt / "init" / MODEL_FILE).exists():
            self.run.save("init", self.model, state=None, trainer={"step": 0}, make_latest=False)
        D.barrier(self.d)
        self._init_params = {k: v.float() for k, v in load_file(str(self.run.ckpt / "init" / MODEL_FILE)).items()}

    # ------------------------------------------------------------------ data
    def _build_data(self) -> None:
        cfg, d = self.cfg, self.d
        if not cfg.data.train:
            raise ValueError("data.train: no training manifest given")
        utts = read_manifest(cfg.data.train, check_files=True)
        self.loader = make_loader(
            utts, cfg.device_seconds, pack_seconds=cfg.micro_seconds(d.world_size), crop_seconds=cfg.data.crop_seconds,
            min_seconds=cfg.data.min_seconds,
            shuffle=True, seed=cfg.seed, rank=d.rank, world_size=d.world_size, endless=True,
            bucket_size=cfg.data.bucket_size, skip_bad=cfg.data.skip_bad, num_workers=cfg.data.num_workers,
            pin_memory=d.device.type == "cuda", crop_to_shortest=not cfg.data.padding,
        )  # fmt: skip
        self.valid_loader = None
        if cfg.data.valid:
            vutts = read_manifest(cfg.data.valid, check_files=True)
            self.valid_loader = make_loader(
                vutts, cfg.valid_seconds or cfg.device_seconds, crop_seconds=cfg.data.crop_seconds,
                min_seconds=cfg.data.min_seconds, shuffle=False, seed=cfg.seed, rank=d.rank,
                world_size=d.world_size, endless=False, skip_bad=cfg.data.skip_bad, num_workers=0,
                crop_to_shortest=not cfg.data.padding,
            )  # fmt: skip

    # ------------------------------------------------------------------ checkpoints
    def _trainer_info(self) -> dict[str, Any]:
        return {**self.progress_info(), "best_valid": self.best_valid, "milestones_done": self.milestones_done}

    def save(self, name: str, *, make_latest: bool = True) -> None:
        state = training_state(self.optimizer, self.scaler, self.loader, self.d)  # every rank; rank 0 writes
        if self.d.is_main:
            path = self.run.save(name, self.model, state=state, trainer=self._trainer_info(), make_latest=make_latest)
            log.info("checkpoint %s (step %d, %.2f h seen)", path, self.step, self.hours_padded)
            self.run.prune(self.cfg.keep_last)
        D.barrier(self.d)

    def _resume(self) -> None:
        ckpt = self.run.latest()
        if ckpt is None:
            log.info("no checkpoint in %s: starting from step 0", self.run.ckpt)
            return
        info, state = load_trainer_state(ckpt)
        warn_if_layout_changed(info, self.d.world_size, self.accum)
        model, _ = load_model(ckpt)
        self.model.load_state_dict(model.state_dict())
        if state is None:
            raise CheckpointError(f"{ckpt}: no training state to resume from")
        restore_training_state(state, self.optimizer, self.scaler, self.loader, self.d)
        self.restore_progress(info)
        self.best_valid = float(info.get("best_valid", math.inf))
        self.milestones_done = list(info.get("milestones_done", []))
        self.train_log.truncate_after(self.step)
        self.valid_log.truncate_after(self.step)
        log.info("resumed from %s at step %d (%.3f h seen)", ckpt, self.step, self.hours_padded)

    # ------------------------------------------------------------------ one step
    def train_step(self, batches: Any) -> dict[str, float]:
        """Accumulate ``self.accum`` micro-batches, synchronise, normalise once, update."""
        cfg, d, model = self.cfg, self.d, self.model
        lr = lr_at(self.step, self.peak_lr, cfg.max_steps, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model.set_step(self.step)
        self.ddp.train()
        G = cfg.model.num_codevector_groups
        # [masked, contrastive, diversity, penalty, correct, real samples, padded samples, utterances,
        #  micro-batches, stop signal, ppl_soft × G, ppl_hard × G]
        stats = torch.zeros(10 + 2 * G, dtype=torch.float64, device=d.device)
        data_wait = 0.0
        for micro in range(self.accum):
            t0 = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - t0
            wave, lengths = batch.model_inputs(d.device)
            # randomness keyed by the global micro-batch index j, which also fixes the data it sees
            # (rank r's k-th batch is global batch k·W + r), so W ranks × A micro-batches draw exactly
            # what 1 rank × W·A micro-batches draw
            j = micro * d.world_size + d.rank
            torch.manual_seed(step_seed(cfg.seed, self.step, 0, j))  # dropout, LayerDrop
            gen = torch.Generator(device=d.device).manual_seed(step_seed(cfg.seed, self.step, 1, j))
            try:
                with D.no_sync(self.ddp, micro < self.accum - 1), autocast(cfg.precision, d.device):
                    out = self.ddp(wave, lengths, generator=gen)
                    if self.step in getattr(cfg, "_fault_nan_steps", ()):  # test hook: a NaN loss
                        out.contrastive = out.contrastive * float("nan")
                    total = out.contrastive + out.diversity_weight * out.diversity + out.penalty_weight * out.penalty
                    self.scaler.scale(total).backward()
            except torch.OutOfMemoryError as e:
                raise RuntimeError(oom_message(cfg, d.device)) from e
            with torch.no_grad():
                stats[0] += out.num_masked
                stats[1] += out.contrastive.detach().double()
                stats[2] += out.diversity.detach().double()
                stats[3] += out.penalty.detach().double()
                stats[4] += out.num_correct
                real, padded = batch.samples()
                stats[5] += real
                stats[6] += padded
                stats[7] += len(batch)
                stats[8] += 1
                stats[10 : 10 + G] += out.perplexity_soft.double()
                stats[10 + G :] += out.perplexity_hard.double()
        stats[9] = float(self.signal_received > 0)
        D.all_reduce_sum(stats, d)
        tot = stats.tolist()  # one device-to-host copy for the whole step
        masked = tot[0]
        denom = tot[8] if cfg.model.loss_normalisation == "nanow2v2" else max(masked, 1.0)
        # any loss term non-finite counts
        grad_norm, outcome = apply_update(self, list(model.parameters()), sum(tot[1:4]), denom)
        finite = outcome == "ok"
        self.step += 1
        sr = 16000.0
        self.hours_real += tot[5] / sr / 3600
        self.hours_padded += tot[6] / sr / 3600
        self.agree_stop(tot[9])
        n = max(masked, 1.0)
        rec = {
            "masked": masked, "contrastive": tot[1] / n, "diversity": tot[2] / n,
            "penalty": tot[3] / n, "accuracy": tot[4] / n, "real_seconds": tot[5] / sr,
            "padded_seconds": tot[6] / sr, "utterances": tot[7], "lr": lr,
            "temperature": model.quantizer.temperature, "grad_norm": grad_norm, "finite": float(finite),
            "overflow": float(outcome == "overflow"),
            "loss_scale": float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0,
            "data_wait": data_wait,
        }  # fmt: skip
        micro = tot[8]
        for g in range(G):
            rec[f"ppl_soft_g{g}"] = tot[10 + g] / micro
            rec[f"ppl_hard_g{g}"] = tot[10 + G + g] / micro
        if self.nan_in_a_row >= cfg.max_nan_steps:
            self.save(f"step-{self.step:07d}")
            raise TrainingStopped(
                f"{self.nan_in_a_row} non-finite steps in a row at step {self.step}: stopped. A checkpoint was "
                f"written; lower optim.lr, use precision=fp32 or bf16, or set optim.clip_norm"
            )
        return rec

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        if self.valid_loader is None:
            return None
        cfg, d, model = self.cfg, self.d, self.model
        model.eval()
        G = cfg.model.num_codevector_groups
        stats = torch.zeros(6 + G, dtype=torch.float64, device=d.device)
        self.valid_loader.load_state_dict({"epoch": 0, "position": 0})
        for batch in self.valid_loader:
            if self.valid_loader.is_repeat(batch):
                continue  # a batch repeated only to give every rank the same count
            wave, lengths = batch.model_inputs(d.device)
            gen = torch.Generator(device=d.device).manual_seed(step_seed(cfg.seed, batch.index, 2, d.rank))
            with autocast(cfg.precision, d.device):
                out = model(wave, lengths, generator=gen)
            stats[0] += out.num_masked
            stats[1] += out.contrastive.double()
            stats[2] += out.diversity.double()
            stats[3] += out.penalty.double()
            stats[4] += out.num_correct
            stats[5] += 1
            stats[6:] += out.perplexity_hard.double()
        D.all_reduce_sum(stats, d)
        model.train()
        n = max(float(stats[0]), 1.0)
        batches = max(float(stats[5]), 1.0)
        loss = (float(stats[1]) + cfg.model.diversity_weight * float(stats[2])
                + cfg.model.feature_penalty_weight * float(stats[3])) / n  # fmt: skip
        rec = {"step": self.step, "hours": self.hours_padded, "hours_real": self.hours_real, "loss": loss,
               "contrastive": float(stats[1]) / n, "accuracy": float(stats[4]) / n}  # fmt: skip
        for g in range(G):
            rec[f"ppl_hard_g{g}"] = float(stats[6 + g]) / batches
        return rec

    # ------------------------------------------------------------------ hooks of the step loop
    def announce(self) -> None:
        cfg = self.cfg
        log.info(
            "pre-training %s parameters: batch %.1f s = %d device(s) × %.4g s × %d accumulation (padded audio, "
            "at most); peak lr %.3g (%s scaling), %d steps",
            f"{count_parameters(self.model):,}", cfg.batch_seconds, self.d.world_size,
            cfg.micro_seconds(self.d.world_size), self.accum, self.peak_lr, cfg.optim.lr_scaling, cfg.max_steps,
        )  # fmt: skip

    def after_step(self) -> None:
        cfg = self.cfg
        for h in cfg.ckpt_hours:
            if cfg.ckpt_hours_basis == "nominal":
                reached = self.step >= nominal_steps(h, cfg.batch_seconds)
            else:
                reached = self.hours_padded >= h
            if h not in self.milestones_done and reached:
                self.milestones_done.append(h)
                self.save(f"hours-{h:g}", make_latest=False)

    def _validate_and_keep_best(self) -> None:
        rec = self.validate()
        if rec is None:
            return
        self.valid_log.write(rec)
        self.tb.write("valid", rec, self.step)
        if self.d.is_main:
            log.info("valid step %d: loss %.4f acc %.3f ppl %s", self.step, rec["loss"], rec["accuracy"],
                     [round(v, 1) for k, v in rec.items() if k.startswith("ppl_hard")])
        if rec["loss"] < self.best_valid:
            self.best_valid = rec["loss"]
            self.save("best", make_latest=False)

    def _log_interval(self, meter: Meter, seconds: float, bar: tqdm) -> None:
        s = meter.sums
        steps = s["steps"]
        cfg = self.cfg
        rec: dict[str, Any] = {"step": self.step, "hours": self.hours_padded, "hours_real": self.hours_real}
        # the mean over the interval's steps of each step's per-masked-frame values (a skipped non-finite step
        # leaves the interval's mean non-finite on purpose; skipped_steps counts such steps)
        rec["contrastive"] = s["contrastive"] / steps
        rec["diversity"] = s["diversity"] / steps
        rec["penalty"] = s["penalty"] / steps
        rec["loss"] = rec["contrastive"] + cfg.model.diversity_weight * rec["diversity"] + \
            cfg.model.feature_penalty_weight * rec["penalty"]
        rec["accuracy"] = s["accuracy"] / steps
        for k in s:
            if k.startswith("ppl_"):
                rec[k] = s[k] / steps
        rec["grad_norm"] = s["grad_norm"] / steps
        rec["lr"] = self.optimizer.param_groups[0]["lr"]
        rec["temperature"] = self.model.quantizer.temperature
        rec["loss_scale"] = s["loss_scale"] / steps
        rec["audio_seconds_per_second"] = s["real_seconds"] / max(seconds, 1e-9)
        rec["padded_seconds_per_second"] = s["padded_seconds"] / max(seconds, 1e-9)
        rec["data_wait_fraction"] = s["data_wait"] / max(seconds, 1e-9)
        rec["skipped_steps"] = steps - s["finite"] - s["overflow"]
        rec["overflow_steps"] = s["overflow"]
        rec["distance_from_init"] = distance_from(self.model, self._init_params)
        for g, sim in enumerate(codeword_similarity(self.model.quantizer.codevectors, cfg.model.num_codevector_groups)):
            rec.update({f"codeword_sim_g{g}_{k}": v for k, v in sim.items()})
        rec["bad_files"] = self.bad_files()
        self.health.check(self.step, rec)
        if self.d.is_main:
            self.train_log.write(rec)
            self.tb.write("train", rec, self.step)
            bar.set_postfix(h=f"{self.hours_padded:.3f}", loss=f"{rec['loss']:.3f}", acc=f"{rec['accuracy']:.3f}",
                            aps=f"{rec['audio_seconds_per_second']:.0f}")


def run_pretraining(cfg: PretrainConfig, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    return Pretrainer(cfg, out_dir, resume=resume).fit_and_leave()
