"""projection: Δ_F along one direction of any-dimensional data (docs/science.md)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import numpy as np
from pydantic import Field

from fpdsl import spectral, verdict
from fpdsl.errors import ConfigError
from fpdsl.probes.spectrum import Eps, EpsList


class Projection:
    """Project the inputs on a unit direction p (default: the first principal component),
    t_j = p·x_j, and take the non-uniform DFT F(f) = (1/n) Σ_j y_j e^{−2πi f t_j} on the grid
    f_m = m · freq_step, m < min(n_freqs, n/2 + 1) (freq_step default: the DFT's bin spacing
    were t a uniform grid, 1 / (range of t · n/(n − 1))). Peaks of the
    target's |F| (as in spectrum), Δ_F there, and verdicts by peak frequency (fpdsl.verdict).
    The NUDFT matrix is built once; each observation is one matrix product.
    """

    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        per_decade: Optional[Annotated[int, Field(ge=1, le=1000)]] = None,
        direction: Optional[Annotated[list[float], Field(min_length=1)]] = None,
        n_freqs: Annotated[int, Field(ge=3)] = 40,
        freq_step: Optional[Annotated[float, Field(gt=0)]] = None,
        min_rel: Annotated[float, Field(ge=0, le=1)] = 0.05,
        variant: Literal["complex", "magnitude"] = "complex",
        eps: Eps = 0.1,
        eps_list: EpsList = (0.05, 0.2, 0.5),
        removed_factor: Annotated[float, Field(ge=1)] = 2.0,
        name: str = "projection",
    ):
        x = np.asarray(data.x, dtype=float)
        if direction is None:
            p = spectral.principal_direction(x)
        else:
            p = np.asarray(direction, dtype=float)
            if p.shape != (x.shape[1],):
                raise ConfigError(
                    f"probe.{name}.direction has {p.size} entries but the inputs have {x.shape[1]} dimensions; "
                    "give one per input dimension, or null for the first principal component"
                )
            if not np.linalg.norm(p) > 0:
                raise ConfigError(f"probe.{name}.direction is the zero vector; give a nonzero direction")
            p = p / np.linalg.norm(p)
        self.every, self.per_decade, self.variant, self.name = every, per_decade, variant, name
        self.eps, self.eps_list, self.removed_factor = eps, tuple(eps_list), removed_factor
        self.direction = p
        self.t = x @ p
        self.freqs = spectral.frequency_grid(self.t, n_freqs, freq_step)
        self.matrix = spectral.real_pair(spectral.nudft_matrix(self.t, self.freqs))
        self.target = spectral.apply_pair(self.matrix, np.asarray(data.y, dtype=float))
        self.ks = spectral.peaks(self.target, self.freqs.size, min_rel)
        if self.ks.size == 0:
            raise ConfigError(
                f"probe.{name}: the target's projected spectrum has no peak among the first {n_freqs} frequencies; "
                f"raise probe.{name}.n_freqs or change probe.{name}.freq_step"
            )
        self.steps: list[int] = []
        self.deltas: list[np.ndarray] = []
        self.deltas_other: list[np.ndarray] = []

    def observe(self, step, view) -> dict:
        out = spectral.apply_pair(self.matrix, view.output)
        d = spectral.delta_f(out, self.target, self.ks, self.variant)
        other = "magnitude" if self.variant == "complex" else "complex"
        self.steps.append(step)
        self.deltas.append(d)
        self.deltas_other.append(spectral.delta_f(out, self.target, self.ks, other))
        return {f"delta/k{k}": float(v) for k, v in zip(self.ks, d)}

    def judge(self) -> verdict.Judgement:
        return verdict.judge(self.freqs[self.ks], self.steps, self.deltas, self.eps, self.eps_list, self.removed_factor)

    def image(self):
        from fpdsl.figures import heatmap_image

        return heatmap_image(self.steps, self.deltas, 0.1, 1.0)

    def finish(self, title: str = ""):
        from fpdsl.figures import heatmap
        from fpdsl.probes import ProbeResult

        j = self.judge()
        other = "magnitude" if self.variant == "complex" else "complex"
        fig = heatmap(
            self.steps, self.deltas, [f"{k} ({self.freqs[k]:.3g})" for k in self.ks],
            title=f"{title + chr(10) if title else ''}Δ_F ({self.variant}) along the projection — {j.verdict}, "
                  f"{j.n_converged}/{j.n_freqs} converged at ε = {self.eps:g}",
            cbar_label="Δ_F (clipped to [0.1, 1])", ylabel="peak index k (frequency)", reuse=True,
        )
        arrays = {
            "steps": np.asarray(self.steps), "direction": self.direction, "freqs": self.freqs, "peaks": self.ks,
            "target_spectrum": self.target, f"delta_{self.variant}": np.asarray(self.deltas),
            f"delta_{other}": np.asarray(self.deltas_other),
        } | verdict.arrays_of(j)
        tags = verdict.tags_of(j) | {"delta_variant": self.variant}
        return ProbeResult(metrics=verdict.metrics_of(j, [f"k{k}" for k in self.ks]), tags=tags,
                           figures={"heatmap": fig}, arrays=arrays, line=j.line)
