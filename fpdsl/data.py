"""Datasets: each returns inputs x (n, d) and targets y (n, c) as float64 numpy arrays.

`uniform` says whether x is a uniform 1-D grid, which the DFT-based probes and the
Sobolev loss need.
"""
from __future__ import annotations

import math
from typing import Annotated, Optional, Sequence

import numpy as np
from pydantic import Field

from fpdsl.errors import ConfigError


class Sines1D:
    """y(x) = Σ_i A_i sin(f_i x + φ_i) on a uniform grid (endpoints included), plus optional noise."""

    def __init__(
        self,
        frequencies: Annotated[list[float], Field(min_length=1)] = (1.0, 3.0, 5.0),
        amplitudes: Optional[list[float]] = None,
        phases: Optional[list[float]] = None,
        interval: Annotated[list[float], Field(min_length=2, max_length=2)] = (-math.pi, math.pi),
        n_points: Annotated[int, Field(ge=2)] = 201,
        noise: Annotated[float, Field(ge=0)] = 0.0,
        seed: int = 0,
    ):
        f = np.asarray(frequencies, dtype=float)
        a = np.ones_like(f) if amplitudes is None else np.asarray(amplitudes, dtype=float)
        p = np.zeros_like(f) if phases is None else np.asarray(phases, dtype=float)
        for key, arr in (("amplitudes", a), ("phases", p)):
            if arr.shape != f.shape:
                raise ConfigError(
                    f"dataset.{key} has {arr.size} values but dataset.frequencies has {f.size}; give one per frequency"
                )
        lo, hi = interval
        if not hi > lo:
            raise ConfigError(f"dataset.interval must be [low, high] with high > low, got {list(interval)}")
        x = np.linspace(lo, hi, n_points)
        y = (a[:, None] * np.sin(f[:, None] * x[None, :] + p[:, None])).sum(0)
        if noise > 0:
            y = y + noise * np.random.default_rng(seed).standard_normal(n_points)
        self.x = x[:, None]
        self.y = y[:, None]
        self.uniform = True
