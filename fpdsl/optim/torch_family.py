"""torch.optim family: any torch.optim optimizer given as a partial in config."""
from __future__ import annotations

from typing import Any, Literal

import torch

from fpdsl.errors import ConfigError


class TorchOptimizer:
    family = "torch"

    def __init__(self, optimizer: Any, dtype: Literal["float32", "float64"] = "float32"):
        self.make = optimizer  # functools.partial(torch.optim.X, lr=...) from Hydra's _partial_
        self.dtype = dtype
        try:  # torch checks its hyper-parameters when built: do it now, before any compute
            optimizer([torch.zeros(1, requires_grad=True)])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"optimizer.optimizer: {e}; fix the value under optimizer.optimizer") from None
        self._opt = None
        self._resume = None

    def state(self) -> dict | None:
        """The optimizer's own state (moments, L-BFGS history) for a checkpoint."""
        return None if self._opt is None else {"optimizer": self._opt.state_dict()}

    def load_state(self, state: dict) -> None:
        self._resume = state

    def run(self, objective, budget, on_step):
        theta = objective.theta0.clone().requires_grad_(True)
        opt = self._opt = self.make([theta])
        if self._resume is not None:
            opt.load_state_dict(self._resume["optimizer"])

        def closure():
            opt.zero_grad(set_to_none=False)
            value = objective.loss(theta)
            value.backward()
            return value

        step = 0
        if isinstance(opt, torch.optim.LBFGS):  # evaluates the closure several times a step
            while True:
                value = opt.step(closure)  # loss at the iterate before the step
                step += 1
                if on_step(step, theta.detach(), objective.n_evals, value.item()):
                    return theta.detach()
        # One evaluation a step, made before the step is reported: the loss logged at step t
        # is that of θ_t, and the probes reuse its forward pass (Objective.output).
        closure()  # θ_0's gradient, for the first step
        if self._resume is not None:
            objective.n_evals -= 1  # the checkpoint's θ was evaluated, and counted, before it was saved
        while True:
            opt.step()
            step += 1
            value = closure()
            if on_step(step, theta.detach(), objective.n_evals, value.item()):
                return theta.detach()
