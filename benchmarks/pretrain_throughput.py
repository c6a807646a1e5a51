"""Pre-training throughput (CPU fp32 by default; `--device cuda --precision bf16` on a GPU): earful vs
`transformers`' Wav2Vec2ForPreTraining, measured side by side.

    python benchmarks/pretrain_throughput.py --preset tiny
    python benchmarks/pretrain_throughput.py --preset base --override num_layers=2 --seconds 4 4 3 3
    python benchmarks/pretrain_throughput.py --preset base --device cuda --precision bf16 --seconds 15.6 ...  # GPU

Both models hold the same weights (earful's are exported with ``earful.interop.hf.export_hf`` and loaded by
``transformers``), see the same padded batch of speech-like audio (or the first utterances of ``--manifest``),
and do one full training step each: forward, backward, AdamW step, ``zero_grad`` (earful's AdamW is fused, as its
trainer builds it; ``--plain-adamw`` for torch's default, which the peer's example uses). The peer is the
`transformers` model driven as its pre-training example drives it: masks from ``_compute_mask_indices`` and
distractors from ``_sample_negative_indices``, drawn outside the timed step as its data collator does (their
cost is printed apart), loss divided by the number of masked frames. earful draws its span masks on the host
(as its trainer does) and its distractors inside its forward pass, both within the timed step. The mask
fraction of each is printed so the work is comparable; the two recipes overlap spans a little differently.

LayerDrop is set to 0 for both (the two draw different layers, so their work would differ step by step), and
so is fairseq's ``require_same_masks`` (transformers has none; it thins every row to the smallest masked count
of the batch, ~25 % fewer masked frames on the default batch: ``--same-masks`` keeps it). earful's CNN takes
the padding into its GroupNorm statistics as transformers' does (``group_norm_padding=included``).

Steps alternate A/B, B/A, ... after warm-up; medians over ``--reps`` are reported with their ratio.
Peak memory is the RSS high-water mark (``VmHWM``, reset just before the first step) of a fresh child
process per implementation running ``--mem-steps`` steps (not ``ru_maxrss``, which a child inherits from the
process that starts it); "step" is that peak minus the RSS just before the
first step (weights, optimizer state after the first step, activations and allocator caches).

The roofline line puts both in proportion to the hardware: the step's analytic FLOPs (``earful/model/flops.py``,
the arithmetic both must do on this padded batch; transformers does more, its head scores every frame) over the
fastest matrix product measured in the same run (the best of a few large products at this precision and thread
count). A step cannot run faster than FLOPs / that rate, so transformers' time over it bounds the speed-up any
implementation of the same arithmetic can reach on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speechlike import speech_batch  # noqa: E402

from earful.interop.hf import export_hf  # noqa: E402
from earful.model import ModelConfig, Wav2Vec2ForPreTraining, load_model_config  # noqa: E402
from earful.model.flops import train_flops_per_second  # noqa: E402
from earful.train.step import autocast  # noqa: E402

LR, BETAS, EPS, WD = 1e-5, (0.9, 0.98), 1e-6, 0.01  # tiny lr: weights barely move across repetitions


@dataclass
class Setup:
    cfg: ModelConfig
    wave: torch.Tensor  # (batch, samples) on the device
    lengths: torch.Tensor  # (batch,) on the device
    device: torch.device
    precision: str  # "fp32" or "bf16" (autocast, as earful's trainer runs it)
    unpadded: bool = False  # every utterance fills the batch: earful gets lengths=None, as its trainers pass it

    def autocast(self):
        return autocast(self.precision, self.device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def build_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    if args.manifest is None:
        return speech_batch(args.seconds, seed=args.seed)
    from earful.data.audio import load_audio
    from earful.data.manifest import read_manifest

    utts = read_manifest(args.manifest)[: len(args.seconds)]
    waves = [torch.from_numpy(load_audio(u.path)[: int(s * 16000)]) for u, s in zip(utts, args.seconds, strict=False)]
    lengths = torch.tensor([len(w) for w in waves])
    wave = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        wave[i, : len(w)] = w
    return wave, lengths


def load_setup(args: argparse.Namespace) -> Setup:
    fixed = ["layerdrop=0.0"] if args.same_masks else ["layerdrop=0.0", "require_same_masks=false"]
    # transformers' GroupNorm counts the padding: earful's "included" does the same arithmetic (what "excluded",
    # earful's default, costs: benchmarks/group_norm_padding.py)
    cfg = load_model_config(args.preset, ["group_norm_padding=included", *args.override, *fixed])
    wave, lengths = build_batch(args)
    device = torch.device(args.device)
    unpadded = bool((lengths == wave.shape[1]).all())
    return Setup(cfg, wave.to(device), lengths.to(device), device, args.precision, unpadded)


def adamw(model: torch.nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, fused=fused)


class Ours:
    name = "earful"

    def __init__(self, model: Wav2Vec2ForPreTraining, s: Setup, fused: bool = True) -> None:
        self.model, self.s = model.to(s.device).train(), s
        self.opt = adamw(model, fused)  # fused, as earful's Trainer builds it (earful/train/engine.py)
        self.gen = torch.Generator(device=s.device).manual_seed(1)
        self.host = torch.Generator().manual_seed(1)  # the span mask on the host, as the trainer draws it
        self.host_lengths = s.lengths.cpu()
        self.frames = float(model.frame_lengths(self.host_lengths).sum())
        self.mask_fractions: list[float] = []

    def step(self) -> None:
        mask, idx, real = self.model.draw_mask(self.host_lengths, self.s.wave.shape[1], self.host, self.s.device)
        with self.s.autocast():
            out = self.model(self.s.wave, None if self.s.unpadded else self.s.lengths, mask=mask, mask_indices=idx,
                             real_indices=real, generator=self.gen, host_generator=self.host)
        loss = out.objective(idx.numel())  # the masked count, known on the host: no sync
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.mask_fractions.append(idx.numel() / self.frames)


class Theirs:
    name = "transformers"

    def __init__(self, model: torch.nn.Module, s: Setup) -> None:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        self.model, self.s = model.to(s.device).train(), s
        self.opt = adamw(model)
        self._mask, self._neg = _compute_mask_indices, _sample_negative_indices
        cfg = model.config
        self.att = (torch.arange(s.wave.shape[1], device=s.device)[None] < s.lengths[:, None]).long()
        frames = int(model._get_feat_extract_output_lengths(s.wave.shape[1]))
        self.sub_att = model._get_feature_vector_attention_mask(frames, self.att)
        self.shape = (s.wave.shape[0], frames)
        self.mask_prob, self.mask_length = cfg.mask_time_prob, cfg.mask_time_length
        self.min_masks = cfg.mask_time_min_masks
        self.num_negatives = cfg.num_negatives
        self.mask_fractions: list[float] = []
        self.collate_seconds: list[float] = []
        np.random.seed(1)

    def collate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the example's DataCollatorForWav2Vec2Pretraining adds to a batch (not timed in the step)."""
        t0 = time.perf_counter()
        mask = self._mask(self.shape, self.mask_prob, self.mask_length, attention_mask=self.sub_att,
                          min_masks=self.min_masks)  # fmt: skip
        neg = self._neg(self.shape, self.num_negatives, mask_time_indices=mask)
        self.collate_seconds.append(time.perf_counter() - t0)
        dev = self.s.device
        return torch.tensor(mask, dtype=torch.bool, device=dev), torch.tensor(neg, dtype=torch.long, device=dev)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        mask, neg = batch if batch is not None else self.collate()
        with self.s.autocast():
            out = self.model(self.s.wave, attention_mask=self.att, mask_time_indices=mask,
                             sampled_negative_indices=neg)
        num_losses = mask.sum()
        (out.loss / num_losses).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.mask_fractions.append(float(num_losses) / float(self.sub_att.sum()))


def build(
    s: Setup, tmp: str, seed: int, which: tuple[str, ...] = ("earful", "transformers"), fused: bool = True
) -> dict[str, Any]:
    """Runners for ``which`` with identical weights (and the peer's attention implementation)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = Wav2Vec2ForPreTraining(s.cfg)
    export_hf(model, tmp)
    runners: dict[str, Any] = {}
    if "earful" in which:
        runners["earful"] = Ours(model, s, fused)
    del model
    if "transformers" in which:
        hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp)
        hf.set_gumbel_temperature(s.cfg.temperature_start)
        runners["transformers"] = Theirs(hf, s)
        runners["attention"] = getattr(hf.config, "_attn_implementation", "?")
    return runners


def matmul_peak(device: torch.device, precision: str, reps: int = 5) -> float:
    """FLOP/s of the fastest of a few large matrix products (square, and the transformer's FFN shapes) on
    ``device`` at ``precision``: the roof a step's matrix products can reach here."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n, m = (2048, 4096) if device.type == "cpu" else (8192, 32768)
    shapes = [(n, n, n), (m, 768, 3072), (m, 3072, 768)]
    if device.type == "cpu" and precision == "bf16":  # ~1 GFLOP/s without bf16 hardware: a check of the path
        shapes = [(256, 256, 256)]
    best = 0.0
    for rows, inner, cols in shapes:
        a = torch.randn(rows, inner, device=device, dtype=dtype)
        b = torch.randn(inner, cols, device=device, dtype=dtype)
        for i in range(reps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first is a warm-up
                best = max(best, 2.0 * rows * inner * cols / (time.perf_counter() - t0))
    return best


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def status_kib(field: str) -> int:
    """A figure of this process's ``/proc/self/status`` (``VmHWM``: its peak RSS since the last reset), KiB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: build, step ``--mem-steps`` times with one implementation, print JSON."""
    s = load_setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        runner = build(s, tmp, args.seed, (args.memory_probe,), not args.plain_adamw)[args.memory_probe]
    if args.compile and isinstance(runner, Ours):  # the memory of what is timed: compiled, as in the parent
        from earful.model import compile_blocks

        compile_blocks(runner.model, args.compile_backend)
    batch = runner.collate() if isinstance(runner, Theirs) else None
    before = rss_kib()
    # The peak from here on: VmHWM, reset to what is resident now. Not ``ru_maxrss``: Linux carries the RSS
    # high-water mark of the process that starts a child into the child (fork, then execve), so this child's
    # ru_maxrss starts at the parent's RSS (both models, their optimizer states and caches) and hides its own.
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(args.mem_steps):
        runner.step(batch) if batch is not None else runner.step()
    peak = status_kib("VmHWM")
    print(json.dumps({"peak_mib": peak / 1024, "step_mib": (peak - before) / 1024}))


def probe(args: argparse.Namespace, which: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-probe", which, "--preset", args.preset, "--seed", str(args.seed),
           "--threads", str(args.threads), "--mem-steps", str(args.mem_steps), "--precision", args.precision,
           "--seconds", *map(str, args.seconds)]
    cmd += ["--same-masks"] if args.same_masks else []
    cmd += ["--plain-adamw"] if args.plain_adamw else []
    cmd += ["--compile", "--compile-backend", args.compile_backend] if args.compile else []
    if args.override:
        cmd += ["--override", *args.override]
    if args.manifest:
        cmd += ["--manifest", str(args.manifest)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="model preset (tiny, small, base, ...) or YAML path")
    p.add_argument("--override", nargs="*", default=[], help="key=value model overrides, e.g. num_layers=2")
    p.add_argument("--seconds", type=float, nargs="+", default=[4.0, 3.5, 3.0, 2.5],
                   help="utterance durations of the batch (zero-padded to the longest)")
    p.add_argument("--manifest", type=Path, help="take the batch's audio from this manifest instead")
    p.add_argument("--same-masks", action="store_true",
                   help="keep fairseq's require_same_masks (transformers has none; off by default)")
    p.add_argument("--plain-adamw", action="store_true",
                   help="earful with torch's default AdamW (as transformers' example), not the trainer's fused one")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: autocast around both forwards, as earful's trainer runs it on a GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mem-steps", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile earful's CNN and transformer layers (compile=true; the peer stays eager)")
    p.add_argument("--compile-backend", default="inductor", help="with --compile (aot_eager: a quick CPU check)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark on, for both (the batch's one shape is searched once)")
    p.add_argument("--memory-probe", choices=["earful", "transformers"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reps < 1:
        p.error(f"--reps {args.reps}: expected at least 1")
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(args)
        return

    s = load_setup(args)
    audio = float(s.lengths.sum()) / 16000
    with tempfile.TemporaryDirectory() as tmp:
        runners = build(s, tmp, args.seed, fused=not args.plain_adamw)
    ours, theirs, impl = runners["earful"], runners["transformers"], runners["attention"]
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.compile:  # the warm-up steps pay the compilation
        from earful.model import compile_blocks

        compile_blocks(ours.model, args.compile_backend)
    n_params = sum(p.numel() for p in ours.model.parameters())
    print(f"preset {args.preset} {' '.join(args.override)} ({n_params / 1e6:.2f} M params), batch "
          f"{len(args.seconds)} utts = {audio:.1f} s audio (padded {s.wave.numel() / 16000:.1f} s), "
          f"{s.device} {s.precision}, threads {torch.get_num_threads()}, torch {torch.__version__}, transformers "
          f"attention '{impl}', earful AdamW {'plain' if args.plain_adamw else 'fused'} (transformers: plain)"
          f"{', earful compiled' if args.compile else ''}{', cudnn.benchmark' if args.cudnn_benchmark else ''}")
    cuda = s.device.type == "cuda"
    times: dict[str, list[float]] = {"earful": [], "transformers": []}
    cuda_peak: dict[str, float] = {"earful": 0.0, "transformers": 0.0}  # MiB above what was allocated before
    for i in range(args.warmup + args.reps):
        order = (ours, theirs) if i % 2 == 0 else (theirs, ours)
        for r in order:
            batch = r.collate() if isinstance(r, Theirs) else None
            s.sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(s.device)
                before = torch.cuda.memory_allocated(s.device)
            t0 = time.perf_counter()
            r.step(batch) if batch is not None else r.step()
            s.sync()
            dt = time.perf_counter() - t0
            if cuda:
                step_mib = (torch.cuda.max_memory_allocated(s.device) - before) / 2**20
                cuda_peak[r.name] = max(cuda_peak[r.name], step_mib)
            if i >= args.warmup:
                times[r.name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    pair_ratio = statistics.median(t / o for o, t in zip(times["earful"], times["transformers"], strict=True))
    mem: dict[str, dict[str, float]] = {}
    if cuda:  # both models share the GPU: the step's peak above its starting allocation
        mem = {k: {"peak_mib": float("nan"), "step_mib": v} for k, v in cuda_peak.items()}
    elif not args.no_memory:
        mem = {k: probe(args, k) for k in ("earful", "transformers")}
    frac = {"earful": statistics.mean(ours.mask_fractions), "transformers": statistics.mean(theirs.mask_fractions)}
    print(f"{'':13} {'median s/step':>13} {'min':>7} {'max':>7} {'audio-s/s':>9} {'mask frac':>9} "
          f"{'peak RSS MiB':>12} {'step MiB':>8}{' (CUDA allocated)' if cuda else ''}")
    for k in ("earful", "transformers"):
        m = mem.get(k, {})
        print(f"{k:13} {med[k]:13.3f} {min(times[k]):7.3f} {max(times[k]):7.3f} {audio / med[k]:9.1f} "
              f"{frac[k]:9.3f} {m.get('peak_mib', float('nan')):12.0f} {m.get('step_mib', float('nan')):8.0f}")
    ratio = med["transformers"] / med["earful"]
    print(f"speed-up earful / transformers: {ratio:.2f}x (ratio of medians), {pair_ratio:.2f}x (median of "
          f"paired ratios); transformers' collator masks+negatives "
          f"{1000 * statistics.median(theirs.collate_seconds):.1f} ms/batch, not timed in its step")
    padded_seconds = s.wave.numel() / 16000
    step_flops = padded_seconds * train_flops_per_second(s.cfg, s.wave.shape[1] / 16000, frac["earful"])
    roof = matmul_peak(s.device, s.precision)
    floor_s = step_flops / roof
    print(f"roofline: {step_flops / 1e9:.1f} GFLOP a step (analytic, the padded batch); fastest matrix product here "
          f"{roof / 1e9:.1f} GFLOP/s; earful {step_flops / med['earful'] / 1e9:.1f} GFLOP/s "
          f"({100 * floor_s / med['earful']:.0f} % of it), transformers {step_flops / med['transformers'] / 1e9:.1f} "
          f"({100 * floor_s / med['transformers']:.0f} %); a step at that rate takes {floor_s:.3f} s, so no "
          f"implementation of this arithmetic can beat transformers here by more than "
          f"{med['transformers'] / floor_s:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({
            "step_gflop": step_flops / 1e9, "matmul_peak_gflops": roof / 1e9,
            "ceiling": med["transformers"] / floor_s,
            "preset": args.preset, "override": args.override, "device": str(s.device), "precision": s.precision,
            "audio_seconds": audio, "times": times,
            "median": med, "ratio": ratio, "pair_ratio": pair_ratio, "memory": mem, "mask_fraction": frac,
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
