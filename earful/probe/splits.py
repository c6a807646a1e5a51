"""A probe's data: a manifest's utterances (their labels) and, loaded when a task first needs them (after its
labels are checked), their frozen features in the same order, each layer normalised per frame
(:func:`earful.probe.weighting.normalize_layers`) once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from earful.data.audio import RECEPTIVE_FIELD, check_frames
from earful.data.manifest import Utterance, read_manifest
from earful.probe.features import Extractor, FeatureSet, Upstream, features


@dataclass
class FeatureLoader:
    """How one probe run loads its splits' features: the upstream, the feature cache, the upstream's
    fingerprint (it hashes the weights) and its extractor (it loads the model), each made on first use and
    shared by the run's manifests; never kept beyond the run (a checkpoint may be rewritten before the next).
    ``release()`` lets the model go once every split's features are loaded."""

    upstream: Upstream
    cache_dir: str | os.PathLike | None = None
    progress: bool = True
    _extractor: Extractor | None = field(default=None, init=False, repr=False)
    _random: torch.nn.Module | None = field(default=None, init=False, repr=False)

    def _random_model(self) -> torch.nn.Module | None:
        """``--random-init``'s model, built once for the fingerprint (which hashes its weights) and the extractor."""
        if self.upstream.kind != "random-init":
            return None
        if self._random is None:
            self._random = self.upstream.random_model()
        return self._random

    @cached_property
    def receptive_field(self) -> int:
        return self.upstream.receptive_field()

    @cached_property
    def fingerprint(self) -> dict[str, object]:
        return self.upstream.fingerprint(self._random_model())

    def extractor(self) -> Extractor:
        if self._extractor is None:
            self._extractor = self.upstream.extractor(self._random_model(), self.fingerprint)
        return self._extractor

    def release(self) -> None:
        self._extractor = self._random = None

    def features(self, manifest: Path, utts: list[Utterance]) -> FeatureSet:
        return features(self.upstream, manifest, self.cache_dir, utts=utts, fingerprint=self.fingerprint,
                        extractor=self.extractor, progress=self.progress)


@dataclass
class Split:
    """A manifest's utterances and the loader of their features (None: read for its labels only, as a check
    before any work does)."""

    manifest: Path
    utts: list[Utterance]
    loader: FeatureLoader | None

    @cached_property
    def feats(self) -> FeatureSet:
        if self.loader is None:
            raise RuntimeError(f"{self.manifest}: read for its labels only, without a feature loader")
        return self.loader.features(self.manifest, self.utts).normalize_()


def load_split(loader: FeatureLoader | None, manifest: str | os.PathLike) -> Split:
    """The manifest's utterances now; their features, by ``loader``, on first use of ``feats`` (``loader``
    None: the labels only). ValueError naming the manifest where an utterance is shorter than one frame needs
    (the upstream's CNN's receptive field, a filterbank's window: 400 samples at 16 kHz; without ``loader`` the
    standard CNN's), before any feature is extracted."""
    utts = read_manifest(manifest)
    check_frames(utts, str(manifest), "feature frame", "a probe reads every utterance of its manifests",
                 loader.receptive_field if loader is not None else RECEPTIVE_FIELD)
    return Split(Path(manifest), utts, loader)


def _blank(value: object) -> bool:
    """A label that is none: missing, of only whitespace, or slots (an intent) none or one of them blank."""
    if isinstance(value, dict):
        return not value or any(_blank(v) for v in value.values())
    return not str(value or "").strip()


def require(split: Split, label: str, way_out: str) -> None:
    """ValueError naming the manifest, how many utterances lack ``label`` (a manifest field; blank, or with a
    blank slot, is none too) and which."""
    missing = [u.id for u in split.utts if _blank(getattr(u, label))]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:3]) + (" …" if len(missing) > 3 else "")
        slots = " (or one blank slot)" if any(isinstance(getattr(u, label), dict) for u in split.utts) else ""
        raise ValueError(f"{split.manifest}: {len(missing)} of {len(split.utts)} utterances have no {label} "
                         f"({shown}){slots}; {way_out}")
