"""Models. Each takes in_dim and out_dim from the dataset; the rest comes from config."""
from __future__ import annotations

import math
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
    """σ(scale · x) for a named activation (scale: SIREN's ω0; 1 elsewhere)."""

    def __init__(self, name: str, scale: float = 1.0):
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name]
        self.scale = float(scale)

    def forward(self, x):
        return self.fn(x if self.scale == 1.0 else self.scale * x)

    def extra_repr(self):
        return self.name if self.scale == 1.0 else f"{self.name}, scale={self.scale:g}"


class MLP(nn.Sequential):
    """in_dim → width (× depth hidden layers, activation after each) → out_dim.

    init_std: every weight and bias ~ N(0, init_std²); init_gamma: std = width^(-γ)
    (the condensation regime; std, not variance, as in the authors' code). Neither:
    PyTorch's default (uniform ±1/√fan_in).

    localized: [low, high] of a 1-D input's domain: the first layer's units start as the
    interior basis of the finite-element space on width + 1 equal cells of that interval,
    unit k as σ((x − x_k)/h) with h = (high − low)/(width + 1) and x_k = low + k h, so a hat
    unit's support [x_k, x_k + 2h] lies inside the domain and a ReLU unit has its kink
    there. With PyTorch's default initialisation on a domain like [0, 1) the first-layer
    hats are wider than the data, and the network is a ReLU network there (docs/science.md).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: Annotated[int, Field(ge=1)] = 200,
        depth: Annotated[int, Field(ge=1)] = 1,
        activation: Activation = "tanh",
        init_std: Optional[Annotated[float, Field(gt=0)]] = None,
        init_gamma: Optional[Annotated[float, Field(ge=0, le=20)]] = None,
        bias: bool = True,
        localized: Optional[Annotated[list[float], Field(min_length=2, max_length=2)]] = None,
    ):
        if init_std is not None and init_gamma is not None:
            raise ConfigError("model.init_std and model.init_gamma both set; keep one (or neither for PyTorch's default)")
        if localized is not None:
            if in_dim != 1:
                raise ConfigError(f"model.localized: needs 1-D inputs, the data have {in_dim}; remove it")
            if not localized[1] > localized[0]:
                raise ConfigError(f"model.localized: [low, high] with high > low, got {list(localized)}")
            if not bias:
                raise ConfigError("model.localized: needs the first layer's bias; set model.bias=true")
        layers, d = [], in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width, bias=bias), Act(activation)]
            d = width
        layers.append(nn.Linear(d, out_dim, bias=bias))
        super().__init__(*layers)
        _normal_init(self, _init_std(init_std, init_gamma, width))
        if localized is not None:
            low, high = map(float, localized)
            h = (high - low) / (width + 1)
            with torch.no_grad():
                self[0].weight.fill_(1.0 / h)
                self[0].bias.copy_(-(low + h * torch.arange(width, dtype=self[0].bias.dtype)) / h)


def _init_std(init_std, init_gamma, width):
    if init_std is not None and init_gamma is not None:
        raise ConfigError("model.init_std and model.init_gamma both set; keep one (or neither for the model's default)")
    return init_std if init_gamma is None else float(width) ** (-init_gamma)


def _normal_init(module: nn.Module, std: Optional[float]) -> None:
    if std is not None:
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, std)


class FourierMap(nn.Module):
    """γ(v) = [cos(2πBv), sin(2πBv)] with a fixed B (m, d) ~ N(0, σ²).

    B is a buffer, not a parameter: no optimizer moves it. It is drawn from torch's
    global generator, which the runner seeds, so `seed` fixes it.
    """

    def __init__(self, in_dim: int, n_features: int, sigma: float):
        super().__init__()
        self.register_buffer("B", sigma * torch.randn(n_features, in_dim))

    def forward(self, x):
        z = (2 * torch.pi) * (x @ self.B.T)
        return torch.cat([torch.cos(z), torch.sin(z)], dim=-1)


class FourierFeatures(nn.Sequential):
    """Gaussian Fourier feature mapping (Tancik et al. 2020), then an MLP on the 2m features:
    in_dim → 2·n_features → width (× depth) → out_dim. The MLP's options are mlp's."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        n_features: Annotated[int, Field(ge=1)] = 256,
        sigma: Annotated[float, Field(gt=0)] = 10.0,
        width: Annotated[int, Field(ge=1)] = 256,
        depth: Annotated[int, Field(ge=1)] = 3,
        activation: Activation = "relu",
        init_std: Optional[Annotated[float, Field(gt=0)]] = None,
        init_gamma: Optional[Annotated[float, Field(ge=0, le=20)]] = None,
        bias: bool = True,
    ):
        fmap = FourierMap(in_dim, n_features, sigma)  # drawn first: B depends on the seed alone
        mlp = MLP(2 * n_features, out_dim, width, depth, activation, init_std, init_gamma, bias)
        super().__init__(fmap, *mlp)


class Siren(nn.Sequential):
    """SIREN (Sitzmann et al. 2020): depth layers sin(ω0 (Wx + b)), then a linear output.

    First layer W ~ U(−1/n_in, 1/n_in); later layers (output included)
    W ~ U(−√(6/n_in)/ω0, √(6/n_in)/ω0); biases keep PyTorch's default, as in the authors' code.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: Annotated[int, Field(ge=1)] = 256,
        depth: Annotated[int, Field(ge=1)] = 3,
        omega0: Annotated[float, Field(gt=0)] = 30.0,
    ):
        layers, d = [], in_dim
        for i in range(depth):
            layers += [nn.Linear(d, width), Act("sin", scale=omega0)]
            d = width
        layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)
        with torch.no_grad():
            linears = [m for m in self if isinstance(m, nn.Linear)]
            for i, lin in enumerate(linears):
                n_in = lin.in_features
                bound = 1.0 / n_in if i == 0 else math.sqrt(6.0 / n_in) / omega0
                lin.weight.uniform_(-bound, bound)


class ScaledLinear(nn.Linear):
    """a_k (w_k · x) + b_k: neuron k sees the input scaled by a fixed a_k (a buffer)."""

    def __init__(self, in_features: int, out_features: int, scales: torch.Tensor, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("scales", scales)

    def forward(self, x):
        out = F.linear(x, self.weight) * self.scales
        return out if self.bias is None else out + self.bias


class MScale(nn.Sequential):
    """Multi-scale DNN (MscaleDNN, Liu, Cai & Xu): the first hidden layer's width neurons are
    split into len(scales) near-equal groups, group i sees the input scaled by scales[i];
    later layers (depth − 1 more hidden layers) are plain. Default activation: sReLU."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: Annotated[int, Field(ge=1)] = 200,
        depth: Annotated[int, Field(ge=1)] = 1,
        scales: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = (1, 2, 4, 8, 16, 32),
        activation: Activation = "srelu",
        init_std: Optional[Annotated[float, Field(gt=0)]] = None,
        init_gamma: Optional[Annotated[float, Field(ge=0, le=20)]] = None,
        bias: bool = True,
    ):
        if width < len(scales):
            raise ConfigError(f"model.width ({width}) is smaller than the number of model.scales ({len(scales)}); "
                              "give every scale at least one neuron")
        groups = torch.tensor_split(torch.arange(width), len(scales))
        a = torch.cat([torch.full((len(g),), float(s)) for g, s in zip(groups, scales)])
        layers = [ScaledLinear(in_dim, width, a, bias=bias), Act(activation)]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width, bias=bias), Act(activation)]
        layers.append(nn.Linear(width, out_dim, bias=bias))
        super().__init__(*layers)
        _normal_init(self, _init_std(init_std, init_gamma, width))


class TwoLayer(nn.Sequential):
    """h(x) = Σ_k a_k σ(w_k·x + b_k): one hidden layer, no output bias (Zhou et al. 2021).

    Default initialisation: every parameter ~ N(0, std²) with std = width^(−init_gamma),
    γ = 4 as in the authors' notebook; std, not variance, as in their code (their text
    writes N(0, 1/m^γ)). init_std sets the std directly instead.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: Annotated[int, Field(ge=1)] = 50,
        activation: Activation = "tanh",
        init_gamma: Optional[Annotated[float, Field(ge=0, le=20)]] = 4.0,
        init_std: Optional[Annotated[float, Field(gt=0)]] = None,
    ):
        super().__init__(nn.Linear(in_dim, width), Act(activation), nn.Linear(width, out_dim, bias=False))
        _normal_init(self, _init_std(init_std, init_gamma, width))
