"""Segments (windows of long files): manifest rows with ``offset``, reads that decode only the crop, the
columnar manifest, the energy VAD on audio with known silences, and ``earful prepare`` on unlabelled
Libri-light and on the folders a new user points it at."""

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from earful.data import commands
from earful.data.audio import AudioError
from earful.data.budget import BatchBudget
from earful.data.dataset import AudioDataset, make_loader
from earful.data.librispeech import Note, discover, read_unlabelled
from earful.data.manifest import ManifestError, Utterance, read_manifest, write_manifest
from earful.data.vad import SegmentLimits, annotated_vad, cut_segments, energy_vad

SR = 16000


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """Samples decoded by every ``SoundFile.read`` call, in order."""
    calls: list[int] = []
    real = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        out = real(self, frames, *args, **kwargs)
        calls.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", read)
    return calls


def test_a_crop_of_a_long_file_decodes_only_the_crop(tmp_path: Path, recording, decoded) -> None:
    """A 1 s crop of a 12 s file, and of a 5 s segment of it: 1 s decoded, the same samples as slicing the whole."""
    n = recording(tmp_path / "long.flac")
    whole, _ = sf.read(tmp_path / "long.flac", dtype="float32")
    rows = [Utterance("file", str(tmp_path / "long.flac"), n, SR, "s"),
            Utterance("seg", str(tmp_path / "long.flac"), 5 * SR, SR, "s", offset=3 * SR)]
    ds = AudioDataset(rows, crop_seconds=1.0, seed=7)
    decoded.clear()
    for index, first, samples in ((0, 0, n), (1, 3 * SR, 5 * SR)):
        item = ds[(index, 2)]
        start = int(np.random.default_rng([7, 2, index]).integers(0, samples - SR + 1))  # the crop's key
        assert np.array_equal(item.wave, whole[first + start : first + start + SR])
    assert decoded == [SR, SR]  # 1 s each, not 12
    assert np.array_equal(ds[(1, 2)].wave, ds[(1, 2)].wave) and not np.array_equal(ds[(1, 2)].wave, ds[(1, 3)].wave)


def test_a_segment_at_another_rate_is_decoded_alone_and_resampled(tmp_path: Path, recording, decoded) -> None:
    recording(tmp_path / "8k.flac", rate=8000)
    x, _ = sf.read(tmp_path / "8k.flac", dtype="float32")
    seg = Utterance("seg", str(tmp_path / "8k.flac"), 16000, 8000, "s", offset=8000)
    decoded.clear()
    wave = AudioDataset([seg])[0].wave
    assert decoded == [16000]
    assert np.array_equal(wave, soxr.resample(x[8000:24000], 8000, SR, quality="HQ").astype(np.float32)[:32000])


def test_a_segment_past_the_end_of_its_file_is_named_then_skipped_and_counted(tmp_path: Path, recording) -> None:
    n = recording(tmp_path / "a.flac")
    rows = [Utterance("ok", str(tmp_path / "a.flac"), SR, SR, "s", offset=0),
            Utterance("past", str(tmp_path / "a.flac"), 2 * SR, SR, "s", offset=n - SR)]
    with pytest.raises(AudioError, match=rf"a.flac: segment \[{n - SR}, {n + SR}\) past the end of the file \({n} "):
        AudioDataset(rows)[1]
    loader = make_loader(rows, BatchBudget.per_device(10.0), skip_bad=True)
    assert [i for b in loader for i in b.ids] == ["ok"] and loader.bad_ids == {"past"}


def test_manifest_rows_keep_offsets_and_whole_files_stay_as_they_were(tmp_path: Path) -> None:
    rows = [Utterance("a", str(tmp_path / "a.flac"), 100, SR, "s", "HI"),
            Utterance("b", str(tmp_path / "a.flac"), 50, 8000, "s", offset=25)]
    write_manifest(rows, tmp_path / "m.jsonl")
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert "offset" not in json.loads(lines[0]) and json.loads(lines[1])["offset"] == 25
    back = read_manifest(tmp_path / "m.jsonl")
    assert list(back) == rows and back[1] == rows[1] and back[-1] == rows[1] and back[0:1] == rows[:1]
    assert back.lengths().tolist() == [100, 100]  # at 16 kHz, from the columns
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + lines[1].replace('"offset": 25', '"offset": -1') + "\n")
    with pytest.raises(ManifestError, match=r"bad.jsonl:2: field 'offset' must be an integer >= 0"):
        read_manifest(tmp_path / "bad.jsonl")


def test_a_manifest_read_into_columns_survives_its_file_being_replaced(tmp_path: Path) -> None:
    """Rows are parsed on demand from the file opened when read: an atomic rewrite does not change them."""
    rows = [Utterance(f"u{i}", f"/x/{i}.flac", 1000 + i, SR, "s") for i in range(5)]
    write_manifest(rows, tmp_path / "m.jsonl")
    utts = read_manifest(tmp_path / "m.jsonl")
    write_manifest(rows[:2], tmp_path / "m.jsonl")
    assert len(utts) == 5 and utts[4] == rows[4]


def test_energy_vad_finds_the_known_silences(tmp_path: Path, recording) -> None:
    """Voiced 0.5–3.0, 3.2–5.5, 7.5–10.0, 10.1–11.5 s: a 0.2 and a 0.1 s pause are bridged, the 2 s one is not."""
    recording(tmp_path / "r.flac")
    rate = SR
    voiced = energy_vad(tmp_path / "r.flac", rate)
    np.testing.assert_allclose(voiced / SR, [[0.4, 5.6], [7.4, 11.6]], atol=0.03)
    segments, left_out = cut_segments(voiced, rate, SegmentLimits(max_seconds=4.0, min_seconds=1.0, max_pause=1.0))
    spans = np.array(segments) / SR
    np.testing.assert_allclose(spans, [[0.4, 3.0], [3.0, 5.6], [7.4, 9.5], [9.5, 11.6]], atol=0.03)
    assert left_out == 0
    merged, _ = cut_segments(voiced, rate, SegmentLimits(max_seconds=20.0, min_seconds=1.0, max_pause=2.5))
    assert len(merged) == 1  # the 1.8 s pause bridged when allowed
    short, lost = cut_segments(voiced, rate, SegmentLimits(max_seconds=20.0, min_seconds=5.0, max_pause=1.0))
    assert len(short) == 1 and lost == voiced[1, 1] - voiced[1, 0]  # 4.2 s < 5 s left out, counted


@pytest.mark.parametrize("pairs, which", [
    ([[float("nan"), 5.0]], "pair 0 \\[nan, 5.0\\]"),  # was cast to int64's least: cut_segments then ran out of memory
    ([[0.5, float("inf")]], "pair 0"),
    ([[-1.0, 2.0]], "pair 0 \\[-1.0, 2.0\\]"),  # was clipped to 0 without a word
    ([[1.0, 2.0], [3.0, 2.5]], "pair 1"),
    ([[1.0, 2.0], [11.0, 12.6]], "pair 1"),  # 0.6 s past the end of a 12 s file: another file's (was cut to it)
    ([[1.0, 2.0], [13.0, 14.0]], "pair 1"),
    ([[10**400, 1]], "a number beyond any file's length"),
])
def test_unusable_voice_activity_is_refused_naming_the_pair(pairs: list, which: str) -> None:
    with pytest.raises(ValueError, match=which):
        annotated_vad(pairs, SR, 12 * SR)


def test_unusable_voice_activity_names_the_end_accepted() -> None:
    """The refusal of an end 0.6 s past a 12 s file said "end <= 12.000 (the file's length)", though an end up to
    0.5 s past it is accepted (rounding): it names the bound applied."""
    with pytest.raises(ValueError, match=r"end <= 12\.500 \(the file's 12\.000 s and 0\.5 s of rounding\)"):
        annotated_vad([[11.0, 12.6]], SR, 12 * SR)


def test_voice_activity_within_the_file_and_its_rounding_is_used() -> None:
    spans = annotated_vad([[0.5, 3.0], [3.0, 3.0], [11.5, 12.4]], SR, 12 * SR)  # an end 0.4 s late: rounding
    assert spans.tolist() == [[8000, 48000], [184000, 192000]]
    overlapping = annotated_vad([[4.0, 5.0], [0.5, 3.0], [2.9, 3.5]], SR, 12 * SR)  # out of order, overlapping
    assert overlapping.tolist() == [[8000, 56000], [64000, 80000]]


def test_the_energy_vad_reads_samples_only_its_header_read_before(tmp_path: Path, recording, opens) -> None:
    """Unlabelled files without annotations (here at 8 kHz: 160-sample frames): each opened twice in all, for its
    header (the rate the VAD is given) and for its samples; the segments are the energy VAD's at that rate."""
    for k in range(2):
        recording(tmp_path / "small" / "100" / "book_0" / f"f{k}.flac", rate=8000, seed=k)
    utts = read_unlabelled(tmp_path / "small", limits=SegmentLimits(max_seconds=4.0, min_seconds=1.0))
    assert sorted(opens.values()) == [2, 2]
    first = [(u.offset, u.offset + u.num_samples) for u in utts if u.path.endswith("f0.flac")]
    voiced = energy_vad(tmp_path / "small" / "100" / "book_0" / "f0.flac", 8000)
    np.testing.assert_allclose(voiced / 8000, [[0.4, 5.6], [7.4, 11.6]], atol=0.03)
    assert first == cut_segments(voiced, 8000, SegmentLimits(max_seconds=4.0, min_seconds=1.0))[0]
    assert all(u.sample_rate == 8000 for u in utts)


def test_prepare_cuts_unlabelled_librilight_by_its_annotations_or_the_energy_vad(
        tmp_path: Path, unlabelled_tree, monkeypatch, caplog) -> None:
    root = tmp_path / "librilight" / "small"
    unlabelled_tree(root, files=3)
    plain = unlabelled_tree(tmp_path / "elsewhere", files=1, annotated=False)[0]  # no json: the energy VAD
    target = root / "101" / "book_9" / "no_json.flac"
    target.parent.mkdir(parents=True)
    plain.rename(target)
    (root / "100" / "book_0" / "chapter_00_64kb.json").write_text('{"voice_activity": [[3, 1]]}')  # unusable
    limits = SegmentLimits(max_seconds=6.0, min_seconds=1.0, max_pause=1.0)
    problems: list[str] = []
    with caplog.at_level(logging.INFO):
        splits = discover(tmp_path / "librilight", problems, limits=limits)
    assert list(splits) == ["unlabelled-small"]
    utts = splits["unlabelled-small"]
    assert {u.speaker for u in utts} == {"100", "101"}
    by_file: dict[str, list[Utterance]] = {}
    for u in utts:
        by_file.setdefault(Path(u.path).stem, []).append(u)
    annotated = by_file["chapter_01_64kb"]  # voice_activity 0.5-3.0, 3.2-5.5 | 7.5-10.0, 10.1-11.5
    assert [(u.offset, u.offset + u.num_samples) for u in annotated] == [(8000, 88000), (120000, 184000)]
    assert annotated[0].id == "101/book_0/chapter_01_64kb-0000" and annotated[0].transcript is None
    assert len(by_file["no_json"]) == 2 and len(by_file["chapter_00_64kb"]) == 2  # by energy
    assert len(problems) == 2 and "chapter_00_64kb.json: unusable VAD annotations" in problems[0]
    assert "no_json.flac: no VAD annotations (no_json.json is missing); the energy VAD is used" in problems[1]
    assert "2 files by the energy VAD" in caplog.text
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    command = ["prepare", str(root), str(tmp_path / "out"), "--max-seconds", "6", "--min-seconds", "1", "--workers",
               "2"]
    args = parser.parse_args(command)
    with pytest.raises(ValueError, match=r"small: 2 problem\(s\), listed in .*problems-small.txt: .*No manifest"):
        args.func(args)  # the two files without usable annotations
    assert not (tmp_path / "out" / "unlabelled-small.jsonl").exists()
    assert (tmp_path / "out" / "problems-small.txt").read_text().splitlines() == problems
    args = parser.parse_args([*command, "--skip-bad"])  # cut by the energy VAD, counted
    assert args.func(args) == 0
    manifest = read_manifest(tmp_path / "out" / "unlabelled-small.jsonl", check_files=True)
    assert list(manifest) == utts == read_unlabelled(root, limits=limits)
    batch = next(iter(make_loader(manifest, BatchBudget.per_device(60.0), shuffle=False)))
    assert sorted(batch.ids) == sorted(u.id for u in utts)  # every segment loads


def test_a_truncated_librilight_file_is_a_problem_not_cut_by_its_annotations(tmp_path: Path,
                                                                             unlabelled_tree) -> None:
    """An annotated Libri-light FLAC cut short keeps its header: its annotations were cut into segments past its
    real end, which failed in training (some epochs). Its last sample is read when its header is: a problem naming
    it, no segment."""
    whole, cut = unlabelled_tree(tmp_path / "small", files=2)
    os.truncate(cut, os.path.getsize(cut) // 3)
    problems: list[str] = []
    utts = read_unlabelled(tmp_path / "small", problems)
    assert {u.path for u in utts} == {str(whole.resolve())}
    assert len(problems) == 1 and problems[0].startswith(f"{cut}: cannot read up to sample {12 * 16000} of the "
                                                         f"{12 * 16000} its header promises (truncated?)")


def test_prepare_recognises_the_folder_holding_librispeech(tmp_path: Path, ls_tree) -> None:
    """A new user points prepare at the folder where they unpacked LibriSpeech: the splits, not chapters."""
    ls_tree(tmp_path / "data" / "LibriSpeech" / "train-clean-100", speakers=(1,))
    ls_tree(tmp_path / "data" / "LibriSpeech" / "dev-clean", speakers=(2,))
    splits = discover(tmp_path / "data")
    assert sorted(splits) == ["dev-clean", "train-clean-100"]
    assert all(u.transcript for u in splits["dev-clean"]) and {u.speaker for u in splits["dev-clean"]} == {"2"}
    ls_tree(tmp_path / "data" / "mirror" / "dev-clean", speakers=(3,))
    with pytest.raises(ValueError, match="two splits named dev-clean"):
        discover(tmp_path / "data")


def test_a_file_shorter_than_a_model_frame_is_a_problem(tmp_path: Path, tone) -> None:
    tone(tmp_path / "ok.wav", 0.5)
    tone(tmp_path / "blip.wav", 0.02)  # 320 samples < 400
    tone(tmp_path / "blip8k.wav", 0.03, rate=8000)  # 240 samples, 480 at 16 kHz: long enough
    problems: list[str] = []
    utts = discover(tmp_path, problems)[tmp_path.name]
    assert sorted(u.id for u in utts) == ["blip8k", "ok"]
    assert len(problems) == 1 and "blip.wav: too short (320 samples at 16000 Hz" in problems[0]


def test_prepare_reads_files_whose_names_are_not_utf8_and_names_those_it_cannot_use(
        tmp_path: Path, unlabelled_tree, not_utf8) -> None:
    """Libri-light files named in Latin-1 (``caf\\xe9.flac`` and its ``.json``; one without annotations, cut by the
    energy VAD): `earful prepare` stopped at the first, with or without --skip-bad, on "'utf-8' codec can't encode
    character '\\udce9' ...: surrogates not allowed", naming no file and writing no manifest. Now they are cut as
    any other, their manifest reads back and loads; one that is not audio is a problem naming it (by its repr: its
    name cannot be printed), which stops prepare, or with --skip-bad is left out and counted."""
    root = tmp_path / "librilight" / "small"
    first, second = unlabelled_tree(root, files=2)
    cafe = not_utf8(first, b"caf\xe9.flac")
    not_utf8(first.with_suffix(".json"), b"caf\xe9.json")  # its annotations
    naive = not_utf8(second, b"na\xefve.flac")  # no json beside it: the energy VAD
    second.with_suffix(".json").unlink()
    (root / "101" / "book_0" / "x.flac").write_bytes(b"this is not audio at all" * 10)
    broken = not_utf8(root / "101" / "book_0" / "x.flac", b"bro\xa0ken.flac")
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    command = ["prepare", str(root), str(tmp_path / "out"), "--max-seconds", "6", "--min-seconds", "1"]
    args = parser.parse_args(command)
    with pytest.raises(ValueError, match=r"small: 2 problem\(s\), listed in .*problems-small.txt: "):
        args.func(args)
    listed = (tmp_path / "out" / "problems-small.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(listed) == [f"{str(broken)!r}: unreadable audio header (Format not recognised.)",
                              f"{str(naive)!r}: no VAD annotations ('na\\udcefve.json' is missing); the energy VAD "
                              "is used instead"]
    assert not (tmp_path / "out" / "unlabelled-small.jsonl").exists()
    args = parser.parse_args([*command, "--skip-bad"])
    assert args.func(args) == 0
    manifest = read_manifest(tmp_path / "out" / "unlabelled-small.jsonl", check_files=True)
    by_file: dict[str, list[Utterance]] = {}
    for u in manifest:
        by_file.setdefault(u.path, []).append(u)
    assert sorted(by_file) == sorted([str(cafe), str(naive)])  # the same str as os.listdir's: the same files
    assert [(u.offset, u.offset + u.num_samples) for u in by_file[str(cafe)]] == [(8000, 88000), (120000, 184000)]
    assert by_file[str(cafe)][0].id == "100/book_0/caf\udce9-0000" and len(by_file[str(naive)]) == 2
    batch = next(iter(make_loader(manifest, BatchBudget.per_device(60.0), shuffle=False)))
    assert sorted(batch.ids) == sorted(u.id for u in manifest)  # every segment loads


@pytest.mark.parametrize("limits", [
    ["--max-seconds", "0.00001", "--min-seconds", "0.00001"],  # was ZeroDivisionError (a segment of 0 samples)
    ["--max-seconds", "inf"],  # was OverflowError
    ["--max-pause", "nan"],  # was "cannot convert float NaN to integer", naming no option
    ["--min-seconds", "0.005"],  # rows of 80 samples, which `earful shard` and the loader then refused
])
def test_segment_limits_no_segment_can_keep_are_refused_before_any_file_is_read(tmp_path: Path, unlabelled_tree,
                                                                               limits: list[str]) -> None:
    unlabelled_tree(tmp_path / "small", files=1)
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["prepare", str(tmp_path / "small"), str(tmp_path / "out"), *limits])
    with pytest.raises(ValueError, match="segment limits: "):
        args.func(args)
    assert not (tmp_path / "out").exists()


def test_shard_refuses_a_shard_size_that_is_no_number_of_bytes(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["shard", str(tmp_path / "m.jsonl"), str(tmp_path / "shards"), "--shard-gb", "inf"])
    with pytest.raises(ValueError, match=r"--shard-gb inf: expected a finite size > 0"):
        args.func(args)  # was OverflowError, a traceback


def test_a_file_cut_into_no_segment_is_named_and_counted_not_dropped_silently(tmp_path: Path, unlabelled_tree,
                                                                             caplog) -> None:
    """A Libri-light file whose VAD finds nothing to keep (annotated silent; one the energy VAD finds no pause in)
    vanished from the manifest with its speaker, and no line said so."""
    annotated, silent = unlabelled_tree(tmp_path / "small", files=2)
    silent.with_suffix(".json").write_text('{"voice_activity": []}')
    steady = annotated.parent / "steady.flac"  # one level throughout: nothing over the energy VAD's floor
    sf.write(steady, (0.3 * np.sin(2 * np.pi * 220 * np.arange(30 * SR) / SR)).astype(np.float32), SR)
    problems: list[str] = []
    with caplog.at_level(logging.INFO):
        utts = read_unlabelled(tmp_path / "small", problems)
    assert {Path(u.path).name for u in utts} == {annotated.name}
    for path in (silent, steady):
        assert any(p.startswith(f"{path}: no segment: ") and isinstance(p, Note) for p in problems), problems
    assert "2 files gave no segment" in caplog.text


def test_the_voice_activity_left_out_is_counted_in_the_files_own_seconds(tmp_path: Path, caplog) -> None:
    """The hours of voice activity in segments too short were samples at the file's rate over 16 kHz: three times
    too many for 48 kHz files. 36 s of a 48 kHz file left out is 0.01 h (was logged as 0.03 h)."""
    flac = tmp_path / "small" / "100" / "book" / "f.flac"
    flac.parent.mkdir(parents=True)
    sf.write(flac, np.zeros(40 * 48000, dtype=np.float32), 48000)  # the annotations decide, not the samples
    flac.with_suffix(".json").write_text('{"voice_activity": [[0, 36]]}')
    problems: list[str] = []
    with caplog.at_level(logging.INFO):
        assert read_unlabelled(tmp_path / "small", problems, limits=SegmentLimits(60, 37, 1)) == []
    assert "0.01 h of voice activity in segments shorter than 37 s left out" in caplog.text


def test_prepare_holds_a_segment_in_fewer_bytes_and_checks_its_ids_without_a_dict_of_them() -> None:
    """Libri-light's 16 M segments are held in memory until prepare writes them: an Utterance's ``__dict__`` cost
    48 bytes a segment, and the check that a written manifest holds each id once built a dict of every id (43
    bytes a segment more at its peak: 0.7 GB). The check still leaves an id's later rows out, naming both files."""
    import tracemalloc

    from earful.data.commands import _one_row_an_id

    utts = [Utterance(f"s/b/f{k // 70}-{k % 70:04d}", f"/a/f{k // 70}.flac", 240000, SR, "s", offset=k)
            for k in range(140_000)]
    assert not hasattr(utts[0], "__dict__")
    tracemalloc.start()
    try:
        kept = _one_row_an_id("unlabelled-large", utts, problems := [])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert kept == utts and not problems and peak / len(utts) < 30
    twice = [*utts[:3], Utterance(utts[1].id, "/b/copy.flac", 16000, SR, "s"), utts[3]]
    assert _one_row_an_id("train-960", twice, problems) == utts[:4]
    assert problems == [f"split train-960: duplicate utterance id {utts[1].id} (/a/f0.flac and /b/copy.flac); the "
                        "second left out"]


def _many_segments(root: Path, files: int, segments: int) -> list[Path]:
    """``files`` silent FLACs ``SPEAKER/BOOK/FILE.flac``, each annotated with ``segments`` stretches of voice of
    0.05 s, 0.05 s apart (one segment each with ``--max-seconds 0.05 --min-seconds 0.05 --max-pause 0``)."""
    meta = json.dumps({"voice_activity": [[k / 10, k / 10 + 0.05] for k in range(segments)]})
    paths = []
    for k in range(files):
        flac = root / f"{k // 10}" / f"book_{k // 5}" / f"f{k:03d}.flac"
        flac.parent.mkdir(parents=True, exist_ok=True)
        sf.write(flac, np.zeros(segments * SR // 10 + SR // 10, dtype=np.float32), SR)
        flac.with_suffix(".json").write_text(meta)
        paths.append(flac)
    return paths


TINY_SEGMENTS = ["--max-seconds", "0.05", "--min-seconds", "0.05", "--max-pause", "0"]


def _peak_of_prepare(source: Path, out: Path, warm: Path) -> int:
    """The peak bytes Python allocated in `earful prepare SOURCE OUT` (``TINY_SEGMENTS``), run after a prepare of
    ``warm`` into ``OUT/../warm-out``: what a run imports (numpy's lazy modules) is imported before one is measured."""
    import tracemalloc

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    first = parser.parse_args(["prepare", str(warm), str(out.parent / "warm-out"), *TINY_SEGMENTS])
    assert first.func(first) == 0
    args = parser.parse_args(["prepare", str(source), str(out), *TINY_SEGMENTS])
    tracemalloc.start()
    try:
        assert args.func(args) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_prepare_holds_a_few_tens_of_bytes_a_segment_until_it_writes_them(tmp_path: Path) -> None:
    """`earful prepare` held every segment of an unlabelled split as an Utterance until it had written them all
    (about 300 bytes a segment at its peak here; Libri-light's 16 M segments: 5.5 GB). They are kept as columns
    now, a row made when it is written: its whole run, reading and writing, peaks at a few tens of bytes a segment,
    and the manifest holds every segment, numbered in its file, at its offset."""
    files, segments = 100, 500
    _many_segments(tmp_path / "small", files, segments)
    _many_segments(tmp_path / "warm" / "small", 1, 10)
    peak = _peak_of_prepare(tmp_path / "small", tmp_path / "out", warm=tmp_path / "warm" / "small")
    assert peak / (files * segments) < 100, f"{peak / (files * segments):.0f} bytes a segment"
    rows = [json.loads(line) for line in (tmp_path / "out" / "unlabelled-small.jsonl").open()]
    assert len(rows) == files * segments
    assert [(r["id"], r["offset"], r["num_samples"]) for r in rows[segments - 2 : segments + 1]] == [
        ("0/book_0/f000-0498", 498 * 1600, 800), ("0/book_0/f000-0499", 499 * 1600, 800),
        ("0/book_0/f001-0000", 0, 800)]
    assert rows[-1]["path"] == str((tmp_path / "small" / "9" / "book_19" / "f099.flac").resolve())


def test_an_id_two_files_give_is_written_once_each_row_kept_with_its_own_number(tmp_path: Path) -> None:
    """``x.FLAC`` (0.15 s: 2 segments) beside ``x.flac`` (0.35 s: 3), cut by one ``x.json``: both give ids
    ``x-0000`` and ``x-0001``. The later rows of an id are left out, a problem each (written with --skip-bad);
    ``x.flac``'s third row is kept with its own id, ``x-0002``, and offset."""
    book = tmp_path / "small" / "100" / "book"
    book.mkdir(parents=True)
    sf.write(book / "x.FLAC", np.zeros(2400, dtype=np.float32), SR)
    sf.write(book / "x.flac", np.zeros(5600, dtype=np.float32), SR)
    (book / "x.json").write_text(json.dumps({"voice_activity": [[0, 0.05], [0.1, 0.15], [0.2, 0.25]]}))
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["prepare", str(tmp_path / "small"), str(tmp_path / "out"), *TINY_SEGMENTS,
                              "--skip-bad"])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "unlabelled-small.jsonl").open()]
    assert [(r["id"], Path(r["path"]).name, r["offset"]) for r in rows] == [
        ("100/book/x-0000", "x.FLAC", 0), ("100/book/x-0001", "x.FLAC", 1600), ("100/book/x-0002", "x.flac", 3200)]
    assert (tmp_path / "out" / "problems-small.txt").read_text().splitlines() == [
        f"split unlabelled-small: duplicate utterance id 100/book/x-000{k} ({book / 'x.FLAC'} and {book / 'x.flac'}); "
        "the second left out" for k in (0, 1)]


def test_prepare_holds_a_few_hundred_bytes_a_file_until_it_writes_them(tmp_path: Path) -> None:
    """`earful prepare` of unlabelled Libri-light held about 1.2 kB a file at its peak here (Libri-light's hundreds
    of thousands of files: half its memory): a ``Path`` a file found, and for each file read a tuple key, a
    ``_Read`` and a ``Path`` (the record of the files read), and a tuple of strings a file with segments. They are
    kept as columns of bytes now, the manifest the same."""
    import shutil

    files = 1500
    template = _many_segments(tmp_path / "one", 1, 1)[0]
    for k in range(files):  # Libri-light's shape: 20 files a speaker, 5 a book
        flac = tmp_path / "small" / f"{k // 20}" / f"book_{k // 5}" / f"chapter_{k:05d}_64kb.flac"
        flac.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, flac)
        shutil.copyfile(template.with_suffix(".json"), flac.with_suffix(".json"))
    # warmed by the same tree: Python's table of interned path names grows once, not in the run measured
    peak = _peak_of_prepare(tmp_path / "small", tmp_path / "out", warm=tmp_path / "small")
    assert peak / files < 700, f"{peak / files:.0f} bytes a file"
    assert (tmp_path / "out" / "unlabelled-small.jsonl").read_bytes() == (
        tmp_path / "warm-out" / "unlabelled-small.jsonl").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "out" / "unlabelled-small.jsonl").open()]
    assert [r["id"] for r in rows[:2]] == ["0/book_0/chapter_00000_64kb-0000", "0/book_0/chapter_00001_64kb-0000"]
    assert len(rows) == files and rows[-1]["path"] == str(
        (tmp_path / "small" / "9" / "book_39" / "chapter_00199_64kb.flac").resolve())  # folders by name


def test_an_unlabelled_splits_ids_are_checked_by_their_files_without_making_a_row(monkeypatch) -> None:
    """The check that a manifest holds an id once made every segment's row again (its id hashed): 16 M at
    Libri-light's size. An id is ``STEM-NNNN``: only the rows of files sharing a stem are made and compared, and an
    id two files give is still left out of the second, naming both."""
    from earful.data.commands import _one_row_an_id
    from earful.data.librispeech import Segments

    segments = Segments()
    for k in range(50):
        segments.add(f"s/b/f{k}", f"/a/f{k}.flac", "s", SR, [(0, 800), (1600, 2400)])
    segments.add("s/b/f7", "/a/f7.FLAC", "s", SR, [(0, 800)])
    made: list[int] = []
    real = Segments._utterance
    monkeypatch.setattr(Segments, "_utterance", lambda self, f, row: made.append(row) or real(self, f, row))
    kept = _one_row_an_id("unlabelled-small", segments, problems := [])
    assert sorted(made) == [14, 15, 100]  # f7's rows and f7.FLAC's: no other row made
    assert problems == ["split unlabelled-small: duplicate utterance id s/b/f7-0000 (/a/f7.flac and /a/f7.FLAC); "
                        "the second left out"]
    assert len(kept) == 100 and [u.id for u in kept][14:16] == ["s/b/f7-0000", "s/b/f7-0001"]


def test_strings_are_a_sequence_of_any_file_name() -> None:
    """Strings (prepare's compact file lists) give back every name as it was, non-UTF-8 bytes too, by index from
    either end, as a Sequence does (a negative index was refused)."""
    from earful.data.librispeech import Strings

    names = ["a", "é/b c", os.fsdecode(b"x\xff.flac"), ""]
    strings = Strings()
    for name in names:
        strings.append(name)
    more = Strings()
    more.append("z")
    strings.extend(more)
    assert list(strings) == [*names, "z"] and len(strings) == 5
    assert strings[-1] == "z" and strings[-3] == names[2] and os.fsencode(strings[2]) == b"x\xff.flac"
    for outside in (5, -6):
        with pytest.raises(IndexError):
            strings[outside]
