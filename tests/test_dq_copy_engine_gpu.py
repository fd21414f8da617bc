"""The fused Gluon backward with dq' added into dQ's fp32 buffers by the copy engine (gluon_backward.DQ_ADD = 3,
tma_reduce_add) instead of the warps' vector atomics: the fused-backward tests of test_threshold_gpu.py (q/k 64 and 128,
awkward shapes, the lists of occupied tiles, a corrupted record) run again in this mode. Skipped without CUDA."""

import pytest

from kernels.threshold import gluon_backward
from test_threshold_gpu import (test_a_corrupted_record_gives_wrong_gradients_on_gpu,  # noqa: F401
                                test_fused_gluon_backward_at_q_k_128_on_gpu, test_fused_gluon_backward_on_gpu,
                                test_fused_gluon_backward_skips_on_gpu, triton_backward)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def dq_by_copy_engine(monkeypatch):
    monkeypatch.setattr(gluon_backward, "DQ_ADD", 3)
