"""An exported CTC model in `transformers`' ASR pipeline: the same transcripts as `earful evaluate` and
`earful transcribe`, whole and in chunks; and `import-hf` reads the folder back."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers

from earful.checkpoint import load_model
from earful.cli import main
from earful.data.audio import load_audio
from earful.data.manifest import read_manifest
from earful.eval.evaluate import evaluate, load_ctc
from earful.eval.transcribe import transcribe_files

transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def exported(tone_ctc, tmp_path_factory):
    ckpt, _ = tone_ctc
    folder = tmp_path_factory.mktemp("hf") / "model"
    assert main(["export-hf", str(ckpt), str(folder)]) == 0
    return folder


def same_text(theirs: str, ours: str) -> bool:
    """Character for character, but for one thing: where the model emits two word delimiters with a blank
    between them, transformers' tokenizer writes two spaces and earful's greedy decoder one."""
    return "<b>" not in theirs and (theirs == ours or ("  " in theirs and " ".join(theirs.split()) == ours))


def asr(folder):
    return transformers.pipeline("automatic-speech-recognition", model=str(folder), device="cpu")


def test_pipeline_gives_evaluates_greedy_transcripts(tone_ctc, exported, tmp_path) -> None:
    ckpt, manifest = tone_ctc
    summary = evaluate(ckpt, [manifest], tmp_path / "eval", device_seconds=200.0)
    rows = [json.loads(x) for x in (tmp_path / "eval" / "test.greedy.jsonl").read_text().splitlines()]
    ours = {r["id"]: r["hyp"] for r in rows}
    assert len(set(ours.values())) >= 4, ours  # the model says different things: the comparison means something
    pipe = asr(exported)
    for utt in read_manifest(manifest):
        theirs = pipe({"raw": load_audio(utt.path), "sampling_rate": 16000})["text"]
        assert same_text(theirs, ours[utt.id]), (utt.id, theirs, ours[utt.id])
    assert summary["splits"]["test"]["greedy"]["utterances"] == len(rows)


def test_pipeline_chunks_as_earful_transcribe_does(tone_ctc, exported, tmp_path) -> None:
    """A 13.75 s file in 4 s windows with 1 s strides: the same windows, the same frames kept, the same text."""
    ckpt, manifest = tone_ctc
    wave = np.concatenate([load_audio(u.path) for u in read_manifest(manifest)])  # (samples,)
    assert len(wave) > 3 * 64000  # four windows
    path = tmp_path / "long.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    model, vocab, *_ = load_ctc(ckpt)
    ours = next(transcribe_files(model, vocab, [path], chunk_seconds=4.0, stride_seconds=1.0))["text"]
    theirs = asr(exported)({"raw": wave, "sampling_rate": 16000}, chunk_length_s=4.0, stride_length_s=1.0)["text"]
    assert same_text(theirs, ours) and len(ours.split()) >= 5, (theirs, ours)
    whole = next(transcribe_files(model, vocab, [path], chunk_seconds=0))["text"]
    theirs = asr(exported)({"raw": wave, "sampling_rate": 16000})["text"]
    assert same_text(theirs, whole), (theirs, whole)


def test_the_folder_is_a_whole_processor_and_imports_back(tone_ctc, exported, tmp_path) -> None:
    ckpt, _ = tone_ctc
    model, info = load_model(ckpt)
    tok = json.loads((exported / "tokenizer_config.json").read_text())
    assert (tok["pad_token"], tok["word_delimiter_token"]) == ("<b>", "|")  # the blank, dropped from transcripts
    assert json.loads((exported / "vocab.json").read_text()) == {s: i for i, s in enumerate(info["vocab"]["symbols"])}
    # a group-norm CNN: transformers' convention is a zero-padded batch without an attention mask
    assert json.loads((exported / "preprocessor_config.json").read_text())["return_attention_mask"] is False
    processor = transformers.Wav2Vec2Processor.from_pretrained(exported)
    assert processor.tokenizer.pad_token_id == 0 and processor.tokenizer.decode([5, 5, 0, 5, 1, 0, 3]) == "cc a"
    assert main(["import-hf", str(exported), str(tmp_path / "back")]) == 0
    back, back_info = load_model(tmp_path / "back")
    assert back_info["vocab"]["symbols"] == info["vocab"]["symbols"]
    a, b = model.state_dict(), back.state_dict()
    # fine-tuned with mask_prob=0: no mask embedding in the folder (transformers has none), a fresh one imported
    assert model.cfg.mask_prob == model.cfg.mask_channel_prob == 0
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k != "wav2vec2.mask_emb")


def test_attention_mask_convention_follows_the_cnn_norm(tmp_path, caplog) -> None:
    from earful.eval.vocab import CharVocab
    from earful.interop.hf import export_hf
    from earful.model import Wav2Vec2ForCTC, load_model_config

    symbols = list(CharVocab().symbols)
    for norm, mask in (("group", False), ("layer", True)):
        model = Wav2Vec2ForCTC(load_model_config("tiny", [f"feat_extract_norm={norm}"]), len(symbols))
        export_hf(model, tmp_path / norm, vocab_symbols=symbols)
        assert json.loads((tmp_path / norm / "preprocessor_config.json").read_text())["return_attention_mask"] is mask
    export_hf(model, tmp_path / "no-vocab")
    assert not (tmp_path / "no-vocab" / "tokenizer_config.json").exists() and "no tokenizer" in caplog.text
    with pytest.raises(ValueError, match="28 vocabulary symbols"):
        export_hf(model, tmp_path / "short", vocab_symbols=symbols[:-1])
