"""Writing a manifest (what `earful prepare` does last): earful's ``write_manifest`` against the plain peer that
``dataclasses.asdict`` and ``Path.resolve`` give, row by row (what earful did before), on the same rows, in the
same run, alternating, medians of ``--repeats``. The rows point at ``--files`` real files in a few folders, one of
them reached through a link, and every row's output is checked identical.

Run by hand: ``python benchmarks/manifest_write.py [--rows 100000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from earful.data.manifest import Utterance, write_manifest

OPTIONAL = ("offset", "phonemes", "intent")


def peer(utts: list[Utterance], path: Path) -> None:
    """The plain way: a deep copy of each row and a full path resolution each."""
    with open(path, "w", encoding="utf-8") as f:
        for u in utts:
            row = {k: v for k, v in asdict(u).items() if v is not None or k not in OPTIONAL}
            row["path"] = str(Path(u.path).resolve())
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--files", type=int, default=2_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.rows < 1:
        p.error(f"--rows {args.rows}: expected at least 1")
    if args.files < 1:
        p.error(f"--files {args.files}: expected at least 1")
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: expected at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in range(args.files):  # LibriSpeech's shape: SPEAKER/CHAPTER/FILE, 20 files a chapter
            f = root / "audio" / f"s{k // 200}" / f"c{k // 20}" / f"u{k}.flac"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch()
        os.symlink(root / "audio", root / "linked")  # a corpus reached through a link, as on many clusters
        files = sorted(str(f) for f in (root / "audio").rglob("*.flac"))
        files = [f.replace(str(root / "audio"), str(root / "linked")) if i % 2 else f for i, f in enumerate(files)]
        utts = [Utterance(f"u{i}", files[i % len(files)], 16000 * 12, 16000, f"s{i % 251}",
                          "A TRANSCRIPT OF A FEW WORDS" if i % 2 else None, offset=1600 * (i % 7) or None)
                for i in range(args.rows)]
        times: dict[str, list[float]] = {"earful": [], "peer": []}
        for _ in range(args.repeats):
            for name, write in (("earful", write_manifest), ("peer", peer)):
                t = time.perf_counter()
                write(utts, root / f"{name}.jsonl")
                times[name].append(time.perf_counter() - t)
        assert (root / "earful.jsonl").read_bytes() == (root / "peer.jsonl").read_bytes(), "outputs differ"
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.rows} rows: earful {med['earful']:.2f} s ({args.rows / med['earful']:.0f} rows/s), "
          f"peer {med['peer']:.2f} s ({args.rows / med['peer']:.0f} rows/s): "
          f"earful {med['peer'] / med['earful']:.2f}x the peer's speed (outputs identical)")


if __name__ == "__main__":
    main()
