"""One phoneme inventory for what espeak-ng speaks and what it reads (`earful phonemize`), and the intent slots of
the `commands` grammar."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from earful.cli import main
from earful.data.manifest import ManifestError, Utterance, read_manifest, write_manifest
from earful.data.phonemes import FOLD, PHONEMES, fold, parse, phonemize
from earful.data.textpool import INTENT_SLOTS, command_intent, sentences


def utt(uid: str, transcript: str | None) -> Utterance:
    return Utterance(uid, f"/audio/{uid}.flac", 16000, 16000, "s1", transcript)


def test_fold_maps_every_accent_name_into_the_inventory():
    assert len(PHONEMES) == len(set(PHONEMES)) == 40
    assert all(set(v) <= set(PHONEMES) for v in FOLD.values())
    assert not set(FOLD) & set(PHONEMES)
    # stress marks and pauses go; accent variants and r-coloured vowels fold
    assert fold(["ˈɔː", "", "ɹ", "ɾ", "ˌɚ", "ɔːɹ", "ʲ"], "u1") == ["ɔː", "ɹ", "t", "ɜː", "ɔː", "ɹ"]
    with pytest.raises(ValueError, match=r"u7: espeak-ng phoneme 'ǃ' is not in earful's inventory"):
        fold(["k", "ǃ"], "u7")


def test_scottish_e_is_folded_by_the_phoneme_it_names():
    """en-gb-scotland writes ``e`` for its happY, NURSE and SQUARE vowels (espeak-ng's i, 3: and e@): all three were
    labelled /iː/ (*there*, *earth*, *her*, *heard* with FLEECE); now each is its phoneme's, as in en-us."""
    text = "THERE ON THE EARTH HER CITY WAS HEARD"
    out = phonemize([utt("a", text)], "m.jsonl", voice="en-gb-scotland+m3")[0].phonemes
    assert out == "ð ɛ ɹ ɑː n ð ɪ ɜː θ h ɜː s ɪ t iː w ɑː z h ɜː d"
    # folded by its mnemonic (stress marks of either kind dropped); without one, or another voice's, an error
    assert fold(["ð", "ˈe", "r", "e", "ˌe"], "u1", "en-gb-scotland+f2", ["D", "'e@", "r", "3:", ",i"]) == \
        ["ð", "ɛ", "ɹ", "ɜː", "iː"]
    with pytest.raises(ValueError, match=r"u2: espeak-ng phoneme 'e' of en-gb-scotland\+f2 stands for several"):
        fold(["ð", "ˈe"], "u2", "en-gb-scotland+f2")
    with pytest.raises(ValueError, match=r"u3: espeak-ng phoneme 'e' \('E'\) of en-gb-scotland is not in"):
        fold(["e"], "u3", "en-gb-scotland", ["E"])
    with pytest.raises(ValueError, match=r"u4: espeak-ng phoneme 'e' is not in earful's inventory"):
        fold(["e"], "u4", "en-us")


def test_parse_names_the_utterance_with_a_foreign_symbol():
    assert parse("k ɔː l", "m.jsonl: utterance 'a'") == ["k", "ɔː", "l"]
    with pytest.raises(ValueError, match=r"utterance 'b'.*AA.*earful phonemize"):
        parse("k AA l", "m.jsonl: utterance 'b'")


def test_phonemize_uses_espeak_g2p_in_the_inventory():
    out = phonemize([utt("a", "TURN OFF THE LIGHT"), utt("b", "CALL TWO")], "m.jsonl")
    assert out[0].phonemes == "t ɜː n ɔː f ð ə l aɪ t"
    assert out[1].phonemes == "k ɔː l t uː"
    assert out[0].transcript == "TURN OFF THE LIGHT"  # the rest of the row is kept


@pytest.mark.parametrize("transcript, message", [
    (None, r"m.jsonl: utterance 'bad' has no transcript to phonemize"),
    ("  ", r"m.jsonl: utterance 'bad' has no transcript to phonemize"),
    ("???", r"m.jsonl: utterance 'bad': espeak-ng found no phonemes in '\?\?\?'"),
    ("TURN\x00OFF", r"m.jsonl: utterance 'bad': its transcript holds a control character U\+0000 at character 4"),
    ("TURN\x1bOFF", r"m.jsonl: utterance 'bad': its transcript holds a control character U\+001B"),
])
def test_phonemize_names_the_utterance_it_cannot_phonemize(transcript, message):
    with pytest.raises(ValueError, match=message):
        phonemize([utt("good", "HELLO"), utt("bad", transcript)], "m.jsonl")


@pytest.mark.parametrize("voice", ["fr", "de+m3", "mb-en1"])
def test_phonemize_refuses_a_voice_that_is_not_english(voice: str):
    """`earful phonemize --voice fr` failed on the first phoneme outside the English inventory, naming the phoneme
    ("'(en)' is not in earful's inventory") and not the voice."""
    with pytest.raises(ValueError, match=re.escape(f"voice {voice!r}: not an English voice; earful's 40-phoneme "
                                                   "inventory is English: give an English accent (en-us, en-gb")):
        phonemize([utt("u", "bonjour")], "m.jsonl", voice=voice)


@pytest.mark.parametrize(("voice", "same_as"), [("EN-US", "en-us"), ("gmw/en-US+m3", "en-us"),
                                               ("EN-GB-SCOTLAND", "en-gb-scotland")])
def test_phonemize_takes_an_english_voice_as_espeak_ng_names_it(voice: str, same_as: str):
    """espeak-ng takes a voice in any case and with its language family (gmw/en-US): `--voice EN-US` was refused
    as not an English voice."""
    text = [utt("a", "TURN OFF THE LIGHT"), utt("b", "THE HAPPY BIRD SAT THERE")]
    assert ([u.phonemes for u in phonemize(text, "m.jsonl", voice=voice)]
            == [u.phonemes for u in phonemize(text, "m.jsonl", voice=same_as)])


def test_phonemize_command_writes_the_manifest_with_phonemes(tmp_path: Path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_manifest([utt("a", "HELLO WORLD"), utt("b", "GOOD MORNING")], src)
    assert '"phonemes"' not in src.read_text(encoding="utf-8")  # unset optional fields are not written
    assert main(["phonemize", str(src), "--out", str(dst)]) == 0
    got = read_manifest(dst)
    assert [u.id for u in got] == ["a", "b"] and all(set(parse(u.phonemes, u.id)) <= set(PHONEMES) for u in got)
    assert [(u.transcript, u.path) for u in got] == [(u.transcript, u.path) for u in read_manifest(src)]
    write_manifest([utt("c", None)], src)
    assert main(["phonemize", str(src), "--out", str(dst)]) == 2  # a clear error, not a traceback
    assert read_manifest(dst)[0].id == "a"  # the earlier output is untouched


def test_phonemize_in_place_keeps_relative_paths_relative(tmp_path: Path):
    """`earful phonemize M --out M` on a corpus of `earful synth` (rows relative to the manifest's folder, so the
    corpus can be moved) wrote every path absolute: the corpus could no longer be moved. Rows relative in the input
    stay relative, to the output's folder; absolute ones stay absolute."""
    corpus = tmp_path / "corpus"
    m = corpus / "manifests" / "m.jsonl"
    rows = [utt("a", "HELLO WORLD"), utt("b", "GOOD MORNING")]
    write_manifest([replace(rows[0], path=str(corpus / "audio" / "a.flac")), rows[1]], m, relative_to=corpus)
    assert [json.loads(line)["path"] for line in m.read_text().splitlines()] == ["../audio/a.flac", "/audio/b.flac"]
    assert main(["phonemize", str(m), "--out", str(m)]) == 0
    assert [json.loads(line)["path"] for line in m.read_text().splitlines()] == ["../audio/a.flac", "/audio/b.flac"]
    assert all(u.phonemes for u in read_manifest(m))
    elsewhere = tmp_path / "out" / "deeper" / "m.jsonl"  # another folder: relative to it
    assert main(["phonemize", str(m), "--out", str(elsewhere)]) == 0
    assert [json.loads(line)["path"] for line in elsewhere.read_text().splitlines()] == [
        "../../corpus/audio/a.flac", "/audio/b.flac"]
    moved = tmp_path / "moved"
    corpus.rename(moved)
    assert read_manifest(moved / "manifests" / "m.jsonl")[0].path == str(moved / "audio" / "a.flac")


def test_manifest_checks_the_probe_fields(tmp_path: Path):
    row = {"id": "a", "path": "a.flac", "num_samples": 1, "sample_rate": 16000, "speaker": "s"}
    for bad, field in [({"phonemes": ["k"]}, "phonemes"), ({"intent": {"action": 1}}, "intent")]:
        (tmp_path / "m.jsonl").write_text(json.dumps({**row, **bad}) + "\n")
        with pytest.raises(ManifestError, match=rf"m.jsonl:1: field '{field}'"):
            read_manifest(tmp_path / "m.jsonl")


def test_every_command_has_its_slots():
    seen = set()
    for text in sentences("commands", np.random.default_rng(0), 2000):
        intent = command_intent(text)
        assert list(intent) == list(INTENT_SLOTS)
        seen.add(intent["action"])
    assert seen == {"dictate", "call", "move", "pick_up", "put", "turn_on", "turn_off", "set"}
    assert command_intent("TURN OFF THE LIGHT IN THE KITCHEN") == {
        "action": "turn_off", "object": "light", "location": "kitchen"}
    assert command_intent("PUT THE RED BOX ON THE BLUE CUP") == {"action": "put", "object": "box", "location": "cup"}
    with pytest.raises(ValueError, match="not a sentence of the commands grammar"):
        command_intent("AND GOD SAID LET THERE BE LIGHT")
