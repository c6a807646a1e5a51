"""Sub-command ``finetune``."""

from __future__ import annotations

import argparse

from earful.cli import out_required, renamed_option, resume_options, run_folder_options


def _finetune(args: argparse.Namespace) -> int:
    from earful.config import check_options, config_and_overrides, overrides_read_as_paths
    from earful.finetune.config import load_finetune_config
    from earful.finetune.init import check_init_source
    from earful.finetune.task import FinetuneTask
    from earful.train.engine import print_config, train_command

    out_required(args)
    args.config, args.overrides = config_and_overrides(args.overrides, args.config)
    with overrides_read_as_paths(args.overrides):  # sweep/lr=1e-3/config.yaml is an override: said so
        cfg = load_finetune_config(args.config, args.overrides)
    options = {"init": ("--init", args.init), "data.train": ("--train", args.train),
               "data.valid": ("--valid", args.valid)}
    check_options(options, args.overrides)
    if args.init is not None:  # set directly: a path is not parsed as YAML
        cfg.init = args.init
    if args.train is not None:
        cfg.data.train = args.train
    if args.valid is not None:
        cfg.data.valid = args.valid
    if args.print_config:  # what the run refuses of its init at once, refused here too
        check_init_source(cfg, "--init" if args.init is not None else "init")
        return print_config(cfg)
    return train_command(FinetuneTask(cfg), args.out, resume=args.resume, allow_changes=args.allow_changes,
                         start_if_new=args.resume_or_start, show=("step", "last_valid", "best", "stopped_by"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="CTC fine-tuning on labelled audio (also under torchrun)",
        description="Fine-tune a pre-trained (or random) wav2vec 2.0 model with CTC on characters. Defaults: "
        "the paper's recipe; fairseq's with --config finetune-fairseq-10m (or -100h).",
    )  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="[CONFIG] KEY=VALUE",
                   help="a YAML config or preset name (or --config), then key=value overrides, e.g. "
                   "finetune-fairseq-10m max_steps=13000 model.mask_prob=0.65")
    p.add_argument("--init", default=None,
                   help="the initial model (required): pre-training or CTC checkpoint, run folder, transformers "
                   "folder or Hugging Face Hub model id (ORG/NAME[@REVISION]), or 'scratch' for a random one")
    p.add_argument("--train", default=None, help="labelled training manifest (data.train)")
    p.add_argument("--valid", default=None,
                   help="labelled validation manifest: CTC loss, WER and CER every valid_every steps (data.valid)")
    renamed_option(p, "--dev", "--valid")
    p.add_argument("--config", default=None, help="YAML config or preset name (e.g. finetune-fairseq-10m)")
    run_folder_options(p)
    resume_options(p)
    p.set_defaults(func=_finetune)
