"""The learned softmax weighting over layers (SUPERB's weighted sum): which layers a task reads.

The layers are made comparable before they are weighted, so that a weight says how much of a layer the task
takes, not how large its activations happen to be: the sequence tasks normalise each layer per frame (zero mean,
unit variance over its channels, no learned scale; once, when the features are loaded: ``FeatureSet.normalize_``),
the utterance tasks standardise each layer's pooled statistics by the training set's (``utterance.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normalize_layers(x: torch.Tensor) -> torch.Tensor:
    """(..., layers, dim) any float dtype → float32, each layer normalised over ``dim`` (LayerNorm, no affine)."""
    return F.layer_norm(x.float(), (x.shape[-1],))


class LayerWeightedSum(nn.Module):
    """(..., layers, dim) → (..., dim) float32: ``Σ_l softmax(w)_l · x_l``, ``w`` starting at zero (equal
    weights); ``x``'s layers made comparable already (see the module's docstring)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def weights(self) -> torch.Tensor:
        """(layers,) softmax weights; they sum to one."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ld,l->...d", x.float(), self.weights())
