"""``earful study status OUT``: how far a study folder has come, without running it or reading any result: each
planned pre-training run's step (from its done.json, else its latest checkpoint), and the finished units of the
other stages. For a long study (a pre-registered one, read only at its end) it says what is left."""

from __future__ import annotations

import json
from pathlib import Path

from earful.checkpoint import CheckpointError
from earful.markdown import md_table
from earful.study.config import plan_runs, study_of_record
from earful.study.stages import STAGES, done_record, finished_records
from earful.train.state import RunDir, read_trainer_info


def run_state(rdir: Path, steps: int) -> tuple[int | None, str]:
    """(step reached or None, state) of a pre-training run folder: done, diverged, under way (its latest
    checkpoint's step), started with no checkpoint yet, not started."""
    done = done_record(rdir)
    if done is not None:
        return int(done.get("step", steps)), "diverged" if done.get("diverged") else "done"
    try:
        latest = RunDir(rdir).latest() if rdir.is_dir() else None
        step = int(read_trainer_info(latest)["step"]) if latest is not None and latest.name != "init" else None
    except (CheckpointError, KeyError, TypeError, ValueError):
        step = None
    if step is not None:
        return step, "under way"
    return None, "started, no checkpoint yet" if RunDir(rdir).started() else "not started"


def study_status(out: str | Path) -> str:
    """The table of ``out``'s planned runs and the count of its finished units, as text."""
    out = Path(out)
    path = out / "study.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out}: not a study folder (no study.json); give the --out of an `earful study run`")
    try:
        study = study_of_record(json.loads(path.read_text(encoding="utf-8")), str(path))
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
    head = (f"study {study.name} ({out}): {done} of {len(runs)} pre-training runs finished (seeds "
            f"{study.seeds}); finished units of the other stages: " +
            (", ".join(f"{finished[stage]} {what}" for stage, what in STAGES.items()
                       if stage != "pretrain" and finished.get(stage)) or "none"))
    return "\n".join([head, md_table(["run", "batch", "step", "state"], rows)])
