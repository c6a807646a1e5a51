"""Continued pre-training (`earful pretrain --init`): from an earful pre-training run or a transformers
Wav2Vec2ForPreTraining folder, the model whole and its settings; recorded, resumed and refused as fine-tuning's
init is."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from earful.checkpoint import save_model
from earful.cli import main
from earful.model import Wav2Vec2ForCTC, load_model_config


def _pretrain(train: Path, out: Path, steps: int, *extra: str) -> int:
    return main(["pretrain", f"data.train={train}", "batch_seconds=4", "device_seconds=4", f"max_steps={steps}",
                 "valid_every=0", "ckpt_every=1000", "data.num_workers=0", "data.min_seconds=0.5",
                 "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu", "--out", str(out), *extra])


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def test_pretraining_continues_from_a_run_or_a_transformers_folder(tmp_path, tiny_corpus, caplog) -> None:
    """There was no way to continue pre-training from a checkpoint (`init` was an unknown key): domain adaptation
    of a published model meant writing code. `--init` takes the weights whole, the model's settings with them
    (model_preset is recorded as init; a model setting given applies over them), records the weights' SHA-256 in
    trainer.json and the recipe, and a resume from other weights is refused."""
    train = tiny_corpus[0]
    assert _pretrain(train, tmp_path / "a", 2, "model_preset=tiny") == 0
    assert main(["export-hf", str(tmp_path / "a"), str(tmp_path / "hf")]) == 0
    trained = _weights(tmp_path / "a", "step-0000002")

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _pretrain(train, tmp_path / "b", 2, "--init", str(tmp_path / "hf"), "model_preset=small",
                         "model.mask_prob=0.3") == 0
    assert "model_preset=small is not used: the model is init" in caplog.text
    start = _weights(tmp_path / "b", "init")
    assert start.keys() == trained.keys() and all(torch.equal(start[k], trained[k]) for k in trained)
    cfg = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    tiny = load_model_config("tiny")
    assert (cfg["init"], cfg["model_preset"]) == (str(tmp_path / "hf"), "init")
    assert (cfg["model"]["hidden_size"], cfg["model"]["num_layers"]) == (tiny.hidden_size, tiny.num_layers)
    assert cfg["model"]["mask_prob"] == 0.3  # given, over the initial model's
    info = json.loads((tmp_path / "b" / "checkpoints" / "step-0000002" / "trainer.json").read_text())
    assert info["init_checkpoint"] == str(tmp_path / "hf") and info["recipe"]["init.sha256"] == info["init_sha256"]
    assert main(["export-hf", str(tmp_path / "b"), str(tmp_path / "b-hf")]) == 0
    assert f"| initialised from | `{tmp_path / 'hf'}` (SHA-256 `{info['init_sha256']}`) |" in \
        (tmp_path / "b-hf" / "README.md").read_text()

    # from an earful run folder: its latest checkpoint; resumed with the same init, refused with another
    assert _pretrain(train, tmp_path / "c", 1, "--init", str(tmp_path / "a")) == 0
    assert all(torch.equal(v, trained[k]) for k, v in _weights(tmp_path / "c", "init").items())
    assert _pretrain(train, tmp_path / "c", 2, "--init", str(tmp_path / "a"), "--resume", "--allow-changes") == 0
    caplog.clear()
    assert _pretrain(train, tmp_path / "c", 2, "--init", str(tmp_path / "a" / "checkpoints" / "init"),
                     "--resume") == 2
    assert "another recipe than the run was trained with (init.sha256: " in caplog.text

    # a scratch run records no init, as before
    scratch = json.loads((tmp_path / "a" / "checkpoints" / "step-0000002" / "trainer.json").read_text())
    assert "init_sha256" not in scratch and "init.sha256" not in scratch["recipe"]


def test_pretraining_refuses_an_init_it_cannot_continue(tmp_path, tiny_corpus, caplog) -> None:
    train = tiny_corpus[0]
    save_model(tmp_path / "ctc", Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=5),
               vocab={"symbols": ["<b>", "|", "a", "b", "c"]})
    caplog.clear()
    assert _pretrain(train, tmp_path / "x", 1, "--init", str(tmp_path / "ctc")) == 2
    assert "a Wav2Vec2ForCTC (fine-tuned with CTC): its quantizer and projections, which pre-training trains, " \
           "are gone" in caplog.text
    assert _pretrain(train, tmp_path / "a", 1, "model_preset=tiny") == 0
    caplog.clear()
    assert _pretrain(train, tmp_path / "y", 1, "--init", str(tmp_path / "a"), "model.hidden_size=48",
                     "model.num_heads=2") == 2
    assert f"init={tmp_path / 'a'}: its weights do not fit this run's model" in caplog.text
    caplog.clear()
    assert _pretrain(train, tmp_path / "z", 1, "--init", str(tmp_path / "nowhere")) == 2
    # named by itself, not credited to the run's overrides ("command-line overrides: init ...", "the defaults: ...")
    nowhere = f"init {tmp_path / 'nowhere'}: no such file or folder"
    assert any(r.getMessage().startswith(nowhere) for r in caplog.records)
    assert not any((tmp_path / n / "checkpoints").exists() for n in ("x", "y", "z"))  # refused before any work


def test_a_continued_pretraining_resumes_after_its_init_moved(tmp_path, tiny_corpus) -> None:
    """`--resume` of a continued pre-training whose init folder had moved or been removed stopped with "init X: no
    such file or folder": the config read the model settings from the init before the task could fall back on the
    weights the run recorded (as a fine-tuning does). The run's own checkpoint holds the model: it resumes."""
    train = tiny_corpus[0]
    assert _pretrain(train, tmp_path / "a", 1, "model_preset=tiny") == 0
    assert main(["export-hf", str(tmp_path / "a"), str(tmp_path / "hf")]) == 0
    assert _pretrain(train, tmp_path / "b", 1, "--init", str(tmp_path / "hf")) == 0
    (tmp_path / "hf").rename(tmp_path / "hf-moved")
    assert _pretrain(train, tmp_path / "b", 2, "--init", str(tmp_path / "hf"), "--resume", "--allow-changes") == 0
    info = json.loads((tmp_path / "b" / "checkpoints" / "step-0000002" / "trainer.json").read_text())
    assert info["init_checkpoint"] == str(tmp_path / "hf")
    assert _pretrain(train, tmp_path / "c", 1, "--init", str(tmp_path / "hf"), "--resume-or-start") == 2  # no run


def test_export_hf_refuses_the_init_folder_given_relative_to_another_folder(tmp_path, tiny_corpus, monkeypatch,
                                                                             caplog) -> None:
    """export-hf refused the folder of the model's initial weights by the path trainer.json records as given: an
    init given relative to where the training ran, exported from another folder, was replaced by the export."""
    train = tiny_corpus[0]
    assert _pretrain(train, tmp_path / "a", 1, "model_preset=tiny") == 0
    assert main(["export-hf", str(tmp_path / "a"), str(tmp_path / "hf")]) == 0
    monkeypatch.chdir(tmp_path)
    assert _pretrain(train, tmp_path / "b", 1, "--init", "hf") == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    caplog.clear()
    assert main(["export-hf", str(tmp_path / "b"), str(tmp_path / "hf")]) == 2
    assert "the output folder holds the weights the model's training started from" in caplog.text
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before


def test_a_transformers_init_is_hashed_once(tmp_path, tiny_corpus, monkeypatch) -> None:
    """Continued pre-training from a transformers folder hashed its weights twice (the config read the model
    settings through resolve_init, which hashes every weights file, then the task resolved it again): seconds a
    start for a large model, more in a study, which loads its pre-training config several times."""
    import earful.train.init as init

    train = tiny_corpus[0]
    assert _pretrain(train, tmp_path / "a", 1, "model_preset=tiny") == 0
    assert main(["export-hf", str(tmp_path / "a"), str(tmp_path / "hf")]) == 0
    hashed: list[Path] = []
    real = init.sha256
    monkeypatch.setattr(init, "sha256", lambda p: hashed.append(Path(p)) or real(p))
    assert _pretrain(train, tmp_path / "b", 1, "--init", str(tmp_path / "hf")) == 0
    assert hashed == [tmp_path / "hf" / "model.safetensors"]


def test_a_scratch_pretraining_is_not_resumed_with_an_init(tmp_path, tiny_corpus, caplog) -> None:
    """A pre-training started from scratch, resumed with --init X --allow-changes, continued its own weights but
    recorded X as its initial weights (trainer.json, the model card's "initialised from"), and the warning did not
    name init (the recipe compares init.sha256 only where the checkpoint records it). Refused, naming the way."""
    train = tiny_corpus[0]
    assert _pretrain(train, tmp_path / "a", 1, "model_preset=tiny") == 0
    assert main(["export-hf", str(tmp_path / "a"), str(tmp_path / "hf")]) == 0
    caplog.clear()
    assert _pretrain(train, tmp_path / "a", 2, "--init", str(tmp_path / "hf"), "--resume", "--allow-changes") == 2
    assert f"init={tmp_path / 'hf'}: the run in this folder started from scratch" in caplog.text
    assert not (tmp_path / "a" / "checkpoints" / "step-0000002").exists()


def test_an_init_error_names_where_init_was_set_but_for_init_itself(tmp_path) -> None:
    """`--init X` is named by itself; `init=X` in a study's pretrain_overrides or in a YAML names those too (a
    user looks for the setting there)."""
    import pytest

    from earful.config import ConfigError
    from earful.pretrain.config import load_pretrain_config

    nowhere = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=rf"^init {nowhere}: no such file or folder"):
        load_pretrain_config(None, [], init=str(nowhere))
    with pytest.raises(ConfigError, match=rf"^the study's pretrain_overrides: init {nowhere}: no such file"):
        load_pretrain_config(None, [f"init={nowhere}"], overrides_from="the study's pretrain_overrides")
    (tmp_path / "p.yaml").write_text(f"init: {nowhere}\n")
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'p.yaml'}: init {nowhere}: no such file"):
        load_pretrain_config(tmp_path / "p.yaml")


def test_print_config_refuses_a_ctc_init_as_the_run_does(tmp_path, tiny_corpus, caplog) -> None:
    """`pretrain --init CTC_MODEL --print-config` printed a config (exit 0) that the run then refused at once (a
    CTC model has no quantizer to continue): an earful CTC checkpoint or a transformers Wav2Vec2ForCTC folder is
    refused by --print-config too, with the run's words."""
    save_model(tmp_path / "ctc", Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=5),
               vocab={"symbols": ["<b>", "|", "a", "b", "c"]})
    assert main(["export-hf", str(tmp_path / "ctc"), str(tmp_path / "hf")]) == 0
    for init in ("ctc", "hf"):
        caplog.clear()
        assert main(["pretrain", f"data.train={tiny_corpus[0]}", "--init", str(tmp_path / init),
                     "--print-config"]) == 2
        assert f"init={tmp_path / init}: a Wav2Vec2ForCTC (fine-tuned with CTC): its quantizer and projections" \
            in caplog.text
