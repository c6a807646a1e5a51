"""English phonemes in one inventory, whatever the accent: espeak-ng's IPA names folded into 40 phonemes.

espeak-ng's eight English accents use 92 phoneme names between them (measured: its G2P of the whole open-domain
sentence pool and the `commands` grammar with every accent). Phoneme recognition needs the same label set on
every corpus, so each name is folded into the 40 phonemes of General American English (the 39 of ARPAbet with
the schwa apart from /ʌ/): accent variants to their General American counterpart, r-coloured vowels to a vowel
and /ɹ/, centring diphthongs to a vowel and /ə/, a flap or glottal stop to /t/. Stress marks are dropped.
A name outside this table is an error naming the utterance, never a silent drop. One IPA name can stand for
several phonemes of a voice: en-gb-scotland writes ``e`` for its happY, NURSE and SQUARE vowels; such a name is
folded by the phoneme espeak-ng's own mnemonic names (:data:`BY_MNEMONIC`). (Before, that ``e`` was always /iː/:
Scottish *earth*, *her*, *there* were labelled with FLEECE; the `commands` grammar has none of them.)

A phoneme transcript is the inventory's symbols joined by single spaces, e.g. ``"k ɔː l t uː"``: the
``phonemes`` field of a manifest, written by ``earful synth`` (what espeak-ng spoke) and ``earful phonemize``
(espeak-ng's G2P of the transcript, with the ``en-us`` voice).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import replace

from tqdm import tqdm

from .espeak import Espeak
from .manifest import Utterance, control_character

VOWELS = ("iː", "ɪ", "eɪ", "ɛ", "æ", "ɑː", "ʌ", "ə", "ɔː", "ʊ", "uː", "ɜː", "aɪ", "aʊ", "ɔɪ", "oʊ")
CONSONANTS = ("p", "b", "t", "d", "k", "ɡ", "tʃ", "dʒ", "f", "v", "θ", "ð", "s", "z", "ʃ", "ʒ", "h", "m", "n",
              "ŋ", "l", "ɹ", "j", "w")
PHONEMES: tuple[str, ...] = VOWELS + CONSONANTS
G2P_VOICE = "en-us"  # ``earful phonemize``: the accent of LibriSpeech's readers, mostly
G2P_CHUNK = 256  # transcripts per call into the G2P process

# espeak-ng name (stress marks removed) -> inventory phonemes; names already in PHONEMES map to themselves
FOLD: dict[str, tuple[str, ...]] = {
    # vowels of other accents
    "i": ("iː",), "eʲ": ("iː",), "ei": ("iː",),  # happY (en-gb-scotland eʲ before a vowel), FLEECE (gbcwmd ei)
    "ᵻ": ("ɪ",), "ɪʲ": ("ɪ",), "eː": ("eɪ",), "a": ("æ",), "ɛə": ("æ",),  # TRAP (en, nyc ɛə)
    "ɐ": ("ə",), "ɜ": ("ɜː",), "ɚ": ("ɜː",), "əɹ": ("ɜː",), "ʌɹ": ("ɜː",), "əɪ": ("ɜː",),  # NURSE (nyc əɪ)
    "ɒ": ("ɑː",), "a:": ("ɑː",), "aː": ("ɑː",), "aa": ("ɑː",), "ɑə": ("ɑː",),  # LOT, START, BATH
    "ɔ": ("ɔː",), "oə": ("ɔː",), "ɔə": ("ɔː",),
    "ʉ": ("ʊ",), "ʉː": ("uː",), "əu": ("uː",),  # GOOSE (gbcwmd əu)
    "əʊ": ("oʊ",), "oː": ("oʊ",), "o": ("oʊ",), "ʌʊ": ("oʊ",),
    "ʌʉ": ("aʊ",), "æʊ": ("aʊ",), "oɪ": ("ɔɪ",),
    # r-coloured vowels and centring diphthongs: vowel + /ɹ/ or /ə/
    "ɔːɹ": ("ɔː", "ɹ"), "ɑːɹ": ("ɑː", "ɹ"), "ɛɹ": ("ɛ", "ɹ"), "ɪɹ": ("ɪ", "ɹ"), "ʊɹ": ("ʊ", "ɹ"),
    "ʉɹ": ("ʊ", "ɹ"), "aɪɚ": ("aɪ", "ɜː"),
    "iə": ("ɪ", "ə"), "eə": ("ɛ", "ə"), "ʊə": ("ʊ", "ə"), "aɪə": ("aɪ", "ə"),
    # syllabic consonants, other consonants
    "əl": ("ə", "l"), "n̩": ("ə", "n"), "r": ("ɹ",), "ɾ": ("t",), "ʔ": ("t",), "t̪": ("t",), "ʍ": ("w",),
    "x": ("k",), "ʲ": (),  # espeak's events may send a palatal mark as a phoneme of its own
}
# accent -> IPA name it gives several of its phonemes -> espeak-ng mnemonic of the phoneme -> inventory phonemes
BY_MNEMONIC: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    # phsource/ph_english_sc: "e" is the happY vowel (i, an [e] as in Scottish English), NURSE (3:, an r-coloured
    # [e], no r written after it) and SQUARE (e@, always an r after it), as /iː/, /ɜː/ and /ɛ/ elsewhere
    "en-gb-scotland": {"e": {"i": ("iː",), "3:": ("ɜː",), "e@": ("ɛ",)}},
}
_STRESS = str.maketrans("", "", "ˈˌ")
_MNEMONIC_STRESS = str.maketrans("", "", "',")


def accent(voice: str) -> str:
    """A voice's accent, as espeak-ng reads its name (in any case, its language family left out): ``en-gb-scotland``
    of ``en-gb-scotland+m3`` and of ``gmw/en-GB-scotland``."""
    return voice.split("+", 1)[0].rsplit("/", 1)[-1].lower()


def english(voice: str) -> bool:
    """Whether ``voice`` is one of espeak-ng's English accents (``en``, ``en-us``, ``en-gb-scotland+m3`` ...)."""
    return accent(voice).split("-", 1)[0] == "en"


def needs_mnemonics(voice: str | None) -> bool:
    """Whether folding what ``voice`` speaks needs espeak-ng's phoneme mnemonics beside its IPA names."""
    return voice is not None and accent(voice) in BY_MNEMONIC


def fold(names: Sequence[str], where: str, voice: str | None = None,
         mnemonics: Sequence[str] | None = None) -> list[str]:
    """espeak-ng IPA names → inventory phonemes (stress marks and pauses dropped). Raises ValueError naming
    ``where`` (the utterance) for a name the table does not know. For a ``voice`` whose IPA names stand for several
    of its phonemes (:data:`BY_MNEMONIC`), ``mnemonics`` (espeak-ng's names of the same phonemes, one for each
    name) say which; without them such a name is an error, as is one that is no name of that voice."""
    split = BY_MNEMONIC.get(accent(voice), {}) if voice is not None else {}
    if mnemonics is not None and len(mnemonics) != len(names):
        raise ValueError(f"{where}: {len(names)} phoneme names but {len(mnemonics)} mnemonics")
    out: list[str] = []
    for k, raw in enumerate(names):
        name = raw.translate(_STRESS)
        if not name:
            continue
        if name in split:
            if mnemonics is None:
                raise ValueError(f"{where}: espeak-ng phoneme {name!r} of {voice} stands for several phonemes: "
                                 "folding it needs espeak-ng's phoneme mnemonics")
            mnemonic = mnemonics[k].translate(_MNEMONIC_STRESS)
            if mnemonic not in split[name]:
                raise ValueError(f"{where}: espeak-ng phoneme {name!r} ({mnemonic!r}) of {voice} is not in earful's "
                                 "inventory (earful/data/phonemes.py BY_MNEMONIC)")
            out.extend(split[name][mnemonic])
        elif name in PHONEMES:
            out.append(name)
        elif name in FOLD:
            out.extend(FOLD[name])
        else:
            raise ValueError(f"{where}: espeak-ng phoneme {name!r} is not in earful's inventory "
                             "(earful/data/phonemes.py FOLD)")
    return out


def parse(phonemes: str, where: str) -> list[str]:
    """A manifest's phoneme transcript → its phonemes; ValueError naming ``where`` for a symbol outside the
    inventory (a manifest written by other tools)."""
    symbols = phonemes.split()
    bad = sorted(set(symbols) - set(PHONEMES))
    if bad:
        raise ValueError(f"{where}: phonemes outside earful's inventory: {', '.join(bad)} "
                         "(write them with `earful phonemize`)")
    return symbols


def _g2p(job: tuple[list[str], str]) -> list[tuple[list[str], list[str] | None]]:
    """Each text's IPA names and, for a voice that needs them (:func:`needs_mnemonics`), a mnemonic for each."""
    texts, voice = job
    engine = Espeak()
    out: list[tuple[list[str], list[str] | None]] = []
    for t in texts:
        names = engine.text_to_phonemes(t.lower(), voice)
        mnemonics = None
        if needs_mnemonics(voice):
            mnemonics = _paired(names, engine.text_to_phonemes(t.lower(), voice, mnemonics=True), t)
        out.append((names, mnemonics))
    return out


def _paired(names: list[str], mnemonics: list[str], text: str) -> list[str]:
    """The mnemonic of each IPA name of a G2P: espeak-ng's IPA joins a palatal mark to the vowel before it (``eʲ``),
    its mnemonics keep it apart (``i ;``)."""
    out, j = [], 0
    for name in names:
        if j == len(mnemonics):
            break
        out.append(mnemonics[j])
        j += 1
        if len(name) > 1 and name.endswith("ʲ") and j < len(mnemonics) and mnemonics[j] == ";":
            j += 1
    if len(out) != len(names) or j != len(mnemonics):
        raise RuntimeError(f"espeak-ng's IPA names and mnemonics of {text!r} do not pair: {names} {mnemonics}")
    return out


def phonemize(utts: Sequence[Utterance], where: str, voice: str = G2P_VOICE) -> list[Utterance]:
    """The utterances with ``phonemes`` set from espeak-ng's G2P of their transcripts. Raises ValueError naming
    the utterance (and ``where``, the manifest) without a transcript, with a control character in it, or whose
    transcript gives no phonemes.

    espeak-ng runs in a child process, so that this one stays as it was: espeak-ng keeps state in the process
    that uses it."""
    if not english(voice):  # refused before espeak-ng runs: its first foreign phoneme named no voice
        raise ValueError(f"voice {voice!r}: not an English voice; earful's 40-phoneme inventory is English: give an "
                         f"English accent ({G2P_VOICE}, en-gb, en-gb-scotland, ...)")
    for u in utts:
        if not u.transcript or not u.transcript.strip():
            raise ValueError(f"{where}: utterance {u.id!r} has no transcript to phonemize")
        if (bad := control_character(u.transcript)) is not None:  # a NUL would end the text espeak-ng reads
            raise ValueError(f"{where}: utterance {u.id!r}: its transcript holds a {bad}")
    texts = [str(u.transcript) for u in utts]
    chunks = [(texts[i : i + G2P_CHUNK], voice) for i in range(0, len(texts), G2P_CHUNK)]
    names: list[tuple[list[str], list[str] | None]] = []
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(1) as pool, \
            tqdm(total=len(utts), desc="phonemize", unit="utt", disable=len(utts) < 2 * G2P_CHUNK) as bar:
        for part in pool.imap(_g2p, chunks):
            names.extend(part)
            bar.update(len(part))
    out = []
    for u, (n, m) in zip(utts, names, strict=True):
        phones = fold(n, f"{where}: utterance {u.id!r}", voice, m)
        if not phones:
            raise ValueError(f"{where}: utterance {u.id!r}: espeak-ng found no phonemes in {u.transcript!r}")
        out.append(replace(u, phonemes=" ".join(phones)))
    return out
