"""The report's tables and claim rows from hand-made records: every seed's random init, checkpoints measured at
steps without validation, and only the planned runs' gradient records."""

import json
from pathlib import Path

import pytest

from earful.study.report import claims_section, design_rows, probe_means, probe_section, upstream_of


def probe(pretrain, ck, step, seed, value, task="pr", metric="per", batch=None):
    return {"pretrain": pretrain, "tag": pretrain if batch is None else f"{batch:g}s", "batch_seconds": batch,
            "seed": seed, "checkpoint": ck, "step": step, "hours_padded": (batch or 0) * step / 3600, "probe_seed": 0,
            "task": task, "metric": metric, "value": value}


def run(name, batch, seed, steps=4):
    return {"run": name, "tag": f"{batch:g}s", "batch_seconds": batch, "seed": seed, "steps": steps}


def test_the_random_init_of_every_seed_is_its_own_upstream(tmp_path: Path) -> None:
    """Each seed's random init is a model of its own: the table gives its mean ± SE over seeds (before, the seeds
    were merged into one mean with no spread)."""
    probes = [probe("random-init", "init", 0, 1, 0.70), probe("random-init", "init", 0, 2, 0.80),
              probe("fbank", "fbank", 0, None, 0.60)]
    means = probe_means(probes)
    assert len(means) == 3
    about = {upstream_of(r): r for r in probes}
    text = "\n".join(probe_section(probes, means, about, tmp_path))
    assert "| random-init (init) | 75.0 ± 5.0 |" in text and "| fbank (fbank) | 60.0 |" in text  # SE: 7.1 / √2


def test_a_checkpoint_probed_at_a_step_without_validation_has_its_row() -> None:
    """Cycle minima at steps 2 and 4, validation only at 4: the probe at step 2 still reaches the claims' rows;
    steps that are neither a minimum nor the end do not."""
    runs = {"2s-seed1": run("2s-seed1", 2.0, 1)}
    curves = {"2s-seed1": [{"step": 3, "loss": 4.0, "accuracy": 0.1}, {"step": 4, "loss": 3.9, "accuracy": 0.2}]}
    probes = [probe("2s-seed1", "steps-2", 2, 1, 0.9, batch=2.0), probe("2s-seed1", "final", 4, 1, 0.8, batch=2.0)]
    means = probe_means(probes)
    rows = design_rows(curves, runs, {"cycle_minima": [2, 4]}, [], None, means, {upstream_of(r): r for r in probes})
    assert [(r["step"], r.get("valid_loss"), r["pr.per"]) for r in rows] == [(2, None, 0.9), (4, 3.9, 0.8)]


def test_gradient_noise_is_judged_on_the_planned_runs_only(tmp_path: Path) -> None:
    """A study rerun with fewer seeds keeps the dropped runs' gradvar files; C6 reads the planned runs' own."""
    runs = {f"{b:g}s-seed1": run(f"{b:g}s-seed1", b, 1) for b in (4.0, 8.0, 16.0)}
    (tmp_path / "gradvar").mkdir()
    for b in (4.0, 8.0, 16.0, 32.0):  # 32 s: a run no longer planned
        std = 0.3 * b**-0.5 if b < 32 else 5.0
        (tmp_path / "gradvar" / f"{b:g}s-seed1.json").write_text(json.dumps({"batch_seconds": b,
                                                                              "mean_param_grad_std": std}))
    study = {"steps": 4, "cycles": 2, "cycle_minima": [2, 4], "seeds": [1]}
    text = "\n".join(claims_section(tmp_path, {}, runs, study, [], None, {}, {}, tmp_path))
    assert "| C6 | gradient std | **reproduced** | log-log slope -0.50" in text and "over 3 runs" in text


def test_the_scope_lists_a_claim_only_with_the_batch_sizes_it_needs() -> None:
    """A one-batch-size grid was said to test C1, C2, C4, C6 and C7; claims.py needs 2 batch sizes for C1 and C4,
    3 for C2, C6 and C7."""
    from earful.study.report import scope_section

    def scope(grid, cycles=2, seeds=(1, 2)):
        study = {"seeds": list(seeds), "cycles": cycles, "mode": "fixed-steps", "grid": grid, "gradvar_batches": 2}
        return scope_section(study)[2]

    one = scope([4])
    assert ("It can test: none of the claims. It cannot test: C1, C2, C2-trend, C4, C6, C7: the grid has 1 batch "
            "size(s)") in one
    two = scope([4, {"batch_seconds": 8}])
    assert "It can test: C1 (every batch size" in two and "; C4 (equal hours" in two
    assert "It cannot test: C2, C2-trend, C6, C7: the grid has 2 batch size(s)" in two
    three = scope([4, 8, 16], seeds=(1, 2, 3))
    assert "C1 (every" in three and "C2 and C2-trend (the gain of each doubling of the batch, at the last" in three
    assert "C6 (gradient" in three and "C7 (codebook" in three
    assert "cannot" not in three
    # C2-trend takes one slope a seed: with 2 seeds it is said not to be testable, not listed as testable
    two_seeds = scope([4, 8, 16])
    assert "; C2 (the gain of each doubling" in two_seeds
    assert "It cannot test: C2-trend: it takes one slope a seed and needs 3 seeds; the study has 2" in two_seeds
    # one cycle has no (2B, T/2) checkpoint: C4 was in neither list
    assert "It cannot test: C4: equal hours needs checkpoints at (B, T) and (2B, T/2)" in scope([4, 8, 16], cycles=1)
    # C4 pairs B with 2B: a grid of no doubling was said to test it, and its verdict found no pairs
    odd = " ".join(scope_section({"seeds": [1], "cycles": 2, "mode": "fixed-steps", "gradvar_batches": 2,
                                  "grid": [4, {"batch_seconds": 12}, 20]}))
    assert "; C4 (equal hours" not in odd and "beyond noise: C1, C2 and C7 are *inconclusive*" in odd
    assert "C4: equal hours pair a batch size B with its double 2B, and the grid (4, 12, 20 s) holds no such " \
           "pair" in odd


@pytest.mark.parametrize(("mode", "cycles"), [("fixed-hours", 0), ("fixed-steps", 0)])
def test_a_design_whose_claims_are_not_judged_says_so_and_calls_none_inconclusive(mode, cycles) -> None:
    """The claims section runs for the paper's design alone (fixed steps with cycles), yet the scope said a
    fixed-hours study "can test: C4" and, with one seed, that "C1, C2, C2-trend, C4 and C7 are inconclusive", a
    verdict nothing computed (naming claims it had just said it cannot test)."""
    from earful.study.report import scope_section

    study = {"seeds": [1], "cycles": cycles, "mode": mode, "grid": [8, 16, 32], "gradvar_batches": 2}
    text = " ".join(scope_section(study))
    assert "Its findings answer, without judging any claim (verdicts need the paper's design" in text
    assert "It can test" not in text and "inconclusive" not in text
    assert "With one seed no difference is judged beyond noise. At CPU scale" in text
    judged = " ".join(scope_section({**study, "mode": "fixed-steps", "cycles": 2}))
    assert "It can test: C1" in judged
    assert "With one seed no difference is judged beyond noise: C1, C2, C4 and C7 are *inconclusive*" in judged
    assert "C6: gradient noise is reported in the paper's design only" in text and "C6's slope" not in text
    assert "C7 (codebook perplexity against batch, in the pre-training table)" in text
    one_cycle = " ".join(scope_section({**study, "mode": "fixed-steps", "cycles": 1, "grid": [8, 16]}))
    assert "beyond noise: C1 is *inconclusive*" in one_cycle


def test_hours_ticks_label_both_ends_of_the_data() -> None:
    """The demo's 0.61-1.41 h axis had ticks to 1.0 only: its final checkpoints sat past the last label. The next
    tick of the series is added past an end the ticks leave unlabelled (one significant digit still)."""
    from earful.study.report import hours_ticks

    assert hours_ticks([0.61, 1.41]) == [0.6, 0.7, 0.8, 0.9, 1.0, 2.0]
    assert hours_ticks([0.1, 10]) == [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]  # as before where the ticks span the data
    assert hours_ticks([0.3, 0.9]) == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert hours_ticks([1.45, 3.2]) == [1.0, 2.0, 3.0]  # 1.45 lay before the first label (2)
    assert hours_ticks([1.2, 1.9]) == [1.0, 2.0] and hours_ticks([12, 19]) == [10.0, 20.0]  # one tick had been all


def test_a_tiny_spread_is_shown_not_rounded_to_none() -> None:
    """A spread below 0.05 points printed "± 0.0" (and a loss's below 0.0005 "± 0.000"), read as none."""
    from earful.study.report import fmt_ms

    assert fmt_ms([4.0, 4.0004, 4.0008], pct=False) == "4.00040 ± 0.00023"
    assert fmt_ms([0.5, 0.5001, 0.5002]) == "50.0100 ± 0.0058" and fmt_ms([0.6, 0.62, 0.65]) == "62.3 ± 1.5"
    assert fmt_ms([0.5, 0.5]) == "50.0 ± 0.0"  # no spread at all: said as it is
    assert fmt_ms([0.1 + 0.2, 0.3, 0.3]) == "30.0 ± 0.0"  # float noise is no spread (not 16 decimal places)


def test_pretrain_valid_csv_names_the_run_each_value_is_from(tmp_path: Path) -> None:
    """A run without validation records shifted the names: seed 2's loss was written under seed 1's name."""
    from earful.study.report import pretraining_section

    runs = {name: {**run(name, 8.0, seed), "hours": 0.01} for name, seed in (("8s-seed1", 1), ("8s-seed2", 2))}
    curves = {"8s-seed1": [], "8s-seed2": [{"step": 4, "hours_padded": 0.01, "loss": 2.5, "accuracy": 0.4,
                                              "ppl_hard_0": 3.0}]}
    pretraining_section(curves, runs, {"seeds": [1, 2]}, tmp_path)
    assert (tmp_path / "pretrain_valid.csv").read_text().splitlines()[1:] == [
        f"8s-seed2,8.0,4,{8 * 4 / 3600},0.01,2.5,0.4"]  # nominal hours (batch × steps), then padded (recorded)


def test_records_written_before_hours_padded_had_its_name_are_read_as_padded(tmp_path) -> None:
    """train.jsonl, valid.jsonl, results.jsonl and probes.jsonl called the padded hours `hours` before they were
    `hours_padded` everywhere (trainer.json's name): the report and the model card read both."""
    from earful.study.report import read_records

    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_text(json.dumps({"step": 4, "hours": 0.01, "loss": 2.5}) + "\n")
    new.write_text(json.dumps({"step": 4, "hours_padded": 0.02, "loss": 2.5}) + "\n")
    assert read_records(old) == [{"step": 4, "hours_padded": 0.01, "loss": 2.5}]
    assert read_records(new) == [{"step": 4, "hours_padded": 0.02, "loss": 2.5}]



def test_a_probe_table_of_one_run_seed_and_two_probe_seeds_says_both(tmp_path: Path) -> None:
    """One run seed probed with probe seeds 0 and 1: the table said "one seed: no ±" and each cell was silently
    the mean of the two probe seeds. It now says one run seed, each value the mean of 2 probe seeds, as do the
    plots."""
    probes = [{**probe("8s-seed1", "final", 4, 1, v, batch=8.0), "probe_seed": k} for k, v in ((0, 0.50), (1, 0.60))]
    probes += [{**probe("random-init", "init", 0, 1, v), "probe_seed": k} for k, v in ((0, 0.70), (1, 0.80))]
    means = probe_means(probes)
    about = {upstream_of(r): r for r in probes}
    text = "\n".join(probe_section(probes, means, about, tmp_path))
    assert "one run seed: no ± (the spread is not measured); each value the mean of 2 probe seeds" in text, text
    assert "| 8s (final) | 55.0 |" in text


def test_a_damaged_record_line_names_its_file_and_line(tmp_path: Path) -> None:
    """A damaged line of a study's or a run's records (results.jsonl, valid.jsonl) was json's message alone,
    naming no file (a model card or a report of that folder stopped on it)."""
    import pytest

    from earful.study.report import read_jsonl

    path = tmp_path / "results.jsonl"
    path.write_text('{"run": "a"}\n\n{"run": "b"\n')
    with pytest.raises(ValueError, match=rf"^{path}:3: not valid JSON \(Expecting"):
        read_jsonl(path)
    path.write_text('{"run": "a"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: not a record \(a JSON object\), but list$"):
        read_jsonl(path)
    path.write_text('{"run": "a"}\n\n')
    assert read_jsonl(path) == [{"run": "a"}] and read_jsonl(tmp_path / "none.jsonl") == []


def test_the_claims_say_their_sign_and_name_what_a_verdict_lacks(tmp_path: Path) -> None:
    """C1's 'largest vs smallest batch: -0.15' on CER is a CER 15 points higher (worse): the sign is the metric's
    better direction, which the report did not say; a batch size or seed without a value at the final step (a
    diverged run) was left out of the verdicts without a word in the claims section."""
    runs = {f"{b:g}s-seed{k}": run(f"{b:g}s-seed{k}", b, k) for b in (4.0, 8.0, 16.0) for k in (1, 2, 3)
            if (b, k) != (16.0, 3)}
    curves = {name: [{"step": 4, "loss": 5.0 - r["batch_seconds"] / 10 + r["seed"] / 100, "accuracy": 0.5}]
              for name, r in runs.items()}
    study = {"steps": 4, "cycles": 2, "cycle_minima": [2], "seeds": [1, 2, 3], "grid": [4, 8, 16, 32]}
    text = "\n".join(claims_section(tmp_path, curves, runs, study, [], None, {}, {}, tmp_path))
    assert "signed in the metric's better direction, as fractions (not %)" in text
    assert "valid_loss at step 4: 16 s seed 3; 32 s (every seed)" in text


def test_fixed_steps_findings_say_when_best_checkpoints_are_of_different_steps() -> None:
    """A fixed-steps study fine-tuning `best` (the paper's recipe): 4 s's best was its step-200 checkpoint, 32 s's
    its step-400 one, and the finding headed "Fixed steps" compared them without a word of it."""
    from earful.study.report import findings

    def rec(b, step, cer, seed):
        return {"pretrain": f"{b:g}s-seed{seed}", "tag": f"{b:g}s", "batch_seconds": b, "checkpoint": "best",
                "step": step, "hours_padded": 0.1, "seed": seed, "label_set": "10h", "split": "test", "wer": 0.9,
                "cer": cer}

    def fixed_steps_line(records):
        (line,) = [x for x in findings(records, {"mode": "fixed-steps", "steps": 400}, "test", "cer")
                   if "Fixed steps" in x]
        return line

    ft = [rec(4.0, 200, 0.50 + 0.01 * k, k) for k in (1, 2, 3)] + [rec(32.0, 400, 0.4 + 0.01 * k, k) for k in (1, 2, 3)]
    assert "best checkpoints, not of one step: 4 s at step 200; 32 s at step 400" in fixed_steps_line(ft)
    assert "not of one step" not in fixed_steps_line([{**r, "step": 400} for r in ft])
