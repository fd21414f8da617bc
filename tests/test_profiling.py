"""trainer.profile_steps: the training loop profiles the steps asked for and writes profile.md, the step's time by
kind; kernels and operators are sorted into kinds by name."""
import re

import pytest

from training.profiling import kind_of


@pytest.mark.parametrize("name,kind", [
    ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor<float>>", "optimizer and clipping"),
    ("normalized_dkdv_kernel", "attention"), ("paired_forward_kernel", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop", "attention"),
    ("triton_red_fused__log_softmax_nll_loss_3", "loss"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_TNT", "matrix products"), ("triton_tem_fused_mm_4", "matrix products"),
    ("triton_poi_fused_add_mul_rsqrt_2", "fused elementwise and norms (compiled)"),
    ("Memcpy HtoD (Pageable -> Device)", "copies and fills"), ("aten::copy_", "copies and fills"),
    ("triton_poi_fused__to_copy_add_arange_cos_div_mul_neg_pow_sin_slice_5", "fused elementwise and norms (compiled)"),
    ("triton_per_fused__fused_rms_norm_backward__to_copy_add_view_10", "fused elementwise and norms (compiled)"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "communication"),
    ("aten::mm", "matrix products"), ("aten::threshold_backward", "elementwise and norms (eager)"),
    ("some_new_library_kernel", "other"),
    # compiled kernels around an attention op are named after it but do elementwise work (TDA's per-head norm, a copy)
    ("triton_per_fused__fused_rms_norm__fused_rms_norm_backward__to_copy_threshold_attention_bwd_7",
     "fused elementwise and norms (compiled)"),
    ("triton_poi_fused__unsafe_view_slice_threshold_attention_fwd_transpose_view_10",
     "fused elementwise and norms (compiled)"),
    ("triton_red_fused_sdpa_sum_3", "fused elementwise and norms (compiled)"),
])
def test_kernels_and_operators_are_sorted_into_kinds_by_name(name, kind):
    assert kind_of(name) == kind


def test_profiled_steps_write_profile_md(train_run):
    """On the CPU: steps 3–4 profiled (two skipped), the table's kinds hold the operators' time (matrix products
    among them) and their shares of the step add up to at most the whole. (A resumed attempt does not inherit the
    setting: tests/test_train.py's plain resume.)"""
    run = train_run("name=profiled", "trainer.max_steps=5", "trainer.eval_every=5", "trainer.checkpoint_every=5",
                    "trainer.profile_steps=2", "trainer.profile_skip=2")
    text = (run / "profile.md").read_text()
    assert text.startswith("# Training step profile: steps 3–4")
    assert "2 steps profiled" in text
    rows = dict(re.findall(r"^\| ([a-z][^|]*?) \| [0-9.]+ \| ([0-9.]+)% \|$", text, re.MULTILINE))
    assert "matrix products" in rows and float(rows["matrix products"]) > 0
    assert 0 < sum(float(v) for v in rows.values()) <= 100.5


def test_bad_profile_settings_are_named(train_run):
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.profile_steps"):
        train_run("name=bad", "trainer.profile_steps=-1")


def _kernel(name, start, end, device=True):
    from types import SimpleNamespace

    import torch

    kind = torch.autograd.DeviceType.CUDA if device else torch.autograd.DeviceType.CPU
    return SimpleNamespace(name=name, device_type=kind, time_range=SimpleNamespace(start=start, end=end))


# two streams: b overlaps a and ends last before the first gap; c waits 10 µs, then 40 µs; d follows a 2 µs gap,
# which is the launch pipeline's, not a wait; e runs inside d and does not end the stretch d began
EVENTS = [_kernel("c", 100, 110), _kernel("a", 0, 10), _kernel("b", 5, 30), _kernel("cpu_op", 30, 100, device=False),
          _kernel("c", 40, 50), _kernel("d", 52, 60), _kernel("e", 53, 55)]


def test_idle_gaps_are_the_stretches_with_no_kernel_on_any_stream():
    from training.profiling import gpu_intervals, idle_gaps

    intervals = gpu_intervals(EVENTS)
    assert [name for _, _, name in intervals] == ["a", "b", "c", "d", "e", "c"]
    assert idle_gaps(intervals) == [(10, "b", "c"), (40, "d", "c")]
    assert idle_gaps(intervals, min_us=1.0) == [(10, "b", "c"), (2, "c", "d"), (40, "d", "c")]
    assert idle_gaps([]) == []


def test_gap_table_sums_the_waits_by_the_kernel_waited_for():
    from training.profiling import gap_table, gpu_intervals

    text = gap_table(gpu_intervals(EVENTS), steps=2)
    assert text.startswith("1.0 stretches per step of at least 5 µs")
    assert "0.025 ms per step in all" in text
    rows = re.findall(r"^\| `c` \| other \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", text, re.MULTILINE)
    assert rows == [("1.0", "0.025", "40.0")]
    longest = re.findall(r"^\| ([0-9.]+) \| `(\w)` \| `(\w)` \|$", text, re.MULTILINE)
    assert longest == [("40.0", "d", "c"), ("10.0", "b", "c")]
    assert gap_table([], steps=3).startswith("0.0 stretches per step")
