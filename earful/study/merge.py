"""``earful study merge``: the finished work of several study folders in one, e.g. seeds run on machines that share
no file system, or a study's results kept without its weights (``--without-weights``: a study of BASE is hundreds
of GB of checkpoints, its results a few MB).

A study folder's finished work comes in units, each marked finished by one record file
(``stages.finished_records``): a pre-training or fine-tuning run (``done.json``), an evaluation, one probe seed of
an upstream (``summary.json``), a gradient noise record. A unit is copied whole, into a temporary folder and then
renamed into place. Units are compared by their results (``_result``: a run by its checkpoints' weights, as its
done.json records its plan; the others by their numbers, less the paths they record): the destination keeps a
unit it holds alike, takes one grown elsewhere (a probe task or a test split added to it) or one with the weights
it lacks. Two folders holding one unit with different results (the same seed run on two machines: their kernels
differ) are refused before anything is copied, naming both: which result stands is the user's choice. An
unfinished run is not merged (a study run on the destination starts it over, which gives the same result), nor is
a run folder replaced that a trainer still holds.

Every folder must hold the same study: each study.json's recipe fingerprint must be the others' or grow it as
``earful study run`` lets a study grow (``fingerprint.check_same_recipe``: grid entries, probe tasks, label sets
added); the destination's study.json becomes the widest one, with every folder's seeds and probe seeds. The
results and the report are then written by ``earful study run`` on the destination, which reads the finished work
and does none of it again; where the widest recipe grew a folder's, the merge prints the overrides that bring that
folder's study file to it (``widening``), or which folder's study file to run with.

Without weights, each checkpoint keeps its JSON files (what the study and the report read: steps, hours, the
weights' SHA-256) and ``left-out.json`` names the files left out, but for the runs whose weights planned work that
no folder has finished needs (``weights_needed``: a pre-training's probes, fine-tunings, gradient noise; a
fine-tuning's evaluation), which keep them and are named; a stage added to the study later that needs weights (a
probe task or a label set) is refused, naming the checkpoint.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from earful.atomic import atomic_write_json, replace_folder
from earful.checkpoint import LEFT_OUT_FILE, weights_sha256
from earful.config import (
    differences,
    flatten,
    from_dict,
    merge,
    override_key,
    override_value,
    parse_overrides,
    to_dict,
)
from earful.lock import FolderBusy, hold_folder
from earful.study.config import StudyConfig, plan_runs, study_of_record
from earful.study.fingerprint import MAY_GROW, check_same_recipe, comparable, config_parts, with_todays_names
from earful.study.stages import (
    STAGES,
    done_record,
    evaluated,
    finished_records,
    gradvar_measured,
    gradvar_record,
    probed,
    read_record,
    runs_unfinished,
)

NOT_COPIED = (".lock", ".tmp-", ".merge-")  # a folder's lock, temporary files and folders of a write under way
WHERE = ("checkpoint",)  # what a record says of where its study folder was, not of its result


@dataclass
class Merged:
    """What a merge did: units copied and already there (by stage), what it left out."""

    copied: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)  # units not finished in their folder, not merged
    weights_kept: dict[str, list[str]] = field(default_factory=dict)  # run → the unfinished work that needs them
    weights_missing: dict[str, list[str]] = field(default_factory=dict)  # the same, its weights in no folder
    weights_left_out: int = 0  # files
    bytes_left_out: int = 0
    seeds: list[Any] = field(default_factory=list)
    grid: list[Any] | None = None  # the union of the folders' grids, where no folder held every entry
    narrower: dict[str, Narrower] = field(default_factory=dict)  # folder → how the merged recipe grew its own
    recipe_of: str | None = None  # a folder whose recipe is the merged one (None: only the folders together)


@dataclass
class Narrower:
    """A folder whose recipe the merged one grew (a test split, a probe task, a label set added elsewhere): a study
    run on the merged folder with that folder's study file is refused unless these overrides bring it there."""

    grown: list[str]  # the fingerprint's keys that differ, part.key
    overrides: list[str] | None  # key=value overrides for ``earful study run``; None where none give the recipe


def widening(saved: dict[str, Any], wide: dict[str, Any]) -> Narrower | None:
    """How recipe ``wide`` (a study.json, the merged one) grew that of study.json ``saved``, with the overrides
    (study keys, ``probe_overrides``) that bring the study file ``saved`` was run with to it: those whose config
    parts (``config_parts``: the study and probe parts) are the merged recipe's, else None (a section the narrower
    recipe has not, as ``lm:``, comes with settings that are no part of the recipe: where its files are). None
    where ``saved``'s recipe is the merged one."""
    was, now = comparable(saved["fingerprint"]), comparable(wide["fingerprint"])
    grown = [(part, k) for part in ("study", "probe") for k in differences(was.get(part, {}), now.get(part, {}))]
    if all(part == "study" and k in (*MAY_GROW, "grid") and _reordered(was[part].get(k), now[part].get(k))
           for part, k in grown):  # the same items in another order: a study run takes either (check_same_recipe)
        return None
    keys = [k for part, k in grown if part == "study"] + (["probe_overrides"] if any(
        part == "probe" for part, _ in grown) else [])
    try:  # today's names: the study file is read with them (those of before are refused, naming today's)
        values, config = to_dict(study_of_record(with_todays_names(wide))), to_dict(study_of_record(
            with_todays_names(saved)))
        given = _overrides(values, [_setting(values, k) for k in keys])
        overrides = [f"{'.'.join(key)}={override_value(value)}" for key, value in given.items()]
        own = flatten(config)
        if any(own.get(section) is None and section in own for key in given
               for section in (".".join(key[:i]) for i in range(1, len(key)))):
            overrides = None
        else:
            study = from_dict(StudyConfig, merge(config, parse_overrides(overrides), StudyConfig), "the merged recipe")
            parts = comparable(config_parts(study))
            if any(parts.get(part, {}) != now.get(part, {}) for part in ("study", "probe")):
                overrides = None
    except (KeyError, TypeError, ValueError):  # a key the merged study.json does not set: no override removes it
        overrides = None
    tasks = {f"probe.{k.split('.')[0]}" for part, k in grown if part == "probe"}  # a task's recipe: the task
    return Narrower([f"{part}.{k}" for part, k in grown if part == "study"] + sorted(tasks), overrides)


def _reordered(was: Any, now: Any) -> bool:
    """Whether lists ``was`` and ``now`` hold the same items, in another order."""
    return isinstance(was, list) and isinstance(now, list) and sorted(
        json.dumps(x, sort_keys=True) for x in was) == sorted(json.dumps(x, sort_keys=True) for x in now)


def _setting(config: dict[str, Any], key: str) -> tuple[str, ...]:
    """The names that lead to flattened ``key`` in nested ``config`` (a label set's name may hold a '.': ``1.5h``);
    a KeyError where none do."""
    for name, value in config.items():
        if key == name:
            return (name,)
        if isinstance(value, dict) and key.startswith(f"{name}."):
            try:
                return (name, *_setting(value, key.removeprefix(f"{name}.")))
            except KeyError:
                continue
    raise KeyError(key)


def _overrides(config: dict[str, Any], settings: list[tuple[str, ...]]) -> dict[tuple[str, ...], Any]:
    """The key=value overrides, key → value, that set ``settings`` to their values in nested ``config``: a setting
    whose name no override key can say (a name holding '.' or '=', or spaces around it) is set with the mapping that
    holds it, given whole (``corpus.label_sets={...}``), and no entry of that mapping beside it."""
    given: dict[tuple[str, ...], Any] = {}
    for path in settings:
        plain = next((i for i, name in enumerate(path) if not name or name != name.strip() or "." in name
                      or "=" in name), len(path))
        given[path[:plain]] = _at(config, path[:plain])
    return {key: value for key, value in given.items() if not any(key[:i] in given for i in range(1, len(key)))}


def _at(config: dict[str, Any], path: tuple[str, ...]) -> Any:
    for name in path:
        config = config[name]
    return config


def read_study_json(folder: Path) -> dict[str, Any]:
    p = folder / "study.json"
    if not p.is_file():
        raise FileNotFoundError(f"{folder}: not a study folder (no study.json); give the --out of an `earful study "
                                "run`")
    try:
        saved = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a study record ({e})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint"), dict):
        raise ValueError(f"{p}: no recipe fingerprint (written by an earlier development version of earful?)")
    return saved


def _entry_tags(saved: dict[str, Any]) -> list[str]:
    """The tag of each entry of a study.json's grid, in its order (as ``plan_runs`` names runs)."""
    return [e.run_tag for e in study_of_record(saved).entries()]


def grid_union(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any] | None:
    """Study.json ``base`` with the grid entries of ``extra`` it lacks (grid entries run on machines of their own),
    or None where they cannot be one grid: an entry of one tag resolved differently, or a study.json that does
    not fingerprint its entries."""
    grid_b, grid_e = base["fingerprint"].get("grid"), extra["fingerprint"].get("grid")
    if grid_b is None or grid_e is None or any(grid_b[t] != grid_e[t] for t in grid_b.keys() & grid_e.keys()):
        return None
    try:
        added = [item for item, tag in zip(extra.get("grid") or [], _entry_tags(extra), strict=True)
                 if tag not in grid_b]
    except (TypeError, ValueError):
        return None
    grid = [*base.get("grid", []), *added]
    fingerprint = {**base["fingerprint"], "grid": {**grid_b, **{t: v for t, v in grid_e.items() if t not in grid_b}}}
    if "grid" in fingerprint.get("study", {}):
        fingerprint["study"] = {**fingerprint["study"], "grid": grid}
    union = {**base, "grid": grid, "fingerprint": fingerprint}
    try:  # one grid a study can run: two tags of one batch size, say, are not (the printed grid would be refused)
        plan_runs(study_of_record(union))
    except ValueError:
        return None
    return union


def widest_study(records: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    """The study.json of ``records`` (folder → its study.json) whose recipe every other one's grows into, with every
    folder's seeds and probe seeds (sorted, as one folder of them all would list them), and every folder's grid
    entries (grid entries run on machines of their own: ``grid_union``); a ValueError naming two folders of which
    neither recipe grows the other, nor their grids' union both (``check_same_recipe``'s reasons)."""
    (widest, saved), *rest = records.items()
    seeds, probe_seeds = set(saved.get("seeds") or []), set(saved.get("probe_seeds") or [])
    for folder, other in rest:
        try:  # the other grows the widest so far (or is the same recipe): it is the widest
            check_same_recipe(widest, comparable(other["fingerprint"]), advice="", saved=saved)
            widest, saved = folder, other
        except ValueError as grows_not:
            try:  # the widest so far grows the other
                check_same_recipe(folder, comparable(saved["fingerprint"]), advice="", saved=other)
            except ValueError:
                saved = _union_of(widest, saved, folder, other, grows_not)
        seeds |= set(other.get("seeds") or [])
        probe_seeds |= set(other.get("probe_seeds") or [])
    return {**saved, "seeds": sorted(seeds), "probe_seeds": sorted(probe_seeds)}


def _union_of(widest: Path, saved: dict[str, Any], folder: Path, other: dict[str, Any], grows_not: Exception
              ) -> dict[str, Any]:
    """The union of the grids of ``saved`` (the widest study.json so far, of folder ``widest``) and ``other`` (of
    ``folder``), whose recipe both grow into; else the ValueError that they hold different studies."""
    for base, extra in ((saved, other), (other, saved)):
        union = grid_union(base, extra)
        if union is None:
            continue
        try:
            check_same_recipe(widest, comparable(union["fingerprint"]), advice="", saved=saved)
            check_same_recipe(folder, comparable(union["fingerprint"]), advice="", saved=other)
        except ValueError:
            continue
        return union
    raise ValueError(f"{folder} and {widest} hold different studies (neither recipe grows the other), which cannot "
                     f"be merged: {grows_not}") from None


def _unit(record: Path) -> Path:
    """The unit of work a record marks finished: its folder, or a gradient noise record itself."""
    return record.parent if record.name in ("done.json", "summary.json") else record


def _result(folder: Path, rel: Path) -> Any:
    """What unit ``rel`` of study folder ``folder`` holds, as compared between folders: its record less the paths it
    names (the same result in a folder of another name is the same), and for a run the SHA-256 of each of its
    checkpoints' weights (its done.json records its plan, not its result; kept by ``--without-weights`` too)."""
    value = read_record(folder / rel)
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in WHERE}
        if isinstance(splits := value.get("splits"), dict):  # an evaluation's: its LM's files by their place
            value["splits"] = {split: {decoder: _settings_less_paths(r) for decoder, r in res.items()}
                               if isinstance(res, dict) else res for split, res in splits.items()}
    if rel.name != "done.json":
        return value
    weights = {p.parent.name: weights_sha256(read_record(p)) for p in sorted((folder / rel.parent / "checkpoints").glob(
        "[!.]*/model.json"))}
    return {"done": value, "weights": weights}


def _settings_less_paths(result: Any) -> Any:
    """An evaluation's result of one decoder less where its LM files were (``settings.path``, ``settings.lexicon``):
    the same LM elsewhere is the same (the study's fingerprint holds their digests)."""
    if isinstance(result, dict) and isinstance(settings := result.get("settings"), dict):
        return {**result, "settings": {k: v for k, v in settings.items() if k not in ("path", "lexicon")}}
    return result


def _grows(wide: Any, narrow: Any) -> bool:
    """``wide`` holds every result ``narrow`` does: the same unit, grown (probe tasks, test splits added)."""
    if isinstance(wide, dict) and isinstance(narrow, dict):
        return all(k in wide and _grows(wide[k], v) for k, v in narrow.items())
    return bool(wide == narrow)


def weights_needed(saved: dict[str, Any], folders: list[Path]) -> dict[Path, list[str]]:
    """The runs (pre-trainings and fine-tunings, by folder relative to the study folder) whose weights work the
    study plans needs that no folder of ``folders`` has finished, with that work: a pre-training's fine-tunings,
    probes and gradient noise (``work_after``, as ``study run`` plans them from the recipe ``saved``, a study.json,
    for its seeds and every seed a folder has a run or a probe of: one a rerun with fewer seeds left out of the
    plan), a fine-tuning's evaluation. Work finished in one folder is merged from it; work split between folders
    (probe seeds of one upstream) counts as unfinished (its weights are kept: more than needed, never less). The
    records it reads have been read by ``_result`` (an unreadable one is named there)."""
    from earful.study.run import unique, work_after

    seeds = {read_record(p).get("seed") for f in folders for p in (f / "pretrain").glob("[!.]*/done.json")}
    probe_seeds = {int(p.name[len("seed-"):]) for f in folders for p in (f / "probe").glob("[!.]*/seed-*")
                   if p.name[len("seed-"):].isdigit()}
    try:
        study = study_of_record(saved)
        study.seeds = sorted({*study.seeds, *(s for s in seeds if isinstance(s, int))})
        study.probe_seeds = sorted({*study.probe_seeds, *probe_seeds})
        runs = plan_runs(study)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folders[0] / 'study.json'}: not a study this earful reads ({e}); merge it with its "
                         "weights") from None
    first_of_seed = {seed: next(r for r in runs if r.seed == seed) for seed in study.seeds}
    tests = study.corpus.test_sets()
    needed: dict[Path, list[str]] = {}
    for run in runs:
        found = next(((f, r) for f in folders if (r := done_record(f / "pretrain" / run.name)) is not None), None)
        if found is None:
            continue
        holder, record = found
        after = work_after(study, run, holder, first_of_seed[run.seed] is run, bool(record.get("diverged")))
        todo = []
        for f in unique(after.finetunings):
            if not any(done_record(folder / "finetune" / f.name) is not None for folder in folders):
                todo.append(f"fine-tuning {f.name}")
            elif not any(evaluated(folder, f.name, tests, study.lm is not None) for folder in folders):
                needed[Path("finetune") / f.name] = [f"evaluation {f.name}"]
        todo += [f"probe {p.name}" for p in unique(after.probes)
                 if p.upstream != "fbank" and not any(probed(study, folder, p.name) for folder in folders)]
        todo += [f"gradient noise {gradvar_record(holder, run, name).stem}" for name in after.gradvar
                 if not any(gradvar_measured(folder, run, name) for folder in folders)]
        if todo:
            needed[Path("pretrain") / run.name] = todo
    return needed


def _without_weights(unit: Path) -> bool:
    return unit.is_dir() and any(unit.glob(f"checkpoints/*/{LEFT_OUT_FILE}"))


def _clean_stale(out: Path) -> None:
    """The temporary copies a killed merge into ``out`` left (the lock is held: no merge is under way)."""
    for stage in STAGES:
        for left in (out / stage).glob(".merge-*") if (out / stage).is_dir() else ():
            if left.is_dir() and not left.is_symlink():
                shutil.rmtree(left, ignore_errors=True)
            else:
                left.unlink(missing_ok=True)


def _copy_unit(src: Path, dest: Path, weights: bool, merged: Merged) -> None:
    """``src`` (a unit's folder or file) as ``dest``: copied beside it, then renamed into place; a folder there
    (an unfinished run in the destination) is replaced."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".merge-{os.getpid()}-{dest.name}"
    if src.is_file():
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)
        return

    def ignore(folder: str, names: list[str]) -> list[str]:
        skip = [n for n in names if n.startswith(NOT_COPIED)]
        if not weights and Path(folder).parent.name == "checkpoints":  # a checkpoint: only its JSON files
            left = {n: {"size": (Path(folder) / n).stat().st_size} for n in names
                    if n not in skip and not n.endswith(".json") and (Path(folder) / n).is_file()}
            merged.weights_left_out += len(left)
            merged.bytes_left_out += sum(f["size"] for f in left.values())
            if left:
                copy = tmp / Path(folder).relative_to(src)
                copy.mkdir(parents=True, exist_ok=True)
                atomic_write_json(copy / LEFT_OUT_FILE, {"left_out_by": "earful study merge --without-weights",
                                                         "from": str(Path(folder).resolve()), "files": left})
            skip += list(left)
        return skip

    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    replace_folder(tmp, dest, dest.parent / f".merge-{os.getpid()}-old-{dest.name}")


def merge_studies(sources: list[str | Path], out: str | Path, *, weights: bool = True) -> Merged:
    """The finished work of every study folder of ``sources`` in study folder ``out`` (made if need be; a study
    folder already there keeps its work); ``weights=False`` leaves the checkpoints' weights and training states
    out. Returns what was merged."""
    out, srcs = Path(out), [Path(s) for s in sources]
    if not srcs:
        raise ValueError("no study folder to merge from")
    for src in srcs:
        if src.resolve() == out.resolve():
            raise ValueError(f"{src}: the destination is also a source; give it as --out only")
        read_study_json(src)
    with hold_folder(out, "earful study"):
        records = {folder: read_study_json(folder)
                   for folder in ([out, *srcs] if (out / "study.json").exists() else srcs)}
        study = widest_study(records)
        tags = set(_entry_tags(study))
        # the grid to run it with, where no source holds every entry (a destination holding an earlier union is
        # run with that grid all the same: its study file has its own)
        union = not any(set(_entry_tags(records[f])) >= tags for f in srcs)
        merged = Merged(seeds=study["seeds"], grid=study["grid"] if union else None)
        for folder, saved in records.items():
            narrower = widening(saved, study)
            if narrower is not None and union and "study.grid" in narrower.grown:  # the command gives the grid
                narrower.grown.remove("study.grid")
                if narrower.overrides is not None:
                    narrower.overrides = [o for o in narrower.overrides if override_key(o) != ("grid",)]
            if narrower is None or not narrower.grown:
                merged.recipe_of = merged.recipe_of or str(folder)
            else:
                merged.narrower[str(folder)] = narrower
        _clean_stale(out)
        # unit (by its record, relative) → the folders that finished it, with its result in each
        holders: dict[Path, list[tuple[Path, Any]]] = {}
        for folder in [out, *srcs]:
            for record in finished_records(folder):
                rel = record.relative_to(folder)
                holders.setdefault(rel, []).append((folder, _result(folder, rel)))
        needed = {} if weights else weights_needed(study, [out, *srcs])
        todo: dict[Path, Path] = {}  # unit → the source folder it is copied from
        differ = []
        for rel, held_by in holders.items():
            (best, result), folders = held_by[0], [f for f, _ in held_by]
            for folder, other in held_by[1:]:
                with_weights = weights or _unit(rel) in needed
                if _grows(other, result) and (other != result or with_weights and _without_weights(
                        best / _unit(rel)) and not _without_weights(folder / _unit(rel))):
                    best, result = folder, other  # grown (probe tasks, test splits added), or with its weights
                elif not _grows(result, other):
                    differ.append(f"{rel} ({best} and {folder})")
                    break
            if best != out:
                todo[rel] = best
            elif len(folders) > 1:
                merged.present[rel.parts[0]] = merged.present.get(rel.parts[0], 0) + 1
        for src in srcs:
            merged.unfinished += [f"{rdir.relative_to(src)} (in {src})" for rdir in runs_unfinished(src)]
        if differ:
            raise ValueError(f"{len(differ)} unit(s) of finished work have different results in two folders (the "
                             "same run on two machines?): " + "; ".join(differ) + "; remove one of each from its "
                             "folder (rm -r), choosing which result stands, and merge again")
        held = []  # a run folder a trainer still works in (a Slurm job of a study process that died) is not replaced
        try:
            for rel in todo:
                if (out / _unit(rel)).is_dir():
                    held.append(hold_folder(out / _unit(rel), "earful run"))
            for rel, src in todo.items():
                # a unit the destination holds with its weights keeps them where the source has them (grown), as
                # does one whose weights unfinished work needs
                keep = weights or _unit(rel) in needed or ((out / rel).exists() and not _without_weights(
                    out / _unit(rel)))
                _copy_unit(src / _unit(rel), out / _unit(rel), keep, merged)
                merged.copied[rel.parts[0]] = merged.copied.get(rel.parts[0], 0) + 1
        except FolderBusy as e:
            raise FolderBusy(f"{e}; nothing was merged") from None
        finally:
            for f in held:
                f.close()
        for unit, work in needed.items():  # as the destination now holds them
            (merged.weights_missing if _without_weights(out / unit) else merged.weights_kept)[str(unit)] = work
        atomic_write_json(out / "study.json", with_todays_names(study))
    return merged


def describe(merged: Merged, out: Path) -> str:
    """What ``merge_studies`` did, for the log."""
    counts = ", ".join(f"{merged.copied.get(s, 0)} {what}" for s, what in STAGES.items()
                       if merged.copied.get(s) or merged.present.get(s))
    present = sum(merged.present.values())
    lines = [f"merged into {out}: {counts or 'nothing'}"
             + (f" ({present} unit(s) it already held with the same results, left as they were)" if present else "")]
    if merged.weights_left_out:
        lines.append(f"without weights: {merged.weights_left_out} file(s), {merged.bytes_left_out / 2**20:.1f} MiB, "
                     "left out (each checkpoint's left-out.json names them)")
    if merged.weights_kept:
        lines.append(f"kept with their weights, as work that needs them is not finished (a study run on {out} does "
                     "it): " + "; ".join(f"{unit} ({', '.join(work)})" for unit, work in merged.weights_kept.items()))
    if merged.weights_missing:
        lines.append("WARNING: work that needs weights no folder holds is not finished (a study run on "
                     f"{out} stops there; merge into it a folder that holds them): " + "; ".join(
                         f"{unit} ({', '.join(work)})" for unit, work in merged.weights_missing.items()))
    if merged.unfinished:
        lines.append(f"not merged, unfinished: {', '.join(merged.unfinished)} (a study run on {out} does them "
                     "again)")
    grid = f" {shlex.quote(f'grid={override_value(merged.grid)}')}" if merged.grid is not None else ""
    lines.append(f"its seeds: {merged.seeds}{f'; its grid, the folders together: {merged.grid}' if grid else ''}; "
                 f"write its results and report with `earful study run STUDY.yaml --out {shlex.quote(str(out))} "
                 f"{shlex.quote(f'seeds={override_value(merged.seeds)}')}{grid}`: it reads the finished work and does "
                 "none of it again")
    for folder, narrower in merged.narrower.items():
        grown = f"the merged recipe grew that of {folder} (differs in {', '.join(narrower.grown)})"
        if narrower.overrides is not None:
            lines.append(f"{grown}: with its study file, add {' '.join(map(shlex.quote, narrower.overrides))} to "
                         "that command (without them it is refused)")
        else:
            lines.append(f"WARNING: {grown}, which overrides of that command do not give: run it with the study file "
                         f"{f'of {merged.recipe_of}' if merged.recipe_of else 'that holds those settings'} (the "
                         "merged recipe), not that of " + folder)
    return "\n".join(lines)
