"""``earful lm build``: an ARPA n-gram word LM from a text file. (``evaluate`` comes with fine-tuning.)"""

from __future__ import annotations

import argparse

from earful.eval.lm import build_arpa


def _lm_build(args: argparse.Namespace) -> int:
    build_arpa(args.text, args.out, order=args.order, lowercase=not args.keep_case)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lm`` (with sub-command ``build``) to the ``earful`` command."""
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
