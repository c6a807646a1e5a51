"""Audio loading: soundfile decode, stereo downmix, soxr resampling, and clear errors for bad files."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

RECEPTIVE_FIELD = 400  # samples: the wav2vec 2.0 feature encoder's receptive field at 16 kHz
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".aiff", ".aif")  # what libsndfile decodes
# audio that libsndfile cannot decode: a folder holding it is told so rather than read without it
UNREADABLE_AUDIO_EXTENSIONS = (".m4a", ".aac", ".wma", ".mp4", ".webm", ".amr")


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


def load_audio(
    path: str | os.PathLike,
    *,
    target_rate: int = 16000,
    resample: bool = True,
    min_samples: int = RECEPTIVE_FIELD,
) -> np.ndarray:
    """Load ``path`` as float32 mono at ``target_rate``.

    Raises AudioError when the file is unreadable, empty, holds NaN/inf, has another sample rate while
    ``resample`` is off, or is shorter than ``min_samples`` (after resampling).
    """
    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(f"{path}: unreadable audio (no such file)") from None
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise AudioError(f"{path}: unreadable audio ({e})") from None
    if data.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    if rate != target_rate:
        if not resample:
            raise AudioError(f"{path}: sample rate {rate} Hz, expected {target_rate} Hz (resampling is off)")
        wave = soxr.resample(wave, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
    if len(wave) < min_samples:
        raise AudioError(
            f"{path}: too short ({len(wave)} samples at {target_rate} Hz; the model's receptive field "
            f"needs at least {min_samples})"
        )
    return np.ascontiguousarray(wave)


def audio_info(path: str | os.PathLike) -> tuple[int, int]:
    """(num_frames, sample_rate) from the file header, without decoding. Raises AudioError."""
    try:
        info = sf.info(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: unreadable audio header ({e})") from None
    return int(info.frames), int(info.samplerate)
