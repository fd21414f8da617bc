"""benchmarks.paired_entry without a GPU: its comparison end to end on the interpreter (the timers replaced by ones
that still make every call), the output check that precedes the timing, the row, and the message without a GPU."""
import pytest
import torch

from benchmarks import paired_entry, timing
from kernels.threshold import autograd


@pytest.fixture
def cpu_timers(monkeypatch):
    """time_ms and host_us calling the step once and returning fixed figures; cuDNN replaced by SDPA's CPU path."""
    from torch.nn.functional import scaled_dot_product_attention

    calls = []
    monkeypatch.setattr(timing, "time_ms", lambda fn, grads, rep_ms: calls.append("ms") or fn() or 2.0)
    monkeypatch.setattr(timing, "host_us", lambda fn, calls_=20: calls.append("us") or fn() or 300.0)
    monkeypatch.setattr(timing, "causal_sdpa", lambda q, k, v, backend: scaled_dot_product_attention(
        q, k, v, is_causal=True))
    return calls


@pytest.mark.slow
def test_compare_times_the_three_calls_and_formats_a_row(cpu_timers):
    result = paired_entry.compare(1, 40, dense=True, rep_ms=1, device="cpu", warmups=1)
    assert set(result) == {"cudnn", "views", "paired"} and cpu_timers == ["ms", "us"] * 3
    row = paired_entry.format_row(40, 1, True, result)
    assert row == "| 40 | 1 | dense | 2.000 | 2.000 | 2.000 | 1.000 | 300 / 300 / 300 |"


def test_a_paired_output_that_differs_from_the_views_is_refused(cpu_timers, monkeypatch):
    real = autograd.paired_threshold_attention_triton
    monkeypatch.setattr(autograd, "paired_threshold_attention_triton", lambda *a, **k: real(*a, **k) * 1.5)
    with pytest.raises(AssertionError, match="T = 40: the paired entry's output differs"):
        paired_entry.compare(1, 40, dense=False, rep_ms=1, device="cpu")
    assert cpu_timers == []  # refused before anything is timed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_it_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        paired_entry.main(["--seq", "128"])
