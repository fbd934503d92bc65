"""spectrum: Δ_F at the target's DFT peaks on 1-D uniform data (docs/science.md)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import numpy as np
from pydantic import Field

from fpdsl import spectral, verdict
from fpdsl.errors import ConfigError

Eps = Annotated[float, Field(gt=0)]
EpsList = Annotated[list[Eps], Field(max_length=20)]


class Spectrum:
    """Δ_F(k) = |ĥ_k − ŷ_k| / |ŷ_k| (variant complex; magnitude: ||ĥ_k| − |ŷ_k|| / (|ŷ_k| + 1e-5))
    at the peaks k of the target's DFT among its first n_coeffs coefficients (ignoring peaks
    below min_rel × the largest), observed every `every` steps and at `per_decade`
    log-spaced steps a decade; verdicts as in fpdsl.verdict."""

    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        per_decade: Optional[Annotated[int, Field(ge=1, le=1000)]] = None,
        n_coeffs: Annotated[int, Field(ge=3)] = 40,
        min_rel: Annotated[float, Field(ge=0, le=1)] = 0.05,
        variant: Literal["complex", "magnitude"] = "complex",
        eps: Eps = 0.1,
        eps_list: EpsList = (0.05, 0.2, 0.5),
        removed_factor: Annotated[float, Field(ge=1)] = 2.0,
        name: str = "spectrum",
    ):
        if not getattr(data, "uniform", False) or data.x.shape[1] != 1:
            raise ConfigError(
                f"probe.{name} needs 1-D inputs on a uniform grid; this dataset is not one "
                "(use probe=projection or probe=filtering, or remove it with ~probe." + name + ")"
            )
        self.every, self.per_decade, self.variant, self.name = every, per_decade, variant, name
        self.eps, self.eps_list, self.removed_factor = eps, tuple(eps_list), removed_factor
        self.target = spectral.dft(data.y)
        self.ks = spectral.peaks(self.target, n_coeffs, min_rel)
        if self.ks.size == 0:
            raise ConfigError(f"probe.{name}: the target has no DFT peak among the first {n_coeffs} coefficients; "
                              f"raise probe.{name}.n_coeffs")
        self.rows = spectral.dft_rows(len(data.y), self.ks)  # the DFT at the peaks only, built once
        self.target_at_peaks = self.target[self.ks]
        if self.target_at_peaks.shape[1:] == (1,):  # one output: magnitudes are plain |·|, fewer calls
            self.target_at_peaks = self.target_at_peaks[:, 0]
        self.keys = [f"delta/k{k}" for k in self.ks]
        self.steps: list[int] = []
        self.deltas: list[np.ndarray] = []
        self.deltas_other: list[np.ndarray] = []

    def observe(self, step, view) -> dict:
        return self._record(step, self.rows @ view.output)  # ĥ_k at the peaks, (K, c)

    def batch_key(self):
        """Probes with equal keys observe several runs' outputs in one `observe_many` call."""
        return (self.variant, self.rows.shape, self.ks.tobytes())

    @staticmethod
    def observe_many(probes, steps, outputs: np.ndarray) -> list[dict]:
        """Each probe's observation of its run's output (outputs (M, n, c)), the DFT at the peaks
        of all of them as one matrix product (the runs of a batched group)."""
        coeffs = np.einsum("kn,mnc->mkc", probes[0].rows, outputs)
        return [p._record(step, out) for p, step, out in zip(probes, steps, coeffs)]

    def _record(self, step, out) -> dict:
        if self.target_at_peaks.ndim == 1:
            out = out[:, 0]
        d = spectral.delta_at(out, self.target_at_peaks, self.variant)
        other = "magnitude" if self.variant == "complex" else "complex"
        self.steps.append(step)
        self.deltas.append(d)
        self.deltas_other.append(spectral.delta_at(out, self.target_at_peaks, other))
        return dict(zip(self.keys, d.tolist()))

    def judge(self) -> verdict.Judgement:
        return verdict.judge(self.ks, self.steps, self.deltas, self.eps, self.eps_list, self.removed_factor)

    def image(self):
        from fpdsl.figures import heatmap_image

        return heatmap_image(self.steps, self.deltas, 0.1, 1.0)

    def finish(self, title: str = ""):
        from fpdsl.figures import heatmap
        from fpdsl.probes import ProbeResult

        j = self.judge()
        fig = heatmap(
            self.steps, self.deltas, self.ks,
            title=f"{title + chr(10) if title else ''}Δ_F ({self.variant}) at the target's peaks — {j.verdict}, "
                  f"{j.n_converged}/{j.n_freqs} converged at ε = {self.eps:g}",
            cbar_label="Δ_F (clipped to [0.1, 1])", reuse=True,  # saved at once by the recorder
        )
        other = "magnitude" if self.variant == "complex" else "complex"
        arrays = {
            "steps": np.asarray(self.steps), "peaks": self.ks,
            f"delta_{self.variant}": np.asarray(self.deltas), f"delta_{other}": np.asarray(self.deltas_other),
        } | verdict.arrays_of(j)
        labels = [f"k{k}" for k in self.ks]
        tags = verdict.tags_of(j) | {"delta_variant": self.variant}
        return ProbeResult(metrics=verdict.metrics_of(j, labels), tags=tags, figures={"heatmap": fig},
                           arrays=arrays, line=j.line)
