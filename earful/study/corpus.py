"""The study's corpus: built from ``corpus.synth`` when missing, checked when present, and hashed."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from earful.study.config import StudyConfig

log = logging.getLogger(__name__)


def ensure_corpus(study: StudyConfig, root: Path) -> None:
    """Build the study's synthetic corpus unless it exists; an existing one built with other settings is
    an error (a study must not silently run on a different corpus)."""
    train = Path(study.corpus.path(study.corpus.train, root))
    s = study.corpus.synth
    if train.exists():
        made = Path(study.corpus.path("synth.json", root))
        if s is not None and made.exists():
            have = json.loads(made.read_text(encoding="utf-8"))
            want = {"requested_hours": s.hours, "domain": s.domain, "seed": s.seed,
                    "labelled_fraction": s.labelled_fraction}
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            if diff:
                raise ValueError(f"{made.parent}: this corpus was built with other settings than corpus.synth "
                                 f"({', '.join(f'{k}: {a!r} there, {b!r} asked' for k, (a, b) in diff.items())}); "
                                 "remove the folder to rebuild it, or point corpus.dir elsewhere")
        return
    if s is None:
        raise FileNotFoundError(f"{train}: the study's training manifest does not exist (and no corpus.synth given)")
    from earful.data.synth import synthesize

    out = Path(study.corpus.path(".", root))
    log.info("building the built-in corpus in %s (%.2f h, %s domain)", out, s.hours, s.domain)
    synthesize(out, s.hours, domain=s.domain, seed=s.seed, labelled_fraction=s.labelled_fraction)


def manifest_digests(study: StudyConfig, root: Path) -> dict[str, str]:
    """SHA-256 of every manifest the study reads, by role: a corpus re-prepared under the same paths is
    another recipe, not a reason to reuse the runs trained on the old one."""
    c = study.corpus
    named = {"train": c.train, "valid": c.valid, "dev": c.dev,
             **{f"label_set.{k}": v for k, v in c.label_sets.items()},
             **{f"test.{k}": v for k, v in c.test_sets().items()}}
    out = {}
    for role, rel in named.items():
        if rel:
            p = Path(c.path(rel, root))
            out[role] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing"
    return out
