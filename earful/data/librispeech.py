"""Corpus readers: the LibriSpeech layout, the Libri-light fine-tuning layout and a plain folder of audio.

Durations come from file headers (``soundfile.info``), so reading a corpus decodes nothing. Problems
(unreadable headers, audio without a transcript line, empty transcripts, transcript files that are not
UTF-8, transcript lines without audio) are appended to the ``problems`` list the caller passes, one
readable line each, and the affected utterance is left out (audio without a usable transcript is kept,
unlabelled).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .audio import AUDIO_EXTENSIONS, UNREADABLE_AUDIO_EXTENSIONS, AudioError, audio_info
from .manifest import Utterance

log = logging.getLogger(__name__)

LIBRILIGHT_DIR = "librispeech_finetuning"
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


def is_librispeech_split(path: Path) -> bool:
    """True when ``path`` holds ``SPEAKER/CHAPTER/*.trans.txt``."""
    return any(path.glob("*/*/*.trans.txt"))


def is_librilight(path: Path) -> bool:
    return (path / LIBRILIGHT_DIR).is_dir() or ((path / "1h").is_dir() and (path / "9h").is_dir())


def discover(root: str | os.PathLike, problems: list[str] | None = None) -> dict[str, list[Utterance]]:
    """Read whatever ``root`` holds: split name -> utterances.

    - a Libri-light fine-tuning tree (or a folder containing ``librispeech_finetuning``) gives
      ``labelled-10min``, ``labelled-1h``, ``labelled-10h``;
    - a LibriSpeech split folder gives one split named after it; a folder of such splits (e.g.
      ``LibriSpeech/`` with ``train-clean-100``, ``dev-clean`` …) gives one split each;
    - anything else is read as a plain folder of audio, split named after the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    problems = [] if problems is None else problems
    splits: dict[str, list[Utterance]] = {}
    if is_librispeech_split(root):
        return {root.name: read_librispeech(root, problems)}
    for child in sorted(p for p in root.iterdir() if p.is_dir() and p.name != LIBRILIGHT_DIR):
        if is_librispeech_split(child):
            splits[child.name] = read_librispeech(child, problems)
    if is_librilight(root):
        for name, utts in read_librilight(root, problems).items():
            splits[f"labelled-{name}"] = utts
    if not splits:
        splits[root.name] = read_folder(root, problems)
    return splits
