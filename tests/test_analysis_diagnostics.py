"""The diagnostics while training (analysis.diagnostics): exact counts on a TDA model built so that its
empty rows follow from the threshold alone, agreement with analysis.attention for every registered
variant, and what the call leaves behind (mode, gradients, matmul precision)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from analysis.attention import measure
from analysis.diagnostics import attention_diagnostics
from analysis.metrics import TILE, summarise
from model.attention import ATTENTIONS
from model.gpt import GPT

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "attention"
MEASURES = ("empty_rows", "nonzeros_per_row", "tile_occupancy")


def model_of(name: str, n_embd: int = 32, n_head: int = 4, n_layer: int = 2, **attention) -> GPT:
    torch.manual_seed(0)
    model_cfg = OmegaConf.create(dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, mlp_ratio=2, norm_eps=1e-5,
                                      rope_base=10000.0, rope_ntk_factor=1.0, seq_len=64, max_seq_len=256))
    return GPT(model_cfg, OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), attention), vocab_size=50)


def test_tda_rows_beyond_the_threshold_are_empty():
    """TDA, paired layout, 2 heads of d = 32, β = 2, 128 copies of one token. Layer 0: q = k, both only in
    channel 15 of every sub-head (RoPE pairs it with channel 31 and turns it by θ = 10000^(−30/32) per
    position), so q̂_i·k̂_j = cos((i − j)θ) in both views, and an entry survives iff that exceeds
    τ_i = 2·sqrt(2 ln(i+1)/32); from i = 54 on τ_i > 1 (ln 55 > 4), so every later row is empty. The
    combined weight is (1 − λ)·a with λ = 0.5, non-zero wherever a is. Layer 1: q = 0, so no score exceeds
    τ_i ≥ 0 and every row is empty."""
    model = model_of("tda", n_embd=128, beta=2.0)
    T, d = 128, 32
    tokens = torch.full((2, T), 7)
    with torch.no_grad():
        x = model.blocks[0].attn_norm(model.embed(tokens[:1, :1]))[0, 0]      # the same at every position
        attn = model.blocks[0].attn
        attn.q_proj.weight.zero_()
        for sub_head in range(4):
            attn.q_proj.weight[sub_head * d + 15] = x                        # q channel 15 = |x|² > 0
        attn.k_proj.weight.copy_(attn.q_proj.weight)
        model.blocks[1].attn.q_proj.weight.zero_()

    theta = 10000.0 ** (-30 / 32)
    survives = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        tau = 2.0 * math.sqrt(2.0 * math.log(i + 1) / d)
        for j in range(i + 1):
            survives[i, j] = math.cos((i - j) * theta) > tau
    empty_rows = int((~survives.any(1)).sum())
    assert empty_rows == T - 54                                              # rows 54 … 127, as derived above
    n = T // TILE
    occupied = sum(bool(survives[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE].any())
                   for r in range(n) for c in range(r + 1))
    assert occupied == 1                                                     # tile (0, 0) of the 3 causal tiles

    out = attention_diagnostics(model, tokens)
    assert out["diag/empty_rows/0"] == pytest.approx(empty_rows / T)
    assert out["diag/nonzeros_per_row/0"] == pytest.approx(int(survives.sum()) / T)
    assert out["diag/tile_occupancy/0"] == pytest.approx(occupied / (n * (n + 1) // 2))
    assert (out["diag/empty_rows/1"], out["diag/nonzeros_per_row/1"], out["diag/tile_occupancy/1"]) == (1.0, 0.0, 0.0)
    assert out["diag/empty_rows/mean"] == pytest.approx((empty_rows / T + 1.0) / 2)
    assert out["diag/tile_occupancy/mean"] == pytest.approx(occupied / 3 / 2)


VARIANTS = sorted(ATTENTIONS)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_matches_the_analysis(name):
    """Every registered variant gives the per-layer numbers analysis.attention computes from the same maps;
    dense variants (softmax rows) have no empty row, every causal entry and every tile non-zero."""
    model = model_of(name, **({"beta": 0.5} if name in ("tda", "tra") else {}))
    with torch.no_grad():   # larger q/k weights than at initialisation, so threshold maps are sparse
        for block in model.blocks:
            block.attn.q_proj.weight.mul_(10)
            block.attn.k_proj.weight.mul_(10)
    T = 100                  # not a multiple of the tile: partial tiles count
    tokens = torch.randint(50, (2, T), generator=torch.Generator().manual_seed(1))
    out = attention_diagnostics(model, tokens, max_bytes=2**16)     # several row blocks
    layers = len(model.blocks)
    assert sorted(out) == sorted(f"diag/{m}/{k}" for m in MEASURES for k in [*map(str, range(layers)), "mean"])
    expected = summarise(measure(model.eval(), tokens, 2**30))
    for m, key in zip(MEASURES, ("empty_row_share_per_layer", "nonzeros_per_row_per_layer", "tile_occupancy_per_layer")):
        for layer in range(layers):
            assert out[f"diag/{m}/{layer}"] == pytest.approx(expected[key][layer])
        assert out[f"diag/{m}/mean"] == pytest.approx(sum(expected[key]) / layers)
    if name in ("softmax", "gated_softmax", "differential"):
        for layer in range(layers):
            assert out[f"diag/empty_rows/{layer}"] == 0.0 and out[f"diag/tile_occupancy/{layer}"] == 1.0
            assert out[f"diag/nonzeros_per_row/{layer}"] == pytest.approx((T + 1) / 2)
    if name in ("tda", "tra"):   # the sparse variants at these weights have empty rows (else this test says little)
        assert out["diag/empty_rows/mean"] > 0


def test_runs_in_eval_mode_without_gradients_and_restores_state():
    model = model_of("tda", beta=0.5)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append((module.training, torch.is_grad_enabled())))
    tokens = torch.randint(50, (2, 64), generator=torch.Generator().manual_seed(2))
    precision = torch.get_float32_matmul_precision()
    model.train()
    out = attention_diagnostics(model, tokens)
    assert seen == [(False, False)] and model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.get_float32_matmul_precision() == precision
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):                    # autocast is switched off inside
        assert attention_diagnostics(model, tokens) == out
    assert not model.training
    with pytest.raises(TypeError, match="bare GPT"):
        attention_diagnostics(torch.nn.ModuleDict({"module": model}), tokens)


def fake_run(root: Path, name: str, diagnostics: bool) -> Path:
    """A run directory with a config and a metrics.jsonl as training writes it: loss records every 50
    steps, λ per layer, and (``diagnostics``) diag/* per layer and their mean every 100 steps."""
    run = root / name
    run.mkdir()
    OmegaConf.save(OmegaConf.create({"name": name, "seed": 0, "attention": {"name": "tda"},
                                     "model": {"name": "tiny", "seq_len": 64}}), run / "config.yaml")
    records = []
    for step in range(50, 1001, 50):
        record = {"step": step, "loss": 5.0 - step / 500, **{f"lambda/{k}": 0.5 - k * step / 1e4 for k in range(3)}}
        if diagnostics and step % 100 == 0:
            for m in MEASURES:
                values = [min(1.0, step / 1000 * (k + 1) / 3) for k in range(3)]
                record.update({f"diag/{m}/{k}": v for k, v in enumerate(values)})
                record[f"diag/{m}/mean"] = sum(values) / 3
        records.append(record)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    return run


def test_training_diagnostics_figure_from_metrics_jsonl(tmp_path):
    import matplotlib.image

    from analysis.draw.training import layer_series
    from analysis.figures import make_figures
    from analysis.results import load_results

    logged, plain = fake_run(tmp_path, "tda-logged", True), fake_run(tmp_path, "tda-plain", False)
    series = layer_series(load_results(logged).metrics, "diag/tile_occupancy")
    assert list(series) == ["0", "1", "2", "mean"]
    steps, values = series["2"]                       # layer 2 logged min(1, step/1000 · 3/3) every 100 steps
    assert steps == list(range(100, 1001, 100)) and values == pytest.approx([s / 1000 for s in steps])
    assert list(layer_series(load_results(plain).metrics, "lambda")) == ["0", "1", "2"]

    out = tmp_path / "figures"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "analysis.figures", f"runs=[{logged},{plain}]",
                             "figures=[training_diagnostics,loss_curves]", f"out={out}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{ext}" for stem in ("training_diagnostics_tda-logged", "loss_curves") for ext in ("png", "pdf"))
    image = matplotlib.image.imread(out / "training_diagnostics_tda-logged.png")
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    assert (out / "training_diagnostics_tda-logged.pdf").read_bytes()[:5] == b"%PDF-"

    def figures_cfg(*overrides):
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="analysis_figures", overrides=list(overrides))

    with pytest.raises(ValueError, match="no run's metrics.jsonl holds diag"):
        make_figures(figures_cfg(f"runs=[{plain}]", "figures=[training_diagnostics]", f"out={tmp_path / 'x'}"))
    with pytest.raises(ValueError, match="unknown"):
        make_figures(figures_cfg(f"runs=[{plain}]", "figures=[nonsense]", f"out={tmp_path / 'x'}"))
    with pytest.raises(FileNotFoundError, match="analysis.attention"):      # summary figures need the analysis
        make_figures(figures_cfg(f"runs=[{logged}]", "figures=[sink_by_layer]", f"out={tmp_path / 'x'}"))


def test_loss_by_configuration_groups_seeds_orders_by_mean_and_takes_softmax_as_reference(tmp_path):
    """Runs equal up to the seed form one row holding every seed's final validation loss (eval/val_loss.json over
    the logged val_loss), the best mean drawn at the top (last), softmax's mean the reference; no loss: an error."""
    from analysis.draw.study import configuration_losses, loss_by_configuration
    from analysis.results import load_results

    def run(name, attention, seed, loss, beta=None, evaluated=None):
        path = tmp_path / name
        path.mkdir()
        settings = {"name": attention, **({"beta": beta} if beta is not None else {})}
        OmegaConf.save(OmegaConf.create({"name": name, "seed": seed, "attention": settings,
                                         "model": {"name": "tiny", "seq_len": 64}}), path / "config.yaml")
        (path / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 5.0, "val_loss": loss}) + "\n")
        if evaluated is not None:
            (path / "eval").mkdir()
            (path / "eval" / "val_loss.json").write_text(json.dumps({"loss": evaluated}))
        return load_results(path)

    runs = [run("sm0", "softmax", 0, 3.0), run("sm1", "softmax", 1, 3.2),
            run("tda0", "tda", 0, 9.0, evaluated=3.5), run("tda1", "tda", 1, 3.3),
            run("tdab0", "tda", 0, 3.1, beta=0.5)]
    rows, reference = configuration_losses(runs)
    assert [(label, values, ref) for label, values, _, ref in rows] == [
        ("tda", [3.5, 3.3], pytest.approx(3.1)), ("softmax", [3.0, 3.2], pytest.approx(3.1)),
        ("tda (beta=0.5)", [3.1], pytest.approx(3.1))]
    assert reference == [pytest.approx(3.1)]
    paths = loss_by_configuration(runs, tmp_path / "figure")
    assert sorted(p.name for p in paths) == ["figure.pdf", "figure.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    OmegaConf.save(OmegaConf.create({"name": "empty", "seed": 0, "attention": {"name": "tda"},
                                     "model": {"name": "tiny", "seq_len": 64}}), empty / "config.yaml")
    (empty / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 5.0}) + "\n")
    with pytest.raises(ValueError, match="no run has a validation loss"):
        configuration_losses([load_results(empty)])
