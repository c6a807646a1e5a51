"""Sub-commands ``evaluate`` (WER / CER of a CTC checkpoint, greedy and with an LM), ``transcribe`` (text from
audio files) and ``lm build``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from earful.cli import device_option
from earful.eval.lm import build_arpa
from earful.eval.vocab import check_mapping

log = logging.getLogger("earful.eval")
EXIT_CLOSED_PIPE = 141  # transcribe's stdout closed by its reader: 128 + SIGPIPE, as a shell reports such an end


def _lm_build(args: argparse.Namespace) -> int:
    """``earful lm build``; an ``--out`` that is a folder or the text itself is refused before the build (a folder
    had failed once the model was built, naming a temporary file; the text had been replaced by the ARPA file)."""
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out}: a folder; lm build writes one ARPA file: name a file, e.g. {out / 'lm.arpa'}")
    if out.resolve() == Path(args.text).resolve():
        raise ValueError(f"--out {out}: the text to build from, which the ARPA file would replace; name another file")
    build_arpa(args.text, out, order=args.order, lowercase=not args.keep_case)
    return 0


BEAM_OPTIONS = {"beam": "--beam", "beam_size_token": "--beam-size-token", "beam_threshold": "--beam-threshold",
                "lm_weight": "--lm-weight", "word_score": "--word-score", "unk_score": "--unk-score",
                "sil_score": "--sil-score"}  # field: option


def _beam_options(args: argparse.Namespace):
    """The beam search's options from the command line, each checked in its range and named as given (``--beam
    0: expected an integer from 1 up``); one not given is :class:`~earful.eval.beam.BeamOptions`' default (the
    paper's). They only steer the search with ``--lm``: without it decoding is greedy, so one given there is
    refused, as ``--lexicon`` is, rather than ignored (``--beam 3`` had run greedy decoding without a word)."""
    from earful.eval.beam import BeamOptions, check_beam_options

    values = {field: getattr(args, field) for field in BEAM_OPTIONS if getattr(args, field) is not None}
    if not args.lm:
        given = (["--lexicon"] if args.lexicon else []) + [BEAM_OPTIONS[field] for field in values]
        if given:
            raise ValueError(f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to the beam "
                             "search with an LM: give --lm ARPA, or leave "
                             f"{'it' if len(given) == 1 else 'them'} out for greedy decoding")
    check_beam_options(values, BEAM_OPTIONS)
    return BeamOptions(**values)


def text_mapping(raw: str) -> dict[str, str]:
    """``--text-mapping``'s value: a YAML (or JSON) mapping of single characters to strings, as fine-tuning's
    ``text_mapping`` (``{',': '', '!': '', '2': two}``)."""
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"--text-mapping {raw!r}: not a YAML mapping ({str(e).splitlines()[0]})") from None
    return check_mapping(value, f"--text-mapping {raw!r}")


def _evaluate(args: argparse.Namespace) -> int:
    from earful.eval.evaluate import evaluate

    if args.num_workers < 0:  # torch's own message named num_workers, after the checkpoint and manifests were read
        raise ValueError(f"--num-workers {args.num_workers}: expected an integer from 0 up (0: the audio is read "
                         "in this process)")
    summary = evaluate(
        args.ckpt, args.manifests, args.out, device_seconds=args.device_seconds, device=args.device,
        precision=args.precision, lm=args.lm, lexicon=args.lexicon, beam_options=_beam_options(args),
        num_workers=args.num_workers, text_mapping=text_mapping(args.text_mapping) if args.text_mapping else None,
    )  # fmt: skip
    log.info("summary: %s", json.dumps(summary["splits"]))
    return 0


def _check_transcript_out(out: Path, files: list[str]) -> None:
    """``--out`` refused before any work where it could not be written (a folder, a parent that is not a writable
    folder) or is one of the audio files: a folder had failed only once every file was transcribed, with the
    temporary file's name ("Is a directory: '.outdir.x1y2.tmp'"), and ``--out`` an input replaced that audio
    with the transcripts."""
    import os

    if out.is_dir():
        raise ValueError(f"--out {out}: a folder; transcribe writes one file (PATH<TAB>TEXT lines, or FILE.jsonl "
                         f"records): name a file, e.g. {out / 'transcripts.jsonl'}")
    if any(Path(f).resolve() == out.resolve() for f in files):
        raise ValueError(f"--out {out}: one of the audio files to transcribe, which the transcripts would replace; "
                         "name another file")
    parent = out.resolve().parent
    while not parent.exists() and parent != parent.parent:  # atomic_open makes missing folders
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {parent} is not a folder this user can write in")


def _audio_inputs(names: list[str], files_from: str | None) -> list[str]:
    """The audio files to transcribe, in order: the names given, then the lines of ``files_from`` ("-": standard
    input; a path a line, blank lines skipped), each a file, or a folder standing for the audio files below it
    (``AUDIO_EXTENSIONS`` and those libsndfile cannot decode, which are then reported; sorted, links followed). A
    folder without audio, a name that is not there, a manifest (``evaluate`` reads those), a name that cannot be
    written in the UTF-8 output, or no file at all is refused before any work."""
    import sys

    from earful.data.audio import audio_files_named
    from earful.data.manifest import MANIFEST_SUFFIX, printable_path

    if files_from is not None:
        try:
            text = sys.stdin.read() if files_from == "-" else Path(files_from).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--files-from {files_from}: cannot be read ({e})") from e
        lines = text.splitlines()
        names = [*names, *(line for line in lines if line.strip())]
    files: list[str] = []
    for name in names:
        named = audio_files_named(name)
        if named == [name] and name.endswith(MANIFEST_SUFFIX):  # it was said to be audio it could not read
            raise ValueError(f"{name}: a manifest, not an audio file: `earful evaluate CKPT {name} --out DIR` "
                             "transcribes its rows (and scores those with a transcript)")
        files += named
    for f in files:
        try:
            f.encode("utf-8")
        except UnicodeEncodeError:  # a name of other bytes (a folder's Latin-1 file): the output is UTF-8 text
            raise ValueError(f"{printable_path(f)}: a file name that is not UTF-8, which the transcripts (UTF-8 "
                             "text) cannot hold: rename it (e.g. convmv -f latin1 -t utf8)") from None
    if not files:
        raise ValueError("no audio to transcribe: give files or folders, or --files-from LIST")
    return files


def _transcript_line(record: dict[str, Any], jsonl: bool) -> str:
    return json.dumps(record, ensure_ascii=False) if jsonl else f"{record['path']}\t{record['text']}"


def _earlier_transcripts(out: Path, jsonl: bool) -> dict[Path, str]:
    """``--resume``: the transcripts ``out`` holds, as its lines by the file each is of (resolved). A last line cut
    short (the process killed while writing it, maybe inside a character of several bytes) and, in JSON Lines, the
    records of files that could not be read are left out: those files are tried again. A complete line that is not
    UTF-8 is refused."""
    if not out.exists():
        return {}
    complete, newline, cut = out.read_bytes().rpartition(b"\n")  # the lines up to the last line break are whole
    try:
        text = (complete + newline).decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text
    except UnicodeDecodeError as e:
        raise ValueError(f"--out {out}: not UTF-8 text ({e.reason} at byte {e.start}); --resume reads the output of "
                         "an earlier `earful transcribe --out` only") from e
    if cut:
        log.warning("--out %s: its last line was cut short (the run was killed while writing it); that file is "
                    "transcribed again", out)
    kept: dict[Path, str] = {}
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                record = e
            if not (isinstance(record, dict) and isinstance(record.get("path"), str) and "\0" not in record["path"]):
                why = f" ({record})" if isinstance(record, Exception) else ""
                raise ValueError(f"--out {out}, line {n}: not a transcribe record{why}; --resume reads the output "
                                 "of an earlier `earful transcribe --out` only")
            path = record["path"]
            if "text" not in record:
                continue  # an unreadable file's record: tried again
        else:
            if "\t" not in line:
                raise ValueError(f"--out {out}, line {n}: not PATH<TAB>TEXT; --resume reads the output of an "
                                 "earlier `earful transcribe --out` only")
            path = line.split("\t", 1)[0]
        kept[Path(path).resolve()] = line
    return kept


def _run_record(out: Path) -> Path:
    """Where ``transcribe --out OUT`` records what made its transcripts: ``OUT.json`` beside it (``t.jsonl.json``)."""
    return out.with_name(out.name + ".json")


def _check_same_run(out: Path, run: dict[str, Any]) -> None:
    """``--resume``: the transcripts in ``out`` are of the checkpoint (by its weights' SHA-256, as evaluate's) and the
    options (those that change a transcript) of ``run``, as ``out``'s record says; another's are refused, naming what
    differs: kept beside these, they had been mixed without a word. An output written before the record was (none)
    is taken as it is, with a warning."""
    from earful.checkpoint import same_weights

    path = _run_record(out)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        options = dict(saved["options"])
    except FileNotFoundError:
        log.warning("--out %s: written before transcribe recorded its checkpoint and options (%s): --resume takes its "
                    "transcripts as this checkpoint's, with these options", out, path.name)
        return
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a transcribe record ({e}); remove it to resume with these options, or leave "
                         "--resume out to transcribe anew") from None
    differ = [] if same_weights(saved, run) else [f"checkpoint {saved.get('checkpoint')} (now {run['checkpoint']})"]
    differ += [f"{k} {options.get(k)!r} (now {v!r})" for k, v in run["options"].items() if options.get(k) != v]
    if differ:
        raise ValueError(f"--out {out}: its transcripts are of another {', '.join(differ)} ({path.name}), which "
                         "--resume would mix with these: resume with that checkpoint and those options, give another "
                         "--out, or leave --resume out to transcribe anew")


def _transcribe(args: argparse.Namespace) -> int:
    """Transcripts written as each file is done (a line a file, flushed), so that a run stopped part-way (Ctrl-C,
    a scheduler's SIGTERM) keeps what it finished; ``--resume`` goes on from them. A reader of stdout that stops
    early (``| head``) stops it too, quietly: ``EXIT_CLOSED_PIPE``."""
    import os
    import sys
    from contextlib import nullcontext

    from earful.atomic import atomic_open, atomic_write_json
    from earful.checkpoint import weights_sha256
    from earful.data.parallel import EXIT_STOPPED, Stopped, stop_signals_raise
    from earful.eval.beam import LMBeamDecoder
    from earful.eval.evaluate import load_ctc
    from earful.eval.transcribe import transcribe_files
    from earful.train.distributed import resolve_device

    if args.out is not None and Path(args.out).suffix == ".json":
        raise ValueError(f"--out {args.out}: transcribe writes JSON Lines (one record a line), not one JSON "
                         "document: name it .jsonl")
    if args.resume and args.out is None:
        raise ValueError("--resume goes on from the transcripts in --out: give --out")
    device = resolve_device(args.device, "--device")  # before the inputs and the checkpoint are read
    files = _audio_inputs(args.files, args.files_from)
    out = None if args.out is None else Path(args.out)
    if out is not None:
        _check_transcript_out(out, files)
    jsonl = out is not None and out.suffix == ".jsonl"
    awkward = [f for f in files if "\t" in f or "\n" in f or "\r" in f]
    if awkward and not jsonl:
        raise ValueError(f"{awkward[0]!r}: a file name with a tab or a line break, which the text output (PATH, a "
                         "tab, TEXT, a line a file) cannot hold: give --out FILE.jsonl")
    earlier = _earlier_transcripts(out, jsonl) if args.resume and out is not None else {}
    todo = [f for f in files if Path(f).resolve() not in earlier]
    if args.resume:
        log.info("--resume: %d of %d files are transcribed in %s already; %d to go", len(files) - len(todo),
                 len(files), out, len(todo))
    options = _beam_options(args)
    model, vocab, path, info = load_ctc(args.ckpt, "transcribe")
    # what makes the transcripts (--device-seconds does not: the model is batch-invariant, in fp32 at least)
    run = {"checkpoint": str(path), "weights_sha256": weights_sha256(info), "options": {
        "chunk_seconds": args.chunk_seconds,
        "stride_seconds": args.chunk_seconds / 6 if args.stride_seconds is None else args.stride_seconds,
        "precision": args.precision, "text_mapping": vocab.mapping,
        "lm": str(Path(args.lm).resolve()) if args.lm else None,
        "lexicon": str(Path(args.lexicon).resolve()) if args.lexicon else None,
        **(options.settings() if args.lm else {})}}
    if earlier and out is not None:
        _check_same_run(out, run)
    beam = LMBeamDecoder(vocab, args.lm, args.lexicon, options) if args.lm else None
    records = transcribe_files(
        model, vocab, todo, chunk_seconds=args.chunk_seconds, stride_seconds=args.stride_seconds,
        device_seconds=args.device_seconds, device=device, precision=args.precision, beam=beam,
    )  # fmt: skip
    if out is not None and not args.resume and out.exists() and out.stat().st_size:
        log.warning("--out %s: replaced; its transcripts of an earlier run are gone (--resume goes on from them)", out)
    if out is not None:
        atomic_write_json(_run_record(out), run)
        with atomic_open(out) as f:  # what is kept of an earlier run (--resume), or nothing: the file starts anew
            f.writelines(line + "\n" for line in earlier.values())
    done: list[dict[str, Any]] = []
    with stop_signals_raise(ctrl_c=True), \
            (nullcontext(sys.stdout) if out is None else open(out, "a", encoding="utf-8")) as sink:
        try:
            for record in records:
                if jsonl or "error" not in record:
                    sink.write(_transcript_line(record, jsonl) + "\n")
                    sink.flush()
                done.append(record)
        except (Stopped, KeyboardInterrupt) as e:
            where = f"in {out}: the same command with --resume goes on" if out is not None else "above"
            log.warning("transcribe stopped by %s after %d of %d files; their transcripts are %s",
                        e if isinstance(e, Stopped) else "Ctrl-C", len(done), len(todo), where)
            if isinstance(e, KeyboardInterrupt):
                raise
            return EXIT_STOPPED
        except BrokenPipeError:  # stdout's reader stopped (`| head`): nothing more can be written to it
            if out is not None:
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error flushing it at exit
            log.info("transcribe: standard output's reader stopped after %d of %d files; stopped too", len(done),
                     len(todo))
            return EXIT_CLOSED_PIPE
    failed = [r for r in done if "error" in r]
    log.info("transcribed %d of %d files%s", len(done) - len(failed), len(done), f" to {out}" if out else "")
    if failed:
        log.error("%d of %d files could not be read: %s", len(failed), len(done),
                  "; ".join(r["error"] for r in failed))
        return 1
    return 0


def _add_lm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lm", default=None, help="ARPA file (or KenLM binary with --lexicon) for beam search")
    p.add_argument("--lexicon", default=None,
                   help="lexicon file, 'word s p e l l i n g |' a line (default: the ARPA file's unigrams)")
    # None: not given (refused without --lm); the search then takes BeamOptions' default, the one the help names
    p.add_argument("--beam", type=int, default=None, help="beam size, 1 or more (default 50, the paper's)")
    p.add_argument("--beam-size-token", type=int, default=None,
                   help="the most likely tokens tried at each frame, 1 or more (default the whole vocabulary; "
                   "fairseq's --beam-size-token)")
    p.add_argument("--lm-weight", type=float, default=None, help="LM weight, 0 or more (default 2, the paper's)")
    p.add_argument("--word-score", type=float, default=None, help="score added per word (default 0, the paper's)")
    p.add_argument("--beam-threshold", type=float, default=None,
                   help="prune hypotheses this far below the best, 0 or more (default 50: torchaudio's, as the "
                   "paper)")
    p.add_argument("--unk-score", type=float, default=None,
                   help="score of an out-of-lexicon word, below inf (default -inf: none)")
    p.add_argument("--sil-score", type=float, default=None, help="score of a word delimiter (default 0)")


def _inference_options(p: argparse.ArgumentParser) -> None:
    """``evaluate``'s and ``transcribe``'s options of where and how the model runs."""
    p.add_argument("--device-seconds", type=float, default=200.0,
                   help="padded audio per inference batch (default 200)")
    device_option(p, "where the model runs")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="the model's arithmetic (default fp32, whose transcripts do not depend on the batch; bf16, "
                   "fp16: autocast)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``, ``transcribe`` and ``lm`` (with sub-command ``build``) to the ``earful`` command."""
    ev = subparsers.add_parser(
        "evaluate",
        help="WER and CER of a fine-tuned checkpoint on labelled manifests (greedy, and with an n-gram LM)",
        description="Transcribe each manifest with a CTC checkpoint (or a run folder: its latest "
        "checkpoint), greedy and, with --lm, with flashlight's lexicon beam search and a KenLM n-gram. Writes "
        "OUT/SPLIT.{greedy,lm}.jsonl (hypotheses), OUT/SPLIT.{greedy,lm}.summary.json and OUT/summary.json. An OUT "
        "holds one checkpoint's evaluations, in one --precision: another's is refused; evaluated there again, a "
        "split's files are replaced (a split name evaluated there from another manifest is refused: name it, "
        "NAME=MANIFEST) and summary.json covers every split evaluated there.",
    )
    ev.add_argument("ckpt", help="CTC checkpoint folder, or a fine-tuning run folder")
    ev.add_argument("manifests", nargs="+", metavar="[NAME=]MANIFEST",
                    help="labelled JSONL manifests; each is a split named by its stem, or NAME (e.g. "
                    "test-clean=LS/test-clean/manifest.jsonl)")
    ev.add_argument("--out", required=True, help="output folder: new, or one holding this checkpoint's evaluations")
    _inference_options(ev)
    ev.add_argument("--num-workers", type=int, default=0,
                    help="audio loading worker processes (default 0: the audio is read in this process)")
    ev.add_argument("--text-mapping", default=None, metavar="MAPPING",
                    help="characters of the references to replace or remove before scoring, a YAML mapping as "
                    "fine-tuning's text_mapping, e.g. \"{',': '', '!': '', '2': two}\"; over the checkpoint's own "
                    "mapping (the one it was fine-tuned with); for scoring only: the LM search spells as the "
                    "checkpoint does")
    _add_lm_arguments(ev)
    ev.set_defaults(func=_evaluate)

    tr = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files with a fine-tuned checkpoint (long files in overlapping chunks)",
        description="Transcribe audio files (any rate and channel count libsndfile reads: resampled to 16 kHz, "
        "downmixed) with a CTC checkpoint or fine-tuning run folder, greedy or, with --lm, with the beam "
        "search of `earful evaluate`. Files longer than --chunk-seconds go through the model in windows that "
        "overlap by --stride-seconds on each side, as transformers' ASR pipeline cuts them, so memory does not "
        "grow with the file. Output: PATH<TAB>TEXT lines on stdout or in --out; --out F.jsonl writes JSON "
        "records, one a line (path, seconds, text; an unreadable file's error; not .json: the file is not one "
        "JSON document). Each file's line is written as soon as it is done: stopped part-way (SIGTERM: exit status "
        "4; Ctrl-C: 130), --out keeps the finished ones and --resume goes on from them (with the checkpoint and "
        "options OUT.json records). Exit status 1 if any "
        "file could not be read; 2, before any work, for a name that is not there; 141 once a reader of stdout "
        "stops early (| head).",
    )
    tr.add_argument("ckpt", help="CTC checkpoint folder, or a fine-tuning run folder")
    tr.add_argument("files", nargs="*", help="audio files, or folders: the audio files below them (sorted)")
    tr.add_argument("--files-from", default=None, metavar="LIST",
                    help="a file listing more audio files, a path a line ('-': standard input)")
    tr.add_argument("--resume", action="store_true",
                    help="keep the transcripts already in --out (an earlier run's, stopped part-way) and transcribe "
                    "only the other files; another checkpoint or options (as OUT.json records that run's) is "
                    "refused")
    tr.add_argument("--out", default=None, help="output file: .jsonl for JSON records, one a line (.json is "
                    "refused), else PATH<TAB>TEXT lines")
    tr.add_argument("--chunk-seconds", type=float, default=20.0,
                    help="window length for long files; 0: whole files in one pass (default 20)")
    tr.add_argument("--stride-seconds", type=float, default=None,
                    help="context on each side of a window, dropped from its output (default: chunk / 6)")
    _inference_options(tr)
    _add_lm_arguments(tr)
    tr.set_defaults(func=_transcribe)

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
    build.add_argument("--keep-case", action="store_true",
                       help="do not lower-case the text (beam search spells the words of an upper-case LM "
                       "lower-cased for a lower-case vocabulary, and writes them so)")
    build.set_defaults(func=_lm_build)
