"""The Triton kernels on a CUDA GPU against the naive float64 implementation at long sequences:
bf16/fp16 <= 1e-2 and fp32 <= 1e-4 relative error for the output and every gradient (SPEC §3), and
the deterministic path bit-identical from run to run. Skipped without CUDA."""

import math

import pytest
import torch

from threshold_float64 import (Case, in_projection_layout, make_inputs, poisoned_outputs,  # noqa: F401
                              run_and_compare, run_kernel, survivor_shares)

from kernels import common
from kernels.threshold import launch
from kernels.threshold.autograd import threshold_attention_triton
from kernels.threshold.options import ThresholdOptions

GLUON_FORWARD_FITS = launch.gluon_forward_fits  # (the fixture below replaces it for most tests)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def triton_backward(monkeypatch):
    """These tests check the Triton kernels' paths: the Gluon kernels, the default for two views on Hopper where the
    inputs allow them, are kept out unless a test asks for them (test_fused_gluon_backward_on_gpu)."""
    monkeypatch.setattr(launch, "fused_paired_backward", lambda head_d, head_dv: False)
    monkeypatch.setattr(launch, "gluon_forward_fits", lambda *a: False)

CASES = {
    "tda_paired_bf16_T8192": Case(T=8192, d=64, dv=128, H=2, lam=(0.5, 0.1), dtype=torch.bfloat16),
    "tda_paired_fp32_T4096": Case(T=4096, d=64, dv=128, H=2, lam=(0.8,), dtype=torch.float32),
    "tda_d128_bf16_T4096_gqa": Case(T=4096, d=128, dv=128, H=4, Hkv=2, lam=(0.3, 1.2),
                                    dtype=torch.bfloat16),
    "tda_d100_dv200_bf16_T2000_p1": Case(T=2000, d=100, dv=200, H=2, p=1.0, beta=(0.5,),
                                         dtype=torch.bfloat16),
    "tda_d256_bf16_T1000_p3": Case(T=1000, d=256, dv=256, H=2, p=3.0, lam=(0.0, 1.0),
                                   dtype=torch.bfloat16),
    "tda_d48_fp32_T777_p1.5": Case(T=777, d=48, dv=96, H=2, p=1.5, beta=(1.0, 0.5),
                                   dtype=torch.float32),
    "tda_d256_fp32_T300": Case(T=300, d=256, dv=256, H=2, strength=(0.1, 1.0), dtype=torch.float32),
    "tra_d128_bf16_T4096": Case(T=4096, d=128, dv=128, H=2, two_views=False, dtype=torch.bfloat16),
    "tra_d64_fp16_T3000": Case(T=3000, d=64, dv=64, H=2, two_views=False, dtype=torch.float16),
    "rela_d64_bf16_T2048": Case(T=2048, d=64, dv=64, H=2, two_views=False, beta=(0.0,), p=1.0,
                                normalize=False, scale=1 / math.sqrt(64), strength=(0.0, 0.3),
                                dtype=torch.bfloat16),
    "tda_Tq100_Tk5000_bf16": Case(T=5000, Tq=100, d=64, dv=128, H=2, dtype=torch.bfloat16),
    "tda_noncausal_bf16_T1500": Case(T=1500, d=64, dv=128, H=2, causal=False,
                                     dtype=torch.bfloat16),
}




@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference_on_gpu(name):
    case = CASES[name]
    seed = sum(map(ord, name))
    inputs = make_inputs(case, seed, device="cuda")
    shares = survivor_shares(inputs, case)
    assert all(0.001 <= s <= 0.99 for s in shares), f"survivor shares {shares}"
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed)
    tol = 1e-4 if case.dtype == torch.float32 else 1e-2
    print(name, "shares", [f"{s:.4f}" for s in shares], {k: f"{v:.2e}" for k, v in errors.items()})
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"errors above {tol}: {bad} (all: {errors})"


@pytest.mark.parametrize("name", ["tda_paired_bf16_T8192", "tda_paired_fp32_T4096", "tra_d64_fp16_T3000"])
def test_other_dq_path_on_gpu(monkeypatch, name):
    """The dQ path the default table does not pick for this case (atomics in the dK/dV kernel, or the
    dQ kernel) is just as exact."""

    case = CASES[name]
    default = launch.dq_atomic(case.two_views)
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: not default)
    seed = sum(map(ord, name))
    errors = run_and_compare(threshold_attention_triton, case, make_inputs(case, seed, device="cuda"), seed)
    tol = 1e-4 if case.dtype == torch.float32 else 1e-2
    assert all(v <= tol for v in errors.values()), errors


@pytest.mark.parametrize("atomic", [True, False])
@pytest.mark.parametrize("name", ["tda_paired_bf16_T8192", "tda_paired_fp32_T4096", "tda_d100_dv200_bf16_T2000_p1",
                                  "tda_Tq100_Tk5000_bf16", "tra_d64_fp16_T3000"])
def test_query_major_dkdv_layout_on_gpu(monkeypatch, name, atomic):
    """The dK/dV kernel's (queries, keys) tile layout, compiled, with either dQ path, at its candidate tiles."""

    case = CASES[name]
    default = launch.backward_configs

    def query_major(*args):
        return [launch.TileConfig(c.block_m, c.block_n, c.num_warps, c.num_stages, query_major=True)
                for c in default(*args)]
    monkeypatch.setattr(launch, "backward_configs", query_major)
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: atomic)
    monkeypatch.setattr(launch, "_chosen", {})
    seed = sum(map(ord, name))
    errors = run_and_compare(threshold_attention_triton, case, make_inputs(case, seed, device="cuda"), seed)
    tol = 1e-4 if case.dtype == torch.float32 else 1e-2
    assert all(v <= tol for v in errors.values()), errors
    assert launch._chosen and all(c.query_major for k, c in launch._chosen.items() if k[0] == "dkdv")


@pytest.mark.parametrize("query_major", [False, True])
@pytest.mark.parametrize("name", ["tda_paired_bf16_T8192", "tda_paired_fp32_T4096", "tda_d100_dv200_bf16_T2000_p1",
                                  "tda_Tq100_Tk5000_bf16", "tra_d64_fp16_T3000"])
def test_dv_apart_on_gpu(monkeypatch, name, query_major):
    """dV launched on its own and dK with dQ by atomics, compiled, in either tile layout."""

    case = CASES[name]
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: True)
    monkeypatch.setattr(launch, "dv_pass_apart", lambda two_views: True)
    for table in ("backward_configs", "dv_configs"):
        default = getattr(launch, table)
        monkeypatch.setattr(launch, table, lambda *args, default=default: [
            launch.TileConfig(c.block_m, c.block_n, c.num_warps, c.num_stages, query_major=query_major)
            for c in default(*args)])
    monkeypatch.setattr(launch, "_chosen", {})
    seed = sum(map(ord, name))
    errors = run_and_compare(threshold_attention_triton, case, make_inputs(case, seed, device="cuda"), seed)
    tol = 1e-4 if case.dtype == torch.float32 else 1e-2
    assert all(v <= tol for v in errors.values()), errors
    assert {k[0] for k in launch._chosen} >= {"dkdv", "dv"}


@pytest.mark.parametrize("path", ["split", "atomic", "dv_apart", "query_major"])
@pytest.mark.parametrize("name", ["tda_paired_bf16_T8192", "tda_paired_fp32_T4096", "tda_d100_dv200_bf16_T2000_p1",
                                  "tra_d64_fp16_T3000"])
def test_tma_reads_on_gpu(monkeypatch, name, path):
    """The kernels reading q, k, v, dO through tensor descriptors (inputs in NaN-guarded buffers with
    16-byte strides), compiled, at their candidate tiles, on each backward path."""
    import threshold_float64

    case = CASES[name]
    monkeypatch.setattr(threshold_float64, "guarded", threshold_float64.aligned_guarded)
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: path != "split")
    monkeypatch.setattr(launch, "dv_pass_apart", lambda two_views: path == "dv_apart")
    for table in ("forward_configs", "backward_configs", "dv_configs", "dq_configs"):
        default = getattr(launch, table)
        monkeypatch.setattr(launch, table, lambda *args, default=default, table=table: [
            launch.TileConfig(c.block_m, c.block_n, c.num_warps, c.num_stages,
                              query_major=path == "query_major" and table in ("backward_configs", "dv_configs"),
                              tma=True) for c in default(*args)])
    monkeypatch.setattr(launch, "_chosen", {})
    counters = {name: threshold_float64.DescriptorCount(getattr(launch, name))
                for name in ("threshold_attention_fwd_kernel", "dkdv_kernel", "dq_kernel")}
    for kernel_name, counter in counters.items():
        monkeypatch.setattr(launch, kernel_name, counter)
    seed = sum(map(ord, name))
    errors = run_and_compare(threshold_attention_triton, case, make_inputs(case, seed, device="cuda"), seed)
    tol = 1e-4 if case.dtype == torch.float32 else 1e-2
    assert all(v <= tol for v in errors.values()), errors
    # every launch read its rows through descriptors (the aligned buffers allow it)
    assert all(c.with_descriptors == c.launches for c in counters.values())
    assert counters["dkdv_kernel"].launches > 0


@pytest.mark.parametrize("path", ["split", "atomic", "dv_apart"])
@pytest.mark.parametrize("name", ["tda_paired_bf16_T8192", "tda_paired_fp32_T4096", "tra_d64_fp16_T3000",
                                  "tda_Tq100_Tk5000_bf16"])
def test_skipping_empty_tiles_on_gpu(monkeypatch, name, path):
    """Every kernel skipping tiles without a surviving weight, compiled, with pointer and descriptor reads,
    on each backward path."""
    import threshold_float64

    case = CASES[name]
    for tma in (False, True):
        monkeypatch.setattr(threshold_float64, "guarded",
                            threshold_float64.aligned_guarded if tma else threshold_float64.guarded)
        for table in ("forward_configs", "dq_configs", "backward_configs", "dv_configs"):
            default = getattr(launch, table)
            monkeypatch.setattr(launch, table, lambda *args, default=default, tma=tma: [
                launch.TileConfig(c.block_m, c.block_n, c.num_warps, c.num_stages, query_major=c.query_major,
                                  tma=tma, skip_empty=True) for c in default(*args)])
        monkeypatch.setattr(launch, "dq_atomic", lambda two_views: path != "split")
        monkeypatch.setattr(launch, "dv_pass_apart", lambda two_views: path == "dv_apart")
        monkeypatch.setattr(launch, "_chosen", {})
        seed = sum(map(ord, name))
        errors = run_and_compare(threshold_attention_triton, case, make_inputs(case, seed, device="cuda"), seed)
        tol = 1e-4 if case.dtype == torch.float32 else 1e-2
        assert all(v <= tol for v in errors.values()), (tma, errors)
        expected = {"fwd", "dkdv"} | ({"dq"} if path == "split" else set()) | ({"dv"} if path == "dv_apart" else set())
        assert {k[0] for k, c in launch._chosen.items() if c.skip_empty} == expected


@pytest.mark.parametrize("dtype,two_views", [(torch.bfloat16, True), (torch.bfloat16, False),
                                             (torch.float32, True)])
def test_deterministic_path_is_bit_identical(dtype, two_views):
    case = Case(T=4096, d=64, dv=128 if two_views else 64, H=4, Hkv=2, lam=(0.5, 0.2),
                two_views=two_views, dtype=dtype)
    inputs = make_inputs(case, seed=1, device="cuda")
    names = ("q1", "k1", "v", "q2", "k2") if two_views else ("q1", "k1", "v")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        errors = run_and_compare(threshold_attention_triton, case, inputs, seed=1)
        first = [inputs[n].grad.clone() for n in names]
        repeats_equal = []
        for _ in range(2):
            run_kernel(threshold_attention_triton, case, inputs, seed=1)
            repeats_equal.append(all(torch.equal(inputs[n].grad, g) for n, g in zip(names, first)))
    finally:
        torch.use_deterministic_algorithms(previous)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert all(v <= tol for v in errors.values()), errors
    assert all(repeats_equal)


@pytest.mark.parametrize("atomic", [True, False])
@pytest.mark.parametrize("name", ["tda_paired_bf16_T8192", "tra_d64_fp16_T3000"])
def test_projection_layout_on_gpu(monkeypatch, name, atomic):
    """Inputs laid out (B, T, H, d) like the model's projections (dense and aligned, so tiles that read
    through descriptors, the paired dK/dV default, use them): exact on both dQ paths, and the output comes
    back in the inputs' layout."""

    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: atomic)
    case = CASES[name]
    seed = sum(map(ord, name)) + 7
    inputs = make_inputs(case, seed, device="cuda")
    names = ["q1", "k1", "v"] + (["q2", "k2"] if case.two_views else [])
    in_projection_layout(inputs, names)
    assert common.tma_ready(*(inputs[n] for n in names))
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed)
    tol = 1e-4 if case.dtype == torch.float32 else 1e-2
    assert all(v <= tol for v in errors.values()), errors
    run = run_kernel(threshold_attention_triton, case, inputs, seed)
    assert run["out"].transpose(1, 2).is_contiguous()


_FRESH_AUTOGRAD_THREAD = """
import torch
from kernels.threshold import launch
from kernels.threshold.autograd import threshold_attention_triton
from kernels.threshold.options import ThresholdOptions
from kernels.threshold.tiles import TileConfig
import sys
fused = sys.argv[1] == "fused"
launch.backward_configs = lambda *a: [TileConfig(32, 128, 8, 3, tma=True)]
launch.dq_atomic = lambda two_views: False
launch.fused_paired_backward = lambda head_d, head_dv: fused
fused_launches = []
gluon_backward = launch._gluon_backward
launch._gluon_backward = lambda *a: fused_launches.append(1) or gluon_backward(*a)
x = [torch.randn(2, 700, 2, w, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
     for w in (64, 64, 128, 64, 64)]
lam = torch.full((2,), 0.5, device="cuda", requires_grad=True)
out = threshold_attention_triton(*x, lam=lam)
do = torch.randn_like(out)
args = [t.detach() for t in x]
o, *norms = launch.forward(*args[:3], *args[3:], lam.detach(), torch.ones(2, device="cuda"), ThresholdOptions())
grads = launch.backward(do, *args[:3], *args[3:], *norms, lam.detach(), torch.ones(2, device="cuda"),
                        ThresholdOptions(), True, False, False)
want = [g.clone() for g in grads[:5]]
del grads, o, norms
out.backward(do)  # the autograd engine's CUDA thread starts here; its memory comes from torch's cache
if fused:  # dQ by atomics: the same up to the order of the additions
    assert fused_launches
    assert all(torch.allclose(t.grad.float(), w.float(), rtol=1e-2, atol=1e-2 * w.float().abs().max().item())
               for t, w in zip(x, want))
else:
    assert all(torch.equal(t.grad, w) for t, w in zip(x, want))
print("ok")
"""


@pytest.mark.parametrize("path", ["triton", "fused"])
def test_descriptor_tiles_launch_in_a_fresh_autograd_thread_on_gpu(path):
    """The autograd engine runs the backward in a thread of its own. In a fresh process, with the memory
    already in torch's cache, nothing has bound a CUDA context in that thread when the dK/dV tile that
    reads through tensor descriptors (which need one to be built) launches, or the fused Gluon backward (Hopper
    only): it must launch all the same."""
    if path == "fused" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the fused backward is for Hopper (sm_90)")
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", _FRESH_AUTOGRAD_THREAD, path], cwd=root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=root, TRITON_INTERPRET="0"), timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def _compared(case: Case, name: str, *label: str, projection: bool = True) -> dict:
    """The kernels' output and every gradient against float64 (run_and_compare) on ``case``'s inputs seeded by the
    test's ``name``, in the model's projection layout unless ``projection`` is off: the errors, printed with
    ``label`` and the views' survivor shares."""
    seed = sum(map(ord, name))
    inputs = make_inputs(case, seed, device="cuda")
    if projection:  # (B, T, H, d) made dense, viewed as (B, H, T, d), as the model's projections are
        in_projection_layout(inputs)
    shares = survivor_shares(inputs, case)
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed)
    print(name, *label, "shares", [f"{s:.4f}" for s in shares], {k: f"{v:.2e}" for k, v in errors.items()})
    return errors


# Inputs the fused Gluon backward takes at q/k 64 (two views, 16-bit, v a power of two up to 128; q/k 128 has its own
# cases below, WIDE_FUSED_CASES), at awkward lengths: one row, fewer rows than a tile, tails on both axes, more keys
# than queries, no causal mask, p = 1 and p = 3, lam outside [0, 1], beta = 0, no normalisation.
FUSED_CASES = {
    "tda_paired_bf16_T8192": CASES["tda_paired_bf16_T8192"],
    "tda_Tq100_Tk5000_bf16": CASES["tda_Tq100_Tk5000_bf16"],
    "tda_noncausal_bf16_T1500": CASES["tda_noncausal_bf16_T1500"],
    "tda_T1_bf16": Case(T=1, d=64, dv=128, H=2, dtype=torch.bfloat16),
    "tda_T63_fp16_p1": Case(T=63, d=64, dv=128, H=2, p=1.0, dtype=torch.float16),
    "tda_T200_dv64_p3": Case(T=200, d=64, dv=64, H=2, p=3.0, lam=(1.3, -0.2), dtype=torch.bfloat16),
    "tda_T1111_dv32_beta0": Case(T=1111, d=64, dv=32, H=2, beta=(0.0, 0.7), dtype=torch.bfloat16),
    "tda_T777_nonorm_B2": Case(T=777, d=64, dv=64, H=2, B=2, normalize=False, scale=0.125, strength=(0.0, 0.3),
                               dtype=torch.bfloat16),
}


@pytest.mark.parametrize("layout,forward,backward", [("guarded", "triton", "fused"), ("projection", "gluon", "fused"),
                                                     ("projection", "gluon", "triton")])
@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_fused_gluon_backward_on_gpu(monkeypatch, name, layout, forward, backward):
    """The fused Gluon backward (dK1, dK2, dV and dQ by atomics in one kernel) against float64, and it ran, on
    inputs in NaN-guarded buffers (16-byte strides) after the Triton forward, and laid out as the model's projections
    after the Gluon forward (gluon_forward.py); and the Gluon forward followed by the Triton backward (as under
    deterministic algorithms, or with a dO the copy engine cannot read)."""
    import threshold_float64

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the fused backward is for Hopper (sm_90)")
    case = FUSED_CASES[name]
    monkeypatch.setattr(threshold_float64, "guarded", threshold_float64.aligned_guarded)
    monkeypatch.setattr(launch, "fused_paired_backward", lambda head_d, head_dv: backward == "fused")
    launches = []
    real = launch._gluon_backward
    monkeypatch.setattr(launch, "_gluon_backward", lambda *a: launches.append("backward") or real(*a))
    if forward == "gluon":
        monkeypatch.setattr(launch, "gluon_forward_fits", GLUON_FORWARD_FITS)
        real_forward = launch._gluon_forward
        monkeypatch.setattr(launch, "_gluon_forward", lambda *a: launches.append("forward") or real_forward(*a))
    errors = _compared(case, name, layout, projection=layout == "projection")
    assert ("backward" in launches) == (backward == "fused") and ("forward" in launches) == (forward == "gluon"), \
        launches
    assert all(v <= 1e-2 for v in errors.values()), errors


WIDE_CASES = {
    "tda_d128_dv256_bf16_T3001": Case(T=3001, d=128, dv=256, H=2, dtype=torch.bfloat16),
    "tda_d128_dv256_bf16_Tq100_Tk5000": Case(T=5000, Tq=100, d=128, dv=256, H=2, lam=(0.3, 1.2),
                                             dtype=torch.bfloat16),
    "tda_d128_dv128_fp16_T1500_noncausal": Case(T=1500, d=128, dv=128, H=2, causal=False, p=3.0,
                                                dtype=torch.float16),
}


@pytest.mark.parametrize("name", list(WIDE_CASES))
def test_gluon_forward_at_q_k_128_on_gpu(monkeypatch, name):
    """The Gluon forward at q/k 128 (launch.GLUON_FORWARD_D128, set here), 32-key ring stages, two of which mark each
    record cell, followed by the Triton backward, which reads that record: output and every gradient against float64
    (a cell left unmarked drops its gradients), on inputs laid out as the model's projections; it must have run."""
    import threshold_float64

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Gluon forward is for Hopper (sm_90)")
    case = WIDE_CASES[name]
    monkeypatch.setattr(threshold_float64, "guarded", threshold_float64.aligned_guarded)
    monkeypatch.setattr(launch, "GLUON_FORWARD_D128", True)
    monkeypatch.setattr(launch, "gluon_forward_fits", GLUON_FORWARD_FITS)
    launches = []
    real_forward = launch._gluon_forward
    monkeypatch.setattr(launch, "_gluon_forward", lambda *a: launches.append("forward") or real_forward(*a))
    errors = _compared(case, name)
    assert launches and set(launches) == {"forward"} and not launch._gluon_failure, launches
    assert all(v <= 1e-2 for v in errors.values()), errors


# The fused Gluon backward at q/k 128: dK1, dK2 and dQ in one launch, dV in another (gluon_backward.passes), at
# awkward lengths, v of 256 and 128, more keys than queries, no causal mask, p = 1 and 3, no normalisation.
WIDE_FUSED_CASES = dict(WIDE_CASES, **{
    "tda_d128_dv256_T1_bf16": Case(T=1, d=128, dv=256, H=2, dtype=torch.bfloat16),
    "tda_d128_dv256_T63_fp16_p1": Case(T=63, d=128, dv=256, H=2, p=1.0, dtype=torch.float16),
    "tda_d128_dv128_T777_nonorm_B2": Case(T=777, d=128, dv=128, H=2, B=2, normalize=False, scale=0.09,
                                          strength=(0.0, 0.3), lam=(1.3, -0.2), dtype=torch.bfloat16),
    "tda_d128_dv256_T8192": Case(T=8192, d=128, dv=256, H=1, Hkv=1, lam=(0.5,), dtype=torch.bfloat16),
})


@pytest.mark.parametrize("forward", ["gluon", "triton"])
@pytest.mark.parametrize("name", list(WIDE_FUSED_CASES))
def test_fused_gluon_backward_at_q_k_128_on_gpu(monkeypatch, name, forward):
    """The Gluon backward at q/k 128 (two launches: dK and dQ, then dV) after either forward, on inputs laid out as
    the model's projections: output and every gradient against float64, and the Gluon backward must have run."""
    import threshold_float64

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the fused backward is for Hopper (sm_90)")
    case = WIDE_FUSED_CASES[name]
    monkeypatch.setattr(threshold_float64, "guarded", threshold_float64.aligned_guarded)
    monkeypatch.setattr(launch, "fused_paired_backward", lambda head_d, head_dv: True)
    monkeypatch.setattr(launch, "GLUON_BACKWARD_D128", True)
    if forward == "gluon":
        monkeypatch.setattr(launch, "gluon_forward_fits", GLUON_FORWARD_FITS)
    launches = []
    real = launch._gluon_backward
    monkeypatch.setattr(launch, "_gluon_backward", lambda *a: launches.append("backward") or real(*a))
    errors = _compared(case, name, forward)
    assert launches == ["backward"] and not launch._gluon_failure, (launches, launch._gluon_failure)
    assert all(v <= 1e-2 for v in errors.values()), errors


# Exact tile skipping on long sequences: inputs in which whole tiles are empty (threshold_float64.planted_inputs),
# survivors in blocks and alone (at a cell's corner, on the diagonal, in the last row), grouped heads and Tq != Tk.
SPARSE_CASES = {
    "tda_paired_bf16_T8192": Case(T=8192, d=64, dv=128, H=2, lam=(0.5, 0.1), dtype=torch.bfloat16),
    "tda_paired_fp32_T4096": Case(T=4096, d=64, dv=128, H=2, lam=(0.8,), dtype=torch.float32),
    "tda_gqa_bf16_Tq1000_Tk5000": Case(T=5000, Tq=1000, d=64, dv=64, H=4, Hkv=2, lam=(0.3, 0.9),
                                       dtype=torch.bfloat16),
    "tra_fp16_T3000": Case(T=3000, d=64, dv=64, H=2, two_views=False, dtype=torch.float16),
}


def _sparse_plants(case: Case, seed: int, count: int = 40) -> list:
    """``count`` plants per view at random places (blocks of 1 to 40 rows and keys, the keys at or before the first
    row's position), and three single survivors: at the corner of a 64 x 64 cell, on the diagonal, in the last row."""
    from threshold_float64 import Plant

    g = torch.Generator().manual_seed(seed)
    Tk, Tq = case.T, case.Tq or case.T
    shift = Tk - Tq
    plants = []
    for view in (1, 2) if case.two_views else (1,):
        for _ in range(count):
            r = int(torch.randint(Tq, (1,), generator=g))
            rows = int(torch.randint(1, 41, (1,), generator=g))
            k = int(torch.randint(r + shift + 1, (1,), generator=g))
            keys = int(torch.randint(1, 41, (1,), generator=g))
            plants.append(Plant(view, range(r, min(Tq, r + rows)), range(k, min(Tk, k + keys))))
    corner = min(Tq - 1, 127)
    plants += [Plant(1, range(corner, corner + 1), range(64, 65)) if corner + shift >= 64 else
               Plant(1, range(corner, corner + 1), range(0, 1)),
               Plant(case.two_views + 1, range(Tq // 2, Tq // 2 + 1), range(Tq // 2 + shift, Tq // 2 + shift + 1)),
               Plant(1, range(Tq - 1, Tq), range(Tk - 1, Tk))]
    return plants


def _record_of(case: Case, inputs: dict) -> torch.Tensor:
    x = [inputs[n].detach() if inputs.get(n) is not None else None for n in ("q1", "k1", "v", "q2", "k2")]
    *_, rec = launch.forward(*x, inputs.get("lam"), inputs["beta"], ThresholdOptions())
    return rec


@pytest.mark.parametrize("path", ["split", "atomic", "deterministic"])
@pytest.mark.parametrize("name", list(SPARSE_CASES))
def test_skipping_on_gpu(monkeypatch, name, path):
    """The Triton kernels with exact skipping (the default), compiled, on each backward path: the forward's record is
    the float64 support of every 64 x 64 cell, and the output and every gradient match float64 although most tiles are
    skipped; the deterministic path gives the same bits twice."""
    from threshold_float64 import cell_support, planted_inputs

    from benchmarks.timing import tile_occupancy

    case = SPARSE_CASES[name]
    seed = sum(map(ord, name))
    monkeypatch.setattr(launch, "dq_atomic", lambda two_views: path == "atomic")
    inputs = planted_inputs(case, _sparse_plants(case, seed), seed, device="cuda")
    support = cell_support(inputs, case)
    rec = _record_of(case, inputs)
    assert torch.equal(rec.bool(), support), (rec.sum().item(), support.sum().item())
    occupancy = tile_occupancy(support.to(torch.uint8), case.Tq or case.T, case.T)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(path == "deterministic")
    try:
        errors = run_and_compare(threshold_attention_triton, case, inputs, seed)
        if path == "deterministic":
            names = ("q1", "k1", "v", "q2", "k2") if case.two_views else ("q1", "k1", "v")
            first = [inputs[n].grad.clone() for n in names]
            run_kernel(threshold_attention_triton, case, inputs, seed)
            assert all(torch.equal(inputs[n].grad, g) for n, g in zip(names, first))
    finally:
        torch.use_deterministic_algorithms(previous)
    tol = 1e-4 if case.dtype == torch.float32 else 1e-2
    print(name, path, f"occupancy {occupancy:.4f}", {k: f"{v:.2e}" for k, v in errors.items()})
    assert 0 < occupancy < 0.5  # most tiles empty: the backward skips them
    assert all(v <= tol for v in errors.values()), errors


FUSED_SPARSE_CASES = {
    "tda_paired_bf16_T8192": SPARSE_CASES["tda_paired_bf16_T8192"],
    "tda_d128_dv256_bf16_T6000": Case(T=6000, d=128, dv=256, H=2, lam=(0.5, 0.2), dtype=torch.bfloat16),
    "tda_paired_fp16_T10000": Case(T=10000, d=64, dv=128, H=1, Hkv=1, lam=(0.4,), dtype=torch.float16),
    "tda_Tq1000_Tk5000_dv64_p1": Case(T=5000, Tq=1000, d=64, dv=64, H=2, p=1.0, lam=(0.3, 1.2),
                                      dtype=torch.bfloat16),
}


@pytest.mark.parametrize("forward", ["gluon", "triton"])
@pytest.mark.parametrize("name", list(FUSED_SPARSE_CASES))
def test_fused_gluon_backward_skips_on_gpu(monkeypatch, name, forward):
    """The fused Gluon backward over the lists of occupied tiles (and the Gluon forward recording them and leaving out
    the products of empty ones, or the Triton forward recording them), on long sparse inputs in the projections'
    layout: the record is the float64 support, the output and every gradient match float64."""
    import threshold_float64
    from threshold_float64 import cell_support, planted_inputs

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the fused backward is for Hopper (sm_90)")
    case = FUSED_SPARSE_CASES[name]
    seed = sum(map(ord, name))
    monkeypatch.setattr(threshold_float64, "guarded", threshold_float64.aligned_guarded)
    monkeypatch.setattr(launch, "fused_paired_backward", lambda head_d, head_dv: True)
    if forward == "gluon":
        monkeypatch.setattr(launch, "gluon_forward_fits", GLUON_FORWARD_FITS)
    launches = []
    for part in ("_gluon_forward", "_gluon_backward"):
        real = getattr(launch, part)
        monkeypatch.setattr(launch, part, lambda *a, real=real, part=part: launches.append(part) or real(*a))
    inputs = planted_inputs(case, _sparse_plants(case, seed), seed, device="cuda")
    in_projection_layout(inputs)
    assert torch.equal(_record_of(case, inputs).bool(), cell_support(inputs, case))
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed)
    print(name, forward, {k: f"{v:.2e}" for k, v in errors.items()})
    assert ("_gluon_forward" in launches) == (forward == "gluon") and "_gluon_backward" in launches, launches
    assert all(v <= 1e-2 for v in errors.values()), errors


@pytest.mark.parametrize("backward", ["fused", "triton"])
def test_a_corrupted_record_gives_wrong_gradients_on_gpu(monkeypatch, backward):
    """The compiled backward visits what the record lists: with the record's fullest cell cleared after the forward,
    the gradients of its keys, values and queries go wrong (the output, computed before, stays right)."""
    import threshold_float64
    from threshold_float64 import Plant, cell_support, planted_inputs

    if backward == "fused" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the fused backward is for Hopper (sm_90)")
    case = Case(T=4096, d=64, dv=128, H=2, lam=(0.5,), dtype=torch.bfloat16)
    plants = [Plant(1, range(1000, 1040), range(600, 640)), Plant(1, range(3000, 3001), range(3000, 3001)),
              Plant(2, range(2000, 2010), range(100, 110))]
    monkeypatch.setattr(threshold_float64, "guarded", threshold_float64.aligned_guarded)
    monkeypatch.setattr(launch, "fused_paired_backward", lambda head_d, head_dv: backward == "fused")
    monkeypatch.setattr(launch, "gluon_forward_fits", GLUON_FORWARD_FITS)
    inputs = planted_inputs(case, plants, seed=9, device="cuda")
    cell = (0, 0, 1000 // 64, 600 // 64)
    assert cell_support(inputs, case)[cell]
    forward = launch.forward

    def corrupted(*args, **kwargs):
        out, *saved, rec = forward(*args, **kwargs)
        rec[cell] = 0
        return (out, *saved, rec)

    monkeypatch.setattr(launch, "forward", corrupted)
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed=9)
    print(backward, {k: f"{v:.2e}" for k, v in errors.items()})
    assert errors["out"] <= 1e-2 and errors["dk2"] <= 1e-2
    assert errors["dk1"] > 0.1 and errors["dv"] > 0.1 and errors["dq1"] > 0.1, errors


def _bound_adversarial_inputs(case: Case, seed: int, plants: int = 24) -> dict:
    """Inputs (as make_inputs, in the projections' layout) on which the Gluon forward's bound (gluon_forward.py, "A
    bound before the exact scores") clears most tiles and must not clear some. Rows point in random directions with
    norms within 5% of 1 (cosines about N(0, 1/64)) and beta is 1.5, so few weights survive and the rows' largest
    scores clear their tiles; per view, ``plants`` keys of a quarter of that norm each point along one query row of a
    block wholly left of the row's diagonal (cosine 0.99, above every tau there): their raw score, about 0.25, is
    below the row's largest (the background's, up to about 0.4), so a bound that used the largest score's own key
    norm, or too small a factor, clears the tile and drops a weight of about 0.05."""
    g = torch.Generator().manual_seed(seed)
    B, H, T, d = case.B, case.H, case.T, case.d

    def rows(n):
        x = torch.randn(B, H, n, d, generator=g, dtype=torch.float64)
        return x / x.norm(dim=-1, keepdim=True) * (0.95 + 0.1 * torch.rand(B, H, n, 1, generator=g,
                                                                           dtype=torch.float64))

    out = {}
    for view in ("1", "2"):
        q, k = rows(T), rows(T)
        taken_rows, taken_keys = set(), set()
        while len(taken_rows) < plants:
            i = int(torch.randint(512, T, (1,), generator=g))
            j = int(torch.randint(0, (i // 64) * 64, (1,), generator=g))
            if i in taken_rows or j in taken_keys:
                continue
            taken_rows.add(i)
            taken_keys.add(j)
            u = torch.randn(d, generator=g, dtype=torch.float64)
            u = u / u.norm()
            k[:, :, j] = 0.25 * u
            q[:, :, i] = u + 0.01 * torch.randn(d, generator=g, dtype=torch.float64)
        for name, x in (("q", q), ("k", k)):
            x = x.to("cuda", case.dtype).transpose(1, 2).contiguous().transpose(1, 2)
            out[name + view] = x.requires_grad_()
    v = torch.randn(B, H, T, case.dv, generator=g, dtype=torch.float64)
    out["v"] = v.to("cuda", case.dtype).transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    out["beta"] = torch.full((H,), case.beta[0], dtype=torch.float32, device="cuda")
    out["lam"] = torch.full((H,), case.lam[0], dtype=torch.float32, device="cuda")
    return out


def test_gluon_forward_bound_on_gpu(monkeypatch):
    """The Gluon forward's bound before the exact scores: on inputs where it clears most tiles and where,
    in others, the surviving weight is not at the row's largest score, the output and the record are the same bits
    with the bound and without it, the record is the float64 support, and the output and every gradient match
    float64; with the bound's factor cut to 1/4 (a wrong bound) the planted weights are dropped and the output goes
    wrong."""
    from threshold_float64 import cell_support, naive_attention, rel_err

    import kernels.threshold.gluon_forward as gf

    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Gluon forward is for Hopper (sm_90)")
    case = Case(T=4096, d=64, dv=128, H=2, beta=(1.5,), lam=(0.5,), dtype=torch.bfloat16)
    monkeypatch.setattr(launch, "gluon_forward_fits", GLUON_FORWARD_FITS)
    launches = []
    real_forward = launch._gluon_forward
    monkeypatch.setattr(launch, "_gluon_forward", lambda *a: launches.append("forward") or real_forward(*a))
    inputs = _bound_adversarial_inputs(case, seed=11)
    x = [inputs[n].detach() for n in ("q1", "k1", "v", "q2", "k2")]

    def forward():
        out, *_, rec = launch.forward(*x, inputs["lam"], inputs["beta"], ThresholdOptions())
        return out, rec

    monkeypatch.setattr(gf, "BOUND", False)
    plain = forward()
    monkeypatch.setattr(gf, "BOUND", True)
    bounded = forward()
    support = cell_support(inputs, case)
    assert launches and not launch._gluon_failure
    assert torch.equal(plain[0], bounded[0]) and torch.equal(plain[1], bounded[1])
    assert torch.equal(bounded[1].bool(), support), (bounded[1].sum().item(), support.sum().item())
    errors = run_and_compare(threshold_attention_triton, case, inputs, seed=11)
    print("bound", {k: f"{v:.2e}" for k, v in errors.items()}, "occupied cells", int(support.sum()))
    assert all(v <= 1e-2 for v in errors.values()), errors
    ref = naive_attention(*[t.double() for t in x], inputs["lam"].double(), inputs["beta"].double())
    monkeypatch.setattr(gf, "SLACK", 0.25)
    wrong = forward()[0]
    # rows from 512 on hold the plants and, at beta 1.5, hardly any other survivor: dropping the plants empties them
    assert rel_err(wrong[:, :, 512:], ref[:, :, 512:]) > 0.5, rel_err(wrong[:, :, 512:], ref[:, :, 512:])
