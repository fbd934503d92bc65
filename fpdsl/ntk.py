"""The empirical neural tangent kernel and the linearised prediction of training (docs/science.md, "NTK").

K = J Jᵀ with J = ∂h/∂θ, the Jacobian of the network's outputs on the training inputs
(N = points × outputs rows) with respect to the flat parameter vector θ (P columns),
computed with torch.func.jacrev. J is built in row blocks of at most `chunk_bytes`, and K
block by block from two row blocks at a time, so memory stays bounded by the blocks and
K itself (N², N capped by the probe) whatever P is.

Linearised around θ_0, a quadratic loss L(h) with Hessian H (N × N, in output space)
trained by gradient descent with step η moves the training residual r = h − y as

    r_{t+1} = (I − η K_0 H) r_t          (exact for a linear model; first order otherwise)

and gradient flow as r(τ) = exp(−K_0 H τ) r(0) at time τ = η t. For the mean squared
error over N values H = (2/N) I. Both are evaluated in closed form through the symmetric
matrix S = η H^{1/2} K_0 H^{1/2} = V diag(s) Vᵀ:
r_t = H^{−1/2} V diag((1 − s)^t) Vᵀ H^{1/2} r_0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def jacobian_rows(forward, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∂ forward(θ, x) / ∂θ as (rows of x × outputs, P), float64."""
    from torch.func import jacrev

    jac = jacrev(lambda t: forward(t, x))(theta.detach())  # (n, c, P)
    return jac.reshape(-1, theta.numel()).double()


def kernel(forward, theta: torch.Tensor, x: torch.Tensor, chunk_bytes: int = 64 << 20) -> np.ndarray:
    """The empirical NTK K = J Jᵀ (N × N, float64) of forward(θ, x) on the rows of x.

    Rows of x are taken in blocks whose Jacobian fits chunk_bytes (float64); with more than
    one block, K is filled block by block, each pair of blocks' Jacobians recomputed as
    needed, so at most two blocks are held at once."""
    n = x.shape[0]
    with torch.no_grad():
        c = forward(theta.detach(), x[:1]).shape[-1]
    per_point = c * theta.numel() * 8
    rows = max(1, min(n, chunk_bytes // max(per_point, 1)))
    starts = list(range(0, n, rows))
    if len(starts) == 1:
        j = jacobian_rows(forward, theta, x)
        return (j @ j.T).numpy()
    k = np.empty((n * c, n * c))
    for a, sa in enumerate(starts):
        ja = jacobian_rows(forward, theta, x[sa : sa + rows])
        for sb in starts[a:]:
            jb = ja if sb == sa else jacobian_rows(forward, theta, x[sb : sb + rows])
            block = (ja @ jb.T).numpy()
            k[sa * c : sa * c + block.shape[0], sb * c : sb * c + block.shape[1]] = block
            k[sb * c : sb * c + block.shape[1], sa * c : sa * c + block.shape[0]] = block.T
    return k


def loss_hessian(loss_fn, h: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """∂²L/∂h² at h (N × N, float64): the loss's curvature in output space (constant for the
    quadratic losses fpdsl has: mse, sobolev)."""
    from torch.func import hessian

    shape = h.shape
    hh = hessian(lambda v: loss_fn(v.reshape(shape), y.double()))(h.double().reshape(-1))
    return hh.detach().numpy()


@dataclass
class Spectrum:
    eigenvalues: np.ndarray  # all of them, largest first
    eigenvectors: np.ndarray  # (N, m): the leading m, as columns
    condition: float  # λ_max / λ_min (λ_min floored at λ_max · 1e-16)
    effective_rank: float  # exp of the entropy of λ / Σλ


def spectrum(k: np.ndarray, m: int) -> Spectrum:
    w, v = np.linalg.eigh((k + k.T) / 2)
    w, v = w[::-1], v[:, ::-1]
    top = max(float(w[0]), 0.0)
    floor = top * 1e-16 if top > 0 else 1e-300
    lam = np.clip(w, 0.0, None)
    p = lam / lam.sum() if lam.sum() > 0 else np.full_like(lam, 1.0 / len(lam))
    nz = p[p > 0]
    return Spectrum(eigenvalues=w, eigenvectors=v[:, :m], condition=top / max(float(w[-1]), floor),
                    effective_rank=float(np.exp(-(nz * np.log(nz)).sum())))


def drift(k: np.ndarray, k0: np.ndarray) -> float:
    """‖K − K_0‖_F / ‖K_0‖_F: 0 while training stays lazy, of order 1 when the kernel is learnt."""
    ref = np.linalg.norm(k0)
    return float(np.linalg.norm(k - k0) / ref) if ref > 0 else math.nan


def dominant_frequency(vectors: np.ndarray, n_points: int, c: int = 1) -> np.ndarray:
    """Per column (a function on a uniform 1-D grid, n_points × c values): the k ≥ 0 of its
    largest DFT magnitude (outputs summed in quadrature)."""
    v = vectors.reshape(n_points, c, -1)
    power = (np.abs(np.fft.rfft(v, axis=0)) ** 2).sum(axis=1)  # (n//2 + 1, m)
    return power.argmax(axis=0)


class Linearisation:
    """The network linearised at θ_0 under gradient descent on a quadratic loss: the eigenpairs of
    S_1 = H^{1/2} K_0 H^{1/2}, found once; S = η S_1 for any step η."""

    def __init__(self, k0: np.ndarray, hess: np.ndarray):
        hw, hu = np.linalg.eigh((hess + hess.T) / 2)
        if hw.min() <= 1e-12 * max(hw.max(), 1e-300):
            raise ValueError("the loss's Hessian in output space is singular; the closed form needs it positive definite")
        self.root = (hu * np.sqrt(hw)) @ hu.T
        self.inv_root = (hu / np.sqrt(hw)) @ hu.T
        self.s, self.v = np.linalg.eigh(self.root @ ((k0 + k0.T) / 2) @ self.root)

    @property
    def stable_lr(self) -> float:
        """1 / λ_max(K_0 H): the largest gradient-descent step that moves the top mode without overshoot."""
        top = float(self.s[-1])
        return 1.0 / top if top > 0 else math.nan

    def residuals(self, r0: np.ndarray, lr: float, steps, flow: bool = False) -> np.ndarray:
        """r_t (len(steps), N) from r0 by gradient descent with step lr (flow=True: gradient
        flow at time lr · t)."""
        s = lr * self.s
        z0 = self.v.T @ (self.root @ r0)
        t = np.asarray(steps, dtype=float)[:, None]
        if flow:
            factors = np.exp(-s[None, :] * t)
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # a step past 2/λ diverges: inf is the answer
                factors = (1 - s)[None, :] ** t
        return (factors * z0[None, :]) @ self.v.T @ self.inv_root.T


def predict(k0: np.ndarray, hess: np.ndarray, r0: np.ndarray, lr: float, steps, flow: bool = False) -> np.ndarray:
    """Residuals r_t (len(steps), N) of the linearised model trained from r0 by gradient
    descent with step lr (flow=True: gradient flow at time lr · t)."""
    return Linearisation(k0, hess).residuals(r0, lr, steps, flow)


def agreement(predicted: np.ndarray, measured: np.ndarray) -> float:
    """1 − the mean |Δ_pred − Δ_meas| over peaks and observations, both clipped to [0, 1]."""
    p = np.clip(np.nan_to_num(np.asarray(predicted, dtype=float), nan=1.0, posinf=1.0), 0.0, 1.0)
    m = np.clip(np.nan_to_num(np.asarray(measured, dtype=float), nan=1.0, posinf=1.0), 0.0, 1.0)
    return float(1.0 - np.abs(p - m).mean()) if p.size else math.nan
