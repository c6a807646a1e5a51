"""earful/data/parallel.py: ordered_map's pool and the signals its workers take."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import multiprocessing, sys, time
from earful.data.parallel import ordered_map

def slow(x):
    time.sleep(60)
    return x

if __name__ == "__main__":
    items = ordered_map(slow, range(8), workers=2)
    it = iter(items)
    import threading
    def report():
        time.sleep(1.0)
        print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    threading.Thread(target=report, daemon=True).start()
    next(it)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_pool_workers_end_when_their_parent_dies_of_a_signal_to_the_group(tmp_path: Path) -> None:
    """Pool workers ignore the stop signals unless their parent sends them (a Slurm job's SIGTERM reaches every
    process; a worker killed idle held the task queue's lock and the parent's Pool.terminate hung). A parent that
    dies of the group's signal (`earful prepare` installs no handler) left its workers computing on, then printing
    broken-pipe tracebacks: they now end within about half a second of their parent."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    os.killpg(proc.pid, signal.SIGTERM)  # the parent dies (Python's default); its workers ignore it
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent by 10 s"
    assert "Traceback" not in out, out
