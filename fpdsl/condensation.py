"""Measures of condensation at initial training (docs/science.md, "Condensation").

Features are the rows of U (m, d+1): u_k = (w_k, b_k), the input weights of hidden
neuron k with its bias. An orientation is a cluster of unit features found by average
linkage on the distance 1 − cos, cut at 1 − threshold: a cluster holds neurons whose
cosine similarity is, on average, at least threshold, and one orientation is never split
into sub-clusters of near-identical directions (complete linkage did that). u and −u
(distance 2) are different orientations. Only neurons whose feature has grown from its
initial value are counted (grown: ‖u_k − u_k(0)‖ ≥ min_growth · ‖u_k(0)‖), and every count
is compared with the count of as many random unit vectors in the same dimension.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


def cosine_similarity(features: np.ndarray) -> np.ndarray:
    """D_kl = u_k·u_l / (|u_k| |u_l|), (m, m). A zero feature has similarity 0 with every
    other one (and 1 with itself), so it never joins an orientation."""
    u = np.asarray(features, dtype=float)
    norms = np.linalg.norm(u, axis=1)
    unit = np.divide(u, norms[:, None], out=np.zeros_like(u), where=norms[:, None] > 0)
    d = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(d, 1.0)
    return d


def orientation_clusters(similarity: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """Cluster label per neuron (average linkage on 1 − D, cut at 1 − threshold)."""
    from scipy.cluster.hierarchy import fcluster

    if similarity.shape[0] == 1:
        return np.ones(1, dtype=int)
    return fcluster(_linkage(similarity), t=1.0 - threshold, criterion="distance")


def cluster_sizes(similarity: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """Sizes of the clusters of orientation_clusters, largest first."""
    sizes = np.bincount(orientation_clusters(similarity, threshold))
    return np.sort(sizes[sizes > 0])[::-1]


def condensed_sizes(sizes: np.ndarray, min_fraction: float = 0.05) -> np.ndarray:
    """The clusters that count as orientations: ≥ 2 neurons and ≥ min_fraction of them all."""
    return sizes[sizes >= max(2.0, min_fraction * np.sum(sizes))]


def count_orientations(similarity: np.ndarray, threshold: float = 0.95, min_fraction: float = 0.05) -> int:
    """Number of condensed orientations among these neurons (a neuron aligned with no other
    is not an orientation, so unaligned features count 0)."""
    return int(condensed_sizes(cluster_sizes(similarity, threshold), min_fraction).size)


@dataclass
class Orientations:
    n: int  # condensed orientations among the grown neurons
    coverage: float  # fraction of the grown neurons inside them
    n_grown: int
    grown: np.ndarray  # (m,) bool
    largest_share: float  # the largest orientation's share of the grown neurons


def orientations(features, initial, threshold=0.95, min_fraction=0.05, min_growth=1.0) -> Orientations:
    u, u0 = np.asarray(features, dtype=float), np.asarray(initial, dtype=float)
    grown = np.linalg.norm(u - u0, axis=1) >= min_growth * np.linalg.norm(u0, axis=1)
    g = int(grown.sum())
    if g < 2:
        return Orientations(0, 0.0, g, grown, 0.0)
    sizes = cluster_sizes(cosine_similarity(u[grown]), threshold)
    kept = condensed_sizes(sizes, min_fraction)
    return Orientations(int(kept.size), float(kept.sum() / g), g, grown, float(sizes[0] / g))


@lru_cache(maxsize=64)
def random_baseline(m: int, dim: int, threshold: float = 0.95, min_fraction: float = 0.05, draws: int = 20):
    """(mean count, mean coverage) of m random unit vectors in dim dimensions (uniform on the
    sphere), over draws with a fixed seed: what the rule reports when nothing condensed."""
    if m < 2:
        return 0.0, 0.0
    rng = np.random.default_rng(12345)
    counts, covers = [], []
    for _ in range(draws):
        sizes = cluster_sizes(cosine_similarity(rng.standard_normal((m, dim))), threshold)
        kept = condensed_sizes(sizes, min_fraction)
        counts.append(kept.size)
        covers.append(kept.sum() / m)
    return float(np.mean(counts)), float(np.mean(covers))


def is_condensed(o: Orientations, baseline: tuple[float, float], min_coverage: float = 0.5) -> bool:
    """Condensed: the orientations hold at least min_coverage of the grown neurons, and they
    are fewer than half of what random vectors give (or random vectors give no orientations
    covering that many)."""
    n_rand, cover_rand = baseline
    return o.n_grown >= 2 and o.n >= 1 and o.coverage >= min_coverage and (cover_rand < min_coverage or o.n <= n_rand / 2)


def block_order(similarity: np.ndarray) -> np.ndarray:
    """An ordering of the neurons that puts each cluster in one block (dendrogram leaf order)."""
    from scipy.cluster.hierarchy import leaves_list

    if similarity.shape[0] < 2:
        return np.arange(similarity.shape[0])
    return leaves_list(_linkage(similarity))


def _linkage(similarity: np.ndarray):
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    dist = np.clip(1.0 - similarity, 0.0, 2.0)
    dist = 0.5 * (dist + dist.T)
    np.fill_diagonal(dist, 0.0)
    return linkage(squareform(dist, checks=False), method="average")


def orientation_amplitude(w: np.ndarray, b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For 1-D input: θ_k = sign(b_k)·arccos(w_k / √(w_k² + b_k²)), A_k = a_k √(w_k² + b_k²)."""
    w, b, a = (np.asarray(v, dtype=float).reshape(-1) for v in (w, b, a))
    r = np.hypot(w, b)
    cos = np.divide(w, r, out=np.ones_like(w), where=r > 0)
    return np.sign(b) * np.arccos(np.clip(cos, -1.0, 1.0)), a * r


def multiplicity(fn, max_order: int = 8, tol: float = 1e-8) -> int | None:
    """Smallest k ≥ 1 with σ^(k)(0) ≠ 0 (|σ^(k)(0)| > tol), by repeated autograd in float64;
    None when every derivative up to max_order vanishes (e.g. ReLU, whose derivatives at
    the kink are taken as 0)."""
    import torch

    x = torch.zeros((), dtype=torch.float64, requires_grad=True)
    y = fn(x)
    for k in range(1, max_order + 1):
        if not y.requires_grad:
            return None
        (y,) = torch.autograd.grad(y, x, create_graph=True)
        if abs(float(y.detach())) > tol:
            return k
    return None
