import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# fpdsl's caches (the empty-store template, the kernel variants measured on this machine) go to
# a folder of the test session, shared by every CLI run of it, never into the user's home
if "FPDSL_TEST_CACHE" not in os.environ:
    import tempfile

    os.environ["FPDSL_TEST_CACHE"] = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="fpdsl-test-cache-")
CONF = ROOT / "conf"
# a tiny version of the default problem: seconds per CLI run
TINY = ["dataset.n_points=64", "model.width=16", "budget.max_steps=30", "probe.spectrum.every=5", "tracking.every=1"]


def run_cli(tmp_path, *overrides, check=True, timeout=300, env=None):
    """`python -m fpdsl` in a subprocess, outputs and the MLflow store under tmp_path."""
    e = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", FPDSL_SUMMARY="1")
    e.pop("CI", None)
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    proc = subprocess.run(
        [sys.executable, "-m", "fpdsl", *overrides], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def mlflow_runs(tmp_path, experiment="fpdsl"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture
def cli(tmp_path):
    return lambda *o, **kw: run_cli(tmp_path, *o, **kw)
