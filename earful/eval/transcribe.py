"""``earful transcribe``: text from audio files with a CTC checkpoint; long files in overlapping chunks.

Each file is read as the data loaders read audio (:func:`earful.data.audio.load_audio`: whatever libsndfile
decodes, any rate and channel count, downmixed and resampled to 16 kHz). A file longer than a chunk is cut as
`transformers`' ASR pipeline cuts it for CTC models (``chunk_length_s``, ``stride_length_s``): windows of
``chunk`` samples that overlap their neighbours by ``stride`` on each side, all three multiples of the
model's frame step (320 samples); each window's logits lose the frames of its strides (none at the file's
ends), the rest are joined in order and decoded as one: greedy CTC, and with an LM the lexicon beam search of
``earful evaluate``. So the model never sees more than one chunk of a file at a time: memory depends on the
chunk and the batch, not on the file (the waveform itself is held: 64 kB a second).

Windows of consecutive files share batches of at most ``device_seconds`` of padded audio. The model runs
batch-invariant (:func:`earful.model.batch_invariant`), so the batch changes no transcript in fp32 (in bf16 or
fp16 a near-tie frame can change with the batch's rounding), and a file's transcript is the pipeline's with the
same chunking (``chunk_seconds=0``: whole files, the pipeline's default). A file that cannot be read is named
(logged, and a record with its ``error``; a directory is said to be one), the others are transcribed; the caller
decides what failure means.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from earful.data.audio import AudioError, audio_info, load_audio
from earful.data.budget import SAMPLE_RATE
from earful.data.dataset import Item, collate
from earful.eval.beam import LMBeamDecoder
from earful.eval.decode import check_device_seconds, decode_batch
from earful.eval.vocab import CharVocab
from earful.model import ModelConfig, Wav2Vec2ForCTC, batch_invariant
from earful.train.distributed import resolve_device
from earful.train.step import autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """One window of a file: samples ``[start, start + length)``; the first ``left`` and last ``right`` of
    them are context whose frames are dropped; ``new`` samples of the file end in this window."""

    start: int
    length: int
    left: int
    right: int
    new: int


def chunk_spans(num_samples: int, chunk: int, stride_left: int, stride_right: int) -> list[Chunk]:
    """The windows of transformers' ``chunk_iter``: starts every ``chunk - stride_left - stride_right``
    samples, no left stride on the first window, no right stride on the last; ``chunk`` 0: one window."""
    if chunk <= 0 or num_samples <= chunk:
        return [Chunk(0, num_samples, 0, 0, num_samples)]
    step = chunk - stride_left - stride_right
    if step <= 0:
        raise ValueError(f"a chunk of {chunk} samples leaves nothing between strides of {stride_left} and "
                         f"{stride_right}: make the chunk longer or the strides shorter")
    spans: list[Chunk] = []
    covered = 0
    for start in range(0, num_samples, step):
        end = min(start + chunk, num_samples)
        last = start + chunk >= num_samples
        left = 0 if start == 0 else stride_left
        if end - start > left:  # transformers drops a last window that would be all stride
            spans.append(Chunk(start, end - start, left, 0 if last else stride_right, end - covered))
            covered = end
        if last:
            break
    return spans


def kept_frames(chunk: Chunk, frame_step: int, frames: int) -> tuple[int, int]:
    """[first, end) of the window's logit frames that are kept, as transformers' ``rescale_stride`` counts
    them (the window's frame count rounded from its samples, strides in proportion), within its ``frames``."""
    total = round(chunk.length / frame_step)
    left = round(chunk.left / chunk.length * total)
    right = round(chunk.right / chunk.length * total)
    return min(left, frames), max(min(total - right, frames), min(left, frames))


def window_samples(cfg: ModelConfig, chunk_seconds: float, stride_seconds: float | None) -> tuple[int, int]:
    """``(chunk, stride)`` in samples, whole frames of ``cfg``'s model, of windows of ``chunk_seconds`` with
    ``stride_seconds`` of context on each side (default chunk / 6, as transformers); ``chunk_seconds`` 0: whole
    files (0, 0). What would drop audio or be ignored is refused, naming the option: a stride without chunks, a
    chunk shorter than the receptive field, strides that leave nothing between them."""
    if stride_seconds is not None and chunk_seconds == 0:
        raise ValueError(f"stride_seconds (--stride-seconds) = {stride_seconds} with chunk_seconds (--chunk-seconds) "
                         "= 0: whole files go through the model in one window, without strides; give a chunk, or "
                         "leave the stride out")
    if stride_seconds is None:
        stride_seconds = chunk_seconds / 6
    for name, value in (("chunk_seconds", chunk_seconds), ("stride_seconds", stride_seconds)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) = {value}: expected a finite number of seconds "
                             ">= 0")
    step = cfg.total_stride  # samples a frame
    chunk = round(chunk_seconds * SAMPLE_RATE / step) * step
    stride = round(stride_seconds * SAMPLE_RATE / step) * step
    if chunk_seconds > 0 and chunk < cfg.receptive_field:  # 0.01 s would round to 0: whole files
        raise ValueError(f"chunk_seconds (--chunk-seconds) = {chunk_seconds}: shorter than the model's receptive "
                         f"field ({cfg.receptive_field / SAMPLE_RATE:g} s), a window would give no frame; "
                         "0 takes whole files")
    if chunk and chunk <= 2 * stride:
        raise ValueError(f"chunks of {chunk_seconds} s leave nothing between strides of {stride_seconds} s")
    return chunk, stride


@dataclass
class _Piece:
    file: int  # index into the file list
    chunk: Chunk
    wave: np.ndarray  # (length,) float32
    last: bool  # the file's last window


def _total_seconds(files: Sequence[str | Path]) -> float:
    total = 0.0
    for f in files:
        try:
            frames, rate = audio_info(f)
            total += frames / rate
        except AudioError:
            pass  # reported when the file is loaded
    return total


def transcribe_files(
    model: Wav2Vec2ForCTC,
    vocab: CharVocab,
    files: Sequence[str | Path],
    *,
    chunk_seconds: float = 20.0,
    stride_seconds: float | None = None,
    device_seconds: float = 200.0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    beam: LMBeamDecoder | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per file, in order, each as soon as its file is done (a caller writes it then, and keeps it
    when stopped later): ``{"path", "seconds", "text"}`` (with an LM ``text`` is its transcript and ``greedy``
    the greedy one), or ``{"path", "error"}`` for a file that could not be read.

    ``chunk_seconds`` 0 transcribes whole files; ``stride_seconds`` (default chunk / 6, as transformers) is
    the context on each side of a window; ``device`` "auto" is CUDA where there is one. The options are checked
    here, before the first record is asked for: a stride given with ``chunk_seconds`` 0 is refused (whole files
    have no windows, so it would be ignored without a word)."""
    check_device_seconds(device_seconds)
    chunk, stride = window_samples(model.cfg, chunk_seconds, stride_seconds)
    device = resolve_device(device, "--device")
    budget = max(int(device_seconds * SAMPLE_RATE), chunk)  # padded samples a batch
    return _records(batch_invariant(model).eval().to(device), vocab, files, chunk, stride, budget, device, precision,
                    beam)


@torch.no_grad()
def _records(model: Wav2Vec2ForCTC, vocab: CharVocab, files: Sequence[str | Path], chunk: int, stride: int,
             budget: int, device: torch.device, precision: str, beam: LMBeamDecoder | None) -> Iterator[dict[str, Any]]:
    """:func:`transcribe_files`' records, windows of ``chunk`` samples (``stride`` each side) in batches of at most
    ``budget`` padded samples."""
    step = model.cfg.total_stride  # samples a frame
    records: list[dict[str, Any]] = [{"path": str(f)} for f in files]
    pieces: dict[int, list[torch.Tensor]] = {}  # file -> kept logits of its windows so far
    done = 0  # records[:done] have been yielded

    def windows() -> Iterator[_Piece]:
        for i, path in enumerate(files):
            try:
                wave = load_audio(path)
            except AudioError as e:
                log.error("%s", e)
                records[i]["error"] = str(e)
                continue
            records[i]["seconds"] = round(len(wave) / SAMPLE_RATE, 3)
            spans = chunk_spans(len(wave), chunk, stride, stride)
            pieces[i] = []
            for k, c in enumerate(spans):
                yield _Piece(i, c, wave[c.start : c.start + c.length], k == len(spans) - 1)

    def finish(i: int) -> None:
        logits = torch.cat(pieces.pop(i), 0)[None]  # (1, frames, vocab)
        (greedy,), lm = decode_batch(logits, None, vocab, beam)
        if lm is None:
            records[i]["text"] = greedy
        else:
            records[i]["text"], records[i]["greedy"] = lm[0], greedy

    def run(batch: list[_Piece]) -> None:
        padded = collate([Item(j, records[p.file]["path"], p.wave) for j, p in enumerate(batch)])
        short = model.cfg.receptive_field - padded.wave.shape[1]
        if short > 0:  # at least one receptive field: a file's last window may be shorter (it has no frames)
            padded = replace(padded, wave=F.pad(padded.wave, (0, short)))
        with autocast(precision, device):
            logits, frames = model(*padded.model_inputs(device))
        logits, frames = logits.float().cpu(), frames.cpu()
        for j, p in enumerate(batch):
            first, end = kept_frames(p.chunk, step, int(frames[j]))
            pieces[p.file].append(logits[j, first:end])
            bar.update(p.chunk.new / SAMPLE_RATE)
            if p.last:
                finish(p.file)

    def ready() -> Iterator[dict[str, Any]]:
        """The records finished since the last call, in file order (a file waits for those before it)."""
        nonlocal done
        while done < len(records) and ("text" in records[done] or "error" in records[done]):
            yield records[done]
            done += 1

    batch: list[_Piece] = []
    longest = 0
    with tqdm(unit="s", desc="transcribe", disable=None) as bar:
        if not bar.disable:  # the bar's total: a pass over every file's header, only for a bar that shows
            bar.reset(total=round(_total_seconds(files), 1))
        for piece in windows():
            if batch and (len(batch) + 1) * max(longest, piece.chunk.length) > budget:
                run(batch)
                batch, longest = [], 0
            yield from ready()  # the files done with the batch just run, and unreadable ones before this piece
            batch.append(piece)
            longest = max(longest, piece.chunk.length)
        if batch:
            run(batch)
        yield from ready()  # the last batch's files, and unreadable files after the last readable one
