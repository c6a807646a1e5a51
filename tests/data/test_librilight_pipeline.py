"""The whole road at Libri-light scale, in miniature: an unlabelled Libri-light tree of long files with
silences → ``earful prepare`` (voice-activity segments) → ``earful shard`` → pre-training streamed from the
shards by two workers → killed mid-run → ``--resume``: the resumed run trains exactly the batches an
uninterrupted one does, and every segment is seen once in the first epoch."""

import collections
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from earful.cli import main
from earful.data.manifest import read_manifest
from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train.engine import Trainer

STEPS, CKPT = 10, 4


class Killed(RuntimeError):
    """The run dies mid-step (what a SIGKILL leaves: the checkpoint before it, nothing after)."""


@pytest.fixture
def trained(monkeypatch) -> SimpleNamespace:
    """``record``: (step, epoch, ids) of every micro-batch trained; a step in ``kill_at`` kills the run there."""
    record: list[tuple[int, int, list[str]]] = []
    kill_at: set[int] = set()
    real_start, real_micro = PretrainTask.start_step, PretrainTask.micro_step

    def start_step(self, step):
        if step in kill_at:
            raise Killed(f"killed at step {step}")
        self.recorded_step = step
        real_start(self, step)

    def micro_step(self, net, batch, generator, host_generator):
        record.append((self.recorded_step, batch.epoch, list(batch.ids)))
        return real_micro(self, net, batch, generator, host_generator)

    monkeypatch.setattr(PretrainTask, "start_step", start_step)
    monkeypatch.setattr(PretrainTask, "micro_step", micro_step)
    return SimpleNamespace(record=record, kill_at=kill_at)


def test_librilight_prepare_shard_pretrain_kill_resume(tmp_path: Path, unlabelled_tree, trained) -> None:
    unlabelled_tree(tmp_path / "librilight" / "small", files=3)
    assert main(["prepare", str(tmp_path / "librilight"), str(tmp_path / "manifests"), "--max-seconds", "3",
                 "--min-seconds", "1"]) == 0
    manifest = tmp_path / "manifests" / "unlabelled-small.jsonl"
    segments = [u.id for u in read_manifest(manifest)]
    assert len(segments) == 12  # 4 voice-activity segments of each 12 s file
    assert main(["shard", str(manifest), str(tmp_path / "shards"), "--shard-gb", "0.0001", "--seed", "3"]) == 0
    assert len(list((tmp_path / "shards").glob("shard-*.tar"))) > 2

    overrides = ["model_preset=tiny", f"data.shards={tmp_path / 'shards'}", "batch_seconds=4", "device_seconds=4",
                 f"max_steps={STEPS}", "log_every=1", "valid_every=0", f"ckpt_every={CKPT}", "data.num_workers=2",
                 "data.min_seconds=0.5", "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu"]
    cfg = lambda: load_pretrain_config(None, overrides)  # noqa: E731
    Trainer(PretrainTask(cfg()), tmp_path / "ref").fit()
    reference = list(trained.record)
    trained.record.clear()

    trained.kill_at.add(CKPT + 2)
    with pytest.raises(Killed):
        Trainer(PretrainTask(cfg()), tmp_path / "run").fit()
    trained.kill_at.clear()
    before = [r for r in trained.record if r[0] < CKPT]  # what the checkpoint at step CKPT holds
    trained.record.clear()
    resumed = Trainer(PretrainTask(cfg()), tmp_path / "run", resume=True)
    assert resumed.step == CKPT
    resumed.fit()
    assert before + trained.record == reference  # the same micro-batches, in the same order
    first_epoch = collections.Counter(i for _, epoch, ids in reference if epoch == 0 for i in ids)
    assert sorted(first_epoch) == sorted(segments) and set(first_epoch.values()) == {1}
    a = torch.load(tmp_path / "ref" / "checkpoints" / f"step-{STEPS:07d}" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "checkpoints" / f"step-{STEPS:07d}" / "state.pt", weights_only=True)
    assert a["loaders"] == b["loaders"]  # both end at the same place in the shards, with the same weights
    final = f"step-{STEPS:07d}/model.safetensors"
    ref, run = (load_file(str(tmp_path / r / "checkpoints" / final)) for r in ("ref", "run"))
    assert ref.keys() == run.keys() and all(torch.equal(ref[k], run[k]) for k in ref)
