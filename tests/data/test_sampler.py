import itertools
import logging

import numpy as np
import pytest

from earful.data.sampler import SecondsBatchSampler, padding_fraction

RATE = 16000


def lengths(n: int = 500, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(RATE // 2, 12 * RATE, size=n)


def test_budget_and_coverage_once_per_epoch():
    lens = lengths()
    s = SecondsBatchSampler(lens, 30.0, seed=1)
    for epoch in range(2):
        batches = list(s)
        assert s.epoch == epoch + 1
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lens)))
        assert all(lens[b].max() * len(b) <= 30 * RATE for b in batches)
    assert s.skipped == 0
    assert padding_fraction(lens[b] for b in s.epoch_batches(0)) < 0.05  # length bucketing
    assert s.padding_fraction(0) == padding_fraction(lens[b] for b in s.epoch_batches(0))
    assert list(s.epoch_batches(0)[0]) != list(s.epoch_batches(1)[0])  # reshuffled per epoch
    real, padded = s.batch_seconds(s.epoch_batches(0)[0])
    assert real <= padded <= 30.0


def test_padding_fraction_helper():
    assert padding_fraction([[2, 2], [4, 2]]) == pytest.approx(1 - 10 / 12)
    assert padding_fraction([]) == 0.0


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_disjoint_equal_and_complete(world_size: int):
    lens = lengths(203)
    shards = [list(SecondsBatchSampler(lens, 40.0, seed=3, rank=r, world_size=world_size))
              for r in range(world_size)]
    assert len({len(b) for b in shards}) == 1  # same number of batches on every rank
    flat = [i for shard in shards for b in shard for i in b]
    assert sorted(flat) == list(range(len(lens)))  # disjoint and covering
    assert all(lens[b].max() * len(b) <= 40 * RATE for shard in shards for b in shard)


def test_few_utterances_many_ranks_repeat_rather_than_hang():
    shards = [list(SecondsBatchSampler([RATE] * 2, 10.0, rank=r, world_size=4)) for r in range(4)]
    assert [len(b) for b in shards] == [1, 1, 1, 1]


def test_exact_resume_mid_epoch_and_endless():
    lens = lengths(300)
    ref = SecondsBatchSampler(lens, 25.0, seed=7, endless=True)
    expected = list(itertools.islice(iter(ref), 100))  # spans several epochs
    s = SecondsBatchSampler(lens, 25.0, seed=7, endless=True)
    it = iter(s)
    got = [next(it) for _ in range(37)]
    state = s.state_dict()
    resumed = SecondsBatchSampler(lens, 25.0, seed=7, endless=True)
    resumed.load_state_dict(state)
    got += list(itertools.islice(iter(resumed), 63))
    assert got == expected
    with pytest.raises(ValueError, match="seed"):
        SecondsBatchSampler(lens, 25.0, seed=8).load_state_dict(state)


def test_unbatchable_counted_warned_or_raised(caplog):
    lens = [RATE * 1, RATE * 50, RATE // 10, RATE * 2]
    with caplog.at_level(logging.WARNING):
        s = SecondsBatchSampler(lens, 10.0, min_seconds=0.5)
    assert s.skipped == 2 and s.skipped_indices.tolist() == [1, 2]
    assert "2 of 4 utterances cannot be batched" in caplog.text
    assert sorted(i for b in s for i in b) == [0, 3]
    with pytest.raises(ValueError, match="longer than max_seconds"):
        SecondsBatchSampler(lens, 10.0, strict=True)
    cropped = SecondsBatchSampler(lens, 10.0, crop_seconds=5.0)  # cropping makes the long one fit
    assert cropped.skipped == 0
    assert all(cropped.effective[b].max() * len(b) <= 10 * RATE for b in cropped)


def test_empty_utterance_is_counted_not_a_crash(caplog):
    """Without min_seconds (the paper's recipe) an empty utterance would divide by zero when it opens a batch."""
    with caplog.at_level(logging.WARNING):
        s = SecondsBatchSampler([0, RATE, 2 * RATE], 10.0, min_seconds=None, shuffle=False)
    assert s.skipped == 1 and s.skipped_reasons == {"empty (0 samples)": 1}
    assert "empty (0 samples)" in caplog.text
    assert sorted(i for b in s for i in b) == [1, 2]


def test_resume_with_smaller_micro_batches_continues_at_the_same_fraction(caplog):
    """After an out-of-memory error the advice is a smaller device_seconds: such a run still resumes."""
    lens = lengths(300)
    s = SecondsBatchSampler(lens, 25.0, seed=7)
    it = iter(s)
    for _ in range(20):
        next(it)
    state = s.state_dict()
    smaller = SecondsBatchSampler(lens, 12.5, seed=7)
    with caplog.at_level(logging.WARNING):
        smaller.load_state_dict(state)
    assert "another layout" in caplog.text
    frac = 20 / len(s.epoch_batches(0))
    assert abs(smaller.position / len(smaller.epoch_batches(0)) - frac) < 0.01
    left = len(smaller.epoch_batches(0)) - smaller.position
    assert len(list(smaller)) == left  # the rest of the epoch, then it ends
    with pytest.raises(ValueError, match="num_utterances"):
        SecondsBatchSampler(lens[:-1], 25.0, seed=7).load_state_dict(state)


def test_resume_from_a_state_without_pack_samples_maps_the_position():
    """A checkpoint written before packing had its own budget (max_samples was both): resumed with a smaller
    packing budget, the run continues at the same fraction of the epoch, also at its very end."""
    lens = lengths(300)
    s = SecondsBatchSampler(lens, 25.0, seed=7)
    n = len(s.epoch_batches(0))
    for pos in (20, n - 1, n):
        state = {**s.state_dict(), "position": pos}
        del state["pack_samples"]
        packed = SecondsBatchSampler(lens, 25.0, seed=7, pack_seconds=12.5)
        packed.load_state_dict(state)
        new_n = len(packed.epoch_batches(0))
        assert new_n > n and abs(packed.position - round(pos * new_n / n)) <= 1 and packed.position <= new_n


def test_pack_budget_does_not_leave_out_what_fits_the_device():
    lens = [RATE * 10, RATE * 2, RATE * 2, RATE * 3]
    s = SecondsBatchSampler(lens, 20.0, pack_seconds=5.0, shuffle=False)
    assert s.skipped == 0
    batches = [sorted(int(i) for i in b) for b in s]
    assert [0] in batches  # 10 s is over the 5 s budget but within the 20 s device: a batch of its own
    assert all(sum(lens[i] for i in b) <= 5 * RATE for b in batches if b != [0])
