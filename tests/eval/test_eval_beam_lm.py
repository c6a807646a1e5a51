import re

import pytest
import torch

from earful.eval.beam import BeamOptions, arpa_unigrams, flashlight_available, lexicon_from_words, read_lexicon
from earful.eval.decode import greedy_decode
from earful.eval.lm import build_kneser_ney
from earful.eval.vocab import CharVocab

V = CharVocab()
CORPUS = ["the cat sat on the mat"] * 5 + [
    "the dog sat on the rug",
    "the dog was sad",
    "a cat sat",
    "the mat was sad",
]


def spelled(
    text: str, second_best: dict[int, str] | None = None, t_frames: int | None = None
) -> torch.Tensor:
    """Logits whose arg-max spells ``text`` (a blank after each character); ``second_best[i]`` gives
    character i a close runner-up."""
    rows = []
    for i, ch in enumerate(text):
        row = torch.full((len(V),), -5.0)
        row[V.index("|" if ch == " " else ch)] = 2.0
        if second_best and i in second_best:
            row[V.index(second_best[i])] = 1.5
        blank = torch.full((len(V),), -5.0)
        blank[0] = 2.0
        rows += [row, blank]
    x = torch.stack(rows)
    if t_frames is not None:
        x = torch.cat([x, torch.zeros(t_frames - len(x), len(V))])
    return x


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "tiny.arpa"
    build_kneser_ney(CORPUS, order=3).write_arpa(path)
    return path


def test_lexicon_from_the_lm_unigrams(tiny_lm):
    words = arpa_unigrams(tiny_lm)
    assert {"<s>", "</s>", "<unk>", "cat", "sad"} <= set(words)
    lex = lexicon_from_words([*words, "café", "x|y"], V)
    assert lex["cat"] == [["c", "a", "t", "|"]]
    assert "<s>" not in lex and "café" not in lex and "x|y" not in lex
    with pytest.raises(ValueError, match="empty"):
        lexicon_from_words(["<s>", "ÿ"], V)


def test_an_upper_case_lm_is_spelled_lower_cased_and_an_empty_lexicon_is_explained(tmp_path):
    """An all-caps LM (LibriSpeech's official 4-gram) gave "the lexicon is empty: no LM word can be spelled with
    the vocabulary", naming no file and not saying why."""
    lex = lexicon_from_words(["<s>", "HELLO", "It's", "hello"], V)
    assert lex == {"HELLO": [["h", "e", "l", "l", "o", "|"]], "It's": [["i", "t", "'", "s", "|"]],
                   "hello": [["h", "e", "l", "l", "o", "|"]]}  # the key: the LM's own word, which the LM is asked
    with pytest.raises(ValueError, match=r"^lm\.arpa: the lexicon is empty: none of its 2 words can be spelled with "
                                         r"the vocabulary's characters \"'abc.*z\" \(lower-cased\), e.g. 'ÿ', 'Ω'"):
        lexicon_from_words(["<s>", "ÿ", "Ω"], V, "lm.arpa")


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_an_upper_case_lm_decodes_as_its_lower_case_twin(tmp_path, tiny_lm):
    """The LM is asked about its own (upper-case) words and the transcript is in the vocabulary's case: the same
    words as the lower-case model of the same text gives; so does a lexicon file of upper-case spellings (the
    layout of LibriSpeech's), saved with a byte-order mark."""
    from earful.eval.beam import LMBeamDecoder

    upper = tmp_path / "upper.arpa"
    build_kneser_ney([line.upper() for line in CORPUS], order=3).write_arpa(upper)
    text = "the cat sad on the mat"
    x = spelled(text, {text.index("sad") + 2: "t"})
    options = BeamOptions(beam=20, lm_weight=2.0)
    assert LMBeamDecoder(V, upper, options=options).decode(x[None]) == ["the cat sat on the mat"]
    assert LMBeamDecoder(V, tiny_lm, options=options).decode(x[None]) == ["the cat sat on the mat"]
    lexicon = tmp_path / "lexicon.txt"
    words = {w for line in CORPUS for w in line.upper().split()}
    lexicon.write_text("".join(f"{w} {' '.join(w)} |\n" for w in sorted(words)), encoding="utf-8-sig")
    assert read_lexicon(lexicon)["A"] == [["A", "|"]]  # not '\ufeffA'
    assert LMBeamDecoder(V, upper, lexicon, options).decode(x[None]) == ["the cat sat on the mat"]
    bom = tmp_path / "bom.arpa"  # KenLM reads no ARPA file with a BOM: said so, naming it
    bom.write_bytes(b"\xef\xbb\xbf" + upper.read_bytes())
    with pytest.raises(ValueError, match=r"bom\.arpa: begins with a UTF-8 byte-order mark, which KenLM does not read"):
        LMBeamDecoder(V, bom)


def test_a_binary_lm_without_a_lexicon_is_named(tmp_path):
    """A KenLM binary has no unigram list to build the lexicon from: the error says so and names the file."""
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\x00" + bytes(range(128, 256)))
    with pytest.raises(ValueError, match=r"lm\.bin: not an ARPA text file.*give a lexicon for a binary KenLM model"):
        arpa_unigrams(binary)
    if flashlight_available():
        from earful.eval.beam import LMBeamDecoder

        with pytest.raises(ValueError, match=r"lm\.bin: .*give a lexicon for a binary KenLM model"):
            LMBeamDecoder(V, binary)


def test_lexicon_file(tmp_path):
    lex = tmp_path / "lex.txt"
    lex.write_text("cat c a t |\nthe\tt h e |\n\nthe d a |\n", encoding="utf-8")
    assert read_lexicon(lex) == {"cat": [["c", "a", "t", "|"]], "the": [["t", "h", "e", "|"], ["d", "a", "|"]]}
    lex.write_text("cat c a t |\nsat s a t\n", encoding="utf-8")  # no "|": the word's end would be lost
    with pytest.raises(ValueError, match=r"lex\.txt:2: the spelling of 'sat' does not end with the word delimiter"):
        read_lexicon(lex)
    lex.write_text("cat c a t |\nsat\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lex\.txt:2: a word without a spelling"):
        read_lexicon(lex)
    lex.write_bytes(b"caf\xe9 c a f e |\n")  # Latin-1
    with pytest.raises(ValueError, match=r"lex\.txt: not a UTF-8 lexicon file"):
        read_lexicon(lex)


def test_lm_repairs_a_misspelled_greedy_output(tiny_lm):
    import flashlight.lib.text.decoder  # noqa: F401  (the lm extra is part of the test install)

    from earful.eval.beam import LMBeamDecoder

    text = "the cat sad on the mat"
    x = spelled(text, {text.index("sad") + 2: "t"})  # "d" beats "t" by a little
    assert greedy_decode(x[None], None, V) == [text]
    with_lm = LMBeamDecoder(V, tiny_lm, options=BeamOptions(beam=20, lm_weight=2.0))
    assert with_lm.decode(x[None]) == ["the cat sat on the mat"]
    # the acoustics alone keep "sad" (a word the lexicon has): the repair is the LM's doing
    no_lm = LMBeamDecoder(V, tiny_lm, options=BeamOptions(beam=20, lm_weight=0.0))
    assert no_lm.decode(x[None]) == [text]


def test_batch_with_padding_and_lengths(tiny_lm):
    import flashlight.lib.text.decoder  # noqa: F401  (the lm extra is part of the test install)

    from earful.eval.beam import LMBeamDecoder

    a = spelled("the dog was sad")
    b = spelled("a cat sat", t_frames=len(a))
    b[len(spelled("a cat sat")) :, V.index("z")] = 9.0  # padding frames would spell junk
    dec = LMBeamDecoder(V, tiny_lm, options=BeamOptions(beam=10))
    out = dec.decode(torch.stack([a, b]), [len(a), len(spelled("a cat sat"))])
    assert out == ["the dog was sad", "a cat sat"]
    assert dec.decode(torch.stack([a, b]), [len(a), 0]) == ["the dog was sad", ""]
    with pytest.raises(ValueError, match="frame lengths"):
        dec.decode(torch.stack([a, b]), [len(a) + 1, 1])
    with pytest.raises(FileNotFoundError):
        LMBeamDecoder(V, tiny_lm.parent / "missing.arpa")


def test_a_confident_model_keeps_its_last_word(tiny_lm):
    """Targets end without "|", so a confident model gives the word-closing "|" after the last word a log
    probability far below the best path. The beam must still score (and keep) that word."""
    import flashlight.lib.text.decoder  # noqa: F401  (the lm extra is part of the test install)

    from earful.eval.beam import LMBeamDecoder

    x = spelled("the cat sat on the mat") * 20.0  # every winning logit 140 above the rest (margin 7 × 20)
    assert greedy_decode(x[None], None, V) == ["the cat sat on the mat"]
    for threshold in (25.0, 50.0):
        dec = LMBeamDecoder(V, tiny_lm, options=BeamOptions(beam=10, beam_threshold=threshold))
        assert dec.decode(x[None]) == ["the cat sat on the mat"], threshold
    assert dec.decode(torch.zeros(0, 5, len(V))) == []  # an empty batch


@pytest.mark.skipif(not flashlight_available(), reason="flashlight-text is not installed")
def test_the_checkpoints_text_mapping_spells_lm_words_and_writes_them_as_references_are(tmp_path):
    """A checkpoint fine-tuned with text_mapping={é: e} has references 'cafe'; its LM's 'café' (or a decomposed
    'cafe' + U+0301) was left out of the lexicon, so the LM could never give the word. Now it is spelled and
    transcribed as the vocabulary writes it: 'cafe'."""
    from earful.eval.beam import LMBeamDecoder
    from earful.eval.vocab import CharVocab

    mapped = CharVocab(mapping={"é": "e"})
    lex = lexicon_from_words(["<s>", "café", "cafe\u0301", "CAFÉ", "naïve"], mapped)
    assert lex == {"café": [["c", "a", "f", "e", "|"]], "cafe\u0301": [["c", "a", "f", "e", "|"]],
                   "CAFÉ": [["c", "a", "f", "e", "|"]]}  # naïve: ï is not mapped
    lm = tmp_path / "cafe.arpa"
    build_kneser_ney(["the café is open", "the café is shut"], order=2).write_arpa(lm)
    x = spelled("the cafe is open", {})
    assert LMBeamDecoder(mapped, lm, options=BeamOptions(beam=20, lm_weight=2.0)).decode(x[None]) == [
        "the cafe is open"]


def test_lm_build_names_words_a_vocabulary_of_letters_cannot_spell(tmp_path, caplog):
    """`lm build` on "Hello, world." wrote the words 'hello,' and 'world.' without a word; evaluate --lm then left
    them out of its lexicon."""
    import logging

    from earful.eval.lm import build_arpa

    text = tmp_path / "text.txt"
    text.write_text("Hello, world.\nhello world\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="earful.eval.lm"):
        build_arpa(text, tmp_path / "lm.arpa", order=2)
    assert "text.txt: 2 of 4 words hold characters other than letters and ' (e.g. 'hello,', 'world.')" in caplog.text
    caplog.clear()  # letters of any script are letters: a vocab=data model spells them (the warning said strip them)
    text.write_text("Grüße aus München\nčesky kůň très\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="earful.eval.lm"):
        build_arpa(text, tmp_path / "lm2.arpa", order=2)
    assert "other than letters" not in caplog.text


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("beam", 0, "an integer from 1 up"), ("beam", -3, "an integer from 1 up"), ("beam", 2.5, "an integer from 1 up"),
    ("beam_size_token", 0, "an integer from 1 up (tokens"), ("beam_threshold", -1.0, "a score from 0 up"),
    ("beam_threshold", float("nan"), "a score from 0 up"), ("lm_weight", -1.0, "a finite weight from 0 up"),
    ("lm_weight", float("inf"), "a finite weight from 0 up"), ("word_score", float("nan"), "a finite score"),
    ("unk_score", float("inf"), "a score below inf"), ("sil_score", float("-inf"), "a finite score"),
])
def test_beam_options_out_of_range_are_refused(field, value, allowed) -> None:
    """A beam of 0 (or a negative threshold, a NaN weight) kept no hypothesis: every LM transcript was empty,
    WER 100 %, and nothing said why. Now refused, naming the option and what it accepts."""
    with pytest.raises(ValueError, match=f"^{field} {re.escape(str(value))}: expected {re.escape(allowed)}"):
        BeamOptions(**{field: value})


def test_beam_options_in_range_are_taken() -> None:
    options = BeamOptions(beam=1, beam_size_token=1, beam_threshold=0.0, lm_weight=0.0, word_score=-3.0,
                          unk_score=-10.0, sil_score=-1.0)
    assert options.beam == 1 and BeamOptions(beam_threshold=float("inf")).beam_threshold == float("inf")


def test_the_search_reads_float32_emissions_whatever_torchs_default_dtype(tiny_lm):
    """With torch.set_default_dtype(torch.float64) the emissions were made in float64 and flashlight read their
    bytes as floats: every transcript came back empty (or, a decoder made before, a dtype error)."""
    from earful.eval.beam import LMBeamDecoder

    x = spelled("the cat sat on the mat")
    before = torch.get_default_dtype()
    try:
        made_before = LMBeamDecoder(V, tiny_lm, options=BeamOptions(beam=10))
        torch.set_default_dtype(torch.float64)
        made_after = LMBeamDecoder(V, tiny_lm, options=BeamOptions(beam=10))
        for dec in (made_after, made_before):
            assert dec.decode(x[None]) == ["the cat sat on the mat"]
    finally:
        torch.set_default_dtype(before)


def test_nan_logits_are_said_not_silently_transcribed_as_nothing(tiny_lm, caplog):
    """One NaN frame made the beam search's transcript "" without a word (greedy still read the rest): a diverged
    or overflowing model scored 100 % WER unexplained. The rows are named; NaN in padding is not counted."""
    import logging

    import flashlight.lib.text.decoder  # noqa: F401  (the lm extra is part of the test install)

    from earful.eval.beam import LMBeamDecoder

    a, b = spelled("the cat sat"), spelled("a cat sat")
    a[3] = float("nan")
    b = torch.cat([b, torch.full((len(a) - len(b), len(V)), float("nan"))])  # NaN only in padding
    dec = LMBeamDecoder(V, tiny_lm, options=BeamOptions(beam=10))
    with caplog.at_level(logging.WARNING):
        out = dec.decode(torch.stack([a, b]), [len(a), len(spelled("a cat sat"))])
    assert out[1] == "a cat sat"
    assert "1 of 2 utterance(s) (batch rows [0]) have NaN or infinite logits" in caplog.text


def test_a_long_recording_is_searched_in_blocks_with_the_words_of_one_search(tiny_lm, monkeypatch):
    """The search kept every frame's hypotheses of an utterance: `transcribe --lm` of a long recording held ~5 KB
    a frame (~0.9 GB an hour). One longer than STREAM_FRAMES is searched in blocks, its history pruned behind it
    (flashlight's prune); the words are those of one whole search, clean and noisy, and a word across a block's
    edge is kept once."""
    import random

    import flashlight.lib.text.decoder  # noqa: F401  (the lm extra is part of the test install)

    from earful.eval import beam
    from earful.eval.beam import LMBeamDecoder

    monkeypatch.setattr(beam, "STREAM_BLOCK", 37, raising=False)  # an odd block: words cross its edges
    monkeypatch.setattr(beam, "LOOK_BACK", 29, raising=False)
    dec = LMBeamDecoder(V, tiny_lm, options=BeamOptions(beam=20))
    pruned = []

    class Counting:  # the search, its prunes counted
        def __init__(self, search):
            self.search = search

        def __getattr__(self, name):
            return getattr(self.search, name)

        def prune(self, look_back):
            pruned.append(look_back)
            self.search.prune(look_back)

    dec._decoder = Counting(dec._decoder)
    random.seed(0)
    text = " ".join(random.choice(CORPUS) for _ in range(12))
    x = spelled(text)
    for noise in (0.0, 1.5, 3.0):
        noisy = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        monkeypatch.setattr(beam, "STREAM_FRAMES", 10**9, raising=False)
        whole = dec.decode(noisy[None])
        assert not pruned
        monkeypatch.setattr(beam, "STREAM_FRAMES", 100, raising=False)
        assert dec.decode(noisy[None]) == whole, noise
        assert len(pruned) == -(-len(x) // 37) - 1  # after every block but the last
        pruned.clear()
    assert whole != [text] and dec.decode(x[None]) == [text]  # the noise changed words; the clean input is read
