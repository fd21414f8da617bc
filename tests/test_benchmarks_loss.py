"""benchmarks.loss without a GPU: every row runs (the kernel under Triton's interpreter, torch.compile and the timings
replaced by stand-ins), the kernel's row and only it reaches kernels/cross_entropy.py, every row's difference from
float64 is small, the table has a line a row, and the command refuses bad arguments and a machine without a GPU."""
import pytest
import torch

import benchmarks.loss as bench
from benchmarks import timing
from model import loss as model_loss


@pytest.fixture
def untimed(monkeypatch):
    """One call per timing, torch.compile as the identity, the loss kernel taking CPU tensors (interpreter)."""
    monkeypatch.setattr(timing, "time_ms", lambda fn, grads, rep_ms: [fn()] and 1.0)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(model_loss, "fused_applies", lambda hidden: True)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_every_row_runs_and_matches_float64(untimed, monkeypatch, dtype, tol):
    import kernels.cross_entropy as ce

    real = ce.cross_entropy_rows
    kernel_calls = []
    monkeypatch.setattr(ce, "cross_entropy_rows", lambda *a: kernel_calls.append(model_loss.FUSED) or real(*a))
    before = model_loss.FUSED
    rows = bench.bench(7, 300, 16, dtype, rep_ms=1, device="cpu")
    assert model_loss.FUSED == before
    assert [r["method"] for r in rows] == ["kernel", "compiled", "eager", "head product"]
    assert kernel_calls and all(kernel_calls)   # the kernel's row only (the others run with FUSED off)
    for r in rows[:3]:
        assert r["loss_err"] <= tol and r["grad_err"] <= tol / 100, r
    assert rows[3]["loss_err"] is None and rows[3]["grad_err"] is None
    table = bench.format_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and "| 7 | 300 | kernel |" in table[2] and "—" in table[-1]


def test_reference_pads_and_scales():
    """The float64 reference leaves the padded classes out and divides by n."""
    x = bench.inputs(3, 70, 8, torch.float32, "cpu")
    assert x["weight"].shape[0] % model_loss.VOCAB_ALIGN == 0 and x["weight"].shape[0] > 70
    loss, grad = bench.reference(x)
    assert torch.all(grad[:, 70:] == 0)
    assert torch.allclose(grad[:, :70].sum(-1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    logits = torch.nn.functional.linear(x["hidden"], x["weight"][:70]).double()
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, x["targets"], reduction="sum"))


def test_main_refuses_bad_arguments_and_no_gpu(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--tokens", "0"])
    assert "--tokens: must be at least 1, got 0" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main([])


def test_main_prints_the_run_header_and_a_table(monkeypatch, capsys):
    """The shared header (benchmarks.timing.run_header: date, GPU, versions, then the run's details) and one table
    line a row, with the rows bench returns for each token count asked for."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "A GPU")
    asked = []
    monkeypatch.setattr(bench, "bench", lambda tokens, vocab, d, dtype, rep_ms: asked.append((tokens, vocab, d)) or [
        dict(tokens=tokens, vocab=vocab, method="kernel", ms=0.5, loss_err=1e-7, grad_err=2e-9)])
    bench.main(["--tokens", "16", "32", "--vocab", "100", "--d", "8"])
    header, *table = capsys.readouterr().out.splitlines()
    assert header.startswith("# ") and " · A GPU · torch " in header and " · triton " in header
    assert header.endswith(" · bf16 · d 8")
    assert asked == [(16, 100, 8), (32, 100, 8)] and len(table) == 2 + 2
    assert "| 32 | 100 | kernel | 0.500 |" in table[-1]
