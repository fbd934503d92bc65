"""Population engines against the fastest known forward pass and EvoX 1.4's PSO, side by side.

For each (width, population) of the default 1-D problem (sin x + sin 3x + sin 5x, 201
points, tanh MLP 1-width-1), at 2 threads unless --threads says otherwise:

  textbook        the batched forward as one writes it: addcmul (the 1-D input layer),
                  tanh_, baddbmm, the squared error
  kernel fold     fpdsl's batched kernel, tanh as 2σ(2z) − 1 folded into the next layer
  kernel tanh     fpdsl's batched kernel with torch's tanh
  kernel fused    fpdsl.fused: the loss in one compiled pass, tanh as a rational function
  fastest         the best of the four (evaluations per second)
  pso, de, snes   fpdsl's engines (their forward: the variant fpdsl.tuning chose here)
  evox pso        EvoX 1.4's PSO in its StdWorkflow (eager), its Problem calling the same
                  fastest fpdsl forward: what is left is the engine's own cost
  evox pso vmap   EvoX's PSO with a Problem that evaluates the population through
                  torch.vmap(functional_call), as EvoX's neuroevolution problems do
  nevergrad pso   nevergrad's PSO through fpdsl's batched ask/tell (optimizer=pso_ng)

and the tuner's choice: fpdsl.tuning's measurement run afresh 3 times (what a new machine
gets) against every candidate variant timed back to back in interleaved rounds, as an
engine calls it; the claim is the steady rate of each pick ÷ the best candidate's.

Every contender runs slices of generations in interleaved rounds (order shuffled each
round); its rate is the median over rounds of evaluations per second, and an engine's
ratio to the fastest forward is the ratio of the medians. The host's speed drifts by
5-10 % over seconds, so each engine is also timed paired: in each of 7 more rounds a
slice of the fastest forward, of the engine, and of the forward again, the engine's rate ÷
the mean of the two forwards around it; the median of those ratios (and its quartiles) is
the "paired" ratio. (Quarter-length slices would be quicker, but each slice starts a fresh
run, whose set-up then weighs four times as much.) EvoX is optional:
`pip install evox==1.4.0` (it builds on the installed torch).

    python benchmarks/bench_population.py [--quick] [--threads N] [--sizes 50x50,200x200,50x1000]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, save  # noqa: E402
from fpdsl import tuning  # noqa: E402
from fpdsl.data import Sines1D  # noqa: E402
from fpdsl.losses import MSE  # noqa: E402
from fpdsl.models import MLP  # noqa: E402
from fpdsl.objective import Objective  # noqa: E402
from fpdsl.optim import DE, PSO, SNES, Budget, NevergradOptimizer  # noqa: E402


def objective(width, seed=0):
    torch.manual_seed(seed)
    data = Sines1D()
    return Objective(MLP(1, 1, width=width), data.x, data.y, MSE())


def textbook(obj):
    """The batched forward and loss written plainly (1-D input: the first layer is an outer product)."""
    x, y = obj.x, obj.y

    def loss(thetas):
        p = obj.unflatten(thetas)
        h = torch.addcmul(p["0.bias"].unsqueeze(1), x.unsqueeze(0), p["0.weight"].transpose(1, 2)).tanh_()
        out = torch.baddbmm(p["2.bias"].unsqueeze(1), h, p["2.weight"].transpose(1, 2))
        return (out - y).square_().mean(dim=(1, 2))

    return loss


def forward_rate(loss, thetas, gens, clock):
    with torch.no_grad():
        t = clock()
        for _ in range(gens):
            loss(thetas)
        return gens * len(thetas) / (clock() - t)


def engine_rate(make, obj, gens, clock):
    obj.n_evals = 0
    t = clock()
    make().run(obj, Budget(gens, None), lambda step, *a: step >= gens)
    return obj.n_evals / (clock() - t)


def evox_contenders(width, S, gens_of, clock):
    """EvoX's PSO with the same fastest forward, and with a vmap(functional_call) problem."""
    try:
        from evox.algorithms import PSO as EvoxPSO
        from evox.core import Problem
        from evox.workflows import StdWorkflow
    except ImportError:
        return {}
    from torch.func import functional_call

    def build(evaluate):
        obj = objective(width)

        class Fit(Problem):
            def evaluate(self, pop):
                return evaluate(obj, pop)

        theta0 = obj.theta0
        algo = EvoxPSO(pop_size=S, lb=theta0 - 1.0, ub=theta0 + 1.0)
        wf = StdWorkflow(algo, Fit())
        wf.init_step()
        return wf

    def fast(obj, pop):
        return obj.population_loss(pop, count=False)

    def vmapped(obj, pop):
        params = obj.unflatten(pop)
        h = torch.vmap(lambda p: functional_call(obj.model, p, (obj.x,)))(params)
        return (h - obj.y).square().mean(dim=(1, 2))

    def rate(evaluate):
        wf = build(evaluate)

        def run():
            g = gens_of()
            with torch.no_grad():
                t = clock()
                for _ in range(g):
                    wf.step()
                return g * S / (clock() - t)

        return run

    return {"evox pso": rate(fast), "evox pso vmap": rate(vmapped)}


def interleaved(contenders: dict, rounds: int, seed: int) -> dict:
    """Each contender's median over rounds, its order shuffled each round (after one warm call each)."""
    for fn in contenders.values():
        fn()
    rates = {k: [] for k in contenders}
    rng = random.Random(seed)
    for _ in range(rounds):
        for name in rng.sample(list(contenders), len(contenders)):
            rates[name].append(contenders[name]())
    return {k: float(np.median(v)) for k, v in rates.items()}


def paired(engine, forward, rounds: int) -> dict:
    """The engine's rate ÷ the forward's, each round from three adjacent slices (forward, engine,
    forward: the engine against the mean of the two around it), so that the machine's speed,
    which drifts over seconds on a shared host, cancels out of each ratio; the median over
    rounds, with its quartiles and the rounds themselves."""
    ratios = []
    for _ in range(rounds):
        before, rate, after = forward(), engine(), forward()
        ratios.append(2 * rate / (before + after))
    q25, med, q75 = np.quantile(ratios, [0.25, 0.5, 0.75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "rounds": ratios}


def tuner(width, S, quick, clock) -> dict:
    """fpdsl.tuning's fresh picks against the steady rate of every candidate variant."""
    obj = objective(width)
    thetas = obj.theta0 + 0.1 * torch.randn(S, obj.n_params)
    picks = [tuning.measure(obj, thetas) for _ in range(3)]
    variants = tuning.candidates(obj, S)
    if len(variants) == 1:
        return {"picks": [v.name for v in picks], "steady_evals_per_s": {}, "picks_over_best": [1.0] * len(picks)}
    runs = {}
    for v in variants:
        o = objective(width)
        o.variant = v
        runs[v.name] = lambda calls, o=o: forward_rate(lambda th: o.population_loss(th, count=False), thetas, calls, clock)
    calls = max(3, int((0.05 if quick else 0.1) * runs[variants[0].name](1) / S))  # per slice
    def back_to_back(run):  # a slice after one untimed call, which finds the buffers the other variants pushed out
        run(1)
        return run(calls)

    steady = interleaved({k: (lambda run=run: back_to_back(run)) for k, run in runs.items()}, 3 if quick else 5, 1)
    best = max(steady.values())
    return {"picks": [v.name for v in picks], "steady_evals_per_s": steady,
            "picks_over_best": [steady[v.name] / best for v in picks]}


def bench(width, S, threads, quick):
    torch.set_num_threads(threads)
    clock = time.perf_counter
    obj = objective(width)
    thetas = obj.theta0 + 0.1 * torch.randn(S, obj.n_params)
    obj.population_loss(thetas)  # the tuned variant, as a run would get it
    chosen = obj.variant
    batched = chosen if not chosen.fused else tuning.measure(  # the batched kernel's best chunk here
        obj, thetas, [v for v in tuning.candidates(obj, S) if not v.fused])
    fold = objective(width)
    fold.variant = tuning.Variant(True, batched.chunk_bytes)
    tanh = objective(width)
    tanh.variant = tuning.Variant(False, batched.chunk_bytes)
    fused = objective(width)
    fused.variant = tuning.FUSED
    book = textbook(obj)
    book(thetas)  # the first call allocates and faults in its memory: time the second
    t = time.perf_counter()
    book(thetas)
    per_gen = time.perf_counter() - t
    slice_s = 0.15 if quick else 0.4
    gens = max(5, int(slice_s / max(per_gen, 1e-6)))
    engines = {name: objective(width) for name in ("pso", "de", "snes")}
    for name, o in engines.items():  # warm: kernels compiled, variant chosen, buffers allocated
        engine_rate(lambda: {"pso": PSO, "de": DE, "snes": SNES}[name](popsize=S), o, 3, clock)
    contenders = {
        "textbook": lambda: forward_rate(book, thetas, gens, clock),
        "kernel fold": lambda: forward_rate(lambda th: fold.population_loss(th, count=False), thetas, gens, clock),
        "kernel tanh": lambda: forward_rate(lambda th: tanh.population_loss(th, count=False), thetas, gens, clock),
        "kernel fused": lambda: forward_rate(lambda th: fused.population_loss(th, count=False), thetas, gens, clock),
        "pso": lambda: engine_rate(lambda: PSO(popsize=S), engines["pso"], gens, clock),
        "de": lambda: engine_rate(lambda: DE(popsize=S), engines["de"], gens, clock),
        "snes": lambda: engine_rate(lambda: SNES(popsize=S), engines["snes"], gens, clock),
    }
    ng = objective(width)
    contenders["nevergrad pso"] = lambda: engine_rate(lambda: NevergradOptimizer("PSO", batch=S), ng,
                                                      max(2, gens // 20), clock)
    contenders |= evox_contenders(width, S, lambda: gens, clock)
    med = interleaved(contenders, 3 if quick else 7, 0)
    fastest_name = max(("textbook", "kernel fold", "kernel tanh", "kernel fused"), key=med.get)
    fastest = med[fastest_name]
    row = {"width": width, "popsize": S, "threads": threads, "params": obj.n_params, "generations_per_slice": gens,
           "variant_chosen": chosen.name, "evals_per_s": med, "fastest_forward": fastest_name,
           "ratio_to_fastest": {k: v / fastest for k, v in med.items()},
           "paired_ratio_to_fastest": {k: paired(contenders[k], contenders[fastest_name], 3 if quick else 7)
                                       for k in ("pso", "de", "snes")}}
    row["pso_over_nevergrad"] = med["pso"] / med["nevergrad pso"]
    if "evox pso" in med:
        row["pso_over_evox"] = med["pso"] / med["evox pso"]
        row["pso_over_evox_vmap"] = med["pso"] / med["evox pso vmap"]
    row["tuner"] = tuner(width, S, quick, clock)
    return row


def run(quick: bool = False, threads: int = 2, sizes=((50, 50), (200, 200), (50, 1000))) -> list[dict]:
    import warnings

    warnings.filterwarnings("ignore", module="nevergrad")  # "clipping very high value": nevergrad's PSO strays
    rows = []
    saved = torch.get_num_threads()
    for w, s in sizes:
        row = bench(w, s, threads, quick)
        rows.append(row)
        r, e, pr = row["ratio_to_fastest"], row["evals_per_s"], row["paired_ratio_to_fastest"]
        paired_text = ", ".join(f"{k} {v['median']:.0%}" for k, v in pr.items())
        evox = f"; pso ÷ evox {row['pso_over_evox']:.2f} (vmap problem {row['pso_over_evox_vmap']:.2f})" if "pso_over_evox" in row else ""
        print(f"  width {w} × pop {s}: fastest forward {row['fastest_forward']} {e[row['fastest_forward']]:,.0f}/s "
              f"(chosen {row['variant_chosen']}); of it pso {r['pso']:.0%} de {r['de']:.0%} snes {r['snes']:.0%} "
              f"(paired: {paired_text}){evox}; "
              f"pso ÷ nevergrad {row['pso_over_nevergrad']:.1f}; tuner's fresh picks "
              f"{', '.join(row['tuner']['picks'])} at {min(row['tuner']['picks_over_best']):.0%} of the best variant "
              "or better", flush=True)
    torch.set_num_threads(saved)
    return rows


def table(rows) -> str:
    out = ["| width × pop | fastest forward (evals/s) | chosen variant | pso | de | snes | pso ÷ EvoX PSO | "
           "pso ÷ EvoX PSO, vmap problem | pso ÷ nevergrad PSO |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q, e, pr = r["ratio_to_fastest"], r["evals_per_s"], r["paired_ratio_to_fastest"]
        cell = {k: f"{q[k]:.0%} (paired {pr[k]['median']:.0%}, {pr[k]['q25']:.0%}–{pr[k]['q75']:.0%})"
                for k in ("pso", "de", "snes")}
        out.append(f"| {r['width']} × {r['popsize']} | {e[r['fastest_forward']]:,.0f} ({r['fastest_forward']}) | "
                   f"{r['variant_chosen']} | {cell['pso']} | {cell['de']} | {cell['snes']} | "
                   f"{r.get('pso_over_evox', float('nan')):.2f}× | {r.get('pso_over_evox_vmap', float('nan')):.2f}× | "
                   f"{r['pso_over_nevergrad']:.1f}× |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="50x50,200x200,50x1000")
    a = ap.parse_args(argv)
    rows = run(a.quick, a.threads, [tuple(map(int, s.split("x"))) for s in a.sizes.split(",")])
    print(table(rows))
    out = save("bench_population", {"machine": describe(), "rows": rows}, a.quick)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
