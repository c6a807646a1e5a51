"""Work over many files in worker processes, results in input order, without running ahead of the consumer
(``Pool.imap`` alone reads its whole input at once: 16 M manifest rows would sit in its queue)."""

from __future__ import annotations

import itertools
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
    with Pool(workers) as pool:
        chunk = list(itertools.islice(it, window))
        while chunk:
            pending = pool.imap(fn, chunk, chunksize=max(1, window // (4 * workers)))
            following = list(itertools.islice(it, window))  # read while the workers encode
            yield from zip(chunk, pending, strict=True)
            chunk = following
