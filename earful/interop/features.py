"""``earful features``: per-layer representations for probing, in `transformers`' convention."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from earful.atomic import atomic_open
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, batch_invariant

log = logging.getLogger(__name__)


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    if isinstance(model, Wav2Vec2ForPreTraining | Wav2Vec2ForCTC):
        return model.wav2vec2
    raise TypeError(f"not an earful model: {type(model).__name__}")


@torch.no_grad()
def layer_states(backbone: torch.nn.Module, waves: list[torch.Tensor]) -> list[torch.Tensor]:
    """``(frames, layers + 1, dim)`` per utterance: the transformer's input and every layer's output.

    The utterances go through as one zero-padded batch: the backbone is batch-invariant (the CNN's GroupNorm
    over real samples, padded keys masked), so each utterance gets what it gets alone (within float rounding;
    ``tests/probe`` checks it). A batch of one is not padded: exactly what the utterance gets alone."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)  # (batch,)
    batch = torch.zeros(len(waves), int(lengths.max()))  # (batch, samples)
    for row, w in enumerate(waves):
        batch[row, : len(w)] = w
    padded = bool((lengths < batch.shape[1]).any())
    out = backbone(batch, lengths if padded else None, output_hidden_states=True)
    states = torch.stack(out.hidden_states, dim=2)  # (batch, frames, layers + 1, dim)
    return [states[row, : int(n)] for row, n in enumerate(out.frame_lengths)]


def layer_features(model: torch.nn.Module, wave: np.ndarray) -> np.ndarray:
    """(layers + 1, frames, dim): the transformer's input and every layer's output for one utterance
    (:func:`layer_states` of a batch of one, in `transformers`' layer-first order)."""
    backbone = backbone_of(batch_invariant(model)).eval()
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))  # (samples,)
    return layer_states(backbone, [x])[0].transpose(0, 1).contiguous().numpy()


def write_features(model: torch.nn.Module, audio: list[str], out_dir: str | Path) -> list[Path]:
    from earful.data.audio import load_audio

    stems: dict[str, str] = {}
    for path in audio:  # before any work: two inputs would write one file
        stem = Path(path).stem
        if stem in stems:
            raise ValueError(f"{path}: shares the stem {stem!r} with {stems[stem]}; their .npy files would collide")
        stems[stem] = path
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, path in tqdm(stems.items(), desc="features", unit="file", disable=len(stems) < 2):
        feats = layer_features(model, load_audio(path))
        target = out / f"{stem}.npy"
        with atomic_open(target, "wb") as f:  # whole or absent, as every file earful writes
            np.save(f, feats, allow_pickle=False)
        written.append(target)
        log.debug("%s -> %s %s", path, target, feats.shape)
    log.info("wrote %d feature files to %s", len(written), out)
    return written
