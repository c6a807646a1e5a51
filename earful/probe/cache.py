"""The feature cache on disk (``earful cache list|remove``): what each entry holds, how large it is, when a
probe last read it, and removing entries by those.

An entry is a folder ``CACHE/<key>/`` (earful.probe.features); its ``index.json`` names the upstream and the
manifest it was extracted for, and a probe that reads the entry touches the index, so its modification time is
the entry's last use. A folder without a readable index is *incomplete* (a probe stopped between its two writes,
or a file damaged): it is never read, only extracted again under the same key.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from earful.probe.features import CACHE_FORMAT, FEATURES_FILE, INDEX_FILE, LOCK_FILE

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True)
class Entry:
    """One cache entry: its folder, bytes on disk, last use (seconds since the epoch) and, from its index, the
    upstream, manifest and number of utterances (``complete`` False: no readable index, those are empty)."""

    path: Path
    size: int
    used: float
    complete: bool
    upstream: str = ""
    manifest: str = ""
    utterances: int = 0
    format: str = CACHE_FORMAT

    @property
    def current(self) -> bool:
        """Written by this version of earful (an older format is never read again)."""
        return self.complete and self.format == CACHE_FORMAT


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


KEY = re.compile(r"[0-9a-f]{64}")  # an entry's name: its key, a SHA-256 (earful.probe.features.cache_key)


def is_entry(path: Path) -> bool:
    """Whether ``path`` is a cache entry's folder: named by a key, holding nothing but the entry's files (and
    their temporary files). Anything else in a cache folder (a mistyped ``--cache``) is never listed or removed."""
    if not (path.is_dir() and not path.is_symlink() and KEY.fullmatch(path.name)):
        return False
    return all(f.name in (FEATURES_FILE, INDEX_FILE, LOCK_FILE) or (f.name.startswith(".") and f.name.endswith(".tmp"))
               for f in path.iterdir())


def others(cache_dir: str | os.PathLike) -> list[Path]:
    """What ``cache_dir`` holds besides cache entries (left alone)."""
    root = Path(cache_dir)
    return sorted(p for p in root.iterdir() if not is_entry(p)) if root.is_dir() else []


def entries(cache_dir: str | os.PathLike) -> Iterator[Entry]:
    """Every entry of ``cache_dir`` (none if it does not exist), by name."""
    root = Path(cache_dir)
    if not root.is_dir():
        return
    for folder in sorted(p for p in root.iterdir() if is_entry(p)):
        index_path = folder / INDEX_FILE
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            yield Entry(folder, _size(folder), index_path.stat().st_mtime, True, str(index.get("upstream", "?")),
                        str(index.get("manifest", "?")), len(index.get("ids", ())), str(index.get("format", "?")))
        except (OSError, ValueError, TypeError, AttributeError):
            used = max((f.stat().st_mtime for f in folder.rglob("*") if f.is_file()), default=folder.stat().st_mtime)
            yield Entry(folder, _size(folder), used, False)


def select(found: list[Entry], *, older_than_days: float | None = None, upstream: str | None = None,
           incomplete: bool = False, now: float | None = None) -> list[Entry]:
    """The entries meeting every criterion given: unused for more than ``older_than_days``, an upstream naming
    ``upstream`` (a substring of its path, or 'fbank'), or (``incomplete``) unreadable or of an older format."""
    now = time.time() if now is None else now
    chosen = found
    if older_than_days is not None:
        chosen = [e for e in chosen if now - e.used > older_than_days * DAY]
    if upstream is not None:
        chosen = [e for e in chosen if upstream in e.upstream]
    if incomplete:
        chosen = [e for e in chosen if not e.current]
    return chosen


def remove(chosen: list[Entry]) -> tuple[int, list[Entry]]:
    """Remove the entries but those a probe is writing now (their lock held: ``features.writing``), which are
    left alone and said; the bytes freed and the entries left."""
    freed, busy = 0, []
    for e in chosen:
        try:
            lock = open(e.path / LOCK_FILE, "a")  # noqa: SIM115 - held while the folder goes
        except FileNotFoundError:  # removed meanwhile (another `cache remove`)
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("%s: a probe is writing it now; left alone", e.path)
                busy.append(e)
                continue
            shutil.rmtree(e.path)
        freed += e.size
        log.info("removed %s (%s, %s)", e.path, e.upstream or "incomplete", human(e.size))
    return freed, busy


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def table(found: list[Entry], now: float | None = None) -> list[str]:
    """A text table of the entries, the oldest use first, and a total."""
    now = time.time() if now is None else now
    rows = [f"{'entry':12}  {'size':>9}  {'unused':>8}  {'utts':>6}  upstream → manifest"]
    for e in sorted(found, key=lambda e: e.used):
        what = (f"{e.upstream} → {e.manifest}" + ("" if e.current else f" (older format {e.format})")
                if e.complete else "incomplete: never read; `earful cache remove --incomplete`")
        rows.append(f"{e.path.name[:12]:12}  {human(e.size):>9}  {(now - e.used) / DAY:7.1f}d  {e.utterances:6d}  "
                    f"{what}")
    rows.append(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, {human(sum(e.size for e in found))}")
    return rows
