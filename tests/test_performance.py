"""Correctness of the fast paths (speed itself is measured by `make bench`, not here):
the batched population loss equals the per-vector loss, the population engines spend
exactly their budget, and threaded and single-threaded scipy runs agree."""
import inspect
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from threadpoolctl import threadpool_info
from torch import nn

from fpdsl.losses import MSE
from fpdsl.models import ACTIVATIONS, MLP
from fpdsl.objective import Objective
from fpdsl.optim import DE, PSO, SNES, Budget, NevergradOptimizer, ScipyOptimizer
from fpdsl.optim import kernels, population, scipy_family

CONF = Path(__file__).resolve().parents[1] / "conf"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")


def problem(model, n=23, in_dim=1, out_dim=1, dtype=torch.float32, device="cpu", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (n, in_dim))
    y = rng.standard_normal((n, out_dim))
    return Objective(model, x, y, MSE(), dtype=dtype, device=device)


def per_vector(obj, thetas):
    """Ground truth: the module's own forward pass, one θ at a time, through its own parameters."""
    out = []
    with torch.no_grad():
        for t in thetas:
            obj.load(t)
            out.append(obj.loss_fn(obj.model(obj.x), obj.y))
    return torch.stack(out)


def assert_same(batched, reference, dtype):
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    scale = reference.abs().max().clamp(min=1)
    assert float((batched - reference).abs().max() / scale) < tol, (batched, reference)


@pytest.mark.parametrize("fold", [True, False], ids=["fold", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_population_loss_equals_per_vector_loss(activation, depth, dtype, fold):
    from fpdsl.tuning import Variant

    torch.manual_seed(0)
    obj = problem(MLP(1, 1, width=9, depth=depth, activation=activation), dtype=dtype)
    assert obj.kernel is not None  # the specialised batched-matmul path
    obj.variant = Variant(fold, 1 << 12)  # a chunk of a few members: several calls
    thetas = obj.theta0 + 0.3 * torch.randn(6, obj.n_params, dtype=dtype)
    assert_same(obj.population_loss(thetas), per_vector(obj, thetas), dtype)
    thetas.mul_(1.1)  # the same tensor changed in place (as an engine does): the kernel's cached views follow
    assert_same(obj.population_loss(thetas), per_vector(obj, thetas), dtype)


@pytest.fixture
def to_tune(tmp_path, monkeypatch):
    """An empty variant cache, no forced variant, and 30 members of a width-40 tanh MLP to choose for."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FPDSL_KERNEL", raising=False)
    torch.manual_seed(0)
    obj = problem(MLP(1, 1, width=40, activation="tanh"))
    return obj, obj.theta0 + 0.1 * torch.randn(30, obj.n_params)


def test_the_kernel_variant_is_measured_once_per_machine_and_shape_then_read_back(to_tune, monkeypatch):
    from fpdsl import tuning

    obj, thetas = to_tune
    monkeypatch.setattr(tuning, "_waited", lambda: None)  # no schedstat: measured as on a quiet machine
    chosen = tuning.choose(obj, thetas)
    assert chosen in tuning.candidates(obj, 30) and {v.fold for v in tuning.candidates(obj, 30)} == {True, False}
    saved = json.loads(tuning.cache_file().read_text())
    (key,) = saved
    assert tuning.cpu_model() in key and torch.__version__ in key and "members 30" in key
    assert f"measure {tuning.METHOD}" in key  # a choice an older way of measuring made is not read back
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("measured again"))
    assert tuning.choose(obj, thetas) == chosen  # read back
    monkeypatch.setenv("FPDSL_KERNEL", "tanh")
    assert tuning.choose(obj, thetas).fold is False
    relu = problem(MLP(1, 1, width=40, activation="relu"))
    assert {v.fold for v in tuning.candidates(relu, 30)} == {True}  # no tanh: nothing to fold


CHOOSE = """
import sys, time, torch
from fpdsl import tuning
from fpdsl.losses import MSE
from fpdsl.models import MLP
from fpdsl.objective import Objective
measure = tuning.measure
def slow_measure(*a):  # a slow measurement: the other process must wait for it, not measure too
    with open(sys.argv[1], "a") as f:
        f.write("measured\\n")
    time.sleep(1.5)
    return measure(*a)
tuning.measure = slow_measure
tuning._waited = lambda: None  # no schedstat: every measurement counts as quiet (the lock is what is tested)
torch.manual_seed(0)
obj = Objective(MLP(1, 1, width=40), torch.linspace(-1, 1, 23)[:, None], torch.zeros(23, 1), MSE())
print(tuning.choose(obj, obj.theta0 + 0.1 * torch.randn(30, obj.n_params)).name)
"""


def test_two_processes_choosing_the_same_variant_at_once_measure_it_once(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("FPDSL_KERNEL", None)
    log = tmp_path / "measured.txt"
    procs = [subprocess.Popen([sys.executable, "-c", CHOOSE, str(log)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    names = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text().count("measured") == 1  # the second read the first one's choice
    assert names[0] == names[1] and names[0]


def test_a_variant_measured_while_other_work_takes_the_cpu_is_provisional(to_tune, monkeypatch):
    from fpdsl import tuning

    obj, thetas = to_tune
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)
        tuning.choose(obj, thetas)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    (entry,) = json.loads(tuning.cache_file().read_text()).values()
    assert entry.get("busy") is True, entry  # its threads waited for the CPU
    measured = []
    monkeypatch.setattr(tuning, "measure", lambda *a: measured.append(1) or tuning.DEFAULT)
    quiet = os.getloadavg()[0] <= (os.cpu_count() or 1) - 0.5  # the spinners ran too briefly to raise it
    tuning.choose(obj, thetas)
    assert len(measured) == quiet  # a quiet machine measures the shape again; a busy one takes the provisional choice


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("in_dim,out_dim", [(1, 1), (3, 2)])
@pytest.mark.parametrize("activation", ["tanh", "relu", "xtanh"])
def test_mlp_kernel_shapes_and_bias(activation, in_dim, out_dim, bias):
    torch.manual_seed(1)
    obj = problem(MLP(in_dim, out_dim, width=7, depth=2, activation=activation, bias=bias), in_dim=in_dim, out_dim=out_dim)
    thetas = obj.theta0 + 0.3 * torch.randn(5, obj.n_params)
    assert_same(obj.population_loss(thetas), per_vector(obj, thetas), torch.float32)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_single_vector_loss_and_gradient_equal_the_modules(activation):
    """forward() takes the batched path for a plain MLP too; autograd through it agrees."""
    torch.manual_seed(9)
    obj = problem(MLP(1, 1, width=6, depth=2, activation=activation), dtype=torch.float64)
    x = (obj.theta0 + 0.3 * torch.randn(obj.n_params, dtype=torch.float64)).numpy()
    f, g = obj.loss_grad_numpy(x)
    obj.kernel = None  # torch.func.functional_call on the module
    f_ref, g_ref = obj.loss_grad_numpy(x)
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-12)


def _small(node: dict) -> dict:
    """Shrink a model config so the test runs in milliseconds."""
    params = inspect.signature(get_object(node["_target_"])).parameters
    for key, value in {"width": 8, "n_features": 4, "depth": 2}.items():
        if key in params:
            node[key] = value
    return node


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_model_option_population_loss_equals_per_vector_loss(option):
    torch.manual_seed(2)
    node = _small(OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{option}.yaml")))
    obj = problem(instantiate(node, in_dim=1, out_dim=1))
    thetas = obj.theta0 + 0.05 * torch.randn(5, obj.n_params)
    assert_same(obj.population_loss(thetas), per_vector(obj, thetas), torch.float32)
    obj.kernel = None  # the generic vmap path agrees too
    assert_same(obj.population_loss(thetas), per_vector(obj, thetas), torch.float32)


class _NotVmappable(nn.Module):
    """A model with a buffer and a data-dependent Python branch (vmap cannot batch .item())."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 4)
        self.out = nn.Linear(4, 1)
        self.register_buffer("shift", torch.tensor(0.5))

    def forward(self, x):
        h = torch.tanh(self.lin(x) + self.shift)
        if self.lin.weight.sum().item() > 0:
            h = 2 * h
        return self.out(h)


def test_generic_path_falls_back_to_a_loop_when_vmap_cannot_batch():
    torch.manual_seed(3)
    obj = problem(_NotVmappable())
    assert obj.kernel is None
    thetas = obj.theta0 + torch.randn(6, obj.n_params)
    assert_same(obj.population_loss(thetas), per_vector(obj, thetas), torch.float32)
    assert obj.n_evals == 6


@pytest.mark.parametrize("width", [9, 50])
def test_fused_population_loss_equals_per_vector_loss(width):
    """fpdsl.fused: one compiled pass with a rational tanh, against the module's own forward."""
    from fpdsl import tuning

    torch.manual_seed(0)
    obj = problem(MLP(1, 1, width=width, activation="tanh"), n=201)
    assert obj.fusable
    obj.variant = tuning.FUSED
    thetas = obj.theta0 + 0.5 * torch.randn(40, obj.n_params)
    thetas[3, 0] = 40.0  # a tanh far into its flat part (the clamp)
    assert_same(obj.population_loss(thetas), per_vector(obj, thetas), torch.float32)
    thetas.mul_(1.1)  # the same tensor changed in place
    assert_same(obj.population_loss(thetas), per_vector(obj, thetas), torch.float32)
    targets = torch.randn(40, 201, 1)  # one target per member (fpdsl.batch)
    ref = torch.stack([obj.loss_fn(obj.forward(t.unsqueeze(0)), y) for t, y in zip(thetas, targets)]).reshape(-1)
    assert_same(obj.population_loss(thetas, targets), ref, torch.float32)
    from fpdsl import fused

    x, y = obj._fused_data
    one, two = np.empty(40, np.float32), np.empty(40, np.float32)
    fused.losses(thetas.numpy(), x, y, width, one, 1)
    fused.losses(thetas.numpy(), x, y, width, two, 2)
    assert np.array_equal(one, two)  # a member's loss does not depend on the threads
    thetas[5, 2], thetas[7, -1] = float("nan"), float("inf")
    f = obj.population_loss(thetas)
    rest = torch.ones(40, dtype=torch.bool)
    rest[[5, 7]] = False
    assert f[5].isnan() and f[7].isnan() and f[rest].isfinite().all()


def test_fused_path_is_offered_only_where_it_computes_the_same_loss(monkeypatch):
    from fpdsl import tuning
    from fpdsl.losses import Sobolev

    def fusable(model, loss=MSE(), dtype=torch.float32, in_dim=1, out_dim=1):
        obj = problem(model, in_dim=in_dim, out_dim=out_dim, dtype=dtype)
        obj.loss_fn = loss
        return obj.fusable

    assert fusable(MLP(1, 1, width=8, activation="tanh"))
    assert not fusable(MLP(1, 1, width=8, depth=2, activation="tanh"))
    assert not fusable(MLP(1, 1, width=8, activation="relu"))
    assert not fusable(MLP(2, 1, width=8, activation="tanh"), in_dim=2)
    assert not fusable(MLP(1, 2, width=8, activation="tanh"), out_dim=2)
    assert not fusable(MLP(1, 1, width=8, activation="tanh"), dtype=torch.float64)
    assert not fusable(nn.Sequential(nn.Linear(1, 8, bias=False), nn.Tanh(), nn.Linear(8, 1)))

    class Data:
        x, y, uniform = torch.linspace(-1, 1, 23)[:, None], torch.zeros(23, 1), True

    assert not fusable(MLP(1, 1, width=8, activation="tanh"), loss=Sobolev(Data(), s=1.0))
    obj = problem(MLP(1, 1, width=8, activation="tanh"))
    assert tuning.FUSED in tuning.candidates(obj, 30)
    assert tuning.FUSED not in tuning.candidates(problem(MLP(1, 1, width=8, activation="relu")), 30)
    monkeypatch.setenv("FPDSL_KERNEL", "fused")
    assert tuning.choose(obj, obj.theta0.expand(30, -1)) == tuning.FUSED
    deep = problem(MLP(1, 1, width=8, depth=2, activation="tanh"))
    assert tuning.choose(deep, deep.theta0.expand(30, -1)) == tuning.Variant(False, tuning.DEFAULT.chunk_bytes)


def test_a_child_forked_after_parallel_loops_computes_on_one_thread():
    """GNU OpenMP cannot run parallel code in a child forked after it ran (numba ends such a
    child): fpdsl.fused.parallel gives the child the one-thread twins, and the same numbers."""
    from fpdsl import fused, tuning

    torch.manual_seed(0)
    obj = problem(MLP(1, 1, width=16, activation="tanh"), n=101)
    obj.variant = tuning.FUSED
    thetas = obj.theta0 + 0.3 * torch.randn(64, obj.n_params)
    with torch.no_grad():
        parent = obj.population_loss(thetas).numpy()
    assert fused.parallel(2)  # parallel loops have run in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the loss and a short PSO run, through the parallel entry points
        try:
            with torch.no_grad():
                out = obj.population_loss(thetas).numpy()
            PSO(popsize=8).run(obj, Budget(5, None), lambda step, *a: step >= 5)
            os.write(write, out.tobytes() + bytes([fused.parallel(2)]))
        finally:
            os._exit(0)
    os.close(write)
    got = b""
    while chunk := os.read(read, 1 << 16):
        got += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert np.array_equal(np.frombuffer(got[:-1], np.float32), parent) and got[-1] == 0


def test_chunked_population_equals_one_call_and_counts_every_member():
    torch.manual_seed(4)
    obj = problem(MLP(1, 1, width=5))
    thetas = obj.theta0 + 0.2 * torch.randn(10, obj.n_params)
    whole = obj.population_loss(thetas)
    obj.chunk = 3
    assert torch.equal(obj.population_loss(thetas), whole)
    assert obj.n_evals == 20


def test_numpy_bridge_is_zero_copy_in_float64():
    obj = problem(MLP(1, 1, width=5), dtype=torch.float64)
    x = obj.theta0.numpy().copy()
    assert obj._from_numpy(x).data_ptr() == x.ctypes.data
    f, g = obj.loss_grad_numpy(x)
    assert g.dtype == np.float64 and g.shape == x.shape and np.isfinite(f)


def test_output_reuses_the_last_answer_only_for_the_same_unchanged_tensor():
    obj = problem(MLP(1, 1, width=5))
    theta = obj.theta0.clone()
    first = obj.output(theta)
    with pytest.raises(ValueError):  # shared and read-only: no probe can change what the next one reads
        first[:] = 0
    np.testing.assert_array_equal(obj.output(theta), obj.output(theta.clone()))
    theta.add_(0.5)  # changed in place: computed again
    np.testing.assert_allclose(obj.output(theta), obj.output(theta.clone()))
    assert not np.allclose(obj.output(theta), obj.output(obj.theta0))


ENGINES = {"pso": lambda: PSO(popsize=10), "de": lambda: DE(popsize=10, strategy="best1"), "snes": lambda: SNES(popsize=10)}


@pytest.fixture(params=["kernels", "torch"])
def update_path(request, monkeypatch):
    """The engines' two update paths: the compiled kernels (CPU) and the torch calls (GPU),
    here both on CPU."""
    if request.param == "torch":
        monkeypatch.setattr(population, "_fused", lambda device: False)
    return request.param


def tiny_objective(seed=0):
    torch.manual_seed(seed)
    x = np.linspace(-np.pi, np.pi, 41)[:, None]
    return Objective(MLP(1, 1, width=8), x, np.sin(x), MSE())


def recorder(max_steps=None, max_evals=None):
    calls = []

    def on_step(step, theta, n_evals, loss):
        calls.append((step, n_evals, loss, theta.clone()))
        return step >= (max_steps or np.inf) or n_evals >= (max_evals or np.inf)

    return calls, on_step


@pytest.mark.parametrize("engine", ENGINES)
def test_population_engine_lowers_the_loss_and_spends_exactly_its_budget(engine, update_path):
    obj = tiny_objective()
    start = float(obj.population_loss(obj.theta0[None])[0])
    obj.n_evals = 0
    calls, on_step = recorder(max_evals=205)
    best = ENGINES[engine]().run(obj, Budget(None, 205), on_step)
    assert obj.n_evals == 205  # 20 generations of 10, then 5 (the last one cut to the budget)
    assert [c[1] for c in calls] == [10 * s for s in range(1, 21)] + [205]
    losses = [c[2] for c in calls]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # best so far never worsens
    assert losses[-1] < start
    assert float(obj.population_loss(best[None])[0]) == pytest.approx(losses[-1], rel=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
def test_population_engine_step_budget_and_seed(engine, update_path):
    results = []
    for _ in range(2):
        obj = tiny_objective(seed=5)
        calls, on_step = recorder(max_steps=7)
        results.append(ENGINES[engine]().run(obj, Budget(7, None), on_step))
        assert obj.n_evals == 70 and len(calls) == 7
    assert torch.equal(results[0], results[1])  # torch.manual_seed fixes the run


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_generation_evaluated_inside_the_compiled_step_is_the_same_generation(engine, threads, monkeypatch):
    """A run of its own on fpdsl.fused's variant evaluates whole generations inside the engine's
    compiled step (kernels.*_generation); a batched group's member goes through evaluate."""
    from fpdsl import tuning

    inside = []
    take = population._Population.take
    monkeypatch.setattr(population._Population, "take", lambda self, S: inside.append(take(self, S)) or inside[-1])
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = []
        for alone in (True, False):
            obj = tiny_objective(seed=2)
            obj.variant = tuning.FUSED
            calls, on_step = recorder(max_evals=205)
            best = population.drive(ENGINES[engine]().search(obj, Budget(None, 205), on_step, alone=alone),
                                    obj.population_loss)
            runs.append((best, [c[1:3] for c in calls], obj.n_evals))
    finally:
        torch.set_num_threads(saved)
    assert inside.count(True) >= 18 and inside[-1] is False  # then the last generation, cut to the budget
    (best_in, calls_in, n_in), (best_out, calls_out, n_out) = runs
    assert n_in == n_out == 205 and calls_in == calls_out and torch.equal(best_in, best_out)


class SameDraws(population._Random):
    """The engines' random source with the torch path's uniforms and indices drawn as the
    kernels draw theirs (SplitMix64 from the same state, in the same order), so both update
    paths see the same numbers: PSO's (2, S, P) uniforms a generation as kernels.splitmix64
    fills them, DE's rows, components and forced components from one kernels.de_draws call a
    generation (`rows` stands in for population._distinct_others). Normals are the engine's
    own (kernels.normals on CPU) in both paths."""

    P = None  # the run's parameter count (DE's draws need it before the torch path names it)

    def uniform(self, shape, dtype):
        if getattr(self, "pending", None):  # DE: this generation's components, drawn with its rows
            raw = self.pending.pop("raw")
        else:
            _, words, raw = self.raw16(shape)
            kernels.splitmix64(words, self.state)
        return torch.from_numpy(raw * 2.0**-16).to(dtype)

    def randint(self, low, high, size):
        return torch.from_numpy(self.pending.pop("forced")).view(size)  # DE's forced components

    def rows(self, S):
        _, words, picks, raw, forced = self.de_draws(S, self.P)
        while True:
            kernels.de_draws(self.state, words, picks, forced, self.P)
            self.pending = {"raw": raw.copy(), "forced": forced.copy()}
            yield torch.from_numpy(picks.copy())


ALL_ENGINES = {**ENGINES, **{f"de_{s}": (lambda s=s: DE(popsize=10, strategy=s)) for s in DE.STRATEGIES[1:]},
               "pso_vmax": lambda: PSO(popsize=10, cognitive=1.2, social=1.8, max_velocity=0.05), "snes_plain": lambda: SNES(popsize=10, mirrored=False)}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_both_update_paths_make_the_same_run_from_the_same_random_numbers(engine, monkeypatch):
    """The torch calls (the GPU path) and the kernels (CPU) generation by generation, in float64."""
    monkeypatch.setattr(population, "_Random", SameDraws)
    monkeypatch.setattr(population, "_distinct_others", lambda rand, S: rand.rows(S))
    runs = []
    for fused in (True, False):
        monkeypatch.setattr(population, "_fused", lambda device, fused=fused: fused)
        torch.manual_seed(3)
        x = np.linspace(-np.pi, np.pi, 41)[:, None]
        obj = Objective(MLP(1, 1, width=8), x, np.sin(x), MSE(), dtype=torch.float64)
        monkeypatch.setattr(SameDraws, "P", obj.n_params)
        calls, on_step = recorder(max_steps=30)
        runs.append((ALL_ENGINES[engine]().run(obj, Budget(30, None), on_step), [c[2] for c in calls]))
    (best_k, losses_k), (best_t, losses_t) = runs
    assert losses_k[-1] < losses_k[0]  # the run moved
    np.testing.assert_allclose(losses_k, losses_t, rtol=1e-9)
    torch.testing.assert_close(best_k, best_t, rtol=1e-9, atol=1e-12)


# the kernels against the textbook steps written as torch calls, on the same random numbers
def _state(S=7, P=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(S, P, generator=g, dtype=torch.float64) for _ in range(4)] + [torch.randn(P, generator=g, dtype=torch.float64)]


@pytest.mark.parametrize("vmax", [0.0, 0.3])
def test_pso_kernel_is_the_textbook_update(vmax):
    x, v, pbest, _, best = _state()
    raw = np.random.default_rng(1).integers(0, 2**16, (2, *x.shape), dtype=np.uint16)
    r1, r2 = torch.from_numpy(raw.astype(np.float64) * 2.0**-16)
    w, c1, c2 = 0.7, 1.4, 1.6
    v_ref = w * v + c1 * r1 * (pbest - x) + c2 * r2 * (best - x)
    v_ref = v_ref.clamp(-vmax, vmax) if vmax else v_ref
    x_ref = x + v_ref
    kernels.pso_move(x.numpy(), v.numpy(), pbest.numpy(), best.numpy(), raw, w, c1, c2, vmax)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(x, x_ref)


def test_pso_kernel_moves_float32_state_in_float32():
    """A float32 run's move is float32 arithmetic (as the torch calls make it), given the
    state's dtype scalars: bitwise numpy's float32 evaluation in the same order, which a move
    computed in float64 and rounded to float32 is not."""
    x, v, pbest, _, best = (t.numpy().astype(np.float32) for t in _state(S=40, P=30))
    raw = np.random.default_rng(1).integers(0, 2**16, (2, *x.shape), dtype=np.uint16)
    w, c1, c2 = np.float32(0.7), np.float32(1.4), np.float32(1.6)
    a1, a2 = c1 * np.float32(2.0**-16), c2 * np.float32(2.0**-16)
    v_ref = w * v + a1 * raw[0].astype(np.float32) * (pbest - x) + a2 * raw[1].astype(np.float32) * (best - x)
    assert v_ref.dtype == np.float32
    x_ref = x + v_ref
    x64 = x + (w * v.astype(np.float64) + float(a1) * raw[0] * (pbest - x).astype(np.float64)
               + float(a2) * raw[1] * (best - x).astype(np.float64)).astype(np.float32)
    assert not np.array_equal(x64, x_ref)  # the two arithmetics differ on these numbers
    kernels.pso_move(x, v, pbest, best, raw, w, c1, c2, np.float32(0.0))
    np.testing.assert_array_equal(v, v_ref)
    np.testing.assert_array_equal(x, x_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ranked_is_the_stable_argsort(dtype):
    """SNES's ranking: numpy's stable order (ties by index, NaN of either sign last, −0 and +0
    tied) on losses with every such case, and on many random ones with repeats; the torch
    calls (the GPU path) rank with torch's stable argsort, the same order."""
    f = np.array([0.5, np.nan, 0.0, 2.0, -0.0, -np.inf, 0.5, -np.nan, np.inf, -1e-30, -3.0, 1e-45, 0.5, -3.0], dtype)
    rng = np.random.default_rng(0)
    for losses in [f, rng.integers(-5, 5, 1000).astype(dtype), rng.standard_normal(333).astype(dtype)]:
        order = kernels.ranked(losses)
        np.testing.assert_array_equal(order, np.argsort(losses, kind="stable"))
        np.testing.assert_array_equal(order, torch.argsort(torch.from_numpy(losses), stable=True).numpy())


@pytest.mark.parametrize("ties", [False, True])
def test_keep_better_kernel(ties):
    x, _, keep, _, _ = _state(S=5)
    f = torch.tensor([1.0, 2.0, float("nan"), 0.5, 3.0], dtype=torch.float64)
    fkeep = torch.tensor([2.0, 2.0, 1.0, 0.1, float("inf")], dtype=torch.float64)
    taken = torch.tensor([True, ties, False, False, True])
    keep_ref = torch.where(taken[:, None], x, keep)
    i = kernels.keep_better(x.numpy(), f.numpy(), keep.numpy(), fkeep.numpy(), ties)
    torch.testing.assert_close(keep, keep_ref)
    assert fkeep.tolist() == [1.0, 2.0, 1.0, 0.1, 3.0] and i == 3


@pytest.mark.parametrize("strategy", DE.STRATEGIES)
def test_de_kernel_is_the_textbook_trial(strategy):
    x, _, _, _, best = _state(S=6)
    S, P = x.shape
    rng = np.random.default_rng(2)
    picks = np.stack([rng.permutation(S) for _ in range(3)])
    raw = rng.integers(0, 2**16, (S, P), dtype=np.uint16)
    forced = rng.integers(0, P, S)
    F, threshold = 0.5, round(0.6 * 2**16)
    r1, r2, r3 = (x[torch.from_numpy(p)] for p in picks)
    mutant = {"best1": best + F * (r1 - r2), "rand1": r3 + F * (r1 - r2),
              "current_to_best1": x + F * (best - x) + F * (r1 - r2)}[strategy]
    mask = torch.from_numpy(raw < threshold)
    mask[torch.arange(S), torch.from_numpy(forced)] = True
    out = torch.empty_like(x)
    kernels.de_trial(x.numpy(), best.numpy(), picks, raw, forced, F, threshold, DE.STRATEGIES.index(strategy), out.numpy())
    torch.testing.assert_close(out, torch.where(mask, mutant, x))


@pytest.mark.parametrize("half", [0, 3])
def test_snes_kernels_are_the_textbook_steps(half):
    d, _, _, _, mu = _state(S=7 - half)  # a generation's drawn rows
    z = torch.cat([-d[:half], d])  # its directions: the mirrored rows first
    sigma = torch.rand(mu.shape, dtype=torch.float64) + 0.5
    x = torch.empty(7, mu.numel(), dtype=torch.float64)
    kernels.snes_sample(mu.numpy(), sigma.numpy(), d.numpy(), half, x.numpy())
    torch.testing.assert_close(x, mu + sigma * z)
    f = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0], dtype=torch.float64)  # a tie: 1 before 3
    util = torch.linspace(0.5, -0.5, 7, dtype=torch.float64)
    weights = torch.empty_like(util)
    weights[torch.tensor([1, 3, 6, 0, 2, 4, 5])] = util
    mu_ref = mu + 0.9 * sigma * (weights @ z)
    sigma_ref = sigma * torch.exp(0.2 / 2 * (weights @ z.square()))
    best, best_f = torch.zeros_like(mu), np.array([2.0])
    d_next, state = torch.empty_like(d), np.array([11], np.uint64)
    drawn = torch.empty_like(d)
    kernels.normals(state.copy(), drawn.view(-1).numpy())  # what the step draws from that state
    x_ref = x.clone()
    got_w = torch.empty_like(util)
    assert kernels.snes_step(mu.numpy(), sigma.numpy(), d.numpy(), half, util.numpy(), got_w.numpy(), best.numpy(),
                             best_f, x.numpy(), 0.9, 0.2, d_next.numpy(), state, 1, f.numpy())
    torch.testing.assert_close(got_w, weights)
    assert best_f[0] == 1.0 and torch.equal(best, x_ref[1])
    torch.testing.assert_close(mu, mu_ref)
    torch.testing.assert_close(sigma, sigma_ref)
    assert torch.equal(d_next, drawn)  # the next generation's directions
    f[2] = float("nan")  # ranks last
    assert not kernels.snes_step(mu.numpy(), sigma.numpy(), d.numpy(), half, util.numpy(), got_w.numpy(),
                                 best.numpy(), best_f, x.numpy(), 0.9, 0.2, d_next.numpy(), state, 1, f.numpy())  # 1.0 is no better
    assert got_w[2] == util[-1]


@pytest.mark.parametrize("engine", ["pso", "de", "snes"])
def test_parallel_kernels_make_the_same_numbers_as_the_one_thread_kernels(engine):
    """kernels.*_parallel (members split over threads) against the one-thread kernels, bitwise:
    the prepare and step kernels, and the whole generation on fpdsl.fused's loss."""
    from fpdsl import fused

    assert fused.parallel(2)
    S, P, half, width = 37, 22, 18, 7

    def make():  # the same state afresh each time (the draws' arrays are views of their words)
        rng = np.random.default_rng(5)
        x = rng.standard_normal((S, P)).astype(np.float32)
        best, best_f = x[0].copy(), np.array([0.5])
        rand = population._Random("cpu", 9)
        if engine == "pso":
            state = [x, np.zeros_like(x) + 0.1, x + 0.5, rng.random(S).astype(np.float32), best, best_f,
                     *rand.raw16((2, S, P)), 0.7, 1.4, 1.6, 0.3]
        elif engine == "de":
            state = [np.empty_like(x), x, rng.random(S).astype(np.float32), best, best_f, *rand.de_draws(S, P),
                     np.float32(0.5), 40000, 2]
        else:
            d = rng.standard_normal((2, S - half, P)).astype(np.float32)
            state = [x[0] * 0.1, np.full(P, 0.2, np.float32), d[0], half, np.linspace(0.5, -0.5, S).astype(np.float32),
                     np.zeros(S, np.float32), best, best_f, x, 0.9, 0.2, d[1], rand.state, 3]
        f = rng.random(S).astype(np.float32)
        f[4] = np.nan
        return state, f

    def same(one, two):
        return all(np.array_equal(a, b, equal_nan=True) for a, b in zip(one, two) if isinstance(a, np.ndarray))

    data = (np.linspace(-1, 1, 9).astype(np.float32), np.random.default_rng(6).standard_normal(9).astype(np.float32),
            width)
    (one, f1), (two, f2) = make(), make()
    for name in ("_prepare", "_step"):
        kernel, twin = getattr(kernels, engine + name), getattr(kernels, engine + name + "_parallel", None)
        if twin is not None:
            args = ((), ()) if name == "_prepare" else ((f1,), (f2,))
            assert kernel(*one, *args[0]) == twin(*two, *args[1])
            assert same(one, two) and same([f1], [f2])
    (one, f1), (two, f2) = make(), make()
    assert getattr(kernels, engine + "_generation")(*one, f1, *data) == getattr(
        kernels, engine + "_generation_parallel")(*two, f2, *data)
    assert same(one, two) and same([f1], [f2])
    members = {"pso": 0, "de": 0, "snes": 8}[engine]  # x, DE's trials
    assert not np.array_equal(one[members], make()[0][members])  # the generation made new members


def test_splitmix64_gives_the_reference_numbers_and_continues_from_its_state():
    out, state = np.empty(3, np.uint64), np.zeros(1, np.uint64)
    kernels.splitmix64(out, state)
    assert [int(v) for v in out] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]  # seed 0
    more, whole = np.empty(2, np.uint64), np.empty(5, np.uint64)
    kernels.splitmix64(more, state)
    kernels.splitmix64(whole, np.zeros(1, np.uint64))
    assert list(whole) == list(out) + list(more)


def test_de_draws_kernel_gives_distinct_other_rows_and_uniform_numbers():
    S, P, gens = 6, 5, 4000
    def draws(seed):
        state, words, p, r, fo = population._Random("cpu", seed).de_draws(S, P)
        while True:
            kernels.de_draws(state, words, p, fo, P)
            yield p, r, fo

    picks = np.empty((gens, 3, S), np.int64)
    forced = np.empty((gens, S), np.int64)
    raw = np.empty((gens, S, P), np.int64)
    for g, (p, r, fo) in zip(range(gens), draws(1)):
        picks[g], raw[g], forced[g] = p, r, fo
    rows = np.arange(S)
    assert ((picks >= 0) & (picks < S)).all()
    assert ((picks != rows).all(axis=1)).all()  # never the row itself
    assert ((picks[:, 0] != picks[:, 1]) & (picks[:, 0] != picks[:, 2]) & (picks[:, 1] != picks[:, 2])).all()
    # each of the S − 1 other rows equally likely for r1, r2 and r3; each component for forced
    for k in range(3):
        counts = np.stack([np.bincount(picks[:, k, i], minlength=S) for i in range(S)])
        expect = gens / (S - 1)
        assert (counts[rows, rows] == 0).all()
        assert np.abs(counts[~np.eye(S, dtype=bool)] - expect).max() < 5 * np.sqrt(expect)
    counts = np.bincount(forced.ravel(), minlength=P)
    assert counts.size == P and np.abs(counts - gens * S / P).max() < 5 * np.sqrt(gens * S / P)
    assert abs(raw.mean() / 2**16 - 0.5) < 0.005 and raw.min() >= 0 and raw.max() < 2**16
    assert len({p.tobytes() for p in picks}) > gens // 2  # every generation its own draw
    first = next(draws(1))  # the seed fixes them
    assert np.array_equal(first[0], picks[0]) and np.array_equal(first[1], raw[0]) and np.array_equal(first[2], forced[0])


def test_engine_normals_are_standard_normal_and_seeded():
    from scipy import stats

    rand = population._Random("cpu", 7)
    z = torch.empty(200_001)  # odd: the last pair's sine goes unused
    rand.normal_(z)
    x = z.double().numpy()
    n, h = x.size, x.size // 2
    assert abs(x.mean()) < 5 / math.sqrt(n) and abs(x.var() - 1) < 5 * math.sqrt(2 / n)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(x[:h], x[-h:])[0, 1]) < 5 / math.sqrt(h)  # a pair's cosine and sine
    again = population._Random("cpu", 7)
    assert torch.equal(again.normal_(torch.empty(200_001)), z)  # the seed fixes them
    assert not torch.equal(rand.normal_(torch.empty(200_001)), z)  # the next draw moves on
    wide = population._Random("cpu", 7).normal_(torch.empty(200_001, dtype=torch.float64))
    assert torch.equal(wide, z.double())  # the same numbers in float64
    small = population._Random("cpu", 3).normal_(torch.empty(5))
    assert torch.equal(small, population._Random("cpu", 3).normal_(torch.empty(7))[[0, 1, 3, 4, 2]])  # pair by pair


def test_normals_kernel_is_box_muller_in_float64_on_the_same_words():
    """The polynomial log, sine and cosine against numpy's in float64 on the same SplitMix64 words."""
    n = 1 << 16
    z, words = np.empty(n, np.float32), np.empty(n // 2, np.uint64)
    kernels.normals(np.array([42], np.uint64), z)
    kernels.splitmix64(words, np.array([42], np.uint64))
    w = words.view(np.uint32).astype(np.int64)
    r = np.sqrt(-2 * np.log(((w[0::2] >> 8) + 1) * 2.0**-24))
    theta = 2 * np.pi * (w[1::2] >> 8) * 2.0**-24
    ref = np.concatenate([r * np.cos(theta), r * np.sin(theta)])
    np.testing.assert_allclose(z, ref, rtol=2e-6, atol=2e-6)
    assert np.abs(z - ref).max() < 1e-6


def test_nevergrad_batches_fit_the_budget():
    obj = tiny_objective()
    calls, on_step = recorder(max_evals=35)
    NevergradOptimizer("OnePlusOne", batch=10).run(obj, Budget(None, 35), on_step)
    assert obj.n_evals == 35 and [c[1] for c in calls] == [10, 20, 30, 35]


def _openblas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]


@pytest.mark.parametrize("method", ["L-BFGS-B", "CG"])
def test_scipy_threaded_and_single_threaded_runs_agree(method):
    import scipy.optimize  # noqa: F401  (loads scipy's own OpenBLAS, so `before` lists every pool)

    results, before = [], (torch.get_num_threads(), _openblas_threads())
    for threads in ({"torch_threads": None, "blas_threads": None}, {"torch_threads": 1, "blas_threads": 1}):
        torch.manual_seed(6)
        x = np.linspace(-np.pi, np.pi, 201)[:, None]
        obj = Objective(MLP(1, 1, width=64), x, np.sin(x) + np.sin(5 * x), MSE(), dtype=torch.float64)
        calls, on_step = recorder(max_steps=60)
        opt = ScipyOptimizer(method, **threads)
        theta = opt.run(obj, Budget(60, None), on_step)
        assert 0 < opt.objective_seconds
        results.append((theta, calls[-1][2]))
        assert (torch.get_num_threads(), _openblas_threads()) == before  # both pools restored
    (t1, f1), (t2, f2) = results
    assert f2 == pytest.approx(f1, rel=1e-6)
    assert torch.allclose(t1, t2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("settings,inside", [({}, 1), ({"torch_threads": None}, 2), ({"torch_threads": 2}, 2)])
def test_scipy_holds_torch_threads_for_the_run_and_restores_them(settings, inside):
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        obj = tiny_objective()
        obj = Objective(MLP(1, 1, width=8), obj.x.numpy(), obj.y.numpy(), MSE(), dtype=torch.float64)
        seen = []

        def on_step(step, theta, n_evals, loss):
            seen.append(torch.get_num_threads())
            return step >= 2

        ScipyOptimizer("L-BFGS-B", **settings).run(obj, Budget(2, None), on_step)
        assert seen and set(seen) == {inside}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_bfgs_warns_only_above_the_dense_threshold():
    small = scipy_family.DENSE_BFGS_WARN // 3 - 1  # width with 3w + 1 ≤ threshold
    for width, warns in ((small, False), (small + 2, True)):
        obj = tiny_objective()
        obj = Objective(MLP(1, 1, width=width), obj.x.numpy(), obj.y.numpy(), MSE(), dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ScipyOptimizer("BFGS").run(obj, Budget(2, None), recorder(max_steps=2)[1])
        said = [str(w.message) for w in caught if "optimizer=bfgs" in str(w.message)]
        assert bool(said) == warns, (width, said)
        if warns:
            assert "optimizer=lbfgsb" in said[0]


@cuda
@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_population_loss_on_gpu_matches_cpu(option):
    torch.manual_seed(7)
    node = _small(OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{option}.yaml")))
    model = instantiate(node, in_dim=1, out_dim=1)
    cpu = problem(model)
    thetas = cpu.theta0 + 0.05 * torch.randn(5, cpu.n_params)
    gpu = problem(model, device="cuda")
    out = gpu.population_loss(thetas.cuda())
    assert out.device.type == "cuda"
    assert_same(out.cpu(), cpu.population_loss(thetas), torch.float32)


@cuda
@pytest.mark.parametrize("engine", ENGINES)
def test_population_engines_run_on_gpu(engine):
    torch.manual_seed(8)
    x = np.linspace(-np.pi, np.pi, 41)[:, None]
    obj = Objective(MLP(1, 1, width=8), x, np.sin(x), MSE(), device="cuda")
    calls, on_step = recorder(max_steps=5)
    best = ENGINES[engine]().run(obj, Budget(5, None), on_step)
    assert best.device.type == "cuda" and all(c[3].device.type == "cuda" for c in calls)
    assert obj.n_evals == 50


@cuda
@pytest.mark.parametrize("optimizer", ["pso", "adam", "lbfgsb"])
def test_cli_runs_on_gpu(cli, tmp_path, optimizer):
    from conftest import TINY, mlflow_runs

    cli(f"optimizer={optimizer}", "device=cuda", *TINY)
    _, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
