"""Property: any valid small config ends FINISHED or FAILED (never RUNNING), metrics readable."""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import mlflow_runs
from fpdsl.runner import Diverged
from test_reliability import run_in_process

configs = st.fixed_dictionaries(
    {
        "optimizer": st.sampled_from(["adam", "gd", "lbfgs", "cg", "lbfgsb", "powell", "pso", "oneplusone"]),
        "model.width": st.integers(1, 12),
        "model.depth": st.integers(1, 2),
        "model.activation": st.sampled_from(["tanh", "relu", "sigmoid", "softplus", "sin", "xtanh", "hat", "srelu"]),
        "dataset.n_points": st.integers(32, 80),
        "budget.max_steps": st.integers(1, 6),
        "seed": st.integers(0, 2**31 - 1),
        "probe.spectrum.every": st.integers(1, 4),
        "model.init_std": st.one_of(st.none(), st.floats(0.01, 3.0)),
    }
)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs)
def test_valid_configs_end_finished_or_failed(tmp_path_factory, cfg):
    tmp = tmp_path_factory.mktemp("prop")
    overrides = [f"{k}={'null' if v is None else v}" for k, v in cfg.items()]
    if cfg["optimizer"] == "powell":
        overrides.append("budget.max_evals=2000")
    try:
        run_in_process(tmp, *overrides)
    except Diverged:
        pass
    client, runs = mlflow_runs(tmp)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status in ("FINISHED", "FAILED")
    history = client.get_metric_history(run.info.run_id, "loss")
    assert history and history[0].step == 0
    assert all(isinstance(m.value, float) for m in history)
    if run.info.status == "FINISHED":
        assert math.isfinite(run.data.metrics["final_loss"])
