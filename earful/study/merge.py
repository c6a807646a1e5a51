"""``earful study merge``: the finished work of several study folders in one, e.g. seeds run on machines that share
no file system, or a study's results kept without its weights (``--without-weights``: a study of BASE is hundreds
of GB of checkpoints, its results a few MB).

A study folder's finished work comes in units, each marked finished by one record file
(``stages.finished_records``): a pre-training or fine-tuning run (``done.json``), an evaluation, one probe seed of
an upstream (``summary.json``), a gradient noise record. A unit is copied whole, into a temporary folder and then
renamed into place; a unit the destination holds with the same record is left as it is. Two folders holding one
unit with different records (the same seed run on two machines: their kernels differ) are refused before
anything is copied, naming both: which result stands is the user's choice. Work under way is not merged (a study
run on the destination starts it over, which gives the same result).

Every folder must hold the same study: each study.json's recipe fingerprint must be the others' or grow it as
``earful study run`` lets a study grow (``fingerprint.check_same_recipe``: grid entries, probe tasks, label sets
added); the destination's study.json becomes the widest one, with every folder's seeds and probe seeds. The
results and the report are then written by ``earful study run`` on the destination, which reads the finished work
and does none of it again.

Without weights, each checkpoint keeps its JSON files (what the study and the report read: steps, hours, the
weights' SHA-256) and ``left-out.json`` names the files left out; a later stage that needs them (a probe task or
a label set added) is refused, naming the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from earful.atomic import atomic_write_json, replace_folder
from earful.checkpoint import LEFT_OUT_FILE
from earful.lock import hold_folder
from earful.study.fingerprint import check_same_recipe, comparable
from earful.study.stages import finished_records, runs_under_way

log = logging.getLogger(__name__)

STAGES = {"pretrain": "pre-trainings", "finetune": "fine-tunings", "eval": "evaluations", "probe": "probes",
          "gradvar": "gradient noise records"}
NOT_COPIED = (".lock", ".tmp-", ".merge-")  # a folder's lock, temporary files and folders of a write under way


@dataclass
class Merged:
    """What a merge did: units copied and already there (by stage), what it left out."""

    copied: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    under_way: list[str] = field(default_factory=list)  # units not finished in their folder, not merged
    weights_left_out: int = 0  # files
    bytes_left_out: int = 0
    seeds: list[Any] = field(default_factory=list)


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


def widest_study(folders: list[Path]) -> dict[str, Any]:
    """The study.json of ``folders`` whose recipe every other one's grows into, with every folder's seeds and
    probe seeds; a ValueError naming two folders of different recipes (``check_same_recipe``'s reasons)."""
    widest, saved = folders[0], read_study_json(folders[0])
    seeds, probe_seeds = list(saved.get("seeds") or []), list(saved.get("probe_seeds") or [])
    for folder in folders[1:]:
        other = read_study_json(folder)
        try:  # the other grows the widest so far (or is the same recipe): it is the widest
            check_same_recipe(widest, comparable(other["fingerprint"]))
            widest, saved = folder, other
        except ValueError as grows_not:
            try:  # the widest so far grows the other
                check_same_recipe(folder, comparable(saved["fingerprint"]))
            except ValueError:
                raise ValueError(f"{folder} and {widest} hold different studies, which cannot be merged: "
                                 f"{grows_not}") from None
        seeds += [s for s in other.get("seeds") or [] if s not in seeds]
        probe_seeds += [s for s in other.get("probe_seeds") or [] if s not in probe_seeds]
    return {**saved, "seeds": seeds, "probe_seeds": probe_seeds}


def _unit(record: Path) -> Path:
    """The unit of work a record marks finished: its folder, or a gradient noise record itself."""
    return record.parent if record.name in ("done.json", "summary.json") else record


def _record(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); remove its folder from the study folder (its work is then "
                         "done again) or repair it") from None


def _copy_unit(src: Path, dest: Path, weights: bool, merged: Merged) -> None:
    """``src`` (a unit's folder or file) as ``dest``: copied beside it, then renamed into place; a folder there
    (work under way in the destination) is replaced."""
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
        study = widest_study([out, *srcs] if (out / "study.json").exists() else srcs)
        merged = Merged(seeds=study["seeds"])
        todo: dict[Path, tuple[Path, Any]] = {}  # unit (relative) → (its source folder, its record)
        differ = []
        for src in srcs:
            for record in finished_records(src):
                rel, value = record.relative_to(src), _record(record)
                stage = rel.parts[0]
                if (out / rel).exists():
                    if _record(out / rel) != value:
                        differ.append(f"{rel} ({src} and {out})")
                    else:
                        merged.present[stage] = merged.present.get(stage, 0) + 1
                elif rel in todo:
                    if todo[rel][1] != value:
                        differ.append(f"{rel} ({todo[rel][0]} and {src})")
                else:
                    todo[rel] = (src, value)
            merged.under_way += [f"{rdir.relative_to(src)} (in {src})" for rdir in runs_under_way(src)]
        if differ:
            raise ValueError(f"{len(differ)} unit(s) of finished work have different results in two folders (the "
                             f"same run on two machines?): {'; '.join(differ[:5])}{' …' if len(differ) > 5 else ''}; "
                             "remove one of each from its folder (rm -r), choosing which result stands, and merge "
                             "again")
        for rel, (src, _) in todo.items():
            _copy_unit(src / _unit(rel), out / _unit(rel), weights, merged)
            merged.copied[rel.parts[0]] = merged.copied.get(rel.parts[0], 0) + 1
        atomic_write_json(out / "study.json", study)
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
    if merged.under_way:
        lines.append(f"not merged, not finished: {', '.join(merged.under_way)} (a study run on {out} does them "
                     "again)")
    lines.append(f"its seeds: {merged.seeds}; write its results and report with `earful study run STUDY.yaml --out "
                 f"{out} 'seeds={json.dumps(merged.seeds)}'`: it reads the finished work and does none of it again")
    return "\n".join(lines)
