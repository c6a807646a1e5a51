"""The benchmarks stay runnable: `benchmarks/gpu.py --smoke` runs the real training path on the CPU.
(No timing is asserted: numbers live in the benchmarks.)"""

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
