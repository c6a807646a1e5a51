"""``earful study plan``: the table of runs and what they cost, before anyone books a GPU."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING

from earful.study.config import (
    PlannedRun,
    StudyConfig,
    cycle_minima,
    finetuned_label_sets,
    fmt_seconds,
    milestone_label_sets,
    plan_runs,
)
from earful.train.config import nominal_steps

if TYPE_CHECKING:
    from earful.pretrain.config import PretrainConfig


def format_duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def wall_clock(durations: Sequence[float], jobs: int) -> float:
    """Seconds until ``durations`` have all run, ``jobs`` at a time, the longest first, each started as soon as a
    slot is free, as the study's pool starts its pre-trainings (``earful/study/pool.py``): never less than the
    longest run, nor than the total over ``jobs``."""
    slots = [0.0] * max(1, jobs)  # when each slot is next free
    for d in sorted(durations, reverse=True):
        heapq.heappush(slots, heapq.heappop(slots) + d)
    return max(slots)


def why_no_best(study: StudyConfig, pre: PretrainConfig) -> str:
    """Why no pre-training of ``study`` (its recipe ``pre``) keeps a ``checkpoints/best``, or "" when they do."""
    return ("corpus.valid is empty (no validation set)" if not study.corpus.valid else
            "the pre-training recipe has valid_every=0 (it never validates)" if pre.valid_every <= 0 else
            "the pre-training recipe has keep_best=false" if not pre.keep_best else "")


def _chosen_steps(kinds: list[str], last: int, milestones: set[int], keeps_best: bool
                  ) -> tuple[set[int], set[int], int]:
    """Of a run ending at step ``last`` with ``milestones`` (steps), what ``kinds`` (final | best | milestones)
    choose: the final's step (if chosen), the steps of the final and milestones chosen, and 1 for a ``best`` apart
    (0 without: none chosen, or the recipe keeps none)."""
    final = {last} if "final" in kinds else set()
    return final, (milestones if "milestones" in kinds else set()) | final, int(keeps_best and "best" in kinds)


def planned_milestones(study: StudyConfig, run: PlannedRun) -> set[int]:
    """The steps of the milestones ``run`` writes: hours-H at the first step >= nominal_steps(H) (the last step
    included; an H past its end is never written), and steps-N, the cycle minima."""
    return {max(nominal_steps(h, run.batch_seconds), 1) for h in study.ckpt_hours
            if nominal_steps(h, run.batch_seconds) <= run.steps} | set(cycle_minima(study))


def later_stages(study: StudyConfig, runs: list[PlannedRun]) -> dict[str, int]:
    """What the pre-trainings let start, counted from the plan (``earful/study/run.py`` makes them): fine-tunings
    (each with its evaluation), probe upstreams (the kept checkpoints, each seed's random init, filterbanks once)
    and the heads they train (tasks × probe seeds each), gradient-noise measurements. Checkpoints of one step
    count once (``stages.shared_weights``), but ``best``, whose step only the run will tell, counts apart: an upper
    bound where it turns out to be the final."""
    label_sets = len(finetuned_label_sets(study))
    milestone_sets = len(milestone_label_sets(study))  # the milestones' (finetune.milestone_label_sets)
    firsts = {seed: next(r for r in runs if r.seed == seed) for seed in study.seeds}
    finetunings = upstreams = gradvar = 0
    keeps_best = False
    if "best" in {*study.finetune.checkpoints, *study.gradvar_checkpoints}:
        from earful.study.stages import pretrain_recipe

        keeps_best = not why_no_best(study, pretrain_recipe(study))
    for r in runs:
        # checkpoints of one step are fine-tuned, probed and measured once (stages.shared_weights)
        milestones = planned_milestones(study, r)
        final, steps, best = _chosen_steps(study.finetune.checkpoints, r.steps, milestones, keeps_best)
        first = firsts[r.seed] is r
        # the milestones on their label sets; on the others the final (a milestone on its step is the final), best
        # and the baselines alone
        finetunings += (milestone_sets * len(steps) + (label_sets - milestone_sets) * len(final)
                        + label_sets * (best + (len(study.finetune.baselines) if first else 0)))
        upstreams += len(milestones | {r.steps}) + (1 if first else 0)
        _, measured, best = _chosen_steps(study.gradvar_checkpoints, r.steps, milestones, keeps_best)
        gradvar += len(measured) + best
    upstreams = upstreams + 1 if study.probes else 0  # and filterbanks
    return {"finetunings": finetunings, "probe_upstreams": upstreams,
            "probe_heads": upstreams * len(study.probes) * len(study.probe_seeds),
            "gradvar": gradvar if study.gradvar_batches else 0}


def plan_table(study: StudyConfig, throughput: float | None = None) -> tuple[list[PlannedRun], str]:
    """Markdown table of the runs. ``throughput``: audio seconds per second per device (padded).

    Times are upper bounds: they count each run's nominal audio (batch × steps), of which batches, rarely full,
    pad less."""
    runs = plan_runs(study)
    tp = throughput or study.throughput
    head = ["run", "batch", "devices × micro_seconds × accumulation", "lr", "steps", "hours seen (nominal)",
            "est. wall-clock"]
    rows = []
    walls: list[float] = []
    total_dev_seconds = 0.0
    for r in runs:
        if tp:
            wall = r.hours * 3600 / (tp * r.devices)
            walls.append(wall)
            total_dev_seconds += wall * r.devices
            est = format_duration(wall)
        else:
            est = "?"
        b = r.budget
        rows.append([r.name, fmt_seconds(r.batch_seconds), f"{r.devices} × {b.micro_seconds:.4g} s × {b.accumulation}",
                     f"{r.lr:.3g}", f"{r.steps:,}", f"{r.hours:,.0f}" if r.hours >= 100 else f"{r.hours:.3g}", est])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    if tp:
        total = (f"\npre-training total: {format_duration(total_dev_seconds)} of device time at {tp:g} audio-s/s "
                 "per device (fine-tuning not included)")
        if study.launcher == "local" and study.jobs > 1:  # on Slurm `jobs` does not apply: the cluster decides
            total += (f"; with jobs={study.jobs}, {format_duration(wall_clock(walls, study.jobs))} of wall-clock "
                      f"(the longest runs first, {study.jobs} at a time)")
        lines.append(total)
        lines.append("These times are upper bounds: computed from nominal audio (batch × steps), while the throughput "
                     "counts padded audio and batches are rarely full (small batches least of all), so runs take less.")
    else:
        lines.append("\nno throughput given: set `throughput:` in the study or pass --throughput to estimate time")
    n = later_stages(study, runs)
    probes = (f"{n['probe_upstreams']} probe upstreams ({n['probe_heads']} heads: {len(study.probes)} tasks × "
              f"{len(study.probe_seeds)} probe seeds each); " if study.probes else "")
    lines.append(f"Then, not in these times: {n['finetunings']} fine-tunings, each with its evaluation; {probes}"
                 f"{n['gradvar']} gradient-noise measurements.")
    return runs, "\n".join(lines)
