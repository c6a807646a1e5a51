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

Beside each chapter's ``SPK-CH.trans.txt``: ``SPK-CH.phonemes.txt``, the phonemes espeak-ng spoke (its phoneme
events, folded into earful's inventory, :mod:`earful.data.phonemes`) and, in the ``commands`` domain,
``SPK-CH.intents.txt``, each utterance's intent as action, object and location slots (as Fluent Speech
Commands; :func:`earful.data.textpool.command_intent`). The manifests carry both (``phonemes``, ``intent``).

A pseudo-speaker is a base voice (one of 8 English accents × a voice variant) plus drawn pitch, pitch range,
speaking rate, a vocal-tract warp (the audio is resampled by a factor α, which scales formants and pitch;
espeak is told to speak α× slower and lower so duration and pitch come back), a channel colour (spectral
tilt and two resonances) and a level. Optional augmentation adds noise at a drawn SNR and a simple
exponential-decay room reverb.

**Determinism.** espeak-ng keeps internal state between utterances, so its output depends on what the
process synthesised before. Utterances are therefore synthesised in fixed chunks, each in a fresh process (one
task a child) in a fixed order: the files are bit-identical for a seed, whatever ``workers``. The children are
started by a fork server (``spawn`` where there is none), not forked from the caller, so a caller that has used
espeak-ng itself gets the same files; a child that finds espeak-ng already used in it refuses its chunk.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from earful.atomic import atomic_open, atomic_write_json, atomic_write_lines

from . import espeak
from .budget import SAMPLE_RATE
from .espeak import Espeak
from .manifest import Utterance, write_manifest
from .phonemes import fold, needs_mnemonics
from .textpool import command_intent, sentences

log = logging.getLogger(__name__)

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp",
           "en-us-nyc", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt")
BASE_VOICES = tuple(f"{a}+{v}" for a in ACCENTS for v in VARIANTS)
CHUNK = 32  # utterances per fresh synthesis process; fixed so output does not depend on worker count
SECONDS_PER_SPEAKER = 60.0  # train audio per pseudo-speaker (roughly)
SPLITS = ("train", "dev", "test", "labelled-10min", "labelled-1h", "labelled-10h")


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


def _speech(job: Job, rng: np.random.Generator) -> dict[str, Any]:
    """What espeak-ng is asked to say for ``job`` (the first draws of its ``rng``)."""
    spk = job.speaker
    wpm = spk.wpm * rng.uniform(0.93, 1.07)
    pitch = spk.pitch + rng.uniform(-4, 4)
    return dict(text=job.text.lower(), voice=spk.voice, wpm=wpm / spk.warp, pitch=pitch / spk.warp,
                pitch_range=spk.range, seed=int(rng.integers(2**31)))


def render(engine: Espeak, job: Job, augment: bool) -> tuple[np.ndarray, list[str]]:
    """One utterance as int16 at 16 kHz, and the phonemes espeak-ng spoke (its IPA names)."""
    spk = job.speaker
    rng = np.random.default_rng(job.seed)
    raw, spoken = engine.synth(**_speech(job, rng))
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
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16), spoken


def _synth_chunk(args: tuple[list[Job], str, bool]) -> list[tuple[str, int, list[str], list[str] | None]]:
    """Synthesise a chunk in this (fresh) process; returns (uid, num_samples, phonemes spoken, their mnemonics)
    per job: the mnemonics where the voice's IPA names stand for several of its phonemes
    (:func:`earful.data.phonemes.needs_mnemonics`), else None. Those come from saying the utterance again with
    mnemonic events once the chunk's audio is written, so that the audio is what it would be without them."""
    jobs, out, augment = args
    if espeak.LOADED_HERE:  # inherited (a fork server whose main module used espeak-ng): other audio for the seed
        raise RuntimeError("a synthesis worker started with espeak-ng already used in it (by the main module, on "
                           "import?): it would speak otherwise; use espeak-ng only under `if __name__ == '__main__':`")
    engine = Espeak()
    done = []
    for job in jobs:
        wave, spoken = render(engine, job, augment)
        path = Path(out) / job.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        done.append((job.uid, len(wave), spoken, None))
    for k, job in enumerate(jobs):
        if needs_mnemonics(job.speaker.voice):
            uid, n, spoken, _ = done[k]
            _, mnemonics = engine.synth(**_speech(job, np.random.default_rng(job.seed)), mnemonics=True)
            if len(mnemonics) != len(spoken):
                raise RuntimeError(f"utterance {uid!r}: espeak-ng spoke {len(spoken)} phonemes, then "
                                   f"{len(mnemonics)} mnemonics")
            done[k] = (uid, n, spoken, mnemonics)
    return done


_FORKED = False  # this process is a fork of one that imported this module


def _forked() -> None:
    global _FORKED
    _FORKED = True


os.register_at_fork(after_in_child=_forked)


def _worker_context() -> Any:
    """Where synthesis workers come from: a fork server (this module preloaded in it, so that each chunk's fresh
    process starts at once; a worker imports the caller's main module, as under ``spawn``: a script that
    synthesises must do so under ``if __name__ == '__main__':``), else ``spawn``; never a fork of the caller, whose
    espeak-ng state the worker would inherit (the caller may have used espeak-ng: a fork of it spoke otherwise for
    the same seed). ``spawn`` too in a forked process: it inherits its parent's note of a fork server, not its
    own child, and Python's fork server fails there (``ChildProcessError``, python/cpython#86354)."""
    if _FORKED or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # read when the fork server starts (once a process)
    return ctx


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
    if not (np.isfinite(hours) and hours > 0):
        raise ValueError(f"hours {hours}: expected a number of hours > 0")
    if not (np.isfinite(labelled_fraction) and labelled_fraction > 0):
        raise ValueError(f"labelled fraction {labelled_fraction}: expected a fraction > 0")
    for name, h in (("dev hours", dev_hours), ("test hours", test_hours)):
        if h is not None and not (np.isfinite(h) and h > 0):
            raise ValueError(f"{name} {h}: expected a number of hours > 0")
    if seed < 0:
        raise ValueError(f"seed {seed}: expected an integer >= 0")
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
    rotation = 0  # where the labelled folds' speakers start in the training pool: each fold goes on from the
    # last one's, so that the six 1 h folds are six sets of speakers, as Libri-light's (each had started at the
    # pool's first: the 1 h set held exactly the 10 min set's speakers)
    for p, (member, folder, chapter, group, seconds) in enumerate(parts):
        pool = spk[group]
        total, j = 0.0, 0
        labelled = "labelled-10h" in member  # the six 1 h folds and the 9 h part
        first = rotation if labelled else 0
        while total < seconds or j == 0:
            s = pool[(first + j) % len(pool)]
            text = sentences(domain, text_rng, 1)[0]
            uid = f"{s.id}-{chapter}-{j // len(pool):04d}"
            jobs.append(Job(uid, f"{folder}/{s.id}/{chapter}/{uid}.flac", text, s, (seed, 3, p, j)))
            for m in member:
                split_of[m].append(uid)
            total += _estimate_seconds(text, s.wpm)
            j += 1
        if labelled:
            rotation += j
    return Plan(seed, hours, domain, spk, jobs, dict(split_of), held)


# ---------------------------------------------------------------------------- writing

BUILDING = ".synth-building"  # in a corpus folder while `earful synth` writes it: a folder with it is unfinished
CORPUS_FOLDERS = ("train", "dev", "test", "librispeech_finetuning")  # what a build writes audio and sidecars in
SIDECARS = ("trans", "phonemes", "intents")  # SPK-CH.KIND.txt beside each chapter's audio (intents: commands only)
_WRITTEN = (".flac", *(f".{kind}.txt" for kind in SIDECARS))


def sidecar_kinds(domain: str) -> tuple[str, ...]:
    """The sidecars a build of ``domain`` writes beside each chapter's audio: transcripts, the phonemes spoken and,
    in the `commands` domain, the intents."""
    return tuple(kind for kind in SIDECARS if kind != "intents" or domain == "commands")


def sidecar(job: Job, kind: str) -> Path:
    """The ``kind`` sidecar of ``job``'s chapter (``SPK-CH.KIND.txt`` beside its audio), below the corpus root."""
    return Path(job.relpath).parent / f"{job.speaker.id}-{job.uid.split('-')[1]}.{kind}.txt"


def _clear_stale(out: Path, plan: Plan) -> None:
    """Remove the audio and sidecars an earlier build left in ``out`` that this plan does not write again (another
    seed, size or domain): read as LibriSpeech (`earful prepare`), they came back beside the new corpus, and an
    ``intents.txt`` stayed beside new transcripts. Only in a folder `earful synth` made (its ``synth.json``,
    ``speakers.tsv`` or unfinished-build mark); another folder holding such files is refused."""
    keep = {Path(j.relpath) for j in plan.jobs}
    keep |= {sidecar(j, kind) for j in plan.jobs for kind in sidecar_kinds(plan.domain)}
    stale = [p for top in CORPUS_FOLDERS if (out / top).is_dir() for p in sorted((out / top).rglob("*"))
             if p.is_file() and p.name.endswith(_WRITTEN) and p.relative_to(out) not in keep]
    if not stale:
        return
    if not any((out / name).exists() for name in ("synth.json", "speakers.tsv", BUILDING)):
        raise ValueError(f"{out}: holds {stale[0].relative_to(out)} ({len(stale)} such files) but is not a folder "
                         "`earful synth` made: write the corpus to an empty folder")
    log.info("%s: removing %d files of an earlier build that this one does not write", out, len(stale))
    for p in stale:
        p.unlink()
    for top in CORPUS_FOLDERS:  # and the folders left empty, deepest first
        for d in sorted((d for d in (out / top).rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
            if not any(d.iterdir()):
                d.rmdir()


def synthesize(out: str | os.PathLike, hours: float, *, domain: str = "commands", seed: int = 0,
               workers: int | None = None, augment: bool = False, labelled_fraction: float = 0.25,
               dev_hours: float | None = None, test_hours: float | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Write the corpus to ``out`` (see the module docstring); returns the summary also in synth.json. Its workers
    import the caller's main module: a script that calls this does so under ``if __name__ == '__main__':``."""
    from tqdm import tqdm

    out = Path(out)
    plan = plan_corpus(hours, domain=domain, seed=seed, labelled_fraction=labelled_fraction,
                       dev_hours=dev_hours, test_hours=test_hours)
    workers = workers or max(1, os.cpu_count() or 1)
    out.mkdir(parents=True, exist_ok=True)
    _clear_stale(out, plan)
    (out / BUILDING).write_text("a build by `earful synth` that has not finished (synth.json comes last)\n")
    (out / "synth.json").unlink(missing_ok=True)  # an earlier build's: this folder is not complete until the end
    chunks = [(plan.jobs[i : i + CHUNK], str(out), augment) for i in range(0, len(plan.jobs), CHUNK)]
    log.info("synthesising %d utterances (%s domain, about %.2f h of train audio) with %d workers",
             len(plan.jobs), domain, hours, workers)
    lengths: dict[str, int] = {}
    spoken: dict[str, list[str]] = {}
    mnemonics: dict[str, list[str] | None] = {}
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=_worker_context(), max_tasks_per_child=1) as pool, \
            tqdm(total=len(plan.jobs), unit="utt", disable=not progress, desc="synth") as bar:
        try:
            for future in as_completed([pool.submit(_synth_chunk, c) for c in chunks]):
                done = future.result()
                for uid, n, names, names_mnemonic in done:
                    lengths[uid], spoken[uid], mnemonics[uid] = n, names, names_mnemonic
                bar.update(len(done))
        except BrokenProcessPool as e:  # a worker died: killed (memory?), or it could not start
            raise RuntimeError(f"{out}: a synthesis worker died ({e}); where earful synthesises from a script of "
                               "your own, call it under `if __name__ == '__main__':` (each worker imports the "
                               "script's main module, which must not synthesise again)") from e
        except BaseException:  # Ctrl-C, say: the chunks not begun are not started (the running ones end theirs)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    elapsed = time.perf_counter() - start

    by_uid = {j.uid: j for j in plan.jobs}
    phonemes = {u: " ".join(fold(names, f"utterance {u!r} ({by_uid[u].text!r})", by_uid[u].speaker.voice,
                                 mnemonics[u])) for u, names in spoken.items()}
    intents = {j.uid: command_intent(j.text) for j in plan.jobs} if domain == "commands" else {}
    # beside each chapter's transcripts (SPK-CH.trans.txt): what was spoken, and what it asked for
    text_of = {"trans": lambda uid: by_uid[uid].text, "phonemes": phonemes.get,
               "intents": lambda uid: " ".join(intents[uid].values())}  # action object location
    lines: dict[Path, list[str]] = defaultdict(list)
    for j in plan.jobs:
        for kind in sidecar_kinds(domain):
            lines[out / sidecar(j, kind)].append(f"{j.uid} {text_of[kind](j.uid)}")
    for path, rows in lines.items():
        atomic_write_lines(path, sorted(rows))
    summary: dict[str, Any] = {"seed": seed, "domain": domain, "requested_hours": hours, "augment": augment,
                               "labelled_fraction": labelled_fraction, "splits": {}}
    for split in SPLITS:
        utts = [Utterance(u, str(out / by_uid[u].relpath), lengths[u], SAMPLE_RATE, by_uid[u].speaker.id,
                          by_uid[u].text, phonemes=phonemes[u], intent=intents.get(u)) for u in plan.split_of[split]]
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
    (out / BUILDING).unlink(missing_ok=True)
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



