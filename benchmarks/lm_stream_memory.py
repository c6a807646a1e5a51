"""The LM beam search's memory on a long recording: searched in blocks with its history pruned behind it (what
``LMBeamDecoder`` does past ``STREAM_FRAMES``) against the peer, one whole search of the same emissions (what it
did before, and still does for shorter utterances). The emissions spell sentences of a small corpus (a blank after
each character, log-probabilities with Gaussian noise of ``--noise``), the LM a Kneser-Ney 3-gram of that corpus,
built here. Each search runs in a fresh process: its peak resident memory (VmHWM, reset before the search) less
what was resident before it, and its wall-clock; the two transcripts are compared (the same words, or how many
differ). The streamed search's peak still grows a little with the recording: the emissions' own copies (29 floats a
frame), not the search's.

Run by hand: ``python benchmarks/lm_stream_memory.py [--minutes 16] [--beam 50] [--noise 2.0]`` (needs
``pip install 'earful[lm]'``; 16 minutes of frames: a few seconds a search).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CORPUS = ["the cat sat on the mat", "the dog sat on the rug", "the dog was sad", "a cat sat", "the mat was sad"]
FRAMES_A_SECOND = 50

ONE_SEARCH = r"""
import json, random, sys, time
from pathlib import Path
import torch
from earful.eval import beam
from earful.eval.beam import BeamOptions, LMBeamDecoder
from earful.eval.vocab import CharVocab

mode, lm, frames, beam_size, noise, corpus = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \
    float(sys.argv[5]), json.loads(sys.argv[6])
vocab, rng = CharVocab(), random.Random(0)
rows = []
while len(rows) < frames:  # (frames, vocab): each character's frame, then a blank's
    for ch in " ".join(rng.choice(corpus) for _ in range(20)) + " ":
        for symbol in ("|" if ch == " " else ch, None):
            row = torch.full((len(vocab),), -5.0)
            row[0 if symbol is None else vocab.index(symbol)] = 2.0
            rows.append(row)
x = torch.stack(rows[:frames])
del rows
x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
decoder = LMBeamDecoder(vocab, lm, options=BeamOptions(beam=beam_size))
if mode == "whole":
    beam.STREAM_FRAMES = frames + 1


def status_kb(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in lines if x.startswith(field + ":")).split()[1])


Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to what is resident now (Linux): the peak is the search's
before = status_kb("VmRSS")
t0 = time.perf_counter()
text = decoder.decode(x[None])[0]
seconds = time.perf_counter() - t0
print(json.dumps({"mib": (status_kb("VmHWM") - before) / 1024, "seconds": seconds, "text": text}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=16.0, help="the recording's length")
    ap.add_argument("--beam", type=int, default=50)
    ap.add_argument("--noise", type=float, default=2.0, help="the emissions' Gaussian noise (0: clean)")
    args = ap.parse_args()
    from earful.eval.lm import build_kneser_ney

    frames = int(args.minutes * 60 * FRAMES_A_SECOND)
    with tempfile.TemporaryDirectory() as tmp:
        lm = Path(tmp) / "lm.arpa"
        build_kneser_ney(CORPUS * 3, order=3).write_arpa(lm)
        got = {}
        for mode in ("streamed", "whole"):
            run = subprocess.run([sys.executable, "-c", ONE_SEARCH, mode, str(lm), str(frames), str(args.beam),
                                  str(args.noise), json.dumps(CORPUS)], capture_output=True, text=True, check=True)
            got[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    streamed, whole = got["streamed"], got["whole"]
    a, b = streamed["text"].split(), whole["text"].split()
    differ = sum(x != y for x, y in zip(a, b, strict=False)) + abs(len(a) - len(b))
    print(f"{args.minutes:g} min ({frames} frames), beam {args.beam}, noise {args.noise:g}, {len(b)} words")
    print(f"  streamed: {streamed['mib']:7.1f} MiB more at the peak, {streamed['seconds']:.1f} s")
    print(f"  whole:    {whole['mib']:7.1f} MiB more at the peak, {whole['seconds']:.1f} s")
    print(f"  memory, whole / streamed: {whole['mib'] / max(streamed['mib'], 0.1):.0f}x; "
          f"{'the same words' if differ == 0 else f'{differ} word(s) differ'}")


if __name__ == "__main__":
    main()
