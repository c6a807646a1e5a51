"""``earful study report``: the paper's tables and plots from a study's output folder.

Reads ``OUT/results.jsonl`` (one record per evaluated model and split, written by ``study run``), each
pre-training run's ``valid.jsonl`` and its checkpoints' ``trainer.json``; writes ``report.md``, CSVs and PNG
plots into ``OUT/report/``.

Every ``±`` in the report is one standard error of the mean over seeds (SD/√n, as ``claims.Cell.se``), and every
table and plot says so. Two hours are kept apart: **nominal** hours (``hours_nominal``: batch × steps, what the
plan, the milestones and the paper count) and **padded** hours (``hours_padded``: the audio the batches really
held, padding included, from the trainer; batches are rarely full, so it is less).
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
from earful.study.config import FBANK_TAG, RANDOM_INIT_TAG, RESERVED_TAGS
from earful.train.config import nominal_hours
from earful.train.monitor import read_jsonl

log = logging.getLogger(__name__)

NOMINAL = "hours, nominal (batch × steps)"
PADDED = "hours, padded (audio fed)"
# what a probe metric is called on a plot's axis
METRIC_LABELS = {"pr.per": "phoneme error rate (PR probe, test) %", "asr.wer": "word error rate (ASR probe, test) %",
                 "asr.cer": "character error rate (ASR probe, test) %",
                 "sid.accuracy": "speaker identification accuracy (SID probe, labelled-10h) %",
                 "sid.eer": "speaker verification EER (SID probe, test) %",
                 "ic.accuracy": "intent accuracy (IC probe, test) %"}
GAIN_NAMES = {"valid_loss": "validation loss", "valid_accuracy": "validation accuracy"}  # the gain plot's titles
SEED_STYLES = ("-", "--", ":", "-.")
SEED_MARKERS = ("o", "s", "^", "D", "v", "P")


def read_records(path: Path) -> list[dict[str, Any]]:
    """A run's ``train.jsonl`` / ``valid.jsonl`` or a study's ``results.jsonl`` / ``probes.jsonl``: the padded
    hours seen under ``hours_padded``, in files written before it had that name (``hours``) too."""
    records = read_jsonl(path)
    for r in records:
        if "hours_padded" not in r and "hours" in r:
            r["hours_padded"] = r.pop("hours")
    return records


def _finite(xs: list[float]) -> list[float]:
    return [x for x in xs if x is not None and math.isfinite(x)]


def mean_se(xs: list[float]) -> tuple[float, float, int]:
    """(mean, standard error of the mean (``claims.Cell.se``: SD/√n), n) of the finite values."""
    from earful.study.claims import Cell

    cell = Cell(_finite(xs))
    return (cell.mean, cell.se, len(cell.values)) if cell.values else (math.nan, math.nan, 0)


def fmt_ms(xs: list[float], pct: bool = True) -> str:
    """'mean ± SE' over the values (percent by default); the mean alone for one value."""
    m, se, n = mean_se(xs)
    if n == 0:
        return "–"
    k = 100.0 if pct else 1.0
    if n == 1:
        return f"{m * k:.1f}" if pct else f"{m:.3f}"
    from earful.study.claims import denoise

    places = 1 if pct else 3
    se = denoise(se, m)  # float noise (0.1 + 0.2 beside 0.3) is no spread
    if 0 < se * k < 0.5 * 10.0**-places:  # a spread the usual places round to 0, read as none: 2 significant digits
        places = 1 - math.floor(math.log10(se * k))
    return f"{m * k:.{places}f} ± {se * k:.{places}f}"


def over_seeds(counts: list[int], seeds: str = "seeds") -> str:
    """What a table's ± is, from how many values each cell has: 'mean ± SE over 3 seeds' (``seeds``: what they
    are seeds of, as 'run seeds' where each value is itself a mean over probe seeds)."""
    many = [c for c in counts if c > 1]
    if not many:
        return f"one {seeds.removesuffix('s')}: no ± (the spread is not measured)"
    lo, hi = min(many), max(many)
    n = f"{hi}" if lo == hi else f"{lo}–{hi}"
    return f"mean ± SE over {n} {seeds}" + (f"; a value without ± is one {seeds.removesuffix('s')}"
                                            if min(counts) == 1 else "")


def probe_seeds_said(probes: list[dict[str, Any]]) -> str:
    """The words for a probe table or plot whose values are means over several probe seeds ("" for one)."""
    k = len({r.get("probe_seed") for r in probes})
    return f"; each value the mean of {k} probe seeds" if k > 1 else ""


def write_csv(path: Path, head: list[str], rows: list[list[Any]]) -> None:
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(rows)


def padded_hours(out: Path, runs: dict[str, Any]) -> dict[tuple[str, int], float]:
    """``{(run, step): hours_padded}`` from every checkpoint's ``trainer.json`` (the audio the batches held)."""
    found: dict[tuple[str, int], float] = {}
    for name in runs:
        for info in sorted((out / "pretrain" / name / "checkpoints").glob("*/trainer.json")):
            rec = json.loads(info.read_text(encoding="utf-8"))
            if "hours_padded" in rec and "step" in rec:
                found[(name, int(rec["step"]))] = float(rec["hours_padded"])
    return found


# ---------------------------------------------------------------------- plots
def _save_figure(fig, path: Path) -> None:
    """Write ``fig`` with its labels, title and outside legend inside the image (a tight bounding box)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), bbox_inches="tight", pad_inches=0.1)


def _plot(path: Path, draw) -> None:
    """One plot: ``draw(ax)`` draws it and its title, and may return the legend's handles (else the labelled
    artists make it); the legend goes outside the axes, on the right, where it covers no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.4), dpi=110)
    handles = draw(ax)
    ax.grid(True, alpha=0.3)
    if handles or ax.get_legend_handles_labels()[0]:
        ax.legend(**({"handles": handles} if handles else {}), fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False)
    ax.title.set_fontsize(9.5)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def batch_colours(batches: list[float]) -> dict[float, Any]:
    """A colour per batch size from a sequential colormap (light = small, dark = large), the same in every plot."""
    from matplotlib import colormaps

    bs = sorted(set(batches))
    cmap = colormaps["viridis_r"]
    return {b: cmap(0.15 + 0.8 * (i / (len(bs) - 1) if len(bs) > 1 else 0.5)) for i, b in enumerate(bs)}


def _log_axis(ax, ticks: list[float], labels: list[str]) -> None:
    """Log x with ticks at ``ticks`` only, labelled as given (no 8×10⁰, no crowded minor labels)."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ticker.FixedFormatter(labels))
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def batch_axis(ax, batches: list[float]) -> None:
    """Log x with a tick at every batch size: 4 s, 8 s, 16 s, …"""
    bs = sorted(set(batches))
    _log_axis(ax, bs, [f"{b:g} s" for b in bs])
    ax.set_xlabel("pre-training batch (seconds of audio)")


def hours_ticks(xs: list[float]) -> list[float]:
    """Round ticks (1, 2, 5 a decade; every digit where that gives fewer than 3) across the positive ``xs``, and
    the next one of the series past an end of the data that the ticks would leave unlabelled (the demo's
    0.61-1.41 h had ticks to 1.0 only, its final checkpoints past the last label)."""
    pos = [x for x in xs if x > 0]
    if not pos:
        return []
    lo, hi = min(pos), max(pos)
    for mults in ((1, 2, 5), tuple(range(1, 10))):
        series = [round(m * 10.0**e, 12) for e in range(math.floor(math.log10(lo)) - 2, math.ceil(math.log10(hi)) + 2)
                  for m in mults]
        ticks = [t for t in series if lo / 1.12 <= t <= hi * 1.12]
        if len(ticks) >= 3:
            break
    if not ticks or ticks[-1] < hi / 1.12:
        ticks.append(min(t for t in series if t >= hi))
    if ticks[0] > lo * 1.12:
        ticks.insert(0, max(t for t in series if t <= lo))
    return ticks


def hours_axis(ax, xs: list[float], which: str) -> None:
    """Log x of hours seen, ``which`` being NOMINAL or PADDED, with round decimal ticks, every one in view."""
    ticks = hours_ticks(xs)
    _log_axis(ax, ticks, [f"{t:g}" for t in ticks])
    pos = [x for x in xs if x > 0]
    if ticks and pos:
        ax.set_xlim(min(ticks[0], min(pos) / 1.05), max(ticks[-1], max(pos) * 1.05))
    ax.set_xlabel(f"hours of audio seen in pre-training, {which.removeprefix('hours, ')}")


def _errorbar(ax, xs: list[float], cells: list[list[float]], **kw) -> None:
    """Means with ±1 SE bars (no bar for a single value)."""
    stats = [mean_se(c) for c in cells]
    ax.errorbar(xs, [m for m, _, _ in stats], yerr=[se if n > 1 else 0.0 for _, se, n in stats], capsize=3, **kw)


def _level(ax, values: list[float], label: str, colour: str, style: str) -> None:
    """A baseline's mean as a horizontal line, and its ±1 SE as a band where there are several values."""
    m, se, n = mean_se(values)
    if n == 0:
        return
    ax.axhline(m, color=colour, ls=style, lw=1.3, label=label + (f" (± SE, {n} seeds)" if n > 1 else ""))
    if n > 1:
        ax.axhspan(m - se, m + se, color=colour, alpha=0.18, lw=0)


def compare(a: list[float], b: list[float]) -> str:
    """'lower' / 'higher' / 'no clear difference' for mean(a) vs mean(b), judged against the seed spread."""
    ma, sea, na = mean_se(a)
    mb, seb, nb = mean_se(b)
    from earful.study.claims import beyond_2se, denoise

    if na == 0 or nb == 0:
        return "not measured"
    if denoise(ma - mb, max(abs(ma), abs(mb))) == 0:  # float noise too, as the claims' gains
        return "equal"
    if na > 1 and nb > 1:
        se = math.sqrt(sea**2 + seb**2)  # as claims' gains
        if se == 0:  # no spread is no measure of the noise, not an infinitely clear difference
            return ("lower" if ma < mb else "higher") + " (no spread over seeds: not judged)"
        if not beyond_2se(abs(ma - mb), se):
            return "no clear difference (within 2 standard errors)"
        return ("lower" if ma < mb else "higher") + BEYOND
    return ("lower" if ma < mb else "higher") + " (one seed: spread not measured)"


BEYOND = " (beyond 2 standard errors)"  # compare's call of a difference


def check_finished(out: Path) -> None:
    """A report is of a study folder whose study has finished: a folder without ``study.json`` (a typo) or a study
    stopped before its end (``runs.jsonl`` and ``results.jsonl`` are written when it ends) gave a report of empty
    tables and blank plots, and exit 0."""
    if not (out / "study.json").is_file():
        raise FileNotFoundError(f"{out}: not a study folder (no study.json); `earful study run STUDY.yaml --out {out}` "
                                "makes one")
    missing = [name for name in ("runs.jsonl", "results.jsonl") if not (out / name).is_file()]
    if missing:
        raise RuntimeError(f"{out}: the study has not finished ({' and '.join(missing)}, written when it ends, "
                           f"{'is' if len(missing) == 1 else 'are'} missing): rerun `earful study run STUDY.yaml --out "
                           f"{out}`, with the study's YAML, to continue it: the finished stages are kept, and the "
                           "report is written at the end")


def build_report(out_dir: str | Path) -> Path:
    """``OUT/report/report.md`` with its CSVs and plots, section by section, of a finished study."""
    out = Path(out_dir)
    check_finished(out)
    rep = out / "report"
    (rep / "plots").mkdir(parents=True, exist_ok=True)
    results = read_records(out / "results.jsonl")
    every_run = {r["run"]: r for r in read_jsonl(out / "runs.jsonl")}
    study = json.loads((out / "study.json").read_text())
    text = [f"# Study report: {study.get('name', out.name)}", ""]
    if study.get("plan"):
        text += ["## Runs", "", study["plan"], "",
                 "The hours of this table are nominal: batch × steps, what the plan, the milestones and the paper "
                 "count. Batches are rarely full, so the audio they held (the padded hours, `hours_padded` in the "
                 "CSVs, from each checkpoint's trainer.json) is less; the tables below give both.", ""]
    text += unfinished_section(study, every_run, read_records(out / "probes.jsonl"), out)
    text += scope_section(study)
    text += diverged_section(every_run, results)
    # a diverged run (or fine-tuning) is shown above and left out of every table, finding and claim below
    runs = {name: r for name, r in every_run.items() if not r.get("diverged")}
    curves = {name: read_records(out / "pretrain" / name / "valid.jsonl") for name in runs}
    padded = padded_hours(out, runs)
    text += pretraining_section(curves, runs, study, rep)
    plot_validation_curves(curves, runs, rep)
    # greedy decoding's results (a record without a decoder: an earlier version's), then the LM's (``lm:``)
    ft = [r for r in results if r.get("split") and not r.get("diverged") and r.get("decoder", "greedy") == "greedy"]
    ft_lm = [r for r in results if r.get("split") and not r.get("diverged") and r.get("decoder") == "lm"]
    declared = list((study.get("corpus") or {}).get("test") or {})  # corpus.test's keys, in the config's order
    main_split = main_split_of(list(dict.fromkeys(r["split"] for r in ft)), declared)
    probes = read_records(out / "probes.jsonl")
    means = probe_means(probes)
    about = {upstream_of(r): r for r in probes}  # a record of each (upstream, checkpoint, seed)
    if probes:
        text += probe_section(probes, means, about, rep, padded)
    if study.get("cycles"):
        text += claims_section(out, curves, runs, study, ft, main_split, means, about, rep, padded)
    text += gradvar_section(out, runs, study, rep, padded)
    if main_split:
        text += finetuning_tables(ft, runs, main_split, rep)
        if ft_lm:
            text += finetuning_tables(ft_lm, runs, main_split, rep, lm_decoding(study), "with the LM", "wer-lm.csv")
        plot_finetuning(ft, main_split, rep)
        text += ["## Findings", "",
                 "Values are mean ± SE over seeds (%); a difference is called clear beyond 2 standard errors of the "
                 "difference, a low bar with few seeds (a comparison that calls one says how often that is chance). "
                 "Equal hours are nominal hours (batch × steps), as the plan and the paper count them.",
                 ""] + findings(ft, study, main_split, "wer") + findings(ft, study, main_split, "cer")
        if ft_lm:
            text += findings(ft_lm, study, main_split, "wer", " with the LM")
    text += machines_section(out, every_run)
    text += ["## Plots", "",
             "Error bars and bands: ±1 standard error of the mean over seeds. Validation curves are plotted "
             "against padded hours (the audio fed), probes against nominal hours (batch × steps, the design's), "
             "fine-tuning against padded hours; each axis says which.", ""]
    text += [f"![{p.stem}](plots/{p.name})" for p in sorted((rep / "plots").glob("*.png"))]
    path = rep / "report.md"
    atomic_write_lines(path, text)
    log.info("report: %s", path)
    return path


def machines_section(out: Path, every_run: dict[str, Any]) -> list[str]:
    """Where the pre-training runs trained (each run's machines.jsonl): one line when one kind of machine trained
    them all, else a table of machines and runs, as another CPU or GPU gives other bits. Runs of an earful before
    machines.jsonl are named apart: not a kind of machine."""
    from earful.train.machine import machines_of

    where: dict[str, list[str]] = {}
    unknown: list[str] = []
    for name in every_run:
        seen = {f"{m.get('cpu')}, {m.get('device')}, torch {m.get('torch')}"
                for m in machines_of(out / "pretrain" / name)}
        if not seen:
            unknown.append(name)
        for machine in sorted(seen):
            where.setdefault(machine, []).append(name)
    if not where and not unknown:
        return []
    head = ["## Where the runs trained", ""]
    if not where:
        return [*head, f"None of the {len(unknown)} pre-training runs recorded where it trained (an earful before "
                "machines.jsonl).", ""]
    older = f"Not recorded (runs of an earful before machines.jsonl): {', '.join(unknown)}."
    tail = [older, ""] if unknown else []
    if len(where) == 1:
        machine, names = next(iter(where.items()))
        some = f"All {len(names)}" if not unknown else f"{len(names)} of the {len(every_run)}"
        return [*head, f"{some} pre-training runs on one kind of machine: {machine} (each run's machines.jsonl).", "",
                *tail]
    return [*head,
            f"The pre-training runs trained on {len(where)} kinds of machine (each run's machines.jsonl; a run "
            "resumed elsewhere is under each). Another CPU or GPU gives other bits, so runs compared across "
            "machines differ by machine as well as by seed.", "",
            "| machine (CPU, device, torch) | runs |", "|---|---|",
            *(f"| {machine} | {', '.join(names)} |" for machine, names in sorted(where.items())), "", *tail]


def unfinished_section(study: dict[str, Any], every_run: dict[str, Any], probes: list[dict[str, Any]],
                       out: Path) -> list[str]:
    """What the study's plan (study.json, rewritten by each ``study run``) holds that its results do not: a study
    grown (a batch size, seeds, a test split or probe task added) and stopped, or still running, had its report
    written from the results of its last finish under the new plan's table, without a word. The test splits done
    are read from the evaluations' summaries (``eval/*/summary.json``; a corrupt one is a ValueError naming it)."""
    from earful.study.config import plan_runs, study_of_record
    from earful.study.stages import evaluated_splits, planned_evaluations

    try:
        planned = study_of_record(study)
        runs = [r.name for r in plan_runs(planned)]
    except (TypeError, ValueError):  # a study.json of an earlier version: nothing to compare with
        return []
    missing = [name for name in runs if name not in every_run]
    names = planned_evaluations(planned, out)  # not those of runs a rerun with fewer seeds left out
    evaluations = [evaluated_splits(out, name) for name in names]
    if evaluations:  # a study that fine-tunes: a split is done when every evaluation holds it (results.jsonl
        done_splits = set.intersection(*evaluations)  # leaves out a split without transcripts: it has no WER)
        missing += [f"test split {split}" for split in planned.corpus.test_sets() if split not in done_splits]
        if planned.lm is not None:  # an LM set on a study that had evaluated greedily: decoded on its next run
            with_lm = set.intersection(*(evaluated_splits(out, name, "lm") for name in names))
            missing += [f"test split {split} with the LM" for split in planned.corpus.test_sets()
                        if split in done_splits and split not in with_lm]
    done_tasks = {r.get("task") for r in probes}
    missing += [f"probe task {task}" for task in planned.probes if task not in done_tasks]
    if not missing:
        return []
    what = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    log.warning("%s: the study's plan holds work not finished yet (%s): the report covers what had finished when "
                "the study last ended", out, what)
    return [f"**Not finished:** the study's plan (above) holds {what}, which this report does not cover yet: it "
            "is written from the results of the study's last finish (the study was grown and then stopped, or is "
            "still running). `earful study run` on this folder continues it.", ""]


def grid_batches(study: dict[str, Any]) -> list[float]:
    """The batch sizes of a study.json's grid, sorted (an entry is a number or a mapping with ``batch_seconds``)."""
    return sorted({float(g) if isinstance(g, int | float) else float(g["batch_seconds"])
                   for g in study.get("grid", [])})


def _without(can: list[tuple[tuple[str, ...], str]], claim: str) -> list[tuple[tuple[str, ...], str]]:
    """``scope_section``'s testable claims (each a tuple of claims and what they compare) less ``claim``."""
    return [(tuple(c for c in claims if c != claim), why) for claims, why in can]


def scope_section(study: dict[str, Any]) -> list[str]:
    """Which of the paper's claims (docs/paper.md §7) a study of this design can test, and which it cannot."""
    if not study:
        return []
    seeds, cycles, mode = len(study.get("seeds", [1])), study.get("cycles", 0), study.get("mode")
    sizes = grid_batches(study)
    batches = len(sizes)
    # what earful/study/claims.py needs: C1 and C4 compare two batch sizes, C2, C2-trend, C6 and C7 three
    need = {"C1": 2, "C4": 2, "C2": 3, "C2-trend": 3, "C6": 3, "C7": 3}
    can, cannot = [], []
    if mode == "fixed-steps" and cycles:
        can.append((("C1",), "every batch size the same steps, compared at each cycle minimum"))
        can.append((("C2", "C2-trend"), "the gain of each doubling of the batch, at the last cycle minimum"))
        if cycles >= 2:
            can.append((("C4",), "equal hours as (B, T) against (2B, T/2) at cycle minima"))
        else:
            cannot.append("C4: equal hours needs checkpoints at (B, T) and (2B, T/2) — use `cycles: 2` or more")
    elif mode == "fixed-steps":
        can.append((("C1", "C2", "C2-trend"), "at the final step (a decayed schedule: only the end is comparable)"))
        cannot.append("C4: equal hours needs checkpoints at (B, T) and (2B, T/2) — use `cycles`")
    else:
        can.append((("C4",), "at the final checkpoints (every batch size the same hours)"))
        cannot.append("C1, C2 and C2-trend cleanly: equal steps pair a mid-run milestone, whose lr had not decayed, "
                      "with a finished run — use `mode: fixed-steps` with `cycles` (the paper's design)")
    # the claims are judged (a verdict each: the report's claims section, which also reads the gradient noise and
    # the codeword similarity) for the paper's design alone; another design's findings answer the same questions
    # without a verdict, and have no gradient noise or similarity to show
    judged = mode == "fixed-steps" and bool(cycles)
    if not judged:
        cannot.append("C6: gradient noise is reported in the paper's design only")
    elif study.get("gradvar_batches"):
        can.append((("C6",), "gradient noise against batch"))
    else:
        cannot.append("C6: set `gradvar_batches`")
    can.append((("C7",), "codebook perplexity and codeword similarity against batch" if judged else
                "codebook perplexity against batch, in the pre-training table"))
    few = sorted({c for claims, _ in can for c in claims if batches < need[c]})
    if seeds < 3 and "C2-trend" not in few and any("C2-trend" in claims for claims, _ in can):  # one slope a seed
        can = _without(can, "C2-trend")
        cannot.append(f"C2-trend: it takes one slope a seed and needs 3 seeds; the study has {seeds}")
    # claims.py pairs a batch size B with 2B exactly: a grid of 4, 12 and 20 s has no pair
    if (judged and "C4" not in few and any("C4" in claims for claims, _ in can)
            and not any(2 * b in sizes for b in sizes)):
        can = _without(can, "C4")
        cannot.append(f"C4: equal hours pair a batch size B with its double 2B, and the grid "
                      f"({', '.join(f'{b:g}' for b in sizes)} s) holds no such pair")
    testable = [c for claims, _ in can for c in claims if batches >= need[c]]
    can = [f"{', '.join(ok[:-1]) + ' and ' if len(ok) > 1 else ''}{ok[-1]} ({why})" for claims, why in can
           if (ok := [c for c in claims if batches >= need[c]]) and why]
    if few:
        cannot.append(f"{', '.join(few)}: the grid has {batches} batch size(s) (C1 and C4 need 2; C2, C2-trend, C6 "
                      "and C7 need 3)")
    asks = ("It can test: " if judged else "Its findings answer, without judging any claim (verdicts need the "
            "paper's design, `mode: fixed-steps` with `cycles`): ")
    lines = ["## What this study can test", "",
             f"Design: {mode}{f', {cycles} cyclic cycles' if cycles else ''}, {seeds} seed(s)"
             f"{', probes of frozen features' if study.get('probes') else ''}. {asks}"
             f"{'; '.join(can) or 'none of the claims'}."
             + (f" It cannot test: {'; '.join(cannot)}." if cannot else "")]
    if seeds < 2:
        inconclusive = [c for c in testable if c != "C6"] if judged else []
        listed = ", ".join(inconclusive[:-1]) + " and " + inconclusive[-1] if len(inconclusive) > 1 else \
            "".join(inconclusive)
        lines.append("With one seed no difference is judged beyond noise"
                     + (f": {listed} {'are' if len(inconclusive) > 1 else 'is'} *inconclusive*" if inconclusive else "")
                     + ("; C6's slope is taken over batch sizes, each from one run" if "C6" in testable else "")
                     + ". At CPU scale the seed-to-seed spread is large (docs/paper-at-cpu-scale.md): quote ranges "
                     "over seeds.")
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
                  about: dict[ProbedModel, dict[str, Any]], rep: Path,
                  padded: dict[tuple[str, int], float] | None = None) -> list[str]:
    """Probe metrics per upstream (mean ± SE over run seeds, each the mean over probe seeds; %), the baselines
    first; whether each pre-trained final model has learned (beats both baselines on PR and IC); plots of each
    metric against nominal hours seen, one line per batch size with ±SE bars, the baselines as lines (the random
    init with its ±SE band); ``probes.csv`` with nominal and padded hours."""
    from earful.probe.report import METRICS

    metrics = [f"{t}.{m}" for t, ms in METRICS.items() for m in ms if any(f"{t}.{m}" in v for v in means.values())]
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    place: dict[tuple[str, str], tuple[float, int]] = {}  # (batch seconds, step) of each row, for the order
    for key, ms in means.items():
        r = about[key]
        place[(r["tag"], r["checkpoint"])] = (r["batch_seconds"] or 0.0, r["step"])
        for m, v in ms.items():
            groups[(r["tag"], r["checkpoint"])][m].append(v)
    order = sorted(groups, key=lambda k: (k[0] not in RESERVED_TAGS, *place[k]))
    arrow = {f"{t}.{m}": "↑" if up else "↓" for t, ms in METRICS.items() for m, up in ms.items()}
    rows = [[f"{tag} ({ck})"] + [fmt_ms(groups[(tag, ck)].get(m, [])) for m in metrics] for tag, ck in order]
    several = probe_seeds_said(probes)
    spread = over_seeds([len(v) for g in groups.values() for v in g.values()],
                        "run seeds" if several else "seeds") + several
    where = "test split; SID accuracy on labelled-10h" if "sid.accuracy" in metrics else "test split"
    text = [f"## Probes of frozen features (docs/probes.md; {where}, %; {spread})", "",
            md_table(["upstream"] + [f"{m} {arrow[m]}" for m in metrics], rows), ""]
    text += learned_lines(means)
    padded = padded or {}

    def padded_of(r: dict[str, Any]) -> float | None:
        return 0.0 if not r.get("batch_seconds") else padded.get((r["pretrain"], int(r["step"])))

    write_csv(rep / "probes.csv", ["pretrain", "batch_seconds", "seed", "checkpoint", "step", "hours_nominal",
                                   "hours_padded", "probe_seed", "task", "metric", "value"],
              [[r.get("pretrain"), r.get("batch_seconds"), r.get("seed"), r.get("checkpoint"), r.get("step"),
                nominal_hours(r.get("batch_seconds"), r.get("step")), padded_of(r), r.get("probe_seed"),
                r.get("task"), r.get("metric"), r.get("value")] for r in probes])
    for m in metrics:
        plot_probe_metric(means, about, m, rep, several)
    return text + [""]


def baseline_values(means: dict[ProbedModel, dict[str, float]], name: str, metric: str) -> list[float]:
    """``metric`` of each model of the baseline upstream ``name`` (``random-init``: one per seed; ``fbank``)."""
    return [v[metric] for (p, _, _), v in means.items() if p == name and metric in v]


def baseline(means: dict[ProbedModel, dict[str, float]], name: str, metric: str) -> float | None:
    """The mean of ``metric`` over the baseline upstream ``name`` (``random-init`` or ``fbank``), if measured."""
    vals = baseline_values(means, name, metric)
    return statistics.fmean(vals) if vals else None


def learned_lines(means: dict[ProbedModel, dict[str, float]]) -> list[str]:
    """The probes' test of learning: a final model beats the random init and filterbanks on PR and IC."""
    per, ic = ([x for x in (baseline(means, name, metric) for name in RESERVED_TAGS) if x is not None]
               for metric in ("pr.per", "ic.accuracy"))
    if len(per) < 2 or len(ic) < 2:
        return []
    finals = {p: v for (p, ck, _), v in means.items() if ck == "final" and "pr.per" in v and "ic.accuracy" in v}
    learned = [p for p, v in finals.items() if v["pr.per"] < min(per) and v["ic.accuracy"] > max(ic)]
    missing = sorted(set(finals) - set(learned))
    return [f"Learned (beats both the random init and filterbanks on PR and IC, docs/probes.md): {len(learned)} of "
            f"{len(finals)} final models" + (f"; not: {', '.join(missing)}" if missing else "") + ".", ""]


def plot_probe_metric(means: dict[ProbedModel, dict[str, float]], about: dict[ProbedModel, dict[str, Any]],
                      metric: str, rep: Path, several: str = "") -> None:
    """``metric`` against nominal hours seen (log), one line per batch size (mean ± SE over run seeds), the random
    init as a dashed line with its ±SE band, filterbanks dotted. A milestone the last step reaches (``hours-H``, or
    ``steps-N`` at a cycle minimum) holds the final's weights, written as two records of one step: each run's model
    counts once in its cell."""
    def draw(ax):
        per_b: dict[float, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        seen: set[tuple[str, int]] = set()  # (run, step): one model, however many checkpoints name it
        for key, ms in means.items():
            r = about[key]
            if metric in ms and r["batch_seconds"] and (key[0], r["step"]) not in seen:
                seen.add((key[0], r["step"]))
                per_b[r["batch_seconds"]][nominal_hours(r["batch_seconds"], r["step"])].append(100 * ms[metric])
        colour = batch_colours(list(per_b))
        for b in sorted(per_b):
            xs = sorted(per_b[b])
            _errorbar(ax, xs, [per_b[b][x] for x in xs], marker="o", ms=4, color=colour[b], label=f"batch {b:g} s")
        _level(ax, [100 * v for v in baseline_values(means, RANDOM_INIT_TAG, metric)], "random init", "tab:grey",
               "--")
        _level(ax, [100 * v for v in baseline_values(means, FBANK_TAG, metric)], "log-mel filterbanks", "firebrick",
               ":")
        hours_axis(ax, [x for v in per_b.values() for x in v], NOMINAL)
        ax.set_ylabel(METRIC_LABELS.get(metric, f"{metric} (test) %"))
        n = max((len(ys) for v in per_b.values() for ys in v.values()), default=0)
        name = METRIC_LABELS.get(metric, metric).split(" (")[0]
        seeds = "run seeds" if several else "seeds"
        ax.set_title(f"Probe of frozen features: {name} against nominal hours seen, one line per batch size\n"
                     + (f"mean ± SE over {n} {seeds} (bars and band: ±1 SE)" if n > 1 else f"one {seeds[:-1]}")
                     + several)
    _plot(rep / "plots" / f"probe_{metric.replace('.', '_')}_vs_hours.png", draw)


def design_rows(curves: dict[str, list[dict[str, Any]]], runs: dict[str, Any], study: dict[str, Any],
                ft: list[dict[str, Any]], main_split: str | None,
                means: dict[ProbedModel, dict[str, float]] | None = None,
                about: dict[ProbedModel, dict[str, Any]] | None = None,
                padded: dict[tuple[str, int], float] | None = None) -> list[dict[str, Any]]:
    """One row per (planned run, cycle minimum or final step) where anything was measured: batch, seed, step,
    nominal hours (batch × steps), padded hours (the audio fed: the checkpoint's trainer.json, else the
    validation record at that step) and every metric measured there — validation loss, accuracy and perplexity,
    test CER per label set, probe metrics. A checkpoint probed or fine-tuned at a step without validation has its
    row."""
    minima = {int(s) for s in study.get("cycle_minima", [])}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    padded = padded or {}

    def row(name: str, step: Any) -> dict[str, Any] | None:
        run = runs.get(name)
        if run is None or step is None or not (int(step) in minima or int(step) == run["steps"]):
            return None
        return rows.setdefault((name, int(step)), {
            "run": name, "batch_seconds": run["batch_seconds"], "seed": run["seed"], "step": int(step),
            "hours_nominal": nominal_hours(run["batch_seconds"], int(step)),
            "hours_padded": padded.get((name, int(step)))})

    for name in runs:
        for rec in curves.get(name, []):
            if (at := row(name, rec["step"])) is not None:
                ppl = [v for k, v in rec.items() if k.startswith("ppl_hard")]
                at.update(valid_loss=rec["loss"], valid_accuracy=rec["accuracy"],
                          valid_perplexity=statistics.fmean(ppl) if ppl else None)
                if at["hours_padded"] is None:
                    at["hours_padded"] = rec.get("hours_padded")
    for r in ft:
        if r["split"] == main_split and r.get("batch_seconds") and (at := row(r["pretrain"], r.get("step"))):
            at[f"cer_{r['label_set']}"] = r["cer"]
            if at["hours_padded"] is None:
                at["hours_padded"] = r.get("hours_padded")  # a fine-tuning record's: its checkpoint's
    for key, ms in (means or {}).items():  # probe metrics, by the record of each probed model
        if (at := row(key[0], about[key]["step"])) is not None:
            at.update(ms)
    return sorted(rows.values(), key=lambda r: (r["batch_seconds"], r["seed"], r["step"]))


def hours_note(rows: list[dict[str, Any]]) -> str:
    """Which hours the verdicts pair, and how far the padded hours fall below the nominal at each batch size."""
    share: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("hours_padded") and r["hours_nominal"] > 0:
            share[r["batch_seconds"]].append(r["hours_padded"] / r["hours_nominal"])
    fed = ", ".join(f"{100 * statistics.fmean(v):.0f} %{' of nominal' if i == 0 else ''} at {b:g} s"
                    for i, (b, v) in enumerate(sorted(share.items())))
    return ("Hours: the verdicts pair checkpoints by step and batch, and C4's equal hours are nominal hours "
            "(batch × steps, as the paper counts them): (B, T) against (2B, T/2)."
            + (f" The audio the batches held (padded hours, design.csv `hours_padded`) is {fed}, so "
               "an equal-hours pair is not equal in audio fed." if fed else ""))


def claims_section(out: Path, curves: dict[str, list[dict[str, Any]]], runs: dict[str, Any], study: dict[str, Any],
                   ft: list[dict[str, Any]], main_split: str | None,
                   means: dict[ProbedModel, dict[str, float]], about: dict[ProbedModel, dict[str, Any]],
                   rep: Path, padded: dict[tuple[str, int], float] | None = None) -> list[str]:
    """The paper's claims (docs/paper.md §7) judged on this study's grid: a verdict per claim and metric."""
    from earful.probe.report import METRICS
    from earful.study.claims import judge, judge_c6, judge_c7

    rows = design_rows(curves, runs, study, ft, main_split, means, about, padded)
    metrics = {"valid_loss": False, "valid_accuracy": True}
    metrics.update({f"{t}.{m}": up for t, ms in METRICS.items() for m, up in ms.items()
                    if any(f"{t}.{m}" in r for r in rows)})
    metrics.update({k: False for r in rows for k in r if k.startswith("cer_")})
    verdicts = judge(rows, metrics)
    # the planned runs' final checkpoints (a study rerun with fewer seeds keeps the others' files)
    grads = [g for (_, checkpoint), g in gradvar_records(out, runs).items() if checkpoint == "final"]
    if grads:
        verdicts.append(judge_c6([(g["batch_seconds"], g[GRADVAR_STD]) for g in grads]))
    ppl: dict[float, list[float]] = defaultdict(list)
    sim: dict[float, list[float]] = defaultdict(list)
    for name, run in runs.items():
        train = read_records(out / "pretrain" / name / "train.jsonl")
        if curves.get(name) and train:
            ppl[run["batch_seconds"]].append(statistics.fmean(
                v for k, v in curves[name][-1].items() if k.startswith("ppl_hard")))
            sim[run["batch_seconds"]].append(statistics.fmean(
                v for k, v in train[-1].items() if k.startswith("codeword_sim_") and k.endswith("_mean")))
    if ppl:
        verdicts.append(judge_c7(ppl, sim))
    plot_gain_per_doubling(rows, metrics, rep / "plots" / "gain_per_doubling.png")
    write_csv(rep / "design.csv", sorted({k for r in rows for k in r}), [
        [r.get(k) for k in sorted({k for r in rows for k in r})] for r in rows])
    text = ["## The paper's claims at this scale (docs/paper.md §7)", "",
            f"Every batch size trained {study.get('steps')} steps on a cyclic schedule of {study['cycles']} cycles; "
            f"checkpoints at the cycle minima (steps {', '.join(map(str, study.get('cycle_minima', [])))}) and the "
            f"end; {len(study.get('seeds', [1]))} seed(s). Verdicts are computed from the numbers "
            "(earful/study/claims.py states the rules); the rows behind them are in design.csv. Every ± in the "
            "evidence is one standard error (SE). Every gain, change and ρ in the evidence is signed in the metric's "
            "better direction, as fractions (not %): + is lower for a loss, CER, WER, PER or EER and higher for an "
            "accuracy (a CER 15 points higher at the largest batch reads -0.15).", "", hours_note(rows), "",
            *left_out_note(rows, metrics, study),
            md_table(["claim", "metric", "verdict", "evidence"],
                     [[v.claim, v.metric, f"**{v.verdict}**", v.evidence.replace("|", "/")] for v in verdicts]), ""]
    return text


def left_out_note(rows: list[dict[str, Any]], metrics: dict[str, bool], study: dict[str, Any]) -> list[str]:
    """The batch sizes of the grid and the seeds of the study that a metric has no value of at its final step: the
    verdicts there are on fewer doublings or seeds (C2-trend leaves a seed out of every cell where it misses one),
    which the reader must see, not infer from the diverged runs."""
    from earful.study.claims import cells, seed_name

    planned = grid_batches(study)
    seeds = [seed_name(k) for k in study.get("seeds", [])]
    said = []
    for metric in metrics:
        grid = cells(rows, metric)
        if len({b for b, _ in grid}) < 2:
            continue
        final = max(s for _, s in grid)
        gaps = []
        for b in planned:
            have = {seed_name(k) for k in grid[(b, final)].seeds or []} if (b, final) in grid else set()
            if not have:
                gaps.append(f"{b:g} s (every seed)")
            elif missing := [k for k in seeds if k not in have]:
                gaps.append(f"{b:g} s seed {', '.join(missing)}")
        if gaps:
            said.append(f"{metric} at step {final}: {'; '.join(gaps)}")
    if not said:
        return []
    return ["**Left out of the verdicts** (no value: diverged, or not measured): " + " — ".join(said) + ".", ""]


def plot_gain_per_doubling(rows: list[dict[str, Any]], metrics: dict[str, bool], path: Path) -> None:
    """C2-trend's data, in ``path`` (a report's ``plots/gain_per_doubling.png``): for each metric with 3 batch sizes
    and 2 seeds measured at all of them at the final step, each seed's gain per doubling of the batch (thin) and
    their mean ± SE (bold), with the mean least-squares line whose slope C2-trend judges. Nothing where no metric
    has that."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from earful.study.claims import _scale, cells, denoise, doublings, over_seeds

    panels = []
    for metric, higher in metrics.items():
        grid = cells(rows, metric)
        if grid:
            final = max(s for _, s in grid)
            d = doublings(grid, final, 1.0 if higher else -1.0)
            if len(d.batches) >= 3 and len(d.seeds) >= 2:
                panels.append((metric, final, d, _scale(grid)))
    if not panels:
        path.unlink(missing_ok=True)  # an earlier report's, of other data: the report shows every PNG in plots/
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.2, 4.0), dpi=110, squeeze=False)
    for ax, (metric, final, d, size) in zip(axes[0], panels, strict=True):
        scale = 1.0 if metric.endswith("loss") else 100.0  # losses as they are, rates and accuracies in %
        x = 2.0 ** d.where  # the middle of each doubling, in seconds
        for g in d.gains:
            ax.plot(x, scale * g, color="0.7", lw=0.8, marker=".", label="one seed")
        mean, se = over_seeds(d.gains)
        ax.errorbar(x, scale * mean, yerr=scale * se, color="black", lw=2, marker="o", capsize=3,
                    label=f"mean ± SE over {len(d.seeds)} seeds")
        slope, slope_se = (denoise(float(x), size) for x in over_seeds(d.slopes))  # equal gains: 0, not 2.78e-15
        ax.plot(x, scale * (mean.mean() + slope * (d.where - d.where.mean())), "--", color="tab:red",
                label="the mean slope (C2-trend)")
        ax.axhline(0.0, color="0.4", lw=0.8)
        _log_axis(ax, list(x), [f"{a:g}→{b:g}" for a, b in zip(d.batches[:-1], d.batches[1:], strict=True)])
        ax.set_xlabel("doubling of the batch (s of audio)")
        ax.set_ylabel(f"gain per doubling{' (points)' if scale == 100.0 else ''}, better ↑")
        name = GAIN_NAMES.get(metric) or METRIC_LABELS.get(metric, metric).split(" (")[0]
        ax.set_title(f"{name}, step {final}\nslope {scale * slope:+.3g} ± {scale * slope_se:.2g} (SE) a doubling",
                     fontsize=9.5)
        ax.grid(True, alpha=0.3)
    fig.suptitle("C2-trend: the gain of each doubling of the batch, per seed; falling to the right is saturation",
                 fontsize=10)
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - 2.0 / (4.2 * len(panels) + 2.2), 1.0))  # room on the right: the legend
    handles, labels = axes[0][0].get_legend_handles_labels()
    shown = dict(zip(labels, handles, strict=True))  # one "one seed" entry, not one a seed
    fig.legend(list(shown.values()), list(shown), fontsize=8, loc="upper left", frameon=False,
               bbox_to_anchor=(axes[0][-1].get_position().x1 + 0.01, axes[0][-1].get_position().y1))
    _save_figure(fig, path)
    plt.close(fig)


def gradvar_records(out: Path, runs: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The gradient noise records of the planned runs ``runs`` (a study rerun with fewer seeds keeps the others'
    files) by (run, checkpoint): ``gradvar/RUN.json`` the final's, ``gradvar/RUN__CHECKPOINT.json`` another's
    (``stages.gradvar_record``)."""
    folder = out / "gradvar"
    files = sorted(folder.glob("[!.]*.json")) if folder.is_dir() else []
    found = {}
    for name in runs:
        for p in files:
            if p.stem == name:
                found[(name, "final")] = read_json(p)
            elif p.stem.startswith(f"{name}__"):
                found[(name, p.stem.removeprefix(f"{name}__"))] = read_json(p)
    return found


GRADVAR_STD = "mean_param_grad_std"  # the paper's statistic (§6.5), which C6 and the noise over training take


def gradvar_section(out: Path, runs: dict[str, Any], study: dict[str, Any], rep: Path,
                    padded: dict[tuple[str, int], float] | None = None) -> list[str]:
    """The gradient noise over training, where a run's was measured at more than one checkpoint
    (``gradvar_checkpoints``): ``gradvar.csv`` (every record, nominal and padded hours), ``plots/gradvar_vs_steps.png``
    (the mean per-parameter gradient std against steps, a line per batch size, ± SE over seeds) and whether it
    rises from the first checkpoint measured to the final at the smaller batch sizes (the paper: for 10 min and
    less; docs/paper.md §6.5). Nothing where every run has one record."""
    records = gradvar_records(out, runs)
    plot = rep / "plots" / "gradvar_vs_steps.png"
    steps_of: dict[str, set[int]] = defaultdict(set)
    for (name, _), g in records.items():
        steps_of[name].add(int(g["step"]))
    if not any(len(steps) > 1 for steps in steps_of.values()):
        plot.unlink(missing_ok=True)  # an earlier report's, of other data: the report shows every PNG in plots/
        return []
    padded = padded or {}
    rows = sorted(([name, runs[name]["batch_seconds"], runs[name]["seed"], checkpoint, int(g["step"]),
                    nominal_hours(runs[name]["batch_seconds"], int(g["step"])), padded.get((name, int(g["step"]))),
                    g[GRADVAR_STD], g.get("b_simple_seconds")] for (name, checkpoint), g in records.items()),
                  key=lambda r: (r[1], r[2], r[4]))
    write_csv(rep / "gradvar.csv", ["run", "batch_seconds", "seed", "checkpoint", "step", "hours_nominal",
                                    "hours_padded", GRADVAR_STD, "b_simple_seconds"], rows)
    # batch → step → per seed; `best` is in the CSV, not here: its step differs by seed, no point of training
    cells: dict[float, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _, b, _, checkpoint, step, _, _, std, _ in rows:
        if checkpoint != "best":
            cells[b][step].append(std)
    colour = batch_colours(list(cells))

    def draw(ax):
        from matplotlib import ticker

        for b, at in sorted(cells.items()):
            steps = sorted(at)
            _errorbar(ax, steps, [at[s] for s in steps], color=colour[b], marker="o", ms=4, lw=1.4,
                      label=f"batch {b:g} s")
        ax.set_yscale("log")
        for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):  # 0.2, not 2×10⁻¹
            set_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.2g}"))
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel("mean per-parameter gradient std")
        ax.set_title("Gradient noise over training (earful gradvar at each measured checkpoint)\n"
                     "one line per batch size, ±1 SE over seeds")

    _plot(plot, draw)
    change: dict[float, str] = {}  # batch → how its std at the final compares with its first measured
    said = []
    for b, at in sorted(cells.items()):
        first, last = min(at), max(at)
        if first < last:
            change[b] = compare(at[last], at[first])
            said.append(f"{b:g} s {mean_se(at[first])[0]:.3g} at step {first} → {mean_se(at[last])[0]:.3g} at step "
                        f"{last}, {change[b]}")
    grid = sorted({float(r["batch_seconds"]) for r in runs.values()})
    answer = _noise_rises(grid[:max(1, len(grid) // 2)], change)  # the smaller half of the study's batch sizes
    c6 = " C6's verdict takes the final checkpoints alone." if study.get("cycles") else ""
    best = "; `best` there alone: its step differs by seed" if any(ck == "best" for _, ck in records) else ""
    return ["## Gradient noise over training", "",
            f"`earful gradvar` on {study.get('gradvar_batches')} batches of each run's own batch size at the "
            f"checkpoints of `gradvar_checkpoints` ({', '.join(study.get('gradvar_checkpoints') or ['final'])}): the "
            "mean per-parameter gradient std (the paper's statistic, §6.5) against steps in "
            "`plots/gradvar_vs_steps.png`, every record in `gradvar.csv` (with B_simple and the nominal and padded "
            f"hours{best}).{c6}", "",
            f"- **Does the small batches' gradient noise rise over training?** {answer[0].upper()}{answer[1:]}. From "
            f"the first checkpoint measured to the final (mean over seeds): {'; '.join(said) or 'none'}. The paper: it "
            "keeps growing during training for batches of 10 min and less, and is flat after 50k steps from 20 min "
            "(docs/paper.md §6.5).", ""]


def _noise_rises(small: list[float], change: dict[float, str]) -> str:
    """Whether the gradient noise rises over training at the ``small`` batch sizes, from ``change`` (batch → how its
    final compares with its first checkpoint measured, ``compare``; absent: measured at one point of training)."""
    def names(bs: list[float]) -> str:
        return ", ".join(f"{b:g} s" for b in bs)

    measured = [b for b in small if b in change]
    rises = [b for b in measured if change[b] == "higher" + BEYOND]
    unjudged = [b for b in measured if "one seed" in change[b] or "not judged" in change[b]]  # no spread to judge by
    missing = [b for b in small if b not in change]
    left = f"; {names(missing)} measured at one point of training only" if missing and measured else ""
    if not measured:
        return (f"not judged: none of the smaller batch sizes ({names(small)}) was measured at more than one point "
                "of training (a milestone it does not reach, or `best` alone)")
    if len(rises) == len(small):
        return f"yes: it rises beyond 2 standard errors at each of the smaller batch sizes ({names(small)})"
    if rises:
        return f"in part: it rises beyond 2 standard errors at {names(rises)} of the smaller batch sizes " \
               f"({names(small)}){left}"
    if unjudged:
        return f"not judged: at {names(unjudged)} of the smaller batch sizes ({names(small)}) one seed (or no spread " \
               f"over seeds) cannot tell a change from noise{left}"
    return f"no: it rises beyond 2 standard errors at none of the smaller batch sizes ({names(small)}){left}"


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def pretraining_section(curves: dict[str, list[dict[str, Any]]], runs: dict[str, Any], study: dict[str, Any],
                        rep: Path) -> list[str]:
    """The final validation metrics per batch size (mean ± SE over seeds), and ``pretrain_valid.csv``. Its seed
    counts are those of the values shown (``runs`` holds no diverged run), not the study's seeds."""
    by_batch: dict[float, list[str]] = defaultdict(list)
    for name, run in runs.items():
        by_batch[run["batch_seconds"]].append(name)
    rows, csv_rows, counts = [], [], []
    for b in sorted(by_batch):
        named = [(n, curves[n][-1]) for n in by_batch[b] if curves.get(n)]  # the runs with validation records
        finals = [f for _, f in named]
        acc = [f["accuracy"] for f in finals]
        loss = [f["loss"] for f in finals]
        ppl = [statistics.fmean(v for k, v in f.items() if k.startswith("ppl_hard")) for f in finals]
        fed = _finite([f.get("hours_padded") for f in finals])
        first = runs[by_batch[b][0]]
        rows.append([first["tag"], f"{first['steps']:,}", f"{first['hours']:.3g}",
                     f"{statistics.fmean(fed):.3g}" if fed else "–", fmt_ms(loss, False), fmt_ms(acc, False),
                     fmt_ms(ppl, False)])
        counts += [len(_finite(loss))]
        for n, f in named:
            csv_rows.append([n, b, f["step"], nominal_hours(b, f["step"]), f.get("hours_padded"), f["loss"],
                             f["accuracy"]])
    if not rows:
        return []
    write_csv(rep / "pretrain_valid.csv", ["run", "batch_seconds", "step", "hours_nominal", "hours_padded", "loss",
                                           "accuracy"], csv_rows)
    valid = study.get("corpus", {}).get("valid")  # its voices may or may not be held out: say which manifest
    where = f"corpus.valid `{valid}`" if valid else "the validation manifest, corpus.valid"
    seeds = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"  # the ones shown
    return [f"## Pre-training: final validation ({where}; {over_seeds(counts)})", "",
            md_table(["batch", "steps", NOMINAL, f"{PADDED}, mean", "loss / masked frame", "accuracy",
                      "hard perplexity (mean over groups)"], rows),
            "", f"Chance accuracy is about 1/(K+1); {seeds} seed(s) per batch size; ± is one "
            "standard error of the mean (SD/√n). Distractors whose code equals the "
            "target's are masked out, so a narrow codebook (low perplexity) inflates accuracy: compare "
            "accuracies only at similar perplexity. The hard perplexity is each codebook group's, averaged over the "
            "groups (fairseq's code_perplexity sums them: G times this).", ""]


def plot_validation_curves(curves: dict[str, list[dict[str, Any]]], runs: dict[str, Any], rep: Path) -> None:
    """Validation loss, accuracy and perplexity against steps and against padded hours seen, one line per run:
    its colour says the batch size (a sequential colormap), its line style and marker the seed."""
    from matplotlib.lines import Line2D

    shown = sorted((n for n in curves if curves[n]), key=lambda n: (runs[n]["batch_seconds"], runs[n]["seed"]))
    if not shown:  # no run validated: no blank plots
        return
    colour = batch_colours([runs[n]["batch_seconds"] for n in shown])
    seeds = sorted({runs[n]["seed"] for n in shown}, key=str)
    style = {s: (SEED_STYLES[i % len(SEED_STYLES)], SEED_MARKERS[i % len(SEED_MARKERS)]) for i, s in enumerate(seeds)}
    for key, label, what in (("loss", "loss per masked frame", "Validation loss"),
                             ("accuracy", "contrastive accuracy", "Validation contrastive accuracy"),
                             ("ppl", "hard codebook perplexity", "Validation hard codebook perplexity "
                                                                 "(mean over the codebook groups)")):
        for xkey, xlabel in (("step", "optimizer steps"), ("hours_padded", PADDED)):
            def draw(ax, key=key, xkey=xkey, label=label, xlabel=xlabel, what=what):
                xs_all = []
                for name in shown:
                    c = curves[name]
                    ys = [statistics.fmean(v for k, v in r.items() if k.startswith("ppl_hard")) if key == "ppl"
                          else r[key] for r in c]
                    ls, marker = style[runs[name]["seed"]]
                    xs = [r[xkey] for r in c]
                    xs_all += xs
                    ax.plot(xs, ys, color=colour[runs[name]["batch_seconds"]], ls=ls, marker=marker, ms=3, lw=1.2)
                if xkey == "hours_padded":
                    hours_axis(ax, xs_all, PADDED)
                else:
                    ax.set_xlabel(xlabel)
                ax.set_ylabel(label)
                against = "padded hours seen" if xkey == "hours_padded" else "steps"
                ax.set_title(f"{what}\nagainst {against}, one line per run")
                # the legend: colour = batch size, line style and marker = seed
                return [Line2D([], [], color=colour[b], lw=2, label=f"batch {b:g} s") for b in sorted(colour)] + [
                    Line2D([], [], color="0.35", ls=style[s][0], marker=style[s][1], ms=3, label=f"seed {s}")
                    for s in seeds]
            _plot(rep / "plots" / f"valid_{key}_vs_{xkey.removesuffix('_padded')}.png", draw)


def lm_decoding(study: dict[str, Any]) -> str:
    """How a study.json's ``lm:`` decodes, as the report's LM tables name it."""
    lm = study.get("lm") or {}
    return (f"with the n-gram LM {Path(str(lm.get('path'))).name}: beam {lm.get('beam')}, lm_weight "
            f"{lm.get('lm_weight')}, word_score {lm.get('word_score')}") if lm else "with the n-gram LM"


def finetuning_tables(ft: list[dict[str, Any]], runs: dict[str, Any], main_split: str, rep: Path,
                      decoding: str = "greedy decoding", short: str = "greedy", csv_name: str = "wer.csv"
                      ) -> list[str]:
    """WER and CER on the main split by pre-training (and checkpoint) × label set (mean ± SE over seeds), with
    the checkpoint's nominal and padded hours, and ``wer.csv``; ``decoding`` (``short``), ``csv_name``: those of
    the results decoded with the study's LM (``lm:``), its tables and CSV beside greedy decoding's."""
    label_sets = sorted({r["label_set"] for r in ft})
    head = ["pre-training", NOMINAL, f"{PADDED}, mean"] + label_sets
    groups = {m: defaultdict(lambda: defaultdict(list)) for m in ("wer", "cer")}
    nominal: dict[tuple[str, str], list[float]] = defaultdict(list)
    fed: dict[tuple[str, str], list[float]] = defaultdict(list)
    csv_rows = []
    for r in ft:
        if r["split"] != main_split:
            continue
        key = (r.get("tag", r["pretrain"]), r["checkpoint"])
        for m in groups:
            groups[m][key][r["label_set"]].append(r[m])
        fed[key].append(r.get("hours_padded", 0.0))  # a fine-tuning record's: its checkpoint's padded hours
        nominal[key].append(nominal_hours(r.get("batch_seconds"), r.get("step")))
        csv_rows.append([r["pretrain"], r.get("batch_seconds"), r["checkpoint"], r.get("step"),
                         nominal_hours(r.get("batch_seconds"), r.get("step")), r.get("hours_padded"), r["label_set"],
                         r["split"], r["wer"], r["cer"]])
    batch_of = {run["tag"]: run["batch_seconds"] for run in reversed(list(runs.values()))}
    keys = sorted(groups["wer"], key=lambda k: (0 if k[0].startswith("scratch") else 1, batch_of.get(k[0], -1), k[1]))
    tables = {}
    for m, g in groups.items():
        tables[m] = [[f"{tag} ({ck})"] + [f"{statistics.fmean(h[(tag, ck)]) if h[(tag, ck)] else 0.0:.3g}"
                                          for h in (nominal, fed)]
                     + [fmt_ms(g[(tag, ck)].get(ls, [])) for ls in label_sets] for tag, ck in keys]
    write_csv(rep / csv_name, ["pretrain", "batch_seconds", "checkpoint", "step", "hours_nominal", "hours_padded",
                                "label_set", "split", "wer", "cer"], csv_rows)
    spread = over_seeds([len(v) for k in keys for v in groups["wer"][k].values()])
    return [f"## WER after fine-tuning (`{main_split}`, {decoding}, %; {spread})", "",
            md_table(head, tables["wer"]), "",
            f"CER (`{main_split}`, {short}, %; {spread}):", "", md_table(head, tables["cer"]), ""]


def plot_finetuning(ft: list[dict[str, Any]], main_split: str, rep: Path) -> None:
    """WER / CER against batch size (final checkpoints, one line per label set) and against padded hours seen
    (one line per batch size, the label set fine-tuned at the most checkpoints, scratch as a dashed line with its
    band); mean ± SE over seeds."""
    label_sets = sorted({r["label_set"] for r in ft})
    # against hours: the first label set of those fine-tuned at the most checkpoints (finetune.milestone_label_sets
    # may leave the milestones out of some)
    hours_label_set = max(label_sets, key=lambda ls: len({(r["pretrain"], r["checkpoint"]) for r in ft
                                                          if r["label_set"] == ls}), default=None)
    end = end_checkpoint(ft)
    finals = [r for r in ft if r["split"] == main_split and r["checkpoint"] == end and r.get("batch_seconds")]
    for metric in ("wer", "cer"):

        def draw_b(ax, metric=metric):
            n = 0
            for ls in label_sets:
                pts = _per_batch(finals, ls, metric)
                xs = sorted(pts)
                _errorbar(ax, xs, [[100 * v for v in pts[x]] for x in xs], marker="o", label=ls)
                n = max([n, *(len(v) for v in pts.values())])
            batch_axis(ax, [r["batch_seconds"] for r in finals])
            ax.set_ylabel(f"{metric.upper()} % ({main_split}, greedy)")
            ax.set_title(f"Fine-tuned {metric.upper()} by pre-training batch ({end} checkpoints), one line per "
                         "label set\n" + (f"mean ± SE over {n} seeds (bars: ±1 SE)" if n > 1 else "one seed"))
        _plot(rep / "plots" / f"{metric}_vs_batch.png", draw_b)

        def draw_h(ax, metric=metric):
            xs_all, n = [], 0
            for ls in [hours_label_set]:
                # one point per (batch, checkpoint): mean over seeds (whose padded hours differ by a few frames)
                per_b = defaultdict(lambda: defaultdict(list))
                for r in ft:
                    if r["split"] == main_split and r["label_set"] == ls and r.get("batch_seconds"):
                        per_b[r["batch_seconds"]][r["checkpoint"]].append((r["hours_padded"], r[metric] * 100))
                colour = batch_colours(list(per_b))
                for b in sorted(per_b):
                    pts = sorted((statistics.fmean(h for h, _ in v), [y for _, y in v]) for v in per_b[b].values())
                    _errorbar(ax, [x for x, _ in pts], [ys for _, ys in pts], marker="o", color=colour[b],
                              label=f"batch {b:g} s")
                    xs_all += [x for x, _ in pts]
                    n = max([n, *(len(ys) for _, ys in pts)])
                _level(ax, [r[metric] * 100 for r in ft if r["split"] == main_split and r["label_set"] == ls
                            and r["pretrain"] == "scratch"], "scratch", "tab:grey", "--")
            hours_axis(ax, xs_all, PADDED)
            ax.set_ylabel(f"{metric.upper()} % ({main_split}, greedy)")
            ax.set_title(f"Fine-tuned {metric.upper()} ({hours_label_set} labels) against padded hours seen in "
                         "pre-training\n"
                         + (f"mean ± SE over {n} seeds (bars and band: ±1 SE)" if n > 1 else "one seed"))
        _plot(rep / "plots" / f"{metric}_vs_hours.png", draw_h)


def main_split_of(splits: list[str], declared: list[str] | None = None) -> str | None:
    """The split the tables and findings report, of ``splits`` (those with results, in results.jsonl's order):
    ``test``, else the first ``test*`` (LibriSpeech: test-clean), else the first in the study's ``corpus.test``
    order, ``declared`` (``{eval: ..., dev: ...}`` reports eval, where the sort order said dev); a folder whose
    study.json declares none (the default dev and test, a folder from before) keeps the results' order. The
    shipped studies declare ``{dev: ..., test: ...}``: a split named test wins over the order."""
    ordered = [s for s in declared or [] if s in splits] + [s for s in splits if s not in (declared or [])]
    if "test" in ordered:
        return "test"
    return next((s for s in ordered if s.startswith("test")), ordered[0] if ordered else None)


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
    """'8 s: 62.5 ± 1.6, 16 s: 71.7 ± 8.3' (percent, mean ± standard error over seeds)."""
    return ", ".join(f"{b:g} s: {fmt_ms(per_b[b])}" for b in sorted(per_b))


def _neighbours(per_b: dict[float, list[float]], name: str) -> str:
    """Each batch size against the next larger one, judged against the seed spread; where a difference is called
    beyond 2 SE, how often such a call is chance with these seeds (only the comparisons against a baseline had
    said it)."""
    bs = sorted(per_b)
    verdicts = [compare(per_b[bs[i + 1]], per_b[bs[i]]) for i in range(len(bs) - 1)]
    text = "; ".join(f"{bs[i]:g} s → {bs[i + 1]:g} s: {name} {v}" for i, v in enumerate(verdicts))
    chance = _chance(min(len(_finite(v)) for v in per_b.values()))
    return text + (f"; {chance}" if chance and any(v.endswith(BEYOND) for v in verdicts) else "")


def _chance(seeds: int) -> str:
    """How often ``compare`` calls a difference where there is none, with ``seeds`` a side ("" for one seed: no
    call is made)."""
    if seeds < 2:
        return ""
    if seeds in CHANCE_AT_2SE:
        return f"with {seeds} seeds a side a 2 SE call is chance in about {CHANCE_AT_2SE[seeds]} % of comparisons"
    return "a 2 SE call is chance in about 5-6 % of comparisons"


def _equal_hours(what: str, ls: str, name: str, per_b: dict[float, list[float]]) -> str:
    """One finding line: the metric per batch size at equal nominal hours (batch × steps), and each neighbour pair
    judged."""
    means = [statistics.fmean(v) for v in per_b.values()]
    seeds = max(len(v) for v in per_b.values())
    return (f"- **Equal nominal hours ({what}), {ls}:** {name} by batch {_values(per_b)}"
            f" (spread {100 * (max(means) - min(means)):.1f} points" +
            ("; one seed, so the noise is not measured" if seeds < 2 else "") + f"); {_neighbours(per_b, name)}.")


def findings(ft: list[dict[str, Any]], study: dict[str, Any], split: str, metric: str = "wer",
             decoded: str = "") -> list[str]:
    """The two questions of the paper, and pre-training vs scratch, answered from this study's numbers in
    ``metric`` (``wer`` or ``cer``: at small scale WER sits near 100 % and CER tells the models apart);
    ``decoded``: how ``ft`` was decoded where not greedily (" with the LM")."""
    name = metric.upper()
    on_split = [r for r in ft if r["split"] == split]
    label_sets = sorted({r["label_set"] for r in ft})
    out = [f"### In {name}{decoded} (`{split}`)", ""]
    out += _fixed_steps_and_scratch(on_split, study, label_sets, metric)
    if study.get("mode") != "fixed-steps":  # a small batch's milestone vs a large batch's end
        out += _equal_steps(on_split, label_sets, metric)
    if study.get("mode") == "fixed-hours":
        finals = _finals(on_split)
        for ls in label_sets:
            per_b = _per_batch(finals, ls, metric)
            if len(per_b) > 1:
                out.append(_equal_hours(f"final, {study.get('hours')} h", ls, name, per_b))
    said: list[tuple[str, set[tuple[str, int]]]] = []  # the (run, step)s each equal-hours line compared
    out += _milestones(on_split, label_sets, metric, said)
    if study.get("cycles"):  # not again where a milestone fell on a cycle minimum: its line compared them
        out += _cycle_minima_at_equal_hours(on_split, label_sets, metric, study, said)
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
            out.append(f"- **Fixed steps, {ls}:** {_neighbours(per_b, name)} ({_values(per_b)})."
                       + _best_steps(finals, ls))
        for base in sorted({str(r["pretrain"]) for r in scratch}):
            sc = [r[metric] for r in scratch if r["label_set"] == ls and r["pretrain"] == base]
            if sc and bs:
                out.append(f"- **Pre-training vs {base}, {ls}:** {_against_baseline(per_b, sc, base, name)}.")
    return out


# how often `compare` calls a difference "beyond 2 standard errors" where there is none, by seeds a side (a
# Monte Carlo of 400,000 pairs of normal samples of one spread): few seeds make 2 SE a low bar (t, not normal)
CHANCE_AT_2SE = {2: 18, 3: 12, 4: 9, 5: 8, 6: 7, 7: 7, 8: 7, 9: 6, 10: 6}  # percent


def _best_steps(finals: list[dict[str, Any]], ls: str) -> str:
    """Where the runs compared are each one's ``best`` checkpoint: the steps they were taken at, by batch size (a
    fixed-steps study then compares checkpoints of different steps, which its line would otherwise hide)."""
    steps: dict[float, list[int]] = defaultdict(list)
    for r in finals:
        if r["label_set"] == ls and r["checkpoint"] == "best" and r.get("step") is not None:
            steps[r["batch_seconds"]].append(int(r["step"]))
    if not steps or len({s for v in steps.values() for s in v}) == 1:
        return ""
    each = "; ".join(f"{b:g} s at step {', '.join(str(s) for s in sorted(set(v)))}" for b, v in sorted(steps.items()))
    return f" These are each run's best checkpoints, not of one step: {each}."


def _against_baseline(per_b: dict[float, list[float]], base_values: list[float], base: str, name: str) -> str:
    """Every batch size against the baseline, grouped by ``compare``'s verdict, and the best. Each, not the best
    alone: the best of k picked after the fact beat a baseline of the same quality beyond 2 SE in 17 % of
    simulated 5-batch studies, against 5 % for one batch size chosen before."""
    bs = sorted(per_b)
    best = min(bs, key=lambda b: statistics.fmean(per_b[b]))
    chance = _chance(min(len(_finite(v)) for v in (*per_b.values(), base_values)))
    if len(bs) == 1:
        verdict = compare(per_b[best], base_values)
        return (f"pre-trained ({best:g} s) {name} {fmt_ms(per_b[best])} % vs {base} {fmt_ms(base_values)} %: "
                f"{_versus(verdict, base)}" + (f" ({chance})" if chance and verdict.endswith(BEYOND) else ""))
    groups: dict[str, list[float]] = defaultdict(list)
    for b in bs:
        groups[_versus(compare(per_b[b], base_values), base)].append(b)
    each = "; ".join(f"{verdict} at {', '.join(f'{b:g}' for b in group)} s" for verdict, group in groups.items())
    return (f"{base} {name} {fmt_ms(base_values)} %, against each of {len(bs)} batch sizes: {each}"
            f"{f' ({chance})' if chance else ''}; "
            f"best pre-trained ({best:g} s) {fmt_ms(per_b[best])} %")


def _versus(verdict: str, base: str) -> str:
    """``compare``'s verdict of the pre-trained model against ``base`` as a sentence's end."""
    if verdict.startswith("no clear difference"):
        return f"no clear difference between pre-trained and {base}" + verdict[len("no clear difference"):]
    return f"{base} and pre-trained are not measured" if verdict == "not measured" else f"pre-trained is {verdict}"


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
            out.append(f"- **Near-equal steps (within 10 %: {steps}), {ls}:** {_neighbours(per_b, name)} "
                       f"({_values(per_b)}).{caveat}")
    return out


def _milestones(records: list[dict[str, Any]], label_sets: list[str], metric: str,
                said: list[tuple[str, set[tuple[str, int]]]]) -> list[str]:
    """Equal nominal hours: the milestone checkpoints of different batch sizes. Each line's label set and the
    (run, step)s it compares are added to ``said``."""
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
                said.append((ls, {(r["pretrain"], r.get("step")) for r in miles
                                  if r["label_set"] == ls and r["checkpoint"] == ck}))
    return out


def _cycle_minima_at_equal_hours(records: list[dict[str, Any]], label_sets: list[str], metric: str,
                                 study: dict[str, Any], said: list[tuple[str, set[tuple[str, int]]]]) -> list[str]:
    """Equal nominal hours in the paper's design (``cycles``): the checkpoints at cycle minima and at the end (the
    last minimum) of different batch sizes, paired where batch × steps is the same ((B, 2T) with (2B, T): the
    paper's §6.3). One value a run and step: checkpoints of one step (the final and a best of the last validation,
    a milestone on a minimum) are one fine-tuning. A pairing whose (run, step)s a line of ``said`` (the hours
    milestones') compared on its label set is not given again."""
    ends = {int(s) for s in study.get("cycle_minima", [])} | ({int(study["steps"])} if study.get("steps") else set())
    one: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in records:
        if r.get("batch_seconds") and r.get("step") is not None and int(r["step"]) in ends:
            one.setdefault((r["pretrain"], int(r["step"]), r["label_set"]), r)
    out = []
    for ls in label_sets:
        per_h: dict[float, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        steps: dict[float, dict[float, int]] = defaultdict(dict)
        pairs: dict[float, set[tuple[str, int]]] = defaultdict(set)
        for (run, step, rls), r in one.items():
            if rls == ls:
                h = round(nominal_hours(r["batch_seconds"], step), 6)
                per_h[h][r["batch_seconds"]].append(r[metric])
                steps[h][r["batch_seconds"]] = step
                pairs[h].add((run, step))
        for h, per_b in sorted(per_h.items()):
            if len(per_b) > 1 and not any(sls == ls and pairs[h] <= compared for sls, compared in said):
                at = ", ".join(f"{b:g} s at step {steps[h][b]}" for b in sorted(per_b))
                out.append(_equal_hours(f"{h:,.6g} h at cycle minima: {at}", ls, metric.upper(), per_b))
    return out

