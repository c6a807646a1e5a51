"""``earful prepare``, ``earful synth`` and ``earful phonemize``."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .librispeech import TRAIN_960, Note, Segments, discover, training_splits
from .manifest import Totals, Utterance, shared_values, write_manifest, write_manifests
from .parallel import StopSignals
from .phonemes import G2P_VOICE
from .vad import SegmentLimits

log = logging.getLogger("earful.data")


def processes(text: str) -> int:
    """A ``--workers`` count: an integer >= 1 (0 and -1 had run in this one process without a word)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes >= 1, got {text!r}")
    return n


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare", help="write JSONL manifests for a LibriSpeech / Libri-light / plain audio folder",
        description="Read SOURCE (a LibriSpeech split, a folder of splits or the folder holding LibriSpeech/, or a "
        "speaker or chapter folder of a split; a Libri-light fine-tuning tree; unlabelled Libri-light "
        "small/medium/large, cut into voice-activity segments; or a plain folder of audio with optional .txt/.lab "
        "transcripts) and write OUT/<split>.jsonl; with LibriSpeech's three training splits, also "
        "OUT/train-960.jsonl. Problems (unreadable, truncated or too short audio, "
        "bad transcripts or VAD annotations) are listed in OUT/problems-<SOURCE>.txt and stop it, writing no "
        "manifest, unless --skip-bad; notes (audio beside the splits, transcript lines without audio, a second path "
        "to a file read already, a plain folder's transcript tables it does not read or audio without a transcript "
        "file) are listed there too and stop nothing. A file reached by two paths is read once; "
        "no manifest holds an id twice.",
    )
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    seg = SegmentLimits()
    p.add_argument("--max-seconds", type=float, default=seg.max_seconds,
                   help=f"unlabelled Libri-light: the longest segment (default {seg.max_seconds:g})")
    p.add_argument("--min-seconds", type=float, default=seg.min_seconds,
                   help=f"unlabelled Libri-light: shorter segments are left out, counted (default {seg.min_seconds:g})")
    p.add_argument("--max-pause", type=float, default=seg.max_pause,
                   help=f"unlabelled Libri-light: the longest pause inside a segment (default {seg.max_pause:g})")
    p.add_argument("--workers", type=processes, default=1, help="processes cutting unlabelled Libri-light (default 1)")
    p.add_argument("--hold-out", type=float, default=None, metavar="FRACTION",
                   help="hold FRACTION of each training split's (train-X's) recordings out, whole, as val-X, and "
                   "write train-X without them (the paper: 0.05); a recording is a LibriSpeech chapter, else (a "
                   "plain folder) the folder holding the audio. With LibriSpeech's three training splits, train-960 "
                   "(their union, always written) and val-960 follow")
    p.add_argument("--seed", type=int, default=1337, help="the hold-out's draw (default 1337, the paper's)")
    p.add_argument("--skip-bad", action="store_true",
                   help="write the manifests despite problems: unusable audio left out, audio without a usable "
                   "transcript kept unlabelled, files without usable VAD annotations cut by the energy VAD; counted in "
                   "the log and listed in OUT/problems-<SOURCE>.txt (default: stop, writing no manifest)")
    p.set_defaults(func=_prepare)

    sh = subparsers.add_parser(
        "shard", help="write a manifest's audio as tar shards (WebDataset layout) with an index",
        description="Write MANIFEST's rows (whole files or segments) into OUT/shard-NNNNNN.tar of about --shard-gb "
        "each (KEY.flac + KEY.json per row) and OUT/index.json; pre-train from them with data.shards=OUT.",
    )
    sh.add_argument("manifest", type=Path)
    sh.add_argument("out", type=Path)
    sh.add_argument("--shard-gb", type=float, default=1.0, help="size of a shard in GB (default 1)")
    sh.add_argument("--seed", type=int, default=None,
                    help="write the rows in an order shuffled by this seed (default: the manifest's order)")
    sh.add_argument("--skip-bad", action="store_true",
                    help="leave out rows whose audio cannot be read, listed in the index (default: stop)")
    sh.add_argument("--workers", type=processes, default=1, help="processes encoding FLAC (default 1)")
    sh.add_argument("--resume", action="store_true", help="continue a run that was stopped (killed, Ctrl-C, "
                    "SIGTERM) in OUT after its last finished shard (a finished one: nothing to do); the manifest, "
                    "--seed, --shard-gb and --skip-bad must be its own")
    sh.set_defaults(func=_shard)

    s = subparsers.add_parser(
        "synth", help="synthesise the built-in speech corpus with espeak-ng",
        description="Write a LibriSpeech-layout corpus spoken by espeak-ng pseudo-speakers, with train, "
        "nested label sets (Libri-light layout), dev and test (held-out voices), and manifests.",
    )
    s.add_argument("out", type=Path)
    s.add_argument("--hours", type=float, required=True, help="train audio, hours (approximate)")
    s.add_argument("--domain", choices=("commands", "open"), default="commands",
                   help="the transcripts: generated commands, or sentences of a text pool (default commands)")
    s.add_argument("--seed", type=int, default=0, help="the corpus's draw: one seed, the same files (default 0)")
    s.add_argument("--workers", type=processes, default=None, help="processes (default: all cores)")
    s.add_argument("--augment", action="store_true", help="add noise and reverb")
    s.add_argument("--labelled-fraction", type=float, default=0.25,
                   help="10 h analogue as a fraction of the train hours (default 0.25)")
    s.add_argument("--dev-hours", type=float, default=None)
    s.add_argument("--test-hours", type=float, default=None)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_synth)

    about = ("Write MANIFEST again with a 'phonemes' field: espeak-ng's G2P of each transcript, folded into earful's "
             "40-phoneme inventory (the one `earful synth` writes). A row's relative audio path stays relative (to "
             "the folder of --out: a corpus phonemized in place can still be moved), an absolute one absolute.")
    q = subparsers.add_parser("phonemize", help="add espeak-ng phonemes of the transcripts to a manifest (for phoneme "
                              "recognition)", description=about)
    q.add_argument("manifest", type=Path)
    q.add_argument("--out", type=Path, required=True, help="the manifest to write")
    q.add_argument("--voice", default=G2P_VOICE,
                   help=f"espeak-ng voice, an English accent (default {G2P_VOICE}; en-gb, en-us ...): earful's one "
                        "40-phoneme inventory is English, other languages' phonemes are refused")
    q.set_defaults(func=_phonemize)


def _stale(out: Path, splits: dict[str, list]) -> list[Path]:
    """Manifests in ``out`` that an earlier prepare derived from training splits this one writes again, and this
    one does not write: a held-out ``val-X`` (it would be inside ``train-X`` written whole), ``train-960`` and
    ``val-960`` (unions that would disagree with the splits written now)."""
    derived: set[str] = set()
    for name in splits:
        if name.startswith("train-"):
            derived.add("val-" + name.removeprefix("train-"))
        if name in TRAIN_960:
            derived |= {"train-960", "val-960"}
    return [out / f"{name}.jsonl" for name in sorted(derived - splits.keys()) if (out / f"{name}.jsonl").exists()]


def _of_another_source(out: Path, splits: dict[str, Sequence[Utterance]], source: Path,
                       rows: int = 100) -> dict[Path, str]:
    """The manifests of ``out`` this prepare would write (``splits``) that list another corpus's audio (a split of
    the same name: two folders named ``train``), by a path of it: none of their first ``rows`` rows lies under
    ``source`` or is a file this prepare lists (a corpus of links into a store lists the files they point to). A
    relative path is the manifest's folder's, as ``read_manifest`` reads it (``earful synth`` writes them)."""
    root = source.resolve()
    found: dict[Path, str] = {}
    for name, utts in splits.items():
        target = out / f"{name}.jsonl"
        try:
            with open(target, encoding="utf-8") as f:
                listed = [json.loads(line)["path"] for line in itertools.islice(f, rows) if line.strip()]
            base = target.resolve().parent
        except (OSError, ValueError, KeyError, TypeError):  # none there, or not a manifest
            continue
        if listed and not any((base / p).resolve().is_relative_to(root) for p in listed) and not (
                {u.path for u in utts} & set(listed)):  # a pass over the rows, made only where it decides
            found[target] = listed[0]
    return found


def _one_row_an_id(name: str, utts: Sequence[Utterance], problems: list[str]) -> Sequence[Utterance]:
    """``utts`` with an id's later rows left out (``_repeated_rows``): a manifest holding an id twice is refused by
    every command that reads it (``read_manifest``). The readers leave such rows out of a split already; this
    catches a union of splits (the training splits are checked before they are held out and joined:
    ``_one_id_in_the_training_splits``). An unlabelled split's ``Segments`` stay ``Segments``."""
    drop = _repeated_rows(name, utts, problems)
    if not drop:
        return utts
    if isinstance(utts, Segments):
        return utts.without(drop)
    return [u for r, u in enumerate(utts) if r not in drop]


def _repeated_rows(name: str, utts: Sequence[Utterance], problems: list[str]) -> set[int]:
    """The rows of ``utts`` whose id an earlier row has, each a problem naming both files (as ``split NAME``). Ids
    are compared by hash first (8 bytes a row, not a dict of every id: 16 M Libri-light segments held 0.7 GB
    more; an unlabelled split's ``Segments`` by their files' id stems, 8 bytes a file, no row made), then, for the
    few rows whose hashes meet, by the ids themselves."""
    if isinstance(utts, Segments):
        candidates = utts.rows_of_shared_stems()
    else:
        candidates = np.flatnonzero(shared_values(np.fromiter((hash(u.id) for u in utts), dtype=np.int64,
                                                              count=len(utts))))
    first: dict[str, Utterance] = {}
    drop: set[int] = set()
    for r in candidates.tolist():  # in row order
        u = utts[r]
        if u.id in first:
            problems.append(f"split {name}: duplicate utterance id {u.id} ({first[u.id].path} and {u.path}); the "
                            "second left out")
            drop.add(r)
        else:
            first[u.id] = u
    return drop


def _one_id_in_the_training_splits(found: dict[str, Sequence[Utterance]], problems: list[str],
                                   ) -> dict[str, Sequence[Utterance]]:
    """``found`` with an id that two of LibriSpeech's training splits hold (a copy of a chapter) left out of the
    later, the problem of ``train-960`` (their union, written when all three are there) whether or not
    ``--hold-out`` follows: it draws each split's recordings on its own, and one copy went to ``train-X`` and the
    other to ``val-Y``, in neither union twice, so nothing was said."""
    if not all(name in found for name in TRAIN_960):
        return found
    drop = _repeated_rows("train-960", [u for name in TRAIN_960 for u in found[name]], problems)
    if not drop:
        return found
    out, start = dict(found), 0
    for name in TRAIN_960:
        out[name] = [u for r, u in enumerate(found[name], start) if r not in drop]
        start += len(found[name])
    return out


def _prepare(args: argparse.Namespace) -> int:
    """Read the source (the long part: every file's header, a Libri-light file's voice activity), then write the
    manifests, all to temporary files first, then renamed into place together (milliseconds). A scheduler's
    SIGTERM or SIGUSR1 before the renames stops it as Ctrl-C does, with a message and exit status 4 (stopped: run
    it again; prepare has no --resume, it starts over), no manifest written or changed; from the renames on, every
    signal waits for the end (``StopSignals.holding``), so that no folder is left with some manifests of this run
    beside others of an earlier one."""
    from .parallel import EXIT_STOPPED, Stopped, stop_signals_raise

    with stop_signals_raise(ctrl_c=True) as stops:
        try:
            problems: list[str] = []
            limits = SegmentLimits(args.max_seconds, args.min_seconds, args.max_pause)
            if args.hold_out is not None and not 0 < args.hold_out < 1:
                raise ValueError(f"--hold-out {args.hold_out}: expected a fraction between 0 and 1 (the paper: 0.05)")
            found = discover(args.source, problems, limits=limits, workers=args.workers)
            rc = _write_manifests(args, found, problems, stops)
        except Stopped as e:
            log.warning("earful prepare stopped by %s: no manifest written or changed; run it again (it starts over) "
                        "(exit status %d)", e, EXIT_STOPPED)
            return EXIT_STOPPED
    if stops.arrived:
        log.warning("%s arrived while the manifests were put in place: they were finished first",
                    " and ".join(dict.fromkeys(stops.arrived)))
    return rc


def _write_manifests(args: argparse.Namespace, found: dict[str, Sequence[Utterance]], problems: list[str],
                     stops: StopSignals) -> int:
    """The splits of ``found`` (checked, held out) written as manifests in ``args.out``, with the problems' list:
    all written, then put in place together, signals held from then on (``stops.holding``)."""
    splits = training_splits(_one_id_in_the_training_splits(found, problems), args.hold_out, args.seed)
    splits = {name: _one_row_an_id(name, utts, problems) for name, utts in splits.items()}
    problems += [f"split {name}: no usable audio" for name, utts in splits.items() if not utts]
    for msg in problems:
        log.warning("%s", msg)
    listed = args.out / f"problems-{Path(os.path.abspath(args.source)).name}.txt"
    if others := _of_another_source(args.out, splits, Path(args.source)):
        first = next(iter(others.items()))
        raise ValueError(f"{', '.join(str(t) for t in others)}: the manifest(s) of another corpus (e.g. {first[1]}), "
                         f"not of {args.source}: prepare replaces the manifests of its own source only (a corpus "
                         "moved elsewhere too); give another output folder, or remove them")
    args.out.mkdir(parents=True, exist_ok=True)
    stale = _stale(args.out, splits)
    blocking = [p for p in problems if not isinstance(p, Note)]  # notes leave no audio out and mislabel none
    if stale or (blocking and not args.skip_bad):  # refused: the list alone, an earlier run's never stays
        write_manifests({}, lines={listed: problems})  # as with the manifests: a name not UTF-8 escaped
    if stale:
        raise ValueError(f"{args.out}: {', '.join(p.name for p in stale)} written by an earlier prepare (held out "
                         "with --hold-out, or the union of the three training splits) would disagree with the "
                         "training splits written now: run again as before (with --hold-out, with all three "
                         "splits), or remove those files")
    if blocking and not args.skip_bad:
        raise ValueError(f"{args.source}: {len(blocking)} problem(s), listed in {listed}: "
                         f"{'; '.join(blocking[:3])}{' …' if len(blocking) > 3 else ''}. No manifest written: mend "
                         "them, or run again with --skip-bad to write the manifests without what is unusable")
    written = {args.out / f"{name}.jsonl": utts for name, utts in splits.items() if utts}
    totals = {target: Totals() for target in written}  # counted as the rows are written
    write_manifests({target: totals[target].counted(utts) for target, utts in written.items()},
                    replacing=stops.holding, lines={listed: problems})  # the list with its manifests
    for name, utts in splits.items():
        target = args.out / f"{name}.jsonl"
        if not utts and target.exists():  # an earlier run's, listing audio not usable now
            target.unlink()
            log.warning("removed %s, written by an earlier prepare: split %s has no usable audio now", target, name)
    total = 0
    for target, utts in written.items():
        s = totals[target].summary()
        total += len(utts)
        log.info("%-20s %9.3f h %8d utterances %5d speakers %5.0f%% labelled -> %s", target.stem, s["hours"],
                 s["utterances"], s["speakers"], 100 * s["labelled"], target)
    notes = len(problems) - len(blocking)
    if blocking:
        log.warning("%d problem(s) found, skipped (--skip-bad): what they concern is left out, unlabelled or cut "
                    "by the energy VAD; listed in %s", len(blocking), listed)
    else:
        log.info("0 problem(s) found")
    if notes:
        log.info("%d note(s) (transcripts without audio or not read, second paths to one file, audio beside the "
                 "splits or without a transcript, Libri-light files cut into no segment) listed in %s", notes, listed)
    if not total:
        raise ValueError(f"{args.source}: no usable audio found")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .synth import synthesize

    synthesize(args.out, args.hours, domain=args.domain, seed=args.seed, workers=args.workers,
               augment=args.augment, labelled_fraction=args.labelled_fraction, dev_hours=args.dev_hours,
               test_hours=args.test_hours, progress=not args.no_progress)
    return 0


def _shard(args: argparse.Namespace) -> int:
    from .digest import sha256
    from .manifest import AudioNotFound, read_manifest
    from .parallel import EXIT_STOPPED, Stopped, stop_signals_raise
    from .shards import shard_rows, write_shards

    if not 0 < args.shard_gb < float("inf"):
        raise ValueError(f"--shard-gb {args.shard_gb}: expected a finite size > 0")
    try:  # --skip-bad: a missing file is a row left out, as an unreadable one
        utts = read_manifest(args.manifest, check_files=not args.skip_bad)
    except AudioNotFound as e:
        raise AudioNotFound(f"{e}: fix the manifest (or the file), or add --skip-bad to leave such rows out (they "
                            "are listed in the index)") from None
    recipe = {"manifest_sha256": sha256(args.manifest), "seed": args.seed}  # with the size: what decides the shards
    try:
        with stop_signals_raise() as stops:  # a scheduler's pre-emption stops it as Ctrl-C does: the finished
            rows, line_of = shard_rows(utts, args.seed)  # shards stay; line_of: a row's manifest line
            done = write_shards(rows, args.out, shard_bytes=int(args.shard_gb * 1e9), skip_bad=args.skip_bad,
                                workers=args.workers, total=len(utts), source=str(args.manifest.resolve()),
                                recipe=recipe, resume=args.resume, line_of=line_of, finishing=stops.holding)
    except Stopped as e:
        log.warning("earful shard stopped by %s (exit status %d)", e, EXIT_STOPPED)
        return EXIT_STOPPED
    if stops.arrived:
        log.warning("%s arrived while the index was written: it was finished first",
                    " and ".join(dict.fromkeys(stops.arrived)))
    log.info("%d members (%.3f h) in %d shards, %.2f GB -> %s", done.members, done.hours, done.shards,
             done.bytes / 1e9, args.out)
    if done.problems:
        log.warning("%d rows left out (listed in %s): %s", len(done.problems), args.out / "index.json",
                    "; ".join(done.problems[:5]))
    return 0


def _phonemize(args: argparse.Namespace) -> int:
    from .manifest import read_manifest
    from .phonemes import phonemize

    source = read_manifest(args.manifest)
    utts = phonemize(source, str(args.manifest), voice=args.voice)
    write_manifest(utts, args.out, relative=source.relative_paths())  # a relative row stays relative (movable)
    log.info("wrote %d utterances with espeak-ng phonemes (%s) to %s", len(utts), args.voice, args.out)
    return 0
