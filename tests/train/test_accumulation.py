"""Exact gradient accumulation: k micro-batches == one batch of the same utterances (the diversity term aside)."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from earful.model import Wav2Vec2ForPreTraining, load_model_config
from earful.model.masking import compute_mask, sample_negatives

NO_RANDOMNESS = ["dropout=0.0", "attention_dropout=0.0", "dropout_input=0.0", "dropout_features=0.0",
                 "diversity_weight=0.0", "require_same_masks=false"]


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_of_k_micro_batches_equals_one_batch() -> None:
    """Sums per micro-batch, one division by the global masked count (what the engine does). The diversity term
    is off (``diversity_weight=0.0``) because it is not split-invariant, by design: its codebook perplexity is
    taken over one micro-batch's frames (fairseq's and nanow2v2's convention), so k micro-batches give another
    value than one batch (README, "Batch size in seconds"). What is exact, and tested here, is the contrastive
    loss and the feature penalty."""
    torch.manual_seed(0)
    # layer norm in the CNN: GroupNorm normalises over time, padding included, so it depends on the padding
    cfg = load_model_config("tiny", [*NO_RANDOMNESS, "feat_extract_norm=layer"])
    model = Wav2Vec2ForPreTraining(cfg).eval()  # eval: argmax quantizer, so both sides see the same codes
    model.quantizer.train(False)
    g = torch.Generator().manual_seed(1)
    lens = torch.tensor([16000, 14000, 12000, 9000])
    wave = torch.randn(4, 16000, generator=g) * (torch.arange(16000)[None] < lens[:, None])
    flen = model.frame_lengths(lens)
    frames = int(flen.max())
    mask = compute_mask(flen, frames, 0.65, 10, min_masks=2, generator=g)
    neg = sample_negatives(mask, cfg.num_negatives, generator=g)

    def total(out):
        return out.contrastive + out.diversity_weight * out.diversity + out.penalty_weight * out.penalty

    # one batch
    model.zero_grad()
    with torch.enable_grad():
        out = model(wave, lens, mask=mask, negatives=neg)
        (total(out) / out.num_masked).backward()
    whole = grads_of(model)
    # k = 2 micro-batches (each padded only to its own longest utterance)
    model.zero_grad()
    n_global = 0
    for sl in (slice(0, 2), slice(2, 4)):
        w = wave[sl, : int(lens[sl].max())]
        f = int(model.frame_lengths(lens[sl]).max())
        o = model(w, lens[sl], mask=mask[sl, :f], negatives=neg[sl, :f])
        total(o).backward()
        n_global += int(o.num_masked)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(n_global)
    micro = grads_of(model)
    assert whole.keys() == micro.keys()
    for k in whole:
        torch.testing.assert_close(micro[k], whole[k], rtol=1e-5, atol=1e-5, msg=k)


ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(args: list[str]) -> str:
    """Runs ``args`` to success; returns what they wrote to stderr (the log)."""
    r = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stderr


def _pretrain(train: Path, out: Path) -> list[str]:
    """``earful pretrain`` of 4 steps of 8 s on 4 s devices, without randomness that the layout could change."""
    return ["-m", "earful.cli", "pretrain", "model_preset=tiny", f"data.train={train}", "data.valid=null",
            "batch_seconds=8", "device_seconds=4", "max_steps=4", "log_every=2", "valid_every=0", "ckpt_every=100",
            "data.num_workers=0", "data.crop_seconds=null", "data.min_seconds=null", "optim.lr=1e-3",
            "optim.schedule=constant", "tensorboard=false", "threads=1", "model.dropout=0.0",
            "model.attention_dropout=0.0", "model.dropout_input=0.0", "model.dropout_features=0.0", "--out", str(out)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, odd_corpus) -> Path:
    """The reference: 1 process × 2 micro-batches."""
    out = tmp_path_factory.mktemp("one") / "run"
    _run([sys.executable, *_pretrain(odd_corpus, out)])
    return out


def _assert_same_final(one: Path, other: Path) -> None:
    a = load_file(str(one / "checkpoints/step-0000004/model.safetensors"))
    b = load_file(str(other / "checkpoints/step-0000004/model.safetensors"))
    init = load_file(str(one / "checkpoints/init/model.safetensors"))
    moved = sum((a[k] - init[k]).abs().sum().item() for k in a)
    assert moved > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_two_process_ddp_equals_one_process_accumulated(tmp_path, one_process, odd_corpus) -> None:
    """torchrun --nproc-per-node 2 (gloo) × 1 micro-batch == 1 process × 2 micro-batches, across an epoch
    boundary within a step (an epoch of 5 batches: the ranks deal the epochs as one stream)."""
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          *_pretrain(odd_corpus, tmp_path / "two")])
    _assert_same_final(one_process, tmp_path / "two")


def test_two_processes_resumed_mid_stream_on_two_or_one_equal_one_process(tmp_path, one_process, odd_corpus) -> None:
    """2 processes stopped after step 3, their ranks in epoch 1 (whose first batch is rank 1's: epoch 0 has 5
    batches) and a batch apart in it, resumed on 2 processes and on 1 (a relaid epoch): both end where 1
    process × 2 micro-batches does. The checkpoint keeps each rank's place and the epoch's phase."""
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    stopped = tmp_path / "stopped"
    _run([*two, *_pretrain(odd_corpus, stopped), "max_steps=3"])
    state = torch.load(stopped / "checkpoints/step-0000003/state.pt", weights_only=True)
    assert [(s["epoch"], s["position"], s["phase"]) for s in state["loaders"]] == [(1, 0, 1), (1, 1, 1)]
    for name, launch in (("on-two", two), ("on-one", [])):
        shutil.copytree(stopped, tmp_path / name)
        err = _run([*(launch or [sys.executable]), *_pretrain(odd_corpus, tmp_path / name), "--resume",
                    "--allow-changes", "max_steps=4"])
        _assert_same_final(one_process, tmp_path / name)
        # said once, by the main rank (each rank had said it: as many times as processes)
        for line in ("resuming with another recipe (allowed by --allow-changes): max_steps: 3 -> 4", "resumed from",
                     "done: "):
            assert err.count(line) == 1, (line, err[-3000:])


def test_a_non_finite_stop_under_torchrun_is_said_once(tmp_path, odd_corpus) -> None:
    """Every rank stops after max_nan_steps (the count is reduced), and each had logged why: the main rank alone
    says it (as 'resumed from', 'stopped by' and 'done')."""
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    r = subprocess.run([*two, *_pretrain(odd_corpus, tmp_path / "nan"), "optim.lr=1e6", "max_nan_steps=2",
                        "max_steps=20"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.count("non-finite steps in a row at step") == 1, r.stderr[-3000:]


SIGNALLED = """
import os, signal, sys
from earful.cli import run
from earful.pretrain.task import PretrainTask

real_start = PretrainTask.start_step


def start_step(self, step):
    real_start(self, step)
    if step == 1:  # both ranks' signals land before the step's statistics are all-reduced
        os.kill(os.getpid(), signal.SIGUSR1 if os.environ["RANK"] == "0" else signal.SIGTERM)


PretrainTask.start_step = start_step
sys.argv[0] = "earful"
run()
"""


def test_ranks_signalled_differently_all_stop_by_sigterm(tmp_path, odd_corpus) -> None:
    """SIGUSR1 to rank 0 and SIGTERM to rank 1 in the same step (a time limit's notice, then ``scancel``): every
    rank stops by SIGTERM, which outranks it. Each rank had recorded its own (rank 0's trainer.json said SIGUSR1,
    and a Slurm job, which acts on rank 0's stop, requeued a cancelled job; a rank that received nothing said "a
    signal to another rank")."""
    script = tmp_path / "signalled.py"
    script.write_text(SIGNALLED)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script), *_pretrain(odd_corpus, out)[2:]], cwd=ROOT,
                       env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.count("stopped by SIGTERM at step 2") == 1, r.stderr[-3000:]
    info = json.loads((out / "checkpoints" / "step-0000002" / "trainer.json").read_text())
    assert info["stopped_by"] == "SIGTERM" and info["step"] == 2


def _port_is_free(port: int) -> bool:
    """Whether the c10d store could listen on ``port``: bound as the store binds it, on every IPv4 address. (A
    bind to 127.0.0.1 alone passed a port another process held on another local address, 127.0.0.2 or the
    host's own, on which the store then failed to listen.)"""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:  # in use
            return False
        return True


def _rendezvous_port() -> int:
    """A free port below the kernel's ephemeral range (Linux), where it hands out none (a bind to port 0,
    a connection's own end: other tests' torchrun stores and gloo sockets under xdist) while the agents start;
    without /proc, one it hands out."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 10000
    for port in random.sample(range(10000, low), min(20, max(0, low - 10000))):
        if _port_is_free(port):
            return port
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _two_agents(port: int, out: Path, corpus: Path, seconds: float = 300,
                grace: float = 20) -> tuple[list[int | None], list[str]]:
    """Two torchrun agents, ``--nnodes 2`` of one process each, meeting by c10d on ``port``: exit statuses, logs.
    The first hosts the store (``is_host=1``, as a cluster's head node: the one whose name the endpoint is), the
    second joins it (``is_host=0``). Both had guessed they host it, and the one that could not bind the port
    joined whatever listened there: where another process held the port and never answered, both waited for
    it (one alone, over 9 minutes). Now the host ends at once (RendezvousConnectionError, EADDRINUSE), and once
    one agent has ended in an error the other has ``grace`` seconds (it waits for its peer) before it is stopped;
    ``seconds`` bound the whole."""
    logs = [out.parent / f"{out.name}-agent-{i}.log" for i in range(2)]
    agents = []
    for i, log in enumerate(logs):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
               "--rdzv-conf", f"is_host={int(i == 0)}", *_pretrain(corpus, out)]
        with open(log, "w") as f:  # a file, not a pipe that fills while no one reads it
            agents.append(subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT, text=True))
    end, failed = time.monotonic() + seconds, None
    try:
        while any(a.poll() is None for a in agents):
            now = time.monotonic()
            if failed is None and any(a.returncode not in (None, 0) for a in agents):
                failed = now
            if now > end or (failed is not None and now > failed + grace):
                break
            time.sleep(0.2)
    finally:
        for a in agents:  # SIGTERM first: torchrun stops its worker with it
            if a.poll() is None:
                a.terminate()
        for a in agents:
            try:
                a.wait(timeout=10)
            except subprocess.TimeoutExpired:
                a.kill()
                a.wait()
    text = [log.read_text(errors="replace") for log in logs]
    if failed is None and time.monotonic() > end:  # say where it hung (seen once in CI)
        pytest.fail(f"the two agents did not finish in {seconds:g} s:\n" + "\n---\n".join(t[-3000:] for t in text))
    return [a.returncode for a in agents], text


def _port_taken(codes: list[int | None], logs: list[str]) -> bool:
    """Whether the agents failed because the store could not be had on their port (another process held it)."""
    taken = ("RendezvousConnectionError", "EADDRINUSE", "address already in use")
    return codes != [0, 0] and any(t.lower() in log.lower() for log in logs for t in taken)


def test_two_torchrun_agents_meet_by_c10d_rendezvous_and_equal_one_process(tmp_path, one_process, odd_corpus,
                                                                          deadline) -> None:
    """Multi-node torchrun as on a cluster (docs/cluster.md): two agents, ``--nnodes 2`` of one process each,
    rendezvous through c10d on a free localhost port, one run folder (a shared filesystem) == 1 process × 2.
    The port is free when chosen, not when the agents bind it seconds later: where their logs say the store could
    not be had (another process took the port meanwhile), they meet once more, on another port."""
    with deadline(900, "two torchrun agents meeting (twice at most)"):
        out = tmp_path / "nodes"
        codes, logs = _two_agents(_rendezvous_port(), out, odd_corpus)
        if _port_taken(codes, logs):
            out = tmp_path / "nodes-on-another-port"
            codes, logs = _two_agents(_rendezvous_port(), out, odd_corpus)
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    info = json.loads((out / "checkpoints/step-0000004/trainer.json").read_text())
    assert (info["world_size"], info["accumulation"]) == (2, 1)
    _assert_same_final(one_process, out)


def test_torchrun_agents_on_a_port_another_process_holds_silently_end_at_once(tmp_path, odd_corpus,
                                                                              deadline) -> None:
    """A process that took the rendezvous port (between its choice and the agents' start) and listens on it
    without ever answering: the agents joined it and waited (the test failed after 300 s, saying nothing of the
    port). Now the host agent cannot bind it and says so at once, the other is stopped, and the test meets again
    on another port."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        with deadline(150, "two torchrun agents on a port held by a silent listener"):
            codes, logs = _two_agents(silent.getsockname()[1], tmp_path / "held", odd_corpus)
    assert time.monotonic() - start < 120, codes
    assert _port_taken(codes, logs) and "RendezvousConnectionError" in logs[0], "\n---\n".join(logs)


def test_a_port_held_on_another_local_address_is_not_free() -> None:
    """The store listens on every address: a port another process holds on 127.0.0.2 is not free for it."""
    with socket.socket() as other:
        other.bind(("127.0.0.2", 0))
        other.listen()
        port = other.getsockname()[1]
        assert not _port_is_free(port)
    assert _port_is_free(port)


def test_micro_batches_share_the_batch_evenly() -> None:
    """A step holds at most batch_seconds of padded audio, also when device_seconds does not divide it: 6 s on
    4 s devices is two micro-batches of 3 s, not of 4 s (8 s a step)."""
    from earful.pretrain.config import load_pretrain_config

    for batch, device, world, accum, micro in ((6, 4, 1, 2, 3.0), (16, 16, 1, 1, 16.0), (32, 16, 1, 2, 16.0),
                                                (300, 100, 2, 2, 75.0), (5600, 87.5, 8, 8, 87.5)):
        budget = load_pretrain_config(None, [f"batch_seconds={batch}", f"device_seconds={device}"]).budget(world)
        assert budget.accumulation == accum and budget.micro_seconds == pytest.approx(micro)
        assert budget.micro_seconds <= device and world * accum * budget.micro_seconds == pytest.approx(batch)


VALIDATE = """
import json, sys
from earful.pretrain.config import load_pretrain_config
from earful.pretrain.task import PretrainTask
from earful.train import distributed as D

cfg = load_pretrain_config(None, sys.argv[1:])
task, d = PretrainTask(cfg), D.setup("cpu")
task.build_model(d, None)
task.build_data(cfg.budget(d.world_size))
found = task.validate()
if d.is_main:
    print("VALID " + json.dumps(found))
D.teardown(finished=True)
"""


def test_validation_is_the_same_on_one_and_two_processes(tmp_path, tiny_corpus) -> None:
    """PretrainTask.validate of the same weights on 1 process and on 2 (torchrun, gloo): each batch draws by its
    global index, the batch repeated to give both ranks as many is left out and the sums are all-reduced, so the
    numbers are those of one process. The validation set is chosen to pack into an odd number of batches, one of
    several utterances: the fullest batch had been split for 2 ranks, which validated other batches (a loss of
    3.222427 against 3.224271 in a review's run)."""
    from earful.data.budget import BatchBudget
    from earful.data.manifest import read_manifest
    from earful.data.sampler import SecondsBatchSampler

    valid, script = tmp_path / "valid.jsonl", tmp_path / "validate.py"
    lines = tiny_corpus[1].read_text().splitlines(keepends=True)
    for n, seconds in ((n, s) for n in range(5, len(lines) + 1) for s in (3.0, 3.5, 4.0, 5.0, 6.0)):
        valid.write_text("".join(lines[:n]))
        one = SecondsBatchSampler([u.num_samples for u in read_manifest(valid)],
                                  BatchBudget.per_device(seconds, 1, min_seconds=0.5), shuffle=False)
        batches = one.epoch_batches(0)
        if len(batches) % 2 and max(len(b) for b in batches) >= 2:
            break
    else:
        pytest.fail("no validation set of the tiny corpus packs into an odd number of batches of several")
    script.write_text(VALIDATE)
    args = [str(script), "model_preset=tiny", f"data.train={tiny_corpus[0]}", f"data.valid={valid}",
            "batch_seconds=4", "device_seconds=4", f"valid_seconds={seconds}", "data.min_seconds=0.5",
            "data.num_workers=0", "threads=1"]
    found = []
    for launcher in ([], ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]):
        r = subprocess.run([sys.executable, *launcher, *args], cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        (line,) = [x for x in r.stdout.splitlines() if x.startswith("VALID ")]
        found.append(json.loads(line.removeprefix("VALID ")))
    one, two = found
    assert one["loss"] > 0 and two == pytest.approx(one, rel=1e-9)
