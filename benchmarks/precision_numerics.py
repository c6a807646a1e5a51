"""bf16 against fp32 on the same data: do the loss curves stay within the seed-to-seed spread?

    python benchmarks/precision_numerics.py --device cuda --steps 500      # on a GPU (the bf16 numerics check)
    python benchmarks/precision_numerics.py --smoke                         # tiny, CPU, a few steps: the script

Pre-trains the same model on the same synthetic speech-like corpus four times — fp32 and bf16, two seeds each —
and compares the logged training loss (contrastive + diversity + penalty per masked frame) step by step:
the mean |bf16 − fp32| gap of a seed against the mean |seed 1 − seed 2| gap in fp32. bf16 is "within the
seed spread" when its gap is at most the seeds' gap, and "no divergence" when every logged loss is finite.
Masks are drawn from the run's seed alone: the same seed gives the same masks in both precisions, which the
script checks on one batch, first. On a GPU the fp32 runs take no TF32 (a strict reference). Each run's summary
is printed as it ends and, with ``--out``, its curve written, so a cut run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import make_corpus  # noqa: E402

from earful.model import Wav2Vec2ForPreTraining  # noqa: E402
from earful.pretrain.config import load_pretrain_config  # noqa: E402
from earful.pretrain.task import PretrainTask  # noqa: E402
from earful.train.engine import Trainer  # noqa: E402


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "train.jsonl").read_text().splitlines())}


def masks_match(preset: str, device: str) -> bool:
    """The same seed draws the same masks under fp32 and bf16 autocast (masks never see the precision)."""
    cfg = load_pretrain_config(None, [f"model_preset={preset}"]).model
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(cfg).to(device)
    wave = torch.randn(3, 48000, device=device)
    drawn = []
    for dtype in (None, torch.bfloat16):
        gen = torch.Generator(device=device).manual_seed(7)
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            drawn.append(model(wave, None, generator=gen).mask.cpu())
    return torch.equal(*drawn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-seconds", type=float, default=32.0)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--corpus", type=Path, help="keep the synthetic corpus in this folder and reuse it if it is there")
    p.add_argument("--out", type=Path, help="write each run's loss curve here (curves.json) as it finishes")
    args = p.parse_args()
    if args.smoke:
        args.preset, args.device, args.steps, args.batch_seconds, args.minutes, args.log_every = \
            "tiny", "cpu", 4, 4.0, 0.5, 2
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cuda":  # a strict fp32 reference: no TF32 in its products and convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    # first, what is quick and needs no training: the same seed's masks under both precisions
    print(f"masks identical for a seed under both precisions: {masks_match(args.preset, args.device)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus or Path(tmp) / "corpus"
        manifest = make_corpus(corpus, args.minutes, 0, max(1, os.cpu_count() or 1))
        curves = {}
        for precision in ("fp32", "bf16"):
            for seed in (1, 2):
                cfg = load_pretrain_config(None, [
                    f"model_preset={args.preset}", f"data.train={manifest}", f"batch_seconds={args.batch_seconds}",
                    f"device_seconds={args.batch_seconds}", f"max_steps={args.steps}", f"precision={precision}",
                    f"device={args.device}", f"seed={seed}", f"log_every={args.log_every}", "valid_every=0",
                    "ckpt_every=1000000", "tensorboard=false", "data.crop_seconds=4.0", "data.min_seconds=1.0",
                    "optim.lr=2e-3", "optim.schedule=cyclic", f"optim.cyclic_step_size={max(1, args.steps // 4)}",
                    "data.num_workers=2"])  # fmt: skip
                out = Path(tmp) / f"{precision}-{seed}"
                Trainer(PretrainTask(cfg), out).fit()
                curves[(precision, seed)] = curve = losses(out)
                last = curve[max(curve)]
                print(f"  {precision} seed {seed}: final loss {last:.4f}, all finite "
                      f"{all(math.isfinite(v) for v in curve.values())} ({time.perf_counter() - t0:.0f} s so far)",
                      flush=True)
                if args.out:  # what is done so far survives a cut
                    args.out.mkdir(parents=True, exist_ok=True)
                    (args.out / "curves.json").write_text(json.dumps({f"{p}-{s}": c for (p, s), c in curves.items()}))
        steps = sorted(curves[("fp32", 1)])

        def gap(a: tuple[str, int], b: tuple[str, int]) -> float:
            return statistics.fmean(abs(curves[a][s] - curves[b][s]) for s in steps)

        seeds = gap(("fp32", 1), ("fp32", 2))
        prec = [gap(("fp32", s), ("bf16", s)) for s in (1, 2)]
        finite = all(math.isfinite(v) for c in curves.values() for v in c.values())
        print(f"{args.preset}, {args.steps} steps of {args.batch_seconds:g} s on {args.device}:")
        print(f"  mean |seed 1 - seed 2| (fp32): {seeds:.4f}")
        print(f"  mean |bf16 - fp32| at a seed: {prec[0]:.4f}, {prec[1]:.4f} (ratio to the seeds' "
              f"{max(prec) / seeds if seeds else math.inf:.2f}; within the spread: {max(prec) <= seeds})")
        print(f"  final loss fp32 {curves[('fp32', 1)][steps[-1]]:.4f} / {curves[('fp32', 2)][steps[-1]]:.4f}, "
              f"bf16 {curves[('bf16', 1)][steps[-1]]:.4f} / {curves[('bf16', 2)][steps[-1]]:.4f}; "
              f"all finite: {finite}")
    print(f"total wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
