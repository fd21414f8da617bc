"""The Gluon kernels (kernels/threshold/gluon_forward.py, gluon_backward.py) without a GPU: which layouts and inputs they
take, the hand-over to the Triton kernels, and that they compile for sm_90 (Hopper) with the installed Triton for
several of their compile-time variants, within the register file and shared memory. Their results are checked on a GPU
(test_threshold_gpu.py::test_fused_gluon_backward_on_gpu)."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from kernels import common, gluon_support
from kernels.threshold import launch


@pytest.mark.parametrize("dtype,heads,kv_heads,d,dv,takes", [
    (torch.bfloat16, 6, 6, 64, 128, True), (torch.float16, 2, 2, 64, 32, True), (torch.bfloat16, 2, 2, 64, 16, True),
    (torch.float32, 6, 6, 64, 128, False),   # 16-bit only
    (torch.bfloat16, 4, 2, 64, 128, False),  # grouped key/value heads
    (torch.bfloat16, 6, 6, 32, 64, False),   # q/k width other than 64
    (torch.bfloat16, 6, 6, 128, 128, False),
    (torch.bfloat16, 6, 6, 64, 96, False),   # v not a power of two
    (torch.bfloat16, 6, 6, 64, 256, False),  # v wider than 128
])
def test_gluon_layout_takes(dtype, heads, kv_heads, d, dv, takes):
    assert gluon_support.gluon_layout_takes(dtype, heads, kv_heads, d, dv) is takes


@pytest.mark.parametrize("dtype,heads,kv_heads,d,dv,takes", [
    (torch.bfloat16, 6, 6, 128, 256, True), (torch.float16, 6, 6, 128, 128, True), (torch.bfloat16, 6, 6, 64, 128, True),
    (torch.bfloat16, 6, 6, 128, 64, False), (torch.bfloat16, 6, 3, 128, 256, False), (torch.float32, 6, 6, 128, 256, False),
    (torch.bfloat16, 6, 6, 256, 256, False),
])
def test_the_wide_layouts_are_the_paired_kernels_alone(dtype, heads, kv_heads, d, dv, takes):
    """``wide`` (the paired forward and backward, asked for) adds q/k of 128 with v of 128 or 256 to the layouts; the
    one-view score ops' backward, which does not ask, never takes them."""
    assert gluon_support.gluon_layout_takes(dtype, heads, kv_heads, d, dv, wide=True) is takes
    assert not gluon_support.gluon_layout_takes(dtype, heads, kv_heads, d, dv) or d == 64


def test_the_paired_kernels_take_q_k_of_128_unless_switched_off(monkeypatch):
    """At q/k 128 (v 256, the paired layout of a 2,048-wide model) the Gluon forward and backward fit by default, each
    not with its own switch off (launch.GLUON_FORWARD_D128, launch.GLUON_BACKWARD_D128)."""
    do, q1, k1, v, q2, k2 = [torch.zeros(1, 2, 64, w, dtype=torch.bfloat16) for w in (256, 128, 128, 256, 128, 128)]
    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)
    assert launch.gluon_forward_fits(q1, k1, v, q2, k2) and launch.gluon_backward_fits(do, q1, k1, v, q2, k2)
    monkeypatch.setattr(launch, "GLUON_FORWARD_D128", False)
    assert not launch.gluon_forward_fits(q1, k1, v, q2, k2) and launch.gluon_backward_fits(do, q1, k1, v, q2, k2)
    monkeypatch.setattr(launch, "GLUON_BACKWARD_D128", False)
    assert not launch.gluon_backward_fits(do, q1, k1, v, q2, k2)
    small = [torch.zeros(1, 2, 64, w, dtype=torch.bfloat16) for w in (128, 64, 64, 128, 64, 64)]
    assert launch.gluon_backward_fits(*small)  # q/k 64 takes it whatever the switch


def test_the_backward_passes():
    """One launch of the fused backward at q/k 64; at q/k 128, dK and dQ (a one-stage ring) and then dV alone."""
    from kernels.threshold import gluon_backward as gb

    assert gb.passes(64, 128) == ((True, True, gb.STAGES.value),)
    assert gb.passes(128, 256) == ((True, False, 1), (False, True, gb.STAGES.value))
    assert gb.passes(128, 128) == gb.passes(128, 256)


@pytest.mark.parametrize("d,dv", [(64, 128), (128, 256), (128, 128)])
def test_the_fused_backward_launches_each_pass_with_its_own_switches(monkeypatch, d, dv):
    """launch._gluon_backward issues gluon_backward.passes in order, each with its constexprs: at q/k 64 one launch
    ("fused") of everything; at q/k 128 "fused" (dK, dQ: the λ and β partial sums, one-stage ring) then "fused_dv"
    (dV alone: no partial sums, which would overwrite the first launch's); the same descriptors and arguments."""
    from kernels.threshold import gluon_backward as gb
    from kernels.threshold.options import ThresholdOptions

    runs = []
    monkeypatch.setattr(launch, "_run", lambda part, kernel, grid, args, kwargs, target: runs.append((part, kwargs,
                                                                                                      args)))
    monkeypatch.setattr(launch.common, "bind_cuda_context", lambda device: None)
    T, H = 96, 2
    mk = lambda w: torch.zeros(1, T, H, w, dtype=torch.bfloat16).transpose(1, 2)
    q1, k1, v, q2, k2, do = mk(d), mk(d), mk(dv), mk(d), mk(d), mk(dv)
    norms = [torch.zeros(1, H, T) for _ in range(4)]
    dq = torch.zeros(2, 1, H, T, d)
    launch._gluon_backward(do, q1, k1, v, q2, k2, *norms, torch.full((H,), 0.5), torch.ones(H), ThresholdOptions(),
                           True, True, mk(d), mk(d), mk(dv), dq[0], dq[1])
    expected = [("fused" if dk else "fused_dv", dk, dv_, stages) for dk, dv_, stages in gb.passes(d, dv)]
    assert [(part, kw["WITH_DK"], kw["WITH_DV"], kw["STAGES"]) for part, kw, _ in runs] == expected
    assert len(runs) == (1 if d == 64 else 2)
    for part, kw, _ in runs:
        assert kw["LAM_GRAD"] == kw["BETA_GRAD"] == (part == "fused") and kw["HEAD_D"] == d and kw["HEAD_DV"] == dv
    assert all(a is b for a, b in zip(runs[0][2][6:], runs[-1][2][6:]))  # past the descriptors, the same arguments


@pytest.mark.parametrize("text,version", [("3.6.0", (3, 6, 0)), ("3.7.1+git1234", (3, 7, 1)), ("3.5.0rc2", (3, 5, 0)),
                                          ("4.0", (4, 0))])
def test_triton_versions_read(text, version):
    assert gluon_support._version(text) == version


def _available_after(monkeypatch, change) -> bool:
    """gluon_support.gluon_available() once ``change(monkeypatch)`` is made, with its memo cleared before and after (and the
    change undone)."""
    gluon_support.gluon_available.cache_clear()
    try:
        change(monkeypatch)
        return gluon_support.gluon_available()
    finally:
        monkeypatch.undo()
        gluon_support.gluon_available.cache_clear()


def test_a_triton_before_3_6_takes_the_triton_kernels(monkeypatch):
    """Triton 3.5 has a Gluon whose warp_specialize the Gluon kernels cannot compile with."""
    assert not _available_after(monkeypatch, lambda mp: mp.setattr(gluon_support.triton, "__version__", "3.5.0"))
    assert gluon_support.gluon_available()


def refusal(failure: str, tries: list):
    """A stand-in for a Gluon launch that a Triton refuses ("compile") or a GPU cannot fit ("resources"), counting
    its calls in ``tries``."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    def refuse(*args, **kwargs):
        tries.append(1)
        if failure == "compile":
            raise CompilationError("kernel source", None, "unsupported in this Triton")
        raise OutOfResources(300000, 232448, "shared memory")
    return refuse


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_gradient_the_copy_engine_cannot_read_is_copied_for_the_fused_backward(monkeypatch, deterministic):
    """out.sum().backward() hands the backward a gradient with zero strides, which tensor descriptors cannot read:
    where everything else takes the fused Gluon backward, that kernel gets a contiguous copy (same values) rather
    than the Triton kernels taking over; the deterministic path, which never takes the fused kernel, gets it as is.
    (The stand-in for the Gluon launch then refuses, so the Triton kernels compute the gradients, checked here.)"""
    from kernels.threshold.autograd import threshold_attention_triton
    from threshold_float64 import Case, make_inputs, naive_attention, rel_err

    seen = []

    def fused(do, *args):
        seen.append(do)
        return refusal("resources", [])()

    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)
    monkeypatch.setattr(launch, "gluon_forward_fits", lambda *a: False)
    monkeypatch.setattr(launch, "_gluon_backward", fused)
    monkeypatch.setattr(launch, "_gluon_failure", [])
    # the guard-banded rows count as readable, a gradient with a zero or non-unit stride does not
    monkeypatch.setattr(common, "tma_ready", lambda *ts: all(t.stride(-1) == 1 and min(t.stride()) > 0 for t in ts))
    case = Case(T=64, d=64, dv=128, H=2, lam=(0.5,), dtype=torch.bfloat16)
    x = make_inputs(case, seed=3)
    args = [x[n] for n in ("q1", "k1", "v", "q2", "k2")]
    lam_leaf = x["lam"].detach().clone().requires_grad_()
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the stand-in's refusal
        threshold_attention_triton(*args, lam=lam_leaf, beta=x["beta"]).sum().backward()
    if deterministic:
        assert seen == []
    else:
        assert len(seen) == 1 and seen[0].is_contiguous() and common.tma_ready(seen[0])
        assert torch.equal(seen[0], torch.ones_like(seen[0]))
    leaves = [t.detach().double().requires_grad_() for t in args]
    lam = x["lam"].detach().double().requires_grad_()
    naive_attention(*leaves, lam, x["beta"].double()).sum().backward()
    for got, want in zip(args + [lam_leaf], leaves + [lam]):
        assert rel_err(got.grad, want.grad) <= 1e-2


@pytest.mark.parametrize("kernel", ["backward", "forward"])
@pytest.mark.parametrize("failure", ["compile", "resources"])
def test_a_gluon_kernel_that_cannot_run_hands_over_to_the_triton_kernels(monkeypatch, failure, kernel):
    """Were a Triton to refuse a Gluon kernel, or a GPU to lack the shared memory for it, the call warns once, takes
    the Triton kernels (results as exact as ever) and does not try either Gluon kernel again."""
    from kernels.threshold.autograd import threshold_attention_triton
    from threshold_float64 import Case, make_inputs, run_and_compare

    tries = []
    refuse = refusal(failure, tries)

    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)  # so that the fused kernel is chosen on CPU
    monkeypatch.setattr(launch, "_gluon_" + kernel, refuse)
    if kernel == "backward":
        monkeypatch.setattr(launch, "gluon_forward_fits", lambda *a: False)
    else:
        monkeypatch.setattr(launch, "_gluon_backward", lambda *a: pytest.fail("the backward tried Gluon after a failure"))
    monkeypatch.setattr(launch, "_gluon_failure", [])
    monkeypatch.setattr(common, "tma_ready", lambda *tensors: True)  # the guard-banded rows count as readable
    case = Case(T=40, d=64, dv=128, H=2, lam=(0.4, 1.1), dtype=torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="Gluon kernels cannot run with Triton"):
        errors = run_and_compare(threshold_attention_triton, case, make_inputs(case, seed=4), seed=4)
    assert all(v <= 1e-2 for v in errors.values()), errors
    assert tries == [1] and launch._gluon_failure
    run_and_compare(threshold_attention_triton, case, make_inputs(case, seed=5), seed=5)
    assert tries == [1]


def test_fits_nothing_off_hopper(monkeypatch):
    """On CPU tensors (and under the interpreter) the Triton path is taken, whatever the layout; the same inputs on
    Hopper would take both Gluon kernels."""
    do, q1, k1, v, q2, k2 = [torch.zeros(1, 2, 64, w, dtype=torch.bfloat16) for w in (128, 64, 64, 128, 64, 64)]
    assert not launch.gluon_backward_fits(do, q1, k1, v, q2, k2)
    assert not launch.gluon_forward_fits(q1, k1, v, q2, k2)
    monkeypatch.setattr(gluon_support, "on_hopper", lambda x: True)
    assert launch.gluon_backward_fits(do, q1, k1, v, q2, k2) and launch.gluon_forward_fits(q1, k1, v, q2, k2)
    monkeypatch.setattr(common, "tma_ready", lambda *rows: all(r is not do for r in rows))  # dO alone unreadable
    assert launch.gluon_forward_fits(q1, k1, v, q2, k2) and not launch.gluon_backward_fits(do, q1, k1, v, q2, k2)


def _compile_in_subprocess(script: str, args: list) -> None:
    """Run a script that compiles a kernel for sm_90 and prints ptxas' usage, in a process of its own (as
    benchmarks.registers does), with the project importable and the caller's PYTHONPATH after it (a Triton put first
    there is the one compiling); its registers, spill bytes and shared KiB must fit an H100/H200."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    run = subprocess.run([sys.executable, "-c", script, *args], cwd=root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=path, TRITON_INTERPRET="0"), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    registers, spills, shared = run.stdout.split()
    assert int(registers) <= 255 and int(spills) < 1024 and float(shared) <= 227, run.stdout


_COMPILE = """
import sys, torch
from benchmarks.registers import compiling_for, ptxas_usage
from kernels.threshold import launch
from kernels.threshold.options import ThresholdOptions
from kernels.threshold.tiles import BackwardPlan
p, causal, normalize, grads, skip = float(sys.argv[1]), *(a == "1" for a in sys.argv[2:6])
dv, d = int(sys.argv[6]), int(sys.argv[7])
T, H = 200, 2
mk = lambda w: torch.zeros(1, T, H, w, dtype=torch.bfloat16).transpose(1, 2)
q1, k1, v, q2, k2, do = mk(d), mk(d), mk(dv), mk(d), mk(d), mk(dv)
norms = [torch.zeros(1, H, T) if normalize else torch.zeros(0) for _ in range(4)]
rec = launch.new_record(q1, T) if skip else torch.zeros(0, dtype=torch.uint8)
with compiling_for(90) as target:
    launch.backward(do, q1, k1, v, q2, k2, *norms, rec, torch.full((H,), 0.5), torch.ones(H),
                    ThresholdOptions(p=p, normalize=normalize, causal=causal), grads, grads, False,
                    plan=BackwardPlan(fused=True), target=target)
    assert ("lists" in target.compiled) == skip
    assert ("fused_dv" in target.compiled) == (d == 128)  # q/k 128: dV in a launch of its own
    usages = [ptxas_usage(target.compiled[part], 90) for part in ("fused", "fused_dv") if part in target.compiled]
print(max(u.registers for u in usages), max(u.spill_bytes for u in usages), max(u.shared_kib for u in usages))
"""


@pytest.mark.parametrize("p,causal,normalize,grads,skip,dv,d", [(2.0, True, True, True, True, 128, 64),
                                                                 (2.0, True, True, True, False, 128, 64),
                                                                 (1.0, False, False, False, True, 64, 64),
                                                                 (3.0, True, False, True, True, 32, 64),
                                                                 (2.0, True, True, True, True, 256, 128),
                                                                 (1.0, False, False, True, False, 128, 128)])
def test_fused_backward_compiles_for_hopper(p, causal, normalize, grads, skip, dv, d):
    """The fused backward, compiled (not interpreted) through launch.backward, over the lists of occupied tiles (the
    default) and over every tile; at q/k 128 both its launches."""
    _compile_in_subprocess(_COMPILE, [str(p), *("1" if f else "0" for f in (causal, normalize, grads, skip)),
                                      str(dv), str(d)])


def test_gluon_is_available_here(monkeypatch):
    """The Triton the requirements install has the Gluon language (else Hopper would silently lose the Gluon
    kernels), and one without it is reported as such, so the Triton kernels run instead of failing."""
    import builtins

    assert gluon_support.gluon_available()
    real_import = builtins.__import__

    def no_gluon(name, *args, **kwargs):
        if "gluon" in name:
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    def without_gluon(mp):
        for module in [m for m in sys.modules if "gluon" in m]:
            mp.delitem(sys.modules, module)
        mp.setattr(builtins, "__import__", no_gluon)

    assert not _available_after(monkeypatch, without_gluon)
    assert gluon_support.gluon_available()


_COMPILE_FORWARD = """
import sys, torch
from benchmarks.registers import compiling_for, ptxas_usage
from kernels.threshold import launch
from kernels.threshold.options import ThresholdOptions
p, causal, normalize, skip = float(sys.argv[1]), *(a == "1" for a in sys.argv[2:5])
dv, d, bound = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "1"
launch.GLUON_FORWARD_D128 = d == 128
import kernels.threshold.gluon_forward as gf
gf.BOUND = bound
T, H = 200, 2
mk = lambda w: torch.zeros(1, T, H, w, dtype=torch.bfloat16).transpose(1, 2)
with compiling_for(90) as target:
    launch.forward(mk(d), mk(d), mk(dv), mk(d), mk(d), torch.full((H,), 0.5), torch.ones(H),
                   ThresholdOptions(p=p, normalize=normalize, causal=causal), record=skip, skip_products=skip,
                   target=target)
    u = ptxas_usage(target.compiled["fused_fwd"], 90)
print(u.registers, u.spill_bytes, u.shared_kib)
"""


@pytest.mark.parametrize("p,causal,normalize,skip,dv,d,bound", [
    (2.0, True, True, True, 128, 64, True), (2.0, True, True, False, 128, 64, True),
    (1.0, False, False, True, 64, 64, True), (3.0, True, False, True, 32, 64, True),
    (2.0, True, True, True, 256, 128, True), (1.0, False, True, False, 128, 128, True),
    (2.0, True, True, True, 128, 64, False), (1.0, False, False, True, 64, 64, False)])
def test_gluon_forward_compiles_for_hopper(p, causal, normalize, skip, dv, d, bound):
    """The Gluon forward, compiled (not interpreted) through launch.forward, recording the occupied tiles and skipping
    the products of empty ones (the default), and without; at q/k 128 (asked for) with 32-key ring stages; with the
    bound before the exact scores (gluon_forward.BOUND, on by default) and without it."""
    _compile_in_subprocess(_COMPILE_FORWARD, [str(p), *("1" if f else "0" for f in (causal, normalize, skip)),
                                              str(dv), str(d), "1" if bound else "0"])
