"""Files from earlier development versions (there is no release) are refused with a message naming the file,
the format found and the way out — never read with guesses about what they meant."""

import json

import pytest

from earful.checkpoint import CheckpointError, load_model, save_model
from earful.model import Wav2Vec2ForPreTraining, load_model_config
from earful.train.state import RunDir, load_trainer_state


def test_model_and_training_state_of_another_format_are_refused(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    model = Wav2Vec2ForPreTraining(load_model_config("tiny"))
    ckpt = run.save("step-0000001", model, state=None, trainer={"step": 1})
    load_model(ckpt)
    info, _ = load_trainer_state(ckpt)
    assert info["format"] == 2 and info["step"] == 1
    trainer = ckpt / "trainer.json"
    trainer.write_text(json.dumps({"step": 1}))  # as the twin trainers wrote it
    with pytest.raises(CheckpointError, match=r"trainer\.json: training-state format None, .* reads 2 .*start the run"):
        load_trainer_state(ckpt)
    save_model(tmp_path / "m", model)
    meta = tmp_path / "m" / "model.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": "earful-0"}))
    with pytest.raises(CheckpointError, match=r"m/model\.json: format 'earful-0', this version of earful reads"):
        load_model(tmp_path / "m")
