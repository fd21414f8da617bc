"""kernels.replay on the CPU: what a recording writes down, and the engine's replay of it (allocations, views, fills,
the reduction, copies) on other tensors of the same layout. Launches need a GPU (test_replay_gpu.py); here their
parameters are checked as the recorder encodes them."""

import shutil
import struct
from types import SimpleNamespace

import pytest
import torch

from kernels import common
from kernels.inputs import TRITON_INSTALLED, pair_views
from kernels.replay.record import OPCODES, PARAMS, POOL_ALIGN, Recorder, Refused

needs_compiler = pytest.mark.skipif(
    (shutil.which("c++") is None and shutil.which("g++") is None) or not TRITON_INSTALLED,
    reason="the engine is built with a C++ compiler, against the CUDA driver header Triton ships")


def _body(x, y):
    """Operations of the kinds the paired path makes: pair views, rows laid out like an input, zero fills, a sum
    over dims and a select, a contiguous copy."""
    a, b = pair_views(x)
    rows = common.new_rows_like(x, 5)
    buf = torch.zeros((2, 3, 4), dtype=torch.float32)
    buf.zero_()
    sums = buf.sum(dim=(0, 2))
    first = sums[0]
    copy = b.contiguous()
    flat = y.view(-1)
    return [a, b, rows, buf, sums, first, copy, flat, None]


def _layout(t):
    return (tuple(t.shape), t.stride(), t.dtype)


@needs_compiler
def test_replay_makes_the_recorded_layouts_on_new_tensors():
    from kernels import replay

    torch.manual_seed(0)
    base = torch.randn(3, 7, 6, 8)
    x = base[1:].transpose(1, 2)  # (2, 6, 7, 8), a view at a storage offset, not contiguous
    y = torch.randn(4, 5)
    with Recorder([x, y]) as rec:
        outs = _body(x, y)
    program = rec.program(outs)
    eng = replay.native()
    pid = eng.register_program(*program)
    base2 = torch.randn(3, 7, 6, 8)
    x2, y2 = base2[1:].transpose(1, 2), torch.randn(4, 5)
    got = eng.run(pid, [x2, y2])
    want = _body(x2, y2)
    assert len(got) == len(want)
    for g, w in zip(got[:-1], want[:-1]):
        assert _layout(g) == _layout(w)
    a, b, rows, buf, sums, first, copy, flat = got[:-1]
    # views of the new inputs, not of the recorded ones
    assert a.data_ptr() == x2[:, 0::2].data_ptr() and torch.equal(a, x2[:, 0::2])
    assert torch.equal(b, x2[:, 1::2]) and torch.equal(flat, y2.view(-1)) and flat.data_ptr() == y2.data_ptr()
    assert torch.equal(buf, torch.zeros_like(buf)) and torch.equal(sums, torch.zeros(3))
    assert first.data_ptr() == sums.data_ptr()
    assert torch.equal(copy, x2[:, 1::2]) and copy.is_contiguous() and copy.data_ptr() != x2.data_ptr()
    assert rows.data_ptr() not in (x2.data_ptr(), x.data_ptr())
    assert got[-1] is None


@needs_compiler
def test_replay_checks_the_number_of_inputs():
    from kernels import replay

    x = torch.randn(2, 4, 3, 8)
    with Recorder([x]) as rec:
        outs = list(pair_views(x))
    pid = replay.native().register_program(*rec.program(outs))
    with pytest.raises(ValueError, match="takes 1 inputs, got 2"):
        replay.native().run(pid, [x, x])


def test_unknown_operations_and_outside_tensors_are_refused():
    x = torch.randn(2, 4, 3, 8)
    with Recorder([x]) as rec:
        y = x + 1
    with pytest.raises(Refused, match="aten::add"):
        rec.program([y])
    outside = torch.randn(3)
    with Recorder([x]) as rec:
        a, _ = pair_views(x)
    with pytest.raises(Refused, match="made outside the recording"):
        rec.program([a, outside])


def test_the_first_refusal_is_kept():
    x = torch.randn(4, 4)
    with Recorder([x]) as rec:
        x.mul(2)
        x.view(-1)
        x.add(1)
    assert rec.refused.startswith("the operation aten::mul")


def _compiled(signature: dict, metas=None, **md):
    metadata = dict(num_warps=4, shared=1024, num_ctas=1, launch_pdl=False, launch_cooperative_grid=False,
                    global_scratch_size=0, profile_scratch_size=0, tensordesc_meta=metas)
    metadata.update(md)
    return SimpleNamespace(name="k", function=1234, src=SimpleNamespace(signature=signature),
                           metadata=SimpleNamespace(**metadata))


class _Descriptor:
    def __init__(self, base, shape, strides, block, padding="zero"):
        self.base, self.shape, self.strides, self.block_shape, self.padding = base, shape, strides, block, padding


def test_launch_parameters_follow_the_expanded_signature():
    x = torch.randn(2, 4, 6, 8, dtype=torch.bfloat16)
    with Recorder([x]) as rec:
        rows = x.view(8, 6, 8)
        desc = _Descriptor(rows, [8, 6, 8], [48, 8, 1], [1, 2, 8])
        meta = dict(swizzle=3, elem_size=2, elem_type=10, block_size=[1, 2, 8], fp4_padded=False)
        sig = {"X": "*bf16", "D": "tensordesc<bf16[1, 2, 8],layout>", "N": "i32", "ONE": "constexpr",
               "scale": "fp32", "off": "i64", "flag": "i1", "BLOCK": "constexpr", "none": "*fp32"}
        rec.note_launch(_compiled(sig, [meta]), (5, 2), (x, desc, 7, 1, 0.5, -3, True, 64, None))
    assert rec.refused is None
    n, slots, code, functions, shapes, params, out = rec.program([rows])
    assert code[-1] == [OPCODES["LAUNCH"], 0] and functions == [1234]
    assert [ins[0] for ins in code] == [OPCODES["VIEW"], OPCODES["LAUNCH"]]  # (the view is an output)
    assert shapes == [[5, 2, 1, 128, 1024]]
    p = params[0]
    assert p[0] == [PARAMS["PTR"], 0, 0]
    tmap = p[1]
    # [kind, slot, byte offset, address, host elem type, rank, swizzle, fill, dims innermost first, byte strides,
    #  box]; the view's own slot is not made (its one use is the map), so the map names its root, input 0
    assert tmap[:8] == [PARAMS["TMAP"], 0, 0, rows.data_ptr(), 9, 3, 3, 0]  # device elem type 10 is the host's 9
    assert tmap[8:] == [8, 6, 8, 8 * 2, 48 * 2, 8, 2, 1]
    assert p[2:5] == [[PARAMS["I32"], 8], [PARAMS["I32"], 6], [PARAMS["I32"], 8]]
    assert p[5:8] == [[PARAMS["I64"], 48], [PARAMS["I64"], 8], [PARAMS["I64"], 1]]
    assert p[8] == [PARAMS["I32"], 7]
    assert p[9] == [PARAMS["B32"], struct.unpack("<I", struct.pack("<f", 0.5))[0]]
    assert p[10] == [PARAMS["I64"], -3] and p[11] == [PARAMS["I8"], 1]
    assert p[12] == [PARAMS["NULL"]]
    assert p[13:] == [[PARAMS["NULL"]], [PARAMS["NULL"]]]  # the scratch pointers


@pytest.mark.parametrize("what, md", [("clusters", dict(num_ctas=2)), ("global scratch", dict(global_scratch_size=8)),
                                      ("PDL", dict(launch_pdl=True))])
def test_launches_the_engine_cannot_make_are_refused(what, md):
    x = torch.randn(4)
    with Recorder([x]) as rec:
        rec.note_launch(_compiled({"X": "*fp32"}, **md), (1,), (x,))
    assert rec.refused is not None and what in rec.refused


def test_descriptors_without_a_tma_map_are_refused():
    x = torch.randn(4, 8)
    with Recorder([x]) as rec:
        rec.note_launch(_compiled({"D": "tensordesc<fp32[2, 8]>"}), (1,), (_Descriptor(x, [4, 8], [8, 1], [2, 8]),))
    assert "not lowered to a TMA map" in rec.refused


def test_the_paired_entry_with_replay_on_keeps_its_results_where_recording_is_refused(monkeypatch):
    """Under the interpreter every launch goes through Triton's own path, so the second call's recording is refused:
    the calls keep the Python path's results, the refusal is kept with its reason, and a call asking for no gradient
    is not recorded."""
    from threshold_float64 import Case
    from test_threshold_paired import _paired_inputs

    from kernels import replay
    from kernels.threshold.autograd import paired_threshold_attention_triton

    x = _paired_inputs(Case(T=40, d=32, dv=64, H=2, lam=(0.3,)), seed=4)
    leaves = [x["q"], x["k"], x["v"], x["lam"]]

    def call():
        out = paired_threshold_attention_triton(x["q"], x["k"], x["v"], lam=x["lam"])
        return (out, *torch.autograd.grad(out, leaves, torch.ones_like(out)))

    monkeypatch.setattr(replay, "ENABLED", False)
    want = call()
    monkeypatch.setattr(replay, "ENABLED", True)
    replay.clear()
    try:
        for i in range(3):
            for got, w in zip(call(), want):
                assert torch.equal(got, w)
            states = list(replay.status().values())
            assert states == ["seen"] if i == 0 else len(states) == 1 and "Triton's own path" in states[0], states
        with torch.no_grad():
            for _ in range(2):
                out = paired_threshold_attention_triton(x["q"], x["k"], x["v"], lam=x["lam"])
                assert torch.equal(out, want[0])
        assert any("no gradient" in s for s in replay.status().values())
    finally:
        replay.clear()


@needs_compiler
def test_the_engines_autograd_function_runs_both_programs_and_takes_any_gradient_layout():
    """The paired entry's C++ autograd function on programs without launches (so it runs on the CPU): the forward
    program's output is the call's, the backward program gets dO in the layout it was recorded with (one given in
    another layout is copied into it) and the saved tensors, and its gradients reach the inputs."""
    from kernels import replay

    torch.manual_seed(1)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    v, lam, beta = torch.randn(2, 2, 5, 16), torch.rand(2), torch.rand(2)
    with Recorder([q, k, v, lam, beta]) as rec:
        out = v.transpose(1, 2).contiguous().transpose(1, 2)  # (laid out as the model's projections)
        saved = torch.zeros(3)
    fwd = rec.program([out, saved])
    do = torch.randn_like(out)
    with Recorder([do, q, k, v, lam, beta, saved]) as rec:
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), do[:]  # a view: read with the recorded strides
    bwd = rec.program([dq, dk, dv, None, None])
    eng = replay.native()
    fid = eng.register_program(*fwd)
    bid = eng.register_program(*bwd, list(do.shape), list(do.stride()), 16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, lam, beta)]
    got = eng.paired(*leaves, fid, bid)
    assert torch.equal(got, v) and got.stride() == out.stride()
    other = torch.randn(got.shape)  # contiguous: not the recorded layout
    assert other.stride() != do.stride()
    grads = torch.autograd.grad(got, leaves[:3], other)
    assert torch.equal(grads[2], other) and grads[2].stride() == do.stride()  # (copied into the recorded layout)
    assert torch.equal(grads[0], torch.zeros_like(q)) and torch.equal(grads[1], torch.zeros_like(k))
    assert leaves[3].grad is None and leaves[4].grad is None
    # what the node saved is checked as the Python path's ctx.save_for_backward is: an input changed in place between
    # the forward and the backward is an error, and a second backward through a freed graph too
    q2 = leaves[0] * 1.0
    got = eng.paired(q2, *leaves[1:], fid, bid)
    with torch.no_grad():
        q2.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(got, leaves[:3], other)
    got = eng.paired(*leaves, fid, bid)
    torch.autograd.grad(got, leaves[:3], other)
    with pytest.raises(RuntimeError, match="backward ran twice|second time"):
        torch.autograd.grad(got, leaves[:3], other)


def test_a_program_keeps_only_what_its_outputs_and_launches_need():
    """Views whose one use is a kernel's address become their root's address plus a byte offset (through views of
    views, and for a tensor map's base too), a view of its root's own layout becomes the root, and allocations,
    views, fills and reductions nothing reads are left out; a fill before a launch that reads its tensor stays."""
    x = torch.randn(3, 4, 8)
    with Recorder([x]) as rec:
        row = x[1]                              # a view at 32 elements
        part = row[2:]                          # a view of it: 48 elements (192 bytes) into x
        whole = x.view(3, 4, 8)                 # x's own layout
        buf = torch.empty(16)
        same = buf.view(16)
        unused = torch.empty(5)
        unused.zero_()
        _ = unused.sum(dim=(0,))
        acc = torch.zeros(2, 8)
        acc_rows = acc[1:]
        acc_rows.zero_()                        # a fill of a view, read by the launch below
        late = torch.empty(4)
        sig = {"A": "*fp32", "B": "*fp32", "C": "*fp32", "D": "tensordesc<fp32[2, 8]>"}
        meta = dict(swizzle=0, elem_size=4, elem_type=7, block_size=[2, 8], fp4_padded=False)
        desc = _Descriptor(part, [2, 8], [8, 1], [2, 8])
        rec.note_launch(_compiled(sig, [meta]), (1,), (part, same, acc_rows, desc))
        late.zero_()                            # after every use: nothing reads it
    n, n_slots, code, functions, shapes, params, out = rec.program([whole, same, acc, None])
    ops = {v: k for k, v in OPCODES.items()}
    assert [ops[ins[0]] for ins in code] == ["ALLOC", "ALLOC", "VIEW", "ZERO", "LAUNCH"], code
    buf_slot, acc_slot, acc_rows_slot = code[0][1], code[1][1], code[2][1]
    assert code[2][2:4] == [acc_slot, 8]        # the kept view, of its root, 8 elements in
    assert code[3] == [OPCODES["ZERO"], acc_rows_slot]
    assert out == [0, buf_slot, acc_slot, -1]   # identity views answered by their roots
    p = params[0]
    assert p[0] == [PARAMS["PTR"], 0, 48 * 4]   # part: x's address plus 192 bytes
    assert p[1] == [PARAMS["PTR"], buf_slot, 0]
    assert p[2] == [PARAMS["PTR"], acc_slot, 8 * 4]  # (the view is kept for its fill, not for the launch)
    assert p[3][:4] == [PARAMS["TMAP"], 0, 48 * 4, part.data_ptr()]


def test_a_kept_view_of_another_dtype_is_refused():
    x = torch.zeros(4, 8, dtype=torch.uint8)
    with Recorder([x]) as rec:
        y = x.view(torch.int32)
    with pytest.raises(Refused, match="a view as torch.int32 of a torch.uint8"):
        rec.program([y])


def test_temporaries_only_kernels_address_share_one_allocation():
    """Allocations that are no output and that only launches address (and fills) become ranges of one pooled
    allocation, each at a multiple of POOL_ALIGN bytes: a zero-filled one as a ZERO_BYTES of its range, a view of one
    as the pool's address plus both offsets; an output, and an allocation a kept view reads, stay their own."""
    x = torch.randn(3, 4, 8)
    with Recorder([x]) as rec:
        a = torch.zeros(10)                              # 40 bytes, zero-filled
        b = torch.empty(2, 3, dtype=torch.float64)       # 48 bytes
        c = torch.empty(4)                               # an output
        d = torch.empty(6)                               # read by a view that is an output
        d_view = d[2:]
        sig = {"A": "*fp32", "B": "*fp64", "C": "*fp32", "X": "*fp32"}
        rec.note_launch(_compiled(sig), (1,), (a, b[1], c, x))
    n, n_slots, code, functions, shapes, params, out = rec.program([c, d_view])
    ops = {v: k for k, v in OPCODES.items()}
    pool = n_slots - 1
    size = POOL_ALIGN + 48
    assert [ops[ins[0]] for ins in code] == ["ALLOC", "ZERO_BYTES", "ALLOC", "ALLOC", "VIEW", "LAUNCH"], code
    assert code[0] == [OPCODES["ALLOC"], pool, 0, 0, 1, size, 1]  # uint8
    assert code[1] == [OPCODES["ZERO_BYTES"], pool, 0, 40]
    p = params[0]
    assert p[0] == [PARAMS["PTR"], pool, 0]
    assert p[1] == [PARAMS["PTR"], pool, POOL_ALIGN + 3 * 8]     # b[1]: b's place in the pool plus the row
    assert p[2] == [PARAMS["PTR"], out[0], 0] and p[3] == [PARAMS["PTR"], 0, 0]


@needs_compiler
def test_the_engine_zeroes_a_byte_range():
    from kernels import replay

    eng = replay.native()
    pid = eng.register_program(1, 1, [[OPCODES["ZERO_BYTES"], 0, 8, 16]], [], [], [], [0])
    t = torch.full((8,), 7.0)
    (got,) = eng.run(pid, [t])
    assert got.data_ptr() == t.data_ptr()
    assert t.tolist() == [7.0, 7.0, 0.0, 0.0, 0.0, 0.0, 7.0, 7.0]
