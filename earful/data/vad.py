"""Voice activity and segments: long recordings (Libri-light's files run to 70 minutes) cut into windows of
bounded length at pauses, each a manifest row with ``offset`` and ``num_samples`` (nothing is re-encoded).

Voice activity comes from the annotations Libri-light ships (``FILE.json``: ``voice_activity``, a list of
``[start, end]`` in seconds), or, without them, from ``energy_vad``:

1. the file is read in blocks and cut into 20 ms frames; each frame's energy is ``10·log10(mean(x²))`` dB;
2. the noise floor is the 5th percentile of the frame energies, the loud level the 95th; a frame is voiced
   when it is louder than ``max(floor + 9 dB, loud − 40 dB)`` (9 dB over the floor, but never more than 40 dB
   under the loud parts, for audio with digital silence);
3. voiced runs shorter than 0.1 s (clicks) are dropped, pauses shorter than 0.3 s are filled, and each run
   is widened by 0.1 s on both sides (onsets and releases are quiet).

``cut_segments`` then joins consecutive voiced stretches into segments while a segment stays within
``max_seconds`` and the pause bridged is at most ``max_pause`` seconds; a stretch longer than ``max_seconds``
alone is cut into equal pieces. Segments shorter than ``min_seconds`` are left out and counted.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .audio import RECEPTIVE_FIELD, AudioError, soundfile_source
from .budget import SAMPLE_RATE
from .manifest import printable_path

FRAME_SECONDS = 0.02
FLOOR_MARGIN_DB = 9.0  # voiced: this much over the noise floor ...
LOUD_RANGE_DB = 40.0  # ... or, if higher, this much under the loud level
MIN_RUN_SECONDS = 0.1
MIN_PAUSE_SECONDS = 0.3
PAD_SECONDS = 0.1
END_TOLERANCE = 0.5  # seconds an annotation may end past its file's end (cut to it); beyond: another file's


MIN_SEGMENT_SECONDS = RECEPTIVE_FIELD / SAMPLE_RATE  # the shortest segment a model frame takes (0.025 s)


@dataclass(frozen=True)
class SegmentLimits:
    """How ``cut_segments`` cuts: the longest segment, the shortest kept, the longest pause bridged."""

    max_seconds: float = 20.0
    min_seconds: float = 2.0
    max_pause: float = 1.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.min_seconds, self.max_seconds, self.max_pause)) or not (
                0 < self.min_seconds <= self.max_seconds and self.max_pause >= 0):
            raise ValueError(f"segment limits: expected finite seconds with 0 < min_seconds ({self.min_seconds}) <= "
                             f"max_seconds ({self.max_seconds}) and max_pause ({self.max_pause}) >= 0")
        if self.min_seconds < MIN_SEGMENT_SECONDS:  # shorter rows: every command reading them refuses them
            raise ValueError(f"segment limits: min_seconds {self.min_seconds} is shorter than one model frame "
                             f"needs ({MIN_SEGMENT_SECONDS:g} s, {RECEPTIVE_FIELD} samples at {SAMPLE_RATE} Hz): "
                             "`earful shard` and the loader would refuse such segments; give at least that")


DEFAULT_LIMITS = SegmentLimits()


def frame_energies(path: str | os.PathLike, rate: int) -> tuple[np.ndarray, int]:
    """(energy in dB of each 20 ms frame, samples a frame) of ``path`` at its sample rate ``rate`` (from the header
    its caller has read), reading in blocks. The path goes to soundfile as ``open_audio`` gives it
    (``soundfile_source``: bytes, so that a file name that is not UTF-8 opens as any other)."""
    frame = max(1, round(FRAME_SECONDS * rate))
    source = soundfile_source(path)  # a name no file can have here: an AudioError naming it
    try:
        parts = []
        for block in sf.blocks(source, blocksize=frame * 4096, dtype="float32", always_2d=True):
            mono = block.mean(axis=1)
            whole = len(mono) // frame * frame
            if whole:
                parts.append(np.mean(mono[:whole].reshape(-1, frame).astype(np.float64) ** 2, axis=1))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:  # ValueError: soundfile's own
        detail = e.error_string if isinstance(e, sf.LibsndfileError) else e  # soundfile's prefix names the file
        raise AudioError(f"{printable_path(path)}: unreadable audio ({detail})") from None
    power = np.concatenate(parts) if parts else np.zeros(0)
    return 10 * np.log10(power + 1e-12), frame


def _runs(mask: np.ndarray) -> np.ndarray:
    """(runs, 2) [start, end) frame indices of the True runs of ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)


def energy_vad(path: str | os.PathLike, rate: int) -> np.ndarray:
    """Voiced stretches of ``path``, whose sample rate is ``rate``, by frame energy (see the module docstring):
    (n, 2) [start, end) in samples."""
    db, frame = frame_energies(path, rate)
    if not len(db):
        return np.zeros((0, 2), dtype=np.int64)
    floor, loud = np.percentile(db, 5), np.percentile(db, 95)
    runs = _runs(db > max(floor + FLOOR_MARGIN_DB, loud - LOUD_RANGE_DB))
    per_second = 1.0 / FRAME_SECONDS
    runs = runs[runs[:, 1] - runs[:, 0] >= round(MIN_RUN_SECONDS * per_second)]
    if len(runs) > 1:  # fill short pauses
        keep = np.concatenate([[True], runs[1:, 0] - runs[:-1, 1] >= round(MIN_PAUSE_SECONDS * per_second)])
        starts = runs[keep, 0]
        ends = np.append(runs[np.flatnonzero(keep)[1:] - 1, 1], runs[-1, 1])
        runs = np.stack([starts, ends], axis=1)
    pad = round(PAD_SECONDS * per_second)
    total = len(db)
    samples = np.stack([np.maximum(runs[:, 0] - pad, 0), np.minimum(runs[:, 1] + pad, total)], axis=1) * frame
    return samples.astype(np.int64).reshape(-1, 2)


def annotated_vad(voice_activity: object, rate: int, frames: int) -> np.ndarray:
    """Libri-light's ``voice_activity`` (``[[start, end], ...]`` in seconds) as (n, 2) [start, end) samples within
    the file of ``frames`` samples at ``rate``, in order, overlaps merged. Raises ValueError, saying which pair,
    when it is not a list of pairs of finite numbers 0 <= start <= end within the file (an end up to
    ``END_TOLERANCE`` seconds past the file's end, the annotator's rounding, is cut to it)."""
    ok = isinstance(voice_activity, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(t, int | float) and not isinstance(t, bool) for t in p)
        for p in voice_activity)
    if not ok:
        raise ValueError("voice_activity must be a list of [start, end] pairs in seconds")
    if not voice_activity:
        return np.zeros((0, 2), dtype=np.int64)
    try:
        seconds = np.array(voice_activity, dtype=np.float64)
    except OverflowError:  # an integer beyond a float's range
        raise ValueError("voice_activity holds a number beyond any file's length") from None
    duration = frames / rate
    bad = ~np.isfinite(seconds).all(axis=1) | (seconds[:, 0] < 0) | (seconds[:, 1] < seconds[:, 0])
    bad |= seconds[:, 1] > duration + END_TOLERANCE
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"voice_activity pair {k} {voice_activity[k]}: expected finite seconds with 0 <= start <= "
                         f"end <= {duration + END_TOLERANCE:.3f} (the file's {duration:.3f} s and {END_TOLERANCE:g} s "
                         f"of rounding) ({np.count_nonzero(bad)} such pair(s))")
    spans = np.minimum(np.round(seconds * rate), frames).astype(np.int64)
    spans = spans[spans[:, 1] > spans[:, 0]]
    spans = spans[np.argsort(spans[:, 0], kind="stable")]
    merged: list[list[int]] = []
    for a, b in spans.tolist():  # pairs that overlap (rounding, or an annotator's) are one stretch of voice
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return np.array(merged, dtype=np.int64).reshape(-1, 2)


def cut_segments(voiced: np.ndarray, rate: int, limits: SegmentLimits) -> tuple[list[tuple[int, int]], int]:
    """Segments [start, end) in samples from voiced stretches (see the module docstring), and the samples of
    voice activity left out in segments shorter than ``limits.min_seconds``."""
    longest, shortest = round(limits.max_seconds * rate), round(limits.min_seconds * rate)
    pause = round(limits.max_pause * rate)
    pieces: list[tuple[int, int]] = []
    for a, b in voiced.tolist():
        n = -(-(b - a) // longest)  # a stretch longer than a segment: equal pieces
        cuts = [a + (b - a) * k // n for k in range(n + 1)]
        pieces += list(zip(cuts[:-1], cuts[1:], strict=True))
    segments: list[tuple[int, int]] = []
    for a, b in pieces:
        if segments and b - segments[-1][0] <= longest and a - segments[-1][1] <= pause:
            segments[-1] = (segments[-1][0], b)
        else:
            segments.append((a, b))
    kept = [(a, b) for a, b in segments if b - a >= shortest]
    return kept, sum(b - a for a, b in segments if b - a < shortest)
