"""Dataset, collate and DataLoader: utterances -> zero-padded ``Batch`` es measured in seconds."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .audio import AudioError, check_decodes_up_to, check_length, check_row, decode_audio, open_audio
from .budget import SAMPLE_RATE, BatchBudget, shape_length, to_samples
from .manifest import Manifest, Utterance, lengths_at_rate
from .parallel import ignore_stop_signals
from .sampler import SecondsBatchSampler

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One loaded utterance (or, with ``skip_bad``, the error that replaced it)."""

    index: int
    id: str
    wave: np.ndarray | None
    error: str | None = None
    epoch: int = 0


@dataclass
class Batch:
    """Zero-padded audio batch. ``bad`` lists ``(id, problem)`` for files skipped with ``skip_bad``."""

    wave: torch.Tensor  # (B, S) float32
    lengths: torch.Tensor  # (B,) int64
    ids: list[str]
    real_seconds: float
    padded_seconds: float
    bad: list[tuple[str, str]] = field(default_factory=list)
    epoch: int = -1  # set by AudioLoader: the sampler's epoch and this rank's batch index in it
    index: int = -1
    stream: tuple[int, int, int, int] | None = None  # from shards: (stream, epoch, bucket, batches of it done)

    def __len__(self) -> int:
        return len(self.ids)

    def samples(self) -> tuple[int, int]:
        """Real and padded samples of the batch, counted on the host (no device sync)."""
        return int(self.lengths.sum()), self.wave.numel()

    def model_inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The waveform and lengths on ``device`` for a model's forward, copied without waiting (from pinned
        memory on a GPU). Lengths are None when every utterance fills the batch, which is decided here, on the
        host: the model then runs attention without a key mask, and SDPA may pick FlashAttention on a GPU."""
        full = bool((self.lengths == self.wave.shape[1]).all())
        wave = self.wave.to(device, non_blocking=True)
        return wave, None if full else self.lengths.to(device, non_blocking=True)

    def pin_memory(self) -> Batch:
        return replace(self, wave=self.wave.pin_memory(), lengths=self.lengths.pin_memory())


class AudioDataset(Dataset):
    """Utterances loaded at ``SAMPLE_RATE``; optional random crop deterministic in (seed, epoch, index).

    The crop is chosen before reading, from the manifest's length, and only it is decoded: a 15.6 s crop of a
    30-minute file (or of a segment of it) decodes 15.6 s. Audio at another rate is decoded whole (the file, or
    the segment) and resampled before it is cropped, as resampling a window alone would give other samples.

    Indexed by an ``int`` (epoch 0) or an ``(index, epoch)`` pair, which is what
    ``make_loader`` feeds so that worker processes crop by the epoch of each batch.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        *,
        crop_seconds: float | None = None,
        seed: int = 0,
        skip_bad: bool = False,
    ) -> None:
        self.utterances = utterances if isinstance(utterances, Manifest) else list(utterances)
        self.crop_samples = to_samples(crop_seconds) if crop_seconds else None  # as the sampler
        self.seed = seed
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.utterances)

    def lengths(self) -> np.ndarray:
        """Samples per utterance at ``SAMPLE_RATE``, from the manifest (what the sampler needs)."""
        return lengths_at_rate(self.utterances)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        utt = self.utterances[index]
        try:
            wave = read_utterance(utt, index, epoch, crop_samples=self.crop_samples, seed=self.seed)
        except AudioError as e:
            if not self.skip_bad:
                raise
            return Item(index, utt.id, None, error=str(e), epoch=epoch)
        return Item(index, utt.id, wave, epoch=epoch)


def crop_window(samples: int, index: int, epoch: int, crop_samples: int | None, seed: int) -> tuple[int, int]:
    """(start, length) of what trains of an utterance of ``samples`` at ``SAMPLE_RATE``: a random crop of
    ``crop_samples``, deterministic in (seed, epoch, index), or the whole."""
    if crop_samples and samples > crop_samples:
        return int(np.random.default_rng([seed, epoch, index]).integers(0, samples - crop_samples + 1)), crop_samples
    return 0, samples


def read_utterance(utt: Utterance, index: int, epoch: int, *, crop_samples: int | None, seed: int,
                   source: str | IO[bytes] | None = None) -> np.ndarray:
    """The utterance's training window (its crop at ``SAMPLE_RATE``), decoding no more than that; from
    ``source`` (an in-memory shard member, named by its ``str()``) instead of ``utt.path`` when given."""
    src = utt.path if source is None else source
    expected = utt.samples_at(SAMPLE_RATE)
    with open_audio(src) as f:  # one open: the header checked against the row, then only the window decoded
        frames, rate = int(f.frames), int(f.samplerate)
        held = check_row(src, utt, frames, rate)  # samples at the file's rate
        first = 0 if utt.offset is None else utt.offset
        if rate != SAMPLE_RATE:  # decode what the row holds, resample, then crop
            wave = decode_audio(f, src, target_rate=SAMPLE_RATE, start=first,
                                frames=None if utt.offset is None else utt.num_samples)
            if utt.offset is None:  # as decoded: a header may promise more than the file holds
                check_length(src, len(wave), expected)
            wave = wave[: max(expected, 1)]  # resampling may add a sample or two: keep batches within budget
            start, n = crop_window(len(wave), index, epoch, crop_samples, seed)
            return wave[start : start + n]
        start, n = crop_window(held, index, epoch, crop_samples, seed)  # here the file's rate is SAMPLE_RATE
        return decode_audio(f, src, start=first + start, frames=n, min_samples=0)


def check_headers(utterances: Sequence[Utterance], where: str | None = None, skip_bad: str | None = None) -> None:
    """Every row against its file (``check_row``: readable, its rate and length, not too short; and its last
    sample read, which a file cut short by an interrupted copy lacks though its header promises it), before any
    work: a validation set is read at the first validation only, and a bad file there stopped the run after every
    step since its last checkpoint was trained (with the defaults, up to a checkpoint interval lost). A header and
    one seek a row, about a millisecond (a WAV codec libsndfile cannot seek in, GSM 6.10 or G.721, is decoded up to
    the row's end: :func:`earful.data.audio.decodes_up_to`). Raises AudioError naming the first problem (its file
    and utterance), how many more, ``where`` (the manifest) and ``skip_bad``, the setting that leaves them out."""
    problems: list[str] = []
    for u in utterances:
        try:
            with open_audio(u.path) as f:
                frames, rate = int(f.frames), int(f.samplerate)
                end = (u.offset or 0) + check_row(u.path, u, frames, rate)  # the row's last sample, at its rate
                check_decodes_up_to(f, u.path, end)
        except AudioError as e:
            problems.append(f"{e} (utterance {u.id})")
    if problems:
        more = f" (and {len(problems) - 1} more of its {len(utterances)} utterances)" if len(problems) > 1 else ""
        raise AudioError(f"{f'{where}: ' if where else ''}{problems[0]}{more}"
                         f"{f'; {skip_bad}=true leaves them out, counted' if skip_bad else ''}")


def collate(items: Sequence[Item], *, crop_to_shortest: bool = False, seed: int = 0, shape_samples: int | None = None,
            cap_samples: int | None = None, within_samples: int | None = None) -> Batch:
    """Zero-pad items at the end into a ``Batch``; items that failed to load go to ``Batch.bad``.

    ``crop_to_shortest``: fairseq's pre-training batches (``enable_padding: false``): every utterance is
    cropped at a random offset, deterministic in (seed, epoch, index), to the batch's shortest, so nothing
    is padded. ``shape_samples``: the batch is padded up (cropped: down) to a multiple of it, as the sampler
    planned (``earful.data.budget.shape_length``, at most ``cap_samples``, and ``within_samples`` where the batch
    fits a micro-batch's share)."""
    good = [it for it in items if it.wave is not None]
    if crop_to_shortest and good:
        n = min(len(it.wave) for it in good)
        if shape_samples and n >= shape_samples:
            n -= n % shape_samples
        for it in good:
            if len(it.wave) > n:
                start = int(np.random.default_rng([seed, it.epoch, it.index, 1]).integers(0, len(it.wave) - n + 1))
                it.wave = it.wave[start : start + n]
    bad = [(it.id, it.error or "") for it in items if it.wave is None]
    lengths = torch.tensor([len(it.wave) for it in good], dtype=torch.int64)
    max_len = int(lengths.max()) if len(good) else 0
    if not crop_to_shortest:
        max_len = shape_length(max_len, shape_samples, cap_samples, within_samples) if good else 0
    # numpy, not torch, pads: torch's per-row copies go through its intra-op thread pool, 4-30x slower
    # for these sizes (benchmarks/README.md, data path)
    padded = np.zeros((len(good), max_len), dtype=np.float32)
    for row, it in enumerate(good):
        padded[row, : len(it.wave)] = it.wave
    wave = torch.from_numpy(padded)
    return Batch(
        wave=wave,
        lengths=lengths,
        ids=[it.id for it in good],
        real_seconds=float(lengths.sum()) / SAMPLE_RATE if good else 0.0,
        padded_seconds=max_len * len(good) / SAMPLE_RATE,
        bad=bad,
    )


class _EpochTagged:
    """Batch sampler adapter: yields ``[(index, epoch), ...]`` so workers crop by the right epoch."""

    def __init__(self, sampler: SecondsBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.sampler:
            yield [(i, self.sampler.epoch) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)


def unreadable(uid: str, problem: str, skip_bad: str | None, noun: str) -> str:
    """The one-line error of a loader (``AudioLoader``, ``ShardLoader``) for a file its dataset could not read,
    where nothing leaves it out: the file and its problem (as read, in whichever process loaded it: a loader
    worker's error was its traceback), the ``noun`` ``uid`` and the way out, ``skip_bad`` as the caller names it
    (None: it has none)."""
    if not skip_bad:  # no way out here: the caller (evaluate) names its manifest and the one it has
        return f"{problem} ({noun} {uid})"
    option = skip_bad if skip_bad.startswith("-") else f"{skip_bad}=true"
    return f"{problem} ({noun} {uid}); {option} leaves unreadable files out, counted in the log"


class EmptyRun:
    """A rank's batches in a row without loadable audio (an endless, training loader under ``data.skip_bad``), and
    whether they show that none of its batches will ever load. It had spun for ever on such data (a warning a
    batch; a stop signal waited for a step that never came; under DDP the other ranks waited in the all-reduce).

    Where the rank's share of an epoch is the same every epoch (one rank; or shards read as the same stretches:
    one shard, or no shuffling), once the run holds a whole epoch of the rank's batches, from the epoch's first
    batch to its last (one of an epoch's length across two shuffled epochs would not do); where it changes from
    epoch to epoch (ranks dealt shuffled epochs), once the files of the run are every batchable one (over epochs a
    rank is dealt each): a rank given no readable file in one epoch may be given some in the next."""

    def __init__(self, same_share: bool, utterances: int) -> None:
        self.same_share, self.utterances = same_share, utterances
        self.since: list[tuple[int, ...]] | None = None  # the places (epoch, then where in it) the run began at
        self.unloadable: set[str] = set()

    def clear(self) -> None:
        self.since, self.unloadable = None, set()

    def hopeless(self, batch: Batch, before: list[tuple[int, ...]], after: list[tuple[int, ...]]) -> bool:
        """Add ``batch`` (no loadable audio), read from the places ``before`` to ``after``; whether it is hopeless."""
        self.since = self.since or before
        self.unloadable.update(uid for uid, _ in batch.bad)
        if self.same_share:
            return all(now[0] > (then[0] if not any(then[1:]) else then[0] + 1)  # past a whole epoch after `then`
                       for then, now in zip(self.since, after, strict=True))
        return len(self.unloadable) >= self.utterances

    def what(self) -> str:
        if self.same_share:
            return "a whole epoch of batches held no audio that could be read"
        return f"none of its {self.utterances} utterances could be read in this rank's batches in a row"


class Received:
    """What a loader's consumer counts of the batches training received: ``bad_files``, the distinct files
    skipped with ``skip_bad`` (each logged as a warning the first time; ``bad_ids`` holds their ids), and
    ``empty_batches``, batches with no loadable audio at all (left out)."""

    def __init__(self) -> None:
        self.bad_ids: set[str] = set()
        self.empty_batches = 0

    @property
    def bad_files(self) -> int:
        return len(self.bad_ids)

    def received_state(self) -> dict[str, Any]:
        """The counts, for a checkpoint: a resumed run goes on counting where it stopped."""
        return {"bad_ids": sorted(self.bad_ids), "empty_batches": self.empty_batches}

    def load_received_state(self, state: dict[str, Any]) -> None:
        self.bad_ids = set(state["bad_ids"])
        self.empty_batches = int(state.get("empty_batches", 0))  # not in checkpoints written before it was kept

    def none_loads(self, batch: Batch, source: str, run: EmptyRun) -> None:
        """Stop naming ``source``: ``run``, this rank's batches in a row without loadable audio, shows none of its
        batches will load (``EmptyRun``)."""
        examples = "; ".join(f"{uid}: {problem}" for uid, problem in batch.bad[:2])
        raise AudioError(f"{source or 'the training data'}: {run.what()} (each file left out as unreadable): nothing "
                         f"to train on, e.g. {examples}")

    def received(self, batch: Batch) -> bool:
        """Count ``batch``'s bad files; whether it holds audio to train on."""
        for uid, problem in batch.bad:
            if uid not in self.bad_ids:  # an endless loader meets it again every epoch
                self.bad_ids.add(uid)
                log.warning("skipped bad audio file %s: %s", uid, problem)
        if not len(batch):
            self.empty_batches += 1
            log.warning("a batch had no loadable audio and was left out")
        return bool(len(batch))


class AudioLoader(Received):
    """A DataLoader over an ``AudioDataset`` batched by a ``SecondsBatchSampler``.

    Counts what training actually received: ``state_dict()`` resumes exactly (the sampler itself runs
    ahead of training by the prefetched batches); bad files and empty batches as ``Received`` says;
    ``skipped`` is the sampler's count of unbatchable utterances.
    """

    def __init__(self, dataset: AudioDataset, sampler: SecondsBatchSampler, *, num_workers: int = 0,
                 pin_memory: bool = False, prefetch_factor: int | None = None, crop_to_shortest: bool = False,
                 skip_bad: bool = False, source: str = "") -> None:
        """``source``: what the messages name the utterances by (a manifest's path)."""
        super().__init__()
        self.dataset, self.sampler, self.skip_bad, self.source = dataset, sampler, skip_bad, source
        self.epoch, self.position = sampler.epoch, sampler.position
        self.loader = DataLoader(
            dataset,
            batch_sampler=_EpochTagged(sampler),
            collate_fn=partial(collate, crop_to_shortest=crop_to_shortest, seed=dataset.seed,
                               shape_samples=sampler.shape_samples,
                               cap_samples=sampler.shape_cap(), within_samples=sampler.micro_samples),
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers else None,
            worker_init_fn=ignore_stop_signals,
        )

    @property
    def skipped(self) -> int:
        return self.sampler.skipped

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        # Restart the sampler where training is (prefetched-but-unused batches of a previous iteration).
        self._settle()
        self.sampler.epoch, self.sampler.position = self.epoch, self.position
        empty = EmptyRun(self.sampler.world_size == 1, len(self.sampler.batchable))
        for batch in self.loader:
            if batch.bad and not self.skip_bad:
                raise AudioError(unreadable(*batch.bad[0], self.sampler.names["skip_bad"], "utterance"))
            batch.epoch, batch.index = self.epoch, self.position
            self.position += 1
            self._settle()
            if self.received(batch):
                empty.clear()
                yield batch
            elif self.sampler.endless:
                # the batch's place; the first of an epoch a relaid resume left part of is no epoch's start
                at = (batch.epoch, batch.index or int(self.sampler.partial_epoch(batch.epoch)))
                if empty.hopeless(batch, [at], [(self.epoch, self.position)]):
                    self.none_loads(batch, self.source, empty)

    def _settle(self) -> None:
        """Past the epochs this rank has no batch of left: with training's stream dealing a rank may have none
        of an epoch (fewer batches than ranks), as the sampler skips it."""
        while len(self.sampler.batchable) and self.position >= len(self.sampler.epoch_batches(self.epoch)):
            self.epoch, self.position = self.epoch + 1, 0

    def is_repeat(self, batch: Batch) -> bool:
        """Whether ``batch`` is a copy the sampler dealt only so that every rank gets as many batches (too few
        to share out): an evaluation counts each utterance once, so it skips these."""
        s = self.sampler
        n_global = len(s.epoch_batches(batch.epoch)) * s.world_size
        return batch.index * s.world_size + s.rank >= n_global - s.repeats.get(batch.epoch, 0)

    def rewind(self) -> None:
        """Back to the start of epoch 0: a validation pass goes over the same batches every time."""
        self.sampler.set_epoch(0)
        self.epoch, self.position = 0, 0

    def state_dict(self) -> dict[str, Any]:
        state = self.sampler.state_dict()
        state.update(epoch=self.epoch, position=self.position, phase=self.sampler.phase(self.epoch),
                     **self.received_state())
        return state

    def load_state_dict(self, state: dict[str, Any], *, new_data: bool = False) -> None:
        """Continue where ``state`` was saved; ``new_data`` (the recipe's training data changed, allowed by
        ``--resume --allow-changes``): a fresh epoch of this data after the saved one (``SecondsBatchSampler.
        start_new_data``), whatever data the state was saved reading (a manifest or shards)."""
        if new_data:
            self.sampler.start_new_data(state)
        elif "places" in state:
            raise ValueError("cannot resume from a manifest: the checkpoint's data position was saved reading shards "
                             "(data.shards): resume with the data setting it was saved with")
        else:
            self.sampler.load_state_dict(state)
        self.epoch, self.position = self.sampler.epoch, self.sampler.position
        self.load_received_state(state)


def make_loader(
    utterances: Sequence[Utterance],
    budget: BatchBudget,
    *,
    seed: int = 0,
    skip_bad: bool = False,
    crop_to_shortest: bool = False,
    rank: int = 0,
    shuffle: bool = True,
    endless: bool = False,
    bucket_size: int = 1000,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = 4,
    names: dict[str, str | None] | None = None,
    evaluation: bool = False,
    source: str | None = None,
    checked: bool = False,
) -> AudioLoader:
    """Dataset + seconds batch sampler + worker DataLoader for ``utterances`` within ``budget`` (``rank`` of its
    ``world_size``; ``crop_to_shortest``: see ``collate``). ``skip_bad``: unreadable files, and utterances the
    sampler cannot batch though no limit leaves them out (empty, too long for the device), are left out and
    counted instead of stopping the run. ``names``: the caller's names of the settings the sampler's messages
    advise (``SecondsBatchSampler``); ``evaluation``: a pass that scores each utterance once, the same batches on
    any number of ranks (``SecondsBatchSampler``), whose rows are checked against their files now
(``check_headers``) unless ``skip_bad`` or ``checked`` (by the caller, as evaluate checks every split first);
``source``: the manifest the sampler's messages name (default:
    ``utterances``' own, where it is a ``Manifest``)."""
    # the dataset hands a file it cannot read to the loader, which stops (without skip_bad) in this process
    dataset = AudioDataset(utterances, crop_seconds=budget.crop_seconds, seed=seed, skip_bad=True)
    if source is None:
        source = str(utterances.path) if isinstance(utterances, Manifest) else ""
    sampler = SecondsBatchSampler(dataset.lengths(), budget, shuffle=shuffle, seed=seed, rank=rank, endless=endless,
                                  bucket_size=bucket_size, skip_bad=skip_bad, source=source,
                                  ids=lambda idx: [dataset.utterances[int(i)].id for i in idx], names=names,
                                  evaluation=evaluation)
    if evaluation and not skip_bad and not checked:  # read once, perhaps long after the start: its rows checked now
        check_headers([utterances[int(i)] for i in sampler.batchable], source, sampler.names["skip_bad"])
    return AudioLoader(dataset, sampler, num_workers=num_workers, pin_memory=pin_memory,
                       prefetch_factor=prefetch_factor, crop_to_shortest=crop_to_shortest, skip_bad=skip_bad,
                       source=source)
