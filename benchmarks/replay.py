"""The paired TDA call on the Python path against kernels.replay's C++ engine (GPU), cuDNN's softmax beside: issue
24's host target is that TDA's host time per forward+backward be no larger than cuDNN's.

    python -m benchmarks.replay                          # T = 4096, 8192, 16384; d = 64 and 128; B·T = 16384
    python -m benchmarks.replay --seq 4096 --head-dims 64 --parts    # and where the replayed call's host time goes
    python -m benchmarks.replay --seq 4096 --head-dims 64 --threads  # and one call laid out across threads

Paired heads of d (v 2d), 768 / d / 2 pairs (cuDNN: 768 / d heads of d), q and k whole leaves in the projection layout,
dense inputs (every tile occupied, benchmarks.attention's DENSE_RHO), bf16. Before timing, each shape is called three
times with replay on (the first call runs the Python path, the second records, the third replays) and every output and
gradient is compared with the Python path's: the same bits, dQ within its rounding (its additions' order changes from
run to run). Forward+backward ms: medians of CUDA-event timings over ``--rep-ms`` (timing.time_ms). Host µs: means of
20 calls issued while the GPU sleeps (timing.host_us), taken in ``--rounds`` rounds that each measure cuDNN, the
Python path and the replayed call in turn; the table gives each call's median over the rounds and the replayed call's
ratio to cuDNN per round, median and range, so that a host slowing down or speeding up during the run moves both
sides of each ratio alike.

``--parts`` takes one replayed call apart (the first shape): cuDNN's and the replayed forward+backward with
autograd's backward on its worker thread and on the calling thread (the four in interleaved rounds, with the ratio per
thread), the forward alone, each program run by the engine directly, the key the Python entry builds, then the host µs
of every instruction of both programs (the engine's own clock, means of 200 runs issued back to back, so launches that
find the GPU's queue full show its wait).

``--threads`` lays out one call of the first shape across threads, cuDNN's and the replayed one
(benchmarks.profile.thread_timeline: each CPU event with its start, length and thread, and per thread the time of its
events): where autograd's handing of the backward to its thread for the GPU spends its time.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from types import SimpleNamespace
from typing import Callable, Iterator, Optional

import torch

D_MODEL = 768


def _inputs(B: int, T: int, d: int) -> tuple:
    from benchmarks import attention as bench
    from benchmarks import timing

    pairs = D_MODEL // d // 2
    x = bench._tda_inputs(B, T, pairs, d, 2 * d, torch.bfloat16, 2, bench.DENSE_RHO)
    q, k = bench.paired_whole(x)
    sm = [timing.projection(B, T, 2 * pairs, d, torch.bfloat16) for _ in range(3)]
    return q, k, x["v"], x["lam"], sm


def _check_and_record(q, k, v, lam) -> None:
    """Three calls with replay on, each compared with the Python path's output and gradients; raises on a difference
    or where the third call was not replayed."""
    from kernels import replay
    from kernels.threshold.autograd import paired_threshold_attention_triton

    leaves = [q, k, v, lam]
    replay.ENABLED = False
    out = paired_threshold_attention_triton(q, k, v, lam=lam)
    do = torch.randn_like(out)
    want = (out, *torch.autograd.grad(out, leaves, do))
    replay.ENABLED = True
    replay.clear()
    for call in range(3):
        o = paired_threshold_attention_triton(q, k, v, lam=lam)
        for name, g, w in zip(("out", "q", "k", "v", "lam"), (o, *torch.autograd.grad(o, leaves, do)), want):
            same = torch.equal(g, w) if name != "q" else bool(
                (g.float() - w.float()).abs().max() <= 1e-2 * w.float().abs().max())
            if not same:
                raise AssertionError(f"T = {q.shape[2]}, d = {q.shape[3]}, call {call}: {name} differs from the "
                                     "Python path's")
    if list(replay.status().values()) != ["replayed"]:
        raise AssertionError(f"not replayed: {replay.status()}")


@contextlib.contextmanager
def _recorded(B: int, T: int, d: int) -> Iterator[SimpleNamespace]:
    """One shape's inputs, its call checked and recorded (_check_and_record), with replay on inside the block and off
    and forgotten after it. Yields q, k, v, lam, leaves (the four), sm (cuDNN's q, k, v), and the calls ``tda`` (the
    paired entry) and ``cudnn``."""
    from torch.nn.attention import SDPBackend

    from benchmarks import timing
    from kernels import replay
    from kernels.threshold.autograd import paired_threshold_attention_triton

    q, k, v, lam, sm = _inputs(B, T, d)
    try:
        _check_and_record(q, k, v, lam)
        replay.ENABLED = True
        yield SimpleNamespace(q=q, k=k, v=v, lam=lam, leaves=[q, k, v, lam], sm=sm,
                              tda=lambda: paired_threshold_attention_triton(q, k, v, lam=lam),
                              cudnn=lambda: timing.causal_sdpa(*sm, SDPBackend.CUDNN_ATTENTION))
    finally:
        replay.ENABLED = False
        replay.clear()


def compare(B: int, T: int, d: int, rep_ms: int, rounds: int = 7) -> dict:
    """{"cudnn" | "python" | "replay": (forward+backward ms, median host µs over the rounds), "host_ratio": the
    replayed call's host µs over cuDNN's per round (timing.ratio_summary)} at one shape."""
    from benchmarks import timing
    from kernels import replay

    ms, steps = {}, {}
    with _recorded(B, T, d) as c:
        for name, on in (("cudnn", None), ("python", False), ("replay", True)):
            if on is None:
                step, leaves = timing.fwd_bwd_step(c.cudnn, c.sm), c.sm
            else:
                replay.ENABLED = on
                step, leaves = timing.fwd_bwd_step(c.tda, c.leaves), c.leaves
            for _ in range(3):
                step()
            ms[name] = timing.time_ms(step, leaves, rep_ms)

            def read(step=step, on=on) -> float:
                if on is not None:
                    replay.ENABLED = on
                return timing.host_us(step, 20)

            steps[name] = read
        host = timing.interleaved(steps, rounds)
    res = {name: (ms[name], statistics.median(host[name])) for name in ms}
    res["host_ratio"] = timing.ratio_summary(host["replay"], host["cudnn"])
    return res


THREADS = ("autograd's worker", "the calling thread")  # where autograd runs a CUDA backward: its default, or not


def thread_rounds(cudnn_step: Callable[[], object], tda_step: Callable[[], object],
                  rounds: int) -> dict[tuple[str, str], list[float]]:
    """{(name, thread): host µs per round} for cuDNN's and the replayed forward+backward, with autograd's backward on
    its worker thread (the default) and on the calling thread: the four readings taken in turn in each of ``rounds``
    rounds (timing.interleaved), so that their ratios pair readings of the same moment. Multithreading is restored
    after each calling-thread reading."""
    from benchmarks import timing

    def read(step: Callable[[], object], calling: bool) -> Callable[[], float]:
        def reading() -> float:
            with torch.autograd.set_multithreading_enabled(not calling):
                return timing.host_us(step, 20)
        return reading

    steps = {(name, thread): read(step, thread == THREADS[1])
             for thread in THREADS
             for name, step in (("cuDNN", cudnn_step), ("replayed", tda_step))}
    return timing.interleaved(steps, rounds)


def parts(B: int, T: int, d: int, rounds: int = 7) -> str:
    """The replayed call taken apart (the module docstring's ``--parts``), as markdown: cuDNN's and the replayed
    forward+backward on both threads in interleaved rounds (thread_rounds), the other rows the least of 3 means."""
    from benchmarks import timing
    from benchmarks.host import least_us
    from kernels import replay
    from kernels.replay.record import OPCODES
    from kernels.threshold.options import ThresholdOptions

    def h(fn) -> float:
        return least_us(fn, 20, 3)[0]

    with _recorded(B, T, d) as c:
        q, k, v, lam, leaves, sm, tda, cudnn = c.q, c.k, c.v, c.lam, c.leaves, c.sm, c.tda, c.cudnn
        fwd, bwd = next(s for s in replay._state.values() if isinstance(s, tuple))
        eng = replay.native()
        beta = torch.ones(q.shape[1] // 2, device="cuda")
        outs = eng.run(fwd, [q, k, v, lam, beta])
        do = torch.randn_like(outs[0])  # (laid out like the output, as the recorded gradient was)
        options = ThresholdOptions()
        host = thread_rounds(timing.fwd_bwd_step(cudnn, sm), timing.fwd_bwd_step(tda, leaves), rounds)
        rows = [(f"{name} forward+backward, backward on {thread} (median of {rounds} rounds)",
                 statistics.median(host[(name, thread)]))
                for thread in THREADS for name in ("cuDNN", "replayed")]
        ratios = [(thread, timing.ratio_summary(host[("replayed", thread)], host[("cuDNN", thread)]))
                  for thread in THREADS]
        rows.append(("replayed forward alone (its graph dropped)", h(tda)))
        with torch.no_grad():
            rows.append(("cuDNN forward alone, no_grad", h(cudnn)))
        rows.append(("the forward program alone (native.run)", h(lambda: eng.run(fwd, [q, k, v, lam, beta]))))
        rows.append(("the backward program alone (native.run)",
                     h(lambda: eng.run(bwd, [do, q, k, v, lam, beta, *outs[1:]]))))
        rows.append(("the Python entry's key", h(lambda: replay.key_of(q, k, v, lam, 1.0, options, None))))
        replay.ENABLED = False
        rows.append(("the Python path's forward+backward", h(timing.fwd_bwd_step(tda, leaves))))
        lines = ["| what | host µs |", "|---|---|", *(f"| {n} | {t:.0f} |" for n, t in rows), ""]
        lines += [f"replayed ÷ cuDNN, backward on {thread}: {mid:.2f} ({lo:.2f}–{hi:.2f}), median (range) of "
                  f"{rounds} rounds" for thread, (mid, lo, hi) in ratios]
        names = {code: name for name, code in OPCODES.items()}
        for pid, what, inputs in ((fwd, "forward", [q, k, v, lam, beta]),
                                  (bwd, "backward", [do, q, k, v, lam, beta, *outs[1:]])):
            spent = eng.instruction_us(pid, inputs, 200)
            by_kind: dict[str, list[float]] = {}
            for ins, us in zip(replay._programs[pid], spent):
                by_kind.setdefault(names[ins[0]], []).append(us)
            lines.append(f"\n{what} program: {len(spent)} instructions, {sum(spent):.0f} µs; by kind (count, µs): "
                         + ", ".join(f"{n} {len(ts)}, {sum(ts):.1f}" for n, ts in by_kind.items()))
            lines += [f"    {names[ins[0]]:6s} {us:6.1f}  {ins[:8]}" for ins, us in zip(replay._programs[pid], spent)]
    return "\n".join(lines)


def threads(B: int, T: int, d: int) -> str:
    """cuDNN's and the replayed call's host time across threads (the module docstring's ``--threads``), as markdown."""
    from benchmarks import timing
    from benchmarks.profile import thread_timeline

    out = []
    with _recorded(B, T, d) as c:
        for name, step in (("cuDNN", timing.fwd_bwd_step(c.cudnn, c.sm)),
                           ("replayed", timing.fwd_bwd_step(c.tda, c.leaves))):
            out.append(f"#### {name}\n\n" + thread_timeline(step, hold=timing.hold_gpu))
            torch.cuda.synchronize()
    return "\n\n".join(out)


HEAD = ("| d | T | B | cuDNN fwd+bwd ms | Python path ms | replayed ms | host µs: cuDNN | Python path | replayed "
        "| replayed ÷ cuDNN, host: median (range) |\n|---|---|---|---|---|---|---|---|---|---|")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--tokens", type=int, default=16384, help="B·T per shape")
    parser.add_argument("--rep-ms", type=int, default=40, help="timing window per measurement")
    parser.add_argument("--rounds", type=int, default=7,
                        help="rounds of host readings, each taking cuDNN, the Python path and the replayed call in turn")
    parser.add_argument("--parts", action="store_true", help="then take the first shape's replayed call apart")
    parser.add_argument("--threads", action="store_true",
                        help="then lay out one call of the first shape across threads, cuDNN's and the replayed one")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.replay needs a CUDA GPU")
    from benchmarks import timing
    from kernels import replay

    start = time.time()
    replay.native()
    print(timing.run_header("bf16", f"engine built or loaded in {time.time() - start:.1f} s") + "\n" + HEAD,
          flush=True)
    for d in args.head_dims:
        for T in args.seq:
            B = max(1, args.tokens // T)
            r = compare(B, T, d, args.rep_ms, args.rounds)
            mid, lo, hi = r["host_ratio"]
            print(f"| {d} | {T} | {B} | {r['cudnn'][0]:.3f} | {r['python'][0]:.3f} | {r['replay'][0]:.3f} | "
                  f"{r['cudnn'][1]:.0f} | {r['python'][1]:.0f} | {r['replay'][1]:.0f} | {mid:.2f} ({lo:.2f}–{hi:.2f}) |",
                  flush=True)
    T, d = args.seq[0], args.head_dims[0]  # the first shape's, for --parts and --threads
    B = max(1, args.tokens // T)
    if args.parts:
        print(f"\nT = {T}, d = {d}, B = {B}, dense\n" + parts(B, T, d, args.rounds), flush=True)
    if args.threads:
        print(f"\nT = {T}, d = {d}, B = {B}, dense: one forward+backward across threads (the GPU asleep)\n\n"
              + threads(B, T, d), flush=True)


if __name__ == "__main__":
    main()
