"""earful/data/parallel.py: ordered_map's pool and the signals its workers take."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


LEAVE_EARLY = """
import random, sys
from earful.data.parallel import ordered_map

def big(x):
    return b"x" * 300_000  # a result larger than a pipe holds, as an encoded shard member

if __name__ == "__main__":
    rng = random.Random(0)
    for _ in range(int(sys.argv[1])):
        stop = rng.randrange(10, 500)
        it = ordered_map(big, range(10**6), workers=2)
        for k, _ in enumerate(it):
            if k == stop:
                break
        it.close()
    print("done", flush=True)
"""


def test_leaving_the_map_early_with_large_results_never_hangs(tmp_path: Path) -> None:
    """Left early (a bad row, Ctrl-C, a stop signal) while workers wrote results larger than a pipe holds, a
    multiprocessing.Pool's terminate hung in 2 runs of 20: a worker killed mid-write kept the results' lock. Each
    worker now has a pipe of its own; 30 early exits in a row end."""
    script = tmp_path / "early.py"
    script.write_text(LEAVE_EARLY)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    try:
        out = subprocess.run([sys.executable, str(script), "30"], env=env, capture_output=True, text=True,
                             timeout=120, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise AssertionError("ordered_map hung when left early") from None
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]


def _square_but_37(x: int) -> int:
    if x == 37:
        raise ValueError(f"row {x} is bad")
    return x * x


class _Unpicklable(Exception):
    def __init__(self, lock: object) -> None:
        super().__init__("a lock inside")
        self.lock = lock


def _unpicklable(x: int) -> int:
    import threading

    raise _Unpicklable(threading.Lock())


def test_results_come_in_order_and_a_workers_error_is_raised_after_the_results_before_it() -> None:
    from earful.data.parallel import ordered_map

    assert list(ordered_map(abs, range(-500, 500), workers=3, window=64)) == [(x, abs(x)) for x in range(-500, 500)]
    assert list(ordered_map(abs, [], workers=2)) == []
    got = []
    with pytest.raises(ValueError, match="row 37 is bad"):
        for x, y in ordered_map(_square_but_37, range(100), workers=2, window=16):
            got.append((x, y))
    assert got == [(x, x * x) for x in range(37)]
    with pytest.raises(RuntimeError, match=r"a lock inside.*could not be sent from the worker"):
        list(ordered_map(_unpicklable, range(4), workers=2))


def _kill_myself_at_5(x: int) -> int:
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # as the system's OOM killer would
    return x


def test_a_worker_killed_by_the_system_is_an_error_not_a_hang() -> None:
    """A multiprocessing.Pool replaced a killed worker and waited for ever for the result it had lost."""
    import threading

    from earful.data.parallel import ordered_map

    raised: list[BaseException] = []

    def run() -> None:
        try:
            list(ordered_map(_kill_myself_at_5, range(40), workers=2, window=8))
        except BaseException as e:  # noqa: BLE001 - looked at below
            raised.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "ordered_map hung when a worker was killed"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert "a worker process of earful's ordered_map died (exit code -9" in str(raised[0])
