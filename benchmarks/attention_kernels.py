"""Self-attention with a key mask against without one: what ``lengths=None`` buys.

    python benchmarks/attention_kernels.py                        # CPU, fp32
    python benchmarks/attention_kernels.py --device cuda --precision bf16   # on a GPU (gpu_device.sh)

earful's trainers pass ``lengths=None`` for a batch without padding (fairseq's default crops every batch to its
shortest utterance, so all of them), and the transformer then calls ``scaled_dot_product_attention`` without
``attn_mask``. With a mask, even an all-True one, PyTorch cannot use FlashAttention on a GPU and falls back to
the memory-efficient kernel. This times forward + backward of SDPA at BASE's shape (12 heads of 64, 15.6 s
utterances = 779 frames), both ways, interleaved, and prints the medians and their ratio. The outputs are
compared too (they agree to rounding).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--frames", type=int, default=779)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.1, help="attention dropout (BASE: 0.1)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--layers", type=int, default=12, help="calls per timed repetition (one per layer)")
    args = p.parse_args()
    if args.reps < 1:
        p.error(f"--reps {args.reps}: expected at least 1")
    if args.layers < 1:
        p.error(f"--layers {args.layers}: expected at least 1")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    shape = (args.batch, args.heads, args.frames, args.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=dtype)
    key_mask = torch.ones(args.batch, 1, 1, args.frames, dtype=torch.bool, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(mask: torch.Tensor | None, dropout: float) -> tuple[float, torch.Tensor]:
        sync()
        t0 = time.perf_counter()
        for _ in range(args.layers):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            y.backward(grad)
        sync()
        return time.perf_counter() - t0, y.detach()

    times: dict[str, list[float]] = {"key mask": [], "none": []}
    for i in range(args.reps + 2):
        order = (("key mask", key_mask), ("none", None)) if i % 2 == 0 else (("none", None), ("key mask", key_mask))
        for name, mask in order:
            dt, _ = run(mask, args.dropout)
            if i >= 2:
                times[name].append(dt)
    (_, a), (_, b) = run(key_mask, 0.0), run(None, 0.0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"SDPA forward + backward, {args.layers} calls of {shape} ({args.device} {args.precision}, dropout "
          f"{args.dropout}), medians of {args.reps}: key mask {1000 * med['key mask']:.2f} ms, none "
          f"{1000 * med['none']:.2f} ms: {med['key mask'] / med['none']:.2f}x; outputs without dropout differ by "
          f"{(a.float() - b.float()).abs().max().item():.1e} at most")


if __name__ == "__main__":
    main()
