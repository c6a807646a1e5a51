"""`earful pretrain / finetune --print-config`: the resolved config, which trains the same recipe, and its batch."""

import logging
import os
from pathlib import Path

import pytest
import yaml

from earful.cli import main
from earful.finetune.config import load_finetune_config
from earful.pretrain.config import load_pretrain_config


def printed(capsys, monkeypatch, tmp_path: Path, argv: list[str]) -> str:
    """What ``argv`` prints, run in an empty folder, which it must leave empty."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    assert not list(tmp_path.iterdir())  # nothing written, not even the --out folder
    return capsys.readouterr().out


@pytest.mark.parametrize("command, load, preset", [("pretrain", load_pretrain_config, "pretrain-demo"),
                                                   ("finetune", load_finetune_config, "finetune-demo")])
def test_print_config_is_a_config_of_the_same_recipe_and_writes_nothing(command, load, preset, capsys, monkeypatch,
                                                                        tmp_path, caplog) -> None:
    """There was no way to see the settings a command line resolves to (preset ← YAML ← overrides) or the
    accumulation a batch in seconds makes, short of starting the run: --print-config prints the config as YAML,
    which given back as the config trains the same recipe, logs the batch, and trains and writes nothing."""
    caplog.set_level(logging.INFO)
    over = ["batch_seconds=48", "device_seconds=16", "optim.lr=1e-3", "max_steps=300"]
    (tmp_path / "cwd").mkdir()
    text = printed(capsys, monkeypatch, tmp_path / "cwd", [command, preset, *over, "--out", "runs/x", "--print-config"])
    assert yaml.safe_load(text)["batch_seconds"] == 48.0
    saved = tmp_path / "printed.yaml"
    saved.write_text(text)
    assert load(saved) == load(preset, over)
    assert "batch 48 s = 1 device(s) × 16 s × 3 accumulation" in caplog.text
    assert "300 steps: 4.00 h of audio (batch × steps, padded, at most)" in caplog.text


def test_print_config_says_the_batch_on_the_world_size_torchrun_sets(capsys, monkeypatch, tmp_path, caplog) -> None:
    """The accumulation depends on the devices: WORLD_SIZE (as torchrun sets it) gives it for that many; the lr
    scaling is said with its reference; device_seconds=auto is found only on the device; a batch no layout can
    make is refused, as the run would refuse it."""
    caplog.set_level(logging.INFO)
    monkeypatch.setitem(os.environ, "WORLD_SIZE", "4")
    printed(capsys, monkeypatch, tmp_path, ["pretrain", "pretrain-demo", "batch_seconds=4800", "device_seconds=150",
                                             "optim.lr_scaling=sqrt", "optim.reference_batch_seconds=1200",
                                             "optim.lr=1e-4", "--print-config"])
    assert "batch 4800 s = 4 device(s) × 150 s × 8 accumulation" in caplog.text
    assert "peak lr 0.0002 (optim.lr 0.0001 at 1200 s, sqrt scaling)" in caplog.text
    caplog.clear()
    printed(capsys, monkeypatch, tmp_path, ["pretrain", "pretrain-demo", "device_seconds=auto", "--print-config"])
    assert "device_seconds=auto: the micro-batch, and so the accumulation, is found on the device" in caplog.text
    caplog.clear()
    assert main(["pretrain", "pretrain-demo", "batch_seconds=1e6", "device_seconds=1", "--print-config"]) == 2
    assert "needs 1e+06 micro-batches a step (at most 100,000)" in caplog.text


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_out_is_required_but_with_print_config(command, caplog) -> None:
    assert main([command, f"{command}-demo"]) == 2
    assert "the following arguments are required: --out" in caplog.text


def test_finetune_print_config_refuses_an_init_that_names_nothing(capsys, monkeypatch, tmp_path, caplog) -> None:
    """`finetune --init nowhere --print-config` printed a config (exit 0) whose run then stopped at once with
    "--init nowhere: no such file or folder", where `pretrain --print-config` refuses it: it is refused as the run
    refuses it, an --init given or init in the config; a config without an init still prints (a template)."""
    assert main(["finetune", "finetune-demo", "--init", str(tmp_path / "nowhere"), "--print-config"]) == 2
    assert f"--init {tmp_path / 'nowhere'}: no such file or folder" in caplog.text
    caplog.clear()
    assert main(["finetune", "finetune-demo", f"init={tmp_path / 'gone'}", "--print-config"]) == 2
    assert f"init {tmp_path / 'gone'}: no such file or folder" in caplog.text
    assert "init: scratch" in printed(capsys, monkeypatch, tmp_path, ["finetune", "finetune-demo", "--init",
                                                                       "scratch", "--print-config"])


def test_finetune_print_config_refuses_vocab_init_of_a_model_without_one(tmp_path, caplog) -> None:
    """`finetune --init PRETRAINED vocab=init --print-config` (or --init scratch) printed a config (exit 0) that
    the run refused at once (a pre-trained or random model has no vocabulary to keep): refused by --print-config
    too."""
    from earful.checkpoint import save_model
    from earful.model import Wav2Vec2ForPreTraining, load_model_config

    save_model(tmp_path / "pt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    assert main(["finetune", "finetune-demo", "--init", str(tmp_path / "pt"), "vocab=init", "--print-config"]) == 2
    assert f"vocab=init: --init {tmp_path / 'pt'} is no CTC model (no vocabulary)" in caplog.text
    caplog.clear()  # a scratch model has none either: printed, exit 0
    assert main(["finetune", "finetune-demo", "--init", "scratch", "vocab=init", "--print-config"]) == 2
    assert "vocab=init: --init scratch is no CTC model (no vocabulary)" in caplog.text
