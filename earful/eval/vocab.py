"""Character vocabulary for CTC fine-tuning (wav2vec 2.0 style).

Index 0 is the CTC blank ``<b>``, index 1 the word delimiter ``|`` (a space in text), then the
apostrophe and ``a``..``z``: 29 symbols. Text is put in Unicode NFC form (a letter and its combining accent,
``e`` + U+0301, become one character, ``é``, as a mapping names it) and lower-cased before the mapping and the
encoding; any other character is an error naming it (a combining or non-printing one by its code point, U+0301),
the utterance when given, and a mapping for every one of them, unless an explicit ``mapping`` replaces or removes
it.
"""

from __future__ import annotations

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


def removal_example(chars: Sequence[str]) -> str:
    """A YAML mapping that removes every one of ``chars``: ``{'é': '', 'ï': ''}``, or, where one would not
    show, with YAML's double-quoted escapes, ``{"\\u0301": ""}``."""
    if all(_visible(c) for c in chars):
        return "{" + ", ".join(f"{c!r}: ''" for c in chars) + "}"
    esc = [c if _visible(c) else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}") for c in chars]
    return "{" + ", ".join(f'"{c}": ""' for c in esc) + "}"


def _shell(value: str) -> str:
    """``value`` quoted for a shell: in double quotes unless it holds one."""
    return f"'{value}'" if '"' in value else f'"{value}"'


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
            character.
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
        text = text.lower() if lower else text
        return "".join(self.mapping.get(c, c) for c in text) if self.mapping else text

    def normalize(self, text: str, utt_id: str | None = None) -> str:
        """NFC-normalise, lower-case, apply the mapping (:meth:`mapped`), collapse white space; raise on
        characters outside the vocabulary, naming each, with a mapping that removes them all in the setting it
        is given in.

        Returns the normalised text with single spaces between words (no leading/trailing space).
        """
        text = self.mapped(text)
        words = text.split()
        bad = sorted({c for w in words for c in w if c not in self._index or c == DELIMITER})
        if bad:
            where = f" in utterance {utt_id!r}" if utt_id is not None else ""
            shown = ", ".join(describe(c) for c in bad)
            example = removal_example(bad)
            settings = (f"{self.setting}={example}" if self.setting is not None else
                        f"fine-tuning's text_mapping={example}, evaluate's --text-mapping {_shell(example)}")
            raise ValueError(f"characters outside the vocabulary{where}: {shown} (text {text[:80]!r}); a text "
                             f"mapping replaces or removes them: {settings}")
        return " ".join(words)

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
