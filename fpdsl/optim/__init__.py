"""Optimizer adapters, one per family, all with the same call:

    run(objective, budget, on_step)

on_step(step, theta_best, n_evals, loss) is called after every iteration of the family
(one gradient step, one quasi-Newton iteration, one swarm generation) and returns True
to stop. Budgets are enforced by the caller through on_step; adapters only use them
to size what their library needs up front, and `budget.stop()` (True once a signal asked
the run to stop) where a library runs many evaluations between two steps.
"""
from dataclasses import dataclass
from typing import Callable, Optional

from fpdsl.optim.nevergrad_family import NevergradOptimizer
from fpdsl.optim.population import DE, PSO, SNES
from fpdsl.optim.scipy_family import ScipyOptimizer
from fpdsl.optim.torch_family import TorchOptimizer


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Budget:
    max_steps: Optional[int]
    max_evals: Optional[int]
    stop: Callable[[], bool] = _never


__all__ = ["Budget", "DE", "NevergradOptimizer", "PSO", "SNES", "ScipyOptimizer", "TorchOptimizer"]
