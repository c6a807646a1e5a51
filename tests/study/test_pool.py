"""The study's pool of worker processes (jobs > 1): a failed job stops the study at once."""

import logging
import time

import pytest

from earful.study.pool import Job, execute


def test_a_failed_job_stops_the_other_running_jobs(tmp_path, caplog) -> None:
    """With jobs: 2, after one job failed the study waited, silently, for the other running job to finish (here
    a minute of sleep; a pre-training, hours). Now the other workers get SIGTERM (a training checkpoints on it),
    the study says so and raises the first error."""
    jobs = [Job("slow", time.sleep, (60,)), Job("bad", int, ("not a number",))]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="earful.study.pool"), \
            pytest.raises(RuntimeError, match=r"study job bad failed .*invalid literal for int"):
        execute(jobs, 2, tmp_path / "logs")
    assert time.monotonic() - start < 40
    assert "stopping the other running job(s) slow (SIGTERM" in caplog.text
