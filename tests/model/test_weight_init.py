"""The model's weight-initialisation scheme (fairseq, nanow2v2, torch) is ``model.weight_init``; it was
``model.init``, while bare ``init`` is the weights a training starts from (another setting). A config file or
override that says the old name is refused, naming the new; what earful wrote before (a checkpoint's model.json, a
run folder's config.yaml, trainer.json's recipe, a study.json's fingerprint, an exported transformers folder's
earful_training) is read with the new name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from earful.checkpoint import load_model, save_model
from earful.cli import main
from earful.config import ConfigError
from earful.finetune.config import load_finetune_config
from earful.model import Wav2Vec2ForPreTraining, load_model_config
from earful.pretrain.config import load_pretrain_config

NEW_NAME = re.escape("model.init is now called model.weight_init (the same values)")


def test_the_old_name_is_refused_in_a_yaml_and_an_override_naming_the_new(tmp_path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("init: scratch\nmodel:\n  init: torch\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(mine))}: {NEW_NAME}"):
        load_pretrain_config(mine)
    with pytest.raises(ConfigError, match=rf"override 'model.init=torch': {NEW_NAME}"):
        load_pretrain_config(None, ["init=scratch", "model.init=torch"])
    with pytest.raises(ConfigError, match=re.escape("init (model.init) is now called weight_init (model.weight_init)")):
        load_model_config("tiny", ["init=fairseq"])  # a model preset's own keys
    # the bare init, the weights a training starts from, keeps its name
    assert load_pretrain_config(None, ["init=scratch", "model_preset=tiny"]).model.weight_init == "torch"
    assert load_finetune_config(None, ["init=scratch"]).init == "scratch"
    assert load_model_config("tiny", ["weight_init=fairseq"]).weight_init == "fairseq"


def _say_init(model: dict[str, object]) -> dict[str, object]:
    """A model's settings as an earlier earful wrote them: ``init`` for ``weight_init``, in its place."""
    return {("init" if k == "weight_init" else k): v for k, v in model.items()}


def test_a_checkpoint_of_before_loads(tmp_path) -> None:
    ckpt = save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny", ["weight_init=nanow2v2"])))
    info = json.loads((ckpt / "model.json").read_text())
    info["model"] = _say_init(info["model"])  # model.json's own hash is recorded nowhere of a lone checkpoint
    (ckpt / "model.json").write_text(json.dumps(info))
    model, read = load_model(ckpt)
    assert model.cfg.weight_init == "nanow2v2" and read["model"]["init"] == "nanow2v2"


def _as_before(run: Path) -> None:
    """``run`` as an earlier earful wrote it: its config.yaml, every model.json and trainer.json's recipe say
    model.init."""
    config = run / "config.yaml"
    data = yaml.safe_load(config.read_text())
    assert data["model"]["weight_init"] == "torch"
    config.write_text(yaml.safe_dump({**data, "model": _say_init(data["model"])}, sort_keys=False))
    for ckpt in (run / "checkpoints").iterdir():
        if not ckpt.is_dir():
            continue
        info = json.loads((ckpt / "model.json").read_text())
        (ckpt / "model.json").write_text(json.dumps({**info, "model": _say_init(info["model"])}))
        trainer = json.loads((ckpt / "trainer.json").read_text())
        if "recipe" in trainer:  # checkpoints/init: the weights before step 1
            trainer["recipe"] = {("model.init" if k == "model.weight_init" else k): v
                                 for k, v in trainer["recipe"].items()}
            (ckpt / "trainer.json").write_text(json.dumps(trainer))


def test_a_pretraining_run_of_before_resumes_as_the_same_recipe(tmp_path, tiny_corpus, caplog) -> None:
    out = tmp_path / "run"
    common = ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=4",
              "valid_every=0", "ckpt_every=1", "keep_last=5", "data.num_workers=0", "data.min_seconds=0.5",
              "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu"]
    assert main(["pretrain", *common, "max_steps=2", "--out", str(out)]) == 0
    _as_before(out)
    assert '"init": "torch"' in (out / "checkpoints" / "step-0000002" / "model.json").read_text()
    # with the run's own config.yaml, which earful wrote: read with today's name
    assert main(["pretrain", str(out / "config.yaml"), "--out", str(out), "--resume"]) == 0
    assert "another recipe" not in caplog.text
    # with the settings given again, 1 more step: trains on, and what it writes says the new name
    assert main(["pretrain", *common, "max_steps=3", "--out", str(out), "--resume", "--allow-changes"]) == 0
    segments = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert segments[-1]["recipe_changes"] == {"max_steps": [2, 3]}  # that alone: the scheme is the same
    step3 = out / "checkpoints" / "step-0000003"
    recipe = json.loads((step3 / "trainer.json").read_text())["recipe"]
    assert recipe["model.weight_init"] == "torch" and "model.init" not in recipe
    model = json.loads((step3 / "model.json").read_text())["model"]
    assert model["weight_init"] == "torch" and "init" not in model
    assert "weight_init" in yaml.safe_load((out / segments[-1]["config"]).read_text())["model"]
    # a copy of the run's config.yaml is a file of the user's: the old name is refused there
    mine = tmp_path / "mine.yaml"
    mine.write_text((out / "config.yaml").read_text())
    with pytest.raises(ConfigError, match=NEW_NAME):
        load_pretrain_config(mine)


def test_a_study_json_fingerprint_with_the_old_name_compares_equal() -> None:
    from earful.study.fingerprint import comparable

    today = {"pretrain": {"model.weight_init": "torch", "model.loss_normalisation": "fairseq", "max_steps": 5},
             "finetune": {"ctc_normalisation": "token", "max_steps": 10}}
    before = {"pretrain": {"model.init": "torch", "model.loss_normalisation": "fairseq", "max_steps": 5},
              "finetune": {"loss_normalisation": "token", "max_steps": 10}}
    assert comparable(before) == comparable(today)
    assert comparable(before)["pretrain"]["model.weight_init"] == "torch"


def test_a_transformers_folder_exported_before_imports_with_its_scheme(tmp_path) -> None:
    from earful.interop.hf import export_hf, import_hf

    export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny", ["weight_init=nanow2v2"])), tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["earful_training"]["weight_init"] == "nanow2v2"
    saved["earful_training"] = _say_init(saved["earful_training"])
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert import_hf(tmp_path)[0].cfg.weight_init == "nanow2v2"
    assert load_pretrain_config(None, [], init=str(tmp_path)).model.weight_init == "nanow2v2"


def test_a_model_preset_file_with_the_old_name_is_named_and_a_whole_model_override_too(tmp_path) -> None:
    """A model preset file that says init: the refusal names the file and the setting with its section
    (model.init: not the training's init, which is another setting); 'model={init: torch}' is refused naming
    weight_init (it was an unknown key)."""
    import pytest

    from earful.config import ConfigError
    from earful.pretrain.config import load_pretrain_config

    mine = tmp_path / "mytiny.yaml"
    mine.write_text("hidden_size: 32\ninit: torch\n")
    with pytest.raises(ConfigError, match=r"model preset .*mytiny\.yaml: init \(model\.init\) is now called "
                                          r"weight_init \(model\.weight_init\)"):
        load_pretrain_config(None, [f"model_preset={mine}"])
    with pytest.raises(ConfigError, match=r"model\.init is now called model\.weight_init"):
        load_pretrain_config(None, ["model={init: torch}"])
