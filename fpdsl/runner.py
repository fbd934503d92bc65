"""The task function: config → parts → objective → optimizer loop → probes → MLflow.

Read top to bottom, it is the story of one run.
"""
from __future__ import annotations

import gc
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fpdsl.errors import ConfigError
from fpdsl.schema import validate

CHECKPOINT = "checkpoint/last.pt"
# settings that may differ between a run and its resumption
RESUMABLE_CHANGES = ("budget.", "resume", "progress", "threads", "tracking.", "checkpoint.", "device")


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}; lower the learning rate or the init scale")
        self.step, self.loss = step, loss


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def run(cfg: DictConfig) -> float:
    started = time.perf_counter()
    try:
        conf = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation that cannot resolve
        raise ConfigError(f"config: {e}".splitlines()[0]) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}: required; add {missing[0]}=<value>")
    validate(conf)
    params = _flatten(conf)
    tracker = _tracker(cfg)
    ckpt = _load_checkpoint(tracker, cfg.resume, params) if cfg.resume else None

    import numpy as np
    import torch

    from fpdsl.objective import Objective
    from fpdsl.optim import Budget
    from fpdsl.probes import StepView

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device: cuda asked for but no GPU is visible; use device=cpu")

    data = _instantiate(cfg.dataset)
    model = _instantiate(cfg.model, in_dim=data.x.shape[1], out_dim=data.y.shape[1])
    loss_fn = _instantiate(cfg.loss, data=data) if "data" in _params(cfg.loss) else _instantiate(cfg.loss)
    optimizer = _instantiate(cfg.optimizer)
    objective = Objective(model, data.x, data.y, loss_fn, dtype=getattr(torch, optimizer.dtype), device=cfg.device)
    probes = {name: _instantiate(node, data=data, name=name) for name, node in (cfg.probe or {}).items()}

    first = 0  # the step this process starts from (non-zero when resuming)
    if ckpt is not None:
        first = ckpt["step"]
        objective.theta0 = ckpt["theta"].to(device=objective.device, dtype=objective.dtype)
        objective.n_evals = ckpt["n_evals"]
        for name, p in probes.items():
            p.__dict__.update(ckpt["probes"].get(name, {}))
        torch.set_rng_state(ckpt["torch_rng"])
        np.random.set_state(ckpt["numpy_rng"])
        if ckpt.get("optimizer") is not None and hasattr(optimizer, "load_state"):
            optimizer.load_state(ckpt["optimizer"])
    remaining = Budget(
        None if cfg.budget.max_steps is None else max(cfg.budget.max_steps - first, 1),
        None if cfg.budget.max_evals is None else max(cfg.budget.max_evals - objective.n_evals, 1),
    )

    if ckpt is None:
        choices = _choices()
        run_id = tracker.start(
            run_name="-".join(str(choices.get(g, "?")) for g in ("optimizer", "model", "dataset")) + f"-s{cfg.seed}",
            tags={f"fpdsl.{g}": str(v) for g, v in choices.items()} | {"fpdsl.overrides": _overrides()},
        )
    else:
        run_id = tracker.run_id = cfg.resume
        tracker.client.update_run(run_id, status="RUNNING")
        tracker.set_tags({"fpdsl.resumed_from_step": first, "fpdsl.resume_exact": ckpt.get("optimizer") is not None and hasattr(optimizer, "load_state")})
    print(f"fpdsl: run {run_id} → {cfg.tracking.uri} (experiment '{cfg.tracking.experiment}')", flush=True)

    state = {"step": first, "theta": objective.theta0, "loss": math.nan, "n_evals": objective.n_evals, "observed": -1, "logged": -1}
    # every step's loss and evaluation count, in memory (cheap) and in probe_history.npz;
    # MLflow gets them every tracking.every steps, since its cost per point rivals a training step
    trace = (ckpt or {}).get("trace") or {"step": [], "loss": [], "n_evals": []}
    log_every = cfg.tracking.every
    bar = _progress(cfg, cfg.budget.max_steps, first)
    every_ckpt = cfg.checkpoint.every

    sent = {name: -math.inf for name in probes}  # the step each probe's scalars last went to MLflow
    latest = {}  # probe → (step, scalars) of its latest observation

    def observe(step, theta, force=False):
        """Probes due at this step observe; their scalars go to MLflow at most once every
        tracking.every steps (each probe keeps every observation for probe_history.npz)."""
        metrics = {}
        due = [name for name, p in probes.items() if force or step % p.every == 0]
        if due:
            view = StepView(objective, theta)
            for name in due:
                latest[name] = (step, {f"{name}/{k}": v for k, v in probes[name].observe(step, view).items()})
                if force or step - sent[name] >= log_every:
                    sent[name] = step
                    metrics.update(latest[name][1])
            state["observed"] = step
        return metrics

    def send_latest():
        """Each probe's latest observation to MLflow, if it has not gone yet (at the end of a run)."""
        for name, (step, metrics) in latest.items():
            if sent[name] != step:
                sent[name] = step
                tracker.log_metrics(metrics, step)

    def on_step(local_step, theta, n_evals, loss):
        step = first + local_step
        state.update(step=step, theta=theta, loss=loss, n_evals=n_evals)
        for k, v in (("step", step), ("loss", loss), ("n_evals", n_evals)):
            trace[k].append(v)
        metrics = observe(step, theta)
        if step % log_every == 0 or not math.isfinite(loss):
            metrics |= {"loss": loss, "n_evals": n_evals}
            state["logged"] = step
        if metrics:
            tracker.log_metrics(metrics, step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"loss": f"{loss:.3e}", "evals": n_evals, "evals/s": f"{n_evals / max(bar.format_dict['elapsed'], 1e-9):.3g}"}, refresh=False)
        if not math.isfinite(loss):
            raise Diverged(step, loss)
        if every_ckpt and step % every_ckpt == 0 and local_step > 0:
            _save_checkpoint(tracker, state, objective, probes, optimizer, params, trace)
        return step >= (cfg.budget.max_steps or math.inf) or n_evals >= (cfg.budget.max_evals or math.inf)

    status = "FAILED"
    previous = _catch_signals()
    try:
        if ckpt is None:
            tracker.log_params(params)
            tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            with torch.no_grad():
                loss0 = float(objective.loss_fn(objective.forward(objective.theta0), objective.y))
            on_step(0, objective.theta0, 0, loss0)
        if not gc.isenabled():  # the command line starts with the collector off (fpdsl.__main__.cli)
            gc.freeze()  # what start-up built lives as long as the run: later collections skip it
            gc.enable()
        t_train = time.perf_counter()
        optimizer.run(objective, remaining, on_step)
        train_seconds = time.perf_counter() - t_train
        if state["observed"] != state["step"]:
            tracker.log_metrics(observe(state["step"], state["theta"], force=True), state["step"])
        tracker.log_metrics(
            {"final_loss": state["loss"], "train_seconds": train_seconds, "evals_per_second": objective.n_evals / train_seconds},
            state["step"],
        )
        status = "FINISHED"
    except KeyboardInterrupt as e:
        status = "KILLED"
        tracker.set_tags({"fpdsl.stopped": f"{e or 'interrupted'} at step {state['step']}"})
        raise
    except Diverged as e:
        tracker.set_tags({"fpdsl.error": str(e), "fpdsl.diverged_step": e.step})
        raise
    except BaseException as e:
        tracker.set_tags({"fpdsl.error": f"{type(e).__name__}: {e}"[:5000]})
        raise
    finally:
        if bar is not None:
            bar.close()
        try:
            if state["logged"] != state["step"] and trace["step"]:
                tracker.log_metrics({"loss": state["loss"], "n_evals": state["n_evals"]}, state["step"])
            send_latest()
            summary = _finish(tracker, probes, state["step"], {f"trace/{k}": np.asarray(v) for k, v in trace.items()})
            if status != "FINISHED" or every_ckpt:
                _save_checkpoint(tracker, state, objective, probes, optimizer, params, trace)
        finally:
            tracker.end(status)
            _restore_signals(previous)
    print(f"fpdsl: {status.lower()} after {state['step']} steps, {objective.n_evals} loss evaluations, "
          f"loss {state['loss']:.3e}, {time.perf_counter() - started:.1f}s{summary}", flush=True)
    return state["loss"]


def _finish(tracker, probes, step, arrays) -> str:
    """Probes' summaries, figures and arrays go to MLflow, whatever ended the run."""
    import numpy as np

    summary = ""
    for name, p in probes.items():
        if not p.steps:
            continue  # nothing recorded
        res = p.finish()
        tracker.log_metrics({f"{name}/{k}": v for k, v in res.metrics.items()}, step)
        if res.tags:
            tracker.set_tags({f"{name}/{k}": v for k, v in res.tags.items()})
        for fig_name, fig in res.figures.items():
            tracker.log_figure(fig, f"figures/{name}_{fig_name}.png")
        arrays.update({f"{name}/{k}": v for k, v in res.arrays.items()})
        if "fp_order" in res.metrics:
            summary += f"; {name}: F-Principle {res.tags.get('fp_verdict')} (order {res.metrics['fp_order']:+.2f})"
    with tempfile.TemporaryDirectory() as tmp:
        if arrays:
            np.savez_compressed(Path(tmp) / "probe_history.npz", **arrays)
            tracker.log_artifact(Path(tmp) / "probe_history.npz")
    hydra_dir = _hydra_output_dir()
    if hydra_dir is not None and (hydra_dir / ".hydra").is_dir():
        tracker.log_artifact(hydra_dir / ".hydra", ".hydra")
    tracker.flush()
    return summary


# -- checkpoints ---------------------------------------------------------------
def _save_checkpoint(tracker, state, objective, probes, optimizer, params, trace):
    """θ, evaluation count, probe history, RNG state and, where the family exposes it,
    the optimizer's own state, as one artifact that `resume=<run id>` reads back."""
    import numpy as np
    import torch

    ckpt = {
        "step": state["step"],
        "theta": state["theta"].detach().cpu().clone(),
        "n_evals": objective.n_evals,
        "probes": {name: _history(p) for name, p in probes.items()},
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "optimizer": optimizer.state() if hasattr(optimizer, "state") else None,
        "params": params,
        "trace": trace,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(CHECKPOINT).name
        torch.save(ckpt, path)
        tracker.log_artifact(path, str(Path(CHECKPOINT).parent))


def _history(probe) -> dict:
    """What a probe recorded (lists, tuples, scalars), not the constant operators it built
    from the data (kernels, DFT matrices: numpy arrays), which the resumed run rebuilds."""
    kept = (list, tuple, dict, int, float, str, bool, type(None))
    return {k: v for k, v in probe.__dict__.items() if isinstance(v, kept)}


def _load_checkpoint(tracker, run_id, params):
    import torch

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        tracker.client.get_run(run_id)
    except Exception:
        raise ConfigError(f"resume: no run {run_id!r} in {tracker.uri}; copy the run id from `mlflow ui` or the run's first line") from None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = tracker.client.download_artifacts(run_id, CHECKPOINT, tmp)
            ckpt = torch.load(path, weights_only=False)
    except Exception:
        raise ConfigError(f"resume: run {run_id} has no {CHECKPOINT}; it ran without checkpoints (set checkpoint.every)") from None
    differ = [
        k for k in set(params) | set(ckpt["params"])
        if not k.startswith(RESUMABLE_CHANGES) and str(params.get(k)) != str(ckpt["params"].get(k))
    ]
    if differ:
        k = sorted(differ)[0]
        raise ConfigError(
            f"resume: {k} was {ckpt['params'].get(k)!r} in run {run_id}, is {params.get(k)!r} now; "
            "pass the run's own overrides (only budget, threads, device, progress may change)"
        )
    return ckpt


# -- signals -------------------------------------------------------------------
def _catch_signals():
    """SIGINT and SIGTERM end the run KILLED with buffers flushed and figures written."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Interrupted(signum)

    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous):
    for s, h in (previous or {}).items():
        signal.signal(s, h)


# -- helpers -------------------------------------------------------------------
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


def _tracker(cfg):
    from fpdsl.tracking import Tracker

    uri = cfg.tracking.uri
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
        except Exception as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(
                f"tracking.uri: no MLflow server answers at {uri} ({reason}); start one (mlflow server) "
                "or use tracking.uri=sqlite:///mlflow.db"
            ) from None
    try:
        return Tracker(uri, cfg.tracking.experiment)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"tracking.uri: cannot use MLflow store {uri!r} ({first[:200]})") from None


def _progress(cfg, total, initial):
    if cfg.progress == "off" or (cfg.progress == "auto" and (not sys.stderr.isatty() or os.environ.get("CI") or _multirun())):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _choices() -> dict:
    h = _hydra()
    return {k: v for k, v in h.runtime.choices.items() if not k.startswith("hydra/")} if h else {}


def _overrides() -> str:
    h = _hydra()
    return " ".join(h.overrides.task) if h else ""


def _multirun() -> bool:
    from hydra.types import RunMode

    h = _hydra()
    return bool(h and h.mode == RunMode.MULTIRUN)


def _hydra_output_dir():
    h = _hydra()
    return Path(h.runtime.output_dir) if h else None


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
