"""Pretrain a GPT with the attention of your choice.

    python train.py                                   # TDA, tiny model, built-in corpus (CPU or GPU)
    python train.py attention=softmax optim.lr=1e-3   # any config value from the command line
    python train.py -m attention=softmax,tda seed=0,1 # a sweep: one run directory per job
    python train.py name=<run> resume=true            # continue a run exactly where it stopped
    torchrun --nproc_per_node=8 train.py trainer.strategy=ddp     # or fsdp2; one node or many

Everything a run writes goes to runs/<name>/ (see model/checkpoint.py for the layout). The global batch
(trainer.batch_size sequences) is fixed: each of N processes reads its own batch_size/N rows of it, in
micro-batches of trainer.micro_batch_size, so 1, 2 or 8 processes train the same model on the same data.
SIGTERM or SIGINT (a cluster's preemption) finishes the current step, saves a checkpoint and exits 0;
a restart by `torchrun --max-restarts` resumes by itself.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from data.loader import TokenLoader, ensure_prepared, read_meta, validation_batches
from model.checkpoint import (CONFIG, METRICS, build_model, latest_checkpoint, load_checkpoint,
                              load_config, save_checkpoint)

# Sections of the config that define the run: a resumed run must keep them.
RUN_DEFINING = ("model", "attention", "data", "optim", "seed")


class ConfigError(Exception):
    """A problem with the command line or the run directory, reported in one line."""


def run_name(cfg: DictConfig) -> str:
    if cfg.name:
        return str(cfg.name)
    name = f"{cfg.attention.name}-{cfg.model.name}-{cfg.data.name}-s{cfg.seed}"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        name += f"-j{HydraConfig.get().job.num}"
    return name


@dataclass
class Distributed:
    """Where this process stands: rank and world size (torchrun's environment), strategy, device."""

    rank: int
    world: int
    local_rank: int
    strategy: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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


def setup_distributed(cfg: DictConfig) -> Distributed:
    """Read torchrun's environment, pick the device and start the process group (NCCL or gloo)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    strategy = cfg.trainer.strategy
    if strategy not in ("single", "ddp", "fsdp2"):
        raise ConfigError(f"trainer.strategy must be single, ddp or fsdp2, got '{strategy}'")
    if world > 1 and strategy == "single":
        raise ConfigError(f"launched as {world} processes: set trainer.strategy=ddp or trainer.strategy=fsdp2")
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
    return Distributed(rank, world, local_rank, strategy, device)


def resolve_precision(cfg: DictConfig, device: torch.device) -> str:
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"trainer.precision must be auto, bf16 or fp32, got '{precision}'")
    return precision


def wrap_model(model: torch.nn.Module, cfg: DictConfig, d: Distributed, precision: str):
    """Compile blocks (trainer.compile), then wrap for DDP or FSDP2 (each block sharded, then the root).

    Returns (the module to train, an autocast context factory). FSDP2 with bf16 casts parameters through
    its mixed-precision policy (reductions in float32) instead of autocast."""
    if cfg.trainer.compile:
        for block in model.blocks:
            block.compile()
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


def learning_rate(step: int, cfg: DictConfig, max_steps: int) -> float:
    """Learning rate at optimiser step ``step`` (1-based): linear warm-up, then the chosen decay."""
    o = cfg.optim
    if step <= o.warmup_steps:
        return o.lr * step / max(1, o.warmup_steps)
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "cosine":
        progress = (step - o.warmup_steps) / max(1, max_steps - o.warmup_steps)
        return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
    if o.schedule == "wsd":
        decay_start = max_steps - int(o.decay_fraction * max_steps)
        if step <= decay_start:
            return o.lr
        progress = (step - decay_start) / max(1, max_steps - decay_start)
        return o.lr + (o.min_lr - o.lr) * min(1.0, progress)
    raise ConfigError(f"optim.schedule must be cosine, wsd or constant, got '{o.schedule}'")


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to overwrite a run, and to resume one that does not exist."""
    if cfg.resume and not (run_dir / CONFIG).is_file():
        raise ConfigError(f"resume=true but {run_dir} is not a run directory (no {CONFIG})")
    if not cfg.resume and run_dir.exists():
        raise ConfigError(f"run directory {run_dir} already exists: pass resume=true to continue it, or "
                          f"choose another name=")


def check_resumed_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run keeps the settings that define it (model, attention, data, optimiser, seed)."""
    if cfg.resume:
        saved = load_config(run_dir)
        changed = [key for key in RUN_DEFINING
                   if OmegaConf.to_container(OmegaConf.masked_copy(saved, [key]))
                   != OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key]))]
        if changed:
            raise ConfigError(f"resume=true: {', '.join(changed)} differ from {run_dir / CONFIG}; resume with "
                              f"the run's own settings (only trainer.* and logger.* may change)")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class MetricsLog:
    """Appends JSON lines to runs/<name>/metrics.jsonl; on resume, drops lines past the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


def import_wandb(cfg: DictConfig):
    """The wandb module when ``logger.wandb.mode`` asks for it (online, offline), else None."""
    mode = cfg.logger.wandb.mode
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode must be online, offline or disabled, got '{mode}'")
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError(f"logger.wandb.mode={mode} needs the wandb package: pip install wandb") from exc
    return wandb


class WandbLogger:
    """wandb (imported only when ``logger.wandb.mode`` is online or offline)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str | None):
        self.run = None
        wandb = import_wandb(cfg)
        if wandb is None:
            return
        self.run = wandb.init(project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity,
                              mode=cfg.logger.wandb.mode,
                              name=run_dir.name, dir=str(run_dir), id=run_id, resume="allow",
                              tags=list(cfg.logger.wandb.tags), config=OmegaConf.to_container(cfg, resolve=True))

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log(record, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def logged_scalars(model) -> dict:
    """Per-layer λ and learnable β (means over heads), as flat metrics: lambda/<layer>, beta/<layer>."""
    scalars = model.attention_scalars()
    learnable_beta = any(getattr(getattr(b.attn, "beta", None), "raw", None) is not None for b in model.blocks)
    out = {}
    for key, prefix in (("lambda_per_layer", "lambda"), ("beta_per_layer", "beta")):
        if prefix == "lambda" or learnable_beta:
            for layer, value in enumerate(scalars.get(key, [])):
                out[f"{prefix}/{layer}"] = sum(value) / len(value) if isinstance(value, list) else value
    return out


@torch.no_grad()
def evaluate(model, batches, device, autocast) -> float:
    model.eval()
    total = 0.0
    for x, y in batches:
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        total += float(loss)
    model.train()
    return total / len(batches)


# Peak dense bf16 tensor throughput (TFLOP/s) by GPU name, for MFU; trainer.peak_tflops overrides.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def peak_flops(cfg: DictConfig, device: torch.device) -> float | None:
    if cfg.trainer.get("peak_tflops"):
        return float(cfg.trainer.peak_tflops) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token, PaLM's convention: 6·(non-embedding parameters) + 12·layers·width·T."""
    n = model.num_parameters() - model.embed.weight.numel()
    return 6 * n + 12 * len(model.blocks) * model.embed.weight.shape[1] * seq_len


class StopSignal:
    """Records SIGTERM / SIGINT so that the loop can finish its step, save and exit 0."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: DictConfig) -> Path:
    """Train as ``cfg`` says; returns the run directory."""
    d = setup_distributed(cfg)
    try:
        with StopSignal() as stop:
            return _train(cfg, d, stop)
    finally:
        if d.active and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: DictConfig, d: Distributed, stop: StopSignal) -> Path:
    name = run_name(cfg)
    run_dir = Path(cfg.runs_root) / name
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    resume = bool(cfg.resume) or (restarted and (run_dir / CONFIG).is_file())
    with open_dict(cfg):
        cfg.resume = resume
    check_run_dir(cfg, run_dir)
    if d.is_main:
        import_wandb(cfg)  # a missing package or a bad mode stops the run before anything is written
    precision = resolve_precision(cfg, d.device)
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    t = cfg.trainer
    if t.batch_size % d.world:
        raise ConfigError(f"trainer.batch_size ({t.batch_size}) must be divisible by the number of processes "
                          f"({d.world})")
    per_rank = t.batch_size // d.world
    micro = t.micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(f"each of {d.world} processes reads {per_rank} sequences per step, which "
                          f"trainer.micro_batch_size ({micro}) must divide")
    accumulation = per_rank // micro
    seq_len = int(cfg.model.seq_len)
    if seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"model.seq_len ({seq_len}) exceeds model.max_seq_len ({cfg.model.max_seq_len})")

    shard_dir = ensure_prepared(cfg.data) if d.is_main else None  # the built-in corpus is made on first use
    d.barrier()
    if shard_dir is None:  # the other ranks wait for rank 0, then find the shards ready
        shard_dir = ensure_prepared(cfg.data)
    meta = read_meta(shard_dir)
    with open_dict(cfg):
        cfg.name = name
        cfg.model.vocab_size = int(meta["vocab_size"])
    check_resumed_config(cfg, run_dir)
    seed_everything(int(cfg.seed))
    model = build_model(cfg).to(d.device)  # a config the model rejects stops here, before anything is written
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / CONFIG, resolve=True)
    if cfg.init_from:
        source = latest_checkpoint(cfg.init_from)
        if source is None:
            raise ConfigError(f"init_from={cfg.init_from}: no complete checkpoint there")
        try:
            model.load_state_dict(load_checkpoint(source)[0])
        except RuntimeError as exc:
            raise ConfigError(f"init_from={cfg.init_from}: weights do not fit this model "
                              f"({str(exc).splitlines()[0]})") from exc
    train_model, autocast = wrap_model(model, cfg, d, precision)
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  fused=d.device.type == "cuda" and d.strategy != "fsdp2")
    loader = TokenLoader(shard_dir, "train", per_rank, seq_len, rank=d.rank, world_size=d.world,
                         seed=int(cfg.seed), bos_aligned=bool(cfg.data.bos_aligned))
    val_batches = list(validation_batches(shard_dir, micro, seq_len, t.eval_batches,
                                          bos_aligned=bool(cfg.data.bos_aligned)))
    step, tokens, wandb_id = 0, 0, None
    resume_from = latest_checkpoint(run_dir) if resume else None
    if cfg.resume and resume_from is None and not restarted:
        raise ConfigError(f"resume=true but {run_dir} has no complete checkpoint")
    if resume_from is not None:
        model_state, state = load_checkpoint(resume_from, map_location="cpu")
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
        step, tokens, wandb_id = state["step"], state["tokens"], state.get("wandb_id")
    metrics = MetricsLog(run_dir / METRICS, step if resume else None) if d.is_main else None
    wandb_log = WandbLogger(cfg, run_dir, wandb_id) if d.is_main else None
    peak = peak_flops(cfg, d.device)
    token_flops = flops_per_token(model, seq_len)

    def save() -> None:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(train_model, options=options)
        optim_state = get_optimizer_state_dict(train_model, optimizer, options=options)
        ranks_rng = [None] * d.world
        if d.active:
            dist.all_gather_object(ranks_rng, rng_state())
        else:
            ranks_rng = [rng_state()]
        if d.is_main:
            state = {"step": step, "tokens": tokens, "optimizer": optim_state, "loader": loader.state_dict(),
                     "rng": ranks_rng, "wandb_id": wandb_log.run_id, "world_size": d.world}
            save_checkpoint(run_dir, step, model_state, state, keep_last=t.keep_last)
        d.barrier()

    start_description = (f"resuming at step {step}" if resume_from else
                         f"starting from the weights of {cfg.init_from}" if cfg.init_from else "from scratch")
    if d.is_main:
        print(f"run {run_dir}: {cfg.attention.name} attention, {model.num_parameters() / 1e6:.2f}M parameters, "
              f"{d.world} x {d.device.type} ({d.strategy}, {precision}), "
              f"{start_description}", flush=True)
    progress = None
    if cfg.logger.progress and d.is_main:
        from tqdm import tqdm
        progress = tqdm(total=t.max_steps, initial=step, desc=name, unit="step", dynamic_ncols=True)
    train_model.train()
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)
    window_start, window_tokens = time.perf_counter(), 0
    while step < t.max_steps:
        step += 1
        lr = learning_rate(step, cfg, t.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = loader.next_batch()
        loss_sum = 0.0
        for i, (xm, ym) in enumerate(zip(x.split(micro), y.split(micro))):
            with gradient_sync(train_model, d, enabled=i == accumulation - 1):
                with autocast():
                    _, loss = train_model(xm.to(d.device, non_blocking=True), ym.to(d.device, non_blocking=True))
                (loss / accumulation).backward()
            loss_sum += float(loss.detach())
        train_loss = d.mean(loss_sum / accumulation)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"loss is {train_loss} at step {step}; stopping, the last good checkpoint "
                                     f"is kept")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += t.batch_size * seq_len
        window_tokens += t.batch_size * seq_len
        record = None
        if step % cfg.logger.log_every == 0 or step == t.max_steps:
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            record = {"step": step, "tokens": tokens, "loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_s": window_tokens / elapsed, **logged_scalars(model)}
            if peak is not None:
                record["mfu"] = record["tokens_per_s"] * token_flops / (peak * d.world)
            if d.device.type == "cuda":
                record["peak_memory_gb"] = torch.cuda.max_memory_allocated(d.device) / 1e9
            window_start, window_tokens = time.perf_counter(), 0
        if step % t.eval_every == 0 or step == t.max_steps:
            record = record or {"step": step, "tokens": tokens}
            record["val_loss"] = evaluate(train_model, val_batches, d.device, autocast)
        if record is not None and d.is_main:
            metrics.write(record)
            wandb_log.log(record)
        if progress is not None:
            progress.update(1)
            if record is not None:
                shown = {"loss": f"{train_loss:.3f}"}
                for key, label, fmt in (("tokens_per_s", "tok/s", ".0f"), ("mfu", "mfu", ".1%"),
                                        ("val_loss", "val", ".3f")):
                    if key in record:
                        shown[label] = format(record[key], fmt)
                progress.set_postfix(shown)
        if t.stop_after_step is not None and step >= t.stop_after_step and not restarted:
            if d.is_main:
                print(f"stopping after step {step} (trainer.stop_after_step), without a final checkpoint",
                      flush=True)
            if "TORCHELASTIC_RESTART_COUNT" in os.environ:  # under torchrun: die as a killed job would
                d.barrier()  # every process past this step first, so that none waits on a dead peer
                os.kill(os.getpid(), signal.SIGKILL)
            return run_dir
        signalled = d.any(stop.received is not None)
        if step % t.checkpoint_every == 0 or step == t.max_steps or signalled:
            save()
        if signalled:
            if d.is_main:
                print(f"received {stop.received or 'a stop signal'}: saved step {step}, exiting", flush=True)
            return run_dir
    if progress is not None:
        progress.close()
    if wandb_log is not None:
        wandb_log.finish()
    return run_dir


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run_dir = train(cfg)
    except (ConfigError, FileNotFoundError, ValueError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"done: {run_dir}", flush=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and HydraConfig.get().mode == RunMode.RUN:
        exit_without_teardown()


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


if __name__ == "__main__":
    main()
