"""Sub-commands: pretrain, gradvar."""

from __future__ import annotations

import argparse
import json
import logging

from earful.atomic import atomic_write_lines

log = logging.getLogger("earful.train")


def _pretrain(args: argparse.Namespace) -> int:
    from earful.train.config import load_pretrain_config
    from earful.train.pretrain import TrainingStopped, run_pretraining

    config, overrides = args.config, list(args.overrides)
    if "=" in config:  # no YAML, only overrides
        config, overrides = None, [config, *overrides]
    cfg = load_pretrain_config(config, overrides)
    try:
        summary = run_pretraining(cfg, args.out, resume=args.resume)
    except TrainingStopped as e:
        log.error("%s", e)
        return 3
    log.info("done: %s", json.dumps({k: summary[k] for k in ("step", "hours_padded", "hours_real", "stopped_by")}))
    return 0


def _gradvar(args: argparse.Namespace) -> int:
    from earful.train.gradvar import gradient_noise

    result = gradient_noise(
        args.ckpt, args.manifest, batch_seconds=args.batch_seconds, num_batches=args.batches, seed=args.seed,
        crop_seconds=args.crop_seconds, device=args.device,
    )  # fmt: skip
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
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("gradvar", help="gradient spread over independent batches and the gradient noise scale")
    p.add_argument("ckpt", help="pre-training checkpoint directory")
    p.add_argument("--manifest", required=True, help="audio to draw batches from")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio per batch")
    p.add_argument("--batches", type=int, default=10, help="independent batches (the paper: 10)")
    p.add_argument("--crop-seconds", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the result JSON here too")
    p.set_defaults(func=_gradvar)
