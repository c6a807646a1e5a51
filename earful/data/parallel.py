"""Work over many files in worker processes, results in input order, without running ahead of the consumer
(``Pool.imap`` alone reads its whole input at once: 16 M manifest rows would sit in its queue)."""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a scheduler's pre-emption: stop, keeping what is finished
# the exit status of a command so stopped (a trainer, a study, `earful shard`, `earful prepare`): run it again
# (with --resume where it has one) to go on; here, where no torch is imported, so that a command that never needs
# torch does not import it (a second of start-up during which a SIGTERM met no handler)
EXIT_STOPPED = 4


class Stopped(Exception):
    """A stop signal (``STOP_SIGNALS``) arrived while :func:`stop_signals_raise` was in force."""


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, window: int = 512) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in ``items``' order, ``fn`` run by ``workers`` processes (here when 1), at most
    ``window`` items ahead. Here, Ctrl-C and the stop signals wait for the ``fn(x)`` under way to return
    (:func:`_signals_held`); with workers they are the parent's (:func:`ignore_stop_signals`), and leaving the
    map early (Ctrl-C, a stop signal, the consumer's error, ``close()``) ends the workers where they stand.

    Each worker has a pipe of its own, and takes chunks of items in turn (chunk k is worker k mod N's), at most two
    at a time: results come back in order by reading the workers in turn, and no lock is shared. (A
    ``multiprocessing.Pool`` shares one lock for its results among its workers: one killed while it wrote a
    result larger than a pipe holds, as encoded shard members are, kept the lock for ever, and the parent's
    ``Pool.terminate`` waited on it: `earful shard --workers 2` left early hung in 2 runs of 20.)"""
    if workers <= 1:
        for x in items:
            with _signals_held():
                r = fn(x)
            yield x, r
        return
    chunk_size = max(1, window // (4 * workers))
    it = iter(items)
    crew: list[_Worker] = []
    try:
        for _ in range(workers):  # inside: one that fails to start ends those started before it
            crew.append(_Worker(fn))
        in_flight: collections.deque[tuple[_Worker, list[T]]] = collections.deque()

        def send(k: int) -> None:
            chunk = list(itertools.islice(it, chunk_size))
            if chunk:
                crew[k % workers].send(chunk)
                in_flight.append((crew[k % workers], chunk))

        sent = 0
        for _ in range(2 * workers):  # two chunks a worker: one it works on, one waiting
            send(sent)
            sent += 1
        while in_flight:
            worker, chunk = in_flight.popleft()
            results, error = worker.receive()
            if error is not None:
                yield from zip(chunk, results, strict=False)  # the items before the one that failed
                raise error
            send(sent)  # to the worker just read: it has one chunk left, and takes this one next
            sent += 1
            yield from zip(chunk, results, strict=True)
        for worker in crew:
            worker.finish()
    finally:
        for worker in crew:
            worker.end()


class _Worker:
    """A process that runs ``fn`` on each chunk of items it receives, and sends their results back, through a pipe
    of its own (a duplex ``Pipe``: a chunk of rows or paths one way, a list of results the other)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.conn, theirs = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=_serve, args=(fn, theirs), daemon=True)
        self.process.start()
        theirs.close()

    def send(self, chunk: list[Any]) -> None:
        try:
            self.conn.send(chunk)
        except ConnectionError:  # its end closed: it died
            raise self._died() from None

    def receive(self) -> tuple[list[Any], Exception | None]:
        """The results of the chunk it works on, up to the first error of ``fn``, and that error (or None)."""
        try:
            return self.conn.recv()
        except (EOFError, ConnectionError):  # reset where it died with a chunk unread
            raise self._died() from None

    def _died(self) -> RuntimeError:
        self.process.join(ENDING_SECONDS)
        return RuntimeError(f"a worker process of earful's ordered_map died (exit code {self.process.exitcode}; "
                            "killed by the system for memory?)")

    def finish(self) -> None:
        """The end of the work: the worker's own exit."""
        with suppress(OSError):
            self.conn.send(None)
        self.process.join(ENDING_SECONDS)

    def end(self) -> None:
        """Ended whatever it was doing (SIGTERM from its parent ends it at once, :func:`ignore_stop_signals`),
        killed if still alive ``ENDING_SECONDS`` later; its pipe closed."""
        if self.process.exitcode is None:
            self.process.terminate()
            self.process.join(ENDING_SECONDS)
            if self.process.exitcode is None:
                self.process.kill()
                self.process.join()
        self.conn.close()


def _serve(fn: Callable[[Any], Any], conn: Connection) -> None:
    """A worker: chunks in, results out, until ``None`` (or its parent's SIGTERM). An error of ``fn`` goes back to
    the parent, which raises it (one that cannot be pickled, as a RuntimeError naming it)."""
    _worker_start()
    while (chunk := conn.recv()) is not None:
        results: list[Any] = []
        try:
            for x in chunk:
                results.append(fn(x))
            reply: tuple[list[Any], Exception | None] = (results, None)
        except Exception as e:  # noqa: BLE001 - the parent raises it, after the results before it
            reply = (results, e)
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            conn.send((results, RuntimeError(f"{reply[1]!r} (it could not be sent from the worker: {e})")))


ENDING_SECONDS = 5.0  # how long a worker may take to end before it is killed


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and the stop signals that arrive while inside are noted, and sent again on leaving, to the handlers
    in force outside: a handler raising inside a C library's callback (soundfile writing FLAC to memory calls back
    into Python through cffi) is swallowed there ("Exception ignored from cffi callback") and the signal lost
    (`earful shard` finished after a SIGTERM in 3 of 8 runs; one ended in an AssertionError inside soundfile).
    Blocking the signals would not do: the kernel then hands a signal sent to the process to another of its
    threads, and Python runs the handler in the main thread all the same. Outside the main thread: a no-op
    (``signals_handled`` installs nothing there, so nothing is noted)."""
    arrived: list[int] = []
    try:
        with signals_handled((signal.SIGINT, *STOP_SIGNALS), lambda signum, frame: arrived.append(signum)):
            yield
    finally:
        for s in dict.fromkeys(arrived):
            signal.raise_signal(s)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A worker process's start (a DataLoader's ``worker_init_fn``, a pool's initializer): it ignores the stop
    signals unless its parent sends them. A scheduler signals every process of a job (Slurm; torchrun forwards to
    its workers' process groups): a DataLoader worker killed by SIGTERM made the trainer fail without the
    checkpoint the signal asks for, and a pool worker killed while waiting for a task holds its queue's lock for
    ever, so that the parent's ``Pool.terminate`` hung (`earful shard --workers 2`, SIGTERM to its group). The
    parent's SIGTERM (a DataLoader or a pool ending its workers, Python's exit) still ends the worker at once, as
    torch's own handler does: ignored, Python's exit waited for ever in ``join()``. SIGTERM is blocked and taken
    by a thread that reads its sender (``sigwaitinfo``); without it (not Linux) the worker keeps the SIGTERM
    handling it has; a worker whose parent is gone (killed by the group's signal) ends within half a second.
    A terminal's Ctrl-C (SIGINT to the foreground group) is the parent's to handle (a trainer's
    first checkpoints, the second aborts; a pool's parent ends the pool): a worker ignores it (a pool worker
    interrupted inside a task left ``Pool`` waiting for a result that never came: `earful shard --workers 2` hung
    in 1 run of 3)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before the thread: it inherits the mask
        threading.Thread(target=_end_on_the_parents_sigterm, args=(os.getppid(),), daemon=True,
                         name="earful-sigterm").start()


def _end_on_the_parents_sigterm(parent: int) -> None:
    """A worker's thread: end the worker at once on its parent's SIGTERM (the parent is ending its workers, as
    torch's worker handler does), or once the parent is gone (it died of a signal to the whole group, which the
    worker ignored: `earful prepare --workers 2` left its workers computing for 2 s, then printing broken-pipe
    tracebacks)."""
    while True:
        info = signal.sigtimedwait({signal.SIGTERM}, 0.5)
        if (info is not None and info.si_pid == parent) or os.getppid() != parent:
            os._exit(0)


def _worker_start() -> None:
    """An ordered_map worker's start: :func:`ignore_stop_signals`, with Python's default SIGTERM where the signal is not
    taken by a thread (the parent's :func:`stop_signals_raise` handler, inherited, would leave a traceback)."""
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ignore_stop_signals()


@contextmanager
def signals_handled(signals: Iterable[int], handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """While inside, ``signals`` call ``handler``; the previous handlers come back on exit. Outside the main
    thread signals cannot be caught: a no-op."""
    old = {}
    for s in signals:
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class StopSignals:
    """What the stop signals (and, with ``ctrl_c``, Ctrl-C) do while :func:`stop_signals_raise` is in force: the
    first raises where the work stands (:class:`Stopped` naming the signal; KeyboardInterrupt for Ctrl-C). From
    then on, and once ``holding``, they are noted in ``arrived`` and acted on no further: a second signal while the
    work stops (a scheduler's, 20 ms after the first) raised again inside the clean-up, or met Python's default
    (-15) after the command had logged its status."""

    def __init__(self) -> None:
        self.quiet = False
        self.arrived: list[str] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.quiet:
            self.arrived.append(name)
            return
        self.quiet = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(name)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """From here to the end of :func:`stop_signals_raise`, signals are noted: what follows must all happen
        (`earful prepare` renaming its manifests into place)."""
        self.quiet = True
        yield


@contextmanager
def stop_signals_raise(ctrl_c: bool = False) -> Iterator[StopSignals]:
    """While inside, SIGTERM and SIGUSR1 (and Ctrl-C with ``ctrl_c``) raise in the main thread, once
    (:class:`StopSignals`), so the work in progress ends as on Ctrl-C (its ``finally`` and ``except`` clauses run:
    finished parts kept, worker processes ended, a message) instead of the process dying where it stood (Python's
    default), its workers' pipes broken under them (`earful shard --workers 2` printed their tracebacks)."""
    stops = StopSignals()
    with signals_handled((*STOP_SIGNALS, *((signal.SIGINT,) if ctrl_c else ())), stops):
        yield stops
