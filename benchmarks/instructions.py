"""Instructions per loop iteration of the Gluon kernels for Hopper, from their machine code (no GPU needed).

    python -m benchmarks.instructions                       # every Gluon kernel, paired d = 64 and the score ops
    python -m benchmarks.instructions --kernels score_backward --top 12
    python -m benchmarks.instructions --kernels score_forward score_forward_triton   # both forwards of each op

Each kernel is compiled for sm_90 the way its launcher launches it (a CompileTarget, as benchmarks.registers does),
assembled by the ptxas Triton ships and disassembled by its cuobjdump. In the SASS, every innermost loop that issues
warpgroup products (HGMMA) is a kernel's per-tile loop, one per warpgroup partition and per loop of the source (the
score ops' backward has a masked, an unmasked and a masked one); the table gives, per loop, the instructions in one
iteration, how many are products, the cycles those products keep the tensor cores busy at the dense 16-bit peak
(product_cycles), and the most frequent opcodes. A warp issues at most one instruction per cycle, and its warpgroup
shares each sub-partition's tensor core with the other warpgroup as it shares the issue slots, so where the
instructions outnumber the product cycles (instructions ÷ cycles above 1) the loop may be bound by issuing them: the
score ops' backward was (1.35 in sigmoid mode, the kernel of 5db7311), and its time fell with its instruction count (BENCHMARKS.md, "Fewer
instructions per tile in the score ops' Gluon backward"). It is a hint, not a verdict: the paired backward stood at
1.28, and 12% fewer instructions made it no faster (same section), so something the count leaves out bounds it
(latencies, shared memory: its products over 32 query rows read their shared operand at a higher rate per FLOP).
Static counts: a loop's branches (the forward's skipped tiles) are counted once each.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import triton

_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]\s+)?([A-Z][A-Za-z0-9_.]*)(.*?)\s*(?:/\*[^*]*\*/\s*)?$")
_TARGET = re.compile(r"0x([0-9a-f]+)")


@dataclass
class Loop:
    start: int                  # address of the loop's first instruction (the back branch's target)
    end: int                    # address of the back branch
    opcodes: collections.Counter  # opcode (without modifiers) -> instructions in one iteration
    product_cycles: float = 0.0   # cycles the iteration's products keep one SM sub-partition's tensor core busy

    @property
    def instructions(self) -> int:
        return sum(self.opcodes.values())


_SHAPE = re.compile(r"^HGMMA\.(\d+)x(\d+)x(\d+)\.")
DENSE_FLOP_PER_CYCLE = 1024  # 16-bit products on one of an H100/H200 SM's four sub-partitions (4,096 per SM)


def product_cycles(opcode: str) -> float:
    """Cycles one warpgroup product instruction (HGMMA.MxNxK...) keeps each of the four tensor cores it spans busy, at
    the dense 16-bit peak: 2·M·N·K / 4 / DENSE_FLOP_PER_CYCLE (N / 2 for a 64 × N × 16 product); 0 for others."""
    m = _SHAPE.match(opcode)
    if m is None:
        return 0.0
    M, N, K = map(int, m.groups())
    return 2 * M * N * K / 4 / DENSE_FLOP_PER_CYCLE


def parse_sass(text: str) -> list[tuple[int, str, str]]:
    """(address, opcode with its modifiers, operands) of each instruction in cuobjdump -sass output."""
    found = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            found.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return found


def product_loops(instructions: list[tuple[int, str, str]], product: str = "HGMMA") -> list[Loop]:
    """The innermost loops holding a ``product`` instruction: each backward branch (a BRA to a lower address) spans a
    loop from its target to itself, unless an EXIT or RET lies between; loops containing another such loop are
    dropped. In address order."""
    products = [a for a, op, _ in instructions if op.split(".")[0] == product]
    exits = [a for a, op, _ in instructions if op.split(".")[0] in ("EXIT", "RET")]
    spans = set()
    for address, op, rest in instructions:
        if op.split(".")[0] == "BRA":
            target = _TARGET.search(rest)
            if target and int(target.group(1), 16) < address:
                start = int(target.group(1), 16)
                # a span over an exit is no loop: the retry stubs of mbarrier waits, placed after the code, branch
                # back into it
                if any(start <= p <= address for p in products) and not any(start <= e <= address for e in exits):
                    spans.add((start, address))
    inner = sorted(s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans))
    return [Loop(lo, hi, collections.Counter(op.split(".")[0] for a, op, _ in instructions if lo <= a <= hi),
                 sum(product_cycles(op) for a, op, _ in instructions if lo <= a <= hi))
            for lo, hi in inner]


def sass(compiled, arch: int = 90) -> str:
    """The SASS of a compiled Triton/Gluon kernel: its PTX assembled (benchmarks.registers.assemble) and disassembled
    by Triton's cuobjdump."""
    from benchmarks.registers import TOOLS, assemble  # (it refuses the interpreter on import)

    with tempfile.TemporaryDirectory() as tmp:
        cubin, _ = assemble(compiled, arch, tmp)
        return subprocess.run([os.path.join(TOOLS, "cuobjdump"), "-sass", cubin], check=True, capture_output=True,
                              text=True).stdout


def _one_view(T: int, heads: int) -> tuple:
    """q, k, v and dO of the score ops at d = dv = 64, laid out as the model's projections (benchmarks.registers)."""
    from benchmarks.registers import _inputs

    x = _inputs(1, 64, 64, heads, torch.bfloat16, T)
    return x["q1"], x["k1"], x["v"], torch.zeros_like(x["v"])


def _score_backward(mode: str) -> Callable:
    def compile_(target) -> dict:
        from kernels.sigmoid import launch as sigmoid_launch
        from kernels.softpick import launch as normalized_launch

        T, H = 4096, 12
        q, k, v, do = _one_view(T, H)
        if mode == "sigmoid":
            sigmoid_launch.backward(do, q, k, v, torch.zeros(H), 0.125, True, True, False, target=target)
        else:
            normalized_launch.backward(do, q, k, v, torch.zeros_like(v), torch.zeros(1, H, T),
                                       torch.zeros(H) if mode == "sink" else None, 0.125, True, mode == "sink",
                                       False, gluon=True, target=target)
        return {"backward": _compiled(target, "gluon_bwd")}
    return compile_


def _score_forward(mode: str, gluon: bool = True) -> Callable:
    """The op's Gluon forward, or (``gluon`` False) its Triton forward, the default where the Gluon one is not asked
    for, as the launcher compiles it."""
    def compile_(target) -> dict:
        from kernels.sigmoid import launch as sigmoid_launch
        from kernels.softpick import launch as normalized_launch

        T, H = 4096, 12
        q, k, v, _ = _one_view(T, H)
        if mode == "sigmoid":
            sigmoid_launch.forward(q, k, v, torch.zeros(H), 0.125, True, gluon=gluon, target=target)
        else:
            normalized_launch.forward(q, k, v, torch.zeros(H) if mode == "sink" else None, 0.125,
                                      0.0 if mode == "sink" else 1e-6, True, gluon=gluon, target=target)
        return {"forward": _compiled(target, "gluon_fwd") if gluon else target.compiled["fwd"]}
    return compile_


def _paired(d: int) -> Callable:
    def compile_(target) -> dict:
        from benchmarks.registers import D_MODEL, _inputs
        from kernels.threshold import launch
        from kernels.threshold.options import ThresholdOptions
        from kernels.threshold.tiles import BackwardPlan

        x = _inputs(2, d, 2 * d, D_MODEL // (2 * d), torch.bfloat16, 4096)  # benchmarks.registers' paired layout
        rows = (x["q1"], x["k1"], x["v"], x["q2"], x["k2"])
        fixed = (x["lam"], x["beta"], ThresholdOptions())
        out, *saved = launch.forward(*rows, *fixed, record=True, skip_products=True, target=target)
        launch.backward(torch.zeros_like(out), *rows, *saved, *fixed, True, False, False,
                        plan=BackwardPlan(fused=True), target=target)
        parts = {"forward": _compiled(target, "fused_fwd"), "backward": _compiled(target, "fused")}
        if "fused_dv" in target.compiled:  # q/k 128: dV in a launch of its own
            parts["backward, dV launch"] = target.compiled["fused_dv"]
        return parts
    return compile_


def _compiled(target, part: str):
    """The compiled Gluon kernel the launcher kept as ``part``; an error where it is missing: the launcher fell back
    to its Triton kernels because the Gluon one did not compile (its warning says why)."""
    if part not in target.compiled:
        raise RuntimeError(f"the Gluon kernel '{part}' was not compiled (compiled: {sorted(target.compiled)}); the "
                           "launcher's warning above says why")
    return target.compiled[part]


KERNELS: dict[str, list[tuple[str, Callable]]] = {
    "score_backward": [(f"score ops' backward, {m} mode", _score_backward(m)) for m in ("sigmoid", "sink", "softpick")],
    "score_forward": [(f"score ops' forward, {m} mode", _score_forward(m)) for m in ("sigmoid", "sink", "softpick")],
    "score_forward_triton": [(f"score ops' Triton forward, {m} mode", _score_forward(m, gluon=False))
                             for m in ("sigmoid", "sink", "softpick")],
    "paired": [(f"paired TDA, q/k {d}", _paired(d)) for d in (64, 128)],
}


def rows_for(names: list[str], arch: int = 90) -> list[tuple[str, int, Loop]]:
    """(kernel, loop index, loop) for each product loop of each kernel named (KERNELS' keys)."""
    from benchmarks.registers import compiling_for  # (it refuses the interpreter on import)

    rows = []
    for name in names:
        for label, compile_ in KERNELS[name]:
            with compiling_for(arch) as target:
                parts = compile_(target)
            for part, compiled in parts.items():
                rows += [(f"{label}: {part}", i, loop)
                         for i, loop in enumerate(product_loops(parse_sass(sass(compiled, arch))))]
    return rows


def format_table(rows: list[tuple[str, int, Loop]], top: int = 8) -> str:
    lines = ["| kernel | loop (address) | instructions per iteration | products (HGMMA) | tensor-core cycles | "
             "instructions ÷ cycles | most frequent |", "|---|---|---|---|---|---|---|"]
    for kernel, i, loop in rows:
        common = ", ".join(f"{op} {n}" for op, n in loop.opcodes.most_common(top))
        ratio = f"{loop.instructions / loop.product_cycles:.2f}" if loop.product_cycles else ""
        lines.append(f"| {kernel} | {i} ({loop.start:#x}) | {loop.instructions} | {loop.opcodes['HGMMA']} | "
                     f"{loop.product_cycles:.0f} | {ratio} | {common} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--arch", type=int, default=90, help="compute capability ×10 (90: H100/H200)")
    parser.add_argument("--top", type=int, default=8, help="opcodes listed per loop")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on"):
        sys.exit("benchmarks.instructions compiles the kernels: run it without TRITON_INTERPRET=1")
    from benchmarks.registers import print_and_write

    rows = rows_for(args.kernels, args.arch)
    table = (f"Triton {triton.__version__}, sm_{args.arch}a, bf16, d = 64 unless said; SASS from Triton's ptxas and "
             f"cuobjdump; per warp, one iteration of each innermost loop with warpgroup products\n\n"
             + format_table(rows, args.top))
    print_and_write(table, args.out)


if __name__ == "__main__":
    main()
