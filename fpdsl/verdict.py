"""F-Principle verdicts that need evidence (docs/science.md, "Verdicts").

From a history of errors Δ (T recorded steps × K frequencies: Δ_F at DFT peaks, |A − 1|
of a sine's amplitude, e_low / e_high of a filter) one run gets:

- converge steps at ε: the first recorded step with Δ ≤ ε (NaN: never), and how many of
  the K frequencies converged;
- the verdict at ε: "holds" needs at least two converged frequencies, converge steps
  non-decreasing with frequency among them, no unconverged frequency below a converged
  one, and some order to see (not every frequency converged at the same step); "partial" (ordered otherwise) or "reversed" (Spearman order < 0) with
  at least two converged; "undetermined" with one; "not fitted" with none;
- the order at ε: Spearman correlation of frequency against converge step (unconverged
  ranked last), NaN with fewer than two converged; the same at every ε of a list;
- two orders that need no threshold, so a run that fits nothing fully still says
  whether low frequencies moved first: against the time-averaged log Δ, and against the
  first step at which Δ fell to half its first recorded value;
- the opposite claim, "bias removed": every frequency converged, with converge steps
  within a factor `removed_factor` of each other (on the step + 1 axis).

+1 always means "low frequencies first".
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

VERDICT_CODE = {"holds": 1.0, "partial": 0.0, "reversed": -1.0}  # sortable; undetermined / not fitted: NaN


@dataclass
class Judgement:
    converge: np.ndarray  # (K,) first step with Δ ≤ ε, NaN when never
    n_converged: int
    n_freqs: int
    order: float  # Spearman at ε (NaN with < 2 converged)
    verdict: str
    order_mean_log: float
    order_halving: float
    halving: np.ndarray  # (K,) first step with Δ ≤ Δ(first)/2, NaN when never
    by_eps: dict = field(default_factory=dict)  # ε → order
    bias: str = "undetermined"  # removed | not removed | undetermined
    spread: float = float("nan")  # (max + 1) / (min + 1) of the converge steps when all converged

    @property
    def line(self) -> str:
        text = f"F-Principle {self.verdict} ({self.n_converged}/{self.n_freqs} converged"
        if np.isfinite(self.order):
            text += f", order {self.order:+.2f}"
        if np.isfinite(self.order_halving):
            text += f", halving order {self.order_halving:+.2f}"
        return text + f"); bias {self.bias}"


def spearman(x, y) -> float:
    """Spearman correlation with ties averaged (+inf in y ranks last); NaN when undefined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return float("nan")
    from scipy.stats import spearmanr  # here: scipy.stats takes ~0.6 s to import, after training

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        return float(spearmanr(x, y).statistic)


def converge_steps(steps, deltas, eps: float) -> np.ndarray:
    """First recorded step with Δ ≤ eps per column of deltas (T, K); NaN where never."""
    steps = np.asarray(steps, dtype=float)
    deltas = np.asarray(deltas, dtype=float)
    if deltas.size == 0:
        return np.full(deltas.shape[1] if deltas.ndim == 2 else 0, np.nan)
    hit = deltas <= eps
    first = np.argmax(hit, axis=0)
    return np.where(hit.any(axis=0), steps[first], np.nan)


def order_at(freqs, conv) -> float:
    """Spearman of frequency against converge step, unconverged last; NaN with < 2 converged."""
    conv = np.asarray(conv, dtype=float)
    if np.isfinite(conv).sum() < 2:
        return float("nan")
    return spearman(freqs, np.where(np.isfinite(conv), conv, np.inf))


def verdict_of(freqs, conv) -> str:
    freqs, conv = np.asarray(freqs, dtype=float), np.asarray(conv, dtype=float)
    ok = np.isfinite(conv)
    n = int(ok.sum())
    if n == 0:
        return "not fitted"
    if n == 1:
        return "undetermined"
    order = np.argsort(freqs, kind="stable")
    f, c, k = freqs[order], conv[order], ok[order]
    ordered = bool(np.all(np.diff(c[k]) >= 0))
    gaps = (~k).any() and f[~k].min() < f[k].max()  # an unconverged frequency below a converged one
    informative = bool(np.ptp(c[k]) > 0 or (~k).any())  # all converged at one step and nothing left: no order
    if ordered and not gaps:
        return "holds" if informative else "undetermined"
    return "reversed" if order_at(freqs, conv) < 0 else "partial"


def time_mean_log(steps, deltas) -> np.ndarray:
    """Per column, the average of log Δ over the recorded steps (trapezoid on the step axis)."""
    steps = np.asarray(steps, dtype=float)
    logd = np.log(np.maximum(np.asarray(deltas, dtype=float), 1e-12))
    if len(steps) < 2 or steps[-1] <= steps[0]:
        return logd.mean(axis=0)
    w = np.diff(steps)
    return ((logd[1:] + logd[:-1]) / 2 * w[:, None]).sum(axis=0) / w.sum()


def halving_steps(steps, deltas) -> np.ndarray:
    """First recorded step at which Δ fell to half its first recorded value (NaN: never)."""
    deltas = np.asarray(deltas, dtype=float)
    if deltas.shape[0] == 0:
        return np.full(deltas.shape[1], np.nan)
    return converge_steps(steps, deltas / np.maximum(deltas[:1], 1e-300), 0.5)


def judge(freqs, steps, deltas, eps: float = 0.1, eps_list=(), removed_factor: float = 2.0) -> Judgement:
    freqs = np.asarray(freqs, dtype=float)
    deltas = np.asarray(deltas, dtype=float).reshape(len(steps), len(freqs))
    conv = converge_steps(steps, deltas, eps)
    n = int(np.isfinite(conv).sum())
    halving = halving_steps(steps, deltas)
    mean_log = time_mean_log(steps, deltas) if len(steps) else np.full(len(freqs), np.nan)
    j = Judgement(
        converge=conv, n_converged=n, n_freqs=len(freqs), order=order_at(freqs, conv), verdict=verdict_of(freqs, conv),
        order_mean_log=spearman(freqs, mean_log) if len(steps) >= 2 else float("nan"),
        order_halving=spearman(freqs, np.where(np.isfinite(halving), halving, np.inf)) if np.isfinite(halving).any() else float("nan"),
        halving=halving,
        by_eps={e: order_at(freqs, converge_steps(steps, deltas, e)) for e in eps_list},
    )
    if len(freqs) >= 2:
        if n == len(freqs):
            j.spread = float((conv.max() + 1) / (conv.min() + 1))
            j.bias = "removed" if j.spread <= removed_factor else "not removed"
        else:
            j.bias = "not removed"
    return j


def metrics_of(j: Judgement, labels) -> dict:
    """MLflow metrics of a judgement (never-converged as NaN plus a 0/1 `converged/…` flag)."""
    m = {
        "fp_order": j.order, "fp_holds": float(j.verdict == "holds"), "fp_verdict_code": VERDICT_CODE.get(j.verdict, np.nan),
        "fp_order_mean_log": j.order_mean_log, "fp_order_halving": j.order_halving,
        "n_converged": float(j.n_converged), "n_freqs": float(j.n_freqs),
        "bias_removed": {"removed": 1.0, "not removed": 0.0}.get(j.bias, np.nan), "converge_spread": j.spread,
    }
    for label, c, h in zip(labels, j.converge, j.halving):
        m[f"converge_step/{label}"] = float(c)
        m[f"converged/{label}"] = float(np.isfinite(c))
        m[f"halving_step/{label}"] = float(h)
    for e, o in j.by_eps.items():
        m[f"fp_order/eps{e:g}"] = o
    return m


def tags_of(j: Judgement) -> dict:
    return {"fp_verdict": j.verdict, "bias_verdict": j.bias,
            "fp_evidence": f"{j.n_converged}/{j.n_freqs} converged"}


def arrays_of(j: Judgement) -> dict:
    return {"converge_step": j.converge, "halving_step": j.halving}
