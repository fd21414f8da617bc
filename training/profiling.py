"""Where a training step's time goes: ``trainer.profile_steps=N`` profiles N optimiser steps after the first
``trainer.profile_skip`` of the attempt (compilation and warm-up done) with torch.profiler and writes
``<run>/profile.md`` (rank 0): per step, the wall time, the GPU's kernel time by kind (matrix products, attention,
fused elementwise and norm kernels, the optimiser, the loss, communication, copies) and the time the GPU had no
kernel running, which is the share the host (Python, launches, synchronisations) costs; then the kernels that take
the most time. On a CPU the same table is made of the operators' own CPU time.

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
        short = name if len(name) <= 90 else name[:89] + "…"
        lines.append(f"| `{short}` | {kind_of(name)} | {us / steps / 1e3:.3f} |")
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
        times = kernel_times(self.profiler.events(), self.device)
        self.profiler = None
        if self.is_main:
            last = self.first + self.steps - 1
            text = (f"# Training step profile: steps {self.first}–{last}\n\n(everything the loop ran from the start "
                    f"of step {self.first} to the end of step {last}: an evaluation or checkpoint in between is "
                    f"counted too)\n\n" + profile_table(times, self.steps, wall_us, self.device) + "\n")
            (self.run_dir / "profile.md").write_text(text)
            print(text, flush=True)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
