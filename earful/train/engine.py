"""The training engine: one ``Trainer`` that runs any ``Task`` (``earful/train/task.py``).

One optimizer step = ``accumulation`` micro-batches of at most ``device_seconds`` padded audio on each of
``world_size`` devices (``earful.data.budget``). Each micro-batch's loss is a SUM; it is back-propagated as
it is (DDP synchronises on the last micro-batch only, ``no_sync`` before), and the gradients are divided
once by the task's global count (masked frames, utterances, ...) summed over micro-batches and ranks. The
learning rate moves once per optimizer step.

Randomness is keyed by (seed, step, global micro-batch index), so a resumed run draws exactly what an
uninterrupted one would (the data position is part of the checkpoint), and 2 ranks × 1 micro-batch draw
the same as 1 rank × 2 micro-batches (the sampler deals the epochs as one stream; unless a micro-batch is
left out empty: README.md, "Batch size in seconds"). The step's statistics are named, all-reduced once and read to the
host once. Every ``log_every`` steps a record goes to ``train.jsonl``; every ``valid_every`` the task
validates (``valid.jsonl``, ``checkpoints/best`` by its metric); every ``ckpt_every`` a checkpoint is
written; SIGTERM / SIGUSR1 and a first Ctrl-C checkpoint and stop after the step every rank shares the signal in,
every rank by the highest received (a second Ctrl-C aborts); a SIGTERM / SIGUSR1 that stops nothing (it came in
the last step), or that outranks the stop's, on any rank, is handed on once the run has finished
(``agree_signal_at_end``, ``hand_on_signal``); a final
checkpoint is always written. ``max_nan_steps`` non-finite steps in a row stop the run with a checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from earful.checkpoint import CheckpointError, load_model, load_weights, read_info
from earful.config import config_yaml, describe, to_dict
from earful.data.budget import SAMPLE_RATE
from earful.data.parallel import EXIT_STOPPED, STOP_SIGNALS, signals_handled
from earful.lock import hold_folder
from earful.model import compile_blocks, count_parameters, uses_cuda_graphs
from earful.train import distributed as D
from earful.train.config import TrainingConfig, nominal_hours
from earful.train.machine import record_machine
from earful.train.memory import auto_device_seconds, out_of_memory
from earful.train.monitor import Health, JsonlLog, Meter, TensorBoard, distance_from
from earful.train.recipe import (
    HISTORY,
    MANIFEST_RECORDS,
    check_resume,
    layout_of,
    manifest_files,
    manifest_records,
    new_training_data,
    read_history,
    recipe_hash,
    recipe_of,
    record_resume,
    start_history,
)
from earful.train.schedule import lr_at
from earful.train.state import (
    RunDir,
    StateMismatch,
    load_trainer_state,
    nonfinite_stop,
    read_trainer_info,
    restore_training_state,
    training_state,
)
from earful.train.stats import StepStats
from earful.train.step import apply_update, autocast, seed_micro_batch
from earful.train.task import Task
from earful.train.tracking import Tracking

log = logging.getLogger(__name__)
# fp16's first loss scale: the losses are sums (fairseq's fp16_init_scale); torch's 65536 overflowed for the
# first steps of every run, each skipped while the schedule moved on
FP16_INIT_SCALE = 2.0**7


# exit statuses of `earful pretrain` and `earful finetune` (2: an error, before or while training), and
# EXIT_STOPPED (4, earful/data/parallel.py): stopped by SIGTERM / SIGUSR1 or a first Ctrl-C, --resume continues
EXIT_NONFINITE = 3  # stopped after max_nan_steps non-finite steps in a row; a checkpoint was written


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (repeated non-finite steps); a checkpoint was written."""


class NoRunToResume(ValueError):
    """``--resume`` on a folder in which no run was started (a new or mistyped ``--out``)."""


# the stop signals by rank, lowest first: where ranks received different ones, every rank stops by the highest
# (``agree_stop``). A SIGTERM (cancelled, or pre-empted by Slurm itself, which requeues the job) outranks a Ctrl-C,
# which outranks a SIGUSR1 (a time limit's notice, on which a study's job requeues itself): a SIGTERM on rank 1 and
# a SIGUSR1 on rank 0 had rank 0, whose stop a Slurm job acts on, requeue a cancelled job
STOP_ORDER = (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM)


def stop_rank(signum: int) -> int:
    """``signum``'s place in ``STOP_ORDER`` from 1; 0 for none."""
    return STOP_ORDER.index(signum) + 1 if signum else 0


def stop_signals(handler: Any) -> AbstractContextManager[None]:
    """The stop signals (``STOP_ORDER``: SIGUSR1, SIGINT (Ctrl-C), SIGTERM) call ``handler`` (which asks the loop to
    checkpoint and stop; a second Ctrl-C aborts) while inside; the previous handlers come back on exit. Outside the
    main thread signals cannot be caught: no-op."""
    return signals_handled(STOP_ORDER, handler)


class Trainer:
    """Builds the task's model and data, the optimizer and the run folder; ``fit()`` trains to ``max_steps``."""

    def __init__(self, task: Task, out_dir: str | Path, *, resume: bool = False, allow_changes: bool = False,
                 start_if_new: bool = False) -> None:
        """``resume``: continue from the run folder's latest checkpoint (a fresh start refuses a folder holding
        checkpoints; a folder in which no run was started is refused, as a mistyped ``--out`` would otherwise
        train from step 0 unnoticed); ``start_if_new`` (with ``resume``): start the run in such a folder instead —
        for a job that may be a run's first or its requeue (a study's stages, a Slurm script);
        ``allow_changes``: resume even with another recipe (earful/train/recipe.py)."""
        self.cfg, self.task = task.cfg, task
        self.d = D.setup(self.cfg.device)
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)
        self.run = RunDir(out_dir)
        # the folder and its lock, where made only for this run: a refused or failed start removes them again
        created = not self.run.root.exists()
        had_lock = (self.run.root / ".lock").exists()
        with writing(self.run.root):  # one writer per run folder: the main rank holds its lock
            self._lock = hold_folder(self.run.root, "earful run") if self.d.is_main else None
        try:
            self._open(resume and not start_if_new, resume, allow_changes)
        except BaseException:
            if self.d.is_main and not had_lock:
                # removed while still held: removed after letting go, it was another process's lock file when that
                # one had taken the lock meanwhile, and a third could then lock a new one beside it
                (self.run.root / ".lock").unlink(missing_ok=True)
            self.close()
            if self.d.is_main and not had_lock:
                if created:
                    with suppress(OSError):  # something was written there (or by another process): it stays
                        self.run.root.rmdir()
            raise

    def _open(self, strict: bool, resume: bool, allow_changes: bool) -> None:
        cfg, task = self.cfg, self.task
        if self.d.is_main and self.run.ckpt.is_dir():  # first restore a checkpoint whose replacement was cut
            with writing(self.run.root):  # (latest.json may name it)
                self.run.prepare()
        D.barrier(self.d)
        latest = self.run.latest()
        if not resume and (latest is not None or self.run.checkpoints()):
            raise ValueError(f"{self.run.root} already holds checkpoints: add --resume, or choose another --out")
        if strict and latest is None and not self.run.started():
            raise NoRunToResume(
                f"{self.run.root}: --resume, but no run was started in this folder (no checkpoints, no "
                f"{HISTORY}){'; it did not exist' if not any(self.run.root.glob('[!.]*')) else ''}: check --out, "
                "or drop --resume to start a new run there")
        if resume and latest is None and self.run.started() and self.d.is_main:
            log.info("%s: the run was started but wrote no checkpoint: --resume starts it again from step 0",
                     self.run.root)
        if latest is not None and task.model_kind and (kind := read_info(latest).get("kind")) != task.model_kind:
            raise ValueError(f"{self.run.root}: its checkpoints hold a {kind!r} model, and this {task.name} makes a "
                             f"{task.model_kind!r} model: the folder holds another kind of run, which it cannot "
                             "resume; use another --out")
        task.build_model(self.d, latest)
        info = read_trainer_info(latest) if latest is not None else None
        self.cuda_graphs = cfg.compile and uses_cuda_graphs(cfg.compile_backend, cfg.compile_mode)
        graphs = (f"compile_backend={cfg.compile_backend}" if cfg.compile_backend == "cudagraphs"
                  else f"compile_mode={cfg.compile_mode}")  # what asked for CUDA graphs, for the messages
        if cfg.device_seconds == "auto":
            saved = info.get("layout", {}) if info is not None else {}
            if saved.get("world_size") == self.d.world_size and isinstance(saved.get("device_seconds"), float | int):
                # found once, kept: a new search may land elsewhere (another card, another process's memory),
                # and another micro-batch would change the batches an uninterrupted run sees
                cfg.device_seconds = float(saved["device_seconds"])
                log.info("device_seconds=auto: %.4g s a micro-batch, as found when the run started", cfg.device_seconds)
            else:
                cfg.device_seconds = auto_device_seconds(task, cfg, self.d)  # on the eager model: no graph pools
                if self.cuda_graphs:
                    log.warning("device_seconds=auto was found on the eager model; %s keeps CUDA-graph memory for "
                                "every batch shape, which only its 10 %% margin covers (not measured)", graphs)
        if cfg.compile:
            if self.d.device.type == "cpu":
                log.warning("compile=true on a CPU: measured not to pay here (benchmarks/README.md)")
            if self.cuda_graphs and cfg.data.shape_seconds is None:
                log.warning("%s without data.shape_seconds: every new batch shape records its own CUDA graphs (time "
                            "and memory); a shape grid makes them repeat", graphs)
            compile_blocks(task.model, cfg.compile_backend, cfg.compile_mode)  # type: ignore[arg-type]
        self.budget = cfg.budget(self.d.world_size)
        self.accumulation = self.budget.accumulation
        if self.cuda_graphs and self.accumulation > 1:
            raise ValueError(
                f"{graphs} replays CUDA graphs, whose next replay overwrites the gradient "
                f"that accumulation still adds to: it needs one micro-batch a step, and batch_seconds="
                f"{cfg.batch_seconds:g} takes {self.accumulation} of device_seconds={cfg.device_seconds:g} on "
                f"{self.d.world_size} device(s); use another compile mode or backend, or device_seconds="
                "batch_seconds / devices")
        self.peak_lr = cfg.effective_lr()
        self.recipe, self.layout = {**recipe_of(cfg), **task.recipe_extras()}, layout_of(cfg, self.d.world_size)
        self.manifest_records = manifest_records(cfg)
        segment = None
        if info is not None:
            segment = check_resume(self.run.root, info, self.recipe, self.layout, batch_seconds=cfg.batch_seconds,
                                   allow_changes=allow_changes, manifests=manifest_files(cfg),
                                   records=self.manifest_records, reads_labels=task.reads_labels,
                                   announce=self.d.is_main)
        self.tracking = Tracking(cfg.tracking, self.run.root, self.d.is_main)  # a missing package stops us here
        task.build_data(self.budget)
        self.model, self.loader = task.model, task.loader
        self._wrap_and_optimise()
        self.step, self.hours_real, self.hours_padded = 0, 0.0, 0.0
        self.meter = Meter()  # the log interval's sums, checkpointed: a resumed run logs what an uninterrupted one does
        self.nan_steps = self.nan_in_a_row = self.overflow_steps = 0
        self.nonfinite_stop = False  # this checkpoint was written by the stop after max_nan_steps
        self.best, self.last_valid = math.inf, math.nan
        self.signal_received = 0  # set by the signal handler, on this rank only: the highest (STOP_ORDER) so far
        self.stop_signal = 0  # set by agree_stop once every rank knows: the highest signal any rank received
        self.signal_at_end = 0  # set by agree_signal_at_end: the highest any rank received by the run's end
        self.train_log = JsonlLog(self.run.root / "train.jsonl", self.d.is_main)
        self.valid_log = JsonlLog(self.run.root / "valid.jsonl", self.d.is_main)
        self.tb = TensorBoard(self.run.root / "tb", cfg.tensorboard and self.d.is_main)
        self.health = Health(cfg.health, task.chance_accuracy)
        if latest is not None:
            # what a resume reads besides the checkpoint, before anything is changed: the history it adds to, and
            # the step-0 weights (distance from init), verified; damaged, they refuse it
            read_history(self.run.root)
            self._init_params = self._init_weights()
            self._resume(latest, segment)  # loaded: nothing in the run folder has changed yet
        # resumed from the checkpoint of the stop after max_nan_steps
        self.resumed_stopped = info is not None and nonfinite_stop(info, cfg.max_nan_steps)
        # a finished run resumed as it was: its end-of-run checkpoint (written after the end's validation, and
        # not by a non-finite stop), with max_steps where it was; nothing is left to do
        self.resumed_finished = (latest is not None and info is not None and not self.resumed_stopped
                                 and latest.name == f"step-{self.step:07d}"
                                 and info["recipe"].get("max_steps") == self.step == cfg.max_steps)
        # before the run folder changes: a tracker that cannot start refuses the run, the folder as it was
        self.tracking.start(to_dict(cfg), recipe_hash(self.recipe))
        if self.d.is_main:
            with writing(self.run.root):
                self.run.prepare()
                if latest is None:
                    start_history(self.run.root, cfg, self.d.world_size)
                    record_machine(self.run.root, 0, self.d.device, self.d.world_size)
        D.barrier(self.d)
        if latest is not None:
            self._commit_resume(latest, segment)
        self._start_records()

    def close(self) -> None:
        """Close the trackers and let go of the run folder (another process may then write to it)."""
        if getattr(self, "tracking", None) is not None:
            stopped, done = getattr(self, "stop_signal", 0), getattr(self, "step", 0) >= self.cfg.max_steps
            diverged = getattr(self, "nonfinite_stop", False) or getattr(self, "resumed_stopped", False)
            self.tracking.finish("stopped" if stopped else "failed" if diverged or not done else "finished")
        if getattr(self, "_lock", None) is not None:
            self._lock.close()
            self._lock = None

    def _wrap_and_optimise(self) -> None:
        self.net: torch.nn.Module = self.model
        if self.d.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.d.local_rank] if self.d.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        o = self.cfg.optim
        self.params = self.task.trainable()
        self.optimizer = torch.optim.AdamW(
            self.params, lr=self.peak_lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
            fused=self.d.device.type in ("cpu", "cuda"),  # one kernel for all parameters (benchmarks/README.md)
        )
        self.scaler = torch.amp.GradScaler(self.d.device.type, init_scale=FP16_INIT_SCALE,
                                           enabled=self.cfg.precision == "fp16")

    def _start_records(self) -> None:
        """A fresh start (or a run killed before its first checkpoint) keeps no stale records (logs, TensorBoard's
        events), and writes the step-0 weights (distance from init, the from-scratch baselines) — again, so that
        an earlier attempt's ``init`` (another seed or model, killed before its first checkpoint) is never kept."""
        if self.step == 0:
            self.train_log.truncate_after(0)
            self.valid_log.truncate_after(0)
            self.tb.purge_step = 1  # and its TensorBoard events, as a resume's after its step (_commit_resume)
            if self.d.is_main:
                self.run.save("init", self.model, state=None, trainer={"step": 0},
                              make_latest=False, **self.task.checkpoint_extras())
        D.barrier(self.d)
        if self.step == 0:  # a resume read them before it changed anything
            self._init_params = self._init_weights()

    def _init_weights(self) -> dict[str, torch.Tensor]:
        """The step-0 weights (``checkpoints/init``, verified), in fp32: the distance from init is measured to them."""
        return {k: v.float() for k, v in load_weights(self.run.ckpt / "init").items()}

    # ------------------------------------------------------------------ checkpoints
    def progress_info(self) -> dict[str, Any]:
        """What ``trainer.json`` records: progress, counters, the layout, the best checkpoint's metric."""
        return {
            "step": self.step, "hours_real": self.hours_real,
            "hours_padded": self.hours_padded, "epoch": self.loader.epoch, "nan_steps": self.nan_steps,
            "nan_in_a_row": self.nan_in_a_row, "overflow_steps": self.overflow_steps,
            "world_size": self.d.world_size, "accumulation": self.accumulation, "batch_seconds": self.cfg.batch_seconds,
            "lr": self.peak_lr, "best_metric": self.task.best_metric, "best": _json_float(self.best),
            "last_valid": _json_float(self.last_valid), "stopped_by": self.stopped_by(),
            "nonfinite_stop": self.nonfinite_stop, "recipe": self.recipe,
            "layout": self.layout, **self.manifest_records,
            "log_interval": {k: _json_sum(v) for k, v in self.meter.sums.items()},
            "health": self.health.state_dict(), **self.task.trainer_info(),
        }  # fmt: skip

    def stopped_by(self) -> str:
        """The signal that stopped the run ("" while it runs or once it finished)."""
        return signal.Signals(self.stop_signal).name if self.stop_signal else ""

    def save(self, name: str, *, make_latest: bool = True) -> None:
        state = training_state(self.optimizer, self.scaler, self.loader, self.d)  # every rank; rank 0 writes
        if self.d.is_main:
            path = self.run.save(name, self.model, state=state, trainer=self.progress_info(),
                                 make_latest=make_latest, **self.task.checkpoint_extras())
            log.info("checkpoint %s (step %d, %.3f padded h seen)", path, self.step, self.hours_padded)
            self.run.prune(self.cfg.keep_last)
        D.barrier(self.d)

    def _resume(self, ckpt: Path, segment: dict[str, Any] | None) -> None:
        info, state = load_trainer_state(ckpt)
        if state is None:
            raise CheckpointError(f"{ckpt}: no training state to resume from")
        model, _ = load_model(ckpt)
        bucket = info.get("recipe", {}).get("data.bucket_size")
        for loader_state in state["loaders"]:  # a sampler state of format 3 did not record its bucket size
            if loader_state.get("format") == 3 and bucket is not None:
                loader_state.setdefault("bucket_size", bucket)
        try:
            self.model.load_state_dict(model.state_dict())
        except RuntimeError as e:  # missing or unexpected tensors, other shapes
            raise _mismatch(ckpt, segment, f"the model: {e}") from e
        new_data = new_training_data(segment)
        try:
            restore_training_state(state, self.optimizer, self.scaler, self.loader, self.d, new_data=new_data)
        except StateMismatch as e:
            raise _mismatch(ckpt, segment, str(e)) from e
        if new_data and self.d.is_main:
            log.warning("the training data changed (allowed by --allow-changes): weights, optimizer and step continue "
                        "from %s; the data starts afresh with epoch %d of the new data (the saved place in the old "
                        "data does not carry over)", ckpt, self.loader.epoch)
        self.step = int(info["step"])
        self.hours_real, self.hours_padded = float(info["hours_real"]), float(info["hours_padded"])
        self.nan_steps, self.nan_in_a_row = int(info["nan_steps"]), int(info["nan_in_a_row"])
        self.overflow_steps = int(info["overflow_steps"])
        self.best, self.last_valid = _float(info["best"], math.inf), _float(info["last_valid"], math.nan)
        # (a non-finite sum of an earlier earful's trainer.json: null, read as NaN)
        self.meter.add(**{k: _float(v, math.nan) for k, v in info.get("log_interval", {}).items()})
        self.health.load_state_dict(info.get("health", {}))  # (none in a checkpoint of earful before 2026-12-07)
        self.task.restore(info)
        if self.d.is_main:
            log.info("resumed from %s at step %d (%.3f padded h seen)", ckpt, self.step, self.hours_padded)

    def _commit_resume(self, ckpt: Path, segment: dict[str, Any] | None) -> None:
        """The run folder, once the resume from ``ckpt`` has loaded and the trackers have started: the logs cut back
        to its step, the history and machines.jsonl added to, the checkpoints of later steps dropped."""
        self.train_log.truncate_after(self.step)
        self.valid_log.truncate_after(self.step)
        self.tb.purge_step = self.step + 1  # TensorBoard's events after the checkpoint go, as the logs' lines
        # nothing trains after a finished run's resume, or one stopped by max_nan_steps at its last step: no history
        # segment (nothing trains with its config); a segment that reached no checkpoint still goes
        trains = not (self.resumed_finished or self.resumed_stopped and self.step == self.cfg.max_steps)
        if self.d.is_main:
            with writing(self.run.root):
                record_resume(self.run.root, self.cfg, self.step, segment if trains else None)
                if self.step < self.cfg.max_steps:  # a finished run resumed as it was trains nothing here
                    record_machine(self.run.root, self.step, self.d.device, self.d.world_size)
                self._drop_discarded(ckpt)
        D.barrier(self.d)

    def _drop_discarded(self, ckpt: Path) -> None:
        """After resuming from ``ckpt``: checkpoints of later steps come of steps this resume trains again
        (an interrupted attempt's ``best``, milestones or periodic checkpoints; a run resumed with other settings
        may never write them again) and go. ``best`` is then the best up to here: the resume checkpoint itself
        when its validation was the best, else none until a validation beats it (its checkpoint is gone)."""
        later = []
        for c in self.run.checkpoints():
            try:
                step = int(read_trainer_info(c)["step"])
            except (CheckpointError, KeyError, ValueError):
                continue  # unreadable: not ours to judge (a resume never reads it)
            if step > self.step and c.resolve() != ckpt.resolve():
                shutil.rmtree(c)
                later.append(f"{c.name} (step {step})")
        if not later:
            return
        log.warning("removed checkpoints of steps after the resume's step %d, which this run trains again: %s",
                    self.step, ", ".join(later))
        best = self.run.ckpt / "best"
        if best.exists():
            return
        at_resume = self.valid_log.last_record()
        if at_resume is not None and at_resume.get("step") == self.step and \
                at_resume.get(self.task.best_metric) == self.best:
            self.run.copy(ckpt, "best")
            log.warning("checkpoints/best is the resume checkpoint %s again (the best validation up to step %d)",
                        ckpt.name, self.step)
        elif math.isfinite(self.best) and self.cfg.keep_best:
            log.warning("the best validation up to step %d (%.4g) has no checkpoint left: checkpoints/best "
                        "returns with the next validation below it", self.step, self.best)

    # ------------------------------------------------------------------ one step
    def train_step(self, batches: Iterator[Any]) -> dict[str, float]:
        """Accumulate ``accumulation`` micro-batches, reduce the statistics once, normalise once, update."""
        cfg, d, task = self.cfg, self.d, self.task
        lr = lr_at(self.step, self.peak_lr, cfg.max_steps, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        task.start_step(self.step)
        self.net.train()
        stats = StepStats(d.device)
        data_wait = 0.0
        for micro in range(self.accumulation):
            t0 = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - t0
            # randomness keyed by the global micro-batch index j, which also fixes the data it sees
            # (rank r's k-th batch is global batch k·W + r), so W ranks × A micro-batches draw exactly
            # what 1 rank × W·A micro-batches draw
            j = micro * d.world_size + d.rank
            gen, host_gen = seed_micro_batch(cfg.seed, self.step, j, d.device)
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are no longer read
            try:
                with D.no_sync(self.net, micro < self.accumulation - 1):
                    with autocast(cfg.precision, d.device):  # the forward only: the backward runs in the dtypes
                        loss, named = task.micro_step(self.net, batch, gen, host_gen)  # the forward chose, and
                    self.scaler.scale(loss).backward()  # custom backwards (fp32 statistics) stay fp32
            except RuntimeError as e:  # torch.OutOfMemoryError, or cuDNN / cuBLAS failing to allocate
                if not out_of_memory(e):
                    raise
                raise RuntimeError(
                    f"out of memory on {d.device} with device_seconds={cfg.device_seconds:g}: lower device_seconds "
                    f"(accumulation then rises to keep batch_seconds={cfg.batch_seconds:g}) and --resume") from e
            real, padded = batch.samples()
            stats.add(loss=loss, real_samples=real, padded_samples=padded, utterances=len(batch), micro_batches=1,
                      **named)
        stats.add(**{f"stop_{s.name}": float(self.signal_received == s) for s in STOP_ORDER})
        tot = stats.reduce(d)
        return self._update(tot, lr, data_wait)

    def _update(self, tot: dict[str, Any], lr: float, data_wait: float) -> dict[str, float]:
        """Apply the step from its reduced statistics; count it (too many non-finite steps in a row stop the run:
        ``_steps``, once the step's record is in the interval's sums)."""
        self.task.before_update()
        grad_norm, outcome = apply_update(
            self.optimizer, self.scaler, self.params, loss=tot["loss"],
            factor=self.d.world_size / self.task.denominator(tot), clip_norm=self.cfg.optim.clip_norm,
        )  # fmt: skip
        if outcome != "overflow":  # an fp16 overflow updated nothing: no step (fairseq's num_updates), so the
            self.step += 1  # schedule, the freeze and what falls due wait for the next batch (at this step's seeds)
        self._count(outcome)  # its messages name the step as the logs do: the one just taken, or to be taken again
        self.hours_real += tot["real_samples"] / SAMPLE_RATE / 3600
        self.hours_padded += tot["padded_samples"] / SAMPLE_RATE / 3600
        self.agree_stop({s: tot[f"stop_{s.name}"] for s in STOP_ORDER})
        rec = {
            # an overflow (the fp16 scaler's search, normal) leaves grad_norm out of the interval's mean; a
            # non-finite step keeps its NaN in, on purpose
            "lr": lr, "grad_norm": 0.0 if outcome == "overflow" else grad_norm, "finite": float(outcome == "ok"),
            "overflow": float(outcome == "overflow"), "real_seconds": tot["real_samples"] / SAMPLE_RATE,
            "padded_seconds": tot["padded_samples"] / SAMPLE_RATE, "utterances": tot["utterances"],
            "data_wait": data_wait,
            "loss_scale": float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0,
            **self.task.step_record(tot),
        }  # fmt: skip
        return rec

    def _stop_nonfinite(self, meter: Meter, bar: tqdm) -> None:
        """``max_nan_steps`` non-finite steps in a row: the interval they are in is logged (its record, with the
        NaN loss and ``skipped_steps``, is the one that says why; the stop had come before it was written), a
        checkpoint written, and the run stopped."""
        self._log_interval(meter, bar)
        meter.reset()
        self.nonfinite_stop = True  # recorded: a resume reads how this checkpoint came to be, whatever its config
        self.save(f"step-{self.step:07d}")
        raise TrainingStopped(
            f"{self.nan_in_a_row} non-finite steps in a row at step {self.step}: stopped. A checkpoint was "
            f"written; lower optim.lr, use precision=fp32 or bf16, or set optim.clip_norm"
        )

    def _count(self, outcome: str) -> None:
        if outcome == "ok":
            self.nan_in_a_row = 0
        elif outcome == "overflow":
            self.overflow_steps += 1
            if self.d.is_main:
                log.info("step %d: fp16 gradient overflow; update skipped, loss scale lowered to %g; the step is taken "
                     "again with the next batch", self.step + 1, self.scaler.get_scale())
        else:
            self.nan_steps += 1
            self.nan_in_a_row += 1
            if self.d.is_main:  # every rank counts (they agree: the statistics are reduced); one says it
                log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row, %d in all)",
                            self.step, self.nan_in_a_row, self.nan_steps)

    # ------------------------------------------------------------------ logs and validation
    def _log_interval(self, meter: Meter, bar: tqdm) -> None:
        s, steps = meter.sums, meter.sums["steps"]
        seconds = max(s["train_seconds"], 1e-9)
        bad, empty = self.left_out()  # a collective: every rank takes part; the rest is the main rank's work
        if not self.d.is_main:
            return
        rec: dict[str, Any] = {
            "step": self.step, "hours_padded": self.hours_padded, "hours_real": self.hours_real,
            **self.task.interval_record(s, steps),
            "grad_norm": s["grad_norm"] / (steps - s["overflow"]) if steps > s["overflow"] else math.nan,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss_scale": s["loss_scale"] / steps, "audio_seconds_per_second": s["real_seconds"] / seconds,
            "padded_seconds_per_second": s["padded_seconds"] / seconds, "data_wait_fraction": s["data_wait"] / seconds,
            # a skipped non-finite step leaves the interval's means non-finite on purpose; this counts them
            "skipped_steps": steps - s["finite"] - s["overflow"], "overflow_steps": s["overflow"],
            "distance_from_init": distance_from(self.model, self._init_params), "bad_files": bad,
            "empty_batches": empty,
        }  # fmt: skip
        self.health.check(self.step, rec)
        self.train_log.write(rec)
        self.tb.write("train", rec, self.step)
        self.tracking.log("train", rec, self.step)
        bar.set_postfix(self.task.postfix(rec, self.last_valid))

    def _validate_and_keep_best(self) -> None:
        found = self.task.validate()
        if found is None:
            return
        rec = {"step": self.step, "hours_padded": self.hours_padded, "hours_real": self.hours_real, **found}
        self.last_valid = rec[self.task.best_metric]
        self.valid_log.write(rec)
        self.tb.write("valid", rec, self.step)
        self.tracking.log("valid", rec, self.step)
        if self.d.is_main:
            log.info("%s", self.task.describe_validation(self.step, rec))
        if self.cfg.keep_best and self.last_valid < self.best:
            self.best = self.last_valid
            self.save("best", make_latest=False)

    def left_out(self) -> tuple[int, int]:
        """Distinct unreadable files left out so far (``data.skip_bad``; a file may fall to several ranks in
        turn) and batches with no loadable audio, over every rank (a collective: every rank logs each interval
        and ends ``fit``)."""
        gathered = D.all_gather_object((sorted(self.loader.bad_ids), self.loader.empty_batches), self.d)
        return len({i for ids, _ in gathered for i in ids}), sum(n for _, n in gathered)  # type: ignore[misc]

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum: int, _frame: Any) -> None:
        """A stop signal: checkpoint and stop after the step every rank shares it in. Ctrl-C (SIGINT) does the
        same the first time — it stopped at once, losing up to ``ckpt_every`` steps — and aborts at once the
        second time (KeyboardInterrupt: status 130), as it does outside the training loop."""
        if signum == signal.SIGINT and self.signal_received:
            raise KeyboardInterrupt
        self.signal_received = max(self.signal_received, signum, key=stop_rank)  # a SIGUSR1 after a SIGTERM: SIGTERM
        name = signal.Signals(signum).name
        if self.stop_signal:  # handed on by fit if it outranks the stop's (hand_on_signal)
            log.warning("received %s while the run stops by %s", name, self.stopped_by())
        elif self.step + 1 >= self.cfg.max_steps:  # shared in the last step at the earliest: it stops nothing
            log.warning("received %s as the run ends: the run finishes (its last step, validation and checkpoint); "
                        "the signal stops nothing in training", name)
        elif signum == signal.SIGINT:
            log.warning("Ctrl-C (SIGINT): will checkpoint and stop after the step that shares it with every rank; "
                        "Ctrl-C again stops at once (the steps since the last checkpoint are lost)")
        else:
            log.warning("received %s: will checkpoint and stop after the step that shares it with every rank", name)

    def agree_stop(self, signalled: dict[int, float]) -> None:
        """Called with the all-reduced count of ranks that received each stop signal: every rank then stops after
        the same step, by the same signal, the highest received (``STOP_ORDER``). A rank's own flag is never
        enough: a signal that lands on one rank after the step's all-reduce and on another before it would leave
        them a step apart, one waiting in the checkpoint's barrier and the other in the next step's gradient
        all-reduce; and a rank's own signal had it record another than its peers'. A signal shared in the last step
        stops nothing: the run has trained every step and ends as a finished one (its final checkpoint had
        recorded it as stopped, ``stopped_by``, for good: status 4, a model card saying "not the run's end", a
        study's torchrun stage stopping on every rerun); every rank counts the same step, so they agree. ``fit``
        then hands it on."""
        shared = [s for s in STOP_ORDER if signalled.get(s, 0) > 0]
        if shared and not self.stop_signal and self.step < self.cfg.max_steps:
            self.stop_signal = shared[-1]

    def agree_signal_at_end(self) -> None:
        """The run's last agreement (a collective, once the last checkpoint is written): every rank takes the
        highest signal any rank has received by now (``STOP_ORDER``), the one ``hand_on_signal`` hands on. A
        SIGTERM that reached rank 1 alone after the ranks had agreed on a SIGUSR1 stop (during its checkpoint)
        had been handed on by rank 1 alone, and rank 0, which a Slurm job's requeue is left to, requeued a
        cancelled job; a signal in the last step that reached rank 1 alone had not requeued the job at all."""
        received: list[int] = D.all_gather_object(self.signal_received, self.d)  # type: ignore[assignment]
        self.signal_at_end = max(received, key=stop_rank)

    def hand_on_signal(self) -> None:
        """At the end of ``fit``, outside its handlers and the process group: a signal that stopped nothing (it
        came in the run's last step, or during the end's validation and checkpoint) or that outranks the one the
        run stopped by (a SIGTERM during a SIGUSR1's checkpoint), on any rank (``agree_signal_at_end``), is raised
        again, to the handler in force outside training:
        submitit's requeues its job (whose stage then finds the run finished), a study's pool worker stops its
        job. It had been swallowed: a fine-tuning's job went on to its evaluation with only ``signal_delay_s``
        left, and no requeue. Under a signal's default action (the command line, torchrun's ranks) nothing is
        raised: the finished run ends as one (status 0), as it did; nor for a Ctrl-C, which aborts outside training."""
        signum = self.signal_at_end
        if signum not in STOP_SIGNALS or stop_rank(signum) <= stop_rank(self.stop_signal):
            return  # a Ctrl-C in the last step: the run finishes, as it did
        name = signal.Signals(signum).name
        if callable(signal.getsignal(signum)):
            log.warning("%s%s stopped nothing in training (%s): handing it on", name,
                        " (received by another rank)" * (signum != self.signal_received),
                        f"the run stopped by {self.stopped_by()}" if self.stop_signal else "the run has finished")
            signal.raise_signal(signum)
        elif not self.stop_signal:
            log.warning("%s came as the run ended: the run has finished, nothing was stopped", name)

    def after_step(self) -> None:
        self.task.after_step(self)

    def announce(self) -> None:
        cfg = self.cfg
        log.info("%s: %s parameters to train; %s; peak lr %.3g (%s scaling), %d steps", self.task.name,
                 f"{count_parameters(self.model):,}", self.budget.describe(), self.peak_lr, cfg.optim.lr_scaling,
                 cfg.max_steps)
        if self.loader.skipped:
            log.warning("%d utterances cannot be batched and are left out: %s", self.loader.skipped,
                        self.loader.sampler.skipped_reasons)
        self.task.announce()

    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` (or a stop); the summary. A signal that stopped nothing is then handed on
        (``hand_on_signal``)."""
        summary = self._train()
        self.hand_on_signal()
        return summary

    def _train(self) -> dict[str, Any]:
        """``fit()`` before its hand-on: the steps, the stop's checkpoint or the end's, and the run's last
        agreement (``agree_signal_at_end``)."""
        cfg = self.cfg
        if self.d.is_main:
            self.announce()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.d.is_main, unit="step",
                   dynamic_ncols=True)
        with stop_signals(self._on_signal):  # to the end of the last agreement: a signal until then is shared
            try:
                self._steps(bar)
            finally:
                bar.close()
                self.close()
            if self.stop_signal and self.d.is_main:
                log.warning("stopped by %s at step %d; checkpoint written; continue with --resume",
                            self.stopped_by(), self.step)
            summary = {k: v for k, v in self.progress_info().items()
                       if k not in ("recipe", "layout", *MANIFEST_RECORDS, "log_interval", "health")}
            bad, empty = self.left_out()
            self.agree_signal_at_end()
        return {**summary, "bad_files": bad, "empty_batches": empty, "unbatchable": self.loader.skipped}

    def _steps(self, bar: tqdm) -> None:
        cfg, meter, batches = self.cfg, self.meter, iter(self.loader)
        if self.step == cfg.max_steps and self.resumed_stopped:  # resumed where the non-finite stop was
            raise TrainingStopped(f"{self.nan_in_a_row} non-finite steps in a row at step {self.step}, its last: the "
                                  "run stopped there (its checkpoint says so) and has nothing left to train; a run "
                                  "with a lower optim.lr (or precision=fp32 or bf16, or optim.clip_norm) is another "
                                  "run")
        while self.step < cfg.max_steps:
            t0, before = time.perf_counter(), self.step
            rec = self.train_step(batches)
            # training time only (validation and checkpoints are not: throughput, data wait), kept in the sums
            meter.add(steps=1, train_seconds=time.perf_counter() - t0, **rec)
            if self.nan_in_a_row >= cfg.max_nan_steps:
                self._stop_nonfinite(meter, bar)
            if self.step == before:  # an fp16 overflow: no step taken, nothing falls due (in the next log's sums)
                if self.stop_signal:
                    break
                continue
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self._log_interval(meter, bar)
                meter.reset()
            if cfg.valid_every > 0 and self.step % cfg.valid_every == 0:
                self._validate_and_keep_best()
            self.after_step()
            if self.stop_signal:
                break
            if self.step % cfg.ckpt_every == 0 and self.step < cfg.max_steps:
                self.save(f"step-{self.step:07d}")
        if self.resumed_finished:
            return  # nothing trained: its end was validated and saved
        if self.step == cfg.max_steps and (
                cfg.valid_every > 0 and self.step % cfg.valid_every
                or cfg.valid_every <= 0 and self.task.validate_at_end):
            self._validate_and_keep_best()
        self.save(f"step-{self.step:07d}")

    def fit_and_leave(self) -> dict[str, Any]:
        """``fit()``, leaving the process group (together after a finished run, at once after an error) before
        its hand-on."""
        summary = None
        try:
            summary = self._train()
        finally:
            D.teardown(finished=summary is not None)
        self.hand_on_signal()  # once out of the process group: a handler that exits (submitit's, requeuing the
        return summary  # job) had left the other ranks' teardown barrier failing ("Connection closed by peer")


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _json_sum(x: float) -> float | str:
    """A log interval's sum as ``trainer.json`` keeps it (strict JSON): a non-finite one as ``"inf"``, ``"-inf"``
    or ``"nan"``, which ``_float`` reads back as itself (null, which it read as NaN, had made an infinite loss
    NaN on resume)."""
    return x if math.isfinite(x) else str(x)


def _float(x: Any, default: float) -> float:
    """A number of ``trainer.json``: ``default`` for null; ``"inf"``, ``"-inf"``, ``"nan"`` (``_json_sum``) as such."""
    return default if x is None else float(x)


def _mismatch(ckpt: Path, segment: dict[str, Any] | None, what: str) -> ValueError:
    """The error for a checkpoint whose model or optimizer state does not fit the run resumed: with the recipe
    changes that caused it (``--allow-changes``) and the way out."""
    changes = (segment or {}).get("recipe_changes")
    if not changes:
        return StateMismatch(f"{ckpt}: {what.splitlines()[0]}")
    return ValueError(f"{ckpt}: cannot continue with these changes ({describe(changes)}): {what.splitlines()[0]}. "
                      "A change of architecture or of what trains (freeze_*) needs a new run: give this checkpoint "
                      "as its init")


@contextmanager
def writing(root: Path) -> Iterator[None]:
    """Folder set-up whose OS errors (read-only, no permission, full disk) become one line naming the folder."""
    try:
        yield
    except OSError as e:
        raise RuntimeError(f"{root}: cannot write the run folder ({e.strerror or e}); nothing was trained; "
                           "choose a writable --out (or free space)") from e


def print_config(cfg: TrainingConfig, world_size: int | None = None) -> int:
    """``--print-config``: ``cfg`` as YAML on stdout, which as a config file trains the same recipe, and on the log
    the batch it makes on ``world_size`` devices (default: WORLD_SIZE, as torchrun sets it, else 1), the peak lr,
    the steps and the audio they see. Nothing is trained or written; a batch no device layout can make is refused
    as the run would refuse it."""
    sys.stdout.write(config_yaml(cfg))
    sys.stdout.flush()
    world = world_size if world_size is not None else D.launched_processes()
    if cfg.device_seconds == "auto":
        log.info("batch %g s on %d device(s); device_seconds=auto: the micro-batch, and so the accumulation, is "
                 "found on the device when the run starts", cfg.batch_seconds, world)
    else:
        log.info("%s", cfg.budget(world).describe())
    o = cfg.optim
    scaling = "optim.lr" if o.lr_scaling == "none" else \
        f"optim.lr {o.lr:g} at {o.reference_batch_seconds:g} s, {o.lr_scaling} scaling"
    log.info("peak lr %.3g (%s); %d steps: %s h of audio (batch × steps, padded, at most)", cfg.effective_lr(),
             scaling, cfg.max_steps, f"{nominal_hours(cfg.batch_seconds, cfg.max_steps):,.2f}")
    return 0


def train_command(task: Task, out_dir: str | Path, *, resume: bool, allow_changes: bool = False,
                  show: tuple[str, ...], start_if_new: bool = False) -> int:
    """What ``earful pretrain`` and ``earful finetune`` run: train, log the summary's ``show`` keys; the exit
    status is 0 when finished, ``EXIT_NONFINITE`` or ``EXIT_STOPPED`` when stopped with a checkpoint.
    ``start_if_new`` (``--resume-or-start``): resume, or start the run in a folder that holds none."""
    try:
        trainer = Trainer(task, out_dir, resume=resume or start_if_new, allow_changes=allow_changes,
                          start_if_new=start_if_new)
        summary = trainer.fit_and_leave()
    except TrainingStopped as e:
        if trainer.d.is_main:  # every rank stops (the count is reduced): one says why
            log.error("%s", e)
        return EXIT_NONFINITE
    if trainer.d.is_main:
        log.info("done: %s", json.dumps({k: summary[k] for k in show}))
    return EXIT_STOPPED if summary["stopped_by"] else 0
