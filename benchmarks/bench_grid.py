"""A grid on local parallel workers against the same grid one run after another, and
what logging costs a run (`make bench`).

  grid     seeds 0-3 as one sweep: 4 PSO runs of 60 000 evaluations (short runs: start-up
           matters), and 4 default runs of 25 000 steps (10 s or more each: the claim is
           for runs of >= 10 s): Hydra's basic launcher (sequential, one process, torch's
           default threads) against hydra/launcher=joblib with 2 workers (one thread each;
           fpdsl forks them from the launching process, imports already paid), and against
           hydra/launcher=batched (the runs trained together); wall time of the whole
           command, in interleaved rounds, best round of each; the runs' own time (MLflow
           start to end, summed) shows what the workers gain once started.
  logging  for every run of those sweeps, the time spent inside fpdsl's Tracker
           (MLflow calls and the metric buffer, the run's tag `fpdsl.tracking_seconds`)
           over the run's own time (MLflow start to end); importing MLflow and opening
           the store are measured apart

Claims: speed-up ≥ 1.6× on 2 cores; logging ≤ 5% of a run.

    python benchmarks/bench_grid.py [--quick] [--rounds N] [--steps N,N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

SEEDS = "seed=0,1,2,3"
CASES = {  # name → overrides of each run
    "pso, 60 000 evaluations": ["optimizer=pso", "budget.max_steps=null", "budget.max_evals=60000"],
    "default, 25 000 steps": ["budget.max_steps=25000"],
}
LAUNCHERS = {
    "sequential": ["hydra/launcher=basic"],
    "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "batched": ["hydra/launcher=batched"],
}


def sweep(tmp: str, uri: str, experiment: str, launcher: list[str], extra: list[str]) -> float:
    env = dict(os.environ, FPDSL_SUMMARY="0")
    env.pop("CI", None)
    cmd = [sys.executable, "-m", "fpdsl", "-m", SEEDS, *launcher, f"tracking.uri={uri}",
           f"tracking.experiment={experiment}", "progress=off", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


def logging_fractions(client, experiment: str) -> list[dict]:
    exp = client.get_experiment_by_name(experiment)
    rows = []
    for r in client.search_runs([exp.experiment_id]):
        if r.data.tags.get("fpdsl.role") == "sweep":
            continue
        run_s = (r.info.end_time - r.info.start_time) / 1000
        tracking_s = float(r.data.tags["fpdsl.tracking_seconds"])
        rows.append({"run": r.info.run_name, "run_s": run_s, "tracking_s": tracking_s, "fraction": tracking_s / run_s,
                     "start": r.info.start_time / 1000, "end": r.info.end_time / 1000})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one round (a smoke check, not the claim)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2)")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/bench_grid-<date>.json)")
    args = ap.parse_args()
    rounds = 1 if args.quick else (args.rounds or 2)
    from benchmarks.machine import describe

    from fpdsl.store import Store

    results = {"machine": describe(), "cores": len(os.sched_getaffinity(0)), "rounds": rounds, "quick": args.quick,
               "grid": f"{SEEDS}, cases {CASES}",
               "load_average_at_start": os.getloadavg()[0], "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        t = time.perf_counter()
        store = Store(uri)  # creates the store: no sweep below pays for its schema
        results["store_create_s"] = time.perf_counter() - t
        client = store.client
        opened = subprocess.run(  # what each run pays before its first metric: import MLflow, open the store
            [sys.executable, "-c", "import sys, time; t = time.perf_counter(); from fpdsl.store import Store; "
             "Store(sys.argv[1]); print(time.perf_counter() - t)", uri],
            cwd=ROOT, capture_output=True, text=True, check=True)
        results["store_open_s"] = float(opened.stdout.split()[-1])

        for steps, case in CASES.items():
            walls = {name: [] for name in LAUNCHERS}
            fractions = {name: [] for name in LAUNCHERS}
            for r in range(rounds):
                for name, launcher in LAUNCHERS.items():
                    experiment = f"bench-grid-{list(CASES).index(steps)}-{name.split(',')[0]}-{r}"
                    wall = sweep(tmp, uri, experiment, launcher, case)
                    walls[name].append(wall)
                    fractions[name].append(logging_fractions(client, experiment))
                    print(f"  {steps}, round {r}: {name:<18} {wall:6.1f}s", flush=True)
            best = {name: min(range(rounds), key=lambda i: w[i]) for name, w in walls.items()}
            row = {"wall_s": walls, "speedup": walls["sequential"][best["sequential"]] / walls["joblib, 2 workers"][best["joblib, 2 workers"]],
                   "speedup_batched": walls["sequential"][best["sequential"]] / walls["batched"][best["batched"]]}
            # the runs' own time: sequential = their sum; parallel = the wall from the first start to the last end
            runs = {name: fractions[name][best[name]] for name in LAUNCHERS}
            row["runs_s"] = {"sequential": sum(x["run_s"] for x in runs["sequential"]),
                             "joblib, 2 workers": max(x["end"] for x in runs["joblib, 2 workers"]) - min(x["start"] for x in runs["joblib, 2 workers"])}
            row["runs_speedup"] = row["runs_s"]["sequential"] / row["runs_s"]["joblib, 2 workers"]
            row["logging"] = runs
            row["logging_fraction_median"] = statistics.median(x["fraction"] for rs in runs.values() for x in rs)
            row["logging_fraction_max"] = max(x["fraction"] for rs in runs.values() for x in rs)
            results["cases"][steps] = row
    results["load_average_at_end"] = os.getloadavg()[0]

    print(f"\n| grid of 4 runs ({results['cores']} cores) | sequential | joblib, 2 workers | speed-up (claims ≥ 1.0×, ≥ 1.6×) "
          "| the runs alone: speed-up | batched launcher: wall, speed-up | logging / run: median, max (claim ≤ 5%) |"
          "\n|---|---|---|---|---|---|---|")
    for steps, row in results["cases"].items():
        w = {name: min(v) for name, v in row["wall_s"].items()}
        print(f"| {steps} a run | {w['sequential']:.1f}s | {w['joblib, 2 workers']:.1f}s | {row['speedup']:.2f}× "
              f"| {row['runs_speedup']:.2f}× | {w['batched']:.1f}s, {row['speedup_batched']:.2f}× "
              f"| {row['logging_fraction_median']:.1%}, {row['logging_fraction_max']:.1%} |")
    print(f"\nimporting MLflow and opening the store: {results['store_open_s']:.2f}s a run (creating a new store: "
          f"{results['store_create_s']:.2f}s, once); "
          f"load average {results['load_average_at_start']:.1f} → {results['load_average_at_end']:.1f}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"bench_grid-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"saved {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
