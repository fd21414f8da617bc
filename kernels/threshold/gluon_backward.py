"""The paired (two-view) backward of threshold attention as one Gluon kernel for Hopper (sm_90).

The Triton backward of two views splits into a dK/dV kernel and a dQ kernel that recomputes both
views' scores and dA (14 tensor-core products of width 64 per tile pair instead of 10), because a fused
Triton kernel holding dK1, dK2 and dV spills (README.md in this folder). Gluon, Triton's lower-level language,
lets this kernel place every operand itself and split the work between partitions of warps:

- one program per 128 keys: k1, k2, v stay in shared memory (loaded once by the copy engine);
- a one-warp loader partition streams the query-side tiles q1, q2, dO (32 rows) through a two-stage ring;
- each of two warpgroups is a partition of its own over 64 of the keys: per query tile it computes dA, both
  views' scores, its dK1, dK2, dV (registers) and its half of dS1, dS2 (into a shared buffer, two of them in
  turn), then dq' of the previous tile for one view (warpgroup 0: view 1, warpgroup 1: view 2) over all 128
  keys, dq'^T = k^T . dS^T, staged in shared memory and added by the copy engine (a bulk reduce-add, done in the L2)
  into the fp32 dQ buffers of the Triton path.

The warpgroups meet only at the dS buffers (mbarriers), a tile apart, so one's elementwise work runs under the
other's products; with both in one partition, in step, the kernel was slower (BENCHMARKS.md, "The fused backward's
warpgroups as partitions"). Ten products per tile pair, nothing recomputed.

At q/k 128 (heads of 128: v of 256 in the paired layout) the three accumulators would take 256 fp32 registers per
thread, so the backward is two launches of the same kernel (passes()): one WITH_DK (dK1, dK2, dQ, dlam, dbeta; no
dV) in a one-stage ring, as k1, k2 and v of 128 keys, the ring and the dS buffers leave no room for a second stage in
an SM's shared memory; then one WITH_DV (dV alone: both views' scores recomputed, W, dV += W dO; no v, dS or dQ), each
with 128 registers of accumulators as at q/k 64. dq'^T is then two products of 64 rows (the halves of k's columns).

Same notation and contract as triton_backward.dkdv_kernel with TWO_VIEWS and DQ_ATOMIC (whose dQ is added by atomics):
it writes dK1, dK2, dV, adds dq'1, dq'2 into the fp32 buffers (in an order that varies from run to run, as atomics')
and writes the partial sums of dlam and dbeta (one per key block and warpgroup); dq_finish_kernel turns the buffers
into dq. Only 16-bit inputs, one key/value head per query
head, q/k head dimension 64 with v's a power of two up to 128, or 128 with v of 128 or 256 (launch.GLUON_BACKWARD_D128),
rows readable by tensor descriptors; the launcher checks (launch.gluon_backward_fits) and otherwise takes the Triton
path.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from ..common import cdiv
from ..gluon_tiles import (add_dq_rows, first_query_tile, fp32_row_descriptor, last_visible_key, operand,
                           partition_barrier, ring_barriers, row_descriptors, store_rows, tile_rows, wgmma_layout)
from .tiles import TileConfig
from .triton_math import NORM_EPS

BLOCK_M = gl.constexpr(32)    # query rows per tile (64 rows spilled and ran slower: "A fused backward in Gluon")
BLOCK_N = gl.constexpr(128)   # keys per program (64 per warpgroup)
NUM_WARPS = gl.constexpr(8)   # compute warps: two warpgroups, each its own partition (the launch names the first's 4)
STAGES = gl.constexpr(2)      # depth of the query-side ring (passes() gives each launch its own)
DQ_ROWS = gl.constexpr(64)    # rows of each dq'^T product (the M side of a warpgroup's product)
MAX_REGISTERS = 168           # per thread, 12 warps allocated (8 compute, 1 loader, 3 idle): compute ones get 240
PARTIALS_PER_BLOCK = gl.constexpr(2)  # dlam/dbeta partial sums per key block (one per warpgroup)
# the kernel's tiling as a TileConfig, for tables and logs (copy-engine reads)
TILE = TileConfig(BLOCK_M.value, BLOCK_N.value, NUM_WARPS.value, STAGES.value, tma=True)



@gluon.jit
def _power(up, p, P_MODE: gl.constexpr):
    """up^p for up = max(u, 0) (triton_math.relu_power); P_MODE 1, 2: p = 1, 2, else any real p >= 1."""
    if P_MODE == 1:
        a = up
    elif P_MODE == 2:
        a = up * up
    else:
        a = gl.where(up > 0.0, gl.exp2(p * gl.log2(gl.where(up > 0.0, up, 1.0))), 0.0)
    return a


@gluon.jit
def _slope(up, p, P_MODE: gl.constexpr):
    """up^(p-1) with 0^0 taken as 0 (triton_math.relu_power_and_slope's slope, without the factor p)."""
    if P_MODE == 1:
        e = gl.where(up > 0.0, 1.0, 0.0)
    elif P_MODE == 2:
        e = up
    else:
        e = gl.where(up > 0.0, gl.exp2((p - 1.0) * gl.log2(gl.where(up > 0.0, up, 1.0))), 0.0)
    return e


@gluon.jit
def _gain(m0, Tq, Tk, inv_d, BM: gl.constexpr, Q_L: gl.constexpr):
    """g_i = sqrt(2 ln(i + 1) / d) of the tile's query rows at absolute positions i (triton_math.threshold_gain),
    the logarithm taken as ln 2 . lg2.approx: one hardware instruction, where gl.log and gl.log2 each compile to a
    routine of about a dozen per value (BENCHMARKS.md, "A fused backward in Gluon", and the section after it)."""
    pos = tile_rows(m0, BM, Q_L) + (Tk - Tq)
    lg = gl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [(pos + 1).to(gl.float32)], dtype=gl.float32,
                                   is_pure=True, pack=1)
    return gl.sqrt((2.0 * 0.6931471805599453) * lg * inv_d)


@gluon.jit
def _query_factor(RQh, m0, Tq, scale, NORMALIZE: gl.constexpr, BM: gl.constexpr, Q_L: gl.constexpr):
    """The query rows' share of the score factor: scale / ||q|| (0 past Tq) when normalising, else scale."""
    offs_m = tile_rows(m0, BM, Q_L)
    if NORMALIZE:
        r = gl.load(RQh + offs_m, mask=offs_m < Tq, other=0.0) * scale
    else:
        r = gl.full([BM], scale, gl.float32, layout=Q_L)
    return r


@gluon.jit
def _rectified(s, rk, offs_n, m0, RQh, beta, scale, inv_d, Tq, Tk, NORMALIZE: gl.constexpr, CAUSAL: gl.constexpr,
               BM: gl.constexpr, Q_L: gl.constexpr):
    """max(u, 0) for the score tile s = k . q^T (keys, queries): u = s r'_j r_i - beta g_i, zero where the key
    is past Tk, the query past Tq or (CAUSAL) the key after the query. Every tile takes the mask: interior
    tiles without it, chosen by a branch in the loop, gave wrong gradients on Triton 3.6, and in loops of their
    own spilled and ran slower (BENCHMARKS.md, "A fused backward in Gluon")."""
    if NORMALIZE:
        s = s * rk[:, None]
    u = s * _query_factor(RQh, m0, Tq, scale, NORMALIZE, BM, Q_L)[None, :] - beta * _gain(m0, Tq, Tk, inv_d, BM,
                                                                                             Q_L)[None, :]
    # the last key each query row sees (-1 past Tq): one comparison per element
    offs_m = tile_rows(m0, BM, Q_L)
    last = last_visible_key(offs_m, Tq, Tk, CAUSAL, BM, Q_L)
    u = gl.where(offs_n[:, None] <= last[None, :], u, 0.0)
    return gl.maximum(u, 0.0)


@gluon.jit
def _load_query_tile(q1_desc, q2_desc, do_desc, q1_ring, q2_ring, do_ring, bars, stage, b, h, m0):
    """Start the copy of the query tile at row m0 (q1, q2, dO) into ring stage ``stage``, signalling bars[stage]."""
    bar = bars.index(stage)
    mbarrier.expect(bar, q1_desc.block_type.nbytes + q2_desc.block_type.nbytes + do_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q1_desc, [b, h, m0, 0], bar, q1_ring.index(stage))
    tma.async_copy_global_to_shared(q2_desc, [b, h, m0, 0], bar, q2_ring.index(stage))
    tma.async_copy_global_to_shared(do_desc, [b, h, m0, 0], bar, do_ring.index(stage))


@gluon.jit
def _key_side(dk1, dk2, dv, acc_lam, acc_beta, k1_s, k2_s, v_s, q1_s, q2_s, do_s, ds1_s, ds2_s,
              rk1, rk2, offs_n, m0, RQ1h, RQ2h, lam, beta, p, inv_d, scale, Tq, Tk,
              NORMALIZE: gl.constexpr, P_MODE: gl.constexpr, CAUSAL: gl.constexpr,
              LAM_GRAD: gl.constexpr, BETA_GRAD: gl.constexpr, S_L: gl.constexpr, DK_L: gl.constexpr,
              DV_L: gl.constexpr, BN: gl.constexpr, WITH_DV: gl.constexpr):
    """One query tile's contribution to the BN keys of k1_s, k2_s, v_s: dK1, dK2, dV (registers; dV only WITH_DV,
    else passed on unchanged), dlam, dbeta; dS1, dS2 (keys, queries) are stored into ds1_s, ds2_s for the dQ
    products. Products that follow one another are issued
    together and waited for once (faster than a wait after each); issuing the next view's scores before this view's
    elementwise work, so that the two overlap, held more registers and ran slower (BENCHMARKS.md, "The fused
    backward's warpgroups as partitions", "A fused backward in Gluon")."""
    BM: gl.constexpr = BLOCK_M
    Q_L: gl.constexpr = gl.SliceLayout(0, S_L)
    zero_s = gl.zeros([BN, BM], gl.float32, layout=S_L)
    # Vectors over the query rows cost BM / 4 registers each in this layout: each is made where it is used.
    # dA = v . dO^T and the scores, (keys, queries); one tile of each view is kept (max(u, 0), from which the
    # weight and its slope follow) to hold as few tiles as possible.
    da_t = warpgroup_mma(v_s, do_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s1_t = warpgroup_mma(k1_s, q1_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    da, s1 = warpgroup_mma_wait(0, deps=[da_t, s1_t])
    up1 = _rectified(s1, rk1, offs_n, m0, RQ1h, beta, scale, inv_d, Tq, Tk, NORMALIZE, CAUSAL, BM, Q_L)
    g1 = _slope(up1, p, P_MODE) * da
    if BETA_GRAD:
        acc_beta += gl.sum(g1 * _gain(m0, Tq, Tk, inv_d, BM, Q_L)[None, :], axis=1)
    if NORMALIZE:
        g1 = g1 * rk1[:, None]
    ds1 = (g1 * _query_factor(RQ1h, m0, Tq, scale, NORMALIZE, BM, Q_L)[None, :]).to(q1_s.dtype)
    ds1_op = gl.convert_layout(ds1, gl.DotOperandLayout(0, DK_L, 2))
    dk1_t = warpgroup_mma(ds1_op, q1_s, dk1, is_async=True)
    ds1_s.store(ds1)
    # view 2, its weights entering with -lam
    s2_t = warpgroup_mma(k2_s, q2_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dk1, s2, ds1_op = warpgroup_mma_wait(0, deps=[dk1_t, s2_t, ds1_op])
    up2 = _rectified(s2, rk2, offs_n, m0, RQ2h, beta, scale, inv_d, Tq, Tk, NORMALIZE, CAUSAL, BM, Q_L)
    a2 = _power(up2, p, P_MODE)
    if LAM_GRAD:
        acc_lam += gl.sum(da * a2, axis=1)
    if WITH_DV:
        w = (_power(up1, p, P_MODE) - lam * a2).to(do_s.dtype)
    g2 = _slope(up2, p, P_MODE) * da
    if BETA_GRAD:
        acc_beta -= lam * gl.sum(g2 * _gain(m0, Tq, Tk, inv_d, BM, Q_L)[None, :], axis=1)
    if NORMALIZE:
        g2 = g2 * rk2[:, None]
    ds2 = (g2 * (_query_factor(RQ2h, m0, Tq, scale, NORMALIZE, BM, Q_L) * -lam)[None, :]).to(q2_s.dtype)
    ds2_op = gl.convert_layout(ds2, gl.DotOperandLayout(0, DK_L, 2))
    if WITH_DV:
        w_op = gl.convert_layout(w, gl.DotOperandLayout(0, DV_L, 2))
        dk2_t = warpgroup_mma(ds2_op, q2_s, dk2, is_async=True)
        dv_t = warpgroup_mma(w_op, do_s, dv, is_async=True)
        ds2_s.store(ds2)
        dk2, dv, ds2_op, w_op = warpgroup_mma_wait(0, deps=[dk2_t, dv_t, ds2_op, w_op])
    else:
        dk2_t = warpgroup_mma(ds2_op, q2_s, dk2, is_async=True)
        ds2_s.store(ds2)
        dk2, ds2_op = warpgroup_mma_wait(0, deps=[dk2_t, ds2_op])
    return dk1, dk2, dv, acc_lam, acc_beta


@gluon.jit
def _value_side(dv, k1_s, k2_s, q1_s, q2_s, do_s, rk1, rk2, offs_n, m0, RQ1h, RQ2h, lam, beta, p, inv_d, scale, Tq,
                Tk, NORMALIZE: gl.constexpr, P_MODE: gl.constexpr, CAUSAL: gl.constexpr, S_L: gl.constexpr,
                DV_L: gl.constexpr, BN: gl.constexpr):
    """One query tile's contribution to the dV of the BN keys of k1_s, k2_s, for the launch that computes dV alone
    (passes()): both views' scores, W = max(u1, 0)^p - lam max(u2, 0)^p as _key_side forms it, dV += W dO."""
    BM: gl.constexpr = BLOCK_M
    Q_L: gl.constexpr = gl.SliceLayout(0, S_L)
    zero_s = gl.zeros([BN, BM], gl.float32, layout=S_L)
    s1_t = warpgroup_mma(k1_s, q1_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s2_t = warpgroup_mma(k2_s, q2_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s1, s2 = warpgroup_mma_wait(0, deps=[s1_t, s2_t])
    up1 = _rectified(s1, rk1, offs_n, m0, RQ1h, beta, scale, inv_d, Tq, Tk, NORMALIZE, CAUSAL, BM, Q_L)
    up2 = _rectified(s2, rk2, offs_n, m0, RQ2h, beta, scale, inv_d, Tq, Tk, NORMALIZE, CAUSAL, BM, Q_L)
    w = (_power(up1, p, P_MODE) - lam * _power(up2, p, P_MODE)).to(do_s.dtype)
    w_op = gl.convert_layout(w, gl.DotOperandLayout(0, DV_L, 2))
    dv_t = warpgroup_mma(w_op, do_s, dv, is_async=True)
    dv, w_op = warpgroup_mma_wait(0, deps=[dv_t, w_op])
    return dv


@gluon.jit
def _finish_keys(dk, k_s, rk, offs_n, Tk, p, DKh, s_t, HEAD_D: gl.constexpr, NORMALIZE: gl.constexpr,
                 DK_L: gl.constexpr):
    """dk = p (dk' - r'^2 (k . dk') k) (triton_math.normalize_backward; p dk' without it), stored."""
    if NORMALIZE:
        k = k_s.load(DK_L).to(gl.float32)
        r = gl.convert_layout(rk, gl.SliceLayout(1, DK_L))
        proj = gl.where(r * NORM_EPS < 1.0, r * r, 0.0) * gl.sum(k * dk, axis=1)
        dk = dk - proj[:, None] * k
    dk = dk * p
    store_rows(DKh, s_t, offs_n, Tk, dk, HEAD_D, DK_L)


def descriptors(q1, k1, q2, k2, v, do) -> tuple:
    """The six inputs' descriptors: BLOCK_M query rows, BLOCK_N keys."""
    m, n = BLOCK_M.value, BLOCK_N.value
    return row_descriptors((q1, m), (k1, n), (q2, m), (k2, n), (v, n), (do, m))


def dq_descriptors(dq_acc, dq2_acc) -> tuple:
    """The fp32 dq' buffers' descriptors for the copy engine's reduce-add: blocks of BLOCK_M rows and DQ_ROWS
    columns."""
    return (fp32_row_descriptor(dq_acc, BLOCK_M.value, DQ_ROWS.value),
            fp32_row_descriptor(dq2_acc, BLOCK_M.value, DQ_ROWS.value))


def grid(Tk: int, B: int, H: int) -> int:
    return cdiv(Tk, BLOCK_N.value) * B * H


def passes(head_d: int, head_dv: int) -> tuple[tuple[bool, bool, int], ...]:
    """The launches of one backward as (WITH_DK, WITH_DV, STAGES): one launch at q/k 64, whose dK1, dK2 and dV
    accumulators take 128 fp32 registers per thread together; two at q/k 128, where they would take 256 (v 256):
    dK1, dK2 and dQ first, in a one-stage ring (the k1, k2, v blocks of 128 keys and the dS buffers leave no room for
    a second stage), then dV alone, which recomputes both views' scores."""
    if head_d <= 64:
        return ((True, True, STAGES.value),)
    return ((True, False, 1), (False, True, STAGES.value))


@gluon.jit
def _tile_row(tiles, i, m_lo, USE_LIST: gl.constexpr):
    """The first row of the program's i-th query tile: the i-th entry of its list of occupied tiles (an index loaded
    in the loop, no data-dependent branch), or m_lo + i BM (every tile of the causal range)."""
    if USE_LIST:
        m0 = gl.load(tiles + i) * BLOCK_M
    else:
        m0 = m_lo + i * BLOCK_M
    return m0


@gluon.jit
def _loader_partition(q1_desc, q2_desc, do_desc, q1_ring, q2_ring, do_ring, ready, empty, b, h, m_lo, n_tiles, tiles,
                      USE_LIST: gl.constexpr, STAGES: gl.constexpr):
    """Fills the query-side ring: tile i into stage i % STAGES once the compute warps have released it."""
    for i in range(n_tiles):
        stage = i % STAGES
        mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)
        _load_query_tile(q1_desc, q2_desc, do_desc, q1_ring, q2_ring, do_ring, ready, stage, b, h,
                         _tile_row(tiles, i, m_lo, USE_LIST))


@gluon.jit
def _dq_previous(W: gl.constexpr, j, m_prev, k_view_s, ds_bufs, ds_ready, ds_free, dq_desc, dq_stage, b, h,
                 HEAD_D: gl.constexpr, DQ_L: gl.constexpr):
    """dq'^T of view W + 1 for tile j (rows m_prev ..) over all BLOCK_N keys, once both warpgroups have stored
    their dS of tile j; the dS buffer is released to both, then the result added into the view's fp32 dQ buffer by
    the copy engine (gluon_tiles.add_dq_rows: the additions are made in the L2, none by the warps).
    A product's M side is DQ_ROWS, so q/k 128 takes two, one per half of the head dimension (k's columns), each added as
    it is done. Part c goes through the warpgroup's staging tile c, as rows (dq', BLOCK_M x DQ_ROWS), once the reduction
    issued from that tile for the previous query tile has read it. The warps' own fp32 vector atomics (after a layout
    conversion through shared memory) ran the backward 3-5% slower (BENCHMARKS.md, "dQ by the copy engine")."""
    BM: gl.constexpr = BLOCK_M
    mbarrier.wait(ds_ready.index(j % 2), (j // 2) & 1)
    zero_q = gl.zeros([DQ_ROWS, BM], gl.float32, layout=DQ_L)
    gl.static_assert(HEAD_D % DQ_ROWS == 0, "dq'^T is taken in products of DQ_ROWS rows")
    PARTS: gl.constexpr = HEAD_D // DQ_ROWS
    for c in gl.static_range(PARTS):
        if PARTS == 1:
            k_part = k_view_s
        else:
            k_part = k_view_s.slice(c * DQ_ROWS, DQ_ROWS, dim=1)
        dq = warpgroup_mma(k_part.permute((1, 0)), ds_bufs.index(j % 2), zero_q, use_acc=False)
        if c == PARTS - 1:  # the last product has read the buffer
            mbarrier.arrive(ds_free.index(j % 2), count=1)
        # the reduction issued from this tile PARTS bulk groups ago has read it
        add_dq_rows(dq, dq_stage.index(W * PARTS + c), dq_desc, b, h, m_prev, c * DQ_ROWS, BM, DQ_ROWS, PARTS - 1)


@gluon.jit
def _tile_step(W: gl.constexpr, i, m0, dk1, dk2, dv, acc_lam, acc_beta, smem, k_rows, rk1, rk2, offs_n, RQ1h, RQ2h,
               lam, beta, p, inv_d, scale, Tq, Tk, NORMALIZE: gl.constexpr, P_MODE: gl.constexpr,
               CAUSAL: gl.constexpr, LAM_GRAD: gl.constexpr, BETA_GRAD: gl.constexpr, S_L: gl.constexpr,
               DK_L: gl.constexpr, DV_L: gl.constexpr, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr,
               WITH_DK: gl.constexpr, WITH_DV: gl.constexpr, STAGES: gl.constexpr):
    """The warpgroup's share of the program's i-th query tile (rows m0 ..): wait for it in the ring, _key_side into
    the tile's dS buffers, then hand them on (ds_ready) and the ring stage back (empty); without WITH_DK,
    _value_side (dV alone) and the stage back."""
    k1_buf, k2_buf, v_buf, q1_ring, q2_ring, do_ring, ready, empty, kv_bar, ds1_bufs, ds2_bufs, ds_ready, \
        ds_free, dq_stage = smem
    BM: gl.constexpr = BLOCK_M
    KB: gl.constexpr = BLOCK_N // 2
    stage = i % STAGES
    mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
    z = k_rows >> 30
    k1_s = operand(k1_buf.index(z), BLOCK_N, HEAD_D).slice(W * KB, KB)
    k2_s = operand(k2_buf.index(z), BLOCK_N, HEAD_D).slice(W * KB, KB)
    # + z (0): with one stage the ring's index is a constant, and the compiler hoists the operands' descriptors out of
    # the loop and spills them (the q/k 128 dK launch; with the loop-varying zero it spills nothing and runs faster:
    # BENCHMARKS.md, "The dK launch's spills removed"; python -m benchmarks.registers shows the spills)
    q1_s = operand(q1_ring.index(stage + z), BM, HEAD_D)
    q2_s = operand(q2_ring.index(stage + z), BM, HEAD_D)
    do_s = operand(do_ring.index(stage + z), BM, HEAD_DV)
    if WITH_DK:
        v_s = operand(v_buf.index(z), BLOCK_N, HEAD_DV).slice(W * KB, KB)
        # both warpgroups have taken dQ from the buffer this tile's dS goes to (tile i - 2)
        mbarrier.wait(ds_free.index(i % 2), ((i // 2) & 1) ^ 1)
        dk1, dk2, dv, acc_lam, acc_beta = _key_side(
            dk1, dk2, dv, acc_lam, acc_beta, k1_s, k2_s, v_s, q1_s, q2_s, do_s,
            ds1_bufs.index(i % 2).slice(W * KB, KB), ds2_bufs.index(i % 2).slice(W * KB, KB), rk1, rk2, offs_n, m0,
            RQ1h, RQ2h, lam, beta, p, inv_d, scale, Tq, Tk, NORMALIZE, P_MODE, CAUSAL, LAM_GRAD, BETA_GRAD, S_L,
            DK_L, DV_L, KB, WITH_DV)
        fence_async_shared()
        partition_barrier()
        mbarrier.arrive(ds_ready.index(i % 2), count=1)
    else:
        dv = _value_side(dv, k1_s, k2_s, q1_s, q2_s, do_s, rk1, rk2, offs_n, m0, RQ1h, RQ2h, lam, beta, p, inv_d,
                         scale, Tq, Tk, NORMALIZE, P_MODE, CAUSAL, S_L, DV_L, KB)
    mbarrier.arrive(empty.index(stage), count=1)
    return dk1, dk2, dv, acc_lam, acc_beta


@gluon.jit
def _warpgroup_partition(W: gl.constexpr, smem, ptrs, scalars, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr,
                         NORMALIZE: gl.constexpr, CAUSAL: gl.constexpr, P_MODE: gl.constexpr, LAM_GRAD: gl.constexpr,
                         BETA_GRAD: gl.constexpr, USE_LIST: gl.constexpr, WITH_DK: gl.constexpr,
                         WITH_DV: gl.constexpr, STAGES: gl.constexpr):
    """Warpgroup W's 64 keys: for each query tile its dK1, dK2, dV, dlam, dbeta and its half of dS1, dS2 (into the
    tile's buffer), then dq' of the previous tile for view W + 1 over both halves. The warpgroups meet only at the dS
    buffers (mbarriers), a tile apart, so one's elementwise work can run under the other's products. With USE_LIST
    the query tiles are those of the key block's list of occupied tiles, in the loader's order. WITH_DK off: dV
    alone (no dS, dQ, dlam or dbeta); WITH_DV off: all but dV (passes())."""
    k1_buf, k2_buf, v_buf, q1_ring, q2_ring, do_ring, ready, empty, kv_bar, ds1_bufs, ds2_bufs, ds_ready, \
        ds_free, dq_stage = smem
    RQ1, RK1, RQ2, RK2, LAM, BETA, DK1, DK2, DV, dq1_desc, dq2_desc, LAM_PART, BETA_PART, tiles = ptrs
    sdk1_b, sdk1_h, sdk1_t, sdk2_b, sdk2_h, sdk2_t, sdv_b, sdv_h, sdv_t, b, h, n0, nblk, H, Tq, Tk, m_lo, n_tiles, \
        num_n_blocks, scale, p, inv_d = scalars
    BM: gl.constexpr = BLOCK_M
    KB: gl.constexpr = BLOCK_N // 2
    S_L: gl.constexpr = wgmma_layout(BM)
    DK_L: gl.constexpr = wgmma_layout(HEAD_D)
    DV_L: gl.constexpr = wgmma_layout(HEAD_DV)
    DQ_L: gl.constexpr = wgmma_layout(BM)  # dq'^T: DQ_ROWS rows of the head dimension, BM query rows
    offs_n = n0 + W * KB + gl.arange(0, KB, layout=gl.SliceLayout(1, S_L))
    key_ok = offs_n < Tk
    bhk = b * H + h
    if NORMALIZE:
        rk1 = gl.load(RK1 + bhk * Tk + offs_n, mask=key_ok, other=0.0)
        rk2 = gl.load(RK2 + bhk * Tk + offs_n, mask=key_ok, other=0.0)
    else:
        rk1 = gl.zeros([KB], gl.float32, layout=gl.SliceLayout(1, S_L))
        rk2 = rk1
    lam = gl.load(LAM + h)
    beta = gl.load(BETA + h)
    acc_lam = gl.zeros([KB], gl.float32, layout=gl.SliceLayout(1, S_L))
    acc_beta = gl.zeros([KB], gl.float32, layout=gl.SliceLayout(1, S_L))
    # an accumulator a launch does not compute is a placeholder vector the loop carries unchanged
    if WITH_DK:
        dk1 = gl.zeros([KB, HEAD_D], gl.float32, layout=DK_L)
        dk2 = gl.zeros([KB, HEAD_D], gl.float32, layout=DK_L)
    else:
        dk1 = gl.zeros([KB], gl.float32, layout=gl.SliceLayout(1, S_L))
        dk2 = dk1
    if WITH_DV:
        dv = gl.zeros([KB, HEAD_DV], gl.float32, layout=DV_L)
    else:
        dv = gl.zeros([KB], gl.float32, layout=gl.SliceLayout(1, S_L))
    RQ1h = RQ1 + bhk * Tq
    RQ2h = RQ2 + bhk * Tq
    if W == 0:
        ds_bufs = ds1_bufs
        dq_desc = dq1_desc
    else:
        ds_bufs = ds2_bufs
        dq_desc = dq2_desc
    m_end = m_lo + n_tiles * BM
    mbarrier.wait(kv_bar, phase=0)
    m_prev = m_lo  # the rows of the last tile seen
    if USE_LIST:
        m0 = _tile_row(tiles, 0, m_lo, USE_LIST)
        for i in range(n_tiles):
            # the next tile's rows, loaded a tile ahead so that no step waits for its index
            m_next = _tile_row(tiles, gl.minimum(i + 1, n_tiles - 1), m_lo, USE_LIST)
            dk1, dk2, dv, acc_lam, acc_beta = _tile_step(
                W, i, m0, dk1, dk2, dv, acc_lam, acc_beta, smem, m0, rk1, rk2, offs_n, RQ1h, RQ2h, lam, beta, p,
                inv_d, scale, Tq, Tk, NORMALIZE, P_MODE, CAUSAL, LAM_GRAD, BETA_GRAD, S_L, DK_L, DV_L, HEAD_D, HEAD_DV,
                WITH_DK, WITH_DV, STAGES)
            if WITH_DK and i > 0:
                k_view = operand((k1_buf if W == 0 else k2_buf).index(m0 >> 30), BLOCK_N, HEAD_D)
                _dq_previous(W, i - 1, m_prev, k_view, ds_bufs, ds_ready, ds_free, dq_desc, dq_stage, b, h,
                             HEAD_D, DQ_L)
            m_prev = m0
            m0 = m_next
    else:
        for m0 in range(m_lo, m_end, BM):
            i = (m0 - m_lo) // BM
            dk1, dk2, dv, acc_lam, acc_beta = _tile_step(
                W, i, m0, dk1, dk2, dv, acc_lam, acc_beta, smem, m0, rk1, rk2, offs_n, RQ1h, RQ2h, lam, beta, p,
                inv_d, scale, Tq, Tk, NORMALIZE, P_MODE, CAUSAL, LAM_GRAD, BETA_GRAD, S_L, DK_L, DV_L, HEAD_D, HEAD_DV,
                WITH_DK, WITH_DV, STAGES)
            if WITH_DK and i > 0:
                k_view = operand((k1_buf if W == 0 else k2_buf).index(m0 >> 30), BLOCK_N, HEAD_D)
                _dq_previous(W, i - 1, m0 - BM, k_view, ds_bufs, ds_ready, ds_free, dq_desc, dq_stage, b, h,
                             HEAD_D, DQ_L)
        m_prev = m_end - BM
    if WITH_DK:
        if n_tiles > 0:
            k_view = operand((k1_buf if W == 0 else k2_buf).index(0), BLOCK_N, HEAD_D)
            _dq_previous(W, n_tiles - 1, m_prev, k_view, ds_bufs, ds_ready, ds_free, dq_desc, dq_stage, b, h,
                         HEAD_D, DQ_L)
        tma.store_wait(0)  # the staging tiles stay in place until the copy engine has read them
        part = (bhk * num_n_blocks + nblk) * PARTIALS_PER_BLOCK + W
        if LAM_GRAD:
            gl.store(LAM_PART + part, -gl.sum(acc_lam, axis=0))
        if BETA_GRAD:
            gl.store(BETA_PART + part, -p * gl.sum(acc_beta, axis=0))
        k1_s = operand(k1_buf.index(0), BLOCK_N, HEAD_D).slice(W * KB, KB)
        k2_s = operand(k2_buf.index(0), BLOCK_N, HEAD_D).slice(W * KB, KB)
        _finish_keys(dk1, k1_s, rk1, offs_n, Tk, p, DK1 + b * sdk1_b + h * sdk1_h, sdk1_t, HEAD_D, NORMALIZE, DK_L)
        _finish_keys(dk2, k2_s, rk2, offs_n, Tk, p, DK2 + b * sdk2_b + h * sdk2_h, sdk2_t, HEAD_D, NORMALIZE, DK_L)
    if WITH_DV:
        store_rows(DV + b * sdv_b + h * sdv_h, sdv_t, offs_n, Tk, dv, HEAD_DV, DV_L)


@gluon.jit
def paired_backward_kernel(
    q1_desc, k1_desc, q2_desc, k2_desc, v_desc, do_desc, dq1_desc, dq2_desc, RQ1, RK1, RQ2, RK2, LAM, BETA,
    DK1, DK2, DV, LAM_PART, BETA_PART,
    sdk1_b, sdk1_h, sdk1_t, sdk2_b, sdk2_h, sdk2_t, sdv_b, sdv_h, sdv_t, LIST, COUNTS, list_cap,
    H, Tq, Tk, num_bh, num_n_blocks, scale, p, inv_d,
    HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr, NORMALIZE: gl.constexpr, CAUSAL: gl.constexpr,
    P_MODE: gl.constexpr, LAM_GRAD: gl.constexpr, BETA_GRAD: gl.constexpr, USE_LIST: gl.constexpr,
    WITH_DK: gl.constexpr = True, WITH_DV: gl.constexpr = True, STAGES: gl.constexpr = 2,
):
    """Grid: (num_n_blocks * B * H,), key block 0 (the longest under causality) first. The six inputs are
    4-D tensor descriptors (B, H, T, width) in blocks of (1, 1, rows, width): BLOCK_M rows for q1, q2, dO,
    BLOCK_N for k1, k2, v (descriptors()). LAM_PART, BETA_PART hold (B, H, PARTIALS_PER_BLOCK * num_n_blocks)
    partial sums. With USE_LIST the loader and both warpgroups visit only the query tiles of the key block's list
    (triton_lists.py, by key block for BLOCK_M x BLOCK_N tiles: list_cap int32 entries and two counts per (b, h,
    key block)); every visited tile takes the mask anyway. Three partitions: warpgroup 0 (the default, 4 warps),
    warpgroup 1 (4 warps) and the loader (1 warp): launch with num_warps=NUM_WARPS // 2 and
    maxnreg=MAX_REGISTERS. WITH_DK, WITH_DV, STAGES: as passes() gives them (dK1, dK2, dQ, dlam and dbeta are
    computed WITH_DK, dV WITH_DV; a launch without dV leaves DV unwritten, one without dK the rest). dq1_desc,
    dq2_desc: the two views' fp32 dq' buffers (B, H, Tq, HEAD_D) that dq'^T is added into (dq_descriptors())."""
    BM: gl.constexpr = BLOCK_M
    BN: gl.constexpr = BLOCK_N
    dtype: gl.constexpr = q1_desc.dtype
    pid = gl.program_id(0)
    bh = pid % num_bh
    nblk = pid // num_bh
    n0 = nblk * BN
    b = bh // H
    h = bh % H
    k1_buf = gl.allocate_shared_memory(dtype, [1] + k1_desc.block_type.shape, k1_desc.layout)
    k2_buf = gl.allocate_shared_memory(dtype, [1] + k2_desc.block_type.shape, k2_desc.layout)
    q1_ring = gl.allocate_shared_memory(dtype, [STAGES] + q1_desc.block_type.shape, q1_desc.layout)
    q2_ring = gl.allocate_shared_memory(dtype, [STAGES] + q2_desc.block_type.shape, q2_desc.layout)
    do_ring = gl.allocate_shared_memory(dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    if WITH_DK:  # v (for dA) and the dS buffers serve dK and dQ only; the dV launch holds neither
        v_buf = gl.allocate_shared_memory(dtype, [1] + v_desc.block_type.shape, v_desc.layout)
        ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, BM], dtype)
        ds1_bufs = gl.allocate_shared_memory(dtype, [2, BN, BM], ds_layout)
        ds2_bufs = gl.allocate_shared_memory(dtype, [2, BN, BM], ds_layout)
    else:
        v_buf = k1_buf
        ds1_bufs = k1_buf
        ds2_bufs = k1_buf
    if WITH_DK:  # a staging tile per warpgroup and part of dq'
        dq_stage = gl.allocate_shared_memory(gl.float32, [2 * (HEAD_D // DQ_ROWS)] + dq1_desc.block_type.shape,
                                             dq1_desc.layout)
    else:
        dq_stage = k1_buf
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    ready, empty = ring_barriers(STAGES)
    ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    ds_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(2):
        mbarrier.init(ds_ready.index(s), count=2)
        mbarrier.init(ds_free.index(s), count=2)
    if WITH_DK:
        mbarrier.expect(kv_bar, k1_desc.block_type.nbytes + k2_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [b, h, n0, 0], kv_bar, v_buf.index(0))
    else:
        mbarrier.expect(kv_bar, k1_desc.block_type.nbytes + k2_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k1_desc, [b, h, n0, 0], kv_bar, k1_buf.index(0))
    tma.async_copy_global_to_shared(k2_desc, [b, h, n0, 0], kv_bar, k2_buf.index(0))
    m_end = gl.cdiv(Tq, BM) * BM
    m_lo = first_query_tile(n0, Tq, Tk, BM, CAUSAL)
    entry = bh * num_n_blocks + nblk
    tiles = LIST + entry.to(gl.int64) * list_cap
    if USE_LIST:
        n_tiles = gl.load(COUNTS + 2 * entry + 1)
    else:
        n_tiles = (m_end - m_lo) // BM
    smem = (k1_buf, k2_buf, v_buf, q1_ring, q2_ring, do_ring, ready, empty, kv_bar, ds1_bufs, ds2_bufs, ds_ready,
            ds_free, dq_stage)
    ptrs = (RQ1, RK1, RQ2, RK2, LAM, BETA, DK1, DK2, DV, dq1_desc, dq2_desc, LAM_PART, BETA_PART, tiles)
    scalars = (sdk1_b, sdk1_h, sdk1_t, sdk2_b, sdk2_h, sdk2_t, sdv_b, sdv_h, sdv_t, b, h, n0, nblk, H, Tq, Tk, m_lo,
               n_tiles, num_n_blocks, scale, p, inv_d)
    gl.warp_specialize([
        (_warpgroup_partition, (0, smem, ptrs, scalars, HEAD_D, HEAD_DV, NORMALIZE, CAUSAL, P_MODE, LAM_GRAD,
                                BETA_GRAD, USE_LIST, WITH_DK, WITH_DV, STAGES)),
        (_warpgroup_partition, (1, smem, ptrs, scalars, HEAD_D, HEAD_DV, NORMALIZE, CAUSAL, P_MODE, LAM_GRAD,
                                BETA_GRAD, USE_LIST, WITH_DK, WITH_DV, STAGES)),
        (_loader_partition, (q1_desc, q2_desc, do_desc, q1_ring, q2_ring, do_ring, ready, empty, b, h, m_lo, n_tiles,
                             tiles, USE_LIST, STAGES)),
    ], [4, 1], [240, 24])
