"""CTC fine-tuning: overfitting, freezing, exact resume, initialisation, transcript checks, the CLI."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from earful.finetune.config import FinetuneConfig, load_finetune_config
from earful.finetune.task import FinetuneTask
from earful.train.engine import Trainer


def config(train: Path, dev: Path | None, steps: int, *extra: str) -> FinetuneConfig:
    """A test-sized run: tiny model, whole corpus per step, no workers, one thread."""
    return load_finetune_config(None, [
        "model_preset=tiny", "init=scratch", f"data.train={train}", f"data.valid={dev}" if dev else "data.valid=null",
        "batch_seconds=7", "device_seconds=7", f"max_steps={steps}", "data.num_workers=0", "tensorboard=false",
        "threads=1", "log_every=1", "valid_every=0", "ckpt_every=1000", "optim.lr=5e-3", "model.dropout=0",
        *extra,
    ])  # fmt: skip


def weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def test_overfits_a_few_utterances(tmp_path, tone_corpus) -> None:
    train, _ = tone_corpus
    steps = 120  # CER reaches 0 at about 100 steps
    cfg = config(train, train, steps, "freeze_transformer_steps=10", "optim.tristage_ratios=[0.1,0.7,0.2]",
                 # no masking or dropout: with 4 utterances the model would learn the masks' statistics
                 "model.mask_prob=0", "model.attention_dropout=0", "model.dropout_input=0", "model.final_dropout=0")
    summary = Trainer(FinetuneTask(cfg), tmp_path / "run").fit()
    rec = [json.loads(x) for x in (tmp_path / "run" / "valid.jsonl").read_text().splitlines()][-1]
    print(f"overfit: {steps} steps, train CER {100 * rec['cer']:.2f} %, WER {100 * rec['wer']:.2f} %")
    assert rec["step"] == steps and summary["last_valid"] == rec["wer"]
    assert rec["cer"] < 0.05, rec
    log = [json.loads(x) for x in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.2 * log[0]["loss"]
    # one name for the audio fed, as trainer.json's: `hours_padded` (with `hours_real`), never a bare `hours`
    info = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/trainer.json")).read_text())
    assert rec["hours_padded"] == log[-1]["hours_padded"] == info["hours_padded"] > 0 and "hours" not in rec
    assert [r["transformer_frozen"] for r in log[9:11]] == [True, False]


SMALL_STEPS = ("batch_seconds=3.5", "device_seconds=1.75", "freeze_transformer_steps=3")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tone_corpus) -> Path:
    """6 steps of 2 micro-batches of 1 utterance (half the corpus), transformer frozen for 3, a checkpoint
    after every step."""
    train, dev = tone_corpus
    out = tmp_path_factory.mktemp("ref") / "run"
    cfg = config(train, dev, 6, *SMALL_STEPS, "ckpt_every=1", "keep_last=10", "valid_every=2")
    Trainer(FinetuneTask(cfg), out).fit()
    return out


def _group(w: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in w.items() if k.startswith(prefix)}
    assert out, prefix
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _all_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in a if torch.equal(a[k], b[k])]


def test_frozen_parameters_do_not_change(reference) -> None:
    w = {n: weights(reference, n) for n in ("init", "step-0000001", "step-0000003", "step-0000004", "step-0000006")}
    for prefix in ("wav2vec2.feature_encoder.", "wav2vec2.feature_projection."):  # frozen for good
        assert all(_same(_group(w["init"], prefix), _group(w[n], prefix)) for n in w), prefix
    backbone = ("wav2vec2.encoder.", "wav2vec2.mask_emb")
    for prefix in backbone:  # frozen for 3 steps, then trained
        assert _same(_group(w["init"], prefix), _group(w["step-0000003"], prefix)), prefix
        unchanged = _all_differ(_group(w["step-0000003"], prefix), _group(w["step-0000004"], prefix))
        assert not unchanged, f"did not train after the freeze: {unchanged}"
    assert not _all_differ(_group(w["init"], "lm_head."), _group(w["step-0000001"], "lm_head."))


def test_freeze_through_the_ddp_path_gives_the_same_run(tmp_path, tone_corpus, reference) -> None:
    """Computing the backbone's gradients and dropping them (what DDP needs) equals running it under
    no_grad (what one device does)."""
    train, dev = tone_corpus
    cfg = config(train, dev, 6, *SMALL_STEPS)  # the same schedule as the reference, stopped at step 4 below
    trainer = Trainer(FinetuneTask(cfg), tmp_path / "run")
    trainer.task.no_grad_while_frozen = False
    assert trainer.accumulation == 2
    batches = iter(trainer.loader)
    for _ in range(4):
        trainer.train_step(batches)
    ref = weights(reference, "step-0000004")
    got = trainer.model.state_dict()
    assert all(torch.allclose(got[k], ref[k], rtol=0, atol=1e-6) for k in ref)


class _StopAt(Trainer):
    """Receives SIGTERM (as the handler would) while step ``stop_at`` runs, before its all-reduce."""

    stop_at = 0

    def train_step(self, batches):  # type: ignore[override]
        if self.step == self.stop_at - 1:
            self._on_signal(signal.SIGTERM, None)
        return super().train_step(batches)


@pytest.mark.parametrize("stop_at", [3, 4])  # mid-epoch at the end of the freeze; an epoch later
def test_stopped_and_resumed_equals_uninterrupted(stop_at, tmp_path, tone_corpus, reference) -> None:
    train, dev = tone_corpus
    out = tmp_path / "run"
    cfg = config(train, dev, 6, *SMALL_STEPS, "ckpt_every=1", "keep_last=10", "valid_every=2")
    trainer = _StopAt(FinetuneTask(cfg), out)
    trainer.stop_at = stop_at
    summary = trainer.fit()
    assert summary["stopped_by"] == "SIGTERM" and summary["step"] == stop_at
    with pytest.raises(ValueError, match="--resume"):
        Trainer(FinetuneTask(cfg), out)
    Trainer(FinetuneTask(cfg), out, resume=True).fit()
    a, b = weights(reference, "step-0000006"), weights(out, "step-0000006")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for log in ("train.jsonl", "valid.jsonl"):
        steps = [json.loads(x)["step"] for x in (out / log).read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 6, (log, steps)
    ref_valid = (reference / "valid.jsonl").read_text().splitlines()
    assert [json.loads(x)["wer"] for x in (out / "valid.jsonl").read_text().splitlines()] == \
        [json.loads(x)["wer"] for x in ref_valid]
    assert (out / "checkpoints" / "best" / "model.safetensors").exists()


def test_init_from_pretraining_checkpoint_and_hf(tmp_path, tone_corpus, caplog, hub_models) -> None:
    """The source's architecture, whatever ``model_preset`` says: a preset set to another architecture (here small
    against the tiny source) is said to be unused (it had been ignored silently); the default says nothing. A
    Hugging Face Hub model id (ORG/NAME[@REVISION]) is its snapshot folder, which trainer.json records."""
    from earful.checkpoint import save_model
    from earful.interop.hf import export_hf
    from earful.model import Wav2Vec2ForPreTraining, load_model_config
    from earful.train.init import resolve_init

    train, _ = tone_corpus
    torch.manual_seed(0)
    src = Wav2Vec2ForPreTraining(load_model_config("tiny"))
    save_model(tmp_path / "pt", src)
    export_hf(src, tmp_path / "hf")
    hub_models.repos["someone/tiny"] = tmp_path / "hf"
    expected = {f"wav2vec2.{k}": v for k, v in src.wav2vec2.state_dict().items()}
    for name, init in (("pt", str(tmp_path / "pt")), ("hf", str(tmp_path / "hf")), ("hub", "someone/tiny@v1")):
        cfg = config(train, None, 1, f"init={init}", "model_preset=small")  # preset unused
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            trainer = Trainer(FinetuneTask(cfg), tmp_path / f"run-{name}")
        assert f"model_preset=small is not used: it is the architecture of a scratch model, and the model is " \
               f"{init}'s (2 layers of " in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            Trainer(FinetuneTask(config(train, None, 1, f"init={init}", "model_preset=base")),
                    tmp_path / f"default-{name}")  # the default, base: never set by finetune-paper.yaml
        assert "model_preset" not in caplog.text
        got = weights(tmp_path / f"run-{name}", "init")
        assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected), init
        assert trainer.model.cfg.mask_prob == 0.05 and trainer.model.cfg.layerdrop == 0.0  # fine-tuning recipe
        assert float(got["lm_head.bias"][0] - got["lm_head.bias"][1:].max()) > 3.0  # paper head init
    trainer.fit()  # the hub's run: one step, its trainer.json
    recorded = json.loads(next((tmp_path / "run-hub" / "checkpoints").glob("step-*/trainer.json")).read_text())
    snapshot = hub_models.cache / "models--someone--tiny" / "snapshots" / hub_models.commit
    assert (recorded["init"], recorded["init_checkpoint"]) == ("someone/tiny@v1", str(snapshot))
    assert recorded["init_sha256"] == resolve_init(str(tmp_path / "hf")).sha256  # the same weights


def test_the_paper_recipes_scratch_baseline_is_the_papers_model_in_fp16(tmp_path) -> None:
    """finetune-paper.yaml left model_preset at the default, base: `earful finetune finetune-paper init=scratch`
    (the paper's scratch baseline, docs/paper.md §5.3: the same nanow2v2 model from random init) built fairseq's
    BASE (49 Hz, fairseq init, input dropout), and it trained in fp32 with validation every 1k steps (§5.4: fp16,
    every 5k, as pretrain-paper.yaml sets). From a checkpoint, the model is the checkpoint's."""
    from earful.checkpoint import save_model
    from earful.config import to_dict
    from earful.eval.vocab import CharVocab
    from earful.finetune.init import build_initial_model
    from earful.model import Wav2Vec2ForPreTraining, load_model_config
    from earful.pretrain.config import load_pretrain_config

    cfg = load_finetune_config("finetune-paper", ["init=scratch"])
    paper = load_pretrain_config("pretrain-paper")
    assert cfg.model_preset == paper.model_preset == "base-nanow2v2"
    assert (cfg.precision, cfg.valid_every) == (paper.precision, paper.valid_every) == ("fp16", 5000)
    scratch = cfg.model.apply(load_model_config(cfg.model_preset))  # as build_initial_model builds it
    regularisation = {f: getattr(scratch, f) for f in to_dict(cfg.model) if getattr(cfg.model, f) is not None}
    assert to_dict(scratch) == {**to_dict(paper.model), **regularisation}  # pre-training's model, fine-tuning's masks
    assert (scratch.conv_padding, scratch.weight_init, scratch.dropout_input) == (True, "nanow2v2", 0.0)
    torch.manual_seed(0)
    save_model(tmp_path / "pt", Wav2Vec2ForPreTraining(load_model_config("tiny")))
    tuned = build_initial_model(load_finetune_config("finetune-paper", [f"init={tmp_path / 'pt'}"]), CharVocab())
    assert to_dict(tuned.cfg) == to_dict(cfg.model.apply(load_model_config("tiny")))  # the preset is not used
    demo = load_finetune_config("finetune-demo", ["init=scratch"])  # make demo's recipe: as it was
    assert (demo.model_preset, demo.precision, demo.valid_every) == ("small", "fp32", 150)


def test_unknown_character_names_the_utterance(tmp_path, labelled) -> None:
    manifest = labelled(tmp_path, ["bad", "cafe"], "odd")
    lines = manifest.read_text().splitlines()
    row = json.loads(lines[1])
    row["transcript"] = "café 2"
    manifest.write_text(lines[0] + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"odd-001.*'2'.*'é'|odd-001.*'é'"):
        Trainer(FinetuneTask(config(manifest, None, 1)), tmp_path / "run")
    cfg = config(manifest, None, 1, 'text_mapping={"é": "e", "2": "two"}')
    trainer = Trainer(FinetuneTask(cfg), tmp_path / "run2")
    assert trainer.task.vocab.decode(trainer.task.targets["odd-001"]) == "cafe two"


def test_a_finetuning_without_an_initial_model_is_refused(tmp_path, tone_corpus, caplog) -> None:
    """Without --init, fine-tuning trained a random BASE model (the CNN frozen throughout, the transformer for
    5,000 steps): hours of a baseline nobody asked for, said only in an INFO line. A random start is now asked
    for by name (init=scratch), as fairseq's w2v_path and from_pretrained are required."""
    import logging

    from earful.cli import main

    train, _ = tone_corpus
    with caplog.at_level(logging.ERROR):
        assert main(["finetune", "--train", str(train), "--out", str(tmp_path / "run"), "model_preset=tiny"]) == 2
    assert "init: no initial model: give --init CKPT" in caplog.text and "or init=scratch" in caplog.text
    assert not (tmp_path / "run").exists()


def test_cli_finetune_then_evaluate(tmp_path, tone_corpus) -> None:
    from earful.cli import main

    train, dev = tone_corpus
    out = tmp_path / "run"
    rc = main(["finetune", "--init", "scratch", "--train", str(train), "--valid", str(dev), "--out", str(out),
               "--config", "finetune-fairseq-10m", "model_preset=tiny", "max_steps=2", "batch_seconds=7",
               "device_seconds=7", "data.num_workers=0", "tensorboard=false", "threads=1",
               "freeze_transformer_steps=1"])
    assert rc == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["mask_prob"] == 0.65 and cfg["head_init"] == "xavier" and cfg["data"]["train"] == str(train)
    rc = main(["evaluate", str(out), str(dev), "--out", str(tmp_path / "eval")])
    assert rc == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["checkpoint"].endswith("step-0000002")
    assert set(summary["splits"]["dev"]["greedy"]) == {"utterances", "wer", "cer", "precision", "device_seconds"}


def test_vocab_data_spells_every_character_of_the_transcripts_and_vocab_init_keeps_a_ctc_head(
        tmp_path, labelled, caplog) -> None:
    """Fine-tuning knew a–z, space and ' only, and its error advised removing the other letters ('grün' trained
    as 'grn'); a CTC model given as --init whose vocabulary differed lost its trained head without a word.
    vocab=data spells every character of the training and validation transcripts (the run, its checkpoint, evaluate
    and a resume agree); vocab=init keeps the initial CTC model's vocabulary and head; a head thrown away is
    said, naming vocab=init."""
    import logging

    from earful.eval.evaluate import load_ctc

    train = labelled(tmp_path, ["bad", "cafe"], "odd")
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    rows[0]["transcript"], rows[1]["transcript"] = "Grün Straße", "ça va"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = config(train, None, 1, "vocab=data")
    trainer = Trainer(FinetuneTask(cfg), tmp_path / "data")
    trainer.fit()
    symbols = trainer.task.vocab.symbols
    assert symbols == ("<b>", "|", *sorted(set("grünstraßeçava")))
    assert trainer.task.vocab.decode(trainer.task.targets[rows[0]["id"]]) == "grün straße"
    _, vocab, *_ = load_ctc(tmp_path / "data")
    assert vocab.symbols == symbols  # evaluate reads what the run trained
    Trainer(FinetuneTask(config(train, None, 2, "vocab=data")), tmp_path / "data", resume=True,
            allow_changes=True).fit()  # the same vocabulary: its checkpoint's

    ctc = tmp_path / "data" / "checkpoints" / "step-0000002"
    with caplog.at_level(logging.WARNING):
        kept = Trainer(FinetuneTask(config(train, None, 1, "vocab=init", f"init={ctc}")), tmp_path / "init")
    assert kept.task.vocab.symbols == symbols and "does not fit" not in caplog.text
    head = weights(tmp_path / "data", "step-0000002")["lm_head.weight"]
    assert torch.equal(weights(tmp_path / "init", "init")["lm_head.weight"], head)
    with caplog.at_level(logging.WARNING):
        Trainer(FinetuneTask(config(train, None, 1, f"init={ctc}", "text_mapping={ü: u, ß: ss, ç: c}")),
                tmp_path / "english")
    assert f"--init {ctc} is a CTC model whose head ({len(symbols)} symbols" in caplog.text
    english = tmp_path / "english" / "checkpoints" / "init"  # its text mapping spells ü, ß, ç: vocab=init keeps it
    inherited = Trainer(FinetuneTask(config(train, None, 1, "vocab=init", f"init={english}")), tmp_path / "inherit")
    assert inherited.task.vocab.decode(inherited.task.targets[rows[0]["id"]]) == "grun strasse"
    assert "vocab=init keeps" in caplog.text
    kept.fit()
    ctc.rename(tmp_path / "moved")  # the initial model moved: the run's checkpoint holds its vocabulary
    again = Trainer(FinetuneTask(config(train, None, 1, "vocab=init", f"init={ctc}")), tmp_path / "init", resume=True)
    assert again.task.vocab.symbols == symbols
    with pytest.raises(ValueError, match="vocab=init: --init scratch is no CTC model"):
        Trainer(FinetuneTask(config(train, None, 1, "vocab=init")), tmp_path / "none")


def test_the_dev_wer_reads_the_models_transcripts_as_the_references(tmp_path, labelled, monkeypatch) -> None:
    """With text_mapping={"'": ""} the references lose their apostrophes and a model that writes one (the
    default vocabulary has it) was counted wrong for a word it got right; the validation WER, which picks the best
    checkpoint, now normalises the model's transcripts as the references (as evaluate does)."""
    from earful.finetune import task as task_module

    manifest = labelled(tmp_path, ["bad"], "one")
    monkeypatch.setattr(task_module, "greedy_decode", lambda logits, flen, vocab: ["BA'D"] * len(flen))
    cfg = config(manifest, manifest, 1, "valid_every=1", 'text_mapping={"\'": ""}')
    Trainer(FinetuneTask(cfg), tmp_path / "run").fit()
    rec = json.loads((tmp_path / "run" / "valid.jsonl").read_text().splitlines()[-1])
    assert (rec["wer"], rec["cer"]) == (0.0, 0.0)


def test_the_validation_wer_leaves_out_an_imported_vocabularys_stand_ins_as_evaluate_does(tmp_path, labelled,
                                                                                            monkeypatch) -> None:
    """With vocab=init from a model of a transformers vocabulary (<s>, </s>, <unk>: stand-in characters in
    earful's), evaluate dropped the stand-ins from its transcripts but the validation WER, which picks
    checkpoints/best, counted them: 'ba\ue003d' against 'bad' was 1 word and 1 character wrong. Both read the
    transcripts greedy_decode gives, without them."""
    import earful.eval.decode as decode
    from earful.checkpoint import save_model
    from earful.eval.vocab import placeholder
    from earful.model import Wav2Vec2ForCTC, load_model_config

    symbols = ["<pad>", "<s>", "</s>", "<unk>", "|", "'", *"abcdefghijklmnopqrstuvwxyz"]
    save_model(tmp_path / "imported", Wav2Vec2ForCTC(load_model_config("tiny"), len(symbols)),
               vocab={"symbols": symbols})
    manifest = labelled(tmp_path, ["bad"], "one")
    task = Trainer(FinetuneTask(config(manifest, manifest, 1, f"init={tmp_path / 'imported'}", "vocab=init")),
                   tmp_path / "run").task
    assert task.vocab.symbols[3] == placeholder(3)
    said = [task.vocab.index(c) for c in ("b", "a", placeholder(3), "d")]  # b a <unk> d
    monkeypatch.setattr(decode, "greedy_ids", lambda scores, lengths, blank: [said] * scores.shape[0])
    logits = torch.zeros(1, 4, len(symbols))
    assert decode.decode_batch(logits, None, task.vocab)[0] == ["bad"]  # evaluate's and transcribe's
    rec = task.validate()
    assert (rec["word_errors"], rec["char_errors"], rec["wer"]) == (0, 0, 0.0)


def test_a_transcript_the_text_mapping_empties_is_named_as_such() -> None:
    """A transcript emptied by the text mapping ("..." with {".": ""}) is not an empty transcript: the error says
    that the mapping removed its characters, and shows it."""
    from earful.data.manifest import Utterance
    from earful.eval.vocab import CharVocab
    from earful.finetune.targets import encode_transcripts

    utts = [Utterance(id="a", path="a.wav", num_samples=16000, sample_rate=16000, speaker="s", transcript="..."),
            Utterance(id="b", path="b.wav", num_samples=16000, sample_rate=16000, speaker="s", transcript="ok")]
    with pytest.raises(ValueError, match=r"1 utterance\(s\) have no characters left once normalised.*'a': '\.\.\.'"):
        encode_transcripts(utts, CharVocab(mapping={".": ""}), "train.jsonl")
    utts[0] = Utterance(id="a", path="a.wav", num_samples=16000, sample_rate=16000, speaker="s", transcript=" ")
    with pytest.raises(ValueError, match="utterance 'a' has an empty transcript"):
        encode_transcripts(utts, CharVocab(), "train.jsonl")


def test_the_cnns_gradient_scale_is_a_fine_tuning_setting(tmp_path, tone_corpus) -> None:
    """With freeze_feature_encoder=false the CNN trained at the initial model's feature_grad_mult (BASE's
    pre-training 0.1) and fine-tuning had no setting for it (fairseq's fine-tuning has feature_grad_mult):
    model.feature_grad_mult sets it; None keeps the initial model's."""
    train, _ = tone_corpus
    kept = Trainer(FinetuneTask(config(train, None, 1, "freeze_feature_encoder=false")), tmp_path / "kept").task
    assert kept.cfg.model.feature_grad_mult is None and kept.model.cfg.feature_grad_mult == 0.1
    full = Trainer(FinetuneTask(config(train, None, 1, "freeze_feature_encoder=false", "model.feature_grad_mult=1.0")),
                   tmp_path / "full").task
    assert full.model.cfg.feature_grad_mult == 1.0
    with pytest.raises(ValueError, match=r"model\.feature_grad_mult=-1\.0: expected a finite multiplier"):
        Trainer(FinetuneTask(config(train, None, 1, "model.feature_grad_mult=-1")), tmp_path / "bad")
