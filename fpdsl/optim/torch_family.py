"""torch.optim family: any torch.optim optimizer given as a partial in config."""
from __future__ import annotations

from typing import Any, Literal

import torch

from fpdsl.errors import ConfigError


class TorchOptimizer:
    def __init__(self, optimizer: Any, dtype: Literal["float32", "float64"] = "float32"):
        self.make = optimizer  # functools.partial(torch.optim.X, lr=...) from Hydra's _partial_
        self.dtype = dtype
        try:  # torch checks its hyper-parameters when built: do it now, before any compute
            optimizer([torch.zeros(1, requires_grad=True)])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"optimizer.optimizer: {e}; fix the value under optimizer.optimizer") from None

    def run(self, objective, budget, on_step):
        theta = objective.theta0.clone().requires_grad_(True)
        opt = self.make([theta])

        def closure():
            opt.zero_grad(set_to_none=False)
            value = objective.loss(theta)
            value.backward()
            return value

        step = 0
        while True:
            value = opt.step(closure)  # loss at the iterate before the step
            step += 1
            if on_step(step, theta.detach(), objective.n_evals, value.item()):
                return theta.detach()
