"""The one-view score ops' Gluon kernels without a GPU — the backward (kernels/score_ops/gluon_backward.py: sigmoid,
softpick, softmax with a sink) and the forward (kernels/score_ops/gluon_forward.py, taken only when asked): which
inputs they take, the hand-over to the Triton kernels, and that they compile for sm_90 (Hopper) with the installed
Triton for several of their compile-time variants, within the register file and shared memory. Their results are
checked against float64 on a GPU (test_sink_free_gpu.py: test_gluon_backward_on_gpu,
test_gluon_forward_on_gpu)."""

import pytest
import torch
from sink_free_float64 import Case, make_inputs, run_and_compare, within
from test_threshold_gluon import _compile_in_subprocess, refusal

from kernels import common, gluon_support
from kernels.score_ops import gluon as score_gluon
from kernels.score_ops import gluon_backward as score_gluon_backward
from kernels.sigmoid.autograd import sigmoid_attention_triton
from kernels.softpick import launch as normalized_launch
from kernels.sink_softmax.autograd import sink_softmax_attention_triton
from kernels.softpick.autograd import softpick_attention_triton

ENTRY = {"sigmoid": sigmoid_attention_triton, "softpick": softpick_attention_triton,
         "sink_softmax": sink_softmax_attention_triton}


def _rows(T, heads, width, dtype=torch.bfloat16):
    return torch.zeros(1, T, heads, width, dtype=dtype).transpose(1, 2)


@pytest.mark.parametrize("dtype,H,Hkv,d,dv,takes", [
    (torch.bfloat16, 4, 4, 64, 64, True), (torch.float16, 2, 2, 64, 128, True), (torch.bfloat16, 2, 2, 64, 16, True),
    (torch.float32, 4, 4, 64, 64, False),   # 16-bit only
    (torch.bfloat16, 4, 2, 64, 64, False),  # grouped key/value heads
    (torch.bfloat16, 4, 4, 128, 128, False),
    (torch.bfloat16, 4, 4, 64, 96, False),  # v not a power of two
])
def test_gluon_backward_fits(monkeypatch, dtype, H, Hkv, d, dv, takes):
    """Only on Hopper (never on CPU tensors or under the interpreter), for the layouts the kernel is built for, with
    rows the copy engine can read."""
    q, k, v, do = _rows(64, H, d, dtype), _rows(64, Hkv, d, dtype), _rows(64, Hkv, dv, dtype), _rows(64, H, dv, dtype)
    assert not score_gluon.gluon_backward_fits(do, q, k, v)
    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)
    assert score_gluon.gluon_backward_fits(do, q, k, v) is takes
    monkeypatch.setattr(common, "tma_ready", lambda *rows: all(r is not do for r in rows))  # dO alone unreadable
    assert not score_gluon.gluon_backward_fits(do, q, k, v)


def test_a_gradient_the_copy_engine_cannot_read_is_copied_for_the_gluon_backward(monkeypatch):
    """A dO with zero strides (out.sum()'s) where q, k, v fit: the Gluon kernel gets a contiguous copy with the same
    values rather than the Triton kernels taking over; where q, k, v do not fit, nothing is copied."""
    seen = []
    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)
    monkeypatch.setattr(score_gluon, "_failure", [])
    monkeypatch.setattr(score_gluon, "run", lambda part, kernel, grid, args, kwargs, target: seen.append(args))
    monkeypatch.setattr(score_gluon, "finish_dq", lambda *args: None)
    monkeypatch.setattr(score_gluon_backward, "descriptors", lambda q, k, v, do, lse, delta, block_m: (do,))
    monkeypatch.setattr(score_gluon_backward, "dq_descriptor", lambda dq_acc, block_m: None)
    q, k, v = _rows(64, 2, 64, torch.bfloat16), _rows(64, 2, 64, torch.bfloat16), _rows(64, 2, 64, torch.bfloat16)
    do = torch.ones(1, 1, 1, 1, dtype=torch.bfloat16).expand(1, 2, 64, 64)
    assert not common.tma_ready(do) and common.tma_ready(q, k, v)
    empty = torch.empty(0)
    ran, _ = score_gluon.backward("sigmoid", do, q, k, v, empty, empty, empty, empty, 0.125, True,
                                  param=torch.zeros(2))
    assert ran and len(seen) == 1
    given = seen[0][0]
    assert given.is_contiguous() and common.tma_ready(given) and torch.equal(given, do)
    seen.clear()
    narrow = _rows(64, 2, 64, torch.float32)  # fp32: the kernel does not take it
    ran, _ = score_gluon.backward("sigmoid", do, narrow, narrow, narrow, empty, empty, empty, empty, 0.125, True)
    assert not ran and seen == []


@pytest.mark.parametrize("mode,T,tile,copied", [
    ("softpick", 128, (64, 2), True), ("sink", 96, (32, 2), True),
    ("softpick", 100, (64, 2), False),  # rows past Tq in the last tile: blocks would cross into the next head
    ("sink", 3001, (64, 2), False),     # blocks not 16-byte aligned: the copy engine faulted there
    ("sigmoid", 128, (64, 2), False),   # no L or Δ
])
def test_the_loader_copies_l_and_delta_only_where_tq_is_a_multiple_of_the_tile(monkeypatch, mode, T, tile, copied):
    """ROWS_COPIED (the loader copies each tile's L and Δ) only where every block starts 16-byte aligned inside its
    head; the flat vectors' descriptors and the vectors themselves are handed over either way (a misaligned L is
    copied first)."""
    seen = []
    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)
    monkeypatch.setattr(score_gluon, "_failure", [])
    monkeypatch.setattr(score_gluon, "run", lambda part, kernel, grid, args, kwargs, target:
                        seen.append((args, kwargs)))
    monkeypatch.setattr(score_gluon, "finish_dq", lambda *args: None)
    monkeypatch.setattr(score_gluon_backward, "descriptors", lambda q, k, v, do, lse, delta, block_m: (lse, delta))
    monkeypatch.setattr(score_gluon_backward, "dq_descriptor", lambda dq_acc, block_m: None)
    q, k, v, do = (_rows(T, 2, 64) for _ in range(4))
    lse = torch.randn(1 + 2 * T)[1:].view(1, 2, T)  # a view 4 bytes past an aligned start
    delta = torch.randn(1, 2, T)
    empty = torch.empty(0)
    extra = {} if mode == "sigmoid" else {"lse": lse, "delta": delta}
    ran, _ = score_gluon.backward(mode, do, q, k, v, empty, empty, empty, empty, 0.125, True, param=torch.zeros(2),
                                  tile=tile, **extra)
    assert ran and len(seen) == 1
    args, kwargs = seen[0]
    assert kwargs["ROWS_COPIED"] is copied and kwargs["BM"] == tile[0]
    if mode != "sigmoid":
        given_lse, given_delta = args[0], args[1]
        assert given_lse.data_ptr() % 16 == 0 and torch.equal(given_lse, lse)
        assert given_delta.data_ptr() == delta.data_ptr()
        # the pointers the warpgroups load from otherwise (after dQ's descriptor and the parameter)
        assert args[4] is given_lse and args[5] is given_delta


@pytest.mark.parametrize("op", list(ENTRY))
@pytest.mark.parametrize("failure", ["compile", "resources"])
def test_a_gluon_backward_that_cannot_run_hands_over_to_the_triton_kernels(monkeypatch, failure, op):
    """Were the Gluon kernel refused by a Triton or a GPU, the call warns once, the Triton kernels give exact results,
    and Gluon is not tried again (by any of the ops)."""
    tries = []
    refuse = refusal(failure, tries)
    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)
    monkeypatch.setattr(common, "tma_ready", lambda *tensors: True)
    monkeypatch.setattr(score_gluon, "run", refuse)
    monkeypatch.setattr(score_gluon_backward, "descriptors", lambda *args: ())  # the guarded rows are not aligned
    monkeypatch.setattr(score_gluon_backward, "dq_descriptor", lambda dq_acc, block_m: None)
    monkeypatch.setattr(score_gluon, "_failure", [])
    monkeypatch.setattr(normalized_launch, "SOFTPICK_GLUON", True)  # the default, set here whatever it becomes
    case = Case(T=70, d=64, dv=64, H=2, dtype=torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="Gluon backward of the score ops cannot run"):
        errors = run_and_compare(ENTRY[op], op, case, make_inputs(case, op, 4), 4)
    assert not within(errors, case.dtype)
    assert tries == [1] and score_gluon._failure
    for other in ENTRY:
        run_and_compare(ENTRY[other], other, case, make_inputs(case, other, 5), 5)
    assert tries == [1]


_COMPILE = """
import sys, torch
from benchmarks.registers import compiling_for, ptxas_usage
from kernels.sigmoid import launch as sigmoid_launch
from kernels.softpick import launch as normalized_launch
op, causal, grads = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
dv, block_m, stages = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
T, H = 200, 2
mk = lambda w: torch.zeros(1, T, H, w, dtype=torch.bfloat16).transpose(1, 2)
q, k, v, do = mk(64), mk(64), mk(dv), mk(dv)
with compiling_for(90) as target:
    if op == "sigmoid":
        sigmoid_launch.backward(do, q, k, v, torch.zeros(H), 0.125, causal, grads, False, gluon_tile=(block_m, stages),
                                target=target)
    else:
        sink = torch.zeros(H) if op == "sink_softmax" else None
        normalized_launch.backward(do, q, k, v, mk(dv), torch.zeros(1, H, T), sink, 0.125, causal, grads, False,
                                   gluon=True, gluon_tile=(block_m, stages), target=target)
    assert "gluon_bwd" in target.compiled and "dkdv" not in target.compiled, list(target.compiled)
    u = ptxas_usage(target.compiled["gluon_bwd"], 90)
print(u.registers, u.spill_bytes, u.shared_kib)
"""


@pytest.mark.parametrize("op,causal,grads,dv,block_m,stages", [
    ("sigmoid", True, True, 64, 64, 2), ("sigmoid", False, False, 128, 32, 2), ("softpick", True, False, 16, 64, 3),
    ("sink_softmax", True, True, 64, 64, 2), ("sink_softmax", False, True, 128, 32, 2)])
def test_gluon_backward_compiles_for_hopper(op, causal, grads, dv, block_m, stages):
    """The Gluon backward, compiled (not interpreted) through the op's launcher, which takes it for these inputs."""
    _compile_in_subprocess(_COMPILE, [op, "1" if causal else "0", "1" if grads else "0", str(dv), str(block_m),
                                      str(stages)])


@pytest.mark.parametrize("mode,scale,runs", [("sink", 0.125, True), ("sink", 0.0, False), ("softpick", -0.125, False),
                                             ("sigmoid", -0.125, True)])
def test_the_gluon_forward_takes_the_normalised_modes_only_with_a_positive_scale(monkeypatch, mode, scale, runs):
    """The kernel takes each row's maximum of the unscaled scores and scales it once, which is the maximum of the
    scaled ones only for a positive scale: a normalised mode with another scale is left to the Triton forward
    (nothing launched); sigmoid, which takes no maximum, runs with any."""
    seen = []
    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)
    monkeypatch.setattr(common, "tma_ready", lambda *tensors: True)
    monkeypatch.setattr(score_gluon, "_forward_failure", [])
    monkeypatch.setattr(score_gluon, "run", lambda part, kernel, grid, args, kwargs, target: seen.append(part))
    from kernels.score_ops import gluon_forward as score_gluon_forward
    monkeypatch.setattr(score_gluon_forward, "descriptors", lambda *args: ())
    q = _rows(64, 2, 64)
    out = torch.empty_like(q)
    ran = score_gluon.forward(mode, q, q, q, out, scale, True, param=torch.zeros(2), lse=torch.empty(1, 2, 64))
    assert ran is runs and seen == (["gluon_fwd"] if runs else [])


@pytest.mark.parametrize("op", list(ENTRY))
def test_gluon_forward_is_asked_for_and_hands_over_when_it_cannot_run(monkeypatch, op):
    """The forwards take the Gluon kernel only when asked (their mode's GLUON_FORWARD, or ``gluon=True``; sigmoid's
    never for a Triton tile, σ mode or folded bias), where it fits; refused by a Triton, it warns once, the Triton forward gives
    exact results and the Gluon forward is not tried again (by any of the ops)."""
    from kernels.score_ops import gluon_forward as score_gluon_forward
    from kernels.sigmoid import launch as sigmoid_launch

    tries = []
    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)
    monkeypatch.setattr(common, "tma_ready", lambda *tensors: True)
    monkeypatch.setattr(score_gluon, "run", refusal("compile", tries))
    monkeypatch.setattr(score_gluon_forward, "descriptors", lambda *args: ())   # the guarded rows are not aligned
    monkeypatch.setattr(score_gluon, "_forward_failure", [])
    monkeypatch.setattr(score_gluon, "gluon_backward_fits", lambda *args: False)   # the forward alone
    case = Case(T=70, d=64, dv=64, H=2, dtype=torch.bfloat16)
    inputs = make_inputs(case, op, 6)
    q, k, v = (inputs[n] for n in ("q", "k", "v"))
    assert score_gluon.gluon_forward_fits(q, k, v)
    assert not score_gluon.gluon_forward_fits(q.float(), k.float(), v.float())
    monkeypatch.setattr(score_gluon, "GLUON_FORWARD", dict.fromkeys(score_gluon.MODES, False))
    run_and_compare(ENTRY[op], op, case, inputs, 6)
    assert tries == []                                   # not asked for
    monkeypatch.setattr(score_gluon, "GLUON_FORWARD", dict.fromkeys(score_gluon.MODES, True))
    if op == "sigmoid":
        sigmoid_launch.forward(q, k, v, torch.zeros(2), 0.125, True, fold_bias=True)
        assert tries == []                               # a Triton variant asked for
    with pytest.warns(RuntimeWarning, match="Gluon forward of the score ops cannot run"):
        errors = run_and_compare(ENTRY[op], op, case, inputs, 6)
    assert not within(errors, case.dtype)
    assert tries == [1] and score_gluon._forward_failure
    assert not score_gluon.gluon_forward_fits(q, k, v)
    for other in ENTRY:
        run_and_compare(ENTRY[other], other, case, make_inputs(case, other, 7), 7)
    assert tries == [1]


_COMPILE_FORWARD = """
import sys, torch
from benchmarks.registers import compiling_for, ptxas_usage
from kernels.sigmoid import launch as sigmoid_launch
from kernels.softpick import launch as normalized_launch
op, causal, dv = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
T, H = 200, 2
mk = lambda w: torch.zeros(1, T, H, w, dtype=torch.bfloat16).transpose(1, 2)
with compiling_for(90) as target:
    if op == "sigmoid":
        sigmoid_launch.forward(mk(64), mk(64), mk(dv), torch.zeros(H), 0.125, causal, gluon=True, target=target)
    else:
        normalized_launch.forward(mk(64), mk(64), mk(dv), torch.zeros(H) if op == "sink_softmax" else None, 0.125,
                                  1e-6, causal, gluon=True, target=target)
    assert "gluon_fwd" in target.compiled and "fwd" not in target.compiled, list(target.compiled)
    u = ptxas_usage(target.compiled["gluon_fwd"], 90)
print(u.registers, u.spill_bytes, u.shared_kib)
"""


@pytest.mark.parametrize("op,causal,dv", [("sigmoid", True, 64), ("sigmoid", False, 128), ("softpick", True, 64),
                                          ("softpick", False, 16), ("sink_softmax", True, 128)])
def test_gluon_forward_compiles_for_hopper(op, causal, dv):
    """The Gluon forward, compiled (not interpreted) through the op's launcher, which takes it when asked."""
    _compile_in_subprocess(_COMPILE_FORWARD, [op, "1" if causal else "0", str(dv)])
