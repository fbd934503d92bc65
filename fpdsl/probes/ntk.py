"""ntk: the empirical neural tangent kernel, and the linearised prediction of Δ_F beside the run (docs/science.md)."""
from __future__ import annotations

import math
from typing import Annotated, Optional

import numpy as np
from pydantic import Field

from fpdsl import ntk, spectral, verdict
from fpdsl.errors import ConfigError
from fpdsl.probes.spectrum import Eps


class NTK:
    """K = J Jᵀ on the training inputs (J = ∂h/∂θ, torch.func.jacrev in bounded blocks), at the
    first observation and every `every` steps: its top `n_eigs` eigenvalues, condition number,
    effective rank, drift ‖K − K_0‖_F / ‖K_0‖_F and, on a uniform 1-D grid, the dominant DFT
    frequency of each leading eigenvector (with `eig_freq_order`, the Spearman correlation of
    eigenvalue rank with that frequency: +1 when larger eigenvalues belong to lower frequencies).

    Between kernels, at `per_decade` log-spaced steps too, the probe keeps Δ_F at the target's
    DFT peaks (as probe=spectrum defines them). At the end it predicts the run from K_0: the
    residual of the model linearised at θ_0 under gradient descent (exact for this run when
    it is plain gradient descent on a quadratic loss; otherwise a reference: gradient descent
    over the same steps, with `lr`, else the optimizer's own lr, at most 1/λ_max(K_0 H)),
    from it Δ_F at the same peaks and steps, the predicted converge steps and verdict, and
    `agreement` = 1 − mean |Δ_pred − Δ_meas| (both clipped to [0, 1]); "agrees" when it is at
    least `agree_at`, "undetermined" when neither the run nor the prediction moved any peak
    to half its first Δ_F.
    """

    def __init__(
        self,
        data,
        optimizer=None,  # given by the runner: whose step rule the prediction follows
        every: Annotated[int, Field(ge=1)] = 100,
        per_decade: Optional[Annotated[int, Field(ge=1, le=1000)]] = 20,
        n_eigs: Annotated[int, Field(ge=5, le=100)] = 8,
        lr: Optional[Annotated[float, Field(gt=0)]] = None,
        chunk_mb: Annotated[float, Field(gt=0, le=65536)] = 64.0,
        max_size: Annotated[int, Field(ge=2, le=20000)] = 2048,
        n_coeffs: Annotated[int, Field(ge=3)] = 40,
        min_rel: Annotated[float, Field(ge=0, le=1)] = 0.05,
        eps: Eps = 0.1,
        agree_at: Annotated[float, Field(ge=0, le=1)] = 0.9,
        name: str = "ntk",
    ):
        n, c = data.y.shape
        if n * c > max_size:
            raise ConfigError(f"probe.{name}: the kernel would be {n * c}×{n * c} ({n} points × {c} outputs; "
                              f"{(n * c) ** 2 * 8 / 2**20:.0f} MiB, an eigendecomposition per observation); "
                              f"use fewer points, or raise probe.{name}.max_size")
        self.every, self.per_decade, self.n_eigs, self.lr, self.name = every, per_decade, n_eigs, lr, name
        self.chunk_bytes = int(chunk_mb * 2**20)
        self.eps, self.agree_at = eps, agree_at
        self.optimizer = optimizer
        self.y = np.asarray(data.y, dtype=float)
        self.grid = bool(getattr(data, "uniform", False)) and data.x.shape[1] == 1
        if self.grid:
            target = spectral.dft(self.y)
            self.ks = spectral.peaks(target, n_coeffs, min_rel)
            self.rows = spectral.dft_rows(n, self.ks)
            self.target_at_peaks = self.rows @ self.y
        self.initial = None  # {"step", "K", "H", "r0"}: what the prediction starts from (kept in checkpoints)
        self.steps: list[int] = []
        self.deltas: list[np.ndarray] = []  # measured Δ_F at the peaks, per observation
        self.losses: list[float] = []  # measured loss, per observation
        self.kernel_steps: list[int] = []
        self.eigs: list[np.ndarray] = []  # top n_eigs per kernel
        self.eig_freqs: list[np.ndarray] = []  # dominant frequency of each leading eigenvector (grid only)
        self.drifts: list[float] = []
        self._loss = None  # the run's loss function (not kept in checkpoints: the next observation sets it)
        self._linear = None  # ntk.Linearisation of the first kernel, made when the prediction is needed

    # -- during training -------------------------------------------------------------------
    def observe(self, step, view) -> dict:
        import torch

        obj = view.objective
        out = view.output
        self._loss = obj.loss_fn
        self.steps.append(step)
        self.losses.append(float(obj.loss_fn(torch.tensor(out), torch.tensor(self.y))))
        if self.grid:
            self.deltas.append(self._delta(out))
        if self.initial is not None and step % self.every:
            return {}
        theta = view.theta.detach().to(device=obj.device, dtype=obj.dtype)
        k = ntk.kernel(obj.forward, theta, obj.x, self.chunk_bytes)
        if self.initial is None:
            hess = ntk.loss_hessian(obj.loss_fn, torch.tensor(out), torch.tensor(self.y))
            self.initial = {"step": step, "K": k, "H": hess, "r0": (out - self.y).reshape(-1)}
        spec = ntk.spectrum(k, self.n_eigs)
        d = ntk.drift(k, self.initial["K"])
        self.kernel_steps.append(step)
        self.eigs.append(spec.eigenvalues[: self.n_eigs])
        self.drifts.append(d)
        metrics = {f"eig/{i + 1}": float(v) for i, v in enumerate(spec.eigenvalues[: self.n_eigs])}
        metrics |= {"condition": spec.condition, "effective_rank": spec.effective_rank, "drift": d}
        if self.grid:
            freqs = ntk.dominant_frequency(spec.eigenvectors, *self.y.shape)
            self.eig_freqs.append(freqs)
            metrics |= {f"eigvec_k/{i + 1}": float(f) for i, f in enumerate(freqs)}
            metrics["eig_freq_order"] = verdict.spearman(np.arange(len(freqs)), freqs)
        return metrics

    def _delta(self, out: np.ndarray) -> np.ndarray:
        return spectral.delta_at(self.rows @ out, self.target_at_peaks)

    # -- the prediction --------------------------------------------------------------------
    def rule(self) -> tuple[float, bool, str]:
        """(learning rate, exact, description) of the step rule the prediction follows."""
        import torch

        from fpdsl.optim import TorchOptimizer

        opt = self.optimizer
        limit = self.linearisation().stable_lr
        own = opt.lr if isinstance(opt, TorchOptimizer) else None
        gd = isinstance(opt, TorchOptimizer) and opt.cls is torch.optim.SGD and not any(
            opt.hyper.get(k) for k in ("momentum", "weight_decay"))
        if gd and self.lr is None:
            return own, True, f"gradient descent, lr {own:g}: this run's own step rule, linearised at step {self.initial['step']}"
        what = "gradient descent" if gd else (
            f"{opt.cls.__name__}" if isinstance(opt, TorchOptimizer) else type(opt).__name__ if opt is not None else "?")
        if self.lr is not None:
            lr, source = self.lr, f"probe.{self.name}.lr"
        elif own is not None:
            lr, source = min(own, limit), "the optimizer's lr" + (" capped at 1/λ_max" if own > limit else "")
        else:
            lr, source = limit, "1/λ_max(K_0 H)"
        exact = gd and math.isclose(lr, own)
        if exact:
            return lr, True, f"gradient descent, lr {lr:g}: this run's own step rule, linearised at step {self.initial['step']}"
        return lr, False, (f"reference: gradient descent with lr {lr:g} ({source}) over the same steps; this run uses "
                           f"{what}, which the linearisation does not describe")

    def linearisation(self) -> ntk.Linearisation:
        """The linearised network of the first kernel (decomposed once)."""
        if self._linear is None:
            self._linear = ntk.Linearisation(self.initial["K"], self.initial["H"])
        return self._linear

    def predicted(self, flow: bool = False, lr: float | None = None) -> np.ndarray:
        """Predicted outputs (T, n, c) at the observed steps (lr: the rule's, when not given)."""
        lr = self.rule()[0] if lr is None else lr
        t = np.asarray(self.steps, dtype=float) - self.initial["step"]
        r = self.linearisation().residuals(self.initial["r0"], lr, t, flow=flow)
        return r.reshape(len(t), *self.y.shape) + self.y

    def finish(self, title: str = ""):
        import torch

        from fpdsl.probes import ProbeResult

        if self.initial is None:
            return ProbeResult(line="no kernel was computed")
        lr, exact, rule = self.rule()
        steps = np.asarray(self.steps)
        out = self.predicted(lr=lr)
        flow_out = self.predicted(flow=True, lr=lr)
        metrics = {"lr": lr, "exact": float(exact), "final_drift": self.drifts[-1], "max_drift": float(np.nanmax(self.drifts))}
        first = self.eigs[0]
        metrics |= {f"initial_eig/{i + 1}": float(v) for i, v in enumerate(first)}
        tags = {"prediction": rule}
        arrays = {"steps": steps, "kernel_steps": np.asarray(self.kernel_steps), "eigenvalues": np.asarray(self.eigs),
                  "drift": np.asarray(self.drifts), "loss_measured": np.asarray(self.losses),
                  "initial_kernel_eigenvalues": ntk.spectrum(self.initial["K"], 1).eigenvalues,
                  "output_predicted_last": out[-1]}
        if self._loss is not None:
            y = torch.tensor(self.y)
            arrays["loss_predicted"] = np.array([float(self._loss(torch.tensor(o), y)) for o in out])
        figures, line = {}, f"prediction: {'exact' if exact else 'reference'} GD, lr {lr:.3g}; drift {self.drifts[-1]:.3f}"
        if self.grid and len(self.ks):
            meas = np.asarray(self.deltas)
            pred = np.stack([self._delta(o) for o in out])
            flow = np.stack([self._delta(o) for o in flow_out])
            agree, agree_flow = ntk.agreement(pred, meas), ntk.agreement(flow, meas)
            moved = any(_moved(d) for d in (meas, pred))
            if not moved:
                verdict_ = "undetermined (neither the run nor the prediction moved a peak to half its Δ_F)"
            else:
                verdict_ = "agrees" if agree >= self.agree_at else "departs"
            j = verdict.judge(self.ks, steps, pred, self.eps)
            labels = [f"k{k}" for k in self.ks]
            metrics |= {"agreement": agree, "agreement_flow": agree_flow, "predicted_n_converged": float(j.n_converged),
                        "predicted_fp_order": j.order}
            metrics |= {f"predicted_converge_step/{lab}": float(c) for lab, c in zip(labels, j.converge)}
            if self.eig_freqs:
                metrics["initial_eig_freq_order"] = verdict.spearman(np.arange(len(self.eig_freqs[0])), self.eig_freqs[0])
                arrays["eigvec_k"] = np.asarray(self.eig_freqs)
            tags |= {"verdict": verdict_, "predicted_verdict": j.verdict}
            arrays |= {"peaks": self.ks, "delta_measured": meas, "delta_predicted": pred, "delta_flow": flow,
                       "predicted_converge_step": j.converge}
            from fpdsl.figures import heatmap_panels

            kind = "linearised GD" if exact else "GD reference"
            figures["prediction"] = heatmap_panels(
                steps, {"measured": meas, f"predicted ({kind}, lr {lr:.3g})": pred}, self.ks,
                title=f"{title + chr(10) if title else ''}Δ_F measured and predicted from the NTK at step "
                      f"{self.initial['step']}: agreement {agree:.2f} ({verdict_})",
                cbar_label="Δ_F (clipped to [0.1, 1])", ylabel="peak k")
            line = f"{verdict_}, agreement {agree:.2f} with the {'exact' if exact else 'reference'} GD prediction " \
                   f"(lr {lr:.3g}); kernel drift {self.drifts[-1]:.3f}"
        else:
            tags["verdict"] = "undetermined (Δ_F needs 1-D inputs on a uniform grid; the kernel's statistics are logged)"
        return ProbeResult(metrics=metrics, tags=tags, figures=figures, arrays=arrays, line=line)


def _moved(deltas: np.ndarray) -> bool:
    """Some peak's Δ_F fell to half its first value."""
    d = np.asarray(deltas, dtype=float)
    return bool(len(d) > 1 and np.any(d[-1] <= 0.5 * d[0]))
