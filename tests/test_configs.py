"""Every config group option composes (Hydra's compose API), and builds a model where it describes one."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from model.checkpoint import build_model

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "attention", "data", "optim", "trainer", "logger"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose_train([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg[group] is not None


@pytest.mark.parametrize("attention", options("attention"))
def test_every_attention_builds_a_tiny_model(attention):
    cfg = compose_train([f"attention={attention}", "model=tiny"])
    with open_dict(cfg):
        cfg.model.vocab_size = 257
    assert build_model(cfg).num_parameters() > 0


def test_defaults_are_the_quick_start():
    cfg = compose_train([])
    assert (cfg.attention.name, cfg.model.name, cfg.data.name) == ("tda", "tiny", "builtin")
