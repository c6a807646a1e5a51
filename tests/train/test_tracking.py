"""A run logs to TensorBoard and to every experiment tracker's local store (W&B offline, MLflow's file store,
trackio), resumes into the same tracked run, and the values read back from each store are the run's own."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from earful.config import ConfigError
from earful.train.recipe import recipe_hash

ROOT = Path(__file__).resolve().parents[2]


def pretrain(train: Path, valid: Path, out: Path, steps: int, *extra: str) -> None:
    args = [sys.executable, "-m", "earful.cli", "pretrain", "model_preset=tiny", f"data.train={train}",
            f"data.valid={valid}", "batch_seconds=4", "device_seconds=4", f"max_steps={steps}", "log_every=2",
            "valid_every=2", "ckpt_every=2", "data.num_workers=0", "data.min_seconds=0.5", "data.crop_seconds=2.0",
            "threads=1", "tensorboard=true", "tracking.backends=[wandb,mlflow,trackio]", "tracking.group=study-g",
            "tracking.project=earful-test", "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


def wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-ID.wandb``: LevelDB's log format, records of wandb's protobuf);
    the wandb package has no reader of its own any more."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, chunk, out = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or a record's last piece
            record = pb.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def test_a_run_logs_to_every_tracker_and_resumes_into_the_same_tracked_run(tmp_path, tiny_corpus, monkeypatch) -> None:
    out = tmp_path / "run"
    pretrain(*tiny_corpus, out, 2)
    pretrain(*tiny_corpus, out, 4, "--resume", "--allow-changes")  # another max_steps: a recipe change
    train = {r["step"]: r for r in map(json.loads, (out / "train.jsonl").read_text().splitlines())}
    assert sorted(train) == [2, 4] and train[4]["hours_padded"] > train[2]["hours_padded"] > 0
    info = json.loads((out / "checkpoints" / "step-0000004" / "trainer.json").read_text())
    recipe = recipe_hash(info["recipe"])

    # TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "tb"))
    tb.Reload()
    assert [(e.step, pytest.approx(e.value)) for e in tb.Scalars("train/hours_padded")] == [
        (2, train[2]["hours_padded"]), (4, train[4]["hours_padded"])]

    # MLflow: one run in the group's experiment, continued on resume
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's file store is in maintenance mode
    client = MlflowClient((out / "tracking" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("study-g")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["batch_seconds"] == "4.0" and run.data.params["model.hidden_size"] == "64"
    assert run.data.tags["recipe_sha256"] == recipe != recipe_hash({})
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/hours_padded")]
    assert history == [(2, pytest.approx(train[2]["hours_padded"])), (4, pytest.approx(train[4]["hours_padded"]))]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid/loss")] == [2, 4]

    # W&B offline: two offline segments of one run id, in the group, with the config and the history
    files = sorted((out / "tracking" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and len({f.name for f in files}) == 1
    history, config = {}, {}
    for f in files:
        for record in wandb_records(f):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.run_group == "study-g" and record.run.project == "earful-test"
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                history[record.history.step.num] = {**history.get(record.history.step.num, {}), **row}
    assert config["batch_seconds"] == 4.0 and config["recipe_sha256"] == recipe and config["model"]["hidden_size"] == 64
    assert {s: r["train/hours_padded"] for s, r in history.items() if "train/hours_padded" in r} == {
        2: pytest.approx(train[2]["hours_padded"]), 4: pytest.approx(train[4]["hours_padded"])}

    # trackio: its store read by trackio itself (it fixes its folder when first imported, hence a process)
    read = ("import json, trackio.sqlite_storage as s; S = s.SQLiteStorage; "
            "print(json.dumps([S.get_runs('earful-test'), S.get_logs('earful-test', 'run'), "
            "S.get_run_config('earful-test', 'run')]))")
    env = {**os.environ, "TRACKIO_DIR": str(out / "tracking" / "trackio")}
    r = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    runs, logs, config = json.loads(r.stdout.splitlines()[-1])
    assert runs == ["run"] and config["_Group"] == "study-g"
    assert config["batch_seconds"] == 4.0 and config["recipe_sha256"] == recipe
    hours = {rec["step"]: rec["train/hours_padded"] for rec in logs if "train/hours_padded" in rec}
    assert hours == {2: pytest.approx(train[2]["hours_padded"]), 4: pytest.approx(train[4]["hours_padded"])}


def test_a_tracker_that_is_not_installed_stops_the_run_before_it_trains(tmp_path, tiny_corpus, monkeypatch) -> None:
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    cfg = load_pretrain_config(None, ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "tensorboard=false",
                                      "tracking.backends=[mlflow]"])
    with pytest.raises(ConfigError, match=r"'mlflow' needs the mlflow-skinny package.*install 'earful\[tracking\]'"):
        Trainer(PretrainTask(cfg), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="named twice"):
        load_pretrain_config(None, ["tracking.backends=[wandb,wandb]"])


def test_tensorboard_and_the_trackers_log_the_same_scalars(tmp_path) -> None:
    """One filter for both: a record's finite numbers, never its step, text, flags or non-finite values."""
    import math

    from earful.train.config import TrackingConfig
    from earful.train.monitor import TensorBoard
    from earful.train.tracking import Tracking

    record = {"step": 7, "loss": 1.5, "utterances": 3, "wer": math.nan, "grad_norm": math.inf, "stopped": True,
              "note": "x"}
    tb = TensorBoard(tmp_path / "tb", enabled=True)
    written: list[tuple[str, float, int]] = []
    tb.writer.add_scalar = lambda tag, value, step: written.append((tag, value, step))
    tb.write("train", record, 7)
    tracking, logged = Tracking(TrackingConfig(), tmp_path, enabled=False), []
    tracking._send_to("any", type("Run", (), {"log": lambda self, metrics, step: logged.append((metrics, step)),
                                              "finish": lambda self, status: None})())
    tracking.log("train", record, 7)
    tracking.finish("finished")  # what was queued is sent
    assert logged == [({"train/loss": 1.5, "train/utterances": 3.0}, 7)]
    assert written == [(tag, value, 7) for tag, value in logged[0][0].items()]


def test_throughput_leaves_out_validation_and_checkpoints(tmp_path, tiny_corpus, monkeypatch) -> None:
    """The interval's audio-s/s and data wait count training time only. On a patched clock each step waits 0.25 s
    for its batch and computes for 1 s, a validation takes 100 s and a checkpoint 50 s: a record of 2 steps holds
    its audio over 2.5 s and a data wait of 0.2 (before, validations made it fall 100-fold)."""
    import time

    from earful.data.dataset import AudioLoader
    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train.engine import Trainer

    now = [0.0]

    def wait(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    real_iter, real_micro_step, real_save = AudioLoader.__iter__, PretrainTask.micro_step, Trainer.save

    def slow_batches(self):
        for batch in real_iter(self):
            wait(0.25)
            yield batch

    monkeypatch.setattr(AudioLoader, "__iter__", slow_batches)
    monkeypatch.setattr(PretrainTask, "micro_step", lambda *a: (wait(1.0), real_micro_step(*a))[1])
    monkeypatch.setattr(Trainer, "save", lambda *a, **k: (wait(50.0), real_save(*a, **k))[1])
    cfg = load_pretrain_config(None, ["model_preset=tiny", f"data.train={tiny_corpus[0]}", "batch_seconds=4",
                                      "device_seconds=4", "max_steps=4", "log_every=2", "valid_every=1",
                                      "ckpt_every=1", "data.num_workers=0", "threads=1", "data.crop_seconds=2.0",
                                      "data.min_seconds=0.5", "tensorboard=false"])
    trainer = Trainer(PretrainTask(cfg), tmp_path / "run")
    monkeypatch.setattr(trainer, "_validate_and_keep_best", lambda: wait(100.0))
    trainer.fit()
    log = [json.loads(x) for x in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    hours = [0.0, *(r["hours_real"] for r in log)]
    audio = [(hours[i + 1] - hours[i]) * 3600 for i in range(len(log))]  # each interval's real audio
    assert [r["step"] for r in log] == [2, 4] and now[0] > 300
    assert [r["audio_seconds_per_second"] for r in log] == pytest.approx([a / 2.5 for a in audio])
    assert [r["data_wait_fraction"] for r in log] == pytest.approx([0.2, 0.2])


def test_trackio_says_how_a_run_that_did_not_finish_ended() -> None:
    """trackio's runs have no end status: a stopped or failed run looked finished there. It now raises an alert
    (a warning for a stop, which resumes; an error for a failure) before finishing; a finished run raises none."""
    import trackio

    from earful.train.tracking import TrackingConfig, _Trackio

    calls: list[tuple] = []

    class Run:
        def alert(self, **kw):
            calls.append(("alert", kw["title"], kw["level"]))

        def finish(self):
            calls.append(("finish",))

    class Module:
        AlertLevel = trackio.AlertLevel

        @staticmethod
        def init(**kw):
            return Run()

    for status in ("finished", "stopped", "failed"):
        _Trackio(Module, TrackingConfig(), Path("."), "run", {}, {}, {}).finish(status)
    assert calls == [("finish",), ("alert", "run stopped", trackio.AlertLevel.WARN), ("finish",),
                     ("alert", "run failed", trackio.AlertLevel.ERROR), ("finish",)]


def test_a_tracker_that_cannot_start_is_one_error_naming_it_and_the_way_out(tmp_path) -> None:
    """A mistyped tracking.mlflow_uri, or a resumed run whose MLflow run is gone (its store deleted or moved): a
    ConfigError (the command line's one line, status 2), where MLflow's own exception ended in a traceback (1)."""
    from earful.train.config import TrackingConfig
    from earful.train.tracking import Tracking

    bad = Tracking(TrackingConfig(backends=["mlflow"], mlflow_uri="htp://localhost:5000"), tmp_path / "a", True)
    with pytest.raises(ConfigError, match=r"mlflow run cannot start \(tracking.mlflow_uri=htp://localhost:5000"):
        bad.start({}, "0" * 64)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tracking.json").write_text(json.dumps({"mlflow": "0123456789abcdef0123456789abcdef"}))
    gone = Tracking(TrackingConfig(backends=["mlflow"]), tmp_path / "b", True)
    with pytest.raises(ConfigError, match=r"continues run '0123456789abcdef.*tracking.json: remove its 'mlflow' key"):
        gone.start({}, "0" * 64)


def test_an_mlflow_server_that_is_not_there_fails_the_start_in_seconds(tmp_path, deadline) -> None:
    """A refused connection (tracking.mlflow_uri=http://127.0.0.1:9) took 4 min 15 s to fail the start (MLflow's
    7 retries with a backoff factor of 2); now one retry: well within the deadline. A user's own retry setting
    stands, and the start's settings do not outlive it."""
    import socket

    from earful.train.config import TrackingConfig
    from earful.train.tracking import Tracking

    with socket.socket() as s:  # a port nothing listens on: bound, never listening (connections are refused)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        bad = Tracking(TrackingConfig(backends=["mlflow"], mlflow_uri=f"http://127.0.0.1:{port}"), tmp_path, True)
        with deadline(60, "the start against a refused connection"), pytest.raises(
                ConfigError, match=rf"mlflow run cannot start \(tracking.mlflow_uri=http://127.0.0.1:{port}"):
            bad.start({}, "0" * 64)
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_a_plain_path_is_an_mlflow_file_store(tmp_path, monkeypatch) -> None:
    """MLflow reads a plain path (its usual ./mlruns) as a file store, which it refuses unless
    MLFLOW_ALLOW_FILE_STORE: earful allowed it for file: URIs only, and the path was refused."""
    from earful.train.config import TrackingConfig
    from earful.train.tracking import Tracking

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    tracking = Tracking(TrackingConfig(backends=["mlflow"], mlflow_uri="mlruns"), tmp_path / "run", True)
    tracking.start({"a": 1}, "0" * 64)
    tracking.finish("finished")
    assert any((tmp_path / "mlruns").iterdir())


def test_a_tracker_that_fails_while_training_is_dropped_not_the_run(tmp_path, caplog) -> None:
    """A tracker whose log raises (its run deleted in the MLflow UI, a full disk, a server gone) is warned about,
    closed as failed and dropped; the others log on. Its exception stopped the training, without a checkpoint.
    It is closed failing fast: against the MLflow server that just failed, its own retries (about 4 min) had
    stalled the step a second time."""
    from earful.train.config import TrackingConfig
    from earful.train.tracking import Tracking

    logged, finished, broken = [], [], []

    class Broken:
        fails_fast = True  # as MLflow's client: FAIL_FAST bounds its calls

        def log(self, metrics, step):
            broken.append(step)
            raise OSError("No space left on device")

        def finish(self, status):
            finished.append((status, os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")))  # FAIL_FAST's: 1

    class Fine:
        def log(self, metrics, step):
            logged.append(step)

        def finish(self, status):
            finished.append((status, "fine"))

    tracking = Tracking(TrackingConfig(), tmp_path, enabled=False)
    tracking._send_to("mlflow", Broken())
    tracking._send_to("wandb", Fine())
    tracking.log("train", {"loss": 1.0}, 3)
    tracking.log("train", {"loss": 0.5}, 4)
    tracking.finish("finished")
    assert logged == [3, 4] and broken == [3] and sorted(finished) == [("failed", "1"), ("finished", "fine")]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert "logging to mlflow failed at step 3" in caplog.text


def test_a_run_in_the_current_folder_is_tracked_under_that_folder_s_name(tmp_path, monkeypatch) -> None:
    """``--out .``: the tracked run was named '' (Path('.').name; MLflow then made up a name)."""
    from mlflow.tracking import MlflowClient

    from earful.train.config import TrackingConfig
    from earful.train.tracking import Tracking

    (tmp_path / "my-run").mkdir()
    monkeypatch.chdir(tmp_path / "my-run")
    tracking = Tracking(TrackingConfig(backends=["mlflow"], project="p"), Path("."), True)
    tracking.start({}, "0" * 64)
    tracking.finish("finished")
    client = MlflowClient((tmp_path / "my-run" / "tracking" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("p").experiment_id])
    assert run.info.run_name == "my-run"


def test_two_runs_of_one_name_are_two_trackio_runs_and_a_resume_continues_its_own(tmp_path) -> None:
    """Two folders called pretrain with one tracking.dir were logged by trackio as one run (steps 1, 2, 1, 2):
    trackio continues a run by its name. A new run takes a name its project has not (pretrain-2), recorded in
    tracking.json, and a resume continues that one. (A process: trackio fixes its folder when first imported.)"""
    script = f"""
import json, sys
from pathlib import Path
from earful.train.config import TrackingConfig
from earful.train.tracking import Tracking
store = Path({str(tmp_path / "store")!r})
def segment(root, step):
    t = Tracking(TrackingConfig(backends=["trackio"], project="p", dir=str(store)), Path(root), True)
    t.start({{}}, "0" * 64)
    t.log("train", {{"loss": float(step)}}, step)
    t.finish("finished")
segment({str(tmp_path / "a" / "pretrain")!r}, 1)
segment({str(tmp_path / "b" / "pretrain")!r}, 1)
segment({str(tmp_path / "a" / "pretrain")!r}, 2)
import trackio.sqlite_storage as s
S = s.SQLiteStorage
print(json.dumps({{n: [r["step"] for r in S.get_logs("p", n)] for n in S.get_runs("p")}}))
"""
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "store" / "trackio"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("{")]  # trackio prints its own lines too
    assert json.loads(line) == {"pretrain": [1, 2], "pretrain-2": [1]}
    assert json.loads((tmp_path / "b" / "pretrain" / "tracking.json").read_text()) == {"trackio": "pretrain-2"}


def test_a_tracker_that_cannot_start_closes_those_started_before_it(tmp_path, monkeypatch) -> None:
    """W&B started, then MLflow failed: the W&B run was left running (an orphan in the project) as the command
    ended on the error. It is closed as failed."""
    from earful.train import tracking as tracking_module
    from earful.train.config import TrackingConfig

    closed = []

    class Started:
        def __init__(self, *args) -> None:
            pass

        def finish(self, status) -> None:
            closed.append(status)

    monkeypatch.setattr(tracking_module, "_Wandb", Started)
    both = tracking_module.Tracking(TrackingConfig(backends=["wandb", "mlflow"], mlflow_uri="htp://x"), tmp_path, True)
    with pytest.raises(ConfigError, match="mlflow run cannot start"):
        both.start({}, "0" * 64)
    assert closed == ["failed"] and both.senders == {}


def _sending_to(tmp_path, **runs):
    """A Tracking whose backends are ``runs`` (fakes, by backend name), each with its sender thread."""
    from earful.train.config import TrackingConfig
    from earful.train.tracking import Tracking

    tracking = Tracking(TrackingConfig(), tmp_path, enabled=False)
    for backend, run in runs.items():
        tracking._send_to(backend, run)
    return tracking


class _Stalling:
    """A tracker whose log waits until ``release`` is set (a server gone, MLflow retrying it for minutes): it says
    when a call has begun (``entered``) and keeps the steps it was given, in order, and how it was closed."""

    def __init__(self) -> None:
        import threading

        self.release, self.entered = threading.Event(), threading.Event()
        self.steps: list[int] = []
        self.closed: list[tuple[str, str | None]] = []

    def log(self, metrics, step) -> None:
        self.entered.set()
        assert self.release.wait(120), "never released"
        self.steps.append(step)

    def finish(self, status) -> None:
        self.closed.append((status, os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")))


def test_a_tracker_that_stalls_does_not_stall_the_training(tmp_path, deadline, caplog) -> None:
    """Tracking.log called each tracker in the step loop: one whose call hung (an MLflow server gone: about 4 min
    of MLflow's own retries) held every step, and every rank of a DDP run. The step loop only queues now: log
    returns at once, the other trackers get their records meanwhile, and once the stalled one answers it gets every
    record, in order, before it is closed."""
    import threading

    from earful.train.config import TrackingConfig
    from earful.train.tracking import Tracking

    stalled, fine_steps, fine_done = _Stalling(), [], threading.Event()

    class Fine:
        def log(self, metrics, step):
            fine_steps.append(step)
            if step == 20:
                fine_done.set()

        def finish(self, status):
            pass

    tracking = Tracking(TrackingConfig(), tmp_path, enabled=False)
    tracking._send_to("mlflow", stalled)
    tracking._send_to("wandb", Fine())
    with deadline(60, "logging beside a tracker that stalls"):
        for step in range(1, 21):
            tracking.log("train", {"loss": 1.0 / step}, step)
    assert fine_done.wait(60) and fine_steps == list(range(1, 21))  # not held up by the stalled one
    assert stalled.entered.wait(60) and stalled.steps == []
    stalled.release.set()
    tracking.finish("finished")
    assert stalled.steps == list(range(1, 21)) and stalled.closed == [("finished", None)]
    assert "not sent" not in caplog.text and "stalls" not in caplog.text


def test_the_end_of_a_run_waits_a_bounded_time_for_a_stalled_tracker(tmp_path, deadline, caplog, monkeypatch) -> None:
    """The end waits ``wait`` seconds for what is queued, then says how many records each tracker did not get; an
    MLflow run is closed beside the call that hangs, failing fast (its status in the store), another tracker's run
    when its call returns. Before, the end waited on the hung call."""
    from mlflow.tracking import MlflowClient

    from earful.train import tracking as tracking_module
    from earful.train.config import TrackingConfig

    mlflow_stalls, other = _Stalling(), _Stalling()
    monkeypatch.setattr(tracking_module._Mlflow, "log", lambda self, metrics, step: mlflow_stalls.log(metrics, step))
    tracking = tracking_module.Tracking(TrackingConfig(backends=["mlflow"], project="p"), tmp_path, True)
    tracking.start({}, "0" * 64)
    tracking._send_to("wandb", other)
    senders = dict(tracking.senders)
    for step in (2, 4, 6):
        tracking.log("train", {"loss": 1.0}, step)
    assert mlflow_stalls.entered.wait(60) and other.entered.wait(60)
    with deadline(60, "the end beside a tracker that stalls"):
        tracking.finish("stopped", wait=0.5)
    for backend in ("mlflow", "wandb"):  # the record in flight is not counted: it may still land
        assert f"{backend} is still sending a record 0.5 s after the run's end; 2 record(s) were not sent to it" \
            in caplog.text
    assert "the wandb run is not closed yet" in caplog.text and "the mlflow run" not in caplog.text
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((tmp_path / "tracking" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("p").experiment_id])
    assert run.info.status == "KILLED"
    mlflow_stalls.release.set()
    other.release.set()
    for sender in senders.values():
        sender.thread.join(60)
    assert other.closed == [("stopped", None)]  # closed once its call returned (MLflow's settings not its own)
    assert mlflow_stalls.steps == [2] and other.steps == [2]  # the rest given up
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_a_tracker_that_leaves_too_many_records_unsent_is_dropped(tmp_path, deadline, caplog, monkeypatch) -> None:
    """A tracker whose call never returned kept every later record in memory, for as long as the run trained. Past
    MAX_WAITING records unsent it is warned about and dropped, and closed as failed (failing fast), as a tracker that
    fails: once its call returns, or at the end beside the call where its client allows it (MLflow's)."""
    from earful.train import tracking as tracking_module

    monkeypatch.setattr(tracking_module, "MAX_WAITING", 2)
    returns, hangs = _Stalling(), _Stalling()
    hangs.fails_fast = True
    tracking = _sending_to(tmp_path, trackio=returns, mlflow=hangs)
    tracking.log("train", {"loss": 1.0}, 1)
    assert returns.entered.wait(60) and hangs.entered.wait(60)
    for step in (2, 3, 4):
        tracking.log("train", {"loss": 1.0}, step)
    assert caplog.text.count("trackio has not taken the last 2 records (it stalls)") == 1
    assert caplog.text.count("mlflow has not taken the last 2 records (it stalls)") == 1
    returns.release.set()
    tracking.senders["trackio"].thread.join(60)  # its call returned: it closed the run itself
    with deadline(60, "the end beside a dropped tracker that hangs"):
        tracking.finish("finished", wait=0.5)
    assert returns.steps == [1] and returns.closed == [("failed", None)]
    assert hangs.closed == [("failed", "1")] and hangs.steps == []
    hangs.release.set()


def test_a_run_trains_to_its_end_beside_a_tracker_that_hangs(tmp_path, tiny_corpus, deadline, caplog,
                                                             monkeypatch) -> None:
    """A pre-training whose MLflow calls hang trains to its end, and its end waits DRAIN_SECONDS for them (here 1),
    not for ever: the MLflow run is closed, and the records it did not get are said."""
    from mlflow.tracking import MlflowClient

    from earful.pretrain.config import load_pretrain_config
    from earful.pretrain.task import PretrainTask
    from earful.train import tracking as tracking_module
    from earful.train.engine import Trainer

    stalled = _Stalling()
    monkeypatch.setattr(tracking_module._Mlflow, "log", lambda self, metrics, step: stalled.log(metrics, step))
    monkeypatch.setattr(tracking_module, "DRAIN_SECONDS", 1.0, raising=False)  # (none before: the end waited)
    cfg = load_pretrain_config(None, ["model_preset=tiny", f"data.train={tiny_corpus[0]}",
                                      f"data.valid={tiny_corpus[1]}", "batch_seconds=4", "device_seconds=4",
                                      "max_steps=4", "log_every=1", "valid_every=2", "ckpt_every=4",
                                      "data.num_workers=0", "threads=1", "data.crop_seconds=2.0",
                                      "data.min_seconds=0.5", "tensorboard=false", "tracking.backends=[mlflow]",
                                      "tracking.project=p"])
    try:
        with deadline(240, "a run beside a tracker that hangs"):
            Trainer(PretrainTask(cfg), tmp_path / "run").fit()
    finally:
        stalled.release.set()
    assert "mlflow is still sending a record 1 s after the run's end; 5 record(s) were not sent to it" in caplog.text
    # 4 train, 2 valid, the first in flight
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((tmp_path / "run" / "tracking" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("p").experiment_id])
    assert run.info.status == "FINISHED"


def test_failing_fast_stands_while_any_thread_is_inside(monkeypatch) -> None:
    """Each tracker closes in a thread of its own now, and the environment is the process's: the first to leave
    had removed the settings while another was still closing (an MLflow run then closed with MLflow's 4 min of
    retries). They stand until the last leaves; a user's own setting is never removed."""
    from contextlib import ExitStack

    from earful.train.tracking import _failing_fast

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    first, second = ExitStack(), ExitStack()
    first.enter_context(_failing_fast())
    second.enter_context(_failing_fast())
    first.close()
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == "1"
    second.close()
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"


class _HangsClosing(_Stalling):
    """A tracker whose closing waits until ``release`` is set; it keeps each closing call as it begins."""

    def log(self, metrics, step) -> None:
        self.steps.append(step)

    def finish(self, status) -> None:
        self.closed.append((status, os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")))
        self.entered.set()
        assert self.release.wait(120), "never released"


def test_a_tracker_that_hangs_while_closing_is_said_and_mlflow_s_closed_beside_it(tmp_path, deadline, caplog,
                                                                                  monkeypatch) -> None:
    """A review: a run whose closing hung ended the run in silence (its closing had begun, so it was neither said nor
    closed beside the call), and the MLflow close beside a hung call, on the main thread, added up to a minute to
    the end's bound. Both are said; MLflow's is closed beside its thread's call, failing fast, within CLOSE_SECONDS
    more, and one whose close beside hangs too is said and left."""
    from earful.train import tracking as tracking_module

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setattr(tracking_module, "CLOSE_SECONDS", 0.5, raising=False)  # (none before)
    other, mlflow = _HangsClosing(), _HangsClosing()
    mlflow.fails_fast = True
    tracking = _sending_to(tmp_path, wandb=other, mlflow=mlflow)
    tracking.log("train", {"loss": 1.0}, 1)
    with deadline(60, "the end beside closings that hang"):
        tracking.finish("finished", wait=0.5)
    assert "wandb is still closing its run 0.5 s after the run's end" in caplog.text, caplog.text
    assert "mlflow is still closing its run 0.5 s after the run's end" in caplog.text, caplog.text
    assert "the wandb run is not closed yet: it is closed when that call returns" in caplog.text
    assert "the mlflow run is not closed yet: closing it beside its call takes longer than 0.5 s" in caplog.text
    assert other.closed == [("finished", None)]  # its thread's, alone
    assert mlflow.closed == [("finished", None), ("finished", "1")]  # its thread's, then beside it, failing fast
    assert "record(s) were not sent" not in caplog.text and other.steps == [1] == mlflow.steps
    other.release.set()
    mlflow.release.set()


def test_another_tracker_s_closing_leaves_mlflow_s_retries_alone(tmp_path, deadline) -> None:
    """A review: a W&B run dropped (a full disk) closed within MLflow's fail-fast settings, which are the process's:
    the healthy MLflow tracker's records meanwhile went with one retry, not MLflow's own."""
    import threading


    closing, release, logged = threading.Event(), threading.Event(), threading.Event()
    seen: list[tuple[int, str | None]] = []

    class Fails:
        def log(self, metrics, step) -> None:
            raise OSError("No space left on device")

        def finish(self, status) -> None:
            closing.set()
            release.wait(60)

    class Healthy:
        fails_fast = True

        def log(self, metrics, step) -> None:
            seen.append((step, os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")))
            logged.set()

        def finish(self, status) -> None:
            pass

    os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
    tracking = _sending_to(tmp_path, wandb=Fails(), mlflow=Healthy())
    tracking.log("train", {"loss": 1.0}, 1)
    assert closing.wait(60) and logged.wait(60)
    logged.clear()
    tracking.log("train", {"loss": 1.0}, 2)
    assert logged.wait(60)
    release.set()
    with deadline(60, "the end"):
        tracking.finish("finished")
    assert seen == [(1, None), (2, None)]
