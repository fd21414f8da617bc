"""Exact PyTorch attention for the maps that torch's fused attention cannot compute: sigmoid and
softpick (SPEC §2).

Scores are x_ij = scale · q_i·k_j over the causal keys j ≤ pos_i, queries aligned to the end of the keys
(query row r of Tq has absolute position r + Tk − Tq, so a decoding step sees every cached key). The
weights of a block of query rows come from one function per map (``RULES``), shared by the forward and by
``blocked_attention_weights`` (the analysis maps), so the maps times v are the forward's output. The forward
works on blocks of query rows and the backward recomputes each block, so no tensor larger than one
(query block × keys) slab is held, forward or backward, as kernels/threshold/reference.py does for threshold
attention. Arithmetic is float32 (float64 for float64 inputs) with autocast off; the output has q's dtype.

Gradients, with w the weights, dW = dO·vᵀ and dX = ∂L/∂x (then dq = scale·dX·k, dk = scale·dXᵀ·q,
dv = wᵀ·dO):

    sigmoid   w = σ(x + b_h)                        dX = dW ⊙ w ⊙ (1 − w),   ∂L/∂b_h = Σ dX
    softpick  w = relu(u) / D,  u = e^x − 1,  D = Σ_j |u_j| + ε
              dX_ij = (e^{x_ij} / D_i) · (dW_ij · 1[u_ij > 0] − sign(u_ij) · Δ_i),   Δ_i = Σ_j dW_ij w_ij
"""
from __future__ import annotations

import torch

# Elements of one (query block × keys) score slab, summed over batch and heads.
SLAB_ELEMENTS = 1 << 24


def _sigmoid_weights(x: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor, eps: float):
    """σ(x + b_h) on causal entries, 0 elsewhere; the weights are their own saved state."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    w = torch.where(keep, torch.sigmoid(x + bias[:, None, None]), zero)
    return w, w


def _sigmoid_score_grad(dw: torch.Tensor, w: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    return dw * saved * (1.0 - saved)


def _softpick_weights(x: torch.Tensor, keep: torch.Tensor, bias: None, eps: float):
    """relu(e^x − 1) / (Σ_j |e^x_j − 1| + ε) over causal entries, in the overflow-safe form
    relu(e^{x−m} − e^{−m}) / (Σ_j |e^{x_j−m} − e^{−m}| + ε e^{−m}). Any shift m is exact;
    m = max(row max, 0) keeps both e^{x−m} and e^{−m} at most 1, so no intermediate is infinite (with the
    row maximum alone, e^{−m} overflows for a row of very negative scores). Saved for the gradient:
    e^{x−m}, D e^{−m} (their ratio is e^x / D) and u = e^{x−m} − e^{−m}, whose sign is that of x."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = x.masked_fill(~keep, float("-inf"))
    m = x.amax(dim=-1, keepdim=True).clamp_min(0.0)   # every row sees key 0, so the max is finite
    e_m = torch.exp(-m)
    e = torch.exp(x - m)                               # 0 on masked entries
    u = torch.where(keep, e - e_m, zero)
    denominator = u.abs().sum(dim=-1, keepdim=True) + eps * e_m
    return u.clamp_min(0.0) / denominator, (e, denominator, u)


def _softpick_score_grad(dw: torch.Tensor, w: torch.Tensor, saved) -> torch.Tensor:
    e, denominator, u = saved
    delta = (dw * w).sum(dim=-1, keepdim=True)
    return e / denominator * (dw * (u > 0) - torch.sign(u) * delta)


# name -> (weights(x, keep, bias, eps) -> (w, saved), score_grad(dW, w, saved) -> dX, has a per-head bias)
RULES = {
    "sigmoid": (_sigmoid_weights, _sigmoid_score_grad, True),
    "softpick": (_softpick_weights, _softpick_score_grad, False),
}


def _block_scores(q, k, start: int, stop: int, offset: int, scale: float):
    """Scores (B, H, rows, keys) of query rows [start, stop) over keys up to the last row's position, and
    the causal mask (rows, keys)."""
    n_keys = stop + offset
    positions = torch.arange(start + offset, stop + offset, device=q.device)
    keep = torch.arange(n_keys, device=q.device)[None, :] <= positions[:, None]
    x = (q[:, :, start:stop] @ k[:, :, :n_keys].transpose(-1, -2)) * scale
    return x, keep


def _row_blocks(q: torch.Tensor, k: torch.Tensor):
    """(start, stop) of consecutive blocks of query rows whose score slab fits SLAB_ELEMENTS."""
    B, H, Tq, _ = q.shape
    rows = max(1, min(Tq, SLAB_ELEMENTS // max(1, B * H * k.shape[2])))
    return [(start, min(Tq, start + rows)) for start in range(0, Tq, rows)]


class _BlockedAttention(torch.autograd.Function):
    """Blocked forward and recomputing backward over inputs already in the compute dtype."""

    @staticmethod
    def forward(ctx, rule, scale, eps, q, k, v, bias):
        weights = RULES[rule][0]
        offset = k.shape[2] - q.shape[2]
        out = v.new_empty(*q.shape[:3], v.shape[-1])
        for start, stop in _row_blocks(q, k):
            x, keep = _block_scores(q, k, start, stop, offset, scale)
            w, _ = weights(x, keep, bias, eps)
            out[:, :, start:stop] = w @ v[:, :, :stop + offset]
        ctx.save_for_backward(q, k, v, bias)
        ctx.config = (rule, scale, eps)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias = ctx.saved_tensors
        rule, scale, eps = ctx.config
        weights, score_grad, _ = RULES[rule]
        offset = k.shape[2] - q.shape[2]
        with torch.autocast(q.device.type, enabled=False):
            grad_out = grad_out.to(v.dtype)
            dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
            dbias = None if bias is None else torch.zeros_like(bias)
            for start, stop in _row_blocks(q, k):
                n_keys = stop + offset
                x, keep = _block_scores(q, k, start, stop, offset, scale)
                w, saved = weights(x, keep, bias, eps)
                g = grad_out[:, :, start:stop]
                dv[:, :, :n_keys] += w.transpose(-1, -2) @ g
                dx = score_grad(g @ v[:, :, :n_keys].transpose(-1, -2), w, saved)
                if dbias is not None:
                    dbias += dx.sum(dim=(0, 2, 3))
                dx = dx * scale
                dq[:, :, start:stop] = dx @ k[:, :, :n_keys]
                dk[:, :, :n_keys] += dx.transpose(-1, -2) @ q[:, :, start:stop]
        return None, None, None, dq, dk, dv, dbias


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _check(rule: str, bias) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule '{rule}'; choose one of: {', '.join(RULES)}")
    if RULES[rule][2] != (bias is not None):
        raise ValueError(f"rule '{rule}' {'needs' if RULES[rule][2] else 'takes no'} per-head bias")


def blocked_attention(rule: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                      bias: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """Causal attention o_i = Σ_{j ≤ pos_i} w_ij v_j with the weights of ``rule`` (``sigmoid``: ``bias``
    (H,) required; ``softpick``: ``eps``). q (B, H, Tq, d), k (B, H, Tk, d), v (B, H, Tk, dv), Tq ≤ Tk.
    Returns (B, H, Tq, dv) in q's dtype; q, k, v and bias get their gradients."""
    _check(rule, bias)
    compute = _compute_dtype(q)
    with torch.autocast(q.device.type, enabled=False):
        bias = None if bias is None else bias.to(compute)
        out = _BlockedAttention.apply(rule, float(scale), float(eps), q.to(compute), k.to(compute),
                                      v.to(compute), bias)
    return out.to(q.dtype)


@torch.no_grad()
def blocked_attention_weights(rule: str, q: torch.Tensor, k: torch.Tensor, *, scale: float,
                              bias: torch.Tensor | None = None, eps: float = 0.0,
                              rows: tuple[int, int] | None = None) -> torch.Tensor:
    """The weights of ``blocked_attention`` for query rows [start, stop) (default: all) over the keys up
    to the last row's position, (B, H, rows, keys), float32 (float64 for float64 inputs), 0 above the
    diagonal."""
    _check(rule, bias)
    compute = _compute_dtype(q)
    start, stop = rows if rows is not None else (0, q.shape[2])
    with torch.autocast(q.device.type, enabled=False):
        x, keep = _block_scores(q.to(compute), k.to(compute), start, stop, k.shape[2] - q.shape[2], scale)
        return RULES[rule][0](x, keep, None if bias is None else bias.to(compute), eps)[0]
