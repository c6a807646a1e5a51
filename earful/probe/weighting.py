"""The learned softmax weighting over layers (SUPERB's weighted sum): which layers a task reads.

The layers are made comparable before they are weighted, so that a weight says how much of a layer the task
takes, not how large its activations happen to be: the sequence tasks normalise each layer per frame (zero mean,
unit variance over its channels, no learned scale; once, when the features are loaded: ``FeatureSet.normalize_``),
the utterance tasks standardise each layer's pooled statistics by the training set's (``utterance.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def normalize_layers(x: torch.Tensor) -> torch.Tensor:
    """(..., layers, dim) any float dtype → float32, each layer normalised over ``dim`` (LayerNorm, no affine)."""
    return F.layer_norm(x.float(), (x.shape[-1],))


class LayerWeightedSum(nn.Module):
    """(..., layers, dim) → (..., dim) float32: ``Σ_l softmax(w)_l · x_l``, ``w`` starting at zero (equal
    weights); ``x``'s layers made comparable already (see the module's docstring). ``only``: that hidden state
    alone (a layer-wise analysis), its weight fixed at 1 and the others' at 0."""

    def __init__(self, num_layers: int, only: int | None = None) -> None:
        super().__init__()
        if only is None:
            self.logits = nn.Parameter(torch.zeros(num_layers))
        else:  # a buffer: not trained, and softmax([-inf, 0, -inf]) is exactly one-hot
            self.register_buffer("logits", torch.full((num_layers,), -math.inf).index_fill_(0, torch.tensor(only), 0))

    def weights(self) -> torch.Tensor:
        """(layers,) softmax weights; they sum to one."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ld,l->...d", x.float(), self.weights())


def check_layer(key: str, layer: int | None, hidden_states: int) -> None:
    """Refuse a ``layer`` (the setting ``key``) the features do not hold: ``hidden_states`` of them, 0 the
    transformer's input (a filterbank: 1)."""
    if layer is not None and not 0 <= layer < hidden_states:
        raise ValueError(f"{key}={layer}: the features hold hidden states 0 to {hidden_states - 1} (0: the "
                         "transformer's input, i: layer i's output)")
