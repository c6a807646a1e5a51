"""Bad audio and text: every problem is a clear error naming the file and the problem, or — with
``skip_bad`` — a counted skip that shows in the run's log. Nothing is dropped silently."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earful.cli import main
from earful.data.audio import RECEPTIVE_FIELD, AudioError, load_audio
from earful.data.budget import BatchBudget
from earful.data.dataset import AudioDataset, make_loader
from earful.data.librispeech import Note, read_folder, read_librispeech
from earful.data.manifest import ManifestError, Utterance, read_manifest
from earful.finetune.config import load_finetune_config
from earful.finetune.task import FinetuneTask
from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train.distributed import Dist
from earful.train.engine import Trainer

# ---------------------------------------------------------------------------------------------- audio


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_audio_that_works(tmp_path, rel) -> None:
    """Stereo is downmixed, 8 and 48 kHz are resampled, 24-bit is read; all come out 16 kHz float32 mono."""
    cases = {
        "stereo.wav": dict(channels=2),
        "8k.wav": dict(rate=8000),
        "48k.flac": dict(rate=48000),
        "24bit.flac": dict(subtype="PCM_24"),
        "24bit.wav": dict(subtype="PCM_24"),
    }
    utts = []
    for name, kw in cases.items():
        n = rel.write_wave(tmp_path / name, 0.5, **kw)
        x = load_audio(tmp_path / name)
        assert x.dtype == np.float32 and x.ndim == 1, name
        assert abs(len(x) - 8000) <= 1, (name, len(x))
        assert 0.25 < np.abs(x).max() < 0.35, name  # the tone's amplitude survives (24-bit, downmix, resampling)
        utts.append(Utterance(name, str(tmp_path / name), n, kw.get("rate", 16000), "s"))
    # and through the loader, which trusts the manifest's (pre-resampling) lengths
    batch = next(iter(make_loader(utts, BatchBudget.per_device(10.0), shuffle=False)))
    assert sorted(batch.ids) == sorted(cases) and batch.lengths.tolist() == [8000] * len(cases)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_other_rate_with_resampling_off_is_an_error(tmp_path, rel, rate) -> None:
    rel.write_wave(tmp_path / "x.wav", 0.5, rate=rate)
    with pytest.raises(AudioError, match=rf"x.wav: sample rate {rate} Hz, expected 16000 Hz \(resampling is off\)"):
        load_audio(tmp_path / "x.wav", resample=False)


def test_each_broken_file_names_itself_and_its_problem(tmp_path, rel) -> None:
    """Covers what tests/data/test_manifest_audio.py does not: truncated WAV/FLAC, a FLAC whose frames are
    garbage, a zero-byte file, a header only, NaN/inf in 16-bit-free float files, shorter than the receptive field
    after resampling."""
    rel.write_wave(tmp_path / "whole.flac", 1.0)
    (tmp_path / "cut.flac").write_bytes((tmp_path / "whole.flac").read_bytes())
    _truncate(tmp_path / "cut.flac", 0.5)
    frames = bytearray((tmp_path / "whole.flac").read_bytes())  # header intact, the middle half of it garbage
    middle = slice(len(frames) // 4, len(frames) * 3 // 4)
    frames[middle] = np.random.default_rng(0).integers(0, 256, len(frames[middle]), dtype=np.uint8).tobytes()
    (tmp_path / "garbage-frames.flac").write_bytes(bytes(frames))
    (tmp_path / "zero-bytes.wav").write_bytes(b"")
    (tmp_path / "header-only.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVE")
    sf.write(tmp_path / "zero-length.wav", np.zeros((0, 1), np.float32), 16000)
    x = np.full(8000, 0.1, np.float32)
    x[100] = -np.inf
    sf.write(tmp_path / "minus-inf.wav", x, 16000, subtype="DOUBLE")
    rel.write_wave(tmp_path / "short-8k.wav", 0.02, rate=8000)  # 160 samples -> 320 at 16 kHz < 400
    cases = {
        "cut.flac": "unreadable audio",
        "garbage-frames.flac": "unreadable audio",
        "zero-bytes.wav": "unreadable audio",
        "header-only.wav": "unreadable audio",
        "zero-length.wav": "empty audio",
        "minus-inf.wav": "NaN or infinite",
        "short-8k.wav": rf"too short \(320 samples .* at least {RECEPTIVE_FIELD}",
    }
    for name, message in cases.items():
        with pytest.raises(AudioError, match=message) as info:
            load_audio(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_truncated_wav_that_still_decodes_is_caught_by_its_manifest_length(tmp_path, rel, caplog) -> None:
    """A WAV cut short decodes without error (libsndfile reads what is there): the dataset compares it with
    the manifest's length, so a half-copied file is not silently half an utterance."""
    n = rel.write_wave(tmp_path / "cut.wav", 1.0)
    _truncate(tmp_path / "cut.wav", 0.5)
    assert 0 < len(load_audio(tmp_path / "cut.wav")) < n  # decodes!
    utts = [Utterance("cut", str(tmp_path / "cut.wav"), n, 16000, "s")]
    with pytest.raises(AudioError, match=rf"cut.wav: truncated\? \d+ samples at 16000 Hz, the manifest says {n}"):
        AudioDataset(utts)[0]
    loader = make_loader(utts + [Utterance("ok", str(tmp_path / "ok.wav"), rel.write_wave(tmp_path / "ok.wav", 1.0),
                                           16000, "s")], BatchBudget.per_device(10.0), skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="earful.data.dataset"):
        assert [i for b in loader for i in b.ids] == ["ok"]
    assert loader.bad_files == 1 and "cut: " in caplog.text and "truncated?" in caplog.text


def test_skip_bad_counts_a_batch_with_no_loadable_audio(tmp_path, caplog) -> None:
    """A batch whose every file is bad is left out, counted and logged (not a zero-size batch)."""
    (tmp_path / "a.wav").write_bytes(b"junk")
    loader = make_loader([Utterance("a", str(tmp_path / "a.wav"), 16000, 16000, "s")], BatchBudget.per_device(10.0),
                         skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="earful.data.dataset"):
        assert list(loader) == []
    assert loader.bad_files == 1 and loader.empty_batches == 1
    assert "a: " in caplog.text and "no loadable audio" in caplog.text


def test_an_endless_loader_whose_every_file_is_unreadable_stops_naming_it(tmp_path, deadline) -> None:
    """Training with skip_bad on data none of which loads: it span for ever (a warning a batch, millions a minute;
    SIGTERM waited for a step that never came, and under DDP the other ranks waited in the all-reduce). Once a
    whole epoch of the rank's batches has held no readable audio, the loader stops naming the data."""
    utts = []
    for i in range(3):
        (tmp_path / f"{i}.wav").write_bytes(b"junk")
        utts.append(Utterance(f"u{i}", str(tmp_path / f"{i}.wav"), 16000, 16000, "s"))
    loader = make_loader(utts, BatchBudget.per_device(1.5), skip_bad=True, endless=True, source="train.jsonl")
    batches = iter(loader)
    with deadline(30, "the loader"), pytest.raises(AudioError, match=r"train.jsonl: a whole epoch of batches held no "
                                                                       r"audio that could be read"):
        next(batches)
    assert loader.bad_files == 3


def test_an_endless_loader_goes_on_while_some_files_load(tmp_path, rel) -> None:
    """The stop above is for data none of which loads: one good utterance among bad ones trains on, on one rank,
    on each of two ranks (a rank dealt no readable file in one epoch is dealt it in another: a whole epoch without
    audio had stopped them), and after a resume in another layout whose partial epoch holds only bad files (it
    had been taken for a whole epoch)."""
    utts = [Utterance("ok", str(tmp_path / "ok.wav"), rel.write_wave(tmp_path / "ok.wav", 1.0), 16000, "s")]
    for i in range(3):
        (tmp_path / f"{i}.wav").write_bytes(b"junk")
        utts.append(Utterance(f"u{i}", str(tmp_path / f"{i}.wav"), 16000, 16000, "s"))
    loader = make_loader(utts, BatchBudget.per_device(1.5), skip_bad=True, endless=True)
    batches = iter(loader)
    assert all(next(batches).ids == ["ok"] for _ in range(20))
    for rank in (0, 1):
        ranked = iter(make_loader(utts, BatchBudget.per_device(1.5, world_size=2), skip_bad=True, endless=True,
                                  rank=rank))
        assert all(next(ranked).ids == ["ok"] for _ in range(20))
    states = []
    for _ in range(6):  # after each good batch: mid-epoch ones among them
        next(batches)
        states.append(loader.state_dict())
    for state in states:
        relaid = make_loader(utts, BatchBudget.per_device(1.2), skip_bad=True, endless=True)
        relaid.load_state_dict(state)
        again = iter(relaid)
        assert all(next(again).ids == ["ok"] for _ in range(3))


# ---------------------------------------------------------------------------------------------- manifests and text


def test_manifest_with_invalid_utf8_names_file_and_line(tmp_path) -> None:
    row = b'{"id": "%s", "path": "a.wav", "num_samples": 1, "sample_rate": 16000, "speaker": "s", "transcript": "%s"}'
    (tmp_path / "m.jsonl").write_bytes(row % (b"a", b"ok") + b"\n" + row % (b"b", "CAFÉ".encode("latin-1")) + b"\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid UTF-8"):
        read_manifest(tmp_path / "m.jsonl")


def test_manifest_pointing_at_a_missing_file_stops_the_run_before_training(tmp_path, tiny_corpus, rel) -> None:
    rows = rel.manifest_rows(tiny_corpus[0])[:3]
    rows.append({**rows[0], "id": "gone", "path": str(tmp_path / "gone.wav")})
    manifest = rel.write_rows(tmp_path / "m.jsonl", rows)
    with pytest.raises(ManifestError, match=r"m.jsonl:4: audio file not found: .*gone.wav"):
        Trainer(PretrainTask(load_pretrain_config(None, rel.pretrain_overrides(manifest, 1))), tmp_path / "run")


def test_librispeech_transcript_problems_are_reported(tmp_path, rel) -> None:
    """Invalid UTF-8 in a .trans.txt, an empty transcript line and an empty sidecar are each a problem
    naming the file; the audio is kept unlabelled (and fine-tuning then refuses it by id)."""
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for spk, uids in (("1", ["1-2-0000", "1-2-0001"]), ("3", ["3-4-0000"])):
        chapter = root / spk / uids[0].split("-")[1]
        for uid in uids:
            rel.write_wave(chapter / f"{uid}.flac", 0.3)
    (root / "1" / "2" / "1-2.trans.txt").write_bytes(b"1-2-0000 HELLO\n1-2-0001\n")  # empty line for 0001
    (root / "3" / "4" / "3-4.trans.txt").write_bytes("3-4-0000 CAFÉ\n".encode("latin-1"))
    problems: list[str] = []
    utts = {u.id: u for u in read_librispeech(root, problems)}
    text = "\n".join(problems)
    assert utts["1-2-0000"].transcript == "HELLO"
    assert utts["1-2-0001"].transcript is None and utts["3-4-0000"].transcript is None
    assert "1-2.trans.txt:2: empty transcript for 1-2-0001" in text
    assert "3-4.trans.txt: not valid UTF-8" in text and "no transcript line for 3-4-0000" in text
    assert "no transcript line for 1-2-0001" not in text  # reported once

    plain = tmp_path / "plain"
    rel.write_wave(plain / "a.wav", 0.3)
    rel.write_wave(plain / "b.wav", 0.3)
    rel.write_wave(plain / "c.wav", 0.3)
    (plain / "a.txt").write_bytes("ÇA VA".encode("latin-1"))
    (plain / "b.txt").write_text("  \n")
    (plain / "c.txt").write_text("OK\n")
    problems = []
    got = {u.id: u.transcript for u in read_folder(plain, problems)}
    assert got == {"a": None, "b": None, "c": "OK"}
    text = "\n".join(problems)
    assert "a.txt: not valid UTF-8" in text and "b.txt: empty transcript" in text


def test_a_txt_and_a_lab_transcript_that_differ_are_a_note_naming_both(tmp_path, rel) -> None:
    """A plain folder's ``x.txt`` and ``x.lab`` with different text: the .txt was used, saying nothing. Now a
    note (which stops nothing) names both files; the same text in both (spacing aside) is no finding."""
    rel.write_wave(tmp_path / "x.wav", 0.3)
    rel.write_wave(tmp_path / "y.wav", 0.3)
    (tmp_path / "x.txt").write_text("BAD CAFE\n")
    (tmp_path / "x.lab").write_text("HEAD FACE\n")
    (tmp_path / "y.txt").write_text("DEAD BEEF\n")
    (tmp_path / "y.lab").write_text("DEAD  BEEF")
    problems: list[str] = []
    got = {u.id: u.transcript for u in read_folder(tmp_path, problems)}
    assert got == {"x": "BAD CAFE", "y": "DEAD BEEF"}
    assert problems == [f"{tmp_path / 'x.txt'} and {tmp_path / 'x.lab'}: different transcripts; the .txt one is read"]
    assert isinstance(problems[0], Note)


@pytest.mark.parametrize("transcript, message", [
    (None, r"1 of 4 utterances have no transcript \(fine-tuning needs labels\), e\.g\. 'train-001': set "
           r"data\.skip_bad=true to leave them out, or give a manifest of labelled rows"),
    ("", r"1 of 4 utterances with an empty transcript \(once lower-cased and text_mapping applied\), e\.g\. "
         r"'train-001': set data\.skip_bad=true"),
    ("   ", "1 of 4 utterances with an empty transcript"),
    ("bad 4 cafe", r"1 character\(s\) outside the vocabulary \(a–z and \"'\"\) in 1 of 4 transcripts: '4' in 1 "
                   r"\(e\.g\. 'train-001': 'bad 4 cafe'\)\. vocab=data"),
    ("cafÃ©", r"2 character\(s\) outside the vocabulary .* in 1 of 4 transcripts: '©' in 1 \(e\.g\. 'train-001'.*"
             r"'ã' in 1"),  # UTF-8 read as latin-1
])
def test_fine_tuning_refuses_bad_transcripts_by_utterance(tmp_path, tones, rel, transcript, message) -> None:
    rows = rel.manifest_rows(tones)
    rows[1]["transcript"] = transcript
    manifest = rel.write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=rf"train.jsonl: .*{message}") as info:
        Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(manifest, 1))), tmp_path / "run")
    assert "train-001" in str(info.value)


def test_fine_tuning_leaves_rows_without_a_transcript_out_with_skip_bad(tmp_path, tones, rel, caplog) -> None:
    """A manifest with untranscribed rows could not be used at all (even with data.skip_bad=true, and the message
    offered no way out): with skip_bad they are left out of train and dev, counted in the run's log; without it
    the error names the manifest, how many, a few ids and the ways out."""
    rows = rel.manifest_rows(tones)
    for r in rows[1:3]:
        r["transcript"] = None
    manifest = rel.write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=r"train.jsonl: 2 of 4 utterances have no transcript .*e\.g\. 'train-001', "
                                         r"'train-002': set data\.skip_bad=true"):
        Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(manifest, 1))), tmp_path / "run")
    over = rel.finetune_overrides(manifest, 1, f"data.valid={manifest}", "data.skip_bad=true")
    trainer = Trainer(FinetuneTask(load_finetune_config(None, over)), tmp_path / "run2")
    assert sorted(trainer.task.targets) == ["train-000", "train-003"]
    assert sorted(trainer.task.valid_refs) == ["train-000", "train-003"]
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    assert (f"{manifest}: 2 utterances without a transcript are left out of train (data.skip_bad=true), "
            "e.g. ['train-001', 'train-002']") in caplog.text
    assert "left out of valid" in caplog.text
    none = rel.write_rows(tmp_path / "none.jsonl", [{**r, "transcript": None} for r in rows])
    with pytest.raises(ValueError, match=r"none.jsonl: none of its 4 utterances has a transcript"):
        Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(none, 1, "data.skip_bad=true"))),
                tmp_path / "run3")


def test_fine_tuning_names_every_empty_or_too_short_row_at_once_and_skip_bad_leaves_them_out(tmp_path, tones, rel,
                                                                                           caplog) -> None:
    """A row shorter than one frame of the model (300 samples) was warned as "zero loss", then stopped the run
    after its first step(s) naming the audio file alone (and every --resume alike); empty transcripts were named
    one a run, and data.skip_bad did not leave them out. Now both are named at once, with how many, before any
    step; with skip_bad they are left out of train, counted in the run's log (a dev file too short has its own
    check: test_a_bad_file_in_the_validation_set_stops_the_run_before_training)."""
    import soundfile as sf

    rows = rel.manifest_rows(tones)
    rows[1]["transcript"] = " "
    rows[2]["transcript"] = ""
    sf.write(tmp_path / "tiny.wav", np.zeros(300, dtype="float32"), 16000)
    rows.append({**rows[0], "id": "tiny", "path": str(tmp_path / "tiny.wav"), "num_samples": 300})
    manifest = rel.write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=r"train.jsonl: 2 of 5 utterances with an empty transcript .*e\.g\. "
                                         r"'train-001', 'train-002'; 1 of 5 utterances with fewer samples than one "
                                         r"frame of the model needs \(400 at 16000 Hz\), e\.g\. 'tiny': set "
                                         r"data\.skip_bad=true to leave them out"):
        Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(manifest, 1))), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    over = rel.finetune_overrides(manifest, 2, "data.skip_bad=true")
    trainer = Trainer(FinetuneTask(load_finetune_config(None, over)), tmp_path / "run2")
    assert sorted(trainer.task.targets) == ["train-000", "train-003"]
    with caplog.at_level(logging.WARNING):
        assert trainer.fit()["step"] == 2
    assert (f"{manifest}: 2 utterances with an empty transcript (once lower-cased and text_mapping applied) are "
            "left out of train (data.skip_bad=true), e.g. ['train-001', 'train-002']") in caplog.text
    assert (f"{manifest}: 1 utterances with fewer samples than one frame of the model needs (400 at 16000 Hz) are "
            "left out of train (data.skip_bad=true), e.g. ['tiny']") in caplog.text
    assert "zero loss" not in caplog.text
    # a row data.min_seconds leaves out (counted by the sampler) is no error: docs/data.md's limits set on purpose
    only_short = rel.write_rows(tmp_path / "short.jsonl", [r for r in rows if r["id"] not in ("train-001",
                                                                                             "train-002")])
    over = rel.finetune_overrides(only_short, 1, "data.min_seconds=0.1")
    assert Trainer(FinetuneTask(load_finetune_config(None, over)), tmp_path / "run3").fit()["step"] == 1


def test_duplicate_ids_are_refused(tmp_path, tones, rel) -> None:
    """(tests/data covers the manifest reader; here the whole fine-tuning entry point.)"""
    rows = rel.manifest_rows(tones)
    rows.append(dict(rows[0]))
    manifest = rel.write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(ManifestError, match=r"train.jsonl:5: duplicate id 'train-000' \(first on line 1\)"):
        Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(manifest, 1))), tmp_path / "run")


def test_fine_tuning_refuses_a_row_too_long_for_the_device_unless_skip_bad(tmp_path, tones, rel, caplog) -> None:
    """Fine-tuning crops nothing: a row longer than device_seconds (and within max_seconds) stops the run
    naming the manifest and the row; with data.skip_bad=true it is left out and counted in the run's log."""
    rows = rel.manifest_rows(tones)
    n = rel.write_wave(tmp_path / "long.wav", 3.0)
    rows.append({**rows[0], "id": "long", "path": str(tmp_path / "long.wav"), "num_samples": n})
    manifest = rel.write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=r"train.jsonl: 1 of 5 utterances cannot be batched \(1 longer than "
                                         r"device_seconds=1.75 s\), e.g. long: set data.skip_bad=true"):
        Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(manifest, 1))), tmp_path / "run")
    cfg = load_finetune_config(None, rel.finetune_overrides(manifest, 1, "data.skip_bad=true"))
    trainer = Trainer(FinetuneTask(cfg), tmp_path / "run2")
    assert trainer.loader.skipped == 1
    with caplog.at_level(logging.WARNING):
        summary = trainer.fit()
    assert summary["unbatchable"] == 1 and "1 utterances cannot be batched" in caplog.text


# ---------------------------------------------------------------------------------------------- a whole run


@pytest.fixture
def dirty_manifest(tmp_path, tiny_corpus, rel) -> Path:
    """8 good utterances plus a corrupt file, a truncated WAV, NaN audio, one shorter than the receptive
    field (after resampling) and one too long for a 4 s batch (crop off)."""
    rows = [r for r in rel.manifest_rows(tiny_corpus[0]) if r["num_samples"] < 2 * 16000][:8]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    n = rel.write_wave(bad / "cut.wav", 1.0)
    _truncate(bad / "cut.wav", 0.4)
    x = np.full(16000, 0.1, np.float32)
    x[5] = np.nan
    sf.write(bad / "nan.wav", x, 16000, subtype="FLOAT")
    rel.write_wave(bad / "tiny.wav", 0.02, rate=8000)
    long_n = rel.write_wave(bad / "long.wav", 5.0)
    row = dict(speaker="s", transcript=None)
    rows += [
        {**row, "id": "corrupt", "path": str(bad / "corrupt.flac"), "num_samples": 16000, "sample_rate": 16000},
        {**row, "id": "cut", "path": str(bad / "cut.wav"), "num_samples": n, "sample_rate": 16000},
        {**row, "id": "nan", "path": str(bad / "nan.wav"), "num_samples": 16000, "sample_rate": 16000},
        {**row, "id": "tiny", "path": str(bad / "tiny.wav"), "num_samples": 160, "sample_rate": 8000},
        {**row, "id": "long", "path": str(bad / "long.wav"), "num_samples": long_n, "sample_rate": 16000},
    ]
    return rel.write_rows(tmp_path / "dirty.jsonl", rows)


def test_pretraining_over_bad_files_stops_naming_one(tmp_path, dirty_manifest, rel, caplog) -> None:
    """The over-long row stops the run before training (the sampler sees it first), naming the manifest, the row
    and the ways out; with data.max_seconds leaving it out on purpose, the first bad file read stops the run."""
    overrides = rel.pretrain_overrides(dirty_manifest, 12, "data.crop_seconds=null", "data.min_seconds=0")
    assert main(["pretrain", *overrides, "--out", str(tmp_path / "run")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert re.search(r"dirty.jsonl: 1 of 13 utterances cannot be batched \(1 longer than device_seconds=4 s\), "
                     r"e.g. long: set data.skip_bad=true", errors[0]), errors
    caplog.clear()
    rc = main(["pretrain", *overrides, "data.max_seconds=4", "--out", str(tmp_path / "run2")])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    problems = {"corrupt.flac": "unreadable audio", "cut.wav": "truncated?", "nan.wav": "NaN or infinite",
                "tiny.wav": "too short"}
    assert any(f"{name}: {problem}" in errors[0] for name, problem in problems.items()), errors


def test_a_bad_file_read_by_a_loader_worker_ends_the_process(tmp_path, dirty_manifest, rel) -> None:
    """The command as a user runs it, a worker process loading: the bad file's error, exit status 2, and the
    process ends (its workers ignore a scheduler's stop signals, but not their parent's: when Python's exit
    ended them with SIGTERM, ignored, the process hung in join()). The error is one line naming the file, its
    problem and the way out, as in-process loading gives (it was the worker's 20-line traceback)."""
    import os
    import subprocess
    import sys

    overrides = rel.pretrain_overrides(dirty_manifest, 12, "data.crop_seconds=null", "data.min_seconds=0",
                                       "data.max_seconds=4", "data.num_workers=1")
    r = subprocess.run([sys.executable, "-m", "earful.cli", "pretrain", *overrides, "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "DataLoader worker" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and re.search(r"(corrupt.flac|cut.wav|nan.wav|tiny.wav): .* \(utterance \w+\); "
                                          r"data.skip_bad=true leaves unreadable files out", errors[0]), r.stderr


def test_pretraining_with_skip_bad_counts_and_logs_every_bad_file(tmp_path, dirty_manifest, rel, caplog) -> None:
    """An epoch over the dirty corpus (loaded by a worker process): each bad file is counted in train.jsonl's
    ``bad_files`` and the summary, and logged naming it and its problem; the over-long one is counted as
    unbatchable and logged."""
    cfg = load_pretrain_config(None, rel.pretrain_overrides(dirty_manifest, 100, "data.skip_bad=true",
                                                            "data.crop_seconds=null", "data.min_seconds=0",
                                                            "data.num_workers=1"))
    trainer = Trainer(PretrainTask(cfg), tmp_path / "run")
    assert trainer.loader.skipped == 1  # "long": 5 s > device_seconds, no cropping
    cfg.max_steps = len(trainer.loader)  # at least one epoch: every bad file is met
    with caplog.at_level(logging.WARNING):
        summary = trainer.fit()
    log = rel.read_jsonl(tmp_path / "run" / "train.jsonl")
    assert summary["unbatchable"] == 1
    assert "1 utterances cannot be batched" in caplog.text and "longer than device_seconds=4" in caplog.text
    assert summary["bad_files"] >= 4 and log[-1]["bad_files"] == summary["bad_files"]
    assert [r["bad_files"] for r in log] == sorted(r["bad_files"] for r in log)  # a running count
    warned = [m for m in caplog.messages if m.startswith("skipped bad audio file")]
    assert len(warned) == summary["bad_files"]  # each one logged
    for uid, problem in (("corrupt", "unreadable audio"), ("cut", "truncated?"), ("nan", "NaN or infinite"),
                         ("tiny", "too short")):
        assert any(f"file {uid}: " in m and problem in m for m in warned), (uid, warned)
    assert not any("long" in m for m in warned)


def test_batches_with_no_loadable_audio_are_logged_and_kept_over_a_resume(tmp_path, tiny_corpus, rel) -> None:
    """Two junk files of 3.5 s, each a batch of its own (4 s a batch): both batches are left out, and the count
    is in train.jsonl, the summary and the checkpoint (it was only in memory, and restarted at 0 on resume)."""
    rows = [r for r in rel.manifest_rows(tiny_corpus[0])][:6]
    for name in ("junk1", "junk2"):
        (tmp_path / f"{name}.wav").write_bytes(b"junk")
        rows.append(dict(id=name, path=str(tmp_path / f"{name}.wav"), num_samples=56000, sample_rate=16000,
                         speaker="s", transcript=None))
    manifest = rel.write_rows(tmp_path / "junk.jsonl", rows)
    over = rel.pretrain_overrides(manifest, 100, "data.skip_bad=true", "data.crop_seconds=null", "ckpt_every=1")
    trainer = Trainer(PretrainTask(load_pretrain_config(None, over)), tmp_path / "run")
    trainer.cfg.max_steps = len(trainer.loader)  # over an epoch: both left out at least once
    summary = trainer.fit()
    log = rel.read_jsonl(tmp_path / "run" / "train.jsonl")
    assert summary["empty_batches"] == log[-1]["empty_batches"] >= 2 and summary["bad_files"] == 2
    resumed = Trainer(PretrainTask(load_pretrain_config(None, over)), tmp_path / "run", resume=True)
    assert resumed.loader.empty_batches == summary["empty_batches"] and resumed.loader.bad_files == 2


def test_a_manifest_that_leaves_every_utterance_out_is_refused(tmp_path, tiny_corpus, rel) -> None:
    """Every validation utterance shorter than data.min_seconds: validation measured nothing and logged a loss of
    0.0, which became checkpoints/best for good; every training one: fit() failed naming no file (after init was
    written). Refused when the run is built, naming the manifest and why."""
    valid = rel.write_rows(tmp_path / "valid.jsonl", rel.manifest_rows(tiny_corpus[1]))
    shortest = max(r["num_samples"] for r in rel.manifest_rows(valid)) / 16000 + 0.01  # above every valid one
    train = rel.write_rows(tmp_path / "train.jsonl", rel.manifest_rows(tiny_corpus[0]))
    over = rel.pretrain_overrides(train, 2, f"data.valid={valid}", f"data.min_seconds={shortest}")
    with pytest.raises(ValueError, match=r"valid.jsonl: nothing to batch: all 6 utterances are left out \(6 shorter"):
        Trainer(PretrainTask(load_pretrain_config(None, over)), tmp_path / "run")
    over = rel.pretrain_overrides(tiny_corpus[0], 2, "data.min_seconds=3.0")
    with pytest.raises(ValueError, match=r"train.jsonl: nothing to batch: all 24 utterances are left out"):
        Trainer(PretrainTask(load_pretrain_config(None, over)), tmp_path / "run2")


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("command", ["pretrain", "finetune", "evaluate", "transcribe"])
@pytest.mark.parametrize("device, problem", [("cuda", "no CUDA in this torch build"), ("gpu", "not a device")])
def test_a_device_torch_cannot_use_is_refused_naming_its_setting(tmp_path, tiny_corpus, tones, rel, monkeypatch,
                                                                   caplog, command, device, problem) -> None:
    """device=cuda on a CPU-only torch build was a raw traceback (exit 1) in every command, device=gpu torch's
    list of device types naming no setting: now exit 2 and one line naming the setting and the problem."""
    import torch

    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)  # a CPU-only build, on any machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = ["--out", str(tmp_path / "run")]
    argv = {
        "pretrain": ["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 1), f"device={device}", *out],
        "finetune": ["finetune", *rel.finetune_overrides(tones, 1), f"device={device}", *out],
        "evaluate": ["evaluate", str(tmp_path / "ckpt"), str(tones), "--device", device, *out],
        "transcribe": ["transcribe", str(tmp_path / "ckpt"), str(tmp_path / "x.wav"), "--device", device],
    }[command]
    shown = f"--device {device}" if command in ("evaluate", "transcribe") else f"device={device}"
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert f"{shown}: {problem}" in caplog.text
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_finetune_refuses_an_option_and_an_override_that_disagree(tmp_path, tones, rel, caplog) -> None:
    """``finetune --train X data.train=Y`` trained on X, saying nothing (--valid and data.valid, --init and init
    alike): refused naming both; the same value twice is accepted."""
    other = rel.write_rows(tmp_path / "other.jsonl", rel.manifest_rows(tones)[:2])
    over = rel.finetune_overrides(tones, 1)  # data.train=tones, data.valid=null, init=scratch
    for flag, shown in (("--train", f"data.train={tones}"), ("--valid", "data.valid=null")):
        with caplog.at_level(logging.ERROR):
            assert main(["finetune", *over, flag, str(other), "--out", str(tmp_path / "run")]) == 2
        assert f"{flag} {other} and {shown}: two values for {shown.split('=')[0]}; give one" in caplog.text
    assert not (tmp_path / "run").exists()
    assert main(["finetune", *over, "--train", str(tones), "--init", "scratch", "--out", str(tmp_path / "ok")]) == 0
    quoted = [o if not o.startswith("data.train=") else f"data.train='{tones}'" for o in over]  # read alike
    assert main(["finetune", *quoted, "--train", str(tones), "--out", str(tmp_path / "quoted")]) == 0


def test_pretrain_refuses_init_given_twice_differently(tmp_path, tiny_corpus, rel, caplog) -> None:
    """`pretrain --init A init=scratch` trained from A without a word (finetune refused it): refused naming both;
    the same value twice is accepted."""
    over = rel.pretrain_overrides(tiny_corpus[0], 1, "init=scratch")
    with caplog.at_level(logging.ERROR):
        assert main(["pretrain", *over, "--init", str(tmp_path / "a"), "--out", str(tmp_path / "run")]) == 2
    assert f"--init {tmp_path / 'a'} and init=scratch: two values for init; give one" in caplog.text
    assert not (tmp_path / "run").exists()
    assert main(["pretrain", *over, "--init", "scratch", "--out", str(tmp_path / "ok")]) == 0


@pytest.mark.parametrize(("setting", "message"), [
    ("ckpt_hours=[-1, 0.001]", r"ckpt_hours=\[-1.0, 0.001\]: \[-1.0\] not hours seen > 0"),
    ("ckpt_hours=[0]", r"not hours seen > 0"),
    ("ckpt_hours=[.nan]", r"not hours seen > 0"),
    ("ckpt_steps=[-5, 1]", r"ckpt_steps=\[-5, 1\]: a checkpoint is taken after a step >= 1"),
])
def test_milestones_that_cannot_be_taken_are_refused(tiny_corpus, rel, setting, message) -> None:
    """ckpt_hours and ckpt_steps were never checked: a negative hour made a checkpoint named hours--1 at the first
    step, and a step of 0 or below was never written, without a word."""
    from earful.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 2, setting))


def test_milestones_past_the_run_s_end_are_said(tmp_path, tiny_corpus, rel, caplog) -> None:
    """A milestone past the run's end (a step past max_steps; hours past batch_seconds × max_steps, which padded
    hours seen never exceed) was never written, without a word; it is said at the start. A study gives every run
    its milestones: a small batch's run reaches fewer of them."""
    cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 2, "ckpt_steps=[1, 99]",
                                                            "ckpt_hours=[0.001, 0.0023, 1000]"))
    with caplog.at_level(logging.WARNING):
        Trainer(PretrainTask(cfg), tmp_path / "run").fit()  # 2 steps of 4 s: 0.0022 h at most
    assert "ckpt_steps=99, ckpt_hours=0.0023, ckpt_hours=1000: past this run's end (max_steps=2" in caplog.text
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(("h", "s"))) \
        == ["hours-0.001", "step-0000002", "steps-1"]
    caplog.clear()
    nominal = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 2, "ckpt_hours=[0.0022, 0.0028]",
                                                                "ckpt_hours_basis=nominal"))
    with caplog.at_level(logging.WARNING):
        PretrainTask(nominal).build_model(Dist(), None)
    assert "ckpt_hours=0.0028: past" in caplog.text and "ckpt_hours=0.0022" not in caplog.text  # steps 3, 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        PretrainTask(nominal).build_model(Dist(rank=1, world_size=2), None)  # said by rank 0 alone
    assert caplog.text == ""


def test_a_padded_hours_milestone_is_written_at_the_step_that_reaches_it(tmp_path, odd_corpus, rel) -> None:
    """Full batches of 4 s reach 0.07 h at step 63 (63 × 4 s), where the running sum of padded hours is
    0.06999999999999997: compared exactly, hours-0.07 waited for step 64, and a run of 63 steps never wrote it,
    though it was not said to be past the end (that check allows the sum's rounding)."""
    cfg = load_pretrain_config(None, rel.pretrain_overrides(odd_corpus, 63, "ckpt_hours=[0.07]", "log_every=63"))
    Trainer(PretrainTask(cfg), tmp_path / "run").fit()
    info = json.loads((tmp_path / "run" / "checkpoints" / "hours-0.07" / "trainer.json").read_text())
    assert info["step"] == 63 and info["hours_padded"] == pytest.approx(0.07)


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_a_bad_file_in_the_validation_set_stops_the_run_before_training(tmp_path, tiny_corpus, tones, rel,
                                                                         caplog, kind) -> None:
    """The validation (dev) set is read at the first validation only: a corrupt file there, or one too short for
    the model, or a FLAC cut short (its header whole), stopped the run after it had trained every step since its
    last checkpoint (the checkpoint at that step comes after the validation), which were lost. Its rows are checked
    against their files (header, last sample) before training, naming the manifest, the file and the problem; with
    data.skip_bad the run trains."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    rel.write_wave(bad / "short.wav", 100 / 16000)
    cut = rel.write_wave(bad / "cut.flac", 3.0, subtype="PCM_16")
    _truncate(bad / "cut.flac", 0.5)
    train = tiny_corpus[0] if kind == "pretrain" else tones
    good = rel.manifest_rows(train)[:3]
    problems = {"corrupt.flac": "unreadable audio header", "short.wav": "too short", "cut.flac": "cannot read up to "
                f"sample {cut} of the {cut} its header promises (truncated?)"}
    for name, row in (("corrupt.flac", {"num_samples": 16000}), ("short.wav", {"num_samples": 100}),
                      ("cut.flac", {"num_samples": cut})):
        dev = rel.write_rows(tmp_path / f"dev-{name}.jsonl", [*good, {**good[0], "id": "x", "path": str(bad / name),
                                                                       "sample_rate": 16000, **row}])
        if kind == "pretrain":
            overrides = rel.pretrain_overrides(train, 4, f"data.valid={dev}", "valid_every=2", "data.min_seconds=0")
        else:
            overrides = [o for o in rel.finetune_overrides(train, 4, "valid_every=2") if o != "data.valid=null"]
            overrides.append(f"data.valid={dev}")
        caplog.clear()
        assert main([kind, *overrides, "--out", str(tmp_path / f"run-{kind}-{name}")]) == 2
        assert not (tmp_path / f"run-{kind}-{name}" / "train.jsonl").exists()  # nothing trained, nothing lost
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        problem = problems[name]
        assert len(errors) == 1 and errors[0].startswith(f"{tmp_path / f'dev-{name}.jsonl'}: {bad / name}: {problem}")\
            and errors[0].endswith("(utterance x); data.skip_bad=true leaves them out, counted"), errors
    assert main([kind, *overrides, "data.skip_bad=true", "--out", str(tmp_path / f"run-{kind}-skip")]) == 0
