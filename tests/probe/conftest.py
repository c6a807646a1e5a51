"""Tiny data made here, on which every probe task is learnable in seconds: "speech" of tones.

Each of six phonemes is a tone (its letter, for ASR, is a..f); an utterance is 3-6 of them, 120 ms each with
40 ms of silence between, over its speaker's hum (a low and a high tone and a level of its own). The
intent has two slots that depend on which phonemes occur. Splits: ``train`` (speakers s0-s3), ``same`` (other
utterances of s0-s3) and ``held`` (speakers s4-s6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earful.checkpoint import save_model
from earful.data.manifest import Utterance, write_manifest
from earful.model import Wav2Vec2ForPreTraining, load_model_config

SR = 16000
TONES = {"p": 400.0, "t": 700.0, "k": 1100.0, "s": 1700.0, "m": 2500.0, "n": 3500.0}
LETTERS = dict(zip(TONES, "abcdef", strict=True))
VOICE = (0, 2, 4, 6, 1, 3, 5)  # speaker -> place of its hum and level


def _utterance(root: Path, uid: str, speaker: int, rng: np.random.Generator) -> Utterance:
    phones = [str(p) for p in rng.choice(list(TONES), size=int(rng.integers(3, 7)))]
    seg, gap = int(0.12 * SR), int(0.04 * SR)
    parts = [np.zeros(gap)]
    for p in phones:
        t = np.arange(seg) / SR
        parts += [np.sin(2 * np.pi * TONES[p] * t) * np.hanning(seg), np.zeros(gap)]
    x = np.concatenate(parts)
    t = np.arange(len(x)) / SR
    k = VOICE[speaker]  # held-out speakers' hums lie between the training speakers'
    hum = 0.3 * np.sin(2 * np.pi * (90 + 30 * k) * t) + 0.2 * np.sin(2 * np.pi * (5000 + 200 * k) * t)
    x = (0.5 * x + hum + 0.01 * rng.standard_normal(len(x))) * (0.2 + 0.05 * k)
    path = root / f"{uid}.wav"
    sf.write(path, x.astype(np.float32), SR)
    intent = {"action": "up" if "p" in phones else "down", "object": "box" if "m" in phones else "cup"}
    return Utterance(uid, str(path), len(x), SR, f"s{speaker}", "".join(LETTERS[p] for p in phones).upper(),
                     phonemes=" ".join(phones), intent=intent)


@pytest.fixture(scope="session")
def tones(tmp_path_factory) -> dict[str, Path]:
    """Manifests ``train``, ``same``, ``held``."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(7)
    plan = {"train": (range(4), 20), "same": (range(4), 4), "held": (range(4, 7), 6)}
    out = {}
    for split, (speakers, per) in plan.items():
        utts = [_utterance(root, f"{split}-{s}-{i}", s, rng) for s in speakers for i in range(per)]
        write_manifest(utts, root / f"{split}.jsonl")
        out[split] = root / f"{split}.jsonl"
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random-init `tiny` pre-training checkpoint (2 layers: 3 hidden states of 64)."""
    import torch

    torch.manual_seed(123)  # not 0: `--random-init` (seed 0) must give other weights
    return save_model(tmp_path_factory.mktemp("ckpt") / "init", Wav2Vec2ForPreTraining(load_model_config("tiny")))


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """A feature cache shared by the tests that do not test the cache itself."""
    return tmp_path_factory.mktemp("features")
