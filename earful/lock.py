"""One writer per folder: an exclusive lock (``flock``) held for as long as a process works in it.

A study folder and a run folder each admit one ``earful`` process at a time: two writers would interleave
logs and overwrite each other's checkpoints. The lock file names the holder's pid, so the second process is
refused with a message saying who has it; the lock goes with the process (even a killed one: forked children,
such as DataLoader workers, do not keep it)."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


LOCK_FILE = ".lock"  # a folder's lock: a run's, a study's, a cache entry's; removed with its folder (lock_file
#                       takes the one there now where its holder removed it meanwhile)
_HELD: list[IO[str]] = []  # this process's lock files


def _not_in_children() -> None:
    """In a forked child (a DataLoader worker, a pool's process): its copies of the lock files point at
    /dev/null. A ``flock`` belongs to the open file, which a fork shares: a killed trainer's folder stayed
    locked, naming the dead pid, until its orphaned workers had noticed and ended (about 5 s)."""
    held = [f for f in _HELD if not f.closed]
    if held:
        null = os.open(os.devnull, os.O_RDWR)
        for f in held:
            os.dup2(null, f.fileno(), inheritable=False)  # the fd stays valid (a later close works); the lock's
            # file is let go, and like the file it replaces it is not passed on to a program the child executes
        os.close(null)
    _HELD.clear()


os.register_at_fork(after_in_child=_not_in_children)


def lock_file(path: Path, *, shared: bool = False, wait: bool = True) -> IO[str]:
    """``path`` opened for appending (made, with its folder, if need be) and locked with ``flock``: shared or
    exclusive, waiting for it or (``wait`` False) raising BlockingIOError where another process holds it. The lock
    is on the file at ``path`` now: one taken on a file its holder removed meanwhile (a failed start removes the
    lock file it made, ``earful cache remove`` a cache entry's) is let go and taken on the file there now, for a
    lock on a removed file keeps no one out. A forked child (a DataLoader worker) does not keep the lock."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - the caller's to close
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BaseException:
            f.close()
            raise
        if still_there(f, path):
            _HELD[:] = [*(h for h in _HELD if not h.closed), f]  # a forked child lets go of it (_not_in_children)
            return f
        f.close()


def hold_folder(folder: str | Path, what: str = "earful run") -> IO[str]:
    """An exclusive lock on ``folder`` (created if need be) for as long as the returned file stays open."""
    folder = Path(folder)
    try:
        f = lock_file(folder / LOCK_FILE, wait=False)
    except BlockingIOError:
        pid, host = holder(folder) or (None, "")
        raise FolderBusy(f"{folder}: another {what} is running in this folder (pid {pid or '?'}"
                         f"{f' on {host}' if host else ''}); wait for it or stop it, then run again") from None
    f.truncate(0)
    f.write(f"{os.getpid()} {socket.gethostname()}")  # who holds it, for a user and for ``held``
    f.flush()
    return f


@contextmanager
def holding(folder: str | Path, what: str = "earful run") -> Iterator[IO[str]]:
    """:func:`hold_folder` for a ``with`` block, whose folder keeps no lock file after it (one left by a killed
    holder included); a block that fails (a refused start) removes the folder too where it made it and nothing
    else was written there."""
    folder = Path(folder)
    created = not folder.exists()
    f = hold_folder(folder, what)
    failed = False
    try:
        yield f
    except BaseException:
        failed = True
        raise
    finally:
        # removed while held: after letting go it may be another process's (as the trainer's)
        (folder / LOCK_FILE).unlink(missing_ok=True)
        f.close()
        if failed and created:
            with suppress(OSError):
                folder.rmdir()


def still_there(f: IO[str], path: Path) -> bool:
    """Whether the open file ``f`` is the one at ``path`` (not one removed since it was opened)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _parse(text: str) -> tuple[int | None, str]:
    """(pid, host) of a lock file's text; the host "" where it names none (an earlier earful's: the pid alone)."""
    pid, _, host = text.strip().partition(" ")
    return (int(pid) if pid.isdigit() else None), host.strip()


def holder(folder: str | Path) -> tuple[int | None, str] | None:
    """(pid, host) of the process that last took ``folder``'s lock (running or not); None where none ever has."""
    try:
        return _parse((Path(folder) / LOCK_FILE).read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None


def running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def held(folder: str | Path) -> bool | None:
    """Whether a process holds ``folder``'s lock now, without taking it (a trainer starting meanwhile must not be
    refused): on Linux, whether its holder holds a lock of that file (``/proc/locks``), elsewhere whether its
    holder runs. None where this machine cannot tell: its holder is on another host (a cluster's node)."""
    lock = Path(folder) / LOCK_FILE
    who = holder(folder)
    if who is None or who[0] is None:
        return False
    pid, host = who
    if host and host != socket.gethostname():
        return None
    try:
        locks = Path("/proc/locks").read_text(encoding="ascii", errors="replace").splitlines()
        inode = lock.stat().st_ino
    except OSError:
        return running(pid)
    # "1: FLOCK  ADVISORY  WRITE PID MAJOR:MINOR:INODE 0 EOF": the pid and the inode (its device numbers may be
    # another layer's in a container)
    return any(len(f) > 5 and f[1] == "FLOCK" and f[4] == str(pid) and f[5].rsplit(":", 1)[-1] == str(inode)
               for f in (line.split() for line in locks))
