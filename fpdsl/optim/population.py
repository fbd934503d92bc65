"""Vectorised population engine: PSO, DE and SNES with the whole population as one (S, P) tensor.

Each generation is one batched loss call through the objective, on the objective's
device, and the engine's update: on CPU one compiled call (fpdsl.optim.kernels), on GPU
a handful of in-place tensor operations. Training runs at about the speed of the batched
forward pass (benchmarks/bench.py measures the ratio). Chosen over EvoX and evotorch on
the evidence in docs/performance.md (a better ratio, fewer dependencies, and PSO, DE and
an ES under one call shape).

Every engine starts from the model's initialisation θ0 (member 0 exactly at θ0, the
rest at θ0 + N(0, init_spread²)), reports the best member seen so far, never takes a
NaN loss for an improvement, and never evaluates past budget.max_evals: the last
generation is cut to the evaluations left.
"""
from __future__ import annotations

import itertools
import math
from typing import Annotated, Literal, Optional

import numpy as np
import torch
from pydantic import Field

PositiveFloat = Annotated[float, Field(gt=0)]


class _Random:
    """The engines' random numbers, seeded from torch's seed (the run's `seed`).

    On CPU the kernels' uniform integers come from SplitMix64 (fpdsl.optim.kernels), 16
    bits a number, written for each generation into one buffer by the kernel that reads
    it: numpy's SFC64 drawing blocks of several generations cost 3-4× as much per
    number, and its blocks were out of cache by the time a kernel read them (torch's CPU
    generator, a serial mt19937, is slower still). Normals (kernels.normals) and DE's random
    rows and components (kernels.de_draws) come from the same stream; on GPU every draw is
    torch's.
    """

    BLOCK = 1 << 17  # random indices per draw on GPU, at most; at least one generation's
    GENERATIONS = 32  # generations per draw, at most

    def __init__(self, device, seed: int | None = None):
        seed = int(torch.initial_seed()) if seed is None else int(seed)
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        # SplitMix64's state: the seed through numpy's SeedSequence, so nearby seeds start far apart
        self.state = np.random.SeedSequence(seed).generate_state(1, np.uint64)

    def normal_(self, out: torch.Tensor) -> torch.Tensor:
        """out ← standard normals: on CPU Box–Muller on SplitMix64 in one compiled call
        (kernels.normals, 2-3× torch's normal_ at every size and fewer cache misses between
        two forward passes), on GPU (or for another dtype than float32 and float64) torch's."""
        if (self.device.type != "cpu" or out.dtype not in (torch.float32, torch.float64)
                or not out.is_contiguous()):
            return out.normal_(generator=self.gen)
        from fpdsl.optim import kernels

        kernels.normals(self.state, out.view(-1).numpy())
        return out

    def uniform(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen, device=self.device, dtype=dtype)

    def randint(self, low: int, high: int, size: tuple) -> torch.Tensor:
        return torch.randint(low, high, size, generator=self.gen, device=self.device)

    def generations(self, shape: tuple) -> int:
        """How many generations of `shape` one block covers."""
        return max(1, min(self.GENERATIONS, self.BLOCK // max(math.prod(shape), 1)))

    def raw16(self, shape: tuple) -> tuple:
        """(state, words, raw) for a compiled kernel that draws a generation's uniforms itself
        (CPU): kernels.splitmix64(words, state) refills raw, numpy uint16 of `shape` uniform
        in [0, 2¹⁶), a view of words (drawn inside the generation's call: as a call of its own
        a draw cost 1-2 µs more a generation at 50 × 50)."""
        n = math.prod(shape)
        words = np.empty(-(-n // 4), np.uint64)
        return self.state, words, words.view(np.uint16)[:n].reshape(shape)

    def de_draws(self, S: int, P: int) -> tuple:
        """(state, words, picks, raw, forced) for DE's compiled kernels, which draw a generation's
        numbers themselves (CPU): kernels.de_draws(state, words, picks, forced, P) refills picks
        (3, S): r1, r2, r3 of each row, distinct and not the row; raw (S, P) uint16 uniforms, a
        view of words; forced (S,) in [0, P) (torch's integers in blocks of generations had
        cost DE 4 µs a generation more at 50 × 50)."""
        words = np.empty(2 * S + -(-S * P // 4), np.uint64)
        raw = words[2 * S:].view(np.uint16)[: S * P].reshape(S, P)
        return self.state, words, np.empty((3, S), np.int64), raw, np.empty(S, np.int64)


def drive(search, evaluate):
    """Run an engine's search generator, evaluating each population it yields with evaluate
    (a batched loss); returns the engine's best θ. fpdsl.batch drives several at once."""
    try:
        with torch.no_grad():
            x = next(search)
            while True:
                x = search.send(evaluate(x))
    except StopIteration as done:
        return done.value


def _fused(device: torch.device) -> bool:
    """Whether the engines' update runs as fpdsl.optim.kernels (CPU) or as torch calls."""
    return device.type == "cpu"


def _kernel(name: str):
    """The compiled kernels.<name>, or its twin split over torch's threads (kernels.<name>_parallel,
    the same numbers) where there is one and fpdsl.fused.parallel allows."""
    from fpdsl.fused import parallel
    from fpdsl.optim import kernels

    twin = getattr(kernels, name + "_parallel", None)
    return twin if twin is not None and parallel(torch.get_num_threads()) else getattr(kernels, name)


class _Population:
    """What every engine shares: budgeted batched evaluation and the best member so far."""

    def __init__(self, objective, budget, on_step, alone=False):
        self.objective, self.on_step, self.alone = objective, on_step, alone
        self.kernels = None  # the engine's compiled [prepare, step, whole generation: False none, None not known yet]
        self.left = budget.max_evals  # evaluations this run may still spend (None: no limit)
        self.best_x, self.best_f = objective.theta0.clone(), math.inf
        self.step = 0

    def initial(self, size: int, spread: float, rand: _Random) -> torch.Tensor:
        theta0 = self.objective.theta0
        noise = rand.normal_(torch.empty((size, theta0.numel()), dtype=theta0.dtype, device=theta0.device))
        noise[0] = 0
        return noise.mul_(spread).add_(theta0)

    def evaluate(self, x: torch.Tensor, nan_as_inf: bool = True):
        """Losses of the rows of x, (S,), as a generator step: it yields the rows to evaluate
        and receives their losses (`yield from pop.evaluate(x)`); rows past the budget are not
        evaluated and get +inf. nan_as_inf=False leaves NaN for a caller whose comparisons
        already reject it."""
        S = x.shape[0]
        if self.left is not None and self.left < S:
            f = torch.full((S,), math.inf, device=x.device, dtype=x.dtype)
            if self.left > 0:
                f[: self.left] = yield x[: self.left]
            self.left = 0
        else:
            f = yield x
            if self.left is not None:
                self.left -= S
        return f.nan_to_num_(nan=math.inf) if nan_as_inf else f

    def generation(self, engine: str, x, state: tuple, f: np.ndarray):
        """One CPU generation as a generator step (`yield from`): the engine's compiled
        kernels.<engine>_prepare(*state) makes the members into x, then their evaluation, then
        kernels.<engine>_step(*state, losses); returns whether the best improved. A run
        evaluated by its own objective (`alone`; a batched group's member is evaluated with
        the others) on fpdsl.fused's loss does all three in one compiled call instead
        (kernels.<engine>_generation, the losses into f), while the budget holds a whole
        generation."""
        if self.kernels is None:
            self.kernels = [_kernel(engine + "_prepare"), _kernel(engine + "_step"), None if self.alone else False]
        prepare, step, whole = self.kernels
        o = self.objective
        if whole is None and o.variant is not None:  # the first evaluation chose the objective's variant
            data, target = o._fused_data
            whole = self.kernels[2] = o.variant.fused and (
                _kernel(engine + "_generation"), (data, target[0], o.shapes[0][0]), x.shape[0])
        if whole and self.take(whole[2]):
            return whole[0](*state, f, *whole[1])
        prepare(*state)
        losses = yield from self.evaluate(x, nan_as_inf=False)
        return step(*state, losses.numpy())

    def take(self, S: int) -> bool:
        """Count a generation of S evaluated inside a compiled step, if the budget holds all of
        it (else it goes through evaluate, which cuts it to the budget)."""
        if self.left is not None:
            if self.left < S:
                return False
            self.left -= S
        self.objective.n_evals += S
        return True

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

    def best_arrays(self):
        """The best so far as arrays a compiled step updates in place: (θ (P,), [loss]); when
        the step says it improved, `took_best` makes them the best so far."""
        self._best, self._best_f = self.best_x.clone(), np.array([self.best_f])
        return self._best.numpy(), self._best_f

    def took_best(self) -> None:
        self.best_f, self.best_x = float(self._best_f[0]), self._best.clone()

    def report(self) -> bool:
        """One generation done: tell the caller; True when the run should stop."""
        self.step += 1
        stop = self.on_step(self.step, self.best_x, self.objective.n_evals, self.best_f)
        return bool(stop) or self.left == 0


class PSO:
    """Particle swarm: v ← ω v + c1 r1 (p_best − x) + c2 r2 (g_best − x), x ← x + v.

    Velocities start at zero; max_velocity clamps each component of v.
    """

    family = "population"

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

    def run(self, objective, budget, on_step):
        return drive(self.search(objective, budget, on_step, alone=True), objective.population_loss)

    def search(self, objective, budget, on_step, alone=False):
        pop = _Population(objective, budget, on_step, alone)
        rand = _Random(objective.theta0.device, getattr(objective, "seed", None))
        x = pop.initial(self.popsize, self.init_spread, rand)
        f = yield from pop.evaluate(x)
        pbest, pf = x.clone(), f.clone()
        pop.track(x, f)
        v = torch.zeros_like(x)
        if _fused(x.device):
            return (yield from self._kernel_loop(pop, rand, x, v, pbest, pf))
        move, keep = self._torch(pop, rand, x, v, pbest, pf)
        while not pop.report():
            move()
            f = yield from pop.evaluate(x, nan_as_inf=False)
            pop.track(pbest, pf, keep(f))
        return pop.best_x

    def _kernel_loop(self, pop, rand, x, v, pbest, pf):
        """The same generations on CPU with one compiled call each (pop.generation: move the
        swarm, evaluate it, keep the members' and the swarm's best)."""
        xn, vn, pn, pfn = x.numpy(), v.numpy(), pbest.numpy(), pf.numpy()
        bn, best_f = pop.best_arrays()
        # the move in the state's dtype, as the torch calls make it (moved in float64, a float32
        # run's generation took about 10 % of its loss's time more)
        t = xn.dtype.type
        state = (xn, vn, pn, pfn, bn, best_f, *rand.raw16((2, *x.shape)), t(self.w), t(self.c1), t(self.c2),
                 t(self.vmax or 0.0))
        f = np.empty_like(pfn)
        while not pop.report():
            if (yield from pop.generation("pso", x, state, f)):
                pop.took_best()
        return pop.best_x

    def _torch(self, pop, rand, x, v, pbest, pf):
        diff = torch.empty_like(x)
        better = torch.empty(x.shape[0], device=x.device, dtype=x.dtype)

        def move():
            r1, r2 = rand.uniform((2, *x.shape), x.dtype)
            v.mul_(self.w)
            v.addcmul_(r1, torch.sub(pbest, x, out=diff), value=self.c1)
            v.addcmul_(r2, torch.sub(pop.best_x, x, out=diff), value=self.c2)
            if self.vmax is not None:
                v.clamp_(-self.vmax, self.vmax)
            x.add_(v)

        def keep(f):
            torch.lt(f, pf, out=better)  # 1.0 where improved (NaN never is)
            torch.fmin(f, pf, out=pf)  # NaN-ignoring minimum
            pbest.lerp_(x, better.view(-1, 1))  # lerp is exact at weights 0 and 1
            return int(pf.argmin())

        return move, keep


class DE:
    """Differential evolution with binomial crossover, one trial vector per member.

    strategy: best1 (v = x_best + F (x_r1 − x_r2)), rand1 (v = x_r3 + F (x_r1 − x_r2)) or
    current_to_best1 (v = x + F (x_best − x) + F (x_r1 − x_r2)); r1, r2, r3 distinct and
    not the member itself. Each component of the trial comes from v with probability
    `crossover`, and one random component always does. A trial replaces its member when
    its loss is not worse.
    """

    STRATEGIES = ("best1", "rand1", "current_to_best1")  # the kernel's strategy codes 0, 1, 2

    family = "population"

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

    def run(self, objective, budget, on_step):
        return drive(self.search(objective, budget, on_step, alone=True), objective.population_loss)

    def search(self, objective, budget, on_step, alone=False):
        pop = _Population(objective, budget, on_step, alone)
        rand = _Random(objective.theta0.device, getattr(objective, "seed", None))
        x = pop.initial(self.popsize, self.init_spread, rand)
        f = yield from pop.evaluate(x)
        pop.track(x, f)
        if _fused(x.device):
            return (yield from self._kernel_loop(pop, rand, x, f))
        trial, select = self._torch(pop, rand, x, f)
        while not pop.report():
            ft = yield from pop.evaluate(trial(), nan_as_inf=False)
            pop.track(x, f, select(ft))
        return pop.best_x

    def _kernel_loop(self, pop, rand, x, f):
        """The same generations on CPU with one compiled call each (pop.generation: make the
        trials, evaluate them, keep those no worse and the population's best)."""
        trials = torch.empty_like(x)
        xn, fn, tn = x.numpy(), f.numpy(), trials.numpy()
        bn, best_f = pop.best_arrays()
        # raw < ⌈CR·2¹⁶⌉ exactly when raw·2⁻¹⁶ < CR: the torch path's test on the same numbers
        rule = (xn.dtype.type(self.F), math.ceil(self.CR * 2**16), self.STRATEGIES.index(self.strategy))
        state = (tn, xn, fn, bn, best_f, *rand.de_draws(*x.shape), *rule)
        ft = np.empty_like(fn)
        while not pop.report():
            if (yield from pop.generation("de", trials, state, ft)):
                pop.took_best()
        return pop.best_x

    def _torch(self, pop, rand, x, f):
        S, P = x.shape
        F, picks = self.F, _distinct_others(rand, S)
        v, diff = torch.empty_like(x), torch.empty_like(x)
        replace = torch.empty(S, device=x.device, dtype=x.dtype)

        def trial():
            r = next(picks)
            torch.sub(x.index_select(0, r[0]), x.index_select(0, r[1]), out=v)
            if self.strategy == "best1":
                torch.add(pop.best_x, v, alpha=F, out=v)
            elif self.strategy == "rand1":
                torch.add(x.index_select(0, r[2]), v, alpha=F, out=v)
            else:
                v.mul_(F).add_(torch.sub(pop.best_x, x, out=diff), alpha=F).add_(x)
            mask = rand.uniform((S, P), x.dtype) < self.CR
            mask.scatter_(1, rand.randint(0, P, (S, 1)), True)
            return torch.where(mask, v, x, out=v)

        def select(ft):
            torch.le(ft, f, out=replace)  # 1.0 where the trial is no worse (never NaN)
            x.lerp_(v, replace.view(-1, 1))  # exact at weights 0 and 1
            torch.fmin(ft, f, out=f)
            return int(f.argmin())

        return trial, select


def _distinct_others(rand: _Random, S: int):
    """Endless (3, S) tensors: per generation r1, r2, r3, in every row distinct and not the
    row itself (the GPU path's; kernels.de_draws is the same on CPU)."""
    k = rand.generations((3, S))
    rows = torch.arange(S, device=rand.device)
    while True:
        k1 = rand.randint(1, S, (k, S))
        k2 = rand.randint(1, S - 1, (k, S))
        k2 += k2 >= k1
        lo, hi = torch.minimum(k1, k2), torch.maximum(k1, k2)
        k3 = rand.randint(1, S - 2, (k, S))
        k3 += k3 >= lo
        k3 += k3 >= hi
        block = torch.stack([(k1 + rows) % S, (k2 + rows) % S, (k3 + rows) % S], dim=1)
        yield from block.unbind(0)


class SNES:
    """Separable natural evolution strategy (Schaul et al. 2011): a Gaussian N(μ, diag σ²).

    Each generation samples popsize members μ + σ ∘ s, ranks them, and moves
    μ ← μ + lr_mean · σ ∘ Σ u_k s_k and σ ← σ ∘ exp(lr_sigma/2 · Σ u_k (s_k² − 1)) with
    the usual rank utilities u_k. μ starts at θ0, σ at init_spread; lr_sigma null is
    (3 + ln P) / (5 √P). mirrored: sample ±s pairs (halves the variance of the mean's step).
    """

    family = "population"

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

    def run(self, objective, budget, on_step):
        return drive(self.search(objective, budget, on_step, alone=True), objective.population_loss)

    def search(self, objective, budget, on_step, alone=False):
        pop = _Population(objective, budget, on_step, alone)
        theta0 = objective.theta0
        rand = _Random(theta0.device, getattr(objective, "seed", None))
        S, P = self.popsize, theta0.numel()
        lr_sigma = self.lr_sigma or (3 + math.log(P)) / (5 * math.sqrt(P))
        rank = torch.arange(1, S + 1, device=theta0.device, dtype=theta0.dtype)
        util = (math.log(S / 2 + 1) - rank.log()).clamp_(min=0)
        util = util / util.sum() - 1.0 / S  # best first
        mu, sigma = theta0.clone(), torch.full_like(theta0, self.init_spread)
        # a generation's directions z: its S − half drawn rows, after the negatives of their
        # first half (mirrored pairs) when mirrored
        half = S // 2 if self.mirrored else 0
        x = torch.empty((S, P), device=theta0.device, dtype=theta0.dtype)
        loop = self._kernel_loop if _fused(theta0.device) else self._torch_loop
        return (yield from loop(pop, rand, mu, sigma, half, x, util, lr_sigma))

    def _kernel_loop(self, pop, rand, mu, sigma, half, x, util, lr_sigma):
        """The generations on CPU with one compiled call each (pop.generation: sample, evaluate,
        rank, keep the best, move μ and σ, draw the next directions). A NaN loss ranks last
        and is never the best."""
        d = x.new_empty((2, len(x) - half, x.shape[1]))  # this generation's drawn rows, the next's
        mun, sn, xn, un, dn = mu.numpy(), sigma.numpy(), x.numpy(), util.numpy(), d.numpy()
        weights, (bn, best_f) = np.empty_like(un), pop.best_arrays()
        rand.normal_(d[0])
        f = np.empty_like(un)
        blocks = max(1, torch.get_num_threads())  # the parallel step's split: one block a thread
        states = [(mun, sn, dn[k], half, un, weights, bn, best_f, xn, self.lr_mean, lr_sigma, dn[1 - k], rand.state,
                   blocks) for k in (0, 1)]  # the directions' two buffers trade places each generation
        for state in itertools.cycle(states):
            if (yield from pop.generation("snes", x, state, f)):
                pop.took_best()
            if pop.report():
                return pop.best_x

    def _torch_loop(self, pop, rand, mu, sigma, half, x, util, lr_sigma):
        weights, z = torch.empty_like(util), torch.empty_like(x)
        while True:
            rand.normal_(z[half:])  # the drawn rows; the first half of them, negated, before them
            torch.neg(z[half : 2 * half], out=z[:half])
            torch.addcmul(mu, sigma, z, out=x)
            f = yield from pop.evaluate(x, nan_as_inf=False)
            order = torch.argsort(f, stable=True)  # ties by index, NaN last: kernels.ranked's order
            pop.track(x, f, int(order[0]))
            weights.scatter_(0, order, util)
            mu.addcmul_(sigma, weights @ z, value=self.lr_mean)
            # Σ u_k (s_k² − 1) = Σ u_k s_k², the utilities summing to zero
            sigma.mul_((weights @ z.square_()).mul_(lr_sigma / 2).exp_())
            if pop.report():
                return pop.best_x
