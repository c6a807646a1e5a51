"""Fine-tuning settings renamed (``earful/config.py`` ``RENAMED_SETTINGS``): the CTC loss normalisation is
``ctc_normalisation``; it was ``loss_normalisation``, the name the pre-training's ``model.loss_normalisation``
(another setting) has. The validation manifest is ``data.valid`` (``--valid``), as the pre-training's; it was
``data.dev`` (``--dev``). A config file, override or option that says an old name is refused, naming the new; what
earful wrote before (a run folder's config.yaml, trainer.json's recipe, a study.json's fingerprint) is read with
the new names."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from earful.config import ConfigError
from earful.finetune.config import load_finetune_config

NEW_NAME = re.escape("loss_normalisation is now called ctc_normalisation (the same values)")


def test_the_old_name_is_refused_in_a_yaml_and_an_override_naming_the_new(tmp_path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("max_steps: 5\nloss_normalisation: token\n")
    with pytest.raises(ConfigError, match=NEW_NAME):
        load_finetune_config(mine)
    with pytest.raises(ConfigError, match=NEW_NAME):
        load_finetune_config(None, ["loss_normalisation=token"])
    with pytest.raises(ConfigError, match=NEW_NAME):
        load_finetune_config("finetune-fairseq-10m", ["loss_normalisation=sentence"])
    assert load_finetune_config(None, ["ctc_normalisation=token"]).ctc_normalisation == "token"
    assert load_finetune_config("finetune-fairseq-10m").ctc_normalisation == "sentence"  # presets say the new name


def test_data_dev_is_refused_naming_data_valid_and_so_is_the_dev_option(tmp_path, capsys) -> None:
    from earful.cli import main
    from earful.pretrain.config import load_pretrain_config

    said = re.escape("data.dev is now called data.valid (the same values)")
    mine = tmp_path / "mine.yaml"
    mine.write_text("max_steps: 5\ndata:\n  dev: dev.jsonl\n")
    with pytest.raises(ConfigError, match=said):
        load_finetune_config(mine)
    with pytest.raises(ConfigError, match=said):
        load_finetune_config(None, ["data.dev=dev.jsonl"])
    with pytest.raises(ConfigError, match=said):  # the pre-training never had one: its validation is data.valid
        load_pretrain_config(None, ["data.dev=dev.jsonl"])
    assert load_finetune_config(None, ["data.valid=dev.jsonl"]).data.valid == "dev.jsonl"
    for given in (["--dev", "dev.jsonl"], ["--dev"]):  # bare too: named, not "expected one argument"
        with pytest.raises(SystemExit) as stop:
            main(["finetune", "--init", "scratch", "--train", "t.jsonl", *given, "--out", str(tmp_path)])
        assert stop.value.code == 2 and "--dev is now called --valid (the same values)" in capsys.readouterr().err


def test_the_pre_trainings_loss_normalisation_keeps_its_name() -> None:
    from earful.pretrain.config import load_pretrain_config

    assert load_pretrain_config(None, ["model.loss_normalisation=nanow2v2"]).model.loss_normalisation == "nanow2v2"


BEFORE = {"ctc_normalisation": "loss_normalisation", "data.valid.sha256": "data.dev.sha256"}  # recipe keys
RECORDS = ("manifest_paths", "manifest_audio", "manifest_labels")  # trainer.json's, by manifest key


def _as_before(run: Path) -> None:
    """``run`` as an earlier earful wrote it: its config.yaml and every trainer.json's recipe say
    loss_normalisation and data.dev."""
    config = run / "config.yaml"
    text = config.read_text()
    assert "ctc_normalisation: sentence" in text
    saved = yaml.safe_load(text.replace("ctc_normalisation:", "loss_normalisation:"))
    saved["data"]["dev"] = saved["data"].pop("valid")
    config.write_text(yaml.safe_dump(saved, sort_keys=False))
    for info in (run / "checkpoints").glob("*/trainer.json"):
        data = json.loads(info.read_text())
        if "recipe" not in data:  # checkpoints/init: the weights before step 1
            continue
        assert set(BEFORE) <= set(data["recipe"]) and all("data.valid" in data[r] for r in RECORDS)
        data["recipe"] = {BEFORE.get(k, k): v for k, v in data["recipe"].items()}
        data.update({r: {("data.dev" if k == "data.valid" else k): v for k, v in data[r].items()} for r in RECORDS})
        info.write_text(json.dumps(data))


def test_a_finetuning_run_of_before_resumes_as_the_same_recipe(tmp_path, tone_corpus, caplog) -> None:
    from earful.cli import main

    train, dev = tone_corpus
    out = tmp_path / "run"
    common = ["model_preset=tiny", "batch_seconds=7", "device_seconds=7", "data.num_workers=0", "tensorboard=false",
              "threads=1", "valid_every=0", "ckpt_every=1", "keep_last=5", "freeze_transformer_steps=1"]
    assert main(["finetune", "--init", "scratch", "--train", str(train), "--valid", str(dev), "--out", str(out),
                 "max_steps=2", *common]) == 0
    _as_before(out)
    # with the run's own config.yaml, which earful wrote: read with today's name
    assert main(["finetune", str(out / "config.yaml"), "--out", str(out), "--resume"]) == 0
    assert "another recipe" not in caplog.text
    # with the settings given again, 1 more step: trains on, and what it writes says the new name
    assert main(["finetune", "--init", "scratch", "--train", str(train), "--valid", str(dev), "--out", str(out),
                 "--resume", "max_steps=3", "--allow-changes", *common]) == 0
    segments = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert segments[-1]["recipe_changes"] == {"max_steps": [2, 3]}  # that alone: the same normalisation and data
    info = json.loads((out / "checkpoints" / "step-0000003" / "trainer.json").read_text())
    assert info["recipe"]["ctc_normalisation"] == "sentence" and not set(BEFORE.values()) & set(info["recipe"])
    written = yaml.safe_load((out / segments[-1]["config"]).read_text())
    assert "loss_normalisation" not in written and written["data"]["valid"] == str(dev) and "dev" not in written["data"]
    # a copy of the run's config.yaml is a file of the user's: the old name is refused there
    mine = tmp_path / "mine.yaml"
    mine.write_text((out / "config.yaml").read_text())
    assert yaml.safe_load(mine.read_text())["loss_normalisation"] == "sentence"
    with pytest.raises(ConfigError, match=NEW_NAME):
        load_finetune_config(mine)


def test_a_study_json_fingerprint_with_the_old_name_compares_equal() -> None:
    from earful.study.fingerprint import comparable

    today = {"study": {"finetune.per_label_set.10min": ["ctc_normalisation=token", "max_steps=10"]},
             "pretrain": {"model.loss_normalisation": "fairseq"},
             "finetune": {"ctc_normalisation": "token", "max_steps": 10, "model.mask_prob": 0.05}}
    before = {"study": {"finetune.per_label_set.10min": ["loss_normalisation=token", "max_steps=10"]},
              "pretrain": {"model.loss_normalisation": "fairseq"},
              "finetune": {"loss_normalisation": "token", "max_steps": 10, "model.mask_prob": 0.05}}
    assert comparable(before) == comparable(today)
    assert comparable(before)["pretrain"] == {"model.loss_normalisation": "fairseq"}  # the pre-training's: kept


def test_a_recorded_override_keeps_its_spacing_and_merge_writes_todays_names() -> None:
    """An override recorded as "loss_normalisation = token" (which earful accepts) compares equal to the same
    override renamed by hand with its spaces (it read "ctc_normalisation= token"); a study.json written again by
    `earful study merge` says today's names only."""
    from earful.config import renamed_override
    from earful.study.fingerprint import comparable, with_todays_names

    assert renamed_override("loss_normalisation = token") == "ctc_normalisation = token"
    before = {"study": {"finetune.per_label_set.10min": ["loss_normalisation = token"]}}
    today = {"study": {"finetune.per_label_set.10min": ["ctc_normalisation = token"]}}
    assert comparable(before) == comparable(today)
    saved = {"milestone_hours": [1.0], "pretrain_overrides": ["model.init=torch"],
             "finetune": {"overrides": ["loss_normalisation=token"], "per_label_set": {"10min": ["max_steps=3"]}},
             "fingerprint": {"pretrain": {"model.init": "torch"}, "finetune": {"loss_normalisation": "token"},
                             "study": {"finetune.overrides": ["loss_normalisation=token"]}}}
    written = json.dumps(with_todays_names(saved))
    for old in ("milestone_hours", "model.init", "loss_normalisation"):
        assert old not in written
    assert with_todays_names(saved)["finetune"]["per_label_set"] == {"10min": ["max_steps=3"]}


def test_a_link_to_a_runs_config_is_the_runs_and_a_damaged_history_is_named(tmp_path, tone_corpus) -> None:
    """A symlink to a run's config.yaml is the run's file (it was refused as a user's); a run folder whose
    history.jsonl is damaged says so (it had been told its config.yaml said an old name)."""
    from earful.train.recipe import written_by_a_run

    out = _one_step_run_of_before(tmp_path, tone_corpus)
    link = tmp_path / "link.yaml"
    link.symlink_to(out / "config.yaml")
    assert written_by_a_run(link) and load_finetune_config(link).ctc_normalisation == "sentence"
    with open(out / "history.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ConfigError, match="history.jsonl"):
        load_finetune_config(out / "config.yaml")


def test_trainer_json_keeps_its_recipe_as_written(tmp_path, tone_corpus) -> None:
    """A checkpoint's trainer.json is read as written (its recipe's SHA-256, the card's and the trackers', stays
    that of the file); only the resume's comparison reads it with today's names."""
    from earful.train.recipe import recipe_hash
    from earful.train.state import read_trainer_info

    out = _one_step_run_of_before(tmp_path, tone_corpus)
    ckpt = out / "checkpoints" / "step-0000001"
    raw = json.loads((ckpt / "trainer.json").read_text())["recipe"]
    assert read_trainer_info(ckpt)["recipe"] == raw and recipe_hash(read_trainer_info(ckpt)["recipe"]) == \
        recipe_hash(raw)


def _one_step_run_of_before(tmp_path: Path, tone_corpus) -> Path:
    """A one-step fine-tuning run folder, as an earlier earful wrote it (``_as_before``)."""
    from earful.cli import main

    train, dev = tone_corpus
    out = tmp_path / "run"
    assert main(["finetune", "--init", "scratch", "--train", str(train), "--valid", str(dev), "--out", str(out),
                 "max_steps=1", "model_preset=tiny", "batch_seconds=7", "device_seconds=7", "data.num_workers=0",
                 "tensorboard=false", "threads=1", "valid_every=0"]) == 0
    _as_before(out)
    return out


def test_the_model_card_of_a_run_of_before_shows_its_validation_manifest(tmp_path, tone_corpus) -> None:
    """A fine-tuning of before recorded its validation manifest as data.dev (config.yaml) and its digest as
    data.dev.sha256 (trainer.json): the card's corpus table shows both as data.valid's; its recipe fingerprint is
    that of trainer.json's recipe as written (the trackers'), not with today's names."""
    from earful.interop.card import model_card
    from earful.train.recipe import recipe_hash

    out = _one_step_run_of_before(tmp_path, tone_corpus)
    ckpt = out / "checkpoints" / "step-0000001"
    digest = json.loads((ckpt / "trainer.json").read_text())["recipe"]["data.dev.sha256"]
    card = model_card(ckpt, 1)
    row = next(line for line in card.splitlines() if line.startswith("| `data.valid`"))
    assert str(tone_corpus[1]) in row and digest in row, row
    assert recipe_hash(json.loads((ckpt / "trainer.json").read_text())["recipe"]) in card


def test_a_run_of_before_resumes_after_its_validation_manifest_gained_phonemes(tmp_path, tone_corpus,
                                                                              caplog) -> None:
    """`earful phonemize M --out M` on a fine-tuning's validation manifest changes labels it does not read: a run
    of before (its trainer.json's manifest records keyed data.dev) resumes as one of today does, the change named."""
    from earful.cli import main

    train, dev = tone_corpus
    valid = tmp_path / "valid.jsonl"
    valid.write_text(dev.read_text())
    out = tmp_path / "run"
    assert main(["finetune", "--init", "scratch", "--train", str(train), "--valid", str(valid), "--out", str(out),
                 "max_steps=1", "model_preset=tiny", "batch_seconds=7", "device_seconds=7", "data.num_workers=0",
                 "tensorboard=false", "threads=1", "valid_every=0"]) == 0
    _as_before(out)
    valid.write_text("".join(json.dumps({**json.loads(line), "phonemes": "a b"}) + "\n"
                             for line in valid.read_text().splitlines()))
    with caplog.at_level(logging.INFO):
        assert main(["finetune", str(out / "config.yaml"), "--out", str(out), "--resume"]) == 0
    assert "data.valid: the same audio rows as the checkpoint's with other labels (phonemes)" in caplog.text
    assert "another recipe" not in caplog.text
