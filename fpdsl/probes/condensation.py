"""condensation: do the first layer's neurons align on a few orientations? (SCIENCE.md §2)"""
from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from fpdsl import condensation as measures
from fpdsl.errors import ConfigError


class Condensation:
    """Features u_k = (w_k, b_k) of the model's first nn.Linear (its weight rows with the bias;
    the weight alone when it has none), any width.

    Orientations are counted by complete-linkage clustering of the unit features: two
    neurons share an orientation only if their cosine similarity is ≥ threshold (u and −u
    are different orientations); a cluster counts as a condensed orientation when it holds
    at least 2 neurons and at least min_fraction of them. Logged per step:
    n_orientations, max_cluster_share. Summary: the final values, the activation's
    multiplicity p (first non-zero derivative at 0) and whether n_orientations ≤ 2p.
    Figures: the cosine-similarity matrix at the first and last observed step, neurons
    in dendrogram order so clusters show as blocks; for 1-D input, θ_k against A_k.
    """

    def __init__(
        self,
        data,
        every: Annotated[int, Field(ge=1)] = 10,
        threshold: Annotated[float, Field(gt=-1, le=1)] = 0.95,
        min_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05,
        name: str = "condensation",
    ):
        self.every, self.threshold, self.min_fraction, self.name = every, threshold, min_fraction, name
        self.in_dim = data.x.shape[1]
        self.keys = None  # parameter names of the first layer, found on the first observation
        self.p = None
        self.steps: list[int] = []
        self.n_orientations: list[int] = []
        self.max_share: list[float] = []
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
        sim = measures.cosine_similarity(u)
        sizes = measures.cluster_sizes(sim, self.threshold)
        n = measures.condensed_count(sizes, self.min_fraction)
        share = float(sizes[0] / u.shape[0])
        self.steps.append(step)
        self.n_orientations.append(n)
        self.max_share.append(share)
        if self.first is None:
            self.first = (u, a)
        self.last = (u, a)
        return {"n_orientations": float(n), "max_cluster_share": share}

    def finish(self, title: str = ""):
        from fpdsl.figures import cosine_panels, orientation_scatter
        from fpdsl.probes import ProbeResult

        metrics = {"final_n_orientations": float(self.n_orientations[-1]), "final_max_cluster_share": self.max_share[-1]}
        tags = {"threshold": self.threshold, "min_fraction": self.min_fraction}
        if self.p is not None:
            metrics["multiplicity"] = float(self.p)
            metrics["within_2p"] = float(self.n_orientations[-1] <= 2 * self.p)
        (u0, a0), (u1, a1) = self.first, self.last
        s0, s1 = measures.cosine_similarity(u0), measures.cosine_similarity(u1)
        figures = {
            "cosine": cosine_panels(
                {f"step {self.steps[0]}": s0, f"step {self.steps[-1]}": s1},
                title=f"cosine similarity of neuron features (w_k, b_k): {self.n_orientations[-1]} orientation(s) "
                f"at cos ≥ {self.threshold:g}",
            )
        }
        arrays = {
            "steps": np.asarray(self.steps),
            "n_orientations": np.asarray(self.n_orientations),
            "max_cluster_share": np.asarray(self.max_share),
            "features_first": u0,
            "features_last": u1,
        }
        if self.in_dim == 1 and u1.shape[1] == 2 and a1 is not None:
            th0, amp0 = measures.orientation_amplitude(u0[:, 0], u0[:, 1], a0)
            th1, amp1 = measures.orientation_amplitude(u1[:, 0], u1[:, 1], a1)
            figures["theta_amplitude"] = orientation_scatter(
                {f"step {self.steps[0]}": (th0, amp0), f"step {self.steps[-1]}": (th1, amp1)},
                title="neurons: orientation θ_k against amplitude A_k",
            )
            arrays.update(theta_last=th1, amplitude_last=amp1)
        return ProbeResult(metrics=metrics, tags=tags, figures=figures, arrays=arrays)
