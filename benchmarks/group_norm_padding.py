"""What batch-invariant GroupNorm statistics cost and change: ``group_norm_padding`` "excluded" against "included".

    python benchmarks/group_norm_padding.py cost --preset small --preset base     # step time, padded batches
    python benchmarks/group_norm_padding.py shift CKPT MANIFEST --device-seconds 8   # what "included" does

``cost``: a pre-training step (forward + backward) on a padded batch, the CNN alone (forward + backward) and
the backbone's forward without autograd (evaluation, transcription), with each setting;
the same weights, batch and masks; median CPU seconds over ``--reps`` runs in turns after a warm-up, and their
ratio.

``shift``: a checkpoint on a manifest's batches as ``earful evaluate`` builds them (or, ``--shuffle``, as
training draws them; ``--device-seconds`` of padded audio, crops as ``--crop-seconds``): the padding's share
of the audio, and how far "included" moves each padded utterance's CNN features (LayerNormed, as the
transformer and the quantizer get them) from its own, "excluded", ones: relative RMS difference over its real
frames, median and 90th percentile over the padded utterances.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from earful.model import Wav2Vec2ForPreTraining, load_model_config

NORMS = ("included", "excluded")


def padded_batch(seconds: float, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` utterances of 40-100 % of ``seconds``, zero-padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    longest = int(seconds * 16000)
    lengths = (longest * (0.4 + 0.6 * torch.rand(count, generator=g))).long()
    lengths[0] = longest
    wave = 0.1 * torch.randn(count, longest, generator=g) * (torch.arange(longest)[None] < lengths[:, None])
    return wave, lengths


def interleaved(fns: dict[str, object], reps: int) -> dict[str, float]:
    """Median CPU seconds of each function (this process's, all threads: what a machine shared with other work
    disturbs least), run in turns (AB BA AB ..., after a warm-up) so that a drifting load weighs on all alike."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for k in names:
        fns[k]()  # type: ignore[operator]
    for r in range(reps):
        for k in names if r % 2 == 0 else names[::-1]:
            t0 = time.process_time()
            fns[k]()  # type: ignore[operator]
            times[k].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def pretraining_step(model: Wav2Vec2ForPreTraining, norm: str, wave: torch.Tensor, lengths: torch.Tensor) -> None:
    model.cfg.group_norm_padding = norm
    out = model(wave, lengths, generator=torch.Generator().manual_seed(1))
    out.objective(out.num_masked).backward()


@torch.no_grad()
def inference(model: Wav2Vec2ForPreTraining, norm: str, wave: torch.Tensor, lengths: torch.Tensor) -> None:
    model.cfg.group_norm_padding = norm
    model.wav2vec2(wave, lengths)


def cnn_step(model: Wav2Vec2ForPreTraining, norm: str, wave: torch.Tensor, lengths: torch.Tensor) -> None:
    model.wav2vec2.feature_encoder(wave, lengths if norm == "excluded" else None).sum().backward()


def cost(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    for preset in args.preset:
        torch.manual_seed(0)
        model = Wav2Vec2ForPreTraining(load_model_config(preset)).train()
        wave, lengths = padded_batch(args.seconds, args.count)
        step = interleaved({n: partial(pretraining_step, model, n, wave, lengths) for n in NORMS}, args.reps)
        cnn = interleaved({n: partial(cnn_step, model, n, wave, lengths) for n in NORMS}, args.reps)
        model.eval()
        infer = interleaved({n: partial(inference, model, n, wave, lengths) for n in NORMS}, args.reps)
        print(f"{preset}: {args.count} x up to {args.seconds} s, {args.threads} threads (median CPU s, included / "
              f"excluded, ratio) | pre-training step {step['included']:.3f} / {step['excluded']:.3f}, "
              f"{step['excluded'] / step['included']:.3f} | CNN fwd+bwd {cnn['included']:.3f} / "
              f"{cnn['excluded']:.3f}, {cnn['excluded'] / cnn['included']:.3f} | backbone inference "
              f"{infer['included']:.3f} / {infer['excluded']:.3f}, {infer['excluded'] / infer['included']:.3f}",
              flush=True)  # fmt: skip


@torch.no_grad()
def shift(args: argparse.Namespace) -> None:
    from earful.checkpoint import load_model
    from earful.data.budget import BatchBudget
    from earful.data.dataset import make_loader
    from earful.data.manifest import read_manifest

    torch.set_num_threads(args.threads)
    model, _ = load_model(args.ckpt)
    backbone = model.wav2vec2.eval()
    budget = BatchBudget.per_device(args.device_seconds, crop_seconds=args.crop_seconds)
    loader = make_loader(read_manifest(args.manifest), budget, shuffle=args.shuffle, seed=0, endless=False)
    real = padded = 0
    moves: list[float] = []
    for batch in loader:
        real, padded = real + int(batch.lengths.sum()), padded + batch.wave.numel()
        feats = {}
        for norm in NORMS:
            backbone.cfg.group_norm_padding = norm
            feats[norm] = backbone.feature_projection(backbone.extract_features(batch.wave, batch.lengths)[0])[1]
        frames = backbone.frame_lengths(batch.lengths)
        for i, n in enumerate(frames.tolist()):
            if batch.lengths[i] < batch.wave.shape[1]:
                a, b = feats["included"][i, :n], feats["excluded"][i, :n]
                moves.append(float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()))
    moves.sort()
    print(f"{args.manifest}: padding {100 * (padded - real) / padded:.1f} % of {padded / 16000 / 3600:.2f} h in "
          f"batches of {args.device_seconds} s; {len(moves)} padded utterances: 'included' moves their LayerNormed "
          f"CNN features by {100 * statistics.median(moves):.1f} % RMS (median), "
          f"{100 * moves[int(0.9 * (len(moves) - 1))]:.1f} % (90th percentile)" if moves else "no padded utterance")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cost", help="step time of each setting")
    c.add_argument("--preset", action="append", help="model preset (repeatable; default small and base)")
    c.add_argument("--seconds", type=float, default=15.0, help="the longest utterance of the batch")
    c.add_argument("--count", type=int, default=4, help="utterances in the batch")
    c.add_argument("--reps", type=int, default=5)
    c.add_argument("--threads", type=int, default=1)
    c.set_defaults(func=cost)
    s = sub.add_parser("shift", help="what 'included' does to a checkpoint's features on real batches")
    s.add_argument("ckpt")
    s.add_argument("manifest")
    s.add_argument("--device-seconds", type=float, default=16.0)
    s.add_argument("--crop-seconds", type=float, default=None)
    s.add_argument("--shuffle", action="store_true", help="batches as training draws them (else as evaluate)")
    s.add_argument("--threads", type=int, default=2)
    s.set_defaults(func=shift)
    args = p.parse_args()
    if args.what == "cost" and args.reps < 1:
        p.error(f"--reps {args.reps}: expected at least 1")
    if args.what == "cost" and not args.preset:
        args.preset = ["small", "base"]
    args.func(args)


if __name__ == "__main__":
    main()
