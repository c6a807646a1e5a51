"""The utterance tasks: linear classifiers on the layer-weighted sum of pooled frozen features.

- **SID**, speaker identification: one class per training speaker; ``accuracy`` on other utterances of the
  same speakers (the task's dev split), and verification ``eer`` on held-out speakers (its test split): every
  pair of test utterances scored by the cosine of their pooled embeddings (the standardised statistics in the
  weighted sum SID learned), the equal error rate of same- against different-speaker pairs.
- **IC**, intent classification: one linear classifier per slot (action, object, location, as Fluent Speech
  Commands), an utterance right when all its slots are (``accuracy``); the step best on dev is tested.

Each layer's hidden states are pooled over the utterance once, their mean and standard deviation per channel
(statistics pooling, of the states as extracted: not normalised per frame, whose scale carries speaker and
channel), then standardised per (layer, channel) by the training utterances' statistics, which makes the
layers comparable for the weighting; training runs full-batch on the ``(utterances, layers, 2 × dim)``
result: seconds, not minutes.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from earful.probe.config import UtteranceRecipe, diverged
from earful.probe.report import TaskResult
from earful.probe.splits import Split, require
from earful.probe.weighting import LayerWeightedSum

EVAL_EVERY = 25  # steps between dev evaluations (IC's choice of step)


class PooledProbe(nn.Module):
    """Standardised pooled features → layer-weighted sum → one linear classifier per slot."""

    def __init__(self, num_layers: int, dim: int, classes: list[int], layer: int | None = None) -> None:
        super().__init__()
        self.weighted = LayerWeightedSum(num_layers, layer)
        self.heads = nn.ModuleList(nn.Linear(dim, c) for c in classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (utterances, layers, dim) → per slot (utt., classes)
        e = self.weighted(x)  # (utterances, dim)
        return [head(e) for head in self.heads]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:  # (utterances, slots)
        return torch.stack([s.argmax(-1) for s in self(x)], dim=1)


def standardized(train: Split, *others: Split) -> list[torch.Tensor]:
    """Each split's pooled features ``(utterances, layers, dim)``, standardised per (layer, channel) by the
    training utterances' mean and standard deviation."""
    centre, scale = train.feats.pooled.mean(0), train.feats.pooled.std(0)  # (layers, dim)
    # a feature constant over the training utterances is centred, not divided by ~0 (a test utterance's
    # rounding-sized deviation became ~1e4 and outweighed every other feature), as scikit-learn's StandardScaler
    scale = torch.where(scale > 1e-5, scale, torch.ones_like(scale))
    return [(s.feats.pooled - centre) / scale for s in (train, *others)]


def _labels(values: list[list[str]], classes: list[list[str]]) -> torch.Tensor:
    """(utterances, slots) class indices; a value never seen in training is -1 (never predicted: wrong)."""
    index = [{v: i for i, v in enumerate(c)} for c in classes]
    return torch.tensor([[index[s].get(v, -1) for s, v in enumerate(row)] for row in values], dtype=torch.long)


def _accuracy(model: PooledProbe, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of utterances with every slot right."""
    return float((model.predict(x) == labels).all(dim=1).double().mean())  # 7/9, not float32's 0.77777779


def _fit(x: torch.Tensor, labels: torch.Tensor, classes: list[list[str]], recipe: UtteranceRecipe, seed: int,
         dev: tuple[torch.Tensor, torch.Tensor] | None = None, *, task: str
         ) -> tuple[PooledProbe, int, list[dict[str, float]]]:
    """Full-batch AdamW on ``x`` (utterances, layers, dim) for ``recipe.steps``; with ``dev`` (features,
    labels), the step of best dev accuracy every ``EVAL_EVERY`` steps. ``task``: the recipe's, named where the
    head diverges."""
    if recipe.steps < 1:
        raise ValueError(f"steps must be >= 1, got {recipe.steps}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PooledProbe(x.shape[1], x.shape[2], [len(c) for c in classes], recipe.layer)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    history = []
    for step in range(1, recipe.steps + 1):
        model.train()
        loss = torch.stack([F.cross_entropy(logits, labels[:, s]) for s, logits in enumerate(model(x))]).sum()
        if not torch.isfinite(loss):
            raise diverged(task, f"step {step}", recipe.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev is not None and (step % EVAL_EVERY == 0 or step == recipe.steps):
            model.eval()
            value = _accuracy(model, *dev)
            history.append({"step": step, "loss": float(loss.detach()), "dev_accuracy": value})
            if best is None or value > best[0]:
                best = (value, step, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    return model, best[1] if best is not None else recipe.steps, history


def equal_error_rate(scores: torch.Tensor, same: torch.Tensor) -> float:
    """EER of trial ``scores`` (higher = more alike) with ``same`` (bool) marking target trials: where the
    rate of rejected targets meets the rate of accepted non-targets, sweeping the threshold over the scores."""
    if not same.any() or same.all():
        raise ValueError("the EER needs both same-speaker and different-speaker trials")
    order = torch.argsort(scores, descending=True)
    hit = same[order].double()
    # thresholds only between distinct scores (tied trials are accepted together), and the accept-none point:
    # a threshold inside a run of ties made the EER depend on the trials' order
    ends = torch.ones(len(order), dtype=torch.bool)
    ends[:-1] = scores[order][1:] != scores[order][:-1]
    accepted_targets = torch.cat([hit.new_zeros(1), (hit.cumsum(0) / hit.sum())[ends]])  # accept the top k
    false_accepts = torch.cat([hit.new_zeros(1), ((1 - hit).cumsum(0) / (1 - hit).sum())[ends]])
    miss = 1 - accepted_targets
    k = int(torch.argmin((miss - false_accepts).abs()))
    return float((miss[k] + false_accepts[k]) / 2)


def check_sid(train: Split, dev: Split, test: Split) -> None:
    """ValueError unless ``train`` holds two speakers or more, ``dev`` only training speakers and ``test`` at
    least two speakers, none of them a training speaker (its EER is verification of held-out voices); every
    utterance with a speaker (a blank one had been one more speaker)."""
    for split in (train, dev, test):
        require(split, "speaker", "speaker identification and verification need each utterance's speaker")
    speakers = {u.speaker for u in train.utts}
    if len(speakers) < 2:
        raise ValueError(f"{train.manifest}: speaker identification needs two training speakers or more (one "
                         "makes its accuracy 100 % by construction)")
    strangers = [u.id for u in dev.utts if u.speaker not in speakers]
    if strangers:
        raise ValueError(f"{dev.manifest}: {len(strangers)} of {len(dev.utts)} utterances are by speakers not in "
                         f"{train.manifest} (e.g. {strangers[0]!r}); SID's dev split holds other utterances of the "
                         "training speakers (held-out speakers belong in its test split, for the EER)")
    if len({u.speaker for u in test.utts}) < 2:
        raise ValueError(f"{test.manifest}: speaker verification needs at least two speakers")
    if shared := sorted({u.speaker for u in test.utts} & speakers):
        raise ValueError(f"{test.manifest}: {len(shared)} of its speakers also speak in {train.manifest} (e.g. "
                         f"{shared[0]!r}); SID's test split holds held-out speakers (its EER is verification of "
                         "voices the probe never trained on)")
    if len({u.speaker for u in test.utts}) == len(test.utts):
        raise ValueError(f"{test.manifest}: speaker verification needs a speaker with two utterances or more (its "
                         "same-speaker trials); every speaker here has one")


def train_sid(train: Split, dev: Split, test: Split, recipe: UtteranceRecipe, seed: int) -> TaskResult:
    """Speaker identification on ``train``'s speakers (accuracy on ``dev``, other utterances of the same
    speakers) and verification EER on ``test`` (held-out speakers)."""
    start = time.perf_counter()
    check_sid(train, dev, test)
    classes = [sorted({u.speaker for u in train.utts})]
    x_train, x_dev, x_test = standardized(train, dev, test)
    model, _, _ = _fit(x_train, _labels([[u.speaker] for u in train.utts], classes), classes, recipe, seed,
                       task="sid")
    with torch.no_grad():
        emb = F.normalize(model.weighted(x_test), dim=-1)  # (utterances, dim)
    pairs = torch.triu_indices(len(test.utts), len(test.utts), offset=1)  # (2, pairs)
    spk = np.array([u.speaker for u in test.utts])
    same = torch.from_numpy(spk[pairs[0].numpy()] == spk[pairs[1].numpy()])
    scores = (emb @ emb.T)[pairs[0], pairs[1]]  # (pairs,) cosine of each pair
    accuracy = _accuracy(model, x_dev, _labels([[u.speaker] for u in dev.utts], classes))
    return TaskResult(task="sid", test={"accuracy": accuracy, "eer": equal_error_rate(scores, same)}, dev={},
                      layer_weights=model.weighted.weights().tolist(), best=recipe.steps,
                      seconds=time.perf_counter() - start)


def intents(*splits: Split) -> list[list[list[str]]]:
    """Each split's intents as rows of slot values (the slots of the first training utterance, in order);
    ValueError naming the manifest where some are missing, or an utterance with other slots."""
    for split in splits:
        require(split, "intent", "intent classification needs each utterance's intent slots: the built-in "
                "corpus's commands domain has them (`earful synth OUT --domain commands`), or leave IC out "
                "(`--tasks pr,asr,sid`)")
    slots = list(splits[0].utts[0].intent or {})
    out = []
    for split in splits:
        rows = []
        for u in split.utts:
            intent = u.intent or {}
            if set(intent) != set(slots):  # the same slots, in whatever order the JSON gives them
                raise ValueError(f"{split.manifest}: utterance {u.id!r} has intent slots {list(intent)}, the "
                                 f"others {slots}")
            rows.append([intent[s] for s in slots])
        out.append(rows)
    return out


def train_ic(train: Split, dev: Split, test: Split, recipe: UtteranceRecipe, seed: int) -> TaskResult:
    """Intent classification: one classifier per slot of the manifests' ``intent``; the step best on ``dev``."""
    start = time.perf_counter()
    train_values, dev_values, test_values = intents(train, dev, test)
    classes = [sorted({row[s] for row in train_values}) for s in range(len(train_values[0]))]
    x_train, x_dev, x_test = standardized(train, dev, test)
    dev_set = (x_dev, _labels(dev_values, classes))
    model, best, history = _fit(x_train, _labels(train_values, classes), classes, recipe, seed, dev=dev_set,
                                task="ic")
    return TaskResult(task="ic", test={"accuracy": _accuracy(model, x_test, _labels(test_values, classes))},
                      dev={"accuracy": _accuracy(model, *dev_set)}, layer_weights=model.weighted.weights().tolist(),
                      best=best, history=history, seconds=time.perf_counter() - start)
