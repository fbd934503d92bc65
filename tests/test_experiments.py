"""Every experiment file composes and runs with a tiny budget (as lightning-hydra-template does)."""
import pytest

from conftest import CONF, mlflow_runs
from test_reliability import run_in_process

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# shrink what a tiny budget does not already keep small
SHRINK = {"highdim": ["dataset.n_samples=40"], "fprinciple_powell": ["budget.max_evals=500"]}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_with_tiny_budget(tmp_path, name):
    extra = [o for key, opts in SHRINK.items() if name.startswith(key) for o in opts]
    run_in_process(tmp_path, f"+experiment={name}", "budget.max_steps=3", *extra)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        experiment = compose("config", overrides=[f"+experiment={name}"]).tracking.experiment
    _, runs = mlflow_runs(tmp_path, experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "loss" in runs[0].data.metrics


def test_report_builds_from_runs(tmp_path):
    from fpdsl.report import build

    for name in ("fprinciple_adam", "fprinciple_pso"):
        run_in_process(tmp_path, f"+experiment={name}", "budget.max_steps=4", "tracking.experiment=rep")
    run_in_process(tmp_path, "+experiment=condensation_xtanh", "budget.max_steps=4", "tracking.experiment=rep")
    out = build(f"sqlite:///{tmp_path}/mlflow.db", ["rep"], {}, tmp_path / "report")
    text = (out / "report.md").read_text()
    assert "| rep | adam | spectrum |" in text and "| rep | pso | spectrum |" in text
    assert "condensation" in text and "2p = 4" in text
    assert (out / "spectrum_grid.png").stat().st_size > 10_000
    assert (out / "condensation.png").exists()
    client, runs = mlflow_runs(tmp_path, "fpdsl-report")
    assert len(runs) == 1
    assert "report/report.md" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
