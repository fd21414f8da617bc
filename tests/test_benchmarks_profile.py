"""benchmarks.profile without a GPU: the kernel table's aggregation and formatting on fake profiler events, the
choice of rows and options, and the forward+backward step it profiles."""

from types import SimpleNamespace

import pytest
import torch

from benchmarks.profile import format_kernel_table, kernel_table, main, sink_free_methods
from benchmarks.timing import fwd_bwd_step

CUDA, CPU = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU


def _event(name, us, device=CUDA):
    return SimpleNamespace(name=name, device_type=device, device_time_total=us)


def test_kernel_table_sums_per_kernel_per_call_and_ignores_host_events():
    events = [_event("dkdv", 400.0), _event("fill", 3.0), _event("fill", 5.0), _event("dkdv", 420.0),
              _event("aten::zeros", 999.0, CPU), _event("fwd", 150.0), _event("fwd", 170.0)]
    rows = kernel_table(events, calls=2)
    assert rows == [("dkdv", 410.0, 1.0), ("fwd", 160.0, 1.0), ("fill", 4.0, 1.0)]


def test_format_kernel_table_shares_add_up_and_long_names_are_cut():
    rows = [("k" * 100, 75.0, 1.0), ("small", 25.0, 2.0)]
    text = format_kernel_table("tda", rows, width=20)
    assert "100 µs of GPU kernels" in text
    assert "| 75.0 | 1 | 75.0% |" in text and "| `small` | 25.0 | 2 | 25.0% |" in text
    assert "k" * 20 not in text and "k" * 19 + "…" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_it_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        main(["--seq", "128"])


def test_sink_free_rows_are_chosen_by_name_and_an_unknown_name_is_refused_with_the_known_ones():
    rows = sink_free_methods(1, 16, 2, 16, torch.float32, ["sigmoid", "sdpa-cudnn"], device="cpu")
    assert [name for name, _ in rows] == ["sdpa-cudnn", "sigmoid"]  # the table's order, not the request's
    assert len(sink_free_methods(1, 16, 2, 16, torch.float32, device="cpu")) >= 7
    with pytest.raises(SystemExit, match=r"unknown \['sigmoid, Glu'\].*'softpick'"):
        sink_free_methods(1, 16, 2, 16, torch.float32, ["sigmoid, Glu"], device="cpu")


@pytest.mark.parametrize("argv, message", [(["--methods", "sigmoid"], "add --sink-free"),
                                           (["--sink-free", "--host"], "does not combine")])
def test_options_that_do_not_go_together_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_one_forward_backward_replaces_the_gradients():
    x = torch.randn(3, requires_grad=True)
    call = fwd_bwd_step(lambda: x * 2, [x])
    call()
    first = x.grad.clone()
    call()
    assert torch.equal(x.grad, first)  # accumulated, it would be twice the first
