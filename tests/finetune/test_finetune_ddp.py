"""Fine-tuning under DDP: 2 processes × 1 micro-batch == 1 process × 2 micro-batches, through the transformer
freeze (gradients computed, all-reduced and dropped) and its end; validation WER counts every utterance once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_two_process_ddp_equals_one_process_accumulated(tmp_path, tone_corpus, labelled) -> None:
    train, _ = tone_corpus
    dev = labelled(tmp_path / "dev", ["bad cafe", "head", "fad"], "dev3", 5)  # 3 batches for 2 ranks: one repeats
    common = ["finetune", "--init", "scratch", "--train", str(train), "--valid", str(dev), "model_preset=tiny",
              "batch_seconds=3.5", "device_seconds=1.75", "max_steps=4", "freeze_transformer_steps=2",
              "log_every=1", "valid_every=2", "ckpt_every=100", "data.num_workers=0", "optim.lr=5e-3",
              "tensorboard=false", "threads=1", "model.dropout=0", "model.attention_dropout=0",
              "model.dropout_input=0", "model.final_dropout=0"]  # fmt: skip
    _run([sys.executable, "-m", "earful.cli", *common, "--out", str(tmp_path / "one")])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          "-m", "earful.cli", *common, "--out", str(tmp_path / "two")])  # fmt: skip
    a = load_file(str(tmp_path / "one/checkpoints/step-0000004/model.safetensors"))
    b = load_file(str(tmp_path / "two/checkpoints/step-0000004/model.safetensors"))
    init = load_file(str(tmp_path / "one/checkpoints/init/model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    moved = [k for k in a if not torch.equal(a[k], init[k])]
    assert any(k.startswith("wav2vec2.encoder.") for k in moved) and "lm_head.weight" in moved
    assert not any(k.startswith(("wav2vec2.feature_encoder.", "wav2vec2.feature_projection.")) for k in moved)
    # the checkpoint keeps every rank's data position: each resumes its own
    state = torch.load(tmp_path / "two/checkpoints/step-0000004/state.pt", weights_only=True)
    assert [ld["rank"] for ld in state["loaders"]] == [0, 1]
    va, vb = ([json.loads(x) for x in (tmp_path / r / "valid.jsonl").read_text().splitlines()] for r in ("one", "two"))
    assert [r["reference_words"] for r in va] == [r["reference_words"] for r in vb] == [4, 4]
    assert [r["word_errors"] for r in va] == [r["word_errors"] for r in vb]
