"""Learning-rate schedules as plain functions of the optimizer step (so resuming needs only the step)."""

from __future__ import annotations

import math

from earful.train.config import OptimConfig


def lr_at(step: int, peak: float, max_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based: the lr used by the step-th update)."""
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "polynomial":  # fairseq: linear warm-up, then linear decay to end_lr
        warmup = max(1, int(round(cfg.warmup_fraction * max_steps)))
        if step < warmup:
            return peak * (step + 1) / warmup
        frac = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return cfg.end_lr + (peak - cfg.end_lr) * (1.0 - frac)
    if cfg.schedule == "tristage":  # fairseq fine-tuning: linear warm-up, hold, exponential decay
        r = cfg.tristage_ratios
        if len(r) != 3 or abs(sum(r) - 1.0) > 1e-6:
            raise ValueError(f"tristage_ratios must be three fractions summing to 1, got {r}")
        w, h = int(r[0] * max_steps), int(r[1] * max_steps)
        d = max(1, max_steps - w - h)
        init, final = peak * cfg.tristage_init_scale, peak * cfg.tristage_final_scale
        if step < w:
            return init + (peak - init) * step / max(1, w)
        if step < w + h:
            return peak
        frac = min(1.0, (step - w - h) / d)
        return peak * math.exp(math.log(final / peak) * frac) if final > 0 else peak * (1 - frac)
    if cfg.schedule == "cyclic":  # the paper: torch CyclicLR "triangular" between peak/100 and peak
        base = peak * cfg.cyclic_base_fraction
        size = cfg.cyclic_step_size
        cycle = math.floor(1 + step / (2 * size))
        x = abs(step / size - 2 * cycle + 1)
        return base + (peak - base) * max(0.0, 1 - x)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")
