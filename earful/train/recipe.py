"""What a run is trained with, checked on every resume.

A run's *recipe* is its config, flattened, less the settings that do not change what it computes (how often it
logs or checkpoints, threads, workers, the device, health thresholds, milestones), with each manifest's path
replaced by a SHA-256 of its rows less their audio paths (``earful/data/digest.py``: a moved corpus, prepared
again with other absolute paths, is the same recipe; a reordered or edited manifest is not; checkpoints of
earlier versions, which recorded the SHA-256 of the file's bytes, are compared by that), and the ``init`` of a
fine-tuning or a continued pre-training by the SHA-256 of the weights it resolved to (``init.sha256``, absent from
scratch: another pre-trained checkpoint is another recipe, a moved one is not).

Its *layout* — devices and ``device_seconds`` — does not change the batch's seconds, but how they are cut: another
micro-batch size repacks the utterances into other micro-batches (cropped to their own shortest, with
their own masks; with ``nanow2v2`` each weighs 1/micro-batches), so the run continues with the same recipe on
other draws. Only another number of devices at the same micro-batch size gives the same micro-batches.

Every checkpoint records both (``trainer.json``). ``--resume`` compares them with the config it is given:

* the same recipe and layout: the run continues;
* another layout (the out-of-memory advice: lower ``device_seconds``; another number of GPUs): it continues
  with a warning saying so, and a new segment in ``history.jsonl``;
* another recipe: refused, listing the changed keys, unless ``--allow-changes``; then the change is a new
  segment of the run's history (``history.jsonl`` and ``config-N.yaml``). Other training data (``TRAINING_DATA``:
  another manifest or shard index) continues the weights, optimizer and step, the data from a fresh epoch of
  the new data after the saved one (seeded as every epoch: the continuation resumes exactly in turn).
  ``config.yaml`` — the first segment's — is never rewritten. Even then another ``seed`` (another run) and a
  ``max_steps`` behind the checkpoint are refused; a model or optimizer state that does not fit (another
  architecture, other ``freeze_*``) fails in one line naming the changes (the trainer's ``_resume``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from earful.atomic import atomic_write_lines
from earful.config import (
    ADDED_LATER,
    ConfigError,
    describe,
    differences,
    flatten,
    plain_name,
    renamed_settings,
    save_yaml,
    to_dict,
)
from earful.data.digest import DIGEST_RULE, LABELS, manifest_digest
from earful.train.config import TrainingConfig

log = logging.getLogger(__name__)

HISTORY = "history.jsonl"
MANIFESTS = ("data.train", "data.valid")
# settings that change how a run is watched or where it runs, not what it computes
OPERATIONAL = {"device", "threads", "log_every", "valid_every", "valid_seconds", "ckpt_every", "keep_last",
               "keep_best", "tensorboard", "max_nan_steps", "ckpt_hours", "ckpt_hours_basis", "ckpt_steps",
               "data.num_workers", "data.skip_bad", "data.shards_relayout", "init", "compile", "compile_backend",
               "compile_mode"}
WATCHING = ("health.", "tracking.")  # sections that only watch a run: health warnings, experiment trackers
LAYOUT = ("device_seconds",)
# recipe entries a task adds (``Task.recipe_extras``) that checkpoints of earlier versions do not record: compared
# only where the checkpoint records them
LATER = ("init.sha256", "data.manifest_digest")
# how the manifests' ``.sha256`` entries were computed (``DIGEST_RULE``); a checkpoint without it recorded the
# SHA-256 of each manifest's bytes
DIGEST_KEY = "data.manifest_digest"
# the recipe entries that say which data trains: another value under --allow-changes starts a fresh epoch of the
# new data (the saved place in the old data means nothing in it)
TRAINING_DATA = ("data.train.sha256", "data.shards.index")


def recipe_of(cfg: TrainingConfig) -> dict[str, Any]:
    """The run's recipe (see the module docstring), JSON-safe."""
    flat = flatten(to_dict(cfg))
    out = {k: v for k, v in flat.items() if k not in OPERATIONAL and k not in LAYOUT and not k.startswith(WATCHING)
           and k not in MANIFESTS}
    for key, path in manifest_files(cfg).items():
        out[f"{key}.sha256"] = manifest_digest(path).rows
        out[DIGEST_KEY] = DIGEST_RULE
    if flat.get("data.shards"):  # a folder of shards (or a URL): its index lists every shard's size and members
        out.pop("data.shards", None)
        out["data.shards.index"] = shard_index_digest(flat["data.shards"])
    return json.loads(json.dumps(out))


def shard_index_digest(location: str) -> str:
    """SHA-256 of a shard folder's index (what is in the shards, not where they are)."""
    from earful.data.shards import ShardIndex

    return ShardIndex(location).digest


def manifest_files(cfg: TrainingConfig) -> dict[str, str]:
    """The manifests the config names, by key (``MANIFESTS``)."""
    flat = flatten(to_dict(cfg))
    return {key: str(flat[key]) for key in MANIFESTS if flat.get(key)}


# what trainer.json records of each manifest beside the recipe's digest, by key (``manifest_records``)
MANIFEST_RECORDS = ("manifest_paths", "manifest_audio", "manifest_labels")


def manifest_records(cfg: TrainingConfig) -> dict[str, dict[str, Any]]:
    """What ``trainer.json`` records of each manifest besides the recipe's digest, by record and manifest key: not
    the recipe, but what lets a resume say what changed. ``manifest_paths``: the SHA-256 of its audio paths in row
    order (only they changed: a moved corpus, the same recipe); ``manifest_audio``: of its rows less paths and
    labels (``ManifestDigest.audio``: only the labels changed, ``earful phonemize`` in place); ``manifest_labels``:
    of each label's values (``ManifestDigest.labels``: which labels, so that a task that reads none of them
    continues)."""
    digests = {key: manifest_digest(path) for key, path in manifest_files(cfg).items()}
    return {"manifest_paths": {k: d.paths for k, d in digests.items()},
            "manifest_audio": {k: d.audio for k, d in digests.items()},
            "manifest_labels": {k: d.labels for k, d in digests.items()}}


def _legacy_manifests(saved: dict[str, Any], recipe: dict[str, Any],
                      manifests: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """A checkpoint written before manifests were fingerprinted by their rows (no ``DIGEST_KEY``) recorded the
    SHA-256 of each manifest's bytes: ``saved`` with each manifest whose bytes are still those taken as this run's
    digest (the same manifest), and the keys of the others (their bytes changed: perhaps only the audio paths,
    which that checkpoint cannot tell)."""
    if DIGEST_KEY in saved:
        return saved, []
    saved, changed = dict(saved), []
    for key, path in manifests.items():
        k = f"{key}.sha256"
        if k in saved and k in recipe and saved[k] != recipe[k]:
            if Path(path).is_file() and manifest_digest(path).file == saved[k]:
                saved[k] = recipe[k]
            else:
                changed.append(key)
    return saved, changed


def recipe_hash(recipe: dict[str, Any]) -> str:
    """The recipe's fingerprint: SHA-256 of its canonical JSON (what the trackers and the model card show)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def layout_of(cfg: TrainingConfig, world_size: int) -> dict[str, Any]:
    return {"world_size": world_size, **{k: getattr(cfg, k) for k in LAYOUT}}


def check_resume(root: Path, info: dict[str, Any], recipe: dict[str, Any], layout: dict[str, Any], *,
                 batch_seconds: float, allow_changes: bool, manifests: dict[str, str] | None = None,
                 records: dict[str, dict[str, Any]] | None = None,
                 reads_labels: tuple[str, ...] = LABELS, announce: bool = True) -> dict[str, Any] | None:
    """Compare the checkpoint's recipe and layout (``info`` = its ``trainer.json``) with the run's (``recipe_of``
    and ``layout_of`` of its config, computed once by the trainer: a sharded run's recipe reads its index).
    ``manifests`` (key -> path) lets a checkpoint of an earlier version, which recorded the bytes' SHA-256, be
    compared; ``records`` (``manifest_records``, against the checkpoint's) let a manifest whose audio paths alone
    changed be named, and one whose labels alone changed, and which: the same recipe where the task
    ``reads_labels`` none of them (pre-training reads none, fine-tuning transcripts), named in the refusal where
    it does (a checkpoint that records no ``manifest_labels``: any of them).
    Raises ValueError on another recipe unless ``allow_changes``; returns the new history segment to record
    (changed recipe or layout), or None when nothing changed. ``announce``: log what changed (the main rank; every
    rank checks alike, and each had said it)."""
    if "recipe" not in info or "layout" not in info:
        raise ValueError(f"{root}: the checkpoint to resume from records no recipe (its trainer.json was not written "
                         "by earful's trainer): use another --out")
    # compared by today's names (a setting renamed since: the same recipe); trainer.json itself stays as written,
    # its recipe's SHA-256 (the model card's, the trackers') with it
    recorded = renamed_settings(info["recipe"])
    saved, legacy = _legacy_manifests(recorded, recipe, manifests or {})
    saved = {**{k: v for k, v in ADDED_LATER.items() if k in recipe}, **saved}
    changed = differences(saved, {k: v for k, v in recipe.items() if k in saved or k not in LATER})
    before = [k for k in changed if k in ADDED_LATER and k not in recorded]  # a setting the run trained without
    now = records or {}
    # a checkpoint of before one: none of it; of before a rename, its keys renamed (data.dev's are data.valid's)
    then = {name: renamed_settings(info.get(name) or {}) for name in MANIFEST_RECORDS}
    moved_audio = [k for k, digest in now.get("manifest_paths", {}).items() if f"{k}.sha256" not in changed
                   and then["manifest_paths"].get(k, digest) != digest]
    relabelled = [k for k, digest in now.get("manifest_audio", {}).items() if f"{k}.sha256" in changed
                  and k not in legacy and then["manifest_audio"].get(k) == digest]
    which = {k: _changed_labels(then["manifest_labels"].get(k), now.get("manifest_labels", {}).get(k))
             for k in relabelled}
    unread = [k for k in relabelled if not set(which[k]) & set(reads_labels)]
    read = [k for k in relabelled if k not in unread]
    for k in unread:  # recorded in the history as a segment of its own, the recipe the same
        del changed[f"{k}.sha256"]
    if unread and announce:
        named = ", ".join(sorted({x for k in unread for x in which[k]})) if all(
            k in then["manifest_labels"] for k in unread) else ANY_LABELS
        log.info("%s: the same audio rows as the checkpoint's with other labels (%s), which this run does not "
                 "read: the same recipe", ", ".join(unread), named)
    if moved_audio and announce:
        log.info("%s: the same rows as the checkpoint's with their audio at other paths (a moved corpus: the same "
                 "recipe)", ", ".join(moved_audio))
    for key in legacy:  # shown as recorded: the bytes' digests, old and new
        if f"{key}.sha256" in changed and Path((manifests or {})[key]).is_file():
            changed[f"{key}.sha256"][1] = manifest_digest((manifests or {})[key]).file
    note = "".join(f" ({k}: the same audio rows as the checkpoint's with other labels: "
                   f"{', '.join(which[k]) if k in then['manifest_labels'] else ANY_LABELS})" for k in read)
    note += (f" ({', '.join(legacy)}: the checkpoint, of an earlier version, recorded the SHA-256 of the file's bytes, "
            "which other audio paths alone change too; if only they changed, --allow-changes continues, the data "
            "from a fresh epoch)") if legacy else ""
    settings = "these settings" if len(before) > 1 else "the setting"
    note += (f" ({', '.join(before)}: the run was trained before {settings} existed, as the override "
             f"{' '.join(_override(k, saved[k]) for k in before)} trains now, and as the run's config.yaml reads)"
             ) if before else ""
    moved = differences(info["layout"], layout)
    if "seed" in changed:  # the data order, masks and dropout of every step come of it
        raise ValueError(f"{root}: --resume with another seed ({describe({'seed': changed['seed']})}) cannot "
                         "continue the run, even with --allow-changes (another seed is another run): use another "
                         "--out")
    if isinstance(recipe.get("max_steps"), int) and recipe["max_steps"] < int(info["step"]):
        raise ValueError(f"{root}: max_steps={recipe['max_steps']} is below the checkpoint's step {info['step']}; a "
                         "resume cannot train backwards: take an earlier checkpoint (checkpoints/step-*) as init of "
                         "a new run, or use another --out")
    if changed and not allow_changes:
        raise ValueError(
            f"{root}: --resume with another recipe than the run was trained with ({describe(changed)}){note}. Resume "
            "with the run's settings (its config.yaml and history.jsonl), add --allow-changes to continue with "
            "these (recorded as a new segment of the run's history), or use another --out")
    if changed and announce:
        log.warning("resuming with another recipe (allowed by --allow-changes): %s%s", describe(changed), note)
    elif moved and announce:
        log.warning("resuming in another layout (%s): batches of %g s as before, cut into other micro-batches when "
                    "their size changed (other crops and masks: the same recipe, other draws)", describe(moved),
                    batch_seconds)
    if not changed and not moved and not unread:
        return None
    return {"step": info["step"], "recipe_changes": changed, "layout_changes": moved,
            **({"relabelled": unread} if unread else {})}


def _override(key: str, value: Any) -> str:
    """The ``key=value`` override that sets ``key`` to ``value`` (``model.feature_grad_mult=null``)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


ANY_LABELS = "transcripts, phonemes, intents or speakers"  # which, a checkpoint of before manifest_labels does not say


def _changed_labels(old: dict[str, str] | None, new: dict[str, str] | None) -> list[str]:
    """The labels whose values differ between two ``ManifestDigest.labels``; every label where one is unknown."""
    if not old or not new:
        return list(LABELS)
    return [label for label in LABELS if old.get(label) != new.get(label)]


def new_training_data(segment: dict[str, Any] | None) -> bool:
    """Whether a resume's history ``segment`` (``check_resume``) trains on other data than the checkpoint's."""
    return any(k in (segment or {}).get("recipe_changes", {}) for k in TRAINING_DATA)


def start_history(root: Path, cfg: TrainingConfig, world_size: int) -> None:
    """A fresh run: ``config.yaml`` and the first segment of ``history.jsonl``."""
    save_yaml(cfg, root / "config.yaml")
    atomic_write_lines(root / HISTORY, [json.dumps({"segment": 1, "step": 0, "config": "config.yaml",
                                                    "layout": layout_of(cfg, world_size)})])


def _plain(name: object) -> bool:
    """Whether ``name`` is a plain name (``config.plain_name``'s rule): one file in the run folder."""
    try:
        plain_name(name, "config")
    except ConfigError:
        return False
    return True


def read_history(root: Path) -> list[dict[str, Any]]:
    """The segments of a run's ``history.jsonl`` (none where it has none), each a record with its ``step`` (an
    integer) and ``config`` file (a name); ValueError naming the file and line where one is not: written
    atomically, it is damaged only by a hand edit or a disk fault (json's bare "Unterminated string ...", a
    KeyError or an AttributeError had been the message)."""
    path = root / HISTORY
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines() if path.exists() else [], 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            record = e
        if not (isinstance(record, dict) and isinstance(record.get("step"), int)
                and _plain(record.get("config"))):  # a name in the run folder: a resume may remove it
            why = f" ({record})" if isinstance(record, Exception) else ""
            raise ValueError(f"{path}, line {n}: not a segment record{why}; the run's history is damaged: restore it "
                             "(each line is a JSON record of a segment's step and config file)")
        records.append(record)
    return records


def written_by_a_run(path: str | Path) -> bool:
    """Whether ``path`` is a config file earful wrote into a run folder: one its ``history.jsonl`` names (config.yaml,
    config-N.yaml), not a file a user wrote."""
    p = Path(path).resolve()  # a link to a run's config.yaml is that file
    try:
        if not (p.is_file() and (p.parent / HISTORY).is_file()):
            return False
    except OSError:
        return False
    return p.name in {r["config"] for r in read_history(p.parent)}  # a damaged history: its own error, named


def record_resume(root: Path, cfg: TrainingConfig, step: int, segment: dict[str, Any] | None) -> None:
    """A resume from the checkpoint at ``step`` has loaded: the history holds what trained. A last segment that
    starts at ``step`` never reached a checkpoint (its process stopped first) and goes, with its config file;
    ``segment`` (another recipe or layout from ``step`` on), if any, is appended with its own config file."""
    path = root / HISTORY
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    records = read_history(root)
    last = records[-1] if len(records) > 1 else {}
    dropped = last["config"] if last.get("step") == step else None
    kept = lines[:-1] if dropped else lines
    name = None
    if segment is not None:
        name = f"config-{len(kept) + 1}.yaml"
        save_yaml(cfg, root / name)
        kept = [*kept, json.dumps({"segment": len(kept) + 1, **segment, "config": name})]
    if kept != lines:
        atomic_write_lines(path, kept)
    if dropped and dropped != name:  # once the history no longer names it
        (root / dropped).unlink(missing_ok=True)
