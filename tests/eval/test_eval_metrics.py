import pytest

from earful.eval.metrics import cer, error_counts, score, wer


def test_hand_computed_wer():
    # sat->sad (S), "the" before mat deleted (D), "big" inserted (I)
    c = error_counts(["the cat sat on the mat"], ["the big cat sad on mat"])
    assert (c.substitutions, c.deletions, c.insertions, c.hits) == (1, 1, 1, 4)
    assert c.reference_length == 6
    assert c.rate == pytest.approx(3 / 6)


def test_corpus_level_is_total_errors_over_total_words_not_a_mean():
    refs = ["a b c d e f g h i j", "x"]
    hyps = ["a b c d e f g h i j", "y"]
    assert wer(refs, hyps) == pytest.approx(1 / 11)  # the mean of utterance WERs would be 0.5


def test_hand_computed_cer_counts_spaces():
    c = error_counts(["ab cd"], ["ab ce"], "char")
    assert (c.substitutions, c.hits, c.reference_length) == (1, 4, 5)
    assert cer(["ab cd"], ["abcd"]) == pytest.approx(1 / 5)  # the space is deleted


def test_wer_can_exceed_one():
    assert wer(["a"], ["b c d"]) == pytest.approx(3.0)


def test_empty_hypotheses_are_deletions_and_empty_references_insertions():
    c = error_counts(["one two three", "", "four"], ["", "extra words", "four"])
    assert (c.substitutions, c.deletions, c.insertions, c.hits) == (0, 3, 2, 1)
    assert c.rate == pytest.approx(5 / 4)
    ch = error_counts(["ab", ""], ["  ", "xyz"], "char")
    assert (ch.deletions, ch.insertions, ch.reference_length) == (2, 3, 2)


def test_undefined_cases_raise():
    with pytest.raises(ValueError, match="empty"):
        wer(["", "  "], ["a", ""])
    with pytest.raises(ValueError, match="no utterances"):
        wer([], [])
    with pytest.raises(ValueError, match="2 references but 1"):
        wer(["a", "b"], ["a"])
    assert error_counts([""], ["a"], allow_empty=True).to_dict()["rate"] is None


def test_score_reports_both_rates_with_counts():
    s = score(["the cat", "a dog"], ["the cat", "a dig"])
    assert s["wer"] == pytest.approx(1 / 4) and s["cer"] == pytest.approx(1 / 12)
    assert s["utterances"] == 2
    assert s["words"]["reference_words"] == 4 and s["words"]["substitutions"] == 1
    assert s["chars"]["reference_chars"] == 12 and s["chars"]["errors"] == 1
