"""The parts of an optimizer step that do not depend on the task: seeds per micro-batch, mixed precision, and
the update itself (unscale, normalise once, clip, check, apply or skip)."""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext

import torch

# Streams of ``step_seed`` (its third argument) within one run: 0 dropout and 1 the draws of training micro-batches
# (``seed_micro_batch``), 2 validation (its "step" the global validation batch index, its index 0).
STREAMS = 3
# Below this index the seeds are the first formula's, kept so that every run made with it (fewer than 67
# micro-batches a step) draws what it drew. Two tuples of one run seed with indices below it never share a seed:
# their values differ by Δstep·10007 + Δstream·100003 + Δindex (no wrap: |Δ| ≪ 2^63 for any step count below
# 10^14), and 100003 ≡ −67, 2·100003 ≡ −134 (mod 10007), so a zero needs Δstream = 0 and then Δstep = Δindex = 0,
# or |Δindex| ≥ 67. At index 67 the formula collided: (step 0, stream 1, 67) == (step 10, stream 0, 0).
LINEAR_INDICES = 67


def step_seed(seed: int, step: int, stream: int, index: int = 0) -> int:
    """A reproducible seed per (run seed, step, stream, index), distinct within a run: for index below
    ``LINEAR_INDICES`` (67) the linear formula, whose values for one run seed are distinct for any step count below
    10^14 and the ``STREAMS`` streams (proof at ``LINEAR_INDICES``); for larger indices (a step of 67 or more
    global micro-batches) a 63-bit BLAKE2b hash of the tuple, which meets another seed of the run only by a hash
    collision (odds about n²/2^64 for n seeds: below 10^-3 for 10^8). Across run seeds nothing is promised: the
    formula is linear, so another run seed gives some of a run's values at other tuples."""
    if 0 <= index < LINEAR_INDICES:
        return (seed * 1_000_003 + step * 10_007 + stream * 100_003 + index) % (2**63 - 1)
    digest = hashlib.blake2b(f"earful-step-seed:{seed}:{step}:{stream}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**63 - 1)


def seed_micro_batch(seed: int, step: int, index: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """The randomness of global micro-batch ``index`` of optimizer step ``step``: seeds torch's global generator
    (dropout) and returns two: one on ``device`` for the draws of values (distractors, Gumbel noise), and one on
    the host for the draws that steer the computation (the span mask, channel masks, LayerDrop), so that a GPU
    step waits for no draw. On a CPU they are one generator, which draws what the single generator drew before
    the split. Seeded alike, the host generator gives pre-training the same masks and LayerDrop on a GPU as on a
    CPU for a seed."""
    torch.manual_seed(step_seed(seed, step, 0, index))  # dropout
    seed_ = step_seed(seed, step, 1, index)
    generator = torch.Generator(device=device).manual_seed(seed_)
    return generator, generator if device.type == "cpu" else torch.Generator().manual_seed(seed_)


def autocast(precision: str, device: torch.device):
    """``torch.autocast`` for ``bf16`` / ``fp16``; nothing for ``fp32``."""
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
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[torch.nn.Parameter],
    *,
    loss: float,
    factor: float,
    clip_norm: float,
) -> tuple[float, str]:
    """The gradients (summed over micro-batches, averaged over ranks by DDP) are unscaled and multiplied by
    ``factor`` (world_size / the step's global count), clipped at ``clip_norm`` (0: no clipping), checked, and
    applied when the ``step_outcome`` is ``"ok"``; then zeroed. Returns the norm before clipping and the outcome."""
    scaler.unscale_(optimizer)
    grads = [p for p in params if p.grad is not None]
    for p in grads:
        p.grad.mul_(factor)
    clip = clip_norm if clip_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, clip)) if grads else 0.0
    outcome = step_outcome(scaler, loss, grad_norm)
    if outcome == "ok":
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, outcome
