"""Batching by seconds of audio.

``SecondsBatchSampler`` yields lists of dataset indices whose *padded* size — longest utterance (after
cropping) × number of utterances — is at most the budget's ``micro_seconds`` (an utterance longer than that
but within ``device_seconds`` is a batch of its own). That is the paper's accounting: the batch size counts
padding, so it is an upper bound on real speech (both are reported per batch). The budget
(``earful.data.budget.BatchBudget``) also holds the crop and the shortest and longest utterance admitted.

Per epoch, deterministically in ``(seed, epoch)``: the batchable indices are shuffled, cut into buckets of
``bucket_size``, each bucket is sorted by length (longest first) and packed greedily, and the batch order is
shuffled. Length bucketing keeps padding small; ``padding_fraction()`` reports it.

**DDP** (``dealing``). Every rank builds the same global batch list and takes every ``world_size``-th batch,
so shards are disjoint. Training (``endless``) deals the epochs as **one stream**: the global batches of epoch
0, then of epoch 1, …, and rank r takes stream batches r, r + W, r + 2W, … across the epoch boundaries, so
epoch e starts at the rank its ``phase`` names. That is exactly what one process with W× the accumulation takes
step by step (its step also runs from one epoch into the next), whatever an epoch's batch count; an endless
stream gives every rank as many batches a step, so no rank waits in all-reduce. A finite training pass
(``endless=False``) must end on every rank at once: the batch with the most utterances is split in two until
the count is a multiple of ``world_size`` (halves of a batch are within budget; logged), and only if no batch
can be split (fewer utterances than ranks) are the first batches repeated, which ``repeated`` says. An
``evaluation`` (validation, evaluate) never splits: it repeats, and skips the repeats, so it scores
one rank's batches on any number of ranks.

**Nothing is dropped silently.** Utterances longer than ``max_seconds`` (after cropping) or shorter than
``min_seconds`` — limits set on purpose — are left out, counted in ``skipped`` (by reason in
``skipped_reasons``, indices in ``skipped_indices``) and logged once as a warning. What no setting leaves out —
an empty utterance, or one longer (after cropping) than ``device_seconds`` holds — is bad input: an error
naming the source, how many, a few ids and the ways out; with ``skip_bad=True`` (``data.skip_bad``) it is left
out and counted the same way.

**Resume.** ``state_dict()`` records ``(epoch, position)`` — batches yielded so far in the epoch — the epoch's
``phase``, and the layout that cut the epoch (``LAYOUT``: the budget in samples — devices, micro-batch, length
limits, crop, shape grid — and ``bucket_size``); ``load_state_dict()`` continues from exactly there. With
another layout it rebuilds the saved epoch as the saved run cut it, takes the batches no rank had reached,
keeps those that fit the new budget (re-packing otherwise) and deals them to the new ranks, the stream starting
again at rank 0: the rest of that epoch sees every utterance it had not seen, once. Ranks saved a few batches
apart (with ``skip_bad`` a rank whose batch had no loadable audio pulled another), even in two epochs, all
continue from the earliest epoch any was in, and each epoch from there holds what no saved rank had reached of
it. Iterated through a prefetching DataLoader the sampler runs
ahead of training; ``earful.data.dataset.AudioLoader`` therefore counts batches on the consumer side and its
``state_dict()`` is the one to checkpoint. States carry ``format``; format 4 (before the stream dealing: a
training epoch whose batches did not divide among the ranks was split) continues its saved epoch as a relaid
one, exactly what it had not reached; one from an earlier development version is refused.
"""

from __future__ import annotations

import copy
import itertools
import logging
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from earful.data.budget import SAMPLE_RATE, BatchBudget, shape_length

log = logging.getLogger(__name__)

# the layout of state_dict(); 4 had no phase (and split a training epoch to divide it among the ranks), 3 no
# bucket_size, 2 no shape_samples, 1 (no "format") predates the budget
SAMPLER_FORMAT = 5
# what cuts an epoch besides (seed, epoch): BatchBudget.samples() and the bucket size
LAYOUT = ("world_size", "device_samples", "micro_samples", "crop_samples", "min_samples", "max_samples",
          "shape_samples", "bucket_size")


class Batches(Sequence[np.ndarray]):
    """Batches of utterance indices held as two arrays, not one array object a batch (an epoch of 16 M
    utterances is 3 M batches): ``flat``, every batch's indices one after the other, and ``bounds``, where each
    batch starts in it (``(batches + 1,)``). Indexing gives a batch's indices; ``take`` picks and orders batches."""

    def __init__(self, flat: np.ndarray, bounds: np.ndarray) -> None:
        self.flat, self.bounds = flat, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.flat[self.bounds[i] : self.bounds[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for a, b in itertools.pairwise(self.bounds.tolist()):
            yield self.flat[a:b]

    def sizes(self) -> np.ndarray:
        return np.diff(self.bounds)

    def take(self, which: np.ndarray) -> Batches:
        """The batches ``which`` (indices of batches), in that order."""
        which = np.asarray(which, dtype=np.int64)
        sizes = self.sizes()[which]
        bounds = np.zeros(len(which) + 1, dtype=np.int64)
        np.cumsum(sizes, out=bounds[1:])
        # element k of new batch j comes from old position starts[which[j]] + k (int32 below 2^31: half the memory)
        kind = np.int32 if len(self.flat) < 2**31 else np.int64
        at = np.repeat((self.bounds[:-1][which] - bounds[:-1]).astype(kind), sizes)
        at += np.arange(bounds[-1], dtype=kind)
        return Batches(self.flat[at], bounds)

    def keep(self, mask: np.ndarray) -> Batches:
        """Each batch's indices where ``mask`` (over ``flat``) holds; empty batches stay."""
        kept = np.zeros(len(self.flat) + 1, dtype=np.int64)
        np.cumsum(mask, out=kept[1:])
        return Batches(self.flat[mask], kept[self.bounds])

    def split(self, j: int, at: int) -> Batches:
        """Batch ``j`` cut in two after its first ``at`` indices."""
        return Batches(self.flat, np.insert(self.bounds, j + 1, self.bounds[j] + at))

    def padded(self, lengths: np.ndarray, shaped: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> tuple[int, int]:
        """(real, padded) samples of these batches, the utterances being ``lengths`` long (``shaped``: the padded
        length of a batch from its longest utterance's)."""
        sizes = self.sizes()
        full = sizes > 0
        if not full.any():
            return 0, 0
        per = lengths[self.flat]
        longest = np.maximum.reduceat(per, self.bounds[:-1][full])
        if shaped is not None:
            longest = shaped(longest)
        return int(per.sum()), int((longest * sizes[full]).sum())


# the settings a sampler's refusal advises, as training names them; other callers give theirs (``names``)
SETTING_NAMES: dict[str, str | None] = {
    "device_seconds": "device_seconds", "max_seconds": "data.max_seconds", "min_seconds": "data.min_seconds",
    "crop_seconds": "in pre-training, data.crop_seconds", "skip_bad": "data.skip_bad"}


class SecondsBatchSampler:
    """Length-bucketed batches within a ``BatchBudget``; see the module docstring."""

    def __init__(
        self,
        num_samples: Sequence[int],
        budget: BatchBudget,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        endless: bool = False,
        bucket_size: int = 1000,
        skip_bad: bool = False,
        source: str = "",
        ids: Callable[[np.ndarray], list[str]] | None = None,
        names: dict[str, str | None] | None = None,
        evaluation: bool = False,
    ) -> None:
        """``num_samples``: each utterance's length at ``SAMPLE_RATE``; ``rank`` of ``budget.world_size``.
        ``skip_bad``: leave out (counted, logged) what no setting leaves out — empty utterances, and those too long
        for the device — instead of refusing them; ``source`` names the utterances in messages (a manifest's
        path) and ``ids`` gives the ids of some of them (default: their indices); ``names``: the caller's names
        of the settings its messages advise (``SETTING_NAMES``' keys; None: the caller has no such setting);
        ``evaluation``: a pass that scores each utterance once (validation, evaluate), dealt to ranks as ``_deal``
        says."""
        self.names = {**SETTING_NAMES, **(names or {})}
        self.evaluation = evaluation  # a pass that scores each utterance once: see _deal
        # how the global batches are dealt to the ranks (module docstring): training's one stream, a finite
        # training pass split to divide among the ranks, an evaluation's repeats
        self.dealing = "repeat" if evaluation else "stream" if endless else "split"
        if not 0 <= rank < budget.world_size:
            raise ValueError(f"rank {rank} outside world_size {budget.world_size}")
        if bucket_size < 1:
            raise ValueError(f"bucket_size={bucket_size}: expected >= 1")
        self.budget = budget
        self.lengths = np.asarray(num_samples, dtype=np.int64).reshape(-1)
        for key, value in budget.samples().items():  # world_size, device/micro/crop/min/max_samples
            setattr(self, key, value)
        self.shuffle, self.seed, self.endless, self.bucket_size = shuffle, seed, endless, bucket_size
        self.rank = rank
        too_long, too_short = self._batchable()
        chosen, bad = self._reasons(too_long, too_short)
        name = ids or (lambda idx: [f"#{i}" for i in idx.tolist()])
        refused = np.flatnonzero(np.logical_or.reduce(list(bad.values())))
        if len(refused) and not skip_bad:
            raise ValueError(self._refusal(source, bad, name(refused[:5])))
        unbatchable = too_long | too_short
        self.skipped_indices = np.flatnonzero(unbatchable)
        self.skipped = int(unbatchable.sum())
        self.skipped_reasons = {k: int(v.sum()) for k, v in {**chosen, **bad}.items() if v.any()}
        if self.skipped:
            what = ", ".join(f"{n} {why}" for why, n in self.skipped_reasons.items())
            if self.skipped == len(self.lengths):  # training would wait forever, validation score 0
                limits = " / ".join(filter(None, (self.names[k] for k in ("min_seconds", "max_seconds",
                                                                          "device_seconds"))))
                raise ValueError(f"{source or 'the manifest'}: nothing to batch: all {self.skipped} utterances are "
                                 f"left out ({what}); change {limits}, or give other data")
            skipping = f"; {len(refused)} of them with {self.names['skip_bad']}" if len(refused) else ""
            log.warning("%s%d of %d utterances cannot be batched (%s%s), e.g. %s: they are left out",
                        f"{source}: " if source else "", self.skipped, len(self.lengths), what, skipping,
                        ", ".join(name(self.skipped_indices[:5])))
        if not evaluation and rank == 0:
            self._warn_of_steps_over_the_batch(source)
        self.epoch = 0
        self.position = 0
        self.repeated = 0
        self.repeats: dict[int, int] = {}  # epoch → batches repeated at its end (see ``repeated``)
        self._cache: dict[int, Batches] = {}
        self._phase = {0: 0}  # epoch → the rank that takes its first batch (the stream's place, modulo world_size)
        self._size: dict[int, int] = {}  # epoch → its global batch count, as far as known
        self._pending: tuple[int, Batches] | None = None  # an epoch's global batches computed, not yet dealt
        # a resume with another layout: {epoch: [{"layout": ..., "positions": [p_0, ...]}, ...]}, the layouts
        # each such epoch was cut with before and how far each rank got in it; the epoch then holds what they left
        self._resumed: dict[int, list[dict[str, Any]]] = {}

    def _warn_of_steps_over_the_batch(self, source: str) -> None:
        """Say so where utterances (as cropped) longer than a micro-batch's share of the batch can be batched: each
        trains in a micro-batch of its own, so a step holds more than ``batch_seconds`` (up to every micro-batch of
        the step one such utterance)."""
        over = self.effective[self.batchable] > self.micro_samples
        if not over.any():
            return
        b, n = self.budget, self.names
        longest = float(self.effective[self.batchable][over].max()) / SAMPLE_RATE
        micro = self.micro_samples / SAMPLE_RATE
        crop = f", {n['crop_seconds']} at most {micro:.4g} s" if n["crop_seconds"] and b.crop_seconds else ""
        limit = f", {n['max_seconds']} to leave them out (counted)" if n["max_seconds"] else ""
        log.warning("%s%d of %d utterances (as cropped) are longer than micro_seconds=%.4g s, a micro-batch's share "
                    "of batch_seconds=%g (%d device(s) × %d accumulation): each trains in a micro-batch of its own, "
                    "so a step holds up to %.4g s of padded audio, not %g s; a larger batch_seconds%s%s keeps steps "
                    "within the batch", f"{source}: " if source else "", int(over.sum()), len(self.batchable), micro,
                    b.batch_seconds, self.world_size, b.accumulation,
                    self.world_size * b.accumulation * longest, b.batch_seconds, crop, limit)

    def limit(self) -> int:
        """The longest utterance (after cropping) a batch can take: the device's, or ``max_seconds`` if lower."""
        return min(self.device_samples, self.max_samples or self.device_samples)

    def _batchable(self) -> tuple[np.ndarray, np.ndarray]:
        """Sets ``effective`` (lengths after cropping) and ``batchable`` (the indices batched, ascending); returns
        the too-long and too-short masks."""
        self.effective = np.minimum(self.lengths, self.crop_samples) if self.crop_samples else self.lengths.copy()
        too_long = self.effective > self.limit()
        too_short = self.lengths < max(self.min_samples, 1)  # an empty utterance is never batched
        index = np.int32 if len(self.lengths) < 2**31 else np.int64  # half the memory at 16 M utterances
        self.batchable = np.flatnonzero(~(too_long | too_short)).astype(index)
        return too_long, too_short

    def _reasons(self, too_long: np.ndarray, too_short: np.ndarray
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Why each unbatchable utterance is left out, as two sets of disjoint masks: the limits set on purpose
        (``max_seconds``, ``min_seconds``: counted filters) and what no setting left out (longer than the device
        holds, empty: bad input, refused unless ``skip_bad``)."""
        b = self.budget
        none = np.zeros(len(self.lengths), dtype=bool)
        over_max = too_long & (self.effective > self.max_samples) if self.max_samples else none
        under_min = self.lengths < self.min_samples if self.min_samples else none
        chosen = {}
        if b.max_seconds:
            chosen[f"longer than max_seconds={b.max_seconds:g} s"] = over_max
        if b.min_seconds:
            chosen[f"shorter than min_seconds={b.min_seconds:g} s"] = under_min & ~over_max
        bad = {f"longer than {self.names['device_seconds']}={b.device_seconds:g} s": too_long & ~over_max,
               "empty (0 samples)": too_short & ~under_min & ~too_long}
        return chosen, bad

    def _refusal(self, source: str, bad: dict[str, np.ndarray], examples: list[str]) -> str:
        """The error for utterances no setting leaves out: where, how many, which, and the ways out."""
        b = self.budget
        count = sum(int(m.sum()) for m in bad.values())
        what = ", ".join(f"{int(m.sum())} {why}" for why, m in bad.items() if m.any())
        n = self.names
        ways = []
        if n["skip_bad"]:
            ways += [f"set {n['skip_bad']}{'=true' if n['skip_bad'] == SETTING_NAMES['skip_bad'] else ''} to leave "
                     "them out (counted in the log)"]
        long = bad[f"longer than {n['device_seconds']}={b.device_seconds:g} s"]
        if long.any():
            longest = float(self.effective[long].max()) / SAMPLE_RATE
            ways += [f"a larger {n['device_seconds']} (the longest is {longest:.2f} s)"]
            if n["max_seconds"]:
                ways += [f"{n['max_seconds']} to leave longer utterances out on purpose (counted)"]
            if not b.crop_seconds and n["crop_seconds"]:
                ways += [f"{n['crop_seconds']} to crop them"]
            elif n["crop_seconds"] and b.crop_seconds and b.crop_seconds > b.device_seconds:
                ways += [f"{n['crop_seconds']} at most {n['device_seconds']} (the crop, {b.crop_seconds:g} s, is "
                         "longer than what a device holds)"]
        if bad["empty (0 samples)"].any():
            short = f" (or {n['min_seconds']} to leave short ones out on purpose, counted)" if n["min_seconds"] else ""
            ways += [f"remove the empty rows from the manifest{short}"]
        return (f"{source + ': ' if source else ''}{count} of {len(self.lengths)} utterances cannot be batched "
                f"({what}), e.g. {', '.join(examples)}: {'; or '.join(ways)}")

    def layout(self) -> dict[str, Any]:
        """What cuts an epoch into batches besides ``(seed, epoch)``."""
        return {key: getattr(self, key) for key in LAYOUT}

    def shape_cap(self) -> int:
        """The longest padded length the shape grid may round a batch up to: the crop, else ``limit()``, and never
        past ``limit()`` (a crop longer than the device holds would pad a batch beyond ``device_seconds``)."""
        return min(self.crop_samples, self.limit()) if self.crop_samples else self.limit()

    def shaped(self, longest: np.ndarray) -> np.ndarray:
        """The padded length of batches led by utterances of ``longest`` samples (``shape_seconds``' grid)."""
        return shape_length(longest, self.shape_samples, self.shape_cap(), self.micro_samples)

    # ------------------------------------------------------------------ batches
    def pack(self, idx: np.ndarray) -> Batches:
        """Buckets of ``bucket_size`` in ``idx``'s order, each sorted longest first and packed greedily."""
        flat, bounds = [idx[:0]], array("q", [0])  # 8 bytes a batch, not a Python int
        for start in range(0, len(idx), self.bucket_size):
            chunk = idx[start : start + self.bucket_size]
            chunk = chunk[np.argsort(-self.effective[chunk], kind="stable")]
            flat.append(chunk)
            # longest first: the first utterance of a batch fixes its padded length, hence how many fit
            caps = np.maximum(1, self.micro_samples // self.shaped(self.effective[chunk])).tolist()
            i, n = 0, len(chunk)
            while i < n:
                i += caps[i]
                bounds.append(start + i)
            bounds[-1] = start + n  # only the last batch may reach past the bucket
        return Batches(np.concatenate(flat), np.frombuffer(bounds, dtype=np.int64))

    def _global_batches(self, epoch: int) -> Batches:
        if epoch in self._resumed:
            return self._remainder(epoch, self._resumed[epoch])
        rng = np.random.default_rng([self.seed, epoch])
        idx = rng.permutation(self.batchable) if self.shuffle else self.batchable
        batches = self.pack(idx)
        if self.shuffle:
            batches = batches.take(rng.permutation(len(batches)))
        return self._deal(batches, epoch)

    def _remainder(self, epoch: int, steps: list[dict[str, Any]]) -> Batches:
        """The global batches of a resumed ``epoch``: what the saved run (the last step; earlier steps made its
        epoch a remainder too) had not reached, in its order, still batchable here. Its batches are kept when
        only the number of ranks changed; otherwise the utterances are packed anew and the batches shuffled."""
        step = steps[-1]
        then = self._with_layout(step["layout"], step.get("dealing", "stream"), {epoch: int(step.get("phase", 0))})
        cut = then._remainder(epoch, steps[:-1]) if len(steps) > 1 else then._global_batches(epoch)
        g = np.arange(len(cut) - then.repeated)  # the repeated copies at the end are not utterances of their own
        done = np.array(step.get("positions") or [int(step["position"])] * then.world_size, dtype=np.int64)
        rank, position = then.owners(epoch, len(g))
        left = cut.take(g[position >= done[rank]])  # each saved rank's batches from its place on
        valid = np.zeros(len(self.lengths), dtype=bool)
        valid[self.batchable] = True
        kept = left.keep(valid[left.flat])
        same_cut = all(then.layout()[k] == self.layout()[k] for k in self.layout() if k != "world_size")
        if same_cut:
            batches = kept.take(np.flatnonzero(kept.sizes()))
        else:
            batches = self.pack(kept.flat)
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch, len(steps)])
                batches = batches.take(rng.permutation(len(batches)))
        return self._deal(batches, epoch)

    def _with_layout(self, layout: dict[str, Any], dealing: str, phase: dict[int, int]) -> SecondsBatchSampler:
        """A copy of this sampler that cuts epochs as ``layout`` (with its own batchable set) and deals them as
        ``dealing``, its epochs starting at ``phase``."""
        then = copy.copy(self)
        for key, value in layout.items():
            setattr(then, key, value)
        then._batchable()
        then.rank, then._cache, then._resumed, then.repeats = 0, {}, {}, {}
        then.dealing, then._phase, then._size = dealing, dict(phase), {}
        return then

    def _deal(self, batches: Batches, epoch: int) -> Batches:
        """The epoch's global batches as the ranks share them (``dealing``). Training's stream: as they are, the
        next epoch going on where this one ends. A finite training pass: made a multiple of ``world_size`` long by
        splitting the fullest, else repeating; a split makes the epoch's batches from there on differ from one
        rank's (with accumulation), which is logged. An ``evaluation`` (validation, evaluate) only
        repeats, and skips the repeats (``AudioLoader.is_repeat``): its batches, and so its numbers, are one
        rank's whatever the ranks (a split had made a 2-rank validation loss differ from 1 rank's)."""
        if self.dealing == "stream":
            self.repeated = self.repeats[epoch] = 0
            return batches
        splits = 0
        while self.dealing == "split" and len(batches) % self.world_size:
            sizes = batches.sizes()
            j = int(np.argmax(sizes))
            if sizes[j] < 2:
                break
            batches = batches.split(j, int(sizes[j]) // 2)
            splits += 1
        if splits and epoch not in self.repeats:
            log.info("epoch %d: %d batches for %d ranks: the fullest split %d time(s) so that every rank has as many "
                     "(from there on the epoch's batches differ from 1 rank's with accumulation)", epoch,
                     len(batches) - splits, self.world_size, splits)
        self.repeated = (-len(batches)) % self.world_size if len(batches) else 0
        if self.repeated and epoch not in self.repeats:
            (log.debug if self.evaluation else log.warning)("epoch %d: only %d batches for %d ranks; repeating %d",
                                                            epoch, len(batches), self.world_size, self.repeated)
        self.repeats[epoch] = self.repeated
        if self.repeated:
            batches = batches.take(np.arange(len(batches) + self.repeated) % len(batches))
        return batches

    def partial_epoch(self, epoch: int) -> bool:
        """Whether ``epoch`` holds only what a resume in another layout had not reached of it."""
        return epoch in self._resumed

    def epoch_batches(self, epoch: int | None = None) -> Batches:
        """This rank's batches (each an array of indices) for ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            pending, self._pending = self._pending, None
            everyone = pending[1] if pending and pending[0] == epoch else self._everyone(epoch)
            first = (self.rank - self.phase(epoch)) % self.world_size
            self._cache[epoch] = everyone.take(np.arange(first, len(everyone), self.world_size))
        return self._cache[epoch]

    def _everyone(self, epoch: int) -> Batches:
        """The global batches of ``epoch``, their count kept (``phase`` counts the stream with it)."""
        everyone = self._global_batches(epoch)
        self._size[epoch] = len(everyone)
        return everyone

    def phase(self, epoch: int) -> int:
        """The rank that takes ``epoch``'s first global batch: where the training stream is when the epoch starts,
        modulo ``world_size`` (0 for other dealings). Counted on from the latest epoch whose phase is known (a
        fresh run's epoch 0, a resume's epoch), so an epoch before a resumed one is taken as a fresh run's, and an
        epoch far ahead costs the packing of every epoch between (training asks for each epoch in turn)."""
        if self.dealing != "stream" or self.world_size == 1:
            return 0
        known = [e for e in self._phase if e <= epoch]
        e = max(known) if known else 0
        phase = self._phase.get(e, 0)
        while e < epoch:
            size = self._size[e] if e in self._size else len(self._everyone(e))
            phase, e = (phase + size) % self.world_size, e + 1
            self._phase[e] = phase
        return phase

    def owners(self, epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """For the first ``n`` global batches of ``epoch``: the rank that takes each, and its place in that rank's
        batches of the epoch."""
        phase = self.phase(epoch)
        k = phase + np.arange(n)  # the place in the stream, from a multiple of world_size on
        rank = k % self.world_size
        return rank, k // self.world_size - (rank < phase)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            batches = self.epoch_batches(self.epoch)
            if not batches and self.endless and not len(self.batchable):
                raise ValueError("SecondsBatchSampler: no batchable utterances for endless iteration")
            while self.position < len(batches):
                batch = batches[self.position]
                self.position += 1
                yield batch.tolist()
            self.epoch += 1
            self.position = 0
            if not self.endless:
                return

    def __len__(self) -> int:
        """Batches of this rank in the current epoch."""
        return len(self.epoch_batches(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (DistributedSampler convention)."""
        self.epoch, self.position = int(epoch), 0

    # ------------------------------------------------------------------ accounting
    def padding_fraction(self, epoch: int | None = None) -> float:
        """Padding fraction of this rank's batches in ``epoch`` (on several ranks, an epoch far ahead of the
        known ones costs the packing of every epoch between: see ``phase``)."""
        real, padded = self.epoch_batches(epoch).padded(self.effective, self.shaped)
        return 1.0 - real / padded if padded else 0.0

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": SAMPLER_FORMAT,
            "epoch": self.epoch,
            "position": self.position,
            "phase": self.phase(self.epoch),
            "dealing": self.dealing,
            "seed": self.seed,
            "rank": self.rank,
            "num_utterances": len(self.lengths),
            **self.layout(),
            **({"resumed": [{"epoch": e, "steps": steps} for e, steps in sorted(self._resumed.items())]}
               if self._resumed else {}),
        }

    def _from_format_3(self, state: dict[str, Any]) -> dict[str, Any]:
        """A state of format 3 (before the layout held ``bucket_size``) in format 4. Its bucket size is the one
        the trainer adds from the checkpoint's recipe (``bucket_size``), else this run's: a resume cannot change
        it without ``--allow-changes``, as the recipe holds it."""
        bucket = int(state.get("bucket_size", self.bucket_size))

        def layout(saved: dict[str, Any]) -> dict[str, Any]:
            return {**saved, "bucket_size": bucket}

        resumed = state.pop("resumed", None)  # format 3: one epoch's record, {"epoch", "steps"}
        steps = [{**s, "layout": layout(s["layout"])} for s in resumed["steps"]] if resumed else []
        log.info("sampler state of format 3: its epoch taken as cut with bucket_size %d", bucket)
        return {**layout(state), "format": 4, **({"resumed": [{"epoch": resumed["epoch"], "steps": steps}]}
                                                  if steps else {})}

    def _from_format_4(self, state: dict[str, Any]) -> dict[str, Any]:
        """A state of format 4 in format 5. Format 4 split a training epoch whose batches did not divide among the
        ranks: on several ranks its epoch (and any relaid one it records) is rebuilt so and continues as a relaid
        one, from exactly what the saved ranks had not reached. On one rank nothing was split: it continues as
        it was."""
        def dealing(world_size: int) -> str:
            return "split" if world_size > 1 else self.dealing

        resumed = [{"epoch": r["epoch"], "steps": [{**st, "dealing": dealing(st["layout"]["world_size"])}
                                                   for st in r["steps"]]} for r in state.get("resumed", [])]
        return {**state, "format": 5, "phase": 0, "dealing": dealing(state["world_size"]),
                **({"resumed": resumed} if resumed else {})}

    def start_new_data(self, state: dict[str, Any]) -> None:
        """Continue a run whose training data changed (``--resume --allow-changes`` with another manifest): the
        saved place indexes the old data, so nothing of it carries over but the epoch count; this sampler starts
        the epoch after the latest any saved rank was in (``ranks``, else ``state``'s), from its beginning, the
        stream at rank 0 — seeded by ``(seed, epoch)`` like any epoch, so an interrupted continuation resumes
        exactly. ``state`` may be a shard loader's (its ``epoch``); its seed must be this sampler's."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"cannot resume sampler: saved seed={state['seed']}, this run has {self.seed}")
        epochs = [int(r["epoch"]) for r in state.get("ranks") or []] or [int(state["epoch"])]
        self.epoch, self.position = max(epochs) + 1, 0
        self._resumed, self._cache, self._size, self._pending = {}, {}, {}, None
        self._phase = {self.epoch: 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where ``state`` was saved. With another layout (other devices, a smaller micro-batch after an
        out-of-memory error, another crop or length limit) the saved epoch continues with exactly the
        utterances the saved run had not reached, cut into this layout's batches (with a warning: batches and
        their order differ from an uninterrupted run's); another ``bucket_size`` is another layout too. Nothing of
        the epoch is lost or repeated; an utterance batchable only under the new limits joins from the next
        epoch. Other data (another number of utterances) cannot continue the saved epoch: refused here; the
        trainer calls ``start_new_data`` instead when the recipe's training data changed under
        ``--allow-changes``."""
        if state.get("format") == 3:
            state = self._from_format_3(state)
        if state.get("format") == 4:
            state = self._from_format_4(state)
        if state.get("format") != SAMPLER_FORMAT:
            raise ValueError(f"cannot resume sampler: its state has format {state.get('format')!r}, this version "
                             f"reads {SAMPLER_FORMAT} (written by an earlier development version of earful: start "
                             "the run again)")
        if state["seed"] != self.seed:
            raise ValueError(f"cannot resume sampler: saved seed={state['seed']}, this run has {self.seed}")
        if state["num_utterances"] != len(self.lengths):
            raise ValueError(f"cannot resume sampler: saved num_utterances={state['num_utterances']}, this run has "
                             f"{len(self.lengths)}: not the training data of the checkpoint (another manifest, or "
                             "rows left out by other settings, such as data.skip_bad); resume with the data it was "
                             "trained with")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        now, dealing = self.layout(), str(state["dealing"])
        saved = {k: state[k] for k in now}
        relaid = saved != now or dealing != self.dealing
        # where every saved rank was (with skip_bad a rank that met a batch with no loadable audio pulled another,
        # so ranks may be a batch or a few apart, even in two epochs), else this state's place for every rank
        ranks = state.get("ranks") or []
        if len(ranks) == saved["world_size"]:
            places = [(int(r["epoch"]), int(r["position"])) for r in ranks]
            phases = {int(r["epoch"]): int(r["phase"]) for r in ranks if "phase" in r}
        elif relaid and dealing == "stream" and saved["world_size"] > 1:
            raise ValueError(f"cannot resume sampler in another layout from rank {state.get('rank')}'s state alone: "
                             f"the {saved['world_size']} saved ranks may stand a batch apart in the stream, so every "
                             "rank's place is needed (give them as 'ranks', as restore_training_state does)")
        else:
            places, phases = [(self.epoch, self.position)] * saved["world_size"], {}
        phases.setdefault(self.epoch, int(state["phase"]))
        first, last = min(e for e, _ in places), max(e for e, _ in places)
        # every rank keeps the same record (of the epochs some rank has not finished), whichever state it reads
        resumed = {int(r["epoch"]): list(r["steps"]) for r in state.get("resumed", []) if int(r["epoch"]) >= first}
        if relaid:
            # every rank continues from the earliest epoch a saved rank was in: each epoch from there on holds what
            # the saved ranks had not reached of it (a rank past an epoch had all of its share of it)
            then = self._with_layout(saved, dealing, phases)  # the saved run, for the phase of each such epoch
            then._resumed = {e: list(steps) for e, steps in resumed.items()}
            for epoch in sorted(set(range(first, last + 1)) | set(resumed)):
                positions = [p if e == epoch else (2**62 if e > epoch else 0) for e, p in places]
                if epoch in resumed or any(positions):  # nothing consumed yet: the epoch starts in the new layout
                    resumed.setdefault(epoch, []).append({"layout": saved, "positions": positions,
                                                          "dealing": dealing, "phase": then.phase(epoch)})
            self.epoch, self.position = first, 0
        self._resumed = resumed
        self._cache, self._size, self._pending = {}, {}, None
        if relaid:
            while self.epoch in self._resumed:
                self._pending = (self.epoch, self._everyone(self.epoch))  # dealt below, once its phase is known
                if len(self._pending[1]):
                    break
                self.epoch += 1  # the saved ranks had all finished it
            self._phase = {self.epoch: 0}  # the stream starts anew at rank 0
            self._resumed = {e: steps for e, steps in self._resumed.items() if e >= self.epoch}
            changed = ", ".join([f"{k} {saved[k]} -> {now[k]}" for k in now if saved[k] != now[k]]
                                + ([f"dealing {dealing} -> {self.dealing}"] if dealing != self.dealing else []))
            if self.rank == 0:  # every rank resumes alike: the main rank says so
                if self.epoch in self._resumed:
                    log.warning("sampler resumed with another layout (%s): the %d batches of epoch %d the saved run "
                                "had not reached (its ranks were at (epoch, batch) %s) are cut anew; this epoch's "
                                "batches differ from an uninterrupted run's", changed, self._size[self.epoch],
                                self.epoch, places)
                else:
                    log.warning("sampler resumed with another layout (%s): epoch %d starts in it", changed, self.epoch)
        else:
            self._phase = {self.epoch: phases[self.epoch]}
        if self.position > len(self.epoch_batches(self.epoch)):
            raise ValueError(f"cannot resume sampler: position {self.position} beyond epoch {self.epoch}")
