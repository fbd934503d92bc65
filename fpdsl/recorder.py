"""What a run keeps, step by step and at its end.

The recorder owns the trace (every step's loss and evaluation count), the probes'
cadence, what goes to MLflow and when, checkpoints, and the end-of-run writes (probe
summaries, figures, probe_history.npz, the final θ with the network's output, the last
checkpoint). The optimizer adapter only calls `on_step`; the runner calls `close`.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from fpdsl import checkpoint, interrupt
from fpdsl.cadence import Cadence


class Diverged(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}; lower the learning rate or the init scale")
        self.step, self.loss = step, loss

    def __reduce__(self):  # a joblib worker hands it back to the launcher pickled
        return type(self), (self.step, self.loss)


def observe_together(recorders, local_step: int, outputs) -> None:
    """Probes of several runs (a batched group, at one step) that can observe together do so in
    one call per kind (`observe_many`, e.g. Δ_F for all runs as one matrix product); each
    recorder then logs its probe's observation at that step as if the probe had made it.
    outputs: the runs' outputs on the dataset (M, n, c) tensor, in the order of recorders."""
    groups = {}
    for j, rec in enumerate(recorders):
        step, names = rec.due(local_step)
        for name in names:
            probe = rec.probes[name]
            if hasattr(probe, "observe_many"):
                groups.setdefault((type(probe), probe.batch_key()), []).append((rec, name, step, j))
    if not groups:
        return
    from fpdsl.objective import Objective

    array = Objective._numpy(outputs)
    for (cls, _), items in groups.items():
        found = cls.observe_many([rec.probes[name] for rec, name, _, _ in items], [step for _, _, step, _ in items],
                                 array[[j for *_, j in items]])
        for (rec, name, step, _), values in zip(items, found):
            rec.ready[name] = (step, values)


class Recorder:
    def __init__(self, tracker, parts, cfg, first: int = 0, ckpt: dict | None = None, skip: dict | None = None,
                 sweep_stop=None, say=print):
        from fpdsl.optim import Budget

        self.tracker, self.parts, self.cfg = tracker, parts, cfg
        self.probes = parts.probes
        self.first = first
        self.trace = (ckpt or {}).get("trace") or {"step": [], "loss": [], "n_evals": []}
        self.every_log = int(cfg.tracking.every)  # read every step: a plain int, not an OmegaConf lookup
        self.mlflow = Cadence(self.every_log, cfg.tracking.get("per_decade"))
        per_image = cfg.tracking.get("images_per_decade")
        self.images = Cadence(None, per_image) if per_image else None
        self.next_image = {name: 0 for name in self.probes}  # a probe's next snapshot: its first observation from this step
        self.snapped = {}  # probe → the step of its last snapshot
        self.cadence = {name: Cadence(p.every, getattr(p, "per_decade", None)) for name, p in self.probes.items()}
        self.every_ckpt = cfg.checkpoint.every
        self.max_steps, self.max_evals = cfg.budget.max_steps, cfg.budget.max_evals
        self.max_loss_drop = cfg.budget.get("max_loss_drop")
        self.skip = skip or {}  # key → last step already in the store (a resume after a crash)
        self.sweep_stop = sweep_stop  # a callable: True once the sweep this job belongs to was interrupted
        self.say = say
        obj = parts.objective
        self.remaining = Budget(
            None if self.max_steps is None else self.max_steps - first,
            None if self.max_evals is None else self.max_evals - obj.n_evals,
            stop=self.stop_requested,
        )
        self.step, self.theta, self.loss, self.n_evals = first, obj.theta0, math.nan, obj.n_evals
        self.loss0 = (ckpt or {}).get("loss0")
        self.observed = self.logged = -1
        self.quiet_until = -math.inf  # before this step nothing but the trace is due (on_step)
        self.sent = {name: -math.inf for name in self.probes}  # the step each probe's scalars last went to MLflow
        self.latest = {}  # probe → (step, scalars, n_evals) of its latest observation
        self.stopped = None  # why training stopped early: "budget", "loss moved", "SIGINT", ...
        self.bar = _progress(cfg, self.max_steps, first)
        self.t_train = None
        self.previous_ckpt = None  # bytes of the checkpoint before the last one
        self.seconds = {"probes": 0.0}
        self.arrays = {}  # probes' histories for probe_history.npz
        self.ready = {}  # probe → (step, scalars) observed already, for several runs at once (observe_together)
        self.ending = None  # (status, summary) between write_end and confirm
        self.output_dir = _hydra_output_dir()  # the job's folder (its .hydra/ goes to the run's artifacts)

    # -- during training -------------------------------------------------------------
    def stop_requested(self) -> bool:
        if interrupt.requested() is not None:
            return True
        return bool(self.sweep_stop and self.sweep_stop())

    def start(self) -> None:
        """Step 0 (a new run): θ0's loss and the probes' first look."""
        obj = self.parts.objective
        if self.first == 0 and not self.trace["step"]:
            import torch

            with torch.no_grad():
                loss0 = float(obj.loss_fn(obj.forward(obj.theta0), obj.y))
            self.on_step(0, obj.theta0, 0, loss0)
        self.t_train = time.perf_counter()

    def on_step(self, local_step: int, theta, n_evals: int, loss: float) -> bool:
        step = self.first + local_step
        self.step, self.theta, self.loss, self.n_evals = step, theta, loss, n_evals
        tr = self.trace
        tr["step"].append(step)
        tr["loss"].append(loss)
        tr["n_evals"].append(n_evals)
        if step < self.quiet_until and self.bar is None and math.isfinite(loss):
            # nothing due before quiet_until (no probe, log or checkpoint): the stop rules only
            # (most steps; a batched group makes this call for each member at every step)
            return self._should_stop(step, n_evals, loss)
        if self.loss0 is None:
            self.loss0 = loss
        metrics = self._observe(step, theta, n_evals)
        if self.mlflow(step) or not math.isfinite(loss):
            metrics["loss"] = loss
            metrics["n_evals"] = n_evals
            self.logged = step
        self._log(metrics, step, n_evals)
        if self.bar is not None:
            self.bar.update(1)
            elapsed = max(self.bar.format_dict["elapsed"], 1e-9)
            self.bar.set_postfix({"loss": f"{loss:.3e}", "evals": n_evals, "evals/s": f"{n_evals / elapsed:.3g}"}, refresh=False)
        if not math.isfinite(loss):
            self.tracker.commit()
            raise Diverged(step, loss)
        if self.every_ckpt and step % self.every_ckpt == 0 and local_step > 0:
            self.save_checkpoint()
        self.tracker.commit()
        self.quiet_until = self._next_event(step)
        return self._should_stop(step, n_evals, loss)

    def _next_event(self, step: int) -> float:
        """The first step after this one at which a probe observes, the loss goes to MLflow or a
        checkpoint is saved."""
        found = [c.next_after(step) for c in (self.mlflow, *self.cadence.values())]
        if self.every_ckpt:
            found.append((step // self.every_ckpt + 1) * self.every_ckpt)
        return min(found)

    def _should_stop(self, step, n_evals, loss) -> bool:
        if self.max_steps is not None and step >= self.max_steps:
            self.stopped = "budget.max_steps"
        elif self.max_evals is not None and n_evals >= self.max_evals:
            self.stopped = "budget.max_evals"
        elif self.max_loss_drop is not None and self.loss0 and (self.loss0 - loss) >= self.max_loss_drop * abs(self.loss0):
            self.stopped = f"the loss fell by budget.max_loss_drop={self.max_loss_drop:g}"
        elif interrupt.requested() is not None:
            import signal

            self.stopped = signal.Signals(interrupt.requested()).name
        elif self.sweep_stop and self.sweep_stop():
            self.stopped = "the sweep was interrupted"
        return self.stopped is not None

    def _observe(self, step, theta, n_evals, force=False) -> dict:
        """Probes due at this step observe; their scalars go to MLflow when MLflow's cadence is
        due, or once tracking.every steps passed since their last (each probe keeps every
        observation for probe_history.npz and its figures)."""
        due = [name for name in self.probes if force or self.cadence[name](step)]
        if not due:
            return {}
        from fpdsl.probes import StepView

        t = time.perf_counter()
        metrics = {}
        view = StepView(self.parts.objective, theta)
        for name in due:
            ready = self.ready.pop(name, None)
            found = ready[1] if ready is not None and ready[0] == step else self.probes[name].observe(step, view)
            values = {f"{name}/{k}": v for k, v in found.items()}
            if not values:  # an observation kept only in the probe's history (ntk between kernels)
                continue
            self.latest[name] = (step, values, n_evals)
            if force or self.mlflow(step) or step - self.sent[name] >= self.every_log:
                self.sent[name] = step
                metrics.update(values)
            if self.images is not None and step >= self.next_image[name]:
                self._snapshot(name, step)
        self.observed = step
        self.seconds["probes"] += time.perf_counter() - t
        return metrics

    def due(self, local_step: int) -> tuple[int, list[str]]:
        """The step and the probes that observe at it."""
        step = self.first + local_step
        if step < self.quiet_until:
            return step, []
        return step, [name for name in self.probes if self.cadence[name](step)]

    def _snapshot(self, name, step) -> None:
        self.next_image[name] = self.images.next_after(step)
        self.snapped[name] = step
        image = getattr(self.probes[name], "image", None)
        if image is None:
            return
        picture = image()
        if picture is not None:
            self.tracker.log_image(f"{name}", step, picture)

    def _log(self, metrics: dict, step: int, n_evals: int) -> None:
        """To MLflow against the step, and the same values against the evaluation count
        (`by_evals/...`), so optimizers compare at equal cost in the UI. After a resume that
        follows a crash, points the store already has for a step are not sent twice."""
        if not metrics:
            return
        if self.skip:
            metrics = {k: v for k, v in metrics.items() if step > self.skip.get(k, -1)}
        self.tracker.log_metrics(metrics, step)
        self.tracker.log_metrics({f"by_evals/{k}": v for k, v in metrics.items() if k != "n_evals"}, n_evals)

    # -- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """θ, evaluation count, trace, probe history, RNG state and the optimizer's own state
        (where the family exposes it) as checkpoint/last.pt; the one before as previous.pt."""
        import torch

        opt = self.parts.optimizer
        state = {
            "step": self.step,
            "theta": self.theta.detach().cpu().clone(),
            "n_evals": self.n_evals,
            "loss0": self.loss0,
            "probes": {name: _history(p) for name, p in self.probes.items()},
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": list(np.random.get_state()),
            "optimizer": opt.state() if hasattr(opt, "state") else None,
            "params": self.parts.params,
            "trace": self.trace,
        }
        data = checkpoint.dumps(state)
        t = self.tracker
        if self.previous_ckpt is not None:
            p = t.staged_path(checkpoint.FOLDER, checkpoint.PREVIOUS)
            p.write_bytes(self.previous_ckpt)
            t.add_staged(p, checkpoint.FOLDER)
        p = t.staged_path(checkpoint.FOLDER, checkpoint.LAST)
        p.write_bytes(data)
        t.add_staged(p, checkpoint.FOLDER)
        self.previous_ckpt = data

    # -- the end -------------------------------------------------------------------------
    def close(self, status: str, error: BaseException | None = None) -> tuple[str, str]:
        """Every end-of-run write, then the status: FINISHED only when all of them reached the
        store. Returns (final status, summary text)."""
        self.write_end(status, error)
        return self.confirm()

    def write_end(self, status: str, error: BaseException | None = None) -> None:
        """The end-of-run writes, committed to the log without waiting for the store: several runs
        ending together (a batched group) write one after another while the senders work, then
        `confirm` each."""
        if self.bar is not None:
            self.bar.close()
        interrupt.STATE.closing = True
        t = self.tracker
        train_seconds = time.perf_counter() - self.t_train if self.t_train else 0.0
        summary, trouble = "", None
        tags = {}
        if isinstance(error, Diverged):
            tags |= {"fpdsl.error": str(error), "fpdsl.diverged_step": error.step}
        elif isinstance(error, BaseException):
            tags["fpdsl.error"] = f"{type(error).__name__}: {error}"[:5000]
        if status == "KILLED":
            tags["fpdsl.stopped"] = f"stopped by {self.stopped or 'a signal'} at step {self.step}"
        elif self.stopped and self.stopped.startswith("the "):
            tags["fpdsl.stopped"] = f"{self.stopped} at step {self.step}"
        try:
            if self.trace["step"] and self.observed != self.step and math.isfinite(self.loss):
                self._log(self._observe(self.step, self.theta, self.n_evals, force=True), self.step, self.n_evals)
            if self.images is not None:  # the last observation in the image chart too
                for name, (step, _, _) in self.latest.items():
                    if self.snapped.get(name) != step:
                        self._snapshot(name, step)
            if self.trace["step"] and self.logged != self.step:
                self._log({"loss": self.loss, "n_evals": self.n_evals}, self.step, self.n_evals)
            for name, (step, values, n_evals) in self.latest.items():
                if self.sent[name] != step:
                    self.sent[name] = step
                    self._log(values, step, n_evals)
            if self.trace["step"]:
                drop = (self.loss0 - self.loss) / abs(self.loss0) if self.loss0 else math.nan
                t.log_metrics({"final_loss": self.loss, "loss_drop": drop, "train_seconds": train_seconds,
                               "evals_per_second": self.n_evals / train_seconds if train_seconds > 0 else math.nan,
                               "steps": self.step, "final_n_evals": self.n_evals}, self.step)
            stop = getattr(self.parts.optimizer, "stop_reason", None)
            if stop:
                tags |= {f"optimizer.{k}": v for k, v in stop.items()}
                if self.stopped is None:
                    self.say(f"{self.parts.family} stopped before the budget at step {self.step}: {stop.get('message')}")
            summary = self._finish_probes()
            self._write_arrays()
            self.save_checkpoint()
            if self.output_dir is not None and (self.output_dir / ".hydra").is_dir():
                t.log_dir(self.output_dir / ".hydra", ".hydra")
            t.log_metrics({"tracking_seconds": t.seconds + t.sender.seconds}, self.step)
        except Exception as e:  # an end-of-run write failed: the run cannot be FINISHED
            trouble = f"{type(e).__name__}: {e}"[:5000]
            tags["fpdsl.error"] = f"writing the run's results failed: {trouble}"
            status = "FAILED"
        if self.parts.objective.variant is not None:  # the batched forward's variant on this machine (fpdsl.tuning)
            tags["fpdsl.kernel"] = self.parts.objective.variant.name
        t.set_tags(tags | {"fpdsl.tracking_seconds": f"{t.seconds:.4f}"})
        t.commit()
        self.ending = (status, summary)

    def confirm(self) -> tuple[str, str]:
        """The status, once the store confirmed everything before it (after `write_end`).
        Returns (final status, summary text)."""
        status, summary = self.ending
        t = self.tracker
        confirmed, why = t.close(status, self.cfg.tracking.timeout)
        if why and why.startswith("the store refused"):
            status = "FAILED"
        if not confirmed:
            self.say(f"{why}; the rest waits in {t.log.dir} (the next fpdsl start on this store sends it, "
                     f"or `fpdsl sync`)")
        return status, summary

    def _finish_probes(self) -> str:
        summary = ""
        fmt = tuple(self.cfg.get("figures", {}).get("formats", ("png",)))
        dpi = int(self.cfg.get("figures", {}).get("dpi", 100))
        for name, p in self.probes.items():
            if not p.steps:
                continue
            res = p.finish(title=self.parts.title)
            self.tracker.log_metrics({f"{name}/{k}": v for k, v in res.metrics.items()}, self.step)
            if res.tags:
                self.tracker.set_tags({f"{name}/{k}": v for k, v in res.tags.items()})
            for fig_name, fig in res.figures.items():
                self.tracker.log_figure(fig, f"figures/{name}_{fig_name}", formats=fmt, dpi=dpi)
            self.arrays.update({f"{name}/{k}": v for k, v in res.arrays.items()})
            if res.line:
                summary += f"; {name}: {res.line}"
        return summary

    def _write_arrays(self) -> None:
        """probe_history.npz (every probe's history and the trace) and final.npz (θ, the
        network's output on the training inputs, the inputs and targets)."""
        obj = self.parts.objective
        arrays = dict(self.arrays)
        arrays.update({f"trace/{k}": np.asarray(v) for k, v in self.trace.items()})
        t = self.tracker
        p = t.staged_path(None, "probe_history.npz")
        np.savez_compressed(p, **arrays)
        t.add_staged(p, None)
        theta = self.theta.detach().cpu().double().numpy()
        out = obj.output(self.theta) if math.isfinite(self.loss) else np.full(obj.y.shape, np.nan)
        p = t.staged_path(None, "final.npz")
        np.savez_compressed(p, theta=theta, output=np.asarray(out), x=obj.x.cpu().double().numpy(),
                            y=obj.y.cpu().double().numpy(), param_names=np.array(obj.names),
                            param_sizes=np.array(obj.sizes), step=np.array(self.step))
        t.add_staged(p, None)


def _history(probe) -> dict:
    """What a probe recorded (lists, tuples, scalars), not the constant operators it built
    from the data (kernels, DFT matrices: numpy arrays), which the resumed run rebuilds."""
    kept = (list, tuple, dict, int, float, str, bool, type(None))
    return {k: v for k, v in probe.__dict__.items() if isinstance(v, kept) and not k.startswith("_")}


def _progress(cfg, total, initial):
    if cfg.progress == "off" or (cfg.progress == "auto" and (not sys.stderr.isatty() or os.environ.get("CI") or _multirun())):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _multirun() -> bool:
    from hydra.types import RunMode

    h = _hydra()
    return bool(h and h.mode == RunMode.MULTIRUN)


def _hydra_output_dir():
    h = _hydra()
    try:
        return Path(h.runtime.output_dir) if h else None
    except Exception:
        return None

