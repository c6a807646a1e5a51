"""Config review (sampler/config adversarial pass): YAML 1.1 number forms, non-string presets, mixed-type keys."""

import pytest

from earful.config import ConfigError
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
