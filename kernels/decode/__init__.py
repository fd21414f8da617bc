"""Decoding attention (SPEC §3, "Decoding"): one query row per sequence and head against a key/value cache, for the
threshold variants (TDA, TRA, ReLA) and for softmax (with an optional sink logit), the model's decoding step.

``threshold_decode`` and ``softmax_decode`` run the split-KV Triton kernels (triton_decode.py, launched by launch.py)
for CUDA tensors they support when no gradient is asked for, else the exact PyTorch implementation (reference.py).
Each query's keys are the cache positions 0 … its row's position (``positions``, one per row: rows of a batch may
have different lengths); τ uses that absolute position. The threshold kernel reads a page's values only when some
key of the page survives τ (exact page skipping) and can record which pages it read (``read_flags``). README.md in
this folder has the design. Triton is imported only when a kernel runs.
"""
from __future__ import annotations

import torch

from ..inputs import MAX_HEAD_DIM, MIN_HEAD_DIM, as_head_vector, triton_applies
from .reference import softmax_decode_reference, threshold_decode_reference

PAGE = 64  # keys per page (launch.PAGE, named here without importing Triton)


def kernel_applies(*tensors: torch.Tensor | None) -> bool:
    """Whether the decoding kernels can run these q, k, v: kernels.inputs.triton_applies for tensors of any number
    of dimensions (CUDA or the interpreter, Triton installed, bf16/fp16/fp32, head dimensions from 16 to 256)."""
    return triton_applies(*tensors, dims=None)


def check_inputs(q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor, q2: torch.Tensor | None,
                 k2: torch.Tensor | None, positions: torch.Tensor) -> None:
    """Raise TypeError/ValueError naming the argument unless q1, q2 are (B, H, d), k1, k2 (B, Hkv, L, d) with Hkv
    dividing H, v (B, Hkv, L, dv), positions (B,) integers, all of one floating dtype on one device."""
    if (q2 is None) != (k2 is None):
        raise ValueError("q2 and k2 must be given together (TDA) or both omitted")
    named = [("q1", q1, 3), ("k1", k1, 4), ("v", v, 4)] + ([("q2", q2, 3), ("k2", k2, 4)] if q2 is not None else [])
    for name, x, dims in named:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != dims:
            raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(x.shape)}")
        if not x.is_floating_point() or x.dtype != q1.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}; q, k and v need one floating dtype (q1 has {q1.dtype})")
        if x.device != q1.device:
            raise ValueError(f"{name} is on {x.device} but q1 is on {q1.device}: use one device")
    B, H, d = q1.shape
    if min(B, H) < 1 or k1.shape[2] < 1:
        raise ValueError(f"q1 {tuple(q1.shape)} and k1 {tuple(k1.shape)} must not be empty")
    if k1.shape[0] != B or k1.shape[3] != d or H % k1.shape[1]:
        raise ValueError(f"k1 must be (B={B}, Hkv dividing {H}, L, d={d}), got {tuple(k1.shape)}")
    if v.shape[:3] != k1.shape[:3]:
        raise ValueError(f"v must be (B, Hkv, L) = {tuple(k1.shape[:3])} by dv, got {tuple(v.shape)}")
    if q2 is not None and (q2.shape != q1.shape or k2.shape != k1.shape):
        raise ValueError(f"q2 {tuple(q2.shape)} and k2 {tuple(k2.shape)} must have the shapes of q1 and k1")
    if not isinstance(positions, torch.Tensor) or positions.is_floating_point() or positions.is_complex():
        raise TypeError("positions must be an integer tensor (one query position per row)")
    if positions.shape != (B,) or positions.device != q1.device:
        raise ValueError(f"positions must be ({B},) on {q1.device}, got {tuple(positions.shape)} on {positions.device}")


def _use_kernel(kernel: bool | None, tensors: tuple, params: tuple) -> bool:
    applies = kernel_applies(*tensors)
    if kernel is None:
        needs_grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                                     for t in tensors + params)
        return tensors[0].is_cuda and applies and not needs_grad
    if kernel and not applies:
        raise ValueError("kernel=True needs CUDA tensors (or CPU ones under TRITON_INTERPRET=1) of bf16, fp16 or "
                         f"fp32 with head dimensions from {MIN_HEAD_DIM} to {MAX_HEAD_DIM}")
    return bool(kernel)


def threshold_decode(q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor, q2: torch.Tensor | None = None,
                     k2: torch.Tensor | None = None, *, positions: torch.Tensor,
                     lam: float | torch.Tensor | None = None, beta: float | torch.Tensor = 1.0, p: float = 2.0,
                     normalize: bool = True, scale: float = 1.0, kernel: bool | None = None,
                     read_flags: torch.Tensor | None = None, drop_page: int | None = None,
                     pages_per_split: int | None = None, page: int = PAGE,
                     lam_transform: str | None = None, stages: int | None = None) -> torch.Tensor:
    """Threshold attention of one query row per sequence and head against the cache (reference.py has the
    formula): q1, q2 (B, H, d); k1, k2 (B, Hkv, L, d); v (B, Hkv, L, dv); positions (B,); lam (with two views) and
    beta floats, 0-d, (1,) or (H,) tensors; p ≥ 1, normalize, scale as ``kernels.threshold_attention``'s. Returns
    (B, H, dv) in q1's dtype, before any per-head normalisation. ``lam_transform`` "clamp" or "sigmoid" takes lam
    raw and uses clamp(lam, 0, 1) or sigmoid(lam) (TDA's λ modes), inside the kernel: a decoding step then spends no
    launch on it.

    ``kernel``: None (the kernel for CUDA tensors it supports when no gradient is needed, else the reference),
    True (the kernel, also for CPU tensors under the interpreter) or False (the reference). Kernel-only options:
    ``read_flags`` (B, H, ceil(L / page)) int8 zeros, filled with 1 for each page whose keys were scored and 2 for
    each whose values were read too; ``drop_page``, a test hook that makes the kernel treat that page as if no key
    survived (a wrong skip decision, which the tests must catch); ``pages_per_split`` and ``page`` (a power of two
    ≥ 16) set the split, ``stages`` (≥ 1) the pages each program keeps in flight (None: the launcher's choice)."""
    check_inputs(q1, k1, v, q2, k2, positions)
    _check_page(page)
    stages = _stages(stages)
    if q2 is not None and lam is None:
        raise ValueError("lam is required with two views (q2, k2)")
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    if lam_transform not in (None, "clamp", "sigmoid"):
        raise ValueError(f"lam_transform must be None, 'clamp' or 'sigmoid', got {lam_transform!r}")
    H = q1.shape[1]
    if isinstance(lam, torch.Tensor) and lam.numel() not in (1, H):
        raise ValueError(f"lam must be a float or hold 1 or {H} (one per head) values, got shape {tuple(lam.shape)}")
    if not _use_kernel(kernel, (q1, k1, v, q2, k2), (lam, beta)):
        if read_flags is not None or drop_page is not None:
            raise ValueError("read_flags and drop_page need the kernel (kernel=True)")
        if q2 is not None and lam_transform is not None:
            if not isinstance(lam, torch.Tensor):
                lam = torch.full((), float(lam), device=q1.device)
            lam = lam if lam.dtype == torch.float64 else lam.float()
            lam = lam.clamp(0.0, 1.0) if lam_transform == "clamp" else torch.sigmoid(lam)
        return threshold_decode_reference(q1, k1, v, q2, k2, positions=positions, lam=lam, beta=beta, p=p,
                                          normalize=normalize, scale=scale)
    from .launch import threshold_decode as launch_threshold

    B = q1.shape[0]
    n_pages = -(-k1.shape[2] // page)
    if read_flags is not None and (read_flags.shape != (B, H, n_pages) or read_flags.dtype != torch.int8
                                   or read_flags.device != q1.device or not read_flags.is_contiguous()):
        raise ValueError(f"read_flags must be a contiguous int8 tensor ({B}, {H}, {n_pages}) on {q1.device}")
    if q2 is None:
        lam_h = None
    elif isinstance(lam, torch.Tensor):  # one value or one per head, read by the kernel as it is
        lam_h = lam.detach().to(q1.device).reshape(-1).contiguous()
    else:
        lam_h = as_head_vector(lam, H, q1.device)
    return launch_threshold(q1, k1, v, q2, k2, positions.contiguous(), lam_h, as_head_vector(beta, H, q1.device),
                            float(p), bool(normalize), float(scale), page, pages_per_split, read_flags,
                            -1 if drop_page is None else int(drop_page), lam_transform, stages)


def softmax_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, positions: torch.Tensor,
                   scale: float | None = None, sink: torch.Tensor | None = None, kernel: bool | None = None,
                   pages_per_split: int | None = None, page: int | None = None,
                   stages: int | None = None) -> torch.Tensor:
    """Softmax attention of one query row per sequence and head against the cache, with a per-head sink logit
    (H,) in the denominator when given; ``scale`` defaults to 1/√d. Shapes, ``kernel``, ``pages_per_split``,
    ``page`` and ``stages`` as threshold_decode's, except that None takes this kernel's own page (128 keys: one
    product per key, no survivors to find, so longer pages pay). Returns (B, H, dv) in q's dtype."""
    check_inputs(q, k, v, None, None, positions)
    _check_page(page)
    stages = _stages(stages)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not _use_kernel(kernel, (q, k, v), (sink,)):
        return softmax_decode_reference(q, k, v, positions=positions, scale=scale, sink=sink)
    from .launch import softmax_decode as launch_softmax

    sink_h = None if sink is None else as_head_vector(sink, q.shape[1], q.device)
    return launch_softmax(q, k, v, positions.contiguous(), scale, sink_h, page, pages_per_split, stages)


def _check_page(page: int | None) -> None:
    if page is not None and (isinstance(page, bool) or not isinstance(page, int) or page < 16 or page & (page - 1)):
        raise ValueError(f"page must be a power of two >= 16 (keys per page), got {page!r}")


def _stages(stages: int | None) -> int | None:
    if stages is not None and (isinstance(stages, bool) or int(stages) != stages or stages < 1):
        raise ValueError(f"stages must be an integer >= 1 or None, got {stages!r}")
    return None if stages is None else int(stages)


__all__ = ["PAGE", "check_inputs", "kernel_applies", "softmax_decode", "softmax_decode_reference", "threshold_decode",
           "threshold_decode_reference"]
