"""Resources: out of memory on a micro-batch names ``device_seconds`` as the knob; a full disk during a
checkpoint write fails clearly and leaves the previous checkpoint intact (and the run resumable)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import earful.atomic as A
import earful.checkpoint as C
from earful.checkpoint import CheckpointError, load_model
from earful.cli import main
from earful.finetune.config import load_finetune_config
from earful.finetune.task import FinetuneTask
from earful.model import Wav2Vec2ForPreTraining
from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train.engine import Trainer
from earful.train.state import RunDir, load_trainer_state

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"


def _raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError(OOM)


class _OOMInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError(OOM)


@pytest.mark.parametrize("kind, where", [("pretrain", "forward"), ("pretrain", "backward"),
                                         ("finetune", "forward"), ("finetune", "backward")])
def test_oom_names_device_seconds(kind, where, tmp_path, tiny_corpus, tones, rel, monkeypatch) -> None:
    if kind == "pretrain":
        cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 2))
        trainer = Trainer(PretrainTask(cfg), tmp_path / "r")
        knobs = r"device_seconds=4: lower device_seconds \(accumulation then rises to keep batch_seconds=4\)"
    else:
        trainer = Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(tones, 2))), tmp_path / "r")
        knobs = r"device_seconds=1.75: lower device_seconds \(accumulation then rises to keep batch_seconds=3.5\)"
    if where == "forward":  # the backbone: used by every forward path (frozen or not)
        monkeypatch.setattr(trainer.model.wav2vec2, "forward", _raise_oom)
    else:
        monkeypatch.setattr(trainer.scaler, "scale", _OOMInBackward.apply)
    with pytest.raises(RuntimeError, match=rf"^out of memory on cpu with {knobs} and --resume$") as info:
        trainer.fit()
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


@pytest.mark.parametrize("message, memory", [
    ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),  # a workspace cuDNN could not allocate
    ("GET was unable to find an engine to execute this computation", True),  # cuDNN's frontend, the same cause
    ("CUDA error: out of memory", True),
    ("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)", False)])  # not memory: as raised
def test_a_gpu_library_out_of_memory_names_device_seconds_and_other_errors_pass(message, memory, tmp_path, tiny_corpus,
                                                                                rel, monkeypatch) -> None:
    """cuDNN and cuBLAS say they ran out of memory in RuntimeErrors of their own, not torch.OutOfMemoryError."""
    trainer = Trainer(PretrainTask(load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 2))),
                      tmp_path / "r")

    def fail(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(trainer.model.wav2vec2, "forward", fail)
    with pytest.raises(RuntimeError) as info:
        trainer.fit()
    if memory:
        assert str(info.value).startswith("out of memory on cpu with device_seconds=4")
        assert str(info.value.__cause__) == message
    else:
        assert str(info.value) == message


def test_oom_through_the_cli_is_one_clear_line(tmp_path, tiny_corpus, rel, monkeypatch, caplog) -> None:
    monkeypatch.setattr(Wav2Vec2ForPreTraining, "forward", _raise_oom)
    rc = main(["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 2), "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "out of memory on cpu with device_seconds=4: lower device_seconds" in caplog.text


# ---------------------------------------------------------------------------------------------- full disk


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


VICTIM = "step-0000004"  # the second periodic checkpoint; step-0000002 is the one that must survive


def _fill_disk(monkeypatch, stage: str) -> None:
    """Make the write of ``stage`` for checkpoint VICTIM fail with ENOSPC after writing part of it."""
    if stage == "model.safetensors":
        real_save_file = C.save_file

        def save_file(tensors, filename, *args, **kwargs):
            if VICTIM in str(filename):
                Path(filename).write_bytes(b"\0" * 4096)
                raise _enospc(filename)
            return real_save_file(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(C, "save_file", save_file)
    elif stage == "state.pt":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if VICTIM in str(f):
                Path(f).write_bytes(b"PK\x03\x04")
                raise _enospc(f)
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save)
    else:  # latest.json: the checkpoint folder is complete, pointing latest.json at it fails
        real_replace = A._fsync_replace

        def fsync_replace(tmp: Path, path: Path) -> None:
            if path.name == "latest.json" and VICTIM.encode() in tmp.read_bytes():
                raise _enospc(path)
            real_replace(tmp, path)

        monkeypatch.setattr(A, "_fsync_replace", fsync_replace)


def _overrides(rel, train: Path) -> list[str]:
    return rel.pretrain_overrides(train, 5, "ckpt_every=2", "keep_last=10")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus, rel) -> dict[str, torch.Tensor]:
    """The final weights of the same run, never interrupted."""
    out = tmp_path_factory.mktemp("ref") / "run"
    Trainer(PretrainTask(load_pretrain_config(None, _overrides(rel, tiny_corpus[0]))), out).fit()
    return load_file(str(out / "checkpoints" / "step-0000005" / "model.safetensors"))



def test_the_oom_advice_can_be_followed_with_resume(tmp_path, tiny_corpus, rel, caplog) -> None:
    """Lowering device_seconds (accumulation rises, the batch stays) and resuming works."""
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 5))
    first = Trainer(PretrainTask(cfg), tmp_path / "run")
    batches = iter(first.loader)
    for _ in range(3):  # then out of memory
        first.train_step(batches)
    first.save("step-0000003")
    first.close()
    lower = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 5, "device_seconds=2"))
    with caplog.at_level(logging.WARNING):
        resumed = Trainer(PretrainTask(lower), tmp_path / "run", resume=True)
    assert resumed.accumulation == 2 and resumed.step == 3
    assert "sampler resumed with another layout" in caplog.text
    assert "resuming in another layout (device_seconds: 4.0 -> 2.0): batches of 4 s as before" in caplog.text
    assert resumed.fit()["step"] == 5


@pytest.mark.parametrize("stage", ["model.safetensors", "state.pt", "latest.json"])
def test_full_disk_during_a_checkpoint_keeps_the_previous_one(stage, tmp_path, tiny_corpus, rel, monkeypatch,
                                                              reference) -> None:
    cfg = load_pretrain_config(None, _overrides(rel, tiny_corpus[0]))
    trainer = Trainer(PretrainTask(cfg), tmp_path / "run")
    with monkeypatch.context() as m:
        _fill_disk(m, stage)
        with pytest.raises(CheckpointError, match=rf"could not write checkpoint .*{VICTIM} \(\[Errno 28\] No space "
                                                  rf"left on device.*the latest complete checkpoint is still "
                                                  rf".*step-0000002\. Free space .* --resume"):
            trainer.fit()
    ckpts = tmp_path / "run" / "checkpoints"
    assert not list(ckpts.glob(".tmp-*")) and not list(ckpts.glob(".*.tmp")), list(ckpts.iterdir())
    latest = RunDir(tmp_path / "run").latest()
    assert latest is not None and latest.name == "step-0000002"
    model, _ = load_model(latest)  # verified by size and SHA-256
    info, state = load_trainer_state(latest)
    assert info["step"] == 2 and state is not None
    assert (ckpts / VICTIM).exists() == (stage == "latest.json")  # complete, just not pointed at
    # space freed: --resume continues from step 2 and ends where an uninterrupted run ends
    summary = Trainer(PretrainTask(cfg), tmp_path / "run", resume=True).fit()
    assert summary["step"] == 5
    got = load_file(str(ckpts / "step-0000005" / "model.safetensors"))
    assert all(torch.equal(got[k], reference[k]) for k in reference)


@pytest.mark.parametrize("log_name", ["train.jsonl", "valid.jsonl", "tb"])
def test_full_disk_while_logging_names_the_log_and_the_resume(log_name, tmp_path, tiny_corpus, rel, monkeypatch,
                                                              caplog) -> None:
    """A full disk as a step's record is appended to ``train.jsonl`` or ``valid.jsonl`` (after part of the line was
    written), or as TensorBoard's events are: one line naming the file, the problem and the way on (it was
    "[Errno 28] No space left on device" alone); the run then resumes to an uninterrupted run's records."""
    import earful.train.monitor as M

    train, valid = tiny_corpus
    overrides = rel.pretrain_overrides(train, 5, f"data.valid={valid}", "valid_every=2", "ckpt_every=2",
                                       f"tensorboard={log_name == 'tb'}")
    out = tmp_path / "run"
    victim = out / log_name
    from torch.utils.tensorboard import SummaryWriter

    real_open, real_add = open, SummaryWriter.add_scalar

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if Path(path) == victim and "a" in mode and victim.exists() and len(victim.read_text().splitlines()) == 1:
            def write(text: str) -> int:
                f.buffer.write(text[:5].encode())  # part of the record reaches the disk
                f.close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write reports it: no file named
            f.write = write
        return f

    def full_tb(self, tag, value, global_step=None, *args, **kwargs):
        if global_step == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_add(self, tag, value, global_step, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(M, "open", full_open, raising=False)
        m.setattr(SummaryWriter, "add_scalar", full_tb)
        assert main(["pretrain", *overrides, "--out", str(out)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(victim) in errors[0] and "No space left on device" in errors[0] and \
        "--resume" in errors[0], errors
    assert main(["pretrain", *overrides, "--out", str(out), "--resume"]) == 0
    assert [r["step"] for r in rel.read_jsonl(out / "train.jsonl")] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in rel.read_jsonl(out / "valid.jsonl")] == [2, 4, 5]
