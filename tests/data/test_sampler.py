import itertools
import logging

import numpy as np
import pytest

from earful.data.budget import BatchBudget, to_samples
from earful.data.manifest import Utterance
from earful.data.sampler import SecondsBatchSampler

RATE = 16000


def _sampler(lens, device_seconds: float, *, world_size: int = 1, crop_seconds: float | None = None,
             min_seconds: float | None = None, max_seconds: float | None = None, pack_seconds: float | None = None,
             **kw) -> SecondsBatchSampler:
    """A sampler over ``lens`` whose steps are one micro-batch of ``pack_seconds`` (default: the device's)."""
    budget = BatchBudget((pack_seconds or device_seconds) * world_size, device_seconds, world_size,
                         crop_seconds=crop_seconds, min_seconds=min_seconds, max_seconds=max_seconds)
    return SecondsBatchSampler(lens, budget, **kw)


def lengths(n: int = 500, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(RATE // 2, 12 * RATE, size=n)


def test_budget_and_coverage_once_per_epoch():
    lens = lengths()
    s = _sampler(lens, 30.0, seed=1)
    for epoch in range(2):
        batches = list(s)
        assert s.epoch == epoch + 1
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lens)))
        assert all(lens[b].max() * len(b) <= 30 * RATE for b in batches)
    assert s.skipped == 0
    real = sum(int(lens[b].sum()) for b in s.epoch_batches(0))
    padded = sum(int(lens[b].max()) * len(b) for b in s.epoch_batches(0))  # each batch padded to its longest
    assert s.padding_fraction(0) == 1 - real / padded < 0.05  # length bucketing
    assert list(s.epoch_batches(0)[0]) != list(s.epoch_batches(1)[0])  # reshuffled per epoch


def test_padding_fraction_without_batches_is_zero():
    assert _sampler([], 30.0).padding_fraction(0) == 0.0


def test_a_sampler_that_would_leave_every_utterance_out_is_refused():
    with pytest.raises(ValueError, match=r"nothing to batch: all 1 utterances are left out \(1 shorter"):
        _sampler([RATE // 4], 30.0, min_seconds=1.0)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_disjoint_equal_and_complete(world_size: int):
    lens = lengths(203)
    shards = [list(_sampler(lens, 40.0, seed=3, rank=r, world_size=world_size))
              for r in range(world_size)]
    assert len({len(b) for b in shards}) == 1  # same number of batches on every rank
    flat = [i for shard in shards for b in shard for i in b]
    assert sorted(flat) == list(range(len(lens)))  # disjoint and covering
    assert all(lens[b].max() * len(b) <= 40 * RATE for shard in shards for b in shard)


def test_few_utterances_many_ranks_repeat_rather_than_hang():
    shards = [list(_sampler([RATE] * 2, 10.0, rank=r, world_size=4)) for r in range(4)]
    assert [len(b) for b in shards] == [1, 1, 1, 1]


def test_an_evaluation_deals_one_ranks_batches_to_any_number_of_ranks(caplog):
    """Validation and evaluation (``evaluation``) on 2 ranks go over 1 rank's batches, the last repeated (and
    skipped) rather than the fullest split: a split had made a 2-rank validation loss differ from 1 rank's.
    A finite training pass still splits, and says so (endless training deals one stream: tested below)."""
    lens = [RATE * 2] * 11  # 10 s micro-batches of 5, 5 and 1 utterances: 3 batches for 2 ranks
    one = [list(map(int, b)) for b in _sampler(lens, 10.0, shuffle=False, evaluation=True).epoch_batches(0)]
    assert len(one) % 2 == 1
    ranks = [_sampler(lens, 10.0, world_size=2, rank=r, shuffle=False, evaluation=True) for r in (0, 1)]
    dealt = [[list(map(int, b)) for b in r.epoch_batches(0)] for r in ranks]
    assert [len(d) for d in dealt] == [2, 2] and ranks[0].repeats[0] == 1
    assert [dealt[k % 2][k // 2] for k in range(len(one))] == one  # global batch k = rank k % 2's (k // 2)-th
    with caplog.at_level(logging.INFO):
        train = _sampler(lens, 10.0, world_size=2, shuffle=False)
        assert len(train.epoch_batches(0)) == 2 and train.repeats[0] == 0
    assert "epoch 0: 3 batches for 2 ranks: the fullest split 1 time(s)" in caplog.text


def test_exact_resume_mid_epoch_and_endless():
    lens = lengths(300)
    ref = _sampler(lens, 25.0, seed=7, endless=True)
    expected = list(itertools.islice(iter(ref), 100))  # spans several epochs
    s = _sampler(lens, 25.0, seed=7, endless=True)
    it = iter(s)
    got = [next(it) for _ in range(37)]
    state = s.state_dict()
    resumed = _sampler(lens, 25.0, seed=7, endless=True)
    resumed.load_state_dict(state)
    got += list(itertools.islice(iter(resumed), 63))
    assert got == expected
    with pytest.raises(ValueError, match="seed"):
        _sampler(lens, 25.0, seed=8).load_state_dict(state)


def test_unbatchable_counted_warned_or_raised(caplog):
    """Limits set on purpose (min_seconds, max_seconds) leave utterances out, counted and warned. What no setting
    leaves out — too long for the device, empty — is an error naming the source, how many, a few ids and the
    ways out; with skip_bad it is left out, counted and warned the same way (was: always left out, with a
    warning, and no config could make it an error)."""
    lens = [RATE * 1, RATE * 50, RATE // 10, RATE * 2]
    with pytest.raises(ValueError, match=r"m.jsonl: 1 of 4 utterances cannot be batched \(1 longer than "
                                         r"device_seconds=10 s\), e.g. u1: set data.skip_bad=true .*a larger "
                                         r"device_seconds \(the longest is 50.00 s\).*data.max_seconds"):
        _sampler(lens, 10.0, min_seconds=0.5, source="m.jsonl", ids=lambda idx: [f"u{i}" for i in idx])
    with caplog.at_level(logging.WARNING):
        s = _sampler(lens, 10.0, min_seconds=0.5, skip_bad=True)
    assert s.skipped == 2 and s.skipped_indices.tolist() == [1, 2]
    assert s.skipped_reasons == {"shorter than min_seconds=0.5 s": 1, "longer than device_seconds=10 s": 1}
    assert "2 of 4 utterances cannot be batched" in caplog.text and "1 of them with data.skip_bad" in caplog.text
    assert sorted(i for b in s for i in b) == [0, 3]
    cropped = _sampler(lens, 10.0, crop_seconds=5.0)  # cropping makes the long one fit
    assert cropped.skipped == 0
    # another caller names its own settings (gradvar's options; a validation's valid_seconds), and only those
    # it has: it had advised data.max_seconds and data.crop_seconds to gradvar, device_seconds to a validation
    gradvar = {"device_seconds": "--device-seconds", "max_seconds": None, "min_seconds": None,
               "crop_seconds": "--crop-seconds", "skip_bad": "--skip-bad"}
    with pytest.raises(ValueError, match=r"\(1 longer than --device-seconds=10 s\), e.g. #1: set --skip-bad to leave "
                                         r"them out \(counted in the log\); or a larger --device-seconds \(the "
                                         r"longest is 50.00 s\); or --crop-seconds to crop them$"):
        _sampler(lens, 10.0, names=gradvar)
    with pytest.raises(ValueError, match=r"nothing to batch: all 1 utterances are left out \(1 longer than "
                                         r"valid_seconds=10 s\); change data.min_seconds / data.max_seconds / "
                                         r"valid_seconds, or give other data"):
        _sampler([RATE * 50], 10.0, skip_bad=True, names={"device_seconds": "valid_seconds"})
    evaluate = {"device_seconds": "--device-seconds", "max_seconds": None, "min_seconds": None, "crop_seconds": None,
                "skip_bad": None}  # it has none of them: only the manifest can change
    with pytest.raises(ValueError, match=r"\(1 empty \(0 samples\)\), e.g. #0: remove the empty rows from the "
                                         r"manifest$"):
        _sampler([0, RATE], 10.0, names=evaluate)
    assert all(cropped.effective[b].max() * len(b) <= 10 * RATE for b in cropped)
    # the longest utterance admitted (fine-tuning's 30 s), below what a device holds: a limit set on purpose
    limited = _sampler(lens, 60.0, max_seconds=1.5)
    assert limited.skipped_reasons == {"longer than max_seconds=1.5 s": 2}
    assert sorted(i for b in limited for i in b) == [0, 2]
    # longer than both: max_seconds leaves it out on purpose, no error
    assert _sampler(lens, 10.0, max_seconds=5.0).skipped_reasons == {"longer than max_seconds=5 s": 1}
    # a crop longer than the device holds saves nothing: the message says to crop within it
    with pytest.raises(ValueError, match=r"data.crop_seconds at most device_seconds \(the crop, 15.6 s"):
        _sampler(lens, 10.0, crop_seconds=15.6)


def test_empty_utterance_is_an_error_or_counted_not_a_crash(caplog):
    """Without min_seconds (the paper's recipe) an empty utterance would divide by zero when it opens a batch:
    an error naming it, or with skip_bad counted; min_seconds leaves it out on purpose."""
    with pytest.raises(ValueError, match=r"1 of 3 utterances cannot be batched \(1 empty \(0 samples\)\), e.g. #0: "
                                         r".*remove the empty rows"):
        _sampler([0, RATE, 2 * RATE], 10.0, shuffle=False)
    with caplog.at_level(logging.WARNING):
        s = _sampler([0, RATE, 2 * RATE], 10.0, shuffle=False, skip_bad=True)
    assert s.skipped == 1 and s.skipped_reasons == {"empty (0 samples)": 1}
    assert "empty (0 samples)" in caplog.text
    assert sorted(i for b in s for i in b) == [1, 2]
    limited = _sampler([0, RATE, 2 * RATE], 10.0, min_seconds=0.5)
    assert limited.skipped_reasons == {"shorter than min_seconds=0.5 s": 1}


def _consume(samplers: list[SecondsBatchSampler], n: int) -> list[int]:
    """``n`` batches from each rank's sampler (as ranks step together); the utterances they held."""
    out: list[int] = []
    for s in samplers:
        it = iter(s)
        out += [i for _ in range(n) for i in next(it)]
    return out


def _rest(samplers: list[SecondsBatchSampler]) -> list[int]:
    """The utterances every rank's sampler yields until the end of its epoch."""
    return [i for s in samplers for b in s for i in b]


def test_resume_with_smaller_micro_batches_continues_with_the_unseen_utterances(caplog):
    """After an out-of-memory error the advice is a smaller device_seconds: the saved epoch continues with
    exactly the utterances the saved run had not reached, in batches of the new size."""
    lens = lengths(300)
    s = _sampler(lens, 25.0, seed=7)
    seen = _consume([s], 20)
    smaller = _sampler(lens, 12.5, seed=7)
    with caplog.at_level(logging.WARNING):
        smaller.load_state_dict(s.state_dict())
    assert "another layout (device_samples 400000 -> 200000, micro_samples 400000 -> 200000)" in caplog.text
    rest = [b for b in iter(smaller)]
    assert all(lens[b].max() * len(b) <= 12.5 * RATE for b in rest)
    flat = seen + [i for b in rest for i in b]
    assert sorted(flat) == list(range(len(lens)))  # nothing lost, nothing twice
    assert smaller.epoch == 1 and sorted(i for b in smaller for i in b) == list(range(len(lens)))
    with pytest.raises(ValueError, match="num_utterances"):
        _sampler(lens[:-1], 25.0, seed=7).load_state_dict(s.state_dict())


def test_resume_with_smaller_micro_batches_on_the_same_device():
    """The same device, more accumulation (a larger step shared out in smaller micro-batches): the epoch
    continues with what it had not reached, also at its very end."""
    lens = lengths(300)
    n = len(_sampler(lens, 25.0, seed=7).epoch_batches(0))
    for pos in (20, n - 1, n):
        s = _sampler(lens, 25.0, seed=7)
        seen = _consume([s], pos)
        state = {**s.state_dict(), "position": pos}
        packed = _sampler(lens, 25.0, seed=7, pack_seconds=12.5)
        packed.load_state_dict(state)
        assert (packed.epoch, packed.position) == ((1, 0) if pos == n else (0, 0))
        assert sorted(seen + (_rest([packed]) if pos < n else [])) == list(range(len(lens)))


@pytest.mark.parametrize("saved_world, new_world", [(2, 1), (2, 4), (1, 3), (4, 3)])
def test_resume_on_another_number_of_devices_loses_and_repeats_nothing(saved_world: int, new_world: int):
    """Each rank resumes from rank 0's state (all ranks step together); the new ranks share what is left."""
    lens = lengths(203)
    ranks = [_sampler(lens, 40.0, seed=3, rank=r, world_size=saved_world) for r in range(saved_world)]
    seen = _consume(ranks, 7)
    state = ranks[0].state_dict()
    resumed = [_sampler(lens, 40.0, seed=3, rank=r, world_size=new_world) for r in range(new_world)]
    for r in resumed:
        r.load_state_dict(state)
    assert len({len(r.epoch_batches()) for r in resumed}) == 1  # every rank the same number of batches
    assert sorted(seen + _rest(resumed)) == list(range(len(lens)))


def test_resume_with_another_length_limit_keeps_to_the_saved_epoch():
    """Raising the length limit makes more utterances batchable: they join from the next epoch, and the
    saved epoch still sees each of its utterances once (the epoch is not reshuffled under the position)."""
    lens = np.concatenate([lengths(300), np.full(20, 22 * RATE)])  # 20 of 22 s: only batchable at 25 s
    s = _sampler(lens, 20.0, seed=5, skip_bad=True)
    seen = _consume([s], 40)
    wider = _sampler(lens, 25.0, seed=5, skip_bad=True)
    wider.load_state_dict(s.state_dict())
    assert sorted(seen + _rest([wider])) == list(range(300))
    assert sorted(i for b in wider for i in b) == list(range(320))  # the next epoch has all of them


def test_a_resumed_epoch_resumes_again_exactly_or_with_yet_another_layout():
    lens = lengths(203)
    two = [_sampler(lens, 40.0, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = _consume(two, 5)
    one = _sampler(lens, 40.0, seed=3)
    one.load_state_dict(two[0].state_dict())
    seen += _consume([one], 6)
    state = one.state_dict()
    again = _sampler(lens, 40.0, seed=3)  # the same layout: exactly where it was
    again.load_state_dict(state)
    assert [b for b in iter(again)] == [b for b in iter(one)]
    three = [_sampler(lens, 20.0, seed=3, rank=r, world_size=3) for r in range(3)]
    for r in three:
        r.load_state_dict(state)
    assert sorted(seen + _rest(three)) == list(range(len(lens)))


def test_a_resume_in_another_layout_is_said_once_not_by_every_rank(caplog):
    """Every rank resumes alike: the main rank says so (under ``torchrun`` each rank had logged the same
    warning)."""
    lens = lengths(203)
    one = _sampler(lens, 40.0, seed=3)
    _consume([one], 5)
    two = [_sampler(lens, 40.0, seed=3, rank=r, world_size=2) for r in range(2)]
    with caplog.at_level(logging.WARNING):
        for r in two:
            r.load_state_dict(one.state_dict())
    said = [r for r in caplog.records if "sampler resumed with another layout" in r.getMessage()]
    assert len(said) == 1, caplog.text


@pytest.mark.parametrize("new_world", [1, 2, 3])
def test_ranks_a_batch_apart_resume_in_another_layout_without_loss(new_world: int):
    """A rank that met an unreadable batch pulled one more: the remainder is cut from every rank's place."""
    lens = lengths(203)
    ranks = [_sampler(lens, 40.0, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = _consume(ranks[:1], 7) + _consume(ranks[1:], 8)
    state = {**ranks[0].state_dict(), "ranks": [{"epoch": 0, "position": 7}, {"epoch": 0, "position": 8}]}
    resumed = [_sampler(lens, 20.0, seed=3, rank=r, world_size=new_world) for r in range(new_world)]
    for r in resumed:
        r.load_state_dict(state)
    assert len({len(r.epoch_batches()) for r in resumed}) == 1
    assert sorted(seen + _rest(resumed)) == list(range(len(lens)))


@pytest.mark.parametrize("new_world", [1, 2, 3])
@pytest.mark.parametrize("behind, ahead", [(1, 0), (2, 1)])
def test_ranks_straddling_an_epoch_boundary_resume_in_another_layout_without_loss(new_world: int, behind: int,
                                                                                  ahead: int):
    """With skip_bad a rank that met a batch with no loadable audio pulled another: rank 1 is already in epoch 1
    (``ahead`` batches into it) while rank 0 has ``behind`` batches of epoch 0 left. Resumed with a smaller
    device_seconds, every rank continues from epoch 0's remainder (was: the rank ahead skipped it, so its share
    of epoch 0 was never seen and the ranks had unequal batch counts), then epoch 1's: each utterance once in
    each epoch, and every rank the same number of batches in each."""
    lens = lengths(203)
    ranks = [_sampler(lens, 40.0, seed=3, rank=r, world_size=2) for r in range(2)]
    n = len(ranks[0].epoch_batches(0))
    places = [(0, n - behind), (1, ahead)]
    seen = {epoch: [] for epoch in (0, 1)}
    for r, (epoch, position) in zip(ranks, places, strict=True):
        for e in range(epoch + 1):
            batches = r.epoch_batches(e)
            seen[e] += [i for k in range(position if e == epoch else n) for i in batches[k].tolist()]
    states = [{**r.state_dict(), "epoch": e, "position": p, "ranks": [{"epoch": e_, "position": p_}
                                                                       for e_, p_ in places]}
              for r, (e, p) in zip(ranks, places, strict=True)]
    resumed = [_sampler(lens, 20.0, seed=3, rank=r, world_size=new_world) for r in range(new_world)]
    for r in resumed:
        r.load_state_dict(states[r.rank] if new_world == 2 else states[0])  # as restore_training_state gives them
    assert [r.epoch for r in resumed] == [0] * new_world
    for epoch in (0, 1):
        assert len({len(r.epoch_batches(epoch)) for r in resumed}) == 1  # equal batch counts: no rank waits
        assert sorted(seen[epoch] + _rest(resumed)) == list(range(len(lens)))  # nothing lost, nothing twice
    assert sorted(_rest(resumed)) == list(range(len(lens)))  # epoch 2 whole, in the new layout
    again = _sampler(lens, 20.0, seed=3, rank=0, world_size=new_world)
    again.load_state_dict({**resumed[0].state_dict(), "epoch": 0, "position": 0})  # resumed again at its start
    assert [b.tolist() for b in again.epoch_batches(1)] == [b.tolist() for b in resumed[0].epoch_batches(1)]


def test_resume_with_another_bucket_size_loses_and_repeats_nothing(caplog):
    """The bucket size decides how an epoch is cut: a resume with another data.bucket_size rebuilds the saved
    epoch as it was cut and continues with exactly what was not reached (was: the old position in an epoch cut
    anew, so some utterances came twice and others never)."""
    lens = lengths(200)
    s = _sampler(lens, 12.0, seed=1, bucket_size=20)
    seen = _consume([s], 10)
    wider = _sampler(lens, 12.0, seed=1, bucket_size=1000)
    with caplog.at_level(logging.WARNING):
        wider.load_state_dict(s.state_dict())
    assert sorted(seen + _rest([wider])) == list(range(len(lens)))  # nothing lost, nothing twice
    assert "another layout (bucket_size 20 -> 1000)" in caplog.text
    assert wider.epoch == 1 and sorted(i for b in wider for i in b) == list(range(len(lens)))


def test_a_state_of_format_3_resumes_as_its_format_4_twin_and_older_ones_are_refused():
    """Format 3 states do not record the bucket size; a resume cannot change it without --allow-changes (the
    recipe holds it), so a format-3 state is read as cut with this run's: the same batches as the format-4 state,
    also for a state that was itself resumed in another layout. Format 2 is refused, naming the way out."""
    lens = lengths(200)
    s = _sampler(lens, 25.0, seed=2)
    _consume([s], 5)
    relaid = _sampler(lens, 12.0, seed=2)  # a re-layout: its state carries the record of the epoch
    relaid.load_state_dict(s.state_dict())
    _consume([relaid], 2)
    assert "resumed" in relaid.state_dict()
    for state in (s.state_dict(), relaid.state_dict()):
        def without_bucket(d):
            return {k: v for k, v in d.items() if k != "bucket_size"}

        old = without_bucket(state) | {"format": 3}
        if "resumed" in state:  # format 3 kept one epoch's record, its layouts without the bucket size
            (r,) = state["resumed"]
            old["resumed"] = {"epoch": r["epoch"], "steps": [{**st, "layout": without_bucket(st["layout"])}
                                                             for st in r["steps"]]}
        a, b = _sampler(lens, 12.0, seed=2), _sampler(lens, 12.0, seed=2)
        a.load_state_dict(state)
        b.load_state_dict(old)
        assert (a.epoch, a.position) == (b.epoch, b.position)
        assert [x.tolist() for x in a.epoch_batches(a.epoch)] == [x.tolist() for x in b.epoch_batches(b.epoch)]
    # resumed with --allow-changes into another bucket size: the trainer adds the checkpoint recipe's bucket size
    # to a format-3 state, and the epoch is re-laid from it (nothing lost or repeated)
    small = _sampler(lens, 12.0, seed=2, bucket_size=20)
    seen = _consume([small], 10)
    old = {k: v for k, v in small.state_dict().items() if k != "bucket_size"} | {"format": 3, "bucket_size": 20}
    wider = _sampler(lens, 12.0, seed=2, bucket_size=1000)
    wider.load_state_dict(old)
    assert sorted(seen + _rest([wider])) == sorted(small.batchable.tolist())
    with pytest.raises(ValueError, match=r"format 2, this version reads 5 .*start the run again"):
        _sampler(lens, 12.0, seed=2).load_state_dict(s.state_dict() | {"format": 2})


def test_a_larger_budget_after_resume_fills_its_batches():
    """25 → 50 s micro-batches mid-epoch: the rest is packed to the new budget, in shuffled order."""
    lens = lengths(600)
    s = _sampler(lens, 25.0, seed=2)
    _consume([s], 30)
    bigger = _sampler(lens, 50.0, seed=2)
    bigger.load_state_dict(s.state_dict())
    rest = bigger.epoch_batches()
    fresh = _sampler(lens, 50.0, seed=2).epoch_batches(0)
    mean = float(np.mean([lens[b].sum() for b in rest])) / RATE
    assert mean > 0.9 * float(np.mean([lens[b].sum() for b in fresh])) / RATE
    longest = [int(lens[b].max()) for b in rest]
    assert longest != sorted(longest, reverse=True)  # not longest-first


def test_a_new_layout_at_an_epoch_boundary_starts_the_epoch_fresh():
    lens = lengths(300)
    s = _sampler(lens, 25.0, seed=7)
    list(s)  # a whole epoch: the state says epoch 1, position 0
    smaller = _sampler(lens, 12.5, seed=7)
    smaller.load_state_dict(s.state_dict())
    assert smaller.epoch == 1 and "resumed" not in smaller.state_dict()
    fresh = _sampler(lens, 12.5, seed=7)
    assert [b.tolist() for b in smaller.epoch_batches(1)] == [b.tolist() for b in fresh.epoch_batches(1)]


def test_each_resume_rebuilds_the_epoch_once(monkeypatch):
    """Seven layout changes within one epoch: one rebuild of the original epoch, not 2^7."""
    lens = lengths(300)
    s = _sampler(lens, 25.0, seed=7)
    for k in range(7):
        _consume([s], 3)
        nxt = _sampler(lens, 25.0 if k % 2 else 20.0, seed=7)
        nxt.load_state_dict(s.state_dict())
        s = nxt
    calls = []
    original = SecondsBatchSampler._global_batches
    monkeypatch.setattr(SecondsBatchSampler, "_global_batches",
                        lambda self, epoch: calls.append(epoch) or original(self, epoch))
    s._cache = {}
    s.epoch_batches(0)
    assert len(calls) == 2  # this one, and the epoch's first cut under the first layout (not 2^7)


def test_pack_budget_does_not_leave_out_what_fits_the_device():
    lens = [RATE * 10, RATE * 2, RATE * 2, RATE * 3]
    s = _sampler(lens, 20.0, pack_seconds=5.0, shuffle=False)
    assert s.skipped == 0
    batches = [sorted(int(i) for i in b) for b in s]
    assert [0] in batches  # 10 s is over the 5 s budget but within the 20 s device: a batch of its own
    assert all(sum(lens[i] for i in b) <= 5 * RATE for b in batches if b != [0])


def test_seconds_become_samples_by_rounding():
    """2.01 s is 32160 samples: int(2.01 * 16000) = 32159 refused a file of exactly 2.01 s."""
    s = _sampler([32160, 64480, 100], 2.01, min_seconds=0.00625, skip_bad=True)
    assert s.device_samples == 32160 and s.min_samples == 100
    assert s.skipped_reasons == {"longer than device_seconds=2.01 s": 1}
    low = _sampler([64480, 64479], 10.0, min_seconds=4.03)
    assert low.skipped == 1 and low.skipped_indices.tolist() == [1]


def test_a_shape_grid_gives_few_fixed_batch_shapes_and_resumes_exactly():
    """shape_seconds=1: padded lengths on a 1 s grid (never past the crop), as many utterances as that length
    allows in every batch but a bucket's last: a handful of shapes for cudnn.benchmark / torch.compile, the
    extra padding counted, and a resume exactly where the run was."""
    lens = lengths(600, seed=3)
    plain = _sampler(lens, 32.0, crop_seconds=7.5, seed=4)
    budget = BatchBudget(32.0, 32.0, crop_seconds=7.5, shape_seconds=1.0)
    grid = SecondsBatchSampler(lens, budget, seed=4, bucket_size=200)
    shapes = set()
    for b in grid.epoch_batches(0):
        longest = int(grid.effective[b].max())
        padded = min(-(-longest // RATE) * RATE, max(longest, int(7.5 * RATE)))
        assert padded % RATE == 0 or padded == int(7.5 * RATE)  # on the grid, or the crop itself
        assert padded * len(b) <= 32 * RATE
        shapes.add((len(b), padded))
    full = {(n, p) for n, p in shapes if n == max(1, 32 * RATE // p)}
    assert len(full) <= 8 and len(shapes) - len(full) <= 3  # one partial batch per bucket at most
    assert grid.padding_fraction(0) > plain.padding_fraction(0)  # the rounding is padding, and counted
    seen = _consume([grid], 7)
    resumed = SecondsBatchSampler(lens, budget, seed=4, bucket_size=200)
    resumed.load_state_dict(grid.state_dict())
    assert sorted(seen + _rest([resumed])) == sorted(grid.batchable.tolist())


@pytest.mark.parametrize("limits", [{"device_seconds": 10.0}, {"device_seconds": 15.0, "max_seconds": 15.0}])
def test_the_shape_grid_never_pads_past_what_a_device_holds(limits):
    """A crop (15.6 s) longer than device_seconds or max_seconds: the grid (4 s) rounds a batch up to those at most
    (before, to 12 or 15.6 s: a 10 s device got a 12 s batch)."""
    budget = BatchBudget(30.0, crop_seconds=15.6, shape_seconds=4.0, **limits)
    sampler = SecondsBatchSampler([int(s * RATE) for s in (9.0, 14.5, 3.0, 2.0)], budget, shuffle=False,
                                  skip_bad=True)
    cap = int(min(limits.values()) * RATE)
    for b in sampler.epoch_batches(0):
        assert int(sampler.shaped(np.array([sampler.effective[b].max()]))[0]) * len(b) <= cap


@pytest.mark.parametrize("budget, length, padded", [((50.0, 30.0, 2.0), 24.5, 25.0), ((10.0, 20.0, 8.0), 9.5, 10.0)])
def test_the_shape_grid_never_pads_an_utterance_that_fits_a_micro_batch_past_it(tmp_path, budget, length, padded):
    """A review: a 24.5 s utterance in a 25 s micro-batch (a 50 s batch in 2, 30 s devices) on a 2 s grid was padded
    to 26 s, a 52 s step, and a 9.5 s one in a 10 s micro-batch on an 8 s grid to 16 s, without a word (the warning
    of steps over the batch counts utterances longer than the micro-batch alone). The grid rounds up to the
    micro-batch's share at most, in the sampler's plan and in the batch the loader pads; a longer utterance still
    rounds up on the grid, alone."""
    import soundfile as sf

    from earful.data.dataset import make_loader

    batch_seconds, device_seconds, grid = budget
    b = BatchBudget(batch_seconds, device_seconds, shape_seconds=grid)
    sampler = SecondsBatchSampler([int(length * RATE)] * 3, b, seed=0)
    assert [int(sampler.shaped(np.array([sampler.effective[x].max()]))[0]) for x in sampler.epoch_batches(0)] \
        == [int(padded * RATE)] * 3
    utts = []
    for i in range(2):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, np.zeros(int(length * RATE), dtype=np.float32), RATE)
        utts.append(Utterance(f"u{i}", str(path), int(length * RATE), RATE, "s"))
    loader = make_loader(utts, b, seed=0, shuffle=False, endless=False, num_workers=0)
    assert {tuple(batch.wave.shape) for batch in loader} == {(1, int(padded * RATE))}
    longer = SecondsBatchSampler([sampler.micro_samples + int(1.5 * RATE)], b, seed=0)  # over the share: on the grid
    assert int(longer.shaped(np.array([longer.effective[0]]))[0]) % int(grid * RATE) == 0


def test_collate_pads_to_the_grid_and_crops_down_to_it():
    from earful.data.dataset import Item, collate

    items = [Item(i, f"u{i}", np.ones(n, dtype=np.float32)) for i, n in enumerate((23000, 17000))]
    batch = collate(items, shape_samples=RATE, cap_samples=5 * RATE)
    assert batch.wave.shape == (2, 2 * RATE) and batch.lengths.tolist() == [23000, 17000]
    cropped = collate([Item(i, f"u{i}", np.ones(n, dtype=np.float32)) for i, n in enumerate((40000, 35000))],
                      crop_to_shortest=True, shape_samples=RATE)
    assert cropped.wave.shape == (2, 2 * RATE) and cropped.lengths.tolist() == [2 * RATE, 2 * RATE]



def _stream(ranks: list[SecondsBatchSampler], n: int) -> list[list[int]]:
    """The first ``n`` global batches the ranks' endless iterators give together: global k is rank k % W's
    (k // W)-th, as one optimizer step takes them (engine: micro-batch j of a step is j·W + rank)."""
    its = [iter(r) for r in ranks]
    return [next(its[k % len(ranks)]) for k in range(n)]


def _ranks(lens, world_size: int, device_seconds: float = 20.0, seed: int = 9, **kw) -> list[SecondsBatchSampler]:
    return [_sampler(lens, device_seconds, world_size=world_size, seed=seed, endless=True, rank=r, **kw)
            for r in range(world_size)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_training_deals_one_stream_so_w_ranks_take_what_one_process_takes(world_size: int, caplog):
    """Training's epochs are dealt as one stream, across the epoch boundaries: W ranks together take batch for
    batch what one process takes, also when an epoch's batch count does not divide among the ranks (was: the
    fullest batch split, so from there the ranks trained on other batches than one process with W× the
    accumulation: weights differed by 0.009 after 11 steps in the DDP review). Nothing is split or repeated."""
    lens = lengths(53, seed=4)
    one = _sampler(lens, 20.0, seed=9, endless=True)
    counts = [len(one.epoch_batches(e)) for e in range(6)]
    assert any(c % world_size for c in counts)  # the case the split dealing got wrong
    expected = [b.tolist() for e in range(6) for b in one.epoch_batches(e)]
    ranks = _ranks(lens, world_size)
    with caplog.at_level(logging.INFO):
        assert _stream(ranks, len(expected)) == expected
    assert "split" not in caplog.text and not any(r.repeated for r in ranks)
    assert [ranks[0].phase(e) for e in range(6)] == [sum(counts[:e]) % world_size for e in range(6)]


def test_ranks_resume_the_stream_exactly_mid_epoch():
    """Each rank's state holds its epoch's phase: 2 ranks stopped in an epoch whose first batch is rank 1's
    (rank 0 took one batch more of the epochs before) resume exactly."""
    lens = lengths(53, seed=4)
    expected = _stream(_ranks(lens, 2), 60)
    ranks = _ranks(lens, 2)
    odd = next(e for e in range(1, 6) if ranks[0].phase(e) == 1)
    stop = sum(len(ranks[0].epoch_batches(e)) + len(ranks[1].epoch_batches(e)) for e in range(odd)) + 4
    got = _stream(ranks, stop)
    states = [r.state_dict() for r in ranks]
    assert [(s["epoch"], s["position"], s["phase"]) for s in states] == [(odd, 2, 1), (odd, 2, 1)]
    resumed = _ranks(lens, 2)
    for r, s in zip(resumed, states, strict=True):
        r.load_state_dict(s)
    its = [iter(r) for r in resumed]
    got += [next(its[k % 2]) for k in range(stop, 60)]
    assert got == expected


def test_an_epoch_with_fewer_batches_than_ranks_is_passed_by_the_ranks_without_one():
    """One batch an epoch for 3 ranks: each takes every third epoch's, and its loader's place (what a checkpoint
    records) skips the epochs it has no batch of."""
    ranks = _ranks([RATE], 3)
    assert [len(ranks[1].epoch_batches(e)) for e in range(4)] == [0, 1, 0, 0]
    assert _stream(ranks, 4) == [[0]] * 4


def _rest_of_epoch(samplers: list[SecondsBatchSampler]) -> list[int]:
    """The utterances each endless sampler has left in its current epoch."""
    return [i for s in samplers for k in range(s.position, len(s.epoch_batches())) for i in s.epoch_batches()[k]]


@pytest.mark.parametrize("saved_world, new_world", [(2, 1), (2, 3), (3, 2)])
def test_the_stream_resumes_on_another_number_of_devices_losing_and_repeating_nothing(saved_world: int,
                                                                                      new_world: int, monkeypatch):
    """A relaid stream: the saved epoch (its first batch another rank's than 0) continues with exactly what the
    saved ranks had not reached, dealt from rank 0."""
    lens = lengths(203)
    ranks = _ranks(lens, saved_world, 40.0, seed=3, bucket_size=50)
    n = sum(len(r.epoch_batches(0)) for r in ranks)
    assert ranks[0].phase(1) != 0
    seen = [i for b in _stream(ranks, n + 5)[n:] for i in b]
    states = [r.state_dict() for r in ranks]
    assert {s["epoch"] for s in states} == {1}
    resumed = _ranks(lens, new_world, 20.0, seed=3, bucket_size=50)
    with pytest.raises(ValueError, match="every rank's place is needed"):  # ranks may stand a batch apart
        resumed[0].load_state_dict(states[0])
    remainders = []
    real = SecondsBatchSampler._remainder
    with monkeypatch.context() as m:
        m.setattr(SecondsBatchSampler, "_remainder", lambda self, *a: remainders.append(a[0]) or real(self, *a))
        for r in resumed:
            r.load_state_dict({**states[0], "ranks": [{k: s[k] for k in ("epoch", "position", "phase")}
                                                      for s in states]})
            r.epoch_batches()
    assert remainders == [1] * new_world  # the relaid epoch is cut once a rank (was: twice)
    assert [(r.epoch, r.phase(1)) for r in resumed] == [(1, 0)] * new_world
    assert sorted(seen + _rest_of_epoch(resumed)) == list(range(len(lens)))  # nothing lost, nothing twice


def test_a_format_4_state_of_split_ranks_continues_its_epoch_as_a_relaid_one(caplog):
    """Format 4 split a training epoch that did not divide among the ranks. Its 2-rank state continues that
    epoch, rebuilt as split, with exactly what the ranks had not reached; a 1-rank format-4 state was never
    split and continues exactly."""
    lens = lengths(53, seed=4)
    split = [_sampler(lens, 20.0, world_size=2, seed=9, rank=r) for r in range(2)]  # a finite pass splits
    assert len(split[0].epoch_batches(0)) * 2 != len(_sampler(lens, 20.0, seed=9).epoch_batches(0))
    seen = _consume(split, 4)

    def format_4(state):
        return {k: v for k, v in state.items() if k not in ("phase", "dealing")} | {"format": 4}

    resumed = _ranks(lens, 2)
    with caplog.at_level(logging.WARNING):
        for r in resumed:
            r.load_state_dict(format_4(split[0].state_dict()))
    assert "dealing split -> stream" in caplog.text
    assert sorted(seen + _rest_of_epoch(resumed)) == list(range(len(lens)))
    one = _sampler(lens, 20.0, seed=9, endless=True)
    expected = _stream([_sampler(lens, 20.0, seed=9, endless=True)], 40)
    got = _stream([one], 31)  # into epoch 1
    again = _sampler(lens, 20.0, seed=9, endless=True)
    again.load_state_dict(format_4(one.state_dict()))
    assert got + _stream([again], 9) == expected and again.epoch == 1


@pytest.mark.parametrize("batch, device, world", [(2.0, 0.7, 1), (5600.0, 87.5, 3), (100.0, 7.0, 1), (1.0, 1.0, 3)])
def test_a_step_never_holds_more_than_batch_seconds(batch, device, world):
    """micro_samples was rounded to the nearest sample, so world_size × accumulation micro-batches packed full
    overshot the step (2 s in micro-batches of 0.7 s: 3 × 10667 = 32001 samples; the paper's 5600 s on 3 devices
    of 87.5 s by 16). Utterances of exactly the micro-batch's length: every step holds at most batch_seconds."""
    budget = BatchBudget(batch, device, world)
    micro = budget.samples()["micro_samples"]
    assert micro * world * budget.accumulation <= to_samples(batch)
    if world == 1 and batch < 10:
        lengths = np.full(4 * budget.accumulation, micro)
        batches = list(SecondsBatchSampler(lengths, budget, shuffle=False))
        for k in range(0, len(batches) - budget.accumulation + 1, budget.accumulation):
            step = batches[k:k + budget.accumulation]
            assert sum(int(lengths[b].max()) * len(b) for b in step) <= to_samples(batch)


def test_utterances_longer_than_a_micro_batch_s_share_are_named_with_the_step_they_make(caplog):
    """An utterance (as cropped) longer than micro_seconds and within device_seconds trains in a micro-batch of its
    own: with 15.6 s crops on a 20 s batch of 10 s micro-batches, every step held 31.2 s, and nothing said so (the
    README said a step never exceeds the batch). Training warns, once, on rank 0; an evaluation does not."""
    budget = BatchBudget(20.0, 16.0, crop_seconds=15.6)
    lengths = np.full(40, to_samples(30.0))
    with caplog.at_level(logging.WARNING):
        sampler = SecondsBatchSampler(lengths, budget, seed=0, source="m.jsonl")
    steps = [sum(len(b) for b in list(sampler)[k:k + budget.accumulation]) * 15.6
             for k in range(0, 4 * budget.accumulation, budget.accumulation)]
    assert steps == [31.2] * 4  # what the warning announces
    assert ("m.jsonl: 40 of 40 utterances (as cropped) are longer than micro_seconds=10 s, a micro-batch's share of "
            "batch_seconds=20 (1 device(s) × 2 accumulation): each trains in a micro-batch of its own, so a step "
            "holds up to 31.2 s of padded audio, not 20 s") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SecondsBatchSampler(lengths, BatchBudget(40.0, 16.0, 2, crop_seconds=15.6), seed=0, rank=1)  # rank 1
        SecondsBatchSampler(lengths, budget, seed=0, evaluation=True)
        SecondsBatchSampler(np.full(40, to_samples(9.0)), budget, seed=0)  # within the share: nothing to say
    assert "micro_seconds" not in caplog.text
