"""Host-side launchers of the threshold-attention kernels (no autograd, no input checks).

``forward`` and ``backward`` take validated tensors (validation.py) and return plain tensors; the autograd function
and the custom ops (autograd.py, custom_ops.py) are built on them. Shapes: q (B, H, Tq, d), k (B, Hkv, Tk, d),
v (B, Hkv, Tk, dv), any strides; lam, beta (H,) fp32 on the inputs' device; ``options`` the plain-valued options.

Which kernels run: the forward is the Gluon kernel (gluon_forward.py) where gluon_forward_fits, else the Triton kernel
(triton_forward.py); the backward is the fused Gluon kernel (gluon_backward.py) where gluon_backward_fits and the
call is not deterministic, else the Triton dK/dV kernel with dQ by atomics or the dQ kernel (triton_backward.py),
as tiles.py's defaults or a ``BackwardPlan`` say. Exact skipping (tiles.skip_empty_tiles): the forward returns its
record of the cells holding a surviving weight (triton_lists.py), and the backward turns it into lists of occupied
tiles for its kernels (one compaction launch) and visits only those. Every kernel is launched through
kernels.fast_launch, or, given a ``CompileTarget``, only compiled; its parts are named ``key_norms``, ``fwd``,
``fused_fwd`` (the Gluon forward), ``lists`` (the compaction), ``dkdv``, ``dv`` (dV apart), ``dq``, ``fused`` (the
Gluon backward; at q/k 128 its dK and dQ launch), ``fused_dv`` (the Gluon backward's dV launch at q/k 128) and
``dq_finish``.
"""

import dataclasses
from typing import Callable, Optional

import torch

from .. import common, fast_launch, gluon_support
from ..common import CompileTarget, cdiv, interpreting, padded
from .options import ThresholdOptions
from .tiles import (INTERPRETER_CONFIG, BackwardPlan, TileConfig, backward_configs, backward_skips, dq_atomic,
                    dq_configs, dv_configs, dv_pass_apart, forward_configs, forward_skips_products,
                    fused_paired_backward, skipping)
from .triton_backward import dkdv_kernel, dq_finish_kernel, dq_kernel, head_sums_kernel
from .triton_forward import threshold_attention_fwd_kernel
from .triton_lists import CELL, record_shape, tile_lists_kernel
from .triton_norms import inverse_norm_kernel

_chosen: dict[tuple, TileConfig] = {}


def _run(part: str, kernel, grid: tuple, args: tuple, kwargs: dict, target: Optional[CompileTarget]) -> object:
    """``kernel[grid](*args, **kwargs)`` through fast_launch, or compiled for ``target`` only; the compiled kernel."""
    if target is not None:
        return target.compile(part, kernel, grid, args, kwargs)
    return fast_launch.launch(kernel, grid, args, kwargs)


def _p_mode(p: float) -> int:
    return 1 if p == 1.0 else 2 if p == 2.0 else 0


def _candidates(key: tuple, candidates: list[TileConfig], tile: Optional[TileConfig],
                target: Optional[CompileTarget]) -> list[TileConfig]:
    """The tiles _launch tries, in order (common.tile_candidates, with this module's memory of chosen tiles)."""
    return common.tile_candidates(candidates, tile, target, _chosen, key, INTERPRETER_CONFIG)


def _launch(kernel: Callable, grid: Callable[[TileConfig], int],
            args_for: Callable[[TileConfig], tuple], candidates: list[TileConfig], key: tuple,
            constexprs: dict, tile: Optional[TileConfig], target: Optional[CompileTarget], rows: tuple = (),
            query_major: bool = False, skip_empty: bool = False) -> TileConfig:
    """Launch ``kernel`` (the part ``key[0]``) with ``tile``, else the remembered or first candidate that fits the
    GPU's shared memory (with a ``target``, the first, and nothing remembered). ``args_for`` builds the runtime
    arguments, which depend on the tile. The kernel takes the tile's ``tma`` as USE_TMA (dropped for this launch when
    the tensors ``rows`` are not tma_ready; checked only then) and, with ``query_major`` / ``skip_empty``, the tile's
    ``query_major`` / ``skip_empty`` as QUERY_MAJOR / SKIP_EMPTY (or'ed with ``constexprs``' SKIP_EMPTY if given)."""

    def one(chosen: TileConfig) -> TileConfig:
        cfg = dataclasses.replace(chosen, tma=False) if chosen.tma and not common.tma_ready(*rows) else chosen
        if cfg.tma and rows[0].is_cuda:
            common.bind_cuda_context(rows[0].device)
        layout = dict(USE_TMA=cfg.tma, **(dict(QUERY_MAJOR=cfg.query_major) if query_major else {}),
                      **(dict(SKIP_EMPTY=cfg.skip_empty or constexprs.get("SKIP_EMPTY", False))
                         if skip_empty else {}))
        _run(key[0], kernel, (grid(cfg),), args_for(cfg), dict(
            constexprs, **layout, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages), target)
        return cfg
    return common.first_fitting(candidates, one, tile=tile, target=target, chosen=_chosen, key=key,
                                interpreter_tile=INTERPRETER_CONFIG)[1]


def row_blocks(t: torch.Tensor, rows: int, width: int):
    """A tensor descriptor of the (B, H, T, d) tensor ``t`` in blocks of ``rows`` rows of one head, ``width`` wide,
    checked once per layout (common.row_block_descriptor)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return common.row_block_descriptor(TensorDescriptor, t, rows, width)


def _row_inputs(cfg: TileConfig, q1, k1, q2, k2, v, do=None) -> tuple:
    """The kernels' q1, k1, q2, k2, v (and dO) arguments: the tensors, or with ``cfg.tma`` descriptors
    of query-block (q, dO) and key-block (k, v) rows."""
    rows = (q1, k1, q2, k2, v) + ((do,) if do is not None else ())
    if not cfg.tma:
        return rows
    blocks = (cfg.block_m, cfg.block_n, cfg.block_m, cfg.block_n, cfg.block_n, cfg.block_m)
    return tuple(row_blocks(t, n, padded(t.shape[-1])) for t, n in zip(rows, blocks))


def key_inverse_norms(k1: torch.Tensor, k2: Optional[torch.Tensor],
                      target: Optional[CompileTarget] = None) -> tuple[torch.Tensor, ...]:
    """1 / max(||k_t||, 1e-12) per row of k1 (and k2) (B, H, T, d), as fp32 (B, H, T) contiguous."""
    B, H, T, d = k1.shape
    r1 = common.new_output((B, H, T), torch.float32, k1.device)
    r2 = common.new_output((B, H, T), torch.float32, k1.device) if k2 is not None else r1
    k2_ = k2 if k2 is not None else k1
    block_t = 32 if interpreting() else 64
    num_t = cdiv(T, block_t)
    _run("key_norms", inverse_norm_kernel, (B * H * num_t, 1 if k2 is None else 2),
         (k1, k2_, r1, r2, *k1.stride(), *k2_.stride(), H, T, num_t),
         dict(HEAD_D=d, BLOCK_T=block_t, BLOCK_D=padded(d)), target)
    return (r1, r2) if k2 is not None else (r1,)


def _common_constexprs(q1: torch.Tensor, v: torch.Tensor, two_views: bool, options: ThresholdOptions) -> dict:
    cast_f32 = interpreting() or q1.dtype == torch.float32
    return dict(HEAD_D=q1.shape[-1], HEAD_DV=v.shape[-1], BLOCK_D=padded(q1.shape[-1]),
                BLOCK_DV=padded(v.shape[-1]), TWO_VIEWS=two_views, NORMALIZE=options.normalize,
                CAUSAL=options.causal, P_MODE=_p_mode(options.p), CAST_F32=cast_f32,
                DOT_PREC="ieee" if cast_f32 else "tf32")


def new_record(q1: torch.Tensor, Tk: int) -> torch.Tensor:
    """A zero-filled record (triton_lists.py) for queries q1 (B, H, Tq, d) against Tk keys."""
    B, H, Tq, _ = q1.shape
    return torch.zeros(record_shape(B, H, Tq, Tk), dtype=torch.uint8, device=q1.device)


def forward(q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor, q2: Optional[torch.Tensor],
            k2: Optional[torch.Tensor], lam: Optional[torch.Tensor], beta: torch.Tensor, options: ThresholdOptions,
            record: Optional[bool] = None, skip_products: Optional[bool] = None, tile: Optional[TileConfig] = None,
            target: Optional[CompileTarget] = None) -> tuple[torch.Tensor, ...]:
    """Attention output (B, H, Tq, dv) in q's dtype, laid out like q1 (common.new_rows_like), and what the backward
    reuses: the inverse norms and the record of occupied cells.

    Returns (out, rq1, rk1, rq2, rk2, rec); an inverse norm that does not apply (no normalisation, or one
    view) is an empty fp32 tensor; ``rec`` is the uint8 record of triton_lists.py when ``record`` (default:
    tiles.skip_empty_tiles()), else an empty uint8 tensor. ``skip_products`` (default: the same) lets the kernel
    leave out the product with v of tiles without a survivor where tiles.forward_skips_products says it pays (and the
    Triton kernel wherever its tile's skip_empty asks). Where gluon_forward_fits the Gluon kernel runs, unless
    ``tile`` asks for a tile of the Triton kernel. With a ``target`` the kernels are compiled, not launched.
    """
    B, H, Tq, d = q1.shape
    Hkv, Tk, dv = k1.shape[1], k1.shape[2], v.shape[-1]
    two = q2 is not None
    record, skip_products = skipping(record), skipping(skip_products)
    rec = new_record(q1, Tk) if record else q1.new_empty(0, dtype=torch.uint8)
    rq1, rk1, rq2, rk2 = (q1.new_empty(0, dtype=torch.float32) for _ in range(4))
    if options.normalize:
        rks = key_inverse_norms(k1, k2, target)
        rk1 = rks[0]
        if two:
            rk2 = rks[1]
        # the forward kernel writes the queries' inverse norms
        rq1 = common.new_output((B, H, Tq), torch.float32, q1.device)
        rq2 = common.new_output((B, H, Tq), torch.float32, q1.device) if two else rq2
    out = common.new_rows_like(q1, dv)
    if tile is None and gluon_forward_fits(q1, k1, v, q2, k2, target) and gluon_support.launched(
            _gluon_failure, GLUON_KERNELS, lambda: _gluon_forward(
                q1, k1, v, q2, k2, out, rq1, rq2, rk1, rk2, lam, beta, rec, options,
                skip_products and forward_skips_products(True), target)):
        return out, rq1, rk1, rq2, rk2, rec
    consts = dict(_common_constexprs(q1, v, two, options), RECORD=record,
                  SKIP_EMPTY=skip_products and forward_skips_products(False))
    nM, nN = (rec.shape[2], rec.shape[3]) if record else (0, 0)
    rec_ = rec if record else out  # (never read without RECORD)
    # With one view the second view's arguments repeat the first's; the kernel never reads them.
    q2_, k2_, rq2_, rk2_, lam_ = (q2, k2, rq2, rk2, lam) if two else (q1, k1, rq1, rk1, beta)

    def grid(cfg: TileConfig) -> int:
        return cdiv(Tq, cfg.block_m) * B * H

    def args_for(cfg: TileConfig) -> tuple:
        return (*_row_inputs(cfg, q1, k1, q2_, k2_, v), out, rq1, rk1, rq2_, rk2_, lam_, beta,
                *q1.stride(), *k1.stride(), *q2_.stride(), *k2_.stride(), *v.stride(),
                *out.stride(), rec_, nM, nN, H, H // Hkv, Tq, Tk, B * H, cdiv(Tq, cfg.block_m),
                float(options.scale), float(options.p), 1.0 / d)

    key = ("fwd", d, dv, two, q1.dtype, tuple(consts.items()))
    candidates = forward_configs(d, dv, two, q1.element_size())
    _launch(threshold_attention_fwd_kernel, grid, args_for, candidates, key, consts, tile, target,
            rows=(q1, k1, q2_, k2_, v), skip_empty=True)
    return out, rq1, rk1, rq2, rk2, rec


class TileLists:
    """The backward's lists of occupied tiles (triton_lists.py) for one call, built from the forward's record ``rec``
    (B, H, ·, ·) for queries (B, H, Tq, ·) against Tk keys: ``prepare`` builds every list it is given in one
    compaction launch (a list "keys" and a list "queries" at most per launch), ``args`` a list not prepared when first
    asked for (a kernel that fell back to another tile)."""

    def __init__(self, rec: torch.Tensor, Tq: int, Tk: int, causal: bool, target: Optional[CompileTarget]):
        self.rec, self.Tq, self.Tk, self.causal, self.target = rec, Tq, Tk, causal, target
        self.built: dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor, int]] = {}

    def prepare(self, *wanted: tuple[str, int, int]) -> None:
        """Build the lists ("keys" or "queries", rows per tile, keys per tile) not built yet."""
        todo = {kind: [w for w in dict.fromkeys(wanted) if w[0] == kind and w not in self.built]
                for kind in ("keys", "queries")}
        while todo["keys"] or todo["queries"]:
            self._build(todo["keys"].pop(0) if todo["keys"] else None,
                        todo["queries"].pop(0) if todo["queries"] else None)

    def args(self, kind: str, block_m: int, block_n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(entries, counts, entries per list) of the list for a kernel tile of block_m rows x block_n keys."""
        self.prepare((kind, block_m, block_n))
        return self.built[(kind, block_m, block_n)]

    def _build(self, keys: Optional[tuple[str, int, int]], queries: Optional[tuple[str, int, int]]) -> None:
        B, H, nM, nN = self.rec.shape
        Tq, Tk, dev = self.Tq, self.Tk, self.rec.device
        parts = []  # per kind: (entries, counts, entries per list, blocks per head, block_m, block_n)
        for want in (keys, queries):
            if want is None:
                parts.append(None)
                continue
            kind, block_m, block_n = want
            by_key = kind == "keys"
            blocks = cdiv(Tk, block_n) if by_key else cdiv(Tq, block_m)
            cap = cdiv(Tq, block_m) if by_key else cdiv(Tk, block_n)
            entries = torch.empty(B * H * blocks * cap, dtype=torch.int32, device=dev)
            counts = torch.empty(2 * B * H * blocks, dtype=torch.int32, device=dev)
            parts.append((entries, counts, cap, blocks, block_m, block_n))
        some = next(part for part in parts if part is not None)
        absent = (some[0], some[1], 0, 0, CELL.value, CELL.value)  # a kind not asked for: no programs, never read
        (list_k, counts_k, cap_k, blocks_k, bm_k, bn_k), (list_q, counts_q, cap_q, blocks_q, bm_q, bn_q) = (
            part or absent for part in parts)
        programs_k = B * H * blocks_k
        _run("lists", tile_lists_kernel, (programs_k + B * H * blocks_q,),
             (self.rec, list_k, counts_k, list_q, counts_q, Tq, Tk, nM, nN, programs_k, max(blocks_k, 1), cap_k,
              max(blocks_q, 1), cap_q), dict(BM_K=bm_k, BN_K=bn_k, BM_Q=bm_q, BN_Q=bn_q, CAUSAL=self.causal,
                                            num_warps=4), self.target)
        for want, part in zip((keys, queries), parts):
            if part is not None:
                self.built[want] = part[:3]


def _list_args(lists: Optional[TileLists], kind: str, cfg: TileConfig, none: torch.Tensor) -> tuple:
    """A kernel's LIST, COUNTS, list_cap arguments: the list for its tile, or ``none`` (not read) without lists."""
    return lists.args(kind, cfg.block_m, cfg.block_n) if lists is not None else (none, none, 0)


def _key_block_launches(grid, args_for, rows, consts, dkdv_key, d, dv_dim, two, dtype, elem_bytes, atomic, need_dlam,
                        need_dbeta, apart, plan: BackwardPlan, target: Optional[CompileTarget]) -> None:
    """The Triton dK/dV kernel (with dQ by atomics when ``atomic``), and the dV launch when ``apart``."""
    _launch(dkdv_kernel, grid, args_for, backward_configs(d, dv_dim, two, elem_bytes), dkdv_key,
            dict(consts, DQ_ATOMIC=atomic, LAM_GRAD=need_dlam, BETA_GRAD=need_dbeta, WITH_DK=True,
                 WITH_DV=not apart), plan.dkdv_tile, target, rows=rows, query_major=True, skip_empty=True)
    if apart:
        _launch(dkdv_kernel, grid, lambda cfg: args_for(cfg, with_partials=False),
                dv_configs(d, dv_dim, two, elem_bytes), ("dv", d, dv_dim, two, dtype, tuple(consts.items())),
                dict(consts, DQ_ATOMIC=False, LAM_GRAD=False, BETA_GRAD=False, WITH_DK=False, WITH_DV=True),
                plan.dv_tile, target, rows=rows, query_major=True, skip_empty=True)


_gluon_failure: list[str] = []  # why a Gluon kernel failed to compile or launch here, once one has
GLUON_KERNELS = "the Gluon kernels"  # what the warning names when they cannot run (forward and backward alike)


def _gluon_fits(target: Optional[CompileTarget], q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor,
                q2: Optional[torch.Tensor], *rows: Optional[torch.Tensor], wide: bool = False) -> bool:
    """Two views, and gluon_support.fits (no Gluon kernel of this family has failed here)."""
    return q2 is not None and gluon_support.fits(target, _gluon_failure, q1, k1, v, *rows, wide=wide)


def gluon_backward_fits(do: torch.Tensor, q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor,
                        q2: Optional[torch.Tensor], k2: Optional[torch.Tensor],
                        target: Optional[CompileTarget] = None) -> bool:
    """Whether these inputs can take the fused Gluon backward (gluon_backward.py): at q/k 64, and at 128 (in two
    launches) while GLUON_BACKWARD_D128 is on."""
    return _gluon_fits(target, q1, k1, v, q2, q1, k1, q2, k2, v, do, wide=GLUON_BACKWARD_D128)


# the Gluon backward also at q/k 128 (v 128 or 256), in two launches (gluon_backward.passes); False sends q/k 128 to
# the Triton kernels
GLUON_BACKWARD_D128 = True

# the Gluon forward also at q/k 128 (v 128 or 256): 6-8% faster there than the Triton forward, and its float64 GPU
# test has passed (BENCHMARKS.md); False sends q/k 128 to the Triton forward
GLUON_FORWARD_D128 = True


def gluon_forward_fits(q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor, q2: Optional[torch.Tensor],
                       k2: Optional[torch.Tensor], target: Optional[CompileTarget] = None) -> bool:
    """Whether the forward takes the Gluon kernel (gluon_forward.py): at q/k 64, and at 128 unless GLUON_FORWARD_D128
    is off."""
    return _gluon_fits(target, q1, k1, v, q2, q1, k1, q2, k2, v, wide=GLUON_FORWARD_D128)


def _gluon_forward(q1, k1, v, q2, k2, out, rq1, rq2, rk1, rk2, lam, beta, rec, options: ThresholdOptions,
                   skip_products: bool = False, target: Optional[CompileTarget] = None) -> None:
    """Launch the Gluon forward; it marks ``rec`` unless that is empty, and leaves out the product with v of a
    warpgroup's empty tiles with ``skip_products``."""
    from . import gluon_forward as gf

    B, H, Tq, d = q1.shape
    Tk = k1.shape[2]
    record = rec.numel() > 0
    if q1.is_cuda:
        common.bind_cuda_context(q1.device)
    _run("fused_fwd", gf.paired_forward_kernel, (gf.grid(Tq, B, H),), (
        *gf.descriptors(q1, k1, q2, k2, v), out, rq1, rq2, rk1, rk2, lam, beta, rec if record else out,
        *(rec.shape[2:] if record else (0, 0)), *out.stride()[:3],
        H, Tq, Tk, B * H, cdiv(Tq, gf.BLOCK_M.value), float(options.scale), float(options.p), 1.0 / d), dict(
        HEAD_D=d, HEAD_DV=v.shape[-1], NORMALIZE=options.normalize, CAUSAL=options.causal,
        P_MODE=_p_mode(options.p), RECORD=record, SKIP_PRODUCTS=skip_products,
        BOUND=bool(gf.BOUND and skip_products and options.scale > 0), SLACK=float(gf.SLACK), KEYS=gf.keys_per_stage(d),
        STAGES=gf.STAGES, num_warps=gf.NUM_WARPS.value // 2, maxnreg=gf.MAX_REGISTERS), target)


def _gluon_backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, lam, beta, options: ThresholdOptions, need_dlam,
                    need_dbeta, dk1, dk2, dv, dq_acc, dq2_acc, lists: Optional[TileLists] = None,
                    target: Optional[CompileTarget] = None) -> torch.Tensor:
    """Launch the fused Gluon backward (over the query tiles of ``lists`` only, when given): one launch at q/k 64, and at
    q/k 128 one for dK1, dK2 and dQ and one for dV (gluon_backward.passes); returns dlam's and dbeta's partial sums,
    (2, B, H, partials per key block). The parts are named ``fused`` and (dV apart) ``fused_dv``."""
    from . import gluon_backward as gb

    B, H, Tq, d = q1.shape
    Tk, dv_dim = k1.shape[2], v.shape[-1]
    nb = cdiv(Tk, gb.BLOCK_N.value)
    partials = common.new_output((2, B, H, gb.PARTIALS_PER_BLOCK.value * nb), torch.float32, q1.device)
    entries, counts, cap = (lists.args("keys", gb.BLOCK_M.value, gb.BLOCK_N.value) if lists is not None
                            else (partials, partials, 0))
    if q1.is_cuda:
        common.bind_cuda_context(q1.device)
    args = (*gb.descriptors(q1, k1, q2, k2, v, do), *gb.dq_descriptors(dq_acc, dq2_acc), rq1, rk1, rq2, rk2, lam, beta,
            dk1, dk2, dv,
            partials[0], partials[1], *dk1.stride()[:3], *dk2.stride()[:3], *dv.stride()[:3], entries, counts, cap,
            H, Tq, Tk, B * H, nb, float(options.scale), float(options.p), 1.0 / d)
    for with_dk, with_dv, stages in gb.passes(d, dv_dim):
        _run("fused" if with_dk else "fused_dv", gb.paired_backward_kernel, (gb.grid(Tk, B, H),), args, dict(
            HEAD_D=d, HEAD_DV=dv_dim, NORMALIZE=options.normalize, CAUSAL=options.causal, P_MODE=_p_mode(options.p),
            LAM_GRAD=need_dlam and with_dk, BETA_GRAD=need_dbeta and with_dk, USE_LIST=lists is not None,
            WITH_DK=with_dk, WITH_DV=with_dv, STAGES=stages, num_warps=gb.NUM_WARPS.value // 2,
            maxnreg=gb.MAX_REGISTERS), target)
    return partials


def backward(do: torch.Tensor, q1: torch.Tensor, k1: torch.Tensor, v: torch.Tensor,
             q2: Optional[torch.Tensor], k2: Optional[torch.Tensor], rq1: torch.Tensor,
             rk1: torch.Tensor, rq2: torch.Tensor, rk2: torch.Tensor, rec: torch.Tensor, lam: Optional[torch.Tensor],
             beta: torch.Tensor, options: ThresholdOptions, need_dlam: bool, need_dbeta: bool, deterministic: bool,
             plan: Optional[BackwardPlan] = None, target: Optional[CompileTarget] = None,
             into: Optional[tuple[torch.Tensor, ...]] = None) -> tuple[Optional[torch.Tensor], ...]:
    """Gradients (dq1, dk1, dv, dq2, dk2, dlam, dbeta) for dO = do (B, H, Tq, dv).

    rq*, rk*, rec: what the forward returned beside its output. dq*/dk*/dv are in the inputs' dtype, laid out like them
    (common.new_rows_like); dlam, dbeta are (H,) fp32. Entries that do not apply are None. With a record (``rec`` not
    empty) every kernel visits only the tiles it marks (one compaction launch builds their lists), unless
    ``plan.skip`` is False. dQ comes from its own atomic-free kernel when ``deterministic``; otherwise ``plan``
    (default: tiles.py's choices, see BackwardPlan) says whether two views take the fused Gluon kernel where
    gluon_backward_fits, whether the Triton dK/dV kernel accumulates dQ with atomics, whether dV is then computed in
    a launch of its own, and which tiles the Triton kernels take. With a ``target`` the kernels are compiled, not
    launched. ``into``: (dq1, dk1, dq2, dk2) (the last two None with one view) to write the gradients into instead of
    new tensors, of the inputs' shapes and dtype with the last dimension contiguous (e.g. views of a pair's whole
    gradient, autograd.paired_threshold_attention_triton).
    """
    B, H, Tq, d = q1.shape
    Hkv, Tk, dv_dim = k1.shape[1], k1.shape[2], v.shape[-1]
    two = q2 is not None
    dev = q1.device
    plan = plan if plan is not None else BackwardPlan()
    need_dlam = need_dlam and two
    if into is None:
        into = tuple(common.new_rows_like(x, d) if x is not None else None for x in (q1, k1, q2, k2))
    dq1, dk1, dq2, dk2 = into
    dv = common.new_rows_like(v, dv_dim)
    atomic_dq = dq_atomic(two) if plan.atomic_dq is None else plan.atomic_dq
    atomic = atomic_dq and not deterministic
    apart = (dv_pass_apart(two) if plan.dv_apart is None else plan.dv_apart) and atomic
    fused = fused_paired_backward(d, dv_dim) if plan.fused is None else plan.fused
    if fused and not deterministic and two:
        do = gluon_support.readable_gradient(do, target, _gluon_failure, q1, k1, v, q1, k1, q2, k2, v)
    fused = fused and not deterministic and gluon_backward_fits(do, q1, k1, v, q2, k2, target)
    atomic = atomic or fused
    skip = rec.numel() > 0 and (backward_skips(fused) if plan.skip is None else plan.skip)
    lists = TileLists(rec, Tq, Tk, options.causal, target) if skip else None
    no_list = q1.new_empty(0, dtype=torch.int32) if lists is None else None  # (the kernels read no list then)
    # the fp32 dq' buffers that the atomic paths and the fused Gluon backward add into, one zero fill for both views
    dq_bufs = (torch.zeros((2 if two else 1, B, H, Tq, d), dtype=torch.float32, device=dev) if atomic
               else q1.new_empty((1, 0), dtype=torch.float32))
    dq_acc = dq_bufs[0]
    dq2_acc = dq_bufs[1] if atomic and two else dq_acc
    q2_, k2_, rq2_, rk2_, lam_ = (q2, k2, rq2, rk2, lam) if two else (q1, k1, rq1, rk1, beta)
    # dlam's and dbeta's partial sums, (2, B, H, key blocks); their number depends on the tile, so the launch fills it
    partials: list[Optional[torch.Tensor]] = [None]
    need_partials = need_dlam or need_dbeta

    def grid(cfg: TileConfig) -> int:
        return cdiv(Tk, cfg.block_n) * B * Hkv

    def args_for(cfg: TileConfig, with_partials: bool = True) -> tuple:
        nb = cdiv(Tk, cfg.block_n)
        if with_partials and need_partials:
            partials[0] = common.new_output((2, B, H, nb), torch.float32, dev)
        lam_part, beta_part = partials[0] if with_partials and need_partials else (dq_acc, dq_acc)
        return (*_row_inputs(cfg, q1, k1, q2_, k2_, v, do), rq1, rk1, rq2_, rk2_, lam_, beta,
                dk1, dk2 if two else dk1, dv, dq_acc, dq2_acc,
                lam_part, beta_part,
                *q1.stride(), *k1.stride(), *q2_.stride(), *k2_.stride(), *v.stride(), *do.stride(),
                *dk1.stride()[:3], *(dk2 if two else dk1).stride()[:3], *dv.stride()[:3],
                *_list_args(lists, "keys", cfg, no_list),
                H, H // Hkv, Tq, Tk, B * Hkv, nb, float(options.scale), float(options.p), 1.0 / d)

    rows = (q1, k1, q2_, k2_, v, do)
    if fused:
        def launch_fused() -> None:
            partials[0] = _gluon_backward(do, q1, k1, v, q2, k2, rq1, rk1, rq2, rk2, lam, beta, options, need_dlam,
                                          need_dbeta, dk1, dk2, dv, dq_acc, dq2_acc, lists, target)
        fused = gluon_support.launched(_gluon_failure, GLUON_KERNELS, launch_fused)
    consts = dq_key = None  # the Triton kernels' constexprs, built only when they launch
    if not fused:
        consts = dict(_common_constexprs(q1, v, two, options), USE_LIST=skip)
        dkdv_key = ("dkdv", d, dv_dim, two, q1.dtype, tuple(consts.items()), atomic, need_dlam, need_dbeta, apart)
        dq_key = ("dq", d, dv_dim, two, q1.dtype, tuple(consts.items()))
        if lists is not None:  # the lists of the tiles the kernels will most likely take, in one launch
            first = _candidates(dkdv_key, backward_configs(d, dv_dim, two, q1.element_size()), plan.dkdv_tile,
                                target)[0]
            wanted = [("keys", first.block_m, first.block_n)]
            if not atomic:
                first = _candidates(dq_key, dq_configs(d, dv_dim, two, q1.element_size()), plan.dq_tile, target)[0]
                wanted.append(("queries", first.block_m, first.block_n))
            lists.prepare(*wanted)
        _key_block_launches(grid, args_for, rows, consts, dkdv_key, d, dv_dim, two, q1.dtype, q1.element_size(),
                            atomic, need_dlam, need_dbeta, apart, plan, target)

    dlam = dbeta = None
    if atomic:
        block = 32 if interpreting() else 64
        nm = cdiv(Tq, block)
        dq2_ = dq2 if two else dq1
        sums, programs, dlam, dbeta = (_head_sums_args(partials[0], need_dlam, need_dbeta) if need_partials
                                       else ((dq_acc, dq_acc, dq_acc, 0, 0), 0, None, None))  # (no program reads it)
        _run("dq_finish", dq_finish_kernel, (B * H * nm + programs, 2 if two else 1), (
            dq_bufs, q1, rq1, dq1, q2_, rq2_, dq2_, *q1.stride(), *dq1.stride()[:3], *q2_.stride(), *dq2_.stride()[:3],
            B, H, Tq, nm, float(options.p), *sums),
            dict(HEAD_D=d, BLOCK_M=block, BLOCK_D=padded(d), NORMALIZE=options.normalize, SUM_BLOCK=HEAD_SUMS_BLOCK),
            target)
    else:
        def dq_grid(cfg: TileConfig) -> int:
            return cdiv(Tq, cfg.block_m) * B * H

        def dq_args(cfg: TileConfig) -> tuple:
            return (*_row_inputs(cfg, q1, k1, q2_, k2_, v, do), rq1, rk1, rq2_, rk2_, lam_, beta, dq1,
                    dq2 if two else dq1, *q1.stride(), *k1.stride(), *q2_.stride(), *k2_.stride(),
                    *v.stride(), *do.stride(), *dq1.stride()[:3], *(dq2 if two else dq1).stride()[:3],
                    *_list_args(lists, "queries", cfg, no_list), H, H // Hkv, Tq, Tk, B * H,
                    cdiv(Tq, cfg.block_m), float(options.scale), float(options.p), 1.0 / d)

        _launch(dq_kernel, dq_grid, dq_args, dq_configs(d, dv_dim, two, q1.element_size()), dq_key, consts,
                plan.dq_tile, target, rows=rows, skip_empty=True)

        if need_partials:
            dlam, dbeta = _head_sums(partials[0], need_dlam, need_dbeta, target)
    return dq1, dk1, dv, dq2, dk2, dlam, dbeta


HEAD_SUMS_BLOCK = 128  # partial sums a head_sums program adds per step (one compiled kernel for every length)


def _head_sums_args(partials: torch.Tensor, need_dlam: bool, need_dbeta: bool
                    ) -> tuple[tuple, int, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """What adding the backward kernels' partial sums (2, B, H, key blocks) into dlam and dbeta takes: ((partials,
    out_lam, out_beta, first row, key blocks), programs, dlam, dbeta), dlam and dbeta (H,) fp32 where asked for (at
    least one is; rows not asked for are never read)."""
    _, _, H, nb = partials.shape
    dlam = common.new_output((H,), torch.float32, partials.device) if need_dlam else None
    dbeta = common.new_output((H,), torch.float32, partials.device) if need_dbeta else None
    out_lam = dlam if dlam is not None else dbeta
    out_beta = dbeta if dbeta is not None else dlam
    programs = (int(need_dlam) + int(need_dbeta)) * H
    return (partials, out_lam, out_beta, 0 if need_dlam else 1, nb), programs, dlam, dbeta


def _head_sums(partials: torch.Tensor, need_dlam: bool, need_dbeta: bool,
               target: Optional[CompileTarget]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(dlam, dbeta) from the partial sums (_head_sums_args) in one launch of head_sums_kernel: the paths whose dQ
    needs no dq_finish_kernel (which does the same work in its own launch otherwise)."""
    _, B, H, _ = partials.shape
    (p, out_lam, out_beta, first, nb), programs, dlam, dbeta = _head_sums_args(partials, need_dlam, need_dbeta)
    _run("head_sums", head_sums_kernel, (programs,), (p, out_lam, out_beta, first, B, H, nb),
         dict(BLOCK=HEAD_SUMS_BLOCK, num_warps=4), target)
    return dlam, dbeta
