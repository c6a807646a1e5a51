import json

import pytest

from earful.eval.report import write_hypotheses


def test_writes_per_utterance_rows_and_a_summary(tmp_path):
    summary = write_hypotheses(
        tmp_path / "out",
        ids=["u1", "u2"],
        hypotheses=["the cat sad", ""],
        references=["the cat sat", "a dog"],
        name="dev-clean.greedy",
        meta={"split": "dev-clean", "decoder": "greedy"},
    )
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "dev-clean.greedy.jsonl").read_text().splitlines()
    ]
    assert rows[0] == {
        "id": "u1", "hyp": "the cat sad", "ref": "the cat sat",
        "word_errors": 1, "reference_words": 3, "char_errors": 1, "reference_chars": 11,
    }  # fmt: skip
    assert rows[1]["word_errors"] == 2 and rows[1]["char_errors"] == 5
    on_disk = json.loads((tmp_path / "out" / "dev-clean.greedy.summary.json").read_text())
    assert on_disk == summary
    assert summary["wer"] == pytest.approx(3 / 5) and summary["cer"] == pytest.approx(6 / 16)
    assert summary["words"]["deletions"] == 2 and summary["split"] == "dev-clean"
    assert summary["utterances"] == 2 and summary["hypotheses"] == "dev-clean.greedy.jsonl"


def test_without_references_only_hypotheses_are_written(tmp_path):
    summary = write_hypotheses(tmp_path, ["a", "b"], ["x", "y"], references=[None, "y"], name="beam")
    assert "wer" not in summary and summary["utterances"] == 2
    rows = [json.loads(line) for line in (tmp_path / "beam.jsonl").read_text().splitlines()]
    assert rows[0] == {"id": "a", "hyp": "x"} and rows[1]["word_errors"] == 0


def test_mismatched_or_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="2 ids, 1 hypotheses"):
        write_hypotheses(tmp_path, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="unique"):
        write_hypotheses(tmp_path, ["a", "a"], ["x", "y"])
