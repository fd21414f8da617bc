"""Run a study: train, evaluate and analyse several runs, one per GPU at a time, then draw the figures
and the claims table over all of them.

    python scripts/run_study.py --out results/paper_small --gpus 0 1 2 3 \
        --grid attention=softmax,gated_softmax,differential,tra,tda,rela \
        --runs "attention=softmax seed=1" "attention=softmax seed=2" "attention=tda seed=1" \
        -- +experiment=paper_small

Every run (each point of --grid's product, then each --runs entry, with the arguments after `--` in
front) goes through

    train.py <overrides> name=<run>                    (resume=true when runs/<run> already exists)
    eval.py run_dir=runs/<run> tasks=[<--tasks>] <--eval-args>
    python -m analysis.attention run_dir=runs/<run> <--analysis-args>

on one GPU of --gpus (CUDA_VISIBLE_DEVICES), runs queued until a GPU is free; its output goes to
<out>/logs/<run>.log. A run's name is train.py's default (<attention>-<model>-<data>-s<seed>) with the run's
own overrides that the default does not show after the attention (--grid attention.beta=0.5,1.0 gives
tda-beta0.5-... and tda-beta1.0-...), unless an override sets name=. A run whose results are already under
--out is skipped. The study marks each run directory it starts (a file named .run_study) and resumes only
those: an existing run directory without the mark, a run made by hand, stops the study before anything
starts. Then --out gets, for each
finished run, runs/<run>/ with config.yaml, metrics.jsonl, eval/*.json and plots, analysis/ (all small),
and over all of them figures/ (python -m analysis.figures) and claims.md (python -m analysis.report).
Every config is composed, and its model built without weights, before anything starts, so a bad override stops
the study at once (--dry-run stops there, printing each run's commands). --chunk K/N runs the K-th of N
consecutive parts of the planned runs: a study too long for one sitting is the same command N times.
A failed step is reported with the end of this attempt's log, and the other runs go on; the exit code is 1
if any failed.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # model.checkpoint, for train.py's run names
COPIED = ("config.yaml", "metrics.jsonl", "eval", "analysis")
MARKER = ".run_study"  # in a run directory: a study started it, so a later study may resume it
NAMED = ("attention", "model", "data", "seed", "name", "attention.name", "model.name", "data.name")


@dataclass
class Run:
    name: str
    run_dir: Path
    steps: list[list[str]]


def setting_tags(spec: list[str]) -> list[str]:
    """Name parts for a run's own overrides that train.py's default name does not show: attention.beta=0.5
    gives beta0.5, optim.lr=1e-3 lr1e-3, a config group's choice (+experiment=paper_small) its value."""
    tags = []
    for override in spec:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in NAMED:
            tag = f"{key.rsplit('.', 1)[-1]}{value}" if "." in key else value
            tags.append(re.sub(r"[^A-Za-z0-9._-]+", "_", tag))
    return tags


def compose_name(overrides: list[str], spec: list[str]) -> str:
    """The run's name for these overrides, of which ``spec`` are the run's own. Composing checks the overrides,
    and the run's model is built without weights (on the meta device, with a stand-in vocabulary), so that a
    value the model refuses (attention.lambda_mode=clmap) stops the study before anything runs."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from model.checkpoint import run_name
    from training.config import build_checked_model

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg), torch.device("meta"):
        cfg.model.vocab_size = 256  # the data's vocabulary is read when training starts; any size checks the rest
        build_checked_model(cfg)
    return run_name(cfg, tags=setting_tags(spec))


def grid_overrides(grid: list[str]) -> list[list[str]]:
    """key=a,b key2=c,d -> every combination as override lists."""
    if not grid:
        return []
    axes = []
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"error: --grid takes key=v1,v2,..., got {item!r}")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(point) for point in itertools.product(*axes)]


def plan(args) -> list[Run]:
    specs = grid_overrides(args.grid) + [shlex.split(r) for r in args.runs]
    if not specs:
        raise SystemExit("error: nothing to run: give --grid and/or --runs")
    runs, seen = [], set()
    for spec in specs:
        overrides = list(args.common) + spec
        try:
            name = compose_name(overrides, spec)
        except Exception as err:  # hydra's errors name the bad override
            raise SystemExit(f"error: overrides {' '.join(spec)!r}: {err}") from None
        if name in seen:
            raise SystemExit(f"error: two runs would both be named {name}: add seed= or name= to tell them apart")
        seen.add(name)
        run_dir = Path(args.runs_root) / name
        run_arg = in_root(run_dir)
        train_cmd = [sys.executable, "train.py", *overrides, f"name={name}", f"runs_root={in_root(args.runs_root)}",
                     "logger.progress=false"]
        if run_dir.exists():
            if not (run_dir / MARKER).is_file():
                raise SystemExit(f"error: {run_dir} exists but no study started it (it has no {MARKER}): a study "
                                 f"does not take over a run made by hand; give --runs-root another folder, or "
                                 f"name= in the run's overrides")
            train_cmd.append("resume=true")
        runs.append(Run(name, run_dir, [
            train_cmd,
            [sys.executable, "eval.py", f"run_dir={run_arg}", f"tasks=[{args.tasks}]", *shlex.split(args.eval_args)],
            [sys.executable, "-m", "analysis.attention", f"run_dir={run_arg}", *shlex.split(args.analysis_args)],
        ]))
    return runs


def in_root(path) -> str:
    """``path`` relative to the project root where it lies inside it (every command runs there), so that the saved
    configs, logs and claims name no folder of the machine that ran the study."""
    path = Path(path)
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def shown(cmd: list[str]) -> str:
    """A command as the logs show it: this interpreter as ``python``."""
    return shlex.join(["python" if cmd[0] == sys.executable else cmd[0], *cmd[1:]])


def chunk(runs: list[Run], spec: str | None) -> list[Run]:
    """The K-th of N consecutive, nearly equal parts of ``runs`` for --chunk K/N (all runs for None), so that a
    study too long for one sitting runs as N calls of the same command, each adding its runs to --out."""
    if spec is None:
        return runs
    k, sep, n = spec.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise SystemExit(f"error: --chunk takes K/N with 1 <= K <= N, e.g. 1/2, got {spec!r}")
    k, n = int(k), int(n)
    return runs[len(runs) * (k - 1) // n:len(runs) * k // n]


def mark(run: Run) -> None:
    """Mark the run's directory as this study's once train.py has made it (after all its checks)."""
    if run.run_dir.is_dir() and not (run.run_dir / MARKER).is_file():
        (run.run_dir / MARKER).write_text("started by scripts/run_study.py\n")


def finished(out: Path, name: str) -> bool:
    return (out / "runs" / name / "analysis").is_dir() and (out / "runs" / name / "metrics.jsonl").is_file()


def collect(run_dir: Path, dest: Path) -> None:
    """Copy a run's small result files (no checkpoints) to dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in COPIED:
        src = run_dir / item
        if src.is_dir():
            shutil.copytree(src, dest / item, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, dest / item)


class Lane:
    """One GPU (or the CPU) working through one run's steps at a time."""

    def __init__(self, device: str | None):
        self.device = device
        self.run: Run | None = None
        self.proc: subprocess.Popen | None = None
        self.log = None
        self.step = 0
        self.started = 0.0
        self.log_start = 0  # where this attempt's output starts in the run's log (earlier attempts' before it)

    def start(self, run: Run, log_path: Path) -> None:
        self.run, self.step, self.started = run, 0, time.time()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_start = log_path.stat().st_size if log_path.exists() else 0
        self.log = open(log_path, "a")
        self._launch()

    def _launch(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.device
        cmd = self.run.steps[self.step]
        self.log.write(f"$ {shown(cmd)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def poll(self) -> tuple[str, Run] | None:
        """None while busy; ('done' | 'failed', run) when the run ends."""
        if self.proc is None:
            return None
        if self.step == 0:  # training
            mark(self.run)
        if self.proc.poll() is None:
            return None
        code, run = self.proc.returncode, self.run
        if code == 0 and self.step + 1 < len(run.steps):
            self.step += 1
            self._launch()
            return None
        self.log.close()
        self.proc, self.run = None, None
        return ("done" if code == 0 else "failed"), run


def tail(path: Path, start: int = 0, lines: int = 15) -> str:
    """The last ``lines`` lines of a log from byte ``start`` on (one attempt's output)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the collected results, figures and claims")
    parser.add_argument("--grid", nargs="*", default=[], help="key=v1,v2 ...: every combination is a run")
    parser.add_argument("--runs", nargs="*", default=[], help='more runs, each one quoted string of overrides')
    parser.add_argument("--gpus", nargs="*", default=None,
                        help="GPU indices to use, one run each at a time; an index listed twice takes two runs at once "
                             "(default: every visible GPU; none: CPU)")
    parser.add_argument("--tasks", default="val_loss,length_extrapolation,passkey", help="eval.py tasks")
    parser.add_argument("--eval-args", default="", help='more eval.py overrides, e.g. "length.tokens=16384"')
    parser.add_argument("--analysis-args", default="", help='more analysis.attention overrides, e.g. "max_length=1024"')
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--chunk", default=None, metavar="K/N",
                        help="run only the K-th of N consecutive parts of the planned runs (e.g. 1/2, then 2/2); the "
                             "figures and claims at the end cover every finished run in --out")
    parser.add_argument("--no-figures", action="store_true",
                        help="train, evaluate, analyse and collect only; draw the figures and claims later with the "
                             "printed commands (over a large study they take minutes, and need no GPU)")
    parser.add_argument("--dry-run", action="store_true",
                        help="plan every run (configs composed, models built without weights), print the runs and "
                             "their commands, run nothing")
    args = parser.parse_args(argv)
    args.common = common
    # train.py and eval.py run in the project root: a relative runs root is taken from there (as train.py
    # takes it), a relative --out from where this script is called
    runs_root = Path(args.runs_root) if Path(args.runs_root).is_absolute() else ROOT / args.runs_root
    args.runs_root = str(runs_root)
    out = Path(args.out).resolve()

    runs = chunk(plan(args), args.chunk)
    if args.dry_run:
        for r in runs:
            print(f"[study] {r.name}" + ("" if not finished(out, r.name) else f" (already in {in_root(out)})"))
            for step in r.steps:
                print(f"    {shown(step)}")
        print(f"[study] dry run: {len(runs)} runs planned, nothing started", flush=True)
        return 0
    todo = [r for r in runs if not finished(out, r.name)]
    for r in runs:
        if r not in todo:
            print(f"[study] {r.name}: already in {in_root(out)}, skipped")
    if args.gpus is None:
        import torch

        args.gpus = [str(i) for i in range(torch.cuda.device_count())]
    lanes = [Lane(g) for g in args.gpus] or [Lane(None)]
    print(f"[study] {len(todo)} runs on {len(lanes)} lane(s) ({', '.join(args.gpus) or 'cpu'}): "
          + ", ".join(r.name for r in todo), flush=True)
    queue, failed, t0 = list(todo), [], time.time()
    while queue or any(lane.run for lane in lanes):
        for lane in lanes:
            if lane.run is None and queue:
                run = queue.pop(0)
                lane.start(run, out / "logs" / f"{run.name}.log")
                print(f"[study] {time.time() - t0:6.0f}s start {run.name} on {lane.device or 'cpu'}", flush=True)
            ended = lane.poll()
            if ended is None:
                continue
            status, run = ended
            took = time.time() - lane.started
            print(f"[study] {time.time() - t0:6.0f}s {status} {run.name} ({took:.0f}s)", flush=True)
            if status == "done":
                collect(runs_root / run.name, out / "runs" / run.name)
            else:
                failed.append(run.name)
                print(tail(out / "logs" / f"{run.name}.log", lane.log_start), flush=True)
        time.sleep(2)

    names = sorted(p for p in (out / "runs").glob("*") if finished(out, p.name))
    if names:
        listed = "[" + ",".join(in_root(p) for p in names) + "]"
        for cmd in ([sys.executable, "-m", "analysis.figures", f"runs={listed}", f"out={in_root(out / 'figures')}"],
                    [sys.executable, "-m", "analysis.report", f"runs={listed}", f"out={in_root(out / 'claims.md')}"]):
            if args.no_figures:
                print(f"[study] not drawn (--no-figures): {shown(cmd)}", flush=True)
            elif subprocess.run(cmd, cwd=ROOT).returncode != 0:
                failed.append(cmd[2])
    print(f"[study] finished in {time.time() - t0:.0f}s; failed: {', '.join(failed) or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
