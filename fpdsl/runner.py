"""The task function: config → checked settings → parts → store → training → record.

Read top to bottom, `run` is the story of one run. Everything that can be wrong with
the input is found before anything is computed or any store is touched (a resume needs
the store for its checkpoint, so there it is opened first).
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fpdsl import interrupt
from fpdsl.errors import ConfigError
from fpdsl.recorder import Diverged, Recorder
from fpdsl.schema import validate

log = logging.getLogger("fpdsl")
# settings that may differ between a run and its resumption
RESUMABLE_CHANGES = ("budget.", "resume", "progress", "threads", "tracking.", "checkpoint.", "device", "figures.")


@dataclass
class Parts:
    data: object
    model: object
    loss: object
    optimizer: object
    objective: object
    probes: dict
    params: dict  # the flattened config, as logged
    choices: dict = field(default_factory=dict)  # the option chosen in each config group
    family: str = "?"
    title: str = ""
    rng: tuple = ()


def run(cfg: DictConfig) -> str:
    """One run; returns its MLflow run id."""
    with interrupt.deferred():
        member = prepare(cfg)
        if not isinstance(member, Member):
            return member  # a sweep's job that an earlier attempt finished, or one the sweep's stop skipped
        train(member)
        close(member)
    return outcome(member)


@dataclass
class Member:
    """One run in the making: its config, parts, record, and how it ended."""
    cfg: DictConfig
    parts: Parts
    tracker: object
    rec: Recorder
    job: dict
    started: float
    monitor: object = None
    status: str = "FAILED"
    error: BaseException | None = None
    summary: str = ""
    abort: object = None

    @property
    def run_id(self) -> str:
        return self.tracker.run_id


def prepare(cfg: DictConfig):
    """Checked config, parts, store and the run's record: a Member ready to train (or, for a
    sweep's job that needs no training, the run id to report). Call inside interrupt.deferred()."""
    started = time.perf_counter()
    conf = check(cfg)
    if cfg.resume:
        store = open_store(cfg)
        not_interrupted()
        ckpt, skip = load_checkpoint(store, cfg.resume, conf)
        parts = build(cfg, conf, ckpt)
        tracker = resume_run(store, cfg, parts, ckpt)
        job = {}
    else:
        ckpt, skip = None, {}
        parts = build(cfg, conf)
        store = open_store(cfg)
        job = sweep_job(store, cfg, parts)  # a sweep's job: a signal so far marks the sweep interrupted
        if job.get("interrupted") or (job and interrupt.requested() is not None):
            say(f"job {job['job']}: not started, the sweep was interrupted")
            return ""
        not_interrupted()
        if job.get("skip"):
            say(f"job {job['job']}: run {job['skip']} already finished with this config; skipped")
            return job["skip"]
        if job.get("resume"):
            ckpt, skip = load_checkpoint(store, job["resume"], conf)
            parts = build(cfg, conf, ckpt)
            tracker = resume_run(store, cfg, parts, ckpt, run_id=job["resume"])
        else:
            tracker = start_run(store, cfg, parts, job.get("tags", {}))
    say(f"run {tracker.run_id} → {cfg.tracking.uri} (experiment '{cfg.tracking.experiment}')")
    rec = Recorder(tracker, parts, cfg, first=ckpt["step"] if ckpt else 0, ckpt=ckpt, skip=skip,
                   sweep_stop=job.get("stop"), say=say)
    member = Member(cfg, parts, tracker, rec, job, started)
    member.abort = lambda: tracker.abort("KILLED", "stopped at once by a third signal")
    interrupt.STATE.on_abort.append(member.abort)
    member.monitor = _system_metrics(cfg, tracker.run_id)
    return member


def train(member: Member, drive=None) -> None:
    """The optimizer's loop (or `drive`, a batched one that trains several members at once);
    sets the member's status and error."""
    rec, parts = member.rec, member.parts
    try:
        rec.start()
        collect_garbage_later()
        if drive is None:
            parts.optimizer.run(parts.objective, rec.remaining, rec.on_step)
        else:
            drive()
        ended(member)
    except Exception as e:
        fail(member, e)


def ended(member: Member) -> None:
    rec = member.rec
    done = (rec.stopped or "").startswith(("budget", "the loss")) or (rec.stopped is None and interrupt.requested() is None)
    member.status = "FINISHED" if done else "KILLED"


def fail(member: Member, e: BaseException) -> None:
    member.status, member.error = "FAILED", e
    if not isinstance(e, Diverged):
        log.exception("the run failed", exc_info=e)


def close(member: Member) -> None:
    """Every end-of-run write, then the status."""
    write_end(member)
    confirm(member)


def write_end(member: Member) -> None:
    """The end-of-run writes, not waiting for the store (several members: all of them, then `confirm` each)."""
    if member.abort in interrupt.STATE.on_abort:
        interrupt.STATE.on_abort.remove(member.abort)
    if member.monitor is not None:
        member.monitor.finish()
    member.rec.write_end(member.status, member.error)


def confirm(member: Member) -> None:
    """The status, once the store has everything before it."""
    member.status, member.summary = member.rec.confirm()


def outcome(member: Member) -> str:
    """Say how the run ended; its run id, or the exception that tells the command line."""
    rec, status, error = member.rec, member.status, member.error
    seconds = time.perf_counter() - member.started
    say(f"{status.lower()} after {rec.step} steps, {member.parts.objective.n_evals} loss evaluations, "
        f"loss {rec.loss:.3e}, {seconds:.1f}s{member.summary}")
    if isinstance(error, Diverged):
        raise error
    if error is not None:
        raise RunFailed(f"{type(error).__name__}: {error}") from error
    if status == "FAILED":
        raise RunFailed("writing the run's results failed; see the tag fpdsl.error")
    signum = interrupt.requested()
    if signum is not None and not member.job.get("tags"):
        when = "during the run's final writes" if status == "FINISHED" else f"at step {rec.step}"
        raise interrupt.Interrupted(signum, f"{when}; run {member.run_id} is {status}")
    return member.run_id


class RunFailed(RuntimeError):
    pass


def say(text: str) -> None:
    """A line about the run: into Hydra's job log and the terminal (stdout without Hydra)."""
    if logging.getLogger().handlers or log.handlers:
        log.info(text)
    else:
        print(f"fpdsl: {text}", flush=True)


# -- checking ---------------------------------------------------------------------------
def check(cfg: DictConfig) -> dict:
    """The resolved config as plain containers, every value checked (one-line ConfigError)."""
    try:
        conf = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation that cannot resolve
        raise ConfigError(f"config: {e}".splitlines()[0]) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}: required; add {missing[0]}=<value>")
    conf.pop("hydra", None)
    validate(conf)
    return conf


# -- parts ------------------------------------------------------------------------------
def build(cfg: DictConfig, conf: dict, ckpt: dict | None = None) -> Parts:
    """Data, model, loss, optimizer, objective and probes, seeded; sizes checked before
    anything large is allocated."""
    import numpy as np
    import torch

    from fpdsl import limits
    from fpdsl.objective import Objective

    limits.check_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = _instantiate(cfg.dataset)
    limits.check_data(data)
    optimizer = _instantiate(cfg.optimizer)
    dtype = getattr(torch, optimizer.dtype)
    limits.check_model(cfg, data, dtype, lambda: _model(cfg, data, "meta"))
    model = _model(cfg, data)
    loss_fn = _instantiate(cfg.loss, data=data) if "data" in _params(cfg.loss) else _instantiate(cfg.loss)
    objective = Objective(model, data.x, data.y, loss_fn, dtype=dtype, device=cfg.device)
    objective.seed = cfg.seed  # the population engines' own generators start from it
    probes = {name: _instantiate(node, data=data, name=name, **({"optimizer": optimizer} if "optimizer" in _params(node) else {}))
              for name, node in (cfg.probe or {}).items()}
    choices = _choices()
    parts = Parts(data, model, loss_fn, optimizer, objective, probes, params=_flatten(conf), choices=choices,
                  family=getattr(optimizer, "family", type(optimizer).__name__))
    parts.title = " · ".join(str(choices.get(g, "?")) for g in ("optimizer", "model", "dataset")) + f" · seed {cfg.seed}"
    if ckpt is not None:
        objective.theta0 = ckpt["theta"].to(device=objective.device, dtype=objective.dtype)
        objective.n_evals = ckpt["n_evals"]
        for name, p in probes.items():
            p.__dict__.update(ckpt["probes"].get(name, {}))
        torch.set_rng_state(ckpt["torch_rng"])
        np.random.set_state(tuple(ckpt["numpy_rng"]))
        if ckpt.get("optimizer") is not None and hasattr(optimizer, "load_state"):
            optimizer.load_state(ckpt["optimizer"])
    parts.rng = (torch.get_rng_state(), np.random.get_state())  # where training starts (restored by fpdsl.batch)
    return parts


def _model(cfg, data, device=None):
    import torch

    if device is None:
        return _instantiate(cfg.model, in_dim=data.x.shape[1], out_dim=data.y.shape[1])
    with torch.device(device):
        return _instantiate(cfg.model, in_dim=data.x.shape[1], out_dim=data.y.shape[1])


# -- the store ---------------------------------------------------------------------------
def open_store(cfg):
    """The store, opened with bounded waits; runs left behind by gone processes recovered (the
    first time this process opens it)."""
    from fpdsl.store import Store, StoreError

    try:
        store = Store(cfg.tracking.uri, timeout=cfg.tracking.timeout, create=not cfg.resume)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"tracking.uri: cannot use MLflow store {cfg.tracking.uri!r} ({first[:200]})") from None
    for note in store.recover_once():
        say(note)
    return store


def not_interrupted() -> None:
    """A signal while a run was being set up (a slow store, say) stops it before its run is
    created. In a sweep the job does not start instead (sweep.job): an exception from a job
    would make joblib stop its other workers half-way through their runs' final writes."""
    if interrupt.requested() is not None:
        raise interrupt.Interrupted(interrupt.requested(), "before the run was created; nothing was recorded")


def start_run(store, cfg, parts: Parts, job_tags: dict):
    """A new MLflow run: unique name, group choices and provenance as tags, the config as
    params (with the optimizer's family and option), the dataset as an input."""
    from fpdsl import provenance
    from fpdsl.store import owner_tags
    from fpdsl.tracking import Tracker

    choices = parts.choices
    try:
        exp_id = store.experiment_id(cfg.tracking.experiment)
    except Exception as e:
        raise ConfigError(f"tracking.experiment: MLflow refused the experiment {cfg.tracking.experiment!r} "
                          f"({str(e).strip().splitlines()[0][:150]}); choose another name") from None
    stem = "-".join(str(choices.get(g, "?")) for g in ("optimizer", "model", "dataset")) + f"-s{cfg.seed}"
    if "fpdsl.job" in job_tags:
        stem += f"-j{job_tags['fpdsl.job']}"
    tags = {f"fpdsl.{g}": str(v) for g, v in choices.items()} | {"fpdsl.overrides": _overrides()}
    tags |= provenance.tags() | owner_tags() | {"fpdsl.config_hash": config_hash(parts.params)} | job_tags
    if cfg.get("claim"):
        tags |= {f"fpdsl.claim.{k}": str(v) for k, v in cfg.claim.items()}
    tracker = Tracker.create(store, exp_id, f"{stem}-{uuid.uuid4().hex[:4]}", tags)
    params = dict(parts.params) | {f"choice.{g}": v for g, v in choices.items()} | {"optimizer.family": parts.family}
    tracker.log_params(params)
    tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    tracker.log_input(**provenance.dataset_input(parts.data, choices.get("dataset", "dataset"), cfg.dataset))
    tracker.commit()
    return tracker


def resume_run(store, cfg, parts, ckpt, run_id=None):
    from fpdsl.store import owner_tags
    from fpdsl.tracking import OwnedElsewhere, Tracker

    run_id = run_id or cfg.resume
    exact = ckpt.get("optimizer") is not None and hasattr(parts.optimizer, "load_state")
    try:
        return Tracker.reopen(store, run_id, owner_tags() | {"fpdsl.resumed_from_step": ckpt["step"],
                                                             "fpdsl.resume_exact": exact})
    except OwnedElsewhere as e:
        raise ConfigError(f"resume: run {run_id} is owned by another process ({e}); wait for it or stop it first") from None


def load_checkpoint(store, run_id: str, conf: dict):
    """The run's last checkpoint (previous.pt when last.pt is cut short), checked against the
    config, and the last step the store already has of each metric."""
    from fpdsl import checkpoint

    client = store.client
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ConfigError(f"resume: no run {run_id!r} in {store.uri}; copy the run id from `mlflow ui` or the run's first line") from None
    names = {a.path.rsplit("/", 1)[-1] for a in _artifacts(client, run_id, checkpoint.FOLDER)}
    if checkpoint.LAST not in names:
        raise ConfigError(f"resume: run {run_id} has no {checkpoint.FOLDER}/{checkpoint.LAST}; it ended before its first "
                          "checkpoint (set checkpoint.every to keep them during a run)")
    ckpt, errors = None, []
    for name in (checkpoint.LAST, checkpoint.PREVIOUS):
        if name not in names:
            continue
        try:
            with _download(client, run_id, f"{checkpoint.FOLDER}/{name}") as data:
                ckpt = checkpoint.loads(data, f"{checkpoint.FOLDER}/{name} of run {run_id}")
            if name == checkpoint.PREVIOUS:
                say(f"resume: {errors[0]}; continuing from {checkpoint.FOLDER}/{checkpoint.PREVIOUS} (step {ckpt['step']})")
            break
        except checkpoint.CheckpointError as e:
            errors.append(str(e))
    if ckpt is None:
        raise ConfigError(f"resume: {errors[0]}; it cannot be resumed")
    params = _flatten(conf)
    differ = [k for k in set(params) | set(ckpt["params"])
              if not k.startswith(RESUMABLE_CHANGES) and str(params.get(k)) != str(ckpt["params"].get(k))]
    if differ:
        k = sorted(differ)[0]
        raise ConfigError(f"resume: {k} was {ckpt['params'].get(k)!r} in run {run_id}, is {params.get(k)!r} now; "
                          "pass the run's own overrides (only budget, threads, device, progress may change)")
    budget = conf["budget"]
    if budget["max_steps"] is not None and ckpt["step"] >= budget["max_steps"] and (
            budget["max_evals"] is None or ckpt["n_evals"] >= budget["max_evals"]):
        raise ConfigError(f"budget.max_steps: run {run_id} already reached step {ckpt['step']}; "
                          f"raise budget.max_steps above {ckpt['step']} to continue it")
    if budget["max_evals"] is not None and ckpt["n_evals"] >= budget["max_evals"] and budget["max_steps"] is None:
        raise ConfigError(f"budget.max_evals: run {run_id} already made {ckpt['n_evals']} evaluations; raise it to continue")
    skip = {}
    if run.info.status not in ("KILLED", "FINISHED"):  # crashed after its checkpoint: the store has later points
        for key in run.data.metrics:
            hist = client.get_metric_history(run_id, key)
            if hist:
                skip[key] = max(m.step for m in hist)
    return ckpt, {k: v for k, v in skip.items() if v > ckpt["step"]}


def _artifacts(client, run_id, path):
    try:
        return client.list_artifacts(run_id, path)
    except Exception:
        return []


class _download:
    def __init__(self, client, run_id, path):
        self.client, self.run_id, self.path = client, run_id, path

    def __enter__(self) -> bytes:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory()
        local = self.client.download_artifacts(self.run_id, self.path, self._tmp.name)
        return Path(local).read_bytes()

    def __exit__(self, *exc):
        self._tmp.cleanup()


def sweep_job(store, cfg, parts) -> dict:
    """Inside a sweep: the tags that make this run a child of the sweep's run, and what an
    earlier attempt of the same sweep left for this job (skip it, or resume it)."""
    from fpdsl import sweep

    return sweep.job(store, cfg, config_hash(parts.params))


def config_hash(params: dict) -> str:
    """What identifies a run's configuration (without settings a resume may change)."""
    import hashlib
    import json

    kept = {k: str(v) for k, v in sorted(params.items()) if not k.startswith(RESUMABLE_CHANGES)}
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _system_metrics(cfg, run_id):
    """MLflow's system metrics (CPU, memory, disk, network; GPU where there is one) beside the
    run's own, every tracking.system_metrics_every seconds, when tracking.system_metrics is on."""
    if not cfg.tracking.get("system_metrics"):
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=cfg.tracking.get("system_metrics_every", 10),
                                   tracking_uri=cfg.tracking.uri)
    monitor.start()
    return monitor


# -- helpers ---------------------------------------------------------------------------
def collect_garbage_later() -> None:
    """The command line starts with the cyclic collector off (fpdsl.__main__); what start-up
    built lives as long as the run, so later collections skip it."""
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _instantiate(node, **kwargs):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, ValueError):
            raise ConfigError(f"{node._get_full_key(None) or 'config'}: {cause}") from None
        raise


def _params(node) -> set[str]:
    import inspect

    from hydra.utils import get_object

    return set(inspect.signature(get_object(node._target_)).parameters)


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _choices() -> dict:
    h = _hydra()
    if not h:
        return {}
    return {k: v for k, v in h.runtime.choices.items() if not k.startswith("hydra/") and v is not None}


def _overrides() -> str:
    h = _hydra()
    return " ".join(h.overrides.task) if h else ""


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out

