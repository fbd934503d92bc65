"""scipy.optimize.minimize family (CG, BFGS, L-BFGS-B, Powell, Nelder-Mead, ...).

Runs in float64 with zero-copy numpy↔torch. OpenBLAS (used by scipy's own linear
algebra) is held to `blas_threads` while torch keeps its pool: two pools spinning on
the same cores made L-BFGS-B many times slower (see benchmarks/).
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Annotated, Any, Literal, Optional

import numpy as np
import torch
from pydantic import Field

# above this many parameters scipy's dense BFGS update (P×P products) dominates the run
DENSE_BFGS_WARN = 2000
_EVAL_OPTION = {"powell": "maxfev", "nelder-mead": "maxfev", "l-bfgs-b": "maxfun", "tnc": "maxfun"}


class _OutOfEvals(Exception):
    pass


class ScipyOptimizer:
    def __init__(
        self,
        method: str = "L-BFGS-B",
        jac: bool = True,
        options: Optional[dict[str, Any]] = None,
        blas_threads: Optional[Annotated[int, Field(ge=1)]] = 1,
        dtype: Literal["float32", "float64"] = "float64",
    ):
        self.method = method
        self.jac = jac
        self.options = dict(options or {})
        self.blas_threads = blas_threads
        self.dtype = dtype

    def run(self, objective, budget, on_step):
        from scipy.optimize import minimize
        from threadpoolctl import threadpool_limits

        method = self.method.lower()
        if method == "bfgs" and objective.n_params > DENSE_BFGS_WARN:
            warnings.warn(
                f"optimizer=bfgs keeps a dense {objective.n_params}×{objective.n_params} inverse Hessian; "
                "above ~2000 parameters its update dominates the run: use optimizer=lbfgsb",
                stacklevel=2,
            )
        options = dict(self.options)
        if budget.max_steps:
            options.setdefault("maxiter", budget.max_steps)
        if budget.max_evals and method in _EVAL_OPTION:
            options.setdefault(_EVAL_OPTION[method], budget.max_evals)

        best = {"x": objective.theta0.detach().cpu().double().numpy().copy(), "f": np.inf}
        raw = objective.loss_grad_numpy if self.jac else objective.loss_numpy

        def fun(x):
            if budget.max_evals and objective.n_evals >= budget.max_evals:
                raise _OutOfEvals
            out = raw(x)
            f = out[0] if self.jac else out
            if f < best["f"]:
                best["f"], best["x"] = f, x.copy()
            return out

        step = 0

        def callback(intermediate_result):
            nonlocal step
            step += 1
            x = torch.from_numpy(np.ascontiguousarray(intermediate_result.x)).to(objective.device)
            if on_step(step, x, objective.n_evals, float(intermediate_result.fun)):
                raise StopIteration

        limit = threadpool_limits(self.blas_threads, user_api="blas") if self.blas_threads else nullcontext()
        with limit:
            try:
                res = minimize(fun, best["x"].copy(), jac=self.jac, method=self.method, callback=callback, options=options)
                x = res.x
            except _OutOfEvals:
                x = best["x"]
        return torch.from_numpy(np.ascontiguousarray(x)).to(objective.device)

