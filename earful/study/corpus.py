"""The study's corpus: built from ``corpus.synth`` when missing, checked when present, and hashed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from earful.data.digest import manifest_digest
from earful.study.config import StudyConfig

log = logging.getLogger(__name__)


def ensure_corpus(study: StudyConfig, root: Path) -> None:
    """Build the study's synthetic corpus unless it exists; an existing one built with other settings is
    an error (a study must not silently run on a different corpus). A ``corpus.synth`` corpus is complete once
    its ``synth.json`` is there (written last): a build killed part-way (its ``.synth-building`` mark still
    there) is built again, every file written anew; a folder of manifests without either, not made by `earful
    synth`, is refused rather than written over."""
    train = Path(study.corpus.path(study.corpus.train, root))
    s = study.corpus.synth
    made = Path(study.corpus.path("synth.json", root))
    from earful.data.synth import BUILDING, synthesize

    building = Path(study.corpus.path(BUILDING, root)).exists()  # a build that has not finished, whatever is there
    if train.exists() and (s is None or (made.exists() and not building)):
        if s is not None:
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

    out = Path(study.corpus.path(".", root))
    if train.exists() and not building:
        raise ValueError(f"{out}: holds {train.name} but no synth.json: not a corpus `earful synth` made (or one an "
                         "earlier version left unfinished); drop corpus.synth to use it as it is, or remove the "
                         "folder to build the corpus there")
    if train.exists():
        log.warning("%s: a corpus build that did not finish (%s exists, synth.json, written last, does not): "
                    "building it again", out, train.name)
    log.info("building the built-in corpus in %s (%.2f h, %s domain)", out, s.hours, s.domain)
    synthesize(out, s.hours, domain=s.domain, seed=s.seed, labelled_fraction=s.labelled_fraction)


def check_probe_corpus(study: StudyConfig, root: Path) -> None:
    """Before any training (and after ``ensure_corpus`` has built a ``corpus.synth`` corpus): the manifests the
    study's probes read exist and carry what each task needs, else an error naming the task, the manifest and
    what it lacks. The probes read a corpus as ``earful synth`` lays it out
    (``probe_corpus/manifests/{train,dev,test,labelled-10h}.jsonl``, by default the study's corpus.dir), not the
    manifests ``corpus.*`` names."""
    if not study.probes:
        return
    from earful.probe.suite import check_suite, suite_manifests

    corpus = study.probe_dir(root)
    manifests = suite_manifests(corpus, study.probes)
    names = ",".join(dict.fromkeys(m.stem for ms in manifests.values() for m in ms))
    where = (f"the study's probes {list(study.probes)} read {Path(corpus) / 'manifests'}/{{{names}}}.jsonl as "
             "`earful synth` writes them, whatever corpus.train, dev and test name: make them there (`earful "
             "synth`), point `probe_corpus` at such a corpus, or leave out `probes`")
    try:
        check_suite(corpus, study.probes)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; {where}") from e
    except ValueError as e:
        raise ValueError(f"{e}; {where}") from e
    log.info("probes %s read %s", ", ".join(manifests), ", ".join(sorted({str(m) for ms in manifests.values()
                                                                           for m in ms})))


def _digest(path: Path, file_bytes: bool = False) -> str:
    digest = manifest_digest(path)
    return digest.file if file_bytes else digest.rows


def manifest_digests(study: StudyConfig, root: Path, *, file_bytes: bool = False) -> dict[str, str]:
    """The digest of every manifest the study reads, by role — the SHA-256 of its rows less their audio paths, as
    a run's recipe has it (``earful/data/digest.py``): a corpus re-prepared with other rows is another recipe,
    not a reason to reuse the runs trained on the old one; a corpus moved (prepared again elsewhere, other
    absolute paths) is the same. ``file_bytes``: the SHA-256 of the files' bytes instead, which study folders
    of earlier versions recorded. A manifest that does not exist has no digest (earlier versions wrote
    "missing": ``fingerprint.comparable`` leaves those out). The probes' manifests (``probe.train``, ...) are
    read by the study when it has probes."""
    c = study.corpus
    named = {"train": c.train, "valid": c.valid, "finetune_valid": c.finetune_valid,
             **{f"label_set.{k}": v for k, v in c.label_sets.items()},
             **{f"test.{k}": v for k, v in c.test_sets().items()}}
    roles = {role: Path(c.path(rel, root)) for role, rel in named.items() if rel}
    if study.probes:
        from earful.probe.suite import suite_manifests

        for paths in suite_manifests(study.probe_dir(root), study.probes).values():
            roles.update({f"probe.{m.stem}": m for m in paths})
    # a file in several roles is read once; one that does not exist is not read (run.check_manifests has made
    # sure of every manifest the study reads: here, a label set it does not fine-tune on)
    digests = {path: _digest(path, file_bytes) for path in set(roles.values()) if path.is_file()}
    return {role: digests[path] for role, path in roles.items() if path in digests}
