"""Softmax attention with a learnable sink logit per head (SPEC §2; gpt-oss): the model's entry point.

``sink_softmax_attention`` runs the fused Triton kernels where they apply (CUDA tensors; the row-normalised kernels of
kernels/softpick/ in their sink mode, autograd.sink_softmax_attention_triton), else one call of torch's fused SDPA with
a sink key (reference.sink_softmax_attention_reference). README.md in this folder says why.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..inputs import triton_applies
from .reference import sink_softmax_attention_reference


def sink_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink: float | torch.Tensor, *,
                           scale: Optional[float] = None, causal: bool = True) -> torch.Tensor:
    """o_i = Σ_j e^x_ij v_j / (e^s_h + Σ_j e^x_ij), x_ij = scale·q_i·k_j over the keys j ≤ i + Tk − Tq (all without
    ``causal``): the kernels for CUDA tensors they support (bf16/fp16/fp32, head dimensions 16 to 256), else the
    reference. q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv); sink a float, 0-d or (H,) tensor (gets its
    gradient); scale 1/√d by default. Returns (B, H, Tq, dv) in q's dtype."""
    if q.is_cuda and triton_applies(q, k, v):
        from .autograd import sink_softmax_attention_triton

        return sink_softmax_attention_triton(q, k, v, sink, scale=scale, causal=causal)
    return sink_softmax_attention_reference(q, k, v, sink, scale=scale, causal=causal)


__all__ = ["sink_softmax_attention", "sink_softmax_attention_reference"]
