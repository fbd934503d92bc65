"""spectral_amplitude: the learned amplitude of each target sine (Rahaman et al. 2019; SCIENCE.md §1.5)."""
from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from fpdsl import spectral
from fpdsl.errors import ConfigError


class SpectralAmplitude:
    """Normalised amplitude 2|ĥ(k_i)| / (n A_i) of the output at each target frequency.

    The dataset says its sine components: `angular_frequencies` ω_i (radians per unit x),
    `amplitudes` A_i, and `frequencies` (as configured, for the names); ĥ(ω) = Σ_j h_j e^{−iω x_j}.
    On Rahaman's grid x_j = j/n this is the DFT at k_i. Converged: |amplitude − 1| ≤ eps;
    the F-Principle order is taken over the frequencies as in spectrum.
    """

    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        eps: Annotated[float, Field(gt=0)] = 0.1,
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
        self.every, self.eps, self.name = every, eps, name
        self.x = np.asarray(data.x, dtype=float)[:, 0]
        self.omegas = np.asarray(data.angular_frequencies, dtype=float)
        self.amplitudes = np.asarray(data.amplitudes, dtype=float)
        self.frequencies = np.asarray(data.frequencies, dtype=float)
        if np.any(self.amplitudes == 0):
            raise ConfigError(f"probe.{name}: the dataset has a zero amplitude; the normalised amplitude needs A_i ≠ 0")
        self.labels = [f"k{f:g}" for f in self.frequencies]
        self.matrix = spectral.real_pair(spectral.sine_amplitude_matrix(self.x, self.omegas, self.amplitudes))  # once
        self.steps: list[int] = []
        self.values: list[np.ndarray] = []

    def observe(self, step, view) -> dict:
        amp = spectral.magnitude(spectral.apply_pair(self.matrix, view.output))
        self.steps.append(step)
        self.values.append(amp)
        return {f"amplitude/{k}": float(v) for k, v in zip(self.labels, amp)}

    def summary(self):
        values = np.asarray(self.values)
        conv = spectral.converge_steps(np.asarray(self.steps), np.abs(values - 1.0), self.eps)
        return (conv, *spectral.fp_order(np.abs(self.omegas), conv))

    def finish(self, title: str = ""):
        from fpdsl.figures import heatmap
        from fpdsl.probes import ProbeResult

        conv, score, holds, verdict = self.summary()
        metrics = {"fp_order": score, "fp_holds": float(holds)}
        metrics.update({f"converge_step/{k}": float(c) for k, c in zip(self.labels, conv)})
        order = np.argsort(np.abs(self.omegas), kind="stable")
        fig = heatmap(
            self.steps,
            np.asarray(self.values)[:, order],
            [f"{f:g}" for f in self.frequencies[order]],
            title=f"normalised amplitude 2|ĥ(k)|/(n A) — order {score:+.2f}, {verdict}",
            cbar_label="amplitude (clipped to [0, 1])",
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
            ylabel="frequency k",
        )
        arrays = {
            "steps": np.asarray(self.steps),
            "frequencies": self.frequencies,
            "amplitudes": self.amplitudes,
            "amplitude": np.asarray(self.values),
            "converge_step": conv,
        }
        return ProbeResult(line=f"F-Principle {verdict} (order {score:+.2f})", metrics=metrics, tags={"fp_verdict": verdict}, figures={"heatmap": fig}, arrays=arrays)
