"""Pre-training as a task of the engine (``earful.train.engine.Trainer``): the contrastive step.

Each micro-batch's loss terms are SUMS over its masked frames; the engine divides the gradients once by the
global number of masked frames summed over micro-batches and ranks (fairseq's ``sample_size``), or with
``loss_normalisation: nanow2v2`` by the number of micro-batches (the paper's code). The Gumbel temperature
moves once per optimizer step. Validation measures the held-out loss, accuracy and codebook perplexity; the
lowest loss is kept in ``checkpoints/best``. ``ckpt_hours`` and ``ckpt_steps`` add milestone checkpoints at hours
seen and at steps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from earful.data.budget import BatchBudget, min_seconds_keeping
from earful.data.dataset import Batch, make_loader
from earful.data.manifest import read_manifest
from earful.data.stream import make_shard_loader
from earful.model import PretrainOutput, Wav2Vec2ForPreTraining
from earful.model.wav2vec2 import loss_denominator
from earful.pretrain.config import PretrainConfig, no_pretraining_model
from earful.train import distributed as D
from earful.train.config import hours_reached, nominal_steps
from earful.train.engine import Trainer
from earful.train.init import SCRATCH, InitWeights, initial_weights, load_init
from earful.train.monitor import codeword_similarity
from earful.train.state import read_trainer_info
from earful.train.step import autocast, step_seed
from earful.train.task import Task

log = logging.getLogger(__name__)


class PretrainTask(Task):
    name = "pre-training"
    model_kind = "pretraining"
    reads_labels = ()  # audio alone: a manifest phonemized in place is the same training data
    cfg: PretrainConfig
    model: Wav2Vec2ForPreTraining

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.chance_accuracy = 1.0 / (cfg.model.num_negatives + 1)
        self.milestones_done: list[float] = []

    def build_model(self, d: D.Dist, resume_from: Path | None) -> None:
        self.d = d
        cfg = self.cfg
        if d.rank == 0 and (past := cfg.milestones_past_the_end()):  # said once, not by every rank
            log.warning("%s: past this run's end (max_steps=%d, %.4g h of batch_seconds × max_steps): never written",
                        ", ".join(past), cfg.max_steps, cfg.batch_seconds * cfg.max_steps / 3600)
        # continued pre-training: what init names (resolved once; a resume compares its recorded digest)
        if cfg.init != SCRATCH and resume_from is not None and "init" not in read_trainer_info(resume_from):
            # the recipe's init.sha256 is compared only where the checkpoint records it (fine-tunings of earlier
            # versions): a scratch run resumed with --allow-changes would record weights it never started from
            raise ValueError(f"init={cfg.init}: the run in this folder started from scratch, and a resume continues "
                             "its own weights, not init's, even with --allow-changes: drop init, or use another "
                             "--out to continue pre-training from it")
        self.init_weights = initial_weights(cfg.init, resume_from, "init") if cfg.init != SCRATCH else None
        torch.manual_seed(self.cfg.seed)
        self.model = Wav2Vec2ForPreTraining(self.cfg.model)
        if self.init_weights is not None and resume_from is None:
            self._load_init(self.init_weights)
        self.model.to(d.device)

    def _load_init(self, init: InitWeights) -> None:
        """The initial model's weights, all of them (its quantizer and projections too); the optimizer, the
        schedule and the Gumbel temperature start anew, at step 0."""
        source, _, what = load_init(init, "pre-training")
        if not isinstance(source, Wav2Vec2ForPreTraining):
            raise ValueError(no_pretraining_model(self.cfg.init, type(source).__name__))
        try:
            self.model.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as e:
            detail = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise ValueError(f"init={self.cfg.init}: its weights do not fit this run's model (a model setting that "
                             f"changes the architecture? the model's settings are the initial model's): {detail}"
                             ) from None
        log.info("initial model: %s (weights' SHA-256 %s); optimizer, schedule and Gumbel temperature from step 0",
                 what, init.sha256)

    def recipe_extras(self) -> dict[str, Any]:
        return {"init.sha256": self.init_weights.sha256} if self.init_weights is not None else {}

    def probe_loss(self, wave: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        return self.model(wave, lengths).loss_sum()

    def pads_batches(self) -> bool:
        return self.cfg.data.padding

    def build_data(self, budget: BatchBudget) -> None:
        cfg, d = self.cfg, self.d
        if bool(cfg.data.train) == bool(cfg.data.shards):
            raise ValueError("data.train / data.shards: give one, the training manifest or the folder of its shards "
                             f"(got data.train={cfg.data.train!r}, data.shards={cfg.data.shards!r})")
        common = {"seed": cfg.seed, "rank": d.rank, "skip_bad": cfg.data.skip_bad,
                  "crop_to_shortest": not cfg.data.padding}
        loading = {"bucket_size": cfg.data.bucket_size, "num_workers": cfg.data.num_workers,
                   "pin_memory": d.device.type == "cuda"}
        if cfg.data.shards:
            self.loader = make_shard_loader(cfg.data.shards, budget, relayout=cfg.data.shards_relayout, **loading,
                                            **common)
        else:
            self.loader = make_loader(read_manifest(cfg.data.train, check_files=True), budget, shuffle=True,
                                      endless=True, **loading, **common)
        self._warn_single_frames()
        self._warn_unsure_masks()
        self.valid_loader = None
        if cfg.data.valid:
            valid = BatchBudget.per_device(cfg.valid_device_seconds(), d.world_size, **cfg.data.limits())
            self.valid_loader = make_loader(read_manifest(cfg.data.valid, check_files=True), valid, shuffle=False,
                                            endless=False, num_workers=0, **common,
                                            names={"device_seconds": "valid_seconds"}, evaluation=True)

    def _warn_single_frames(self) -> None:
        """Warn (once, on rank 0) of training utterances that give the model a single frame: its masked frame has
        no distractor (they are drawn from the utterance's other frames), so it scores a contrastive loss of 0 and
        counts as correct (fairseq stops on one instead: "the entire sequence is masked"). So does every utterance
        batched with it where its micro-batch is cropped to it (``data.padding: false``) or masked to its count
        (``model.require_same_masks``): that micro-batch logs accuracy 1.0 and trains on nothing but the auxiliary
        losses."""
        sampler = self.loader.sampler
        lengths = sampler.lengths[sampler.batchable]  # (utterances,) samples at SAMPLE_RATE
        single = lengths[self.model.frame_lengths(torch.from_numpy(lengths).long()).numpy() < 2]
        if len(single) and self.d.rank == 0:
            shared = not self.cfg.data.padding or self.cfg.model.require_same_masks
            why = "cropped to its length" if not self.cfg.data.padding else "masked to its one frame"
            log.warning("%d of %d training utterances give a single frame (%d to %d samples at 16 kHz): its masked "
                        "frame has no distractor, scores a contrastive loss of 0 and counts as correct%s; "
                        "data.min_seconds=%g leaves them out", len(single), len(lengths), single.min(), single.max(),
                        f", and so does every utterance batched with it ({why})" if shared else "",
                        min_seconds_keeping(single.max() + 1))

    def _warn_unsure_masks(self) -> None:
        """Warn (once, on rank 0) of training utterances (as cropped) too short for the configured span mask to be
        sure of masking a frame (``Wav2Vec2ForPreTraining.sure_mask_samples``: under 10 frames for the nanow2v2
        style, which reads no ``min_masks``; for fairseq's only with ``min_masks`` 0). Such an utterance then trains
        on no contrastive loss, and a micro-batch in which no utterance gets a masked frame stops the run."""
        sure = self.model.sure_mask_samples()
        if sure is None or sure[0] <= 1 or self.d.rank != 0:  # sure from one frame: every utterance the CNN takes
            return
        frames, samples = sure
        sampler = self.loader.sampler
        lengths = sampler.effective[sampler.batchable]  # (utterances,) samples as cropped
        short = lengths[lengths < samples]
        if not len(short):
            return
        model, data = self.cfg.model, self.cfg.data
        shared = not data.padding or model.require_same_masks
        why = "cropped to its length" if not data.padding else "masked to its count"
        way = "" if model.mask_style == "nanow2v2" else "model.min_masks=1 masks every one, or "
        seconds = min_seconds_keeping(samples)
        crop = (f" (data.crop_seconds={data.crop_seconds:g} crops longer ones below it: raise it)"
                if sampler.crop_samples and sampler.crop_samples < samples else "")
        log.warning("%d of %d training utterances (as cropped) have fewer than %d frames (%d to %d samples at 16 kHz, "
                    "under %d): the %s mask style (model.mask_style%s) may leave such an utterance without a masked "
                    "frame, so that it trains on no contrastive loss%s, and a micro-batch in which no utterance gets "
                    "one stops the run; %sdata.min_seconds=%g leaves them out%s", len(short), len(lengths), frames,
                    short.min(), short.max(), samples, model.mask_style,
                    ", which reads no model.min_masks" if model.mask_style == "nanow2v2"
                    else f", model.min_masks={model.min_masks}",
                    f", nor does every utterance batched with it ({why})" if shared else "", way, seconds, crop)

    # ------------------------------------------------------------------ one step
    def start_step(self, step: int) -> None:
        self.model.set_step(step)  # the Gumbel temperature and the diversity weight

    def micro_step(
        self, net: nn.Module, batch: Batch, generator: torch.Generator, host_generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        out = forward_batch(net, self.model, batch, self.d.device, generator, host_generator)
        return out.loss_sum(), {
            "masked": out.num_masked, "contrastive": out.contrastive, "diversity": out.diversity,
            "penalty": out.penalty, "correct": out.num_correct, "ppl_soft": out.perplexity_soft,
            "ppl_hard": out.perplexity_hard,
        }  # fmt: skip

    def denominator(self, tot: dict[str, Any]) -> float:
        return loss_denominator(self.cfg.model.loss_normalisation, tot["masked"], tot["micro_batches"])

    def step_record(self, tot: dict[str, Any]) -> dict[str, float]:
        """Contrastive loss and accuracy per masked frame (the paper's), diversity and penalty in their
        normalisation's unit (``per_unit``); perplexities averaged over micro-batches."""
        micro = tot["micro_batches"]
        rec = per_unit(self.cfg, tot["masked"], micro, tot["contrastive"], tot["diversity"], tot["penalty"])
        rec["accuracy"] = tot["correct"] / max(tot["masked"], 1.0)
        for g, (soft, hard) in enumerate(zip(tot["ppl_soft"], tot["ppl_hard"], strict=True)):
            rec[f"ppl_soft_g{g}"] = soft / micro
            rec[f"ppl_hard_g{g}"] = hard / micro
        return rec

    def interval_record(self, sums: dict[str, float], steps: float) -> dict[str, Any]:
        """The mean over the interval's steps of each step's per-masked-frame values, the codebook's state."""
        cfg = self.cfg
        rec = {k: sums[k] / steps for k in ("contrastive", "diversity", "penalty")}
        rec["loss"] = logged_loss(cfg, rec["contrastive"], rec["diversity"], rec["penalty"])  # of the means
        rec["accuracy"] = sums["accuracy"] / steps
        rec.update({k: v / steps for k, v in sums.items() if k.startswith("ppl_")})
        rec["temperature"] = self.model.quantizer.temperature
        groups = cfg.model.num_codevector_groups
        for g, sim in enumerate(codeword_similarity(self.model.quantizer.codevectors, groups)):
            rec.update({f"codeword_sim_g{g}_{k}": v for k, v in sim.items()})
        return rec

    def postfix(self, rec: dict[str, Any], last_valid: float) -> dict[str, str]:
        return {"h": f"{rec['hours_padded']:.3f}", "loss": f"{rec['loss']:.3f}", "acc": f"{rec['accuracy']:.3f}",
                "aps": f"{rec['audio_seconds_per_second']:.0f}"}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, Any] | None:
        if self.valid_loader is None:
            return None
        cfg, d, model, loader = self.cfg, self.d, self.model, self.valid_loader
        model.eval()
        G = cfg.model.num_codevector_groups
        stats = torch.zeros(6 + G, dtype=torch.float64, device=d.device)  # masked, terms, correct, batches, ppl
        loader.rewind()
        for batch in loader:
            if loader.is_repeat(batch):
                continue  # a batch repeated only to give every rank the same count
            # keyed by the global batch index (rank r's k-th is k·W + r), as training's draws: the same draws on any
            # number of devices (on one, what the per-rank index gave before)
            gen = torch.Generator(device=d.device).manual_seed(step_seed(cfg.seed, batch.index * d.world_size + d.rank,
                                                                         2))
            with autocast(cfg.precision, d.device):
                out = model(*batch.model_inputs(d.device), generator=gen)
            stats[:6] += torch.stack([out.num_masked.double(), out.contrastive.double(), out.diversity.double(),
                                      out.penalty.double(), out.num_correct.double(), stats.new_ones(())])
            stats[6:] += out.perplexity_hard.double()
        D.all_reduce_sum(stats, d)
        model.train()
        masked, contrastive, diversity, penalty, correct, batches = stats[:6].tolist()
        terms = per_unit(cfg, masked, batches, contrastive, diversity, penalty)
        rec = {"loss": logged_loss(cfg, **terms), "contrastive": terms["contrastive"],
               "accuracy": correct / max(masked, 1.0)}
        for g, ppl in enumerate(stats[6:].tolist()):
            rec[f"ppl_hard_g{g}"] = ppl / max(batches, 1.0)
        return rec

    def describe_validation(self, step: int, rec: dict[str, Any]) -> str:
        ppl = [round(v, 1) for k, v in rec.items() if k.startswith("ppl_hard")]
        return f"valid step {step}: loss {rec['loss']:.4f} acc {rec['accuracy']:.3f} ppl {ppl}"

    # ------------------------------------------------------------------ milestones
    def trainer_info(self) -> dict[str, Any]:
        init = {} if self.init_weights is None else {
            "init": self.cfg.init, "init_checkpoint": self.init_weights.path, "init_sha256": self.init_weights.sha256}
        return {"milestones_done": self.milestones_done, **init}

    def restore(self, info: dict[str, Any]) -> None:
        self.milestones_done = list(info["milestones_done"])

    def after_step(self, trainer: Trainer) -> None:
        """A checkpoint ``hours-H`` once ``H`` hours are seen (padded audio, or the plan's batch × steps), and
        ``steps-N`` after step N (``ckpt_steps``: the cycle minima of a cyclic schedule, say)."""
        cfg = self.cfg
        if trainer.step in cfg.ckpt_steps:
            trainer.save(f"steps-{trainer.step}", make_latest=False)
        for h in cfg.ckpt_hours:
            if cfg.ckpt_hours_basis == "nominal":
                reached = trainer.step >= nominal_steps(h, cfg.batch_seconds)
            else:
                reached = hours_reached(trainer.hours_padded, h)  # a running sum: its rounding allowed
            if h not in self.milestones_done and reached:
                self.milestones_done.append(h)
                trainer.save(f"hours-{h:g}", make_latest=False)


def forward_batch(net: nn.Module, model: Wav2Vec2ForPreTraining, batch: Batch, device: torch.device,
                  generator: torch.Generator | None, host_generator: torch.Generator) -> PretrainOutput:
    """The pre-training forward of ``batch`` as training runs it: the span mask and its indices drawn on the host
    from the batch's lengths there (``model.draw_mask``: no sync on a GPU), then ``net`` (``model``, or its DDP
    wrapper) on the device."""
    mask, masked, real = model.draw_mask(batch.lengths, batch.wave.shape[1], host_generator, device)
    return net(*batch.model_inputs(device), mask=mask, mask_indices=masked, real_indices=real, generator=generator,
               host_generator=host_generator)


def per_unit(cfg: PretrainConfig, masked: float, micro_batches: float, contrastive: float, diversity: float,
             penalty: float) -> dict[str, float]:
    """The logged loss terms from their sums over a step's (or validation's) micro-batches: the contrastive loss
    per masked frame, always; diversity and penalty per masked frame where the model sums them over masked
    frames (fairseq), per micro-batch where it gives one value a micro-batch (``nanow2v2``)."""
    frames = max(masked, 1.0)
    aux = max(loss_denominator(cfg.model.loss_normalisation, masked, micro_batches), 1.0)  # the model's unit
    return {"contrastive": contrastive / frames, "diversity": diversity / aux, "penalty": penalty / aux}


def logged_loss(cfg: PretrainConfig, contrastive: float, diversity: float, penalty: float) -> float:
    """The logged loss: the terms (``per_unit``) at their configured, full weights."""
    return contrastive + cfg.model.diversity_weight * diversity + cfg.model.feature_penalty_weight * penalty


def run_pretraining(cfg: PretrainConfig, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Pre-train as ``cfg`` says into run folder ``out_dir``; returns the summary (``trainer.json``'s fields)."""
    return Trainer(PretrainTask(cfg), out_dir, resume=resume).fit_and_leave()

