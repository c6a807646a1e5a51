"""Sharded storage: a manifest's audio in tar shards of about ``--shard-gb`` each, with an index.

``earful shard MANIFEST OUT`` writes::

    OUT/shard-000000.tar ...   WebDataset layout: per row, ``KEY.flac`` (its audio) then ``KEY.json`` (id, speaker,
                               transcript, num_samples, sample_rate, and where it came from); KEY = the member's
                               number (its place among the members written, across shards), 9 digits
    OUT/index.json             format, the shards (name, bytes, members), totals, rows left out and why
    OUT/index/*.npy            one number a member: its byte offset in its shard, the bytes its two tar entries
                               span, num_samples, sample_rate (memory-mapped: 16 M members take no memory until read)

A member holds the row's audio alone (a segment's window, not its file), in the file's own channels, rate and
integer sample format (FLAC of 8, 16 or 24 bits: decoding gives the very samples the file gives, so batches
read from shards equal batches read from the files); audio stored otherwise (float, MP3, Opus) becomes 24-bit
FLAC. Each row's file is checked against the row as the loader checks it (``check_row``), so a member holds
what its json and the index say. Shards appear whole or not at all (atomic renames); the index is written last.

Readers find a member by its offset (no tar scanning), check that its tar headers name the key the index
expects with the sizes it records, and its json the length: a shard replaced, cut short or corrupted is named
(``ShardError``), never read as other audio. The shards may also be read from any fsspec URL (``s3://``,
``https://``, ...; ``pip install fsspec``, or ``earful[remote]``).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import tarfile
from array import array
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from earful.atomic import atomic_path, atomic_save_npy, atomic_write_json
from earful.config import describe, differences

from .audio import AudioError, check_row, open_audio, read_window
from .budget import SAMPLE_RATE
from .manifest import Manifest, Utterance, json_line, manifest_row, printable_path
from .parallel import ordered_map

log = logging.getLogger(__name__)

SHARDS_FORMAT = "earful-shards-1"
INDEX = "index.json"
COLUMNS = ("offset", "span", "num_samples", "sample_rate")
BLOCK = 512  # tar's block
_EXACT_FLAC = {"PCM_S8": ("int16", "PCM_S8"), "PCM_U8": ("int16", "PCM_S8"), "PCM_16": ("int16", "PCM_16"),
               "PCM_24": ("int32", "PCM_24")}  # what FLAC stores exactly: (read as, written as)


class ShardError(ValueError):
    """A shard or index that cannot be used; the message names it, the problem and the way out."""


class BadRow(ShardError):
    """A row ``earful shard`` cannot write (without ``--skip-bad``), or no row at all: the run removes its shards."""


def key_of(member: int) -> str:
    return f"{member:09d}"


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _tar_entry(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * (_padded(len(data)) - len(data))


# ---------------------------------------------------------------------------------------------- writing


FLAC_MAX_CHANNELS, FLAC_MAX_RATE = 8, 655_350  # the format's limits


def encode_member(utt: Utterance) -> tuple[bytes, str | None]:
    """(the FLAC bytes of ``utt``'s audio — its window of the file — or b"", the problem or None). The header is
    checked against the row as the loader checks it (``check_row``: rate, length, window, too short), so a member
    holds what its json and the index say."""
    name = printable_path(utt.path)
    try:
        with open_audio(utt.path) as f:  # one open: the header checked, then the window read
            frames, rate = int(f.frames), int(f.samplerate)
            check_row(utt.path, utt, frames, rate)
            if f.channels > FLAC_MAX_CHANNELS or rate > FLAC_MAX_RATE:  # the file is fine; FLAC cannot hold it
                return b"", (f"{name}: {f.channels} channels at {rate} Hz; a FLAC member holds at most "
                             f"{FLAC_MAX_CHANNELS} channels and {FLAC_MAX_RATE} Hz: mix down or resample the file, "
                             "or train from the manifest (data.train)")
            start = utt.offset or 0
            count = utt.num_samples if utt.offset is not None else frames
            source = f.subtype
            dtype, subtype = _EXACT_FLAC.get(source, ("float32", "PCM_24"))
            data = read_window(f, start, count, dtype)
        if len(data) < count:
            return b"", f"{name}: truncated? {len(data)} of {count} samples from sample {start} could be decoded"
        if dtype == "float32" and not np.isfinite(data).all():
            return b"", f"{name}: audio contains NaN or infinite samples"
        if source in ("FLOAT", "DOUBLE") and len(data) and (peak := float(np.abs(data).max())) > 1.0:
            # FLAC holds [-1, 1): the member would differ from the file (it was clipped silently). A lossy decode
            # (MP3, Vorbis, Opus) that overshoots a little is clipped, as any conversion to PCM does (docs/data.md)
            return b"", (f"{name}: float samples beyond ±1 (peak {peak:.3g}) would be clipped in a FLAC member; "
                         "scale the file, or train from the manifest (data.train)")
        out = io.BytesIO()
        sf.write(out, data, rate, format="FLAC", subtype=subtype)
        return out.getvalue(), None
    except AudioError as e:
        return b"", str(e)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        return b"", f"{name}: unreadable audio ({e})"


def _member_json(utt: Utterance) -> bytes:
    row = manifest_row(utt)
    source = {"path": row.pop("path"), "offset": row.pop("offset", None)}
    return json_line({**row, "source": source}).encode("utf-8")  # a path not UTF-8: its escapes


@dataclass
class ShardSummary:
    shards: int
    members: int
    hours: float
    bytes: int
    problems: list[str]


# while a run writes: its finished shards and rows done, and each finished shard's member columns (removed once the
# index is written)
PROGRESS, PROGRESS_COLUMNS = "progress.json", "progress"


def write_shards(utts: Iterable[Utterance], out: str | os.PathLike, *, shard_bytes: int, skip_bad: bool = False,
                 workers: int = 1, total: int | None = None, source: str = "",
                 recipe: dict[str, Any] | None = None, resume: bool = False,
                 line_of: Callable[[int], int] | None = None,
                 finishing: Callable[[], AbstractContextManager[Any]] = nullcontext) -> ShardSummary:
    """Write ``utts`` (in their order) as shards of about ``shard_bytes`` each into ``out`` and the index last.
    A row whose audio cannot be read (unreadable, truncated) or whose file the row disagrees with (the loader's
    ``check_row``: rate, length, a segment past the end of its file, too short) stops the writing naming it, or
    with ``skip_bad`` is left out, logged and listed in the index (``left_out``: its id, line and problem). A row
    is named by the manifest ``source``, its line there (``line_of(k)`` of the k-th row of ``utts``) and its id
    (``_row_name``): a Libri-light file's 70 segments share one path, which names none of them.

    After each finished shard, ``out/progress.json`` records the rows done and the shards, and
    ``out/progress/SHARD.npy`` its members' columns; ``resume`` continues a run stopped (killed, Ctrl-C) from
    there, when ``recipe`` (what decides the shards: the manifest's digest, the seed, the shard size,
    ``skip_bad``) is the run's. A run stopped by a bad row removes what it wrote (the manifest must change, and
    with it the recipe). The index and the progress's removal are written inside ``finishing()`` (the command's
    ``StopSignals.holding``: a stop signal then waits for the end); a run killed between them is finished: a
    ``resume`` removes the progress and returns the index's summary, as it returns a finished run's (the shards of
    another recipe are refused; a copy of the manifest elsewhere is the same recipe, as for an unfinished run; an
    index an earlier earful wrote records no recipe, and there the manifest's path must be the same)."""
    out = Path(out)
    recipe = {**(recipe or {}), "shard_bytes": shard_bytes, "skip_bad": skip_bad}
    if (out / INDEX).exists():
        if resume:  # finished (or killed after its index was written, its progress files left: finished too)
            try:
                index = json.loads((out / INDEX).read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                index = None
            if not isinstance(index, dict) or index.get("format") != SHARDS_FORMAT:
                raise ShardError(f"{out / INDEX}: not an index of earful shard's (corrupt, of another format or "
                                 "another tool's): choose another folder or remove it")
            recorded = index["source"]
            if "recipe" in index and (differ := differences(index["recipe"], recipe)):  # an earlier earful's: none
                raise ShardError(f"{out} holds finished shards of another recipe ({describe(differ)}): choose another "
                                 "folder")
            old = "recipe" not in index  # its manifest's path is all there is to compare
            if old and source and recorded and not recorded_relative(recorded) and recorded != source:
                raise ShardError(f"{out} holds the finished shards of {recorded}, not of {source}: choose "
                                 "another folder")
            leftover = (out / PROGRESS).exists()
            if old and source and recorded_relative(recorded) and not leftover:
                raise ShardError(f"{out} holds the finished shards of {recorded} (as recorded, relative to the folder "
                                 f"`earful shard` ran in), which cannot be told from {source}'s: choose another folder")
            log.info("--resume: %s holds its index: the run had finished%s%s", out,
                     f" (written from {recorded}, whose copy {source} is)" if source and recorded != source else "",
                     "; its progress files are removed" if leftover else "")
            if leftover:
                _forget_progress(out)
            return _summary(index)
        raise ShardError(f"{out} already holds shards ({INDEX}): choose another folder or remove it")
    done = _progress(out, recipe, resume)
    if resume:  # the shard being written when the run stopped (before its first was recorded, too): its own
        for tmp in out.glob(".shard-*.tmp"):
            tmp.unlink()
    if done is None:
        unindexed = sorted(out.glob("shard-*.tar")) + sorted(out.glob(".shard-*.tmp"))
        if unindexed:  # another tool's shards, or an earlier earful's: never mixed with these
            raise ShardError(f"{out} holds {len(unindexed)} shard file(s) and no {INDEX} ({unindexed[0].name} …): "
                             "an `earful shard` that did not finish, or another tool's shards, which a reader of "
                             f"shard-*.tar would take with these; remove them (rm {out}/shard-*.tar "
                             f"{out}/.shard-*.tmp) or choose another folder")
        done = {"rows": 0, "shards": [], "left_out": [], "samples_16k": 0}
        columns = np.zeros((0, len(COLUMNS)), dtype=np.int64)
    else:
        columns = np.concatenate([np.zeros((0, len(COLUMNS)), dtype=np.int64), *(
            np.load(out / PROGRESS_COLUMNS / f"{sh['name']}.npy", allow_pickle=False) for sh in done["shards"])])
        log.info("resuming: %d rows done, %d shards (%d members) kept", done["rows"], len(done["shards"]),
                 len(columns))
    out.mkdir(parents=True, exist_ok=True)
    cols = {c: array("q", columns[:, k].tolist()) for k, c in enumerate(COLUMNS)}  # 8 bytes a number
    shards: list[dict[str, Any]] = list(done["shards"])
    left_out: list[dict[str, str]] = list(done["left_out"])
    samples_16k = int(done["samples_16k"])
    row = int(done["rows"])

    recorded = row  # the row a resume goes on from

    def finished() -> None:  # a shard is whole (before this row's entry): what a resume needs to go on after it
        nonlocal recorded
        members = len(cols["offset"])
        first = members - shards[-1]["members"]
        mine = np.stack([np.frombuffer(cols[c], dtype=np.int64)[first:members] for c in COLUMNS], axis=1)
        (out / PROGRESS_COLUMNS).mkdir(exist_ok=True)
        atomic_save_npy(out / PROGRESS_COLUMNS / f"{shards[-1]['name']}.npy", mine)
        atomic_write_json(out / PROGRESS, {
            "format": SHARDS_FORMAT, "recipe": recipe, "rows": row, "shards": shards, "left_out": left_out,
            "samples_16k": samples_16k})  # fmt: skip
        recorded = row

    writer = _ShardWriter(out, shard_bytes, shards, finished)
    items = ordered_map(encode_member, itertools.islice(iter(utts), row, None), workers)
    try:
        for utt, (flac, problem) in tqdm(items, total=total, initial=row, unit="row", desc="shards",
                                         mininterval=2.0):
            if problem is not None:
                bad = {"id": utt.id, **({} if line_of is None else {"line": line_of(row)}), "problem": problem}
                if not skip_bad:
                    raise BadRow(f"{_row_name(source, bad)}: {problem}: fix the manifest (or the file), or add "
                                 "--skip-bad to leave such rows out (they are listed in the index)")
                log.warning("left out %s: %s", _row_name(source, bad), problem)
                left_out.append(bad)
                row += 1
                continue
            member = len(cols["offset"])
            key = key_of(member)
            entry = _tar_entry(f"{key}.flac", flac) + _tar_entry(f"{key}.json", _member_json(utt))
            if writer.full(entry):
                writer.finish()  # the shard before this row's, recorded as done (rows before this one)
            offset = writer.add(entry)
            for c, v in zip(COLUMNS, (offset, len(entry), utt.num_samples, utt.sample_rate), strict=True):
                cols[c].append(v)
            samples_16k += utt.samples_at(SAMPLE_RATE)
            row += 1
        if not len(cols["offset"]):
            raise BadRow(f"no row could be written: all {len(left_out)} were left out (the first: "
                         f"{_row_name(source, left_out[0])}: {left_out[0]['problem']})"
                         if left_out else "no row to write")
        writer.close()
    except BadRow:  # the manifest (so the recipe) must change: no shard is left without its index
        items.close()  # its worker processes end now
        writer.abandon()
        for shard in shards:
            (out / shard["name"]).unlink(missing_ok=True)
        _forget_progress(out)
        raise
    except BaseException:  # Ctrl-C, a full disk, a crash: the finished shards stay, for --resume
        items.close()
        writer.abandon()
        if shards:
            log.warning("stopped; the %d shard(s) finished stay (rows 0 to %d): run again with --resume to go on "
                        "after them", len(shards), recorded - 1)
        else:
            log.warning("stopped before a shard was finished: run again (with or without --resume)")
        raise
    index = {"format": SHARDS_FORMAT, "source": source, "recipe": recipe, "members": len(cols["offset"]),
             "hours": samples_16k / SAMPLE_RATE / 3600, "shards": shards, "left_out": left_out}
    with finishing():  # every shard is written: what is left takes milliseconds, and must all happen
        (out / "index").mkdir(exist_ok=True)
        for c in COLUMNS:
            atomic_save_npy(out / "index" / f"{c}.npy", np.frombuffer(cols[c], dtype=np.int64).astype(
                np.int32 if c == "sample_rate" else np.int64))
        atomic_write_json(out / INDEX, index)
        _forget_progress(out)
    return _summary(index)


def _summary(index: dict[str, Any]) -> ShardSummary:
    """What an index holds, as ``write_shards`` returns it."""
    shards, left_out = index["shards"], index["left_out"]
    return ShardSummary(len(shards), index["members"], index["hours"], sum(s["bytes"] for s in shards),
                        [f"{_row_name(index['source'], r)}: {r['problem']}" for r in left_out])


def recorded_relative(source: str) -> bool:
    """Whether an index's ``source`` is a path relative to where `earful shard` ran, as indexes recorded it before
    it was recorded absolute: messages quote it as recorded (it is not rewritten: the index's SHA-256 is in the
    recipe of every run pre-trained from it)."""
    return bool(source) and not Path(source).is_absolute()


def _row_name(source: str, row: dict[str, Any]) -> str:
    """A manifest row (a ``left_out`` entry) as messages name it: ``MANIFEST:LINE (id ID)``, or what is known."""
    where = f"{source}:{row['line']}" if source and "line" in row else source
    recorded = ", the manifest's path as recorded" if recorded_relative(source) else ""
    return f"{where} (id {row['id']}{recorded})" if where else f"id {row['id']}"


def _forget_progress(out: Path) -> None:
    (out / PROGRESS).unlink(missing_ok=True)
    shutil.rmtree(out / PROGRESS_COLUMNS, ignore_errors=True)


def _progress(out: Path, recipe: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The finished part of a stopped run in ``out`` to continue (``resume``), or None where there is none; a
    ShardError where one is there and ``resume`` is off, or it was written with another recipe, or a shard it
    lists is missing or of another size."""
    path = out / PROGRESS
    if not path.exists():
        if resume:
            log.warning("--resume: %s holds no stopped run (no %s): starting from the first row", out, PROGRESS)
        return None
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable ({e}); remove {out} and write the shards again") from None
    rows = done.get("rows", "?")
    if not resume:
        raise ShardError(f"{out}: an earlier run stopped after {rows} rows ({len(done.get('shards', []))} shards "
                         "written): --resume continues it; or remove the folder, or choose another")
    if done.get("format") != SHARDS_FORMAT or done.get("recipe") != recipe:
        raise ShardError(f"{out}: the stopped run wrote its shards with another recipe "
                         f"({describe(differences(done.get('recipe', {}), recipe)) or 'format'}): resume with its "
                         "manifest and options, or remove the folder")
    for sh in done["shards"]:
        size = (out / sh["name"]).stat().st_size if (out / sh["name"]).exists() else None
        if not (out / PROGRESS_COLUMNS / f"{sh['name']}.npy").is_file():
            size = None
        if size != sh["bytes"]:
            raise ShardError(f"{out / sh['name']}: {'missing' if size is None else f'{size} bytes'}, the stopped "
                             f"run wrote {sh['bytes']}: remove {out} and write the shards again")
    return done


class _ShardWriter:
    """Appends tar entries to the current shard (a temporary file) and starts a new one past ``shard_bytes``."""

    def __init__(self, out: Path, shard_bytes: int, shards: list[dict[str, Any]],
                 finished: Callable[[], None] = lambda: None) -> None:
        self.out, self.limit, self.shards, self.finished = out, shard_bytes, shards, finished
        self.file: IO[bytes] | None = None
        self.ctx: Any = None

    def full(self, entry: bytes) -> bool:
        """Whether ``entry`` would take the current shard past its size (a shard holds one entry at least)."""
        return self.file is not None and self.size + len(entry) + 2 * BLOCK > self.limit and self.members > 0

    def finish(self) -> None:
        """End the current shard (renamed into place) and tell ``finished``."""
        self._finish()
        self.finished()

    def add(self, entry: bytes) -> int:
        if self.file is None:
            self.name = f"shard-{len(self.shards):06d}.tar"
            self.ctx = atomic_path(self.out / self.name)
            self.file = open(self.ctx.__enter__(), "wb")  # noqa: SIM115 - closed in _finish
            self.size, self.members, self.digest = 0, 0, hashlib.sha256()
        offset = self.size
        self.file.write(entry)
        self.digest.update(entry)
        self.size += len(entry)
        self.members += 1
        return offset

    def _finish(self) -> None:
        assert self.file is not None
        end = b"\0" * (2 * BLOCK)  # the end-of-archive marker
        self.file.write(end)
        self.digest.update(end)
        self.file.close()
        self.ctx.__exit__(None, None, None)  # renamed into place
        self.shards.append({"name": self.name, "bytes": self.size + len(end), "members": self.members,
                            "sha256": self.digest.hexdigest()})
        self.file = None

    def close(self) -> None:
        if self.file is not None:
            self._finish()  # the last shard: the index follows

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()
            self.ctx.__exit__(ShardError, None, None)  # the temporary file is removed
            self.file = None


# ---------------------------------------------------------------------------------------------- reading


def open_location(location: str) -> IO[bytes]:
    """A local file, or (with fsspec) a URL, opened for reading bytes."""
    if "://" not in location:
        return open(location, "rb")  # noqa: SIM115
    try:
        import fsspec
    except ImportError:
        raise ShardError(f"{location}: reading shards from a URL needs fsspec (pip install fsspec, or "
                         "earful[remote])") from None
    return fsspec.open(location, "rb").open()


def _join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}" if "://" in location else str(Path(location) / name)


class ShardIndex:
    """The index of a shard folder (a path or fsspec URL of ``OUT`` or ``OUT/index.json``): the shards and one
    column entry a member. ``lengths()`` gives each member's length at ``SAMPLE_RATE`` (what the sampler needs)."""

    def __init__(self, location: str | os.PathLike) -> None:
        location = str(location)
        if location.endswith(INDEX):
            location = location[: -len(INDEX)].rstrip("/") or "."
        self.location = location
        where = _join(location, INDEX)
        try:
            with open_location(where) as f:
                raw = f.read()
        except FileNotFoundError:
            raise ShardError(f"{where}: no shard index (write one with `earful shard MANIFEST OUT`)") from None
        except NotADirectoryError:  # a file given for the folder: "[Errno 20] Not a directory: 'M.jsonl/index.json'"
            raise ShardError(f"{location}: a file, not a folder of shards (`earful shard MANIFEST OUT` writes one); "
                             "a manifest trains with data.train=") from None
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{where}: corrupt index ({e}); write the shards again") from None
        if not isinstance(meta, dict) or meta.get("format") != SHARDS_FORMAT:
            raise ShardError(f"{where}: not an index of format {SHARDS_FORMAT} (found "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r}); write the shards again")
        self.digest = hashlib.sha256(raw).hexdigest()
        self.shards: list[dict[str, Any]] = meta["shards"]
        self.left_out: list[dict[str, Any]] = meta.get("left_out", [])  # id, line (in "source"), problem
        self.first = np.concatenate([[0], np.cumsum([s["members"] for s in self.shards])]).astype(np.int64)
        self.columns = {c: self._column(c) for c in COLUMNS}
        counts = {c: len(v) for c, v in self.columns.items()}
        if set(counts.values()) != {int(self.first[-1])} or meta["members"] != self.first[-1]:
            raise ShardError(f"{where}: the index's columns {counts} do not match its {meta['members']} members; "
                             "write the shards again")

    def _column(self, name: str) -> np.ndarray:
        where = _join(_join(self.location, "index"), f"{name}.npy")
        try:
            if "://" not in where:
                return np.load(where, mmap_mode="r", allow_pickle=False)
            with open_location(where) as f:
                return np.load(io.BytesIO(f.read()), allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise ShardError(f"{where}: missing or corrupt index column ({e}); write the shards again") from None

    def __len__(self) -> int:
        return int(self.first[-1])

    def lengths(self) -> np.ndarray:
        """(members,) int64: each member's length in samples at ``SAMPLE_RATE``."""
        n = np.asarray(self.columns["num_samples"], dtype=np.int64)
        rate = np.asarray(self.columns["sample_rate"], dtype=np.int64)
        other = rate != SAMPLE_RATE
        if not other.any():
            return n
        out = n.copy()
        out[other] = np.round(n[other] * SAMPLE_RATE / rate[other]).astype(np.int64)
        return out

    def shard_of(self, member: np.ndarray | int) -> np.ndarray:
        return np.searchsorted(self.first, member, side="right") - 1

    def member_name(self, member: int) -> str:
        """``SHARD.tar:KEY``: a member named without reading it (its json holds its id)."""
        return f"{self.shards[int(self.shard_of(member))]['name']}:{key_of(member)}"

    def member_ids(self, members: Sequence[int]) -> list[str]:
        """``ID (SHARD.tar:KEY)`` of each member, its manifest id read from its json (a few, for a message: one
        read each), or ``SHARD.tar:KEY`` alone where it cannot be read."""
        out = []
        for member in members:
            name = self.member_name(member)
            try:
                with open_location(self.path(int(self.shard_of(member)))) as f:
                    out.append(f"{read_member(f, self, member)[1]['id']} ({name})")
            except (OSError, ShardError, KeyError):
                out.append(name)
        return out

    def path(self, shard: int) -> str:
        return _join(self.location, self.shards[shard]["name"])

    def problems(self) -> list[str]:
        """Shards that are missing or whose size is not the index's (checked without reading them)."""
        found = []
        for k, s in enumerate(self.shards):
            where = self.path(k)
            try:
                if "://" in where:
                    import fsspec

                    size = fsspec.open(where).fs.size(where)
                else:
                    size = os.path.getsize(where)
            except (FileNotFoundError, OSError):
                found.append(f"{where}: missing shard ({s['members']} members)")
                continue
            if size != s["bytes"]:
                what = "truncated" if size < s["bytes"] else "longer than the index says"
                found.append(f"{where}: {what} ({size} bytes, the index says {s['bytes']})")
        return found


class Member(io.BytesIO):
    """A member's audio in memory; ``str()`` names it (``SHARD.tar:KEY.flac``) for messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


def read_member(f: IO[bytes], index: ShardIndex, member: int) -> tuple[Member, dict[str, Any]]:
    """Member ``member``'s audio and json from its open shard ``f``. Raises ShardError when the bytes at its
    offset are not the entries the index records (names, sizes, tar checksums), or its json disagrees."""
    shard = int(index.shard_of(member))
    key = key_of(member)
    offset, span = int(index.columns["offset"][member]), int(index.columns["span"][member])
    where = f"{index.path(shard)}: member {key}"
    way_out = "the shard or its index was changed or damaged after `earful shard` wrote them: write the shards again"
    f.seek(offset)
    raw = f.read(span)
    if len(raw) < span:
        raise ShardError(f"{where}: truncated shard ({len(raw)} of the member's {span} bytes at byte {offset}); "
                         f"{way_out}")
    parts = []
    at = 0
    for ext in ("flac", "json"):
        try:
            info = tarfile.TarInfo.frombuf(raw[at : at + BLOCK], "utf-8", "strict")
        except tarfile.HeaderError as e:
            raise ShardError(f"{where}: corrupt tar header at byte {offset + at} ({e}); {way_out}") from None
        if info.name != f"{key}.{ext}":
            raise ShardError(f"{where}: found {info.name!r} at byte {offset + at} where the index has "
                             f"'{key}.{ext}'; {way_out}")
        parts.append(raw[at + BLOCK : at + BLOCK + info.size])
        at += BLOCK + _padded(info.size)
    if at != span:
        raise ShardError(f"{where}: its entries span {at} bytes, the index says {span}; {way_out}")
    try:
        meta = json.loads(parts[1])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{where}: corrupt {key}.json ({e}); {way_out}") from None
    n, rate = int(index.columns["num_samples"][member]), int(index.columns["sample_rate"][member])
    if meta.get("num_samples") != n or meta.get("sample_rate") != rate:
        raise ShardError(f"{where}: its json says {meta.get('num_samples')} samples at {meta.get('sample_rate')} Hz, "
                         f"the index {n} at {rate}; {way_out}")
    return Member(parts[0], f"{index.path(shard)}:{key}.flac"), meta


def member_utterance(meta: dict[str, Any], audio: Member) -> Utterance:
    """A member as an utterance whose audio is the whole member (a segment's window is all it holds)."""
    return Utterance(meta["id"], str(audio), meta["num_samples"], meta["sample_rate"], meta.get("speaker", ""),
                     meta.get("transcript"), phonemes=meta.get("phonemes"), intent=meta.get("intent"))


def shard_rows(utts: Manifest, seed: int | None) -> tuple[Iterable[Utterance], Callable[[int], int]]:
    """The rows in the manifest's order, or shuffled by ``seed`` (better mixed batches from a sequential read),
    and the manifest line of the k-th of them (``write_shards``'s ``line_of``, naming a bad row)."""
    if seed is None:
        return utts, utts.line
    order = np.random.default_rng(seed).permutation(len(utts))
    return (utts[int(i)] for i in order), lambda k: utts.line(int(order[k]))
