"""spectral_amplitude: the learned amplitude of each target sine (Rahaman et al. 2019; docs/science.md)."""
from __future__ import annotations

from typing import Annotated, Optional

import numpy as np
from pydantic import Field

from fpdsl import spectral, verdict
from fpdsl.errors import ConfigError
from fpdsl.probes.spectrum import Eps, EpsList


class SpectralAmplitude:
    """Normalised amplitude 2|ĥ(k_i)| / (n A_i) of the output at each target frequency.

    The dataset says its sine components: `angular_frequencies` ω_i (radians per unit x),
    `amplitudes` A_i, and `frequencies` (as configured, for the names); ĥ(ω) = Σ_j h_j e^{−iω x_j}.
    On Rahaman's grid x_j = j/n this is the DFT at k_i. The error judged is |amplitude − 1|
    (converged when ≤ eps); verdicts as in fpdsl.verdict, over the frequencies.
    """

    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        per_decade: Optional[Annotated[int, Field(ge=1, le=1000)]] = None,
        eps: Eps = 0.1,
        eps_list: EpsList = (0.05, 0.2, 0.5),
        removed_factor: Annotated[float, Field(ge=1)] = 2.0,
        name: str = "spectral_amplitude",
    ):
        missing = [a for a in ("angular_frequencies", "amplitudes", "frequencies") if not hasattr(data, a)]
        if missing:
            raise ConfigError(
                f"probe.{name} needs a dataset made of known sines (it lacks {', '.join(missing)}); "
                f"use dataset=rahaman or dataset=sines1d, or remove it with ~probe.{name}"
            )
        if data.x.shape[1] != 1:
            raise ConfigError(f"probe.{name} needs 1-D inputs; this dataset has {data.x.shape[1]} dimensions")
        self.every, self.per_decade, self.name = every, per_decade, name
        self.eps, self.eps_list, self.removed_factor = eps, tuple(eps_list), removed_factor
        self.x = np.asarray(data.x, dtype=float)[:, 0]
        self.omegas = np.asarray(data.angular_frequencies, dtype=float)
        self.amplitudes = np.asarray(data.amplitudes, dtype=float)
        self.frequencies = np.asarray(data.frequencies, dtype=float)
        if np.any(self.amplitudes == 0):
            raise ConfigError(f"probe.{name}: the dataset has a zero amplitude; the normalised amplitude needs A_i ≠ 0")
        self.labels = [f"k{f:g}" for f in self.frequencies]
        self.matrix = spectral.real_pair(spectral.sine_amplitude_matrix(self.x, self.omegas, self.amplitudes))  # once
        self.order = np.argsort(np.abs(self.omegas), kind="stable")
        self.steps: list[int] = []
        self.values: list[np.ndarray] = []

    def observe(self, step, view) -> dict:
        amp = spectral.magnitude(spectral.apply_pair(self.matrix, view.output))
        self.steps.append(step)
        self.values.append(amp)
        return {f"amplitude/{k}": float(v) for k, v in zip(self.labels, amp)}

    def judge(self) -> verdict.Judgement:
        err = np.abs(np.asarray(self.values) - 1.0)
        return verdict.judge(np.abs(self.omegas), self.steps, err, self.eps, self.eps_list, self.removed_factor)

    def image(self):
        from fpdsl.figures import heatmap_image

        return heatmap_image(self.steps, np.asarray(self.values)[:, self.order], 0.0, 1.0, cmap="viridis")

    def finish(self, title: str = ""):
        from fpdsl.figures import heatmap
        from fpdsl.probes import ProbeResult

        j = self.judge()
        fig = heatmap(
            self.steps, np.asarray(self.values)[:, self.order], [f"{f:g}" for f in self.frequencies[self.order]],
            title=f"{title + chr(10) if title else ''}normalised amplitude 2|ĥ(k)|/(n A) — {j.verdict}, "
                  f"{j.n_converged}/{j.n_freqs} within ε = {self.eps:g} of 1; bias {j.bias}",
            cbar_label="amplitude (clipped to [0, 1])", vmin=0.0, vmax=1.0, cmap="viridis", ylabel="frequency k", reuse=True,
        )
        arrays = {"steps": np.asarray(self.steps), "frequencies": self.frequencies, "amplitudes": self.amplitudes,
                  "amplitude": np.asarray(self.values)} | verdict.arrays_of(j)
        return ProbeResult(metrics=verdict.metrics_of(j, self.labels), tags=verdict.tags_of(j),
                           figures={"heatmap": fig}, arrays=arrays, line=j.line)
