"""fpdsl's performance claims, measured side by side in one run (`make bench`).

Sections (each prints a table; everything lands in one JSON under benchmarks/results/):
  population  fpdsl's PSO/DE/SNES against the fastest known batched forward, EvoX 1.4's PSO
              and nevergrad's, at 50×50, 200×200 and 50×1000 (bench_population.py)
  scipy       L-BFGS-B and CG: the default (one thread on each side) against the other
              thread combinations, and scipy's own share of the run (outside the objective)
  bfgs        scipy's dense BFGS update against one loss-and-gradient evaluation, by size
  overhead    probes and MLflow logging as fractions of whole in-process runs
  startup     command → first training step, per optimizer family (subprocesses)

On a shared machine absolute times wander; the claims are ratios, measured in
interleaved rounds so that a burst of load hits all alike (population: median of paired
ratios; scipy: best round per contender).

    python benchmarks/bench.py [--quick] [--threads N] [--only population,scipy,...]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fpdsl.data import Sines1D  # noqa: E402
from fpdsl.losses import MSE  # noqa: E402
from fpdsl.models import MLP  # noqa: E402
from fpdsl.objective import Objective  # noqa: E402
from fpdsl.optim import Budget, ScipyOptimizer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def objective(width, dtype=torch.float32, seed=0, n_points=201):
    torch.manual_seed(seed)
    data = Sines1D(n_points=n_points)  # the default experiment's data: sin x + sin 3x + sin 5x
    return Objective(MLP(1, 1, width=width), data.x, data.y, MSE(), dtype=dtype)


# -- population ----------------------------------------------------------------------------
def bench_population(quick: bool, threads: int) -> list[dict]:
    """fpdsl's engines against the fastest known forward pass, EvoX 1.4 and nevergrad
    (benchmarks/bench_population.py)."""
    from benchmarks import bench_population as bp

    return bp.run(quick, threads)


def _calibrate(fn, n=3):
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


# -- scipy ---------------------------------------------------------------------------------
SCIPY_THREADS = {  # (torch threads, OpenBLAS threads) held during the run
    "default (1, 1)": {},  # the adapter's own: one thread on each side
    "torch 2, blas 1": {"torch_threads": 2, "blas_threads": 1},
    "torch 1, blas 2": {"torch_threads": 1, "blas_threads": 2},
    "both 2 (pools left alone)": {"torch_threads": None, "blas_threads": None},
}


def _scipy_run(method, width, iters, threads, n_points=201):
    o = objective(width, torch.float64, n_points=n_points)
    opt = ScipyOptimizer(method, **threads)
    last = {}

    def on_step(step, theta, n_evals, loss):
        last["loss"] = loss
        return step >= iters

    t = time.perf_counter()
    opt.run(o, Budget(iters, None), on_step)
    sec = time.perf_counter() - t
    return sec, 1 - opt.objective_seconds / sec, last["loss"]


def bench_scipy(quick: bool) -> list[dict]:
    """Wall time of a fixed number of iterations under each thread setting (interleaved
    rounds, best round), and scipy's own share of it: the time outside the objective."""
    rows = []
    iters = 60 if quick else 150
    rounds = 2 if quick else 5
    cases = [(m, w, 201) for m in ("L-BFGS-B", "CG") for w in (50, 200)]
    cases.append(("L-BFGS-B", 1000, 2001))  # a bigger problem: does torch's second thread pay there?
    for method, width, n_points in cases:
        names = list(SCIPY_THREADS) if width <= 200 else ["default (1, 1)", "torch 2, blas 1"]
        best = {k: (math.inf, None, None) for k in names}
        for _ in range(rounds if width <= 200 else max(1, rounds // 2)):
            for name in names:
                sec, own, loss = _scipy_run(method, width, iters if width <= 200 else iters // 3, SCIPY_THREADS[name], n_points)
                if sec < best[name][0]:
                    best[name] = (sec, own, loss)
        default = best["default (1, 1)"][0]
        row = {
            "method": method, "width": width, "n_points": n_points,
            "iterations": iters if width <= 200 else iters // 3,
            "seconds": {k: v[0] for k, v in best.items()},
            "speed_vs_default": {k: default / v[0] for k, v in best.items()},
            "scipy_own_fraction": {k: v[1] for k, v in best.items()},
            "final_loss": {k: v[2] for k, v in best.items()},
        }
        rows.append(row)
        print(f"  {method:8s} width {width:4d}, {n_points} points: " + ", ".join(
            f"{k} {v[0]:.3f}s (scipy own {v[1]:.0%})" for k, v in best.items()), flush=True)
    return rows


def bench_bfgs(quick: bool) -> list[dict]:
    """Cost of scipy's dense BFGS update (A1 (H A2) + ρ s sᵀ, as in scipy) against one
    loss-and-gradient evaluation of the default problem, by parameter count (one thread each)."""
    from threadpoolctl import threadpool_limits

    rows = []
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1, user_api="blas"):
        for width in (20, 25, 30, 35, 40, 50, 100, 200):
            o = objective(width, torch.float64)
            P = o.n_params
            x = o.theta0.numpy().copy()
            evaluate = _calibrate(lambda: o.loss_grad_numpy(x), 20)
            rng = np.random.default_rng(0)
            H, s, y, eye = np.eye(P), rng.standard_normal(P), rng.standard_normal(P), np.eye(P)

            def update():
                A1 = eye - s[:, None] * y[None, :] * 0.1
                A2 = eye - y[:, None] * s[None, :] * 0.1
                return np.dot(A1, np.dot(H, A2)) + 0.1 * s[:, None] * s[None, :]

            dense = _calibrate(update, 3 if quick or P > 1000 else 10)
            rows.append({"width": width, "params": P, "update_ms": dense * 1e3, "loss_grad_ms": evaluate * 1e3,
                         "update_over_eval": dense / evaluate})
            print(f"  P {P:5d}: dense update {dense * 1e3:7.2f} ms, loss+grad {evaluate * 1e3:6.2f} ms, "
                  f"ratio {dense / evaluate:5.2f}", flush=True)
    torch.set_num_threads(saved)
    return rows


# -- probe and logging overhead -------------------------------------------------------------
def bench_overhead(quick: bool) -> list[dict]:
    """Whole in-process runs of real configs (after one warm-up run: imports, the store's
    schema, scipy.stats); time inside the probes (observe at the default cadence, then
    finish, less building its figures), inside fpdsl's Tracker (every MLflow call and the
    metric buffer, less drawing figures into PNG files), and figures (built and drawn) on
    their own, as fractions of the run's wall time. Two repeats; the one with less overhead."""
    from hydra import compose, initialize_config_dir

    import fpdsl.probes as probes_pkg
    import fpdsl.tracking as tracking
    from fpdsl.runner import run

    clock = {}
    depth = {"tracking": 0}

    def timed(fn, key, group):
        def wrapper(*a, **k):
            outer = depth.get(group, 0) == 0
            depth[group] = depth.get(group, 0) + 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                depth[group] -= 1
                if outer:  # calls inside another timed call of the group count once
                    clock[key] = clock.get(key, 0.0) + time.perf_counter() - t

        return wrapper

    for cls in {v for v in vars(probes_pkg).values() if isinstance(v, type) and hasattr(v, "observe")}:
        cls.observe = timed(cls.observe, "probe_observe", "probe")
        cls.finish = timed(cls.finish, "probe_finish", "probe")
    for name, fn in list(vars(tracking.Tracker).items()):
        if callable(fn) and not name.startswith("_"):
            setattr(tracking.Tracker, name, timed(fn, f"tracking.{name}", "tracking"))
    from matplotlib.figure import Figure

    import fpdsl.figures as figures

    saved_savefig = Figure.savefig
    Figure.savefig = timed(Figure.savefig, "figure_draw", "figure")  # inside log_figure: drawing, not MLflow
    saved_builders = {n: getattr(figures, n) for n in ("heatmap", "heatmap_panels", "cosine_panels", "orientation_scatter")}
    for n, fn in saved_builders.items():  # building a figure (in a probe's finish) is drawing it too
        setattr(figures, n, timed(fn, "figure_build", "figure"))

    cases = {
        "default (adam, 2000 steps)": [],
        "pso (2000 generations of 50)": ["optimizer=pso"],
        "lbfgsb (2000 iterations)": ["optimizer=lbfgsb"],
    }
    if quick:
        cases = {k.split(" (")[0] + " (200 steps)": v + ["budget.max_steps=200"] for k, v in cases.items()}
    rows = []
    os.environ["FPDSL_SUMMARY"] = "0"
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        uri = f"sqlite:///{tmp}/mlflow.db"
        run(compose("config", [f"tracking.uri={uri}", "budget.max_steps=20", "progress=off"]))
        import scipy.stats  # noqa: F401  (imported lazily by the F-Principle order; imports are start-up's)
        for label, overrides in cases.items():
            row = None
            for _ in range(1 if quick else 2):
                clock.clear()
                cfg = compose("config", [f"tracking.uri={uri}", "progress=off", *overrides])
                gc.disable()  # as the command line starts: run() freezes what exists and turns it on
                t = time.perf_counter()
                run(cfg)
                wall = time.perf_counter() - t
                figure_s = clock.get("figure_draw", 0.0) + clock.get("figure_build", 0.0)
                tracking_s = sum(v for k, v in clock.items() if k.startswith("tracking.")) - clock.get("figure_draw", 0.0)
                probe_observe = clock.get("probe_observe", 0.0)
                probe_finish = clock.get("probe_finish", 0.0) - clock.get("figure_build", 0.0)
                this = {"run": label, "wall_s": wall, "probe_observe_s": probe_observe, "probe_finish_s": probe_finish,
                        "figure_draw_s": figure_s, "tracking_s": tracking_s,
                        "tracking_by_call_s": {k.split(".", 1)[1]: v for k, v in clock.items() if k.startswith("tracking.")},
                        "probe_observe_fraction": probe_observe / wall,
                        "probe_fraction": (probe_observe + probe_finish) / wall,
                        "figure_fraction": figure_s / wall,
                        "tracking_fraction": tracking_s / wall}
                overhead = this["probe_fraction"] + this["tracking_fraction"]
                if row is None or overhead < row["probe_fraction"] + row["tracking_fraction"]:
                    row = this  # the repeat with less overhead (load bursts only add)
            rows.append(row)
            print(f"  {label}: {row['wall_s']:.2f}s, probes {row['probe_fraction']:.1%} "
                  f"(observe {row['probe_observe_fraction']:.1%}), figures {row['figure_fraction']:.1%}, "
                  f"MLflow {row['tracking_fraction']:.1%}", flush=True)
    Figure.savefig = saved_savefig
    for n, fn in saved_builders.items():
        setattr(figures, n, fn)
    return rows


# -- start-up ------------------------------------------------------------------------------
def bench_startup(quick: bool) -> list[dict]:
    """Wall time from spawning `python -m fpdsl ...` to the optimizer's first step."""
    rows = []
    repeats = 1 if quick else 2
    tiny = ["budget.max_steps=3", "progress=off"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "python -c 'import torch, torch._dynamo'": [sys.executable, "-c", "import torch, torch._dynamo"],
        "optimizer=adam (torch)": ["optimizer=adam"],
        "optimizer=pso (population)": ["optimizer=pso"],
        "optimizer=lbfgsb (scipy)": ["optimizer=lbfgsb"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", FPDSL_SUMMARY="0")
        env.pop("CI", None)
        subprocess.run([sys.executable, "-m", "fpdsl", *tiny], cwd=tmp, env=env, capture_output=True, check=True)
        for label, args in cases.items():
            times = []
            for _ in range(repeats):
                marker = Path(tmp) / "first_step"
                marker.unlink(missing_ok=True)
                cmd = args if args[0] == sys.executable else [sys.executable, str(ROOT / "benchmarks" / "first_step.py"), *args, *tiny]
                env["FPDSL_BENCH_T0"], env["FPDSL_BENCH_MARK"] = repr(time.time()), str(marker)
                t = time.time()
                subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, check=True)
                times.append(float(marker.read_text()) if marker.exists() else time.time() - t)
            rows.append({"case": label, "seconds": min(times)})
            print(f"  {label}: {min(times):.2f}s", flush=True)
    return rows


# -- report --------------------------------------------------------------------------------
def machine() -> dict:
    from benchmarks.machine import describe

    return describe()


def table(results: dict) -> str:
    out = []
    if "population" in results:
        from benchmarks.bench_population import table as population_table

        out.append(population_table(results["population"]))
    if "scipy" in results:
        names = list(SCIPY_THREADS)
        out += ["", "| scipy: speed vs default | width | points | " + " | ".join(names) + " | scipy's own share (default) |",
                "|---|---|---|" + "---|" * (len(names) + 1)]
        for r in results["scipy"]:
            out.append(f"| {r['method']} | {r['width']} | {r['n_points']} | "
                       + " | ".join(f"{r['speed_vs_default'][n]:.2f}×" if n in r["speed_vs_default"] else "" for n in names)
                       + f" | {r['scipy_own_fraction']['default (1, 1)']:.0%} |")
    if "bfgs" in results:
        out += ["", "| BFGS params | dense update / one loss+grad |", "|---|---|"]
        out += [f"| {r['params']} | {r['update_over_eval']:.2f} |" for r in results["bfgs"]]
    if "overhead" in results:
        out += ["", "| run | wall | probes: observe + finish | MLflow: per-step writes + per-run calls | the figure: built and drawn |",
                "|---|---|---|---|---|"]
        for r in results["overhead"]:
            calls, wall = r["tracking_by_call_s"], r["wall_s"]
            steps = sum(calls.get(k, 0.0) for k in STEP_WRITES)
            out.append(f"| {r['run']} | {wall:.1f}s | {r['probe_observe_s'] / wall:.1%} + {r['probe_finish_s'] / wall:.1%} "
                       f"| {steps / wall:.1%} + {(r['tracking_s'] - steps) / wall:.1%} | {r['figure_draw_s']:.2f}s ({r['figure_fraction']:.1%}) |")
    if "startup" in results:
        out += ["", "| start-up: command → first training step | seconds |", "|---|---|"]
        out += [f"| {r['case']} | {r['seconds']:.2f} |" for r in results["startup"]]
    return "\n".join(out)


STEP_WRITES = ("log_metrics", "flush", "end")  # the metric buffer, its batched writes, the last flush


SECTIONS = {"population": bench_population, "scipy": bench_scipy, "bfgs": bench_bfgs, "overhead": bench_overhead,
            "startup": bench_startup}


def main():
    warnings.filterwarnings("ignore", module="nevergrad")  # "clipping very high value": nevergrad's PSO strays
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and shorter runs (a smoke check, not the claim)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the population section")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/bench-<date>.json)")
    args = ap.parse_args()
    gc.freeze()  # as `python -m fpdsl` does once started: full collections skip the imported modules
    results = {"machine": machine(), "quick": args.quick, "population_threads": args.threads}
    started = time.perf_counter()
    for name in args.only.split(","):
        print(f"[{name}]", flush=True)
        results[name] = SECTIONS[name](args.quick, args.threads) if name == "population" else SECTIONS[name](args.quick)
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print()
    print(table(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=1, default=float))
    print(f"\n{results['seconds']:.0f}s; saved {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
