"""Files that appear whole or not at all: written to a temporary file beside their final path, flushed
to disk, then renamed over it, and the rename flushed too (the folder). A crash or a full disk mid-write
leaves the previous file (or none), never a truncated one. Checkpoints, manifests, configs, reports and
results all go through here; a folder (an export, a checkpoint) is filled under a temporary name beside its
place and renamed into it (:func:`atomic_folder`)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file (mkstemp's own is 0600)


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    return Path(name)


def _fsync_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)  # the rename itself reaches the disk (a power cut keeps it)
    try:
        os.fsync(folder)
    except OSError as e:  # some network and FUSE file systems cannot flush a folder: the rename stands
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(folder)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s contents to (for writers that take a file name); it
    replaces ``path`` when the block ends without an error and is removed in any case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        yield tmp
        _fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode, **kwargs)`` for writing, made atomic (see the module's docstring)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a whole file: mode {mode!r} is not a 'w' mode")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """A UTF-8 text file of ``lines``, each ended by a newline (JSONL, transcripts, Markdown)."""
    with atomic_open(path) as f:
        f.writelines(line + "\n" for line in lines)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def replace_folder(tmp: Path, final: Path, old: Path) -> None:
    """Rename the finished folder ``tmp`` into place as ``final``; a folder it replaces is moved aside to ``old``
    first (where a kill between the two renames leaves it, whole), then removed."""
    if final.exists():
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary folder beside ``path`` (``.tmp-NAME-PID``) to fill; it replaces ``path`` (a folder, or
    nothing) when the block ends without an error, and is removed in any case: ``path`` is the old folder or the
    new one, never a mix nor a part."""
    path = Path(os.path.abspath(path))
    if path == Path.cwd() or path in Path.cwd().parents:  # renamed away, the process would stand in a deleted one
        raise ValueError(f"{path}: the working folder (or one above it) cannot be replaced: give a folder in it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    old = path.parent / f".old-{path.name}-{os.getpid()}"
    try:
        yield tmp
        replace_folder(tmp, path, old)
    except OSError:
        if old.exists() and not path.exists():  # the second rename failed: the folder that was there goes back
            os.replace(old, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
