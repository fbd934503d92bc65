"""Bad input, table-driven, through the real command line: every line ends with exit status 2,
one line on stderr naming the key, no traceback, no run, and no store left behind.

The command lines run in children forked from one process that imported the CLI once
(tests/forkcli.py), so the table costs a fraction of a second a line.
"""
import io
import zipfile

import numpy as np
import pytest

from forkcli import ForkCLI

LONG = "x" * 300
# (command line, key the one-line error must name); {dir} is a folder with crafted files
BAD = [
    # unknown keys, options and malformed overrides
    ("model.widht=3", "model.widht"),
    ("+model.foo=1", "model.foo"),
    ("+model.width=3", "model.width"),
    ("model=nope", "model"),
    ("optimizer=nope", "optimizer"),
    ("dataset=nope", "dataset"),
    ("probe=[nope]", "probe"),
    ("experiment=nope", "experiment"),
    # a sweep without a job
    ("-m experiment=glob(nomatch_*)", "experiment"),
    ("-m seed=range(0) model.width=3,4", "seed"),
    ("model.width=[1,2", "model.width"),
    ("+budget.max_time=3", "budget.max_time"),
    ("optimizer.optimizer.lr=0.1", "optimizer.optimizer.lr"),
    ("optimizer=pso optimizer.lr=0.1", "optimizer.lr"),
    # wrong types: booleans are not integers, floats are not integers, strings are not numbers
    ("model.width=true", "model.width"),
    ("budget.max_steps=true", "budget.max_steps"),
    ("seed=true", "seed"),
    ("threads=true", "threads"),
    ("probe.spectrum.every=true", "probe.spectrum.every"),
    ("checkpoint.every=true", "checkpoint.every"),
    ("seed=1e3", "seed"),
    ("threads=1.0", "threads"),
    ("model.width=3.5", "model.width"),
    ("budget.max_steps=10.0", "budget.max_steps"),
    ("tracking.every=1.5", "tracking.every"),
    ("optimizer=pso optimizer.popsize=50.0", "optimizer.popsize"),
    ("model.width=abc", "model.width"),
    ("model.width=", "model.width"),
    ("budget.max_evals=abc", "budget.max_evals"),
    ("seed=abc", "seed"),
    ("optimizer.lr=abc", "optimizer.lr"),
    ("optimizer.betas=abc", "optimizer.betas"),
    ("model.bias=maybe", "model.bias"),
    ("dataset.frequencies=abc", "dataset.frequencies"),
    # ranges
    ("model.width=0", "model.width"),
    ("model.depth=-1", "model.depth"),
    ("model.init_std=-0.1", "model.init_std"),
    ("model.init_std=0.1 model.init_gamma=2", "model.init_std"),
    ("model.init_gamma=-1", "model.init_gamma"),
    ("dataset.n_points=1", "dataset.n_points"),
    ("dataset.noise=-1", "dataset.noise"),
    ("dataset.interval=[1,0]", "dataset.interval"),
    ("dataset.interval=[1,2,3]", "dataset.interval"),
    ("dataset.amplitudes=[1,2]", "dataset.amplitudes"),
    ("dataset.seed=-1", "dataset.seed"),
    ("budget.max_steps=-5", "budget.max_steps"),
    ("budget.max_steps=0", "budget.max_steps"),
    ("budget.max_evals=0", "budget.max_evals"),
    ("budget.max_loss_drop=2", "budget.max_loss_drop"),
    ("budget.max_steps=null", "budget"),
    ("seed=-1", "seed"),
    ("seed=99999999999999999999", "seed"),
    ("seed=4294967296", "seed"),
    ("threads=0", "threads"),
    ("threads=10000", "threads"),
    ("progress=maybe", "progress"),
    ("checkpoint.every=0", "checkpoint.every"),
    ("tracking.every=0", "tracking.every"),
    ("tracking.per_decade=0", "tracking.per_decade"),
    ("tracking.images_per_decade=100", "tracking.images_per_decade"),
    ("tracking.timeout=0", "tracking.timeout"),
    ("figures.formats=[gif]", "figures.formats"),
    ("figures.dpi=5", "figures.dpi"),
    ("optimizer.lr=-1", "optimizer.lr"),
    ("optimizer.betas=[0.9,2.0]", "optimizer.betas"),
    ("optimizer=pso optimizer.popsize=1", "optimizer.popsize"),
    ("optimizer=pso optimizer.inertia=-1", "optimizer.inertia"),
    ("optimizer=de optimizer.crossover=2", "optimizer.crossover"),
    ("optimizer=de optimizer.strategy=best2", "optimizer.strategy"),
    ("optimizer=snes optimizer.init_spread=0", "optimizer.init_spread"),
    ("optimizer=cma optimizer.name=NotAnOptimizer", "optimizer.name"),
    ("optimizer=cma optimizer.batch=0", "optimizer.batch"),
    ("optimizer=lbfgsb optimizer.blas_threads=0", "optimizer.blas_threads"),
    ("probe.spectrum.every=0", "probe.spectrum.every"),
    ("probe.spectrum.variant=phase", "probe.spectrum.variant"),
    ("probe.spectrum.eps=-1", "probe.spectrum.eps"),
    ("probe.spectrum.n_coeffs=2", "probe.spectrum.n_coeffs"),
    ("probe.spectrum.per_decade=0", "probe.spectrum.per_decade"),
    ("probe=[filtering] probe.filtering.deltas=[-1]", "probe.filtering.deltas"),
    ("probe=[condensation] probe.condensation.threshold=2", "probe.condensation.threshold"),
    ("device=tpu", "device"),
    ("resume=xyz", "resume"),
    # NaN and infinity, wherever they are meaningless
    ("optimizer.lr=nan", "optimizer.lr"),
    ("optimizer.lr=inf", "optimizer.lr"),
    ("model.init_std=nan", "model.init_std"),
    ("model.init_std=inf", "model.init_std"),
    ("model.init_gamma=nan", "model.init_gamma"),
    ("optimizer=pso optimizer.inertia=nan", "optimizer.inertia"),
    ("optimizer=pso optimizer.max_velocity=inf", "optimizer.max_velocity"),
    ("dataset.noise=inf", "dataset.noise"),
    ("dataset.amplitudes=[nan,1,1]", "dataset.amplitudes"),
    ("dataset.interval=[0,inf]", "dataset.interval"),
    ("budget.max_loss_drop=nan", "budget.max_loss_drop"),
    ("probe.spectrum.eps=nan", "probe.spectrum.eps"),
    ("probe.spectrum.eps_list=[nan]", "probe.spectrum.eps_list"),
    ("tracking.timeout=inf", "tracking.timeout"),
    # targets the data cannot carry
    ("dataset.amplitudes=[1e308,1e308,1e308]", "dataset"),
    ("dataset.frequencies=[1,3,500]", "dataset.frequencies"),
    ("dataset=rahaman dataset.frequencies=[5,150]", "dataset.n_points"),
    # devices
    ("device=mps", "device"),
    ("device=cuda", "device"),
    ("device=cuda:99", "device"),
    # scipy methods and options, checked against scipy before the run
    ("optimizer=lbfgsb optimizer.method=NotAMethod", "optimizer.method"),
    ("optimizer=lbfgsb optimizer.method=dogleg", "optimizer.method"),
    ("optimizer=lbfgsb optimizer.method=trust-ncg", "optimizer.method"),
    ("optimizer=lbfgsb +optimizer.options.maxiter=abc", "optimizer.options.maxiter"),
    ("optimizer=lbfgsb +optimizer.options.maxiter=-1", "optimizer.options.maxiter"),
    ("optimizer=lbfgsb +optimizer.options.maxiter=true", "optimizer.options.maxiter"),
    ("optimizer=lbfgsb +optimizer.options.gtol=abc", "optimizer.options.gtol"),
    ("optimizer=lbfgsb +optimizer.options.bogus=1", "optimizer.options.bogus"),
    ("optimizer=powell optimizer.options.maxfev=0", "optimizer.options.maxfev"),
    # sizes, refused before anything is allocated
    ("dataset.n_points=1000000000", "dataset.n_points"),
    ("model.width=100000000", "model.width"),
    ("model.width=20000 model.depth=3", "model.width"),
    ("optimizer=pso optimizer.popsize=100000000", "optimizer.popsize"),
    ("optimizer=bfgs model.width=100000", "model.width"),
    ("dataset=condense5d dataset.n_points=100000 dataset.dim=100000", "dataset.n_points"),
    ("dataset=file dataset.path={dir}/huge.npz", "dataset.path"),
    # data files
    ("dataset=file", "dataset.path"),
    ("dataset=file dataset.path=/nonexistent/data.npz", "dataset.path"),
    ("dataset=file dataset.path=/etc/hostname", "dataset.path"),
    ("dataset=file dataset.path={dir}/nan.npz", "dataset.x"),
    ("dataset=file dataset.path={dir}/ok.npz dataset.x=nope", "dataset"),
    ("dataset=file dataset.path={dir}/bad.csv", "dataset.x"),
    ("dataset=file dataset.path={dir}/ok.npz dataset.x=[a,b]", "dataset.x"),
    # configs cannot run code
    ("dataset._target_=builtins.open", "dataset._target_"),
    ("model._target_=subprocess.Popen", "model._target_"),
    ("loss._target_=os.system", "loss._target_"),
    ("optimizer._target_=torch.load", "optimizer._target_"),
    ("probe.spectrum._target_=builtins.eval", "probe.spectrum._target_"),
    ("dataset.noise={_target_:torch.load,f:/etc/hostname,weights_only:false}", "dataset.noise._target_"),
    ("dataset.frequencies=[1,{_target_:builtins.open,file:/tmp/x,mode:w}]", "dataset.frequencies"),
    ("+hydra.callbacks.evil._target_=os.system", "hydra.callbacks.evil._target_"),
    ("optimizer.algorithm=builtins.open", "optimizer.algorithm"),
    ("model._target_=nosuchmodule.Net", "model._target_"),
    # the store
    ("tracking.uri=http://127.0.0.1:9", "tracking.uri"),
    ("tracking.uri=sqlite:////nonexistent-folder/mlflow.db", "tracking.uri"),
    ("tracking.uri=sqlite:////proc/mlflow.db", "tracking.uri"),
    (f"tracking.experiment={LONG}", "tracking.experiment"),
    ("resume=0123456789abcdef0123456789abcdef", "resume"),
]


@pytest.fixture(scope="module")
def fork_cli():
    server = ForkCLI()
    yield server
    server.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    np.savez(d / "ok.npz", x=np.linspace(0, 1, 8), y=np.sin(np.linspace(0, 1, 8)))
    np.savez(d / "nan.npz", x=np.array([0.0, np.nan, 1.0]), y=np.zeros(3))
    (d / "bad.csv").write_text("x,y\n0,1\nzero,2\n")
    # a small file whose header declares 10^10 rows: refused from the header, never read
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**10,)})
    with zipfile.ZipFile(d / "huge.npz", "w") as z:
        z.writestr("x.npy", np.lib.format.MAGIC_PREFIX + b"\x01\x00" + header.getvalue()[0:] + b"\0" * 64)
        z.writestr("y.npy", np.lib.format.MAGIC_PREFIX + b"\x01\x00" + header.getvalue() + b"\0" * 64)
    return d


def test_the_table_covers_every_category():
    assert len(BAD) >= 100 and len({line for line, _ in BAD}) == len(BAD)


@pytest.mark.parametrize("line,key", BAD, ids=[b[0][:60] for b in BAD])
def test_bad_command_line_fails_in_one_line_naming_the_key(fork_cli, files, tmp_path, line, key):
    argv = [a.replace("{dir}", str(files)) for a in line.split()]
    proc = fork_cli(tmp_path, *argv)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1, proc.stderr[-2000:]
    assert err[0].startswith("fpdsl: error: ") and key in err[0] and len(err[0]) < 400, err[0]
    assert "INFO" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlflow.db").exists(), "a store was left behind"
    assert not (tmp_path / "mlartifacts").exists()
    assert not (files / "x").exists() and not (tmp_path / "x").exists()  # builtins.open never ran
