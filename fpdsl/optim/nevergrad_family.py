"""nevergrad family: any optimizer in nevergrad's registry, by name, with batched ask/tell.

Breadth over speed: nevergrad keeps Python objects per candidate. For PSO/DE/ES at the
speed of the batched forward pass use the population engine (fpdsl.optim.population).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import numpy as np
import torch
from pydantic import Field

from fpdsl.errors import ConfigError


class NevergradOptimizer:
    family = "nevergrad"

    def __init__(
        self,
        name: str = "PSO",
        batch: Annotated[int, Field(ge=1)] = 50,
        sigma: Optional[Annotated[float, Field(gt=0)]] = 0.1,
        dtype: Literal["float32", "float64"] = "float32",
    ):
        import nevergrad as ng

        if name not in ng.optimizers.registry:
            close = [k for k in ng.optimizers.registry if k.lower() == name.lower()]
            hint = f"did you mean {close[0]!r}?" if close else "see nevergrad.optimizers.registry for the names"
            raise ConfigError(f"optimizer.name={name!r} is not a nevergrad optimizer; {hint}")
        self.name = name
        self.batch = batch
        self.sigma = sigma
        self.dtype = dtype

    def run(self, objective, budget, on_step):
        import nevergrad as ng

        _cma_without_tpa()
        theta0 = objective.theta0.detach().cpu().numpy().astype(np.float64)
        param = ng.p.Array(init=theta0)
        if self.sigma is not None:
            param.set_mutation(sigma=self.sigma)
        param.random_state = np.random.RandomState(int(torch.initial_seed()) % (2**32))
        total = budget.max_evals or (budget.max_steps or 1000) * self.batch
        opt = ng.optimizers.registry[self.name](parametrization=param, budget=total, num_workers=self.batch)

        best_x, best_f, step, left = objective.theta0.clone(), float("inf"), 0, budget.max_evals
        while left is None or left > 0:
            k = self.batch if left is None else min(self.batch, left)  # the last batch fits the budget
            cands = [opt.ask() for _ in range(k)]
            thetas = torch.from_numpy(np.stack([c.value for c in cands]))
            losses = objective.population_loss(thetas).double().cpu().numpy()
            losses[np.isnan(losses)] = np.inf
            for c, f in zip(cands, losses):
                opt.tell(c, float(f))
            if left is not None:
                left -= k
            i = int(np.argmin(losses))
            if losses[i] < best_f:
                best_f, best_x = float(losses[i]), thetas[i].to(objective.theta0)
            step += 1
            if on_step(step, best_x, objective.n_evals, best_f):
                break
        return best_x


def _cma_without_tpa():
    """cma switches to its TPA step-size rule at 300+ dimensions; nevergrad's batched
    ask/tell then loses TPA's mirrored samples and CMA (and NGOpt, which picks it)
    stops with "Mean shift samples are expected but missing". CSA has no such samples."""
    try:
        import cma.evolution_strategy as es
    except ImportError:
        return
    es.TPA_dimension = float("inf")
