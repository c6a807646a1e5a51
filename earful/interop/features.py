"""``earful features``: per-layer representations for probing, in `transformers`' convention."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from earful.atomic import atomic_save_npy, atomic_write_json
from earful.checkpoint import read_json, same_weights
from earful.data.budget import SAMPLE_RATE
from earful.data.manifest import MANIFEST_SUFFIX
from earful.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, batch_invariant

log = logging.getLogger(__name__)


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    if isinstance(model, Wav2Vec2ForPreTraining | Wav2Vec2ForCTC):
        return model.wav2vec2
    raise TypeError(f"not an earful model: {type(model).__name__}")


@torch.no_grad()
def layer_states(backbone: torch.nn.Module, waves: list[torch.Tensor]) -> list[torch.Tensor]:
    """``(frames, layers + 1, dim)`` per utterance: the transformer's input and every layer's output.

    The utterances go through as one zero-padded batch: the backbone is batch-invariant (the CNN's GroupNorm
    over real samples, padded keys masked), so each utterance gets what it gets alone (within float rounding;
    ``tests/probe`` checks it). A batch of one is not padded: exactly what the utterance gets alone."""
    device = waves[0].device  # the backbone's
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long, device=device)  # (batch,)
    batch = torch.zeros(len(waves), int(lengths.max()), device=device)  # (batch, samples)
    for row, w in enumerate(waves):
        batch[row, : len(w)] = w
    padded = bool((lengths < batch.shape[1]).any())
    out = backbone(batch, lengths if padded else None, output_hidden_states=True)
    states = torch.stack(out.hidden_states, dim=2)  # (batch, frames, layers + 1, dim)
    return [states[row, : int(n)] for row, n in enumerate(out.frame_lengths)]


def layer_features(model: torch.nn.Module, wave: np.ndarray, chunk: int = 0, stride: int = 0) -> np.ndarray:
    """(layers + 1, frames, dim): the transformer's input and every layer's output for one utterance
    (:func:`layer_states` of a batch of one, in `transformers`' layer-first order). With ``chunk`` samples (whole
    frames; ``earful.eval.transcribe.window_samples``), a longer utterance goes through in windows that overlap by
    ``stride`` samples of context on each side, whose frames are dropped, as ``earful transcribe`` cuts long
    files: attention's memory stays that of one window. A window shorter than the receptive field is zero-padded
    to it (the last one may be)."""
    from earful.eval.transcribe import chunk_spans, kept_frames

    backbone = backbone_of(batch_invariant(model)).eval()
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))  # (samples,)
    cfg = backbone.cfg
    parts = []
    for c in chunk_spans(len(x), chunk, stride, stride):
        window = x[c.start : c.start + c.length]
        window = torch.nn.functional.pad(window, (0, max(0, cfg.receptive_field - len(window))))
        states = layer_states(backbone, [window])[0]  # (frames, layers + 1, dim)
        first, end = kept_frames(c, cfg.total_stride, states.shape[0]) if c.length < len(x) else (0, len(states))
        parts.append(states[first:end])
    return torch.cat(parts).transpose(0, 1).contiguous().numpy()


# in --out: the checkpoint its .npy files are of, how they were made (ALL_OF's keys), and the audio file of each
RECORD = "features.json"


def _earlier_files(out: Path, record: dict[str, Any]) -> dict[str, str]:
    """The files an earlier ``earful features`` wrote in ``out`` (its :data:`RECORD`), which this run keeps beside
    its own where it is of the same checkpoint (by the weights' SHA-256; by path where one records none), as
    ``evaluate`` keeps its splits. Another checkpoint's, or .npy files that record none, are refused before any
    work: the folder had held two checkpoints' features with nothing to tell which file was whose. The record lists
    the files a run set out to write (it is written first): those not there (a run that failed) are not held."""
    path = out / RECORD
    if not path.is_file():
        stray = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) if out.is_dir() else []
        if stray:
            raise ValueError(f"{out}: holds {len(stray)} .npy file(s) ({', '.join(stray[:3])}) and no {RECORD} to "
                             f"say which checkpoint they are of, which these ({record['checkpoint']}) would mix with; "
                             f"give another --out, or remove {out}")
        return {}
    saved = read_json(path)  # corrupt: a CheckpointError naming it
    try:
        files = {str(k): str(v) for k, v in saved["files"].items()}
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: not a record of earful features (no files); give another --out, or remove "
                         f"{out}") from None
    files = {name: audio for name, audio in files.items() if (out / name).is_file()}
    if not files:  # a run that wrote nothing (its first file failed): nothing to mix with
        return {}
    if not same_weights(saved, record):
        where = str(saved.get("checkpoint"))
        what = ("other weights of the same checkpoint folder (changed since, e.g. a resumed run's `best`: "
                if Path(where).resolve() == Path(record["checkpoint"]).resolve() else "another checkpoint (")
        raise ValueError(f"{out}: holds the features of {what}{where}: {len(files)} file(s)), which these "
                         f"({record['checkpoint']}) would mix with; give another --out, or remove {out}")
    # a record of before --layers and --dtype: all, float32; of before the windows were recorded: whole files, the
    # default then as now (a folder chunked then reads as whole files: what it holds cannot tell)
    made = {k: saved.get(k, ALL_OF[k]) for k in ALL_OF}
    want = {k: record[k] for k in ALL_OF}
    if made != want:
        raise ValueError(f"{out}: holds features of other layers, precision or windows ({made}), which these "
                         f"({want}) would mix with; give another --out, or remove {out}")
    return files


LONG_SECONDS = 120.0  # a file longer than this, taken whole, is worth a word about --chunk-seconds
# what features.json records by default: every state, float32, whole files (windows: chunk_seconds and
# stride_seconds as taken, whole frames; 0 and 0 for whole files)
ALL_OF = {"layers": "all", "dtype": "float32", "chunk_seconds": 0.0, "stride_seconds": 0.0}
DTYPES = ("float32", "float16")


@dataclass
class Source:
    """One input of ``earful features``: the stem of the .npy it makes, what features.json records it as, and how
    its samples are read (an AudioError when they cannot be)."""

    stem: str
    record: str
    read: Callable[[], np.ndarray]


def audio_source(path: str) -> Source:
    """An audio file, named by its stem."""
    from earful.data.audio import load_audio

    return Source(Path(path).stem, str(Path(path).resolve()), lambda: load_audio(path))


def manifest_sources(manifest: str | os.PathLike) -> list[Source]:
    """A row of ``manifest`` each (a whole file or a segment of one), named by its id and recorded as
    ``MANIFEST#ID``; its audio checked against the row as training reads it (rate, length)."""
    from earful.data.audio import AudioError
    from earful.data.dataset import AudioDataset
    from earful.data.manifest import read_manifest

    utts = read_manifest(manifest)
    bad = next(((u.id, why) for u in utts if (why := _unfit_id(u.id))), None)
    if bad is not None:
        raise ValueError(f"{manifest}: utterance id {bad[0]!r} cannot name a file ({bad[1]}); give its audio files "
                         "instead, or other ids")
    audio = AudioDataset(utts)

    def read(i: int) -> np.ndarray:
        try:
            return audio[i].wave
        except AudioError as e:  # the file named by the loader; the row here
            raise AudioError(f"{manifest}: utterance {utts[i].id!r}: {e}") from None

    where = Path(manifest).resolve()
    return [Source(u.id, f"{where}#{u.id}", lambda i=i: read(i)) for i, u in enumerate(utts)]


NAME_MAX = 255 - len(".npy") - 16  # bytes of a file name, less .npy and the temporary copy's ``.NAME.XXXXXXXX.tmp``


def _unfit_id(uid: str) -> str | None:
    """Why utterance id ``uid`` cannot name ``ID.npy`` under --out (None: it can). A '/' makes subfolders, as
    `earful prepare` writes ids (``SPEAKER/BOOK/FILE-0003`` of Libri-light, a plain folder's ``SPEAKER/FILE``)."""
    parts = uid.split("/")
    if any(not part or part.startswith(".") for part in parts):
        return "an empty part, or one that starts with '.'"
    if "\0" in uid:
        return "a NUL character"
    if any(len(part.encode()) > NAME_MAX for part in parts):
        return f"a part longer than {NAME_MAX} bytes"
    return None


def sources_of(inputs: list[str]) -> list[Source]:
    """The sources of ``earful features``' inputs, in order: a manifest (:data:`MANIFEST_SUFFIX`) a row each,
    any other path an audio file, or a folder its audio files (:func:`earful.data.audio.audio_files_named`). A
    path not there, or a folder without audio, is refused before any work."""
    from earful.data.audio import audio_files_named

    return [s for path in inputs
            for s in (manifest_sources(path) if path.endswith(MANIFEST_SUFFIX) and Path(path).is_file()
                      else [audio_source(f) for f in audio_files_named(path)])]


def write_features(model: torch.nn.Module, sources: list[Source], out_dir: str | Path, *, checkpoint: str | Path,
                   weights_sha256: str | None, chunk_seconds: float = 0.0, stride_seconds: float | None = None,
                   layers: list[int] | None = None, dtype: str = "float32",
                   imported_from: str | None = None) -> tuple[list[Path], list[str]]:
    """``STEM.npy`` of each source (``audio_source``, ``manifest_sources``) in ``out_dir``, and :data:`RECORD`:
    ``checkpoint`` (whose weights' recorded SHA-256 is ``weights_sha256``) and the source of every .npy there.
    The record is written before the first file, so an interrupted run's files are attributed too, and again at
    the end with the files written. At every instant (a SIGKILL, which no handler sees, can come at any), a file
    the record lists that exists holds the features of the source it names: a file there of another source (an
    earlier run's, or one no record lists) stays listed as it was until the new one is saved over it, unlisted
    while it is, and listed under its new source once it is. A source that cannot be read (or is shorter than
    the model's receptive field) is reported and left out, as ``earful transcribe`` does: returns the files
    written and the problems of those left out. ``chunk_seconds`` (0: whole files) and ``stride_seconds``:
    :func:`layer_features`'s windows. ``layers``: the states kept (0 the transformer's input, ``i`` layer i's
    output; default all), in that order; ``dtype``: float32 or float16 (half the disk); ``imported_from``: the
    transformers folder or ``ORG/NAME@COMMIT`` that ``checkpoint`` (an import in the earful cache) was made from.
    These are recorded (the windows as taken, in whole frames), and an earlier run's files of other layers, dtype
    or windows are refused: windows change the features of a file longer than one."""
    from earful.data.audio import AudioError
    from earful.eval.transcribe import window_samples

    chunk, stride = window_samples(model.cfg, chunk_seconds, stride_seconds)  # before any work: a bad option
    states = model.cfg.num_layers + 1
    if layers is not None and (not layers or len(set(layers)) != len(layers)
                               or any(not 0 <= i < states for i in layers)):
        raise ValueError(f"layers (--layers) = {layers}: expected distinct states 0 (the transformer's input) to "
                         f"{states - 1} (its last layer's output)")
    if dtype not in DTYPES:
        raise ValueError(f"dtype (--dtype) = {dtype!r}: expected one of {', '.join(DTYPES)}")

    stems: dict[str, Source] = {}
    for src in sources:  # before any work: two inputs would write one file
        if src.stem in stems:
            raise ValueError(f"{src.record}: shares the stem {src.stem!r} with {stems[src.stem].record}; their .npy "
                             "files would collide")
        stems[src.stem] = src
    out = Path(out_dir)
    record: dict[str, Any] = {"checkpoint": str(Path(checkpoint).resolve()), "weights_sha256": weights_sha256,
                              "layers": list(layers) if layers is not None else "all", "dtype": dtype,
                              "chunk_seconds": chunk / SAMPLE_RATE, "stride_seconds": stride / SAMPLE_RATE,
                              **({"imported_from": imported_from} if imported_from else {})}
    earlier = _earlier_files(out, record)
    out.mkdir(parents=True, exist_ok=True)
    # files there of other sources (listed under them by an earlier run, or not listed): listed as they are until
    # rewritten, not under the new source while they still hold the old one's features
    stale = {stem for stem, src in stems.items()
             if (out / f"{stem}.npy").is_file() and earlier.get(f"{stem}.npy") != src.record}
    files = dict(earlier)
    files.update({f"{stem}.npy": src.record for stem, src in stems.items() if stem not in stale})
    atomic_write_json(out / RECORD, {**record, "files": files})
    written, problems = [], []

    def as_before(stem: str) -> None:  # the record of ``stem``'s file as the earlier run left it (or none)
        name = f"{stem}.npy"  # the key of features.json (with the id's subfolders)
        if name in earlier:
            files[name] = earlier[name]
        else:
            files.pop(name, None)

    todo = dict(stems)  # not yet written or left out
    try:
        for stem, src in tqdm(stems.items(), desc="features", unit="file", disable=len(stems) < 2):
            target = out / f"{stem}.npy"
            try:
                wave = src.read()
                if not chunk and len(wave) > LONG_SECONDS * SAMPLE_RATE:
                    log.warning("%s: %.0f s in one window (attention's memory grows with its square); "
                                "--chunk-seconds 30 takes it in overlapping windows", src.record,
                                len(wave) / SAMPLE_RATE)
                feats = layer_features(model, wave, chunk, stride)  # (layers + 1, frames, dim)
                feats = (feats if layers is None else feats[layers]).astype(dtype)
            except AudioError as e:  # left out; an earlier run's file of the same name stays, as it recorded it
                log.error("%s", e)
                problems.append(str(e))
                as_before(stem)
                del todo[stem]
                continue
            if stem in stale:  # unlisted while it is replaced: a kill during the save leaves either file
                files.pop(f"{stem}.npy", None)
                atomic_write_json(out / RECORD, {**record, "files": files})
            atomic_save_npy(target, feats)  # whole or absent, as every file earful writes
            files[f"{stem}.npy"] = src.record
            del todo[stem]
            if stem in stale:
                atomic_write_json(out / RECORD, {**record, "files": files})
            written.append(target)
            log.debug("%s -> %s %s", src.record, target, feats.shape)
    except BaseException:  # stopped part-way (Ctrl-C, an error): the files not rewritten are recorded as they are
        for stem in todo:
            if stem not in stale:  # a stale one is recorded as it is: as before, unlisted during its save
                as_before(stem)
        atomic_write_json(out / RECORD, {**record, "files": files})
        raise
    if problems:
        atomic_write_json(out / RECORD, {**record, "files": files})
    log.info("wrote %d of %d feature files to %s (%s: of %s)", len(written), len(stems), out, RECORD, checkpoint)
    return written, problems
