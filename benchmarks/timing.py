"""What the benchmarks share: the inputs the attention benchmarks (benchmarks.attention, benchmarks.captured,
benchmarks.sink_free) draw, how they time a call on the GPU (medians of CUDA-event timings, the host's cost of
issuing it, peak memory), torch's causal softmax as the reference rows, the share of tiles a threshold forward
records as occupied; readings taken in interleaved rounds and their paired ratios (``interleaved``,
``ratio_summary``); and the decoding benchmarks' timing of a call replayed from a CUDA graph (``time_replays``)."""
from __future__ import annotations

import contextlib
import datetime
import math
import platform
import statistics
import time
from typing import Callable, Optional

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from kernels.threshold.triton_lists import CELL


def run_header(*details: str) -> str:
    """The line a GPU benchmark's output starts with, what BENCHMARKS.md records beside each table: date, GPU, torch,
    Triton, CUDA, cuDNN and Python versions, then ``details`` (dtype and the like)."""
    return " · ".join([f"# {datetime.date.today()}", torch.cuda.get_device_name(), f"torch {torch.__version__}",
                       f"triton {triton.__version__}", f"CUDA {torch.version.cuda}",
                       f"cuDNN {torch.backends.cudnn.version()}", f"python {platform.python_version()}", *details])


def projection(B: int, T: int, H: int, d: int, dtype: torch.dtype, direction: Optional[torch.Tensor] = None,
               rho: float = 0.0, device: str = "cuda") -> torch.Tensor:
    """(B, H, T, d) view of a (B, T, H, d) leaf, as the model lays out a projection: N(0, 1) rows, plus
    rho·√d·direction when given (a shared direction sets how many weights survive a threshold)."""
    x = torch.randn(B, T, H, d, device=device)
    if direction is not None:
        x += rho * math.sqrt(d) * direction
    return x.to(dtype).transpose(1, 2).requires_grad_()


def time_ms(fn: Callable[[], object], grads: list, rep_ms: int) -> float:
    """Median milliseconds of ``fn`` (triton.testing.do_bench: CUDA events, the gradients of ``grads`` cleared)."""
    return triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, grad_to_none=grads,
                                   return_mode="median")


def peak_mib(fn: Callable[[], object]) -> float:
    """MiB allocated at the peak of ``fn`` above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def hold_gpu(cycles: int = 1_000_000_000) -> None:
    """Wait for the GPU, then keep it busy with a sleep kernel of ``cycles`` clock cycles (the default ~0.5 s, longer
    than a benchmark's calls take to issue), so that calls issued next never wait for it: what they cost is the
    host's."""
    torch.cuda.synchronize()
    torch.cuda._sleep(cycles)


def host_us(fn: Callable[[], object], calls: int = 20, on_start: Optional[Callable[[], None]] = None) -> float:
    """Host time per call in microseconds: the CPU's cost of issuing ``fn``'s work, measured while the GPU is held
    busy by a sleep kernel, so no call waits for the GPU (a call that synchronises shows up as a huge number).
    When this exceeds the GPU time, the kernels are host-bound. ``on_start`` is called once after the warm-up call,
    just before the timed ones (e.g. to reset a count of what they do)."""
    fn()
    hold_gpu()
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls
    torch.cuda.synchronize()
    return host * 1e6


def interleaved(steps: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """{name: one reading per round}: each round takes one reading of every step in turn (``steps``: name -> a call
    returning a reading), so that a drift of the machine during the run reaches every name's readings alike."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    readings: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, read in steps.items():
            readings[name].append(read())
    return readings


def ratio_summary(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """(median, least, largest) of num[i] / den[i] over paired readings (the same round's)."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired readings needed, got {len(num)} and {len(den)}")
    ratios = [a / b for a, b in zip(num, den)]
    return statistics.median(ratios), min(ratios), max(ratios)


def replay_ms(fn: Callable[[], object], rep_ms: int, eager_ms: float) -> float:
    """Milliseconds of ``fn`` replayed from a CUDA graph (time_replays): the GPU's time alone, without the host's cost
    of issuing the calls, over about ``rep_ms`` of replays (``eager_ms``: one eager call's time, which sets how many)."""
    reps = max(10, min(2000, int(rep_ms / max(eager_ms, 1e-3))))
    return time_replays(fn, torch.device("cuda"), reps, groups=5)


def measure(forward: Callable[[], torch.Tensor], leaves: list, rep_ms: int, host: bool = True,
            memory: bool = True, graphs: bool = False) -> dict:
    """Forward and forward+backward milliseconds ("fwd", "fwd_bwd"), and unless turned off the peak MiB of a
    forward+backward ("mem") and the host µs to issue one ("host_us"; NaN when ``host`` is off). With ``graphs`` also
    both replayed from a CUDA graph ("fwd_graph", "fwd_bwd_graph"; the backward as torch.autograd.grad of the leaves,
    so that no replay adds into a gradient): where a call's GPU work is shorter than the host's cost of issuing it,
    the eager times are the host's and these the GPU's."""
    do = torch.randn_like(forward())

    def fwd_bwd() -> None:
        forward().backward(do)

    out = {"fwd": time_ms(forward, leaves, rep_ms), "fwd_bwd": time_ms(fwd_bwd, leaves, rep_ms)}
    if memory:
        out["mem"] = peak_mib(fwd_bwd)
    out["host_us"] = host_us(fwd_bwd) if host else float("nan")
    if graphs:
        with_grad = [t for t in leaves if t.requires_grad]
        out["fwd_graph"] = replay_ms(forward, rep_ms, out["fwd"])
        out["fwd_bwd_graph"] = replay_ms(lambda: torch.autograd.grad(forward(), with_grad, do), rep_ms,
                                         out["fwd_bwd"])
    return out


def fwd_bwd_step(forward: Callable[[], torch.Tensor], leaves: list) -> Callable[[], None]:
    """One forward+backward of ``forward``, the ``leaves``' gradients replaced, not accumulated (as the benchmarks
    do), against a fixed random output gradient."""
    do = torch.randn_like(forward())

    def call() -> None:
        for t in leaves:
            t.grad = None
        forward().backward(do)
    return call


def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: SDPBackend) -> torch.Tensor:
    """Causal softmax attention through torch SDPA, forced to ``backend``."""
    with sdpa_kernel(backend):
        return scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_rows(B: int, T: int, H: int, d: int, dtype: torch.dtype, rep_ms: int, graphs: bool = False) -> list[dict]:
    """measure's rows of causal softmax through SDPA's cuDNN and FlashAttention-2 backends, H heads of d (``graphs``:
    also replayed from CUDA graphs); a backend that refuses the shape on this GPU is said so and left out."""
    sm = {n: projection(B, T, H, d, dtype) for n in ("q", "k", "v")}
    fl_fwd = 4 * B * H * T * T * d / 2
    rows = []
    for name, backend in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("sdpa-flash", SDPBackend.FLASH_ATTENTION)):
        def run(backend=backend):
            return causal_sdpa(sm["q"], sm["k"], sm["v"], backend)
        try:
            r = measure(run, list(sm.values()), rep_ms, graphs=graphs)
        except RuntimeError as err:  # a backend that refuses the shape on this GPU
            print(f"  {name}: unavailable ({str(err).splitlines()[0][:80]})")
            continue
        rows.append(dict(method=name, H=H, d=d, dv=d, flops=(fl_fwd, 3.5 * fl_fwd), **r))
    return rows


def tile_occupancy(rec: torch.Tensor, Tq: int, Tk: int, causal: bool = True) -> float:
    """Share of the causal CELL × CELL tiles (those holding a visible query-key pair) that the forward's record
    ``rec`` (B, H, cells, cells; kernels/threshold/triton_lists.py) marks as holding a surviving weight."""
    nM, nN = rec.shape[-2:]
    rows = torch.arange(nM, device=rec.device)[:, None]
    cols = torch.arange(nN, device=rec.device)[None, :]
    cell = CELL.value
    last = torch.clamp(rows * cell + cell - 1, max=Tq - 1) + (Tk - Tq)  # each cell row's last position
    visible = cols * cell <= last if causal else torch.ones(nM, nN, dtype=torch.bool, device=rec.device)
    return ((rec != 0) & visible).sum().item() / (visible.sum().item() * rec.shape[0] * rec.shape[1])


class Timer:
    """Elapsed milliseconds of a region: CUDA events on a GPU, wall clock (after the work) on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def region(self, out: list):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            yield
            out.append(1e3 * (time.perf_counter() - t0))


def time_replays(fn: Callable[[], None], device: torch.device, reps: int, inner: int = 1, groups: int = 1) -> float:
    """Milliseconds of one call of ``fn`` (which makes ``inner`` calls of what is measured): captured in a CUDA
    graph and replayed ``reps`` times on a GPU (no host time in it), run ``reps`` times eagerly on the CPU. With
    ``groups`` the ``reps`` are timed in that many groups and the median group's mean is returned (a group disturbed by
    something else on the machine does not move it)."""
    timer, elapsed = Timer(device), []
    sizes = [reps // groups + (i < reps % groups) for i in range(groups)]
    sizes = [n for n in sizes if n > 0]
    if device.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        for n in sizes:
            with timer.region(elapsed):
                for _ in range(n):
                    graph.replay()
    else:
        fn()
        for n in sizes:
            with timer.region(elapsed):
                for _ in range(n):
                    fn()
    return statistics.median(ms / (n * inner) for ms, n in zip(elapsed, sizes))
