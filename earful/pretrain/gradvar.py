"""``earful gradvar``: how much the gradient varies from batch to batch, and what that says about the
critical batch size.

For N independent batches of B seconds each (the paper: N = 10; a batch is ``budget.batch_seconds``, taken in
micro-batches of ``device_seconds`` and accumulated, as the trainer does) we take the gradient g_i of the loss
per masked frame and report

* the paper's statistic (§6.5): the standard deviation of each parameter's gradient over the N batches,
  averaged over all parameters;
* the simple gradient noise scale of McCandlish et al. (2018), ``B_simple = tr(Σ) / |G|²``, where Σ is
  the per-second gradient covariance and G the true gradient. With S = (1/(N-1)) Σ_i |g_i − ḡ|² (an
  unbiased estimate of tr(Σ)/B) and |G|² ≈ |ḡ|² − S/N (unbiased), ``B_simple ≈ B·S / (|ḡ|² − S/N)``,
  in seconds of audio: batches much smaller than it waste steps on noise, much larger ones waste audio
  (``null`` where |ḡ|² − S/N ≤ 0: the signal is below the noise of N batches, not estimable);
* their standard errors (``*_se``), from leaving one batch out at a time (the jackknife), and ``signal_to_noise``
  = |G|² over its standard error; ``b_simple_seconds_harmonic`` takes the harmonic mean of the batches' seconds
  for B (S estimates tr(Σ)·mean(1/B_i) where batches differ in length).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from earful.checkpoint import load_model, read_info
from earful.data.budget import BatchBudget
from earful.data.dataset import make_loader
from earful.data.manifest import read_manifest
from earful.model.wav2vec2 import loss_denominator
from earful.pretrain.task import forward_batch
from earful.train.distributed import resolve_device
from earful.train.state import TRAINER_FILE, read_trainer_info
from earful.train.step import seed_micro_batch

log = logging.getLogger(__name__)


def checkpoint_step(ckpt: Path) -> int:
    """The optimizer step a checkpoint was saved at (its ``trainer.json``); 0, with a warning, for a checkpoint
    without one (imported, or saved by hand)."""
    if not (ckpt / TRAINER_FILE).exists():
        log.warning("%s has no %s: gradvar takes the Gumbel temperature and diversity weight of step 0", ckpt,
                    TRAINER_FILE)
        return 0
    return int(read_trainer_info(ckpt)["step"])


# the settings of gradvar's batches (as ``recorded_batches`` names them) and where a checkpoint's trainer.json
# records each: its recipe (data.padding too), but device_seconds in its layout
RECORDED = {"batch_seconds": "batch_seconds", "crop_seconds": "data.crop_seconds", "min_seconds": "data.min_seconds",
            "max_seconds": "data.max_seconds", "shape_seconds": "data.shape_seconds"}
# what a checkpoint that records none of them (imported, or saved by hand) is measured with: 60 s batches taken at
# once, of whole utterances, zero-padded (the paper's code)
UNRECORDED: dict[str, Any] = {"batch_seconds": 60.0, "device_seconds": None, "crop_seconds": None,
                              "min_seconds": None, "max_seconds": None, "shape_seconds": None,
                              "padding": True}


# the settings a sampler's messages advise, as ``earful gradvar``'s options
OPTION_NAMES: dict[str, str | None] = {"device_seconds": "--device-seconds", "max_seconds": "--max-seconds",
                                       "min_seconds": "--min-seconds", "crop_seconds": "--crop-seconds",
                                       "skip_bad": "--skip-bad"}


def require_pretraining(ckpt: str | Path, kind: str | None) -> None:
    """Refuse checkpoint ``ckpt`` of model ``kind`` (its model.json's) unless it is a pre-training one."""
    if kind != "pretraining":
        raise ValueError(f"{ckpt}: gradvar needs a pre-training checkpoint, this one is {kind}")


def recorded_batches(ckpt: str | Path, **given: Any) -> tuple[BatchBudget, bool]:
    """The batches pre-training checkpoint ``ckpt`` was trained on, taken on one device: the budget its
    trainer.json records (batch_seconds, data.crop_seconds, data.min_seconds, data.max_seconds, data.shape_seconds
    of its recipe; device_seconds of its layout) and its data.padding: whether each batch was zero-padded to its
    longest utterance, or cropped to its shortest. ``given`` settings of ``UNRECORDED``'s names (None included: no
    limit) replace the recorded ones; a setting recorded nowhere is ``UNRECORDED``'s (a device_seconds of None: the
    whole batch at once). Another kind of checkpoint is refused first, before any word of what it records."""
    require_pretraining(ckpt, read_info(ckpt).get("kind"))
    path = Path(ckpt) / TRAINER_FILE
    info = read_trainer_info(Path(ckpt)) if path.exists() else {}
    recipe, layout = info.get("recipe", {}), info.get("layout", {})
    recorded = {k: recipe[key] for k, key in RECORDED.items() if key in recipe}
    if "device_seconds" in layout:
        recorded["device_seconds"] = layout["device_seconds"]
    if "data.padding" in recipe:
        recorded["padding"] = recipe["data.padding"]
    unknown = set(given) - set(UNRECORDED)
    if unknown:
        raise TypeError(f"recorded_batches: no setting {sorted(unknown)}")
    missing = sorted(set(UNRECORDED) - set(recorded) - set(given))
    if missing:
        log.warning("%s records no %s: gradvar takes %s", ckpt, ", ".join(missing),
                    ", ".join(f"{k}={UNRECORDED[k]}" for k in missing))
    s = {**UNRECORDED, **recorded, **given}
    device = s["batch_seconds"] if s["device_seconds"] is None else s["device_seconds"]
    budget = BatchBudget(s["batch_seconds"], device, crop_seconds=s["crop_seconds"], min_seconds=s["min_seconds"],
                         max_seconds=s["max_seconds"], shape_seconds=s["shape_seconds"])
    return budget, bool(s["padding"])


def noise_statistics(gram: torch.Tensor, seconds: torch.Tensor) -> dict[str, Any]:
    """S, |G|^2 = (sum_{i != j} g_i . g_j) / (N(N-1)) and B_simple from the N x N Gram matrix of the batches'
    gradients (``gram[i, j] = g_i . g_j``) and their ``seconds``; the leave-one-batch-out jackknife of each; and
    B_simple with the harmonic mean of the batch sizes (S estimates tr(Sigma) * mean(1/B_i), so the arithmetic mean
    overstates it by mean(B) * mean(1/B))."""
    n = gram.shape[0]

    def stats(idx: torch.Tensor) -> tuple[float, float, float]:
        g = gram[idx][:, idx]
        m = len(idx)
        off = (g.sum() - g.diagonal().sum()) / (m * (m - 1))  # unbiased |G|^2
        s = (g.diagonal().sum() / m - g.sum() / m**2) * m / (m - 1)  # sum of unbiased variances
        return float(s), float(off), float(1.0 / (1.0 / seconds[idx]).mean())

    s, g2, harm = stats(torch.arange(n))
    leave = [stats(torch.tensor([j for j in range(n) if j != k])) for k in range(n)] if n > 2 else []

    def jack(values: list[float]) -> float | None:
        if len(values) < 2:
            return None
        mean = sum(values) / len(values)
        return math.sqrt((len(values) - 1) / len(values) * sum((v - mean) ** 2 for v in values))

    b_jk = [h * ss / gg for ss, gg, h in leave if gg > 0]
    return {
        "trace_cov_per_batch": s, "grad_norm_sq_estimate": g2,
        # None, not inf, where |G|^2 <= 0: not estimable (and JSON has no inf)
        "b_simple_seconds": float(seconds.mean()) * s / g2 if g2 > 0 else None,
        "trace_cov_per_batch_se": jack([ss for ss, _, _ in leave]),
        "grad_norm_sq_estimate_se": jack([gg for _, gg, _ in leave]),
        "b_simple_seconds_harmonic": harm * s / g2 if g2 > 0 else None,
        # the jackknife of a ratio: only where no leave-one-out |G|^2 is <= 0 (else the ratio is not estimable)
        "b_simple_seconds_harmonic_se": jack(b_jk) if len(b_jk) == len(leave) and g2 > 0 else None,
        "signal_to_noise": g2 / se if (se := jack([gg for _, gg, _ in leave])) else None,
    }  # fmt: skip


def gram_matrix(rows: torch.Tensor, chunk: int = 1 << 22) -> tuple[torch.Tensor, float]:
    """``rows @ rows.T`` and the sum over columns of each column's standard deviation (unbiased), in float64,
    for ``rows`` (batches, parameters) in float32, a slice of columns at a time: a float64 copy of the whole
    matrix is 7.6 GB for BASE's 95 M parameters at 10 batches."""
    gram = torch.zeros(rows.shape[0], rows.shape[0], dtype=torch.float64)  # (batches, batches)
    spread = 0.0
    for start in range(0, rows.shape[1], chunk):
        part = rows[:, start : start + chunk].double()  # (batches, chunk)
        gram += part @ part.T
        spread += float(part.std(0).sum())
    return gram, spread


def gradient_noise(
    ckpt: str | Path,
    manifest: str | Path,
    budget: BatchBudget,
    *,
    num_batches: int = 10,
    seed: int = 0,
    device: str = "auto",
    padding: bool = True,
    skip_bad: bool = False,
    options: bool = True,
) -> dict[str, Any]:
    """The statistics above for pre-training checkpoint ``ckpt``, at the step it was saved (the Gumbel temperature
    and the diversity weight of that step), on batches of ``budget`` from ``manifest``: zero-padded (``padding``, as
    ``data.padding``), or cropped to their shortest utterance, as the run's trainer made them; ``skip_bad`` as the
    run's ``data.skip_bad``. Messages name the settings as ``earful gradvar``'s options (``--device-seconds``), or,
    ``options=False`` (a study), as the pre-training's (``device_seconds``, ``data.min_seconds``)."""
    if num_batches < 2:
        raise ValueError("gradvar needs at least 2 batches")
    dev = resolve_device(device, "--device" if options else "device")
    model, info = load_model(ckpt)
    require_pretraining(ckpt, info["kind"])
    step = checkpoint_step(Path(ckpt))
    model.set_step(step)  # the temperature and diversity weight the gradient had in training
    model.to(dev).train()
    loader = make_loader(read_manifest(manifest, check_files=True), budget, shuffle=True, seed=seed, endless=True,
                         num_workers=0, crop_to_shortest=not padding, skip_bad=skip_bad,
                         names=OPTION_NAMES if options else None)  # None: the sampler's, the config's
    per_epoch, needed = len(loader.sampler), num_batches * budget.accumulation  # micro-batches
    if needed > per_epoch:
        log.warning("%s holds %d micro-batches of %.4g s, and %d batches of %g s take %d: later batches repeat its "
                    "utterances, and the statistics, which assume independent batches, understate the spread; give "
                    "a larger manifest or fewer batches", manifest, per_epoch, budget.micro_seconds, num_batches,
                    budget.batch_seconds, needed)
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in params)
    seconds: list[float] = []
    rows = torch.zeros(num_batches, total)  # (batches, parameters) each batch's gradient (0 where none)
    batches = iter(loader)
    for i in tqdm(range(num_batches), desc="gradvar", unit="batch"):
        model.zero_grad(set_to_none=True)
        masked, padded = 0.0, 0.0
        for j in range(budget.accumulation):
            batch = next(batches)
            out = forward_batch(model, model, batch, dev, *seed_micro_batch(seed, i, j, dev))
            out.loss_sum().backward()
            masked += float(out.num_masked)
            padded += batch.padded_seconds
        denom = loss_denominator(model.cfg.loss_normalisation, masked, budget.accumulation)
        at = 0
        for p in params:
            if p.grad is not None:
                rows[i, at : at + p.numel()] = (p.grad.double() / denom).reshape(-1).float().cpu()
            at += p.numel()
        seconds.append(padded)
    gram, spread = gram_matrix(rows)
    del rows
    stats = noise_statistics(gram, torch.tensor(seconds, dtype=torch.float64))
    batch_sec = sum(seconds) / len(seconds)
    result = {
        "checkpoint": str(ckpt), "step": step, "padding": padding, "batches": num_batches,
        "epochs_read": needed / per_epoch,  # above 1: batches repeat utterances (not independent)
        "batch_seconds_padded": batch_sec,
        "parameters": total, "mean_param_grad_std": spread / total,
        **stats,
    }  # fmt: skip
    if stats["b_simple_seconds"] is None:
        log.warning("the gradient signal is below the noise of %d batches: B_simple cannot be estimated; "
                    "use more batches", num_batches)
    return result
