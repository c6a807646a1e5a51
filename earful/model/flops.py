"""Analytic FLOP count of wav2vec 2.0 pre-training, per second of audio.

Counts the matrix products (2 FLOPs per multiply-add) of the forward pass, the way MFU is usually
computed: norms, activations, softmax, dropout and the optimizer are left out. Training costs the
forward plus a backward of twice the forward, less the input gradient of the first convolution (the
waveform needs none). For BASE on 15 s utterances this gives ≈ 46 GFLOP per audio-second, the published
anchor (``tests/model/test_flops.py`` checks it).

Attention and the contrastive similarity grow with the utterance length (every frame attends to every
frame of its utterance), so the count takes the utterance length in seconds.
"""

from __future__ import annotations

from earful.data.budget import SAMPLE_RATE
from earful.model.config import ModelConfig


def forward_flops_per_second(
    cfg: ModelConfig, utterance_seconds: float = 15.0, mask_fraction: float = 0.5
) -> dict[str, float]:
    """Forward FLOPs per audio-second, by part. ``mask_fraction`` of the frames are quantized (all real
    frames for ``loss_normalisation: nanow2v2``) and scored against ``num_negatives`` distractors."""
    parts: dict[str, float] = {}
    rate = float(SAMPLE_RATE)  # positions per second at the layer's input
    c_in = 1
    conv = 0.0
    first_conv = 0.0
    for i, (c, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride, strict=True)):
        rate /= s
        f = 2.0 * rate * c * c_in * k
        conv += f
        if i == 0:
            first_conv = f
        c_in = c
    frames = rate  # frames per second (≈ 50, 49.x without padding: the count ignores the edge loss)
    d, h = cfg.hidden_size, cfg.intermediate_size
    t = frames * utterance_seconds  # frames per utterance
    parts["feature_encoder"] = conv
    parts["feature_projection"] = 2.0 * frames * cfg.conv_dim[-1] * d
    parts["positional_conv"] = 2.0 * frames * d * (d // cfg.pos_conv_groups) * cfg.pos_conv_kernel
    per_layer_dense = 2.0 * frames * (3 * d * d + d * d + 2 * d * h)  # QKV, out, FFN
    per_layer_attention = 2.0 * 2.0 * frames * t * d  # QKᵀ and AV over the utterance
    parts["transformer_dense"] = cfg.num_layers * per_layer_dense
    parts["transformer_attention"] = cfg.num_layers * per_layer_attention
    quantized = frames if cfg.loss_normalisation == "nanow2v2" else frames * mask_fraction
    g, v = cfg.num_codevector_groups, cfg.num_codevectors_per_group
    parts["quantizer"] = 2.0 * quantized * (cfg.conv_dim[-1] * g * v + g * v * cfg.codevector_dim // g)
    parts["projections"] = 2.0 * frames * (cfg.codevector_dim * cfg.final_dim + d * cfg.final_dim)
    parts["contrastive"] = 2.0 * frames * t * cfg.final_dim  # (frames × frames) similarity per utterance
    parts["_first_conv"] = first_conv
    return parts


def train_flops_per_second(cfg: ModelConfig, utterance_seconds: float = 15.0, mask_fraction: float = 0.5) -> float:
    """Forward + backward FLOPs per audio-second (backward = 2 × forward, no input gradient for the waveform)."""
    parts = forward_flops_per_second(cfg, utterance_seconds, mask_fraction)
    first = parts.pop("_first_conv")
    return 3.0 * sum(parts.values()) - first


# Dense peak throughput (FLOP/s) of common accelerators in the precision that training uses
# (bf16/fp16 tensor cores; V100: fp16), from the vendors' data sheets. Without sparsity.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; PCIe 756e12, NVL (H100 and H200) 835e12
    "A100": 312e12,
    "L4": 121e12,
    "V100": 125e12,
}


def peak_flops(device_name: str) -> float | None:
    """The data-sheet peak for a device name such as ``torch.cuda.get_device_name()`` (None if unknown)."""
    name = device_name.upper()
    if "H100" in name and "PCIE" in name:
        return 756e12
    if ("H100" in name or "H200" in name) and "NVL" in name:  # the NVL cards' data sheets: 835 dense
        return 835e12
    for key, value in PEAK_FLOPS.items():
        if key in name:
            return value
    return None
