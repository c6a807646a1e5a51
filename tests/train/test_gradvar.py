"""`earful gradvar`: the paper's gradient spread and the gradient noise scale."""

import json
import math

from earful.checkpoint import save_model
from earful.cli import main
from earful.data.budget import BatchBudget
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, load_model_config
from earful.pretrain.gradvar import gradient_noise


def test_gradvar_statistics_and_scaling(tmp_path, tiny_corpus) -> None:
    train, _ = tiny_corpus
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    small = gradient_noise(tmp_path / "ckpt", train, BatchBudget(3.0, 3.0), num_batches=6, seed=0, device="cpu")
    large = gradient_noise(tmp_path / "ckpt", train, BatchBudget(12.0, 12.0), num_batches=6, seed=0, device="cpu")
    for r in (small, large):
        assert r["parameters"] > 0 and r["mean_param_grad_std"] > 0 and r["trace_cov_per_batch"] > 0
        assert r["b_simple_seconds"] > 0
        assert r["trace_cov_per_batch_se"] > 0 and r["grad_norm_sq_estimate_se"] > 0 and r["signal_to_noise"] > 0
    # bigger batches average out more noise: the per-parameter spread falls (paper §6.5, ∝ 1/sqrt(batch))
    assert large["mean_param_grad_std"] < small["mean_param_grad_std"]
    assert large["batch_seconds_padded"] > small["batch_seconds_padded"]
    # a batch larger than a device: micro-batches of 3 s accumulated into each 12 s gradient, as the trainer does
    accumulated = gradient_noise(tmp_path / "ckpt", train, BatchBudget(12.0, 3.0), num_batches=6, seed=0, device="cpu")
    assert small["batch_seconds_padded"] < accumulated["batch_seconds_padded"] <= 12.0  # four of at most 3 s
    assert accumulated["mean_param_grad_std"] < small["mean_param_grad_std"]


def test_gradvar_cli_writes_json(tmp_path, tiny_corpus) -> None:
    train, _ = tiny_corpus
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    out = tmp_path / "g.json"
    assert main(["gradvar", str(tmp_path / "ckpt"), "--manifest", str(train), "--batch-seconds", "4",
                 "--batches", "3", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["batches"] == 3 and math.isfinite(r["mean_param_grad_std"])
    # utterances no batch holds (the corpus has some over 1.5 s): an error naming the way out, or with
    # --skip-bad left out and counted
    short = ["gradvar", str(tmp_path / "ckpt"), "--manifest", str(train), "--batch-seconds", "1.5", "--batches", "2",
             "--device", "cpu", "--out", str(out)]
    assert main(short) == 2
    assert main([*short, "--skip-bad"]) == 0 and json.loads(out.read_text())["batches"] == 2


def test_gradvar_measures_at_the_checkpoints_step(tmp_path, tiny_corpus, monkeypatch) -> None:
    """The gradient of a checkpoint saved at step N is taken with step N's Gumbel temperature and diversity
    weight (a model loads at step 0), on batches made as its trainer made them."""
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    train, _ = tiny_corpus
    cfg = load_pretrain_config(None, ["model_preset=tiny", f"data.train={train}", "batch_seconds=4", "device_seconds=4",
                                      "max_steps=3", "valid_every=0", "data.num_workers=0", "data.crop_seconds=2.0",
                                      "data.min_seconds=0.5", "tensorboard=false", "threads=1", "device=cpu"])
    Trainer(PretrainTask(cfg), tmp_path / "run").fit()
    steps: list[int] = []
    real = Wav2Vec2ForPreTraining.set_step
    monkeypatch.setattr(Wav2Vec2ForPreTraining, "set_step", lambda self, s: steps.append(s) or real(self, s))
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000003"
    r = gradient_noise(ckpt, train, BatchBudget(4.0, 4.0, crop_seconds=2.0), num_batches=2, device="cpu",
                       padding=False)
    assert steps == [3] and r["step"] == 3 and not r["padding"]
    save_model(tmp_path / "bare", Wav2Vec2ForPreTraining(load_model_config("tiny")))  # no trainer.json: step 0
    assert gradient_noise(tmp_path / "bare", train, BatchBudget(3.0, 3.0), num_batches=2, device="cpu")["step"] == 0


def test_gradvar_refuses_a_micro_batch_of_zero_seconds(tmp_path, caplog) -> None:
    """--device-seconds 0 was read as "not given" (the whole batch at once)."""
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    rc = main(["gradvar", str(tmp_path / "ckpt"), "--manifest", str(tmp_path / "m.jsonl"), "--batch-seconds", "8",
               "--device-seconds", "0"])
    assert rc == 2 and "device_seconds=0.0: expected a finite number of seconds > 0" in caplog.text


def test_gradvar_names_a_path_that_is_no_checkpoint_first(tmp_path, caplog) -> None:
    """`gradvar model.pt --batches 1` said "needs at least 2 batches", after a warning that the "checkpoint"
    records no batch_seconds, before it said that model.pt is no checkpoint."""
    (tmp_path / "model.pt").write_bytes(b"\x80\x04junk")
    rc = main(["gradvar", str(tmp_path / "model.pt"), "--manifest", str(tmp_path / "m.jsonl"), "--batches", "1"])
    assert rc == 2 and f"{tmp_path / 'model.pt'}: not a checkpoint (no model.json) nor a run folder" in caplog.text
    assert "model.pt is a pickled PyTorch file" in caplog.text
    assert "records no" not in caplog.text and "at least 2 batches" not in caplog.text


def test_gradvar_refuses_a_fine_tuned_checkpoint_before_any_word_of_what_it_records(tmp_path, caplog) -> None:
    """`gradvar` of a fine-tuned (CTC) checkpoint warned that it "records no crop_seconds, ...", with the settings
    it would take, before it refused the checkpoint; the refusal now comes alone."""
    save_model(tmp_path / "ctc", Wav2Vec2ForCTC(load_model_config("tiny"), vocab_size=5),
               vocab={"symbols": ["<b>", "|", "a", "b", "c"]})
    rc = main(["gradvar", str(tmp_path / "ctc"), "--manifest", str(tmp_path / "m.jsonl")])
    assert rc == 2 and f"{tmp_path / 'ctc'}: gradvar needs a pre-training checkpoint, this one is ctc" in caplog.text
    assert "records no" not in caplog.text


def test_gradvar_command_and_study_stage_take_the_checkpoints_own_batches(tmp_path, tiny_corpus, monkeypatch) -> None:
    """`earful gradvar` on a checkpoint takes the batches its pre-training took (its trainer.json: batch, micro-batch,
    crop, shortest and longest utterance, padding), as the study's gradvar stage does; an option replaces one."""
    import earful.pretrain.gradvar as gradvar
    from earful.pretrain.task import PretrainTask
    from earful.study.config import CorpusConfig, PlannedRun, StudyConfig
    from earful.study.stages import gradvar_stage, pretrain_config
    from earful.train.engine import Trainer

    train, valid = tiny_corpus
    study = StudyConfig(corpus=CorpusConfig(train=str(train), valid=str(valid)), gradvar_batches=2,
                        pretrain_overrides=["model_preset=tiny", "valid_every=0", "data.num_workers=0",
                                            "data.crop_seconds=2.0", "data.min_seconds=0.5", "data.max_seconds=2.4",
                                            "tensorboard=false", "threads=1", "device=cpu"])
    run = PlannedRun("6s", 6.0, 1, 3.0, 1e-3, 2, 0.0, 1)
    cfg = pretrain_config(study, run, tmp_path)
    Trainer(PretrainTask(cfg), tmp_path / "pretrain" / run.name).fit()
    taken: list[tuple[BatchBudget, bool]] = []
    monkeypatch.setattr(gradvar, "gradient_noise", lambda ckpt, manifest, budget, **kw: taken.append(
        (budget, kw["padding"])) or {"batches": 2})
    gradvar_stage(study, run, tmp_path, tmp_path)
    ckpt = str(tmp_path / "pretrain" / run.name / "checkpoints" / f"step-{run.steps:07d}")
    assert main(["gradvar", ckpt, "--manifest", str(train), "--device", "cpu"]) == 0
    assert taken[0] == taken[1] == (cfg.budget(1), False)  # data.padding=false: cropped to the shortest
    assert taken[1][0].max_seconds == 2.4 and taken[1][0].accumulation == 2
    assert main(["gradvar", ckpt, "--manifest", str(train), "--device", "cpu", "--batch-seconds", "4",
                 "--crop-seconds", "none", "--min-seconds", "1", "--padding"]) == 0
    assert taken[2] == (BatchBudget(4.0, 3.0, min_seconds=1.0, max_seconds=2.4), True)
    assert main(["gradvar", ckpt, "--manifest", str(train), "--device", "cpu", "--shape-seconds", "1"]) == 0
    assert taken[3][0].shape_seconds == 1.0  # every recorded setting has its option


def test_gradvar_messages_name_the_settings_of_whoever_called_it(tmp_path, tiny_corpus) -> None:
    """`earful gradvar`'s errors advise its options (--skip-bad); a study's gradvar stage, which has none, advised
    them all the same: it names the pre-training's settings (data.skip_bad)."""
    import pytest

    train, _ = tiny_corpus
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    too_small = BatchBudget(1.5, 1.5)  # the corpus has utterances over 1.5 s
    with pytest.raises(ValueError, match="--skip-bad") as command:
        gradient_noise(tmp_path / "ckpt", train, too_small, num_batches=2, device="cpu")
    with pytest.raises(ValueError, match="data.skip_bad") as study:
        gradient_noise(tmp_path / "ckpt", train, too_small, num_batches=2, device="cpu", options=False)
    assert "data.skip_bad" not in str(command.value) and "--" not in str(study.value)


def test_batches_past_what_the_manifest_holds_are_said_to_repeat_its_audio(tmp_path, tiny_corpus, caplog) -> None:
    """More batches than the manifest holds were drawn from it again and again (the loader is endless), without a
    word: the statistics assume independent batches, and repeats understate the spread. It is said, and the
    result records the epochs read."""
    import logging

    from earful.data.manifest import read_manifest, write_manifest

    train = tmp_path / "four.jsonl"
    write_manifest(list(read_manifest(tiny_corpus[0]))[:4], train)
    save_model(tmp_path / "ckpt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    total = sum(u.num_samples for u in read_manifest(train)) / 16000
    with caplog.at_level(logging.WARNING):
        fits = gradient_noise(tmp_path / "ckpt", train, BatchBudget(3.0, 3.0), num_batches=2, device="cpu")
    assert fits["epochs_read"] < 1 and "repeat its utterances" not in caplog.text
    batches = math.ceil(2 * total / 3.0)  # twice the manifest's audio
    with caplog.at_level(logging.WARNING):
        again = gradient_noise(tmp_path / "ckpt", train, BatchBudget(3.0, 3.0), num_batches=batches, device="cpu")
    assert again["epochs_read"] > 1 and f"and {batches} batches of 3 s take {batches}: later batches repeat its " \
        "utterances" in caplog.text


def test_noise_statistics_equal_their_definitions() -> None:
    """S, |G|² and B_simple from the batches' Gram matrix equal the per-parameter formulas (the one source of
    gradvar's figures); each standard error equals the jackknife written out (every batch left out in turn);
    B_simple is null where |G|² <= 0."""
    import numpy as np
    import torch

    from earful.pretrain.gradvar import gram_matrix, noise_statistics

    rng = np.random.default_rng(0)
    g = rng.normal(0.3, 1.0, size=(6, 40))  # (batches, parameters)
    seconds = rng.uniform(2.0, 5.0, size=6)
    rows = torch.tensor(g, dtype=torch.float32)
    gram, spread = gram_matrix(rows, chunk=7)  # columns in uneven slices
    assert torch.allclose(gram, rows.double() @ rows.double().T)
    assert math.isclose(spread, rows.double().numpy().std(axis=0, ddof=1).sum(), rel_tol=1e-9)

    def direct(rows: np.ndarray, secs: np.ndarray) -> tuple[float, float, float]:
        n = len(rows)
        s = rows.var(axis=0, ddof=1).sum()
        g2 = (rows.mean(axis=0) ** 2).sum() - s / n
        return s, g2, 1.0 / (1.0 / secs).mean() * s / g2

    def jack(values: list[float]) -> float:
        v = np.array(values)
        return float(np.sqrt((len(v) - 1) / len(v) * ((v - v.mean()) ** 2).sum()))

    r = noise_statistics(torch.tensor(g).double() @ torch.tensor(g).double().T, torch.tensor(seconds))
    s, g2, b = direct(g, seconds)
    assert math.isclose(r["trace_cov_per_batch"], s, rel_tol=1e-9)
    assert math.isclose(r["grad_norm_sq_estimate"], g2, rel_tol=1e-9)
    assert math.isclose(r["b_simple_seconds"], seconds.mean() * s / g2, rel_tol=1e-9)
    leave = [direct(np.delete(g, k, axis=0), np.delete(seconds, k)) for k in range(6)]
    assert math.isclose(r["b_simple_seconds_harmonic"], b, rel_tol=1e-9)
    assert math.isclose(r["trace_cov_per_batch_se"], jack([x[0] for x in leave]), rel_tol=1e-9)
    assert math.isclose(r["grad_norm_sq_estimate_se"], jack([x[1] for x in leave]), rel_tol=1e-9)
    assert math.isclose(r["b_simple_seconds_harmonic_se"], jack([x[2] for x in leave]), rel_tol=1e-9)
    assert math.isclose(r["signal_to_noise"], g2 / jack([x[1] for x in leave]), rel_tol=1e-9)
    # pure noise around a zero gradient: |G|² estimated <= 0, B_simple not estimable (null, never inf)
    noise = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    r = noise_statistics(torch.tensor(noise @ noise.T), torch.ones(4))
    assert r["b_simple_seconds_harmonic"] is None and r["b_simple_seconds_harmonic_se"] is None
    assert r["b_simple_seconds"] is None
    # two batches: nothing to leave out
    r = noise_statistics(torch.tensor(g[:2] @ g[:2].T), torch.tensor(seconds[:2]))
    assert r["trace_cov_per_batch_se"] is None and r["signal_to_noise"] is None
