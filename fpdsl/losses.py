"""Losses over the last two axes (points, outputs), so a population (S, n, c) gives (S,)."""
from __future__ import annotations

import torch


class MSE:
    """Mean squared error over points and output components."""

    def __call__(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (h - y).square().mean(dim=(-2, -1))
