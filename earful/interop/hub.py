"""A Hugging Face Hub model id where a transformers folder is taken (``import-hf``, ``--init``, a study's ``init``),
as ``from_pretrained`` takes one: ``ORG/NAME`` or ``ORG/NAME@REVISION`` (a branch, tag or commit), downloaded with
``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_OFFLINE`` and credentials) and read as the local
snapshot folder, whose name is the commit. Only the files ``import-hf`` reads are fetched: ``pytorch_model.bin``
(or its shards) only where the repository has no ``model.safetensors`` (nor its shards), as transformers chooses,
and then read as any ``.bin`` is (refused where it needs more than tensors, unless ``--trust-pickle``)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import re
from contextlib import suppress
from pathlib import Path
from typing import NamedTuple

from earful.atomic import atomic_write_json
from earful.checkpoint import MODEL_FILE, CheckpointError, sha256
from earful.interop.hf import (
    ADDED_TOKENS,
    BIN,
    HF_CONFIG,
    IMPORT_FILES,
    PREPROCESSOR,
    PROCESSOR,
    TOKENIZER,
    VOCAB,
    write_checkpoint,
)
from earful.lock import LOCK_FILE, lock_file

log = logging.getLogger(__name__)

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"  # the Hub's user and model names: 96 characters at most
_HUB_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]*))?")
_FOLDER_FILES = [HF_CONFIG, PREPROCESSOR, PROCESSOR, VOCAB, TOKENIZER, ADDED_TOKENS]  # what import-hf reads but weights
# model.safetensors or its shards (model-0000i-of-0000n): not every .safetensors (MMS's 1000 adapter files)
_SAFETENSORS = ["model*.safetensors", f"{MODEL_FILE}.index.json"]
_PICKLES = ["pytorch_model*.bin", f"{BIN}.index.json"]
IMPORTS = "imports"  # the earful cache's folder of imported transformers models, beside the probes' features
SOURCE_FILE = "source.json"  # beside an import's checkpoint: what it was imported from; its mtime, its last use


def hub_folder(spec: str, key: str) -> Path | None:
    """The local snapshot of Hub model ``spec`` (``ORG/NAME[@REVISION]``), downloaded if need be; None where ``spec``
    is a path that exists or has not the shape of a model id. ``key``: what was given (``--init``, ``import-hf``),
    which the error names: a FileNotFoundError saying both, as a mistyped relative path (``runs/pt``) has the shape."""
    found = _HUB_ID.fullmatch(spec)
    if Path(spec).exists() or found is None or ".." in spec or "--" in found["repo"]:
        return None
    repo, revision = found["repo"], found["revision"]
    not_found = f"{key} {spec}: no such file or folder, nor a model on the Hugging Face Hub"
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise FileNotFoundError(f"{not_found} (a Hub model id needs the huggingface_hub package, {e}: "
                                "pip install 'earful[hub]')") from None
    try:
        folder = Path(snapshot_download(repo_id=repo, revision=revision, allow_patterns=_FOLDER_FILES + _SAFETENSORS))
        if not any((folder / name).exists() for name in (MODEL_FILE, f"{MODEL_FILE}.index.json")):
            folder = Path(snapshot_download(repo_id=repo, revision=folder.name, allow_patterns=_PICKLES))
    except Exception as e:  # noqa: BLE001 - the Hub's errors (not found, gated, offline without a copy) are its own
        said = " ".join(str(e).split())  # the Hub's messages run over several lines
        raise FileNotFoundError(f"{not_found} ({type(e).__name__}: {said})") from None
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    log.info("%s: the Hugging Face Hub's %s at %s, commit %s: %s in %s", key, repo, revision or "main", folder.name,
             ", ".join(files) or "no files", folder)
    return folder


def complete(ckpt: Path) -> bool:
    """Whether the import ``ckpt`` holds its checkpoint (else it is imported again)."""
    return all((ckpt / name).is_file() for name in IMPORT_FILES)


class Imported(NamedTuple):
    """An imported transformers model: its earful checkpoint, and what it was imported from this time (the
    folder, absolute, or ``ORG/NAME@COMMIT``), the name results give it in place of the checkpoint's digest."""

    ckpt: Path
    imported_from: str


def import_sources(ckpt: Path) -> list[str]:
    """What the import ``ckpt`` was imported from (folders, ``ORG/NAME@COMMIT``: one model may come from several),
    the last used last; none where its ``source.json`` is missing or unreadable (an earlier earful's import)."""
    try:
        record = json.loads((ckpt / SOURCE_FILE).read_text(encoding="utf-8"))
        sources = record["sources"] if "sources" in record else [record["source"]]  # an earlier earful's: one
        return [str(s) for s in sources]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def _mark_used(ckpt: Path, source: str) -> None:
    """Record that ``source`` was used as the import ``ckpt`` now: ``source.json``'s time is the import's last use
    (``earful cache list``, ``remove --older-than``), its list every source it came from (``remove --upstream``)."""
    known = import_sources(ckpt)
    if known and known[-1] == source:
        os.utime(ckpt / SOURCE_FILE)
    else:
        atomic_write_json(ckpt / SOURCE_FILE, {"sources": [s for s in known if s != source] + [source]})


def _remove_if_empty(ckpt: Path) -> None:
    """Remove the import folder ``ckpt`` where it holds its lock alone (an import refused before it wrote anything);
    anything else there, or a removal that fails, leaves it as it is."""
    with suppress(OSError):
        if all(p.name == LOCK_FILE for p in ckpt.iterdir()):
            (ckpt / LOCK_FILE).unlink(missing_ok=True)
            ckpt.rmdir()


def imports_folder(features: str | os.PathLike | None = None) -> Path:
    """The folder of imported models: ``imports`` beside the feature cache ``features`` (by default
    :func:`earful.probe.features.default_cache_dir`'s, so ``$EARFUL_CACHE/imports``)."""
    from earful.probe.features import default_cache_dir

    return Path(features or default_cache_dir()).parent / IMPORTS


def imported_checkpoint(spec: str, key: str, imports: Path | None = None) -> Imported | None:
    """The earful checkpoint of the transformers folder or Hub model id ``spec``, imported once (as import-hf does)
    into ``imports/DIGEST`` (``imports``, by default :func:`imports_folder`'s: beside the probes' features in the
    earful cache): DIGEST is the SHA-256 of the folder's weights (:func:`earful.train.init.resolve_init`) and of the
    files import reads beside them (config.json, the feature extractor's, the vocabulary's), so the same model,
    wherever it lies, is imported once. Its ``source.json`` records what it was imported from (the folder, or
    ``ORG/NAME@COMMIT``; every source of the same model), and a use touches it, for ``earful cache list|remove``.
    The entry's lock is held, exclusively, while it is imported or marked used. A cache this process may not write
    (read-only, another user's) serves an import it holds whole, as it is, not marked used. None where ``spec`` is
    neither (an earful checkpoint, a run folder, a path not there). Pickled weights that need more than tensors are
    refused: only ``import-hf --trust-pickle`` reads them. ``key``: the command."""
    from earful.train.init import resolve_init
    from earful.train.state import resolve_checkpoint

    hub = hub_folder(spec, key)
    folder = hub or Path(spec)
    if not (folder / HF_CONFIG).is_file() or resolve_checkpoint(folder) is not None:
        return None
    digest = hashlib.sha256(str(resolve_init(str(folder), key).sha256).encode())  # the weights, then the settings:
    for name in _FOLDER_FILES:  # another config.json or preprocessor (do_normalize) is another model
        if (folder / name).is_file():
            digest.update(f"{name} {sha256(folder / name)}\n".encode())
    ckpt = (imports or imports_folder()) / digest.hexdigest()
    source = f"{_HUB_ID.fullmatch(spec)['repo']}@{hub.name}" if hub else str(folder.resolve())  # type: ignore[index]
    try:
        # held alone while it is imported: `earful cache remove` leaves it be, and another importer of the same
        # model (another host's, on a shared cache, whose .tmp-PID atomic_folder took for a dead process's and
        # removed) waits, then finds it whole
        created = not ckpt.exists()
        with lock_file(ckpt / LOCK_FILE):
            if not complete(ckpt):  # else imported before
                try:
                    write_checkpoint(folder, ckpt)
                except Exception as e:
                    if created:  # refused (another model_type, pickled weights): no empty import left to list
                        _remove_if_empty(ckpt)
                    if isinstance(e, CheckpointError) and isinstance(e.__cause__, pickle.UnpicklingError):
                        raise CheckpointError(f"{e} {key} takes no --trust-pickle: import it yourself, `earful "
                                              f"import-hf {spec} CKPT --trust-pickle`, and give CKPT") from e
                    raise
            _mark_used(ckpt, source)
    except OSError as e:  # a cache this process may not write (a shared one): its import serves as the features do
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        if not complete(ckpt):
            raise OSError(e.errno, f"{ckpt.parent}: cannot import {spec} into the earful cache ({e.strerror}); set "
                          f"EARFUL_CACHE (or give --cache) to a folder you may write, or run `earful import-hf "
                          f"{spec} CKPT` and give CKPT") from None
        log.info("%s: cannot write in the earful cache (%s): its import used as it is, not marked used", ckpt,
                 e.strerror)
    log.info("%s: a transformers folder, imported once as %s", spec, ckpt)
    return Imported(ckpt, source)
