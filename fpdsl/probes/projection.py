"""projection: Δ_F along one direction of any-dimensional data (SCIENCE.md §1.4)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import numpy as np
from pydantic import Field

from fpdsl import spectral
from fpdsl.errors import ConfigError


class Projection:
    """Project the inputs on a unit direction p (default: the first principal component),
    t_j = p·x_j, and take the non-uniform DFT F(f) = (1/n) Σ_j y_j e^{−2πi f t_j} on the grid
    f_m = m · freq_step, m < min(n_freqs, n/2 + 1) (freq_step default: the DFT's bin spacing
    were t a uniform grid, 1 / (range of t · n/(n − 1))). Peaks of the
    target's |F| (as in spectrum), Δ_F there, and the F-Principle order by peak frequency.
    The NUDFT matrix is built once; each observation is one matrix product.
    """

    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        direction: Optional[Annotated[list[float], Field(min_length=1)]] = None,
        n_freqs: Annotated[int, Field(ge=3)] = 40,
        freq_step: Optional[Annotated[float, Field(gt=0)]] = None,
        min_rel: Annotated[float, Field(ge=0, le=1)] = 0.05,
        variant: Literal["complex", "magnitude"] = "complex",
        eps: Annotated[float, Field(gt=0)] = 0.1,
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
        self.every, self.variant, self.eps, self.name = every, variant, eps, name
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

    def summary(self):
        conv = spectral.converge_steps(np.asarray(self.steps), np.asarray(self.deltas), self.eps)
        return (conv, *spectral.fp_order(self.freqs[self.ks], conv))

    def finish(self, title: str = ""):
        from fpdsl.figures import heatmap
        from fpdsl.probes import ProbeResult

        conv, score, holds, verdict = self.summary()
        metrics = {"fp_order": score, "fp_holds": float(holds)}
        metrics.update({f"converge_step/k{k}": float(c) for k, c in zip(self.ks, conv)})
        other = "magnitude" if self.variant == "complex" else "complex"
        fig = heatmap(
            self.steps,
            self.deltas,
            [f"{k} ({self.freqs[k]:.3g})" for k in self.ks],
            title=f"Δ_F ({self.variant}) along the projection — order {score:+.2f}, {verdict}",
            cbar_label="Δ_F (clipped to [0.1, 1])",
            ylabel="peak index k (frequency)",
        )
        arrays = {
            "steps": np.asarray(self.steps),
            "direction": self.direction,
            "freqs": self.freqs,
            "peaks": self.ks,
            "target_spectrum": self.target,
            f"delta_{self.variant}": np.asarray(self.deltas),
            f"delta_{other}": np.asarray(self.deltas_other),
            "converge_step": conv,
        }
        tags = {"fp_verdict": verdict, "delta_variant": self.variant}
        return ProbeResult(line=f"F-Principle {verdict} (order {score:+.2f})", metrics=metrics, tags=tags, figures={"heatmap": fig}, arrays=arrays)
