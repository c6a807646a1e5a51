"""Sub-commands: export-hf, import-hf, features."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger("earful.interop")


def _export(args: argparse.Namespace) -> int:
    from earful.checkpoint import load_model
    from earful.interop.hf import export_hf

    model, info = load_model(args.ckpt)
    vocab = info.get("vocab", {}).get("symbols") if info.get("vocab") else None
    export_hf(model, args.out, vocab_symbols=vocab)
    log.info("wrote a transformers %s folder to %s", info["kind"], args.out)
    _card_and_push(args, model)
    return 0


def _card_and_push(args: argparse.Namespace, model: torch.nn.Module) -> None:
    from earful.interop.card import push_to_hub, write_model_card
    from earful.model import count_parameters

    log.info("model card: %s", write_model_card(args.ckpt, args.out, count_parameters(model)))
    if args.push:
        log.info("pushed to %s", push_to_hub(args.out, args.push, private=args.private))


def _import(args: argparse.Namespace) -> int:
    from earful.checkpoint import save_model
    from earful.interop.hf import import_hf

    model, vocab = import_hf(args.hf_dir, trust_pickle=args.trust_pickle, need_vocab=True)
    save_model(args.ckpt, model, vocab={"symbols": vocab} if vocab is not None else None)
    log.info("wrote an earful checkpoint to %s", args.ckpt)
    return 0


def _features(args: argparse.Namespace) -> int:
    from earful.checkpoint import load_model
    from earful.interop.features import write_features

    model, _ = load_model(args.ckpt)
    write_features(model, args.audio, args.out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-hf", help="write a transformers Wav2Vec2 folder from an earful checkpoint")
    p.add_argument("ckpt", help="earful checkpoint directory")
    p.add_argument("out", help="output folder (config.json, model.safetensors, README.md: the model card)")
    p.add_argument("--push", metavar="REPO", default=None, help="then upload the folder to this Hugging Face Hub "
                   "model repository (user/name; created if need be; huggingface_hub's credentials)")
    p.add_argument("--private", action="store_true", help="with --push: create the repository private")
    p.set_defaults(func=_export)

    p = sub.add_parser("import-hf", help="read a transformers Wav2Vec2 folder into an earful checkpoint")
    p.add_argument("hf_dir", help="folder with config.json and model.safetensors or pytorch_model.bin")
    p.add_argument("ckpt", help="earful checkpoint directory to write")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let pytorch_model.bin unpickle arbitrary objects (as fairseq-made files need); this "
                   "runs any code the file holds: only for files whose origin you trust")
    p.set_defaults(func=_import)

    p = sub.add_parser("features", help="per-layer representations: STEM.npy of (layers+1, frames, dim)")
    p.add_argument("ckpt", help="earful checkpoint directory")
    p.add_argument("audio", nargs="+", help="audio files")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_features)
