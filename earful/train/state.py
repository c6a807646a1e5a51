"""A run folder and its training checkpoints.

::

    RUN/config.yaml               the full config of the run
    RUN/train.jsonl, valid.jsonl  monitoring records
    RUN/checkpoints/init/         weights at step 0 (distance-from-init, paper §6.6)
    RUN/checkpoints/step-0001000/ model.safetensors, model.json, state.pt, trainer.json
    RUN/checkpoints/hours-10/     a milestone at 10 hours seen: of padded audio (pre-training's default
                                  ckpt_hours_basis) or nominal batch × steps (ckpt_hours_basis=nominal, as studies use)
    RUN/checkpoints/steps-5000/   a checkpoint kept after step 5000 (ckpt_steps: a cyclic schedule's minima, say)
    RUN/checkpoints/best/         the task's best validation metric: lowest loss (pre-training), lowest validation WER
                                  (fine-tuning); a resume removes checkpoints of the steps it trains again
    RUN/checkpoints/latest.json   {"name": "step-0001000"}: the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed into place, and ``latest.json``
is replaced atomically after it, so a run killed at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from earful.atomic import atomic_write_json, replace_folder
from earful.checkpoint import (
    INFO_FILE,
    STATE_FILE,
    CheckpointError,
    atomic_torch_save,
    file_record,
    read_info,
    safe_torch_load,
    save_model,
    verify_file,
    verify_weights,
    what_it_is,
)
from earful.config import ConfigError, plain_name
from earful.train import distributed as D
from earful.train.recipe import HISTORY

log = logging.getLogger(__name__)

TRAINER_FILE = "trainer.json"
LATEST = "latest.json"
# trainer.json's and state.pt's layout; 1 (no "format") was written before the one engine (earlier development)
TRAINING_FORMAT = 2


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.ckpt = self.root / "checkpoints"

    def prepare(self) -> None:
        self.ckpt.mkdir(parents=True, exist_ok=True)
        for stale in self.ckpt.glob(".tmp-*"):  # a write that was killed
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.ckpt.glob(".*.tmp"):  # e.g. latest.json's temporary file
            stale.unlink(missing_ok=True)
        for stale in self.ckpt.glob(".old-*"):
            # ``.old-NAME-PID``: killed between moving NAME aside and renaming its replacement into place
            name = stale.name.removeprefix(".old-").rpartition("-")[0]
            if name and not (self.ckpt / name).exists():
                os.replace(stale, self.ckpt / name)
                log.warning("restored checkpoint %s (its replacement was interrupted)", self.ckpt / name)
            else:
                shutil.rmtree(stale, ignore_errors=True)

    def save(
        self,
        name: str,
        model: torch.nn.Module,
        *,
        state: dict[str, Any] | None,
        trainer: dict[str, Any],
        vocab: dict[str, Any] | None = None,
        make_latest: bool = True,
    ) -> Path:
        """Write checkpoint ``name`` (a plain name) atomically (folder rename), then point ``latest.json`` at it.

        A write that fails (a full disk, say) leaves the previous checkpoints and ``latest.json`` as they
        were, removes its partial files and raises CheckpointError saying so."""
        plain_name(name, "checkpoint name")
        self.ckpt.mkdir(parents=True, exist_ok=True)
        tmp, final, old = self._paths(name)
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(tmp, model, vocab=vocab)
            info = {"format": TRAINING_FORMAT, **trainer}
            if state is not None:
                atomic_torch_save(state, tmp / STATE_FILE)
                info["files"] = {STATE_FILE: file_record(tmp / STATE_FILE)}
            atomic_write_json(tmp / TRAINER_FILE, info)
            replace_folder(tmp, final, old)
            if make_latest:
                atomic_write_json(self.ckpt / LATEST, {"name": name, "step": trainer.get("step")})
        except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not final.exists():
                os.replace(old, final)
            try:
                previous = self.latest()
            except CheckpointError:
                previous = None
            kept = f"the latest complete checkpoint is still {previous}" if previous else "no earlier checkpoint"
            raise CheckpointError(
                f"could not write checkpoint {final} ({e}); {kept}. Free space (or fix the file system) and "
                "continue with --resume"
            ) from e
        return final

    def _paths(self, name: str) -> tuple[Path, Path, Path]:
        """Checkpoint ``name``'s temporary folder, its place, and where a checkpoint it replaces waits (``.old-``,
        which ``prepare`` restores if a kill comes between the two renames)."""
        return (self.ckpt / f".tmp-{name}-{os.getpid()}", self.ckpt / name,
                self.ckpt / f".old-{name}-{os.getpid()}")

    def copy(self, source: Path, name: str) -> Path:
        """Checkpoint ``source`` copied whole as ``name`` (a plain name), atomically (folder rename)."""
        plain_name(name, "checkpoint name")
        tmp, final, old = self._paths(name)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        replace_folder(tmp, final, old)
        return final

    def latest(self) -> Path | None:
        """The checkpoint to resume from: the one ``latest.json`` names (a plain name inside ``checkpoints/``);
        without ``latest.json`` (deleted, or lost), the newest ``step-*`` checkpoint that verifies, with a
        warning; None when the run has none. Never silently nothing while checkpoints exist."""
        p = self.ckpt / LATEST
        if not p.exists():
            return self._newest_verified()
        try:
            name = json.loads(p.read_text())["name"]
            plain_name(name, "name", str(p))
        except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as e:
            raise CheckpointError(f"{p}: corrupt ({e})") from e
        path = self.ckpt / name
        if not (path / TRAINER_FILE).exists():
            raise CheckpointError(f"{p} points at {path}, which is incomplete")
        return path

    def started(self) -> bool:
        """Whether a run was started in this folder: it holds a checkpoint, or the ``history.jsonl`` a run writes
        as it starts (one killed before its first checkpoint is started too: ``--resume`` starts it again)."""
        return ((self.root / HISTORY).is_file() or bool(self.checkpoints())
                or (self.ckpt / LATEST).is_file())

    def checkpoints(self) -> list[Path]:
        """Every complete checkpoint but ``init`` (what a fresh start would overwrite)."""
        if not self.ckpt.is_dir():
            return []
        return sorted(c for c in self.ckpt.iterdir() if c.is_dir() and c.name != "init"
                      and not c.name.startswith(".") and (c / TRAINER_FILE).exists())

    def _newest_verified(self) -> Path | None:
        """Of the checkpoints holding a training state (step-*, steps-*, best, hours-*), the furthest that verifies."""
        found = []
        for c in self.checkpoints():
            try:
                info = read_trainer_info(c)
            except CheckpointError:
                continue
            if STATE_FILE in info.get("files", {}):  # at one step, the one written last knows most (milestones)
                found.append((int(info["step"]), (c / TRAINER_FILE).stat().st_mtime_ns, c))
        for _, _, c in sorted(found, key=lambda f: (f[0], f[1]), reverse=True):
            try:
                verify_checkpoint(c)
            except CheckpointError as e:
                log.warning("%s: cannot resume from it (%s)", c, e)
                continue
            log.warning("%s has no %s: resuming from the furthest checkpoint that verifies, %s", self.ckpt, LATEST,
                        c.name)
            return c
        if self.checkpoints():
            raise CheckpointError(f"{self.ckpt}: no {LATEST} and no checkpoint with a training state that verifies "
                                  f"(of {[c.name for c in self.checkpoints()]}); nothing to resume from: use "
                                  "another --out")
        return None

    def prune(self, keep_last: int) -> None:
        """Keep the newest ``keep_last`` periodic step checkpoints, every one for 0 (milestones, best and the
        latest stay)."""
        latest = self.latest() if (self.ckpt / LATEST).exists() else None
        steps = sorted(p for p in self.ckpt.glob("step-*") if p.is_dir())
        for p in steps[:-keep_last] if keep_last > 0 else []:
            if latest is None or p.resolve() != latest.resolve():
                shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint ``path`` names: ``path`` itself when it holds ``model.json``; in a run folder (one with
    ``checkpoints/``) its latest, as :meth:`RunDir.latest` finds it; None when ``path`` is neither. A corrupt
    ``latest.json``, or a run folder without a complete checkpoint, is a ``CheckpointError`` naming it."""
    p = Path(path)
    if (p / INFO_FILE).exists():
        return p
    run = RunDir(p)
    if not run.ckpt.is_dir():
        return None
    latest = run.latest()
    if latest is None:
        raise CheckpointError(f"{run.ckpt}: no complete checkpoint in this run folder")
    return latest


def require_checkpoint(path: str | Path) -> Path:
    """:func:`resolve_checkpoint` for a command that needs a checkpoint (export-hf, features, evaluate,
    transcribe, probe, gradvar), a run folder's latest said in the log: a path that names none is a
    ``FileNotFoundError`` saying why, a path that does not exist said so (it had been told it held no model.json
    and no checkpoints/)."""
    ckpt = resolve_checkpoint(path)
    if ckpt is None:
        why = (f"not a checkpoint (no {INFO_FILE}) nor a run folder (no checkpoints/){what_it_is(path)}"
               if Path(path).exists() else "no such checkpoint or run folder (the path does not exist)")
        raise FileNotFoundError(f"{path}: {why}")
    if ckpt != Path(path):  # said once, here, for every command that takes a run folder
        log.info("%s: a run folder, its latest checkpoint: %s (its best by validation: %s)", path, ckpt,
                 Path(path) / "checkpoints" / "best")
    return ckpt


def _read_trainer(ckpt: Path) -> tuple[dict[str, Any], Path]:
    info_path = ckpt / TRAINER_FILE
    if not info_path.exists():
        raise CheckpointError(f"{ckpt}: no {TRAINER_FILE}")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{info_path}: corrupt JSON ({e})") from e
    if not isinstance(info, dict) or info.get("format") != TRAINING_FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise CheckpointError(f"{info_path}: training-state format {found!r}, this version of earful reads "
                              f"{TRAINING_FORMAT} (written by an earlier development version): start the run anew")
    return info, info_path


def read_trainer_info(ckpt: Path) -> dict[str, Any]:
    """``trainer.json`` of a checkpoint (its format checked; state.pt is not read)."""
    return _read_trainer(ckpt)[0]


def nonfinite_stop(info: dict[str, Any], max_nan_steps: int) -> bool:
    """Whether the checkpoint of ``trainer.json`` ``info`` was written by the stop after ``max_nan_steps``
    non-finite steps: recorded as ``nonfinite_stop``; for a checkpoint written before it was recorded, its streak
    (``nan_in_a_row``) against ``max_nan_steps``."""
    return bool(info.get("nonfinite_stop", int(info.get("nan_in_a_row", 0)) >= max_nan_steps))


def load_trainer_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(trainer.json, state.pt or None), both verified against the sizes and hashes recorded at save."""
    info, _ = _read_trainer(ckpt)
    state = None
    if (ckpt / STATE_FILE).exists() or STATE_FILE in info.get("files", {}):
        verify_file(ckpt / STATE_FILE, info.get("files", {}).get(STATE_FILE))
        state = safe_torch_load(ckpt / STATE_FILE, what="a training state written by earful")
    return info, state


def verify_checkpoint(ckpt: Path) -> None:
    """Every file of a training checkpoint against the size and SHA-256 recorded at save (nothing is loaded)."""
    info, _ = _read_trainer(ckpt)
    verify_file(ckpt / STATE_FILE, info.get("files", {}).get(STATE_FILE))
    verify_weights(ckpt, read_info(ckpt))


def training_state(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loader: Any, d: D.Dist
) -> dict[str, Any]:
    """What a trainer needs besides the weights to continue exactly: optimizer, loss scaler, data position
    of every rank (a rank whose batch had no readable audio has moved on further than the others), RNG
    (all ``weights_only``-loadable). A collective: every rank calls it."""
    state: dict[str, Any] = {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "loaders": D.all_gather_object(loader.state_dict(), d),
        "rng_cpu": torch.get_rng_state(),
    }
    if d.device.type == "cuda":  # this device's generator only: a resume may see fewer GPUs
        state["rng_cuda"] = torch.cuda.get_rng_state(d.device)
    return state


class StateMismatch(ValueError):
    """A checkpoint's model or optimizer state does not fit the model being resumed (its architecture, or what
    trains, changed)."""


def restore_training_state(
    state: dict[str, Any], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loader: Any, d: D.Dist,
    *, new_data: bool = False,
) -> None:
    """The inverse of ``training_state``: each rank takes its own data position when the number of ranks is
    the same (else rank 0's, which the sampler maps onto the new layout, and the job's bad files once, on
    rank 0). ``new_data``: the training data changed (``--allow-changes``); the loader starts a fresh epoch of
    it after the saved one instead of continuing a place in the old data."""
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:  # other parameter groups or sizes: the trainable parameters changed
        raise StateMismatch(f"the optimizer's state: {e}") from e
    scaler.load_state_dict(state["scaler"])
    loaders = state["loaders"]
    # for a resume in another layout: where every saved rank was (a shard loader's streams too)
    ranks = [{"epoch": s["epoch"], "position": s["position"],
              **{k: s[k] for k in ("places", "phase") if k in s}} for s in loaders]
    extra = {"new_data": True} if new_data else {}  # a loader of the old contract is called as it was
    if len(loaders) == d.world_size:
        loader.load_state_dict({**loaders[d.rank], "ranks": ranks}, **extra)
    else:
        ids = sorted({i for s in loaders for i in s["bad_ids"]}) if d.rank == 0 else []
        empty = sum(s.get("empty_batches", 0) for s in loaders) if d.rank == 0 else 0
        loader.load_state_dict({**loaders[0], "bad_ids": ids, "empty_batches": empty, "ranks": ranks}, **extra)
    torch.set_rng_state(state["rng_cpu"])
    if state.get("rng_cuda") is not None and d.device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], d.device)
