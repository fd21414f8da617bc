"""Threshold attention (TDA, TRA, ReLA): one entry point for the model.

``threshold_attention`` takes the arguments of ``kernels.reference.threshold_attention_reference`` and runs
the fused Triton kernels where they apply (CUDA tensors), else the exact PyTorch implementation.
This package imports nothing from the rest of the project, and imports Triton only when it is used.
"""
from __future__ import annotations

import torch

from kernels.threshold.reference import threshold_attention_reference, threshold_attention_weights
from kernels.threshold.validation import triton_applies


def threshold_attention(
    q1: torch.Tensor,
    k1: torch.Tensor,
    v: torch.Tensor,
    q2: torch.Tensor | None = None,
    k2: torch.Tensor | None = None,
    *,
    lam: float | torch.Tensor | None = None,
    beta: float | torch.Tensor = 1.0,
    p: float = 2.0,
    normalize: bool = True,
    scale: float = 1.0,
    causal: bool = True,
) -> torch.Tensor:
    """Threshold attention: the fused Triton kernels for CUDA tensors they support (bf16/fp16/fp32,
    head dimensions 16 to 256), else ``threshold_attention_reference``. Arguments, shapes and
    semantics are the reference's; see kernels.autograd.threshold_attention_triton."""
    if q1.is_cuda and triton_applies(q1, k1, v, q2, k2):
        from kernels.threshold.autograd import threshold_attention_triton

        return threshold_attention_triton(q1, k1, v, q2, k2, lam=lam, beta=beta, p=p,
                                          normalize=normalize, scale=scale, causal=causal)
    return threshold_attention_reference(q1, k1, v, q2, k2, lam=lam, beta=beta, p=p,
                                         normalize=normalize, scale=scale, causal=causal)


__all__ = ["threshold_attention", "threshold_attention_reference", "threshold_attention_weights"]
