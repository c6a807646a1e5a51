"""Running a study's jobs: in this process one after the other, or ``jobs`` at a time in worker processes.

A job is a pre-training or a fine-tuning + evaluation; a finished job may make more (a pre-training's
fine-tunings). Workers run with cores/jobs torch threads, their progress bars and logs in
``OUT/logs/worker-*.log``, and exit once the study process is gone (killed), so a rerun of the study is the
only writer of its folder. SIGTERM or SIGUSR1 to the study process stops it as a failed job does: each running
training checkpoints, then the study ends with ``StudyStopped``; running it again continues. So does Ctrl-C with
``jobs`` > 1 (the workers are in process groups of their own: only the study process hears it); with ``jobs: 1``
Ctrl-C makes a training in progress checkpoint and stop, as it does in ``earful pretrain`` (a second Ctrl-C, or one
outside training, stops at once; the run resumes from its last checkpoint)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)


class StudyStopped(RuntimeError):
    """A run of the study stopped before its end (a signal): the study stops; running it again continues.
    ``what``: what stopped, which the message follows with ``then`` (what to do; none: ""); ``stopped_by``: the
    signal that stopped it, as its trainer.json records ("" when unknown)."""

    def __init__(self, what: str, stopped_by: str = "", then: str = "rerun the study to resume it") -> None:
        super().__init__(f"{what}; {then}" if then else what)
        self.what = what
        self.stopped_by = stopped_by
        self.then = then

    def __reduce__(self) -> tuple[type[StudyStopped], tuple[str, str, str]]:
        """Pickled from its parts (a pool worker's to the study process): made again from its message, ``then``
        followed it twice."""
        return type(self), (self.what, self.stopped_by, self.then)


@dataclass
class Job:
    """One unit of a study. ``then`` makes the jobs that can start once this one has finished; ``devices``: the
    devices it trains on; ``done``: the stage's own check that it has finished (``earful/study/stages.py``; a
    cluster job is then not submitted again: its function only reads the results, here)."""

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    then: Callable[[Any], list[Job]] | None = None
    devices: int = 1
    done: Callable[[], bool] | None = None
    cost: float = 0.0  # how long it runs (a pre-training: hours of audio per device): in workers, the longest first


class Progress:
    """A study's jobs: the results so far, the jobs that may start, and a progress bar over them."""

    def __init__(self, jobs: list[Job], show: bool) -> None:
        self.results: dict[str, Any] = {}
        self.queue = deque(jobs)
        self.bar = tqdm(total=len(jobs), unit="run", desc="study", dynamic_ncols=True, disable=not show)

    def finished(self, job: Job, result: Any) -> None:
        """Keep the job's result; queue the jobs it lets start."""
        self.results[job.key] = result
        more = job.then(result) if job.then else []
        self.queue.extend(more)
        self.bar.total += len(more)
        self.bar.update(1)


def _exit_with(parent: int, every: float = 2.0) -> None:
    """A pool worker's watch: once the study process is gone (killed), exit rather than keep writing into
    a folder that a rerun of the study will resume (checkpoints are atomic; the rerun redoes the rest)."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(1)


def _worker_init(threads: int, log_dir: str, parent: int) -> None:
    """A pool worker: ``threads`` torch threads, its progress bars and logs in its own file, in a process group
    of its own: a terminal's Ctrl-C (SIGINT to the foreground group) reaches the study process alone, which stops
    the workers as after a failed job (SIGTERM: each training checkpoints), where before it reached every worker,
    which died of it mid-step while the study said they were checkpointing."""
    import torch

    signal.signal(signal.SIGTERM, _stopped_while_idle)  # first: a stop may come while torch is imported
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a scheduler's notice to every process: the study process's
    os.setpgid(0, 0)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    f = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    sys.stdout = sys.stderr = f
    from earful.cli import log_beside_bars

    log_beside_bars(f, force=True)


CODE = Path(__file__).resolve().parents[1]  # the earful package


def code_stamp() -> tuple[int, int, int]:
    """earful's code as it stands (its .py files: how many, their bytes, the latest change): a few milliseconds."""
    stats = [p.stat() for p in CODE.rglob("*.py")]
    return len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


def same_code(stamp: tuple[int, int, int]) -> None:
    """Refuse to start a job once earful's code has changed since the study started (``stamp``): modules a job
    imports as it goes came from the new code beside the old already imported (a study's gradient-noise job
    called a renamed function with the old keyword and failed, after 1 h 40 min). Run again: the study continues,
    with one code."""
    if code_stamp() != stamp:
        raise RuntimeError(f"earful's code ({CODE}) changed while this study ran: a job would mix two versions of "
                           "it; run the study again, which continues where it stopped with the code as it is now")


_STOPPED: list[str] = []  # in a pool worker: the stop signal it received while idle (its next job does not start)


def _stopped_while_idle(signum: int, _frame: Any) -> None:
    """An idle worker's SIGTERM: noted, not acted on (:func:`_run`)."""
    _STOPPED.append(signal.Signals(signum).name)


def _run(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """A job in a pool worker. SIGTERM (the study stopping its running jobs, :func:`_stop_workers`) stops it: a
    training's own handler checkpoints first, anything else raises here; one that came while the worker was idle
    (starting, or waiting for this job) keeps the job from starting. An idle worker only notes it, and ends on the
    executor's shutdown: killed by it while waiting for a task, it held the task queue's lock for ever, and a
    training that had checkpointed on the same stop then waited for that lock, and the study for the training (18
    minutes, until killed)."""
    def stop(signum: int, _frame: Any) -> None:
        raise StudyStopped(f"the study stopped this job ({signal.Signals(signum).name})", signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)  # first, then the note: a signal between the two is one or the other
    try:
        if _STOPPED:
            raise StudyStopped(f"the study stopped before this job started ({_STOPPED[0]})", _STOPPED[0])
        return fn(*args)
    finally:
        signal.signal(signal.SIGTERM, _stopped_while_idle)


def _stop_workers(procs: list[Any], busy: list[str]) -> None:
    """SIGTERM the pool's worker processes: a training checkpoints and stops on it (a rerun of the study resumes
    it), anything else ends. Without this, the study waited for every other running job to finish before it
    reported the error that stopped it."""
    if busy:
        log.warning("stopping the other running job(s) %s (SIGTERM: a training checkpoints; rerun the study to "
                    "continue)", ", ".join(busy))
    for p in procs:
        try:  # a worker may have ended already
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


@contextmanager
def _signals_stop_the_study() -> Iterator[None]:
    """SIGTERM and SIGUSR1 (``kill``, a scheduler's notice) raise ``StudyStopped`` in the study process, which
    stops the workers as a failed job does: each running training checkpoints. (Before, the study process died at
    once and its workers exited at their next look, ``_exit_with``, without a checkpoint: a pre-training lost
    everything since its last one.) A second signal while they stop is said and ignored."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def stopping(signum: int, _frame: Any) -> None:
        log.warning("received %s: already stopping (the running trainings checkpoint)", signal.Signals(signum).name)

    def stop(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        for s in before:
            signal.signal(s, stopping)
        raise StudyStopped(f"the study received {name}: its running jobs were stopped (a training checkpoints)", name,
                           then="rerun the study to continue")

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    for s in before:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _descendants(pids: list[int]) -> list[int]:
    """Every process descending from ``pids`` (children, theirs, ...), from each process's parent in
    ``/proc/PID/stat`` (Linux; elsewhere none): whatever session or group they put themselves in."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextmanager
def _suspend_with_workers(pool: ProcessPoolExecutor) -> Iterator[None]:
    """Ctrl-Z (SIGTSTP to the terminal's foreground group) suspends the study's workers, then the study process;
    ``fg`` or ``bg`` (SIGCONT) resumes them with it. The workers have process groups of their own (so that Ctrl-C
    reaches the study alone, :func:`_worker_init`), which the terminal's SIGTSTP and SIGCONT do not reach: the
    study process alone was suspended, and its workers went on training. SIGSTOP, not SIGTSTP, which the kernel
    discards for a process group with no parent in its session to resume it (an orphaned group: a study started
    by ``setsid`` or ``nohup ... &`` from a shell that has gone); a worker's whole group, its DataLoader's workers
    with it, and every process descending from it (:func:`_descendants`): a multi-device run's torchrun starts its
    ranks in sessions of their own, and they went on training."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def send(signum: int) -> None:
        workers = list(getattr(pool, "_processes", None) or {})  # the executor's own table of its workers
        for pid in workers:
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:  # not yet in a group of its own (just started), or ended
                with suppress(ProcessLookupError):
                    os.kill(pid, signum)
        for pid in _descendants(workers):
            with suppress(ProcessLookupError):
                os.kill(pid, signum)

    def suspend(_signum: int, _frame: Any) -> None:
        send(signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)  # until SIGCONT
        send(signal.SIGCONT)

    before = {s: signal.getsignal(s) for s in (signal.SIGTSTP, signal.SIGCONT)}
    signal.signal(signal.SIGTSTP, suspend)
    signal.signal(signal.SIGCONT, lambda _signum, _frame: send(signal.SIGCONT))  # `kill -STOP`, then `kill -CONT`
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def execute(jobs: list[Job], workers: int, log_dir: Path) -> dict[str, Any]:
    """Run ``jobs`` and their follow-ups, ``workers`` at a time (1: in this process, in order; in workers the
    longest (``cost``) first, which shortens the whole when the sizes differ); returns each job's result by key. A
    failed job stops the study: the other running jobs are stopped (a training checkpoints), finished jobs are
    kept; run again to continue."""
    if workers > 1:  # the longest first (a stable sort: plan order among equals), so the last to start is short
        jobs = sorted(jobs, key=lambda j: -j.cost)
    progress = Progress(jobs, show=workers > 1)
    queue, bar = progress.queue, progress.bar
    stamp = code_stamp()
    if workers <= 1:
        with _signals_stop_the_study():  # between trainings too (a probe, an evaluation): a training's own
            while queue:                # handler checkpoints inside it
                job = queue.popleft()
                same_code(stamp)
                progress.finished(job, job.fn(*job.args))
        return progress.results
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    log.info("running %d jobs at once (%d threads each); their logs: %s/worker-*.log", workers, threads, log_dir)
    with _signals_stop_the_study(), ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                                        initializer=_worker_init,
                                                        initargs=(threads, str(log_dir), os.getpid())) as pool, \
            _suspend_with_workers(pool):
        running: dict[Future, Job] = {}
        try:
            while queue or running:
                # as many as there are workers: a job handed to the executor's own queue could not be cancelled,
                # and would start, unsignalled, in the first worker a stop frees
                while queue and len(running) < workers:
                    job = queue.popleft()
                    same_code(stamp)
                    running[pool.submit(_run, job.fn, job.args)] = job
                done, _ = wait(running, timeout=10, return_when=FIRST_COMPLETED)
                bar.set_postfix_str(", ".join(j.key for j in running.values()), refresh=True)
                for fut in done:
                    job = running.pop(fut)
                    err = fut.exception()
                    if isinstance(err, StudyStopped):  # a training stopped by a signal of its own: not a failure
                        raise err
                    if err is not None:
                        raise RuntimeError(f"study job {job.key} failed (its log is in {log_dir}): {err}") from err
                    log.info("finished %s", job.key)
                    progress.finished(job, fut.result())
        except BaseException:
            procs = list((getattr(pool, "_processes", None) or {}).values())  # the executor's own table, which
            pool.shutdown(wait=False, cancel_futures=True)  # shutdown empties
            _stop_workers(procs, [j.key for j in running.values()])
            for p in procs:  # until each has checkpointed and ended (the executor's own exit no longer waits after
                p.join()  # shutdown(wait=False)); a signal meanwhile is said and ignored (_signals_stop_the_study)
            raise
        finally:
            bar.close()
    return progress.results
