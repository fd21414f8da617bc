"""benchmarks.replay without a GPU: it says it needs one."""

import pytest
import torch

from benchmarks import replay


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_replay_benchmark_needs_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        replay.main(["--seq", "4096"])
