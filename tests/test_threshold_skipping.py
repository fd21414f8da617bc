"""Exact tile skipping (kernels/threshold/triton_lists.py), under Triton's interpreter: the forward's record of occupied
cells, the compaction's lists against a Python reference, and every backward path visiting only the listed tiles
against float64, on inputs where whole tiles are empty and others hold a single survivor (at a tile's corner, on the
diagonal, in the last row of a sequence that is not a multiple of the tile) or many. A record with an occupied cell
cleared must give wrong gradients (the lists are what the kernels visit), and the deterministic path stays
bit-identical from run to run and to the loops over every tile."""

import dataclasses

import pytest
import torch

from threshold_float64 import (Case, Plant, cell_support, make_inputs, planted_inputs,  # noqa: F401
                               poisoned_outputs, run_and_compare, run_kernel)

from kernels.threshold import launch, tiles
from kernels.threshold.autograd import threshold_attention_triton
from kernels.threshold.options import ThresholdOptions
from kernels.threshold.tiles import BackwardPlan, TileConfig

FP32_TOL = 1e-4

# two views, grouped key/value heads (2 query heads on one), 130 tokens (the last cell 2 rows wide): view 1 has a
# single survivor at the corner of a cell (row 63, key 32: the last row of cell row 0) and, in head 1 only, a block
# of them (cell (1, 0)); view 2 one on the diagonal (cell (1, 1)) and one in the last row and key (cell (2, 2)).
TWO_VIEWS = (Case(T=130, d=32, dv=64, H=2, Hkv=1, lam=(0.5, 0.8)),
             [Plant(1, range(63, 64), range(32, 33)), Plant(1, range(110, 125), range(0, 20), heads=(1,)),
              Plant(2, range(100, 101), range(100, 101)), Plant(2, range(129, 130), range(129, 130))])
# one view, 70 queries against 150 keys (query row i at position i + 80): a survivor on the diagonal of row 0, one at
# the corner of a cell (row 63 at position 143, key 128), a block in head 0 only; rows 1-39 have none.
ONE_VIEW = (Case(T=150, Tq=70, d=48, dv=48, H=2, two_views=False, beta=(1.0, 0.7)),
            [Plant(1, range(0, 1), range(80, 81)), Plant(1, range(63, 64), range(128, 129)),
             Plant(1, range(40, 56), range(10, 30), heads=(0,))])


def _detached(inputs: dict, case: Case) -> tuple:
    names = ("q1", "k1", "v", "q2", "k2") if case.two_views else ("q1", "k1", "v")
    x = [inputs[n].detach() for n in names] + ([] if case.two_views else [None, None])
    return (*x, inputs.get("lam"), inputs["beta"])


def _reference_lists(rec: torch.Tensor, Tq: int, Tk: int, causal: bool, kind: str, bm: int, bn: int) -> dict:
    """{(head, block): (entries below the split, entries)} from the definitions: a tile is listed when its kernel
    visits it (some row < Tq sees some key of it) and it overlaps a marked 64 x 64 cell; for a key block, the split
    counts the tiles needing the causal mask (a row sees fewer keys than the block's last); for a query block, the
    tiles not needing it (every row sees every key, all below Tk)."""
    heads, nM, nN = rec.shape[0] * rec.shape[1], rec.shape[2], rec.shape[3]
    cells = rec.reshape(heads, nM, nN).bool()
    pos = lambda i: i + Tk - Tq  # noqa: E731

    def occupied(h, r0, r1, c0, c1):
        return bool(cells[h, r0 // 64:min(nM, (r1 - 1) // 64 + 1), c0 // 64:min(nN, (c1 - 1) // 64 + 1)].any())

    out = {}
    outer, inner = (-(-Tk // bn), -(-Tq // bm)) if kind == "keys" else (-(-Tq // bm), -(-Tk // bn))
    for h in range(heads):
        for blk in range(outer):
            entries, split = [], 0
            for t in range(inner):
                m0, n0 = (t * bm, blk * bn) if kind == "keys" else (blk * bm, t * bn)
                last_row = min(m0 + bm, Tq) - 1
                if causal and n0 > pos(last_row):
                    continue  # no row of the tile sees a key of the block: not visited
                if kind == "keys" and n0 >= Tk:
                    continue
                if not occupied(h, m0, m0 + bm, n0, n0 + bn):
                    continue
                entries.append(t)
                if kind == "keys":
                    split += causal and pos(m0) < n0 + bn - 1
                else:
                    split += (not causal or n0 + bn - 1 <= pos(m0)) and n0 + bn <= Tk
            out[(h, blk)] = (split, entries)
    return out


@pytest.mark.parametrize("Tq,Tk,causal", [(200, 200, True), (100, 180, True), (130, 130, False)])
def test_lists_follow_the_record(Tq, Tk, causal):
    """The compaction's lists (both kinds, tiles smaller and larger than a cell) are the reference's, in order."""
    g = torch.Generator().manual_seed(Tq + Tk)
    rec = (torch.rand(2, 2, -(-Tq // 64), -(-Tk // 64), generator=g) < 0.4).to(torch.uint8)
    for (bm_k, bn_k), (bm_q, bn_q) in (((32, 32), (16, 16)), ((32, 128), (128, 64)), ((128, 64), (64, 128))):
        lists = launch.TileLists(rec, Tq, Tk, causal, None)
        lists.prepare(("keys", bm_k, bn_k), ("queries", bm_q, bn_q))
        for kind, bm, bn in (("keys", bm_k, bn_k), ("queries", bm_q, bn_q)):
            entries, counts, cap = lists.built[(kind, bm, bn)]
            want = _reference_lists(rec, Tq, Tk, causal, kind, bm, bn)
            blocks = len(want) // 4
            for (h, blk), (split, expected) in want.items():
                i = h * blocks + blk
                n = int(counts[2 * i + 1])
                got = (int(counts[2 * i]), entries[i * cap:i * cap + n].tolist())
                assert got == (split, expected), (kind, bm, bn, h, blk)
    assert any(e for _, e in want.values()) and any(not e for _, e in want.values())


@pytest.mark.parametrize("tile", [None, TileConfig(128, 32, 4, 1), TileConfig(32, 128, 4, 1), TileConfig(16, 16, 4, 1)],
                         ids=["interpreter", "128x32", "32x128", "16x16"])
@pytest.mark.parametrize("planted", [TWO_VIEWS, ONE_VIEW], ids=["two_views", "one_view"])
def test_forward_records_exactly_the_occupied_cells(tile, planted):
    """Whatever the forward's tile (several per cell, several cells per tile, along either axis), the record marks
    exactly the 64 x 64 cells where a weight survives in either view; the output is the same with and without it."""
    case, plants = planted
    inputs = planted_inputs(case, plants, seed=1)
    support = cell_support(inputs, case)
    assert support.any() and not support.all()
    x = _detached(inputs, case)
    out, *saved, rec = launch.forward(*x, ThresholdOptions(), tile=tile)
    assert rec.dtype == torch.uint8 and torch.equal(rec.bool(), support)
    dense, *_, none = launch.forward(*x, ThresholdOptions(), record=False, tile=tile)
    assert none.numel() == 0 and torch.equal(out, dense)


PATHS = {  # (case, dQ by atomics, dV apart, the interpreter's tile for every kernel)
    "one_view-atomic": (ONE_VIEW, True, False, None),
    "one_view-dq_kernel-128x64": (ONE_VIEW, False, False, TileConfig(128, 64, 4, 1)),
    "one_view-dv_apart-query_major": (ONE_VIEW, True, True, TileConfig(64, 64, 4, 1, query_major=True)),
    "two_views-dq_kernel": (TWO_VIEWS, False, False, None),
    "two_views-atomic-32x128": (TWO_VIEWS, True, False, TileConfig(32, 128, 4, 1)),
    "two_views-dv_apart": (TWO_VIEWS, True, True, None),
}


def _use_path(monkeypatch, atomic: bool, apart: bool, tile) -> list:
    """Take a backward path; returns the list of the backward's lists built, (kind, rows, keys) each."""
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: atomic)
    monkeypatch.setattr(launch, "dv_pass_apart", lambda two_views: apart)
    if tile is not None:
        monkeypatch.setattr(launch, "INTERPRETER_CONFIG", tile)
    built = []
    prepare = launch.TileLists.prepare
    monkeypatch.setattr(launch.TileLists, "prepare", lambda self, *w: built.extend(w) or prepare(self, *w))
    return built


@pytest.mark.parametrize("path", list(PATHS))
def test_every_backward_path_skips_exactly(monkeypatch, path):
    """Output and every gradient (q, k, v of each view, lam, beta) against float64, with the backward visiting only
    the listed tiles: dQ by atomics, the dQ kernel, dV apart; one and two views, grouped heads, Tq != Tk, T not a
    multiple of any tile, tiles smaller and larger than a cell."""
    (case, plants), atomic, apart, tile = PATHS[path]
    built = _use_path(monkeypatch, atomic, apart, tile)
    inputs = planted_inputs(case, plants, seed=2)
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed=2)
    assert all(v <= FP32_TOL for v in errors.values()), errors
    cfg = tile or launch.INTERPRETER_CONFIG
    kinds = {("keys", cfg.block_m, cfg.block_n)} | (set() if atomic else {("queries", cfg.block_m, cfg.block_n)})
    assert set(built) == kinds


def _corrupted(forward, cell: tuple):
    """launch.forward whose record has ``cell`` (b, h, row cell, key cell) cleared after the kernel marked it."""
    def run(*args, **kwargs):
        out, *saved, rec = forward(*args, **kwargs)
        assert rec[cell] == 1
        rec[cell] = 0
        return (out, *saved, rec)
    return run


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "dq_kernel"])
def test_a_record_missing_an_occupied_cell_gives_wrong_gradients(monkeypatch, atomic):
    """The backward visits what the record lists and nothing else: clear one occupied cell (head 1's block of view-1
    survivors, rows 64-127 x keys 0-63) and the gradients of its keys, values and queries go wrong, while the
    output (computed before) stays right."""
    case, plants = TWO_VIEWS
    _use_path(monkeypatch, atomic, False, None)
    monkeypatch.setattr(launch, "forward", _corrupted(launch.forward, (0, 1, 1, 0)))
    errors = run_and_compare(threshold_attention_triton, case, planted_inputs(case, plants, seed=3), seed=3)
    assert errors["out"] <= FP32_TOL
    assert errors["dk1"] > 0.05 and errors["dv"] > 0.05 and errors["dq1"] > 0.05, errors
    assert errors["dk2"] <= FP32_TOL  # view 2 has no survivor in that cell


def test_deterministic_path_is_bit_identical_with_skipping():
    """Under torch.use_deterministic_algorithms the skipping backward (dK/dV and dQ kernels over their lists) gives the
    same bits on every run, and the bits of the loops over every tile; and it matches float64."""
    case, plants = ONE_VIEW
    case = dataclasses.replace(case, Hkv=1)
    inputs = planted_inputs(case, plants, seed=4)
    names = ("q1", "k1", "v")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        errors = run_and_compare(threshold_attention_triton, case, inputs, seed=4)
        first = [inputs[n].grad.clone() for n in names]
        run_kernel(threshold_attention_triton, case, inputs, seed=4)
        again = [inputs[n].grad.clone() for n in names]

        def dense(*args, **kwargs):
            return threshold_attention_triton(*args, **kwargs, skip_empty=False)
        run_kernel(dense, case, inputs, seed=4)
        every_tile = [inputs[n].grad.clone() for n in names]
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(v <= FP32_TOL for v in errors.values()), errors
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(torch.equal(a, b) for a, b in zip(first, every_tile))


def test_the_switch_turns_skipping_off(monkeypatch):
    """skip_empty=False: no record, no lists, every tile visited (BackwardPlan(skip=False) likewise for the
    backward alone); no record either where no gradient will be asked for; the default follows
    tiles.skip_empty_tiles."""
    case = Case(T=40, d=32, dv=32, H=1, Hkv=1, two_views=False)
    inputs = make_inputs(case, seed=5)
    built = _use_path(monkeypatch, True, False, None)
    x = _detached(inputs, case)
    assert launch.forward(*x, ThresholdOptions(), record=False)[-1].numel() == 0
    run_kernel(lambda *a, **k: threshold_attention_triton(*a, **k, skip_empty=False), case, inputs, seed=5)
    assert not built
    out, *saved = launch.forward(*x, ThresholdOptions())
    assert saved[-1].numel() == 1
    launch.backward(torch.ones_like(out), *x[:5], *saved, *x[5:], ThresholdOptions(), False, False, False,
                    plan=BackwardPlan(skip=False))
    assert not built
    launch.backward(torch.ones_like(out), *x[:5], *saved, *x[5:], ThresholdOptions(), False, False, False)
    assert set(built) == {("keys", 32, 32)}
    made = []
    new_record = launch.new_record
    monkeypatch.setattr(launch, "new_record", lambda *a: made.append(1) or new_record(*a))
    with torch.no_grad():  # no gradient will be asked for: no record
        threshold_attention_triton(*x[:3], beta=x[-1])
    threshold_attention_triton(*x[:3], beta=x[-1])  # (x are plain tensors: nothing requires a gradient either)
    assert not made
    threshold_attention_triton(x[0].requires_grad_(), *x[1:3], beta=x[-1])
    assert made == [1]
    monkeypatch.setattr(tiles, "skip_empty_tiles", lambda: False)  # (read through tiles.skipping)
    assert launch.forward(*x, ThresholdOptions())[-1].numel() == 0
