"""Launching a kernel again without Triton's per-call argument binding.

``kernel[grid](*args, **kwargs)`` binds and specialises every argument on each call, then builds a cache key: for
kernels of 30-60 arguments that costs the CPU several times what the launch itself does, and at small shapes that CPU
time, not the GPU's, bounds an eager forward+backward (BENCHMARKS.md, "Launches without Triton's binding, and the
paired forward in Gluon"). ``launch`` makes the first call of each specialisation through
Triton, keeps the compiled kernel, and afterwards calls it directly with the same arguments in the same order.

The key it keeps them by is at least as fine as Triton's specialisation, so a kept kernel is always the one Triton
would have chosen: every keyword argument (constexprs and launch options), the values of the integer arguments
themselves (Triton specialises on 1 and on divisibility by 16), each tensor's dtype and 16-byte alignment, each tensor
descriptor's type, dtype, block shape, layout and padding (what Triton specialises a descriptor on), the device.
Floats are never specialised. Anything else, an interpreted run, or a launch hook (a profiler's) takes Triton's own
path every time, and so does a launch after a global the kernel reads has changed (Triton refuses it).
"""

from typing import Callable, Optional, Sequence

import torch
from triton import knobs

from .common import interpreting

MAX_KEPT = 1024  # kept compiled kernels (one per kernel, specialisation and device); the store starts over when full
_kept: dict[tuple, tuple] = {}
_UNKNOWN = object()
# a kernels.replay Recorder while one records a call: told of every launch from a kept kernel, and refused (the
# program would lack the launch) when Triton's own path launches
recording: Optional[object] = None
_raw_stream: Optional[Callable[[int], int]] = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _arg_key(a: object) -> object:
    kind = type(a)
    if kind is int or kind is bool:
        return a
    if kind is float:
        return float
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    base = getattr(a, "base", None)
    if isinstance(base, torch.Tensor) and hasattr(a, "block_shape"):  # a tensor descriptor (Triton's or Gluon's)
        return (kind, base.dtype, tuple(a.block_shape), getattr(a, "layout", None), getattr(a, "padding", None))
    return _UNKNOWN


def specialisation_key(kernel: object, args: Sequence, kwargs: dict, device: int) -> Optional[tuple]:
    """The key ``launch`` keeps a compiled kernel by, or None where an argument is of a kind it does not know."""
    keys = tuple(map(_arg_key, args))
    return None if _UNKNOWN in keys else (id(kernel), device, tuple(kwargs.items()), keys)


def trailing_arguments(params: Sequence, positional: int, kwargs: dict) -> tuple:
    """The values of the parameters after the ``positional`` ones, in the signature's order: the keyword arguments
    given, else the defaults (what Triton's binder passes the compiled kernel after the positional arguments)."""
    return tuple(kwargs[p.name] if p.name in kwargs else p.default for p in params[positional:])


def kept_kernels() -> list:
    """The compiled kernels kept so far, each once (several keys may keep the same one), e.g. for a benchmark to time
    their launchers (benchmarks.host)."""
    return list({id(compiled): compiled for compiled, _ in _kept.values()}.values())


def _hooked() -> bool:
    """Whether a launch hook is set (Triton 3.6 keeps them as chains, empty by default)."""
    return any(getattr(hook, "calls", hook) for hook in (knobs.runtime.launch_enter_hook,
                                                          knobs.runtime.launch_exit_hook))


def launch(kernel, grid: tuple, args: Sequence, kwargs: dict) -> object:
    """``kernel[grid](*args, **kwargs)``, the same launch; returns the compiled kernel."""
    params = getattr(kernel, "params", None)  # (a stand-in without a signature, as tests use, has none)
    if params is None or interpreting() or _hooked() or not torch.cuda.is_initialized():
        return _through_triton(kernel, grid, args, kwargs)
    device = torch.cuda.current_device()
    key = specialisation_key(kernel, args, kwargs, device)
    kept = _kept.get(key) if key is not None else None
    if kept is None:
        compiled = _through_triton(kernel, grid, args, kwargs)
        if key is not None and compiled is not None:
            if len(_kept) >= MAX_KEPT:
                _kept.clear()
            _kept[key] = (compiled, trailing_arguments(params, len(args), kwargs))
        return compiled
    compiled, tail = kept
    for (name, _), (value, scope) in getattr(kernel, "used_global_vals", {}).items():
        if scope.get(name, _UNKNOWN) != value:  # a global the kernel reads has changed: Triton's path says so
            return _through_triton(kernel, grid, args, kwargs)
    stream = _raw_stream(device) if _raw_stream is not None else torch.cuda.current_stream(device).cuda_stream
    compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
                 compiled.function, compiled.packed_metadata, None, None, None, *args, *tail)
    if recording is not None:
        recording.note_launch(compiled, grid, (*args, *tail))
    return compiled


def _through_triton(kernel, grid: tuple, args: Sequence, kwargs: dict) -> object:
    """Triton's own launch (binding, specialisation, compilation the first time)."""
    if recording is not None:
        recording.refuse("a launch through Triton's own path (a kernel not yet kept, or an interpreted run)")
    return kernel[grid](*args, **kwargs)
