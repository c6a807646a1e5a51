"""The interop commands: export-hf → import-hf round trip and `features` output."""

import numpy as np
import soundfile as sf
import torch

from earful.checkpoint import load_model, save_model
from earful.cli import main
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, load_model_config


def test_export_import_round_trip_via_cli(tmp_path) -> None:
    model = Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=29)
    symbols = ["<b>", "|", "'"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    save_model(tmp_path / "ckpt", model, vocab={"symbols": symbols})
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "vocab.json").exists()
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back, info = load_model(tmp_path / "back")
    assert info["vocab"]["symbols"] == symbols
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_features_shape_and_values(tmp_path) -> None:
    cfg = load_model_config("tiny")
    model = Wav2Vec2ForPreTraining(cfg)
    save_model(tmp_path / "ckpt", model)
    rs = np.random.RandomState(0)
    for name, secs in (("a", 1.0), ("b", 0.6)):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rs.randn(int(secs * 16000))).astype(np.float32), 16000)
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "a.wav"), str(tmp_path / "b.wav"),
                 "--out", str(tmp_path / "feats")]) == 0
    a = np.load(tmp_path / "feats" / "a.npy")
    frames = int(model.frame_lengths(torch.tensor([16000]))[0])
    assert a.shape == (cfg.num_layers + 1, frames, cfg.hidden_size)
    wave, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    with torch.no_grad():
        out = model.eval().wav2vec2(torch.from_numpy(wave)[None], torch.tensor([len(wave)]), output_hidden_states=True)
    np.testing.assert_allclose(a[-1], out.hidden_states[-1][0].numpy(), atol=1e-5)
    assert np.load(tmp_path / "feats" / "b.npy").shape[0] == cfg.num_layers + 1
    # two inputs with one stem would write one file: refused before anything is written, naming both
    (tmp_path / "again").mkdir()
    sf.write(tmp_path / "again" / "a.wav", np.zeros(8000, np.float32), 16000)
    assert main(["features", str(tmp_path / "ckpt"), str(tmp_path / "b.wav"), str(tmp_path / "a.wav"),
                 str(tmp_path / "again" / "a.wav"), "--out", str(tmp_path / "clash")]) == 2
    assert not (tmp_path / "clash").exists() or not list((tmp_path / "clash").iterdir())
    assert sorted(p.name for p in (tmp_path / "feats").iterdir()) == ["a.npy", "b.npy"]  # no temporary left behind
