"""Δ_F, peaks and the F-Principle order against cases computed by hand."""
import math

import numpy as np
import pytest

from fpdsl import spectral

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
    conv = spectral.converge_steps(steps, deltas, eps=0.1)
    np.testing.assert_array_equal(conv, [10, 20, np.inf])


@pytest.mark.parametrize(
    "conv, score, holds, verdict",
    [
        ([10, 20, 30], 1.0, True, "holds"),
        ([10, 20, np.inf], 1.0, True, "holds"),
        ([30, 20, 10], -1.0, False, "reversed"),
        ([np.inf, np.inf, 10], None, False, "reversed"),
        ([10, 30, 20], 0.5, False, "partial"),
        ([np.inf, np.inf, np.inf], math.nan, False, "undetermined"),
        ([10, 10, 10], math.nan, True, "undetermined"),
        ([10, np.inf, np.inf], None, True, "holds"),
    ],
)
def test_fp_order(conv, score, holds, verdict):
    s, h, v = spectral.fp_order(np.array([1, 3, 5]), np.array(conv, dtype=float))
    assert (v, h) == (verdict, holds)
    if score is not None:
        assert (math.isnan(s) and math.isnan(score)) or s == pytest.approx(score)
    if verdict == "reversed":
        assert s < 0


def test_fp_order_sorts_by_frequency():
    s, h, v = spectral.fp_order(np.array([5, 1, 3]), np.array([30.0, 10.0, 20.0]))
    assert (s, h, v) == (pytest.approx(1.0), True, "holds")
