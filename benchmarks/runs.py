"""Training a run before a benchmark measures it: the benchmarks that time trained weights (benchmarks.captured,
benchmarks.decode, benchmarks.train) train it with train.py in one process, its output streamed."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_run(run_dir: Path, overrides: list[str], reuse: bool = False) -> Path:
    """``python train.py <overrides> name=<run_dir's name> runs_root=<its parent>`` from the project root, and
    ``run_dir``; with ``reuse`` an existing ``run_dir`` is taken as it is. A failed training ends the benchmark
    (SystemExit naming the exit status)."""
    run_dir = Path(run_dir)
    if reuse and run_dir.exists():
        print(f"training first: {run_dir} exists, taken as it is", flush=True)
        return run_dir
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"name={run_dir.name}", f"runs_root={run_dir.parent}",
           "logger.progress=false"]
    print(f"training first: {shlex.join(cmd)}", flush=True)
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0:
        raise SystemExit(f"training {run_dir.name} first failed: train.py exited with {result.returncode}")
    return run_dir
