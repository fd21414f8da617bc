"""Exact PyTorch implementations of one decoding step, the kernels' reference and the model's path where the kernels
do not run (CPU tensors, head dimensions outside 16…256, float64).

One query row per (sequence, head): q (B, H, d); the cache k (B, Hkv, L, d), v (B, Hkv, L, dv) with Hkv dividing H;
``positions`` (B,) the absolute position of each row's query, whose keys are cache positions 0 … position (the
cache's later positions are ignored, whatever finite values they hold; the kernels never read them at all).
Arithmetic in float32 (float64 for float64 inputs); the result (B, H, dv) has q's dtype.

    threshold:  s_j = scale·q̂·k̂_j (q, k L2-normalised when ``normalize``),  τ = β_h·sqrt(2 ln(position + 1) / d),
                a_j = max(s_j − τ, 0)^p,  o = Σ_j (a¹_j − λ_h a²_j) v_j   (one view: o = Σ_j a_j v_j)
    softmax:    x_j = scale·q·k_j,  o = Σ_j e^{x_j} v_j / (Σ_j e^{x_j} [+ e^{sink_h}])
"""
from __future__ import annotations

import math

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_head(x: float | torch.Tensor, H: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        return torch.full((H,), float(x), dtype=dtype, device=device)
    return x.to(dtype=dtype, device=device).reshape(-1).expand(H)


def _visible(positions: torch.Tensor, L: int) -> torch.Tensor:
    """(B, 1, L) True for the cache positions each row's query sees."""
    return (torch.arange(L, device=positions.device)[None, :] <= positions.reshape(-1, 1))[:, None, :]


def _heads(x: torch.Tensor, H: int, compute: torch.dtype) -> torch.Tensor:
    """A cache tensor (B, Hkv, L, ·) in the compute dtype, its heads repeated to the H query heads."""
    x = x.to(compute)
    return x.repeat_interleave(H // x.shape[1], dim=1) if x.shape[1] != H else x


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def threshold_decode_reference(q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor, q2: torch.Tensor | None = None,
                               k2: torch.Tensor | None = None, *, positions: torch.Tensor,
                               lam: float | torch.Tensor | None = None, beta: float | torch.Tensor = 1.0,
                               p: float = 2.0, normalize: bool = True, scale: float = 1.0) -> torch.Tensor:
    """Threshold attention (TDA with q2, k2; TRA; ReLA with beta=0, p=1, normalize=False) of one query row per
    sequence and head against the cache; see the module docstring."""
    compute = _compute_dtype(q1)
    B, H, d = q1.shape
    L = k1.shape[2]
    positions = positions.to(q1.device)
    visible = _visible(positions, L)
    g = torch.sqrt(2.0 * torch.log1p(positions.to(compute)) / d)                     # (B,)
    tau = _per_head(beta, H, compute, q1.device)[None, :] * g[:, None]                # (B, H)
    combined = None
    for view, (q, k) in enumerate([(q1, k1)] + ([(q2, k2)] if q2 is not None else [])):
        q, k = q.to(compute), _heads(k, H, compute)
        if normalize:
            q, k = _unit(q), _unit(k)
        u = torch.einsum("bhd,bhld->bhl", q, k) * scale - tau[..., None]
        u = torch.where((u > 0) & visible, u, torch.zeros((), dtype=compute, device=u.device))
        a = u if p == 1.0 else u * u if p == 2.0 else u.pow(p)
        if view == 0:
            combined = a
        else:
            combined = combined - _per_head(lam, H, compute, q1.device)[None, :, None] * a
    return torch.einsum("bhl,bhld->bhd", combined, _heads(v, H, compute)).to(q1.dtype)


def softmax_decode_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, positions: torch.Tensor,
                             scale: float | None = None, sink: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of one query row per sequence and head against the cache, optionally with a sink logit
    per head (H,) in the denominator; ``scale`` defaults to 1/√d. See the module docstring."""
    compute = _compute_dtype(q)
    H, d = q.shape[1], q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    x = torch.einsum("bhd,bhld->bhl", q.to(compute), _heads(k, H, compute)) * scale
    x = x.masked_fill(~_visible(positions.to(q.device), k.shape[2]), float("-inf"))
    if sink is None:
        w = torch.softmax(x, dim=-1)
    else:
        total = torch.logaddexp(torch.logsumexp(x, dim=-1), sink.to(compute)[None, :])
        w = torch.exp(x - total[..., None])
    return torch.einsum("bhl,bhld->bhd", w, _heads(v, H, compute)).to(q.dtype)
