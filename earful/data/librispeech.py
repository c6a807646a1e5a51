"""Corpus readers: the LibriSpeech layout, the Libri-light fine-tuning layout, unlabelled Libri-light (cut into
voice-activity segments) and a plain folder of audio.

Durations come from file headers (``soundfile.info``), so reading a corpus decodes little: each file's last
sample, read when its header is (a FLAC cut short keeps a header promising every sample), and unlabelled
Libri-light files without their VAD annotations, which ``earful.data.vad.energy_vad`` reads. Problems
(unreadable headers, audio that ends before its header says (truncated), audio shorter than the model's
receptive field, two files of one id, audio without a transcript line, a transcript line given twice, empty
transcripts or ones holding control characters, transcript files that are not UTF-8 or cannot be read, transcript
lines without audio, a plain folder's sidecars differing only in case, LibriSpeech transcripts no split reads, one
id in two Libri-light folds, missing or unusable VAD annotations, audio a layout leaves out) are appended to the
``problems`` list the caller passes, one readable line each, and the affected utterance is left out (audio without
a usable transcript is kept, unlabelled; a file without usable VAD annotations is cut by the energy VAD).

Folders are walked with their symbolic links followed (each real folder once), in sorted order. Each audio file
is read once, by its device and inode: a second path to a file read already (a symbolic or hard link to it) is left
out, a note where the split holds the file once with its transcript anyway, else (another split or fold holds it,
or the second path gives it another transcript) a problem.
"""

from __future__ import annotations

import bisect
import glob
import json
import logging
import os
import random
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .audio import (
    AUDIO_EXTENSIONS,
    RECEPTIVE_FIELD,
    UNREADABLE_AUDIO_EXTENSIONS,
    AudioError,
    audio_info,
    files_below,
    is_audio_name,
    too_short,
    walk_files,
)
from .budget import SAMPLE_RATE
from .manifest import (
    Rows,
    Utterance,
    control_character,
    printable_path,
    samples_at,
    shards_folder_refusal,
    shared_values,
)
from .parallel import ordered_map
from .vad import DEFAULT_LIMITS, SegmentLimits, annotated_vad, cut_segments, energy_vad

log = logging.getLogger(__name__)


class Note(str):
    """A finding that leaves no audio out and mislabels none (a transcript line whose audio the subset does not
    hold, audio beside the splits that nobody asked for): listed with the problems, never stopping ``prepare``."""

LIBRILIGHT_DIR = "librispeech_finetuning"
TRANS_SUFFIX = ".trans.txt"  # a LibriSpeech chapter's transcripts, SPEAKER-CHAPTER.trans.txt
SIDECAR_EXTENSIONS = (".txt", ".lab")  # a plain folder's transcript beside its audio, in this order of preference
# Files that may hold a corpus's transcripts in a form a plain folder does not read (LJSpeech's metadata.csv,
# Common Voice's *.tsv, sclite's *.trn, Kaldi's text): by extension, or by name (its extension any, or none)
TRANSCRIPT_TABLE_EXTENSIONS = (".csv", ".tsv", ".trn")
TRANSCRIPT_TABLE_NAMES = ("metadata", "text", "transcript", "transcripts", "transcription", "transcriptions")
SIDECAR_RULE = "prepare reads a plain folder's transcripts from a .txt or .lab file beside each audio file, of its name"
# LibriSpeech's training splits, whose union is the 960 h set (written as train-960 when all three are read)
TRAIN_960 = ("train-clean-100", "train-clean-360", "train-other-500")
# The paper's label sets, as folders of the Libri-light fine-tuning release.
LIBRILIGHT_SETS: dict[str, tuple[str, ...]] = {
    "10min": ("1h/0",),
    "1h": tuple(f"1h/{k}" for k in range(6)),
    "10h": tuple(f"1h/{k}" for k in range(6)) + ("9h",),
}


def _read_text(path: Path, problems: list[str]) -> str | None:
    """A transcript file's text (a UTF-8 byte-order mark dropped), or None (and a problem) when it is not UTF-8 or
    cannot be read (a link to a file that is not there)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); its transcripts are left "
                        "out (re-encode it as UTF-8)")
    except OSError as e:
        why = f"a link to {os.readlink(path)}, which is not there" if _dangling(path) else e.strerror
        problems.append(f"{path}: cannot be read ({why}); its transcripts are left out")
    return None


def _dangling(path: Path) -> bool:
    """Whether ``path`` is a symbolic link to a file that is not there."""
    return path.is_symlink() and not path.exists()


def _undecodable(files: Sequence[Path], problems: list[str]) -> None:
    """Report the audio among ``files`` that libsndfile cannot decode (``UNREADABLE_AUDIO_EXTENSIONS``): a problem,
    or a note where a decodable file of the same name stands beside it (its conversion, which is read)."""
    readable = {p.with_suffix("") for p in files if p.suffix.lower() in AUDIO_EXTENSIONS}
    for path in (p for p in files if p.suffix.lower() in UNREADABLE_AUDIO_EXTENSIONS):
        twin = path.with_suffix("")
        if twin in readable:
            problems.append(Note(f"{path}: {path.suffix} audio cannot be decoded here (libsndfile); the file of "
                                 "the same name beside it is read"))
        else:
            problems.append(f"{path}: {path.suffix} audio cannot be decoded here (libsndfile); convert it to FLAC, "
                            f"e.g. ffmpeg -i IN -ar {SAMPLE_RATE} -ac 1 OUT.flac")


@dataclass(frozen=True)
class _Read:
    """A file read for a split: the path it was read by, the folder read, its id and transcript."""

    path: Path
    folder: Path
    uid: str
    transcript: str | None


class Strings(Sequence[str]):
    """A list of strings kept as one buffer of their bytes (``os.fsencode``: a file name that is not UTF-8 comes
    back as it was) and where each ends: 8 bytes a string more than its bytes, where a ``str`` costs 41 more and its
    list slot 8 (one a file of hundreds of thousands: Libri-light's paths, ids and speakers)."""

    def __init__(self) -> None:
        self._bytes = bytearray()
        self._ends = array("q", [0])

    def append(self, text: str) -> None:
        self._bytes += os.fsencode(text)
        self._ends.append(len(self._bytes))

    def extend(self, other: Strings) -> None:
        """``other``'s strings after these."""
        start = len(self._bytes)
        self._bytes += other._bytes
        self._ends.extend(start + end for end in other._ends[1:])

    def __len__(self) -> int:
        return len(self._ends) - 1

    def __getitem__(self, i: int) -> str:  # type: ignore[override]  # an index, no slice
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"string {i} of {len(self)}")
        return os.fsdecode(bytes(self._bytes[self._ends[i] : self._ends[i + 1]]))


class FilesRead:
    """The files read for the splits of one corpus, each by its device and inode (else, where it cannot be looked
    up, its real path), with how it was first read (``_Read``), kept compact: a number a file, its path (relative to
    the folder read), id and folder in columns, a transcript where there is one (a ``_Read`` and a ``Path`` a file,
    keyed by a tuple, held about 900 bytes a file)."""

    def __init__(self) -> None:
        self._number: dict[int | str, int] = {}  # a file's key -> its read's number
        self._folders: list[Path] = []  # the folders read (a few)
        self._folder_of = array("i")  # a read's folder's number
        self._paths = Strings()  # a read's path, relative to its folder
        self._uids = Strings()
        self._transcripts: dict[int, str] = {}  # a read's transcript, where it has one

    def first(self, path: Path, read: _Read) -> _Read:
        """How the file at ``path`` was first read: ``read`` itself where it is the first (then recorded)."""
        try:
            st = os.stat(path)
            key: int | str = st.st_dev << 64 | st.st_ino  # one int, not a tuple of two: 80 bytes less a file
        except OSError:
            key = os.path.realpath(path)
        number = self._number.setdefault(key, len(self._uids))
        if number < len(self._uids):
            folder = self._folders[self._folder_of[number]]
            return _Read(folder / self._paths[number], folder, self._uids[number], self._transcripts.get(number))
        if read.folder not in self._folders:
            self._folders.append(read.folder)
        self._folder_of.append(self._folders.index(read.folder))
        self._paths.append(str(read.path.relative_to(read.folder)))
        self._uids.append(read.uid)
        if read.transcript is not None:
            self._transcripts[number] = read.transcript
        return read


def _first_path(path: Path, folder: Path, uid: str, transcript: str | None, files_read: FilesRead,
                problems: list[str]) -> bool:
    """True when ``path`` is the first path to its file (by device and inode: a symbolic or a hard link to a file
    is that file) read below ``folder`` or in another folder sharing ``files_read``; else False, with a note where
    nothing is lost by leaving it out (the same folder, no other transcript), and a problem where something is
    (another split or fold holds it: the audio would be in two; or the second path gives it another transcript).
    A path that cannot be looked up (a dangling link) is keyed by its real path: reading it reports it."""
    first = files_read.first(path, _Read(path, folder, uid, transcript))
    if first.path == path:
        return True
    real = os.path.realpath(path)
    first_real = os.path.realpath(first.path)
    both = ("" if str(first.path) == real else f" (both are {real})" if first_real == real
            else " (hard links: one file)")
    same = f"{path}: the same file as {first.path}{both}"
    if first.folder != folder:
        problems.append(f"{same}, read for {first.folder} already; left out of {folder} (one recording in two "
                        "splits)")
    elif transcript is not None and transcript != first.transcript:
        problems.append(f"{same}, with another transcript ({uid}: {transcript!r}; {first.uid}: "
                        f"{first.transcript!r}); left out")
    else:
        problems.append(Note(f"{same}; read once, as {first.uid}"))
    return False


def _utterance(path: Path, uid: str, speaker: str, transcript: str | None,
               problems: list[str]) -> Utterance | None:
    try:
        frames, rate = audio_info(path, check_end=True)  # a truncated FLAC's header lies
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


def _transcripts(lines: dict[str, list[tuple[Path, int, str]]], problems: list[str]) -> dict[str, str]:
    """The transcript of each id from the ``.trans.txt`` lines giving it (``lines``: file, line number, text each):
    an empty one, or one holding a control character, is a problem, unusable; an id on two lines is a problem
    naming both, and its transcript is read only where its usable lines agree (one of them empty, say), else it is
    kept unlabelled (which was meant cannot be told)."""
    transcripts: dict[str, str] = {}
    for uid, given in lines.items():
        usable: list[str] = []
        for tf, lineno, text in given:
            bad = control_character(text)
            if len(given) == 1 and not text:
                problems.append(f"{tf}:{lineno}: empty transcript for {uid} (kept unlabelled)")
            elif len(given) == 1 and bad is not None:
                problems.append(f"{tf}:{lineno}: the transcript for {uid} holds a {bad} (kept unlabelled)")
            elif text and bad is None:
                usable.append(text)
        if len(given) > 1:
            read = usable[0] if usable and len(set(usable)) == 1 else None
            where = given[1][0]
            shown = "; ".join(f"{'line ' if tf == where else f'{tf}:'}{n}: {text!r}" for tf, n, text in given)
            problems.append(f"{where}:{given[1][1]}: a transcript line given twice, for {uid} ({shown}); "
                            + (f"{read!r} is read" if read else "none is read (kept unlabelled)"))
        if usable and len(set(usable)) == 1:
            transcripts[uid] = usable[0]
    return transcripts


def read_librispeech(root: str | os.PathLike, problems: list[str] | None = None,
                     files_read: FilesRead | None = None) -> list[Utterance]:
    """Utterances of a LibriSpeech-layout tree ``SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` with
    ``SPEAKER-CHAPTER.trans.txt`` transcripts (any depth below ``root``), sorted by id. ``files_read``: the files
    read for other splits, by device and inode (a file read there is not read again: ``_first_path``)."""
    root = Path(root)
    problems = [] if problems is None else problems
    files_read = FilesRead() if files_read is None else files_read
    lines: dict[str, list[tuple[Path, int, str]]] = {}  # id -> (file, line number, text) of each line giving it
    trans_file: dict[str, Path] = {}
    files = files_below(root)
    for tf in (p for p in files if p.name.endswith(TRANS_SUFFIX)):
        text_of_file = _read_text(tf, problems)
        if text_of_file is None:
            continue
        for lineno, line in enumerate(text_of_file.split("\n"), 1):  # a form feed is no line break: reported below
            if line.strip():
                uid, _, text = line.strip().partition(" ")
                lines.setdefault(uid, []).append((tf, lineno, text.strip()))
                trans_file.setdefault(uid, tf)
    transcripts = _transcripts(lines, problems)
    reported = set(lines) - transcripts.keys()  # ids whose transcript problem is already in ``problems``
    utts: list[Utterance] = []
    seen: dict[str, Path] = {}
    _undecodable(files, problems)
    undecodable = {p.stem for p in files if p.suffix.lower() in UNREADABLE_AUDIO_EXTENSIONS}  # reported above
    for path in (p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS):
        uid = path.stem
        if uid in seen:
            problems.append(f"{path}: duplicate utterance id {uid} (also {seen[uid]}); left out")
            continue
        seen[uid] = path
        if not _first_path(path, root, uid, transcripts.get(uid), files_read, problems):
            continue
        if uid not in transcripts and uid not in reported:
            problems.append(f"{path}: no transcript line for {uid}")
        u = _utterance(path, uid, uid.split("-")[0], transcripts.get(uid), problems)
        if u is not None:
            utts.append(u)
    for uid in sorted(set(transcripts) - seen.keys() - undecodable):  # an undecodable file's line has audio
        problems.append(Note(f"{trans_file[uid]}: transcript for {uid} has no audio file"))
    return sorted(utts, key=lambda u: u.id)


def read_librilight(root: str | os.PathLike, problems: list[str] | None = None) -> dict[str, list[Utterance]]:
    """The 10 min, 1 h and 10 h label sets of a Libri-light fine-tuning tree (``root`` is
    ``librispeech_finetuning`` or its parent): 10 min = ``1h/0``, 1 h = ``1h/{0..5}``, 10 h = 1 h + ``9h``. An id
    in two folds is a problem, left out of the later fold: a set holding both would hold it twice."""
    root = _finetuning_root(Path(root))
    problems = [] if problems is None else problems
    files_read = FilesRead()
    folds: dict[str, list[Utterance]] = {}
    fold_of: dict[str, tuple[str, Utterance]] = {}  # id -> the fold that holds it, and how
    for fold in LIBRILIGHT_SETS["10h"]:
        if not (root / fold).is_dir():
            raise FileNotFoundError(f"{root}: not a Libri-light fine-tuning tree (no folder {fold})")
        folds[fold] = []
        for u in read_librispeech(root / fold, problems, files_read):
            # the label sets are unions of folds: one id in two would be two rows of it (a copy of a file; a second
            # path to one file is left out by ``_first_path`` already)
            if u.id in fold_of:
                first_fold, first = fold_of[u.id]
                problems.append(f"{u.path}: duplicate utterance id {u.id} (also {first.path}, in fold {first_fold}); "
                                f"left out of {fold}")
                continue
            fold_of[u.id] = fold, u
            folds[fold].append(u)
    return {name: [u for f in parts for u in folds[f]] for name, parts in LIBRILIGHT_SETS.items()}


def _finetuning_root(path: Path) -> Path:
    """``librispeech_finetuning`` when ``path`` holds it, else ``path``."""
    return path / LIBRILIGHT_DIR if (path / LIBRILIGHT_DIR).is_dir() else path


LIBRISPEECH_ID = re.compile(r"\d+-\d+-\d+")  # SPEAKER-CHAPTER-UTTERANCE
RECORDING = "a LibriSpeech chapter, else the folder holding the audio"  # what ``recording`` gives, for messages


def recording(utt: Utterance) -> str:
    """The recording an utterance was cut from: for a LibriSpeech id (``SPEAKER-CHAPTER-UTT``) its chapter, the
    id less the last ``-`` part; else (a plain folder's id, its relative path) the folder holding the file,
    the id less its last ``/`` part (``""`` at the top)."""
    if LIBRISPEECH_ID.fullmatch(utt.id):
        return utt.id.rsplit("-", 1)[0]
    return utt.id.rpartition("/")[0]


def hold_out(utts: Sequence[Utterance], fraction: float, seed: int) -> tuple[list[Utterance], list[Utterance]]:
    """(kept, held out): ``fraction`` of the recordings (``recording``: chapters, a plain folder's folders), drawn
    with ``seed``, held out whole, so that no recording is in both — the paper's validation split (nanow2v2's
    ``split_csv --strategy by_recordings``; its draw is not reproduced, its rule is). At least one recording is held
    out and one kept."""
    if not 0 < fraction < 1:
        raise ValueError(f"hold-out fraction {fraction}: expected a number between 0 and 1")
    recordings = sorted({recording(u) for u in utts})
    if len(recordings) < 2:
        raise ValueError(f"hold out: {len(recordings)} recording(s) ({RECORDING}); a held-out split needs at "
                         "least 2")
    count = min(len(recordings) - 1, max(1, round(fraction * len(recordings))))
    held = set(random.Random(seed).sample(recordings, count))
    return [u for u in utts if recording(u) not in held], [u for u in utts if recording(u) in held]


def training_splits(splits: dict[str, Sequence[Utterance]], fraction: float | None, seed: int,
                    ) -> dict[str, Sequence[Utterance]]:
    """``splits`` with what the paper trains on derived from LibriSpeech's training splits: with ``fraction``,
    each ``train-X`` less ``fraction`` of its recordings, held out as ``val-X``; when all three training splits
    are there, ``train-960`` (their union) and, with ``fraction``, ``val-960`` (the union of the held-out). A split
    so derived that ``splits`` holds already (the source's own ``val-X``) is refused, naming both: never written
    over."""
    out = dict(splits)

    def derive(name: str, what: str) -> None:  # a split the source has already is never written over
        if name in splits:
            raise ValueError(f"two splits named {name}: the source's own {name} and {what}: rename the source's "
                             f"folder {name}, or prepare its training splits apart from it")

    if fraction is not None:
        trains = [name for name in splits if name.startswith("train-")]
        if not trains:
            raise ValueError(f"hold out: no LibriSpeech training split (train-*) among {sorted(splits)}")
        for name in trains:
            held = "val-" + name.removeprefix("train-")
            derive(held, f"the recordings --hold-out holds out of {name}")
            try:
                out[name], out[held] = hold_out(splits[name], fraction, seed)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
    if all(name in splits for name in TRAIN_960):
        derive("train-960", f"the union of {', '.join(TRAIN_960)}")
        out["train-960"] = [u for name in TRAIN_960 for u in out[name]]
        if fraction is not None:
            derive("val-960", "the union of the recordings --hold-out holds out of them")
            out["val-960"] = [u for name in TRAIN_960 for u in out["val-" + name.removeprefix("train-")]]
    return out


def read_folder(root: str | os.PathLike, problems: list[str] | None = None,
                files_read: FilesRead | None = None) -> list[Utterance]:
    """Every audio file below ``root``: id = relative path without extension (two files of one id, e.g. ``x.flac``
    and ``x.wav``, are a problem: the second is left out), speaker = parent folder, transcript from a sidecar
    ``.txt`` or ``.lab`` file with the same stem when present, its extension in any case (``_sidecar_transcript``; one
    that is a link to a file not there is a problem naming it, its audio kept unlabelled).
    A second path to one file (a link) is read once (``_first_path``). A LibriSpeech ``.trans.txt`` here is a
    problem: a plain folder does not read it, and its audio would be unlabelled without a word. Notes, as
    ``prepare`` would otherwise say "0 % labelled" and nothing else: a file that looks like a table of
    transcripts (``_transcript_tables``: LJSpeech's ``metadata.csv``), not read; transcript files named after an
    audio file but not as read (``_misnamed_sidecars``: ``x.wav.txt``); and, where some audio has a transcript, how
    much has none (``_unlabelled_note``)."""
    root = Path(root)
    problems = [] if problems is None else problems
    files_read = FilesRead() if files_read is None else files_read
    files = files_below(root)
    _undecodable(files, problems)
    sidecars: dict[Path, list[Path]] = {}  # path less its extension -> the transcript files of that name
    for path in files:
        if path.name.lower().endswith(TRANS_SUFFIX):
            problems.append(f"{path}: LibriSpeech transcripts in a plain folder of audio, not read (its audio is read "
                            "unlabelled); point prepare at the split, speaker or chapter folder holding it")
        elif path.suffix.lower() in SIDECAR_EXTENSIONS and (path.is_file() or _dangling(path)):  # reported
            sidecars.setdefault(path.with_suffix(""), []).append(path)
    _transcript_tables(files, problems)
    _misnamed_sidecars(root, files, sidecars, problems)
    utts = []
    no_sidecar: list[str] = []  # the ids of the audio files without a transcript file of their name
    seen: dict[str, Path] = {}
    for path in (p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS):
        rel = path.relative_to(root).with_suffix("")
        if rel.as_posix() in seen:
            problems.append(f"{path}: the same id {rel.as_posix()!r} as {seen[rel.as_posix()]} (an id is the path "
                            "without its extension); left out")
            continue
        seen[rel.as_posix()] = path
        transcript = _sidecar_transcript(path, sidecars.get(path.with_suffix(""), []), problems)
        if not _first_path(path, root, rel.as_posix(), transcript, files_read, problems):
            continue
        speaker = path.parent.name if path.parent != root else "unknown"
        u = _utterance(path, rel.as_posix(), speaker, transcript, problems)
        if u is not None:
            utts.append(u)
            if path.with_suffix("") not in sidecars:
                no_sidecar.append(u.id)
    _unlabelled_note(root, utts, no_sidecar, problems)
    return utts


def _transcript_tables(files: Sequence[Path], problems: list[str]) -> None:
    """A note for each of ``files`` that looks like a table of transcripts (by extension or name:
    ``TRANSCRIPT_TABLE_EXTENSIONS``, ``TRANSCRIPT_TABLE_NAMES``), which a plain folder does not read: an LJSpeech
    folder (``wavs/*.wav`` + ``metadata.csv``) had been read all unlabelled, "0 problem(s)", without a hint why.
    A ``.txt`` or ``.lab`` file of an audio file's name is a sidecar, read, and audio (``text.wav``) is audio: never
    one of these."""
    audio = {p.with_suffix("") for p in files if p.suffix.lower() in AUDIO_EXTENSIONS}
    for path in files:
        suffix = path.suffix.lower()
        if (suffix in SIDECAR_EXTENSIONS and path.with_suffix("") in audio) or is_audio_name(path):
            continue
        if suffix in TRANSCRIPT_TABLE_EXTENSIONS or path.stem.lower() in TRANSCRIPT_TABLE_NAMES:
            problems.append(Note(f"{path}: looks like a table of transcripts, not read: {SIDECAR_RULE} (x.wav: "
                                 "x.txt); write one such file per audio file from it"))


def _misnamed_sidecars(root: Path, files: Sequence[Path], sidecars: dict[Path, list[Path]],
                       problems: list[str]) -> None:
    """A note counting, a few named, the ``.txt`` / ``.lab`` files named after an audio file without a sidecar
    (``sidecars``) but not as one: ``x.wav.txt``, or LibriTTS's ``x.normalized.txt`` and ``x.original.txt``, not
    read (its audio read unlabelled without a word)."""
    stems = {p.with_suffix("") for p in files if p.suffix.lower() in AUDIO_EXTENSIONS}
    misnamed = []
    for path in (p for p in files if p.suffix.lower() in SIDECAR_EXTENSIONS and p.with_suffix("") not in stems):
        base = path.with_suffix("")  # x.wav, or x.normalized: x's, where x is audio without a sidecar
        if base.suffix and base.with_suffix("") in stems and base.with_suffix("") not in sidecars:
            misnamed.append(path.relative_to(root).as_posix())
    if misnamed:
        problems.append(Note(f"{root}: {len(misnamed)} transcript file(s) named after an audio file but not as read "
                             f"(e.g. {', '.join(misnamed[:3])}), not read: {SIDECAR_RULE} (x.wav: x.txt, not "
                             "x.wav.txt or LibriTTS's x.normalized.txt); rename them"))


def _unlabelled_note(root: Path, utts: Sequence[Utterance], no_sidecar: Sequence[str], problems: list[str]) -> None:
    """A note counting the audio files without a transcript file (``no_sidecar``: their ids, a few named) where
    others have one: a folder read partly unlabelled is then said so (a folder of unlabelled audio is not)."""
    if no_sidecar and any(u.transcript is not None for u in utts):
        problems.append(Note(f"{root}: {len(no_sidecar)} of {len(utts)} audio files have no transcript file (e.g. "
                             f"{', '.join(no_sidecar[:3])}), read unlabelled; {SIDECAR_RULE}"))


def _sidecar_transcript(audio: Path, sidecars: list[Path], problems: list[str]) -> str | None:
    """The transcript of ``audio`` in a plain folder, from ``sidecars`` (the ``.txt`` and ``.lab`` files of its name,
    their extensions in any case, as audio's are matched): the ``.txt`` one, else the ``.lab`` one, its whitespace
    runs made one space; None where there is none or it is unusable (a problem: empty, not UTF-8, a control
    character), or where two files of one kind differ only in case (``x.txt`` and ``x.TXT``: a problem, none is
    read, as which one was meant cannot be told)."""
    for ext in SIDECAR_EXTENSIONS:
        found = sorted(p for p in sidecars if p.suffix.lower() == ext)
        if len(found) > 1:
            problems.append(f"{audio}: {len(found)} transcript files whose names differ only in case "
                            f"({', '.join(map(str, found))}); none is read (kept unlabelled): keep one")
            return None
        if not found:
            continue
        side = found[0]
        text = _read_text(side, problems)
        transcript = " ".join(text.split()) if text is not None else None
        if text is not None and not transcript:
            problems.append(f"{side}: empty transcript (kept unlabelled)")
            transcript = None
        elif transcript is not None and (bad := control_character(transcript)) is not None:
            problems.append(f"{side}: the transcript holds a {bad} (kept unlabelled)")
            transcript = None
        if ext == ".txt":
            _other_sidecar(side, [p for p in sidecars if p.suffix.lower() == ".lab"], transcript, problems)
        return transcript
    return None


def _other_sidecar(txt: Path, labs: list[Path], transcript: str | None, problems: list[str]) -> None:
    """A note where the ``.txt`` transcript read (``transcript``, from ``txt``) has a ``.lab`` beside it (one of
    ``labs``) that says something else: the ``.lab`` one is not read."""
    if transcript is None:
        return
    for lab in labs:
        other = _read_text(lab, [])  # its own problems do not matter: it is not read
        if other is not None and " ".join(other.split()) != transcript:
            problems.append(Note(f"{txt} and {lab}: different transcripts; the .txt one is read"))


def is_unlabelled_librilight(path: Path) -> bool:
    """True when ``path`` holds ``SPEAKER/BOOK/FILE.flac`` with a ``FILE.json`` beside it that holds
    ``voice_activity`` (Libri-light's unlabelled ``small``, ``medium``, ``large``): any one file's sidecar
    decides, so the answer does not hang on which file a folder lists first (the files without a usable sidecar
    are problems of ``read_unlabelled``). The ``.flac`` in any case, as ``read_unlabelled`` reads it."""
    for side in path.glob("*/*/*.json"):
        try:  # Libri-light's, not some other sidecar (a broken one still names the field)
            if b'"voice_activity"' in side.read_bytes() and _flac_of(side):
                return True
        except OSError:
            continue
    return False


def _flac_of(side: Path) -> bool:
    """Whether a FLAC of the name of ``side`` stands beside it, its extension in any case (``FILE.FLAC``)."""
    return side.with_suffix(".flac").is_file() or any(
        p.suffix.lower() == ".flac" and p.is_file() for p in side.parent.glob(f"{glob.escape(side.stem)}.*"))


class Segments(Rows):
    """An unlabelled split's voice-activity segments (``read_unlabelled``) kept as columns, not an ``Utterance`` a
    segment: each file's id stem, path, speaker (``Strings``) and rate once, each segment's first sample and length
    in an int64 column (16 bytes a segment: as Utterances, Libri-light's 16 M segments held about 5.5 GB until
    ``prepare`` had written them; a tuple of strings a file held 250 bytes a file more than its columns). A row is
    made the ``Utterance`` it stands for when it is asked for (``segments[i]``, or in order, iterated); it equals
    any sequence of the same utterances."""

    def __init__(self) -> None:
        self._stems, self._paths, self._speakers = Strings(), Strings(), Strings()  # a file with segments each
        self._rates = array("q")
        self._first = array("q", [0])  # each file's first row, then the number of rows
        self._spans = array("q")  # (offset, samples) a row, flat
        self._numbers: dict[int, list[int]] = {}  # a file some of whose rows were left out: its rows' id numbers

    def add(self, stem: str, path: str, speaker: str, rate: int, spans: Iterable[tuple[int, int]],
            numbers: list[int] | None = None) -> None:
        """A file's segments, [start, end) in samples, its rows' ids ``STEM-NNNN`` numbered in order from 0 (or
        ``numbers``); a file without segments holds no row."""
        for a, b in spans:
            self._spans.extend((a, b - a))
        rows = len(self._spans) // 2
        if rows > self._first[-1]:
            if numbers is not None and numbers != list(range(rows - self._first[-1])):
                self._numbers[len(self._rates)] = numbers
            self._stems.append(stem)
            self._paths.append(path)
            self._speakers.append(speaker)
            self._rates.append(rate)
            self._first.append(rows)

    def extend(self, other: Segments) -> None:
        """``other``'s rows after these."""
        rows, files = len(self), len(self._rates)
        for mine, theirs in ((self._stems, other._stems), (self._paths, other._paths),
                             (self._speakers, other._speakers)):
            mine.extend(theirs)
        self._rates.extend(other._rates)
        self._first.extend(rows + r for r in other._first[1:])
        self._spans.extend(other._spans)
        self._numbers.update({files + f: numbers for f, numbers in other._numbers.items()})

    def without(self, rows: set[int]) -> Segments:
        """These segments less the rows ``rows``, each row kept the same ``Utterance`` (its id's number too)."""
        out = Segments()
        for f in range(len(self._rates)):
            kept = [r for r in range(self._first[f], self._first[f + 1]) if r not in rows]
            out.add(self._stems[f], self._paths[f], self._speakers[f], self._rates[f],
                    ((self._spans[2 * r], self._spans[2 * r] + self._spans[2 * r + 1]) for r in kept),
                    [self._number(f, r) for r in kept])
        return out

    def rows_of_shared_stems(self) -> np.ndarray:
        """The rows, in order, of the files whose id stem another file has too (``x.flac`` and ``x.FLAC``): the
        only rows whose id another row may have (an id is ``STEM-NNNN``, its number unique in its file and free of
        ``-``), found by the stems' hashes (8 bytes a file, not a pass over the rows; hashes that meet by chance
        only add rows to compare)."""
        stems = np.fromiter((hash(self._stems[f]) for f in range(len(self._rates))), dtype=np.int64,
                            count=len(self._rates))
        files = np.flatnonzero(shared_values(stems))
        return np.array([r for f in files.tolist() for r in range(self._first[f], self._first[f + 1])],
                        dtype=np.int64)

    def __len__(self) -> int:
        return self._first[-1]

    def _row(self, i: int) -> Utterance:
        return self._utterance(bisect.bisect_right(self._first, i) - 1, i)

    def __iter__(self) -> Iterator[Utterance]:
        for f in range(len(self._rates)):
            for row in range(self._first[f], self._first[f + 1]):
                yield self._utterance(f, row)

    def seconds(self) -> float:
        """The segments' seconds in all, as ``sum(u.seconds for u in segments)``, without making a row."""
        return sum(self._spans[2 * row + 1] / rate for f, rate in enumerate(self._rates)
                   for row in range(self._first[f], self._first[f + 1]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by its rows

    def _number(self, f: int, row: int) -> int:
        """The number in the id of ``row``, a row of the ``f``-th file."""
        k = row - self._first[f]
        return self._numbers[f][k] if f in self._numbers else k

    def _utterance(self, f: int, row: int) -> Utterance:
        """The ``Utterance`` of ``row``, a row of the ``f``-th file."""
        return Utterance(f"{self._stems[f]}-{self._number(f, row):04d}", self._paths[f], self._spans[2 * row + 1],
                         self._rates[f], self._speakers[f], None, offset=self._spans[2 * row])


def _file_segments(path: Path, limits: SegmentLimits) -> tuple[Segments, list[str], float, bool]:
    """One unlabelled Libri-light file cut into segments: (its segments, problems, seconds of voice activity left
    out in segments too short, whether the energy VAD was used)."""
    speaker, book = path.parent.parent.name, path.parent.name
    try:
        frames, rate = audio_info(path, check_end=True)  # a truncated FLAC's header lies
    except AudioError as e:
        return Segments(), [str(e)], 0, False
    problems: list[str] = []
    side = path.with_suffix(".json")
    voiced = None
    if not side.is_file():
        problems.append(f"{printable_path(path)}: no VAD annotations ({printable_path(side.name)} is missing); the "
                        "energy VAD is used instead")
    else:
        try:
            meta = json.loads(side.read_text(encoding="utf-8-sig"))
            if not isinstance(meta, dict) or "voice_activity" not in meta:
                raise ValueError("no voice_activity field")
            voiced = annotated_vad(meta["voice_activity"], rate, frames)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            problems.append(f"{printable_path(side)}: unusable VAD annotations ({e}); the energy VAD is used instead")
    by_energy = voiced is None
    if by_energy:
        try:
            voiced = energy_vad(path, rate)  # the rate from the header read above
        except AudioError as e:
            return Segments(), [*problems, str(e)], 0, True
    segments, left_out = cut_segments(voiced, rate, limits)
    if not segments:  # the whole file left out: named (a note: the VAD, not the file, decided it), and counted
        how = "the energy VAD" if by_energy else f"its annotations ({printable_path(side.name)})"
        problems.append(Note(f"{printable_path(path)}: no segment: {how} found {left_out / rate:.2f} s of voice "
                             f"activity of its {frames / rate:.2f} s, none in a stretch of {limits.min_seconds:g} s "
                             "or more (--min-seconds); left out"))
    got = Segments()
    got.add(f"{speaker}/{book}/{path.stem}", str(path.resolve()), speaker, rate, segments)
    return got, problems, left_out / rate, by_energy


def read_unlabelled(root: str | os.PathLike, problems: list[str] | None = None, *,
                    limits: SegmentLimits = DEFAULT_LIMITS, workers: int = 1,
                    files_read: FilesRead | None = None) -> Segments:
    """Voice-activity segments of an unlabelled Libri-light tree ``SPEAKER/BOOK/FILE.flac`` (+ ``FILE.json``):
    speaker = the SPEAKER folder, id = ``SPEAKER/BOOK/FILE-NNNN``, each a window of its file (``offset``). VAD from
    the json's ``voice_activity``, else the energy VAD (``earful.data.vad``), in ``workers`` processes. A file
    without usable annotations, and audio elsewhere than ``SPEAKER/BOOK/FILE.flac`` (left out), are problems; a
    second path to one file (a link) is cut once (``_first_path``). Kept as ``Segments``: 16 bytes a segment."""
    root = Path(root)
    problems = [] if problems is None else problems
    files_read = FilesRead() if files_read is None else files_read
    files = Strings()  # the FLACs to cut, relative to root: no Path a file held (walk_files: none listed as one)
    for name in walk_files(root):
        path = Path(name)
        rel = path.relative_to(root)
        if path.suffix.lower() == ".flac" and len(rel.parts) == 3:
            if _first_path(path, root, rel.with_suffix("").as_posix(), None, files_read, problems):
                files.append(str(rel))
        elif is_audio_name(path):
            problems.append(f"{path}: not SPEAKER/BOOK/FILE.flac in the unlabelled Libri-light tree {root}; left out")
    utts = Segments()
    left_out, by_energy, empty = 0.0, 0, 0
    cut = partial(_file_segments, limits=limits)
    done = ordered_map(cut, (root / name for name in files), workers)
    for _, (got, found, lost, energy) in tqdm(done, total=len(files), unit="file", desc=f"segments of {root.name}",
                                              disable=len(files) < 100):
        utts.extend(got)
        problems += found
        left_out += lost
        by_energy += energy
        empty += not got and bool(found) and isinstance(found[-1], Note)  # cut into nothing (not unreadable)
    log.info("%s: %d files cut into %d segments (%.2f h); %.2f h of voice activity in segments shorter than %g s "
             "left out; %d files by the energy VAD; %d files gave no segment (notes naming them)", root, len(files),
             len(utts), utts.seconds() / 3600, left_out / 3600, limits.min_seconds,
             by_energy, empty)
    return utts


def is_librispeech_split(path: Path) -> bool:
    """True when ``path`` holds ``SPEAKER/CHAPTER/*.trans.txt``."""
    return any(path.glob(f"*/*/*{TRANS_SUFFIX}"))


def is_librispeech_part(path: Path) -> bool:
    """True when ``path`` holds ``*.trans.txt`` itself or one folder down: a CHAPTER or SPEAKER folder of a LibriSpeech
    split, or a split's files gathered in one folder. Asked only of the folder ``prepare`` is pointed at, once no
    split is found in it: one folder down, a folder of splits would hold a flat split's transcripts too, and in a
    speaker folder each chapter holds its own."""
    return any(path.glob(f"*{TRANS_SUFFIX}")) or any(path.glob(f"*/*{TRANS_SUFFIX}"))


def is_librilight(path: Path) -> bool:
    return (path / LIBRILIGHT_DIR).is_dir() or ((path / "1h").is_dir() and (path / "9h").is_dir())


def _subfolders(path: Path) -> list[Path]:
    """The folders in ``path`` that may hold splits (not a fine-tuning tree's own folders)."""
    if (path / "1h").is_dir() and (path / "9h").is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and p.name != LIBRILIGHT_DIR)


def discover(root: str | os.PathLike, problems: list[str] | None = None, *, limits: SegmentLimits = DEFAULT_LIMITS,
             workers: int = 1) -> dict[str, Sequence[Utterance]]:
    """Read whatever ``root`` holds: split name -> utterances (an unlabelled split's as ``Segments``).

    - a LibriSpeech split folder gives one split named after it; a folder of such splits (e.g. ``LibriSpeech/``
      with ``train-clean-100``, ``dev-clean`` …), or the folder holding that one, gives one split each; where
      nothing else is found, a speaker or chapter folder of a split, or a split's files in one folder
      (``is_librispeech_part``), gives one split named after it, ids and speakers taken from the file names;
    - unlabelled Libri-light (``small``, ``medium``, ``large``: ``SPEAKER/BOOK/FILE.flac`` + ``FILE.json``), the
      folder itself or the folders in it (or one level further down), gives ``unlabelled-<folder>`` of
      voice-activity segments (``read_unlabelled``, cut within ``limits``);
    - a Libri-light fine-tuning tree (or a folder containing ``librispeech_finetuning``, or one level further
      down) gives ``labelled-10min``, ``labelled-1h``, ``labelled-10h``;
    - anything else is read as a plain folder of audio, split named after the folder.

    Audio below ``root`` that no split holds (beside the splits, or in a folder that is none) is a note each (a
    ``Note``: it stops nothing), and logged with a count. Folders are named as ``root`` resolves (``.`` is the
    current folder's name).
    """
    root = Path(os.path.abspath(root))
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: a file, not a folder: prepare reads a folder (a LibriSpeech split or the "
                                 "folder holding the splits, a Libri-light tree, or a folder of audio); point it at "
                                 "the folder that holds the file")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    if refusal := shards_folder_refusal(root, "a corpus (prepare reads audio: a LibriSpeech split or the folder "
                                             "holding the splits, a Libri-light tree, or a folder of audio)"):
        raise ValueError(refusal)
    problems = [] if problems is None else problems
    files_read = FilesRead()  # every file read, by device and inode: one file reached by two paths is read once
    splits: dict[str, Sequence[Utterance]] = {}
    found: dict[str, Path] = {}
    read: list[Path] = []  # the folders whose audio the splits hold (what is elsewhere is left out)

    def add(name: str, folder: Path, utts: Sequence[Utterance]) -> None:
        if name in found:
            raise ValueError(f"{root}: two splits named {name} ({found[name]} and {folder}): point prepare at one "
                             "of the folders that hold them")
        found[name] = folder
        splits[name] = utts

    def read_split(folder: Path) -> bool:
        if is_librispeech_split(folder):
            add(folder.name, folder, read_librispeech(folder, problems, files_read))
        elif is_unlabelled_librilight(folder):
            add(f"unlabelled-{folder.name}", folder, read_unlabelled(folder, problems, limits=limits, workers=workers,
                                                                     files_read=files_read))
        else:
            return False
        read.append(folder)
        return True

    def read_finetuning(folder: Path) -> None:
        # its own files: the label sets are drawn from LibriSpeech's training splits (a tree of links to them is fine)
        for name, utts in read_librilight(folder, problems).items():
            add(f"labelled-{name}", folder, utts)
        read.extend(_finetuning_root(folder) / fold for fold in LIBRILIGHT_SETS["10h"])

    if read_split(root):
        return splits
    for child in _subfolders(root):
        if read_split(child):
            continue
        inside = [folder.name for folder in _subfolders(child) if read_split(folder)]  # e.g. LibriSpeech/
        if inside:
            log.info("%s holds the splits %s", child, ", ".join(inside))
        if is_librilight(child):
            read_finetuning(child)
    if is_librilight(root):
        read_finetuning(root)
    if not splits and is_librispeech_part(root):
        splits[root.name] = read_librispeech(root, problems, files_read)
        _split_like_folders(root, "one LibriSpeech split")
    elif not splits:
        splits[root.name] = read_folder(root, problems, files_read)
        _split_like_folders(root, "one plain folder of audio")
    else:
        _left_out(root, read, problems)
    return splits


SPLIT_LIKE = ("train", "dev", "valid", "test", "eval")  # folder names that read as a split's


def _split_like_folders(root: Path, read_as: str) -> None:
    """Warn where the sub-folders of ``root``, read as one split (``read_as`` says how), look like splits
    (``train/``, ``dev/``, ``test/``): evaluation audio would land in the training manifest unless each is
    prepared on its own."""
    like = [f.name for f in _subfolders(root) if f.name.lower().startswith(SPLIT_LIKE)]
    if like:
        log.warning("%s is read as %s, one split (%s.jsonl), its sub-folders %s included; to keep them apart, "
                    "prepare each on its own (earful prepare %s OUT, ...)", root, read_as, root.name,
                    ", ".join(like), root / like[0])


def _left_out(root: Path, read: list[Path], problems: list[str]) -> None:
    """Report the audio and the LibriSpeech transcripts below ``root`` outside the folders ``read`` (not walked
    again: by path, or as a folder resolves, a link into a split is in it)."""
    outside = files_below(root, skip=read)
    left = [p for p in outside if is_audio_name(p)]
    problems += [Note(f"{p}: audio outside the splits found below {root}; not read") for p in left]
    problems += [Note(f"{p}: LibriSpeech transcripts outside the splits found below {root}; not read")
                 for p in outside if p.name.lower().endswith(TRANS_SUFFIX)]
    if left:
        log.warning("%s: %d audio file(s) outside the splits found are not read (e.g. %s); point prepare at the "
                    "folder that holds them to read them", root, len(left), ", ".join(str(p) for p in left[:3]))
