"""Process-group set-up from ``torchrun``'s environment, and small all-reduce helpers."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_joined = False  # whether this process joined a process group (see ``joined``)


def joined() -> bool:
    """Whether this process joined a process group: the command line then ends it without Python's
    finalization (``earful.cli.run``)."""
    return _joined


def resolve_device(device: str | torch.device, key: str = "device") -> torch.device:
    """``device``, with "auto" meaning CUDA where there is one, else the CPU. Refused naming its setting ``key``
    (``device`` or ``--device``) where it is not a device, or a CUDA device this torch build or machine lacks."""
    shown = f"{key} {device}" if key.startswith("-") else f"{key}={device}"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{shown}: not a device (expected auto, cpu, cuda or cuda:N)") from None
    if isinstance(device, str) and dev.type not in ("cpu", "cuda"):  # mps, meta …: earful runs on neither; they
        # failed late, in torch's words ("Cannot copy out of meta tensor"), after the checkpoint was read
        raise ValueError(f"{shown}: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(f"{shown}: no CUDA in this torch build ({torch.__version__}); use cpu or auto")
        if not torch.cuda.is_available():
            raise ValueError(f"{shown}: no CUDA device on this machine; use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{shown}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def launched_processes() -> int:
    """How many processes ``torchrun`` launched for this command (its WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def one_process(command: str) -> None:
    """Refuse ``earful command``, which runs in one process, under ``torchrun`` with more than one: every rank
    would do the whole work into the same output (evaluate's second rank was told that "another earful evaluate
    is running in this folder", its rank 0)."""
    if (world := launched_processes()) > 1:
        raise ValueError(f"earful {command} runs in one process; run it without torchrun (here WORLD_SIZE={world})")


def setup(device: str = "auto") -> Dist:
    """Join the process group when run under ``torchrun`` (gloo on CPU, NCCL on CUDA)."""
    world = launched_processes()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, "device")
    if dev.type == "cuda" and dev.index is None:  # one GPU a process: torchrun's local rank
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if world > 1 and not dist.is_initialized():
        global _joined
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        _joined = True
    return Dist(rank=rank, local_rank=local, world_size=world, device=dev)


def teardown(finished: bool = False) -> None:
    """Leave the process group. After a finished run, together: a rank that closed its connections while
    another was still in its last collective could make the other's communication thread abort the process
    at exit. After an error, at once: the other ranks may never reach a barrier."""
    if dist.is_initialized():
        try:
            if finished:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def all_gather_object(obj: object, d: Dist) -> list[object]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not d.enabled:
        return [obj]
    out: list[object] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def no_sync(model: torch.nn.Module, active: bool):
    """DDP's ``no_sync`` on non-final micro-batches; a no-op context otherwise."""
    if active and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()
