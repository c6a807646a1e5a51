"""A manifest's fingerprint: what it trains on, not where its audio lies.

``earful prepare`` writes absolute audio paths, so a corpus copied elsewhere (node-local disk on every cluster
job) and prepared again gives a manifest of other bytes with the same utterances. Its *digest* is therefore the
SHA-256 of its rows less their ``path`` — ids, lengths, rates, offsets, speakers, labels and their order, each
row as canonical JSON — so a moved copy has the same digest and any changed, added, removed or reordered row
another. One rule for a run's recipe (``data.train.sha256``, ``earful/train/recipe.py``) and a study's
(``earful/study/corpus.py``, ``manifest_digests``). ``ManifestDigest`` also holds the SHA-256 of the paths alone
(to say that only they changed), of the rows less their labels too (the audio alone: to say that only the labels
changed, which a pre-training does not read: ``earful phonemize`` in place) and of the file's bytes (what run and
study folders of earlier versions recorded: accepted as the same manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import closing, nullcontext
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, NamedTuple

DIGEST_RULE = "rows less audio paths"  # recorded beside the digests; folders of earlier versions hold file bytes
LABELS = ("speaker", "transcript", "phonemes", "intent")  # a row's labels: what pre-training does not read


class ManifestDigest(NamedTuple):
    """SHA-256 hex digests of one manifest: ``rows`` (less paths: the fingerprint), ``paths`` (the audio paths in
    row order), ``file`` (its bytes, the fingerprint of earlier versions), ``audio`` (the rows less paths and
    ``LABELS``: ids, lengths, rates and offsets in order), ``labels`` (label -> SHA-256 of its values in row
    order: which labels changed, for a task that reads some of them)."""

    rows: str
    paths: str
    file: str
    audio: str
    labels: dict[str, str]


def sha256(source: str | os.PathLike | BinaryIO) -> str:
    """The SHA-256 of a file's bytes, hex (read a megabyte at a time): the file at a path, or one open in binary
    mode, read from its start."""
    h = hashlib.sha256()
    with open(source, "rb") if isinstance(source, str | os.PathLike) else nullcontext(source) as f:
        f.seek(0)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(path: str | os.PathLike) -> ManifestDigest:
    """The digests of the manifest at ``path`` (one pass; computed again only when the file changed). A line
    that is not a JSON object is hashed as it is: the loader names it later, and an edit of it still counts."""
    from earful.data.manifest import check_manifest_file

    check_manifest_file(path)  # a folder, an audio file or a fairseq TSV, named with what to do
    p = Path(path).resolve()
    st = p.stat()
    return _digest(str(p), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _digest(path: str, _size: int, _mtime_ns: int) -> ManifestDigest:
    from earful.data.manifest import numbered_lines

    rows, paths, file, audio = hashlib.sha256(), hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    labels = {label: hashlib.sha256() for label in LABELS}
    with open(path, "rb") as f, closing(numbered_lines(f, path, "hashing")) as lines:
        for _, raw in lines:
            file.update(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                row = None
            if not isinstance(row, dict):
                rows.update(raw.strip() + b"\n")
                audio.update(raw.strip() + b"\n")
                for h in labels.values():
                    h.update(raw.strip() + b"\n")
                continue
            where = row.pop("path", None)
            canonical = _canonical(row)
            rows.update(canonical)
            paths.update(_PATH.encode(where).encode() + b"\n")
            audio.update(canonical if _LABELS_SET.isdisjoint(row) else
                         _canonical({k: v for k, v in row.items() if k not in _LABELS_SET}))
            for label, h in labels.items():
                value = row.get(label)
                h.update(_NO_LABEL if value is None else _canonical({"v": value}))
    return ManifestDigest(rows.hexdigest(), paths.hexdigest(), file.hexdigest(), audio.hexdigest(),
                          {label: h.hexdigest() for label, h in labels.items()})


# One encoder each, built once: json.dumps with options builds an encoder a call, 60 % of the hashing's time.
_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
_PATH = json.JSONEncoder(ensure_ascii=False)
_LABELS_SET = frozenset(LABELS)  # LABELS, for the membership test a row


def _canonical(row: dict) -> bytes:
    return _CANONICAL.encode(row).encode() + b"\n"


_NO_LABEL = _canonical({"v": None})  # what a row without a label adds to that label's digest
