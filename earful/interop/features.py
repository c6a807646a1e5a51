"""``earful features``: per-layer representations for probing, in `transformers`' convention."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, batch_invariant

log = logging.getLogger(__name__)


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    if isinstance(model, Wav2Vec2ForPreTraining | Wav2Vec2ForCTC):
        return model.wav2vec2
    raise TypeError(f"not an earful model: {type(model).__name__}")


@torch.no_grad()
def layer_features(model: torch.nn.Module, wave: np.ndarray) -> np.ndarray:
    """(layers + 1, frames, dim): the transformer's input and every layer's output for one utterance."""
    backbone = backbone_of(batch_invariant(model)).eval()
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None]  # (1, samples): nothing padded
    out = backbone(x, None, output_hidden_states=True)
    return torch.stack(out.hidden_states, 0)[:, 0].numpy()


def write_features(model: torch.nn.Module, audio: list[str], out_dir: str | Path) -> list[Path]:
    from earful.data.audio import load_audio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    stems: set[str] = set()
    for path in tqdm(audio, desc="features", unit="file", disable=len(audio) < 2):
        stem = Path(path).stem
        if stem in stems:
            raise ValueError(f"{path}: two inputs share the stem {stem!r}; their .npy files would collide")
        stems.add(stem)
        feats = layer_features(model, load_audio(path))
        target = out / f"{stem}.npy"
        np.save(target, feats)
        written.append(target)
        log.debug("%s -> %s %s", path, target, feats.shape)
    log.info("wrote %d feature files to %s", len(written), out)
    return written
