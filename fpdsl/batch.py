"""Several runs trained as one (hydra/launcher=batched).

Runs whose models have the same architecture, on the same inputs, with the same loss,
dtype and device are stacked (`signature`):

- the torch family's elementwise optimizers (SGD/GD, Adam, AdamW, RMSprop, ...): one
  optimizer over every member's parameters, a param group per member (so hyperparameters
  may differ), one batched forward and backward pass for all members a step;
- the population engines (pso, de, snes): each member's engine keeps its own swarm, random
  numbers and best, and every generation the members' populations are evaluated in one
  batched loss call (their search generators are driven together).

Everything else (scipy, nevergrad, torch's L-BFGS) trains one member after another in
the same process. Each member keeps its own Recorder: its own MLflow run with exactly what
a separate run records; a member that diverges fails alone.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

log = logging.getLogger("fpdsl")


def signature(member):
    """The key of members that can share a batched call; None: trains on its own."""
    from fpdsl.optim import DE, PSO, SNES, TorchOptimizer

    parts = member.parts
    opt, obj = parts.optimizer, parts.objective
    if isinstance(opt, TorchOptimizer) and not issubclass(opt.cls, torch.optim.LBFGS):
        kind = ("torch", opt.cls.__name__)
    elif isinstance(opt, (PSO, DE, SNES)):
        kind = ("population",)
    else:
        return None
    x = obj.x.detach().cpu().numpy()
    loss = parts.loss
    loss_key = (type(loss).__qualname__, tuple(sorted((k, str(v)) for k, v in vars(loss).items()
                                                       if not isinstance(v, torch.Tensor))))
    return (*kind, repr(parts.model), tuple(map(tuple, obj.shapes)), str(obj.dtype), str(obj.device),
            hashlib.sha1(x.tobytes()).hexdigest(), tuple(obj.y.shape), loss_key)


def train_members(members) -> None:
    """Train every member (runner.train semantics: statuses and errors set on each)."""
    from fpdsl import runner

    groups, alone = {}, []
    for m in members:
        key = signature(m)
        if key is None:
            alone.append(m)
        else:
            groups.setdefault(key, []).append(m)
    for key, group in groups.items():
        if len(group) == 1:
            alone.append(group[0])
            continue
        log.info(f"batched: {len(group)} runs of {key[0]} trained together "
                 f"({', '.join(m.run_id[:8] for m in group)})")
        _together(group, _torch_group if key[0] == "torch" else _population_group)
    if alone and members and len(alone) > 1:
        log.info(f"batched: {len(alone)} runs that cannot share a batched call train one after another in this process")
    for m in alone:
        torch.set_rng_state(m.parts.rng[0])
        np.random.set_state(m.parts.rng[1])
        runner.train(m)


def _together(group, loop) -> None:
    from fpdsl import runner

    live = []
    for m in group:
        try:
            m.rec.start()
            live.append(m)
        except Exception as e:
            runner.fail(m, e)
    runner._collect_garbage_later()
    try:
        loop(live)
    except Exception as e:  # the shared loop itself broke: every member still in it fails
        for m in live:
            if m.error is None:
                runner.fail(m, e)


def _targets(objs):
    """The members' targets stacked (M, n, c), or None when they are all the same."""
    y0 = objs[0].y
    if all(o.y is y0 or torch.equal(o.y, y0) for o in objs):
        return None
    return torch.stack([o.y for o in objs])


class _MemberView:
    """One member's slice of the shared torch optimizer, as its own optimizer's state_dict
    (what a separate run's checkpoint holds)."""

    def __init__(self, opt, theta):
        self.opt, self.theta = opt, theta
        group = next(g for g in opt.param_groups if any(p is theta for p in g["params"]))
        self.group = {k: v for k, v in group.items() if k != "params"}  # kept after the member leaves

    def state_dict(self):
        return {"state": {0: dict(self.opt.state.get(self.theta, {}))}, "param_groups": [self.group | {"params": [0]}]}


def _torch_group(members) -> None:
    from fpdsl import runner
    from fpdsl.recorder import Diverged

    objs = [m.parts.objective for m in members]
    o0 = objs[0]
    cls = members[0].parts.optimizer.cls
    thetas = [o.theta0.clone().requires_grad_(True) for o in objs]
    by_hyper = {}  # members with the same hyperparameters share a param group
    for t, m in zip(thetas, members):
        by_hyper.setdefault(repr(sorted(m.parts.optimizer.hyper.items())), (m.parts.optimizer.hyper, []))[1].append(t)
    opt = cls([{"params": params, **hyper} for hyper, params in by_hyper.values()])
    for t, m in zip(thetas, members):
        saved = m.parts.optimizer._resume
        if saved is not None:  # a resumed member continues its own optimizer state
            st = saved["optimizer"]
            opt.state[t] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st["state"].get(0, {}).items()}
        m.parts.optimizer._opt = _MemberView(opt, t)
    targets = _targets(objs)
    active = list(range(len(members)))

    def evaluate():
        opt.zero_grad(set_to_none=False)
        h = o0.batched_forward(torch.stack([thetas[i] for i in active]))
        y = o0.y if targets is None else targets[active]
        losses = o0.loss_fn(h, y)
        losses.sum().backward()  # the sum's gradient for each member is its own loss's gradient
        for j, i in enumerate(active):
            objs[i].n_evals += 1
            objs[i]._last = (thetas[i].detach().clone(), h[j].detach())
        return losses.detach()

    evaluate()  # θ_0's gradients, for the first step
    for i, m in enumerate(members):
        if m.parts.optimizer._resume is not None:
            objs[i].n_evals -= 1  # the checkpoint's θ was evaluated, and counted, before it was saved
    step = 0
    while active:
        opt.step()
        step += 1
        losses = evaluate()
        done = []
        for j, i in enumerate(active):
            m = members[i]
            try:
                if m.rec.on_step(step, thetas[i].detach(), objs[i].n_evals, float(losses[j])):
                    runner.ended(m)
                    done.append(i)
            except Diverged as e:  # this member alone
                runner.fail(m, e)
                done.append(i)
        for i in done:
            active.remove(i)
            for g in opt.param_groups:
                g["params"] = [p for p in g["params"] if p is not thetas[i]]
            opt.param_groups = [g for g in opt.param_groups if g["params"]]


def _population_group(members) -> None:
    from fpdsl import runner

    objs = [m.parts.objective for m in members]
    o0 = objs[0]
    targets = _targets(objs)
    searches, pending = {}, {}
    for i, m in enumerate(members):
        searches[i] = m.parts.optimizer.search(objs[i], m.rec.remaining, m.rec.on_step)
        _advance(searches, pending, members, i, None, first=True)
    while pending:
        order = list(pending)
        xs = [pending[i] for i in order]
        y = None if targets is None else torch.cat([targets[i].expand(len(x), *targets.shape[1:]) for i, x in zip(order, xs)])
        f = o0.population_loss(torch.cat(xs), y=y, count=False)
        at = 0
        for i, x in zip(order, xs):
            objs[i].n_evals += len(x)
            _advance(searches, pending, members, i, f[at : at + len(x)].clone())
            at += len(x)


def _advance(searches, pending, members, i, f, first=False) -> None:
    """Hand member i's losses to its search; keep what it asks next, or note how it ended."""
    from fpdsl import runner

    try:
        pending[i] = next(searches[i]) if first else searches[i].send(f)
    except StopIteration:
        pending.pop(i, None)
        runner.ended(members[i])
    except Exception as e:
        pending.pop(i, None)
        runner.fail(members[i], e)
