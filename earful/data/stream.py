"""Training from shards (``earful.data.shards``): each DataLoader worker of each rank reads its own stretch of
the shards, front to back, batched by seconds within the ``BatchBudget``, and resumes exactly.

**Streams.** ``world_size × max(num_workers, 1)`` streams; rank r's worker w reads stream ``r·W + w``. Per epoch,
deterministically in (seed, epoch), the shards are put in a random order (their order without shuffling), and
the batchable members in that order are cut into one contiguous stretch a stream, of equal counts: a rank's
streams read neighbouring shards, each stream a shard or a few from one offset on, and however few shards
there are (one shard for 8 ranks × 4 workers is fine), every stream has members: no rank waits for ever. A
stream cuts its stretch into buckets of ``bucket_size`` members, sorts each bucket longest first and packs it
greedily (``SecondsBatchSampler.pack``, the budget's micro-batch), and yields the bucket's batches (in a random
order, keyed by (seed, epoch, stream, bucket)). Members are read by their offsets, a batch's in file order, so
a worker holds one batch, and reads move through a shard a bucket at a time (a bucket's random order plays out
within ``bucket_size`` members, which the page cache holds, not the process).

Without shuffling on one rank and no workers the batches are those of ``SecondsBatchSampler(shuffle=False)``
over the same rows, and (crops keyed by (seed, epoch, member)) the very same audio: reading shards written in
a manifest's order trains as reading its files. With shuffling, write the shards from shuffled rows
(``earful shard --seed``) for batches mixed across speakers.

**Resume.** Each stream's place is (epoch, bucket, batches of the bucket done). ``ShardLoader`` counts batches
as training receives them (the workers run ahead), and the worker the next batch comes from (a DataLoader
takes its workers' batches in turn): ``state_dict()`` restarts every worker where training left it, in the
same turn, so a resumed run sees exactly the batches an uninterrupted one would — none twice, none skipped.
A resume in another layout (devices, workers, budget, crop, bucket) cannot continue the saved epoch's streams:
it is refused, or with ``relayout`` starts the next epoch in the new layout: the members of the saved epoch not
reached are skipped there (each is read in the next epoch, as every member is), and both say so. Other shards
(another index: ``--resume --allow-changes`` with other data) start the next epoch of the new shards, as a
manifest's sampler does (``SecondsBatchSampler.start_new_data``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .audio import AudioError
from .budget import BatchBudget
from .dataset import Batch, EmptyRun, Item, Received, collate, read_utterance, unreadable
from .parallel import ignore_stop_signals
from .sampler import Batches, SecondsBatchSampler
from .shards import ShardError, ShardIndex, member_utterance, open_location, read_member

log = logging.getLogger(__name__)

STREAM_FORMAT = "earful-stream-1"  # the layout of ShardLoader.state_dict()


class StreamPlan:
    """Which members each stream reads in an epoch and how they are batched (see the module docstring); from the
    index alone, so a stream's place is three numbers and restoring it costs one bucket's packing."""

    def __init__(self, index: ShardIndex, budget: BatchBudget, *, seed: int = 0, rank: int = 0, workers: int = 0,
                 shuffle: bool = True, bucket_size: int = 1000, skip_bad: bool = False) -> None:
        self.index = index
        # the length limits, the skipped counts and the packing are the sampler's
        self.sampler = SecondsBatchSampler(index.lengths(), budget, shuffle=shuffle, seed=seed, rank=rank,
                                           bucket_size=bucket_size, skip_bad=skip_bad, source=index.location,
                                           ids=lambda idx: index.member_ids([int(m) for m in idx]))
        self.seed, self.rank, self.shuffle, self.bucket_size = seed, rank, shuffle, bucket_size
        self.per_rank = max(workers, 1)
        self.streams = budget.world_size * self.per_rank
        batchable = self.sampler.batchable
        self.in_shard = np.searchsorted(batchable, index.first)  # shard s: batchable[in_shard[s]:in_shard[s + 1]]
        if not len(batchable):  # an index of no member (`earful shard` refuses to write one now)
            raise ValueError(f"{index.location}: nothing to batch: the shards hold no member ({len(index.left_out)} "
                             "rows were left out when they were written); write them again from a manifest")
        if len(batchable) < self.streams:
            raise ValueError(f"{index.location}: {len(batchable)} batchable members for {budget.world_size} rank(s) × "
                             f"{self.per_rank} worker(s): every worker needs one; use fewer data.num_workers")

    def layout(self) -> dict[str, Any]:
        """What cuts the epochs: a state saved under another layout cannot continue its streams."""
        return {"streams": self.streams, "workers": self.per_rank, "shuffle": self.shuffle,
                **self.sampler.layout()}  # the sampler's holds bucket_size

    def members(self, epoch: int, stream: int) -> np.ndarray:
        """The batchable members ``stream`` reads in ``epoch``, in order."""
        shards = len(self.index.shards)
        order = np.random.default_rng([self.seed, epoch]).permutation(shards) if self.shuffle else np.arange(shards)
        counts = np.diff(self.in_shard)[order]
        ends = np.cumsum(counts)
        total = int(ends[-1])
        lo, hi = stream * total // self.streams, (stream + 1) * total // self.streams
        parts = []
        j = int(np.searchsorted(ends, lo, side="right"))
        while lo < hi:
            s, begin = order[j], int(ends[j] - counts[j])
            take = min(hi, int(ends[j])) - lo
            at = int(self.in_shard[s]) + lo - begin
            parts.append(self.sampler.batchable[at : at + take])
            lo += take
            j += 1
        return np.concatenate(parts)

    def buckets(self, members: np.ndarray) -> int:
        return -(-len(members) // self.bucket_size)

    def bucket(self, epoch: int, stream: int, b: int, members: np.ndarray) -> Batches:
        """Bucket ``b`` of ``stream``'s ``members`` in ``epoch``, packed (and its batches shuffled)."""
        batches = self.sampler.pack(members[b * self.bucket_size : (b + 1) * self.bucket_size])
        if self.shuffle:
            batches = batches.take(np.random.default_rng([self.seed, epoch, stream, b]).permutation(len(batches)))
        return batches


class ShardStream(IterableDataset):
    """The batches of this rank's streams, one stream a DataLoader worker (see the module docstring). ``start``
    (each stream's place) and ``first`` (the stream of the DataLoader's first worker) are set by ``ShardLoader``.
    The crop and the seed are the plan's (its sampler's crop)."""

    def __init__(self, plan: StreamPlan, *, skip_bad: bool, crop_to_shortest: bool) -> None:
        self.plan = plan
        self.skip_bad, self.crop_to_shortest = skip_bad, crop_to_shortest
        self.start = [(0, 0, 0)] * plan.per_rank
        self.first = 0
        self._files: dict[int, IO[bytes]] = {}

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.plan.per_rank:
            raise RuntimeError(f"a shard stream planned for {self.plan.per_rank} workers runs in {workers}")
        local = (worker + self.first) % workers
        stream = self.plan.rank * workers + local
        epoch, b, done = self.start[local]
        try:
            while True:
                members = self.plan.members(epoch, stream)
                while b < self.plan.buckets(members):
                    batches = self.plan.bucket(epoch, stream, b, members)
                    for k in range(done, len(batches)):
                        batch = self.load(batches[k], epoch)
                        batch.stream = (local, epoch, b, k + 1)  # this stream's place once training has it
                        yield batch
                    b, done = b + 1, 0
                epoch, b, done = epoch + 1, 0, 0
        finally:
            for f in self._files.values():
                f.close()
            self._files = {}

    def _file(self, shard: int) -> IO[bytes]:
        if shard not in self._files:
            for old in [s for s in self._files if s != shard][:-1]:  # keep the last one: a bucket may span two
                self._files.pop(old).close()
            try:
                self._files[shard] = open_location(self.plan.index.path(shard))
            except FileNotFoundError:
                where = self.plan.index.path(shard)
                raise ShardError(f"{where}: missing shard; copy (or write) the shards again") from None
        return self._files[shard]

    def load(self, members: np.ndarray, epoch: int) -> Batch:
        """The batch of ``members`` (read in the shards' order, collated in the batch's)."""
        index, sampler, seed = self.plan.index, self.plan.sampler, self.plan.seed
        items: list[Item] = [None] * len(members)  # type: ignore[list-item]
        failed: list[tuple[str, str]] = []  # in the order read: the first stops a run without skip_bad
        for pos in np.argsort(members, kind="stable"):
            m = int(members[pos])
            shard = int(index.shard_of(m))
            uid = index.member_name(m)
            try:
                audio, meta = read_member(self._file(shard), index, m)
                utt = member_utterance(meta, audio)
                uid = utt.id
                wave = read_utterance(utt, m, epoch, crop_samples=sampler.crop_samples, seed=seed, source=audio)
                items[pos] = Item(m, uid, wave, epoch=epoch)
            except (ShardError, AudioError, OSError) as e:  # stops in the main process (ShardLoader) or is counted
                items[pos] = Item(m, uid, None, error=str(e), epoch=epoch)
                failed.append((uid, str(e)))
        batch = collate(items, crop_to_shortest=self.crop_to_shortest, seed=seed,
                        shape_samples=sampler.shape_samples, cap_samples=sampler.shape_cap(),
                        within_samples=sampler.micro_samples)
        batch.bad = failed
        return batch


class ShardLoader(Received):
    """A DataLoader over a ``ShardStream``, counting what training received (``AudioLoader``'s contract: ``epoch``,
    ``state_dict()``, ``bad_ids`` / ``bad_files``, ``skipped``, ``sampler`` for its skipped reasons)."""

    def __init__(self, stream: ShardStream, *, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = 4, relayout: bool = False) -> None:
        super().__init__()
        self.stream, self.plan, self.sampler = stream, stream.plan, stream.plan.sampler
        self.relayout = relayout
        self.places = [(0, 0, 0)] * self.plan.per_rank  # each of this rank's streams: (epoch, bucket, done)
        self.next = 0  # the stream the next batch comes from
        self.position = 0  # batches received
        self.loader = DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                 prefetch_factor=prefetch_factor if num_workers else None,
                                 worker_init_fn=ignore_stop_signals)

    @property
    def epoch(self) -> int:
        """The epoch of this rank's slowest stream."""
        return min(p[0] for p in self.places)

    @property
    def skipped(self) -> int:
        return self.sampler.skipped

    def __iter__(self) -> Iterator[Batch]:
        self.stream.start, self.stream.first = list(self.places), self.next
        # the same stretches every epoch: one rank, one shard, or no shuffling (EmptyRun)
        same = self.plan.streams == self.plan.per_rank or len(self.plan.index.shards) == 1 or not self.plan.shuffle
        empty = EmptyRun(same, len(self.sampler.batchable))
        for batch in self.loader:
            if batch.bad and not self.stream.skip_bad:
                raise ShardError(unreadable(*batch.bad[0], self.sampler.names["skip_bad"], "member"))
            local, epoch, b, done = batch.stream  # type: ignore[misc]
            if local != self.next:
                raise RuntimeError(f"shard stream {local} delivered when {self.next} was due: resume would be inexact")
            was = self.places[local]
            self.places[local] = (epoch, b, done)
            self.next = (local + 1) % self.plan.per_rank
            batch.epoch, batch.index = epoch, self.position
            self.position += 1
            if self.received(batch):
                empty.clear()
                yield batch
            elif empty.hopeless(batch, [was if i == local else p for i, p in enumerate(self.places)], self.places):
                self.none_loads(batch, str(self.plan.index.location), empty)

    def state_dict(self) -> dict[str, Any]:
        return {"format": STREAM_FORMAT, "index": self.plan.index.digest, "layout": self.plan.layout(),
                "seed": self.plan.seed, "places": [list(p) for p in self.places], "next": self.next,
                "epoch": self.epoch, "position": self.position, **self.received_state()}

    def load_state_dict(self, state: dict[str, Any], *, new_data: bool = False) -> None:
        """Continue the streams where ``state`` left them (see the module docstring); ``new_data`` (the recipe's
        training data changed, allowed by ``--resume --allow-changes``): every stream starts the epoch after the
        latest any saved rank was in, from its beginning, whatever data the state was saved reading (other
        shards, or a manifest's sampler)."""
        if new_data:
            if state["seed"] != self.plan.seed:
                raise ValueError(f"cannot resume from shards: saved seed={state['seed']}, this run has "
                                 f"{self.plan.seed}")
            epoch = max([int(r["epoch"]) for r in state.get("ranks") or []] or [int(state["epoch"])]) + 1
            self.load_received_state(state)
            self.position = int(state["position"])
            self.places, self.next = [(epoch, 0, 0)] * self.plan.per_rank, 0
            return
        if state.get("format") != STREAM_FORMAT:
            raise ValueError(f"cannot resume from shards: the checkpoint's data position is of another kind (format "
                             f"{state.get('format')!r}; a manifest's, data.train?): resume with the data setting it "
                             "was saved with")
        if state["index"] != self.plan.index.digest or state["seed"] != self.plan.seed:
            raise ValueError(f"cannot resume from shards: {self.plan.index.location} is not the shard index (or the "
                             "seed) the checkpoint was saved with")
        self.load_received_state(state)
        self.position = int(state["position"])
        places = [tuple(int(v) for v in p) for p in state["places"]]
        now, saved = self.plan.layout(), state["layout"]
        if saved == now:
            self.places, self.next = places, int(state["next"])  # type: ignore[assignment]
            return
        changed = ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in now.items() if saved.get(k) != v)
        # every saved rank's streams, when the trainer passes them (``ranks``): every rank then starts the same
        # epoch, after the latest any saved stream reached (each rank's own had left the ranks epochs apart)
        everywhere = [tuple(int(v) for v in p) for r in state.get("ranks") or [] for p in r.get("places", [])]
        places = everywhere or places
        epoch, first = max(p[0] for p in places), min(p[0] for p in places)
        # what a relayout leaves out: the rest of the saved epochs (every member is read again in the next one)
        skipped = (f"the members of epoch{f's {first} to' if first < epoch else ''} {epoch} that the saved streams "
                   f"had not reached are skipped there, and read in epoch {epoch + 1} with all the others")
        if not self.relayout:
            raise ValueError(f"cannot continue the shard streams of epoch {epoch} in another layout ({changed}): "
                             "resume with the same devices, data.num_workers, batch and crop settings, or set "
                             f"data.shards_relayout=true to start epoch {epoch + 1} in the new layout ({skipped})")
        log.warning("shard streams resumed in another layout (%s): epoch %d starts afresh; %s (the saved streams, "
                    "every rank's, were at (epoch, bucket, batches) %s)", changed, epoch + 1, skipped, places)
        self.places, self.next = [(epoch + 1, 0, 0)] * self.plan.per_rank, 0


def make_shard_loader(location: str, budget: BatchBudget, *, seed: int = 0, rank: int = 0, skip_bad: bool = False,
                      crop_to_shortest: bool = False, shuffle: bool = True, bucket_size: int = 1000,
                      num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int | None = 4,
                      relayout: bool = False) -> ShardLoader:
    """An endless ``ShardLoader`` for rank ``rank`` of ``budget.world_size`` over the shards at ``location`` (a
    folder or fsspec URL holding ``index.json``). Missing or cut shards are named: an error, or with
    ``skip_bad`` a warning (their members are then skipped and counted as they come)."""
    index = ShardIndex(location)
    problems = index.problems()
    if problems and not skip_bad:
        raise ShardError("; ".join(problems) + ": copy the shards again (or write them again with `earful shard`), "
                         "or set data.skip_bad=true to skip and count their members")
    for problem in problems:
        log.warning("%s: its members will be skipped and counted", problem)
    if index.left_out:
        log.warning("%s: %d rows of the manifest were left out when the shards were written (listed in its "
                    "index.json)", index.location, len(index.left_out))
    plan = StreamPlan(index, budget, seed=seed, rank=rank, workers=num_workers, shuffle=shuffle,
                      bucket_size=bucket_size, skip_bad=skip_bad)
    stream = ShardStream(plan, skip_bad=skip_bad, crop_to_shortest=crop_to_shortest)
    return ShardLoader(stream, num_workers=num_workers, pin_memory=pin_memory, prefetch_factor=prefetch_factor,
                       relayout=relayout)
