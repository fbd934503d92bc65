"""Measures of condensation at initial training (SCIENCE.md §2), as plain functions.

Features are the rows of U (m, d+1): u_k = (w_k, b_k), the input weights of hidden
neuron k with its bias.
"""
from __future__ import annotations

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
    """Cluster label per neuron: complete-linkage clustering on 1 − D cut at 1 − threshold,
    so every two neurons of one cluster have cosine similarity ≥ threshold. u and −u
    (similarity −1) are never in one cluster."""
    from scipy.cluster.hierarchy import fcluster

    m = similarity.shape[0]
    if m == 1:
        return np.ones(1, dtype=int)
    return fcluster(_linkage(similarity), t=1.0 - threshold, criterion="distance")


def cluster_sizes(similarity: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """Sizes of the clusters of orientation_clusters, largest first."""
    sizes = np.bincount(orientation_clusters(similarity, threshold))
    return np.sort(sizes[sizes > 0])[::-1]


def count_orientations(similarity: np.ndarray, threshold: float = 0.95, min_fraction: float = 0.05) -> int:
    """Number of condensed orientations: clusters (every pair within has cosine ≥ threshold)
    of at least 2 neurons and at least min_fraction of all neurons. A neuron aligned with
    no other is not an orientation, so unaligned features (e.g. at a random init in
    several dimensions) count 0."""
    return condensed_count(cluster_sizes(similarity, threshold), min_fraction)


def condensed_count(sizes: np.ndarray, min_fraction: float = 0.05) -> int:
    """How many of these cluster sizes hold ≥ 2 neurons and ≥ min_fraction of all of them."""
    return int(np.sum(sizes >= max(2.0, min_fraction * np.sum(sizes))))


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
    return linkage(squareform(dist, checks=False), method="complete")


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
