"""Sub-commands: pretrain, gradvar."""

from __future__ import annotations

import argparse
import json
import logging

from earful.atomic import atomic_write_lines
from earful.cli import device_option, out_required, resume_options, run_folder_options
from earful.config import check_options, config_and_overrides, overrides_read_as_paths

log = logging.getLogger("earful.pretrain")


def _pretrain(args: argparse.Namespace) -> int:
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import print_config, train_command

    out_required(args)
    config, overrides = config_and_overrides(args.overrides, args.config)
    with overrides_read_as_paths(overrides):  # sweep/lr=1e-3/config.yaml is an override: said so
        check_options({"init": ("--init", args.init)}, overrides)  # init=X --init Y trained from Y, silently
        cfg = load_pretrain_config(config, overrides, init=args.init,
                                   resume_from=args.out if args.resume or args.resume_or_start else None)
    if args.print_config:
        return print_config(cfg)
    return train_command(PretrainTask(cfg), args.out, resume=args.resume, allow_changes=args.allow_changes,
                         start_if_new=args.resume_or_start,
                         show=("step", "hours_padded", "hours_real", "stopped_by"))


def _gradvar(args: argparse.Namespace) -> int:
    from earful.pretrain.gradvar import UNRECORDED, gradient_noise, recorded_batches
    from earful.train.state import require_checkpoint

    args.ckpt = require_checkpoint(args.ckpt)  # first: a path that is no checkpoint says so (a run folder: its latest)
    given = {k: getattr(args, k) for k in UNRECORDED if hasattr(args, k)}  # the options given (not defaulted)
    budget, padding = recorded_batches(args.ckpt, **given)
    result = gradient_noise(args.ckpt, args.manifest, budget, num_batches=args.batches, seed=args.seed,
                            device=args.device, padding=padding, skip_bad=args.skip_bad)
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write_lines(args.out, [text])
    log.info("gradient noise:\n%s", text)
    return 0


def seconds_or_none(text: str) -> float | None:
    """A number of seconds, or ``none``: no limit."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or none, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pre-training (also under torchrun)")
    p.add_argument("overrides", nargs="*", metavar="[CONFIG] KEY=VALUE",
                   help="a YAML config or preset name (earful/configs/pretrain-*.yaml; or --config), then key=value "
                   "overrides, e.g. pretrain-demo batch_seconds=600 optim.lr=1e-4")
    p.add_argument("--config", default=None, help="YAML config or preset name (e.g. pretrain-paper)")
    run_folder_options(p)
    p.add_argument("--init", default=None,
                   help="continue pre-training from these weights: an earful pre-training checkpoint or run "
                   "folder, or a transformers Wav2Vec2ForPreTraining folder or Hub model id, ORG/NAME[@REVISION] "
                   "(the model's settings are its; the optimizer and schedule start anew); default scratch")
    resume_options(p)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("gradvar", help="gradient spread over independent batches and the gradient noise scale")
    p.add_argument("ckpt", help="pre-training checkpoint folder, or a run folder (its latest checkpoint)")
    p.add_argument("--manifest", required=True, help="audio to draw batches from")
    # the batches default to the checkpoint's own (its trainer.json); an option given replaces that setting
    recorded = argparse.SUPPRESS
    p.add_argument("--batch-seconds", type=float, default=recorded,
                   help="padded audio per batch, one gradient each (default: the checkpoint's batch_seconds; 60 "
                        "for a checkpoint without a record)")
    p.add_argument("--device-seconds", type=float, default=recorded,
                   help="padded audio per micro-batch; smaller accumulates (default: the checkpoint's "
                        "device_seconds; the whole batch at once for a checkpoint without a record)")
    p.add_argument("--batches", type=int, default=10, help="independent batches (default 10, the paper's)")
    for name, what, none in (("crop", "crop longer utterances to this many seconds", "no crop"),
                             ("min", "leave out (counted) utterances shorter than this", "no limit"),
                             ("max", "leave out (counted) utterances longer than this after cropping", "no limit"),
                             ("shape", "pad each batch to a multiple of this (a grid of batch shapes)", "no grid")):
        p.add_argument(f"--{name}-seconds", type=seconds_or_none, default=recorded,
                       help=f"{what}; none: {none} (default: the checkpoint's data.{name}_seconds; none for a "
                            "checkpoint without a record)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out (counted) utterances that cannot be batched or read, as data.skip_bad in training")
    p.add_argument("--padding", action=argparse.BooleanOptionalAction, default=recorded,
                   help="zero-pad each batch to its longest utterance (data.padding=true), or crop it to its "
                        "shortest (--no-padding, data.padding=false); default: the checkpoint's data.padding "
                        "(zero-padded for a checkpoint without a record)")
    p.add_argument("--seed", type=int, default=0, help="the draw of the batches and of their masks (default 0)")
    device_option(p, "where the gradients are taken")
    p.add_argument("--out", default=None, help="write the result JSON here too")
    p.set_defaults(func=_gradvar)
