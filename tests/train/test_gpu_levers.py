"""The GPU levers that CPU tests can prove: ``device_seconds: auto`` (the largest micro-batch that fits, found
by trial against a simulated memory limit — a CPU never runs out of memory; the trials are real forward and
backward passes of the task's model) and the ``compile`` path."""

import pytest
import torch

from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train.distributed import Dist
from earful.train.engine import Trainer
from earful.train.memory import MARGIN, find_device_seconds, trial


def test_the_search_finds_the_limit_with_its_margin() -> None:
    calls = []

    def fits(s: float) -> bool:
        calls.append(s)
        return s <= 13.3

    found = find_device_seconds(fits, upper=100.0)
    assert MARGIN * 13.3 * 0.95 <= found <= MARGIN * 13.3
    assert len(calls) < 15  # doubling, then bisection
    assert find_device_seconds(lambda s: True, upper=40.0) == 40.0  # the step's share fits: no accumulation
    assert MARGIN * 0.3 * 0.95 <= find_device_seconds(lambda s: s <= 0.3, upper=40.0) <= MARGIN * 0.3
    with pytest.raises(RuntimeError, match="not even 0.25 s of audio fits"):
        find_device_seconds(lambda s: False, upper=40.0)


def test_trials_run_the_tasks_step_and_stop_at_the_simulated_limit(tiny_corpus, monkeypatch) -> None:
    cfg = load_pretrain_config(None, ["model_preset=tiny", "data.crop_seconds=1.0", "batch_seconds=16"])
    task = PretrainTask(cfg)
    task.build_model(Dist(), None)
    real = task.probe_loss
    shapes = []

    def limited(wave: torch.Tensor) -> torch.Tensor:  # a device that holds 5 s of audio
        shapes.append(tuple(wave.shape))
        if wave.numel() > 5 * 16000:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(wave)

    monkeypatch.setattr(task, "probe_loss", limited)
    found = find_device_seconds(lambda s: trial(task, cfg, Dist(), s), upper=16.0)
    assert MARGIN * 5 * 0.95 <= found <= MARGIN * 5
    assert all(length <= 16000 and n * length >= 16000 * 1.9 for n, length in shapes if n > 1)  # long, few
    assert all(p.grad is None for p in task.model.parameters())  # nothing left behind


def test_auto_on_a_cpu_is_refused_with_the_way_out(tiny_corpus, tmp_path) -> None:
    cfg = load_pretrain_config(None, ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4",
                                      "device_seconds=auto", "device=cpu", "data.num_workers=0", "threads=1"])
    with pytest.raises(ValueError, match="device_seconds=auto finds what a GPU holds by trial; on cpu set a number"):
        Trainer(PretrainTask(cfg), tmp_path / "run")


def test_the_compiled_path_trains_as_the_eager_one(tiny_corpus, tmp_path) -> None:
    """compile=true (the CNN and transformer layers; aot_eager here: the same graphs without a C compiler)
    gives the eager run's weights, and its checkpoints load as any other."""
    from safetensors.torch import load_file

    from earful.checkpoint import load_model

    args = ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=4", "device=cpu",
            "data.num_workers=0", "threads=1", "max_steps=2", "data.crop_seconds=2.0", "data.min_seconds=0.5",
            "tensorboard=false", "valid_every=0"]
    for name, extra in (("eager", []), ("compiled", ["compile=true", "compile_backend=aot_eager"])):
        Trainer(PretrainTask(load_pretrain_config(None, [*args, *extra])), tmp_path / name).fit()
    a, b = (load_file(str(tmp_path / n / "checkpoints/step-0000002/model.safetensors")) for n in ("eager", "compiled"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    load_model(tmp_path / "compiled" / "checkpoints" / "step-0000002")
