"""The Triton path's entry point, ``sink_softmax_attention_triton``, and its autograd function (the kernels are the
row-normalised ones of kernels/softpick/, in their sink mode). Same semantics as
``reference.sink_softmax_attention_reference``."""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..inputs import as_head_vector, check_head_param
from ..score_ops.launch import check_inputs
from ..softpick import launch
from . import custom_ops  # noqa: F401  (registers torch.ops.sink_free_kernels.sink_softmax_*)


class SinkSoftmaxAttentionFunction(torch.autograd.Function):
    """Autograd over the kernels; the sink logits arrive as an (H,) fp32 tensor. While torch.compile traces, the
    custom ops; in eager mode the launchers directly."""

    @staticmethod
    def forward(ctx, q, k, v, sink, scale: float, causal: bool):
        if torch.compiler.is_compiling():
            out, lse = torch.ops.sink_free_kernels.sink_softmax_attention_fwd(q, k, v, sink, scale, causal)
        else:
            out, lse = launch.forward(q, k, v, sink, scale, 0.0, causal)
        ctx.save_for_backward(q, k, v, sink, out, lse)
        ctx.config = (scale, causal)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, sink, out, lse = ctx.saved_tensors
        scale, causal = ctx.config
        need_dsink = ctx.needs_input_grad[3]
        deterministic = torch.are_deterministic_algorithms_enabled()
        if torch.compiler.is_compiling():
            dq, dk, dv, dsink = torch.ops.sink_free_kernels.sink_softmax_attention_bwd(
                do, q, k, v, out, lse, sink, scale, causal, need_dsink, deterministic)
        else:
            dq, dk, dv, dsink = launch.backward(do, q, k, v, out, lse, sink, scale, causal, need_dsink, deterministic)
        return dq, dk, dv, dsink if need_dsink else None, None, None


def sink_softmax_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink: Union[float, torch.Tensor],
                                  *, scale: Optional[float] = None, causal: bool = True) -> torch.Tensor:
    """Softmax attention with a sink logit per head on the fused kernels: o_i = Σ_j e^x_ij v_j / (e^s_h + Σ_j e^x_ij),
    x_ij = scale·q_i·k_j over j ≤ i + Tk − Tq (all keys without ``causal``).

    Args:
        q: (B, H, Tq, d); k: (B, Hkv, Tk, d), Hkv dividing H, Tq ≤ Tk; v: (B, Hkv, Tk, dv). d, dv in [16, 256];
            bf16, fp16 or fp32 (fp32 with exact fp32 products); any strides, no copies.
        sink: s_h, a float, a 0-d tensor or an (H,) tensor; gets its gradient if it requires one.
        scale: on q·k, 1/√d by default.

    Under ``torch.use_deterministic_algorithms(True)`` the backward runs without atomics and is bit-identical from
    run to run. Returns (B, H, Tq, dv) in q's dtype, laid out like q.
    """
    check_inputs(q, k, v, scale, causal)
    check_head_param(sink, q.shape[1], "sink")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return SinkSoftmaxAttentionFunction.apply(q, k, v, as_head_vector(sink, q.shape[1], q.device), scale, causal)
