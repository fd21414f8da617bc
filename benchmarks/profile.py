"""Where the time of one forward+backward goes: GPU time kernel by kernel, or (``--host``) the CPU time of issuing
it, function by function (GPU only).

    python -m benchmarks.profile                      # T = 4096 and 16384, d = 64, bf16
    python -m benchmarks.profile --seq 8192 --out profile.md
    python -m benchmarks.profile --seq 4096 --host    # the host's time of paired TDA taken apart, then cProfile
    python -m benchmarks.profile --seq 8192 --head-dim 128 --dense   # heads of 128, every tile occupied
    python -m benchmarks.profile --seq 8192 --sink-free               # benchmarks.sink_free's rows instead

For the benchmark's parameter-matched shapes (benchmarks.attention: B·T = 16384 tokens), profiles cuDNN's
softmax, paired TDA and TRA over a few forward+backward calls with torch.profiler and prints, per method,
each GPU kernel's time per call (µs), its launches per call and its share of the method's GPU time.
Use it to see what the fused kernels cost beside the small ones (norms, zero fills, dQ conversion,
reductions) that the benchmark's wall time also counts. With ``--host`` it first takes the host's time of paired
TDA's forward+backward apart beside cuDNN's (benchmarks.host: autograd, our launch code, Triton's launchers, kernel
by kernel), then runs it under cProfile while a sleep kernel keeps the GPU busy (so no call waits for it) and prints
the functions with the most own and cumulative time (cProfile inflates every Python call, so read the shares, not
the totals; the first table's figures are uninflated). With ``--sink-free``
it profiles benchmarks.sink_free's rows instead (cuDNN, TRA, sigmoid, softpick, softmax with a sink, ssmax, and each
score op again with the forward its default does not take), or those named with ``--methods``: the kernel tables
show which kernel a change of forward moves.
"""

import argparse
from typing import Callable, Iterable, Optional

import torch


def kernel_table(events: Iterable, calls: int) -> list[tuple[str, float, float]]:
    """(kernel name, µs per call, launches per call) for the GPU kernels among profiler ``events``
    (training.profiling.gpu_kernels), slowest first."""
    from training.profiling import gpu_kernels

    rows = [(name, us / calls, n / calls) for name, (us, n) in gpu_kernels(events).items()]
    return sorted(rows, key=lambda r: -r[1])


def format_kernel_table(title: str, rows: list[tuple[str, float, float]], width: int = 70) -> str:
    all_us = sum(us for _, us, _ in rows) or float("nan")
    lines = [f"### {title}: {all_us:.0f} µs of GPU kernels per forward+backward", "",
             "| kernel | µs per call | launches per call | share |", "|---|---|---|---|"]
    for name, us, n in rows:
        short = name if len(name) <= width else name[:width - 1] + "…"
        lines.append(f"| `{short}` | {us:.1f} | {n:g} | {100 * us / all_us:.1f}% |")
    return "\n".join(lines)


def profile_calls(fn: Callable[[], object], calls: int) -> list[tuple[str, float, float]]:
    """Kernel table of ``calls`` calls of ``fn`` after a warm-up (compilation, tile choice)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return kernel_table(prof.events(), calls)


def thread_timeline(step: Callable[[], object], calls: int = 12, pick: int = 9,
                    hold: Optional[Callable[[], None]] = None, min_us: float = 1.0, depth: int = 2) -> str:
    """Where one call's host time goes across threads: ``calls`` calls of ``step`` under torch.profiler (CPU events),
    call ``pick`` laid out by format_timeline. ``hold`` runs once just before the profiled calls (for a GPU step, a
    sleep kernel, so that no call waits for the GPU: timing.host_us)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    if not 0 <= pick < calls:
        raise ValueError(f"thread_timeline: pick = {pick} is not one of the {calls} calls")
    for _ in range(3):
        step()
    if hold is not None:
        hold()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(calls):
            with record_function(f"call {i}"):
                step()
    return format_timeline(list(prof.events()), f"call {pick}", min_us, depth)


def format_timeline(events: list, call_name: str, min_us: float = 1.0, depth: int = 2) -> str:
    """The profiler ``events`` that start within the event named ``call_name``, in the order they started, each with
    the thread it ran on ("calling" for the call's own thread; the others, such as autograd's thread for a CUDA
    device, numbered as they appear). Events shorter than ``min_us`` or more than ``depth`` levels below their thread's
    outermost are left out. Then a line per thread: the µs of its outermost events, and for the calling thread the µs
    of the call no event of its own covered (its Python, and its waits for other threads). As markdown."""
    call = next(e for e in events if e.name == call_name)
    t0, t1 = call.time_range.start, call.time_range.end

    def level(e) -> int:  # levels below the call (calling thread) or below the thread's outermost event
        n, p = 0, e.cpu_parent
        while p is not None and p is not call:
            n, p = n + 1, p.cpu_parent
        return n

    inside = sorted((e for e in events if e is not call and t0 <= e.time_range.start < t1),
                    key=lambda e: e.time_range.start)
    names = {call.thread: "calling"}
    for e in inside:
        names.setdefault(e.thread, f"thread {len(names) + 1}")
    outer = {name: 0.0 for name in names.values()}
    lines = [f"{call_name}: {t1 - t0:.0f} µs", "", "| starts at µs | µs | thread | event |", "|---|---|---|---|"]
    for e in inside:
        n, us = level(e), e.time_range.elapsed_us()
        if n == 0:
            outer[names[e.thread]] += us
        if n <= depth and us >= min_us:
            lines.append(f"| {e.time_range.start - t0:.1f} | {us:.1f} | {names[e.thread]} | {'· ' * n}{e.name} |")
    lines.append("")
    for name, us in outer.items():
        extra = f" (the call's other {t1 - t0 - us:.0f} µs: no event of its own)" if name == "calling" else ""
        lines.append(f"- {name}: {us:.0f} µs in its outermost events{extra}")
    return "\n".join(lines)


def sink_free_methods(B: int, T: int, H: int, d: int, dtype: torch.dtype, names: Optional[list[str]] = None,
                      device: str = "cuda") -> list[tuple[str, tuple]]:
    """benchmarks.sink_free's rows (name, (forward, leaves)), those in ``names`` only when given; an error naming the
    unknown ones and the known ones otherwise."""
    from benchmarks.sink_free import methods

    rows = methods(B, T, H, d, dtype, device)
    unknown = sorted(set(names or ()) - set(rows))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; this GPU's rows are {sorted(rows)}")
    return [(name, row) for name, row in rows.items() if not names or name in names]


def attention_tables(B: int, T: int, H: int, d: int, dtype: torch.dtype, dense: bool, host: bool,
                     calls: int) -> Iterable[str]:
    """The tables for benchmarks.attention's methods (cuDNN's softmax, paired TDA, TRA) at one shape: each one's kernel
    table, or with ``host`` the host's time of issuing paired TDA's forward+backward taken apart (benchmarks.host),
    then its cProfile."""
    if host:
        from benchmarks.host import host_parts

        return [host_parts(B, T, H, d, dtype, dense, cprofile_calls=calls)]
    from torch.nn.attention import SDPBackend

    from benchmarks import attention as bench
    from benchmarks import timing
    from kernels.threshold.autograd import threshold_attention_triton

    sm = [timing.projection(B, T, H, d, dtype) for _ in range(3)]
    rho = bench.DENSE_RHO if dense else 0.5
    x = bench._tda_inputs(B, T, H // 2, d, 2 * d, dtype, 2, rho)
    y = bench._tda_inputs(B, T, H, d, d, dtype, 1, rho)
    leaves = sm + [t for t in (*x.values(), *y.values()) if t.requires_grad]
    methods = (("sdpa-cudnn", H, d, lambda: timing.causal_sdpa(*sm, SDPBackend.CUDNN_ATTENTION)),
               ("tda (paired)", H // 2, 2 * d, lambda: threshold_attention_triton(
                   x["q1"], x["k1"], x["v"], x["q2"], x["k2"], lam=x["lam"])),
               ("tra", H, d, lambda: threshold_attention_triton(y["q1"], y["k1"], y["v"])))
    return (format_kernel_table(f"{name}, T = {T}, B = {B}, {heads}×{d} (v {dv})",
                                profile_calls(timing.fwd_bwd_step(forward, leaves), calls))
            for name, heads, dv, forward in methods)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=16384, help="B·T per shape")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--dense", action="store_true",
                        help="threshold inputs with every tile occupied (benchmarks.attention.DENSE_RHO), not half")
    parser.add_argument("--host", action="store_true",
                        help="cProfile the CPU time of issuing paired TDA's forward+backward instead")
    parser.add_argument("--sink-free", action="store_true",
                        help="profile benchmarks.sink_free's rows (the sink-free baselines beside cuDNN and TRA)")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="with --sink-free: only these rows (e.g. sdpa-cudnn sigmoid 'sigmoid, Gluon fwd')")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    if args.methods and not args.sink_free:
        parser.error("--methods selects among --sink-free's rows: add --sink-free")
    if args.sink_free and args.host:
        parser.error("--host profiles paired TDA's issue; it does not combine with --sink-free")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.profile needs a CUDA GPU")
    from benchmarks import attention as bench
    from benchmarks import timing

    dtype, d = torch.bfloat16, args.head_dim
    H = bench.D_MODEL // d
    out = []
    for T in args.seq:
        B = max(1, args.tokens // T)
        if args.sink_free:
            tables = (format_kernel_table(f"{name}, T = {T}, B = {B}, {H}×{d}",
                                          profile_calls(timing.fwd_bwd_step(forward, leaves), args.calls))
                      for name, (forward, leaves) in sink_free_methods(B, T, H, d, dtype, args.methods))
        else:
            tables = attention_tables(B, T, H, d, dtype, args.dense, args.host, args.calls)
        for table in tables:  # (printed as each is made)
            print(table + "\n", flush=True)
            out.append(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n\n".join(out) + "\n")


if __name__ == "__main__":
    main()
