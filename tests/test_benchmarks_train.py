"""benchmarks.train's table without running training: scaling efficiency against one GPU of the same attention and
strategy, the ratio to softmax at the same GPU count, and failed points."""
from benchmarks.train import table


def _point(attention, gpus, tokens_per_s, strategy="ddp", **extra):
    return dict(attention=attention, gpus=gpus, strategy=strategy, global_batch=f"{16 * gpus} x 1024",
                tokens_per_s=tokens_per_s, **extra)


def test_scaling_efficiency_and_ratio_to_softmax():
    points = [_point("softmax", 1, 200_000.0, mfu=0.15, peak_memory_gb=22.5), _point("tda", 1, 170_000.0),
              _point("softmax", 2, 380_000.0), _point("tda", 2, 340_000.0)]
    lines = table(points).splitlines()
    assert len(lines) == 2 + len(points)
    assert lines[2] == "| softmax | ddp | 1 | 16 x 1024 | 200,000 | 15.0% | 22.5 | 100.0% | 1.000 |"
    assert lines[3].endswith("| 170,000 |  |  | 100.0% | 0.850 |")
    assert lines[4].endswith("| 380,000 |  |  | 95.0% | 1.000 |")
    assert lines[5].endswith("| 340,000 |  |  | 100.0% | 0.895 |")


def test_a_failed_point_is_a_row_of_its_own_and_no_reference():
    points = [dict(attention="softmax", gpus=1, strategy="ddp", error=1), _point("tda", 1, 170_000.0)]
    lines = table(points).splitlines()
    assert lines[2] == "| softmax | ddp | 1 | failed (exit 1) | | | | | |"
    assert lines[3].endswith("| 170,000 |  |  | 100.0% |  |")
