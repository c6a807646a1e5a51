"""``earful study run``: pre-train every grid run, fine-tune the chosen checkpoints on every label set
(plus from-scratch baselines), evaluate on the test splits, and write the report.

Resumable at every level: a finished stage leaves ``done.json`` and is skipped; an interrupted
pre-training or fine-tuning run continues from its latest checkpoint. Results are rebuilt from the
evaluation summaries each time, so a study killed mid-way ends with the same report.

With ``jobs: N`` (or the override ``jobs=N``) N runs go at once, each in its own process with cores/N
threads: the pre-trainings first, then each run's fine-tunings as soon as it has finished. Their progress
bars and logs go to ``OUT/logs/worker-*.log``; this process shows one bar over the study's runs.

::

    OUT/study.json                  the study config and its plan
    OUT/pretrain/<run>/             pre-training run directories (+ done.json)
    OUT/finetune/<run>__<ckpt>__<labels>/   fine-tuning run directories (+ done.json)
    OUT/eval/<run>__<ckpt>__<labels>/       evaluation hypotheses and summary.json
    OUT/runs.jsonl, results.jsonl   what the report reads
    OUT/report/                     report.md, CSVs, plots
    OUT/logs/                       the workers' logs (jobs > 1)
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from earful.atomic import atomic_write_json, atomic_write_lines
from earful.config import to_dict
from earful.study.config import PlannedRun, StudyConfig, plan_runs
from earful.study.plan import plan_table
from earful.study.report import build_report

log = logging.getLogger(__name__)


def ensure_corpus(study: StudyConfig, root: Path) -> None:
    """Build the study's synthetic corpus unless it exists; an existing one built with other settings is
    an error (a study must not silently run on a different corpus)."""
    train = Path(study.corpus.path(study.corpus.train, root))
    if train.exists():
        made = Path(study.corpus.path("synth.json", root))
        s = study.corpus.synth
        if s is not None and made.exists():
            have = json.loads(made.read_text(encoding="utf-8"))
            want = {"requested_hours": s.hours, "domain": s.domain, "seed": s.seed,
                    "labelled_fraction": s.labelled_fraction}
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            if diff:
                raise ValueError(f"{made.parent}: this corpus was built with other settings than corpus.synth "
                                 f"({', '.join(f'{k}: {a!r} there, {b!r} asked' for k, (a, b) in diff.items())}); "
                                 "remove the folder to rebuild it, or point corpus.dir elsewhere")
        return
    if study.corpus.synth is None:
        raise FileNotFoundError(f"{train}: the study's training manifest does not exist (and no corpus.synth given)")
    from earful.data.synth import synthesize

    s = study.corpus.synth
    out = Path(study.corpus.path(".", root))
    log.info("building the built-in corpus in %s (%.2f h, %s domain)", out, s.hours, s.domain)
    synthesize(out, s.hours, domain=s.domain, seed=s.seed, labelled_fraction=s.labelled_fraction)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


# study settings that decide how it runs or which runs it holds, not what a run computes: a finished study may
# continue with more seeds (or jobs, or another name)
NOT_RECIPE = ("jobs", "throughput", "seeds", "name")


def _study_part(study: dict[str, Any]) -> dict[str, Any]:
    """The study config, flattened, less ``NOT_RECIPE``."""
    return {k: v for k, v in _flatten(study).items() if k not in NOT_RECIPE}


# set per run (paths on this machine, the run's seed): not part of what a study computes
PER_RUN = {"data.train", "data.valid", "data.dev", "init", "seed"}


def recipe_fingerprint(study: StudyConfig, runs: list[PlannedRun], root: Path) -> dict[str, Any]:
    """What decides the study's results: the study (less ``jobs`` and ``throughput``) and the pre-training
    and fine-tuning configs as resolved today (YAML files and code defaults), less machine-specific paths."""
    from earful.finetune.config import load_finetune_config
    from earful.train.config import load_pretrain_config

    pre = _flatten(to_dict(load_pretrain_config(study.pretrain_config, pretrain_overrides(study, runs[0], root))))
    fin = _flatten(to_dict(load_finetune_config(study.finetune.config, study.finetune.overrides)))
    fp = {"study": _study_part(to_dict(study)),
          "pretrain": {k: v for k, v in pre.items() if k not in PER_RUN},
          "finetune": {k: v for k, v in fin.items() if k not in PER_RUN},
          "data": manifest_digests(study, root)}
    return json.loads(json.dumps(fp))


def manifest_digests(study: StudyConfig, root: Path) -> dict[str, str]:
    """SHA-256 of every manifest the study reads, by role: a corpus re-prepared under the same paths is
    another recipe, not a reason to reuse the runs trained on the old one."""
    c = study.corpus
    named = {"train": c.train, "valid": c.valid, "dev": c.dev,
             **{f"label_set.{k}": v for k, v in c.label_sets.items()},
             **{f"test.{k}": v for k, v in c.test_sets().items()}}
    out = {}
    for role, rel in named.items():
        if rel:
            p = Path(c.path(rel, root))
            out[role] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing"
    return out


# settings added after fingerprints were first written, with the value that does what the older code did:
# a fingerprint without them was made by code that behaved so
ADDED_LATER = {"model.init": "torch", "model.dropout_after_pos_conv": True, "model.negatives_style": "fairseq",
               "data.padding": True, "ckpt_hours_basis": "padded"}


def check_same_recipe(out: Path, fingerprint: dict[str, Any]) -> None:
    """A study folder continues only the study that made it: finished runs of another recipe would be mixed
    into its report."""
    p = out / "study.json"
    if not p.exists():
        return
    saved = json.loads(p.read_text(encoding="utf-8"))
    old = saved.get("fingerprint")
    if old is not None:  # older fingerprints, read as today's: without what is no longer part of the recipe
        # (seeds, name, the first run's seed), with settings added since at the value older code used
        if "study" in old:
            old["study"] = {k: v for k, v in old["study"].items() if k not in NOT_RECIPE}
        for part in ("pretrain", "finetune"):
            if part in old:
                added = {k: v for k, v in ADDED_LATER.items() if k in fingerprint.get(part, {})}
                old[part] = {**added, **{k: v for k, v in old[part].items() if k not in PER_RUN}}
        if "data" not in old:  # written before manifests were hashed: cannot be compared
            fingerprint = {k: v for k, v in fingerprint.items() if k != "data"}
    if old is None:  # written before fingerprints: the study config alone can still be compared
        old = {"study": _study_part({k: v for k, v in saved.items() if k != "plan"})}
        fingerprint = {"study": fingerprint["study"]}
    if old == fingerprint:
        return
    diff = [f"{part}.{k}" for part in fingerprint for k in sorted(set(old.get(part, {})) | set(fingerprint[part]))
            if old.get(part, {}).get(k) != fingerprint[part].get(k)]
    corpus = " (a manifest's contents changed: the corpus was rebuilt or prepared again)" if any(
        d.startswith("data.") for d in diff) else ""
    raise ValueError(f"{out}: this folder holds a study made with another recipe (differs in {', '.join(diff[:6])}"
                     f"{' …' if len(diff) > 6 else ''}){corpus}; use another --out, or remove the folder to start "
                     "over")


def _done(path: Path) -> dict[str, Any] | None:
    p = path / "done.json"
    return json.loads(p.read_text()) if p.exists() else None


def pretrain_overrides(study: StudyConfig, run: PlannedRun, root: Path) -> list[str]:
    c = study.corpus
    return [
        *study.pretrain_overrides,
        f"data.train={c.path(c.train, root)}",
        f"data.valid={c.path(c.valid, root)}" if c.valid else "data.valid=null",
        f"batch_seconds={run.batch_seconds}",
        f"device_seconds={run.device_seconds}",
        f"max_steps={run.steps}",
        f"optim.lr={run.lr}",
        "optim.lr_scaling=none",  # the study already applied its rule
        f"seed={run.seed}",
        f"ckpt_hours={json.dumps(sorted(study.milestone_hours))}",
        "ckpt_hours_basis=nominal",  # the plan's and the paper's hours: batch × steps
    ]


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _stop_with_parent() -> None:
    """In torchrun's process before it starts (Linux): SIGTERM once the process that started it dies, so a
    killed study's multi-device pre-training checkpoints and stops instead of writing on unseen."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_pretraining_stage(study: StudyConfig, run: PlannedRun, out: Path, root: Path) -> dict[str, Any]:
    from earful.train.config import load_pretrain_config
    from earful.train.pretrain import run_pretraining

    rdir = out / "pretrain" / run.name
    done = _done(rdir)
    if done:
        log.info("pre-training %s: done (step %d)", run.name, done["step"])
        return done
    overrides = pretrain_overrides(study, run, root)
    log.info("pre-training %s: %g s × %d steps (%.3g h), lr %.3g", run.name, run.batch_seconds, run.steps,
             run.hours, run.lr)
    if run.devices > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={run.devices}", "-m", "earful.cli",
               "pretrain", study.pretrain_config or overrides[0], *overrides, "--out", str(rdir), "--resume"]
        subprocess.run(cmd, check=True, cwd=root, env=os.environ.copy(), preexec_fn=_stop_with_parent)
        summary = json.loads((rdir / "checkpoints" / "latest.json").read_text())
    else:
        cfg = load_pretrain_config(study.pretrain_config, overrides)
        summary = run_pretraining(cfg, rdir, resume=True)
    if summary.get("stopped_by"):
        raise KeyboardInterrupt(f"pre-training {run.name} stopped by {summary['stopped_by']}")
    if summary["step"] < run.steps:  # e.g. torchrun's ranks stopped by a signal and exited cleanly
        raise KeyboardInterrupt(f"pre-training {run.name} stopped at step {summary['step']} of {run.steps}; "
                                f"rerun the study to resume it")
    record = {**asdict(run), "run": run.name, "step": summary["step"]}
    atomic_write_json(rdir / "done.json", record)
    return record


def checkpoints_to_finetune(study: StudyConfig, run: PlannedRun, out: Path) -> dict[str, Path]:
    ck = out / "pretrain" / run.name / "checkpoints"
    chosen: dict[str, Path] = {}
    for spec in study.finetune.checkpoints:
        if spec == "final":
            chosen["final"] = ck / f"step-{run.steps:07d}"
        elif spec == "best":
            if (ck / "best").exists():
                chosen["best"] = ck / "best"
        elif spec == "milestones":
            for h in study.milestone_hours:
                if (ck / f"hours-{h:g}").exists():
                    chosen[f"hours-{h:g}"] = ck / f"hours-{h:g}"
        else:
            raise ValueError(f"finetune.checkpoints: unknown {spec!r} (final | best | milestones)")
    return chosen


def hours_of(ckpt: Path) -> tuple[float, int]:
    p = ckpt / "trainer.json"
    if not p.exists():
        return 0.0, 0
    info = json.loads(p.read_text())
    return float(info.get("hours_padded", 0.0)), int(info.get("step", 0))


def finetune_overrides(study: StudyConfig, label_set: str, init: Path, seed: int, root: Path,
                       extra: list[str]) -> list[str]:
    """The fine-tuning config's overrides for one label set: the study's, the label set's own, the
    baseline's (``extra``), then the run's init, data and seed."""
    c = study.corpus
    return [*study.finetune.overrides, *study.finetune.per_label_set.get(label_set, []), *extra, f"init={init}",
            f"data.train={c.path(c.label_sets[label_set], root)}", f"data.dev={c.path(c.dev, root)}",
            f"seed={seed}"]


def finetune_and_evaluate(study: StudyConfig, name: str, init: Path, label_set: str, seed: int, out: Path,
                          root: Path, extra: list[str]) -> dict[str, Any]:
    from earful.eval.evaluate import evaluate
    from earful.finetune.config import load_finetune_config
    from earful.finetune.trainer import run_finetuning

    c = study.corpus
    fdir = out / "finetune" / name
    if not _done(fdir):
        cfg = load_finetune_config(study.finetune.config, finetune_overrides(study, label_set, init, seed, root, extra))
        log.info("fine-tuning %s", name)
        summary = run_finetuning(cfg, fdir, resume=True)
        if summary.get("stopped_by"):
            raise KeyboardInterrupt(f"fine-tuning {name} stopped by {summary['stopped_by']}")
        atomic_write_json(fdir / "done.json", {"name": name})
    edir = out / "eval" / name
    if not (edir / "summary.json").exists():
        ckpt = fdir / "checkpoints" / "best"
        if not ckpt.exists():
            ckpt = fdir
        manifests = [c.path(m, root) for m in c.test_sets().values()]
        evaluate(ckpt, manifests, edir)
    return json.loads((edir / "summary.json").read_text())


# ---------------------------------------------------------------------- scheduling
@dataclass
class Task:
    """One unit of a study: a pre-training run or a fine-tuning + evaluation. ``then`` makes the tasks that
    can start once this one has finished (a pre-training's fine-tunings)."""

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    then: Callable[[Any], list[Task]] | None = None


def _exit_with(parent: int, every: float = 2.0) -> None:
    """A pool worker's watch: once the study process is gone (killed), exit rather than keep writing into
    a folder that a rerun of the study will resume (checkpoints are atomic; the rerun redoes the rest)."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(1)


def _worker_init(threads: int, log_dir: str, parent: int) -> None:
    """A pool worker: ``threads`` torch threads, its progress bars and logs in its own file."""
    import threading

    import torch

    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    f = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    sys.stdout = sys.stderr = f
    logging.basicConfig(level=logging.INFO, stream=f, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def execute(tasks: list[Task], jobs: int, log_dir: Path) -> dict[str, Any]:
    """Run ``tasks`` and their follow-ups, ``jobs`` at a time (1: in this process, in order); returns each
    task's result by key. A failed task stops the study (finished tasks are kept: run again to continue)."""
    results: dict[str, Any] = {}
    queue = deque(tasks)
    bar = tqdm(total=len(queue), unit="run", desc="study", dynamic_ncols=True, disable=jobs <= 1)

    def finished(t: Task, result: Any) -> None:
        results[t.key] = result
        more = t.then(result) if t.then else []
        queue.extend(more)
        bar.total += len(more)
        bar.update(1)

    if jobs <= 1:
        while queue:
            t = queue.popleft()
            finished(t, t.fn(*t.args))
        return results
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log.info("running %d jobs at once (%d threads each); their logs: %s/worker-*.log", jobs, threads, log_dir)
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads, str(log_dir), os.getpid())) as pool:
        running: dict[Future, Task] = {}
        try:
            while queue or running:
                while queue:
                    t = queue.popleft()
                    running[pool.submit(t.fn, *t.args)] = t
                done, _ = wait(running, timeout=10, return_when=FIRST_COMPLETED)
                # the pool marks queued-ahead tasks as running too; the oldest `jobs` of them are the ones at work
                busy = [t.key for f, t in running.items() if f.running()][:jobs]
                bar.set_postfix_str(", ".join(busy), refresh=True)
                for fut in done:
                    t = running.pop(fut)
                    err = fut.exception()
                    if err is not None:
                        raise RuntimeError(f"study task {t.key} failed (its log is in {log_dir}): {err}") from err
                    log.info("finished %s", t.key)
                    finished(t, fut.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
    return results


# ---------------------------------------------------------------------- the study
def hold_folder(out: Path) -> IO[str]:
    """An exclusive lock on ``out`` for as long as the returned file stays open: two study processes in one
    folder would train the same runs into the same checkpoints."""
    f = open(out / ".study.lock", "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise RuntimeError(f"{out}: another earful study is running in this folder (pid {holder}); wait for it "
                           f"or stop it, then run again") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def run_study(study: StudyConfig, out_dir: str | Path, *, root: str | Path | None = None) -> Path:
    root = Path(root or Path.cwd())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with hold_folder(out):
        return _run_study(study, out, root)


def _run_study(study: StudyConfig, out: Path, root: Path) -> Path:
    t0 = time.time()
    ensure_corpus(study, root)
    runs, table = plan_table(study)
    fingerprint = recipe_fingerprint(study, runs, root)
    check_same_recipe(out, fingerprint)
    atomic_write_json(out / "study.json", {**to_dict(study), "plan": table, "fingerprint": fingerprint})
    log.info("study %s: %d pre-training runs\n%s", study.name, len(runs), table)

    label_sets = study.finetune.label_sets or list(study.corpus.label_sets)
    unknown = [ls for ls in label_sets if ls not in study.corpus.label_sets]
    if unknown:
        raise ValueError(f"finetune.label_sets {unknown} are not in corpus.label_sets {list(study.corpus.label_sets)}")
    baseline_extra = {"scratch": [], "scratch-trainable-cnn": ["freeze_feature_encoder=false"],
                      "scratch-frozen-cnn": ["freeze_feature_encoder=true"]}
    for base in study.finetune.baselines:
        if base not in baseline_extra:
            raise ValueError(f"finetune.baselines: unknown {base!r} "
                             "(scratch | scratch-trainable-cnn | scratch-frozen-cnn)")
    first_of_seed = {seed: next(r for r in runs if r.seed == seed) for seed in study.seeds}
    Finetuning = tuple[str, Path, str, list[str], dict[str, Any]]  # name, init, label set, overrides, record
    planned: dict[str, list[Finetuning]] = {}

    def finetune_tasks(run: PlannedRun) -> list[Task]:
        """The fine-tunings that can start once ``run`` has pre-trained: its checkpoints on every label set,
        and, for the first run of a seed, the from-scratch baselines from its random init. Each is kept with
        the record its results are written under."""
        todo: list[Finetuning] = []
        for ck_name, ck in checkpoints_to_finetune(study, run, out).items():
            hours, step = hours_of(ck)
            todo += [(f"{run.name}__{ck_name}__{ls}", ck, ls, [],
                      {"pretrain": run.name, "tag": run.tag, "batch_seconds": run.batch_seconds, "seed": run.seed,
                       "checkpoint": ck_name, "hours": hours, "step": step, "label_set": ls})
                     for ls in label_sets]
        if first_of_seed.get(run.seed) is run:
            init = out / "pretrain" / run.name / "checkpoints" / "init"  # same architecture, random weights
            todo += [(f"{base}-seed{run.seed}__init__{ls}", init, ls, baseline_extra[base],
                      {"pretrain": base, "tag": base, "batch_seconds": None, "seed": run.seed, "checkpoint": "init",
                       "hours": 0.0, "step": 0, "label_set": ls})
                     for base in study.finetune.baselines for ls in label_sets]
        planned[run.name] = todo
        return [Task(name, finetune_and_evaluate, (study, name, init, ls, run.seed, out, root, extra))
                for name, init, ls, extra, _ in todo]

    tasks = [Task(f"pretrain:{r.name}", run_pretraining_stage, (study, r, out, root),
                  then=lambda _rec, r=r: finetune_tasks(r)) for r in runs]
    done = execute(tasks, study.jobs, out / "logs")

    # results in plan order, whichever order the runs finished in: pre-trained models, then the baselines
    atomic_write_lines(out / "runs.jsonl", (json.dumps(done[f"pretrain:{r.name}"]) for r in runs))
    results: list[dict[str, Any]] = []
    finetunings = sorted((f for r in runs for f in planned[r.name]), key=lambda f: f[4]["batch_seconds"] is None)
    for name, *_, base in finetunings:
        for split, res in done[name]["splits"].items():
            for decoder, r in res.items():
                if "wer" in r:
                    results.append({**base, "split": split, "decoder": decoder, "wer": r["wer"], "cer": r["cer"]})
    atomic_write_lines(out / "results.jsonl", (json.dumps(rec) for rec in results))
    report = build_report(out)
    log.info("study %s finished in %.1f min; report: %s", study.name, (time.time() - t0) / 60, report)
    return report


__all__ = ["run_study", "plan_runs"]
