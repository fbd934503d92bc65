"""MLflow behind a small buffered writer: metrics are batched and written with log_batch."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100


def default_artifact_location(uri: str, experiment: str) -> str | None:
    """For the embedded SQLite store keep artifacts on disk beside the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


class Tracker:
    def __init__(self, uri: str, experiment: str, flush_every: int = 2000):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(experiment, artifact_location=default_artifact_location(uri, experiment))
            except Exception:  # another job created it first
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        self.experiment_id = exp_id
        self.flush_every = flush_every
        self.run_id: str | None = None
        self._buffer = []
        self.seconds = 0.0  # wall time spent in MLflow calls

    # -- run lifecycle -----------------------------------------------------------
    def start(self, run_name: str, tags: dict[str, str]) -> str:
        t = time.perf_counter()
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.seconds += time.perf_counter() - t
        return self.run_id

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)

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

        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, _num(v), ts, step) for k, v in metrics.items())
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
        t = time.perf_counter()
        self.client.log_figure(self.run_id, fig, name)
        self.seconds += time.perf_counter() - t

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        t = time.perf_counter()
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        self.seconds += time.perf_counter() - t

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)


def _num(v) -> float:
    v = float(v)
    # MLflow stores ±inf as ±max float; keep that explicit so every backend agrees
    return math.copysign(1.7976931348623157e308, v) if math.isinf(v) else v
