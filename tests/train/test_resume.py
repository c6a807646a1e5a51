"""A run killed (SIGKILL or SIGTERM) and resumed ends with the same parameters as one never interrupted."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from earful.train.engine import EXIT_STOPPED

ROOT = Path(__file__).resolve().parents[2]


def args_for(train: Path, valid: Path, out: Path, steps: int = 12) -> list[str]:
    return [sys.executable, "-m", "earful.cli", "pretrain", "model_preset=tiny", f"data.train={train}",
            f"data.valid={valid}", "batch_seconds=6", "device_seconds=3", f"max_steps={steps}", "log_every=2",
            "valid_every=4", "ckpt_every=2", "data.num_workers=1", "data.min_seconds=0.5", "data.crop_seconds=2.0",
            "optim.lr=1e-3", "tensorboard=false", "threads=1", "--out", str(out)]


def run(args: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def final_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))


def latest_step(out: Path) -> int:
    p = out / "checkpoints" / "latest.json"
    try:
        return int(json.loads(p.read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus):
    out = tmp_path_factory.mktemp("ref") / "run"
    run(args_for(*tiny_corpus, out))
    return out


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGKILL, False), (signal.SIGTERM, False),
                                           (signal.SIGTERM, True), (signal.SIGUSR1, True), (signal.SIGINT, True)])
def test_killed_and_resumed_equals_uninterrupted(sig, group, tmp_path, tiny_corpus, reference,
                                                 paused_training) -> None:
    """``group``: the signal goes to the trainer's whole process group, its DataLoader worker included, as Slurm
    and torchrun send it; a stop signal is still a checkpoint and exit status 4 (a killed worker was an error).
    A terminal's Ctrl-C (SIGINT to the foreground group) is one too: it exited 130 at once, without a checkpoint.
    The signal comes while the run waits after step 5 (step 4 checkpointed): polling latest.json for step 4 left
    the signal a race with the run's end (a signal in the last step lets it finish, status 0)."""
    out = tmp_path / "run"
    pause = paused_training(5)
    proc = subprocess.Popen(pause.command(args_for(*tiny_corpus, out)[3:]), cwd=ROOT, stdout=subprocess.DEVNULL,
                            start_new_session=group, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    pause.wait(proc)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    pause.go()
    _, err = proc.communicate(timeout=120)
    if sig != signal.SIGKILL:  # a checkpoint, then the documented exit status of a stopped run
        assert proc.returncode == EXIT_STOPPED, err[-2000:]
        assert f"stopped by {sig.name}" in err
    killed_at = latest_step(out)
    assert 4 <= killed_at < 12, f"the run was not interrupted mid-way (latest step {killed_at})"
    run([*args_for(*tiny_corpus, out), "--resume"])
    a, b = final_weights(reference, 12), final_weights(out, 12)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the log covers every step once, with no duplicates
    steps = [json.loads(line)["step"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12


def test_a_resumed_run_s_tensorboard_holds_each_step_once(tmp_path, tiny_corpus, paused_training) -> None:
    """Killed after logging steps 5 and 6 (its checkpoint at step 4), then resumed: TensorBoard kept the killed
    attempt's points beside the resumed run's (steps 5 and 6 twice, other values), where train.jsonl is cut back.
    The resumed writer drops the events after the checkpoint: each step once, with train.jsonl's values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = [*args_for(*tiny_corpus, out, steps=8)[3:], "tensorboard=true", "log_every=1", "ckpt_every=4",
            "valid_every=0", "data.num_workers=0"]
    pause = paused_training(6)
    proc = subprocess.Popen(pause.command(args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    pause.wait(proc)
    proc.kill()
    proc.communicate(timeout=120)
    assert latest_step(out) == 4
    run([sys.executable, "-m", "earful.cli", *args, "--resume"])
    logged = {r["step"]: r for r in map(json.loads, (out / "train.jsonl").read_text().splitlines())}
    tb = EventAccumulator(str(out / "tb"))
    tb.Reload()
    points = [(e.step, e.value) for e in tb.Scalars("train/hours_padded")]
    assert [step for step, _ in points] == list(range(1, 9)) == sorted(logged)
    assert all(value == pytest.approx(logged[step]["hours_padded"]) for step, value in points)


class Loader:
    """What restore_training_state needs of a loader."""

    def load_state_dict(self, state):
        self.state = state


def _optimizer_and_scaler() -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]), torch.amp.GradScaler("cpu", enabled=False)


def test_bad_file_count_survives_a_change_of_world_size() -> None:
    """Saved on 2 ranks, resumed on 1 or 4: the job's bad files are kept once, on rank 0 (the files' ids, which
    may overlap: a file falls to both ranks); on 2 ranks each rank takes its own place and files."""
    from earful.train.distributed import Dist
    from earful.train.state import restore_training_state

    opt, scaler = _optimizer_and_scaler()
    loaders = [{"epoch": 0, "position": 5, "bad_ids": ["a", "b"], "rank": 0},
               {"epoch": 0, "position": 6, "bad_ids": ["b", "c"], "rank": 1}]
    state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "loaders": loaders,
             "rng_cpu": torch.get_rng_state()}
    for world, ranks in ((1, [0]), (4, [0, 1, 2, 3]), (2, [0, 1])):
        got = []
        for rank in ranks:
            ld = Loader()
            d = Dist(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
            restore_training_state(state, opt, scaler, ld, d)
            got.append(ld.state)
        if world == 2:  # each rank its own place and files; Trainer.bad_files() takes their union
            assert [s["position"] for s in got] == [5, 6]
            assert [{k: v for k, v in s.items() if k != "ranks"} for s in got] == loaders
            assert got[0]["ranks"] == [{"epoch": 0, "position": 5}, {"epoch": 0, "position": 6}]
        else:
            assert sum(len(s["bad_ids"]) for s in got) == 3 and got[0]["bad_ids"] == ["a", "b", "c"]


def test_cuda_generator_state_restores_on_fewer_gpus(monkeypatch) -> None:
    """A checkpoint from a job that saw 8 GPUs resumes on a machine with one: each rank saved and restores its
    own device's generator only; on a CPU nothing is restored."""
    from earful.train.distributed import Dist
    from earful.train.state import restore_training_state

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": calls.append((int(s[0]), device)))

    opt, scaler = _optimizer_and_scaler()
    base = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "loaders": [{"epoch": 0, "position": 0, "bad_ids": []}], "rng_cpu": torch.get_rng_state()}
    fifth = torch.full((4,), 5, dtype=torch.uint8)
    restore_training_state({**base, "rng_cuda": fifth}, opt, scaler, Loader(), Dist(device=torch.device("cuda", 0)))
    restore_training_state({**base, "rng_cuda": fifth}, opt, scaler, Loader(), Dist())  # on a CPU: nothing
    assert calls == [(5, torch.device("cuda", 0))]


def test_a_sharded_resume_reads_the_shard_index_once_for_the_recipe(tmp_path, tiny_corpus, monkeypatch) -> None:
    """Resuming a run streamed from shards reads the index twice: once for the recipe (computed once by the
    trainer, then compared with the checkpoint's) and once for the loader; never again for the check."""
    from earful.data import shards as S
    from earful.data.manifest import read_manifest
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    S.write_shards(read_manifest(tiny_corpus[0]), tmp_path / "shards", shard_bytes=100_000)
    overrides = ["model_preset=tiny", f"data.shards={tmp_path / 'shards'}", "batch_seconds=4", "device_seconds=4",
                 "max_steps={}", "log_every=1", "valid_every=0", "data.num_workers=0", "data.min_seconds=0.5",
                 "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu"]

    def cfg(steps: int):
        return load_pretrain_config(None, [o.format(steps) for o in overrides])

    out = tmp_path / "run"
    Trainer(PretrainTask(cfg(1)), out).fit()
    reads = []
    read = S.ShardIndex.__init__

    def counted(self, location) -> None:
        reads.append(str(location))
        read(self, location)

    monkeypatch.setattr(S.ShardIndex, "__init__", counted)
    resumed = Trainer(PretrainTask(cfg(1)), out, resume=True)
    assert resumed.step == 1 and len(reads) == 2, reads
    resumed.close()


@pytest.mark.parametrize("infinite", [False, True], ids=["finite", "an-infinite-loss"])
def test_a_run_stopped_mid_interval_logs_on_resume_what_an_uninterrupted_run_logs(infinite, tmp_path, tiny_corpus,
                                                                                  monkeypatch) -> None:
    """Stopped at step 3 of a 4-step log interval: the checkpoint holds the interval's sums, so the record at step
    4 after the resume covers steps 1-4, as the uninterrupted run's does (before, only step 4). A step of an
    infinite loss (step 2) leaves the interval's loss infinite, resumed too (trainer.json stored the infinite sum
    as null, read back as NaN: the resumed run logged NaN)."""
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    if infinite:
        update = Trainer._update

        def infinite_at_2(self, tot, lr, data_wait):
            return update(self, {**tot, "loss": math.inf, "contrastive": math.inf} if self.step == 1 else tot, lr,
                          data_wait)

        monkeypatch.setattr(Trainer, "_update", infinite_at_2)
    args = ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=4",
            "max_steps=6", "log_every=4", "ckpt_every=3", "valid_every=0", "data.num_workers=0", "threads=1",
            "data.crop_seconds=2.0", "data.min_seconds=0.5", "tensorboard=false", "device=cpu"]
    Trainer(PretrainTask(load_pretrain_config(None, args)), tmp_path / "whole").fit()
    after_step = Trainer.after_step

    def stop_at_3(self):
        after_step(self)
        if self.step == 3:
            self.stop_signal = signal.SIGTERM  # as the handler of a SIGTERM sets it, on every rank

    with monkeypatch.context() as m:
        m.setattr(Trainer, "after_step", stop_at_3)
        assert Trainer(PretrainTask(load_pretrain_config(None, args)), tmp_path / "cut").fit()["step"] == 3
    saved = tmp_path / "cut" / "checkpoints" / "step-0000003" / "trainer.json"
    info = json.loads(saved.read_text())
    assert (info["log_interval"]["contrastive"] == "inf") == infinite
    if infinite:  # as an earlier earful wrote it: null, read as NaN
        shutil.copytree(tmp_path / "cut", tmp_path / "older")
        info["log_interval"] = {k: None if v == "inf" else v for k, v in info["log_interval"].items()}
        (tmp_path / "older" / saved.relative_to(tmp_path / "cut")).write_text(json.dumps(info))
        Trainer(PretrainTask(load_pretrain_config(None, args)), tmp_path / "older", resume=True).fit()
        older = json.loads((tmp_path / "older" / "train.jsonl").read_text().splitlines()[0])
        assert math.isnan(older["loss"]) and math.isnan(older["contrastive"])
    Trainer(PretrainTask(load_pretrain_config(None, args)), tmp_path / "cut", resume=True).fit()

    def records(run: str) -> list[dict]:
        timing = ("per_second", "wait")
        return [{k: v for k, v in json.loads(line).items() if not any(t in k for t in timing)}
                for line in (tmp_path / run / "train.jsonl").read_text().splitlines()]

    whole, cut = records("whole"), records("cut")
    assert [r["step"] for r in cut] == [4, 6]
    assert cut == whole
    assert math.isinf(whole[0]["loss"]) == infinite


def test_an_fp16_resume_continues_with_the_loss_scale_it_had_found(tmp_path, tiny_corpus, monkeypatch) -> None:
    """fp16 runs on a CPU (autocast float16, GradScaler('cpu')). Started at torch's 65536 (patched in), the first
    steps overflow and lower the scale; the resumed trainer's scaler holds the lowered scale and its growth
    tracker, not a fresh scaler's."""
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train import engine
    from earful.train.engine import Trainer

    monkeypatch.setattr(engine, "FP16_INIT_SCALE", 65536.0)
    cfg = ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=4", "max_steps=3",
           "log_every=1", "valid_every=0", "data.num_workers=0", "data.min_seconds=0.5", "data.crop_seconds=2.0",
           "tensorboard=false", "threads=1", "device=cpu", "precision=fp16"]
    trainer = Trainer(PretrainTask(load_pretrain_config(None, cfg)), tmp_path / "run")
    assert trainer.fit()["overflow_steps"] > 0
    found = trainer.scaler.state_dict()
    assert found["scale"] < 65536.0
    resumed = Trainer(PretrainTask(load_pretrain_config(None, cfg)), tmp_path / "run", resume=True)
    assert resumed.step == 3 and resumed.scaler.state_dict() == found
    resumed.close()


def test_an_optimizer_state_of_other_parameters_is_a_state_mismatch() -> None:
    """Resuming with other trainable parameters (fine-tuning's freeze_* changed): a StateMismatch saying it is the
    optimizer's state, which the trainer words with the recipe's changes and the way out (it was torch's bare
    "loaded state dict contains a parameter group that doesn't match the size of optimizer's group")."""
    from earful.train.distributed import Dist
    from earful.train.state import StateMismatch, restore_training_state

    saved, scaler = _optimizer_and_scaler()
    saved.param_groups[0]["params"][0].grad = torch.ones(2)
    saved.step()
    state = {"optimizer": saved.state_dict(), "scaler": scaler.state_dict(), "loaders": [], "rng_cpu": None}
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(StateMismatch, match=r"^the optimizer's state: loaded state dict contains a parameter group"):
        restore_training_state(state, other, scaler, Loader(), Dist(0, 0, 1, torch.device("cpu")))


def test_a_sharded_resume_with_other_shards_and_allow_changes_starts_their_next_epoch(tmp_path, tiny_corpus) -> None:
    """Other shards (another index) under --allow-changes continue the run as another manifest does: every stream
    starts the epoch after the saved one, from its start (before: "not the shard index the checkpoint was saved
    with"); without --allow-changes the recipe check refuses them (data.shards.index)."""
    from earful.data import shards as S
    from earful.data.manifest import read_manifest
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    rows = read_manifest(tiny_corpus[0])
    S.write_shards(rows, tmp_path / "shards", shard_bytes=100_000)
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(Path(tiny_corpus[0]).read_text().splitlines(keepends=True)[:16]))
    S.write_shards(read_manifest(fewer), tmp_path / "other", shard_bytes=100_000)

    def cfg(shards: str, steps: int):
        return load_pretrain_config(None, [
            "model_preset=tiny", f"data.shards={tmp_path / shards}", "batch_seconds=4", "device_seconds=4",
            f"max_steps={steps}", "log_every=1", "valid_every=0", "data.num_workers=0", "data.min_seconds=0.5",
            "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu"])

    out = tmp_path / "run"
    Trainer(PretrainTask(cfg("shards", 1)), out).fit()
    epoch = json.loads((out / "checkpoints" / "step-0000001" / "trainer.json").read_text())["epoch"]
    with pytest.raises(ValueError, match=r"another recipe .*data\.shards\.index"):
        Trainer(PretrainTask(cfg("other", 2)), out, resume=True)
    resumed = Trainer(PretrainTask(cfg("other", 2)), out, resume=True, allow_changes=True)
    assert resumed.step == 1 and resumed.loader.epoch == epoch + 1
    assert resumed.fit()["step"] == 2
