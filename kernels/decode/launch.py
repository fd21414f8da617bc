"""Host-side launchers of the decoding kernels (triton_decode.py): how the cache is split over programs, the fp32
partial buffers, the two launches (partials, then the combine). No input checks (the public functions in
``kernels.decode`` make them); every launch goes through kernels.fast_launch, or, given a ``CompileTarget``, is only
compiled (parts ``threshold_partial``, ``softmax_partial``, ``combine``).
"""

import functools
from typing import Optional

import torch

from .. import fast_launch
from ..common import CompileTarget, cdiv, interpreting, padded
from . import PAGE  # keys per page: the unit the kernels read, score and skip
from .triton_decode import combine_kernel, softmax_partial_kernel, threshold_partial_kernel

COMBINE_TILE = 8192   # fp32 partials the combine reads at a time (splits × value width), over 8 warps
PROGRAMS_PER_SM = 3   # the grid aims at least at this many programs per streaming multiprocessor
MAX_PAGES_PER_SPLIT = 16  # and keeps programs short, so that the last wave of a grid larger than the GPU is short
INTERPRETER_PROGRAMS = 8
STAGES = 3  # pages in flight per program (tl.range's num_stages; 1: no software pipelining)
# (the split-plan sweeps, BENCHMARKS.md "Decoding": for the threshold kernel, pages of 64 keys with 3 in flight and 16
# pages a program were the fastest or within 1% of it at batch 16 (4k, 32k); at batch 1 and 32k, 8 pages a program
# with the 162M's 6 heads and 4 with paper_small's 3 were the fastest (1 or 3 pages: 7-23% slower), and at batch 1
# and 4k one page a program: three programs per SM give these batch-1 plans, 16 pages at batch 16 and 32k, and 8 or
# 13 at batch 16 and 4k; our softmax kernel is faster with pages of 128 keys and 2 in flight, its own defaults
# below, and 4 pages a program at batch 1 and 32k)
SOFTMAX_PAGE = 128
SOFTMAX_STAGES = 2


@functools.lru_cache(maxsize=None)
def _target_programs(device: torch.device) -> int:
    if device.type != "cuda" or interpreting():
        return INTERPRETER_PROGRAMS
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


def split_plan(rows: int, n_pages: int, programs: int, max_pages: int = MAX_PAGES_PER_SPLIT) -> tuple[int, int]:
    """(splits, pages per split) for ``rows`` (batch·heads) rows over ``n_pages`` pages: enough splits that the grid
    has about ``programs`` programs, each of at least one page and at most ``max_pages``, the pages spread evenly."""
    splits = min(n_pages, max(1, -(-programs // max(1, rows))))
    per = min(-(-n_pages // splits), max_pages)
    return -(-n_pages // per), per


def _run(part: str, kernel, grid: tuple, args: tuple, kwargs: dict, target: Optional[CompileTarget]) -> None:
    if target is not None:
        target.compile(part, kernel, grid, args, kwargs)
    else:
        fast_launch.launch(kernel, grid, args, kwargs)


def _warps(page: int, *widths: int) -> int:
    return 4 if page * max(widths) <= 8192 else 8


def _plan(q: torch.Tensor, k: torch.Tensor, page: int, pages_per_split: Optional[int]) -> tuple[int, int, int]:
    B, H = q.shape[:2]
    n_pages = cdiv(k.shape[2], page)
    if pages_per_split is None:
        splits, per = split_plan(B * H, n_pages, _target_programs(q.device))
    else:
        per = max(1, min(int(pages_per_split), n_pages))
        splits = cdiv(n_pages, per)
    return n_pages, splits, per


def _combine(part, stats, sink, positions, out, H, L, splits, per, dv, page, softmax, target) -> None:
    B = out.shape[0]
    split_block = max(16, min(64, COMBINE_TILE // padded(dv)))
    _run("combine", combine_kernel, (B * H,), (
        part, stats, sink if sink is not None else stats, positions, out, *out.stride(), H, L, splits, per),
        dict(HEAD_DV=dv, BLOCK_DV=padded(dv), PAGE=page, SPLIT_BLOCK=split_block, SOFTMAX=softmax,
             HAS_SINK=sink is not None, num_warps=8), target)


LAM_MODES = {None: 0, "clamp": 1, "sigmoid": 2}


def threshold_decode(q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor, q2: Optional[torch.Tensor],
                     k2: Optional[torch.Tensor], positions: torch.Tensor, lam: Optional[torch.Tensor],
                     beta: torch.Tensor, p: float, normalize: bool, scale: float, page: int = PAGE,
                     pages_per_split: Optional[int] = None, read_flags: Optional[torch.Tensor] = None,
                     drop_page: int = -1, lam_transform: Optional[str] = None, stages: Optional[int] = None,
                     target: Optional[CompileTarget] = None) -> torch.Tensor:
    """Threshold attention of one query row per (sequence, head): q (B, H, d), k (B, Hkv, L, d), v (B, Hkv, L, dv),
    positions (B,) contiguous integers, lam a contiguous tensor of 1 or H values (any float dtype; the kernel applies
    ``lam_transform``: None, "clamp" or "sigmoid") or None, beta (H,) fp32; ``stages`` an int (checked by the public
    function) or None. Returns (B, H, dv) in q1's dtype."""
    B, H, d = q1.shape
    Hkv, L, dv = k1.shape[1], k1.shape[2], v.shape[-1]
    two = q2 is not None
    n_pages, splits, per = _plan(q1, k1, page, pages_per_split)
    part = torch.empty((B, H, splits, padded(dv)), dtype=torch.float32, device=q1.device)
    live = torch.empty((B, H, splits), dtype=torch.int32, device=q1.device)
    out = torch.empty((B, H, dv), dtype=q1.dtype, device=q1.device)
    q2_, k2_ = (q2, k2) if two else (q1, k1)
    p_mode = 1 if p == 1.0 else 2 if p == 2.0 else 0
    _run("threshold_partial", threshold_partial_kernel, (B * H, splits), (
        q1, q2_, k1, k2_, v, positions, lam if two else beta, beta, part, live,
        read_flags if read_flags is not None else part,
        *q1.stride(), *q2_.stride(), *k1.stride(), *k2_.stride(), *v.stride(),
        H, H // Hkv, L, splits, per, n_pages, float(scale), float(p), 1.0 / d, int(drop_page),
        int(two and lam.numel() > 1)),
        dict(HEAD_D=d, HEAD_DV=dv, BLOCK_D=padded(d), BLOCK_DV=padded(dv), PAGE=page, TWO_VIEWS=two,
             NORMALIZE=bool(normalize), P_MODE=p_mode, LAM_MODE=LAM_MODES[lam_transform],
             RECORD=read_flags is not None, STAGES=STAGES if stages is None else stages,
             num_warps=_warps(page, padded(d), padded(dv))), target)
    _combine(part, live, None, positions, out, H, L, splits, per, dv, page, False, target)
    return out


def softmax_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, scale: float,
                   sink: Optional[torch.Tensor], page: Optional[int] = None, pages_per_split: Optional[int] = None,
                   stages: Optional[int] = None, target: Optional[CompileTarget] = None) -> torch.Tensor:
    """Softmax attention of one query row per (sequence, head), shapes as threshold_decode's; sink (H,) or None.
    Returns (B, H, dv) in q's dtype; ``page`` and ``stages`` None: SOFTMAX_PAGE and SOFTMAX_STAGES."""
    B, H, d = q.shape
    Hkv, L, dv = k.shape[1], k.shape[2], v.shape[-1]
    page = SOFTMAX_PAGE if page is None else page
    n_pages, splits, per = _plan(q, k, page, pages_per_split)
    part = torch.empty((B, H, splits, padded(dv)), dtype=torch.float32, device=q.device)
    stats = torch.empty((B, H, splits, 2), dtype=torch.float32, device=q.device)
    out = torch.empty((B, H, dv), dtype=q.dtype, device=q.device)
    _run("softmax_partial", softmax_partial_kernel, (B * H, splits), (
        q, k, v, positions, part, stats, *q.stride(), *k.stride(), *v.stride(), H, H // Hkv, L, splits, per,
        float(scale)), dict(HEAD_D=d, HEAD_DV=dv, BLOCK_D=padded(d), BLOCK_DV=padded(dv), PAGE=page,
                            STAGES=SOFTMAX_STAGES if stages is None else stages,
                            num_warps=_warps(page, padded(d), padded(dv))), target)
    _combine(part, stats, sink, positions, out, H, L, splits, per, dv, page, True, target)
    return out

