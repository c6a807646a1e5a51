"""Masking and distractor sampling against fairseq's semantics."""

import numpy as np
import pytest
import torch

from earful.model.masking import compute_mask, sample_negatives, sure_mask_frames


def fairseq_reference(lengths: list[int], frames: int, p: float, m: int, min_masks: int, same: bool, rs,
                      one_count: bool = False) -> np.ndarray:
    """A direct transcription of fairseq's compute_mask_indices (static spans, no_overlap=False): a count a row
    (its main branch, num_mask_ver=2), or with ``one_count`` one for the whole batch (fairseq 0.12 without a
    padding mask)."""
    mask = np.zeros((len(lengths), frames), dtype=bool)
    idcs = []
    all_num = max(min_masks, int(p * frames / float(m) + rs.rand()))
    for sz in lengths:
        num = all_num if one_count else max(min_masks, int(p * sz / float(m) + rs.rand()))
        min_len = m
        if sz - min_len <= num:
            min_len = sz - num - 1
        starts = rs.choice(sz - min_len, num, replace=False)
        idc = np.asarray([s + o for s in starts for o in range(m)])
        idcs.append(np.unique(idc[idc < sz]))
    min_count = min(len(i) for i in idcs)
    for i, idc in enumerate(idcs):
        if same and len(idc) > min_count:
            idc = rs.choice(idc, min_count, replace=False)
        mask[i, idc] = True
    return mask


@pytest.mark.parametrize("length", [30, 49, 149, 749])
def test_masked_fraction_matches_fairseq(length: int) -> None:
    rs = np.random.RandomState(0)
    g = torch.Generator().manual_seed(0)
    ours, ref = [], []
    for _ in range(200):
        ref.append(fairseq_reference([length], length, 0.65, 10, 2, False, rs).mean())
        mask = compute_mask(torch.tensor([length]), length, 0.65, 10, min_masks=2, generator=g)
        ours.append(mask.float().mean().item())
    assert abs(np.mean(ours) - np.mean(ref)) < 0.02, (np.mean(ours), np.mean(ref))


@pytest.mark.parametrize(("lengths", "frames"), [([49] * 8, 49), ([749] * 4, 749), ([49, 40, 30, 49], 49)])
def test_batch_masked_fraction_matches_fairseq(lengths: list[int], frames: int) -> None:
    """A batch's masked fraction as fairseq's (require_same_masks): a count a row, each row thinned to the
    batch's smallest count."""
    rs = np.random.RandomState(0)
    g = torch.Generator().manual_seed(0)
    ours, ref = [], []
    for _ in range(300):
        ref.append(fairseq_reference(lengths, frames, 0.65, 10, 2, True, rs).sum(1).mean())
        mask = compute_mask(torch.tensor(lengths), frames, 0.65, 10, min_masks=2, require_same_masks=True,
                            generator=g)
        ours.append(mask.sum(1).float().mean().item())
    assert abs(np.mean(ours) - np.mean(ref)) < 0.01 * frames, (np.mean(ours), np.mean(ref))


def test_time_masks_draw_a_count_a_row_channel_masks_one_for_the_batch() -> None:
    """Spans of 1 frame never overlap, so a row's masked count is its count of spans: int(10.5 + U), 10 or 11.
    Time masks draw it a row, as fairseq's main branch does; with one_count (channel masks) the batch shares it."""
    g = torch.Generator().manual_seed(3)
    a_row = [compute_mask(torch.full((8,), 210), 210, 0.05, 1, generator=g).sum(1).unique().numel()
             for _ in range(50)]
    assert max(a_row) == 2
    one = [compute_mask(torch.full((8,), 210), 210, 0.05, 1, one_count=True, generator=g).sum(1).unique().numel()
           for _ in range(50)]
    assert one == [1] * 50


def test_padding_never_masked_and_same_counts() -> None:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([100, 60, 37, 12])
    mask = compute_mask(lengths, 100, 0.65, 10, min_masks=2, require_same_masks=True, generator=g)
    frames = torch.arange(100)[None, :]
    assert not (mask & (frames >= lengths[:, None])).any()
    counts = mask.sum(1)
    assert (counts == counts[0]).all() and counts[0] > 0


def test_short_utterance_still_masked() -> None:
    g = torch.Generator().manual_seed(2)
    for length in (1, 3, 9, 10, 11):
        mask = compute_mask(torch.tensor([length]), 20, 0.65, 10, min_masks=2, generator=g)
        assert mask[0, :length].any()
        assert not mask[0, length:].any()


@pytest.mark.parametrize(("style", "p", "min_masks", "expected"), [
    ("nanow2v2", 0.5, 2, 10),  # the paper's: starts from [0, max(span, L - span)), min_masks not read
    ("nanow2v2", 0.05, 0, 10),  # its fine-tuning rate: still one start for L < 2 span
    ("fairseq", 0.65, 2, 1),  # min_masks >= 1: every start below L
    ("fairseq", 0.65, 0, 16),  # floor(0.65 L / 10 + u) is 0 for u near 0 up to L = 15
])
def test_sure_mask_frames_is_the_length_from_which_every_draw_masks_a_frame(style, p, min_masks, expected) -> None:
    """nanow2v2's masks left utterances under 10 frames (0.2 s) without a masked frame at times (L=2: 80 %, 5: 50 %,
    8: 20 %), and a micro-batch of them stopped the run advising min_masks, which that style does not read. The
    length from which a mask is sure is read off the masking code; here it is checked against draws: every
    utterance of that length or longer gets a masked frame, one frame shorter does not always."""
    assert sure_mask_frames(p, 10, min_masks=min_masks, style=style) == expected
    g = torch.Generator().manual_seed(6)
    for length in range(max(expected - 1, 1), expected + 25):
        lengths = torch.full((4000,), length)
        unmasked = (~compute_mask(lengths, length, p, 10, min_masks=min_masks, style=style, generator=g).any(1))
        assert bool(unmasked.any()) == (length < expected), (length, float(unmasked.float().mean()))
    if style == "nanow2v2":  # below the span one start from [0, span): none below L with probability (span - L)/span
        for length in (2, 5, 8):
            mask = compute_mask(torch.full((4000,), length), length, p, 10, style=style, generator=g)
            assert abs(float((~mask.any(1)).float().mean()) - (10 - length) / 10) < 0.03
    assert sure_mask_frames(0.0, 10, style=style) is None


def test_nanow2v2_fraction() -> None:
    # the paper's spec: p=0.5, span 10 masks ≈ 39-40 % of frames (0.388 at L=149, 0.399 at L=749)
    g = torch.Generator().manual_seed(3)
    for length, expected in ((149, 0.388), (749, 0.399)):
        fr = [
            compute_mask(torch.tensor([length]), length, 0.5, 10, style="nanow2v2", generator=g).float().mean()
            for _ in range(300)
        ]
        assert abs(float(np.mean(fr)) - expected) < 0.015


def test_nanow2v2_preset_masks_each_utterance_on_its_own() -> None:
    """nanow2v2 masks every utterance of a padded batch at its own rate: a 15 s utterance beside a 3 s one
    keeps its ~40 % (trimming to the batch's smallest count would leave it ~8 %)."""
    from earful.model import load_model_config

    cfg = load_model_config("base-nanow2v2")
    g = torch.Generator().manual_seed(5)
    lengths = torch.tensor([750, 150])
    fr = torch.stack([
        compute_mask(lengths, 750, cfg.mask_prob, cfg.mask_length, min_masks=cfg.min_masks, style=cfg.mask_style,
                     require_same_masks=cfg.require_same_masks, generator=g).sum(1) / lengths
        for _ in range(50)
    ]).mean(0)  # fmt: skip
    assert abs(fr[0].item() - 0.399) < 0.02 and abs(fr[1].item() - 0.388) < 0.03, fr


def test_negatives_from_masked_frames_never_self() -> None:
    g = torch.Generator().manual_seed(4)
    lengths = torch.tensor([80, 50])
    mask = compute_mask(lengths, 80, 0.65, 10, min_masks=2, generator=g)
    neg = sample_negatives(mask, 50, generator=g)
    assert neg.shape == (2, 80, 50)
    for b in range(2):
        rows = mask[b].nonzero().squeeze(1)
        drawn = neg[b, rows]  # (masked, K)
        assert mask[b].gather(0, drawn.flatten()).all(), "a distractor is not a masked frame"
        assert not (drawn == rows[:, None]).any(), "a distractor is the positive itself"
        # uniform over the other masked frames: every candidate appears
        assert drawn.unique().numel() == rows.numel()


def test_nanow2v2_negatives_may_draw_the_frame_itself() -> None:
    """The paper's code draws from every masked frame of the utterance with replacement, itself included
    (about 1 in `masked` draws), and only such a draw is scored -inf."""
    g = torch.Generator().manual_seed(6)
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, 10:30] = True  # 20 masked frames
    neg = sample_negatives(mask, 100, generator=g, exclude_self=False)
    rows = mask[0].nonzero().squeeze(1)
    drawn = neg[0, rows]  # (20, 100)
    assert mask[0].gather(0, drawn.flatten()).all()
    self_rate = (drawn == rows[:, None]).float().mean().item()
    assert abs(self_rate - 1 / 20) < 0.015, self_rate
    from earful.model import Wav2Vec2ForPreTraining, load_model_config

    model = Wav2Vec2ForPreTraining(load_model_config("tiny", ["negatives_style=nanow2v2"])).eval()
    wave = torch.randn(1, 16000)
    m = torch.zeros(1, int(model.frame_lengths(torch.tensor([16000]))[0]), dtype=torch.bool)
    m[0, 5:25] = True
    out = model(wave, torch.tensor([16000]), mask=m, generator=torch.Generator().manual_seed(0))
    negs = out.negatives[0, 5:25]
    assert torch.equal(torch.isinf(out.logits[:, 1:]), negs == torch.arange(5, 25)[:, None])


def test_channel_masks_have_the_same_count_in_every_row() -> None:
    """fairseq's compute_mask_indices(require_same_masks=True), its default, masks channels too."""
    from earful.model.masking import compute_channel_mask

    g = torch.Generator().manual_seed(8)
    for _ in range(20):
        m = compute_channel_mask(6, 256, 0.3, 10, device=torch.device("cpu"), generator=g)
        counts = m.sum(1)
        assert (counts == counts[0]).all() and counts[0] > 0, counts


def test_channel_mask_counts_spans_once_a_batch() -> None:
    """fairseq's 960 h fine-tuning masks channels with p 0.1 and spans of 64 of 768: 1.2 spans expected, so one
    batch in five masks two (one count for the batch). Drawn a row and thinned to the smallest, as before, two
    spans needed all 8 rows to draw two (0.2**8): never."""
    from earful.model.masking import compute_channel_mask

    g = torch.Generator().manual_seed(9)
    rs = np.random.RandomState(9)
    ours = [compute_channel_mask(8, 768, 0.1, 64, device=torch.device("cpu"), generator=g)[0].sum().item()
            for _ in range(400)]
    ref = [fairseq_reference([768] * 8, 768, 0.1, 64, 0, True, rs, one_count=True)[0].sum() for _ in range(400)]
    assert 0.12 < np.mean(np.array(ours) > 64) < 0.28, np.mean(np.array(ours) > 64)
    assert abs(np.mean(ours) - np.mean(ref)) < 3.0, (np.mean(ours), np.mean(ref))


def test_single_masked_frame_points_to_itself() -> None:
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 4] = True
    neg = sample_negatives(mask, 5)
    assert (neg[0, 4] == 4).all()


def test_mask_is_seeded() -> None:
    a = compute_mask(torch.tensor([200, 150]), 200, 0.65, 10, generator=torch.Generator().manual_seed(9))
    b = compute_mask(torch.tensor([200, 150]), 200, 0.65, 10, generator=torch.Generator().manual_seed(9))
    c = compute_mask(torch.tensor([200, 150]), 200, 0.65, 10, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_spans_cover_exactly_the_frames_after_each_start() -> None:
    """Frame t is masked iff a start lies in (t - span, t], checked against a loop, edges included."""
    from earful.model.masking import spread_starts

    g = torch.Generator().manual_seed(3)
    for n, frames, span in ((30, 40, 10), (40, 30, 10), (1, 5, 3), (0, 4, 2), (25, 25, 1)):
        starts = torch.rand(4, n, generator=g) < 0.15
        got = spread_starts(starts, span, frames)
        want = torch.zeros(4, frames, dtype=torch.bool)
        for b, s in starts.nonzero().tolist():
            want[b, s : min(s + span, frames)] = True
        assert torch.equal(got, want), (n, frames, span)
