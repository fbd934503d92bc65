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
    runner.collect_garbage_later()
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
    """One member's row of the shared torch optimizer, as its own optimizer's state_dict (what a
    separate run's checkpoint holds): every state tensor shaped like the group's parameter
    gives the member's row, the rest (Adam's step count) is shared."""

    def __init__(self, opt, param, row):
        self.opt, self.param, self.row = opt, param, row
        group = next(g for g in opt.param_groups if any(p is param for p in g["params"]))
        self.group = {k: v for k, v in group.items() if k != "params"}

    def state_dict(self):
        state = {k: (v[self.row].clone() if isinstance(v, torch.Tensor) and v.shape == self.param.shape else v)
                 for k, v in self.opt.state.get(self.param, {}).items()}
        return {"state": {0: state}, "param_groups": [self.group | {"params": [0]}]}


class _Stack:
    """Members whose optimizer has the same hyperparameters (and, resumed, the same step count)
    as the rows of one (M, P) parameter: torch's elementwise optimizers then make one update for
    all of them (a parameter tensor per member cost a loop of small operations per member).
    `state`: the optimizer's state for that parameter, row by row ({} for a new one)."""

    def __init__(self, rows: list, hyper: dict, param: torch.Tensor, state: dict):
        self.rows, self.hyper, self.param, self.state = rows, hyper, param.requires_grad_(True), state

    @classmethod
    def of(cls, rows, members, objs) -> "_Stack":
        saved = [members[i].parts.optimizer._resume for i in rows]
        state = {}
        if saved[0] is not None:  # resumed members (grouped by step count): their states, stacked
            states = [s["optimizer"]["state"].get(0, {}) for s in saved]
            state = {k: torch.stack([st[k] for st in states]) if isinstance(v, torch.Tensor) and v.dim() > 0
                     else (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in states[0].items()}
        return cls(rows, members[rows[0]].parts.optimizer.hyper, torch.stack([objs[i].theta0 for i in rows]), state)

    def keep(self, rows: list, opt) -> "_Stack":
        """The same stack with only these row positions, their parameters and optimizer state."""
        index = torch.tensor(rows)

        def part(v):  # copies: the members that left keep the old optimizer's state as it was
            if not isinstance(v, torch.Tensor):
                return v
            return v.index_select(0, index) if v.shape == self.param.shape else v.clone()

        return _Stack([self.rows[r] for r in rows], self.hyper, self.param.detach().index_select(0, index),
                      {k: part(v) for k, v in opt.state.get(self.param, {}).items()})


def _step_count(member) -> str:
    saved = member.parts.optimizer._resume
    if saved is None:
        return "new"
    return repr(saved["optimizer"]["state"].get(0, {}).get("step"))


def _torch_group(members) -> None:
    from fpdsl import runner
    from fpdsl.recorder import Diverged, observe_together

    objs = [m.parts.objective for m in members]
    o0 = objs[0]
    cls = members[0].parts.optimizer.cls
    keys = {}
    for i, m in enumerate(members):
        keys.setdefault((repr(sorted(m.parts.optimizer.hyper.items())), _step_count(m)), []).append(i)
    stacks = [_Stack.of(rows, members, objs) for rows in keys.values()]
    targets = _targets(objs)

    def build(stacks):
        opt = cls([{"params": [st.param], **st.hyper} for st in stacks])
        for st in stacks:
            if st.state:
                opt.state[st.param] = st.state
            for row, i in enumerate(st.rows):
                members[i].parts.optimizer._opt = _MemberView(opt, st.param, row)
        return opt

    opt = build(stacks)

    def evaluate():
        opt.zero_grad(set_to_none=False)
        params = [st.param for st in stacks]
        order = [i for st in stacks for i in st.rows]
        h = o0.batched_forward(params[0] if len(params) == 1 else torch.cat(params), reuse=True)
        y = o0.y if targets is None else targets[order]
        losses = o0.loss_fn(h, y)
        losses.sum().backward()  # the sum's gradient for each member is its own loss's gradient
        for i in order:
            objs[i].n_evals += 1
        return order, losses.detach(), h.detach()

    def thetas():
        """Each member's θ now: rows of one copy of the stacks (the next step updates them in place)."""
        return torch.cat([st.param.detach() for st in stacks]).unbind()

    order, _, h = evaluate()  # θ_0's gradients, for the first step
    th = thetas()
    for j, i in enumerate(order):
        objs[i]._last = (th[j], h[j])
    for i, m in enumerate(members):
        if m.parts.optimizer._resume is not None:
            objs[i].n_evals -= 1  # the checkpoint's θ was evaluated, and counted, before it was saved
    step = 0
    while stacks:
        opt.step()
        step += 1
        order, losses, h = evaluate()
        th = thetas()
        observe_together([members[i].rec for i in order], step, h)
        done = set()
        for j, (i, loss) in enumerate(zip(order, losses.tolist())):
            m = members[i]
            objs[i]._last = (th[j], h[j])
            try:
                if m.rec.on_step(step, th[j], objs[i].n_evals, loss):
                    runner.ended(m)
                    done.add(i)
            except Diverged as e:  # this member alone
                runner.fail(m, e)
                done.add(i)
        if done:  # the rest continue in new stacks, each with its rows' parameters and optimizer state
            stacks = [st.keep(rows, opt) for st in stacks
                      if (rows := [r for r, i in enumerate(st.rows) if i not in done])]
            if stacks:
                opt = build(stacks)


@torch.no_grad()
def _population_group(members) -> None:
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
        if objs[-1].variant is None:  # every member is evaluated with o0's kernel variant: its run records it
            for o in objs:
                o.variant = o0.variant
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
