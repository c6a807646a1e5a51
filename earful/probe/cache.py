"""The earful cache on disk (``earful cache list|remove``): the probes' features and the transformers models
``probe`` and ``features`` imported, what each entry holds, how large it is, when it was last used, and removing
entries by those.

A features entry is a folder ``FEATURES/<key>/`` (earful.probe.features); its ``index.json`` names the upstream
and the manifest it was extracted for, and a probe that reads the entry touches the index, so its modification
time is the entry's last use. A folder without a readable index is *incomplete* (a probe stopped between its two
writes, or a file damaged): it is never read, only extracted again under the same key.

An import is a folder ``IMPORTS/<digest>/`` beside it (earful.interop.hub.imported_checkpoint), the sibling
``imports`` of the features folder: an earful checkpoint and its ``source.json``, which names what it was imported
from and is touched at each use (an import of an earlier earful has none: its source is not known, its last write
stands for its use). One without its weights or ``model.json`` is incomplete, imported again when next used.
Either is written under its lock (``.lock``), which ``remove`` takes or leaves the entry alone.
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
from typing import Literal

from earful.atomic import FOLDER_TMP
from earful.interop.hf import IMPORT_FILES
from earful.interop.hub import SOURCE_FILE, complete, import_sources, imports_folder
from earful.lock import LOCK_FILE, still_there
from earful.probe.features import CACHE_FORMAT, FEATURES_FILE, INDEX_FILE

log = logging.getLogger(__name__)

DAY = 86400.0
Kind = Literal["features", "import"]
_FILES: dict[Kind, tuple[str, ...]] = {"features": (FEATURES_FILE, INDEX_FILE, LOCK_FILE),
                                       "import": (*IMPORT_FILES, SOURCE_FILE, LOCK_FILE)}


@dataclass(frozen=True)
class Entry:
    """One cache entry: its folder, bytes on disk, last use (seconds since the epoch) and, from its index, the
    upstream, manifest and number of utterances (``complete`` False: no readable index, those are empty); an
    import (``kind``) has for upstream what it was imported from ("" where not recorded)."""

    path: Path
    size: int
    used: float
    complete: bool
    upstream: str = ""
    manifest: str = ""
    utterances: int = 0
    format: str = CACHE_FORMAT
    kind: Kind = "features"

    @property
    def current(self) -> bool:
        """Written by this version of earful (an older format of features is never read again)."""
        return self.complete and (self.kind == "import" or self.format == CACHE_FORMAT)

    @property
    def about(self) -> str:
        """What it holds, in a few words (the listing's and the removal's)."""
        if not self.complete:
            return ("incomplete: never read; `earful cache remove --incomplete`" if self.kind == "features" else
                    "incomplete import: imported again when used; `earful cache remove --incomplete`")
        if self.kind == "import":
            return f"import of {self.upstream or '? (not recorded by the earful that imported it)'}"
        return f"{self.upstream} → {self.manifest}" + ("" if self.current else f" (older format {self.format})")


def folders(cache_dir: str | os.PathLike) -> dict[Kind, Path]:
    """The features folder ``cache_dir`` and the imports beside it, its sibling ``imports``, by kind."""
    return {"features": Path(cache_dir), "import": imports_folder(cache_dir)}


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _last_write(folder: Path) -> float:
    return max((f.stat().st_mtime for f in folder.rglob("*") if f.is_file()), default=folder.stat().st_mtime)


KEY = re.compile(r"[0-9a-f]{64}")  # an entry's name: its key or digest, a SHA-256


def is_entry(path: Path, kind: Kind = "features") -> bool:
    """Whether ``path`` is a cache entry's folder of ``kind``: named by a key, holding nothing but the entry's
    files (and their temporary files and folders). Anything else in a cache folder (a mistyped ``--cache``) is
    never listed or removed."""
    if not (path.is_dir() and not path.is_symlink() and KEY.fullmatch(path.name)):
        return False
    return all(f.name in _FILES[kind] or (f.name.startswith(".") and f.name.endswith(".tmp"))
               or (kind == "import" and f.name.startswith(FOLDER_TMP)) for f in path.iterdir())


def others(cache_dir: str | os.PathLike, kind: Kind = "features") -> list[Path]:
    """What ``cache_dir`` holds besides cache entries of ``kind`` (left alone)."""
    root = Path(cache_dir)
    return sorted(p for p in root.iterdir() if not is_entry(p, kind)) if root.is_dir() else []


def entries(cache_dir: str | os.PathLike, kind: Kind = "features") -> Iterator[Entry]:
    """Every entry of ``kind`` in ``cache_dir`` (none if it does not exist), by name."""
    root = Path(cache_dir)
    if not root.is_dir():
        return
    for folder in sorted(p for p in root.iterdir() if is_entry(p, kind)):
        if kind == "import":
            yield _import(folder)
            continue
        index_path = folder / INDEX_FILE
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            yield Entry(folder, _size(folder), index_path.stat().st_mtime, True, str(index.get("upstream", "?")),
                        str(index.get("manifest", "?")), len(index.get("ids", ())), str(index.get("format", "?")))
        except (OSError, ValueError, TypeError, AttributeError):
            yield Entry(folder, _size(folder), _last_write(folder), False)


def _import(folder: Path) -> Entry:
    """An import's entry: its sources (the last used first) and last use from ``source.json``, else (an earlier
    earful's) unknown and its last write."""
    sources = import_sources(folder)
    used = (folder / SOURCE_FILE).stat().st_mtime if sources else _last_write(folder)
    return Entry(folder, _size(folder), used, complete(folder), ", ".join(reversed(sources)), kind="import")


def scan(cache_dir: str | os.PathLike) -> tuple[list[Entry], dict[Kind, Path]]:
    """Every entry of the feature cache ``cache_dir`` and of the imports beside it, and those two folders; what
    else each holds is warned of (never listed or removed: a mistyped ``--cache``)."""
    found: list[Entry] = []
    where = folders(cache_dir)
    for kind, folder in where.items():
        found += entries(folder, kind)
        if other := others(folder, kind):
            log.warning("%s also holds %d item(s) that are no cache entries (%s …): never listed or removed; is it "
                        "the cache?", folder, len(other), other[0].name)
    return found, where


def select(found: list[Entry], *, older_than_days: float | None = None, upstream: str | None = None,
           incomplete: bool = False) -> list[Entry]:
    """The entries meeting every criterion given: unused for more than ``older_than_days``, an upstream naming
    ``upstream`` (a substring of its path, or 'fbank'; of an import's source, ``ORG/NAME@COMMIT`` or its folder), or
    (``incomplete``) unreadable or of an older format."""
    now = time.time()
    chosen = found
    if older_than_days is not None:
        chosen = [e for e in chosen if now - e.used > older_than_days * DAY]
    if upstream is not None:
        chosen = [e for e in chosen if upstream in e.upstream]
    if incomplete:
        chosen = [e for e in chosen if not e.current]
    return chosen


def remove(chosen: list[Entry]) -> tuple[int, list[Entry], list[Entry]]:
    """Remove the entries but those being written now (their lock held: a probe's, ``features.writing``, or an
    import's), which are left alone and said; the bytes freed, the entries removed and those left. One another
    process removed meanwhile (another ``cache remove``) is neither."""
    freed, removed, busy = 0, [], []
    for e in chosen:
        try:
            lock = open(e.path / LOCK_FILE, "a")  # noqa: SIM115 - held while the folder goes
        except FileNotFoundError:  # removed meanwhile
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("%s: %s writing it now; left alone", e.path,
                            "a probe is" if e.kind == "features" else "an import is")
                busy.append(e)
                continue
            if not still_there(lock, e.path / LOCK_FILE):  # removed meanwhile, between the open and the lock (the
                continue  # folder there now, if any, another's: an import made again)
            try:
                shutil.rmtree(e.path)
            except FileNotFoundError:  # removed meanwhile
                continue
        freed += e.size
        removed.append(e)
        log.info("removed %s (%s, %s)", e.path, e.about, human(e.size))
    return freed, removed, busy


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def table(found: list[Entry]) -> list[str]:
    """A text table of the entries, the oldest use first, and a total."""
    now = time.time()
    rows = [f"{'entry':12}  {'kind':8}  {'size':>9}  {'unused':>8}  {'utts':>6}  upstream → manifest, or import of"]
    for e in sorted(found, key=lambda e: e.used):
        utts = f"{e.utterances:6d}" if e.kind == "features" else f"{'':6}"
        rows.append(f"{e.path.name[:12]:12}  {e.kind:8}  {human(e.size):>9}  {(now - e.used) / DAY:7.1f}d  {utts}  "
                    f"{e.about}")
    rows.append(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, {human(sum(e.size for e in found))}")
    return rows
