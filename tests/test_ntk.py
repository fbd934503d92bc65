"""The NTK probe and the linearised prediction (docs/science.md, "NTK") against known answers,
and ntk_lazy / ntk_rich through the command line."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import mlflow_runs, run_cli
from fpdsl import ntk
from fpdsl.data import Sines1D
from fpdsl.losses import MSE
from fpdsl.models import MLP
from fpdsl.objective import Objective
from fpdsl.optim import TorchOptimizer
from fpdsl.probes import NTK, StepView


def _linear_objective(n=64, d=7, seed=0):
    """f(x) = θ·φ(x) with φ a fixed feature map: a model whose NTK is Φ Φᵀ whatever θ is."""
    torch.manual_seed(seed)
    data = Sines1D(n_points=n)
    t = data.x[:, 0]
    phi = np.stack([np.cos(k * t) for k in range(d)], axis=1)
    model = nn.Sequential(nn.Linear(d, 1, bias=False))
    obj = Objective(model, phi, data.y, MSE(), dtype=torch.float64)
    return data, phi, obj


def test_the_kernel_of_a_linear_model_is_phi_phi_t_and_gd_follows_the_prediction_exactly():
    data, phi, obj = _linear_objective()
    np.testing.assert_allclose(ntk.kernel(obj.forward, obj.theta0, obj.x), phi @ phi.T, rtol=1e-12, atol=1e-12)
    lr = 0.3
    probe = NTK(data, optimizer=TorchOptimizer("torch.optim.SGD", lr=lr), every=1000, per_decade=None)
    probe.grid = False  # φ(x) is the model's input here, not the grid: compare outputs, not Δ_F
    theta = obj.theta0.clone().requires_grad_(True)
    outputs = []
    for step in range(60):
        probe.observe(step, StepView(obj, theta.detach()))
        outputs.append(obj.forward(theta.detach()).numpy())
        loss = obj.loss(theta)
        (g,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta -= lr * g
    assert probe.rule()[1] is True  # plain gradient descent: the prediction is this run's own rule
    np.testing.assert_allclose(probe.predicted(), np.array(outputs), rtol=1e-10, atol=1e-10)


def test_a_known_eigendecomposition_decays_per_eigenvalue():
    rng = np.random.default_rng(1)
    n = 12
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = np.geomspace(50.0, 0.05, n)
    k = (v * lam) @ v.T
    hess = np.eye(n) / n  # L = ‖r‖² / (2n)
    r0 = rng.normal(size=n)
    lr, steps = 0.2, np.array([0, 1, 2, 5, 17, 100])
    r = ntk.predict(k, hess, r0, lr, steps)
    expected = (1 - lr * lam / n)[None, :] ** steps[:, None] * (v.T @ r0)[None, :]
    np.testing.assert_allclose(r @ v, expected, rtol=1e-9, atol=1e-12)
    flow = ntk.predict(k, hess, r0, lr, steps, flow=True)
    np.testing.assert_allclose(flow @ v, np.exp(-lr * lam[None, :] / n * steps[:, None]) * (v.T @ r0), rtol=1e-9, atol=1e-12)


def test_the_jacobian_agrees_with_finite_differences_and_the_chunked_kernel_with_the_whole():
    torch.manual_seed(0)
    data = Sines1D(n_points=23)
    obj = Objective(MLP(1, 1, width=6), data.x, data.y, MSE(), dtype=torch.float64)
    theta = obj.theta0 + 0.1 * torch.randn(obj.n_params, dtype=torch.float64)
    j = ntk.jacobian_rows(obj.forward, theta, obj.x).numpy()
    fd = np.empty_like(j)
    h = 1e-6
    for p in range(obj.n_params):
        e = torch.zeros_like(theta)
        e[p] = h
        fd[:, p] = ((obj.forward(theta + e) - obj.forward(theta - e)) / (2 * h)).reshape(-1).numpy()
    np.testing.assert_allclose(j, fd, rtol=1e-6, atol=1e-8)
    whole = ntk.kernel(obj.forward, theta, obj.x)
    chunked = ntk.kernel(obj.forward, theta, obj.x, chunk_bytes=5 * obj.n_params * 8)  # blocks of 5 points
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(whole, j @ j.T, rtol=1e-12)


def test_the_loss_hessian_of_mse_and_the_spectrum_summary():
    h = torch.randn(10, 1, dtype=torch.float64)
    np.testing.assert_allclose(ntk.loss_hessian(MSE(), h, torch.zeros_like(h)), 2 / 10 * np.eye(10), atol=1e-12)
    s = ntk.spectrum(np.diag([4.0, 1.0, 1.0, 0.0]), 2)
    assert s.eigenvalues[0] == 4.0 and s.eigenvectors.shape == (4, 2)
    assert s.effective_rank == pytest.approx(np.exp(-(2 / 3 * np.log(2 / 3) + 2 * (1 / 6) * np.log(1 / 6))))
    assert s.condition > 1e15  # a zero eigenvalue
    # leading eigenvectors of a smooth kernel on a grid are low frequencies
    x = np.linspace(0, 1, 64, endpoint=False)
    k = np.exp(-((x[:, None] - x[None, :]) ** 2) / 0.01)
    freqs = ntk.dominant_frequency(ntk.spectrum(k, 5).eigenvectors, 64)
    assert freqs[0] == 0 and list(freqs) == sorted(freqs)


def test_agreement_is_one_for_identical_histories_and_falls_with_the_gap():
    a = np.array([[1.0, 1.0], [0.5, 0.9], [0.05, 0.6]])
    assert ntk.agreement(a, a) == 1.0
    assert ntk.agreement(a, a + 0.2) == pytest.approx(1 - np.abs(np.clip(a + 0.2, 0, 1) - a).mean())
    assert ntk.agreement(np.full((2, 2), 5.0), np.zeros((2, 2))) == 0.0  # clipped to [0, 1]


def test_probe_refuses_a_kernel_too_large_before_any_compute():
    from fpdsl.errors import ConfigError

    with pytest.raises(ConfigError, match="probe.ntk.*max_size"):
        NTK(Sines1D(n_points=3000))


def _ntk_run(tmp_path, experiment, *extra):
    run_cli(tmp_path, f"experiment={experiment}", "tracking.experiment=ntk", *extra)
    client, runs = mlflow_runs(tmp_path, "ntk")
    run = [r for r in runs if r.data.tags.get("fpdsl.experiment") == experiment][-1]
    return client, run


def test_any_fprinciple_experiment_takes_the_probe_and_says_which_prediction_it_logs(tmp_path):
    run_cli(tmp_path, "experiment=fprinciple_adam", "probe=[spectrum,ntk]", "budget.max_steps=100", "probe.ntk.every=50",
            "tracking.experiment=fpdsl")
    client, (run,) = mlflow_runs(tmp_path)
    m, t = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert t["ntk/prediction"].startswith("reference: gradient descent") and "Adam" in t["ntk/prediction"]
    assert m["ntk/exact"] == 0.0 and 0.0 <= m["ntk/agreement"] <= 1.0 and m["ntk/lr"] <= 0.01
    assert {"ntk/eig/1", "ntk/drift", "ntk/condition", "ntk/effective_rank", "ntk/eigvec_k/1",
            "ntk/predicted_converge_step/k1"} <= set(m)
    steps = [p.step for p in client.get_metric_history(run.info.run_id, "ntk/drift")]
    assert steps == [0, 50, 100]
    assert "figures/ntk_prediction.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}


@pytest.mark.slow
def test_lazy_agrees_rich_departs_through_the_cli(tmp_path):
    client, lazy = _ntk_run(tmp_path, "ntk_lazy")
    _, rich = _ntk_run(tmp_path, "ntk_rich")
    m, t = lazy.data.metrics, lazy.data.tags
    assert lazy.info.status == "FINISHED" and m["ntk/agreement"] >= 0.9 and t["ntk/verdict"] == "agrees"
    assert t["ntk/prediction"].startswith("gradient descent") and m["ntk/exact"] == 1.0
    assert m["ntk/final_drift"] < 0.1 and m["ntk/eig/1"] > m["ntk/eig/5"] > 0
    assert np.isfinite(m["ntk/condition"]) and m["ntk/effective_rank"] >= 1
    assert rich.data.metrics["ntk/agreement"] < m["ntk/agreement"] and rich.data.tags["ntk/verdict"] == "departs"
    assert rich.data.metrics["ntk/final_drift"] > m["ntk/final_drift"]
    names = {a.path for a in client.list_artifacts(lazy.info.run_id, "figures")}
    assert "figures/ntk_prediction.png" in names
    hist = np.load(client.download_artifacts(lazy.info.run_id, "probe_history.npz", str(tmp_path)))
    assert hist["ntk/delta_predicted"].shape == hist["ntk/delta_measured"].shape
