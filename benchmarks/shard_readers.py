"""Which shard reader: earful's own (offsets from the index), ``webdataset``, or lhotse Shar — measured.

Run by hand: ``python benchmarks/shard_readers.py [--minutes 20] [--dir D]``. It writes a corpus of speech-like
16 kHz FLAC utterances (2–20 s), shards it with ``earful shard``'s writer and with lhotse's ``to_shar`` (shards of
about the same size), then measures each reader in a fresh process, one process each (a DataLoader worker's
share): a full pass reading and decoding every member (audio-s/s), the peak resident memory the pass added,
and a resume at 60 % of the corpus — the time until the member there is decoded, and whether it is exactly the
member an uninterrupted pass gives there. ``webdataset`` reads earful's shards themselves (they are WebDataset
tar files); every reader decodes with ``soundfile`` into float32 (lhotse through its own ``load_audio``).

``webdataset`` and ``lhotse`` are not earful dependencies: install them beside it to compare (the script says
which it could not import and measures the rest), e.g. ``pip install --target /tmp/pkgs webdataset lhotse`` and
``PYTHONPATH=/tmp/pkgs``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speechlike import SR, utterance  # noqa: E402

from earful.data.manifest import Utterance, write_manifest  # noqa: E402
from earful.data.shards import ShardIndex, open_location, read_member, write_shards  # noqa: E402

READERS = ("earful", "webdataset", "lhotse")


def make_corpus(root: Path, minutes: float, shard_mb: float) -> None:
    rng = np.random.default_rng(0)
    utts, total, i = [], 0.0, 0
    while total < minutes * 60:
        seconds = float(rng.uniform(2, 20))
        path = root / "audio" / f"u{i:05d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, utterance(seconds, rng), SR, subtype="PCM_16")
        utts.append(Utterance(f"u{i:05d}", str(path), int(seconds * SR), SR, f"s{i % 20}"))
        total, i = total + seconds, i + 1
    write_manifest(utts, root / "m.jsonl")
    write_shards(utts, root / "earful", shard_bytes=int(shard_mb * 1e6))


def make_shar(root: Path) -> None:
    """lhotse's shards of the same utterances, as many."""
    from lhotse import CutSet, Recording, RecordingSet

    index = ShardIndex(root / "earful")
    paths = sorted((root / "audio").glob("u*.flac"))
    recordings = RecordingSet.from_recordings(Recording.from_file(p, recording_id=p.stem) for p in paths)
    (root / "shar").mkdir(exist_ok=True)
    CutSet.from_manifests(recordings=recordings).to_shar(root / "shar", fields={"recording": "flac"},
                                                          shard_size=max(1, len(paths) // len(index.shards)))


def _earful(root: Path, at: int) -> tuple[list[tuple[str, int]], float, tuple[str, np.ndarray]]:
    index = ShardIndex(root / "earful")
    seen = []
    for s in range(len(index.shards)):
        with open_location(index.path(s)) as f:
            for m in range(int(index.first[s]), int(index.first[s + 1])):
                member, meta = read_member(f, index, m)
                x, _ = sf.read(member, dtype="float32")
                seen.append((meta["id"], len(x)))
    t = time.perf_counter()
    s = int(index.shard_of(at))
    with open_location(index.path(s)) as f:  # the member's offset is in the index: one seek
        member, meta = read_member(f, index, at)
        x, _ = sf.read(member, dtype="float32")
    return seen, time.perf_counter() - t, (meta["id"], x)


def _webdataset(root: Path, at: int) -> tuple[list[tuple[str, int]], float, tuple[str, np.ndarray]]:
    import webdataset as wds

    urls = [str(p) for p in sorted((root / "earful").glob("shard-*.tar"))]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        x, _ = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        seen.append((json.loads(sample["json"])["id"], len(x)))
    t = time.perf_counter()
    stream = iter(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    sample = next(itertools.islice(stream, at, None))  # no index: read through the members before it
    x, _ = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
    return seen, time.perf_counter() - t, (json.loads(sample["json"])["id"], x)


def _lhotse(root: Path, at: int) -> tuple[list[tuple[str, int]], float, tuple[str, np.ndarray]]:
    from lhotse import CutSet

    seen = []
    for cut in CutSet.from_shar(in_dir=root / "shar"):
        seen.append((cut.recording.id, cut.load_audio().shape[-1]))
    t = time.perf_counter()
    cut = next(itertools.islice(iter(CutSet.from_shar(in_dir=root / "shar")), at, None))
    x = cut.load_audio()[0]
    return seen, time.perf_counter() - t, (cut.recording.id, x)


def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in kB (Linux)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def measure(root: Path, reader: str) -> dict[str, object]:
    """One reader in this (fresh) process: a full pass, then a resume at 60 %."""
    fn = {"earful": _earful, "webdataset": _webdataset, "lhotse": _lhotse}[reader]
    n = len(ShardIndex(root / "earful"))
    at = int(0.6 * n)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to what is resident now
    base = _status_kb("VmRSS")
    t = time.perf_counter()
    seen, resume_s, (uid, x) = fn(root, at)
    wall = time.perf_counter() - t - resume_s
    reference, _ = sf.read(root / "audio" / f"{uid}.flac", dtype="float32")
    audio = sum(n for _, n in seen) / SR
    return {"reader": reader, "members": len(seen), "audio_s": audio, "audio_s_per_s": audio / wall,
            "rss_added_mb": (_status_kb("VmHWM") - base) / 1024,
            "resume_s": resume_s, "resume_exact": uid == f"u{at:05d}" and np.array_equal(x, reference),
            "order_kept": [u for u, _ in seen] == [f"u{k:05d}" for k in range(n)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="audio in the corpus")
    p.add_argument("--shard-mb", type=float, default=8.0)
    p.add_argument("--dir", type=Path, default=None, help="keep the corpus here (default: a temporary folder)")
    p.add_argument("--reps", type=int, default=3, help="passes per reader (medians)")
    p.add_argument("--measure", choices=READERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reps < 1:
        p.error(f"--reps {args.reps}: expected at least 1")
    if args.measure:
        print(json.dumps(measure(args.dir, args.measure)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        if not (root / "earful" / "index.json").exists():
            make_corpus(root, args.minutes, args.shard_mb)
        if not (root / "shar").exists():
            try:
                make_shar(root)
            except ImportError as e:
                print(f"lhotse: not measured ({e})")
        index = ShardIndex(root / "earful")
        print(f"corpus: {len(index)} utterances, {sum(s['bytes'] for s in index.shards) / 1e6:.1f} MB in "
              f"{len(index.shards)} shards; resume at member {int(0.6 * len(index))}")
        results: dict[str, list[dict[str, object]]] = {}
        for _, reader in itertools.product(range(args.reps), READERS):  # interleaved: the box's load hits all
            r = subprocess.run([sys.executable, __file__, "--dir", str(root), "--measure", reader],
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if r.returncode:
                results.setdefault(reader, [])
                print(f"{reader}: not measured ({r.stderr.strip().splitlines()[-1]})")
                continue
            results.setdefault(reader, []).append(json.loads(r.stdout.strip().splitlines()[-1]))
        base = None
        print("| reader | audio-s/s (median) | vs earful | peak RSS added MB | resume at 60 % (s) | resume exact | "
              "order kept |")
        print("|---|---|---|---|---|---|---|")
        for reader, runs in results.items():
            if not runs:
                continue
            med = {k: float(np.median([r[k] for r in runs])) for k in ("audio_s_per_s", "rss_added_mb", "resume_s")}
            base = base or med["audio_s_per_s"]
            print(f"| {reader} | {med['audio_s_per_s']:.0f} | {med['audio_s_per_s'] / base:.2f}× | "
                  f"{med['rss_added_mb']:.0f} | {med['resume_s']:.3f} | {all(r['resume_exact'] for r in runs)} | "
                  f"{all(r['order_kept'] for r in runs)} |")


if __name__ == "__main__":
    main()
