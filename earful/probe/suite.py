"""The mini-SUPERB suite and single probes: features from the cache (or extracted once), each task's head
trained on them, results written to a folder.

On a corpus made by ``earful synth`` (the demo's, or any ``--domain commands`` corpus) the suite reads:

| task | train | dev | test | metrics (fractions) |
|---|---|---|---|---|
| PR  | train | dev | test | ``per`` ↓ |
| ASR | train | dev | test | ``wer`` ↓, ``cer`` ↓ |
| SID | train | labelled-10h (same speakers, other utterances): ``accuracy`` ↑ | test (held-out voices): ``eer`` ↓ | |
| IC  | train | dev | test | ``accuracy`` ↑ |

``OUT/results.json`` holds every task's metrics, the kept epoch, the layer weights and the timings;
``OUT/results.md`` the table; ``OUT/layer-weights.png`` the learned weights per task.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from earful.atomic import atomic_write_json, atomic_write_lines
from earful.config import flatten, from_dict, to_dict
from earful.probe.config import ProbeConfig
from earful.probe.ctc import characters_task, check_labels, phonemes_task, train_ctc
from earful.probe.features import Upstream
from earful.probe.report import (
    METRICS,
    TaskResult,
    mean_se_cells,
    over_seeds,
    plot_layer_weights,
    table,
    weights_table,
)
from earful.probe.splits import FeatureLoader, Split, load_split
from earful.probe.utterance import check_sid, intents, train_ic, train_sid
from earful.probe.weighting import check_layer

log = logging.getLogger(__name__)

TASKS = tuple(METRICS)  # mini-SUPERB: pr, asr, sid, ic
SUITE_SPLITS: dict[str, tuple[str, str, str]] = {  # task -> (train, dev, test) manifests below CORPUS/manifests
    "pr": ("train", "dev", "test"),
    "asr": ("train", "dev", "test"),
    "sid": ("train", "labelled-10h", "test"),
    "ic": ("train", "dev", "test"),
}


Trainer = Callable[[Split, Split, Split, int], TaskResult]
Check = Callable[[Split, Split, Split], object]


def _task(task: str, config: ProbeConfig) -> tuple[Check, Trainer]:
    """(the check of a task's labels, its training), for (train, dev, test) splits."""
    if task in ("pr", "asr"):
        t = phonemes_task() if task == "pr" else characters_task(config.asr.text_mapping)
        recipe = config.pr if task == "pr" else config.asr
        return (lambda *s: check_labels(t, *s)), (lambda tr, dv, te, seed: train_ctc(t, tr, dv, te, recipe, seed))
    if task == "sid":
        return check_sid, lambda tr, dv, te, seed: train_sid(tr, dv, te, config.sid, seed)
    if task == "ic":
        return intents, lambda tr, dv, te, seed: train_ic(tr, dv, te, config.ic, seed)
    raise ValueError(f"unknown probe task {task!r}: choose from {', '.join(TASKS)}")


def _splits(manifests: dict[str, tuple[str | os.PathLike, ...]], loader: FeatureLoader | None
            ) -> tuple[list[Split], dict[str, tuple[Split, ...]]]:
    """(every manifest's split, each task's splits): a manifest is read once for all the tasks that read it
    (``loader`` None: for its labels only)."""
    splits: dict[Path, Split] = {}
    for m in sorted({Path(m).resolve() for paths in manifests.values() for m in paths}):
        splits[m] = load_split(loader, m)
    return list(splits.values()), {task: tuple(splits[Path(m).resolve()] for m in paths)
                                   for task, paths in manifests.items()}


def _check_labels(task: str, check: Check, splits: tuple[Split, ...]) -> None:
    """``task``'s check of its splits' labels; its ValueError names the task as well as the manifest."""
    try:
        check(*splits)
    except ValueError as e:
        raise ValueError(f"probe {task}: {e}") from e


def what_was_measured(manifests: dict[str, tuple[str | os.PathLike, ...]], config: ProbeConfig) -> list[str]:
    """results.md's lines on where each metric was measured and the recipe's settings other than the defaults
    (results.json holds the whole recipe)."""
    lines = ["Measured on each task's test split" + (", but SID's accuracy: on its dev split (other utterances of "
                                                     "the training speakers; the EER on the test split's held-out "
                                                     "speakers):" if "sid" in manifests else ":"), ""]
    lines += [f"- {t.upper()}: train {Path(tr)}, dev {Path(dv)}, test {Path(te)}"
              for t, (tr, dv, te) in manifests.items()]
    own = {k: v for k, v in flatten(to_dict(config)).items() if k.split(".")[0] in manifests}
    default = flatten(to_dict(ProbeConfig()))
    changed = [f"{k}={v}" for k, v in own.items() if default.get(k) != v]
    return [*lines, "", f"Recipe: {', '.join(changed) if changed else 'the defaults'} (earful/probe/config.py).", ""]


def _check_apart(task: str, splits: tuple[Split, ...]) -> None:
    """Warn where ``task``'s train, dev and test manifests share utterances (one manifest given twice shares them
    all): a probe scored on what it trained on measures memory (SID 100 % on its own training utterances)."""
    names = ("train", "dev", "test")
    for (a, sa), (b, sb) in itertools.combinations(zip(names, splits, strict=True), 2):
        shared = sorted({u.id for u in sa.utts} & {u.id for u in sb.utts})
        if shared:
            log.warning("probe %s: its %s (%s) and %s (%s) share %d utterance(s), e.g. %s: a score on what the probe "
                        "trained on, or chose by, is no measure of the features", task, a, sa.manifest, b,
                        sb.manifest, len(shared), shared[0])


def _check_out(out: Path, record: dict[str, Any]) -> None:
    """Refuse an ``out`` holding results of another run (upstream, weights, seed, recipe, tasks or manifests),
    which these would replace: the same run may write them again."""
    path = out / "results.json"
    if not path.is_file():
        return
    saved = _json_or_empty(path)
    try:  # a recipe written before a setting existed (pr.layer) holds its default, as its run had in effect
        saved["config"] = json.loads(json.dumps(to_dict(from_dict(ProbeConfig, saved["config"], "config")),
                                                default=str))
    except (KeyError, TypeError, ValueError):
        pass  # none, or of an earful earlier still: compared as it is
    differ = [k for k, v in record.items() if saved.get(k) != v]
    if differ:
        verb = "differ" if len(differ) > 1 else "differs"
        raise ValueError(f"{out}: holds the results of another probe run (its {', '.join(differ)} {verb}: "
                         f"{saved.get('upstream', '?')}, seed {saved.get('seed', '?')}, tasks "
                         f"{', '.join(saved.get('manifests', {})) or '?'}), which this one would replace; give another "
                         f"--out, or remove {path}")


def probe(upstream: Upstream, manifests: dict[str, tuple[str | os.PathLike, ...]], out_dir: str | os.PathLike,
          *, seed: int = 0, config: ProbeConfig | None = None, cache_dir: str | os.PathLike | None = None,
          progress: bool = True) -> dict[str, TaskResult]:
    """Train each task of ``manifests`` (task → (train, dev, test) manifest paths) on ``upstream``'s features
    and write ``out_dir``'s results; a manifest's features are loaded once for all the tasks that read it."""
    config = config or ProbeConfig()
    if not 0 <= seed < 2**32:  # numpy's and torch's generators take no other: refused before any work
        raise ValueError(f"probe seed {seed}: expected an integer from 0 to 2**32 - 1")
    tasks = {task: _task(task, config) for task in manifests}  # unknown tasks fail before any work
    for task in tasks:  # a hidden state the upstream has not, too
        check_layer(f"{task}.layer", getattr(config, task).layer, upstream.hidden_states())
    loader = FeatureLoader(upstream, cache_dir, progress)  # the weights hashed once for the run, after the checks
    splits, chosen = _splits(manifests, loader)
    for task, (check, _) in tasks.items():
        _check_labels(task, check, chosen[task])  # every task's labels, before any feature is extracted
        _check_apart(task, chosen[task])
    out = Path(out_dir)
    record = json.loads(json.dumps({  # as results.json holds it
        "upstream": upstream.name, "fingerprint": loader.fingerprint, "seed": seed, "config": to_dict(config),
        "manifests": {t: [str(Path(m).resolve()) for m in p] for t, p in manifests.items()}}))
    _check_out(out, record)
    t0 = time.perf_counter()
    for split in splits:
        _ = split.feats  # extracted or read from the cache, once for all the tasks that read it
    loader.release()  # the model, if one was loaded: the probes need only the features
    t_features = time.perf_counter() - t0
    results = {}
    for task, (_, train) in tasks.items():
        results[task] = train(*chosen[task], seed)
        log.info("%s on %s: %s (kept %d, %.1f s)", task.upper(), upstream.name,
                 ", ".join(f"{k} {100 * v:.1f} %" for k, v in results[task].test.items()), results[task].best,
                 results[task].seconds)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", {
        **record, "seconds": {"features": t_features, "probes": time.perf_counter() - t0 - t_features},
        "tasks": {t: asdict(r) for t, r in results.items()},
    })
    weights = {t: r.layer_weights for t, r in results.items() if len(r.layer_weights) > 1}
    scores = {upstream.name: {t: r.test for t, r in results.items()}}
    atomic_write_lines(out / "results.md", [f"# Probes of {upstream.title(seed)}", "", table(scores), "",
                                            *what_was_measured(manifests, config), weights_table(weights)])
    if weights:
        plot_layer_weights(weights, out / "layer-weights.png", f"layer weights: {upstream.title(seed, short=True)}")
    else:  # filterbanks have no layers: an earlier upstream's plot would stand beside these results
        (out / "layer-weights.png").unlink(missing_ok=True)
    return results


def run_suite(ckpt_dir: str | os.PathLike | Upstream, corpus_dir: str | os.PathLike, out_dir: str | os.PathLike,
              tasks: Sequence[str] = TASKS, seed: int = 0, *, cache_dir: str | os.PathLike | None = None,
              config: ProbeConfig | None = None, progress: bool = True) -> dict[str, dict[str, float]]:
    """Probe one checkpoint with the mini-SUPERB suite on a corpus made by ``earful synth``.

    Args:
        ckpt_dir: an earful checkpoint folder (e.g. ``RUN/checkpoints/step-0000338``; a pre-training run's
            ``checkpoints/init`` is its random-init baseline), ``"fbank"`` for log-mel filterbanks, or an
            :class:`Upstream`.
        corpus_dir: the corpus root, with ``manifests/{train,dev,test,labelled-10h}.jsonl`` (``commands`` domain
            for IC: the ``open`` domain has no intents).
        out_dir: where ``results.json``, ``results.md`` and ``layer-weights.png`` go.
        tasks: any of ``"pr"``, ``"asr"``, ``"sid"``, ``"ic"``.
        seed: the probes' seed (head initialisation, shuffling); one seed gives one result.
        cache_dir: the feature cache (default :func:`earful.probe.features.default_cache_dir`); features are
            extracted once per (checkpoint, manifest) and reused by every seed and task.
        config: the probe recipes (default :class:`ProbeConfig`).

    Returns:
        ``{task: {metric: value}}`` on the test split, as fractions: ``pr: per``; ``asr: wer, cer``;
        ``sid: accuracy`` (on labelled-10h: the training speakers, other utterances; the test split's speakers are
        held out) ``, eer``; ``ic: accuracy``. ``METRICS[task][metric]`` is True where higher is better.
    """
    upstream = ckpt_dir if isinstance(ckpt_dir, Upstream) else Upstream.parse(ckpt_dir, cache_dir=cache_dir)
    manifests = _existing(corpus_dir, suite_manifests(corpus_dir, tasks))
    results = probe(upstream, manifests, out_dir, seed=seed, config=config, cache_dir=cache_dir, progress=progress)
    return {t: r.test for t, r in results.items()}


def suite_manifests(corpus_dir: str | os.PathLike, tasks: Sequence[str]) -> dict[str, tuple[Path, ...]]:
    """The manifests the suite reads for each task, (train, dev, test) below ``CORPUS/manifests``
    (:data:`SUITE_SPLITS`); ValueError naming unknown tasks."""
    unknown = [t for t in tasks if t not in SUITE_SPLITS]
    if unknown:
        raise ValueError(f"unknown probe task(s) {unknown}: choose from {', '.join(TASKS)}")
    root = Path(corpus_dir) / "manifests"
    return {t: tuple(root / f"{name}.jsonl" for name in SUITE_SPLITS[t]) for t in tasks}


def _existing(corpus_dir: str | os.PathLike, manifests: dict[str, tuple[Path, ...]]
              ) -> dict[str, tuple[Path, ...]]:
    """``manifests``, or FileNotFoundError naming each missing one and the tasks that read it."""
    missing: dict[Path, list[str]] = {}
    for task, paths in manifests.items():
        for m in dict.fromkeys(paths):
            if not m.is_file():
                missing.setdefault(m, []).append(task)
    if missing:
        named = "; ".join(f"{m} (read by {', '.join(tasks)})" for m, tasks in sorted(missing.items()))
        raise FileNotFoundError(f"{corpus_dir}: not a corpus made by `earful synth`: missing {named}")
    return manifests


def check_suite(corpus_dir: str | os.PathLike, tasks: Sequence[str]) -> None:
    """What :func:`run_suite` checks before any feature is extracted, without an upstream: every manifest
    ``tasks`` read exists and carries each task's labels (PR: phonemes, ASR: transcripts, SID: the training
    speakers in dev and two or more speakers in test, IC: intents). FileNotFoundError naming each missing
    manifest and the tasks that read it, or ValueError naming the task, the manifest and what it lacks."""
    manifests = _existing(corpus_dir, suite_manifests(corpus_dir, tasks))
    _, chosen = _splits(manifests, None)
    for task in manifests:
        _check_labels(task, _task(task, ProbeConfig())[0], chosen[task])


def check_seeds_folder(out: Path, seeds: list[int]) -> None:
    """Before a run of several probe seeds (``earful probe --seeds``), each into ``out/seed-N``: refuse ``seeds``
    that cannot make a summary (fewer than two, one twice) or an ``out`` whose summary would leave out what it
    holds: a single seed's results, or a seed folder of an earlier run not among ``seeds`` (each seed's own folder
    is checked by its run: the same upstream and recipe, or refused)."""
    if len(seeds) < 2 or len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds {' '.join(map(str, seeds))}: give two or more different seeds (one: --seed)")
    if (out / "results.json").is_file() and "seeds" not in _json_or_empty(out / "results.json"):
        raise ValueError(f"{out}: holds a single probe run's results (results.json), which the summary over seeds "
                         "would replace; give another --out")
    others = sorted(p.name for p in out.glob("seed-*") if p.is_dir() and p.name not in {f"seed-{s}" for s in seeds})
    if others:
        raise ValueError(f"{out}: holds {', '.join(others)} of an earlier run, which the summary over --seeds "
                         f"{' '.join(map(str, seeds))} would leave out: give those seeds too, or another --out")


def _json_or_empty(path: Path) -> dict[str, Any]:
    """A JSON object's file as a dict ({} where it is none: corrupt, a list)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_seeds_summary(out: Path, upstream: str, runs: dict[int, dict[str, dict[str, float]]]) -> None:
    """``out/results.json`` and ``results.md``: each test metric's mean ± standard error over the probe seeds."""
    summary = over_seeds(runs)
    atomic_write_json(out / "results.json", {"upstream": upstream, "seeds": list(runs), "summary": summary,
                                             "runs": {str(s): r for s, r in runs.items()}})
    seeds = ", ".join(map(str, runs))
    atomic_write_lines(out / "results.md", [
        f"# Probes of {upstream}, seeds {seeds}", "", table({upstream: mean_se_cells(summary)}), "",
        f"Mean ± standard error over the {len(runs)} probe seeds ({seeds}): the heads' own noise, the features "
        "being the same in each (one checkpoint's; its pre-training seed is another matter). Each seed's results, "
        "layer weights and training curves: seed-N/."])
    log.info("over seeds %s: %s", seeds, "; ".join(f"{t.upper()} {m} {c}" for t, ms in mean_se_cells(summary).items()
                                                  for m, c in ms.items()))
