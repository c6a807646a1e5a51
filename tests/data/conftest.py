"""Small corpora made by the tests: LibriSpeech and Libri-light trees of short synthetic tones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def write_tone(path: Path, seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> int:
    """A short noisy tone; returns its length in samples."""
    n = int(seconds * rate)
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / rate) + 0.01 * rng.standard_normal(n)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return n


def make_librispeech(root: Path, speakers=(19, 26), chapters=(198, 495), utts: int = 3) -> dict[str, int]:
    """SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac + trans.txt; returns id -> num_samples."""
    lengths = {}
    for s in speakers:
        for c in chapters:
            lines = []
            for u in range(utts):
                uid = f"{s}-{c}-{u:04d}"
                lengths[uid] = write_tone(root / str(s) / str(c) / f"{uid}.flac", 0.5 + 0.25 * u, seed=u)
                lines.append(f"{uid} HELLO WORLD NUMBER {u}")
            (root / str(s) / str(c) / f"{s}-{c}.trans.txt").write_text("\n".join(lines) + "\n")
    return lengths


@pytest.fixture
def librispeech(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    root = tmp_path / "LibriSpeech" / "dev-clean"
    return root, make_librispeech(root)


@pytest.fixture
def librilight(tmp_path: Path) -> Path:
    """A Libri-light fine-tuning tree: 1h/{0..5}/{clean,other} and 9h/{clean,other}, one speaker each."""
    root = tmp_path / "librispeech_finetuning"
    spk = 100
    for fold in [f"1h/{k}" for k in range(6)] + ["9h"]:
        for kind in ("clean", "other"):
            make_librispeech(root / fold / kind, speakers=(spk,), chapters=(1,), utts=2)
            spk += 1
    return root


@pytest.fixture
def tone():
    """``write_tone`` as a fixture, so test modules need not import conftest."""
    return write_tone


@pytest.fixture
def ls_tree():
    """``make_librispeech`` as a fixture."""
    return make_librispeech
