"""Grids of seeds at the speed of one run, and what a run costs beyond its training (`make bench`).

  seeds      the default experiment (tanh MLP 1-200-1, Adam, 2000 steps), command to exit:
             one run; 16 seeds with Hydra's basic launcher (one after another in one process);
             16 and 64 seeds with hydra/launcher=batched (trained together). Every member must
             end FINISHED with the final loss of its separate run (within 1e-3 relative).
  fixed      command to exit of one default run split into imports (python -X importtime),
             training (the run's train_seconds) and the rest; and what each extra run of the
             basic sweep costs beyond its own training.

All commands write into one store created beforehand (a first run creates it), with
progress off, in one temporary folder.

    python benchmarks/bench_batched.py [--quick] [--rounds N]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe, save  # noqa: E402


def command(tmp, uri, experiment, *overrides, importtime=False):
    env = dict(os.environ, FPDSL_SUMMARY="0")
    env.pop("CI", None)
    flags = [o for o in overrides if o.startswith("-")]
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "fpdsl", *flags, f"tracking.uri={uri}",
           f"tracking.experiment={experiment}", "progress=off", *[o for o in overrides if not o.startswith("-")]]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stderr


def exp_name(case: str, r: int) -> str:
    return "-".join(case.replace(",", "").split()) + f"-{r}"


def runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], max_results=10000)
    return [r for r in found if r.data.tags.get("fpdsl.role") != "sweep"]


def import_seconds(stderr: str) -> float:
    """Sum of the top-level imports' cumulative times in python -X importtime's output."""
    total = 0.0
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if m and not m.group(2).startswith(" "):
            total += int(m.group(1)) / 1e6
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 seeds only, one round")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    from mlflow.tracking import MlflowClient

    rounds = 1 if a.quick else a.rounds
    res = {"machine": describe(), "rounds": rounds}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        command(tmp, uri, "warm", "budget.max_steps=1")  # the store exists; caches (numba, kernels) warm
        client = MlflowClient(uri)
        cases = {
            "one run": ["seed=0"],
            "16 seeds, basic launcher": ["-m", "seed=range(16)"],
            "16 seeds, batched launcher": ["-m", "hydra/launcher=batched", "seed=range(16)"],
        }
        if not a.quick:
            cases["64 seeds, batched launcher"] = ["-m", "hydra/launcher=batched", "seed=range(64)"]
        walls = {k: [] for k in cases}
        for r in range(rounds):
            for name, ov in cases.items():
                wall, _ = command(tmp, uri, exp_name(name, r), *ov)
                walls[name].append(wall)
                print(f"  {name}: {wall:.1f}s", flush=True)
        best = {k: min(v) for k, v in walls.items()}
        one = best["one run"]
        res["seeds"] = {"wall_s": best, "over_one_run": {k: v / one for k, v in best.items()}}
        # every member FINISHED and equal to its separate run
        separate = {int(r.data.params["seed"]): r.data.metrics["final_loss"] for r in runs(client, exp_name("16 seeds, basic launcher", 0))}
        for name in [k for k in cases if "batched" in k]:
            members = runs(client, exp_name(name, 0))
            res["seeds"].setdefault("finished", {})[name] = f"{sum(m.info.status == 'FINISHED' for m in members)}/{len(members)}"
            diffs = [abs(m.data.metrics["final_loss"] - separate[int(m.data.params["seed"])]) / separate[int(m.data.params["seed"])]
                     for m in members if int(m.data.params["seed"]) in separate]
            res["seeds"].setdefault("max_relative_loss_difference", {})[name] = max(diffs)
        # fixed costs
        basic = runs(client, exp_name("16 seeds, basic launcher", 0))
        train = {int(r.data.params["seed"]): r.data.metrics["train_seconds"] for r in basic}
        extra = (best["16 seeds, basic launcher"] - one - sum(v for s, v in train.items() if s != 0)) / 15
        wall, err = command(tmp, uri, "fixed", "seed=0", importtime=True)
        imports = import_seconds(err)
        trained = runs(client, "fixed")[0].data.metrics["train_seconds"]
        res["fixed"] = {"command_to_exit_s": wall, "imports_s": imports, "training_s": trained,
                        "rest_s": wall - imports - trained, "note": "wall measured under -X importtime (slightly slower)",
                        "extra_run_in_basic_sweep_beyond_training_s": extra}
    s, f = res["seeds"], res["fixed"]
    print("\n| seeds of the default experiment | command to exit | ÷ one run |\n|---|---|---|")
    for k, v in s["wall_s"].items():
        print(f"| {k} | {v:.1f} s | {s['over_one_run'][k]:.2f}× |")
    print(f"\nbatched members FINISHED: {s['finished']}; largest relative difference of the final loss from the separate "
          f"run: {s['max_relative_loss_difference']}")
    print(f"one default run: {f['command_to_exit_s']:.1f} s = imports {f['imports_s']:.1f} + training {f['training_s']:.1f} "
          f"+ the rest {f['rest_s']:.1f}; each extra run of a basic sweep: {f['extra_run_in_basic_sweep_beyond_training_s']:.2f} s "
          "beyond its training")
    print(f"saved {save('bench_batched', res, a.quick)}")


if __name__ == "__main__":
    main()
