"""The logged loss terms are in each normalisation's own unit, whatever the micro-batch layout."""

import json

import pytest
import torch

from earful.model import Wav2Vec2ForPreTraining
from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask, logged_loss, per_unit

NO_DROPOUT = ["dropout=0.0", "attention_dropout=0.0", "dropout_input=0.0", "dropout_features=0.0"]


@pytest.mark.parametrize("normalisation", ["fairseq", "nanow2v2"])
def test_logged_terms_of_unequal_micro_batches(normalisation: str) -> None:
    """A step of two micro-batches of 1 and 3 utterances: contrastive per masked frame; diversity and penalty
    per masked frame (fairseq: the model sums them over masked frames) or the mean of the micro-batches' values
    (nanow2v2: one value a micro-batch, which dividing by masked frames would shrink with the batch)."""
    cfg = load_pretrain_config(None, ["model_preset=tiny", *(f"model.{o}" for o in NO_DROPOUT),
                                      f"model.loss_normalisation={normalisation}"])
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(cfg.model)
    g = torch.Generator().manual_seed(1)
    outs = []
    for n in (1, 3):
        wave = torch.randn(n, 16000, generator=g)
        with torch.no_grad():
            outs.append(model(wave, None, mask=True, generator=g))
    sums = {k: sum(float(getattr(o, k)) for o in outs) for k in ("num_masked", "contrastive", "diversity", "penalty")}
    terms = per_unit(cfg, sums["num_masked"], len(outs), sums["contrastive"], sums["diversity"], sums["penalty"])
    masked = sums["num_masked"]
    assert terms["contrastive"] == pytest.approx(sums["contrastive"] / masked)
    if normalisation == "nanow2v2":
        # each micro-batch's penalty is the mean squared CNN output over its frames: their mean, not a sliver of it
        assert terms["penalty"] == pytest.approx((float(outs[0].penalty) + float(outs[1].penalty)) / 2)
        assert terms["diversity"] == pytest.approx((float(outs[0].diversity) + float(outs[1].diversity)) / 2)
        assert terms["penalty"] > 10 * sums["penalty"] / masked  # what the logs showed before
    else:
        assert terms["penalty"] == pytest.approx(sums["penalty"] / masked)
        assert terms["diversity"] == pytest.approx(sums["diversity"] / masked)
        assert 0.0 <= terms["diversity"] <= 1.0  # (GV − Σ PPL)/GV a masked frame
    # what a training step logs (the task's step record from the step's summed statistics) is the same
    tot = {"masked": masked, "micro_batches": len(outs), "contrastive": sums["contrastive"],
           "diversity": sums["diversity"], "penalty": sums["penalty"], "correct": 0.0,
           "ppl_soft": [0.0] * cfg.model.num_codevector_groups, "ppl_hard": [0.0] * cfg.model.num_codevector_groups}
    step = PretrainTask(cfg).step_record(tot)
    assert {k: step[k] for k in terms} == pytest.approx(terms)
    w = cfg.model
    assert logged_loss(cfg, **terms) == pytest.approx(
        terms["contrastive"] + w.diversity_weight * terms["diversity"] + w.feature_penalty_weight * terms["penalty"])


def _pretrain_args(train, *extra: str) -> list[str]:
    return ["model_preset=tiny", f"data.train={train}", "batch_seconds=4", "device_seconds=4", "max_steps=4",
            "valid_every=0", "data.num_workers=0", "data.min_seconds=0.5", "data.crop_seconds=2.0",
            "tensorboard=false", "threads=1", "device=cpu", *extra]


def test_a_log_interval_records_the_mean_of_its_steps(tmp_path, tiny_corpus) -> None:
    """The same 4 steps logged every step and every 2 steps: each record of the second run holds the mean of the
    first run's two records of its interval (never their sum), and the state at its step (temperature, codebook
    similarity, distance from init)."""
    from earful.train.engine import Trainer

    logs = {}
    for every in (1, 2):
        Trainer(PretrainTask(load_pretrain_config(None, _pretrain_args(tiny_corpus[0], f"log_every={every}"))),
                tmp_path / str(every)).fit()
        logs[every] = [json.loads(line) for line in (tmp_path / str(every) / "train.jsonl").read_text().splitlines()]
    each, pairs = logs[1], logs[2]
    assert [r["step"] for r in pairs] == [2, 4]
    means = ["contrastive", "diversity", "penalty", "loss", "accuracy", "grad_norm", "loss_scale",
             *(k for k in each[0] if k.startswith("ppl_"))]
    states = ["temperature", "distance_from_init", *(k for k in each[0] if k.startswith("codeword_sim"))]
    for rec, (a, b) in zip(pairs, [each[0:2], each[2:4]], strict=True):
        assert a["loss"] != b["loss"]
        assert {k: rec[k] for k in means} == pytest.approx({k: (a[k] + b[k]) / 2 for k in means}, rel=1e-9)
        assert {k: rec[k] for k in states} == pytest.approx({k: b[k] for k in states}, rel=1e-9)


def test_validation_runs_in_eval_mode(tiny_corpus) -> None:
    """valid.jsonl's numbers: two validations of the same weights agree, and dropout does not change them (one
    model built with dropout 0.5, one without: the same weights, the same seed); the model trains again after."""
    from earful.train import distributed as D

    found = []
    for p in (0.5, 0.0):
        dropout = [f"model.{o}={p}" for o in ("dropout", "attention_dropout", "dropout_input", "dropout_features")]
        cfg = load_pretrain_config(None, _pretrain_args(tiny_corpus[0], f"data.valid={tiny_corpus[1]}", *dropout))
        task = PretrainTask(cfg)
        task.build_model(D.setup("cpu"), None)
        task.build_data(cfg.budget(1))
        found += [task.validate(), task.validate()]
        assert task.model.training
    assert found[0]["loss"] > 0 and all(f == found[0] for f in found), found


def test_utterances_too_short_to_be_sure_of_a_masked_frame_are_warned_about_with_data_min_seconds(
        tmp_path, caplog) -> None:
    """The nanow2v2 mask style leaves an utterance under 10 frames (0.2 s) without a masked frame at times (L=5:
    half of them), and a micro-batch of such utterances stopped the run at step 3; the run warned only of utterances
    of one frame. Now it warns at start of every utterance (as cropped) under the length from which the configured
    style is sure to mask a frame, naming the data.min_seconds that leaves them out (and that setting does)."""
    import logging

    import numpy as np
    import soundfile as sf

    from earful.data.manifest import Utterance, write_manifest
    from earful.train.engine import Trainer

    rows = []
    for i, n in enumerate([2000, 3279, 3280, 16000, 24000]):  # tiny's CNN: 3279 samples give 9 frames, 3280 ten
        sf.write(tmp_path / f"u{i}.wav", (0.1 * np.sin(np.arange(n) / 7)).astype(np.float32), 16000)
        rows.append(Utterance(f"u{i}", str(tmp_path / f"u{i}.wav"), n, 16000, "s"))
    write_manifest(rows, tmp_path / "m.jsonl")

    def warned(*extra: str) -> list[str]:
        caplog.clear()
        cfg = load_pretrain_config(None, ["model_preset=tiny", f"data.train={tmp_path / 'm.jsonl'}",
                                          "data.valid=null", "data.num_workers=0", "data.crop_seconds=null",
                                          "tensorboard=false", "batch_seconds=4", "device_seconds=4", *extra])
        with caplog.at_level(logging.WARNING):
            Trainer(PretrainTask(cfg), tmp_path / f"run{len(list(tmp_path.glob('run*')))}")
        return [m for m in caplog.messages if "without a masked frame" in m]

    nano = ["model.mask_style=nanow2v2", "model.require_same_masks=false", "data.padding=true"]
    (message,) = warned("data.min_seconds=null", *nano)
    assert message.startswith("2 of 5 training utterances (as cropped) have fewer than 10 frames (2000 to 3279 "
                              "samples at 16 kHz, under 3280): the nanow2v2 mask style"), message
    assert "reads no model.min_masks" in message and "model.min_masks=1" not in message
    assert "every utterance batched with it" not in message  # masked each on its own
    assert message.endswith("data.min_seconds=0.205 leaves them out")
    assert warned("data.min_seconds=0.205", *nano) == []
    (cropped,) = warned("data.min_seconds=null", "data.padding=false", "model.mask_style=nanow2v2")
    assert "nor does every utterance batched with it (cropped to its length)" in cropped
    # fairseq's style with min_masks >= 1 (tiny's 2) masks every utterance of a frame; with 0 it can fail below 16
    assert warned("data.min_seconds=null") == []
    (fairseq,) = warned("data.min_seconds=null", "model.min_masks=0")
    assert fairseq.startswith("3 of 5 training utterances (as cropped) have fewer than 16 frames (2000 to 3280")
    assert "model.min_masks=1 masks every one, or data.min_seconds=0.325 leaves them out" in fairseq


@pytest.mark.parametrize("preset", ["tiny", "base-nanow2v2"])
def test_utterances_of_a_single_frame_are_warned_about_with_the_setting_that_leaves_them_out(
        tmp_path, preset: str, caplog) -> None:
    """An utterance of one frame (400-719 samples for the standard CNN, 400-563 for the padded one) has no
    distractor: its masked frame scored a contrastive loss of 0 and accuracy 1.0 without a word. Now the run
    says how many, and the data.min_seconds that leaves them out does."""
    import logging

    import numpy as np
    import soundfile as sf

    from earful.data.manifest import Utterance, write_manifest
    from earful.train.engine import Trainer

    rows = []
    for i, n in enumerate([420, 560, 16000, 24000]):
        sf.write(tmp_path / f"u{i}.wav", (0.1 * np.sin(np.arange(n) / 7)).astype(np.float32), 16000)
        rows.append(Utterance(f"u{i}", str(tmp_path / f"u{i}.wav"), n, 16000, "s"))
    write_manifest(rows, tmp_path / "m.jsonl")

    def warned(*extra: str) -> list[str]:
        caplog.clear()
        cfg = load_pretrain_config(None, [f"model_preset={preset}", f"data.train={tmp_path / 'm.jsonl'}",
                                          "data.valid=null", "data.num_workers=0", "data.crop_seconds=null",
                                          "tensorboard=false", "batch_seconds=4", "device_seconds=4", *extra])
        with caplog.at_level(logging.WARNING):
            Trainer(PretrainTask(cfg), tmp_path / f"run{len(list(tmp_path.glob('run*')))}")
        return [m for m in caplog.messages if "single frame" in m]

    (message,) = warned("data.min_seconds=null")
    assert message.startswith("2 of 4 training utterances give a single frame (420 to 560 samples at 16 kHz)")
    # its micro-batch is cropped to its one frame: every utterance batched with it scores 0 too, which fairseq
    # never trains (it stops: "the entire sequence is masked")
    assert "every utterance batched with it" in message and "as in fairseq" not in message
    (padded,) = warned("data.min_seconds=null", "data.padding=true")
    # padded, the fairseq style masks every utterance to the micro-batch's smallest count (one frame); the
    # paper's (base-nanow2v2) masks each on its own
    assert ("every utterance batched with it" in padded) == (preset == "tiny")
    least = float(message.rsplit("data.min_seconds=", 1)[1].split()[0])
    assert warned("data.min_seconds=null", f"data.min_seconds={least}") == []
