"""`earful study status` on run folders made by hand (no training): a run is "running" while a process holds its
folder, and otherwise stopped, interrupted or not started, as its checkpoints say."""

import json
from pathlib import Path

import pytest

from earful.lock import hold_folder
from earful.study.status import run_state


def _ckpt(rdir: Path, step: int, latest: bool = True, **info) -> None:
    ck = rdir / "checkpoints" / f"step-{step:07d}"
    ck.mkdir(parents=True)
    (ck / "trainer.json").write_text(json.dumps({"format": 2, "step": step, "stopped_by": "", **info}))
    if latest:
        (rdir / "checkpoints" / "latest.json").write_text(json.dumps({"name": ck.name, "step": step}))


@pytest.mark.parametrize("info, state", [({}, "interrupted (no process holds it"),
                                         ({"stopped_by": "SIGTERM"}, "stopped by SIGTERM"),
                                         ({"nonfinite_stop": True, "nan_in_a_row": 10}, "stopped: 10 non-finite")])
def test_a_runs_latest_checkpoint_says_whether_it_stopped(tmp_path, info, state) -> None:
    _ckpt(tmp_path, 11, **info)
    step, said = run_state(tmp_path, 60)
    assert step == 11 and said.startswith(state)
    with hold_folder(tmp_path):  # a trainer holds it (resumed after a stop: its checkpoint still says stopped)
        assert run_state(tmp_path, 60) == (11, "running")


def test_a_folder_a_trainer_holds_is_running_before_its_first_checkpoint(tmp_path) -> None:
    assert run_state(tmp_path / "run", 60) == (None, "not started")
    with hold_folder(tmp_path / "run"):  # the trainer takes the lock first, then builds its model and data
        assert run_state(tmp_path / "run", 60) == (None, "running, no checkpoint yet")
    (tmp_path / "run" / ".lock").write_text("4242")  # a lock of an earlier earful: its pid alone, not running
    assert run_state(tmp_path / "run", 60) == (None, "not started")


def test_no_latest_json_yet_and_a_broken_one(tmp_path, caplog) -> None:
    _ckpt(tmp_path, 2, latest=False)  # the first checkpoint, latest.json not yet written
    assert run_state(tmp_path, 60)[0] == 2 and "resuming" not in caplog.text
    (tmp_path / "checkpoints" / "latest.json").write_text(json.dumps({"name": "step-0000099"}))
    assert run_state(tmp_path, 60)[1].startswith("checkpoints unreadable")
    (tmp_path / "done.json").write_text("")
    with pytest.raises(ValueError, match="done.json: unreadable"):
        run_state(tmp_path, 60)


def test_a_study_json_that_is_no_object_is_named(tmp_path) -> None:
    from earful.study.status import study_status

    for text in ("[1, 2]", "null", '"x"'):
        (tmp_path / "study.json").write_text(text)
        with pytest.raises(ValueError, match=r"study\.json: not a study this earful reads \(a JSON "):
            study_status(tmp_path)
