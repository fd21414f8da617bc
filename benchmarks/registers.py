"""Registers and spills of the threshold-attention kernels, compiled for an NVIDIA GPU on any machine (no GPU needed).

    python -m benchmarks.registers                            # paired TDA and TRA, d = 64, bf16, sm_90
    python -m benchmarks.registers --head-dims 64 128 --defaults-only --out registers.md

Each kernel (forward, dK/dV with either dQ path, dQ, and dK and dV in launches of their own; for sm_90 and paired
16-bit d = 64, the Gluon forward and fused backward) is compiled the way kernels/threshold/launch.py launches it (its
launchers given a CompileTarget), for the head layouts benchmarks.attention times, at every tile candidate of
kernels/threshold/tiles.py (first = default; ``--tma``: every candidate reading q, k, v, dO through tensor
descriptors), and the report of the ptxas that Triton ships is tabulated: registers per thread, bytes of spill stores
and shared memory. On an H200 the spilling tiles were the slow ones (BENCHMARKS.md), so this shows register pressure
before any GPU time is spent. The code is what the Triton installed here produces; another Triton version compiles
differently (compile with the version the GPU machine runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on"):
    sys.exit("benchmarks.registers compiles the kernels: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from kernels.common import CompileTarget  # noqa: E402
from kernels.threshold import launch  # noqa: E402
from kernels.threshold.options import ThresholdOptions  # noqa: E402
from kernels.threshold.tiles import (BackwardPlan, TileConfig, backward_configs, dq_configs, dv_configs,  # noqa: E402
                                     forward_configs)
from kernels.inputs import MAX_HEAD_DIM  # noqa: E402

D_MODEL = 768


class _TargetDriver:
    """A Triton driver that names a fixed CUDA target and launches nothing."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: Optional[int] = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


@contextmanager
def compiling_for(arch: int) -> Iterator[CompileTarget]:
    """Inside, Triton compiles for sm_<arch> on this machine, GPU or none (its active driver names that target);
    yields the CompileTarget to give the launchers, which then compile every kernel on CPU tensors and run none."""
    previous = driver._active  # no public getter that does not create the default (GPU) driver
    driver.set_active(_TargetDriver(arch))
    try:
        yield CompileTarget(arch)
    finally:
        driver.set_active(previous)


@dataclass
class Usage:
    registers: int
    spill_bytes: int
    shared_kib: float


TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")  # Triton's ptxas, cuobjdump


def assemble(compiled, arch: int, directory: str) -> tuple[str, str]:
    """The compiled kernel's PTX assembled by Triton's ptxas -v into ``directory``: (the cubin's path, the report)."""
    src, cubin = os.path.join(directory, "kernel.ptx"), os.path.join(directory, "kernel.cubin")
    with open(src, "w") as f:
        f.write(compiled.asm["ptx"])
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    report = subprocess.run([os.path.join(TOOLS, "ptxas"), "-v", f"-arch={gpu}", src, "-o", cubin],
                            capture_output=True, text=True, check=True).stderr
    return cubin, report


def ptxas_usage(compiled, arch: int) -> Usage:
    """Registers and spill stores from ptxas -v on the compiled kernel's PTX; shared memory from Triton."""
    with tempfile.TemporaryDirectory() as tmp:
        _, report = assemble(compiled, arch, tmp)
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas report: {report[-300:]}")
    return Usage(int(registers.group(1)), int(spills.group(1)), compiled.metadata.shared / 1024)


def _inputs(views: int, d: int, dv: int, heads: int, dtype: torch.dtype, T: int) -> dict:
    """CPU tensors laid out as the model makes them ((B, T, heads, d) viewed as (B, heads, T, d)); only
    their dtypes, strides and alignment reach the compiler."""
    def projection(width: int) -> torch.Tensor:
        return torch.zeros(1, T, heads, width, dtype=dtype).transpose(1, 2)
    x = {"q1": projection(d), "k1": projection(d), "v": projection(dv), "q2": None, "k2": None, "lam": None}
    if views == 2:
        x.update(q2=projection(d), k2=projection(d), lam=torch.full((heads,), 0.5))
    x["beta"] = torch.ones(heads)
    return x


def rows_for(views: int, d: int, dtype: torch.dtype, arch: int, defaults_only: bool, T: int = 4096,
             tma: bool = False, skip: bool = True) -> list[dict]:
    """One row per (kernel, path, tile): the layout benchmarks.attention times (paired TDA: d_model/(2d) heads,
    v of 2d; one view: d_model/d heads of d), with exact skipping (the forward recording occupied tiles, the backward
    visiting its lists) unless ``skip`` is False. No rows for a paired layout whose v of 2d is wider than the
    kernels take (MAX_HEAD_DIM): no input has it."""
    dv, heads = (2 * d, D_MODEL // (2 * d)) if views == 2 else (d, D_MODEL // d)
    if dv > MAX_HEAD_DIM:
        return []
    x = _inputs(views, d, dv, heads, dtype, T)
    two, size = views == 2, torch.tensor([], dtype=dtype).element_size()
    fixed = (x["lam"], x["beta"], ThresholdOptions())
    label = f"{'TDA paired' if two else 'one view'} {heads}×{d} (v {dv})"
    rows = []

    def candidates(table: list[TileConfig]) -> list[TileConfig]:
        table = [dataclasses.replace(c, tma=True) for c in table] if tma else table
        return table[:1] if defaults_only else table

    with compiling_for(arch) as target:
        def record(part: str, path: str, cfg: TileConfig, default: bool) -> None:
            usage = ptxas_usage(target.compiled[part], arch)
            rows.append(dict(layout=label, kernel=part, path=path, cfg=cfg, default=default, usage=usage))

        out, *saved = launch.forward(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], *fixed, record=skip,
                                     skip_products=skip, target=target)
        do = torch.zeros_like(out)
        gluon_fwd = launch.gluon_forward_fits(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], target)
        if gluon_fwd:
            from kernels.threshold.gluon_forward import TILE as FORWARD_TILE, keys_per_stage

            # the keys per ring stage at this width (32 at q/k 128), not the d = 64 default's
            record("fused_fwd", "forward (Gluon)", dataclasses.replace(FORWARD_TILE, block_n=keys_per_stage(d)),
                   not tma)
        for i, cfg in enumerate(candidates(forward_configs(d, dv, two, size))):
            launch.forward(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], *fixed, record=skip, skip_products=skip,
                           tile=cfg, target=target)
            record("fwd", "forward", cfg, i == 0 and not tma and not gluon_fwd)
        grads = (do, x["q1"], x["k1"], x["v"], x["q2"], x["k2"], *saved, *fixed, two, False, False)

        def backward(plan: BackwardPlan) -> None:
            launch.backward(*grads, plan=plan, target=target)

        fused = (launch.fused_paired_backward(d, dv)
                 and launch.gluon_backward_fits(do, x["q1"], x["k1"], x["v"], x["q2"], x["k2"], target))
        if fused:
            from kernels.threshold.gluon_backward import TILE, passes

            backward(BackwardPlan(fused=True))
            if "fused_dv" in target.compiled:  # q/k 128: dK and dQ in one launch, dV in another (passes())
                (_, _, first), (_, _, second) = passes(d, dv)
                record("fused", "dK/dQ fused (Gluon)", dataclasses.replace(TILE, num_stages=first), not tma)
                record("fused_dv", "dV apart (Gluon)", dataclasses.replace(TILE, num_stages=second), not tma)
            else:
                record("fused", "dK/dV/dQ fused (Gluon)", TILE, not tma)
        default_atomic = launch.dq_atomic(two)
        for atomic in (default_atomic, not default_atomic):
            for i, cfg in enumerate(candidates(backward_configs(d, dv, two, size))):
                backward(BackwardPlan(fused=False, atomic_dq=atomic, dkdv_tile=cfg))
                record("dkdv", "dK/dV, dQ by atomics" if atomic else "dK/dV, dQ kernel apart", cfg,
                       i == 0 and atomic == default_atomic and not tma and not fused)
        for i, cfg in enumerate(candidates(dq_configs(d, dv, two, size))):
            backward(BackwardPlan(fused=False, atomic_dq=False, dq_tile=cfg))
            record("dq", "dQ kernel", cfg, i == 0 and not default_atomic and not tma and not fused)
        apart = launch.dv_pass_apart(two)
        for i, cfg in enumerate(candidates(backward_configs(d, dv, two, size))):
            backward(BackwardPlan(fused=False, atomic_dq=True, dv_apart=True, dkdv_tile=cfg))
            record("dkdv", "dK (dV apart), dQ by atomics", cfg, i == 0 and apart and default_atomic and not tma)
        for i, cfg in enumerate(candidates(dv_configs(d, dv, two, size))):
            backward(BackwardPlan(fused=False, atomic_dq=True, dv_apart=True, dv_tile=cfg))
            record("dv", "dV apart", cfg, i == 0 and apart and default_atomic and not tma)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| layout | kernel | tile (query rows × keys), warps, stages | default | registers | spill stores (bytes) "
             "| shared KiB |", "|" + "---|" * 7]
    for r in rows:
        c, u = r["cfg"], r["usage"]
        lines.append(f"| {r['layout']} | {r['path']} | {c.describe()} | {'yes' if r['default'] else ''} | {u.registers} "
                     f"| {u.spill_bytes} | {u.shared_kib:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64])
    parser.add_argument("--views", type=int, nargs="+", choices=[1, 2], default=[2, 1])
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--arch", type=int, default=90, help="compute capability ×10 (90: H100/H200)")
    parser.add_argument("--defaults-only", action="store_true", help="only the first (default) tile of each table")
    parser.add_argument("--tma", action="store_true", help="the kernels read q, k, v, dO through tensor descriptors")
    parser.add_argument("--no-skip", action="store_true",
                        help="the kernels without exact skipping (no record in the forward, no lists in the backward)")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    rows = []
    for d in args.head_dims:
        for views in args.views:
            found = rows_for(views, d, dtype, args.arch, args.defaults_only, tma=args.tma, skip=not args.no_skip)
            rows += found
            print(f"compiled: {views} view(s), d = {d}" if found else
                  f"skipped: {views} view(s), d = {d} (paired v of {2 * d} > {MAX_HEAD_DIM})", file=sys.stderr, flush=True)
    table = (f"Triton {triton.__version__}, sm_{args.arch}, {args.dtype}, "
             f"{'without' if args.no_skip else 'with'} exact skipping; registers and spill stores from ptxas -v\n\n"
             + format_table(rows))
    print_and_write(table, args.out)


def print_and_write(table: str, out: Optional[str]) -> None:
    """The table on stdout and, given a path, in that file too (the compile-only tools' --out)."""
    print(table)
    if out:
        with open(out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
