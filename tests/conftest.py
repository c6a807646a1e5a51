import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them (one thread a worker under pytest-xdist).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class Hung(BaseException):
    """What ``deadline`` raises: not TimeoutError, an OSError, which a loader counts as one more bad file; not an
    Exception, which code that turns a library's errors into its own (a tracker's start) would catch and pass on
    as the error the test expects."""


@pytest.fixture
def deadline() -> Callable[[int, str], AbstractContextManager[None]]:
    """``with deadline(30, "the loader"):`` ends the block in ``Hung`` after that many seconds (SIGALRM): a test of
    code that used to spin for ever fails instead of hanging the suite."""
    @contextmanager
    def within(seconds: int, what: str) -> Iterator[None]:
        def hung(*_: object) -> None:
            raise Hung(f"{what} went on for {seconds} s without an end")

        before = signal.signal(signal.SIGALRM, hung)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, before)

    return within


# ``python -c PAUSING_CLI STEP FOLDER ARGS...`` is ``python -m earful.cli ARGS...`` whose trainer pauses after step
# STEP (``tests/pausing.py``, with FOLDER's files)
PAUSING_CLI = f"""
import sys
from pathlib import Path

sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from pausing import pause_after

pause_after(int(sys.argv[1]), Path(sys.argv[2]))
sys.argv = ["earful", *sys.argv[3:]]
from earful.cli import run

run()
"""


class PausedTraining:
    """A command-line training that pauses after step ``at`` (PAUSING_CLI): ``command(args)`` starts it, ``wait``
    returns once it has paused, ``go`` lets it go on (a signal handled by then has already let it go on). A signal
    sent between the two lands in that step, at a known point of the run, not in a race with its end."""

    def __init__(self, folder: Path, at: int) -> None:
        self.folder, self.at = folder, at
        folder.mkdir(parents=True, exist_ok=True)

    def command(self, cli_args: list[str]) -> list[str]:
        return [sys.executable, "-c", PAUSING_CLI, str(self.at), str(self.folder), *cli_args]

    def wait(self, proc: subprocess.Popen, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while not (self.folder / "paused").exists():
            if proc.poll() is not None:
                err = proc.communicate()[1] or ""
                pytest.fail(f"the run ended (status {proc.returncode}) before pausing after step {self.at}:\n"
                            f"{err[-3000:]}")
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the run did not reach step {self.at} in {seconds:g} s")
            time.sleep(0.05)

    def go(self) -> None:
        (self.folder / "go").touch()


@pytest.fixture
def paused_training(tmp_path) -> Callable[[int], PausedTraining]:
    """``paused_training(5)``: a PausedTraining that pauses after step 5, its files in tmp_path/pause."""
    return lambda at: PausedTraining(tmp_path / "pause", at)


@dataclass
class FakeHub:
    """The Hugging Face Hub's models as ``repos`` ({repo id: a local folder}, which the test fills), downloaded by
    ``snapshot_download`` (patched) as huggingface_hub does: the files its allow_patterns match, into a snapshot
    folder named by the commit (``commit``, every repository's); ``calls``: (repo_id, revision, allow_patterns) of
    each download."""

    cache: Path
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    repos: dict[str, Path] = field(default_factory=dict)
    calls: list[tuple[str, str | None, list[str]]] = field(default_factory=list)

    def snapshot_download(self, *, repo_id: str, revision: str | None = None, allow_patterns: list[str],
                          **kwargs) -> str:
        import httpx
        from huggingface_hub.utils import RepositoryNotFoundError

        self.calls.append((repo_id, revision, allow_patterns))
        if repo_id not in self.repos:
            url = f"https://huggingface.co/api/models/{repo_id}/revision/{revision or 'main'}"
            raise RepositoryNotFoundError(f"404 Client Error.\n\nRepository Not Found for url: {url}.",
                                          response=httpx.Response(404, request=httpx.Request("GET", url)))
        snapshot = self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / self.commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for f in self.repos[repo_id].iterdir():
            if any(fnmatch(f.name, pattern) for pattern in allow_patterns):
                shutil.copyfile(f, snapshot / f.name)
        return str(snapshot)


@pytest.fixture
def hub_models(monkeypatch, tmp_path) -> FakeHub:
    """huggingface_hub.snapshot_download without the network (:class:`FakeHub`); the working folder tmp_path, where
    no ORG/NAME folder is."""
    import huggingface_hub

    hub = FakeHub(tmp_path / "hf-cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.chdir(tmp_path)
    return hub


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def _write_corpus(root, n: int, seconds: tuple[float, float], seed: int = 0, name: str = "train"):
    """Speech-like test audio (harmonic bursts with pitch glides + noise) and its manifest."""
    import numpy as np
    import soundfile as sf

    from earful.data.manifest import Utterance, write_manifest

    rs = np.random.RandomState(seed)
    sr = 16000
    root.mkdir(parents=True, exist_ok=True)
    utts = []
    for i in range(n):
        dur = rs.uniform(*seconds)
        t = np.arange(int(dur * sr)) / sr
        f0 = rs.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rs.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 8))
        env = (np.sin(2 * np.pi * rs.uniform(2, 5) * t) > -0.2).astype(float)
        x = 0.1 * x * env + 0.005 * rs.randn(len(t))
        path = root / f"{name}-{i:04d}.wav"
        sf.write(path, x.astype(np.float32), sr)
        utts.append(Utterance(id=f"{name}-{i:04d}", path=str(path), num_samples=len(t), sample_rate=sr,
                              speaker=f"spk{i % 3}", transcript=None))
    manifest = root / f"{name}.jsonl"
    write_manifest(utts, manifest)
    return manifest


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """(train manifest, valid manifest): 24 + 6 utterances of 1-2.5 s."""
    root = tmp_path_factory.mktemp("corpus")
    return _write_corpus(root, 24, (1.0, 2.5), 0, "train"), _write_corpus(root, 6, (1.0, 2.0), 1, "valid")


@pytest.fixture(scope="session")
def odd_corpus(tmp_path_factory):
    """10 utterances of exactly 2 s: every batch of 4 s holds 2 (no padding), 5 batches an epoch, which do not
    divide among 2 ranks: 2 micro-batches a step cross the epoch boundary within step 3."""
    root = tmp_path_factory.mktemp("odd")
    return _write_corpus(root, 10, (2.0, 2.0), 3, "train")


def _tone_helpers():
    """``tests/finetune/conftest.py``'s tone speech with transcripts (module helpers of a conftest are not
    importable under ``--import-mode=importlib``: loaded by path)."""
    spec = importlib.util.spec_from_file_location("_tone_speech", Path(__file__).parent / "finetune" / "conftest.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# utterances of 0.6 to 4 s: the longest is over 3x the shortest, so batches of them are padded a lot
TONE_TEST_TEXTS = ["bad", "bead cage face dead", "cafe", "head face", "fad bad cafe beef head", "dab", "cage fad",
                   "dead beef ace"]  # fmt: skip


@pytest.fixture(scope="session")
def tone_ctc(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, test manifest): a tiny CTC model fine-tuned for 150 steps on four tone-speech utterances,
    which spells parts of their words, and a labelled test split of other tone-speech utterances."""
    from earful.finetune.config import load_finetune_config
    from earful.finetune.task import FinetuneTask
    from earful.train.engine import Trainer
    from earful.train.state import resolve_checkpoint

    tones = _tone_helpers()
    root = tmp_path_factory.mktemp("tone-ctc")
    train = tones.write_labelled(root, tones.TRAIN_TEXTS, "train", 0)
    test = tones.write_labelled(root, TONE_TEST_TEXTS, "test", 2)
    cfg = load_finetune_config(None, [
        "model_preset=tiny", "init=scratch", f"data.train={train}", "data.valid=null", "max_steps=150",
        "data.num_workers=0",
        "tensorboard=false", "threads=1", "valid_every=0", "optim.lr=5e-3", "freeze_transformer_steps=10",
        "model.dropout=0", "model.mask_prob=0",
    ])  # fmt: skip
    Trainer(FinetuneTask(cfg), root / "run").fit()
    return resolve_checkpoint(root / "run"), test
