"""``launcher: slurm``: every pre-training, fine-tuning, probe and gradvar of a study is a Slurm job submitted through
submitit (``pip install 'earful[cluster]'``); the study process (on a login node, say) waits for them and submits
each run's follow-ups as soon as it has finished. docs/cluster.md is the user's side of this file.

Resources (``slurm:``, ``SlurmConfig``): a run of D devices gets ceil(D / gpus_per_node) nodes with D / nodes GPUs
each and one task (process) per GPU; submitit's ``TorchDistributedEnvironment`` gives every task torch's env://
variables, so each task is one rank of the run (no torchrun inside a job). A fine-tuning, a probe or a gradvar: one
GPU.

Time limits and pre-emption. submitit asks Slurm for SIGUSR1 ``signal_delay_s`` before the time limit (earful sets
``SUBMITIT_PREEMPT_SIGNAL=USR1`` for the study process, and each job's script sets it again, for a job that does
not inherit the study's environment: submitit's own default, USR2, is not a signal earful's trainer stops on). In a
job:

1. submitit installs its handler for SIGUSR1: pickle the submitted call again (``StageJob.checkpoint``, submitit's
   ``Checkpointable`` protocol) and requeue the job (``scontrol requeue``; the local executor restarts it);
2. while a run trains, earful's trainer holds SIGUSR1 and SIGTERM itself: on either it finishes the step, writes
   a checkpoint, stops (``stopped_by`` in trainer.json) and, leaving ``fit()``, puts submitit's handler back;
3. the stage then raises ``StudyStopped``, and ``StageJob`` hands the stop back to submitit by raising SIGUSR1
   on its own process: submitit's handler requeues the job (rank 0; the other ranks exit, the requeue restarts
   them all);
4. the requeued job calls the stage again, which resumes the run (every stage runs as ``--resume-or-start``);
   the study, still waiting on the same job id, goes on when it finishes.

A SIGUSR1 outside training (loading, evaluating) reaches submitit's handler directly: the job requeues and the
stage resumes from the last checkpoint. A run stopped by SIGTERM — ``scancel``, or Slurm's own pre-emption with
``PreemptMode=REQUEUE``, which requeues the job itself — exits without a result (so does a stopped run any of whose
ranks received SIGTERM by the run's end, whatever stop they agreed on: they agree once more then, and each hands
it on, ``Trainer.agree_signal_at_end``): a requeued job resumes, a cancelled one is reported by
the study as failed. submitit counts requeues at the time limit against ``max_requeues``; pre-emptions are free.
A study process that is killed leaves its jobs running; a rerun skips the runs that have finished (``Job.done``)
and submits the others, whose run folders are locked while an old job still trains them: cancel the old jobs
first (``scancel --name`` with the job names, ``earful-STUDY-…``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from earful.config import ConfigError
from earful.data.parallel import signals_handled
from earful.study.config import SlurmConfig, StudyConfig
from earful.study.pool import Job, Progress, StudyStopped
from earful.train.engine import EXIT_STOPPED

log = logging.getLogger(__name__)

CLUSTER = "slurm"  # submitit's executor: "local" runs the same jobs as processes on this machine (the tests)
PREEMPT_SIGNAL = "USR1"  # what Slurm sends before the time limit, and what earful's trainer stops on


def import_submitit() -> Any:
    """submitit, with SIGUSR1 as its pre-emption signal (set before it is imported; its jobs inherit it)."""
    os.environ["SUBMITIT_PREEMPT_SIGNAL"] = PREEMPT_SIGNAL
    try:
        import submitit
    except ImportError as e:
        raise ConfigError(f"launcher=slurm needs the submitit package, which is not installed ({e}): pip install "
                          "'earful[cluster]'") from None
    submitit.JobEnvironment.USR_SIG = PREEMPT_SIGNAL  # in case it was imported before the variable was set
    return submitit


def resources(slurm: SlurmConfig, devices: int) -> dict[str, Any]:
    """submitit's parameters for a job on ``devices`` GPUs: nodes, one task per GPU, CPUs, memory, time limit,
    and the Slurm-only settings (``slurm_*``: a local executor leaves them aside)."""
    nodes = math.ceil(devices / slurm.gpus_per_node)
    if devices % nodes:
        raise ValueError(f"a run on {devices} devices cannot be split evenly over {nodes} nodes of at most "
                         f"{slurm.gpus_per_node} GPUs (slurm.gpus_per_node): choose devices or gpus_per_node to fit")
    per_node = devices // nodes
    params: dict[str, Any] = {"nodes": nodes, "tasks_per_node": per_node, "gpus_per_node": per_node,
                              "cpus_per_task": slurm.cpus_per_gpu, "timeout_min": slurm.time_min,
                              "slurm_signal_delay_s": slurm.signal_delay_s}
    if slurm.mem_gb_per_gpu:
        params["mem_gb"] = slurm.mem_gb_per_gpu * per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(slurm, key):
            params[f"slurm_{key}"] = getattr(slurm, key)
    # the job's submitit reads its pre-emption signal from its environment, which need not be the study's
    # (slurm.additional {export: NONE}, SBATCH_EXPORT=NONE): without it, USR2, and a SIGUSR1 outside training
    # killed the job
    params["slurm_setup"] = [f"export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}", *slurm.setup]
    if slurm.additional:
        params["slurm_additional_parameters"] = dict(slurm.additional)
    return params


class StageJob:
    """One stage of a study as a submitit job. Checkpointable in submitit's sense (``checkpoint``): on a
    pre-emption submitit submits this same call again, and the stage resumes its run."""

    def __call__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        import submitit

        from earful.cli import log_beside_bars

        log_beside_bars(force=True)  # log lines beside the trainer's bar in the job's stderr, not glued to it
        logging.getLogger("submitit").propagate = False  # it has its own handler
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one rank per task: torch's env:// variables (every GPU of the node stays visible)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        terms: list[int] = []  # a SIGTERM to this process or, handed on by its trainer, to another rank of its run
        bypass = signal.getsignal(signal.SIGTERM)  # submitit's: it logs the signal

        def note_sigterm(signum: int, frame: Any) -> None:
            terms.append(signum)
            if callable(bypass):
                bypass(signum, frame)

        try:
            with signals_handled((signal.SIGTERM,), note_sigterm):
                return fn(*args)
        except StudyStopped as e:
            if e.stopped_by == "SIGTERM" or terms:  # cancelled, or Slurm pre-empts and requeues the job itself
                log.warning("%s%s; the job ends without a result", e, "; the job received SIGTERM" * (
                    bool(terms) and e.stopped_by != "SIGTERM"))
                sys.exit(EXIT_STOPPED)
            log.warning("%s; handing the stop to submitit: the job is requeued and resumes", e.what)
            signal.raise_signal(submitit.JobEnvironment._usr_sig())  # submitit's handler (the trainer put it back)
            if env.global_rank > 0:  # submitit requeues from rank 0 only; its requeue restarts every task
                sys.exit(EXIT_STOPPED)
            raise  # not requeued: submitit has said why

    def checkpoint(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """What submitit submits again after a pre-emption: the same call (submitit.helpers.Checkpointable's)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, fn, args)


def make_executor(study: StudyConfig, out: Path) -> Any:
    """submitit's executor for the study's jobs: scripts, pickles and logs in ``OUT/<slurm.folder>/<job id>``."""
    submitit = import_submitit()
    return submitit.AutoExecutor(folder=out / study.slurm.folder / "%j", cluster=CLUSTER,
                                 slurm_max_num_timeout=study.slurm.max_requeues)


def job_name(study: StudyConfig, key: str) -> str:
    """``earful-STUDY-KEY`` in the characters Slurm shows plainly (``scancel --name`` takes it)."""
    return re.sub(r"[^\w.+=-]", "-", f"earful-{study.name}-{key}")


def execute_on_slurm(jobs: list[Job], study: StudyConfig, out: Path) -> dict[str, Any]:
    """Submit ``jobs`` and their follow-ups as Slurm jobs, each as soon as it may start; returns each job's
    result by key. A failed job stops the study: the jobs still running are cancelled (they checkpoint)."""
    slurm = study.slurm
    folder = out / slurm.folder
    executor = make_executor(study, out)
    progress = Progress(jobs, show=True)
    running: dict[Any, Job] = {}
    log.info("submitting the study's jobs through submitit (%s); their scripts and logs: %s", CLUSTER, folder)
    try:
        while progress.queue or running:
            while progress.queue:
                job = progress.queue.popleft()
                if job.done is not None and job.done():  # finished before: only read its results
                    progress.finished(job, job.fn(*job.args))
                    continue
                executor.update_parameters(name=job_name(study, job.key), **resources(slurm, job.devices))
                submitted = executor.submit(StageJob(), job.fn, job.args)
                log.info("submitted %s: job %s (%d GPU%s)", job.key, submitted.job_id, job.devices,
                         "s" if job.devices > 1 else "")
                running[submitted] = job
            shown = ", ".join(f"{j.key} ({s.job_id})" for s, j in running.items())
            if shown != progress.bar.postfix:
                progress.bar.set_postfix_str(shown, refresh=True)
            time.sleep(slurm.poll_seconds)
            for submitted in [s for s in running if s.done()]:
                job = running.pop(submitted)
                try:
                    result = submitted.results()[0]  # rank 0's
                except Exception as e:
                    raise RuntimeError(f"study job {job.key} (job {submitted.job_id}) failed; its log: "
                                       f"{submitted.paths.stderr}: {e}") from e
                log.info("finished %s (job %s)", job.key, submitted.job_id)
                progress.finished(job, result)
    except BaseException:
        for submitted in running:
            submitted.cancel(check=False)
        raise
    finally:
        progress.bar.close()
    return progress.results
