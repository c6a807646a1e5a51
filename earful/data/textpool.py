"""Text for the synthetic corpus: the normalised open-domain sentence pool and the `commands` grammar.

Transcripts are normalised to ``[A-Z' ]``: sentences with digits, acronyms, abbreviations or non-ASCII
letters are dropped rather than rewritten, so that what espeak-ng says and the transcript agree.

The pool ships as ``resources/sentences.txt.gz`` (one sentence a line); ``python -m earful.data.textpool``
rebuilds it from the source texts named in ``resources/SOURCES.md``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib import resources

import numpy as np

from earful.atomic import atomic_open

log = logging.getLogger(__name__)

POOL_RESOURCE = "sentences.txt.gz"
MIN_WORDS, MAX_WORDS = 3, 24

# Words spelled in capitals in the sources that are words, not acronyms.
_CAPS_OK = {"I", "O", "A", "GOD", "LORD", "OH"}
_ABBREV = re.compile(
    r"\b(?:Mr|Mrs|Dr|St|Jr|Sr|vs|etc|viz|Esq|Rev|Gen|Col|Capt|Prof|No|[A-Za-z]{1,3}\.[A-Za-z]{1,3}"
    r"|n|v|adj|adv|prep|pp|[A-Z])\.",
)
_SPLIT = re.compile(r"(?<=[.!?;:])\s+")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


def normalise_sentence(text: str) -> str | None:
    """Normalise one sentence to upper-case ``[A-Z' ]`` words, or None when it cannot be said reliably."""
    if "\x00" in text or any(ch.isdigit() for ch in text):
        return None
    text = text.replace("\u2019", "'").replace("`", "'").replace("_", " ")
    text = re.sub(r"[-\u2014\u2013]+", " ", text)
    if any(ord(ch) > 127 for ch in text) or re.search(r"[<>{}\[\]@#$%&*=+/\\|~^]", text):
        return None
    words = _WORD.findall(text)
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if any(len(w) > 1 and w.isupper() and w not in _CAPS_OK for w in words):
        return None
    # Anything left besides words, spaces and ordinary punctuation means the sentence is odd.
    rest = _WORD.sub("", text)
    if re.search(r"[^\s.,;:!?'\"()]", rest):
        return None
    return " ".join(w.upper() for w in words)


def split_sentences(text: str) -> Iterator[str]:
    """Split running text at sentence and clause ends; abbreviations poison their sentence."""
    text = _ABBREV.sub(lambda m: m.group(0)[:-1] + "\x00", text)
    text = re.sub(r"\s+", " ", text)
    yield from (s.strip() for s in _SPLIT.split(text) if s.strip())


def build_pool(texts: Iterable[str]) -> list[str]:
    """Normalised, de-duplicated sentences from running texts, in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for s in split_sentences(text):
            norm = normalise_sentence(s)
            if norm is not None:
                seen.setdefault(norm, None)
    return list(seen)


@lru_cache(maxsize=1)
def load_pool() -> tuple[str, ...]:
    """The shipped open-domain sentence pool."""
    data = resources.files("earful.data").joinpath("resources", POOL_RESOURCE).read_bytes()
    return tuple(line for line in gzip.decompress(data).decode("ascii").splitlines() if line)


# ---------------------------------------------------------------- commands grammar

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_COLOURS = ("red", "green", "blue", "yellow", "black", "white")
_OBJECTS = ("block", "ball", "box", "cup", "book")
_DIRECTIONS = ("left", "right", "front", "back")
_DEVICES = ("light", "radio", "heater", "fan", "music")
_ROOMS = ("kitchen", "bedroom", "hall", "garden", "office")
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _command(rng: np.random.Generator) -> str:
    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    kind = int(rng.integers(7))
    if kind == 0:
        return " ".join(pick(_DIGITS) for _ in range(int(rng.integers(2, 7))))
    if kind == 1:
        return f"move the {pick(_COLOURS)} {pick(_OBJECTS)} to the {pick(_DIRECTIONS)}"
    if kind == 2:
        return f"pick up the {pick(_COLOURS)} {pick(_OBJECTS)}"
    if kind == 3:
        return f"put the {pick(_COLOURS)} {pick(_OBJECTS)} on the {pick(_COLOURS)} {pick(_OBJECTS)}"
    if kind == 4:
        return f"turn {pick(('on', 'off'))} the {pick(_DEVICES)} in the {pick(_ROOMS)}"
    if kind == 5:
        return f"set the {pick(_DEVICES)} to {pick(_NUMBERS)}"
    return f"call {' '.join(pick(_DIGITS) for _ in range(int(rng.integers(3, 6))))}"


INTENT_SLOTS = ("action", "object", "location")  # as Fluent Speech Commands; "none" where a form has no slot


def _alt(options: tuple[str, ...]) -> str:
    return "(" + "|".join(o.upper() for o in options) + ")"


_D, _C, _O = _alt(_DIGITS), _alt(_COLOURS), _alt(_OBJECTS)
# each form of the grammar above -> its slots (regex groups as {n}); colours and numbers are not slots
_INTENT_FORMS = tuple((re.compile(pattern), slots) for pattern, slots in (
    (rf"{_D}(?: {_D})*", ("dictate", "digits", "none")),
    (rf"MOVE THE {_C} {_O} TO THE {_alt(_DIRECTIONS)}", ("move", "{2}", "{3}")),
    (rf"PICK UP THE {_C} {_O}", ("pick_up", "{2}", "none")),
    (rf"PUT THE {_C} {_O} ON THE {_C} {_O}", ("put", "{2}", "{4}")),
    (rf"TURN (ON|OFF) THE {_alt(_DEVICES)} IN THE {_alt(_ROOMS)}", ("turn_{1}", "{2}", "{3}")),
    (rf"SET THE {_alt(_DEVICES)} TO {_alt(_NUMBERS)}", ("set", "{1}", "none")),
    (rf"CALL {_D}(?: {_D})*", ("call", "number", "none")),
))


def command_intent(text: str) -> dict[str, str]:
    """The slots (action, object, location) of a `commands` transcript, e.g. ``TURN OFF THE LIGHT IN THE
    KITCHEN`` → ``{"action": "turn_off", "object": "light", "location": "kitchen"}``. ValueError for text the
    grammar does not make."""
    for pattern, slots in _INTENT_FORMS:
        m = pattern.fullmatch(text)
        if m:
            groups = [g.lower() if g else "" for g in m.groups()]
            return {k: v.format("", *groups) for k, v in zip(INTENT_SLOTS, slots, strict=True)}
    raise ValueError(f"not a sentence of the commands grammar: {text[:80]!r}")


def sentences(domain: str, rng: np.random.Generator, n: int) -> list[str]:
    """``n`` upper-case transcripts drawn from ``domain`` (``commands`` or ``open``)."""
    if domain == "commands":
        return [_command(rng).upper() for _ in range(n)]
    if domain == "open":
        pool = load_pool()
        return [pool[int(i)] for i in rng.integers(len(pool), size=n)]
    raise ValueError(f"unknown text domain {domain!r}: use 'commands' or 'open'")


def main(argv: list[str] | None = None) -> None:
    """Rebuild the pool: ``python -m earful.data.textpool OUT.txt.gz FILE...`` (plain or gzipped text)."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out")
    p.add_argument("sources", nargs="+")
    args = p.parse_args(argv)
    texts = []
    for path in args.sources:
        opener = gzip.open if path.endswith((".gz", ".dz")) else open
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
            texts.append(f.read())
    pool = build_pool(texts)
    with atomic_open(args.out, "wb") as raw, gzip.GzipFile(args.out, "wb", fileobj=raw, mtime=0) as f:
        f.write(("\n".join(pool) + "\n").encode("ascii"))  # the header names args.out, not the temporary file
    log.info("%d sentences -> %s", len(pool), args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
