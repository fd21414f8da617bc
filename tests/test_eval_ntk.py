"""NTK-aware RoPE scaling at evaluation changes only RoPE's frequencies, and only inside its block."""
import math

import pytest
import torch

from evaluation.length import rope_ntk_scaling
from test_eval_generate import V, tiny_gpt


def rotate(x, positions, inv_freq):
    """GPT-NeoX RoPE written out: channel c pairs with c + d/2, angle = position · inv_freq[c]."""
    half = x.shape[-1] // 2
    angle = positions[:, None].double() * inv_freq[None, :].double()
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., :half].double(), x[..., half:].double()
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)


@pytest.mark.parametrize("name", ["softmax", "tda"])
def test_ntk_scaling_changes_only_the_rope_frequencies(name):
    model = tiny_gpt(name)
    attn = model.blocks[1].attn
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 20, 32, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(20)
    plain = attn.project(x, positions)
    with rope_ntk_scaling(model, 4.0):
        assert all(block.attn.rope_ntk_factor == 4.0 for block in model.blocks)
        scaled = attn.project(x, positions)
        with torch.no_grad():
            logits_scaled = model(torch.arange(12)[None] % V)[0]
    assert all(block.attn.rope_ntk_factor == 1.0 for block in model.blocks)  # restored
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(scaled.v, plain.v, rtol=0, atol=0)  # values carry no position
    d = attn.head_dim
    base = attn.rope_base * 4.0 ** (d / (d - 2))  # NTK-aware: base · factor^(d/(d−2))
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    raw_q = attn.q_proj(x).view(2, 20, attn.n_head, d).transpose(1, 2)
    raw_k = attn.k_proj(x).view(2, 20, attn.n_head, d).transpose(1, 2)
    want_q, want_k = rotate(raw_q, positions, inv_freq), rotate(raw_k, positions, inv_freq)
    got_q = torch.stack(scaled.q, 2).flatten(1, 2) if len(scaled.q) == 2 else scaled.q[0]
    got_k = torch.stack(scaled.k, 2).flatten(1, 2) if len(scaled.k) == 2 else scaled.k[0]
    torch.testing.assert_close(got_q.double(), want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k.double(), want_k, rtol=1e-5, atol=1e-5)
    # the highest frequency is untouched, the lowest is divided by the factor (up to d/(d−2))
    assert inv_freq[0] == 1.0
    plain_low = attn.rope_base ** (-(d - 2) / d)
    assert float(inv_freq[-1]) == pytest.approx(plain_low / 4.0)
    # position 0 is not rotated, so the first token's logits are unchanged; later ones move
    with torch.no_grad():
        logits_plain = model(torch.arange(12)[None] % V)[0]
    torch.testing.assert_close(logits_scaled[:, 0], logits_plain[:, 0])
    assert not torch.allclose(logits_scaled[:, 1:], logits_plain[:, 1:])


def test_scaling_multiplies_a_trained_factor_and_refuses_nonpositive_scales():
    model = tiny_gpt("softmax")
    for block in model.blocks:
        block.attn.rope_ntk_factor = 2.0
    with rope_ntk_scaling(model, 3):
        assert all(math.isclose(block.attn.rope_ntk_factor, 6.0) for block in model.blocks)
    assert all(block.attn.rope_ntk_factor == 2.0 for block in model.blocks)
    with pytest.raises(ValueError, match="scale"):
        with rope_ntk_scaling(model, 0):
            pass
