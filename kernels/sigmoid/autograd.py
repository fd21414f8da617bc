"""The Triton path's entry point, ``sigmoid_attention_triton``, and its autograd function. Same semantics as
``reference.sigmoid_attention_reference``."""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..inputs import as_head_vector, check_head_param
from ..score_ops.launch import check_inputs
from . import custom_ops, launch  # noqa: F401  (custom_ops registers torch.ops.sink_free_kernels.sigmoid_*)


class SigmoidAttentionFunction(torch.autograd.Function):
    """Autograd over the kernels; the bias arrives as an (H,) fp32 tensor. While torch.compile traces, the custom
    ops; in eager mode the launchers directly (the custom op's dispatch would only add host time)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale: float, causal: bool):
        if torch.compiler.is_compiling():
            out = torch.ops.sink_free_kernels.sigmoid_attention_fwd(q, k, v, bias, scale, causal)
        else:
            out = launch.forward(q, k, v, bias, scale, causal)
        ctx.save_for_backward(q, k, v, bias)
        ctx.config = (scale, causal)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, bias = ctx.saved_tensors
        scale, causal = ctx.config
        need_dbias = ctx.needs_input_grad[3]
        deterministic = torch.are_deterministic_algorithms_enabled()
        if torch.compiler.is_compiling():
            dq, dk, dv, dbias = torch.ops.sink_free_kernels.sigmoid_attention_bwd(
                do, q, k, v, bias, scale, causal, need_dbias, deterministic)
        else:
            dq, dk, dv, dbias = launch.backward(do, q, k, v, bias, scale, causal, need_dbias, deterministic)
        return dq, dk, dv, dbias if need_dbias else None, None, None


def sigmoid_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Union[float, torch.Tensor], *,
                             scale: Optional[float] = None, causal: bool = True) -> torch.Tensor:
    """Sigmoid attention on the fused kernels: o_i = Σ_j σ(scale·q_i·k_j + b_h) v_j over j ≤ i + Tk − Tq (all keys
    without ``causal``).

    Args:
        q: (B, H, Tq, d); k: (B, Hkv, Tk, d), Hkv dividing H, Tq ≤ Tk; v: (B, Hkv, Tk, dv). d, dv in [16, 256];
            bf16, fp16 or fp32 (fp32 with exact fp32 products); any strides, no copies.
        bias: b_h, a float, a 0-d tensor or an (H,) tensor; gets its gradient if it requires one.
        scale: on q·k, 1/√d by default.

    Under ``torch.use_deterministic_algorithms(True)`` the backward runs without atomics and is bit-identical from
    run to run. Returns (B, H, Tq, dv) in q's dtype, laid out like q.
    """
    check_inputs(q, k, v, scale, causal)
    check_head_param(bias, q.shape[1], "bias")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return SigmoidAttentionFunction.apply(q, k, v, as_head_vector(bias, q.shape[1], q.device), scale, causal)
