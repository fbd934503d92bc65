"""hydra/launcher=batched: a sweep's jobs trained as few vectorised runs, each member its own
MLflow run equal to the run it would be on its own."""
import numpy as np
import pytest

from conftest import mlflow_runs, run_cli
from test_reliability import run_in_process

SMALL = ["dataset.n_points=64", "model.width=16", "probe.spectrum.every=5", "tracking.every=1",
         "tracking.per_decade=null", "tracking.images_per_decade=null", "checkpoint.every=null"]
FAMILIES = {  # optimizer → budget.max_steps (scipy, nevergrad and L-BFGS run one after another)
    "adam": 200, "gd": 200, "rmsprop": 150, "pso": 60, "de": 60, "snes": 60, "lbfgsb": 40, "oneplusone": 40, "lbfgs": 20,
}


def children(tmp_path):
    client, runs = mlflow_runs(tmp_path)
    return client, {(r.data.tags["fpdsl.optimizer"], r.data.params["seed"]): r
                    for r in runs if r.data.tags.get("fpdsl.role") != "sweep"}


@pytest.mark.parametrize("optimizer", FAMILIES)
def test_each_member_equals_its_separate_run(tmp_path, optimizer):
    steps = FAMILIES[optimizer]
    common = [f"optimizer={optimizer}", f"budget.max_steps={steps}", *SMALL]
    proc = run_cli(tmp_path, "-m", "hydra/launcher=batched", "seed=0,1,2", *common)
    together = optimizer not in ("lbfgsb", "oneplusone", "lbfgs")
    assert ("trained together" in proc.stdout) == together, proc.stdout[-2000:]
    client, runs = children(tmp_path)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs.values())
    alone = tmp_path / "alone"
    alone.mkdir()
    run_in_process(alone, *common, "seed=1")
    c2, (single,) = mlflow_runs(alone)
    member = runs[(optimizer, "1")]
    a = np.array([m.value for m in client.get_metric_history(member.info.run_id, "loss")])
    b = np.array([m.value for m in c2.get_metric_history(single.info.run_id, "loss")])
    assert len(a) == len(b) == steps + 1
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
    assert member.data.metrics["final_loss"] == pytest.approx(single.data.metrics["final_loss"], rel=1e-3)
    assert member.data.metrics["final_n_evals"] == single.data.metrics["final_n_evals"]
    delta = next(k for k in single.data.metrics if k.startswith("spectrum/delta/"))  # observed together
    da = [m.value for m in client.get_metric_history(member.info.run_id, delta)]
    db = [m.value for m in c2.get_metric_history(single.info.run_id, delta)]
    assert len(da) == len(db) > 2
    np.testing.assert_allclose(da, db, rtol=1e-3, atol=1e-5)
    for key in ("spectrum/n_converged", "spectrum/fp_order_halving"):
        assert member.data.metrics[key] == pytest.approx(single.data.metrics[key], nan_ok=True)
    for r in runs.values():  # each member names the kernel variant its losses came from, as a run alone does
        assert ("fpdsl.kernel" in r.data.tags) == ("fpdsl.kernel" in single.data.tags), r.data.tags
    arts = {x.path for x in client.list_artifacts(member.info.run_id)}
    assert {"figures", "final.npz", "probe_history.npz", "checkpoint", "config.yaml", ".hydra"} <= arts


def test_different_learning_rates_batch_and_a_diverging_member_fails_alone(tmp_path):
    proc = run_cli(tmp_path, "-m", "hydra/launcher=batched", "optimizer=gd", "optimizer.lr=0.01,0.02,80", "seed=0",
                   "budget.max_steps=100", *SMALL, check=False)
    assert proc.returncode == 1 and "trained together" in proc.stdout
    client, runs = mlflow_runs(tmp_path)
    jobs = {r.data.params["optimizer.lr"]: r for r in runs if r.data.tags.get("fpdsl.role") != "sweep"}
    assert jobs["80"].info.status == "FAILED" and "fpdsl.diverged_step" in jobs["80"].data.tags
    for lr in ("0.01", "0.02"):
        assert jobs[lr].info.status == "FINISHED" and len(client.get_metric_history(jobs[lr].info.run_id, "loss")) == 101
    single = tmp_path / "alone"
    single.mkdir()
    run_in_process(single, "optimizer=gd", "optimizer.lr=0.02", "seed=0", "budget.max_steps=100", *SMALL)
    _, (s,) = mlflow_runs(single)
    assert jobs["0.02"].data.metrics["final_loss"] == pytest.approx(s.data.metrics["final_loss"], rel=1e-3)


def test_a_job_with_bad_input_fails_alone(tmp_path):
    proc = run_cli(tmp_path, "-m", "hydra/launcher=batched", "model.width=0,16", "seed=0,1", "budget.max_steps=20",
                   *[o for o in SMALL if not o.startswith("model.width")], check=False)
    assert proc.returncode == 2 and "model.width" in proc.stderr and "Traceback" not in proc.stderr
    _, runs = mlflow_runs(tmp_path)
    jobs = [r for r in runs if r.data.tags.get("fpdsl.role") != "sweep"]
    assert sorted((r.data.params["model.width"], r.info.status) for r in jobs) == [("16", "FINISHED")] * 2


@pytest.mark.slow
def test_a_batched_member_resumes_exactly(tmp_path):
    base = ["-m", "hydra/launcher=batched", "optimizer=adam", "seed=0,1", "checkpoint.every=10",
            f"hydra.sweep.dir={tmp_path}/sweep", *[o for o in SMALL if not o.startswith("checkpoint")]]
    run_cli(tmp_path, *base, "budget.max_steps=30")
    run_cli(tmp_path, *base, "budget.max_steps=60")  # the same sweep with a larger budget: continues each run
    client, runs = children(tmp_path)
    assert len(runs) == 2
    straight = tmp_path / "straight"
    straight.mkdir()
    run_in_process(straight, "optimizer=adam", "seed=1", "budget.max_steps=60", *SMALL)
    c2, (s,) = mlflow_runs(straight)
    a = [m.value for m in client.get_metric_history(runs[("adam", "1")].info.run_id, "loss")]
    b = [m.value for m in c2.get_metric_history(s.info.run_id, "loss")]
    assert len(a) == 61 and "fpdsl.resumed_from_step" in runs[("adam", "1")].data.tags
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_forked_workers_share_the_jobs(tmp_path):
    proc = run_cli(tmp_path, "-m", "hydra/launcher=batched", "hydra.launcher.n_jobs=2", "optimizer=adam,pso", "seed=0,1",
                   "budget.max_steps=30", *SMALL)
    _, runs = children(tmp_path)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs.values())
    assert proc.stdout.count("trained together") == 2
    from fpdsl.sweep import cores

    # each worker's jobs keep to its share of the cores (they took all of them: 4 threads on 2 cores)
    assert {r.data.tags["fpdsl.threads"] for r in runs.values()} == {str(max(1, cores() // 2))}


def test_one_group_is_halved_between_two_workers(tmp_path):
    proc = run_cli(tmp_path, "-m", "hydra/launcher=batched", "hydra.launcher.n_jobs=2", "seed=0,1,2,3",
                   "budget.max_steps=30", *SMALL)
    _, runs = children(tmp_path)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs.values())
    assert proc.stdout.count("2 runs of torch trained together") == 2
    from hydra_plugins.fpdsl_plugins.batched import _workers
    from omegaconf import OmegaConf

    from fpdsl.sweep import cores

    jobs = [OmegaConf.create({"device": "cpu"})] * 8
    assert _workers(jobs) == min(cores(), 8) and _workers(jobs[:1]) == 1
    assert _workers([OmegaConf.create({"device": "cuda"})] * 8) == 1  # one batched group fills a GPU better


def test_many_runs_recording_at_once_in_one_process_never_exhaust_the_store(tmp_path):
    """Every run has a sender thread beside training; 60 of them (a batched sweep of 60 seeds)
    once took all of MLflow's pooled connections and waited on each other for good."""
    import threading

    from fpdsl.store import Store
    from fpdsl.tracking import Tracker

    store = Store(f"sqlite:///{tmp_path}/mlflow.db")
    exp = store.experiment_id("many")
    trackers = [Tracker.create(store, exp, f"run-{i}", {}) for i in range(60)]

    def write(t):
        for step in range(40):
            t.log_metrics({"loss": 1.0 / (step + 1), "n_evals": float(step)}, step)
            t.commit()
        t.set_tags({"done": "yes"})

    threads = [threading.Thread(target=write, args=(t,)) for t in trackers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    results = [t.close("FINISHED", 15) for t in trackers]  # tracking.timeout's default
    assert all(ok for ok, _ in results), [why for ok, why in results if not ok][:3]
    for t in trackers[::15]:
        run = store.client.get_run(t.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["done"] == "yes"
        assert len(store.client.get_metric_history(t.run_id, "loss")) == 40


def test_spectrum_observes_several_runs_in_one_call_as_each_would_alone():
    from fpdsl.data import Sines1D
    from fpdsl.probes import Spectrum

    data = Sines1D(frequencies=[1, 3, 5], n_points=101)
    rng = np.random.default_rng(0)
    outputs = rng.normal(size=(4, 101, 1))
    alone, together = [Spectrum(data) for _ in range(4)], [Spectrum(data) for _ in range(4)]

    class View:
        def __init__(self, out):
            self.output = out

    expected = [p.observe(7, View(o)) for p, o in zip(alone, outputs)]
    found = Spectrum.observe_many(together, [7] * 4, outputs)
    assert len({p.batch_key() for p in together}) == 1
    for e, f, a, t in zip(expected, found, alone, together):
        assert e.keys() == f.keys() and np.allclose(list(e.values()), list(f.values()), rtol=1e-12)
        assert np.allclose(a.deltas_other, t.deltas_other) and t.steps == [7]
    assert not np.allclose(list(found[0].values()), list(found[1].values()))  # each its own output


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("in_dim,bias", [(1, True), (2, True), (1, False)])
def test_the_closed_form_gradient_of_a_batch_of_members_is_autograds(activation, in_dim, bias):
    import torch

    from fpdsl.losses import MSE
    from fpdsl.models import MLP
    from fpdsl.objective import Objective, _OneHiddenLayer

    torch.manual_seed(0)
    model = MLP(in_dim=in_dim, out_dim=1, width=7, depth=1, activation=activation, bias=bias)
    obj = Objective(model, torch.randn(9, in_dim), torch.randn(9, 1), MSE(), dtype=torch.float64)
    assert obj.kernel.closed_form
    thetas = (obj.theta0 + 0.3 * torch.randn(3, obj.n_params, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _OneHiddenLayer.apply(t, obj, False), (thetas,))
    weights = torch.randn(3, 9, 1, dtype=torch.float64)  # any dL/dout
    (mine,) = torch.autograd.grad((obj.batched_forward(thetas) * weights).sum(), thetas)
    with torch.no_grad():
        plain = obj.kernel(obj.kernel.layers(obj.unflatten(thetas)), obj.x, fold=False)
    assert torch.allclose(obj.batched_forward(thetas).detach(), plain, rtol=1e-12)
    autograd_out = obj.kernel(obj.kernel.layers(obj.unflatten(thetas)), obj.x, fold=False)
    (reference,) = torch.autograd.grad((autograd_out * weights).sum(), thetas)
    assert torch.allclose(mine, reference, rtol=1e-10, atol=1e-12)
    for _ in range(2):  # a training loop's buffer, reused from step to step
        (again,) = torch.autograd.grad((obj.batched_forward(thetas, reuse=True) * weights).sum(), thetas)
        assert torch.allclose(again, reference, rtol=1e-10, atol=1e-12)
    assert len([k for k in obj.kernel.work if k[0] == "grad"]) == 1
    # two hidden layers or several outputs: autograd's own backward (no closed form)
    deeper = Objective(MLP(in_dim=in_dim, out_dim=1, width=7, depth=2, activation=activation), obj.x, obj.y, MSE())
    assert not deeper.kernel.closed_form


def test_a_reused_heat_map_draws_what_a_new_one_draws(tmp_path):
    from matplotlib.image import imread

    from fpdsl.figures import heatmap, save

    rng = np.random.default_rng(0)
    steps = list(range(0, 300, 10))
    values = [rng.uniform(0, 1, (30, 3)) for _ in range(3)]
    titles = ["run a\nholds", "run b\nnot removed", "run c — a longer title\npartial"]

    def png(fig, name):
        save(fig, tmp_path / f"{name}.png", dpi=60)  # a kept figure's second PNG on: blitted
        return imread(tmp_path / f"{name}.png")

    reused = [png(heatmap(steps, v, [1, 3, 5], title=t, cbar_label="Δ", reuse=True), f"kept{i}")
              for i, (v, t) in enumerate(zip(values, titles))]
    new = [png(heatmap(steps, v, [1, 3, 5], title=t, cbar_label="Δ"), f"new{i}") for i, (v, t) in enumerate(zip(values, titles))]
    for again, fresh in zip(reused, new):
        assert again.shape == fresh.shape and np.array_equal(again, fresh)
    assert not np.array_equal(new[1], new[2])
