"""Probe recipes: one dataclass, its defaults the recipe measured in ``docs/probes.md``; ``key=value``
overrides on the command line (``pr.epochs=30``, ``ic.lr=0.03``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SequenceRecipe:
    """A CTC head on the layer-weighted sum (PR, ASR): Adam, learning rate decayed linearly to zero, the
    epoch with the best dev error kept."""

    epochs: int = 10
    lr: float = 0.04  # PR on the demo corpus: 2e-3 gave 80 % PER, 1e-2 57 %, 0.04 47 % (16 s checkpoint)
    batch_utterances: int = 16
    hidden: int = 0  # width of one hidden layer (GELU) before the output layer; 0 = a linear head


@dataclass
class UtteranceRecipe:
    """Linear classifiers on the layer-weighted sum of mean-pooled features (SID, IC): full-batch Adam."""

    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-4


@dataclass
class ProbeConfig:
    pr: SequenceRecipe = field(default_factory=SequenceRecipe)  # linear, as SUPERB's PR
    asr: SequenceRecipe = field(default_factory=lambda: SequenceRecipe(lr=5e-3, hidden=256))
    sid: UtteranceRecipe = field(default_factory=UtteranceRecipe)
    ic: UtteranceRecipe = field(default_factory=UtteranceRecipe)
