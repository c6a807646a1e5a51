"""The GPU levers that CPU tests can prove: ``device_seconds: auto`` (the largest micro-batch that fits, found
by trial against a simulated memory limit — a CPU never runs out of memory; the trials are real forward and
backward passes of the task's model) and the ``compile`` path."""

import pytest
import torch

from earful.data.dataset import Batch
from earful.model import Wav2Vec2ForPreTraining, uses_cuda_graphs
from earful.pretrain.config import PretrainConfig, load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train.distributed import Dist
from earful.train.engine import Trainer
from earful.train.memory import MARGIN, find_device_seconds, trial


def test_the_search_finds_the_limit_with_its_margin() -> None:
    calls = []

    def fits(s: float) -> bool:
        calls.append(s)
        return s <= 13.3

    found = find_device_seconds(fits, upper=100.0)
    assert MARGIN * 13.3 * 0.95 <= found <= MARGIN * 13.3
    assert len(calls) < 15  # doubling, then bisection
    assert find_device_seconds(lambda s: True, upper=40.0) == 40.0  # the step's share fits: no accumulation
    # the share fits, but not with the margin: a micro-batch within it, keeping the margin (was 40, 1 % to spare)
    assert MARGIN * 40.4 * 0.95 <= find_device_seconds(lambda s: s <= 40.4, upper=40.0) <= MARGIN * 40.4
    assert MARGIN * 0.3 * 0.95 <= find_device_seconds(lambda s: s <= 0.3, upper=40.0) <= MARGIN * 0.3
    with pytest.raises(RuntimeError, match="not even 0.25 s of audio fits"):
        find_device_seconds(lambda s: False, upper=40.0)


def test_trials_run_the_tasks_step_and_stop_at_the_simulated_limit(tiny_corpus, monkeypatch) -> None:
    cfg = load_pretrain_config(None, ["model_preset=tiny", "data.crop_seconds=1.0", "batch_seconds=16"])
    task = PretrainTask(cfg)
    task.build_model(Dist(), None)
    real = task.probe_loss
    shapes = []
    error: RuntimeError = torch.OutOfMemoryError("CUDA out of memory (simulated)")

    def limited(wave: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:  # a device that holds 5 s
        shapes.append(tuple(wave.shape))
        assert lengths is None  # cropped batches: no padding, as training's
        if wave.numel() > 5 * 16000:
            raise error
        return real(wave, lengths)

    monkeypatch.setattr(task, "probe_loss", limited)
    found = find_device_seconds(lambda s: trial(task, cfg, Dist(), s), upper=16.0)
    assert MARGIN * 5 * 0.95 <= found <= MARGIN * 5
    error = RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")  # cuDNN's own word for it: too large as well
    assert find_device_seconds(lambda s: trial(task, cfg, Dist(), s), upper=16.0) == found
    error = RuntimeError("mat1 and mat2 shapes cannot be multiplied")  # no memory error: the search stops on it
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        find_device_seconds(lambda s: trial(task, cfg, Dist(), s), upper=16.0)
    assert all(length <= 16000 and n * length >= 16000 * 1.9 for n, length in shapes if n > 1)  # long, few
    assert all(p.grad is None for p in task.model.parameters())  # nothing left behind


def test_trials_of_a_padded_recipe_take_the_padded_path(tiny_corpus, monkeypatch) -> None:
    """With data.padding the trial batch has a shorter utterance, so the model runs its padded path (key mask,
    masked normalisation), whose memory is what training's batches need."""
    cfg = load_pretrain_config(None, ["model_preset=tiny", "data.padding=true", "data.max_seconds=2.0",
                                      "batch_seconds=16"])
    task = PretrainTask(cfg)
    task.build_model(Dist(), None)
    seen = []
    real_forward = task.model.wav2vec2.extract_features

    def spy(wave, lengths, padded):  # the backbone's CNN: padded=False is the unpadded path
        seen.append(padded)
        return real_forward(wave, lengths, padded=padded)

    monkeypatch.setattr(task.model.wav2vec2, "extract_features", spy)
    assert trial(task, cfg, Dist(), 5.0)
    assert seen == [True]
    task.cfg = load_pretrain_config(None, ["model_preset=tiny", "data.max_seconds=2.0", "batch_seconds=16"])
    assert trial(task, task.cfg, Dist(), 5.0)  # cropped to the shortest: every utterance fills the batch
    assert seen == [True, False]
    assert all(p.grad is None for p in task.model.parameters())


def test_trials_run_every_layer_whatever_layerdrop_draws(monkeypatch) -> None:
    """LayerDrop (BASE: 0.05, 12 layers: at least one layer dropped in 46 % of draws) ran in the trials: a trial
    that dropped layers held less than a micro-batch that drops none, and could pass a size that training then
    overflows. The trials run every layer, and LayerDrop is as it was after them."""
    cfg = load_pretrain_config(None, ["model_preset=tiny", "model.num_layers=12", "model.layerdrop=0.5",
                                      "data.max_seconds=2.0", "batch_seconds=16"])
    task = PretrainTask(cfg)
    task.build_model(Dist(), None)
    encoder = task.model.wav2vec2.encoder
    ran: list[int] = []
    for layer in encoder.layers:
        layer.register_forward_hook(lambda *_: ran.append(1))
    torch.manual_seed(0)
    for _ in range(5):
        ran.clear()
        assert trial(task, cfg, Dist(), 4.0)
        assert len(ran) == 12
    assert encoder.layerdrop == 0.5
    task.model.train()
    encoder(torch.randn(1, 20, cfg.model.hidden_size), None)  # training still drops: p(none of 12 at 0.5) = 1/4096
    assert len(ran) < 12 + 12


def test_auto_is_found_once_and_kept_on_resume(tiny_corpus, tmp_path, monkeypatch) -> None:
    """The micro-batch ``auto`` finds is part of the run's layout: a resume keeps it (a new search may land
    elsewhere, and another micro-batch would change the batches) instead of searching again."""
    import earful.train.engine as engine

    found = iter([2.0, 3.0])
    searches = []
    monkeypatch.setattr(engine, "auto_device_seconds", lambda task, cfg, d: searches.append(1) or next(found))
    args = ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=auto",
            "device=cpu", "data.num_workers=0", "threads=1", "data.crop_seconds=2.0", "data.min_seconds=0.5",
            "tensorboard=false", "valid_every=0", "ckpt_every=1"]
    Trainer(PretrainTask(load_pretrain_config(None, [*args, "max_steps=1"])), tmp_path / "run").fit()
    resumed = Trainer(PretrainTask(load_pretrain_config(None, [*args, "max_steps=1"])), tmp_path / "run", resume=True)
    assert resumed.cfg.device_seconds == 2.0 and resumed.accumulation == 2 and len(searches) == 1
    resumed.close()


def test_a_share_that_fits_whole_stays_whole_after_the_ranks_agree() -> None:
    """The ranks agree on the smallest micro-batch found; a float32 copy had rounded 6.7 s (the whole share) to
    6.6999998 s, and the step took 2 micro-batches of 3.35 s."""
    from earful.data.budget import BatchBudget
    from earful.train.memory import agreed

    for share in (6.7, 1866.6666666666667, 0.3):
        found = agreed(share, share, Dist())
        assert found == share and BatchBudget(share, found, 1).accumulation == 1


def test_auto_on_a_cpu_is_refused_with_the_way_out(tiny_corpus, tmp_path) -> None:
    cfg = load_pretrain_config(None, ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4",
                                      "device_seconds=auto", "device=cpu", "data.num_workers=0", "threads=1"])
    with pytest.raises(ValueError, match="device_seconds=auto finds what a GPU holds by trial; on cpu set a number"):
        Trainer(PretrainTask(cfg), tmp_path / "run")


def test_the_compiled_path_trains_as_the_eager_one(tiny_corpus, tmp_path, monkeypatch) -> None:
    """compile=true (the CNN and transformer layers; the cudagraphs backend here, which on a CPU records no graphs
    and needs no C compiler) gives the eager run's weights, and its checkpoints load as any other. With CUDA
    graphs (``compile_backend=cudagraphs``, or inductor's ``compile_mode=reduce-overhead``) each micro-step tells
    the graphs that the last replay's outputs are done with, and accumulation is refused (a replay would overwrite
    the gradient being accumulated). A mode that another backend would ignore is refused."""
    from safetensors.torch import load_file

    from earful.checkpoint import load_model

    compiled, marks = [], []
    module_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **k: compiled.append(k) or module_compile(self, **k))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    args = ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4", "device_seconds=4", "device=cpu",
            "data.num_workers=0", "threads=1", "max_steps=2", "data.crop_seconds=2.0", "data.min_seconds=0.5",
            "tensorboard=false", "valid_every=0"]
    for name, extra in (("eager", []), ("compiled", ["compile=true", "compile_backend=cudagraphs"])):
        Trainer(PretrainTask(load_pretrain_config(None, [*args, *extra])), tmp_path / name).fit()
    layers = load_pretrain_config(None, ["model_preset=tiny"]).model.num_layers
    assert compiled == [{"backend": "cudagraphs"}] * (1 + layers)  # the CNN, the layers
    assert len(marks) == 2  # 2 steps of one micro-batch
    with pytest.raises(ValueError, match="compile_mode=reduce-overhead needs compile=true"):
        load_pretrain_config(None, ["compile_mode=reduce-overhead"])
    with pytest.raises(ValueError, match="compile_mode=reduce-overhead is inductor's: compile_backend=aot_eager "
                                         "would ignore it"):
        load_pretrain_config(None, ["compile=true", "compile_mode=reduce-overhead", "compile_backend=aot_eager"])
    for extra, graphs in ((["compile_backend=cudagraphs"], "compile_backend=cudagraphs"),
                          (["compile_mode=reduce-overhead"], "compile_mode=reduce-overhead")):
        accumulating = [*args, "device_seconds=2", "compile=true", *extra]
        with pytest.raises(ValueError, match=rf"{graphs} replays CUDA graphs, .* it needs one micro-batch a step, "
                                             r"and batch_seconds=4 takes 2 of device_seconds=2"):
            Trainer(PretrainTask(load_pretrain_config(None, accumulating)), tmp_path / "accumulating")
    for backend, mode, graphs in (("inductor", "default", False), ("inductor", "reduce-overhead", True),
                                  ("inductor", "max-autotune", True), ("inductor", "max-autotune-no-cudagraphs", False),
                                  ("cudagraphs", "default", True), ("aot_eager", "default", False)):
        assert uses_cuda_graphs(backend, mode) is graphs, (backend, mode)
    a, b = (load_file(str(tmp_path / n / "checkpoints/step-0000002/model.safetensors")) for n in ("eager", "compiled"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    load_model(tmp_path / "compiled" / "checkpoints" / "step-0000002")


def _meta_task(monkeypatch, overrides: list[str]) -> PretrainTask:
    """The pre-training task with its model on the meta device, where tensors have shapes but no values: any
    host synchronisation (``.item()``, ``nonzero``, ``.tolist()``, a tensor's truth) raises there, as nothing
    could be waited for. Autocast has no meta flavour: it is made a no-op (a seam, by patching)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    monkeypatch.setattr(torch, "autocast", lambda *a, **k: nullcontext())
    task = PretrainTask(load_pretrain_config(None, ["model_preset=tiny", *overrides]))
    task.d = SimpleNamespace(device=torch.device("meta"), rank=0, world_size=1)  # type: ignore[assignment]
    task.model = _tiny_model(task.cfg).to("meta")
    return task


def _tiny_model(cfg: PretrainConfig) -> Wav2Vec2ForPreTraining:
    return Wav2Vec2ForPreTraining(cfg.model)


def _batch(lengths: list[int]) -> Batch:
    wave = torch.zeros(len(lengths), max(lengths))
    return Batch(wave=wave, lengths=torch.tensor(lengths), ids=[str(i) for i in range(len(lengths))],
                 real_seconds=sum(lengths) / 16000, padded_seconds=wave.numel() / 16000)


def _forbid_blocking_copies(monkeypatch) -> None:
    """What meta cannot see by itself: a host-to-device copy that blocks (``Tensor.to`` without non_blocking)."""
    tensor_to = torch.Tensor.to

    def to(t: torch.Tensor, *a, **k) -> torch.Tensor:
        out = tensor_to(t, *a, **k)
        assert not (t.device.type == "cpu" and out.device.type == "meta" and not k.get("non_blocking")), \
            "a blocking host-to-device copy"
        return out

    monkeypatch.setattr(torch.Tensor, "to", to)


NANOW2V2 = ["model.loss_normalisation=nanow2v2", "model.negatives_style=nanow2v2"]


@pytest.mark.parametrize("style", [[], NANOW2V2], ids=["fairseq", "nanow2v2"])
@pytest.mark.parametrize("lengths", [[16000, 16000, 16000], [16000, 12000, 9000]], ids=["cropped", "padded"])
def test_the_pre_training_micro_step_waits_for_no_device(monkeypatch, lengths, style) -> None:
    """Issue 16, lever 3: the span mask, its indices and LayerDrop are drawn on the host, so a GPU step queues
    its forward and backward without waiting for the device; on meta, any wait would raise."""
    import earful.model.components as components
    import earful.model.wav2vec2 as w2v

    task = _meta_task(monkeypatch, ["model.layerdrop=0.5", "model.mask_channel_prob=0.2", *style])
    host = torch.Generator().manual_seed(0)
    # what meta cannot see: a draw that steers the computation made from another generator than the host's
    # (the device's, on a GPU), and a host-to-device copy that blocks
    used: dict[str, list] = {"compute_mask": [], "compute_channel_mask": [], "layerdrop": []}
    for name in ("compute_mask", "compute_channel_mask"):
        real = getattr(w2v, name)
        monkeypatch.setattr(w2v, name, lambda *a, real=real, name=name, **k: used[name].append(k["generator"])
                            or real(*a, **k))
    encoder_forward = components.TransformerEncoder.forward
    monkeypatch.setattr(components.TransformerEncoder, "forward", lambda self, *a, **k: used["layerdrop"].append(
        k["generator"]) or encoder_forward(self, *a, **k))
    _forbid_blocking_copies(monkeypatch)
    loss, named = task.micro_step(task.model, _batch(lengths), None, host)  # type: ignore[arg-type]
    loss.backward()
    assert used == {"compute_mask": [host], "compute_channel_mask": [host], "layerdrop": [host]}
    assert loss.device.type == "meta" and named["masked"].device.type == "meta"
    assert all(p.grad is not None for p in task.model.wav2vec2.feature_encoder.parameters())
    # the check can fail: the same forward drawing its mask on the device needs the device's values
    with pytest.raises((NotImplementedError, RuntimeError)):
        task.model(*_batch(lengths).model_inputs(torch.device("meta")))


@pytest.mark.parametrize("style", [[], NANOW2V2], ids=["fairseq", "nanow2v2"])
def test_host_drawn_masks_give_the_draws_of_one_generator_on_a_cpu(style) -> None:
    """On a CPU the host generator is the device generator, and the task's mask drawn before the forward is the
    one the forward drew itself: the same mask, LayerDrop, distractors and loss."""
    from earful.train.step import seed_micro_batch

    cfg = load_pretrain_config(None, ["model_preset=tiny", "model.layerdrop=0.5", *style])
    torch.manual_seed(0)
    model = _tiny_model(cfg).train()
    batch = _batch([16000, 12000, 9000])
    gen, host = seed_micro_batch(3, 5, 1, torch.device("cpu"))  # and dropout's seed
    assert gen is host
    mask, idx, real = model.draw_mask(batch.lengths, batch.wave.shape[1], host, torch.device("cpu"))
    assert (real is not None) == bool(style)  # only nanow2v2 quantizes every real frame
    a = model(*batch.model_inputs(torch.device("cpu")), mask=mask, mask_indices=idx, real_indices=real,
              generator=gen, host_generator=host)
    b = model(*batch.model_inputs(torch.device("cpu")), generator=seed_micro_batch(3, 5, 1, torch.device("cpu"))[0])
    assert torch.equal(a.mask, b.mask) and torch.equal(a.negatives, b.negatives)
    assert torch.equal(idx, a.mask.reshape(-1).nonzero().squeeze(1))
    assert torch.equal(a.loss_sum(), b.loss_sum())


def test_the_fine_tuning_micro_step_waits_only_in_the_ctc_loss(monkeypatch) -> None:
    """Fine-tuning's time mask is drawn on the host and its frame lengths counted there, and its targets are
    copied without waiting: on meta, the forward and the log-probabilities run, and the CTC loss (no meta kernel;
    on a GPU it stages its lengths through the host, its one wait) gets host lengths and device targets."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    import earful.model.wav2vec2 as w2v
    from earful.finetune.config import load_finetune_config
    from earful.finetune.init import build_initial_model
    from earful.finetune.task import FinetuneTask

    monkeypatch.setattr(torch, "autocast", lambda *a, **k: nullcontext())
    cfg = load_finetune_config(None, ["model_preset=tiny", "init=scratch", "model.mask_prob=0.5",
                                      "model.mask_channel_prob=0.2", "model.layerdrop=0.5",
                                      "freeze_transformer_steps=0"])
    task = FinetuneTask(cfg)
    task.d = SimpleNamespace(device=torch.device("meta"), rank=0, world_size=1)  # type: ignore[assignment]
    task.model = build_initial_model(cfg, task.vocab).to("meta").train()
    task.no_grad_while_frozen = True
    task.targets = {"0": [3, 4, 5], "1": [6, 7], "2": [8]}
    task.start_step(0)
    host = torch.Generator().manual_seed(0)
    drawn, ctc = [], {}
    real_mask = w2v.compute_mask
    monkeypatch.setattr(w2v, "compute_mask", lambda *a, **k: drawn.append(k["generator"]) or real_mask(*a, **k))

    def ctc_loss(logp, targets, input_lengths, target_lengths, **k):  # what the CUDA kernel would receive
        ctc.update(logp=logp.device.type, targets=targets.device.type, input_lengths=input_lengths,
                   target_lengths=target_lengths)
        return logp.sum()

    monkeypatch.setattr(w2v.F, "ctc_loss", ctc_loss)
    _forbid_blocking_copies(monkeypatch)
    lengths = [16000, 12000, 9000]
    loss, named = task.micro_step(task.model, _batch(lengths), None, host)  # type: ignore[arg-type]
    loss.backward()
    assert drawn == [host]
    assert ctc["logp"] == ctc["targets"] == "meta"
    frames = task.model.frame_lengths(torch.tensor(lengths))
    assert ctc["input_lengths"].device.type == "cpu" and torch.equal(ctc["input_lengths"], frames)
    assert ctc["target_lengths"].tolist() == [3, 2, 1] and named == {"tokens": 6}
    assert all(p.grad is not None for p in task.model.lm_head.parameters())
    # the check can fail: the forward drawing its mask on the device needs the device's values
    with pytest.raises((NotImplementedError, RuntimeError)):
        task.model(*_batch(lengths).model_inputs(torch.device("meta")))


def test_fine_tuning_draws_on_the_host_what_it_drew_in_the_forward_on_a_cpu() -> None:
    """On a CPU the host generator is the device's: the mask drawn before the forward is the one the forward
    drew itself, so the logits are the same."""
    from earful.finetune.config import load_finetune_config
    from earful.finetune.init import build_initial_model
    from earful.finetune.task import FinetuneTask
    from earful.train.step import seed_micro_batch

    cfg = load_finetune_config(None, ["model_preset=tiny", "init=scratch", "model.mask_prob=0.5",
                                      "model.mask_channel_prob=0.2", "model.layerdrop=0.5"])
    task = FinetuneTask(cfg)
    model = build_initial_model(cfg, task.vocab).train()
    batch = _batch([16000, 12000, 9000])
    gen, host = seed_micro_batch(3, 5, 1, torch.device("cpu"))
    mask = model.wav2vec2.draw_mask(batch.lengths, batch.wave.shape[1], host)
    a, flen = model(*batch.model_inputs(torch.device("cpu")), mask=mask, generator=gen, host_generator=host)
    b, _ = model(*batch.model_inputs(torch.device("cpu")), generator=seed_micro_batch(3, 5, 1, torch.device("cpu"))[0])
    assert mask is not None and mask.any()
    assert torch.equal(a, b)
    assert torch.equal(flen, model.frame_lengths(batch.lengths))


def test_a_shape_grid_that_would_crop_below_the_shortest_utterance_is_refused() -> None:
    """Cropped batches (data.padding=false) are cut down to the grid: a 0.7 s grid cut batches of 2.0 s utterances
    (data.min_seconds) to 1.4 s. Refused, naming both keys; a grid that divides min_seconds, or padding, passes."""
    def validate(*overrides: str) -> None:
        load_pretrain_config(None, ["model_preset=tiny", *overrides]).validate()

    with pytest.raises(ValueError, match=r"data.shape_seconds=0.7 .*data.min_seconds=2\) down to 1.4 s"):
        validate("data.shape_seconds=0.7", "data.min_seconds=2.0")
    validate("data.shape_seconds=0.5", "data.min_seconds=2.0")
    validate("data.shape_seconds=0.7", "data.min_seconds=2.0", "data.padding=true")
    validate("data.shape_seconds=0.7", "data.min_seconds=null")
