"""benchmarks.profile without a GPU: the kernel table's aggregation and formatting on fake profiler events, and the
host profile's cProfile table on a plain function."""

from types import SimpleNamespace

import pytest
import torch

from benchmarks.profile import cprofile_table, format_kernel_table, kernel_table, main, sink_free_methods, step

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


def _issue_calls():
    return sum(_one_launch(i) for i in range(50))


def _one_launch(i):
    return i * i


def test_cprofile_table_lists_the_functions_called_with_their_call_counts():
    text = cprofile_table(_issue_calls, calls=3, limit=10)
    own, cumulative = text.split("Ordered by: cumulative time")
    assert "Ordered by: internal time" in own
    for part in (own, cumulative):  # 3 calls of the function, 150 of its callee, in both orderings
        assert "_issue_calls" in part and "_one_launch" in part
        assert any(line.split()[:1] == ["150"] and "_one_launch" in line for line in part.splitlines())
        assert any(line.split()[:1] == ["3"] and "_issue_calls" in line for line in part.splitlines())


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
    call = step(lambda: x * 2, [x])
    call()
    first = x.grad.clone()
    call()
    assert torch.equal(x.grad, first)  # accumulated, it would be twice the first
