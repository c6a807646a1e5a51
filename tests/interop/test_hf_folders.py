"""export-hf and import-hf folders: what transformers writes besides the model (processor_config.json, added
tokens, shards, a feature extractor at another rate, other heads) and where the commands write (validated first,
atomically, never over their source or the other format)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from earful.checkpoint import CheckpointError, load_model, save_model
from earful.cli import main
from earful.eval.evaluate import vocab_from_checkpoint
from earful.interop.hf import export_hf, import_hf
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, load_model_config

transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[32] * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_codevectors_per_group=8,
            codevector_dim=16, proj_codevector_dim=16)
LETTERS = list("abcdefghijklmnopqrstuvwxyz'")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith((".tmp-", ".old-")))


def _blog_folder(folder: Path, *, do_normalize: bool = True, **config) -> transformers.Wav2Vec2Processor:
    """The Hugging Face blog's "Fine-Tune XLSR-Wav2Vec2" recipe, transformers 5: vocab.json without <s>, </s> (the
    tokenizer adds them), the model's vocab_size = len(tokenizer), the processor saved whole."""
    folder.mkdir(parents=True)
    vocab = {c: i for i, c in enumerate(LETTERS)} | {"|": 27, "[UNK]": 28, "[PAD]": 29}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tok = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="[UNK]", pad_token="[PAD]",
                                            word_delimiter_token="|")
    fe = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                               do_normalize=do_normalize, return_attention_mask=True)
    processor = transformers.Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok)
    torch.manual_seed(0)
    hf_cfg = transformers.Wav2Vec2Config(**{**TINY, "pad_token_id": tok.pad_token_id, "vocab_size": len(tok),
                                            **config})
    model = transformers.Wav2Vec2ForCTC(hf_cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # logits far apart: a difference in the input shows
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return processor


# --------------------------------------------------------------------------------------------------
# What transformers writes
# --------------------------------------------------------------------------------------------------
def test_the_feature_extractor_in_processor_config_json_is_read(tmp_path) -> None:
    """transformers 5's Wav2Vec2Processor.save_pretrained writes do_normalize inside processor_config.json; the
    import had warned "no preprocessor_config.json" and taken unnormalised waveforms (logits off by up to 8.8)."""
    _blog_folder(tmp_path / "hf")
    assert not (tmp_path / "hf" / "preprocessor_config.json").exists()
    assert json.loads((tmp_path / "hf" / "processor_config.json").read_text())["feature_extractor"]["do_normalize"]
    ours, _ = import_hf(tmp_path / "hf", need_vocab=True)
    assert ours.cfg.normalize_waveform
    theirs = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf").eval()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "hf")
    wave = (0.3 * np.random.RandomState(0).randn(8000) + 0.2).astype(np.float32)
    with torch.no_grad():
        ref = theirs(extractor(wave, sampling_rate=16000, return_tensors="pt").input_values).logits[0]
        got = ours.eval()(torch.from_numpy(wave)[None], None)[0][0]
    pad = theirs.config.pad_token_id
    order = [pad, *(i for i in range(ref.shape[-1]) if i != pad)]  # the import moves the blank to index 0
    assert (got - ref[:, order]).abs().max() <= 1e-4
    # beside a preprocessor_config.json, processor_config.json's settings are the ones transformers reads
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    assert transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "hf").do_normalize
    assert import_hf(tmp_path / "hf")[0].cfg.normalize_waveform


def test_the_blog_recipes_added_tokens_are_part_of_the_vocabulary(tmp_path, caplog) -> None:
    """<s>, </s> live in added_tokens.json (and tokenizer_config.json's added_tokens_decoder), not vocab.json: the
    import had refused "30 symbols for a CTC head with 32 outputs … missing ids [30, 31]"."""
    processor = _blog_folder(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0, caplog.text
    _, info = load_model(tmp_path / "ckpt")
    symbols = info["vocab"]["symbols"]
    tokenizer = processor.tokenizer
    assert symbols[0] == "[PAD]" and len(symbols) == len(tokenizer) == 32
    assert symbols[1:] == [tokenizer.convert_ids_to_tokens(i) for i in range(32) if i != tokenizer.pad_token_id]
    # added tokens past the head (a tokenizer's default <s>, </s> for a model without them) are left out
    (tmp_path / "hf" / "vocab.json").unlink()
    _blog_folder(tmp_path / "short", vocab_size=30)
    assert len(import_hf(tmp_path / "short", need_vocab=True)[1]) == 30
    vocab = json.loads((tmp_path / "short" / "vocab.json").read_text())
    (tmp_path / "short" / "added_tokens.json").write_text(json.dumps({"<x>": vocab["a"]}))
    with pytest.raises(CheckpointError, match=r"short/vocab\.json \(with added_tokens\.json and .*\): 31 symbols for "
                                              r"a CTC head with 30 outputs; .*\(repeated ids \[0\]\)"):
        import_hf(tmp_path / "short")
    (tmp_path / "short" / "added_tokens.json").write_text(json.dumps({"<s>": vocab["a"]}))
    with pytest.raises(CheckpointError, match=r"short/tokenizer_config\.json: added token '<s>' has id 30, "
                                              r"added_tokens\.json gives it 0"):
        import_hf(tmp_path / "short")


def test_an_imported_unknown_token_is_exported_again(tmp_path) -> None:
    """The blog's [UNK] was exported as unk_token null: transformers' tokenizer then crashed on any character
    outside the vocabulary ("Hello World")."""
    _blog_folder(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "back")]) == 0
    card = (tmp_path / "back" / "README.md").read_text()  # an imported model: not "Trained with earful"
    assert "Converted by earful (not trained by it" in card and "Trained with earful" not in card
    tok = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())
    assert (tok["unk_token"], tok["bos_token"], tok["eos_token"], tok["pad_token"]) == ("[UNK]", "<s>", "</s>",
                                                                                         "[PAD]")
    processor = transformers.Wav2Vec2Processor.from_pretrained(tmp_path / "back")
    unk = processor.tokenizer.unk_token_id
    assert processor.tokenizer("Hello World").input_ids.count(unk) == 2  # H and W
    assert unk not in processor.tokenizer("hello world").input_ids


@pytest.mark.parametrize("saved, key, value", [
    ("preprocessor", "sampling_rate", 8000),
    ("processor", "sampling_rate", 8000),
    ("preprocessor", "feature_size", 80),
])
def test_a_feature_extractor_other_than_16_khz_waveforms_is_refused(tmp_path, saved, key, value) -> None:
    """An 8 kHz model had imported silently as a 16 kHz one."""
    hf = export_hf(Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=len(LETTERS) + 2), tmp_path / "hf",
                   ["<b>", "|", *LETTERS])
    fe = transformers.Wav2Vec2FeatureExtractor(**{"sampling_rate": 16000, "feature_size": 1, key: value})
    (hf / "preprocessor_config.json").unlink()
    if saved == "processor":
        tok = transformers.Wav2Vec2CTCTokenizer.from_pretrained(hf)
        transformers.Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(hf)
        where = r"processor_config\.json \(\"feature_extractor\"\)"
    else:
        fe.save_pretrained(hf)
        where = r"preprocessor_config\.json"
    with pytest.raises(CheckpointError, match=rf"hf/{where}: {key}={value}: earful's models read waveforms"):
        import_hf(hf)


def test_a_sharded_checkpoint_imports_as_the_whole_one(tmp_path) -> None:
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**TINY, vocab_size=30))
    model.save_pretrained(tmp_path / "whole")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    a, b = import_hf(tmp_path / "whole")[0].state_dict(), import_hf(tmp_path / "sharded")[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / "sharded" / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"sharded/{shard}: missing \(a shard that "
                                              r"model\.safetensors\.index\.json names\)"):
        import_hf(tmp_path / "sharded")


def test_the_weights_file_is_the_one_transformers_loads(tmp_path) -> None:
    """A Hub folder with safetensors shards and an older pytorch_model.bin beside them: transformers loads the
    shards (model.safetensors, its shards, pytorch_model.bin, its shards), and so does import-hf."""
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**TINY))
    model.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    legacy = {k: v.clone() for k, v in model.state_dict().items()}
    legacy["project_hid.bias"] += 1
    torch.save(legacy, tmp_path / "hf" / "pytorch_model.bin")
    loaded = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").project_hid.bias
    assert torch.equal(loaded, model.project_hid.bias)  # transformers reads the shards, not the .bin
    imported = import_hf(tmp_path / "hf")[0].final_proj.bias
    assert torch.equal(imported, loaded)


def test_a_classification_model_is_named(tmp_path) -> None:
    """It was "lacks 7 tensors, e.g. quantizer…"."""
    transformers.Wav2Vec2ForSequenceClassification(transformers.Wav2Vec2Config(**TINY, num_labels=3)).save_pretrained(
        tmp_path / "cls")
    with pytest.raises(CheckpointError, match=r"cls/config\.json: a Wav2Vec2ForSequenceClassification, an utterance "
                                              r"classification head, which earful does not import"):
        import_hf(tmp_path / "cls")


# --------------------------------------------------------------------------------------------------
# What earful can use afterwards
# --------------------------------------------------------------------------------------------------
def test_a_config_load_model_would_refuse_is_refused_at_import(tmp_path, caplog) -> None:
    """feat_extract_norm "batch" imported; load_model then failed on the checkpoint."""
    hf = export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "feat_extract_norm": "batch"}))
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 2
    assert f"{hf / 'config.json'}: feat_extract_norm: 'batch' is not one of ['group', 'layer']" in caplog.text
    assert not (tmp_path / "ckpt").exists()


def _delimited_folder(tmp_path: Path, symbols: list[str], delimiter: str | None) -> Path:
    hf = export_hf(Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=len(symbols)), tmp_path / "hf",
                   ["<b>", "|", *symbols[2:]])
    (hf / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}))
    tok = json.loads((hf / "tokenizer_config.json").read_text())
    if delimiter is None:
        (hf / "tokenizer_config.json").unlink()
    else:
        (hf / "tokenizer_config.json").write_text(json.dumps({**tok, "word_delimiter_token": delimiter}))
    return hf


def test_the_tokenizers_word_delimiter_becomes_earfuls(tmp_path) -> None:
    """A vocabulary whose delimiter is " " (word_delimiter_token) imported, and evaluate, transcribe failed later
    naming no file."""
    hf = _delimited_folder(tmp_path, ["<pad>", " ", "a", "b"], " ")
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 0
    _, info = load_model(tmp_path / "ckpt")
    assert info["vocab"]["symbols"] == ["<pad>", "|", "a", "b"]
    assert vocab_from_checkpoint(info["vocab"]).decode([2, 1, 3, 0, 3]) == "a bb"


@pytest.mark.parametrize("symbols, delimiter, problem", [
    (["<pad>", " ", "a", "b"], None, r"vocab\.json: no word delimiter '\|' \(nor another that tokenizer_config\.json"),
    (["<pad>", " ", "a", "|"], " ", r"tokenizer_config\.json: word_delimiter_token=' ' and '\|' is another symbol"),
    (["<pad>", "_", "a", "b"], " ", r"tokenizer_config\.json: word_delimiter_token=' ' is none of .*vocab\.json's"),
    (["<b>", "|", "a", "<unk>"], "|", r"vocab\.json: symbols other than the blank must be single characters, got "
                                      r"'<unk>' \(as earful's decoder reads it"),
], ids=["none", "two", "absent", "earful-blank"])
def test_a_vocabulary_earfuls_decoder_cannot_read_is_refused_at_import(tmp_path, caplog, symbols, delimiter,
                                                                       problem) -> None:
    hf = _delimited_folder(tmp_path, symbols, delimiter)
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 2
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert re.search(problem, caplog.text), caplog.text
    assert not (tmp_path / "ckpt").exists()


# --------------------------------------------------------------------------------------------------
# Where the commands write
# --------------------------------------------------------------------------------------------------
def _ckpt(tmp_path: Path, symbols: list[str] | None = None) -> Path:
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=len(symbols or ["<b>", "|", "a"]))
    return save_model(tmp_path / "ckpt", model, vocab={"symbols": symbols or ["<b>", "|", "a"]})


def test_a_refused_export_leaves_the_folder_as_it_was(tmp_path) -> None:
    """A refused export had written its weights first: beside an earlier export's config.json and README.md
    (transformers loaded the mix), or alone in a new folder; a vocabulary without '|' left a vocab.json without
    tokenizer config."""
    assert main(["export-hf", str(_ckpt(tmp_path)), str(tmp_path / "hf")]) == 0
    before = _files(tmp_path / "hf")
    padded = Wav2Vec2ForCTC(load_model_config("tiny", ["conv_padding=true"]), vocab_size=3)
    for out in (tmp_path / "hf", tmp_path / "new"):
        with pytest.raises(ValueError, match="padded"):
            export_hf(padded, out, ["<b>", "|", "a"])
        with pytest.raises(ValueError, match="no word delimiter"):
            export_hf(Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=3), out, ["<b>", "a", "b"])
    assert _files(tmp_path / "hf") == before and not (tmp_path / "new").exists()
    assert _siblings(tmp_path / "hf") == []


def test_an_export_that_fails_while_writing_leaves_the_earlier_one(tmp_path, monkeypatch) -> None:
    import earful.interop.hf as H

    export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "hf")
    before = _files(tmp_path / "hf")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(H, "atomic_write_json", full_disk)
        with pytest.raises(OSError, match="No space left"):
            export_hf(Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=3), tmp_path / "hf", ["<b>", "|", "a"])
    assert _files(tmp_path / "hf") == before and _siblings(tmp_path / "hf") == []
    real = os.replace

    def fail_into_place(src, dst):  # the new files fail to take their place
        if Path(src).parent.name.startswith(".tmp-"):
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_into_place)
    with pytest.raises(OSError, match="Input/output error"):
        export_hf(Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=3), tmp_path / "hf", ["<b>", "|", "a"])
    assert _files(tmp_path / "hf") == before and _siblings(tmp_path / "hf") == []


def test_an_earlier_export_or_import_is_replaced_whole(tmp_path) -> None:
    ckpt = _ckpt(tmp_path, ["<b>", "|", "a"])
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf")]) == 0
    export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "hf")  # no tokenizer, no card
    assert sorted(_files(tmp_path / "hf")) == ["README.md", "config.json", "model.safetensors",
                                               "preprocessor_config.json"]  # the card: a later export replaces it
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert load_model(tmp_path / "back")[1]["kind"] == "ctc"
    assert _siblings(tmp_path / "hf") == [] and _siblings(tmp_path / "back") == []


@pytest.mark.parametrize("command", ["export-hf", "import-hf"])
def test_the_commands_refuse_their_source_the_other_format_and_other_files_as_output(tmp_path, caplog, monkeypatch,
                                                                                     command) -> None:
    """`export-hf CKPT CKPT` had destroyed the checkpoint, `import-hf HF HF` overwritten transformers' weights."""
    ckpt = _ckpt(tmp_path)
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf")]) == 0
    source = ckpt if command == "export-hf" else tmp_path / "hf"
    other = shutil.copytree(source, tmp_path / "other")  # the format the command reads, not the one it writes
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("")
    before = {p: _files(p) for p in (ckpt, tmp_path / "hf", other, tmp_path / "mine")}
    holds = "an earful checkpoint (model.json)" if command == "export-hf" else "a transformers model (config.json)"
    for out, message in ((source, "the output folder is the folder"), (other, f"holds {holds}"),
                         (tmp_path / "mine", "holds notes.txt, which"), (tmp_path / "file", "a file, not a folder")):
        caplog.clear()
        assert main([command, str(source), str(out)]) == 2
        assert f"{out}: {message}" in caplog.text, caplog.text
    assert {p: _files(p) for p in before} == before
    load_model(ckpt)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")  # the folder itself stays: the working folder is an output like another
    assert main([command, str(source), "."]) == 0
    assert Path.cwd() == tmp_path / "empty" and (tmp_path / "empty" / "model.safetensors").exists()


@pytest.mark.parametrize("command", ["export-hf", "import-hf"])
def test_the_output_folder_itself_stays_a_link_a_mount_its_mode_and_group(tmp_path, command) -> None:
    """The files move into the folder; the folder is not replaced by a rename, which had turned a link to the
    output into a plain folder (the export landing beside the link's target), failed on a mounted volume (EBUSY)
    and reset the folder's mode and setgid group. A killed run's ``.tmp-PID`` folder is removed by the next."""
    ckpt = _ckpt(tmp_path, ["<b>", "|", "a"])
    if command == "export-hf":
        source = ckpt
    else:
        source = tmp_path / "hf"
        assert main(["export-hf", str(ckpt), str(source)]) == 0
    real = tmp_path / "real"
    assert main([command, str(source), str(real)]) == 0
    (tmp_path / "link").symlink_to(real)
    real.chmod(0o2750)
    (real / ".tmp-999999999").mkdir()  # a killed run's: no such process
    (real / ".tmp-999999999" / "model.safetensors").write_bytes(b"half")
    assert main([command, str(source), str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == real
    assert real.stat().st_mode & 0o7777 == 0o2750
    assert sorted(p.name for p in real.iterdir()) == sorted(_files(real)) and not any(
        p.name.startswith(".tmp-") for p in real.iterdir())
    assert not any(p.name.startswith((".tmp-", ".old-")) for p in tmp_path.iterdir())


def test_a_folder_without_a_feature_extractor_is_told_a_way_to_say_it_normalises(tmp_path, caplog) -> None:
    """`finetune --init HF` of a folder without preprocessor_config.json warned "set normalize_waveform if it was
    trained on normalised ones", which no command takes. Now the warning gives the preprocessor_config.json to
    write; written as given, the import (and transformers) take normalised waveforms, and nothing is warned."""
    theirs = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**TINY))
    theirs.save_pretrained(tmp_path / "hf")
    with caplog.at_level(logging.WARNING):
        assert not import_hf(tmp_path / "hf")[0].cfg.normalize_waveform
    said = re.search(r"write (\S+) holding (\{.*\}) and run the command again", caplog.text)
    assert said and "normalize_waveform" not in caplog.text, caplog.text
    Path(said.group(1)).write_text(said.group(2))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert import_hf(tmp_path / "hf")[0].cfg.normalize_waveform
    assert not caplog.text
    assert transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "hf").do_normalize


def test_export_hf_refuses_a_transformers_folder_it_did_not_write_and_the_models_initial_weights(tmp_path, tone_ctc,
                                                                                                 caplog) -> None:
    """`export-hf CKPT FOLDER` took any folder of config.json + model.safetensors for an earlier export and
    replaced it whole: a user's own save_pretrained folder, even the one the exported model was fine-tuned from.
    An earlier export is now one whose model card names earful (written by every export, the API's too); and the
    checkpoint's initial weights (its trainer.json's init) are refused as the output like its source."""
    model = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**TINY))
    model.save_pretrained(tmp_path / "theirs")
    before = _files(tmp_path / "theirs")
    ckpt = _ckpt(tmp_path)
    caplog.clear()
    assert main(["export-hf", str(ckpt), str(tmp_path / "theirs")]) == 2
    assert f"{tmp_path / 'theirs'}: holds config.json, model.safetensors, not written by export-hf (no earful " \
           "model card, README.md)" in caplog.text
    (tmp_path / "theirs" / "README.md").write_text("---\ntags: [wav2vec2]\n---\n# a card of the Hub's\n")
    assert main(["export-hf", str(ckpt), str(tmp_path / "theirs")]) == 2
    (tmp_path / "theirs" / "README.md").unlink()
    assert _files(tmp_path / "theirs") == before

    export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "api")  # no card given: a short one
    assert "tags: [wav2vec2, speech, earful]" in (tmp_path / "api" / "README.md").read_text()
    assert main(["export-hf", str(ckpt), str(tmp_path / "api")]) == 0  # an earlier export: replaced

    _, manifest = tone_ctc  # a fine-tuning from an earlier export: that folder is now its initial weights
    export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "init")
    assert main(["finetune", "--init", str(tmp_path / "init"), "--train", str(manifest), "--out",
                 str(tmp_path / "ft"), "batch_seconds=3.5", "device_seconds=3.5", "data.num_workers=0",
                 "tensorboard=false", "threads=1", "valid_every=0", "freeze_transformer_steps=1", "max_steps=1"]) == 0
    before = _files(tmp_path / "init")
    caplog.clear()
    assert main(["export-hf", str(tmp_path / "ft"), str(tmp_path / "init")]) == 2
    assert f"{tmp_path / 'init'}: the output folder holds the weights the model's training started from" in caplog.text
    assert _files(tmp_path / "init") == before
    assert main(["export-hf", str(tmp_path / "ft"), str(tmp_path / "api")]) == 0


@pytest.mark.parametrize("tags", ["[audio-classification, emotion, fearful]", "\n- emotion\n- fearful",
                                  "[earful-emotions]", "[wav2vec2]\nnote: earful"])
def test_a_model_card_tagged_fearful_is_not_an_earlier_export(tmp_path, tags) -> None:
    """export-hf took a folder whose card's tags line held "earful" anywhere (an emotion model's `fearful`) for an
    earlier export and replaced it whole; --push did the same to a Hub repository. The tag must be an item of the
    front matter's tags list, block or flow style."""
    from earful.interop.hf import earful_card

    config = transformers.Wav2Vec2Config(**{**TINY, "num_labels": 4})
    transformers.Wav2Vec2ForSequenceClassification(config).save_pretrained(tmp_path / "theirs")
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(tmp_path / "theirs")
    (tmp_path / "theirs" / "README.md").write_text(f"---\nlicense: apache-2.0\ntags: {tags}\n---\n\n# Emotions\n")
    before = _files(tmp_path / "theirs")
    with pytest.raises(CheckpointError, match="not written by export-hf"):
        export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "theirs")
    assert _files(tmp_path / "theirs") == before
    for card in ("---\ntags: [wav2vec2, speech, earful]\n---\n", "---\nlicense: mit\ntags:\n  - speech\n  - earful\n"
                 "---\n# card\n", "---\r\ntags: ['earful']\r\n---\r\n"):
        assert earful_card(card), card
    for card in ("tags: [earful]\n", "---\ntags: [earful\n---\n", "---\ntags: [fear, ful]\n---\n"):
        assert not earful_card(card), card


def test_a_finetuning_with_a_transformers_models_vocabulary_exports_its_tokenizer(tmp_path, tone_ctc) -> None:
    """`finetune vocab=init` from a transformers CTC folder (the blog's: its blank [PAD] last, id 29) took the
    vocabulary in vocab.json's order, not the head's once imported (the blank first): 'a', id 0, was the blank,
    and every transcript with an 'a' was refused. And it trains with earful's spelling of the vocabulary (blank
    <b>, stand-ins for [UNK], <s>, </s>), which export-hf wrote: the pipeline's text held '\\ue001'-like
    characters and the tokenizer had no unknown token. The fine-tuning's checkpoints now keep the initial model's
    own spelling, also across a resume, and export-hf writes it."""
    _, manifest = tone_ctc
    processor = _blog_folder(tmp_path / "hf")
    common = ["--init", str(tmp_path / "hf"), "--train", str(manifest), "--out", str(tmp_path / "ft"), "vocab=init",
              "batch_seconds=3.5", "device_seconds=3.5", "data.num_workers=0", "tensorboard=false", "threads=1",
              "valid_every=0", "freeze_transformer_steps=1"]
    assert main(["finetune", *common, "max_steps=1"]) == 0
    assert main(["finetune", *common, "max_steps=2", "--resume", "--allow-changes"]) == 0
    info = load_model(tmp_path / "ft" / "checkpoints" / "step-0000002")[1]
    assert info["vocab"]["symbols"][:2] == ["<b>", "a"]  # earful's spelling, the blank first
    assert main(["export-hf", str(tmp_path / "ft"), str(tmp_path / "back")]) == 0
    vocab = json.loads((tmp_path / "back" / "vocab.json").read_text())
    assert sorted(vocab) == sorted(processor.tokenizer.get_vocab())  # the initial model's symbols, none of earful's
    assert vocab["[PAD]"] == 0 and vocab["a"] == 1  # the head's order: the blank first
    tok = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())
    assert (tok["pad_token"], tok["unk_token"]) == ("[PAD]", "[UNK]")
    back = transformers.Wav2Vec2Processor.from_pretrained(tmp_path / "back")
    assert back.tokenizer.decode([vocab["[UNK]"], vocab["a"]]) == "[UNK]a"


@pytest.mark.parametrize("kind", ["Wav2Vec2Model", "Wav2Vec2ForSequenceClassification", "Wav2Vec2ForXVector"])
def test_a_bare_wav2vec2model_folder_is_a_finetunings_init(tmp_path, tone_ctc, caplog, kind) -> None:
    """A transformers Wav2Vec2Model folder (the backbone alone, as many published feature extractors are), or one
    with a classification or x-vector head, was refused even by `finetune --init`, which keeps only the backbone.
    Fine-tuning now takes it, the backbone exact; import-hf, which would need heads it lacks, still refuses it,
    naming the way."""
    torch.manual_seed(0)
    whole = getattr(transformers, kind)(transformers.Wav2Vec2Config(**TINY, num_labels=3)).eval()
    whole.save_pretrained(tmp_path / "bare")
    bare = whole if kind == "Wav2Vec2Model" else whole.wav2vec2  # the backbone: what a fine-tuning keeps
    _, manifest = tone_ctc
    assert main(["finetune", "--init", str(tmp_path / "bare"), "--train", str(manifest), "--out", str(tmp_path / "ft"),
                 "batch_seconds=3.5", "device_seconds=3.5", "data.num_workers=0", "tensorboard=false", "threads=1",
                 "valid_every=0", "freeze_transformer_steps=1", "max_steps=1"]) == 0
    from earful.interop.hf import to_hf_state_dict

    model, _ = load_model(tmp_path / "ft" / "checkpoints" / "init")  # the CTC model before its first step
    ours = {k.removeprefix("wav2vec2."): v for k, v in to_hf_state_dict(model.state_dict(), model.cfg, "ctc").items()
            if k.startswith("wav2vec2.")}
    theirs = bare.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)  # exact
    caplog.clear()
    assert main(["import-hf", str(tmp_path / "bare"), str(tmp_path / "ck")]) == 2
    assert ("a bare transformers Wav2Vec2Model, which earful fine-tunes (finetune --init) but cannot import or "
            "pre-train" if kind == "Wav2Vec2Model" else "which earful does not import (it imports "
            "Wav2Vec2ForPreTraining and Wav2Vec2ForCTC folders; finetune --init takes its backbone)") in caplog.text
