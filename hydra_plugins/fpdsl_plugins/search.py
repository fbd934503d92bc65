"""`hydra/sweeper=search`: hyperparameter search with Optuna, driven by Hydra's sweep syntax.

    fpdsl -m hydra/sweeper=search experiment=fprinciple_adam \
        'optimizer.lr=tag(log, interval(1e-4, 1e-1))' 'model.width=choice(20, 50, 100)' \
        hydra.sweeper.objective=spectrum/fp_order_halving hydra.sweeper.direction=maximize

Every override in sweep syntax becomes a search dimension: choice(...) a categorical one,
range(a, b, step) integers (or a float step), interval(a, b) a float range (int(interval)
integers, tag(log, ...) on a log scale); `hydra.sweeper.params` adds more. The objective is
any metric a run logs (the loss at a fixed evaluation budget: fix budget.max_evals and
keep objective=final_loss). Trials are runs like any sweep's jobs: children of one parent
run, which ends with the best trial named in its tags (fpdsl.best_run, fpdsl.best_value,
fpdsl.best_params). A failed trial counts as failed, not as a value.

Hydra's own Optuna sweeper pins optuna < 3 and its objective is the task's return value;
its nevergrad sweeper does not install on Python ≥ 3.10. This one is ~150 lines on
Optuna's ask/tell API.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


def distribution(override: Override):
    """An Optuna distribution from one sweep override."""
    import optuna.distributions as d

    value = override.value()
    log = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution([x for x in override.sweep_iterator(transformer=lambda x: x)])
    if isinstance(value, RangeSweep):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (value.start, value.stop, value.step)):
            return d.IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step), log=log and value.step == 1)
        return d.FloatDistribution(float(value.start), float(value.stop), step=float(value.step))
    if isinstance(value, IntervalSweep):
        if isinstance(value.start, int) and isinstance(value.end, int) and not log:
            return d.IntDistribution(int(value.start), int(value.end))
        if "int" in getattr(value, "tags", set()):
            return d.IntDistribution(int(value.start), int(value.end), log=log)
        return d.FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"{override.get_key_element()}: {override.input_line} is not a sweep hydra/sweeper=search can search")


class SearchSweeper(Sweeper):
    def __init__(self, objective: str = "final_loss", direction: str = "minimize", n_trials: int = 20,
                 n_jobs: int = 1, sampler: str = "tpe", seed: int = 0, params: Optional[dict] = None):
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"hydra.sweeper.direction: {direction!r}; use minimize or maximize")
        if sampler not in ("tpe", "random", "cmaes"):
            raise ValueError(f"hydra.sweeper.sampler: {sampler!r}; use tpe, random or cmaes")
        self.objective, self.direction, self.n_trials, self.n_jobs = objective, direction, int(n_trials), max(1, int(n_jobs))
        self.sampler, self.seed, self.params = sampler, int(seed), dict(params or {})
        self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function,
                                                                config=config)

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        parser = OverridesParser.create()
        overrides = parser.parse_overrides(arguments) + parser.parse_overrides(
            [f"{k}={v}" for k, v in self.params.items()])
        space = {o.get_key_element(): distribution(o) for o in overrides if o.is_sweep_override()}
        fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
        if not space:
            raise ValueError("hydra/sweeper=search: nothing to search; give an override in sweep syntax, "
                             "e.g. 'optimizer.lr=tag(log, interval(1e-4, 1e-1))'")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                    "cmaes": optuna.samplers.CmaEsSampler}
        study = optuna.create_study(direction=self.direction, sampler=samplers[self.sampler](seed=self.seed))
        store = _store(self.config)
        done, best = 0, None
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [fixed + [f"{k}={_value(t.params[k])}" for k in space] for t in trials]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=done)
            for trial, ret in zip(trials, returns):
                value, run_id = _objective(store, ret, self.objective)
                if run_id:
                    trial.set_user_attr("run_id", run_id)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    continue
                study.tell(trial, value)
            done += len(trials)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if complete:
            best = study.best_trial
            _name_best(store, self.config, best, self.objective, self.direction)
            print(f"fpdsl: search: best {self.objective} = {best.value:.6g} with "
                  f"{' '.join(f'{k}={_value(v)}' for k, v in best.params.items())} "
                  f"({len(complete)} of {len(study.trials)} trials completed)", flush=True)
        return best


def _value(v):
    return repr(v) if isinstance(v, float) else str(v)


def _store(config):
    from fpdsl.store import Store

    return Store(str(config.tracking.uri), timeout=float(config.tracking.get("timeout", 15)))


def _objective(store, ret, key):
    """(the trial's objective or None, its run id or None)."""
    try:
        run_id = ret.return_value
    except BaseException:  # the trial failed (bad input, divergence): no value
        return None, None
    if not run_id:
        return None, None
    try:
        value = store.client.get_run(run_id).data.metrics.get(key)
    except Exception:
        return None, run_id
    return (None if value is None or not math.isfinite(value) else float(value)), run_id


def _name_best(store, config, best, objective, direction) -> None:
    """The best trial's run, value and params as tags of the sweep's parent run."""
    from mlflow.entities import RunTag

    from fpdsl.sweep import SWEEP_ENV

    parent = json.loads(os.environ.get(SWEEP_ENV) or "null")
    if not parent:
        return
    run_id = best.user_attrs.get("run_id")
    tags = {"fpdsl.best_value": f"{best.value:.10g}", "fpdsl.best_params": json.dumps(best.params),
            "fpdsl.objective": f"{direction} {objective}", "fpdsl.best_trial": str(best.number)}
    if run_id:
        tags["fpdsl.best_run"] = run_id
    store.client.log_batch(parent["parent_run_id"], tags=[RunTag(k, v) for k, v in tags.items()])
