"""Where a training step's time goes: ``trainer.profile_steps=N`` profiles N optimiser steps after the first
``trainer.profile_skip`` of the attempt (compilation and warm-up done) with torch.profiler and writes
``<run>/profile.md`` (rank 0): per step, the wall time, the GPU's kernel time by kind (matrix products, attention,
fused elementwise and norm kernels, the optimiser, the loss, communication, copies) and the time the GPU had no
kernel running, which is the share the host (Python, launches, synchronisations) costs; then the kernels that take
the most time; then where the GPU waited: its idle stretches between kernels, by the kernel each one waited for (the
one whose launch came late). On a CPU the kinds' table is made of the operators' own CPU time, and there is no
waiting to show.

Why kinds and not kernels: MFU falls short for a reason of one kind (the products run below peak, or small fused
kernels add up, or the GPU waits for the host), and the remedy depends on which. The kinds are read from kernel and
operator names (KINDS, first match wins), so a kernel of a new library falls under "other" until it is named here.
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

import torch

# (kind, pattern of kernel or operator names), first match wins; matched case-insensitively
KINDS = (
    ("communication", r"nccl|all_reduce|allreduce|all_gather|reduce_scatter|c10d"),
    ("optimizer and clipping", r"adam|multi_tensor|foreach|norm_functor|lpnorm"),
    ("loss", r"nll_loss|cross_entropy|log_softmax|logsumexp"),
    # a compiled kernel's name lists every operation its inputs and outputs come from: a dtype cast ("_to_copy"), or
    # the attention op it feeds or reads (TDA's per-head norm; copies of q and k into the layout the op was traced
    # with). Its work is elementwise, not attention's (the profile that found RoPE's table recomputed in such kernels
    # first filed them under copies); its templates are matrix products
    ("fused elementwise and norms (compiled)", r"^triton_(?!tem_)"),
    ("attention", r"flash|fmha|cudnn|sdpa|attention|normalized_(fwd|dkdv|dq)|paired_(forward|backward)|dkdv|"
                  r"dq_kernel|dq_finish|row_delta|inverse_norm|tile_lists|sigmoid_(fwd|dq)|softpick|sink_softmax|"
                  r"_partial_kernel|combine_kernel"),
    ("matrix products", r"gemm|gemv|cutlass|xmma|nvjet|cublas|matmul|wgmma|sm90_|triton_tem|aten::(mm|addmm|bmm)\b"),
    ("copies and fills", r"memcpy|memset|copy|fill|aten::(cat|to|zero_|zeros|empty)\b"),
    ("elementwise and norms (eager)", r"elementwise|reduce_kernel|vectorized|unrolled|norm|aten::"),
)


def kind_of(name: str) -> str:
    """The kind of a kernel or operator called ``name`` (KINDS), else "other"."""
    return next((kind for kind, pattern in KINDS if re.search(pattern, name, re.IGNORECASE)), "other")


def gpu_kernels(events) -> dict[str, tuple[float, int]]:
    """{kernel name: (µs of device time, launches)} over the GPU kernels among profiler ``events`` (objects with
    ``name``, ``device_type`` and ``device_time_total`` in µs); host events are left out."""
    out: dict[str, tuple[float, int]] = {}
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            us, n = out.get(e.name, (0.0, 0))
            out[e.name] = (us + e.device_time_total, n + 1)
    return out


def kernel_times(events, device: torch.device) -> dict[str, float]:
    """µs by kernel (CUDA: each GPU kernel's device time, ``gpu_kernels``) or by operator (CPU: each operator's own
    CPU time, which counts a nested operator once) over profiler ``events``."""
    if device.type == "cuda":
        return {name: us for name, (us, _) in gpu_kernels(events).items()}
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CPU and e.self_cpu_time_total > 0:
            out[e.name] += e.self_cpu_time_total
    return dict(out)


GAP_US = 5.0  # the shortest stretch without a kernel that gap_table counts (shorter ones are the launch pipeline's)


def gpu_intervals(events) -> list[tuple[float, float, str]]:
    """(start µs, end µs, name) of every GPU kernel, copy and fill among profiler ``events`` (objects with ``name``,
    ``device_type`` and ``time_range``), in order of start."""
    return sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                  if e.device_type == torch.autograd.DeviceType.CUDA)


def idle_gaps(intervals: list[tuple[float, float, str]], min_us: float = GAP_US) -> list[tuple[float, str, str]]:
    """The stretches of at least ``min_us`` between the first kernel's start and the last one's end in which no
    kernel ran on any stream, from ``intervals`` (gpu_intervals): (µs, the kernel that ended last before the stretch,
    the kernel that ended it). The kernel after a gap is the one the GPU waited for: its launch came late (the host
    was behind, or waited on a synchronisation)."""
    gaps = []
    if not intervals:
        return gaps
    end, last = intervals[0][1], intervals[0][2]
    for start, stop, name in intervals[1:]:
        if start - end >= min_us:
            gaps.append((start - end, last, name))
        if stop > end:
            end, last = stop, name
    return gaps


def _short(name: str, width: int = 70) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def gap_table(intervals: list[tuple[float, float, str]], steps: int, top: int = 10, min_us: float = GAP_US) -> str:
    """Markdown: where the GPU waited between kernels (idle_gaps) over ``steps`` steps: the total, the kernels it
    waited for most (summed over their gaps), and the ``top`` longest gaps with the kernels on either side."""
    gaps = idle_gaps(intervals, min_us)
    total = sum(us for us, _, _ in gaps)
    lines = [f"{len(gaps) / steps:.1f} stretches per step of at least {min_us:g} µs with no kernel running between "
             f"kernels, {total / steps / 1e3:.3f} ms per step in all (shorter gaps, and the time before the first "
             "kernel or after the last, are not counted here)."]
    if not gaps:
        return lines[0]
    waited: dict[str, list[float]] = defaultdict(list)
    for us, _, after in gaps:
        waited[after].append(us)
    lines += ["", f"| the kernel the GPU waited for ({top} at most, the longest waits in all first) | kind | "
              "waits per step | ms per step | longest (µs) |", "|---|---|---|---|---|"]
    for name, waits in sorted(waited.items(), key=lambda kv: -sum(kv[1]))[:top]:
        lines.append(f"| `{_short(name)}` | {kind_of(name)} | {len(waits) / steps:.1f} | "
                     f"{sum(waits) / steps / 1e3:.3f} | {max(waits):.1f} |")
    lines += ["", f"| the {top} longest gaps, µs | after the kernel | before the kernel |", "|---|---|---|"]
    for us, before, after in sorted(gaps, key=lambda g: -g[0])[:top]:
        lines.append(f"| {us:.1f} | `{_short(before, 45)}` | `{_short(after, 45)}` |")
    return "\n".join(lines)


def profile_table(times: dict[str, float], steps: int, wall_us: float, device: torch.device, top: int = 25) -> str:
    """Markdown: the kinds' µs per step and share of the wall time, the idle time (wall − kernels, CUDA), then the
    ``top`` kernels or operators by time."""
    by_kind: dict[str, float] = defaultdict(float)
    for name, us in times.items():
        by_kind[kind_of(name)] += us
    busy = sum(times.values())
    step_us = wall_us / steps
    what = "GPU kernels" if device.type == "cuda" else "operators' own CPU time"
    lines = [f"{steps} steps profiled: {step_us / 1e3:.2f} ms per step (wall), {what} {busy / steps / 1e3:.2f} ms "
             "per step", "", "| kind | ms per step | share of the step |", "|---|---|---|"]
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {us / steps / 1e3:.3f} | {100 * us / wall_us:.1f}% |")
    if device.type == "cuda":
        idle = max(0.0, wall_us - busy)
        lines.append(f"| no kernel running (host, launches, waits) | {idle / steps / 1e3:.3f} | "
                     f"{100 * idle / wall_us:.1f}% |")
    lines += ["", f"| the {top} longest {'kernels' if device.type == 'cuda' else 'operators'} | kind | ms per step |",
              "|---|---|---|"]
    for name, us in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| `{_short(name, 90)}` | {kind_of(name)} | {us / steps / 1e3:.3f} |")
    return "\n".join(lines)


class StepProfiler:
    """Profiles ``steps`` optimiser steps after the first ``skip`` of this attempt; ``after_step`` is called after
    every step and, once the last profiled one is done, writes ``<run_dir>/profile.md`` and prints it (rank 0).
    Off (``steps`` 0): nothing is imported or profiled."""

    def __init__(self, steps: int, skip: int, device: torch.device, run_dir: Path, is_main: bool):
        self.steps, self.skip, self.device, self.run_dir, self.is_main = int(steps), int(skip), device, run_dir, is_main
        self.seen = 0
        self.profiler = None
        self.start = 0.0
        self.first = 0

    def before_step(self, step: int) -> None:
        """Called before optimiser step ``step`` (1-based, as the run counts it)."""
        if self.steps and self.seen == self.skip:
            self.first = step
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self._sync()
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
            self.start = time.perf_counter()

    def after_step(self) -> None:
        self.seen += 1
        if self.profiler is None or self.seen < self.skip + self.steps:
            return
        self._sync()
        wall_us = 1e6 * (time.perf_counter() - self.start)
        self.profiler.__exit__(None, None, None)
        events = self.profiler.events()
        times = kernel_times(events, self.device)
        self.profiler = None
        if self.is_main:
            last = self.first + self.steps - 1
            text = (f"# Training step profile: steps {self.first}–{last}\n\n(everything the loop ran from the start "
                    f"of step {self.first} to the end of step {last}: an evaluation or checkpoint in between is "
                    f"counted too)\n\n" + profile_table(times, self.steps, wall_us, self.device) + "\n")
            if self.device.type == "cuda":
                text += ("\n**Where the GPU waited.** " + gap_table(gpu_intervals(events), self.steps) + "\n")
            (self.run_dir / "profile.md").write_text(text)
            print(text, flush=True)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
