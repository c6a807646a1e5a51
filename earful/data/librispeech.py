"""Corpus readers: the LibriSpeech layout, the Libri-light fine-tuning layout, unlabelled Libri-light (cut into
voice-activity segments) and a plain folder of audio.

Durations come from file headers (``soundfile.info``), so reading a corpus decodes nothing (but unlabelled
Libri-light files without their VAD annotations, which ``earful.data.vad.energy_vad`` reads). Problems
(unreadable headers, audio shorter than the model's receptive field, audio without a transcript line, empty
transcripts, transcript files that are not UTF-8, transcript lines without audio, unusable VAD annotations)
are appended to the ``problems`` list the caller passes, one readable line each, and the affected utterance
is left out (audio without a usable transcript is kept, unlabelled).
"""

from __future__ import annotations

import json
import logging
import os
import random
from functools import partial
from pathlib import Path

from tqdm import tqdm

from .audio import AUDIO_EXTENSIONS, RECEPTIVE_FIELD, UNREADABLE_AUDIO_EXTENSIONS, AudioError, audio_info, too_short
from .budget import SAMPLE_RATE
from .manifest import Utterance, samples_at
from .parallel import ordered_map
from .vad import DEFAULT_LIMITS, SegmentLimits, annotated_vad, cut_segments, energy_vad

log = logging.getLogger(__name__)

LIBRILIGHT_DIR = "librispeech_finetuning"
# LibriSpeech's training splits, whose union is the 960 h set (written as train-960 when all three are read)
TRAIN_960 = ("train-clean-100", "train-clean-360", "train-other-500")
# The paper's label sets, as folders of the Libri-light fine-tuning release.
LIBRILIGHT_SETS: dict[str, tuple[str, ...]] = {
    "10min": ("1h/0",),
    "1h": tuple(f"1h/{k}" for k in range(6)),
    "10h": tuple(f"1h/{k}" for k in range(6)) + ("9h",),
}


def _audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def _read_text(path: Path, problems: list[str]) -> str | None:
    """A transcript file's text, or None (and a problem) when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); its transcripts are left "
                        "out (re-encode it as UTF-8)")
        return None


def _utterance(path: Path, uid: str, speaker: str, transcript: str | None,
               problems: list[str]) -> Utterance | None:
    try:
        frames, rate = audio_info(path)
    except AudioError as e:
        problems.append(str(e))
        return None
    if frames == 0:
        problems.append(f"{path}: empty audio (0 samples)")
        return None
    at_model_rate = samples_at(frames, rate)
    if at_model_rate < RECEPTIVE_FIELD:
        problems.append(f"{too_short(path, at_model_rate, SAMPLE_RATE)}: left out")
        return None
    return Utterance(uid, str(path.resolve()), frames, rate, speaker, transcript)


def read_librispeech(root: str | os.PathLike, problems: list[str] | None = None) -> list[Utterance]:
    """Utterances of a LibriSpeech-layout tree ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` with
    ``SPEAKER-CHAPTER.trans.txt`` transcripts (any depth below ``root``), sorted by id."""
    root = Path(root)
    problems = [] if problems is None else problems
    transcripts: dict[str, str] = {}
    trans_file: dict[str, Path] = {}
    reported: set[str] = set()  # ids whose transcript problem is already in ``problems``
    for tf in sorted(root.rglob("*.trans.txt")):
        text_of_file = _read_text(tf, problems)
        if text_of_file is None:
            continue
        for lineno, line in enumerate(text_of_file.splitlines(), 1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if not text.strip():
                problems.append(f"{tf}:{lineno}: empty transcript for {uid} (kept unlabelled)")
                reported.add(uid)
                continue
            if uid in transcripts:
                problems.append(f"{tf}:{lineno}: duplicate transcript for {uid}")
            transcripts[uid], trans_file[uid] = text.strip(), tf
    utts: list[Utterance] = []
    seen: set[str] = set()
    for path in _audio_files(root):
        uid = path.stem
        if uid in seen:
            problems.append(f"{path}: duplicate utterance id {uid}")
            continue
        seen.add(uid)
        if uid not in transcripts and uid not in reported:
            problems.append(f"{path}: no transcript line for {uid}")
        u = _utterance(path, uid, uid.split("-")[0], transcripts.get(uid), problems)
        if u is not None:
            utts.append(u)
    for uid in sorted(set(transcripts) - seen):
        problems.append(f"{trans_file[uid]}: transcript for {uid} has no audio file")
    return sorted(utts, key=lambda u: u.id)


def read_librilight(root: str | os.PathLike, problems: list[str] | None = None) -> dict[str, list[Utterance]]:
    """The 10 min, 1 h and 10 h label sets of a Libri-light fine-tuning tree (``root`` is
    ``librispeech_finetuning`` or its parent): 10 min = ``1h/0``, 1 h = ``1h/{0..5}``, 10 h = 1 h + ``9h``."""
    root = Path(root)
    if (root / LIBRILIGHT_DIR).is_dir():
        root = root / LIBRILIGHT_DIR
    problems = [] if problems is None else problems
    folds: dict[str, list[Utterance]] = {}
    for fold in LIBRILIGHT_SETS["10h"]:
        if not (root / fold).is_dir():
            raise FileNotFoundError(f"{root}: not a Libri-light fine-tuning tree (no folder {fold})")
        folds[fold] = read_librispeech(root / fold, problems)
    return {name: [u for f in parts for u in folds[f]] for name, parts in LIBRILIGHT_SETS.items()}


def recording(utt: Utterance) -> str:
    """The recording (LibriSpeech chapter) an utterance was cut from: its id less the last ``-`` part."""
    return utt.id.rsplit("-", 1)[0]


def hold_out(utts: list[Utterance], fraction: float, seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """(kept, held out): ``fraction`` of the recordings (chapters), drawn with ``seed``, held out whole, so that no
    recording is in both — the paper's validation split (nanow2v2's ``split_csv --strategy by_recordings``; its
    draw is not reproduced, its rule is). At least one recording is held out and one kept."""
    if not 0 < fraction < 1:
        raise ValueError(f"hold-out fraction {fraction}: expected a number between 0 and 1")
    recordings = sorted({recording(u) for u in utts})
    if len(recordings) < 2:
        raise ValueError(f"hold out: {len(recordings)} recording(s); a held-out split needs at least 2")
    count = min(len(recordings) - 1, max(1, round(fraction * len(recordings))))
    held = set(random.Random(seed).sample(recordings, count))
    return [u for u in utts if recording(u) not in held], [u for u in utts if recording(u) in held]


def training_splits(splits: dict[str, list[Utterance]], fraction: float | None, seed: int,
                    ) -> dict[str, list[Utterance]]:
    """``splits`` with what the paper trains on derived from LibriSpeech's training splits: with ``fraction``,
    each ``train-X`` less ``fraction`` of its recordings, held out as ``val-X``; when all three training splits
    are there, ``train-960`` (their union) and, with ``fraction``, ``val-960`` (the union of the held-out)."""
    out = dict(splits)
    if fraction is not None:
        trains = [name for name in splits if name.startswith("train-")]
        if not trains:
            raise ValueError(f"hold out: no LibriSpeech training split (train-*) among {sorted(splits)}")
        for name in trains:
            try:
                out[name], out["val-" + name.removeprefix("train-")] = hold_out(splits[name], fraction, seed)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
    if all(name in splits for name in TRAIN_960):
        out["train-960"] = [u for name in TRAIN_960 for u in out[name]]
        if fraction is not None:
            out["val-960"] = [u for name in TRAIN_960 for u in out["val-" + name.removeprefix("train-")]]
    return out


def read_folder(root: str | os.PathLike, problems: list[str] | None = None) -> list[Utterance]:
    """Every audio file below ``root``: id = relative path without extension, speaker = parent folder,
    transcript from a sidecar ``.txt`` or ``.lab`` file with the same stem when present."""
    root = Path(root)
    problems = [] if problems is None else problems
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in UNREADABLE_AUDIO_EXTENSIONS):
        problems.append(f"{path}: {path.suffix} audio cannot be decoded here (libsndfile); convert it to FLAC, "
                        "e.g. ffmpeg -i IN -ar 16000 -ac 1 OUT.flac")
    utts = []
    for path in _audio_files(root):
        rel = path.relative_to(root).with_suffix("")
        transcript = None
        for ext in (".txt", ".lab"):
            side = path.with_suffix(ext)
            if side.is_file():
                text = _read_text(side, problems)
                transcript = " ".join(text.split()) if text is not None else None
                if text is not None and not transcript:
                    problems.append(f"{side}: empty transcript (kept unlabelled)")
                    transcript = None
                break
        speaker = path.parent.name if path.parent != root else "unknown"
        u = _utterance(path, rel.as_posix(), speaker, transcript, problems)
        if u is not None:
            utts.append(u)
    return utts


def is_unlabelled_librilight(path: Path) -> bool:
    """True when ``path`` holds ``SPEAKER/BOOK/FILE.flac`` with ``FILE.json`` beside it (Libri-light's
    unlabelled ``small``, ``medium``, ``large``)."""
    first = next(path.glob("*/*/*.flac"), None)
    if first is None or not first.with_suffix(".json").is_file():
        return False
    try:  # Libri-light's, not some other sidecar
        return "voice_activity" in json.loads(first.with_suffix(".json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, TypeError):
        return False


def _file_segments(path: Path, limits: SegmentLimits) -> tuple[list[Utterance], list[str], int, bool]:
    """One unlabelled Libri-light file cut into segments: (utterances, problems, voiced samples left out in
    segments too short, whether the energy VAD was used)."""
    speaker, book = path.parent.parent.name, path.parent.name
    try:
        frames, rate = audio_info(path)
    except AudioError as e:
        return [], [str(e)], 0, False
    problems: list[str] = []
    side = path.with_suffix(".json")
    voiced = None
    if side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or "voice_activity" not in meta:
                raise ValueError("no voice_activity field")
            voiced = annotated_vad(meta["voice_activity"], rate, frames)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            problems.append(f"{side}: unusable VAD annotations ({e}); the energy VAD is used instead")
    by_energy = voiced is None
    if by_energy:
        try:
            voiced = energy_vad(path, rate)  # the rate from the header read above
        except AudioError as e:
            return [], [*problems, str(e)], 0, True
    segments, left_out = cut_segments(voiced, rate, limits)
    where, stem = str(path.resolve()), f"{speaker}/{book}/{path.stem}"
    utts = [Utterance(f"{stem}-{k:04d}", where, b - a, rate, speaker, None, offset=a)
            for k, (a, b) in enumerate(segments)]
    return utts, problems, left_out, by_energy


def read_unlabelled(root: str | os.PathLike, problems: list[str] | None = None, *,
                    limits: SegmentLimits = DEFAULT_LIMITS, workers: int = 1) -> list[Utterance]:
    """Voice-activity segments of an unlabelled Libri-light tree ``SPEAKER/BOOK/FILE.flac`` (+ ``FILE.json``):
    speaker = the SPEAKER folder, id = ``SPEAKER/BOOK/FILE-NNNN``, each a window of its file (``offset``). VAD from
    the json's ``voice_activity``, else the energy VAD (``earful.data.vad``), in ``workers`` processes."""
    root = Path(root)
    problems = [] if problems is None else problems
    files = sorted(root.glob("*/*/*.flac"))
    utts: list[Utterance] = []
    left_out, by_energy = 0, 0
    cut = partial(_file_segments, limits=limits)
    done = ordered_map(cut, files, workers)
    for _, (got, found, lost, energy) in tqdm(done, total=len(files), unit="file", desc=f"segments of {root.name}",
                                              disable=len(files) < 100):
        utts += got
        problems += found
        left_out += lost
        by_energy += energy
    log.info("%s: %d files cut into %d segments (%.2f h); %.2f h of voice activity in segments shorter than %g s "
             "left out; %d files by the energy VAD", root, len(files), len(utts),
             sum(u.seconds for u in utts) / 3600, left_out / SAMPLE_RATE / 3600, limits.min_seconds, by_energy)
    return utts


def is_librispeech_split(path: Path) -> bool:
    """True when ``path`` holds ``SPEAKER/CHAPTER/*.trans.txt``."""
    return any(path.glob("*/*/*.trans.txt"))


def is_librilight(path: Path) -> bool:
    return (path / LIBRILIGHT_DIR).is_dir() or ((path / "1h").is_dir() and (path / "9h").is_dir())


def _subfolders(path: Path) -> list[Path]:
    """The folders in ``path`` that may hold splits (not a fine-tuning tree's own folders)."""
    if (path / "1h").is_dir() and (path / "9h").is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and p.name != LIBRILIGHT_DIR)


def discover(root: str | os.PathLike, problems: list[str] | None = None, *, limits: SegmentLimits = DEFAULT_LIMITS,
             workers: int = 1) -> dict[str, list[Utterance]]:
    """Read whatever ``root`` holds: split name -> utterances.

    - a LibriSpeech split folder gives one split named after it; a folder of such splits (e.g. ``LibriSpeech/``
      with ``train-clean-100``, ``dev-clean`` …), or the folder holding that one, gives one split each;
    - unlabelled Libri-light (``small``, ``medium``, ``large``: ``SPEAKER/BOOK/FILE.flac`` + ``FILE.json``), the
      folder itself or the folders in it (or one level further down), gives ``unlabelled-<folder>`` of
      voice-activity segments (``read_unlabelled``, cut within ``limits``);
    - a Libri-light fine-tuning tree (or a folder containing ``librispeech_finetuning``, or one level further
      down) gives ``labelled-10min``, ``labelled-1h``, ``labelled-10h``;
    - anything else is read as a plain folder of audio, split named after the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    problems = [] if problems is None else problems
    splits: dict[str, list[Utterance]] = {}
    found: dict[str, Path] = {}

    def add(name: str, folder: Path, utts: list[Utterance]) -> None:
        if name in found:
            raise ValueError(f"{root}: two splits named {name} ({found[name]} and {folder}): point prepare at one "
                             "of the folders that hold them")
        found[name] = folder
        splits[name] = utts

    def read_split(folder: Path) -> bool:
        if is_librispeech_split(folder):
            add(folder.name, folder, read_librispeech(folder, problems))
        elif is_unlabelled_librilight(folder):
            add(f"unlabelled-{folder.name}", folder, read_unlabelled(folder, problems, limits=limits, workers=workers))
        else:
            return False
        return True

    if read_split(root):
        return splits
    for child in _subfolders(root):
        if read_split(child):
            continue
        inside = [folder.name for folder in _subfolders(child) if read_split(folder)]  # e.g. LibriSpeech/
        if inside:
            log.info("%s holds the splits %s", child, ", ".join(inside))
        if is_librilight(child):
            for name, utts in read_librilight(child, problems).items():
                add(f"labelled-{name}", child, utts)
    if is_librilight(root):
        for name, utts in read_librilight(root, problems).items():
            add(f"labelled-{name}", root, utts)
    if not splits:
        splits[root.name] = read_folder(root, problems)
    return splits
