"""``earful transcribe``: windows, files of any rate, bad files, an LM, a 30-minute file."""

from __future__ import annotations

import json
import logging
import re
import signal

import numpy as np
import pytest
import soundfile as sf

from earful.cli import main
from earful.data.audio import load_audio
from earful.data.manifest import read_manifest
from earful.eval.beam import flashlight_available
from earful.eval.evaluate import load_ctc, transcribe
from earful.eval.transcribe import chunk_spans, kept_frames, transcribe_files
from earful.model import Wav2Vec2ForCTC


@pytest.mark.parametrize(("n", "chunk", "stride"), [(100_000, 64_000, 9_600), (64_001, 64_000, 9_600),
                                                    (1_000_000, 320_000, 53_440), (50_000, 64_000, 9_600),
                                                    (200_000, 32_000, 0)])  # fmt: skip
def test_windows_keep_every_sample_once(n, chunk, stride) -> None:
    spans = chunk_spans(n, chunk, stride, stride)
    kept = [(c.start + c.left, c.start + c.length - c.right) for c in spans]
    assert kept[0][0] == 0 and kept[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(kept, kept[1:], strict=False))  # contiguous, no overlap
    assert sum(c.new for c in spans) == n and all(c.length <= chunk for c in spans)
    frames = [kept_frames(c, 320, (c.length - 400) // 320 + 1) for c in spans]
    total = sum(end - first for first, end in frames)
    assert abs(total - n / 320) <= len(spans) + 1  # rounding at each window's edges, as transformers'


def test_a_30_minute_file_is_135_windows_of_20_s() -> None:
    """The README's number: 20 s windows (320-sample frames) with strides of 20 / 6 s, rounded to frames."""
    chunk, stride = 320_000, 53_440  # transcribe_files' rounding of 20 s and 3.33 s to 320-sample frames
    assert len(chunk_spans(30 * 60 * 16_000, chunk, stride, stride)) == 135


def write_files(tmp_path, manifest) -> list:
    """Two test utterances as 16 kHz mono files, the first again as 44.1 kHz stereo FLAC, and a bad file."""
    utts = read_manifest(manifest)[:2]
    stereo = tmp_path / "stereo.flac"
    import soxr

    wave = soxr.resample(load_audio(utts[0].path), 16000, 44100)
    sf.write(stereo, np.stack([wave, wave], 1), 44100)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    return [utts[0].path, utts[1].path, str(stereo), str(bad)]


def test_transcribe_writes_records_names_bad_files_and_fails(tone_ctc, tmp_path, caplog) -> None:
    ckpt, manifest = tone_ctc
    files = write_files(tmp_path, manifest)
    model, vocab, *_ = load_ctc(ckpt)
    utts = read_manifest(manifest)[:2]
    expected, _ = transcribe(model, utts, vocab)  # earful evaluate's greedy transcripts, by utterance id
    ids = [u.id for u in utts]
    out = tmp_path / "out.jsonl"
    assert main(["transcribe", str(ckpt), *files, "--out", str(out)]) == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == files
    assert [r["text"] for r in rows[:2]] == [expected[i] for i in ids]
    assert rows[2]["text"] == rows[0]["text"]  # resampled and downmixed: what the 16 kHz mono file says
    assert rows[2]["seconds"] == pytest.approx(rows[0]["seconds"], abs=1e-3)
    assert "text" not in rows[3] and "bad.wav" in rows[3]["error"]
    assert "1 of 4 files could not be read" in caplog.text and "bad.wav" in caplog.text


@pytest.mark.parametrize(("options", "message"), [
    (["--stride-seconds", "-1"], r"stride_seconds \(--stride-seconds\) = -1.0: expected a finite number of seconds"),
    (["--chunk-seconds", "-5"], r"chunk_seconds \(--chunk-seconds\) = -5.0: expected"),
    (["--chunk-seconds", "0.02", "--stride-seconds", "0"],
     r"chunk_seconds \(--chunk-seconds\) = 0.02: shorter than the model's receptive field \(0.025 s\)"),
    (["--chunk-seconds", "0.01"],  # 0 frames once rounded: had transcribed whole files, as 0 does
     r"chunk_seconds \(--chunk-seconds\) = 0.01: shorter than the model's receptive field \(0.025 s\)"),
    (["--device-seconds", "0"], r"device_seconds \(--device-seconds\) = 0.0: expected a finite number of seconds > 0"),
])  # fmt: skip
def test_windows_that_would_drop_audio_are_refused_naming_the_option(options, message, tone_ctc, tmp_path,
                                                                      caplog) -> None:
    """A negative stride had skipped the audio between windows (711 of 1623 characters), a chunk below the
    receptive field gave every window 0 frames (an empty transcript), both with exit status 0."""
    ckpt, manifest = tone_ctc
    files = write_files(tmp_path, manifest)[:1]
    assert main(["transcribe", str(ckpt), *files, "--out", str(tmp_path / "t.jsonl"), *options]) == 2
    assert re.search(message, caplog.text), caplog.text[-500:]


def test_a_stride_without_chunks_is_refused_naming_both_options(tmp_path) -> None:
    """`--chunk-seconds 0 --stride-seconds 5` transcribed whole files and ignored the stride without a word."""
    from earful.eval.vocab import CharVocab
    from earful.model import load_model_config

    path = str(tmp_path / "f.wav")
    sf.write(path, np.zeros(8000, np.float32), 16000)
    vocab = CharVocab()
    model = Wav2Vec2ForCTC(load_model_config("tiny"), len(vocab))
    for stride in (5.0, 0.0):
        with pytest.raises(ValueError, match=rf"^stride_seconds \(--stride-seconds\) = {stride} with chunk_seconds "
                                             r"\(--chunk-seconds\) = 0: whole files go through the model in one "
                                             r"window, without strides; give a chunk, or leave the stride out$"):
            transcribe_files(model, vocab, [path], chunk_seconds=0, stride_seconds=stride)
    assert next(transcribe_files(model, vocab, [path], chunk_seconds=0))["seconds"] == 0.5


def test_transcribe_refuses_a_json_output_it_would_write_as_json_lines(tone_ctc, tmp_path, caplog) -> None:
    """--out F.json had been written as JSON Lines, not one JSON document (not valid JSON for two files)."""
    ckpt, manifest = tone_ctc
    files = write_files(tmp_path, manifest)[:2]
    assert main(["transcribe", str(ckpt), *files, "--out", str(tmp_path / "t.json")]) == 2
    assert "transcribe writes JSON Lines (one record a line), not one JSON document: name it .jsonl" in caplog.text
    assert not (tmp_path / "t.json").exists()


def test_transcribe_plain_text_on_stdout(tone_ctc, tmp_path, capsys) -> None:
    ckpt, manifest = tone_ctc
    files = write_files(tmp_path, manifest)[:2]
    assert main(["transcribe", str(ckpt), *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == files and all(line.count("\t") == 1 for line in lines)


def test_a_reader_that_stops_early_stops_transcribe_quietly(tone_ctc, tmp_path) -> None:
    """`earful transcribe CKPT FILES | head -1`: once the reader had gone, the next line ended the command with
    "ERROR earful: [Errno 32] Broken pipe", status 2. It now stops there without an error, status 141 (128 +
    SIGPIPE, as a shell reports a command a closed pipe ended)."""
    import os
    import subprocess
    import sys

    ckpt, manifest = tone_ctc
    files = write_files(tmp_path, manifest)[:2]
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line: every write meets a closed pipe
    try:
        r = subprocess.run([sys.executable, "-m", "earful.cli", "transcribe", str(ckpt), *files], stdout=write,
                           stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert r.returncode == 141, r.stderr
    assert "ERROR" not in r.stderr and "Broken pipe" not in r.stderr and "Exception ignored" not in r.stderr
    assert "standard output's reader stopped after 0 of 2 files" in r.stderr


def test_a_file_name_the_text_output_cannot_hold_asks_for_json_lines(tone_ctc, tmp_path, caplog) -> None:
    """A file name with a tab broke the text output's PATH<TAB>TEXT lines (a reader took part of the name for
    the text); it is now refused before any work, naming --out FILE.jsonl, which holds it."""
    import shutil

    ckpt, manifest = tone_ctc
    odd = str(tmp_path / "take\t2.wav")
    shutil.copy(write_files(tmp_path, manifest)[0], odd)
    for out in ([], ["--out", str(tmp_path / "t.txt")]):
        caplog.clear()
        assert main(["transcribe", str(ckpt), odd, *out]) == 2
        assert "a file name with a tab or a line break, which the text output" in caplog.text
    assert main(["transcribe", str(ckpt), odd, "--out", str(tmp_path / "t.jsonl")]) == 0
    assert json.loads((tmp_path / "t.jsonl").read_text())["path"] == odd


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_transcribe_with_an_lm(tone_ctc, tmp_path) -> None:
    from earful.eval.lm import build_arpa

    ckpt, manifest = tone_ctc
    (tmp_path / "text.txt").write_text("bad cafe\nhead face\ndead beef\ncage fad\nbead\n")
    build_arpa(tmp_path / "text.txt", tmp_path / "lm.arpa", order=2)
    files = write_files(tmp_path, manifest)[:2]
    out = tmp_path / "lm.jsonl"
    assert main(["transcribe", str(ckpt), *files, "--out", str(out), "--lm", str(tmp_path / "lm.arpa")]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    words = {"bad", "cafe", "head", "face", "dead", "beef", "cage", "fad", "bead"}
    assert all(set(r["text"].split()) <= words and "greedy" in r for r in rows)


def test_a_30_minute_file_goes_through_the_model_a_window_at_a_time(tone_ctc, tmp_path, monkeypatch) -> None:
    ckpt, manifest = tone_ctc
    pattern = np.concatenate([load_audio(u.path) for u in read_manifest(manifest)])  # 13.75 s
    repeats = int(np.ceil(1800 * 16000 / len(pattern)))
    path = tmp_path / "long.wav"
    sf.write(path, np.tile(pattern, repeats)[: 1800 * 16000], 16000, subtype="PCM_16")
    sf.write(tmp_path / "pattern.wav", pattern, 16000, subtype="PCM_16")
    shapes: list[tuple[int, ...]] = []
    forward = Wav2Vec2ForCTC.forward

    def spy(self, wave, lengths, **kwargs):
        shapes.append(tuple(wave.shape))
        return forward(self, wave, lengths, **kwargs)

    monkeypatch.setattr(Wav2Vec2ForCTC, "forward", spy)
    out = tmp_path / "out.jsonl"
    assert main(["transcribe", str(ckpt), str(path), str(tmp_path / "pattern.wav"), "--out", str(out),
                 "--chunk-seconds", "20", "--stride-seconds", "1", "--device-seconds", "100"]) == 0  # fmt: skip
    long, short = [json.loads(x) for x in out.read_text().splitlines()]
    assert long["seconds"] == 1800.0
    assert max(s[1] for s in shapes) == 20 * 16000 and max(s[0] * s[1] for s in shapes) <= 100 * 16000
    assert len(shapes) >= 1800 / 100  # 100 windows of 20 s (18 s new each), 5 a batch
    # every part of the file was transcribed: the pattern's words, about as many times as it repeats
    ratio = len(long["text"].split()) / len(short["text"].split())
    assert 0.85 * 1800 * 16000 / len(pattern) <= ratio <= 1.15 * 1800 * 16000 / len(pattern), ratio


def test_windows_reach_the_model_zero_padded_as_training_batches_are(tone_ctc, tmp_path, monkeypatch) -> None:
    """Each batch of windows is the data loaders' batch (``collate``, ``Batch.model_inputs``): every window's
    samples at the start of its row, zeros after, lengths only when some row is shorter than the batch, and a
    batch shorter than the receptive field padded up to it (with its length). One window a batch or three,
    the transcripts are the same."""

    ckpt, manifest = tone_ctc
    model, vocab, *_ = load_ctc(ckpt)
    waves = [load_audio(u.path) for u in read_manifest(manifest)[:3]]
    waves.append(np.concatenate([waves[0], waves[1]])[: 2 * 16000 + 200])  # its last 1 s window: 200 samples
    files = []
    for k, w in enumerate(waves):
        files.append(str(tmp_path / f"f{k}.wav"))
        sf.write(files[-1], w, 16000, subtype="FLOAT")
    calls: list[tuple] = []
    forward = Wav2Vec2ForCTC.forward

    def spy(self, wave, lengths, **kwargs):
        calls.append((wave.clone(), None if lengths is None else lengths.clone()))
        return forward(self, wave, lengths, **kwargs)

    monkeypatch.setattr(Wav2Vec2ForCTC, "forward", spy)
    texts = []
    for device_seconds in (1.0, 3.0):
        calls.clear()
        records = transcribe_files(model, vocab, files, chunk_seconds=1.0, stride_seconds=0.0,
                                   device_seconds=device_seconds)
        texts.append([r["text"] for r in records])
        rows = []
        for wave, lengths in calls:
            n = lengths.tolist() if lengths is not None else [wave.shape[1]] * len(wave)
            assert (lengths is None) == all(k == wave.shape[1] for k in n)
            assert wave.shape[1] == max(*n, model.cfg.receptive_field)
            for row, k in zip(wave, n, strict=True):
                assert not row[k:].any()
                rows.append(row[:k].numpy())
        # windows without strides: the rows, in order, are the files' samples, each once
        assert np.array_equal(np.concatenate(rows), np.concatenate(waves))
        if device_seconds == 1.0:  # the 200-sample window alone
            assert [(tuple(w.shape), n.tolist()) for w, n in calls if len(w) == 1 and n is not None] == [
                ((1, model.cfg.receptive_field), [200])]
    assert texts[0] == texts[1]


def test_the_bar_reads_the_files_headers_only_when_it_shows(tmp_path, monkeypatch) -> None:
    """The progress bar's total (every file's length, from its header) is read only for a bar that shows: with
    the bar off (no terminal) no header is read; with it on, each file's once, and the bar ends at the total."""
    import io

    import earful.eval.transcribe as T
    from earful.eval.vocab import CharVocab
    from earful.model import load_model_config

    files = []
    for k, n in enumerate((8000, 20000)):
        files.append(str(tmp_path / f"f{k}.wav"))
        sf.write(files[-1], 0.1 * np.random.default_rng(k).standard_normal(n).astype(np.float32), 16000)
    vocab = CharVocab()
    model = Wav2Vec2ForCTC(load_model_config("tiny"), len(vocab))
    headers: list[str] = []
    info = T.audio_info
    monkeypatch.setattr(T, "audio_info", lambda f: headers.append(str(f)) or info(f))
    off = list(T.transcribe_files(model, vocab, files))  # under pytest stderr is no terminal: the bar is off
    assert headers == [] and [r["seconds"] for r in off] == [0.5, 1.25]
    bars, tqdm = [], T.tqdm

    def shown(**kwargs):
        bars.append(tqdm(**{**kwargs, "disable": False, "file": io.StringIO()}))
        return bars[-1]

    monkeypatch.setattr(T, "tqdm", shown)
    assert list(T.transcribe_files(model, vocab, files)) == off
    assert headers == files and bars[0].n == 1.75 and bars[0].total == round(1.75, 1)  # the total as shown


def test_errors_name_the_command_run_and_a_directory_given_as_a_file(tone_ctc, tmp_path, caplog) -> None:
    """`transcribe` of a pre-training checkpoint said "evaluate needs a fine-tuned (CTC) one", and of a directory
    "unreadable audio header (... Format not recognised.)"; a folder given as an argument stands for its audio."""
    from earful.checkpoint import save_model
    from earful.model import Wav2Vec2ForPreTraining, load_model_config

    ckpt, manifest = tone_ctc
    audio = read_manifest(manifest)[0].path
    pt = tmp_path / "pt"
    save_model(pt, Wav2Vec2ForPreTraining(load_model_config("tiny")))
    assert main(["transcribe", str(pt), audio]) == 2
    assert "a pretraining checkpoint; transcribe needs a fine-tuned (CTC) one" in caplog.text
    assert "evaluate needs" not in caplog.text
    caplog.clear()
    folder = tmp_path / "audio"
    folder.mkdir()
    model, vocab, *_ = load_ctc(ckpt)
    rows = list(transcribe_files(model, vocab, [audio, str(folder)]))  # the command line expands folders first
    assert "text" in rows[0] and rows[1]["error"].startswith(f"{folder}: a directory, not an audio file (give "
                                                             "audio files")
    assert "Format not recognised" not in caplog.text and "a directory, not an audio file" in caplog.text


def test_folders_stand_for_their_audio_and_lists_add_files(tone_ctc, tmp_path, caplog, monkeypatch) -> None:
    """A folder had been refused (a record "a directory, not an audio file"): it now stands for the audio files
    below it, sorted, other files left out and audio libsndfile cannot decode named; --files-from adds a list
    (a file or standard input). A folder without audio, a name that is not there, or a manifest, is refused before
    any work."""
    import io
    import shutil

    ckpt, manifest = tone_ctc
    utts = read_manifest(manifest)[:2]
    folder = tmp_path / "talks"
    (folder / "b").mkdir(parents=True)
    shutil.copy(utts[0].path, folder / "b" / "one.flac")
    shutil.copy(utts[1].path, folder / "a.wav" if utts[1].path.endswith(".wav") else folder / "a.flac")
    (folder / "notes.txt").write_text("not audio")
    (folder / "b" / "phone.m4a").write_bytes(b"\0" * 100)
    out = tmp_path / "t.jsonl"
    assert main(["transcribe", str(ckpt), str(folder), "--out", str(out)]) == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == sorted(str(p) for p in folder.rglob("*") if p.suffix in (".flac", ".wav",
                                                                                                  ".m4a"))
    assert [("text" in r) for r in rows] == [True, True, False] and "phone.m4a" in rows[2]["error"]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{utts[1].path}\n\n{utts[0].path}\n"))
    caplog.clear()
    assert main(["transcribe", str(ckpt), utts[0].path, "--files-from", "-", "--out", str(out)]) == 0
    assert f"--out {out}: replaced; its transcripts of an earlier run are gone (--resume" in caplog.text
    assert [json.loads(x)["path"] for x in out.read_text().splitlines()] == [utts[0].path, utts[1].path,
                                                                             utts[0].path]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9.wav\n"), encoding="utf-8"))
    caplog.clear()
    assert main(["transcribe", str(ckpt), "--files-from", "-", "--out", str(out)]) == 2
    assert "--files-from -: cannot be read ('utf-8' codec can't decode" in caplog.text  # it named nothing
    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)
    (empty / "x" / "readme.txt").write_text("no audio")
    for args, message in (([str(empty)], f"{empty}: a folder with no audio files below it"),
                          ([str(tmp_path / "gone.wav")], f"{tmp_path / 'gone.wav'}: no such file or folder"),
                          ([str(manifest)], f"{manifest}: a manifest, not an audio file: `earful evaluate CKPT "
                                            f"{manifest} --out DIR` transcribes its rows"),  # "Format not recognised"
                          ([], "no audio to transcribe: give files or folders, or --files-from LIST"),
                          (["--files-from", str(tmp_path / "nolist")], f"--files-from {tmp_path / 'nolist'}: cannot")):
        caplog.clear()
        assert main(["transcribe", str(ckpt), *args, "--out", str(tmp_path / "new.jsonl")]) == 2
        assert message in caplog.text, caplog.text
    assert not (tmp_path / "new.jsonl").exists()


def _stopping_after(monkeypatch, records: int, signum: int = signal.SIGTERM) -> list:
    """transcribe_files, patched: the process is sent ``signum`` once it has given ``records`` records; the files
    each call was given are listed in the returned list."""
    import earful.eval.transcribe as T

    given = []

    def stopping(model, vocab, files, **kw):
        given.append(list(files))
        for n, record in enumerate(transcribe_files(model, vocab, files, **kw), 1):
            yield record
            if n == records:
                signal.raise_signal(signum)

    monkeypatch.setattr(T, "transcribe_files", stopping)
    return given


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_stopped_run_keeps_what_it_finished_and_resume_goes_on(suffix, tone_ctc, tmp_path, caplog,
                                                                 monkeypatch) -> None:
    """Transcripts had been written only at the end: SIGTERM or Ctrl-C part-way lost the finished ones, with no
    message and no way to go on. Now each file's line is written when it is done; a stopped run says so (status
    4 for SIGTERM, 130 for Ctrl-C) and --resume transcribes the rest only, to the file an unstopped run writes."""
    ckpt, manifest = tone_ctc
    files = write_files(tmp_path, manifest)[:3]
    whole = tmp_path / f"whole{suffix}"
    # one file a batch, so that the first is done (and written) before the others are read
    options = ["--device-seconds", "0.5", "--chunk-seconds", "0.5"]
    assert main(["transcribe", str(ckpt), *files, "--out", str(whole), *options]) == 0
    out = tmp_path / f"out{suffix}"
    for signum, status, kept in ((signal.SIGTERM, 4, 1), (signal.SIGINT, 130, 2)):
        _stopping_after(monkeypatch, 1, signum)  # stopped once a file is done, the first time and on resuming
        caplog.clear()
        resume = ["--resume"] if kept > 1 else []
        assert main(["transcribe", str(ckpt), *files, "--out", str(out), *options, *resume]) == status
        assert out.read_text().splitlines() == whole.read_text().splitlines()[:kept]
        assert f"after 1 of {3 - len(resume)} files" in caplog.text
        assert "the same command with --resume goes on" in caplog.text
    given = _stopping_after(monkeypatch, 99)
    caplog.clear()
    caplog.set_level(logging.INFO, "earful")
    assert main(["transcribe", str(ckpt), *files, "--out", str(out), *options, "--resume"]) == 0
    assert given == [files[2:]] and "2 of 3 files are transcribed in" in caplog.text
    assert out.read_bytes() == whole.read_bytes()


def test_resume_retries_a_cut_line_and_unreadable_files_and_refuses_foreign_files(tone_ctc, tmp_path, caplog,
                                                                                  monkeypatch) -> None:
    ckpt, manifest = tone_ctc
    files = write_files(tmp_path, manifest)
    out = tmp_path / "out.jsonl"
    assert main(["transcribe", str(ckpt), *files, "--out", str(out)]) == 1
    lines = out.read_text().splitlines()
    assert "error" in json.loads(lines[3])
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # killed while writing the third line
    given = _stopping_after(monkeypatch, 99)
    assert main(["transcribe", str(ckpt), *files, "--out", str(out), "--resume"]) == 1
    assert given == [files[2:]] and "its last line was cut short" in caplog.text
    assert out.read_text().splitlines() == lines
    out.write_text(out.read_text().replace(lines[3] + "\n", ""))  # the unreadable file's record: tried again
    given.clear()
    assert main(["transcribe", str(ckpt), *files, "--out", str(out), "--resume"]) == 1
    assert given == [files[3:]] and out.read_text().splitlines() == lines
    given.clear()
    assert main(["transcribe", str(ckpt), *files[:2], "--out", str(tmp_path / "fresh.jsonl"), "--resume"]) == 0
    assert given == [files[:2]]  # nothing to resume from: all of them
    for name, text, message in (("a.jsonl", b"not json\n", "line 1: not a transcribe record"),
                                ("a.txt", b"no tab here\n", "line 1: not PATH<TAB>TEXT"),
                                ("b.txt", b"a.wav\tcaf\xe9\n", "not UTF-8 text (invalid continuation byte at byte"),
                                ("c.jsonl", b'{"path": 5, "text": "x"}\n', "line 1: not a transcribe record"),
                                ("d.jsonl", b'{"path": "a\\u0000b", "text": "x"}\n', "line 1: not a transcribe")):
        (tmp_path / name).write_bytes(text)
        caplog.clear()
        assert main(["transcribe", str(ckpt), *files[:2], "--out", str(tmp_path / name), "--resume"]) == 2
        assert f"--out {tmp_path / name}" in caplog.text and message in caplog.text
        assert (tmp_path / name).read_bytes() == text
    caplog.clear()
    assert main(["transcribe", str(ckpt), *files[:2], "--resume"]) == 2
    assert "--resume goes on from the transcripts in --out: give --out" in caplog.text


@pytest.mark.parametrize("jsonl", [False, True])
def test_resume_retries_a_line_cut_inside_a_character(tmp_path, caplog, jsonl) -> None:
    """A run killed while writing 'é' (two bytes in UTF-8) left --out cut between them, and --resume refused it as
    "not UTF-8 text (unexpected end of data ...)": the cut line is left out (its file done again), as any cut last
    line; a whole line that is not UTF-8 is still refused."""
    from earful.eval.commands import _earlier_transcripts

    out = tmp_path / ("out.jsonl" if jsonl else "out.txt")
    done, cut = ({"path": str(tmp_path / f"{n}.wav"), "text": "café"} for n in ("a", "b"))
    lines = [json.dumps(r, ensure_ascii=False) if jsonl else f"{r['path']}\t{r['text']}" for r in (done, cut)]
    whole = (lines[0] + "\n").encode()
    out.write_bytes(whole + lines[1].encode()[:lines[1].encode().index("é".encode()) + 1])  # half of 'é'
    with caplog.at_level(logging.WARNING):
        assert _earlier_transcripts(out, jsonl) == {(tmp_path / "a.wav").resolve(): lines[0]}
    assert "its last line was cut short" in caplog.text
    out.write_bytes(whole.replace("é".encode(), b"\xe9") + lines[1].encode())
    with pytest.raises(ValueError, match=re.escape(f"--out {out}: not UTF-8 text (invalid continuation byte at "
                                                   "byte ")):
        _earlier_transcripts(out, jsonl)


def test_records_come_as_each_file_is_done(tone_ctc, tmp_path, monkeypatch) -> None:
    """transcribe_files had returned a list once every file was done; it now gives each file's record before the
    next batch's files are read, and an unreadable file's record in its place."""
    import earful.eval.transcribe as T

    ckpt, manifest = tone_ctc
    files = write_files(tmp_path, manifest)
    files = [files[0], files[3], files[1], files[2]]  # the unreadable file second
    model, vocab, *_ = load_ctc(ckpt)
    read, real = [], T.load_audio
    monkeypatch.setattr(T, "load_audio", lambda path: read.append(str(path)) or real(path))
    records = T.transcribe_files(model, vocab, files, chunk_seconds=0.5, device_seconds=0.5)
    seen = []
    for record in records:
        seen.append((record["path"], len(read)))
    assert [p for p, _ in seen] == files
    # the first file's record, and the unreadable one's after it, come before the last file is read (a list
    # had come once all four were read)
    assert seen[0][1] < len(files) and seen[1][1] < len(files), seen


def test_an_out_that_cannot_be_written_or_is_an_input_is_refused_before_any_work(tmp_path, caplog,
                                                                                 monkeypatch) -> None:
    """--out FOLDER failed only once every file was transcribed (status 2, naming a temporary file), and --out
    naming one of the audio files replaced that audio with the transcripts."""
    import earful.eval.transcribe as T
    from earful.checkpoint import save_model
    from earful.model import load_model_config

    save_model(tmp_path / "ckpt", Wav2Vec2ForCTC(load_model_config("tiny"), 6),
               vocab={"symbols": ["<b>", "|", "a", "b", "c", "d"]})
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(8000, np.float32), 16000)
    before = audio.read_bytes()
    (tmp_path / "folder").mkdir()
    calls = []
    monkeypatch.setattr(T, "transcribe_files", lambda *a, **k: calls.append(a))
    for out, message in ((tmp_path / "folder", "a folder; transcribe writes one file"),
                         (audio, "one of the audio files to transcribe"),
                         (tmp_path / "a.wav" / "x.txt", "is not a folder this user can write in")):
        caplog.clear()
        assert main(["transcribe", str(tmp_path / "ckpt"), str(audio), "--out", str(out)]) == 2
        assert f"--out {out}: " in caplog.text and message in caplog.text, caplog.text
    assert calls == [] and audio.read_bytes() == before


def test_list_lines_are_names_as_given_ones_and_names_the_output_cannot_hold_are_refused(tone_ctc, tmp_path,
                                                                                        caplog) -> None:
    """--files-from lines had not been read as names on the command line are: a folder line was a "directory" error
    record and a missing file one error record more, after the whole run (status 1). A folder's file named in other
    bytes than UTF-8 (caf\\xe9.wav) stopped the run part-way with a UnicodeEncodeError naming no file."""
    import os
    import shutil

    ckpt, manifest = tone_ctc
    audio = read_manifest(manifest)[0].path
    folder = tmp_path / "talks"
    folder.mkdir()
    shutil.copy(audio, folder / "a.wav")
    out = tmp_path / "t.jsonl"
    (tmp_path / "list.txt").write_text(f"{folder}\n{audio}\n")
    assert main(["transcribe", str(ckpt), "--files-from", str(tmp_path / "list.txt"), "--out", str(out)]) == 0
    assert [json.loads(x)["path"] for x in out.read_text().splitlines()] == [str(folder / "a.wav"), audio]
    (tmp_path / "list.txt").write_text(f"{audio}\n{tmp_path / 'gone.wav'}\n")
    assert main(["transcribe", str(ckpt), "--files-from", str(tmp_path / "list.txt"), "--out", str(out)]) == 2
    assert f"{tmp_path / 'gone.wav'}: no such file or folder" in caplog.text
    shutil.copy(audio, os.path.join(os.fsencode(folder), b"caf\xe9.wav"))
    caplog.clear()
    for output in (["--out", str(out)], []):
        assert main(["transcribe", str(ckpt), str(folder), *output]) == 2
        assert "caf\\udce9.wav': a file name that is not UTF-8, which the transcripts" in caplog.text


def test_resume_refuses_transcripts_of_another_checkpoint_or_options_naming_what_differs(tone_ctc, tmp_path, caplog,
                                                                                        monkeypatch) -> None:
    """--resume kept the lines in --out whatever made them: another checkpoint's, or another chunking's or
    precision's, were mixed with these without a word. The run's checkpoint (its weights' SHA-256) and the options
    that change a transcript are recorded beside --out (OUT.json) now, and a --resume with others is refused,
    naming them; an output written before they were recorded resumes with a warning."""
    import shutil

    import torch

    from earful.checkpoint import load_model, save_model

    ckpt, manifest = tone_ctc
    files = write_files(tmp_path, manifest)[:2]
    _, _, path, _ = load_ctc(ckpt)
    moved = tmp_path / "moved"  # the same weights elsewhere: the same checkpoint
    shutil.copytree(path, moved)
    other = tmp_path / "other"  # other weights
    model, info = load_model(path)
    with torch.no_grad():
        model.lm_head.bias.add_(1.0)
    save_model(other, model, vocab=info["vocab"])
    options = ["--chunk-seconds", "0.5"]
    whole = tmp_path / "whole.jsonl"
    assert main(["transcribe", str(ckpt), *files, "--out", str(whole), *options]) == 0
    out = tmp_path / "out.jsonl"
    assert main(["transcribe", str(ckpt), files[0], "--out", str(out), *options]) == 0
    record = json.loads((tmp_path / "out.jsonl.json").read_text())
    assert record["weights_sha256"] == json.loads((path / "model.json").read_text())["files"]["model.safetensors"][
        "sha256"]
    assert record["options"]["chunk_seconds"] == 0.5 and record["options"]["precision"] == "fp32"
    first = out.read_bytes()
    given = _stopping_after(monkeypatch, 99)
    for ck, more, message in (
            (other, options, f"its transcripts are of another checkpoint {path} (now {other}) (out.jsonl.json), "
                             "which --resume would mix with these"),
            (ckpt, ["--chunk-seconds", "1"], "another chunk_seconds 0.5 (now 1.0), stride_seconds"),
            (ckpt, [*options, "--precision", "bf16"], "another precision 'fp32' (now 'bf16')")):
        caplog.clear()
        assert main(["transcribe", str(ck), *files, "--out", str(out), *more, "--resume"]) == 2
        assert f"--out {out}: " in caplog.text and message in caplog.text, caplog.text
        assert out.read_bytes() == first and given == []  # nothing transcribed, nothing written
    assert main(["transcribe", str(moved), *files, "--out", str(out), *options, "--resume"]) == 0
    assert given == [files[1:]] and out.read_bytes() == whole.read_bytes()

    (tmp_path / "out.jsonl.json").unlink()  # as an earlier version wrote it: no record
    out.write_bytes(first)
    caplog.clear()
    assert main(["transcribe", str(other), *files, "--out", str(out), *options, "--resume"]) == 0
    assert f"--out {out}: written before transcribe recorded its checkpoint and options" in caplog.text
    assert json.loads((tmp_path / "out.jsonl.json").read_text())["checkpoint"] == str(other)  # this run's, now
