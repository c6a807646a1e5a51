"""CTC beam search with a word n-gram LM, through ``flashlight-text`` (optional extra ``earful[lm]``).

flashlight's ``LexiconDecoder`` searches over words of a lexicon (a trie of spellings) and scores each
completed word with a KenLM model (ARPA or KenLM binary):
``score = acoustic + lm_weight * log LM + word_score * words (+ unk_score, sil_score)``.
The lexicon is built from the LM's unigrams (ARPA only) spelled with the character vocabulary, each
spelling ending with the word delimiter ``|``; or read from a file of ``word c h a r s |`` lines.
Words the vocabulary cannot spell are skipped (counted in the log).

Case: a vocabulary of lower-case letters (earful's, and an imported one: :func:`earful.eval.evaluate.
vocab_from_checkpoint` lower-cases it) spells each LM word lower-cased, so an upper-case LM (LibriSpeech's official
4-gram) serves it; the LM is still asked about its own words (``HELLO``), and transcripts give each word in the
vocabulary's case (``hello``), as references are normalised (:meth:`CharVocab.normalize` lower-cases them). The
vocabulary's text mapping applies alike: with fine-tuning's ``text_mapping={é: e}`` the LM's ``café`` is spelled,
and transcribed, ``cafe``, as the references are.
"""

from __future__ import annotations

import codecs
import gzip
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from earful.eval.lm import BOS, EOS, UNK
from earful.eval.vocab import DELIMITER, CharVocab

log = logging.getLogger(__name__)

INSTALL_HINT = "beam search with an LM needs flashlight-text: pip install 'earful[lm]'"
# An utterance longer than STREAM_FRAMES (60 s at 50 frames a second) is searched STREAM_BLOCK frames at a time, the
# words more than LOOK_BACK frames back on the best path taken as final and the search's history before them freed
# (flashlight's prune, as its streaming recogniser does): memory no longer grows with the length of a recording (it
# held ~5 KB a frame at beam 50, ~0.9 GB an hour). Shorter utterances (every LibriSpeech one) are searched whole.
STREAM_FRAMES, STREAM_BLOCK, LOOK_BACK = 3000, 500, 250
FLOAT32_BYTES = 4  # the emissions' (flashlight reads C floats)


def _flashlight():
    try:
        from flashlight.lib.text import decoder as fl_decoder
        from flashlight.lib.text import dictionary as fl_dictionary
        from flashlight.lib.text.decoder.kenlm import KenLM
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(f"{INSTALL_HINT} ({e})") from e
    return fl_decoder, fl_dictionary, KenLM


def flashlight_available() -> bool:
    """Whether ``flashlight-text`` (with its KenLM) can be imported."""
    try:
        _flashlight()
    except RuntimeError:
        return False
    return True


def arpa_unigrams(path: str | Path) -> list[str]:
    """The words of an ARPA file's ``\\1-grams:`` section, in file order (markers included)."""
    words: list[str] = []
    in_unigrams = False
    with Path(path).open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"  # LibriSpeech's 4-gram.arpa.gz, which KenLM reads as it is
    try:
        with (gzip.open(path, "rt", encoding="utf-8-sig") if gzipped else
              Path(path).open(encoding="utf-8-sig")) as f:  # a byte-order mark is no part of the text
            for raw in f:
                line = raw.strip()
                if line == "\\1-grams:":
                    in_unigrams = True
                elif in_unigrams:
                    if not line:
                        continue
                    if line.startswith("\\"):
                        break
                    parts = line.split()
                    if len(parts) >= 2:
                        words.append(parts[1])
    except UnicodeDecodeError as e:  # a KenLM binary model
        raise ValueError(f"{path}: not an ARPA text file ({e}); give a lexicon for a binary KenLM model") from e
    if not in_unigrams:
        raise ValueError(f"{path}: no \\1-grams: section; give a lexicon for a binary KenLM model")
    return words


def lower_case(vocab: CharVocab) -> bool:
    """Whether ``vocab`` writes letters in lower case (it has no upper-case symbol): it then spells LM words and
    writes transcripts lower-cased (the module docstring)."""
    return not any(s.isupper() for s in vocab.symbols[1:])


def written(word: str, vocab: CharVocab) -> str:
    """An LM word as the vocabulary writes it, as references are normalised (:meth:`CharVocab.normalize`):
    NFC, lower-cased for a lower-case vocabulary, the vocabulary's text mapping applied (``CAFÉ`` with
    ``{é: e}``: ``cafe``). Its spelling, and the word in a transcript."""
    return vocab.mapped(word, lower=lower_case(vocab))


def lexicon_from_words(words: Iterable[str], vocab: CharVocab, source: str = "the LM") -> dict[str, list[list[str]]]:
    """``{word: [[c, h, a, r, s, "|"]]}`` for each word the vocabulary can spell (markers skipped), spelled as
    it :func:`written` (``{"HELLO": [["h", "e", "l", "l", "o", "|"]]}``: the key stays the LM's word).
    ``source``: where the words come from (the LM file), for messages."""
    lexicon: dict[str, list[list[str]]] = {}
    skipped: list[str] = []
    lower = lower_case(vocab)
    for w in words:
        if w in (BOS, EOS, UNK) or w in lexicon:
            continue
        spelling = written(w, vocab)
        if not spelling or any(c not in vocab.symbols or c == DELIMITER for c in spelling):
            skipped.append(w)
            continue
        lexicon[w] = [[*spelling, DELIMITER]]
    cased = " (lower-cased)" if lower else ""
    if skipped:
        log.warning("%s: %d LM words cannot be spelled with the vocabulary%s and are left out of the lexicon, e.g. %s",
                    source, len(skipped), cased, ", ".join(repr(w) for w in skipped[:5]))
    if not lexicon:
        letters = "".join(s for s in vocab.symbols[1:] if s != DELIMITER)
        raise ValueError(f"{source}: the lexicon is empty: none of its {len(skipped)} words can be spelled with the "
                         f"vocabulary's characters {letters!r}{cased}, e.g. "
                         f"{', '.join(repr(w) for w in skipped[:3]) or 'none'}: an LM of other text (another "
                         "alphabet, another case), or give a --lexicon that spells its words")
    return lexicon


def read_lexicon(path: str | Path) -> dict[str, list[list[str]]]:
    """A lexicon file: ``word<TAB or space>s p e l l i n g |`` a line, several lines per word allowed; each
    spelling ends with the word delimiter ``|`` (without it the search would lose the word boundaries)."""
    lexicon: dict[str, list[list[str]]] = {}
    try:
        with Path(path).open(encoding="utf-8-sig") as f:  # a byte-order mark is no part of the first word
            for lineno, raw in enumerate(f, 1):
                parts = raw.split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise ValueError(f"{path}:{lineno}: a word without a spelling")
                if parts[-1] != DELIMITER:
                    raise ValueError(f"{path}:{lineno}: the spelling of {parts[0]!r} does not end with the word "
                                     f"delimiter {DELIMITER!r} ({raw.strip()!r})")
                lexicon.setdefault(parts[0], []).append(parts[1:])
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 lexicon file ({e})") from e
    except OSError as e:  # a bare "[Errno 2] No such file or directory: 'x'" named no option
        raise ValueError(f"--lexicon {path}: cannot be read ({e.strerror or e})") from e
    return lexicon


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# What each beam option accepts, and what the search would do otherwise: flashlight takes any number, and a beam
# of 0, a negative threshold or a NaN weight keep no hypothesis, so every transcript came back empty (WER 100 %).
BEAM_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "beam": (_count, "an integer from 1 up (hypotheses kept per frame; the paper: 50)"),
    "beam_size_token": (lambda v: v is None or _count(v),
                        "an integer from 1 up (tokens tried per frame; left out: the whole vocabulary)"),
    "beam_threshold": (lambda v: v >= 0, "a score from 0 up (hypotheses this far below the best are pruned: a "
                                         "negative one prunes them all; inf prunes none)"),
    "lm_weight": (lambda v: 0 <= v < math.inf, "a finite weight from 0 up (0: no LM; a negative one would favour "
                                               "the words the LM finds unlikely; the paper: 2)"),
    "word_score": (math.isfinite, "a finite score (negative: fewer words; the paper: 0)"),
    "unk_score": (lambda v: v < math.inf, "a score below inf (-inf: no word outside the lexicon)"),
    "sil_score": (math.isfinite, "a finite score"),
}


def check_beam_options(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Refuse a beam option the search cannot use (:data:`BEAM_RANGES`), naming it and what it accepts.
    ``names``: how the caller names each option (the command line's ``--beam``); default the field's name.

    Raises:
        ValueError: the first option out of its range (NaN is out of every range).
    """
    for field, value in values.items():
        if field not in BEAM_RANGES:
            continue
        accepts, allowed = BEAM_RANGES[field]
        try:
            ok = bool(accepts(value))
        except TypeError:  # a string from a config file, say
            ok = False
        if not ok:
            name = (names or {}).get(field, field)
            raise ValueError(f"{name} {value}: expected {allowed}")


@dataclass
class BeamOptions:
    """Options of the lexicon beam search (flashlight names; defaults: the paper's 4-gram decoding, i.e.
    torchaudio's ``ctc_decoder`` defaults). Checked when made (:func:`check_beam_options`)."""

    beam: int = 50
    beam_size_token: int | None = None  # tokens considered per frame; None: the whole vocabulary
    beam_threshold: float = 50.0
    lm_weight: float = 2.0
    word_score: float = 0.0
    unk_score: float = float("-inf")
    sil_score: float = 0.0
    log_add: bool = False

    def __post_init__(self) -> None:
        check_beam_options(asdict(self))

    def settings(self) -> dict[str, Any]:
        """The options as JSON values (an infinite score as its text, ``"-inf"``), as results record them."""
        return {k: v if not isinstance(v, float) or math.isfinite(v) else str(v) for k, v in asdict(self).items()}


class LMBeamDecoder:
    """CTC beam search with a KenLM word LM over a lexicon.

    Args:
        vocab: the model's character vocabulary (its blank and ``|`` are used).
        lm_path: an ARPA file (or a KenLM binary when ``lexicon`` is given).
        lexicon: a lexicon file, or ``{word: [spelling tokens, ...]}``; default: the LM's unigrams.
        options: beam size, LM weight, word score, ...
    """

    def __init__(
        self,
        vocab: CharVocab,
        lm_path: str | Path,
        lexicon: str | Path | dict[str, list[list[str]]] | None = None,
        options: BeamOptions | None = None,
    ) -> None:
        fl, fl_dict, KenLM = _flashlight()
        lm_path = Path(lm_path)
        if not lm_path.is_file():
            raise FileNotFoundError(f"no LM file {lm_path}")
        self.vocab = vocab
        self.options = options or BeamOptions()
        if lexicon is None:
            lex = lexicon_from_words(arpa_unigrams(lm_path), vocab, str(lm_path))
        elif isinstance(lexicon, dict):
            lex = lexicon
        else:
            lex = read_lexicon(lexicon)

        self._tokens = fl_dict.Dictionary(list(vocab.symbols))
        self._words = fl_dict.Dictionary()
        for word in (*lex, UNK):
            if not self._words.contains(word):
                self._words.add_entry(word)
        self._words.set_default_index(self._words.get_index(UNK))
        lower = lower_case(vocab)
        # a word in a transcript: as the vocabulary writes it (the module docstring), as references are normalised
        self._text = [written(self._words.get_entry(i), vocab) for i in range(self._words.index_size())]
        with lm_path.open("rb") as f:
            if f.read(3) == codecs.BOM_UTF8:  # KenLM reads the first line as "\ufeff\\data\\": not ARPA
                raise ValueError(f"{lm_path}: begins with a UTF-8 byte-order mark, which KenLM does not read; save it "
                                 "without one (sed -i '1s/^\\xEF\\xBB\\xBF//' FILE)")
        try:
            self._lm = KenLM(str(lm_path), self._words)
        except RuntimeError as e:  # KenLM's message ("End of file Byte: 406") names neither the file nor what it is
            raise ValueError(f"{lm_path}: KenLM cannot read this LM ({e}): a truncated or malformed ARPA file, or "
                             "not a KenLM model") from None
        silence = vocab.delimiter_id
        self._closing_frame = torch.full((len(vocab),), -1e4, dtype=torch.float32)  # log-probabilities: "|" certain
        self._closing_frame[silence] = 0.0
        self._trie = fl.Trie(len(vocab), silence)
        start = self._lm.start(False)
        _, unk_score = self._lm.score(start, self._words.get_index(UNK))
        unknown: list[str] = []
        for word, spellings in lex.items():
            word_idx = self._words.get_index(word)
            _, score = self._lm.score(start, word_idx)
            if score == unk_score:  # KenLM scores a word it does not know as <unk>
                unknown.append(word)
            for spelling in spellings:
                try:  # a lexicon of upper-case spellings serves a lower-case vocabulary, as the LM's words do
                    ids = [vocab.index(t.lower() if lower else t) for t in spelling]
                except KeyError as e:
                    where = lm_path if lexicon is None else lexicon if not isinstance(lexicon, dict) else "lexicon"
                    raise ValueError(f"{where}: the spelling of {word!r} uses {e} outside the vocabulary") from e
                self._trie.insert(ids, word_idx, score)
        if unknown:
            where = "lexicon" if lexicon is None or isinstance(lexicon, dict) else str(lexicon)
            message = (f"{where}: {len(unknown)} of {len(lex)} lexicon words are not in the LM {lm_path} (KenLM scores "
                       f"them as <unk>), e.g. {', '.join(repr(w) for w in unknown[:5])}: a lexicon in another case "
                       "or of another text than the LM?")
            if len(unknown) == len(lex):
                raise ValueError(message + " The LM would score no word")
            log.warning("%s", message)
        self._trie.smear(fl.SmearingMode.MAX)
        o = self.options
        fl_options = fl.LexiconDecoderOptions(
            beam_size=o.beam,
            beam_size_token=o.beam_size_token or len(vocab),
            beam_threshold=o.beam_threshold,
            lm_weight=o.lm_weight,
            word_score=o.word_score,
            unk_score=o.unk_score,
            sil_score=o.sil_score,
            log_add=o.log_add,
            criterion_type=fl.CriterionType.CTC,
        )
        self._decoder = fl.LexiconDecoder(
            fl_options, self._trie, self._lm, silence, vocab.blank_id, self._words.get_index(UNK), [], False
        )
        log.info("beam decoder: %d lexicon words, LM %s, %s", len(lex), lm_path, o)

    def decode(
        self,
        logits: torch.Tensor | np.ndarray,
        frame_lengths: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    ) -> list[str]:
        """Best transcript per utterance of ``(batch, frames, vocab)`` logits (log-softmax taken here)."""
        x = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
        if x.dim() != 3 or x.shape[-1] != len(self.vocab):
            raise ValueError(f"logits must be (batch, frames, {len(self.vocab)}), got shape {tuple(x.shape)}")
        logp = torch.log_softmax(x.detach().to("cpu", torch.float32), dim=-1)
        b, t, v = logp.shape
        lengths = [t] * b if frame_lengths is None else [int(n) for n in frame_lengths]
        if len(lengths) != b or any(not 0 <= n <= t for n in lengths):
            raise ValueError(f"frame lengths {lengths} do not fit a batch of {b} x {t} frames")
        # A lexicon word is scored when its spelling's closing "|" is emitted, but the model never emits one
        # after the last word (its targets have none). A confident model then puts the closing "|" so far
        # below the best path that the beam prunes it, and the last word is lost. One extra frame per
        # utterance that certainly emits "|" closes it (and costs nothing: log p = 0).
        # float32 whatever torch's default dtype: flashlight reads the buffer as C floats
        emissions = torch.full((b, t + 1, v), -1e4, dtype=torch.float32)
        emissions[:, :t] = logp
        emissions[torch.arange(b), torch.tensor(lengths, dtype=torch.long)] = self._closing_frame
        lengths = [n + 1 if n > 0 else 0 for n in lengths]  # an empty utterance stays empty
        within = torch.arange(t + 1) < torch.tensor(lengths)[:, None]  # (batch, frames + 1)
        broken = ((~torch.isfinite(emissions).all(-1)) & within).any(-1)  # (batch,): NaN or inf logits
        if broken.any():
            log.warning("%d of %d utterance(s) (batch rows %s) have NaN or infinite logits: the beam search gives "
                        "them no transcript (a diverged or overflowing model: greedy decoding hides it less)",
                        int(broken.sum()), b, broken.nonzero().flatten().tolist()[:5])
        out: list[str] = []
        base, step = emissions.data_ptr(), emissions.stride(0) * emissions.element_size()
        for i in range(b):
            if lengths[i] == 0:
                out.append("")
                continue
            if lengths[i] > STREAM_FRAMES:
                words = self._streamed(base + i * step, lengths[i], v)
            else:
                results = self._decoder.decode(base + i * step, lengths[i], v)
                words = results[0].words if results else []
            out.append(" ".join(self._text[w] for w in words if w >= 0))
        return out

    def _streamed(self, emissions: int, frames: int, v: int) -> list[int]:
        """The best word sequence of ``frames`` frames of float32 log-probabilities at address ``emissions``, searched
        ``STREAM_BLOCK`` frames at a time; after each block the best path's words up to ``LOOK_BACK`` frames back (to
        its last whole word there) are kept and the search's history before them pruned. A kept word is final: the
        best path over the whole recording may have differed there (not seen in tests; the same words as one whole
        search on clean and on noisy emissions)."""
        d, words = self._decoder, []
        d.decode_begin()
        for start in range(0, frames, STREAM_BLOCK):
            size = min(STREAM_BLOCK, frames - start)
            d.decode_step(emissions + start * v * FLOAT32_BYTES, size, v)
            if start + size < frames:
                # position 0 is the buffer's first node: the search's start, or the word kept last time
                words += d.get_best_hypothesis(LOOK_BACK).words[1:]
                d.prune(LOOK_BACK)
        d.decode_end()
        results = d.get_all_final_hypothesis()
        return words + (results[0].words[1:] if results else [])
