"""The trainer's side of checkpoints (model/checkpoint.py owns the format): gather the full model and
optimiser state from any strategy, save it with the loader's position and every process's random state,
restore all of it on resume, and load another run's weights (init_from)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from data.loader import TokenLoader
from model.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import ConfigError
from training.distributed import Distributed
from training.faults import pause_point
from training.rng import rng_state, set_rng_state


def save(run_dir: Path, d: Distributed, train_model, optimizer: torch.optim.Optimizer, loader: TokenLoader,
         progress: dict, keep_last: int | None) -> None:
    """Checkpoint the run (a collective: every process calls it). ``progress``: step, tokens, wandb_id."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(train_model, options=options)
    optim_state = get_optimizer_state_dict(train_model, optimizer, options=options)
    ranks_rng = [None] * d.world
    if d.active:
        dist.all_gather_object(ranks_rng, rng_state())
    else:
        ranks_rng = [rng_state()]
    if d.is_main:
        step = progress["step"]
        state = {"step": step, "tokens": progress["tokens"], "optimizer": optim_state,
                 "loader": loader.state_dict(), "rng": ranks_rng, "wandb_id": progress["wandb_id"],
                 "world_size": d.world}
        save_checkpoint(run_dir, step, model_state, state, keep_last=keep_last,
                        before_publish=lambda _: pause_point("checkpoint", step))
    d.barrier()


def restore(path: Path, d: Distributed, train_model, optimizer: torch.optim.Optimizer,
            loader: TokenLoader) -> dict:
    """Load checkpoint ``path`` into the model, optimiser, loader and random state; returns its step,
    tokens and wandb_id. Random states start fresh when the number of processes changed."""
    model_state, state = load_checkpoint(path, map_location="cpu")
    set_model_state_dict(train_model, model_state, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(train_model, optimizer, state["optimizer"],
                             options=StateDictOptions(full_state_dict=True))
    loader.load_state_dict(state["loader"])
    ranks_rng = state["rng"]
    if len(ranks_rng) == d.world:
        set_rng_state(ranks_rng[d.rank])
    elif d.is_main:
        print(f"note: the checkpoint was written by {len(ranks_rng)} processes, this run has {d.world}: "
              f"random states start fresh (data order is kept)", flush=True)
    return {"step": state["step"], "tokens": state["tokens"], "wandb_id": state.get("wandb_id")}


def load_initial_weights(model: torch.nn.Module, init_from: str) -> None:
    """The weights of the newest checkpoint of run directory ``init_from`` (fine-tuning)."""
    source = latest_checkpoint(init_from)
    if source is None:
        raise ConfigError(f"init_from={init_from}: no complete checkpoint there")
    try:
        model.load_state_dict(load_checkpoint(source)[0])
    except RuntimeError as exc:
        raise ConfigError(f"init_from={init_from}: weights do not fit this model "
                          f"({str(exc).splitlines()[0]})") from exc
