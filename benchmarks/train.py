"""Training throughput: tokens/s, MFU and peak memory of train.py for attentions × GPU counts × strategies.

    python -m benchmarks.train --attentions softmax tda --gpus 1 2 --strategies ddp --steps 200 \
        --out bench_train.md -- model=gpt2_162m data.tokenizer=gpt2

Each point is one `torchrun --standalone --nproc_per_node=<gpus> train.py ...` with a fixed micro-batch per
GPU (weak scaling: the global batch grows with the GPU count); arguments after `--` go to every run.
Throughput is the median of the logged windows after the first `--skip` (warm-up, compilation). Scaling
efficiency is tokens/s on N GPUs over N × tokens/s on one GPU, for the same attention and strategy.
Prints a markdown table and writes it to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def run_point(attention: str, gpus: int, strategy: str, args, runs_root: Path) -> dict:
    name = f"{attention}-{strategy}-{gpus}gpu"
    batch = args.micro_batch * args.accumulation * gpus
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           str(ROOT / "train.py"), f"attention={attention}", f"trainer.strategy={strategy}", f"name={name}",
           f"runs_root={runs_root}", f"trainer.batch_size={batch}", f"trainer.micro_batch_size={args.micro_batch}",
           f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}", "trainer.eval_batches=2",
           f"trainer.checkpoint_every={10 * args.steps}", "trainer.keep_last=1", f"logger.log_every={args.log_every}",
           "logger.progress=false", *args.overrides]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
        return {"attention": attention, "gpus": gpus, "strategy": strategy, "error": result.returncode}
    records = [json.loads(line) for line in (runs_root / name / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "tokens_per_s" in r][args.skip:]
    seq_len = OmegaConf.load(runs_root / name / "config.yaml").model.seq_len
    point = {"attention": attention, "gpus": gpus, "strategy": strategy, "global_batch": f"{batch} x {seq_len}",
             "tokens_per_s": statistics.median(r["tokens_per_s"] for r in windows),
             "final_loss": records[-1].get("loss"), "wall_s": wall}
    if windows and "mfu" in windows[-1]:
        point["mfu"] = statistics.median(r["mfu"] for r in windows)
    if windows and "peak_memory_gb" in windows[-1]:
        point["peak_memory_gb"] = max(r["peak_memory_gb"] for r in windows)
    return point


def table(points: list[dict]) -> str:
    single = {(p["attention"], p["strategy"]): p["tokens_per_s"] for p in points if p["gpus"] == 1 and "error" not in p}
    softmax = {(p["gpus"], p["strategy"]): p["tokens_per_s"] for p in points
               if p["attention"] == "softmax" and "error" not in p}
    lines = ["| attention | strategy | GPUs | global batch | tokens/s | MFU | peak memory (GB) | scaling eff. | vs softmax |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        if "error" in p:
            lines.append(f"| {p['attention']} | {p['strategy']} | {p['gpus']} | failed (exit {p['error']}) | | | | | |")
            continue
        base = single.get((p["attention"], p["strategy"]))
        eff = f"{p['tokens_per_s'] / (p['gpus'] * base):.1%}" if base else ""
        ref = softmax.get((p["gpus"], p["strategy"]))
        ratio = f"{p['tokens_per_s'] / ref:.3f}" if ref else ""
        mfu = f"{p['mfu']:.1%}" if "mfu" in p else ""
        mem = f"{p['peak_memory_gb']:.1f}" if "peak_memory_gb" in p else ""
        lines.append(f"| {p['attention']} | {p['strategy']} | {p['gpus']} | {p['global_batch']} | "
                     f"{p['tokens_per_s']:,.0f} | {mfu} | {mem} | {eff} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attentions", nargs="+", default=["softmax", "tda"])
    parser.add_argument("--gpus", nargs="+", type=int, default=[1])
    parser.add_argument("--strategies", nargs="+", default=["ddp"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences per GPU per forward")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per step on each GPU")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--skip", type=int, default=2, help="logged windows to drop (warm-up)")
    parser.add_argument("--out", type=Path, default=Path("bench_train.md"))
    parser.add_argument("overrides", nargs="*", help="train.py overrides (after --)")
    args = parser.parse_args()
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies:
            for gpus in args.gpus:
                for attention in args.attentions:
                    point = run_point(attention, gpus, strategy, args, Path(tmp))
                    points.append(point)
                    print(json.dumps(point), flush=True)
    text = table(points)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
