"""Frozen features for probing: the hidden states of every layer (or log-mel filterbanks), extracted once per
(upstream, manifest) and cached on disk as float16.

The cache key hashes what decides the features: the checkpoint's files (weights and config), or the
architecture and seed of a random init, or the filterbank's settings; each utterance's id, audio file, offset,
length and sample rate, in the manifest's order; and each audio file's size and modification time. A changed
checkpoint, utterance or audio file is another key, never a stale hit; labels are not part of it (a manifest
that `earful phonemize` or a transcript fix rewrote is still a hit). An entry is a folder ``CACHE/<key>/``
with ``features.npy`` (float16, ``(frames, layers, dim)``, all utterances one after another) and ``index.json``
(ids, frames per utterance, the array's size and SHA-256), each written atomically, the index last: an entry
without a valid index, or whose array does not match it, is extracted again (with a warning), never half-read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from earful.atomic import atomic_save_npy, atomic_write_json
from earful.checkpoint import INFO_FILE, MODEL_FILE, CheckpointError, file_record, read_info, sha256, verify_file
from earful.data.manifest import Utterance, read_manifest
from earful.lock import LOCK_FILE, lock_file
from earful.probe import fbank
from earful.probe.weighting import normalize_layers
from earful.train.distributed import resolve_device
from earful.train.state import require_checkpoint

log = logging.getLogger(__name__)

# 2: extracted in padded batches by a batch-invariant backbone; 3: keyed by the utterances' audio, not the
# manifest's bytes (an entry of 2 is never found again: `earful cache remove --incomplete` removes it)
CACHE_FORMAT = "earful-features-3"
FEATURES_FILE, INDEX_FILE = "features.npy", "index.json"
EXTRACT_GROUP = 16  # utterances handed to ``layer_states`` at a time (one padded batch)

# an upstream's feature extractor: (waves → per-utterance (frames, layers, dim) features, frames per second)
Extractor = tuple[Callable[[list[torch.Tensor]], list[torch.Tensor]], float]


def default_cache_dir() -> Path:
    """``$EARFUL_CACHE/features``, else ``$XDG_CACHE_HOME/earful/features``, else ``~/.cache/earful/features``."""
    if os.environ.get("EARFUL_CACHE"):
        return Path(os.environ["EARFUL_CACHE"]) / "features"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "earful" / "features"


# ---------------------------------------------------------------------------------------------- upstreams

@dataclass(frozen=True)
class Upstream:
    """Where features come from: an earful checkpoint, the same architecture at a random init (seeded by
    ``init_seed``), or log-mel filterbanks (``kind="fbank"``, no checkpoint)."""

    kind: Literal["checkpoint", "random-init", "fbank"]
    ckpt: str | None = None
    init_seed: int = 0
    device: str = "auto"  # where a model extracts (auto: CUDA where there is one); filterbanks: the CPU
    imported_from: str | None = None  # an import's transformers folder or ORG/NAME@COMMIT: named in its stead

    @classmethod
    def parse(cls, spec: str | os.PathLike, *, random_init: bool = False, init_seed: int = 0,
              device: str = "auto", device_key: str = "--device", cache_dir: str | os.PathLike | None = None
              ) -> Upstream:
        """``"fbank"``, a checkpoint folder, a run folder for its latest, or a transformers folder or Hub model id
        (its import, :func:`earful.interop.hub.imported_checkpoint`, beside the feature cache ``cache_dir``: named
        by it, ``imported_from``); with ``random_init``: its architecture, freshly initialised; extracted on
        ``device``, which errors name as ``device_key`` (a study's: the recipe's ``device``)."""
        if str(spec) == "fbank":
            if random_init:
                raise ValueError("fbank has no weights to initialise: drop --random-init")
            return cls("fbank")
        from earful.interop.hub import imported_checkpoint, imports_folder

        imported = imported_checkpoint(str(spec), "probe", imports_folder(cache_dir))  # a transformers model
        ckpt = imported.ckpt if imported else require_checkpoint(spec)  # a run folder: its latest
        resolve_device(device, device_key)  # refused now, not after the model loads
        if random_init and not 0 <= init_seed < 2**32:  # torch maps a negative seed onto another: -1 is 2**64 - 1
            raise ValueError(f"--init-seed {init_seed}: expected an integer from 0 to 2**32 - 1")
        return cls("random-init" if random_init else "checkpoint", str(ckpt.resolve()), init_seed, device,
                   imported.imported_from if imported else None)

    @property
    def name(self) -> str:
        if self.kind == "fbank":
            return "fbank"
        what = self.imported_from or self.ckpt
        return f"{what} (random init, seed {self.init_seed})" if self.kind == "random-init" else str(what)

    def title(self, probe_seed: int, *, short: bool = False) -> str:
        """The upstream and the seeds, for a results page or (``short``: the checkpoint's path cut to its last three
        parts, RUN/checkpoints/NAME; an import's ``imported_from`` whole) a plot: ``CKPT (seed 0)``. A random init's
        seed is said once where the probe's is the same (it read "(random init, seed 0) (seed 0)"), and both are
        named where they differ."""
        where = ("fbank" if self.ckpt is None else self.imported_from if self.imported_from
                 else "/".join(Path(self.ckpt).parts[-3:]) if short else self.ckpt)
        if self.kind != "random-init":
            return f"{where} (seed {probe_seed})"
        seeds = (f"seed {probe_seed}" if probe_seed == self.init_seed
                 else f"init seed {self.init_seed}, probe seed {probe_seed}")
        return f"{where} (random init, {seeds})"

    def checkpoint(self) -> Path:
        """The checkpoint; an import removed since (an ``earful cache remove`` while a study or probe ran) is
        imported again from ``imported_from``, into the same folder, or a CheckpointError says what happened."""
        ckpt = Path(str(self.ckpt))
        if self.imported_from is None:
            return ckpt
        from earful.interop.hub import complete, imported_checkpoint

        if not complete(ckpt):
            log.warning("%s: its import %s was removed meanwhile (earful cache remove?): imported again",
                        self.imported_from, ckpt)
            again = imported_checkpoint(self.imported_from, "probe", ckpt.parent)
            if again is None or again.ckpt != ckpt:
                raise CheckpointError(f"{ckpt}: the import of {self.imported_from} was removed meanwhile, and "
                                      f"{self.imported_from} no longer holds that model; run again")
        return ckpt

    def receptive_field(self) -> int:
        """Samples at 16 kHz one feature frame needs: the model's CNN's (400 for the standard one; a shorter
        utterance gets no frame), a filterbank's window."""
        if self.kind == "fbank":
            return fbank.WINDOW
        from earful.checkpoint import model_config

        return model_config(self.checkpoint()).receptive_field

    def hidden_states(self) -> int:
        """How many hidden states a frame's features hold: the transformer's input and each layer's output (a
        filterbank: one)."""
        if self.kind == "fbank":
            return 1
        from earful.checkpoint import model_config

        return model_config(self.checkpoint()).num_layers + 1

    def fingerprint(self, random_model: torch.nn.Module | None = None) -> dict[str, object]:
        """What decides the features, by content. ``random_model``: ``random_model()``'s, where the caller has
        built it already (as ``FeatureLoader`` does, for the extractor too)."""
        if self.kind == "fbank":
            return {"kind": "fbank", "window": fbank.WINDOW, "hop": fbank.HOP, "n_fft": fbank.N_FFT,
                    "n_mels": fbank.N_MELS, "low_hz": fbank.LOW_HZ}
        ckpt = self.checkpoint()
        if self.kind == "random-init":  # the weights themselves: earful's init code or torch's draws may change
            digest = hashlib.sha256()
            model = self.random_model() if random_model is None else random_model
            for name, tensor in model.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
            return {"kind": "random-init", "model": read_info(ckpt)["model"], "init_seed": self.init_seed,
                    "weights": digest.hexdigest(), **self._on()}
        verify_file(ckpt / MODEL_FILE, None)  # there (a copy without weights says so), before it is hashed
        return {"kind": "checkpoint", "weights": sha256(ckpt / MODEL_FILE), "info": sha256(ckpt / INFO_FILE),
                **self._on()}

    def _on(self) -> dict[str, str]:
        """The device in the fingerprint where it is not the CPU (a GPU's features differ in their last bits;
        the CPU's keys stay those of the cache's earlier entries)."""
        kind = resolve_device(self.device, "--device").type
        return {} if kind == "cpu" else {"device": kind}

    def random_model(self) -> torch.nn.Module:
        """``--random-init``: the checkpoint's architecture with fresh weights drawn from ``init_seed``."""
        from earful.checkpoint import build_model, model_config

        cfg = model_config(self.checkpoint())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            return build_model("pretraining", cfg)

    def extractor(self, random_model: torch.nn.Module | None = None,
                  fingerprint: dict[str, object] | None = None) -> Extractor:
        """(waves → per-utterance ``(frames, layers, dim)`` features, frames per second); ``random_model`` as
        ``fingerprint``'s. ``fingerprint``: this upstream's, as the features are keyed by (a checkpoint's):
        the model is built from the bytes of files whose SHA-256 it holds, else a CheckpointError. (The weights
        were hashed, then read again to load: a checkpoint replaced in between, a training writing it again at
        the same path, had its features cached under the other weights' hash.)"""
        if self.kind == "fbank":
            filters = fbank.mel_filters()
            return (lambda waves: [fbank.log_mel(w, filters)[:, None, :] for w in waves]), fbank.FRAME_RATE
        from earful.checkpoint import load_model
        from earful.interop.features import backbone_of, layer_states
        from earful.model import batch_invariant

        if self.kind == "random-init":
            model = self.random_model() if random_model is None else random_model
        else:
            expect = None
            if fingerprint is not None and fingerprint.get("kind") == "checkpoint":
                expect = {"weights": fingerprint["weights"], "info": fingerprint["info"]}
            model = load_model(str(self.checkpoint()), expect=expect)[0]
        device = resolve_device(self.device, "--device")
        backbone = backbone_of(batch_invariant(model)).eval().to(device)
        stride = int(np.prod(backbone.cfg.conv_stride))
        return (lambda waves: [s.cpu() for s in layer_states(backbone, [w.to(device) for w in waves])],
                fbank.SAMPLE_RATE / stride)


# ---------------------------------------------------------------------------------------------- features

@dataclass
class FeatureSet:
    """Features of a manifest's utterances, one after another: ``data`` (frames, layers, dim) float16."""

    ids: list[str]
    frames: torch.Tensor  # (utterances,) int64
    data: torch.Tensor  # (total frames, layers, dim) float16
    frame_rate: float

    def __post_init__(self) -> None:
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.frames.cumsum(0)])  # (utterances + 1,)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_layers(self) -> int:
        return self.data.shape[1]

    @property
    def dim(self) -> int:
        return self.data.shape[2]

    def utterance(self, i: int) -> torch.Tensor:
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]  # (frames, layers, dim)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-padded ``(batch, frames, layers, dim)`` float16 and ``(batch,)`` frame counts."""
        seqs = [self.utterance(i) for i in indices]
        return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True), self.frames[list(indices)]

    def normalize_(self, chunk_frames: int = 1 << 16) -> FeatureSet:
        """Normalise each layer of every frame in place (:func:`normalize_layers`, kept in float16): what the
        sequence probes read. ``pooled`` is computed first, from the hidden states as extracted. Returns ``self``."""
        _ = self.pooled  # cached now, before the frames change
        for start in range(0, self.data.shape[0], chunk_frames):
            part = self.data[start : start + chunk_frames]
            part.copy_(normalize_layers(part).to(self.data.dtype))
        return self

    @cached_property
    def pooled(self) -> torch.Tensor:
        """``(utterances, layers, 2 × dim)`` float32: each layer's mean and standard deviation per channel over the
        utterance's frames (statistics pooling; what the utterance tasks classify), of the hidden states as
        extracted (a frame's scale is information here); computed once."""
        n, chunk_frames = len(self.ids), 1 << 16
        owner = torch.repeat_interleave(torch.arange(n), self.frames)  # (total frames,) utterance of each frame
        count = self.frames.clamp(min=1)[:, None, None].float()
        # two passes: the squared deviations from each utterance's mean, not E[x²] − mean², which cancels
        # catastrophically in float32 for a channel whose mean is large against its spread (std 0 at ~600×)
        sums = torch.zeros(n, self.num_layers, self.dim)
        for start in range(0, self.data.shape[0], chunk_frames):
            sums.index_add_(0, owner[start : start + chunk_frames], self.data[start : start + chunk_frames].float())
        mean = sums / count
        squares = torch.zeros_like(sums)
        for start in range(0, self.data.shape[0], chunk_frames):
            who = owner[start : start + chunk_frames]
            part = self.data[start : start + chunk_frames].to(torch.float32, copy=True)  # (chunk, layers, dim)
            squares.index_add_(0, who, part.sub_(mean[who]).square_())  # in place: two chunk-sized tensors
        std = (squares / count).sqrt()
        return torch.cat([mean, std], dim=-1)


def features(upstream: Upstream, manifest: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
             *, utts: Sequence[Utterance] | None = None, fingerprint: dict[str, object] | None = None,
             extractor: Callable[[], Extractor] | None = None, progress: bool = True) -> FeatureSet:
    """The features of every utterance of ``manifest``, from the cache or extracted (and cached) now, in the
    manifest's order. ``utts``: its utterances, where the caller has read the manifest already (read now if not);
    ``fingerprint``: ``upstream.fingerprint()``, where the caller has it already (it hashes the weights);
    ``extractor``: gives ``upstream.extractor(fingerprint=...)``, where the caller keeps one (it loads the
    model, from files of the fingerprint's hashes)."""
    manifest = Path(manifest)
    if utts is None:
        utts = read_manifest(manifest)
    if not utts:
        raise ValueError(f"{manifest}: no utterances")
    fingerprint = upstream.fingerprint() if fingerprint is None else fingerprint
    key = cache_key(fingerprint, manifest, utts)
    entry = Path(cache_dir or default_cache_dir()) / key
    cached = _load(entry, key)
    if cached is not None:
        log.info("features of %s by %s: cached in %s", manifest, upstream.name, entry)
        try:
            os.utime(entry / INDEX_FILE)  # its last use, for `earful cache list` and `remove --older-than`
        except OSError:  # a read-only cache serves all the same
            pass
        return cached
    extract, frame_rate = extractor() if extractor is not None else upstream.extractor(fingerprint=fingerprint)
    feats = _extract(extract, frame_rate, utts, f"{manifest.name} ({upstream.kind})", progress, manifest)
    _store(entry, key, feats, {"upstream": upstream.name, "manifest": str(manifest.resolve())})
    log.info("features of %s by %s: %d frames × %d layers × %d extracted into %s", manifest, upstream.name,
             feats.data.shape[0], feats.num_layers, feats.dim, entry)
    return feats


def cache_key(fingerprint: dict[str, object], manifest: Path, utts: Sequence[Utterance]) -> str:
    """The cache entry's name: a hash of the upstream's ``fingerprint``, the cache's format and, in order, each
    utterance's id, audio file (path, size, modification time), offset, length and sample rate: what its
    features depend on, not its labels."""
    audio = hashlib.sha256()
    for u in utts:
        try:
            st = os.stat(u.path)
        except OSError as e:
            raise FileNotFoundError(f"{manifest}: utterance {u.id!r}: audio file {u.path} unreadable ({e})") from None
        fields = (u.id, u.path, st.st_size, st.st_mtime_ns, u.offset, u.num_samples, u.sample_rate)
        audio.update(json.dumps(fields).encode() + b"\n")
    parts = {"format": CACHE_FORMAT, "upstream": fingerprint, "utterances": audio.hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


F16_MAX = float(torch.finfo(torch.float16).max)


def _extract(extract: Callable[[list[torch.Tensor]], list[torch.Tensor]], frame_rate: float,
             utts: Sequence[Utterance], desc: str, progress: bool, manifest: Path | None = None) -> FeatureSet:
    from earful.data.audio import AudioError
    from earful.data.dataset import AudioDataset

    audio = AudioDataset(utts)  # checks each file against its manifest length

    def wave(i: int) -> torch.Tensor:
        try:
            return torch.from_numpy(audio[i].wave)
        except AudioError as e:  # the file named by the loader; the manifest and the way out here
            raise AudioError(f"{manifest or desc}: utterance {utts[i].id!r}: {e}; a probe reads every utterance of "
                             "its manifests: mend the file, or leave its row out of the manifest") from None

    parts: list[torch.Tensor] = []
    with tqdm(total=len(utts), desc=f"features {desc}", unit="utt", disable=not progress) as bar:
        for start in range(0, len(utts), EXTRACT_GROUP):
            waves = [wave(i) for i in range(start, min(start + EXTRACT_GROUP, len(utts)))]
            for k, f in enumerate(extract(waves)):
                largest = float(f.abs().max()) if f.numel() else 0.0  # NaN or inf when not finite
                if not largest <= F16_MAX:
                    # float16 holds ±65504: beyond, the cache held inf and the probes trained on NaN, silently
                    raise ValueError(f"{desc}: utterance {utts[start + k].id!r}: features not finite or beyond "
                                     f"float16's ±{F16_MAX:g} (largest {largest:.3g}), which the feature cache "
                                     "stores; this checkpoint's activations cannot be probed as they are")
                parts.append(f.to(torch.float16))
            bar.update(len(waves))
    frames = torch.tensor([p.shape[0] for p in parts], dtype=torch.long)
    return FeatureSet([u.id for u in utts], frames, torch.cat(parts), frame_rate)


def _store(entry: Path, key: str, feats: FeatureSet, about: dict[str, str]) -> None:
    with writing(entry):
        atomic_save_npy(entry / FEATURES_FILE, feats.data.numpy())
        atomic_write_json(entry / INDEX_FILE, {
            "format": CACHE_FORMAT, "key": key, **about, "frame_rate": feats.frame_rate, "ids": feats.ids,
            "frames": feats.frames.tolist(), "shape": list(feats.data.shape),
            "files": {FEATURES_FILE: file_record(entry / FEATURES_FILE)},
        })


@contextmanager
def writing(entry: Path) -> Iterator[None]:
    """The entry's folder, created, with a shared lock on its ``LOCK_FILE`` while a probe writes its features and
    index (seconds to minutes for BASE's features of an hour of audio): ``earful cache remove`` takes the lock
    exclusively or leaves the entry alone (it removed an entry being written, and the probe died). Probes writing
    one entry at once share it. A lock taken on a file a removal has just unlinked is taken again, on the folder
    made anew (``lock_file``)."""
    f = lock_file(entry / LOCK_FILE, shared=True)
    try:
        yield
    finally:
        f.close()


def _load(entry: Path, key: str) -> FeatureSet | None:
    """The cached features, or None when there is no entry or it cannot be used (then it is rebuilt)."""
    index_path = entry / INDEX_FILE
    if not index_path.exists():
        return None
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != CACHE_FORMAT or index.get("key") != key:
            raise ValueError("written for another key or by another version")
        verify_file(entry / FEATURES_FILE, index["files"][FEATURES_FILE])
        data = np.load(entry / FEATURES_FILE, allow_pickle=False)
        frames = torch.tensor(index["frames"], dtype=torch.long)
        if data.dtype != np.float16 or list(data.shape) != index["shape"] or int(frames.sum()) != data.shape[0] \
                or len(index["ids"]) != len(frames):
            raise ValueError(f"array {data.dtype} {data.shape} does not match its index")
    except (OSError, ValueError, KeyError, TypeError, CheckpointError) as e:
        log.warning("%s: unreadable feature cache entry (%s); extracting again", entry, e)
        return None
    return FeatureSet(index["ids"], frames, torch.from_numpy(data), float(index["frame_rate"]))
