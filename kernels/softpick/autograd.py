"""The Triton path's entry point, ``softpick_attention_triton``, and its autograd function. Same semantics as
``reference.softpick_attention_reference``."""
from __future__ import annotations

from typing import Optional

import torch

from ..inputs import check_number
from ..score_ops.launch import check_inputs
from . import custom_ops, launch  # noqa: F401  (custom_ops registers torch.ops.sink_free_kernels.softpick_*)


class SoftpickAttentionFunction(torch.autograd.Function):
    """Autograd over the kernels: the forward keeps its output and each row's L for the backward. While torch.compile
    traces, the custom ops; in eager mode the launchers directly."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float, eps: float, causal: bool):
        if torch.compiler.is_compiling():
            out, lse = torch.ops.sink_free_kernels.softpick_attention_fwd(q, k, v, scale, eps, causal)
        else:
            out, lse = launch.forward(q, k, v, None, scale, eps, causal)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (scale, causal)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        scale, causal = ctx.config
        deterministic = torch.are_deterministic_algorithms_enabled()
        if torch.compiler.is_compiling():
            dq, dk, dv = torch.ops.sink_free_kernels.softpick_attention_bwd(do, q, k, v, out, lse, scale, causal,
                                                                            deterministic)
        else:
            dq, dk, dv, _ = launch.backward(do, q, k, v, out, lse, None, scale, causal, False, deterministic)
        return dq, dk, dv, None, None, None


def softpick_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
                              eps: float = 1e-6, causal: bool = True) -> torch.Tensor:
    """Softpick attention on the fused kernels: o_i = Σ_j relu(e^x_ij − 1) v_j / (Σ_j |e^x_ij − 1| + ε),
    x_ij = scale·q_i·k_j over j ≤ i + Tk − Tq (all keys without ``causal``).

    Args:
        q: (B, H, Tq, d); k: (B, Hkv, Tk, d), Hkv dividing H, Tq ≤ Tk; v: (B, Hkv, Tk, dv). d, dv in [16, 256];
            bf16, fp16 or fp32 (fp32 with exact fp32 products); any strides, no copies.
        scale: on q·k, 1/√d by default. eps: ε ≥ 0.

    Under ``torch.use_deterministic_algorithms(True)`` the backward runs without atomics and is bit-identical from
    run to run. Returns (B, H, Tq, dv) in q's dtype, laid out like q.
    """
    check_inputs(q, k, v, scale, causal)
    if check_number(eps, "eps") < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return SoftpickAttentionFunction.apply(q, k, v, scale, float(eps), causal)
