"""Experiment tracking beside TensorBoard: Weights & Biases (offline by default), MLflow (a local file store) and
trackio, any of them through ``tracking.backends``. Each is an optional package: ``pip install 'earful[tracking]'``
(a backend that is not installed is an error naming it before anything trains).

A tracked run records its resolved config, ``recipe_sha256`` (the fingerprint of the recipe every checkpoint
records, ``earful/train/recipe.py``) and ``batch_seconds``; then, at every log and validation interval only (never
inside a step), the records of ``train.jsonl`` and ``valid.jsonl`` as ``train/…`` and ``valid/…``,
``train/hours_padded`` being the hours of audio seen. The step loop only queues them: a thread of each backend's own
sends them in order, the only one to touch its run between the start and the finish, so a tracker that stalls (an
MLflow server gone: MLflow's own retries took about 4 min a call) never stalls the training, nor the other trackers.
A backend that fails, or leaves ``MAX_WAITING`` records unsent, is warned about and dropped; the end of the run
waits up to ``DRAIN_SECONDS`` for what is queued and the closings, then says which backend is still in a call and how
many records it did not get (``train.jsonl`` and ``valid.jsonl`` hold every record; a run killed outright loses what
was queued the same way), and closes an MLflow run beside that call, failing fast, within ``CLOSE_SECONDS`` more (a
record in flight may still land in it). Another backend's run is closed when its call returns, if the process still
runs: a W&B service that hangs can hold the process's exit (W&B's own exit hook), which earful cannot bound.
Runs compared together share ``tracking.group``: W&B's and trackio's group, MLflow's experiment; a study sets it to
its name. A resumed run continues the same tracked run (its ids are in ``RUN/tracking.json``, and trackio's name:
trackio continues a run by its name, so a new run whose folder's name its project has already is named ``NAME-2``);
the steps between its last checkpoint and the stop are then logged twice (``train.jsonl`` and TensorBoard are cut
back on resume, the trackers only append).

Local stores under ``tracking.dir`` (default ``RUN/tracking``; a study's runs share ``OUT/tracking``):

* W&B: ``DIR/wandb/offline-run-*`` (``wandb sync DIR/wandb/offline-run-*`` uploads them later);
* MLflow: the file store ``DIR/mlruns`` (``mlflow ui --backend-store-uri DIR/mlruns``, from the full ``mlflow``
  package: ``mlflow-skinny``, which the extra installs, has no UI), or ``tracking.mlflow_uri``.
  MLflow keeps its file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``, which
  earful sets for its own store: files suit many runs writing at once on a cluster's shared disk (SQLite does not);
* trackio: ``DIR/trackio`` (``TRACKIO_DIR=DIR/trackio trackio show``). trackio reads its folder once, when first
  imported in a process: a second run in one process with another ``dir`` logs beside the first (with a warning).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from earful.atomic import atomic_write_json
from earful.config import ConfigError, flatten
from earful.train.config import TrackingConfig

log = logging.getLogger(__name__)

EXTRA = "pip install 'earful[tracking]'"
PACKAGES = {"wandb": "wandb", "mlflow": "mlflow-skinny", "trackio": "trackio"}  # backend → what pip installs
IDS_FILE = "tracking.json"
DRAIN_SECONDS = 30.0  # how long the end of a run waits for the records queued to the trackers, and their closing
CLOSE_SECONDS = 10.0  # then, how long for an MLflow run closed beside its call that hangs (failing fast)
MAX_WAITING = 1000  # records a backend may leave unsent before it is dropped as stalled (its queue's memory bounded)


def require(backend: str) -> ModuleType:
    """The backend's package, or an error naming what to install."""
    try:
        return importlib.import_module(backend)
    except ImportError as e:
        raise ConfigError(f"tracking.backends: {backend!r} needs the {PACKAGES[backend]} package, which is not "
                          f"installed ({e}): {EXTRA}, or leave {backend!r} out of tracking.backends") from None


def scalars(prefix: str, record: dict[str, Any]) -> dict[str, float]:
    """A record's finite numbers as ``prefix/key`` (``step`` is the x-axis, not a value): what TensorBoard and
    every tracker log."""
    return {f"{prefix}/{k}": float(v) for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class Tracking:
    """The run's trackers (none when ``enabled`` is false: the other ranks of a DDP run)."""

    def __init__(self, cfg: TrackingConfig, root: Path, enabled: bool) -> None:
        self.cfg, self.root = cfg, root
        self.store = Path(cfg.dir) if cfg.dir else root / "tracking"
        self.senders: dict[str, _Sender] = {}
        backends = cfg.backends if enabled else []
        if "trackio" in backends:
            _point_trackio_at(self.store / "trackio")
        self.modules = {b: require(b) for b in backends}  # before anything trains: a missing one stops the run

    def start(self, config: dict[str, Any], recipe_sha256: str) -> None:
        """Open (or, on resume, continue) the tracked run of every backend."""
        if not self.modules:
            return
        self.store.mkdir(parents=True, exist_ok=True)
        ids_path = self.root / IDS_FILE
        ids = json.loads(ids_path.read_text(encoding="utf-8")) if ids_path.exists() else {}
        name = self.cfg.name or self.root.resolve().name  # `--out .` named the tracked run '' (MLflow: at random)
        facts = {"recipe_sha256": recipe_sha256, "run_dir": str(self.root.resolve())}
        if "trackio" in self.modules and "trackio" not in ids:  # trackio continues a run by its name: a new run
            # takes one no run of its project has (two folders called pretrain were logged as one run); a run of
            # an earlier earful, which recorded none, continues the folder's
            ids["trackio"] = name if ids_path.exists() else _unused_name(self.modules["trackio"], self.cfg.project,
                                                                          name)
        for backend, module in self.modules.items():
            opener = {"wandb": _Wandb, "mlflow": _Mlflow, "trackio": _Trackio}[backend]
            continued = ids.get(backend)  # before the opener (W&B's sets a new run's id first)
            try:
                self._send_to(backend, opener(module, self.cfg, self.store, name, config, facts, ids))
            except Exception as e:  # a tracker's own error (a mistyped URI, no login, a run gone): one line, not
                # a traceback; nothing has trained yet
                where = f"tracking.mlflow_uri={self.cfg.mlflow_uri}" if backend == "mlflow" and self.cfg.mlflow_uri \
                    else f"store {self.store}"
                again = (f"; it continues run {continued!r} named in {ids_path}: remove its {backend!r} key there "
                         "to open a new tracked run instead") if continued else ""
                self.finish("failed")  # the backends started before it: closed, not left running
                raise ConfigError(f"tracking.backends: the {backend} run cannot start ({where}{again}): "
                                  f"{type(e).__name__}: {str(e).strip()}; mend tracking.*, or leave {backend!r} "
                                  "out of tracking.backends") from e
        atomic_write_json(ids_path, ids)
        log.info("tracking %s as %r (group %r) in %s", ", ".join(self.senders), name, self.cfg.group, self.store)

    def _send_to(self, backend: str, run: Any) -> None:
        """``run`` (a backend's opened run) gets the records from now on, through a thread of its own."""
        self.senders[backend] = _Sender(backend, run)

    def log(self, prefix: str, record: dict[str, Any], step: int) -> None:
        """Queues the record to every tracker and returns: a tracker that fails (its store deleted, a full disk, a
        server gone) or stalls is warned about and dropped, and the run trains on (train.jsonl and valid.jsonl hold
        every record)."""
        if self.senders:
            metrics = scalars(prefix, record)
            for backend, sender in self.senders.items():
                if not sender.dropped and not sender.put(metrics, step):
                    log.warning("tracking: %s has not taken the last %d records (it stalls); no more records go to "
                                "%s in this segment", backend, MAX_WAITING, backend)
                    sender.give_up()

    def finish(self, status: str, wait: float | None = None) -> None:
        """``status``: finished | stopped (a signal; --resume continues) | failed. Each tracker is sent what is
        queued to it and closed within ``wait`` seconds (``DRAIN_SECONDS``), all together. One still in a call then
        (a record, or its closing) is said, with the records it did not get, and left to its thread; an MLflow run
        is also closed beside that call, failing fast, which the end waits ``CLOSE_SECONDS`` more for."""
        wait = DRAIN_SECONDS if wait is None else wait
        senders, self.senders = self.senders, {}
        for sender in senders.values():
            sender.queue.put(status)  # after its records
        deadline = time.monotonic() + wait
        beside: dict[str, threading.Thread] = {}
        for backend, sender in senders.items():
            sender.thread.join(max(0.0, deadline - time.monotonic()))
            if not sender.thread.is_alive():
                continue
            ending = "failed" if sender.dropped else status  # dropped as it stalled: closed as failed, as others
            sender.dropped = True  # what it still takes off its queue is not sent
            unsent = sender.waiting - sender.in_flight
            log.warning("tracking: %s is still %s %g s after the run's end%s", backend, sender.doing, wait,
                        f"; {unsent} record(s) were not sent to it (train.jsonl and valid.jsonl hold them)"
                        if unsent else "")
            if getattr(sender.run, "fails_fast", False):
                beside[backend] = threading.Thread(target=sender.close, args=(ending, True), daemon=True,
                                                   name=f"earful-tracking-{backend}-close")
                beside[backend].start()
            else:
                log.warning("tracking: the %s run is not closed yet: it is closed when that call returns, if the "
                            "process still runs", backend)
        deadline = time.monotonic() + CLOSE_SECONDS
        for backend, thread in beside.items():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("tracking: the %s run is not closed yet: closing it beside its call takes longer than "
                            "%g s (a server that does not answer)", backend, CLOSE_SECONDS)


class _Sender:
    """One backend's records, sent in order by a thread of its own: the only one to touch the backend's run until
    the finish (the step loop only queues). A record it cannot send drops the backend: warned, closed as failed."""

    def __init__(self, backend: str, run: Any) -> None:
        self.backend, self.run = backend, run
        self.queue: queue.SimpleQueue[tuple[dict[str, float], int] | str] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.waiting = 0  # records queued and not yet sent (or given up)
        self.dropped = False  # failed, stalled or past the finish's wait: no more records are sent
        self.closed = False  # its run's closing has begun (once by this thread; beside it at the finish, again)
        self.in_flight = 0  # 1 while a record's call runs
        self.doing = "sending a record"  # what the thread is at, for a warning
        self.thread = threading.Thread(target=self._send, name=f"earful-tracking-{backend}", daemon=True)
        self.thread.start()

    def put(self, metrics: dict[str, float], step: int) -> bool:
        """Queue a record; false where ``MAX_WAITING`` are queued already (the backend stalls)."""
        with self.lock:
            if self.waiting >= MAX_WAITING:
                return False
            self.waiting += 1
        self.queue.put((metrics, step))
        return True

    def give_up(self) -> None:
        """No more records are sent; the run is closed as failed once the thread is free."""
        self.dropped = True
        self.queue.put("failed")

    def _send(self) -> None:
        while isinstance(item := self.queue.get(), tuple):
            metrics, step = item
            try:
                if not self.dropped:
                    self.in_flight = 1
                    self.run.log(metrics, step)
            except Exception as e:  # noqa: BLE001 - a tracker must not stop the training
                log.warning("tracking: logging to %s failed at step %d (%s: %s); no more records go to %s "
                            "in this segment", self.backend, step, type(e).__name__, e, self.backend)
                self.dropped = True
                self.close("failed")
            finally:
                with self.lock:
                    self.waiting -= 1
                    self.in_flight = 0
        self.close(item)  # the finish's status, or give_up's failed

    def close(self, status: str, beside: bool = False) -> None:
        """Close the run as ``status``: once by its thread; ``beside`` its thread's call that hangs (MLflow's, at the
        finish), again. A dropped run, or one closed beside, fails fast where its client can (MLflow's: against the
        server that just failed, its own retries, about 4 min, had stalled the end a second time); only MLflow's
        reads those settings, which are the process's: another's closing leaves them alone."""
        with self.lock:
            if self.closed and not beside:
                return
            self.closed = True
        if not beside:
            self.doing = "closing its run"
        try:
            if (self.dropped or beside) and getattr(self.run, "fails_fast", False):
                with _failing_fast():
                    self.run.finish(status)
            else:
                self.run.finish(status)
        except Exception as e:  # noqa: BLE001 - a tracker must not hide how the run ended
            log.warning("tracking: closing the %s run failed: %s", self.backend, e)


def _unused_name(trackio: ModuleType, project: str, name: str) -> str:
    """``name``, or ``name-2``, ``name-3`` … where the project has a run of that name already."""
    try:
        taken = {run.name for run in trackio.Api().runs(project)}
    except ValueError:  # no such project yet
        return name
    n, chosen = 2, name
    while chosen in taken:
        chosen, n = f"{name}-{n}", n + 1
    return chosen


def _point_trackio_at(folder: Path) -> None:
    """trackio keeps its store in ``TRACKIO_DIR``, read when it is first imported."""
    import sys

    if "trackio" not in sys.modules:
        os.environ["TRACKIO_DIR"] = str(folder)
        return
    current = Path(sys.modules["trackio"].utils.TRACKIO_DIR)
    if current != folder:
        log.warning("tracking: trackio was imported earlier in this process and writes to %s, not %s", current, folder)


class _Wandb:
    def __init__(self, wandb: ModuleType, cfg: TrackingConfig, store: Path, name: str, config: dict[str, Any],
                 facts: dict[str, str], ids: dict[str, Any]) -> None:
        ids.setdefault("wandb", uuid.uuid4().hex[:12])  # W&B run ids: letters and digits
        self.run = wandb.init(mode=cfg.wandb_mode, dir=str(store), project=cfg.project, group=cfg.group, name=name,
                              id=ids["wandb"], resume="allow", config={**config, **facts},
                              settings=wandb.Settings(console="off"))  # earful's own logs go to stderr

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, status: str) -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status != "failed" else 1)


class _Mlflow:
    STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
    # its client reads FAIL_FAST from the environment, and its calls are requests (or file writes) of their own: a run
    # dropped is closed failing fast, and one whose call hangs at the end is closed beside it
    fails_fast = True

    def __init__(self, mlflow: ModuleType, cfg: TrackingConfig, store: Path, name: str, config: dict[str, Any],
                 facts: dict[str, str], ids: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = cfg.mlflow_uri or (store / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:  # a file store: a file: URI, or a path (MLflow's ./mlruns)
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # see the module's docstring
        self.client = MlflowClient(uri)
        with _failing_fast():
            if "mlflow" in ids:  # resumed: the same run, the recipe of this segment (--allow-changes may change it)
                self.run_id = ids["mlflow"]
                self.client.update_run(self.run_id, status="RUNNING")
                for key, value in facts.items():
                    self.client.set_tag(self.run_id, key, value)
                return
            experiment = _experiment(self.client, cfg.group or cfg.project, mlflow)
            tags = {**facts, "group": cfg.group or ""}
            self.run_id = ids["mlflow"] = self.client.create_run(experiment, run_name=name, tags=tags).info.run_id
            params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
                self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS[status])


# MLflow's HTTP settings while a run starts: a server that is not there fails it in seconds (MLflow's defaults, 7
# retries with a backoff factor of 2, took 4 min on a refused connection before the one-line error); a user's own
# settings stand, and the run's logging keeps MLflow's (a server's blip mid-run is retried as MLflow retries it)
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


_fast = threading.Lock()
_fast_users: list[list[str]] = []  # the settings the first of those inside set: the last to leave removes them


@contextmanager
def _failing_fast() -> Iterator[None]:
    """``FAIL_FAST`` where the user set none, while any thread is inside (the environment is the process's)."""
    with _fast:
        set_here = [k for k in FAIL_FAST if k not in os.environ] if not _fast_users else _fast_users[0]
        os.environ.update({k: FAIL_FAST[k] for k in set_here})
        _fast_users.append(set_here)
    try:
        yield
    finally:
        with _fast:
            _fast_users.pop()
            if not _fast_users:
                for k in set_here:
                    os.environ.pop(k, None)


def _experiment(client: Any, name: str, mlflow: ModuleType) -> str:
    """The id of MLflow experiment ``name``, created if need be (by one of the study's runs starting at once)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # another run created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


class _Trackio:
    def __init__(self, trackio: ModuleType, cfg: TrackingConfig, store: Path, name: str, config: dict[str, Any],
                 facts: dict[str, str], ids: dict[str, Any]) -> None:
        self.run = trackio.init(project=cfg.project, name=ids.setdefault("trackio", name), group=cfg.group,
                                config={**flatten(config), **facts}, resume="allow", embed=False)
        self.levels = {level.value: level for level in trackio.AlertLevel}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, status: str) -> None:
        """trackio's runs have no end status: a run that did not finish says so in an alert (stopped: it resumes;
        failed: an error), else it looked finished there."""
        if status != "finished":
            level = self.levels["error" if status == "failed" else "warn"]
            self.run.alert(title=f"run {status}", level=level,
                           text="stopped by a signal: --resume continues it" if status == "stopped" else
                           "the run failed or diverged: see its log")
        self.run.finish()
