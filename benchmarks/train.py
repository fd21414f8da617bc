"""Training throughput: tokens/s, MFU and peak memory of train.py over attentions × settings × strategies × GPU
counts × context-parallel sizes.

    python -m benchmarks.train --attentions softmax tda --strategies single --steps 200 --micro-batch 32 \
        --settings "" "trainer.compile=model" "trainer.compile=model trainer.loss_chunk=8192" \
        --out bench_train.md -- +experiment=paper_small

Each point is one `torchrun --standalone --nproc_per_node=<gpus> train.py ...`, with the overrides after `--`, then
the point's own setting (`--settings`: each a space-separated list of train.py overrides, "" for none; the table names
a point by it), then what the harness fixes: the attention, strategy, `trainer.context_parallel`, a micro-batch of
`--micro-batch` sequences per data-parallel rank, `--accumulation` micro-batches per step, the step count and
logging. The global batch is micro-batch × accumulation × GPUs / context-parallel size: weak scaling over data
parallelism, while a context-parallel group shares its sequences. A point is skipped where it cannot run: strategy
single on more than one GPU, or a context-parallel size that does not divide the GPU count or is above 1 on one GPU.

tokens/s is the median of the logged windows after the first `--skip` (warm-up, compilation). Each window ends
with a logged step, whose loss is read, which waits for the GPU, and the next step then starts on an idle GPU while
the host issues its first kernels. A short window (`--log-every 5`) charges that restart to one step in five, and
more to an attention whose kernels take the host longer to issue; windows of 25 steps or more make it rare (paper_small
logs every 100 steps; BENCHMARKS.md, "Windows of 25 steps at 8k"). MFU is train.py's
(training/mfu.py: the same FLOP count for every attention, so softmax and TDA compare by it). Scaling efficiency is
tokens/s on N GPUs over N × tokens/s on one GPU, for the same attention and setting (and strategy, where one GPU
ran it); "vs softmax" is the ratio to softmax at the same setting, strategy, GPU count and context-parallel size. On
a machine without a GPU pass `trainer.device=cpu` (and a tiny model): the processes then run on gloo, and MFU and
memory stay blank. Prints one JSON line per point as it finishes, then a markdown table, also written to --out.

``--repeats N`` runs the whole grid N times, round after round (each point's run names end in ``-r<round>``): a
point's tokens/s and MFU are then the medians of its rounds, with their range beside the tokens/s, and "vs softmax"
the median (and range) of each round's own ratio to softmax in the same round, so that a drift of the machine
between rounds does not enter a ratio. One run of a point gives one number; two attentions a few percent apart need
several to be told apart.

``--profile N`` trains each point N steps more than ``--steps``, profiles those (train.py's ``trainer.profile_steps``,
training/profiling.py) and adds, per point, where a step's time goes: matrix products, attention, fused kernels, the
optimiser, the loss, copies, and the time the GPU had no kernel to run. tokens/s comes from the windows that end by
step ``--steps``, before the profiler starts: profiled steps run slower, and the profiler's stop (reading and sorting
every event, seconds) would fall inside the window that logs the last of them.

Trained weights (where a threshold model's sparsity exists, a random one has little): `--init-from tda=runs/<run>`
starts every point of that attention from the run's newest checkpoint (train.py's `init_from`), and
`--train-first "<train.py overrides>"` first trains each attention without one (`python train.py attention=<a>
<overrides>`, e.g. `"+experiment=paper_small trainer.max_steps=3000"`) and starts its points from it; the table
names the weights beside the attention. The points may then train at another length than the weights did
(`model.seq_len=8192` after `--`: RoPE and τ take any position).

    python -m benchmarks.train --attentions softmax tda --steps 100 --micro-batch 4 \
        --train-first "+experiment=paper_small trainer.max_steps=3000" \
        --settings "trainer.compile=model" -- +experiment=paper_small model.seq_len=8192
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from benchmarks.runs import train_run

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Point:
    """One measurement: an attention under a setting (train.py overrides), strategy, GPU count and context size."""

    attention: str
    setting: str
    strategy: str
    gpus: int
    context: int

    @property
    def runnable(self) -> bool:
        if self.strategy == "single" and self.gpus != 1:
            return False
        return self.gpus % self.context == 0 and (self.context == 1 or self.gpus > 1)

    def label(self) -> dict:
        return {"attention": self.attention, "setting": self.setting or "-", "strategy": self.strategy,
                "gpus": self.gpus, "context_parallel": self.context}


def points(args) -> list[Point]:
    """Every runnable point of the grid, the attentions innermost so that each ratio to softmax comes from
    neighbouring runs."""
    grid = [Point(a, s, strategy, g, c) for s in args.settings for strategy in args.strategies for g in args.gpus
            for c in args.context_parallel for a in args.attentions]
    return [p for p in grid if p.runnable]


def command(point: Point, index: int, args, runs_root: Path, init_from: Path | None = None,
            round_: int | None = None) -> tuple[list[str], str]:
    """(torchrun command line, run name) of a point; ``init_from``: a run whose weights it starts from; ``round_``:
    the round of --repeats (its number ends the run's name)."""
    name = f"{point.attention}-{point.strategy}-{point.gpus}gpu-cp{point.context}-s{index}"
    if round_ is not None:
        name += f"-r{round_}"
    batch = args.micro_batch * args.accumulation * point.gpus // point.context
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={point.gpus}",
           str(ROOT / "train.py"), *args.overrides, *shlex.split(point.setting), f"attention={point.attention}",
           f"trainer.strategy={point.strategy}", f"trainer.context_parallel={point.context}", f"name={name}",
           f"runs_root={runs_root}", f"trainer.batch_size={batch}", f"trainer.micro_batch_size={args.micro_batch}",
           f"trainer.max_steps={args.steps + args.profile}", f"trainer.eval_every={args.steps + args.profile}",
           "trainer.eval_batches=2", f"trainer.checkpoint_every={10 * args.steps}", "trainer.keep_last=1",
           f"logger.log_every={args.log_every}", "logger.progress=false", "logger.wandb.mode=disabled"]
    if init_from is not None:
        cmd.append(f"init_from={init_from}")
    if args.profile:
        cmd += [f"trainer.profile_steps={args.profile}", f"trainer.profile_skip={args.steps}"]
    return cmd, name


def timed_windows(records: list[dict], steps: int, skip: int) -> list[dict]:
    """The logged windows a point's tokens/s is the median of: those that end by step ``steps`` (the profiled steps
    after them, and the evaluation at the end, are not timed), less the first ``skip`` (warm-up, compilation); a run
    too short to skip its warm-up reports its last window."""
    logged = [r for r in records if "tokens_per_s" in r and r["step"] <= steps]
    return logged[skip:] or logged[-1:]


def run_point(point: Point, index: int, args, runs_root: Path, init_from: Path | None = None,
              round_: int | None = None) -> dict:
    """Train one point to the end and summarise its logged windows (``round_``: the round of --repeats, kept in the
    result)."""
    cmd, name = command(point, index, args, runs_root, init_from, round_)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    rounds = {} if round_ is None else {"round": round_}
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
        return {**point.label(), **rounds, "error": result.returncode}
    records = [json.loads(line) for line in (runs_root / name / "metrics.jsonl").read_text().splitlines()]
    windows = timed_windows(records, args.steps, args.skip)
    config = OmegaConf.load(runs_root / name / "config.yaml")
    out = {**point.label(), **({"weights": init_from.name} if init_from is not None else {}),
           "global_batch": f"{config.trainer.batch_size} x {config.model.seq_len}",
           "tokens_per_s": statistics.median(r["tokens_per_s"] for r in windows),
           "final_loss": records[-1].get("loss"), "wall_s": wall, **rounds}
    if "mfu" in windows[-1]:
        out["mfu"] = statistics.median(r["mfu"] for r in windows)
    if "peak_memory_gb" in windows[-1]:
        out["peak_memory_gb"] = max(r["peak_memory_gb"] for r in windows)
    profile = runs_root / name / "profile.md"
    if profile.is_file():
        out["profile"] = profile.read_text().split("\n", 1)[1].strip()
    return out


def _key(r: dict) -> tuple:
    """A result's point: attention, setting, strategy, GPUs, context-parallel size (its round left out)."""
    return r["attention"], r["setting"], r["strategy"], r["gpus"], r["context_parallel"]


def combined(results: list[dict]) -> list[dict]:
    """One row per point from the rounds of --repeats (results without rounds are returned as they are): tokens/s and
    MFU the medians of the rounds that ran, "tokens_rounds" each round's tokens/s, peak memory the largest,
    "rounds" how many ran, and "ratios" each round's tokens/s over softmax's in the same round (where both ran); a
    point none of whose rounds ran is its first failure."""
    if not any("round" in r for r in results):
        return results
    def same_round(r: dict) -> tuple:  # the point's setting, strategy, GPUs, context size and round
        return (*_key(r)[1:], r["round"])

    by_point: dict[tuple, list[dict]] = {}
    for r in results:
        by_point.setdefault(_key(r), []).append(r)
    softmax = {same_round(r): r["tokens_per_s"] for r in results if r["attention"] == "softmax" and "error" not in r}
    rows = []
    for runs in by_point.values():
        done = [r for r in runs if "error" not in r]
        if not done:
            rows.append(runs[0])
            continue
        speeds = [r["tokens_per_s"] for r in done]
        row = {k: v for k, v in done[0].items() if k not in ("round", "profile", "mfu", "peak_memory_gb")}
        row.update(tokens_per_s=statistics.median(speeds), tokens_rounds=speeds, rounds=len(done),
                   ratios=[r["tokens_per_s"] / softmax[same_round(r)] for r in done if same_round(r) in softmax])
        if all("mfu" in r for r in done):
            row["mfu"] = statistics.median(r["mfu"] for r in done)
        if all("peak_memory_gb" in r for r in done):
            row["peak_memory_gb"] = max(r["peak_memory_gb"] for r in done)
        rows.append(row)
    return rows


def profiles(results: list[dict]) -> str:
    """Markdown: each point's step profile (train.py's profile.md), under the point's name (with --repeats, the
    last round's); "" when none was taken."""
    last = {}
    for r in results:
        if "profile" in r:
            last[_key(r)] = r
    parts = []
    for r in last.values():
        attention = r["attention"] + (f" (from {r['weights']})" if r.get("weights") else "")
        parts.append(f"### {attention}, {r['setting']}, {r['strategy']}, {r['gpus']} GPU(s), CP "
                     f"{r['context_parallel']}\n\n{r['profile']}")
    return ("\n\n## Where a step's time goes (the last profiled steps of each point)\n\n" + "\n\n".join(parts)
            if parts else "")


def table(results: list[dict]) -> str:
    """The markdown table of measured points (a failed point is a row of its own and no reference)."""
    done = [r for r in results if "error" not in r]
    one_gpu = {}  # by (attention, setting, strategy), and by (attention, setting) for strategies without one
    for r in done:
        if r["gpus"] == 1:
            one_gpu.setdefault((r["attention"], r["setting"], r["strategy"]), r["tokens_per_s"])
            one_gpu.setdefault((r["attention"], r["setting"]), r["tokens_per_s"])
    softmax = {(r["setting"], r["strategy"], r["gpus"], r["context_parallel"]): r["tokens_per_s"]
               for r in done if r["attention"] == "softmax"}
    lines = ["| attention | setting | strategy | GPUs | CP | global batch | tokens/s | MFU | peak memory (GB) | "
             "scaling eff. | vs softmax |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        attention = r["attention"] + (f" (from {r['weights']})" if r.get("weights") else "")
        head = f"| {attention} | {r['setting']} | {r['strategy']} | {r['gpus']} | {r['context_parallel']} |"
        if "error" in r:
            lines.append(f"{head} failed (exit {r['error']}) | | | | | |")
            continue
        base = one_gpu.get((r["attention"], r["setting"], r["strategy"]), one_gpu.get((r["attention"], r["setting"])))
        eff = f"{r['tokens_per_s'] / (r['gpus'] * base):.1%}" if base else ""
        ref = softmax.get((r["setting"], r["strategy"], r["gpus"], r["context_parallel"]))
        ratio = f"{r['tokens_per_s'] / ref:.3f}" if ref else ""
        if r.get("ratios"):
            ratio = _spread(r["ratios"], "{:.3f}")
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else ""
        memory = f"{r['peak_memory_gb']:.1f}" if "peak_memory_gb" in r else ""
        speed = _spread(r["tokens_rounds"], "{:,.0f}") if r.get("tokens_rounds") else f"{r['tokens_per_s']:,.0f}"
        lines.append(f"{head} {r['global_batch']} | {speed} | {mfu} | {memory} | {eff} | {ratio} |")
    return "\n".join(lines)


def _spread(values: list[float], form: str) -> str:
    """The median of ``values``, and their range in parentheses where they differ."""
    text = form.format(statistics.median(values))
    if min(values) != max(values):
        text += f" ({form.format(min(values))}–{form.format(max(values))})"
    return text


def initial_weights(args, parser: argparse.ArgumentParser) -> dict[str, Path]:
    """--init-from's ATTENTION=RUN_DIR pairs as {attention: run directory}, each checked (an attention of the grid,
    a directory that exists, once each)."""
    out: dict[str, Path] = {}
    for item in args.init_from:
        attention, sep, run_dir = item.partition("=")
        if not sep or not run_dir:
            parser.error(f"--init-from takes ATTENTION=RUN_DIR, got {item!r}")
        if attention not in args.attentions:
            parser.error(f"--init-from {item}: {attention!r} is not one of --attentions {args.attentions}")
        if attention in out:
            parser.error(f"--init-from names {attention!r} twice")
        if not Path(run_dir).is_dir():
            parser.error(f"--init-from {item}: no run directory {run_dir}")
        out[attention] = Path(run_dir).resolve()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attentions", nargs="+", default=["softmax", "tda"])
    parser.add_argument("--settings", nargs="+", default=[""],
                        help='each a space-separated list of train.py overrides, e.g. "trainer.compile=model"; '
                             '"" for none')
    parser.add_argument("--strategies", nargs="+", default=["single"], choices=["single", "ddp", "fsdp2"])
    parser.add_argument("--gpus", nargs="+", type=int, default=[1], help="processes per point (GPUs)")
    parser.add_argument("--context-parallel", nargs="+", type=int, default=[1],
                        help="trainer.context_parallel sizes (each dividing the GPU count)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences per forward on each data-parallel rank")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per step on each GPU")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--skip", type=int, default=2, help="logged windows to drop (warm-up)")
    parser.add_argument("--out", type=Path, default=Path("bench_train.md"))
    parser.add_argument("--init-from", nargs="+", default=[], metavar="ATTENTION=RUN_DIR",
                        help="start every point of ATTENTION from the weights of RUN_DIR (train.py's init_from)")
    parser.add_argument("--train-first", default=None, metavar="OVERRIDES",
                        help="train each attention without --init-from first (python train.py attention=<a> "
                             "OVERRIDES) and start its points from it")
    parser.add_argument("--repeats", type=int, default=1, metavar="N",
                        help="run the whole grid N times, round after round; the table gives each point's medians "
                             "and each round's own ratio to softmax (median and range)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="train each point N steps past --steps, profile them (train.py's "
                             "trainer.profile_steps) and add where their time goes to the table; they are not timed")
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every point (after --)")
    args = parser.parse_args(argv)
    grid = points(args)
    if args.repeats < 1:
        parser.error(f"--repeats takes a number of rounds (1 or more), got {args.repeats}")
    if args.profile < 0:
        parser.error(f"--profile takes a number of steps (0: no profile), got {args.profile}")
    if args.profile and args.steps % args.log_every:
        # a window must end at step --steps, before the profiled ones, and train.py logs at multiples of log_every
        parser.error(f"with --profile, --steps ({args.steps}) must be a multiple of --log-every ({args.log_every})")
    if not grid:
        parser.error("no point of the grid can run (strategy single takes one GPU; each context-parallel size above "
                     "1 must divide a GPU count above 1)")
    weights = initial_weights(args, parser)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.train_first is not None:
            for attention in args.attentions:
                if attention not in weights:
                    weights[attention] = train_run(Path(tmp) / "first" / f"first-{attention}",
                                                   [*shlex.split(args.train_first), f"attention={attention}"])
        for round_ in range(args.repeats):
            for point in grid:
                result = run_point(point, args.settings.index(point.setting), args, Path(tmp),
                                   weights.get(point.attention), round_ if args.repeats > 1 else None)
                results.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "profile"}), flush=True)
                # the table so far, rewritten after every point: a grid cut short (a time limit, a failure) keeps
                # what it measured, profiles included
                text = table(combined(results)) + profiles(results)
                args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
