"""Every file earful writes appears whole or not at all (earful/atomic.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from earful.atomic import atomic_open, atomic_write_json
from earful.data.manifest import Utterance, read_manifest, write_manifest


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("disk on fire")
    assert path.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_successful_write_replaces_and_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.json"
    atomic_write_json(path, {"k": [1, 2]})
    atomic_write_json(path, {"k": 3})
    assert path.read_text(encoding="utf-8") == '{\n  "k": 3\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # readable as open() would leave it


def test_files_of_writers_that_replace_their_own_file_are_readable_as_open_leaves_them(tmp_path: Path) -> None:
    """safetensors' save_file writes a temporary of its own and renames it onto the path it is given, which
    undid the mode earful had set on that path: every model.safetensors was 0600 (a teammate or a serving
    account could read config.json beside it, not the weights). Whatever a writer does to the temporary path,
    the file appears with the mode open() gives a new file."""
    import torch

    from earful.checkpoint import atomic_save_tensors, atomic_torch_save

    plain = tmp_path / "plain"
    plain.write_text("")
    for name, write in (("model.safetensors", atomic_save_tensors), ("state.pt", atomic_torch_save)):
        write({"w": torch.zeros(2)}, tmp_path / name)
        assert (tmp_path / name).stat().st_mode & 0o777 == plain.stat().st_mode & 0o777, name


def test_the_file_then_its_rename_reach_the_disk(tmp_path: Path, monkeypatch) -> None:
    """fsync of the data before the rename, and of the folder after it: a power cut keeps the new name (POSIX
    promises the rename's durability only once its folder is flushed)."""
    import os
    import stat

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_json(tmp_path / "x.json", {"k": 1})
    assert synced == ["file", "folder"]


def test_append_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'a'"), atomic_open(tmp_path / "log.jsonl", "a"):
        pass


def test_manifest_interrupted_mid_write_keeps_the_old_manifest(tmp_path: Path) -> None:
    wav = tmp_path / "u.flac"
    old = [Utterance("u1", str(wav), 16000, 16000, "s1", "hello")]
    path = tmp_path / "train.jsonl"
    write_manifest(old, path)

    def rows():
        yield Utterance("u2", str(wav), 8000, 16000, "s2", "bye")
        raise KeyboardInterrupt  # the user stops the run while the manifest is being written

    with pytest.raises(KeyboardInterrupt):
        write_manifest(rows(), path)
    assert [u.id for u in read_manifest(path)] == ["u1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_a_file_system_that_cannot_flush_a_folder_still_gets_the_file(tmp_path: Path, monkeypatch) -> None:
    """Some network and FUSE file systems refuse fsync on a folder (EINVAL): the write stands."""
    import errno
    import os
    import stat

    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_json(tmp_path / "x.json", {"k": 1})
    assert (tmp_path / "x.json").read_text(encoding="utf-8") == '{\n  "k": 1\n}\n'


def test_manifests_written_together_appear_together(tmp_path: Path) -> None:
    """`earful prepare` wrote its manifests one after another: an error (a full disk, a folder where a manifest
    goes) or a kill between two left this run's beside an earlier run's. write_manifests writes them all first,
    then renames them, the caller's ``replacing`` around the renames alone."""
    from contextlib import contextmanager

    from earful.data.manifest import write_manifests

    rows = [Utterance(id=f"u{k}", path=str(tmp_path / f"u{k}.flac"), num_samples=16000, sample_rate=16000, speaker="s")
            for k in range(3)]
    old = {name: tmp_path / f"{name}.jsonl" for name in ("a", "b", "c")}
    for path in old.values():
        path.write_text("old\n", encoding="utf-8")
    (tmp_path / "b.jsonl").unlink()
    (tmp_path / "b.jsonl").mkdir()  # b cannot be replaced by a file: the rename fails
    with pytest.raises(IsADirectoryError, match="b.jsonl: a folder stands where this file is to be written"):
        write_manifests({old["a"]: rows, old["b"]: rows, old["c"]: rows})  # found before a is renamed

    def failing():
        yield rows[0]
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_manifests({old["a"]: rows, old["c"]: failing()})  # c's rows fail after a was written
    assert old["a"].read_text() == "old\n" and old["c"].read_text() == "old\n"
    (tmp_path / "b.jsonl").rmdir()

    seen = []

    @contextmanager
    def replacing():
        seen.append([p.read_text() == "old\n" if p.exists() else None for p in old.values()])  # before the renames
        yield
        seen.append([len(read_manifest(p)) for p in old.values()])  # after them

    write_manifests({old["a"]: rows, old["b"]: rows, old["c"]: rows[:1]}, replacing)
    assert seen == [[True, None, True], [3, 3, 1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "c.jsonl"]  # no temporary left


def test_atomic_paths_leave_no_temporary_whatever_happens(tmp_path: Path, monkeypatch) -> None:
    """A path named twice left one temporary behind (its second replaced the first in the map); a stop signal's
    exception while the temporaries were being removed left the others."""
    from earful import atomic

    with atomic.atomic_paths([tmp_path / "a.txt", str(tmp_path / "a.txt")]) as tmps:
        assert len(tmps) == 1
        tmps[tmp_path / "a.txt"].write_text("new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]

    real = Path.unlink
    stopped = []

    def unlink(self, missing_ok=False):
        if not stopped:
            stopped.append(self)
            raise KeyboardInterrupt  # the first removal interrupted
        return real(self, missing_ok=missing_ok)

    with pytest.raises(KeyboardInterrupt), atomic.atomic_paths([tmp_path / f"{k}.txt" for k in "bcd"]) as tmps:
        monkeypatch.setattr(Path, "unlink", unlink)
        raise OSError(28, "No space left on device")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"], "temporaries left"


def test_write_manifests_takes_string_paths_and_lists_of_lines(tmp_path: Path) -> None:
    from earful.data.manifest import write_manifests

    rows = [Utterance(id="u", path=str(tmp_path / "u.flac"), num_samples=16000, sample_rate=16000, speaker="s")]
    write_manifests({str(tmp_path / "m.jsonl"): rows}, lines={str(tmp_path / "problems.txt"): ["one", "two"]})
    assert [u.id for u in read_manifest(tmp_path / "m.jsonl")] == ["u"]
    assert (tmp_path / "problems.txt").read_text() == "one\ntwo\n"



def test_a_npy_file_is_what_np_save_writes(tmp_path: Path) -> None:
    """atomic_save_npy (not np.save into an open file, whose tofile turned a signal handler's exception into
    "TypeError: ... not BufferedWriter": `earful shard` stopped by SIGTERM exited 1, not 4, in 1 of 12 runs of
    tests/data/test_shards.py's stop test under load) writes the bytes np.save writes, refusing objects."""
    import numpy as np

    from earful.atomic import atomic_save_npy

    for a in (np.arange(12, dtype=np.int64).reshape(3, 4), np.random.rand(2, 3, 5).astype(np.float16),
              np.zeros((0, 3)), np.arange(10, dtype=np.int32)[::2], np.array(3.5)):  # 0-d: loaded as 0-d
        atomic_save_npy(tmp_path / "ours.npy", a)
        np.save(tmp_path / "theirs.npy", a)
        assert (tmp_path / "ours.npy").read_bytes() == (tmp_path / "theirs.npy").read_bytes()
        back = np.load(tmp_path / "ours.npy", allow_pickle=False)
        assert back.shape == a.shape and np.array_equal(back, a)
    with pytest.raises(TypeError, match="cannot be saved without pickling"):
        atomic_save_npy(tmp_path / "objects.npy", np.array([{}], dtype=object))
