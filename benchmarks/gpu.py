"""Pre-training throughput on one GPU: BASE at 87.5 s and 150 s of padded audio per device, bf16 autocast.

    python benchmarks/gpu.py                 # on a GPU machine: well under 5 minutes
    python benchmarks/gpu.py --smoke         # tiny preset, a few steps on CPU: checks the script itself

It runs the real training path: a synthetic corpus of speech-like FLAC files is written to a temporary
folder, and the engine (``earful.train.engine.Trainer`` with ``PretrainTask``) trains on it through its
DataLoader (``--num-workers`` processes decoding and batching) with fused AdamW; each step is
``Trainer.train_step`` (forward, backward, gradient normalisation, norm, optimizer step), which ends in a host
sync, so wall-clock per step is exact. Reported per device-seconds setting, over the timed steps after warm-up:

* audio-s/s: real (unpadded) audio seconds trained per wall-clock second; padded in brackets;
* peak CUDA memory: ``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``);
* data-wait fraction: time spent in ``next(loader)`` / wall time (what the trainer logs as
  ``data_wait_fraction``);
* MFU: padded audio-s/s × the analytic training FLOPs per audio-second (``earful.model.flops``, at the
  batches' mean padded utterance length) / the device's data-sheet dense bf16 peak (``--peak-tflops``).

The peers are published figures, not measured here: fairseq BASE ≈ 253 audio-s/s per V100 (≈ 9 % MFU) and
NVIDIA's optimised fork ≤ 1.6 k audio-s/s per A100 (≤ 16 % MFU); the ratios to them are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speechlike import SR, utterance  # noqa: E402

from earful.data.manifest import Utterance, read_manifest, write_manifest  # noqa: E402
from earful.model.flops import peak_flops, train_flops_per_second  # noqa: E402
from earful.pretrain.config import load_pretrain_config  # noqa: E402
from earful.pretrain.task import PretrainTask  # noqa: E402
from earful.train.engine import Trainer  # noqa: E402

PUBLISHED = {"fairseq BASE / V100": 253.0, "NVIDIA fork BASE / A100": 1600.0}


def _write_one(args: tuple[int, float, str, int]) -> tuple[str, int]:
    i, seconds, folder, seed = args
    x = utterance(seconds, np.random.default_rng(seed * 100_003 + i))
    path = os.path.join(folder, f"u{i:05d}.flac")
    sf.write(path, x, SR, subtype="PCM_16")
    return path, len(x)


def make_corpus(folder: Path, minutes: float, seed: int, workers: int) -> Path:
    """Speech-like FLAC files of 2–16 s (LibriSpeech-like lengths) and their manifest; the manifest already in
    ``folder``, if there is one (a corpus kept with ``--corpus`` is reused)."""
    manifest = folder / "train.jsonl"
    if manifest.exists():
        return manifest
    rng = np.random.default_rng(seed)
    lengths: list[float] = []
    while sum(lengths) < minutes * 60:
        lengths.append(float(np.clip(rng.normal(12.0, 3.5), 2.0, 16.0)))
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    jobs = [(i, s, str(folder / "audio"), seed) for i, s in enumerate(lengths)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(_write_one, jobs, chunksize=8))
    utts = [Utterance(f"u{i:05d}", p, n, SR, f"s{i % 20}") for i, (p, n) in enumerate(done)]
    write_manifest(utts, manifest)
    return manifest


def run_setting(args: argparse.Namespace, manifest: Path, out: Path, device_seconds: float,
                done: list[dict[str, Any]]) -> dict[str, Any]:
    """One device-seconds setting, timed; its result is appended to ``done`` and written (``--json``) before the
    host-sync count and the profile, which may fail (a CUDA-graph run, say) without losing the timing."""
    overrides = [
        f"model_preset={args.preset}", f"device_seconds={device_seconds}", f"batch_seconds={device_seconds}",
        f"precision={args.precision}", f"device={args.device}", f"data.train={manifest}",
        f"data.num_workers={args.num_workers}", f"data.crop_seconds={args.crop_seconds}", "max_steps=100000",
        "tensorboard=false", "valid_every=0", "log_every=1000000", "ckpt_every=1000000", "optim.lr=1e-4",
        *args.override,
    ]  # fmt: skip
    cfg = load_pretrain_config(None, overrides)
    t_build = time.perf_counter()
    trainer = Trainer(PretrainTask(cfg), out)
    build_s = time.perf_counter() - t_build  # with device_seconds=auto, its search by trial
    print(f"  trainer built in {build_s:.1f} s (device_seconds {trainer.cfg.device_seconds:g}, micro-batches of "
          f"{trainer.budget.micro_seconds:.4g} s x {trainer.accumulation})", flush=True)
    cuda = trainer.d.device.type == "cuda"
    batches = iter(trainer.loader)
    walls: list[float] = []
    waits: list[float] = []
    audio: list[float] = []
    every: list[dict[str, float]] = []  # each step, warm-up included: a new batch shape shows as a slow step
    real = padded = utts = 0.0
    t_start = time.perf_counter()
    for i in range(args.warmup + args.steps):
        if i == args.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        rec = trainer.train_step(batches)
        dt = time.perf_counter() - t0  # train_step ends with a host sync (grad norm, stats)
        every.append({"s": dt, "padded_seconds": rec["padded_seconds"], "utterances": rec["utterances"]})
        if i % 5 == 4 or i == args.warmup - 1:
            print(f"    step {i + 1}/{args.warmup + args.steps}: {dt:.3f} s ({time.perf_counter() - t_start:.0f} s "
                  f"in this setting{', warm-up done' if i == args.warmup - 1 else ''})", flush=True)
        if i >= args.warmup:
            walls.append(dt)
            waits.append(rec["data_wait"])
            audio.append(rec["real_seconds"])
            real += rec["real_seconds"]
            padded += rec["padded_seconds"]
            utts += rec["utterances"]
    wall = sum(walls)
    mean_utt = padded / max(utts, 1.0)
    flops = train_flops_per_second(cfg.model, utterance_seconds=mean_utt)
    res = {
        # the batch this setting asks for (device_seconds=auto may find a smaller device_seconds), the device
        # size, and what micro-batches are packed to (the batch's vocabulary: earful/data/budget.py)
        "batch_seconds": device_seconds, "device_seconds": float(trainer.cfg.device_seconds),
        "micro_seconds": trainer.budget.micro_seconds, "accumulation": trainer.accumulation,
        "steps": len(walls), "median_step_s": statistics.median(walls),
        "audio_s_per_s": real / wall, "padded_s_per_s": padded / wall, "data_wait_fraction": sum(waits) / wall,
        "mean_padded_utterance_s": mean_utt, "gflop_per_audio_s": flops / 1e9,
        "achieved_tflops": padded / wall * flops / 1e12,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else float("nan"),
        "mean_step_s": wall / len(walls), "step_s": walls, "step_audio_s": audio, "step_data_wait_s": waits,
        "every_step": every, "trainer_build_s": build_s,
    }  # fmt: skip
    done.append(res)
    if args.json:
        args.json.write_text(json.dumps(done, indent=1))
    print(f"  {device_seconds:g} s/device: median step {res['median_step_s']:.3f} s, {res['audio_s_per_s']:.1f} "
          f"audio-s/s ({res['padded_s_per_s']:.1f} padded)", flush=True)
    try:
        if cuda:
            res["syncs_per_step"], res["sync_sites"] = count_syncs(trainer, batches)
            print(f"host syncs a step: {res['syncs_per_step']:g} at {res['sync_sites']}", flush=True)
        if args.profile:
            profile_steps(trainer, batches, cuda)
    except Exception as e:  # the timing above is kept
        res["after_timing_error"] = repr(e)
        print(f"  after the timing: {e!r}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(done, indent=1))
    del trainer, batches
    if cuda:
        torch.cuda.empty_cache()
    return res


def count_syncs(trainer: Trainer, batches: Any, steps: int = 2) -> tuple[float, dict[str, int]]:
    """Host synchronisations a step (``torch.cuda.set_sync_debug_mode``), and where they are (file:line →
    count): the step's end (statistics, the update) has a few by design; inside the micro-batches there
    should be none (the host-drawn masks, benchmarks/README.md)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                trainer.train_step(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            site = f"{Path(w.filename).name}:{w.lineno}"
            sites[site] = sites.get(site, 0) + 1
    return sum(sites.values()) / steps, sites


def profile_steps(trainer: Trainer, batches: Any, cuda: bool, steps: int = 3) -> None:
    """Where a step's time goes: host (Python, dispatch, launches) against device kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=acts) as prof:
        for _ in range(steps):
            trainer.train_step(batches)
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=15), flush=True)
    host = sum(e.self_cpu_time_total for e in events) / steps / 1e3
    device = sum(getattr(e, "self_device_time_total", 0.0) for e in events) / steps / 1e3
    # runtime and driver API alike (cudaLaunchKernel, cuLaunchKernel(Ex): Triton's and some cuDNN engines'), and
    # CUDA-graph replays apart (one launch replays a whole graph)
    launches = sum(e.count for e in events if "LaunchKernel" in e.key) / steps
    graphs = sum(e.count for e in events if "GraphLaunch" in e.key) / steps
    print(f"per step: host ops {host:.1f} ms, device kernels {device:.1f} ms, {launches:.0f} kernel launches, "
          f"{graphs:.0f} CUDA-graph launches", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny preset, CPU, fp32, 2 steps: tests the script")
    p.add_argument("--preset", default="base")
    p.add_argument("--device-seconds", type=float, nargs="+", default=[87.5, 150.0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--num-workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)),
                   help="DataLoader workers (data.num_workers)")
    p.add_argument("--minutes", type=float, default=20.0, help="synthetic corpus size (reused across epochs)")
    p.add_argument("--crop-seconds", type=float, default=15.6,
                   help="the pre-training default, about fairseq's crop (250k samples, 15.625 s)")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--device", default="auto")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: data sheet by device name)")
    p.add_argument("--override", nargs="*", default=[], help="more key=value pre-training overrides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark on: cuDNN times its algorithms for every new shape")
    p.add_argument("--profile", action="store_true", help="also profile 3 steps per setting (host vs device)")
    p.add_argument("--json", type=Path, help="also write the results, with every step's time and audio, here")
    p.add_argument("--corpus", type=Path, help="keep the synthetic corpus in this folder and reuse it if it is there")
    args = p.parse_args()
    if args.smoke:
        args.preset, args.device, args.precision = "tiny", "cpu", "fp32"
        args.device_seconds, args.steps, args.warmup, args.minutes, args.num_workers = [8.0, 16.0], 2, 1, 1.0, 1
        args.crop_seconds = 3.0
    logging.basicConfig(level=logging.WARNING)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        name = torch.cuda.get_device_name()
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(name)
    print(f"device {name}, preset {args.preset}, {args.precision}, {args.num_workers} loader workers, "
          f"torch {torch.__version__}; peak {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus or Path(tmp) / "corpus"
        manifest = make_corpus(corpus, args.minutes, args.seed, max(1, (os.cpu_count() or 2)))
        minutes = sum(u.num_samples for u in read_manifest(manifest)) / SR / 60  # a kept corpus may be another size
        if abs(minutes - args.minutes) > 0.5:
            print(f"note: --corpus {corpus} holds {minutes:.1f} min, not the --minutes {args.minutes:g} asked",
                  flush=True)
        print(f"corpus: {minutes:.1f} min of speech-like FLAC in {time.perf_counter() - t0:.1f} s", flush=True)
        results: list[dict[str, Any]] = []
        for s in args.device_seconds:
            r = run_setting(args, manifest, Path(tmp) / f"run-{s:g}", s, results)
            print(f"  {s:g} s/device: {r['steps']} steps in {time.perf_counter() - t0:.0f} s so far (micro-batches of "
                  f"{r['micro_seconds']:.4g} s x {r['accumulation']})", flush=True)
    print(f"{'batch s':>8} {'device s':>8} {'step s':>7} {'mean':>7} {'audio/step':>10} {'audio-s/s':>9} "
          f"{'(padded)':>9} "
          f"{'data wait':>9} {'GFLOP/a-s':>9} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8} {'reserved':>8}")
    for r in results:
        mfu = r["achieved_tflops"] * 1e12 / peak if peak else float("nan")
        print(f"{r['batch_seconds']:8g} {r['device_seconds']:8g} {r['median_step_s']:7.3f} {r['mean_step_s']:7.3f} "
              f"{statistics.mean(r['step_audio_s']):10.1f} {r['audio_s_per_s']:9.1f} "
              f"{r['padded_s_per_s']:9.1f} {100 * r['data_wait_fraction']:8.1f}% {r['gflop_per_audio_s']:9.1f} "
              f"{r['achieved_tflops']:8.2f} {100 * mfu:5.1f}% {r['peak_mem_gib']:8.1f} {r['peak_reserved_gib']:8.1f}")
    best = max(r["audio_s_per_s"] for r in results)
    print("vs published (not measured here): " + ", ".join(f"{k} {v:g} audio-s/s: {best / v:.2f}x"
                                                          for k, v in PUBLISHED.items()))
    print(f"total wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
