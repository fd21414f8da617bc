"""Exact PyTorch softmax attention with a learnable sink logit per head (SPEC §2), as one call of torch's fused
scaled_dot_product_attention: what runs where the Triton kernels do not (the model on CPU), and what they are
checked against beside the float64 formula.

    w_ij = e^{x_ij} / (e^{s_h} + Σ_{j' visible} e^{x_ij'}),  x_ij = scale · q_i·k_j

The sink is one more key in front of the others, of value 0 and score s_h for every query: the head dimension grows
by a few channels (to a multiple of 8, which the fused kernels want); q carries 1 in them, the sink key s_h / scale
in the first and 0 elsewhere, real keys 0, so that with the score scale a real key scores x_ij and the sink s_h,
exactly; s_h gets its gradient through SDPA's dK. For a square causal map a throw-away first query row keeps SDPA's
(top-left aligned) causal mask right: query i then sees the sink and the keys ≤ i. Otherwise an explicit mask aligns
the queries to the end of the keys (a decoding step sees every cached key). Grouped key/value heads are expanded.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _end_aligned_mask(Tq: int, Tk: int, device) -> torch.Tensor:
    """(Tq, Tk) True where key j is visible to query i, queries aligned to the end of the keys."""
    return torch.arange(Tk, device=device)[None, :] <= torch.arange(Tq, device=device)[:, None] + (Tk - Tq)


def sink_softmax_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink: float | torch.Tensor,
                                     *, scale: Optional[float] = None, causal: bool = True) -> torch.Tensor:
    """o_i = Σ_j w_ij v_j with the sink-softmax weights. q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv);
    sink a float, 0-d or (H,) tensor (gets its gradient); scale 1/√d by default. Returns (B, H, Tq, dv)."""
    B, H, Tq, d = q.shape
    Tk = k.shape[2]
    scale = d ** -0.5 if scale is None else float(scale)
    if k.shape[1] != H:
        k, v = (x.repeat_interleave(H // x.shape[1], dim=1) for x in (k, v))
    if not isinstance(sink, torch.Tensor):
        sink = torch.tensor(float(sink))
    sink = sink.to(q.device).reshape(-1).expand(H)
    width = -(d + 1) % 8 + 1
    square = causal and Tq == Tk
    q = F.pad(q, (0, width, int(square), 0), value=1.0)
    sink_key = (sink / scale).to(k.dtype).view(1, H, 1, 1).expand(B, H, 1, 1)
    k = torch.cat((F.pad(sink_key, (d, width - 1)), F.pad(k, (0, width))), dim=2)
    v = F.pad(v, (0, 0, 1, 0))
    if square:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[:, :, 1:]
    elif causal and Tq > 1:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_end_aligned_mask(Tq, Tk + 1, q.device), scale=scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out
