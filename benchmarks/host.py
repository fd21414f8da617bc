"""The host's time of issuing one paired TDA forward+backward, taken apart (GPU only), beside cuDNN's whole
forward+backward on the same machine: issue 24's host target is that TDA's be no larger.

    python -m benchmarks.profile --seq 4096 --host     # this table, then cProfile's of the same calls

Every figure is host µs per call (timing.host_us: the calls issued while a sleep kernel holds the GPU, so none waits
for it), the least of ROUNDS means of CALLS calls, the leaves' gradients replaced at each call. The rows go from the
whole to its parts:

* the forward+backward through autograd with the two views' q and k as four inputs, as benchmarks.attention times
  it; the forward alone (its graph dropped) and the backward alone (``retain_graph``), and what the two cost together
  beyond the two alone;
* ``kernels.threshold.launch.forward`` then ``launch.backward`` called directly (no autograd, no input checks), split
  into the time inside Triton's launchers (``LauncherClock`` wraps the launcher of every kernel kernels.fast_launch
  keeps: argument handling, tensor-descriptor encoding, the driver's launch) and the rest (our Python, torch's
  allocations and small ops); the same calls again with the launchers stubbed out, a second measure of that rest;
* autograd and the checks around the launchers: the whole less the direct calls;
* the forward+backward through the paired entry (kernels.threshold_attention_paired: q and k whole, as the model's
  paired TDA issues it);
* TDA's and cuDNN's forward+backward with autograd's backward run on the calling thread
  (``torch.autograd.set_multithreading_enabled(False)``): a CUDA backward is otherwise handed to the device's worker
  thread, and these rows say what that hand-over costs each;
* the floor of any entry written as a Python ``autograd.Function``: ``Shell`` takes TDA's inputs and makes the
  allocations TDA's launch path makes, and launches nothing. What lies between it and cuDNN's whole call can only be
  saved by an entry without Python in the call.

A table per launched kernel follows: launches and launcher µs per forward+backward.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from typing import Callable, Optional

import torch

from kernels import fast_launch

CALLS, ROUNDS = 20, 5


class LauncherClock:
    """While installed (``with clock:``), the launcher of every compiled kernel kernels.fast_launch keeps is wrapped:
    each call's host time is added to ``us[name]`` and counted in ``launches[name]`` (name: the compiled kernel's).
    With ``stub`` the wrapper returns without launching, so what remains of a call is everything but the launches.
    Only kernels kept when the clock is installed are wrapped: warm the calls up first. Leaving restores every
    launcher."""

    def __init__(self, stub: bool = False):
        self.stub = stub
        self.us: dict[str, float] = {}
        self.launches: dict[str, int] = {}
        self._installed: list[tuple[object, object]] = []

    def reset(self) -> None:
        self.us.clear()
        self.launches.clear()

    def _timed(self, name: str, launcher: Callable) -> Callable:
        def timed(*args) -> None:
            start = time.perf_counter()
            if not self.stub:
                launcher(*args)
            self.us[name] = self.us.get(name, 0.0) + 1e6 * (time.perf_counter() - start)
            self.launches[name] = self.launches.get(name, 0) + 1
        return timed

    def __enter__(self) -> "LauncherClock":
        for compiled in fast_launch.kept_kernels():
            launcher = compiled.run  # (Triton's CompiledKernel makes its launcher on first use and keeps it in _run)
            self._installed.append((compiled, launcher))
            compiled._run = self._timed(getattr(compiled, "name", "kernel"), launcher)
        return self

    def __exit__(self, *exc) -> None:
        for compiled, launcher in self._installed:
            compiled._run = launcher
        self._installed.clear()


def least_us(fn: Callable[[], object], calls: int, rounds: int,
             clock: Optional[LauncherClock] = None) -> tuple[float, dict, dict]:
    """The least of ``rounds`` host_us means of ``calls`` calls; with a ``clock``, also the launcher µs and launches
    per call of that round, by kernel."""
    from benchmarks.timing import host_us

    best: tuple[float, dict, dict] = (float("inf"), {}, {})
    for _ in range(rounds):
        us = host_us(fn, calls, on_start=clock.reset if clock is not None else None)
        if us < best[0]:
            per_call = ({k: v / calls for k, v in clock.us.items()}, {k: v / calls for k, v in clock.launches.items()}
                        ) if clock is not None else ({}, {})
            best = (us, *per_call)
    return best


def parts_rows(m: dict) -> list[tuple[str, float]]:
    """The table's rows (label, host µs) from the measured figures ``m``: cudnn, tda, forward, backward, direct,
    launchers (µs inside the launchers during ``direct``), launches (their number), stubbed, paired, tda_calling_thread,
    cudnn_calling_thread, shell."""
    return [
        ("cuDNN's forward+backward, through autograd", m["cudnn"]),
        ("**paired TDA's forward+backward, through autograd** (its two views' q and k apart)", m["tda"]),
        ("its forward alone (the graph dropped)", m["forward"]),
        ("its backward alone (`retain_graph`)", m["backward"]),
        ("the two together, beyond the two alone", m["tda"] - m["forward"] - m["backward"]),
        ("`launch.forward` + `launch.backward` called directly", m["direct"]),
        (f"of which inside Triton's launchers ({m['launches']:g} launches)", m["launchers"]),
        ("of which the rest: our Python, torch's allocations and small ops", m["direct"] - m["launchers"]),
        ("the direct calls with the launchers stubbed (the rest, measured apart)", m["stubbed"]),
        ("autograd and the input checks around the direct calls", m["tda"] - m["direct"]),
        ("**the same through the paired entry** (q and k whole, their gradients written whole: the model's call)",
         m["paired"]),
        ("TDA's forward+backward (views apart), the backward on the calling thread, not the device's worker",
         m["tda_calling_thread"]),
        ("cuDNN's forward+backward, the backward on the calling thread", m["cudnn_calling_thread"]),
        ("**the floor of a Python `autograd.Function`**: TDA's inputs and allocations, no kernel (`Shell`)",
         m["shell"]),
    ]


def format_parts(title: str, m: dict, per_kernel: dict, launches: dict) -> str:
    """The markdown tables of ``parts_rows`` and of the launchers by kernel."""
    lines = [f"### {title}", "", "| what is issued | host µs | share of TDA's |", "|---|---|---|"]
    for label, us in parts_rows(m):
        lines.append(f"| {label} | {us:.1f} | {100 * us / m['tda']:.0f}% |")
    lines += ["", f"TDA / cuDNN: {m['tda'] / m['cudnn']:.2f}× (views apart), {m['paired'] / m['cudnn']:.2f}× (paired "
              "entry)", "",
              "| kernel (Triton's launcher) | launches per call | host µs per call |", "|---|---|---|"]
    for name in sorted(per_kernel, key=lambda n: -per_kernel[n]):
        lines.append(f"| `{name}` | {launches[name]:g} | {per_kernel[name]:.1f} |")
    if not per_kernel:
        lines.append("| (none timed: no kernel was kept, as under the interpreter or with a launch hook) | | |")
    return "\n".join(lines)


class Shell(torch.autograd.Function):
    """TDA's autograd shell without its kernels: the inputs of ``threshold_attention_triton`` (q1, k1, v, q2, k2, λ)
    and the allocations of its launch path, made by the same functions: forward, the output in q1's row layout, the
    two views' inverse norms of queries and keys, the zero-filled record (saved for the backward); backward, the one
    zero-filled fp32 buffer of both views' dQ and a gradient per input. No kernel of its own is launched (torch's fills
    are)."""

    @staticmethod
    def forward(ctx, q1, k1, v, q2, k2, lam):
        from kernels import common
        from kernels.threshold import launch

        B, H = q1.shape[:2]
        rows = [common.new_output((B, H, x.shape[2]), torch.float32, x.device) for x in (q1, q2, k1, k2)]
        ctx.save_for_backward(q1, k1, v, q2, k2, lam, *rows, launch.new_record(q1, k1.shape[2]))
        return common.new_rows_like(q1, v.shape[-1])

    @staticmethod
    def backward(ctx, do):
        from kernels import common

        q1, k1, v, q2, k2, lam = ctx.saved_tensors[:6]
        torch.zeros((2, *q1.shape), dtype=torch.float32, device=do.device)
        return (*(common.new_rows_like(x, x.shape[-1]) for x in (q1, k1, v, q2, k2)), torch.empty_like(lam))


def on_calling_thread(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` with autograd's backward run on the calling thread (``torch.autograd.set_multithreading_enabled(False)``)
    instead of the device's worker thread, to which a CUDA backward is otherwise handed."""
    def call() -> None:
        with torch.autograd.set_multithreading_enabled(False):
            fn()
    return call


def cprofile_table(fn: Callable[[], object], calls: int, limit: int = 40) -> str:
    """cProfile's tables of ``calls`` calls of ``fn``: the ``limit`` functions with the most own time, then the most
    cumulative time (time per call is the table's total over ``calls``)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


def host_profile(call: Callable[[], object], calls: int) -> str:
    """cprofile_table of ``calls`` calls of ``call`` after a warm-up (compilation, tile choice, kept launches), the GPU
    held busy by a sleep kernel so that no call waits for it."""
    for _ in range(3):
        call()
    from benchmarks.timing import hold_gpu

    hold_gpu(4_000_000_000)  # ~2 s: longer than the profiled calls take to issue
    report = cprofile_table(call, calls)
    torch.cuda.synchronize()
    return report


def host_parts(B: int, T: int, H: int, d: int, dtype: torch.dtype, dense: bool, calls: int = CALLS,
               rounds: int = ROUNDS, warmups: int = 3, device: str = "cuda", cprofile_calls: int = 0) -> str:
    """Measure and format the host's parts for benchmarks.attention's shapes at one length: cuDNN's softmax with H
    heads of d, paired TDA with H / 2 pairs of q/k d and v 2d (every tile occupied with ``dense``); each call is
    made ``warmups`` times first (compilation, tile choice, kept launches). With ``cprofile_calls``, cProfile's tables
    of that many of the same forward+backward calls follow (host_profile)."""
    from torch.nn.attention import SDPBackend

    from benchmarks import attention as bench
    from benchmarks import timing
    from kernels.threshold import launch
    from kernels.threshold.autograd import paired_threshold_attention_triton, threshold_attention_triton
    from kernels.threshold.options import ThresholdOptions

    sm = [timing.projection(B, T, H, d, dtype, device=device) for _ in range(3)]
    x = bench._tda_inputs(B, T, H // 2, d, 2 * d, dtype, 2, bench.DENSE_RHO if dense else 0.5, device)
    views = [x[n] for n in ("q1", "k1", "v", "q2", "k2")]
    leaves = views + [x["lam"]]
    q, k = bench.paired_whole(x)

    def tda_forward() -> torch.Tensor:
        return threshold_attention_triton(*views, lam=x["lam"])

    out = tda_forward()
    do = torch.randn_like(out)

    def backward() -> None:
        for t in leaves:
            t.grad = None
        out.backward(do, retain_graph=True)

    plain = [t.detach() for t in views]
    lam, beta, options = x["lam"].detach(), torch.ones(H // 2, device=device), ThresholdOptions()

    def direct() -> None:
        saved = launch.forward(*plain, lam, beta, options)
        launch.backward(do, *plain, *saved[1:], lam, beta, options, True, False, False)

    calls_of = dict(cudnn=timing.fwd_bwd_step(lambda: timing.causal_sdpa(*sm, SDPBackend.CUDNN_ATTENTION), sm),
                    tda=timing.fwd_bwd_step(tda_forward, leaves), forward=tda_forward, backward=backward,
                    direct=direct, paired=timing.fwd_bwd_step(lambda: paired_threshold_attention_triton(
                        q, k, x["v"], lam=x["lam"]), [q, k, x["v"], x["lam"]]))
    calls_of.update(cudnn_calling_thread=on_calling_thread(calls_of["cudnn"]),
                    tda_calling_thread=on_calling_thread(calls_of["tda"]),
                    shell=timing.fwd_bwd_step(lambda: Shell.apply(*views, x["lam"]), leaves))
    for fn in calls_of.values():
        for _ in range(warmups):
            fn()
    torch.cuda.synchronize()
    m = {name: least_us(fn, calls, rounds)[0] for name, fn in calls_of.items()}
    with LauncherClock() as clock:  # (for the split only: the totals above are measured without the wrappers)
        _, per_kernel, launches = least_us(direct, calls, rounds, clock)
    with LauncherClock(stub=True) as clock:
        m["stubbed"] = least_us(direct, calls, rounds, clock)[0]
    torch.cuda.synchronize()
    m["launchers"], m["launches"] = sum(per_kernel.values()), sum(launches.values())
    shape = f"paired TDA, T = {T}, B = {B}, {H // 2}×{d} (v {2 * d}), {'dense' if dense else 'half the tiles'}"
    text = format_parts(f"{shape}: host µs, the least of {rounds} means of {calls} calls", m, per_kernel, launches)
    if cprofile_calls:
        text += (f"\n\n### {shape}: cProfile of {cprofile_calls} forward+backward calls\n\n"
                 f"```\n{host_profile(calls_of['tda'], cprofile_calls)}```")
    return text
