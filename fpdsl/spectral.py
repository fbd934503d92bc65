"""Frequency measures (docs/science.md): DFT peaks, Δ_F, filtering, projection, amplitudes."""
from __future__ import annotations

import numpy as np


def dft(values: np.ndarray) -> np.ndarray:
    """rfft along the points axis: (n,) or (n, c) → (n//2 + 1,) or (n//2 + 1, c), ŷ_k = Σ_j y_j e^{-2πi jk/n}."""
    return np.fft.rfft(values, axis=0)


def dft_rows(n: int, ks: np.ndarray) -> np.ndarray:
    """Rows ks of the n-point DFT matrix, (K, n): dft_rows(n, ks) @ values == dft(values)[ks].

    A probe that needs a few coefficients at every step builds this once."""
    return np.exp(-2j * np.pi * np.outer(ks, np.arange(n)) / n)


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
    return delta_at(out_coeffs[ks], target_coeffs[ks], variant)


def delta_at(h: np.ndarray, y: np.ndarray, variant: str = "complex") -> np.ndarray:
    """delta_f given the coefficients at the peaks already: ĥ_k and ŷ_k, (K,) or (K, c)."""
    if variant == "complex":
        return magnitude(h - y) / magnitude(y)
    if variant == "magnitude":
        return np.abs(magnitude(h) - magnitude(y)) / (magnitude(y) + 1e-5)
    raise ValueError(f"unknown Δ_F variant {variant!r}; use 'complex' or 'magnitude'")


# -- filtering method  ------------------------------------------------


def squared_distances(x: np.ndarray) -> np.ndarray:
    """|x_i − x_j|², (n, n)."""
    from scipy.spatial.distance import cdist

    return cdist(x, x, "sqeuclidean")


def gaussian_lowpass(sq_dist: np.ndarray, delta: float) -> np.ndarray:
    """Row-normalised Gaussian kernel G^δ_ij / Σ_j G^δ_ij with G^δ = exp(−|x_i − x_j|² / (2δ)).

    Each row is shifted by its smallest distance before exponentiating (that factor
    cancels in the normalisation), so no row underflows to all zeros for a small δ.
    """
    d = sq_dist - sq_dist.min(axis=1, keepdims=True)
    g = np.exp(-d / (2.0 * delta))
    return g / g.sum(axis=1, keepdims=True)


def lowpass_split(kernel: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) = (K v, v − K v) for a row-normalised kernel K (n, n) and values (n, c)."""
    low = kernel @ values
    return low, values - low


def relative_error(diff_norm: float, ref_norm: float, scale: float = 1.0) -> float:
    """‖h − y‖ / ‖y‖; a reference below 1e-12·scale counts as zero: 0 when the difference
    is as small, +inf otherwise (the target has no such part, the output does)."""
    tiny = 1e-12 * scale
    if ref_norm <= tiny:
        return 0.0 if diff_norm <= tiny else float("inf")
    return float(diff_norm / ref_norm)


def filtering_errors(kernel: np.ndarray, target: np.ndarray, output: np.ndarray) -> tuple[float, float]:
    """(e_low, e_high) = (‖y^low − h^low‖ / ‖y^low‖, ‖y^high − h^high‖ / ‖y^high‖), norms over
    samples and output components."""
    y_low, y_high = lowpass_split(kernel, target)
    r_low, r_high = lowpass_split(kernel, target - output)
    scale = float(np.linalg.norm(target))
    return (
        relative_error(float(np.linalg.norm(r_low)), float(np.linalg.norm(y_low)), scale),
        relative_error(float(np.linalg.norm(r_high)), float(np.linalg.norm(y_high)), scale),
    )


def default_deltas(sq_dist: np.ndarray) -> np.ndarray:
    """δ values scaled to the data: (0.1, 0.2, 0.5, 1, 2) × the median squared distance
    between distinct inputs."""
    iu = np.triu_indices_from(sq_dist, k=1)
    med = float(np.median(sq_dist[iu])) if iu[0].size else 1.0
    return np.array([0.1, 0.2, 0.5, 1.0, 2.0]) * (med if med > 0 else 1.0)


# -- projection method  -----------------------------------------------


def principal_direction(x: np.ndarray) -> np.ndarray:
    """Unit first principal component of x (n, d); sign fixed so its largest entry is positive."""
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    p = vt[0]
    return p if p[np.argmax(np.abs(p))] >= 0 else -p


def nudft_matrix(t: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """E (K, n) with E_kj = exp(−2πi f_k t_j) / n, so that E @ y = F(f_k) = (1/n) Σ_j y_j e^{−2πi f_k t_j}."""
    return np.exp(-2j * np.pi * np.outer(freqs, t)) / t.shape[0]


def frequency_grid(t: np.ndarray, n_freqs: int, step: float | None = None) -> np.ndarray:
    """f_m = m · step, m = 0 .. min(n_freqs, n/2 + 1) − 1 (n points resolve no more).

    step defaults to 1 / (range of t · n/(n − 1)): the DFT's bin spacing when t is a
    uniform grid of n points (the range plus one spacing is one period)."""
    n = t.shape[0]
    if step is None:
        span = float(np.ptp(t)) * n / max(n - 1, 1)
        step = 1.0 / span if span > 0 else 1.0
    return step * np.arange(min(n_freqs, n // 2 + 1))


def real_pair(matrix: np.ndarray) -> np.ndarray:
    """A complex operator (K, n) as one real (2K, n) array [Re; Im]: a real matrix product
    with real values is far cheaper than numpy's complex one, which is slow to share the
    cores with torch's thread pool."""
    return np.ascontiguousarray(np.concatenate([matrix.real, matrix.imag]))


def apply_pair(pair: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(Re M) v + i (Im M) v for pair = real_pair(M) and real values (n,) or (n, c)."""
    out = pair @ values
    k = pair.shape[0] // 2
    return out[:k] + 1j * out[k:]


# -- spectral bias amplitudes  ----------------------------------------


def sine_amplitude_matrix(x: np.ndarray, omegas: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """M (K, n) with M_ij = 2 e^{−i ω_i x_j} / (n |A_i|), so |M @ h| is the normalised amplitude."""
    x = np.asarray(x, dtype=float).reshape(-1)
    a = np.abs(np.asarray(amplitudes, dtype=float))
    return 2.0 * np.exp(-1j * np.outer(omegas, x)) / (x.size * a[:, None])


def sine_amplitudes(values: np.ndarray, x: np.ndarray, omegas: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Normalised amplitude 2|ĥ(ω_i)| / (n A_i), ĥ(ω) = Σ_j h_j e^{−i ω x_j}, for 1-D inputs x (n,).

    On x_j = j/n with ω_i = 2π k_i this is Rahaman et al.'s 2|ĥ_{k_i}| / (n A_i) from the DFT.
    values (n,) or (n, c): output components are summed in quadrature.
    """
    return magnitude(sine_amplitude_matrix(x, omegas, amplitudes) @ values)
