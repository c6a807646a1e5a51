"""A probe's data: a manifest's utterances (their labels) and, loaded when a task first needs them (after its
labels are checked), their frozen features in the same order, each layer normalised per frame
(:func:`earful.probe.weighting.normalize_layers`) once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from earful.data.manifest import Utterance, read_manifest
from earful.probe.features import FeatureSet, Upstream, features


@dataclass
class Split:
    manifest: Path
    utts: list[Utterance]
    upstream: Upstream
    cache_dir: str | os.PathLike | None = None
    progress: bool = True

    @cached_property
    def feats(self) -> FeatureSet:
        return features(self.upstream, self.manifest, self.cache_dir, utts=self.utts,
                        progress=self.progress).normalize_()


def load_split(upstream: Upstream, manifest: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
               *, progress: bool = True) -> Split:
    """The manifest's utterances now; their features on first use of ``feats``."""
    return Split(Path(manifest), read_manifest(manifest), upstream, cache_dir, progress)


def require(split: Split, label: str, way_out: str) -> None:
    """ValueError naming the manifest, how many utterances lack ``label`` (a manifest field) and which."""
    missing = [u.id for u in split.utts if not getattr(u, label)]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:3]) + (" …" if len(missing) > 3 else "")
        raise ValueError(f"{split.manifest}: {len(missing)} of {len(split.utts)} utterances have no {label} "
                         f"({shown}); {way_out}")
