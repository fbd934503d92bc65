"""Vectorised population engine: PSO, DE and SNES with the whole population as one (S, P) tensor.

Each generation is a handful of in-place tensor operations and one batched loss call
through the objective, on the objective's device, so training runs at the speed of
the batched forward pass (benchmarks/bench.py measures the ratio). Chosen over EvoX
and evotorch on the evidence in the README (the same ratio, fewer dependencies, and
PSO, DE and an ES under one call shape).

Every engine starts from the model's initialisation θ0 (member 0 exactly at θ0, the
rest at θ0 + N(0, init_spread²)), reports the best member seen so far, never takes a
NaN loss for an improvement, and never evaluates past budget.max_evals: the last
generation is cut to the evaluations left.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, Optional

import numpy as np
import torch
from pydantic import Field

PositiveFloat = Annotated[float, Field(gt=0)]


class _Random:
    """The engines' random numbers, seeded from torch's seed (the run's `seed`).

    Draws come in blocks covering several generations when a generation needs few
    numbers, so one call's fixed cost is shared. Uniform fields on CPU (PSO's r1, r2;
    DE's crossover mask) are made from numpy's SFC64 raw bits: torch's CPU generator is
    a serial mt19937 at ~3 ns a number, ~10% of a batched forward pass at S·P = 10⁵;
    this costs under a third of that. On GPU torch's own generator is fast.
    """

    BLOCK = 1 << 18  # numbers per draw, at most (about 1 MB); at least one generation's
    GENERATIONS = 32  # generations per draw, at most

    def __init__(self, device):
        seed = int(torch.initial_seed())
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.bits = np.random.SFC64(seed) if self.device.type == "cpu" else None
        self.blocks = {}

    def uniform(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """U(0, 1) on a grid of 2^16 values (k + ½) / 2^16: PSO's weights and DE's crossover
        test need no finer grid, and 16 raw bits a number halve the generator's work."""
        if self.bits is None:
            return torch.empty(shape, device=self.device, dtype=dtype).uniform_(generator=self.gen)
        n = math.prod(shape)
        raw = torch.from_numpy(self.bits.random_raw((n + 3) // 4).view(np.int16)[:n]).view(shape)  # [-2^15, 2^15)
        # into a buffer kept per shape, so an engine has at most one uniform stream of a
        # shape (its block is used up before the next is drawn); converted by copy_:
        # torch.mul(int16, float) takes a slow casting path (3×)
        key = (shape, dtype)
        if key not in self.blocks:
            self.blocks[key] = torch.empty(shape, dtype=dtype)
        return self.blocks[key].copy_(raw).mul_(2.0**-16).add_(0.5 + 2.0**-17)

    def normal(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, device=self.device, dtype=dtype).normal_(generator=self.gen)

    def randint(self, low: int, high: int, size: tuple) -> torch.Tensor:
        return torch.randint(low, high, size, generator=self.gen, device=self.device)

    def stream(self, draw, shape: tuple, dtype: torch.dtype):
        """Endless per-generation draws `draw(shape, dtype)`, made several generations at a time."""
        k = max(1, min(self.GENERATIONS, self.BLOCK // max(math.prod(shape), 1)))
        while True:
            yield from draw((k, *shape), dtype).unbind(0)


class _Population:
    """What every engine shares: budgeted batched evaluation and the best member so far."""

    def __init__(self, objective, budget, on_step):
        self.objective, self.on_step = objective, on_step
        self.left = budget.max_evals  # evaluations this run may still spend (None: no limit)
        self.best_x, self.best_f = objective.theta0.clone(), math.inf
        self.step = 0

    def initial(self, size: int, spread: float, rand: _Random) -> torch.Tensor:
        theta0 = self.objective.theta0
        noise = rand.normal((size, theta0.numel()), theta0.dtype)
        noise[0] = 0
        return noise.mul_(spread).add_(theta0)

    def evaluate(self, x: torch.Tensor, nan_as_inf: bool = True) -> torch.Tensor:
        """Losses of the rows of x, (S,); rows past the budget are not evaluated and get +inf.
        nan_as_inf=False leaves NaN for a caller whose comparisons already reject it."""
        S = x.shape[0]
        if self.left is not None and self.left < S:
            f = torch.full((S,), math.inf, device=x.device, dtype=x.dtype)
            if self.left > 0:
                f[: self.left] = self.objective.population_loss(x[: self.left])
            self.left = 0
        else:
            f = self.objective.population_loss(x)
            if self.left is not None:
                self.left -= S
        return f.nan_to_num_(nan=math.inf) if nan_as_inf else f

    def track(self, x: torch.Tensor, f: torch.Tensor, i: int | None = None) -> None:
        """Keep row i of x (default: f's smallest) if its loss beats the best so far."""
        if f.device.type == "cpu":  # (S,) is small: numpy's calls cost a third of torch's on CPU
            fn = f.numpy()
            i = int(fn.argmin()) if i is None else i
            fi = float(fn[i])
        else:
            i = int(f.argmin()) if i is None else i
            fi = float(f[i])
        if fi < self.best_f:
            self.best_f = fi
            self.best_x = x[i].clone()

    def report(self) -> bool:
        """One generation done: tell the caller; True when the run should stop."""
        self.step += 1
        stop = self.on_step(self.step, self.best_x, self.objective.n_evals, self.best_f)
        return bool(stop) or self.left == 0


class PSO:
    """Particle swarm: v ← ω v + c1 r1 (p_best − x) + c2 r2 (g_best − x), x ← x + v.

    Velocities start at zero; max_velocity clamps each component of v.
    """

    def __init__(
        self,
        popsize: Annotated[int, Field(ge=2)] = 50,
        inertia: Annotated[float, Field(ge=0)] = 0.7298,
        cognitive: Annotated[float, Field(ge=0)] = 1.49618,
        social: Annotated[float, Field(ge=0)] = 1.49618,
        init_spread: Annotated[float, Field(ge=0)] = 0.1,
        max_velocity: Optional[PositiveFloat] = None,
        dtype: Literal["float32", "float64"] = "float32",
    ):
        self.popsize, self.w, self.c1, self.c2 = popsize, inertia, cognitive, social
        self.init_spread, self.vmax, self.dtype = init_spread, max_velocity, dtype

    @torch.no_grad()
    def run(self, objective, budget, on_step):
        pop = _Population(objective, budget, on_step)
        rand = _Random(objective.theta0.device)
        x = pop.initial(self.popsize, self.init_spread, rand)
        f = pop.evaluate(x)
        pbest, pf = x.clone(), f
        pop.track(x, f)
        v = torch.zeros_like(x)
        draws = rand.stream(rand.uniform, (2, *x.shape), x.dtype)
        diff = torch.empty_like(x)
        better = torch.empty(x.shape[0], device=x.device, dtype=x.dtype)
        better_rows = better.view(-1, 1)  # the same numbers, one per row of x
        while not pop.report():
            r1, r2 = next(draws).unbind(0)
            v.mul_(self.w)
            v.addcmul_(r1, torch.sub(pbest, x, out=diff), value=self.c1)
            v.addcmul_(r2, torch.sub(pop.best_x, x, out=diff), value=self.c2)
            if self.vmax is not None:
                v.clamp_(-self.vmax, self.vmax)
            x.add_(v)
            f = pop.evaluate(x, nan_as_inf=False)
            torch.lt(f, pf, out=better)  # 1.0 where improved (NaN never is)
            torch.fmin(f, pf, out=pf)  # NaN-ignoring minimum
            pbest.lerp_(x, better_rows)  # lerp is exact at weights 0 and 1
            pop.track(pbest, pf)
        return pop.best_x


class DE:
    """Differential evolution with binomial crossover, one trial vector per member.

    strategy: best1 (v = x_best + F (x_r1 − x_r2)), rand1 (v = x_r3 + F (x_r1 − x_r2)) or
    current_to_best1 (v = x + F (x_best − x) + F (x_r1 − x_r2)); r1, r2, r3 distinct and
    not the member itself. Each component of the trial comes from v with probability
    `crossover`, and one random component always does. A trial replaces its member when
    its loss is not worse.
    """

    def __init__(
        self,
        popsize: Annotated[int, Field(ge=4)] = 50,
        strategy: Literal["best1", "rand1", "current_to_best1"] = "best1",
        differential_weight: Annotated[float, Field(gt=0, le=2)] = 0.5,
        crossover: Annotated[float, Field(ge=0, le=1)] = 0.9,
        init_spread: Annotated[float, Field(ge=0)] = 0.1,
        dtype: Literal["float32", "float64"] = "float32",
    ):
        self.popsize, self.strategy, self.F, self.CR = popsize, strategy, differential_weight, crossover
        self.init_spread, self.dtype = init_spread, dtype

    @torch.no_grad()
    def run(self, objective, budget, on_step):
        pop = _Population(objective, budget, on_step)
        rand = _Random(objective.theta0.device)
        S, F = self.popsize, self.F
        x = pop.initial(S, self.init_spread, rand)
        f = pop.evaluate(x)
        pop.track(x, f)
        picks = rand.stream(lambda shape, _: _distinct_others(rand, shape), (3, S), None)
        masks = rand.stream(lambda shape, dtype: _crossover_masks(rand, shape, dtype, self.CR), x.shape, x.dtype)
        diff = torch.empty_like(x)
        replace = torch.empty(S, device=x.device, dtype=x.dtype)
        replace_rows = replace.view(-1, 1)
        while not pop.report():
            r = next(picks).unbind(0)
            v = x.index_select(0, r[0]).sub_(x.index_select(0, r[1]))
            if self.strategy == "best1":
                torch.add(pop.best_x, v, alpha=F, out=v)
            elif self.strategy == "rand1":
                torch.add(x.index_select(0, r[2]), v, alpha=F, out=v)
            else:
                v.mul_(F).add_(torch.sub(pop.best_x, x, out=diff), alpha=F).add_(x)
            trial = torch.where(next(masks), v, x, out=v)
            ft = pop.evaluate(trial, nan_as_inf=False)
            torch.le(ft, f, out=replace)  # 1.0 where the trial is no worse (never NaN)
            x.lerp_(trial, replace_rows)  # exact at weights 0 and 1
            torch.fmin(ft, f, out=f)
            pop.track(x, f)
        return pop.best_x


def _distinct_others(rand: _Random, shape: tuple) -> torch.Tensor:
    """(k, 3, S): per generation r1, r2, r3, in every row distinct and not the row itself."""
    k, _, S = shape
    k1 = rand.randint(1, S, (k, S))
    k2 = rand.randint(1, S - 1, (k, S))
    k2 += k2 >= k1
    lo, hi = torch.minimum(k1, k2), torch.maximum(k1, k2)
    k3 = rand.randint(1, S - 2, (k, S))
    k3 += k3 >= lo
    k3 += k3 >= hi
    rows = torch.arange(S, device=k1.device)
    return torch.stack([(k1 + rows) % S, (k2 + rows) % S, (k3 + rows) % S], dim=1)


def _crossover_masks(rand: _Random, shape: tuple, dtype, rate: float) -> torch.Tensor:
    """True where a trial's component comes from the mutant: with probability `rate`,
    and always at one random component per row."""
    k, S, P = shape
    u = rand.uniform(shape, dtype)
    return u.scatter_(2, rand.randint(0, P, (k, S, 1)), -1.0) < rate


class SNES:
    """Separable natural evolution strategy (Schaul et al. 2011): a Gaussian N(μ, diag σ²).

    Each generation samples popsize members μ + σ ∘ s, ranks them, and moves
    μ ← μ + lr_mean · σ ∘ Σ u_k s_k and σ ← σ ∘ exp(lr_sigma/2 · Σ u_k (s_k² − 1)) with
    the usual rank utilities u_k. μ starts at θ0, σ at init_spread; lr_sigma null is
    (3 + ln P) / (5 √P). mirrored: sample ±s pairs (halves the variance of the mean's step).
    """

    def __init__(
        self,
        popsize: Annotated[int, Field(ge=2)] = 50,
        init_spread: PositiveFloat = 0.1,
        lr_mean: PositiveFloat = 1.0,
        lr_sigma: Optional[PositiveFloat] = None,
        mirrored: bool = True,
        dtype: Literal["float32", "float64"] = "float32",
    ):
        self.popsize, self.init_spread, self.lr_mean, self.lr_sigma = popsize, init_spread, lr_mean, lr_sigma
        self.mirrored, self.dtype = mirrored, dtype

    def _samples(self, rand: _Random, z: torch.Tensor) -> torch.Tensor:
        """z (S, P) filled with standard normal directions; mirrored: the first S//2 rows
        negate the next S//2. One generation a draw: normal_ on a contiguous block."""
        half = z.shape[0] // 2 if self.mirrored else 0
        z[half:].normal_(generator=rand.gen)
        if half:
            torch.neg(z[half : 2 * half], out=z[:half])
        return z

    @torch.no_grad()
    def run(self, objective, budget, on_step):
        pop = _Population(objective, budget, on_step)
        theta0 = objective.theta0
        rand = _Random(theta0.device)
        S, P = self.popsize, theta0.numel()
        lr_sigma = self.lr_sigma or (3 + math.log(P)) / (5 * math.sqrt(P))
        rank = torch.arange(1, S + 1, device=theta0.device, dtype=theta0.dtype)
        util = (math.log(S / 2 + 1) - rank.log()).clamp_(min=0)
        util = util / util.sum() - 1.0 / S  # best first
        mu, sigma = theta0.clone(), torch.full_like(theta0, self.init_spread)
        weights = torch.empty(S, device=theta0.device, dtype=theta0.dtype)
        s = torch.empty((S, P), device=theta0.device, dtype=theta0.dtype)  # this generation's directions
        x = torch.empty_like(s)
        while True:
            self._samples(rand, s)
            torch.addcmul(mu, sigma, s, out=x)
            f = pop.evaluate(x)
            # numpy sorts S numbers in a tenth of torch's call on CPU
            order = torch.from_numpy(f.numpy().argsort()) if f.device.type == "cpu" else torch.argsort(f)
            pop.track(x, f, int(order[0]))
            weights.scatter_(0, order, util)
            mu.addcmul_(sigma, weights @ s, value=self.lr_mean)
            # Σ u_k (s_k² − 1) = Σ u_k s_k², the utilities summing to zero
            sigma.mul_((weights @ s.square_()).mul_(lr_sigma / 2).exp_())
            if pop.report():
                return pop.best_x
