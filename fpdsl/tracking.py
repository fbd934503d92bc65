"""MLflow behind a small buffered writer: metrics are batched and written with log_batch.

Many jobs may write into one store at once (a joblib or submitit grid into the embedded
SQLite file). SQLite lets one writer in at a time and answers "database is locked" at
once, without waiting, when a reading transaction wants to write while another holds
the write lock; every store call therefore retries those errors with backoff. The
schema of a new SQLite store is created by one process at a time (a file lock), so
jobs that start together do not race through MLflow's migrations.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100

# SQLite's busy answers, directly or wrapped by MLflow (MlflowException) or its REST API,
# and the migration race of a store that another process is creating this moment
TRANSIENT = (
    "database is locked",
    "database table is locked",
    "database schema is locked",
    "database schema has changed",
    "Online migration expected to match one row",
)
RETRY_SECONDS = 300.0  # give up on a store that stays locked this long


def default_artifact_location(uri: str, experiment: str) -> str | None:
    """For the embedded SQLite store keep artifacts on disk beside the database file."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db else None


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :].split("?", 1)[0]).resolve()
    return None


def is_transient(e: BaseException) -> bool:
    while e is not None:
        if any(t in str(e) for t in TRANSIENT):
            return True
        e = e.__cause__ or e.__context__
    return False


def retrying(fn, *args, deadline: float = RETRY_SECONDS, on_retry=None, **kwargs):
    """fn(*args, **kwargs), again after a growing random pause while the store is busy."""
    start, attempt = time.monotonic(), 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_transient(e) or time.monotonic() - start > deadline:
                raise
            attempt += 1
            if on_retry is not None:
                on_retry()
            # full jitter keeps N waiting writers from waking together
            time.sleep(random.uniform(0.5, 1.0) * min(2.0, 0.01 * 2**attempt))


class RetryingClient:
    """An MlflowClient whose every call retries while the store is busy."""

    def __init__(self, client):
        self._client = client
        self.retries = 0

    def _count(self):
        self.retries += 1

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return retrying(attr, *args, on_retry=self._count, **kwargs)

        return call


@contextmanager
def store_init_lock(db: Path):
    """Only one process on this machine creates a given SQLite store at a time."""
    from filelock import FileLock

    key = hashlib.md5(str(db).encode(), usedforsecurity=False).hexdigest()[:16]
    with FileLock(os.path.join(tempfile.gettempdir(), f"fpdsl-store-{key}.lock"), timeout=RETRY_SECONDS):
        yield


def _has_schema(db: Path) -> bool:
    """MLflow has created its tables in the file (alembic_version holds a row once migrations ran)."""
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30) as con:
            return con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def open_store(uri: str) -> RetryingClient:
    """An MlflowClient on uri; a new SQLite store is created and migrated by one process alone."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(uri)
    if db is not None:
        with store_init_lock(db):  # whoever finds no schema creates it while the others wait
            if not _has_schema(db):
                retrying(MlflowClient, tracking_uri=uri)
    return RetryingClient(retrying(MlflowClient, tracking_uri=uri))


def experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(uri, name))
    except Exception:  # another job created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    def __init__(self, uri: str, experiment: str, flush_every: int = 2000):
        t = time.perf_counter()
        self.uri = uri
        self.experiment = experiment
        self.client = open_store(uri)
        self.experiment_id = experiment_id(self.client, experiment, uri)
        self.flush_every = flush_every
        self.run_id: str | None = None
        self._buffer = []
        self.open_seconds = time.perf_counter() - t  # importing MLflow, opening (or creating) the store
        self.seconds = 0.0  # wall time spent logging: MLflow calls and the metric buffer
        self.figure_seconds = 0.0  # drawing figures into PNG files

    @property
    def retries(self) -> int:
        """Store calls repeated because the store was busy."""
        return self.client.retries

    # -- run lifecycle -----------------------------------------------------------
    def start(self, run_name: str, tags: dict[str, str], parent: bool = True) -> str:
        """A new run; inside a sweep it becomes a child of the sweep's run (see fpdsl.sweep)."""
        t = time.perf_counter()
        tags = dict(tags)
        if parent:
            from fpdsl.sweep import job_tags

            sweep = job_tags(self)
            if sweep:
                run_name = f"{run_name}-j{sweep['fpdsl.job']}"
            for k, v in sweep.items():
                tags.setdefault(k, v)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.seconds += time.perf_counter() - t
        return self.run_id

    def end(self, status: str = "FINISHED") -> None:
        """Flush, note the run's own cost of logging (tag `fpdsl.tracking_seconds`), and close the run.

        A tag, not a metric: a run's metrics stay the same for the same config and seed."""
        from mlflow.entities import RunTag

        self.flush()
        t = time.perf_counter()
        self.client.log_batch(self.run_id, tags=[RunTag("fpdsl.tracking_seconds", f"{self.seconds:.4f}")])
        self.client.set_terminated(self.run_id, status=status)
        self.seconds += time.perf_counter() - t

    # -- logging ---------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        t = time.perf_counter()
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_PER_BATCH], synchronous=True)
        self.seconds += time.perf_counter() - t

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        t = time.perf_counter()
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.seconds += time.perf_counter() - t

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        t = time.perf_counter()
        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, _num(v), ts, step) for k, v in metrics.items())
        self.seconds += time.perf_counter() - t
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer or self.run_id is None:
            return
        t = time.perf_counter()
        buf, self._buffer = self._buffer, []
        for i in range(0, len(buf), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=buf[i : i + MAX_METRICS_PER_BATCH])
        self.seconds += time.perf_counter() - t

    def log_figure(self, fig, name: str) -> None:
        """Drawing the PNG is plotting's time (figure_seconds); storing it is logging's."""
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            fig.savefig(path)
            drawn = time.perf_counter()
            self.figure_seconds += drawn - t
            self.client.log_artifact(self.run_id, str(path), str(Path(name).parent) if Path(name).parent.name else None)
            self.seconds += time.perf_counter() - drawn

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        t = time.perf_counter()
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        self.seconds += time.perf_counter() - t

    def log_text(self, text: str, name: str) -> None:
        t = time.perf_counter()
        self.client.log_text(self.run_id, text, name)
        self.seconds += time.perf_counter() - t


def _num(v) -> float:
    v = float(v)
    # MLflow stores ±inf as ±max float; keep that explicit so every backend agrees
    return math.copysign(1.7976931348623157e308, v) if math.isinf(v) else v
