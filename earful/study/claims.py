"""The paper's claims (docs/paper.md §7), judged from a study's numbers with their seed statistics.

A study of the paper's design (``mode: fixed-steps`` with ``cycles``) gives, for every batch size and seed, the
same cycle-minimum steps; every claim is answered from that one grid, per metric, as *reproduced*, *not
reproduced* or *inconclusive*, with the evidence in one line:

* **C1** — at a fixed step count, is the metric better with a bigger batch? Spearman's rank correlation of
  batch size and the seed-mean metric at each step, and the adjacent batch pairs that improve beyond two
  standard errors. Reproduced when the correlation at the final step is ≥ 0.8 and the largest batch beats the
  smallest beyond 2 SE; not reproduced when the correlation is ≤ 0 or the smallest beats the largest beyond
  2 SE; inconclusive otherwise (one seed is always inconclusive: no spread). With two batch sizes (no rank
  correlation) the pair decides alone: reproduced when the larger beats the smaller beyond 2 SE, not reproduced
  when the smaller beats the larger so.
* **C2** — saturation: the gain of the largest doubling of the batch against the gain of the smallest, at the
  final step. Reproduced when the smallest doubling gains beyond 2 SE and the largest gains at most a third of
  it even at its upper 2 SE bound; not reproduced when the largest gains beyond 2 SE and at least as much;
  inconclusive otherwise.
* **C4** — hours seen decide: the change between equal-hours pairs ((B, T) → (2B, T/2), cycle minima) against
  the gain between equal-steps pairs ((B, T) → (2B, T)), both signed in the metric's better direction and
  averaged over pairs; a mean's SE is that of its per-seed contrasts (the same seeds in every cell: a run's two
  checkpoints are not independent), else √(Σ w² SE²) over the cells it weighs (chained pairs share cells).
  Signed means are unbiased, where mean absolute gaps grow with the noise. Reproduced when the equal-steps gain is
  beyond 2 SE and the equal-hours change, at its 2 SE bound, is at most a third of the equal-steps gain at its
  lower 2 SE bound, and no single pair's change exceeds a third of the gain (at its upper bound) beyond 2 SE;
  not reproduced when the mean change does so, or half the pairs do (changes of both signs cancel in a mean);
  inconclusive otherwise (and with one seed: no spread).
* **C6** — gradient noise falls with the batch: the slope of log(gradient std) on log(batch) (the paper: ≈ −0.5).
  Reproduced when its ±2 SE interval lies within [−0.75, −0.25]; not reproduced when that interval misses the
  band; inconclusive otherwise (a point estimate in the band is not enough).
* **C7** — codebook usage: hard perplexity rises and codeword cosine similarity falls with the batch. Reproduced
  when Spearman's ρ is ≥ 0.8 for perplexity and ≤ −0.8 for similarity and the largest batch differs from the
  smallest beyond 2 SE in both, in those directions; not reproduced when either goes the opposite way at that
  strength and beyond 2 SE; inconclusive otherwise, and whenever a batch size has fewer than 2 seeds.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass
class Verdict:
    claim: str
    metric: str
    verdict: str
    evidence: str


@dataclass
class Cell:
    """A metric's values over seeds at one (batch, step), and the seeds they came from (when known)."""

    values: list[float]
    seeds: list[Any] | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def se(self) -> float:
        return statistics.stdev(self.values) / math.sqrt(len(self.values)) if len(self.values) > 1 else math.nan


def cells(rows: list[dict[str, Any]], metric: str) -> dict[tuple[float, int], Cell]:
    """``{(batch_seconds, step): Cell}`` of ``metric`` over the rows (one row per run and checkpoint)."""
    found: dict[tuple[float, int], list[tuple[Any, float]]] = defaultdict(list)
    for r in rows:
        v = r.get(metric)
        if v is not None and math.isfinite(v):
            found[(float(r["batch_seconds"]), int(r["step"]))].append((r.get("seed"), float(v)))
    return {k: Cell([v for _, v in sv], [s for s, _ in sv]) for k, sv in found.items()}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan for fewer than 3 points or constant data."""
    if len(x) < 3:
        return math.nan

    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for value in np.unique(a):  # ties share their mean rank
            r[a == value] = r[a == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _gain(a: Cell, b: Cell, sign: float) -> tuple[float, float]:
    """(improvement from a to b in the "better" direction, its standard error)."""
    return sign * (b.mean - a.mean), math.sqrt(a.se**2 + b.se**2)


def beyond_2se(gain: float, se: float) -> bool:
    """The one rule of every "beyond 2 standard errors" in a report: a gain over twice its SE, where the SE was
    measured (a zero spread over seeds is no measure of the noise, not an infinitely clear difference)."""
    return math.isfinite(se) and se > 0 and gain > 2 * se


def _verdict(reproduced: bool, refuted: bool) -> str:
    return REPRODUCED if reproduced else NOT_REPRODUCED if refuted else INCONCLUSIVE


def judge_c1(grid: dict[tuple[float, int], Cell], metric: str, sign: float) -> Verdict:
    steps = sorted({s for _, s in grid})
    final = steps[-1]
    batches = sorted(b for b, s in grid if s == final)
    per_step = []
    for s in steps:
        bs = sorted(b for b, t in grid if t == s)
        rho = spearman(bs, [sign * grid[(b, s)].mean for b in bs])
        up = sum(beyond_2se(*_gain(grid[(a, s)], grid[(b, s)], sign)) for a, b in zip(bs, bs[1:], strict=False))
        per_step.append(f"step {s}: ρ {rho:+.2f}, {up}/{len(bs) - 1} pairs better beyond 2 SE")
    rho = spearman(batches, [sign * grid[(b, final)].mean for b in batches])
    gain, se = _gain(grid[(batches[0], final)], grid[(batches[-1], final)], sign)
    measured = math.isfinite(se)
    if len(batches) == 2:  # no rank correlation of two points: the pair's 2 SE test, both ways
        verdict = _verdict(measured and beyond_2se(gain, se), measured and beyond_2se(-gain, se))
    else:
        verdict = _verdict(measured and rho >= 0.8 and beyond_2se(gain, se),
                           measured and (rho <= 0 or beyond_2se(-gain, se)))
    evidence = (f"largest vs smallest batch at step {final}: {gain:+.3g} ± {se:.2g} (SE); " + "; ".join(per_step))
    return Verdict("C1", metric, verdict, evidence)


def judge_c2(grid: dict[tuple[float, int], Cell], metric: str, sign: float) -> Verdict:
    final = max(s for _, s in grid)
    bs = sorted(b for b, s in grid if s == final)
    if len(bs) < 3:
        return Verdict("C2", metric, INCONCLUSIVE, "fewer than 3 batch sizes")
    small, small_se = _gain(grid[(bs[0], final)], grid[(bs[1], final)], sign)
    large, large_se = _gain(grid[(bs[-2], final)], grid[(bs[-1], final)], sign)
    # reproduced: the smallest doubling gains and the largest, at its upper bound, a third of it at most;
    # refuted: the largest doubling still gains, as much as the smallest
    verdict = _verdict(beyond_2se(small, small_se) and math.isfinite(large_se) and large + 2 * large_se <= small / 3,
                       beyond_2se(large, large_se) and large >= small)
    evidence = (f"at step {final}: {bs[0]:g} → {bs[1]:g} s gains {small:+.3g} ± {small_se:.2g}; {bs[-2]:g} → "
                f"{bs[-1]:g} s gains {large:+.3g} ± {large_se:.2g}")
    return Verdict("C2", metric, verdict, evidence)


def _mean_gain(pairs: list[tuple[Cell, Cell]], sign: float) -> tuple[float, float]:
    """The mean over ``pairs`` of the signed gain from a to b, and its SE. The mean is a weighted sum of cell
    means (a cell in two pairs, 4 → 8 and 8 → 16 s, weighs once; where its weights cancel, not at all). When every
    weighed cell holds the same seeds, the SE is that of the per-seed contrasts: one run's checkpoints at two steps
    are not independent. Otherwise √(Σ w² SE²) over cells, as if they were."""
    weight: dict[int, float] = defaultdict(float)
    cell: dict[int, Cell] = {}
    for a, b in pairs:
        for c, w in ((a, -sign), (b, sign)):
            weight[id(c)] += w / len(pairs)
            cell[id(c)] = c
    # a cell whose weights cancel (the middle of a chain: 8 s in 4 → 8 and 8 → 16 s) is not part of the mean, nor of
    # the test of the seeds: a run missing there must not turn the paired SE into the unpaired one
    weight = {k: w for k, w in weight.items() if abs(w) > 1e-12}
    cell = {k: cell[k] for k in weight}
    mean = sum(w * cell[k].mean for k, w in weight.items())
    seeds = [sorted(map(str, c.seeds)) if c.seeds is not None else None for c in cell.values()]
    first = seeds[0] if seeds else None
    if first is not None and len(first) > 1 and len(set(first)) == len(first) and all(s == first for s in seeds):
        by_seed = [{str(s): v for s, v in zip(c.seeds or [], c.values, strict=True)} for c in cell.values()]
        contrast = [sum(w * values[s] for w, values in zip(weight.values(), by_seed, strict=True)) for s in first]
        return mean, statistics.stdev(contrast) / math.sqrt(len(contrast))
    return mean, math.sqrt(sum((w * cell[k].se) ** 2 for k, w in weight.items()))


def judge_c4(grid: dict[tuple[float, int], Cell], metric: str, sign: float) -> Verdict:
    hours, steps = [], []  # pairs of cells: from (B, T) to (2B, T/2), and to (2B, T)
    for (b, s), cell in grid.items():
        if (2 * b, s) in grid:
            steps.append((cell, grid[(2 * b, s)]))
        if s % 2 == 0 and (2 * b, s // 2) in grid:
            hours.append((cell, grid[(2 * b, s // 2)]))
    if not hours or not steps:
        return Verdict("C4", metric, INCONCLUSIVE, "no equal-hours pairs (B, T) / (2B, T/2) among the checkpoints")
    h, h_se = _mean_gain(hours, sign)
    g, g_se = _mean_gain(steps, sign)
    measured = math.isfinite(h_se) and math.isfinite(g_se) and h_se > 0 and g_se > 0
    third_high = max(g + 2 * g_se, 0.0) / 3  # a third of the equal-steps gain, at its upper bound
    # pairs whose own change exceeds that beyond 2 SE: changes of both signs cancel in the mean, not here
    apart = sum(abs(x) - 2 * se > third_high for x, se in (_gain(a, b, sign) for a, b in hours))
    held = measured and beyond_2se(g, g_se) and abs(h) + 2 * h_se <= (g - 2 * g_se) / 3 and apart == 0
    refuted = measured and (abs(h) - 2 * h_se > third_high or 2 * apart >= len(hours))
    ratio = abs(h) / g if g > 0 else math.inf
    evidence = (f"mean change at equal hours (B, T) → (2B, T/2) {h:+.3g} ± {h_se:.2g} (SE, {len(hours)} pairs, "
                f"{apart} beyond a third of the equal-steps gain by 2 SE) vs mean gain at equal steps (B, T) → (2B, T) "
                f"{g:+.3g} ± {g_se:.2g} ({len(steps)} pairs): ratio {ratio:.2f} (holds at ≤ 0.33 within 2 SE)")
    return Verdict("C4", metric, _verdict(held, refuted), evidence)


C6_BAND = (-0.75, -0.25)  # the paper's slope ≈ −0.5, within 0.25


def judge_c6(points: list[tuple[float, float]]) -> Verdict:
    """``points``: (batch seconds, mean per-parameter gradient std), one per run (every seed). Reproduced when the
    slope's ±2 SE interval lies within ``C6_BAND``, not reproduced when it misses the band, else inconclusive
    (a point estimate inside the band with a wide interval is not a reproduction)."""
    pts = [(b, g) for b, g in points if b > 0 and g > 0]
    if len({b for b, _ in pts}) < 3:
        return Verdict("C6", "gradient std", INCONCLUSIVE, "fewer than 3 batch sizes measured")
    x = np.log([b for b, _ in pts])
    y = np.log([g for _, g in pts])
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    se = math.sqrt(float((resid**2).sum()) / max(len(x) - 2, 1) / float(((x - x.mean()) ** 2).sum()))
    low, high = C6_BAND
    verdict = _verdict(low <= slope - 2 * se and slope + 2 * se <= high, slope + 2 * se < low or slope - 2 * se > high)
    return Verdict("C6", "gradient std", verdict, f"log-log slope {slope:+.2f} ± {se:.2f} (SE) over {len(pts)} runs, "
                                                   f"2 SE interval [{slope - 2 * se:+.2f}, {slope + 2 * se:+.2f}] "
                                                   f"(the paper: ≈ −0.5; reproduced within [{low}, {high}])")


def judge_c7(ppl: dict[float, list[float]], sim: dict[float, list[float]]) -> Verdict:
    """Final hard codebook perplexity and codeword cosine similarity per batch size (values over seeds). Ranks
    of seed means alone are no evidence (3 batch sizes give ρ of ±1 or ±0.5 whatever the spread): a verdict
    also needs every batch size measured with ≥ 2 seeds and the largest batch apart from the smallest beyond
    2 SE, in the claimed direction (perplexity up, similarity down) to reproduce, the opposite to refute."""
    bs = sorted(set(ppl) & set(sim))
    if len(bs) < 3:
        return Verdict("C7", "codebook", INCONCLUSIVE, "fewer than 3 batch sizes")
    rho_p = spearman(bs, [statistics.fmean(ppl[b]) for b in bs])
    rho_s = spearman(bs, [statistics.fmean(sim[b]) for b in bs])
    seeded = all(len(ppl[b]) >= 2 and len(sim[b]) >= 2 for b in bs)
    p_gain, p_se = _gain(Cell(ppl[bs[0]]), Cell(ppl[bs[-1]]), 1.0)  # perplexity: the claim is up
    s_gain, s_se = _gain(Cell(sim[bs[0]]), Cell(sim[bs[-1]]), -1.0)  # similarity: the claim is down
    held = seeded and rho_p >= 0.8 and rho_s <= -0.8 and beyond_2se(p_gain, p_se) and beyond_2se(s_gain, s_se)
    refuted = seeded and (rho_p <= -0.8 and beyond_2se(-p_gain, p_se) or rho_s >= 0.8 and beyond_2se(-s_gain, s_se))
    shown = ", ".join(f"{b:g} s: {statistics.fmean(ppl[b]):.1f} / {statistics.fmean(sim[b]):.3f}" for b in bs)
    spread = (f"; {bs[-1]:g} s vs {bs[0]:g} s: perplexity {p_gain:+.3g} ± {p_se:.2g}, similarity {-s_gain:+.3g} ± "
              f"{s_se:.2g} (SE)" if seeded else "; fewer than 2 seeds at some batch size: the spread is not measured")
    return Verdict("C7", "codebook", _verdict(held, refuted),
                   f"perplexity ρ {rho_p:+.2f}, codeword similarity ρ {rho_s:+.2f}{spread} "
                   f"(perplexity / similarity by batch: {shown})")


def judge(rows: list[dict[str, Any]], metrics: dict[str, bool]) -> list[Verdict]:
    """C1, C2 and C4 for each metric (``{name: higher_is_better}``) over ``rows`` (batch_seconds, step, seed and
    the metrics, one row per run and checkpoint)."""
    out = []
    for metric, higher in metrics.items():
        grid = cells(rows, metric)
        if len({b for b, _ in grid}) < 2:
            continue
        sign = 1.0 if higher else -1.0
        out += [judge_c1(grid, metric, sign), judge_c2(grid, metric, sign), judge_c4(grid, metric, sign)]
    return out
