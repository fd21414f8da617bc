"""Host-side launchers of the row-normalised kernels: softpick and softmax with a sink logit (no autograd, no input
checks: the ops' autograd.py and kernels/score_ops/launch.py come first).

Shapes: q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv), any strides; ``sink`` (H,) fp32 (the sink logits)
or None for softpick. Outputs and gradients are allocated in their inputs' layouts (kernels.common.new_rows_like).
Every kernel is launched through kernels.fast_launch, or, given a ``CompileTarget``, only compiled; the parts are
named ``fwd``, ``delta``, ``dkdv``, ``dq`` and ``dq_finish`` (``gluon_fwd``: the one-view ops' Gluon forward, taken only
when asked, as sigmoid's; ``gluon_bwd``: the Gluon backward, which on Hopper takes
the place of ``dkdv`` in the sink mode wherever kernels/score_gluon.gluon_backward_fits, outside the deterministic
mode; softpick takes it only when asked, ``gluon=True``).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import common
from ..score_ops import gluon as score_gluon
from ..common import CompileTarget, cdiv, interpreting, padded
from ..score_ops.launch import LOG2E, TileConfig, compute_constexprs, finish_dq, launch_tiled, run
from .tiles import backward_configs, dq_configs, forward_configs
from .triton_backward import normalized_dkdv_kernel, normalized_dq_kernel, row_delta_kernel
from .triton_forward import normalized_fwd_kernel

_chosen: dict[tuple, TileConfig] = {}
# Whether softpick (no sink) takes the Gluon backward by default, as the sink mode does: yes since its masks are applied
# only where needed (level with the Triton backward at 8k tokens, 4-8% faster at 16k on an H100: BENCHMARKS.md, "Fewer
# instructions per tile in the score ops' Gluon backward"); False gives the Triton kernels.
SOFTPICK_GLUON = True


def _constexprs(q: torch.Tensor, v: torch.Tensor, causal: bool, sink: Optional[torch.Tensor]) -> dict:
    d, dv = q.shape[-1], v.shape[-1]
    return dict(HEAD_D=d, HEAD_DV=dv, BLOCK_D=padded(d), BLOCK_DV=padded(dv), CAUSAL=causal,
                MODE=0 if sink is None else 1, **compute_constexprs(q.dtype))


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink: Optional[torch.Tensor], scale: float, eps: float,
            causal: bool, *, tile: Optional[TileConfig] = None, gluon: Optional[bool] = None,
            target: Optional[CompileTarget] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): the output (B, H, Tq, dv) in q's dtype laid out like q, and L (B, H, Tq) fp32, each row's log2
    of its unshifted denominator (what the backward rebuilds the weights from). ``gluon``: the one-view ops' Gluon
    forward (kernels/score_ops/gluon_forward.py) where it fits (None: if the mode's score_gluon.GLUON_FORWARD and no
    Triton tile is asked for; False: never; True: where it fits)."""
    B, H, Tq, d = q.shape
    Hkv, Tk, dv = k.shape[1], k.shape[2], v.shape[-1]
    out = common.new_rows_like(q, dv)
    lse = common.new_output((B, H, Tq), torch.float32, q.device)
    mode = "softpick" if sink is None else "sink"
    if gluon is None:
        gluon = score_gluon.GLUON_FORWARD[mode] and tile is None
    if gluon and score_gluon.forward(mode, q, k, v, out, scale, causal, param=sink, lse=lse, eps=eps, target=target):
        return out, lse
    consts = dict(_constexprs(q, v, causal, sink), FOLD_SCALE=scale > 0)
    sink_ = sink if sink is not None else lse

    def grid(cfg: TileConfig) -> tuple:
        return (cdiv(Tq, cfg.block_m) * B * H,)

    def args_for(cfg: TileConfig) -> tuple:
        return (q, k, v, out, lse, sink_, *q.stride(), *k.stride(), *v.stride(), *out.stride(), H, H // Hkv, Tq, Tk,
                B * H, cdiv(Tq, cfg.block_m), float(scale) * LOG2E, float(eps))

    launch_tiled("fwd", normalized_fwd_kernel, grid, args_for,
                 forward_configs(d, dv, q.element_size(), sink is not None), consts, tile, target, _chosen,
                 ("fwd", q.dtype, tuple(consts.items())))
    return out, lse


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
             lse: torch.Tensor, sink: Optional[torch.Tensor], scale: float, causal: bool, need_dsink: bool,
             deterministic: bool, *, atomic_dq: bool = True, dkdv_tile: Optional[TileConfig] = None,
             dq_tile: Optional[TileConfig] = None, gluon: Optional[bool] = None,
             gluon_tile: Optional[tuple[int, int]] = None, target: Optional[CompileTarget] = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Gradients (dq, dk, dv, dsink) for dO = do (B, H, Tq, dv): dq, dk, dv in the inputs' dtype and layouts, dsink
    (H,) fp32 (None unless ``need_dsink``, which needs ``sink``). dQ is added by atomics inside the dK/dV kernel
    unless ``deterministic`` (or not ``atomic_dq``), when the atomic-free dQ kernel computes it (the Gluon backward
    adds it by the copy engine). dsink is the sum, in a fixed order, of the dK/dV kernel's per-key-block shares,
    which it takes from the fp32 weights rather than from the rounded output (triton_backward.py says why).
    ``gluon``: the Gluon backward (kernels/score_ops/gluon_backward.py) where it fits (None: for the sink mode, and
    softpick if SOFTPICK_GLUON, unless a Triton tile or path is asked for; False: never; True: where it fits);
    ``gluon_tile``: its (query rows per tile, ring stages), else score_gluon.default_tile."""
    B, H, Tq, d = q.shape
    Hkv, Tk, dv_dim = k.shape[1], k.shape[2], v.shape[-1]
    dev = q.device
    need_dsink = need_dsink and sink is not None
    atomic = atomic_dq and not deterministic

    block = 32 if interpreting() else 64
    nm = cdiv(Tq, block)
    delta = common.new_output((B, H, Tq), torch.float32, dev)
    run("delta", row_delta_kernel, (B * H * nm,), (out, do, delta, *out.stride(), *do.stride(), H, Tq, nm),
        dict(HEAD_DV=dv_dim, BLOCK_M=block, BLOCK_DV=padded(dv_dim)), target)

    dk = common.new_rows_like(k, d)
    dv = common.new_rows_like(v, dv_dim)
    dq = common.new_rows_like(q, d)
    dq_acc = torch.zeros((B, H, Tq, d), dtype=torch.float32, device=dev) if atomic else dq

    if gluon is None:
        gluon = dkdv_tile is None and atomic_dq and (sink is not None or SOFTPICK_GLUON)
    if gluon and atomic:
        ran, dsink = score_gluon.backward("softpick" if sink is None else "sink", do, q, k, v, dq, dk, dv, dq_acc,
                                          scale, causal, param=sink, lse=lse, delta=delta, need_param_grad=need_dsink,
                                          tile=gluon_tile, target=target)
        if ran:
            return dq, dk, dv, dsink
    consts = _constexprs(q, v, causal, sink)
    qk_scale2 = float(scale) * LOG2E

    sink_part = {}  # the (B, H, key blocks) shares of ds_h, sized by the tile launched

    def grid(cfg: TileConfig) -> tuple:
        return (cdiv(Tk, cfg.block_n) * B * Hkv,)

    def args_for(cfg: TileConfig) -> tuple:
        if need_dsink:
            sink_part["ds"] = common.new_output((B, H, cdiv(Tk, cfg.block_n)), torch.float32, dev)
        return (q, k, v, do, lse, delta, dk, dv, dq_acc, sink if need_dsink else lse, sink_part.get("ds", lse),
                *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride()[:3], *dv.stride()[:3], H, H // Hkv,
                Tq, Tk, B * Hkv, qk_scale2, float(scale))

    dkdv_consts = dict(consts, DQ_ATOMIC=atomic, SINK_GRAD=need_dsink)
    launch_tiled("dkdv", normalized_dkdv_kernel, grid, args_for, backward_configs(d, dv_dim, q.element_size()),
                 dkdv_consts, dkdv_tile, target, _chosen, ("dkdv", q.dtype, tuple(dkdv_consts.items())))
    if atomic:
        finish_dq(dq_acc, dq, scale, target)
    else:
        def dq_grid(cfg: TileConfig) -> tuple:
            return (cdiv(Tq, cfg.block_m) * B * H,)

        def dq_args(cfg: TileConfig) -> tuple:
            return (q, k, v, do, lse, delta, dq, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
                    *dq.stride()[:3], H, H // Hkv, Tq, Tk, B * H, cdiv(Tq, cfg.block_m), qk_scale2,
                    float(scale))

        launch_tiled("dq", normalized_dq_kernel, dq_grid, dq_args, dq_configs(d, dv_dim, q.element_size()), consts,
                     dq_tile, target, _chosen, ("dq", q.dtype, tuple(consts.items())))
    dsink = sink_part["ds"].sum(dim=(0, 2)) if need_dsink else None
    return dq, dk, dv, dsink
