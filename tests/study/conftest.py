"""A toy study shared by the cluster tests (launcher: slurm) and the model-card tests: its YAML, and the folder of
one uninterrupted local run of it (made once per session); a planned run and its kept checkpoints, written by hand,
for the tests of what a study plans from them."""

import json
import time
from pathlib import Path

import pytest

CLUSTER_STUDY = """
name: toy-slurm
seeds: [1]
grid: [4]
mode: fixed-steps
steps: 12
lr: 1.0e-3
lr_scaling: none
device_seconds: 4
corpus: {{dir: {corpus}, synth: {{hours: 0.01, domain: commands, seed: 5, labelled_fraction: 1.0}},
         label_sets: {{10h: manifests/labelled-10h.jsonl}}, test: {{test: manifests/test.jsonl}}}}
pretrain_overrides: [model_preset=tiny, log_every=1, valid_every=12, ckpt_every=100, data.num_workers=0,
                     data.crop_seconds=2.0, data.min_seconds=0.3, tensorboard=false, threads=1]
finetune:
  checkpoints: [final]
  baselines: []
  overrides: [model_preset=tiny, batch_seconds=8, device_seconds=8, max_steps=2, valid_every=2, log_every=1,
              ckpt_every=2, freeze_transformer_steps=1, data.num_workers=0, tensorboard=false, threads=1,
              optim.lr=1.0e-3]
slurm: {{gpus_per_node: 4, poll_seconds: 0.5}}
"""


@pytest.fixture(scope="session")
def cluster_study(tmp_path_factory) -> Path:
    """The study's YAML, its corpus (built on first use) beside it."""
    root = tmp_path_factory.mktemp("cluster-study")
    (root / "toy.yaml").write_text(CLUSTER_STUDY.format(corpus=root / "corpus"))
    return root / "toy.yaml"


@pytest.fixture(scope="session")
def cluster_study_local(cluster_study, tmp_path_factory) -> Path:
    """The study run here, uninterrupted, in this process, its runs tracked with MLflow: its output folder."""
    from earful.study.config import load_study
    from earful.study.run import run_study

    out = tmp_path_factory.mktemp("cluster-study-local") / "out"
    run_study(load_study(cluster_study, ["tracking.backends=[mlflow]"]), out)  # not part of the recipe
    return out


@pytest.fixture
def await_files():
    """``await_files(proc, *paths)``: wait (up to a minute) until every path exists, while ``proc`` (a study
    subprocess whose jobs touch them when they start) still runs."""
    def wait(proc, *paths: Path) -> None:
        deadline = time.monotonic() + 60
        while not all(p.exists() for p in paths):
            assert time.monotonic() < deadline and proc.poll() is None, f"never written: {paths}"
            time.sleep(0.1)
    return wait


@pytest.fixture
def planned_run():
    """A planned run of 4 s batches, 8 steps, seed 1 (``4s-seed1``)."""
    from earful.study.config import PlannedRun

    return PlannedRun(tag="4s", batch_seconds=4, devices=1, device_seconds=4, lr=1e-3, steps=8, hours=8 * 4 / 3600,
                      seed=1)


@pytest.fixture
def kept_checkpoints():
    """``kept_checkpoints(out, run, {name: step})``: the run's checkpoints of those names in study folder ``out``,
    each a trainer.json of its step (and the padded hours of 4 s batches); their folder."""
    def write(out: Path, run, steps: dict[str, int]) -> Path:
        ck = out / "pretrain" / run.name / "checkpoints"
        for name, step in steps.items():
            (ck / name).mkdir(parents=True)
            (ck / name / "trainer.json").write_text(json.dumps({"step": step, "hours_padded": step * 4 / 3600}))
        return ck
    return write
