"""The forward of sigmoid attention as one Gluon kernel for Hopper (sm_90), in the form of the paired threshold
forward (kernels/threshold/gluon_forward.py) with one view. Opt-in (launch.GLUON_FORWARD) until it is timed against
the Triton forward on a GPU.

One program per 128 query rows of one head, three partitions:

- a one-warp loader: the program's q rows (two tiles of 64) once, then k, v in blocks of BLOCK_N keys through a ring
  of STAGES stages (copy engine, mbarriers);
- two warpgroups, each over 64 of the rows: per key block the scores (one product), z = s·(scale·log2 e) + b·log2 e,
  w = σ as the Triton kernel's SIGMOID_MODE 1 evaluates it (one ex2 and a degree-4 polynomial; the Gluon backward's
  _sigmoid_and_slope), 0 where masked, O += w v (a second product, w from registers, rounded to v's dtype).

The warpgroups share the ring (a stage is refilled once both have released it) and nothing else, so one's elementwise
work can run under the other's products. Only key blocks crossing the diagonal or Tk take the causal/edge mask (two
loops, as the Triton forward). Same contract as triton_forward.sigmoid_fwd_kernel: writes O. Only 16-bit inputs, one
key/value head per query head, q/k head dimension 64, v's a power of two from 16 to 128, rows readable by tensor
descriptors (launch.gluon_forward_fits).
"""

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma

from ..gluon_tiles import operand, row_descriptors, store_rows
from ..score_gluon_backward import _sigmoid_and_slope

ROWS = gl.constexpr(64)        # query rows per warpgroup
BLOCK_M = gl.constexpr(128)    # query rows per program (two warpgroups)
BLOCK_N = gl.constexpr(64)     # keys per ring stage
STAGES = 2                     # depth of the key-side ring, launched as the kernel's STAGES (an attribute: try others)
NUM_WARPS = gl.constexpr(8)    # compute warps: two warpgroups, each its own partition (the launch names the first's 4)
MAX_REGISTERS = 168            # per thread over the 12 warps allocated: the compute warps get 240


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
def _key_end(last_row, Tq, Tk, CAUSAL: gl.constexpr):
    """One past the last key query row ``last_row`` sees: its position + 1 under the causal mask, else Tk."""
    if CAUSAL:
        hi = gl.minimum(last_row + (Tk - Tq) + 1, Tk)
    else:
        hi = Tk
    return hi


@gluon.jit
def _key_block(acc, j, q_s, k_ring, v_ring, ready, empty, qk_scale2, bias2, pos, Tk, zero_s, HEAD_D: gl.constexpr,
               HEAD_DV: gl.constexpr, CAUSAL: gl.constexpr, MASKED: gl.constexpr, S_L: gl.constexpr,
               O_L: gl.constexpr, STAGES: gl.constexpr):
    """Key block j (ring stage j % STAGES): the scores, w = σ(z), acc += w v; the stage released after. MASKED: keys
    past Tk or (CAUSAL) after a row's position get w = 0 (blocks crossing the diagonal or Tk)."""
    stage = j % STAGES
    mbarrier.wait(ready.index(stage), (j // STAGES) & 1)
    k_s = operand(k_ring.index(stage), BLOCK_N, HEAD_D)
    v_s = operand(v_ring.index(stage), BLOCK_N, HEAD_DV)
    s = warpgroup_mma(q_s, k_s.permute((1, 0)), zero_s, use_acc=False)
    w, _ = _sigmoid_and_slope(s * qk_scale2 + bias2)
    if MASKED:
        cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_L))
        if CAUSAL:
            keep = (cols[None, :] < Tk) & (cols[None, :] <= pos[:, None])
        else:
            keep = (cols[None, :] < Tk) & (pos >= 0)[:, None]
        w = gl.where(keep, w, 0.0)
    w_op = gl.convert_layout(w.to(v_s.dtype), gl.DotOperandLayout(0, O_L, 2))
    acc = warpgroup_mma(w_op, v_s, acc)
    # every product reading this stage has completed (synchronous): release it
    mbarrier.arrive(empty.index(stage), count=1)
    return acc


@gluon.jit
def _warpgroup_partition(W: gl.constexpr, smem, ptrs, scalars, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr,
                         CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    """Warpgroup W's 64 rows: every key block up to its last visible key, then O stored; the blocks past that (the
    other warpgroup's) are only released."""
    q_buf, k_ring, v_ring, q_bar, ready, empty = smem
    O, BIAS = ptrs
    so_b, so_h, so_t, b, h, m0, Tq, Tk, n_blocks, qk_scale2 = scalars
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BLOCK_N, 16])
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, HEAD_DV, 16])
    ROW_L: gl.constexpr = gl.SliceLayout(1, S_L)
    r0 = m0 + W * ROWS
    offs_m = r0 + gl.arange(0, ROWS, layout=ROW_L)
    pos = offs_m + (Tk - Tq)
    # the last key any of these rows sees, +1 (0 when every row is past Tq)
    last_row = gl.minimum(r0 + ROWS, Tq) - 1
    hi = gl.where(last_row >= r0, _key_end(last_row, Tq, Tk, CAUSAL), 0)
    my_blocks = gl.cdiv(hi, BLOCK_N)
    bias2 = gl.load(BIAS + h) * 1.4426950408889634
    mbarrier.wait(q_bar, phase=0)
    q_s = operand(q_buf.index(W), ROWS, HEAD_D)
    acc = gl.zeros([ROWS, HEAD_DV], gl.float32, layout=O_L)
    zero_s = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=S_L)
    # key blocks every row of the warpgroup sees whole (no mask), then the ones crossing the diagonal or Tk
    full = gl.minimum(_key_end(r0, Tq, Tk, CAUSAL) // BLOCK_N, my_blocks)
    for j in range(0, full):
        acc = _key_block(acc, j, q_s, k_ring, v_ring, ready, empty, qk_scale2, bias2, pos, Tk, zero_s, HEAD_D,
                         HEAD_DV, CAUSAL, False, S_L, O_L, STAGES)
    for j in range(full, my_blocks):
        acc = _key_block(acc, j, q_s, k_ring, v_ring, ready, empty, qk_scale2, bias2, pos, Tk, zero_s, HEAD_D,
                         HEAD_DV, CAUSAL, True, S_L, O_L, STAGES)
    # the blocks only the other warpgroup reads: released once loaded (waiting keeps the arrivals in step)
    for j in range(my_blocks, n_blocks):
        stage = j % STAGES
        mbarrier.wait(ready.index(stage), (j // STAGES) & 1)
        mbarrier.arrive(empty.index(stage), count=1)
    store_rows(O + b * so_b + h * so_h, so_t, offs_m, Tq, acc, HEAD_DV, O_L)


@gluon.jit
def sigmoid_forward_kernel(q_desc, k_desc, v_desc, O, BIAS, so_b, so_h, so_t, H, Tq, Tk, num_bh, num_m_blocks,
                           qk_scale2, HEAD_D: gl.constexpr, HEAD_DV: gl.constexpr, CAUSAL: gl.constexpr,
                           STAGES: gl.constexpr):
    """Grid: (num_m_blocks * B * H,), the longest query blocks first. The three inputs are 4-D tensor descriptors
    (B, H, T, width) in blocks of (1, 1, rows, width): ROWS rows for q, BLOCK_N for k and v (descriptors()). BIAS (H,)
    fp32; qk_scale2 = scale · log2 e. Launch with num_warps=NUM_WARPS // 2 and maxnreg=MAX_REGISTERS."""
    dtype: gl.constexpr = q_desc.dtype
    pid = gl.program_id(0)
    bh = pid % num_bh
    m0 = (num_m_blocks - 1 - pid // num_bh) * BLOCK_M
    b = bh // H
    h = bh % H
    q_buf = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_ring = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_ring = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=2)
    # the key blocks the program's last row sees (both warpgroups step through all of them)
    n_blocks = gl.cdiv(_key_end(gl.minimum(m0 + BLOCK_M, Tq) - 1, Tq, Tk, CAUSAL), BLOCK_N)
    smem = (q_buf, k_ring, v_ring, q_bar, ready, empty)
    ptrs = (O, BIAS)
    scalars = (so_b, so_h, so_t, b, h, m0, Tq, Tk, n_blocks, qk_scale2)
    gl.warp_specialize([
        (_warpgroup_partition, (0, smem, ptrs, scalars, HEAD_D, HEAD_DV, CAUSAL, STAGES)),
        (_warpgroup_partition, (1, smem, ptrs, scalars, HEAD_D, HEAD_DV, CAUSAL, STAGES)),
        (_loader_partition, (q_desc, k_desc, v_desc, q_buf, k_ring, v_ring, q_bar, ready, empty, b, h, m0, n_blocks,
                             STAGES)),
    ], [4, 1], [240, 24])


def descriptors(q, k, v) -> tuple:
    """The three inputs' descriptors: ROWS query rows, BLOCK_N keys."""
    return row_descriptors((q, ROWS.value), (k, BLOCK_N.value), (v, BLOCK_N.value))


def grid(Tq: int, B: int, H: int) -> int:
    return triton.cdiv(Tq, BLOCK_M.value) * B * H
