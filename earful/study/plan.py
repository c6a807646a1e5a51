"""``earful study plan``: the table of runs and what they cost, before anyone books a GPU."""

from __future__ import annotations

from earful.study.config import PlannedRun, StudyConfig, fmt_seconds, plan_runs


def format_duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def plan_table(study: StudyConfig, throughput: float | None = None) -> tuple[list[PlannedRun], str]:
    """Markdown table of the runs. ``throughput``: audio seconds per second per device (padded)."""
    runs = plan_runs(study)
    tp = throughput or study.throughput
    head = ["run", "batch", "devices × device s × accum", "lr", "steps", "hours seen", "est. wall-clock"]
    rows = []
    total_dev_seconds = 0.0
    for r in runs:
        if tp:
            wall = r.hours * 3600 / (tp * r.devices)
            total_dev_seconds += wall * r.devices
            est = format_duration(wall)
        else:
            est = "?"
        rows.append([r.name, fmt_seconds(r.batch_seconds), f"{r.devices} × {r.device_seconds:g} s × {r.accumulation}",
                     f"{r.lr:.3g}", f"{r.steps:,}", f"{r.hours:,.0f}" if r.hours >= 100 else f"{r.hours:.3g}", est])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    if tp:
        lines.append(f"\npre-training total: {format_duration(total_dev_seconds)} of device time at {tp:g} audio-s/s "
                     "per device (fine-tuning not included)" + (
                         f"; with jobs={study.jobs}, about {format_duration(total_dev_seconds / study.jobs)} "
                         "of wall-clock"
                         if study.jobs > 1 else ""))
    else:
        lines.append("\nno throughput given: set `throughput:` in the study or pass --throughput to estimate time")
    return runs, "\n".join(lines)
