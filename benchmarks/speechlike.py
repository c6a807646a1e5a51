"""Speech-like audio for benchmarks, without a synthesiser: voiced syllables (a glottal pulse train with a
moving pitch, shaped by three formants), unvoiced noise bursts and pauses, at 16 kHz.

The model does not care what it hears for throughput, but masking, the quantizer's code histogram and
hence the "negative equals positive" handling do depend on the input, so this is closer to speech than
white noise.
"""

from __future__ import annotations

import numpy as np
import torch

SR = 16000
_VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410),
           (440, 1020, 2240), (660, 1720, 2410), (490, 1350, 1690)]  # fmt: skip


def _formant_filter(x: np.ndarray, formants: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SR)
    env = np.zeros_like(f)
    for i, fc in enumerate(formants):
        fc = fc * rng.uniform(0.9, 1.1)
        env += np.exp(-0.5 * ((f - fc) / (60 + 40 * i)) ** 2) / (1 + i)
    return np.fft.irfft(spec * (env + 0.01), n=len(x))


def utterance(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One utterance of ``seconds`` s, float32, RMS ≈ 0.1."""
    n = int(seconds * SR)
    out = np.zeros(n, dtype=np.float64)
    pos = int(rng.uniform(0.05, 0.2) * SR)  # leading silence
    f0_base = rng.uniform(90, 220)
    while pos < n:
        kind = rng.choice(["voiced", "voiced", "voiced", "unvoiced", "pause"])
        length = int(rng.uniform(0.08, 0.3) * SR)
        length = min(length, n - pos)
        if length < 64:
            break
        t = np.arange(length) / SR
        if kind == "voiced":
            f0 = f0_base * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6)))
            phase = 2 * np.pi * np.cumsum(f0) / SR
            src = sum(np.sin(k * phase) / k for k in range(1, 30))  # sawtooth-like source
            seg = _formant_filter(src, _VOWELS[rng.integers(len(_VOWELS))], rng)
        elif kind == "unvoiced":
            seg = rng.standard_normal(length)
            seg = _formant_filter(seg, (2500, 4000, 5500), rng) * 0.5
        else:
            seg = np.zeros(length)
        env = np.hanning(length) ** 0.5
        out[pos : pos + length] += seg * env
        pos += length
    out += 1e-3 * rng.standard_normal(n)
    out *= 0.1 / max(np.sqrt(np.mean(out**2)), 1e-8)
    return out.astype(np.float32)


def speech_batch(seconds: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero-padded batch ``(wave (B, samples), lengths (B,))`` of speech-like utterances."""
    rng = np.random.default_rng(seed)
    utts = [utterance(s, rng) for s in seconds]
    lengths = torch.tensor([len(u) for u in utts], dtype=torch.long)
    wave = torch.zeros(len(utts), int(lengths.max()))
    for i, u in enumerate(utts):
        wave[i, : len(u)] = torch.from_numpy(u)
    return wave, lengths
