"""Real-time factor of ``earful transcribe`` on this machine: chunked against whole files, per model preset.

    python benchmarks/transcribe_rtf.py --preset small --preset base --seconds 60 --seconds 300

RTF = seconds of processing / seconds of audio, end to end through
:func:`earful.eval.transcribe.transcribe_files` (reading the file, the model in fp32, joining the windows'
logits, greedy decoding). The model has random weights (the time does not depend on them) and a 29-symbol CTC
head; the audio is speech-like noise in a 16 kHz FLAC file. Each file is transcribed whole (one forward over
the file) and in windows of ``--chunk-seconds`` with strides of chunk / 6 (the default of ``earful
transcribe`` and transformers' pipeline), batched up to ``--device-seconds``. The two run in turns after a
warm-up; medians over ``--reps`` are printed as CPU time (this process's, all threads: what a machine shared
with other work disturbs least; with one thread on an idle machine, the wall-clock time) and as wall-clock
time, with the ratio chunked / whole of the CPU times. Peak memory: in a fresh child process per way, the RSS
high-water mark (``VmHWM``, reset once the model is built) over a transcription, minus the RSS before it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from earful.eval.transcribe import transcribe_files
from earful.eval.vocab import CharVocab
from earful.model import Wav2Vec2ForCTC, load_model_config


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic bursts with a gliding pitch and a little noise, 16 kHz."""
    rs = np.random.RandomState(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 140 * (1 + 0.2 * np.sin(2 * np.pi * 1.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (np.sin(2 * np.pi * 3 * t) > -0.3)
    return (0.1 * x + 0.005 * rs.randn(len(t))).astype(np.float32)


def model_of(preset: str) -> tuple[Wav2Vec2ForCTC, CharVocab]:
    torch.manual_seed(0)
    vocab = CharVocab()
    return Wav2Vec2ForCTC(load_model_config(preset), len(vocab)).eval(), vocab


def rss_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def transcribe_all(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """``transcribe_files`` run to the end: it yields its records as files finish (called alone, it only checks)."""
    return list(transcribe_files(*args, **kwargs))


def peak_mib(preset: str, path: Path, chunk: float, device_seconds: float, threads: int) -> float:
    """RSS growth (MiB) of a child process transcribing ``path`` once."""
    here = str(Path(__file__).resolve().parent)  # not 'benchmarks': the child runs in whatever folder this one does
    code = (f"import sys, torch; sys.path.insert(0, {here!r}); import transcribe_rtf as b; "
            f"torch.set_num_threads({threads}); m, v = b.model_of({preset!r}); r0 = b.rss_kib('VmRSS'); "
            "open('/proc/self/clear_refs', 'w').write('5'); "  # the peak (VmHWM) starts again from here
            f"b.transcribe_all(m, v, [{str(path)!r}], chunk_seconds={chunk}, device_seconds={device_seconds}); "
            "print((b.rss_kib('VmHWM') - r0) / 1024)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", help="model preset (repeatable; default small and base)")
    p.add_argument("--seconds", type=float, action="append", help="file length (repeatable; default 60 and 300)")
    p.add_argument("--chunk-seconds", type=float, default=20.0)
    p.add_argument("--device-seconds", type=float, default=200.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    args = p.parse_args()
    if args.reps < 1:
        p.error(f"--reps {args.reps}: expected at least 1")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.preset or ["small", "base"]:
            model, vocab = model_of(preset)
            for seconds in args.seconds or [60.0, 300.0]:
                path = Path(tmp) / f"{seconds:g}s.flac"
                sf.write(path, speechlike(seconds), 16000)
                modes = {"whole": 0.0, "chunked": args.chunk_seconds}
                runs = {m: partial(transcribe_all, model, vocab, [path], chunk_seconds=c,
                                   device_seconds=args.device_seconds) for m, c in modes.items()}  # fmt: skip
                for run in runs.values():
                    run()  # warm-up
                cpu: dict[str, list[float]] = {m: [] for m in modes}
                wall: dict[str, list[float]] = {m: [] for m in modes}
                for r in range(args.reps):  # in turns: whole, chunked, chunked, whole, ...
                    for m in list(modes) if r % 2 == 0 else list(modes)[::-1]:
                        c0, w0 = time.process_time(), time.perf_counter()
                        runs[m]()
                        cpu[m].append((time.process_time() - c0) / seconds)
                        wall[m].append((time.perf_counter() - w0) / seconds)
                rtf = {m: statistics.median(cpu[m]) for m in modes}
                rtf_wall = {m: statistics.median(wall[m]) for m in modes}
                memory = ""
                if not args.no_memory:
                    mib = {m: peak_mib(preset, path, c, args.device_seconds, args.threads) for m, c in modes.items()}
                    memory = f" | peak RSS growth MiB whole {mib['whole']:.0f}, chunked {mib['chunked']:.0f}"
                print(f"{preset}, {seconds:g} s file, {args.threads} threads: RTF (CPU s / audio s) whole "
                      f"{rtf['whole']:.4f}, chunked ({args.chunk_seconds:g} s windows) {rtf['chunked']:.4f}, "
                      f"chunked / whole {rtf['chunked'] / rtf['whole']:.2f} | wall-clock RTF {rtf_wall['whole']:.4f}, "
                      f"{rtf_wall['chunked']:.4f}{memory}", flush=True)


if __name__ == "__main__":
    main()
