import argparse
import math
import random
from collections import Counter

import pytest

from earful.eval import commands
from earful.eval.lm import (
    BOS,
    EOS,
    FALLBACK_DISCOUNTS,
    UNK,
    NgramModel,
    build_arpa,
    build_kneser_ney,
    modified_kn_discounts,
)


def random_corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the a cat dog sat sad on mat rug was is big".split()
    # a skewed distribution so that counts-of-counts give proper discounts at some orders
    weights = [1 / (i + 1) for i in range(len(words))]
    return [" ".join(rng.choices(words, weights, k=rng.randint(1, 8))) for _ in range(n)]


def test_discounts_follow_chen_goodman():
    (d1, d2, d3), fell_back = modified_kn_discounts(Counter({1: 10, 2: 5, 3: 3, 4: 2}))
    y = 10 / (10 + 2 * 5)
    assert not fell_back
    assert d1 == pytest.approx(1 - 2 * y * 5 / 10)
    assert d2 == pytest.approx(2 - 3 * y * 3 / 5)
    assert d3 == pytest.approx(3 - 4 * y * 2 / 3)
    assert modified_kn_discounts(Counter({1: 10, 2: 5, 3: 3})) == ((0.5, 1.0, 1.5), True)


def test_hand_computed_bigram_model():
    # fallback discounts 0.5 / 1 / 1.5 (too few n-grams); see the derivation in each comment
    m = build_kneser_ney(["a b", "a b", "b"], order=2)
    p = {g: 10**lp for g, lp in m.prob[1].items()}
    # continuation counts a:1 b:2 </s>:1, total 4, gamma = (0.5+1+0.5)/4, uniform over {a,b,</s>,<unk>}
    assert p[("a",)] == pytest.approx(0.5 / 4 + 0.125, abs=1e-9)
    assert p[("b",)] == pytest.approx(1 / 4 + 0.125, abs=1e-9)
    assert p[(EOS,)] == pytest.approx(0.25, abs=1e-9)
    assert p[(UNK,)] == pytest.approx(0.125, abs=1e-9)
    assert m.prob[1][(BOS,)] == -99.0
    # raw bigram counts: <s> a:2, <s> b:1, a b:2, b </s>:3
    assert 10 ** m.prob[2][(BOS, "a")] == pytest.approx((2 - 1) / 3 + 0.5 * 0.25)
    assert 10 ** m.prob[2][(BOS, "b")] == pytest.approx((1 - 0.5) / 3 + 0.5 * 0.375)
    assert 10 ** m.prob[2][("a", "b")] == pytest.approx((2 - 1) / 2 + 0.5 * 0.375)
    assert 10 ** m.prob[2][("b", EOS)] == pytest.approx((3 - 1.5) / 3 + 0.5 * 0.25)
    assert 10 ** m.backoff[1][(BOS,)] == pytest.approx(0.5)
    assert 10 ** m.log10_prob("a", ["a"]) == pytest.approx(0.5 * 0.25)  # unseen: back off


@pytest.mark.parametrize("order", [2, 3, 4])
def test_probabilities_are_normalised_for_every_context(tmp_path, order):
    path = tmp_path / "lm.arpa"
    built = build_kneser_ney(random_corpus(), order)
    assert built.discounts[order] != FALLBACK_DISCOUNTS  # the estimated discounts, not the fallback
    built.write_arpa(path)
    m = NgramModel.read_arpa(path)  # test what the file says, through the back-off formula
    assert m.order == order
    predicted = [w for w in m.vocabulary if w != BOS]  # the words, </s> and <unk>
    contexts = [()] + [h for n in range(1, order) for h in m.prob[n] if h[-1] != EOS]
    assert len(contexts) >= 14
    for h in contexts:
        total = sum(10 ** m.log10_prob(w, h) for w in predicted)
        assert total == pytest.approx(1.0, abs=1e-5), h


def test_seen_continuations_are_preferred():
    m = build_kneser_ney(["the cat sat on the mat"] * 3 + ["the dog was sad"], order=3)
    assert m.log10_prob("sat", ["the", "cat"]) > m.log10_prob("sad", ["the", "cat"])
    assert m.log10_prob("zebra", ["the"]) == m.log10_prob(UNK, ["the"])


@pytest.mark.parametrize("order", [2, 4])
def test_arpa_loads_in_kenlm_with_the_same_scores(tmp_path, order):
    import kenlm
    corpus = random_corpus()
    path = tmp_path / "lm.arpa"
    build_kneser_ney(corpus, order).write_arpa(path)
    k = kenlm.Model(str(path))
    ours = NgramModel.read_arpa(path)
    assert k.order == order
    for sent in corpus[:40] + ["zebra cat sat", "the the the the the"]:
        assert k.score(sent, bos=True, eos=True) == pytest.approx(ours.sentence_log10_prob(sent), abs=1e-4)


def test_arpa_loads_in_flashlights_kenlm_with_the_same_scores(tmp_path):
    import flashlight.lib.text.decoder  # noqa: F401  (the lm extra is part of the test install)
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    corpus = random_corpus()
    path = tmp_path / "lm.arpa"
    ours = build_kneser_ney(corpus, 3)
    ours.write_arpa(path)
    words = Dictionary()
    for w in ours.vocabulary:
        words.add_entry(w)
    words.set_default_index(words.get_index(UNK))
    lm = KenLM(str(path), words)
    for sent in corpus[:20]:
        state, total = lm.start(False), 0.0
        for w in sent.split():
            state, s = lm.score(state, words.get_index(w))
            total += s
        total += lm.finish(state)[1]
        assert total == pytest.approx(ours.sentence_log10_prob(sent), abs=1e-4)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="order"):
        build_kneser_ney(["a b"], order=1)
    with pytest.raises(ValueError, match="text: no sentences"):
        build_kneser_ney(["", "  "], order=2)
    with pytest.raises(ValueError, match="text:2: .*reserved token '<s>'"):
        build_kneser_ney(["a b", "a <s> b"], order=2)


def test_lm_build_names_the_file_and_line(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the cat\n\nthe </s> dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus\.txt:3: the text may not contain the reserved token '</s>'"):
        build_arpa(text, tmp_path / "lm.arpa")
    text.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus\.txt: no sentences"):
        build_arpa(text, tmp_path / "lm.arpa")
    text.write_bytes(b"caf\xe9\n")  # Latin-1
    with pytest.raises(ValueError, match=r"corpus\.txt: not UTF-8 text"):
        build_arpa(text, tmp_path / "lm.arpa")
    assert not (tmp_path / "lm.arpa").exists()


def test_lm_build_command(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("The Cat sat\n\nthe dog SAT\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "sub" / "lm.arpa"
    args = parser.parse_args(["lm", "build", str(text), "--order", "3", "--out", str(out)])
    assert args.func(args) == 0
    m = NgramModel.read_arpa(out)
    assert m.order == 3
    assert set(m.vocabulary) == {"the", "cat", "dog", "sat", BOS, EOS, UNK}
    assert math.isclose(
        10 ** m.log10_prob("sat", ["the", "cat"]) + 10 ** m.log10_prob("sat", ["the", "dog"]),
        2 * 10 ** m.prob[3][("the", "cat", "sat")],
        rel_tol=1e-6,
    )
    with pytest.raises(FileNotFoundError):
        args = parser.parse_args(["lm", "build", str(tmp_path / "nope.txt"), "--out", str(out)])
        args.func(args)


def test_lm_build_refuses_an_out_that_is_a_folder_or_the_text(tmp_path, caplog):
    """`lm build text.txt --out text.txt` replaced the corpus with the ARPA file, and `--out DIR` failed once the
    model was built, naming a temporary file ("Is a directory: '.lmdir.xxx.tmp' -> 'lmdir'"). Both are refused
    before the build, naming --out; nothing is written."""
    from earful.cli import main

    text = tmp_path / "text.txt"
    text.write_text("the cat sat\n", encoding="utf-8")
    folder = tmp_path / "lmdir"
    folder.mkdir()
    for out, message in ((folder, f"--out {folder}: a folder; lm build writes one ARPA file: name a file, e.g. "
                                  f"{folder / 'lm.arpa'}"),
                         (text, f"--out {text}: the text to build from, which the ARPA file would replace; name "
                                "another file"),
                         (tmp_path / "." / "text.txt", "the text to build from")):
        caplog.clear()
        assert main(["lm", "build", str(text), "--order", "2", "--out", str(out)]) == 2
        assert message in caplog.text
    assert text.read_text(encoding="utf-8") == "the cat sat\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["lmdir", "text.txt"]


def test_unknown_word_in_a_model_without_unk(tmp_path):
    """SRILM may write no <unk>: an unknown word then scores log10(0) as ARPA writes it (the back-off loop
    never ended)."""
    from earful.eval.lm import LOG10_ZERO

    arpa = tmp_path / "no-unk.arpa"
    arpa.write_text("\\data\\\nngram 1=3\nngram 2=1\n\n\\1-grams:\n-0.5\t<s>\t-0.3\n-0.5\ta\t-0.2\n-0.5\t</s>\n\n"
                    "\\2-grams:\n-0.1\t<s> a\n\n\\end\\\n")
    model = NgramModel.read_arpa(arpa)
    assert model.log10_prob("zebra", ["a"]) == pytest.approx(-0.2 + LOG10_ZERO)
    assert model.log10_prob("a", ["<s>"]) == pytest.approx(-0.1)


def test_a_byte_order_mark_is_no_part_of_the_first_word(tmp_path):
    """`lm build` on a text saved with a BOM made the unigram '\\ufeffhello', silently; an ARPA file saved with
    one had "no \\data\\ header"."""
    text = tmp_path / "corpus.txt"
    text.write_text("hello world\nhello there\n", encoding="utf-8-sig")
    model = build_arpa(text, tmp_path / "lm.arpa", order=2)
    assert set(model.vocabulary) == {"hello", "world", "there", BOS, EOS, UNK}
    arpa = tmp_path / "bom.arpa"
    arpa.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "lm.arpa").read_bytes())
    assert NgramModel.read_arpa(arpa).prob == NgramModel.read_arpa(tmp_path / "lm.arpa").prob
