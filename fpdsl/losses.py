"""Losses over the last two axes (points, outputs), so a population (S, n, c) gives (S,)."""
from __future__ import annotations

import torch

from fpdsl.errors import ConfigError


class MSE:
    """Mean squared error over points and output components."""

    def __call__(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = h - y
        return (d.square() if d.requires_grad else d.square_()).mean(dim=(-2, -1))


class Sobolev:
    """Squared error weighted per frequency: L = Σ_k (1 + k²)^s |ĥ_k − ŷ_k|² / (n² c).

    ĥ_k, ŷ_k: the DFT over the n points of a uniform 1-D grid (k = 0 .. n−1, k and n − k
    being the same frequency |k| ≤ n/2), summed over the c outputs. The factor 1/(n² c)
    makes s = 0 equal to mse exactly (Parseval); s > 0 weights high frequencies up,
    s < 0 down.
    """

    def __init__(self, data=None, s: float = 0.0):  # data: given by the runner
        if data is None or not getattr(data, "uniform", False) or data.x.shape[1] != 1:
            raise ConfigError(
                "loss=sobolev needs 1-D inputs on a uniform grid (its frequencies are the grid's DFT); "
                "this dataset is not one: use loss=mse or a uniform 1-D dataset (sines1d, rahaman)"
            )
        self.s = float(s)
        n, c = data.y.shape
        k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)  # signed integer frequencies
        self.weights = (1 + k.square()).pow(self.s) / (n * n * c)

    def __call__(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        err = torch.fft.fft(h - y, dim=-2)
        w = self.weights.to(device=err.device, dtype=h.dtype)
        return (err.real.square() + err.imag.square()).sum(dim=-1).mul(w).sum(dim=-1)
