"""Models. Each takes in_dim and out_dim from the dataset; the rest comes from config."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from fpdsl.errors import ConfigError


def _hat(x):
    # piecewise-linear B-spline: x on [0, 1], 2 - x on [1, 2], 0 elsewhere
    return torch.relu(x) - 2 * torch.relu(x - 1) + torch.relu(x - 2)


ACTIVATIONS = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "sin": torch.sin,
    "xtanh": lambda x: x * torch.tanh(x),
    "x2tanh": lambda x: x * x * torch.tanh(x),
    "hat": _hat,
    "srelu": lambda x: torch.relu(x) * torch.relu(1 - x),
}
Activation = Literal["tanh", "relu", "sigmoid", "softplus", "sin", "xtanh", "x2tanh", "hat", "srelu"]


class Act(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name]

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self):
        return self.name


class MLP(nn.Sequential):
    """in_dim → width (× depth hidden layers, activation after each) → out_dim.

    init_std: every weight and bias ~ N(0, init_std²); init_gamma: std = width^(-γ)
    (the condensation regime; std, not variance, as in the authors' code). Neither:
    PyTorch's default (uniform ±1/√fan_in).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: Annotated[int, Field(ge=1)] = 200,
        depth: Annotated[int, Field(ge=1)] = 1,
        activation: Activation = "tanh",
        init_std: Optional[Annotated[float, Field(gt=0)]] = None,
        init_gamma: Optional[float] = None,
        bias: bool = True,
    ):
        if init_std is not None and init_gamma is not None:
            raise ConfigError("model.init_std and model.init_gamma both set; keep one (or neither for PyTorch's default)")
        layers, d = [], in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width, bias=bias), Act(activation)]
            d = width
        layers.append(nn.Linear(d, out_dim, bias=bias))
        super().__init__(*layers)
        std = init_std if init_gamma is None else float(width) ** (-init_gamma)
        if std is not None:
            with torch.no_grad():
                for p in self.parameters():
                    p.normal_(0.0, std)
