"""Every model option on every evaluation path: batched population loss = per-vector loss =
the module's own forward pass; the scipy and torch families train each one."""
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from conftest import CONF
from fpdsl.data import SineSum, Sines1D
from fpdsl.losses import MSE, Sobolev
from fpdsl.objective import Objective
from fpdsl.optim import Budget, ScipyOptimizer, TorchOptimizer
from test_compose import compose_cfg

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# small sizes, so every option is cheap; keys an option does not have are left out
SMALL = {"width": 8, "depth": 2, "n_features": 6, "scales": [1, 3, 9]}


def build(option, data, **extra):
    cfg = compose_cfg(f"model={option}")
    overrides = {k: v for k, v in {**SMALL, **extra}.items() if k in cfg.model}
    if option == "two_layer":
        overrides.update(init_gamma=None, init_std=0.5)  # the tiny default init makes every loss equal
    return instantiate(cfg.model, in_dim=data.x.shape[1], out_dim=data.y.shape[1], **overrides)


def datasets():
    return {"1d": Sines1D(n_points=24), "5d": SineSum(n_points=16)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dataset", ["1d", "5d"])
@pytest.mark.parametrize("option", MODELS)
def test_batched_loss_equals_per_vector_loss_and_module_forward(option, dataset, dtype):
    data = datasets()[dataset]
    torch.manual_seed(0)
    obj = Objective(build(option, data), data.x, data.y, MSE(), dtype=dtype)
    g = torch.Generator().manual_seed(1)
    thetas = obj.theta0 + 0.3 * torch.randn(5, obj.n_params, generator=g, dtype=dtype)
    batched = obj.population_loss(thetas)
    with torch.no_grad():
        single = torch.stack([obj.loss(t) for t in thetas])
        own = []
        for t in thetas:
            obj.load(t)
            own.append(MSE()(obj.model(obj.x), obj.y))
        own = torch.stack(own)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(batched, single, **tol)
    torch.testing.assert_close(single, own, **tol)
    assert batched.std() > 0  # the members really differ


def test_batched_sobolev_loss_equals_per_vector_loss():
    data = Sines1D(n_points=32)
    torch.manual_seed(0)
    obj = Objective(build("mlp", data), data.x, data.y, Sobolev(data, s=1.5), dtype=torch.float64)
    thetas = obj.theta0 + 0.3 * torch.randn(4, obj.n_params, dtype=torch.float64)
    with torch.no_grad():
        single = torch.stack([obj.loss(t) for t in thetas])
    torch.testing.assert_close(obj.population_loss(thetas), single, rtol=1e-10, atol=1e-12)


def _train(optimizer, obj, steps=4):
    losses = []

    def on_step(step, theta, n_evals, loss):
        losses.append(loss)
        return step >= steps

    optimizer.run(obj, Budget(steps, None), on_step)
    return losses


@pytest.mark.parametrize("option", MODELS)
def test_scipy_and_torch_families_train_every_model(option):
    from functools import partial

    data = Sines1D(n_points=24)
    for family, opt, dtype in (
        ("scipy", ScipyOptimizer(method="L-BFGS-B"), torch.float64),
        ("torch", TorchOptimizer("torch.optim.Adam", lr=1e-2), torch.float32),
    ):
        torch.manual_seed(0)
        obj = Objective(build(option, data), data.x, data.y, MSE(), dtype=dtype)
        with torch.no_grad():
            start = float(obj.loss(obj.theta0))
        losses = _train(opt, obj)
        assert all(math.isfinite(v) for v in losses), (family, losses)
        assert losses[-1] < start, f"{option} with {family}: loss did not fall ({start} → {losses[-1]})"


def test_fourier_feature_matrix_is_a_fixed_buffer_set_by_the_seed():
    from fpdsl.models import FourierFeatures

    torch.manual_seed(5)
    a = FourierFeatures(2, 1, n_features=4, sigma=3.0, width=4, depth=1)
    torch.manual_seed(5)
    b = FourierFeatures(2, 1, n_features=4, sigma=3.0, width=4, depth=1)
    torch.manual_seed(6)
    c = FourierFeatures(2, 1, n_features=4, sigma=3.0, width=4, depth=1)
    assert torch.equal(a[0].B, b[0].B) and not torch.equal(a[0].B, c[0].B)
    assert "0.B" not in dict(a.named_parameters()) and "0.B" in dict(a.named_buffers())
    x = torch.rand(7, 2)
    z = 2 * math.pi * x @ a[0].B.T
    torch.testing.assert_close(a[0](x), torch.cat([torch.cos(z), torch.sin(z)], dim=1))


def test_siren_initialisation_bounds():
    from fpdsl.models import Siren

    torch.manual_seed(0)
    m = Siren(3, 1, width=64, depth=3, omega0=30.0)
    linears = [l for l in m if isinstance(l, torch.nn.Linear)]
    assert linears[0].weight.abs().max() <= 1 / 3
    for lin in linears[1:]:
        bound = math.sqrt(6 / lin.in_features) / 30
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    x = torch.rand(5, 3)
    torch.testing.assert_close(m[1](linears[0](x)), torch.sin(30 * linears[0](x)))


def test_mscale_groups_see_scaled_inputs():
    from fpdsl.errors import ConfigError
    from fpdsl.models import MScale

    m = MScale(1, 1, width=7, scales=[1, 10, 100], activation="tanh")
    np.testing.assert_array_equal(m[0].scales.numpy(), [1, 1, 1, 10, 10, 100, 100])
    x = torch.rand(4, 1)
    torch.testing.assert_close(m[0](x), (x @ m[0].weight.T) * m[0].scales + m[0].bias)
    with pytest.raises(ConfigError, match="model.width"):
        MScale(1, 1, width=2, scales=[1, 2, 4])


def test_two_layer_is_the_condensation_network():
    from fpdsl.models import TwoLayer

    torch.manual_seed(0)
    m = TwoLayer(5, 1, width=50, activation="tanh")  # std = 50^-4
    assert m[2].bias is None
    std = float(torch.cat([p.detach().reshape(-1) for p in m.parameters()]).std())
    assert std == pytest.approx(50.0**-4, rel=0.1)
