"""Softpick attention (SPEC §2, Zuhri et al. 2025): the model's entry point.

``softpick_attention`` runs the fused Triton kernels where they apply (CUDA tensors;
autograd.softpick_attention_triton), else the exact PyTorch implementation (reference.softpick_attention_reference);
``softpick_attention_weights`` gives the exact weights for analysis. The kernels here also serve softmax with a sink
logit (kernels/sink_softmax/), whose online normaliser differs only in its start and its terms. Triton is imported
only when the kernels run. README.md in this folder describes the kernels and why they are built as they are.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..inputs import triton_applies
from .reference import softpick_attention_reference, softpick_attention_weights


def softpick_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
                       eps: float = 1e-6, causal: bool = True) -> torch.Tensor:
    """o_i = Σ_j relu(e^x_ij − 1) v_j / (Σ_j |e^x_ij − 1| + ε), x_ij = scale·q_i·k_j over the keys j ≤ i + Tk − Tq
    (all without ``causal``): the kernels for CUDA tensors they support (bf16/fp16/fp32, head dimensions 16 to 256),
    else the reference. q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv); scale 1/√d by default. Returns
    (B, H, Tq, dv) in q's dtype."""
    if q.is_cuda and triton_applies(q, k, v):
        from .autograd import softpick_attention_triton

        return softpick_attention_triton(q, k, v, scale=scale, eps=eps, causal=causal)
    return softpick_attention_reference(q, k, v, scale=scale, eps=eps, causal=causal)


__all__ = ["softpick_attention", "softpick_attention_reference", "softpick_attention_weights"]
