import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earful.data.audio import AudioError, audio_info, load_audio
from earful.data.manifest import ManifestError, Utterance, read_manifest, write_manifest
from earful.data.vad import frame_energies


def test_manifest_roundtrip_relative_paths(tmp_path: Path, tone):
    n = tone(tmp_path / "corpus" / "a.flac", 0.5)
    utts = [Utterance("a", str(tmp_path / "corpus" / "a.flac"), n, 16000, "s1", "HELLO"),
            Utterance("b", "/elsewhere/b.wav", 8000, 8000, "s2")]
    write_manifest(utts, tmp_path / "corpus" / "m" / "x.jsonl", relative_to=tmp_path / "corpus")
    text = (tmp_path / "corpus" / "m" / "x.jsonl").read_text()
    assert '"../a.flac"' in text and '"/elsewhere/b.wav"' in text
    back = read_manifest(tmp_path / "corpus" / "m" / "x.jsonl")
    assert back[0] == utts[0] and back[1] == utts[1]
    assert back[1].seconds == 1.0 and back[1].samples_at(16000) == 16000


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"id": "x", "path": "a.flac", "num_samples": 1, "sample_rate": 16000}', "missing field 'speaker'"),
    ('{"id": "x", "path": "a.flac", "num_samples": "1", "sample_rate": 16000, "speaker": "s"}',
     "num_samples"),
    ('{"id": "x", "path": "a.flac", "num_samples": 1000000000000000000000000000000, "sample_rate": 16000, '
     '"speaker": "s"}', "num_samples 10+ .*: more samples than any audio file holds"),
    ('{"id": "x", "path": "a.flac", "num_samples": 100, "sample_rate": 16000, "speaker": "s", '
     '"offset": 9223372036854775800}', "more samples than any audio file holds"),
    ('{"id": "x", "path": "a.flac", "num_samples": 4611686018427387904, "sample_rate": 1, "speaker": "s"}',
     "more samples than any audio file holds"),  # fits int64, not once resampled to 16 kHz
    ('{"id": "", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s"}',
     "field 'id' must not be empty"),
    ('{"id": "x", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s", "transcript": "A\\u0000B"}',
     "field 'transcript' holds a control character U\\+0000 at character 1"),
    ('{"id": "x", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s", "transcript": "\\u001b"}',
     "control character U\\+001B"),
    # another tool's name for the transcript (Hugging Face's LibriSpeech, Common Voice): read as unlabelled before
    ('{"id": "x", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s", "text": "HI"}',
     "field 'text' is not read: earful reads a row's transcript from 'transcript'"),
    ('{"id": "x", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s", "sentence": "hi"}',
     "field 'sentence' is not read"),
    ('{"id": "x", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s", "transcript": null, '
     '"text": "HI"}', "field 'text' is not read: earful reads a row's transcript from 'transcript', null here"),
])
def test_manifest_bad_rows_name_file_and_line(tmp_path: Path, line: str, message: str):
    good = '{"id": "ok", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s"}'
    (tmp_path / "m.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(ManifestError, match=rf"m.jsonl:2: .*{message}"):
        read_manifest(tmp_path / "m.jsonl")


def test_tabs_and_newlines_in_a_transcript_are_whitespace_not_corruption(tmp_path: Path):
    """Manifests other tools wrote may hold them; only the control characters that corrupt text are refused."""
    row = '{"id": "x", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s", "transcript": "%s"}'
    (tmp_path / "m.jsonl").write_text(row % "HELLO\\tWORLD\\r\\nAGAIN" + "\n")
    assert read_manifest(tmp_path / "m.jsonl")[0].transcript == "HELLO\tWORLD\r\nAGAIN"


@pytest.mark.parametrize("blank", ["\u00a0", "\f", "\u2028", "\x1c"])
def test_a_line_of_other_whitespace_is_not_a_blank_line_and_is_named(tmp_path: Path, blank: str):
    """One rule for blank lines, the same when a manifest is read and when its rows are parsed: JSON's whitespace
    (space, tab, CR, LF). A line of other whitespace (no-break space, form feed …) was skipped when read, then
    parsed with the row before it ("Extra data", naming no file)."""
    row = '{"id": "%s", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s"}'
    (tmp_path / "m.jsonl").write_text(row % "a" + "\n" + blank + "\n" + row % "b" + "\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid JSON"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text(row % "a" + "\n \t\r\n\n" + row % "b" + "\r\n  ", encoding="utf-8")
    m = read_manifest(tmp_path / "m.jsonl")
    assert [u.id for u in m] == [m[0].id, m[1].id] == ["a", "b"]


def test_a_row_that_no_longer_parses_names_manifest_and_line(tmp_path: Path):
    """A row is parsed again when asked for; if the file was overwritten in place since, the error names it."""
    rows = [Utterance(f"u{k}", "/a.flac", 16000, 16000, "s") for k in range(3)]
    write_manifest(rows, tmp_path / "m.jsonl")
    m = read_manifest(tmp_path / "m.jsonl")
    data = bytearray((tmp_path / "m.jsonl").read_bytes())
    second = data.index(b"\n") + 1
    data[second : second + 3] = b"!!!"  # same size: not noticed until the row is parsed
    with open(tmp_path / "m.jsonl", "r+b") as f:
        f.write(data)
    assert m[0].id == "u0"
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid JSON"):
        m[1]
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid JSON"):
        list(m)


def test_manifest_duplicates_and_missing_files(tmp_path: Path):
    row = '{"id": "x", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s"}'
    (tmp_path / "m.jsonl").write_text(row + "\n\n" + row + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:3: duplicate id 'x' \(first on line 1\)"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text(row + "\n")
    assert len(read_manifest(tmp_path / "m.jsonl")) == 1
    with pytest.raises(ManifestError, match=r"m.jsonl:1: audio file not found: .*a.flac"):
        read_manifest(tmp_path / "m.jsonl", check_files=True)


def test_the_data_checks_receptive_field_is_every_presets() -> None:
    """``RECEPTIVE_FIELD`` (the data checks', without a model) is the standard CNN's, which every preset has."""
    from earful.data.audio import RECEPTIVE_FIELD
    from earful.model import ModelConfig, load_model_config, model_presets

    assert RECEPTIVE_FIELD == ModelConfig().receptive_field
    assert {load_model_config(p).receptive_field for p in model_presets()} == {RECEPTIVE_FIELD}


def test_load_audio_resamples_and_downmixes(tmp_path: Path, tone):
    tone(tmp_path / "s.wav", 1.0, rate=44100, channels=2)
    x = load_audio(tmp_path / "s.wav")
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - 16000) <= 1
    with pytest.raises(AudioError, match=r"s.wav: sample rate 44100 Hz, expected 16000 Hz"):
        load_audio(tmp_path / "s.wav", resample=False)


def test_each_bad_file_gets_its_error(tmp_path: Path, tone):
    (tmp_path / "garbage.flac").write_bytes(b"this is not audio at all" * 10)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    bad = np.full(1000, 0.1, np.float32)
    bad[10] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    bad[10] = np.inf
    sf.write(tmp_path / "inf.wav", bad, 16000, subtype="FLOAT")
    tone(tmp_path / "short.flac", 0.01)  # 160 samples < 400
    cases = {
        "garbage.flac": "unreadable audio",
        "missing.flac": r"unreadable audio \(no such file\)",
        "empty.wav": "empty audio",
        "nan.wav": "NaN or infinite",
        "inf.wav": "NaN or infinite",
        "short.flac": "too short .160 samples",
    }
    for name, message in cases.items():
        with pytest.raises(AudioError, match=message) as info:
            load_audio(tmp_path / name)
        assert name in str(info.value)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("subtype", ["GSM610", "G721_32"])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_wav_codec_libsndfile_cannot_seek_in_is_read_whole_and_in_windows(tmp_path: Path, subtype: str, rate: int):
    """GSM 6.10 and G.721 WAVs decode but cannot seek: whole-file reads at 8 kHz had failed with soundfile's
    "frames must be specified for non-seekable files" (naming no file, past data.skip_bad), crops and segments
    with "Seek attempted on unseekable file type". They are now decoded from their start."""
    from earful.data.dataset import AudioDataset

    path = tmp_path / f"{subtype}.wav"
    sf.write(path, (0.4 * np.sin(np.arange(3 * rate) * 0.05)).astype(np.float32), rate, subtype=subtype)
    with sf.SoundFile(path) as f:
        assert not f.seekable()
        reference = np.concatenate([f.read(4096, dtype="float32") for _ in range(3 * rate // 4096 + 2)])
    whole = load_audio(path, target_rate=rate)
    assert np.array_equal(whole, reference)
    assert np.array_equal(load_audio(path, target_rate=rate, start=1000, frames=3000), reference[1000:4000])
    utts = [Utterance("whole", str(path), len(reference), rate, "s"),
            Utterance("segment", str(path), 3000, rate, "s", offset=1000)]
    data = AudioDataset(utts, crop_seconds=0.1, seed=3)
    for item, full in zip((data[0], data[1]), (load_audio(path), load_audio(path, start=1000, frames=3000)),
                          strict=True):
        assert len(item.wave) == 1600 and item.wave.tobytes() in full.tobytes()


def test_every_container_libsndfile_reads_is_prepared(tmp_path: Path):
    """NIST SPHERE (TIMIT, Switchboard), AU, Wave64, RF64 and CAF files were left out of a plain folder without a
    word: `prepare` now reads them as it reads WAV and FLAC."""
    from earful.data.librispeech import read_folder

    x = (0.2 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    kinds = {"a.sph": "NIST", "b.nist": "NIST", "c.au": "AU", "d.snd": "AU", "e.w64": "W64", "f.rf64": "RF64",
             "g.caf": "CAF", "h.wav": "WAV"}
    (tmp_path / "spk").mkdir()
    for name, container in kinds.items():
        sf.write(tmp_path / "spk" / name, x, 16000, format=container, subtype="PCM_16")
    problems: list[str] = []
    utts = read_folder(tmp_path, problems)
    assert problems == [] and sorted(Path(u.path).name for u in utts) == sorted(kinds)
    for u in utts:
        assert u.num_samples == 8000 and np.allclose(load_audio(u.path), x, atol=1e-4), u.path


def test_audio_libsndfile_cannot_decode_is_not_called_truncated(tmp_path: Path):
    """A whole AIFF in DWVW (libsndfile writes it, then cannot read it: every read seeks, and the seek fails) was
    reported as "truncated?". Now `prepare` says libsndfile cannot decode it; a FLAC cut short is still truncated."""
    from earful.data.librispeech import read_folder

    x = (0.2 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    (tmp_path / "spk").mkdir()
    sf.write(tmp_path / "spk" / "dwvw.aiff", x, 16000, format="AIFF", subtype="DWVW_16")
    sf.write(tmp_path / "spk" / "cut.flac", np.tile(x, 8), 16000, format="FLAC")
    data = (tmp_path / "spk" / "cut.flac").read_bytes()
    (tmp_path / "spk" / "cut.flac").write_bytes(data[:len(data) // 2])
    problems: list[str] = []
    assert read_folder(tmp_path, problems) == []
    assert len(problems) == 2, problems
    cut, dwvw = sorted(problems)  # by path: cut.flac, dwvw.aiff
    assert "dwvw.aiff: libsndfile cannot decode its audio (AIFF DWVW_16: " in dwvw and "truncated?" not in dwvw
    assert "cut.flac: " in cut and "truncated?" in cut


def test_what_is_given_for_a_manifest_and_is_none_is_named_with_what_to_do(tmp_path: Path, tone) -> None:
    """A folder gave "[Errno 21] Is a directory", an audio file "not valid UTF-8 ...; re-encode the manifest as
    UTF-8", a fairseq manifest "not valid JSON". Now each is named with what to do; a real manifest reads."""
    tone(tmp_path / "audio" / "spk" / "a.wav", 0.5)
    tone(tmp_path / "audio" / "spk" / "b.flac", 0.5)
    folder = tmp_path / "audio"
    with pytest.raises(ManifestError, match=rf"^{folder}: a folder, not a manifest \(JSON Lines, .*\); "
                                            rf"here: earful prepare {folder} OUT, then give OUT/audio.jsonl$"):
        read_manifest(tmp_path / "audio")
    for audio in ("a.wav", "b.flac"):
        with pytest.raises(ManifestError, match=r": an audio file, not a manifest \(JSON Lines, one utterance a line, "
                                                r"made by `earful prepare AUDIO_FOLDER OUT`\); `earful transcribe CKPT "
                                                r"FILE...` transcribes audio files$"):
            read_manifest(tmp_path / "audio" / "spk" / audio)
    renamed = tmp_path / "a.jsonl"  # by its first bytes, whatever its name
    renamed.write_bytes((tmp_path / "audio" / "spk" / "a.wav").read_bytes())
    with pytest.raises(ManifestError, match="an audio file, not a manifest"):
        read_manifest(renamed)
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"{tmp_path / 'audio'}\nspk/a.wav\t8000\nspk/b.flac\t8000\n")
    with pytest.raises(ManifestError, match=rf"^{tsv}: looks like a fairseq manifest \(an audio root, then "
                                            rf"PATH<TAB>SAMPLES lines\); earful reads its own \(JSON Lines.*\): "
                                            rf"earful prepare {tmp_path / 'audio'} OUT \(transcripts as a \.txt"):
        read_manifest(tsv)
    other = tmp_path / "other.jsonl"
    other.write_text("not json\n")
    with pytest.raises(ManifestError, match=rf"^{other}:1: not valid JSON"):  # nothing in particular: the row's error
        read_manifest(other)
    good = tmp_path / "good.jsonl"
    write_manifest([Utterance("a", str(tmp_path / "audio" / "spk" / "a.wav"), 8000, 16000, "spk", "hi\tthere")], good)
    assert read_manifest(good)[0].id == "a"


def test_a_manifest_resolves_paths_as_path_resolve_does_with_one_lstat_a_row(tmp_path: Path, monkeypatch):
    """Writing a manifest resolved every row's path whole (Path.resolve: an lstat a component) and deep-copied it
    (dataclasses.asdict): 85 % of the time, 36 s for LibriSpeech's 565 k rows. Folders are now resolved once a
    manifest; a row's path comes out as Path.resolve gives it: through a linked folder, a linked file, '..', '.',
    a relative path, a file that does not exist."""
    import os

    from earful.data import manifest

    (tmp_path / "audio" / "sub").mkdir(parents=True)
    for name in ("a.flac", "b.flac"):
        (tmp_path / "audio" / "sub" / name).touch()
    os.symlink(tmp_path / "audio", tmp_path / "linked")
    os.symlink(tmp_path / "audio" / "sub" / "b.flac", tmp_path / "audio" / "link.flac")
    (tmp_path / "real" / "deep" / "dir").mkdir(parents=True)
    (tmp_path / "real" / "deep" / "sub").mkdir()
    os.symlink(tmp_path / "real" / "deep" / "dir", tmp_path / "deeplink")  # its '..' is real/deep, not tmp_path
    monkeypatch.chdir(tmp_path / "audio")
    paths = [tmp_path / "linked" / "sub" / "a.flac", tmp_path / "audio" / "link.flac",
             tmp_path / "linked" / "sub" / ".." / "sub" / "b.flac", tmp_path / "audio" / "sub" / ".",
             tmp_path / "audio" / "sub" / "..", Path("sub/a.flac"), tmp_path / "linked" / "gone.flac",
             tmp_path / "deeplink" / ".." / "sub" / "a.flac", f"{tmp_path}/deeplink/../sub/a.flac",
             Path("../deeplink/../sub/x.flac"), f"{tmp_path}/audio/sub/a.flac/"]
    folders: dict[str, Path] = {}
    for p in paths:
        assert manifest.resolved(p, folders) == Path(p).resolve(), p
    with pytest.raises(ValueError):
        manifest.resolved(f"{tmp_path}/a\0.flac", folders)  # as Path.resolve
    calls = []
    real = manifest.Path.resolve
    monkeypatch.setattr(manifest.Path, "resolve", lambda self, *a: calls.append(self) or real(self, *a))
    rows = [Utterance(f"u{k}", str(tmp_path / "linked" / "sub" / "a.flac"), 16000, 16000, "s", intent={"x": "y"})
            for k in range(50)]
    write_manifest(rows, tmp_path / "m.jsonl")
    assert len(calls) <= 3  # the manifest's folder and the audio's, not one a row
    got = read_manifest(tmp_path / "m.jsonl")
    assert {u.path for u in got} == {str(tmp_path / "audio" / "sub" / "a.flac")} and got[0].intent == {"x": "y"}
    assert rows[0].intent == {"x": "y"}


def test_a_file_name_that_is_not_utf8_opens_and_round_trips_through_a_manifest(tmp_path: Path, tone, not_utf8):
    """``caf\\xe9.flac`` (Latin-1 bytes; Python names it ``caf\\udce9.flac``): soundfile encoded a ``str`` path
    strictly, so loading it, or the energy VAD, raised UnicodeEncodeError ("surrogates not allowed"), named no file
    and was no AudioError that --skip-bad leaves out; a manifest listing it could not be written. Now the path goes
    to soundfile as the file system's bytes, a manifest holds it as JSON escapes and reads back the same path, and
    a name no file can have here is an AudioError naming it by its repr."""
    n = tone(tmp_path / "x.flac", 0.5)
    cafe = not_utf8(tmp_path / "x.flac", b"caf\xe9.flac")
    assert os.fsencode(cafe).endswith(b"/caf\xe9.flac") and "caf\udce9.flac" in os.listdir(tmp_path)
    assert len(load_audio(cafe)) == n and audio_info(str(cafe)) == (n, 16000)
    assert len(frame_energies(cafe, 16000)[0]) == n // 320  # the energy VAD reads it
    utts = [Utterance("caf\udce9", str(cafe), n, 16000, "s", "CAF\u00c9")]
    write_manifest(utts, tmp_path / "m.jsonl")
    text = (tmp_path / "m.jsonl").read_text(encoding="utf-8")  # valid UTF-8: the surrogates as JSON escapes
    assert '"caf\\udce9"' in text and "caf\\udce9.flac" in text and "CAF\u00c9" in text  # other text as it is
    back = read_manifest(tmp_path / "m.jsonl", check_files=True)
    assert list(back) == utts and len(load_audio(back[0].path)) == n
    nameless = str(tmp_path / "x\ud800.flac")  # a surrogate os.fsencode cannot turn into bytes: no file's name
    for read in (load_audio, audio_info):
        with pytest.raises(AudioError, match=re.escape(f"{nameless!r}: unreadable audio (a file name this file "
                                                       "system cannot hold")):
            read(nameless)
    (tmp_path / "x.flac").write_bytes(b"this is not audio at all" * 10)
    broken = not_utf8(tmp_path / "x.flac", b"bro\xa0ken.flac")
    with pytest.raises(AudioError, match=re.escape(f"{str(broken)!r}: unreadable audio header (")) as info:
        load_audio(broken)
    assert str(info.value).encode("utf-8") and "b'" not in str(info.value)  # printable; soundfile's b'...' not shown
    with pytest.raises(AudioError, match=re.escape(f"{str(broken)!r}: unreadable audio (")):
        frame_energies(broken, 16000)


def _reference_digest(path: Path) -> dict:
    """The digest's rule as earful.data.digest's docstring states it, written plainly (one json.dumps a value)."""
    import hashlib
    import json

    from earful.data.digest import LABELS

    def canonical(obj: object) -> bytes:
        return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    h = {k: hashlib.sha256() for k in ("rows", "paths", "file", "audio", *LABELS)}
    for raw in path.read_bytes().splitlines(keepends=True):
        h["file"].update(raw)
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8-sig"))
        except ValueError:
            row = None
        if not isinstance(row, dict):
            for k in ("rows", "audio", *LABELS):
                h[k].update(raw.strip() + b"\n")
            continue
        h["paths"].update(json.dumps(row.pop("path", None), ensure_ascii=False).encode() + b"\n")
        h["rows"].update(canonical(row))
        h["audio"].update(canonical({k: v for k, v in row.items() if k not in LABELS}))
        for label in LABELS:
            h[label].update(canonical({"v": row.get(label)}))
    return {k: v.hexdigest() for k, v in h.items()}


def test_the_manifest_digest_is_its_stated_rule(tmp_path: Path):
    """The digest recorded in every run and study folder (a changed one refuses their resume): rows less their
    paths, canonical JSON, labels apart; pinned against a plain statement of the rule over odd rows (a byte-order
    mark, blank lines, lines that are no object, nested labels, non-ASCII text, rows with and without labels)."""
    import json

    from earful.data.digest import LABELS, manifest_digest

    m = tmp_path / "m.jsonl"
    rows = [{"id": "a", "path": "/x/é.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s",
             "transcript": "héllo ²"},
            {"id": "b", "path": None, "num_samples": 2, "sample_rate": 16000, "speaker": "t",
             "intent": {"z": "1", "a": "2"}, "phonemes": "a b"},
            {"path": {"q": 1}, "id": "c", "num_samples": 1.5, "x": [1, {"b": 2, "a": 1}]},
            {"id": "d", "path": "p", "num_samples": 3, "sample_rate": 8000, "offset": 4},
            {"id": "e", "path": "p", "speaker": None, "transcript": None}]
    text = "\ufeff" + "\n \n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n[1, 2]\nnot json\n"
    m.write_bytes(text.encode() + b"\xff\xfe\n")
    want, got = _reference_digest(m), manifest_digest(m)
    assert (got.rows, got.paths, got.file, got.audio) == (want["rows"], want["paths"], want["file"], want["audio"])
    assert got.labels == {label: want[label] for label in LABELS}


def test_a_long_manifest_read_shows_its_progress(tmp_path: Path, monkeypatch, capsys):
    """Reading and hashing a manifest of millions of rows takes minutes: a bar says how far they are (bytes),
    drawn only once a read has taken PROGRESS_AFTER_S (a small manifest shows nothing)."""
    from earful.data import manifest
    from earful.data.digest import manifest_digest

    utts = [Utterance(f"u{i}", "/x/a.flac", 16000, 16000, "s") for i in range(50)]
    write_manifest(utts, tmp_path / "small.jsonl")
    read_manifest(tmp_path / "small.jsonl")
    manifest_digest(tmp_path / "small.jsonl")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(manifest, "PROGRESS_AFTER_S", 0.0)  # as if the read were slow
    monkeypatch.setattr(manifest, "_BAR_EVERY", 8)
    write_manifest(utts, tmp_path / "long.jsonl")
    assert len(read_manifest(tmp_path / "long.jsonl")) == 50
    manifest_digest(tmp_path / "long.jsonl")
    err = capsys.readouterr().err
    assert "reading long.jsonl" in err and "hashing long.jsonl" in err


@pytest.mark.parametrize("subtype", ["GSM610", "G721_32"])
def test_the_header_check_reads_a_wav_codec_libsndfile_cannot_seek_in(tmp_path: Path, subtype: str):
    """``check_headers`` (what evaluate and an evaluation loader run first) sought to each row's last sample: a GSM
    6.10 or G.721 WAV, which the loader reads from its start, was refused as truncated ("Seek attempted on
    unseekable file type"). It is now decoded up to that sample; one cut short is still refused."""
    from earful.data.dataset import AudioDataset, check_headers

    path = tmp_path / f"{subtype}.wav"
    sf.write(path, (0.4 * np.sin(np.arange(16000) * 0.05)).astype(np.float32), 16000, subtype=subtype)
    n = sf.info(path).frames
    rows = [Utterance("whole", str(path), n, 16000, "s"),
            Utterance("segment", str(path), 4000, 16000, "s", offset=2000)]
    check_headers(rows, "m.jsonl")
    assert [len(AudioDataset(rows)[k].wave) for k in range(2)] == [n, 4000]
    cut = tmp_path / f"cut-{subtype}.wav"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # an interrupted copy: the header promises n
    with pytest.raises(AudioError, match=r"cut-.*\.wav: .*truncated"):
        check_headers([Utterance("cut", str(cut), n, 16000, "s")])


def test_a_files_segments_cost_one_lstat_when_their_manifest_is_written(tmp_path: Path, monkeypatch):
    """Libri-light's 16 M segment rows share ~220 k files, ~70 consecutive rows a file: each row's path was
    resolved again (an lstat and a Path a row, three quarters of writing a segment manifest; on a cluster's
    network file system an lstat is a round trip). The rows come out as before."""
    import os

    from earful.data import manifest

    (tmp_path / "audio").mkdir()
    files = [tmp_path / "audio" / f"f{k}.flac" for k in range(3)]
    for f in files:
        f.touch()
    os.symlink(files[2], tmp_path / "audio" / "link.flac")
    rows = [Utterance(f"{k}-{j:04d}", str(f), 32000, 16000, "s", offset=j * 40000)
            for k, f in enumerate([*files, tmp_path / "audio" / "link.flac", files[0]]) for j in range(50)]
    lstats = []
    real = os.path.islink
    monkeypatch.setattr(manifest.os.path, "islink", lambda p: lstats.append(p) or real(p))
    write_manifest(rows, tmp_path / "m.jsonl")
    assert len(lstats) == 5  # a run of rows of one file: one
    got = list(read_manifest(tmp_path / "m.jsonl"))
    assert [u.path for u in got] == [str(Path(u.path).resolve()) for u in rows]
    assert [(u.id, u.offset) for u in got] == [(u.id, u.offset) for u in rows]
