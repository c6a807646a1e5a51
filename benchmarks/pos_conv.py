"""The positional convolution (768 channels, kernel 128, 16 groups at BASE), forward + backward, two ways on a
CPU, three on a GPU; the ratios are against ``nn.Conv1d`` (earful's module).

    python benchmarks/pos_conv.py                                        # CPU fp32, BASE's shape
    python benchmarks/pos_conv.py --device cuda --batch 7 --frames 568   # on a GPU, bf16 autocast as training

A profile of BASE training on an H200 (``gpu.py --profile``) put most device time in cuDNN's
``implicit_convolve_sgemm`` and a grouped weight-gradient kernel, not in the feature encoder, which runs in
~8 ms per 90 s batch alone (``cnn_kernels.py``). This isolates earful's ``PositionalConvEmbedding``:
``nn.Conv1d`` (on a GPU with cuDNN's heuristics); on a GPU, the same with ``cudnn.benchmark`` (it times every
algorithm once per shape: the first call is printed apart); and the grouped convolution as one batched matrix
product over unfolded windows (``unfold``: a (batch, frames, channels, kernel) view, contracted per group).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from earful.model.components import PositionalConvEmbedding
from earful.model.config import load_model_config


def unfolded(pos: PositionalConvEmbedding, x: torch.Tensor) -> torch.Tensor:
    """(batch, frames, hidden) → the same as ``pos(x)``, as per-group matrix products over unfolded windows."""
    conv = pos.conv
    b, t, d = x.shape
    k, g = conv.kernel_size[0], conv.groups
    xp = F.pad(x, (0, 0, k // 2, k // 2))  # (batch, frames + 2p, hidden)
    win = xp.unfold(1, k, 1)[:, :t].reshape(b, t, g, d // g, k)  # (batch, frames, groups, in, kernel)
    w = conv.weight.view(g, d // g, d // g, k)  # (groups, out, in, kernel)
    y = torch.einsum("btgik,goik->btgo", win, w).reshape(b, t, d) + conv.bias
    return pos.act(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=7)
    p.add_argument("--frames", type=int, default=568)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    if args.reps < 1:
        p.error(f"--reps {args.reps}: expected at least 1")
    device = torch.device(args.device)
    torch.manual_seed(0)
    pos = PositionalConvEmbedding(load_model_config(args.preset)).to(device)
    x = torch.randn(args.batch, args.frames, pos.conv.in_channels, device=device, requires_grad=True)
    params = [x, *pos.parameters()]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def conv(benchmark: bool = False) -> torch.Tensor:
        torch.backends.cudnn.benchmark = benchmark
        try:
            with amp:
                return pos(x)
        finally:
            torch.backends.cudnn.benchmark = False

    def unfold() -> torch.Tensor:
        with amp:
            return unfolded(pos, x)

    impls = {"nn.Conv1d": conv, "unfold + einsum": unfold}
    if device.type == "cuda":
        sync()
        t0 = time.perf_counter()
        torch.autograd.grad(conv(True).float().sum(), params)
        sync()
        print(f"cudnn.benchmark: first forward + backward (tuning this shape) {time.perf_counter() - t0:.2f} s")
        impls["nn.Conv1d + cudnn.benchmark"] = lambda: conv(True)
    ref, new = conv().float(), unfold().float()
    print(f"preset {args.preset}, {args.batch} x {args.frames} frames, {args.device}: unfold output max |diff| "
          f"{(ref - new).abs().max().item():.1e} (of max |y| {ref.abs().max().item():.1e})")
    g = torch.randn_like(ref)
    times: dict[str, list[float]] = {k: [] for k in impls}
    for rep in range(args.reps + 1):
        for name in impls if rep % 2 == 0 else reversed(impls):
            sync()
            t0 = time.perf_counter()
            torch.autograd.grad(impls[name]().float(), params, g)
            sync()
            if rep:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in impls:
        print(f"{k:>28}: median {1000 * med[k]:.2f} ms forward + backward, {med['nn.Conv1d'] / med[k]:.2f}x "
              f"nn.Conv1d's speed")


if __name__ == "__main__":
    main()
