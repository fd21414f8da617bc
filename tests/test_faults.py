"""A run SIGKILLed from outside at a deterministic point (training/faults.py's pause hook: mid-step,
mid-checkpoint write, right after a checkpoint) resumes with exactly the losses of an uninterrupted run,
from the newest checkpoint complete at the kill, and logs every step once."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.checkpoint import checkpoint_dir, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["trainer.max_steps=8", "trainer.checkpoint_every=3", "trainer.eval_every=4", "logger.log_every=1",
          "optim.warmup_steps=2", "trainer.micro_batch_size=4"]  # checkpoints at steps 3, 6 and 8

# (point, step, the checkpoint a resume starts from, the last step logged before the kill)
POINTS = [("step", 5, 3, 4), ("checkpoint", 6, 3, 6), ("saved", 6, 6, 6)]


def logged_steps(run_dir):
    return [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(train_run):
    return losses(train_run("name=faults-uninterrupted", *COMMON))


def kill_at(point: str, step: int, args: list[str], marker: Path) -> int:
    """Run train.py until it pauses at ``point`` of ``step`` (its marker file appears), then SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRAIN_PAUSE_AT": f"{point}:{step}",
           "TRAIN_PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=marker.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        start = time.monotonic()
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() - start < 240, "timed out waiting for the pause"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    return proc.returncode


@pytest.mark.parametrize("point,step,resumed_at,last_logged", POINTS, ids=[p for p, *_ in POINTS])
def test_sigkill_at_a_named_point_then_resume_gives_the_uninterrupted_losses(
        point, step, resumed_at, last_logged, train_base, train_run, uninterrupted, tmp_path, capsys):
    name = f"killed-at-{point}"
    run_dir = Path(next(a for a in train_base if a.startswith("runs_root=")).split("=", 1)[1]) / name
    code = kill_at(point, step, [*train_base, *COMMON, f"name={name}"], tmp_path / "paused")
    assert code == -signal.SIGKILL
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, resumed_at)
    assert max(logged_steps(run_dir)) == last_logged
    if point == "checkpoint":  # killed between writing the files and renaming them into place
        unpublished = checkpoint_dir(run_dir, step)
        assert (unpublished.parent / f".tmp-{unpublished.name}" / "meta.json").is_file()
    capsys.readouterr()
    train_run(f"name={name}", *COMMON, "resume=true")
    assert f"resuming at step {resumed_at}" in capsys.readouterr().out  # nothing before it trained again
    assert logged_steps(run_dir) == list(range(1, 9))  # each step logged once
    assert losses(run_dir) == uninterrupted  # bit-identical
