import json

import pytest

from earful.eval.vocab import BLANK, CharVocab


def test_layout_is_blank_delimiter_apostrophe_letters():
    v = CharVocab()
    assert len(v) == 29
    assert v.symbols[:3] == (BLANK, "|", "'")
    assert v.blank_id == 0 and v.delimiter_id == 1
    assert v.index("a") == 3 and v.index("z") == 28


def test_encode_lowercases_and_maps_spaces_to_delimiter():
    v = CharVocab()
    ids = v.encode("  Don't  STOP ")
    assert [v.symbols[i] for i in ids] == list("don't|stop")
    assert v.decode(ids) == "don't stop"


def test_decode_drops_blanks_and_merges_spaces_but_keeps_repeats():
    v = CharVocab()
    ids = [1, 0, 3, 3, 0, 1, 1, 4, 1]  # | <b> a a <b> | | b |
    assert v.decode(ids) == "aa b"
    with pytest.raises(ValueError, match="outside"):
        v.decode([29])


def test_unknown_characters_are_named_with_the_utterance():
    v = CharVocab()
    with pytest.raises(ValueError) as e:
        v.encode("café, 2 cats", utt_id="1089-134686-0000")
    msg = str(e.value)
    assert "1089-134686-0000" in msg
    for c in ("'é'", "','", "'2'"):
        assert c in msg
    with pytest.raises(ValueError, match=r"'\|'"):
        v.encode("a|b")  # the delimiter is not text


def test_mapping_replaces_or_removes_characters():
    v = CharVocab(mapping={"é": "e", ",": "", "-": " "})
    assert v.decode(v.encode("Café, self-made")) == "cafe self made"
    with pytest.raises(ValueError, match="'!'"):
        v.encode("hi!")


def test_to_dict_round_trips_through_json():
    v = CharVocab(mapping={"-": " "})
    w = CharVocab.from_dict(json.loads(json.dumps(v.to_dict())))
    assert w == v and w.encode("a-b") == v.encode("a-b")
    assert CharVocab.from_dict(CharVocab().to_dict()) != v


def test_bad_symbol_lists_are_rejected():
    with pytest.raises(ValueError, match="blank"):
        CharVocab(["a", "|"])
    with pytest.raises(ValueError, match="delimiter"):
        CharVocab([BLANK, "a"])
    with pytest.raises(ValueError, match="duplicate"):
        CharVocab([BLANK, "|", "a", "a"])


@pytest.mark.parametrize("bad, raw, message", [({"ab": ""}, "{ab: ''}", "keys must be single characters, got 'ab'"),
                                               ({1: "a"}, "{1: a}", "keys must be single characters, got 1"),
                                               ({"-": 2}, "{'-': 2}", "'-' maps to 2, expected a string")])
def test_a_text_mapping_is_checked_alike_wherever_it_is_given(bad, raw, message):
    """The vocabulary, fine-tuning's text_mapping and evaluate's --text-mapping (YAML) check a mapping one way;
    the message names the setting it came from."""
    from earful.eval.commands import text_mapping
    from earful.finetune.config import FinetuneConfig

    with pytest.raises(ValueError, match=f"^mapping: {message}"):
        CharVocab(mapping=bad)
    with pytest.raises(ValueError, match=f"^text_mapping: {message}"):
        FinetuneConfig(text_mapping=bad).validate()
    with pytest.raises(ValueError, match=f"^--text-mapping .*: {message}"):
        text_mapping(raw)


def test_the_suggested_mapping_spells_every_character_outside_the_vocabulary_without_removing_letters():
    """The message suggested a mapping for the first bad character only ({'é': ''}): applied, it failed again
    on 'ï'; and it removed letters ('grün' trained as 'grn', "don’t" as 'dont'). Now it names all of them and
    guesses a spelling for each (a base letter, an apostrophe, a number word, a space for a dash; punctuation
    removed), read as YAML by the setting and by a shell; a letter it cannot guess is left for the user."""
    import shlex

    import yaml

    v = CharVocab()
    with pytest.raises(ValueError) as e:
        v.encode("naïve café — don’t, 2", utt_id="u1")
    msg = str(e.value)
    guess = "{',': '', '2': ' two ', 'é': 'e', 'ï': 'i', '—': ' ', '’': \"'\"}"
    assert f"fine-tuning's {shlex.quote('text_mapping=' + guess)} on the command line (text_mapping: {guess} in " \
           "YAML)" in msg and "u1" in msg  # pasted as shown: one shell word, or a YAML line
    assert f"evaluate's --text-mapping {shlex.quote(guess)}" in msg
    example = msg.split("(text_mapping: ")[1].split(" in YAML)")[0]
    assert CharVocab(mapping=yaml.safe_load(example)).normalize("naïve café — don’t, 2") == "naive cafe don't two"
    assert shlex.split(msg.split("--text-mapping ")[1])[0] == example
    with pytest.raises(ValueError, match=r"'ɐ' in 1 .*'ɐ': 'ɐ'"):  # no guess: the user's to decide
        v.encode("ɐ")


def test_the_suggested_mapping_spells_letters_without_accents_and_never_removes_a_digit():
    """ß, ø, æ, ł have no base letter to decompose into: the guess mapped them to themselves ({'ß': 'ß'}, which
    then failed again). A digit whose word a vocabulary cannot spell (vocab=data of another script, or one
    lacking a letter of it) was guessed removed, damaging its label. Letters are spelled out (ß → ss), digits of
    any script become words where the vocabulary spells them, and otherwise keep themselves for the user."""
    import yaml

    with pytest.raises(ValueError) as e:
        CharVocab().encode("Straße smørrebrød Æble łódź ٣")
    example = str(e.value).split("(text_mapping: ")[1].split(" in YAML)")[0]
    assert yaml.safe_load(example) == {"ß": "ss", "ø": "o", "æ": "ae", "ł": "l", "ó": "o", "ź": "z", "٣": " three "}
    assert CharVocab(mapping=yaml.safe_load(example)).normalize("Straße smørrebrød Æble łódź ٣") == \
        "strasse smorrebrod aeble lodz three"
    cyrillic = CharVocab(("<b>", "|", *"абвгдежзиклмнопрстуфхцчшщыьэюя", "1", "2"))
    with pytest.raises(ValueError) as e:
        cyrillic.encode("дом 7, ß")
    assert yaml.safe_load(str(e.value).split("(text_mapping: ")[1].split(" in YAML)")[0]) == \
        {",": "", "7": "7", "ß": "ß"}  # no word for 7 in this alphabet: kept, for the user (not removed)
    with pytest.raises(ValueError) as e:
        CharVocab().encode("5 m² of co₂, step ① ½")
    assert yaml.safe_load(str(e.value).split("(text_mapping: ")[1].split(" in YAML)")[0]) == \
        {",": "", "5": " five ", "²": "²", "₂": "₂", "①": "①", "½": "½"}  # number characters: kept, never removed
    no_v = CharVocab(("<b>", "|", *"abcdefghijklmnopqrstuwxyz"))  # no 'v': five and seven are not spelled
    with pytest.raises(ValueError) as e:
        no_v.encode("5 6")
    assert yaml.safe_load(str(e.value).split("(text_mapping: ")[1].split(" in YAML)")[0]) == \
        {"5": "5", "6": " six "}


def test_decomposed_text_is_composed_and_a_loose_combining_mark_is_named_by_code_point():
    """An NFD transcript (e + U+0301) failed on an invisible combining character, not named, and a mapping of
    'é' did not apply to it. Text is NFC-normalised first; a combining mark left alone is named U+0301."""
    import yaml

    nfd = "cafe\u0301"
    assert CharVocab(mapping={"é": "e"}).normalize(nfd) == "cafe"
    with pytest.raises(ValueError, match="'é'"):
        CharVocab().normalize(nfd)
    with pytest.raises(ValueError) as e:
        CharVocab().normalize("a \u0301b", utt_id="u2")  # a combining mark with no letter to compose with
    msg = str(e.value)
    assert "U+0301 (COMBINING ACUTE ACCENT)" in msg and "u2" in msg
    example = msg.split("(text_mapping: ")[1].split(" in YAML)")[0]
    assert example == '{"\\u0301": \'\'}' and "--text-mapping '{\"\\u0301\": '\"'\"''\"'\"'}'" in msg
    assert CharVocab(mapping=yaml.safe_load(example)).normalize("a \u0301b") == "a b"


def test_the_error_names_the_setting_the_caller_gives():
    with pytest.raises(ValueError) as e:
        CharVocab(setting="asr.text_mapping").normalize("é")
    assert str(e.value).endswith("asr.text_mapping={'é': 'e'}") and "fine-tuning" not in str(e.value)


def test_a_mapping_written_as_the_transcripts_are_applies_after_lower_casing():
    """Text is lower-cased before it is mapped: {'Ü': 'ue'} never matched 'GRÜN' (and the error then advised
    {'ü': ''}), and {'2': 'Two'} gave a 'T' no vocabulary has. Keys and values are lower-cased with the text;
    two keys that become one must agree."""
    assert CharVocab(mapping={"Ü": "Ue", "2": "Two"}).normalize("GRÜN go 2") == "gruen go two"
    assert CharVocab(mapping={"Ü": "ue", "ü": "UE"}).normalize("Ü ü") == "ue ue"
    with pytest.raises(ValueError, match=r"mapping: 'ü' and 'ü' map to 'u' and 'ue'"):
        CharVocab(mapping={"Ü": "ue", "ü": "u"})


def test_every_character_outside_the_vocabulary_is_named_at_once_with_counts_and_an_utterance():
    """The error stopped at the first utterance with a bad character: a corpus took one rerun a character."""
    texts = [("a", "fine"), ("b", "café 2"), ("c", "naïve café"), ("d", "2 cafés")]
    with pytest.raises(ValueError) as e:
        CharVocab().check_texts(texts, "train.jsonl")
    msg = str(e.value)
    assert msg.startswith("train.jsonl: 3 character(s) outside the vocabulary (a–z and \"'\") in 3 of 4 ")
    assert "in 3 of 4 transcripts: 'é' in 3 (e.g. 'b': 'café 2'); '2' in 2 (e.g. 'b': 'café 2'); 'ï' in 1 " \
           "(e.g. 'c': 'naïve café')" in msg
    CharVocab().check_texts([("a", "fine")], "train.jsonl")  # nothing to name


def test_a_key_lower_cased_to_two_characters_maps_them():
    """'İ'.lower() is 'i' + U+0307: the text's 'İ' never met a key 'İ' (kept as it was), and {'İ': 'i'} still
    failed on U+0307. The key is lower-cased as the text is and matched whole, before a key of its 'i' alone; what
    it gives is not mapped again."""
    assert CharVocab(mapping={"İ": "i"}).normalize("İstanbul") == "istanbul"
    assert CharVocab(mapping={"İ": "I", "i": "y"}).normalize("İzmir") == "izmyr"
    assert CharVocab(mapping={"İ": "", "\u0307": ""}).normalize("a İ b") == "a b"
    assert CharVocab(mapping={"İ": "i"}).mapped("İ", lower=False) == "i"  # an upper-case vocabulary's LM words


def test_a_key_capital_sigma_maps_the_final_sigma_too():
    """Lower-casing makes a word-final 'Σ' 'ς' and any other 'σ' (Final_Sigma): {'Σ': 's'} mapped 'ΣΟΦΟΣ' to
    'sοφος', its last letter unmapped. A key 'Σ' maps both; a key 'ς' of its own stands; a key 'σ' is the letter
    only."""
    assert CharVocab(mapping={"Σ": "s", "Ο": "o", "Φ": "f"}).normalize("ΣΟΦΟΣ ΟΣ") == "sofos os"
    assert CharVocab(mapping={"Σ": "s", "ς": "z", "ο": "o"}).mapped("ΟΣ ΣΟ") == "oz so"
    assert CharVocab(mapping={"σ": "s"}).mapped("ΟΣ ΣΟ") == "ος sο"
