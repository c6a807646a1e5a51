"""A small word n-gram builder: interpolated modified Kneser-Ney, written as an ARPA file.

No maintained pip package builds ARPA files here: ``kenlm`` (and ``kenlm-ex``) only query models, the
``lmplz`` estimator is not in them; ``kaldingram`` estimates back-off *unmodified* Kneser-Ney and
``arpabo`` writes interpolated Kneser-Ney with back-off weights fixed at 1 (so its ARPA files are not
normalised). This module follows Chen & Goodman (1998) and KenLM's ``lmplz``:

* each line is a sentence ``<s> w1 .. wk </s>``; n-grams of every order up to ``N`` are taken from it;
* the highest order uses raw counts, lower orders *continuation* counts (distinct left extensions),
  except n-grams starting with ``<s>``, which keep raw counts (nothing can precede ``<s>``);
* per order, three discounts ``D1, D2, D3+`` from the counts-of-counts ``t1..t4``:
  ``Y = t1 / (t1 + 2 t2)``, ``Dk = k - (k + 1) Y t(k+1) / tk``; when the corpus is too small for them
  to be valid (a zero count-of-counts, or ``Dk`` outside ``(0, k)``) KenLM's ``--discount_fallback``
  values ``0.5, 1, 1.5`` are used, with a warning;
* ``p(w|h) = (c(hw) - D(c(hw))) / c(h.) + gamma(h) p(w|h')`` with
  ``gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / c(h.)``; unigrams interpolate with the uniform
  distribution over the vocabulary (all words but ``<s>``, plus ``</s>`` and ``<unk>``);
* the ARPA file stores the interpolated ``p(w|h)`` of every seen n-gram and ``gamma(h)`` as the
  back-off weight of every context ``h``, so back-off lookups give exactly the interpolated model.

Everything is held in Python dictionaries: fine for corpora up to a few million words, not for the
800 M-word LibriSpeech LM corpus (use KenLM's ``lmplz`` for that).
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from earful.atomic import atomic_open

log = logging.getLogger(__name__)

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
LOG10_ZERO = -99.0  # what ARPA files write for log10(0)

Ngram = tuple[str, ...]


# ----------------------------------------------------------------------------------------- estimation
def _sentences(lines: Iterable[str], lowercase: bool, source: str) -> Iterator[list[str]]:
    for lineno, line in enumerate(lines, 1):
        words = (line.lower() if lowercase else line).split()
        if not words:
            continue
        for w in words:
            if w in (BOS, EOS, UNK):
                raise ValueError(f"{source}:{lineno}: the text may not contain the reserved token {w!r}")
        yield words


def modified_kn_discounts(count_of_counts: Counter[int]) -> tuple[tuple[float, float, float], bool]:
    """``(D1, D2, D3+)`` from counts-of-counts ``{k: number of n-grams seen k times}``.

    Returns the discounts and whether the fallback ``(0.5, 1, 1.5)`` had to be used.
    """
    t = [count_of_counts.get(k, 0) for k in range(1, 5)]
    if min(t) > 0:
        y = t[0] / (t[0] + 2 * t[1])
        d = tuple(k - (k + 1) * y * t[k] / t[k - 1] for k in (1, 2, 3))
        if all(0.0 < dk < k for dk, k in zip(d, (1, 2, 3), strict=True)):
            return (d[0], d[1], d[2]), False
    return FALLBACK_DISCOUNTS, True


@dataclass
class NgramModel:
    """An n-gram model in back-off form: ``prob[n][g]`` = log10 p(g[-1] | g[:-1]) for seen n-grams of
    length ``n`` (1-based lists, index 0 unused) and ``backoff[n][h]`` = log10 back-off weight of ``h``."""

    order: int
    prob: list[dict[Ngram, float]] = field(default_factory=list)
    backoff: list[dict[Ngram, float]] = field(default_factory=list)
    discounts: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def vocabulary(self) -> list[str]:
        """Unigram words, ``<s>``, ``</s>`` and ``<unk>`` included."""
        return [g[0] for g in self.prob[1]]

    def log10_prob(self, word: str, context: Iterable[str] = ()) -> float:
        """log10 p(word | context) by the back-off rule; unknown words are ``<unk>``, and ``LOG10_ZERO`` where
        the model has no ``<unk>`` (SRILM may leave it out; KenLM then gives it the same)."""
        known = self.prob[1]
        ctx = tuple(w if (w,) in known else UNK for w in context)
        ctx = ctx[-(self.order - 1) :] if self.order > 1 else ()
        word = word if (word,) in known else UNK
        acc = 0.0
        while True:
            g = (*ctx, word)
            p = self.prob[len(g)].get(g)
            if p is not None:
                return acc + p
            if not ctx:  # not even a unigram: an unknown word in a model without <unk>
                return acc + LOG10_ZERO
            acc += self.backoff[len(ctx)].get(ctx, 0.0)
            ctx = ctx[1:]

    def sentence_log10_prob(self, sentence: str) -> float:
        """Total log10 probability of ``<s> sentence </s>`` (``<s>`` itself is not scored)."""
        words = [BOS, *sentence.split(), EOS]
        return sum(self.log10_prob(w, words[:i]) for i, w in enumerate(words) if i > 0)

    def write_arpa(self, path: str | Path) -> None:
        """Write the model as an ARPA text file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            f.write("\\data\\\n")
            for n in range(1, self.order + 1):
                f.write(f"ngram {n}={len(self.prob[n])}\n")
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                bows = self.backoff[n] if n < self.order else {}
                for g in sorted(self.prob[n]):
                    line = f"{self.prob[n][g]:.7f}\t{' '.join(g)}"
                    if g in bows:
                        line += f"\t{bows[g]:.7f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")

    @classmethod
    def read_arpa(cls, path: str | Path) -> NgramModel:
        """Read an ARPA text file (ours or anyone's)."""
        counts: dict[int, int] = {}
        prob: list[dict[Ngram, float]] = [{}]
        backoff: list[dict[Ngram, float]] = [{}]
        section = 0
        with Path(path).open(encoding="utf-8-sig") as f:  # a byte-order mark is no part of the text
            for raw in f:
                line = raw.strip()
                if not line:
                    continue
                if line == "\\data\\":
                    section = 0
                elif line.startswith("ngram ") and section == 0:
                    n, c = line[6:].split("=")
                    counts[int(n)] = int(c)
                elif line.startswith("\\") and line.endswith("-grams:"):
                    section = int(line[1 : line.index("-")])
                    while len(prob) <= section:
                        prob.append({})
                        backoff.append({})
                elif line == "\\end\\":
                    break
                elif section > 0:
                    parts = line.split()
                    g = tuple(parts[1 : 1 + section])
                    prob[section][g] = float(parts[0])
                    if len(parts) > 1 + section:
                        backoff[section][g] = float(parts[1 + section])
        if not counts:
            raise ValueError(f"{path}: no \\data\\ header, not an ARPA file")
        order = max(counts)
        for n in range(1, order + 1):
            if len(prob) <= n or len(prob[n]) != counts[n]:
                got = len(prob[n]) if len(prob) > n else 0
                raise ValueError(f"{path}: header says {counts[n]} {n}-grams, found {got}")
        backoff.append({})  # the highest order has no back-off weights
        return cls(order=order, prob=prob, backoff=backoff)


def build_kneser_ney(lines: Iterable[str], order: int, lowercase: bool = False, source: str = "text") -> NgramModel:
    """Estimate an interpolated modified Kneser-Ney model of ``order`` from sentences, one a line (``source``:
    where they come from, for messages)."""
    if order < 2:
        raise ValueError(f"order must be at least 2 (KenLM loads no unigram-only model), got {order}")
    # raw counts of the highest order, and of <s>-initial n-grams of every lower order
    top: Counter[Ngram] = Counter()
    bos_raw: list[Counter[Ngram]] = [Counter() for _ in range(order + 1)]
    n_sent = 0
    for words in _sentences(lines, lowercase, source):
        n_sent += 1
        s = (BOS, *words, EOS)
        for i in range(len(s) - order + 1):
            top[s[i : i + order]] += 1
        for n in range(1, min(order, len(s) + 1)):
            bos_raw[n][s[:n]] += 1
    if n_sent == 0:
        raise ValueError(f"{source}: no sentences")

    # adjusted counts: raw at the top, continuation counts below (raw for <s>-initial n-grams)
    adj: list[Counter[Ngram]] = [Counter() for _ in range(order + 1)]
    adj[order] = top
    for n in range(order - 1, 0, -1):
        for g in adj[n + 1]:
            adj[n][g[1:]] += 1
        for g, c in bos_raw[n].items():
            adj[n][g] = c
    # sentences shorter than the order: their whole n-gram is <s>-initial and counted raw above

    model = NgramModel(
        order=order,
        prob=[{} for _ in range(order + 1)],
        backoff=[{} for _ in range(order + 1)],
        discounts=[(0.0, 0.0, 0.0)],
    )
    for n in range(1, order + 1):
        counts = adj[n]
        if n == 1:
            counts = Counter({g: c for g, c in counts.items() if g != (BOS,)})
        count_of_counts = Counter(counts.values())
        d, fell_back = modified_kn_discounts(count_of_counts)
        if fell_back:
            log.warning(
                "order %d: counts-of-counts t1..t4 = %s give no valid modified Kneser-Ney discounts; "
                "using %s",
                n, [count_of_counts.get(k, 0) for k in range(1, 5)], d,
            )  # fmt: skip
        model.discounts.append(d)

        # per context: total count and the discounted mass
        total: dict[Ngram, int] = defaultdict(int)
        mass: dict[Ngram, float] = defaultdict(float)
        for g, c in counts.items():
            total[g[:-1]] += c
            mass[g[:-1]] += d[min(c, 3) - 1]
        gamma = {h: mass[h] / total[h] for h in total}

        if n == 1:
            vocab = {g[0] for g in counts} | {EOS, UNK}
            uniform = gamma[()] / len(vocab)
            for w in vocab:
                c = counts.get((w,), 0)
                p = (max(c - d[min(c, 3) - 1], 0.0) if c else 0.0) / total[()] + uniform
                model.prob[1][(w,)] = math.log10(p)
            model.prob[1][(BOS,)] = LOG10_ZERO
        else:
            lower = model.prob[n - 1]
            for g, c in counts.items():
                p = (c - d[min(c, 3) - 1]) / total[g[:-1]] + gamma[g[:-1]] * 10 ** lower[g[1:]]
                model.prob[n][g] = math.log10(p)
            for h, gm in gamma.items():
                model.backoff[n - 1][h] = math.log10(gm)
    log.info(
        "built a %d-gram model from %d sentences: %s",
        order,
        n_sent,
        ", ".join(f"{len(model.prob[n])} {n}-grams" for n in range(1, order + 1)),
    )
    return model


def build_arpa(text: str | Path, out: str | Path, order: int = 4, lowercase: bool = True) -> NgramModel:
    """Build an interpolated modified Kneser-Ney model from a UTF-8 text file (a sentence a line; a byte-order
    mark is dropped) and write it to ``out`` as ARPA. Returns the model."""
    text = Path(text)
    if not text.is_file():
        raise FileNotFoundError(f"no text file {text}")
    try:
        with text.open(encoding="utf-8-sig") as f:  # a byte-order mark is no part of the first word
            model = build_kneser_ney(f, order, lowercase=lowercase, source=str(text))
    except UnicodeDecodeError as e:
        raise ValueError(f"{text}: not UTF-8 text ({e})") from e
    # words a CTC vocabulary of letters cannot spell ("hello," of "Hello, world."): evaluate --lm leaves them
    # out of its lexicon; said here, where the text can still be cleaned
    words = [w for w in model.vocabulary if w not in (BOS, EOS, UNK)]
    # letters of any script, with their marks (the vowel signs of हिंदी, a combining accent: categories M*)
    odd = sorted(w for w in words if not all(c.isalpha() or c == "'" or unicodedata.category(c)[0] == "M" for c in w))
    if odd:
        log.warning("%s: %d of %d words hold characters other than letters and ' (e.g. %s): a CTC vocabulary of "
                    "letters cannot spell them, and evaluate --lm leaves them out of its lexicon (unless the "
                    "checkpoint's vocabulary or text_mapping has those characters); strip punctuation from the text "
                    "first", text, len(odd), len(words), ", ".join(repr(w) for w in odd[:5]))
    model.write_arpa(out)
    log.info("wrote %s", out)
    return model
