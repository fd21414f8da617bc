"""Softmax attention through SDPA, and its output-gated form (gated_softmax)."""
from __future__ import annotations

import torch
from torch import nn

from kernels.decode import softmax_decode
from model.attention.base import Projections, _Attention, _merge_heads, _sdpa, _softmax_maps, register


@register("softmax")
class SoftmaxAttention(_Attention):
    """Causal softmax attention through torch's scaled_dot_product_attention, cuDNN's kernel first on GPU
    (base.SDPA_ORDER)."""

    def mix(self, proj: Projections) -> torch.Tensor:
        return _sdpa(proj.q[0], proj.k[0], proj.v)

    def decode_mix(self, q, cache, positions):
        return softmax_decode(q[0][:, :, 0], cache.k[0], cache.v, positions=positions)[:, :, None]

    def maps(self, proj, rows=None):
        out = _softmax_maps(proj, self.head_dim, rows)
        out["combined"] = out["view1"]
        return out


@register("gated_softmax")
class GatedSoftmaxAttention(SoftmaxAttention):
    """Softmax attention whose output is gated per channel by sigmoid(x·W_g) (Qiu et al. 2025, their best:
    an elementwise, head-specific gate after SDPA, before the output projection)."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        self.gate_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)

    def output(self, heads, x):
        return _merge_heads(heads) * torch.sigmoid(self.gate_proj(x))
