"""Every option of every config group composes with Hydra and instantiates."""
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF
from fpdsl.schema import validate

GROUPS = ["dataset", "model", "loss", "optimizer", "probe"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=["tracking.uri=sqlite:///unused.db", *overrides])


def required_overrides(group, option, tmp_path):
    """Options with a value that has no sensible default (the user's own file)."""
    if (group, option) == ("dataset", "file"):
        import numpy as np

        np.savez(tmp_path / "data.npz", x=np.linspace(0, 1, 8), y=np.sin(np.linspace(0, 1, 8)))
        return [f"dataset.path={tmp_path / 'data.npz'}"]
    return []


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes_validates_and_instantiates(group, option, tmp_path):
    import inspect

    from hydra.utils import get_object, instantiate

    from fpdsl.data import Sines1D

    override = f"{group}=[{option}]" if group == "probe" else f"{group}={option}"
    cfg = compose_cfg(override, *required_overrides(group, option, tmp_path))
    validate(OmegaConf.to_container(cfg, resolve=True))
    data = instantiate(cfg.dataset)
    if group == "probe":
        for name, node in cfg.probe.items():
            probe_data = data if getattr(data, "uniform", False) else Sines1D()
            instantiate(node, data=probe_data, name=name)
    elif group == "model":
        instantiate(cfg.model, in_dim=data.x.shape[1], out_dim=data.y.shape[1])
    elif group == "loss" and "data" in inspect.signature(get_object(cfg.loss._target_)).parameters:
        assert instantiate(cfg.loss, data=data) is not None  # as the runner does
    else:
        assert instantiate(cfg[group]) is not None


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), g


def test_probe_is_a_dict_of_named_nodes():
    cfg = compose_cfg("probe.spectrum.every=3")
    assert cfg.probe.spectrum.every == 3
    assert "spectrum" not in compose_cfg("~probe.spectrum").probe
