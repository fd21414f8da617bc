"""What every op's launcher shares: the interpreter switch, head-dimension padding, output allocation in the inputs'
memory layout, copy-engine (TMA) reads (when the tensors allow them, the CUDA context they need, and their
descriptors, checked once per layout), the choice of a tile that fits the GPU (tile_candidates, first_fitting), and
compiling for a GPU instead of launching (CompileTarget).

This module does not import Triton, so ``interpreting()`` can be asked on machines without it.
"""

import dataclasses
import os
import threading
from typing import Callable, Optional

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for host code (grids, block counts). Plain integer arithmetic: triton.cdiv is a constexpr function, which
    called on the host goes through Triton's wrapper (microseconds a call), and a launch computes several."""
    return -(-a // b)


def padded(dim: int) -> int:
    """Head dimension rounded up to the power of two the tiles use (at least 16). Plain integer arithmetic:
    it runs a dozen times per launch, and triton.next_power_of_2 costs microseconds a call on the host."""
    return max(16, 1 << (int(dim) - 1).bit_length())


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
               strides: Optional[tuple[int, ...]] = None) -> torch.Tensor:
    """The one place kernel outputs are allocated, contiguous or with ``strides`` (tests fill it with NaN
    to prove every element is written)."""
    if strides is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.empty_strided(shape, strides, dtype=dtype, device=device)


def _row_strides(shape: tuple[int, ...], strides: tuple[int, ...], width: int) -> tuple[int, ...]:
    """Strides of a dense (B, H, T, width) tensor whose (B, H, T) dimensions lie in memory in the order of
    a tensor with ``shape`` and ``strides`` (see new_rows_like)."""
    order = sorted(range(3), key=lambda i: -strides[i])  # outermost first; ties keep B, H, T order
    out = [0, 0, 0, 1]
    step = width
    for i in reversed(order):
        out[i] = step
        step *= shape[i]
    return tuple(out)


def new_rows_like(x: torch.Tensor, width: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An output of shape x.shape[:3] + (width,) whose (B, H, T) dimensions lie in memory in x's order,
    its last dimension contiguous: a (B, T, H, d) projection viewed as (B, H, T, d) gets its output and
    gradients in the (B, T, H, ·) layout, so the model's way back to (B, T, H·d) costs no copy. Fake
    implementations of custom ops allocate the same way, so the strides they promise hold."""
    shape = tuple(x.shape)
    return new_output(shape[:3] + (width,), dtype or x.dtype, x.device, _row_strides(shape, x.stride(), width))


def tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether the copy engine can read these (B, H, T, d) tensors: 16-byte aligned base and strides,
    last dimension contiguous (what tensor descriptors require); else the kernels gather with pointers."""
    for t in tensors:  # (plain loops: a launch checks several tensors, and nested generators cost µs on the host)
        strides = t.stride()
        if strides[-1] != 1 or t.data_ptr() % 16:
            return False
        size = t.element_size()
        for s in strides[:-1]:
            if s * size % 16:
                return False
    return True


MAX_KEPT_DESCRIPTORS = 512  # checked descriptor fields kept (one per class, layout and block); then cleared
_checked_descriptors: dict[tuple, dict] = {}


def row_block_descriptor(kind: type, t: torch.Tensor, rows: int, width: int, *extra) -> object:
    """``kind(t, shape, strides, [1, 1, rows, width], *extra)``: a copy-engine descriptor of the (B, H, T, ·) tensor
    ``t`` in blocks of ``rows`` rows of one head, ``kind`` being Triton's or Gluon's TensorDescriptor (``extra``: its
    hashable further fields, e.g. Gluon's shared layout).

    Both classes check their fields when made (microseconds on the host, at every launch). What they check depends
    only on the tensor's dtype, shape, strides and 16-byte alignment, so the first descriptor made for such a tensor is
    checked, and its fields (not the tensor, which the store must not keep alive) are kept; later ones take those
    fields with their own tensor as base, unchecked. A tensor that fails the checks is never kept, so it fails them
    at every call."""
    return block_descriptor(kind, t, [1, 1, rows, width], *extra)


def block_descriptor(kind: type, t: torch.Tensor, block: list[int], *extra) -> object:
    """``kind(t, shape, strides, block, *extra)``, its checked fields kept as row_block_descriptor says."""
    shape, strides = t.shape, t.stride()
    key = (kind, t.dtype, shape, strides, tuple(block), extra, t.data_ptr() % 16 == 0)
    fields = _checked_descriptors.get(key)
    if fields is None:
        made = kind(t, list(shape), list(strides), list(block), *extra)
        if len(_checked_descriptors) >= MAX_KEPT_DESCRIPTORS:
            _checked_descriptors.clear()
        _checked_descriptors[key] = {name: value for name, value in vars(made).items() if name != "base"}
        return made
    made = object.__new__(kind)
    vars(made).update(fields)
    made.base = t
    return made


def tile_candidates(candidates: list, tile: Optional[object], target: Optional["CompileTarget"], chosen: dict,
                    key: tuple, interpreter_tile: object) -> list:
    """The tiles a launcher tries, in order: ``tile`` when the caller gave one; under the interpreter its one tile
    (``interpreter_tile``: small, since the interpreter's time grows with the tile); the tile remembered in ``chosen``
    for ``key`` (the launch's part, dtype and constexprs), unless only compiling for a ``target``; else
    ``candidates``, fastest first."""
    if tile is not None:
        return [tile]
    if interpreting():
        return [interpreter_tile]
    if target is None and key in chosen:
        return [chosen[key]]
    return candidates


def first_fitting(candidates: list, launch: Callable[[object], object], *, tile: Optional[object],
                  target: Optional["CompileTarget"], chosen: dict, key: tuple,
                  interpreter_tile: object) -> tuple[object, object]:
    """``launch(t)`` for each tile t of tile_candidates (same arguments) in turn until one fits the GPU (a tile whose
    shared memory or registers do not fit raises Triton's OutOfResources; the last candidate's error is raised). The
    tile that ran is remembered in ``chosen`` under ``key``, so the next call launches it at once, unless the caller
    gave the tile or only compiles for a ``target``. Returns (that tile, what ``launch`` returned)."""
    from triton.runtime.errors import OutOfResources

    tried = tile_candidates(candidates, tile, target, chosen, key, interpreter_tile)
    for i, cfg in enumerate(tried):
        try:
            result = launch(cfg)
        except OutOfResources:
            if i + 1 == len(tried):
                raise
            continue
        if tile is None and target is None:
            chosen[key] = cfg
        return cfg, result
    raise ValueError("first_fitting: no tile candidates")


_bound_contexts = threading.local()


def bind_cuda_context(device: torch.device) -> None:
    """Make the device's CUDA context current in this thread, as building a tensor descriptor requires. The
    autograd engine runs the backward in a thread of its own, where torch binds the context only at the
    thread's first CUDA runtime call, which the launcher's allocations (cached) may not make: a stream query
    is such a call. Once bound, a context stays current, so each thread queries once per device."""
    devices = _bound_contexts.__dict__.setdefault("devices", set())
    if device.index not in devices:
        torch.cuda.current_stream(device).query()
        devices.add(device.index)


@dataclasses.dataclass
class CompileTarget:
    """Compile for an NVIDIA GPU of compute capability ``arch`` (90: sm_90, Hopper) instead of launching: a launcher
    given one compiles every kernel the call would launch (Triton's ``warmup``), launches none, and keeps each compiled
    kernel in ``compiled`` under the name of its part (the launcher's docstring lists them). Kernels are chosen for
    ``arch`` whatever the inputs' device, so CPU tensors of the right dtypes, strides and alignment will do. Triton
    compiles for its active driver's target: on a machine with that GPU, the real one; elsewhere, one that names it
    (benchmarks.registers sets such a driver). The outputs the launcher returns are left unwritten."""

    arch: int
    compiled: dict = dataclasses.field(default_factory=dict)

    def compile(self, part: str, kernel, grid: tuple, args: tuple, kwargs: dict) -> object:
        """``kernel[grid](*args, **kwargs)`` compiled, not launched; kept as ``compiled[part]`` and returned."""
        self.compiled[part] = kernel.warmup(*args, grid=grid, **kwargs)
        return self.compiled[part]
