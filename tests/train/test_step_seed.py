"""Seeds per (run seed, step, stream, index): distinct within a run, the first formula's where it was."""

import torch

from earful.data.budget import MAX_ACCUMULATION
from earful.train.step import LINEAR_INDICES, STREAMS, seed_micro_batch, step_seed


def first_formula(seed: int, step: int, stream: int, index: int) -> int:
    """The seed every run drew from until a step could hold 67 or more micro-batches."""
    return (seed * 1_000_003 + step * 10_007 + stream * 100_003 + index) % (2**63 - 1)


def test_seeds_of_fewer_than_67_micro_batches_a_step_are_the_first_formulas() -> None:
    """Every run so far had fewer than 67 micro-batches a step: their seeds, and so make demo's figures and every
    study's results, stay what they were."""
    assert LINEAR_INDICES == 67
    for seed in (0, 1, 3, 123, 2**40 + 7):
        for step in (*range(0, 400), 277_258, 399_999, 10**9):
            for stream in range(STREAMS):
                for index in range(LINEAR_INDICES):
                    assert step_seed(seed, step, stream, index) == first_formula(seed, step, stream, index)


def test_seeds_of_a_run_are_distinct_with_67_or_more_micro_batches_a_step() -> None:
    """The first formula gave (step 0, stream 1, index 67) -- micro-batch 67's span mask and distractors -- the seed
    of (step 10, stream 0, index 0), micro-batch 0's dropout ten steps later (100003 = 10 * 10007 - 67); the
    paper's 80-minute batch on 60 s devices takes 80 micro-batches a step. Now every seed of a run differs: steps
    0-2000, every stream, indices 0-300, and indices up to MAX_ACCUMULATION x 8 ranks."""
    seed = 123
    assert step_seed(seed, 0, 1, 67) != step_seed(seed, 10, 0, 0)
    seen: dict[int, tuple[int, int, int]] = {}
    large = (301, 997, 4_096, 65_535, MAX_ACCUMULATION - 1, MAX_ACCUMULATION * 8 - 1)
    for step in range(2001):
        for stream in range(STREAMS):
            for index in (*range(301), *large):
                s = step_seed(seed, step, stream, index)
                assert s not in seen, ((step, stream, index), seen[s])
                seen[s] = (step, stream, index)
    # the validation stream's "step" is a batch index, which may run far past the training steps
    for batch in range(2001, 100_000):
        assert step_seed(seed, batch, 2) not in seen, batch
    assert all(0 <= s < 2**63 - 1 for s in seen)


def test_seeds_are_reproducible() -> None:
    """The same tuple gives the same seed, in this process or another (no Python hash randomisation), and the same
    draws."""
    assert step_seed(1, 0, 1, 67) == 9213957120018123859  # a hashed index: BLAKE2b of the tuple, fixed
    assert step_seed(123, 399_999, 0, 99_999) == 3911722966887334097
    assert step_seed(1, 10, 0, 0) == 1_100_073
    for index in (0, 66, 67, 80, MAX_ACCUMULATION - 1):
        a_gen, _ = seed_micro_batch(5, 3, index, torch.device("cpu"))
        a = torch.rand(4, generator=a_gen), torch.rand(4)
        b_gen, _ = seed_micro_batch(5, 3, index, torch.device("cpu"))
        b = torch.rand(4, generator=b_gen), torch.rand(4)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert not torch.equal(a[0], a[1])  # the draws and dropout are separate streams
