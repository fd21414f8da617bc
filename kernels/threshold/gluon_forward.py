"""The paired (two-view) forward of threshold attention as one Gluon kernel for Hopper (sm_90), in the form of the
fused backward (gluon_backward.py). launch.forward takes it wherever gluon_forward_fits: it is faster than the Triton
forward (BENCHMARKS.md, "Launches without Triton's binding, and the paired forward in Gluon").

One program per 128 query rows of one head, three partitions:

- a one-warp loader: the program's q1, q2 rows (two tiles of 64 per view) once, then k1, k2, v in blocks of
  KEYS keys (keys_per_stage) through a ring of STAGES stages (copy engine, mbarriers);
- two warpgroups, each over 64 of the rows: per key block both views' scores (two products issued together), the
  weights W = max(u1, 0)^p - lam max(u2, 0)^p of u = s f_i rk'_j - tau_i (f_i = scale r_i; triton_math.key_scores),
  O += W v (a third product, W from registers).

Scores in units of the row factor. The kernel issues more instructions per tile than its products take cycles
(benchmarks.instructions), so each score costs as few as it can: with f_i > 0, u / f_i = s rk'_j - tau_i / f_i is one
fused multiply-add (u itself took a product and a multiply-add), and W = f1_i^p (max(u1', 0)^p - c_i max(u2', 0)^p)
with u1' = u1 / f1_i, u2' = u2 / f2_i and c_i = lam (f2_i / f1_i)^p, so f1_i^p scales each row of O once, after the
loop. A weight's sign, and so the record and which tiles are skipped, is u's up to rounding (a weight within a rounding
of zero may fall on the other side); the values differ from the Triton forward's by roundings (tau_i / f_i, the
ratio, the scaling), within the tolerance the float64 tests allow. c_i and
f1_i^p are clamped to finite values, so that a zero weight stays zero when a query row's norm is far below the
other view's.

The warpgroups share the ring (a stage is refilled once both have released it) and nothing else, so one's
elementwise work can run under the other's products. Only key blocks crossing the diagonal or Tk take the
causal/edge mask (two loops, as the Triton forward). Same contract as triton_forward.threshold_attention_fwd_kernel
with TWO_VIEWS: writes O and, when normalising, RQ1, RQ2 (the queries' inverse norms); RK1, RK2 are inputs. Only
16-bit inputs, one key/value head per query head, rows readable by tensor descriptors, q/k head dimension 64 with v a
power of two up to 128, or 128 with v of 128 or 256 in 32-key ring stages (launch.gluon_forward_fits; 6-8% faster
there than the Triton forward, which launch.GLUON_FORWARD_D128 = False takes instead).

Exact skipping: a warpgroup's tile of 64 rows x KEYS keys lies in one cell of the record (triton_lists.py; at KEYS =
32 two tiles share a cell). The tile's largest u in either view, reduced over the warpgroup's four warps, decides
both: RECORD marks the cell (one store) where it is positive, and with SKIP_PRODUCTS a tile without a survivor leaves
out the weights and the product with v (a branch on a value the four warps agree on; there is no software pipeline
here for it to break).

A bound before the exact scores (BOUND, where SKIP_PRODUCTS is on, in the blocks no mask touches): forming u exactly
costs about two fp32 operations per score and view (u', the maxima), so a tile whose products are skipped still
costs most of a scored one. Each row's largest score bounds every u' of the row: with m_i = max_j fl(s_ij rk'_j)
(without normalisation rk' is 1), s_ij rk'_j <= m_i (1 + 2^-24), from the same fp32 scores the exact path reads: a
product and a maximum per score and view. The kernel tests max(m_i, 0) * SLACK - tau_i / f_i < 0 for every row in
both views (launch.py asks for it only with scale > 0, so f_i > 0); SLACK = 1 + 2^-20 exceeds the roundings of the
test, so a cleared tile's exact u' = fl(s rk' - tau / f), rounded once from a negative value, would be <= 0 in every
element: no weight survives, so it needs no record mark, weights or product. Any other tile takes the exact
path above, unchanged, so outputs and records are the same bits with the test and without it. A tile the bound cannot
clear pays for both, so a warpgroup tries the bound only on a tile after one without a survivor: on dense inputs, once
per row of tiles. (A looser form, the row's largest score times the block's largest rk', cleared from 2% to 78% of a
trained model's unmasked tiles per layer where this form cleared every empty one, and was slower: BENCHMARKS.md.)
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from ..common import cdiv
from ..gluon_tiles import (key_end, operand, query_block, release_stages, ring_barriers, row_descriptors,
                           row_key_blocks, store_rows, wgmma_layout)
from .gluon_backward import _power
from .tiles import TileConfig
from .triton_lists import CELL
from .triton_math import NORM_EPS

ROWS = gl.constexpr(64)        # query rows per warpgroup
BLOCK_M = gl.constexpr(128)    # query rows per program (two warpgroups)
BLOCK_N = 64                   # keys per ring stage at d = 64, launched as the kernel's KEYS (keys_per_stage)
STAGES = 2                     # depth of the key-side ring, launched as the kernel's STAGES (an attribute: try others)
NUM_WARPS = gl.constexpr(8)    # compute warps: two warpgroups, each its own partition (the launch names the first's 4)
BOUND = True                   # launched as the kernel's BOUND (with skip_products): the bound before the exact scores
SLACK = 1.0 + 2.0 ** -20       # launched as the kernel's SLACK: covers the bound's roundings (module docstring)
FLT_MAX = gl.constexpr(3.4028234663852886e38)
MAX_REGISTERS = 168            # per thread over the 12 warps allocated: the compute warps get 240
TILE = TileConfig(BLOCK_M.value, BLOCK_N, NUM_WARPS.value, STAGES, tma=True)  # the d = 64 default, for tables and logs
assert ROWS.value == CELL.value and CELL.value % BLOCK_N == 0  # a warpgroup's rows are one row of record cells


def keys_per_stage(head_d: int) -> int:
    """Keys per ring stage (the kernel's KEYS): 64 at d = 64; 32 at d = 128, where a v of 256 holds 128 accumulator
    registers per thread and 64-key score tiles spilled (ptxas, sm_90). Two 32-key blocks mark the same record cell."""
    return BLOCK_N if head_d <= 64 else 32


@gluon.jit
def _loader_partition(q1_desc, k1_desc, q2_desc, k2_desc, v_desc, q1_buf, q2_buf, k1_ring, k2_ring, v_ring,
                      q_bar, ready, empty, b, h, m0, n_blocks, KEYS: gl.constexpr, STAGES: gl.constexpr):
    """The program's query rows once, then key block j into stage j % STAGES once both warpgroups released it."""
    mbarrier.expect(q_bar, 2 * (q1_desc.block_type.nbytes + q2_desc.block_type.nbytes))
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(q1_desc, [b, h, m0 + w * ROWS, 0], q_bar, q1_buf.index(w))
        tma.async_copy_global_to_shared(q2_desc, [b, h, m0 + w * ROWS, 0], q_bar, q2_buf.index(w))
    for j in range(n_blocks):
        stage = j % STAGES
        mbarrier.wait(empty.index(stage), ((j // STAGES) & 1) ^ 1)
        bar = ready.index(stage)
        mbarrier.expect(bar, k1_desc.block_type.nbytes + k2_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k1_desc, [b, h, j * KEYS, 0], bar, k1_ring.index(stage))
        tma.async_copy_global_to_shared(k2_desc, [b, h, j * KEYS, 0], bar, k2_ring.index(stage))
        tma.async_copy_global_to_shared(v_desc, [b, h, j * KEYS, 0], bar, v_ring.index(stage))


@gluon.jit
def _row_factor(q_s, RQh, offs_m, Tq, scale, NORMALIZE: gl.constexpr, HEAD_D: gl.constexpr,
                ROW_L: gl.constexpr):
    """scale / max(||q_i||, eps) for the warpgroup's rows (triton_math.inverse_row_norms), the inverse norm stored
    for the backward; scale alone without normalisation."""
    if NORMALIZE:
        Q_REG: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        q = q_s.load(Q_REG).to(gl.float32)
        r = 1.0 / gl.maximum(gl.sqrt(gl.sum(q * q, axis=1)), NORM_EPS)
        r = gl.convert_layout(r, ROW_L)
        gl.store(RQh + offs_m, r, mask=offs_m < Tq)
        f = r * scale
    else:
        f = gl.full([ROWS], scale, gl.float32, layout=ROW_L)
    return f


@gluon.jit
def _key_block(acc, hit, rk1, rk2, j, q1_s, q2_s, k1_ring, k2_ring, v_ring, ready, empty, t1, t2, c, p, pos,
               bh, RK1, RK2, Tk, zero_s, REC_row, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr, NORMALIZE: gl.constexpr,
               CAUSAL: gl.constexpr, P_MODE: gl.constexpr, MASKED: gl.constexpr, RECORD: gl.constexpr,
               SKIP_PRODUCTS: gl.constexpr, BOUND: gl.constexpr, SLACK: gl.constexpr, S_L: gl.constexpr,
               O_L: gl.constexpr, KEYS: gl.constexpr, STAGES: gl.constexpr):
    """Key block j (ring stage j % STAGES): both views' scores, W, acc += W v; the stage released after. MASKED:
    keys past Tk or (CAUSAL) after a row's position are zeroed (blocks crossing the diagonal or Tk). RECORD: cell j
    of the warpgroup's row of record cells (REC_row) is marked if a weight survived; SKIP_PRODUCTS: W and the product
    are left out when none did. BOUND (with SKIP_PRODUCTS, unmasked blocks): where the warpgroup's previous
    tile had no survivor (not hit), a bound from the scores' row maxima is tested first (_bound_clears) and a tile it
    clears is done with, unscored and unmarked. rk1, rk2: this block's inverse key norms, read a block ahead where
    HEAD_DV <= 128 (with a v of 256 the registers they hold through a block spill). Returns acc, whether this tile had
    a survivor (hit passed on unchanged without BOUND) and the next block's inverse key norms (this one's, unread, with
    a v of 256)."""
    cols = j * KEYS + gl.arange(0, KEYS, layout=gl.SliceLayout(0, S_L))
    key_ok = cols < Tk
    if HEAD_DV <= 128:
        # the next block's, read now: a whole block's time hides their latency, which the block's products did not
        # (BENCHMARKS.md, "The forward's bound before the exact scores")
        rk1_next, rk2_next = _key_norms(RK1, RK2, bh, Tk, j + 1, NORMALIZE, KEYS, S_L)
    else:
        rk1, rk2 = _key_norms(RK1, RK2, bh, Tk, j, NORMALIZE, KEYS, S_L)
        rk1_next = rk1
        rk2_next = rk2
    stage = j % STAGES
    mbarrier.wait(ready.index(stage), (j // STAGES) & 1)
    k1_s = operand(k1_ring.index(stage), KEYS, HEAD_D)
    k2_s = operand(k2_ring.index(stage), KEYS, HEAD_D)
    v_s = operand(v_ring.index(stage), KEYS, HEAD_DV)
    s1_t = warpgroup_mma(q1_s, k1_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s2_t = warpgroup_mma(q2_s, k2_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s1, s2 = warpgroup_mma_wait(0, deps=[s1_t, s2_t])
    gl.static_assert(not BOUND or SKIP_PRODUCTS, "the bound clears tiles whose products are skipped")
    if not BOUND:
        acc, _ = _scored_tile(acc, s1, s2, t1, t2, rk1, rk2, c, p, pos, cols, key_ok, v_s, Tk, REC_row, j,
                              NORMALIZE, CAUSAL, P_MODE, MASKED, RECORD, SKIP_PRODUCTS, O_L, KEYS)
    else:
        # the bound is tried only after a tile without a survivor: where tiles are occupied in runs (dense inputs:
        # all of them) it would seldom clear and cost its reductions on top of the exact path
        # (both branches of a run-time `if` must give a run-time value: `not hit` is False there, `not clears` too)
        if hit:
            clears = not hit
        else:
            clears = _bound_clears(s1, s2, t1, t2, rk1, rk2, pos, Tk, NORMALIZE, SLACK)
        if clears:
            hit = not clears
        else:
            acc, hit = _scored_tile(acc, s1, s2, t1, t2, rk1, rk2, c, p, pos, cols, key_ok, v_s, Tk, REC_row,
                                    j, NORMALIZE, CAUSAL, P_MODE, MASKED, RECORD, SKIP_PRODUCTS, O_L, KEYS)
    # every product reading this stage has completed (synchronous): release it
    mbarrier.arrive(empty.index(stage), count=1)
    return acc, hit, rk1_next, rk2_next


@gluon.jit
def _key_norms(RK1, RK2, bh, Tk, j, NORMALIZE: gl.constexpr, KEYS: gl.constexpr, S_L: gl.constexpr):
    """Both views' inverse key norms of key block j (0 past Tk); zeros without normalisation (unread)."""
    cols = j * KEYS + gl.arange(0, KEYS, layout=gl.SliceLayout(0, S_L))
    if NORMALIZE:
        rk1 = gl.load(RK1 + bh * Tk + cols, mask=cols < Tk, other=0.0)
        rk2 = gl.load(RK2 + bh * Tk + cols, mask=cols < Tk, other=0.0)
    else:
        rk1 = gl.zeros([KEYS], gl.float32, layout=gl.SliceLayout(0, S_L))
        rk2 = gl.zeros([KEYS], gl.float32, layout=gl.SliceLayout(0, S_L))
    return rk1, rk2


@gluon.jit
def _bound_clears(s1, s2, t1, t2, rk1, rk2, pos, Tk, NORMALIZE: gl.constexpr, SLACK: gl.constexpr):
    """Whether every u of an unmasked tile is negative, from each row's largest score (module docstring: "A bound
    before the exact scores"): max(m_i, 0) * SLACK - tau_i / f_i < 0 in both views for every row (t1, t2 = tau / f;
    rows past Tq count none), with m_i = max_j s_ij rk'_j (without normalisation rk' is 1). A value the warpgroup's
    four warps agree on."""
    if NORMALIZE:
        m1 = gl.max(s1 * rk1[None, :], axis=1)
        m2 = gl.max(s2 * rk2[None, :], axis=1)
    else:
        m1 = gl.max(s1, axis=1)
        m2 = gl.max(s2, axis=1)
    b1 = gl.maximum(m1, 0.0) * SLACK - t1
    b2 = gl.maximum(m2, 0.0) * SLACK - t2
    top = gl.where(pos < Tk, gl.maximum(b1, b2), -1.0)
    return gl.max(top, axis=0) < 0.0


@gluon.jit
def _scored_tile(acc, s1, s2, t1, t2, rk1, rk2, c, p, pos, cols, key_ok, v_s, Tk, REC_row, j,
                 NORMALIZE: gl.constexpr, CAUSAL: gl.constexpr, P_MODE: gl.constexpr, MASKED: gl.constexpr,
                 RECORD: gl.constexpr, SKIP_PRODUCTS: gl.constexpr, O_L: gl.constexpr, KEYS: gl.constexpr):
    """The tile's exact u in both views, its record cell and acc + W v (_key_block's MASKED, RECORD,
    SKIP_PRODUCTS). Returns acc and whether a weight survived (with neither RECORD nor SKIP_PRODUCTS, not found:
    True)."""
    if NORMALIZE:
        # one rounding (a fused multiply-add, not the bound's product followed by a subtraction)
        u1 = gl.fma(s1, gl.broadcast(rk1[None, :], s1)[0], gl.broadcast(-t1[:, None], s1)[0])
        u2 = gl.fma(s2, gl.broadcast(rk2[None, :], s2)[0], gl.broadcast(-t2[:, None], s2)[0])
    else:
        u1 = s1 - t1[:, None]
        u2 = s2 - t2[:, None]
    if MASKED:
        if CAUSAL:
            keep = key_ok[None, :] & (cols[None, :] <= pos[:, None])
        else:
            keep = key_ok[None, :] & (pos >= 0)[:, None]
        u1 = gl.where(keep, u1, 0.0)
        u2 = gl.where(keep, u2, 0.0)
    if RECORD or SKIP_PRODUCTS:
        # the tile's largest u (rows past Tq count none): one value the warpgroup's four warps agree on, which both
        # marks the cell (one store for the tile) and decides the product
        top = gl.where(pos < Tk, gl.max(gl.maximum(u1, u2), axis=1), 0.0)
        hit = gl.max(top, axis=0) > 0.0
        if hit:
            if RECORD:
                gl.store(REC_row + (j * KEYS) // CELL, 1)
            if SKIP_PRODUCTS:
                acc = _weighted_values(acc, u1, u2, v_s, c, p, P_MODE, O_L)
        if not SKIP_PRODUCTS:
            acc = _weighted_values(acc, u1, u2, v_s, c, p, P_MODE, O_L)
    else:
        acc = _weighted_values(acc, u1, u2, v_s, c, p, P_MODE, O_L)
        hit = True
    return acc, hit


@gluon.jit
def _weighted_values(acc, u1, u2, v_s, c, p, P_MODE: gl.constexpr, O_L: gl.constexpr):
    """acc + W' v with W' = max(u1, 0)^p - c_i max(u2, 0)^p rounded to v's dtype (a synchronous product); u1, u2 and
    c are _warpgroup_partition's, in units of view 1's row factor."""
    w = (_power(gl.maximum(u1, 0.0), p, P_MODE) - c[:, None] * _power(gl.maximum(u2, 0.0), p, P_MODE)).to(v_s.dtype)
    return warpgroup_mma(gl.convert_layout(w, gl.DotOperandLayout(0, O_L, 2)), v_s, acc)


@gluon.jit
def _warpgroup_partition(W: gl.constexpr, smem, ptrs, scalars, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr,
                         NORMALIZE: gl.constexpr, CAUSAL: gl.constexpr, P_MODE: gl.constexpr, RECORD: gl.constexpr,
                         SKIP_PRODUCTS: gl.constexpr, BOUND: gl.constexpr, SLACK: gl.constexpr, KEYS: gl.constexpr,
                         STAGES: gl.constexpr):
    """Warpgroup W's 64 rows: every key block up to its last visible key, then O stored; the blocks past that (the
    other warpgroup's) are only released."""
    q1_buf, q2_buf, k1_ring, k2_ring, v_ring, q_bar, ready, empty = smem
    O, RQ1, RQ2, RK1, RK2, LAM, BETA, REC = ptrs
    so_b, so_h, so_t, b, h, m0, H, Tq, Tk, n_blocks, scale, p, inv_d, nM, nN = scalars
    S_L: gl.constexpr = wgmma_layout(KEYS)
    O_L: gl.constexpr = wgmma_layout(HEAD_DV)
    ROW_L: gl.constexpr = gl.SliceLayout(1, S_L)
    r0 = m0 + W * ROWS
    offs_m = r0 + gl.arange(0, ROWS, layout=ROW_L)
    pos = offs_m + (Tk - Tq)
    bh = b * H + h
    # key blocks every row of the warpgroup sees whole (no mask), then the ones crossing the diagonal or Tk
    full, my_blocks = row_key_blocks(r0, ROWS, Tq, Tk, KEYS, CAUSAL)
    lam = gl.load(LAM + h)
    tau = gl.load(BETA + h) * gl.sqrt(2.0 * gl.log((pos + 1).to(gl.float32)) * inv_d)  # triton_math.threshold_gain
    mbarrier.wait(q_bar, phase=0)
    q1_s = operand(q1_buf.index(W), ROWS, HEAD_D)
    q2_s = operand(q2_buf.index(W), ROWS, HEAD_D)
    f1 = _row_factor(q1_s, RQ1 + bh * Tq, offs_m, Tq, scale, NORMALIZE, HEAD_D, ROW_L)
    f2 = _row_factor(q2_s, RQ2 + bh * Tq, offs_m, Tq, scale, NORMALIZE, HEAD_D, ROW_L)
    # Scores in units of view 1's row factor f1 > 0 (module docstring, "Scores in units of the row factor"):
    # u / f1 = s rk' - tau / f1, one multiply-add per score; W = f1^p (max(u1', 0)^p - c max(u2', 0)^p) with
    # c = lam (f2 / f1)^p, and f1^p scales O once. Both clamped to finite values, so that a 0 weight stays 0.
    t1 = tau / f1
    t2 = tau / f2
    c = gl.minimum(gl.maximum(lam * _power(f2 / f1, p, P_MODE), -FLT_MAX), FLT_MAX)
    g1 = gl.minimum(_power(f1, p, P_MODE), FLT_MAX)
    acc = gl.zeros([ROWS, HEAD_DV], gl.float32, layout=O_L)
    zero_s = gl.zeros([ROWS, KEYS], gl.float32, layout=S_L)
    REC_row = REC + (bh.to(gl.int64) * nM + r0 // ROWS) * nN  # the record's cells of these rows
    hit = bh < 0  # no survivor before the first tile (a run-time False the loop carries)
    rk1, rk2 = _key_norms(RK1, RK2, bh, Tk, 0, NORMALIZE, KEYS, S_L)
    for j in range(0, full):
        acc, hit, rk1, rk2 = _key_block(acc, hit, rk1, rk2, j, q1_s, q2_s, k1_ring, k2_ring, v_ring, ready, empty,
                                        t1, t2, c, p, pos, bh, RK1, RK2, Tk, zero_s, REC_row, HEAD_D, HEAD_DV,
                                        NORMALIZE, CAUSAL, P_MODE, False, RECORD, SKIP_PRODUCTS, BOUND, SLACK, S_L,
                                        O_L, KEYS, STAGES)
    for j in range(full, my_blocks):
        acc, hit, rk1, rk2 = _key_block(acc, hit, rk1, rk2, j, q1_s, q2_s, k1_ring, k2_ring, v_ring, ready, empty,
                                        t1, t2, c, p, pos, bh, RK1, RK2, Tk, zero_s, REC_row, HEAD_D, HEAD_DV,
                                        NORMALIZE, CAUSAL, P_MODE, True, RECORD, SKIP_PRODUCTS, False, SLACK, S_L,
                                        O_L, KEYS, STAGES)
    release_stages(ready, empty, my_blocks, n_blocks, STAGES)
    acc = acc * gl.convert_layout(g1, gl.SliceLayout(1, O_L))[:, None]
    store_rows(O + b * so_b + h * so_h, so_t, offs_m, Tq, acc, HEAD_DV, O_L)


@gluon.jit
def paired_forward_kernel(
    q1_desc, k1_desc, q2_desc, k2_desc, v_desc, O, RQ1, RQ2, RK1, RK2, LAM, BETA, REC, nM, nN, so_b, so_h, so_t,
    H, Tq, Tk, num_bh, num_m_blocks, scale, p, inv_d,
    HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr, NORMALIZE: gl.constexpr, CAUSAL: gl.constexpr,
    P_MODE: gl.constexpr, RECORD: gl.constexpr, SKIP_PRODUCTS: gl.constexpr, BOUND: gl.constexpr,
    SLACK: gl.constexpr, KEYS: gl.constexpr, STAGES: gl.constexpr,
):
    """Grid: (num_m_blocks * B * H,), the longest query blocks first (triton_math.query_block_program). The five
    inputs are 4-D tensor descriptors (B, H, T, width) in blocks of (1, 1, rows, width): ROWS rows for q1, q2,
    KEYS for k1, k2, v (descriptors()). With RECORD, REC is the zero-filled uint8 record (B, H, nM, nN) of
    triton_lists.py, whose cells the kernel marks. Launch with num_warps=NUM_WARPS // 2 and maxnreg=MAX_REGISTERS."""
    dtype: gl.constexpr = q1_desc.dtype
    b, h, m0 = query_block(num_bh, num_m_blocks, H, BLOCK_M)
    q1_buf = gl.allocate_shared_memory(dtype, [2] + q1_desc.block_type.shape, q1_desc.layout)
    q2_buf = gl.allocate_shared_memory(dtype, [2] + q2_desc.block_type.shape, q2_desc.layout)
    k1_ring = gl.allocate_shared_memory(dtype, [STAGES] + k1_desc.block_type.shape, k1_desc.layout)
    k2_ring = gl.allocate_shared_memory(dtype, [STAGES] + k2_desc.block_type.shape, k2_desc.layout)
    v_ring = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    ready, empty = ring_barriers(STAGES)
    # the key blocks the program's last row sees (both warpgroups step through all of them)
    n_blocks = gl.cdiv(key_end(gl.minimum(m0 + BLOCK_M, Tq) - 1, Tq, Tk, CAUSAL), KEYS)
    smem = (q1_buf, q2_buf, k1_ring, k2_ring, v_ring, q_bar, ready, empty)
    ptrs = (O, RQ1, RQ2, RK1, RK2, LAM, BETA, REC)
    scalars = (so_b, so_h, so_t, b, h, m0, H, Tq, Tk, n_blocks, scale, p, inv_d, nM, nN)
    gl.warp_specialize([
        (_warpgroup_partition, (0, smem, ptrs, scalars, HEAD_D, HEAD_DV, NORMALIZE, CAUSAL, P_MODE, RECORD,
                                SKIP_PRODUCTS, BOUND, SLACK, KEYS, STAGES)),
        (_warpgroup_partition, (1, smem, ptrs, scalars, HEAD_D, HEAD_DV, NORMALIZE, CAUSAL, P_MODE, RECORD,
                                SKIP_PRODUCTS, BOUND, SLACK, KEYS, STAGES)),
        (_loader_partition, (q1_desc, k1_desc, q2_desc, k2_desc, v_desc, q1_buf, q2_buf, k1_ring, k2_ring, v_ring,
                             q_bar, ready, empty, b, h, m0, n_blocks, KEYS, STAGES)),
    ], [4, 1], [240, 24])


def descriptors(q1, k1, q2, k2, v) -> tuple:
    """The five inputs' descriptors: ROWS query rows, keys_per_stage keys."""
    m, n = ROWS.value, keys_per_stage(q1.shape[-1])
    return row_descriptors((q1, m), (k1, n), (q2, m), (k2, n), (v, n))


def grid(Tq: int, B: int, H: int) -> int:
    return cdiv(Tq, BLOCK_M.value) * B * H
