"""Labelled test audio: each character is a tone of its own pitch, words are separated by silence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SR = 16000
LETTERS = "abcdefgh"


def tone_speech(text: str, rs: np.random.RandomState, char_s: float = 0.12, gap_s: float = 0.03,
                space_s: float = 0.15) -> np.ndarray:
    """``text`` spoken as tones: letter k of LETTERS at 300·1.25^k Hz (with two harmonics), silence between."""
    parts = [np.zeros(int(0.1 * SR))]
    for ch in text:
        if ch == " ":
            parts.append(np.zeros(int(space_s * SR)))
            continue
        f = 300.0 * 1.25 ** LETTERS.index(ch)
        t = np.arange(int(char_s * SR)) / SR
        env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
        x = np.sin(2 * np.pi * f * t) + 0.5 * np.sin(4 * np.pi * f * t) + 0.25 * np.sin(6 * np.pi * f * t)
        parts += [0.2 * env * x, np.zeros(int(gap_s * SR))]
    parts.append(np.zeros(int(0.1 * SR)))
    x = np.concatenate(parts)
    return (x + 0.003 * rs.randn(len(x))).astype(np.float32)


def write_labelled(root: Path, texts: list[str], name: str, seed: int = 0) -> Path:
    """Write ``texts`` as tone speech and a manifest ``root/name.jsonl`` with the transcripts."""
    import soundfile as sf

    from earful.data.manifest import Utterance, write_manifest

    rs = np.random.RandomState(seed)
    root.mkdir(parents=True, exist_ok=True)
    utts = []
    for i, text in enumerate(texts):
        x = tone_speech(text, rs)
        path = root / f"{name}-{i:03d}.wav"
        sf.write(path, x, SR)
        utts.append(Utterance(id=f"{name}-{i:03d}", path=str(path), num_samples=len(x), sample_rate=SR,
                              speaker="tone", transcript=text.upper()))
    manifest = root / f"{name}.jsonl"
    write_manifest(utts, manifest)
    return manifest


TRAIN_TEXTS = ["bad cafe", "head face", "dead beef", "cage fad"]


@pytest.fixture
def labelled():
    """The :func:`write_labelled` helper, for tests that make their own labelled audio."""
    return write_labelled


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(train, dev) manifests: four two-word utterances (~1.5 s each); dev holds the same texts."""
    root = tmp_path_factory.mktemp("tones")
    return write_labelled(root, TRAIN_TEXTS, "train", 0), write_labelled(root, TRAIN_TEXTS, "dev", 1)
