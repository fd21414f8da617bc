"""The threshold kernels' calls without autograd: the forward and backward (the custom ops while torch.compile traces,
the launcher eagerly), the paired layout's forward and backward on q and k whole, and the inputs' checks and
preparation for a paired call. Below both the autograd function (autograd.py) and kernels.replay, which records and
replays these same calls."""

from typing import Optional

import torch

from .. import common
from . import custom_ops, launch  # noqa: F401  (custom_ops registers torch.ops.tda_kernels.*)
from .options import ThresholdOptions
from .tiles import skipping
from ..inputs import as_head_vector, pair_views
from .validation import check_inputs, check_pairs


def forward(q1, k1, v, q2, k2, lam, beta, options: ThresholdOptions, record: bool, skip: bool) -> tuple:
    """The custom op while torch.compile traces; the launcher directly in eager mode, where the custom op's dispatch
    would only add host overhead."""
    if torch.compiler.is_compiling():
        return torch.ops.tda_kernels.threshold_attention_fwd(q1, k1, v, q2, k2, lam, beta, *options.flat(), record,
                                                             skip)
    return launch.forward(q1, k1, v, q2, k2, lam, beta, options, record=record, skip_products=skip)


def backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta, options: ThresholdOptions,
             need_dlam: bool, need_dbeta: bool, deterministic: bool, into: Optional[tuple] = None) -> tuple:
    """As forward; ``into`` as launch.backward's (the custom op returns new tensors, copied into ``into``:
    torch.compile fuses the copies)."""
    if torch.compiler.is_compiling():
        grads = torch.ops.tda_kernels.threshold_attention_bwd(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam,
                                                              beta, *options.flat(), need_dlam, need_dbeta,
                                                              deterministic)
        if into is None:
            return grads
        dq1, dk1, dv, dq2, dk2, dlam, dbeta = grads
        for target, grad in zip(into, (dq1, dk1, dq2, dk2)):
            if target is not None:
                target.copy_(grad)
        return (into[0], into[1], dv, into[2], into[3], dlam, dbeta)
    return launch.backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta, options, need_dlam, need_dbeta,
                           deterministic, into=into)


def paired_forward(q, k, v, lam, beta, options: ThresholdOptions, record: bool, skip: bool) -> tuple:
    """The paired forward on q (B, 2H, Tq, d) and k (B, 2Hkv, Tk, d) whole: (out, rq1, rk1, rq2, rk2, rec) as
    launch.forward's. The autograd function's forward, and what kernels.replay records."""
    (q1, q2), (k1, k2) = pair_views(q), pair_views(k)
    return forward(q1, k1, v, q2, k2, lam, beta, options, record, skip)


def paired_backward(do, q, k, v, lam, beta, rq1, rk1, rq2, rk2, rec, options: ThresholdOptions, need_dlam: bool,
                    need_dbeta: bool, deterministic: bool) -> tuple:
    """The paired backward: (dq, dk, dv, dlam, dbeta), dq and dk whole, each view's gradient written by the kernels
    into its heads. The autograd function's backward, and what kernels.replay records."""
    (q1, q2), (k1, k2) = pair_views(q), pair_views(k)
    dq, dk = common.new_rows_like(q, q.shape[-1]), common.new_rows_like(k, k.shape[-1])
    (dq1, dq2), (dk1, dk2) = pair_views(dq), pair_views(dk)
    _, _, dv, _, _, dlam, dbeta = backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta, options,
                                           need_dlam, need_dbeta, deterministic, into=(dq1, dk1, dq2, dk2))
    return dq, dk, dv, dlam, dbeta


def check_paired(q, k, v, lam, beta, options: ThresholdOptions) -> None:
    """paired_threshold_attention_triton's input checks."""
    check_pairs(q, k)
    (q1, q2), (k1, k2) = pair_views(q), pair_views(k)
    check_inputs(q1, k1, v, q2, k2, lam, beta, options)


def prepared(q1, k1, v, q2, k2, lam, beta, skip_empty: Optional[bool], paired: bool) -> tuple:
    """λ and β as (H,) tensors, whether the forward makes the record (only where a gradient will be asked for) and
    whether tiles are skipped: (lam_h, beta_h, record, skip)."""
    two = paired or q2 is not None
    H = q1.shape[1] // 2 if paired else q1.shape[1]
    lam_h = as_head_vector(lam, H, q1.device) if two else None
    beta_h = as_head_vector(beta, H, q1.device)
    skip = skipping(skip_empty)
    # the record serves the backward only: none is made where no gradient will be asked for (evaluation, no_grad)
    record = skip and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q1, k1, v, q2, k2, lam_h, beta_h))
    return lam_h, beta_h, record, skip
