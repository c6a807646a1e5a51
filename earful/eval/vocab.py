"""Character vocabulary for CTC fine-tuning (wav2vec 2.0 style).

Index 0 is the CTC blank ``<b>``, index 1 the word delimiter ``|`` (a space in text), then the
apostrophe and ``a``..``z``: 29 symbols. Text is put in Unicode NFC form (a letter and its combining accent,
``e`` + U+0301, become one character, ``é``, as a mapping names it) and lower-cased before the mapping and the
encoding; any other character is an error naming it (a combining or non-printing one by its code point, U+0301),
the utterance when given, and a mapping for every one of them, unless an explicit ``mapping`` replaces or removes
it.
"""

from __future__ import annotations

import re
import shlex
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

BLANK = "<b>"
DELIMITER = "|"
DEFAULT_SYMBOLS: tuple[str, ...] = (BLANK, DELIMITER, "'", *string.ascii_lowercase)
# Unicode's private use area: single-character stand-ins for the multi-character symbols (``<s>``, ``<unk>``)
# of an imported (transformers) vocabulary, never written into a transcript
PLACEHOLDERS = range(0xE000, 0xF900)


def placeholder(index: int) -> str:
    """The stand-in of an imported vocabulary's multi-character symbol at ``index``."""
    return chr(PLACEHOLDERS.start + index)


def check_mapping(mapping: Mapping[Any, Any], name: str = "mapping") -> dict[str, str]:
    """``mapping`` as a text mapping (single characters to strings, ``""`` removes), or a ValueError that starts
    with ``name``, the setting it came from (fine-tuning's ``text_mapping``, evaluate's ``--text-mapping``)."""
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{name}: expected a mapping of characters, e.g. \"{{',': '', '2': two}}\"")
    for k, v in mapping.items():
        if not isinstance(k, str) or len(k) != 1:
            raise ValueError(f"{name}: keys must be single characters, got {k!r}")
        if not isinstance(v, str):
            raise ValueError(f"{name}: {k!r} maps to {v!r}, expected a string (quote it; '' removes)")
    return dict(mapping)


def _visible(c: str) -> bool:
    """Whether ``c`` shows as itself, quoted: printable, not combining, no quote or backslash."""
    return c.isprintable() and not unicodedata.combining(c) and c not in "'\"\\"


def describe(c: str) -> str:
    """``c`` for a message: ``'é'``, or by code point where it would not show (``U+0301 (COMBINING ACUTE
    ACCENT)``)."""
    if _visible(c):
        return repr(c)
    name = unicodedata.name(c, "")
    return f"U+{ord(c):04X}" + (f" ({name})" if name else "")


def _yaml(text: str) -> str:
    """``text`` as a YAML flow scalar: single-quoted, or double-quoted with escapes where it holds a quote or a
    character that would not show."""
    if all(_visible(c) for c in text):
        return f"'{text}'"
    return '"' + "".join(c if _visible(c) or c == "'" else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else
                                                          f"\\U{ord(c):08x}") for c in text) + '"'


def mapping_example(mapping: Mapping[str, str]) -> str:
    """``mapping`` as YAML a setting takes: ``{'ü': 'u', '’': "'", ',': ''}`` (``"\\u0301"`` escapes where a
    character would not show)."""
    return "{" + ", ".join(f"{_yaml(k)}: {_yaml(v)}" for k, v in mapping.items()) + "}"


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
APOSTROPHES = "\u2019\u2018\u02bc\u0060\u00b4"  # ’ ‘ ʼ ` ´
DASHES = "-\u2010\u2011\u2012\u2013\u2014"
# Latin letters with no decomposition into a base letter and accents, and their usual spelling in the others
# (German ß, Danish ø and æ, Polish ł, Icelandic þ and ð, ...)
SPELLED_OUT = {"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i",
               "ħ": "h", "ŧ": "t", "ŀ": "l", "ſ": "s", "ĸ": "k"}


def suggested_mapping(chars: Sequence[str], symbols: Sequence[str]) -> dict[str, str]:
    """A first guess at a text mapping for ``chars`` into ``symbols``, for a user to check (removing a letter or
    a digit damages the label it is in, so neither is ever removed): an accented letter to its base letter (``é``
    → ``e``; ``ß`` → ``ss``, ``ø`` → ``o``: ``SPELLED_OUT``), a typographic apostrophe to ``'``, a decimal digit
    of any script to its English word, a dash to a space, anything else (punctuation) removed; a letter or digit
    with no guess the vocabulary spells, and any other number character (², ½, Ⅻ), keeps itself, for the user to
    decide."""
    known = set(symbols)
    out: dict[str, str] = {}
    for c in chars:
        base = SPELLED_OUT.get(c) or "".join(b for b in unicodedata.normalize("NFD", c) if not unicodedata.combining(b))
        digit = unicodedata.decimal(c, None)
        if c.isalpha():
            out[c] = base if base != c and set(base) <= known else c
        elif c in APOSTROPHES and "'" in known:
            out[c] = "'"
        elif digit is not None:
            out[c] = f" {NUMBER_WORDS[digit]} " if set(NUMBER_WORDS[digit]) <= known else c
        elif c.isnumeric():  # ², ₂, ①, ½, Ⅻ: "m²" is not "m two"; the user's to spell
            out[c] = c
        elif c in DASHES:
            out[c] = " "
        else:
            out[c] = ""
    return out


def _shell(value: str) -> str:
    """``value`` quoted for a shell: in double quotes where nothing in it is special there (a quote, ``$``, a
    backquote, a backslash, bash's history ``!``), else as ``shlex.quote`` does."""
    return f'"{value}"' if not set(value) & set('"$`\\!') else shlex.quote(value)


def strip_placeholders(text: str) -> str:
    """``text`` without stand-ins of multi-character symbols, spaces merged and stripped."""
    return " ".join("".join(c for c in text if ord(c) not in PLACEHOLDERS).split())


class CharVocab:
    """Character vocabulary: ``encode`` text to ids, ``decode`` ids (already collapsed) to text.

    Args:
        symbols: the token list; index 0 must be the blank and ``|`` must be present. Each other symbol
            must be a single character. Defaults to blank, ``|``, ``'``, ``a``..``z``.
        mapping: characters (after NFC normalisation and lower-casing) to replace before encoding, e.g.
            ``{"-": " ", "é": "e", ".": ""}``; an empty value removes the character. Applied character by
            character; keys and values are lower-cased as the text is (a key ``İ``: the ``i`` + U+0307 of a
            lower-cased ``İ``).
        setting: the setting a mapping for this vocabulary is given in, named by the error about a character
            outside it (e.g. the probe's ``asr.text_mapping``); default: fine-tuning's ``text_mapping`` and
            evaluate's ``--text-mapping``.
    """

    def __init__(
        self, symbols: Sequence[str] | None = None, mapping: Mapping[str, str] | None = None,
        setting: str | None = None,
    ) -> None:
        symbols = tuple(DEFAULT_SYMBOLS if symbols is None else symbols)
        if not symbols or symbols[0] != BLANK:
            raise ValueError(f"the first symbol must be the blank {BLANK!r}, got {symbols[:1]}")
        if DELIMITER not in symbols:
            raise ValueError(f"the vocabulary needs the word delimiter {DELIMITER!r}")
        if len(set(symbols)) != len(symbols):
            raise ValueError("duplicate symbols in the vocabulary")
        for s in symbols[1:]:
            if len(s) != 1:
                raise ValueError(f"symbols other than the blank must be single characters, got {s!r}")
        self.symbols = symbols
        self.mapping = check_mapping(mapping or {})
        # the text is lower-cased before it is mapped: so are the mapping's keys and values ({'Ü': 'Ue'} maps
        # the 'ü' of a lower-cased 'GRÜN'); two keys one once lower-cased must agree
        self._lower_mapping: dict[str, str] = {}
        for k, v in self.mapping.items():
            low = k.lower()  # as the text's: 'İ' is 'i' + U+0307 (it had kept its case, and never matched)
            if self._lower_mapping.get(low, v.lower()) != v.lower():
                raise ValueError(f"mapping: {k!r} and {low!r} map to {v!r} and {self._lower_mapping[low]!r}, "
                                 "but transcripts are lower-cased first: give one of them")
            self._lower_mapping[low] = v.lower()
        # the one case that lower-cases by context (Unicode's Final_Sigma): 'Σ' ends a word as 'ς', else 'σ', so a
        # key 'Σ' maps both ({'Σ': 's'} had left the 'ς' of 'ΟΔΟΣ' unmapped), unless 'ς' has a key of its own
        if "Σ" in self.mapping and "ς" not in self._lower_mapping:
            self._lower_mapping["ς"] = self._lower_mapping["σ"]
        # a key lower-cased to several characters is matched whole (before a key of its first alone), in the one
        # pass that maps the others: what a key gives is never mapped again
        keys = sorted(self._lower_mapping, key=len, reverse=True)
        self._sequences = re.compile("|".join(map(re.escape, keys))) if keys and len(keys[0]) > 1 else None
        self.setting = setting
        self._index = {s: i for i, s in enumerate(symbols)}
        self.blank_id = 0
        self.delimiter_id = self._index[DELIMITER]

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CharVocab) and self.symbols == other.symbols and self.mapping == other.mapping
        )

    def __repr__(self) -> str:
        return f"CharVocab({len(self)} symbols, mapping={self.mapping!r})"

    def index(self, symbol: str) -> int:
        """The id of ``symbol`` (KeyError if absent)."""
        return self._index[symbol]

    # ------------------------------------------------------------------ text
    def mapped(self, text: str, lower: bool = True) -> str:
        """``text`` NFC-normalised, lower-cased (unless ``lower`` is False) and with the mapping applied: the
        characters :meth:`normalize` checks, and an LM word's spelling (``earful.eval.beam.written``)."""
        text = unicodedata.normalize("NFC", text)
        if not self.mapping:
            return text.lower() if lower else text
        if not lower:
            return "".join(self.mapping.get(c, c) for c in text)
        if self._sequences is not None:
            return self._sequences.sub(lambda m: self._lower_mapping[m.group()], text.lower())
        return "".join(self._lower_mapping.get(c, c) for c in text.lower())

    def outside(self, text: str) -> list[str]:
        """The characters of ``text``, once mapped (:meth:`mapped`), that the vocabulary cannot spell, in order of
        first appearance (the delimiter ``|`` is one: a space stands for it)."""
        return self._unspelled(self.mapped(text))

    def _unspelled(self, mapped: str) -> list[str]:
        """:meth:`outside` of text already mapped."""
        return list(dict.fromkeys(c for c in mapped if not c.isspace() and (c not in self._index or c == DELIMITER)))

    def spelled(self) -> str:
        """The vocabulary's characters for a message: ``a–z and "'"`` for the default one, else each of them."""
        letters = [s for s in self.symbols[1:] if s != DELIMITER and ord(s) not in PLACEHOLDERS]
        if tuple(self.symbols) == DEFAULT_SYMBOLS:
            return "a–z and \"'\""
        return " ".join(letters)

    def check_texts(self, texts: Iterable[tuple[str, str]], where: str, remedy: str = "") -> None:
        """Raise one ValueError naming every character outside the vocabulary in ``texts`` (``(utterance id,
        text)`` pairs), how often each occurs and an utterance holding it, with a text mapping to check (never one
        that removes letters: :func:`suggested_mapping`) in the setting it is given in, and ``remedy`` (another
        way out, e.g. fine-tuning's ``vocab=data``); nothing when every text is spelled."""
        count: dict[str, int] = {}
        first: dict[str, tuple[str, str]] = {}
        utterances = bad_utterances = 0
        for utt_id, text in texts:
            utterances += 1
            chars = self.outside(text)
            bad_utterances += bool(chars)
            for c in chars:
                count[c] = count.get(c, 0) + 1
                first.setdefault(c, (utt_id, text))
        if not count:
            return
        order = sorted(count, key=lambda c: (-count[c], c))
        shown = "; ".join(f"{describe(c)} in {count[c]} (e.g. {first[c][0]!r}: {first[c][1][:60]!r})"
                          for c in order[:12]) + (f"; and {len(order) - 12} more" if len(order) > 12 else "")
        example = mapping_example(suggested_mapping(order, self.symbols))
        settings = (f"{self.setting}={example}" if self.setting is not None else
                    f"fine-tuning's {_shell('text_mapping=' + example)} on the command line (text_mapping: "
                    f"{example} in YAML), evaluate's --text-mapping {_shell(example)}")
        raise ValueError(f"{where}: {len(order)} character(s) outside the vocabulary ({self.spelled()}) in "
                         f"{bad_utterances} of {utterances} transcripts: {shown}. {remedy}A text mapping replaces "
                         f"them (a guess to check: a letter or digit mapped to itself is yours to decide; '' removes): "
                         f"{settings}")

    def normalize(self, text: str, utt_id: str | None = None) -> str:
        """NFC-normalise, lower-case, apply the mapping (:meth:`mapped`), collapse white space; raise on
        characters outside the vocabulary, naming each (:meth:`check_texts`).

        Returns the normalised text with single spaces between words (no leading/trailing space).
        """
        mapped = self.mapped(text)  # once: the check and the result read it
        if self._unspelled(mapped):
            self.check_texts([("" if utt_id is None else utt_id, text)], "a transcript" if utt_id is None
                             else f"utterance {utt_id!r}")
        return " ".join(mapped.split())

    def normalize_hypothesis(self, text: str) -> str:
        """A model's transcript as :meth:`normalize` writes a reference (lower-cased, mapped, white space
        collapsed; no check: the model spells with the vocabulary's own symbols), so that the two compare: a
        mapping of a character the model writes (``{"'": ""}``) or an imported vocabulary's capitals changed the
        references alone, and a transcript equal to its reference counted as wrong."""
        return " ".join(self.mapped(text).split())

    def encode(self, text: str, utt_id: str | None = None) -> list[int]:
        """Text to ids: lower-cased, mapped, spaces to ``|``; no leading/trailing delimiter.

        Raises:
            ValueError: naming the characters (and ``utt_id``) that are not in the vocabulary.
        """
        norm = self.normalize(text, utt_id)
        return [self.delimiter_id if c == " " else self._index[c] for c in norm]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text: blanks dropped, ``|`` to a space, spaces merged and stripped.

        Repeats are *not* collapsed here (that is CTC decoding, see :mod:`earful.eval.decode`).
        """
        out: list[str] = []
        n = len(self.symbols)
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"id {i} outside the vocabulary of {n} symbols")
            if i == self.blank_id:
                continue
            out.append(" " if i == self.delimiter_id else self.symbols[i])
        return " ".join("".join(out).split())

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description, saved beside checkpoints."""
        return {"type": "char", "symbols": list(self.symbols), "mapping": dict(self.mapping)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CharVocab:
        """Inverse of :meth:`to_dict`."""
        if d.get("type", "char") != "char":
            raise ValueError(f"not a character vocabulary: type {d.get('type')!r}")
        return cls(symbols=d["symbols"], mapping=d.get("mapping") or None)
