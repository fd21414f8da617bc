"""The internal entry points of the Triton path, ``threshold_attention_triton`` and (TDA's two views as the even and
odd heads of one q and one k) ``paired_threshold_attention_triton``, and their autograd function. Same semantics as
``reference.threshold_attention_reference``. The calls they make without autograd are calls.py's (which kernels.replay
records)."""

from typing import Optional, Union

import torch

from .. import replay
from . import calls
from .options import ThresholdOptions
from .validation import check_inputs


class ThresholdAttentionFunction(torch.autograd.Function):
    """Autograd over the kernels. lam, beta arrive as (H,) fp32 tensors (lam None for one view). With ``record`` the
    forward's record of occupied tiles is saved for the backward, which then visits only those tiles; ``skip`` lets
    the forward leave out the products of empty tiles (tiles.forward_skips_products).

    With ``paired`` q1 and k1 are whole paired-layout tensors (B, 2H, ·, d) holding both views (pair_views; q2, k2
    None), and their gradients are made whole: the kernels write each view's gradient into its heads of one tensor.
    Given the views as separate inputs instead, autograd would make each view's gradient a zero-filled tensor of the
    whole's size with the view copied in, then add the two (five passes over memory, per tensor and call)."""

    @staticmethod
    def forward(ctx, q1, k1, v, q2, k2, lam, beta, options: ThresholdOptions, record: bool, skip: bool,
                paired: bool):
        ctx.paired, ctx.options = paired, options
        if paired:
            out, rq1, rk1, rq2, rk2, rec = calls.paired_forward(q1, k1, v, lam, beta, options, record, skip)
        else:
            out, rq1, rk1, rq2, rk2, rec = calls.forward(q1, k1, v, q2, k2, lam, beta, options, record, skip)
        ctx.save_for_backward(q1, k1, v, q2, k2, lam, beta, rq1, rk1, rq2, rk2, rec)
        return out

    @staticmethod
    def backward(ctx, do):
        q1, k1, v, q2, k2, lam, beta, rq1, rk1, rq2, rk2, rec = ctx.saved_tensors
        two = ctx.paired or q2 is not None
        need_dlam = two and ctx.needs_input_grad[5]
        need_dbeta = ctx.needs_input_grad[6]
        deterministic = torch.are_deterministic_algorithms_enabled()
        if ctx.paired:
            dq1, dk1, dv, dlam, dbeta = calls.paired_backward(do, q1, k1, v, lam, beta, rq1, rk1, rq2, rk2, rec,
                                                              ctx.options, need_dlam, need_dbeta, deterministic)
            dq2 = dk2 = None
        else:
            dq1, dk1, dv, dq2, dk2, dlam, dbeta = calls.backward(
                do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta, ctx.options, need_dlam, need_dbeta,
                deterministic)
        return (dq1, dk1, dv, dq2 if two else None, dk2 if two else None,
                dlam if need_dlam else None, dbeta if need_dbeta else None, None, None, None, None)


def threshold_attention_triton(
    q1: torch.Tensor,
    k1: torch.Tensor,
    v: torch.Tensor,
    q2: Optional[torch.Tensor] = None,
    k2: Optional[torch.Tensor] = None,
    *,
    lam: Optional[Union[float, torch.Tensor]] = None,
    beta: Union[float, torch.Tensor] = 1.0,
    options: ThresholdOptions = ThresholdOptions(),
    skip_empty: Optional[bool] = None,
) -> torch.Tensor:
    """Threshold attention on the fused kernels (SPEC §1, §3).

    Args:
        q1, q2: queries (B, H, Tq, d); giving q2 and k2 selects TDA (two views sharing v).
        k1, k2: keys (B, Hkv, Tk, d), Hkv dividing H (grouped key/value heads), Tq <= Tk; query row i
            sits at absolute position i + Tk - Tq, which its threshold uses.
        v: values (B, Hkv, Tk, dv); dv may differ from d. d, dv in [16, 256].
        lam: TDA's lambda, already transformed (clamp/sigmoid are the caller's): float, 0-d or (H,)
            tensor; gets a gradient if it requires one. None for one view.
        beta: threshold strength, float, 0-d tensor (any device) or (H,) tensor; gets a gradient if it
            requires one.
        options: p, normalize, scale, causal (ThresholdOptions). With ``normalize`` the kernels L2-normalise q and k
            inside, scaling fp32 scores rather than rounding normalised vectors.

        skip_empty: exact tile skipping (README.md in this folder, "Exact skipping"): the forward records which tiles
            hold a surviving weight (when a gradient will be asked for) and the backward visits only those; None takes
            tiles.skip_empty_tiles() (on), False computes every tile (for A/B timing). The results are the same either
            way.

    Any strides are accepted without copies; bf16, fp16 and fp32 (fp32 uses exact fp32 products).
    Under ``torch.use_deterministic_algorithms(True)`` the backward runs without atomics and is
    bit-identical from run to run. Returns (B, H, Tq, dv) in q1's dtype.
    """
    check_inputs(q1, k1, v, q2, k2, lam, beta, options)
    return _apply(q1, k1, v, q2, k2, lam, beta, options, skip_empty, paired=False)


def paired_threshold_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    lam: Union[float, torch.Tensor],
    beta: Union[float, torch.Tensor] = 1.0,
    options: ThresholdOptions = ThresholdOptions(),
    skip_empty: Optional[bool] = None,
) -> torch.Tensor:
    """TDA in the paired head layout: ``threshold_attention_triton(q1, k1, v, q2, k2, ...)`` with (q1, q2), (k1, k2)
    the even and odd heads of q (B, 2H, Tq, d) and k (B, 2Hkv, Tk, d) (pair_views), v (B, Hkv, Tk, dv): the same
    output, and the gradients of q and k written whole by the kernels (ThresholdAttentionFunction's ``paired``).
    With kernels.replay on, a kind of call it has recorded is replayed by its C++ engine instead."""
    if replay.ENABLED:
        out = replay.paired(q, k, v, lam, beta, options, skip_empty)
        if out is not None:
            return out
    calls.check_paired(q, k, v, lam, beta, options)
    return _apply(q, k, v, None, None, lam, beta, options, skip_empty, paired=True)


def _apply(q1, k1, v, q2, k2, lam, beta, options: ThresholdOptions, skip_empty: Optional[bool],
           paired: bool) -> torch.Tensor:
    """ThresholdAttentionFunction on checked inputs (prepared's λ, β, record and skip)."""
    lam_h, beta_h, record, skip = calls.prepared(q1, k1, v, q2, k2, lam, beta, skip_empty, paired)
    return ThresholdAttentionFunction.apply(q1, k1, v, q2, k2, lam_h, beta_h, options, record, skip, paired)
