"""Bad input, divergence, interruption, resume and determinism, end to end through the CLI."""
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY, mlflow_runs, run_cli

def test_divergence_ends_failed_with_step_and_keeps_history(cli, tmp_path):
    proc = cli("optimizer=gd", "optimizer.lr=50", *TINY, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FAILED"
    step = int(run.data.tags["fpdsl.diverged_step"])
    assert "loss became" in run.data.tags["fpdsl.error"]
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(step + 1))
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/spectrum_heatmap.png" in arts


def _start(tmp_path, *overrides):
    import os

    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "fpdsl", *overrides], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_flushes_writes_figures_and_ends_killed(tmp_path, sig, code):
    proc = _start(tmp_path, "budget.max_steps=1000000", "dataset.n_points=64", "model.width=16", "probe.spectrum.every=5", "tracking.every=1")
    line = proc.stdout.readline()  # "fpdsl: run <id> → ..." once training is about to start
    assert line.startswith("fpdsl: run"), line + proc.stderr.read()
    time.sleep(3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    client, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "KILLED"
    assert signal.Signals(sig).name in run.data.tags["fpdsl.stopped"]
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert len(losses) > 10 and [m.step for m in losses] == list(range(len(losses)))
    assert {"figures", "probe_history.npz", "checkpoint"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("optimizer,through_cli", [("adam", True), ("pso", True), ("lbfgsb", False), ("oneplusone", False)])
def test_resume_continues_the_same_run(cli, tmp_path, optimizer, through_cli):
    base = [f"optimizer={optimizer}", "dataset.n_points=64", "model.width=16", "probe.spectrum.every=5", "checkpoint.every=10", "tracking.every=1"]
    start = cli if through_cli else (lambda *o: run_in_process(tmp_path, *o))
    start(*base, "budget.max_steps=20")
    client, (run,) = mlflow_runs(tmp_path)
    rid = run.info.run_id
    start(*base, "budget.max_steps=40", f"resume={rid}")
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    run = client.get_run(rid)
    assert run.info.status == "FINISHED"
    assert run.data.tags["fpdsl.resumed_from_step"] == "20"
    steps = [m.step for m in client.get_metric_history(rid, "loss")]
    assert steps == list(range(41))
    evals = [m.value for m in client.get_metric_history(rid, "n_evals")]
    assert evals == sorted(evals)
    import io
    from pathlib import Path

    import numpy as np

    hist = np.load(io.BytesIO(Path(client.download_artifacts(rid, "probe_history.npz")).read_bytes()))
    assert list(hist["spectrum/steps"]) == list(range(0, 41, 5))


def test_resume_refuses_a_different_config(cli, tmp_path):
    cli(*TINY)
    _, (run,) = mlflow_runs(tmp_path)
    proc = cli(*TINY, "model.width=8", f"resume={run.info.run_id}", check=False)
    assert proc.returncode == 2 and "model.width" in proc.stderr.strip().splitlines()[-1]


def run_in_process(tmp_path, *overrides):
    """The task function itself through the Python API (no interpreter start-up per run)."""
    import fpdsl

    return fpdsl.run([f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "progress=off", *overrides])


@pytest.mark.parametrize("optimizer", ["adam", "lbfgsb", "oneplusone", "pso"])
def test_same_config_and_seed_give_the_same_metrics(tmp_path, optimizer):
    histories = []
    for i in range(2):
        d = tmp_path / str(i)
        d.mkdir()
        run_in_process(d, f"optimizer={optimizer}", *TINY, "seed=3")
        client, (run,) = mlflow_runs(d)
        histories.append({k: [(m.step, repr(m.value)) for m in client.get_metric_history(run.info.run_id, k)]
                          for k in run.data.metrics if not k.endswith(("seconds", "per_second"))})  # wall time differs
    assert histories[0] == histories[1]


EXACT_RESUME = ["adam", "lbfgs"]


@pytest.mark.parametrize("optimizer", EXACT_RESUME)
def test_resume_is_exact_where_the_family_exposes_its_state(tmp_path, optimizer):
    base = [f"optimizer={optimizer}", *TINY[:3], "probe.spectrum.every=5", "checkpoint.every=10", "tracking.every=1"]
    (tmp_path / "straight").mkdir()
    (tmp_path / "split").mkdir()
    run_in_process(tmp_path / "straight", *base, "budget.max_steps=30")
    run_in_process(tmp_path / "split", *base, "budget.max_steps=15")
    _, (first,) = mlflow_runs(tmp_path / "split")
    run_in_process(tmp_path / "split", *base, "budget.max_steps=30", f"resume={first.info.run_id}")
    histories = []
    for d in ("straight", "split"):
        client, (run,) = mlflow_runs(tmp_path / d)
        histories.append([(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")])
    assert histories[0] == histories[1]
