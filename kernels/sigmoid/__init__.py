"""Sigmoid attention (SPEC §2, Ramapuram et al. 2024): the model's entry point.

``sigmoid_attention`` runs the fused Triton kernels where they apply (CUDA tensors; autograd.sigmoid_attention_triton),
else the exact PyTorch implementation (reference.sigmoid_attention_reference); ``sigmoid_attention_weights`` gives the
exact weights for analysis. Triton is imported only when the kernels run. README.md in this folder describes the
kernels and why they are built as they are.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..inputs import triton_applies
from .reference import sigmoid_attention_reference, sigmoid_attention_weights


def sigmoid_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: float | torch.Tensor, *,
                      scale: Optional[float] = None, causal: bool = True) -> torch.Tensor:
    """o_i = Σ_j σ(scale·q_i·k_j + b_h) v_j over the keys j ≤ i + Tk − Tq (all without ``causal``): the kernels for
    CUDA tensors they support (bf16/fp16/fp32, head dimensions 16 to 256), else the reference.

    q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv); bias a float, 0-d or (H,) tensor (gets its gradient);
    scale 1/√d by default. Returns (B, H, Tq, dv) in q's dtype."""
    if q.is_cuda and triton_applies(q, k, v):
        from .autograd import sigmoid_attention_triton

        return sigmoid_attention_triton(q, k, v, bias, scale=scale, causal=causal)
    return sigmoid_attention_reference(q, k, v, bias, scale=scale, causal=causal)


__all__ = ["sigmoid_attention", "sigmoid_attention_reference", "sigmoid_attention_weights"]
