"""``earful study status OUT``: how far a study folder has come, without running it or reading any result: each
planned pre-training run's step (from its done.json, else its latest checkpoint), and the finished units of the
other stages. For a long study (a pre-registered one, read only at its end) it says what is left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from earful.checkpoint import CheckpointError
from earful.lock import held, holder
from earful.markdown import md_table
from earful.study.config import plan_runs, study_of_record
from earful.study.stages import (
    STAGES,
    done_record,
    evaluated,
    evaluation_summary,
    finished_records,
    planned_evaluations,
)
from earful.train.state import LATEST, RunDir, read_trainer_info


def _trainer_info(ckpt: Path) -> dict[str, Any] | None:
    """A checkpoint's trainer.json; None for one a trainer is replacing or removing meanwhile."""
    try:
        return read_trainer_info(ckpt)
    except (CheckpointError, OSError):
        return None


def run_state(rdir: Path, steps: int) -> tuple[int | None, str]:
    """(step reached or None, state) of a pre-training run folder: done or diverged; running (a process holds it:
    ``lock.held``), at its latest checkpoint's step or with no checkpoint yet; stopped (by a signal: a rerun resumes
    it; by non-finite steps before its end: a rerun stops there again); not started; interrupted (started, then
    stopped without a word: killed, or its machine gone)."""
    done = done_record(rdir)  # an unreadable one: a ValueError naming it
    if done is not None:
        return int(done.get("step", steps)), "diverged" if done.get("diverged") else "done"
    run = RunDir(rdir)
    try:  # latest.json, else the furthest checkpoint (RunDir.latest would verify every file and log "resuming")
        if (run.ckpt / LATEST).exists():
            latest = run.latest()
            infos = [read_trainer_info(latest)] if latest is not None and latest.name != "init" else []
        else:
            infos = [i for i in map(_trainer_info, run.checkpoints()) if i is not None]
        info = max(infos, key=lambda i: int(i["step"]), default=None)
        step = None if info is None else int(info["step"])
    except (CheckpointError, OSError, KeyError, TypeError, ValueError) as e:
        return None, f"checkpoints unreadable ({e})"
    alive = held(rdir)  # a trainer holds it: training, resumed after a stop (its checkpoint still says so), starting
    if alive:
        return step, "running" if step is not None else "running, no checkpoint yet"
    if info is not None and info.get("stopped_by"):
        return step, f"stopped by {info['stopped_by']} (a rerun resumes it)"
    if info is not None and info.get("nonfinite_stop"):
        return step, f"stopped: {info.get('nan_in_a_row')} non-finite steps in a row (a rerun stops there again)"
    if step is None and not run.started():
        return None, "not started"
    if alive is None:
        pid, host = holder(rdir) or (None, "?")
        return step, f"running on {host}, or stopped there (pid {pid}; this machine cannot tell)"
    return step, "interrupted (no process holds it: killed, or its machine gone; a rerun resumes it)"


def _study_process(out: Path) -> str:
    """Whether a study process works in ``out`` now."""
    alive, (pid, host) = held(out), holder(out) or (None, "")
    if alive:
        return f"study process running (pid {pid})"
    if alive is None:
        return f"study process on {host} (pid {pid}), running or not: this machine cannot tell"
    return "no study process running"


def study_status(out: str | Path) -> str:
    """The table of ``out``'s planned runs and the count of its finished units, as text."""
    out = Path(out)
    path = out / "study.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out}: not a study folder (no study.json); give the --out of an `earful study run`")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        study = study_of_record(saved, str(path))
        runs = plan_runs(study)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a study this earful reads ({e})") from None
    rows, states = [], []
    for run in runs:
        step, state = run_state(out / "pretrain" / run.name, run.steps)
        states.append(state)
        rows.append([run.name, f"{run.batch_seconds:g} s", f"{'-' if step is None else step} / {run.steps}", state])
    finished: dict[str, int] = {}
    for record in finished_records(out):
        stage = record.relative_to(out).parts[0]
        finished[stage] = finished.get(stage, 0) + 1
    done = sum(s in ("done", "diverged") for s in states)
    said = {stage: f"{finished[stage]} {what}" for stage, what in STAGES.items() if finished.get(stage)}
    if study.lm is not None and "eval" in said:  # an evaluation is decoded with the LM too, or on the next run
        tests = study.corpus.test_sets()
        names = [name for name in planned_evaluations(study, out) if evaluation_summary(out, name).exists()]
        with_lm = sum(evaluated(out, name, tests, lm=True) for name in names)
        # those of runs a rerun with fewer seeds left out are never decoded with it: counted apart
        of = "them" if len(names) == finished["eval"] else f"the {len(names)} this plan holds"
        said["eval"] += f" ({with_lm} of {of} decoded with the LM)"
    head = (f"study {study.name} ({out}, {_study_process(out)}): {done} of {len(runs)} pre-training runs finished "
            f"(seeds {study.seeds}); finished units of the other stages: " +
            (", ".join(text for stage, text in said.items() if stage != "pretrain") or "none"))
    from earful.study.run import left_out

    left = left_out(study, runs, out)
    if left:  # a rerun with fewer seeds rewrote study.json: its finished work is counted above, not listed below
        head += f"; finished work this plan leaves out (counted above): {', '.join(left)}"
    return "\n".join([head, md_table(["run", "batch", "step", "state"], rows)])
