"""What a probe returns, which way its metrics point, and how results are shown: a Markdown table and a
plot of the learned layer weights (which layers carry phonemes, which speakers)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from earful.atomic import atomic_path
from earful.markdown import md_table

# task -> metric -> True when higher is better; the suite's tasks in their table order
METRICS: dict[str, dict[str, bool]] = {
    "pr": {"per": False},
    "asr": {"wer": False, "cer": False},
    "sid": {"accuracy": True, "eer": False},
    "ic": {"accuracy": True},
}


@dataclass
class TaskResult:
    """A trained probe: its test metrics (fractions, see ``METRICS``), the dev metrics of the epoch or step
    kept, the layer weights (softmax, one per hidden state: the transformer's input first), the epoch or step
    kept, the training history and the wall-clock seconds it took (features already extracted)."""

    task: str
    test: dict[str, float]
    dev: dict[str, float]
    layer_weights: list[float]
    best: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def table(rows: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown: one row per upstream (``rows[name][task][metric]``, a fraction or a ``"mean ± std"`` string of
    percentages), one column per task metric present, in ``METRICS`` order; arrows say which way is better."""
    cols = [(t, m) for t, ms in METRICS.items() for m in ms if any(m in r.get(t, {}) for r in rows.values())]
    head = ["upstream"] + [f"{t.upper()} {m.upper() if len(m) == 3 else m} {'↑' if METRICS[t][m] else '↓'}"
                           for t, m in cols]
    cells = [[name] + [_cell(r.get(t, {}).get(m)) for t, m in cols] for name, r in rows.items()]
    return md_table(head, cells) + "\n\n(percent; ↓ lower is better, ↑ higher is better)"


def over_seeds(runs: Mapping[int, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {metric: {"mean", "se", "n"}}}`` of the test metrics of ``runs`` (``{seed: {task: {metric:
    value}}}``), the standard error of the mean being the seeds' standard deviation over √n."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task, metrics in METRICS.items():
        for metric in metrics:
            values = [r[task][metric] for r in runs.values() if metric in r.get(task, {})]
            if values:
                se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
                out.setdefault(task, {})[metric] = {"mean": statistics.fmean(values), "se": se, "n": len(values)}
    return out


def mean_se_cells(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, str]]:
    """``over_seeds``' summary as :func:`table` cells: ``"mean ± SE"`` in percent."""
    return {t: {m: f"{100 * v['mean']:.1f} ± {100 * v['se']:.1f}" for m, v in ms.items()} for t, ms in summary.items()}


def _cell(v: float | str | None) -> str:
    """A fraction as a percentage (one decimal), a string as it is, nothing as a dash."""
    return "–" if v is None else v if isinstance(v, str) else f"{100 * v:.1f}"


def weights_table(weights: Mapping[str, list[float]]) -> str:
    """Markdown: one row per task, its softmax weight of each hidden state (empty for one-layer features)."""
    if not weights:
        return ""
    n = max(len(w) for w in weights.values())
    return "Layer weights (hidden state 0 = the transformer's input):\n\n" + md_table(
        ["task", *(str(i) for i in range(n))], [[t.upper(), *(f"{v:.3f}" for v in w)] for t, w in weights.items()])


def plot_layer_weights(weights: Mapping[str, list[float]], path: Path, title: str) -> None:
    """One line per task: its softmax weight of each hidden state (0 = the transformer's input), on the y range
    [0, 1] in every plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=110)
    for task, w in weights.items():
        ax.plot(range(len(w)), w, marker="o", label=task.upper())
    n = max(len(w) for w in weights.values())
    ax.set_xticks(range(n), ["input"] + [str(i) for i in range(1, n)])
    ax.set_xlabel("hidden state (transformer layer)")
    ax.set_ylabel("softmax weight")
    ax.set_ylim(0.0, 1.0)  # every plot the same range (softmax weights), so two of them compare at a glance
    ax.set_title(title, fontsize=9)
    ax.axhline(1 / n, color="grey", lw=0.8, ls=":", label="equal weights")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
