"""The measures of docs/science.md §3–4 against cases with a known answer."""
import math

import numpy as np
import pytest
import torch

from fpdsl import condensation, spectral
from fpdsl.data import Rahaman, Sines1D
from fpdsl.losses import MSE, Sobolev
from fpdsl.models import ACTIVATIONS


class View:
    """What a probe sees at one step, for a given output (no model or optimizer needed)."""

    def __init__(self, output, params=None, objective=None):
        self.output, self.params, self.objective = output, params or {}, objective


# -- filtering (§1.3) --------------------------------------------------------------------


def test_filtering_split_of_a_constant_is_all_low():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (50, 3))
    y = np.full((50, 2), 3.7)
    for delta in (0.01, 1.0, 100.0):
        low, high = spectral.lowpass_split(spectral.gaussian_lowpass(spectral.squared_distances(x), delta), y)
        np.testing.assert_allclose(low, y, rtol=1e-12)
        np.testing.assert_allclose(high, 0, atol=1e-12)


def test_filtering_errors_of_a_constant_target():
    x = np.linspace(0, 1, 40)[:, None]
    y = np.full((40, 1), 2.0)
    k = spectral.gaussian_lowpass(spectral.squared_distances(x), 0.01)
    assert spectral.filtering_errors(k, y, y) == (0.0, 0.0)  # exact fit: both errors 0
    e_low, e_high = spectral.filtering_errors(k, y, np.full_like(y, 1.0))
    assert e_low == pytest.approx(0.5) and e_high == 0.0  # a constant output has no high part
    e_low, e_high = spectral.filtering_errors(k, y, y + np.sin(40 * x))
    assert e_high == math.inf  # the target has no high part, the output does


def test_filtering_kernel_rows_sum_to_one_and_narrow_kernel_is_identity():
    x = np.linspace(0, 1, 30)[:, None]
    sq = spectral.squared_distances(x)
    k = spectral.gaussian_lowpass(sq, 1e-6)
    np.testing.assert_allclose(k.sum(1), 1, rtol=1e-12)
    np.testing.assert_allclose(k, np.eye(30), atol=1e-12)
    wide = spectral.gaussian_lowpass(sq, 1e6)  # every row: the plain mean
    np.testing.assert_allclose(wide, np.full((30, 30), 1 / 30), rtol=1e-5)


def test_filtering_separates_a_slow_and_a_fast_sine():
    x = np.linspace(0, 1, 400)[:, None]
    slow, fast = np.sin(2 * np.pi * x), np.sin(2 * np.pi * 40 * x)
    k = spectral.gaussian_lowpass(spectral.squared_distances(x), (0.02) ** 2)  # width ≫ fast period, ≪ slow
    low, high = spectral.lowpass_split(k, slow + fast)
    inner = slice(40, 360)  # away from the edges, where the kernel is lopsided
    assert np.abs(low[inner] - slow[inner]).max() < 0.05
    assert np.abs(high[inner] - fast[inner]).max() < 0.05


def test_filtering_probe_logs_errors_and_verdict():
    from fpdsl.probes import Filtering

    class Data:
        x = np.linspace(0, 1, 200)[:, None]
        slow, fast = np.sin(2 * np.pi * x), 0.5 * np.sin(2 * np.pi * 20 * x)
        y = slow + fast

    probe = Filtering(Data, deltas=[0.02**2, 0.03**2])
    probe.observe(0, View(np.zeros_like(Data.y)))
    m = probe.observe(10, View(Data.slow))  # the slow part learnt first
    assert set(m) == {"e_low/d0.0004", "e_low/d0.0009", "e_high/d0.0004", "e_high/d0.0009"}
    assert m["e_low/d0.0004"] < 0.05 and m["e_high/d0.0004"] > 0.95
    m = probe.observe(20, View(Data.y))
    assert all(v == 0 for v in m.values())
    res = probe.finish()
    assert res.metrics["converge_step_low/d0.0004"] == 10 and res.metrics["converge_step_high/d0.0004"] == 20
    assert res.metrics["fp_order/d0.0004"] == pytest.approx(1.0) and res.metrics["fp_order"] == pytest.approx(1.0)
    assert res.metrics["fp_holds"] == 1.0 and res.tags["fp_verdict"] == "holds"
    assert res.arrays["e_low"].shape == (3, 2)
    # learnt high first: reversed
    probe = Filtering(Data, deltas=[0.02**2])
    for step, out in ((0, 0 * Data.y), (10, Data.fast), (20, Data.y)):
        probe.observe(step, View(out))
    res = probe.finish()
    assert res.metrics["fp_order"] == pytest.approx(-1.0) and res.tags["fp_verdict"] == "reversed"


def test_default_deltas_scale_with_the_data():
    x = np.linspace(0, 1, 50)[:, None]
    d1 = spectral.default_deltas(spectral.squared_distances(x))
    d10 = spectral.default_deltas(spectral.squared_distances(10 * x))
    np.testing.assert_allclose(d10, 100 * d1)
    assert np.all(np.diff(d1) > 0)


# -- projection (§1.4) -------------------------------------------------------------------


def test_principal_direction_of_data_varying_along_one_axis():
    rng = np.random.default_rng(1)
    x = np.column_stack([0.01 * rng.standard_normal(300), rng.uniform(-3, 3, 300), 0.01 * rng.standard_normal(300)])
    np.testing.assert_allclose(spectral.principal_direction(x), [0, 1, 0], atol=0.01)


def test_projection_finds_the_frequency_of_data_varying_along_one_axis():
    from fpdsl.probes import Projection

    class Data:
        rng = np.random.default_rng(2)
        n = 256
        x = np.column_stack([rng.uniform(0, 1, n), np.arange(n) / n, rng.uniform(0, 1, n)])  # axis 1 spans [0, 1)
        y = np.sin(2 * np.pi * 5 * x[:, 1:2]) + 0.5 * np.sin(2 * np.pi * 12 * x[:, 1:2])

    probe = Projection(Data, direction=[0, 2, 0], freq_step=1.0, n_freqs=30)
    np.testing.assert_array_equal(probe.ks, [5, 12])  # along axis 1, frequencies 5 and 12
    target = probe.target[:, 0]
    assert abs(target[5]) == pytest.approx(0.5, abs=1e-9)  # (1/n) Σ sin(2π5t) e^{−2πi5t} = −i/2
    assert abs(target[12]) == pytest.approx(0.25, abs=1e-9)
    m = probe.observe(0, View(Data.y))
    assert m == {"delta/k5": 0.0, "delta/k12": 0.0}
    assert probe.observe(1, View(np.zeros_like(Data.y))) == {"delta/k5": 1.0, "delta/k12": 1.0}


def test_projection_matches_the_dft_on_a_uniform_grid():
    n = 128
    t = np.arange(n) / n
    y = np.sin(2 * np.pi * 3 * t) + np.cos(2 * np.pi * 7 * t)
    for t_scaled, step in ((t, 1.0), (5 * t - 2, None)):  # the default step: the grid's own DFT bins
        freqs = spectral.frequency_grid(t_scaled, 20, step=step)
        f = spectral.apply_pair(spectral.real_pair(spectral.nudft_matrix(t_scaled, freqs)), y)
        np.testing.assert_allclose(np.abs(f), np.abs(np.fft.rfft(y)[:20]) / n, atol=1e-12)
    assert spectral.frequency_grid(t, 1000).size == n // 2 + 1  # no more than the points resolve


# -- spectral amplitude (§1.5) -----------------------------------------------------------


def test_normalised_amplitude_of_the_target_is_one():
    data = Rahaman(amplitudes="rising", n_points=200, seed=3)
    a = spectral.sine_amplitudes(data.y, data.x[:, 0], data.angular_frequencies, data.amplitudes)
    np.testing.assert_allclose(a, 1.0, atol=1e-9)
    half = spectral.sine_amplitudes(0.5 * data.y, data.x[:, 0], data.angular_frequencies, data.amplitudes)
    np.testing.assert_allclose(half, 0.5, atol=1e-9)
    # equals Rahaman's DFT form 2|ĥ_k| / (n A) on x_j = j/n
    dft = 2 * np.abs(np.fft.rfft(data.y[:, 0]))[data.frequencies.astype(int)] / (200 * data.amplitudes)
    np.testing.assert_allclose(a, dft, atol=1e-9)


def test_spectral_amplitude_probe_orders_low_before_high():
    from fpdsl.probes import SpectralAmplitude

    data = Rahaman(frequencies=[2, 5, 9], n_points=64, seed=0)
    probe = SpectralAmplitude(data)
    x = data.x[:, 0]
    parts = [np.sin(2 * np.pi * k * x + p)[:, None] for k, p in zip(data.frequencies, data.phases)]
    probe.observe(0, View(np.zeros_like(data.y)))
    probe.observe(10, View(parts[0]))
    probe.observe(20, View(parts[0] + parts[1]))
    m = probe.observe(30, View(data.y))
    assert m == pytest.approx({"amplitude/k2": 1, "amplitude/k5": 1, "amplitude/k9": 1})
    res = probe.finish()
    assert [res.metrics[f"converge_step/k{k}"] for k in (2, 5, 9)] == [10, 20, 30]
    assert res.metrics["fp_order"] == pytest.approx(1.0) and res.tags["fp_verdict"] == "holds"


def test_spectral_amplitude_needs_known_sines():
    from fpdsl.errors import ConfigError
    from fpdsl.probes import SpectralAmplitude

    class Data:
        x = np.zeros((4, 1))
        y = np.zeros((4, 1))

    with pytest.raises(ConfigError, match="spectral_amplitude needs a dataset made of known sines"):
        SpectralAmplitude(Data, name="spectral_amplitude")


# -- condensation (§2) ------------------------------------------------------------------


def test_cosine_similarity_of_identical_opposite_and_orthogonal_neurons():
    u = np.array([[1.0, 2.0], [2.0, 4.0], [-1.0, -2.0], [-2.0, 1.0], [0.0, 0.0]])
    d = condensation.cosine_similarity(u)
    assert d[0, 1] == pytest.approx(1.0)  # same direction, different length
    assert d[0, 2] == pytest.approx(-1.0)  # opposite
    assert d[0, 3] == pytest.approx(0.0)  # orthogonal
    assert np.all(d[4, :4] == 0) and d[4, 4] == 1  # a zero feature aligns with nothing
    np.testing.assert_allclose(d, d.T)


def blocks(dirs, per, noise, rng):
    return np.concatenate([d * rng.uniform(0.5, 2, (per, 1)) + noise * rng.standard_normal((per, len(d))) for d in dirs])


def test_two_antipodal_blocks_count_two_and_are_not_split():
    rng = np.random.default_rng(0)
    d = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    u = blocks([d, -d], 25, 0.03, rng)  # the tanh picture: u and −u are two orientations
    assert condensation.count_orientations(condensation.cosine_similarity(u), 0.95) == 2
    labels = condensation.orientation_clusters(condensation.cosine_similarity(u), 0.95)
    assert len(set(labels[:25])) == 1 and len(set(labels[25:])) == 1 and labels[0] != labels[25]


def test_three_separated_blocks_count_three_and_strays_are_no_orientation():
    rng = np.random.default_rng(1)
    dirs = np.array([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0]])
    u = blocks(dirs, 10, 0.01, rng)
    d = condensation.cosine_similarity(u)
    assert condensation.count_orientations(d, threshold=0.95) == 3
    stray = np.concatenate([u, [[0, 0, 1.0]], [[1.0, 1.0, 1.0], [1.1, 1.0, 1.0]]])
    ds = condensation.cosine_similarity(stray)
    assert condensation.count_orientations(ds, 0.95, min_fraction=0.0) == 4  # the pair is one
    assert condensation.count_orientations(ds, 0.95, min_fraction=0.1) == 3  # unless a tenth is asked for


def test_random_unit_vectors_match_the_baseline_and_are_not_condensed():
    rng = np.random.default_rng(2)
    for dim in (2, 6):
        counts = [condensation.orientations(rng.standard_normal((50, dim)), np.zeros((50, dim))).n for _ in range(20)]
        n_rand, cover_rand = condensation.random_baseline(50, dim)
        assert abs(np.mean(counts) - n_rand) <= max(1.0, 0.25 * n_rand)
        o = condensation.orientations(rng.standard_normal((50, dim)), np.zeros((50, dim)))
        assert not condensation.is_condensed(o, (n_rand, cover_rand))
    assert condensation.random_baseline(50, 2)[0] > 5  # on the circle random directions look clustered
    assert condensation.random_baseline(50, 6)[0] < 1  # in 6-D they almost never are


def test_unmoved_features_are_not_condensed_and_grown_blocks_are():
    rng = np.random.default_rng(3)
    u0 = 1e-3 * rng.standard_normal((50, 3))
    o = condensation.orientations(u0 * 1.01, u0)
    assert o.n_grown == 0 and not condensation.is_condensed(o, condensation.random_baseline(0, 3))
    d = np.array([0.6, 0.8, 0.0])
    u = u0 + blocks([d, -d], 25, 0.01, rng)
    o = condensation.orientations(u, u0)
    assert o.n_grown == 50 and o.n == 2 and o.coverage == 1.0
    assert condensation.is_condensed(o, condensation.random_baseline(50, 3))


def test_block_order_puts_clusters_together():
    u = np.array([[1.0, 0], [0, 1.0], [1.0, 0.01], [0.01, 1.0], [1.0, -0.01]])
    order = condensation.block_order(condensation.cosine_similarity(u))
    labels = (u[order, 0] > 0.5).astype(int)
    assert np.count_nonzero(np.diff(labels)) == 1


def test_orientation_and_amplitude_for_one_dimensional_input():
    theta, amp = condensation.orientation_amplitude([1.0, 0.0, -1.0, 1.0], [0.0, 2.0, -1.0, -1.0], [2.0, 1.0, 1.0, -1.0])
    np.testing.assert_allclose(theta, [0.0, np.pi / 2, -3 * np.pi / 4, -np.pi / 4])
    np.testing.assert_allclose(amp, [2.0, 2.0, np.sqrt(2), -np.sqrt(2)])


EXPECTED_MULTIPLICITY = {"tanh": 1, "sigmoid": 1, "softplus": 1, "sin": 1, "xtanh": 2, "x2tanh": 3}


@pytest.mark.parametrize("name,p", EXPECTED_MULTIPLICITY.items())
def test_multiplicity_of_each_activation(name, p):
    fn = ACTIVATIONS[name]
    assert condensation.multiplicity(fn) == p
    # independently, by finite differences: σ(ε) − σ(0) ~ c ε^p, so the log-log slope is p
    eps = np.array([1e-3, 2e-3])
    d = np.abs([float(fn(torch.tensor(e, dtype=torch.float64)) - fn(torch.tensor(0.0, dtype=torch.float64))) for e in eps])
    assert np.log(d[1] / d[0]) / np.log(2) == pytest.approx(p, abs=0.01)


def test_every_activation_has_a_known_multiplicity_or_none():
    # piecewise-linear ones have no non-zero derivative at 0 in torch's convention
    for name in ACTIVATIONS:
        assert condensation.multiplicity(ACTIVATIONS[name]) == EXPECTED_MULTIPLICITY.get(name), name


def test_condensation_probe_on_a_two_layer_network():
    from fpdsl.models import TwoLayer
    from fpdsl.objective import Objective
    from fpdsl.probes import Condensation, StepView

    data = Sines1D(n_points=32)
    torch.manual_seed(0)
    model = TwoLayer(1, 1, width=50, activation="xtanh", init_gamma=None, init_std=1e-3)
    obj = Objective(model, data.x, data.y, MSE(), dtype=torch.float64)
    probe = Condensation(data)
    m = probe.observe(0, StepView(obj, obj.theta0))
    assert m["n_orientations"] == 0 and m["n_grown"] == 0  # nothing moved yet
    assert probe.result()[2] == "not condensed (the features have not grown)"
    # grow every neuron along one of two orientations: (1, 1) and −(1, 1)
    theta = obj.theta0.clone()
    params = obj.unflatten(theta)
    params["0.weight"][:, 0] = torch.tensor([1.0, -1.0] * 25) * torch.arange(1, 51)
    params["0.bias"][:] = params["0.weight"][:, 0]
    m = probe.observe(10, StepView(obj, theta))
    assert m["n_orientations"] == 2.0 and m["coverage"] == 1.0 and m["n_grown"] == 50
    res = probe.finish(title="xtanh test")
    assert res.metrics["multiplicity"] == 2 and res.metrics["within_2p"] == 1.0 and res.metrics["condensed"] == 1.0
    assert res.tags["verdict"] == "condensed, ≤ 2p"
    assert res.metrics["baseline_orientations"] > 4  # 50 random directions on the circle do cluster
    assert set(res.figures) == {"cosine", "theta_amplitude"}
    assert res.arrays["features_last"].shape == (50, 2)


# -- Sobolev loss (§1.6) ------------------------------------------------------------------


def test_sobolev_with_s_zero_is_the_squared_error():
    data = Sines1D(n_points=50)
    y = torch.tensor(data.y)
    h = torch.randn(4, 50, 1, dtype=torch.float64)
    torch.testing.assert_close(Sobolev(data, s=0.0)(h, y), MSE()(h, y), rtol=1e-12, atol=1e-12)


def test_sobolev_weights_frequencies():
    data = Sines1D(n_points=64, interval=[0, 2 * math.pi * 63 / 64])
    y = torch.zeros(64, 1, dtype=torch.float64)
    x = torch.tensor(data.x)
    low, high = torch.sin(x), torch.sin(10 * x)  # equal squared error, frequencies 1 and 10
    for s, ratio in ((1.0, 101 / 2), (-1.0, 2 / 101)):
        loss = Sobolev(data, s=s)
        assert float(loss(high, y) / loss(low, y)) == pytest.approx(ratio, rel=1e-9)


def test_sobolev_needs_a_uniform_one_dimensional_grid():
    from fpdsl.data import SineSum
    from fpdsl.errors import ConfigError

    with pytest.raises(ConfigError, match="loss=sobolev needs 1-D inputs on a uniform grid"):
        Sobolev(SineSum(), s=1.0)
