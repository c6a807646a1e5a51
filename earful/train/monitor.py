"""Monitoring: JSONL logs and TensorBoard (experiment trackers: ``earful/train/tracking.py``), codebook
statistics, health warnings.

Health checks (thresholds in ``HealthConfig``, see docs/monitoring.md), none before ``after_steps``:

* codebook collapse — hard perplexity of a group ≤ ``collapse_perplexity`` (one or two codes used);
* accuracy stuck at chance — within ``stuck_accuracy_margin`` of 1/(K+1);
* fake accuracy — accuracy ≥ ``saturated_accuracy``: with a collapsed codebook every target is
  identical to its distractors, so they are all masked out and the task is trivial;
* exploding gradients — grad norm above ``grad_norm_factor`` × the running median of the logged ones.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import torch

from earful.atomic import atomic_write_lines
from earful.config import ConfigError
from earful.train.config import HealthConfig
from earful.train.tracking import scalars

log = logging.getLogger(__name__)


class LogWriteError(RuntimeError):
    """A run's log (``train.jsonl``, ``valid.jsonl``, TensorBoard's events) could not be written: a full disk, say."""


def log_write_error(path: Path, e: OSError) -> LogWriteError:
    """The error for a log write that failed with ``e``, naming the log (an OSError of a write or a flush names
    no file: a full disk was "[Errno 28] No space left on device" alone) and the way on: the checkpoints are
    untouched, and ``--resume`` logs the steps since the latest again (a line cut short is dropped)."""
    return LogWriteError(f"{path}: cannot write the run's log ({e.strerror or e}); the run stopped, its latest "
                         "checkpoint kept: free space (or fix the file system) and continue with --resume")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (none where it is absent). A line that is not a JSON object is a
    ValueError naming the file and the line (it was json's message alone, the file unnamed)."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: not a record (a JSON object), but {type(record).__name__}")
        records.append(record)
    return records


class JsonlLog:
    """Append-only JSONL, one record a line, flushed at once (a killed run keeps its history)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """On resume: drop records past the checkpoint's step (they will be logged again)."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        keep = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if number == len(lines):  # a write cut short by a kill: its step is logged again
                    log.warning("%s: its last line is incomplete (a write cut short); dropped", self.path)
                    continue
                raise ValueError(f"{self.path}: line {number} is not JSON ({e}); mend or remove it to resume") from None
            if record.get("step", 0) <= step:
                keep.append(line)
        atomic_write_lines(self.path, keep)

    def last_record(self) -> dict[str, Any] | None:
        """The last record (after ``truncate_after``, the last at or before a resume's step), or None."""
        if not self.enabled or not self.path.exists():
            return None
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise log_write_error(self.path, e) from e


class TensorBoard:
    """Scalars under ``RUN/tb`` (``tensorboard`` is one of earful's dependencies: the default writes them)."""

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        """Checks TensorBoard imports now; the event file is opened with the first record, so that a start that
        fails before training (a resume refused after the trainer was built) leaves no file in the run."""
        self.log_dir, self.enabled = log_dir, enabled
        self._writer: Any = None
        # a resumed run's first step: the events an interrupted attempt wrote from it on are dropped as the writer
        # opens (they had stood beside the resumed run's, two points a step, as train.jsonl is cut back)
        self.purge_step: int | None = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError as e:  # an install without earful's dependencies
                raise ConfigError(f"tensorboard=true, but TensorBoard cannot be imported ({e}): pip install "
                                  "tensorboard, or set tensorboard=false") from None

    @property
    def writer(self) -> Any:
        """The ``SummaryWriter`` (None when disabled), opened on first use."""
        if self.enabled and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    def write(self, prefix: str, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        try:
            for tag, value in scalars(prefix, record).items():  # what the experiment trackers log
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()
        except OSError as e:
            raise log_write_error(self.log_dir, e) from e


class Meter:
    """Sums over a log interval (the task's ``interval_record`` divides them by the interval's steps)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)

    def add(self, **kw: float) -> None:
        for k, v in kw.items():
            self.sums[k] += float(v)

    def reset(self) -> None:
        self.sums.clear()


@torch.no_grad()
def codeword_similarity(codevectors: torch.Tensor, groups: int) -> list[dict[str, float]]:
    """Pairwise cosine similarity of the codewords within each group: mean / min / max (paper §6.4)."""
    book = codevectors.detach().float().view(groups, -1, codevectors.shape[-1])  # (G, V, d)
    out = []
    for g in range(groups):
        x = torch.nn.functional.normalize(book[g], dim=-1)
        sim = x @ x.T
        off = sim[~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)]
        out.append({"mean": off.mean().item(), "min": off.min().item(), "max": off.max().item()})
    return out


@torch.no_grad()
def distance_from(model: torch.nn.Module, init: dict[str, torch.Tensor]) -> float:
    total = 0.0
    for name, p in model.named_parameters():
        if name in init:
            total += (p.detach().float().cpu() - init[name]).pow(2).sum().item()
    return math.sqrt(total)


# the exploding-gradient check's running median: the grad norms (each an interval's mean) of the last GRAD_WINDOW
# logged records (log intervals, one every log_every steps), judged once it holds GRAD_LEAST of them
GRAD_WINDOW = 200
GRAD_LEAST = 20


class Health:
    """Turns logged statistics into warnings, none before ``after_steps``; each kind is reported once per run until
    it clears. ``check`` takes one logged record (a log interval)."""

    def __init__(self, cfg: HealthConfig, chance_accuracy: float | None) -> None:
        """``chance_accuracy``: what guessing scores (pre-training: 1/(K+1) with K distractors), or None when
        the task logs no accuracy."""
        self.cfg = cfg
        self.chance = chance_accuracy
        self.norms: deque[float] = deque(maxlen=GRAD_WINDOW)  # collected before after_steps too
        self.active: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (``trainer.json``): a resumed run's checks see what an uninterrupted run's do
        (they had started blind, the running median empty until GRAD_LEAST new records, and warned again of what
        had been said)."""
        return {"norms": list(self.norms), "active": sorted(self.active)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms.clear()
        self.norms.extend(float(x) for x in state.get("norms", []))
        self.active = {str(k) for k in state.get("active", [])}

    def check(self, step: int, rec: dict[str, Any]) -> list[str]:
        warnings: dict[str, str] = {}
        gn = rec.get("grad_norm")
        if gn is not None and math.isfinite(gn):
            if (step >= self.cfg.after_steps and len(self.norms) >= GRAD_LEAST
                    and gn > self.cfg.grad_norm_factor * statistics.median(self.norms)):
                median = statistics.median(self.norms)
                warnings["grad"] = (f"exploding gradient: norm {gn:.3g} > {self.cfg.grad_norm_factor:g} × running "
                                    f"median {median:.3g}; lower optim.lr or set optim.clip_norm")
            self.norms.append(gn)
        if step >= self.cfg.after_steps:
            ppl = [v for k, v in rec.items() if k.startswith("ppl_hard_g")]
            if ppl and min(ppl) <= self.cfg.collapse_perplexity:
                shown = [round(p, 2) for p in ppl]
                warnings["collapse"] = (f"codebook collapse: hard perplexity per group {shown} (≤ "
                                        f"{self.cfg.collapse_perplexity:g}); raise model.diversity_weight or lower lr")
            acc = rec.get("accuracy")
            if acc is not None and self.chance is not None:
                if abs(acc - self.chance) <= self.cfg.stuck_accuracy_margin:
                    warnings["chance"] = (f"contrastive accuracy {acc:.3f} is at chance ({self.chance:.3f}) after "
                                          f"{step} steps: the model is not learning")
                elif acc >= self.cfg.saturated_accuracy:
                    warnings["saturated"] = (f"contrastive accuracy {acc:.3f} ≈ 1: targets are trivially separable "
                                             "(collapsed codebook?)")
        out = []
        for kind, msg in warnings.items():
            if kind not in self.active:
                log.warning("health: step %d: %s", step, msg)
                out.append(msg)
        self.active = set(warnings)
        return out
