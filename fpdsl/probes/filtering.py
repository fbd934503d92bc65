"""filtering: low/high-frequency errors of any-dimensional data by Gaussian filtering (SCIENCE.md §1.3)."""
from __future__ import annotations

from typing import Annotated, Optional

import numpy as np
from pydantic import Field

from fpdsl import spectral
from fpdsl.errors import ConfigError

MAX_KERNEL_BYTES = 2 << 30  # the stacked kernels live in memory for the whole run


class Filtering:
    """e_low and e_high per δ: y^{low,δ} = K_δ y with K_δ the row-normalised Gaussian kernel
    exp(−|x_i − x_j|² / (2δ)), y^high = y − y^low, the same for the output h.

    The kernels are built once (memory: n² floats per δ) and stacked, so each observation is
    one matrix product with the residual y − h. deltas: null takes five values scaled to the
    data, (0.01, 0.03, 0.1, 0.3, 1) × the median squared distance between inputs.

    Verdict per δ: converge steps of e_low and e_high (first recorded step ≤ eps) ordered
    as frequencies low < high (SCIENCE.md §1.2); fp_order is their mean over δ.
    """

    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        deltas: Optional[Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)]] = None,
        eps: Annotated[float, Field(gt=0)] = 0.1,
        name: str = "filtering",
    ):
        self.every, self.eps, self.name = every, eps, name
        x, y = np.asarray(data.x, dtype=float), np.asarray(data.y, dtype=float)
        n_kernels = 5 if deltas is None else len(deltas)
        need = (n_kernels + 1) * x.shape[0] ** 2 * 8
        if need > MAX_KERNEL_BYTES:
            raise ConfigError(
                f"probe.{name}: {x.shape[0]} points need {need / 2**30:.1f} GiB of kernels (n² floats per δ); "
                f"use fewer points (e.g. dataset.n_samples) or fewer probe.{name}.deltas"
            )
        sq = spectral.squared_distances(x)
        self.deltas = np.asarray(spectral.default_deltas(sq) if deltas is None else deltas, dtype=float)
        self.labels = [f"d{d:.3g}" for d in self.deltas]
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"probe.{name}.deltas: repeated values {list(self.deltas)}; give distinct δ values")
        n = x.shape[0]
        self.kernels = np.concatenate([spectral.gaussian_lowpass(sq, d) for d in self.deltas])  # (D·n, n)
        self.n = n
        self.y = y
        y_low = (self.kernels @ y).reshape(len(self.deltas), n, -1)
        self.norm_low = np.linalg.norm(y_low, axis=(1, 2))
        self.norm_high = np.linalg.norm(y[None] - y_low, axis=(1, 2))
        self.scale = float(np.linalg.norm(y))
        self.steps: list[int] = []
        self.e_low: list[np.ndarray] = []
        self.e_high: list[np.ndarray] = []

    def observe(self, step, view) -> dict:
        r = self.y - view.output
        r_low = (self.kernels @ r).reshape(len(self.deltas), self.n, -1)
        d_low = np.linalg.norm(r_low, axis=(1, 2))
        d_high = np.linalg.norm(r[None] - r_low, axis=(1, 2))
        e_low = np.array([spectral.relative_error(a, b, self.scale) for a, b in zip(d_low, self.norm_low)])
        e_high = np.array([spectral.relative_error(a, b, self.scale) for a, b in zip(d_high, self.norm_high)])
        self.steps.append(step)
        self.e_low.append(e_low)
        self.e_high.append(e_high)
        out = {f"e_low/{k}": float(v) for k, v in zip(self.labels, e_low)}
        out.update({f"e_high/{k}": float(v) for k, v in zip(self.labels, e_high)})
        return out

    def summary(self):
        """Per δ: converge steps (low, high), order score and verdict; then the combined verdict."""
        steps = np.asarray(self.steps)
        conv_low = spectral.converge_steps(steps, np.asarray(self.e_low), self.eps)
        conv_high = spectral.converge_steps(steps, np.asarray(self.e_high), self.eps)
        per = [spectral.fp_order(np.array([0.0, 1.0]), np.array([lo, hi])) for lo, hi in zip(conv_low, conv_high)]
        scores = [p[0] for p in per]
        verdicts = [p[2] for p in per]
        return conv_low, conv_high, scores, verdicts, spectral.combine_orders(scores, verdicts)

    def finish(self, title: str = ""):
        from fpdsl.figures import heatmap_panels
        from fpdsl.probes import ProbeResult

        conv_low, conv_high, scores, verdicts, (score, holds, verdict) = self.summary()
        metrics = {"fp_order": score, "fp_holds": float(holds)}
        for k, lo, hi, sc in zip(self.labels, conv_low, conv_high, scores):
            metrics[f"converge_step_low/{k}"] = float(lo)
            metrics[f"converge_step_high/{k}"] = float(hi)
            metrics[f"fp_order/{k}"] = float(sc)
        e_low, e_high = np.asarray(self.e_low), np.asarray(self.e_high)
        labels = [f"{d:.3g}" for d in self.deltas]
        figures = {
            "heatmap": heatmap_panels(
                self.steps,
                {"e_low": e_low, "e_high": e_high},
                labels,
                title=f"filtering: relative errors per δ — order {score:+.2f}, {verdict}",
                cbar_label="relative error (clipped to [0, 1])",
                vmin=0.0,
                vmax=1.0,
                ylabel="δ",
            ),
        }
        arrays = {
            "steps": np.asarray(self.steps),
            "deltas": self.deltas,
            "e_low": e_low,
            "e_high": e_high,
            "converge_step_low": conv_low,
            "converge_step_high": conv_high,
        }
        tags = {"fp_verdict": verdict, "fp_verdicts": ", ".join(f"{k}: {v}" for k, v in zip(self.labels, verdicts))}
        return ProbeResult(line=f"F-Principle {verdict} (order {score:+.2f})", metrics=metrics, tags=tags, figures=figures, arrays=arrays)
