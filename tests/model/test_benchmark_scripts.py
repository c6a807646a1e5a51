"""The benchmarks stay runnable: `benchmarks/gpu.py --smoke` runs the real training path on the CPU,
`cnn_kernels.py` still computes what the model computes, and the transformers comparison runs under bf16
autocast. (No timing is asserted: numbers live in the benchmarks.)"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke_runs() -> None:
    r = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "audio-s/s" in out and "MFU" in out and "data wait" in out


def test_cnn_kernel_benchmark_matches_the_model_and_runs() -> None:
    cmd = ["benchmarks/cnn_kernels.py", "--preset", "tiny", "--seconds", "1", "--reps", "1", "--threads", "1"]
    r = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    head = r.stdout.splitlines()[0]  # "... output max |diff| 9.5e-07, worst gradient relative diff 3.1e-06"
    out_diff = float(head.split("max |diff| ")[1].split(",")[0])
    grad_diff = float(head.rsplit(" ", 1)[1])
    assert out_diff < 1e-4 and grad_diff < 1e-4, head
    assert "super-row GEMM / nn.Conv1d time" in r.stdout


def test_transformers_comparison_runs_with_autocast() -> None:
    """The bf16 path that benchmarks/gpu_device.sh takes on a GPU, here on the CPU with the tiny preset."""
    cmd = ["benchmarks/pretrain_throughput.py", "--preset", "tiny", "--seconds", "1.5", "1", "--reps", "1",
           "--warmup", "0", "--threads", "1", "--precision", "bf16", "--no-memory"]
    r = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cpu bf16" in r.stdout and "speed-up earful / transformers" in r.stdout
