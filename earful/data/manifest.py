"""Manifests: one JSON object a line (JSONL) per utterance.

Fields: ``id``, ``path``, ``num_samples``, ``sample_rate``, ``speaker`` and, when known, ``transcript``;
for probing, optionally ``phonemes`` (space-separated, :mod:`earful.data.phonemes`) and ``intent`` (slot →
value, e.g. ``{"action": "activate", "object": "light", "location": "kitchen"}``), written only when set. A row
may be a *segment*, a window of its file: ``offset`` (the first sample) and ``num_samples`` (its length), both
in samples at the file's rate; a row without ``offset`` is the whole file. Relative paths are relative to the
manifest's folder (``write_manifest(..., relative_to=root)`` writes them so for audio under ``root``, which
keeps a corpus movable); in memory ``Utterance.path`` is always absolute.

``read_manifest`` keeps a manifest as columns, not one Python object per row: each row's byte range in the
file and its length at ``SAMPLE_RATE`` (16 bytes a row: 16 M Libri-light segments hold 256 MB). A row is parsed
again when it is asked for (``manifest[i]``), from the file opened when it was read, so a manifest replaced
on disk meanwhile (an atomic rename) does not change under a running job.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any, overload

import numpy as np
from tqdm import tqdm

from earful.atomic import atomic_open, atomic_paths

from .budget import SAMPLE_RATE

_REQUIRED = {"id": str, "path": str, "num_samples": int, "sample_rate": int, "speaker": str}
_OPTIONAL = ("offset", "phonemes", "intent")  # left out of a row when unset
# what other tools call a row's transcript (Hugging Face datasets: LibriSpeech's "text", Common Voice's
# "sentence"): a row that says one of them and no "transcript" is refused, not read as unlabelled
_TRANSCRIPT_ELSEWHERE = ("text", "sentence")
_INT64 = 2**63  # lengths and offsets are kept as int64
# Unicode's control characters (category Cc) but tab, newline and carriage return (whitespace to every reader):
# NUL ends the text a C reader (espeak-ng) takes, C1 ones are text decoded with the wrong code page
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_JSON_SPACE = b" \t\r\n"  # a line of only these is blank (JSON's whitespace: a row's trailing blank lines parse)
# a lone surrogate: what os.listdir makes of a file name's bytes that are not UTF-8 (b'caf\xe9' -> 'caf\udce9')
_SURROGATE = re.compile("[\ud800-\udfff]")


def printable_path(path: object) -> str:
    """``path`` as a message names it: as it is, or as its ``repr`` where it cannot be printed as UTF-8 (a file
    name whose bytes are not UTF-8, which Python keeps as lone surrogates: ``'caf\\udce9.flac'``). An in-memory
    file (a shard member) is named by its ``str()``."""
    name = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return repr(name)
    return name


def json_line(obj: Any) -> str:
    """``obj`` as one line of JSON, non-ASCII text as it is (readable), except lone surrogates (a path holding a
    file name that is not UTF-8), which are written as JSON escapes (``\\udce9``): no UTF-8 file can hold them as
    they are, and ``json.loads`` gives the same string back, so the path opens the same file."""
    line = json.dumps(obj, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def samples_at(num_samples: int, rate: int, target: int = SAMPLE_RATE) -> int:
    """Length in samples of ``num_samples`` at ``rate`` once resampled to ``target`` (what the loader produces)."""
    return num_samples if rate == target else int(round(num_samples * target / rate))


@dataclass(slots=True)  # no __dict__ a row: 48 bytes less a Libri-light segment in prepare
class Utterance:
    id: str
    path: str
    num_samples: int
    sample_rate: int
    speaker: str
    transcript: str | None = None
    offset: int | None = None  # a segment: its first sample in the file (at sample_rate); None: the whole file
    phonemes: str | None = None  # space-separated phonemes of earful.data.phonemes.PHONEMES
    intent: dict[str, str] | None = None  # slot -> value

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def samples_at(self, rate: int) -> int:
        """Length in samples once resampled to ``rate`` (what the loader will produce)."""
        return samples_at(self.num_samples, self.sample_rate, rate)


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and line."""


class AudioNotFound(ManifestError):
    """A row whose audio file is not there (``read_manifest(check_files=True)``)."""


def control_character(text: str) -> str | None:
    """The first control character of ``text`` (Unicode category Cc: NUL, ESC, C1 …; tab, newline and carriage
    return are whitespace and pass) described with its position, or None. Such a character in a transcript is
    corruption (a NUL ends the text espeak-ng reads)."""
    found = _CONTROL.search(text)
    return None if found is None else f"control character U+{ord(found.group()):04X} at character {found.start()}"


def _check_row(row: Any) -> str | None:
    """What is wrong with a parsed row, or None."""
    if type(row) is not dict:
        return "expected a JSON object"
    for key, typ in _REQUIRED.items():
        if key not in row:
            return f"missing field {key!r}"
        if type(row[key]) is not typ:
            return f"field {key!r} must be {typ.__name__}, got {row[key]!r}"
    if not row["id"]:
        return "field 'id' must not be empty"
    if row["num_samples"] < 0 or row["sample_rate"] <= 0:
        return "num_samples must be >= 0 and sample_rate > 0"
    transcript = row.get("transcript")
    if transcript is None and (other := next((k for k in _TRANSCRIPT_ELSEWHERE if k in row and (
            "transcript" not in row or row[k] is not None)), None)):  # 'transcript': null beside a 'text' too
        return (f"field {other!r} is not read: earful reads a row's transcript from 'transcript'"
                f"{', null here' if 'transcript' in row else ''} (rename the field; a row without one is unlabelled)")
    if transcript is not None and type(transcript) is not str:
        return "field 'transcript' must be a string or null"
    if transcript is not None and (bad := control_character(transcript)) is not None:
        return f"field 'transcript' holds a {bad} (a corrupt transcript?)"
    offset = row.get("offset")
    if offset is not None and (type(offset) is not int or offset < 0):
        return f"field 'offset' must be an integer >= 0 (the segment's first sample), got {offset!r}"
    n = row["num_samples"]
    if (offset or 0) + n >= _INT64 or samples_at(n, row["sample_rate"]) >= _INT64:  # ints of any size parse
        return f"num_samples {n} (offset {offset}) at {row['sample_rate']} Hz: more samples than any audio file holds"
    phonemes = row.get("phonemes")
    if phonemes is not None and type(phonemes) is not str:
        return "field 'phonemes' must be a string or null"
    intent = row.get("intent")
    if intent is not None and not (type(intent) is dict and all(
            type(k) is str and type(v) is str for k, v in intent.items())):
        return f"field 'intent' must map slot names to strings, got {intent!r}"
    return None


def _resolve(path: str, base: Path) -> str:
    audio = Path(path)
    return str(audio if audio.is_absolute() else Path(os.path.normpath(base / audio)))


class Rows(Sequence[Utterance]):
    """Utterances kept in a compact form, each made when it is asked for (``_row``): by its index (from the end
    where negative), or a slice of them (a list)."""

    def _row(self, i: int) -> Utterance:
        """Row ``i``, 0 <= i < len(self)."""
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> Utterance: ...
    @overload
    def __getitem__(self, i: slice) -> list[Utterance]: ...

    def __getitem__(self, i: int | slice) -> Utterance | list[Utterance]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        return self._row(i % len(self))


class Manifest(Rows):
    """A manifest read by ``read_manifest``: a sequence of ``Utterance`` kept as columns (see the module
    docstring). ``lengths()`` gives every row's length at ``SAMPLE_RATE`` without parsing a row."""

    def __init__(self, path: Path, starts: np.ndarray, lengths: np.ndarray, blanks: np.ndarray | None = None) -> None:
        self.path = path
        self.base = path.resolve().parent
        self._starts = starts  # (rows + 1,) int64: row i is bytes [starts[i], starts[i+1]) (blank lines after it)
        self._lengths = lengths  # (rows,) int64 samples at SAMPLE_RATE
        # (k, 2) int64 [row, blank lines before it in all], a row each where blank lines came before it: none in a
        # manifest without blank lines, where row i is on line i + 1
        self._blanks = np.zeros((0, 2), dtype=np.int64) if blanks is None else blanks
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - kept open: rows are read from it on demand
        self._size = os.fstat(self._file.fileno()).st_size

    def __len__(self) -> int:
        return len(self._lengths)

    def _row(self, i: int) -> Utterance:
        a, b = int(self._starts[i]), int(self._starts[i + 1])
        return self._utterance(os.pread(self._file.fileno(), b - a, a), a)

    def __iter__(self) -> Iterator[Utterance]:
        return (self._utterance(raw, at) for raw, at in self._rows())

    def relative_paths(self) -> np.ndarray:
        """(rows,) bool: whether each row's path is relative (to the manifest's folder) as written, what a manifest
        written again from these rows keeps (``write_manifest(..., relative=...)``)."""
        return np.fromiter((not os.path.isabs(self._parse(raw, at)["path"]) for raw, at in self._rows()),
                           dtype=bool, count=len(self))

    def _rows(self) -> Iterator[tuple[bytes, int]]:
        """Each row's bytes, and where it starts in the file, in order."""
        fd, pos, end, rest = self._file.fileno(), int(self._starts[0]), int(self._starts[-1]), b""
        at = pos  # where ``rest`` starts in the file
        while pos < end:  # positional reads: no shared file offset to disturb
            chunk = os.pread(fd, min(1 << 20, end - pos), pos)
            if not chunk:
                raise ManifestError(f"{self.path}: shorter than when it was read")
            pos += len(chunk)
            *lines, rest = (rest + chunk).split(b"\n")
            for raw in lines:
                if not _blank(raw):
                    yield raw, at
                at += len(raw) + 1
        if not _blank(rest):
            yield rest, at

    def _parse(self, raw: bytes, at: int) -> dict[str, Any]:
        """The row held by ``raw`` (and blank lines after it), which starts at byte ``at`` of the file, parsed."""
        try:
            return json.loads(raw)
        except ValueError as e:  # not JSON, or not UTF-8: the file changed since it was read
            line = _line_of(self._file.fileno(), at)
            raise ManifestError(f"{self.path}:{line}: not valid JSON ({e}); changed since it was read?") from None

    def _utterance(self, raw: bytes, at: int) -> Utterance:
        """The utterance of the row held by ``raw``, which starts at byte ``at`` of the file."""
        row = self._parse(raw, at)
        return Utterance(row["id"], _resolve(row["path"], self.base), row["num_samples"], row["sample_rate"],
                         row["speaker"], row.get("transcript"), offset=row.get("offset"), phonemes=row.get("phonemes"),
                         intent=row.get("intent"))

    def lengths(self) -> np.ndarray:
        """(rows,) int64: each row's length in samples at ``SAMPLE_RATE``."""
        return self._lengths

    def line(self, i: int) -> int:
        """The line (1-based) of the file that holds row ``i``, for messages (without reading the file)."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of a manifest of {len(self)}")
        i %= len(self)
        k = int(np.searchsorted(self._blanks[:, 0], i, side="right")) - 1
        return i + 1 + (int(self._blanks[k, 1]) if k >= 0 else 0)

    def __del__(self) -> None:
        if hasattr(self, "_file"):
            self._file.close()

    def __getstate__(self) -> dict[str, Any]:  # a worker started by spawn reopens the file
        return {k: v for k, v in self.__dict__.items() if k != "_file"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115
        if os.fstat(self._file.fileno()).st_size != self._size:
            raise ManifestError(f"{self.path}: changed on disk since it was read (a job reads it once)")


def lengths_at_rate(utts: Sequence[Utterance]) -> np.ndarray:
    """(n,) int64: each utterance's length in samples at ``SAMPLE_RATE`` (a ``Manifest`` has them in a column)."""
    if isinstance(utts, Manifest):
        return utts.lengths()
    return np.array([u.samples_at(SAMPLE_RATE) for u in utts], dtype=np.int64)


def _blank(raw: bytes) -> bool:
    """Whether a line holds no row: nothing but JSON's whitespace (the one rule for reading and parsing rows)."""
    return not raw.strip(_JSON_SPACE)


def _line_of(fd: int, at: int) -> int:
    """The line number (1-based) of the byte at ``at`` of the open file ``fd`` (for messages)."""
    lines = 1
    for pos in range(0, at, 1 << 20):
        lines += os.pread(fd, min(1 << 20, at - pos), pos).count(b"\n")
    return lines


def shared_values(values: np.ndarray) -> np.ndarray:
    """(n,) bool: whether each of ``values`` (ids' hashes) is another's too; found by sorting, not a set of them."""
    ordered = np.sort(values)
    shared = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered  # 8 bytes a value, freed before the mask is made
    return np.isin(values, shared)


def _first_duplicate(path: Path, starts: array, hashes: np.ndarray) -> None:
    """Raise ManifestError at the first row whose id an earlier row has (ids compared by hash, then read)."""
    groups: dict[int, list[int]] = {}  # rows of equal hashes, in file order
    for r in np.flatnonzero(shared_values(hashes)).tolist():
        groups.setdefault(int(hashes[r]), []).append(r)
    found: tuple[int, int, str] | None = None  # (row, first row, id) of the earliest duplicate
    with open(path, "rb") as f:
        def row_id(r: int) -> str:
            f.seek(starts[r])
            return json.loads(f.read(starts[r + 1] - starts[r]))["id"]

        for rows in groups.values():
            first: dict[str, int] = {}
            for r in rows:
                uid = row_id(r)
                if uid in first and (found is None or r < found[0]):
                    found = (r, first[uid], uid)
                first.setdefault(uid, r)
        if found is not None:
            row, first_row, uid = found
            raise ManifestError(f"{path}:{_line_of(f.fileno(), starts[row])}: duplicate id {uid!r} (first on line "
                                f"{_line_of(f.fileno(), starts[first_row])})")


MANIFEST_SUFFIX = ".jsonl"  # a file named so is a manifest: `earful features` reads its rows, `transcribe` refuses it
WHAT_A_MANIFEST_IS = "JSON Lines, one utterance a line, made by `earful prepare AUDIO_FOLDER OUT`"
# the first bytes of the audio formats libsndfile reads (and MP3's ID3 tag): a file that starts so is no manifest
AUDIO_SIGNATURES = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM", b"NIST_1A", b".snd", b"caff", b"riff")
# a fairseq manifest: its first line the audio root, then one PATH<TAB>SAMPLES line per file
_FAIRSEQ_ROW = re.compile(r"[^\t]+\t\d+\s*")
HEAD_BYTES = 4096  # what is read of a file that is no manifest to tell what it is


def check_manifest_file(path: str | os.PathLike) -> None:
    """Refuse what is no manifest but is often given for one, with what to do: a folder (``finetune --train
    FOLDER`` said "[Errno 21] Is a directory"), an audio file, by its extension or first bytes (``evaluate CKPT
    a.wav`` said "not valid UTF-8; re-encode the manifest as UTF-8"), a fairseq manifest (``train.tsv`` said "not
    valid JSON"). A file that does not exist is left to whoever opens it.

    Raises:
        ManifestError: naming the file, what it is and the command that makes a manifest of it.
    """
    from .audio import is_audio_name  # audio imports this module

    path = Path(path)
    if path.is_dir() and (refusal := shards_folder_refusal(path, f"a manifest ({WHAT_A_MANIFEST_IS})")):
        raise ManifestError(refusal)
    if path.is_dir():
        raise ManifestError(f"{path}: a folder, not a manifest ({WHAT_A_MANIFEST_IS}); here: earful prepare {path} "
                            f"OUT, then give OUT/{path.resolve().name}.jsonl")
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if is_audio_name(path) or head.startswith(AUDIO_SIGNATURES):
        raise ManifestError(f"{path}: an audio file, not a manifest ({WHAT_A_MANIFEST_IS}); `earful transcribe CKPT "
                            "FILE...` transcribes audio files")
    lines = head.decode("utf-8", "replace").splitlines()
    if len(head) == HEAD_BYTES:  # the last line may be cut
        lines = lines[:-1]
    if len(lines) >= 2 and "\t" not in lines[0] and all(_FAIRSEQ_ROW.fullmatch(line) for line in lines[1:]):
        raise ManifestError(f"{path}: looks like a fairseq manifest (an audio root, then PATH<TAB>SAMPLES lines); "
                            f"earful reads its own ({WHAT_A_MANIFEST_IS}): earful prepare {lines[0].strip()} OUT "
                            "(transcripts as a .txt beside each audio file)")


def shards_folder_refusal(folder: Path, instead_of: str) -> str | None:
    """Why ``folder``, given for ``instead_of`` (e.g. "a manifest (...)"), is refused where it is a folder of
    `earful shard`'s, with what to give instead; None where it holds no shard index."""
    from .shards import recorded_relative  # shards imports this module

    source = _shards_source(folder)
    if source is None:
        return None
    if recorded_relative(source):
        source += ", as recorded, relative to the folder `earful shard` ran in"
    return (f"{folder}: a folder of shards (`earful shard`'s), not {instead_of}; pre-training streams it with "
            f"data.shards={folder}; other commands read the manifest it was written from"
            f"{f' (its index.json: {source})' if source else ''}")


def _shards_source(folder: Path) -> str | None:
    """The manifest a folder of `earful shard` was written from, as its index records it ("" where it records
    none); None where ``folder`` holds no shard index."""
    from .shards import INDEX, SHARDS_FORMAT  # shards imports this module

    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != SHARDS_FORMAT:
        return None
    return str(index.get("source") or "")


PROGRESS_AFTER_S = 2.0  # a manifest read that takes longer shows a bar (16 M Libri-light segments: minutes)
_BAR_EVERY = 1 << 16  # lines between the bar's updates (a line's update would cost more than its parse)


def reading_bar(path: str | os.PathLike, desc: str) -> tqdm:
    """A progress bar over ``path``'s bytes, drawn only once reading it has taken ``PROGRESS_AFTER_S``: a
    manifest of a few thousand rows shows nothing, one of millions (Libri-light's 16 M segments: 2.4 GB read
    in minutes) says how far it is; under torchrun rank 0 alone draws it. :func:`numbered_lines` updates it."""
    return tqdm(total=os.path.getsize(path), unit="B", unit_scale=True,
                desc=f"{desc} {printable_path(Path(path).name)}", delay=PROGRESS_AFTER_S, mininterval=1.0,
                leave=False, dynamic_ncols=True,
                disable=os.environ.get("RANK", "0") != "0")


def numbered_lines(f: IO[bytes], path: str | os.PathLike, desc: str) -> Iterator[tuple[int, bytes]]:
    """The lines of ``f`` (``path`` opened in binary, not yet read), numbered from 1, under a :func:`reading_bar`
    moved on by the bytes read every ``_BAR_EVERY`` lines: what reading and hashing a manifest share. Close it
    (``contextlib.closing``) so that the bar goes when the reader stops early."""
    with reading_bar(path, desc) as bar:
        done = 0
        for lineno, raw in enumerate(f, 1):
            done += len(raw)
            if lineno % _BAR_EVERY == 0:
                bar.update(done - bar.n)
            yield lineno, raw


def read_manifest(path: str | os.PathLike, *, check_files: bool = False) -> Manifest:
    """Read a JSONL manifest into columns. Raises ManifestError naming file and line on a bad row (including
    bytes that are not UTF-8), a duplicate id, (with ``check_files``) an audio file that does not exist, or a
    manifest without utterances (training or scoring nothing is never what was meant); and on a
    folder, an audio file or a fairseq manifest given for one (:func:`check_manifest_file`)."""
    path = Path(path)
    check_manifest_file(path)
    base = path.resolve().parent
    starts, lengths, hashes = array("q"), array("q"), array("q")
    blanks = array("q")  # [row, blank lines before it] pairs, where blank lines came before the row (Manifest.line)
    end = 0
    last_path = None
    with open(path, "rb") as f, closing(numbered_lines(f, path, "reading")) as lines:
        pos = 0
        for lineno, raw in lines:
            at, pos = pos, pos + len(raw)
            if _blank(raw):
                continue
            if lineno - 1 - len(starts) != (blanks[-1] if blanks else 0):
                blanks.extend((len(starts), lineno - 1 - len(starts)))
            try:
                line = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is no part of the row
            except UnicodeDecodeError as e:
                raise ManifestError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
                                    "re-encode the manifest as UTF-8") from None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            problem = _check_row(row)
            if problem is not None:
                raise ManifestError(f"{path}:{lineno}: {problem}")
            rate, n = row["sample_rate"], row["num_samples"]
            starts.append(at)
            lengths.append(samples_at(n, rate))
            hashes.append(hash(row["id"]))
            end = pos
            if check_files and row["path"] != last_path:  # a file's segments follow each other: one check
                last_path = row["path"]
                audio = _resolve(last_path, base)
                if not os.path.isfile(audio):
                    raise AudioNotFound(f"{path}:{lineno}: audio file not found: {printable_path(audio)}")
    if not lengths:
        raise ManifestError(f"{path}: no utterances (an empty manifest)")
    starts.append(end)
    _first_duplicate(path, starts, np.frombuffer(hashes, dtype=np.int64))
    return Manifest(path, np.frombuffer(starts, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64),
                    np.frombuffer(blanks, dtype=np.int64).reshape(-1, 2))


_FIELDS = tuple(f.name for f in fields(Utterance))  # a row's keys, in order


def manifest_row(u: Utterance, base: Path | None = None, root: Path | None = None,
                 folders: dict[str, Path] | None = None) -> dict[str, Any]:
    """``u`` as a manifest row: no ``offset`` for a whole file; the path resolved (absolute, links followed), or
    relative to ``base`` when under ``root``; ``folders`` caches resolved folders over the rows of one manifest
    (:func:`resolved`). Field by field, not ``dataclasses.asdict`` (its deep copy, and a ``Path.resolve`` a row,
    were 85 % of writing a manifest: 36 s for LibriSpeech's 565 k rows)."""
    row = {}
    for k in _FIELDS:
        v = getattr(u, k)
        if v is not None or k not in _OPTIONAL:
            row[k] = dict(v) if isinstance(v, dict) else v
    if base is not None:
        p = resolved(u.path, {} if folders is None else folders)
        row["path"] = os.path.relpath(p, base) if root and p.is_relative_to(root) else str(p)
    return row


def resolved(path: str | os.PathLike, folders: dict[str, Path]) -> Path:
    """``Path(path).resolve()``, with its folder's resolution kept in ``folders``: a row then costs one ``lstat``
    (is the file itself a link?) instead of one a component of its path."""
    folder, name = os.path.split(os.fspath(path))  # not normalised: "link/.." is the link's target's parent
    if name in ("", ".", "..") or "\0" in name:
        return Path(path).resolve()  # (a NUL: the error Path.resolve gives)
    folder = os.path.join(os.getcwd(), folder)  # as it stands: an absolute folder stays itself
    if folder not in folders:
        folders[folder] = Path(folder).resolve()
    p = folders[folder] / name
    return p.resolve() if os.path.islink(p) else p


def write_manifest(utts: Iterable[Utterance], path: str | os.PathLike, *,
                   relative_to: str | os.PathLike | None = None,
                   relative: Sequence[bool] | np.ndarray | None = None) -> None:
    """Write a JSONL manifest (atomically). Audio paths are absolute, except those under ``relative_to``
    (e.g. a corpus root holding both audio and manifests), written relative to the manifest's folder so the
    tree can be moved as a whole. ``relative`` (a flag a row, in place of ``relative_to``) writes each row flagged
    relative to the manifest's folder and the others absolute: a manifest written again from one read keeps its
    rows as they were (``Manifest.relative_paths``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        f.writelines(_manifest_lines(utts, path, relative_to, relative))


def write_manifests(manifests: dict[str | os.PathLike, Iterable[Utterance]],
                    replacing: Callable[[], AbstractContextManager[Any]] = nullcontext,
                    lines: dict[str | os.PathLike, Iterable[str]] | None = None) -> None:
    """Several manifests ``{path: utterances}``, and text files ``lines`` (``{path: lines}``: a list of the
    problems found), that appear together (``atomic_paths``): all written first, then renamed into place,
    ``replacing()`` around the renames; an error or a stop while they are written leaves every earlier file as it
    was (one prepare's splits never stand beside an earlier one's). Paths as :func:`write_manifest` writes them."""
    rows = {Path(p): utts for p, utts in manifests.items()}
    texts = {Path(p): text for p, text in (lines or {}).items()}
    with atomic_paths([*rows, *texts], replacing) as tmps:
        for path, utts in rows.items():
            with open(tmps[path], "w", encoding="utf-8") as f:
                f.writelines(_manifest_lines(utts, path, None))
        for path, text in texts.items():  # a file name that is not UTF-8 in a message: as its escapes (\udce9)
            with open(tmps[path], "w", encoding="utf-8", errors="backslashreplace") as f:
                f.writelines(line + "\n" for line in text)


def _manifest_lines(utts: Iterable[Utterance], path: Path, relative_to: str | os.PathLike | None,
                    relative: Sequence[bool] | np.ndarray | None = None) -> Iterator[str]:
    """``utts`` as the lines of the manifest ``path`` (see :func:`write_manifest`)."""
    base = path.resolve().parent
    root = Path(relative_to).resolve() if relative_to is not None else None
    everywhere = Path(base.anchor)  # a row ``relative`` flags: relative wherever it is
    folders: dict[str, Path] = {}  # the audio's folders, resolved once each
    last: tuple[str, Path | None, str] | None = None  # the previous row's path, as given, its root and as written
    for k, u in enumerate(utts):
        if relative is not None:
            root = everywhere if relative[k] else None
        if last is not None and (u.path, root) == last[:2]:  # a file's segments follow each other (Libri-light:
            row = manifest_row(u)  # ~70 a file): one lstat a file, not one a row
            row["path"] = last[2]
        else:
            row = manifest_row(u, base, root, folders)
            last = (u.path, root, row["path"])
        yield json_line(row) + "\n"


class Totals:
    """A manifest's totals (hours, utterances, speakers, labelled fraction: ``summary()``), counted as its rows
    pass on their way to the file (``counted``): no pass of their own over the rows (an unlabelled split's rows
    are made anew at each pass: ``earful.data.librispeech.Segments``)."""

    def __init__(self) -> None:
        self.seconds, self.rows, self.labelled = 0.0, 0, 0
        self.speakers: set[str] = set()

    def counted(self, utts: Iterable[Utterance]) -> Iterator[Utterance]:
        """``utts``, each counted as it passes."""
        for u in utts:
            self.seconds += u.seconds
            self.rows += 1
            self.speakers.add(u.speaker)
            self.labelled += u.transcript is not None
            yield u

    def summary(self) -> dict[str, float]:
        return {"hours": self.seconds / 3600, "utterances": self.rows, "speakers": len(self.speakers),
                "labelled": self.labelled / max(self.rows, 1)}
