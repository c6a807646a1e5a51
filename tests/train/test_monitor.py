"""Monitoring (``earful/train/monitor.py``): the health warnings, the distance from init and the codeword
similarity a run logs in train.jsonl."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train.config import HealthConfig
from earful.train.engine import Trainer
from earful.train.monitor import Health, codeword_similarity, distance_from

CHANCE = 1 / 101  # 100 distractors


def warns(step: int, rec: dict, chance: float | None = CHANCE) -> list[str]:
    """The warnings of one record, to a fresh Health (defaults: after 200 steps, perplexity <= 2, ...)."""
    return Health(HealthConfig(), chance).check(step, rec)


def test_codebook_collapse_warns_at_a_hard_perplexity_of_two_after_the_first_steps() -> None:
    assert "codebook collapse" in " ".join(warns(200, {"ppl_hard_g0": 30.0, "ppl_hard_g1": 2.0}))
    assert warns(199, {"ppl_hard_g0": 30.0, "ppl_hard_g1": 1.0}) == []  # early collapse is normal
    assert warns(200, {"ppl_hard_g0": 30.0, "ppl_hard_g1": 2.5}) == []


def test_accuracy_at_chance_or_saturated_warns() -> None:
    assert "at chance" in " ".join(warns(300, {"accuracy": CHANCE + 0.019}))
    assert "trivially separable" in " ".join(warns(300, {"accuracy": 0.995}))
    for acc in (CHANCE + 0.021, 0.5, 0.994):
        assert warns(300, {"accuracy": acc}) == [], acc
    assert warns(300, {"accuracy": CHANCE}, chance=None) == []  # a task without accuracy (fine-tuning)
    assert warns(100, {"accuracy": CHANCE}) == []


def test_an_exploding_gradient_is_ten_times_the_running_median_of_at_least_20_steps() -> None:
    health = Health(HealthConfig(after_steps=0), CHANCE)
    assert [health.check(s, {"grad_norm": 1.0 + s % 2}) for s in range(19)] == [[]] * 19  # median 1
    assert health.check(19, {"grad_norm": 100.0}) == []  # 19 earlier norms: too few to judge
    assert health.check(20, {"grad_norm": math.nan}) == []  # non-finite: counted elsewhere, not in the median
    assert "exploding gradient" in " ".join(health.check(21, {"grad_norm": 15.1}))  # 10 × the median 1.5
    health = Health(HealthConfig(after_steps=0), CHANCE)
    for s in range(20):
        health.check(s, {"grad_norm": 2.0})
    assert health.check(20, {"grad_norm": 19.9}) == []


def test_no_exploding_gradient_warning_before_after_steps() -> None:
    """after_steps holds back every warning, the gradient's too; the norms logged before it still make the median
    (one a logged record: a log interval, not a step)."""
    health = Health(HealthConfig(after_steps=2500), CHANCE)
    assert [health.check(s, {"grad_norm": 1.0}) for s in range(100, 2100, 100)] == [[]] * 20  # log_every=100
    assert health.check(2100, {"grad_norm": 100.0}) == []  # 20 records to judge by, but before step 2500
    assert "exploding gradient" in " ".join(health.check(2500, {"grad_norm": 100.0}))


def test_a_warning_is_given_once_until_it_clears() -> None:
    health, collapsed, fine = Health(HealthConfig(), CHANCE), {"ppl_hard_g0": 1.0}, {"ppl_hard_g0": 50.0}
    got = [len(health.check(s, rec)) for s, rec in enumerate([collapsed, collapsed, fine, collapsed], start=200)]
    assert got == [1, 0, 0, 1]


def test_distance_from_init_is_the_euclidean_norm_of_the_change_of_every_parameter() -> None:
    model = torch.nn.Linear(2, 2)
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert distance_from(model, init) == 0.0
    with torch.no_grad():
        model.weight[0, 1] += 3.0
        model.bias[1] -= 4.0
    assert distance_from(model, init) == pytest.approx(5.0)


def test_codeword_similarity_is_the_cosine_of_distinct_codewords_within_a_group() -> None:
    """Group 0: (1,0), (0,1), (1,1): cosines 0, 1/√2, 1/√2; group 1: (1,0), (2,0), (-1,0): 1, -1, -1 (the scale of
    a codeword does not count, a codeword with itself is left out)."""
    book = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]]])
    got = codeword_similarity(book, groups=2)
    assert got[0] == pytest.approx({"mean": math.sqrt(2) / 3, "min": 0.0, "max": math.sqrt(0.5)})
    assert got[1] == pytest.approx({"mean": -1 / 3, "min": -1.0, "max": 1.0})


def test_a_run_logs_the_distance_and_codeword_similarity_of_its_weights(tmp_path, tiny_corpus) -> None:
    """train.jsonl's distance_from_init and codeword_sim_* at each step are those of the step's checkpoint (against
    checkpoints/init); the distance grows from 0."""
    cfg = load_pretrain_config(None, [
        "model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=4", "max_steps=2",
        "log_every=1", "valid_every=0", "ckpt_every=1", "keep_last=0", "data.num_workers=0", "data.min_seconds=0.5",
        "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu"])
    Trainer(PretrainTask(cfg), tmp_path / "run").fit()
    ckpts = tmp_path / "run" / "checkpoints"
    init = load_file(str(ckpts / "init" / "model.safetensors"))
    log = [json.loads(line) for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for rec in log:
        w = load_file(str(ckpts / f"step-{rec['step']:07d}" / "model.safetensors"))
        distance = math.sqrt(sum((w[k].float() - init[k].float()).pow(2).sum().item() for k in w))
        assert rec["distance_from_init"] == pytest.approx(distance, rel=1e-5)
        for g, sim in enumerate(codeword_similarity(w["quantizer.codevectors"], cfg.model.num_codevector_groups)):
            assert {k: rec[f"codeword_sim_g{g}_{k}"] for k in sim} == pytest.approx(sim, rel=1e-5)
    assert 0 < log[0]["distance_from_init"] < log[1]["distance_from_init"]


def test_a_resumed_run_s_health_checks_go_on_from_its_checkpoint(tmp_path, tiny_corpus, monkeypatch, caplog) -> None:
    """The checks' state (the running median's grad norms, the warnings in force) was not in the checkpoint: after
    every resume the exploding-gradient check was blind until GRAD_LEAST new records (2,000 steps at the defaults;
    on a cluster that pre-empts often, for ever), and a warning in force was said again. It is now in trainer.json:
    a resumed run's checks go on from what they had, and say nothing new for what had been said."""
    import logging

    import earful.train.monitor as monitor

    monkeypatch.setattr(monitor, "GRAD_LEAST", 2)  # judged from the third record on, not the 21st
    over = ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=4",
            "log_every=1", "valid_every=0", "ckpt_every=100", "data.num_workers=0", "data.min_seconds=0.5",
            "data.crop_seconds=2.0", "tensorboard=false", "threads=1", "device=cpu", "health.after_steps=0",
            "health.grad_norm_factor=1e-9"]  # every norm "explodes": the warning is in force from step 3 on
    with caplog.at_level(logging.WARNING, logger="earful.train.monitor"):
        first = Trainer(PretrainTask(load_pretrain_config(None, [*over, "max_steps=3"])), tmp_path / "run")
        first.fit()
    exploding = [r.getMessage()[:30] for r in caplog.records if "exploding" in r.getMessage()]
    assert exploding == ["health: step 3: exploding grad"]
    norms = [json.loads(line)["grad_norm"] for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="earful.train.monitor"):
        resumed = Trainer(PretrainTask(load_pretrain_config(None, [*over, "max_steps=6"])), tmp_path / "run",
                          resume=True, allow_changes=True)
        assert list(resumed.health.norms) == pytest.approx(norms) and "grad" in resumed.health.active
        resumed.fit()
    assert "exploding" not in caplog.text  # in force since step 3: not said again
    assert len(resumed.health.norms) == 6
