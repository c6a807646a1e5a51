import argparse
import contextlib
import logging
import os
import shutil
from pathlib import Path

import pytest

from earful.data import commands
from earful.data.librispeech import Note, discover, read_folder, read_librilight, read_librispeech
from earful.data.manifest import read_manifest, write_manifest


def test_librispeech_layout(librispeech):
    root, lengths = librispeech
    problems: list[str] = []
    utts = read_librispeech(root, problems)
    assert problems == []
    assert {u.id: u.num_samples for u in utts} == lengths
    u = next(u for u in utts if u.id == "26-495-0002")
    assert u.speaker == "26" and u.sample_rate == 16000 and u.transcript == "HELLO WORLD NUMBER 2"
    assert Path(u.path).is_file()


def test_librispeech_problems_are_reported(librispeech, tone):
    root, _ = librispeech
    tone(root / "19" / "198" / "19-198-0099.flac", 0.5)  # no transcript line
    (root / "26" / "495" / "26-495-0001.flac").unlink()  # transcript without audio
    (root / "26" / "495" / "26-495-0002.flac").write_bytes(b"junk")  # unreadable header
    problems: list[str] = []
    utts = {u.id: u for u in read_librispeech(root, problems)}
    assert utts["19-198-0099"].transcript is None
    assert "26-495-0001" not in utts and "26-495-0002" not in utts
    text = "\n".join(problems)
    assert "no transcript line for 19-198-0099" in text
    assert "transcript for 26-495-0001 has no audio file" in text
    assert "26-495-0002.flac: unreadable audio header" in text


def test_librilight_label_sets(librilight):
    sets = read_librilight(librilight.parent)
    speakers = {name: {u.speaker for u in utts} for name, utts in sets.items()}
    assert speakers["10min"] == {"100", "101"}  # 1h/0 clean + other
    assert len(speakers["1h"]) == 12 and len(speakers["10h"]) == 14
    assert speakers["10min"] < speakers["1h"] < speakers["10h"]
    assert len(sets["10h"]) == 28


def test_plain_folder(tmp_path: Path, tone):
    tone(tmp_path / "spk1" / "a.wav", 0.5)
    (tmp_path / "spk1" / "a.txt").write_text("hello  there\n")
    tone(tmp_path / "spk2" / "b.flac", 0.5, rate=8000)
    utts = {u.id: u for u in read_folder(tmp_path)}
    assert utts["spk1/a"].transcript == "hello there" and utts["spk1/a"].speaker == "spk1"
    assert utts["spk2/b"].transcript is None and utts["spk2/b"].sample_rate == 8000


def test_a_plain_folder_of_split_like_folders_is_one_split_and_said_so(tmp_path: Path, tone, caplog) -> None:
    """mydata/{train,dev,test}/SPK/*.wav is one plain folder, one split: the dev and test audio landed in
    mydata.jsonl beside the training audio without a word. It still does (a plain folder is one split), with a
    warning naming the folders and how to keep them apart; speaker folders draw none."""
    for split in ("train", "dev-clean", "test"):
        tone(tmp_path / "mydata" / split / "spk" / "a.wav", 0.5)
    with caplog.at_level(logging.WARNING):
        splits = discover(tmp_path / "mydata")
    assert list(splits) == ["mydata"] and len(splits["mydata"]) == 3
    assert "its sub-folders dev-clean, test, train included; to keep them apart, prepare each on its own " \
           f"(earful prepare {tmp_path / 'mydata' / 'dev-clean'} OUT" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        discover(tmp_path / "mydata" / "train")  # its sub-folder is a speaker's
    assert "sub-folders" not in caplog.text


def test_plain_folder_reads_mp3_and_opus_and_reports_what_it_cannot_decode(tmp_path: Path):
    import numpy as np
    import soundfile as sf

    x = (0.3 * np.sin(np.arange(16000) / 10)).astype(np.float32)
    sf.write(tmp_path / "a.mp3", x, 16000, format="MP3")
    sf.write(tmp_path / "b.opus", x, 16000, format="OGG", subtype="OPUS")
    (tmp_path / "c.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")  # not decodable by libsndfile
    problems: list[str] = []
    utts = {u.id: u for u in read_folder(tmp_path, problems)}
    assert sorted(utts) == ["a", "b"] and utts["a"].num_samples == 16000
    assert len(problems) == 1 and "c.m4a: .m4a audio cannot be decoded here" in problems[0]


def test_discover_and_prepare_command(tmp_path: Path, librilight, caplog, ls_tree):
    ls = tmp_path / "LibriSpeech"
    ls_tree(ls / "train-clean-100", speakers=(1,))
    ls_tree(ls / "dev-clean", speakers=(2,))
    assert sorted(discover(ls)) == ["dev-clean", "train-clean-100"]
    assert sorted(discover(librilight)) == ["labelled-10h", "labelled-10min", "labelled-1h"]

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", str(ls), str(tmp_path / "out")])
    with caplog.at_level(logging.INFO):
        assert args.func(args) == 0
    utts = read_manifest(tmp_path / "out" / "train-clean-100.jsonl", check_files=True)
    assert len(utts) == 6 and all(u.transcript for u in utts)
    assert "train-clean-100" in caplog.text and "0 problem(s) found" in caplog.text


def test_prepare_holds_out_recordings_and_writes_the_960_h_sets(tmp_path: Path, ls_tree, caplog) -> None:
    """The paper's data: each training split less 5 % of its recordings (chapters), held out as val-X, and the
    union of the three as train-960 / val-960; no recording on both sides, nothing lost, the draw fixed by the
    seed."""
    ls = tmp_path / "LibriSpeech"
    for name, first in (("train-clean-100", 1), ("train-clean-360", 20), ("train-other-500", 40)):
        ls_tree(ls / name, speakers=tuple(range(first, first + 5)), chapters=(1, 2), utts=2)  # 10 recordings each
    ls_tree(ls / "dev-clean", speakers=(90,))
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))

    def prepare(out: str, *extra: str) -> dict[str, list[str]]:
        args = parser.parse_args(["prepare", str(ls), str(tmp_path / out), *extra])
        assert args.func(args) == 0
        return {p.stem: [u.id for u in read_manifest(p)] for p in sorted((tmp_path / out).glob("*.jsonl"))}

    whole = prepare("all")
    assert sorted(whole) == ["dev-clean", "train-960", "train-clean-100", "train-clean-360", "train-other-500"]
    assert sorted(whole["train-960"]) == sorted(whole["train-clean-100"] + whole["train-clean-360"]
                                                + whole["train-other-500"])
    held = prepare("held", "--hold-out", "0.2")
    assert sorted(held) == ["dev-clean", "train-960", "train-clean-100", "train-clean-360", "train-other-500",
                            "val-960", "val-clean-100", "val-clean-360", "val-other-500"]
    for split in ("clean-100", "clean-360", "other-500"):
        kept, out = held[f"train-{split}"], held[f"val-{split}"]
        assert sorted(kept + out) == sorted(whole[f"train-{split}"])  # nothing lost, nothing twice
        chapters = {i.rsplit("-", 1)[0] for i in out}
        assert len(chapters) == 2 and len(out) == 4  # 20 % of 10 recordings, whole
        assert not chapters & {i.rsplit("-", 1)[0] for i in kept}
    assert sorted(held["val-960"]) == sorted(held["val-clean-100"] + held["val-clean-360"] + held["val-other-500"])
    assert sorted(held["train-960"] + held["val-960"]) == sorted(whole["train-960"])
    assert held["dev-clean"] == whole["dev-clean"]
    assert prepare("again", "--hold-out", "0.2") == held
    assert prepare("other", "--hold-out", "0.2", "--seed", "7") != held
    with pytest.raises(ValueError, match="--hold-out 5.0: expected a fraction between 0 and 1"):
        prepare("bad", "--hold-out", "5")
    # the held-out files of an earlier run would be inside the whole splits written without --hold-out
    with pytest.raises(ValueError, match=r"held: val-960.jsonl, val-clean-100.jsonl, .*val-other-500.jsonl written "
                                         "by an earlier prepare"):
        prepare("held")
    one = tmp_path / "one" / "train-clean-100"
    ls_tree(one, speakers=(5,), chapters=(1,), utts=2)  # one recording: nothing to hold out; the error names it
    args = parser.parse_args(["prepare", str(one), str(tmp_path / "one-out"), "--hold-out", "0.5"])
    with pytest.raises(ValueError, match=r"train-clean-100: hold out: 1 recording\(s\)"):
        args.func(args)


def test_a_split_the_source_has_is_never_written_over_by_a_derived_one(tmp_path: Path, ls_tree) -> None:
    """--hold-out wrote the recordings held out of train-mine as val-mine over the source's own val-mine (its
    speaker gone from every manifest, exit 0), and train-960 over a split of that name: refused, naming both."""
    src = tmp_path / "corpus"
    ls_tree(src / "train-mine", speakers=(1, 2, 3, 4), chapters=(10,), utts=2)
    ls_tree(src / "val-mine", speakers=(9,), chapters=(90,), utts=3)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="two splits named val-mine: the source's own val-mine and the recordings "
                                         "--hold-out holds out of train-mine"):
        _prepare(str(src), str(out), "--hold-out", "0.25")
    assert not (out / "val-mine.jsonl").exists()
    assert _prepare(str(src), str(out)) == 0  # without --hold-out: nothing derived, the source's own split written
    assert {u.speaker for u in read_manifest(out / "val-mine.jsonl")} == {"9"}
    ls = tmp_path / "LibriSpeech"
    for spk, name in enumerate(("train-clean-100", "train-clean-360", "train-other-500", "train-960")):
        ls_tree(ls / name, speakers=(spk,), chapters=(1, 2), utts=1)
    with pytest.raises(ValueError, match="two splits named train-960: the source's own train-960 and the union of "
                                         "train-clean-100, train-clean-360, train-other-500"):
        _prepare(str(ls), str(tmp_path / "ls-out"))


def test_a_plain_folder_is_held_out_by_the_folders_holding_its_audio(tmp_path: Path, tone) -> None:
    """A plain folder's ids (relative paths) have no LibriSpeech chapter: each file was its own recording, and
    --hold-out split the files of one book between train-mine and val-mine. A recording is now the folder holding
    the file (a LibriSpeech chapter's id: SPK-CHAP-UTT, as before): held out whole."""
    mine = tmp_path / "train-mine"
    for speaker, books in (("alice", (1, 2)), ("bob", (3, 4))):
        for book in books:
            for k in range(4):
                tone(mine / speaker / f"book{book}" / f"u{k}.wav", 0.5, seed=k)
                (mine / speaker / f"book{book}" / f"u{k}.txt").write_text(f"WORD {k}\n")
    out = tmp_path / "out"
    assert _prepare(str(mine), str(out), "--hold-out", "0.25") == 0
    kept, held = ([u.id for u in read_manifest(out / f"{name}.jsonl")] for name in ("train-mine", "val-mine"))
    folder = {i.rpartition("/")[0] for i in held}
    assert len(folder) == 1 and len(held) == 4  # a quarter of the 4 books, whole
    assert not folder & {i.rpartition("/")[0] for i in kept} and len(kept) == 12
    flat = tmp_path / "flat" / "train-flat"  # one folder: one recording, nothing to hold out; the error says why
    for k in range(3):
        tone(flat / f"u{k}.wav", 0.5)
    with pytest.raises(ValueError, match=r"train-flat: hold out: 1 recording\(s\) \(a LibriSpeech chapter, else "
                                         r"the folder holding the audio\)"):
        _prepare(str(flat), str(tmp_path / "flat-out"), "--hold-out", "0.5")


@pytest.mark.parametrize("sidecar", ["missing", "broken"])
def test_unlabelled_librilight_is_recognised_whatever_file_a_folder_lists_first(tmp_path: Path, unlabelled_tree,
                                                                                sidecar: str) -> None:
    """The layout was decided by the first file a glob listed: without a usable json beside it, the whole tree was
    read as a plain folder (whole 70-minute files, the BOOK folder as speaker, no problem). Any Libri-light json
    decides; the file without one is a problem, cut by the energy VAD."""
    root = tmp_path / "small"
    unlabelled_tree(root, files=3)
    first = next(root.glob("*/*/*.flac"))  # what the glob lists first, whatever the file system
    if sidecar == "missing":
        first.with_suffix(".json").unlink()
    else:
        first.with_suffix(".json").write_text('{"voice_activity": [[0.5, ')
    problems: list[str] = []
    splits = discover(root, problems)
    assert list(splits) == ["unlabelled-small"]
    utts = splits["unlabelled-small"]
    assert {Path(u.path).name for u in utts} == {p.name for p in root.glob("*/*/*.flac")}  # every file, as segments
    assert {u.speaker for u in utts} == {"100", "101"} and all(u.offset is not None for u in utts)
    assert len(problems) == 1 and str(first.with_suffix("")) in problems[0]
    assert "the energy VAD is used instead" in problems[0]


def test_unlabelled_librilight_is_recognised_whatever_the_case_of_its_flac(tmp_path: Path, unlabelled_tree) -> None:
    """The layout was found by ``FILE.flac`` beside ``FILE.json`` alone, though the reader takes ``FILE.FLAC``: such
    a tree was read as a plain folder (whole files, the BOOK folder as speaker, no problem)."""
    root = tmp_path / "small"
    for flac in unlabelled_tree(root, files=2):
        flac.rename(flac.with_suffix(".FLAC"))
    problems: list[str] = []
    splits = discover(root, problems)
    assert list(splits) == ["unlabelled-small"] and not problems
    utts = splits["unlabelled-small"]
    assert {u.speaker for u in utts} == {"100", "101"} and all(u.offset is not None for u in utts)
    assert {Path(u.path).suffix for u in utts} == {".FLAC"}


def test_two_files_of_one_id_in_a_plain_folder_are_a_problem_naming_both(tmp_path: Path, tone) -> None:
    """x.flac and x.wav gave two rows of id "x", refused only later by shard and the loader."""
    tone(tmp_path / "spk" / "x.flac", 0.5)
    tone(tmp_path / "spk" / "x.wav", 0.5)
    tone(tmp_path / "spk" / "y.wav", 0.5)
    problems: list[str] = []
    utts = read_folder(tmp_path, problems)
    assert [u.id for u in utts] == ["spk/x", "spk/y"] and utts[0].path.endswith("x.flac")
    assert len(problems) == 1
    assert f"{tmp_path / 'spk' / 'x.wav'}: the same id 'spk/x' as {tmp_path / 'spk' / 'x.flac'}" in problems[0]


def test_audio_beside_the_splits_is_reported_and_linked_folders_are_followed(tmp_path: Path, ls_tree,
                                                                              caplog) -> None:
    """Where some splits were found, audio in other folders and at the top was left out without a word, and a
    speaker folder linked from elsewhere was not read (rglob follows no link)."""
    ls = tmp_path / "LibriSpeech"
    ls_tree(ls / "dev-clean", speakers=(1, 2))
    ls_tree(ls / "test-clean", speakers=(3,))
    (ls / "dev-clean" / "2").rename(tmp_path / "speaker-2")  # a speaker folder kept elsewhere ...
    (ls / "dev-clean" / "2").symlink_to(tmp_path / "speaker-2", target_is_directory=True)  # ... linked in
    (ls / "dev-clean" / "1" / "loop").symlink_to(ls, target_is_directory=True)  # a link back up: not followed
    (ls / "extras" / "more").mkdir(parents=True)  # not a split
    flac = (ls / "test-clean" / "3" / "198" / "3-198-0000.flac").read_bytes()
    for stray in (ls / "stray.flac", ls / "extras" / "a.flac", ls / "extras" / "more" / "b.flac"):
        stray.write_bytes(flac)
    (ls / "notes.m4a").write_bytes(b"\x00")
    problems: list[str] = []
    with caplog.at_level(logging.WARNING):
        splits = discover(ls, problems)
    assert sorted(splits) == ["dev-clean", "test-clean"]
    assert {u.speaker for u in splits["dev-clean"]} == {"1", "2"} and len(splits["dev-clean"]) == 12
    left = sorted(problems)
    assert len(left) == 4 and all("audio outside the splits found" in p for p in left)
    assert [p.split(":")[0] for p in left] == [str(ls / "extras" / "a.flac"), str(ls / "extras" / "more" / "b.flac"),
                                                str(ls / "notes.m4a"), str(ls / "stray.flac")]
    assert "4 audio file(s) outside the splits found are not read" in caplog.text
    again: list[str] = []
    assert discover(ls, again) == splits and again == problems  # the same, in the same order
    # notes, not problems: a folder holding LibriSpeech and other corpora prepares LibriSpeech
    assert _prepare(str(ls), str(tmp_path / "out")) == 0
    assert len((tmp_path / "out" / "problems-LibriSpeech.txt").read_text().splitlines()) == 4


def test_prepare_names_the_split_of_dot_after_the_folder(tmp_path: Path, tone, monkeypatch) -> None:
    """`earful prepare . OUT` named the split Path('.').name, "": OUT/.jsonl."""
    tone(tmp_path / "myset" / "a.wav", 0.5)
    monkeypatch.chdir(tmp_path / "myset")
    assert list(discover(".")) == ["myset"]
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", ".", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jsonl")) == ["myset.jsonl"]


def test_transcripts_holding_control_characters_are_problems_kept_unlabelled(tmp_path: Path, ls_tree,
                                                                             tone) -> None:
    """A NUL in a transcript would end the text espeak-ng reads, and the manifest reader refuses it; a form feed
    is no line break in a .trans.txt."""
    root = tmp_path / "dev-clean"
    ls_tree(root, speakers=(1,), chapters=(2,), utts=3)
    (root / "1" / "2" / "1-2.trans.txt").write_text("1-2-0000 HELLO\x00WORLD\n1-2-0001 GOOD\x0cDAY\n1-2-0002 OK\n")
    problems: list[str] = []
    utts = {u.id: u.transcript for u in read_librispeech(root, problems)}
    assert utts == {"1-2-0000": None, "1-2-0001": None, "1-2-0002": "OK"}
    assert len(problems) == 2
    assert "1-2.trans.txt:1: the transcript for 1-2-0000 holds a control character U+0000 at character 5" in problems[0]
    assert "1-2.trans.txt:2: the transcript for 1-2-0001 holds a control character U+000C" in problems[1]
    plain = tmp_path / "plain"
    tone(plain / "a.wav", 0.5)
    (plain / "a.txt").write_text("HELLO\x1b[0m\n")
    problems = []
    assert [u.transcript for u in read_folder(plain, problems)] == [None]
    assert len(problems) == 1 and "a.txt: the transcript holds a control character U+001B" in problems[0]


def test_a_transcript_line_given_twice_is_that_problem_and_says_what_is_read(tmp_path: Path, ls_tree) -> None:
    """An id on an empty line and on a good one was "empty transcript … (kept unlabelled)" while the manifest held
    the good line. Now it is the problem of a line given twice, naming both lines and what is read: the lines that
    are usable, where they agree; else none (unlabelled)."""
    root = tmp_path / "dev-x"
    ls_tree(root, speakers=(1,), chapters=(10,), utts=5)
    tf = root / "1" / "10" / "1-10.trans.txt"
    tf.write_text("1-10-0000\n1-10-0000 GOOD TEXT\n1-10-0001 OTHER TEXT\n1-10-0001\n1-10-0002 ONE\n1-10-0002 TWO\n"
                  "1-10-0003 SAME\n1-10-0003 SAME\n1-10-0004\n")
    problems: list[str] = []
    utts = {u.id: u.transcript for u in read_librispeech(root, problems)}
    assert utts == {"1-10-0000": "GOOD TEXT", "1-10-0001": "OTHER TEXT", "1-10-0002": None, "1-10-0003": "SAME",
                    "1-10-0004": None}
    assert problems == [
        f"{tf}:2: a transcript line given twice, for 1-10-0000 (line 1: ''; line 2: 'GOOD TEXT'); 'GOOD TEXT' is read",
        f"{tf}:4: a transcript line given twice, for 1-10-0001 (line 3: 'OTHER TEXT'; line 4: ''); 'OTHER TEXT' is "
        "read",
        f"{tf}:6: a transcript line given twice, for 1-10-0002 (line 5: 'ONE'; line 6: 'TWO'); none is read (kept "
        "unlabelled)",
        f"{tf}:8: a transcript line given twice, for 1-10-0003 (line 7: 'SAME'; line 8: 'SAME'); 'SAME' is read",
        f"{tf}:9: empty transcript for 1-10-0004 (kept unlabelled)"]


def test_a_transcript_file_that_cannot_be_read_is_a_problem_naming_it(tmp_path: Path, ls_tree, caplog) -> None:
    """A .trans.txt linking to a file that is not there stopped prepare, --skip-bad or not, with a bare "[Errno 2]
    No such file or directory": now a problem naming it, its chapter's audio kept unlabelled (with --skip-bad), as
    a transcript file that is not UTF-8."""
    root = tmp_path / "dev-x"
    ls_tree(root, speakers=(1, 2), chapters=(10,), utts=1)
    tf = root / "2" / "10" / "2-10.trans.txt"
    tf.unlink()
    tf.symlink_to(tmp_path / "gone.trans.txt")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"dev-x: 2 problem\(s\), listed in .*: .*2-10.trans.txt: cannot be read \(a "
                                         r"link to .*gone.trans.txt, which is not there\); its transcripts are left "
                                         r"out; .*2-10-0000.flac: no transcript line for 2-10-0000"):
        _prepare(str(root), str(out))
    with caplog.at_level(logging.INFO):
        assert _prepare(str(root), str(out), "--skip-bad") == 0
    assert {u.id: u.transcript for u in read_manifest(out / "dev-x.jsonl")} == {
        "1-10-0000": "HELLO WORLD NUMBER 0", "2-10-0000": None}
    assert "2 problem(s) found, skipped (--skip-bad)" in caplog.text


def test_a_sidecar_linking_to_a_file_not_there_is_a_problem_naming_it(tmp_path: Path, tone, caplog) -> None:
    """A plain folder's x.txt beside x.wav that is a link to a file not there was passed over: x was read
    unlabelled, with a note at most ("0 problem(s)"). Now a problem naming the link, as a .trans.txt's: x is kept
    unlabelled with --skip-bad, and counted."""
    plain = tmp_path / "corpus"
    tone(plain / "good.wav", 0.5)
    (plain / "good.txt").write_text("hello\n")
    tone(plain / "x.wav", 0.5)
    (plain / "x.txt").symlink_to(tmp_path / "gone.txt")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"corpus: 1 problem\(s\), listed in .*: .*x.txt: cannot be read \(a link to "
                                         r".*gone.txt, which is not there\); its transcripts are left out"):
        _prepare(str(plain), str(out))
    with caplog.at_level(logging.INFO):
        assert _prepare(str(plain), str(out), "--skip-bad") == 0
    assert {u.id: u.transcript for u in read_manifest(out / "corpus.jsonl")} == {"good": "hello", "x": None}
    assert "1 problem(s) found, skipped (--skip-bad)" in caplog.text


def _prepare(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)


def test_prepare_stops_on_problems_unless_skip_bad(tmp_path: Path, tone, caplog) -> None:
    """Unreadable and too-short files were skipped with a warning and exit 0. Now they stop prepare (no manifest;
    the first problems and their count in the error), or with --skip-bad are left out and counted; either way the
    list is written beside the manifests."""
    plain = tmp_path / "corpus"
    tone(plain / "good.wav", 0.5)
    tone(plain / "blip.wav", 0.01)
    (plain / "junk.flac").write_bytes(b"not audio")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"corpus: 2 problem\(s\), listed in .*problems-corpus.txt: .*blip.wav: too "
                                         r"short.*; .*junk.flac: unreadable audio.*--skip-bad"):
        _prepare(str(plain), str(out))
    assert not (out / "corpus.jsonl").exists()
    listed = (out / "problems-corpus.txt").read_text().splitlines()
    assert len(listed) == 2 and "blip.wav: too short" in listed[0] and "junk.flac: unreadable audio" in listed[1]
    from earful.cli import main

    assert main(["prepare", str(plain), str(out)]) == 2  # the command's exit status
    with caplog.at_level(logging.INFO):
        assert _prepare(str(plain), str(out), "--skip-bad") == 0
    assert [u.id for u in read_manifest(out / "corpus.jsonl")] == ["good"]
    assert "2 problem(s) found, skipped (--skip-bad)" in caplog.text
    assert (out / "problems-corpus.txt").read_text().splitlines() == listed
    (plain / "blip.wav").unlink()
    (plain / "junk.flac").unlink()
    assert _prepare(str(plain), str(out)) == 0
    assert (out / "problems-corpus.txt").read_text() == ""  # no earlier list stays


def test_a_truncated_flac_is_a_problem_of_prepare_not_of_some_epochs_of_training(tmp_path: Path, tone,
                                                                                caplog) -> None:
    """A FLAC cut short (an interrupted copy) keeps its header, which promises every sample: prepare listed it
    ("0 problem(s) found"), then training failed on the epochs whose random crop reached past its end, with
    "unreadable audio (Internal psf_fseek() failed.)". Prepare reads each file's last sample (the file opened once):
    a problem naming it and truncation, left out with --skip-bad and counted."""
    plain = tmp_path / "corpus"
    tone(plain / "good.wav", 0.5)
    frames = tone(plain / "cut.flac", 3.0)
    os.truncate(plain / "cut.flac", os.path.getsize(plain / "cut.flac") // 3)
    _one_problem_then_skipped(plain, tmp_path / "out", rf"cut.flac: cannot read up to sample {frames} of the {frames} "
                              r"its header promises \(truncated\?\)", caplog)


def _one_problem_then_skipped(plain: Path, out: Path, problem: str, caplog) -> None:
    """``prepare`` of the plain folder ``plain`` (``good.wav`` and one bad file) stops on the one ``problem`` (a
    regex); with --skip-bad, it writes ``good`` alone and counts the problem."""
    with pytest.raises(ValueError, match=rf"{plain.name}: 1 problem\(s\), listed in .*: .*{problem}"):
        _prepare(str(plain), str(out))
    with caplog.at_level(logging.INFO):
        assert _prepare(str(plain), str(out), "--skip-bad") == 0
    assert [u.id for u in read_manifest(out / f"{plain.name}.jsonl")] == ["good"]
    assert "1 problem(s) found, skipped (--skip-bad)" in caplog.text


def test_a_truncated_wav_is_a_problem_not_a_shorter_file_with_the_whole_transcript(tmp_path: Path, tone,
                                                                                    caplog) -> None:
    """libsndfile gives a WAV cut short the length it holds (its header's data chunk says more; only its log tells):
    prepare listed the 1 s left of a 4 s file with the transcript of all 4, "0 problem(s)". Now a problem naming
    it, left out with --skip-bad and counted; a whole WAV (and one written to a stream, size unknown) is read."""
    plain = tmp_path / "corpus"
    tone(plain / "good.wav", 0.5)
    frames = tone(plain / "cut.wav", 4.0)
    (plain / "cut.txt").write_text("a sentence four seconds long\n")
    os.truncate(plain / "cut.wav", os.path.getsize(plain / "cut.wav") // 4)
    out = tmp_path / "out"
    _one_problem_then_skipped(plain, out, r"cut.wav: audio that ends before its header says \(truncated\?\): its data "
                              rf"chunk holds \d+ of the {2 * frames} bytes \({frames} samples\) its header promises",
                              caplog)
    stream = plain / "stream.wav"  # a WAV written to a pipe: data size 0xFFFFFFFF, no promise
    raw = bytearray((plain / "good.wav").read_bytes())
    at = raw.index(b"data") + 4
    raw[at:at + 4] = b"\xff\xff\xff\xff"
    stream.write_bytes(bytes(raw))
    os.remove(plain / "cut.wav")
    assert _prepare(str(plain), str(out)) == 0
    assert [u.id for u in read_manifest(out / "corpus.jsonl")] == ["good", "stream"]


@pytest.mark.parametrize(("name", "kind", "subtype", "width"), [
    ("cut.rf64", "RF64", "PCM_16", 2), ("cut.w64", "W64", "PCM_16", 2), ("cut.aiff", "AIFF", "PCM_16", 2),
    ("cut.aif", "AIFF", "FLOAT", 4), ("cut.caf", "CAF", "PCM_16", 2), ("cut.au", "AU", "PCM_16", 2),
    ("cut.sph", "NIST", "PCM_16", 2)])  # AIFF's FLOAT: an AIFC
def test_a_truncated_rf64_w64_aiff_or_caf_is_a_problem_as_a_wav_is(tmp_path: Path, tone, caplog, name: str,
                                                                  kind: str, subtype: str, width: int) -> None:
    """An RF64 (its sizes in the ds64 chunk), W64, AIFF, AIFC, CAF, AU or NIST SPHERE file cut short was read by
    libsndfile to where it ends, "0 problem(s)", as a WAV's was: its audio's size is now checked against the file's
    too. A CAF whose data chunk's size is -1 ("to the end of the file") promises nothing, nor an AU's 0xFFFFFFFF."""
    import numpy as np
    import soundfile as sf

    from earful.data.audio import data_shortfall

    plain = tmp_path / "corpus"
    tone(plain / "good.wav", 0.5)
    frames = 16000
    sf.write(plain / name, np.full(frames, 0.1, dtype=np.float32), 16000, format=kind, subtype=subtype)
    raw = bytearray((plain / name).read_bytes())
    os.truncate(plain / name, len(raw) - 1001)
    bytes_ = width * frames
    _one_problem_then_skipped(plain, tmp_path / "out", rf"{name}: audio that ends before its header says "
                              rf"\(truncated\?\): its data chunk holds {bytes_ - 1001} of the {bytes_} bytes "
                              rf"\({frames} samples\) its header promises", caplog)
    if name.endswith(".caf"):
        at = raw.index(b"data") + 4
        raw[at:at + 8] = b"\xff" * 8
        (plain / name).write_bytes(bytes(raw[:-1001]))
        assert data_shortfall(plain / name) is None
    if name.endswith(".au"):
        raw[8:12] = b"\xff" * 4
        (plain / name).write_bytes(bytes(raw[:-1001]))
        assert data_shortfall(plain / name) is None


def test_a_flac_of_unknown_length_is_a_problem_saying_so(tmp_path: Path, tone, caplog) -> None:
    """A FLAC written to a stream has 0 total samples in its STREAMINFO (unknown, as the format allows): it was
    refused as "cannot read up to sample 9223372036854775807 …". Now the problem says the length is unknown and
    how to re-encode it."""
    plain = tmp_path / "corpus"
    tone(plain / "good.wav", 0.5)
    stream = plain / "stream.flac"
    tone(stream, 1.0)
    raw = bytearray(stream.read_bytes())
    total = int.from_bytes(raw[18:26], "big")  # STREAMINFO: ... channels, bits, then 36 bits of total samples
    raw[18:26] = (total & ~((1 << 36) - 1)).to_bytes(8, "big")
    stream.write_bytes(bytes(raw))
    _one_problem_then_skipped(plain, tmp_path / "out", r"stream.flac: its length is unknown \(its header gives none: "
                              r"a FLAC written to a stream has 0 total samples\); re-encode it, e.g. ffmpeg -i "
                              r".*stream.flac -c:a flac OUT.flac", caplog)


def test_prepare_leaves_no_manifest_that_disagrees_with_what_it_found(tmp_path: Path, ls_tree, caplog) -> None:
    """A split with no usable audio now kept an earlier run's manifest (listing files now corrupt), exit 0; an
    earlier train-960 stayed beside training splits written again without it."""
    ls = tmp_path / "LibriSpeech"
    for name, first in (("train-clean-100", 1), ("train-clean-360", 3), ("train-other-500", 5)):
        ls_tree(ls / name, speakers=(first, first + 1), chapters=(1,), utts=2)
    ls_tree(ls / "dev-clean", speakers=(9,), chapters=(1,), utts=2)
    out = tmp_path / "out"
    assert _prepare(str(ls), str(out)) == 0
    assert (out / "dev-clean.jsonl").exists() and (out / "train-960.jsonl").exists()
    for flac in (ls / "dev-clean").rglob("*.flac"):
        flac.write_bytes(b"corrupt")
    with pytest.raises(ValueError, match=r"3 problem\(s\).*9-1-0000.flac: unreadable audio"):
        _prepare(str(ls), str(out))
    assert "split dev-clean: no usable audio" in (out / "problems-LibriSpeech.txt").read_text()
    with caplog.at_level(logging.WARNING):
        assert _prepare(str(ls), str(out), "--skip-bad") == 0
    assert not (out / "dev-clean.jsonl").exists() and f"removed {out / 'dev-clean.jsonl'}" in caplog.text
    # train-clean-100 written again alone, beside the train-960 of the three
    with pytest.raises(ValueError, match=r"out: train-960.jsonl written by an earlier prepare"):
        _prepare(str(ls / "train-clean-100"), str(out))


def test_librispeech_audio_libsndfile_cannot_decode_is_a_problem(tmp_path: Path, ls_tree) -> None:
    """An .m4a or .mp4 beside its transcript line was dropped without a problem, and the only record was a false
    note, "transcript for … has no audio file" (a plain folder reported it)."""
    split = tmp_path / "train-clean-100"
    ls_tree(split, speakers=(1,), chapters=(10,), utts=4)
    chapter = split / "1" / "10"
    (chapter / "1-10-0001.flac").rename(chapter / "1-10-0001.m4a")
    (chapter / "1-10-0003.flac").rename(chapter / "1-10-0003.mp4")
    problems: list[str] = []
    assert [u.id for u in read_librispeech(split, problems)] == ["1-10-0000", "1-10-0002"]
    assert problems == [f"{chapter / name}: {name[-4:]} audio cannot be decoded here (libsndfile); convert it to "
                        "FLAC, e.g. ffmpeg -i IN -ar 16000 -ac 1 OUT.flac"
                        for name in ("1-10-0001.m4a", "1-10-0003.mp4")]
    with pytest.raises(ValueError, match=r"train-clean-100: 2 problem\(s\).*1-10-0001.m4a: .m4a audio cannot be"):
        _prepare(str(split), str(tmp_path / "out"))


def test_undecodable_audio_beside_its_decodable_conversion_is_a_note(tmp_path: Path, ls_tree) -> None:
    """A split keeping each .m4a beside the FLAC converted from it reads the FLACs: the .m4a files are notes, not
    problems that stop prepare (the reader that first reported undecodable audio in splits stopped it)."""
    split = tmp_path / "dev-clean"
    ls_tree(split, speakers=(1,), chapters=(10,), utts=2)
    chapter = split / "1" / "10"
    for flac in sorted(chapter.glob("*.flac")):
        flac.with_suffix(".m4a").write_bytes(flac.read_bytes())
    problems: list[str] = []
    assert [u.id for u in read_librispeech(split, problems)] == ["1-10-0000", "1-10-0001"]
    assert len(problems) == 2 and all(isinstance(p, Note) and "the file of the same name beside it is read" in p
                                      for p in problems)
    _prepare(str(split), str(tmp_path / "out"))


def test_a_byte_order_mark_is_no_part_of_a_transcript_or_a_manifest(tmp_path: Path, ls_tree, tone) -> None:
    """A trans.txt written with a BOM lost its first line ("no transcript line for 3-30-0000": the id read was
    "\\ufeff3-30-0000"), a sidecar's transcript began with it, and a manifest's first row was not JSON."""
    split = tmp_path / "dev-clean"
    ls_tree(split, speakers=(3,), chapters=(30,), utts=2)
    trans = split / "3" / "30" / "3-30.trans.txt"
    trans.write_text("3-30-0000 BOM FIRST LINE\r\n3-30-0001 SECOND LINE\r\n", encoding="utf-8-sig")
    problems: list[str] = []
    got = {u.id: u.transcript for u in read_librispeech(split, problems)}
    assert problems == [] and got == {"3-30-0000": "BOM FIRST LINE", "3-30-0001": "SECOND LINE"}
    plain = tmp_path / "plain"
    tone(plain / "a.wav", 0.5)
    (plain / "a.txt").write_text("hello there\n", encoding="utf-8-sig")
    assert [u.transcript for u in read_folder(plain, problems)] == ["hello there"] and problems == []
    from earful.data.manifest import write_manifest

    manifest = tmp_path / "m.jsonl"
    write_manifest(read_folder(plain) + read_librispeech(split), manifest)
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())  # as Notepad saves it
    rows = read_manifest(manifest)
    assert [u.id for u in rows] == ["a", "3-30-0000", "3-30-0001"] and rows[0].transcript == "hello there"
    assert rows[0].id == "a" and len(rows.lengths()) == 3  # a row parsed again, from its bytes


def test_a_second_path_to_one_file_is_read_once(tmp_path: Path, ls_tree, tone) -> None:
    """Links to folders were followed once, links to files not: a plain folder's file and a link to it under
    another speaker gave two rows (the link's without the transcript), and a dev-clean file linked into
    test-clean was in both splits without a word."""
    plain = tmp_path / "plain"
    tone(plain / "spkA" / "a1.flac", 0.5)
    (plain / "spkA" / "a1.txt").write_text("hello\n")
    (plain / "spkB").mkdir()
    (plain / "spkB" / "link.flac").symlink_to(plain / "spkA" / "a1.flac")
    problems: list[str] = []
    utts = read_folder(plain, problems)
    assert [(u.id, u.transcript) for u in utts] == [("spkA/a1", "hello")]
    real = plain / "spkA" / "a1.flac"
    assert problems == [f"{plain / 'spkB' / 'link.flac'}: the same file as {real}; read once, as spkA/a1"]
    assert type(problems[0]).__name__ == "Note"  # nothing is lost: it stops nothing
    (plain / "spkB" / "link.txt").write_text("goodbye\n")  # the second path would label it otherwise: a problem
    problems = []
    assert [u.id for u in read_folder(plain, problems)] == ["spkA/a1"]
    assert len(problems) == 1 and "with another transcript (spkB/link: 'goodbye'; spkA/a1: 'hello')" in problems[0]
    assert type(problems[0]) is str

    ls = tmp_path / "LibriSpeech"
    ls_tree(ls / "dev-clean", speakers=(1,), chapters=(10,), utts=2)
    ls_tree(ls / "test-clean", speakers=(2,), chapters=(20,), utts=1)
    linked = ls / "test-clean" / "2" / "20" / "1-10-0001.flac"
    linked.symlink_to(ls / "dev-clean" / "1" / "10" / "1-10-0001.flac")
    with (ls / "test-clean" / "2" / "20" / "2-20.trans.txt").open("a") as f:
        f.write("1-10-0001 HELLO WORLD NUMBER 1\n")
    problems = []
    splits = discover(ls, problems)
    assert [u.id for u in splits["dev-clean"]] == ["1-10-0000", "1-10-0001"]
    assert [u.id for u in splits["test-clean"]] == ["2-20-0000"]
    assert len(problems) == 1 and problems[0].startswith(f"{linked}: the same file as ")
    assert f"read for {ls / 'dev-clean'} already; left out of {ls / 'test-clean'} (one recording in two" in problems[0]
    with pytest.raises(ValueError, match=r"1 problem\(s\).*1-10-0001.flac: the same file as"):
        _prepare(str(ls), str(tmp_path / "out"))


def test_a_hard_link_to_a_file_read_already_is_that_file(tmp_path: Path, ls_tree) -> None:
    """A file was one by its real path: a dev-clean chapter hard-linked into train-clean-100 (``cp -al``: one inode,
    two paths) was in both splits, "0 problem(s)", where a symbolic link was the problem of one recording in two
    splits. Now a file is one by its device and inode."""
    ls = tmp_path / "LibriSpeech"
    ls_tree(ls / "dev-clean", speakers=(900,), chapters=(9000,), utts=2)
    ls_tree(ls / "train-clean-100", speakers=(1,), chapters=(10,), utts=2)
    copy = ls / "train-clean-100" / "900" / "9000"
    copy.mkdir(parents=True)
    for f in (ls / "dev-clean" / "900" / "9000").iterdir():
        os.link(f, copy / f.name)
    problems: list[str] = []
    splits = discover(ls, problems)
    assert [u.id for u in splits["dev-clean"]] == ["900-9000-0000", "900-9000-0001"]
    assert [u.id for u in splits["train-clean-100"]] == ["1-10-0000", "1-10-0001"]
    assert problems == [f"{copy / f'900-9000-000{k}.flac'}: the same file as "
                        f"{ls / 'dev-clean' / '900' / '9000' / f'900-9000-000{k}.flac'} (hard links: one file), read "
                        f"for {ls / 'dev-clean'} already; left out of {ls / 'train-clean-100'} (one recording in two "
                        "splits)" for k in range(2)]
    with pytest.raises(ValueError, match=r"2 problem\(s\).*900-9000-0000.flac: the same file as"):
        _prepare(str(ls), str(tmp_path / "out"))


def test_prepare_pointed_at_a_file_says_it_wants_a_folder(tmp_path: Path, tone, caplog) -> None:
    """`prepare FILE.wav OUT` said "no such folder"."""
    from earful.cli import main

    tone(tmp_path / "a.wav", 0.5)
    with pytest.raises(NotADirectoryError, match=r"a.wav: a file, not a folder: prepare reads a folder"):
        discover(tmp_path / "a.wav")
    with caplog.at_level(logging.ERROR):
        assert main(["prepare", str(tmp_path / "a.wav"), str(tmp_path / "out")]) == 2
    assert "a.wav: a file, not a folder" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"b.wav: no such folder"):
        discover(tmp_path / "b.wav")


@pytest.mark.parametrize("point_at", ["speaker", "chapter", "flat"])
def test_a_speaker_or_chapter_folder_of_librispeech_is_read_by_its_file_names(tmp_path: Path, ls_tree,
                                                                            point_at: str) -> None:
    """`prepare SPLIT/SPEAKER` read a plain folder: ids "CHAPTER/SPEAKER-CHAPTER-UTT", the chapter as speaker, no
    transcript and 0 problems; a chapter folder (or a split's files in one folder) gave speaker "unknown": the
    .trans.txt files were neither read nor named. Ids and speakers come from the file names, as in a split."""
    split = tmp_path / "train-clean-100"
    ls_tree(split, speakers=(11,), chapters=(100, 200), utts=2)
    folder = {"speaker": split / "11", "chapter": split / "11" / "100", "flat": tmp_path / "flat"}[point_at]
    if point_at == "flat":
        folder.mkdir()
        for path in sorted(split.rglob("*.*")):
            path.rename(folder / path.name)
    chapters = (100,) if point_at == "chapter" else (100, 200)
    problems: list[str] = []
    splits = discover(folder, problems)
    assert list(splits) == [folder.name] and problems == []
    got = {u.id: (u.speaker, u.transcript) for u in splits[folder.name]}
    assert got == {f"11-{c}-{k:04d}": ("11", f"HELLO WORLD NUMBER {k}") for c in chapters for k in range(2)}
    out = tmp_path / "out"
    assert _prepare(str(folder), str(out)) == 0
    assert all(u.transcript and u.speaker == "11" for u in read_manifest(out / f"{folder.name}.jsonl"))


def test_librispeech_transcripts_no_split_reads_are_reported(tmp_path: Path, ls_tree) -> None:
    """A .trans.txt that no split reads went unnamed: its audio was read unlabelled (a plain folder) or noted as
    outside the splits, the transcripts dropped without a word."""
    deep = tmp_path / "corpus"
    ls_tree(deep / "a" / "b" / "c" / "d", speakers=(1,), chapters=(2,), utts=1)  # below any depth a split is sought
    problems: list[str] = []
    assert [u.transcript for u in discover(deep, problems)["corpus"]] == [None]
    trans = deep / "a" / "b" / "c" / "d" / "1" / "2" / "1-2.trans.txt"
    assert problems == [f"{trans}: LibriSpeech transcripts in a plain folder of audio, not read (its audio is read "
                        "unlabelled); point prepare at the split, speaker or chapter folder holding it"]
    ls = tmp_path / "LibriSpeech"
    ls_tree(ls / "dev-clean", speakers=(3,), chapters=(4,), utts=1)
    ls_tree(ls / "test-clean", speakers=(5,), chapters=(6,), utts=1)
    for path in sorted((ls / "test-clean").rglob("*.*")):  # a split's files in one folder, beside a split
        path.rename(ls / "test-clean" / path.name)
    problems = []
    assert list(discover(ls, problems)) == ["dev-clean"]
    assert sorted(problems) == [f"{ls / 'test-clean' / '5-6-0000.flac'}: audio outside the splits found below {ls}; "
                                "not read",
                                f"{ls / 'test-clean' / '5-6.trans.txt'}: LibriSpeech transcripts outside the splits "
                                f"found below {ls}; not read"]
    assert all(isinstance(p, Note) for p in problems)


def test_plain_folder_sidecars_are_found_whatever_the_case_of_their_extension(tmp_path: Path, tone) -> None:
    """y.mp3 beside y.TXT got no transcript, silently: audio extensions matched in any case, sidecars in lower
    case only. Two sidecars that differ only in case (c.txt and c.TXT) are a problem naming both, neither read."""
    spk = tmp_path / "spk"
    spk.mkdir()
    (spk / "probe.txt").write_text("")
    if (spk / "PROBE.TXT").exists():
        pytest.skip("a file system that ignores case holds no c.txt beside c.TXT")
    (spk / "probe.txt").unlink()
    for name, sidecars in (("a.wav", {"a.TXT": "upper ext"}), ("b.WAV", {"b.Lab": "a label"}),
                           ("c.wav", {"c.txt": "one", "c.TXT": "two"}), ("d.wav", {"d.Txt": "text", "d.lab": "lab"})):
        tone(spk / name, 0.5)
        for side, text in sidecars.items():
            (spk / side).write_text(text + "\n")
    problems: list[str] = []
    got = {u.id: u.transcript for u in read_folder(tmp_path, problems)}
    assert got == {"spk/a": "upper ext", "spk/b": "a label", "spk/c": None, "spk/d": "text"}
    assert problems[0] == (f"{spk / 'c.wav'}: 2 transcript files whose names differ only in case ({spk / 'c.TXT'}, "
                           f"{spk / 'c.txt'}); none is read (kept unlabelled): keep one")
    assert problems[1:] == [Note(f"{spk / 'd.Txt'} and {spk / 'd.lab'}: different transcripts; the .txt one is read")]
    assert isinstance(problems[1], Note) and not isinstance(problems[0], Note)


def test_one_id_in_two_folds_of_a_librilight_tree_is_a_problem(tmp_path: Path, librilight) -> None:
    """A copy of a 1h/0 utterance in 1h/3 (another file, so not a second path to one file) gave 0 problems and a
    labelled-1h.jsonl holding the id twice, which every later command refused ("duplicate id")."""
    first = librilight / "1h" / "0" / "clean" / "100" / "1" / "100-1-0000.flac"
    copy = librilight / "1h" / "3" / "clean" / "100" / "1" / first.name
    copy.parent.mkdir(parents=True)
    copy.write_bytes(first.read_bytes())
    (copy.parent / "100-1.trans.txt").write_text("100-1-0000 HELLO WORLD NUMBER 0\n")
    problems: list[str] = []
    sets = read_librilight(librilight, problems)
    assert problems == [f"{copy}: duplicate utterance id 100-1-0000 (also {first}, in fold 1h/0); left out of 1h/3"]
    for name, utts in sets.items():
        assert len({u.id for u in utts}) == len(utts), name
    assert len(sets["1h"]) == 24 and [u.path for u in sets["1h"] if u.id == "100-1-0000"] == [str(first)]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"1 problem\(s\).*100-1-0000.flac: duplicate utterance id 100-1-0000"):
        _prepare(str(librilight), str(out))
    assert _prepare(str(librilight), str(out), "--skip-bad") == 0
    for name in ("10min", "1h", "10h"):
        read_manifest(out / f"labelled-{name}.jsonl")  # no duplicate id


def test_one_id_in_two_training_splits_is_a_problem_not_a_train_960_refused_later(tmp_path: Path, ls_tree) -> None:
    """train-960, the union of the three training splits, held an id copied into two of them twice: a manifest
    that read_manifest refuses."""
    ls = tmp_path / "LibriSpeech"
    for name, spk in (("train-clean-100", 1), ("train-clean-360", 2), ("train-other-500", 3)):
        ls_tree(ls / name, speakers=(spk,), chapters=(1,), utts=2)
    first = ls / "train-clean-100" / "1" / "1" / "1-1-0000.flac"
    copy = ls / "train-other-500" / "1" / "1" / first.name
    copy.parent.mkdir(parents=True)
    copy.write_bytes(first.read_bytes())
    (copy.parent / "1-1.trans.txt").write_text("1-1-0000 HELLO WORLD NUMBER 0\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"1 problem\(s\).*split train-960: duplicate utterance id 1-1-0000"):
        _prepare(str(ls), str(out))
    assert _prepare(str(ls), str(out), "--skip-bad") == 0
    assert len(read_manifest(out / "train-960.jsonl")) == 6


def test_a_chapter_copied_into_two_training_splits_is_a_problem_whatever_the_hold_out_draws(tmp_path: Path,
                                                                                          ls_tree) -> None:
    """With --hold-out each training split drew its recordings on its own: a chapter copied into train-clean-100
    and train-clean-360, held out of one and not the other, was in train-960 and val-960 (train-clean-100 and
    val-clean-360) with exit 0 and "0 problem(s) found"; where the draw put both copies on one side, it was
    train-960's or val-960's problem. It is train-960's problem whatever the draw, as without --hold-out."""
    ls = tmp_path / "LibriSpeech"
    for name, first in (("train-clean-100", 1), ("train-clean-360", 3), ("train-other-500", 5)):
        ls_tree(ls / name, speakers=(first, first + 1), chapters=(10, 11), utts=2)
    shutil.copytree(ls / "train-clean-100" / "1" / "10", ls / "train-clean-360" / "1" / "10")
    out = tmp_path / "out"
    for seed in ("1", "2"):  # seed 1 held out one copy only; seed 2 both
        with pytest.raises(ValueError, match=r"2 problem\(s\).*split train-960: duplicate utterance id 1-10-0000 "
                                             r"\(.*train-clean-100/1/10/1-10-0000.flac and .*train-clean-360/1/10/"):
            _prepare(str(ls), str(out), "--hold-out", "0.5", "--seed", seed)
    assert _prepare(str(ls), str(out), "--hold-out", "0.5", "--seed", "1", "--skip-bad") == 0
    ids = {p.stem: [u.id for u in read_manifest(p)] for p in out.glob("*.jsonl")}
    assert (ids["train-960"] + ids["val-960"]).count("1-10-0000") == 1  # on one side only
    assert sum(rows.count("1-10-0000") for name, rows in ids.items() if not name.endswith("-960")) == 1


def test_a_plain_folder_notes_transcript_tables_it_does_not_read(tmp_path: Path, tone) -> None:
    """An LJSpeech folder (wavs/*.wav + metadata.csv) was read all unlabelled, "0 problem(s)", without a hint that
    a plain folder reads only .txt / .lab files beside the audio. Now each table-like file is a note naming it and
    what is read; a sidecar of an audio file's name (a .txt) is never one."""
    lj = tmp_path / "lj"
    for name in ("LJ001-0001", "LJ001-0002"):
        tone(lj / "wavs" / f"{name}.wav", 0.5)
    (lj / "metadata.csv").write_text("LJ001-0001|Printing|printing\nLJ001-0002|in the only sense|in the only sense\n")
    (lj / "wavs" / "LJ001-0001.txt").write_text("printing\n")  # a sidecar: read, not a table
    (lj / "transcripts.txt").write_text("LJ001-0002 in the only sense\n")  # a .txt of no audio's name, a table's name
    (lj / "README").write_text("not a transcript\n")
    tone(lj / "text.wav", 0.5)  # audio of a table's name: audio, read, no table
    (lj / "text.txt").write_text("spoken text\n")
    problems: list[str] = []
    utts = {u.id: u.transcript for u in read_folder(lj, problems)}
    assert utts == {"text": "spoken text", "wavs/LJ001-0001": "printing", "wavs/LJ001-0002": None}
    tables = [p for p in problems if "table of transcripts" in p]
    assert tables == [Note(f"{lj / name}: looks like a table of transcripts, not read: prepare reads a plain folder's "
                           "transcripts from a .txt or .lab file beside each audio file, of its name (x.wav: x.txt); "
                           "write one such file per audio file from it")
                      for name in ("metadata.csv", "transcripts.txt")]
    assert all(isinstance(p, Note) for p in problems)


def test_a_plain_folder_notes_transcripts_named_after_the_audio_but_not_as_read(tmp_path: Path, tone) -> None:
    """``x.wav.txt`` and LibriTTS's ``x.normalized.txt`` were passed over without a word, their audio read
    unlabelled, "0 problem(s)": now a note counts them, naming a few, and says what is read. Beside a sidecar that
    is read (``c.txt``) such a file is no matter."""
    corpus = tmp_path / "corpus"
    for name in ("a", "b", "c"):
        tone(corpus / "spk" / f"{name}.wav", 0.5)
    (corpus / "spk" / "a.wav.txt").write_text("hello a\n")
    (corpus / "spk" / "b.normalized.txt").write_text("hello b\n")
    (corpus / "spk" / "c.txt").write_text("hello c\n")
    (corpus / "spk" / "c.normalized.txt").write_text("hello c\n")
    problems: list[str] = []
    utts = {u.id: u.transcript for u in read_folder(corpus, problems)}
    assert utts == {"spk/a": None, "spk/b": None, "spk/c": "hello c"}
    misnamed = [p for p in problems if "not as read" in p]
    assert misnamed == [Note(f"{corpus}: 2 transcript file(s) named after an audio file but not as read (e.g. "
                             "spk/a.wav.txt, spk/b.normalized.txt), not read: prepare reads a plain folder's "
                             "transcripts from a .txt or .lab file beside each audio file, of its name (x.wav: x.txt, "
                             "not x.wav.txt or LibriTTS's x.normalized.txt); rename them")]
    assert all(isinstance(p, Note) for p in problems)


def test_a_plain_folder_partly_labelled_notes_how_many_files_have_no_transcript(tmp_path: Path, tone, caplog) -> None:
    """Audio files without a sidecar beside others with one were read unlabelled without a word; now a note
    (which stops nothing) counts them and names a few. A folder of unlabelled audio only gets none."""
    for i in range(5):
        tone(tmp_path / "c" / f"u{i}.wav", 0.5)
    (tmp_path / "c" / "u0.txt").write_text("hello\n")
    problems: list[str] = []
    assert len(read_folder(tmp_path / "c", problems)) == 5
    assert problems == [Note(f"{tmp_path / 'c'}: 4 of 5 audio files have no transcript file (e.g. u1, u2, u3), read "
                             "unlabelled; prepare reads a plain folder's transcripts from a .txt or .lab file beside "
                             "each audio file, of its name")]
    assert isinstance(problems[0], Note)
    (tmp_path / "c" / "u0.txt").unlink()
    problems.clear()
    read_folder(tmp_path / "c", problems)
    assert problems == []
    (tmp_path / "c" / "u0.txt").write_text("hello\n")
    caplog.set_level(logging.INFO)
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", str(tmp_path / "c"), str(tmp_path / "m")])
    assert args.func(args) == 0  # a note stops nothing
    assert "4 of 5 audio files have no transcript file" in caplog.text and "1 note(s)" in caplog.text


@pytest.mark.parametrize("during", ["reading", "writing", "renaming"])
def test_a_stop_signal_to_prepare_leaves_the_manifests_whole(tmp_path: Path, ls_tree, caplog, monkeypatch,
                                                              during: str) -> None:
    """A scheduler's SIGTERM killed `earful prepare` where it stood (exit -15, no message), between two manifests
    as well: a folder could hold this run's train-clean-100.jsonl beside an earlier run's dev-clean.jsonl. Now the
    manifests are all written to temporary files, then renamed into place together: a SIGTERM while it reads or
    writes stops it (exit status 4, a message, no manifest changed, no temporary file left), and one while the
    manifests are renamed waits until all are in place."""
    import os
    import signal
    import time

    from earful.data import manifest

    ls = tmp_path / "LibriSpeech"
    ls_tree(ls / "train-clean-100", speakers=(1,))
    ls_tree(ls / "dev-clean", speakers=(2,))
    out = tmp_path / "out"
    out.mkdir()
    (out / "dev-clean.jsonl").write_text("an earlier run's\n")
    (out / "problems-LibriSpeech.txt").write_text("an earlier run's\n")  # the list goes with its manifests

    def signalled(real):
        def call(*args, **kwargs):
            if not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100):  # the handler runs in here, between two bytecodes
                    time.sleep(0.01)
            return real(*args, **kwargs)
        return call

    sent: list[bool] = []
    if during == "renaming":  # the signal once the renames' hold has begun (atomic_paths calls it around them)
        from earful.data.parallel import StopSignals

        holding = StopSignals.holding

        @contextlib.contextmanager
        def held(self):
            with holding(self):
                signalled(lambda: None)()
                yield

        monkeypatch.setattr(StopSignals, "holding", held)
    else:
        module, name = (commands, "discover") if during == "reading" else (manifest, "_manifest_lines")
        monkeypatch.setattr(module, name, signalled(getattr(module, name)))
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", str(ls), str(out)])
    with caplog.at_level(logging.INFO):
        rc = args.func(args)
    assert sent
    if during == "renaming":
        assert rc == 0 and "SIGTERM arrived while the manifests were put in place" in caplog.text
        assert len(read_manifest(out / "dev-clean.jsonl")) == 6 and len(read_manifest(out / "train-clean-100.jsonl"))
    else:
        assert rc == 4 and "stopped by SIGTERM: no manifest written or changed" in caplog.text
        assert (out / "dev-clean.jsonl").read_text() == "an earlier run's\n"
        assert (out / "problems-LibriSpeech.txt").read_text() == "an earlier run's\n"
        assert sorted(p.name for p in out.iterdir()) == ["dev-clean.jsonl", "problems-LibriSpeech.txt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers restored


def test_a_second_stop_signal_while_prepare_stops_or_exits_changes_nothing(monkeypatch) -> None:
    """Two SIGTERMs 20 ms apart (a scheduler's, or one to the process and one to its group) gave -15 after the log
    had said exit status 4: the second met Python's default while the first's stop was under way, or during the
    exit. The first stops the command; later ones are noted; once main() has returned they are ignored."""
    import signal

    from earful import cli
    from earful.data.parallel import Stopped, StopSignals

    stops = StopSignals()
    with pytest.raises(Stopped, match="SIGTERM"):
        stops(signal.SIGTERM, None)
    stops(signal.SIGTERM, None)  # while it stops: noted, not raised
    stops(signal.SIGINT, None)
    assert stops.arrived == ["SIGTERM", "SIGINT"]
    first_ctrl_c = StopSignals()
    with pytest.raises(KeyboardInterrupt):
        first_ctrl_c(signal.SIGINT, None)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    monkeypatch.setattr(cli, "main", lambda: 4)
    try:
        with pytest.raises(SystemExit) as end:
            cli.run()
        assert end.value.code == 4
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_prepare_replaces_the_manifests_of_its_own_source_only(tmp_path: Path, tone) -> None:
    """Two corpora with a split of one name (two folders named train) prepared into one folder: the second
    replaced the first's train.jsonl, and its problems list, without a word. It is refused, naming the manifest and
    a file of the other corpus; the same source again replaces its own, as before."""
    for corpus, n in (("a", 3), ("b", 2)):
        for i in range(n):
            tone(tmp_path / corpus / "train" / f"{corpus}{i}.wav", 0.5)
    out = tmp_path / "out"
    assert _prepare(str(tmp_path / "a" / "train"), str(out)) == 0
    before = (out / "train.jsonl").read_bytes()
    with pytest.raises(ValueError, match=rf"{out / 'train.jsonl'}: the manifest\(s\) of another corpus \(e.g. "
                                         rf".*a0.wav\), not of .*b/train: prepare replaces the manifests of its own"):
        _prepare(str(tmp_path / "b" / "train"), str(out))
    assert (out / "train.jsonl").read_bytes() == before
    tone(tmp_path / "a" / "train" / "a3.wav", 0.5)
    assert _prepare(str(tmp_path / "a" / "train"), str(out)) == 0  # its own: replaced, a row more
    assert [u.id for u in read_manifest(out / "train.jsonl")] == ["a0", "a1", "a2", "a3"]
    linked = tmp_path / "linked" / "train"  # a corpus of links into a store: rows list the files linked to
    linked.mkdir(parents=True)
    for i in range(2):
        (linked / f"l{i}.wav").symlink_to(tmp_path / "b" / "train" / f"b{i}.wav")
    assert _prepare(str(linked), str(tmp_path / "out2")) == 0
    assert _prepare(str(linked), str(tmp_path / "out2")) == 0  # its own, again (refused before)


def test_prepare_replaces_its_own_manifests_of_relative_paths_wherever_it_is_run(tmp_path: Path, ls_tree,
                                                                                 monkeypatch) -> None:
    """A manifest's relative paths are its folder's (read_manifest reads them so; `earful synth` writes them):
    prepare resolved them against the current folder, and refused to write again the manifest of its own source
    (corpus/manifests/dev.jsonl holding ../dev/...) as another corpus's. Another corpus's relative rows are still
    refused."""
    corpus = tmp_path / "corpus"
    ls_tree(corpus / "dev", speakers=(1,), chapters=(10,), utts=2)
    manifest = corpus / "manifests" / "dev.jsonl"
    write_manifest(read_librispeech(corpus / "dev"), manifest, relative_to=corpus)
    assert read_manifest(manifest)[0].path == str(corpus / "dev" / "1" / "10" / "1-10-0000.flac")
    assert '"../dev/1/10/1-10-0000.flac"' in manifest.read_text()
    monkeypatch.chdir(tmp_path)
    assert _prepare(str(corpus / "dev"), str(corpus / "manifests")) == 0
    assert [u.id for u in read_manifest(manifest)] == ["1-10-0000", "1-10-0001"]
    ls_tree(tmp_path / "other" / "dev", speakers=(2,), chapters=(10,), utts=2)
    write_manifest(read_librispeech(tmp_path / "other" / "dev"), manifest, relative_to=tmp_path)  # ../../other/dev
    with pytest.raises(ValueError, match=r"dev.jsonl: the manifest\(s\) of another corpus \(e.g. \.\./\.\./other/"):
        _prepare(str(corpus / "dev"), str(corpus / "manifests"))


def test_files_are_found_at_any_depth_in_path_order(tmp_path: Path) -> None:
    """The folders were read by recursion (os.walk's, then a generator's): a tree some 980 folders deep failed,
    "maximum recursion depth exceeded". They are read with a stack; the order is still Path order (by parts: a
    folder's files before a sibling named with it and a '-')."""
    from earful.data.audio import files_below

    for name in ("a-b.flac", "a.flac", "a/b.flac", "a/c/d.flac", "b.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    levels = [tmp_path / "z"]
    for _ in range(1199):  # os.mkdir a level at a time: makedirs recurses too
        levels.append(levels[-1] / "z")
    try:
        for level in levels:
            os.mkdir(level)
        (levels[-1] / "x.flac").write_bytes(b"")
        found = files_below(tmp_path)
        assert found[:5] == [tmp_path / n for n in ("a/b.flac", "a/c/d.flac", "a-b.flac", "a.flac", "b.txt")]
        assert found[5:] == [levels[-1] / "x.flac"] and found == sorted(found)
    finally:  # removed here, bottom up: pytest's clean-up (shutil.rmtree) recurses, and would fail the session
        (levels[-1] / "x.flac").unlink(missing_ok=True)
        for level in reversed(levels):
            if level.is_dir():
                os.rmdir(level)
