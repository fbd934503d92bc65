"""torch.optim family: any torch.optim optimizer, its hyperparameters directly under `optimizer`.

    optimizer=adam optimizer.lr=0.01 optimizer.betas=[0.9,0.99]

`algorithm` names the class (a subclass of torch.optim.Optimizer); every other key is one
of that class's own arguments, checked against its signature before anything runs.
"""
from __future__ import annotations

import inspect
import typing
from typing import Literal

import torch

from fpdsl.errors import ConfigError

OWN = ("algorithm", "dtype")


def optimizer_class(algorithm: str, key: str = "optimizer.algorithm"):
    from hydra.utils import get_object

    try:
        cls = get_object(algorithm)
    except Exception:
        raise ConfigError(f"{key}: cannot import {algorithm!r}; name a torch.optim class, e.g. torch.optim.Adam") from None
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"{key}: {algorithm!r} is not a torch.optim.Optimizer subclass; e.g. torch.optim.AdamW")
    return cls


class TorchOptimizer:
    family = "torch"

    def __init__(self, algorithm: str = "torch.optim.Adam", dtype: Literal["float32", "float64"] = "float32",
                 **hyperparameters):
        self.cls = optimizer_class(algorithm)
        self.algorithm = algorithm
        self.hyper = hyperparameters
        self.dtype = dtype
        try:  # torch checks its hyperparameters when built: do it now, before any compute
            self.make([torch.zeros(1, requires_grad=True)])
        except (ValueError, TypeError, RuntimeError) as e:
            words = {"learning rate": "lr", "beta": "betas", "epsilon": "eps", "weight_decay": "weight_decay",
                     "momentum": "momentum", "alpha": "alpha", "dampening": "dampening"}
            bad = next((k for k in hyperparameters if k in str(e)), None) or next(
                (k for w, k in words.items() if w in str(e).lower() and k in hyperparameters), None)
            key = f"optimizer.{bad}" if bad else "optimizer"
            raise ConfigError(f"{key}: {self.cls.__name__} refused it ({e})") from None
        self._opt = None
        self._resume = None

    @classmethod
    def config_signature(cls, node: dict):
        """The keys this node may have, with their annotations: fpdsl's own and those of the
        chosen torch optimizer's constructor (fpdsl.schema checks a node against these)."""
        target = optimizer_class(str(node.get("algorithm", "torch.optim.Adam")))
        own = {k: p for k, p in inspect.signature(cls).parameters.items() if k in OWN}
        theirs = {k: p for k, p in inspect.signature(target).parameters.items()
                  if k != "params" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        try:
            hints = typing.get_type_hints(target.__init__)
        except Exception:
            hints = {}
        hints = {k: v for k, v in hints.items() if k in theirs}
        hints |= {k: v for k, v in typing.get_type_hints(cls.__init__).items() if k in own}
        return own | theirs, hints

    def make(self, params):
        return self.cls(params, **self.hyper)

    @property
    def lr(self) -> float | None:
        lr = self.hyper.get("lr", inspect.signature(self.cls).parameters.get("lr", None))
        lr = getattr(lr, "default", lr)
        return float(lr) if isinstance(lr, (int, float)) else None

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
