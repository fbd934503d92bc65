"""The new probes, models, datasets and loss through the real CLI, read back from MLflow.

One sweep runs every new probe under one optimizer of each family (one process, so the
imports are paid once); two single runs cover high-dimensional data and the new models.
"""
import io
from pathlib import Path

import numpy as np
import pytest

from conftest import mlflow_runs

FAMILIES = ["adam", "lbfgsb", "oneplusone", "pso"]
NEW_PROBES = ["filtering", "projection", "spectral_amplitude", "condensation"]
TINY_SINES = ["dataset=rahaman", "dataset.frequencies=[1,3,5]", "dataset.n_points=32", "budget.max_steps=12"]


def job_runs(tmp_path):
    """The runs of individual jobs (a sweep may add a parent run of its own)."""
    client, runs = mlflow_runs(tmp_path)
    return client, [r for r in runs if "fpdsl.optimizer" in r.data.tags and r.data.tags.get("fpdsl.role") != "sweep"]


def figures_of(client, run):
    return {a.path for a in client.list_artifacts(run.info.run_id, "figures")}


def history_of(client, run):
    path = client.download_artifacts(run.info.run_id, "probe_history.npz")
    return np.load(io.BytesIO(Path(path).read_bytes()))


@pytest.mark.slow
def test_every_new_probe_under_every_optimizer_family(cli, tmp_path):
    cli(
        "-m",
        f"optimizer={','.join(FAMILIES)}",
        *TINY_SINES,
        "model.width=12",
        f"probe=[{','.join(NEW_PROBES)}]",
    )
    client, runs = job_runs(tmp_path)
    assert sorted(r.data.tags["fpdsl.optimizer"] for r in runs) == sorted(FAMILIES)
    for run in runs:
        opt = run.data.tags["fpdsl.optimizer"]
        assert run.info.status == "FINISHED", opt
        m, tags = run.data.metrics, run.data.tags
        keys = set(m)
        # per-step quantities of each probe
        kept = int(m["filtering/n_deltas"])  # default δ grid less those whose kernel is near the identity
        assert kept + m["filtering/n_deltas_dropped"] == 5 and kept >= 1, opt
        assert sum(k.startswith("filtering/e_low/d") for k in keys) == kept, (opt, sorted(keys))
        assert sum(k.startswith("filtering/e_high/d") for k in keys) == kept, opt
        assert {"projection/delta/k1", "projection/delta/k3", "projection/delta/k5"} <= keys, opt
        assert {f"spectral_amplitude/amplitude/k{k}" for k in (1, 3, 5)} <= keys, opt
        assert {"condensation/n_orientations", "condensation/coverage", "condensation/baseline_orientations"} <= keys, opt
        # the sortable numbers and verdicts
        for probe in ("filtering", "projection", "spectral_amplitude"):
            assert f"{probe}/fp_order" in keys and f"{probe}/fp_holds" in keys, (opt, probe)
            assert tags[f"{probe}/fp_verdict"] in ("holds", "partial", "reversed", "undetermined", "not fitted"), (opt, probe)
        assert m["condensation/multiplicity"] == 1.0 and "condensation/within_2p" in keys  # tanh: p = 1
        # histories at the probes' cadence, and figures
        steps = [h.step for h in client.get_metric_history(run.info.run_id, "spectral_amplitude/amplitude/k1")]
        assert steps[0] == 0 and steps == sorted(steps), (opt, steps)
        assert figures_of(client, run) >= {
            "figures/filtering_heatmap.png",
            "figures/projection_heatmap.png",
            "figures/spectral_amplitude_heatmap.png",
            "figures/condensation_cosine.png",
            "figures/condensation_theta_amplitude.png",
        }, opt
        hist = history_of(client, run)
        assert hist["filtering/e_low"].shape == (len(hist["filtering/steps"]), kept)
        assert hist["condensation/features_last"].shape == (12, 2)
    # the fitted low frequency shows up: Adam and L-BFGS-B raise the amplitude at k = 1
    for run in runs:
        if run.data.tags["fpdsl.optimizer"] in ("adam", "lbfgsb"):
            first = client.get_metric_history(run.info.run_id, "spectral_amplitude/amplitude/k1")
            assert first[-1].value > first[0].value


def test_high_dimensional_data_with_fourier_features(cli, tmp_path):
    cli(
        "dataset=digits",
        "dataset.n_samples=120",
        "model=fourier_features",
        "model.n_features=16",
        "model.sigma=0.3",
        "model.width=16",
        "model.depth=1",
        "budget.max_steps=20",
        "probe=[filtering,projection,condensation]",
        "probe.filtering.every=5",
        "probe.projection.every=5",
        "probe.condensation.every=5",
    )
    client, (run,) = job_runs(tmp_path)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert run.data.params["model.n_features"] == "16"
    loss = [h.value for h in client.get_metric_history(run.info.run_id, "loss")]
    assert loss[-1] < loss[0]
    e_low = [k for k in m if k.startswith("filtering/e_low/")]
    assert len(e_low) == 5 and all(0 <= m[k] for k in e_low)
    assert any(k.startswith("projection/delta/k") for k in m)
    assert "condensation/n_orientations" in m and "condensation/multiplicity" not in m  # relu: no p
    hist = history_of(client, run)
    assert hist["projection/direction"].shape == (64,)  # the first principal component of the images
    assert hist["condensation/features_last"].shape == (16, 33)  # (w_k, b_k) on the 2·16 features
    assert "figures/condensation_theta_amplitude.png" not in figures_of(client, run)  # only for 1-D input


def test_siren_with_sobolev_loss_and_a_clear_error_off_the_grid(cli, tmp_path):
    cli(
        *TINY_SINES,
        "model=siren",
        "model.width=12",
        "model.depth=2",
        "model.omega0=5",
        "loss=sobolev",
        "loss.s=1.0",
        "optimizer=lbfgsb",
        "probe=[spectrum,spectral_amplitude]",
    )
    client, (run,) = job_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["fpdsl.loss"] == "sobolev"
    assert "spectrum/fp_order" in run.data.metrics and "spectral_amplitude/fp_order" in run.data.metrics

    proc = cli("dataset=condense5d", "loss=sobolev", "budget.max_steps=2", check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("fpdsl: error: loss=sobolev needs 1-D inputs on a uniform grid"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
