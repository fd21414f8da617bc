"""Deterministic fault injection for the tests of resume (never used by a real run).

``trainer.stop_after_step=N`` stops after step N without a final checkpoint; under torchrun every process
SIGKILLs itself instead, on the first attempt only, so that ``--max-restarts`` restarts the job.

Two environment variables (tests only) pause the trainer at a named point so that another process can
SIGKILL it exactly there: with ``TRAIN_PAUSE_AT=<point>:<step>`` and ``TRAIN_PAUSE_MARKER=<file>``, a
process reaching <point> at optimiser step <step> writes its pid to <file> and waits to be killed.

    step        mid-step: gradients computed, the optimiser not stepped, nothing of the step logged
    checkpoint  mid-checkpoint: its files written under the temporary name, not yet renamed into place
    saved       right after the checkpoint of the step was published
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from omegaconf import DictConfig

from training.distributed import Distributed

PAUSE_AT, PAUSE_MARKER = "TRAIN_PAUSE_AT", "TRAIN_PAUSE_MARKER"
POINTS = ("step", "checkpoint", "saved")


def pause_point(point: str, step: int) -> None:
    """Wait here to be killed when TRAIN_PAUSE_AT names this point and step; otherwise return at once."""
    if os.environ.get(PAUSE_AT) != f"{point}:{step}":
        return
    marker = Path(os.environ[PAUSE_MARKER])
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(str(os.getpid()))
    os.replace(partial, marker)
    while True:
        signal.pause()


def stop_after_step(cfg: DictConfig, d: Distributed, step: int, restarted: bool) -> bool:
    """True when trainer.stop_after_step says to stop after this step (without a final checkpoint)."""
    last = cfg.trainer.stop_after_step
    if last is None or step < last or restarted:
        return False
    if d.is_main:
        print(f"stopping after step {step} (trainer.stop_after_step), without a final checkpoint", flush=True)
    if "TORCHELASTIC_RESTART_COUNT" in os.environ:  # under torchrun: die as a killed job would
        d.barrier()  # every process past this step first, so that none waits on a dead peer
        os.kill(os.getpid(), signal.SIGKILL)
    return True
