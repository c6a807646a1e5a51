"""earful import-fairseq against fairseq's own wav2vec 2.0: the largest differences of outputs, by hand.

fairseq does not install on Python 3.11 with today's torch, and its package imports every task and model, so this
loads its wav2vec 2.0 modules from a source checkout (its configs use dataclass instances as defaults, which 3.11
refuses: those classes are made hashable by identity, as before 3.11; its package __init__ files are replaced by
stubs, tasks' and models' less their import-everything loops). Small models with random weights, saved as
fairseq's trainer saves them (``cfg`` as ``OmegaConf.to_container``; the argparse era's ``args`` Namespace with
``latent_temp`` and ``loss_weights`` as text), go through ``earful import-fairseq``; it prints, per case, the
largest absolute difference of the transformer's output, the CNN features, the quantized targets (and whether the
codes are the same), final_proj, a masked forward, a padded batch, and a CTC model's logits. Measured 2026-12-08
(fairseq 3d262bb, Sep 2025; torch 2.13 CPU): 0 everywhere but the padded GroupNorm batch, where earful's
batch-invariant GroupNorm (``group_norm_padding: excluded``, docs/batch-invariance.md) is within 4e-6 of fairseq
on the utterance alone, and ``included`` equals fairseq's padded batch.

    git clone https://github.com/facebookresearch/fairseq /tmp/fairseq   # or any copy of its source
    .venv/bin/python -m pip install --target /tmp/fairseq-deps omegaconf hydra-core bitarray sacrebleu regex
    rm -rf /tmp/fairseq-deps/numpy*       # keep earful's numpy
    .venv/bin/python benchmarks/fairseq_parity.py --fairseq /tmp/fairseq --deps /tmp/fairseq-deps
"""

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2,
             conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32,2,2)] + [(32,2,2)]", conv_pos=16,
             conv_pos_groups=4, latent_vars=32, latent_groups=2, final_dim=32, quantize_targets=True)
LETTERS = ["|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D"]


def load_fairseq(source: Path, deps: Path) -> None:
    """Make fairseq's wav2vec 2.0 modules importable from ``source`` (see the module's docstring)."""
    sys.path.insert(0, str(source))
    sys.path.append(str(deps))
    original = dataclasses._get_field

    def get_field(cls, name, kind, *rest):  # fairseq's dataclass-instance defaults: hashable by identity
        default = cls.__dict__.get(name, dataclasses.MISSING)
        default = default.default if isinstance(default, dataclasses.Field) else default
        if dataclasses.is_dataclass(default) and not isinstance(default, type) and type(default).__hash__ is None:
            type(default).__hash__ = object.__hash__
        return original(cls, name, kind, *rest)

    dataclasses._get_field = get_field
    root = source / "fairseq"

    def package(name: str, path: Path, cut: str | None = None) -> None:
        module = types.ModuleType(name)
        module.__path__, module.__file__ = [str(path)], str(path / "__init__.py")
        sys.modules[name] = module
        if cut is not None:  # its __init__ up to the loop that imports every task or model
            text = (path / "__init__.py").read_text()
            exec(compile(text[:text.index(cut)], module.__file__, "exec"), module.__dict__)

    package("fairseq", root)
    package("fairseq.tasks", root / "tasks", "tasks_dir = os.path.dirname")
    package("fairseq.models", root / "models", "models_dir = os.path.dirname")
    package("fairseq.models.wav2vec", root / "models" / "wav2vec")


def randomise(model: torch.nn.Module) -> None:
    """Weights away from their init (norms off 1, biases off 0), the same for a seed."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


LEFTOVERS = {"optimizer_history": [{"criterion_name": "Wav2vecCriterion", "optimizer_name": "FairseqAdam",
                                    "lr_scheduler_state": {"best": 1.2}, "num_updates": 10}],
             "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1}, "previous_training_time": 1.0}}


def imported(pt: Path, dictionary: Path | None = None) -> torch.nn.Module:
    """``earful import-fairseq pt`` run as a user runs it, and the model it wrote."""
    from earful.checkpoint import load_model

    out = pt.with_suffix("")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "earful.cli", "import-fairseq", str(pt), str(out)]
    subprocess.run(cmd + (["--dict", str(dictionary)] if dictionary else []), check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    model, _ = load_model(out)
    return model.eval()


def model_settings(cfg) -> dict:
    from omegaconf import OmegaConf

    return {**OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True), "_name": "wav2vec2"}


def as_namespace(settings: dict, **more) -> argparse.Namespace:
    """The argparse era's settings: fairseq <= 0.10 kept latent_temp and loss_weights as text."""
    plain = {k: v for k, v in settings.items() if k != "_name"}
    return argparse.Namespace(**{**plain, "latent_temp": "(2,0.5,0.999995)", "loss_weights": "[0.1, 10]", **more})


def pretraining(label: str, cfg, style: str, tmp: Path) -> None:
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model

    torch.manual_seed(0)
    theirs = Wav2Vec2Model.build_model(cfg)
    randomise(theirs)
    theirs.eval()
    settings = model_settings(cfg)
    if style == "cfg":
        saved = {"args": None, "cfg": {"model": settings, "task": {"_name": "audio_pretraining", "normalize": False},
                                       "criterion": {"_name": "wav2vec", "loss_weights": [0.1, 10]}}}
    else:
        saved = {"args": as_namespace(settings, arch="wav2vec2", task="audio_pretraining", normalize=False)}
    torch.save({**saved, "model": theirs.state_dict(), **LEFTOVERS}, tmp / f"{label}.pt")
    ours = imported(tmp / f"{label}.pt")
    wave = torch.randn(2, 8000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = theirs.extract_features(wave, padding_mask=None, mask=False)
        got = ours.wav2vec2(wave, None)
        n = ref["features"].shape[0] * ref["features"].shape[1]
        q = theirs.quantizer(ref["features"], produce_targets=True)
        quantized, codes, _ = ours.quantizer(got.normed_features.reshape(n, -1))
        mask = torch.zeros(2, ref["x"].shape[1], dtype=torch.bool)
        mask[:, 3:8] = True
        lengths = torch.tensor([8000, 6000])
        padded = wave.clone()
        padded[1, 6000:] = 0
        ref_padded = theirs.extract_features(padded, padding_mask=torch.arange(8000)[None] >= lengths[:, None],
                                             mask=False)["x"]
        got_padded = ours.wav2vec2(padded, lengths)
        real = ~got_padded.padding_mask
        alone = theirs.extract_features(padded[1:, :6000], padding_mask=None, mask=False)["x"][0]
        diffs = {
            "x": ref["x"] - got.hidden,
            "features": ref["features"] - got.normed_features,
            "project_q": theirs.project_q(q["x"]) - ours.project_q(quantized).view(*q["x"].shape[:2], -1),
            "final_proj": theirs.final_proj(ref["x"]) - ours.final_proj(got.hidden),
            "masked": theirs.forward(wave, None, mask=True, features_only=True, mask_indices=mask)["x"]
            - ours.wav2vec2(wave, None, mask=mask).hidden,
            "padded, utterance alone": alone - got_padded.hidden[1, :alone.shape[0]],
            "padded, same batch": (ref_padded - got_padded.hidden)[real],
        }
        same_codes = torch.equal(q["targets"].reshape(n, -1), codes)
    print(f"{label}: " + ", ".join(f"{k} {v.abs().max().item():.1e}" for k, v in diffs.items())
          + f", codes {'the same' if same_codes else 'DIFFER'}")


def ctc(label: str, pre_cfg, style: str, tmp: Path) -> None:
    from fairseq.models.wav2vec import wav2vec2_asr
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    pre = model_settings(pre_cfg)

    class Task:  # the dictionary and the backbone fairseq's fine-tuning task gives Wav2VecCtc
        source_dictionary = None
        target_dictionary = list(range(4 + len(LETTERS)))

        def build_model(self, cfg, from_checkpoint=False):
            return Wav2Vec2Model.build_model(cfg)

    wav2vec2_asr.tasks.setup_task = lambda *a, **k: Task()
    cfg = OmegaConf.structured(wav2vec2_asr.Wav2Vec2CtcConfig(
        w2v_path="pretrained.pt", normalize=False, data="x", ddp_backend="legacy_ddp"))  # no hydra to resolve it
    with wav2vec2_asr.open_dict(cfg):
        cfg.w2v_args = OmegaConf.create({"model": pre, "task": {"_name": "audio_pretraining", "normalize": False}})
    theirs = wav2vec2_asr.Wav2VecCtc.build_model(cfg, Task())
    randomise(theirs)
    theirs.eval()
    settings = {**OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "_name": "wav2vec_ctc"}
    if style == "cfg":
        saved = {"args": None, "cfg": {"model": settings, "task": {"_name": "audio_finetuning", "normalize": False},
                                       "criterion": {"_name": "ctc"}}}
    else:
        inner = as_namespace(pre, arch="wav2vec2", task="audio_pretraining", normalize=False)
        saved = {"args": argparse.Namespace(**{**{k: v for k, v in settings.items() if k != "_name"},
                                               "arch": "wav2vec_ctc", "w2v_args": inner})}
    torch.save({**saved, "model": theirs.state_dict(), **LEFTOVERS}, tmp / f"{label}.pt")
    (tmp / "dict.ltr.txt").write_text("".join(f"{c} {1000 - i}\n" for i, c in enumerate(LETTERS)))
    ours = imported(tmp / f"{label}.pt", tmp / "dict.ltr.txt")
    wave = torch.randn(2, 8000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = theirs.get_logits(theirs(source=wave, padding_mask=None)).transpose(0, 1)
        got, _ = ours(wave, None)
    print(f"{label}: CTC logits {(ref - got).abs().max().item():.1e}, argmax "
          f"{'the same' if torch.equal(ref.argmax(-1), got.argmax(-1)) else 'DIFFERS'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fairseq", type=Path, required=True, help="a copy of fairseq's source (holding fairseq/)")
    p.add_argument("--deps", type=Path, required=True, help="a pip --target folder: omegaconf, hydra-core, ...")
    args = p.parse_args()
    load_fairseq(args.fairseq, args.deps)
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config

    print("torch", torch.__version__, "python", sys.version.split()[0])
    layer_norm = dict(extractor_mode="layer_norm", layer_norm_first=True)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for style in ("cfg", "namespace"):
            pretraining(f"group norm, {style}", Wav2Vec2Config(**SMALL), style, tmp)
            pretraining(f"layer norm first, {style}", Wav2Vec2Config(**SMALL, **layer_norm), style, tmp)
            ctc(f"CTC, {style}", Wav2Vec2Config(**SMALL), style, tmp)
            ctc(f"CTC layer norm, {style}", Wav2Vec2Config(**SMALL, **layer_norm), style, tmp)
        for extra in (dict(conv_bias=True), dict(final_dim=0), dict(latent_dim=48), dict(latent_groups=1),
                      dict(encoder_embed_dim=32), dict(conv_pos=15)):
            name = ", ".join(f"{k}={v}" for k, v in extra.items())
            pretraining(name, Wav2Vec2Config(**{**SMALL, **extra}), "cfg", tmp)


if __name__ == "__main__":
    main()
