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


def test_thread_timeline_lays_out_a_cpu_call_forward_then_backward():
    from benchmarks.profile import thread_timeline

    x, w = torch.randn(32, 48, requires_grad=True), torch.randn(48, 16, requires_grad=True)
    text = thread_timeline(fwd_bwd_step(lambda: (x @ w).relu(), [x, w]), calls=4, pick=2, min_us=0.0)
    rows = [line[2:-2].split(" | ") for line in text.splitlines() if line.startswith("| ")][1:]
    total = float(text.splitlines()[0].split(": ")[1].split(" ")[0])
    starts = [float(r[0]) for r in rows]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= total
    events = [r[3] for r in rows]
    assert "aten::matmul" in events and "aten::relu" in events  # the forward, outermost
    names = " ".join(events)
    assert names.index("aten::relu") < names.index("ReluBackward0") < names.index("MmBackward0")
    assert {r[2] for r in rows} == {"calling"}  # a CPU backward runs on the calling thread
    assert "- calling: " in text and "no event of its own" in text
    with pytest.raises(ValueError, match="pick = 4 is not one of the 4 calls"):
        thread_timeline(lambda: None, calls=4, pick=4)


def _timed(name, start, end, thread, parent=None):
    return SimpleNamespace(name=name, thread=thread, cpu_parent=parent,
                           time_range=SimpleNamespace(start=start, end=end, elapsed_us=lambda: end - start))


def test_format_timeline_names_each_thread_and_sums_its_outermost_events():
    from benchmarks.profile import format_timeline

    call = _timed("call 1", 100.0, 300.0, thread=7)
    fwd = _timed("Replayed", 110.0, 150.0, 7, call)
    inner = _timed("aten::empty_strided", 112.0, 114.0, 7, fwd)
    bwd = _timed("autograd::engine::evaluate_function: ReplayedBackward", 180.0, 260.0, 9)
    deep = _timed("aten::sum", 200.0, 230.0, 9, _timed("x", 0, 0, 9, _timed("y", 0, 0, 9, bwd)))
    before = _timed("aten::mm", 20.0, 40.0, 7)  # another call's
    text = format_timeline([before, call, fwd, inner, bwd, deep], "call 1", min_us=0.0, depth=2)
    lines = text.splitlines()
    assert lines[0] == "call 1: 200 µs"
    assert lines[4:7] == ["| 10.0 | 40.0 | calling | Replayed |", "| 12.0 | 2.0 | calling | · aten::empty_strided |",
                          "| 80.0 | 80.0 | thread 2 | autograd::engine::evaluate_function: ReplayedBackward |"]
    assert "aten::sum" not in text and "aten::mm" not in text  # three levels down; before the call
    assert "- calling: 40 µs in its outermost events (the call's other 160 µs: no event of its own)" in text
    assert "- thread 2: 80 µs in its outermost events" in text
