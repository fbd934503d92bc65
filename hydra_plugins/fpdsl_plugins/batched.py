"""`hydra/launcher=batched`: a sweep's jobs trained as few vectorised runs (fpdsl.batch).

    fpdsl -m hydra/launcher=batched seed='range(16)'

Every job is prepared as Hydra's launchers prepare it (its own output folder, .hydra/,
job log, callbacks) and becomes its own MLflow child run; then the jobs that can share a
batched call train together and the rest one after another in the same process, and
each ends with its own status. A job with bad input fails alone; so does a member that
diverges. Workers (n_jobs; unset: one per core on CPU) are forked from this process
(imports already paid), each taking whole groups of jobs, or halves of a group when
there are fewer groups than workers.
"""
from __future__ import annotations

import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import open_dict

log = logging.getLogger("fpdsl")


def _prepare(cfg):
    """The task function of the preparing pass: a Member (or a finished job's run id)."""
    from fpdsl.errors import ConfigError
    from fpdsl.runner import prepare

    try:
        return prepare(cfg)
    except ConfigError as e:
        print(f"fpdsl: error: {e}", file=sys.stderr)
        raise


class BatchedLauncher(Launcher):
    def __init__(self, n_jobs: int | None = None) -> None:
        self.n_jobs = None if n_jobs is None else max(1, int(n_jobs))
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = f"job_id_for_{initial_job_idx + idx}"
                cfg.hydra.job.num = initial_job_idx + idx
            configs.append(cfg)
        workers = self.n_jobs or _workers(configs)
        if workers == 1 or len(configs) == 1:
            return self._launch(configs)
        return self._forked(configs, workers)

    # -- in this process -------------------------------------------------------------------
    def _launch(self, configs) -> list[JobReturn]:
        from fpdsl import batch, interrupt, runner

        returns: list = [None] * len(configs)
        members = {}
        with interrupt.deferred():
            for i, cfg in enumerate(configs):  # (run_job sets HydraConfig to cfg, then back)
                ret = run_job(hydra_context=self.hydra_context, task_function=_prepare, config=cfg,
                              job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
                if ret.status == JobStatus.COMPLETED and isinstance(ret._return_value, runner.Member):
                    members[i] = (ret, cfg)
                else:
                    returns[i] = ret
            batch.train_members([m._return_value for m, _ in members.values()])
            for ret, cfg in members.values():  # every member's end-of-run writes first (its sender works meanwhile)
                configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)  # its lines into its job's log
                runner.write_end(ret._return_value)
            for i, (ret, cfg) in members.items():  # then each status, once the store has the member's record
                configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
                runner.confirm(ret._return_value)
                returns[i] = self._outcome(ret, ret._return_value)
        return returns

    @staticmethod
    def _outcome(ret: JobReturn, member) -> JobReturn:
        from fpdsl import runner

        try:
            value, status = runner.outcome(member), JobStatus.COMPLETED
        except Exception as e:
            if isinstance(e, (runner.Diverged, runner.RunFailed)):
                print(f"fpdsl: run failed: {e}", file=sys.stderr)
            value, status = e, JobStatus.FAILED
        except KeyboardInterrupt as e:  # an interrupted member ends KILLED; the sweep's marker stops the rest
            value, status = str(e), JobStatus.COMPLETED
        return JobReturn(overrides=ret.overrides, cfg=ret.cfg, hydra_cfg=ret.hydra_cfg, working_dir=ret.working_dir,
                         task_name=ret.task_name, status=status, _return_value=value)

    # -- forked workers --------------------------------------------------------------------
    def _forked(self, configs, workers: int) -> list[JobReturn]:
        """n_jobs workers forked from this process (torch, MLflow and Hydra already imported),
        each with a share of the jobs (seeds of one config together, so they still batch)."""
        groups = _by_group(configs)
        while len(groups) < workers and max(map(len, groups)) > 1:  # fewer groups than workers: halve
            largest = max(groups, key=len)  # the largest (each half still trains together)
            groups.remove(largest)
            groups += [largest[: len(largest) // 2], largest[len(largest) // 2 :]]
        shares = [[] for _ in range(min(workers, len(groups)))]
        for group in sorted(groups, key=len, reverse=True):  # whole groups, the largest first, to the emptiest
            min(shares, key=len).extend(group)
        children = []
        for share in shares:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker
                os.close(r)
                code = 0
                try:
                    _after_fork(len(shares))
                    rets = self._launch([configs[i] for i in share])
                    data = pickle.dumps([(i, _portable(ret)) for i, ret in zip(share, rets)])
                    with os.fdopen(w, "wb") as f:
                        f.write(data)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            os.close(w)
            children.append((pid, r, share))
        returns: list = [None] * len(configs)
        for pid, r, share in children:
            with os.fdopen(r, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
            got = pickle.loads(data) if data else []
            for i, ret in got:
                returns[i] = ret
            for i in share:
                if returns[i] is None:
                    returns[i] = JobReturn(overrides=[], status=JobStatus.FAILED,
                                           _return_value=RuntimeError("the worker running this job died"))
        return returns


def _workers(configs) -> int:
    """n_jobs unset: a worker per core on CPU. Outside training, a group's work (its jobs' configs,
    runs, records, figures) is Python on one core: 64 seeds took 24 s in one process, 18 s in
    two (benchmarks/bench_batched.py). One on a GPU, which one batched group fills better."""
    from fpdsl.sweep import cores

    if any(str(c.get("device", "cpu")) != "cpu" for c in configs):
        return 1
    return max(1, min(cores(), len(configs)))


def _by_group(configs) -> list[list[int]]:
    """Job indices grouped: jobs that differ only in their seed together (they batch)."""
    from omegaconf import OmegaConf

    groups = {}
    for i, cfg in enumerate(configs):
        c = OmegaConf.to_container(cfg, resolve=False)
        c.pop("hydra", None)
        c.pop("seed", None)
        groups.setdefault(repr(c), []).append(i)
    return list(groups.values())


def _after_fork(workers: int) -> None:
    """A forked worker: its share of the cores, and database connections of its own (the
    parent's SQLAlchemy pools are dropped without closing the parent's connections)."""
    from fpdsl.sweep import THREADS_ENV, cores, fresh_connections, limit_threads

    n = max(1, cores() // workers)
    os.environ[THREADS_ENV] = str(n)  # what each job's start sets (fpdsl.sweep.job_threads): else every worker took all cores
    limit_threads(n)
    fresh_connections()


def _portable(ret: JobReturn) -> JobReturn:
    """A JobReturn the parent can unpickle (an exception as text if it does not pickle)."""
    value = ret._return_value
    try:
        pickle.dumps(value)
    except Exception:
        value = RuntimeError(str(value))
    return JobReturn(overrides=ret.overrides, status=ret.status, _return_value=value, task_name=ret.task_name,
                     working_dir=ret.working_dir)
