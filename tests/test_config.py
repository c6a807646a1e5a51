"""Configs as a user writes them: numbers in YAML and overrides, presets, unknown keys, mapping settings, the
optimizer's values checked before training."""

import re
import shlex

import pytest

from earful.config import ConfigError, override_value, parse_overrides
from earful.finetune.config import load_finetune_config
from earful.pretrain.config import load_pretrain_config


@pytest.mark.parametrize("override", ["seed=010", "log_every=0x10", "max_steps=0b11", "batch_seconds=1:30",
                                      "max_steps=1:00:00"])
def test_numbers_other_than_decimal_are_refused_not_converted(override):
    """PyYAML reads 010 as octal 8, 0x10 as 16, 1:30 as 90: silently another value (seed=010 trained seed 8)."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"config\.{key}: expected"):
        load_pretrain_config(None, [override])


def test_decimal_numbers_still_read_as_before(tmp_path):
    cfg = load_pretrain_config(None, ["seed=10", "max_steps=1_000", "optim.lr=1e-3", "batch_seconds=90.5",
                                      "data.crop_seconds=.5", "data.max_seconds=null", "log_every=+5"])
    assert (cfg.seed, cfg.max_steps, cfg.optim.lr, cfg.batch_seconds) == (10, 1000, 1e-3, 90.5)
    assert (cfg.data.crop_seconds, cfg.data.max_seconds, cfg.log_every) == (0.5, None, 5)
    path = tmp_path / "c.yaml"
    path.write_text("seed: 0\nmax_steps: 20\noptim:\n  lr: 2.0e-3\n")
    assert (lambda c: (c.seed, c.max_steps, c.optim.lr))(load_pretrain_config(path, [])) == (0, 20, 2e-3)
    path.write_text("seed: 017\n")
    with pytest.raises(ConfigError, match=r"config\.seed: expected an integer, got '017'"):
        load_pretrain_config(path, [])


def test_a_model_preset_that_is_not_a_name_is_a_config_error_naming_it(tmp_path):
    """Was a bare TypeError from Path(123), past the command line's one-line handler (a traceback)."""
    with pytest.raises(ConfigError, match=r"command-line overrides: model_preset=123: expected a model preset"):
        load_pretrain_config(None, ["model_preset=123"])
    path = tmp_path / "c.yaml"
    path.write_text("model_preset: true\n")
    with pytest.raises(ConfigError, match=r"model_preset=True"):
        load_pretrain_config(path, [])


def test_unknown_keys_of_several_types_are_named(tmp_path):
    """Was TypeError: '<' not supported between 'str' and 'int' while sorting them for the message."""
    path = tmp_path / "c.yaml"
    path.write_text("max_step: 10\n1: x\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['max_step', 1\]"):
        load_pretrain_config(path, [])


def test_a_mapping_given_whole_replaces_the_yamls_and_one_entry_adds_to_it(tmp_path):
    """text_mapping={} left the YAML's entries in place, and {"x": "y"} added to them: an override could never
    clear or replace a mapping setting. A section given whole (optim={...}) still keeps the YAML's other keys."""
    path = tmp_path / "ft.yaml"
    path.write_text('text_mapping: {"-": " ", "é": "e"}\noptim:\n  lr: 1.0e-4\n  schedule: constant\n',
                    encoding="utf-8")
    assert load_finetune_config(path, []).text_mapping == {"-": " ", "é": "e"}
    assert load_finetune_config(path, ["text_mapping={}"]).text_mapping == {}
    assert load_finetune_config(path, ['text_mapping={"x": "y"}']).text_mapping == {"x": "y"}
    assert load_finetune_config(path, ["text_mapping.x=y"]).text_mapping == {"-": " ", "é": "e", "x": "y"}
    optim = load_finetune_config(path, ["optim={lr: 2.0e-4}"]).optim
    assert (optim.lr, optim.schedule) == (2e-4, "constant")


@pytest.mark.parametrize("override, message", [
    ("optim.end_lr=-1e-3", "optim.end_lr=-0.001: expected a finite learning rate >= 0"),
    ("optim.end_lr=.nan", "optim.end_lr=nan"),
    ("optim.cyclic_base_fraction=-1", "optim.cyclic_base_fraction=-1.0: expected a fraction"),
    ("optim.tristage_init_scale=-0.5", "optim.tristage_init_scale=-0.5: expected a fraction"),
    ("optim.tristage_final_scale=2", "optim.tristage_final_scale=2.0"),
    ("optim.clip_norm=.nan", "optim.clip_norm=nan: expected a finite number"),
    ("optim.reference_batch_seconds=0", "optim.reference_batch_seconds=0.0: expected a finite number of seconds"),
    ("optim.reference_batch_seconds=-6000", "optim.reference_batch_seconds=-6000.0"),
    ("optim.eps=0", "optim.eps=0.0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1"),
])
def test_optimizer_values_no_schedule_can_use_are_refused_before_training(override, message):
    """Each passed: the schedule went negative or NaN (AdamW checks its lr once, at the peak), NaN turned
    clipping off, and a reference of 0 s raised ZeroDivisionError at the first step."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_pretrain_config(None, [override])


def test_a_folder_named_as_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    """`earful pretrain pretrain-demo ...` beside a run folder named pretrain-demo read the folder: 'Is a
    directory'. A folder is no config: the preset is read; a folder that names no preset is said to be one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrain-demo").mkdir()
    assert load_pretrain_config("pretrain-demo", []).max_steps > 0
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="runs: a folder, not a config file, and no such preset"):
        load_pretrain_config("runs", [])


@pytest.mark.parametrize(("load", "command", "other"), [(load_pretrain_config, "pretrain", "finetune-demo"),
                                                          (load_finetune_config, "finetune", "pretrain-demo")])
def test_a_training_command_lists_its_own_presets_and_names_anothers(load, command, other, tmp_path, monkeypatch):
    """`earful pretrain nosuch` listed every preset, the fine-tuning ones too, and `earful finetune nosuch` named the
    word twice ("nosuch: nosuch: no such file ..."); `earful pretrain finetune-demo` was refused for the keys it
    does not know (freeze_feature_encoder, ...). Each command lists its own presets, names the word once, and says
    that another command's preset is that command's."""
    from earful.config import PRESET_DIR

    monkeypatch.chdir(tmp_path)
    mine = sorted(p.stem for p in PRESET_DIR.glob(f"{command}-*.yaml"))
    assert len(mine) >= 2
    with pytest.raises(ConfigError) as refused:
        load("nosuch", [])
    assert str(refused.value) == f"nosuch: no such file and no such preset (presets: {mine})"
    with pytest.raises(ConfigError) as refused:
        load(other, [])
    assert str(refused.value) == (f"{other}: a preset of earful {other.split('-')[0]}, not of earful {command} "
                                  f"(earful {command}'s presets: {mine})")
    assert load(mine[0], []).max_steps > 0
    with pytest.raises(ConfigError) as refused:  # a model preset is no command's: it was "a preset of earful base"
        load("model/base", [])
    assert str(refused.value) == f"model/base: not a preset of earful {command} (earful {command}'s presets: {mine})"


def test_a_folder_named_as_a_model_preset_does_not_hide_it(tmp_path, monkeypatch):
    """A run folder called base (``--out base``) beside the command hid the model preset base: model_preset=base
    read the folder and was refused, listing the training presets. The model preset is read, as a training
    preset is; a folder that names no model preset is said to be one, with the model presets."""
    from earful.model import load_model_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    assert load_model_config("base").num_layers == 12
    assert load_pretrain_config(None, ["model_preset=base"]).model.num_layers == 12
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match=r"runs: a folder, not a config file, and no such model preset \(presets: "
                                          r"\[.*'tiny'"):
        load_model_config("runs")


@pytest.mark.parametrize("override, twice", [("optim={lr: 1.0e-3, lr: 2.0e-3}", "'lr'"),
                                             ("text_mapping={'-': ' ', '-': ''}", "'-'"),
                                             ("model={dropout: 0.1, mask: {a: 1, a: 2}}", "'a'")])
def test_a_key_given_twice_inside_one_override_is_refused_naming_it(override, twice):
    """`optim={lr: 1.0e-3, lr: 2.0e-3}` trained with 2e-3 without a word (YAML keeps the last), where a YAML file
    saying the same is refused with its line: the override is refused too, named."""
    from earful.config import parse_overrides

    message = rf"override {re.escape(repr(override))}: key {re.escape(twice)} is given twice in one mapping"
    with pytest.raises(ConfigError, match=message):
        parse_overrides([override])
    with pytest.raises(ConfigError, match=rf"^command-line overrides: {message}"):
        (load_finetune_config if "text_mapping" in override else load_pretrain_config)(None, [override])
    assert parse_overrides(["optim={lr: 1.0e-3}", "optim={lr: 2.0e-3}"]) == {"optim": {"lr": 2e-3}}  # two overrides


@pytest.mark.parametrize("override, message", [
    ("model.feature_grad_mult=.nan", "model.feature_grad_mult=nan: expected a finite multiplier >= 0"),
    ("model.feature_grad_mult=.inf", "model.feature_grad_mult=inf: expected a finite multiplier >= 0"),
    ("model.feature_grad_mult=-1", "model.feature_grad_mult=-1.0: expected a finite multiplier >= 0"),
    ("health.after_steps=-1", "health.after_steps=-1: expected an integer >= 0"),
    ("health.collapse_perplexity=.nan", "health.collapse_perplexity=nan: expected a finite hard perplexity >= 0"),
    ("health.collapse_perplexity=-1", "health.collapse_perplexity=-1.0"),
    ("health.stuck_accuracy_margin=.nan", "health.stuck_accuracy_margin=nan: expected a finite accuracy margin"),
    ("health.stuck_accuracy_margin=-0.1", "health.stuck_accuracy_margin=-0.1"),
    ("health.saturated_accuracy=1.5", "health.saturated_accuracy=1.5: expected a finite accuracy in \\(0, 1\\]"),
    ("health.saturated_accuracy=0", "health.saturated_accuracy=0.0"),
    ("health.grad_norm_factor=-1", "health.grad_norm_factor=-1.0: expected a finite factor > 0"),
    ("health.grad_norm_factor=.inf", "health.grad_norm_factor=inf"),
])
@pytest.mark.parametrize("loader", [load_pretrain_config, load_finetune_config])
def test_a_cnn_gradient_multiplier_or_health_threshold_no_run_can_use_is_refused_naming_it(override, message, loader):
    """model.feature_grad_mult was checked for < 0 only: NaN (every CNN gradient NaN) and inf passed, in
    pre-training and fine-tuning; the health thresholds were never checked (NaN turned a warning off without a
    word, health.grad_norm_factor=-1 warned at every log)."""
    with pytest.raises(ConfigError, match=rf"^command-line overrides: {message}"):
        loader(None, [override])


def test_the_edges_of_the_health_thresholds_and_gradient_multiplier_are_accepted():
    cfg = load_pretrain_config(None, ["model.feature_grad_mult=0", "health.after_steps=0",
                                      "health.collapse_perplexity=0", "health.stuck_accuracy_margin=0",
                                      "health.saturated_accuracy=1", "health.grad_norm_factor=1e-9"])
    assert (cfg.model.feature_grad_mult, cfg.health.saturated_accuracy) == (0.0, 1.0)
    assert load_finetune_config(None, ["model.feature_grad_mult=null"]).model.feature_grad_mult is None
    from earful.model import load_model_config

    with pytest.raises(ValueError, match="model.feature_grad_mult=nan"):
        load_model_config("tiny", ["feature_grad_mult=.nan"])


def test_a_runs_config_reads_back_as_written_where_its_model_preset_file_is_gone(tmp_path, monkeypatch):
    """A run pre-trained with model_preset=mymodel.yaml (a relative path) wrote config.yaml, whose model section
    holds every model setting; reading it back resolved the preset all the same, so from another folder (a Slurm
    requeue started elsewhere), or once the file was removed, the run's own config was refused: "mymodel.yaml: no
    such file and no such model preset". It reads back as written; a model section that does not set everything
    still starts from the preset, and names it where it is gone."""
    from earful.config import save_yaml, to_dict
    from earful.train.recipe import start_history

    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    (tmp_path / "a" / "mymodel.yaml").write_text("conv_dim: [32, 32, 32, 32, 32, 32, 32]\nhidden_size: 64\n"
                                                 "num_layers: 2\nnum_heads: 2\nintermediate_size: 128\n"
                                                 "pos_conv_kernel: 16\npos_conv_groups: 4\n")
    cfg = load_pretrain_config("pretrain-demo", ["model_preset=mymodel.yaml"])
    assert (cfg.model_preset, cfg.model.num_layers, cfg.model.hidden_size) == ("mymodel.yaml", 2, 64)
    run = tmp_path / "run"
    run.mkdir()
    start_history(run, cfg, 1)
    monkeypatch.chdir(tmp_path)
    assert to_dict(load_pretrain_config(run / "config.yaml")) == to_dict(cfg)
    (tmp_path / "a" / "mymodel.yaml").unlink()
    monkeypatch.chdir(tmp_path / "a")
    back = load_pretrain_config(run / "config.yaml", ["optim.lr=1e-3"])  # a resume's overrides too
    assert (to_dict(back.model), back.model_preset, back.optim.lr) == (to_dict(cfg.model), "mymodel.yaml", 1e-3)
    partial = tmp_path / "partial.yaml"
    partial.write_text("model_preset: mymodel.yaml\nmodel:\n  num_layers: 3\n")
    with pytest.raises(ConfigError, match=r"mymodel\.yaml: no such file and no such model preset"):
        load_pretrain_config(partial)
    fine = load_finetune_config("finetune-demo", ["model_preset=gone.yaml", "init=scratch"])
    save_yaml(fine, tmp_path / "ft.yaml")  # fine-tuning reads its preset only to build a scratch model
    assert to_dict(load_finetune_config(tmp_path / "ft.yaml")) == to_dict(fine)


def test_a_runs_config_of_before_a_setting_was_added_reads_as_the_run_trained(tmp_path):
    """A run folder's config.yaml written before model.group_norm_padding existed (its runs trained with "included")
    read as today's default, "excluded": resumed with it, as a refusal advises, the run was refused again. A run's
    config without the key reads as "included", in pre-training and fine-tuning; any other YAML as the default."""
    import yaml

    from earful.train.recipe import start_history

    for loader, preset in ((load_pretrain_config, "pretrain-demo"), (load_finetune_config, "finetune-demo")):
        run = tmp_path / preset
        run.mkdir()
        start_history(run, loader(preset, ["init=scratch"] if loader is load_finetune_config else []), 1)
        config = yaml.safe_load((run / "config.yaml").read_text())
        del config["model"]["group_norm_padding"]
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        assert loader(run / "config.yaml").model.group_norm_padding == "included"
        assert loader(run / "config.yaml", ["model.group_norm_padding=excluded"]).model.group_norm_padding == "excluded"
        mine = tmp_path / f"{preset}.yaml"
        mine.write_text(yaml.safe_dump(config, sort_keys=False))
        assert loader(mine).model.group_norm_padding == "excluded"


@pytest.mark.parametrize("value", [5e-05, 1e20, -1e-7, float("inf"), 0.5, 3, True, None, "no", "010", "1e-4", "1:30",
                                   "a b", "a #b", "#x", " lead", "é", "a: b", "[dev] 1.jsonl", "*x", "!x", "{x", "null",
                                   "", "a=b", "it's", 'a "q"', "x\ny", [5e-05, "a #b", "#c", "a: b"],
                                   [2, {"batch_seconds": 8, "lr": 5e-05}], {"1.5h": "a #b.jsonl", "x": [None, False]}])
def test_an_override_value_reads_back_as_the_value(value) -> None:
    """A value written as a ``key=value`` override (``earful study merge`` prints them), quoted for a shell and
    split as a shell splits it, reads back as that value: a float JSON writes without a point (5e-05) read back as
    text, a text that is no plain YAML (``[dev] 1.jsonl``) could not be written, one holding ' #' in a list was the
    list's text."""
    override = shlex.quote(f"key={override_value(value)}")
    back = parse_overrides(shlex.split(override))["key"]
    assert back == value and (type(back) is type(value) or isinstance(value, dict)), override
