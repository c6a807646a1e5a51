"""The model card of an exported model — ``README.md`` in the ``earful export-hf`` folder — written from what the
checkpoint and its run folder record, and ``--push REPO`` of that folder to the Hugging Face Hub.

What the card says, and where it reads it (a fact that is not recorded is left out, never guessed):

* architecture: the checkpoint's ``model.json`` and the parameter count;
* training: its ``trainer.json`` (steps, batch seconds and device layout, peak lr, hours of audio seen) and the
  run's ``config.yaml`` (the task's recipe, shown whole but a fine-tuning's ``model_preset`` where the architecture
  came from ``init``: :func:`_shown_config`);
* corpus and recipe fingerprint: the manifests (or the folder of shards) the run read, with the SHA-256 the recipe
  records of each, and the SHA-256 of the recipe itself (``earful.train.recipe.recipe_hash``, what the trackers
  record too);
* validation: the run's ``valid.jsonl`` at the checkpoint's step;
* results: inside a study folder, the fine-tunings of this checkpoint (``OUT/results.jsonl``) or, for a
  fine-tuned model, its evaluation (``OUT/eval/RUN/summary.json``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import yaml

from earful.checkpoint import CheckpointError, read_info, read_json
from earful.config import read_yaml, renamed_settings
from earful.data.budget import SAMPLE_RATE
from earful.interop.hf import CARD, EARFUL_TAG, EXPORT_FILES, earful_card
from earful.study.report import read_jsonl, read_records
from earful.train.recipe import MANIFESTS, recipe_hash
from earful.train.state import TRAINER_FILE, read_trainer_info

log = logging.getLogger(__name__)


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON object the card reads (``study.json``, an evaluation's ``summary.json``): a corrupt or other file is
    a one-line error naming it, where it had been json's message alone or a traceback."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _study_name(study: Path) -> str:
    path = study / "study.json"
    return str(_read_object(path).get("name", study.name)) if path.exists() else study.name


# trainer.json's numbers the card shows: one of another type is named, not formatted into a traceback
_TRAINER_NUMBERS = ("step", "batch_seconds", "world_size", "accumulation", "hours_padded", "hours_real", "lr")


def _read_trainer(ckpt: Path) -> dict[str, Any] | None:
    """``trainer.json`` (None where the checkpoint has none: not written by earful's trainer), read by the
    trainer's own reader (corrupt JSON, another format: named), with the step every trainer.json records and the
    numbers the card shows checked: ``{}`` had been a KeyError, a text batch size a format error without a file."""
    path = ckpt / TRAINER_FILE
    if not path.exists():
        return None
    trainer = read_trainer_info(ckpt)
    if "step" not in trainer:
        raise CheckpointError(f"{path}: records no step (a trainer.json earful's trainer writes always does)")
    for key in _TRAINER_NUMBERS:
        value = trainer.get(key)
        if key in trainer and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise CheckpointError(f"{path}: {key} is {value!r}, not a number")
    if not isinstance(trainer["step"], int) or trainer["step"] < 0:
        raise CheckpointError(f"{path}: step is {trainer['step']!r}, not a step count")
    return trainer


def model_card(ckpt: str | Path, parameters: int) -> str:
    """The card of checkpoint ``ckpt`` (``parameters``: the model's parameter count)."""
    ckpt = Path(ckpt)
    info = read_info(ckpt)
    m, kind = info["model"], info["kind"]
    trainer = _read_trainer(ckpt)
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    config_path = run / "config.yaml" if run is not None else None
    config = renamed_settings(read_yaml(config_path)) if config_path and config_path.exists() else None  # today's names
    untrained = trainer is not None and trainer.get("step") == 0  # a run's `init`: the weights before step 1
    if untrained:
        title = ("random initialisation (not trained)" if kind == "pretraining" else
                 "CTC model before fine-tuning (not trained)")
    else:
        title = "pre-trained (self-supervised, contrastive)" if kind == "pretraining" else "fine-tuned with CTC"
    name = run.name if run is not None else ckpt.name
    made = ("Written by earful's trainer before its first step" if untrained else
            "Trained with earful (batch size in seconds of audio, progress in padded hours of audio seen)"
            if trainer else
            "Converted by earful (not trained by it: `earful import-hf` or another program wrote the checkpoint)")
    lines = ["---", "library_name: transformers",
             f"pipeline_tag: {'feature-extraction' if kind == 'pretraining' else 'automatic-speech-recognition'}",
             f"tags: [wav2vec2, speech, {EARFUL_TAG}]", "---", "",
             f"# {name}: wav2vec 2.0, {title}", "",
             f"{made}; exported from checkpoint `{ckpt.name}`" + (f" of run `{name}`." if run is not None else "."),
             "", "## Architecture", ""]
    stride = math.prod(m["conv_stride"])
    cls = "Wav2Vec2ForPreTraining" if kind == "pretraining" else "Wav2Vec2ForCTC"
    arch = [("transformers class", cls),
            ("parameters", f"{parameters:,}"),
            ("transformer", f"{m['num_layers']} layers, hidden {m['hidden_size']}, {m['num_heads']} heads, "
                            f"feed-forward {m['intermediate_size']}, {'pre' if m['layer_norm_first'] else 'post'}-LN"),
            ("feature encoder", f"{len(m['conv_dim'])} convolutions, {m['conv_dim'][-1]} channels, one frame per "
                                f"{stride} samples ({SAMPLE_RATE / stride:g} Hz at 16 kHz)")]
    if kind == "pretraining":
        quantizer = f"{m['num_codevector_groups']} groups × {m['num_codevectors_per_group']} codewords"
        if m.get("quantizer_input") == "raw":  # earful_training in config.json keeps it for earful
            quantizer += (" of the raw CNN output (`quantizer_input: raw`; transformers' quantizer reads the "
                          "LayerNormed features, so its pre-training losses differ; earful reads it back)")
        arch.append(("quantizer", quantizer))
    elif info.get("vocab"):
        arch.append(("vocabulary", f"{len(info['vocab']['symbols'])} symbols (CTC)"))
    lines += _table(arch)
    if trainer is None:
        lines += ["", "This checkpoint records no training (it was not written by earful's trainer)."]
    else:
        lines += ["", "## Training", ""] + _table(_training(trainer, config, kind))
        fingerprints = _fingerprints(trainer, config)
        if fingerprints:
            lines += ["", "## Corpus and recipe", ""] + _table(fingerprints)
    if run is not None:
        lines += _validation(run, trainer)
        lines += _results(run, ckpt)
    if config is not None:
        shown, note = _shown_config(config, kind)
        lines += ["", "<details><summary>The run's configuration (config.yaml)</summary>", "", *note, "```yaml",
                  yaml.safe_dump(shown, sort_keys=False).rstrip(), "```", "", "</details>"]
    lines += _use(cls, kind, m.get("feat_extract_norm", "group"))
    return "\n".join(lines)


def _use(cls: str, kind: str, feat_extract_norm: str) -> list[str]:
    """The card's "Use" section: how to load the model and how to batch it. A group-norm CNN is not batch-invariant
    in transformers (docs/batch-invariance.md): its first GroupNorm takes statistics over the padded row, with or
    without ``attention_mask``, so a user batching files with padding got other transcripts, and was not told."""
    outputs = "features" if kind == "pretraining" else "transcripts"
    commands = "`earful features`" if kind == "pretraining" else "`earful evaluate` and `earful transcribe`"
    if kind == "pretraining":
        code = [f"from transformers import {cls}", "", f'model = {cls}.from_pretrained("PATH_OR_REPO")']
    else:
        code = ["from transformers import pipeline", "",
                'asr = pipeline("automatic-speech-recognition", model="PATH_OR_REPO")',
                'asr("talk.flac")["text"]  # one file at a time, as the pipeline goes by default']
    if feat_extract_norm == "group":
        batching = (
            "**Batching.** The feature encoder normalises its first convolution with a GroupNorm over time "
            "(`feat_extract_norm: group`, as wav2vec2-base), and transformers takes its statistics over the whole "
            f"padded row: in a padded batch every file shorter than the longest gets other {outputs} than it "
            "gets alone. An `attention_mask` does not help: it hides the padding from the attention, not from the "
            "GroupNorm (the processor returns none, transformers' convention for such models). Give the model one "
            "file at a time (the pipeline's default, `batch_size=1`), or batch files of the same length (sort by "
            f"length: no padding, the same {outputs}; a little padding, nearly the same). earful computes the "
            f"statistics over each file's own samples: {commands} give the {outputs} of one file at a time in any "
            "batch.")
    else:
        batching = (
            "**Batching.** The feature encoder normalises every convolution per frame (`feat_extract_norm: "
            "layer`): in a padded batch pass the processor's `attention_mask` (it returns one), and each file "
            f"gets the {outputs} it gets alone; without it, the padding is attended to as signal.")
    return ["", "## Use", "", "```python", *code, "```", "", batching, ""]


def _shown_config(config: dict[str, Any], kind: str) -> tuple[dict[str, Any], list[str]]:
    """The run's configuration as the card shows it, and a note on what it leaves out. A fine-tuning from a
    checkpoint records ``model_preset`` all the same, the default ``base`` (it names the architecture of a
    ``scratch`` model only): a card of a model fine-tuned from ``tiny`` said ``model_preset: base``. It is left
    out there; the architecture is the card's own section, read from the checkpoint."""
    if kind == "pretraining" or config.get("init") in (None, "scratch") or "model_preset" not in config:
        return config, []
    shown = {k: v for k, v in config.items() if k != "model_preset"}
    return shown, [f"`model_preset` ({config['model_preset']}) is left out: it is the architecture of a model "
                   "fine-tuned from scratch, and this one's came from `init` (the Architecture section above).", ""]


def _training(trainer: dict[str, Any], config: dict[str, Any] | None, kind: str) -> list[tuple[str, str]]:
    """The Training table: what ``trainer.json`` records, each row only where its fields are there. A run's
    ``init`` records step 0 alone (``Trainer._start_records``: the from-scratch baseline, the weights before any
    step): its card says so, where it had raised a KeyError on the batch it never had."""
    rows = [("steps", f"{trainer['step']:,}")]
    if trainer["step"] == 0:
        init = trainer.get("init_checkpoint") or (config or {}).get("init")
        if kind == "pretraining" or init == "scratch":
            what = "none: the random initialisation, before the first step (the run's from-scratch baseline)"
        elif init:
            what = f"none: the weights the fine-tuning started from (`{init}` and its CTC head), before the first step"
        else:
            what = "none: the weights before the first step"
        rows.append(("training", what))
        if config is not None and "seed" in config:
            rows.append(("seed", str(config["seed"])))
        return rows
    if "batch_seconds" in trainer:
        device = _number(trainer.get("layout", {}).get("device_seconds", "?"))
        rows.append(("batch", f"{trainer['batch_seconds']:g} s of audio per step ({trainer.get('world_size', '?')} "
                              f"device(s) × {device} s × {trainer.get('accumulation', '?')} accumulation, at most)"))
    if "hours_padded" in trainer:
        real = f"; {trainer['hours_real']:.4g} h real" if "hours_real" in trainer else ""
        rows.append(("hours of audio seen", f"{trainer['hours_padded']:.4g} h (padded{real})"))
    if "lr" in trainer:
        rows.append(("peak learning rate", f"{trainer['lr']:.3g}"))
    if config is not None:
        optim = config.get("optim", {})
        rows += [("schedule", str(optim.get("schedule"))), ("precision", str(config.get("precision"))),
                 ("seed", str(config.get("seed")))]
    if trainer.get("stopped_by"):
        rows.append(("stopped", f"by {trainer['stopped_by']} at this step (not the run's end)"))
    return rows


def _fingerprints(trainer: dict[str, Any], config: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The Corpus and recipe table. Weights before the first step (``init``) read no corpus and record no recipe:
    only what they were initialised from is shown (an empty recipe's fingerprint would be a made-up fact)."""
    recipe = renamed_settings(trainer.get("recipe", {}))  # a run of before: data.dev.sha256 is data.valid's
    rows = []
    if trainer["step"] > 0 and (index := recipe.get("data.shards.index")):  # pre-trained from shards, not data.train
        where = (config or {}).get("data", {}).get("shards")
        rows.append(("`data.shards`", f"`{where or '?'}` (SHA-256 of its index.json `{index}`)"))
    for key in MANIFESTS if trainer["step"] > 0 else ():
        section, field = key.split(".")
        path = (config or {}).get(section, {}).get(field)
        digest = recipe.get(f"{key}.sha256")
        what = ("SHA-256 of its rows less their audio paths" if recipe.get("data.manifest_digest") else
                "SHA-256")  # the recipe's rule since the digest left the paths out; the file's bytes before
        if path or digest:
            rows.append((f"`{key}`", f"`{path or '?'}`" + (f" ({what} `{digest}`)" if digest else "")))
    if trainer.get("init_checkpoint"):  # what init resolved to when the run started (a run folder moves on)
        notes = [f"SHA-256 `{trainer['init_sha256']}`"] if trainer.get("init_sha256") else []
        if trainer.get("init") not in (None, trainer["init_checkpoint"]):
            notes.append(f"given as `{trainer['init']}`")
        shown = f" ({'; '.join(notes)})" if notes else ""
        rows.append(("initialised from", f"`{trainer['init_checkpoint']}`{shown}"))
    elif (config or {}).get("init") not in (None, "", "scratch"):  # a pre-training from scratch: nothing to show
        rows.append(("initialised from", f"`{config['init']}`"))
    if "recipe" in trainer:
        rows.append(("recipe fingerprint", f"SHA-256 `{recipe_hash(trainer['recipe'])}` of the recipe in "
                     "trainer.json"))  # as written (the trackers' too), not with today's names
    return rows


def _validation(run: Path, trainer: dict[str, Any] | None) -> list[str]:
    path = run / "valid.jsonl"
    if trainer is None or not path.exists():
        return []
    records = [r for r in read_records(path) if r["step"] <= trainer["step"]]
    if not records:
        return []
    last = records[-1]
    rows = [(k, _number(v)) for k, v in last.items() if k not in ("step", "hours_padded", "hours_real")]
    note = f"at step {last['step']:,} ({last['hours_padded']:.4g} padded h seen)"
    if trainer.get("best") is not None:
        note += f"; the run's best {trainer['best_metric']}: {trainer['best']:.4g}"
    return ["", "## Validation", "", note, "", *_table(rows)]


def _results(run: Path, ckpt: Path) -> list[str]:
    """Results a study recorded: its fine-tunings of this pre-training checkpoint, or this fine-tuning's evaluation."""
    study = run.parent.parent
    if run.parent.name == "pretrain" and (study / "results.jsonl").exists():
        steps = {r["run"]: r["steps"] for r in read_jsonl(study / "runs.jsonl")}
        name = "final" if ckpt.name == f"step-{steps.get(run.name, -1):07d}" else ckpt.name
        rows = [r for r in read_records(study / "results.jsonl")
                if r["pretrain"] == run.name and r["checkpoint"] == name]
        if not rows:
            return []
        table = ["| label set | split | decoder | WER % | CER % |", "|---|---|---|---|---|"]
        table += [f"| {r['label_set']} | {r['split']} | {r['decoder']} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} |"
                  for r in rows]
        return ["", "## Fine-tuning results", "",
                f"CTC fine-tunings of this checkpoint in study `{_study_name(study)}`:", "", *table]
    summary = study / "eval" / run.name / "summary.json"
    if run.parent.name == "finetune" and summary.exists():
        evaluated = _read_object(summary)
        if not isinstance(evaluated.get("checkpoint"), str) or not isinstance(evaluated.get("splits"), dict):
            raise CheckpointError(f"{summary}: not an evaluation summary (no checkpoint and splits)")
        # the study evaluated one checkpoint of the run (best): its figures are not another's. The path it
        # recorded may be relative to where the study ran: compared from the run's folder down
        if Path(evaluated["checkpoint"]).parts[-3:] != ckpt.absolute().parts[-3:]:
            return []
        splits = evaluated["splits"]
        table = ["| split | decoder | WER % | CER % |", "|---|---|---|---|"]
        table += [f"| {split} | {decoder} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} |"
                  for split, res in splits.items() for decoder, r in res.items() if "wer" in r]
        return ["", "## Evaluation", "", f"In study `{_study_name(study)}`:", "", *table]
    return []


GITATTRIBUTES = ".gitattributes"  # every Hub repository's (the Hub writes it): kept, whatever the push replaces


def push_to_hub(folder: str | Path, repo: str, *, private: bool = False, replace: bool = False) -> str:
    """Upload the export folder to the Hub's model repository ``repo`` (created if need be), which then holds the
    folder's files and no others (``.gitattributes`` kept); returns the commit's URL. A repository that holds
    files already is replaced only where it is an earlier export-hf (its files among those export-hf writes, its
    ``README.md`` carrying earful's tag), as the local folder is (:func:`earful.interop.hf.check_output_folder`),
    or with ``replace`` (``--replace-repo``); any other is refused, naming what it holds, before anything is
    uploaded. Credentials are huggingface_hub's own (``hf auth login`` or ``HF_TOKEN``)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import RepositoryNotFoundError
    except ImportError as e:
        raise RuntimeError(f"--push needs the huggingface_hub package ({e}): pip install 'earful[hub]'") from None
    api = HfApi()
    try:
        try:
            held = sorted(f for f in api.list_repo_files(repo, repo_type="model") if f != GITATTRIBUTES)
        except RepositoryNotFoundError:  # a new repository
            held = []
        foreign = [f for f in held if f not in EXPORT_FILES]
        earlier = bool(held) and not foreign and CARD in held and earful_card(
            Path(api.hf_hub_download(repo, CARD, repo_type="model")).read_text(encoding="utf-8", errors="replace"))
    except Exception as e:  # offline, no credentials: one line, the folder stays as written
        raise _upload_failed(repo, folder, e) from e
    if held and not earlier and not replace:
        why = (f"{_names(foreign)}, which export-hf does not write: not an earlier export-hf repository (the push "
               "would replace it whole)" if foreign else f"{_names(held)}, not written by export-hf (no earful "
               f"model card, {CARD}): a model of your own, which the push would replace")
        raise RuntimeError(f"--push {repo}: the Hub repository holds {why}; give a new or empty repository, or "
                           "--replace-repo to replace it (its files not in the folder are deleted). The exported "
                           f"folder {folder} is complete")
    if held:
        (log.info if earlier else log.warning)("--push %s: replacing the repository's files (%s) with %s's",
                                                repo, ", ".join(held), folder)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", delete_patterns="*",
                                   commit_message="Upload a wav2vec 2.0 model exported by earful")
    except Exception as e:  # offline, no credentials, no such namespace: one line, the folder stays as written
        raise _upload_failed(repo, folder, e) from e
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)


def _names(files: list[str]) -> str:
    return f"{', '.join(files[:5])}{' …' if len(files) > 5 else ''}"


def _upload_failed(repo: str, folder: str | Path, e: Exception) -> RuntimeError:
    return RuntimeError(f"--push {repo}: the upload failed ({type(e).__name__}: {e}); the exported folder {folder} "
                        "is complete: push it again later")
