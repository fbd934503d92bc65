"""The objective: dataset + model + loss over one flat parameter vector θ.

Every optimizer family talks only to this. It answers loss(θ), loss and gradient(θ)
(also as numpy, zero-copy, for scipy) and the loss of a whole population Θ[S, P]
in one batched call, and counts every loss evaluation.

Any nn.Module is evaluated through torch.func.functional_call: a population under vmap
(one call per member if vmap cannot batch the model). A plain MLP (nn.Sequential of
Linear layers with elementwise activations between them: mlp, two_layer, siren) has a
faster path: a population through batched matrix products (5-10× vmap's throughput,
benchmarks/bench.py), one θ through the module's own operations without nn.Module's call
machinery. For Linear(1, w) → tanh → Linear(w, 1) with the mean squared error (the default
problem) fpdsl.fused computes a population's loss in one compiled pass, 2-3× faster again;
fpdsl.tuning measures which path is fastest on the machine. Tests check every path against
the module's own forward pass.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fpdsl import tuning
from fpdsl.losses import MSE

# memory one population chunk's (S, n, width) hidden state may take on GPU (bigger is better
# there); on CPU the chunk is part of the kernel's variant, measured per machine (fpdsl.tuning)
GPU_CHUNK_BYTES = 512 << 20


class Objective:
    def __init__(self, model, x, y, loss, dtype=torch.float32, device="cpu", chunk: int | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype)
        self.x = torch.as_tensor(x, dtype=dtype, device=self.device)
        self.y = torch.as_tensor(y, dtype=dtype, device=self.device)
        self.loss_fn = loss
        named = [(n, p) for n, p in self.model.named_parameters()]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.theta0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self.n_params = self.theta0.numel()
        self.chunk = chunk  # population members per batched call; None: sized by the variant's chunk_bytes
        self.variant = None  # the batched kernel's variant (fpdsl.tuning), chosen at the first population call
        self.n_evals = 0
        self.kernel = _MLPKernel.of(self.model)  # None unless the model is a plain MLP
        self._vmap_ok = True
        self._views = {}  # population tensor layout → (tensor, the kernel's views of it)
        self._last = None  # (θ, output) of the last single-θ evaluation on the dataset, for probes

    # -- parameters ---------------------------------------------------------
    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of θ (..., P) as the model's parameters, leading axes kept."""
        lead = theta.shape[:-1]
        parts = torch.split(theta, self.sizes, dim=-1)
        return {n: t.reshape(*lead, *s) for n, t, s in zip(self.names, parts, self.shapes)}

    def load(self, theta: torch.Tensor) -> None:
        """Copy θ into the model's own parameters (for probes that read the module)."""
        torch.nn.utils.vector_to_parameters(theta.detach().to(self.dtype), self.model.parameters())

    # -- evaluation ---------------------------------------------------------
    def forward(self, theta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The network on x (default: the dataset) at θ (P,), or at each row of θ (..., P)."""
        x = self.x if x is None else x
        if self.kernel is not None:
            if theta.dim() == 1:
                return self.kernel.single(self.unflatten(theta), x)
            lead = theta.shape[:-1]
            out = self.kernel(self.kernel.layers(self.unflatten(theta.reshape(-1, self.n_params))), x,
                              fold=(self.variant or tuning.DEFAULT).fold)
            return out.reshape(*lead, *out.shape[1:])
        if theta.dim() > 1:
            return torch.vmap(lambda p: functional_call(self.model, p, (x,)))(self.unflatten(theta))
        return functional_call(self.model, self.unflatten(theta), (x,))

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        self.n_evals += 1
        h = self.forward(theta)
        if theta.dim() == 1:  # kept (a copy of θ: scipy reuses its buffer) so probes at this θ need no forward pass
            self._last = (theta.detach().clone(), h.detach())
        return self.loss_fn(h, self.y)

    def loss_numpy(self, x: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.loss(self._from_numpy(x)))

    def loss_grad_numpy(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        theta = self._from_numpy(x).requires_grad_(True)
        value = self.loss(theta)
        (grad,) = torch.autograd.grad(value, theta)
        grad = grad.cpu().numpy()  # a view on CPU
        return value.item(), grad if grad.dtype == np.float64 else grad.astype(np.float64)

    def _from_numpy(self, x: np.ndarray) -> torch.Tensor:
        # zero-copy on CPU when dtypes agree (scipy works in float64, so does the objective then)
        dtype = np.float64 if self.dtype == torch.float64 else np.float32
        return torch.from_numpy(np.asarray(x, dtype=dtype)).to(self.device)

    def population_loss(self, thetas: torch.Tensor, y: torch.Tensor | None = None, count: bool = True) -> torch.Tensor:
        """Loss of every row of Θ (S, P) in batched calls, without gradients; returns (S,). y: one
        target per row (S, n, c) instead of the dataset's (several runs' populations in one call,
        fpdsl.batch); count=False leaves the evaluation count to the caller."""
        if torch.is_grad_enabled():  # the engines call it with gradients off already: no context switch
            with torch.no_grad():
                return self.population_loss(thetas, y, count)
        thetas = thetas.to(device=self.device, dtype=self.dtype)
        S = thetas.shape[0]
        if count:
            self.n_evals += S
        if self.variant is None:
            self.variant = self._choose_variant(thetas)
        if self.variant.fused:
            return self._fused_loss(thetas, y)
        chunk = self.chunk or self._auto_chunk
        if S <= chunk:
            return self._batched_loss(thetas, y)
        chunk = -(-S // -(-S // chunk))  # the same number of chunks, of equal size
        return torch.cat([self._batched_loss(thetas[i : i + chunk], None if y is None else y[i : i + chunk])
                          for i in range(0, S, chunk)])

    def batched_forward(self, thetas: torch.Tensor, reuse: bool = False) -> torch.Tensor:
        """The network at every row of Θ (S, P): (S, n, c), differentiable (fpdsl.batch trains
        several runs' parameters at once through it). reuse=True: the hidden states go into the
        kernel's buffer kept from call to call, for a caller that runs each call's backward pass
        once, before the next call (a training loop)."""
        if self.kernel is not None:
            if not torch.is_grad_enabled():
                return self.kernel(self._layers(thetas), self.x, fold=(self.variant or tuning.DEFAULT).fold)
            if self.kernel.closed_form and self.y.shape[-1] == 1:
                return _OneHiddenLayer.apply(thetas, self, reuse)
            return self.kernel(self._layers(thetas), self.x, fold=False)  # torch's tanh: one fused backward
        params = self.unflatten(thetas)
        if self._vmap_ok:
            try:
                return torch.vmap(lambda p: functional_call(self.model, p, (self.x,)))(params)
            except Exception:  # an op without a batching rule: fall back to one call per member
                self._vmap_ok = False
        return torch.stack([functional_call(self.model, {k: v[i] for k, v in params.items()}, (self.x,))
                            for i in range(len(thetas))])

    def _layers(self, thetas: torch.Tensor) -> list[tuple]:
        """The kernel's per-layer views of Θ. A population engine evaluates the same tensor every
        generation (updated in place), so the views are kept per tensor layout; each entry holds
        the tensor itself, so its memory cannot be reused by another tensor while cached."""
        if thetas.requires_grad:
            return self.kernel.layers(self.unflatten(thetas))
        key = (thetas.data_ptr(), thetas.shape, thetas.stride(), thetas.dtype, thetas.device)
        hit = self._views.get(key)
        if hit is None:
            if len(self._views) >= 16:
                self._views.clear()
            hit = self._views[key] = (thetas, self.kernel.layers(self.unflatten(thetas)))
        return hit[1]

    def _batched_loss(self, thetas: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_fn(self.batched_forward(thetas), self.y if y is None else y)

    @cached_property
    def fusable(self) -> bool:
        """Whether fpdsl.fused computes this objective's population loss: Linear(1, width), tanh,
        Linear(width, 1) with biases (parameters in that order), mean squared error, float32 on CPU."""
        if self.kernel is None or self.kernel.acts != ["tanh"] or type(self.loss_fn) is not MSE:
            return False
        if self.device.type != "cpu" or self.dtype != torch.float32 or self.x.shape[-1] != 1 or self.y.shape[-1] != 1:
            return False
        width = self.shapes[0][0]
        return [tuple(s) for s in self.shapes] == [(width, 1), (width,), (1, width), (1,)]

    @cached_property
    def _fused_data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[:, 0].contiguous().numpy(), self.y.reshape(1, -1).contiguous().numpy()

    def _fused_loss(self, thetas: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        from fpdsl import fused  # numba: imported only when a population is evaluated this way

        thetas = thetas.detach().contiguous()
        x, shared = self._fused_data
        targets = shared if y is None else y.reshape(len(thetas), -1).contiguous().numpy()
        out = torch.empty(len(thetas), dtype=self.dtype)
        fused.losses(thetas.numpy(), x, targets, self.shapes[0][0], out.numpy(), torch.get_num_threads())
        return out

    @cached_property
    def activation_size(self) -> int:
        """Values in the widest layer's output over the dataset for one θ (points × width):
        the size of one evaluation, for choosing chunks and thread counts."""
        widest = max([self.x.shape[-1], self.y.shape[-1]] + [max(s) for s in self.shapes if len(s)])
        return self.x.shape[0] * widest

    @property
    def _auto_chunk(self) -> int:
        per_member = self.activation_size * self.x.element_size()
        budget = self.variant.chunk_bytes if self.device.type == "cpu" else GPU_CHUNK_BYTES
        return max(1, budget // max(per_member, 1))

    def _choose_variant(self, thetas):
        if self.kernel is None or self.device.type != "cpu" or len(thetas) < 2:
            return tuning.DEFAULT
        return tuning.choose(self, thetas)

    @torch.no_grad()
    def output(self, theta: torch.Tensor, x: torch.Tensor | None = None) -> np.ndarray:
        """The network's output (n, c) as float64, read-only (not counted as a loss evaluation).

        On the dataset, the output of the last single-θ evaluation is reused when θ has the
        same values: the torch family and scipy report the θ they just evaluated, and a
        population engine reports the same best θ for many steps. Otherwise a plain MLP goes
        through the batched kernel as a population of one."""
        if x is None and self._last is not None:
            last, out = self._last
            if last.shape == theta.shape and torch.equal(last, theta.to(last.dtype)):
                if isinstance(out, torch.Tensor):
                    out = self._numpy(out)
                    self._last = (last, out)
                return out
        t = theta.to(self.dtype)
        out = self._numpy(self.forward(t.reshape(1, -1), x)[0] if self.kernel is not None else self.forward(t, x))
        if x is None:
            self._last = (t.clone(), out)
        return out

    @staticmethod
    def _numpy(h: torch.Tensor) -> np.ndarray:
        out = h.cpu().double().numpy()
        if h.dtype == torch.float64:
            out = out.copy()  # double() made no copy: not a view of training's own tensor
        out.flags.writeable = False  # shared by every probe of the step, and by later steps
        return out


class _MLPKernel:
    """Linear (activation Linear)* evaluated for a whole population with batched matrix products.

    h (S, n, d) per member; weights (S, out, in). Hidden states are written once and
    activated in place. With fold=True tanh is computed as 2σ(2z) − 1 (on some CPUs torch's
    sigmoid is about 2.5× faster than its tanh; on others its tanh wins: fpdsl.tuning
    measures which): the 2 scales the layer's own product, and the affine 2s − 1 is folded
    into the next layer's weights and bias, so nothing extra touches the (S, n, width)
    hidden states.
    """

    INPLACE = {"relu": torch.Tensor.relu_, "sigmoid": torch.Tensor.sigmoid_, "sin": torch.Tensor.sin_}
    TORCH = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}

    def __init__(self, linears: list[str], acts: list, act_forwards: list):
        self.linears = linears  # parameter-name prefixes of the Linear layers, in order
        self.acts = acts  # between consecutive linears: a name ("tanh", "relu", ...) or a callable
        self.act_forwards = act_forwards  # the activation modules' own forward methods
        self.work = {}  # reused hidden-state buffers (no-grad calls; "grad": the batched training step)
        # Linear → tanh or sigmoid → Linear: its members' gradient has a closed form (_OneHiddenLayer)
        self.closed_form = len(linears) == 2 and acts[0] in ("tanh", "sigmoid")

    @classmethod
    def of(cls, model: nn.Module):
        """The kernel for model if it is a plain MLP, else None (the generic vmap path)."""
        if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
            return None
        layers = list(model.named_children())
        if len(layers) % 2 == 0 or list(model.buffers()):
            return None
        linears, acts, forwards = [], [], []
        for i, (name, m) in enumerate(layers):
            if i % 2 == 0:
                if type(m) is not nn.Linear:
                    return None
                linears.append(name)
            else:
                act = cls._activation(m)
                if act is None:
                    return None
                acts.append(act)
                forwards.append(m.forward)
        return cls(linears, acts, forwards)

    @classmethod
    def _activation(cls, m):
        if type(m) in cls.TORCH:
            return cls.TORCH[type(m)]
        from fpdsl.models import ACTIVATIONS, Act

        if type(m) is Act and not list(m.parameters()) and ACTIVATIONS.get(m.name) is m.fn:
            if getattr(m, "scale", 1.0) != 1.0:
                return m  # σ(scale · z): the module itself, still elementwise
            return m.name if m.name in ("tanh", *cls.INPLACE) else m.fn
        return None

    def single(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """One member: the module's own operations (F.linear, the activation's forward)
        without nn.Module's call machinery, so the same numbers, fewer steps per call."""
        h = x
        for i, name in enumerate(self.linears):
            h = F.linear(h, params[f"{name}.weight"], params.get(f"{name}.bias"))
            if i < len(self.act_forwards):
                h = self.act_forwards[i](h)
        return h

    def layers(self, params: dict[str, torch.Tensor]) -> list[tuple]:
        """Per Linear layer, (Wᵀ (S, in, out), b (S, 1, out) or None): views of the members' θ."""
        out = []
        for name in self.linears:
            W, b = params[name + ".weight"], params.get(name + ".bias")
            out.append((W.transpose(-1, -2), None if b is None else b.unsqueeze(-2)))
        return out

    def __call__(self, layers: list[tuple], x: torch.Tensor, fold: bool = True) -> torch.Tensor:
        """The members' outputs (S, n, out) from their layers (see `layers`) on the shared input x."""
        inplace = not torch.is_grad_enabled()
        h = None  # None: the input x, shared by every member
        pending = None  # (a, c): the last activation's true output is a·h + c (tanh via sigmoid)
        for i, (Wt, b) in enumerate(layers):
            if pending is not None:  # z = b + (a·h + c) W^T = (b + c·ΣW) + a·(h W^T)
                a, c = pending
                shift = (c * Wt.sum(-2)).unsqueeze(-2)
                b = shift if b is None else b + shift
            else:
                a = 1.0
            act = self.acts[i] if i < len(self.acts) else None
            folded = fold and act == "tanh"
            s = 2.0 if folded else 1.0  # tanh(z) = 2σ(2z) − 1
            out = self._buffer(i % 2, (Wt.shape[0], x.shape[0], Wt.shape[-1]), x) if inplace and act else None
            h = self._affine(h, x, Wt, b, a * s, s, out)
            pending = None
            if folded:
                h = h.sigmoid_() if inplace else h.sigmoid()
                pending = (2.0, -1.0)
            elif act == "tanh":
                h = h.tanh_() if inplace else h.tanh()
            elif isinstance(act, str):
                h = self.INPLACE[act](h) if inplace else getattr(torch, act)(h)
            elif act is not None:
                h = act(h)
        return h

    def _buffer(self, parity, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        key = (parity, shape, like.dtype, like.device)
        if key not in self.work:
            if len(self.work) >= 8:  # shapes change (a budget-cut last generation): keep few
                self.work.clear()
            self.work[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return self.work[key]

    @staticmethod
    def _affine(h, x, Wt, b, alpha: float, beta: float, out=None):
        """beta·b + alpha·(h Wt) for a batch of members (into out if given); h None: the shared input
        x (n, in); b (S, 1, out) or None."""
        if h is None:
            if x.shape[-1] == 1:  # outer product: elementwise, no matrix product needed
                xs = x.unsqueeze(0)  # (1, n, 1) against (S, 1, out)
                if b is None:
                    return torch.mul(xs, Wt if alpha == 1.0 else alpha * Wt, out=out)
                return torch.addcmul(b if beta == 1.0 else b * beta, xs, Wt, value=alpha, out=out)
            h = x.expand(Wt.shape[0], *x.shape)
        if b is None:
            out = torch.bmm(h, Wt, out=out)
            return out.mul_(alpha) if alpha != 1.0 else out
        return torch.baddbmm(b, h, Wt, beta=beta, alpha=alpha, out=out)


class _OneHiddenLayer(torch.autograd.Function):
    """h = σ(x W1ᵀ + b1), out = h W2ᵀ + b2 for a batch of members (S, n, 1), σ = tanh or sigmoid,
    with the gradient of θ (S, P) in closed form.

    Why not autograd: its backward writes dL/dh and dL/dz, two more (S, n, width) tensors, and
    reduces them one parameter at a time; a batched training step of 16-64 members took 2.4-3×
    as long (benchmarks/bench_batched.py, docs/performance.md). With one output, g = dL/dout
    (S, n, 1) and σ' a polynomial in h (tanh: 1 − h², sigmoid: h − h²), every gradient is a
    batched product of A = [g; g·x_d] (S, 1+d, n) with h or h²:
        dW2 = gᵀh,  [db1; dW1ᵀ] = W2 ⊙ (A·σ'(h)) = W2 ⊙ (ΣA − A h²)  or  W2 ⊙ (A h − A h²),  db2 = Σg.
    tests/test_batched.py checks it against autograd (gradcheck, float64)."""

    @staticmethod
    def forward(ctx, thetas, objective, reuse):
        k = objective.kernel
        (W1t, b1), (W2t, b2) = k.layers(objective.unflatten(thetas))
        # reuse: the kernel's buffer (a fresh (S, n, width) tensor a step cost page faults: 15-25 % of the step)
        buffer = k._buffer("grad", (thetas.shape[0], objective.x.shape[0], W1t.shape[-1]), thetas) if reuse else None
        ctx.reused = reuse
        h = k._affine(None, objective.x, W1t, b1, 1.0, 1.0, out=buffer)
        h = h.tanh_() if k.acts[0] == "tanh" else h.sigmoid_()
        ctx.objective = objective
        ctx.save_for_backward(thetas, h)
        return k._affine(h, objective.x, W2t, b2, 1.0, 1.0)

    @staticmethod
    def backward(ctx, g):
        obj = ctx.objective
        thetas, h = ctx.saved_tensors
        names = obj.kernel.linears
        W2 = obj.unflatten(thetas)[names[1] + ".weight"]  # (S, 1, width)
        gr = g.transpose(1, 2)  # (S, 1, n)
        A = torch.cat([gr, gr * obj.x.T.unsqueeze(0)], 1)  # (S, 1+d, n)
        S1 = torch.bmm(A, h)
        S2 = torch.bmm(A, h.square_() if ctx.reused else h * h)  # the buffer's h is not needed any more
        core = ((A.sum(-1, keepdim=True) if obj.kernel.acts[0] == "tanh" else S1) - S2) * W2  # [db1; dW1ᵀ]
        grads = {names[0] + ".weight": core[:, 1:].transpose(1, 2), names[0] + ".bias": core[:, 0],
                 names[1] + ".weight": S1[:, :1], names[1] + ".bias": gr.sum(-1)}
        S = thetas.shape[0]
        return torch.cat([grads[n].reshape(S, -1) for n in obj.names], 1), None, None
