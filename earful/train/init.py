"""The weights a training starts from (``init``): an earful checkpoint folder, a run folder (its latest
checkpoint), a `transformers` folder (``config.json`` + weights) or a Hugging Face Hub model id (``ORG/NAME[@REV]``:
its snapshot folder, :mod:`earful.interop.hub`), or ``scratch``. What it resolved to and the
SHA-256 of those weights (:class:`InitWeights`) are recorded in ``trainer.json`` (``init_checkpoint``,
``init_sha256``) and are part of the run's recipe (``init.sha256``): a resume from other initial weights is
refused. Fine-tuning (``earful/finetune/init.py``) copies a source's backbone; pre-training continues a
pre-training model whole (``earful/pretrain/task.py``)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from earful.checkpoint import (
    INFO_FILE,
    CheckpointError,
    load_model,
    model_config,
    read_info,
    sha256,
    weights_sha256,
    what_it_is,
)
from earful.model import ModelConfig
from earful.train.state import read_trainer_info, resolve_checkpoint

log = logging.getLogger(__name__)

SCRATCH = "scratch"  # init: no weights, a random model


@dataclass(frozen=True)
class InitWeights:
    """What ``--init`` resolved to when the run started: ``path``, the checkpoint (a run folder's latest, which
    moves on when that run goes on), transformers folder or ``scratch``; ``sha256``, of its weights (None for
    scratch): what the recipe compares on ``--resume`` (a moved folder is the same weights)."""

    path: str
    sha256: str | None


def resolve_init(init: str, key: str = "--init") -> InitWeights:
    """The weights ``init`` names now, without loading them: an earful checkpoint's digest is the SHA-256 of
    ``model.safetensors`` its ``model.json`` records (which ``load_model`` verifies the file against)."""
    if init == SCRATCH:
        return InitWeights(SCRATCH, None)
    path = init_path(init, key)
    if (path / INFO_FILE).exists():
        return InitWeights(str(path), weights_sha256(read_info(path)))
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    digest = hashlib.sha256("".join(f"{p.name} {sha256(p)}\n" for p in weights).encode()).hexdigest()
    return InitWeights(str(path), digest)


def init_path(init: str, key: str = "--init") -> Path:
    """The checkpoint (a run folder's latest) or transformers folder ``init`` (not scratch) names now, without
    reading its weights: a Hub model id's snapshot folder (``ORG/NAME[@REV]``, downloaded if need be)."""
    from earful.interop.hub import hub_folder

    path = hub_folder(init, key) or Path(init)
    if not path.exists():  # it had been told it held no model.json, no checkpoints/ and no config.json
        raise FileNotFoundError(f"{key} {init}: no such file or folder (give 'scratch', an earful checkpoint, a run "
                                "folder or a transformers folder)")
    ckpt = resolve_checkpoint(path)
    if ckpt is not None:
        return ckpt
    if (path / "config.json").exists():
        return path
    raise FileNotFoundError(
        f"{key} {init}: not 'scratch', an earful checkpoint (no {INFO_FILE}), a run folder "
        f"(no checkpoints/) nor a transformers folder (no config.json){what_it_is(path, transformers_ok=True)}"
    )


def load_init(init: InitWeights, task: str = "fine-tuning") -> tuple[nn.Module | None, list[str] | None, str]:
    """(source model or None for scratch, its CTC vocabulary if any, a description)."""
    if init.path == SCRATCH:
        return None, None, "scratch (random)"
    path = Path(init.path)
    if (path / INFO_FILE).exists():
        model, info = load_model(path)
        if weights_sha256(info) != init.sha256:
            raise CheckpointError(f"{path}: its weights changed while the {task} started; start it again")
        symbols = (info.get("vocab") or {}).get("symbols")
        return model, symbols, f"earful {info['kind']} checkpoint {path}"
    from earful.interop.hf import import_hf

    model, symbols = import_hf(path, backbone_only=task == "fine-tuning")  # pre-training needs the heads
    return model, symbols, f"transformers folder {path}"


def initial_weights(init: str, resume_from: Path | None, key: str = "--init") -> InitWeights:
    """What ``init`` names now (resolved once: a run folder's latest moves on). Resuming with the ``init``
    the run was started with, the weights it recorded then (a run folder's latest has moved on since, but
    this run started from the one it recorded); with another ``init``, what that names now, whose digest the
    recipe compares with the run's; an ``init`` that no longer resolves (moved, removed) is taken to be the
    weights the run recorded, with a warning: the run's own checkpoint holds the model."""
    saved = read_trainer_info(resume_from) if resume_from is not None else {}
    if saved.get("init") == init and "init_checkpoint" in saved:
        return InitWeights(str(saved["init_checkpoint"]), saved.get("init_sha256"))
    try:
        return resolve_init(init, key)
    except (OSError, CheckpointError) as e:
        if resume_from is None:
            raise
        log.warning("%s; resuming with the initial weights the run recorded (%s, SHA-256 %s)", e,
                    saved.get("init_checkpoint"), saved.get("init_sha256"))
        return InitWeights(str(saved.get("init_checkpoint", init)), saved.get("init_sha256"))


def init_model_config(path: Path) -> ModelConfig:
    """The model settings of the weights at ``path`` (what :func:`init_path` resolved), without loading them: an
    earful checkpoint's ``model.json``, a transformers folder's ``config.json`` and feature extractor (not hashing
    its weights, which the task does once)."""
    if (path / INFO_FILE).exists():
        return model_config(path)
    from earful.interop.hf import hf_model_config

    return hf_model_config(path)
