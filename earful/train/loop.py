"""The step loop shared by the pre-training and fine-tuning trainers.

A trainer (``earful/train/pretrain.py``, ``earful/finetune/trainer.py``) knows how to take one optimizer
step, log an interval, validate and save; :class:`StepLoop` runs them in order: step, log every
``log_every`` steps, validate every ``valid_every``, checkpoint every ``ckpt_every``, stop cleanly after
the current step on SIGTERM / SIGUSR1 (checkpoint written, ``--resume`` continues), and always write a
final checkpoint.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from earful.train import distributed as D
from earful.train.monitor import Meter

log = logging.getLogger(__name__)


@contextmanager
def stop_signals(handler: Any) -> Iterator[None]:
    """SIGTERM and SIGUSR1 call ``handler`` (which asks the loop to checkpoint and stop) while inside;
    the previous handlers come back on exit. Outside the main thread signals cannot be caught: no-op."""
    old = {}
    for s in (signal.SIGTERM, signal.SIGUSR1):
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class StepLoop:
    """Mixin giving a trainer ``fit()``. The trainer provides ``cfg`` (``max_steps``, ``log_every``,
    ``valid_every``, ``ckpt_every``), ``d`` (the distributed context), ``step``, ``loader``, ``stop_signal``
    and the methods below that raise ``NotImplementedError``."""

    cfg: Any
    d: Any
    step: int
    loader: Any
    accum: int
    peak_lr: float
    hours_real: float
    hours_padded: float
    nan_steps: int
    nan_in_a_row: int
    overflow_steps: int
    signal_received: int = 0  # set by the signal handler, on this rank only
    stop_signal: int = 0  # set by agree_stop when every rank knows: the signal, or -1 for another rank's
    #: validate after the last step even when ``valid_every <= 0`` (fine-tuning: the dev WER picks "best")
    validate_at_end: bool = False

    # ------------------------------------------------------------------ what a trainer provides
    def announce(self) -> None:
        """Log what is about to run (called on the main rank only)."""

    def train_step(self, batches: Iterator[Any]) -> dict[str, float]:
        raise NotImplementedError

    def _log_interval(self, meter: Meter, seconds: float, bar: tqdm) -> None:
        raise NotImplementedError

    def _validate_and_keep_best(self) -> None:
        raise NotImplementedError

    def save(self, name: str, *, make_latest: bool = True) -> None:
        raise NotImplementedError

    def _trainer_info(self) -> dict[str, Any]:
        """What trainer.json records: ``progress_info()`` and the trainer's own."""
        raise NotImplementedError

    # ------------------------------------------------------------------ progress, checkpointed by both trainers
    def progress_info(self) -> dict[str, Any]:
        return {
            "step": self.step, "hours_real": self.hours_real, "hours_padded": self.hours_padded,
            "epoch": self.loader.epoch, "nan_steps": self.nan_steps, "nan_in_a_row": self.nan_in_a_row,
            "overflow_steps": self.overflow_steps, "world_size": self.d.world_size, "accumulation": self.accum,
            "batch_seconds": self.cfg.batch_seconds, "lr": self.peak_lr,
        }  # fmt: skip

    def restore_progress(self, info: dict[str, Any]) -> None:
        """The inverse of ``progress_info`` (counters missing from older checkpoints start at 0)."""
        self.step = int(info["step"])
        self.hours_real, self.hours_padded = float(info["hours_real"]), float(info["hours_padded"])
        self.nan_steps = int(info.get("nan_steps", 0))
        self.nan_in_a_row = int(info.get("nan_in_a_row", 0))
        self.overflow_steps = int(info.get("overflow_steps", 0))

    def after_step(self) -> None:
        """Called after each step's logging and validation (pre-training: hours-seen milestones)."""

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signal_received = signum
        log.warning("received %s: will checkpoint and stop after the step that shares it with every rank",
                    signal.Signals(signum).name)

    def bad_files(self) -> int:
        """Distinct unreadable files left out so far (``data.skip_bad``), over every rank: a file may fall to
        several ranks in turn (a collective: every rank logs each interval and ends ``fit``)."""
        mine = (sorted(self.loader.bad_ids), self.loader.bad_earlier)
        gathered = D.all_gather_object(mine, self.d)
        return len({i for ids, _ in gathered for i in ids}) + sum(e for _, e in gathered)  # type: ignore[misc]

    def agree_stop(self, signalled_ranks: float) -> None:
        """Called by ``train_step`` with the all-reduced sum of ``signal_received > 0`` over the ranks: every
        rank then stops after the same step. A rank's own flag is never enough: a signal that lands on one
        rank after the step's all-reduce and on another before it would leave them a step apart, one
        waiting in the checkpoint's barrier and the other in the next step's gradient all-reduce."""
        if signalled_ranks > 0 and not self.stop_signal:
            self.stop_signal = self.signal_received or -1

    def fit_and_leave(self) -> dict[str, Any]:
        """``fit()``, then leave the process group (together after a finished run, at once after an error)."""
        summary = None
        try:
            summary = self.fit()
            return summary
        finally:
            D.teardown(finished=summary is not None)

    def fit(self) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        if d.is_main:
            self.announce()
            if self.loader.skipped:
                log.warning("%d utterances cannot be batched and are left out: %s", self.loader.skipped,
                            self.loader.sampler.skipped_reasons)
        meter = Meter()
        t_last = time.perf_counter()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not d.is_main, unit="step", dynamic_ncols=True)
        batches = iter(self.loader)
        stopped_by = ""
        with stop_signals(self._on_signal):
            try:
                while self.step < cfg.max_steps:
                    rec = self.train_step(batches)
                    meter.add(steps=1, **rec)
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        now = time.perf_counter()
                        self._log_interval(meter, now - t_last, bar)
                        meter.reset()
                        t_last = now
                    if cfg.valid_every > 0 and self.step % cfg.valid_every == 0:
                        self._validate_and_keep_best()
                    self.after_step()
                    if self.stop_signal:
                        stopped_by = (signal.Signals(self.stop_signal).name if self.stop_signal > 0
                                      else "a signal to another rank")
                        break
                    if self.step % cfg.ckpt_every == 0 and self.step < cfg.max_steps:
                        self.save(f"step-{self.step:07d}")
                if self.step == cfg.max_steps and (
                        cfg.valid_every > 0 and self.step % cfg.valid_every
                        or cfg.valid_every <= 0 and self.validate_at_end):
                    self._validate_and_keep_best()
                self.save(f"step-{self.step:07d}")
            finally:
                bar.close()
        if stopped_by:
            log.warning("stopped by %s at step %d; checkpoint written; continue with --resume", stopped_by, self.step)
        return {**self._trainer_info(), "stopped_by": stopped_by, "bad_files": self.bad_files(),
                "unbatchable": self.loader.skipped}  # fmt: skip
