"""Run folders nobody can corrupt: plain names only, one writer per folder, no silent restart, a recipe check on
every resume, settings validated at load time, and one-line errors (issue 21). Each test failed on the code
before it."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import earful.checkpoint as C
from earful.checkpoint import CheckpointError, load_model, save_model
from earful.cli import main
from earful.config import ConfigError
from earful.lock import FolderBusy
from earful.model import Wav2Vec2ForPreTraining, load_model_config
from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.study.config import load_study
from earful.train.engine import Trainer
from earful.train.state import RunDir


def _cfg(rel, train: Path, steps: int, *extra: str):
    return load_pretrain_config(None, rel.pretrain_overrides(train, steps, "ckpt_every=2", "keep_last=10", *extra))


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_corpus, rel) -> Path:
    """An uninterrupted 4-step run with a checkpoint every 2 steps."""
    out = tmp_path_factory.mktemp("finished") / "run"
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4)), out).fit()
    return out


# ---------------------------------------------------------------------- 1. names become paths
def test_names_that_would_leave_the_output_folder_are_refused(tmp_path) -> None:
    study = tmp_path / "s.yaml"
    for bad, key in (("label_sets: {'../../../../X': a.jsonl}", r"corpus\.label_sets\['\.\./\.\./\.\./\.\./X'\]"),
                     ("label_sets: {'..': a.jsonl}", r"corpus\.label_sets\['\.\.'\]"),
                     ("test: {'a/b': t.jsonl}", r"corpus\.test\['a/b'\]")):
        study.write_text(f"grid: [8]\ncorpus: {{{bad}}}\n")
        with pytest.raises(ConfigError, match=rf"s\.yaml: {key}=.*not a plain name"):
            load_study(study)
    study.write_text("grid: [{batch_seconds: 8, tag: ../x}]\n")
    with pytest.raises(ConfigError, match=r"grid\[0\]\.tag='\.\./x': not a plain name"):
        load_study(study)
    with pytest.raises(ConfigError, match="checkpoint name='../x': not a plain name"):
        RunDir(tmp_path / "run").save("../x", Wav2Vec2ForPreTraining(load_model_config("tiny")), state=None,
                                      trainer={"step": 0})


def test_latest_json_cannot_point_outside_the_run(tmp_path, finished) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.copytree(finished / "checkpoints" / "step-0000004", tmp_path / "elsewhere")  # a complete checkpoint
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"name": "../../elsewhere"}))
    with pytest.raises(CheckpointError, match=r"latest\.json: corrupt .*'\.\./\.\./elsewhere': not a plain name"):
        RunDir(run).latest()


# ---------------------------------------------------------------------- 2. no silent restart
def test_a_lost_latest_json_resumes_from_the_furthest_checkpoint_that_verifies(tmp_path, tiny_corpus, rel,
                                                                              finished, caplog) -> None:
    out = tmp_path / "run"
    first = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4)), out)
    batches = iter(first.loader)
    for step in (1, 2, 3):
        first.train_step(batches)
        if step in (2, 3):
            first.save(f"step-{step:07d}")
    first.close()
    (out / "checkpoints" / "latest.json").unlink()
    (out / "checkpoints" / "step-0000003" / "model.safetensors").write_bytes(b"\0" * 64)  # damaged too
    with pytest.raises(ValueError, match="already holds checkpoints: add --resume"):  # never step 0 over them
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4)), out)
    with caplog.at_level(logging.WARNING):
        resumed = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4)), out, resume=True)
    assert resumed.step == 2
    assert "step-0000003: cannot resume from it" in caplog.text
    assert "has no latest.json: resuming from the furthest checkpoint that verifies, step-0000002" in caplog.text
    resumed.fit()
    a, b = _weights(finished, "step-0000004"), _weights(out, "step-0000004")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- 3. one writer per run folder
def test_a_second_process_on_one_run_folder_is_refused(tmp_path, tiny_corpus, rel) -> None:
    out = tmp_path / "run"
    first = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), out)
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    with pytest.raises(FolderBusy, match=rf"another earful run is running in this folder \({re.escape(holder)}\)"):
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), out, resume=True)
    code = ("import sys; from earful.cli import main; sys.exit(main(sys.argv[1:]))")
    args = ["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 2), "--out", str(out), "--resume"]
    other = subprocess.run([os.sys.executable, "-c", code, *args], cwd=rel.ROOT, capture_output=True, text=True,
                           timeout=120)
    assert other.returncode == 2 and f"running in this folder ({holder})" in other.stderr
    first.fit()  # the first one is not disturbed, and lets go when it ends
    assert Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), out, resume=True).step == 2


@pytest.mark.parametrize("lock", ["hold_folder(sys.argv[1])",  # a run's
                                  "lock_file(Path(sys.argv[1]) / '.lock', shared=True)"])  # a cache entry writer's
def test_a_killed_writers_forked_children_do_not_keep_its_folder_locked(lock, tmp_path) -> None:
    """The writer forks a child (as a DataLoader worker) and dies: the folder is free at once. The child shared
    the lock's open file, so the folder had stayed locked, naming the dead pid, until the child ended (a lock of
    lock_file's, not hold_folder's, still was)."""
    from earful.lock import hold_folder

    # the child says it runs (a file) once its code does, i.e. after the fork handlers: under load the parent could
    # exit before the child was first scheduled, and the folder was checked while it was still locked
    code = ("import os, sys, time; from pathlib import Path; from earful.lock import hold_folder, lock_file; "
            f"f = {lock}; pid = os.fork()\n"
            "if pid == 0:\n    open(sys.argv[2], 'w').close(); time.sleep(30); os._exit(0)\n"
            "print(pid, flush=True); os._exit(0)")
    started = tmp_path / "child-started"
    writer = subprocess.Popen([os.sys.executable, "-c", code, str(tmp_path / "run"), str(started)],
                              stdout=subprocess.PIPE, text=True)
    child = int(writer.stdout.readline())
    try:
        writer.wait(timeout=60)
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        state = Path(f"/proc/{child}/status").read_text().split("State:")[1].split()[0]
        assert started.exists() and state in ("S", "R", "D")  # it lives on
        hold_folder(tmp_path / "run").close()  # and the folder is free
    finally:
        os.kill(child, 9)
        writer.stdout.close()


# ---------------------------------------------------------------------- 4. recipe check on resume
def test_resume_with_another_recipe_is_refused_or_recorded(tmp_path, tiny_corpus, rel, caplog) -> None:
    out = tmp_path / "run"
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), out).fit()
    config = (out / "config.yaml").read_text()
    changed = _cfg(rel, tiny_corpus[0], 2, "batch_seconds=8", "optim.lr=1e-2")
    with pytest.raises(ValueError, match=r"--resume with another recipe than the run was trained with \(batch_seconds"
                                         r": 4\.0 -> 8\.0, optim\.lr: 0\.0005 -> 0\.01\).*--allow-changes"):
        Trainer(PretrainTask(changed), out, resume=True)
    changed.max_steps = 3
    with caplog.at_level(logging.WARNING):
        Trainer(PretrainTask(changed), out, resume=True, allow_changes=True).fit()
    assert "same batch" not in caplog.text  # it is not the same batch
    assert (out / "config.yaml").read_text() == config  # the first segment's config stays as it was
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["segment"] for h in history] == [1, 2] and history[1]["step"] == 2
    assert history[1]["recipe_changes"]["batch_seconds"] == [4.0, 8.0] and history[1]["config"] == "config-2.yaml"
    assert "batch_seconds: 8.0" in (out / "config-2.yaml").read_text()


def test_a_resume_in_a_folder_of_another_kind_of_run_says_so(tmp_path, tiny_corpus, tones, rel, caplog) -> None:
    """`earful pretrain --resume` in a fine-tuning's folder said "another seed", then, seed matched, "another
    recipe ... (and 56 more) ... --allow-changes", and only with --allow-changes failed loading the weights; a
    fine-tuning resuming a pre-training's folder said "not a CTC checkpoint". Both now say the folder holds another
    kind of run, before anything else, whatever the options."""
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert main(["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 1), "--out", str(pre)]) == 0
    assert main(["finetune", *rel.finetune_overrides(tones, 1), "--out", str(fine)]) == 0
    cases = (("pretrain", rel.pretrain_overrides(tiny_corpus[0], 2), fine, "'ctc'", "pre-training", "'pretraining'"),
             ("finetune", rel.finetune_overrides(tones, 2), pre, "'pretraining'", "fine-tuning", "'ctc'"))
    for command, overrides, out, holds, task, makes in cases:
        for extra in ([], ["--allow-changes"]):
            caplog.clear()
            assert main([command, *overrides, "--out", str(out), "--resume", *extra]) == 2
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert errors == [f"{out}: its checkpoints hold a {holds} model, and this {task} makes a {makes} model: "
                              "the folder holds another kind of run, which it cannot resume; use another --out"], errors


def test_history_records_only_resumes_that_trained(tmp_path, tiny_corpus, rel) -> None:
    """A resume that fails to load its checkpoint adds no segment; one stopped before its first checkpoint is
    replaced by the next, or removed by a resume with the recipe it interrupted (each had left a segment that
    never trained: the history said the lr changed, and the run trained with the old one)."""
    out = tmp_path / "run"
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), out).fit()
    state = out / "checkpoints" / "step-0000002" / "state.pt"
    good = state.read_bytes()
    state.write_bytes(good[:-10])
    changed = _cfg(rel, tiny_corpus[0], 4, "optim.lr=1e-2")
    with pytest.raises(CheckpointError):
        Trainer(PretrainTask(changed), out, resume=True, allow_changes=True)
    assert len((out / "history.jsonl").read_text().splitlines()) == 1 and not (out / "config-2.yaml").exists()
    state.write_bytes(good)
    Trainer(PretrainTask(changed), out, resume=True, allow_changes=True).close()  # stopped before step 3
    assert (out / "config-2.yaml").exists()
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), out, resume=True).close()  # the recipe it trained with
    assert len((out / "history.jsonl").read_text().splitlines()) == 1 and not (out / "config-2.yaml").exists()
    Trainer(PretrainTask(changed), out, resume=True, allow_changes=True).close()  # stopped before step 3 again
    again = _cfg(rel, tiny_corpus[0], 4, "optim.lr=2e-2")
    Trainer(PretrainTask(again), out, resume=True, allow_changes=True).fit()
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [(h["segment"], h["step"]) for h in history] == [(1, 0), (2, 2)]
    assert history[1]["recipe_changes"]["optim.lr"] == [0.0005, 0.02]


def test_an_edited_or_reordered_manifest_is_another_recipe(tmp_path, tiny_corpus, rel) -> None:
    manifest = tmp_path / "train.jsonl"
    lines = Path(tiny_corpus[0]).read_text().splitlines()
    manifest.write_text("\n".join(lines) + "\n")
    Trainer(PretrainTask(_cfg(rel, manifest, 2)), tmp_path / "run").fit()
    manifest.write_text("\n".join(reversed(lines)) + "\n")  # the same utterances, another order: other batches
    with pytest.raises(ValueError, match=r"another recipe .*data\.train\.sha256"):
        Trainer(PretrainTask(_cfg(rel, manifest, 4)), tmp_path / "run", resume=True)


def test_a_finetuning_records_the_weights_it_started_from_and_resumes_only_from_them(tmp_path, tiny_corpus, tones,
                                                                                     rel) -> None:
    """``--init runs/pt`` (a run folder) resolved to its latest checkpoint, but trainer.json and the model card
    showed only the folder, which resolves to another checkpoint once the pre-training goes on; and the recipe
    was the same from scratch (a BASE) and from a pre-trained tiny model. Now trainer.json and the card show the
    checkpoint and its weights' SHA-256, which the recipe holds: a resume with the same --init keeps the weights
    the run recorded (the folder has moved on since), one from other weights is refused, one from the same
    weights in a moved folder is not."""
    from earful.finetune.config import load_finetune_config
    from earful.finetune.task import FinetuneTask
    from earful.interop.card import model_card
    from earful.train.recipe import recipe_hash
    from earful.train.state import read_trainer_info

    pt = tmp_path / "pt"
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), pt).fit()
    first = pt / "checkpoints" / "step-0000002"
    digest = C.sha256(first / C.MODEL_FILE)

    def finetune(out: Path, init: Path | str, resume: bool = False) -> dict:
        cfg = load_finetune_config(None, rel.finetune_overrides(tones, 1))
        cfg.init = str(init)
        Trainer(FinetuneTask(cfg), out, resume=resume).fit()
        return read_trainer_info(out / "checkpoints" / "step-0000001")

    info = finetune(tmp_path / "ft", pt)
    assert (info["init"], info["init_checkpoint"], info["init_sha256"]) == (str(pt), str(first), digest)
    assert info["recipe"]["init.sha256"] == digest and str(pt) not in json.dumps(info["recipe"])
    card = model_card(tmp_path / "ft" / "checkpoints" / "step-0000001", 0)
    assert f"| initialised from | `{first}` (SHA-256 `{digest}`; given as `{pt}`) |" in card
    scratch = finetune(tmp_path / "scratch", "scratch")
    assert scratch["init_sha256"] is None and recipe_hash(scratch["recipe"]) != recipe_hash(info["recipe"])

    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4)), pt, resume=True, allow_changes=True).fit()  # moves on
    resumed = finetune(tmp_path / "ft", pt, resume=True)  # the command it started with: the weights it recorded
    assert (resumed["init_checkpoint"], resumed["init_sha256"]) == (str(first), digest)
    with pytest.raises(ValueError, match=rf"another recipe .*init\.sha256: '{digest}' -> '[0-9a-f]{{64}}'"):
        finetune(tmp_path / "ft", pt / "checkpoints" / "step-0000004", resume=True)
    moved = tmp_path / "elsewhere"
    shutil.copytree(first, moved)
    assert finetune(tmp_path / "ft", moved, resume=True)["init_sha256"] == digest  # the same weights


# ---------------------------------------------------------------------- 5-6. settings validated at load time
@pytest.mark.parametrize("override, message", [
    ("batch_seconds=0", r"batch_seconds=0\.0: expected a finite number of seconds > 0"),
    ("batch_seconds=.inf", r"batch_seconds=inf: expected a finite number of seconds > 0"),
    ("batch_seconds=-8", r"batch_seconds=-8\.0: expected a finite number"),
    ("batch_seconds=.nan", r"batch_seconds=nan: expected a finite number"),
    ("batch_seconds=1e308", r"batch_seconds=1e\+308 on 1 device\(s\) of device_seconds=4 needs 2\.5e\+307 "
                            r"micro-batches a step \(at most 100,000\)"),
    ("device_seconds=0", r"device_seconds=0\.0: expected a finite number of seconds > 0"),
    ("device_seconds=-1", r"device_seconds=-1\.0: expected a finite number of seconds > 0"),
    ("data.crop_seconds=-1", r"data\.crop_seconds=-1\.0: expected a finite number of seconds > 0 \(or null"),
    ("log_every=0", r"log_every=0: expected an integer >= 1"),
    ("seed=-1", r"seed=-1: expected an integer >= 0"),
    ("ckpt_every=0", r"ckpt_every=0: expected an integer >= 1"),
    # the schedule's settings, refused at load time, not when step 0 starts (after init was written)
    ("optim.cyclic_step_size=0", r"optim\.cyclic_step_size=0: expected an integer >= 1"),
    ("optim.tristage_ratios=[0.5,0.2,0.2]", r"optim\.tristage_ratios=\[0\.5, 0\.2, 0\.2\]: expected three fractions"),
    ("optim.lr=-1", r"optim\.lr=-1\.0: expected a finite number > 0"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(override, message, tiny_corpus, rel, tmp_path,
                                                          caplog) -> None:
    with pytest.raises(ConfigError, match=rf"command-line overrides: {message}"):
        load_pretrain_config(None, rel.pretrain_overrides(tiny_corpus[0], 2, override))
    rc = main(["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 2, override), "--out", str(tmp_path / "run")])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert rc == 2 and len(errors) == 1 and "\n" not in errors[0], errors
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("model.num_negatives=0", "model.num_negatives=0: expected an integer >= 1"),  # trained on a loss of 0
    ("model.logit_temperature=0", "model.logit_temperature=0.0: expected a finite number > 0"),  # NaN every step
    ("model.dropout=1.5", "model.dropout=1.5: expected a probability in [0, 1]"),  # torch's error, naming no key
    ("model.mask_length=0", "model.mask_length=0: expected an integer >= 1"),  # "raise min_masks"
    ("model.temperature_decay=1.5", "model.temperature_decay=1.5: expected a factor in (0, 1] a step"),
    # min() of an empty tensor at the first log interval (the codeword similarity)
    ("model.num_codevectors_per_group=1", "model.num_codevectors_per_group=1: expected an integer >= 2 (with one "
                                          "codeword a group"),
])
def test_model_settings_no_model_can_train_with_name_their_key(override, message, tiny_corpus, rel, tmp_path,
                                                               caplog) -> None:
    rc = main(["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 2, override), "--out", str(tmp_path / "run")])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert rc == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_an_integer_setting_of_inf_or_nan_names_its_key(value, tiny_corpus, rel, tmp_path, caplog) -> None:
    """It was an OverflowError's traceback (inf) or a line naming no key (nan)."""
    rc = main(["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 2, f"max_steps={value}"), "--out",
               str(tmp_path / "run")])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert rc == 2 and errors == [f"command-line overrides: config.max_steps: expected an integer, got {value[1:]}"
                                  ], errors  # where it came from, then the key


def test_yaml_files_that_say_two_things_or_are_not_utf8_are_named(tmp_path, caplog) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("max_steps: 3\nbatch_seconds: 8\nmax_steps: 5\n")
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("max_steps: 3\ntracking:\n  name: caf\xe9\n".encode("latin-1"))
    for config in (twice, binary):
        assert main(["pretrain", str(config), "--out", str(tmp_path / "run")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"{twice}:3:1: key 'max_steps' is given twice (first on line 1)",
                      f"{binary}: not UTF-8 text ('utf-8' codec can't decode byte 0xe9 in position 34: invalid "
                      "continuation byte)"], errors


def test_yaml_anchors_and_merge_keys_still_load(tmp_path) -> None:
    """Refusing a key given twice must not refuse YAML's own ways of repeating (a merge key was refused)."""
    from earful.config import read_yaml

    config = tmp_path / "merge.yaml"
    config.write_text("optim: &o {lr: 0.001, weight_decay: 0.01}\nbatch_seconds: 8\ndevice_seconds: 8\n"
                      "data: {crop_seconds: 2.0}\nextra:\n  <<: *o\n  lr: 0.002\n")
    assert read_yaml(config)["extra"] == {"lr": 0.002, "weight_decay": 0.01}
    config.write_text("optim: &o {lr: 0.002}\nbatch_seconds: 8\n")
    assert load_pretrain_config(config).optim.lr == 0.002
    config.write_text("? [a, b]\n: 1\n")
    with pytest.raises(ConfigError, match=r"merge\.yaml:1:3: found an unhashable key"):
        read_yaml(config)


def test_a_yaml_tag_is_one_line_naming_file_line_and_tag(tmp_path, caplog) -> None:
    marker = tmp_path / "PWNED"
    config = tmp_path / "evil.yaml"
    config.write_text(f"batch_seconds: 8\nmodel: !!python/object/apply:os.system ['touch {marker}']\n")
    rc = main(["pretrain", str(config), "--out", str(tmp_path / "run")])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert rc == 2 and len(errors) == 1 and not marker.exists()
    assert errors[0].startswith(f"{config}:2:8: could not determine a constructor for the tag") and \
        "python/object/apply:os.system" in errors[0]


def test_a_model_json_asking_for_10_million_layers_is_refused_before_anything_is_allocated(tmp_path) -> None:
    save_model(tmp_path / "m", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    huge = {**info, "model": {**info["model"], "num_layers": 10_000_000}}
    (tmp_path / "m" / "model.json").write_text(json.dumps(huge))
    with pytest.raises(CheckpointError, match=r"asks for 10000000 transformer and 7 CNN layers, the weights hold 2 "
                                              r"and 7"):
        load_model(tmp_path / "m")
    wide = {**info, "model": {**info["model"], "intermediate_size": 4_000_000_000}}
    (tmp_path / "m" / "model.json").write_text(json.dumps(wide))
    with pytest.raises(CheckpointError, match=r"does not fit the weights .*fc1\.weight: config \(4000000000, 64\), "
                                              r"weights \(128, 64\)"):
        load_model(tmp_path / "m")


def test_evaluating_an_empty_manifest_is_an_error(tmp_path, caplog) -> None:
    from earful.eval.vocab import CharVocab
    from earful.model import Wav2Vec2ForCTC

    save_model(tmp_path / "ctc", Wav2Vec2ForCTC(load_model_config("tiny"), 29), vocab=CharVocab().to_dict())
    (tmp_path / "empty.jsonl").write_text("")
    rc = main(["evaluate", str(tmp_path / "ctc"), str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "eval")])
    assert rc == 2 and "empty.jsonl: no utterances (an empty manifest)" in caplog.text
    assert not (tmp_path / "eval" / "summary.json").exists()


def test_a_validation_set_the_validation_batches_cannot_hold_names_valid_seconds(tmp_path, tiny_corpus, rel,
                                                                                 caplog) -> None:
    """It had said "longer than device_seconds=4 s … or a larger device_seconds", a setting that was not it."""
    overrides = rel.pretrain_overrides(tiny_corpus[0], 2, f"data.valid={tiny_corpus[1]}", "valid_seconds=0.5")
    assert main(["pretrain", *overrides, "--out", str(tmp_path / "run")]) == 2
    assert re.search(r"valid\.jsonl: \d+ of \d+ utterances cannot be batched \(\d+ longer than valid_seconds=0\.5 "
                     r"s\).*a larger valid_seconds \(the longest is [\d.]+ s\); or data\.max_seconds to leave "
                     r"longer utterances out on purpose \(counted\); or in pre-training, data\.crop_seconds at most "
                     r"valid_seconds \(the crop, 2 s,", caplog.text), caplog.text[-800:]  # validation crops too


@pytest.mark.parametrize("seconds", ["0", "-1", "nan"])
def test_evaluating_with_no_device_seconds_names_the_option(seconds, tmp_path, tiny_corpus, caplog) -> None:
    """It had said "batch_seconds=0.0", a setting evaluate does not have."""
    from earful.eval.vocab import CharVocab
    from earful.model import Wav2Vec2ForCTC

    save_model(tmp_path / "ctc", Wav2Vec2ForCTC(load_model_config("tiny"), 29), vocab=CharVocab().to_dict())
    rc = main(["evaluate", str(tmp_path / "ctc"), str(tiny_corpus[1]), "--out", str(tmp_path / "eval"),
               "--device-seconds", seconds, "--device", "cpu"])
    assert rc == 2 and "device_seconds (--device-seconds) = " in caplog.text and "batch_seconds" not in caplog.text


# ---------------------------------------------------------------------- 7. full disk, read-only folder
def test_a_full_disk_as_safetensors_reports_it_is_a_checkpoint_error(tmp_path, tiny_corpus, rel,
                                                                       monkeypatch) -> None:
    trainer = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4)), tmp_path / "run")
    real = C.save_file

    def save_file(tensors, filename, *args, **kwargs):
        if "step-0000004" in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28) at "
                                  f'path "{filename}"')
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(C, "save_file", save_file)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step-0000004 \(.*No space left on device"
                                              r".*the latest complete checkpoint is still .*step-0000002.*--resume"):
        trainer.fit()
    assert RunDir(tmp_path / "run").latest().name == "step-0000002"


def test_a_read_only_output_folder_is_one_line(tmp_path, tiny_corpus, rel, monkeypatch, caplog) -> None:
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)  # root ignores file modes: the denial is simulated
    rc = main(["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 2), "--out", str(tmp_path / "ro" / "run")])
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert rc == 2 and len(errors) == 1
    assert errors[0] == (f"{tmp_path / 'ro' / 'run'}: cannot write the run folder (Permission denied); nothing was "
                         "trained; choose a writable --out (or free space)")


# ---------------------------------------------------------------------- 8. a stopped run, as a study sees it
def test_a_stopped_multi_device_pretraining_stops_the_study(tmp_path, monkeypatch) -> None:
    """torchrun exits 1 when its workers stop on SIGTERM (earful exits 4): the study reads the checkpoint's
    ``stopped_by`` and stops (rerun to resume) instead of failing or marking the run done."""
    import earful.study.stages as S
    from earful.study.config import PlannedRun, StudyConfig

    run = PlannedRun(tag="16s", batch_seconds=16, devices=2, device_seconds=8, lr=1e-3, steps=338,
                     hours=1.5, seed=1)

    def torchrun(cmd, cwd):
        rdir = Path(cmd[cmd.index("--out") + 1])
        RunDir(rdir).save("step-0000120", Wav2Vec2ForPreTraining(load_model_config("tiny")), state=None,
                          trainer={"step": 120, "stopped_by": "SIGTERM"})
        return 1

    monkeypatch.setattr(S, "run_to_the_end", torchrun)
    monkeypatch.setattr(S, "pretrain_config", lambda study, run, root: load_pretrain_config(None, []))
    with pytest.raises(S.StudyStopped, match="pre-training 16s-seed1 stopped by SIGTERM; rerun the study"):
        S.run_pretraining_stage(StudyConfig(), run, tmp_path, tmp_path)
    assert not (tmp_path / "pretrain" / "16s-seed1" / "done.json").exists()


def test_a_transformers_config_asking_for_10_million_layers_is_refused_before_anything_is_allocated(tmp_path):
    from earful.interop.hf import export_hf, import_hf

    hf = export_hf(Wav2Vec2ForPreTraining(load_model_config("tiny")), tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10_000_000}))
    with pytest.raises(CheckpointError, match=r"config\.json: num_hidden_layers=10000000, the weights hold 2 layers"):
        import_hf(hf)
    (hf / "config.json").write_text(json.dumps({**config, "intermediate_size": 4_000_000_000}))
    with pytest.raises(CheckpointError, match=r"config\.json: the config does not fit the weights .*fc1\.weight"):
        import_hf(hf)


def test_a_fresh_start_rewrites_an_earlier_attempts_init(tmp_path, tiny_corpus, rel) -> None:
    """An attempt killed before its first checkpoint leaves checkpoints/init; a fresh start with another seed
    writes its own (distance_from_init and the random-init baselines read it), not the stale one."""
    first = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2, "seed=1")), tmp_path / "run")
    first.close()  # killed before its first step: only init was written
    stale = load_file(str(tmp_path / "run" / "checkpoints" / "init" / "model.safetensors"))
    second = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2, "seed=2")), tmp_path / "run")
    fresh = load_file(str(tmp_path / "run" / "checkpoints" / "init" / "model.safetensors"))
    step0 = {k: v.detach() for k, v in second.model.state_dict().items()}
    second.close()
    assert all(torch.equal(fresh[k], step0[k]) for k in fresh)
    assert not all(torch.equal(fresh[k], stale[k]) for k in fresh)


def test_a_cut_replacement_of_the_latest_checkpoint_is_restored_before_resuming(tmp_path, tiny_corpus, rel) -> None:
    """Killed between moving the latest checkpoint aside (.old-NAME-PID) and renaming its replacement into
    place: --resume restores it first, then resumes from it (before, latest.json named an incomplete folder)."""
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), tmp_path / "run").fit()
    ck = tmp_path / "run" / "checkpoints"
    name = json.loads((ck / "latest.json").read_text())["name"]
    (ck / name).rename(ck / f".old-{name}-12345")
    resumed = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), tmp_path / "run", resume=True)
    assert resumed.step == 2 and (ck / name / "trainer.json").exists()
    resumed.close()


# ---------------------------------------------------------------------- 9. which checkpoints a run keeps
def _scripted_validation(monkeypatch, losses: list[float]) -> None:
    """The pre-training validation returns ``losses`` in turn (one a validation)."""
    left = iter(losses)
    monkeypatch.setattr(PretrainTask, "validate", lambda self: {"loss": next(left), "contrastive": 0.0,
                                                                 "accuracy": 0.0})


def test_best_is_the_lowest_validation_loss_not_the_latest(tmp_path, tiny_corpus, rel, monkeypatch) -> None:
    """Validated every step at losses 3, 1, 2, 1.5: checkpoints/best is step 2's and stays so."""
    _scripted_validation(monkeypatch, [3.0, 1.0, 2.0, 1.5])
    out = tmp_path / "run"
    Trainer(PretrainTask(load_pretrain_config(None, rel.pretrain_overrides(
        tiny_corpus[0], 4, "valid_every=1", "ckpt_every=1", "keep_last=0"))), out).fit()
    assert [r["loss"] for r in rel.read_jsonl(out / "valid.jsonl")] == [3.0, 1.0, 2.0, 1.5]
    info = json.loads((out / "checkpoints" / "best" / "trainer.json").read_text())
    assert info["step"] == 2 and info["best"] == 1.0
    best, second, last = (_weights(out, n) for n in ("best", "step-0000002", "step-0000004"))
    assert all(torch.equal(best[k], second[k]) for k in best)
    assert not all(torch.equal(best[k], last[k]) for k in best)


@pytest.mark.parametrize("keep_last, steps_kept", [(2, [4, 5]), (0, [1, 2, 3, 4, 5])])
def test_keep_last_prunes_only_the_oldest_step_checkpoints(keep_last, steps_kept, tmp_path, tiny_corpus, rel,
                                                           monkeypatch) -> None:
    """A checkpoint every step of 5: keep_last=2 keeps the newest two step-* folders, 0 keeps them all; init, the
    milestone steps-1 and best (step 1's, the lowest loss) stay either way."""
    _scripted_validation(monkeypatch, [1.0, 2.0, 3.0, 4.0, 5.0])
    out = tmp_path / "run"
    Trainer(PretrainTask(load_pretrain_config(None, rel.pretrain_overrides(
        tiny_corpus[0], 5, "valid_every=1", "ckpt_every=1", f"keep_last={keep_last}", "ckpt_steps=[1]"))), out).fit()
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["best", "init", "latest.json", *(f"step-{s:07d}" for s in steps_kept), "steps-1"]
    assert json.loads((out / "checkpoints" / "best" / "trainer.json").read_text())["step"] == 1


@pytest.mark.parametrize("losses, best_step", [([3.0, 2.0, 1.0, 0.5], 2), ([1.0, 2.0, 0.5, 0.4], None)])
def test_a_resume_drops_the_checkpoints_of_the_steps_it_trains_again(losses, best_step, tmp_path, tiny_corpus, rel,
                                                                     monkeypatch, caplog) -> None:
    """Killed after step 3 wrote ``best`` and the milestone ``steps-3``, the run resumes from step 2 with another
    lr, whose validations never beat the best up to step 2. ``best`` (and ``steps-3``) of the discarded steps
    went; ``best`` is the resume checkpoint when step 2 held the best validation, else none is left (step 1's
    had no checkpoint). Before, ``best`` stayed the discarded step 3's, named nowhere in valid.jsonl."""
    out = tmp_path / "run"
    args = rel.pretrain_overrides(tiny_corpus[0], 4, "valid_every=1", "ckpt_every=2", "keep_last=0", "ckpt_steps=[3]")
    _scripted_validation(monkeypatch, losses[:3])
    with pytest.raises(StopIteration):  # killed at step 4's validation: step 3 wrote best and steps-3
        Trainer(PretrainTask(load_pretrain_config(None, args)), out).fit()
    assert json.loads((out / "checkpoints" / "best" / "trainer.json").read_text())["step"] == 3
    assert (out / "checkpoints" / "steps-3").exists()
    _scripted_validation(monkeypatch, [9.0, 9.0])
    with caplog.at_level(logging.WARNING):
        Trainer(PretrainTask(load_pretrain_config(None, [*args, "optim.lr=1e-2"])), out, resume=True,
                allow_changes=True).fit()
    assert "removed checkpoints of steps after the resume's step 2, which this run trains again: " in caplog.text
    assert [r["loss"] for r in rel.read_jsonl(out / "valid.jsonl")] == [*losses[:2], 9.0, 9.0]
    assert json.loads((out / "checkpoints" / "steps-3" / "trainer.json").read_text())["best"] == min(losses[:2])
    if best_step is None:
        assert not (out / "checkpoints" / "best").exists()
        assert "has no checkpoint left: checkpoints/best returns with the next validation below it" in caplog.text
    else:
        info = json.loads((out / "checkpoints" / "best" / "trainer.json").read_text())
        assert info["step"] == best_step and info["best"] == min(losses[:2])
        best, resumed = _weights(out, "best"), _weights(out, "step-0000002")
        assert all(torch.equal(best[k], resumed[k]) for k in best)


def test_resuming_a_finished_run_changes_nothing(tmp_path, tiny_corpus, rel, monkeypatch) -> None:
    """A finished run resumed as it was: no second end-of-run validation (valid.jsonl had its last record twice),
    no checkpoint rewritten."""
    _scripted_validation(monkeypatch, [3.0, 2.0, 9.0])
    out = tmp_path / "run"
    cfg = rel.pretrain_overrides(tiny_corpus[0], 3, "valid_every=2", "ckpt_every=2")
    Trainer(PretrainTask(load_pretrain_config(None, cfg)), out).fit()
    log_before = (out / "valid.jsonl").read_text()
    written = (out / "checkpoints" / "step-0000003" / "trainer.json").stat().st_mtime_ns
    summary = Trainer(PretrainTask(load_pretrain_config(None, cfg)), out, resume=True).fit()
    assert summary["step"] == 3 and (out / "valid.jsonl").read_text() == log_before
    assert (out / "checkpoints" / "step-0000003" / "trainer.json").stat().st_mtime_ns == written
    # a run cut short where it stands (step 2 of 4, --allow-changes max_steps=2) has not ended: its end's
    # validation runs
    out = tmp_path / "cut"
    longer = rel.pretrain_overrides(tiny_corpus[0], 4, "valid_every=3", "ckpt_every=2")
    _scripted_validation(monkeypatch, [])
    with pytest.raises(StopIteration):  # killed at step 3's validation: latest is step 2
        Trainer(PretrainTask(load_pretrain_config(None, longer)), out).fit()
    _scripted_validation(monkeypatch, [7.0])
    Trainer(PretrainTask(load_pretrain_config(None, [*longer, "max_steps=2"])), out, resume=True,
            allow_changes=True).fit()
    assert [(r["step"], r["loss"]) for r in rel.read_jsonl(out / "valid.jsonl")] == [(2, 7.0)]


def test_resuming_a_finished_run_records_no_history_segment(tmp_path, finished, tiny_corpus, rel) -> None:
    """A finished run resumed in another layout (device_seconds=2), or with another lr under --allow-changes,
    trains nothing: history.jsonl gains no segment and no config-2.yaml is written (a segment from step 4 on
    had said the run went on with them); one an earlier earful recorded so goes."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    history = (out / "history.jsonl").read_text()
    for extra, allow in ((["device_seconds=2"], False), (["optim.lr=2e-3"], True)):
        summary = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4, *extra)), out, resume=True,
                          allow_changes=allow).fit()
        assert summary["step"] == 4
        assert (out / "history.jsonl").read_text() == history and not (out / "config-2.yaml").exists()
    stale = {"segment": 2, "step": 4, "recipe_changes": {}, "layout_changes": {}, "config": "config-2.yaml"}
    (out / "history.jsonl").write_text(history + json.dumps(stale) + "\n")
    shutil.copy(out / "config.yaml", out / "config-2.yaml")
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4)), out, resume=True).fit()
    assert (out / "history.jsonl").read_text() == history and not (out / "config-2.yaml").exists()


def test_a_resume_cannot_change_what_no_checkpoint_can_continue(tmp_path, finished, tiny_corpus, rel) -> None:
    """Even with --allow-changes: another seed, a max_steps below the checkpoint's step, and (named, with the way
    out) another architecture, which had failed in load_state_dict with a dozen missing keys."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    with pytest.raises(ValueError, match=r"--resume with another seed \(seed: 1 -> 5\) cannot continue the run, even "
                                         r"with --allow-changes"):
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 6, "seed=5")), out, resume=True, allow_changes=True)
    with pytest.raises(ValueError, match=r"max_steps=3 is below the checkpoint's step 4; a resume cannot train "
                                         r"backwards"):
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 3)), out, resume=True, allow_changes=True)
    with pytest.raises(ValueError, match=r"step-0000004: cannot continue with these changes \(.*model\.num_layers: "
                                         r"2 -> 3.*\): the model: Error\(s\) in loading state_dict.*give this "
                                         r"checkpoint as its init"):
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 6, "model.num_layers=3")), out, resume=True,
                allow_changes=True)


def _folder(root: Path) -> dict[str, bytes]:
    """Every file of a run folder with its bytes (the lock file aside: it comes and goes with its writer)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("rows", [lambda rows: rows + [{**r, "id": r["id"] + "-again"} for r in rows[:8]],
                                  lambda rows: rows[:16]], ids=["more", "fewer"])
def test_a_resume_with_another_training_set_starts_a_fresh_epoch_of_it(rows, tmp_path, tiny_corpus, rel, monkeypatch,
                                                                       caplog) -> None:
    """--resume --allow-changes with a training manifest of more or fewer rows continues the weights, optimizer and
    step, the data from a fresh epoch of the new manifest (before: "cannot resume sampler: saved
    num_utterances=24, this run has 32"); without --allow-changes the recipe check refuses it. The continuation
    resumes exactly in turn: stopped at step 5 and resumed, it ends as an uninterrupted continuation does."""
    other = rel.write_rows(tmp_path / "other.jsonl", rows(rel.manifest_rows(Path(tiny_corpus[0]))))
    start = tmp_path / "start"
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), start).fit()
    epoch = json.loads((start / "checkpoints" / "step-0000002" / "trainer.json").read_text())["epoch"]
    with pytest.raises(ValueError, match=r"another recipe .*data\.train\.sha256"):
        Trainer(PretrainTask(_cfg(rel, other, 6)), start, resume=True)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    shutil.copytree(start, whole)
    shutil.copytree(start, cut)
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(PretrainTask(_cfg(rel, other, 6)), whole, resume=True, allow_changes=True)
    assert trainer.step == 2 and trainer.loader.epoch == epoch + 1
    assert "the training data changed" in caplog.text and f"epoch {epoch + 1} of the new data" in caplog.text
    assert trainer.fit()["step"] == 6
    history = rel.read_jsonl(whole / "history.jsonl")
    assert history[-1]["step"] == 2 and "data.train.sha256" in history[-1]["recipe_changes"]
    after_step = Trainer.after_step

    def stop_at_5(self) -> None:
        after_step(self)
        if self.step == 5:
            self.stop_signal = signal.SIGTERM  # as the handler of a SIGTERM sets it, on every rank

    with monkeypatch.context() as m:
        m.setattr(Trainer, "after_step", stop_at_5)
        assert Trainer(PretrainTask(_cfg(rel, other, 6)), cut, resume=True, allow_changes=True).fit()["step"] == 5
    assert Trainer(PretrainTask(_cfg(rel, other, 6)), cut, resume=True).fit()["step"] == 6  # no change now
    a, b = _weights(whole, "step-0000006"), _weights(cut, "step-0000006")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_refused_resume_leaves_the_run_folder_as_it_was(tmp_path, tiny_corpus, rel) -> None:
    """A resume refused once the trainer is built (here: another architecture, under --allow-changes) writes
    nothing: it had left a new TensorBoard event file in the run."""
    out = tmp_path / "run"
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2, "tensorboard=true")), out).fit()
    before = _folder(out)
    with pytest.raises(ValueError, match=r"cannot continue with these changes"):
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4, "tensorboard=true", "model.num_layers=3")), out,
                resume=True, allow_changes=True)
    assert _folder(out) == before


def test_a_resume_refused_by_a_tracker_that_cannot_start_leaves_the_run_folder_as_it_was(tmp_path, tiny_corpus, rel,
                                                                                          monkeypatch) -> None:
    """Killed while it wrote step 4's checkpoint (after step 4 had written best), the run is resumed with an MLflow
    server that is not there: refused (ConfigError) with every file as it was. The trackers started last: the
    resume had cut train.jsonl and valid.jsonl back to step 2, removed best (step 4) and added to machines.jsonl
    first."""
    from earful.train import tracking as tracking_module

    out = tmp_path / "run"
    args = rel.pretrain_overrides(tiny_corpus[0], 4, "valid_every=2", "ckpt_every=2", "keep_last=0")
    _scripted_validation(monkeypatch, [3.0, 2.0])
    Trainer(PretrainTask(load_pretrain_config(None, args)), out).fit()
    ck = out / "checkpoints"
    shutil.rmtree(ck / "step-0000004")
    (ck / "latest.json").write_text(json.dumps({"name": "step-0000002", "step": 2}))
    before = _folder(out)
    assert json.loads(before["checkpoints/best/trainer.json"])["step"] == 4

    def refused(*_: object) -> None:
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(tracking_module, "_Mlflow", refused)
    with pytest.raises(ConfigError, match="the mlflow run cannot start"):
        Trainer(PretrainTask(load_pretrain_config(None, [*args, "tracking.backends=[mlflow]"])), out, resume=True)
    assert _folder(out) == before


def _stopping_at(monkeypatch, step: int):
    """Trainer.after_step that stops the run after ``step``, as a SIGTERM's handler does on every rank."""
    after_step = Trainer.after_step

    def stop(self) -> None:
        after_step(self)
        if self.step == step:
            self.stop_signal = signal.SIGTERM

    monkeypatch.setattr(Trainer, "after_step", stop)


def test_a_moved_corpus_prepared_again_is_the_same_recipe(tmp_path, tiny_corpus, rel, monkeypatch, caplog) -> None:
    """`earful prepare` writes absolute paths: the corpus copied to another disk and prepared again gives a
    manifest of other bytes with the same rows. It resumes (it was refused: "data.train.sha256: '7dff…' ->
    'fefb…'"), saying that only the paths changed; a changed row is still another recipe. A checkpoint of an
    earlier version (the SHA-256 of the manifest's bytes, no data.manifest_digest) resumes with the same file,
    and one with other bytes is refused saying that other audio paths alone change that digest."""
    rows = rel.manifest_rows(Path(tiny_corpus[0]))
    moved = tmp_path / "node-local"
    moved.mkdir()
    for r in rows:
        shutil.copy(r["path"], moved / Path(r["path"]).name)
    here = rel.write_rows(tmp_path / "train.jsonl", rows)
    there = rel.write_rows(tmp_path / "moved.jsonl", [{**r, "path": str(moved / Path(r["path"]).name)} for r in rows])
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _stopping_at(m, 2)
        Trainer(PretrainTask(_cfg(rel, here, 4)), out).fit()
        _stopping_at(m, 3)
        with caplog.at_level(logging.INFO):
            assert Trainer(PretrainTask(_cfg(rel, there, 4)), out, resume=True).fit()["step"] == 3
    assert "data.train: the same rows as the checkpoint's with their audio at other paths" in caplog.text
    edited = rel.write_rows(tmp_path / "edited.jsonl", [{**rows[0], "id": "other"}, *rows[1:]])
    with pytest.raises(ValueError, match=r"another recipe .*data\.train\.sha256"):
        Trainer(PretrainTask(_cfg(rel, edited, 4)), out, resume=True)
    # a checkpoint of an earlier version: the file's SHA-256
    trainer_json = out / "checkpoints" / "step-0000003" / "trainer.json"
    info = json.loads(trainer_json.read_text())
    del info["recipe"]["data.manifest_digest"]
    info["recipe"]["data.train.sha256"] = C.sha256(there)
    trainer_json.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"data\.train\.sha256: '[0-9a-f]+' -> '[0-9a-f]+'\) \(data\.train: the "
                                         r"checkpoint, of an earlier version, recorded the SHA-256 of the file's "
                                         r"bytes, which other audio paths alone change too"):
        Trainer(PretrainTask(_cfg(rel, here, 4)), out, resume=True)
    assert Trainer(PretrainTask(_cfg(rel, there, 4)), out, resume=True).fit()["step"] == 4


def test_a_manifest_relabelled_in_place_resumes_a_pretraining_and_is_named_to_a_finetuning(
        tmp_path, tiny_corpus, tones, finished, rel, monkeypatch, caplog) -> None:
    """`earful phonemize M --out M` adds each row's phonemes in place, which changes the manifest's digest: a
    pre-training from it, which reads no labels, refused --resume without --allow-changes and named only two
    hashes. It now continues as if nothing had changed (the weights of an uninterrupted run), with a history
    segment saying so; a fine-tuning, which reads transcripts, is still refused, the refusal saying that only the
    labels changed; a changed length is still another recipe for both."""
    from earful.finetune.config import load_finetune_config
    from earful.finetune.task import FinetuneTask

    rows = rel.manifest_rows(Path(tiny_corpus[0]))
    train = rel.write_rows(tmp_path / "train.jsonl", rows)
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _stopping_at(m, 2)
        Trainer(PretrainTask(_cfg(rel, train, 4)), out).fit()
    rel.write_rows(train, [{**r, "phonemes": "a b", "transcript": "other words", "speaker": "s9"} for r in rows])
    with caplog.at_level(logging.INFO):
        assert Trainer(PretrainTask(_cfg(rel, train, 4)), out, resume=True).fit()["step"] == 4
    assert "data.train: the same audio rows as the checkpoint's with other labels" in caplog.text
    assert "another recipe" not in caplog.text
    last = _weights(finished, "step-0000004")
    assert all(torch.equal(v, last[k]) for k, v in _weights(out, "step-0000004").items())  # as not interrupted
    segments = rel.read_jsonl(out / "history.jsonl")
    assert segments[-1]["relabelled"] == ["data.train"] and segments[-1]["recipe_changes"] == {}
    rel.write_rows(train, [{**rows[0], "num_samples": rows[0]["num_samples"] - 1600}, *rows[1:]])
    with pytest.raises(ValueError, match=r"another recipe .*data\.train\.sha256: '[0-9a-f]+' -> '[0-9a-f]+'\)\. "):
        Trainer(PretrainTask(_cfg(rel, train, 4)), out, resume=True)

    labelled = rel.manifest_rows(tones)
    ft_train = rel.write_rows(tmp_path / "ft.jsonl", labelled)

    def finetune(resume: bool) -> None:
        Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(ft_train, 2))), tmp_path / "ft",
                resume=resume).fit()

    with monkeypatch.context() as m:
        _stopping_at(m, 1)
        finetune(False)
    rel.write_rows(ft_train, [{**r, "transcript": "other words"} for r in labelled])
    with pytest.raises(ValueError, match=r"data\.train\.sha256: '[0-9a-f]+' -> '[0-9a-f]+'\) \(data\.train: the same "
                                         r"audio rows as the checkpoint's with other labels"):
        finetune(True)


def test_a_finetuning_resumes_after_labels_it_does_not_read_changed(tmp_path, tones, rel, monkeypatch,
                                                                     caplog) -> None:
    """A fine-tuning reads its manifests' transcripts, not their phonemes, intents or speakers; `earful phonemize M
    --out M` on its training manifest refused --resume as another recipe, and --allow-changes then restarted the
    data at a fresh epoch. It now continues as a pre-training does; a changed transcript is still refused, the
    refusal naming that label."""
    from earful.finetune.config import load_finetune_config
    from earful.finetune.task import FinetuneTask

    labelled = rel.manifest_rows(tones)
    ft_train = rel.write_rows(tmp_path / "ft.jsonl", labelled)

    def finetune(resume: bool) -> dict:
        return Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(ft_train, 2))),
                       tmp_path / "ft", resume=resume).fit()

    with monkeypatch.context() as m:
        _stopping_at(m, 1)
        finetune(False)
    rel.write_rows(ft_train, [{**r, "phonemes": "a b", "speaker": "s9"} for r in labelled])
    with caplog.at_level(logging.INFO):
        assert finetune(True)["step"] == 2
    assert "data.train: the same audio rows as the checkpoint's with other labels (phonemes, speaker)" in caplog.text
    assert rel.read_jsonl(tmp_path / "ft" / "history.jsonl")[-1]["relabelled"] == ["data.train"]
    rel.write_rows(ft_train, [{**r, "phonemes": "a b", "speaker": "s9", "transcript": "other"} for r in labelled])
    with pytest.raises(ValueError, match=r"\(data\.train: the same audio rows as the checkpoint's with other labels: "
                                         r"transcript\)"):
        finetune(True)


def test_resume_where_no_run_was_started_is_refused(tmp_path, tiny_corpus, rel, caplog) -> None:
    """--resume with a new or mistyped --out trained from step 0 without a word; it is refused naming the folder
    and the way out, and leaves no folder behind. ``start_if_new`` (``--resume-or-start``, a study's stages)
    starts the run there; a run killed before its first checkpoint (its history.jsonl) still restarts."""
    typo = tmp_path / "rnu"
    with pytest.raises(ValueError, match=r"rnu: --resume, but no run was started in this folder \(no checkpoints, no "
                                         r"history\.jsonl\); it did not exist: check --out, or drop --resume"):
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 1)), typo, resume=True)
    assert not typo.exists()
    assert main(["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 1), "--out", str(typo), "--resume"]) == 2
    assert "drop --resume to start a new run there" in caplog.text and not typo.exists()
    summary = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 1)), typo, resume=True, start_if_new=True).fit()
    assert summary["step"] == 1
    assert Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 1)), typo, resume=True).fit()["step"] == 1  # now resumes
    killed = tmp_path / "killed"  # killed before its first checkpoint: its history.jsonl, no checkpoint
    Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 1)), killed).close()
    shutil.rmtree(killed / "checkpoints", ignore_errors=True)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        restarted = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 1)), killed, resume=True)
    assert restarted.step == 0 and "wrote no checkpoint: --resume starts it again from step 0" in caplog.text
    restarted.close()


def test_finetune_takes_resume_or_start_as_pretrain_does(tmp_path, tones, rel, caplog) -> None:
    """One option for one idea: a job that may be a fine-tuning's first or its requeue (a Slurm script) starts or
    resumes it with --resume-or-start, as pre-training's does; --resume alone is refused on a new folder."""
    new = tmp_path / "ft"
    assert main(["finetune", *rel.finetune_overrides(tones, 1), "--out", str(new), "--resume"]) == 2
    assert "drop --resume to start a new run there" in caplog.text and not new.exists()
    assert main(["finetune", *rel.finetune_overrides(tones, 1), "--out", str(new), "--resume-or-start"]) == 0
    assert main(["finetune", *rel.finetune_overrides(tones, 2), "--out", str(new), "--resume-or-start",
                 "--allow-changes"]) == 0
    assert json.loads((new / "checkpoints" / "latest.json").read_text())["step"] == 2


def test_a_folder_given_for_a_training_manifest_is_named_with_what_to_do(tmp_path, tones, rel, caplog) -> None:
    """``finetune --train FOLDER`` said "[Errno 21] Is a directory" (the recipe hashed the manifest before
    anything read it)."""
    over = [o for o in rel.finetune_overrides(tones, 1) if not o.startswith("data.train=")]
    assert main(["finetune", *over, "--train", str(tmp_path), "--out", str(tmp_path / "ft")]) == 2
    assert f"{tmp_path}: a folder, not a manifest" in caplog.text and "earful prepare" in caplog.text


def test_a_run_of_before_a_setting_was_added_resumes_at_its_earlier_behaviour(tmp_path, tones, rel) -> None:
    """Fine-tuning gained `vocab` (english: what every earlier run trained with) and `model.feature_grad_mult`
    (None: the initial model's): a run whose checkpoints record neither was refused "with another recipe (vocab:
    None -> 'english')". It resumes."""
    from earful.finetune.config import load_finetune_config
    from earful.finetune.task import FinetuneTask

    out = tmp_path / "ft"
    assert main(["finetune", *rel.finetune_overrides(tones, 1), "--out", str(out)]) == 0
    info = out / "checkpoints" / "step-0000001" / "trainer.json"
    earlier = json.loads(info.read_text())
    del earlier["recipe"]["vocab"], earlier["recipe"]["model.feature_grad_mult"]
    info.write_text(json.dumps(earlier))
    assert Trainer(FinetuneTask(load_finetune_config(None, rel.finetune_overrides(tones, 1))), out,
                   resume=True).step == 1


def test_a_run_of_before_group_norm_padding_resumes_with_its_config_or_the_override_it_is_named(
        tmp_path, finished, tiny_corpus, rel) -> None:
    """A run of before model.group_norm_padding (96e4481) trained as "included" (the same arithmetic, bit for bit);
    its checkpoints' recipe and its config.yaml lack the key. Resumed, it was refused "model.group_norm_padding:
    None -> 'excluded'", and "None -> 'included'" with the override, while the refusal's advice, its config.yaml,
    read as 'excluded'. Its config.yaml resumes it, "included"; another config is refused naming the override that
    resumes it."""
    import yaml

    for name in ("own", "named"):
        out = tmp_path / name
        shutil.copytree(finished, out)
        for info in (out / "checkpoints").glob("*/trainer.json"):
            earlier = json.loads(info.read_text())
            if "recipe" in earlier:  # init, the step-0 weights, records none
                del earlier["recipe"]["model.group_norm_padding"]
                info.write_text(json.dumps(earlier))
        config = yaml.safe_load((out / "config.yaml").read_text())
        del config["model"]["group_norm_padding"]
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ValueError, match=r"model\.group_norm_padding: 'included' -> 'excluded'\) \(model\."
                                         r"group_norm_padding: the run was trained before the setting existed, as "
                                         r"the override model\.group_norm_padding=included trains now"):
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4)), tmp_path / "own", resume=True)
    own = load_pretrain_config(tmp_path / "own" / "config.yaml")
    assert own.model.group_norm_padding == "included"
    resumed = Trainer(PretrainTask(own), tmp_path / "own", resume=True)
    assert resumed.step == 4 and resumed.task.model.cfg.group_norm_padding == "included"
    named = Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 4, "model.group_norm_padding=included")),
                    tmp_path / "named", resume=True)
    assert named.step == 4 and named.task.model.cfg.group_norm_padding == "included"


def test_a_refused_or_failed_start_leaves_no_lock_and_no_folder(tmp_path, tones, rel) -> None:
    """A start that failed (a transcript its vocabulary cannot spell) left a new --out holding only .lock, and a
    --resume on a folder that is no run (an export-hf folder) left a .lock there, which export-hf then refused."""
    rows = rel.manifest_rows(tones)
    rows[0]["transcript"] = "grün"
    bad = rel.write_rows(tmp_path / "bad.jsonl", rows)
    over = [o for o in rel.finetune_overrides(tones, 1) if not o.startswith("data.train=")]
    assert main(["finetune", *over, f"data.train={bad}", "--out", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()
    other = tmp_path / "export"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert main(["finetune", *rel.finetune_overrides(tones, 1), "--out", str(other), "--resume"]) == 2
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "size 100 bytes, expected"),
    (lambda p: p.write_bytes(p.read_bytes()[:-4] + b"\x00\x00\x80\x7f"), "SHA-256 differs"),  # the last float: inf
])
def test_a_damaged_init_checkpoint_refuses_the_resume_naming_it(damage, message, finished, tmp_path, rel,
                                                                 tiny_corpus, caplog) -> None:
    """``checkpoints/init`` (the step-0 weights a resume reads for the distance from init) is verified as every
    checkpoint a run reads, before anything of the resume is recorded. A truncated one had been safetensors' own
    error, unnamed, with a traceback (status 1) after the resume was recorded in history.jsonl; a tampered one was
    read as it was (a distance from init of inf)."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    damage(out / "checkpoints" / "init" / "model.safetensors")
    (out / "checkpoints" / "latest.json").write_text('{"name": "step-0000002"}')  # the logs would be cut back to it
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    args = ["pretrain", *rel.pretrain_overrides(tiny_corpus[0], 6, "ckpt_every=2", "keep_last=10"), "--out", str(out),
            "--resume", "--allow-changes"]
    with caplog.at_level(logging.ERROR):
        assert main(args) == 2
    assert f"{out / 'checkpoints' / 'init' / 'model.safetensors'}: {message}" in caplog.text
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before  # history, logs: as they were


def test_a_failed_start_removes_its_lock_file_only_while_it_holds_it(tmp_path, tiny_corpus, rel, monkeypatch) -> None:
    """A start that fails in a folder it made the lock of removes the lock file: before letting go of the lock. It
    had let go first: a process that took the lock in between lost its lock file, and a third one then locked a new
    one beside it, two writers in one run folder."""
    import earful.lock as L
    from earful.train.engine import NoRunToResume

    out, others = tmp_path / "run", {}
    real_close = Trainer.close

    def close(self) -> None:
        real_close(self)
        others.setdefault("B", L.hold_folder(out))  # another process starts there as this one lets go

    monkeypatch.setattr(Trainer, "close", close)
    with pytest.raises(NoRunToResume):
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 2)), out, resume=True)  # a mistyped --out
    assert (out / ".lock").exists()
    with pytest.raises(FolderBusy):
        L.hold_folder(out)  # a third process
    others["B"].close()


def test_a_lock_file_removed_as_it_is_locked_is_not_held(tmp_path, monkeypatch) -> None:
    """A lock taken on a lock file its holder removed meanwhile (between this process's open and its flock) holds
    nothing: the one now at the path is locked instead."""
    import fcntl

    import earful.lock as L

    real_flock, removed = fcntl.flock, []

    def flock(f, how):
        if not removed:  # the holder of the lock file this process opened removes it and lets go
            removed.append((tmp_path / ".lock").unlink())
        return real_flock(f, how)

    monkeypatch.setattr(L.fcntl, "flock", flock)
    mine = L.hold_folder(tmp_path)
    monkeypatch.setattr(L.fcntl, "flock", real_flock)
    assert os.fstat(mine.fileno()).st_ino == (tmp_path / ".lock").stat().st_ino
    with pytest.raises(FolderBusy):
        L.hold_folder(tmp_path)
    mine.close()


@pytest.mark.parametrize("line", ['{"segment": 2, "st', '[1]', '{"segment": 2, "step": 4}',
                                  '{"segment": 2, "step": 2, "config": "../victim.txt"}'])  # a resume removed it
def test_a_damaged_history_is_named_on_resume_and_changes_nothing(line, tmp_path, finished, tiny_corpus,
                                                                  rel) -> None:
    """A history.jsonl whose last line is cut short, not a record, or without its config: the resume said only
    "Unterminated string starting at: line 1 column 2 (char 1)" (or an AttributeError / KeyError traceback), naming
    no file, after the logs had been cut back to the checkpoint's step."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    history = out / "history.jsonl"
    history.write_text(history.read_text() + line + "\n")
    # a resume from step 2 would cut the logs (steps 1-4) back to it
    (out / "checkpoints" / "latest.json").write_text('{"name": "step-0000002"}')
    (tmp_path / "victim.txt").write_text("keep me")
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    with pytest.raises(ValueError, match=rf"^{re.escape(str(history))}, line 2: not a segment record.*; the run's "
                                         r"history is damaged"):
        Trainer(PretrainTask(_cfg(rel, tiny_corpus[0], 6)), out, resume=True, allow_changes=True)
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    assert (tmp_path / "victim.txt").read_text() == "keep me"
