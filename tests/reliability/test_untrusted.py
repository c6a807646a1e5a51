"""Untrusted files: checkpoints load through safetensors or ``torch.load(weights_only=True)``; a pickle
carrying code is refused with a clear message (``earful import-hf --trust-pickle`` is the explicit opt-in);
a truncated or tampered file — size or SHA-256 differing from what was recorded at save — is detected."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from earful.checkpoint import MODEL_FILE, STATE_FILE, CheckpointError, file_record, load_model, safe_torch_load
from earful.cli import main
from earful.interop.hf import export_hf
from earful.model import Wav2Vec2ForPreTraining, load_model_config
from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train.engine import Trainer
from earful.train.recipe import layout_of, recipe_of
from earful.train.state import TRAINER_FILE, RunDir, load_trainer_state


class Payload:
    """Unpickling this runs a shell command (it creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with one training checkpoint (tiny model, plausible training state)."""
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(load_model_config("tiny"))
    opt = torch.optim.AdamW(model.parameters())
    root = tmp_path_factory.mktemp("untrusted") / "run"
    RunDir(root).save("init", model, state=None, trainer={"step": 0}, make_latest=False)  # as every run has
    RunDir(root).save("step-0000002", model, state={"optimizer": opt.state_dict(), "rng_cpu": torch.get_rng_state()},
                      trainer={"step": 2})
    return root


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run" / "checkpoints" / "step-0000002"


def _rerecord(ckpt: Path) -> None:
    """What a careful attacker does: record the new state.pt's size and hash in trainer.json."""
    info = json.loads((ckpt / TRAINER_FILE).read_text())
    info["files"][STATE_FILE] = file_record(ckpt / STATE_FILE)
    (ckpt / TRAINER_FILE).write_text(json.dumps(info))


def test_a_pickle_carrying_code_is_refused_everywhere(run_dir, tmp_path, tiny_corpus, rel) -> None:
    marker = tmp_path / "PWNED"
    ckpt = _copy(run_dir, tmp_path)
    torch.save({"optimizer": Payload(marker)}, ckpt / STATE_FILE)
    _rerecord(ckpt)
    with pytest.raises(CheckpointError, match=r"state.pt: refusing to unpickle.*could run code.*posix.system"):
        safe_torch_load(ckpt / STATE_FILE)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle"):
        load_trainer_state(ckpt)
    # and through a run's --resume (its trainer.json made to match the run's recipe, so the state is reached)
    cfg = load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 4))
    info = json.loads((ckpt / TRAINER_FILE).read_text())
    (ckpt / TRAINER_FILE).write_text(json.dumps({**info, "recipe": recipe_of(cfg), "layout": layout_of(cfg, 1)}))
    with pytest.raises(CheckpointError, match=r"step-0000002/state.pt: refusing to unpickle"):
        Trainer(PretrainTask(cfg), tmp_path / "run", resume=True)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"earful never writes such a file as a training state written by "
                                              r"earful: it was replaced; resume from another checkpoint"):
        load_trainer_state(ckpt)


def _hf_folder(tmp_path: Path, extra: object) -> tuple[Path, dict[str, torch.Tensor]]:
    """A transformers folder whose weights are a ``pytorch_model.bin`` holding ``extra`` besides tensors."""
    torch.manual_seed(0)
    hf = export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "hf")
    weights = load_file(str(hf / "model.safetensors"))
    (hf / "model.safetensors").unlink()
    torch.save({**weights, "args": extra}, hf / "pytorch_model.bin")
    return hf, weights


def test_import_hf_refuses_code_and_trusts_only_on_request(tmp_path, caplog) -> None:
    marker = tmp_path / "PWNED"
    hf, _ = _hf_folder(tmp_path / "evil", Payload(marker))
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 2
    assert "pytorch_model.bin: refusing to unpickle" in caplog.text and "--trust-pickle" in caplog.text
    assert not marker.exists() and not (tmp_path / "ckpt").exists()
    # a fairseq-style file (an argparse.Namespace beside the tensors): refused, then loaded on request
    hf, weights = _hf_folder(tmp_path / "fairseq", argparse.Namespace(arch="wav2vec2"))
    caplog.clear()
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 2
    assert "GLOBAL argparse.Namespace. Only if you trust its origin" in caplog.text
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt"), "--trust-pickle"]) == 0
    assert "unpickling without restrictions (--trust-pickle)" in caplog.text
    model, info = load_model(tmp_path / "ckpt")
    assert info["kind"] == "pretraining"
    torch.manual_seed(0)
    ref = Wav2Vec2ForPreTraining(load_model_config("tiny"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))


@pytest.mark.parametrize("target, damage, message", [
    (MODEL_FILE, "truncate", r"model.safetensors: size \d+ bytes, expected \d+ \(truncated or replaced\)"),
    (MODEL_FILE, "flip", r"model.safetensors: SHA-256 differs from the one recorded at save"),
    (STATE_FILE, "truncate", r"state.pt: size \d+ bytes, expected \d+ \(truncated or replaced\)"),
    (STATE_FILE, "flip", r"state.pt: SHA-256 differs from the one recorded at save"),
    (STATE_FILE, "truncate-rerecorded", r"state.pt: cannot read this torch file \(truncated or corrupt\?\)"),
    (TRAINER_FILE, "truncate", r"trainer.json: corrupt JSON"),
    ("model.json", "truncate", r"model.json: corrupt JSON"),
    ("model.json", "garbage", r"model.json: unreadable \('utf-8' codec can't decode"),
    (MODEL_FILE, "delete", r"model.safetensors: missing"),
])
def test_truncated_or_tampered_files_are_detected(run_dir, tmp_path, target, damage, message) -> None:
    ckpt = _copy(run_dir, tmp_path)
    path = ckpt / target
    data = bytearray(path.read_bytes())
    if damage == "delete":
        path.unlink()
    elif damage == "garbage":  # not text at all
        path.write_bytes(b"\xff\xfe\x00\x9c" * 16)
    elif damage.startswith("truncate"):
        path.write_bytes(bytes(data[: len(data) // 2]))
        if damage == "truncate-rerecorded":
            _rerecord(ckpt)
    else:  # one byte changed, same size: only the hash can tell
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=message):
        load_model(ckpt)  # what evaluation, fine-tuning's --init and export read
        load_trainer_state(ckpt)  # and what --resume reads besides


@pytest.mark.parametrize("edit, message", [
    (lambda info: info.pop("files"), r"model.json: no size and SHA-256 of model.safetensors \(\"files\"\)"),
    (lambda info: info["files"].pop(MODEL_FILE), r"model.json: no size and SHA-256 of model.safetensors"),
    (lambda info: info["files"][MODEL_FILE].pop("sha256"), r"model.json: no size and SHA-256 of model.safetensors"),
    (lambda info: info.pop("model"), r"model.json: no \"model\" \(the model's config\)"),
    (lambda info: info.update(vocab={"letters": ["a"]}), r"model.json: \"vocab\" holds no list of \"symbols\""),
], ids=["no-files", "no-weights-record", "no-hash", "no-model", "no-symbols"])
def test_a_model_json_missing_what_earful_1_records_is_refused(run_dir, tmp_path, edit, message) -> None:
    """Format earful-1 always records the weights' size and hash: without them the check is not skipped."""
    ckpt = _copy(run_dir, tmp_path)
    info = json.loads((ckpt / "model.json").read_text())
    edit(info)
    (ckpt / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=message):
        load_model(ckpt)


def test_unreadable_hf_safetensors_is_a_checkpoint_error(tmp_path) -> None:
    torch.manual_seed(0)
    hf = export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "hf")
    data = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[: len(data) // 3])
    from earful.interop.hf import import_hf

    with pytest.raises(CheckpointError, match=r"model.safetensors: unreadable safetensors file"):
        import_hf(hf)


def test_a_checkpoint_replaced_while_it_loads_gives_the_weights_its_record_names(tmp_path, monkeypatch) -> None:
    """load_model read model.json, hashed model.safetensors against it, then read the weights again to load them:
    a checkpoint written again at the same path in between (a training's next save, atomic) gave the new weights
    with the old record (whose hash a fine-tuning's init check and an evaluation's summary trust). The weights file
    is now opened once, verified and loaded through that descriptor: the weights the returned record names."""
    import earful.checkpoint as ckpt_module
    from earful.checkpoint import save_model

    torch.manual_seed(0)
    ckpt = save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    first, record = load_file(str(ckpt / MODEL_FILE)), file_record(ckpt / MODEL_FILE)
    newer = Wav2Vec2ForPreTraining(load_model_config("tiny"))  # other weights (the seed moved on)
    real = ckpt_module.verify_weights

    def checked_then_replaced(*a, **k):  # after the weights were verified, before they are loaded
        real(*a, **k)
        save_model(ckpt, newer)

    monkeypatch.setattr(ckpt_module, "verify_weights", checked_then_replaced)
    model, info = load_model(ckpt)
    assert info["files"][MODEL_FILE] == record  # the record read first, of the first weights
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], first[k]) for k in first)  # were the newer ones


def test_a_weights_file_larger_than_its_record_is_refused_before_it_is_read(tmp_path, monkeypatch) -> None:
    """The size recorded is checked before a byte of the weights is read or hashed (a multi-GB file put in a
    checkpoint's place was read whole first), and a model.json of another format is named as such, before the
    weights are looked for."""
    import earful.checkpoint as ckpt_module
    from earful.checkpoint import save_model

    ckpt = save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    with open(ckpt / MODEL_FILE, "ab") as f:
        f.write(b"\0" * 1_000_000)

    def no_hash(*a, **k):
        raise AssertionError("hashed before the size was checked")

    monkeypatch.setattr(ckpt_module, "sha256", no_hash)
    with pytest.raises(CheckpointError, match="size .* bytes, expected"):
        load_model(ckpt)
    info = json.loads((ckpt / "model.json").read_text())
    (ckpt / "model.json").write_text(json.dumps({**info, "format": "earful-model-0"}))
    (ckpt / MODEL_FILE).unlink()
    with pytest.raises(CheckpointError, match="format 'earful-model-0'"):
        load_model(ckpt)


def test_weights_load_from_their_bytes_where_no_descriptor_path_exists(tmp_path, monkeypatch) -> None:
    """Without /proc/self/fd or /dev/fd the opened weights are loaded from their bytes: the same tensors."""
    import earful.checkpoint as ckpt_module
    from earful.checkpoint import save_model

    torch.manual_seed(0)
    ckpt = save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    monkeypatch.setattr(ckpt_module, "_descriptor_path", lambda opened: None)
    loaded = load_model(ckpt)[0].state_dict()
    saved = load_file(str(ckpt / MODEL_FILE))
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_weights_replaced_after_their_record_was_read_are_named_as_changed_for_a_caller_that_hashed_them(
        tmp_path, monkeypatch) -> None:
    """With the hashes a caller took (a probe's fingerprint), weights written again after model.json was read are
    said to have changed since hashed (run again), not to be tampered with or corrupt."""
    import earful.checkpoint as ckpt_module
    from earful.checkpoint import INFO_FILE, save_model
    from earful.data.digest import sha256

    ckpt = save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    expect = {"weights": sha256(ckpt / MODEL_FILE), "info": sha256(ckpt / INFO_FILE)}
    real = ckpt_module.verify_file

    def replaced_first(path, record, opened=None):  # the presence check, after model.json was read
        if record is None and opened is None:
            save_model(tmp_path / "other", Wav2Vec2ForPreTraining(load_model_config("tiny")))
            os.replace(tmp_path / "other" / MODEL_FILE, ckpt / MODEL_FILE)
        return real(path, record, opened)

    monkeypatch.setattr(ckpt_module, "verify_file", replaced_first)
    with pytest.raises(CheckpointError, match="model.safetensors changed since hashed .*run again"):
        load_model(ckpt, expect=expect)


def test_a_descriptor_path_naming_another_file_is_not_used(tmp_path, monkeypatch) -> None:
    """A /dev/fd without the process's descriptors (FreeBSD without fdescfs) names no file, or another: the weights
    are then loaded from the bytes of the file opened."""
    import earful.checkpoint as ckpt_module
    from earful.checkpoint import save_model

    ckpt = save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    other = tmp_path / "other"
    other.write_bytes(b"x")
    real = os.stat
    monkeypatch.setattr(ckpt_module.os, "stat", lambda p, *a, **k: real(other) if str(p).startswith(("/proc/self/fd/",
                        "/dev/fd/")) else real(p, *a, **k))
    with open(ckpt / MODEL_FILE, "rb") as f:
        assert ckpt_module._descriptor_path(f) is None
    loaded, saved = load_model(ckpt)[0].state_dict(), load_file(str(ckpt / MODEL_FILE))
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_load_weights_gives_the_weights_it_verified_when_the_file_is_replaced_meanwhile(tmp_path, monkeypatch):
    """load_weights (a run's init, for the distance from it) verified the file, then read it again by path: it
    checks and loads through one descriptor now, as load_model."""
    import earful.checkpoint as ckpt_module
    from earful.checkpoint import load_weights, save_model

    torch.manual_seed(0)
    ckpt = save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    first = load_file(str(ckpt / MODEL_FILE))
    real = ckpt_module.verify_weights

    def checked_then_replaced(*a, **k):
        real(*a, **k)
        save_model(ckpt, Wav2Vec2ForPreTraining(load_model_config("tiny")))

    monkeypatch.setattr(ckpt_module, "verify_weights", checked_then_replaced)
    loaded = load_weights(ckpt)
    assert all(torch.equal(loaded[k], first[k]) for k in first)
