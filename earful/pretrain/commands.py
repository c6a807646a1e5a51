"""Sub-commands: pretrain, gradvar."""

from __future__ import annotations

import argparse
import json
import logging

from earful.atomic import atomic_write_lines

log = logging.getLogger("earful.pretrain")


def _pretrain(args: argparse.Namespace) -> int:
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import train_command

    config, overrides = args.config, list(args.overrides)
    if "=" in config:  # no YAML, only overrides
        config, overrides = None, [config, *overrides]
    cfg = load_pretrain_config(config, overrides)
    return train_command(PretrainTask(cfg), args.out, resume=args.resume, allow_changes=args.allow_changes,
                         show=("step", "hours_padded", "hours_real", "stopped_by"))


def _gradvar(args: argparse.Namespace) -> int:
    from earful.data.budget import BatchBudget
    from earful.pretrain.gradvar import gradient_noise

    device_seconds = args.batch_seconds if args.device_seconds is None else args.device_seconds
    budget = BatchBudget(args.batch_seconds, device_seconds, crop_seconds=args.crop_seconds)
    result = gradient_noise(args.ckpt, args.manifest, budget, num_batches=args.batches, seed=args.seed,
                            device=args.device, crop_to_shortest=args.crop_to_shortest, skip_bad=args.skip_bad)
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write_lines(args.out, [text])
    log.info("gradient noise:\n%s", text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pre-training (also under torchrun)")
    p.add_argument("config", help="YAML config (see earful/configs/pretrain-*.yaml), or a first key=value")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. batch_seconds=600 optim.lr=1e-4")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue even with another recipe than the run's (recorded in history.jsonl); "
                   "not with another seed, a max_steps behind the checkpoint, or another architecture")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("gradvar", help="gradient spread over independent batches and the gradient noise scale")
    p.add_argument("ckpt", help="pre-training checkpoint directory")
    p.add_argument("--manifest", required=True, help="audio to draw batches from")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio per batch (one gradient each)")
    p.add_argument("--device-seconds", type=float, default=None,
                   help="padded audio per micro-batch (default: the whole batch at once); smaller accumulates")
    p.add_argument("--batches", type=int, default=10, help="independent batches (the paper: 10)")
    p.add_argument("--crop-seconds", type=float, default=None)
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out (counted) utterances that cannot be batched or read, as data.skip_bad in training")
    p.add_argument("--crop-to-shortest", action="store_true",
                   help="crop each batch to its shortest utterance, as training with data.padding=false does "
                        "(default: zero-padded, data.padding=true)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the result JSON here too")
    p.set_defaults(func=_gradvar)
