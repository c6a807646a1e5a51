"""``launcher: slurm`` through submitit, run here with submitit's local executor (real job processes): a study
whose pre-training is pre-empted (SIGUSR1 to its job while it trains) checkpoints, requeues, resumes, and ends
with the results of an uninterrupted study; and the Slurm side of the resources, rendered by submitit itself."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from earful.study.config import SlurmConfig, load_study
from earful.study.run import run_study

RUN = "4s-seed1"


def preempt_while_training(rdir: Path, after_step: int, sent: list[int]) -> threading.Thread:
    """Once the run has logged ``after_step``, SIGUSR1 to the process that trains it (the pid its folder's lock
    names), as Slurm does before a time limit."""

    def watch() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                steps = [json.loads(line)["step"] for line in (rdir / "train.jsonl").read_text().splitlines()]
            except (OSError, ValueError):  # not yet there, or a line half written
                steps = []
            if steps and max(steps) >= after_step:
                pid = int((rdir / ".lock").read_text())
                os.kill(pid, signal.SIGUSR1)
                sent.append(pid)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_study_on_submitit_survives_a_preemption_with_the_same_results(cluster_study, cluster_study_local, tmp_path,
                                                                         monkeypatch) -> None:
    monkeypatch.setattr("earful.study.slurm.CLUSTER", "local")  # submitit's local executor: jobs are processes here
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")  # set by the launcher; restored after the test
    reference = (cluster_study_local / "report" / "report.md").read_text()

    out = tmp_path / "slurm"
    sent: list[int] = []
    watcher = preempt_while_training(out / "pretrain" / RUN, 1, sent)
    report = run_study(load_study(cluster_study, ["launcher=slurm"]), out).read_text()
    watcher.join(timeout=5)
    assert sent and sent[0] != os.getpid(), "the pre-training was never signalled"

    # the run stopped with a checkpoint, its job was requeued, and the requeued job resumed it to the end
    ck = out / "pretrain" / RUN / "checkpoints"
    stops = [json.loads(p.read_text()) for p in ck.glob("step-*/trainer.json")]
    stopped = [info["step"] for info in stops if info["stopped_by"] == "SIGUSR1"]
    assert len(stopped) == 1 and 1 <= stopped[0] < 12, [(i["step"], i["stopped_by"]) for i in stops]
    logs = "".join(p.read_text(errors="replace") for p in (out / "submitit").rglob("*_log.*"))
    assert "Requeued job" in logs and "handing the stop to submitit" in logs
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
    that records the script (no Slurm here): 2 nodes × 6 tasks, a GPU each, SIGUSR1 before the time limit."""
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
                                    "slurm.additional={mail-user: me@lab.org}"])
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
    assert resources(SlurmConfig(gpus_per_node=8), 1)["gpus_per_node"] == 1
    with pytest.raises(ValueError, match="cannot be split evenly over 2 nodes"):
        resources(SlurmConfig(gpus_per_node=8), 9)
