"""benchmarks.replay without a GPU: it says it needs one and refuses a bad --rounds; the host readings it takes in
interleaved rounds (benchmarks.timing.interleaved) and their ratios paired by round (timing.ratio_summary)."""

import pytest
import torch

from benchmarks import replay, timing


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_replay_benchmark_needs_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        replay.main(["--seq", "4096"])


def test_rounds_below_one_are_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit):
        replay.main(["--rounds", "0"])
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err


def test_each_round_reads_every_step_in_turn():
    """Readings come round by round (a, b, a, b, ...), not all of a then all of b: a machine that drifts during the
    run (here, each reading larger than the one before) reaches both names alike."""
    clock = iter(range(1, 100))
    order = []

    def step(name):
        def read():
            order.append(name)
            return float(next(clock))
        return read

    got = timing.interleaved({"cudnn": step("cudnn"), "replay": step("replay")}, rounds=3)
    assert order == ["cudnn", "replay"] * 3
    assert got == {"cudnn": [1.0, 3.0, 5.0], "replay": [2.0, 4.0, 6.0]}
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        timing.interleaved({"cudnn": step("cudnn")}, rounds=0)


def test_the_ratio_pairs_readings_of_the_same_round():
    """Rounds whose ratios are 2, 1 and 3 give median 2, least 1, largest 3; unpaired readings are refused."""
    num, den = [200.0, 300.0, 150.0], [100.0, 300.0, 50.0]
    assert timing.ratio_summary(num, den) == (2.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="paired readings"):
        timing.ratio_summary([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="paired readings"):
        timing.ratio_summary([], [])


def test_parts_reads_both_threads_in_rounds_and_restores_multithreading(monkeypatch):
    """--parts' readings of cuDNN and the replayed call on autograd's worker thread and on the calling thread come in
    turn within each round, the calling-thread ones with multithreading off, and it is on again afterwards."""
    seen = []

    def fake_host_us(step, calls):
        seen.append((step(), torch.autograd.is_multithreading_enabled()))
        return float(len(seen))

    monkeypatch.setattr(timing, "host_us", fake_host_us)
    got = replay.thread_rounds(lambda: "cudnn", lambda: "tda", rounds=2)
    assert seen == [("cudnn", True), ("tda", True), ("cudnn", False), ("tda", False)] * 2
    assert got == {("cuDNN", "autograd's worker"): [1.0, 5.0], ("replayed", "autograd's worker"): [2.0, 6.0],
                   ("cuDNN", "the calling thread"): [3.0, 7.0], ("replayed", "the calling thread"): [4.0, 8.0]}
    assert torch.autograd.is_multithreading_enabled()
