"""The diagnostics while training (analysis.diagnostics): exact counts on a TDA model built so that its
empty rows follow from the threshold alone, agreement with analysis.attention for every registered
variant, and what the call leaves behind (mode, gradients, matmul precision)."""
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from analysis.attention import measure
from analysis.diagnostics import attention_diagnostics
from analysis.metrics import TILE, summarise
from model.attention import ATTENTIONS
from model.gpt import GPT

CONF = Path(__file__).resolve().parents[1] / "conf" / "attention"
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
