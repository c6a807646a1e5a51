"""Log-mel filterbanks with torch ops (SUPERB's FBANK baseline): 25 ms Hann windows every 10 ms, 512-point
FFT, 80 triangular filters on the HTK mel scale from 20 Hz to Nyquist, natural log of the power."""

from __future__ import annotations

import torch

from earful.data.budget import SAMPLE_RATE

WINDOW, HOP, N_FFT, N_MELS = 400, 160, 512, 80  # samples: 25 ms, 10 ms
FRAME_RATE = SAMPLE_RATE / HOP  # frames per second
LOW_HZ = 20.0
FLOOR = 1e-10  # power floor before the log (digital silence)


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters, equally spaced in mel, peak 1."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (bins,)
    edges = _hz(torch.linspace(float(_mel(torch.tensor(LOW_HZ))), float(_mel(torch.tensor(sample_rate / 2))),
                               n_mels + 2, dtype=torch.float64))  # (n_mels + 2,)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]  # (n_mels,) each
    up = (freqs[:, None] - lo) / (mid - lo)  # (bins, n_mels)
    down = (hi - freqs[:, None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def num_frames(samples: int) -> int:
    return max(0, 1 + (samples - WINDOW) // HOP)


def log_mel(wave: torch.Tensor, filters: torch.Tensor | None = None) -> torch.Tensor:
    """(samples,) float waveform at 16 kHz → (frames, n_mels) log-mel energies, frames = 1 + (samples − 400) // 160."""
    filters = mel_filters() if filters is None else filters
    frames = wave.float().unfold(0, WINDOW, HOP)  # (frames, WINDOW)
    frames = frames - frames.mean(dim=1, keepdim=True)  # no DC offset per frame
    window = torch.hann_window(WINDOW, periodic=False, dtype=frames.dtype)
    spec = torch.fft.rfft(frames * window, n=N_FFT)  # (frames, bins)
    power = spec.real.square() + spec.imag.square()
    return torch.log(torch.clamp(power @ filters, min=FLOOR))  # (frames, n_mels)
