"""``launcher: slurm`` through submitit, run here with submitit's local executor (real job processes): a study
whose pre-training is pre-empted (SIGUSR1 to its job while it trains) checkpoints, requeues, resumes, and ends
with the results of an uninterrupted study; and the Slurm side of the resources, rendered by submitit itself."""

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from earful.lock import holder
from earful.study.config import SlurmConfig, load_study
from earful.study.run import run_study

RUN = "4s-seed1"
TESTS = Path(__file__).resolve().parents[1]  # tests/: its pausing module


def by_value(name: str) -> Any:
    """The module ``tests/NAME.py``, registered to travel by value in submitit's (cloud)pickle: a job's process
    need not import it."""
    import importlib
    import sys

    import cloudpickle

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    module = importlib.import_module(name)
    cloudpickle.register_pickle_by_value(module)
    return module


def pausing_stage_job(pause: Path, at: int) -> type:
    """earful's StageJob whose trainings, in the job's process, pause after step ``at`` (``tests/pausing.py``,
    with ``pause``'s files). Defined in a function, the class travels by value in submitit's (cloud)pickle, and so
    does the ``pausing`` module (``by_value``): the job's process need not import either."""
    from earful.study.slurm import StageJob

    pausing = by_value("pausing")

    class PausingStageJob(StageJob):
        def __call__(self, fn, args):
            pausing.pause_after(at, pause)
            return StageJob.__call__(self, fn, args)

    return PausingStageJob


def preempt_while_training(rdir: Path, pause: Path, sent: list[int]) -> threading.Thread:
    """Once the run waits in its pause (``pausing_stage_job``), SIGUSR1 to the process that trains it (the pid its
    folder's lock names), as Slurm does before a time limit; then it may go on. (Polling train.jsonl for step 1
    raced the 12 tiny steps' end, 1-1.5 s later.)"""

    def watch() -> None:
        deadline = time.time() + 300
        try:
            while time.time() < deadline:
                if (pause / "paused").exists():
                    pid = holder(rdir)[0]  # the trainer that holds the run folder
                    os.kill(pid, signal.SIGUSR1)
                    sent.append(pid)
                    return
                time.sleep(0.02)
        finally:
            (pause / "go").touch()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("at", [1, 12], ids=["mid-run", "at-the-end"])
def test_a_study_on_submitit_survives_a_preemption_with_the_same_results(at, cluster_study, cluster_study_local,
                                                                         tmp_path, monkeypatch) -> None:
    """``at``: the step after which the pre-training is signalled. After the last (12), during the end's
    validation and checkpoint, the signal stops nothing: the run finishes, then hands it on, and submitit
    requeues the job, which finds the run finished. It had been swallowed: no requeue, the job going on with only
    ``signal_delay_s`` left."""
    monkeypatch.setattr("earful.study.slurm.CLUSTER", "local")  # submitit's local executor: jobs are processes here
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")  # set by the launcher; restored after the test
    pause = tmp_path / "pause"
    pause.mkdir()
    monkeypatch.setattr("earful.study.slurm.StageJob", pausing_stage_job(pause, at))
    reference = (cluster_study_local / "report" / "report.md").read_text()

    out = tmp_path / "slurm"
    sent: list[int] = []
    watcher = preempt_while_training(out / "pretrain" / RUN, pause, sent)
    report = run_study(load_study(cluster_study, ["launcher=slurm"]), out).read_text()
    watcher.join(timeout=5)
    assert sent and sent[0] != os.getpid(), "the pre-training was never signalled"

    # the run stopped with a checkpoint, its job was requeued, and the requeued job resumed it to the end
    ck = out / "pretrain" / RUN / "checkpoints"
    stops = [json.loads(p.read_text()) for p in ck.glob("step-*/trainer.json")]
    stopped = [info["step"] for info in stops if info["stopped_by"] == "SIGUSR1"]
    logs = "".join(p.read_text(errors="replace") for p in (out / "submitit").rglob("*_log.*"))
    assert "Requeued job" in logs
    if at < 12:
        assert len(stopped) == 1 and 1 <= stopped[0] < 12, [(i["step"], i["stopped_by"]) for i in stops]
        assert "stopped by SIGUSR1; handing the stop to submitit: the job is requeued and resumes" in logs
        assert "rerun the study" not in logs  # the job resumes by itself
    else:
        assert stopped == [] and "SIGUSR1 stopped nothing in training (the run has finished): handing it on" in logs
    steps = [json.loads(line)["step"] for line in (out / "pretrain" / RUN / "train.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))

    # … with the results of the uninterrupted study
    assert report == reference
    assert (out / "results.jsonl").read_text() == (cluster_study_local / "results.jsonl").read_text()
    a = load_file(str(ck / "step-0000012" / "model.safetensors"))
    b = load_file(str(cluster_study_local / "pretrain" / RUN / "checkpoints" / "step-0000012" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_runs_devices_become_nodes_and_gpus_in_its_slurm_job(cluster_study, tmp_path, monkeypatch) -> None:
    """What earful submits for a run on 12 GPUs of 8-GPU nodes, through submitit's Slurm executor to an ``sbatch``
    that records the script (no Slurm here): 2 nodes × 6 tasks, a GPU each, SIGUSR1 before the time limit, and
    SIGUSR1 as the job's submitit's pre-emption signal, set by the script itself: a job that does not inherit the
    study's environment (``export: NONE``) had submitit's USR2, and a SIGUSR1 outside training killed it."""
    from earful.study.slurm import StageJob, job_name, make_executor, resources

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n")
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    study = load_study(cluster_study, ["launcher=slurm", "slurm.partition=gpu", "slurm.gpus_per_node=8",
                                    "slurm.cpus_per_gpu=10", "slurm.mem_gb_per_gpu=60", "slurm.time_min=720",
                                    "slurm.signal_delay_s=240", "slurm.setup=[module load cuda]",
                                    "slurm.additional={mail-user: me@lab.org, export: NONE}"])
    executor = make_executor(study, tmp_path / "out")
    executor.update_parameters(name=job_name(study, "pretrain:96s-seed1"), **resources(study.slurm, 12))
    job = executor.submit(StageJob(), print, ("unused",))
    assert job.job_id == "4242"
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--nodes=2", "--ntasks-per-node=6", "--gpus-per-node=6", "--cpus-per-task=10", "--mem=360GB",
                 "--time=720", "--signal=USR1@240", "--partition=gpu", "--mail-user=me@lab.org",
                 "--job-name=earful-toy-slurm-pretrain-96s-seed1"):
        assert f"#SBATCH {line}" in script, (line, script)
    assert "module load cuda" in script and str(tmp_path / "out" / "submitit") in script
    assert "#SBATCH --export=NONE" in script
    setup = script[script.index("# setup"):script.index("# command")].splitlines()
    assert setup[1:3] == ["export SUBMITIT_PREEMPT_SIGNAL=USR1", "module load cuda"], script
    assert resources(SlurmConfig(gpus_per_node=8), 1)["gpus_per_node"] == 1
    with pytest.raises(ValueError, match="cannot be split evenly over 2 nodes"):
        resources(SlurmConfig(gpus_per_node=8), 9)


class _Executor:
    """submitit's executor, as the study uses it, running each submitted job at once, here; ``inside`` is True
    while one runs."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.inside = False

    def update_parameters(self, name: str, **_: object) -> None:
        self.name = name

    def submit(self, _stage: object, fn, args) -> "_Submitted":
        self.submitted.append(self.name)
        self.inside = True
        try:
            return _Submitted(str(len(self.submitted)), fn(*args))
        finally:
            self.inside = False


class _Submitted:
    """A submitted job that has finished with ``result``."""

    def __init__(self, job_id: str, result: object) -> None:
        self.job_id, self.result = job_id, result

    def done(self) -> bool:
        return True

    def results(self) -> list[object]:
        return [self.result]


def test_probe_seeds_added_by_a_rerun_are_cluster_jobs(cluster_study, cluster_study_local, tmp_path,
                                                        monkeypatch) -> None:
    """A probe job has finished only once every probe seed has: a rerun that grows probe_seeds from [0, 2] to
    [0, 1, 2] submits each upstream's job again for seed 1 (it is not probed in the study process), and a finished
    stage, of any kind, is never submitted again."""
    import shutil

    from earful.study.stages import probe_summary

    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")  # set by the launcher; restored after the test
    out = tmp_path / "out"
    shutil.copytree(cluster_study_local, out)  # pre-trained, fine-tuned and evaluated
    (out / "study.json").unlink()  # its recipe had no probes
    executor = _Executor()
    monkeypatch.setattr("earful.study.slurm.make_executor", lambda study, out: executor)
    probed: list[tuple[str, list[int], bool]] = []  # (upstream, seeds probed now, as a cluster job)

    def probe_stage(study, name, upstream, out, root):  # the real stage's files, without the probes' cost
        new = [s for s in study.probe_seeds if not probe_summary(out, name, s).exists()]
        for seed in new:
            probe_summary(out, name, seed).parent.mkdir(parents=True)
            probe_summary(out, name, seed).write_text(json.dumps({"pr": {"per": 0.5 + seed / 100}}))
        probed.append((name, new, executor.inside))
        return [{"seed": s, "task": "pr", "metric": "per", "value": 0.5 + s / 100} for s in study.probe_seeds]

    monkeypatch.setattr("earful.study.run.probe_stage", probe_stage)
    upstreams = [f"{RUN}__final", "init-seed1", "fbank"]
    for seeds, probed_now in (("[0,2]", [0, 2]), ("[0,1,2]", [1]), ("[0,1,2]", [])):
        executor.submitted.clear()
        probed.clear()
        run_study(load_study(cluster_study, ["launcher=slurm", "probes=[pr]", f"probe_seeds={seeds}"]), out)
        assert sorted(probed) == sorted((u, probed_now, bool(probed_now)) for u in upstreams)
        assert sorted(executor.submitted) == (sorted(f"earful-toy-slurm-probe-{u}" for u in upstreams)
                                              if probed_now else [])
    records = [json.loads(x) for x in (out / "probes.jsonl").read_text().splitlines()]
    assert sorted((r["pretrain"], r["probe_seed"]) for r in records) == sorted(
        (p, s) for p in (RUN, "random-init", "fbank") for s in (0, 1, 2))


def test_a_slurm_jobs_log_lines_stand_beside_its_progress_bar(monkeypatch) -> None:
    """A Slurm job logged through a plain handler: the trainer's bar (on for rank 0, terminal or not) had each log
    line glued to its end in the job's stderr, as the command line and the pool's workers had. It logs as they do
    now (cli.log_beside_bars)."""
    import logging
    import types

    import submitit

    from earful.cli import LogBesideBars
    from earful.study.slurm import StageJob

    monkeypatch.setattr(submitit, "JobEnvironment", lambda: types.SimpleNamespace(num_tasks=1))
    with _root_logging_kept():
        kinds = StageJob()(lambda: [type(h) for h in logging.getLogger().handlers], ())
    assert kinds == [LogBesideBars]


@contextmanager
def _root_logging_kept() -> Iterator[None]:
    """The root logger's handlers and level as they were, after a StageJob has set its own."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_job_whose_process_received_sigterm_is_not_requeued(monkeypatch) -> None:
    """A run stopped by SIGUSR1 on every rank (a time limit's notice), in a job whose process then received
    SIGTERM (``scancel``, during the stop's checkpoint: the trainer hands it on, ``Trainer.hand_on_signal``): the
    job ends without a result, unrequeued. StageJob went by the agreed stop alone, and raised SIGUSR1 to
    submitit's handler, which requeued the cancelled job."""
    import types

    import submitit

    from earful.data.parallel import signals_handled
    from earful.study.pool import StudyStopped
    from earful.study.slurm import StageJob
    from earful.train.engine import EXIT_STOPPED

    def job_environment() -> types.SimpleNamespace:
        return types.SimpleNamespace(num_tasks=1, global_rank=0)

    job_environment._usr_sig = lambda: signal.SIGUSR1  # type: ignore[attr-defined]
    monkeypatch.setattr(submitit, "JobEnvironment", job_environment)

    def stage() -> None:
        signal.raise_signal(signal.SIGTERM)
        raise StudyStopped("pre-training 4s-seed1 stopped by SIGUSR1", "SIGUSR1")

    caught: list[int] = []  # by submitit's handlers, here: SIGUSR1 requeues, SIGTERM is logged
    with _root_logging_kept(), signals_handled((signal.SIGUSR1, signal.SIGTERM), lambda s, _: caught.append(s)):
        with pytest.raises(SystemExit) as stopped:
            StageJob()(stage, ())
    assert stopped.value.code == EXIT_STOPPED and caught == [signal.SIGTERM]


def two_ranks_signalled(out: Path, train: Path, steps: int, signals: dict[int, list[tuple[str, int, str]]]
                        ) -> tuple[list[str], str]:
    """A study's job of 2 tasks (2 ranks, gloo) under submitit's local executor, pre-training ``steps`` steps on
    ``train``, signalled as ``signals`` says (``tests/signalled_job.py``), waited for to its end (requeues
    included): the ranks' starts, in order, and the job's logs."""
    from earful.study.slurm import StageJob, import_submitit

    job_module = by_value("signalled_job")
    out.mkdir()
    executor = import_submitit().AutoExecutor(folder=out / "submitit" / "%j", cluster="local")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    job = executor.submit(StageJob(), job_module.signalled_pretraining, (out, train, steps, signals))
    deadline = time.monotonic() + 300
    while not job.done():  # its results() waits for a result a job that ends without one never writes
        assert time.monotonic() < deadline, "the job did not end in 300 s"
        time.sleep(0.1)
    logs = "".join(p.read_text(errors="replace") for p in sorted((out / "submitit").rglob("*_log.*")))
    return (out / "starts").read_text().split(), logs


def test_a_sigterm_to_another_rank_after_a_sigusr1_stop_is_not_requeued(tiny_corpus, tmp_path, monkeypatch) -> None:
    """A job of 2 ranks agrees on a SIGUSR1 stop (a time limit's notice to every task) in step 2; then SIGTERM
    (``scancel``) reaches rank 1 alone, before the stop's checkpoint. Rank 1 handed it on to its own StageJob,
    which ended without a result, while rank 0, whose StageJob alone requeues the job, knew only the SIGUSR1 and
    requeued the cancelled job. The ranks agree once more at the run's end (``Trainer.agree_signal_at_end``):
    rank 0 hands the SIGTERM on too, and the job ends unrequeued."""
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")  # set by the launcher; restored after the test
    out = tmp_path / "job"
    starts, logs = two_ranks_signalled(out, tiny_corpus[0], 3, {0: [("start", 2, "SIGUSR1")],
                                                                1: [("start", 2, "SIGUSR1"), ("after", 2, "SIGTERM")]})
    info = json.loads((out / "run" / "checkpoints" / "step-0000002" / "trainer.json").read_text())
    assert info["stopped_by"] == "SIGUSR1"
    assert "Requeued job" not in logs and sorted(starts) == ["0", "1"], logs[-3000:]
    assert "SIGTERM (received by another rank) stopped nothing in training (the run stopped by SIGUSR1)" in logs
    assert logs.count("the job ends without a result") == 2, logs[-3000:]


@pytest.mark.parametrize("ranks", [[0, 1], [1]], ids=["every-rank", "rank-1-alone"])
def test_a_signal_in_the_last_step_of_two_ranks_is_handed_on(ranks, tiny_corpus, tmp_path, monkeypatch) -> None:
    """SIGUSR1 to ``ranks`` of a job of 2 in the run's last step stops nothing: the run finishes, every rank hands
    the signal on, and rank 0's submitit requeues the job, whose requeued ranks find the run finished. Rank 0 had
    handed it on (and exited, requeuing) before leaving the process group, and rank 1 failed in the group's
    teardown barrier ("Connection closed by peer"): the ranks now leave the group first. To rank 1 alone, it had
    been handed on by rank 1 alone, whose submitit leaves the requeue to rank 0: swallowed, no requeue; the ranks
    now agree on it at the run's end (``Trainer.agree_signal_at_end``)."""
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")  # set by the launcher; restored after the test
    out = tmp_path / "job"
    starts, logs = two_ranks_signalled(out, tiny_corpus[0], 2, {r: [("start", 2, "SIGUSR1")] for r in ranks})
    assert "Requeued job" in logs and sorted(starts) == ["0", "0", "1", "1"], logs[-3000:]
    assert logs.count("stopped nothing in training (the run has finished): handing it on") == 2, logs[-3000:]
    assert "Traceback" not in logs and "triggered an exception" not in logs, logs[-3000:]
    info = json.loads((out / "run" / "checkpoints" / "step-0000002" / "trainer.json").read_text())
    assert info["stopped_by"] == "" and info["step"] == 2
