"""The CNN feature encoder two ways, forward + backward on the CPU (or a GPU: --device cuda), measured side by side.

    python benchmarks/cnn_kernels.py --preset base --threads 1
    python benchmarks/cnn_kernels.py --preset small --threads 1
    python benchmarks/cnn_kernels.py --device cuda --precision bf16 --batch 6 --seconds 15.6   # GPU

On a GPU a third contender is timed: ``nn.Conv1d`` with ``torch.backends.cudnn.benchmark`` (cuDNN times its
algorithms once per shape; that first call is printed apart). bf16 runs the encoder's weights and input in bf16.

Peer: earful's ``FeatureEncoder`` (``nn.Conv1d`` → oneDNN). Candidate: the same weights run as GEMMs on
channels-last "super-rows". With the time axis grouped ``stride`` frames at a time, (batch·T/s, s·C) is a
plain view of a contiguous (batch, T, C) tensor, and a kernel of k taps reads ceil(k/s) consecutive
super-rows: one GEMM each (the second on the view shifted by one row), no im2col copy. The backward is
written by hand the same way (``addmm_`` into shifted views). Frames past an utterance's valid length are
computed and ignored; the first layer's GroupNorm takes its statistics over the valid frames only.

Not used by earful's model: on this 2-core box it was 11 % faster at BASE widths and 29 % slower at
``small`` widths (benchmarks/README.md). Kept so the measurement can be repeated on other CPUs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from earful.model.components import FeatureEncoder
from earful.model.config import load_model_config


class SuperRowConv(torch.autograd.Function):
    """Strided conv of a (batch, m, C) tensor, m % stride == 0 → (batch, m/stride, O); no padding."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride):  # type: ignore[override]
        b, m, c = x.shape
        o, _, k = weight.shape
        s = stride
        rows = x.reshape(b * m // s, s * c)  # (super-rows, s·C)
        w = weight.permute(0, 2, 1).reshape(o, k * c)  # (O, k·C), tap-major like the rows
        n = rows.shape[0]
        y = torch.empty(n, o, dtype=x.dtype, device=x.device)
        for q in range(math.ceil(k / s)):  # tap groups [q·s, q·s + s)
            cols = min(s, k - q * s) * c
            wq = w[:, q * s * c: q * s * c + cols].t()
            if q == 0:
                torch.mm(rows[:, :cols], wq, out=y) if bias is None else torch.addmm(bias, rows[:, :cols], wq, out=y)
            else:
                y[: n - q].addmm_(rows[q:, :cols], wq)
        ctx.save_for_backward(rows, w)
        ctx.dims = (b, m, c, o, k, s, bias is not None)
        return y.view(b, m // s, o)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        rows, w = ctx.saved_tensors
        b, m, c, o, k, s, has_bias = ctx.dims
        n = rows.shape[0]
        g = grad.reshape(n, o).contiguous()
        dx = (torch.zeros if k < s else torch.empty)(n, s * c, dtype=g.dtype, device=g.device)
        dw = torch.empty(o, k * c, dtype=g.dtype, device=g.device)
        for q in range(math.ceil(k / s)):
            cols = min(s, k - q * s) * c
            wq = w[:, q * s * c: q * s * c + cols]
            if q == 0:
                torch.mm(g, wq, out=dx[:, :cols])
            else:
                dx[q:, :cols].addmm_(g[: n - q], wq)
            torch.mm(g[: n - q].t(), rows[q:, :cols], out=dw[:, q * s * c: q * s * c + cols])
        db = g.sum(0) if has_bias else None
        return dx.view(b, m, c), dw.view(o, k, c).permute(0, 2, 1), db, None


def super_row_encoder(enc: FeatureEncoder, wave: torch.Tensor) -> torch.Tensor:
    """(batch, samples) → (batch, frames, channels), the same numbers as ``enc(wave).transpose(1, 2)``."""
    if any(enc.paddings) or not isinstance(enc.layers[0].norm, torch.nn.GroupNorm):
        raise SystemExit("this benchmark covers fairseq's CNN (no conv padding, GroupNorm in the first layer)")
    total = math.prod(enc.strides)
    x = F.pad(wave, (0, (-wave.shape[1]) % total))[:, :, None]  # (batch, samples, 1), a multiple of every stride
    valid = wave.shape[1]
    for i, layer in enumerate(enc.layers):
        x = SuperRowConv.apply(x, layer.conv.weight, layer.conv.bias, enc.strides[i])  # (batch, m, C)
        valid = (valid - enc.kernels[i]) // enc.strides[i] + 1
        if i == 0:
            gn = layer.norm
            var, mean = torch.var_mean(x[:, :valid], dim=1, keepdim=True, correction=0)  # (batch, 1, C)
            a = (var + gn.eps).rsqrt() * gn.weight
            x = torch.addcmul(gn.bias - mean * a, x, a)
        x = F.gelu(x)
    return x[:, :valid]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "autocast"],
                   help="bf16: weights and input in bf16; autocast: fp32 weights under bf16 autocast, as training")
    args = p.parse_args()
    if args.reps < 1:
        p.error(f"--reps {args.reps}: expected at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32  # autocast: fp32 weights
    enc = FeatureEncoder(load_model_config(args.preset)).to(device, dtype)
    # not a multiple of the total stride
    wave = torch.randn(args.batch, int(16000 * args.seconds) - 77, device=device, dtype=dtype)
    params = list(enc.parameters())
    impls = {"nn.Conv1d": lambda: enc(wave).transpose(1, 2), "super-row GEMM": lambda: super_row_encoder(enc, wave)}
    if args.precision == "autocast":  # the super-row kernels write into preallocated outputs: not under autocast

        def autocast_conv() -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return enc(wave).transpose(1, 2)

        impls["nn.Conv1d"] = autocast_conv
    if device.type == "cuda":

        def tuned() -> torch.Tensor:
            torch.backends.cudnn.benchmark = True
            try:
                return enc(wave).transpose(1, 2)
            finally:
                torch.backends.cudnn.benchmark = False

        t0 = time.perf_counter()
        torch.autograd.grad(tuned(), params, torch.ones_like(tuned()))
        torch.cuda.synchronize()
        print(f"cudnn.benchmark: first forward + backward (tuning this shape) {time.perf_counter() - t0:.2f} s")
        impls["nn.Conv1d + cudnn.benchmark"] = tuned

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    ref, new = impls["nn.Conv1d"](), impls["super-row GEMM"]()
    g = torch.randn_like(ref)
    grads = [torch.autograd.grad(impls[k](), params, g) for k in ("nn.Conv1d", "super-row GEMM")]
    rel = max(((a - b).norm() / a.norm()).item() for a, b in zip(*grads, strict=True))
    print(f"preset {args.preset}, {args.batch} × {args.seconds:g} s, {args.device} {args.precision}, threads "
          f"{args.threads}: output max |diff| "
          f"{(ref - new).abs().max().item():.1e}, worst gradient relative diff {rel:.1e}")

    if args.precision == "autocast":
        print("note: under autocast only nn.Conv1d runs in bf16; the super-row GEMMs run in fp32, so their ratio "
              "to nn.Conv1d is not like for like (compare them with --precision bf16 or fp32)")
    times: dict[str, list[float]] = {k: [] for k in impls}
    order = list(impls)
    for rep in range(args.reps + 1):  # the first round warms up
        for name in order if rep % 2 == 0 else order[::-1]:
            sync()
            t0 = time.perf_counter()
            torch.autograd.grad(impls[name](), params, g)
            sync()
            if rep:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>28}: median {1000 * med[k]:.1f} ms (min {1000 * min(v):.1f}, max {1000 * max(v):.1f}) forward + "
              f"backward, {med['nn.Conv1d'] / med[k]:.2f}x nn.Conv1d's speed")
    print(f"super-row GEMM / nn.Conv1d time: {med['super-row GEMM'] / med['nn.Conv1d']:.2f}")


if __name__ == "__main__":
    main()
