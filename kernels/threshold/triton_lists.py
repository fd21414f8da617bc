"""Exact tile skipping: the forward's record of occupied cells, and the compaction kernel that turns it into the lists
of tiles the backward kernels visit (README.md in this folder, "Exact skipping").

The record: uint8 (B, H, ceil(Tq / CELL), ceil(Tk / CELL)), zero-filled by the launcher; the forward sets cell (i, j)
to 1 when some weight of query rows [i·CELL, i·CELL + CELL) against keys [j·CELL, j·CELL + CELL) survives in either
view (u > 0 after the causal and bounds masks). Each forward tile folds its rectified scores, inside each thread, into
partial flags that each lie within one cell (``tile_flags``), and each thread stores 1 to the cell of each flag it
holds that is set (``mark_cells``): no tile shape has to match a cell, no thread waits for another, and no marking
races with another: they all write 1. A cell no weight survives in is never written and stays 0; so is every cell
above the diagonal.

A tile of a backward kernel is occupied when any cell it overlaps is marked; every weight of an unoccupied tile is 0
in both views, so are its slopes, and the tile adds nothing to any gradient (dλ and dβ included): skipping it is
exact.
``tile_lists_kernel`` builds, in one launch, for each (batch, query head):

* by key block (``KEYS``, for the key-block-parallel kernels: triton_backward.dkdv_kernel, gluon_backward.py): for
  each key block of BN_K keys the query tiles t (rows t·BM_K ..) the kernel would visit that are occupied, ascending,
  and the counts (entries that need the causal mask, all entries); the masked entries are the first ones.
* by query block (``QUERIES``, for triton_backward.dq_kernel): for each query block of BM_Q rows the key blocks j
  (keys j·BN_Q ..) that are occupied, ascending, and the counts (entries without the mask, all entries); the unmasked
  entries are the first ones.

A list holds at most every tile its kernel would visit, in the kernels' own order, so the deterministic path stays
bit-identical from run to run and, where the backward's recomputed scores agree with the forward's about which weights
survive, gives the bits of the dense loops (adding a product of zeros changes no sum).
"""

import triton
import triton.language as tl

from ..common import cdiv
from .triton_math import visible_keys

CELL = tl.constexpr(64)     # rows and keys of a record cell (the Gluon forward's warpgroup tile, 64 x 64)
CHUNK = tl.constexpr(128)   # tiles examined at once by the compaction


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def tile_flags(u1, u2, TWO_VIEWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Partial survivor flags of one forward tile (u1, u2: BLOCK_M x BLOCK_N, after the masks), shaped
    [BLOCK_M // 16, 8, KC, 4] with KC = max(BLOCK_N // CELL, 1): element (i, g, c, q) is True when some weight of rows
    i·16 + g and i·16 + 8 + g, against keys c·(BLOCK_N / KC) + 8·j + 2·q + e (every j, e = 0, 1), survives (u > 0)
    in either view. Each element's rows and keys lie inside one record cell and together the elements cover the tile,
    so marking the cells of the True elements (mark_cells) marks exactly the cells where a weight survived.

    Why this grouping: it is the one of Hopper's tensor-core accumulator (a thread holds rows g and g + 8 of a band of
    16 rows, and keys 2q, 2q + 1 of every 8), so with the scores in that layout every element is folded inside the
    thread that holds it: no shuffles, no shared memory, no barrier in the key loop. Any other layout gives the same
    flags (the grouping is a reshape, exact whatever the layout), only with data moved between threads. The fold ORs
    the bit patterns of max(u, 0), which the weights are made from anyway: a bitwise OR folds three values per
    instruction where a maximum folds two; a nonzero magnitude is a survivor (max(u, 0) may be -0.0)."""
    x = tl.maximum(u1, 0.0).to(tl.int32, bitcast=True)
    if TWO_VIEWS:
        x = x | tl.maximum(u2, 0.0).to(tl.int32, bitcast=True)
    KC: tl.constexpr = BLOCK_N // CELL if BLOCK_N > CELL else 1
    x = tl.reshape(x, [BLOCK_M // 16, 2, 8, KC, BLOCK_N // KC // 8, 4, 2])
    x = tl.reduce(x, 6, _or)
    x = tl.reduce(x, 4, _or)
    x = tl.reduce(x, 1, _or)
    return (x & 0x7FFFFFFF) != 0


@triton.jit
def mark_cells(REC_bh, m0, Tq, n0, flag, nN, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Mark the record cells of one forward tile (rows m0 .. m0 + BLOCK_M, keys n0 .. n0 + BLOCK_N) that ``flag``
    (tile_flags) says hold a survivor: one predicated byte store per element of ``flag``, each in the thread that
    folded it (the store's layout is the flags' own: nothing converts). REC_bh points at the head's (rows / CELL, nN)
    cells. Every marking writes 1, so tiles of any shape (several per cell, several cells per tile) mark the same
    record without races. Bands of rows starting at or past Tq write nothing (their cells are outside the record)."""
    KC: tl.constexpr = BLOCK_N // CELL if BLOCK_N > CELL else 1
    band = m0 + 16 * tl.arange(0, BLOCK_M // 16)
    cells = (REC_bh + (band // CELL)[:, None, None, None] * nN + n0 // CELL
             + tl.arange(0, KC)[None, None, :, None])
    cells = cells + tl.zeros([BLOCK_M // 16, 8, KC, 4], tl.int32)
    tl.store(cells, tl.full([BLOCK_M // 16, 8, KC, 4], 1, tl.uint8), mask=flag & (band < Tq)[:, None, None, None])


@triton.jit
def _compact(REC_bh, LIST, COUNTS, first, end, split, row0, key0, nM, nN,
             BY_KEY: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """The occupied tiles among first .. end - 1, ascending, into LIST; COUNTS gets (entries below ``split``, all).
    BY_KEY: the tiles are query tiles of BM rows against the key block at key0; else key blocks of BN keys against the
    query block at row0."""
    ROW_CELLS: tl.constexpr = BM // CELL if BM > CELL else 1
    KEY_CELLS: tl.constexpr = BN // CELL if BN > CELL else 1
    count = 0
    below = 0
    for t0 in range(first, end, CHUNK):
        t = t0 + tl.arange(0, CHUNK)
        inside = t < end
        occupied = tl.zeros([CHUNK], dtype=tl.int32)
        for a in tl.static_range(ROW_CELLS):
            if BY_KEY:
                r = (t * BM) // CELL + a
            else:
                r = row0 // CELL + a + tl.zeros([CHUNK], dtype=tl.int32)
            for c in tl.static_range(KEY_CELLS):
                if BY_KEY:
                    kc = key0 // CELL + c + tl.zeros([CHUNK], dtype=tl.int32)
                else:
                    kc = (t * BN) // CELL + c
                ok = inside & (r < nM) & (kc < nN)
                occupied |= tl.load(REC_bh + r * nN + kc, mask=ok, other=0).to(tl.int32)
        flag = (occupied != 0).to(tl.int32)
        tl.store(LIST + count + tl.cumsum(flag, 0) - 1, t, mask=flag != 0)
        count += tl.sum(flag, 0)
        below += tl.sum(flag * (t < split).to(tl.int32), 0)
    tl.store(COUNTS, below)
    tl.store(COUNTS + 1, count)


@triton.jit
def tile_lists_kernel(
    REC, LIST_K, COUNTS_K, LIST_Q, COUNTS_Q, Tq, Tk, nM, nN, programs_k, blocks_k, cap_k, blocks_q, cap_q,
    BM_K: tl.constexpr, BN_K: tl.constexpr, BM_Q: tl.constexpr, BN_Q: tl.constexpr, CAUSAL: tl.constexpr,
):
    """Grid: (programs_k + B·H·blocks_q,): program p < programs_k (= B·H·blocks_k) lists the query tiles of key
    block p % blocks_k of head p // blocks_k into LIST_K (cap_k entries each) and COUNTS_K (2 each); the others list
    the key blocks of each query block into LIST_Q, COUNTS_Q likewise. The visited ranges and the causal split are the
    kernels' (dkdv_kernel's m_lo, m_mid, m_end; visible_keys)."""
    pid = tl.program_id(0)
    if pid < programs_k:
        bh = pid // blocks_k
        n0 = (pid % blocks_k) * BN_K
        m_end = tl.cdiv(Tq, BM_K) * BM_K
        if CAUSAL:
            m_lo = (tl.maximum(n0 - (Tk - Tq), 0) // BM_K) * BM_K
            m_mid = tl.cdiv(n0 + BN_K - 1 - (Tk - Tq), BM_K) * BM_K
            m_mid = tl.minimum(tl.maximum(m_mid, m_lo), m_end)
        else:
            m_lo = 0
            m_mid = 0
        _compact(REC + bh.to(tl.int64) * nM * nN, LIST_K + pid.to(tl.int64) * cap_k, COUNTS_K + 2 * pid,
                 m_lo // BM_K, m_end // BM_K, m_mid // BM_K, 0, n0, nM, nN, True, BM_K, BN_K)
    else:
        q = pid - programs_k
        bh = q // blocks_q
        m0 = (q % blocks_q) * BM_Q
        full_end, hi = visible_keys(m0, Tq, Tk, BM_Q, BN_Q, CAUSAL)
        _compact(REC + bh.to(tl.int64) * nM * nN, LIST_Q + q.to(tl.int64) * cap_q, COUNTS_Q + 2 * q,
                 0, tl.cdiv(hi, BN_Q), full_end // BN_Q, m0, 0, nM, nN, False, BM_Q, BN_Q)


def record_shape(B: int, H: int, Tq: int, Tk: int) -> tuple[int, int, int, int]:
    """The record's shape for queries (B, H, Tq, ·) against Tk keys."""
    cell = CELL.value
    return (B, H, cdiv(Tq, cell), cdiv(Tk, cell))
