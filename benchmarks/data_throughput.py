"""Data throughput: seconds of audio decoded and batched per second, per DataLoader worker.

Run by hand: ``python benchmarks/data_throughput.py [--manifest M.jsonl] [--workers 0 1 2]``. Without a
manifest it first synthesises a small corpus (and reports the synthesis speed in × real time). The peer,
measured in the same run on the same files, is a bare single-process ``soundfile.read`` loop; the loader's
throughput is printed as a ratio against it.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import soundfile as sf

from earful.data.budget import BatchBudget
from earful.data.dataset import make_loader
from earful.data.manifest import read_manifest
from earful.data.synth import synthesize


def peer(utts) -> float:
    start = time.perf_counter()
    audio = sum(len(sf.read(u.path, dtype="float32")[0]) for u in utts) / 16000
    return audio / (time.perf_counter() - start)


def loader_rate(utts, workers: int, batch_seconds: float) -> tuple[float, float, float]:
    """(audio seconds a second after the first batch, padding fraction, seconds to the first batch): the workers'
    start-up (processes, imports) comes once a run, so it is timed apart, not spread over a short corpus."""
    loader = make_loader(utts, BatchBudget.per_device(batch_seconds), num_workers=workers, seed=0)
    start = time.perf_counter()
    batches = iter(loader)
    first = next(batches)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    real = padded = 0.0
    for b in batches:
        real += b.real_seconds
        padded += b.padded_seconds
    if not padded:
        raise SystemExit(f"one batch of {batch_seconds:g} s holds the whole corpus: a smaller --batch-seconds")
    pad = 1 - (real + first.real_seconds) / (padded + first.padded_seconds)
    return real / (time.perf_counter() - start), pad, startup


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--manifest", type=Path)
    p.add_argument("--hours", type=float, default=0.1, help="size of the synthesised corpus")
    p.add_argument("--synth-workers", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-seconds", type=float, default=60.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest
        if manifest is None:
            summary = synthesize(tmp, args.hours, workers=args.synth_workers, progress=False,
                                 labelled_fraction=0.01)
            s = summary["synthesis"]
            print(f"synth: {s['audio_seconds'] / 60:.1f} min of audio in {s['wall_seconds']:.1f} s with "
                  f"{s['workers']} workers = {s['real_time_factor']:.0f}x real time "
                  f"({s['real_time_factor'] / s['workers']:.0f}x per worker)")
            manifest = Path(tmp) / "manifests" / "train.jsonl"
        utts = read_manifest(manifest)
        hours = sum(u.seconds for u in utts) / 3600
        print(f"corpus: {len(utts)} utterances, {hours:.3f} h")
        base = peer(utts)
        print(f"peer   soundfile.read loop, 1 process: {base:9.0f} s audio/s")
        for w in args.workers:
            rate, pad, startup = loader_rate(utts, w, args.batch_seconds)
            per = rate / max(w, 1)
            print(f"loader workers={w}: {rate:9.0f} s audio/s ({per:.0f} per worker), "
                  f"{rate / base:.2f}x peer, padding {100 * pad:.1f}%, first batch after {startup:.3f} s")


if __name__ == "__main__":
    main()
