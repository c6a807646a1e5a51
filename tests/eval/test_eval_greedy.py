import itertools

import numpy as np
import pytest
import torch

from earful.eval.decode import collapse_ids, greedy_decode, greedy_ids
from earful.eval.vocab import CharVocab

V = CharVocab()


def one_hot(labels: list[str], frames: int | None = None) -> torch.Tensor:
    """Logits whose arg-max spells ``labels`` (``_`` = blank), padded with random garbage."""
    frames = frames or len(labels)
    x = torch.randn(frames, len(V))
    for t, s in enumerate(labels):
        x[t, 0 if s == "_" else V.index(s)] = 10.0
    return x


def test_repeats_collapse_and_blanks_separate():
    labels = list("|hh_e_ll_llo||_w_oo_r_l_d_|")
    assert greedy_decode(one_hot(labels)[None], None, V) == ["hello world"]


def test_frames_beyond_the_length_are_ignored():
    a = one_hot(list("_c_a_t_"), frames=12)
    a[7:] = 0
    a[7:, V.index("x")] = 10.0  # padding that would decode as "x"
    b = one_hot(list("dd_oo_g|_s"), frames=12)
    out = greedy_decode(torch.stack([a, b]), torch.tensor([7, 10]), V)
    assert out == ["cat", "dog s"]
    assert greedy_decode(torch.stack([a, b]), torch.tensor([0, 4]), V) == ["", "do"]


def test_all_blank_or_delimiter_gives_empty_strings():
    x = torch.stack([one_hot(list("____")), one_hot(list("|_||"))])
    assert greedy_decode(x, torch.tensor([4, 4]), V) == ["", ""]


def test_vectorised_matches_a_plain_loop_and_accepts_numpy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 40, len(V), generator=g)
    logits[..., 0] += 1.0  # plenty of blanks
    lengths = torch.tensor([40, 0, 17, 33, 1])
    got = greedy_ids(logits.numpy(), lengths.numpy())
    for b in range(5):
        best = logits[b, : lengths[b]].argmax(-1).tolist()
        want = [k for k, _ in itertools.groupby(best) if k != 0]
        assert got[b] == want


def test_shape_and_length_errors():
    with pytest.raises(ValueError, match="batch, frames, vocab"):
        greedy_ids(torch.zeros(4, len(V)))
    with pytest.raises(ValueError, match="frame lengths"):
        collapse_ids(np.zeros((2, 5), dtype=np.int64), np.array([6, 1]))
    with pytest.raises(ValueError, match="classes"):
        greedy_decode(torch.zeros(1, 3, 10), None, V)
