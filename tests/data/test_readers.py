import argparse
import logging
from pathlib import Path

from earful.data import commands
from earful.data.librispeech import discover, read_folder, read_librilight, read_librispeech
from earful.data.manifest import read_manifest


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
