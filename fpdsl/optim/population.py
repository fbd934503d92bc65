"""Vectorised population engine: the whole swarm is one (S, P) tensor updated in place.

Each generation is one batched loss call through the objective, so training runs at
the speed of the batched forward pass (benchmarks/ measures the ratio).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field


def _generator(device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(torch.initial_seed()))
    return g


class PSO:
    """Particle swarm: v ← ω v + c1 r1 (p_best − x) + c2 r2 (g_best − x), x ← x + v.

    The swarm starts at θ0 + N(0, init_spread²) (particle 0 exactly at θ0, so the
    model's initialisation is in the swarm); velocities start at zero.
    """

    def __init__(
        self,
        popsize: Annotated[int, Field(ge=2)] = 50,
        inertia: Annotated[float, Field(ge=0)] = 0.7298,
        cognitive: Annotated[float, Field(ge=0)] = 1.49618,
        social: Annotated[float, Field(ge=0)] = 1.49618,
        init_spread: Annotated[float, Field(ge=0)] = 0.1,
        max_velocity: Optional[Annotated[float, Field(gt=0)]] = None,
        dtype: Literal["float32", "float64"] = "float32",
    ):
        self.popsize, self.w, self.c1, self.c2 = popsize, inertia, cognitive, social
        self.init_spread, self.vmax, self.dtype = init_spread, max_velocity, dtype

    @torch.no_grad()
    def run(self, objective, budget, on_step):
        theta0 = objective.theta0
        S, P = self.popsize, theta0.numel()
        gen = _generator(theta0.device)
        x = theta0.expand(S, P).clone()
        x[1:] += self.init_spread * torch.randn(S - 1, P, generator=gen, device=x.device, dtype=x.dtype)
        v = torch.zeros_like(x)
        f = objective.population_loss(x)
        pbest, pf = x.clone(), f.clone()
        i = int(torch.argmin(pf))
        gbest, gf = pbest[i].clone(), float(pf[i])
        r1, r2 = torch.empty_like(x), torch.empty_like(x)
        step = 0
        while True:
            r1.uniform_(generator=gen)
            r2.uniform_(generator=gen)
            v.mul_(self.w).add_(self.c1 * r1 * (pbest - x)).add_(self.c2 * r2 * (gbest - x))
            if self.vmax is not None:
                v.clamp_(-self.vmax, self.vmax)
            x.add_(v)
            f = objective.population_loss(x)
            better = f < pf
            pf = torch.where(better, f, pf)
            pbest = torch.where(better[:, None], x, pbest)
            i = int(torch.argmin(pf))
            if float(pf[i]) < gf:
                gbest, gf = pbest[i].clone(), float(pf[i])
            step += 1
            if on_step(step, gbest, objective.n_evals, gf):
                return gbest
