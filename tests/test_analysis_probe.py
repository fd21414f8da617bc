"""The probe recomputes exact attention weights: for every variant, its row blocks times v give the
module's own output, and its residual stream is the model's."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from analysis.probe import attention_maps, layers, row_blocks, rows_per_block, view_scores
from model.attention import ATTENTIONS
from model.gpt import GPT

CONF = Path(__file__).resolve().parents[1] / "conf" / "attention"
# Every registered variant (the threshold ones at β = 0.5, so that entries survive), then TDA's other layout.
VARIANTS = [(name, {"beta": 0.5} if name in ("tda", "tra") else {}) for name in ATTENTIONS] + [
    ("tda", {"beta": 0.5, "layout": "extra_proj", "power": 1.0})]


def tiny_model(name: str, overrides: dict) -> GPT:
    torch.manual_seed(0)
    model_cfg = OmegaConf.create(dict(n_layer=2, n_embd=32, n_head=4, mlp_ratio=2, norm_eps=1e-5,
                                      rope_base=10000.0, rope_ntk_factor=1.0, seq_len=24, max_seq_len=48))
    attn_cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides)
    model = GPT(model_cfg, attn_cfg, vocab_size=50)
    with torch.no_grad():   # larger q/k weights than at initialisation, so maps are far from uniform
        for block in model.blocks:
            for proj in ("q_proj", "k_proj", "q2_proj", "k2_proj"):
                if hasattr(block.attn, proj):
                    getattr(block.attn, proj).weight.mul_(10)
    return model.eval()


def tokens(T: int = 24) -> torch.Tensor:
    return torch.randint(50, (2, T), generator=torch.Generator().manual_seed(1))


def check_scores(probe, full) -> None:
    """The raw scores give the views' weights: relu(s − τ_i)^p for TDA, the causal softmax of s/√d for
    the Differential Transformer."""
    T = full["view1"].shape[-1]
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for view, scores in enumerate(view_scores(probe, 0, T), start=1):
        d = probe.proj.q[0].shape[-1]
        if probe.attn.variant == "tda":
            tau = probe.attn.beta() * torch.sqrt(2 * torch.log(torch.arange(T) + 1.0) / d)
            expected = torch.relu(scores - tau[:, None]).pow(probe.attn.options["p"]) * keep
        else:
            expected = (scores / d ** 0.5).masked_fill(~keep, float("-inf")).softmax(-1)
        torch.testing.assert_close(expected, full[f"view{view}"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_probe_weights_times_v_give_the_module_output(name, overrides):
    model = tiny_model(name, overrides)
    idx = tokens()
    T = idx.shape[1]
    positions = torch.arange(T)
    captured = {}
    hooks = [b.attn_norm.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o))
             for k, b in enumerate(model.blocks)]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    seen_nonzero = False
    for probe in layers(model, idx):
        torch.testing.assert_close(probe.x, captured[probe.layer])          # the model's residual stream
        max_bytes = 5 * 2 * probe.heads * T * 4 * (probe.views + 9)          # five rows per block
        assert rows_per_block(probe, max_bytes) == 5
        blocks = list(row_blocks(probe, max_bytes))
        assert len(blocks) == 5 and blocks[-1][:2] == (20, 24)
        full = {k: torch.zeros(2, probe.heads, T, T) for k in blocks[0][2]}
        for start, stop, maps in blocks:
            for k, w in maps.items():
                assert w.shape == (2, probe.heads, stop - start, stop) and w.dtype == torch.float32
                full[k][:, :, start:stop, :stop] = w
        assert not torch.triu(full["combined"], 1).any()
        seen_nonzero |= bool(full["combined"].any())
        attn = probe.attn
        mixed = full["combined"] @ probe.proj.v.float()
        rebuilt = attn.out_proj(attn.output(attn.head_output(mixed), probe.x))
        torch.testing.assert_close(rebuilt, attn(probe.x, positions), rtol=1e-4, atol=1e-5)
        one = attention_maps(model, idx, probe.layer, rows=(7, 13))
        torch.testing.assert_close(one["combined"], full["combined"][:, :, 7:13, :13])
        if probe.views == 2:
            check_scores(probe, full)
    assert seen_nonzero


def test_probe_bad_input():
    model = tiny_model("softmax", {})
    with pytest.raises(ValueError, match="max_seq_len"):
        next(layers(model, tokens(49)))
    with pytest.raises(ValueError, match="layer"):
        attention_maps(model, tokens(), 2)
    with pytest.raises(ValueError, match="rows"):
        attention_maps(model, tokens(), 0, rows=(5, 30))
    with pytest.raises(TypeError, match="idx"):
        next(layers(model, torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="max_bytes"):
        rows_per_block(next(layers(model, tokens())), 0)
