"""Named statistics of one optimizer step: summed over the step's micro-batches on this device, then over the
ranks in one all-reduce, and read to the host once (one device-to-host copy a step)."""

from __future__ import annotations

import torch

from earful.train import distributed as D


class StepStats:
    """``add(name=value, ...)`` per micro-batch; ``reduce()`` → ``{name: float}`` (a list for a vector value,
    e.g. one perplexity per codebook group). Values may be host numbers or tensors on the device; tensors are
    summed where they are and never synchronised before ``reduce``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.tensors: dict[str, torch.Tensor] = {}
        self.numbers: dict[str, float] = {}

    def add(self, **named: torch.Tensor | float) -> None:
        for name, value in named.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().to(torch.float64)
                self.tensors[name] = self.tensors[name] + value if name in self.tensors else value
            else:
                self.numbers[name] = self.numbers.get(name, 0) + value

    def reduce(self, d: D.Dist) -> dict[str, float | list[float]]:
        names = list(self.tensors)
        flat = [self.tensors[n].reshape(-1) for n in names]
        host = torch.tensor([float(v) for v in self.numbers.values()], dtype=torch.float64)
        packed = torch.cat([*flat, host.to(self.device)])  # (values,)
        D.all_reduce_sum(packed, d)
        values = packed.tolist()
        out: dict[str, float | list[float]] = {}
        at = 0
        for name, t in zip(names, flat, strict=True):
            n = t.numel()
            out[name] = values[at] if self.tensors[name].dim() == 0 else values[at : at + n]
            at += n
        for name in self.numbers:
            out[name] = values[at]
            at += 1
        return out
