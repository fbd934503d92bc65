"""Δ_F, peaks and the F-Principle order against cases computed by hand."""
import math

import numpy as np
import pytest

from fpdsl import spectral, verdict

N = 128
X = 2 * np.pi * np.arange(N) / N  # periodic grid: no leakage, exact bins


def test_pure_sine_has_one_peak_at_its_bin():
    y = np.sin(5 * X)
    c = spectral.dft(y)
    assert abs(abs(c[5]) - N / 2) < 1e-9  # |ŷ_5| = n/2 for a unit sine
    np.testing.assert_array_equal(spectral.peaks(c), [5])


def test_sum_of_sines_peaks_and_small_peaks_ignored():
    y = np.sin(X) + 2 * np.sin(3 * X) + 0.01 * np.sin(7 * X)
    c = spectral.dft(y)
    np.testing.assert_array_equal(spectral.peaks(c, min_rel=0.05), [1, 3])
    np.testing.assert_array_equal(spectral.peaks(c, min_rel=0.001), [1, 3, 7])


def test_peaks_only_among_first_n_coeffs():
    y = np.sin(X) + np.sin(50 * X)
    np.testing.assert_array_equal(spectral.peaks(spectral.dft(y), n_coeffs=40), [1])


def test_dft_rows_give_the_dft_at_those_frequencies():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(N, 2))
    ks = np.array([1, 3, 17, N // 2])
    np.testing.assert_allclose(spectral.dft_rows(N, ks) @ values, spectral.dft(values)[ks], atol=1e-9)


def test_delta_zero_for_exact_fit_and_one_for_zero_output():
    y = np.sin(X) + np.sin(3 * X)
    c = spectral.dft(y)
    ks = spectral.peaks(c)
    np.testing.assert_allclose(spectral.delta_f(c, c, ks), 0, atol=1e-12)
    np.testing.assert_allclose(spectral.delta_f(spectral.dft(np.zeros(N)), c, ks), 1, atol=1e-12)


def test_half_amplitude_gives_half_error():
    y = np.sin(3 * X)
    c = spectral.dft(y)
    d = spectral.delta_f(spectral.dft(0.5 * y), c, np.array([3]))
    assert d[0] == pytest.approx(0.5)


def test_phase_shift_scores_zero_in_magnitude_variant_but_not_in_complex():
    y = np.sin(3 * X)
    h = np.sin(3 * X + np.pi / 2)  # same magnitude, quarter-period shift
    cy, ch = spectral.dft(y), spectral.dft(h)
    ks = np.array([3])
    assert spectral.delta_f(ch, cy, ks, "magnitude")[0] == pytest.approx(0, abs=1e-4)
    # |e^{iπ/2} − 1| = √2
    assert spectral.delta_f(ch, cy, ks, "complex")[0] == pytest.approx(math.sqrt(2))


def test_multi_output_magnitude_in_quadrature():
    y = np.stack([np.sin(X), np.sin(X)], axis=1)
    c = spectral.dft(y)
    assert spectral.magnitude(c)[1] == pytest.approx(math.sqrt(2) * N / 2)


def test_converge_steps_first_hit_and_never():
    steps = np.array([0, 10, 20, 30])
    deltas = np.array([[1.0, 1.0, 1.0], [0.05, 0.9, 1.0], [0.01, 0.1, 1.0], [0.0, 0.5, 0.9]])
    conv = verdict.converge_steps(steps, deltas, eps=0.1)
    np.testing.assert_array_equal(conv, [10, 20, np.nan])


def history(conv, steps=range(0, 101, 10), start=1.0):
    """Δ histories (T, K) that fall from start to 0.01 at each converge step (None: never below 0.5)."""
    steps = np.asarray(list(steps))
    out = np.full((len(steps), len(conv)), start)
    for k, c in enumerate(conv):
        if c is None:
            out[:, k] = np.linspace(start, 0.6, len(steps))
        else:
            out[steps >= c, k] = 0.01
    return steps, out


@pytest.mark.parametrize(
    "conv, verdict_, bias",
    [
        ([10, 20, 30], "holds", "not removed"),  # low to high
        ([10, 20, None], "holds", "not removed"),  # two converged in order, the highest never
        ([10, None, None], "undetermined", "not removed"),  # one converged peak is no evidence
        ([None, None, None], "not fitted", "not removed"),
        ([30, 20, 10], "reversed", "not removed"),
        ([10, 30, 20], "partial", "not removed"),
        ([None, 10, 20], "reversed", "not removed"),  # the lowest never converged: order −0.5
        ([20, 20, 20], "undetermined", "removed"),  # all at once: no order, and the bias is gone
        ([20, 20, 30], "holds", "removed"),  # within a factor 2 of each other
    ],
)
def test_verdicts_of_constructed_histories(conv, verdict_, bias):
    steps, deltas = history(conv)
    j = verdict.judge([1, 3, 5], steps, deltas, eps=0.1)
    assert (j.verdict, j.bias) == (verdict_, bias)
    assert j.n_converged == sum(c is not None for c in conv)
    if j.n_converged < 2:
        assert math.isnan(j.order)
    if verdict_ == "reversed":
        assert j.order < 0


def test_threshold_free_orders_see_low_frequencies_move_first_without_any_converging():
    steps = np.arange(0, 101, 10)
    # nothing reaches ε = 0.1, but k=1 falls fastest and k=5 slowest
    deltas = np.stack([np.exp(-steps / 20), np.exp(-steps / 60), np.exp(-steps / 200)], axis=1) * 0.9 + 0.11
    j = verdict.judge([1, 3, 5], steps, deltas, eps=0.1, eps_list=(0.5,))
    assert j.verdict == "not fitted" and math.isnan(j.order)
    assert j.order_mean_log == pytest.approx(1.0) and j.order_halving == pytest.approx(1.0)
    assert j.by_eps[0.5] == pytest.approx(1.0)


def test_verdict_sorts_by_frequency_and_logs_never_converged_as_nan():
    steps, deltas = history([30, 10, 20])
    j = verdict.judge([5, 1, 3], steps, deltas)
    assert j.verdict == "holds" and j.order == pytest.approx(1.0)
    steps, deltas = history([10, None])
    m = verdict.metrics_of(verdict.judge([1, 3], steps, deltas), ["k1", "k3"])
    assert m["converge_step/k1"] == 10 and math.isnan(m["converge_step/k3"])
    assert m["converged/k1"] == 1 and m["converged/k3"] == 0
    assert all(not (isinstance(v, float) and math.isinf(v)) for v in m.values())
