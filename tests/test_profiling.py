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
