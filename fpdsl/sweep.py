"""One sweep = one parent MLflow run, each job of it a child run; jobs × threads ≤ cores.

`SweepCallback` is a Hydra callback (conf/config.yaml, `hydra.callbacks.sweep`). Before
the launcher starts any job it opens the store once (so a new SQLite file is created
and migrated by this process alone), creates the sweep's run, and puts what jobs need
into the environment the launcher's workers inherit: the parent run, the sweep id and
the threads each job may use. A job's `Tracker.start` reads that back (`job_tags`)
and tags its run as a child. Where the environment does not travel (a remote Ray
cluster), a job finds the sweep's run by its tag `fpdsl.sweep_dir`.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import time
import uuid

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SWEEP_ENV = "FPDSL_SWEEP"  # JSON: parent_run_id, sweep_id, uri, experiment_id, sweep_dir
THREADS_ENV = "FPDSL_THREADS_PER_JOB"
# read when a BLAS or OpenMP runtime loads in a new worker process
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cores() -> int:
    """CPUs this process may run on (a SLURM or container CPU set, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self._saved_env: dict[str, str | None] = {}

    # -- the launching process ---------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        hydra = config.hydra
        total = count_jobs(hydra)
        at_once = jobs_at_once(hydra, total)
        threads = max(1, cores() // at_once) if at_once else None
        if threads is not None:
            self._set_env({THREADS_ENV: str(threads)} | {v: os.environ.get(v, str(threads)) for v in THREAD_VARS})

        from fpdsl.tracking import experiment_id, open_store

        uri, experiment = str(config.tracking.uri), str(config.tracking.experiment)
        try:
            client = open_store(uri)
            exp_id = experiment_id(client, experiment, uri)
        except Exception as e:  # each job reports the store's trouble itself
            print(f"fpdsl: sweep: no parent run ({str(e).strip().splitlines()[0][:200]})", file=sys.stderr)
            return
        sweep_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        sweep_dir = os.path.abspath(str(hydra.sweep.dir))
        overrides = " ".join(hydra.overrides.task)
        launcher = hydra.runtime.choices.get("hydra/launcher", "basic")
        run = client.create_run(
            exp_id,
            run_name=f"sweep-{sweep_id}",
            tags={
                "fpdsl.role": "sweep",
                "fpdsl.sweep_id": sweep_id,
                "fpdsl.sweep_dir": sweep_dir,
                "fpdsl.overrides": overrides,
                "fpdsl.launcher": launcher,
                "fpdsl.jobs_at_once": str(at_once or "per allocation"),
                "fpdsl.threads_per_job": str(threads or "per allocation"),
                "mlflow.note.content": f"sweep `{overrides}` with launcher {launcher}, {total or '?'} jobs",
            },
        )
        self.parent_run_id = run.info.run_id
        self._uri, self._started = uri, time.time()
        self._set_env({
            SWEEP_ENV: json.dumps({
                "parent_run_id": self.parent_run_id, "sweep_id": sweep_id, "uri": uri,
                "experiment_id": exp_id, "sweep_dir": sweep_dir,
            })
        })
        # a failed job makes Hydra raise before on_multirun_end: close the parent at exit then
        atexit.register(self._end, None)
        print(f"fpdsl: sweep {sweep_id}: parent run {self.parent_run_id}, {total or '?'} jobs, "
              f"{at_once or 'one allocation'} at once, {threads or 'allocation'} threads each", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._end("FINISHED")

    def _end(self, status: str | None) -> None:
        """Close the sweep's run: FINISHED when every job finished, KILLED when one was interrupted, else FAILED."""
        self._restore_env()
        if self.parent_run_id is None:
            return
        run_id, self.parent_run_id = self.parent_run_id, None
        from mlflow.entities import Metric

        from fpdsl.tracking import open_store

        try:
            client = open_store(self._uri)
            run = client.get_run(run_id)
            children = client.search_runs(
                [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=50000
            )
            counts = {}
            for c in children:
                counts[c.info.status] = counts.get(c.info.status, 0) + 1
            if status is None:  # the sweep stopped before its end: a job failed, or an interrupt
                status = "KILLED" if counts.get("KILLED") else "FAILED"
            elif set(counts) - {"FINISHED"}:
                status = "FAILED"
            now = int(time.time() * 1000)
            metrics = {"jobs": len(children), "jobs_finished": counts.get("FINISHED", 0),
                       "jobs_failed": counts.get("FAILED", 0), "sweep_seconds": time.time() - self._started}
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
            client.set_terminated(run_id, status=status)
        except Exception as e:
            print(f"fpdsl: sweep: could not close parent run {run_id} ({e})", file=sys.stderr)

    def _set_env(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self._saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    def _restore_env(self) -> None:
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}

    def __getstate__(self):  # launchers pickle the callbacks into their workers; they need no state
        return {"parent_run_id": None, "_saved_env": {}}

    # -- each job, in its worker ---------------------------------------------------
    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        limit_threads(job_threads(config))


def job_threads(config) -> int | None:
    """Threads for one job: `threads` when set; in a sweep, cores // jobs at once on this
    machine, or the job's own allocation elsewhere (SLURM's CPU set, Ray's OMP_NUM_THREADS);
    a single run keeps torch's default (None)."""
    if config.get("threads"):
        return int(config.threads)
    from hydra.types import RunMode

    hydra = config.get("hydra")
    if hydra is None or hydra.get("mode") != RunMode.MULTIRUN:
        return None
    for var in (THREADS_ENV, "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    return cores()


def limit_threads(n: int | None) -> None:
    """torch's intra-op pool and every loaded BLAS/OpenMP pool to n threads."""
    if not n:
        return
    import numpy  # noqa: F401  (load the BLAS libraries so that threadpoolctl sees them)
    import scipy.linalg  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def count_jobs(hydra) -> int | None:
    """Jobs in a sweep of Hydra's basic sweeper (the grid's size); None for other sweepers."""
    if not str(hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args = list(hydra.overrides.task)
        for k, v in (hydra.sweeper.get("params") or {}).items():
            args.append(f"{k}={v}")
        parsed = OverridesParser.create().parse_overrides(args)
        return sum(len(b) for b in BasicSweeper.split_arguments(parsed, None))
    except Exception:
        return None


def jobs_at_once(hydra, total: int | None) -> int | None:
    """How many jobs share this machine's cores; None where each job gets its own allocation (SLURM)."""
    target = str(hydra.launcher.get("_target_", ""))
    n = cores()
    if target.endswith("JoblibLauncher"):
        n_jobs = hydra.launcher.get("n_jobs")
        n_jobs = 1 if n_jobs is None else int(n_jobs)
        at_once = n_jobs if n_jobs > 0 else max(1, n + 1 + n_jobs)  # joblib's reading of -1, -2, ...
    elif target.endswith("submitit_launcher.LocalLauncher"):
        at_once = total or n  # submitit's local executor starts every job together
    elif target.endswith("RayLauncher"):
        per_job = (hydra.launcher.get("ray", {}).get("remote") or {}).get("num_cpus") or 1
        at_once = max(1, n // int(per_job))
    elif target.endswith("BasicLauncher"):
        at_once = 1
    else:
        return None
    return max(1, min(at_once, total)) if total else at_once


def job_tags(tracker) -> dict[str, str]:
    """Tags that make a job's run a child of its sweep's run; {} outside a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    h = HydraConfig.get()
    if h.mode != RunMode.MULTIRUN:
        return {}
    sweep_dir = os.path.abspath(str(h.sweep.dir))
    parent = _parent_from_env(sweep_dir, tracker) or _parent_from_store(sweep_dir, tracker)
    if parent is None:
        return {}
    tags = {
        "mlflow.parentRunId": parent[0],
        "fpdsl.sweep_id": parent[1],
        "fpdsl.job": str(h.job.num),
        "fpdsl.overrides": " ".join(h.overrides.task),
    }
    if "torch" in sys.modules:
        tags["fpdsl.threads"] = str(sys.modules["torch"].get_num_threads())
    return tags


def _parent_from_env(sweep_dir, tracker):
    try:
        s = json.loads(os.environ.get(SWEEP_ENV) or "null")
    except ValueError:
        return None
    if s and s["sweep_dir"] == sweep_dir and s["uri"] == tracker.uri and s["experiment_id"] == tracker.experiment_id:
        return s["parent_run_id"], s["sweep_id"]
    return None


def _parent_from_store(sweep_dir, tracker):
    if "'" in sweep_dir:
        return None
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`fpdsl.sweep_dir` = '{sweep_dir}' and tags.`fpdsl.role` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return (runs[0].info.run_id, runs[0].data.tags.get("fpdsl.sweep_id", "")) if runs else None
