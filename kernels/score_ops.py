"""What the one-view score ops (kernels/sigmoid/, kernels/softpick/, kernels/sink_softmax/) share on the host: the
input checks (a clear error naming the argument, before any launch), whether the Triton kernels apply, per-head
parameters as (H,) fp32 vectors, the tile type and the launch that falls back to the next tile when one does not fit
the GPU's shared memory.

Their inputs are q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv) with Hkv dividing H (grouped key/value heads),
Tq ≤ Tk (query row i at absolute position i + Tk − Tq), d and dv from 16 to 256, any strides, bf16, fp16 or fp32.
This module imports Triton only to launch.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from typing import Callable, Optional, Union

import torch

from .common import CompileTarget, interpreting

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
LOG2E = 1.4426950408889634

Scalar = Union[float, torch.Tensor]


def triton_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """True when the Triton kernels can run these inputs: CUDA tensors (or CPU ones under Triton's interpreter),
    Triton installed, a supported dtype and head dimensions in [16, 256]. Anything else takes the reference."""
    tensors = (q, k, v)
    if not all(isinstance(x, torch.Tensor) and x.dim() == 4 for x in tensors):
        return False
    on_device = all(x.is_cuda for x in tensors) or (interpreting() and all(x.device.type == "cpu" for x in tensors))
    return (on_device and TRITON_INSTALLED and all(x.dtype in SUPPORTED_DTYPES for x in tensors)
            and MIN_HEAD_DIM <= q.shape[-1] <= MAX_HEAD_DIM and MIN_HEAD_DIM <= v.shape[-1] <= MAX_HEAD_DIM)


def check_number(value: object, name: str) -> float:
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


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float], causal: bool) -> None:
    """Raise TypeError/ValueError naming the argument unless q, k, v, scale (None: the default 1/√d), causal are a
    supported case."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, heads, seq, head_dim), got shape "
                             f"{tuple(x.shape)}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}; the Triton kernels take bfloat16, float16 or float32")
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}: use one dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}: use one device")
    if q.device.type != "cuda" and not (q.device.type == "cpu" and interpreting()):
        raise ValueError(f"q is on {q.device}: the Triton kernels need CUDA tensors (or CPU tensors with "
                         f"TRITON_INTERPRET=1); the kernels package's dispatchers fall back to the exact PyTorch "
                         f"implementation")
    B, H, Tq, d = q.shape
    _, Hkv, Tk, _ = k.shape
    if min(B, H, Tq) < 1:
        raise ValueError(f"q must not be empty, got shape {tuple(q.shape)}")
    if k.shape[0] != B or k.shape[3] != d:
        raise ValueError(f"k must be (B={B}, Hkv, Tk, d={d}), got {tuple(k.shape)}")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"k has {Hkv} heads, which must divide q's {H} heads")
    if Tk < Tq:
        raise ValueError(f"k has {Tk} positions, fewer than q's {Tq} (queries align to the last keys)")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must be (B={B}, Hkv={Hkv}, Tk={Tk}, dv), got {tuple(v.shape)}")
    for name, dim in (("q head dimension", d), ("v head dimension", v.shape[3])):
        if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} is {dim}; the Triton kernels support {MIN_HEAD_DIM} to {MAX_HEAD_DIM}")
    if scale is not None:
        check_number(scale, "scale")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")


def as_head_vector(x: Scalar, H: int, device: torch.device) -> torch.Tensor:
    """A float, 0-d, (1,) or (H,) parameter as a contiguous (H,) fp32 tensor on ``device``, keeping its autograd
    history (the gradient of a shared value is the sum over heads). A float's vector is made once and reused (the
    kernels only read it), outside torch.compile's tracing."""
    if not isinstance(x, torch.Tensor):
        if torch.compiler.is_compiling():
            return torch.full((H,), float(x), dtype=torch.float32, device=device)
        return _constant_head_vector(float(x), H, torch.device(device))
    if x.shape == (H,) and x.dtype == torch.float32 and x.device == device and x.stride(0) == 1:
        return x
    return x.to(device=device, dtype=torch.float32).reshape(-1).expand(H).contiguous()


@functools.lru_cache(maxsize=64)
def _constant_head_vector(value: float, H: int, device: torch.device) -> torch.Tensor:
    return torch.full((H,), value, dtype=torch.float32, device=device)


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """block_m query rows × block_n keys per tile; num_warps and num_stages as in Triton."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def describe(self) -> str:
        return f"{self.block_m}×{self.block_n}, {self.num_warps} warps, {self.num_stages} stages"


# Under the interpreter: blocks small enough that the tests' lengths (up to a few hundred) cross several of them.
INTERPRETER_TILE = TileConfig(32, 32, 4, 1)


def compute_constexprs(dtype: torch.dtype) -> dict:
    """CAST_F32: tiles are cast to fp32 after loading (fp32 inputs, and the interpreter, whose bf16 arithmetic is
    wrong); DOT_PREC: fp32 products are exact ("ieee"), never tf32."""
    cast = interpreting() or dtype == torch.float32
    return dict(CAST_F32=cast, DOT_PREC="ieee" if cast else "tf32")


def run(part: str, kernel, grid: tuple, args: tuple, kwargs: dict, target: Optional[CompileTarget]) -> object:
    """``kernel[grid](*args, **kwargs)`` through kernels.fast_launch, or only compiled for ``target`` (kept as
    ``target.compiled[part]``)."""
    if target is not None:
        return target.compile(part, kernel, grid, args, kwargs)
    from . import fast_launch

    return fast_launch.launch(kernel, grid, args, kwargs)


def launch_tiled(part: str, kernel, grid: Callable[[TileConfig], tuple], args_for: Callable[[TileConfig], tuple],
                 candidates: list[TileConfig], constexprs: dict, tile: Optional[TileConfig],
                 target: Optional[CompileTarget], chosen: dict, key: tuple) -> TileConfig:
    """Launch ``kernel`` at ``tile``, else the remembered or first candidate that fits the GPU's shared memory (under
    the interpreter, INTERPRETER_TILE; with a ``target``, the first candidate, nothing remembered). ``grid`` and
    ``args_for`` build the grid and the runtime arguments for a tile. Returns the tile launched."""
    from triton.runtime.errors import OutOfResources

    remember = tile is None and target is None
    if tile is not None:
        candidates = [tile]
    elif interpreting():
        candidates = [INTERPRETER_TILE]
    elif remember and key in chosen:
        candidates = [chosen[key]]
    for i, cfg in enumerate(candidates):
        try:
            run(part, kernel, grid(cfg), args_for(cfg), dict(
                constexprs, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages), target)
        except OutOfResources:
            if i + 1 == len(candidates):
                raise
            continue
        if remember:
            chosen[key] = cfg
        return cfg
    raise AssertionError("unreachable: no tile candidates")


def tiles_by_width(head_d: int, head_dv: int, elem_bytes: int, *, fp32: list[TileConfig],
                   narrow: list[TileConfig], middle: list[TileConfig], wide: list[TileConfig]) -> list[TileConfig]:
    """Pick a tile table by the padded width d + dv of a tile row: fp32 (16×16 above 256, where every tile spills),
    16-bit up to 192 (``narrow``: heads of 64), up to 384 (``middle``), above (``wide``)."""
    from .common import padded

    width = padded(head_d) + padded(head_dv)
    if elem_bytes == 4:
        return [TileConfig(16, 16, 4, 1)] if width > 256 else fp32
    if width <= 192:
        return narrow
    return middle if width <= 384 else wide
