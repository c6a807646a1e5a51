"""Work over many files in worker processes, results in input order, without running ahead of the consumer
(``Pool.imap`` alone reads its whole input at once: 16 M manifest rows would sit in its queue)."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from multiprocessing import Pool
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a scheduler's pre-emption: stop, keeping what is finished


class Stopped(Exception):
    """A stop signal (``STOP_SIGNALS``) arrived while :func:`stop_signals_raise` was in force."""


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, window: int = 512) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in ``items``' order, ``fn`` run by ``workers`` processes (here when 1), at most
    ``window`` items ahead."""
    if workers <= 1:
        yield from ((x, fn(x)) for x in items)
        return
    it = iter(items)
    with Pool(workers, initializer=_worker_signals) as pool:  # left (closed) or not, the pool is terminated
        chunk = list(itertools.islice(it, window))
        while chunk:
            pending = pool.imap(fn, chunk, chunksize=max(1, window // (4 * workers)))
            following = list(itertools.islice(it, window))  # read while the workers encode
            yield from zip(chunk, pending, strict=True)
            chunk = following


def _worker_signals() -> None:
    """A worker's start: a terminal's Ctrl-C (SIGINT to the foreground group) is its parent's to handle. A worker
    interrupted inside a task left ``Pool`` waiting for a result that never came (`earful shard --workers 2`
    hung after Ctrl-C in 1 run of 3); the parent's KeyboardInterrupt closes the map, which terminates the pool.
    The stop signals end a worker at once, as Python's default does, whatever handler the parent had when it
    forked (:func:`stop_signals_raise`'s would leave the worker's traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_DFL)


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


def stop_signals_raise() -> AbstractContextManager[None]:
    """While inside, SIGTERM and SIGUSR1 raise :class:`Stopped` in the main thread, so the work in progress ends
    as on Ctrl-C (its ``finally`` and ``except`` clauses run: finished parts kept, worker processes ended, a
    message) instead of the process dying where it stood (Python's default), its workers' pipes broken under them
    (`earful shard --workers 2` printed their tracebacks)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    return signals_handled(STOP_SIGNALS, stop)
