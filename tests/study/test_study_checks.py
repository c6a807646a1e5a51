"""What a study refuses before its first run: settings and files that would otherwise stop it only after every
pre-training had finished, when the fix is refused by the recipe fingerprint."""

import json
import logging
import re
import sys
from pathlib import Path

import pytest

import earful
from earful.study.config import load_study
from earful.study.run import check_recipes, check_study, run_study

BASE = "grid: [10]\nmode: fixed-steps\nsteps: 10\ncorpus: {label_sets: {10h: labelled-10h.jsonl}}\n"

CONFIGS = Path(earful.__file__).parent / "configs"  # the shipped presets, wherever the tests run from


def _study(tmp_path: Path, *overrides: str, text: str = BASE):
    y = tmp_path / "s.yaml"
    y.write_text(text)
    return load_study(y, list(overrides))


def _corpus(root: Path, *names: str) -> Path:
    """A corpus folder holding ``names`` (manifests nothing reads before the checks under test)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text('{"id": "a"}\n')
    return root


def test_an_unknown_checkpoint_name_is_refused_by_plan_and_run(tmp_path, caplog) -> None:
    """`finetune.checkpoints: [finall]` passed `study plan` and the whole pre-training grid (the plan counted it
    as 0 fine-tunings), then stopped the study: now the plan and the run's first check name it."""
    from earful.cli import main

    with pytest.raises(ValueError, match=r"finetune.checkpoints: unknown \['finall'\] \(choose among final \| best "
                                         r"\| milestones\)"):
        check_study(_study(tmp_path, "finetune.checkpoints=[final, finall]"))
    (tmp_path / "s.yaml").write_text(BASE + "finetune: {checkpoints: [finall]}\n")
    assert main(["study", "plan", str(tmp_path / "s.yaml")]) == 2
    assert any("finetune.checkpoints: unknown ['finall']" in r.getMessage() for r in caplog.records), caplog.text


def test_a_label_sets_own_overrides_are_checked_before_any_run(tmp_path) -> None:
    """The fine-tuning recipe was loaded without `per_label_set`: an unknown key there stopped the study after
    every pre-training."""
    with pytest.raises(ValueError, match=r"finetune.per_label_set\['10h'\]: .*unknown key\(s\) \['max_stepz'\]"):
        check_recipes(_study(tmp_path, "finetune.per_label_set={10h: [max_stepz=3]}"))
    check_recipes(_study(tmp_path, "finetune.per_label_set={10h: [max_steps=3]}"))


def test_a_label_sets_own_overrides_are_over_the_study_s(tmp_path) -> None:
    """The paper's studies set a label set's steps over the study's (`per_label_set: {1h: [max_steps=13000]}`):
    a label set's overrides come after the study's, and stand (an entry of a mapping the study gives whole too);
    a mapping whole after an entry of it is refused, as on the command line."""
    from earful.finetune.config import load_finetune_config

    study = _study(tmp_path, "finetune.overrides=[max_steps=9, optim.lr=1e-4]",
                   "finetune.per_label_set={10h: [max_steps=3]}")
    check_recipes(study)
    assert load_finetune_config(None, study.finetune.overrides_for("10h")).max_steps == 3
    assert load_finetune_config(None, study.finetune.overrides_for("1h")).max_steps == 9
    assert load_finetune_config(None, study.finetune.overrides_for("10h")).optim.lr == 1e-4
    mapped = _study(tmp_path, "finetune.overrides=['text_mapping={x: y}']",
                    "finetune.per_label_set={10h: [text_mapping.z=w]}")
    check_recipes(mapped)
    assert load_finetune_config(None, mapped.finetune.overrides_for("10h")).text_mapping == {"x": "y", "z": "w"}
    with pytest.raises(ValueError, match=r"finetune.per_label_set\['10h'\]: .*'optim.lr=1e-4' and 'optim=\{eps: "
                                         r"0.5\}' both set optim"):
        check_recipes(_study(tmp_path, "finetune.overrides=[optim.lr=1e-4]",
                             "finetune.per_label_set={10h: ['optim={eps: 0.5}']}"))


def test_a_recipe_error_names_the_study_s_overrides_as_its_source(tmp_path) -> None:
    """A wrong key in a study's pretrain_overrides or finetune.overrides was said to come from "command-line
    overrides", which the user never gave."""
    with pytest.raises(ValueError, match=r"pretrain-demo.yaml with the study's pretrain_overrides: .*\['max_stepz'\]"):
        check_recipes(_study(tmp_path, f"pretrain_config={CONFIGS / 'pretrain-demo.yaml'}",
                             "pretrain_overrides=[max_stepz=3]"))
    with pytest.raises(ValueError, match=r"the study's finetune.overrides: .*\['max_stepz'\]"):
        check_recipes(_study(tmp_path, "finetune.overrides=[max_stepz=3]"))


@pytest.mark.parametrize(("missing", "role"), [
    ("labelled-10h.jsonl", r"corpus.label_sets\['10h'\]"),
    ("test.jsonl", r"corpus.test\['test'\]"),
    ("dev.jsonl", r"corpus.valid: .*dev.jsonl; corpus.finetune_valid"),
])
def test_a_manifest_the_study_reads_must_exist_before_study_json(tmp_path, monkeypatch, missing, role) -> None:
    """A label set, test or dev manifest that did not exist was fingerprinted as "missing" and stopped the study
    after every pre-training with a bare [Errno 2]: now one line names the setting and the path, and nothing is
    written or trained."""
    def no_training(*args) -> None:
        raise AssertionError("a pre-training started")

    monkeypatch.setattr("earful.study.run.run_pretraining_stage", no_training)
    names = [n for n in ("train.jsonl", "dev.jsonl", "labelled-10h.jsonl", "test.jsonl") if n != missing]
    corpus = _corpus(tmp_path / "corpus", *names)
    study = _study(tmp_path, f"corpus.dir={corpus}", "corpus.train=train.jsonl", "corpus.valid=dev.jsonl",
                   "corpus.finetune_valid=dev.jsonl", "corpus.test={test: test.jsonl}")
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=rf"manifest\(s\) do not exist \({role}.*{missing}.*relative to "
                                                r"corpus.dir") as e:
        run_study(study, out, root=tmp_path)
    assert "\n" not in str(e.value)
    assert not (out / "study.json").exists() and not (out / "pretrain").exists()


def test_a_missing_manifest_is_never_fingerprinted(tmp_path) -> None:
    """A manifest the study does not read (a label set it does not fine-tune on) has no digest, and a study.json
    of before, which recorded it as "missing", continues."""
    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    corpus = _corpus(tmp_path / "corpus", "train.jsonl", "dev.jsonl", "labelled-10h.jsonl", "test.jsonl")
    study = _study(tmp_path, f"corpus.dir={corpus}", "corpus.train=train.jsonl", "corpus.valid=dev.jsonl",
                   "corpus.finetune_valid=dev.jsonl", "corpus.test={test: test.jsonl}",
                   "corpus.label_sets={10h: labelled-10h.jsonl, 1h: labelled-1h.jsonl}", "finetune.label_sets=[10h]")
    fp = recipe_fingerprint(study, plan_runs(study), tmp_path)
    assert "label_set.1h" not in fp["data"] and "missing" not in fp["data"].values()
    out = tmp_path / "out"
    out.mkdir()
    earlier = {**fp, "data": {**fp["data"], "label_set.1h": "missing"}}
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": earlier}))
    check_same_recipe(out, fp)


def test_a_study_of_before_a_setting_was_added_continues_at_its_earlier_behaviour(tmp_path) -> None:
    """Fine-tuning gained `vocab` (english: what every earlier study fine-tuned with): a finished study whose
    study.json lacks it was refused as made "with another recipe (differs in finetune.vocab)". It continues; a
    study that sets another vocabulary is another recipe."""
    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    corpus = _corpus(tmp_path / "corpus", "train.jsonl", "dev.jsonl", "labelled-10h.jsonl", "test.jsonl")
    common = [f"corpus.dir={corpus}", "corpus.train=train.jsonl", "corpus.valid=dev.jsonl",
              "corpus.finetune_valid=dev.jsonl", "corpus.test={test: test.jsonl}",
              "corpus.label_sets={10h: labelled-10h.jsonl}"]
    study = _study(tmp_path, *common)
    fp = recipe_fingerprint(study, plan_runs(study), tmp_path)
    assert fp["finetune"]["vocab"] == "english"
    out = tmp_path / "out"
    (out / "eval" / "x").mkdir(parents=True)
    (out / "eval" / "x" / "summary.json").write_text("{}")  # a finished evaluation
    earlier = {**fp, "finetune": {k: v for k, v in fp["finetune"].items() if k != "vocab"}}
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": earlier}))
    check_same_recipe(out, fp)
    other = _study(tmp_path, *common, "finetune.overrides=[vocab=data]")
    with pytest.raises(ValueError, match=r"differs in finetune\.vocab"):
        check_same_recipe(out, recipe_fingerprint(other, plan_runs(other), tmp_path))


def test_a_corpus_build_killed_part_way_is_built_again_and_a_foreign_one_refused(tmp_path) -> None:
    """synth.json is written last: a build killed after the train manifest (a part of it here) and before
    synth.json was taken as complete, and the study trained on the part. Now it is built again; a folder of
    manifests `earful synth` did not make (no mark of an unfinished build) is refused, not written over."""
    from earful.data.synth import BUILDING
    from earful.study.corpus import ensure_corpus

    synth = "{hours: 0.01, domain: commands, seed: 5, labelled_fraction: 1.0}"
    study = _study(tmp_path, f"corpus.dir={tmp_path / 'corpus'}", f"corpus.synth={synth}")
    ensure_corpus(study, tmp_path)
    manifests = tmp_path / "corpus" / "manifests"
    whole = (manifests / "train.jsonl").read_text()
    assert not (tmp_path / "corpus" / BUILDING).exists()
    (tmp_path / "corpus" / "synth.json").unlink()
    (manifests / "train.jsonl").write_text(whole.splitlines(keepends=True)[0])
    with pytest.raises(ValueError, match=r"holds train.jsonl but no synth.json: not a corpus `earful synth` made"):
        ensure_corpus(study, tmp_path)  # someone's own manifests: left as they are
    assert (manifests / "train.jsonl").read_text() == whole.splitlines(keepends=True)[0]
    (tmp_path / "corpus" / BUILDING).write_text("")  # killed while writing
    ensure_corpus(study, tmp_path)
    assert (tmp_path / "corpus" / "synth.json").exists() and not (tmp_path / "corpus" / BUILDING).exists()
    assert (manifests / "train.jsonl").read_text() == whole
    # a rebuild into the folder killed part-way: an earlier build's synth.json does not make it complete
    (manifests / "train.jsonl").write_text(whole.splitlines(keepends=True)[0])
    (tmp_path / "corpus" / BUILDING).write_text("")
    ensure_corpus(study, tmp_path)
    assert (manifests / "train.jsonl").read_text() == whole and not (tmp_path / "corpus" / BUILDING).exists()


@pytest.mark.parametrize("setting", ["corpus.valid=", "pretrain_overrides=[keep_best=false]",
                                     "pretrain_overrides=[valid_every=0]"])
def test_best_without_a_pre_training_best_is_said_up_front(tmp_path, setting, caplog) -> None:
    """`finetune.checkpoints: [best]` without a pre-training validation set or with keep_best=false fine-tuned
    nothing, silently (and the plan counted the fine-tunings). It is said up front, not refused: a study folder
    made before would otherwise be refused for good (removing `best` changes its recipe)."""
    from earful.study.config import plan_runs
    from earful.study.plan import later_stages

    study = _study(tmp_path, "finetune.checkpoints=[best]", "finetune.baselines=[]", setting)
    with caplog.at_level(logging.WARNING):
        check_recipes(study)
    assert re.search(r"finetune.checkpoints: `best` is the pre-training's best validation checkpoint, but .*: no run "
                     r"will have one, so none is fine-tuned", caplog.text)
    assert later_stages(study, plan_runs(study))["finetunings"] == 0
    kept = _study(tmp_path, "finetune.checkpoints=[best]", "finetune.baselines=[]")
    caplog.clear()
    check_recipes(kept)
    assert "best" not in caplog.text and later_stages(kept, plan_runs(kept))["finetunings"] == 1


def test_a_finished_run_without_best_fine_tunes_the_rest_and_says_so(tmp_path, caplog) -> None:
    """A run left without checkpoints/best (every validation NaN; a resume that removed a discarded step's and
    never beat the best since) had been an error on every rerun of the study: a dead end."""
    from earful.study.config import plan_runs
    from earful.study.stages import checkpoints_to_finetune

    study = _study(tmp_path, "finetune.checkpoints=[final, best]")
    run = plan_runs(study)[0]
    with caplog.at_level(logging.WARNING):
        assert list(checkpoints_to_finetune(study, run, tmp_path)) == ["final"]
    assert re.search(rf"pre-training {run.name} has no .*checkpoints/best: its `best` is not fine-tuned", caplog.text)


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "studies")
                                        .glob("*.yaml")))
def test_shipped_studies_pass_the_checks(name) -> None:
    check_recipes(load_study(Path(__file__).resolve().parents[2] / "studies" / f"{name}.yaml"))


def test_a_corpus_moved_elsewhere_is_the_same_recipe(tmp_path) -> None:
    """The manifests' contents are fingerprinted: a corpus folder moved (or reached by another path) with the
    same contents was refused ("differs in study.corpus.dir"). A study.json of before, which holds corpus.dir,
    continues too."""
    import shutil

    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    names = ("train.jsonl", "dev.jsonl", "labelled-10h.jsonl", "test.jsonl")
    settings = ["corpus.train=train.jsonl", "corpus.valid=dev.jsonl", "corpus.finetune_valid=dev.jsonl",
                "corpus.test={test: test.jsonl}"]
    corpus = _corpus(tmp_path / "corpus", *names)
    study = _study(tmp_path, f"corpus.dir={corpus}", *settings)
    fp = recipe_fingerprint(study, plan_runs(study), tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    earlier = {**fp, "study": {**fp["study"], "corpus.dir": str(corpus)}}
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": earlier}))
    shutil.move(corpus, tmp_path / "moved")
    moved = _study(tmp_path, "corpus.dir=moved", *settings)
    check_same_recipe(out, recipe_fingerprint(moved, plan_runs(moved), tmp_path))


def test_the_report_takes_the_splits_evaluated_from_the_evaluations_and_a_corrupt_summary_is_named(tmp_path) -> None:
    """A test split without transcripts is evaluated (hypotheses only) but has no WER, so results.jsonl leaves it
    out: the report must not call such a finished study "Not finished". A truncated evaluation summary was a bare
    JSONDecodeError naming no file (now in the study's check of what is done, too)."""
    import dataclasses

    from earful.config import to_dict
    from earful.study.config import StudyConfig
    from earful.study.report import unfinished_section
    from earful.study.stages import evaluated_splits

    study = StudyConfig(grid=[4], seeds=[1], steps=4)
    study = dataclasses.replace(study, corpus=dataclasses.replace(
        study.corpus, test={"test": "manifests/test.jsonl", "unlabelled": "manifests/u.jsonl"}))
    saved = to_dict(study)
    runs = {"4s-seed1": {"run": "4s-seed1"}}
    for name in ("4s-seed1__final__10h", "scratch-seed1__init__10h"):
        (tmp_path / "eval" / name).mkdir(parents=True)
        (tmp_path / "eval" / name / "summary.json").write_text(json.dumps({"splits": {"test": {}, "unlabelled": {}}}))
    assert unfinished_section(saved, runs, [], tmp_path) == []
    (tmp_path / "eval" / "scratch-seed1__init__10h" / "summary.json").write_text(json.dumps({"splits": {"test": {}}}))
    assert "test split unlabelled" in unfinished_section(saved, runs, [], tmp_path)[0]
    (tmp_path / "eval" / "scratch-seed1__init__10h" / "summary.json").write_text('{"splits": {"te')
    with pytest.raises(ValueError, match=r"scratch-seed1__init__10h/summary\.json: not an evaluation summary .*"
                                         r"remove .*scratch-seed1__init__10h and rerun the study"):
        evaluated_splits(tmp_path, "scratch-seed1__init__10h")


def test_a_study_that_continues_pretraining_fingerprints_the_initial_weights(tmp_path) -> None:
    """A study whose pretrain_overrides set `init` (continued pre-training) fingerprinted neither the path (a
    per-run setting) nor the weights: a study folder went on with other initial weights of the same architecture,
    mixing its finished runs with new ones. The weights' SHA-256 is now in the pre-training part (a moved copy is
    the same); a scratch study's fingerprint has no such key (unchanged)."""
    import torch

    from earful.checkpoint import save_model
    from earful.model import Wav2Vec2ForPreTraining, load_model_config
    from earful.study.config import plan_runs
    from earful.study.fingerprint import recipe_fingerprint

    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        save_model(tmp_path / name, Wav2Vec2ForPreTraining(load_model_config("tiny")))
    corpus = _corpus(tmp_path / "corpus", "train.jsonl", "dev.jsonl", "labelled-10h.jsonl", "test.jsonl")
    common = [f"corpus.dir={corpus}", "corpus.train=train.jsonl", "corpus.valid=dev.jsonl",
              "corpus.finetune_valid=dev.jsonl", "corpus.test={test: test.jsonl}"]

    def fingerprint(*overrides: str) -> dict:
        study = _study(tmp_path, *common, *overrides)
        return recipe_fingerprint(study, plan_runs(study), tmp_path)

    a, b = (fingerprint(f"pretrain_overrides=[init={tmp_path / n}]") for n in ("a", "b"))
    assert a["pretrain"] != b["pretrain"]
    assert "init.sha256" not in fingerprint()["pretrain"]


def test_a_grid_entrys_own_recipe_is_checked_by_plan_before_any_run(tmp_path, caplog, monkeypatch) -> None:
    """A wrong setting of one grid entry (its pinned lr) passed `study plan` and stopped the study only when that
    run started, after the runs before it had pre-trained. Its numbers are refused as the study loads (grid[i].KEY);
    what only its pre-training recipe refuses (patched in here) is named with the entry by `study plan` too."""
    import earful.study.stages as stages
    from earful.cli import main

    (tmp_path / "s.yaml").write_text(BASE.replace("grid: [10]", "grid: [10, {batch_seconds: 20, lr: -1}]"))
    assert main(["study", "plan", str(tmp_path / "s.yaml")]) == 2
    assert "grid[1].lr=-1.0: expected a finite number > 0" in caplog.text
    real = stages.pretrain_config

    def refusing(study, run, root):
        if run.tag == "20s":
            raise ValueError("optim.lr=5.0: refused by the recipe")
        return real(study, run, root)

    monkeypatch.setattr(stages, "pretrain_config", refusing)
    with pytest.raises(ValueError, match=r"grid entry 20s \(run 20s-seed1\): optim.lr=5.0: refused by the recipe"):
        check_recipes(_study(tmp_path, "grid=[10, {batch_seconds: 20, lr: 5.0}]"))
    (tmp_path / "s.yaml").write_text(BASE.replace("grid: [10]", "grid: [10, {batch_seconds: 20, lr: 5.0}]"))
    caplog.clear()
    assert main(["study", "plan", str(tmp_path / "s.yaml")]) == 2
    assert any("grid entry 20s" in r.getMessage() for r in caplog.records), caplog.text


def test_plan_says_what_this_machine_lacks_to_run_the_study(tmp_path, caplog, monkeypatch) -> None:
    """`lm:` naming a file that is not there, or with flashlight-text not installed, passed `study plan` in
    silence; `study run` refused it (``check_environment``, before any training). The plan warns of it (the paths
    relative to the folder it runs in, as the run's) and still plans: it may be made on another machine."""
    from earful.cli import main
    from earful.eval import beam

    def warned(text: str) -> bool:
        return any(r.levelname == "WARNING" and "would stop before any training" in r.getMessage()
                   and text in r.getMessage() for r in caplog.records)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(beam, "flashlight_available", lambda: True)  # the files' check, with or without flashlight
    (tmp_path / "s.yaml").write_text(BASE + "lm: {path: lm.arpa, lexicon: words.txt}\n")
    assert main(["study", "plan", "s.yaml"]) == 0
    assert warned(f"lm.path: {tmp_path / 'lm.arpa'}; lm.lexicon: {tmp_path / 'words.txt'}"), caplog.text
    (tmp_path / "lm.arpa").write_text("\\data\\\n")
    (tmp_path / "words.txt").write_text("a a |\n")
    caplog.clear()
    assert main(["study", "plan", "s.yaml"]) == 0
    assert not any(r.levelname == "WARNING" for r in caplog.records), caplog.text
    monkeypatch.setattr(beam, "flashlight_available", lambda: False)
    assert main(["study", "plan", "s.yaml"]) == 0
    assert warned("pip install 'earful[lm]'"), caplog.text
    caplog.clear()
    monkeypatch.setattr(beam, "flashlight_available", lambda: True)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: import fails
    assert main(["study", "plan", "s.yaml", "tracking.backends=[wandb]"]) == 0
    assert warned("pip install 'earful[tracking]'"), caplog.text
    assert main(["study", "run", "s.yaml", "--out", "o", "tracking.backends=[wandb]"]) == 2  # the run refuses it
    assert not (tmp_path / "o" / "pretrain").exists()


@pytest.mark.parametrize("setting, problem", [
    ("finetune.label_sets=[100h]", r"finetune.label_sets \['100h'\] are not in corpus.label_sets"),
    ("finetune.baselines=[scrach]", r"finetune.baselines: unknown 'scrach'"),
    ("probes=[phone]", r"probes: unknown task\(s\) \['phone'\]"),
])
def test_a_name_that_does_not_exist_is_refused_by_plan_too(tmp_path, caplog, setting, problem) -> None:
    """`study plan` counted fine-tunings of a label set the corpus does not have, of an unknown baseline and probes
    of an unknown task; `study run` refused them."""
    from earful.cli import main

    with pytest.raises(ValueError, match=problem):
        check_recipes(_study(tmp_path, setting))
    (tmp_path / "s.yaml").write_text(BASE)
    assert main(["study", "plan", str(tmp_path / "s.yaml"), setting]) == 2
    assert any(re.search(problem, r.getMessage()) for r in caplog.records), caplog.text


@pytest.mark.parametrize(("mode", "unused", "used"), [("fixed-steps", "hours=3", "steps=12"),
                                                      ("fixed-hours", "steps=12", "hours=3")])
def test_a_setting_the_mode_does_not_use_is_not_the_recipe(tmp_path, mode, unused, used) -> None:
    """load_study says `hours` is unused in fixed-steps (`steps` in fixed-hours), but the fingerprint held it: a
    finished fixed-steps study whose hours changed was refused ("differs in study.hours"). It continues, a folder
    whose study.json recorded the unused key too; the key the mode uses is still the recipe."""
    from earful.study.config import plan_runs
    from earful.study.fingerprint import STUDY_FORMAT, check_same_recipe, recipe_fingerprint

    corpus = _corpus(tmp_path / "corpus", "train.jsonl", "dev.jsonl", "labelled-10h.jsonl", "test.jsonl")
    common = [f"corpus.dir={corpus}", "corpus.train=train.jsonl", "corpus.valid=dev.jsonl",
              "corpus.finetune_valid=dev.jsonl", "corpus.test={test: test.jsonl}", f"mode={mode}", "steps=10",
              "hours=2"]

    def fingerprint(*more: str):
        study = _study(tmp_path, *common, *more)
        return recipe_fingerprint(study, plan_runs(study), tmp_path)

    fp = fingerprint()
    out = tmp_path / "out"
    (out / "eval" / "x").mkdir(parents=True)
    (out / "eval" / "x" / "summary.json").write_text("{}")  # a finished evaluation
    key = unused.split("=")[0]
    earlier = {**fp, "study": {**fp["study"], key: 2 if key == "hours" else 10}}  # as study.json recorded it
    (out / "study.json").write_text(json.dumps({"format": STUDY_FORMAT, "fingerprint": earlier}))
    check_same_recipe(out, fingerprint(unused))
    with pytest.raises(ValueError, match=rf"differs in study\.{used.split('=')[0]}"):
        check_same_recipe(out, fingerprint(used))


def test_an_override_of_a_setting_the_study_sets_for_each_run_is_refused_naming_the_study_s_key() -> None:
    """The study sets each run's lr, steps, batch and seed over its pretrain_overrides: these passed check_recipes
    and the run trained with the study's values, without a word."""
    from earful.study.config import StudyConfig

    study = StudyConfig(grid=[8.0], steps=10, pretrain_overrides=["optim.lr=1e-2", "max_steps=5000",
                                                                   "batch_seconds=99", "seed=7", "threads=1"])
    with pytest.raises(ValueError) as e:
        check_recipes(study)
    said = str(e.value)
    for item, key, instead in (("optim.lr=1e-2", "optim.lr", "lr and lr_scaling, or a grid entry's lr"),
                               ("max_steps=5000", "max_steps", "steps (fixed-steps) or hours (fixed-hours)"),
                               ("batch_seconds=99", "batch_seconds", "grid"), ("seed=7", "seed", "seeds")):
        assert f"pretrain_overrides: {item!r} sets {key}, which the study sets for each run: set {instead}" in said
    assert "threads" not in said
    with pytest.raises(ValueError, match=r"'optim=\{lr: 1e-2\}' sets optim\.lr, .*: set lr"):  # a mapping given whole
        check_recipes(StudyConfig(grid=[8.0], steps=10, pretrain_overrides=["optim={lr: 1e-2}"]))


def test_an_override_a_baseline_sets_itself_is_said_not_ignored_silently(tmp_path, caplog) -> None:
    """The scratch-*-cnn baselines set freeze_feature_encoder themselves: an override of it held for the other
    fine-tunings and was dropped for them without a word."""
    with caplog.at_level(logging.WARNING):
        check_recipes(_study(tmp_path, "finetune.overrides=[freeze_feature_encoder=false]",
                             "finetune.baselines=[scratch, scratch-frozen-cnn]"))
    assert ("finetune.overrides: 'freeze_feature_encoder=false' sets freeze_feature_encoder, which the baseline "
            "scratch-frozen-cnn sets itself (True): that baseline keeps its own") in caplog.text
    assert "baseline scratch sets" not in caplog.text  # the plain scratch baseline takes the recipe
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_recipes(_study(tmp_path, "finetune.overrides=[freeze_feature_encoder=false]"))
    assert "sets itself" not in caplog.text


def test_the_cyclic_schedule_s_settings_are_refused_only_where_the_study_sets_them(tmp_path) -> None:
    overrides = "pretrain_overrides=[optim.schedule=cyclic, optim.cyclic_step_size=1, 'ckpt_steps=[4]']"
    check_recipes(_study(tmp_path, overrides))  # no cycles: the recipe's own
    with pytest.raises(ValueError) as e:
        check_recipes(_study(tmp_path, overrides, "cycles=1"))
    for key in ("optim.schedule", "optim.cyclic_step_size", "ckpt_steps"):
        assert re.search(rf"sets {re.escape(key)}, which the study sets for each run: set cycles", str(e.value))


@pytest.mark.parametrize(("setting", "where"), [
    ("finetune.overrides=[max_steps=3, init=scratch]", "finetune.overrides: 'init=scratch' sets init"),
    ("finetune.per_label_set={10h: [seed=3]}", "finetune.per_label_set['10h']: 'seed=3' sets seed"),
    ("finetune.overrides=[data.train=x.jsonl]", "finetune.overrides: 'data.train=x.jsonl' sets data.train, which "
                                                "the study sets for each run: set corpus.label_sets instead")])
def test_a_finetuning_override_of_what_the_study_sets_for_each_run_is_refused(tmp_path, setting, where) -> None:
    with pytest.raises(ValueError) as e:
        check_recipes(_study(tmp_path, setting))
    assert where in str(e.value) and "max_steps" not in str(e.value)  # a fine-tuning's steps are its recipe's
