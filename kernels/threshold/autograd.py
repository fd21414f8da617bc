"""The internal entry point of the Triton path, ``threshold_attention_triton``, and its autograd function. Same
semantics as ``reference.threshold_attention_reference``."""

from typing import Optional, Union

import torch

from . import custom_ops, launch  # noqa: F401  (custom_ops registers torch.ops.tda_kernels.*)
from .options import ThresholdOptions
from .tiles import skip_empty_tiles
from ..inputs import as_head_vector
from .validation import check_inputs


def _forward(q1, k1, v, q2, k2, lam, beta, options: ThresholdOptions, record: bool, skip: bool) -> tuple:
    """The custom op while torch.compile traces; the launcher directly in eager mode, where the custom op's dispatch
    would only add host overhead."""
    if torch.compiler.is_compiling():
        return torch.ops.tda_kernels.threshold_attention_fwd(q1, k1, v, q2, k2, lam, beta, *options.flat(), record,
                                                             skip)
    return launch.forward(q1, k1, v, q2, k2, lam, beta, options, record=record, skip_products=skip)


def _backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta, options: ThresholdOptions,
              need_dlam: bool, need_dbeta: bool, deterministic: bool) -> tuple:
    if torch.compiler.is_compiling():
        return torch.ops.tda_kernels.threshold_attention_bwd(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam,
                                                             beta, *options.flat(), need_dlam, need_dbeta,
                                                             deterministic)
    return launch.backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta, options, need_dlam, need_dbeta,
                           deterministic)


class ThresholdAttentionFunction(torch.autograd.Function):
    """Autograd over the kernels. lam, beta arrive as (H,) fp32 tensors (lam None for one view). With ``record`` the
    forward's record of occupied tiles is saved for the backward, which then visits only those tiles; ``skip`` lets
    the forward leave out the products of empty tiles (tiles.forward_skips_products)."""

    @staticmethod
    def forward(ctx, q1, k1, v, q2, k2, lam, beta, options: ThresholdOptions, record: bool, skip: bool):
        out, rq1, rk1, rq2, rk2, rec = _forward(q1, k1, v, q2, k2, lam, beta, options, record, skip)
        ctx.save_for_backward(q1, k1, v, q2, k2, lam, beta, rq1, rk1, rq2, rk2, rec)
        ctx.options = options
        return out

    @staticmethod
    def backward(ctx, do):
        q1, k1, v, q2, k2, lam, beta, rq1, rk1, rq2, rk2, rec = ctx.saved_tensors
        two = q2 is not None
        need_dlam = two and ctx.needs_input_grad[5]
        need_dbeta = ctx.needs_input_grad[6]
        dq1, dk1, dv, dq2, dk2, dlam, dbeta = _backward(
            do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, rec, lam, beta, ctx.options, need_dlam, need_dbeta,
            torch.are_deterministic_algorithms_enabled())
        return (dq1, dk1, dv, dq2 if two else None, dk2 if two else None,
                dlam if need_dlam else None, dbeta if need_dbeta else None, None, None, None)


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
    H = q1.shape[1]
    lam_h = as_head_vector(lam, H, q1.device) if q2 is not None else None
    beta_h = as_head_vector(beta, H, q1.device)
    skip = skip_empty_tiles() if skip_empty is None else bool(skip_empty)
    # the record serves the backward only: none is made where no gradient will be asked for (evaluation, no_grad)
    record = skip and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q1, k1, v, q2, k2, lam_h, beta_h))
    return ThresholdAttentionFunction.apply(q1, k1, v, q2, k2, lam_h, beta_h, options, record, skip)
