"""Where a run trained: ``RUN/machines.jsonl``, one line each time a process starts or resumes it (the step it
starts at, the host, CPU, accelerator, processes, threads, and the versions of Python, torch and earful).

Another CPU or GPU gives other bits (its kernels differ), so a run resumed elsewhere, or a study whose runs were
trained on several machines (``earful study merge``), is not bit-identical to one trained in one place: this file
says where each stretch of steps ran. Written by the main rank only, after the history (``recipe.py``)."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

from earful.train.monitor import JsonlLog, read_jsonl

MACHINES = "machines.jsonl"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def this_machine(device: torch.device, world_size: int) -> dict[str, Any]:
    """What a run's numbers depend on beyond its recipe: where it runs and with what."""
    from earful import __version__

    return {"host": socket.gethostname(), "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "world_size": world_size, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
            "earful": __version__, "platform": sys.platform}


def record_machine(root: Path, step: int, device: torch.device, world_size: int) -> None:
    """A line of ``machines.jsonl``: this process trains the run from ``step`` on, here. Lines of ``step`` on go,
    as ``record_resume`` drops a history segment that reached no checkpoint: their processes stopped before one
    (a fresh start, step 0, starts the file afresh), and none of the steps they trained are the run's."""
    machines = JsonlLog(root / MACHINES)
    machines.truncate_after(step - 1)  # as train.jsonl on a resume
    machines.write({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **this_machine(device, world_size)})


def machines_of(root: Path) -> list[dict[str, Any]]:
    """The lines of a run's ``machines.jsonl`` (none for a run of an earful that did not write it)."""
    return read_jsonl(root / MACHINES)
