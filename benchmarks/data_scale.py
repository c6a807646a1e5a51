"""Data at Libri-light scale: 16 M voice-activity segments (60 k hours), measured.

Run by hand (it writes a 3.6 GB manifest; 10–15 min on a 2-core box): ``python benchmarks/data_scale.py
[--rows 16000000] [--dir D]``. Each part runs in a fresh process, whose peak resident memory (VmHWM) is what one
rank holds (DataLoader workers fork from it and share its arrays):

1. **manifest**: a synthetic manifest of ``--rows`` segments of ~200 k long files (Libri-light's shape: 85 % of
   10–20 s, 15 % of 2–10 s) is read (``read_manifest``), and the pre-training loader built on it as rank 3 of 8
   with fairseq BASE's budget (5600 s a step, 87.5 s a device, 15.6 s crops, 2 s minimum): construction, the
   first epoch's batches, the size of the loader's ``state_dict`` (JSON) and a restore into a fresh loader (the
   manifest re-read, and the sampler alone), all timed;
2. **shards**: the same for a synthetic shard index of as many members (4,300 shards of ~1 GB, as 60 k h of
   FLAC would be): index load, stream plan for rank 3 of 8 × 8 workers, a stream's first bucket, state and
   restore;
3. **stream**: real shards of speech-like audio (``--stream-minutes``) read by one ``ShardStream`` process (a
   worker's share) with BASE's budget: trained audio-s/s per worker against what one H200 consumes
   (4,000 audio-s/s, the figure this project plans with), and the same rows read from their files as the peer;
4. **windows**: samples decoded per trained second when 15.6 s crops are taken from 10-minute files — the
   windowed read (what the loader does) against decoding each file whole and cropping (what it did before),
   measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

H200_AUDIO_S_PER_S = 4000.0
BUDGET = dict(batch_seconds=5600.0, device_seconds=87.5, world_size=8, crop_seconds=15.6, min_seconds=2.0)
RANK, WORKERS = 3, 8


def _status_mb(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _timed(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def write_synthetic_manifest(path: Path, rows: int) -> float:
    """``rows`` segment rows of Libri-light-like files; returns the hours."""
    rng = np.random.default_rng(0)
    long = rng.random(rows) < 0.85
    seconds = np.where(long, rng.uniform(10, 20, rows), rng.uniform(2, 10, rows))
    samples = (seconds * 16000).astype(np.int64)
    per_file = 80
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, rows, per_file):
            k = start // per_file
            spk, book = k // 40, k // 8
            where = f"/data/librilight/large/{spk}/book_{book}_librivox/chapter_{k:06d}_64kb.flac"
            offset = 0
            lines = []
            for j, n in enumerate(samples[start : start + per_file].tolist()):
                lines.append(f'{{"id": "{spk}/book_{book}_librivox/chapter_{k:06d}_64kb-{j:04d}", "path": "{where}", '
                             f'"num_samples": {n}, "sample_rate": 16000, "speaker": "{spk}", "offset": {offset}}}\n')
                offset += n + 8000
            f.writelines(lines)
    return float(seconds.sum() / 3600)


def part_manifest(root: Path) -> dict[str, object]:
    """One rank's start (manifest read, loader, first epoch), then, everything dropped, its restore."""
    import gc

    from earful.data.budget import BatchBudget
    from earful.data.dataset import make_loader  # noqa: F401 - imported here, not in the timed build (torch: ~1 s)
    from earful.data.sampler import SecondsBatchSampler

    budget = BatchBudget(**BUDGET)
    _reset_peak()
    (utts, loader), t_read_build = _timed(_start_loader, root, budget)
    t_read = loader.t_read
    batches, t_epoch = _timed(loader.sampler.epoch_batches, 0)
    peak_start = _status_mb("VmHWM")
    loader.position = min(1234, len(batches) // 2)  # as if 1234 batches were trained (fewer on a small --rows)
    state = loader.state_dict()
    size = len(json.dumps(state).encode())
    first_batches, n_batches = [batches[k].copy() for k in range(min(50, len(batches)))], len(batches)
    lengths = utts.lengths().copy()
    rows = len(utts)
    del utts, loader, batches
    gc.collect()
    _reset_peak()

    def restore():  # noqa: ANN202 - what a resumed rank does
        utts, loader = _start_loader(root, budget)
        loader.load_state_dict(state)
        return loader.sampler.epoch_batches()

    restored, t_restore = _timed(restore)
    peak_restore = _status_mb("VmHWM")
    assert all(np.array_equal(restored[k], first_batches[k]) for k in range(len(first_batches)))  # the same epoch
    del restored
    gc.collect()
    sampler_only = SecondsBatchSampler(lengths, budget, seed=1, rank=RANK, endless=True)
    _, t_sampler = _timed(lambda: (sampler_only.load_state_dict(state), sampler_only.epoch_batches())[1])
    return {"rows": rows, "read_s": t_read, "build_s": t_read_build - t_read, "first_epoch_s": t_epoch,
            "batches_rank": n_batches, "state_bytes": size,
            "restore_with_manifest_s": t_restore, "restore_sampler_s": t_sampler,
            "peak_rss_mb": max(peak_start, peak_restore)}


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to what is resident now (Linux)


def _start_loader(root: Path, budget):  # noqa: ANN001, ANN202
    from earful.data.dataset import make_loader
    from earful.data.manifest import read_manifest

    utts, t_read = _timed(read_manifest, root / "synthetic.jsonl")
    loader = make_loader(utts, budget, seed=1, rank=RANK, endless=True, num_workers=0)
    loader.t_read = t_read
    return utts, loader


def write_synthetic_index(out: Path, rows: int) -> None:
    """An index of ``rows`` members in 4,300 shards (no tar files: the plan needs only the index)."""
    from earful.atomic import atomic_write_json
    from earful.data.shards import INDEX, SHARDS_FORMAT

    rng = np.random.default_rng(0)
    long = rng.random(rows) < 0.85
    samples = (np.where(long, rng.uniform(10, 20, rows), rng.uniform(2, 10, rows)) * 16000).astype(np.int64)
    span = (samples // 2 + 1536).astype(np.int64)  # ~16 kB a second of FLAC and two tar headers
    first = np.linspace(0, rows, 4301).astype(np.int64)
    offset = np.zeros(rows, dtype=np.int64)
    for s in range(4300):
        a, b = first[s], first[s + 1]
        offset[a:b] = np.concatenate([[0], np.cumsum(span[a : b - 1])])
    (out / "index").mkdir(parents=True, exist_ok=True)
    for name, col in (("offset", offset), ("span", span), ("num_samples", samples),
                      ("sample_rate", np.full(rows, 16000, dtype=np.int32))):
        np.save(out / "index" / f"{name}.npy", col)
    shards = [{"name": f"shard-{s:06d}.tar", "bytes": int(span[first[s] : first[s + 1]].sum()) + 1024,
               "members": int(first[s + 1] - first[s])} for s in range(4300)]
    atomic_write_json(out / INDEX, {"format": SHARDS_FORMAT, "members": rows, "hours": float(samples.sum() / 16000 /
                                                                                            3600), "shards": shards})


def part_shards(root: Path) -> dict[str, object]:
    from earful.data.budget import BatchBudget
    from earful.data.shards import ShardIndex
    from earful.data.stream import ShardLoader, ShardStream, StreamPlan

    budget = BatchBudget(**BUDGET)
    _reset_peak()
    index, t_index = _timed(ShardIndex, root / "synthetic-shards")

    def build() -> ShardLoader:
        plan = StreamPlan(index, budget, seed=1, rank=RANK, workers=WORKERS)
        stream = ShardStream(plan, skip_bad=False, crop_to_shortest=True)
        return ShardLoader(stream, num_workers=WORKERS)

    loader, t_plan = _timed(build)
    stream = RANK * WORKERS + 5
    members, t_members = _timed(loader.plan.members, 0, stream)
    bucket, t_bucket = _timed(loader.plan.bucket, 0, stream, 0, members)
    loader.places = [(0, 17, 3)] * WORKERS  # as if each worker were 17 buckets in
    loader.position = 17 * 8 * 40
    state = loader.state_dict()
    size = len(json.dumps(state).encode())

    def restore() -> int:
        fresh = build()
        fresh.load_state_dict(state)
        e, b, _ = fresh.places[5]
        return len(fresh.plan.bucket(e, stream, b, fresh.plan.members(e, stream)))

    _, t_restore = _timed(restore)
    index2, t_index2 = _timed(ShardIndex, root / "synthetic-shards")
    return {"members": len(index), "index_s": t_index, "plan_s": t_plan, "stream_members": len(members),
            "members_s": t_members, "bucket_s": t_bucket, "bucket_batches": len(bucket), "state_bytes": size,
            "restore_s": t_restore + t_index2, "peak_rss_mb": _status_mb("VmHWM")}


def part_stream(root: Path, minutes: float) -> dict[str, object]:
    import itertools

    import soundfile as sf
    import torch
    from speechlike import SR, utterance

    from earful.data.budget import BatchBudget
    from earful.data.dataset import make_loader
    from earful.data.manifest import Utterance, read_manifest, write_manifest
    from earful.data.shards import write_shards
    from earful.data.stream import make_shard_loader

    torch.set_num_threads(1)
    corpus = root / "stream"
    if not (corpus / "shards" / "index.json").exists():
        rng = np.random.default_rng(1)
        utts, total, i = [], 0.0, 0
        while total < minutes * 60:  # 2–20 s, as Libri-light's segments
            seconds = float(rng.uniform(2, 20))
            path = corpus / "audio" / f"u{i:05d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, utterance(seconds, rng), SR, subtype="PCM_16")
            utts.append(Utterance(f"u{i:05d}", str(path), int(seconds * SR), SR, "s"))
            total, i = total + seconds, i + 1
        write_manifest(utts, corpus / "m.jsonl")
        write_shards(utts, corpus / "shards", shard_bytes=50_000_000)
    budget = BatchBudget(87.5, 87.5, crop_seconds=15.6, min_seconds=2.0)  # one device's micro-batches
    makers = {"files": lambda: make_loader(read_manifest(corpus / "m.jsonl"), budget, seed=1, endless=True,
                                           crop_to_shortest=True),
              "shards": lambda: make_shard_loader(str(corpus / "shards"), budget, seed=1, crop_to_shortest=True)}
    rates: dict[str, list[float]] = {name: [] for name in makers}
    for _, (name, make) in itertools.product(range(5), makers.items()):  # interleaved: the box's load hits both
        loader = make()
        t, real = time.perf_counter(), 0.0
        for b in itertools.islice(loader, 40):
            real += b.real_seconds
        rates[name].append(real / (time.perf_counter() - t))
    out: dict[str, object] = {name: float(np.median(r)) for name, r in rates.items()}
    out["workers_per_h200"] = H200_AUDIO_S_PER_S / out["shards"]
    return out


def part_windows(root: Path) -> dict[str, object]:
    import soundfile as sf
    from speechlike import SR, utterance

    from earful.data.audio import load_audio
    from earful.data.dataset import AudioDataset, crop_window
    from earful.data.manifest import Utterance

    rng = np.random.default_rng(2)
    files = []
    for k in range(3):
        path = root / "windows" / f"long{k}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            sf.write(path, np.concatenate([utterance(20.0, rng) for _ in range(30)]), SR, subtype="PCM_16")
        files.append(Utterance(f"long{k}", str(path), sf.info(path).frames, SR, "s"))
    decoded = [0]
    real_read = sf.SoundFile.read

    def counting(self, frames=-1, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        x = real_read(self, frames, *args, **kwargs)
        decoded[0] += len(x)
        return x

    sf.SoundFile.read = counting
    crop = round(15.6 * SR)
    out: dict[str, object] = {}
    for name in ("windowed", "whole_then_crop"):
        decoded[0], trained = 0, 0
        ds = AudioDataset(files, crop_seconds=15.6, seed=1)
        t = time.perf_counter()
        for epoch in range(10):
            for i, u in enumerate(files):
                if name == "windowed":
                    wave = ds[(i, epoch)].wave
                else:  # what the loader did before: decode the file, then take the crop
                    whole = load_audio(u.path)
                    start, n = crop_window(len(whole), i, epoch, crop, 1)
                    wave = whole[start : start + n]
                trained += len(wave)
        out[name] = {"decoded_per_trained_s": decoded[0] / trained, "ms_per_crop": 1000 * (time.perf_counter() - t)
                     / (10 * len(files))}
    sf.SoundFile.read = real_read
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=16_000_000)
    p.add_argument("--dir", type=Path, default=None, help="keep the synthetic files here (default: temporary)")
    p.add_argument("--stream-minutes", type=float, default=20.0)
    p.add_argument("--part", choices=("manifest", "shards", "stream", "windows"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rows < 4300:  # the synthetic shard index spreads the rows over 4,300 shards
        p.error(f"--rows {args.rows}: at least 4300 (one row a synthetic shard)")
    if args.part:
        fn = {"manifest": part_manifest, "shards": part_shards, "windows": part_windows,
              "stream": lambda root: part_stream(root, args.stream_minutes)}[args.part]
        print(json.dumps(fn(args.dir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "synthetic.jsonl").exists():
            hours, t = _timed(write_synthetic_manifest, root / "synthetic.jsonl", args.rows)
            print(f"synthetic manifest: {args.rows:,} segments, {hours:,.0f} h, "
                  f"{(root / 'synthetic.jsonl').stat().st_size / 1e9:.2f} GB, written in {t:.0f} s")
        if not (root / "synthetic-shards" / "index.json").exists():
            write_synthetic_index(root / "synthetic-shards", args.rows)
        results, failed = {}, []
        for part in ("manifest", "shards", "stream", "windows"):
            r = subprocess.run([sys.executable, __file__, "--dir", str(root), "--part", part, "--stream-minutes",
                                str(args.stream_minutes)], capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
            if r.returncode:
                print(f"{part}: failed\n{r.stderr[-3000:]}")
                failed.append(part)
                continue
            results[part] = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{part}: {json.dumps(results[part])}")
        report(results)
    if failed:  # the table holds the others; the status says it is not whole
        sys.exit(f"data_scale: {', '.join(failed)} failed (above)")


def report(r: dict[str, dict]) -> None:  # noqa: C901
    print("\n| path | rows | read / load | build | first epoch or bucket | state_dict | restore | peak RSS / rank |")
    print("|---|---|---|---|---|---|---|---|")
    if "manifest" in r:
        m = r["manifest"]
        print(f"| manifest → `make_loader` (rank 3 of 8) | {m['rows']:,} | {m['read_s']:.1f} s | "
              f"{m['build_s']:.1f} s | "
              f"{m['first_epoch_s']:.1f} s ({m['batches_rank']:,} batches) | {m['state_bytes'] / 1e3:.1f} kB | "
              f"{m['restore_sampler_s']:.1f} s (sampler) / {m['restore_with_manifest_s']:.1f} s (with the manifest) "
              f"| {m['peak_rss_mb']:.0f} MB |")
    if "shards" in r:
        s = r["shards"]
        print(f"| shard index → `ShardLoader` (rank 3 of 8, 8 workers) | {s['members']:,} | {s['index_s']:.2f} s | "
              f"{s['plan_s']:.1f} s | {s['members_s'] + s['bucket_s']:.2f} s ({s['bucket_batches']} batches) | "
              f"{s['state_bytes'] / 1e3:.1f} kB | {s['restore_s']:.1f} s | {s['peak_rss_mb']:.0f} MB |")
    if "stream" in r:
        t = r["stream"]
        print(f"\nstreaming, one process (a worker's share), BASE budget, 15.6 s crops: shards {t['shards']:.0f} "
              f"audio-s/s, files {t['files']:.0f} ({t['shards'] / t['files']:.2f}×); one H200 at "
              f"{H200_AUDIO_S_PER_S:.0f} audio-s/s needs {t['workers_per_h200']:.1f} such workers")
    if "windows" in r:
        w = r["windows"]
        a, b = w["windowed"], w["whole_then_crop"]
        print(f"15.6 s crops of 10-minute files: decoded per trained second {a['decoded_per_trained_s']:.2f} "
              f"(windowed) vs {b['decoded_per_trained_s']:.1f} (whole file, then crop); {a['ms_per_crop']:.1f} vs "
              f"{b['ms_per_crop']:.1f} ms a crop ({b['ms_per_crop'] / a['ms_per_crop']:.0f}×)")


if __name__ == "__main__":
    main()
