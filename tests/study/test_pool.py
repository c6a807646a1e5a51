"""The study's pool of worker processes (jobs > 1): a failed job stops the study at once."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from earful.study.pool import Job, execute


def test_a_failed_job_stops_the_other_running_jobs(tmp_path, caplog) -> None:
    """With jobs: 2, after one job failed the study waited, silently, for the other running job to finish (here
    a minute of sleep; a pre-training, hours). Now the other workers get SIGTERM (a training checkpoints on it),
    the study says so and raises the first error."""
    jobs = [Job("slow", time.sleep, (60,)), Job("bad", int, ("not a number",))]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="earful.study.pool"), \
            pytest.raises(RuntimeError, match=r"study job bad failed .*invalid literal for int"):
        execute(jobs, 2, tmp_path / "logs")
    assert time.monotonic() - start < 40
    assert "stopping the other running job(s) slow (SIGTERM" in caplog.text


def test_workers_start_the_longest_jobs_first(tmp_path, monkeypatch) -> None:
    """With jobs: 2, 64 s and 128 s batches in plan order started a 64 s and a 128 s run, then the second 64 s one:
    the second 128 s run started last, alone. Now the longest start first (the order the workers take them in)."""
    (tmp_path / "started.py").write_text(
        "import pathlib, time\ndef job(out, key):\n    with open(pathlib.Path(out, 'order'), 'a') as f:\n"
        "        f.write(key)\n    time.sleep(2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned workers import it from there
    import started

    jobs = [Job(k, started.job, (str(tmp_path), k), cost=c) for k, c in (("a", 1), ("b", 3), ("c", 2))]
    execute(jobs, 2, tmp_path / "logs")
    assert (tmp_path / "order").read_text() in ("bca", "cba")  # b and c at once, then a (in plan order: a, b)


TRAINING = '''
import pathlib, signal, time

def train(out, key):
    """A stand-in for a pre-training: SIGTERM makes it write a checkpoint (2 s; where OUT/hold exists, until
    OUT/go does, at most a minute) and stop; its handler is there while it trains, as the trainer's
    (earful.train.engine.stop_signals)."""
    def checkpoint(signum, frame):
        if pathlib.Path(out, "hold").exists():
            end = time.monotonic() + 60
            while not pathlib.Path(out, "go").exists() and time.monotonic() < end:
                time.sleep(0.05)
        else:
            time.sleep(2)
        pathlib.Path(out, f"checkpoint-{key}").write_text(signal.Signals(signum).name)
        raise RuntimeError(f"{key} stopped")
    before = signal.signal(signal.SIGTERM, checkpoint)
    try:
        pathlib.Path(out, f"started-{key}").touch()
        time.sleep(60)
    finally:
        signal.signal(signal.SIGTERM, before)
'''

STUDY = '''
import sys
import training
from earful.study.pool import Job, execute
out = sys.argv[1]
execute([Job(k, training.train, (out, k)) for k in ("a", "b", "c")], 2, __import__("pathlib").Path(out, "logs"))
'''


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_to_the_study_makes_its_running_trainings_checkpoint(tmp_path, signum, await_files) -> None:
    """`kill` of a study running jobs: 2 killed the study process at once, and its workers exited at their next
    look without a checkpoint (a pre-training lost everything since its last one). Now the study stops its
    workers as after a failure (SIGTERM: each training checkpoints), waits for them, and ends with StudyStopped;
    a second signal meanwhile is said and ignored, and the job queued behind them never starts. The trainings
    checkpoint once the test has seen the second signal said, or 10 s after it was sent (OUT/hold, OUT/go): they
    had 2 s, and a test process held up longer (two busy cores) sent it to a study that had ended, or had put back
    the default handler and died of it."""
    (tmp_path / "training.py").write_text(TRAINING)
    (tmp_path / "hold").touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2])])}
    proc = subprocess.Popen([sys.executable, "-c", STUDY, str(tmp_path)], env=env, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    stopping, ignored = threading.Event(), threading.Event()

    def read() -> None:  # the study's stderr as it comes
        for line in proc.stderr:
            lines.append(line)
            if "stopping the other running job(s)" in line:
                stopping.set()
            if "received SIGTERM: already stopping" in line:
                ignored.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    await_files(proc, *(tmp_path / f"started-{k}" for k in "ab"))
    proc.send_signal(signum)
    # the first signal handled (it said so once its handler had given way to the second's): two SIGTERMs 0.5 s
    # apart could merge into one, pending, and the second was never heard
    assert stopping.wait(60), "".join(lines)
    proc.send_signal(signal.SIGTERM)  # impatient: while the trainings checkpoint (held until it is said)
    # said at once where the study's main thread takes the signal; where another of its threads does (the pool's,
    # the progress bar's), the main thread runs the handler once its wait for a worker returns: the trainings
    # are let go after a while all the same, and the line must come before the study ends
    ignored.wait(10)
    (tmp_path / "go").touch()
    proc.wait(timeout=60)
    reader.join(timeout=30)
    err = "".join(lines)
    assert proc.returncode != 0 and f"StudyStopped: the study received {signum.name}" in err, err
    assert "received SIGTERM: already stopping" in err, err
    assert [(tmp_path / f"checkpoint-{k}").read_text() for k in "ab"] == ["SIGTERM", "SIGTERM"]
    assert not (tmp_path / "started-c").exists()


def test_ctrl_c_to_a_study_of_two_jobs_makes_its_trainings_checkpoint(tmp_path, await_files) -> None:
    """Ctrl-C (SIGINT to the terminal's foreground process group) reached every worker, which died of it mid-step,
    while the study said it was stopping them with SIGTERM so that they checkpoint. The workers now have process
    groups of their own: the study alone hears it, and each training checkpoints."""
    (tmp_path / "training.py").write_text(TRAINING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2])])}
    # its own group, as a shell's foreground job, with Ctrl-C not ignored (a test run in the background, as
    # `nohup ... &` does, passes SIGINT on ignored, and Python then never turns it into KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-c", STUDY, str(tmp_path)], env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    await_files(proc, *(tmp_path / f"started-{k}" for k in "ab"))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err
    assert "stopping the other running job(s)" in err, err
    assert [(tmp_path / f"checkpoint-{k}").read_text() for k in "ab"] == ["SIGTERM", "SIGTERM"]
    assert not (tmp_path / "started-c").exists()


ONE_AT_A_TIME = '''
import pathlib, sys, time
from earful.study.pool import Job, execute
out = sys.argv[1]

def probe():
    """A stand-in for a probe or an evaluation: no signal handler of its own."""
    pathlib.Path(out, "started").touch()
    time.sleep(60)

execute([Job("probe", probe, ())], 1, pathlib.Path(out, "logs"))
'''


def test_a_signal_to_a_study_of_one_job_at_a_time_stops_it_between_trainings(tmp_path, await_files) -> None:
    """With jobs: 1, SIGTERM while a probe or an evaluation ran (no training's handler) killed the study with
    status 143 and no word; it stops it with StudyStopped, as during a training (status 4, "rerun the study")."""
    proc = subprocess.Popen([sys.executable, "-c", ONE_AT_A_TIME, str(tmp_path)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    await_files(proc, tmp_path / "started")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "StudyStopped: the study received SIGTERM" in err, err


TICKS = '''
import os, pathlib, subprocess, sys, time

LOOP = ("import sys, time\\nwith open(sys.argv[1], 'a') as f:\\n"
        "    for _ in range(120):\\n        f.write('.')\\n        f.flush()\\n        time.sleep(0.05)")

def tick(out, key):
    """A stand-in for a training: its pid, then a tick every 50 ms for 6 s; job b's ticks come from a child in a
    session of its own, as a multi-device run's torchrun starts its ranks."""
    pathlib.Path(out, f"pid-{key}").write_text(str(os.getpid()))
    if key == "b":
        child = subprocess.Popen([sys.executable, "-c", LOOP, str(pathlib.Path(out, f"ticks-{key}"))],
                                 start_new_session=True)
        pathlib.Path(out, "pid-child").write_text(str(child.pid))
        child.wait()
        return
    with open(pathlib.Path(out, f"ticks-{key}"), "a") as f:
        for _ in range(120):
            f.write(".")
            f.flush()  # each tick in the file at once (line buffering kept a line without its newline)
            time.sleep(0.05)
'''

TICKING = '''
import pathlib, sys
import ticks
from earful.study.pool import Job, execute
out = sys.argv[1]
execute([Job(k, ticks.tick, (out, k)) for k in "ab"], 2, pathlib.Path(out, "logs"))
'''


def _state(pid: int) -> str:
    """A process's state letter (/proc/PID/stat): R, S, T (stopped), ...; "gone" once it has ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_ctrl_z_suspends_a_study_of_two_jobs_with_its_workers(tmp_path, await_files) -> None:
    """Ctrl-Z (SIGTSTP to the terminal's foreground group) suspended the study process alone: its workers, in
    process groups of their own (so that Ctrl-C reaches the study alone), went on training. Now the study suspends
    its workers with it, and `fg` (SIGCONT to the study's group) resumes them all; the jobs then finish. So with a
    job's child in a session of its own (a multi-device run's torchrun ranks), which went on before."""
    (tmp_path / "ticks.py").write_text(TICKS)
    ticks = [tmp_path / f"ticks-{k}" for k in "ab"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2])])}
    proc = subprocess.Popen([sys.executable, "-c", TICKING, str(tmp_path)], stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own group, as a shell's foreground job
    await_files(proc, *ticks, tmp_path / "pid-child")
    deadline = time.monotonic() + 60
    while not all(t.stat().st_size for t in ticks):  # both ticking, so that a tick while suspended would show
        assert time.monotonic() < deadline and proc.poll() is None, [t.stat().st_size for t in ticks]
        time.sleep(0.05)
    workers = [int((tmp_path / f"pid-{k}").read_text()) for k in ("a", "b", "child")]
    os.killpg(proc.pid, signal.SIGTSTP)
    deadline = time.monotonic() + 10
    while any(_state(p) != "T" for p in (proc.pid, *workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [_state(p) for p in (proc.pid, *workers)] == ["T", "T", "T", "T"]
    sizes = [t.stat().st_size for t in ticks]
    time.sleep(0.5)
    assert [t.stat().st_size for t in ticks] == sizes  # suspended: no tick
    assert all(s < 120 for s in sizes)
    os.killpg(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [t.read_text() for t in ticks] == ["." * 120] * 2


FAILING_BESIDE_A_TRAINING = '''
import sys
import training
from earful.study.pool import Job, execute
out = sys.argv[1]
execute([Job("a", training.train, (out, "a")), Job("bad", int, ("not a number",))], 2,
        __import__("pathlib").Path(out, "logs"))
'''


def test_a_failed_job_beside_a_training_ends_the_study_once_the_training_has_checkpointed(tmp_path) -> None:
    """A job failed (a gradient-noise stage) while a pre-training ran: the study SIGTERMed every worker, and the
    failed job's worker, idle by then and waiting for a task while holding the task queue's lock, died holding
    it. The training checkpointed on its SIGTERM, then waited for that lock for ever to take its next task, and
    the study waited for it (seen: 18 minutes, until killed). An idle worker now ignores the stop's SIGTERM (it
    ends on the executor's own shutdown), so the study ends with the first error once the training has
    checkpointed."""
    (tmp_path / "training.py").write_text(TRAINING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2])])}
    proc = subprocess.Popen([sys.executable, "-c", FAILING_BESIDE_A_TRAINING, str(tmp_path)], env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the study never ended")
    assert proc.returncode != 0 and "study job bad failed" in err, err
    assert (tmp_path / "checkpoint-a").read_text() == "SIGTERM"


DISPOSITIONS = '''
import pathlib

def dispositions():
    """This process's ignored and caught signals (/proc/self/status), while a job runs."""
    status = dict(line.split(":\\t", 1) for line in pathlib.Path("/proc/self/status").read_text().splitlines()
                  if ":\\t" in line)
    return int(status["SigIgn"], 16), int(status["SigCgt"], 16)
'''


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc (Linux)")
def test_a_worker_takes_sigterm_during_a_job_and_ignores_the_schedulers_notice(tmp_path, monkeypatch) -> None:
    """A pool worker's SIGTERM is caught while it runs a job (the job stops; a training's own handler checkpoints)
    and ignored while it is idle (above); SIGUSR1, a scheduler's notice to every process, is the study process's:
    a worker killed by it while idle held the task queue's lock, as with SIGTERM."""
    (tmp_path / "dispositions.py").write_text(DISPOSITIONS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    import dispositions

    results = execute([Job(k, dispositions.dispositions, ()) for k in "ab"], 2, tmp_path / "logs")
    for ignored, caught in results.values():
        bit = {s: 1 << (s - 1) for s in (signal.SIGTERM, signal.SIGUSR1)}
        assert caught & bit[signal.SIGTERM] and not ignored & bit[signal.SIGTERM]
        assert ignored & bit[signal.SIGUSR1]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_job_does_not_start_once_earfuls_code_has_changed(tmp_path, monkeypatch, workers) -> None:
    """A study ran 1 h 40 min, earful's code was changed meanwhile, and its gradient-noise job imported the new
    module beside the old ones already imported: it called a renamed keyword and failed. A job no longer starts
    once the code has changed since the study started; the study says so (run again: it continues)."""
    import earful.study.pool as pool

    calls = iter(range(100))
    starts = 1 + workers  # the study's stamp, then the first jobs' checks: the code changes after them
    monkeypatch.setattr(pool, "code_stamp", lambda: (1, 1, 1) if next(calls) < starts else (1, 1, 2))
    done: list[str] = []
    jobs = [Job(k, time.sleep, (0.2,)) for k in "abc"] if workers > 1 else \
        [Job(k, done.append, (k,)) for k in "abc"]
    with pytest.raises(RuntimeError, match=r"earful's code \(.*earful\) changed while this study ran: a job would mix "
                                           r"two versions of it; run the study again"):
        execute(jobs, workers, tmp_path / "logs")
    assert done == (["a"] if workers == 1 else [])


def test_the_code_stamp_changes_with_any_python_file_of_the_package(tmp_path, monkeypatch) -> None:
    import os as _os

    import earful.study.pool as pool

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not code")
    monkeypatch.setattr(pool, "CODE", tmp_path)
    stamp = pool.code_stamp()
    (tmp_path / "notes.txt").write_text("still not code")
    assert pool.code_stamp() == stamp
    (tmp_path / "sub" / "m.py").write_text("x = 2\n")  # the same size: its time of change tells
    _os.utime(tmp_path / "sub" / "m.py", ns=(stamp[2] + 10**9, stamp[2] + 10**9))
    assert pool.code_stamp() != stamp
    changed = pool.code_stamp()
    (tmp_path / "n.py").write_text("")
    _os.utime(tmp_path / "n.py", ns=(0, 0))  # an old file added: the count tells
    assert pool.code_stamp() != changed


def test_a_stop_that_came_while_a_worker_was_idle_keeps_its_next_job_from_starting(monkeypatch) -> None:
    """A worker still starting (importing torch) when the study stopped ignored the SIGTERM, then ran the job it
    was handed to its end (a minute of sleep here; a pre-training, hours): seen once in a loaded CI run. The stop
    is noted while idle, and the job does not start; during a job it stops the job."""
    import earful.study.pool as pool

    monkeypatch.setattr(pool, "_STOPPED", [])
    before = signal.signal(signal.SIGTERM, pool._stopped_while_idle)
    try:
        ran: list[int] = []
        assert pool._run(ran.append, (1,)) is None and ran == [1]  # no stop: the job runs
        signal.raise_signal(signal.SIGTERM)  # idle: noted, nothing raised
        assert pool._STOPPED == ["SIGTERM"]
        with pytest.raises(pool.StudyStopped, match=r"the study stopped before this job started \(SIGTERM\)"):
            pool._run(ran.append, (2,))
        assert ran == [1] and signal.getsignal(signal.SIGTERM) is pool._stopped_while_idle
        pool._STOPPED.clear()
        with pytest.raises(pool.StudyStopped, match=r"the study stopped this job \(SIGTERM\)"):
            pool._run(signal.raise_signal, (signal.SIGTERM,))  # during a job: it stops
    finally:
        signal.signal(signal.SIGTERM, before)


STOPPED = """
import os
import signal

from earful.study.pool import StudyStopped


def stopped():
    raise StudyStopped("pre-training x stopped by SIGTERM", "SIGTERM")


def terminated():
    os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.parametrize(("job", "what"), [("stopped", "pre-training x stopped by SIGTERM"),
                                           ("terminated", "the study stopped this job (SIGTERM)")])
def test_a_jobs_stop_reaches_the_study_saying_once_what_to_do(job, what, tmp_path, monkeypatch) -> None:
    """With jobs: 2 a job's StudyStopped came to the study process made again from its whole message, which the
    advice then followed a second time ("...; rerun the study to resume it; rerun the study to resume it"); a job
    a SIGTERM stopped (a worker's own, from outside) said no more than "the study stopped this job (SIGTERM)"."""
    (tmp_path / "stopping.py").write_text(STOPPED)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    import stopping

    from earful.study.pool import StudyStopped

    with pytest.raises(StudyStopped) as stop:
        execute([Job("a", getattr(stopping, job), ())], 2, tmp_path / "logs")
    assert str(stop.value) == f"{what}; rerun the study to resume it"
    assert (stop.value.what, stop.value.stopped_by) == (what, "SIGTERM")
