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


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_experiment_preset_and_each_of_its_sweep_points_composes(preset):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"+experiment={preset}"], return_hydra_config=True)
        sweep = cfg.hydra.sweeper.get("params") or {}
        points = [[f"{key}={value}"] for key, values in sweep.items() for value in str(values).split(",")]
        for point in points or [[]]:
            point_cfg = compose(config_name="train", overrides=[f"+experiment={preset}", *point])
            with open_dict(point_cfg):
                point_cfg.model.vocab_size = 50257
            OmegaConf.to_container(point_cfg, resolve=True)
            assert point_cfg.attention.name in options("attention")


def test_paper_presets_say_what_the_paper_says():
    cfg = compose_train(["+experiment=paper_162m"])
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (12, 768, 12)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.weight_decay, cfg.optim.schedule) == (1e-3, 1e-4, 0.1, "cosine")
    assert cfg.data.hub_path == "HuggingFaceFW/fineweb-edu" and cfg.data.hub_config == "sample-10BT"
    assert cfg.trainer.batch_size * cfg.model.seq_len * cfg.trainer.max_steps >= 0.999e10  # 10B tokens
    small = compose_train(["+experiment=paper_small"])
    assert small.data.bos_aligned and small.model.name == "small"


def test_one_pass_preset_is_paper_small_for_at_most_one_pass():
    """paper_small_1ep differs from paper_small only in its length (and when it validates and saves), and
    trains on at most the english_corpus training split's ~19.9M tokens (at most 39,375 windows of 512)."""
    def flat(cfg):
        out = {}

        def walk(node, prefix):
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(value, f"{prefix}{key}.")
                else:
                    out[f"{prefix}{key}"] = value
        walk(OmegaConf.to_container(cfg, resolve=True), "")
        return out

    small, one = compose_train(["+experiment=paper_small"]), compose_train(["+experiment=paper_small_1ep"])
    a, b = flat(small), flat(one)
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {
        "trainer.max_steps", "trainer.eval_every", "trainer.checkpoint_every"}
    t = one.trainer
    assert t.max_steps * t.batch_size * one.model.seq_len <= 19.9e6 and t.max_steps * t.batch_size <= 39_375
    assert t.max_steps < small.trainer.max_steps and t.max_steps % t.eval_every == 0
    assert (one.optim.schedule, one.optim.warmup_steps) == ("cosine", small.optim.warmup_steps)


@pytest.mark.parametrize("compile_setting", [False, "model", "blocks"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("attention", ["differential", "softmax", "tda"])
def test_compile_caveat_names_only_the_compiled_differential_on_a_gpu(attention, device, compile_setting):
    import torch

    from training.config import compile_caveat

    cfg = compose_train([f"attention={attention}", f"trainer.compile={compile_setting}"])
    caveat = compile_caveat(cfg, torch.device(device))
    if attention == "differential" and device == "cuda" and compile_setting:
        assert caveat is not None and "attention=differential" in caveat and "trainer.compile=false" in caveat
    else:
        assert caveat is None
