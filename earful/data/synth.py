"""The built-in synthetic speech corpus, spoken by espeak-ng from the ``espeakng-loader`` wheel.

``synthesize(out, hours=H)`` writes a LibriSpeech-layout corpus (16 kHz mono FLAC, upper-case
``.trans.txt`` transcripts) plus JSONL manifests:

- ``train/``                 unlabelled pre-training audio (transcripts are written too, as LibriSpeech does);
- ``librispeech_finetuning/`` labelled sets in the Libri-light layout, ``1h/{0..5}/clean`` and ``9h/clean``,
  scaled to the corpus: the 10 h analogue is ``labelled_fraction`` × train hours, the 1 h analogue a tenth of
  it and the 10 min analogue a sixth of that; same speakers as ``train``, different utterances;
- ``dev/`` and ``test/``      spoken by **held-out base voices**: no (accent, variant) pair of dev or test is
  ever used in train or the labelled sets, and dev and test do not share one either;
- ``manifests/{train,dev,test,labelled-10min,labelled-1h,labelled-10h}.jsonl``, ``speakers.tsv``,
  ``synth.json``.

A pseudo-speaker is a base voice (one of 8 English accents × a voice variant) plus drawn pitch, pitch range,
speaking rate, a vocal-tract warp (the audio is resampled by a factor α, which scales formants and pitch;
espeak is told to speak α× slower and lower so duration and pitch come back), a channel colour (spectral
tilt and two resonances) and a level. Optional augmentation adds noise at a drawn SNR and a simple
exponential-decay room reverb.

**Determinism.** espeak-ng keeps internal state between utterances, so its output depends on what the
process synthesised before. Utterances are therefore synthesised in fixed chunks, each in a fresh process
(fork, one task a child) in a fixed order: the files are bit-identical for a seed, whatever ``workers``.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from earful.atomic import atomic_open, atomic_write_json, atomic_write_lines

from .manifest import Utterance, write_manifest
from .textpool import sentences

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp",
           "en-us-nyc", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt")
BASE_VOICES = tuple(f"{a}+{v}" for a in ACCENTS for v in VARIANTS)
CHUNK = 32  # utterances per fresh synthesis process; fixed so output does not depend on worker count
SECONDS_PER_SPEAKER = 60.0  # train audio per pseudo-speaker (roughly)
SPLITS = ("train", "dev", "test", "labelled-10min", "labelled-1h", "labelled-10h")

# espeak-ng constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4


@dataclass(frozen=True)
class Speaker:
    """A pseudo-speaker: base voice + drawn parameters."""

    id: str
    voice: str
    split: str
    pitch: float  # espeak pitch, 0-100
    range: float  # espeak pitch range, 0-100
    wpm: float  # words per minute (after warp)
    warp: float  # vocal-tract warp factor α
    tilt_db_per_octave: float
    peaks: tuple[tuple[float, float, float], ...]  # (centre Hz, gain dB, width octaves)
    level_dbfs: float


@dataclass(frozen=True)
class Job:
    uid: str
    relpath: str  # FLAC path relative to the corpus root
    text: str
    speaker: Speaker
    seed: tuple[int, ...]


# ---------------------------------------------------------------------------- espeak-ng through ctypes

class Espeak:
    """espeak-ng in synchronous mode; one per process (it is a process-global library)."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                               espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []

        def collect(wav: Any, n: int, _events: Any) -> int:
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = self._CALLBACK(collect)  # keep a reference: espeak holds a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def synth(self, text: str, voice: str, *, wpm: float, pitch: float, pitch_range: float,
              seed: int = 0) -> np.ndarray:
        """int16 samples at ``self.rate`` (22050 Hz). ``seed`` seeds espeak's noise generator (some
        variants breathe); the output also depends on what this process synthesised before."""
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, int(round(np.clip(wpm, 80, 450))), 0)
        self.lib.espeak_SetParameter(_PITCH, int(round(np.clip(pitch, 0, 100))), 0)
        self.lib.espeak_SetParameter(_RANGE, int(round(np.clip(pitch_range, 0, 100))), 0)
        self._chunks.clear()
        data = text.encode("utf-8")
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak-ng failed on {text!r} (error {err})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


# ---------------------------------------------------------------------------- signal processing

def _colour(x: np.ndarray, spk: Speaker) -> np.ndarray:
    n = len(x)
    nfft = 1 << (n - 1).bit_length()  # power of two: odd lengths make numpy's FFT slow
    spec = np.fft.rfft(x, nfft)
    f = np.fft.rfftfreq(nfft, 1 / SAMPLE_RATE)
    octaves = np.log2(np.maximum(f, 50.0) / 1000.0)
    gain_db = spk.tilt_db_per_octave * octaves
    for centre, g, width in spk.peaks:
        gain_db = gain_db + g * np.exp(-0.5 * ((np.log2(np.maximum(f, 1.0) / centre)) / width) ** 2)
    return np.fft.irfft(spec * 10 ** (gain_db / 20), nfft)[:n]


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:  # room: exponentially decaying noise impulse response
        rt60 = rng.uniform(0.15, 0.6)
        t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
        ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
        ir[0] = 1.0 / rng.uniform(0.3, 1.0)  # direct path against reverberant energy
        n = len(x) + len(ir) - 1
        wet = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n), n)[: len(x)]
        x = wet * (np.std(x) / (np.std(wet) + 1e-12))
    if rng.random() < 0.5:  # additive noise, white or pink, at a drawn SNR
        noise = rng.standard_normal(len(x))
        if rng.random() < 0.5:
            spec = np.fft.rfft(noise)
            spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1))
            noise = np.fft.irfft(spec, len(x))
        snr = rng.uniform(5, 30)
        x = x + noise * (np.std(x) / (np.std(noise) + 1e-12)) * 10 ** (-snr / 20)
    return x


def render(engine: Espeak, job: Job, augment: bool) -> np.ndarray:
    """One utterance as int16 at 16 kHz."""
    spk = job.speaker
    rng = np.random.default_rng(job.seed)
    wpm = spk.wpm * rng.uniform(0.93, 1.07)
    pitch = spk.pitch + rng.uniform(-4, 4)
    raw = engine.synth(job.text.lower(), spk.voice, wpm=wpm / spk.warp, pitch=pitch / spk.warp,
                       pitch_range=spk.range, seed=int(rng.integers(2**31)))
    x = raw.astype(np.float64) / 32768.0
    x = soxr.resample(x, engine.rate * spk.warp, SAMPLE_RATE, quality="HQ")  # the vocal-tract warp
    pad = rng.uniform(0.05, 0.3, size=2)
    x = np.concatenate([np.zeros(int(pad[0] * SAMPLE_RATE)), x, np.zeros(int(pad[1] * SAMPLE_RATE))])
    x = _colour(x, spk)
    if augment:
        x = _augment(x, rng)
    x = x + rng.standard_normal(len(x)) * 10 ** (-75 / 20)  # faint noise floor: no digital silence
    rms = np.sqrt(np.mean(x**2)) + 1e-12
    x = x * (10 ** (spk.level_dbfs / 20) / rms)
    peak = np.abs(x).max()
    if peak > 0.98:
        x = x * (0.98 / peak)
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def _synth_chunk(args: tuple[list[Job], str, bool]) -> list[tuple[str, int]]:
    """Synthesise a chunk in this (fresh) process; returns (uid, num_samples) per job."""
    jobs, out, augment = args
    engine = Espeak()
    done = []
    for job in jobs:
        wave = render(engine, job, augment)
        path = Path(out) / job.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        done.append((job.uid, len(wave)))
    return done


# ---------------------------------------------------------------------------- corpus plan

def _draw_speaker(rng: np.random.Generator, sid: str, voice: str, split: str) -> Speaker:
    peaks = tuple(
        (float(np.exp(rng.uniform(np.log(300), np.log(4000)))), float(rng.uniform(-6, 6)),
         float(rng.uniform(0.3, 1.0)))
        for _ in range(2)
    )
    return Speaker(id=sid, voice=voice, split=split, pitch=float(rng.uniform(30, 70)),
                   range=float(rng.uniform(30, 90)), wpm=float(rng.uniform(145, 195)),
                   warp=float(rng.uniform(0.9, 1.1)), tilt_db_per_octave=float(rng.uniform(-2, 2)),
                   peaks=peaks, level_dbfs=float(rng.uniform(-32, -18)))


def _estimate_seconds(text: str, wpm: float) -> float:
    """Duration of a rendered utterance (least-squares fit on both domains, mean error ≈ 0.16 s)."""
    return 0.13 * len(text) * 60.0 / wpm + 0.65


@dataclass
class Plan:
    seed: int
    hours: float
    domain: str
    speakers: dict[str, list[Speaker]]  # by group: train, dev, test
    jobs: list[Job]
    split_of: dict[str, list[str]]  # manifest split -> utterance ids
    held_out: dict[str, list[str]]  # dev/test -> base voices


def plan_corpus(hours: float, *, domain: str = "commands", seed: int = 0, labelled_fraction: float = 0.25,
                dev_hours: float | None = None, test_hours: float | None = None) -> Plan:
    """Everything about the corpus except the audio: speakers, texts, ids, paths. Deterministic."""
    if hours <= 0:
        raise ValueError("hours must be > 0")
    dev_hours = dev_hours if dev_hours is not None else float(np.clip(hours * 0.05, 1 / 30, 5))
    test_hours = test_hours if test_hours is not None else dev_hours
    rng = np.random.default_rng([seed, 0])
    voices = [BASE_VOICES[i] for i in rng.permutation(len(BASE_VOICES))]
    n_held = max(2, round(0.1 * len(voices)))
    held = {"test": voices[:n_held], "dev": voices[n_held : 2 * n_held]}
    train_voices = voices[2 * n_held :]

    def speakers(group: str, pool: list[str], seconds: float, first_id: int) -> list[Speaker]:
        per = SECONDS_PER_SPEAKER if group == "train" else SECONDS_PER_SPEAKER / 2
        n = int(np.clip(round(seconds / per), 2 if group == "train" else 4, 4000))
        return [_draw_speaker(np.random.default_rng([seed, 1, first_id + k]), str(first_id + k),
                              pool[k % len(pool)], group) for k in range(n)]

    spk = {"train": speakers("train", train_voices, hours * 3600, 100)}
    spk["dev"] = speakers("dev", held["dev"], dev_hours * 3600, 100 + len(spk["train"]))
    spk["test"] = speakers("test", held["test"], test_hours * 3600, 100 + len(spk["train"]) + len(spk["dev"]))

    ten_h = hours * labelled_fraction
    # (manifest splits it belongs to, folder below the root, chapter, speaker group, seconds)
    parts = [(("train",), "train", 1, "train", hours * 3600),
             (("dev",), "dev", 2, "dev", dev_hours * 3600),
             (("test",), "test", 3, "test", test_hours * 3600)]
    for k in range(6):
        member = ("labelled-1h", "labelled-10h") + (("labelled-10min",) if k == 0 else ())
        parts.append((member, f"librispeech_finetuning/1h/{k}/clean", 10 + k, "train", ten_h * 360 / 6))
    parts.append((("labelled-10h",), "librispeech_finetuning/9h/clean", 16, "train", ten_h * 3600 * 0.9))

    text_rng = np.random.default_rng([seed, 2])
    jobs: list[Job] = []
    split_of: dict[str, list[str]] = defaultdict(list)
    for p, (member, folder, chapter, group, seconds) in enumerate(parts):
        pool = spk[group]
        total, j = 0.0, 0
        while total < seconds or j == 0:
            s = pool[j % len(pool)]
            text = sentences(domain, text_rng, 1)[0]
            uid = f"{s.id}-{chapter}-{j // len(pool):04d}"
            jobs.append(Job(uid, f"{folder}/{s.id}/{chapter}/{uid}.flac", text, s, (seed, 3, p, j)))
            for m in member:
                split_of[m].append(uid)
            total += _estimate_seconds(text, s.wpm)
            j += 1
    return Plan(seed, hours, domain, spk, jobs, dict(split_of), held)


# ---------------------------------------------------------------------------- writing

def synthesize(out: str | os.PathLike, hours: float, *, domain: str = "commands", seed: int = 0,
               workers: int | None = None, augment: bool = False, labelled_fraction: float = 0.25,
               dev_hours: float | None = None, test_hours: float | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Write the corpus to ``out`` (see the module docstring); returns the summary also in synth.json."""
    from tqdm import tqdm

    out = Path(out)
    plan = plan_corpus(hours, domain=domain, seed=seed, labelled_fraction=labelled_fraction,
                       dev_hours=dev_hours, test_hours=test_hours)
    workers = workers or max(1, os.cpu_count() or 1)
    out.mkdir(parents=True, exist_ok=True)
    chunks = [(plan.jobs[i : i + CHUNK], str(out), augment) for i in range(0, len(plan.jobs), CHUNK)]
    log.info("synthesising %d utterances (%s domain, about %.2f h of train audio) with %d workers",
             len(plan.jobs), domain, hours, workers)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    lengths: dict[str, int] = {}
    start = time.perf_counter()
    with mp.get_context(method).Pool(workers, maxtasksperchild=1) as pool, \
            tqdm(total=len(plan.jobs), unit="utt", disable=not progress, desc="synth") as bar:
        for done in pool.imap_unordered(_synth_chunk, chunks):
            lengths.update(done)
            bar.update(len(done))
    elapsed = time.perf_counter() - start

    by_uid = {j.uid: j for j in plan.jobs}
    trans: dict[Path, list[str]] = defaultdict(list)
    for j in plan.jobs:
        trans[(out / j.relpath).parent / f"{j.speaker.id}-{j.uid.split('-')[1]}.trans.txt"].append(
            f"{j.uid} {j.text}")
    for path, lines in trans.items():
        atomic_write_lines(path, sorted(lines))
    summary: dict[str, Any] = {"seed": seed, "domain": domain, "requested_hours": hours, "augment": augment,
                               "labelled_fraction": labelled_fraction, "splits": {}}
    for split in SPLITS:
        utts = [Utterance(u, str(out / by_uid[u].relpath), lengths[u], SAMPLE_RATE, by_uid[u].speaker.id,
                          by_uid[u].text) for u in plan.split_of[split]]
        write_manifest(utts, out / "manifests" / f"{split}.jsonl", relative_to=out)
        summary["splits"][split] = {
            "hours": sum(u.num_samples for u in utts) / SAMPLE_RATE / 3600,
            "utterances": len(utts),
            "speakers": len({u.speaker for u in utts}),
        }
    audio_s = sum(lengths.values()) / SAMPLE_RATE
    summary["held_out_voices"] = plan.held_out
    summary["synthesis"] = {"audio_seconds": audio_s, "wall_seconds": elapsed, "workers": workers,
                            "real_time_factor": audio_s / elapsed if elapsed else None}
    with atomic_open(out / "speakers.tsv") as f:
        fields = [k for k in asdict(plan.speakers["train"][0]) if k != "peaks"]
        f.write("\t".join(fields) + "\n")
        for group in plan.speakers.values():
            for s in group:
                f.write("\t".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                  for k, v in asdict(s).items() if k != "peaks") + "\n")
    atomic_write_json(out / "synth.json", summary)
    log.info("wrote %.1f min of audio in %.1f s (%.0f× real time, %d workers) to %s", audio_s / 60, elapsed,
             audio_s / max(elapsed, 1e-9), workers, out)
    for split, s in summary["splits"].items():
        log.info("  %-15s %7.3f h %6d utterances %4d speakers", split, s["hours"], s["utterances"],
                 s["speakers"])
    return summary


def speaker_voices(corpus: str | os.PathLike) -> dict[str, str]:
    """speaker id -> base voice, from a corpus's ``speakers.tsv``."""
    lines = Path(corpus, "speakers.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:] if line]
    return {r["id"]: r["voice"] for r in rows}



