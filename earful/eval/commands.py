"""Sub-commands ``evaluate`` (WER / CER of a CTC checkpoint, greedy and with an LM) and ``lm build``."""

from __future__ import annotations

import argparse
import json
import logging

from earful.eval.lm import build_arpa

log = logging.getLogger("earful.eval")


def _lm_build(args: argparse.Namespace) -> int:
    build_arpa(args.text, args.out, order=args.order, lowercase=not args.keep_case)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from earful.eval.beam import BeamOptions
    from earful.eval.evaluate import evaluate

    options = BeamOptions(beam=args.beam, beam_threshold=args.beam_threshold, lm_weight=args.lm_weight,
                          word_score=args.word_score, unk_score=args.unk_score, sil_score=args.sil_score)
    if args.lexicon and not args.lm:
        raise ValueError("--lexicon needs --lm")
    summary = evaluate(
        args.ckpt, args.manifests, args.out, device_seconds=args.device_seconds, device=args.device,
        precision=args.precision, lm=args.lm, lexicon=args.lexicon, beam_options=options,
        num_workers=args.num_workers,
    )  # fmt: skip
    log.info("summary: %s", json.dumps(summary["splits"]))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` and ``lm`` (with sub-command ``build``) to the ``earful`` command."""
    ev = subparsers.add_parser(
        "evaluate",
        help="WER and CER of a fine-tuned checkpoint on labelled manifests (greedy, and with an n-gram LM)",
        description="Transcribe each manifest with a CTC checkpoint (or a run directory: its latest "
        "checkpoint), greedy and, with --lm, with flashlight's lexicon beam search and a KenLM n-gram. Writes "
        "OUT/SPLIT.{greedy,lm}.jsonl (hypotheses), OUT/SPLIT.{greedy,lm}.summary.json and OUT/summary.json.",
    )
    ev.add_argument("ckpt", help="CTC checkpoint directory, or a fine-tuning run directory")
    ev.add_argument("manifests", nargs="+", help="labelled JSONL manifests; each is a split named by its stem")
    ev.add_argument("--out", required=True, help="output directory")
    ev.add_argument("--device-seconds", type=float, default=200.0, help="padded audio per inference batch")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ev.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ev.add_argument("--num-workers", type=int, default=0, help="audio loading worker processes")
    ev.add_argument("--lm", default=None, help="ARPA file (or KenLM binary with --lexicon) for beam search")
    ev.add_argument("--lexicon", default=None, help="lexicon file (default: the ARPA file's unigrams)")
    ev.add_argument("--beam", type=int, default=50, help="beam size (the paper: 50)")
    ev.add_argument("--lm-weight", type=float, default=2.0, help="LM weight (the paper: 2)")
    ev.add_argument("--word-score", type=float, default=0.0, help="score added per word (the paper: 0)")
    ev.add_argument("--beam-threshold", type=float, default=50.0,
                    help="prune hypotheses this far below the best (torchaudio's default, as the paper)")
    ev.add_argument("--unk-score", type=float, default=float("-inf"), help="score of an out-of-lexicon word")
    ev.add_argument("--sil-score", type=float, default=0.0, help="score of a word delimiter")
    ev.set_defaults(func=_evaluate)

    lm = subparsers.add_parser("lm", help="n-gram language models for beam search")
    lm_sub = lm.add_subparsers(dest="lm_command", required=True)
    build = lm_sub.add_parser(
        "build",
        help="build an interpolated modified Kneser-Ney ARPA model from text",
        description="Build an interpolated modified Kneser-Ney word n-gram model (ARPA) from a text "
        "file with one sentence a line. Pure Python: meant for up to a few million words.",
    )
    build.add_argument("text", help="text file, one sentence a line")
    build.add_argument("--order", type=int, default=4, help="n-gram order (>= 2; default 4)")
    build.add_argument("--out", required=True, help="output ARPA file")
    build.add_argument("--keep-case", action="store_true", help="do not lower-case the text")
    build.set_defaults(func=_lm_build)
