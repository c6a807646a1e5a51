"""One writer per folder: an exclusive lock (``flock``) held for as long as a process works in it.

A study folder and a run folder each admit one ``earful`` process at a time: two writers would interleave
logs and overwrite each other's checkpoints. The lock file names the holder's pid, so the second process is
refused with a message saying who has it; the lock goes with the process (even a killed one: forked children,
such as DataLoader workers, do not keep it)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


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


def hold_folder(folder: str | Path, what: str = "earful run") -> IO[str]:
    """An exclusive lock on ``folder`` (created if need be) for as long as the returned file stays open."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise FolderBusy(f"{folder}: another {what} is running in this folder (pid {holder}); wait for it or "
                         "stop it, then run again") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    _HELD[:] = [*(h for h in _HELD if not h.closed), f]
    return f
