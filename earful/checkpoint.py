"""Checkpoints: weights in safetensors, everything else in JSON (or a ``weights_only`` torch file for
optimizer state), written atomically (temporary file + rename) with sizes and SHA-256 recorded so a
truncated or tampered file is detected on load. Nothing is ever unpickled beyond ``weights_only``.

A model checkpoint is a directory::

    CKPT/model.safetensors   the weights
    CKPT/model.json          {"kind": "pretraining"|"ctc", "model": {ModelConfig}, "vocab": ..., "files": {...}}
    CKPT/state.pt            (training checkpoints) optimizer, scheduler, scaler, sampler, RNG
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from earful.atomic import atomic_path, atomic_write_json
from earful.config import from_dict, to_dict
from earful.model import ModelConfig, Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

MODEL_FILE = "model.safetensors"
INFO_FILE = "model.json"
STATE_FILE = "state.pt"
MODEL_FORMAT = "earful-1"  # model.json's layout


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, tampered with or unsafe to load, or could not be written."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def safe_torch_load(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; a file needing arbitrary unpickling is refused with a
    clear message unless ``trust_pickle`` (only for files you made yourself, e.g. fairseq's)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        # torch's message is long; keep the line naming what was refused (e.g. "GLOBAL posix.system")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln), lines[0] if lines else type(e).__name__)
        raise CheckpointError(
            f"{path}: refusing to unpickle: the file holds objects beyond tensors and plain containers "
            f"(it could run code when loaded): {detail} Only if you trust its origin, load it with "
            f"--trust-pickle (earful import-hf)."
        ) from e
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read this torch file (truncated or corrupt?): {e}") from e


def file_record(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def verify_file(path: Path, record: dict[str, Any] | None) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    if record is None:
        return
    size = path.stat().st_size
    if size != record["size"]:
        raise CheckpointError(f"{path}: size {size} bytes, expected {record['size']} (truncated or replaced)")
    if sha256(path) != record["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 differs from the one recorded at save (tampered or corrupt)")


def model_kind(model: torch.nn.Module) -> str:
    if isinstance(model, Wav2Vec2ForPreTraining):
        return "pretraining"
    if isinstance(model, Wav2Vec2ForCTC):
        return "ctc"
    raise TypeError(f"not an earful model: {type(model).__name__}")


def save_model(
    ckpt_dir: str | Path,
    model: torch.nn.Module,
    *,
    vocab: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` then ``model.json`` (which records the weights' size and hash, so
    it is written last: a checkpoint without its JSON is incomplete)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # DDP
    weights = ckpt_dir / MODEL_FILE
    atomic_save_tensors(model.state_dict(), weights)
    info: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "kind": model_kind(model),
        "model": to_dict(model.cfg),
        "files": {MODEL_FILE: file_record(weights)},
    }
    if vocab is not None:
        info["vocab"] = vocab
    if extra:
        info.update(extra)
    atomic_write_json(ckpt_dir / INFO_FILE, info)
    return ckpt_dir


def read_info(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / INFO_FILE
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir}: not an earful checkpoint (no {INFO_FILE})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt JSON: {e}") from e
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise CheckpointError(f"{path}: format {found!r}, this version of earful reads {MODEL_FORMAT!r} (not an earful "
                              "model checkpoint, or one from an earlier development version)")
    return info


def build_model(kind: str, cfg: ModelConfig, vocab_size: int | None = None) -> torch.nn.Module:
    if kind == "pretraining":
        return Wav2Vec2ForPreTraining(cfg)
    if kind == "ctc":
        if vocab_size is None:
            raise CheckpointError("a CTC checkpoint needs its vocabulary")
        return Wav2Vec2ForCTC(cfg, vocab_size)
    raise CheckpointError(f"unknown model kind {kind!r}")


def load_model(ckpt_dir: str | Path, *, verify: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model from ``model.json`` and load ``model.safetensors`` (verified by size and hash)."""
    ckpt_dir = Path(ckpt_dir)
    info = read_info(ckpt_dir)
    weights = ckpt_dir / MODEL_FILE
    verify_file(weights, info.get("files", {}).get(MODEL_FILE) if verify else None)
    cfg = from_dict(ModelConfig, info["model"], f"{ckpt_dir / INFO_FILE}:model")
    vocab = info.get("vocab")
    vocab_size = len(vocab["symbols"]) if vocab else None
    model = build_model(info["kind"], cfg, vocab_size)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: unreadable safetensors file: {e}") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not fit the config: missing {missing}, unexpected {unexpected}")
    return model, info
