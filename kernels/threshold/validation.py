"""Input checks for the Triton threshold-attention path (SPEC §3), run before any kernel launch.

Every problem is reported as a ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape,
value or device) that names the argument, never as a Triton trace. This module does not import
Triton, so ``triton_applies`` can be asked on machines without it.
"""

import functools
import importlib.util
import math
from typing import Optional, Union

import torch

from ..common import interpreting
from .options import ThresholdOptions

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256

Scalar = Union[float, torch.Tensor]


def triton_applies(q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor,
                   q2: Optional[torch.Tensor] = None, k2: Optional[torch.Tensor] = None) -> bool:
    """True when the Triton kernels can run these inputs: CUDA tensors (or CPU under Triton's
    interpreter), Triton installed, a supported dtype and head dimensions in [16, 256]."""
    tensors = [x for x in (q1, k1, v, q2, k2) if x is not None]
    if not all(isinstance(x, torch.Tensor) and x.dim() == 4 for x in tensors):
        return False
    on_device = all(x.is_cuda for x in tensors) or (interpreting() and all(x.device.type == "cpu"
                                                                            for x in tensors))
    return (on_device and TRITON_INSTALLED
            and all(x.dtype in SUPPORTED_DTYPES for x in tensors)
            and MIN_HEAD_DIM <= q1.shape[-1] <= MAX_HEAD_DIM
            and MIN_HEAD_DIM <= v.shape[-1] <= MAX_HEAD_DIM)


def _check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _check_head_param(x: Optional[Scalar], H: int, name: str) -> None:
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.numel() not in (1, H) or x.dim() > 1:
            raise ValueError(f"{name} must be a float, a 0-d tensor or a ({H},) tensor (one per query "
                             f"head), got shape {tuple(x.shape)}")
    else:
        _check_number(x, name)


def check_inputs(q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor, q2: Optional[torch.Tensor],
                 k2: Optional[torch.Tensor], lam: Optional[Scalar], beta: Scalar, options: ThresholdOptions) -> None:
    """Raise TypeError/ValueError naming the argument if the inputs are not a supported case.

    Shapes: q1, q2 (B, H, Tq, d); k1, k2 (B, Hkv, Tk, d) with H % Hkv == 0 and Tq <= Tk;
    v (B, Hkv, Tk, dv); d and dv in [16, 256]; one dtype among bf16, fp16, fp32; one device.
    """
    if (q2 is None) != (k2 is None):
        raise ValueError("q2 and k2 must be given together (TDA) or both omitted (TRA/ReLA)")
    named = [("q1", q1), ("k1", k1), ("v", v)] + ([("q2", q2), ("k2", k2)] if q2 is not None else [])
    for name, x in named:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, heads, seq, head_dim), "
                             f"got shape {tuple(x.shape)}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}; the Triton kernels take bfloat16, "
                            f"float16 or float32")
        if x.dtype != q1.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q1 has {q1.dtype}: use one dtype")
        if x.device != q1.device:
            raise ValueError(f"{name} is on {x.device} but q1 is on {q1.device}: use one device")
    if q1.device.type != "cuda" and not (q1.device.type == "cpu" and interpreting()):
        raise ValueError(f"q1 is on {q1.device}: the Triton kernels need CUDA tensors (or CPU "
                         f"tensors with TRITON_INTERPRET=1); kernels.threshold_attention falls back "
                         f"to the exact PyTorch implementation")
    B, H, Tq, d = q1.shape
    _, Hkv, Tk, _ = k1.shape
    if min(B, H, Tq) < 1:
        raise ValueError(f"q1 must not be empty, got shape {tuple(q1.shape)}")
    if k1.shape[0] != B or k1.shape[3] != d:
        raise ValueError(f"k1 must be (B={B}, Hkv, Tk, d={d}), got {tuple(k1.shape)}")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"k1 has {Hkv} heads, which must divide q1's {H} heads")
    if Tk < Tq:
        raise ValueError(f"k1 has {Tk} positions, fewer than q1's {Tq} (queries align to the last keys)")
    if v.shape[:3] != k1.shape[:3]:
        raise ValueError(f"v must be (B={B}, Hkv={Hkv}, Tk={Tk}, dv), got {tuple(v.shape)}")
    if q2 is not None and q2.shape != q1.shape:
        raise ValueError(f"q2 must have q1's shape {tuple(q1.shape)}, got {tuple(q2.shape)}")
    if k2 is not None and k2.shape != k1.shape:
        raise ValueError(f"k2 must have k1's shape {tuple(k1.shape)}, got {tuple(k2.shape)}")
    for name, dim in (("q1 head dimension", d), ("v head dimension", v.shape[3])):
        if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} is {dim}; the Triton kernels support {MIN_HEAD_DIM} to "
                             f"{MAX_HEAD_DIM}")
    if q2 is not None and lam is None:
        raise ValueError("lam is required with two views (q2, k2)")
    if q2 is None and lam is not None:
        raise ValueError("lam applies only with two views: pass q2 and k2, or lam=None")
    if lam is not None:
        _check_head_param(lam, H, "lam")
    _check_head_param(beta, H, "beta")
    if _check_number(options.p, "p") < 1.0:
        raise ValueError(f"p must be >= 1, got {options.p}")
    _check_number(options.scale, "scale")
    for name, flag in (("normalize", options.normalize), ("causal", options.causal)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")


def as_head_vector(x: Scalar, H: int, device: torch.device) -> torch.Tensor:
    """A float, 0-d, (1,) or (H,) parameter as a contiguous (H,) fp32 tensor on ``device``, keeping
    its autograd history (the gradient of a shared value is the sum over heads). A float's vector is made
    once and reused (the kernels only read it), outside torch.compile's tracing."""
    if not isinstance(x, torch.Tensor):
        if torch.compiler.is_compiling():
            return torch.full((H,), float(x), dtype=torch.float32, device=device)
        return _constant_head_vector(float(x), H, torch.device(device))
    if x.shape == (H,) and x.dtype == torch.float32 and x.device == device and x.stride(0) == 1:
        return x  # as it is: a view and an expand would each add a step to the backward
    return x.to(device=device, dtype=torch.float32).reshape(-1).expand(H).contiguous()


@functools.lru_cache(maxsize=64)
def _constant_head_vector(value: float, H: int, device: torch.device) -> torch.Tensor:
    return torch.full((H,), value, dtype=torch.float32, device=device)
