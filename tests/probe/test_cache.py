"""`earful cache list|remove`: the probes' feature cache, its entries' size and last use, and removing them by
age, upstream or completeness (nothing else is touched)."""

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from earful.checkpoint import load_model
from earful.cli import main
from earful.probe.cache import entries
from earful.probe.features import INDEX_FILE, Upstream, features

DAY = 86400


def _age(entry: Path, days: float, name: str = INDEX_FILE) -> None:
    then = time.time() - days * DAY
    os.utime(entry / name, (then, then))


def test_list_and_remove_by_age_upstream_and_completeness(tones, tiny_ckpt: Path, tmp_path: Path, caplog):
    cache = tmp_path / "cache"
    fb = Upstream.parse("fbank")
    ckpt = Upstream.parse(tiny_ckpt)
    features(fb, tones["held"], cache, progress=False)
    features(fb, tones["same"], cache, progress=False)
    features(ckpt, tones["held"], cache, progress=False)
    by = {(e.upstream, Path(e.manifest).name): e for e in entries(cache)}
    assert set(by) == {("fbank", "held.jsonl"), ("fbank", "same.jsonl"), (str(tiny_ckpt.resolve()), "held.jsonl")}
    assert by["fbank", "held.jsonl"].utterances == 18 and all(e.size > 0 and e.complete for e in by.values())
    for e in by.values():
        _age(e.path, 30)
    features(fb, tones["held"], cache, progress=False)  # a hit marks the entry used
    assert time.time() - next(e for e in entries(cache) if e.path == by["fbank", "held.jsonl"].path).used < DAY
    # an entry a probe stopped while writing (no index), and one of an older format
    stopped, older = "a" * 64, "b" * 64
    (cache / stopped).mkdir()
    (cache / stopped / "features.npy").write_bytes(b"\0" * 10)
    old = cache / older
    # what a mistyped --cache would hold besides: never an entry, never removed
    (cache / "data").mkdir()
    (cache / "data" / "a.wav").write_bytes(b"x")
    (cache / ("c" * 64)).mkdir()
    (cache / ("c" * 64) / "notes.txt").write_text("mine")
    shutil.copytree(by["fbank", "same.jsonl"].path, old)
    index = json.loads((old / INDEX_FILE).read_text())
    (old / INDEX_FILE).write_text(json.dumps({**index, "format": "earful-features-1"}))

    with caplog.at_level(logging.INFO):
        assert main(["cache", "list", "--cache", str(cache)]) == 0
    listing = caplog.text
    assert "5 entries" in listing and "incomplete: never read" in listing
    assert "also holds 2 item(s) that are no cache entries" in listing
    assert "(older format earful-features-1)" in listing
    assert f"{tiny_ckpt.resolve()} → {tones['held'].resolve()}" in listing

    def remove(*options: str) -> set[str]:
        before = {p.name for p in cache.iterdir()}
        assert main(["cache", "remove", "--cache", str(cache), *options]) == 0
        return before - {p.name for p in cache.iterdir()}

    assert remove("--older-than", "7", "--dry-run") == set()
    assert main(["cache", "remove", "--cache", str(cache)]) == 2  # no criterion: refused, nothing removed
    assert remove("--incomplete") == {stopped, older}
    assert remove("--older-than", "7", "--upstream", "fbank") == {by["fbank", "same.jsonl"].path.name}
    assert remove("--older-than", "7") == {by[str(tiny_ckpt.resolve()), "held.jsonl"].path.name}
    assert remove("--all") == {by["fbank", "held.jsonl"].path.name}
    assert sorted(p.name for p in cache.iterdir()) == ["c" * 64, "data"]  # left alone


@pytest.mark.parametrize("options, message", [
    (["--older-than", "-1"], "--older-than -1: expected days"),
    ([], "say which entries"),
    (["--all", "--incomplete"], "--all removes every entry: give it alone"),
    (["--upstream", ""], "--upstream '': matches every entry"),
    (["--all", "--cache", "/no/such/cache"], "--cache /no/such/cache: no such folder"),
])
def test_remove_refuses_what_says_no_entries(options, message, tmp_path: Path, caplog):
    (tmp_path / "cache" / "stopped").mkdir(parents=True)
    with caplog.at_level(logging.ERROR):
        assert main(["cache", "remove", "--cache", str(tmp_path / "cache"), *options]) == 2
    assert message in caplog.text and (tmp_path / "cache" / "stopped").is_dir()


def test_an_entry_a_probe_is_writing_is_left_alone(tmp_path: Path, caplog):
    """`cache remove --incomplete` (or --all) removed an entry a probe was writing, which has no index until the
    end (minutes for BASE's features), and the probe died on its missing temporary file. A writer holds the
    entry's lock; the removal leaves such an entry alone and says so, and removes it once the write has ended."""
    from earful.probe.features import writing

    cache = tmp_path / "cache"
    entry = cache / ("d" * 64)
    with writing(entry):
        (entry / "features.npy").write_bytes(b"\0" * 10)
        with caplog.at_level(logging.INFO):
            assert main(["cache", "remove", "--incomplete", "--cache", str(cache)]) == 0
        assert entry.is_dir() and "a probe is writing it now; left alone" in caplog.text
        assert "removed 0 of 1 entries" in caplog.text and "1 being written left alone" in caplog.text
    assert main(["cache", "remove", "--incomplete", "--cache", str(cache)]) == 0
    assert not entry.exists()


def _import(tmp_path: Path, tiny_ckpt: Path, hub_models) -> tuple[Path, Path]:
    """Two transformers models of the tiny checkpoint's weights (the second with another feature extractor): a
    folder, and the Hub's someone/tiny; each imported by `earful probe`'s path. Their imports' folders."""
    from earful.interop.hf import export_hf

    folder = export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")
    other = shutil.copytree(folder, tmp_path / "on-the-hub")
    pre = json.loads((other / "preprocessor_config.json").read_text())
    (other / "preprocessor_config.json").write_text(json.dumps({**pre, "do_normalize": not pre["do_normalize"]}))
    hub_models.repos["someone/tiny"] = other
    return Path(str(Upstream.parse(folder).ckpt)), Path(str(Upstream.parse("someone/tiny").ckpt))


def _listed(caplog, *options: str) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["cache", "list", *options]) == 0
    return caplog.text


def test_imports_are_listed_with_their_source_and_removed_by_the_same_criteria(tiny_ckpt: Path, tmp_path: Path,
                                                                               hub_models, monkeypatch, caplog):
    """`earful cache` listed and removed the probes' features only: the transformers models probe and features
    import (imports/, beside them) had to be found and removed by hand. They are listed with what they were
    imported from (the folder, ORG/NAME@COMMIT) and removed by age (a use marks one used), source or --all."""
    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    from_folder, from_hub = _import(tmp_path, tiny_ckpt, hub_models)
    listing = _listed(caplog)
    assert f"imports {tmp_path / 'cache' / 'imports'}" in listing and "2 entries" in listing
    assert f"{from_folder.name[:12]}  import  " in listing and f"import of {tmp_path / 'theirs'}" in listing
    assert f"import of someone/tiny@{hub_models.commit}" in listing
    for imported in (from_folder, from_hub):
        _age(imported, 30, "source.json")
    Upstream.parse("someone/tiny")  # a use marks its import used
    assert main(["cache", "remove", "--older-than", "7"]) == 0
    assert not from_folder.exists() and (from_hub / "model.safetensors").is_file()
    caplog.clear()  # the commit itself, left for its recent use: no hint at the commit
    assert main(["cache", "remove", "--upstream", f"someone/tiny@{hub_models.commit}", "--older-than", "7"]) == 0
    assert (from_hub / "model.safetensors").is_file() and "recorded at its commit" not in caplog.text
    caplog.clear()
    assert main(["cache", "remove", "--upstream", "someone/tiny@v1.0"]) == 0  # a tag: recorded at its commit
    assert (from_hub / "model.safetensors").is_file()
    assert (f"--upstream someone/tiny@v1.0: no entry; a Hub model is recorded at its commit, not at the branch or "
            f"tag used: the cache holds someone/tiny@{hub_models.commit}; give someone/tiny for every commit, or one "
            "of these") in caplog.text
    assert main(["cache", "remove", "--upstream", "someone/tiny"]) == 0
    assert not from_hub.exists()
    # `earful probe --cache DIR` imports beside DIR, which `earful cache --cache DIR` lists and removes
    features = tmp_path / "elsewhere" / "features"
    features.mkdir(parents=True)
    imported = Path(str(Upstream.parse(tmp_path / "theirs", cache_dir=features).ckpt))
    assert imported.parent == tmp_path / "elsewhere" / "imports"
    assert f"import of {tmp_path / 'theirs'}" in _listed(caplog, "--cache", str(features))
    assert main(["cache", "remove", "--all", "--cache", str(features)]) == 0
    assert not imported.exists()


def test_an_import_of_an_earlier_earful_is_listed_and_an_incomplete_one_removed(tiny_ckpt: Path, tmp_path: Path,
                                                                                hub_models, monkeypatch, caplog):
    """An import that records no source (an earlier earful's) is listed as such and gains its record at its next
    use; one without its weights is incomplete, removed by --incomplete, and the complete one is left."""
    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    from_folder, from_hub = _import(tmp_path, tiny_ckpt, hub_models)
    (from_folder / "source.json").unlink()
    assert "import of ? (not recorded by the earful that imported it)" in _listed(caplog)
    Upstream.parse(tmp_path / "theirs")
    assert f"import of {tmp_path / 'theirs'}" in _listed(caplog)
    (from_hub / "model.safetensors").unlink()
    assert "incomplete import: imported again when used" in _listed(caplog)
    assert main(["cache", "remove", "--incomplete"]) == 0
    assert not from_hub.exists() and (from_folder / "model.safetensors").is_file()


def test_an_import_being_written_is_left_alone(tiny_ckpt: Path, tmp_path: Path, monkeypatch, caplog):
    """`cache remove` while a probe imports a model (its lock held) leaves the import alone and says so: the probe
    gets a whole checkpoint. Once written, the removal takes it."""
    from earful.interop import hub
    from earful.interop.hf import export_hf

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    write = hub.write_checkpoint
    removals = []

    def write_then_remove(folder, ckpt, **kwargs) -> None:
        write(folder, ckpt, **kwargs)
        with caplog.at_level(logging.INFO):
            removals.append(main(["cache", "remove", "--all"]))

    monkeypatch.setattr(hub, "write_checkpoint", write_then_remove)
    imported = Path(str(Upstream.parse(export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")).ckpt))
    assert removals == [0] and load_model(imported)[0] is not None
    assert "an import is writing it now; left alone" in caplog.text and "1 being written left alone" in caplog.text
    assert main(["cache", "remove", "--all"]) == 0
    assert not imported.exists()


def test_an_import_in_a_cache_this_process_cannot_write_is_used_as_it_is(tiny_ckpt: Path, tmp_path: Path,
                                                                          monkeypatch, caplog):
    """A cache this process may not write (read-only, or another user's: a shared one) served its features but not
    its imports: probe and features of a model imported there already failed on its lock, "[Errno 30] Read-only
    file system: .../.lock". The import is used as it is; one not there (nor whole) still says why it cannot be."""
    import errno

    from earful.interop import hub
    from earful.interop.hf import export_hf

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    folder = export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")
    imported = Path(str(Upstream.parse(folder).ckpt))
    used = (imported / "source.json").stat().st_mtime_ns

    def read_only(path: Path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(hub, "lock_file", read_only)
    monkeypatch.setattr(hub.os, "utime", read_only)
    with caplog.at_level(logging.INFO):
        assert Path(str(Upstream.parse(folder).ckpt)) == imported
    assert "cannot write in the earful cache (Read-only file system): its import used as it is" in caplog.text
    assert (imported / "source.json").stat().st_mtime_ns == used
    (imported / "model.safetensors").unlink()
    with pytest.raises(OSError, match=r"cannot import .* into the earful cache \(Read-only file system\); set "
                                      r"EARFUL_CACHE \(or give --cache\) to a folder you may write"):
        Upstream.parse(folder)


_ELSEWHERE = """
import sys
import earful.atomic
from earful.probe.features import Upstream
earful.atomic.running = lambda pid: False  # another host's process, on a shared cache: its pid not seen here
print(Upstream.parse(sys.argv[1]).ckpt)
"""


def test_two_hosts_importing_one_model_into_a_shared_cache_take_turns(tiny_ckpt: Path, tmp_path: Path, monkeypatch):
    """Two processes importing the same model at once (an array job's probes, on a cache shared by the nodes) both
    wrote it: the second took the first's temporary folder (.tmp-PID, a pid it cannot see) for a dead process's
    and removed it, and the first failed, "No such file or directory: .../.tmp-PID". The second now waits for the
    first, then finds the import whole."""
    import subprocess
    import sys

    from earful.interop import hf
    from earful.interop.hf import export_hf

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    folder = export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")
    save, other = hf.save_model, []

    def save_while_another_imports(tmp: Path, *args, **kwargs) -> Path:  # into imports/DIGEST/.tmp-PID
        saved = save(tmp, *args, **kwargs)
        other.append(subprocess.Popen([sys.executable, "-c", _ELSEWHERE, str(folder)], stdout=subprocess.PIPE,
                                      text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}))
        lock = os.stat(tmp.parent / ".lock").st_ino
        until = time.monotonic() + 120
        while other[0].poll() is None and time.monotonic() < until:  # until it has imported, or waits its turn
            waiting = [f for f in (line.split() for line in Path("/proc/locks").read_text().splitlines())
                       if len(f) > 6 and f[1] == "->" and f[5] == str(other[0].pid)]
            if any(f[6].rsplit(":", 1)[-1] == str(lock) for f in waiting):
                break
            time.sleep(0.01)  # polled: not a spin on two cores
        return saved

    monkeypatch.setattr(hf, "save_model", save_while_another_imports)
    imported = Path(str(Upstream.parse(folder).ckpt))
    out, _ = other[0].communicate(timeout=120)
    assert other[0].returncode == 0 and Path(out.strip()) == imported
    assert sorted(p.name for p in imported.iterdir()) == [".lock", "model.json", "model.safetensors", "source.json"]
    assert load_model(imported)[0] is not None


def test_an_import_records_every_source_of_its_model(tiny_ckpt: Path, tmp_path: Path, monkeypatch, caplog):
    """An import recorded its first source only: the same weights used from a copy of the folder (or the Hub's next
    commit) were listed, and matched by `remove --upstream`, as the first. Every source is recorded, the last used
    listed first; an earlier earful's record of one source still reads."""
    from earful.interop.hf import export_hf

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    first = export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")
    copy = shutil.copytree(first, tmp_path / "copy")
    imported = Path(str(Upstream.parse(first).ckpt))
    assert Path(str(Upstream.parse(copy).ckpt)) == imported
    assert f"import of {copy}, {first}" in _listed(caplog)
    Upstream.parse(first)
    assert f"import of {first}, {copy}" in _listed(caplog)
    (imported / "source.json").write_text(json.dumps({"source": str(first)}))  # as an earlier earful wrote it
    assert f"import of {first}\n" in _listed(caplog) + "\n"
    Upstream.parse(copy)
    assert main(["cache", "remove", "--upstream", str(first), "--dry-run"]) == 0
    assert f"import of {copy}, {first}" in _listed(caplog)
    assert main(["cache", "remove", "--upstream", "copy"]) == 0
    assert not imported.exists()


def test_an_import_removed_while_in_use_is_imported_again(tiny_ckpt: Path, tones, tmp_path: Path, monkeypatch,
                                                          caplog):
    """`earful cache remove` while a probe or study held an import (parsed, not yet loaded) failed it later with
    "model.safetensors: missing" in a cache folder. The import is made again from its source, with a warning, and
    the features are those of the model."""
    from earful.interop.hf import export_hf

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    folder = export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")
    upstream = Upstream.parse(folder)
    assert main(["cache", "remove", "--all"]) == 0
    assert not Path(str(upstream.ckpt)).exists()
    with caplog.at_level(logging.WARNING):
        got = features(upstream, tones["held"], tmp_path / "features", progress=False)
    assert f"{folder.resolve()}: its import {upstream.ckpt} was removed meanwhile" in caplog.text
    expected = features(Upstream.parse(tiny_ckpt), tones["held"], tmp_path / "features-of-ckpt", progress=False)
    assert torch.equal(got.data, expected.data)


def test_removed_counts_only_what_this_removal_removed(tiny_ckpt: Path, tmp_path: Path, monkeypatch, caplog):
    """An entry another `cache remove` took between the listing and the removal was counted as removed by this
    one ("removed 1 of 1 entries ..., 0 B freed"); it is said apart."""
    from earful.interop.hf import export_hf
    from earful.probe import cache

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    imported = Path(str(Upstream.parse(export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")).ckpt))
    remove = cache.remove

    def another_removal_first(chosen):
        shutil.rmtree(imported)
        return remove(chosen)

    monkeypatch.setattr(cache, "remove", another_removal_first)
    with caplog.at_level(logging.INFO):
        assert main(["cache", "remove", "--all"]) == 0
    assert "removed 0 of 1 entries" in caplog.text and "1 removed meanwhile by another process" in caplog.text


def test_the_suite_imports_beside_the_cache_it_is_given(tiny_ckpt: Path, tmp_path: Path, monkeypatch):
    """run_suite(..., cache_dir=DIR) of a transformers folder imported it into the default cache, not beside DIR as
    `earful probe --cache DIR` does."""
    from earful.interop.hf import export_hf
    from earful.probe.suite import run_suite

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "default"))
    folder = export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")
    features = tmp_path / "mine" / "features"
    with pytest.raises(FileNotFoundError, match="not a corpus made by `earful synth`"):  # after the import
        run_suite(folder, tmp_path / "no-corpus", tmp_path / "out", cache_dir=features)
    assert [p.name for p in (tmp_path / "mine" / "imports").iterdir()] and not (tmp_path / "default").exists()
