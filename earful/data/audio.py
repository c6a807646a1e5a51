"""Audio loading: soundfile decode, stereo downmix, soxr resampling, and clear errors for bad files."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, NamedTuple

import numpy as np
import soundfile as sf
import soxr

from .budget import SAMPLE_RATE
from .manifest import Utterance, printable_path, samples_at, shards_folder_refusal

log = logging.getLogger(__name__)

# samples: the receptive field of the standard feature encoder (ModelConfig's default CNN, every preset's), what
# the data checks need before any model is known; a model's own is ModelConfig.receptive_field (a test keeps
# them equal: not derived here, so that loading audio does not import the model and torch)
RECEPTIVE_FIELD = 400
LENGTH_TOLERANCE = 4  # samples a decoded (resampled) file may differ from its manifest length
UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frames for a file whose header gives no length (SF_COUNT_MAX)
# what libsndfile decodes (NIST SPHERE: uncompressed; a shorten-compressed .sph is reported as unreadable)
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".sph", ".nist", ".au", ".snd",
                    ".w64", ".rf64", ".caf")
# audio that libsndfile cannot decode: a folder holding it is told so rather than read without it
UNREADABLE_AUDIO_EXTENSIONS = (".m4a", ".aac", ".wma", ".mp4", ".webm", ".amr")


def is_audio_name(path: str | os.PathLike) -> bool:
    """Whether ``path``'s name is an audio file's, one libsndfile decodes or not (then reported, never passed over)."""
    return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS + UNREADABLE_AUDIO_EXTENSIONS


def files_below(root: Path, skip: Sequence[Path] = ()) -> list[Path]:
    """Every file below ``root`` (paths through ``root``), sorted, but in the folders ``skip`` (by path, or as a
    folder resolves: a link into one of them is in it). Symbolic links to folders are followed; a folder met again
    (a second link to one folder) or a link up to ``root`` or a folder above it (a loop) is not read (again), and
    that is logged. A folder that cannot be listed is an error naming it."""
    return [Path(p) for p in walk_files(root, skip)]


def walk_files(root: Path, skip: Sequence[Path] = ()) -> Iterator[str]:
    """:func:`files_below`'s files one at a time, as strings, in its order (``Path`` order: by their parts), one
    folder's listing held at a time: a corpus of hundreds of thousands of files is not held as a ``Path`` each
    (about 300 bytes) to be sorted. A folder's files and sub-folders are taken by name, each sub-folder's files in
    its place, its sub-folders checked (``skip``, met already) when the folder holding them is listed, as
    ``os.walk`` (top-down) checks them."""
    def key(folder: str) -> tuple[int, int]:
        st = os.stat(folder)
        return st.st_dev, st.st_ino

    real = Path(os.path.realpath(root))
    seen = {key(str(folder)) for folder in (real, *real.parents)}
    skipped = [*skip, *(Path(os.path.realpath(folder)) for folder in skip)]

    def listed(top: str, real_top: str) -> tuple[str, Iterator[tuple[str, bool]], dict[str, str]]:
        """``top``, its entries ((name, is a folder), by name) and the sub-folders to read, each name with the
        folder it resolves to (``real_top``: ``top``'s; only a link is resolved afresh, from the root: a deep tree
        took a realpath of every folder, as many system calls as its depth, 17 s at 1,200 levels)."""
        try:
            with os.scandir(top) as listing:
                entries = sorted((entry.name, _is_dir(entry), _is_link(entry)) for entry in listing)
        except OSError as e:
            raise OSError(f"{e.filename}: cannot list the folder ({e.strerror})") from None
        kept = {}
        for name, _, link in (entry for entry in entries if entry[1]):
            folder = os.path.join(top, name)
            resolved = os.path.realpath(folder) if link else os.path.join(real_top, name)
            if any(f.is_relative_to(s) for f in (Path(folder), Path(resolved)) for s in skipped):
                continue
            if key(folder) in seen:
                log.warning("%s: links to %s, a folder read already or one above %s; not read again", folder,
                            resolved, root)
                continue
            seen.add(key(folder))
            kept[name] = resolved
        return top, iter((name, is_dir) for name, is_dir, _ in entries), kept

    # depth first, with a stack of the folders being read, not recursion: any depth of folders is read
    stack = [listed(os.fspath(root), str(real))]
    while stack:
        top, entries, kept = stack[-1]
        for name, is_dir in entries:
            if not is_dir:
                yield os.path.join(top, name)
            elif name in kept:
                stack.append(listed(os.path.join(top, name), kept[name]))
                break
        else:
            stack.pop()


def _is_link(entry: os.DirEntry) -> bool:
    """Whether a folder's entry is a symbolic link (True where it cannot be told: it is then resolved afresh)."""
    try:
        return entry.is_symlink()
    except OSError:
        return True


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether a folder's entry is a folder, or a link to one (as ``os.walk`` tells: False where it cannot be told)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def audio_files_named(name: str) -> list[str]:
    """The audio files a name given on the command line stands for: a file itself, or a folder the audio files
    below it (:func:`is_audio_name`, sorted, links followed). A name that is not there, or a folder with no audio
    below it, or a folder of shards, is refused (a ValueError naming it), so that a command can check its inputs before
    any work."""
    if Path(name).is_dir():
        if (shards := shards_folder_refusal(Path(name), "audio files")) is not None:
            raise ValueError(shards)
        below = [str(p) for p in files_below(Path(name)) if is_audio_name(p)]
        if not below:
            raise ValueError(f"{name}: a folder with no audio files below it")
        return below
    if not Path(name).exists():
        raise ValueError(f"{name}: no such file or folder")
    return [name]


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


# formats whose seek is sample-exact in libsndfile: a window is read alone. Others (MP3, Ogg) are decoded from
# their start up to the window's end, which gives the same samples.
EXACT_SEEK = {"WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64", "CAF", "AU"}


def read_window(f: sf.SoundFile, start: int, frames: int, dtype: str = "float32") -> np.ndarray:
    """``frames`` samples (every channel) from sample ``start`` of the open file ``f``, not yet read: by seeking
    where the format seeks exactly, else by decoding from the start and dropping what comes before ``start``
    (also for a WAV whose codec libsndfile cannot seek in: GSM 6.10, G.721/G.723 ADPCM)."""
    if f.format in EXACT_SEEK and f.seekable():
        f.seek(start)
        return f.read(frames, dtype=dtype, always_2d=True)
    return f.read(start + frames, dtype=dtype, always_2d=True)[start:]


BLOCK = 1 << 16  # samples a read of a file libsndfile cannot seek in


def _blocks(f: sf.SoundFile, limit: int | None = None) -> Iterator[np.ndarray]:
    """The float32 samples of the open file ``f`` from where it stands, ``BLOCK`` at a time, to its real end or to
    ``limit`` samples: how a file libsndfile cannot seek in (nor tell its length) is read."""
    got = 0
    while limit is None or got < limit:
        part = f.read(BLOCK if limit is None else min(BLOCK, limit - got), dtype="float32", always_2d=True)
        if not len(part):
            return
        got += len(part)
        yield part


def read_all(f: sf.SoundFile) -> np.ndarray:
    """Every float32 sample (``(samples, channels)``) of the open file ``f``, not yet read, to its real end (a header
    may promise more or less): at once where libsndfile can seek in it, else block by block."""
    if f.seekable():
        return f.read(dtype="float32", always_2d=True)
    blocks = list(_blocks(f))
    return np.concatenate(blocks) if blocks else np.zeros((0, f.channels), dtype="float32")


def decodes_up_to(f: sf.SoundFile, end: int) -> bool:
    """Whether sample ``end - 1`` of the open file ``f``, not yet read, decodes (a file cut short by an
    interrupted copy lacks it though its header promises it): by one seek where libsndfile seeks in the file, else
    (GSM 6.10, G.721/G.723 ADPCM WAVs, which :func:`read_window` also reads from their start) by decoding up to
    it, block by block."""
    if f.seekable():
        f.seek(end - 1)
        return len(f.read(1, dtype="float32")) == 1
    return sum(len(part) for part in _blocks(f, end)) >= end


def _decodes_at_all(path: str | os.PathLike | IO[bytes]) -> bool:
    """Whether the first sample of ``path``, opened afresh, decodes: a file libsndfile cannot decode at all (an
    AIFF in DWVW: every read seeks, and that seek fails) fails here too; one cut short (whose failed seek leaves its
    open file unusable) does not. An in-memory file is taken to decode."""
    if hasattr(path, "read"):
        return True
    try:
        with sf.SoundFile(path) as f:
            return len(f.read(1, dtype="float32")) == 1
    except (RuntimeError, ValueError):
        return False


def check_decodes_up_to(f: sf.SoundFile, path: str | os.PathLike | IO[bytes], end: int) -> None:
    """Raise AudioError naming ``path`` unless sample ``end - 1`` of the open file ``f``, not yet read, decodes
    (:func:`decodes_up_to`): a file cut short (an interrupted copy) whose header promises more than it holds. A FLAC
    header says what it promises, so a truncated FLAC is found here, not by its length."""
    name = printable_path(path)
    try:
        last = decodes_up_to(f, end)
    except (RuntimeError, ValueError) as e:  # libsndfile's errors (LibsndfileError is a RuntimeError)
        if not _decodes_at_all(path):  # not cut short: libsndfile cannot decode it (an AIFF in DWVW)
            raise AudioError(f"{name}: libsndfile cannot decode its audio ({f.format} {f.subtype}: {e}); "
                             f"re-encode it, e.g. as FLAC or 16-bit WAV") from None
        raise AudioError(f"{name}: cannot read up to sample {end} of the {f.frames} its header promises "
                         f"(truncated?): {e}") from None
    if not last:
        raise AudioError(f"{name}: holds fewer than the {end} samples its header promises (truncated?)")


def load_audio(
    path: str | os.PathLike | IO[bytes],
    *,
    target_rate: int = SAMPLE_RATE,
    resample: bool = True,
    start: int = 0,
    frames: int | None = None,
) -> np.ndarray:
    """Load ``path`` (or its ``frames`` samples from ``start``, counted at the file's rate) as float32 mono at
    ``target_rate``; only that window is decoded. ``path`` may be an in-memory file (a shard member) whose
    ``str()`` names it.

    Raises AudioError when the file is unreadable, or as ``decode_audio`` says.
    """
    with open_audio(path) as f:
        return decode_audio(f, path, target_rate=target_rate, resample=resample, start=start, frames=frames)


def decode_audio(
    f: sf.SoundFile,
    path: str | os.PathLike | IO[bytes],
    *,
    target_rate: int = SAMPLE_RATE,
    resample: bool = True,
    min_samples: int = RECEPTIVE_FIELD,
    start: int = 0,
    frames: int | None = None,
) -> np.ndarray:
    """``load_audio`` of the file ``f``, opened (and not yet read) by the caller; ``path`` names it in errors.

    Raises AudioError when the file cannot be decoded, is empty, holds NaN/inf in the window, ends before the
    window does, has another sample rate while ``resample`` is off, or is shorter than ``min_samples`` (after
    resampling).
    """
    name = printable_path(path)
    try:
        rate = f.samplerate
        if frames is None:  # the whole file, to its real end (a header may promise more or less)
            data = read_all(f)
        else:
            if start + frames > f.frames:
                raise AudioError(f"{name}: segment [{start}, {start + frames}) past the end of the file "
                                 f"({f.frames} samples at {rate} Hz)")
            data = read_window(f, start, frames)
            if len(data) < frames:
                raise AudioError(f"{name}: truncated? {len(data)} of the {frames} samples from sample {start} "
                                 "could be decoded")
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as e:  # ValueError: soundfile's own
        raise AudioError(f"{name}: unreadable audio ({e})") from None
    if data.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if rate != target_rate:
        if not resample:
            raise AudioError(f"{name}: sample rate {rate} Hz, expected {target_rate} Hz (resampling is off)")
        wave = soxr.resample(wave, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
    if len(wave) < min_samples:
        raise AudioError(too_short(path, len(wave), target_rate, min_samples))
    return np.ascontiguousarray(wave)


def too_short(path: str | os.PathLike, samples: int, rate: int = SAMPLE_RATE, needed: int = RECEPTIVE_FIELD) -> str:
    """The problem of audio shorter than the model's receptive field."""
    return (f"{printable_path(path)}: too short ({samples} samples at {rate} Hz; the model's receptive field needs "
            f"at least {needed})")


def shorter_than_a_frame(utts: Sequence[Utterance], receptive_field: int = RECEPTIVE_FIELD) -> list[Utterance]:
    """The utterances of ``utts`` shorter than the model's ``receptive_field`` (samples at 16 kHz; the standard
    CNN's 400 by default): no output."""
    return [u for u in utts if u.samples_at(SAMPLE_RATE) < receptive_field]


def check_frames(utts: Sequence[Utterance], where: str, frame: str, reason: str,
                 receptive_field: int = RECEPTIVE_FIELD) -> None:
    """Refuse ``utts`` (a manifest's, named by ``where``) holding utterances shorter than one ``frame`` needs (the
    ``receptive_field``: 400 samples at 16 kHz for the standard CNN), naming how many and a few, and ``reason``
    they cannot stay: what evaluate and the probes check before any work, where the loader would stop midway
    naming a file alone."""
    short = shorter_than_a_frame(utts, receptive_field)
    if short:
        shown = ", ".join(f"{u.id!r} ({u.samples_at(SAMPLE_RATE)})" for u in short[:3])
        raise ValueError(f"{where}: {len(short)} of {len(utts)} utterances are shorter than one {frame} needs "
                         f"({receptive_field} samples at {SAMPLE_RATE} Hz): {shown}{' …' if len(short) > 3 else ''}; "
                         f"{reason}: leave them out of the manifest (`earful prepare` does)")


def check_length(path: str | os.PathLike | IO[bytes], samples: int, expected: int) -> None:
    """A file cut short (an interrupted copy) may still decode, and one replaced or listed at the wrong rate may
    be longer: compare with the manifest, allowing for the sample or two resampling may lose or add."""
    name = printable_path(path)
    if samples + LENGTH_TOLERANCE < expected:
        raise AudioError(f"{name}: truncated? {samples} samples at {SAMPLE_RATE} Hz, the manifest says {expected}")
    if samples > expected + LENGTH_TOLERANCE:
        raise AudioError(f"{name}: {samples} samples at {SAMPLE_RATE} Hz, longer than the manifest's {expected}: was "
                         "the file replaced or its sample rate misrecorded?")


def check_row(path: str | os.PathLike | IO[bytes], utt: Utterance, frames: int, rate: int) -> int:
    """A manifest row against the header of its file (``frames`` at ``rate``), before anything is decoded: what
    the loader checks when it reads a row (``earful.data.dataset.read_utterance``) and ``earful shard`` when it
    writes one. The rate is the row's; a segment lies within the file; a whole file is as long as the row says
    (``check_length``); what the row holds is not shorter than the model's receptive field. Raises AudioError
    naming ``path`` and the problem; returns the samples the row holds, at the file's rate."""
    name = printable_path(path)
    if rate != utt.sample_rate:
        raise AudioError(f"{name}: sample rate {rate} Hz, the manifest says {utt.sample_rate} Hz: was the file "
                         "replaced?")
    if utt.offset is not None:
        if utt.offset + utt.num_samples > frames:
            raise AudioError(f"{name}: segment [{utt.offset}, {utt.offset + utt.num_samples}) past the end of the "
                             f"file ({frames} samples at {rate} Hz)")
        held = utt.num_samples
    else:
        check_length(path, samples_at(frames, rate), utt.samples_at(SAMPLE_RATE))
        held = min(frames, max(utt.num_samples, 1))
    if samples_at(held, rate) < RECEPTIVE_FIELD:
        raise AudioError(too_short(path, samples_at(held, rate)))
    return held


def soundfile_source(path: str | os.PathLike | IO[bytes]) -> bytes | IO[bytes]:
    """What soundfile opens: a path as the file system's bytes, or an in-memory file (a shard member) from its
    start. Bytes, because soundfile encodes a ``str`` strictly: a file name that is not UTF-8 (``os.listdir``
    keeps its bytes as lone surrogates, ``'caf\\udce9.flac'``) raised UnicodeEncodeError instead of opening.
    Raises AudioError for a name no file can have here (a surrogate ``os.fsencode`` cannot turn back into bytes)."""
    if hasattr(path, "read"):
        path.seek(0)  # type: ignore[union-attr]
        return path  # type: ignore[return-value]
    try:
        return os.fsencode(path)  # type: ignore[arg-type]
    except UnicodeEncodeError as e:
        raise AudioError(f"{printable_path(path)}: unreadable audio (a file name this file system cannot hold: "
                         f"{e.reason} at character {e.start})") from None


@contextmanager
def open_audio(path: str | os.PathLike | IO[bytes]) -> Iterator[sf.SoundFile]:
    """``path`` opened once, for its header and then its samples (``decode_audio``, ``read_window``). Raises
    AudioError naming it when it is missing, its name cannot be a file's, or its header cannot be read."""
    source = soundfile_source(path)
    name = printable_path(path)
    try:
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as e:
        if isinstance(source, bytes) and not os.path.exists(source):  # libsndfile says only "System error"
            raise AudioError(f"{name}: unreadable audio (no such file)") from None
        if isinstance(source, bytes) and os.path.isdir(source):  # libsndfile: "Format not recognised"
            raise AudioError(f"{name}: a directory, not an audio file (give audio files, e.g. DIR/*.flac, that "
                             "libsndfile reads: WAV, FLAC, OGG/Opus, MP3, AIFF)") from None
        # libsndfile's own words: soundfile's prefix ("Error opening b'/x/a.flac': ") names the file again
        detail = e.error_string if isinstance(e, sf.LibsndfileError) else e
        raise AudioError(f"{name}: unreadable audio header ({detail})") from None
    with f:
        yield f


class Shortfall(NamedTuple):
    """A container's audio chunk cut short: the bytes its header says it holds, the bytes it holds, and the samples
    it promises (None where the header does not count them)."""

    promised: int
    held: int
    samples: int | None


def _short(promised: int, held: int, samples: int | None) -> Shortfall | None:
    """A Shortfall where the chunk holds less than it promises; a size of 0 or less (unknown) is no promise."""
    return Shortfall(promised, held, samples) if 0 < promised and held < promised else None


@dataclass(frozen=True)
class Chunks:
    """How a container lays out its chunks: the first at byte ``start``, each an id of ``id_bytes`` (W64's are
    GUIDs, named by their first four bytes) and a size of ``size_bytes`` in ``order`` (a signed one where 8 bytes:
    CAF's -1), counting the chunk's own header where ``counted``, padded to a multiple of ``pad`` bytes."""

    start: int
    id_bytes: int
    size_bytes: int
    order: Literal["little", "big"]
    pad: int
    counted: bool = False

    def walk(self, f: IO[bytes], end: int) -> Iterator[tuple[bytes, int, int]]:
        """(name, where its body starts, its size) of each chunk of the open file ``f``, ``end`` bytes long, up to a
        chunk header cut short or a size below 0."""
        at, head = self.start, self.id_bytes + self.size_bytes
        while at + head <= end:
            f.seek(at)
            raw = f.read(head)
            size = int.from_bytes(raw[self.id_bytes:], self.order, signed=self.size_bytes == 8)
            size -= head if self.counted else 0
            yield raw[:4], at + head, size
            if size < 0:
                return
            at += head + size + -size % self.pad

    @staticmethod
    def read(f: IO[bytes], at: int, width: int) -> bytes:
        """``width`` bytes from byte ``at`` of the open file ``f``."""
        f.seek(at)
        return f.read(width)

    def number(self, f: IO[bytes], at: int, width: int) -> int:
        """The unsigned number of ``width`` bytes at byte ``at`` of the open file ``f``."""
        return int.from_bytes(self.read(f, at, width), self.order)


FRAME_ALIGNED = (1, 3, 6, 7, 0xFFFE)  # WAV codecs whose nBlockAlign is a sample frame: PCM, float, A-law, µ-law


def _wave(f: IO[bytes], chunks: Chunks, end: int) -> Shortfall | None:
    """A WAV's data chunk (RIFF, RIFX, W64; RF64 and BW64, where a size of 0xFFFFFFFF defers to the ds64 chunk's),
    its samples counted by the fmt chunk's nBlockAlign where that is a sample frame (not an ADPCM block). A size of
    0xFFFFFFFF otherwise (a WAV written to a stream: unknown) is no promise."""
    align, wide = 0, 0
    for name, body, size in chunks.walk(f, end):
        if name == b"ds64":
            wide = chunks.number(f, body + 8, 8)  # riffSize, dataSize, sampleCount …
        elif name == b"fmt " and size >= 14 and chunks.number(f, body, 2) in FRAME_ALIGNED:  # wFormatTag
            align = chunks.number(f, body + 12, 2)  # nBlockAlign
        elif name == b"data":
            size = wide if size == 0xFFFFFFFF else size
            return _short(size, end - body, size // align if align else None)
    return None


def _aiff(f: IO[bytes], chunks: Chunks, end: int) -> Shortfall | None:
    """An AIFF's or AIFC's SSND chunk (an offset and a block size, then the samples), its samples the COMM chunk's
    numSampleFrames (not an AIFC's IMA ADPCM, where it counts packets)."""
    frames = None
    for name, body, size in chunks.walk(f, end):
        if name == b"COMM":  # numChannels, numSampleFrames, sampleSize, sampleRate (10 bytes), an AIFC's codec
            packets = size >= 22 and chunks.read(f, body + 18, 4) == b"ima4"
            frames = None if packets else chunks.number(f, body + 2, 4)
        elif name == b"SSND":
            return _short(size - 8, end - body - 8, frames)
    return None


def _caf(f: IO[bytes], chunks: Chunks, end: int) -> Shortfall | None:
    """A CAF's data chunk (an edit count, then the samples), its samples counted by the desc chunk's bytes and
    frames a packet (0 bytes a packet: packets of varying size, ALAC's, not counted). A size of -1 says "to the end
    of the file": no promise."""
    packet = 0, 0
    for name, body, size in chunks.walk(f, end):
        if name == b"desc":  # sample rate (8 bytes), format id, format flags, bytes a packet, frames a packet …
            packet = chunks.number(f, body + 16, 4), chunks.number(f, body + 20, 4)
        elif name == b"data":
            return _short(size - 4, end - body - 4, (size - 4) // packet[0] * packet[1] if packet[0] else None)
    return None


AU_BYTES = {1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 8, 27: 1}  # bytes a sample by encoding: µ-law, PCM, floats, A-law


def _au(f: IO[bytes], chunks: Chunks, end: int) -> Shortfall | None:
    """An AU's samples: after its header of data offset, data size (0xFFFFFFFF: unknown, no promise), encoding,
    sample rate and channels, each 4 bytes; counted where the encoding has a whole number of bytes a sample (not
    G.72x ADPCM)."""
    offset, size, encoding, _, channels = (chunks.number(f, at, 4) for at in range(4, 24, 4))
    per = AU_BYTES.get(encoding, 0) * channels
    return _short(size if size != 0xFFFFFFFF else 0, end - offset, size // per if per else None)


def _nist(f: IO[bytes], chunks: Chunks, end: int) -> Shortfall | None:
    """A NIST SPHERE file's samples: after its text header (its size on the second line), sample_count ×
    channel_count × sample_n_bytes bytes; a compressed one (Shorten, ``sample_coding ... shorten``) promises no
    size."""
    lines = chunks.read(f, 0, 1024).split(b"\n")
    if len(lines) < 2 or not lines[1].strip().isdigit():
        return None
    header = int(lines[1])
    fields = {}
    for line in chunks.read(f, 0, header).split(b"\n")[2:]:
        if line.strip() == b"end_head":
            break
        if len(parts := line.split(None, 2)) == 3:
            fields[parts[0]] = parts[2].strip()
    if b"shorten" in fields.get(b"sample_coding", b"") or not all(
            fields.get(key, b"1").isdigit() for key in (b"sample_count", b"channel_count", b"sample_n_bytes")):
        return None
    samples = int(fields.get(b"sample_count", b"0"))
    return _short(samples * int(fields.get(b"channel_count", b"1")) * int(fields.get(b"sample_n_bytes", b"2")),
                  end - header, samples)


@dataclass(frozen=True)
class Container:
    """A container whose header says how many bytes of audio it holds: named ``form`` at byte ``form_at`` of its
    header, its chunks laid out as ``chunks`` says, its audio chunk found by ``audio``."""

    form_at: int
    form: tuple[bytes, ...]
    chunks: Chunks
    audio: Callable[[IO[bytes], Chunks, int], Shortfall | None]


_RIFF = Container(8, (b"WAVE",), Chunks(12, 4, 4, "little", 2), _wave)
CONTAINERS = {  # by a file's first four bytes
    b"RIFF": _RIFF,
    b"RF64": _RIFF,
    b"BW64": _RIFF,
    b"RIFX": Container(8, (b"WAVE",), Chunks(12, 4, 4, "big", 2), _wave),
    b"riff": Container(24, (b"wave",), Chunks(40, 16, 8, "little", 8, counted=True), _wave),  # Sony Wave64
    b"FORM": Container(8, (b"AIFF", b"AIFC"), Chunks(12, 4, 4, "big", 2), _aiff),
    b"caff": Container(0, (b"caff",), Chunks(8, 4, 8, "big", 1), _caf),
    b".snd": Container(0, (b".snd",), Chunks(24, 4, 4, "big", 1), _au),  # chunks: the header's numbers alone
    b"dns.": Container(0, (b"dns.",), Chunks(24, 4, 4, "little", 1), _au),
    b"NIST": Container(4, (b"_1A\n",), Chunks(0, 4, 4, "big", 1), _nist),
}


def data_shortfall(path: str | os.PathLike) -> Shortfall | None:
    """Where the audio of ``path`` (WAV, RF64, W64, AIFF/AIFC, CAF, AU, NIST SPHERE: ``CONTAINERS``) ends before
    its header says (an interrupted copy), how; else (another format, or a whole file) None. Headers alone are read.
    libsndfile reads such a file to its cut end and gives that as its length, saying so only in its log: its
    length is not its header's, as a FLAC's is."""
    with open(path, "rb") as f:
        head = f.read(28)
        kind = CONTAINERS.get(head[:4])
        if kind is None or head[kind.form_at:kind.form_at + 4] not in kind.form:
            return None
        return kind.audio(f, kind.chunks, os.fstat(f.fileno()).st_size)


def audio_info(path: str | os.PathLike | IO[bytes], *, check_end: bool = False) -> tuple[int, int]:
    """(num_frames, sample_rate) from the file header, without decoding; with ``check_end``, the file opened once
    is also read at its last sample (:func:`check_decodes_up_to`, about a millisecond), and the audio of a WAV,
    RF64, W64, AIFF, CAF, AU or NIST SPHERE file is checked against the file's size (:func:`data_shortfall`): what
    ``earful prepare`` lists must decode to the length its header says. Raises AudioError."""
    with open_audio(path) as f:
        frames, rate = int(f.frames), int(f.samplerate)
        if frames == UNKNOWN_LENGTH:
            name = printable_path(path)
            raise AudioError(f"{name}: its length is unknown (its header gives none: a FLAC written to a stream has "
                             f"0 total samples); re-encode it, e.g. ffmpeg -i {name} -c:a flac OUT.flac")
        if check_end and not hasattr(path, "read"):
            if (short := data_shortfall(path)) is not None:  # type: ignore[arg-type]
                samples = f" ({short.samples} samples)" if short.samples is not None else ""
                raise AudioError(f"{printable_path(path)}: audio that ends before its header says (truncated?): "
                                 f"its data chunk holds {short.held} of the {short.promised} bytes{samples} its "
                                 "header promises")
        if check_end and frames:
            check_decodes_up_to(f, path, frames)
        return frames, rate
