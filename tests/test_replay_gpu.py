"""kernels.replay on a GPU: the paired entry replayed by the C++ engine gives the Python path's output and gradients
(dQ, added in an order that changes from run to run, within its rounding), on the Gluon and the Triton kernels,
and takes an output gradient of another layout by copying it into the recorded one."""

import pytest
import torch

from threshold_float64 import Case
from test_threshold_paired import _paired_inputs

from kernels import replay
from kernels.threshold.autograd import paired_threshold_attention_triton

CASES = {
    "d64_bf16_T1000": Case(T=1000, d=64, dv=128, H=6, lam=(0.5, 0.1, 0.9), dtype=torch.bfloat16),
    "d128_bf16_T777_gqa": Case(T=777, d=128, dv=256, H=4, Hkv=2, lam=(0.3, 0.9), dtype=torch.bfloat16),
    "d64_fp32_Tq300_Tk900": Case(T=900, Tq=300, d=64, dv=128, H=2, dtype=torch.float32),
}


def _call(x: dict, do: torch.Tensor, skip_empty=None) -> tuple:
    leaves = [x["q"], x["k"], x["v"], x["lam"], x["beta"]]
    out = paired_threshold_attention_triton(x["q"], x["k"], x["v"], lam=x["lam"], beta=x["beta"],
                                            skip_empty=skip_empty)
    return (out, *torch.autograd.grad(out, leaves, do))


def _same(got: tuple, want: tuple, dq_exact: bool = False) -> None:
    for name, g, w in zip(("out", "q", "k", "v", "lam", "beta"), got, want):
        assert g.shape == w.shape and g.stride() == w.stride(), name
        if name == "q" and not dq_exact:
            assert (g.float() - w.float()).abs().max() <= 1e-2 * w.float().abs().max(), name
        else:
            assert torch.equal(g, w), name


@pytest.mark.gpu
@pytest.mark.parametrize("skip_empty", [None, False])
@pytest.mark.parametrize("name", list(CASES))
def test_replayed_calls_give_the_python_paths_results(name, skip_empty, monkeypatch):
    case = CASES[name]
    x = _paired_inputs(case, seed=sum(map(ord, name)), beta_grad=True)
    x = {n: t.detach().cuda().requires_grad_(t.requires_grad) for n, t in x.items()}
    monkeypatch.setattr(replay, "ENABLED", False)
    out = paired_threshold_attention_triton(x["q"], x["k"], x["v"], lam=x["lam"], beta=x["beta"])
    do = torch.randn_like(out)
    want = _call(x, do, skip_empty)
    monkeypatch.setattr(replay, "ENABLED", True)
    replay.clear()
    for _ in range(2):  # seen, then recorded
        _same(_call(x, do, skip_empty), want)
    assert list(replay.status().values()) == ["replayed"], replay.status()
    for _ in range(2):
        _same(_call(x, do, skip_empty), want)
    # the same kind of call on other tensors (other addresses) and another output gradient
    y = {n: (t.detach() * 1.5).requires_grad_(t.requires_grad) for n, t in x.items()}
    do2 = torch.randn_like(do)
    monkeypatch.setattr(replay, "ENABLED", False)
    want2 = _call(y, do2, skip_empty)
    monkeypatch.setattr(replay, "ENABLED", True)
    _same(_call(y, do2, skip_empty), want2)
    # an output gradient in another layout is copied into the recorded one
    do3 = torch.randn(do.shape, device="cuda", dtype=do.dtype)
    assert do3.stride() != do.stride()  # (the output is laid out like q, in the projection layout)
    monkeypatch.setattr(replay, "ENABLED", False)
    want3 = _call(y, do3, skip_empty)
    monkeypatch.setattr(replay, "ENABLED", True)
    _same(_call(y, do3, skip_empty), want3)
    assert list(replay.status().values()) == ["replayed"], replay.status()
    replay.clear()


@pytest.mark.gpu
def test_a_deterministic_replay_is_bit_identical(monkeypatch):
    case = CASES["d64_bf16_T1000"]
    x = _paired_inputs(case, seed=5, beta_grad=True)
    x = {n: t.detach().cuda().requires_grad_(t.requires_grad) for n, t in x.items()}
    torch.use_deterministic_algorithms(True)
    try:
        monkeypatch.setattr(replay, "ENABLED", False)
        out = paired_threshold_attention_triton(x["q"], x["k"], x["v"], lam=x["lam"], beta=x["beta"])
        do = torch.randn_like(out)
        want = _call(x, do)
        monkeypatch.setattr(replay, "ENABLED", True)
        replay.clear()
        for _ in range(4):
            _same(_call(x, do), want, dq_exact=True)
        assert list(replay.status().values()) == ["replayed"], replay.status()
    finally:
        torch.use_deterministic_algorithms(False)
        replay.clear()


@pytest.mark.gpu
def test_a_replayed_call_captured_in_a_cuda_graph_gives_the_python_paths_results(monkeypatch):
    """The engine's allocations, launches (on the current stream) and autograd backward under torch.cuda.graph: the
    graph gives the Python path's results, and again after new values are copied into its inputs."""
    case = CASES["d64_bf16_T1000"]
    x = _paired_inputs(case, seed=9, beta_grad=True)
    x = {n: t.detach().cuda().requires_grad_(t.requires_grad) for n, t in x.items()}
    monkeypatch.setattr(replay, "ENABLED", False)
    out = paired_threshold_attention_triton(x["q"], x["k"], x["v"], lam=x["lam"], beta=x["beta"])
    do = torch.randn_like(out)
    want = _call(x, do)
    monkeypatch.setattr(replay, "ENABLED", True)
    replay.clear()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # seen, recorded, replayed: the graph captures a replay
                _call(x, do)
        torch.cuda.current_stream().wait_stream(side)
        assert list(replay.status().values()) == ["replayed"], replay.status()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = _call(x, do)
        graph.replay()
        torch.cuda.synchronize()
        _same(got, want)
        with torch.no_grad():
            for t in x.values():
                t.mul_(1.25)
        graph.replay()
        torch.cuda.synchronize()
        monkeypatch.setattr(replay, "ENABLED", False)
        _same(got, _call(x, do))
    finally:
        replay.clear()
