"""What training logs beside the loss: attention diagnostics (logger.diagnostics_every) on the first two
validation windows, every per-layer attention scalar, and the β warm-up's factor at every step, the same
after a resume; analysis.figures draws the diagnostics of a real run."""
import json
from pathlib import Path

import matplotlib.image
import pytest
import torch
from conftest import compose_train
from hydra import compose, initialize_config_dir

from analysis.diagnostics import attention_diagnostics
from analysis.figures import make_figures
from data.loader import validation_batches
from model.checkpoint import load_run
from training.config import ConfigError
from training.distributed import Distributed
from training.metrics import Diagnostics

ROOT = Path(__file__).resolve().parents[1]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_diagnostics_are_logged_on_the_first_two_validation_windows_and_drawn(train_run, tmp_path):
    run = train_run("name=diagnosed", "trainer.max_steps=7", "logger.diagnostics_every=3", "logger.log_every=2",
                    "trainer.eval_every=100")
    logged = {r["step"]: r for r in records(run)}
    assert sorted(s for s, r in logged.items() if "diag/empty_rows/mean" in r) == [3, 6, 7]   # every 3, and the last
    assert 3 in logged and "loss" not in logged[3]                  # a step of its own when not a logged step
    last = logged[7]
    model, cfg, step = load_run(run)                                # the step-7 checkpoint
    x, _ = next(iter(validation_batches(cfg.data.dir, 8, int(cfg.model.seq_len), 2, bos_aligned=False)))
    want = attention_diagnostics(model, x[:2])
    assert {k: v for k, v in last.items() if k.startswith("diag/")} == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert last["diag_seconds"] > 0 and "lambda/1" in last and "lambda_raw/1" in last
    assert all(not k.startswith("beta/") for k in last)             # fixed β is not logged

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):   # as python -m analysis.figures
        figures = compose(config_name="analysis_figures", overrides=[f"runs=[{run}]", "figures=[training_diagnostics]",
                                                                     f"out={tmp_path / 'figures'}"])
    paths = make_figures(figures)
    assert sorted(p.name for p in paths) == ["training_diagnostics_diagnosed.pdf", "training_diagnostics_diagnosed.png"]
    assert matplotlib.image.imread(next(p for p in paths if p.suffix == ".png")).shape[0] > 300


def test_diagnostics_off_and_every_variant_scalar_logged(train_run):
    run = train_run("name=undiagnosed-sigmoid", "attention=sigmoid", "trainer.max_steps=3",
                    "logger.diagnostics_every=0", "logger.log_every=3")
    last = records(run)[-1]
    assert not any(k.startswith("diag") for k in last)
    model, _, _ = load_run(run)
    for layer, block in enumerate(model.blocks):          # sigmoid's per-head bias, mean over heads
        assert last[f"sigmoid_bias/{layer}"] == pytest.approx(float(block.attn.bias.detach().mean()), rel=1e-6)
    with pytest.raises(ConfigError, match="logger.diagnostics_every must be an int >= 0"):
        train_run("name=bad-diagnostics", "logger.diagnostics_every=-1")


def test_diagnostics_are_skipped_under_fsdp2_with_one_note(capsys):
    cfg = compose_train(["logger.diagnostics_every=5"])
    batches = [(torch.zeros(4, 8, dtype=torch.long), None)]
    fsdp = Diagnostics(cfg, Distributed(0, 2, 0, "fsdp2", torch.device("cpu")), batches)
    assert not fsdp.due(5) and "skipped under trainer.strategy=fsdp2" in capsys.readouterr().out
    other_rank = Diagnostics(cfg, Distributed(1, 2, 1, "ddp", torch.device("cpu")), batches)
    assert not other_rank.due(5) and capsys.readouterr().out == ""
    main = Diagnostics(cfg, Distributed(0, 2, 0, "ddp", torch.device("cpu")), batches)
    assert main.due(5) and not main.due(6) and main.due(cfg.trainer.max_steps) and main.tokens.shape == (2, 8)


def test_beta_warmup_follows_the_step_and_resumes_from_it(train_run):
    """β = 0.8 warmed up over 4 steps: the record of step s (its forward ran after s − 1 steps) logs
    β = 0.8·min(1, (s − 1)/4). A run stopped after step 5 and resumed from its step-4 checkpoint logs the
    same β and the same losses as the uninterrupted run: the factor comes from the step, not the checkpoint."""
    common = ["attention.beta=0.8", "attention.beta_warmup_steps=4", "trainer.max_steps=7", "logger.log_every=1",
              "trainer.checkpoint_every=2", "trainer.eval_every=100", "logger.diagnostics_every=0"]
    full_dir = train_run("name=warm-full", *common)
    full = records(full_dir)
    assert [r["beta/0"] for r in full] == pytest.approx([0.8 * min(1, (s - 1) / 4) for s in range(1, 8)])
    train_run("name=warm-broken", *common, "trainer.stop_after_step=5")
    resumed = records(train_run("name=warm-broken", *common, "resume=true"))
    assert [(r["step"], r["beta/0"], r["loss"]) for r in resumed] == [(r["step"], r["beta/0"], r["loss"]) for r in full]
    model, _, _ = load_run(full_dir)
    assert [float(b.attn.beta()) for b in model.blocks] == pytest.approx([0.8, 0.8])   # loaded: the full β
