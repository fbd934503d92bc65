"""One sweep = one parent MLflow run, each job of it a child run; jobs × threads ≤ cores.

`SweepCallback` is a Hydra callback (conf/config.yaml, `hydra.callbacks.sweep`). Before
the launcher starts any job it opens the store once (so a new SQLite file is created
and migrated by this process alone), finds or creates the sweep's run, and puts what
jobs need into the environment the launcher's workers inherit: the parent run, the
sweep id and the threads each job may use. A job (`job`) reads that back, tags its run
as a child, and looks for what an earlier attempt of the same sweep left for it.

Running the same `-m` command again with the same `hydra.sweep.dir` resumes the sweep
under the same parent run: a job whose child FINISHED with the same config (and budget)
is skipped, one that was KILLED or crashed continues from its checkpoint, the rest run.

Ctrl-C (or SIGTERM to the launcher) stops the sweep: running jobs stop at their next
step and end KILLED with everything they recorded, jobs not yet started do not start
(a marker file in the sweep folder tells every worker), and the parent ends KILLED.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import signal
import sys
import time
import uuid
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SWEEP_ENV = "FPDSL_SWEEP"  # JSON: parent_run_id, sweep_id, uri, experiment_id, sweep_dir
THREADS_ENV = "FPDSL_THREADS_PER_JOB"
# read when a BLAS or OpenMP runtime loads in a new worker process
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
MARKER = ".fpdsl-interrupted"
LAST = {"status": None}  # the status the launching process gave its sweep (read by the command line)
_SIGNALS = {"count": 0}
_FORK_HOOK: list = []  # os.register_at_fork cannot be undone: register once per process


def cores() -> int:
    """CPUs this process may run on (a SLURM or container CPU set, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def marker(sweep_dir: str) -> Path:
    return Path(sweep_dir) / MARKER


_LOOKED = {}  # sweep folder → (time.monotonic() of the last look for its marker, found)


def interrupted(sweep_dir: str, every: float = 0.2) -> bool:
    """Whether the sweep's marker exists, looked for at most every `every` seconds: every run of
    a sweep asks at every step (a batched group of 64 asked 64 times a step, each a stat call)."""
    now = time.monotonic()
    last, found = _LOOKED.get(sweep_dir, (-math.inf, False))
    if now - last >= every:
        found = marker(sweep_dir).exists()
        _LOOKED[sweep_dir] = (now, found)
    return found


def compose_faster(loader) -> None:
    """Hydra composes every job's config twice (the basic sweeper validates the whole batch, then
    the launcher composes each job again), about 50 ms a composition. Here a job whose overrides
    differ from a job already composed only in plain values (seed=3, optimizer.lr=0.1: no config
    group, no +/~/++, a scalar, no other override inside or around its key; or in nothing) is
    derived from that job's config: copied, those values set as Hydra sets them, its task
    overrides and override_dirname rewritten (about 4 ms). One config is kept per shape of
    overrides, not one per job. tests/test_sweeps.py checks that both ways give the same config.
    Installed for every multirun by SweepCallback."""
    if getattr(loader, "_fpdsl_fast", False):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    compose, composed = loader.load_sweep_config, {}
    last = [None, None]  # the last sweep config seen and its content key: hashed once per config object
    parser = OverridesParser.create()

    def load_sweep_config(master_config, sweep_overrides):
        try:
            parsed = parser.parse_overrides(list(master_config.hydra.overrides.hydra) + list(sweep_overrides))
            if last[0] is not master_config:  # the launcher's one config, or a worker's fresh copy a job
                last[:] = master_config, _content(master_config)
            shape = (last[1], _shape(loader, parsed))
        except Exception:  # Hydra's own composition says what is wrong
            parsed = shape = None
        if shape in composed:
            try:
                return _derived(*composed[shape], parsed, master_config)
            except Exception:  # a value Hydra refuses: its composition says so
                pass
        cfg = compose(master_config, sweep_overrides)
        if shape is not None and shape not in composed:
            composed[shape] = (cfg.copy(), parsed)
        return cfg

    loader.load_sweep_config = load_sweep_config
    loader._fpdsl_fast = True


def _content(config) -> bytes:
    """A key for the sweep's config by its content (1 ms): a joblib worker gets the config, and
    the launcher's composed configs, as fresh copies with every job, so a key by identity
    never matched there and each job was composed afresh (about 0.09 s a job)."""
    import hashlib
    import pickle

    return hashlib.sha1(pickle.dumps(config)).digest()


def _shape(loader, parsed) -> tuple:
    """The overrides with the values of plain value overrides left out: two jobs of one shape
    differ only in those values."""
    from hydra.core.override_parser.types import OverrideType

    keys = [o.key_or_group for o in parsed]
    out = []
    for o in parsed:
        k = o.key_or_group
        plain = (o.type == OverrideType.CHANGE and o.package is None and not o.is_hydra_override()
                 and not o.is_sweep_override() and isinstance(o.value(), (bool, int, float, str))
                 and not loader.repository.group_exists(k) and keys.count(k) == 1
                 and not any(j != k and (j.startswith(k + ".") or k.startswith(j + ".")) for j in keys))
        out.append(("value", k) if plain else ("as is", o.input_line))
    return tuple(out)


def _derived(base, base_parsed, parsed, master_config):
    """base (composed with base_parsed) with parsed's values, as Hydra would have composed it."""
    import copy

    from hydra._internal.config_loader_impl import get_overrides_dirname  # what Hydra itself calls
    from omegaconf import OmegaConf

    cfg = copy.deepcopy(base)
    for o, b in zip(parsed, base_parsed):
        if o.input_line != b.input_line:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    app = [o for o in parsed if not o.is_hydra_override()]
    cfg.hydra.overrides.task = [o.input_line for o in app]
    names = cfg.hydra.job.config.override_dirname
    cfg.hydra.job.override_dirname = get_overrides_dirname(overrides=app, kv_sep=names.kv_sep,
                                                           item_sep=names.item_sep, exclude_keys=names.exclude_keys)
    OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
    return cfg


def mark_interrupted(sweep_dir: str, signum: int) -> None:
    try:
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        marker(sweep_dir).write_text(signal.Signals(signum).name)
    except OSError:
        pass


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self._saved_env: dict[str, str | None] = {}

    # -- the launching process ---------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            self._start(config)
        finally:
            freeze_start_up()

    def _start(self, config: DictConfig) -> None:
        from hydra.core.global_hydra import GlobalHydra

        if GlobalHydra.instance().is_initialized():
            compose_faster(GlobalHydra.instance().config_loader())
        hydra = config.hydra
        total = count_jobs(hydra)
        if total == 0:  # before the store is touched; Hydra turns a callback's exception into a warning
            print(f"fpdsl: error: {empty_sweep_reason(hydra)}", file=sys.stderr)
            sys.exit(2)
        at_once = jobs_at_once(hydra, total)
        threads = max(1, cores() // at_once) if at_once else None
        if threads is not None:
            self._set_env({THREADS_ENV: str(threads)} | {v: os.environ.get(v, str(threads)) for v in THREAD_VARS})
        self.sweep_dir = os.path.abspath(str(hydra.sweep.dir))
        marker(self.sweep_dir).unlink(missing_ok=True)  # a resumed sweep runs again
        if str(hydra.launcher.get("_target_", "")).endswith("JoblibLauncher") and hasattr(os, "fork"):
            fork_joblib_workers(config)
        stop_on_signal(self.sweep_dir)

        from fpdsl.store import Store, owner_tags

        uri, experiment = str(config.tracking.uri), str(config.tracking.experiment)
        try:
            store = Store(uri, timeout=float(config.tracking.get("timeout", 15)))
            for note in store.recover_once():
                print(f"fpdsl: {note}", flush=True)
            exp_id = store.experiment_id(experiment)
        except Exception as e:  # each job reports the store's trouble itself
            print(f"fpdsl: sweep: no parent run ({str(e).strip().splitlines()[0][:200]})", file=sys.stderr)
            return
        client = store.client
        overrides = " ".join(hydra.overrides.task)
        launcher = hydra.runtime.choices.get("hydra/launcher", "basic")
        previous = _previous_parent(client, exp_id, self.sweep_dir)
        if previous is not None:
            run_id, sweep_id = previous.info.run_id, previous.data.tags.get("fpdsl.sweep_id", "")
            from mlflow.entities import RunTag

            client.update_run(run_id, status="RUNNING")
            attempts = int(previous.data.tags.get("fpdsl.attempts", "1")) + 1
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in (owner_tags() | {"fpdsl.attempts": str(attempts)}).items()])
            print(f"fpdsl: sweep {sweep_id}: resuming under parent run {run_id} (attempt {attempts}): finished jobs "
                  "are skipped, killed or crashed ones continue from their checkpoints", flush=True)
        else:
            sweep_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            run = client.create_run(
                exp_id,
                run_name=f"sweep-{sweep_id}",
                tags={
                    "fpdsl.role": "sweep",
                    "fpdsl.sweep_id": sweep_id,
                    "fpdsl.sweep_dir": self.sweep_dir,
                    "fpdsl.overrides": overrides,
                    "fpdsl.launcher": launcher,
                    "fpdsl.jobs_at_once": str(at_once or "per allocation"),
                    "fpdsl.threads_per_job": str(threads or "per allocation"),
                    "mlflow.note.content": f"sweep `{overrides}` with launcher {launcher}, {total or '?'} jobs",
                } | owner_tags(),
            )
            run_id = run.info.run_id
        self.parent_run_id = run_id
        self._uri, self._timeout, self._started = uri, float(config.tracking.get("timeout", 15)), time.time()
        self._set_env({
            SWEEP_ENV: json.dumps({
                "parent_run_id": run_id, "sweep_id": sweep_id, "uri": uri,
                "experiment_id": exp_id, "sweep_dir": self.sweep_dir,
            })
        })
        # a failed job makes Hydra raise before on_multirun_end: close the parent at exit then
        atexit.register(self._end, None)
        print(f"fpdsl: sweep {sweep_id}: parent run {run_id}, {total or '?'} jobs, "
              f"{at_once or 'one allocation'} at once, {threads or 'allocation'} threads each", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._end("FINISHED")

    def _end(self, status: str | None) -> None:
        """Close the sweep's run: KILLED when it was interrupted, FINISHED when every job
        finished, else FAILED."""
        self._restore_env()
        if self.parent_run_id is None:
            return
        run_id, self.parent_run_id = self.parent_run_id, None
        from mlflow.entities import Metric

        from fpdsl.store import Store

        try:
            client = Store(self._uri, timeout=self._timeout).client
            run = client.get_run(run_id)
            children = client.search_runs(
                [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=50000
            )
            latest = {}
            for c in sorted(children, key=lambda c: c.info.start_time):
                latest[c.data.tags.get("fpdsl.config_hash", c.info.run_id)] = c  # a job run again supersedes
            counts = {}
            for c in latest.values():
                counts[c.info.status] = counts.get(c.info.status, 0) + 1
            interrupted = marker(self.sweep_dir).exists()
            if interrupted or counts.get("KILLED"):
                status = "KILLED"
            elif status is None or set(counts) - {"FINISHED"}:
                status = "FAILED"
            now = int(time.time() * 1000)
            metrics = {"jobs": len(latest), "jobs_finished": counts.get("FINISHED", 0),
                       "jobs_failed": counts.get("FAILED", 0), "jobs_killed": counts.get("KILLED", 0),
                       "sweep_seconds": time.time() - self._started}
            client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
            client.set_terminated(run_id, status=status)
            LAST["status"] = status
        except Exception as e:
            print(f"fpdsl: sweep: could not close parent run {run_id} ({e})", file=sys.stderr)

    def _set_env(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self._saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    def _restore_env(self) -> None:
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}

    def __getstate__(self):  # launchers pickle the callbacks into their workers; they need no state
        return {"parent_run_id": None, "_saved_env": {}}

    # -- each job, in its worker ---------------------------------------------------
    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        limit_threads(job_threads(config))
        stop_on_signal(os.path.abspath(str(config.hydra.sweep.dir)))


def fork_joblib_workers(config) -> None:
    """joblib's workers (loky) start as new interpreters that import torch, MLflow and fpdsl
    (about 4 s) before their first job, which made a local grid of short runs slower than
    running them one after another. Here the launching process imports what a job needs
    once and loky forks its workers from it; each worker opens its own store connections."""
    import fpdsl.runner  # noqa: F401  (torch, numpy, Hydra's instantiate)
    import fpdsl.recorder  # noqa: F401
    import fpdsl.tracking  # noqa: F401  (MLflow's client and entities)
    from joblib.externals.loky.backend.context import set_start_method

    if "TorchOptimizer" in str(config.get("optimizer", {}).get("_target_", "")):
        import torch._dynamo  # noqa: F401  (torch.optim imports it at its first step)
    set_start_method("fork", force=True)
    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=fresh_connections)
        os.register_at_fork(after_in_child=keep_plugins)
        _FORK_HOOK.append(True)


def keep_plugins() -> None:
    """In a forked child: Hydra's joblib launcher restores its singletons at every job
    (Singleton.set_state), which scans and re-executes every hydra_plugins module, because a
    spawned worker has no plugins yet. A forked worker has the launching process's, already
    scanned: keep them. Re-executing the modules gave their config dataclasses new class
    objects, so the job's result, whose config names the old ones, went back to the launching
    process pickled by value, and cloudpickle's search of every loaded module for them took
    0.15 s at each worker's first job."""
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton

    if getattr(Singleton.set_state, "_fpdsl_keeps_plugins", False):
        return
    restore = Singleton.set_state

    def set_state(state) -> None:
        plugins = Singleton._instances.get(Plugins)
        if plugins is not None and Plugins not in state["instances"]:
            state = {**state, "instances": {**state["instances"], Plugins: plugins}}
        restore(state)

    set_state._fpdsl_keeps_plugins = True
    Singleton.set_state = staticmethod(set_state)


def freeze_start_up() -> None:
    """A multirun's launching process, once its start is done: what start-up built (Hydra,
    MLflow, the sweep's run; torch and fpdsl too before joblib forks) goes out of the cyclic
    collector's reach, as a run's training start does (fpdsl.runner.collect_garbage_later,
    which then turns the collector on). A process that only launches never trains, so its
    last collection at exit walked all of it (0.3 s with joblib or the batched launcher);
    workers forked from it inherit it frozen."""
    import gc

    gc.freeze()


def fresh_connections() -> None:
    """In a forked child: the parent's SQLAlchemy connection pools are dropped without closing
    the parent's connections (a SQLite connection must not cross a fork)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for engine in SqlAlchemyStore._engine_map.values():
            engine.dispose(close=False)
    except Exception:
        pass


def stop_on_signal(sweep_dir: str) -> None:
    """SIGINT/SIGTERM outside a job's training (the launcher, an idle worker): mark the sweep
    interrupted so that running jobs stop at their next step and no further job starts; the
    third signal ends the process."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        _SIGNALS["count"] += 1
        if _SIGNALS["count"] >= 3:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        first = not marker(sweep_dir).exists()
        mark_interrupted(sweep_dir, signum)
        if first:
            print(f"\nfpdsl: sweep: {signal.Signals(signum).name}: running jobs stop at their next step and end "
                  "KILLED; no further job starts (the same command with the same hydra.sweep.dir resumes)",
                  file=sys.stderr, flush=True)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)


def _previous_parent(client, exp_id, sweep_dir):
    if "'" in sweep_dir:
        return None
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`fpdsl.sweep_dir` = '{sweep_dir}' and tags.`fpdsl.role` = 'sweep'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None


def job(store, cfg, config_hash: str) -> dict:
    """What a job of a sweep needs: {} outside one. Inside: `tags` (child of the sweep's run),
    `job` (its number), `stop` (True once the sweep was interrupted), `on_signal`, and what an
    earlier attempt left: `skip` (a run id that finished with this config) or `resume`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    h = HydraConfig.get()
    if h.mode != RunMode.MULTIRUN:
        return {}
    sweep_dir = os.path.abspath(str(h.sweep.dir))
    out = {"job": h.job.num, "stop": lambda: interrupted(sweep_dir)}
    parent = _parent_from_env(sweep_dir, store) or _parent_from_store(sweep_dir, store)
    if parent is None:
        return out
    from fpdsl import interrupt

    if interrupt.requested() is not None:  # a signal while this job set up: the sweep stops here
        mark_interrupted(sweep_dir, interrupt.requested())
    if marker(sweep_dir).exists():
        out["interrupted"] = True
        return out

    interrupt.STATE.on_first.append(lambda: mark_interrupted(sweep_dir, interrupt.requested() or signal.SIGINT))
    out["tags"] = {
        "mlflow.parentRunId": parent[0],
        "fpdsl.sweep_id": parent[1],
        "fpdsl.job": str(h.job.num),
        "fpdsl.overrides": " ".join(h.overrides.task),
    }
    if "torch" in sys.modules:
        out["tags"]["fpdsl.threads"] = str(sys.modules["torch"].get_num_threads())
    earlier = _earlier_child(store, parent[0], config_hash)
    if earlier is not None:
        status, run_id = earlier.info.status, earlier.info.run_id
        same_budget = all(earlier.data.params.get(f"budget.{k}") == str(cfg.budget[k]) for k in ("max_steps", "max_evals"))
        from fpdsl.store import alive

        if status == "FINISHED" and same_budget:
            out["skip"] = run_id
        elif status == "RUNNING" and alive(earlier.data.tags):
            out["skip"] = run_id  # another launcher runs it now
        elif status in ("KILLED", "FINISHED") or "fpdsl.crashed" in earlier.data.tags:
            if _has_checkpoint(store.client, run_id):
                out["resume"] = run_id
    return out


_EXPERIMENT_OF = {}  # a sweep's run id → its experiment id (asked by every job of the sweep)


def _earlier_child(store, parent_id, config_hash):
    try:
        if parent_id not in _EXPERIMENT_OF:
            _EXPERIMENT_OF[parent_id] = store.client.get_run(parent_id).info.experiment_id
        exp = _EXPERIMENT_OF[parent_id]
        runs = store.client.search_runs(
            [exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`fpdsl.config_hash` = '{config_hash}'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
    except Exception:
        return None
    return runs[0] if runs else None


def _has_checkpoint(client, run_id) -> bool:
    try:
        return any(a.path.endswith("last.pt") for a in client.list_artifacts(run_id, "checkpoint"))
    except Exception:
        return False


def job_threads(config) -> int | None:
    """Threads for one job: `threads` when set; in a sweep, cores // jobs at once on this
    machine, or the job's own allocation elsewhere (SLURM's CPU set, Ray's OMP_NUM_THREADS);
    a single run keeps torch's default (None)."""
    if config.get("threads"):
        return int(config.threads)
    from hydra.types import RunMode

    hydra = config.get("hydra")
    if hydra is None or hydra.get("mode") != RunMode.MULTIRUN:
        return None
    for var in (THREADS_ENV, "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    return cores()


def limit_threads(n: int | None) -> None:
    """torch's intra-op pool and every loaded BLAS/OpenMP pool to n threads."""
    if not n:
        return
    import numpy  # noqa: F401  (load the BLAS libraries so that threadpoolctl sees them)
    import scipy.linalg  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def _sweep_overrides(hydra):
    """The sweep's overrides as Hydra's basic sweeper parses them (globs against the config
    groups' options)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = list(hydra.overrides.task)
    for k, v in (hydra.sweeper.get("params") or {}).items():
        args.append(f"{k}={v}")
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    return OverridesParser.create(config_loader=loader).parse_overrides(args)


def count_jobs(hydra) -> int | None:
    """Jobs in a sweep of Hydra's basic sweeper (the grid's size); None for other sweepers."""
    if not str(hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        return sum(len(b) for b in BasicSweeper.split_arguments(_sweep_overrides(hydra), None))
    except Exception:
        return None


def empty_sweep_reason(hydra) -> str:
    """Which override leaves a sweep without a job (a glob that matches nothing, an empty
    range), and the fix, in one line."""
    from hydra.core.override_parser.types import ValueType

    for o in _sweep_overrides(hydra):
        if o.is_sweep_override() and not list(o.sweep_string_iterator()):
            key = o.get_key_element()
            if o.value_type == ValueType.GLOB_CHOICE_SWEEP:
                return f"{o.input_line}: matches none of {key}'s options, so the sweep has no job; fix the pattern (fpdsl --help lists the options)"
            return f"{o.input_line}: gives no value, so the sweep has no job; give {key} at least one value"
    return "the sweep has no job; give every swept key at least one value"


def jobs_at_once(hydra, total: int | None) -> int | None:
    """How many jobs share this machine's cores; None where each job gets its own allocation (SLURM)."""
    target = str(hydra.launcher.get("_target_", ""))
    n = cores()
    if target.endswith("JoblibLauncher"):
        n_jobs = hydra.launcher.get("n_jobs")
        n_jobs = 1 if n_jobs is None else int(n_jobs)
        at_once = n_jobs if n_jobs > 0 else max(1, n + 1 + n_jobs)  # joblib's reading of -1, -2, ...
    elif target.endswith("submitit_launcher.LocalLauncher"):
        at_once = total or n  # submitit's local executor starts every job together
    elif target.endswith("RayLauncher"):
        per_job = (hydra.launcher.get("ray", {}).get("remote") or {}).get("num_cpus") or 1
        at_once = max(1, n // int(per_job))
    elif target.endswith("BasicLauncher"):
        at_once = 1
    else:
        return None
    return max(1, min(at_once, total)) if total else at_once


def _parent_from_env(sweep_dir, store):
    try:
        s = json.loads(os.environ.get(SWEEP_ENV) or "null")
    except ValueError:
        return None
    if s and s["sweep_dir"] == sweep_dir and s["uri"] == store.uri:
        return s["parent_run_id"], s["sweep_id"]
    return None


def _parent_from_store(sweep_dir, store):
    if "'" in sweep_dir:
        return None
    try:
        exps = [e.experiment_id for e in store.client.search_experiments(max_results=50000)]
        runs = store.client.search_runs(
            exps, filter_string=f"tags.`fpdsl.sweep_dir` = '{sweep_dir}' and tags.`fpdsl.role` = 'sweep'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
    except Exception:
        return None
    return (runs[0].info.run_id, runs[0].data.tags.get("fpdsl.sweep_id", "")) if runs else None
