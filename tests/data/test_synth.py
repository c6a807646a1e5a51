import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earful.data.librispeech import discover
from earful.data.manifest import read_manifest
from earful.data.phonemes import PHONEMES, phonemize
from earful.data.synth import BASE_VOICES, speaker_voices, synthesize
from earful.data.textpool import INTENT_SLOTS, command_intent, load_pool, normalise_sentence, sentences

SMALL = dict(hours=0.01, dev_hours=0.003, test_hours=0.003, labelled_fraction=0.5, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    return out, synthesize(out, seed=3, workers=2, **SMALL)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.flac")) + sorted(root.rglob("*.trans.txt")):
        h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_splits_speakers_and_durations(corpus):
    out, summary = corpus
    splits = {name: read_manifest(out / "manifests" / f"{name}.jsonl", check_files=True)
              for name in ("train", "dev", "test", "labelled-10min", "labelled-1h", "labelled-10h")}
    assert all(splits.values())
    train_h = sum(u.seconds for u in splits["train"]) / 3600
    assert 0.6 * SMALL["hours"] < train_h < 1.5 * SMALL["hours"]
    assert summary["splits"]["train"]["hours"] == pytest.approx(train_h)
    ids = {k: {u.id for u in v} for k, v in splits.items()}
    assert ids["labelled-10min"] < ids["labelled-1h"] < ids["labelled-10h"]  # nested
    assert not ids["labelled-10h"] & ids["train"] and not ids["dev"] & ids["test"]
    assert len({u.speaker for u in splits["dev"]}) >= 4 and len({u.speaker for u in splits["test"]}) >= 4
    for u in splits["train"][:5] + splits["test"][:5]:
        info = sf.info(u.path)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        assert info.frames == u.num_samples and 0.5 < u.seconds < 8
        assert re.fullmatch(r"[A-Z' ]+", u.transcript)
    # the layouts read back as LibriSpeech splits and Libri-light label sets
    read = discover(out)
    assert {u.id for u in read["labelled-1h"]} == ids["labelled-1h"]
    assert {u.id: u.transcript for u in read["train"]} == {u.id: u.transcript for u in splits["train"]}


def test_held_out_voices_absent_from_training(corpus):
    out, summary = corpus
    voices = speaker_voices(out)
    used = {name: {voices[u.speaker] for u in read_manifest(out / "manifests" / f"{name}.jsonl")}
            for name in ("train", "labelled-10h", "dev", "test")}
    seen = used["train"] | used["labelled-10h"]
    assert used["test"] and not used["test"] & seen
    assert used["dev"] and not used["dev"] & seen and not used["dev"] & used["test"]
    assert set(summary["held_out_voices"]["test"]) >= used["test"]
    assert all(v in BASE_VOICES for v in voices.values())


def test_bit_identical_for_a_seed_whatever_the_workers(corpus, tmp_path: Path):
    out, _ = corpus
    again = tmp_path / "again"
    synthesize(again, seed=3, workers=1, **SMALL)
    assert digest(again) == digest(out)


def test_text_domains_and_normalisation():
    rng = np.random.default_rng(0)
    for domain in ("commands", "open"):
        for s in sentences(domain, rng, 50):
            assert re.fullmatch(r"[A-Z]+(?:'[A-Z]+)*(?: [A-Z]+(?:'[A-Z]+)*)*", s), s
    assert len(load_pool()) > 10000
    assert normalise_sentence("And God said, Let there be light: and there wasn't.") == \
        "AND GOD SAID LET THERE BE LIGHT AND THERE WASN'T"
    assert normalise_sentence("He paid 12 shillings for it") is None
    assert normalise_sentence("The NATO summit was long today") is None
    with pytest.raises(ValueError, match="unknown text domain"):
        sentences("poetry", rng, 1)


def test_rebuilding_the_pool_writes_it_whole_or_not_at_all(tmp_path: Path, monkeypatch, caplog):
    """``python -m earful.data.textpool``: the gzipped pool of the sources' sentences, logged; a failure while
    writing leaves no partial file (it had been written in place)."""
    import gzip
    import logging

    from earful.data import textpool

    source = tmp_path / "book.txt"
    source.write_text("And God said, Let there be light: and there was light. He paid 12 shillings for it.\n")
    out = tmp_path / "pool.txt.gz"
    with caplog.at_level(logging.INFO):
        textpool.main([str(out), str(source)])
    assert gzip.decompress(out.read_bytes()).decode() == "AND GOD SAID LET THERE BE LIGHT\nAND THERE WAS LIGHT\n"
    assert f"2 sentences -> {out}" in caplog.text
    monkeypatch.setattr(textpool, "build_pool", lambda texts: ["CAFÉ AU LAIT"])  # not ASCII: fails mid-write
    failed = tmp_path / "failed.txt.gz"
    with pytest.raises(UnicodeEncodeError):
        textpool.main([str(failed), str(source)])
    assert sorted(tmp_path.iterdir()) == sorted([source, out])  # no failed.txt.gz, no temporary file


# The audio and transcripts of this corpus (seed 3, SMALL): they must not change unawares, the demo's numbers
# depend on them. Written before phonemes and intents were recorded (commit 9f319ee), changed once since, when the
# labelled folds took speakers of their own (the 1 h set had held the 10 min set's; the demo re-measured with it).
# (espeak-ng 1.52.0 from espeakng-loader; another espeak-ng speaks differently, and this digest with it.)
BEFORE_PHONEMES = "66ea0a393c76224a37edefb978d97344da33d38b1db744ed13d8f437083177a9"


def test_the_one_hour_folds_hold_speakers_of_their_own():
    """Each of the six 1 h folds started its speaker rotation at the training pool's first, so the 1 h set held
    exactly the 10 min set's speakers (the demo's: 4 and 4); Libri-light's folds are six sets of data."""
    from earful.data.synth import plan_corpus

    plan = plan_corpus(1.5, domain="commands", seed=0, labelled_fraction=0.067)
    speaker = {job.uid: job.speaker.id for job in plan.jobs}
    sets = {name: {speaker[u] for u in plan.split_of[name]} for name in ("labelled-10min", "labelled-1h")}
    assert sets["labelled-10min"] < sets["labelled-1h"] and len(sets["labelled-1h"]) >= 4 * len(sets["labelled-10min"])


def test_audio_and_transcripts_as_before_phonemes_and_intents(corpus):
    out, _ = corpus
    assert digest(out) == BEFORE_PHONEMES


def test_phonemes_spoken_and_intents_beside_each_transcript(corpus):
    out, _ = corpus
    utts = {u.id: u for name in ("train", "dev", "test", "labelled-10h")
            for u in read_manifest(out / "manifests" / f"{name}.jsonl")}
    for u in utts.values():
        assert set(u.phonemes.split()) <= set(PHONEMES) and len(u.phonemes.split()) >= 2, u
        assert u.intent == command_intent(u.transcript)
    sidecars = sorted(out.rglob("*.trans.txt"))
    assert sidecars
    for trans in sidecars:
        ids = [line.split(" ", 1)[0] for line in trans.read_text().splitlines()]
        phon = dict(line.split(" ", 1) for line in trans.with_name(trans.name.replace(".trans.", ".phonemes."))
                    .read_text(encoding="utf-8").splitlines())
        intents = dict(line.split(" ", 1) for line in trans.with_name(trans.name.replace(".trans.", ".intents."))
                       .read_text().splitlines())
        assert list(phon) == ids == list(intents)
        for i in ids:
            assert phon[i] == utts[i].phonemes
            assert intents[i] == " ".join(utts[i].intent[s] for s in INTENT_SLOTS)
    # what espeak-ng spoke is its G2P of the transcript in the speaker's voice: one inventory for both
    voices = speaker_voices(out)
    for u in list(utts.values())[:: max(1, len(utts) // 5)]:
        assert phonemize([u], "test", voice=voices[u.speaker])[0].phonemes == u.phonemes


def test_open_domain_has_phonemes_and_no_intents(tmp_path: Path):
    summary = synthesize(tmp_path, domain="open", seed=1, workers=1, hours=0.004, dev_hours=0.002,
                         test_hours=0.002, labelled_fraction=0.5, progress=False)
    assert summary["domain"] == "open"
    utts = read_manifest(tmp_path / "manifests" / "train.jsonl")
    assert utts and all(u.phonemes and u.intent is None for u in utts)
    assert '"intent"' not in (tmp_path / "manifests" / "train.jsonl").read_text(encoding="utf-8")
    assert not list(tmp_path.rglob("*.intents.txt"))


def test_what_a_scottish_voice_spoke_is_folded_by_its_phonemes(tmp_path: Path):
    """en-gb-scotland's ``e`` is three phonemes (happY, NURSE, SQUARE): its spoken labels were all /iː/. Now each is
    its own, as the G2P of the transcript in that voice gives them. (In a child process: this one keeps from
    espeak-ng.)"""
    import multiprocessing as mp
    from dataclasses import replace

    from earful.data.manifest import Utterance
    from earful.data.phonemes import fold
    from earful.data.synth import Job, _synth_chunk, plan_corpus

    spk = plan_corpus(0.01, domain="open", seed=3).speakers["train"][0]
    scot, us = replace(spk, voice="en-gb-scotland+m3"), replace(spk, voice="en-us+f2")
    text = "THERE ON THE EARTH HER CITY WAS HEARD"
    jobs = [Job("1-1-0000", "1/1/1-1-0000.flac", text, scot, (3, 3, 0, 0)),
            Job("1-1-0001", "1/1/1-1-0001.flac", "TURN ON THE LIGHTS", us, (3, 3, 0, 1))]
    with mp.get_context("spawn").Pool(1) as pool:
        done = pool.apply(_synth_chunk, ((jobs, str(tmp_path), False),))
    uid, n, names, mnemonics = done[0]
    labels = " ".join(fold(names, uid, scot.voice, mnemonics))
    assert labels == "ð ɛ ɹ ɑː n ð ɪ ɜː θ h ɜː s ɪ t iː w ɑː z h ɜː d"
    assert labels == phonemize([Utterance(uid, "x", n, 16000, "1", text)], "t", voice=scot.voice)[0].phonemes
    assert done[1][3] is None  # en-us: its IPA names are enough


def test_a_rebuild_in_the_folder_of_another_leaves_none_of_its_files(tmp_path: Path):
    """A build written into the folder of an earlier, bigger one of the other domain: the earlier build's audio and
    sidecars are gone (read back as LibriSpeech they came back beside the new corpus, under its dev speakers' ids,
    and its intents stayed beside the new transcripts); a folder `earful synth` did not make is refused."""
    small = dict(dev_hours=0.002, test_hours=0.002, labelled_fraction=0.5, workers=1, progress=False)
    synthesize(tmp_path, hours=0.02, domain="commands", seed=1, **small)
    synthesize(tmp_path, hours=0.004, domain="open", seed=2, **small)
    ids = {u.id for name in ("train", "dev", "test", "labelled-10h")
           for u in read_manifest(tmp_path / "manifests" / f"{name}.jsonl")}
    assert {p.stem for p in tmp_path.rglob("*.flac")} == ids
    assert not list(tmp_path.rglob("*.intents.txt"))
    read = discover(tmp_path)
    assert {u.id for u in read["train"]} == {u.id for u in read_manifest(tmp_path / "manifests" / "train.jsonl")}
    other = tmp_path / "other"
    (other / "train" / "7" / "1").mkdir(parents=True)
    (other / "train" / "7" / "1" / "7-1-0000.flac").write_bytes(b"")
    with pytest.raises(ValueError, match="not a folder `earful synth` made"):
        synthesize(other, hours=0.004, seed=2, **small)
    assert (other / "train" / "7" / "1" / "7-1-0000.flac").exists()


def test_what_a_build_writes_is_what_its_one_naming_rule_names(corpus):
    """The audio and sidecars a build writes, and what a rebuild keeps (_clear_stale, which had restated the
    sidecars' names and which of them a domain has), are named by one rule: sidecar and sidecar_kinds."""
    from earful.data.synth import CORPUS_FOLDERS, _clear_stale, plan_corpus, sidecar, sidecar_kinds

    out, _ = corpus
    plan = plan_corpus(seed=3, **{k: v for k, v in SMALL.items() if k != "progress"})
    named = {Path(j.relpath) for j in plan.jobs} | {sidecar(j, kind) for j in plan.jobs
                                                     for kind in sidecar_kinds("commands")}

    def written() -> set[Path]:
        return {p.relative_to(out) for top in CORPUS_FOLDERS for p in (out / top).rglob("*") if p.is_file()}

    assert written() == named
    assert {p.name.split(".", 1)[1] for p in named} == {"flac", "trans.txt", "phonemes.txt", "intents.txt"}
    assert sidecar_kinds("open") == ("trans", "phonemes")
    _clear_stale(out, plan)
    assert written() == named


@pytest.mark.parametrize("bad, message", [
    (dict(hours=float("nan")), "hours nan"), (dict(hours=float("inf")), "hours inf"),
    (dict(labelled_fraction=0.0), "labelled fraction 0.0"), (dict(dev_hours=-1.0), "dev hours -1.0"),
    (dict(test_hours=0.0), "test hours 0.0"), (dict(seed=-1), "seed -1"),
])
def test_plan_refuses_what_makes_no_corpus(bad, message):
    from earful.data.synth import plan_corpus

    with pytest.raises(ValueError, match=message):
        plan_corpus(**{"hours": 0.01, **bad})


def test_the_same_corpus_where_espeak_ng_has_spoken_in_this_process(corpus, tmp_path: Path):
    """Forked from a process that had used espeak-ng, the workers inherited its state: the same seed gave other
    audio (measured: another digest), so synthesize() refused to run there. Its workers come from a fork server
    now: the same files. A worker that finds espeak-ng used in it (a fork server whose main module used it) refuses
    its chunk. In children, so that this process stays clean: a fresh interpreter (the fork server) and a fork of
    this process (``spawn``: a forked process cannot use the fork server its parent started)."""
    import multiprocessing as mp
    import os
    import subprocess
    import sys

    from earful.data.synth import _synth_chunk

    script = ("import sys\n"
              "from earful.data.espeak import Espeak\n"
              "from earful.data.synth import synthesize\n"
              "if __name__ == '__main__':\n"
              "    Espeak().synth('hello there', 'en-us', wpm=170, pitch=50, pitch_range=50)\n"
              f"    synthesize(sys.argv[1], seed=3, workers=2, **{SMALL!r})\n")
    (tmp_path / "run.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "fresh")], check=True, env=env,
                   timeout=300)
    assert digest(tmp_path / "fresh") == digest(corpus[0])

    def child(q):
        from earful.data.espeak import Espeak

        Espeak().synth("hello there", "en-gb-scotland", wpm=170, pitch=50, pitch_range=50)
        try:
            synthesize(tmp_path / "again", seed=3, workers=1, **SMALL)
            q.put(digest(tmp_path / "again"))
        except RuntimeError as e:
            q.put(str(e))
        try:
            _synth_chunk(([], str(tmp_path), False))
            q.put("a worker synthesised")
        except RuntimeError as e:
            q.put(str(e))

    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=child, args=(q,))
    p.start()
    p.join(300)
    assert q.get(timeout=1) == digest(corpus[0])
    assert "a synthesis worker started with espeak-ng already used in it" in q.get(timeout=1)


def test_a_script_that_synthesises_without_a_main_guard_gets_an_error_not_a_hang(tmp_path: Path):
    """Each worker imports the caller's main module: a script that synthesises at its top level synthesised again
    in every worker, which died starting its own, and the pool started another for ever (hundreds of tracebacks a
    second). The first worker to die stops the build, naming the `if __name__ == '__main__':` guard."""
    import os
    import subprocess
    import sys

    (tmp_path / "run.py").write_text("import sys\nfrom earful.data.synth import synthesize\n"
                                     f"synthesize(sys.argv[1], seed=3, workers=2, **{SMALL!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "out")], env=env, timeout=240,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "if __name__ == '__main__':" in done.stderr and "a synthesis worker died" in done.stderr
