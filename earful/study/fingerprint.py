"""The recipe fingerprint: what decides a study's results, so that a study folder only ever continues the
study that made it (finished runs of another recipe would be mixed into its report). A finished study may
continue with more seeds, probe seeds or grid entries (a batch size added), probe tasks, baselines, checkpoints
or label sets to fine-tune (the milestones' too), checkpoints to measure the gradient noise of (``MAY_GROW``):
their work is new, the finished work is kept. A study setting earful gained since, at the value studies of before
had in effect (``STUDY_ADDED_LATER``), is no part of the fingerprint: a folder written before it continues. The
key its mode does not use (``hours`` in fixed-steps, ``steps`` in fixed-hours) is no part of the recipe, in a
study.json of before too. A folder in which nothing was trained or measured yet (the first pre-training failed on
a setting) takes the new recipe.

The n-gram LM (``lm:``) decodes the fine-tunings beside greedy decoding: at its default (null) it is no part of the
fingerprint; set, its settings (the study part's ``lm.*``, less the files' paths) and the SHA-256 of its files (the
"lm" part) are. It may be set on a study that had none (the finished fine-tunings are decoded with it on the next
run); another LM file, lexicon or beam setting, or none, is another recipe of the LM results: refused once the
folder holds one (``lm_results``). Before (the LM failed to load, or the study stopped before decoding with it)
the folder takes the new LM, or none."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from earful.config import describe, differences, flatten, renamed_override, renamed_settings, to_dict
from earful.study.config import DEFAULT_TEST_SETS, NEW_NAMES, PlannedRun, StudyConfig, plan_runs, renamed
from earful.study.corpus import manifest_digests
from earful.train.init import SCRATCH, resolve_init
from earful.train.recipe import ADDED_LATER, WATCHING

log = logging.getLogger(__name__)

STUDY_FORMAT = 2  # study.json's layout; 1 (no "format") was written by earlier development versions

# study settings that decide how it runs or which runs it holds, not what a run computes: a finished study may
# continue with more seeds or probe seeds (or jobs, another name, on a cluster); probe_corpus and corpus.dir are
# where the manifests are, whose contents are in the fingerprint ("data"): a corpus moved elsewhere is the same
# (lm.path and lm.lexicon too: the LM's files' contents are the fingerprint's "lm" part)
NOT_RECIPE = ("jobs", "throughput", "seeds", "name", "launcher", "probe_seeds", "probe_corpus", "corpus.dir",
              "lm.path", "lm.lexicon")
# the manifests' roles in the fingerprint's data part, by their old name: today's (a role is its corpus key)
RENAMED_ROLES = {old.removeprefix("corpus."): new.removeprefix("corpus.") for old, new in NEW_NAMES.items()
                 if old.startswith("corpus.")}
# set per run (paths on this machine, the run's seed): not part of what a study computes
PER_RUN = {"data.train", "data.valid", "init", "seed"}
# sections that say where and how runs go and who watches them
NOT_RECIPE_SECTIONS = ("slurm.", "tracking.")
# training settings that say where and how fast a run goes, not what it computes (unlike a run's own resume, a
# study keeps valid_every, valid_seconds and keep_best: they decide its checkpoints/best and validation loss)
RUN_ONLY = {"device", "threads", "log_every", "ckpt_every", "keep_last", "tensorboard", "max_nan_steps",
            "data.num_workers", "data.shards_relayout", "compile", "compile_backend", "compile_mode"}
# the study's config files and override lists: their effect is in the pretrain, finetune and probe parts, key by
# key (a preset's name and its file's path, or another copy of it, are the same recipe)
OVERRIDE_LISTS = {"pretrain_config", "pretrain_overrides", "finetune.config", "finetune.overrides", "probe_overrides"}
# study lists that may gain items on a finished study, never lose one: each item is work of its own (a probe task
# on every kept checkpoint, a baseline, a checkpoint or a label set fine-tuned, a checkpoint's gradient noise), so
# the finished work stays what the new recipe makes. With them the mappings they draw on may gain entries: a probe
# task's recipe (the "probe" part, by task), a label set of the corpus, a new label set's per_label_set, a new
# manifest's digest ("data").
# A test split may be added too (each finished fine-tuning is evaluated on it alone), not changed or removed.
MAY_GROW = ("probes", "finetune.baselines", "finetune.checkpoints", "finetune.label_sets",
            "finetune.milestone_label_sets", "gradvar_checkpoints")
# study settings earful gained later, by the value every study of before had in effect: left out of the study part
# at that value, so that a study.json written before one fingerprints as it did, and continues
STUDY_ADDED_LATER: dict[str, Any] = {"finetune.milestone_label_sets": None,  # None: every label set, as before
                                     "lm": None,  # None: greedy decoding alone, as before
                                     "gradvar_checkpoints": ["final"]}  # the final's gradient noise alone
# probe recipe settings earful gained later (a task's, by the key's last part), by the value every probe of before
# had: left out of the probe part at that value, so that a study.json written before one continues
PROBE_ADDED_LATER: dict[str, Any] = {"layer": None}  # None: the learned weighted sum of every hidden state
# what the study resolves for each grid entry (its "grid" part, by tag): the grid may grow (a batch size added to a
# finished study), its entries may not change or go. The pretrain part holds these of the first run only.
# (the cyclic schedule's step size too where the study sets it from each entry's steps: `cycles`)
PER_ENTRY = {"batch_seconds", "device_seconds", "max_steps", "optim.lr"}


def _kept(key: str, left_out: tuple[str, ...] | set[str]) -> bool:
    return key not in left_out and not key.startswith(NOT_RECIPE_SECTIONS)


def _unused_by_mode(study: dict[str, Any]) -> str:
    """The study key its mode does not use (a flattened study's): ``hours`` in fixed-steps, ``steps`` in
    fixed-hours. It changes no run, so it is not part of the recipe (load_study says it is unused)."""
    return "hours" if study.get("mode", "fixed-steps") == "fixed-steps" else "steps"


def _study_part(study: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint's study part: the flattened study less what is not its recipe (``NOT_RECIPE``, the override
    lists, whose effect is in the other parts, and the key its mode does not use)."""
    left_out = (*NOT_RECIPE, *OVERRIDE_LISTS, _unused_by_mode(study))
    return {k: v for k, v in study.items() if _kept(k, left_out)
            and not (k in STUDY_ADDED_LATER and v == STUDY_ADDED_LATER[k])}


def _computes(key: str) -> bool:
    """A training setting that may change a study's results: not per run, not where or how fast a run goes
    (``RUN_ONLY``), not who watches it. Validation settings stay: they pick ``best`` and make the validation
    loss the claims are judged on."""
    return _kept(key, PER_RUN | RUN_ONLY) and not key.startswith(WATCHING)


def comparable(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """``fingerprint`` less what does not change results, as this version keeps it: a study.json written before
    a setting was classed so may still hold it. Study keys and training settings renamed since take today's
    names (a label set's fine-tuning overrides too)."""
    keep = {"pretrain": _computes, "finetune": _computes}
    return {part: _study_part(kv) if part == "study" else  # e.g. corpus.dir or the unused hours, kept before
            {k: v for k, v in kv.items()
             if keep.get(part, lambda _: True)(k)
             and not (part == "data" and v == "missing")}  # earlier versions digested absent manifests so
            for part, kv in todays_fingerprint(fingerprint).items()}


def _renamed(part: str, kv: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint part of before with today's names: the study's keys (lr_rule, say), the trainings' settings
    (the fine-tuning's loss_normalisation, the model's model.init), the manifests' roles (corpus.dev's)."""
    if part == "study":
        return renamed(kv)
    if part == "data":  # the manifests' roles: the corpus section's keys
        return renamed_settings(kv, table=RENAMED_ROLES)
    return renamed_settings(kv) if part in ("pretrain", "finetune") else kv


def _renamed_overrides(key: str, value: Any) -> Any:
    """A study's list of training overrides (a label set's, ``pretrain_overrides``, ...), flattened key and value,
    as a study.json of before recorded them, with today's keys."""
    if (key.startswith("finetune.per_label_set.") or key in OVERRIDE_LISTS) and isinstance(value, list):
        return [renamed_override(v) if isinstance(v, str) else v for v in value]
    return value


def with_todays_names(saved: dict[str, Any]) -> dict[str, Any]:
    """A study.json of before, to be written again (``earful study merge``), with today's names: its study keys,
    its recorded training overrides and its fingerprint's parts (nothing earful writes says an old name)."""
    out = renamed(saved)
    for key in ("pretrain_overrides", "probe_overrides"):
        if key in out:
            out[key] = _renamed_overrides(key, out[key])
    if isinstance(finetune := out.get("finetune"), dict):
        out["finetune"] = {**finetune, **({"overrides": _renamed_overrides("finetune.overrides", finetune["overrides"])}
                                          if "overrides" in finetune else {})}
        if isinstance(per := finetune.get("per_label_set"), dict):
            out["finetune"]["per_label_set"] = {k: _renamed_overrides(f"finetune.per_label_set.{k}", v)
                                                for k, v in per.items()}
    if isinstance(out.get("fingerprint"), dict):
        out["fingerprint"] = todays_fingerprint(out["fingerprint"])
    return out


def todays_fingerprint(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A recipe fingerprint of before with today's names in every part (:func:`comparable` compares it, ``earful
    study merge`` writes it)."""
    return {part: {k: _renamed_overrides(k, v) for k, v in _renamed(part, kv).items()} if isinstance(kv, dict)
            else kv for part, kv in fingerprint.items()}


def grid_fingerprint(runs: list[PlannedRun]) -> dict[str, Any]:
    """The fingerprint's grid part: what the study resolves for each grid entry (by tag), its seeds aside."""
    return json.loads(json.dumps({r.tag: {"batch_seconds": r.batch_seconds, "devices": r.devices,
                                          "device_seconds": r.device_seconds, "lr": r.lr, "steps": r.steps}
                                  for r in runs}))


def grid_planner(study: StudyConfig) -> Callable[[list[Any]], dict[str, Any]]:
    """A grid list → the grid part ``study`` would fingerprint with that grid (``check_same_recipe``'s
    ``plan_grid``)."""
    return lambda grid: grid_fingerprint(plan_runs(dataclasses.replace(study, grid=grid)))


def recipe_fingerprint(study: StudyConfig, runs: list[PlannedRun], root: Path) -> dict[str, Any]:
    """The study (less ``NOT_RECIPE`` and the key its mode does not use), the pre-training and fine-tuning configs
    as resolved today (YAML files and code defaults, less ``PER_RUN``), the manifests' contents and, when the study
    has probes, the recipe of each task it probes as resolved today (``earful/probe/config.py``'s defaults with
    ``probe_overrides``)."""
    from earful.study.stages import finetune_recipe, pretrain_config

    pre_cfg = pretrain_config(study, runs[0], root)
    pre = flatten(to_dict(pre_cfg))
    if pre_cfg.init != SCRATCH:  # continued pre-training (pretrain_overrides: init=): its weights, not its path

        pre["init.sha256"] = resolve_init(pre_cfg.init, "the study's pretrain init").sha256
    fine = flatten(to_dict(finetune_recipe(study)))
    own = config_parts(study)
    fp = {"study": own["study"],
          "pretrain": {k: v for k, v in pre.items() if _computes(k)},
          "finetune": {k: v for k, v in fine.items() if _computes(k)},
          "data": manifest_digests(study, root),
          "grid": grid_fingerprint(runs)}
    if study.lm is not None:  # a study without an LM has no "lm" part: its fingerprint is what it was before
        fp["lm"] = lm_digests(study, root)
    if "probe" in own:
        fp["probe"] = own["probe"]
    return json.loads(json.dumps(fp))


def config_parts(study: StudyConfig) -> dict[str, Any]:
    """The parts of ``study``'s recipe fingerprint that its config alone decides, no file read: the study part and,
    when the study has probes, the probe part (the recipe of each task it probes, as resolved today). A study
    without probes has no probe part: its fingerprint is what it was before probes."""
    from earful.study.stages import probe_config

    parts = {"study": _study_part(flatten(to_dict(study)))}
    if study.probes:
        probes = flatten(to_dict(probe_config(study)))
        parts["probe"] = {k: v for k, v in probes.items() if k.split(".")[0] in study.probes
                          and not (k.split(".")[-1] in PROBE_ADDED_LATER and v == PROBE_ADDED_LATER[k.split(".")[-1]])}
    return json.loads(json.dumps(parts))


def lm_digests(study: StudyConfig, root: Path) -> dict[str, str | None]:
    """The fingerprint's "lm" part: the SHA-256 of the LM file and of the lexicon (None: the LM's own words)."""
    from earful.data.digest import sha256

    assert study.lm is not None
    path, lexicon = study.lm.resolved(root)
    return {"path": sha256(path), "lexicon": sha256(lexicon) if lexicon is not None else None}


def _decodes_with_lm(fp: dict[str, Any]) -> bool:
    """Whether the study of fingerprint ``fp`` decodes with an LM (``lm:`` set)."""
    return "lm" in fp or any(k.startswith("lm.") for k in fp.get("study", {}))


def _without_entries(fp: dict[str, Any]) -> dict[str, Any]:
    """``fp`` less what its grid part holds entry by entry: the study's grid and the first run's own settings."""
    per_entry = PER_ENTRY | ({"optim.cyclic_step_size"} if fp.get("study", {}).get("cycles") else set())
    return {part: {k: v for k, v in kv.items() if not (part == "study" and k == "grid")
                   and not (part == "pretrain" and k in per_entry)} for part, kv in fp.items()}


def _label_sets(study: dict[str, Any]) -> list[str]:
    """The label sets a fingerprint's study part fine-tunes on: ``finetune.label_sets``, else the corpus's."""
    return study.get("finetune.label_sets") or [k.removeprefix("corpus.label_sets.") for k in study
                                                   if k.startswith("corpus.label_sets.")]


def _milestone_label_sets(study: dict[str, Any]) -> list[str]:
    """The label sets a fingerprint's study part fine-tunes the milestones on: ``finetune.milestone_label_sets``
    (absent: its default, every label set fine-tuned) of those it fine-tunes on; none where its
    ``finetune.checkpoints`` has no ``milestones`` (no milestone was fine-tuned: any setting is new work)."""
    if "milestones" not in (study.get("finetune.checkpoints") or []):
        return []
    named = study.get("finetune.milestone_label_sets")
    return [ls for ls in _label_sets(study) if named is None or ls in named]


def _test_sets(study: dict[str, Any]) -> dict[str, Any]:
    """The test splits a fingerprint's study part evaluates on: ``corpus.test``'s, else the default ones."""
    return {k.removeprefix("corpus.test."): v for k, v in study.items() if k.startswith("corpus.test.")} or \
        dict(DEFAULT_TEST_SETS)


def _is_lm(part: str, key: str) -> bool:
    """Whether ``part.key`` is a setting of the LM (``lm:``) or its files' digests."""
    return part == "lm" or (part == "study" and key.startswith("lm."))


def lm_results(out: Path) -> bool:
    """Whether study folder ``out`` holds results decoded with an LM: an evaluation summary with an "lm" entry
    (``study run`` writes results.jsonl's LM records from them)."""
    for path in (out / "eval").glob("[!.]*/summary.json"):
        try:
            splits = json.loads(path.read_text(encoding="utf-8"))["splits"]
            if any("lm" in res for res in splits.values()):
                return True
        except (ValueError, KeyError, TypeError, AttributeError):  # unreadable: it may hold some
            return True
    return False


def _added(part: str, key: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``part.key``, which differs, is an addition that leaves every finished result as the new recipe
    makes it (``MAY_GROW``)."""
    was, now = old.get(part, {}), new.get(part, {})
    study = old.get("study", {})
    if part == "study" and key.startswith("corpus.test."):  # the finished evaluations take the new splits alone
        return _test_sets(study).items() <= _test_sets(new.get("study", {})).items()
    if _is_lm(part, key):  # an LM set on a study that had none
        return not _decodes_with_lm(old)
    if part == "study" and key in MAY_GROW:
        if key == "finetune.label_sets":
            return set(_label_sets(study)) <= set(_label_sets(new.get("study", {})))
        if key == "finetune.milestone_label_sets":
            return set(_milestone_label_sets(study)) <= set(_milestone_label_sets(new.get("study", {})))
        return key in now and set(was.get(key) or []) <= set(now[key] or [])
    if key in was:  # a value changed or gone
        return False
    if part == "study":  # a label set of the corpus; the overrides of a label set not fine-tuned yet
        label_set = key.removeprefix("finetune.per_label_set.")
        return key.startswith("corpus.label_sets.") or (label_set != key and label_set not in _label_sets(study))
    if part == "probe":  # the recipe of a task not probed yet
        return key.split(".")[0] not in study.get("probes", [])
    if part == "finetune" and key in ADDED_LATER:  # a setting earful gained, at what the study trained with
        return now.get(key) == ADDED_LATER[key]
    return part == "data"  # the digest of a manifest not read yet


def _nothing_trained(out: Path, what: str) -> bool:
    """Whether nothing in ``out`` was trained or measured with the recipe its study.json holds; if so it is said:
    the folder takes the new recipe."""
    from earful.study.stages import trained_outputs

    if trained_outputs(out):
        return False
    log.warning("%s: its study.json %s, but nothing in the folder was trained or measured with that recipe yet (no "
                "pre-training checkpoint, fine-tuning, evaluation, probe or gradient noise): the folder takes this "
                "recipe", out, what)
    return True


def _same_files(old: dict[str, Any], new: dict[str, Any], file_digests: Callable[[], dict[str, str]]) -> None:
    """A study.json of an earlier version recorded each manifest's file SHA-256 (``file_digests``: today's, by
    role): a manifest whose bytes are still those is the same, and takes today's digest in ``old``."""
    was, now = old.get("data", {}), new.get("data", {})
    differ = [role for role, digest in was.items() if role in now and now[role] != digest]
    if differ:
        files = file_digests()
        was.update({role: now[role] for role in differ if files.get(role) == was[role]})


def _entries_of_before(old: dict[str, Any], plan_grid: Callable[[list[Any]], dict[str, Any]] | None
                       ) -> dict[str, Any] | None:
    """The grid part of a study.json written before grid entries were fingerprinted, planned again from the grid
    it lists (``plan_grid``: today's planner with today's other settings; where those differ, the study part
    refuses the folder anyway), or None where it cannot be trusted: the planned first entry must resolve to the
    settings that study.json recorded for its first run (batch, layout, steps, lr), so a planner that changed
    since is not taken at its word."""
    grid, first = old.get("study", {}).get("grid"), old.get("pretrain", {})
    if plan_grid is None or not grid:
        return None
    try:
        entries = plan_grid(grid)
    except ValueError:
        return None
    entry = next(iter(entries.values()))
    recorded = {"batch_seconds": first.get("batch_seconds"), "device_seconds": first.get("device_seconds"),
                "steps": first.get("max_steps"), "lr": first.get("optim.lr")}
    return entries if all(entry[k] == v for k, v in recorded.items()) else None


RUN_ADVICE = "use another --out, or remove the folder to start over"  # what a study run refused a folder can do


def check_same_recipe(out: Path, fingerprint: dict[str, Any],
                      file_digests: Callable[[], dict[str, str]] | None = None,
                      plan_grid: Callable[[list[Any]], dict[str, Any]] | None = None,
                      advice: str = RUN_ADVICE, saved: dict[str, Any] | None = None) -> None:
    """Refuse a folder holding a study of another recipe, naming the settings that differ. Grid entries are
    compared by tag: new ones are welcome, one the folder was made with may not change (its lr, its device layout)
    or go. A study.json written before entries were fingerprinted compares the grid as a whole. The lists of
    ``MAY_GROW`` may gain items. A folder in which nothing was trained or measured takes any recipe.
    ``file_digests`` (``manifest_digests(..., file_bytes=True)``): the manifests' digests as study folders of
    earlier versions recorded them, accepted as the same manifests. ``plan_grid`` (a grid list → its grid part,
    ``grid_fingerprint``): lets a study.json written before entries were fingerprinted grow its grid too. ``advice``:
    what the refusal ends with (a study run's; a merge's is its own). ``saved``: the study.json to compare with,
    in place of ``out``'s own (a merge's union of several)."""
    p = out / "study.json"
    own = saved is None  # a study run on its folder (a merge compares folders' recipes as they are)
    if saved is None:
        if not p.exists():
            return
        saved = json.loads(p.read_text(encoding="utf-8"))
    if saved.get("format") != STUDY_FORMAT:
        if _nothing_trained(out, f"was written by an earlier development version (format {saved.get('format')!r})"):
            return
        raise ValueError(f"{p}: written by an earlier development version of earful (format "
                         f"{saved.get('format')!r}, this version reads {STUDY_FORMAT}); use another --out")
    old = comparable(saved["fingerprint"])
    new = {part: kv for part, kv in fingerprint.items() if part != "grid"}
    if file_digests is not None:
        _same_files(old, new, file_digests)
    if "grid" not in old and (entries := _entries_of_before(old, plan_grid)) is not None:
        old["grid"] = entries  # a study.json of before, its entries planned again
    if "grid" in old:  # grid entries by tag: the grid may grow, an entry may not change or go
        grid = fingerprint.get("grid", {})
        gone_or_changed = [tag for tag, entry in old.pop("grid").items() if grid.get(tag) != entry]
        old, new = _without_entries(old), _without_entries(new)
    else:  # a study.json of before: the grid as a whole, and the first run's settings
        gone_or_changed = []
    parts = [*new, *(part for part in old if part not in new)]
    differ = [(part, k) for part in parts for k in differences(old.get(part, {}), new.get(part, {}))]
    refused = [(part, k) for part, k in differ if not _added(part, k, old, new)]
    if own and any(_is_lm(part, k) for part, k in refused) and not lm_results(out):
        # no fine-tuning was decoded with the LM of its study.json (the LM failed to load, or the study stopped
        # before): no result is of it, so the folder takes this LM, or none
        log.info("%s: no fine-tuning was decoded with the LM (lm:) its study.json names yet: the study takes this "
                 "one%s", out, "" if _decodes_with_lm(new) else " (none: greedy decoding alone)")
        refused = [(part, k) for part, k in refused if not _is_lm(part, k)]
    if not refused and not gone_or_changed:
        if differ:
            log.info("%s: the study continues; grown or reordered: %s", out,
                     ", ".join(f"{part}.{k}" for part, k in differ))
        return
    diff = [f"{part}.{k}" for part, k in refused] + [f"grid.{tag}" for tag in gone_or_changed]
    if _nothing_trained(out, f"holds another recipe (differs in {', '.join(diff)})"):
        return
    why = []
    if gone_or_changed and not refused:  # nothing else differs: an entry of its own was changed or removed
        why.append("grid entries may be added to a study, not changed or removed")
    if grown := [k for part, k in refused if part == "study" and k in MAY_GROW]:
        why.append(f"{', '.join(grown)} may gain items, not lose or change one")
    if any(_is_lm(part, k) for part, k in refused):
        why.append("an LM (lm:) may be set on a study that had none, not changed or removed once a fine-tuning "
                   "was decoded with it: its fine-tunings' LM results are of the LM files and beam settings they "
                   "were decoded with")
    if any(part == "study" and k.startswith("corpus.test.") for part, k in refused):
        why.append("test splits may be added, not changed or removed")
    if "probe" not in old and old.get("study", {}).get("probes"):
        why.append("this folder's study.json does not record its probe recipe and probe manifests (written before "
                   "earful fingerprinted them), so its probe results may come from another recipe")
    was = old.get("data", {})
    if any(k in was and was[k] != v for k, v in new.get("data", {}).items()):
        why.append("a manifest's rows changed (its audio paths aside: a moved corpus is the same; a study.json of "
                   "an earlier version recorded the files' bytes, which other paths alone change too): the corpus "
                   "was rebuilt or prepared again")
    # the settings' values, the folder's then the new (a digest, of a manifest or an LM, says nothing: left out)
    values = {f"{part}.{k}": [old.get(part, {}).get(k), new.get(part, {}).get(k)] for part, k in refused
              if part not in ("data", "lm")}
    was_now = f" (was -> now: {describe(values, limit=6)})" if values else ""
    end = f"; {advice}" if advice else ""
    raise ValueError(f"{out}: this folder holds a study made with another recipe (differs in {', '.join(diff[:6])}"
                     f"{' …' if len(diff) > 6 else ''}){''.join(f' ({w})' for w in why)}{was_now}{end}")
