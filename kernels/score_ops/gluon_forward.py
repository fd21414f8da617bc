"""The forward of the one-view score ops (sigmoid, softpick, softmax with a sink) as one Gluon kernel for Hopper
(sm_90), in the form of the paired threshold forward (kernels/threshold/gluon_forward.py) with one view. Taken only
when asked (the mode's gluon.GLUON_FORWARD, or the launchers' ``gluon=True``). Timed alone on an H100 it is faster than
the Triton forward for sigmoid and softpick and slower for the sink mode; forward+backward with it was not faster
(BENCHMARKS.md, "σ's ex2 operand, the scale folded into the exponent, …").

One program per 128 query rows of one head, three partitions:

- a one-warp loader: the program's q rows (two tiles of 64) once, then k, v in blocks of BLOCK_N keys through a ring
  of STAGES stages (copy engine, mbarriers);
- two warpgroups, each over 64 of the rows: per key block the scores (one product; the scale, with log2 e, enters
  each score's exponent or σ argument by one FMA, and the normalised modes take a row's maximum before scaling, so
  gluon.forward takes them only for a positive scale), the weights, and O += p v (a second product, p from
  registers, rounded to v's dtype). The weights are the Triton forwards':
    sigmoid    w = σ(s + b_h log2 e), as SIGMOID_MODE 1 evaluates it (one ex2 and a degree-4 polynomial: _sigmoid);
               no row state;
    softpick   the online normaliser of kernels/softpick/triton_forward.py: m from 0, u = 2^(s − m) − 2^(−m),
               l += Σ|u|, p = max(u, 0), o = acc / (l + ε 2^(−m)), L = m + log2(l + ε 2^(−m));
    sink       m from s_h log2 e and l from 1 (the sink's own term), p = 2^(s − m), o = acc / l, L = m + log2 l;
  both normalised modes rescale l and acc by 2^(m − m') when a row's m grows, and store L for the backward.

The warpgroups share the ring (a stage is refilled once both have released it) and nothing else, so one's elementwise
work can run under the other's products. Only key blocks crossing the diagonal or Tk take the causal/edge mask (two
loops, as the Triton forwards). Only 16-bit inputs, one key/value head per query head, q/k head dimension 64, v's a
power of two from 16 to 128, rows readable by tensor descriptors (gluon.gluon_forward_fits).
"""


from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma

from ..common import cdiv
from ..gluon_tiles import (key_end, operand, query_block, release_stages, ring_barriers, row_descriptors,
                          row_key_blocks, store_rows, wgmma_layout)
from .gluon_backward import SIGMOID, SINK, SOFTPICK
from ..sigmoid import triton_forward as sigmoid_forward

ROWS = gl.constexpr(64)        # query rows per warpgroup
BLOCK_M = gl.constexpr(128)    # query rows per program (two warpgroups)
BLOCK_N = gl.constexpr(128)    # keys per ring stage
STAGES = 2                     # depth of the key-side ring, launched as the kernel's STAGES (an attribute: try others)
LOG2E = gl.constexpr(1.4426950408889634)
NUM_WARPS = gl.constexpr(8)    # compute warps: two warpgroups, each its own partition (the launch names the first's 4)
MAX_REGISTERS = 168            # per thread over the 12 warps allocated: the compute warps get 240


# 1 / (1 + t) on t ∈ [0, 1]: the sigmoid forward's degree-4 minimax polynomial (relative error ≤ 2.97e-4)
RCP_C0 = gl.constexpr(sigmoid_forward.RCP_C0.value)
RCP_C1 = gl.constexpr(sigmoid_forward.RCP_C1.value)
RCP_C2 = gl.constexpr(sigmoid_forward.RCP_C2.value)
RCP_C3 = gl.constexpr(sigmoid_forward.RCP_C3.value)
RCP_C4 = gl.constexpr(sigmoid_forward.RCP_C4.value)
EX2_OF_MINUS_ABS = gl.constexpr(sigmoid_forward.EX2_OF_MINUS_ABS.value)  # 2^(−|z|) as one asm block


@gluon.jit
def _sigmoid(z):
    """σ of z in log2 units as the Triton kernels' SIGMOID_MODE 1: t = 2^(−|z|), r ≈ 1/(1 + t) by the polynomial,
    σ = r (z ≥ 0) or t·r (relatively exact for tiny weights). One special-function operation per score, which the
    forward's two products leave room for; the backward uses ex2 and the reciprocal (gluon_backward.py)."""
    # one asm block, so that ptxas folds −|z| into the ex2's operand (sigmoid_forward.exp2_of_minus_abs says why)
    t = gl.inline_asm_elementwise(EX2_OF_MINUS_ABS, "=f,f", [z], dtype=gl.float32, is_pure=True, pack=1)
    r = (((RCP_C4 * t + RCP_C3) * t + RCP_C2) * t + RCP_C1) * t + RCP_C0
    return gl.where(z >= 0.0, r, t * r)


@gluon.jit
def _loader_partition(q_desc, k_desc, v_desc, q_buf, k_ring, v_ring, q_bar, ready, empty, b, h, m0, n_blocks,
                      STAGES: gl.constexpr):
    """The program's query rows once, then key block j into stage j % STAGES once both warpgroups released it."""
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    for w in gl.static_range(2):
        tma.async_copy_global_to_shared(q_desc, [b, h, m0 + w * ROWS, 0], q_bar, q_buf.index(w))
    for j in range(n_blocks):
        stage = j % STAGES
        mbarrier.wait(empty.index(stage), ((j // STAGES) & 1) ^ 1)
        bar = ready.index(stage)
        mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b, h, j * BLOCK_N, 0], bar, k_ring.index(stage))
        tma.async_copy_global_to_shared(v_desc, [b, h, j * BLOCK_N, 0], bar, v_ring.index(stage))


@gluon.jit
def _key_block(acc, m, l, j, q_s, k_ring, v_ring, ready, empty, qk_scale2, param2, pos, Tk, zero_s,
               HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr, MODE: gl.constexpr, CAUSAL: gl.constexpr,
               MASKED: gl.constexpr, S_L: gl.constexpr, O_L: gl.constexpr, STAGES: gl.constexpr):
    """Key block j (ring stage j % STAGES) folded into the rows' state (acc; m, l in the normalised modes); the stage
    released after. MASKED: keys past Tk or (CAUSAL) after a row's position get no weight (blocks crossing the
    diagonal or Tk)."""
    stage = j % STAGES
    mbarrier.wait(ready.index(stage), (j // STAGES) & 1)
    k_s = operand(k_ring.index(stage), BLOCK_N, HEAD_D)
    v_s = operand(v_ring.index(stage), BLOCK_N, HEAD_DV)
    s = warpgroup_mma(q_s, k_s.permute((1, 0)), zero_s, use_acc=False)  # unscaled: the scale enters one FMA below
    if MASKED:
        cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_L))
        if CAUSAL:
            keep = (cols[None, :] < Tk) & (cols[None, :] <= pos[:, None])
        else:
            keep = (cols[None, :] < Tk) & (pos >= 0)[:, None]
    if MODE == SIGMOID:
        p = _sigmoid(s * qk_scale2 + param2)
        if MASKED:
            p = gl.where(keep, p, 0.0)
    else:
        if MASKED:
            s = gl.where(keep, s, float("-inf"))
        # the row maximum of the unscaled scores, scaled once per row: the same value as the maximum of the scaled
        # ones for a positive scale (rounding is monotonic; gluon.forward takes this kernel only then)
        m_new = gl.maximum(m, gl.max(s, axis=1) * qk_scale2)
        alpha = gl.exp2(m - m_new)
        e = gl.exp2(s * qk_scale2 - m_new[:, None])
        if MODE == SOFTPICK:
            u = e - gl.exp2(-m_new)[:, None]
            if MASKED:
                u = gl.where(keep, u, 0.0)
            p = gl.maximum(u, 0.0)
            l = l * alpha + gl.sum(gl.abs(u), axis=1)
        else:
            p = e
            l = l * alpha + gl.sum(p, axis=1)
        m = m_new
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
    p_op = gl.convert_layout(p.to(v_s.dtype), gl.DotOperandLayout(0, O_L, 2))
    acc = warpgroup_mma(p_op, v_s, acc)
    # every product reading this stage has completed (synchronous): release it
    mbarrier.arrive(empty.index(stage), count=1)
    return acc, m, l


@gluon.jit
def _warpgroup_partition(W: gl.constexpr, smem, ptrs, scalars, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr,
                         MODE: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    """Warpgroup W's 64 rows: every key block up to its last visible key, then O (and L) stored; the blocks past that
    (the other warpgroup's) are only released."""
    q_buf, k_ring, v_ring, q_bar, ready, empty = smem
    O, LSE, PARAM = ptrs
    so_b, so_h, so_t, b, h, m0, H, Tq, Tk, n_blocks, qk_scale2, eps = scalars
    S_L: gl.constexpr = wgmma_layout(BLOCK_N)
    O_L: gl.constexpr = wgmma_layout(HEAD_DV)
    ROW_L: gl.constexpr = gl.SliceLayout(1, S_L)
    r0 = m0 + W * ROWS
    offs_m = r0 + gl.arange(0, ROWS, layout=ROW_L)
    pos = offs_m + (Tk - Tq)
    # key blocks every row of the warpgroup sees whole (no mask), then the ones crossing the diagonal or Tk
    full, my_blocks = row_key_blocks(r0, ROWS, Tq, Tk, BLOCK_N, CAUSAL)
    param2 = 0.0
    if MODE != SOFTPICK:
        param2 = gl.load(PARAM + h) * LOG2E   # the bias b_h or the sink logit s_h, in log2 units
    if MODE == SINK:   # the sink's own term: a key of score s_h and value 0
        m = gl.full([ROWS], 0.0, gl.float32, layout=ROW_L) + param2
        l = gl.full([ROWS], 1.0, gl.float32, layout=ROW_L)
    else:
        m = gl.zeros([ROWS], gl.float32, layout=ROW_L)
        l = gl.zeros([ROWS], gl.float32, layout=ROW_L)
    mbarrier.wait(q_bar, phase=0)
    q_s = operand(q_buf.index(W), ROWS, HEAD_D)
    acc = gl.zeros([ROWS, HEAD_DV], gl.float32, layout=O_L)
    zero_s = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=S_L)
    for j in range(0, full):
        acc, m, l = _key_block(acc, m, l, j, q_s, k_ring, v_ring, ready, empty, qk_scale2, param2, pos, Tk, zero_s,
                               HEAD_D, HEAD_DV, MODE, CAUSAL, False, S_L, O_L, STAGES)
    for j in range(full, my_blocks):
        acc, m, l = _key_block(acc, m, l, j, q_s, k_ring, v_ring, ready, empty, qk_scale2, param2, pos, Tk, zero_s,
                               HEAD_D, HEAD_DV, MODE, CAUSAL, True, S_L, O_L, STAGES)
    release_stages(ready, empty, my_blocks, n_blocks, STAGES)
    if MODE != SIGMOID:
        if MODE == SOFTPICK:
            den = l + eps * gl.exp2(-m)
        else:
            den = l
        gl.store(LSE + (b * H + h) * Tq + offs_m, m + gl.log2(den), mask=offs_m < Tq)
        acc = acc / gl.convert_layout(den, gl.SliceLayout(1, O_L))[:, None]
    store_rows(O + b * so_b + h * so_h, so_t, offs_m, Tq, acc, HEAD_DV, O_L)


@gluon.jit
def score_forward_kernel(q_desc, k_desc, v_desc, O, LSE, PARAM, so_b, so_h, so_t, H, Tq, Tk, num_bh, num_m_blocks,
                         qk_scale2, eps, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr, MODE: gl.constexpr,
                         CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    """Grid: (num_m_blocks * B * H,), the longest query blocks first. The three inputs are 4-D tensor descriptors
    (B, H, T, width) in blocks of (1, 1, rows, width): ROWS rows for q, BLOCK_N for k and v (descriptors()).
    LSE (B, H, Tq) fp32 contiguous: L_i in log2 units (written in the normalised modes); PARAM (H,) fp32: the bias
    (SIGMOID) or the sink logits (SINK), not read by SOFTPICK; qk_scale2 = scale · log2 e; eps: softpick's ε. Launch
    with num_warps=NUM_WARPS // 2 and maxnreg=MAX_REGISTERS."""
    dtype: gl.constexpr = q_desc.dtype
    b, h, m0 = query_block(num_bh, num_m_blocks, H, BLOCK_M)
    q_buf = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_ring = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_ring = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    ready, empty = ring_barriers(STAGES)
    # the key blocks the program's last row sees (both warpgroups step through all of them)
    n_blocks = gl.cdiv(key_end(gl.minimum(m0 + BLOCK_M, Tq) - 1, Tq, Tk, CAUSAL), BLOCK_N)
    smem = (q_buf, k_ring, v_ring, q_bar, ready, empty)
    ptrs = (O, LSE, PARAM)
    scalars = (so_b, so_h, so_t, b, h, m0, H, Tq, Tk, n_blocks, qk_scale2, eps)
    gl.warp_specialize([
        (_warpgroup_partition, (0, smem, ptrs, scalars, HEAD_D, HEAD_DV, MODE, CAUSAL, STAGES)),
        (_warpgroup_partition, (1, smem, ptrs, scalars, HEAD_D, HEAD_DV, MODE, CAUSAL, STAGES)),
        (_loader_partition, (q_desc, k_desc, v_desc, q_buf, k_ring, v_ring, q_bar, ready, empty, b, h, m0, n_blocks,
                             STAGES)),
    ], [4, 1], [240, 24])


def descriptors(q, k, v) -> tuple:
    """The three inputs' descriptors: ROWS query rows, BLOCK_N keys."""
    return row_descriptors((q, ROWS.value), (k, BLOCK_N.value), (v, BLOCK_N.value))


def grid(Tq: int, B: int, H: int) -> int:
    return cdiv(Tq, BLOCK_M.value) * B * H
