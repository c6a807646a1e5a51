"""Fixtures of the reliability suite: tiny corpora (some with bad files) and test-sized run configs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
SR = 16000


def _finetune_helpers() -> Any:
    """``tests/finetune/conftest.py`` (tone speech with transcripts), loaded by path: one copy of it."""
    spec = importlib.util.spec_from_file_location("_reliability_tone_speech", ROOT / "tests/finetune/conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


write_labelled = _finetune_helpers().write_labelled


def write_wave(path: Path, seconds: float, rate: int = SR, channels: int = 1, subtype: str = "PCM_16",
               seed: int = 0) -> int:
    """A noisy 220 Hz tone; returns its length in samples (at ``rate``)."""
    n = int(round(seconds * rate))
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / rate) + 0.01 * rng.standard_normal(n)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), rate, subtype=subtype)
    return n


def manifest_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pretrain_overrides(train: Path, steps: int, *extra: str) -> list[str]:
    """A test-sized pre-training run: tiny model, 4 s steps, no workers, one thread."""
    return ["model_preset=tiny", f"data.train={train}", "batch_seconds=4", "device_seconds=4", f"max_steps={steps}",
            "log_every=1", "valid_every=0", "ckpt_every=1000", "data.num_workers=0", "data.min_seconds=0.5",
            "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu", *extra]


def finetune_overrides(train: Path, steps: int, *extra: str) -> list[str]:
    """A test-sized fine-tuning run from scratch: tiny model, 1.75 s micro-batches, one thread."""
    return ["model_preset=tiny", f"data.train={train}", "data.valid=null", "init=scratch", "batch_seconds=3.5",
            "device_seconds=1.75", f"max_steps={steps}", "data.num_workers=0", "tensorboard=false", "threads=1",
            "device=cpu", "log_every=1", "valid_every=0", "ckpt_every=1000", "optim.lr=5e-3",
            "freeze_transformer_steps=2", *extra]


@pytest.fixture(scope="session")
def tones(tmp_path_factory) -> Path:
    """Labelled tone speech: four two-word utterances (~1.5 s each)."""
    return write_labelled(tmp_path_factory.mktemp("tones"), ["bad cafe", "head face", "dead beef", "cage fad"],
                          "train")


@pytest.fixture(scope="session")
def rel() -> SimpleNamespace:
    """The helpers above, for test modules (``--import-mode=importlib`` cannot import a conftest)."""
    return SimpleNamespace(
        ROOT=ROOT, write_wave=write_wave, manifest_rows=manifest_rows, write_rows=write_rows, read_jsonl=read_jsonl,
        pretrain_overrides=pretrain_overrides, finetune_overrides=finetune_overrides,
    )


@pytest.fixture
def nan_steps(monkeypatch) -> set[int]:
    """A fault, injected by patching both tasks: the loss of every optimizer step (0-based) in the returned set
    is NaN. Fill the set to arm it, clear it to heal the run."""
    from earful.finetune.task import FinetuneTask
    from earful.pretrain.task import PretrainTask

    steps: set[int] = set()
    for cls in (PretrainTask, FinetuneTask):
        real_start, real_micro = cls.start_step, cls.micro_step

        def start_step(self, step, real=real_start):
            self.fault_step = step
            real(self, step)

        def micro_step(self, net, batch, generator, host_generator, real=real_micro):
            loss, stats = real(self, net, batch, generator, host_generator)
            if self.fault_step in steps:  # as a NaN from the model: the loss and its logged term
                loss = loss * float("nan")
                stats = {**stats, **({"contrastive": stats["contrastive"] * float("nan")} if "contrastive" in stats
                                     else {})}
            return loss, stats

        monkeypatch.setattr(cls, "start_step", start_step)
        monkeypatch.setattr(cls, "micro_step", micro_step)
    return steps
