"""``device_seconds: auto``: the largest micro-batch a GPU holds, found by trial (as NeMo's OOMptimizer does).

Trial micro-batches are the worst case the sampler can deal: the trial's seconds in as few utterances as the
longest admitted length allows (the crop, else ``max_seconds``, else 30 s): attention grows with their length.
Where the task pads its batches (fine-tuning; pre-training with ``data.padding``) one of them is shorter, so
that the trial runs the padded path (attention with a key mask, the CNN's masked normalisation).
Each trial runs the task's forward and backward (``Task.probe_loss``) under the run's precision; an
out-of-memory error means too large. The search
doubles from 1 s until a trial fails or the step's share is reached (no accumulation needed), then bisects to
5 %; the result keeps a 10 % margin for fragmentation and the optimizer's first step. Accumulation is then
derived from it as from any ``device_seconds``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from earful.data.budget import SAMPLE_RATE
from earful.train import distributed as D
from earful.train.config import TrainingConfig
from earful.train.step import autocast
from earful.train.task import Task

log = logging.getLogger(__name__)

MARGIN = 0.9  # of the largest trial that fitted
START_SECONDS = 1.0  # the first trial
PRECISION = 0.05  # relative: the bisection stops when the bracket is this narrow


def find_device_seconds(fits: Callable[[float], bool], upper: float) -> float:
    """The largest seconds ≤ ``upper`` for which ``fits`` holds (doubling from ``START_SECONDS``, then bisection to
    ``PRECISION`` relative), times ``MARGIN``. Raises when not even a quarter of the first trial fits."""
    lo, hi = 0.0, math.inf
    s = min(START_SECONDS, upper)
    while s <= upper:  # double until a trial fails or the step's share fits
        if not fits(s):
            hi = s
            break
        lo = s
        if s == upper:  # the step's share fits: keep it if it fits with the margin too
            if fits(upper / MARGIN):
                return upper
            hi = upper / MARGIN
            break
        s = min(2 * s, upper)
    if lo == 0.0:
        s = hi / 4
        if not fits(s):
            raise RuntimeError(f"device_seconds=auto: not even {s:g} s of audio fits on this device")
        lo = s
    while hi - lo > PRECISION * lo:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return MARGIN * lo


def utterance_seconds(cfg: TrainingConfig) -> float:
    """The longest utterance a micro-batch may hold: the crop, else the length limit, else 30 s."""
    limits = cfg.data.limits()
    return limits.get("crop_seconds") or limits.get("max_seconds") or 30.0


@contextmanager
def every_layer(model: torch.nn.Module) -> Iterator[None]:
    """LayerDrop off inside (every transformer layer runs, as in a micro-batch that drops none): a trial that
    dropped layers held less than the worst case and could pass a size that training then overflows."""
    saved = [(m, m.layerdrop) for m in model.modules() if isinstance(getattr(m, "layerdrop", None), float)]
    for m, _ in saved:
        m.layerdrop = 0.0
    try:
        yield
    finally:
        for m, p in saved:
            m.layerdrop = p


def trial(task: Task, cfg: TrainingConfig, d: D.Dist, seconds: float) -> bool:
    """One forward and backward of a worst-case micro-batch of ``seconds`` padded audio; False on OOM. For a
    task whose batches are padded, the last utterance is 0.1 s short, so that the trial takes the padded path
    (key masks, the CNN's masked normalisation) as training will. LayerDrop is off: every layer runs."""
    n = max(1, math.ceil(seconds / utterance_seconds(cfg) - 1e-9))  # as few, as long utterances as admitted
    wave = torch.randn(n, round(seconds / n * SAMPLE_RATE), device=d.device) * 0.1  # (batch, samples): `seconds`
    lengths = None
    if task.pads_batches():
        lengths = torch.full((n,), wave.shape[1], device=d.device)
        lengths[-1] = max(wave.shape[1] // 2, wave.shape[1] - SAMPLE_RATE // 10)  # 0.1 s: frames at any stride
    loss = None
    try:
        with every_layer(task.model), autocast(cfg.precision, d.device):
            loss = task.probe_loss(wave, lengths)
        loss.backward()
        return True
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not out_of_memory(e):
            raise
        log.debug("device_seconds=auto: %g s does not fit (%s)", seconds, (str(e).splitlines() or [repr(e)])[0])
        return False
    finally:
        del loss  # the graph of a backward that ran out of memory: freed before the cache is emptied
        task.model.zero_grad(set_to_none=True)
        if d.device.type == "cuda":
            torch.cuda.empty_cache()


# what a GPU says when a batch does not fit, beside torch.OutOfMemoryError: cuDNN and cuBLAS failing to allocate a
# workspace (cuDNN's frontend then finds no engine that runs), a CUDA call's own "out of memory"
OUT_OF_MEMORY = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "unable to find an engine")


def out_of_memory(e: BaseException) -> bool:
    """Whether error ``e`` says the device ran out of memory (a trial too large, not a failure of the recipe)."""
    return isinstance(e, torch.OutOfMemoryError) or any(m in str(e) for m in OUT_OF_MEMORY)


def agreed(found: float, upper: float, d: D.Dist) -> float:
    """The smallest of the ranks' ``found`` (every rank the same layout), at most ``upper``, in float64: a float32
    copy rounded a share that fits whole (6.7 s) down to 6.6999998 s, so the step took accumulation 2 (and a
    CUDA-graph run was refused)."""
    return min(upper, float(D.all_reduce_min(torch.tensor(found, dtype=torch.float64, device=d.device), d)))


def auto_device_seconds(task: Task, cfg: TrainingConfig, d: D.Dist) -> float:
    """``device_seconds`` for ``auto``: the largest micro-batch that fits this GPU (see the module docstring)."""
    if d.device.type != "cuda":
        raise ValueError(f"device_seconds=auto finds what a GPU holds by trial; on {d.device.type} set a number")
    upper = cfg.batch_seconds / d.world_size
    found = agreed(find_device_seconds(lambda s: trial(task, cfg, d, s), upper), upper, d)
    log.info("device_seconds=auto: %.4g s a micro-batch on %s (%s of the step's %.4g s share)", found, d.device,
             "all" if found >= upper else f"{100 * found / upper:.0f} %", upper)
    return found
