"""The sigmoid, softpick and sink-softmax Triton kernels on a CUDA GPU against naive float64 maps at long sequences:
bf16/fp16 ≤ 1e-2 and fp32 ≤ 1e-4 relative error for the output and every gradient (SPEC §3), the deterministic path
bit-identical from run to run, σ's other evaluations, the model's variants on the kernels and under torch.compile.
Skipped without CUDA; run compiled (TRITON_INTERPRET=0)."""

import zlib

import pytest
import torch
from omegaconf import OmegaConf

from sink_free_float64 import (OPS, Case, make_inputs, naive_map, poisoned_outputs, rel_err,  # noqa: F401
                               run_and_compare, weight_shares, within)

from kernels.sigmoid import launch as sigmoid_launch
from kernels.softpick import launch as normalized_launch
from kernels.sigmoid.autograd import sigmoid_attention_triton
from kernels.sink_softmax.autograd import sink_softmax_attention_triton
from kernels.softpick.autograd import softpick_attention_triton

pytestmark = pytest.mark.gpu

ENTRY = {"sigmoid": sigmoid_attention_triton, "softpick": softpick_attention_triton,
         "sink_softmax": sink_softmax_attention_triton}

CASES = {
    "bf16_T8192_d64": Case(T=8192, d=64, dv=64, dtype=torch.bfloat16, layout="projection"),
    "fp32_T2048_d64": Case(T=2048, d=64, dv=64, dtype=torch.float32),
    "bf16_T4096_d128_gqa": Case(T=4096, d=128, dv=128, H=4, Hkv=2, dtype=torch.bfloat16),
    "bf16_T2000_d100_dv200": Case(T=2000, d=100, dv=200, dtype=torch.bfloat16),
    "bf16_T1000_d256": Case(T=1000, d=256, dv=256, dtype=torch.bfloat16),
    "fp16_T3000_d64": Case(T=3000, d=64, dv=64, dtype=torch.float16),
    "bf16_Tq100_Tk5000": Case(T=5000, Tq=100, d=64, dv=64, dtype=torch.bfloat16),
    "bf16_T1500_noncausal": Case(T=1500, d=64, dv=64, causal=False, dtype=torch.bfloat16),
    "fp32_T300_d256": Case(T=300, d=256, dv=256, dtype=torch.float32),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("op", OPS)
def test_matches_float64_on_gpu(op, name):
    case = CASES[name]
    seed = zlib.crc32((op + name).encode()) % 2**31
    inputs = make_inputs(case, op, seed, device="cuda")
    errors = run_and_compare(ENTRY[op], op, case, inputs, seed)
    print(op, name, weight_shares(op, case, inputs), {k: f"{v:.2e}" for k, v in errors.items() if k != "got"})
    assert not within(errors, case.dtype), {k: v for k, v in errors.items() if k != "got"}


@pytest.mark.parametrize("op", OPS)
def test_deterministic_path_on_gpu(op):
    """Under torch.use_deterministic_algorithms the backward (no atomics) is exact and bit-identical run to run."""
    case = Case(T=4096, d=64, dv=64, H=4, Hkv=2, dtype=torch.bfloat16)
    inputs = make_inputs(case, op, seed=7, device="cuda")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = run_and_compare(ENTRY[op], op, case, inputs, seed=7)
        second = run_and_compare(ENTRY[op], op, case, inputs, seed=7)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert not within(first, case.dtype), first
    for name, got in first["got"].items():
        if got is not None:
            assert torch.equal(got, second["got"][name]), name


@pytest.mark.parametrize("mode,fold", [(0, False), (2, True), (2, False)])
def test_sigmoid_evaluations_on_gpu(mode, fold):
    """σ by division, by ex2, the polynomial and a Newton step, and with the bias folded into the scores (q rounded
    after scaling): all within the bf16 bound at T = 8192, forward and backward (the benchmark times them against
    each other)."""
    case = Case(T=8192, d=64, dv=64, dtype=torch.bfloat16)
    x = make_inputs(case, "sigmoid", seed=3, device="cuda")
    q, k, v = (x[n].detach() for n in ("q", "k", "v"))
    bias, scale = x["param"], x["scale"]
    out = sigmoid_launch.forward(q, k, v, bias, scale, True, mode=mode, fold_bias=fold)
    leaves = [t.double().requires_grad_() for t in (q, k, v, bias)]
    ref = naive_map("sigmoid", leaves[0], leaves[1], leaves[3], scale) @ leaves[2]
    assert rel_err(out, ref) < 1e-2
    do = torch.randn_like(out)
    want = torch.autograd.grad((ref * do.double()).sum(), leaves)
    got = sigmoid_launch.backward(do, q, k, v, bias, scale, True, True, False, mode=mode)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-2


GLUON_CASES = {
    "bf16_T8192_projection": Case(T=8192, d=64, dv=64, H=4, Hkv=4, dtype=torch.bfloat16, layout="projection"),
    "fp16_T3001_dv128": Case(T=3001, d=64, dv=128, H=3, Hkv=3, B=2, dtype=torch.float16, layout="projection"),
    "bf16_Tq77_Tk5000_dv32": Case(T=5000, Tq=77, d=64, dv=32, dtype=torch.bfloat16, layout="projection"),
    "bf16_T1500_noncausal": Case(T=1500, d=64, dv=64, causal=False, dtype=torch.bfloat16, layout="projection"),
    "bf16_T200_Tq130_noncausal": Case(T=200, Tq=130, d=64, dv=16, causal=False, dtype=torch.bfloat16,
                                      layout="projection"),
}


@pytest.mark.parametrize("tile", [(64, 2), (32, 2), (64, 3)])
@pytest.mark.parametrize("name", list(GLUON_CASES))
@pytest.mark.parametrize("op", OPS)
def test_gluon_backward_on_gpu(op, name, tile, monkeypatch):
    """The Gluon backward (Hopper) at each of its tiles against float64 on odd lengths, Tq ≠ Tk, v of 16 to 128, with
    and without causality, dO in a NaN-guarded buffer with 16-byte strides; the dispatcher must take it for these
    inputs (else the Triton kernels would be tested). L and Δ reach the normalised modes both ways: copied by the
    loader at T = 8192 (Tq a multiple of the tile), loaded by the warpgroups in the other cases."""
    import sink_free_float64
    import threshold_float64

    from kernels.score_ops import gluon as score_gluon

    monkeypatch.setattr(sink_free_float64, "guarded",
                        lambda data, guard=3: threshold_float64.aligned_guarded(data.shape, data, guard))
    case = GLUON_CASES[name]
    seed = zlib.crc32((op + name).encode()) % 2**31
    inputs = make_inputs(case, op, seed, device="cuda")
    q, k, v = (inputs[n] for n in ("q", "k", "v"))
    if not score_gluon.gluon_backward_fits(q.new_empty(*q.shape[:3], v.shape[-1]), q, k, v):
        pytest.skip("not a Hopper GPU with Gluon")
    monkeypatch.setattr(score_gluon, "default_tile", lambda head_dv: tile)
    monkeypatch.setattr(normalized_launch, "SOFTPICK_GLUON", True)  # the default, set here whatever it becomes
    taken = []
    real = score_gluon.run
    monkeypatch.setattr(score_gluon, "run", lambda part, kernel, grid, args, kw, target:
                        taken.append((part, kw["BM"], kw["STAGES"], kw["ROWS_COPIED"]))
                        or real(part, kernel, grid, args, kw, target))
    errors = run_and_compare(ENTRY[op], op, case, inputs, seed)
    print(op, name, tile, weight_shares(op, case, inputs),
          {k: f"{v:.2e}" for k, v in errors.items() if k != "got"})
    copied = op != "sigmoid" and name == "bf16_T8192_projection"  # the docstring's two ways, both taken
    assert taken == [("gluon_bwd", *tile, copied)] and not score_gluon._failure
    assert not within(errors, case.dtype), {k: v for k, v in errors.items() if k != "got"}


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("name", list(GLUON_CASES))
@pytest.mark.parametrize("op", OPS)
def test_gluon_forward_on_gpu(op, name, stages, monkeypatch):
    """The one-view ops' Gluon forward (Hopper, asked for) at two ring depths against float64 on the Gluon cases
    (odd lengths, Tq ≠ Tk, v of 16 to 128, with and without causality): output and every gradient (the backward
    reads the forward's L in the normalised modes); the dispatcher must take it (else the Triton forward would be
    tested)."""
    import sink_free_float64
    import threshold_float64

    from kernels.score_ops import gluon as score_gluon, gluon_forward as score_gluon_forward

    monkeypatch.setattr(sink_free_float64, "guarded",
                        lambda data, guard=3: threshold_float64.aligned_guarded(data.shape, data, guard))
    case = GLUON_CASES[name]
    seed = zlib.crc32((op + "-forward-" + name).encode()) % 2**31
    inputs = make_inputs(case, op, seed, device="cuda")
    q, k, v = (inputs[n] for n in ("q", "k", "v"))
    if not score_gluon.gluon_forward_fits(q, k, v):
        pytest.skip("not a Hopper GPU with Gluon")
    monkeypatch.setattr(score_gluon, "GLUON_FORWARD", dict.fromkeys(score_gluon.MODES, True))
    monkeypatch.setattr(score_gluon_forward, "STAGES", stages)
    taken = []
    real = score_gluon.run
    monkeypatch.setattr(score_gluon, "run", lambda part, *args: taken.append(part) or real(part, *args))
    errors = run_and_compare(ENTRY[op], op, case, inputs, seed)
    print(op, name, stages, {k: f"{v:.2e}" for k, v in errors.items() if k != "got"})
    assert taken[0] == "gluon_fwd" and not score_gluon._forward_failure
    assert not within(errors, case.dtype), {k: v for k, v in errors.items() if k != "got"}


@pytest.mark.parametrize("gluon", [False, True])
def test_softpick_gradient_of_a_tiny_positive_score_on_gpu(gluon, monkeypatch):
    """A score of 1e-7 beside one of 5 in its row (bf16 inputs, fp32 scores): e^{x−m} − e^{−m} rounds to 0, yet the
    weight's gradient is that of a positive score; key 2 is seen by that row alone, so its dK comes from it alone.
    On the Triton backward and on the Gluon one (asked for; Hopper only)."""
    from kernels.score_ops import gluon as score_gluon

    d = 64
    q = torch.zeros(1, 1, 3, d)
    k = torch.zeros(1, 1, 3, d)
    q[0, 0, :, 0] = torch.tensor([-1.0, 1.0, 1.0])
    k[0, 0, :, 0] = torch.tensor([5.0, -2.0, 1e-7]) * d ** 0.5
    k[0, 0, :, 1] = 0.25
    v = torch.randn(1, 1, 3, d, generator=torch.Generator().manual_seed(3))
    do = torch.randn(1, 1, 3, d, generator=torch.Generator().manual_seed(4))
    leaves = [t.to("cuda", torch.bfloat16).requires_grad_() for t in (q, k, v)]
    if gluon and not score_gluon.gluon_backward_fits(do.to("cuda", torch.bfloat16), *leaves):
        pytest.skip("not a Hopper GPU with Gluon")
    monkeypatch.setattr(normalized_launch, "SOFTPICK_GLUON", gluon)
    taken = []
    real = score_gluon.run
    monkeypatch.setattr(score_gluon, "run", lambda *a: taken.append(a[0]) or real(*a))
    out = softpick_attention_triton(*leaves)
    out.backward(do.to("cuda", torch.bfloat16))
    ref = [t.to(torch.bfloat16).double().requires_grad_() for t in (q, k, v)]
    x = ref[0] @ ref[1].transpose(-1, -2) / d ** 0.5
    u = (torch.exp(x) - 1) * torch.ones(3, 3, dtype=torch.bool).tril()
    (((torch.relu(u) / (u.abs().sum(-1, keepdim=True) + 1e-6)) @ ref[2]) * do.double()).sum().backward()
    assert taken == (["gluon_bwd"] if gluon else [])
    want = ref[1].grad[0, 0, 2]
    assert float(want.abs().max()) > 1e-4
    assert rel_err(leaves[1].grad[0, 0, 2].cpu(), want) < 1e-2


@pytest.mark.parametrize("name", ["sigmoid", "softpick", "sink_softmax"])
def test_model_variant_runs_on_the_kernels_and_compiles(name):
    """The registered variant on CUDA in bf16 autocast takes the kernels, matches its float64 self on the CPU
    reference path, and torch.compile (inductor, fullgraph) gives the same output."""
    from model.attention import build_attention

    torch.manual_seed(0)
    model_cfg = OmegaConf.create(dict(n_embd=256, n_head=4, rope_base=10000.0, rope_ntk_factor=1.0, seq_len=512))
    attn = build_attention(model_cfg, OmegaConf.create({"name": name}), 0)
    x = torch.randn(2, 512, 256)
    want = attn.double()(x.double(), torch.arange(512))
    attn = attn.float().cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = attn(x.cuda(), torch.arange(512, device="cuda"))
        compiled = torch.compile(attn, fullgraph=True)(x.cuda(), torch.arange(512, device="cuda"))
    assert rel_err(got.float().cpu(), want) < 2e-2
    assert rel_err(compiled.float().cpu(), want) < 2e-2
