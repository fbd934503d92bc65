"""What a new user meets: the package from a wheel, the Python API, the MLflow record as a
comparison surface, overrides as users write them, and hyperparameter search."""
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY, mlflow_runs


def test_the_python_api_runs_loads_and_queries(tmp_path):
    import fpdsl

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rid = fpdsl.run(["optimizer=pso", *TINY], uri=uri)
    rid2 = fpdsl.run(["optimizer=adam", "optimizer.lr=0.01", *TINY], uri=uri)
    r = fpdsl.load(rid, uri=uri)
    assert r.status == "FINISHED" and r.tags["fpdsl.optimizer"] == "pso" and r.config.optimizer.popsize == 50
    assert r.theta.shape == (3 * 16 + 1,) and r.output.shape == (64, 1)
    assert r.history["spectrum/delta_complex"].shape[1] == len(r.history["spectrum/peaks"])
    assert list(r.history["trace/step"]) == list(range(31))
    # the final output is the network at the final θ
    np.testing.assert_allclose(np.mean((r.output - r.final["y"]) ** 2), r.metrics["final_loss"], rtol=1e-4)
    frame = fpdsl.runs(uri=uri)
    assert set(frame["run_id"]) == {rid, rid2} and "metrics.spectrum/fp_order_halving" in frame.columns
    assert list(fpdsl.runs(uri=uri, optimizer="pso")["run_id"]) == [rid]
    assert r.params["optimizer.family"] == "population" and r.params["choice.optimizer"] == "pso"
    fig = r.figure("spectrum")
    for fmt in ("png", "pdf", "svg"):
        fig.savefig(tmp_path / f"h.{fmt}", dpi=200)
        assert (tmp_path / f"h.{fmt}").stat().st_size > 1000
    with pytest.raises(fpdsl.ConfigError, match="model.width"):
        fpdsl.run(["model.width=0"], uri=uri)


def test_a_run_read_back_carries_what_the_mlflow_ui_compares(cli, tmp_path):
    cli("optimizer=pso", "dataset.n_points=64", "model.width=16", "budget.max_steps=300", "tracking.every=50",
        "tracking.per_decade=10", "tracking.images_per_decade=2", "figures.formats=[png,svg]")
    client, (run,) = mlflow_runs(tmp_path)
    rid, tags, m = run.info.run_id, run.data.tags, run.data.metrics
    assert tags["mlflow.source.git.commit"] and tags["mlflow.source.name"] == "fpdsl"
    assert run.info.run_name.startswith("pso-mlp-sines1d-s0-") and len(run.info.run_name) > len("pso-mlp-sines1d-s0-")
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "sines1d" and len(inp.dataset.digest) == 16 and "201" not in inp.dataset.profile
    # the same metrics against evaluations: equal cost across optimizers
    by_evals = client.get_metric_history(rid, "by_evals/loss")
    assert [p.step for p in by_evals] == sorted(p.step for p in by_evals) and by_evals[-1].step == m["final_n_evals"]
    # log-spaced cadence resolves the first decade
    steps = [p.step for p in client.get_metric_history(rid, "loss")]
    assert {0, 1, 2, 3, 4, 5, 7, 9} <= set(steps) and 300 in steps
    from fpdsl.cadence import Cadence

    assert sorted(steps) == [s for s in range(301) if Cadence(50, 10)(s)]  # no step the recorder skipped
    # the probe observes every 10 steps; its scalars go when the loss does, or 50 steps after their last
    sent, want = -math.inf, []
    for s in range(0, 301, 10):
        if Cadence(50, 10)(s) or s - sent >= 50 or s == 300:
            sent = s
            want.append(s)
    assert sorted(p.step for p in client.get_metric_history(rid, "spectrum/delta/k1")) == want
    images = [a.path for a in client.list_artifacts(rid, "images")]
    assert any("+compressed.webp" in p for p in images)
    # snapshots: the probe's first observation (every 10 steps) from each of 0, 2, 9, 31, 99, and the last
    assert sorted({int(p.split("+step+")[1].split("+")[0]) for p in images}) == [0, 10, 40, 100, 300]
    assert tags["mlflow.loggedImages"] == "True"
    assert {"figures/spectrum_heatmap.png", "figures/spectrum_heatmap.svg"} <= {a.path for a in client.list_artifacts(rid, "figures")}
    for key in m:  # never 1.8e308 for "never": NaN and a flag
        for p in client.get_metric_history(rid, key):
            assert not (abs(p.value) > 1e300), (key, p.value)
    assert any(k.startswith("spectrum/converged/") for k in m)
    assert isinstance(m["spectrum/fp_verdict_code"], float)


def test_scipy_tells_why_it_stopped_before_its_budget(cli, tmp_path):
    proc = cli("optimizer=lbfgsb", "dataset.n_points=32", "model.width=4", "budget.max_steps=5000")
    client, (run,) = mlflow_runs(tmp_path)
    assert "optimizer.message" in run.data.tags and "stopped before the budget" in proc.stdout
    assert int(run.data.metrics["steps"]) < 5000


def test_overrides_as_users_write_them(cli, tmp_path):
    cli("experiment=fprinciple_adam", "optimizer.lr=0.02", "budget.max_steps=5")
    client, (run,) = mlflow_runs(tmp_path, "fprinciple")
    assert run.data.params["optimizer.lr"] == "0.02" and run.data.tags["fpdsl.experiment"] == "fprinciple_adam"
    bad = cli("optimizer.optimizer.lr=0.1", check=False)
    assert bad.returncode == 2 and "did you mean optimizer.lr?" in bad.stderr
    log = next((tmp_path / "outputs").rglob("fpdsl.log")).read_text()
    assert "fpdsl" in log and "finished after" in log  # Hydra's job log has the run's lines


def test_hyperparameter_search_names_its_best_trial_on_the_parent(cli, tmp_path):
    proc = cli("-m", "hydra/sweeper=search", "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "hydra.sweeper.n_trials=3",
               "hydra.sweeper.objective=spectrum/fp_order_halving", "hydra.sweeper.direction=maximize", *TINY)
    assert "fpdsl: search: best spectrum/fp_order_halving" in proc.stdout
    client, runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("fpdsl.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 3 and parent.info.status == "FINISHED"
    best = parent.data.tags["fpdsl.best_run"]
    assert best in {t.info.run_id for t in trials}
    values = [t.data.metrics["spectrum/fp_order_halving"] for t in trials]
    assert float(parent.data.tags["fpdsl.best_value"]) == pytest.approx(max(v for v in values if not math.isnan(v)))


@pytest.mark.slow
def test_a_wheel_in_a_fresh_environment_works_from_any_folder(tmp_path):
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_symlink():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(ROOT / f), src / f)
        elif (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db")
    env.pop("CI", None)

    def fpdsl(*args, check=True, cmd=(str(venv / "bin" / "fpdsl"),)):
        p = subprocess.run([*cmd, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        if check:
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        return p

    assert "site-packages" in subprocess.run([str(venv / "bin" / "python"), "-c", "import fpdsl.conf; print(fpdsl.conf.__file__)"],
                                             capture_output=True, text=True, cwd=work).stdout
    fpdsl("optimizer=pso", "model.width=200", "budget.max_steps=20")  # the design card's command
    fpdsl("experiment=fprinciple_adam", "budget.max_steps=5")
    fpdsl("optimizer=adam", "optimizer.lr=0.01", "budget.max_steps=5", cmd=(str(venv / "bin" / "python"), "-m", "fpdsl"))
    typo = fpdsl("model.widht=3", check=False)
    assert typo.returncode == 2 and "did you mean model.width?" in typo.stderr
    helptext = fpdsl("--help").stdout
    assert helptext.startswith("fpdsl: declarative") and "optimizer: adam" in helptext and "__main__" not in helptext
    assert "complete" in fpdsl("-sc", "install=bash").stdout
    # your own config folder and your own model class
    (work / "mine" / "experiment").mkdir(parents=True)
    (work / "mine" / "model").mkdir(parents=True)
    (work / "mine" / "model" / "mynet.yaml").write_text("_target_: mynet.Net\nwidth: 7\n")
    (work / "mine" / "experiment" / "tiny_mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mynet\nbudget:\n  max_steps: 3\n")
    (work / "mynet.py").write_text(
        "import torch\nclass Net(torch.nn.Sequential):\n    def __init__(self, in_dim, out_dim, width=4):\n"
        "        super().__init__(torch.nn.Linear(in_dim, width), torch.nn.Tanh(), torch.nn.Linear(width, out_dim))\n")
    fpdsl("--config-dir", str(work / "mine"), "experiment=tiny_mine")
    missing = fpdsl("model._target_=notthere.Net", check=False)
    assert missing.returncode == 2 and "PYTHONPATH" in missing.stderr


def test_a_cadence_is_every_n_steps_and_the_rounded_powers_of_ten():
    from bisect import bisect_right

    from fpdsl.cadence import Cadence

    for every, per_decade in [(None, 1), (None, 10), (7, 20), (50, 33)]:
        cadence = Cadence(every, per_decade)
        powers = {round(10 ** (i / per_decade)) - 1 for i in range(6 * per_decade)}
        want = [s for s in range(300_000) if s == 0 or (every and s % every == 0) or s in powers]
        assert [s for s in range(300_000) if cadence(s)] == want
        # the next due step after any step (the recorder skips the steps in between)
        fresh, later = Cadence(every, per_decade), sorted({round(10 ** (i / per_decade)) - 1 for i in range(7 * per_decade)})
        for s in range(0, 300_000, 997):
            assert fresh.next_after(s) == min(later[bisect_right(later, s)], (s // every + 1) * every if every else math.inf)
    assert [s for s in range(20) if Cadence(None, 10)(s)] == [0, 1, 2, 3, 4, 5, 7, 9, 12, 15, 19]
    assert Cadence(None, None).next_after(5) == float("inf") and Cadence(10, None).next_after(10) == 20
