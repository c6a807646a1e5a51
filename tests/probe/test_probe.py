"""`earful probe`: each task learns, the layer weights, the feature cache, one result per seed, clear errors."""

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from earful.checkpoint import CheckpointError, load_model, save_model
from earful.cli import main
from earful.config import load_config
from earful.data.manifest import read_manifest, write_manifest
from earful.interop.features import backbone_of, layer_features, layer_states
from earful.model import Wav2Vec2ForPreTraining, load_model_config
from earful.probe import fbank
from earful.probe.config import ProbeConfig
from earful.probe.ctc import phonemes_task, train_ctc
from earful.probe.features import FEATURES_FILE, INDEX_FILE, Upstream, cache_key, features
from earful.probe.report import table, weights_table
from earful.probe.splits import FeatureLoader, load_split
from earful.probe.suite import probe, run_suite
from earful.probe.utterance import equal_error_rate
from earful.probe.weighting import LayerWeightedSum

# recipes for the tone data: small batches, more passes
FAST = ["pr.epochs=15", "pr.batch_utterances=8", "asr.epochs=15", "asr.batch_utterances=8", "asr.hidden=0",
        "asr.lr=0.04", "sid.steps=150", "sid.lr=0.05", "ic.steps=150", "ic.lr=0.05"]


def config(*more: str) -> ProbeConfig:
    return load_config(ProbeConfig, None, FAST + list(more))


def splits(tones: dict[str, Path]) -> tuple[Path, Path, Path]:
    return tones["train"], tones["same"], tones["held"]


@pytest.mark.parametrize("task, bounds", [  # chance: every error rate ~1 (all blank), SID 1/4 and EER 1/2, IC 1/4
    ("pr", {"per": (None, 0.5)}),
    ("asr", {"cer": (None, 0.5)}),
    ("sid", {"accuracy": (0.8, None), "eer": (None, 0.3)}),
    ("ic", {"accuracy": (0.6, None)}),
])
def test_each_task_learns(tones, cache: Path, tmp_path: Path, task: str, bounds: dict):
    result = probe(Upstream.parse("fbank"), {task: splits(tones)}, tmp_path / "out", config=config(),
                   cache_dir=cache, progress=False)[task]
    for metric, (low, high) in bounds.items():
        value = result.test[metric]
        assert (low is None or value >= low) and (high is None or value <= high), (metric, value)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["tasks"][task]["test"] == result.test
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| " + task.upper() in text
    # where each metric was measured, and the recipe's settings other than the defaults
    train, dev, test = splits(tones)
    assert f"- {task.upper()}: train {train}, dev {dev}, test {test}" in text
    assert ("SID's accuracy: on its dev" in text) == (task == "sid")  # said where SID was run alone
    assert f"Recipe: {task}." in text, text  # FAST's settings of the task, which differ from the defaults


def test_ctc_builds_each_splits_references_once_whatever_the_epochs(tones, cache: Path):
    """Dev's references are built once for the run, not again every epoch (nor test's again at the end)."""
    loader = FeatureLoader(Upstream.parse("fbank"), cache, progress=False)
    train, dev, test = (load_split(loader, m) for m in splits(tones))
    counts, built = {}, []
    for epochs in (1, 3):
        task = phonemes_task()
        built.clear()

        def counted(split, real=task.references):
            built.append(split.manifest.name)
            return real(split)

        task.references = counted
        result = train_ctc(task, train, dev, test, config(f"pr.epochs={epochs}").pr, seed=0)
        assert len(result.history) == epochs
        counts[epochs] = {name: built.count(name) for name in ("same.jsonl", "held.jsonl")}
    assert counts[1] == counts[3] == {"same.jsonl": 1, "held.jsonl": 1}



def test_ctc_tests_the_head_of_the_best_dev_epoch(tones, cache: Path, monkeypatch):
    """Dev PER scripted 0.5, 0.2, 0.9 over three epochs: the head tested is epoch 2's, not the last."""
    from earful.probe import ctc

    loader = FeatureLoader(Upstream.parse("fbank"), cache, progress=False)
    train, dev, test = (load_split(loader, m) for m in splits(tones))
    dev_per, states, tested = iter([0.5, 0.2, 0.9]), [], []

    def scripted(model, task, split, refs, batch=32):
        if split is test:
            tested.append({k: v.clone() for k, v in model.state_dict().items()})
            return {"per": 0.0}
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"per": next(dev_per)}

    monkeypatch.setattr(ctc, "evaluate", scripted)
    result = train_ctc(phonemes_task(), train, dev, test, config("pr.epochs=3").pr, seed=0)
    assert result.best == 2 and result.dev == {"per": 0.2} and len(tested) == 1
    assert all(torch.equal(tested[0][k], states[1][k]) for k in tested[0])
    assert not all(torch.equal(tested[0][k], states[2][k]) for k in tested[0])


def test_an_utterance_probe_keeps_the_step_best_on_dev(monkeypatch):
    """Dev accuracy scripted 0.5, 0.9, 0.3 at steps 25, 50, 75: the model returned is step 50's."""
    from earful.probe import utterance
    from earful.probe.config import UtteranceRecipe

    accuracy, states = iter([0.5, 0.9, 0.3]), []

    def scripted(model, x, labels):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(accuracy)

    monkeypatch.setattr(utterance, "_accuracy", scripted)
    x, labels = torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([[0], [1]] * 4)
    model, best, history = utterance._fit(x, labels, [["a", "b"]], UtteranceRecipe(steps=75), seed=0,
                                          dev=(x, labels), task="ic")
    assert best == 50 and [h["step"] for h in history] == [25, 50, 75]
    assert all(torch.equal(model.state_dict()[k], states[1][k]) for k in states[1])
    assert not all(torch.equal(model.state_dict()[k], states[2][k]) for k in states[2])

@pytest.mark.parametrize(("task", "when"), [("pr", "epoch 1"), ("sid", "step 3"), ("ic", "step 3")])
def test_a_head_that_diverges_is_an_error_not_a_score(tones, cache: Path, tmp_path: Path, task: str, when: str):
    """A learning rate too large for the head made its loss and layer weights NaN, and the run reported the
    blank output's PER or chance accuracy as the features' score (NaN in results.json), without a word."""
    with pytest.raises(ValueError, match=rf"^probe {task}: its head diverged \({when}: training loss not finite\) "
                                         rf"at {task}.lr=1e\+30; give a lower {task}.lr$"):
        probe(Upstream.parse("fbank"), {task: splits(tones)}, tmp_path / "o", config=config(f"{task}.lr=1e30"),
              cache_dir=cache, progress=False)
    assert not (tmp_path / "o" / "results.json").exists()


def test_layer_weights_sum_to_one_and_are_learned(tones, tiny_ckpt: Path, cache: Path, tmp_path: Path):
    result = probe(Upstream.parse(tiny_ckpt), {"pr": splits(tones)}, tmp_path / "out", config=config("pr.epochs=3"),
                   cache_dir=cache, progress=False)["pr"]
    w = torch.tensor(result.layer_weights)
    assert w.shape == (3,) and abs(float(w.sum()) - 1) < 1e-6 and (w > 0).all()
    assert float(w.max() - w.min()) > 1e-3  # moved from the equal start
    assert (tmp_path / "out" / "layer-weights.png").stat().st_size > 1000
    m = LayerWeightedSum(3)
    with torch.no_grad():
        m.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(2, 7, 3, 4)  # (batch, frames, layers, dim)
    with torch.no_grad():
        expected = sum(m.weights()[i] * x[:, :, i] for i in range(3))
        assert torch.allclose(m(x), expected, atol=1e-6) and abs(float(m.weights().sum()) - 1) < 1e-6


@pytest.mark.parametrize("task", ["pr", "sid"])
def test_one_hidden_state_alone_is_probed_with_its_weight_fixed(tones, tiny_ckpt: Path, cache: Path, tmp_path: Path,
                                                               task: str):
    """A layer-wise analysis (which layer holds phones, speakers) could not be run: every probe learned a weighted
    sum over all hidden states. ``TASK.layer=i`` probes hidden state i alone: its weight is 1, the others 0, and
    none is trained; the head alone learns, from the same initial head as the weighted sum's for the seed. Layer
    2 of the tiny model (its last) reads what that state holds; a state the model has not is refused before any
    feature is extracted."""
    upstream = Upstream.parse(tiny_ckpt)
    run = {"pr": splits(tones), "sid": (tones["train"], tones["same"], tones["held"])}[task]
    result = probe(upstream, {task: run}, tmp_path / "last", config=config(f"{task}.layer=2"), cache_dir=cache,
                   progress=False)[task]
    assert result.layer_weights == [0.0, 0.0, 1.0]
    first = probe(upstream, {task: run}, tmp_path / "first", config=config(f"{task}.layer=0"), cache_dir=cache,
                  progress=False)[task]
    assert first.layer_weights == [1.0, 0.0, 0.0]
    if task == "pr":  # another state, another score (SID separates the tones' speakers perfectly on either)
        assert first.test != result.test and first.history != result.history
    m = LayerWeightedSum(3, only=1)
    assert list(m.parameters()) == [] and m.weights().tolist() == [0.0, 1.0, 0.0]
    x = torch.randn(2, 5, 3, 4)
    assert torch.equal(m(x), x[:, :, 1])
    cached = sorted(p.name for p in cache.iterdir())
    with pytest.raises(ValueError, match=rf"{task}.layer=3: the features hold hidden states 0 to 2 \(0: the "
                                         r"transformer's input, i: layer i's output\)"):
        probe(upstream, {task: run}, tmp_path / "none", config=config(f"{task}.layer=3"), cache_dir=cache,
              progress=False)
    assert sorted(p.name for p in cache.iterdir()) == cached and not (tmp_path / "none").exists()


def test_a_random_init_says_each_seed_once(tones, tiny_ckpt: Path, cache: Path, tmp_path: Path, monkeypatch):
    """`earful probe CKPT --random-init` titled its results "(random init, seed 0) (seed 0)": the init's seed and
    the probe's, unnamed. The same seed is said once; different ones are named."""
    import earful.probe.suite as suite

    titles = []
    monkeypatch.setattr(suite, "plot_layer_weights", lambda weights, path, title: titles.append(title))
    ckpt = str(Path(tiny_ckpt).resolve())
    for init_seed, seed, expected in ((0, 0, "random init, seed 0"), (1, 0, "random init, init seed 1, probe seed 0")):
        out = tmp_path / f"init{init_seed}"
        probe(Upstream.parse(tiny_ckpt, random_init=True, init_seed=init_seed), {"ic": splits(tones)}, out, seed=seed,
              config=config("ic.steps=2"), cache_dir=cache, progress=False)
        assert (out / "results.md").read_text().splitlines()[0] == f"# Probes of {ckpt} ({expected})"
        assert titles.pop() == f"layer weights: {'/'.join(Path(ckpt).parts[-3:])} ({expected})"
    assert Upstream.parse(tiny_ckpt).title(2) == f"{ckpt} (seed 2)" and Upstream.parse("fbank").title(0) == (
        "fbank (seed 0)")


def test_a_transformers_folder_or_hub_id_is_probed_as_its_import_made_once(tiny_ckpt: Path, tmp_path: Path,
                                                                            hub_models, monkeypatch, caplog):
    """`earful probe` took an earful checkpoint, a run folder or fbank: a published model (a transformers folder,
    a Hub model id) had to be given to import-hf first. It is now imported once into the earful cache, keyed by its
    weights' digest, and probed as that checkpoint; the same weights again (from the Hub too) reuse the import."""
    from earful.interop import hf
    from earful.interop.hf import export_hf

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    imports = []
    import_hf = hf.import_hf
    monkeypatch.setattr(hf, "import_hf", lambda *a, **k: imports.append(a) or import_hf(*a, **k))
    folder = export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")
    hub_models.repos["someone/tiny"] = folder
    caplog.set_level(logging.INFO)
    parsed = [Upstream.parse(given) for given in (folder, str(folder), "someone/tiny")]
    assert len(imports) == 1 and len({up.ckpt for up in parsed}) == 1
    ckpt = Path(str(parsed[0].ckpt))
    assert ckpt.parent == tmp_path / "cache" / "imports" and parsed[0].kind == "checkpoint"
    assert f"{folder}: a transformers folder, imported once as {ckpt}" in caplog.text
    assert (ckpt / "model.safetensors").read_bytes() == (tiny_ckpt / "model.safetensors").read_bytes()


def test_an_imported_model_is_named_by_what_was_given_not_its_import(tones, tiny_ckpt: Path, tmp_path: Path,
                                                                      hub_models, monkeypatch):
    """A probe of facebook/wav2vec2-base titled its results, and its cache entries, by the import's folder
    ($EARFUL_CACHE/imports/<digest>), which says nothing to a reader. Now by what was given: the Hub id at its
    commit, or the transformers folder; the checkpoint probed is still the import."""
    from earful.interop.hf import export_hf

    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    folder = export_hf(load_model(tiny_ckpt)[0], tmp_path / "theirs")
    hub_models.repos["someone/tiny"] = folder
    by_id, by_folder = Upstream.parse("someone/tiny"), Upstream.parse(folder)
    assert by_id.ckpt == by_folder.ckpt and Path(str(by_id.ckpt)).parent == tmp_path / "cache" / "imports"
    assert by_id.name == f"someone/tiny@{hub_models.commit}" and by_folder.name == str(folder.resolve())
    assert Upstream.parse("someone/tiny", random_init=True).name == (f"someone/tiny@{hub_models.commit} "
                                                                    "(random init, seed 0)")
    out, cache = tmp_path / "out", tmp_path / "features"
    probe(by_id, {"ic": splits(tones)}, out, config=config("ic.steps=2"), cache_dir=cache, progress=False)
    assert (out / "results.md").read_text().splitlines()[0] == f"# Probes of someone/tiny@{hub_models.commit} (seed 0)"
    assert json.loads((out / "results.json").read_text())["upstream"] == f"someone/tiny@{hub_models.commit}"
    indexes = [json.loads(p.read_text()) for p in cache.glob(f"*/{INDEX_FILE}")]
    assert indexes and {i["upstream"] for i in indexes} == {f"someone/tiny@{hub_models.commit}"}


def test_layer_weight_plots_share_one_y_range(tmp_path: Path, monkeypatch):
    """Two plots meant to be compared (a checkpoint's and its random init's) had each their own y range."""
    from matplotlib.figure import Figure

    from earful.probe.report import plot_layer_weights

    limits = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (limits.append(fig.axes[0].get_ylim()),
                                                                  save(fig, *a, **k)))
    plot_layer_weights({"pr": [0.84, 0.01, 0.02, 0.05, 0.08]}, tmp_path / "a.png", "trained")
    plot_layer_weights({"pr": [0.29, 0.11, 0.19, 0.21, 0.20]}, tmp_path / "b.png", "random init")
    assert limits[0] == limits[1] == (0.0, 1.0)


def test_features_are_every_layer_of_each_utterance_alone(tones, tiny_ckpt: Path, tmp_path: Path):
    """Cached features are the model's hidden states (float16), the same whatever else is extracted with them."""
    feats = features(Upstream.parse(tiny_ckpt), tones["held"], tmp_path, progress=False)
    model, _ = load_model(tiny_ckpt)
    utts = read_manifest(tones["held"])
    from earful.data.audio import load_audio

    waves = [torch.from_numpy(load_audio(u.path)) for u in utts[:3]]
    for i, w in enumerate(waves):
        ref = torch.from_numpy(layer_features(model, w.numpy())).transpose(0, 1)  # (frames, layers, dim)
        assert torch.allclose(feats.utterance(i).float(), ref, atol=2e-2, rtol=1e-2)
    together = layer_states(backbone_of(model).eval(), waves)  # one padded batch
    alone = [layer_states(backbone_of(model).eval(), [w])[0] for w in waves]
    assert all(a.shape == b.shape and torch.allclose(a, b, atol=1e-4) for a, b in zip(together, alone, strict=True))
    assert feats.frame_rate == 50 and feats.num_layers == 3 and feats.data.dtype == torch.float16


def test_earful_features_are_the_batched_states_of_a_batch_of_one(tones, tiny_ckpt: Path):
    """`earful features` (layer_features) and the probe's extraction (layer_states) are one computation:
    bit-identical to the backbone run on the utterance alone, in `transformers`' (layers, frames, dim) order."""
    from earful.data.audio import load_audio

    model, _ = load_model(tiny_ckpt)
    backbone = backbone_of(model).eval()
    for u in read_manifest(tones["held"])[:3]:
        wave = load_audio(u.path)
        with torch.no_grad():  # what layer_features computed before it went through layer_states
            alone = torch.stack(backbone(torch.from_numpy(wave)[None], None, output_hidden_states=True).hidden_states)
        got = layer_features(model, wave)
        assert got.shape == (3, alone.shape[2], 64) and np.array_equal(got, alone[:, 0].numpy())
        assert np.array_equal(got, layer_states(backbone, [torch.from_numpy(wave)])[0].transpose(0, 1).numpy())
        assert np.array_equal(layer_features(model, wave.astype(np.float64)), got)  # any float input, as float32


def test_a_checkpoint_replaced_between_its_hash_and_its_load_gives_no_features_under_the_old_hash(
        tones, tiny_ckpt: Path, tmp_path: Path, monkeypatch):
    """The probe hashed a checkpoint's files (the cache key), then read them again to load the model: a training
    that wrote the checkpoint again at the same path in between (atomically) had the new weights' features
    cached, and reported, under the old weights' hash. The model is now built from the bytes of files whose
    hash the key holds, else the probe stops; run again, it keys the new weights' features by their hash."""
    ckpt, cache = tmp_path / "ckpt", tmp_path / "cache"
    shutil.copytree(tiny_ckpt, ckpt)
    newer, _ = load_model(ckpt)
    with torch.no_grad():
        newer.wav2vec2.feature_projection.projection.weight.add_(0.5)
    real = Upstream.fingerprint

    def hashed_then_replaced(self, *a, **k):
        hashed = real(self, *a, **k)
        save_model(ckpt, newer)  # a training writes its checkpoint again, atomically, at the same path
        return hashed

    monkeypatch.setattr(Upstream, "fingerprint", hashed_then_replaced)
    up, utts = Upstream.parse(ckpt), read_manifest(tones["held"])
    loader = FeatureLoader(up, cache, progress=False)
    with pytest.raises(CheckpointError, match="model.safetensors and model.json changed since hashed"):
        loader.features(tones["held"], utts)
    old_key = cache_key(loader.fingerprint, tones["held"], utts)
    assert not (cache / old_key).exists()  # the new weights' features were there

    monkeypatch.setattr(Upstream, "fingerprint", real)
    again = FeatureLoader(up, cache, progress=False)
    feats = again.features(tones["held"], utts)
    from earful.data.audio import load_audio

    assert again.fingerprint != loader.fingerprint
    assert (cache / cache_key(again.fingerprint, tones["held"], utts)).is_dir()
    ref = torch.from_numpy(layer_features(newer, load_audio(utts[0].path))).transpose(0, 1)
    assert torch.allclose(feats.utterance(0).float(), ref, atol=2e-2, rtol=1e-2)


def test_cache_serves_hits_and_never_a_changed_checkpoint_or_manifest(tones, tiny_ckpt: Path, tmp_path: Path,
                                                                     monkeypatch, caplog):
    cache = tmp_path / "cache"
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    up = Upstream.parse(ckpt)
    first = features(up, tones["held"], cache, progress=False)
    calls = []
    real = Upstream.extractor

    def counted(self, *a, **k):
        calls.append(self.kind)
        return real(self, *a, **k)

    monkeypatch.setattr(Upstream, "extractor", counted)
    again = features(up, tones["held"], cache, progress=False)
    assert calls == [] and torch.equal(again.data, first.data) and again.ids == first.ids

    # another checkpoint under the same path: other weights, another key
    model, _ = load_model(ckpt)
    with torch.no_grad():
        model.wav2vec2.feature_projection.projection.weight.add_(0.5)
    save_model(ckpt, model)
    changed = features(up, tones["held"], cache, progress=False)
    assert calls == ["checkpoint"] and not torch.equal(changed.data, first.data)

    # the manifest rewritten without its last utterance: another key
    manifest = tmp_path / "held.jsonl"
    write_manifest(read_manifest(tones["held"])[:-1], manifest)
    fewer = features(up, manifest, cache, progress=False)
    assert calls == ["checkpoint"] * 2 and fewer.ids == changed.ids[:-1]
    assert torch.allclose(fewer.data.float(), changed.data[: fewer.data.shape[0]].float(), atol=2e-3)  # other batches

    # labels added or changed (what `earful phonemize` or a transcript fix writes): the same features, a hit
    labelled = tmp_path / "labelled.jsonl"
    write_manifest([replace(u, phonemes="a b", transcript="other words", speaker="someone")
                    for u in read_manifest(manifest)], labelled)
    assert torch.equal(features(up, labelled, cache, progress=False).data, fewer.data) and len(calls) == 2
    # an utterance that is another part of its file (a segment), or the order changed: other features, a miss
    held = read_manifest(manifest)
    first_half = replace(held[0], offset=0, num_samples=held[0].num_samples // 2)
    for name, utts in {"segment": [first_half, *held[1:]], "order": held[::-1]}.items():
        write_manifest(utts, tmp_path / f"{name}.jsonl")
        assert features(up, tmp_path / f"{name}.jsonl", cache, progress=False).ids == [u.id for u in utts]
    assert calls == ["checkpoint"] * 4

    # an unreadable entry is extracted again, never half-read
    entry = cache / cache_key(up.fingerprint(), manifest, read_manifest(manifest))
    for damage in ("truncate", "index"):
        if damage == "truncate":
            data = (entry / FEATURES_FILE).read_bytes()
            (entry / FEATURES_FILE).write_bytes(data[: len(data) // 2])
        else:
            (entry / INDEX_FILE).write_text("{not json")
        with caplog.at_level(logging.WARNING):
            rebuilt = features(up, manifest, cache, progress=False)
        assert "unreadable feature cache entry" in caplog.text and torch.equal(rebuilt.data, fewer.data)
        caplog.clear()
    assert calls == ["checkpoint"] * 6


def test_one_seed_one_result(tones, cache: Path, tmp_path: Path):
    tasks = {"pr": splits(tones), "ic": splits(tones)}

    def run(seed: int, name: str) -> dict:
        probe(Upstream.parse("fbank"), tasks, tmp_path / name, seed=seed, config=config("pr.epochs=2", "ic.steps=50"),
              cache_dir=cache, progress=False)
        saved = json.loads((tmp_path / name / "results.json").read_text())["tasks"]
        for t in saved.values():
            t.pop("seconds")
        return saved

    a, b, c = run(1, "a"), run(1, "b"), run(2, "c")
    assert a == b
    assert a["pr"]["history"] != c["pr"]["history"] and a["ic"]["history"] != c["ic"]["history"]


def test_a_probe_run_keeps_other_runs_results_and_its_seed_is_checked_first(tones, cache: Path, tmp_path: Path,
                                                                             caplog, monkeypatch):
    """A probe into an --out holding another run's results replaced them without a word (another seed, task or
    upstream): refused, naming them. A seed numpy cannot take (-1) stopped the run after the features and the
    first probes; now before any work. A test split sharing utterances with the training split is said."""
    import logging

    import earful.probe.suite as suite

    tasks = {"ic": splits(tones)}
    recipe = config("ic.steps=20")
    probe(Upstream.parse("fbank"), tasks, tmp_path / "a", seed=1, config=recipe, cache_dir=cache, progress=False)
    first = (tmp_path / "a" / "results.json").read_text()
    with pytest.raises(ValueError, match=r"a: holds the results of another probe run \(its seed differs: fbank, "
                                         r"seed 1, tasks ic\).*remove .*results.json"):
        probe(Upstream.parse("fbank"), tasks, tmp_path / "a", seed=2, config=recipe, cache_dir=cache, progress=False)
    with pytest.raises(ValueError, match="its config, manifests differ"):
        probe(Upstream.parse("fbank"), {"pr": splits(tones)}, tmp_path / "a", seed=1, cache_dir=cache, progress=False)
    assert (tmp_path / "a" / "results.json").read_text() == first
    probe(Upstream.parse("fbank"), tasks, tmp_path / "a", seed=1, config=recipe, cache_dir=cache, progress=False)
    saved = json.loads((tmp_path / "a" / "results.json").read_text())  # as an earful before TASK.layer wrote it:
    for task in saved["config"].values():  # the same run (it probed every layer's weighted sum), written again
        del task["layer"]
    (tmp_path / "a" / "results.json").write_text(json.dumps(saved))
    probe(Upstream.parse("fbank"), tasks, tmp_path / "a", seed=1, config=recipe, cache_dir=cache, progress=False)
    with pytest.raises(ValueError, match="its config differs"):
        probe(Upstream.parse("fbank"), tasks, tmp_path / "a", seed=1, config=config("ic.steps=20", "ic.layer=0"),
              cache_dir=cache, progress=False)

    monkeypatch.setattr(suite, "FeatureLoader", lambda *a, **k: pytest.fail("features before the seed's check"))
    for seed in (-1, 2**32):
        with pytest.raises(ValueError, match=rf"probe seed {seed}: expected an integer from 0 to 2\*\*32 - 1"):
            probe(Upstream.parse("fbank"), tasks, tmp_path / "b", seed=seed, config=recipe, cache_dir=cache)
    monkeypatch.undo()
    train, dev, _ = splits(tones)
    with caplog.at_level(logging.WARNING, logger="earful.probe.suite"):
        probe(Upstream.parse("fbank"), {"ic": (train, dev, train)}, tmp_path / "c", config=recipe, cache_dir=cache,
              progress=False)
    assert f"probe ic: its train ({train}) and test ({train}) share" in caplog.text, caplog.text  # one manifest
    assert "its train" in caplog.text and "and dev" not in caplog.text
    caplog.clear()
    copy = tmp_path / "copy.jsonl"
    copy.write_text(Path(train).read_text())
    with caplog.at_level(logging.WARNING, logger="earful.probe.suite"):
        probe(Upstream.parse("fbank"), {"ic": (train, dev, copy)}, tmp_path / "d", config=recipe, cache_dir=cache,
              progress=False)
    assert f"probe ic: its train ({train}) and test ({copy}) share" in caplog.text, caplog.text


def test_random_init_is_the_architecture_with_fresh_weights(tones, tiny_ckpt: Path, tmp_path: Path):
    trained, init0, init0_again, init1 = (
        features(Upstream.parse(tiny_ckpt, random_init=r, init_seed=s), tones["held"], tmp_path, progress=False)
        for r, s in ((False, 0), (True, 0), (True, 0), (True, 1)))
    assert init0.data.shape == trained.data.shape
    assert torch.equal(init0.data, init0_again.data) and not torch.equal(init0.data, init1.data)
    assert not torch.equal(init0.data, trained.data)


def test_a_random_init_is_cached_by_its_weights(tones, tiny_ckpt: Path, tmp_path: Path, monkeypatch):
    """The cache key of ``--random-init`` features holds the fresh weights' digest: another init (earful's init
    code or torch's draws changed) is another entry, never the stale one (before: config, seed, torch version)."""
    import earful.checkpoint as checkpoint

    up = Upstream.parse(tiny_ckpt, random_init=True, init_seed=0)
    key = up.fingerprint()
    before = features(up, tones["held"], tmp_path, progress=False)
    build = checkpoint.build_model

    def another_init(kind, cfg):
        model = build(kind, cfg)
        with torch.no_grad():
            for w in model.parameters():
                w.add_(0.01)
        return model

    monkeypatch.setattr(checkpoint, "build_model", another_init)
    fresh = Upstream.parse(tiny_ckpt, random_init=True, init_seed=0)
    assert fresh.fingerprint() != key
    after = features(fresh, tones["held"], tmp_path, progress=False)
    assert not torch.equal(before.data, after.data)


def test_a_probe_run_builds_its_random_init_once(tiny_ckpt: Path, monkeypatch):
    """One run's loader builds the random-init model once, for the key (its weights' digest) and the extraction."""
    from earful.probe.splits import FeatureLoader

    built = []
    real = Upstream.random_model
    monkeypatch.setattr(Upstream, "random_model", lambda self: built.append(1) or real(self))
    loader = FeatureLoader(Upstream.parse(tiny_ckpt, random_init=True, init_seed=0), progress=False)
    assert loader.fingerprint["kind"] == "random-init" and loader.extractor() is loader.extractor()
    assert len(built) == 1


def test_a_random_init_reads_its_architecture_as_every_checkpoint_reader_does(tones, tiny_ckpt: Path, tmp_path: Path):
    """model.json through checkpoint.read_info: another format, or broken JSON, is refused naming the file."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    info = json.loads((ckpt / "model.json").read_text())
    up = Upstream.parse(ckpt, random_init=True)
    for text, problem in ((json.dumps({**info, "format": "other"}), "format 'other'"), ("{not json", "corrupt JSON")):
        (ckpt / "model.json").write_text(text)
        with pytest.raises(CheckpointError, match=rf"ckpt/model.json: {problem}"):
            features(up, tones["held"], tmp_path / "cache", progress=False)


def test_missing_labels_say_how_many_which_and_the_way_out(tones, cache: Path, tmp_path: Path):
    utts = read_manifest(tones["train"])
    no_phonemes = tmp_path / "no-phonemes.jsonl"
    write_manifest([replace(u, phonemes=None) for u in utts], no_phonemes)
    some_without_intent = tmp_path / "some.jsonl"
    write_manifest([replace(u, intent=None) if i in (3, 5) else u for i, u in enumerate(utts)], some_without_intent)
    fb = Upstream.parse("fbank")
    kw = dict(config=config(), cache_dir=cache, progress=False)
    with pytest.raises(ValueError, match=rf"no-phonemes.jsonl: {len(utts)} of {len(utts)} utterances have no "
                                         r"phonemes .*earful phonemize"):
        probe(fb, {"pr": (no_phonemes, tones["same"], tones["held"])}, tmp_path / "o", **kw)
    with pytest.raises(ValueError, match=rf"some.jsonl: 2 of {len(utts)} utterances have no intent "
                                         rf"\('{utts[3].id}', '{utts[5].id}'\).*"
                                         r"or leave IC out \(`--tasks pr,asr,sid`\)"):
        probe(fb, {"ic": (some_without_intent, tones["same"], tones["held"])}, tmp_path / "o", **kw)
    with pytest.raises(ValueError, match=r"held.jsonl: 18 of 18 utterances are by speakers not in .*train.jsonl"):
        probe(fb, {"sid": (tones["train"], tones["held"], tones["held"])}, tmp_path / "o", **kw)
    with pytest.raises(ValueError, match="unknown probe task 'xx'"):
        probe(fb, {"xx": splits(tones)}, tmp_path / "o", **kw)


SHORT = ["pr.epochs=2", "asr.epochs=2", "asr.hidden=8", "sid.steps=30", "ic.steps=30"]  # plumbing, not learning


def make_corpus(tones: dict[str, Path], root: Path) -> Path:
    """A corpus as `earful synth` lays it out, of the tone manifests."""
    for name, source in {"train": "train", "dev": "held", "test": "held", "labelled-10h": "same"}.items():
        write_manifest(read_manifest(tones[source]), root / "manifests" / f"{name}.jsonl")
    return root


def test_a_suite_run_reads_each_manifest_and_hashes_the_weights_once(tones, tiny_ckpt: Path, tmp_path: Path,
                                                                     monkeypatch):
    """Per suite run, one read of each manifest (its utterances are the labels' and the features': the cache key,
    the extraction), one hash of the weights (the fingerprint: every manifest's cache key and results.json) and
    at most one load of the model; the next run (another seed) hashes them again: a checkpoint may be rewritten
    between runs."""
    import earful.probe.features
    import earful.probe.splits

    corpus = make_corpus(tones, tmp_path / "corpus")
    reads: list[str] = []
    for module in (earful.probe.features, earful.probe.splits):
        def counted(path, *a, real=module.read_manifest, **kw):
            reads.append(Path(path).name)
            return real(path, *a, **kw)
        monkeypatch.setattr(module, "read_manifest", counted)
    hashed: list[str] = []

    def sha256(path):
        hashed.append(Path(path).name)
        return real_sha256(path)

    real_sha256 = earful.probe.features.sha256
    monkeypatch.setattr(earful.probe.features, "sha256", sha256)
    loads: list[str] = []
    real_extractor = earful.probe.features.Upstream.extractor
    monkeypatch.setattr(earful.probe.features.Upstream, "extractor",
                        lambda self, *a: loads.append(self.name) or real_extractor(self, *a))
    for seed, models in ((0, 1), (1, 0)):  # features extracted (one model load for 4 manifests), then cached
        reads.clear()
        loads.clear()
        run_suite(tiny_ckpt, corpus, tmp_path / f"seed-{seed}", seed=seed, cache_dir=tmp_path / "cache",
                  config=config(*SHORT), progress=False)
        assert sorted(reads) == ["dev.jsonl", "labelled-10h.jsonl", "test.jsonl", "train.jsonl"]
        assert len(loads) == models
    assert hashed.count("model.safetensors") == 2 and hashed.count("model.json") == 2


def test_suite_command_on_a_corpus(tones, tiny_ckpt: Path, cache: Path, tmp_path: Path):
    corpus = make_corpus(tones, tmp_path / "corpus")
    out = tmp_path / "out"
    argv = ["probe", str(tiny_ckpt), *FAST, *SHORT, "--suite", "mini-superb", "--corpus", str(corpus),
            "--out", str(out), "--cache", str(cache), "--no-progress"]
    assert main(argv) == 0
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["tasks"]) == ["pr", "asr", "sid", "ic"] and saved["config"]["asr"]["hidden"] == 8
    assert set(saved["tasks"]["sid"]["test"]) == {"accuracy", "eer"}
    assert (out / "layer-weights.png").exists() and "SID" in (out / "results.md").read_text()
    got = run_suite(tiny_ckpt, corpus, tmp_path / "api", ["ic"], cache_dir=cache, config=config(*SHORT),
                    progress=False)
    assert got == {"ic": saved["tasks"]["ic"]["test"]}  # the API and the command agree; features were cached
    # filterbanks into the same folder would replace the checkpoint's results without a word: refused, naming them
    fbank = ["probe", "fbank", *FAST, *SHORT, "--suite", "mini-superb", "--corpus", str(corpus), "--out", str(out),
             "--cache", str(cache), "--no-progress"]
    assert main(fbank) == 2 and json.loads((out / "results.json").read_text()) == saved
    assert main([*fbank[:1], str(tiny_ckpt), *fbank[2:]]) == 0  # the same run again may write them again
    (out / "results.json").unlink()  # as the refusal says: then no layers, so no plot (the checkpoint's had stayed)
    assert main(fbank) == 0
    assert not (out / "layer-weights.png").exists() and "fbank" in (out / "results.md").read_text()
    assert main(["probe", "fbank", "--suite", "mini-superb", "--corpus", str(tmp_path), "--out", str(out)]) == 2
    assert main(["probe", "fbank", "--task", "pr", "--out", str(out)]) == 2
    assert main(["probe", str(tmp_path), "--task", "pr", "--train", "x", "--dev", "x", "--test", "x",
                 "--out", str(out)]) == 2  # not a checkpoint
    assert main(["probe", "fbank", "--random-init", "--task", "pr", "--out", str(out)]) == 2


def test_several_probe_seeds_give_each_metrics_mean_and_standard_error(tones, cache: Path, tmp_path: Path,
                                                                       caplog):
    """A single probe run writes one number a metric, and a user comparing two checkpoints could not tell a gap
    from the heads' own noise without scripting the seeds and the arithmetic (benchmarks/probe_noise.py did it
    for the docs). --seeds runs each seed into OUT/seed-N (the same results as --seed N into its own folder) and
    writes each metric's mean ± standard error over them; --seeds that make no summary, an OUT of a single run or
    holding other seeds' folders are refused before any work."""
    out = tmp_path / "out"
    argv = ["probe", "fbank", *FAST, "--task", "pr", "--train", str(tones["train"]), "--dev", str(tones["same"]),
            "--test", str(tones["held"]), "--cache", str(cache), "--no-progress"]
    assert main([*argv, "--out", str(out), "--seeds", "0", "1", "2"]) == 0
    runs = {s: json.loads((out / f"seed-{s}" / "results.json").read_text())["tasks"]["pr"]["test"]["per"]
            for s in (0, 1, 2)}
    assert main([*argv, "--out", str(tmp_path / "one"), "--seed", "1"]) == 0  # a seed's folder: that seed's run
    assert json.loads((tmp_path / "one" / "results.json").read_text())["tasks"]["pr"]["test"]["per"] == runs[1]
    saved = json.loads((out / "results.json").read_text())
    per = saved["summary"]["pr"]["per"]
    assert saved["seeds"] == [0, 1, 2] and per["n"] == 3 and len(set(runs.values())) > 1
    assert per["mean"] == pytest.approx(np.mean(list(runs.values())))
    assert per["se"] == pytest.approx(np.std(list(runs.values()), ddof=1) / np.sqrt(3))
    text = (out / "results.md").read_text()
    assert f"{100 * per['mean']:.1f} ± {100 * per['se']:.1f}" in text and "over the 3 probe seeds (0, 1, 2)" in text
    assert main([*argv, "--out", str(out), "--seeds", "0", "1", "2"]) == 0  # the same run may write it again
    for seeds, folder, said in ((["4"], out, "--seeds 4: give two or more different seeds (one: --seed)"),
                                (["4", "4"], out, "--seeds 4 4: give two or more different seeds"),
                                (["0", "1"], out, "holds seed-2 of an earlier run, which the summary over --seeds 0 1 "
                                                  "would leave out"),
                                (["0", "1"], tmp_path / "one", "holds a single probe run's results (results.json)")):
        caplog.clear()
        assert main([*argv, "--out", str(folder), "--seeds", *seeds]) == 2
        assert said in caplog.text, caplog.text
    assert main([*argv, "--out", str(out), "--seed", "0", "--seeds", "0", "1"]) == 2  # one or the other


@pytest.mark.parametrize(("options", "message"), [(["--corpus", "c"], "--corpus needs --suite mini-superb"),
                                                  (["--tasks", "pr"], "--tasks needs --suite mini-superb"),
                                                  (["--init-seed", "3"], "--init-seed needs --random-init")])
def test_an_option_the_other_options_leave_unused_is_refused(options, message, tmp_path, caplog) -> None:
    """--corpus and --tasks without --suite, --init-seed without --random-init had been ignored without a word."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "path": "a.flac", "num_samples": 16000, "transcript": "A"}\n')
    argv = ["probe", "fbank", "--task", "pr", "--train", str(manifest), "--dev", str(manifest), "--test",
            str(manifest), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"), *options]
    assert main(argv) == 2 and message in caplog.text
    assert not (tmp_path / "out").exists()


def test_a_cache_that_is_a_file_is_refused_before_any_feature(tones, tmp_path, caplog) -> None:
    """--cache naming a file had failed with "Not a directory" only once the first manifest's features were
    extracted."""
    (tmp_path / "c").write_text("")
    argv = ["probe", "fbank", "--task", "pr", "--train", str(tones["train"]), "--dev", str(tones["same"]), "--test",
            str(tones["held"]), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c"), "--no-progress"]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 2
    assert f"--cache {tmp_path / 'c'}: not a folder" in caplog.text and "extracted" not in caplog.text


def test_an_empty_task_list_is_refused_not_read_as_every_task(tmp_path, caplog) -> None:
    """`--tasks ""` (an empty shell variable) had run the whole suite, extracting every manifest's features."""
    argv = ["probe", "fbank", "--suite", "mini-superb", "--corpus", str(tmp_path / "corpus"), "--tasks", "",
            "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")]
    assert main(argv) == 2 and "unknown probe task(s) ['']: choose from pr, asr, sid, ic" in caplog.text
    assert not (tmp_path / "c").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("override", "message"), [("sid.steps=0", "sid.steps=0: expected an integer >= 1"),
                                                   ("pr.lr=-1", "pr.lr=-1.0: expected a finite number > 0"),
                                                   ("pr.batch_utterances=0", "pr.batch_utterances=0: expected"),
                                                   ("ic.layer=-1", "ic.layer=-1: expected an integer >= 0 (0: the "
                                                                   "transformer's input; null: the weighted sum")])
def test_a_probe_recipe_no_head_can_train_with_is_named_before_any_feature(override, message, tmp_path,
                                                                           caplog) -> None:
    """It had been found after every manifest's features were extracted (the expensive part), as "steps must
    be >= 1, got 0" or torch's "Invalid learning rate"."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "path": "a.flac", "num_samples": 16000, "transcript": "A"}\n')
    argv = ["probe", "fbank", override, "--task", override.split(".")[0], "--train", str(manifest), "--dev",
            str(manifest), "--test", str(manifest), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")]
    assert main(argv) == 2 and message in caplog.text
    assert not (tmp_path / "c").exists() and not (tmp_path / "out").exists()


def test_results_tables_are_markdown():
    scores = {"a": {"pr": {"per": 0.123}, "sid": {"accuracy": 0.9, "eer": 0.05}}, "b": {"pr": {"per": "12.0 ± 1.0"}}}
    assert table(scores).splitlines() == [
        "| upstream | PR PER ↓ | SID accuracy ↑ | SID EER ↓ |", "|---|---|---|---|", "| a | 12.3 | 90.0 | 5.0 |",
        "| b | 12.0 ± 1.0 | – | – |", "", "(percent; ↓ lower is better, ↑ higher is better)"]
    assert weights_table({"pr": [0.25, 0.75], "sid": [0.5, 0.5]}).splitlines() == [
        "Layer weights (hidden state 0 = the transformer's input):", "", "| task | 0 | 1 |", "|---|---|---|",
        "| PR | 0.250 | 0.750 |", "| SID | 0.500 | 0.500 |"]
    assert weights_table({}) == ""


def test_log_mel_puts_a_tone_in_its_band():
    t = torch.arange(16000) / 16000
    mel = fbank.log_mel(torch.sin(2 * torch.pi * 1000 * t))
    assert mel.shape == (fbank.num_frames(16000), fbank.N_MELS) == (98, 80)
    centres = (fbank.mel_filters() * torch.linspace(0, 8000, 257)[:, None]).sum(0) / fbank.mel_filters().sum(0)
    peak = int(mel.mean(0).argmax())
    assert abs(float(centres[peak]) - 1000) < 60


def test_equal_error_rate():
    same = torch.tensor([True, True, False, False])
    assert equal_error_rate(torch.tensor([0.9, 0.8, 0.2, 0.1]), same) == 0.0
    assert equal_error_rate(torch.tensor([0.1, 0.2, 0.8, 0.9]), same) == 1.0
    assert equal_error_rate(torch.tensor([0.9, 0.3, 0.5, 0.1]), same) == 0.5
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(np.concatenate([rng.normal(1, 1, 4000), rng.normal(-1, 1, 4000)]))
    labels = torch.arange(8000) < 4000
    assert abs(equal_error_rate(scores, labels) - 0.1587) < 0.02  # Φ(−1) for two unit normals 2 apart
    with pytest.raises(ValueError, match="both"):
        equal_error_rate(torch.tensor([0.1, 0.2]), torch.tensor([True, True]))
    # tied scores are accepted together: no threshold separates them (it had been 0 or 1 by the trials' order)
    for order in ([True, False], [False, True]):
        assert equal_error_rate(torch.tensor([0.5, 0.5]), torch.tensor(order)) == 0.5
    assert equal_error_rate(torch.tensor([0.5] * 4), same) == 0.5


def test_blank_labels_and_single_utterance_speakers_are_named_before_any_feature(tmp_path):
    """A label of only whitespace is no label (a PR target of "  " had trained as empty, an ASR transcript of
    blanks failed after every feature was extracted); SID's test split needs a speaker with two utterances (its
    EER failed after training, naming no file); intent slots in another key order are the same slots."""
    from earful.data.manifest import Utterance
    from earful.probe.splits import Split, require
    from earful.probe.utterance import check_sid, intents

    def split(name: str, *utts: Utterance) -> Split:
        return Split(tmp_path / name, list(utts), None)

    def utt(i: str, speaker: str = "s", **kw) -> Utterance:
        return Utterance(i, "x.flac", 16000, 16000, speaker, **kw)

    for label in ("phonemes", "transcript"):
        with pytest.raises(ValueError, match=rf"m.jsonl: 1 of 2 utterances have no {label} \('b'\)"):
            require(split("m.jsonl", utt("a", **{label: "a b"}), utt("b", **{label: "  "})), label, "")
    train = split("train.jsonl", utt("a", "s1"), utt("b", "s2"))
    with pytest.raises(ValueError, match=r"test.jsonl: speaker verification needs a speaker with two utterances"):
        check_sid(train, split("dev.jsonl", utt("c", "s1")), split("test.jsonl", utt("d", "t1"), utt("e", "t2")))
    check_sid(train, split("dev.jsonl", utt("c", "s1")), split("test.jsonl", utt("d", "t1"), utt("e", "t1"),
                                                                utt("f", "t2")))
    # the EER is verification of held-out voices: a test split of training speakers, or one training speaker
    # (accuracy 100 % by construction), had been scored and reported as such without a word
    with pytest.raises(ValueError, match=r"test.jsonl: 1 of its speakers also speak in .*train.jsonl \(e.g. 's2'\)"):
        check_sid(train, split("dev.jsonl", utt("c", "s1")), split("test.jsonl", utt("d", "t1"), utt("e", "t1"),
                                                                    utt("f", "s2")))
    with pytest.raises(ValueError, match=r"train.jsonl: speaker identification needs two training speakers"):
        check_sid(split("train.jsonl", utt("a", "s1"), utt("b", "s1")), split("dev.jsonl", utt("c", "s1")),
                  split("test.jsonl", utt("d", "t1"), utt("e", "t1"), utt("f", "t2")))
    # a blank speaker or intent slot is no label either: it had been one more speaker, or one more class
    with pytest.raises(ValueError, match=r"test.jsonl: 1 of 3 utterances have no speaker \('f'\); speaker ident"):
        check_sid(train, split("dev.jsonl", utt("c", "s1")), split("test.jsonl", utt("d", "t1"), utt("e", "t1"),
                                                                    utt("f", " ")))
    with pytest.raises(ValueError, match=r"train.jsonl: 1 of 3 utterances have no speaker \('x'\)"):
        check_sid(split("train.jsonl", utt("a", "s1"), utt("b", "s2"), utt("x", "")),
                  split("dev.jsonl", utt("c", "s1")), split("test.jsonl", utt("d", "t1"), utt("e", "t1"),
                                                             utt("f", "t2")))
    with pytest.raises(ValueError, match=r"i.jsonl: 2 of 3 utterances have no intent \('b', 'c'\) \(or one blank"):
        intents(split("i.jsonl", utt("a", intent={"action": "go"}), utt("b", intent={"action": " "}),
                      utt("c", intent={})))
    one, other = {"action": "go", "object": "x"}, {"object": "y", "action": "stop"}
    assert intents(split("a.jsonl", utt("a", intent=one), utt("b", intent=other))) == [[["go", "x"],
                                                                                          ["stop", "y"]]]


def test_init_seed_is_checked_and_accuracy_is_an_exact_fraction(tiny_ckpt: Path) -> None:
    """--init-seed was never checked: -1 ran (torch maps it onto 2**64 - 1: two seeds, one init) and a huge one
    failed with "Overflow when unpacking long long"; accuracies were float32 (7/9 written 0.7777777910232544)."""
    from earful.probe.features import Upstream
    from earful.probe.utterance import _accuracy

    for seed in (-1, 2**32, 10**23):
        with pytest.raises(ValueError, match=rf"--init-seed {seed}: expected an integer from 0 to 2\*\*32 - 1"):
            Upstream.parse(tiny_ckpt, random_init=True, init_seed=seed)
    assert Upstream.parse(tiny_ckpt, random_init=True, init_seed=2**32 - 1).init_seed == 2**32 - 1

    class Fixed:
        def predict(self, x: torch.Tensor) -> torch.Tensor:
            return x

    labels = torch.zeros(9, 1, dtype=torch.long)
    assert _accuracy(Fixed(), torch.tensor([[0]] * 7 + [[1]] * 2), labels) == 7 / 9  # type: ignore[arg-type]


def test_features_float16_cannot_hold_are_refused_naming_the_utterance(tmp_path, tones):
    """The cache stores float16 (±65504): larger activations had become inf, and the probes trained on NaN and
    printed believable numbers."""
    from earful.data.manifest import read_manifest
    from earful.probe.features import _extract

    utts = read_manifest(tones["train"])[:2]
    with pytest.raises(ValueError, match=rf"m: utterance {utts[1].id!r}: features not finite or beyond float16's "
                                         r"±65504 \(largest 1e\+05\)"):
        _extract(lambda waves: [torch.ones(3, 2, 4), torch.full((3, 2, 4), 1e5)], 50.0, utts, "m", False)


def test_asr_text_mapping_spells_transcripts_outside_a_to_z_and_is_the_setting_errors_name(tones, cache: Path,
                                                                                          tmp_path: Path, caplog):
    """The ASR probe had no text mapping (transcripts outside a-z could not be probed) and its error pointed at
    fine-tuning's text_mapping / evaluate's --text-mapping, which the probe does not take. Now asr.text_mapping
    maps them, is checked as fine-tuning's is, and is the setting the error names."""
    accented = {}
    for name in ("train", "same", "held"):
        utts = read_manifest(tones[name])
        accented[name] = tmp_path / f"{name}.jsonl"
        write_manifest([replace(u, transcript=str(u.transcript).replace("E", "É")) for u in utts], accented[name])
    manifests = {"asr": (accented["train"], accented["same"], accented["held"])}
    fb = Upstream.parse("fbank")
    with pytest.raises(ValueError, match=r"train.jsonl: .*'é'.*: asr.text_mapping=\{'é': 'e'\}$") as e:
        probe(fb, manifests, tmp_path / "o", config=config(), cache_dir=cache, progress=False)
    assert "fine-tuning" not in str(e.value) and "--text-mapping" not in str(e.value)
    # a training transcript the mapping empties cannot be trained on: said before any feature (it had been said
    # once every manifest's features were extracted); a test transcript may be silence, scored
    train = read_manifest(tones["train"])
    write_manifest([replace(train[0], transcript="-"), *train[1:]], tmp_path / "emptied.jsonl")
    with pytest.raises(ValueError, match=r"emptied.jsonl: 1 utterance\(s\) have no characters left once normalised"):
        probe(fb, {"asr": (tmp_path / "emptied.jsonl", tones["same"], tones["held"])}, tmp_path / "o2",
              config=config("asr.text_mapping={'-': ''}"), cache_dir=tmp_path / "empty-cache", progress=False)
    assert not (tmp_path / "empty-cache").exists()
    result = probe(fb, manifests, tmp_path / "o", config=config("asr.epochs=1", "asr.text_mapping={'é': e}"),
                   cache_dir=cache, progress=False)["asr"]
    assert 0 <= result.test["cer"]
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["config"]["asr"]["text_mapping"] == {"é": "e"}
    with pytest.raises(ValueError, match=r"^asr.text_mapping: keys must be single characters, got 'ab'"):
        config("asr.text_mapping={ab: ''}")


def test_an_utterance_shorter_than_a_frame_is_named_with_its_manifest_before_any_feature(tones, tmp_path: Path):
    """A file of fewer than 400 samples (at 16 kHz) gives no frame: it stopped a probe mid-extraction with an
    audio error that named the file alone; now every such utterance of a manifest is named, with the manifest,
    before any feature is extracted (nothing in the cache)."""
    from earful.data.manifest import Utterance

    utts = read_manifest(tones["held"])
    short = [Utterance("tiny-16k", utts[0].path, 399, 16000, "s"), Utterance("tiny-8k", utts[0].path, 150, 8000, "s")]
    write_manifest([*utts, *short, Utterance("just-8k", utts[0].path, 200, 8000, "s")], tmp_path / "test.jsonl")
    with pytest.raises(ValueError, match=r"test.jsonl: 2 of \d+ utterances are shorter than one feature frame needs "
                                         r"\(400 samples at 16000 Hz\): 'tiny-16k' \(399\), 'tiny-8k' \(300\); "
                                         r"a probe reads every utterance"):
        probe(Upstream.parse("fbank"), {"sid": (tones["train"], tones["same"], tmp_path / "test.jsonl")},
              tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_an_utterance_shorter_than_its_models_receptive_field_is_named_before_any_feature(tones, tmp_path: Path):
    """A CNN of larger kernels than the standard one's needs more than 400 samples for a frame: an utterance in
    between had been probed silently with no frame at all (SID pooled it to zeros and scored it)."""
    from earful.data.manifest import Utterance

    cfg = replace(load_model_config("tiny"), conv_kernel=[10, 3, 3, 3, 3, 3, 3])
    assert cfg.receptive_field == 640
    ckpt = save_model(tmp_path / "wide", Wav2Vec2ForPreTraining(cfg))
    utts = read_manifest(tones["held"])
    wave, rate = sf.read(utts[0].path, dtype="float32")
    sf.write(tmp_path / "short.wav", wave[:500], rate)  # a real file: it had been read, and given no frame
    write_manifest([*utts, Utterance("short", str(tmp_path / "short.wav"), 500, rate, utts[0].speaker)],
                   tmp_path / "test.jsonl")
    with pytest.raises(ValueError, match=r"test.jsonl: 1 of \d+ utterances are shorter than one feature frame needs "
                                         r"\(640 samples at 16000 Hz\): 'short' \(500\)"):
        probe(Upstream.parse(ckpt), {"sid": (tones["train"], tones["same"], tmp_path / "test.jsonl")},
              tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_an_unreadable_file_names_its_manifest_and_utterance(tones, tmp_path: Path):
    """A file corrupted after its manifest was written stopped a probe with the loader's error alone (the file,
    not the manifest it was listed in, nor the way out)."""
    from earful.data.audio import AudioError

    utts = read_manifest(tones["held"])
    broken = tmp_path / "broken.wav"
    broken.write_bytes(Path(utts[1].path).read_bytes()[:200])  # cut inside its header's promise
    write_manifest([utts[0], replace(utts[1], path=str(broken)), *utts[2:]], tmp_path / "test.jsonl")
    with pytest.raises(AudioError, match=rf"test.jsonl: utterance {utts[1].id!r}: {broken}: .*a probe reads every "
                                         r"utterance of its manifests: mend the file, or leave its row out"):
        features(Upstream.parse("fbank"), tmp_path / "test.jsonl", tmp_path / "cache", progress=False)


def test_pooled_statistics_keep_the_spread_of_a_channel_with_a_large_mean():
    """The std was sqrt(E[x²] − mean²) in float32: a channel at 3000 ± 5 (a pre-LN residual stream's) pooled to 0."""
    from earful.probe.features import FeatureSet

    g = torch.Generator().manual_seed(0)
    x = (3000 + 5 * torch.randn(6000, 1, 4, generator=g)).half()
    std = FeatureSet(["a"], torch.tensor([6000]), x, 50.0).pooled[0, 0, 4:]
    assert torch.allclose(std.double(), x.double().std(0, unbiased=False)[0], rtol=1e-4)
    # float32 features (a copy is not made by .float() there): pooling leaves them as they were
    y = torch.randn(300, 2, 3, generator=g)
    kept = y.clone()
    pooled = FeatureSet(["a", "b"], torch.tensor([100, 200]), y, 50.0).pooled  # (utterances, layers, 2 * dim)
    assert torch.equal(y, kept)
    assert torch.allclose(pooled[1, :, 3:], kept[100:].std(0, unbiased=False), atol=1e-6)


def test_a_feature_constant_in_training_is_not_blown_up():
    from earful.probe.features import FeatureSet
    from earful.probe.utterance import standardized

    class S:
        def __init__(self, data):
            self.feats = FeatureSet([str(i) for i in range(len(data))], torch.ones(len(data), dtype=torch.long),
                                    data[:, None, None, :].reshape(len(data), 1, 2).half(), 50.0)

    train = S(torch.tensor([[1.0, 300.0], [2.0, 300.0], [3.0, 300.0]]))
    test = S(torch.tensor([[2.0, 300.25]]))
    _, x = standardized(train, test)
    assert float(x.abs().max()) < 10


def test_features_are_extracted_on_the_device_asked_for_and_cached_by_its_kind(tiny_ckpt: Path, monkeypatch):
    """Probes extracted on the CPU whatever the machine (a GPU study's 34 upstreams on 16 cores). `--device`
    (default auto: CUDA where there is one) moves the model; a GPU's features differ in their last bits, so its
    kind is part of the cache key, and the CPU's keys stay those of earlier entries. A device this machine lacks
    is refused before the model loads, naming --device."""
    import torch

    from earful.probe import features as F

    cpu = Upstream.parse(tiny_ckpt, device="cpu")
    assert set(cpu.fingerprint()) == {"kind", "weights", "info"}  # the key of every earlier entry
    extract, _ = cpu.extractor()
    (states,) = extract([torch.randn(4000)])
    assert states.device.type == "cpu" and states.shape[1:] == (3, 64)
    monkeypatch.setattr(F, "resolve_device", lambda device, key="device": torch.device("cuda"))
    assert F.Upstream.parse(tiny_ckpt, device="cuda").fingerprint()["device"] == "cuda"
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA"):
            Upstream.parse(tiny_ckpt, device="cuda")
    with pytest.raises(ValueError, match="--device gpu: not a device"):
        Upstream.parse(tiny_ckpt, device="gpu")


def test_sid_s_dev_split_is_named_only_where_sid_was_run() -> None:
    """A reviewer: results.md said SID's accuracy was measured on its dev split in a run without SID."""
    from earful.probe.config import ProbeConfig
    from earful.probe.suite import what_was_measured

    splits = ("train.jsonl", "dev.jsonl", "test.jsonl")
    assert what_was_measured({"pr": splits}, ProbeConfig())[0] == "Measured on each task's test split:"
    with_sid = what_was_measured({"pr": splits, "sid": ("train.jsonl", "labelled-10h.jsonl", "test.jsonl")},
                                 ProbeConfig())[0]
    assert with_sid.startswith("Measured on each task's test split, but SID's accuracy: on its dev split")


def test_a_run_folder_is_probed_at_its_latest_checkpoint_and_a_transformers_folder_is_named(
        tiny_ckpt: Path, tmp_path: Path, caplog, monkeypatch) -> None:
    """`earful probe RUN` (a run folder, which evaluate, transcribe, features and export-hf read as its latest) and
    `earful probe HF` said only "not an earful checkpoint (no model.json)". Now a run folder is read as every command
    reads it, its latest checkpoint, said in the log; a transformers folder is imported, one without weights named
    as import-hf names it; a path that is not there says so."""
    monkeypatch.setenv("EARFUL_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    latest = run / "checkpoints" / "step-0000002"
    shutil.copytree(tiny_ckpt, latest)
    (latest / "trainer.json").write_text("{}")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"name": latest.name, "step": 2}))
    with caplog.at_level(logging.INFO):
        upstream = Upstream.parse(run)
    assert upstream.ckpt == str(latest.resolve())
    assert f"{run}: a run folder, its latest checkpoint: {latest} (its best by validation: " \
           f"{run / 'checkpoints' / 'best'})" in caplog.text
    assert Upstream.parse(run).fingerprint() == Upstream.parse(latest).fingerprint()
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=rf"^{hf}: no model.safetensors or pytorch_model.bin"):
        Upstream.parse(hf)  # a transformers folder is imported: this one has no weights
    with pytest.raises(FileNotFoundError, match=r"nothere: no such checkpoint or run folder \(the path does not "
                                                r"exist\)$"):
        Upstream.parse(tmp_path / "nothere")
