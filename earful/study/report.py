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
from earful.markdown import md_table

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


def write_csv(path: Path, head: list[str], rows: list[list[Any]]) -> None:
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(rows)


def _plot(path: Path, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    draw(ax)
    if ax.get_xscale() == "log":  # plain numbers at the decades, no crowded minor labels
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
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
    """``OUT/report/report.md`` with its CSVs and plots, section by section."""
    out = Path(out_dir)
    rep = out / "report"
    (rep / "plots").mkdir(parents=True, exist_ok=True)
    results = read_jsonl(out / "results.jsonl")
    every_run = {r["run"]: r for r in read_jsonl(out / "runs.jsonl")}
    study = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
    text = [f"# Study report: {study.get('name', out.name)}", ""]
    if study.get("plan"):
        text += ["## Runs", "", study["plan"], ""]
    text += scope_section(study)
    text += diverged_section(every_run, results)
    # a diverged run (or fine-tuning) is shown above and left out of every table, finding and claim below
    runs = {name: r for name, r in every_run.items() if not r.get("diverged")}
    curves = {name: read_jsonl(out / "pretrain" / name / "valid.jsonl") for name in runs}
    text += pretraining_section(curves, runs, study, rep)
    plot_validation_curves(curves, runs, rep)
    ft = [r for r in results if r.get("split") and not r.get("diverged")]
    main_split = main_split_of(sorted({r["split"] for r in ft}))
    probes = read_jsonl(out / "probes.jsonl")
    means = probe_means(probes)
    about = {upstream_of(r): r for r in probes}  # a record of each (upstream, checkpoint, seed)
    if probes:
        text += probe_section(probes, means, about, rep)
    if study.get("cycles"):
        text += claims_section(out, curves, runs, study, ft, main_split, means, about, rep)
    if main_split:
        text += finetuning_tables(ft, runs, main_split, rep)
        plot_finetuning(ft, main_split, rep)
        text += ["## Findings", ""] + findings(ft, runs, study, main_split, "wer") + findings(
            ft, runs, study, main_split, "cer")
    text += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in sorted((rep / "plots").glob("*.png"))]
    path = rep / "report.md"
    atomic_write_lines(path, text)
    log.info("report: %s", path)
    return path


def scope_section(study: dict[str, Any]) -> list[str]:
    """Which of the paper's claims (docs/paper.md §7) a study of this design can test, and which it cannot."""
    if not study:
        return []
    seeds, cycles, mode = len(study.get("seeds", [1])), study.get("cycles", 0), study.get("mode")
    batches = len({float(g) if isinstance(g, int | float) else float(g["batch_seconds"])
                   for g in study.get("grid", [])})
    # what earful/study/claims.py needs: C1 and C4 compare two batch sizes, C2, C6 and C7 three
    need = {"C1": 2, "C4": 2, "C2": 3, "C6": 3, "C7": 3}
    can, cannot = [], []
    if mode == "fixed-steps" and cycles:
        can.append((("C1", "C2"), "every batch size the same steps, compared at each cycle minimum"))
        can.append((("C4",), "equal hours as (B, T) against (2B, T/2) at cycle minima") if cycles >= 2 else ((), ""))
    elif mode == "fixed-steps":
        can.append((("C1", "C2"), "at the final step (a decayed schedule: only the end is comparable)"))
        cannot.append("C4: equal hours needs checkpoints at (B, T) and (2B, T/2) — use `cycles`")
    else:
        can.append((("C4",), "at the final checkpoints (every batch size the same hours)"))
        cannot.append("C1 and C2 cleanly: equal steps pair a mid-run milestone, whose lr had not decayed, with a "
                      "finished run — use `mode: fixed-steps` with `cycles` (the paper's design)")
    if study.get("gradvar_batches"):
        can.append((("C6",), "gradient noise against batch"))
    else:
        cannot.append("C6: set `gradvar_batches`")
    can.append((("C7",), "codebook perplexity and codeword similarity against batch"))
    few = sorted({c for claims, _ in can for c in claims if batches < need[c]})
    can = [f"{' and '.join(ok)} ({why})" for claims, why in can
           if (ok := [c for c in claims if batches >= need[c]]) and why]
    if few:
        cannot.append(f"{', '.join(few)}: the grid has {batches} batch size(s) (C1 and C4 need 2; C2, C6 and C7 "
                      "need 3)")
    lines = ["## What this study can test", "",
             f"Design: {mode}{f', {cycles} cyclic cycles' if cycles else ''}, {seeds} seed(s)"
             f"{', probes of frozen features' if study.get('probes') else ''}. It can test: "
             f"{'; '.join(can) or 'none of the claims'}."
             + (f" It cannot test: {'; '.join(cannot)}." if cannot else "")]
    if seeds < 2:
        lines.append("With one seed no difference is judged beyond noise: C1, C2, C4 and C7 are *inconclusive*; "
                     "C6's slope is taken over batch sizes, each from one run. At CPU scale the seed-to-seed spread "
                     "is large (docs/paper-at-cpu-scale.md): quote ranges over seeds.")
    return lines + [""]


def diverged_section(runs: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """The pre-trainings and fine-tunings that diverged at their last step (non-finite steps or validation):
    a result of the grid (a large lr may diverge), listed here and left out of the statistics."""
    pre = [f"{name} ({r.get('diverged_because', 'non-finite')})" for name, r in runs.items() if r.get("diverged")]
    fine = sorted({f"{r['pretrain']} ({r['checkpoint']}) on {r['label_set']}" for r in results if r.get("diverged")})
    if not pre and not fine:
        return []
    return ["## Diverged runs", "",
            *([f"Pre-trainings that diverged: {'; '.join(pre)}. Their checkpoints were not fine-tuned, probed or "
               "measured."] if pre else []),
            *([f"Fine-tunings that diverged: {'; '.join(fine)}."] if fine else []),
            "They are left out of every table, finding and claim below (the claims' statistics are over the runs "
            "that did not diverge).", ""]


ProbedModel = tuple[str, str, Any]  # (pretrain run or baseline, checkpoint, run seed): one probed model


def upstream_of(record: dict[str, Any]) -> ProbedModel:
    """The model a probe record measured: every seed has its own random init (one ``random-init`` name)."""
    return record["pretrain"], record["checkpoint"], record.get("seed")


def probe_means(probes: list[dict[str, Any]]) -> dict[ProbedModel, dict[str, float]]:
    """``{(upstream, checkpoint, seed): {"task.metric": mean over probe seeds}}``."""
    values: dict[ProbedModel, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in probes:
        values[upstream_of(r)][f"{r['task']}.{r['metric']}"].append(r["value"])
    return {k: {m: statistics.fmean(v) for m, v in ms.items()} for k, ms in values.items()}


def probe_section(probes: list[dict[str, Any]], means: dict[ProbedModel, dict[str, float]],
                  about: dict[ProbedModel, dict[str, Any]], rep: Path) -> list[str]:
    """Probe metrics per upstream (mean ± sd over run seeds, each the mean over probe seeds; %), the baselines
    first; whether each pre-trained final model has learned (beats both baselines on PR and IC); plots of each
    metric against hours seen, one line per batch size, the baselines as dashed lines; ``probes.csv``."""
    from earful.probe.report import METRICS

    metrics = [f"{t}.{m}" for t, ms in METRICS.items() for m in ms if any(f"{t}.{m}" in v for v in means.values())]
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    place: dict[tuple[str, str], tuple[float, int]] = {}  # (batch seconds, step) of each row, for the order
    for key, ms in means.items():
        r = about[key]
        place[(r["tag"], r["checkpoint"])] = (r["batch_seconds"] or 0.0, r["step"])
        for m, v in ms.items():
            groups[(r["tag"], r["checkpoint"])][m].append(v)
    order = sorted(groups, key=lambda k: (k[0] not in ("random-init", "fbank"), *place[k]))
    arrow = {f"{t}.{m}": "↑" if up else "↓" for t, ms in METRICS.items() for m, up in ms.items()}
    rows = [[f"{tag} ({ck})"] + [fmt_ms(groups[(tag, ck)].get(m, [])) for m in metrics] for tag, ck in order]
    text = ["## Probes of frozen features (docs/probes.md; test split, %)", "",
            md_table(["upstream"] + [f"{m} {arrow[m]}" for m in metrics], rows), ""]
    text += learned_lines(means, about)
    write_csv(rep / "probes.csv", ["pretrain", "batch_seconds", "seed", "checkpoint", "step", "hours", "probe_seed",
                                   "task", "metric", "value"],
              [[r.get(k) for k in ("pretrain", "batch_seconds", "seed", "checkpoint", "step", "hours", "probe_seed",
                                   "task", "metric", "value")] for r in probes])
    for m in metrics:
        plot_probe_metric(means, about, m, rep)
    return text + [""]


def baseline(means: dict[ProbedModel, dict[str, float]], name: str, metric: str) -> float | None:
    """The mean of ``metric`` over the baseline upstream ``name`` (``random-init`` or ``fbank``), if measured."""
    vals = [v[metric] for (p, _, _), v in means.items() if p == name and metric in v]
    return statistics.fmean(vals) if vals else None


def learned_lines(means: dict[ProbedModel, dict[str, float]], about: dict[ProbedModel, dict[str, Any]]
                  ) -> list[str]:
    """The probes' test of learning: a final model beats the random init and filterbanks on PR and IC."""
    per, ic = ([x for x in (baseline(means, name, metric) for name in ("random-init", "fbank")) if x is not None]
               for metric in ("pr.per", "ic.accuracy"))
    if len(per) < 2 or len(ic) < 2:
        return []
    finals = {p: v for (p, ck, _), v in means.items() if ck == "final" and "pr.per" in v and "ic.accuracy" in v}
    learned = [p for p, v in finals.items() if v["pr.per"] < min(per) and v["ic.accuracy"] > max(ic)]
    missing = sorted(set(finals) - set(learned))
    return [f"Learned (beats both the random init and filterbanks on PR and IC, docs/probes.md): {len(learned)} of "
            f"{len(finals)} final models" + (f"; not: {', '.join(missing)}" if missing else "") + ".", ""]


def plot_probe_metric(means: dict[ProbedModel, dict[str, float]], about: dict[ProbedModel, dict[str, Any]],
                      metric: str, rep: Path) -> None:
    """``metric`` against hours seen (log), one line per batch size (mean over run seeds), baselines dashed."""
    def draw(ax):
        per_b: dict[float, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for key, ms in means.items():
            r = about[key]
            if metric in ms and r["batch_seconds"]:
                per_b[r["batch_seconds"]][r["hours"]].append(100 * ms[metric])
        for b in sorted(per_b):
            xs = sorted(per_b[b])
            ax.plot(xs, [statistics.fmean(per_b[b][x]) for x in xs], marker="o", ms=3, label=f"{b:g} s")
        for name, style in (("random-init", "--"), ("fbank", ":")):
            if (level := baseline(means, name, metric)) is not None:
                ax.axhline(100 * level, color="grey", ls=style, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("hours of audio seen (batch × steps)")
        ax.set_ylabel(f"{metric} % (test)")
        ax.legend(fontsize=7)
    _plot(rep / "plots" / f"probe_{metric.replace('.', '_')}_vs_hours.png", draw)


def design_rows(curves: dict[str, list[dict[str, Any]]], runs: dict[str, Any], study: dict[str, Any],
                ft: list[dict[str, Any]], main_split: str | None,
                means: dict[ProbedModel, dict[str, float]] | None = None,
                about: dict[ProbedModel, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per (planned run, cycle minimum or final step) where anything was measured: batch, seed, step,
    hours (batch × steps) and every metric measured there — validation loss, accuracy and perplexity, test CER
    per label set, probe metrics. A checkpoint probed or fine-tuned at a step without validation has its row."""
    minima = {int(s) for s in study.get("cycle_minima", [])}
    rows: dict[tuple[str, int], dict[str, Any]] = {}

    def row(name: str, step: Any) -> dict[str, Any] | None:
        run = runs.get(name)
        if run is None or step is None or not (int(step) in minima or int(step) == run["steps"]):
            return None
        return rows.setdefault((name, int(step)), {
            "run": name, "batch_seconds": run["batch_seconds"], "seed": run["seed"], "step": int(step),
            "hours": run["batch_seconds"] * int(step) / 3600})

    for name in runs:
        for rec in curves.get(name, []):
            if (at := row(name, rec["step"])) is not None:
                ppl = [v for k, v in rec.items() if k.startswith("ppl_hard")]
                at.update(valid_loss=rec["loss"], valid_accuracy=rec["accuracy"],
                          valid_perplexity=statistics.fmean(ppl) if ppl else None)
    for r in ft:
        if r["split"] == main_split and r.get("batch_seconds") and (at := row(r["pretrain"], r.get("step"))):
            at[f"cer_{r['label_set']}"] = r["cer"]
    for key, ms in (means or {}).items():  # probe metrics, by the record of each probed model
        if (at := row(key[0], about[key]["step"])) is not None:
            at.update(ms)
    return sorted(rows.values(), key=lambda r: (r["batch_seconds"], r["seed"], r["step"]))


def claims_section(out: Path, curves: dict[str, list[dict[str, Any]]], runs: dict[str, Any], study: dict[str, Any],
                   ft: list[dict[str, Any]], main_split: str | None,
                   means: dict[ProbedModel, dict[str, float]], about: dict[ProbedModel, dict[str, Any]],
                   rep: Path) -> list[str]:
    """The paper's claims (docs/paper.md §7) judged on this study's grid: a verdict per claim and metric."""
    from earful.probe.report import METRICS
    from earful.study.claims import judge, judge_c6, judge_c7

    rows = design_rows(curves, runs, study, ft, main_split, means, about)
    metrics = {"valid_loss": False, "valid_accuracy": True}
    metrics.update({f"{t}.{m}": up for t, ms in METRICS.items() for m, up in ms.items()
                    if any(f"{t}.{m}" in r for r in rows)})
    metrics.update({k: False for r in rows for k in r if k.startswith("cer_")})
    verdicts = judge(rows, metrics)
    # the planned runs' records only (a study rerun with fewer seeds keeps the others' files)
    grads = [read_json(p) for name in runs if (p := out / "gradvar" / f"{name}.json").exists()]
    if grads:
        verdicts.append(judge_c6([(g["batch_seconds"], g["mean_param_grad_std"]) for g in grads]))
    ppl: dict[float, list[float]] = defaultdict(list)
    sim: dict[float, list[float]] = defaultdict(list)
    for name, run in runs.items():
        train = read_jsonl(out / "pretrain" / name / "train.jsonl")
        if curves.get(name) and train:
            ppl[run["batch_seconds"]].append(statistics.fmean(
                v for k, v in curves[name][-1].items() if k.startswith("ppl_hard")))
            sim[run["batch_seconds"]].append(statistics.fmean(
                v for k, v in train[-1].items() if k.startswith("codeword_sim_") and k.endswith("_mean")))
    if ppl:
        verdicts.append(judge_c7(ppl, sim))
    write_csv(rep / "design.csv", sorted({k for r in rows for k in r}), [
        [r.get(k) for k in sorted({k for r in rows for k in r})] for r in rows])
    text = ["## The paper's claims at this scale (docs/paper.md §7)", "",
            f"Every batch size trained {study.get('steps')} steps on a cyclic schedule of {study['cycles']} cycles; "
            f"checkpoints at the cycle minima (steps {', '.join(map(str, study.get('cycle_minima', [])))}) and the "
            f"end; {len(study.get('seeds', [1]))} seed(s). Verdicts are computed from the numbers "
            "(earful/study/claims.py states the rules); the rows behind them are in design.csv.", "",
            md_table(["claim", "metric", "verdict", "evidence"],
                     [[v.claim, v.metric, f"**{v.verdict}**", v.evidence.replace("|", "/")] for v in verdicts]), ""]
    return text


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def pretraining_section(curves: dict[str, list[dict[str, Any]]], runs: dict[str, Any], study: dict[str, Any],
                        rep: Path) -> list[str]:
    """The final validation metrics per batch size (mean ± sd over seeds), and ``pretrain_valid.csv``."""
    by_batch: dict[float, list[str]] = defaultdict(list)
    for name, run in runs.items():
        by_batch[run["batch_seconds"]].append(name)
    rows, csv_rows = [], []
    for b in sorted(by_batch):
        named = [(n, curves[n][-1]) for n in by_batch[b] if curves.get(n)]  # the runs with validation records
        finals = [f for _, f in named]
        acc = [f["accuracy"] for f in finals]
        loss = [f["loss"] for f in finals]
        ppl = [statistics.fmean(v for k, v in f.items() if k.startswith("ppl_hard")) for f in finals]
        first = runs[by_batch[b][0]]
        rows.append([first["tag"], f"{first['steps']:,}", f"{first['hours']:.3g}", fmt_ms(loss, False),
                     fmt_ms(acc, False), fmt_ms(ppl, False)])
        for n, f in named:
            csv_rows.append([n, b, f["step"], f["hours"], f["loss"], f["accuracy"]])
    if not rows:
        return []
    write_csv(rep / "pretrain_valid.csv", ["run", "batch_seconds", "step", "hours", "loss", "accuracy"], csv_rows)
    return ["## Pre-training: final validation (held-out voices)", "",
            md_table(["batch", "steps", "hours (batch × steps)", "loss / masked frame", "accuracy",
                      "hard perplexity"], rows),
            "", f"Chance accuracy is about 1/(K+1); {len(study.get('seeds', [1]))} seed(s) per batch size "
            "(mean ± standard deviation where there are several). Distractors whose code equals the "
            "target's are masked out, so a narrow codebook (low perplexity) inflates accuracy: compare "
            "accuracies only at similar perplexity.", ""]


def plot_validation_curves(curves: dict[str, list[dict[str, Any]]], runs: dict[str, Any], rep: Path) -> None:
    """Validation loss, accuracy and perplexity against steps and against hours seen, one line per run."""
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


def finetuning_tables(ft: list[dict[str, Any]], runs: dict[str, Any], main_split: str, rep: Path) -> list[str]:
    """WER and CER on the main split by pre-training (and checkpoint) × label set, and ``wer.csv``."""
    label_sets = sorted({r["label_set"] for r in ft})
    head = ["pre-training", "hours seen (padded audio)"] + label_sets
    groups = {m: defaultdict(lambda: defaultdict(list)) for m in ("wer", "cer")}
    hours: dict[tuple[str, str], list[float]] = defaultdict(list)
    csv_rows = []
    for r in ft:
        if r["split"] != main_split:
            continue
        key = (r.get("tag", r["pretrain"]), r["checkpoint"])
        for m in groups:
            groups[m][key][r["label_set"]].append(r[m])
        hours[key].append(r.get("hours", 0.0))
        csv_rows.append([r["pretrain"], r.get("batch_seconds"), r["checkpoint"], r.get("hours"), r["label_set"],
                         r["split"], r["wer"], r["cer"]])
    batch_of = {run["tag"]: run["batch_seconds"] for run in reversed(list(runs.values()))}
    keys = sorted(groups["wer"], key=lambda k: (0 if k[0].startswith("scratch") else 1, batch_of.get(k[0], -1), k[1]))
    tables = {}
    for m, g in groups.items():
        tables[m] = [[f"{tag} ({ck})", f"{statistics.fmean(hours[(tag, ck)]) if hours[(tag, ck)] else 0.0:.3g}"]
                     + [fmt_ms(g[(tag, ck)].get(ls, [])) for ls in label_sets] for tag, ck in keys]
    write_csv(rep / "wer.csv", ["pretrain", "batch_seconds", "checkpoint", "hours", "label_set", "split", "wer",
                                "cer"], csv_rows)
    return [f"## WER after fine-tuning (`{main_split}`, greedy decoding, %)", "", md_table(head, tables["wer"]), "",
            f"CER (`{main_split}`, greedy, %):", "", md_table(head, tables["cer"]), ""]


def plot_finetuning(ft: list[dict[str, Any]], main_split: str, rep: Path) -> None:
    """WER / CER against batch size (final checkpoints, one line per label set) and against hours seen (one
    line per batch size, the first label set, scratch as a dashed line)."""
    label_sets = sorted({r["label_set"] for r in ft})
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
    on_split = [r for r in ft if r["split"] == split]
    label_sets = sorted({r["label_set"] for r in ft})
    out = [f"### In {name} (`{split}`)", ""]
    out += _fixed_steps_and_scratch(on_split, study, label_sets, metric)
    if study.get("mode") != "fixed-steps":  # a small batch's milestone vs a large batch's end
        out += _equal_steps(on_split, label_sets, metric)
    if study.get("mode") == "fixed-hours":
        finals = _finals(on_split)
        for ls in label_sets:
            per_b = _per_batch(finals, ls, metric)
            if len(per_b) > 1:
                out.append(_equal_hours(f"final, {study.get('hours')} h", ls, name, per_b))
    out += _milestones(on_split, label_sets, metric)
    out.append("")
    return out


def _finals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pre-trained models' records at the checkpoint runs are compared by."""
    end = end_checkpoint(records)
    return [r for r in records if r["checkpoint"] == end and r.get("batch_seconds")]


def _fixed_steps_and_scratch(records: list[dict[str, Any]], study: dict[str, Any], label_sets: list[str],
                             metric: str) -> list[str]:
    name, out = metric.upper(), []
    finals = _finals(records)
    scratch = [r for r in records if str(r["pretrain"]).startswith("scratch")]
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
    return out


def _equal_steps(records: list[dict[str, Any]], label_sets: list[str], metric: str) -> list[str]:
    """Checkpoints of different batch sizes within 10 % of each other's steps, compared (fixed-hours studies)."""
    name, out = metric.upper(), []
    with_b = [r for r in records if r.get("batch_seconds") and r.get("step")]
    for ls in label_sets:
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
        for cl in (c for c in clusters if len(c) > 1):
            per_b = {b: [r[metric] for r in groups[key]] for b, key in cl.items()}
            steps = ", ".join(f"{b:g} s at step {mean_step[cl[b]]:.0f}" for b in sorted(cl))
            mid = sorted(f"{b:g} s" for b, key in cl.items() if key[1] != "final")
            caveat = (f" Caveat: {', '.join(mid)} is a checkpoint within its run, taken before its learning rate "
                      "had decayed (unless the schedule is cyclic and the milestone at one of its minima)."
                      if mid and any(key[1] == "final" for key in cl.values()) else "")
            out.append(f"- **Equal steps ({steps}), {ls}:** {_neighbours(per_b, name)} ({_values(per_b)}).{caveat}")
    return out


def _milestones(records: list[dict[str, Any]], label_sets: list[str], metric: str) -> list[str]:
    """Equal hours seen: the milestone checkpoints of different batch sizes."""
    miles = [r for r in records if str(r["checkpoint"]).startswith("hours-") and r.get("batch_seconds")]
    out = []
    for ls in label_sets:
        per_h: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in miles:
            if r["label_set"] == ls:
                per_h[r["checkpoint"]][r["batch_seconds"]].append(r[metric])
        for ck, per_b in sorted(per_h.items()):
            if len(per_b) > 1:
                out.append(_equal_hours(ck, ls, metric.upper(), per_b))
    return out
