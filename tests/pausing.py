"""A test seam: a trainer that waits after one step, so that a test's signal lands at a known point of a run, not
in a race with its end. Patched in the process that trains (a ``python -c`` child, or a submitit job), never a
config field."""

import time
from pathlib import Path


def pause_after(at: int, folder: Path) -> None:
    """``Trainer.after_step`` patched: after step ``at`` (before the checkpoint that step may fall due for) the
    trainer touches ``folder``/paused and waits until a stop signal has been handled or ``folder``/go appears."""
    from earful.train.engine import Trainer

    after_step = Trainer.after_step

    def after_step_then_pause(trainer) -> None:
        after_step(trainer)
        if trainer.step != at or (folder / "go").exists():
            return
        (folder / "paused").touch()
        deadline = time.monotonic() + 300
        while not (trainer.signal_received or (folder / "go").exists()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the stop signals' handler runs between the sleeps

    Trainer.after_step = after_step_then_pause
