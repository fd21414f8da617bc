"""The backward of the one-view score ops (sigmoid, softpick, softmax with a sink) as one Gluon kernel for Hopper.

Same quantities as the ops' Triton dK/dV kernels with dQ by atomics (kernels/sigmoid/triton_backward.py,
kernels/softpick/triton_backward.py, whose docstrings derive them): with dW = dO·vᵀ and the weights w rebuilt from the
scores,

    SIGMOID    w = σ(z), z = scale·q·k + b_h           dX = dW ⊙ σ(z)(1 − σ(z))            param: db_h = Σ dX
    SOFTPICK   E = e^x / N (from L), w = relu(E − 1/N)  dX = E ⊙ (dW·1[x > 0] − sign(x) Δ_i)
    SINK       w = E                                    dX = E ⊙ (dW − Δ_i)                param: ds_h (below)

it writes dK = scale Σ_i dX q_i and dV = Σ_i w dO_i, adds dQ/scale into the fp32 buffer that
score_ops.triton_tiles.dq_finish_kernel finishes, and writes per-(program, warpgroup) partial sums of the head parameter's
gradient (db_h; for the sink −Σ_i 2^(s_h log2 e − L_i) Σ_j E_ij dW_ij, from the fp32 E and dW as the Triton kernel
does). L (per-row log2 of the denominator) comes from the forward and Δ_i = dO_i·o_i from the row-Δ kernel. The
Triton kernels issue their five products per tile pair from one group of warps in step; this one splits the work as
the paired threshold backward does (kernels/threshold/gluon_backward.py; shared helpers in gluon_tiles.py):

- one program per 128 keys of one head: k and v stay in shared memory (loaded once by the copy engine);
- a one-warp loader partition streams the query tiles (q, dO; BM rows; in the normalised modes the rows' L and Δ as
  1-D blocks of the flat vectors, gluon_tiles.flat_row_descriptor) through a ring of STAGES stages: read from shared
  memory, L and Δ cost each warp a few loads per tile, where loading them from global memory took two 64-bit address
  computations and a load per value (16 of each per thread and vector);
- each of two warpgroups is a partition of its own over 64 of the keys: per query tile it computes dW and the scores
  (keys × queries), the weights and dX, its dK and dV (registers, fp32) and its half of dX (into a shared buffer, two
  in turn);
- dQ of a tile needs both halves of its dX: tile j's dQᵀ = kᵀ·dXᵀ over all 128 keys is taken by warpgroup j mod 2,
  one tile later, staged in shared memory and added into the fp32 buffer by the copy engine (a bulk reduce-add, done in
  the L2). The warpgroups meet only at the dX buffers (mbarriers), so one's
  elementwise work runs under the other's products.

The kernel is bound by issuing instructions more than by its products: per tile each warp issues several hundred
instructions against five products (python -m benchmarks.instructions counts them). So σ is 1 / (1 + 2^(−z)) by the
special-function unit's ex2 and approximate reciprocal (errors of a few fp32 ulp), where the Triton kernels' 16-bit
form (kernels/sigmoid/triton_forward.sigmoid_exp2's mode 1: one ex2, a polynomial, a select on the sign) issues about
twice the instructions; a second special-function operation per score fits under the backward's five products,
unlike under the forwards' two. And the masks are applied only in the tiles that need one: the first query tiles of a
key block under causality, a last tile with rows past Tq, every tile of a block with keys past Tk (three loops over
one body, _tile). Only 16-bit inputs, one key/value head per query head, q/k head dimension 64, v's a power of
two from 16 to 128, rows readable by tensor descriptors: gluon.gluon_backward_fits checks, and otherwise the
Triton kernels run.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from ..gluon_tiles import (add_dq_rows, first_query_tile, flat_row_descriptor, fp32_row_descriptor, last_visible_key,
                          operand, partition_barrier, ring_barriers, row_descriptors, store_rows, tile_rows,
                          wgmma_layout)

SOFTPICK = gl.constexpr(0)   # the modes, numbered as kernels/softpick/triton_forward.py's (SIGMOID added)
SINK = gl.constexpr(1)
SIGMOID = gl.constexpr(2)
BLOCK_N = gl.constexpr(128)   # keys per program (64 per warpgroup)
NUM_WARPS = 8                 # compute warps: two warpgroups, each its own partition (the launch names the first's 4)
MAX_REGISTERS = 168           # per thread, 12 warps allocated (8 compute, 1 loader, 3 idle): compute ones get 240
PARTIALS_PER_BLOCK = gl.constexpr(2)  # the head parameter's gradient: partial sums per key block, one per warpgroup

@gluon.jit
def _sigmoid_of_negated(zn):
    """σ(z) from zn = −z in log2 units: 1 / (1 + 2^zn) by the special-function unit's ex2 and reciprocal (both
    approximate to a few ulp, flushing subnormals). zn = +inf gives 2^zn = inf and σ = 0, which the backward uses
    as its mask. Two special-function operations and one addition: fewer instructions than the polynomial form
    (gluon_forward._sigmoid: one ex2, four FMAs, a multiplication and a select on the sign), where the backward's
    five products leave the special-function unit room for the second."""
    return gl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + gl.exp2(zn)], dtype=gl.float32,
                                     is_pure=True, pack=1)


@gluon.jit
def _load_query_tile(descs, rings, bars, stage, b, h, bh, Tq, m0, ROWS_COPIED: gl.constexpr):
    """Start the copy of the query tile at row m0 (q, dO; with ROWS_COPIED the rows' L and Δ) into ring stage
    ``stage``, signalling bars[stage]."""
    q_desc, do_desc, lse_desc, delta_desc = descs
    q_ring, do_ring, lse_ring, delta_ring = rings
    bar = bars.index(stage)
    nbytes: gl.constexpr = q_desc.block_type.nbytes + do_desc.block_type.nbytes
    if ROWS_COPIED:
        mbarrier.expect(bar, nbytes + lse_desc.block_type.nbytes + delta_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(lse_desc, [bh * Tq + m0], bar, lse_ring.index(stage))
        tma.async_copy_global_to_shared(delta_desc, [bh * Tq + m0], bar, delta_ring.index(stage))
    else:
        mbarrier.expect(bar, nbytes)
    tma.async_copy_global_to_shared(q_desc, [b, h, m0, 0], bar, q_ring.index(stage))
    tma.async_copy_global_to_shared(do_desc, [b, h, m0, 0], bar, do_ring.index(stage))


@gluon.jit
def _loader_partition(descs, rings, ready, empty, b, h, H, Tq, m_lo, n_tiles, ROWS_COPIED: gl.constexpr,
                      BM: gl.constexpr, STAGES: gl.constexpr):
    """Fills the query-side ring: tile i into stage i % STAGES once both warpgroups have released it."""
    for i in range(n_tiles):
        stage = i % STAGES
        mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)
        _load_query_tile(descs, rings, ready, stage, b, h, b * H + h, Tq, m_lo + i * BM, ROWS_COPIED)


@gluon.jit
def _row_vector(ring_slot, PTR, m0, Tq, other, ROWS_COPIED: gl.constexpr, BM: gl.constexpr, Q_L: gl.constexpr):
    """A per-query-row fp32 vector (L or Δ) of the tile's rows, ``other`` past Tq. ROWS_COPIED: from its ring slot,
    which the loader filled (the launcher copies only where Tq is a multiple of BM, so no row is past Tq). Otherwise
    loaded from PTR (the head's vector), 16 values per thread, each with its own 64-bit address computation."""
    if ROWS_COPIED:
        row = ring_slot.load(Q_L)
    else:
        offs_m = tile_rows(m0, BM, Q_L)
        row = gl.load(PTR + offs_m, mask=offs_m < Tq, other=other)
    return row


@gluon.jit
def _key_side(dk, dv, acc_p, k_s, v_s, q_s, do_s, dx_s, offs_n, m0, qk_scale2, param2, rows, Tq, Tk,
              MODE: gl.constexpr, ROWS_COPIED: gl.constexpr, CAUSAL: gl.constexpr, PARAM_GRAD: gl.constexpr,
              MASKED: gl.constexpr, S_L: gl.constexpr, DK_L: gl.constexpr, DV_L: gl.constexpr, BN: gl.constexpr,
              BM: gl.constexpr):
    """One query tile's contribution to the BN keys of k_s, v_s: dK, dV (registers) and the parameter's per-key sum
    acc_p; dX (keys × queries) is stored into dx_s for the dQ product. MASKED: keys past Tk (read as zeros), rows
    past Tq and (CAUSAL) keys after a row's position are masked; tiles that need none of it
    (_warpgroup_partition's middle loop) leave out the comparison and selection per element."""
    Q_L: gl.constexpr = gl.SliceLayout(0, S_L)
    zero_s = gl.zeros([BN, BM], gl.float32, layout=S_L)
    if MODE != SIGMOID:
        # the rows' L and Δ are read before the products, whose time hides their latency
        lse_s, delta_s, LSEh, DELTAh = rows
        lse = _row_vector(lse_s, LSEh, m0, Tq, float("inf"), ROWS_COPIED, BM, Q_L)
        delta = _row_vector(delta_s, DELTAh, m0, Tq, 0.0, ROWS_COPIED, BM, Q_L)[None, :]
    dw_t = warpgroup_mma(v_s, do_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s_t = warpgroup_mma(k_s, q_s.permute((1, 0)), zero_s, use_acc=False, is_async=True)
    dw, s = warpgroup_mma_wait(0, deps=[dw_t, s_t])
    if MASKED:
        offs_m = tile_rows(m0, BM, Q_L)
        last = last_visible_key(offs_m, Tq, Tk, CAUSAL, BM, Q_L)
        keep = offs_n[:, None] <= last[None, :]
    if MODE == SIGMOID:
        # −z = s·(−scale log2 e) − b_h log2 e, one FMA; masked elements get +inf, hence σ = 0 and slope 0
        zn = s * (-qk_scale2) - param2
        if MASKED:
            zn = gl.where(keep, zn, float("inf"))
        w = _sigmoid_of_negated(zn)
        dx = dw * (w - w * w)
        if PARAM_GRAD:
            acc_p += gl.sum(dx, axis=1)
    else:
        s = s * qk_scale2
        e = gl.exp2(s - lse[None, :])
        if MASKED:
            e = gl.where(keep, e, 0.0)
        if PARAM_GRAD:  # the sink's share: Σ_i 2^(s_h log2 e − L_i) Σ_j E_ij dW_ij, per key
            acc_p += gl.sum((e * gl.exp2(param2 - lse)[None, :]) * dw, axis=1)
        if MODE == SOFTPICK:
            # The branch is the score's sign, which E − 1/N = (e^x − 1)/N loses for scores below float32's
            # resolution (it rounds to 0 there), so it is read from the score: dX = E (dW − Δ) where s > 0, E Δ where
            # s < 0, 0 where s = 0; W = max(E − 1/N, 0) where s > 0, else 0 (the values of the form that let E carry
            # the sign, at two fewer instructions per score; a first form, which held the scores beside E and dW,
            # spilled and ran 2× slower than the sink mode: BENCHMARKS.md). dX before the weights, so that dW dies
            # first.
            pos = s > 0.0
            dx = gl.where(s != 0.0, e * gl.where(pos, dw - delta, delta), 0.0)
            w = gl.where(pos, gl.maximum(e - gl.exp2(-lse)[None, :], 0.0), 0.0)
        else:
            w = e
            dx = e * (dw - delta)
    dx = dx.to(q_s.dtype)
    w = w.to(do_s.dtype)
    dx_op = gl.convert_layout(dx, gl.DotOperandLayout(0, DK_L, 2))
    w_op = gl.convert_layout(w, gl.DotOperandLayout(0, DV_L, 2))
    dk_t = warpgroup_mma(dx_op, q_s, dk, is_async=True)
    dv_t = warpgroup_mma(w_op, do_s, dv, is_async=True)
    dx_s.store(dx)
    dk, dv, dx_op, w_op = warpgroup_mma_wait(0, deps=[dk_t, dv_t, dx_op, w_op])
    return dk, dv, acc_p


@gluon.jit
def _dq_of(j, m_j, k_s, dx_bufs, dx_ready, dx_free, dq_desc, dq_stages, b, h, W: gl.constexpr, HEAD_D: gl.constexpr,
           BM: gl.constexpr, DQ_L: gl.constexpr):
    """dQᵀ/scale of tile j (rows m_j ..) over all BLOCK_N keys, once both warpgroups have stored their half of its dX;
    the buffer is then released, and the result, staged as rows in warpgroup W's tile of dq_stages once the copy engine
    has read what this warpgroup staged there before, added into the fp32 dQ buffer by the copy engine
    (gluon_tiles.add_dq_rows). The warps' own fp32 vector atomics ran the backward up to 5%
    slower (BENCHMARKS.md, "dQ by the copy engine")."""
    mbarrier.wait(dx_ready.index(j % 2), (j // 2) & 1)
    zero_q = gl.zeros([HEAD_D, BM], gl.float32, layout=DQ_L)
    dq = warpgroup_mma(k_s.permute((1, 0)), dx_bufs.index(j % 2), zero_q, use_acc=False)
    mbarrier.arrive(dx_free.index(j % 2), count=1)
    add_dq_rows(dq, dq_stages.index(W), dq_desc, b, h, m_j, 0, BM, HEAD_D, 0)


@gluon.jit
def _tile(i, dk, dv, acc_p, loop, W: gl.constexpr, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr, MODE: gl.constexpr,
          ROWS_COPIED: gl.constexpr, CAUSAL: gl.constexpr, PARAM_GRAD: gl.constexpr, MASKED: gl.constexpr,
          BM: gl.constexpr, STAGES: gl.constexpr):
    """Query tile i of the warpgroup's loop: its contribution to dK, dV and acc_p, then the dQ of tile i − 1 if it
    falls to this warpgroup."""
    smem, m_lo, offs_n, param2, qk_scale2, LSEh, DELTAh, Tq, Tk, dq_desc, b, h = loop
    k_buf, v_buf, q_ring, do_ring, lse_ring, delta_ring, ready, empty, kv_bar, dx_bufs, dx_ready, dx_free, \
        dq_stages = smem
    KB: gl.constexpr = BLOCK_N // 2
    S_L: gl.constexpr = wgmma_layout(BM)
    DK_L: gl.constexpr = wgmma_layout(HEAD_D)
    DV_L: gl.constexpr = wgmma_layout(HEAD_DV)
    DQ_L: gl.constexpr = wgmma_layout(BM)
    m0 = m_lo + i * BM
    stage = i % STAGES
    mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
    z = m0 >> 30  # 0: keeps the buffer views inside the loop, as in the paired kernel
    k_s = operand(k_buf.index(z), BLOCK_N, HEAD_D).slice(W * KB, KB)
    v_s = operand(v_buf.index(z), BLOCK_N, HEAD_DV).slice(W * KB, KB)
    q_s = operand(q_ring.index(stage), BM, HEAD_D)
    do_s = operand(do_ring.index(stage), BM, HEAD_DV)
    # the dQ of tile i - 2, which used this tile's dX buffer, has been taken
    mbarrier.wait(dx_free.index(i % 2), ((i // 2) & 1) ^ 1)
    dk, dv, acc_p = _key_side(dk, dv, acc_p, k_s, v_s, q_s, do_s, dx_bufs.index(i % 2).slice(W * KB, KB),
                              offs_n, m0, qk_scale2, param2,
                              (lse_ring.index(stage), delta_ring.index(stage), LSEh, DELTAh), Tq, Tk, MODE,
                              ROWS_COPIED, CAUSAL, PARAM_GRAD, MASKED, S_L, DK_L, DV_L, KB, BM)
    fence_async_shared()
    partition_barrier()
    mbarrier.arrive(dx_ready.index(i % 2), count=1)
    mbarrier.arrive(empty.index(stage), count=1)
    if i > 0:
        if (i - 1) % 2 == W:
            k_all = operand(k_buf.index(z), BLOCK_N, HEAD_D)
            _dq_of(i - 1, m0 - BM, k_all, dx_bufs, dx_ready, dx_free, dq_desc, dq_stages, b, h, W, HEAD_D, BM, DQ_L)
    return dk, dv, acc_p


@gluon.jit
def _warpgroup_partition(W: gl.constexpr, smem, ptrs, scalars, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr,
                         MODE: gl.constexpr, ROWS_COPIED: gl.constexpr, CAUSAL: gl.constexpr,
                         PARAM_GRAD: gl.constexpr, BM: gl.constexpr, STAGES: gl.constexpr):
    """Warpgroup W's 64 keys over every query tile of the program, and dQ of the tiles j with j mod 2 = W."""
    k_buf, v_buf, q_ring, do_ring, lse_ring, delta_ring, ready, empty, kv_bar, dx_bufs, dx_ready, dx_free, \
        dq_stages = smem
    PARAM, LSE, DELTA, DK, DV, PARAM_PART, dq_desc = ptrs
    sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t, b, h, n0, nblk, H, Tq, Tk, m_lo, n_tiles, num_n_blocks, qk_scale2, \
        scale = scalars
    KB: gl.constexpr = BLOCK_N // 2
    S_L: gl.constexpr = wgmma_layout(BM)
    DK_L: gl.constexpr = wgmma_layout(HEAD_D)
    DV_L: gl.constexpr = wgmma_layout(HEAD_DV)
    DQ_L: gl.constexpr = wgmma_layout(BM)
    offs_n = n0 + W * KB + gl.arange(0, KB, layout=gl.SliceLayout(1, S_L))
    bh = b * H + h
    if MODE == SOFTPICK:
        param2 = 0.0
    else:
        param2 = gl.load(PARAM + h) * 1.4426950408889634  # b_h or s_h, in log2 units
    acc_p = gl.zeros([KB], gl.float32, layout=gl.SliceLayout(1, S_L))
    dk = gl.zeros([KB, HEAD_D], gl.float32, layout=DK_L)
    dv = gl.zeros([KB, HEAD_DV], gl.float32, layout=DV_L)
    mbarrier.wait(kv_bar, phase=0)
    # Tiles needing a mask: the first ones, which the program's last key follows (CAUSAL; the tiles before the Triton
    # key-block kernels' m_mid, threshold/triton_backward.dkdv_kernel), and a last one with rows past Tq; every tile
    # of a program with keys past Tk. The others run the same body without it. (Written as gluon_tiles helper beside
    # first_query_tile, the same count compiled to other instructions, 1-2% more in some loops: kept as measured.)
    if n0 + BLOCK_N > Tk:
        n_front = n_tiles
    elif CAUSAL:
        n_front = gl.minimum(gl.maximum(gl.cdiv(n0 + BLOCK_N - 1 - (Tk - Tq) - m_lo, BM), 0), n_tiles)
    else:
        n_front = n_tiles * 0
    n_mid = gl.maximum(gl.where(Tq % BM != 0, n_tiles - 1, n_tiles), n_front)
    loop = (smem, m_lo, offs_n, param2, qk_scale2, LSE + bh * Tq, DELTA + bh * Tq, Tq, Tk, dq_desc, b, h)
    for i in range(n_front):
        dk, dv, acc_p = _tile(i, dk, dv, acc_p, loop, W, HEAD_D, HEAD_DV, MODE, ROWS_COPIED, CAUSAL, PARAM_GRAD, True,
                              BM, STAGES)
    for i in range(n_front, n_mid):
        dk, dv, acc_p = _tile(i, dk, dv, acc_p, loop, W, HEAD_D, HEAD_DV, MODE, ROWS_COPIED, CAUSAL, PARAM_GRAD, False,
                              BM, STAGES)
    for i in range(n_mid, n_tiles):
        dk, dv, acc_p = _tile(i, dk, dv, acc_p, loop, W, HEAD_D, HEAD_DV, MODE, ROWS_COPIED, CAUSAL, PARAM_GRAD, True,
                              BM, STAGES)
    if n_tiles > 0:
        if (n_tiles - 1) % 2 == W:
            k_all = operand(k_buf.index(0), BLOCK_N, HEAD_D)
            _dq_of(n_tiles - 1, m_lo + (n_tiles - 1) * BM, k_all, dx_bufs, dx_ready, dx_free, dq_desc, dq_stages, b, h,
                   W, HEAD_D, BM, DQ_L)
    tma.store_wait(0)  # the staging tile stays in place until the copy engine has read it
    if PARAM_GRAD:
        total = gl.sum(acc_p, axis=0)
        if MODE == SINK:
            total = -total
        gl.store(PARAM_PART + (bh * num_n_blocks + nblk) * PARTIALS_PER_BLOCK + W, total)
    store_rows(DK + b * sdk_b + h * sdk_h, sdk_t, offs_n, Tk, dk * scale, HEAD_D, DK_L)
    store_rows(DV + b * sdv_b + h * sdv_h, sdv_t, offs_n, Tk, dv, HEAD_DV, DV_L)


@gluon.jit
def score_backward_kernel(
    q_desc, k_desc, v_desc, do_desc, lse_desc, delta_desc, dq_desc, PARAM, LSE, DELTA, DK, DV, PARAM_PART,
    sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t, H, Tq, Tk, num_bh, num_n_blocks, qk_scale2, scale,
    HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr, MODE: gl.constexpr, CAUSAL: gl.constexpr,
    PARAM_GRAD: gl.constexpr, BM: gl.constexpr, STAGES: gl.constexpr, ROWS_COPIED: gl.constexpr,
):
    """Grid: (num_n_blocks * B * H,), key block 0 (the longest under causality) first. q, k, v, dO are 4-D tensor
    descriptors (B, H, T, width) in blocks of (1, 1, rows, width): BM rows for q, dO, BLOCK_N for k, v; lse_desc and
    delta_desc 1-D descriptors of LSE and DELTA in blocks of BM (descriptors()). PARAM (H,) fp32: the bias (SIGMOID)
    or the sink logits (SINK), unread by SOFTPICK; LSE, DELTA (B, H, Tq) fp32 contiguous: L and Δ (SOFTPICK, SINK;
    unread by SIGMOID), copied by the loader with ROWS_COPIED (only where Tq % BM == 0: gluon.backward), else
    loaded by the warpgroups. dq_desc: the zero-filled contiguous fp32 (B, H, Tq, HEAD_D) buffer dQ/scale is added
    into, in blocks of (1, 1, BM, HEAD_D) (dq_descriptor()); PARAM_PART: (B, H, PARTIALS_PER_BLOCK · num_n_blocks)
    fp32, written with PARAM_GRAD. qk_scale2 = scale·log2 e. Three partitions: warpgroup 0 (the default, 4 warps),
    warpgroup 1 (4 warps) and the loader (1 warp): launch with num_warps=NUM_WARPS // 2 and maxnreg=MAX_REGISTERS."""
    BN: gl.constexpr = BLOCK_N
    dtype: gl.constexpr = q_desc.dtype
    pid = gl.program_id(0)
    bh = pid % num_bh
    nblk = pid // num_bh
    n0 = nblk * BN
    b = bh // H
    h = bh % H
    k_buf = gl.allocate_shared_memory(dtype, [1] + k_desc.block_type.shape, k_desc.layout)
    v_buf = gl.allocate_shared_memory(dtype, [1] + v_desc.block_type.shape, v_desc.layout)
    q_ring = gl.allocate_shared_memory(dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_ring = gl.allocate_shared_memory(dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    lse_ring = gl.allocate_shared_memory(gl.float32, [STAGES] + lse_desc.block_type.shape, lse_desc.layout)
    delta_ring = gl.allocate_shared_memory(gl.float32, [STAGES] + delta_desc.block_type.shape, delta_desc.layout)
    dx_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, BM], dtype)
    dx_bufs = gl.allocate_shared_memory(dtype, [2, BN, BM], dx_layout)
    # dQ's staging tiles, one per warpgroup
    dq_stages = gl.allocate_shared_memory(gl.float32, [2] + dq_desc.block_type.shape, dq_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    ready, empty = ring_barriers(STAGES)
    dx_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    dx_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(2):
        mbarrier.init(dx_ready.index(s), count=2)
        mbarrier.init(dx_free.index(s), count=1)
    mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [b, h, n0, 0], kv_bar, k_buf.index(0))
    tma.async_copy_global_to_shared(v_desc, [b, h, n0, 0], kv_bar, v_buf.index(0))
    m_end = gl.cdiv(Tq, BM) * BM
    m_lo = first_query_tile(n0, Tq, Tk, BM, CAUSAL)
    n_tiles = gl.maximum(m_end - m_lo, 0) // BM
    smem = (k_buf, v_buf, q_ring, do_ring, lse_ring, delta_ring, ready, empty, kv_bar, dx_bufs, dx_ready, dx_free,
            dq_stages)
    ptrs = (PARAM, LSE, DELTA, DK, DV, PARAM_PART, dq_desc)
    scalars = (sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t, b, h, n0, nblk, H, Tq, Tk, m_lo, n_tiles, num_n_blocks,
               qk_scale2, scale)
    gl.warp_specialize([
        (_warpgroup_partition, (0, smem, ptrs, scalars, HEAD_D, HEAD_DV, MODE, ROWS_COPIED, CAUSAL, PARAM_GRAD, BM,
                                 STAGES)),
        (_warpgroup_partition, (1, smem, ptrs, scalars, HEAD_D, HEAD_DV, MODE, ROWS_COPIED, CAUSAL, PARAM_GRAD, BM,
                                 STAGES)),
        (_loader_partition, ((q_desc, do_desc, lse_desc, delta_desc), (q_ring, do_ring, lse_ring, delta_ring), ready,
                             empty, b, h, H, Tq, m_lo, n_tiles, ROWS_COPIED, BM, STAGES)),
    ], [4, 1], [240, 24])


def descriptors(q, k, v, do, lse, delta, block_m: int) -> tuple:
    """The six inputs' descriptors: ``block_m`` query rows, BLOCK_N keys; L and Δ as flat fp32 vectors in blocks of
    ``block_m`` (flat_row_descriptor)."""
    n = BLOCK_N.value
    return (*row_descriptors((q, block_m), (k, n), (v, n), (do, block_m)), flat_row_descriptor(lse, block_m),
            flat_row_descriptor(delta, block_m))


def dq_descriptor(dq_acc, block_m: int):
    """The fp32 dQ buffer's (B, H, Tq, d) descriptor for the copy engine's reduce-add: blocks of ``block_m`` rows."""
    return fp32_row_descriptor(dq_acc, block_m, dq_acc.shape[-1])
