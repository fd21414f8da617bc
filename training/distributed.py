"""Where a process stands under torchrun, and the model wrapped for its strategy (single, DDP, FSDP2)."""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from training.config import ConfigError, compile_mode, compile_options
from training.context_parallel import ContextParallel, context_group


@dataclass
class Distributed:
    """Where this process stands: rank and world size (torchrun's environment), strategy, device, and its context
    group (trainer.context_parallel > 1), whose processes split each sequence and read the same rows."""

    rank: int
    world: int
    local_rank: int
    strategy: str
    device: torch.device
    context: ContextParallel | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def context_size(self) -> int:
        return 1 if self.context is None else self.context.size

    @property
    def data_rank(self) -> int:
        """Rank among the data-parallel readers (one per context group)."""
        return self.rank // self.context_size

    @property
    def data_world(self) -> int:
        """Number of data-parallel readers."""
        return self.world // self.context_size

    @property
    def active(self) -> bool:
        return self.strategy != "single"

    def mean(self, value: float) -> float:
        """The mean of a float over all processes."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def any(self, flag: bool) -> bool:
        """True on every process if it is True on any."""
        return self.mean(float(flag)) > 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def restarted() -> bool:
    """Whether torchrun restarted this job after a failure (``--max-restarts``): the run then resumes by itself."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def setup_distributed(cfg: DictConfig) -> Distributed:
    """Read torchrun's environment, pick the device and start the process group (NCCL or gloo)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    strategy = cfg.trainer.strategy
    if strategy not in ("single", "ddp", "fsdp2"):
        raise ConfigError(f"trainer.strategy must be single, ddp or fsdp2, got '{strategy}'")
    if world > 1 and strategy == "single":
        raise ConfigError(f"launched as {world} processes: set trainer.strategy=ddp or trainer.strategy=fsdp2")
    context = cfg.trainer.context_parallel
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ConfigError(f"trainer.context_parallel must be an int >= 1, got {context!r}")
    if world % context:
        raise ConfigError(f"trainer.context_parallel={context} splits each sequence over {context} processes, but "
                          f"{world} {'was' if world == 1 else 'were'} launched: start a multiple of {context} "
                          f"(torchrun --nproc_per_node=...) with trainer.strategy=ddp or fsdp2")
    wanted = cfg.trainer.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available")
    device = torch.device("cuda" if wanted == "auto" and torch.cuda.is_available() else
                          ("cpu" if wanted == "auto" else wanted))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if strategy != "single" and not dist.is_initialized():
        # torchrun's store outlives a restart: keys under a per-attempt prefix keep a restarted group from
        # reading the addresses of the processes it replaced
        store, _, _ = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                store=dist.PrefixStore(f"attempt_{attempt}", store))
    return Distributed(rank, world, local_rank, strategy, device, context_group(context, rank, device))


def teardown(d: Distributed, finished: bool = False) -> None:
    """End the process group. A run that finished waits for every process first (a barrier), so that none
    destroys the group while another still has a collective in flight with it."""
    if d.active and dist.is_initialized():
        if finished:
            d.barrier()
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, cfg: DictConfig, d: Distributed, precision: str):
    """Compile (trainer.compile: each block, or the whole model), then wrap for DDP or FSDP2 (each block sharded,
    then the root).

    Returns (the module to train, an autocast context factory). FSDP2 with bf16 casts parameters through
    its mixed-precision policy (reductions in float32) instead of autocast. Compiling the whole model lets the
    compiler fuse what lies outside the blocks (embedding, final norm, output head and loss) and run the model as
    fewer, larger graphs; under DDP its backward is then one graph, so the gradients' all-reduce starts after it
    (per-block compilation overlaps them)."""
    mode, options = compile_mode(cfg), compile_options(cfg)
    if mode == "blocks":
        for block in model.blocks:
            block.compile(**options)
    elif mode == "model":
        model.compile(**options)
    bf16 = precision == "bf16"
    autocast = (lambda: torch.autocast(device_type=d.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    if d.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [d.local_rank] if d.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids), autocast
    if d.strategy == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(d.device.type, (d.world,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
            MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model, nullcontext
    return model, autocast


def gradient_sync(model, d: Distributed, enabled: bool):
    """A context in which backward does (or, for all but the last micro-batch, does not) reduce gradients."""
    if d.strategy == "ddp" and not enabled:
        return model.no_sync()
    if d.strategy == "fsdp2":
        model.set_requires_gradient_sync(enabled)
    return nullcontext()


def exit_without_teardown() -> None:
    """End a finished distributed process at once, everything written and flushed. The interpreter's own
    teardown can hang here: DDP leaves the process group referenced from C++, so its gloo worker threads are
    joined only when garbage collection frees it at exit, with the GIL held, while a worker may be waiting
    for the GIL to free a finished collective's tensors (seen once in CI: every rank done, one never exited)."""
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)
