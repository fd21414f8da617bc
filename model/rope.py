"""Rotary position embeddings (RoPE), computed on the fly from absolute positions.

NTK-aware scaling (for evaluation beyond the training length) raises the base:
base' = base · factor^(d / (d − 2)), which stretches the low frequencies by about ``factor`` and leaves
the highest ones nearly unchanged.
"""
from __future__ import annotations

import torch


def rope_frequencies(head_dim: int, base: float, ntk_factor: float = 1.0, device=None) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,) in float32."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    if ntk_factor != 1.0:
        base = base * ntk_factor ** (head_dim / (head_dim - 2))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return base ** (-exponents)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float, ntk_factor: float = 1.0) -> torch.Tensor:
    """Rotate x (B, H, T, d) by its positions (T,), pairing channel c with c + d/2 (GPT-NeoX layout)."""
    d = x.shape[-1]
    angles = positions.to(torch.float32)[:, None] * rope_frequencies(d, base, ntk_factor, x.device)[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
