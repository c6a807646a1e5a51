"""A study's ``lm:``: every fine-tuning decoded with an n-gram LM beside greedy decoding (the paper's 4-gram word
decoding), set from the start or on a study that had evaluated greedily (then its finished fine-tunings are decoded
with it alone on the next run), in the report, study.json's fingerprint, status and merge."""

import difflib
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("flashlight.lib.text.decoder.kenlm")

FT = "4s-seed1__final__10h"


def _lm_of(corpus: Path, arpa: Path) -> Path:
    """A 2-gram ARPA of the corpus's test transcripts (``earful lm build``)."""
    from earful.eval.lm import build_arpa

    text = arpa.with_suffix(".txt")
    rows = [json.loads(line) for line in (corpus / "manifests" / "test.jsonl").read_text().splitlines() if line]
    text.write_text("".join(f"{r['transcript']}\n" for r in rows if r.get("transcript")))
    build_arpa(text, arpa, order=2)
    return arpa


@pytest.fixture(scope="module")
def greedy_study(cluster_study, tmp_path_factory) -> tuple[Path, Path, Path]:
    """The toy study of the cluster tests (conftest.py) run here without an LM: (its YAML, its output folder, the
    folder it runs in, which holds the LM file ``lm.arpa``)."""
    from earful.study.config import load_study
    from earful.study.run import run_study

    root = tmp_path_factory.mktemp("lm-study")
    out = root / "greedy"
    run_study(load_study(cluster_study), out, root=root)
    _lm_of(cluster_study.parent / "corpus", root / "lm.arpa")
    return cluster_study, out, root


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_lm_set_on_a_finished_study_decodes_its_fine_tunings_with_it_alone(greedy_study, tmp_path,
                                                                                monkeypatch) -> None:
    """The next run decodes each fine-tuning with the LM: SPLIT.lm.* and the summary's `lm` entries, results.jsonl's
    `decoder: lm` records, the report's LM table; nothing is fine-tuned again and greedy's files are kept as they
    were. The LM's path is relative to the folder earful runs in, as corpus.dir."""
    from earful.finetune import task
    from earful.study import run
    from earful.study.config import load_study
    from earful.study.pool import Job
    from earful.study.run import run_study
    from earful.study.status import study_status

    study_file, greedy, root = greedy_study
    out = _copy(greedy, tmp_path / "out")
    before = _mtimes(out / "finetune") | {f"eval/{k}": v for k, v in _mtimes(out / "eval").items()}
    monkeypatch.setattr(task, "run_finetuning", lambda *a, **k: pytest.fail("fine-tuned again"))
    finished = {}  # each job's own check that it has finished, as it was made (a cluster skips it if so)

    def job(*args, **kwargs):
        made = Job(*args, **kwargs)
        finished[made.key] = made.done() if made.done else None
        return made

    monkeypatch.setattr(run, "Job", job)
    report = run_study(load_study(study_file, ["lm.path=lm.arpa"]), out, root=root).read_text()
    ev = out / "eval" / FT
    assert (ev / "test.lm.jsonl").is_file() and (ev / "test.lm.summary.json").is_file()
    summary = json.loads((ev / "summary.json").read_text())
    assert set(summary["splits"]["test"]) == {"greedy", "lm"}
    assert summary["splits"]["test"]["lm"]["settings"]["beam"] == 50
    assert finished[FT] is False  # its LM decoding was left: not finished
    after = _mtimes(out / "finetune") | {f"eval/{k}": v for k, v in _mtimes(out / "eval").items()}
    assert {k: v for k, v in after.items() if k in before and v != before[k]} == {f"eval/{FT}/summary.json":
                                                                                  after[f"eval/{FT}/summary.json"]}
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["decoder"] for r in records) == ["greedy", "lm"]
    assert "## WER after fine-tuning (`test`, with the n-gram LM lm.arpa: beam 50, lm_weight 2.0, word_score 0.0" \
        in report
    assert "### In WER with the LM (`test`)" in report
    assert (out / "report" / "wer-lm.csv").is_file()
    assert "1 evaluations (1 of them decoded with the LM)" in study_status(out)
    # nothing left: a run again decodes nothing
    monkeypatch.setattr("earful.eval.evaluate.evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    run_study(load_study(study_file, ["lm.path=lm.arpa"]), out, root=root)


def test_a_study_with_an_lm_from_the_start_and_its_report_beside_greedy(greedy_study, tmp_path) -> None:
    """Set from the start, each evaluation decodes greedily and with the LM at once; the report is the greedy
    study's with the LM's tables and findings added, nothing else changed."""
    from earful.study.config import load_study
    from earful.study.report import build_report
    from earful.study.run import run_study

    study_file, greedy, root = greedy_study
    out = tmp_path / "lm"
    report = run_study(load_study(study_file, ["lm.path=lm.arpa"]), out, root=root).read_text()
    assert set(json.loads((out / "eval" / FT / "summary.json").read_text())["splits"]["test"]) == {"greedy", "lm"}
    # the same folder without its LM results gives the report of a greedy study: the LM's sections are added
    plain = _copy(out, tmp_path / "plain")
    lines = (plain / "results.jsonl").read_text().splitlines()
    (plain / "results.jsonl").write_text("".join(f"{x}\n" for x in lines if json.loads(x)["decoder"] == "greedy"))
    saved = json.loads((plain / "study.json").read_text())
    (plain / "study.json").write_text(json.dumps({**saved, "lm": None}))
    without = build_report(plain).read_text()
    assert "LM" not in without and "with the LM" in report
    ops = difflib.SequenceMatcher(None, without.splitlines(), report.splitlines(), autojunk=False).get_opcodes()
    assert {op for op, *_ in ops} == {"equal", "insert"}


def test_an_old_study_json_without_the_lm_continues_and_another_lm_is_refused(greedy_study, tmp_path) -> None:
    """A study.json written before the setting (no `lm` key anywhere) continues without the LM and with one set;
    once decoded with an LM, another LM file (its bytes) is another recipe of the LM results: refused, naming
    the LM."""
    from earful.study.config import load_study
    from earful.study.fingerprint import check_same_recipe, recipe_fingerprint
    from earful.study.run import run_study

    study_file, greedy, root = greedy_study
    out = _copy(greedy, tmp_path / "old")
    saved = json.loads((out / "study.json").read_text())
    del saved["lm"]
    assert not any(k.startswith("lm") for k in saved["fingerprint"]["study"]) and "lm" not in saved["fingerprint"]
    (out / "study.json").write_text(json.dumps(saved))
    plain = load_study(study_file)
    from earful.study.config import plan_runs

    check_same_recipe(out, recipe_fingerprint(plain, plan_runs(plain), root))
    with_lm = load_study(study_file, ["lm.path=lm.arpa"])
    check_same_recipe(out, recipe_fingerprint(with_lm, plan_runs(with_lm), root))
    run_study(with_lm, out, root=root)
    other = root / "other.arpa"
    other.write_text((root / "lm.arpa").read_text().replace("\\end\\", "\n\\end\\"))
    for overrides in (["lm.path=other.arpa"], ["lm.path=lm.arpa", "lm.lm_weight=1.0"], []):
        study = load_study(study_file, overrides)
        with pytest.raises(ValueError, match=r"an LM \(lm:\) may be set on a study that had none"):
            check_same_recipe(out, recipe_fingerprint(study, plan_runs(study), root))
    # the same LM file elsewhere is the same LM
    (root / "moved").mkdir(exist_ok=True)
    shutil.copy(root / "lm.arpa", root / "moved" / "lm.arpa")
    study = load_study(study_file, ["lm.path=moved/lm.arpa"])
    check_same_recipe(out, recipe_fingerprint(study, plan_runs(study), root))


def test_the_lm_is_checked_before_any_training(greedy_study, tmp_path, monkeypatch) -> None:
    """A missing LM file is named before anything is trained, and so is flashlight-text not installed (with what
    to install); a beam option out of range at load, named by its key."""
    from earful.eval import beam
    from earful.study.config import load_study
    from earful.study.run import run_study

    study_file, _, root = greedy_study
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="lm.path: .*nowhere.arpa"):
        run_study(load_study(study_file, ["lm.path=nowhere.arpa"]), out, root=root)
    assert not (out / "pretrain").exists() and not (out / "study.json").exists()
    monkeypatch.setattr(beam, "flashlight_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install 'earful\[lm\]'"):
        run_study(load_study(study_file, ["lm.path=lm.arpa"]), out, root=root)
    assert not (out / "pretrain").exists()
    with pytest.raises(ValueError, match="lm.lm_weight -1"):
        load_study(study_file, ["lm.path=lm.arpa", "lm.lm_weight=-1"])
    with pytest.raises(ValueError, match="lm.path is not given"):
        load_study(study_file, ["lm.beam=3"])


def test_a_merge_carries_the_lm_results(greedy_study, tmp_path) -> None:
    """Folders whose fine-tunings were decoded with the LM, merged with the greedy one they grew from: the
    destination takes the evaluations with the LM's results; two decoded with the same LM file at other paths
    hold the same results (they were refused as different ones)."""
    from earful.study.config import load_study
    from earful.study.merge import merge_studies
    from earful.study.run import run_study

    study_file, greedy, root = greedy_study
    lm = _copy(greedy, tmp_path / "lm")
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(root / "lm.arpa", tmp_path / "elsewhere" / "lm.arpa")
    run_study(load_study(study_file, [f"lm.path={tmp_path / 'elsewhere' / 'lm.arpa'}"]), lm, root=root)
    here = _copy(greedy, tmp_path / "here")
    run_study(load_study(study_file, ["lm.path=lm.arpa"]), here, root=root)
    out = tmp_path / "merged"
    merge_studies([greedy, lm, here], out, weights=False)
    assert (out / "eval" / FT / "test.lm.jsonl").is_file()
    assert "lm" in json.loads((out / "eval" / FT / "summary.json").read_text())["splits"]["test"]
    assert json.loads((out / "study.json").read_text())["lm"]["path"].endswith("lm.arpa")


def test_paper_yaml_gives_the_papers_4_gram_decoding_commented_out(tmp_path) -> None:
    """studies/paper.yaml names LibriSpeech's 4-gram with the paper's beam 50, LM weight 2, word score 0, not set
    (the file is the user's to download): uncommented, it loads as that."""
    text = (Path(__file__).resolve().parents[2] / "studies" / "paper.yaml").read_text()
    assert load_study_text(text, tmp_path).lm is None
    study = load_study_text(text.replace("\n# lm: {", "\nlm: {"), tmp_path)
    assert study.lm is not None and (study.lm.beam, study.lm.lm_weight, study.lm.word_score) == (50, 2.0, 0.0)
    assert study.lm.path.endswith("4-gram.arpa") and study.lm.lexicon is None


def load_study_text(text: str, folder: Path):
    from earful.study.config import load_study

    (folder / "study.yaml").write_text(text)
    return load_study(folder / "study.yaml")


def test_the_report_says_the_lm_decoding_left(greedy_study, tmp_path) -> None:
    """A study whose lm: was set and stopped before its fine-tunings were decoded with it: the report says the LM
    decoding is not finished (it had shown greedy's tables alone without a word)."""
    from earful.study.report import build_report

    _, greedy, _ = greedy_study
    out = _copy(greedy, tmp_path / "out")
    saved = json.loads((out / "study.json").read_text())
    (out / "study.json").write_text(json.dumps({**saved, "lm": {"path": "lm.arpa"}}))
    assert "**Not finished:** the study's plan (above) holds test split test with the LM" in \
        build_report(out).read_text()


def test_a_study_rerun_with_fewer_seeds_is_finished_with_the_lm(greedy_study, tmp_path) -> None:
    """A finished study rerun with fewer seeds keeps the left-out seed's evaluations, which it never decodes with
    the LM: the report's Not finished check and status consider the fine-tunings its plan holds alone (it had said
    "Not finished … with the LM" forever)."""
    from earful.study.config import load_study
    from earful.study.report import build_report
    from earful.study.run import run_study
    from earful.study.status import study_status

    study_file, greedy, root = greedy_study
    out = _copy(greedy, tmp_path / "out")
    # the evaluation of a seed 2 the study had before a rerun with seeds [1] (greedy only, as it was finished)
    shutil.copytree(out / "eval" / FT, out / "eval" / FT.replace("seed1", "seed2"))
    report = run_study(load_study(study_file, ["lm.path=lm.arpa"]), out, root=root).read_text()
    assert "Not finished" not in report and "Not finished" not in build_report(out).read_text()
    assert "2 evaluations (1 of the 1 this plan holds decoded with the LM)" in study_status(out)


def test_an_lm_that_failed_to_load_may_be_corrected_or_removed(greedy_study, tmp_path, caplog) -> None:
    """study.json names the LM before any decoding: one KenLM cannot read stops the study with no LM result in
    the folder, which then takes a corrected LM, or none (both had been refused, leaving only removing the
    folder); once a fine-tuning was decoded with an LM, another is refused as before."""
    from earful.study.config import load_study
    from earful.study.run import run_study

    study_file, greedy, root = greedy_study
    (root / "truncated.arpa").write_bytes((root / "lm.arpa").read_bytes()[:300])
    for fixed in (["lm.path=lm.arpa"], []):
        out = _copy(greedy, tmp_path / f"out{len(fixed)}")
        with pytest.raises(Exception, match="KenLM cannot read"):
            run_study(load_study(study_file, ["lm.path=truncated.arpa"]), out, root=root)
        assert json.loads((out / "study.json").read_text())["lm"]["path"] == "truncated.arpa"
        with caplog.at_level("INFO", logger="earful.study.fingerprint"):
            run_study(load_study(study_file, fixed), out, root=root)
        assert "no fine-tuning was decoded with the LM (lm:) its study.json names yet" in caplog.text
        summary = json.loads((out / "eval" / FT / "summary.json").read_text())
        assert set(summary["splits"]["test"]) == ({"greedy", "lm"} if fixed else {"greedy"})
        assert (json.loads((out / "study.json").read_text())["lm"] or {}).get("path") == \
            ("lm.arpa" if fixed else None)
    with pytest.raises(ValueError, match=r"not changed or removed once a fine-tuning was decoded with it"):
        run_study(load_study(study_file, ["lm.path=truncated.arpa"]), tmp_path / "out1", root=root)


def test_an_lm_set_after_the_corpus_moved_decodes_the_finished_fine_tunings(greedy_study, tmp_path,
                                                                            caplog) -> None:
    """corpus.dir moved (the same manifests elsewhere: the same study), then lm: set: the LM alone decodes the
    split greedy's results came from at the old path, nothing replaced (it had been refused with advice a study
    cannot follow, "name the split otherwise"); the LM's files record the manifest they were decoded from."""
    from earful.study.config import load_study
    from earful.study.run import run_study

    study_file, greedy, root = greedy_study
    out = _copy(greedy, tmp_path / "out")
    moved = _copy(study_file.parent / "corpus", tmp_path / "moved")
    greedy_before = (out / "eval" / FT / "test.greedy.summary.json").read_text()
    with caplog.at_level("WARNING"):
        run_study(load_study(study_file, [f"corpus.dir={moved}", "lm.path=lm.arpa"]), out, root=root)
    assert "replaces it" not in caplog.text
    ev = out / "eval" / FT
    assert set(json.loads((ev / "summary.json").read_text())["splits"]["test"]) == {"greedy", "lm"}
    assert (ev / "test.greedy.summary.json").read_text() == greedy_before
    assert json.loads((ev / "test.lm.summary.json").read_text())["manifest_resolved"] == \
        str((moved / "manifests" / "test.jsonl").resolve())


def test_the_study_lm_settings_default_to_earful_evaluates() -> None:
    """``lm:``'s beam settings and ``earful evaluate --lm``'s (BeamOptions) are one recipe: the same defaults, the
    paper's (two dataclasses hold them, the study's config importing no torch)."""
    from earful.eval.beam import BeamOptions
    from earful.study.config import LMSpec

    assert LMSpec(path="lm.arpa").beam_options() == BeamOptions()
