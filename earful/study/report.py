"""``earful study report``: the paper's tables and plots from a study's output folder.

Reads ``OUT/results.jsonl`` (one record per evaluated model and split, written by ``study run``) and each
pre-training run's ``valid.jsonl``; writes ``report.md``, CSVs and PNG plots into ``OUT/report/``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from earful.atomic import atomic_open, atomic_path, atomic_write_lines

log = logging.getLogger(__name__)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def mean_std(xs: list[float]) -> tuple[float, float, int]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan), len(xs)


def fmt_ms(xs: list[float], pct: bool = True) -> str:
    m, s, n = mean_std(xs)
    if n == 0:
        return "–"
    k = 100.0 if pct else 1.0
    if n == 1:
        return f"{m * k:.1f}" if pct else f"{m:.3f}"
    return f"{m * k:.1f} ± {s * k:.1f}" if pct else f"{m:.3f} ± {s:.3f}"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, head: list[str], rows: list[list[Any]]) -> None:
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(rows)


def _plot(path: Path, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    draw(ax)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."))
    plt.close(fig)


def compare(a: list[float], b: list[float]) -> str:
    """'lower' / 'higher' / 'no clear difference' for mean(a) vs mean(b), judged against the seed spread."""
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    if na == 0 or nb == 0:
        return "not measured"
    if ma == mb:
        return "equal"
    if na > 1 and nb > 1:
        se = math.sqrt(sa**2 / na + sb**2 / nb)
        if se > 0 and abs(ma - mb) < 2 * se:
            return "no clear difference (within 2 standard errors)"
        return ("lower" if ma < mb else "higher") + " (beyond 2 standard errors)"
    return ("lower" if ma < mb else "higher") + " (one seed: spread not measured)"


def build_report(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    rep = out / "report"
    (rep / "plots").mkdir(parents=True, exist_ok=True)
    results = read_jsonl(out / "results.jsonl")
    runs = {r["run"]: r for r in read_jsonl(out / "runs.jsonl")}
    study = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
    text = [f"# Study report: {study.get('name', out.name)}", ""]
    if study.get("plan"):
        text += ["## Runs", "", study["plan"], ""]

    # ---------------- pre-training curves and final validation metrics
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in runs:
        curves[name] = read_jsonl(out / "pretrain" / name / "valid.jsonl")
    by_batch: dict[float, list[str]] = defaultdict(list)
    for name, run in runs.items():
        by_batch[run["batch_seconds"]].append(name)
    batches = sorted(by_batch)
    rows, csv_rows = [], []
    for b in batches:
        finals = [curves[n][-1] for n in by_batch[b] if curves.get(n)]
        acc = [f["accuracy"] for f in finals]
        loss = [f["loss"] for f in finals]
        ppl = [statistics.fmean(v for k, v in f.items() if k.startswith("ppl_hard")) for f in finals]
        tag = runs[by_batch[b][0]]["tag"]
        steps = runs[by_batch[b][0]]["steps"]
        hours = runs[by_batch[b][0]]["hours"]
        rows.append([tag, f"{steps:,}", f"{hours:.3g}", fmt_ms(loss, False), fmt_ms(acc, False), fmt_ms(ppl, False)])
        for f, n in zip(finals, by_batch[b], strict=False):
            csv_rows.append([n, b, f["step"], f["hours"], f["loss"], f["accuracy"]])
    if rows:
        text += ["## Pre-training: final validation (held-out voices)", "",
                 md_table(["batch", "steps", "hours (batch × steps)", "loss / masked frame", "accuracy",
                           "hard perplexity"], rows),
                 "", f"Chance accuracy is about 1/(K+1); {len(study.get('seeds', [1]))} seed(s) per batch size "
                 "(mean ± standard deviation where there are several). Distractors whose code equals the "
                 "target's are masked out, so a narrow codebook (low perplexity) inflates accuracy: compare "
                 "accuracies only at similar perplexity.", ""]
        write_csv(rep / "pretrain_valid.csv", ["run", "batch_seconds", "step", "hours", "loss", "accuracy"], csv_rows)
    for key, label in (("loss", "validation loss per masked frame"), ("accuracy", "validation contrastive accuracy"),
                       ("ppl", "validation hard codebook perplexity (mean over groups)")):
        for xkey, xlabel in (("step", "optimizer steps"), ("hours", "hours of audio seen")):
            def draw(ax, key=key, xkey=xkey, label=label, xlabel=xlabel):
                for name in sorted(curves, key=lambda n: runs[n]["batch_seconds"]):
                    c = curves[name]
                    if not c:
                        continue
                    ys = [statistics.fmean(v for k, v in r.items() if k.startswith("ppl_hard")) if key == "ppl"
                          else r[key] for r in c]
                    ax.plot([r[xkey] for r in c], ys, marker="o", ms=3, label=name)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(label)
                if xkey == "hours":
                    ax.set_xscale("log")
                ax.legend(fontsize=7)
            _plot(rep / "plots" / f"valid_{key}_vs_{xkey}.png", draw)

    # ---------------- fine-tuning WER
    ft = [r for r in results if r.get("split")]
    splits = sorted({r["split"] for r in ft})
    label_sets = sorted({r["label_set"] for r in ft})
    main_split = main_split_of(splits)
    if main_split:
        text += [f"## WER after fine-tuning (`{main_split}`, greedy decoding, %)", ""]
        head = ["pre-training", "hours seen (padded audio)"] + label_sets
        rows, csv_rows = [], []
        groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        hours_of: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in ft:
            if r["split"] != main_split:
                continue
            key = (r.get("tag", r["pretrain"]), r["checkpoint"])
            groups[key][r["label_set"]].append(r["wer"])
            hours_of[key].append(r.get("hours", 0.0))
            csv_rows.append([r["pretrain"], r.get("batch_seconds"), r["checkpoint"], r.get("hours"), r["label_set"],
                             r["split"], r["wer"], r["cer"]])

        def order(k):
            tag, ck = k
            return (0 if tag.startswith("scratch") else 1, runs_batch(tag), ck)

        def runs_batch(tag):
            for run in runs.values():
                if run["tag"] == tag:
                    return run["batch_seconds"]
            return -1

        cer_groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in ft:
            if r["split"] == main_split:
                cer_groups[(r.get("tag", r["pretrain"]), r["checkpoint"])][r["label_set"]].append(r["cer"])
        cer_rows = []
        for key in sorted(groups, key=order):
            tag, ck = key
            h = statistics.fmean(hours_of[key]) if hours_of[key] else 0.0
            rows.append([f"{tag} ({ck})", f"{h:.3g}"] + [fmt_ms(groups[key].get(ls, [])) for ls in label_sets])
            cer_rows.append([f"{tag} ({ck})", f"{h:.3g}"] + [fmt_ms(cer_groups[key].get(ls, [])) for ls in label_sets])
        text += [md_table(head, rows), "", f"CER (`{main_split}`, greedy, %):", "", md_table(head, cer_rows), ""]
        write_csv(rep / "wer.csv", ["pretrain", "batch_seconds", "checkpoint", "hours", "label_set", "split", "wer",
                                    "cer"], csv_rows)

        # WER / CER vs batch size (final checkpoints), one line per label set; and vs hours seen, one line per batch
        end = end_checkpoint(ft)
        finals = [r for r in ft if r["split"] == main_split and r["checkpoint"] == end and r.get("batch_seconds")]
        for metric in ("wer", "cer"):
            def draw_b(ax, metric=metric):
                for ls in label_sets:
                    pts = defaultdict(list)
                    for r in finals:
                        if r["label_set"] == ls:
                            pts[r["batch_seconds"]].append(r[metric] * 100)
                    xs = sorted(pts)
                    ax.errorbar(xs, [statistics.fmean(pts[x]) for x in xs],
                                yerr=[statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0 for x in xs], marker="o",
                                capsize=3, label=ls)
                ax.set_xscale("log")
                ax.set_xlabel("pre-training batch (seconds of audio)")
                ax.set_ylabel(f"{metric.upper()} % ({main_split})")
                ax.legend(fontsize=8)
            _plot(rep / "plots" / f"{metric}_vs_batch.png", draw_b)

            def draw_h(ax, metric=metric):
                for ls in label_sets[:1]:
                    # one point per (batch, checkpoint): mean over seeds (whose hours differ by a few frames)
                    per_b = defaultdict(lambda: defaultdict(list))
                    for r in ft:
                        if r["split"] == main_split and r["label_set"] == ls and r.get("batch_seconds"):
                            per_b[r["batch_seconds"]][r["checkpoint"]].append((r["hours"], r[metric] * 100))
                    for b in sorted(per_b):
                        pts = sorted((statistics.fmean(h for h, _ in v), [y for _, y in v]) for v in per_b[b].values())
                        ax.errorbar([x for x, _ in pts], [statistics.fmean(ys) for _, ys in pts],
                                    yerr=[statistics.stdev(ys) if len(ys) > 1 else 0 for _, ys in pts],
                                    marker="o", capsize=3, label=f"{b:g} s ({ls})")
                    scratch = [r[metric] * 100 for r in ft if r["split"] == main_split and r["label_set"] == ls
                               and r["pretrain"] == "scratch"]
                    if scratch:
                        ax.axhline(statistics.fmean(scratch), color="grey", ls="--", label=f"scratch ({ls})")
                ax.set_xscale("log")
                ax.set_xlabel("hours of (padded) audio seen in pre-training")
                ax.set_ylabel(f"{metric.upper()} % ({main_split})")
                ax.legend(fontsize=8)
            _plot(rep / "plots" / f"{metric}_vs_hours.png", draw_h)

        text += ["## Findings", ""] + findings(ft, runs, study, main_split, "wer") + findings(
            ft, runs, study, main_split, "cer")
    text += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in sorted((rep / "plots").glob("*.png"))]
    path = rep / "report.md"
    atomic_write_lines(path, text)
    log.info("report: %s", path)
    return path


def main_split_of(splits: list[str]) -> str | None:
    """The split the tables and findings report: ``test``, else the first ``test*`` (LibriSpeech: test-clean),
    else the first in sort order."""
    if "test" in splits:
        return "test"
    return next((s for s in sorted(splits) if s.startswith("test")), min(splits) if splits else None)


def end_checkpoint(ft: list[dict[str, Any]]) -> str:
    """The checkpoint a pre-training is compared by: ``final``, or ``best`` in a study that fine-tunes only
    the best (the paper's recipe)."""
    cks = {r["checkpoint"] for r in ft}
    return "final" if "final" in cks or "best" not in cks else "best"


def _per_batch(records: list[dict[str, Any]], ls: str, metric: str) -> dict[float, list[float]]:
    """``metric`` of the records on label set ``ls``, by pre-training batch size (one value per seed)."""
    per_b: dict[float, list[float]] = defaultdict(list)
    for r in records:
        if r["label_set"] == ls:
            per_b[r["batch_seconds"]].append(r[metric])
    return per_b


def _values(per_b: dict[float, list[float]]) -> str:
    """'8 s: 62.5 ± 2.7, 16 s: 71.7 ± 14.3' (percent, mean ± standard deviation over seeds)."""
    return ", ".join(f"{b:g} s: {fmt_ms(per_b[b])}" for b in sorted(per_b))


def _neighbours(per_b: dict[float, list[float]], name: str) -> str:
    """Each batch size against the next larger one, judged against the seed spread."""
    bs = sorted(per_b)
    return "; ".join(f"{bs[i]:g} s → {bs[i + 1]:g} s: {name} {compare(per_b[bs[i + 1]], per_b[bs[i]])}"
                     for i in range(len(bs) - 1))


def _equal_hours(what: str, ls: str, name: str, per_b: dict[float, list[float]]) -> str:
    """One finding line: the metric per batch size at equal hours seen, and each neighbour pair judged."""
    means = [statistics.fmean(v) for v in per_b.values()]
    seeds = max(len(v) for v in per_b.values())
    return (f"- **Equal hours seen ({what}), {ls}:** {name} by batch {_values(per_b)}"
            f" (spread {100 * (max(means) - min(means)):.1f} points" +
            ("; one seed, so the noise is not measured" if seeds < 2 else "") + f"); {_neighbours(per_b, name)}.")


def findings(ft: list[dict[str, Any]], runs: dict[str, Any], study: dict[str, Any], split: str,
             metric: str = "wer") -> list[str]:
    """The two questions of the paper, and pre-training vs scratch, answered from this study's numbers in
    ``metric`` (``wer`` or ``cer``: at small scale WER sits near 100 % and CER tells the models apart)."""
    name = metric.upper()
    out = [f"### In {name} (`{split}`)", ""]
    label_sets = sorted({r["label_set"] for r in ft})
    end = end_checkpoint(ft)
    finals = [r for r in ft if r["split"] == split and r["checkpoint"] == end and r.get("batch_seconds")]
    scratch = [r for r in ft if r["split"] == split and str(r["pretrain"]).startswith("scratch")]
    for ls in label_sets:
        per_b = _per_batch(finals, ls, metric)
        bs = sorted(per_b)
        if study.get("mode") == "fixed-steps" and len(bs) > 1:
            out.append(f"- **Fixed steps, {ls}:** {_neighbours(per_b, name)} ({_values(per_b)}).")
        for base in sorted({str(r["pretrain"]) for r in scratch}):
            sc = [r[metric] for r in scratch if r["label_set"] == ls and r["pretrain"] == base]
            if sc and bs:
                best = min(bs, key=lambda b: statistics.fmean(per_b[b]))
                out.append(f"- **Pre-training vs {base}, {ls}:** best pre-trained ({best:g} s) {name} "
                           f"{fmt_ms(per_b[best])} % vs {base} {fmt_ms(sc)} %: pre-trained is "
                           f"{compare(per_b[best], sc)}.")
    # equal steps across batch sizes (fixed-hours studies: a small batch's milestone vs a large batch's end)
    with_b = [r for r in ft if r["split"] == split and r.get("batch_seconds") and r.get("step")]
    for ls in label_sets if study.get("mode") != "fixed-steps" else []:
        # one group per (batch, checkpoint) over seeds; groups within 10 % of each other's steps are compared
        groups: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
        for r in with_b:
            if r["label_set"] == ls:
                groups[(r["batch_seconds"], r["checkpoint"])].append(r)
        mean_step = {key: statistics.fmean(r["step"] for r in rs) for key, rs in groups.items()}
        clusters: list[dict[float, tuple[float, str]]] = []  # batch -> its (batch, checkpoint) group
        for key in sorted(groups, key=mean_step.__getitem__):
            last = clusters[-1] if clusters else None
            if last and key[0] not in last and mean_step[key] <= 1.1 * min(mean_step[k] for k in last.values()):
                last[key[0]] = key
            else:
                clusters.append({key[0]: key})
        for cl in clusters:
            if len(cl) < 2:
                continue
            per_b = {b: [r[metric] for r in groups[key]] for b, key in cl.items()}
            steps = ", ".join(f"{b:g} s at step {mean_step[cl[b]]:.0f}" for b in sorted(cl))
            mid = sorted(f"{b:g} s" for b, key in cl.items() if key[1] != "final")
            caveat = (f" Caveat: {', '.join(mid)} is a checkpoint within its run, taken before its learning rate "
                      "had decayed (unless the schedule is cyclic and the milestone at one of its minima)."
                      if mid and any(key[1] == "final" for key in cl.values()) else "")
            out.append(f"- **Equal steps ({steps}), {ls}:** {_neighbours(per_b, name)} ({_values(per_b)}).{caveat}")
    for ls in label_sets if study.get("mode") == "fixed-hours" else []:
        per_b = _per_batch(finals, ls, metric)
        if len(per_b) > 1:
            out.append(_equal_hours(f"final, {study.get('hours')} h", ls, name, per_b))
    # equal hours seen: milestone checkpoints
    miles = [r for r in ft
             if r["split"] == split and str(r["checkpoint"]).startswith("hours-") and r.get("batch_seconds")]
    for ls in label_sets:
        per_h: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in miles:
            if r["label_set"] == ls:
                per_h[r["checkpoint"]][r["batch_seconds"]].append(r[metric])
        for ck, per_b in sorted(per_h.items()):
            if len(per_b) > 1:
                out.append(_equal_hours(ck, ls, name, per_b))
    out.append("")
    return out
