"""Manifests: one JSON object a line (JSONL) per utterance.

Fields: ``id``, ``path``, ``num_samples``, ``sample_rate``, ``speaker`` and, when known, ``transcript``;
for probing, optionally ``phonemes`` (space-separated, :mod:`earful.data.phonemes`) and ``intent`` (slot →
value, e.g. ``{"action": "activate", "object": "light", "location": "kitchen"}``), written only when set.
Relative paths are relative to the manifest's folder (``write_manifest(..., relative_to=root)`` writes them
so for audio under ``root``, which keeps a corpus movable); in memory ``Utterance.path`` is always absolute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from earful.atomic import atomic_open

_REQUIRED = {"id": str, "path": str, "num_samples": int, "sample_rate": int, "speaker": str}
_OPTIONAL = ("phonemes", "intent")  # left out of a row when unset


@dataclass
class Utterance:
    id: str
    path: str
    num_samples: int
    sample_rate: int
    speaker: str
    transcript: str | None = None
    phonemes: str | None = None  # space-separated phonemes of earful.data.phonemes.PHONEMES
    intent: dict[str, str] | None = None  # slot -> value

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def samples_at(self, rate: int) -> int:
        """Length in samples once resampled to ``rate`` (what the loader will produce)."""
        if rate == self.sample_rate:
            return self.num_samples
        return int(round(self.num_samples * rate / self.sample_rate))


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and line."""


def read_manifest(path: str | os.PathLike, *, check_files: bool = False) -> list[Utterance]:
    """Read a JSONL manifest. Raises ManifestError naming file and line on a bad row (including bytes that
    are not UTF-8), a duplicate id or (with ``check_files``) an audio file that does not exist."""
    path = Path(path)
    base = path.resolve().parent
    utts: list[Utterance] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
                                    "re-encode the manifest as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{where}: expected a JSON object")
            for key, typ in _REQUIRED.items():
                if key not in row:
                    raise ManifestError(f"{where}: missing field {key!r}")
                if not isinstance(row[key], typ) or isinstance(row[key], bool):
                    raise ManifestError(f"{where}: field {key!r} must be {typ.__name__}, got {row[key]!r}")
            if row["num_samples"] < 0 or row["sample_rate"] <= 0:
                raise ManifestError(f"{where}: num_samples must be >= 0 and sample_rate > 0")
            transcript = row.get("transcript")
            if transcript is not None and not isinstance(transcript, str):
                raise ManifestError(f"{where}: field 'transcript' must be a string or null")
            phonemes = row.get("phonemes")
            if phonemes is not None and not isinstance(phonemes, str):
                raise ManifestError(f"{where}: field 'phonemes' must be a string or null")
            intent = row.get("intent")
            if intent is not None and not (isinstance(intent, dict) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in intent.items())):
                raise ManifestError(f"{where}: field 'intent' must map slot names to strings, got {intent!r}")
            if row["id"] in seen:
                raise ManifestError(f"{where}: duplicate id {row['id']!r} (first on line {seen[row['id']]})")
            seen[row["id"]] = lineno
            audio = Path(row["path"])
            audio = audio if audio.is_absolute() else Path(os.path.normpath(base / audio))
            if check_files and not audio.is_file():
                raise ManifestError(f"{where}: audio file not found: {audio}")
            utts.append(Utterance(row["id"], str(audio), row["num_samples"], row["sample_rate"],
                                  row["speaker"], transcript, phonemes, intent))
    return utts


def write_manifest(utts: Iterable[Utterance], path: str | os.PathLike, *,
                   relative_to: str | os.PathLike | None = None) -> None:
    """Write a JSONL manifest (atomically). Audio paths are absolute, except those under ``relative_to``
    (e.g. a corpus root holding both audio and manifests), written relative to the manifest's folder so the
    tree can be moved as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    root = Path(relative_to).resolve() if relative_to is not None else None
    with atomic_open(path) as f:
        for u in utts:
            row = {k: v for k, v in asdict(u).items() if v is not None or k not in _OPTIONAL}
            p = Path(u.path).resolve()
            row["path"] = os.path.relpath(p, base) if root and p.is_relative_to(root) else str(p)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def summarize(utts: Sequence[Utterance]) -> dict[str, float]:
    """Totals of a set of utterances: hours, utterances, speakers, labelled fraction."""
    return {
        "hours": sum(u.seconds for u in utts) / 3600,
        "utterances": len(utts),
        "speakers": len({u.speaker for u in utts}),
        "labelled": sum(u.transcript is not None for u in utts) / max(len(utts), 1),
    }
