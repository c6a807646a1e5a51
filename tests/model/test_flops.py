"""The analytic FLOP count against the published anchor (no timing here: numbers live in benchmarks/)."""

from earful.model import load_model_config
from earful.model.flops import forward_flops_per_second, peak_flops, train_flops_per_second


def test_base_costs_about_46_gflop_per_audio_second() -> None:
    flops = train_flops_per_second(load_model_config("base"), utterance_seconds=15.0)
    assert 44e9 < flops < 48e9


def test_parts_scale_as_expected() -> None:
    cfg = load_model_config("base")
    short, long = forward_flops_per_second(cfg, 5.0), forward_flops_per_second(cfg, 15.0)
    assert long["transformer_attention"] == 3 * short["transformer_attention"]  # grows with the utterance
    assert long["feature_encoder"] == short["feature_encoder"]  # per second, independent of length
    two = forward_flops_per_second(load_model_config("base", ["num_layers=2"]), 15.0)
    assert two["transformer_dense"] * 6 == long["transformer_dense"]


def test_peak_lookup() -> None:
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 NVL") == peak_flops("NVIDIA H200 NVL") == 835e12
    assert peak_flops("some CPU") is None
