"""`earful gradvar`: the paper's gradient spread and the gradient noise scale."""

import json
import math

from earful.checkpoint import save_model
from earful.cli import main
from earful.data.budget import BatchBudget
from earful.model import Wav2Vec2ForPreTraining, load_model_config
from earful.pretrain.gradvar import gradient_noise


def test_gradvar_statistics_and_scaling(tmp_path, tiny_corpus) -> None:
    train, _ = tiny_corpus
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    small = gradient_noise(tmp_path / "ckpt", train, BatchBudget(3.0, 3.0), num_batches=6, seed=0, device="cpu")
    large = gradient_noise(tmp_path / "ckpt", train, BatchBudget(12.0, 12.0), num_batches=6, seed=0, device="cpu")
    for r in (small, large):
        assert r["parameters"] > 0 and r["mean_param_grad_std"] > 0 and r["trace_cov_per_batch"] > 0
        assert r["b_simple_seconds"] > 0
    # bigger batches average out more noise: the per-parameter spread falls (paper §6.5, ∝ 1/sqrt(batch))
    assert large["mean_param_grad_std"] < small["mean_param_grad_std"]
    assert large["batch_seconds_padded"] > small["batch_seconds_padded"]
    # a batch larger than a device: micro-batches of 3 s accumulated into each 12 s gradient, as the trainer does
    accumulated = gradient_noise(tmp_path / "ckpt", train, BatchBudget(12.0, 3.0), num_batches=6, seed=0, device="cpu")
    assert small["batch_seconds_padded"] < accumulated["batch_seconds_padded"] <= 12.0  # four of at most 3 s
    assert accumulated["mean_param_grad_std"] < small["mean_param_grad_std"]


def test_gradvar_cli_writes_json(tmp_path, tiny_corpus) -> None:
    train, _ = tiny_corpus
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    out = tmp_path / "g.json"
    assert main(["gradvar", str(tmp_path / "ckpt"), "--manifest", str(train), "--batch-seconds", "4",
                 "--batches", "3", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["batches"] == 3 and math.isfinite(r["mean_param_grad_std"])
