"""The ``earful`` command line. Each concern owns its sub-commands in ``earful/<concern>/commands.py``
(a ``register(subparsers)`` function); this file only lists those modules and dispatches. Users read
:data:`DESCRIPTION` (``earful --help``), not this."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import Any

# One line a concern; a module that is not there yet is simply not listed.
COMMAND_MODULES = (
    "earful.data.commands",  # prepare, shard, synth, phonemize
    "earful.pretrain.commands",  # pretrain, gradvar
    "earful.finetune.commands",  # finetune
    "earful.eval.commands",  # evaluate, transcribe, lm
    "earful.interop.commands",  # export-hf, import-hf, import-fairseq, features
    "earful.study.commands",  # study plan|run|report|merge|status
    "earful.probe.commands",  # probe, cache list|remove
)


DESCRIPTION = """\
earful: wav2vec 2.0 self-supervised speech pre-training, with batch size measured in seconds of audio.

From audio to word error rate:
  prepare, shard, synth  make manifests (and tar shards) of a corpus, or synthesise the built-in one
  pretrain               self-supervised pre-training on unlabelled audio
  finetune               CTC fine-tuning on labelled audio
  evaluate, transcribe   WER / CER on labelled manifests; text from audio files (greedy, or with an n-gram LM)
  study                  a whole batch-size study: plan, run (pre-train, fine-tune, evaluate), report, merge, status
  probe                  SUPERB-style probes of frozen features
  import-hf, import-fairseq, export-hf   models from transformers and fairseq, and to transformers

`earful COMMAND -h` gives a command's options; -v (debug logging) goes before or after the command."""


def version() -> str:
    """The version of the code that runs (``earful.__version__``, which the package's metadata takes too): the
    installed package's metadata named another copy's where a checkout ran by ``PYTHONPATH``."""
    from earful import __version__

    return __version__


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes after its name too (``earful evaluate ... -v``). Their default is SUPPRESS:
    a command's parser sets them only when given, so it does not undo ``earful -v COMMAND`` (argparse copies a
    sub-parser's defaults over the top level's values)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return common


def resume_options(parser: argparse.ArgumentParser) -> None:
    """A training command's options for its run folder's resume (``earful.train.engine.train_command``)."""
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint "
                        "(refused where no run was started: drop it to start one)")
    parser.add_argument("--resume-or-start", action="store_true",
                        help="--resume, or start the run where none was started: for a job that may be the run's "
                        "first or a requeue")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume: continue even with another recipe than the run's (recorded in "
                        "history.jsonl); not with another seed, a max_steps behind the checkpoint, or another "
                        "architecture")


def run_folder_options(parser: argparse.ArgumentParser) -> None:
    """A training command's ``--out`` and ``--print-config`` (without which ``--out`` is required: ``out_required``)."""
    parser.add_argument("--out", default=None, help="run folder (required unless --print-config)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML (a config file of the same recipe) and log the "
                        "batch it makes on this many devices (WORLD_SIZE, as torchrun sets it; else 1), its peak lr, "
                        "steps and hours of audio; then stop: nothing is trained or written")


def out_required(args: argparse.Namespace) -> None:
    """The run folder, required but with ``--print-config``; refused as argparse refuses a missing option."""
    if args.out is None and not args.print_config:
        raise ValueError("the following arguments are required: --out (the run folder; only --print-config goes "
                         "without)")


def device_option(parser: argparse.ArgumentParser, what: str) -> None:
    """A command's ``--device``, taken by :func:`earful.train.distributed.resolve_device`; ``what``: what runs there."""
    parser.add_argument("--device", default="auto",
                        help=f"{what}: auto (CUDA where there is one, the default), cpu, cuda or cuda:N")


def renamed_option(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """``old``, an option renamed ``new`` (the same values): refused, naming ``new``, not left for argparse to
    call unrecognised (nor to take for an abbreviation of another option). Not listed in ``-h``."""

    class Renamed(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
            parser.error(f"{old} is now called {new} (the same values)")

    parser.add_argument(old, action=Renamed, nargs="?", help=argparse.SUPPRESS)  # given bare too: named


class _Commands(argparse._SubParsersAction):
    """The sub-commands' action: every parser added (each command's, and its own sub-commands', as ``study
    run``'s: they are :class:`_Parser` too) gets the common options, here once rather than in each module."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs["parents"] = [*kwargs.get("parents", ()), _common_options()]
        return super().add_parser(name, **kwargs)


class _Parser(argparse.ArgumentParser):
    """A parser whose sub-commands are :class:`_Commands`."""

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        kwargs.setdefault("action", _Commands)
        return super().add_subparsers(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="earful", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (e.name == name or name.startswith(e.name + ".")):  # not built yet
                continue
            raise
        mod.register(sub)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's arguments; key=value overrides may come before or after a command's options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse hands a command's `overrides` (nargs="*") only the key=value words before its options; the ones
    # after them (`earful study run S --out D seeds=[1,2]`) come back as extras and belong there too.
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in w and not w.startswith("-") for w in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


class LogBesideBars(logging.StreamHandler):
    """Log lines beside progress bars: tqdm clears the bars on the stream, the line is written whole, the bars are
    drawn again below it. A plain handler wrote the line where the bar's cursor stood, glued to its end
    (``... 2/4 [00:02<00:02, loss=3.373]10:34:13 INFO earful.train.engine: valid step 2: ...``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: a handler reports, never raises
            self.handleError(record)


def log_beside_bars(stream: Any = None, *, level: int = logging.INFO, force: bool = False) -> None:
    """The root logger's one handler (``LogBesideBars`` on ``stream``, default stderr) and format: for the command
    line, a study's worker processes and its Slurm jobs alike (``force``: replace a handler already there)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[LogBesideBars(stream)], force=force)


DISTRIBUTED = ("pretrain", "finetune")  # the commands that run under torchrun, one rank a process


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    log_beside_bars(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.command not in DISTRIBUTED:  # every rank would do the whole work into one output
            from earful.train.distributed import one_process

            one_process(args.command)
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError) as e:  # one line naming the file and the problem
        if args.verbose:
            raise
        logging.getLogger("earful").error("%s", e)
        return 2
    return int(rc or 0)


def run() -> None:
    """The console entry point: ``main()``'s status is the exit status. A process that joined a process group (a
    torchrun worker) then ends at once (``os._exit``), everything written and closed (checkpoints, logs, trackers,
    the process group left): during Python's finalization gloo's threads could abort it with SIGABRT ("terminate
    called without an active exception", after 2 of about 45 finished 2-rank runs here; an open torch problem),
    so torchrun reported a finished run as failed, and a second node's agent waited out its rendezvous. Once
    ``main()`` has returned, the status is decided: a stop signal during the exit (a scheduler's second SIGTERM,
    20 ms after the first) is ignored, where it turned a command's status 4 into -15 after its log had said 4."""
    rc = main()
    from earful.data.parallel import STOP_SIGNALS

    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if rc == 130:  # Ctrl-C, maybe while torch was still being imported: importing more of it now would crash
        sys.exit(rc)
    distributed = sys.modules.get("earful.train.distributed")  # imported by whatever joined a process group
    if distributed is not None and distributed.joined():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    run()
