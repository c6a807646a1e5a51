import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from earful.data.audio import AudioError
from earful.data.budget import BatchBudget
from earful.data.dataset import AudioDataset, Batch, collate, make_loader
from earful.data.manifest import Utterance, read_manifest, write_manifest


def corpus(tmp_path: Path, tone, n: int = 12) -> list[Utterance]:
    utts = []
    for i in range(n):
        path = tmp_path / f"u{i}.flac"
        num = tone(path, 0.3 + 0.1 * i, seed=i)
        utts.append(Utterance(f"u{i}", str(path), num, 16000, "s", f"T{i}"))
    return utts


def test_collate_pads_and_accounts(tmp_path: Path, tone):
    ds = AudioDataset(corpus(tmp_path, tone, 3))
    b = collate([ds[0], ds[2]])
    assert isinstance(b, Batch)
    assert b.wave.shape == (2, 8000) and b.wave.dtype == torch.float32
    assert b.lengths.tolist() == [4800, 8000] and b.lengths.dtype == torch.int64
    assert torch.all(b.wave[0, 4800:] == 0) and b.ids == ["u0", "u2"]
    assert b.real_seconds == pytest.approx(0.8) and b.padded_seconds == pytest.approx(1.0)


def test_crop_to_shortest_is_fairseqs_unpadded_batch(tmp_path: Path, tone):
    """fairseq's pre-training batches: each utterance cropped at a random offset to the shortest, no padding."""
    ds = AudioDataset(corpus(tmp_path, tone, 3))
    whole = [ds[(i, 0)].wave for i in range(3)]
    b = collate([ds[(i, 0)] for i in range(3)], crop_to_shortest=True, seed=4)
    assert b.wave.shape == (3, 4800) and b.lengths.tolist() == [4800] * 3
    assert b.real_seconds == b.padded_seconds == pytest.approx(0.9)
    for row, w in zip(b.wave.numpy(), whole, strict=True):  # a contiguous piece of the utterance
        starts = [k for k in range(len(w) - 4800 + 1) if np.array_equal(w[k : k + 4800], row)]
        assert len(starts) >= 1
    again = collate([ds[(i, 0)] for i in range(3)], crop_to_shortest=True, seed=4)
    other = collate([ds[(i, 1)] for i in range(3)], crop_to_shortest=True, seed=4)
    assert torch.equal(b.wave, again.wave) and not torch.equal(b.wave, other.wave)  # keyed by seed, epoch, index


def test_crop_deterministic_in_seed_epoch_index(tmp_path: Path, tone):
    ds = AudioDataset(corpus(tmp_path, tone, 12), crop_seconds=0.5, seed=1)
    a, b = ds[(11, 0)].wave, ds[(11, 0)].wave
    assert len(a) == 8000 and np.array_equal(a, b)
    assert not np.array_equal(a, ds[(11, 1)].wave)
    assert len(ds[(0, 0)].wave) == 4800  # shorter than the crop: untouched


def test_bad_files_raise_or_are_counted(tmp_path: Path, tone, caplog):
    utts = corpus(tmp_path, tone, 4)
    Path(utts[1].path).write_bytes(b"junk")
    with pytest.raises(AudioError, match="u1.flac"):
        list(make_loader(utts, BatchBudget.per_device(10.0)))
    loader = make_loader(utts, BatchBudget.per_device(10.0), skip_bad=True)
    ids = [i for b in loader for i in b.ids]
    assert sorted(ids) == ["u0", "u2", "u3"]
    assert loader.bad_files == 1 and "u1: " in caplog.text and "junk" not in caplog.text


def test_a_file_longer_than_its_manifest_is_an_error(tmp_path: Path, tone):
    """Replaced after the manifest was written, or listed at the wrong rate: not silently cut."""
    utts = corpus(tmp_path, tone, 3)
    tone(Path(utts[1].path), 2.0, seed=9)  # 2 s where the manifest says 0.4 s
    with pytest.raises(AudioError, match=r"u1.flac: 32000 samples at 16000 Hz, longer than the manifest's 6400"):
        list(make_loader(utts, BatchBudget.per_device(10.0)))
    loader = make_loader(utts, BatchBudget.per_device(10.0), skip_bad=True)
    assert sorted(i for b in loader for i in b.ids) == ["u0", "u2"] and loader.bad_files == 1


def test_rows_too_long_for_the_device_stop_the_loader_unless_skip_bad(tmp_path: Path, tone, caplog):
    """Rows longer than device_seconds that nothing crops (fine-tuning; pre-training without a crop) were always
    left out with a warning. Now: an error naming the manifest, how many, their ids and the ways out; with
    skip_bad (data.skip_bad) left out, counted and warned; max_seconds (a limit set on purpose) or a crop
    (pre-training) admit the rest without an error."""
    write_manifest(corpus(tmp_path, tone, 12), tmp_path / "m.jsonl")  # 0.3 ... 1.4 s
    rows = read_manifest(tmp_path / "m.jsonl")
    budget = BatchBudget.per_device(1.05)
    with pytest.raises(ValueError, match=r"m.jsonl: 4 of 12 utterances cannot be batched \(4 longer than "
                                         r"device_seconds=1.05 s\), e.g. u8, u9, u10, u11: set data.skip_bad=true"):
        make_loader(rows, budget)
    with caplog.at_level(logging.WARNING):
        loader = make_loader(rows, budget, skip_bad=True)
    assert loader.skipped == 4 and "m.jsonl: 4 of 12 utterances cannot be batched" in caplog.text
    assert sorted(i for b in loader for i in b.ids) == [f"u{i}" for i in range(8)]
    limited = make_loader(rows, BatchBudget.per_device(1.05, max_seconds=1.05))
    assert limited.skipped == 4 and limited.sampler.skipped_reasons == {"longer than max_seconds=1.05 s": 4}
    assert make_loader(rows, BatchBudget.per_device(1.05, crop_seconds=1.0)).skipped == 0


def test_repeated_batches_are_known_even_after_a_bad_one(tmp_path: Path, tone):
    """3 one-utterance batches on 2 ranks: rank 1's second batch repeats the first. With a corrupt file
    dropped before it, counting yielded batches would misplace the repeat (an utterance scored twice)."""
    utts = corpus(tmp_path, tone, 3)
    scored: list[str] = []
    for rank in range(2):
        loader = make_loader(utts, BatchBudget.per_device(0.6, 2), shuffle=False, rank=rank, skip_bad=True)
        order = [ids for b in loader for ids in [b.ids]]
        if rank == 1:
            Path(utts[int(order[0][0][1:])].path).write_bytes(b"junk")  # rank 1's first batch: unreadable
            loader.rewind()
        scored += [i for b in loader if not loader.is_repeat(b) for i in b.ids]
    assert loader.sampler.repeated == 1 and loader.bad_files == 1
    assert sorted(scored) == sorted(u.id for u in utts if Path(u.path).read_bytes() != b"junk")


def test_loader_with_workers_budget_and_exact_resume(tmp_path: Path, tone):
    utts = corpus(tmp_path, tone, 12)
    kwargs = dict(seed=5, endless=True)
    budget = BatchBudget.per_device(2.0, crop_seconds=0.8)
    ref = [b.ids for b in itertools.islice(make_loader(utts, budget, **kwargs), 20)]
    loader = make_loader(utts, budget, num_workers=2, **kwargs)
    got = []
    for b in loader:
        assert b.padded_seconds <= 2.0 + 1e-9 and b.wave.shape[0] == len(b.ids)
        got.append(b.ids)
        if len(got) == 7:
            break
    state = loader.state_dict()  # taken mid-stream, with batches prefetched by the workers
    resumed = make_loader(utts, budget, **kwargs)
    resumed.load_state_dict(state)
    got += [b.ids for b in itertools.islice(resumed, 13)]
    assert got == ref


def test_fairseq_recipe_crops_while_the_papers_and_the_demo_pad():
    import earful
    from earful.pretrain.config import load_pretrain_config

    configs = Path(earful.__file__).parent / "configs"  # the shipped presets, wherever the tests run from
    assert not load_pretrain_config(None).data.padding  # fairseq BASE: enable_padding false
    assert load_pretrain_config(configs / "pretrain-paper.yaml").data.padding  # nanow2v2 pads
    assert load_pretrain_config(configs / "pretrain-demo.yaml").data.padding  # as the demo was measured


def test_model_inputs_drop_the_lengths_of_an_unpadded_batch() -> None:
    """Decided on the host: no padding, no lengths (the model then runs attention without a key mask)."""
    wave = torch.zeros(2, 100)
    full = Batch(wave, torch.tensor([100, 100]), ["a", "b"], 0.0, 0.0)
    padded = Batch(wave, torch.tensor([100, 60]), ["a", "b"], 0.0, 0.0)
    w, lengths = full.model_inputs(torch.device("cpu"))
    assert lengths is None and torch.equal(w, wave)
    w, lengths = padded.model_inputs(torch.device("cpu"))
    assert lengths is not None and lengths.tolist() == [100, 60]


def test_a_bad_file_counts_once_however_often_it_is_met(tmp_path: Path, tone, caplog):
    """An endless loader meets a corrupt file every epoch: one file, one count, one warning; kept on resume."""
    utts = corpus(tmp_path, tone, 4)
    Path(utts[2].path).write_bytes(b"junk")
    loader = make_loader(utts, BatchBudget.per_device(10.0), skip_bad=True, endless=True)
    it = iter(loader)
    for _ in range(5 * len(loader)):  # five epochs
        next(it)
    assert loader.bad_files == 1 and loader.bad_ids == {"u2"}
    assert caplog.text.count("skipped bad audio file u2") == 1
    again = make_loader(utts, BatchBudget.per_device(10.0), skip_bad=True, endless=True)
    again.load_state_dict(loader.state_dict())
    assert again.bad_files == 1
    with pytest.raises(ValueError, match="format None.*earlier development version"):
        again.load_state_dict({"epoch": 0, "position": 0, "bad_files": 3})  # a state from before the budget's names


def test_a_rank_without_a_batch_of_an_epoch_counts_its_place_past_it(tmp_path: Path, tone):
    """Training deals its epochs as one stream (``SecondsBatchSampler``): with one batch an epoch and 3 ranks,
    rank 1 takes epochs 1, 4, 7, …. Its loader's place (what a checkpoint records) skips the epochs it has none
    of, so each batch is tagged with its own epoch (crops are keyed by it) and a resume continues exactly."""
    utts = corpus(tmp_path, tone, 1)
    budget = BatchBudget(3.0, 1.0, 3)

    def loader():
        return make_loader(utts, budget, rank=1, endless=True, seed=2)

    first = loader()
    it = iter(first)
    assert next(it).epoch == 1
    state = first.state_dict()
    assert (state["epoch"], state["position"], state["phase"]) == (4, 0, 1)
    expected = next(it)
    again = loader()
    again.load_state_dict(state)
    got = next(iter(again))
    assert got.epoch == expected.epoch == 4 and torch.equal(got.wave, expected.wave)
