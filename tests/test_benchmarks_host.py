"""benchmarks.host without a GPU: the launcher clock on stand-in compiled kernels kept by kernels.fast_launch (timed,
counted, stubbed, restored), the choice of the least round, the table's arithmetic, and cProfile's table on a plain
function."""

import inspect
import time

import pytest
import torch

from benchmarks import host, timing
from kernels import fast_launch


SLOW_S = 0.02  # the slow stand-in's launch: long enough that a loaded machine's jitter in the fast one's stays far below


class Compiled:
    """Triton's CompiledKernel as the clock sees it: ``run`` is a read-only property over ``_run``."""
    function, packed_metadata = "function", "metadata"

    def __init__(self, name, log, cost_s=0.0):
        self.name, self.log, self.cost_s = name, log, cost_s
        self._run = self._launch

    def _launch(self, *args):
        time.sleep(self.cost_s)
        self.log.append((self.name, args))

    @property
    def run(self):
        return self._run


class Kernel:
    params = [inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD)]

    def __init__(self, compiled):
        self.compiled, self.used_global_vals = compiled, {}

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.compiled


@pytest.fixture
def kept(fast_launch_on_gpu):
    """Two stand-in kernels kept by fast_launch as on a GPU, one of them under two keys."""
    log = []
    slow, fast = Kernel(Compiled("slow", log, SLOW_S)), Kernel(Compiled("fast", log))
    x = torch.zeros(4)
    for kernel, n in ((slow, 1), (fast, 1), (fast, 2)):  # fast: two specialisations, one compiled kernel
        fast_launch.launch(kernel, (1,), (x, n), {})
    log.clear()
    return slow, fast, x, log


def issue(slow, fast, x):
    fast_launch.launch(slow, (1,), (x, 1), {})
    fast_launch.launch(fast, (1,), (x, 1), {})
    fast_launch.launch(fast, (1,), (x, 2), {})


def test_kept_kernels_lists_each_compiled_kernel_once(kept):
    assert sorted(c.name for c in fast_launch.kept_kernels()) == ["fast", "slow"]


def test_the_clock_times_and_counts_each_launcher_and_restores_it(kept):
    slow, fast, x, log = kept
    originals = {c.name: c._run for c in (slow.compiled, fast.compiled)}
    with host.LauncherClock() as clock:
        issue(slow, fast, x)
        issue(slow, fast, x)
    assert clock.launches == {"slow": 2, "fast": 4}
    assert clock.us["slow"] >= 2 * SLOW_S * 1e6 and clock.us["fast"] < clock.us["slow"] / 4
    assert [name for name, _ in log] == ["slow", "fast", "fast"] * 2  # every launch still made, in order
    assert log[2][1][-1] == 2  # with its own arguments (the fast_launch order: grid, stream, handles, then these)
    assert {c.name: c._run for c in (slow.compiled, fast.compiled)} == originals
    issue(slow, fast, x)
    assert clock.launches == {"slow": 2, "fast": 4}  # no longer counting


def test_a_stubbed_clock_counts_without_launching(kept):
    slow, fast, x, log = kept
    with host.LauncherClock(stub=True) as clock:
        issue(slow, fast, x)
    assert log == [] and clock.launches == {"slow": 1, "fast": 2}
    assert clock.us["slow"] < SLOW_S * 1e6  # the slow launcher's sleep never ran
    issue(slow, fast, x)
    assert len(log) == 3


def test_least_us_keeps_the_clock_figures_of_the_least_round(kept, monkeypatch):
    slow, fast, x, _ = kept
    totals = iter([30.0, 10.0, 20.0])
    launches_by_round = iter([1, 3, 2])

    def fake_host_us(fn, calls, on_start=None):  # each round issues a different number of launches
        on_start()
        for _ in range(next(launches_by_round)):
            fast_launch.launch(fast, (1,), (x, 1), {})
        return next(totals)

    monkeypatch.setattr(timing, "host_us", fake_host_us)
    with host.LauncherClock() as clock:
        us, per_kernel, launches = host.least_us(lambda: None, calls=2, rounds=3, clock=clock)
    assert us == 10.0 and launches == {"fast": 1.5} and set(per_kernel) == {"fast"}


def test_the_table_derives_each_part_from_the_whole():
    m = dict(cudnn=200.0, tda=900.0, forward=200.0, backward=450.0, direct=400.0, launchers=250.0, launches=5,
             stubbed=140.0, paired=700.0, tda_calling_thread=600.0, cudnn_calling_thread=150.0, shell=180.0)
    rows = dict(host.parts_rows(m))
    assert rows["the two together, beyond the two alone"] == 250.0
    assert rows["of which inside Triton's launchers (5 launches)"] == 250.0
    assert rows["of which the rest: our Python, torch's allocations and small ops"] == 150.0
    assert rows["autograd and the input checks around the direct calls"] == 500.0
    text = host.format_parts("t", m, {"a": 50.0, "b": 200.0}, {"a": 1, "b": 4})
    assert "TDA / cuDNN: 4.50× (views apart), 3.50× (paired entry)" in text
    assert "| autograd and the input checks around the direct calls | 500.0 | 56% |" in text
    assert text.index("| `b` | 4 | 200.0 |") < text.index("| `a` | 1 | 50.0 |")  # the costliest launcher first


@pytest.mark.slow
def test_host_parts_runs_end_to_end_on_the_interpreter(monkeypatch):
    """Every call host_parts makes (the autograd path, launch.forward and launch.backward with their arguments), on a
    tiny CPU shape under Triton's interpreter, the GPU's sleep and synchronisation left out and cuDNN replaced by
    SDPA's CPU path: the table comes out whole (no kernel is kept by fast_launch there, so no launcher is timed)."""
    from torch.nn.functional import scaled_dot_product_attention

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: None)
    monkeypatch.setattr(timing, "causal_sdpa", lambda q, k, v, backend: scaled_dot_product_attention(
        q, k, v, is_causal=True))
    text = host.host_parts(1, 40, 4, 16, torch.float32, dense=True, calls=1, rounds=1, warmups=1, device="cpu",
                           cprofile_calls=1)
    assert "paired TDA, T = 40, B = 1, 2×16 (v 32), dense: host µs" in text
    profiled = text.split("paired TDA, T = 40, B = 1, 2×16 (v 32), dense: cProfile of 1 forward+backward calls")[1]
    assert "launch.py" in profiled and "(backward)" in profiled  # the same calls, through the launchers
    text = text.split("### paired TDA, T = 40, B = 1, 2×16 (v 32), dense: cProfile")[0]
    first_table = text.split("TDA / cuDNN:")[0]
    rows = [line for line in first_table.splitlines() if line.startswith("| ") and "µs" not in line]
    assert len(rows) == len(host.parts_rows(dict.fromkeys(
        ("cudnn", "tda", "forward", "backward", "direct", "launchers", "launches", "stubbed", "paired",
         "tda_calling_thread", "cudnn_calling_thread", "shell"), 1.0)))
    assert "of which inside Triton's launchers (0 launches) | 0.0 |" in text
    whole = float(rows[1].split("|")[2])
    assert whole > 0 and "TDA / cuDNN:" in text and "(none timed: no kernel was kept" in text


def test_profile_host_tables_are_benchmarks_host_tables(monkeypatch):
    """benchmarks.profile --host hands the shape and its number of calls to host_parts, which profiles the calls it
    timed (no inputs of its own are drawn)."""
    from benchmarks import profile

    seen = []
    monkeypatch.setattr(host, "host_parts", lambda *a, **k: seen.append((a, k)) or "the host tables")
    assert profile.attention_tables(2, 64, 12, 64, torch.bfloat16, True, True, 7) == ["the host tables"]
    assert seen == [((2, 64, 12, 64, torch.bfloat16, True), dict(cprofile_calls=7))]


def _issue_calls():
    return sum(_one_launch(i) for i in range(50))


def _one_launch(i):
    return i * i


def test_cprofile_table_lists_the_functions_called_with_their_call_counts():
    text = host.cprofile_table(_issue_calls, calls=3, limit=10)
    own, cumulative = text.split("Ordered by: cumulative time")
    assert "Ordered by: internal time" in own
    for part in (own, cumulative):  # 3 calls of the function, 150 of its callee, in both orderings
        assert "_issue_calls" in part and "_one_launch" in part
        assert any(line.split()[:1] == ["150"] and "_one_launch" in line for line in part.splitlines())
        assert any(line.split()[:1] == ["3"] and "_issue_calls" in line for line in part.splitlines())


def test_on_calling_thread_turns_autograds_worker_threads_off_for_the_call_only():
    seen = []
    call = host.on_calling_thread(lambda: seen.append(torch._C._is_multithreading_enabled()))
    call()
    assert seen == [False] and torch._C._is_multithreading_enabled()


def test_the_shell_takes_tdas_inputs_and_returns_what_its_autograd_function_does():
    """The floor's Shell: output of v's head size in the kernels' (B, T, H, dv) layout, a gradient of each input's
    shape for every input (as ThresholdAttentionFunction gives them), so its autograd graph is TDA's."""
    B, H, T, d, dv = 2, 3, 70, 8, 16
    q1, k1, q2, k2 = (torch.randn(B, T, H, d, requires_grad=True) for _ in range(4))
    v = torch.randn(B, H, T, dv, requires_grad=True)
    lam = torch.rand(H, requires_grad=True)
    out = host.Shell.apply(q1.transpose(1, 2), k1.transpose(1, 2), v, q2.transpose(1, 2), k2.transpose(1, 2), lam)
    assert out.shape == (B, H, T, dv) and out.transpose(1, 2).is_contiguous()
    out.backward(torch.ones_like(out))
    assert [t.grad.shape for t in (q1, k1, q2, k2, v, lam)] == [t.shape for t in (q1, k1, q2, k2, v, lam)]
