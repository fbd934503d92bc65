"""The real CLI in a subprocess, a real MLflow store in tmp_path, tiny real runs."""
import io
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, mlflow_runs

FAMILIES = {
    "torch": "adam",
    "scipy": "lbfgsb",
    "scipy_no_gradient": "powell",
    "nevergrad": "oneplusone",
    "population": "pso",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_and_records(cli, tmp_path, family):
    opt = FAMILIES[family]
    extra = ["budget.max_evals=3000"] if opt == "powell" else []
    proc = cli(f"optimizer={opt}", *TINY, *extra)
    assert "fpdsl: run " in proc.stdout and "mlflow.db" in proc.stdout
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.width"] == "16"
    assert run.data.tags["fpdsl.optimizer"] == opt
    m = run.data.metrics
    for key in ("loss", "n_evals", "spectrum/delta/k1", "spectrum/fp_order", "spectrum/fp_holds", "final_loss"):
        assert key in m, key
    assert "spectrum/fp_verdict" in run.data.tags
    loss = [x.value for x in client.get_metric_history(run.info.run_id, "loss")]
    assert loss[-1] < loss[0], f"{opt}: loss did not fall ({loss[0]} → {loss[-1]})"
    evals = client.get_metric_history(run.info.run_id, "n_evals")
    assert [e.step for e in evals] == sorted(e.step for e in evals) and evals[-1].value > 0
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "probe_history.npz", "figures", ".hydra"} <= arts
    assert "figures/spectrum_heatmap.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    hist = np.load(io.BytesIO(Path(client.download_artifacts(run.info.run_id, "probe_history.npz")).read_bytes()))
    assert hist["spectrum/delta_complex"].shape == (len(hist["spectrum/steps"]), len(hist["spectrum/peaks"]))


def test_sweep_of_two_values_gives_two_runs(cli, tmp_path):
    cli("-m", "model.width=8,12", *[o for o in TINY if not o.startswith("model.width")])
    _, runs = mlflow_runs(tmp_path)
    (sweep,) = [r for r in runs if r.data.tags.get("fpdsl.role") == "sweep"]  # the sweep's parent run
    runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert sorted(r.data.params["model.width"] for r in runs) == ["12", "8"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_max_evals_stops_the_run(cli, tmp_path):
    cli("optimizer=pso", "optimizer.popsize=10", "budget.max_evals=200", "budget.max_steps=1000", *TINY[:2])
    _, (run,) = mlflow_runs(tmp_path)
    assert run.data.metrics["n_evals"] == 200  # 10 at init + 19 generations of 10


def test_step_metrics_every_n_steps_and_the_last_with_every_step_in_the_history(cli, tmp_path):
    cli(*[o for o in TINY if not o.startswith(("tracking.every", "budget.max_steps"))], "budget.max_steps=25", "tracking.every=10",
        "tracking.per_decade=null")
    client, (run,) = mlflow_runs(tmp_path)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 10, 20, 25]
    hist = np.load(io.BytesIO(Path(client.download_artifacts(run.info.run_id, "probe_history.npz")).read_bytes()))
    assert list(hist["trace/step"]) == list(range(26)) and len(hist["trace/loss"]) == 26
    # the probe observes every 5 steps; MLflow gets its scalars at most every 10, and at the end
    delta = next(k for k in run.data.metrics if k.startswith("spectrum/delta/"))
    assert [m.step for m in client.get_metric_history(run.info.run_id, delta)] == [0, 10, 20, 25]
    assert list(hist["spectrum/steps"]) == list(range(0, 26, 5))


def test_default_store_is_sqlite_in_working_dir(tmp_path):
    from conftest import run_cli

    run_cli(tmp_path, *TINY, env={"MLFLOW_TRACKING_URI": None})
    assert (tmp_path / "mlflow.db").exists()
    assert any((tmp_path / "mlartifacts").iterdir())
