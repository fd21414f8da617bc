"""Threshold attention (TDA, TRA, ReLA; SPEC §1, §3): the model's entry points.

``threshold_attention`` runs the fused kernels where they apply (CUDA tensors; autograd.threshold_attention_triton),
else the exact PyTorch implementation (reference.threshold_attention_reference); ``threshold_attention_paired`` is TDA
with both views in one q and one k (the paired head layout), whose gradients the kernels write whole;
``threshold_attention_weights`` gives the exact attention maps for analysis. Each takes the plain-valued options as
keywords and passes them on as one ThresholdOptions. Triton is imported only when the kernels run. README.md in this
folder describes the kernels and why they are built as they are.
"""
from __future__ import annotations

import torch

from .options import ThresholdOptions
from .reference import attention_weights, threshold_attention_reference
from ..inputs import pair_views, triton_applies


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
    """Threshold attention: the fused kernels for CUDA tensors they support (bf16/fp16/fp32, head dimensions 16 to
    256), else ``threshold_attention_reference``.

    q1, q2 (B, H, Tq, d), k1, k2 (B, Hkv, Tk, d), v (B, Hkv, Tk, dv); q2 and k2 select TDA's two views. lam
    (TDA's λ, already transformed) and beta are floats, 0-d or (H,) tensors and get gradients when they require
    them; p, normalize, scale, causal as ThresholdOptions describes them. Returns (B, H, Tq, dv) in q1's dtype.
    """
    options = ThresholdOptions(p=p, normalize=normalize, scale=scale, causal=causal)
    if q1.is_cuda and triton_applies(q1, k1, v, q2, k2):
        from .autograd import threshold_attention_triton

        return threshold_attention_triton(q1, k1, v, q2, k2, lam=lam, beta=beta, options=options)
    return threshold_attention_reference(q1, k1, v, q2, k2, lam=lam, beta=beta, options=options)


def threshold_attention_paired(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    lam: float | torch.Tensor,
    beta: float | torch.Tensor = 1.0,
    p: float = 2.0,
    normalize: bool = True,
    scale: float = 1.0,
    causal: bool = True,
) -> torch.Tensor:
    """TDA in the paired head layout (the model's ``layout=paired``): pair h's two views are heads 2h and 2h + 1 of
    q (B, 2H, Tq, d) and of k (B, 2Hkv, Tk, d); v is (B, Hkv, Tk, dv). The same as
    ``threshold_attention(q[:, 0::2], k[:, 0::2], v, q[:, 1::2], k[:, 1::2], ...)``, but on the fused kernels the
    gradients of q and k are written whole: given the views, autograd would build each view's gradient as a
    zero-filled tensor of the whole's size and add the two. Returns (B, H, Tq, dv)."""
    options = ThresholdOptions(p=p, normalize=normalize, scale=scale, causal=causal)
    if q.is_cuda and triton_applies(q, k, v):
        from .autograd import paired_threshold_attention_triton

        return paired_threshold_attention_triton(q, k, v, lam=lam, beta=beta, options=options)
    (q1, q2), (k1, k2) = pair_views(q), pair_views(k)
    return threshold_attention_reference(q1, k1, v, q2, k2, lam=lam, beta=beta, options=options)


def threshold_attention_weights(
    q1: torch.Tensor,
    k1: torch.Tensor,
    q2: torch.Tensor | None = None,
    k2: torch.Tensor | None = None,
    *,
    lam: float | torch.Tensor | None = None,
    beta: float | torch.Tensor = 1.0,
    p: float = 2.0,
    normalize: bool = True,
    scale: float = 1.0,
    causal: bool = True,
    rows: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The exact attention maps of query rows ``rows=(start, stop)`` (all by default), for analysis, without
    gradient: {"view1": a¹, "view2": a² (two views only), "combined": a¹ − λa² or a¹}, each (B, H, stop − start,
    keys up to the last row's position), float32 (float64 for float64 inputs). Other arguments as
    threshold_attention's."""
    options = ThresholdOptions(p=p, normalize=normalize, scale=scale, causal=causal)
    return attention_weights(q1, k1, q2, k2, lam, beta, options, rows)


__all__ = ["ThresholdOptions", "threshold_attention", "threshold_attention_paired", "threshold_attention_reference",
           "threshold_attention_weights"]
