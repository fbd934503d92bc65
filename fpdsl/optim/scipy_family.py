"""scipy.optimize.minimize family (CG, BFGS, L-BFGS-B, Powell, Nelder-Mead, ...).

Runs in float64 with zero-copy numpy↔torch (scipy's x is viewed as the parameter
tensor; the gradient comes back as a view on torch's buffer). Both thread pools are set
for the run and restored after: OpenBLAS under scipy (blas_threads, via threadpoolctl)
and torch's OpenMP pool (torch_threads), one thread each by default. With both at their
defaults on a 2-core machine the idle pool spins on the cores the other needs: L-BFGS-B
at width 200 ran 14-30× slower. A second OpenBLAS thread never helped (scipy's vector
operations are small). A second torch thread gave 0.9-1.2× at widths 50 and 200 and
1.2-1.7× at width 1000 × 2001 points, but 0.2× with other jobs on the cores (and 0.6×
at width 1000 in one such run), so it is opt-in: optimizer.torch_threads=2, or null for
the run's `threads`.
"""
from __future__ import annotations

import time
import warnings
from contextlib import contextmanager, nullcontext
from typing import Annotated, Any, Literal, Optional

import numpy as np
import torch
from pydantic import Field

# above this many parameters scipy's dense BFGS update (two P×P matrix products per
# iteration) costs more than a loss-and-gradient evaluation of the default problem
# (201 points), and it grows as P³: 0.7× an evaluation at 121 parameters, 1.2-2.6× at
# 151, 35-45× at 601 (width 200), one thread each (benchmarks/bench.py, "bfgs" rows)
DENSE_BFGS_WARN = 130
_EVAL_OPTION = {"powell": "maxfev", "nelder-mead": "maxfev", "l-bfgs-b": "maxfun", "tnc": "maxfun"}


# methods that need a Hessian (or Hessian-vector products), which fpdsl does not give
NEEDS_HESSIAN = {"dogleg", "trust-ncg", "trust-exact", "trust-krylov"}
# options whose type scipy's defaults do not tell (None by default)
INT_OPTIONS = {"maxiter", "maxfev", "maxfun", "maxcor", "maxls", "maxCGit", "iprint"}
FLOAT_OPTIONS = {"gtol", "ftol", "xtol", "xatol", "fatol", "eps", "tol", "xrtol", "norm", "rhobeg", "catol"}


class _OutOfEvals(Exception):
    pass


def check_method(method: str, options: dict) -> None:
    """The method is one of scipy.optimize.minimize's and usable without a Hessian; every
    option is one the method takes, with a value of its type (before the run, naming the key)."""
    import inspect

    from scipy.optimize import _minimize

    from fpdsl.errors import ConfigError

    known = {m.lower(): m for m in _minimize.MINIMIZE_METHODS} if hasattr(_minimize, "MINIMIZE_METHODS") else {}
    m = method.lower()
    if known and m not in known:
        raise ConfigError(f"optimizer.method: {method!r} is not a scipy.optimize.minimize method; "
                          f"use one of {', '.join(sorted(known.values()))}")
    if m in NEEDS_HESSIAN:
        raise ConfigError(f"optimizer.method: {method} needs the Hessian, which fpdsl does not provide; "
                          "use L-BFGS-B, BFGS, CG, Newton-CG or a derivative-free method")
    fn = getattr(_minimize, "_minimize_" + {"nelder-mead": "neldermead", "l-bfgs-b": "lbfgsb", "newton-cg": "newtoncg",
                                            "trust-constr": "trustregion_constr"}.get(m, m.replace("-", "_")), None)
    if fn is None:
        return
    sig = inspect.signature(fn).parameters
    taken = {k: p.default for k, p in sig.items() if p.kind == p.POSITIONAL_OR_KEYWORD and k not in (
        "fun", "func", "x0", "args", "jac", "hess", "hessp", "callback", "bounds", "constraints")}
    for key, value in options.items():
        if key not in taken:
            raise ConfigError(f"optimizer.options.{key}: {method} takes no option {key!r}; it takes "
                              f"{', '.join(sorted(taken))}")
        default = taken[key]
        want = "int" if key in INT_OPTIONS or (type(default) is int) else "float" if key in FLOAT_OPTIONS or (
            type(default) is float) else "bool" if type(default) is bool else None
        bad = (want == "int" and (isinstance(value, bool) or not isinstance(value, int))) or (
            want == "float" and (isinstance(value, bool) or not isinstance(value, (int, float)))) or (
            want == "bool" and not isinstance(value, bool))
        if bad or (want in ("int", "float") and not value >= 0) or (key in INT_OPTIONS - {"iprint"} and value == 0):
            kind = {"int": "a positive integer", "float": "a number ≥ 0", "bool": "true or false"}[want]
            raise ConfigError(f"optimizer.options.{key}: must be {kind} (got {value!r})")


class ScipyOptimizer:
    family = "scipy"

    def __init__(
        self,
        method: str = "L-BFGS-B",
        jac: bool = True,
        options: Optional[dict[str, Any]] = None,
        torch_threads: Optional[Annotated[int, Field(ge=1)]] = 1,
        blas_threads: Optional[Annotated[int, Field(ge=1)]] = 1,
        dtype: Literal["float32", "float64"] = "float64",
    ):
        check_method(method, dict(options or {}))
        self.method = method
        self.jac = jac
        self.options = dict(options or {})
        self.stop_reason = None  # scipy's message, status and iterations when it ended on its own
        self.torch_threads = torch_threads  # None: the run's setting (`threads`, or torch's default)
        self.blas_threads = blas_threads  # None: leave OpenBLAS as it is
        self.dtype = dtype
        self.objective_seconds = 0.0  # time inside the objective during the last run (scipy's own: the rest)

    def run(self, objective, budget, on_step):
        from scipy.optimize import minimize

        method = self.method.lower()
        if method == "bfgs" and objective.n_params > DENSE_BFGS_WARN:
            warnings.warn(
                f"optimizer=bfgs keeps a dense {objective.n_params}×{objective.n_params} inverse Hessian; above "
                f"~{DENSE_BFGS_WARN} parameters its update costs more than the loss and grows as P³: "
                "use optimizer=lbfgsb (same quasi-Newton idea, linear in P)",
                stacklevel=2,
            )
        options = dict(self.options)
        if budget.max_steps:
            options.setdefault("maxiter", budget.max_steps)
        if budget.max_evals and method in _EVAL_OPTION:
            options.setdefault(_EVAL_OPTION[method], budget.max_evals)

        best = {"x": objective.theta0.detach().cpu().double().numpy().copy(), "f": np.inf}
        raw = objective.loss_grad_numpy if self.jac else objective.loss_numpy
        first_eval, inside = objective.n_evals, 0.0

        def fun(x):
            nonlocal inside
            if budget.max_evals and objective.n_evals - first_eval >= budget.max_evals or budget.stop():
                raise _OutOfEvals
            t = time.perf_counter()
            out = raw(x)
            inside += time.perf_counter() - t
            f = out[0] if self.jac else out
            if f < best["f"]:
                best["f"], best["x"] = f, x.copy()
            return out

        step = 0
        stopped = False

        def callback(intermediate_result):
            nonlocal step, stopped
            step += 1
            x = torch.from_numpy(np.ascontiguousarray(intermediate_result.x)).to(objective.device)
            if on_step(step, x, objective.n_evals, float(intermediate_result.fun)):
                stopped = True
                raise StopIteration

        with _threads(self.torch_threads, self.blas_threads):
            try:
                res = minimize(fun, best["x"].copy(), jac=self.jac, method=self.method, callback=callback, options=options)
                x = res.x
                if not stopped:  # scipy ended the run itself (converged, line search failed, its own cap)
                    self.stop_reason = {"message": str(res.message), "status": str(res.status),
                                        "iterations": str(getattr(res, "nit", step)), "success": str(bool(res.success))}
            except _OutOfEvals:
                x = best["x"]
            finally:
                self.objective_seconds = inside
        return torch.from_numpy(np.ascontiguousarray(x)).to(objective.device)


@contextmanager
def _threads(torch_threads, blas_threads):
    """torch's intra-op pool and OpenBLAS held to the given sizes for a block, then restored."""
    from threadpoolctl import threadpool_limits

    saved = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        with threadpool_limits(blas_threads, user_api="blas") if blas_threads else nullcontext():
            yield
    finally:
        torch.set_num_threads(saved)
