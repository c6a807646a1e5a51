"""``earful evaluate`` on a CTC model whose output is fixed: files, WER / CER, LM decoding, vocabularies; and on a
fine-tuned one, the same transcripts one utterance at a time and in 200 s batches."""

from __future__ import annotations

import json
import re
import shlex
import shutil

import numpy as np
import pytest
import torch

from earful.checkpoint import load_model, save_model
from earful.data.manifest import read_manifest, write_manifest
from earful.eval.beam import flashlight_available
from earful.eval.decode import greedy_decode
from earful.eval.evaluate import evaluate, vocab_from_checkpoint
from earful.eval.vocab import CharVocab
from earful.model import Wav2Vec2ForCTC, load_model_config

V = CharVocab()


@pytest.fixture(scope="module")
def always_a(tmp_path_factory):
    """A CTC checkpoint that says 'a' on every frame, whatever it hears: every hypothesis is 'a'."""
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(load_model_config("tiny"), len(V))
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[V.index("a")] = 10.0
    path = tmp_path_factory.mktemp("ckpt") / "always-a"
    save_model(path, model, vocab=V.to_dict())
    return path


def write_split(root, name: str, transcripts: list[str | None]):
    import soundfile as sf

    from earful.data.manifest import Utterance, write_manifest

    root.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(len(transcripts))
    utts = []
    for i, text in enumerate(transcripts):
        n = 16000 * (1 + i % 3) // 2  # 0.5-1.5 s
        path = root / f"{name}-{i}.wav"
        sf.write(path, (0.1 * rs.randn(n)).astype(np.float32), 16000)
        utts.append(Utterance(f"{name}-{i}", str(path), n, 16000, "s", text))
    manifest = root / f"{name}.jsonl"
    write_manifest(utts, manifest)
    return manifest


FP32 = {"precision": "fp32", "device_seconds": 200.0}  # what each split's entries record, by default
FP32_1_2 = {**FP32, "device_seconds": 1.2}


def test_greedy_scores_and_files(tmp_path, always_a) -> None:
    a = write_split(tmp_path / "data", "clean", ["A", "B C"])  # 'a' vs 'a' and 'b c'
    b = write_split(tmp_path / "data", "other", ["a a a", "x", "a"])
    out = tmp_path / "eval"
    summary = evaluate(always_a, [a, b], out, device_seconds=1.2)  # every utterance fits, even the 1.5 s ones
    clean, other = summary["splits"]["clean"]["greedy"], summary["splits"]["other"]["greedy"]
    # clean: words 0 + (1 sub + 1 del) over 1 + 2; chars 0 + (1 sub + 2 del) over 1 + 3
    assert clean == {"utterances": 2, "wer": pytest.approx(2 / 3), "cer": pytest.approx(3 / 4), **FP32_1_2}
    # other: 'a a a' -> 2 del of 3 (5 chars: 4 del); 'x' -> 1 sub (1 char: 1 sub); 'a' -> 0
    assert other == {"utterances": 3, "wer": pytest.approx(3 / 5), "cer": pytest.approx(5 / 7), **FP32_1_2}
    rows = [json.loads(x) for x in (out / "clean.greedy.jsonl").read_text().splitlines()]
    assert [(r["id"], r["hyp"], r["ref"], r["word_errors"]) for r in rows] == [
        ("clean-0", "a", "a", 0), ("clean-1", "a", "b c", 2)]
    detail = json.loads((out / "other.greedy.summary.json").read_text())
    assert detail["words"]["deletions"] == 2 and detail["split"] == "other" and detail["decoder"] == "greedy"
    assert json.loads((out / "summary.json").read_text()) == summary


def test_an_utterance_longer_than_device_seconds_gets_a_batch_of_its_own(tmp_path, always_a, monkeypatch) -> None:
    """The budget stays ``device_seconds`` for the whole manifest (one long utterance does not enlarge every
    batch, so a lower --device-seconds after an out-of-memory error takes effect); the long one is scored whole,
    alone; the scores are those of batches that hold everything."""
    import earful.eval.evaluate as E

    m = write_split(tmp_path / "data", "long", ["a", "b", "a b"] * 3)  # 0.5, 1, 1.5 s, three times
    batches: list[tuple[list[str], int]] = []
    real = E.make_loader

    def spy(*args, **kwargs):
        for batch in real(*args, **kwargs):
            batches.append((sorted(batch.ids), batch.wave.shape[1]))
            yield batch

    monkeypatch.setattr(E, "make_loader", spy)
    small = evaluate(always_a, [m], tmp_path / "small", device_seconds=1.2)
    assert sorted(i for ids, _ in batches for i in ids) == sorted(f"long-{i}" for i in range(9))  # each once
    assert all((([f"long-{i}"], 24000) in batches) for i in (2, 5, 8))  # 1.5 s: whole, alone
    assert all(len(ids) * samples <= 1.2 * 16000 for ids, samples in batches if len(ids) > 1)
    assert sorted(len(ids) for ids, _ in batches if "long-0" in ids or "long-3" in ids or "long-6" in ids) == [1, 2]
    batches.clear()
    large = evaluate(always_a, [m], tmp_path / "large", device_seconds=200)
    assert len(batches) == 1
    assert small["splits"]["long"]["greedy"] == {**large["splits"]["long"]["greedy"], "device_seconds": 1.2}


def test_a_progress_bar_counts_each_splits_utterances(tmp_path, always_a, monkeypatch, caplog) -> None:
    """`earful evaluate` of 3000 utterances said nothing until its summary (minutes on a CPU, more with an LM). Now
    each split has a bar over its utterances, updated batch by batch (on a terminal: under pytest stderr is none,
    so the bar is made to show here), and a log line as it starts."""
    import io
    import logging

    from tqdm import tqdm

    import earful.eval.evaluate as E

    bars, updates = [], []

    def shown(**kwargs):
        assert kwargs.get("disable") is None and kwargs.get("dynamic_ncols")  # off without a terminal, as elsewhere
        bar = tqdm(**{**kwargs, "disable": False, "file": io.StringIO()})
        updates.append([])
        update = bar.update
        bar.update = lambda n=1: updates[-1].append(n) or update(n)
        bars.append(bar)
        return bar

    monkeypatch.setattr(E, "tqdm", shown, raising=False)  # the bar evaluate makes
    a = write_split(tmp_path / "data", "clean", ["a", "b", "c", "a b", "c"])  # 0.5, 1, 1.5, 0.5, 1 s
    b = write_split(tmp_path / "data", "other", ["a", "b"])
    with caplog.at_level(logging.INFO, "earful"):
        evaluate(always_a, [a, b], tmp_path / "eval", device_seconds=1.5)  # several batches a split
    assert [(bar.desc, bar.total, bar.n) for bar in bars] == [("evaluate clean", 5, 5), ("evaluate other", 2, 2)]
    assert len(updates[0]) > 1 and sum(updates[0]) == 5  # a batch at a time
    assert "clean: transcribing 5 utterances (0.00 h of audio), greedy" in caplog.text


@pytest.mark.parametrize("world_size", [1, 2])
def test_scoring_budget_packs_to_device_seconds_and_admits_the_longest_whole(world_size) -> None:
    """What ``evaluate`` and fine-tuning's dev loader batch with: nothing left out, cropped or repeated."""
    from earful.data.manifest import Utterance, lengths_at_rate
    from earful.data.sampler import SecondsBatchSampler
    from earful.eval.decode import scoring_budget

    utts = [Utterance(f"u{i}", "x.wav", n, rate, "s") for i, (n, rate) in
            enumerate([(8000, 16000)] * 4 + [(4000, 8000), (80001, 16000)])]  # 0.5 s (one at 8 kHz), 5 s
    budget = scoring_budget(utts, 1.0, world_size)
    assert budget.micro_seconds == pytest.approx(1.0) and budget.accumulation == 1 and budget.crop_seconds is None
    got = []
    for rank in range(world_size):
        sampler = SecondsBatchSampler(lengths_at_rate(utts), budget, shuffle=False, rank=rank)
        assert sampler.skipped == 0 and sampler.repeated == 0
        got += [sorted(b) for b in sampler]
    assert sorted(got) == [[0, 1], [2, 3], [4], [5]]  # 8 kHz: 8000 samples at 16 kHz, no room for a third


def test_unknown_reference_character_is_an_error(tmp_path, always_a) -> None:
    m = write_split(tmp_path / "data", "bad", ["ok", "no 7"])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(m))} \(split 'bad'\): .*bad-1.*'7'"):
        evaluate(always_a, [m], tmp_path / "eval")


def test_references_are_mapped_by_text_mapping_over_the_checkpoints(tmp_path, always_a, caplog) -> None:
    """The error advised "give a mapping", which evaluate had no option for (fine-tuning's text_mapping is a
    setting of the checkpoint's)."""
    from earful.cli import main

    m = write_split(tmp_path / "data", "punct", ["A!", "a, 2"])
    guess = "{'!': '', ',': '', '2': ' two '}"
    with pytest.raises(ValueError, match=r"3 character\(s\) outside the vocabulary .*'!' in 1 \(e\.g\. 'punct-0'.*"
                                         rf"evaluate's --text-mapping {re.escape(shlex.quote(guess))}$") as e:
        evaluate(always_a, [m], tmp_path / "eval")
    assert "vocab=data" not in str(e.value)  # fine-tuning's way out, not evaluate's
    summary = evaluate(always_a, [m], tmp_path / "eval", text_mapping={"!": "", ",": "", "2": "a"})
    assert summary["splits"]["punct"]["greedy"]["wer"] == pytest.approx(1 / 3)  # 'a' vs 'a' and 'a a'
    assert summary["text_mapping"] == {"!": "", ",": "", "2": "a"}
    rows = [json.loads(x) for x in (tmp_path / "eval" / "punct.greedy.jsonl").read_text().splitlines()]
    assert [r["ref"] for r in rows] == ["a", "a a"]
    out = str(tmp_path / "eval2")
    assert main(["evaluate", str(always_a), str(m), "--out", out, "--text-mapping", "{'!': '', ',': '', '2': a}"]) == 0
    assert json.loads((tmp_path / "eval2" / "summary.json").read_text())["splits"] == summary["splits"]
    for bad, message in (("[a]", "expected a mapping of characters"), ("{ab: ''}", "keys must be single characters"),
                         ("{'2': 2}", "'2' maps to 2, expected a string")):
        caplog.clear()
        assert main(["evaluate", str(always_a), str(m), "--out", out, "--text-mapping", bad]) == 2
        assert f"--text-mapping {bad!r}: {message}" in caplog.text


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_an_upper_case_lm_scores_as_a_lower_case_one(tmp_path, always_a) -> None:
    """`lm build --keep-case` of upper-case text (as LibriSpeech's official 4-gram) then `evaluate --lm` stopped:
    "the lexicon is empty". Now its words are spelled lower-cased and written so: the hypotheses are the
    vocabulary's, scored against references normalised alike."""
    from earful.cli import main

    text = tmp_path / "text.txt"
    text.write_text("A B\nA\nB A\n")
    assert main(["lm", "build", str(text), "--order", "2", "--keep-case", "--out", str(tmp_path / "lm.arpa")]) == 0
    m = write_split(tmp_path / "data", "dev", ["A", "B"])
    assert main(["evaluate", str(always_a), str(m), "--out", str(tmp_path / "eval"), "--lm",
                 str(tmp_path / "lm.arpa"), "--beam", "10"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "eval" / "dev.lm.jsonl").read_text().splitlines()]
    assert [r["hyp"] for r in rows] == ["a", "a"]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["splits"]["dev"]["lm"]["wer"] == pytest.approx(0.5)


def test_unlabelled_manifest_gets_hypotheses_only_and_says_so(tmp_path, always_a, caplog) -> None:
    caplog.set_level("INFO")
    m = write_split(tmp_path / "data", "raw", [None, None])
    summary = evaluate(always_a, [m], tmp_path / "eval")
    assert summary["splits"]["raw"]["greedy"] == {"utterances": 2, "scored": 0, "unlabelled": 2,
                                                  "unlabelled_ids": ["raw-0", "raw-1"], **FP32}
    assert "raw: greedy: no WER/CER (none of the 2 utterances has a transcript)" in caplog.text
    rows = [json.loads(x) for x in (tmp_path / "eval" / "raw.greedy.jsonl").read_text().splitlines()]
    assert [r["hyp"] for r in rows] == ["a", "a"] and "ref" not in rows[0]


def test_rows_without_a_transcript_are_counted_and_the_others_scored(tmp_path, always_a, caplog) -> None:
    """One row without a transcript had dropped WER/CER for the whole split: summary {"utterances": 6}, the log
    line "my-corpus: " empty, exit status 0. Now the labelled rows are scored and the others counted and named."""
    from earful.cli import main

    caplog.set_level("INFO")
    m = write_split(tmp_path / "data", "my-corpus", ["a", None, "b", "a", None, "a b"])
    out = tmp_path / "eval"
    assert main(["evaluate", str(always_a), str(m), "--out", str(out)]) == 0
    greedy = json.loads((out / "summary.json").read_text())["splits"]["my-corpus"]["greedy"]
    # 'a' vs 'a', 'b', 'a', 'a b': words 0 + 1 + 0 + 1 over 5; chars 0 + 1 + 0 + 2 over 6
    assert greedy == {"utterances": 6, "scored": 4, "unlabelled": 2, "unlabelled_ids": ["my-corpus-1", "my-corpus-4"],
                      "wer": pytest.approx(2 / 5), "cer": pytest.approx(3 / 6), **FP32}
    assert ("my-corpus: greedy WER 40.00 % CER 50.00 % over 4 of 6 utterances (2 without a transcript, e.g. "
            "my-corpus-1, my-corpus-4)") in caplog.text
    detail = json.loads((out / "my-corpus.greedy.summary.json").read_text())
    assert detail["unlabelled"] == 2 and detail["wer"] == pytest.approx(2 / 5)


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_lm_decoding_is_written_beside_greedy(tmp_path, always_a) -> None:
    from earful.cli import main
    from earful.eval.lm import build_arpa

    text = tmp_path / "text.txt"
    text.write_text("a b\na\nb a\n")
    build_arpa(text, tmp_path / "lm.arpa", order=2)
    m = write_split(tmp_path / "data", "dev", ["a", "b"])
    rc = main(["evaluate", str(always_a), str(m), "--out", str(tmp_path / "eval"), "--lm", str(tmp_path / "lm.arpa"),
               "--beam", "10", "--lm-weight", "1.5"])
    assert rc == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    settings = summary["splits"]["dev"]["lm"]["settings"]  # each split's own: an --out may hold several runs'
    assert settings["beam"] == 10 and settings["lm_weight"] == 1.5 and settings["path"] == str(tmp_path / "lm.arpa")
    assert summary["splits"]["dev"]["lm"]["wer"] == pytest.approx(0.5)  # 'a' both times
    rows = [json.loads(x) for x in (tmp_path / "eval" / "dev.lm.jsonl").read_text().splitlines()]
    assert [r["hyp"] for r in rows] == ["a", "a"]


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_a_scoring_text_mapping_leaves_the_search_spelling_as_the_checkpoint(tmp_path, always_a, monkeypatch):
    """`evaluate --text-mapping "{\"'\": ''}"` (for the references) spelled the LM's words with it too: "face's" as
    f a c e s, a word the model was never trained to write, and the search found other words (LM WER 33 → 17 % in
    a review). The search spells as the checkpoint does; the mapping is for scoring alone."""
    import earful.eval.evaluate as ev
    from earful.eval.beam import BeamOptions
    from earful.eval.lm import build_arpa

    spelled_with = []

    class Spy(ev.LMBeamDecoder):
        def __init__(self, vocab, *args, **kwargs):
            spelled_with.append(dict(vocab.mapping))
            super().__init__(vocab, *args, **kwargs)

    monkeypatch.setattr(ev, "LMBeamDecoder", Spy)
    text = tmp_path / "text.txt"
    text.write_text("a' a\na\n")
    build_arpa(text, tmp_path / "lm.arpa", order=2)
    m = write_split(tmp_path / "data", "dev", ["a'", "a"])  # references "a", "a" once mapped
    summary = evaluate(always_a, [m], tmp_path / "eval", lm=tmp_path / "lm.arpa", beam_options=BeamOptions(beam=10),
                       text_mapping={"'": ""})
    assert spelled_with == [{}]  # the checkpoint's own mapping (none), not the scoring one
    assert summary["text_mapping"] == {"'": ""}
    assert summary["splits"]["dev"]["greedy"]["wer"] == 0.0 and summary["splits"]["dev"]["lm"]["wer"] == 0.0


def test_imported_transformers_vocabulary_is_adapted() -> None:
    symbols = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "'"]
    vocab = vocab_from_checkpoint({"symbols": symbols})
    assert vocab.symbols[0] == "<b>" and vocab.symbols[5:] == ("e", "t", "a", "'") and len(vocab) == len(symbols)
    frames = [7, 0, 4, 1, 6, 3, 5]  # A | <s> T <unk> E
    logits = torch.nn.functional.one_hot(torch.tensor([frames]), len(symbols)).float()
    from earful.eval.decode import decode_batch
    from earful.eval.vocab import PLACEHOLDERS, placeholder, strip_placeholders

    assert vocab.symbols[1:4] == tuple(placeholder(i) for i in (1, 2, 3))
    assert all(ord(s) in PLACEHOLDERS for s in vocab.symbols[1:4])
    assert vocab.decode([7, 4, 1, 6, 3, 5]) == f"a {placeholder(1)}t{placeholder(3)}e"
    assert strip_placeholders(vocab.decode([7, 4, 1, 6, 3, 5])) == "a te"
    # what evaluate and transcribe write, and fine-tuning's validation scores
    assert greedy_decode(logits, None, vocab) == ["a te"]
    assert decode_batch(logits, None, vocab) == (["a te"], None)
    assert vocab_from_checkpoint(V.to_dict()) == V
    with pytest.raises(ValueError, match="no vocabulary"):
        vocab_from_checkpoint(None)


def test_auto_device_is_cuda_where_there_is_one(monkeypatch) -> None:
    from earful.train.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("meta")).type == "meta"
    for other in ("mps", "meta", "xpu"):  # named by a user: refused at once (they failed after the model loaded)
        with pytest.raises(ValueError, match=f"--device {other}: expected auto, cpu, cuda or cuda:N"):
            resolve_device(other, "--device")


def greedy(ckpt, manifest, out, device_seconds: float = 200.0) -> dict[str, str]:
    evaluate(ckpt, [manifest], out, device_seconds=device_seconds)
    rows = [json.loads(x) for x in (out / f"{manifest.stem}.greedy.jsonl").read_text().splitlines()]
    return {r["id"]: r["hyp"] for r in rows}


@pytest.mark.parametrize("trained_with", ["excluded", "included"])
def test_evaluate_gives_the_same_transcripts_one_utterance_at_a_time_and_in_200_s(tone_ctc, tmp_path,
                                                                                   trained_with) -> None:
    """Utterances of 0.6-4 s in one padded batch and each alone; a checkpoint saved with fairseq's statistics
    ("included") is evaluated batch-invariant as well."""
    ckpt, manifest = tone_ctc
    if trained_with == "included":
        model, info = load_model(ckpt)
        model.cfg.group_norm_padding = "included"
        ckpt = save_model(tmp_path / "included", model, vocab=info["vocab"])
    utts = read_manifest(manifest)
    assert max(u.num_samples for u in utts) > 3 * min(u.num_samples for u in utts)
    together = greedy(ckpt, manifest, tmp_path / "together")
    assert len(set(together.values())) >= 4, together  # the model says different things to different audio
    for u in utts:
        alone = tmp_path / f"{u.id}.jsonl"
        write_manifest([u], alone)
        assert greedy(ckpt, alone, tmp_path / u.id, device_seconds=0.1) == {u.id: together[u.id]}


@pytest.fixture
def ctc_run(tmp_path):
    """A run folder with two checkpoints of a CTC model (step 2 the latest)."""
    from earful.train.state import RunDir

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(load_model_config("tiny"), len(V))
    run = RunDir(tmp_path / "run")
    for step in (1, 2):
        run.save(f"step-000000{step}", model, state={"rng_cpu": torch.get_rng_state()}, trainer={"step": step},
                 vocab=V.to_dict())
    return run.root


def test_a_run_directory_is_evaluated_at_its_latest_checkpoint(ctc_run, tmp_path, caplog) -> None:
    """One resolver (earful.train.state.resolve_checkpoint, RunDir.latest) for evaluate, transcribe and --init;
    the log names the checkpoint a run folder resolved to (not `best`: transcribe said nothing)."""
    import logging

    from earful.checkpoint import CheckpointError
    from earful.eval.evaluate import load_ctc
    from earful.train.init import load_init, resolve_init

    latest = ctc_run / "checkpoints" / "latest.json"
    with caplog.at_level(logging.INFO):
        assert load_ctc(ctc_run)[2].name == "step-0000002"
    assert f"{ctc_run}: a run folder, its latest checkpoint: {ctc_run / 'checkpoints' / 'step-0000002'} " \
           f"(its best by validation: {ctc_run / 'checkpoints' / 'best'})" in caplog.text
    assert load_ctc(ctc_run / "checkpoints" / "step-0000001")[2].name == "step-0000001"
    assert load_init(resolve_init(str(ctc_run)))[2].endswith("step-0000002")
    latest.write_text(json.dumps({"name": "step-0000001"}))
    assert load_ctc(ctc_run)[2].name == "step-0000001"
    latest.unlink()  # lost: the furthest checkpoint that verifies
    assert load_ctc(ctc_run)[2].name == "step-0000002"
    assert load_init(resolve_init(str(ctc_run)))[2].endswith("step-0000002")
    for bad, why in [("{not json", "corrupt"), ('{"step": 3}', "corrupt.*'name'"),
                     ('{"name": "../../x"}', "not a plain name"), ('{"name": "step-0000009"}', "incomplete")]:
        latest.write_text(bad)
        with pytest.raises(CheckpointError, match=f"{latest}.*{why}"):
            load_ctc(ctc_run)
        with pytest.raises(CheckpointError, match=f"{latest}.*{why}"):
            load_init(resolve_init(str(ctc_run)))
    empty = tmp_path / "empty-run"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="empty-run/checkpoints: no complete checkpoint"):
        load_ctc(empty)
    (tmp_path / "plain").mkdir()  # a folder that is neither; a path that does not exist is told so
    with pytest.raises(FileNotFoundError, match="plain: not a checkpoint .* nor a run folder"):
        load_ctc(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="plain: not 'scratch'"):
        resolve_init(str(tmp_path / "plain"))
    with pytest.raises(FileNotFoundError, match="nowhere: no such checkpoint or run folder \\(the path does not"):
        load_ctc(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder \\(give 'scratch'"):
        resolve_init(str(tmp_path / "nowhere"))


def test_splits_are_named_by_the_caller_else_by_their_stems(tmp_path, always_a) -> None:
    """A mapping names the splits (a study's corpus.test); a list names them by stem, repeats numbered."""
    a = write_split(tmp_path / "A", "test", ["a"])
    b = write_split(tmp_path / "B", "test", ["b"])
    named = evaluate(always_a, {"clean": a, "other": b}, tmp_path / "named")
    assert named["splits"] == {"clean": {"greedy": {"utterances": 1, "wer": 0.0, "cer": 0.0, **FP32}},
                               "other": {"greedy": {"utterances": 1, "wer": 1.0, "cer": 1.0, **FP32}}}
    detail = json.loads((tmp_path / "named" / "other.greedy.summary.json").read_text())
    assert detail["split"] == "other" and detail["manifest"] == str(b)
    stems = evaluate(always_a, [a, b], tmp_path / "stems")  # `earful evaluate A/test.jsonl B/test.jsonl`
    assert list(stems["splits"]) == ["test", "test-2"]
    from earful.config import ConfigError
    from earful.eval.evaluate import split_names

    assert split_names(["x/dev.jsonl", "y/dev.json", "dev-2.jsonl"]) == {
        "dev": "x/dev.jsonl", "dev-2": "y/dev.json", "dev-2-2": "dev-2.jsonl"}
    with pytest.raises(ConfigError, match=r"split name='\.\./up': not a plain name"):
        split_names({"../up": a})
    with pytest.raises(TypeError, match="a list of manifests or a mapping"):
        split_names(str(a))


def test_a_split_is_named_as_given_and_a_name_taken_by_another_manifest_is_refused(tmp_path, always_a, caplog,
                                                                                   monkeypatch):
    """`evaluate CK a/test.jsonl --out E`, then `evaluate CK b/test.jsonl --out E` replaced the first split's results
    in summary.json without a word, and nothing said which manifest they were of (LibriSpeech's
    test-clean/manifest.jsonl and test-other/manifest.jsonl alike). A split can be named (NAME=MANIFEST); a name
    evaluated there before from another manifest is refused, naming both; the same manifest again is replaced."""
    import logging

    from earful.cli import main
    from earful.eval.evaluate import split_names

    a = write_split(tmp_path / "A", "manifest", ["a"])
    b = write_split(tmp_path / "B", "manifest", ["b"])
    assert split_names([f"clean={a}", str(b), f"manifest={a}"]) == {"clean": str(a), "manifest-2": str(b),
                                                                     "manifest": str(a)}
    with pytest.raises(ValueError, match=r"clean=.*: split 'clean' is given twice"):
        split_names([f"clean={a}", f"clean={b}"])
    assert split_names(["runs/lr=1e-4/dev.jsonl"]) == {"dev": "runs/lr=1e-4/dev.jsonl"}  # a path with a "="
    out = tmp_path / "eval"
    assert main(["evaluate", str(always_a), str(a), "--out", str(out)]) == 0
    before = (out / "summary.json").read_text()
    with caplog.at_level(logging.ERROR):
        assert main(["evaluate", str(always_a), str(b), "--out", str(out)]) == 2
    assert f"split 'manifest' holds the evaluation of {a}; {b} takes that name and would replace it" in caplog.text
    assert (out / "summary.json").read_text() == before
    assert main(["evaluate", str(always_a), f"other={b}", str(a), "--out", str(out)]) == 0
    splits = json.loads((out / "summary.json").read_text())["splits"]
    assert splits["other"]["greedy"]["wer"] == 1.0 and splits["manifest"]["greedy"]["wer"] == 0.0
    # the earlier manifest moved away: warned, replaced
    moved = tmp_path / "A2"
    (tmp_path / "A").rename(moved)
    c = write_split(tmp_path / "C", "manifest", ["a"])
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", str(always_a), str(c), "--out", str(out)]) == 0
    assert f"split 'manifest' held the evaluation of {a} (not found from here); {c}'s replaces it" in caplog.text
    # one relative name from two folders is two manifests: compared as resolved
    for folder, text in (("X", "a"), ("Y", "b")):
        write_split(tmp_path / folder / "data", "test", [text])
    monkeypatch.chdir(tmp_path / "X")
    assert main(["evaluate", str(always_a), "data/test.jsonl", "--out", str(tmp_path / "rel")]) == 0
    monkeypatch.chdir(tmp_path / "Y")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["evaluate", str(always_a), "data/test.jsonl", "--out", str(tmp_path / "rel")]) == 2
    assert f"holds the evaluation of {tmp_path / 'X' / 'data' / 'test.jsonl'}" in caplog.text


def test_only_empty_references_is_an_error_naming_the_manifest(tmp_path, always_a) -> None:
    """No error rate without reference words: the error names the manifest and split, before any transcription."""
    good = write_split(tmp_path / "data", "good", ["a"])
    blank = write_split(tmp_path / "data", "blank", ["", "  "])
    out = tmp_path / "eval"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(blank))} \(split 'silence'\): all references are empty"):
        evaluate(always_a, {"fine": good, "silence": blank}, out)
    assert not out.exists()  # refused before the first split was transcribed
    with pytest.raises(ValueError, match=rf"^{re.escape(str(blank))} \(split 'blank'\): all references are empty"):
        evaluate(always_a, [blank], out)
    some = write_split(tmp_path / "data", "some", ["", "a"])  # an empty reference among others: insertions
    assert evaluate(always_a, [some], out)["splits"]["some"]["greedy"]["wer"] == 1.0


@pytest.mark.parametrize("command", ["evaluate", "transcribe"])
@pytest.mark.parametrize(("option", "value", "allowed"), [
    ("--beam", "0", "an integer from 1 up"), ("--beam", "-5", "an integer from 1 up"),
    ("--beam-threshold", "-1", "a score from 0 up"), ("--lm-weight", "-2", "a finite weight from 0 up"),
    ("--lm-weight", "nan", "a finite weight from 0 up"), ("--word-score", "inf", "a finite score"),
    ("--unk-score", "inf", "a score below inf"),
])
def test_beam_options_out_of_range_are_refused_naming_the_option(tmp_path, always_a, caplog, command, option, value,
                                                                 allowed) -> None:
    """`evaluate --lm LM --beam 0` (and `transcribe --beam 0`) ran and gave empty LM transcripts, WER 100 %. Now
    the command stops before reading the checkpoint, naming the option, its value and the range it accepts."""
    from earful.cli import main

    m = write_split(tmp_path / "data", "dev", ["a"])
    lm = tmp_path / "lm.arpa"
    lm.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\ta\n\n\\end\\\n")
    wav = str(m).replace(".jsonl", "-0.wav")
    target = [str(m), "--out", str(tmp_path / "eval")] if command == "evaluate" else [wav]
    assert main([command, str(always_a), *target, "--lm", str(lm), option, value]) == 2
    assert f"{option} {float(value) if option != '--beam' else value}: expected {allowed}" in caplog.text
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("command", ["evaluate", "transcribe"])
@pytest.mark.parametrize("options", [["--beam", "3"], ["--lm-weight", "5"], ["--beam-threshold", "10"],
                                     ["--word-score", "-1"], ["--unk-score", "-10"], ["--sil-score", "0"],
                                     ["--lexicon", "lex.txt", "--beam", "3"]])
def test_beam_options_without_an_lm_are_refused_naming_them(tmp_path, always_a, caplog, command, options) -> None:
    """`transcribe --beam 3` and `evaluate --lm-weight 5` ran greedy decoding and said nothing (their defaults were
    values, so a given one could not be told from none), while `--lexicon` without `--lm` was refused. Now each
    option given without --lm is refused before the checkpoint is read, naming it, whatever its value."""
    from earful.cli import main

    m = write_split(tmp_path / "data", "dev", ["a"])
    target = [str(m), "--out", str(tmp_path / "eval")] if command == "evaluate" else [str(m).replace(".jsonl",
                                                                                                    "-0.wav")]
    assert main([command, str(always_a), *target, *options]) == 2
    named = ", ".join(o for o in options if o.startswith("--"))
    assert f"{named} only appl" in caplog.text and "give --lm ARPA" in caplog.text, caplog.text[-300:]
    assert not (tmp_path / "eval").exists()


def test_a_negative_num_workers_is_refused_naming_the_option(tmp_path, always_a, caplog) -> None:
    """`evaluate --num-workers -1` stopped with torch's "num_workers option should be non-negative; use
    num_workers=0 ...", naming no option of the command, after the checkpoint was read and --out made."""
    from earful.cli import main

    m = write_split(tmp_path / "data", "dev", ["a"])
    assert main(["evaluate", str(always_a), str(m), "--out", str(tmp_path / "eval"), "--num-workers", "-1"]) == 2
    assert "--num-workers -1: expected an integer from 0 up (0: the audio is read in this process)" in caplog.text
    assert "num_workers" not in caplog.text
    assert not (tmp_path / "eval").exists()


def test_beam_options_not_given_are_the_papers_defaults_the_help_names() -> None:
    """Unset beam options (None on the command line) are resolved to :class:`BeamOptions`' defaults, and each
    option's help names that default."""
    from earful.cli import build_parser
    from earful.eval.beam import BeamOptions
    from earful.eval.commands import BEAM_OPTIONS, _beam_options

    parser = build_parser()
    args = parser.parse_args(["evaluate", "ckpt", "m.jsonl", "--out", "o", "--lm", "lm.arpa"])
    assert _beam_options(args) == BeamOptions()
    args = parser.parse_args(["transcribe", "ckpt", "f.wav", "--lm", "lm.arpa", "--beam", "3", "--lm-weight", "0",
                              "--beam-size-token", "5"])
    assert _beam_options(args) == BeamOptions(beam=3, lm_weight=0.0, beam_size_token=5)
    args = parser.parse_args(["transcribe", "ckpt", "f.wav", "--lm", "lm.arpa", "--beam-size-token", "0"])
    with pytest.raises(ValueError) as refused:  # it offered "or none", which the option cannot be given
        _beam_options(args)
    assert str(refused.value) == ("--beam-size-token 0: expected an integer from 1 up (tokens tried per frame; left "
                                  "out: the whole vocabulary)")
    sub = next(a for a in parser._actions if a.dest == "command").choices["evaluate"]
    helps = {a.option_strings[0]: a.help for a in sub._actions if a.option_strings}
    for field, option in BEAM_OPTIONS.items():
        default = getattr(BeamOptions(), field)
        said = "the whole vocabulary" if default is None else f"{default:g}"
        assert f"default {said}" in helps[option], (option, helps[option])


def test_what_would_stop_an_evaluation_midway_is_named_before_it_starts(tmp_path, always_a, caplog) -> None:
    """`--out FILE` said "[Errno 17] File exists" after transcribing everything; an audio file given for a manifest
    "not valid UTF-8 ...; re-encode the manifest as UTF-8"; an utterance under 400 samples stopped the whole
    evaluation midway, naming its audio file alone. Now each is one line naming the file and what to do."""
    from earful.cli import main
    from earful.data.manifest import Utterance

    m = write_split(tmp_path / "data", "dev", ["a", "b"])
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["evaluate", str(always_a), str(m), "--out", str(taken)]) == 2
    assert (f"--out {taken}: a file, not a folder: evaluate writes its results (SPLIT.greedy.jsonl, summary.json, "
            "...) into a folder; give a new one, or an earlier evaluation's") in caplog.text
    wav = str(m).replace(".jsonl", "-0.wav")
    assert main(["evaluate", str(always_a), wav, "--out", str(tmp_path / "eval")]) == 2
    assert f"{wav}: an audio file, not a manifest" in caplog.text and "`earful transcribe CKPT FILE...`" in caplog.text

    import soundfile as sf

    sf.write(tmp_path / "data" / "tiny.wav", np.zeros(100, np.float32), 16000)
    short = tmp_path / "data" / "short.jsonl"
    write_manifest([*read_manifest(m), Utterance("tiny", str(tmp_path / "data" / "tiny.wav"), 100, 16000, "s", "a")],
                   short)
    with pytest.raises(ValueError, match=re.escape(
            f"{short} (split 'short'): 1 of 3 utterances are shorter than one frame of the model needs (400 samples "
            "at 16000 Hz): 'tiny' (100); the model gives them no output: leave them out of the manifest (`earful "
            "prepare` does)")):
        evaluate(always_a, [m, short], tmp_path / "eval")
    assert not (tmp_path / "eval").exists()  # refused before anything was transcribed


def test_an_unreadable_file_names_the_manifest_and_the_utterance(tmp_path, always_a) -> None:
    """The loader's error named the audio file alone; evaluate now adds the manifest, split, utterance and way
    out."""
    m = write_split(tmp_path / "data", "dev", ["a", "b"])
    (tmp_path / "data" / "dev-1.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # corrupt after prepare
    with pytest.raises(ValueError, match=rf"^{re.escape(str(m))} \(split 'dev'\): {re.escape(str(tmp_path))}/data/"
                                         r"dev-1\.wav: .*\(utterance dev-1\); evaluate scores every utterance of its "
                                         r"manifests: mend the file, or leave its row out of the manifest$"):
        evaluate(always_a, [m], tmp_path / "eval", device_seconds=0.5)


def test_an_unreadable_file_of_a_later_split_is_found_before_any_split_is_transcribed(tmp_path, always_a) -> None:
    """A corrupt file of the second split stopped the evaluation once the first had been transcribed (on a CPU, a
    long wait for an error): every split's files are checked against their headers first."""
    dev = write_split(tmp_path / "data", "dev", ["a", "b"])
    test = write_split(tmp_path / "data", "test", ["a", "b"])
    (tmp_path / "data" / "test-1.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(test))} \(split 'test'\): .*test-1\.wav: .*"
                                         r"\(utterance test-1\); evaluate scores every utterance"):
        evaluate(always_a, [dev, test], tmp_path / "eval", device_seconds=0.5)
    assert not (tmp_path / "eval").exists()  # nothing transcribed


def test_every_file_is_checked_once(tmp_path, always_a, monkeypatch) -> None:
    """evaluate checks every split's files before transcribing any, and its loader checked them again."""
    import earful.data.dataset as dataset
    import earful.eval.evaluate as evaluation

    checked: list[str] = []
    real = dataset.check_headers

    def count(utts, *args, **kwargs):
        checked.extend(u.id for u in utts)
        return real(utts, *args, **kwargs)

    monkeypatch.setattr(dataset, "check_headers", count)
    monkeypatch.setattr(evaluation, "check_headers", count)
    evaluate(always_a, [write_split(tmp_path / "data", s, ["a", "b"]) for s in ("dev", "test")], tmp_path / "eval",
             device_seconds=0.5)
    assert sorted(checked) == ["dev-0", "dev-1", "test-0", "test-1"]


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_an_out_folder_holds_one_checkpoints_evaluations_of_every_split(tmp_path, always_a, caplog) -> None:
    """Checkpoint A on dev, then on test with --lm, then checkpoint B on dev into one --out: summary.json held only
    the last call's splits, test.* were A's beside B's dev.*, and a run without --lm left test.lm.* behind. Now
    another checkpoint's folder is refused before any work, naming it; the same checkpoint's summary covers every
    split evaluated there, and a split evaluated again without an LM loses its stale LM files."""
    from earful.cli import main
    from earful.eval.lm import build_arpa

    caplog.set_level("INFO")
    text = tmp_path / "text.txt"
    text.write_text("a b\na\nb a\n")
    build_arpa(text, tmp_path / "lm.arpa", order=2)
    dev = write_split(tmp_path / "data", "dev", ["a", "b"])
    test = write_split(tmp_path / "data", "test", ["a", "a b"])
    out = tmp_path / "eval"
    assert main(["evaluate", str(always_a), str(dev), "--out", str(out)]) == 0
    assert main(["evaluate", str(always_a), str(test), "--out", str(out), "--lm", str(tmp_path / "lm.arpa")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["splits"]) == ["dev", "test"] and list(summary["splits"]["test"]) == ["greedy", "lm"]
    assert "also holds this checkpoint's earlier evaluation of dev" in caplog.text
    assert summary["weights_sha256"] == json.loads((always_a / "model.json").read_text())["files"][
        "model.safetensors"]["sha256"]

    other = tmp_path / "other"  # another checkpoint: other weights
    model, info = load_model(always_a)
    with torch.no_grad():
        model.lm_head.bias[V.index("b")] = 20.0
    save_model(other, model, vocab=info["vocab"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    caplog.clear()
    assert main(["evaluate", str(other), str(dev), "--out", str(out)]) == 2
    assert (f"{out}: holds the evaluation of another checkpoint ({always_a}: dev, test), which this one ({other}) "
            f"would mix with; give another --out, or remove {out}") in caplog.text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written
    assert main(["evaluate", str(always_a), str(test), "--out", str(out), "--text-mapping", "{'!': ''}"]) == 2
    assert "with another text mapping" in caplog.text

    assert main(["evaluate", str(always_a), str(test), "--out", str(out)]) == 0  # test again, without --lm
    assert not (out / "test.lm.jsonl").exists() and not (out / "test.lm.summary.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["splits"]) == ["dev", "test"] and list(summary["splits"]["test"]) == ["greedy"]
    copy = tmp_path / "copy"  # the same weights elsewhere: the same checkpoint
    shutil.copytree(always_a, copy)
    assert main(["evaluate", str(copy), str(dev), "--out", str(out)]) == 0


def test_the_summary_names_the_weights_evaluated_when_the_checkpoint_is_replaced_meanwhile(tmp_path, always_a,
                                                                                          monkeypatch) -> None:
    """A checkpoint written again at its path while evaluate loads it (a training's next `best`): the summary's
    weights_sha256 is the hash of the weights evaluated, not of those the folder holds afterwards (it read
    model.json again after loading)."""
    import shutil

    from earful.checkpoint import read_info, weights_sha256
    from earful.eval import evaluate as ev

    ckpt = tmp_path / "best"
    shutil.copytree(always_a, ckpt)
    evaluated = weights_sha256(read_info(ckpt))
    real = ev.vocab_from_checkpoint

    def replaced(*args, **kwargs):  # the weights are loaded: another training's save lands at the same path
        save_model(ckpt, Wav2Vec2ForCTC(load_model_config("tiny"), len(V)), vocab=V.to_dict())
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "vocab_from_checkpoint", replaced)
    summary = evaluate(ckpt, [write_split(tmp_path / "data", "clean", ["a"])], tmp_path / "eval", device_seconds=2)
    assert weights_sha256(read_info(ckpt)) != evaluated  # the folder holds others now
    assert summary["weights_sha256"] == evaluated
    assert summary["splits"]["clean"]["greedy"]["wer"] == 0.0  # always-a's weights, which say 'a'


def _summary_matches_files(out) -> dict:
    """summary.json's splits, checked against the split files in ``out``: each entry's scores (and the LM
    settings) are its file's, and every split file has its entry."""
    summary = json.loads((out / "summary.json").read_text())
    on_disk = {p.name.removesuffix(".summary.json") for p in out.glob("*.summary.json") if p.name != "summary.json"}
    listed = {f"{split}.{decoder}" for split, res in summary["splits"].items() for decoder in res}
    assert listed == on_disk
    for split, res in summary["splits"].items():
        for decoder, entry in res.items():
            detail = json.loads((out / f"{split}.{decoder}.summary.json").read_text())
            assert entry["wer"] == detail["wer"], (split, decoder)
            for k, v in entry.get("settings", {}).items():
                assert detail[k] == v, (split, decoder, k)
    return summary


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_a_stopped_evaluation_leaves_the_summary_describing_the_files(tmp_path, always_a, monkeypatch) -> None:
    """evaluate replaced each split's files as it went and wrote summary.json at the end: stopped (Ctrl-C) in the
    second split, the summary kept dev's old LM settings beside dev.lm.summary.json's new ones, and a run without
    --lm stopped there left the scores of the dev.lm.* files it had removed. summary.json is now written with each
    split's files."""
    import earful.eval.evaluate as ev
    from earful.eval.beam import BeamOptions
    from earful.eval.lm import build_arpa

    text = tmp_path / "text.txt"
    text.write_text("a b\na\nb a\n")
    lm = tmp_path / "lm.arpa"
    build_arpa(text, lm, order=2)
    splits = [write_split(tmp_path / "data", s, ["a", "b"]) for s in ("dev", "test")]
    out = tmp_path / "eval"
    evaluate(always_a, splits, out, device_seconds=2, lm=lm)
    _summary_matches_files(out)
    real, calls = ev.transcribe, []

    def stopped_in_the_second_split(*args, **kwargs):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "transcribe", stopped_in_the_second_split)
    with pytest.raises(KeyboardInterrupt):
        evaluate(always_a, splits, out, device_seconds=2, lm=lm, beam_options=BeamOptions(lm_weight=0.5,
                                                                                          word_score=-1))
    summary = _summary_matches_files(out)
    assert summary["splits"]["dev"]["lm"]["settings"]["lm_weight"] == 0.5
    assert summary["splits"]["test"]["lm"]["settings"]["lm_weight"] == 2.0  # not evaluated again: as before
    with pytest.raises(KeyboardInterrupt):
        evaluate(always_a, splits, out, device_seconds=2)  # without --lm: dev.lm.* removed
    summary = _summary_matches_files(out)
    assert list(summary["splits"]["dev"]) == ["greedy"] and list(summary["splits"]["test"]) == ["greedy", "lm"]


def test_device_seconds_is_checked_before_any_work(tmp_path, always_a, caplog, monkeypatch) -> None:
    """`evaluate --device-seconds 0` was refused once the checkpoint was loaded and every file's header checked,
    leaving an empty --out folder; it is refused first now, as transcribe refuses it."""
    import earful.eval.evaluate as ev
    from earful.cli import main

    def not_loaded(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(ev, "load_ctc", not_loaded)
    m = write_split(tmp_path / "data", "dev", ["a"])
    for value in ("0", "-1", "nan", "inf"):
        caplog.clear()
        assert main(["evaluate", str(always_a), str(m), "--out", str(tmp_path / "eval"), "--device-seconds",
                     value]) == 2
        assert f"device_seconds (--device-seconds) = {float(value)}: expected a finite number of seconds > 0" in \
            caplog.text
        assert not (tmp_path / "eval").exists()


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_a_lexicon_that_cannot_be_read_names_the_option(tmp_path, always_a, caplog) -> None:
    """`--lexicon missing.txt` stopped with a bare "[Errno 2] No such file or directory", naming no option."""
    from earful.cli import main
    from earful.eval.lm import build_arpa

    text = tmp_path / "text.txt"
    text.write_text("a b\n")
    build_arpa(text, tmp_path / "lm.arpa", order=2)
    m = write_split(tmp_path / "data", "dev", ["a"])
    missing = tmp_path / "missing.txt"
    assert main(["evaluate", str(always_a), str(m), "--out", str(tmp_path / "eval"), "--lm", str(tmp_path / "lm.arpa"),
                 "--lexicon", str(missing)]) == 2
    assert f"--lexicon {missing}: cannot be read (No such file or directory)" in caplog.text
    assert not (tmp_path / "eval").exists()


def test_an_out_folder_another_evaluation_works_in_is_refused_naming_it(tmp_path, always_a, caplog) -> None:
    """Two evaluations in one --out at once each read summary.json at the start and wrote it at the end from that
    copy: the last to finish dropped the other's split, and both exited 0. The folder is held (its lock) from the
    start to the end now: a second one is refused, naming the folder and the holder, and writes nothing."""
    import subprocess
    import sys

    from earful.cli import main
    from earful.lock import FolderBusy

    dev = write_split(tmp_path / "data", "dev", ["a", "b"])
    test = write_split(tmp_path / "data", "test", ["a", "a b"])
    out = tmp_path / "eval"
    evaluate(always_a, [dev], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from earful.lock import hold_folder; "
                               f"f = hold_folder({str(out)!r}, 'earful evaluate'); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"  # the other evaluation is under way
        with pytest.raises(FolderBusy, match=re.escape(f"{out}: another earful evaluate is running in this folder "
                                                       f"(pid {holder.pid}")):
            evaluate(always_a, [test], out)
        assert main(["evaluate", str(always_a), str(test), "--out", str(out)]) == 2
        assert f"{out}: another earful evaluate is running in this folder (pid {holder.pid}" in caplog.text
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before  # nothing written
    finally:
        holder.communicate("")
    assert main(["evaluate", str(always_a), str(test), "--out", str(out)]) == 0  # let go: it runs
    assert list(json.loads((out / "summary.json").read_text())["splits"]) == ["dev", "test"]


def test_each_split_records_its_precision_and_batch_and_another_precision_is_refused(tmp_path, always_a,
                                                                                    caplog) -> None:
    """summary.json had one top-level device_seconds for every split (the last run's) and no precision: a bf16
    split sat beside an fp32 one as one evaluation, and dev evaluated again in bf16 replaced its fp32 result
    without a word. Each split's entries (and files) record both now, and another precision is refused as another
    text mapping is; splits recorded before (no precision) are kept with a warning."""
    from earful.cli import main

    dev = write_split(tmp_path / "data", "dev", ["a", "b"])
    test = write_split(tmp_path / "data", "test", ["a", "a b"])
    out = tmp_path / "eval"
    assert main(["evaluate", str(always_a), str(dev), "--out", str(out), "--device-seconds", "1.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "device_seconds" not in summary and "precision" not in summary
    assert {k: summary["splits"]["dev"]["greedy"][k] for k in ("precision", "device_seconds")} == {
        "precision": "fp32", "device_seconds": 1.5}
    detail = json.loads((out / "dev.greedy.summary.json").read_text())
    assert (detail["precision"], detail["device_seconds"]) == ("fp32", 1.5)

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for split in (dev, test):  # dev's fp32 result replaced, or a bf16 test beside it
        caplog.clear()
        assert main(["evaluate", str(always_a), str(split), "--out", str(out), "--precision", "bf16"]) == 2
        assert (f"{out}: holds an evaluation of this checkpoint in another precision (dev: fp32; now bf16), whose "
                "scores would not compare with these") in caplog.text
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written
    assert main(["evaluate", str(always_a), str(test), "--out", str(out), "--device-seconds", "3"]) == 0
    splits = json.loads((out / "summary.json").read_text())["splits"]
    assert (splits["dev"]["greedy"]["device_seconds"], splits["test"]["greedy"]["device_seconds"]) == (1.5, 3)

    for res in splits.values():  # as an evaluation before the precision was recorded wrote it
        del res["greedy"]["precision"]
    (out / "summary.json").write_text(json.dumps({**json.loads((out / "summary.json").read_text()),
                                                  "splits": splits}))
    caplog.clear()
    assert main(["evaluate", str(always_a), str(test), "--out", str(out)]) == 0
    assert (f"{out}: dev, test evaluated there before the precision was recorded (unknown), kept beside this fp32 "
            "evaluation") in caplog.text
    splits = json.loads((out / "summary.json").read_text())["splits"]
    assert "precision" not in splits["dev"]["greedy"] and splits["test"]["greedy"]["precision"] == "fp32"


def test_a_pre_training_run_folder_is_refused_without_a_word_of_its_validation_wer(tmp_path, caplog) -> None:
    """`earful evaluate PT-RUN` logged "a run folder, its latest checkpoint: ... (for the lowest validation WER,
    give PT-RUN/checkpoints/best)", of a pre-training that has no WER, before refusing it. Only the refusal is
    said now; a fine-tuning's run folder is still told where its best is."""
    from earful.cli import main
    from earful.model import Wav2Vec2ForPreTraining

    for kind, model in (("pt", Wav2Vec2ForPreTraining(load_model_config("tiny"))),
                        ("ft", Wav2Vec2ForCTC(load_model_config("tiny"), len(V)))):
        latest = save_model(tmp_path / kind / "checkpoints" / "step-0000002", model,
                            **({"vocab": V.to_dict()} if kind == "ft" else {}))
        (latest / "trainer.json").write_text("{}")
        (tmp_path / kind / "checkpoints" / "latest.json").write_text(json.dumps({"name": latest.name, "step": 2}))
    manifest = write_split(tmp_path / "data", "test", ["a b"])
    caplog.set_level("INFO")
    assert main(["evaluate", str(tmp_path / "pt"), str(manifest), "--out", str(tmp_path / "e1")]) == 2
    assert "a pretraining checkpoint; evaluate needs a fine-tuned (CTC) one" in caplog.text
    assert "validation WER" not in caplog.text, caplog.text
    caplog.clear()
    assert main(["evaluate", str(tmp_path / "ft"), str(manifest), "--out", str(tmp_path / "e2")]) == 0
    assert f"(its best by validation: {tmp_path / 'ft' / 'checkpoints' / 'best'})" in caplog.text
