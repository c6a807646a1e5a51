"""Probe recipes: one dataclass, its defaults the recipe measured in ``docs/probes.md``; ``key=value``
overrides on the command line (``pr.epochs=30``, ``ic.lr=0.03``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from earful.config import at_least
from earful.eval.vocab import check_mapping


@dataclass
class SequenceRecipe:
    """A CTC head on the layer-weighted sum (PR, ASR): Adam, learning rate decayed linearly to zero, the
    epoch with the best dev error kept."""

    epochs: int = 10
    lr: float = 0.04  # PR on the demo corpus: 2e-3 gave 80 % PER, 1e-2 57 %, 0.04 47 % (16 s checkpoint)
    batch_utterances: int = 16
    hidden: int = 0  # width of one hidden layer (GELU) before the output layer; 0 = a linear head
    # one hidden state alone (0 the transformer's input, i layer i's output: a layer-wise analysis) instead of the
    # learned weighted sum over all of them (SUPERB's); None: the weighted sum
    layer: int | None = None


@dataclass
class ASRRecipe(SequenceRecipe):
    """The ASR probe's recipe: a :class:`SequenceRecipe` and the transcripts' ``text_mapping``, characters to
    replace or remove (``""``) before the 28 characters of :class:`~earful.eval.vocab.CharVocab`, as fine-tuning's
    (``asr.text_mapping="{'é': e, ',': ''}"``)."""

    text_mapping: dict[str, str] = field(default_factory=dict)


@dataclass
class UtteranceRecipe:
    """Linear classifiers on the layer-weighted sum of pooled features (mean and standard deviation over each
    utterance's frames) (SID, IC): full-batch AdamW."""

    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-4
    layer: int | None = None  # one hidden state alone, as SequenceRecipe.layer; None: the learned weighted sum


def diverged(task: str, when: str, lr: float) -> ValueError:
    """The error of a head whose training loss is no longer finite: its score would be the recipe's failure (a
    blank PR output, IC at chance), not a measure of the features."""
    return ValueError(f"probe {task}: its head diverged ({when}: training loss not finite) at {task}.lr={lr:g}; "
                      f"give a lower {task}.lr")


@dataclass
class ProbeConfig:
    pr: SequenceRecipe = field(default_factory=SequenceRecipe)  # linear, as SUPERB's PR
    asr: ASRRecipe = field(default_factory=lambda: ASRRecipe(lr=5e-3, hidden=256))
    sid: UtteranceRecipe = field(default_factory=UtteranceRecipe)
    ic: UtteranceRecipe = field(default_factory=UtteranceRecipe)

    def __post_init__(self) -> None:
        """Refuse what no probe can train with, naming the key (before, after every feature was extracted, as
        "steps must be >= 1, got 0", or torch's "Invalid learning rate")."""
        for task in ("pr", "asr", "sid", "ic"):
            recipe = getattr(self, task)
            counts = ("epochs", "batch_utterances") if isinstance(recipe, SequenceRecipe) else ("steps",)
            for key in counts:
                at_least(f"{task}.{key}", getattr(recipe, key), 1)
            if not (math.isfinite(recipe.lr) and recipe.lr > 0):
                raise ValueError(f"{task}.lr={recipe.lr}: expected a finite number > 0")
            if isinstance(recipe, SequenceRecipe):
                at_least(f"{task}.hidden", recipe.hidden, 0, " (0: a linear head)")
            if recipe.layer is not None:
                at_least(f"{task}.layer", recipe.layer, 0,
                         " (0: the transformer's input; null: the weighted sum of every layer)")
            if isinstance(recipe, UtteranceRecipe) and not (math.isfinite(recipe.weight_decay)
                                                            and recipe.weight_decay >= 0):
                raise ValueError(f"{task}.weight_decay={recipe.weight_decay}: expected a finite number >= 0")
        self.asr.text_mapping = check_mapping(self.asr.text_mapping, "asr.text_mapping")
