"""The run directory (its name, layout and checkpoints); loading a trained model for evaluation and analysis.

Layout of a run directory::

    runs/<name>/                    <name>: ``run_name``
        config.yaml                 the resolved Hydra config (model.vocab_size filled in)
        metrics.jsonl               one JSON object per logged step / evaluation
        checkpoints/step_<N>/       model.pt (state dict), train_state.pt (optimiser, step, RNG, data
                                    loader, wandb run id, ...: whatever the trainer hands over), meta.json
                                    (step and the size of every file, written last)
        wandb/                      wandb's own files, when logger.wandb.mode is online or offline

A checkpoint is written under a temporary name and renamed into place, so a directory named step_<N>
is complete unless its files were damaged later; ``latest_checkpoint`` checks the sizes in meta.json and
falls back to an older checkpoint with a warning when they disagree.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from model.gpt import GPT

CHECKPOINTS = "checkpoints"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def run_name(cfg: DictConfig, job: int | None = None, tags: Sequence[str] = ()) -> str:
    """The name of the run ``cfg`` describes: ``cfg.name`` when set, else <attention>-<model>-<data>-s<seed>,
    with ``tags`` after the attention (a study's settings, e.g. tda-beta0.5-small-english_corpus-s0) and
    -j<job> for job number ``job`` of a sweep (Hydra's -m), so that no two jobs of a sweep share a name."""
    if cfg.name:
        return str(cfg.name)
    name = "-".join([str(cfg.attention.name), *tags, str(cfg.model.name), str(cfg.data.name), f"s{cfg.seed}"])
    return name if job is None else f"{name}-j{job}"


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def save_checkpoint(run_dir: str | Path, step: int, model_state: dict, train_state: dict,
                    keep_last: int | None = None, before_publish: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep_last`` checkpoints.

    ``before_publish`` is called with the temporary directory once its files are written, before it is
    renamed into place: the trainer's fault-injection hook interrupts a checkpoint there."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    sizes = {}
    for name, obj in (("model.pt", model_state), ("train_state.pt", train_state)):
        path = tmp / name
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        sizes[name] = path.stat().st_size
    with open(tmp / "meta.json", "w") as f:
        json.dump({"step": step, "sizes": sizes}, f)
        f.flush()
        os.fsync(f.fileno())
    if before_publish is not None:
        before_publish(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last is not None and keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (temporary, unfinished ones excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory cannot be used, or None if its files are complete."""
    meta = path / "meta.json"
    try:
        sizes = json.loads(meta.read_text())["sizes"]
    except (OSError, ValueError, KeyError):
        return "meta.json is missing or unreadable"
    for name, size in sizes.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, expected {size} (truncated?)"
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run; damaged ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warnings.warn(f"skipping checkpoint {path}: {problem}", stacklevel=2)
    return None


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[dict, dict]:
    """(model state dict, train state) of one checkpoint directory."""
    path = Path(path)
    model_state = torch.load(path / "model.pt", map_location=map_location, weights_only=True)
    train_state = torch.load(path / "train_state.pt", map_location=map_location, weights_only=False)
    return model_state, train_state


def load_config(run_dir: str | Path) -> DictConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    return OmegaConf.load(path)


def build_model(cfg: DictConfig) -> GPT:
    """The GPT a run's config describes (``cfg.model.vocab_size`` must be set)."""
    return GPT(cfg.model, cfg.attention, int(cfg.model.vocab_size))


def load_run(run_dir: str | Path, device: str | torch.device = "cpu",
             checkpoint: str | Path | None = None) -> tuple[GPT, DictConfig, int]:
    """A run's model with the weights of its newest checkpoint (or ``checkpoint``), in eval mode.

    Returns (model, config, step). Raises FileNotFoundError with a one-line message when the run
    directory or its checkpoints are missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    cfg = load_config(run_dir)
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"run directory {run_dir} has no complete checkpoint")
    model_state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    model = build_model(cfg)
    model.load_state_dict(model_state)
    meta = json.loads((path / "meta.json").read_text())
    return model.to(device).eval(), cfg, int(meta["step"])
