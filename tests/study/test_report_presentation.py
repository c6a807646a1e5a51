"""How the report shows its numbers, from a hand-made study folder (3 batch sizes × 3 seeds): every ± a standard
error and said so; nominal and padded hours named apart; plots coloured by batch size, with ±SE bars, the
baselines told apart, ticks at the batch sizes, readable labels and titles, legends off the data."""

import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from earful.study.report import build_report

BATCHES, SEEDS, STEPS = (4.0, 8.0, 16.0), (1, 2, 3), 4
FED = {4.0: 0.7, 8.0: 0.88, 16.0: 0.94}  # the padded share of the nominal hours at each batch size
SHIFT = {1: 0.0, 2: 0.03, 3: -0.06}  # the seeds' offsets: SD 0.0458, SE 0.0265


def se(xs):
    return statistics.stdev(xs) / math.sqrt(len(xs))


def nominal(b, step):
    return b * step / 3600


def padded(b, step):
    return FED[b] * nominal(b, step)


def write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_study(out: Path) -> None:
    runs = [{"run": f"{b:g}s-seed{s}", "tag": f"{b:g}s", "batch_seconds": b, "seed": s, "steps": STEPS,
             "hours": nominal(b, STEPS)} for s in SEEDS for b in BATCHES]
    write_jsonl(out / "runs.jsonl", runs)
    (out / "study.json").write_text(json.dumps({"name": "toy", "seeds": list(SEEDS), "mode": "fixed-steps",
                                                "cycles": 2, "cycle_minima": [2], "steps": STEPS,
                                                "grid": list(BATCHES), "plan": "| run |\n|---|",
                                                "corpus": {"valid": "manifests/dev-clean.jsonl"}}))
    results, probes = [], []
    for r in runs:
        b, s, name = r["batch_seconds"], r["seed"], r["run"]
        rdir = out / "pretrain" / name
        write_jsonl(rdir / "valid.jsonl", [
            {"step": step, "hours_padded": padded(b, step), "loss": 4.0 - b / 16 * step / 4 + SHIFT[s],
             "accuracy": 0.1 + b / 100 + SHIFT[s], "ppl_hard_g0": 10 + b + 10 * SHIFT[s]} for step in (2, 4)])
        for ck, step in (("steps-2", 2), (f"step-{STEPS:07d}", STEPS)):
            (rdir / "checkpoints" / ck).mkdir(parents=True)
            (rdir / "checkpoints" / ck / "trainer.json").write_text(json.dumps(
                {"step": step, "hours_padded": padded(b, step), "hours_real": 0.99 * padded(b, step)}))
        results.append({"pretrain": name, "tag": r["tag"], "batch_seconds": b, "seed": s, "checkpoint": "final",
                        "hours_padded": padded(b, STEPS), "step": STEPS, "label_set": "10h", "split": "test",
                        "wer": 0.9 - b / 100 + SHIFT[s], "cer": 0.6 - b / 100 + SHIFT[s]})
        probes += [{"pretrain": name, "tag": r["tag"], "batch_seconds": b, "seed": s, "checkpoint": ck,
                    "step": step, "hours_padded": nominal(b, step), "probe_seed": 0, "task": "pr", "metric": "per",
                    "value": 0.8 - b / 50 * step / 4 + SHIFT[s]} for ck, step in (("steps-2", 2), ("final", STEPS))]
    for s in SEEDS:
        results.append({"pretrain": "scratch", "tag": "scratch", "batch_seconds": None, "seed": s,
                        "checkpoint": "init", "hours_padded": 0.0, "step": 0, "label_set": "10h", "split": "test",
                        "wer": 0.95 + SHIFT[s] / 3, "cer": 0.7 + SHIFT[s]})
        probes.append({"pretrain": "random-init", "tag": "random-init", "batch_seconds": None, "seed": s,
                       "checkpoint": "init", "step": 0, "hours_padded": 0.0, "probe_seed": 0, "task": "pr",
                       "metric": "per", "value": 0.75 + SHIFT[s]})
    probes.append({"pretrain": "fbank", "tag": "fbank", "batch_seconds": None, "seed": None, "checkpoint": "fbank",
                   "step": 0, "hours_padded": 0.0, "probe_seed": 0, "task": "pr", "metric": "per", "value": 0.68})
    write_jsonl(out / "results.jsonl", results)
    write_jsonl(out / "probes.jsonl", probes)


@pytest.fixture
def report(tmp_path, monkeypatch):
    """The report of the toy study: (its text, its folder, {plot file name: (figure, savefig keywords)})."""
    figures = {}
    save = Figure.savefig

    def keep(fig, fname, *args, **kwargs):  # the figure behind each PNG, named as the report names it
        figures[re.sub(r"^\.|\.[^.]+\.tmp$", "", Path(fname).name)] = (fig, kwargs)
        return save(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    make_study(tmp_path)
    text = build_report(tmp_path).read_text()
    return text, tmp_path / "report", figures


def section(text: str, title: str) -> str:
    return text.split(f"## {title}")[1].split("\n## ")[0]


def test_pretraining_validation_names_its_manifest_not_held_out_voices(report) -> None:
    """The heading said "held-out voices" for any corpus, a study validating on the training speakers
    (dev-clean) included: it names corpus.valid and claims nothing about its voices."""
    text, _, _ = report
    assert "## Pre-training: final validation (corpus.valid `manifests/dev-clean.jsonl`; mean ± SE" in text
    assert "held-out" not in text


def test_every_table_prints_mean_and_standard_error_over_seeds_and_says_so(report) -> None:
    """Tables had printed mean ± SD over seeds (said only under the pre-training table), while the claims, the
    docs and 'within 2 standard errors' meant SEs: every ± is now SD/√n and every table's caption says so."""
    text, _, _ = report
    shift = [100 * v for v in SHIFT.values()]
    assert f"{se(shift):.1f}" == "2.6" and f"{statistics.stdev(shift):.1f}" == "4.6"
    pre = section(text, "Pre-training: final validation (corpus.valid `manifests/dev-clean.jsonl`; mean ± SE over "
                        "3 seeds)")
    assert f"| {3.0 + statistics.fmean(SHIFT.values()):.3f} ± {se(list(SHIFT.values())):.3f} |" in pre  # 16 s loss
    probes = section(text, "Probes of frozen features (docs/probes.md; test split, %; mean ± SE over 3 seeds; a "
                           "value without ± is one seed)")
    assert "| random-init (init) | 74.0 ± 2.6 |" in probes and "| fbank (fbank) | 68.0 |" in probes
    wer = section(text, "WER after fine-tuning (`test`, greedy decoding, %; mean ± SE over 3 seeds)")
    assert "CER (`test`, greedy, %; mean ± SE over 3 seeds):" in wer
    assert "| 16s (final) | 0.0178 | 0.0167 | 73.0 ± 2.6 |" in wer
    findings = section(text, "Findings")
    assert "Values are mean ± SE over seeds" in findings and "4 s: 85.0 ± 2.6, 8 s: 81.0 ± 2.6" in findings
    assert ("scratch WER 94.7 ± 0.9 %, against each of 3 batch sizes: pre-trained is lower (beyond 2 standard "
            "errors) at 4, 8, 16 s") in findings and "best pre-trained (16 s) 73.0 ± 2.6 %." in findings
    assert re.search(r"± 4\.6(?![\de])", text) is None  # no SD


def test_no_difference_against_scratch_is_said_in_a_sentence() -> None:
    """The finding had read 'pre-trained is no clear difference (within 2 standard errors)'."""
    from earful.study.report import findings

    ft = [{"pretrain": p if b is None else f"{p}-seed{s}", "tag": p, "batch_seconds": b, "checkpoint": ck, "step": 4,
           "hours_padded": 0.01, "seed": s, "label_set": "10h", "split": "test", "wer": 0.9,
           "cer": 0.5 + SHIFT[s] + (0.01 if b else 0.0)} for s in SEEDS for p, b, ck in (("4s", 4.0, "final"),
                                                                                       ("scratch", None, "init"))]
    text = "\n".join(findings(ft, {"mode": "fixed-steps"}, "test", "cer"))
    assert "%: no clear difference between pre-trained and scratch (within 2 standard errors)." in text
    assert "pre-trained is no clear" not in text


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_csvs_name_nominal_and_padded_hours_apart(report) -> None:
    """'hours' had been batch × steps in design.csv and probes.csv, the trainer's padded hours in
    pretrain_valid.csv and wer.csv: every CSV now has hours_nominal and hours_padded (from trainer.json)."""
    text, rep, _ = report
    tables = {name: read_csv(rep / name) for name in ("design.csv", "probes.csv", "pretrain_valid.csv", "wer.csv")}
    for name, rows in tables.items():
        assert "hours" not in rows[0] and {"hours_nominal", "hours_padded"} <= set(rows[0]), name
    for row in tables["design.csv"]:
        b, step = float(row["batch_seconds"]), int(row["step"])
        assert float(row["hours_nominal"]) == pytest.approx(nominal(b, step))
        assert float(row["hours_padded"]) == pytest.approx(padded(b, step))
    assert {(r["step"], r["hours_nominal"]) for r in tables["design.csv"] if r["batch_seconds"] == "4.0"} == {
        ("2", str(nominal(4.0, 2))), ("4", str(nominal(4.0, 4)))}
    probe_rows = [r for r in tables["probes.csv"] if r["pretrain"] == "4s-seed1"]
    assert [float(r["hours_padded"]) for r in probe_rows] == pytest.approx([padded(4.0, 2), padded(4.0, 4)])
    assert {r["hours_padded"] for r in tables["probes.csv"] if r["pretrain"] in ("fbank", "random-init")} == {"0.0"}
    wer = [r for r in tables["wer.csv"] if r["pretrain"] == "8s-seed2"][0]
    assert float(wer["hours_nominal"]) == pytest.approx(nominal(8.0, 4))
    assert float(wer["hours_padded"]) == pytest.approx(padded(8.0, 4))
    # the tables name both, and the claims say which hours they pair
    assert "| batch | steps | hours, nominal (batch × steps) | hours, padded (audio fed), mean |" in text
    assert "C4's equal hours are nominal hours (batch × steps" in text
    assert "is 70 % of nominal at 4 s, 88 % at 8 s, 94 % at 16 s" in text


def data_lines(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 1]


def test_validation_curves_are_coloured_by_batch_size_and_styled_by_seed(report) -> None:
    """Matplotlib's 10-colour cycle over 15 runs had repeated colours across batch sizes."""
    _, _, figures = report
    for name in ("valid_loss_vs_step.png", "valid_ppl_vs_hours.png"):
        ax = figures[name][0].axes[0]
        lines = data_lines(ax)
        assert len(lines) == 9
        colours = {}
        for line in lines:
            colours.setdefault(line.get_color() if isinstance(line.get_color(), str) else tuple(line.get_color()),
                               []).append(line)
        assert len(colours) == 3 and all(len(v) == 3 for v in colours.values())  # one colour per batch size
        for same in colours.values():  # the seeds of a batch size told apart by line style
            assert len({line.get_linestyle() for line in same}) == 3


def errorbars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def half_lengths(container: ErrorbarContainer) -> list[float]:
    segments = container.lines[2][0].get_segments()
    return [(seg[1][1] - seg[0][1]) / 2 for seg in segments]


def test_probe_plots_show_se_bars_the_random_init_band_and_distinct_baselines(report) -> None:
    """The probe plots had no error bars with 3 seeds, the random init no spread, and both baselines grey."""
    _, _, figures = report
    ax = figures["probe_pr_per_vs_hours.png"][0].axes[0]
    bars = errorbars(ax)
    assert len(bars) == 3
    assert half_lengths(bars[0]) == pytest.approx([100 * se(list(SHIFT.values()))] * 2)
    band = [p for p in ax.patches if p.get_alpha()]  # axhspan: the random init's mean ± SE
    assert len(band) == 1 and band[0].get_height() == pytest.approx(2 * 100 * se(list(SHIFT.values())))
    labels = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    init, fbank = labels["random init (± SE, 3 seeds)"], labels["log-mel filterbanks"]
    assert init.get_linestyle() != fbank.get_linestyle() and init.get_color() != fbank.get_color()
    assert ax.get_ylabel() == "phoneme error rate (PR probe, test) %"
    assert ax.get_xlabel() == "hours of audio seen in pre-training, nominal (batch × steps)"
    assert "mean ± SE over 3 seeds" in ax.get_title()


def test_finetuning_plots_show_se_bars(report) -> None:
    _, _, figures = report
    for name in ("wer_vs_batch.png", "cer_vs_hours.png"):
        ax = figures[name][0].axes[0]
        assert half_lengths(errorbars(ax)[0]) == pytest.approx([100 * se(list(SHIFT.values()))] * (
            3 if name == "wer_vs_batch.png" else 1))
        assert "mean ± SE over 3 seeds" in ax.get_title()
    assert figures["cer_vs_hours.png"][0].axes[0].get_xlabel().endswith("padded (audio fed)")


def test_batch_axes_tick_at_the_batch_sizes_and_hours_axes_at_round_numbers(report) -> None:
    """A log batch axis had ticks at 5, 10, 20, 50 (or 8×10⁰), not at the batch sizes."""
    _, _, figures = report
    for fig, _ in figures.values():
        FigureCanvasAgg(fig).draw()
    ax = figures["wer_vs_batch.png"][0].axes[0]
    assert list(ax.get_xticks()) == list(BATCHES)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4 s", "8 s", "16 s"]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
    for name in ("probe_pr_per_vs_hours.png", "valid_loss_vs_hours.png", "wer_vs_hours.png"):
        ax = figures[name][0].axes[0]
        ticks = list(ax.get_xticks())
        assert len(ticks) >= 3, name
        assert all(float(f"{t:.0e}") == pytest.approx(t) for t in ticks), ticks  # one significant digit
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{t:g}" for t in ticks]


def test_every_plot_has_a_title_readable_labels_and_a_legend_off_its_data(report) -> None:
    """Axis labels used internal keys ('pr.per % (test)'), a long y label was clipped, legends sat on the data."""
    _, _, figures = report
    assert len(figures) == 12  # 6 of validation, 1 probe metric, WER and CER against batch and hours, the gains
    for name, (fig, kwargs) in figures.items():
        for ax in fig.axes:
            assert ax.get_title(), name
            assert "." not in ax.get_ylabel().replace("(", " ").split()[0], name
        assert kwargs.get("bbox_inches") == "tight", name  # labels and legend inside the image
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        right = max(ax.get_window_extent(renderer).x1 for ax in fig.axes)
        for legend in [ax.get_legend() for ax in fig.axes] + fig.legends:  # an axes' own, or the figure's
            if legend is not None:
                assert legend.get_window_extent(renderer).x0 >= right, name


def test_the_gain_of_each_doubling_is_plotted_per_seed_with_its_mean_and_slope(report) -> None:
    """C2-trend's data, one panel a metric: the toy's PER falls by b/50 at the last step, so (lower is better) the
    doublings 4 → 8 and 8 → 16 s gain 8 and 16 points; the seeds' offsets cancel in their gains (SE 0)."""
    text, _, figures = report
    fig, _ = figures["gain_per_doubling.png"]
    panels = {ax.get_title().split(",")[0]: ax for ax in fig.axes}
    assert {"validation loss", "validation accuracy", "phoneme error rate"} <= set(panels)
    ax = panels["phoneme error rate"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4→8", "8→16"]
    seeds = [line for line in ax.get_lines() if line.get_color() == "0.7"]
    assert len(seeds) == 3 and all(list(line.get_ydata()) == pytest.approx([8.0, 16.0]) for line in seeds)
    (bars,) = errorbars(ax)
    assert list(bars.lines[0].get_ydata()) == pytest.approx([8.0, 16.0])
    assert "slope +8 ± 0 (SE) a doubling" in ax.get_title()
    assert "![gain_per_doubling](plots/gain_per_doubling.png)" in text
    assert "| C2-trend | pr.per | **inconclusive** |" in text  # no spread over seeds: no verdict


def test_the_headline_split_is_the_studys_first_test_split(tmp_path) -> None:
    """``corpus.test: {eval: eval.jsonl, dev: valid.jsonl}``: every WER / CER table and finding reported `dev`, the
    first in sort order. Now the study's first test split (in its config's order) is the headline, unless one is
    named test (the shipped studies declare dev first); a folder whose study.json declares none keeps the results'
    order."""
    from earful.study.report import main_split_of

    make_study(tmp_path)
    study = json.loads((tmp_path / "study.json").read_text())
    study["corpus"]["test"] = {"eval": "eval.jsonl", "dev": "valid.jsonl"}
    (tmp_path / "study.json").write_text(json.dumps(study))
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    # dev's records first, its WER 10 points lower than eval's
    write_jsonl(tmp_path / "results.jsonl", [{**r, "split": "dev", "wer": r["wer"] - 0.1} for r in results]
                + [{**r, "split": "eval"} for r in results])
    text = build_report(tmp_path).read_text()
    assert "## WER after fine-tuning (`eval`, greedy decoding" in text and "### In WER (`eval`)" in text
    assert "`dev`" not in text
    wer = section(text, "WER after fine-tuning (`eval`, greedy decoding, %; mean ± SE over 3 seeds)")
    assert f"| scratch (init) | 0 | 0 | {100 * statistics.fmean(0.95 + SHIFT[s] / 3 for s in SEEDS):.1f} ±" in wer
    assert main_split_of(["dev", "eval"], ["eval", "dev"]) == "eval"
    assert main_split_of(["valid", "eval"]) == "valid"  # results' order, not sort order
    assert main_split_of(["dev", "test"], ["dev", "test"]) == "test"  # studies/*.yaml
    assert main_split_of(["dev-clean", "test-clean", "test-other"], ["dev-clean", "test-clean", "test-other"]) == (
        "test-clean")


def test_a_folder_that_is_no_study_or_an_unfinished_one_is_refused(tmp_path, caplog) -> None:
    """`earful study report nonexist` wrote report.md and six blank plots into a new folder and exited 0; a study
    stopped before its end (no runs.jsonl and results.jsonl yet) gave empty tables and blank plots. Now one line
    names the folder and what to do (exit 2, as other commands' errors), and nothing is written."""
    from earful.cli import main

    missing = tmp_path / "nonexist"
    assert main(["study", "report", str(missing)]) == 2
    assert f"{missing}: not a study folder (no study.json)" in caplog.text and not missing.exists()
    caplog.clear()
    stopped = tmp_path / "stopped"
    make_study(stopped)
    (stopped / "runs.jsonl").unlink()
    (stopped / "results.jsonl").unlink()
    assert main(["study", "report", str(stopped)]) == 2
    assert (f"{stopped}: the study has not finished (runs.jsonl and results.jsonl, written when it ends, are "
            f"missing): rerun `earful study run STUDY.yaml --out {stopped}`") in caplog.text
    assert not (stopped / "report").exists()


def test_a_study_without_validation_has_no_blank_validation_plots(tmp_path) -> None:
    """No run validated (no valid.jsonl): the six validation plots were written blank."""
    from earful.cli import main

    make_study(tmp_path)
    for path in tmp_path.glob("pretrain/*/valid.jsonl"):
        path.unlink()
    assert main(["study", "report", str(tmp_path)]) == 0
    plots = sorted(p.name for p in (tmp_path / "report" / "plots").glob("*.png"))
    assert plots and not [p for p in plots if p.startswith("valid_")], plots


def test_the_gain_plot_bars_are_the_seeds_standard_errors_and_a_stale_one_goes(tmp_path, monkeypatch) -> None:
    """The bars' half-lengths are the SE over seeds of each doubling's gain (the toy study's gains have no spread,
    which left them untested); equal gains read a slope of 0 (it read +2.78e-15); a report of data that no longer
    has 3 batch sizes leaves no earlier gain plot behind (the report shows every PNG in plots/)."""
    from earful.study.report import plot_gain_per_doubling

    figures = {}
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, fname, *a, **k: (figures.setdefault("fig", fig),
                                                                         save(fig, fname, *a, **k)))
    gains = {1: (0.05, 0.03), 2: (0.07, 0.03), 3: (0.06, 0.03)}  # (32 → 64, 64 → 128 s) per seed: higher is better
    rows = [{"batch_seconds": b, "step": 400, "seed": k, "m": v}
            for k, (g1, g2) in gains.items() for b, v in ((32.0, 0.1 * k), (64.0, 0.1 * k + g1),
                                                          (128.0, 0.1 * k + g1 + g2))]
    path = tmp_path / "gain_per_doubling.png"
    plot_gain_per_doubling(rows, {"m": True}, path)
    ax = figures["fig"].axes[0]
    (bars,) = errorbars(ax)
    assert list(bars.lines[0].get_ydata()) == pytest.approx([6.0, 3.0])
    assert half_lengths(bars) == pytest.approx([100 * se([0.05, 0.07, 0.06]), 0.0], abs=1e-9)
    assert "slope -3 ± 0.58 (SE) a doubling" in ax.get_title()  # per seed -2, -4, -3 points: SD 1
    figures.clear()
    steady = [{**r, "m": r["m"] if r["batch_seconds"] < 128 else r["m"] - gains[r["seed"]][1] + gains[r["seed"]][0]}
              for r in rows]
    plot_gain_per_doubling(steady, {"m": True}, path)
    assert "slope +0 ± 0 (SE) a doubling" in figures["fig"].axes[0].get_title()
    assert path.exists()
    plot_gain_per_doubling([r for r in rows if r["batch_seconds"] < 128], {"m": True}, path)
    assert not path.exists()


def test_probe_plot_counts_a_milestone_reached_at_the_last_step_once(tmp_path, monkeypatch) -> None:
    """A milestone the last step reaches (hours-1.5 here) holds the final's weights, probed once but written as two
    records of one step: each seed's value had landed twice in the cell ([30, 30, 40, 40], SE 2.89, "over 4
    seeds"). One value per (run, step): [30, 40], SE 5.0, over 2 seeds."""
    from earful.study.report import plot_probe_metric, probe_means, upstream_of

    figures = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, fname, *a, **k: figures.setdefault(Path(fname).name, fig))
    probes = [{"pretrain": f"8s-seed{s}", "tag": "8s", "batch_seconds": 8.0, "seed": s, "checkpoint": ck,
               "step": 675, "probe_seed": 0, "task": "pr", "metric": "per", "value": v}
              for s, v in ((1, 0.30), (2, 0.40)) for ck in ("hours-1.5", "final")]
    plot_probe_metric(probe_means(probes), {upstream_of(r): r for r in probes}, "pr.per", tmp_path)
    (ax,) = next(iter(figures.values())).axes
    (bar,) = errorbars(ax)
    assert half_lengths(bar) == pytest.approx([100 * se([0.30, 0.40])])
    assert half_lengths(bar) == pytest.approx([5.0])
    assert "mean ± SE over 2 seeds" in ax.get_title()
