"""LMs and vocabularies as users bring them: a truncated or gzipped ARPA, a lexicon the LM does not know, 'İ' in an
imported vocabulary, Indic vowel signs, and hypotheses normalised as the references."""

import logging

import pytest

from earful.eval.beam import BeamOptions, flashlight_available
from earful.eval.evaluate import vocab_from_checkpoint
from earful.eval.lm import build_kneser_ney
from earful.eval.vocab import CharVocab

CORPUS = ["the cat sat on the mat", "the dog sat on the rug", "a cat sat"]
needs_flashlight = pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")


@needs_flashlight
def test_a_truncated_arpa_is_named(tmp_path) -> None:
    from earful.eval.beam import LMBeamDecoder

    good = tmp_path / "good.arpa"
    build_kneser_ney(CORPUS, 2).write_arpa(good)
    bad = tmp_path / "bad.arpa"
    bad.write_text(good.read_text().replace("\\end\\\n", ""))
    with pytest.raises(ValueError, match=r"bad\.arpa: KenLM cannot read this LM"):
        LMBeamDecoder(CharVocab(), bad, options=BeamOptions(beam=5))


@needs_flashlight
def test_a_lexicon_the_lm_does_not_know_is_said(tmp_path, caplog) -> None:
    from earful.eval.beam import LMBeamDecoder

    upper = tmp_path / "upper.arpa"
    build_kneser_ney([c.upper() for c in CORPUS], 2).write_arpa(upper)
    lexicon = {w: [[*w, "|"]] for w in ("the", "cat", "sat")}
    with pytest.raises(ValueError, match=r"3 of 3 lexicon words are not in the LM"):
        LMBeamDecoder(CharVocab(), upper, lexicon, BeamOptions(beam=5))
    with caplog.at_level(logging.WARNING, logger="earful.eval.beam"):
        LMBeamDecoder(CharVocab(), upper, {**lexicon, "CAT": [list("cat|")]}, BeamOptions(beam=5))
    assert "3 of 4 lexicon words are not in the LM" in caplog.text


def test_an_imported_vocabulary_with_dotted_capital_i() -> None:
    vocab = vocab_from_checkpoint({"symbols": ["<pad>", "|", "A", "I", "İ"]})
    assert vocab.symbols == ("<b>", "|", "a", "i", "İ")


def test_hypotheses_are_normalised_as_references() -> None:
    mixed = vocab_from_checkpoint({"symbols": ["<pad>", "|", "A", "a", "n"]})
    assert mixed.normalize_hypothesis("Ann") == mixed.normalize("Ann") == "ann"
    mapped = CharVocab(mapping={"'": ""})
    assert mapped.normalize_hypothesis("i don't  know") == mapped.normalize("I don't know") == "i dont know"


@needs_flashlight
def test_a_gzipped_arpa_gives_its_unigrams(tmp_path) -> None:
    import gzip

    from earful.eval.beam import LMBeamDecoder, arpa_unigrams

    plain = tmp_path / "lm.arpa"
    build_kneser_ney(CORPUS, 2).write_arpa(plain)
    packed = tmp_path / "lm.arpa.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert arpa_unigrams(packed) == arpa_unigrams(plain)
    LMBeamDecoder(CharVocab(), packed, options=BeamOptions(beam=5))


def test_lm_build_takes_vowel_signs_for_parts_of_letters(tmp_path, caplog) -> None:
    from earful.eval.lm import build_arpa

    text = tmp_path / "hi.txt"
    text.write_text("हिंदी भाषा सुंदर है\nमैं हिंदी बोलता हूँ\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="earful.eval.lm"):
        build_arpa(text, tmp_path / "hi.arpa", order=2)
    assert "other than letters" not in caplog.text
