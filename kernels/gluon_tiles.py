"""Gluon helpers the Hopper kernels share (kernels/threshold/gluon_forward.py, gluon_backward.py,
kernels/score_ops/gluon_forward.py and gluon_backward.py): copy-engine descriptors of (B, H, T, width) rows, their
blocks seen as product operands, a warpgroup's accumulator layout, a program's query block, a ring's barriers, a tile's
query rows and key range, the partition barrier, and dQ's reduce-add by the copy engine.

Imports Triton's Gluon at once: import it only where gluon_support.gluon_available() says Gluon exists.
"""

import functools

import torch
from triton import constexpr_function
from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .common import block_descriptor, row_block_descriptor

# A barrier of the warps of the calling partition (every warp of the program outside warp_specialize).
if hasattr(gl, "thread_barrier"):  # Triton 3.6 (the GPU machine's); later versions name it barrier
    @gluon.jit
    def partition_barrier():
        gl.thread_barrier()
else:
    @gluon.jit
    def partition_barrier():
        gl.barrier()


@constexpr_function
def wgmma_layout(columns):
    """The accumulator layout of one warpgroup's products (Hopper wgmma, its 4 warps along the rows) with ``columns``
    columns: scores (columns = keys or query rows) and accumulators (columns = a head dimension)."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, columns, 16])


@gluon.jit
def query_block(num_bh, num_m_blocks, H, BLOCK_M: gl.constexpr):
    """This program's query block in a (num_m_blocks * B * H,) grid, as the Triton kernels' query_block_program
    (kernels/threshold/triton_math.py): the longest (last) blocks first, the heads of one block adjacent. Returns
    (b, h, m0): batch, head, the block's first row."""
    pid = gl.program_id(0)
    bh = pid % num_bh
    m0 = (num_m_blocks - 1 - pid // num_bh) * BLOCK_M
    return bh // H, bh % H, m0


@gluon.jit
def tile_rows(m0, BM: gl.constexpr, Q_L: gl.constexpr):
    """Rows m0 .. m0 + BM of a query tile. The added m0 >> 30 (0: rows < 2^30) makes the whole vector vary with the
    tile, so the compiler cannot hoist the addresses built from it out of the loop and hold them (8 64-bit
    addresses per thread per vector) in registers it lacks."""
    return m0 + (gl.arange(0, BM, layout=Q_L) + (m0 >> 30))


@gluon.jit
def last_visible_key(offs_m, Tq, Tk, CAUSAL: gl.constexpr, BM: gl.constexpr, Q_L: gl.constexpr):
    """Per query row of offs_m (at absolute position i + Tk − Tq), the last key it sees; −1 past Tq, so that the mask
    key ≤ last is one comparison per element and also drops keys past Tk."""
    if CAUSAL:
        last = gl.minimum(offs_m + (Tk - Tq), Tk - 1)
    else:
        last = gl.full([BM], Tk - 1, gl.int32, layout=Q_L)
    return gl.where(offs_m < Tq, last, -1)


@gluon.jit
def key_end(last_row, Tq, Tk, CAUSAL: gl.constexpr):
    """One past the last key query row ``last_row`` sees: its position + 1 under the causal mask, else Tk."""
    if CAUSAL:
        hi = gl.minimum(last_row + (Tk - Tq) + 1, Tk)
    else:
        hi = Tk
    return hi


@gluon.jit
def row_key_blocks(r0, ROWS: gl.constexpr, Tq, Tk, KEYS: gl.constexpr, CAUSAL: gl.constexpr):
    """For the ROWS query rows from r0, in blocks of KEYS keys: (the blocks every row sees whole, the blocks any row
    sees); (0, 0) when every row is past Tq."""
    last_row = gl.minimum(r0 + ROWS, Tq) - 1
    seen = gl.cdiv(gl.where(last_row >= r0, key_end(last_row, Tq, Tk, CAUSAL), 0), KEYS)
    return gl.minimum(key_end(r0, Tq, Tk, CAUSAL) // KEYS, seen), seen


@gluon.jit
def release_stages(ready, empty, first, last, STAGES: gl.constexpr):
    """The ring stages of key blocks first .. last − 1 released unread (blocks only the other warpgroup reads), each
    once its copies have landed: waiting keeps this warpgroup's arrivals in step with the loader."""
    for j in range(first, last):
        stage = j % STAGES
        mbarrier.wait(ready.index(stage), (j // STAGES) & 1)
        mbarrier.arrive(empty.index(stage), count=1)


@gluon.jit
def ring_barriers(STAGES: gl.constexpr):
    """The (ready, empty) mbarriers of a ring of STAGES stages that a loader fills for two warpgroups: a stage is
    ready once its copies land (the loader's one expect), empty once both warpgroups have released it."""
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=2)
    return ready, empty


@gluon.jit
def first_query_tile(n0, Tq, Tk, BM: gl.constexpr, CAUSAL: gl.constexpr):
    """The first row of the first BM-row query tile that sees key n0 (0 without causality)."""
    if CAUSAL:
        m_lo = (gl.maximum(n0 - (Tk - Tq), 0) // BM) * BM
    else:
        m_lo = 0
    return m_lo


@gluon.jit
def operand(smem, ROWS: gl.constexpr, WIDTH: gl.constexpr):
    """A (1, 1, ROWS, WIDTH) copy-engine tile seen as the (ROWS, WIDTH) operand of a product: the same bytes
    under the 2-D layout of the same swizzle."""
    return smem._reinterpret(smem.dtype, [ROWS, WIDTH], gl.NVMMASharedLayout.get_default_for([ROWS, WIDTH], smem.dtype))


@builtin
def tma_reduce_add(tensor_desc, coord, src, _semantic=None):
    """Add the shared-memory block ``src`` into the block of ``tensor_desc`` at ``coord`` by the copy engine
    (cp.reduce.async.bulk.tensor .add: the additions are made in the L2, none by the issuing warps), as one bulk
    group; rows and columns past the tensor's shape are dropped, as with a copy. Like
    tma.async_copy_shared_to_global (which Gluon has; the reduction it exposes only through its op builder, in
    Triton 3.6 and 3.7): wait with tma.store_wait before ``src`` is written again or the program ends."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord, src.handle)


@gluon.jit
def add_dq_rows(dq_t, stage, dq_desc, b, h, m0, col0, ROWS: gl.constexpr, WIDTH: gl.constexpr,
                PENDING: gl.constexpr):
    """Add the tile's dq'^T (WIDTH x ROWS, a product's accumulator) into columns col0 .. of query rows m0 .. of head
    (b, h) of the fp32 buffer of ``dq_desc`` (blocks of (1, 1, ROWS, WIDTH)), through the calling warpgroup's staging
    tile ``stage`` (one such block of shared memory): once at most PENDING bulk groups this warpgroup issued are still
    reading their tiles (those issued from this tile since are not: the caller counts), the rows are stored into the
    tile and the copy engine adds it (tma_reduce_add; rows past the buffer's Tq dropped). Wait with
    tma.store_wait(0) before the program ends."""
    tma.store_wait(PENDING)
    partition_barrier()  # every warp stores into the tile only after the issuing thread's wait
    operand(stage, ROWS, WIDTH).store(gl.permute(dq_t, (1, 0)))
    fence_async_shared()
    partition_barrier()  # the whole tile is stored before the copy engine reads it
    tma_reduce_add(dq_desc, [b, h, m0, col0], stage)


@gluon.jit
def store_rows(BASE, s_t, offs, limit, tile, WIDTH: gl.constexpr, L: gl.constexpr):
    """Store the (rows, WIDTH) fp32 ``tile`` of layout L, cast to BASE's dtype, into rows ``offs`` (stride s_t, the
    last dimension contiguous) of one head at BASE, the rows at ``limit`` or past it left out."""
    rows = gl.convert_layout(offs, gl.SliceLayout(1, L))
    cols = gl.arange(0, WIDTH, layout=gl.SliceLayout(0, L))
    gl.store(BASE + rows[:, None] * s_t + cols[None, :], tile.to(BASE.dtype.element_ty), mask=(rows < limit)[:, None])


@functools.lru_cache(maxsize=None)
def _row_block_layout(rows: int, width: int, dtype=gl.bfloat16) -> gl.NVMMASharedLayout:
    """The shared-memory layout of a (1, 1, rows, width) block of 16-bit (any: the layout depends only on the width
    in bits) or fp32 values (made once: 5 us a call on a CPU)."""
    return gl.NVMMASharedLayout.get_default_for([1, 1, rows, width], dtype)


def row_descriptor(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """The copy-engine descriptor of the (B, H, T, width) 16-bit tensor ``t`` in blocks of ``rows`` rows of one head,
    checked once per layout (common.row_block_descriptor)."""
    width = t.shape[-1]
    return row_block_descriptor(TensorDescriptor, t, rows, width, _row_block_layout(rows, width))


def row_descriptors(*blocks: tuple) -> tuple:
    """Copy-engine descriptors (row_descriptor) of (B, H, T, width) 16-bit tensors, given as (tensor, rows) pairs."""
    return tuple(row_descriptor(t, rows) for t, rows in blocks)


def fp32_row_descriptor(t: torch.Tensor, rows: int, width: int) -> TensorDescriptor:
    """The copy-engine descriptor of the (B, H, T, D) fp32 tensor ``t`` in blocks of ``rows`` rows and ``width`` of its
    D columns of one head (for tma_reduce_add into dQ's fp32 buffers), checked once per layout."""
    return row_block_descriptor(TensorDescriptor, t, rows, width, _row_block_layout(rows, width, gl.float32))


@functools.lru_cache(maxsize=None)
def _flat_block_layout() -> gl.NVMMASharedLayout:
    """The shared-memory layout of a 1-D fp32 block, unswizzled."""
    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1)


def flat_row_descriptor(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """The copy-engine descriptor of the contiguous fp32 per-row vector ``t`` (B, H, T) read as one flat vector in
    blocks of ``rows``: block i of head bh starts at element bh·T + i·rows (a (B, H, T) descriptor would need T·4
    bytes to be a multiple of 16). Kernels copy with it only where T is a multiple of ``rows``, so that every block
    starts 16-byte aligned and lies inside its head: at T = 3001 the copies faulted (score_ops.gluon.backward)."""
    return block_descriptor(TensorDescriptor, t.view(-1), [rows], _flat_block_layout())
