"""Exact PyTorch attention blocked over query rows, for maps that torch's fused attention cannot compute: what the
op folders' references (kernels/sigmoid/reference.py, kernels/softpick/reference.py) are built on.

A map is a ``Rule``: its weights as a function of the scores of a block of query rows, and their backward. Scores
are x_ij = scale · q_i·k_j over the keys j ≤ pos_i (all keys without ``causal``), query row r sitting at absolute
position r + Tk − Tq (queries aligned to the end of the keys, so a decoding step sees every cached key). The forward
works on blocks of query rows and the backward recomputes each block, so no tensor larger than one (query block ×
keys) slab is held, forward or backward, as kernels/threshold/reference.py does for threshold attention. The same
weight function gives ``blocked_weights`` (the analysis maps), so the maps times v are the forward's output.
Arithmetic is float32 (float64 for float64 inputs) with autocast off; the output has q's dtype. Grouped key/value
heads are expanded to the query heads (autograd sums their gradients back).

With w the weights, dW = dO·vᵀ and dX = ∂L/∂x, the shared backward is dq = scale·dX·k, dk = scale·dXᵀ·q,
dv = wᵀ·dO; each rule gives dX (and its per-head parameter's gradient) from dW.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

# Elements of one (query block × keys) score slab, summed over batch and heads.
SLAB_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Rule:
    """A map's weights and their backward, over one block of rows (x: (B, H, rows, keys) scores, keep: (rows,
    keys) visible entries, param: (H,) per-head parameter or None, eps: the rule's constant).

    weights(x, keep, param, eps) -> (w, saved): the weights (0 where not visible) and what the backward needs.
    score_grad(dw, w, saved) -> (dX, dparam): ∂L/∂x from ∂L/∂w, and the per-head parameter's gradient (H,) or None.
    """

    name: str
    weights: Callable
    score_grad: Callable
    has_param: bool


def block_scores(q: torch.Tensor, k: torch.Tensor, start: int, stop: int, offset: int, scale: float, causal: bool):
    """Scores (B, H, rows, keys) of query rows [start, stop) over the keys they may see (up to the last row's
    position when ``causal``, else all), and the mask (rows, keys) of visible entries."""
    n_keys = stop + offset if causal else k.shape[2]
    positions = torch.arange(start + offset, stop + offset, device=q.device)
    keep = torch.arange(n_keys, device=q.device)[None, :] <= positions[:, None]
    if not causal:
        keep = torch.ones_like(keep)
    x = (q[:, :, start:stop] @ k[:, :, :n_keys].transpose(-1, -2)) * scale
    return x, keep


def row_blocks(q: torch.Tensor, k: torch.Tensor) -> list[tuple[int, int]]:
    """(start, stop) of consecutive blocks of query rows whose score slab fits SLAB_ELEMENTS."""
    B, H, Tq, _ = q.shape
    rows = max(1, min(Tq, SLAB_ELEMENTS // max(1, B * H * k.shape[2])))
    return [(start, min(Tq, start + rows)) for start in range(0, Tq, rows)]


class _BlockedAttention(torch.autograd.Function):
    """Blocked forward and recomputing backward over inputs already in the compute dtype, heads expanded."""

    @staticmethod
    def forward(ctx, rule: Rule, scale, eps, causal, q, k, v, param):
        offset = k.shape[2] - q.shape[2]
        out = v.new_empty(*q.shape[:3], v.shape[-1])
        for start, stop in row_blocks(q, k):
            x, keep = block_scores(q, k, start, stop, offset, scale, causal)
            w, _ = rule.weights(x, keep, param, eps)
            out[:, :, start:stop] = w @ v[:, :, :x.shape[-1]]
        ctx.save_for_backward(q, k, v, param)
        ctx.config = (rule, scale, eps, causal)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, param = ctx.saved_tensors
        rule, scale, eps, causal = ctx.config
        offset = k.shape[2] - q.shape[2]
        with torch.autocast(q.device.type, enabled=False):
            grad_out = grad_out.to(v.dtype)
            dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
            dparam = None if param is None else torch.zeros_like(param)
            for start, stop in row_blocks(q, k):
                x, keep = block_scores(q, k, start, stop, offset, scale, causal)
                n_keys = x.shape[-1]
                w, saved = rule.weights(x, keep, param, eps)
                g = grad_out[:, :, start:stop]
                dv[:, :, :n_keys] += w.transpose(-1, -2) @ g
                dx, dp = rule.score_grad(g @ v[:, :, :n_keys].transpose(-1, -2), w, saved)
                if dparam is not None:
                    dparam += dp
                dx = dx * scale
                dq[:, :, start:stop] = dx @ k[:, :, :n_keys]
                dk[:, :, :n_keys] += dx.transpose(-1, -2) @ q[:, :, start:stop]
        return None, None, None, None, dq, dk, dv, dparam


def compute_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _expand_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Grouped key/value heads repeated to the query heads (as they are when there are as many)."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def head_param(param: Optional[float | torch.Tensor], H: int, dtype: torch.dtype, device) -> Optional[torch.Tensor]:
    """A float, 0-d, (1,) or (H,) per-head parameter as an (H,) tensor of ``dtype``, keeping its autograd history
    (a shared value's gradient is the sum over heads)."""
    if param is None:
        return None
    if not isinstance(param, torch.Tensor):
        return torch.full((H,), float(param), dtype=dtype, device=device)
    return param.to(device=device, dtype=dtype).reshape(-1).expand(H)


def blocked_attention(rule: Rule, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                      param: Optional[float | torch.Tensor] = None, eps: float = 0.0,
                      causal: bool = True) -> torch.Tensor:
    """o_i = Σ_j w_ij v_j with the weights of ``rule``. q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv),
    Hkv dividing H, Tq ≤ Tk. Returns (B, H, Tq, dv) in q's dtype; q, k, v and a parameter tensor get gradients."""
    compute = compute_dtype(q)
    H = q.shape[1]
    with torch.autocast(q.device.type, enabled=False):
        param = head_param(param, H, compute, q.device)
        out = _BlockedAttention.apply(rule, float(scale), float(eps), bool(causal), q.to(compute),
                                      _expand_heads(k.to(compute), H), _expand_heads(v.to(compute), H), param)
    return out.to(q.dtype)


@torch.no_grad()
def blocked_weights(rule: Rule, q: torch.Tensor, k: torch.Tensor, *, scale: float,
                    param: Optional[float | torch.Tensor] = None, eps: float = 0.0, causal: bool = True,
                    rows: tuple[int, int] | None = None) -> torch.Tensor:
    """The weights of ``blocked_attention`` for query rows [start, stop) (default: all) over the keys up to the last
    row's position (all keys without ``causal``), (B, H, rows, keys), float32 (float64 for float64 inputs), 0 where
    a key is not visible."""
    compute = compute_dtype(q)
    start, stop = rows if rows is not None else (0, q.shape[2])
    H = q.shape[1]
    with torch.autocast(q.device.type, enabled=False):
        x, keep = block_scores(q.to(compute), _expand_heads(k.to(compute), H), start, stop, k.shape[2] - q.shape[2],
                               scale, causal)
        return rule.weights(x, keep, head_param(param, H, compute, q.device), eps)[0]
