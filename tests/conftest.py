import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def _write_corpus(root, n: int, seconds: tuple[float, float], seed: int = 0, name: str = "train"):
    """Speech-like test audio (harmonic bursts with pitch glides + noise) and its manifest."""
    import numpy as np
    import soundfile as sf

    from earful.data.manifest import Utterance, write_manifest

    rs = np.random.RandomState(seed)
    sr = 16000
    root.mkdir(parents=True, exist_ok=True)
    utts = []
    for i in range(n):
        dur = rs.uniform(*seconds)
        t = np.arange(int(dur * sr)) / sr
        f0 = rs.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rs.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 8))
        env = (np.sin(2 * np.pi * rs.uniform(2, 5) * t) > -0.2).astype(float)
        x = 0.1 * x * env + 0.005 * rs.randn(len(t))
        path = root / f"{name}-{i:04d}.wav"
        sf.write(path, x.astype(np.float32), sr)
        utts.append(Utterance(id=f"{name}-{i:04d}", path=str(path), num_samples=len(t), sample_rate=sr,
                              speaker=f"spk{i % 3}", transcript=None))
    manifest = root / f"{name}.jsonl"
    write_manifest(utts, manifest)
    return manifest


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """(train manifest, valid manifest): 24 + 6 utterances of 1-2.5 s."""
    root = tmp_path_factory.mktemp("corpus")
    return _write_corpus(root, 24, (1.0, 2.5), 0, "train"), _write_corpus(root, 6, (1.0, 2.0), 1, "valid")


@pytest.fixture(scope="session")
def equal_corpus(tmp_path_factory):
    """24 utterances of exactly 2 s: every batch of 4 s holds 2, so shards split evenly."""
    root = tmp_path_factory.mktemp("equal")
    return _write_corpus(root, 24, (2.0, 2.0), 3, "train")
