"""``earful export-hf`` writes a model card (README.md) from what the checkpoint, its run and its study recorded,
and ``--push`` goes through huggingface_hub up to the upload, which its offline mode stops (no network here)."""

import json

import pytest

from earful.checkpoint import MODEL_FILE, sha256
from earful.cli import main
from earful.train.recipe import recipe_hash

RUN = "4s-seed1"


def test_a_pretrained_and_a_finetuned_model_carry_their_record(cluster_study_local, tmp_path) -> None:
    out = cluster_study_local
    ckpt = out / "pretrain" / RUN / "checkpoints" / "step-0000012"
    assert main(["export-hf", str(ckpt), str(tmp_path / "pt")]) == 0
    card = (tmp_path / "pt" / "README.md").read_text()
    trainer = json.loads((ckpt / "trainer.json").read_text())
    valid = json.loads((out / "pretrain" / RUN / "valid.jsonl").read_text().splitlines()[-1])
    result = next(json.loads(line) for line in (out / "results.jsonl").read_text().splitlines())
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: feature-extraction\n")
    for fact in (f"# {RUN}: wav2vec 2.0, pre-trained", "| transformers class | Wav2Vec2ForPreTraining |",
                 "| parameters | 108,816 |", "| steps | 12 |", "| batch | 4 s of audio per step (1 device(s) × 4 s",
                 f"| hours of audio seen | {trainer['hours_padded']:.4g} h (padded",
                 f"SHA-256 of its rows less their audio paths `{trainer['recipe']['data.train.sha256']}`",
                 f"SHA-256 `{recipe_hash(trainer['recipe'])}`",
                 "## Validation", f"| accuracy | {valid['accuracy']:.4g} |",
                 "CTC fine-tunings of this checkpoint in study `toy-slurm`:",
                 f"| 10h | test | greedy | {100 * result['wer']:.2f} | {100 * result['cer']:.2f} |",
                 "from transformers import Wav2Vec2ForPreTraining"):
        assert fact in card, (fact, card)
    assert result["pretrain"] == RUN and result["checkpoint"] == "final"

    fine = out / "finetune" / f"{RUN}__final__10h"
    assert main(["export-hf", str(fine / "checkpoints" / "best"), str(tmp_path / "ft")]) == 0
    card = (tmp_path / "ft" / "README.md").read_text()
    summary = json.loads((out / "eval" / fine.name / "summary.json").read_text())["splits"]["test"]["greedy"]
    for fact in ("pipeline_tag: automatic-speech-recognition", "wav2vec 2.0, fine-tuned with CTC",
                 "| vocabulary | 29 symbols (CTC) |", "## Evaluation",
                 f"| initialised from | `{ckpt}` (SHA-256 `{sha256(ckpt / MODEL_FILE)}`) |",
                 f"| test | greedy | {100 * summary['wer']:.2f} | {100 * summary['cer']:.2f} |"):
        assert fact in card, (fact, card)
    # the study evaluated best: another checkpoint of the run does not carry best's figures
    other = next(c for c in sorted((fine / "checkpoints").glob("step-*")) if c.resolve() != (fine / "checkpoints" /
                                                                                             "best").resolve())
    assert main(["export-hf", str(other), str(tmp_path / "ft-other")]) == 0
    card = (tmp_path / "ft-other" / "README.md").read_text()
    assert "wav2vec 2.0, fine-tuned with CTC" in card and "## Evaluation" not in card


def test_push_goes_through_huggingface_hub_up_to_the_upload(cluster_study_local, tmp_path, monkeypatch, caplog) -> None:
    """huggingface_hub's offline mode stops the upload at its first request; the listing of the repository's files
    (an empty repository: its .gitattributes) and its creation (requests too) are recorded instead. The exported
    folder is complete either way."""
    import huggingface_hub
    from huggingface_hub import HfApi

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_offline_test")
    created, listed = [], []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo, **kw: created.append((repo, kw)))
    monkeypatch.setattr(HfApi, "list_repo_files",
                        lambda self, repo_id, **kw: listed.append(repo_id) or [".gitattributes"])
    ckpt = cluster_study_local / "pretrain" / RUN / "checkpoints" / "step-0000012"
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf"), "--push", "someone/earful-tiny", "--private"]) == 2
    assert created == [("someone/earful-tiny", {"repo_type": "model", "private": True, "exist_ok": True})]
    assert listed[0] == "someone/earful-tiny"  # before anything is uploaded
    assert "--push someone/earful-tiny: the upload failed (OfflineModeIsEnabled" in caplog.text
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"README.md", "config.json", "model.safetensors"}
    with pytest.raises(RuntimeError, match="upload failed"):
        from earful.interop.card import push_to_hub

        push_to_hub(tmp_path / "hf", "someone/earful-tiny")
