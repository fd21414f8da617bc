"""Whether the Gluon kernels for Hopper can run here, and for which layouts (host side, no Gluon import at module
level): the paired threshold kernels (kernels/threshold/gluon_*.py) and the one-view score ops' backward
(kernels/score_ops/gluon_backward.py) share these conditions and the hand-over to their Triton kernels when one cannot
compile or launch (``fails``: each family keeps its own record of failures, empty while none has failed).
"""
import functools
import importlib
import warnings
from typing import Callable, Optional

import torch
import triton
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

from . import common
from .common import CompileTarget, interpreting

GLUON_MIN_TRITON = (3, 6)  # the first with the Gluon the kernels are written in (3.5's warp_specialize differs)
# the modules written in Gluon: importing them is what tells whether this Triton has the language they use
_GLUON_MODULES = (".gluon_tiles", ".threshold.gluon_forward", ".threshold.gluon_backward", ".score_ops.gluon_backward",
                  ".score_ops.gluon_forward")


def gluon_layout_takes(dtype: torch.dtype, heads: int, kv_heads: int, head_d: int, head_dv: int,
                       wide: bool = False) -> bool:
    """Whether the Gluon kernels are built for this layout: 16-bit, one key/value head per query head, q/k head
    dimension 64 (the one-view backward's dQ^T is one product, whose M side must be 64), v's a power of two from 16
    to 128; with ``wide`` (the paired kernels: the forward, and the backward, which takes dQ^T in two products and dV
    in a launch of its own there) also q/k of 128 with v of 128 or 256."""
    if dtype not in (torch.bfloat16, torch.float16) or heads != kv_heads:
        return False
    return (head_d == 64 and head_dv in (16, 32, 64, 128)) or (wide and head_d == 128 and head_dv in (128, 256))


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = len(piece) - len(piece.lstrip("0123456789"))
        parts.append(int(piece[:digits]) if digits else 0)
    return tuple(parts)


@functools.lru_cache(maxsize=1)
def gluon_available() -> bool:
    """Whether this Triton has the Gluon language the Gluon kernels are written in (3.6 and 3.7 compile them; with an
    older one the Triton kernels run instead)."""
    if _version(triton.__version__) < GLUON_MIN_TRITON:
        return False
    try:
        for name in _GLUON_MODULES:
            importlib.import_module(name, __package__)
    except (ImportError, AttributeError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)  # (else a device query on every backward call)


def on_hopper(x: torch.Tensor) -> bool:
    """Whether ``x`` lives on a Hopper GPU (sm_90, wgmma), compiled rather than interpreted."""
    return not interpreting() and x.is_cuda and _capability(x.device.index) == (9, 0)


def fits(target: Optional[CompileTarget], failures: list, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         *rows: torch.Tensor, wide: bool = False) -> bool:
    """A Hopper GPU (with a ``target``: compiled for sm_90), a layout the Gluon kernels take (gluon_layout_takes, with
    ``wide``), every one of ``rows`` readable by tensor descriptors, a Triton with Gluon, and no failure in
    ``failures``."""
    hopper = target.arch == 90 if target is not None else on_hopper(q)
    return (not failures and hopper
            and gluon_layout_takes(q.dtype, q.shape[1], k.shape[1], q.shape[-1], v.shape[-1], wide)
            and common.tma_ready(*rows) and gluon_available())


def readable_gradient(do: torch.Tensor, target: Optional[CompileTarget], failures: list, q: torch.Tensor,
                      k: torch.Tensor, v: torch.Tensor, *rows: torch.Tensor) -> torch.Tensor:
    """``do`` as a Gluon backward can read it: a contiguous copy where the copy engine cannot read it (out.sum()
    gives a gradient with zero strides) but everything else fits (``fits`` with q, k, v and ``rows``), so that one
    copy, not a fall-back to the Triton kernels, is the price; else ``do`` itself (contiguous rows of a width the
    kernels take are readable)."""
    if not common.tma_ready(do) and fits(target, failures, q, k, v, *rows):
        return do.contiguous()
    return do


def launched(failures: list, what: str, launch: Callable[[], object]) -> bool:
    """Run ``launch`` (a Gluon kernel's launch) and say whether it ran. If the kernel did not compile with this Triton,
    or its launch found too few resources (nothing ran either way), the failure is recorded in ``failures`` (so that
    ``fits`` says no from now on), a warning says once that ``what`` cannot run, and the caller's Triton kernels
    take over."""
    try:
        launch()
    except (CompilationError, OutOfResources) as error:
        failures.append(str(error).splitlines()[-1] if str(error) else type(error).__name__)
        warnings.warn(f"{what} cannot run with Triton {triton.__version__} on this GPU ({failures[0]}); the Triton "
                      "kernels take over", RuntimeWarning, stacklevel=5)
        return False
    return True
