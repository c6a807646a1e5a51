"""The paper's claims (docs/paper.md §7), judged from a study's numbers with their seed statistics.

A study of the paper's design (``mode: fixed-steps`` with ``cycles``) gives, for every batch size and seed, the
same cycle-minimum steps; every claim is answered from that one grid, per metric, as *reproduced*, *not
reproduced* or *inconclusive*, with the evidence in one line:

* **C1** — at a fixed step count, is the metric better with a bigger batch? Spearman's rank correlation of
  batch size and the seed-mean metric at each step, and the adjacent batch pairs that improve beyond two
  standard errors. Reproduced when the correlation at the final step is ≥ 0.8 and the largest batch beats the
  smallest beyond 2 SE; not reproduced, mirrored, when it is ≤ −0.8 and the smallest beats the largest beyond
  2 SE: the reverse effect shown, not the absence of one, which no rule here can show (the ranks of noisy means
  alone are no evidence: they give ρ ≤ 0 about half the time whatever the spread); inconclusive otherwise (one
  seed is always inconclusive: no spread). With two batch sizes (no rank correlation) the pair decides alone:
  reproduced when the larger beats the smaller beyond 2 SE, not reproduced when the smaller beats the larger so.
* **C2** — saturation: the gain of the largest doubling of the batch against the gain of the smallest, at the
  final step (per doubling: a step of two doublings, 4 → 16 s where 8 s is missing, counts half its gain), each
  at the 2 SE bound that makes a verdict hard. Reproduced when the smallest doubling gains beyond
  2 SE and the largest, at its upper bound, gains at most a third of the smallest's gain at its lower bound; not
  reproduced, mirrored, when the largest at its lower bound gains more than a third of the smallest's at its
  upper bound (a point estimate "as much" was a coin toss between two noisy gains); inconclusive otherwise, and
  where a gain has no spread over seeds.
* **C2-trend** — saturation, pre-registered on 2026-12-06 before the data it is to judge
  (docs/paper-at-cpu-scale-c2/preregistration.md, with its erratum): per seed, the gain of each successive
  doubling at the final step (per doubling of the batch), and the least-squares slope of those gains on log2 of
  the batch; the slopes' mean and its SE over seeds decide (the same seeds in every cell: one seed's noise is
  paired across its cells). Reproduced when the first doubling gains beyond 2 SE and the slope is below 0 beyond
  2 SE (the gains fall); not reproduced, mirrored, when the slope is above 0 beyond 2 SE (they grow); inconclusive
  otherwise, and with fewer than 3 seeds in every cell or fewer than 3 batch sizes. What weighs: with three
  evenly spaced doublings (four batch sizes) the slope is half the last gain less the first, and the middle
  doubling has no weight (per seed, ½ × sign × (v₄ − v₃ − v₂ + v₁) over the batch sizes' values: their
  curvature on log2 of the batch, to which every batch size contributes); with more doublings each weighs by its
  distance from the middle. Against C2 (on four batch
  sizes the same contrast): paired by seed, and judged against 0 rather than against a third of the first gain.
  A seed enters where it has exactly one value in every cell (a seed twice in a cell, two grid entries of one
  batch size, is left out, and said); seeds 1 and 1.0 are one seed; rows without a seed enter no slope.
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

Differences within float noise of the values compared (``NOISE`` of their magnitude: metrics logged in float32
differ in their 7th digit) are 0, in the verdicts and in the evidence, which shows no "-0", "ratio inf" or
"ρ +nan" (``fmt_gain``, ``fmt_rho``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOISE = 1e-6  # a difference this small beside the values' magnitude is float noise (float32: ~6e-8), not a gain


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


def denoise(x: float, scale: float) -> float:
    """``x``, or 0 where it is float noise beside ``scale``, the magnitude of the values it was computed from (a gain of
    -9.31e-10 between two means of 0.3, their float32 values one unit in the last place apart)."""
    return 0.0 if math.isfinite(x) and abs(x) <= NOISE * abs(scale) else x


def _gain(a: Cell, b: Cell, sign: float) -> tuple[float, float]:
    """(improvement from a to b in the "better" direction, its standard error), float noise as 0."""
    scale = max(abs(a.mean), abs(b.mean))
    return denoise(sign * (b.mean - a.mean), scale), denoise(math.sqrt(a.se**2 + b.se**2), scale)


def fmt_gain(gain: float, se: float, scale: float = 0.0) -> str:
    """A signed difference and its SE as the evidence shows them: ``+0.0657 ± 0.028`` (3 and 2 significant
    figures). Float noise beside ``scale`` (the magnitude of the values compared) and a negative zero read ``0``; an SE
    of 0 says there was no spread, a missing one (a single seed) that it was not measured."""
    gain, se = denoise(gain, scale), denoise(se, scale)
    shown = "0" if gain == 0 else f"{gain:+.3g}"
    if math.isnan(se):
        return f"{shown} (one seed: no SE)"
    if se == 0:
        return f"{shown} ± 0 (no spread over seeds)"
    return f"{shown} ± {se:.2g}"


def fmt_rho(rho: float, points: int) -> str:
    """Spearman's ρ as the evidence shows it, or why it is not defined (``ρ +nan`` said nothing)."""
    if math.isfinite(rho):
        return f"ρ {rho:+.2f}"
    if points < 3:
        return f"ρ not defined ({points} batch size{'s' if points != 1 else ''}, it needs 3)"
    return "ρ not defined (the same value at every batch size)"


def beyond_2se(gain: float, se: float) -> bool:
    """The one rule of every "beyond 2 standard errors" in a report: a gain over twice its SE, where the SE was
    measured (a zero spread over seeds is no measure of the noise, not an infinitely clear difference)."""
    return math.isfinite(se) and se > 0 and gain > 2 * se


def _scale(grid: dict[tuple[float, int], Cell]) -> float:
    """The magnitude of a metric's values over the grid: what float noise is measured against."""
    return max((abs(c.mean) for c in grid.values()), default=0.0)


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
        per_step.append(f"step {s}: {fmt_rho(rho, len(bs))}, {up}/{len(bs) - 1} pairs better beyond 2 SE")
    rho = spearman(batches, [sign * grid[(b, final)].mean for b in batches])
    gain, se = _gain(grid[(batches[0], final)], grid[(batches[-1], final)], sign)
    # mirrored: reproduced by the pair's 2 SE test and ρ ≥ 0.8, refuted by the pair's test the other way and
    # ρ ≤ −0.8 (ranks of noisy means alone are no evidence: 0.14 SE apart, 3 batch sizes ranked ρ −0.5 and said
    # "not reproduced"; the pair's test alone refuted a true null 6-9 % of the time, twice its false
    # reproductions); with two batch sizes (no ρ) the pair decides both ways
    held = beyond_2se(gain, se) and (len(batches) == 2 or rho >= 0.8)
    refuted = beyond_2se(-gain, se) and (len(batches) == 2 or rho <= -0.8)
    evidence = f"largest vs smallest batch at step {final}: {fmt_gain(gain, se, _scale(grid))}; " + "; ".join(per_step)
    return Verdict("C1", metric, _verdict(held, refuted), evidence)


def judge_c2(grid: dict[tuple[float, int], Cell], metric: str, sign: float) -> Verdict:
    final = max(s for _, s in grid)
    bs = sorted(b for b, s in grid if s == final)
    if len(bs) < 3:
        return Verdict("C2", metric, INCONCLUSIVE, "fewer than 3 batch sizes")
    # per doubling, as C2-trend's: a grid missing a batch size (8 s of 4, 8, 16, 32 s diverged) made its smallest
    # "doubling" 4 → 16 s, two doublings' gain against the largest's one, and turned "not reproduced" into reproduced
    small, small_se = (x / math.log2(bs[1] / bs[0]) for x in _gain(grid[(bs[0], final)], grid[(bs[1], final)], sign))
    large, large_se = (x / math.log2(bs[-1] / bs[-2])
                       for x in _gain(grid[(bs[-2], final)], grid[(bs[-1], final)], sign))
    # mirrored, each at the bounds that make it hard: reproduced when the largest doubling's gain at its upper
    # bound is at most a third of the smallest's at its lower bound (which is beyond 0); refuted when the largest's
    # at its lower bound is more than a third of the smallest's at its upper bound (before: "as much as the
    # smallest" on the two point estimates). A spread of 0 measures no noise: neither.
    measured = all(math.isfinite(x) and x > 0 for x in (small_se, large_se))
    verdict = _verdict(measured and beyond_2se(small, small_se) and large + 2 * large_se <= (small - 2 * small_se) / 3,
                       measured and beyond_2se(large, large_se)
                       and large - 2 * large_se > max(small + 2 * small_se, 0.0) / 3)
    scale = _scale(grid)
    per = " per doubling" if any(b != 2 * a for a, b in (bs[:2], bs[-2:])) else ""
    evidence = (f"at step {final}: {bs[0]:g} → {bs[1]:g} s gains {fmt_gain(small, small_se, scale)}{per}; {bs[-2]:g} → "
                f"{bs[-1]:g} s gains {fmt_gain(large, large_se, scale)}{per}")
    return Verdict("C2", metric, verdict, evidence)


@dataclass
class Doublings:
    """Each seed's gain per doubling of the batch between successive batch sizes at one step (C2-trend's data)."""

    batches: list[float]  # the batch sizes, ascending
    seeds: list[str]  # the seeds measured at every one of them
    gains: np.ndarray  # (seeds, batch sizes - 1) the gain per doubling, in the metric's better direction
    twice: list[str] = field(default_factory=list)  # seeds left out: two values in one cell

    @property
    def where(self) -> np.ndarray:
        """(batch sizes - 1,) the middle of each step between batch sizes, on log2 of the batch."""
        log2 = np.log2(self.batches)
        return (log2[:-1] + log2[1:]) / 2

    @property
    def slopes(self) -> np.ndarray:
        """(seeds,) the least-squares slope of each seed's gains on log2 of the batch."""
        centred = self.where - self.where.mean()
        return self.gains @ centred / (centred @ centred)


def over_seeds(x: np.ndarray) -> tuple[Any, Any]:
    """The mean over seeds (the first axis of ``x``) and its SE (the seeds' SD, n − 1, over √n), as ``Cell``'s."""
    return x.mean(axis=0), x.std(axis=0, ddof=1) / math.sqrt(len(x))


def seed_name(seed: Any) -> str | None:
    """A seed as one name, whatever read it: 1, 1.0 (a CSV's float) and "1" are "1"; None (no seed) is None."""
    if seed is None or (isinstance(seed, float) and not math.isfinite(seed)):
        return None
    if isinstance(seed, float) and seed.is_integer():
        return str(int(seed))
    return str(seed)


def doublings(grid: dict[tuple[float, int], Cell], step: int, sign: float) -> Doublings:
    """The gains per doubling at ``step`` of the seeds measured once at every batch size there (a step of two
    doublings, 8 → 32 s, counts half its gain a doubling). ``Doublings.twice`` names the seeds left out for a
    second value in one cell."""
    bs = sorted(b for b, s in grid if s == step)
    by_seed: list[dict[str, float]] = []
    twice: set[str] = set()
    for b in bs:
        cell = grid[(b, step)]
        found: dict[str, float] = {}
        for name, v in zip(map(seed_name, cell.seeds), cell.values, strict=True) if cell.seeds is not None else ():
            if name is not None:
                if name in found:
                    twice.add(name)
                found[name] = v
        by_seed.append(found)
    seeds = sorted(set.intersection(*(set(d) for d in by_seed)) - twice) if by_seed else []
    values = np.array([[d[k] for d in by_seed] for k in seeds]).reshape(len(seeds), len(bs))  # (seeds, batches)
    octaves = np.diff(np.log2(bs))  # (batches - 1,): 1.0 for a grid of doublings
    return Doublings(bs, seeds, sign * np.diff(values, axis=1) / octaves, sorted(twice))


def judge_c2_trend(grid: dict[tuple[float, int], Cell], metric: str, sign: float) -> Verdict:
    """C2-trend (the module's docstring states the rule): per seed, the gains of successive doublings at the final
    step and their least-squares slope on log2 of the batch; the verdict from the slopes' mean and SE over seeds."""
    final = max(s for _, s in grid)
    d = doublings(grid, final, sign)
    if len(d.batches) < 3:
        return Verdict("C2-trend", metric, INCONCLUSIVE, "fewer than 3 batch sizes")
    n = len(d.seeds)
    twice = (f"; seed(s) {', '.join(d.twice)} left out: two values in one cell (two grid entries of one batch "
             "size?)" if d.twice else "")
    if n < 3:
        return Verdict("C2-trend", metric, INCONCLUSIVE, f"{n} seed(s) in every batch size at step {final} "
                                                         f"(it needs 3: one slope per seed){twice}")
    scale = _scale(grid)
    slope, slope_se = (denoise(float(x), scale) for x in over_seeds(d.slopes))
    first_gain, first_se = (denoise(float(x), scale) for x in over_seeds(d.gains[:, 0]))
    verdict = _verdict(beyond_2se(first_gain, first_se) and beyond_2se(-slope, slope_se), beyond_2se(slope, slope_se))
    each = "; ".join(f"{a:g} → {b:g} s {fmt_gain(g, se, scale)}" for a, b, g, se in zip(
        d.batches[:-1], d.batches[1:], *over_seeds(d.gains), strict=True))
    evidence = (f"at step {final}, {n} seeds: gain per doubling {each}; slope of the gain per doubling of the batch "
                f"{fmt_gain(slope, slope_se, scale)} (reproduced below 0 beyond 2 SE){twice}")
    return Verdict("C2-trend", metric, verdict, evidence)


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
    scale = max(abs(c.mean) for c in cell.values())  # what float noise is measured against
    mean = denoise(sum(w * cell[k].mean for k, w in weight.items()), scale)
    seeds = [sorted(map(str, c.seeds)) if c.seeds is not None else None for c in cell.values()]
    first = seeds[0] if seeds else None
    if first is not None and len(first) > 1 and len(set(first)) == len(first) and all(s == first for s in seeds):
        by_seed = [{str(s): v for s, v in zip(c.seeds or [], c.values, strict=True)} for c in cell.values()]
        contrast = [sum(w * values[s] for w, values in zip(weight.values(), by_seed, strict=True)) for s in first]
        se = statistics.stdev(contrast) / math.sqrt(len(contrast))
    else:
        se = math.sqrt(sum((w * cell[k].se) ** 2 for k, w in weight.items()))
    return mean, denoise(se, scale)


def judge_c4(grid: dict[tuple[float, int], Cell], metric: str, sign: float) -> Verdict:
    hours, steps = [], []  # pairs of cells: from (B, T) to (2B, T/2), and to (2B, T)
    for (b, s), cell in grid.items():
        if (2 * b, s) in grid:
            steps.append((cell, grid[(2 * b, s)]))
        if s % 2 == 0 and (2 * b, s // 2) in grid:
            hours.append((cell, grid[(2 * b, s // 2)]))
    if not hours or not steps:
        missing = [what for what, pairs in (("equal-hours pairs (B, T) / (2B, T/2)", hours),
                                            ("equal-steps pairs (B, T) / (2B, T)", steps)) if not pairs]
        return Verdict("C4", metric, INCONCLUSIVE, f"no {' and no '.join(missing)} among the checkpoints")
    h, h_se = _mean_gain(hours, sign)
    g, g_se = _mean_gain(steps, sign)
    measured = math.isfinite(h_se) and math.isfinite(g_se) and h_se > 0 and g_se > 0
    third_high = max(g + 2 * g_se, 0.0) / 3  # a third of the equal-steps gain, at its upper bound
    # pairs whose own change exceeds that beyond 2 SE: changes of both signs cancel in the mean, not here
    apart = sum(abs(x) - 2 * se > third_high for x, se in (_gain(a, b, sign) for a, b in hours))
    held = measured and beyond_2se(g, g_se) and abs(h) + 2 * h_se <= (g - 2 * g_se) / 3 and apart == 0
    refuted = measured and (abs(h) - 2 * h_se > third_high or 2 * apart >= len(hours))
    ratio = (f"ratio {abs(h) / g:.2f} (holds at ≤ 0.33 within 2 SE)" if g > 0 else
             "no ratio: the equal-steps gain is not positive, so there is no gain for equal hours to match")
    scale = _scale(grid)
    evidence = (f"mean change at equal hours (B, T) → (2B, T/2), {len(hours)} pairs ({apart} beyond a third of the "
                f"equal-steps gain by 2 SE): {fmt_gain(h, h_se, scale)}; mean gain at equal steps (B, T) → (2B, T), "
                f"{len(steps)} pairs: {fmt_gain(g, g_se, scale)}; {ratio}")
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
                                                   f"2 SE interval [{_beside(slope - 2 * se, C6_BAND)}, "
                                                   f"{_beside(slope + 2 * se, C6_BAND)}] "
                                                   f"(the paper: ≈ −0.5; reproduced within [{low}, {high}])")


def _beside(x: float, edges: tuple[float, ...]) -> str:
    """``x`` signed at 2 decimals, or at as many more as tell it from an edge it is not on (−0.7520 read −0.75, on
    the band's edge, beside a verdict that found it outside)."""
    for digits in range(2, 7):
        text = f"{x:+.{digits}f}"
        if all(float(text) != e or x == e for e in edges):
            break
    return text


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
    spread = (f"; {bs[-1]:g} s vs {bs[0]:g} s: perplexity {fmt_gain(p_gain, p_se)}, similarity "
              f"{fmt_gain(-s_gain, s_se)}" if seeded
              else "; fewer than 2 seeds at some batch size: the spread is not measured")
    return Verdict("C7", "codebook", _verdict(held, refuted),
                   f"perplexity {fmt_rho(rho_p, len(bs))}, codeword similarity {fmt_rho(rho_s, len(bs))}{spread} "
                   f"(perplexity / similarity by batch: {shown})")


def judge(rows: list[dict[str, Any]], metrics: dict[str, bool]) -> list[Verdict]:
    """C1, C2, C2-trend and C4 for each metric (``{name: higher_is_better}``) over ``rows`` (batch_seconds, step, seed
    and the metrics, one row per run and checkpoint)."""
    out = []
    for metric, higher in metrics.items():
        grid = cells(rows, metric)
        if len({b for b, _ in grid}) < 2:
            continue
        sign = 1.0 if higher else -1.0
        out += [judge_c1(grid, metric, sign), judge_c2(grid, metric, sign), judge_c2_trend(grid, metric, sign),
                judge_c4(grid, metric, sign)]
    return out
