"""Files that appear whole or not at all: written to a temporary file beside their final path, flushed
to disk, then renamed over it, and the rename flushed too (the folder). A crash or a full disk mid-write
leaves the previous file (or none), never a truncated one. Checkpoints, manifests, configs, reports and
results all go through here. A checkpoint folder is filled under a temporary name beside its place and renamed
into it (:func:`replace_folder`); an output folder a user names gets new contents file by file
(:func:`atomic_folder`)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import IO, Any

from earful.lock import LOCK_FILE, running


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


def _flush(tmp: Path) -> None:
    """``tmp``'s contents to the disk, with the mode open() gives a new file: a writer that replaced the temporary
    path with a file of its own (safetensors' save_file renames its own temporary onto it) left that file's mode,
    0600, and every model.safetensors unreadable to anyone else."""
    os.chmod(tmp, _FILE_MODE)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())


def _fsync_replace(tmp: Path, path: Path) -> None:
    _flush(tmp)
    os.replace(tmp, path)
    _fsync_folder(path.parent)  # the rename itself reaches the disk (a power cut keeps it)


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
def atomic_paths(paths: Iterable[str | os.PathLike],
                 replacing: Callable[[], AbstractContextManager[Any]] = nullcontext) -> Iterator[dict[Path, Path]]:
    """Temporary paths for files that appear together: a ``{path: temporary path}`` to write them all to, flushed
    to disk and renamed into place one after another when the block ends without an error, ``replacing()`` around
    the renames alone (milliseconds: a caller that must not be stopped between two renames holds its signals
    there); removed in any case. An error or a stop while they are written leaves every earlier file as it was."""
    finals = list(dict.fromkeys(Path(p) for p in paths))  # a path named twice is one file
    for path in finals:  # a rename onto a folder fails: found now, not between two renames
        if path.is_dir():
            raise IsADirectoryError(f"{path}: a folder stands where this file is to be written; move it away")
    tmps: dict[Path, Path] = {}
    try:
        for path in finals:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmps[path] = _tmp_path(path)
        yield tmps
        for tmp in tmps.values():  # the slow part, before the renames: a file's contents reach the disk
            _flush(tmp)
        with replacing():
            for path, tmp in tmps.items():
                os.replace(tmp, path)
            for folder in dict.fromkeys(path.parent for path in tmps):
                _fsync_folder(folder)
    finally:
        _remove_all(list(tmps.values()))


def _remove_all(tmps: list[Path]) -> None:
    """Remove every one of ``tmps``, even where an exception (a stop signal's) interrupts one removal: the others
    still go, then it is raised."""
    pending: BaseException | None = None
    for tmp in tmps:
        try:
            tmp.unlink(missing_ok=True)
        except BaseException as e:  # noqa: BLE001 - raised once every temporary is gone
            pending = pending or e
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
    if pending is not None:
        raise pending


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


def atomic_save_npy(path: str | os.PathLike, array: Any) -> None:
    """``array`` as a .npy file (what ``np.load`` reads), whole or absent. Not ``np.save`` into the open file:
    numpy's ``tofile`` turns an exception a signal handler raises during its ``isinstance(f, os.PathLike)`` into
    "TypeError: expected str, bytes or os.PathLike object, not BufferedWriter" (`earful shard` stopped by SIGTERM
    there exited 1 with a traceback, not 4). The header and the array's own buffer are written as they are (no
    copy of a large array)."""
    import numpy as np

    a = np.asarray(array, order="C")  # not ascontiguousarray, which makes a 0-d array 1-d
    if a.dtype.hasobject:
        raise TypeError(f"{path}: an array of Python objects cannot be saved without pickling")
    with atomic_open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(a))
        f.write(a.data)


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


def _fsync_folder(path: Path) -> None:
    folder = os.open(path, os.O_RDONLY)  # its renames reach the disk (a power cut keeps them)
    try:
        os.fsync(folder)
    except OSError as e:  # some network and FUSE file systems cannot flush a folder: the renames stand
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(folder)


FOLDER_TMP = ".tmp-"  # atomic_folder's temporary folder inside the folder it fills: .tmp-PID


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """New contents for the folder ``path`` (made if need be), filled in a temporary folder inside it
    (``.tmp-PID``) and moved into place when the block ends without an error: each file by an atomic rename, then
    what the earlier contents hold and the new ones lack is removed. A refused or failed fill leaves the earlier
    contents as they were. The folder itself stays, so a link to it, a mount point (a container's volume), its
    mode and group are kept, and so does its lock (``.lock``: removed, it let another process in). A kill while
    the files move (a few renames) can leave old and new files side by side, which the next run replaces; the
    ``.tmp-`` folders of processes that no longer run are removed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for left in path.glob(f"{FOLDER_TMP}*"):
        pid = left.name[len(FOLDER_TMP):]
        if not (pid.isdigit() and running(int(pid))):
            shutil.rmtree(left, ignore_errors=True)
    tmp = path / f"{FOLDER_TMP}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        new = sorted(p.name for p in tmp.iterdir())
        for name in new:
            os.replace(tmp / name, path / name)
        for old in path.iterdir():
            if old.name not in new and not old.name.startswith(FOLDER_TMP) and old.name != LOCK_FILE:
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                else:
                    old.unlink()
        _fsync_folder(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
