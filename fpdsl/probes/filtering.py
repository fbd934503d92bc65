"""filtering: low/high-frequency errors of any-dimensional data by Gaussian filtering (docs/science.md)."""
from __future__ import annotations

from typing import Annotated, Optional

import numpy as np
from pydantic import Field

from fpdsl import spectral, verdict
from fpdsl.errors import ConfigError
from fpdsl.probes.spectrum import Eps, EpsList

MAX_KERNEL_BYTES = 2 << 30  # the stacked kernels live in memory for the whole run


class Filtering:
    """e_low and e_high per δ: y^{low,δ} = K_δ y with K_δ the row-normalised Gaussian kernel
    exp(−|x_i − x_j|² / (2δ)), y^high = y − y^low, the same for the output h.

    The kernels are built once (memory: n² floats per δ) and stacked, so each observation is
    one matrix product with the residual y − h. deltas: null takes five values scaled to the
    data, (0.1, 0.2, 0.5, 1, 2) × the median squared distance between inputs.

    A δ whose kernel keeps on average more than `identity_weight` of each point's own value
    (the kernel is close to the identity: nothing is low-passed, y^high ≈ 0 and e_high is
    meaningless) is dropped, and the run says so. Per kept δ the two errors are judged as two
    "frequencies", low < high (fpdsl.verdict), but only if e_high fell measurably (to at most
    1 − min_fall of its first value); otherwise that δ is undetermined.
    """

    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        per_decade: Optional[Annotated[int, Field(ge=1, le=1000)]] = None,
        deltas: Optional[Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)]] = None,
        eps: Eps = 0.1,
        eps_list: EpsList = (0.05, 0.2, 0.5),
        identity_weight: Annotated[float, Field(gt=0, le=1)] = 0.5,
        min_fall: Annotated[float, Field(gt=0, lt=1)] = 0.1,
        name: str = "filtering",
    ):
        self.every, self.per_decade, self.eps, self.eps_list, self.name = every, per_decade, eps, tuple(eps_list), name
        self.min_fall = min_fall
        x, y = np.asarray(data.x, dtype=float), np.asarray(data.y, dtype=float)
        n_kernels = 5 if deltas is None else len(deltas)
        need = (n_kernels + 1) * x.shape[0] ** 2 * 8
        if need > MAX_KERNEL_BYTES:
            raise ConfigError(
                f"probe.{name}: {x.shape[0]} points need {need / 2**30:.1f} GiB of kernels (n² floats per δ); "
                f"use fewer points (e.g. dataset.n_samples) or fewer probe.{name}.deltas"
            )
        sq = spectral.squared_distances(x)
        candidates = np.asarray(spectral.default_deltas(sq) if deltas is None else deltas, dtype=float)
        labels = [f"d{d:.3g}" for d in candidates]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"probe.{name}.deltas: repeated values {list(candidates)}; give distinct δ values")
        kernels, kept, self.dropped = [], [], []
        for d, label in zip(candidates, labels):
            k = spectral.gaussian_lowpass(sq, d)
            weight = float(np.mean(np.diag(k)))
            if weight > identity_weight:
                self.dropped.append(f"{label} (each point keeps {weight:.0%} of its own value)")
            else:
                kernels.append(k)
                kept.append(d)
        if not kept:
            raise ConfigError(f"probe.{name}.deltas: every δ gives a kernel close to the identity "
                              f"({'; '.join(self.dropped)}); give larger values")
        self.deltas = np.asarray(kept)
        self.labels = [f"d{d:.3g}" for d in self.deltas]
        n = x.shape[0]
        self.kernels = np.concatenate(kernels)  # (D·n, n)
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

    def judge(self):
        """Per δ: (judgement, whether e_high fell measurably); and the combined verdict."""
        e_low, e_high = np.asarray(self.e_low), np.asarray(self.e_high)
        per = []
        for i in range(len(self.deltas)):
            errs = np.stack([e_low[:, i], e_high[:, i]], axis=1)
            j = verdict.judge([0.0, 1.0], self.steps, errs, self.eps, self.eps_list)
            fell = bool(e_high[:, i].min() <= (1 - self.min_fall) * e_high[0, i])
            if not fell:
                j.verdict, j.order, j.order_halving = "undetermined", float("nan"), float("nan")
            per.append((j, fell))
        determined = [j for j, _ in per if j.verdict in verdict.VERDICT_CODE]
        if not determined:
            combined = "undetermined"
        elif all(j.verdict == "holds" for j in determined):
            combined = "holds"
        else:
            combined = "reversed" if np.nanmean([j.order for j in determined]) < 0 else "partial"
        return per, combined

    def image(self):
        from fpdsl.figures import heatmap_image

        return heatmap_image(self.steps, np.concatenate([np.asarray(self.e_low), np.asarray(self.e_high)], axis=1), 0.0, 1.0)

    def finish(self, title: str = ""):
        from fpdsl.figures import heatmap_panels
        from fpdsl.probes import ProbeResult

        per, combined = self.judge()
        orders = [j.order for j, _ in per]
        halving = [j.order_halving for j, _ in per]
        mean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
        metrics = {"fp_order": mean(orders), "fp_order_halving": mean(halving), "fp_holds": float(combined == "holds"),
                   "fp_verdict_code": verdict.VERDICT_CODE.get(combined, np.nan), "n_deltas": float(len(self.deltas)),
                   "n_deltas_e_high_fell": float(sum(f for _, f in per)), "n_deltas_dropped": float(len(self.dropped))}
        for k, (j, fell) in zip(self.labels, per):
            metrics[f"converge_step_low/{k}"] = float(j.converge[0])
            metrics[f"converge_step_high/{k}"] = float(j.converge[1])
            metrics[f"halving_step_low/{k}"] = float(j.halving[0])
            metrics[f"halving_step_high/{k}"] = float(j.halving[1])
            metrics[f"fp_order/{k}"] = float(j.order)
            metrics[f"e_high_fell/{k}"] = float(fell)
        e_low, e_high = np.asarray(self.e_low), np.asarray(self.e_high)
        fig = heatmap_panels(
            self.steps, {"e_low": e_low, "e_high": e_high}, [f"{d:.3g}" for d in self.deltas],
            title=f"{title + ' — ' if title else ''}filtering: relative errors per δ — {combined}",
            cbar_label="relative error (clipped to [0, 1])", vmin=0.0, vmax=1.0, ylabel="δ",
        )
        arrays = {"steps": np.asarray(self.steps), "deltas": self.deltas, "e_low": e_low, "e_high": e_high,
                  "converge_step_low": np.array([j.converge[0] for j, _ in per]),
                  "converge_step_high": np.array([j.converge[1] for j, _ in per])}
        tags = {"fp_verdict": combined,
                "fp_verdicts": ", ".join(f"{k}: {j.verdict}{'' if fell else ' (e_high did not fall)'}"
                                         for k, (j, fell) in zip(self.labels, per)),
                "dropped_deltas": "; ".join(self.dropped) or "none"}
        kept = sum(f for _, f in per)
        line = (f"F-Principle {combined} ({len(self.deltas)} δ kept, {len(self.dropped)} dropped as near-identity; "
                f"e_high fell at {kept}; halving order {metrics['fp_order_halving']:+.2f})")
        return ProbeResult(metrics=metrics, tags=tags, figures={"heatmap": fig}, arrays=arrays, line=line)
