"""Host-side launchers of the sigmoid-attention kernels (no autograd, no input checks: autograd.py and validation in
kernels/score_ops/launch.py come first).

Shapes: q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv), any strides; bias (H,) fp32 on the inputs' device.
Outputs and gradients are allocated in their inputs' memory layout (kernels.common.new_rows_like). Every kernel is
launched through kernels.fast_launch, or, given a ``CompileTarget``, only compiled; the parts are named ``fwd``,
``dkdv``, ``dq`` and ``dq_finish``. The keyword options (tiles, σ's evaluation, the bias folded into the scores, the
dQ path, the Gluon backward) exist for the benchmark's sweep and the tests; the defaults are tiles.py's.

The forward can run as the one-view ops' Gluon kernel on Hopper (kernels/score_ops/gluon_forward.py, part
``gluon_fwd``) where score_gluon.gluon_forward_fits, but only when asked (``gluon=True``, or
score_gluon.GLUON_FORWARD["sigmoid"]): timed, forward+backward with it was no faster (BENCHMARKS.md, "σ's ex2 operand,
the scale folded into the exponent, …").

On Hopper the backward is the one-view ops' Gluon kernel (kernels/score_ops/gluon_backward.py, part ``gluon_bwd``)
wherever score_gluon.gluon_backward_fits: 16-bit inputs, one key/value head per query head, d = 64, dv a power of two
from 16 to 128, rows the copy engine can read, outside the deterministic mode; if it cannot compile or launch, a
warning says so once and the Triton kernels take over.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import common
from ..score_ops import gluon as score_gluon
from ..common import CompileTarget, cdiv, padded
from ..score_ops.launch import LOG2E, TileConfig, compute_constexprs, finish_dq, launch_tiled
from .tiles import backward_configs, dq_configs, forward_configs, sigmoid_mode
from .triton_backward import sigmoid_dkdv_kernel, sigmoid_dq_kernel
from .triton_forward import sigmoid_fwd_kernel

_chosen: dict[tuple, TileConfig] = {}


def _constexprs(q: torch.Tensor, v: torch.Tensor, causal: bool, mode: Optional[int]) -> dict:
    d, dv = q.shape[-1], v.shape[-1]
    return dict(HEAD_D=d, HEAD_DV=dv, BLOCK_D=padded(d), BLOCK_DV=padded(dv), CAUSAL=causal,
                SIGMOID_MODE=sigmoid_mode(q.element_size()) if mode is None else mode, **compute_constexprs(q.dtype))


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float, causal: bool, *,
            tile: Optional[TileConfig] = None, mode: Optional[int] = None, fold_bias: bool = False,
            gluon: Optional[bool] = None, target: Optional[CompileTarget] = None) -> torch.Tensor:
    """Attention output (B, H, Tq, dv) in q's dtype, laid out like q. ``gluon``: the Gluon forward where it fits
    (None: if score_gluon.GLUON_FORWARD["sigmoid"] and no Triton tile, σ mode or folded bias is asked for; False:
    never; True: where it fits)."""
    B, H, Tq, d = q.shape
    Hkv, Tk, dv = k.shape[1], k.shape[2], v.shape[-1]
    out = common.new_rows_like(q, dv)
    if gluon is None:
        gluon = score_gluon.GLUON_FORWARD["sigmoid"] and tile is None and mode is None and not fold_bias
    if gluon and score_gluon.forward("sigmoid", q, k, v, out, scale, causal, param=bias, target=target):
        return out
    consts = dict(_constexprs(q, v, causal, mode), FOLD_BIAS=fold_bias)

    def grid(cfg: TileConfig) -> tuple:
        return (cdiv(Tq, cfg.block_m) * B * H,)

    def args_for(cfg: TileConfig) -> tuple:
        return (q, k, v, out, bias, *q.stride(), *k.stride(), *v.stride(), *out.stride(), H, H // Hkv, Tq, Tk, B * H,
                cdiv(Tq, cfg.block_m), float(scale) * LOG2E)

    launch_tiled("fwd", sigmoid_fwd_kernel, grid, args_for, forward_configs(d, dv, q.element_size()), consts, tile,
                 target, _chosen, ("fwd", q.dtype, tuple(consts.items())))
    return out


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
             causal: bool, need_dbias: bool, deterministic: bool, *, atomic_dq: bool = True,
             dkdv_tile: Optional[TileConfig] = None, dq_tile: Optional[TileConfig] = None, mode: Optional[int] = None,
             db_by_dot: bool = True, gluon: Optional[bool] = None, gluon_tile: Optional[tuple[int, int]] = None,
             target: Optional[CompileTarget] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                              Optional[torch.Tensor]]:
    """Gradients (dq, dk, dv, dbias) for dO = do (B, H, Tq, dv): dq, dk, dv in the inputs' dtype and layouts, dbias
    (H,) fp32 (None unless ``need_dbias``). dQ is added by atomics inside the dK/dV kernel unless ``deterministic``
    (or not ``atomic_dq``), when the atomic-free dQ kernel computes it (the Gluon backward adds it by the copy
    engine). ``db_by_dot``: db's sum over each tile's queries as a small product on the tensor cores rather than a
    reduction across warps (triton_backward.py).
    ``gluon``: the Gluon backward where it fits (None: unless a Triton tile or path is asked for; False: never;
    True: where it fits); ``gluon_tile``: its (query rows per tile, ring stages), else score_gluon.default_tile."""
    B, H, Tq, d = q.shape
    Hkv, Tk, dv_dim = k.shape[1], k.shape[2], v.shape[-1]
    dev = q.device
    atomic = atomic_dq and not deterministic
    dk = common.new_rows_like(k, d)
    dv = common.new_rows_like(v, dv_dim)
    dq = common.new_rows_like(q, d)
    dq_acc = torch.zeros((B, H, Tq, d), dtype=torch.float32, device=dev) if atomic else dq
    if gluon is None:
        gluon = dkdv_tile is None and mode is None and atomic_dq and db_by_dot
    if gluon and atomic:
        ran, dbias = score_gluon.backward("sigmoid", do, q, k, v, dq, dk, dv, dq_acc, scale, causal, param=bias,
                                          need_param_grad=need_dbias, tile=gluon_tile, target=target)
        if ran:
            return dq, dk, dv, dbias
    consts = _constexprs(q, v, causal, mode)
    partials: list[Optional[torch.Tensor]] = [None]
    qk_scale2 = float(scale) * LOG2E

    def grid(cfg: TileConfig) -> tuple:
        return (cdiv(Tk, cfg.block_n) * B * Hkv,)

    def args_for(cfg: TileConfig) -> tuple:
        nb = cdiv(Tk, cfg.block_n)
        partials[0] = common.new_output((B, H, nb), torch.float32, dev) if need_dbias else dq_acc
        return (q, k, v, do, bias, dk, dv, dq_acc, partials[0], *q.stride(), *k.stride(), *v.stride(), *do.stride(),
                *dk.stride()[:3], *dv.stride()[:3], H, H // Hkv, Tq, Tk, B * Hkv, nb, qk_scale2, float(scale))

    dkdv_consts = dict(consts, DQ_ATOMIC=atomic, BIAS_GRAD=need_dbias, DB_BY_DOT=db_by_dot)
    launch_tiled("dkdv", sigmoid_dkdv_kernel, grid, args_for, backward_configs(d, dv_dim, q.element_size()),
                 dkdv_consts, dkdv_tile, target, _chosen, ("dkdv", q.dtype, tuple(dkdv_consts.items())))
    if atomic:
        finish_dq(dq_acc, dq, scale, target)
    else:
        def dq_grid(cfg: TileConfig) -> tuple:
            return (cdiv(Tq, cfg.block_m) * B * H,)

        def dq_args(cfg: TileConfig) -> tuple:
            return (q, k, v, do, bias, dq, *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride()[:3],
                    H, H // Hkv, Tq, Tk, B * H, cdiv(Tq, cfg.block_m), qk_scale2, float(scale))

        launch_tiled("dq", sigmoid_dq_kernel, dq_grid, dq_args, dq_configs(d, dv_dim, q.element_size()), consts,
                     dq_tile, target, _chosen, ("dq", q.dtype, tuple(consts.items())))
    dbias = partials[0].sum(dim=(0, 2)) if need_dbias else None
    return dq, dk, dv, dbias
