"""``earful probe`` and ``earful cache list|remove`` (its feature cache)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from earful.cli import device_option

if TYPE_CHECKING:
    from earful.probe.cache import Entry

log = logging.getLogger("earful.probe")


class _SeedsThenOverrides(argparse.Action):
    """``--seeds 0 1 2``: the seeds. argparse gives an option of ``nargs="+"`` every word up to the next option, so
    key=value overrides after the seeds (``--seeds 0 1 2 pr.layer=6``) are the command's overrides, as they are
    wherever else they stand (:func:`earful.cli.parse`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        seeds = []
        for word in (w for w in values if "=" not in w):
            try:
                seeds.append(int(word))
            except ValueError:
                parser.error(f"argument --seeds: invalid int value: {word!r}")
        if not seeds:
            parser.error("argument --seeds: expected at least one seed before the overrides")
        setattr(namespace, self.dest, seeds)
        namespace.overrides = [*(getattr(namespace, "overrides", None) or []), *(w for w in values if "=" in w)]


def _probe(args: argparse.Namespace) -> int:
    from earful.config import load_config
    from earful.probe.config import ProbeConfig
    from earful.probe.features import Upstream
    from earful.probe.suite import TASKS, check_seeds_folder, probe, run_suite, write_seeds_summary

    for option, value in (("--corpus", args.corpus), ("--tasks", args.tasks)):
        if value is not None and not args.suite:
            raise ValueError(f"{option} needs --suite mini-superb")
    if args.init_seed is not None and not args.random_init:
        raise ValueError("--init-seed needs --random-init")
    if args.cache is not None and args.cache.exists() and not args.cache.is_dir():  # found after an extraction
        raise ValueError(f"--cache {args.cache}: not a folder")
    if args.seeds is not None:
        check_seeds_folder(args.out, args.seeds)  # before any work
    config = load_config(ProbeConfig, None, args.overrides)
    upstream = Upstream.parse(args.ckpt, random_init=args.random_init, init_seed=args.init_seed or 0,
                              device=args.device, cache_dir=args.cache)
    common = dict(config=config, cache_dir=args.cache, progress=not args.no_progress)
    if args.suite:
        if args.task or args.train or args.dev or args.test:
            raise ValueError("--suite takes --corpus (and --tasks), not --task/--train/--dev/--test")
        if args.corpus is None:
            raise ValueError("--suite mini-superb needs --corpus DIR (a corpus made by `earful synth`)")
        tasks = args.tasks.split(",") if args.tasks is not None else list(TASKS)  # "" is no task

        def run(out: Path, seed: int) -> dict[str, dict[str, float]]:
            return run_suite(upstream, args.corpus, out, tasks, seed, **common)
    else:
        if not (args.task and args.train and args.dev and args.test):
            raise ValueError("give --task with --train, --dev and --test manifests, or --suite mini-superb "
                             "--corpus DIR")

        def run(out: Path, seed: int) -> dict[str, dict[str, float]]:
            results = probe(upstream, {args.task: (args.train, args.dev, args.test)}, out, seed=seed, **common)
            return {t: r.test for t, r in results.items()}
    if args.seeds is None:
        run(args.out, args.seed)
    else:  # the features are extracted (or read from the cache) once, by the first seed's run
        write_seeds_summary(args.out, upstream.name, {s: run(args.out / f"seed-{s}", s) for s in args.seeds})
    log.info("results in %s", Path(args.out) / "results.md")
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    """The cache folder; one given (``--cache``) must be a folder (a mistyped one said "0 entries")."""
    from earful.probe.features import default_cache_dir

    if args.cache is not None and not Path(args.cache).is_dir():
        raise ValueError(f"--cache {args.cache}: {'not a folder' if Path(args.cache).exists() else 'no such folder'}")
    return args.cache or default_cache_dir()


def _cache_list(args: argparse.Namespace) -> int:
    from earful.probe.cache import scan, table

    found, where = scan(_cache_dir(args))
    log.info("earful cache: features %s, imports %s\n%s", where["features"], where["import"], "\n".join(table(found)))
    return 0


def _cache_remove(args: argparse.Namespace) -> int:
    from earful.probe.cache import human, remove, scan, select

    if not (args.all or args.older_than is not None or args.upstream is not None or args.incomplete):
        raise ValueError("say which entries: --older-than DAYS, --upstream TEXT, --incomplete (they combine), or --all")
    if args.all and (args.older_than is not None or args.upstream is not None or args.incomplete):
        raise ValueError("--all removes every entry: give it alone, or the criteria without it")
    if args.upstream is not None and not args.upstream.strip():
        raise ValueError("--upstream '': matches every entry; give part of the upstream's path, or --all")
    if args.older_than is not None and args.older_than < 0:
        raise ValueError(f"--older-than {args.older_than:g}: expected days, 0 or more")
    root = _cache_dir(args)
    found, _ = scan(root)
    chosen = select(found, older_than_days=args.older_than, upstream=args.upstream, incomplete=args.incomplete)
    if not chosen and args.upstream and "@" in args.upstream and not select(found, upstream=args.upstream):
        _say_commits(args.upstream, found)
    if args.dry_run:
        for e in chosen:
            log.info("would remove %s (%s, %s)", e.path, e.about, human(e.size))
        log.info("%d of %d entries of %s and its imports, %s, would be removed", len(chosen), len(found), root,
                 human(sum(e.size for e in chosen)))
        return 0
    freed, removed, busy = remove(chosen)
    gone = len(chosen) - len(removed) - len(busy)
    log.info("removed %d of %d entries of %s and its imports, %s freed%s%s", len(removed), len(found), root,
             human(freed), f"; {len(busy)} being written left alone" if busy else "",
             f"; {gone} removed meanwhile by another process" if gone else "")
    return 0


def _say_commits(upstream: str, found: list[Entry]) -> None:
    """Warn, where ``--upstream ORG/NAME@REVISION`` matched nothing, of the commits of ORG/NAME the cache holds: a
    Hub model is recorded at the commit its revision (a branch, a tag) named when it was used, not at the revision."""
    repo = upstream.split("@", 1)[0]
    held = sorted({s.strip() for e in found for s in e.upstream.split(",") if s.strip().startswith(f"{repo}@")})
    if held:
        log.warning("--upstream %s: no entry; a Hub model is recorded at its commit, not at the branch or tag used: "
                    "the cache holds %s; give %s for every commit, or one of these", upstream, ", ".join(held), repo)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe", help="SUPERB-style probes of frozen features (PR, ASR, SID, IC)",
        description="Probe a checkpoint's frozen features of every layer (cached once per checkpoint and "
        "manifest) with a learned softmax weighting over layers and a small head per task. CKPT is an earful "
        "checkpoint or run folder, a transformers folder or Hub model id (imported once), or 'fbank' for log-mel "
        "filterbanks; a pre-training run's checkpoints/init is its "
        "random-init baseline. Overrides set the recipes, e.g. pr.epochs=20 ic.lr=0.03 (earful/probe/config.py).",
    )
    p.add_argument("ckpt", help="checkpoint folder, run folder (its latest), transformers folder or Hub model id "
                   "(ORG/NAME[@REVISION], imported once into the earful cache), or 'fbank'")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--suite", choices=("mini-superb",), help="every task on a corpus made by `earful synth`")
    p.add_argument("--corpus", type=Path, help="with --suite: the corpus root (manifests/ inside)")
    p.add_argument("--tasks", help="with --suite: a comma-separated subset of pr,asr,sid,ic")
    p.add_argument("--task", choices=("pr", "asr", "sid", "ic"), help="one task on the manifests given")
    p.add_argument("--train", type=Path, help="training manifest")
    p.add_argument("--dev", type=Path, help="dev manifest (SID: other utterances of the training speakers)")
    p.add_argument("--test", type=Path, help="test manifest (SID: held-out speakers, for the EER)")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="the probes' seed (default 0)")
    seeds.add_argument("--seeds", action=_SeedsThenOverrides, nargs="+", metavar="SEED",
                       help="two or more probe seeds instead: OUT/seed-N for each, and in OUT/results.md each "
                       "metric's mean ± standard error over them (the heads' noise; features extracted once)")
    device_option(p, "where the checkpoint's features are extracted (the heads train on the CPU)")
    p.add_argument("--random-init", action="store_true", help="CKPT's architecture at a random init instead of its "
                   "weights (when the run has no checkpoints/init)")
    p.add_argument("--init-seed", type=int, default=None, help="with --random-init: the initialisation's seed "
                   "(default 0)")
    p.add_argument("--cache", type=Path, default=None,
                   help="feature cache (default $EARFUL_CACHE/features, else $XDG_CACHE_HOME/earful/features, "
                   "else ~/.cache/earful/features); a transformers model is imported beside it, into imports/")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_probe)

    c = sub.add_parser("cache", help="list or remove the probes' cached features and imported models",
                       description="The feature cache `earful probe` fills (float16 hidden states of every layer: "
                       "about 3.6 GB per hour of audio and checkpoint for BASE: 13 layers × 768 × 50 frames a "
                       "second), and beside it (imports/) the transformers folders and Hub models `probe` and "
                       "`features` imported. A probe that reads an entry, or uses an import, marks it used. A "
                       "study keeps its own feature cache inside its folder and removes it itself.")
    actions = c.add_subparsers(dest="action", required=True)
    for name, func, text in (("list", _cache_list, "each entry's size, days unused, utterances, upstream and "
                              "manifest, or what it imported (a folder, ORG/NAME@COMMIT), the oldest first"),
                             ("remove", _cache_remove, "remove the entries meeting every criterion given")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("--cache", type=Path, default=None,
                       help="the feature cache (default $EARFUL_CACHE/features, else "
                       "$XDG_CACHE_HOME/earful/features, else ~/.cache/earful/features); its sibling imports/ "
                       "too")
        a.set_defaults(func=func)
        if name == "remove":
            a.add_argument("--older-than", type=float, metavar="DAYS", help="unused for more than DAYS days")
            a.add_argument("--upstream", metavar="TEXT", help="extracted by an upstream whose path holds TEXT "
                           "(or 'fbank'), or an import of a folder or ORG/NAME@COMMIT that holds it")
            a.add_argument("--incomplete", action="store_true", help="entries a probe or import stopped while "
                           "writing, or of an older earful's format: never read again")
            a.add_argument("--all", action="store_true", help="every entry")
            a.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
