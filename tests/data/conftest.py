"""Small corpora made by the tests: LibriSpeech and Libri-light trees of short synthetic tones."""

from __future__ import annotations

import collections
import json
import os
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


VOICED = [(0.5, 3.0), (3.2, 5.5), (7.5, 10.0), (10.1, 11.5)]  # seconds of "speech" in a 12 s recording


def write_recording(path: Path, seconds: float = 12.0, voiced=VOICED, rate: int = 16000, seed: int = 0) -> int:
    """A long recording with known silences: noise bursts (-20 dB) over a -80 dB floor; returns its samples."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    x = 1e-4 * rng.standard_normal(n)
    for a, b in voiced:
        i, j = int(a * rate), int(b * rate)
        x[i:j] += 0.1 * rng.standard_normal(j - i) * (0.6 + 0.4 * np.sin(np.arange(j - i) * 2 * np.pi * 3 / rate))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return n


def make_unlabelled_librilight(root: Path, files: int = 2, annotated: bool = True) -> list[Path]:
    """``SPEAKER/BOOK/FILE.flac`` + ``FILE.json`` (Libri-light's ``voice_activity``) under ``root``."""
    paths = []
    for k in range(files):
        flac = root / f"{100 + k % 2}" / f"book_{k // 2}" / f"chapter_{k:02d}_64kb.flac"
        write_recording(flac, seed=k)
        if annotated:
            meta = {"speaker": flac.parent.parent.name, "snr": 20.0, "voice_activity": [list(v) for v in VOICED]}
            flac.with_suffix(".json").write_text(json.dumps(meta))
        paths.append(flac)
    return paths


@pytest.fixture
def recording():
    return write_recording


@pytest.fixture
def unlabelled_tree():
    return make_unlabelled_librilight


@pytest.fixture
def opens(monkeypatch) -> collections.Counter:
    """Every ``soundfile.SoundFile`` opened for reading (``sf.info`` and ``sf.read`` open one too), counted by what
    it names."""
    counts: collections.Counter = collections.Counter()
    real = sf.SoundFile

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, file, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
            if "r" in (args[0] if args else kwargs.get("mode", "r")):  # not a shard member's FLAC being written
                counts[os.fsdecode(file) if isinstance(file, bytes) else str(file)] += 1  # a path: bytes
            super().__init__(file, *args, **kwargs)

    monkeypatch.setattr(sf, "SoundFile", Counting)
    return counts


@pytest.fixture
def not_utf8():
    """``not_utf8(path, b"caf\\xe9.flac")``: the file ``path`` renamed to a name whose bytes are not UTF-8, returned
    as Python names it (``os.listdir``'s lone surrogates: ``caf\\udce9.flac``); skips where the file system refuses
    such a name."""

    def rename(path: Path, name: bytes) -> Path:
        target = path.with_name(os.fsdecode(name))
        try:
            os.rename(path, target)
        except OSError as e:
            pytest.skip(f"this file system refuses a file name that is not UTF-8 ({e})")
        return target

    return rename
