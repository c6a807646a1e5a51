"""Sub-commands: export-hf, import-hf, import-fairseq, features."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("earful.interop")


def _export(args: argparse.Namespace) -> int:
    from earful.checkpoint import CheckpointError, load_model
    from earful.interop.card import model_card, push_to_hub
    from earful.interop.hf import export_hf
    from earful.model import count_parameters
    from earful.train.state import read_trainer_info, require_checkpoint

    if args.private and not args.push:
        raise ValueError("--private needs --push")
    if args.replace_repo and not args.push:
        raise ValueError("--replace-repo needs --push")
    ckpt = require_checkpoint(args.ckpt)
    model, info = load_model(ckpt)
    vocab = info.get("vocab") or {}
    spelled = vocab.get("spelling") or vocab  # fine-tuned with vocab=init: the initial model's tokenizer
    card = model_card(ckpt, count_parameters(model))
    trainer = read_trainer_info(ckpt) if (ckpt / "trainer.json").exists() else {}
    init = tuple(str(trainer[k]) for k in ("init", "init_checkpoint") if trainer.get(k) not in (None, "scratch"))
    if trainer.get("init_sha256") and (Path(args.out) / "config.json").is_file():  # init as given may be relative
        from earful.train.init import resolve_init  # to where the training ran: the weights say it

        try:
            if resolve_init(str(args.out)).sha256 == trainer["init_sha256"]:
                init += (str(args.out),)
        except (OSError, CheckpointError):
            pass
    export_hf(model, args.out, vocab_symbols=spelled.get("symbols"), special=spelled.get("tokens"), card=card,
              source=ckpt, text_mapping=vocab.get("mapping"), keep=init)
    log.info("wrote a transformers %s folder to %s, its model card in README.md", info["kind"], args.out)
    if args.push:
        log.info("pushed to %s", push_to_hub(args.out, args.push, private=args.private, replace=args.replace_repo))
    return 0


def _import(args: argparse.Namespace) -> int:
    from earful.interop import hf
    from earful.interop.hub import hub_folder

    snapshot = hub_folder(args.hf_dir, "import-hf")  # a Hub model id: its snapshot folder, named by its commit
    hf_dir = snapshot or Path(args.hf_dir)
    hf.check_output_folder(args.ckpt, source=hf_dir, writes=hf.IMPORT_FILES,
                           other=(hf.HF_CONFIG, "a transformers model"), command="import-hf")
    hf.write_checkpoint(hf_dir, args.ckpt, trust_pickle=args.trust_pickle,
                        source=f"{args.hf_dir.split('@')[0]}@{snapshot.name}" if snapshot else None)
    log.info("wrote an earful checkpoint to %s", args.ckpt)
    return 0


def _import_fairseq(args: argparse.Namespace) -> int:
    from earful.interop import hf
    from earful.interop.fairseq import import_fairseq

    hf.check_output_folder(args.ckpt, source=args.checkpoint, writes=hf.IMPORT_FILES,
                           other=(hf.HF_CONFIG, "a transformers model"), command="import-fairseq")
    kind = import_fairseq(args.checkpoint, args.ckpt, dictionary=args.dict)
    log.info("wrote an earful checkpoint of fairseq's %s model to %s", kind, args.ckpt)
    return 0


def _features(args: argparse.Namespace) -> int:
    from earful.checkpoint import load_model, weights_sha256
    from earful.interop.features import sources_of, write_features
    from earful.interop.hub import imported_checkpoint
    from earful.train.state import require_checkpoint

    sources = sources_of(args.inputs)
    imported = imported_checkpoint(args.ckpt, "features")
    ckpt = imported.ckpt if imported else require_checkpoint(args.ckpt)
    model, info = load_model(ckpt)
    written, problems = write_features(model, sources, args.out, checkpoint=ckpt,
                                       weights_sha256=weights_sha256(info), chunk_seconds=args.chunk_seconds,
                                       stride_seconds=args.stride_seconds, layers=args.layers, dtype=args.dtype,
                                       imported_from=imported.imported_from if imported else None)
    if problems:
        log.error("%d of %d inputs could not be read, no features for them: %s", len(problems), len(sources),
                  "; ".join(problems))
        return 1
    return 0


def _layer_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected layer numbers separated by commas, e.g. 0,6,12") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-hf", help="write a transformers Wav2Vec2 folder from an earful checkpoint")
    p.add_argument("ckpt", help="earful checkpoint folder, or a run folder (its latest checkpoint)")
    p.add_argument("out", help="output folder (config.json, model.safetensors, preprocessor_config.json, README.md: "
                   "the model card; a CTC model's vocab.json and tokenizer_config.json): new, empty or an earlier "
                   "export, which is replaced whole")
    p.add_argument("--push", metavar="REPO", default=None, help="then upload the folder to this Hugging Face Hub "
                   "model repository (user/name; created if need be; huggingface_hub's credentials), which then "
                   "holds the folder's files and no others: new, empty or an earlier export-hf (else refused, "
                   "see --replace-repo)")
    p.add_argument("--private", action="store_true", help="with --push: create the repository private")
    p.add_argument("--replace-repo", action="store_true", help="with --push: replace a repository that is not an "
                   "earlier export-hf (a model of your own, or one holding other files), deleting its files that "
                   "are not in the folder")
    p.set_defaults(func=_export)

    p = sub.add_parser("import-hf", help="read a transformers Wav2Vec2 folder into an earful checkpoint")
    p.add_argument("hf_dir", help="folder with config.json and model.safetensors or pytorch_model.bin "
                   "(or their shards), or a Hugging Face Hub model id, ORG/NAME or ORG/NAME@REVISION (downloaded "
                   "with huggingface_hub: pip install 'earful[hub]')")
    p.add_argument("ckpt", help="earful checkpoint folder to write: new, empty or an earlier import, which is "
                   "replaced whole")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let pytorch_model.bin unpickle arbitrary objects (as fairseq-made files need); this "
                   "runs any code the file holds: only for files whose origin you trust")
    p.set_defaults(func=_import)

    p = sub.add_parser(
        "import-fairseq", help="read a fairseq wav2vec 2.0 checkpoint (.pt) into an earful checkpoint",
        description="Read a fairseq wav2vec 2.0 checkpoint, pre-trained (wav2vec_small.pt, checkpoint_best.pt) or "
        "fine-tuned with CTC (wav2vec_small_960h.pt, with --dict), into an earful checkpoint, without fairseq and "
        "without running the file's code: only its tensors and settings are read (its other objects, as inert "
        "stand-ins). The model is transformers' conversion of it, through import-hf's checks.")
    p.add_argument("checkpoint", help="fairseq checkpoint file (.pt)")
    p.add_argument("ckpt", help="earful checkpoint folder to write: new, empty or an earlier import, which is "
                   "replaced whole")
    p.add_argument("--dict", default=None, metavar="DICT",
                   help="a fine-tuned model's letters: fairseq's dictionary of its fine-tuning (dict.ltr.txt, in "
                   "the fine-tuning's data folder); not for a pre-trained model")
    p.set_defaults(func=_import_fairseq)

    p = sub.add_parser("features", help="per-layer representations: STEM.npy of (layers+1, frames, dim)")
    p.add_argument("ckpt", help="earful checkpoint folder, a run folder (its latest checkpoint), or a transformers "
                   "folder or Hub model id (ORG/NAME[@REVISION]), imported once into the earful cache")
    p.add_argument("inputs", nargs="+", metavar="AUDIO|MANIFEST",
                   help="audio files (STEM.npy each), folders (their audio files) and manifests (.jsonl, as `earful "
                   "prepare` writes: ID.npy a row, a segment of a file too); a name not there, or a folder without "
                   "audio, is refused before any work")
    p.add_argument("--out", required=True, help="output folder: new, or an earlier run's of this checkpoint (its "
                   "features.json records the checkpoint, layers, dtype and windows; another checkpoint's, or "
                   "other layers, dtype or windows, are refused)")
    p.add_argument("--chunk-seconds", type=float, default=0.0,
                   help="take files longer than this in overlapping windows, as `earful transcribe` does, so that "
                   "memory does not grow with the file (default 0: whole files, exact; e.g. 30 for long recordings)")
    p.add_argument("--stride-seconds", type=float, default=None,
                   help="context on each side of a window, whose frames are dropped (default: chunk / 6)")
    p.add_argument("--layers", type=_layer_list, default=None, metavar="I,J,...",
                   help="keep these states only, in this order: 0 the transformer's input, i layer i's output "
                   "(default all; e.g. 0,6,12)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="the .npy files' precision (default float32; float16: half the disk)")
    p.set_defaults(func=_features)
