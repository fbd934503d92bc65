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
    run_in_process(tmp_path, f"experiment={name}", "budget.max_steps=3", *extra)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        experiment = compose("config", overrides=[f"experiment={name}"]).tracking.experiment
    _, runs = mlflow_runs(tmp_path, experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "loss" in runs[0].data.metrics


def test_report_aggregates_seeds_and_counts_each_claim(tmp_path):
    from fpdsl.report import build

    for seed in range(3):
        run_in_process(tmp_path, "experiment=fprinciple_adam", "budget.max_steps=300", "tracking.experiment=rep", f"seed={seed}")
        run_in_process(tmp_path, "experiment=condensation_tanh", "tracking.experiment=rep", f"seed={seed}")
    run_in_process(tmp_path, "experiment=fprinciple_pso", "budget.max_steps=4", "tracking.experiment=rep")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- reproduce:start -->\nold table\n<!-- reproduce:end -->\noutro\n")
    out = build(f"sqlite:///{tmp_path}/mlflow.db", ["rep"], {}, tmp_path / "report", readme=readme)
    text = (out / "report.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| fprinciple_adam |")}
    assert "| fprinciple_adam | spectrum |" in text and "| 3 |" in rows["fprinciple_adam"]  # one row for three seeds
    assert "/3" in rows["fprinciple_adam"] and "±" in rows["fprinciple_adam"]  # verdict counts and an interval
    assert "| fprinciple_pso | spectrum |" in text and text.count("| fprinciple_pso |") == 1
    claims = (out / "claims.md").read_text()
    assert "F-Principle: low frequencies converge first under Adam" in claims
    assert "tanh: at most 2p = 2 condensed orientations" in claims and "/3 (" in claims
    new = readme.read_text()
    assert "old table" not in new and new.startswith("intro\n") and new.endswith("outro\n") and claims.strip() in new
    assert (out / "spectrum_grid.png").stat().st_size > 10_000 and (out / "condensation.png").exists()
    client, runs = mlflow_runs(tmp_path, "fpdsl-report")
    assert len(runs) == 1
    assert "report/report.md" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")}
    assert not (tmp_path / "mlruns").exists()  # the report's run lives in the store it read
