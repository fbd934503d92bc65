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


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes_validates_and_instantiates(group, option):
    from hydra.utils import instantiate

    from fpdsl.data import Sines1D

    override = f"{group}=[{option}]" if group == "probe" else f"{group}={option}"
    cfg = compose_cfg(override)
    validate(OmegaConf.to_container(cfg, resolve=True))
    data = instantiate(cfg.dataset)
    if group == "probe":
        for name, node in cfg.probe.items():
            probe_data = data if getattr(data, "uniform", False) else Sines1D()
            instantiate(node, data=probe_data, name=name)
    elif group == "model":
        instantiate(cfg.model, in_dim=data.x.shape[1], out_dim=data.y.shape[1])
    else:
        assert instantiate(cfg[group]) is not None


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), g


def test_probe_is_a_dict_of_named_nodes():
    cfg = compose_cfg("probe.spectrum.every=3")
    assert cfg.probe.spectrum.every == 3
    assert "spectrum" not in compose_cfg("~probe.spectrum").probe
