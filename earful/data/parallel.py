"""Work over many files in worker processes, results in input order, without running ahead of the consumer
(``Pool.imap`` alone reads its whole input at once: 16 M manifest rows would sit in its queue)."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import Pool
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, window: int = 512) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in ``items``' order, ``fn`` run by ``workers`` processes (here when 1), at most
    ``window`` items ahead."""
    if workers <= 1:
        yield from ((x, fn(x)) for x in items)
        return
    it = iter(items)
    with Pool(workers, initializer=_ignore_ctrl_c) as pool:  # left (closed) or not, the pool is terminated
        chunk = list(itertools.islice(it, window))
        while chunk:
            pending = pool.imap(fn, chunk, chunksize=max(1, window // (4 * workers)))
            following = list(itertools.islice(it, window))  # read while the workers encode
            yield from zip(chunk, pending, strict=True)
            chunk = following


def _ignore_ctrl_c() -> None:
    """A worker's start: a terminal's Ctrl-C (SIGINT to the foreground group) is its parent's to handle. A worker
    interrupted inside a task left ``Pool`` waiting for a result that never came (`earful shard --workers 2`
    hung after Ctrl-C in 1 run of 3); the parent's KeyboardInterrupt closes the map, which terminates the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
