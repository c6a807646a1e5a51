"""C2 two doublings further: studies/cpu-paper.yaml's cells (4-64 s, docs/paper-at-cpu-scale/design.csv) and
studies/cpu-paper-c2.yaml's (128 s, design.csv beside this file; 256 s, 256/design.csv), judged together by
earful/study/claims.py, the gain of each doubling of the batch printed, and plotted (doublings.png; over 32-256 s, per
seed, as a study report draws C2-trend's data: gain_per_doubling.png). Run from the repository root:

    python docs/paper-at-cpu-scale-c2/judge_merged.py

(A study folder holding both continues as one study: `earful study run studies/cpu-paper.yaml --out runs/cpu-paper
"grid=[{batch_seconds: 4, lr: 1.0e-3}, {batch_seconds: 8, lr: 1.414e-3}, 16, 32, 64, 128]"` adds the 128 s runs
to a finished cpu-paper study and writes one report; the two were run on different machines here.)"""

import csv
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from earful.study.claims import _gain, cells, judge, judge_c2_trend  # noqa: E402
from earful.study.report import plot_gain_per_doubling  # noqa: E402

HERE = Path(__file__).parent
DESIGNS = (HERE.parent / "paper-at-cpu-scale" / "design.csv", HERE / "design.csv", HERE / "256" / "design.csv")
METRICS = {"pr.per": False, "ic.accuracy": True, "valid_loss": False, "valid_accuracy": True}
log = logging.getLogger("judge_merged")


def rows(path: Path) -> list[dict]:
    out = []
    with path.open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.append({k: (v if k == "run" else float(v) if v != "" else None) for k, v in r.items()})
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    both = [r for path in DESIGNS if path.exists() for r in rows(path)]
    for v in judge(both, METRICS):
        log.info("%s %s: %s — %s", v.claim, v.metric, v.verdict, v.evidence)
    window = [r for r in both if r["batch_seconds"] >= 32]  # C2-trend's grid in the pre-registered test
    for metric, higher in METRICS.items():
        v = judge_c2_trend(cells(window, metric), metric, 1.0 if higher else -1.0)
        log.info("%s %s, 32-256 s (as preregistration.md's test): %s — %s", v.claim, v.metric, v.verdict, v.evidence)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, (metric, higher) in zip(axes, METRICS.items(), strict=True):
        grid = cells(both, metric)
        sign = 1.0 if higher else -1.0
        bs = sorted({b for b, s in grid if s == 400})
        gains = [_gain(grid[(a, 400)], grid[(b, 400)], sign) for a, b in zip(bs, bs[1:], strict=False)]
        log.info("%s, step 400, gain of each doubling: %s", metric,
                 "; ".join(f"{a:g}→{b:g} s {g:+.3f} ± {se:.3f}" for (a, b), (g, se) in
                           zip(zip(bs, bs[1:], strict=False), gains, strict=True)))
        scale = 100.0 if metric != "valid_loss" else 1.0
        for step, style in ((200, "o--"), (400, "o-")):
            xs = sorted(b for b, s in grid if s == step)
            ax.errorbar(xs, [scale * grid[(b, step)].mean for b in xs], yerr=[scale * grid[(b, step)].se for b in xs],
                        fmt=style, capsize=3, label=f"step {step}")
        ax.axvspan(96, 320, color="0.9", zorder=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(bs, [f"{b:g}" for b in bs])
        ax.set_xlabel("batch (s of audio); shaded: cpu-paper-c2")
        ax.set_title(f"{metric}{' %' if scale == 100 else ''} ({'higher' if higher else 'lower'} is better)")
        ax.legend(fontsize=8)
    top = max(r["batch_seconds"] for r in both)
    fig.suptitle(f"The paper's design at CPU scale, 4-{top:g} s: mean ± SE over 3 seeds (4-64 s: cpu-paper; "
                 f"128{'-256' if top > 128 else ''} s: cpu-paper-c2)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "doublings.png", dpi=110)
    log.info("wrote %s", HERE / "doublings.png")
    # C2-trend's window in the pre-registered test (preregistration.md): 32-256 s, where every run learns
    plot_gain_per_doubling(window, METRICS, HERE / "gain_per_doubling.png")
    log.info("wrote %s", HERE / "gain_per_doubling.png")


if __name__ == "__main__":
    main()
