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


def _copy(x: dict) -> dict:
    return {n: t.detach().clone().requires_grad_(t.requires_grad) for n, t in x.items()}


@pytest.mark.gpu
def test_a_replayed_call_captured_in_a_cuda_graph_gives_the_python_paths_results(monkeypatch):
    """The engine's allocations, launches (on the current stream) and autograd backward under torch.cuda.graph: the
    graph gives the Python path's results, and again after new values are copied into its inputs. (Nothing touches the
    captured inputs on the default stream, the references use copies: a leaf's gradient node keeps the stream it was
    made on while a graph through it lives, and one made on the default stream cannot be captured; torch.cuda.graph's
    own rule, warm-up on a side stream.)"""
    case = CASES["d64_bf16_T1000"]
    x = _paired_inputs(case, seed=9, beta_grad=True)
    x = {n: t.detach().cuda().requires_grad_(t.requires_grad) for n, t in x.items()}
    monkeypatch.setattr(replay, "ENABLED", False)
    ref = _copy(x)
    do = torch.randn_like(paired_threshold_attention_triton(ref["q"], ref["k"], ref["v"], lam=ref["lam"],
                                                            beta=ref["beta"]))
    want = _call(ref, do)
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
        _same(got, _call(_copy(x), do))
    finally:
        replay.clear()


@pytest.mark.gpu
def test_a_tda_models_gradients_are_the_same_with_replay(monkeypatch):
    """A TDA model's training step (bf16 autocast, every layer's paired call, λ from its parameters): the loss and
    every parameter's gradient with replay on are the Python path's bits, on the calls that record and on those
    that replay (deterministic mode, so the Python path is bit-identical from run to run)."""
    from conftest import compose_train
    from omegaconf import open_dict

    from model.checkpoint import build_model

    cfg = compose_train(["attention=tda", "model.n_layer=3", "model.n_embd=384", "model.n_head=6",
                         "model.seq_len=300"])
    with open_dict(cfg):
        cfg.model.vocab_size = 257
    torch.manual_seed(0)
    model = build_model(cfg).cuda()
    idx, tgt = torch.randint(0, 257, (2, 2, 300), device="cuda")

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16):
            _, loss = model(idx, tgt)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    torch.use_deterministic_algorithms(True, warn_only=True)  # (cuBLAS would want CUBLAS_WORKSPACE_CONFIG set)
    try:
        monkeypatch.setattr(replay, "ENABLED", False)
        want = step()
        monkeypatch.setattr(replay, "ENABLED", True)
        replay.clear()
        for _ in range(3):  # the first layer's call is seen, the second's recorded; then every call replays
            loss, grads = step()
            assert torch.equal(loss, want[0])
            assert all(torch.equal(g, w) for g, w in zip(grads, want[1]))
        assert list(replay.status().values()) == ["replayed"], replay.status()
    finally:
        torch.use_deterministic_algorithms(False)
        replay.clear()
