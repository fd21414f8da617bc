"""Input checks for the Triton threshold-attention path (SPEC §3), run before any kernel launch: the two views, λ,
β and the options, on top of the checks every op shares (kernels/inputs.py). Every problem is a ``TypeError`` or
``ValueError`` that names the argument, never a Triton trace; this module does not import Triton.
"""

from typing import Optional

import torch

from ..inputs import Scalar, check_attention_tensors, check_head_dims, check_head_param, check_number
from .options import ThresholdOptions


def check_inputs(q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor, q2: Optional[torch.Tensor],
                 k2: Optional[torch.Tensor], lam: Optional[Scalar], beta: Scalar, options: ThresholdOptions) -> None:
    """Raise TypeError/ValueError naming the argument if the inputs are not a supported case.

    Shapes: q1, q2 (B, H, Tq, d); k1, k2 (B, Hkv, Tk, d) with H % Hkv == 0 and Tq <= Tk;
    v (B, Hkv, Tk, dv); d and dv in [16, 256]; one dtype among bf16, fp16, fp32; one device.
    """
    if (q2 is None) != (k2 is None):
        raise ValueError("q2 and k2 must be given together (TDA) or both omitted (TRA/ReLA)")
    named = [("q1", q1), ("k1", k1), ("v", v)] + ([("q2", q2), ("k2", k2)] if q2 is not None else [])
    _, H, _, _, _ = check_attention_tensors(named, "kernels.threshold_attention falls back to the exact PyTorch "
                                            "implementation")
    if q2 is not None and q2.shape != q1.shape:
        raise ValueError(f"q2 must have q1's shape {tuple(q1.shape)}, got {tuple(q2.shape)}")
    if k2 is not None and k2.shape != k1.shape:
        raise ValueError(f"k2 must have k1's shape {tuple(k1.shape)}, got {tuple(k2.shape)}")
    check_head_dims("q1", q1.shape[3], v.shape[3])
    if q2 is not None and lam is None:
        raise ValueError("lam is required with two views (q2, k2)")
    if q2 is None and lam is not None:
        raise ValueError("lam applies only with two views: pass q2 and k2, or lam=None")
    if lam is not None:
        check_head_param(lam, H, "lam")
    check_head_param(beta, H, "beta")
    if check_number(options.p, "p") < 1.0:
        raise ValueError(f"p must be >= 1, got {options.p}")
    check_number(options.scale, "scale")
    for name, flag in (("normalize", options.normalize), ("causal", options.causal)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")


def check_pairs(q: torch.Tensor, k: torch.Tensor) -> None:
    """q and k of the paired head layout (B, 2H, T, d): tensors of 4 dimensions with an even head count, heads 2h and
    2h + 1 being pair h's two views (check_inputs then checks the views)."""
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, 2 x heads, seq, head_dim), got shape "
                             f"{tuple(x.shape)}")
        if x.shape[1] % 2:
            raise ValueError(f"{name} holds the two views of each pair as heads 2h and 2h + 1, so its head count "
                             f"must be even; got shape {tuple(x.shape)}")
