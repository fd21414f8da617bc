"""Input checks and per-head parameters shared by every op on the kernel shelf (threshold, sigmoid, softpick,
sink_softmax, decode), run on the host before any launch.

Every problem is reported as a ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape, value or device)
that names the argument, never as a Triton trace. This module does not import Triton, so whether the kernels apply
can be asked on machines without it.

The attention inputs are q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv) with Hkv dividing H (grouped
key/value heads), Tq ≤ Tk (query row i at absolute position i + Tk − Tq), d and dv from 16 to 256, any strides,
bf16, fp16 or fp32, on one device.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from typing import Optional, Union

import torch

from .common import interpreting

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256

Scalar = Union[float, torch.Tensor]


def triton_applies(*tensors: Optional[torch.Tensor], dims: Optional[int] = 4) -> bool:
    """True when the Triton kernels can run these q, k, v (and any further q/k views; None entries are skipped):
    tensors of ``dims`` dimensions (None: any; the decoding kernels take 3-d queries and 4-d caches) on CUDA (or
    the CPU under Triton's interpreter), Triton installed, a supported dtype and head dimensions (the last dimension
    of each) in [16, 256]. Anything else takes the exact PyTorch implementation."""
    tensors = [x for x in tensors if x is not None]
    if not all(isinstance(x, torch.Tensor) and (dims is None or x.dim() == dims) for x in tensors):
        return False
    on_device = all(x.is_cuda for x in tensors) or (interpreting() and all(x.device.type == "cpu" for x in tensors))
    return (on_device and TRITON_INSTALLED and all(x.dtype in SUPPORTED_DTYPES for x in tensors)
            and all(MIN_HEAD_DIM <= x.shape[-1] <= MAX_HEAD_DIM for x in tensors))


def check_number(value: object, name: str) -> float:
    """``value`` as a float; TypeError unless a real number (not a bool), ValueError unless finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_head_param(x: Scalar, H: int, name: str) -> None:
    """A float, or a floating-point 0-d, (1,) or (H,) tensor."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.numel() not in (1, H) or x.dim() > 1:
            raise ValueError(f"{name} must be a float, a 0-d tensor or a ({H},) tensor (one per query head), "
                             f"got shape {tuple(x.shape)}")
    else:
        check_number(x, name)


def check_attention_tensors(named: list[tuple[str, torch.Tensor]], fallback: str) -> tuple[int, int, int, int, int]:
    """Check the attention inputs ``named`` = [(q's name, q), (k's name, k), ("v", v), further views...]: tensors of
    4 dimensions, one supported dtype, one device the kernels run on (``fallback`` says what runs elsewhere), and
    the shapes of the module docstring. Returns (B, H, Hkv, Tq, Tk)."""
    (qn, q), (kn, k), (_, v) = named[:3]
    for name, x in named:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, heads, seq, head_dim), got shape "
                             f"{tuple(x.shape)}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}; the Triton kernels take bfloat16, float16 or float32")
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but {qn} has {q.dtype}: use one dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but {qn} is on {q.device}: use one device")
    if q.device.type != "cuda" and not (q.device.type == "cpu" and interpreting()):
        raise ValueError(f"{qn} is on {q.device}: the Triton kernels need CUDA tensors (or CPU tensors with "
                         f"TRITON_INTERPRET=1); {fallback}")
    B, H, Tq, d = q.shape
    _, Hkv, Tk, _ = k.shape
    if min(B, H, Tq) < 1:
        raise ValueError(f"{qn} must not be empty, got shape {tuple(q.shape)}")
    if k.shape[0] != B or k.shape[3] != d:
        raise ValueError(f"{kn} must be (B={B}, Hkv, Tk, d={d}), got {tuple(k.shape)}")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"{kn} has {Hkv} heads, which must divide {qn}'s {H} heads")
    if Tk < Tq:
        raise ValueError(f"{kn} has {Tk} positions, fewer than {qn}'s {Tq} (queries align to the last keys)")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must be (B={B}, Hkv={Hkv}, Tk={Tk}, dv), got {tuple(v.shape)}")
    return B, H, Hkv, Tq, Tk


def check_head_dims(q_name: str, d: int, dv: int) -> None:
    """d (q's head dimension, named after ``q_name``) and dv within the kernels' [16, 256]."""
    for name, dim in ((f"{q_name} head dimension", d), ("v head dimension", dv)):
        if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} is {dim}; the Triton kernels support {MIN_HEAD_DIM} to {MAX_HEAD_DIM}")


def pair_views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of the paired head layout (TDA's and the Differential Transformer's): heads 2h and 2h + 1 of
    x (B, 2H, T, d) are pair h's views 1 and 2."""
    return x[:, 0::2], x[:, 1::2]


def as_head_vector(x: Scalar, H: int, device: torch.device) -> torch.Tensor:
    """A float, 0-d, (1,) or (H,) parameter as a contiguous (H,) fp32 tensor on ``device``, keeping its autograd
    history (the gradient of a shared value is the sum over heads). A float's vector is made once and reused (the
    kernels only read it), outside torch.compile's tracing."""
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
