"""Checkpoints: weights in safetensors, everything else in JSON (or a ``weights_only`` torch file for
optimizer state), written atomically (temporary file + rename) with sizes and SHA-256 recorded so a
truncated or tampered file is detected on load. Nothing is ever unpickled beyond ``weights_only``.

A model checkpoint is a folder::

    CKPT/model.safetensors   the weights
    CKPT/model.json          {"kind": "pretraining"|"ctc", "model": {ModelConfig}, "vocab": ..., "files": {...}}
    CKPT/state.pt            (training checkpoints) optimizer, scheduler, scaler, sampler, RNG
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load, load_file, save_file

from earful.atomic import atomic_path, atomic_write_json
from earful.config import from_dict, renamed_settings, to_dict
from earful.data.digest import sha256
from earful.model import ModelConfig, Wav2Vec2ForCTC, Wav2Vec2ForPreTraining

MODEL_FILE = "model.safetensors"
INFO_FILE = "model.json"
STATE_FILE = "state.pt"
LEFT_OUT_FILE = "left-out.json"  # the files a copy of the checkpoint left out (`earful study merge --without-weights`)
MODEL_FORMAT = "earful-1"  # model.json's layout


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, tampered with or unsafe to load, or could not be written."""


PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")
CONVERT = ("earful reads no pickled checkpoint here (code runs as it loads): `earful import-fairseq FILE CKPT` "
           "(a fine-tuned model with --dict, its dict.ltr.txt) makes an earful checkpoint of a fairseq wav2vec 2.0 "
           "one, running nothing of the file; give CKPT instead")


def what_it_is(path: str | Path, *, transformers_ok: bool = False) -> str:
    """For an error about ``path``, which is no earful checkpoint: what it is when that is known, and what to do
    ("; ..."), else "". A pickled file or a folder of them (fairseq's ``checkpoint_best.pt``), a transformers
    folder (unless the command takes one: ``transformers_ok``), an earful checkpoint or run folder (given where a
    transformers folder is wanted), a file."""
    p = Path(path)
    if p.is_file():
        if (p.parent / "config.json").is_file() and p.suffix in (".bin", ".safetensors"):
            return f"; {p.name} is a transformers weights file: give its folder, {p.parent}"
        with open(p, "rb") as f:
            head = f.read(4)
        if p.suffix in PICKLE_SUFFIXES or head[:1] == b"\x80" or head == b"PK\x03\x04":  # a pickle, torch's zip
            return f"; {p.name} is a pickled PyTorch file (a fairseq checkpoint?): {CONVERT}"
        return "; a file, not a folder"
    if p.is_dir():
        if (p / INFO_FILE).is_file() or (p / "checkpoints").is_dir():  # its state.pt is earful's, not fairseq's
            what = "an earful checkpoint" if (p / INFO_FILE).is_file() else "an earful run folder"
            return (f"; it is {what}: the commands read it as it is, and `earful export-hf {p} OUT` makes a "
                    "transformers folder of it")
        if (p / "config.json").is_file() and not transformers_ok:
            return f"; it is a transformers folder: `earful import-hf {p} CKPT` makes an earful checkpoint of it"
        pickled = sorted(q.name for q in p.iterdir() if q.suffix in (".pt", ".pth", ".ckpt") and q.is_file())
        if pickled and not (p / "config.json").is_file():
            return f"; it holds {pickled[0]} (a fairseq checkpoint?): {CONVERT}"
    return ""


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def safe_torch_load(path: str | Path, *, trust_pickle: bool = False, what: str | None = None) -> Any:
    """``torch.load`` with ``weights_only=True``; a file needing arbitrary unpickling is refused with a
    clear message unless ``trust_pickle`` (only for files you made yourself, e.g. fairseq's). ``what``: the
    file earful expects there (a training state earful wrote holds only tensors: no way to trust it applies)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        # torch's message is long; keep the line naming what was refused (e.g. "GLOBAL posix.system")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        named = re.search(r"GLOBAL [\w.]+", str(e))  # not torch's advice around it (add_safe_globals: not earful's)
        detail = named.group() if named else lines[0] if lines else type(e).__name__
        way_out = (f"earful never writes such a file as {what}: it was replaced; resume from another checkpoint"
                   if what else "Only if you trust its origin, load it with --trust-pickle (earful import-hf).")
        raise CheckpointError(
            f"{path}: refusing to unpickle: the file holds objects beyond tensors and plain containers "
            f"(it could run code when loaded): {detail.rstrip('.')}. {way_out}"
        ) from e
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read this torch file (truncated or corrupt?): {e}") from e


def file_record(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def verify_file(path: Path, record: dict[str, Any] | None, opened: BinaryIO | None = None) -> None:
    """``path`` is there and (``record``) of the size and SHA-256 recorded; ``opened``: the file, open in binary
    mode, to check instead of what ``path`` names now (its size before a byte is read)."""
    if opened is None and not path.exists():
        if (path.parent / LEFT_OUT_FILE).is_file():
            raise CheckpointError(f"{path}: missing: this checkpoint was copied without its weights (`earful study "
                                  f"merge --without-weights`; {LEFT_OUT_FILE} says from where); merge its study "
                                  "folder again with them, or remove the run to train it again")
        raise CheckpointError(f"{path}: missing")
    if record is None:
        return
    size = os.fstat(opened.fileno()).st_size if opened is not None else path.stat().st_size
    if size != record["size"]:
        raise CheckpointError(f"{path}: size {size} bytes, expected {record['size']} (truncated or replaced)")
    if sha256(path if opened is None else opened) != record["sha256"]:
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


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint; a CheckpointError naming it when it is corrupt or unreadable."""
    return _parse_json(_file_bytes(path), path)


def _file_bytes(path: Path) -> bytes:
    """A checkpoint file's bytes; a CheckpointError naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e


def _parse_json(data: bytes, path: Path) -> Any:
    """``read_json`` of the bytes read from ``path``."""
    try:
        return json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e


def read_info(ckpt_dir: str | Path) -> dict[str, Any]:
    return _info_of(_info_bytes(ckpt_dir), ckpt_dir)


def _info_bytes(ckpt_dir: str | Path) -> bytes:
    """``model.json``'s bytes, read once (a missing one: not an earful checkpoint)."""
    path = Path(ckpt_dir) / INFO_FILE
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir}: not an earful checkpoint (no {INFO_FILE})")
    return _file_bytes(path)


def _info_of(data: bytes, ckpt_dir: str | Path) -> dict[str, Any]:
    """``read_info`` of ``model.json``'s bytes."""
    path = Path(ckpt_dir) / INFO_FILE
    info = _parse_json(data, path)
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise CheckpointError(f"{path}: format {found!r}, this version of earful reads {MODEL_FORMAT!r} (not an earful "
                              "model checkpoint, or one from an earlier development version)")
    return info


def weights_sha256(info: dict[str, Any]) -> str | None:
    """The SHA-256 of the weights a ``model.json`` (``info``) records, None where it records none: what tells one
    checkpoint's results (evaluate) or features from another's, a moved folder being the same weights."""
    return ((info.get("files") or {}).get(MODEL_FILE) or {}).get("sha256")


def same_weights(saved: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """Whether an earlier output's record (``saved``: an evaluation's summary.json, features.json) is of the
    checkpoint ``record`` names: by the weights' SHA-256 where both record one (a moved folder is the same
    weights), else by the checkpoint's path (a record of an earlier version, a checkpoint that records no hash)."""
    if saved.get("weights_sha256") and record["weights_sha256"]:
        return bool(saved["weights_sha256"] == record["weights_sha256"])
    return Path(str(saved.get("checkpoint"))).resolve() == Path(record["checkpoint"]).resolve()


def build_model(kind: str, cfg: ModelConfig, vocab_size: int | None = None, where: str = "") -> torch.nn.Module:
    """The model ``kind`` names; ``where``: the file that asks for it, for the errors."""
    at = f"{where}: " if where else ""
    if kind == "pretraining":
        return Wav2Vec2ForPreTraining(cfg)
    if kind == "ctc":
        if vocab_size is None:
            raise CheckpointError(f"{at}a CTC checkpoint needs its vocabulary (none recorded)")
        return Wav2Vec2ForCTC(cfg, vocab_size)
    raise CheckpointError(f"{at}unknown model kind {kind!r}")


_LAYER = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")
_CNN_LAYER = re.compile(r"(?:^|\.)feature_encoder\.layers\.(\d+)\.")


def check_sizes(kind: str, cfg: ModelConfig, vocab_size: int | None, shapes: dict[str, tuple[int, ...]],
                where: str) -> None:
    """Refuse a config that does not fit the weights before anything is allocated (a hostile or broken
    ``model.json`` or ``config.json`` asking for 10 million layers or 128 GB): the layer counts from the
    tensor names first, then every shape of the model built on the meta device."""
    layers = {int(m.group(1)) for k in shapes if (m := _LAYER.search(k))}
    convs = {int(m.group(1)) for k in shapes if (m := _CNN_LAYER.search(k))}
    if len(layers) != cfg.num_layers or len(convs) != len(cfg.conv_dim):
        raise CheckpointError(f"{where}: the config asks for {cfg.num_layers} transformer and {len(cfg.conv_dim)} "
                              f"CNN layers, the weights hold {len(layers)} and {len(convs)}")
    with torch.device("meta"):
        model = build_model(kind, cfg, vocab_size, where)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [k for k in want if shapes.get(k) != want[k]] + sorted(set(shapes) - set(want))
    if wrong:
        shown = "; ".join(f"{k}: config {want.get(k)}, weights {shapes.get(k)}" for k in wrong[:3])
        raise CheckpointError(f"{where}: the config does not fit the weights ({len(wrong)} tensors differ: {shown})")


def verify_weights(ckpt_dir: Path, info: dict[str, Any], opened: BinaryIO | None = None) -> None:
    """``model.safetensors`` (``opened``: the file as opened) against the size and SHA-256 that ``model.json``
    (``info``) recorded at save; a ``model.json`` without them is refused (:data:`MODEL_FORMAT` always records
    them)."""
    files = info.get("files")
    record = files.get(MODEL_FILE) if isinstance(files, dict) else None
    if not (isinstance(record, dict) and {"size", "sha256"} <= record.keys()):
        raise CheckpointError(f"{ckpt_dir / INFO_FILE}: no size and SHA-256 of {MODEL_FILE} (\"files\"), which "
                              f"{MODEL_FORMAT} always records: the file was edited, the weights cannot be verified")
    verify_file(ckpt_dir / MODEL_FILE, record, opened)


def model_config(ckpt_dir: str | Path, info: dict[str, Any] | None = None) -> ModelConfig:
    """The model settings a checkpoint's ``model.json`` records (``info``: that file, already read), without
    reading the weights; one written before a setting was renamed (``model.init``) is read with today's names."""
    where = Path(ckpt_dir) / INFO_FILE
    info = read_info(ckpt_dir) if info is None else info
    if "model" not in info:
        raise CheckpointError(f"{where}: no \"model\" (the model's config), which {MODEL_FORMAT} always records")
    model = info["model"]
    return from_dict(ModelConfig, renamed_settings(model, "model") if isinstance(model, dict) else model,
                     f"{where}:model")


def load_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights alone (``model.safetensors``, verified by size and hash against its ``model.json``),
    without building its model: a run's ``init`` for the distance from it."""
    ckpt_dir = Path(ckpt_dir)
    info = read_info(ckpt_dir)
    with _open_weights(ckpt_dir / MODEL_FILE) as opened:
        verify_weights(ckpt_dir, info, opened)
        return _read_weights(ckpt_dir / MODEL_FILE, opened)


def _open_weights(weights: Path) -> BinaryIO:
    """The weights file, open (binary) for checking and loading through one descriptor, so that what is checked is
    what is loaded whatever is written at the path meanwhile; a CheckpointError naming it when it is not there
    (a copy without weights says so) or cannot be opened."""
    verify_file(weights, None)
    try:
        return open(weights, "rb")  # noqa: SIM115 - the caller's to close
    except OSError as e:
        raise CheckpointError(f"{weights}: unreadable ({e})") from e


def _read_weights(weights: Path, opened: BinaryIO) -> dict[str, torch.Tensor]:
    """The tensors of ``weights`` as ``opened`` (and checked) before, whatever the path names now (a checkpoint
    written again at it meanwhile): read through its descriptor, as safetensors maps a path."""
    fd = _descriptor_path(opened)
    try:
        if fd is None:  # no /proc/self/fd nor /dev/fd: its bytes
            opened.seek(0)
            return load(opened.read())
        return load_file(fd)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: unreadable safetensors file: {e}") from e


def _descriptor_path(opened: BinaryIO) -> str | None:
    """A path that opens the very file ``opened`` is (Linux's /proc/self/fd, macOS's /dev/fd), None without one
    (a /dev/fd that holds only 0, 1 and 2, FreeBSD's without fdescfs, is none)."""
    st = os.fstat(opened.fileno())
    for root in ("/proc/self/fd", "/dev/fd"):
        path = f"{root}/{opened.fileno()}"
        try:
            there = os.stat(path)
        except OSError:
            continue
        if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
            return path
    return None


def load_model(ckpt_dir: str | Path, *,
               expect: Mapping[str, object] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model from ``model.json`` and load ``model.safetensors`` (verified by size and hash; the
    config checked against the weights' shapes before the model is built). ``model.json`` is read once and the
    weights file opened once, checked and loaded through that one descriptor: a checkpoint replaced meanwhile (a
    training writing it again, atomically, at the same path) cannot give the weights of one and the record or
    hash of the other. ``expect``: the SHA-256 of the files as a caller hashed them earlier (``{"weights": ...,
    "info": ...}``, a probe's fingerprint): a CheckpointError where the files read now are others."""
    ckpt_dir = Path(ckpt_dir)
    where = ckpt_dir / INFO_FILE
    weights = ckpt_dir / MODEL_FILE
    info_bytes = _info_bytes(ckpt_dir)
    info = _info_of(info_bytes, ckpt_dir)
    cfg = model_config(ckpt_dir, info)
    vocab = info.get("vocab")
    if vocab and not (isinstance(vocab, dict) and isinstance(vocab.get("symbols"), list)):
        raise CheckpointError(f"{where}: \"vocab\" holds no list of \"symbols\"")
    vocab_size = len(vocab["symbols"]) if vocab else None
    if info.get("kind") not in ("pretraining", "ctc"):
        raise CheckpointError(f"{where}: unknown model kind {info.get('kind')!r}")
    opened = _open_weights(weights)
    changed = (f"{ckpt_dir}: %s changed since hashed (a training writing this checkpoint again?): what was hashed "
               "is not what would be loaded; run again")
    with opened:
        try:
            verify_weights(ckpt_dir, info, opened)  # the size before a byte is read, then the hash
        except CheckpointError as e:  # with ``expect``: replaced after model.json was read, most likely
            if expect is None:
                raise
            raise CheckpointError(f"{changed % MODEL_FILE} ({e})") from e
        if expect is not None:
            read = {"weights": weights_sha256(info), "info": hashlib.sha256(info_bytes).hexdigest()}
            names = [name for k, name in (("weights", MODEL_FILE), ("info", INFO_FILE)) if expect.get(k) != read[k]]
            if names:
                raise CheckpointError(changed % " and ".join(names))
        state = _read_weights(weights, opened)
    check_sizes(info["kind"], cfg, vocab_size, {k: tuple(v.shape) for k, v in state.items()}, str(where))
    model = build_model(info["kind"], cfg, vocab_size, str(where))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not fit the config: missing {missing}, unexpected {unexpected}")
    return model, info
