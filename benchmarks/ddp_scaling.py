"""Data-parallel scaling: pre-training throughput on 1, 2, 4 … GPUs of one machine, the same micro-batch per GPU.

    python benchmarks/ddp_scaling.py --gpus 1 2 4 8     # on a machine with 8 GPUs: BASE, bf16, 150 s a GPU
    python benchmarks/ddp_scaling.py --smoke            # tiny preset, CPU (gloo), 1 and 2 processes: checks it

Each setting is the real command, ``torchrun --standalone --nproc-per-node N -m earful.cli pretrain``, on one
synthetic corpus of speech-like FLAC (``gpu.py``'s), with ``batch_seconds = N × device_seconds`` (one micro-batch
a GPU a step, so every GPU does the work of the 1-GPU run) and a log record every step. After the warm-up
steps it reads the run's ``train.jsonl``: the median over steps of the global audio-s/s. Scaling efficiency is
that median at N GPUs over N × the 1-GPU median (the goal: ≥ 90 % at 2–8 GPUs). DDP all-reduces the gradient
in buckets during the backward (``gradient_as_bucket_view``); what it cannot overlap shows as lost efficiency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import make_corpus  # noqa: E402

from earful.study.report import read_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace, manifest: Path, out: Path, n: int) -> dict[str, float]:
    """One setting on ``n`` processes: the median global audio-s/s over the steps after the warm-up."""
    overrides = [
        f"model_preset={args.preset}", f"device_seconds={args.device_seconds}",
        f"batch_seconds={n * args.device_seconds}", f"precision={args.precision}", f"device={args.device}",
        f"data.train={manifest}", f"data.num_workers={args.workers}", f"data.crop_seconds={args.crop_seconds}",
        f"max_steps={args.warmup + args.steps}", "log_every=1", "valid_every=0", "ckpt_every=1000000",
        "tensorboard=false", "optim.lr=1e-4", *(["threads=1"] if args.device == "cpu" else []), *args.override,
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m",
           "earful.cli", "pretrain", *overrides, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1" if args.device == "cpu" else os.environ.get("OMP_NUM_THREADS", "4")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{n} process(es) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    records = read_jsonl(out / "train.jsonl")
    timed = [r for r in records if r["step"] > args.warmup]
    return {"gpus": n, "steps": len(timed), "audio_s_per_s": statistics.median(r["audio_seconds_per_second"]
                                                                             for r in timed),
            "data_wait": statistics.median(r["data_wait_fraction"] for r in timed)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny preset, CPU (gloo), 1 and 2 processes, 3 steps")
    p.add_argument("--gpus", type=int, nargs="+", default=None, help="process counts (default: 1, 2, 4 … all)")
    p.add_argument("--preset", default="base")
    p.add_argument("--device-seconds", type=float, default=150.0, help="padded audio a GPU a step")
    p.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=4, help="loader processes per GPU")
    p.add_argument("--minutes", type=float, default=60.0, help="synthetic corpus size (reused across epochs)")
    p.add_argument("--crop-seconds", type=float, default=15.6)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--override", nargs="*", default=[], help="more key=value pre-training overrides")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.smoke:
        args.preset, args.device, args.precision, args.gpus = "tiny", "cpu", "fp32", [1, 2]
        args.device_seconds, args.steps, args.warmup, args.minutes, args.workers = 4.0, 3, 1, 1.0, 0
        args.crop_seconds = 2.0
    if args.gpus is None:
        count = torch.cuda.device_count()
        args.gpus = sorted({1, *(2**k for k in range(1, 4) if 2**k <= count), count} - {0})
    if args.device == "cuda" and max(args.gpus) > torch.cuda.device_count():
        raise SystemExit(f"--gpus {max(args.gpus)}: this machine has {torch.cuda.device_count()} GPU(s)")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_corpus(Path(tmp) / "corpus", args.minutes, 0, max(1, os.cpu_count() or 2))
        results = [run(args, manifest, Path(tmp) / f"run-{n}", n) for n in args.gpus]
    base = next((r["audio_s_per_s"] for r in results if r["gpus"] == 1), None)
    print(f"{args.preset}, {args.precision}, {args.device_seconds:g} s a {args.device} device a step, "
          f"median over {args.steps} steps after {args.warmup}")
    print(f"{'devices':>7} {'audio-s/s':>10} {'per device':>10} {'efficiency':>10} {'data wait':>9}")
    for r in results:
        eff = r["audio_s_per_s"] / (r["gpus"] * base) if base else float("nan")
        r["efficiency"] = eff
        print(f"{r['gpus']:7d} {r['audio_s_per_s']:10.1f} {r['audio_s_per_s'] / r['gpus']:10.1f} "
              f"{100 * eff:9.1f}% {100 * r['data_wait']:8.1f}%")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
