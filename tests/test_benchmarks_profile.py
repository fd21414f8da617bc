"""The kernel profile's table (kernels.profile): aggregation and formatting, on fake profiler events."""

from types import SimpleNamespace

import pytest
import torch

from benchmarks.profile import format_kernel_table, kernel_table, main

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
