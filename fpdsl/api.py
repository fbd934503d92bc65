"""fpdsl from Python: the same composition, checks, tags and names as the command line.

    import fpdsl
    run_id = fpdsl.run(["optimizer=pso", "model.width=100"])
    r = fpdsl.load(run_id)             # config, probe history arrays, final θ and output
    df = fpdsl.runs(experiment="fpdsl", optimizer="pso")   # one row per run (pandas)
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_MODULE = "fpdsl.conf"


def compose(overrides=(), config_dir: str | os.PathLike | None = None, with_hydra: bool = True):
    """The config the command line would compose from these overrides (the package's configs,
    plus a folder of your own when config_dir is given: yours come first)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module

    overrides = list(overrides)
    if config_dir is not None:
        overrides.append(f"hydra.searchpath=[pkg://{CONFIG_MODULE}]")
        init = initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3")
    else:
        init = initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3")
    with init:
        return hydra_compose("config", overrides=overrides, return_hydra_config=with_hydra)


@contextmanager
def _hydra_context(cfg):
    """HydraConfig set from a composed config, as the command line has it during a run
    (the runner reads the groups' choices and the overrides from it)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    hc = HydraConfig.instance()
    previous = hc.cfg
    hc.set_config(cfg)
    with open_dict(cfg):
        hydra_node = cfg.pop("hydra")
    try:
        yield cfg
    finally:
        with open_dict(cfg):
            cfg.hydra = hydra_node
        hc.cfg = previous


def run(overrides=(), config_dir: str | os.PathLike | None = None, uri: str | None = None) -> str:
    """Compose, check and run one experiment; returns the MLflow run id. Bad input raises
    fpdsl.ConfigError (one line naming the key) before anything runs."""
    from fpdsl.runner import run as run_task

    overrides = list(overrides)
    if uri is not None:
        overrides.append(f"tracking.uri={uri}")
    if not any(o.startswith("progress=") for o in overrides):
        overrides.append("progress=off")
    cfg = compose(overrides, config_dir)
    with _hydra_context(cfg) as task_cfg:
        return run_task(task_cfg)


@dataclass
class Run:
    """A run read back: its config, probe history arrays, final θ and network output."""
    run_id: str
    status: str
    config: object
    params: dict
    metrics: dict
    tags: dict
    history: dict = field(default_factory=dict)  # probe_history.npz: "spectrum/delta_complex", "trace/loss", ...
    final: dict = field(default_factory=dict)  # final.npz: theta, output, x, y, param_names, param_sizes

    @property
    def theta(self):
        return self.final.get("theta")

    @property
    def output(self):
        return self.final.get("output")

    def figure(self, probe: str = "spectrum", title: str | None = None):
        """The probe's heat map as a matplotlib Figure (fig.savefig("f.pdf", dpi=300): PNG, PDF
        or SVG at any resolution): Δ_F for spectrum and projection, the normalised amplitude
        for spectral_amplitude, e_low and e_high for filtering."""
        from fpdsl import figures

        h = self.history
        if f"{probe}/steps" not in h:
            raise KeyError(f"run {self.run_id} has no history of a probe named {probe!r}")
        steps = h[f"{probe}/steps"]
        title = title or self.run_id
        if f"{probe}/peaks" in h:
            variant = self.tags.get(f"{probe}/delta_variant", "complex")
            return figures.heatmap(steps, h[f"{probe}/delta_{variant}"], h[f"{probe}/peaks"], title=title,
                                   cbar_label="Δ_F (clipped to [0.1, 1])")
        if f"{probe}/amplitude" in h:
            order = np.argsort(h[f"{probe}/frequencies"])
            return figures.heatmap(steps, h[f"{probe}/amplitude"][:, order], [f"{f:g}" for f in h[f"{probe}/frequencies"][order]],
                                   title=title, cbar_label="amplitude", vmin=0.0, vmax=1.0, cmap="viridis")
        if f"{probe}/e_low" in h:
            return figures.heatmap_panels(steps, {"e_low": h[f"{probe}/e_low"], "e_high": h[f"{probe}/e_high"]},
                                          [f"{d:.3g}" for d in h[f"{probe}/deltas"]], title=title,
                                          cbar_label="relative error", vmin=0.0, vmax=1.0, ylabel="δ")
        raise KeyError(f"no heat map for probe {probe!r}")


def _client(uri):
    from fpdsl.store import Store

    return Store(uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db").client


def load(run_id: str, uri: str | None = None) -> Run:
    """A run's config, metrics, tags, probe history and final state from the store."""
    import io
    import tempfile

    import numpy as np
    from omegaconf import OmegaConf

    client = _client(uri)
    r = client.get_run(run_id)
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("probe_history.npz", "final.npz", "config.yaml"):
            try:
                arrays[name] = Path(client.download_artifacts(run_id, name, tmp)).read_bytes()
            except Exception:
                pass

    def npz(data):
        if data is None:
            return {}
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    config = OmegaConf.create(arrays["config.yaml"].decode()) if "config.yaml" in arrays else None
    return Run(run_id, r.info.status, config, dict(r.data.params), dict(r.data.metrics), dict(r.data.tags),
               npz(arrays.get("probe_history.npz")), npz(arrays.get("final.npz")))


def runs(experiment: str | None = None, uri: str | None = None, **tags):
    """One row per run (params, metrics and tags as columns: MLflow's search_runs frame).

    Keyword arguments filter by fpdsl's group tags: runs(optimizer="pso", dataset="rahaman");
    other tag names pass through as they are (runs(**{"spectrum/fp_verdict": "holds"}))."""
    import mlflow

    client = _client(uri)
    if experiment is None:
        exps = [e.experiment_id for e in client.search_experiments() if e.name != "fpdsl-report"]
    else:
        e = client.get_experiment_by_name(experiment)
        if e is None:
            raise ValueError(f"no experiment named {experiment!r}")
        exps = [e.experiment_id]
    groups = {"optimizer", "model", "dataset", "loss", "probe", "experiment"}
    flt = " and ".join(f"tags.`{'fpdsl.' + k if k in groups else k}` = '{v}'" for k, v in tags.items())
    with _tracking_uri(client.tracking_uri):
        return mlflow.search_runs(experiment_ids=exps, filter_string=flt, max_results=100000)


@contextmanager
def _tracking_uri(uri):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
