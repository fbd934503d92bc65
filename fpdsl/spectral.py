"""Frequency measures of SCIENCE.md §1.1–1.2: DFT peaks, Δ_F, and the F-Principle order."""
from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import spearmanr


def dft(values: np.ndarray) -> np.ndarray:
    """rfft along the points axis: (n,) or (n, c) → (n//2 + 1,) or (n//2 + 1, c), ŷ_k = Σ_j y_j e^{-2πi jk/n}."""
    return np.fft.rfft(values, axis=0)


def magnitude(coeffs: np.ndarray) -> np.ndarray:
    """|ŷ_k|, summed in quadrature over output components."""
    return np.abs(coeffs) if coeffs.ndim == 1 else np.sqrt((np.abs(coeffs) ** 2).sum(axis=1))


def peaks(target_coeffs: np.ndarray, n_coeffs: int = 40, min_rel: float = 0.05) -> np.ndarray:
    """Indices k ≥ 1 of local maxima of |ŷ_k| among the first n_coeffs, ignoring peaks below
    min_rel × the largest of them."""
    a = magnitude(target_coeffs)[:n_coeffs]
    idx = 1 + np.flatnonzero((a[1:-1] > a[:-2]) & (a[1:-1] > a[2:]))
    if idx.size:
        idx = idx[a[idx] >= min_rel * a[idx].max()]
    return idx


def delta_f(out_coeffs: np.ndarray, target_coeffs: np.ndarray, ks: np.ndarray, variant: str = "complex") -> np.ndarray:
    """Relative error at peaks ks.

    complex (papers): |ĥ_k − ŷ_k| / |ŷ_k|; magnitude (authors' scripts): ||ĥ_k| − |ŷ_k|| / (|ŷ_k| + 1e-5).
    """
    h, y = out_coeffs[ks], target_coeffs[ks]
    if variant == "complex":
        return magnitude(h - y) / magnitude(y)
    if variant == "magnitude":
        return np.abs(magnitude(h) - magnitude(y)) / (magnitude(y) + 1e-5)
    raise ValueError(f"unknown Δ_F variant {variant!r}; use 'complex' or 'magnitude'")


def converge_steps(steps: np.ndarray, deltas: np.ndarray, eps: float = 0.1) -> np.ndarray:
    """First recorded step at which Δ(k) ≤ eps, per column of deltas (T, K); +inf if never."""
    hit = deltas <= eps
    first = np.where(hit.any(axis=0), np.argmax(hit, axis=0), -1)
    return np.where(first >= 0, np.asarray(steps, dtype=float)[np.maximum(first, 0)], np.inf)


def fp_order(freqs: np.ndarray, conv: np.ndarray) -> tuple[float, bool, str]:
    """F-Principle order of converge steps against peak frequency (SCIENCE.md §1.2).

    Returns (score, holds, verdict). score: Spearman correlation (+inf ranks last);
    NaN when no peak converged or the ranks carry no order (all tied).
    holds: converge steps non-decreasing with frequency.
    verdict: 'holds', 'reversed' (score < 0), 'partial', or 'undetermined'.
    """
    freqs, conv = np.asarray(freqs, dtype=float), np.asarray(conv, dtype=float)
    order = np.argsort(freqs, kind="stable")
    c = conv[order]
    if len(c) < 2 or not np.isfinite(c).any():
        return float("nan"), False, "undetermined"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        score = float(spearmanr(freqs[order], c).statistic)
    holds = bool(np.all(c[1:] >= c[:-1]))
    if np.isnan(score):
        return score, holds, "undetermined"
    if holds:
        return score, True, "holds"
    return score, False, "reversed" if score < 0 else "partial"
