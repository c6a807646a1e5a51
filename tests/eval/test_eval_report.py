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


def test_utterances_without_a_reference_are_counted_and_the_others_scored(tmp_path, caplog):
    """One row without a reference dropped WER/CER for all of them, silently in the summary. Now the others are
    scored, and the summary and the log say how many had none, and which."""
    summary = write_hypotheses(tmp_path, ["a", "b", "c"], ["x", "y", "y z"], references=[None, "y", "y"], name="beam")
    assert summary["utterances"] == 3 and summary["scored"] == 2
    assert summary["unlabelled"] == 1 and summary["unlabelled_ids"] == ["a"]
    assert summary["wer"] == pytest.approx(1 / 2) and summary["cer"] == pytest.approx(2 / 2)
    assert "beam: 1 of 3 utterances have no transcript (a): WER/CER over the other 2" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "beam.jsonl").read_text().splitlines()]
    assert rows[0] == {"id": "a", "hyp": "x"} and rows[1]["word_errors"] == 0


def test_without_any_reference_only_hypotheses_are_written_and_said_so(tmp_path, caplog):
    ids = [f"u{i}" for i in range(7)]
    summary = write_hypotheses(tmp_path, ids, ["x"] * 7, references=[None] * 7, name="raw")
    assert "wer" not in summary and summary["scored"] == 0 and summary["unlabelled"] == 7
    assert summary["unlabelled_ids"] == ids[:5]
    assert "raw: none of the 7 utterances has a transcript (u0, u1, u2, u3, u4, ...): hypotheses only" in caplog.text


def test_mismatched_or_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="2 ids, 1 hypotheses"):
        write_hypotheses(tmp_path, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="unique"):
        write_hypotheses(tmp_path, ["a", "a"], ["x", "y"])
