"""Exact PyTorch implementation of threshold attention (TDA, TRA, ReLA), SPEC §1 and §3.

This is the implementation the model uses where the Triton kernels cannot run (no GPU) and the exact
reference the kernels are benchmarked against. It computes in float32 (float64 when the inputs are
float64) with autocast off in its forward and backward (so that a bf16 autocast region, eager or compiled, rounds
nothing inside it), works on blocks of query rows, and has a hand-written backward that recomputes each block, so
no tensor larger than one (query block × keys) slab per (batch, head) is ever held, forward or backward.

Conventions shared with the Triton kernels (SPEC §1):
    s_ij  = scale · q_i·k_j                     q, k L2-normalised first when ``normalize``
    τ_i   = β · sqrt(2 ln(pos_i + 1) / d)        pos_i the absolute position of query row i
    a_ij  = max(s_ij − τ_i, 0)^p  for j ≤ pos_i  (0 above the diagonal when ``causal``)
    TDA:  o_i = Σ_j (a¹_ij − λ a²_ij) v_j        TRA / ReLA (one view): o_i = Σ_j a_ij v_j

Queries are aligned to the end of the keys (bottom-right): with Tq queries and Tk keys, query row i has
absolute position i + Tk − Tq. A forward over a whole sequence has Tq = Tk; a decoding step with a
key/value cache has Tq < Tk, and its threshold uses the true position.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .options import ThresholdOptions

# Elements of one (query block × keys) score slab, summed over batch and heads.
SLAB_ELEMENTS = 1 << 24


def threshold_attention_reference(
    q1: torch.Tensor,
    k1: torch.Tensor,
    v: torch.Tensor,
    q2: torch.Tensor | None = None,
    k2: torch.Tensor | None = None,
    *,
    lam: float | torch.Tensor | None = None,
    beta: float | torch.Tensor = 1.0,
    options: ThresholdOptions = ThresholdOptions(),
) -> torch.Tensor:
    """Threshold attention, exact, in PyTorch.

    Args:
        q1, q2: queries (B, H, Tq, d); q2 (and k2) given selects TDA's two views.
        k1, k2: keys (B, Hkv, Tk, d), Hkv dividing H (grouped key/value heads).
        v: values (B, Hkv, Tk, dv); dv may differ from d.
        lam: TDA's λ (already clamped or otherwise transformed): a float, a 0-d tensor or one per head (H,).
        beta: threshold strength β: a float, a 0-d tensor or one per head (H,); gets a gradient if it
            requires one.
        options: p (≥ 1), normalize, scale, causal (ThresholdOptions).

    Returns:
        (B, H, Tq, dv) in q1's dtype.
    """
    two_views = q2 is not None
    if two_views != (k2 is not None):
        raise ValueError("q2 and k2 must be given together (TDA) or both omitted (TRA/ReLA)")
    if two_views and lam is None:
        raise ValueError("lam is required with two views (TDA)")
    if options.p < 1:
        raise ValueError(f"p must be >= 1, got {options.p}")
    B, H, Tq, d = q1.shape
    Hkv, Tk = k1.shape[1], k1.shape[2]
    if H % Hkv:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Hkv})")
    if Tq > Tk:
        raise ValueError(f"more queries ({Tq}) than keys ({Tk})")
    qs, ks, vv = _prepare(q1, k1, q2, k2, v, options.normalize)
    compute, device = qs[0].dtype, qs[0].device
    beta_t = _per_head(beta, H, compute, device)
    lam_t = _per_head(lam if two_views else 0.0, H, compute, device)
    with torch.autocast(device.type, enabled=False):
        out = _ThresholdAttention.apply(lam_t, beta_t, vv, float(options.p), float(options.scale), options.causal,
                                        *qs, *ks)
    return out.to(q1.dtype)


def _prepare(q1, k1, q2, k2, v, normalize: bool):
    """Inputs in the compute dtype (float32, or float64 for float64 inputs), q/k L2-normalised when
    asked, keys and values repeated to the query heads (autograd sums the repeats' gradients)."""
    compute = torch.float64 if q1.dtype == torch.float64 else torch.float32
    groups = q1.shape[1] // k1.shape[1]

    def cast(x: torch.Tensor, is_kv: bool, norm: bool) -> torch.Tensor:
        x = x.to(compute)
        if norm:
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(compute).tiny)
        return x.repeat_interleave(groups, dim=1) if is_kv and groups > 1 else x

    qs = [cast(q, False, normalize) for q in (q1, q2) if q is not None]
    ks = [cast(k, True, normalize) for k in (k1, k2) if k is not None]
    vv = cast(v, True, False) if v is not None else None
    return qs, ks, vv


def _per_head(x: float | torch.Tensor, H: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A scalar or per-head parameter as a (H,) tensor that keeps its autograd history."""
    if not isinstance(x, torch.Tensor):
        return torch.full((H,), float(x), dtype=dtype, device=device)
    if x.numel() not in (1, H):
        raise ValueError(f"expected a scalar or {H} per-head values, got shape {tuple(x.shape)}")
    return x.to(dtype=dtype, device=device).reshape(-1).expand(H)


def _threshold_offsets(beta: torch.Tensor, positions: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """g_i = sqrt(2 ln(pos_i + 1) / d) (rows,) and τ = β g (H, rows)."""
    g = torch.sqrt(2.0 * torch.log1p(positions.to(beta.dtype)) / d)
    return g, beta[:, None] * g[None, :]


def _row_blocks(B: int, H: int, Tq: int, Tk: int) -> int:
    return max(1, min(Tq, SLAB_ELEMENTS // max(1, B * H * Tk)))


class _ThresholdAttention(torch.autograd.Function):
    """Blocked forward and recomputing backward over already-normalised, head-expanded inputs."""

    @staticmethod
    def forward(ctx, lam, beta, v, p, scale, causal, *qk):
        views = len(qk) // 2
        qs, ks = qk[:views], qk[views:]
        B, H, Tq, d = qs[0].shape
        Tk = ks[0].shape[2]
        offset = Tk - Tq
        out = v.new_empty(B, H, Tq, v.shape[-1])
        rows = _row_blocks(B, H, Tq, Tk)
        for start in range(0, Tq, rows):
            stop = min(Tq, start + rows)
            n_keys = stop + offset if causal else Tk
            maps = _block_maps(qs, ks, lam, beta, p, scale, causal, start, stop, offset, n_keys)
            out[:, :, start:stop] = maps.combined @ v[:, :, :n_keys]
        ctx.save_for_backward(lam, beta, v, *qk)
        ctx.config = (views, p, scale, causal)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):  # the compiled backward is traced inside the region
            lam, beta, v, *qk = ctx.saved_tensors
            views, p, scale, causal = ctx.config
            qs, ks = qk[:views], qk[views:]
            B, H, Tq, d = qs[0].shape
            Tk = ks[0].shape[2]
            offset = Tk - Tq
            grad_out = grad_out.to(v.dtype)
            dqs = [torch.zeros_like(q) for q in qs]
            dks = [torch.zeros_like(k) for k in ks]
            dv = torch.zeros_like(v)
            dlam = torch.zeros_like(lam)
            dbeta = torch.zeros_like(beta)
            rows = _row_blocks(B, H, Tq, Tk)
            for start in range(0, Tq, rows):
                stop = min(Tq, start + rows)
                n_keys = stop + offset if causal else Tk
                maps = _block_maps(qs, ks, lam, beta, p, scale, causal, start, stop, offset, n_keys)
                g_out = grad_out[:, :, start:stop]
                dA = g_out @ v[:, :, :n_keys].transpose(-1, -2)            # (B, H, rows, keys), shared by views
                dv[:, :, :n_keys] += maps.combined.transpose(-1, -2) @ g_out
                dU_sum = torch.zeros_like(dA)
                for view in range(views):
                    sign = 1.0 if view == 0 else -lam[None, :, None, None]
                    dU = sign * maps.slope[view] * dA                      # ∂L/∂u_ij
                    dU_sum += dU
                    dS = dU * scale
                    dqs[view][:, :, start:stop] += dS @ ks[view][:, :, :n_keys]
                    dks[view][:, :, :n_keys] += dS.transpose(-1, -2) @ qs[view][:, :, start:stop]
                if views == 2:
                    dlam -= (dA * maps.rectified[1]).sum(dim=(0, 2, 3))
                # u = s·scale − β g_i, so ∂L/∂β = −Σ_i g_i Σ_j ∂L/∂u_ij
                dbeta -= (dU_sum.sum(dim=(0, 3)) * maps.g[None, :]).sum(dim=1)
        return (dlam, dbeta, dv, None, None, None, *dqs, *dks)


class _BlockMaps(NamedTuple):
    """Attention maps of one block of query rows."""

    rectified: list[torch.Tensor]  # per view: a = relu(u)^p, (B, H, rows, keys)
    slope: list[torch.Tensor]      # per view: da/du = p relu(u)^(p-1), 0 where masked
    combined: torch.Tensor         # a¹ − λ a² (two views) or a
    g: torch.Tensor                # sqrt(2 ln(pos + 1) / d) per row


def _block_maps(qs, ks, lam, beta, p, scale, causal, start, stop, offset, n_keys) -> _BlockMaps:
    d = qs[0].shape[-1]
    device = qs[0].device
    positions = torch.arange(start + offset, stop + offset, device=device)
    g, tau = _threshold_offsets(beta, positions, d)
    keep = None
    if causal:
        keep = torch.arange(n_keys, device=device)[None, :] <= positions[:, None]
    rectified, slope = [], []
    for q, k in zip(qs, ks):
        u = (q[:, :, start:stop] @ k[:, :, :n_keys].transpose(-1, -2)) * scale - tau[None, :, :, None]
        positive = u > 0
        if keep is not None:
            positive = positive & keep
        u = torch.where(positive, u, torch.zeros((), dtype=u.dtype, device=device))
        if p == 1.0:
            rectified.append(u)
            slope.append(positive.to(u.dtype))
        elif p == 2.0:
            rectified.append(u * u)
            slope.append(2.0 * u)
        else:
            rectified.append(u.pow(p))
            slope.append(p * u.pow(p - 1.0))
    combined = rectified[0]
    if len(rectified) == 2:
        combined = combined - lam[None, :, None, None] * rectified[1]
    return _BlockMaps(rectified, slope, combined, g)


def attention_weights(
    q1: torch.Tensor,
    k1: torch.Tensor,
    q2: torch.Tensor | None,
    k2: torch.Tensor | None,
    lam: float | torch.Tensor | None,
    beta: float | torch.Tensor,
    options: ThresholdOptions,
    rows: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The exact attention maps of a block of query rows, for analysis (no gradient).

    Shapes as for ``threshold_attention_reference``; ``rows=(start, stop)`` picks query rows (all by
    default). Returns {"view1": a¹, "view2": a² (two views only), "combined": a¹ − λa² or a¹}, each
    (B, H, stop − start, keys up to the last row's position), in float32 (float64 for float64 inputs).
    """
    two_views = q2 is not None
    B, H, Tq, d = q1.shape
    Tk = k1.shape[2]
    start, stop = rows if rows is not None else (0, Tq)
    offset = Tk - Tq
    n_keys = stop + offset if options.causal else Tk
    with torch.no_grad():
        qs, ks, _ = _prepare(q1, k1, q2, k2, None, options.normalize)
        compute, device = qs[0].dtype, qs[0].device
        maps = _block_maps(qs, ks, _per_head(lam if two_views else 0.0, H, compute, device),
                           _per_head(beta, H, compute, device), float(options.p), float(options.scale),
                           options.causal, start, stop, offset, n_keys)
    out = {"view1": maps.rectified[0], "combined": maps.combined}
    if two_views:
        out["view2"] = maps.rectified[1]
    return out
