"""The interop commands: export-hf → import-hf round trip and `features` output."""

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from earful.checkpoint import CheckpointError, load_model, save_model
from earful.cli import main
from earful.data.shards import SHARDS_FORMAT
from earful.interop.hf import export_hf, import_hf
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, load_model_config


def test_export_import_round_trip_via_cli(tmp_path) -> None:
    model = Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=29)
    symbols = ["<b>", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    save_model(tmp_path / "ckpt", model, vocab={"symbols": symbols})
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "vocab.json").exists()
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back, info = load_model(tmp_path / "back")
    assert info["vocab"]["symbols"] == symbols
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_export_hf_refuses_private_without_push(tmp_path, caplog) -> None:
    """--private without --push had been ignored without a word (nothing is uploaded, nothing made private)."""
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--private"]) == 2
    assert "--private needs --push" in caplog.text and not (tmp_path / "hf").exists()


@pytest.fixture
def hub(monkeypatch, tmp_path) -> SimpleNamespace:
    """huggingface_hub.HfApi without the network: ``repos``, the Hub's model repositories as {repo: {file: bytes}},
    which the test fills and reads; upload_folder does what the Hub does (files matching delete_patterns deleted,
    but .gitattributes, then the folder's added), and records (repo, delete_patterns) in ``uploads``."""
    import httpx
    import huggingface_hub
    from huggingface_hub.utils import RepositoryNotFoundError

    repos: dict[str, dict[str, bytes]] = {}
    uploads: list[tuple[str, str | None]] = []
    downloads = tmp_path / "hub-downloads"

    class Hub:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def list_repo_files(self, repo_id: str, **kwargs) -> list[str]:
            if repo_id not in repos:
                url = f"https://huggingface.co/api/models/{repo_id}"
                raise RepositoryNotFoundError(f"404: {url}", response=httpx.Response(404, request=httpx.Request(
                    "GET", url)))
            return sorted(repos[repo_id])

        def hf_hub_download(self, repo_id: str, filename: str, **kwargs) -> str:
            path = downloads / repo_id / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(repos[repo_id][filename])
            return str(path)

        def create_repo(self, repo_id: str, **kwargs) -> None:
            repos.setdefault(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})

        def upload_folder(self, *, folder_path: str, repo_id: str, delete_patterns: str | None = None,
                          **kwargs) -> SimpleNamespace:
            uploads.append((repo_id, delete_patterns))
            files = repos[repo_id]
            for name in [n for n in files if delete_patterns and fnmatch(n, delete_patterns)]:
                if name != ".gitattributes":
                    del files[name]
            files.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1")

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    return SimpleNamespace(repos=repos, uploads=uploads)


def test_push_refuses_a_repository_export_hf_did_not_write_and_leaves_none_of_its_old_files(tmp_path, hub,
                                                                                          caplog) -> None:
    """--push created the repository with exist_ok and uploaded over whatever it held: a mistyped or reused name
    overwrote someone's config.json, weights and card (the local export refuses such a folder), and old files
    stayed (a leftover processor_config.json, which transformers reads first; a pre-training export over a CTC
    one kept vocab.json). A repository export-hf did not write is refused, naming it and what it holds, unless
    --replace-repo; the repository then holds the folder's files and no others (.gitattributes kept)."""
    model = Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=len(SYMBOLS))
    save_model(tmp_path / "ctc", model, vocab={"symbols": SYMBOLS})
    save_model(tmp_path / "pt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    theirs = {".gitattributes": b"*\n", "config.json": b"{}", "model.safetensors": b"their weights",
              "README.md": b"---\ntags: [wav2vec2]\n---\ntheir model"}
    repos = hub.repos
    repos["someone/their-model"] = dict(theirs)
    args = ["export-hf", str(tmp_path / "pt"), str(tmp_path / "hf"), "--push", "someone/their-model"]
    assert main(args) == 2
    assert ("--push someone/their-model: the Hub repository holds README.md, config.json, model.safetensors, not "
            "written by export-hf (no earful model card, README.md): a model of your own, which the push would "
            "replace; give a new or empty repository, or --replace-repo") in caplog.text
    assert repos["someone/their-model"] == theirs and not hub.uploads
    repos["someone/emotions"] = {**theirs, "README.md": b"---\ntags: [emotion, fearful]\n---\ntheir model"}
    assert main(["export-hf", str(tmp_path / "pt"), str(tmp_path / "hf"), "--push", "someone/emotions"]) == 2
    assert "--push someone/emotions: the Hub repository holds README.md, config.json" in caplog.text  # not earful's
    assert not hub.uploads

    # a new repository, then an earlier export's: pushed, the old files gone
    assert main(["export-hf", str(tmp_path / "ctc"), str(tmp_path / "hf-ctc"), "--push", "me/model"]) == 0
    assert {"vocab.json", "tokenizer_config.json", ".gitattributes"} <= set(repos["me/model"])
    assert main(["export-hf", str(tmp_path / "pt"), str(tmp_path / "hf"), "--push", "me/model"]) == 0
    assert sorted(repos["me/model"]) == sorted([".gitattributes", *(p.name for p in (tmp_path / "hf").iterdir())])
    assert repos["me/model"]["config.json"] == (tmp_path / "hf" / "config.json").read_bytes()
    assert hub.uploads[-1] == ("me/model", "*")

    # an earlier export with a file export-hf does not write: refused, then replaced with --replace-repo
    repos["me/model"]["processor_config.json"] = b"{}"
    caplog.clear()
    assert main(["export-hf", str(tmp_path / "pt"), str(tmp_path / "hf"), "--push", "me/model"]) == 2
    assert ("--push me/model: the Hub repository holds processor_config.json, which export-hf does not write: not "
            "an earlier export-hf repository") in caplog.text
    assert main(["export-hf", str(tmp_path / "pt"), str(tmp_path / "hf"), "--push", "me/model", "--replace-repo"]) == 0
    assert "processor_config.json" not in repos["me/model"]
    assert main([*args, "--replace-repo"]) == 0
    assert sorted(repos["someone/their-model"]) == sorted(repos["me/model"])
    assert repos["someone/their-model"][".gitattributes"] == b"*\n"
    assert main(["export-hf", str(tmp_path / "pt"), str(tmp_path / "x"), "--replace-repo"]) == 2
    assert "--replace-repo needs --push" in caplog.text and not (tmp_path / "x").exists()


SYMBOLS = ["<b>", "|", "'", "a", "b", "c"]


def _ctc_folder(tmp_path):
    """A transformers CTC folder (6 outputs) with its vocab.json."""
    torch.manual_seed(0)
    return export_hf(Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=len(SYMBOLS)), tmp_path / "hf", SYMBOLS)


def test_import_hf_refuses_a_ctc_folder_without_its_vocabulary(tmp_path, caplog) -> None:
    """Its checkpoint would never load (a CTC model needs its vocabulary): import-hf stops, naming vocab.json."""
    hf = _ctc_folder(tmp_path)
    (hf / "vocab.json").unlink()
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 2
    assert f"{hf / 'vocab.json'}: missing" in caplog.text and not (tmp_path / "ckpt").exists()
    assert import_hf(hf)[1] is None  # the backbone alone (fine-tuning's --init) needs none


@pytest.mark.parametrize("ids, problem", [
    ([0, 1, 2, 3, 4], r"5 symbols for a CTC head with 6 outputs.*\(missing ids \[5\]\)"),
    ([0, 1, 2, 3, 4, 6], r"ids must be exactly 0…5 \(missing ids \[5\]; ids out of range \[6\]\)"),
    ([0, 1, 2, 3, 5, 5], r"\(missing ids \[4\]; repeated ids \[5\]\)"),
    ([0, 1, 2, 3, 4, 5, 6], r"7 symbols .*ids out of range \[6\]"),
    ([0, 1, 2, 3, 4, "5"], r"not a \{symbol: id\} mapping with integer ids"),
], ids=["short", "gap", "repeated", "long", "text-id"])
def test_import_hf_refuses_a_vocab_json_that_does_not_fit_the_head(tmp_path, caplog, ids, problem) -> None:
    """A gap would shift letters onto the wrong outputs, a short file give a checkpoint that never loads."""
    hf = _ctc_folder(tmp_path)
    names = [*SYMBOLS, "d"][: len(ids)]
    (hf / "vocab.json").write_text(json.dumps(dict(zip(names, ids, strict=True))))
    with pytest.raises(CheckpointError, match=rf"vocab\.json: .*{problem}"):
        import_hf(hf)
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 2  # one line, no traceback
    assert "vocab.json: " in caplog.text and not (tmp_path / "ckpt").exists()


def test_import_hf_refuses_a_blank_outside_the_head(tmp_path) -> None:
    """A short vocab.json with the blank elsewhere than 0 was an IndexError; so was a pad_token_id past the head."""
    hf = _ctc_folder(tmp_path)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "pad_token_id": 3}))
    (hf / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(SYMBOLS[:4])}))
    with pytest.raises(CheckpointError, match=r"vocab\.json: 4 symbols for a CTC head with 6 outputs"):
        import_hf(hf)
    (hf / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(SYMBOLS)}))
    (hf / "config.json").write_text(json.dumps({**config, "pad_token_id": 6}))
    with pytest.raises(CheckpointError, match=r"config\.json: pad_token_id=6 \(the CTC blank\) is not one of the "
                                              r"head's 6 outputs"):
        import_hf(hf)


def test_a_ctc_checkpoint_without_its_vocabulary_names_its_model_json(tmp_path) -> None:
    save_model(tmp_path / "ckpt", Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=6))
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'ckpt' / 'model.json'}: a CTC checkpoint needs its "
                                              r"vocabulary"):
        load_model(tmp_path / "ckpt")


def test_features_shape_and_values(tmp_path) -> None:
    cfg = load_model_config("tiny")
    model = Wav2Vec2ForPreTraining(cfg)
    save_model(tmp_path / "ckpt", model)
    rs = np.random.RandomState(0)
    for name, secs in (("a", 1.0), ("b", 0.6)):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rs.randn(int(secs * 16000))).astype(np.float32), 16000)
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "a.wav"), str(tmp_path / "b.wav"),
                 "--out", str(tmp_path / "feats")]) == 0
    a = np.load(tmp_path / "feats" / "a.npy")
    frames = int(model.frame_lengths(torch.tensor([16000]))[0])
    assert a.shape == (cfg.num_layers + 1, frames, cfg.hidden_size)
    wave, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    with torch.no_grad():
        out = model.eval().wav2vec2(torch.from_numpy(wave)[None], torch.tensor([len(wave)]), output_hidden_states=True)
    np.testing.assert_allclose(a[-1], out.hidden_states[-1][0].numpy(), atol=1e-5)
    assert np.load(tmp_path / "feats" / "b.npy").shape[0] == cfg.num_layers + 1
    # two inputs with one stem would write one file: refused before anything is written, naming both
    (tmp_path / "again").mkdir()
    sf.write(tmp_path / "again" / "a.wav", np.zeros(8000, np.float32), 16000)
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "b.wav"), str(tmp_path / "a.wav"),
                 str(tmp_path / "again" / "a.wav"), "--out", str(tmp_path / "clash")]) == 2
    assert not (tmp_path / "clash").exists() or not list((tmp_path / "clash").iterdir())
    assert sorted(p.name for p in (tmp_path / "feats").iterdir()) == ["a.npy", "b.npy", "features.json"]  # no temporary


def test_export_import_keeps_the_text_mapping_in_config_json(tmp_path, caplog) -> None:
    """export-hf then import-hf lost a fine-tuned checkpoint's text_mapping: evaluate of the imported checkpoint
    failed on characters the original mapped. config.json carries it (earful_text_mapping, which transformers'
    config keeps); a folder without it imports as before; a bad one is named."""
    from earful.eval.evaluate import vocab_from_checkpoint

    model = Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=29)
    symbols = ["<b>", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    mapping = {"é": "e", "-": " ", ",": ""}
    save_model(tmp_path / "ckpt", model, vocab={"symbols": symbols, "mapping": mapping})
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["earful_text_mapping"] == mapping
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    _, info = load_model(tmp_path / "back")
    assert info["vocab"]["mapping"] == mapping
    assert vocab_from_checkpoint(info["vocab"]).normalize("Café self-made,") == "cafe self made"
    try:
        from transformers import Wav2Vec2Config
    except ImportError:
        pass
    else:  # transformers reads the folder and keeps the key (save_pretrained writes it again)
        assert Wav2Vec2Config.from_pretrained(tmp_path / "hf").earful_text_mapping == mapping
    config["earful_text_mapping"] = {"ab": ""}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "bad")]) == 2
    assert "config.json: earful_text_mapping: keys must be single characters, got 'ab'" in caplog.text
    del config["earful_text_mapping"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "plain")]) == 0
    assert "mapping" not in load_model(tmp_path / "plain")[1]["vocab"]


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_the_model_card_says_how_to_batch_files_and_transformers_does_so(tmp_path, norm) -> None:
    """The card's "Use" section said nothing about padded batches, and a transformers user batching files with
    padding got other transcripts from a group-norm model (all 8 of a test split). Now it says what to do, and
    transformers does what it says: a group-norm model's padded file differs from the file alone with and
    without ``attention_mask``; a layer-norm model's is the same with it."""
    import transformers

    model = Wav2Vec2ForCTC(load_model_config("tiny", [f"feat_extract_norm={norm}"]), vocab_size=29)
    symbols = ["<b>", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    save_model(tmp_path / "ckpt", model, vocab={"symbols": symbols})
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    use = (tmp_path / "hf" / "README.md").read_text().split("## Use", 1)[1]
    assert 'pipeline("automatic-speech-recognition", model="PATH_OR_REPO")' in use
    hf = transformers.Wav2Vec2ForCTC.from_pretrained(tmp_path / "hf").eval()
    short, long = torch.randn(1, 8000), torch.randn(1, 20000)
    batch = torch.cat([torch.nn.functional.pad(short, (0, 12000)), long])
    mask = (torch.arange(20000) < torch.tensor([[8000], [20000]])).long()
    with torch.no_grad():
        alone = hf(short).logits[0]
        frames = len(alone)
        masked, unmasked = (hf(batch, attention_mask=a).logits[0, :frames] for a in (mask, None))
    if norm == "group":
        assert "one file at a time" in use and "batch files of the same length" in use
        assert "An `attention_mask` does not help" in use
        assert not torch.allclose(masked, alone, atol=1e-3) and not torch.allclose(unmasked, alone, atol=1e-3)
    else:
        assert "pass the processor's `attention_mask`" in use
        assert torch.allclose(masked, alone, atol=1e-4)


def test_a_pre_trained_model_s_card_names_the_command_that_gives_its_features(tmp_path) -> None:
    """An exported pre-trained model's card said `earful evaluate` and `earful transcribe` give its features in
    any batch; both refuse a pre-training checkpoint. It names `earful features`, which takes one."""
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    use = (tmp_path / "hf" / "README.md").read_text().split("## Use", 1)[1]
    assert "`earful features` give the features of one file at a time in any batch" in use
    assert "transcribe" not in use and "evaluate" not in use
    wav = tmp_path / "x.wav"
    sf.write(wav, np.random.default_rng(0).standard_normal(16000).astype("float32") * 0.1, 16000)
    assert main(["features", str(tmp_path / "ckpt"), str(wav), "--out", str(tmp_path / "f")]) == 0


def test_the_model_card_says_a_quantizer_of_the_raw_cnn_output_and_it_imports_back(tmp_path) -> None:
    """quantizer_input: raw was lost on export; it travels in config.json's earful_training, and the card says that
    transformers' pre-training head quantizes the LayerNormed features instead."""
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny", ["quantizer_input=raw"])))
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "codewords of the raw CNN output (`quantizer_input: raw`; transformers' quantizer reads the " \
           "LayerNormed features" in card
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert load_model(tmp_path / "back")[0].cfg.quantizer_input == "raw"
    save_model(tmp_path / "normed", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    assert main(["export-hf", str(tmp_path / "normed"), str(tmp_path / "hf")]) == 0
    assert "quantizer_input" not in (tmp_path / "hf" / "README.md").read_text()


@pytest.mark.parametrize("init", ["/runs/pt-tiny/checkpoints/best", "scratch"])
def test_the_model_card_shows_no_preset_that_was_not_built(tmp_path, init) -> None:
    """A model fine-tuned from a tiny checkpoint showed `model_preset: base` in its card's configuration: the
    preset is the default, which only a scratch model is built from. It is left out (and said so) where the
    architecture came from the checkpoint; a scratch model's is what was built, and shown."""
    import yaml

    from earful.interop.card import model_card

    ckpt = tmp_path / "ft" / "checkpoints" / "step-0000001"
    save_model(ckpt, Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=29),
               vocab={"symbols": ["<b>", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]})
    (tmp_path / "ft" / "config.yaml").write_text(yaml.safe_dump({"init": init, "model_preset": "base", "seed": 1}))
    card = model_card(ckpt, 0)
    shown = yaml.safe_load(card.split("```yaml", 1)[1].split("```", 1)[0])
    if init == "scratch":
        assert shown["model_preset"] == "base" and "is left out" not in card
    else:
        assert "model_preset" not in shown and shown["init"] == init
        assert "`model_preset` (base) is left out: it is the architecture of a model fine-tuned from scratch" in card


def test_the_init_checkpoint_of_a_run_exports_as_the_random_initialisation(tmp_path, tiny_corpus) -> None:
    """A run's ``checkpoints/init`` (the from-scratch baseline, its trainer.json step 0 alone) crashed export-hf
    with a KeyError on batch_seconds. Its card now says what it is; the trained checkpoint's card is as before."""
    import yaml

    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer
    from earful.train.state import RunDir

    cfg = load_pretrain_config(None, [
        "model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=4", "max_steps=1",
        "valid_every=0", "data.num_workers=0", "data.min_seconds=0.5", "data.crop_seconds=2.0", "tensorboard=false",
        "threads=1", "device=cpu", "seed=3"])
    Trainer(PretrainTask(cfg), tmp_path / "pt").fit()
    ckpts = tmp_path / "pt" / "checkpoints"
    assert main(["export-hf", str(ckpts / "init"), str(tmp_path / "hf-init")]) == 0
    card = (tmp_path / "hf-init" / "README.md").read_text()
    for fact in ("# pt: wav2vec 2.0, random initialisation (not trained)", "| steps | 0 |",
                 "| training | none: the random initialisation, before the first step", "| seed | 3 |"):
        assert fact in card, (fact, card)
    assert "## Corpus and recipe" not in card and "recipe fingerprint" not in card  # it read none, records none
    assert main(["export-hf", str(ckpts / "step-0000001"), str(tmp_path / "hf-1")]) == 0
    card = (tmp_path / "hf-1" / "README.md").read_text()
    assert "wav2vec 2.0, pre-trained" in card and "| batch | 4 s of audio per step" in card
    assert "recipe fingerprint" in card

    # a fine-tuning's init, as its trainer writes it (step 0 alone), from the pre-training's latest
    ft = RunDir(tmp_path / "ft")
    symbols = ["<b>", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    ft.save("init", Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=29), state=None, trainer={"step": 0},
            vocab={"symbols": symbols}, make_latest=False)
    (ft.root / "config.yaml").write_text(yaml.safe_dump({"init": str(tmp_path / "pt"), "seed": 1}))
    assert main(["export-hf", str(ft.ckpt / "init"), str(tmp_path / "hf-ft-init")]) == 0
    card = (tmp_path / "hf-ft-init" / "README.md").read_text()
    assert "# ft: wav2vec 2.0, CTC model before fine-tuning (not trained)" in card
    assert f"| training | none: the weights the fine-tuning started from (`{tmp_path / 'pt'}` and its CTC head)" in card
    assert f"| initialised from | `{tmp_path / 'pt'}` |" in card


@pytest.mark.parametrize("file, text, problem", [
    ("trainer", "{\n", r"trainer\.json: corrupt JSON \(Expecting property name"),
    ("trainer", "{}", r"trainer\.json: training-state format None"),
    ("trainer", '{"format": 2}', r"trainer\.json: records no step"),
    ("trainer", '{"format": 2, "step": 5, "batch_seconds": "4"}', r"trainer\.json: batch_seconds is '4', not a number"),
    ("config", "seed: [1\n", r"config\.yaml:2:1: expected ',' or ']'"),
    ("config", "- 1\n", r"config\.yaml: expected a YAML mapping"),
    ("study", "{\n", r"study\.json: corrupt JSON"),
    ("summary", "[]", r"summary\.json: expected a JSON object, found list"),
    ("summary", '{"splits": {}}', r"summary\.json: not an evaluation summary"),
], ids=["trainer-corrupt", "trainer-empty", "trainer-no-step", "trainer-text", "config-corrupt", "config-list",
        "study-corrupt", "summary-list", "summary-keys"])
def test_the_model_card_names_a_record_it_cannot_read(tmp_path, caplog, file, text, problem) -> None:
    """The card read trainer.json, config.yaml, study.json and summary.json with json/yaml alone: a corrupt
    trainer.json was json's message with no file named, a corrupt config.yaml a YAML traceback, ``{}`` a
    KeyError. Each is one line naming the file and the problem, nothing exported."""
    import re

    import yaml

    study = tmp_path / "study"
    run = study / "finetune" / "r"
    ckpt = run / "checkpoints" / "best"
    symbols = ["<b>", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    save_model(ckpt, Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=29), vocab={"symbols": symbols})
    (ckpt / "trainer.json").write_text(json.dumps({"format": 2, "step": 5, "batch_seconds": 4.0, "world_size": 1,
                                                   "accumulation": 1, "hours_padded": 0.1, "hours_real": 0.1,
                                                   "lr": 1e-4}))
    (run / "config.yaml").write_text(yaml.safe_dump({"init": "scratch", "seed": 1}))
    (study / "study.json").write_text(json.dumps({"name": "s"}))
    (study / "eval" / "r").mkdir(parents=True)
    (study / "eval" / "r" / "summary.json").write_text(json.dumps({"checkpoint": str(ckpt), "splits": {
        "test": {"greedy": {"wer": 0.5, "cer": 0.25}}}}))
    assert main(["export-hf", str(ckpt), str(tmp_path / "ok")]) == 0
    assert "In study `s`:" in (tmp_path / "ok" / "README.md").read_text()
    path = {"trainer": ckpt / "trainer.json", "config": run / "config.yaml", "study": study / "study.json",
            "summary": study / "eval" / "r" / "summary.json"}[file]
    path.write_text(text)
    caplog.clear()
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and re.match(re.escape(str(path.parent)) + "/" + problem, errors[0]), errors
    assert not (tmp_path / "hf").exists()


def test_features_of_another_checkpoint_are_refused_in_the_same_out(tmp_path, caplog, monkeypatch) -> None:
    """Two checkpoints' `earful features` into one --out mixed their .npy files with nothing to say which was
    whose. features.json records the checkpoint (and each file's audio); another checkpoint's run is refused
    before any work, as evaluate and probe refuse theirs; the same checkpoint (a moved copy too) continues."""
    import shutil

    torch.manual_seed(0)
    save_model(tmp_path / "one", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    save_model(tmp_path / "two", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    rs = np.random.RandomState(0)
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rs.randn(8000)).astype(np.float32), 16000)
    feats = tmp_path / "feats"
    assert main(["features", str(tmp_path / "one"), str(tmp_path / "a.wav"), "--out", str(feats)]) == 0
    a = np.load(feats / "a.npy")
    record = json.loads((feats / "features.json").read_text())
    assert record["checkpoint"] == str(tmp_path / "one") and record["files"] == {"a.npy": str(tmp_path / "a.wav")}
    assert record["weights_sha256"] == load_model(tmp_path / "one")[1]["files"]["model.safetensors"]["sha256"]

    caplog.clear()
    assert main(["features", str(tmp_path / "two"), str(tmp_path / "a.wav"), str(tmp_path / "b.wav"),
                 "--out", str(feats)]) == 2
    assert f"{feats}: holds the features of another checkpoint ({tmp_path / 'one'}: 1 file(s)), which these " \
           f"({tmp_path / 'two'}) would mix with; give another --out, or remove {feats}" in caplog.text
    assert sorted(p.name for p in feats.iterdir()) == ["a.npy", "features.json"]
    assert np.array_equal(np.load(feats / "a.npy"), a)

    shutil.copytree(tmp_path / "one", tmp_path / "moved")  # the same weights: continues, a.npy written again
    assert main(["features", str(tmp_path / "moved"), str(tmp_path / "a.wav"), str(tmp_path / "b.wav"),
                 "--out", str(feats)]) == 0
    record = json.loads((feats / "features.json").read_text())
    assert record["files"] == {"a.npy": str(tmp_path / "a.wav"), "b.npy": str(tmp_path / "b.wav")}
    assert np.array_equal(np.load(feats / "a.npy"), a)

    shutil.rmtree(tmp_path / "moved")  # the same folder holding other weights since: said so, not "another"
    shutil.copytree(tmp_path / "two", tmp_path / "moved")
    caplog.clear()
    assert main(["features", str(tmp_path / "moved"), str(tmp_path / "a.wav"), "--out", str(feats)]) == 2
    assert f"{feats}: holds the features of other weights of the same checkpoint folder (changed since, e.g. a " \
           f"resumed run's `best`: {tmp_path / 'moved'}: 2 file(s)), which these ({tmp_path / 'moved'})" in caplog.text

    (tmp_path / "old").mkdir()  # .npy files that record no checkpoint (an earlier version's): refused too
    np.save(tmp_path / "old" / "x.npy", np.zeros(2))
    caplog.clear()
    assert main(["features", str(tmp_path / "one"), str(tmp_path / "a.wav"), "--out", str(tmp_path / "old")]) == 2
    assert f"{tmp_path / 'old'}: holds 1 .npy file(s) (x.npy) and no features.json" in caplog.text

    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # a run whose first file fails wrote none:
    failed = tmp_path / "failed"  # its record (written first) lists a file that is not there, and holds nothing
    assert main(["features", str(tmp_path / "one"), str(tmp_path / "bad.wav"), "--out", str(failed)]) == 1
    assert sorted(p.name for p in failed.iterdir()) == ["features.json"]
    assert json.loads((failed / "features.json").read_text())["files"] == {}
    assert main(["features", str(tmp_path / "two"), str(tmp_path / "a.wav"), "--out", str(failed)]) == 0
    assert json.loads((failed / "features.json").read_text())["files"] == {"a.npy": str(tmp_path / "a.wav")}
    monkeypatch.chdir(tmp_path)  # a checkpoint and audio given by relative paths are recorded whole
    assert main(["features", "two", "b.wav", "--out", str(failed)]) == 0
    record = json.loads((failed / "features.json").read_text())
    assert record["checkpoint"] == str(tmp_path / "two") and record["files"]["b.npy"] == str(tmp_path / "b.wav")


def test_features_of_a_file_that_cannot_be_read_are_left_out_and_named(tmp_path, caplog) -> None:
    """A bad file among others stopped `earful features` (status 2) at that file, after the files before it,
    leaving the later ones undone and a features.json that listed files it never wrote. It is now reported and
    left out, as `earful transcribe` does (status 1), and features.json lists the files written; an earlier
    run's file of that name stays, as it was recorded."""
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    rs = np.random.RandomState(0)
    for name in ("a", "b", "c"):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rs.randn(8000)).astype(np.float32), 16000)
    feats = tmp_path / "feats"
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "c.wav"), "--out", str(feats)]) == 0
    c = np.load(feats / "c.npy")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "c.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(tmp_path / "short.wav", np.zeros(100, np.float32), 16000)
    caplog.clear()
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "a.wav"), str(tmp_path / "bad" / "c.wav"),
                 str(tmp_path / "short.wav"), str(tmp_path / "b.wav"), "--out", str(feats)]) == 1
    assert sorted(p.name for p in feats.iterdir()) == ["a.npy", "b.npy", "c.npy", "features.json"]
    assert np.array_equal(np.load(feats / "c.npy"), c)
    files = json.loads((feats / "features.json").read_text())["files"]
    assert files == {n: str(tmp_path / f"{n[0]}.wav") for n in ("a.npy", "b.npy", "c.npy")}
    assert f"2 of 4 inputs could not be read, no features for them: {tmp_path / 'bad' / 'c.wav'}: " in caplog.text
    assert f"{tmp_path / 'short.wav'}: too short" in caplog.text


def test_export_hf_and_features_take_a_run_directory_and_name_a_path_that_is_not_there(tmp_path, caplog) -> None:
    """export-hf of a run folder said "not an earful checkpoint (no model.json)" though finetune, evaluate and
    transcribe take one (its latest); a path that does not exist was told it had no model.json, as was finetune's
    --init. Now both take a run folder as those do, and a missing path is said to be missing."""
    from earful.train.state import RunDir

    run = RunDir(tmp_path / "run")
    model = Wav2Vec2ForPreTraining(load_model_config("tiny"))
    for step in (1, 2):
        run.save(f"step-000000{step}", model, state=None, trainer={"step": step})
    latest = run.ckpt / "step-0000002"
    with caplog.at_level(logging.INFO):
        assert main(["export-hf", str(run.root), str(tmp_path / "hf")]) == 0
    assert f"{run.root}: a run folder, its latest checkpoint: {latest}" in caplog.text
    assert "exported from checkpoint `step-0000002` of run `run`" in (tmp_path / "hf" / "README.md").read_text()
    sf.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    assert main(["features", str(run.root), str(tmp_path / "a.wav"), "--out", str(tmp_path / "feats")]) == 0
    assert json.loads((tmp_path / "feats" / "features.json").read_text())["checkpoint"] == str(latest)

    caplog.clear()
    assert main(["export-hf", str(tmp_path / "nonexist"), str(tmp_path / "hf2")]) == 2
    assert f"{tmp_path / 'nonexist'}: no such checkpoint or run folder (the path does not exist)" in caplog.text
    caplog.clear()
    assert main(["finetune", "--init", str(tmp_path / "nonexist"), "--train", str(tmp_path / "m.jsonl"),
                 "--out", str(tmp_path / "ft")]) == 2
    assert f"--init {tmp_path / 'nonexist'}: no such file or folder (give 'scratch'" in caplog.text


class _Opens:
    """Unpickling it creates a file: a pickle that ran would leave it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_fairseq_checkpoint_or_a_transformers_folder_is_named_with_what_to_do(tmp_path, caplog) -> None:
    """A fairseq checkpoint (`checkpoint_best.pt`, a pickle), given to import-hf, finetune --init or a command that
    reads earful checkpoints, was "no config.json (not a transformers model folder)" or "not a checkpoint (no
    model.json) nor a run directory", with no word of what it is or how to go on; a transformers folder given to
    features, evaluate or export-hf likewise. Each now says what it is and what to do; nothing is unpickled."""
    import argparse

    marker = tmp_path / "unpickled"
    fairseq = tmp_path / "checkpoint_best.pt"
    torch.save({"args": argparse.Namespace(arch="wav2vec2"), "model": {}, "evil": _Opens(str(marker))}, fairseq)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint_best.pt").write_bytes(fairseq.read_bytes())
    sf.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    hint = "a fairseq checkpoint?): earful reads no pickled checkpoint here (code runs as it loads): `earful " \
           "import-fairseq FILE CKPT` (a fine-tuned model with --dict, its dict.ltr.txt) makes an earful checkpoint"
    for args in (["import-hf", str(fairseq), str(tmp_path / "ck")],
                 ["features", str(fairseq), str(tmp_path / "a.wav"), "--out", str(tmp_path / "f")],
                 ["export-hf", str(tmp_path / "run"), str(tmp_path / "hf")],
                 ["finetune", "--init", str(fairseq), "--train", str(tmp_path / "m.jsonl"), "--out",
                  str(tmp_path / "ft")]):
        caplog.clear()
        assert main(args) == 2, args
        assert hint in caplog.text, (args, caplog.text)
        assert ("checkpoint_best.pt is a pickled PyTorch file" in caplog.text
                or "it holds checkpoint_best.pt" in caplog.text), caplog.text
    assert not marker.exists()
    (tmp_path / "hfdir").mkdir()  # a transformers weights file given for its folder
    (tmp_path / "hfdir" / "config.json").write_text("{}")
    (tmp_path / "hfdir" / "pytorch_model.bin").write_bytes(fairseq.read_bytes())
    caplog.clear()
    assert main(["features", str(tmp_path / "hfdir" / "pytorch_model.bin"), str(tmp_path / "a.wav"), "--out",
                 str(tmp_path / "f")]) == 2
    assert f"pytorch_model.bin is a transformers weights file: give its folder, {tmp_path / 'hfdir'}" in caplog.text


def test_an_earful_checkpoint_or_run_folder_given_to_import_hf_is_named_as_one(tmp_path, caplog) -> None:
    """`earful import-hf CKPT` of an earful checkpoint (or its run folder) called its own state.pt "a fairseq
    checkpoint?" and told to convert it with fairseq's script. It now says it is earful's, read as it is, and
    names export-hf; nothing is written."""
    ckpt = save_model(tmp_path / "run" / "checkpoints" / "best", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    torch.save({"step": 1}, ckpt / "state.pt")  # a training checkpoint's state, beside its weights
    for given, what in ((ckpt, "an earful checkpoint"), (tmp_path / "run", "an earful run folder")):
        caplog.clear()
        assert main(["import-hf", str(given), str(tmp_path / "ck")]) == 2
        said = f"{given}: no config.json (not a transformers model folder); it is {what}: the commands read it as " \
               f"it is, and `earful export-hf {given} OUT` makes a transformers folder of it"
        assert said in caplog.text, caplog.text
        assert "fairseq" not in caplog.text
    assert not (tmp_path / "ck").exists()


def test_import_hf_of_a_hub_model_id_is_the_import_of_its_folder(tmp_path, hub_models, caplog) -> None:
    """`earful import-hf ORG/NAME[@REVISION] CKPT`, as from_pretrained takes a model: earful took a local folder
    only. The Hub's snapshot of the files import-hf reads (pytorch_model.bin only where there is no safetensors,
    read with weights_only as any .bin) is imported as the folder is, saying the commit."""
    from safetensors.torch import load_file

    hf = _ctc_folder(tmp_path)
    hub_models.repos["someone/tiny"] = hf
    caplog.set_level(logging.INFO)
    assert main(["import-hf", "someone/tiny@v1", "from-hub"]) == 0
    assert main(["import-hf", str(hf), "from-folder"]) == 0
    assert (tmp_path / "from-hub" / "model.safetensors").read_bytes() == \
        (tmp_path / "from-folder" / "model.safetensors").read_bytes()
    hub_info, folder_info = (json.loads((tmp_path / f / "model.json").read_text()) for f in ("from-hub", "from-folder"))
    assert hub_info.pop("imported_from") == f"someone/tiny@{hub_models.commit}"  # what each was imported from
    assert folder_info.pop("imported_from") == str(hf.resolve()) and hub_info == folder_info
    (repo, revision, patterns), = hub_models.calls
    assert (repo, revision) == ("someone/tiny", "v1")
    assert {"config.json", "vocab.json", "tokenizer_config.json", "model.safetensors"} <= {
        f.name for f in hf.iterdir() if any(fnmatch(f.name, p) for p in patterns)}
    assert not any(fnmatch("pytorch_model.bin", p) or fnmatch("README.md", p) for p in patterns)
    assert f"the Hugging Face Hub's someone/tiny at v1, commit {hub_models.commit}: config.json, model.safetensors" \
        in caplog.text

    # a repository of pytorch_model.bin alone: fetched at the commit the first download found, and imported
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in hf.iterdir():
        if f.name != "model.safetensors":
            (legacy / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(str(hf / "model.safetensors")), legacy / "pytorch_model.bin")
    hub_models.repos["someone/legacy"] = legacy
    hub_models.calls.clear()
    assert main(["import-hf", "someone/legacy", "from-bin"]) == 0
    assert [(r, rev) for r, rev, _ in hub_models.calls] == [("someone/legacy", None),
                                                            ("someone/legacy", hub_models.commit)]
    assert fnmatch("pytorch_model.bin", hub_models.calls[1][2][0])
    got = load_file(str(tmp_path / "from-bin" / "model.safetensors"))
    assert all(torch.equal(v, got[k]) for k, v in load_file(str(tmp_path / "from-hub" / "model.safetensors")).items())


def test_features_of_a_transformers_folder_or_hub_id_are_those_of_its_import_made_once(tmp_path, hub_models, caplog,
                                                                                      monkeypatch) -> None:
    """`earful features` took an earful checkpoint or run folder only: a transformers folder or a Hub model id
    had to be given to import-hf first. Both are now imported once, into the earful cache under the digest of the
    folder's weights, and a second call (the same weights from the Hub too) reuses that import."""
    from earful.interop import hf as hf_module

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    imports = []
    import_hf_once = hf_module.import_hf
    monkeypatch.setattr(hf_module, "import_hf", lambda *a, **k: imports.append(a) or import_hf_once(*a, **k))
    hf = _ctc_folder(tmp_path)
    hub_models.repos["someone/tiny"] = hf
    sf.write(tmp_path / "a.wav", (0.1 * np.random.RandomState(0).randn(8000)).astype(np.float32), 16000)
    assert main(["import-hf", str(hf), "ckpt"]) == 0
    assert main(["features", "ckpt", "a.wav", "--out", "by-hand"]) == 0
    imports.clear()
    caplog.set_level(logging.INFO)
    for given, out in ((str(hf), "folder"), (str(hf), "again"), ("someone/tiny", "hub")):
        caplog.clear()
        assert main(["features", given, "a.wav", "--out", out]) == 0, caplog.text
        np.testing.assert_array_equal(np.load(tmp_path / out / "a.npy"), np.load(tmp_path / "by-hand" / "a.npy"))
        record = json.loads((tmp_path / out / "features.json").read_text())
        ckpt = Path(record["checkpoint"])
        assert f"{given}: a transformers folder, imported once as {ckpt}" in caplog.text
        assert record["imported_from"] == (str(hf.resolve()) if out != "hub" else f"someone/tiny@{hub_models.commit}")
        assert ckpt.parent == tmp_path / "cache" / "imports"
    assert len(imports) == 1  # the second call, and the Hub's copy of the same weights, reuse the first import
    for name in ("model.json", "model.safetensors"):
        assert (ckpt / name).read_bytes() == (tmp_path / "ckpt" / name).read_bytes(), name
    other = tmp_path / "other"  # the same weights, another feature extractor: another model, imported apart
    shutil.copytree(hf, other)
    pre = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**pre, "do_normalize": not pre["do_normalize"]}))
    assert main(["features", str(other), "a.wav", "--out", "other-out"]) == 0
    assert len(imports) == 2
    assert Path(json.loads((tmp_path / "other-out" / "features.json").read_text())["checkpoint"]) != ckpt


def test_features_of_a_transformers_folder_of_pickled_weights_say_to_import_them_by_hand(tmp_path, caplog,
                                                                                        monkeypatch) -> None:
    """A pytorch_model.bin that needs unpickling is refused as import-hf refuses it without --trust-pickle, which
    features does not take: it says to run import-hf with it, and nothing is unpickled."""
    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "unpickled"
    hf = export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "hf")
    (hf / "model.safetensors").unlink()
    torch.save({"evil": _Opens(str(marker))}, hf / "pytorch_model.bin")
    sf.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    assert main(["features", str(hf), str(tmp_path / "a.wav"), "--out", str(tmp_path / "f")]) == 2
    assert f"features takes no --trust-pickle: import it yourself, `earful import-hf {hf} CKPT --trust-pickle`, " \
           "and give CKPT" in caplog.text, caplog.text
    assert "add_safe_globals" not in caplog.text  # torch's advice is not earful's way out
    assert not marker.exists() and not (tmp_path / "f").exists()
    assert not list((tmp_path / "cache" / "imports").glob("*"))  # no empty import left, listed as incomplete


def test_a_path_not_there_of_a_hub_id_shape_says_neither_is_there(tmp_path, hub_models, caplog, monkeypatch) -> None:
    """A mistyped relative path (runs/pt) has a Hub id's shape: the error says it is neither, with the Hub's word; a
    path of no id's shape is told as before, the Hub not asked; without huggingface_hub, how to install it."""
    assert main(["import-hf", "runs/pt", "ck"]) == 2
    assert ("import-hf runs/pt: no such file or folder, nor a model on the Hugging Face Hub "
            "(RepositoryNotFoundError: 404 Client Error. Repository Not Found for url: "
            "https://huggingface.co/api/models/runs/pt/revision/main.)") in caplog.text
    caplog.clear()
    hub_models.calls.clear()
    for given in ("runs/pt/checkpoints", "/runs/pt", "wav2vec2-base", "runs/pt@x y"):
        assert main(["import-hf", given, "ck"]) == 2
        assert f"{given}: no config.json (not a transformers model folder)" in caplog.text
    assert not hub_models.calls and not (tmp_path / "ck").exists()
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed: the import fails
    assert main(["import-hf", "facebook/wav2vec2-base", "ck"]) == 2
    assert ("import-hf facebook/wav2vec2-base: no such file or folder, nor a model on the Hugging Face Hub (a Hub "
            "model id needs the huggingface_hub package") in caplog.text
    assert "pip install 'earful[hub]'" in caplog.text


def test_a_model_transformers_cannot_hold_is_refused_naming_its_checkpoint(tmp_path, caplog) -> None:
    ckpt = save_model(tmp_path / "nano", Wav2Vec2ForPreTraining(load_model_config("tiny", ["conv_padding=true"])))
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf")]) == 2
    assert f"{ckpt}: transformers' wav2vec 2.0 has no padded convolutions: a model with conv_padding=true (the " \
           "paper's preset base-nanow2v2) cannot be exported" in caplog.text
    assert not (tmp_path / "hf").exists()


def test_features_of_a_long_file_in_overlapping_windows(tmp_path, caplog, monkeypatch) -> None:
    """`earful features` took every file whole: an hour of audio is 180 k frames, whose attention no memory
    holds. --chunk-seconds takes a longer file in windows that overlap by --stride-seconds on each side, as
    `earful transcribe` cuts files (its window arithmetic, one function for both): as many frames as the whole
    file, each window's kept frames its own; a file no longer than a chunk is taken whole, exactly; a long file
    taken whole is told about the option; a stride without chunks is refused before any work."""
    import earful.interop.features as F
    from earful.eval.transcribe import chunk_spans, kept_frames, window_samples

    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(load_model_config("tiny")).eval()
    save_model(tmp_path / "ckpt", model)
    wave = (0.1 * np.random.RandomState(0).randn(int(13.75 * 16000))).astype(np.float32)
    sf.write(tmp_path / "long.wav", wave, 16000)
    monkeypatch.setattr(F, "LONG_SECONDS", 10.0)
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "long.wav"), "--out", str(tmp_path / "whole")]) == 0
    assert "long.wav: 14 s in one window (attention's memory grows with its square); --chunk-seconds" in caplog.text
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "long.wav"), "--out", str(tmp_path / "win"),
                 "--chunk-seconds", "4", "--stride-seconds", "1"]) == 0
    whole, windows = np.load(tmp_path / "whole" / "long.npy"), np.load(tmp_path / "win" / "long.npy")
    assert windows.shape == whole.shape and not np.allclose(windows, whole, atol=1e-3)  # other context: other values
    from earful.data.audio import load_audio

    wave = load_audio(tmp_path / "long.wav")  # as the command read it (16-bit WAV)
    chunk, stride = window_samples(model.cfg, 4.0, 1.0)
    spans = chunk_spans(len(wave), chunk, stride, stride)
    assert len(spans) == 6
    kept = 0
    for c in spans:  # each window's kept frames are what that window alone gives, in order
        alone = F.layer_features(model, wave[c.start : c.start + c.length])
        first, end = kept_frames(c, model.cfg.total_stride, alone.shape[1])
        np.testing.assert_allclose(windows[:, kept : kept + end - first], alone[:, first:end], atol=1e-5)
        kept += end - first
    assert kept == whole.shape[1]
    assert np.array_equal(F.layer_features(model, wave, *window_samples(model.cfg, 20.0, None)), whole)
    caplog.clear()
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "long.wav"), "--out", str(tmp_path / "bad"),
                 "--stride-seconds", "1"]) == 2
    assert "stride_seconds (--stride-seconds) = 1.0 with chunk_seconds (--chunk-seconds) = 0" in caplog.text
    assert not (tmp_path / "bad").exists()


def test_features_of_chosen_layers_in_half_precision(tmp_path, caplog) -> None:
    """Every state of every layer in float32 was the only choice: an hour of BASE's features is 7 GB. --layers keeps
    the states asked for, in that order, --dtype float16 halves the disk; features.json records both, and an
    earlier run's files of other layers or precision are refused in the same --out, as another checkpoint's."""
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(load_model_config("tiny")).eval()
    save_model(tmp_path / "ckpt", model)
    sf.write(tmp_path / "a.wav", (0.1 * np.random.RandomState(0).randn(16000)).astype(np.float32), 16000)
    ckpt, wav = str(tmp_path / "ckpt"), str(tmp_path / "a.wav")
    assert main(["features", ckpt, wav, "--out", str(tmp_path / "all")]) == 0
    assert main(["features", ckpt, wav, "--out", str(tmp_path / "some"), "--layers", "2,0", "--dtype", "float16"]) == 0
    every, some = np.load(tmp_path / "all" / "a.npy"), np.load(tmp_path / "some" / "a.npy")
    assert every.shape[0] == model.cfg.num_layers + 1 and some.dtype == np.float16 and some.shape[0] == 2
    assert np.array_equal(some, every[[2, 0]].astype(np.float16))
    record = json.loads((tmp_path / "some" / "features.json").read_text())
    assert (record["layers"], record["dtype"]) == ([2, 0], "float16")
    caplog.clear()
    assert main(["features", ckpt, wav, "--out", str(tmp_path / "all"), "--dtype", "float16"]) == 2
    assert f"{tmp_path / 'all'}: holds features of other layers, precision or windows ({{'layers': 'all', " \
           "'dtype': 'float32', 'chunk_seconds': 0.0, 'stride_seconds': 0.0})" in caplog.text
    for bad in ("3", "1,1", "x"):
        caplog.clear()
        with pytest.raises(SystemExit) if bad == "x" else contextlib.nullcontext():
            assert main(["features", ckpt, wav, "--out", str(tmp_path / "bad"), "--layers", bad]) == 2
        assert bad == "x" or "expected distinct states 0 (the transformer's input) to 2" in caplog.text
    assert not (tmp_path / "bad").exists()


def test_features_of_other_windows_are_refused_in_the_same_out(tmp_path, caplog) -> None:
    """--chunk-seconds and --stride-seconds change the features of a file longer than one window, but features.json
    recorded neither and a run of other windows into the same --out was taken silently: its files beside the
    earlier ones, with nothing to tell which was made which way. The windows as taken are recorded and other
    windows are refused, as other layers or precision; a record written before them (no such keys) is of whole
    files, the default then as now: a whole-file run continues there, a chunked one is refused."""
    torch.manual_seed(0)
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    rs = np.random.RandomState(0)
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rs.randn(6 * 16000)).astype(np.float32), 16000)
    ckpt, a, b = str(tmp_path / "ckpt"), str(tmp_path / "a.wav"), str(tmp_path / "b.wav")
    whole, chunked = tmp_path / "whole", tmp_path / "chunked"
    assert main(["features", ckpt, a, "--out", str(whole)]) == 0
    assert main(["features", ckpt, a, "--out", str(chunked), "--chunk-seconds", "2"]) == 0
    assert not np.allclose(np.load(whole / "a.npy"), np.load(chunked / "a.npy"), atol=1e-3)  # the windows matter
    record = json.loads((whole / "features.json").read_text())
    assert (record["chunk_seconds"], record["stride_seconds"]) == (0.0, 0.0)
    record = json.loads((chunked / "features.json").read_text())
    assert (record["chunk_seconds"], record["stride_seconds"]) == (2.0, 0.34)  # chunk / 6, in whole frames
    for out, other in ((whole, ["--chunk-seconds", "2"]), (chunked, []), (chunked, ["--chunk-seconds", "3"]),
                       (chunked, ["--chunk-seconds", "2", "--stride-seconds", "0.5"])):
        caplog.clear()
        assert main(["features", ckpt, b, "--out", str(out), *other]) == 2, other
        assert f"{out}: holds features of other layers, precision or windows (" in caplog.text
        assert f"would mix with; give another --out, or remove {out}" in caplog.text
        assert not (out / "b.npy").exists()
    assert main(["features", ckpt, b, "--out", str(chunked), "--chunk-seconds", "2", "--stride-seconds", "0.34"]) == 0
    assert main(["features", ckpt, b, "--out", str(whole)]) == 0  # the same windows: kept beside
    assert sorted(json.loads((whole / "features.json").read_text())["files"]) == ["a.npy", "b.npy"]
    record = json.loads((whole / "features.json").read_text())  # as a run before the windows were recorded left it
    for key in ("chunk_seconds", "stride_seconds"):
        del record[key]
    (whole / "features.json").write_text(json.dumps(record))
    assert main(["features", ckpt, a, "--out", str(whole)]) == 0
    (whole / "features.json").write_text(json.dumps(record))
    caplog.clear()
    assert main(["features", ckpt, a, "--out", str(whole), "--chunk-seconds", "2"]) == 2
    assert f"{whole}: holds features of other layers, precision or windows ({{'layers': 'all', 'dtype': 'float32', " \
           "'chunk_seconds': 0.0, 'stride_seconds': 0.0})" in caplog.text


def test_features_of_a_manifest_one_file_a_row_named_by_its_id(tmp_path, caplog) -> None:
    """`earful features` took audio files only: a corpus's manifest (segments of long files, as `earful prepare`
    writes them) had to be cut into files first. A manifest (.jsonl) among the inputs gives ID.npy a row, what the
    row's audio alone gives; features.json records each as MANIFEST#ID; a row whose audio cannot be read is named
    with its manifest and id, and left out."""
    from earful.data.manifest import Utterance, write_manifest

    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    rs = np.random.RandomState(0)
    long = (0.1 * rs.randn(24000)).astype(np.float32)
    sf.write(tmp_path / "long.wav", long, 16000)
    sf.write(tmp_path / "segment.wav", long[4000:12000], 16000)  # the second row's segment, as a file of its own
    rows = [Utterance("whole", str(tmp_path / "long.wav"), 24000, 16000, "s1"),
            Utterance("part", str(tmp_path / "long.wav"), 8000, 16000, "s1", offset=4000),
            Utterance("wrong-length", str(tmp_path / "segment.wav"), 9000, 16000, "s1")]
    write_manifest(rows, tmp_path / "m.jsonl")
    feats = tmp_path / "feats"
    assert main(["features", str(tmp_path / "ckpt"), "--out", str(feats), str(tmp_path / "m.jsonl"),
                 str(tmp_path / "segment.wav")]) == 1
    assert sorted(p.name for p in feats.iterdir()) == ["features.json", "part.npy", "segment.npy", "whole.npy"]
    assert np.array_equal(np.load(feats / "part.npy"), np.load(feats / "segment.npy"))
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "long.wav"), "--out", str(tmp_path / "file")]) == 0
    assert np.array_equal(np.load(feats / "whole.npy"), np.load(tmp_path / "file" / "long.npy"))
    files = json.loads((feats / "features.json").read_text())["files"]
    assert files == {"whole.npy": f"{tmp_path / 'm.jsonl'}#whole", "part.npy": f"{tmp_path / 'm.jsonl'}#part",
                     "segment.npy": str(tmp_path / "segment.wav")}
    assert f"{tmp_path / 'm.jsonl'}: utterance 'wrong-length': " in caplog.text
    # `earful prepare`'s ids hold '/' (Libri-light's SPEAKER/BOOK/FILE-0003, a plain folder's SPEAKER/FILE):
    # subfolders, as the id says
    write_manifest([Utterance("spk/utt", str(tmp_path / "long.wav"), 24000, 16000, "s1")], tmp_path / "slash.jsonl")
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "slash.jsonl"), "--out",
                 str(tmp_path / "slash")]) == 0
    assert np.array_equal(np.load(tmp_path / "slash" / "spk" / "utt.npy"), np.load(feats / "whole.npy"))
    assert json.loads((tmp_path / "slash" / "features.json").read_text())["files"] == {
        "spk/utt.npy": f"{tmp_path / 'slash.jsonl'}#spk/utt"}
    # an id that cannot name a file under --out: refused before any work
    for bad in ("spk/../utt", "x" * 300):
        write_manifest([Utterance(bad, str(tmp_path / "long.wav"), 24000, 16000, "s1")], tmp_path / "bad.jsonl")
        caplog.clear()
        assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "bad.jsonl"), "--out",
                     str(tmp_path / "bad")]) == 2
        assert f"utterance id {bad!r} cannot name a file" in caplog.text and not (tmp_path / "bad").exists()


def test_features_stopped_part_way_record_the_files_it_did_not_rewrite_as_they_are(tmp_path, monkeypatch) -> None:
    """features.json is written first, naming what the run sets out to write: stopped part-way (Ctrl-C, an error),
    it said an earlier run's file, not yet rewritten, held the new input's features."""
    import earful.interop.features as features

    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    rs = np.random.RandomState(0)
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rs.randn(8000)).astype(np.float32), 16000)
    (tmp_path / "new").mkdir()
    sf.write(tmp_path / "new" / "b.wav", (0.1 * rs.randn(8000)).astype(np.float32), 16000)
    feats = tmp_path / "feats"
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "b.wav"), "--out", str(feats)]) == 0
    calls = []
    real = features.layer_features

    def second_is_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "layer_features", second_is_interrupted)
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "a.wav"), str(tmp_path / "new" / "b.wav"),
                 "--out", str(feats)]) == 130
    files = json.loads((feats / "features.json").read_text())["files"]
    assert files == {"a.npy": str(tmp_path / "a.wav"), "b.npy": str(tmp_path / "b.wav")}  # b.npy: still the old


# ``python -c KILLED_FEATURES POINT ARGS...`` is ``earful features ARGS...`` that SIGKILLs itself (what the OOM killer
# sends: no handler runs) at POINT: computing its first file's features, or just after saving them
KILLED_FEATURES = """
import os
import shutil
import signal
import sys

import earful.interop.features as features
from earful.cli import main

real_save = features.atomic_save_npy


def killed(*args, **kwargs):
    if sys.argv[1] == "saved":
        real_save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)


setattr(features, "layer_features" if sys.argv[1] == "computing" else "atomic_save_npy", killed)
main(["features", *sys.argv[2:]])
"""


@pytest.mark.parametrize("point", ["computing", "saved"])
def test_features_killed_part_way_never_name_the_wrong_audio_for_a_file(tmp_path, point) -> None:
    """features.json was written first listing every planned file under its new source, and only a handler that
    a SIGKILL never runs put the earlier entries back: an earlier run's a.npy (of one/a.wav) was named as of
    two/a.wav. A file it lists that exists holds the features of the audio it names, whenever the run is killed."""
    model = Wav2Vec2ForPreTraining(load_model_config("tiny"))
    save_model(tmp_path / "ckpt", model)
    rs = np.random.RandomState(0)
    seconds = {tmp_path / "one" / "a.wav": 1.0, tmp_path / "two" / "a.wav": 0.5}
    for wav, secs in seconds.items():
        wav.parent.mkdir()
        sf.write(wav, (0.1 * rs.randn(int(secs * 16000))).astype(np.float32), 16000)
    frames = {str(wav): int(model.frame_lengths(torch.tensor([int(secs * 16000)]))[0])
              for wav, secs in seconds.items()}
    feats = tmp_path / "f"
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "one" / "a.wav"), "--out", str(feats)]) == 0

    def check_record() -> dict[str, str]:
        files = json.loads((feats / "features.json").read_text())["files"]
        for name, audio in files.items():
            if (feats / name).exists():
                assert np.load(feats / name).shape[1] == frames[audio], f"{name}: not the features of {audio}"
        return files

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLED_FEATURES, point, str(tmp_path / "ckpt"),
                           str(tmp_path / "two" / "a.wav"), "--out", str(feats)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    files = check_record()
    if point == "computing":  # not rewritten: still one/a.wav's, listed as such
        assert files == {"a.npy": str(tmp_path / "one" / "a.wav")}
    # the next run goes on from there and lists the file under its audio
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "two" / "a.wav"), "--out", str(feats)]) == 0
    assert check_record() == {"a.npy": str(tmp_path / "two" / "a.wav")}


def test_features_refuses_a_name_not_there_or_a_folder_without_audio_before_any_work(tmp_path, caplog,
                                                                                     monkeypatch) -> None:
    """`earful features CKPT nothere.flac` (or a folder without audio, e.g. a shard folder) loaded the model, wrote
    --out's features.json, and only then reported the input unreadable (status 1). Both are refused before any
    work (status 2), as `earful transcribe` refuses them; a folder with audio stands for its audio files."""
    import earful.checkpoint

    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "index.json").write_text("{}")
    loads = []
    load_model_really = earful.checkpoint.load_model
    monkeypatch.setattr(earful.checkpoint, "load_model", lambda *a, **k: loads.append(a) or load_model_really(*a, **k))
    (tmp_path / "real-shards").mkdir()  # `earful shard`'s: named so (it had been "a folder with no audio ...")
    (tmp_path / "real-shards" / "index.json").write_text(json.dumps({"format": SHARDS_FORMAT, "source": "/m.jsonl"}))
    for name, problem in ((tmp_path / "nothere.flac", "no such file or folder"),
                          (tmp_path / "nothere.jsonl", "no such file or folder"),  # it was Python's [Errno 2]
                          (tmp_path / "shards", "a folder with no audio files below it"),
                          (tmp_path / "real-shards", "a folder of shards (`earful shard`'s), not audio files; "
                           "pre-training streams it")):
        caplog.clear()
        assert main(["features", str(tmp_path / "ckpt"), str(name), "--out", str(tmp_path / "feats")]) == 2
        assert f"{name}: {problem}" in caplog.text
        assert not (tmp_path / "feats").exists() and not loads
    sf.write(tmp_path / "shards" / "a.wav", np.zeros(8000, np.float32), 16000)
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "shards"), "--out", str(tmp_path / "feats")]) == 0
    files = json.loads((tmp_path / "feats" / "features.json").read_text())["files"]
    assert files == {"a.npy": str(tmp_path / "shards" / "a.wav")}


def test_an_import_replaces_its_earlier_output_not_a_copied_checkpoint(tmp_path, caplog) -> None:
    """import-hf (and import-fairseq) took any folder holding model.json and model.safetensors alone for an
    earlier import and replaced it: a trained model copied there (a fine-tuning's checkpoint) was overwritten
    without a word. An import's model.json now records what it was imported from; a folder whose model.json
    records nothing is refused, unchanged, and an earlier import is replaced."""
    hf = _ctc_folder(tmp_path)
    mine = tmp_path / "mine"
    save_model(mine, Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=3), vocab={"symbols": ["<b>", "|", "a"]})
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    assert main(["import-hf", str(hf), str(mine)]) == 2
    assert ("mine: holds model.json, model.safetensors, not written by import-hf (its model.json names nothing it "
            "was imported from): a model of your own") in caplog.text
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 0
    assert json.loads((tmp_path / "ckpt" / "model.json").read_text())["imported_from"] == str(hf.resolve())
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 0  # an earlier import: replaced
