"""condensation: do the first layer's neurons align on a few orientations? (docs/science.md)"""
from __future__ import annotations

from typing import Annotated, Optional

import numpy as np
from pydantic import Field

from fpdsl import condensation as measures
from fpdsl.errors import ConfigError


class Condensation:
    """Features u_k = (w_k, b_k) of the model's first nn.Linear (its weight rows with the bias;
    the weight alone when it has none), any width.

    Per observation: among the neurons whose feature has grown from its first observed value
    (‖u_k − u_k(0)‖ ≥ min_growth ‖u_k(0)‖), the orientations (average-linkage clusters with mean
    cosine ≥ threshold, at least 2 neurons and min_fraction of the grown ones; u and −u
    apart), the share of grown neurons they hold (coverage), and the same count for as many
    random unit vectors (baseline). Verdict at the end: "not condensed" when fewer than two
    neurons grew or the orientations are no better than random (fpdsl.condensation.is_condensed);
    "undetermined" when fewer than min_grown of the neurons grew (too few to say); otherwise
    "condensed, ≤ 2p" or "condensed, > 2p" with p the activation's multiplicity.
    """

    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        per_decade: Optional[Annotated[int, Field(ge=1, le=1000)]] = None,
        threshold: Annotated[float, Field(gt=-1, le=1)] = 0.95,
        min_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05,
        min_growth: Annotated[float, Field(gt=0)] = 1.0,
        min_coverage: Annotated[float, Field(gt=0, le=1)] = 0.5,
        min_grown: Annotated[float, Field(ge=0, le=1)] = 0.2,
        name: str = "condensation",
    ):
        self.every, self.per_decade, self.threshold, self.min_fraction = every, per_decade, threshold, min_fraction
        self.min_growth, self.min_coverage, self.min_grown, self.name = min_growth, min_coverage, min_grown, name
        self.in_dim = data.x.shape[1]
        self.keys = None  # parameter names of the first layer, found on the first observation
        self.p = None
        self.steps: list[int] = []
        self.n_orientations: list[int] = []
        self.coverage: list[float] = []
        self.n_grown: list[int] = []
        self.baseline: list[float] = []
        self.first = self.last = None  # (features, output weights) at the first and last observation

    def _locate(self, model):
        from torch import nn

        from fpdsl.models import Act

        mods = list(model.named_modules())
        linear = [(n, m) for n, m in mods if isinstance(m, nn.Linear)]
        if not linear:
            raise ConfigError(f"probe.{self.name}: the model has no nn.Linear layer whose neurons it could read")
        first_name, first = linear[0]
        prefix = f"{first_name}." if first_name else ""
        weight, bias = prefix + "weight", (prefix + "bias" if first.bias is not None else None)
        out = None
        if len(linear) > 1 and linear[1][1].in_features == first.out_features:
            out = f"{linear[1][0]}.weight" if linear[1][0] else "weight"
        start = next(i for i, (n, _) in enumerate(mods) if n == first_name)
        act = next((m for _, m in mods[start + 1 :] if isinstance(m, Act)), None)
        self.p = measures.multiplicity(act) if act is not None else None
        self.keys = (weight, bias, out)

    def _features(self, view):
        if self.keys is None:
            self._locate(view.objective.model)
        weight, bias, out = self.keys
        w = view.params[weight].cpu().double().numpy()
        u = w if bias is None else np.concatenate([w, view.params[bias].cpu().double().numpy()[:, None]], axis=1)
        a = None
        if out is not None:
            a_mat = view.params[out].cpu().double().numpy()  # (out, m)
            a = a_mat[0] if a_mat.shape[0] == 1 else np.linalg.norm(a_mat, axis=0)
        return u, a

    def observe(self, step, view) -> dict:
        u, a = self._features(view)
        if self.first is None:
            self.first = (u, a)
        self.last = (u, a)
        o = measures.orientations(u, self.first[0], self.threshold, self.min_fraction, self.min_growth)
        base = measures.random_baseline(o.n_grown, u.shape[1], self.threshold, self.min_fraction)[0]
        self.steps.append(step)
        self.n_orientations.append(o.n)
        self.coverage.append(o.coverage)
        self.n_grown.append(o.n_grown)
        self.baseline.append(base)
        return {"n_orientations": float(o.n), "coverage": o.coverage, "n_grown": float(o.n_grown),
                "baseline_orientations": base}

    def result(self):
        """(orientations at the last observation, random baseline, verdict)."""
        u0, u1 = self.first[0], self.last[0]
        o = measures.orientations(u1, u0, self.threshold, self.min_fraction, self.min_growth)
        base = measures.random_baseline(o.n_grown, u1.shape[1], self.threshold, self.min_fraction)
        if o.n_grown < 2:
            verdict = "not condensed (the features have not grown)"
        elif o.n_grown < self.min_grown * len(u1):
            verdict = f"undetermined (only {o.n_grown} of {len(u1)} neurons grew)"
        elif not measures.is_condensed(o, base, self.min_coverage):
            verdict = "not condensed (orientations no better than random)"
        elif self.p is None:
            verdict = "condensed (p unknown)"
        else:
            verdict = f"condensed, {'≤' if o.n <= 2 * self.p else '>'} 2p"
        return o, base, verdict

    def image(self):
        from fpdsl.figures import similarity_image

        u0, u1 = self.first[0], self.last[0]
        grown = measures.orientations(u1, u0, self.threshold, self.min_fraction, self.min_growth).grown
        return similarity_image(measures.cosine_similarity(u1[grown] if grown.sum() >= 2 else u1))

    def finish(self, title: str = ""):
        from fpdsl.figures import cosine_panels, orientation_scatter
        from fpdsl.probes import ProbeResult

        o, (base_n, base_cover), verdict = self.result()
        condensed = verdict.startswith("condensed")
        metrics = {"final_n_orientations": float(o.n), "final_coverage": o.coverage, "final_n_grown": float(o.n_grown),
                   "baseline_orientations": base_n, "baseline_coverage": base_cover, "condensed": float(condensed),
                   "largest_share": o.largest_share}
        if self.p is not None:
            metrics["multiplicity"] = float(self.p)
            metrics["within_2p"] = float(o.n <= 2 * self.p) if condensed else float("nan")
        tags = {"verdict": verdict, "threshold": self.threshold, "min_fraction": self.min_fraction,
                "min_growth": self.min_growth}
        (u0, a0), (u1, a1) = self.first, self.last
        s0, s1 = measures.cosine_similarity(u0), measures.cosine_similarity(u1[o.grown] if o.n_grown >= 2 else u1)
        figures = {
            "cosine": cosine_panels(
                {f"step {self.steps[0]}": s0, f"step {self.steps[-1]} ({o.n_grown} grown)": s1},
                title=f"{title + chr(10) if title else ''}cosine similarity of neuron features (w_k, b_k): {verdict}, "
                      f"{o.n} orientation(s) (random: {base_n:.1f})",
            )
        }
        arrays = {
            "steps": np.asarray(self.steps), "n_orientations": np.asarray(self.n_orientations),
            "coverage": np.asarray(self.coverage), "n_grown": np.asarray(self.n_grown),
            "baseline_orientations": np.asarray(self.baseline), "features_first": u0, "features_last": u1,
            "grown": o.grown,
        }
        if self.in_dim == 1 and u1.shape[1] == 2 and a1 is not None:
            th0, amp0 = measures.orientation_amplitude(u0[:, 0], u0[:, 1], a0)
            th1, amp1 = measures.orientation_amplitude(u1[:, 0], u1[:, 1], a1)
            figures["theta_amplitude"] = orientation_scatter(
                {f"step {self.steps[0]}": (th0, amp0), f"step {self.steps[-1]}": (th1, amp1)},
                title=f"{title + chr(10) if title else ''}neurons: orientation θ_k against amplitude A_k",
            )
            arrays.update(theta_last=th1, amplitude_last=amp1)
        line = f"{verdict}: {o.n} orientation(s) over {o.n_grown} grown neurons (random: {base_n:.1f})"
        return ProbeResult(metrics=metrics, tags=tags, figures=figures, arrays=arrays, line=line)
