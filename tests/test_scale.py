"""Grids on real launchers (joblib, submitit's local executor, Ray where installed), many
writers into one SQLite store, and a real `mlflow server` on 127.0.0.1."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
from omegaconf import OmegaConf

from conftest import TINY, mlflow_runs, run_cli

GRID = [o for o in TINY if not o.startswith("model.width")]


def sweep_runs(runs):
    parents = [r for r in runs if r.data.tags.get("fpdsl.role") == "sweep"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    (parent,) = parents
    children = [r for r in runs if r is not parent]
    return parent, children


def check_sweep(client, runs, widths, threads=None):
    parent, children = sweep_runs(runs)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs"] == len(widths) == parent.data.metrics["jobs_finished"]
    assert sorted(c.data.params["model.width"] for c in children) == sorted(map(str, widths))
    assert sorted(int(c.data.tags["fpdsl.job"]) for c in children) == list(range(len(widths)))
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.data.tags["fpdsl.sweep_id"] == parent.data.tags["fpdsl.sweep_id"]
        assert f"model.width={c.data.params['model.width']}" in c.data.tags["fpdsl.overrides"].split()
        if threads is not None:
            assert c.data.tags["fpdsl.threads"] == str(threads)
    # every metric of every step is there: 30 steps + the initial point, probes every 5 steps
    counts = {}
    for c in children:
        counts[c.info.run_id] = {k: len(client.get_metric_history(c.info.run_id, k)) for k in c.data.metrics}
        assert counts[c.info.run_id]["loss"] == 31 and counts[c.info.run_id]["n_evals"] == 31
        assert counts[c.info.run_id]["spectrum/delta/k1"] == 7
        assert [m.step for m in client.get_metric_history(c.info.run_id, "loss")] == list(range(31))
    assert len({tuple(sorted(v.items())) for v in counts.values()}) == 1, counts
    return parent, children


def test_joblib_grid_is_one_parent_run_with_a_child_per_job(tmp_path):
    widths = [8, 10, 12, 14]
    proc = run_cli(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "model.width=" + ",".join(map(str, widths)), *GRID)
    assert "2 at once" in proc.stdout
    assert "step/s" not in proc.stderr  # jobs of a multirun draw no progress bar
    client, runs = mlflow_runs(tmp_path)
    check_sweep(client, runs, widths, threads=max(1, len(os.sched_getaffinity(0)) // 2))


def test_a_single_run_shows_steps_loss_and_evaluations_per_second(tmp_path):
    # long enough for tqdm to redraw (every 0.1 s) while it trains
    proc = run_cli(tmp_path, *TINY[:2], "budget.max_steps=1000", "~probe.spectrum", "progress=on")
    assert "step/s" in proc.stderr and "loss=" in proc.stderr and "evals/s=" in proc.stderr, proc.stderr[-2000:]
    _, (run,) = mlflow_runs(tmp_path)
    assert "mlflow.parentRunId" not in run.data.tags and 0 < float(run.data.tags["fpdsl.tracking_seconds"]) < 60


@pytest.mark.slow
def test_submitit_local_grid_records_every_job(tmp_path):
    run_cli(tmp_path, "-m", "hydra/launcher=submitit_local", "model.width=8,12", *GRID)
    client, runs = mlflow_runs(tmp_path)
    check_sweep(client, runs, [8, 12])


STRESS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fpdsl.store import Store
    from fpdsl.tracking import Tracker
    uri, job, jobs, flushes, per_flush, barrier = sys.argv[1], *map(int, sys.argv[2:6]), Path(sys.argv[6])
    (barrier / str(job)).touch()
    while len(list(barrier.iterdir())) < jobs:  # every writer opens the new store at the same moment
        time.sleep(0.01)
    store = Store(uri)
    t = Tracker.create(store, store.experiment_id("stress"), f"writer-{job}", {"job": str(job)})
    for step in range(flushes):
        t.log_metrics({f"m{i}": job * 1e6 + step * 1e3 + i for i in range(per_flush)}, step)
        t.commit()
        t.flush(None)  # one store write a step, as many as the writers can make
    t.set_tags({"done": "yes"})
    assert t.close("FINISHED", 300)[0]
    print("retries", t.retries)
""")


@pytest.mark.slow
def test_eight_writers_into_one_new_sqlite_store_lose_nothing(tmp_path):
    jobs, flushes, per_flush = 8, 40, 10
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "barrier").mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", STRESS, uri, *map(str, (j, jobs, flushes, per_flush)), str(tmp_path / "barrier")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for j in range(jobs)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("stress").experiment_id])
    assert len(runs) == jobs
    for r in runs:
        job = int(r.data.tags["job"])
        assert r.info.status == "FINISHED" and r.data.tags["done"] == "yes"
        for i in range(per_flush):
            hist = client.get_metric_history(r.info.run_id, f"m{i}")
            assert sorted((m.step, m.value) for m in hist) == [(s, job * 1e6 + s * 1e3 + i) for s in range(flushes)]
    print("retries per writer:", [out.split()[-1] for out, _ in outs])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp_path, port):
    """A real `mlflow server` on 127.0.0.1:port over tmp_path's server.db, answering /health."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(tmp_path / "server.log", "a")
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError("mlflow server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.3)


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = serve(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def test_grid_through_a_tracking_server(tmp_path, mlflow_server):
    run_cli(tmp_path, "-m", "hydra/launcher=joblib", f"tracking.uri={mlflow_server}", "model.width=8,12", *GRID)
    assert not (tmp_path / "mlflow.db").exists()  # everything went over HTTP
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("fpdsl").experiment_id])
    _, children = check_sweep(client, runs, [8, 12])
    for c in children:
        assert "figures" in {a.path for a in client.list_artifacts(c.info.run_id)}


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import hydra_plugins.hydra_ray_launcher"], capture_output=True).returncode,
    reason="hydra-ray-launcher not installed (pip install -e '.[ray]')",
)
def test_ray_grid_records_every_job(tmp_path):
    run_cli(tmp_path, "-m", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
            "+hydra.launcher.ray.init._node_ip_address=127.0.0.1", "+hydra.launcher.ray.init.include_dashboard=false",
            "model.width=8,12", *GRID, env={"RAY_AUTH_MODE": "disabled"})
    client, runs = mlflow_runs(tmp_path)
    check_sweep(client, runs, [8, 12])


# -- threads per job ---------------------------------------------------------------


def hydra_node(launcher: dict, overrides=("model.width=8,12,16",)):
    return OmegaConf.create({
        "launcher": launcher,
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
        "overrides": {"task": list(overrides)},
    })


def test_jobs_at_once_and_threads_never_oversubscribe(monkeypatch):
    from fpdsl import sweep

    monkeypatch.setattr(sweep, "cores", lambda: 8)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    h = hydra_node({"_target_": joblib, "n_jobs": -1})
    assert sweep.count_jobs(h) == 3
    assert sweep.jobs_at_once(h, 3) == 3  # all cores, but only three jobs
    assert sweep.jobs_at_once(hydra_node({"_target_": joblib, "n_jobs": -1}), 20) == 8
    assert sweep.jobs_at_once(hydra_node({"_target_": joblib, "n_jobs": -2}), 20) == 7
    assert sweep.jobs_at_once(hydra_node({"_target_": joblib, "n_jobs": 2}), 20) == 2
    assert sweep.count_jobs(hydra_node({}, ["model.width=8,12", "seed=0,1,2", "optimizer=adam"])) == 6
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert sweep.jobs_at_once(hydra_node({"_target_": local}), 5) == 5
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert sweep.jobs_at_once(hydra_node({"_target_": slurm}), 5) is None  # each job its own allocation
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert sweep.jobs_at_once(hydra_node({"_target_": basic}), 5) == 1
    for n_jobs in (-1, 1, 2, 3, 8):
        at_once = sweep.jobs_at_once(hydra_node({"_target_": joblib, "n_jobs": n_jobs}), 100)
        assert at_once * max(1, 8 // at_once) <= 8


def test_threads_setting_wins_and_single_runs_keep_torchs_default(monkeypatch):
    from hydra.types import RunMode

    from fpdsl.sweep import THREADS_ENV, job_threads

    monkeypatch.setenv(THREADS_ENV, "3")
    multirun = {"hydra": {"mode": RunMode.MULTIRUN}}
    assert job_threads(OmegaConf.create({"threads": None} | multirun)) == 3
    assert job_threads(OmegaConf.create({"threads": 2} | multirun)) == 2
    assert job_threads(OmegaConf.create({"threads": None, "hydra": {"mode": RunMode.RUN}})) is None
    monkeypatch.delenv(THREADS_ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # what Ray sets for a task of 4 CPUs
    assert job_threads(OmegaConf.create({"threads": None} | multirun)) == 4
    monkeypatch.delenv("OMP_NUM_THREADS")  # a SLURM job: the CPUs of its allocation
    assert job_threads(OmegaConf.create({"threads": None} | multirun)) == len(os.sched_getaffinity(0))


def test_a_job_with_bad_input_fails_alone_and_the_sweep_exits_2(tmp_path):
    proc = run_cli(tmp_path, "-m", "model.width=0,8", *GRID, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fpdsl: error:")]
    assert len(errors) == 1 and "model.width" in errors[0] and "Traceback" not in proc.stderr
    client, runs = mlflow_runs(tmp_path)
    parent, children = sweep_runs(runs)
    assert [(c.data.params["model.width"], c.info.status) for c in children] == [("8", "FINISHED")]
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs_finished"] == 1
