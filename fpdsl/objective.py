"""The objective: dataset + model + loss over one flat parameter vector θ.

Every optimizer family talks only to this. It answers loss(θ), loss and gradient(θ)
(also as numpy, zero-copy, for scipy) and the loss of a whole population Θ[S, P]
in one batched call, and counts every loss evaluation.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call


class Objective:
    def __init__(self, model, x, y, loss, dtype=torch.float32, device="cpu", chunk: int | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype)
        self.x = torch.as_tensor(x, dtype=dtype, device=self.device)
        self.y = torch.as_tensor(y, dtype=dtype, device=self.device)
        self.loss_fn = loss
        named = [(n, p) for n, p in self.model.named_parameters()]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.theta0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self.n_params = self.theta0.numel()
        # population chunk: keep the (S, n, width) activations within ~256 MiB
        self.chunk = chunk
        self.n_evals = 0

    # -- parameters ---------------------------------------------------------
    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of θ (..., P) as the model's parameters, leading axes kept."""
        lead = theta.shape[:-1]
        parts = torch.split(theta, self.sizes, dim=-1)
        return {n: t.reshape(*lead, *s) for n, t, s in zip(self.names, parts, self.shapes)}

    def load(self, theta: torch.Tensor) -> None:
        """Copy θ into the model's own parameters (for probes that read the module)."""
        torch.nn.utils.vector_to_parameters(theta.detach().to(self.dtype), self.model.parameters())

    # -- evaluation ---------------------------------------------------------
    def forward(self, theta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return functional_call(self.model, self.unflatten(theta), (self.x if x is None else x,))

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        self.n_evals += 1
        return self.loss_fn(self.forward(theta), self.y)

    def loss_numpy(self, x: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.loss(self._from_numpy(x)))

    def loss_grad_numpy(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        theta = self._from_numpy(x).requires_grad_(True)
        value = self.loss(theta)
        (grad,) = torch.autograd.grad(value, theta)
        return value.item(), grad.cpu().numpy()

    def _from_numpy(self, x: np.ndarray) -> torch.Tensor:
        # zero-copy on CPU when dtypes agree (scipy works in float64, so does the objective then)
        return torch.from_numpy(np.asarray(x, dtype=np.float64 if self.dtype == torch.float64 else np.float32)).to(self.device)

    @torch.no_grad()
    def population_loss(self, thetas: torch.Tensor) -> torch.Tensor:
        """Loss of every row of Θ (S, P) in batched calls; returns (S,)."""
        thetas = thetas.to(device=self.device, dtype=self.dtype)
        S = thetas.shape[0]
        self.n_evals += S
        chunk = self.chunk or self._auto_chunk()
        outs = [self._batched_loss(thetas[i : i + chunk]) for i in range(0, S, chunk)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _batched_loss(self, thetas: torch.Tensor) -> torch.Tensor:
        h = torch.vmap(lambda p: functional_call(self.model, p, (self.x,)))(self.unflatten(thetas))
        return self.loss_fn(h, self.y)

    def _auto_chunk(self) -> int:
        widest = max(max(s) for s in self.shapes)
        per_member = self.x.shape[0] * widest * self.x.element_size() * 4
        return max(1, int((256 << 20) // max(per_member, 1)))

    @torch.no_grad()
    def output(self, theta: torch.Tensor, x: torch.Tensor | None = None) -> np.ndarray:
        """The network's output on the dataset (not counted as a loss evaluation)."""
        return self.forward(theta.to(self.dtype), x).cpu().double().numpy()

