"""`earful study plan` reproduces the paper's table of runs (docs/paper.md §3.4)."""

import logging
import re
from pathlib import Path

import pytest

from earful.study.config import load_study, plan_runs
from earful.study.plan import plan_table

ROOT = Path(__file__).resolve().parents[2]

# tag: (batch s, GPUs, grad-accum, best lr, hours seen at 400k)
PAPER = {
    "0gpu": (87.5, 1, 1, 7.29e-6, 9_722),
    "1gpu": (150, 1, 1, 7.91e-5, 16_667),
    "2gpu": (300, 2, 1, 1.12e-4, 33_333),
    "4gpu": (600, 4, 1, 1.58e-4, 66_667),
    "8gpu": (1200, 4, 2, 2.24e-4, 133_333),
    "16gpu": (2400, 4, 4, 5.00e-4, 266_667),
    "32gpu": (4800, 4, 8, 5.00e-4, 533_333),
}


def test_paper_plan_matches_the_paper() -> None:
    runs = plan_runs(load_study(ROOT / "studies" / "paper.yaml"))
    assert [r.tag for r in runs] == list(PAPER)
    for r in runs:
        b, gpus, accum, lr, hours = PAPER[r.tag]
        assert (r.batch_seconds, r.devices, r.budget.accumulation, r.steps) == (b, gpus, accum, 400_000)
        assert r.lr == pytest.approx(lr, rel=1e-3)
        assert round(r.hours) == hours
        assert r.device_seconds * r.devices * r.budget.accumulation == pytest.approx(b)


def test_sqrt_and_linear_rules_give_the_paper_sweep(tmp_path) -> None:
    """The README's lr sweep: linear = 5e-4·B/6000, sqrt = 5e-4·sqrt(B/6000)."""
    y = tmp_path / "s.yaml"
    y.write_text("grid: [87.5, 150, 600, 1200, 2400]\nmode: fixed-steps\nsteps: 10\nlr_scaling: sqrt\n")
    sqrt = [r.lr for r in plan_runs(load_study(y))]
    assert sqrt == pytest.approx([6.04e-5, 7.91e-5, 1.58e-4, 2.24e-4, 3.16e-4], rel=2e-3)
    lin = [r.lr for r in plan_runs(load_study(y, ["lr_scaling=linear"]))]
    assert lin == pytest.approx([7.29e-6, 1.25e-5, 5e-5, 1e-4, 2e-4], rel=2e-3)


def test_steps_for_equal_hours_round_half_up(tmp_path) -> None:
    """1.5 h: 16 s × 337.5 and 48 s × 112.5 both round up (round() took 338 but 112: ties to even)."""
    y = tmp_path / "s.yaml"
    y.write_text("grid: [16, 48]\nmode: fixed-hours\nhours: 1.5\n")
    assert [r.steps for r in plan_runs(load_study(y))] == [338, 113]


def test_fixed_hours_gives_equal_audio(tmp_path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text("grid: [16, 32, 64]\nmode: fixed-hours\nhours: 0.5\ndevice_seconds: 16\nseeds: [1, 2]\n")
    runs, table = plan_table(load_study(y), throughput=40.0)
    assert [r.steps for r in runs[:3]] == [113, 56, 28]  # 112.5 rounds up
    assert [r.budget.accumulation for r in runs[:3]] == [1, 2, 4]
    assert len(runs) == 6 and {r.seed for r in runs} == {1, 2}
    assert "est. wall-clock" in table and "min" in table


# hours milestones over studies/paper.yaml's grid, as it set them before it took the paper's cycle minima (its
# ckpt_hours then): 150 s × 100k … 1200 s × 400k steps
PAPER_HOURS = ["cycles=0", "ckpt_hours=[4166.67, 8333.33, 16666.67, 33333.33, 66666.67, 133333.33]",
               "finetune.checkpoints=[best, milestones]", "finetune.milestone_label_sets=null"]


def test_paper_milestones_land_on_whole_steps() -> None:
    """Each milestone is some run's hours at a whole step within its 400k (e.g. 150 s × 400k = 16666.67 h)."""
    study = load_study(ROOT / "studies/paper.yaml", PAPER_HOURS)
    assert study.ckpt_hours
    runs = plan_runs(study)
    for h in study.ckpt_hours:
        hits = [r for r in runs if abs(h * 3600 / r.batch_seconds - round(h * 3600 / r.batch_seconds)) < 0.1
                and round(h * 3600 / r.batch_seconds) <= r.steps]
        assert hits, h


def test_bad_study_is_a_clear_error(tmp_path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text("grid: [16, {batch_seconds: 16, lr: 0.004}]\nmode: fixed-steps\nsteps: 10\n")
    with pytest.raises(ValueError, match=r"share run names \['16s-seed1'\]; give each entry its own `tag:`"):
        plan_runs(load_study(y))
    y.write_text("grid: [16, {batch_seconds: 16, lr: 0.004, tag: 16s-lr4e-3}]\nmode: fixed-steps\nsteps: 10\n")
    with pytest.raises(ValueError, match=r"one grid entry per batch size .* \{16.0: \['16s', '16s-lr4e-3'\]\}"):
        plan_runs(load_study(y))
    y.write_text("grid: []\n")
    with pytest.raises(ValueError, match=rf"{y}: the study's grid is empty"):  # named no file
        load_study(y)
    y.write_text("grid: [10]\nbatch: 3\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_study(y)
    y.write_text("grid: [10]\nmode: fixed-steps\nsteps: 10\nseeds: [1, -2]\n")
    with pytest.raises(ValueError, match=r"seeds and probe_seeds must be >= 0 \(got \[-2\]\)"):
        load_study(y)
    for key, seeds, problem in (("seeds", "[]", r"seeds is empty; give at least one seed"),  # a TypeError
                                ("seeds", "[1, 1]", r"seeds names \[1\] more than once"),  # grid tags, it said
                                ("probe_seeds", "[]", r"probe_seeds is empty"),
                                ("probe_seeds", "[0, 2, 0]", r"probe_seeds names \[0\] more than once")):
        y.write_text(f"grid: [10]\nmode: fixed-steps\nsteps: 10\nprobes: [pr]\n{key}: {seeds}\n")
        with pytest.raises(ValueError, match=problem):
            load_study(y)
    y.write_text("grid: [10]\nmode: fixed-steps\nsteps: 10\nprobe_seeds: []\n")  # no probes: not read
    load_study(y)
    for hours in (".inf", ".nan"):  # an OverflowError, or a message naming nothing
        y.write_text(f"grid: [10]\nmode: fixed-hours\nhours: {hours}\n")
        with pytest.raises(ValueError, match=rf"fixed-hours: set hours to a finite number > 0 \(got {hours[1:]}\)"):
            plan_runs(load_study(y))


def test_plan_checks_the_recipes_the_study_overrides(tmp_path, caplog) -> None:
    """A study's override lists load with its recipes when it is planned (an unknown key passed `study plan`
    and stopped `study run` only after the corpus was synthesised)."""
    from earful.cli import main

    y = tmp_path / "s.yaml"
    y.write_text("grid: [10]\nmode: fixed-steps\nsteps: 10\npretrain_overrides: [bogus=1]\n")
    assert main(["study", "plan", str(y)]) == 2
    assert any("unknown key(s) ['bogus']" in r.getMessage() for r in caplog.records), caplog.text
    y.write_text("grid: [10]\nmode: fixed-steps\nsteps: 10\nfinetune: {overrides: [max_steps=-1]}\n")
    assert main(["study", "plan", str(y)]) == 2
    assert any("max_steps=-1: expected an integer >= 1" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "studies").glob("*.yaml")))
def test_shipped_studies_and_their_configs_load(name) -> None:
    from earful.finetune.config import load_finetune_config
    from earful.pretrain.config import load_pretrain_config

    study = load_study(ROOT / "studies" / f"{name}.yaml")
    assert plan_runs(study)
    pre = load_pretrain_config(study.pretrain_config, study.pretrain_overrides)  # presets: from any folder
    assert pre.model.num_layers > 0
    ft = study.finetune.config
    cfg = load_finetune_config(ROOT / ft if ft and (ROOT / ft).exists() else ft, study.finetune.overrides)
    assert cfg.max_steps > 0


def test_paper_fine_tunes_each_label_set_for_its_own_steps_and_keeps_the_last(tmp_path) -> None:
    """§5.1: 12k, 13k, 20k, 80k and 320k steps; §5.4: the last checkpoint is the one evaluated."""
    from earful.study.stages import finetune_config

    study = load_study(ROOT / "studies/paper.yaml")
    steps = {}
    for ls in study.corpus.label_sets:
        cfg = finetune_config(study, ls, tmp_path, 1, ROOT)
        steps[ls] = cfg.max_steps
        assert not cfg.keep_best
    assert steps == {"10min": 12000, "1h": 13000, "10h": 20000, "100h": 80000, "960h": 320000}
    y = tmp_path / "s.yaml"
    y.write_text("grid: [16]\ncorpus: {label_sets: {10h: a.jsonl}}\nfinetune: {per_label_set: {1h: [max_steps=5]}}\n")
    with pytest.raises(ValueError, match=r"per_label_set names \['1h'\], not in corpus.label_sets"):
        load_study(y)


def test_wall_clock_with_jobs_is_never_less_than_the_longest_run(tmp_path) -> None:
    """200 s and 48 s runs two at a time take as long as the 200 s one (total / jobs said 41.3 min)."""
    y = tmp_path / "s.yaml"
    y.write_text("grid: [200, 48]\nmode: fixed-steps\nsteps: 400\njobs: 2\nthroughput: 20\n")
    _, table = plan_table(load_study(y))
    # 200 s × 400 steps / 20 audio-s/s = 4000 s; 48 s × 400 / 20 = 960 s: the 200 s run is the wall-clock
    assert "| 1.1 h " in table and "| 16.0 min " in table
    assert "of device time" in table and "with jobs=2, 1.1 h of wall-clock (the longest runs first" in table
    from earful.study.plan import wall_clock

    assert wall_clock([4000, 960], 2) == 4000
    assert wall_clock([1, 1, 1, 1], 2) == 2  # total / jobs when the runs share the slots evenly
    assert wall_clock([1, 1, 3], 2) == 3  # the longest first, as the pool starts them (in plan order: 4)
    assert wall_clock([1, 1, 3], 1) == 5
    _, slurm = plan_table(load_study(y, ["launcher=slurm"]))
    assert "of device time" in slurm and "wall-clock (" not in slurm  # on Slurm `jobs` does not apply


def test_layout_column_shows_the_micro_batch_the_run_packs_to(tmp_path) -> None:
    """A 200 s batch on 150 s devices is two 100 s micro-batches (BatchBudget.micro_seconds), not 150 s ones."""
    y = tmp_path / "s.yaml"
    y.write_text("grid: [200, 300, {batch_seconds: 600, devices: 2}]\nmode: fixed-steps\nsteps: 10\n"
                 "device_seconds: 150\n")
    runs, table = plan_table(load_study(y))
    assert [(r.device_seconds, r.budget.accumulation, r.budget.micro_seconds) for r in runs] == [
        (150, 2, 100), (150, 2, 150), (150, 2, 150)]
    assert "| 1 × 100 s × 2 " in table and "| 1 × 150 s × 2 " in table and "| 2 × 150 s × 2 " in table
    assert "devices × micro_seconds × accumulation" in table


def test_plan_says_its_times_are_upper_bounds_from_nominal_audio(tmp_path) -> None:
    """Throughput counts padded audio, the plan nominal audio (batch × steps): it overestimates, and says so."""
    y = tmp_path / "s.yaml"
    y.write_text("grid: [4, 8]\nmode: fixed-hours\nhours: 0.5\nthroughput: 20\n")
    _, table = plan_table(load_study(y))
    assert "upper bounds: computed from nominal audio (batch × steps)" in table
    assert "throughput counts padded audio" in table
    _, unknown = plan_table(load_study(y, ["throughput=null"]))
    assert "no throughput given" in unknown and "upper bounds" not in unknown


def test_plan_counts_what_the_pre_trainings_let_start(tmp_path) -> None:
    """The plan times pre-training only; it says how much follows, counted as the study makes it: cycles=2 keeps
    one minimum and the final of each run; each seed's first run adds its random init and baselines."""
    from earful.study.plan import later_stages

    y = tmp_path / "s.yaml"
    y.write_text("grid: [8, 16]\nmode: fixed-steps\nsteps: 20\ncycles: 2\nseeds: [1, 2]\nprobes: [pr, ic]\n"
                 "probe_seeds: [0, 1]\ngradvar_batches: 3\ncorpus: {label_sets: {a: a.jsonl}}\n"
                 "finetune: {checkpoints: [final, milestones], baselines: [scratch, scratch-frozen-cnn]}\n")
    study = load_study(y)
    runs = plan_runs(study)
    # fine-tunings: 4 runs x (final + 1 minimum) + 2 seeds x 2 baselines; upstreams: 4 x 2 + 2 inits + fbank
    assert later_stages(study, runs) == {"finetunings": 12, "probe_upstreams": 11, "probe_heads": 44, "gradvar": 4}
    assert "Then, not in these times: 12 fine-tunings, each with its evaluation; 11 probe upstreams (44 heads: " \
           "2 tasks × 2 probe seeds each); 4 gradient-noise measurements." in plan_table(study, 20.0)[1]
    shipped = load_study(ROOT / "studies" / "cpu-paper.yaml")  # docs/paper-at-cpu-scale.md: 34 probe jobs, 18 ...
    assert later_stages(shipped, plan_runs(shipped)) == {"finetunings": 18, "probe_upstreams": 34,
                                                          "probe_heads": 68, "gradvar": 15}


def test_plan_counts_checkpoints_of_one_step_once(tmp_path) -> None:
    """A milestone on the last step is the final and one on a cycle minimum is that minimum (the same weights):
    the study fine-tunes and probes each once, and the plan counts them so."""
    from earful.study.plan import later_stages

    y = tmp_path / "s.yaml"
    y.write_text("grid: [4]\nmode: fixed-steps\nsteps: 8\ncycles: 2\nckpt_hours: [0.0044, 0.0089]\n"
                 "probes: [pr]\ncorpus: {label_sets: {a: a.jsonl}}\nfinetune: {checkpoints: [final, milestones]}\n")
    study = load_study(y)
    # steps 4 (hours-0.0044 = steps-4) and 8 (hours-0.0089 = final): 2 fine-tunings + the scratch baseline;
    # 2 upstreams + the random init + filterbanks
    assert later_stages(study, plan_runs(study)) == {"finetunings": 3, "probe_upstreams": 4, "probe_heads": 4,
                                                     "gradvar": 0}


def test_plan_counts_a_milestone_the_last_step_reaches() -> None:
    """hours-H is written once step >= nominal_steps(H), the last step included: the 16,667 h and 66,667 h
    milestones over studies/paper.yaml's grid land on step 400,000 of the 1- and 4-GPU runs (200 fine-tunings, not
    190)."""
    from earful.study.plan import later_stages

    paper = load_study(ROOT / "studies" / "paper.yaml", PAPER_HOURS)
    assert later_stages(paper, plan_runs(paper))["finetunings"] == 200


@pytest.mark.parametrize("tag", [".b4", "scratch", "scratch-frozen-cnn", "scratchy", "random-init", "fbank"])
def test_a_grid_tag_the_study_would_mistake_is_refused(tmp_path, tag) -> None:
    """A tag starting with "." made run folders that merge and status skip as temporary ones (a merge left the
    run out without a word); a tag of a baseline's name made the report compare the run with itself as a
    baseline ("Pre-training vs scratch-seed1")."""
    y = tmp_path / "s.yaml"
    y.write_text(f"grid: [{{batch_seconds: 4, tag: '{tag}'}}]\nmode: fixed-steps\nsteps: 10\n")
    with pytest.raises(ValueError, match=rf"grid\[0\]\.tag='{re.escape(tag)}'"):
        load_study(y)
    y.write_text("grid: [{batch_seconds: 4, tag: b4.scratch}]\nmode: fixed-steps\nsteps: 10\n")
    load_study(y)


@pytest.mark.parametrize("setting, problem", [
    ("reference_batch_seconds=0", r"reference_batch_seconds=0.0: expected a finite number > 0"),  # ZeroDivisionError
    ("lr=.nan", r"lr=nan: expected a finite number > 0"),
    ("ckpt_hours=[.nan]", r"ckpt_hours=\[nan\]: expected finite nominal hours > 0"),  # NaN to integer
    ("ckpt_hours=[-1]", r"ckpt_hours=\[-1.0\]"),
    ("throughput=-20", r"throughput=-20.0: expected a finite number"),  # negative times in the plan
    ("gradvar_batches=1", r"gradvar_batches=1: expected 0 \(off\) or at least 2"),  # failed after pre-training
    ("gradvar_batches=-1", r"gradvar_batches=-1"),
    ("cycles=-2", r"cycles=-2: expected 0"),
    ("jobs=0", r"jobs=0: expected the number of runs at once, at least 1"),  # one at a time, in silence
    # fine-tuned on every label set, as when not given
    ("finetune.label_sets=[]", r"finetune.label_sets is empty, which reads as not given: every one of "
                               r"corpus.label_sets \['a'\] would be fine-tuned on; to fine-tune none, set "
                               r"corpus.label_sets: \{\}"),
    ("grid=[abc]", r"grid\[0\]='abc': expected a batch size in seconds"),  # dictionary update sequence element …
    ("grid=[true]", r"grid\[0\]=True: expected a batch size in seconds"),  # a batch of 1 s
    ("grid=[8, {batch_seconds: 4, foo: 1}]", r"grid\[1\]: unknown key"),
    ("grid=[.nan]", r"grid\[0\].batch_seconds=nan: expected a finite number > 0"),  # NaN to integer
    ("grid=[8, .inf]", r"grid\[1\].batch_seconds=inf: expected a finite number > 0"),
    ("grid=[{batch_seconds: 8, devices: 0}]", r"grid\[0\].devices=0: expected a whole number of devices >= 1"),
    ("grid=[{batch_seconds: 8, lr: .nan}]", r"grid\[0\].lr=nan: expected a finite number > 0"),
    ("grid=[{batch_seconds: 8, device_seconds: -1}]", r"grid\[0\].device_seconds=-1.0: expected a finite"),
    # a list naming an item twice: done once and recorded twice (probes.jsonl, results.jsonl and the CSVs held every
    # row twice), or counted twice by the plan (4 fine-tunings for 3)
    ("probes=[ic, pr, ic]", r"probes names \['ic'\] more than once; name each once"),
    ("finetune.baselines=[scratch, scratch]", r"finetune.baselines names \['scratch'\] more than once"),
    ("finetune.label_sets=[a, a]", r"finetune.label_sets names \['a'\] more than once"),
    ("finetune.milestone_label_sets=[a, a]", r"finetune.milestone_label_sets names \['a'\] more than once"),
    ("finetune.checkpoints=[final, final]", r"finetune.checkpoints names \['final'\] more than once"),
    ("gradvar_checkpoints=[final, final]", r"gradvar_checkpoints names \['final'\] more than once"),
    ("ckpt_hours=[0.01, 0.01]", r"ckpt_hours names \[0.01\] more than once"),
])
def test_a_wrong_study_setting_is_refused_naming_its_key(tmp_path, setting, problem) -> None:
    y = tmp_path / "s.yaml"
    y.write_text("grid: [4]\nmode: fixed-steps\nsteps: 10\ncorpus: {label_sets: {a: a.jsonl}}\n")
    with pytest.raises(ValueError, match=problem):
        plan_runs(load_study(y, [setting]))


def test_a_grid_size_yaml_reads_as_a_string_is_a_number(tmp_path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text("grid: [6e3]\nmode: fixed-steps\nsteps: 10\n")  # YAML 1.1: the string '6e3'
    assert [r.batch_seconds for r in plan_runs(load_study(y))] == [6000.0]


@pytest.mark.parametrize("setting, problem", [
    ("slurm.signal_delay_s=3600", r"slurm.signal_delay_s=3600: .* shorter than the time limit \(slurm.time_min=30"),
    ("slurm.signal_delay_s=-5", r"slurm.signal_delay_s=-5"),  # --signal=USR1@-5
    ("slurm.cpus_per_gpu=0", r"slurm.cpus_per_gpu=0: expected at least 1"),  # --cpus-per-task=0
    ("slurm.mem_gb_per_gpu=-1", r"slurm.mem_gb_per_gpu=-1.0: expected a number of GB > 0"),  # --mem=-1GB
    ("slurm.max_requeues=-1", r"slurm.max_requeues=-1"),
    ("slurm.poll_seconds=0", r"slurm.poll_seconds=0.0"),
    # replaced earful's --signal=USR1@180: the jobs were signalled with USR2, which the trainer does not stop on
    ("slurm.additional={signal: USR2@10}", r"slurm.additional.signal: an sbatch option earful writes itself; set "
                                           r"slurm.signal_delay_s"),
    ("slurm.additional={cpus_per_task: 4}", r"slurm.additional.cpus_per_task: .*; set slurm.cpus_per_gpu"),
    # accepted, and written beside earful's options: --ntasks=1 over --ntasks-per-node, --mem-per-cpu beside
    # --mem (a job Slurm refuses), --no-requeue (no requeue at the time limit); gres was refused as written by
    # earful, which writes --gpus-per-node
    ("slurm.additional={ntasks: 1}", r"slurm.additional.ntasks: earful asks for one task and one GPU a rank"),
    ("slurm.additional={mem-per-cpu: 4G}", r"slurm.additional.mem-per-cpu: Slurm refuses it beside the --mem"),
    ("slurm.additional={no-requeue: true}", r"slurm.additional.no-requeue: a study's jobs requeue themselves"),
    ("slurm.additional={open-mode: truncate}", r"slurm.additional.open-mode: submitit appends"),
    ("slurm.additional={gres: 'gpu:a100:4'}", r"slurm.additional.gres: asks for GPUs a second way; .* a GPU type "
                                              r"with slurm.constraint"),
    # submitit counts a signal as the time limit's only after min(80 %, all but 10 min) of it: 601 s before a
    # 30-minute limit was always a pre-emption, and max_requeues never applied
    ("slurm.signal_delay_s=601", r"slurm.signal_delay_s=601: expected at most 600 s .* slurm.max_requeues never "
                                 r"applies"),
    # written "#SBATCH ----signal=USR2@10", past the check of earful's own options
    ("slurm.additional={--signal: USR2@10}", r"slurm.additional.--signal: write an sbatch option without its "
                                             r"leading dashes \(signal\); slurm.additional.--signal: an sbatch "
                                             r"option earful writes itself"),
    ("slurm.additional={ntasks_per_gpu: 1}", r"slurm.additional.ntasks_per_gpu: earful asks for one task and one GPU"),
])
def test_slurm_settings_that_would_make_wrong_job_scripts_are_refused(tmp_path, setting, problem) -> None:
    y = tmp_path / "s.yaml"
    y.write_text("grid: [4]\nmode: fixed-steps\nsteps: 10\nlauncher: slurm\nslurm: {time_min: 30}\n")
    with pytest.raises(ValueError, match=problem):
        load_study(y, [setting])
    load_study(y, ["slurm.signal_delay_s=600", "slurm.mem_gb_per_gpu=7.5", "slurm.additional={mail-user: me@lab.org}"])


def test_plan_refuses_a_throughput_that_is_not_positive(tmp_path, caplog) -> None:
    """`--throughput -20` printed negative times ("-0.3 min of device time")."""
    from earful.cli import main

    y = tmp_path / "s.yaml"
    y.write_text("grid: [4]\nmode: fixed-steps\nsteps: 10\n")
    for value in ("-20", "0", "nan"):
        assert main(["study", "plan", str(y), "--throughput", value]) == 2
        assert f"--throughput {float(value)}: expected" in caplog.text
    assert main(["study", "plan", str(y), "--throughput", "20"]) == 0


def test_a_synthetic_corpus_needs_a_folder_of_its_own(tmp_path, monkeypatch) -> None:
    """corpus.synth without corpus.dir built the corpus (train/, dev/, test/, manifests/, synth.json ...) into the
    folder earful ran in, without a word."""
    y = tmp_path / "s.yaml"
    y.write_text("grid: [4]\nmode: fixed-steps\nsteps: 10\ncorpus: {synth: {hours: 0.02}}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"corpus.synth builds the corpus into corpus.dir, which is not given"):
        load_study(y)
    assert load_study(y, ["corpus.dir=corpus"]).corpus.dir == "corpus"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_the_other_modes_length_is_said_to_be_unused(tmp_path, caplog) -> None:
    """`hours` in fixed-steps mode (or `steps` in fixed-hours mode) was ignored without a word."""
    y = tmp_path / "s.yaml"
    y.write_text("grid: [4]\nmode: fixed-steps\nsteps: 10\nhours: 5\n")
    assert [r.steps for r in plan_runs(load_study(y))] == [10]
    assert "hours=5 is not used in mode fixed-steps (every run takes steps=10); mode=fixed-hours uses it" in caplog.text
    caplog.clear()
    assert [r.steps for r in plan_runs(load_study(y, ["mode=fixed-hours"]))] == [4500]
    assert "steps=10 is not used in mode fixed-hours (every run takes hours=5 seen); mode=fixed-steps" in caplog.text
    caplog.clear()
    load_study(y, ["hours=0"])
    assert "not used" not in caplog.text


def test_a_missing_study_file_is_named_as_one(tmp_path, caplog) -> None:
    """`earful study plan nope.yaml` said "no such preset" and listed the training presets (pretrain-demo...); it
    names the study presets."""
    from earful.cli import main

    for name, said in ((tmp_path / "nope.yaml", "no such file"), (tmp_path, "a folder, not a config file,")):
        caplog.clear()
        assert main(["study", "plan", str(name)]) == 2
        assert f"{name}: {said} and no such study (presets: ['cpu', 'cpu-paper', " in caplog.text
        assert "'demo', 'gpu', 'paper'])" in caplog.text and "pretrain-demo" not in caplog.text


def test_a_study_preset_is_taken_by_name_where_no_checkout_is(tmp_path, monkeypatch, caplog) -> None:
    """An installed earful (`pip install`, no checkout) had no study at all: `earful study plan demo` said "no such
    file" and the studies lived only in the repository's studies/. They ship in the package, and a name that is no
    file is its preset, the same study as the checkout's file; a file of that name in the folder comes first."""
    from earful.cli import main

    monkeypatch.chdir(tmp_path)
    for name in ("demo", "paper", "cpu-paper"):
        assert load_study(name) == load_study(ROOT / "studies" / f"{name}.yaml")
    assert load_study("demo", ["jobs=1"]).jobs == 1
    caplog.set_level(logging.INFO)
    assert main(["study", "plan", "demo"]) == 0 and "study demo (fixed-hours)" in caplog.text
    (tmp_path / "demo").write_text((ROOT / "studies" / "cpu.yaml").read_text())  # a file named demo: the user's
    assert load_study("demo") == load_study(ROOT / "studies" / "cpu.yaml")


def test_a_bad_override_of_a_study_is_named_as_the_overrides(caplog) -> None:
    """`earful study plan demo batch_seconds=[8]` said ".../studies/demo.yaml: unknown key(s) ['batch_seconds']",
    as if the preset's file held it (the training's commands say "with command-line overrides"): the study's
    errors name the overrides where there are any, and the file alone where there are none."""
    from earful.cli import main

    assert main(["study", "plan", "demo", "batch_seconds=[8]"]) == 2
    assert "demo.yaml with command-line overrides: unknown key(s) ['batch_seconds']" in caplog.text
    caplog.clear()
    assert main(["study", "plan", "demo", "seeds=[1,1]"]) == 2
    assert "demo.yaml with command-line overrides: seeds names [1] more than once" in caplog.text
    caplog.clear()  # the empty label sets' refusal blamed the file alone
    assert main(["study", "plan", "demo", "finetune.label_sets=[]"]) == 2
    assert "demo.yaml with command-line overrides: finetune.label_sets is empty" in caplog.text
