"""benchmarks.sink_free without a GPU: every row and every sweep line runs (kernels under the interpreter, timings
replaced by a stand-in), the table and the targets read what the rows hold, and the module refuses to run its main
without a GPU."""
import collections

import pytest
import torch

import benchmarks.sink_free as bench
from benchmarks import timing


@pytest.fixture
def untimed(monkeypatch):
    """Timings that only call the function once (no CUDA events, no sleep kernel)."""
    calls = []

    def once(fn, grads=None, rep_ms=0):
        fn()
        calls.append(fn)
        return 1.0

    monkeypatch.setattr(timing, "time_ms", once)
    monkeypatch.setattr(timing, "host_us", lambda fn, calls=20: once(fn) * 1000)
    return calls


def test_every_row_runs_and_ratios_divide_by_cudnn_and_tra(untimed, monkeypatch, capsys):
    """On CPU, cuDNN's row is refused (and said so); every other method runs forward and forward+backward."""
    rows = bench.bench_shape(32, 32, 16, torch.float32, 1, d_model=32, device="cpu")
    methods = [r["method"] for r in rows]
    assert set(methods) >= {"tra", "sigmoid", "softpick", "sink_softmax", "sink (sdpa+key)", "ssmax (sdpa)"}
    assert all(r["x_tra"] == 1.0 for r in rows)  # the stand-in times every call 1 ms
    if "sdpa-cudnn" not in methods:
        assert "sdpa-cudnn: unavailable" in capsys.readouterr().out


def test_sweep_lines_all_run(untimed, capsys):
    bench.sweep(32, 32, 16, torch.float32, 1, d_model=32, device="cpu")
    out = capsys.readouterr().out
    assert "failed" not in out
    assert out.count("sigmoid fwd") == len(bench.SIGMOID_FWD_TILES) + 2
    assert "softpick bwd dQ kernel" in out and "sink bwd" in out
    assert "no Gluon lines" in out and "Gluon 64" not in out   # the Gluon backward does not run here


def test_sweep_gluon_lines_reach_the_gluon_backward(untimed, capsys, monkeypatch):
    """Where the Gluon backward runs, each Gluon line calls it at its tile (the launchers' path) and the lines of
    the kernel alone call each mode with the L they name (a recorder stands in for the kernel)."""
    from kernels.score_ops import gluon as score_gluon

    calls = []
    monkeypatch.setattr(score_gluon, "gluon_backward_fits", lambda *args, **kwargs: True)
    monkeypatch.setattr(score_gluon, "backward", lambda mode, *args, tile=None, lse=None, **kwargs:
                        calls.append((mode, tile, lse)) or (True, None))
    bench.sweep(32, 32, 16, torch.float32, 1, d_model=32, device="cpu")
    out = capsys.readouterr().out
    assert "failed" not in out and "no Gluon lines" not in out
    for mode in ("sigmoid", "softpick"):
        assert [c[1] for c in calls if c[0] == mode and c[1] is not None] == bench.GLUON_TILES
    alone = [(c[0], c[2] is None) for c in calls if c[1] is None]
    assert alone == [("sink", False), ("softpick", False), ("softpick", False), ("sink", False), ("sink", False),
                     ("sigmoid", True)]


def test_table_and_targets():
    row = dict(T=8192, B=2, method="sigmoid", H=12, d=64, fwd=0.5, fwd_bwd=2.0, flops=1e11, host_us=300.0,
               x_cudnn=1.08, x_tra=1.02)
    header, rule, line = bench.format_table([row]).splitlines()
    assert header.count("|") == rule.count("|") == line.count("|") == 11
    assert line == "| 8192 | 2 | sigmoid | 0.500 | 200 | 2.000 | 175 | 1.08 | 1.02 | 300 |"
    assert bench.targets([row, dict(row, method="softpick", x_cudnn=1.3), dict(row, method="ssmax (sdpa)"),
                          dict(row, method="softpick, Gluon fwd", x_cudnn=1.2)]) == [
        "  T=8192: sigmoid 1.08× cuDNN (target ≤ 1.10 at T ≥ 8192), 1.02× TRA (target ≤ 1.05)",
        "  T=8192: softpick 1.30× cuDNN (target ≤ 1.25)",
        "  T=8192: softpick, Gluon fwd 1.20× cuDNN (target ≤ 1.25)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_it_says_so():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main(["--seq", "128"])


def test_each_op_runs_again_with_the_other_forward_while_its_row_runs(untimed, monkeypatch):
    """Where the one-view ops' Gluon forward fits, each op gets a second row with the forward its default does not
    take (kernels.score_ops.gluon.GLUON_FORWARD, here sigmoid's Gluon and the normalised modes' Triton), set only while
    that row runs: the Gluon forward (a recorder that then hands over to Triton's) is asked as often for each mode,
    by sigmoid's default row and by the other ops' second rows, and the defaults are as before afterwards."""
    from kernels.score_ops import gluon as score_gluon

    asked = []
    monkeypatch.setattr(score_gluon, "GLUON_FORWARD", {"sigmoid": True, "softpick": False, "sink": False})
    monkeypatch.setattr(score_gluon, "gluon_forward_fits", lambda *args, **kwargs: True)
    monkeypatch.setattr(score_gluon, "forward", lambda mode, *args, **kwargs: asked.append(mode) or False)
    rows = bench.bench_shape(32, 32, 16, torch.float32, 1, d_model=32, device="cpu")
    methods = [r["method"] for r in rows]
    assert {"sigmoid, Triton fwd", "softpick, Gluon fwd", "sink_softmax, Gluon fwd"} <= set(methods)
    counts = collections.Counter(asked)
    assert set(counts) == {"sigmoid", "softpick", "sink"} and counts["sigmoid"] == counts["softpick"] == counts["sink"]
    assert score_gluon.GLUON_FORWARD == {"sigmoid": True, "softpick": False, "sink": False}


def test_rounds_time_the_methods_in_turn_and_each_row_is_its_median(monkeypatch):
    """With three rounds every method is timed once a round, all methods before the next round, and its row holds
    the median of its three times (host µs from the first round only). Each method's times are 9, 3 and 1 ms plus a
    share of its own in rounds 1, 2 and 3, so the median (round 2's) differs from the first, the last, the least, the
    largest and the mean."""
    order = []

    def measure(fn, leaves, rep_ms, host=True, memory=True):
        n_round, slot = divmod(len(order), n)
        order.append((fn, host))
        t = (9.0, 3.0, 1.0)[n_round] + 0.01 * slot
        return dict(fwd=t, fwd_bwd=2 * t, host_us=7.0 if host else float("nan"))

    n = len(bench.methods(1, 32, 2, 16, torch.float32, "cpu"))
    monkeypatch.setattr(timing, "measure", measure)
    rows = bench.bench_shape(32, 32, 16, torch.float32, 1, d_model=32, device="cpu", rounds=3)
    assert len(rows) == n and len(order) == 3 * n
    firsts = [fn for fn, _ in order[:n]]
    assert [fn for fn, _ in order[n:2 * n]] == firsts == [fn for fn, _ in order[2 * n:]]  # in turn, same order
    assert [host for _, host in order] == [True] * n + [False] * 2 * n
    for slot, r in enumerate(rows):
        assert r["fwd"] == 3.0 + 0.01 * slot and r["fwd_bwd"] == 2 * (3.0 + 0.01 * slot) and r["host_us"] == 7.0


def test_rounds_below_one_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err
