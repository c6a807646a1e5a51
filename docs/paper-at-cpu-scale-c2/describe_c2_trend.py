"""Descriptive statistics beside the pre-registered C2-trend verdict (preregistration.md): not the rule, which is
`judge_c2_trend` in earful/study/claims.py and alone decides. For each metric, over the seeds measured at all four
batch sizes of 32-256 s at step 400: each seed's gains per doubling and its slope ((g3 - g1) / 2, the
preregistration's erratum, item 1), the mean slope ± SE, the t statistic, an exact one-sided sign-flip p-value
(every assignment of signs to the per-seed slopes: no normality assumed), how many seeds' slopes are below 0, and a
percentile bootstrap 95 % interval of the mean. Run from the repository root:

    python docs/paper-at-cpu-scale-c2/describe_c2_trend.py docs/paper-at-cpu-scale-c2/confirm/report/design.csv

(several design.csv files are read together: seeds 1-3 are docs/paper-at-cpu-scale/design.csv,
docs/paper-at-cpu-scale-c2/design.csv and docs/paper-at-cpu-scale-c2/256/design.csv.)"""

import csv
import itertools
import logging
import sys
from pathlib import Path

import numpy as np

METRICS = {"pr.per": False, "ic.accuracy": True, "valid_loss": False, "valid_accuracy": True}  # higher is better?
BATCHES = (32.0, 64.0, 128.0, 256.0)
STEP = 400.0
log = logging.getLogger("describe_c2_trend")


def values(paths: list[Path], metric: str) -> dict[str, list[float]]:
    """Seed → the metric at the four batch sizes, for the seeds measured once at each of them."""
    found: dict[tuple[str, float], list[float]] = {}
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if float(r["step"]) == STEP and float(r["batch_seconds"]) in BATCHES and r.get(metric, "") != "":
                    found.setdefault((r["seed"], float(r["batch_seconds"])), []).append(float(r[metric]))
    seeds = {s for s, _ in found}
    return {s: [found[(s, b)][0] for b in BATCHES] for s in sorted(seeds, key=float)
            if all(len(found.get((s, b), [])) == 1 for b in BATCHES)}


def sign_flip_p(slopes: np.ndarray) -> float:
    """P(mean ≤ observed) over every assignment of signs to the slopes (one-sided: a falling gain is below 0)."""
    n = len(slopes)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n)
    means = (signs * np.abs(slopes)).mean(axis=1)
    return float((means <= slopes.mean() + 1e-12).mean())


def main(paths: list[Path]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    for metric, higher in METRICS.items():
        by_seed = values(paths, metric)
        if len(by_seed) < 2:
            log.info("%s: %d seed(s) at every batch size of 32-256 s, step 400", metric, len(by_seed))
            continue
        scale = 1.0 if metric == "valid_loss" else 100.0  # points
        v = scale * np.array(list(by_seed.values()))  # (seeds, 4)
        gains = (1.0 if higher else -1.0) * np.diff(v, axis=1)  # (seeds, 3): positive when the larger batch is better
        slopes = (gains[:, 2] - gains[:, 0]) / 2  # the least-squares slope of three gains on log2 of the batch
        n = len(slopes)
        mean, se = slopes.mean(), slopes.std(ddof=1) / np.sqrt(n)
        boot = rng.choice(slopes, size=(20000, n)).mean(axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        log.info("%s (%s), %d seeds (%s):", metric, "points" if scale == 100 else "loss", n, ", ".join(by_seed))
        for i, name in enumerate(("32 → 64", "64 → 128", "128 → 256")):
            g = gains[:, i]
            log.info("  gain %s s: %.2f ± %.2f (SE of the per-seed gains)", name, g.mean(), g.std(ddof=1) / np.sqrt(n))
        log.info("  per-seed slopes: %s", " ".join(f"{s:+.2f}" for s in slopes))
        log.info("  slope %.3f ± %.3f (SE), t = %.2f on %d df; %d of %d below 0; sign-flip p (one-sided) = %.4f; "
                 "bootstrap 95 %% interval of the mean [%.3f, %.3f]", mean, se, mean / se, n - 1,
                 int((slopes < 0).sum()), n, sign_flip_p(slopes), lo, hi)


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
