"""spectrum: Δ_F at the target's DFT peaks on 1-D uniform data (SCIENCE.md §1.1–1.2)."""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from fpdsl import spectral
from fpdsl.errors import ConfigError


class Spectrum:
    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        n_coeffs: Annotated[int, Field(ge=3)] = 40,
        min_rel: Annotated[float, Field(ge=0, le=1)] = 0.05,
        variant: Literal["complex", "magnitude"] = "complex",
        eps: Annotated[float, Field(gt=0)] = 0.1,
        name: str = "spectrum",
    ):
        if not getattr(data, "uniform", False) or data.x.shape[1] != 1:
            raise ConfigError(
                f"probe.{name} needs 1-D inputs on a uniform grid; this dataset is not one "
                "(use probe=projection or probe=filtering, or remove it with ~probe." + name + ")"
            )
        self.every, self.variant, self.eps, self.name = every, variant, eps, name
        self.target = spectral.dft(data.y)
        self.ks = spectral.peaks(self.target, n_coeffs, min_rel)
        if self.ks.size == 0:
            raise ConfigError(f"probe.{name}: the target has no DFT peak among the first {n_coeffs} coefficients; raise probe.{name}.n_coeffs")
        self.rows = spectral.dft_rows(len(data.y), self.ks)  # the DFT at the peaks only, built once
        self.target_at_peaks = self.target[self.ks]
        if self.target_at_peaks.shape[1:] == (1,):  # one output: magnitudes are plain |·|, fewer calls
            self.target_at_peaks = self.target_at_peaks[:, 0]
        self.keys = [f"delta/k{k}" for k in self.ks]
        self.steps: list[int] = []
        self.deltas: list[np.ndarray] = []
        self.deltas_other: list[np.ndarray] = []

    def observe(self, step, view) -> dict:
        out = self.rows @ view.output  # ĥ_k at the peaks, (K, c)
        if self.target_at_peaks.ndim == 1:
            out = out[:, 0]
        d = spectral.delta_at(out, self.target_at_peaks, self.variant)
        other = "magnitude" if self.variant == "complex" else "complex"
        self.steps.append(step)
        self.deltas.append(d)
        self.deltas_other.append(spectral.delta_at(out, self.target_at_peaks, other))
        return dict(zip(self.keys, d.tolist()))

    def summary(self):
        steps, deltas = np.asarray(self.steps), np.asarray(self.deltas)
        conv = spectral.converge_steps(steps, deltas, self.eps)
        score, holds, verdict = spectral.fp_order(self.ks, conv)
        return conv, score, holds, verdict

    def finish(self, title: str = ""):
        from fpdsl.figures import heatmap
        from fpdsl.probes import ProbeResult

        conv, score, holds, verdict = self.summary()
        metrics = {"fp_order": score, "fp_holds": float(holds)}
        metrics.update({f"converge_step/k{k}": float(c) for k, c in zip(self.ks, conv)})
        fig = heatmap(
            self.steps,
            self.deltas,
            self.ks,
            title=f"Δ_F ({self.variant}) at target peaks — order {score:+.2f}, {verdict}",
            cbar_label="Δ_F (clipped to [0.1, 1])",
        )
        arrays = {
            "steps": np.asarray(self.steps),
            "peaks": self.ks,
            f"delta_{self.variant}": np.asarray(self.deltas),
            f"delta_{'magnitude' if self.variant == 'complex' else 'complex'}": np.asarray(self.deltas_other),
            "converge_step": conv,
        }
        tags = {"fp_verdict": verdict, "delta_variant": self.variant}
        return ProbeResult(line=f"F-Principle {verdict} (order {score:+.2f})", metrics=metrics, tags=tags, figures={"heatmap": fig}, arrays=arrays)
