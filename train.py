"""Pretrain a GPT with the attention of your choice.

    python train.py                                   # TDA, tiny model, built-in corpus (CPU or GPU)
    python train.py attention=softmax optim.lr=1e-3   # any config value from the command line
    python train.py -m attention=softmax,tda seed=0,1 # a sweep: one run directory per job
    python train.py name=<run> resume=true            # continue a run exactly where it stopped

Everything a run writes goes to runs/<name>/ (see model/checkpoint.py for the layout).
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

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


def pick_device(cfg: DictConfig) -> torch.device:
    wanted = cfg.trainer.device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available")
    return torch.device(wanted)


def autocast_context(cfg: DictConfig, device: torch.device):
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return nullcontext
    raise ConfigError(f"trainer.precision must be auto, bf16 or fp32, got '{precision}'")


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


class WandbLogger:
    """wandb (imported only when ``logger.wandb.mode`` is online or offline)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, run_id: str | None):
        self.run = None
        mode = cfg.logger.wandb.mode
        if mode == "disabled":
            return
        if mode not in ("online", "offline"):
            raise ConfigError(f"logger.wandb.mode must be online, offline or disabled, got '{mode}'")
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError("logger.wandb.mode needs the wandb package: pip install wandb") from exc
        self.run = wandb.init(project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity, mode=mode,
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


def attention_scalars(model: torch.nn.Module) -> dict:
    """λ (and learnable β) of every layer, for logging."""
    out = {}
    for i, block in enumerate(model.blocks):
        attn = block.attn
        if hasattr(attn, "lam"):
            out[f"lambda/{i}"] = float(attn.lam().detach().float().mean())
        beta = getattr(attn, "beta", None)
        if beta is not None and getattr(beta, "raw", None) is not None:
            out[f"beta/{i}"] = float(beta().detach().float().mean())
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


def train(cfg: DictConfig) -> Path:
    name = run_name(cfg)
    run_dir = Path(cfg.runs_root) / name
    check_run_dir(cfg, run_dir)
    device = pick_device(cfg)
    autocast = autocast_context(cfg, device)
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    t = cfg.trainer
    micro = t.micro_batch_size or t.batch_size
    if t.batch_size % micro:
        raise ConfigError(f"trainer.batch_size ({t.batch_size}) must be a multiple of trainer.micro_batch_size "
                          f"({micro})")
    seq_len = int(cfg.model.seq_len)
    if seq_len > cfg.model.max_seq_len:
        raise ConfigError(f"model.seq_len ({seq_len}) exceeds model.max_seq_len ({cfg.model.max_seq_len})")

    shard_dir = ensure_prepared(cfg.data)
    meta = read_meta(shard_dir)
    with open_dict(cfg):
        cfg.name = name
        cfg.model.vocab_size = int(meta["vocab_size"])
    check_resumed_config(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / CONFIG, resolve=True)

    seed_everything(int(cfg.seed))
    model = build_model(cfg).to(device)
    if cfg.init_from:
        source = latest_checkpoint(cfg.init_from)
        if source is None:
            raise ConfigError(f"init_from={cfg.init_from}: no complete checkpoint there")
        try:
            model.load_state_dict(load_checkpoint(source)[0])
        except RuntimeError as exc:
            raise ConfigError(f"init_from={cfg.init_from}: weights do not fit this model "
                              f"({str(exc).splitlines()[0]})") from exc
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                                  fused=device.type == "cuda")
    loader = TokenLoader(shard_dir, "train", t.batch_size, seq_len, seed=int(cfg.seed),
                         bos_aligned=bool(cfg.data.bos_aligned))
    val_batches = list(validation_batches(shard_dir, micro, seq_len, t.eval_batches))
    step, tokens, wandb_id = 0, 0, None
    resume_from = latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise ConfigError(f"resume=true but {run_dir} has no complete checkpoint")
    if resume_from is not None:
        model_state, state = load_checkpoint(resume_from, map_location=device)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        step, tokens, wandb_id = state["step"], state["tokens"], state.get("wandb_id")
    train_model = torch.compile(model) if t.compile else model
    metrics = MetricsLog(run_dir / METRICS, step if resume_from is not None else None)
    wandb_log = WandbLogger(cfg, run_dir, wandb_id)

    def save() -> None:
        state = {"step": step, "tokens": tokens, "optimizer": optimizer.state_dict(),
                 "loader": loader.state_dict(), "rng": rng_state(), "wandb_id": wandb_log.run_id}
        save_checkpoint(run_dir, step, model.state_dict(), state, keep_last=t.keep_last)

    print(f"run {run_dir}: {cfg.attention.name} attention, {model.num_parameters() / 1e6:.2f}M parameters, "
          f"{device.type}, {'resuming at step ' + str(step) if resume_from else 'from scratch'}", flush=True)
    progress = None
    if cfg.logger.progress:
        from tqdm import tqdm
        progress = tqdm(total=t.max_steps, initial=step, desc=name, unit="step", dynamic_ncols=True)
    model.train()
    window_start, window_tokens = time.perf_counter(), 0
    while step < t.max_steps:
        step += 1
        lr = learning_rate(step, cfg, t.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = loader.next_batch()
        loss_sum = 0.0
        for xm, ym in zip(x.split(micro), y.split(micro)):
            with autocast():
                _, loss = train_model(xm.to(device, non_blocking=True), ym.to(device, non_blocking=True))
            (loss / (len(x) // micro)).backward()
            loss_sum += float(loss.detach())
        train_loss = loss_sum / (len(x) // micro)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"loss is {train_loss} at step {step}; the last good checkpoint is kept")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += x.numel()
        window_tokens += x.numel()
        record = None
        if step % cfg.logger.log_every == 0 or step == t.max_steps:
            elapsed = time.perf_counter() - window_start
            record = {"step": step, "tokens": tokens, "loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_s": window_tokens / max(elapsed, 1e-9), **attention_scalars(model)}
            window_start, window_tokens = time.perf_counter(), 0
        if step % t.eval_every == 0 or step == t.max_steps:
            record = record or {"step": step, "tokens": tokens}
            record["val_loss"] = evaluate(train_model, val_batches, device, autocast)
        if record is not None:
            metrics.write(record)
            wandb_log.log(record)
        if progress is not None:
            progress.update(1)
            if record is not None:
                shown = {"loss": f"{train_loss:.3f}"}
                if "tokens_per_s" in record:
                    shown["tok/s"] = f"{record['tokens_per_s']:.0f}"
                if "val_loss" in record:
                    shown["val"] = f"{record['val_loss']:.3f}"
                progress.set_postfix(shown)
        if t.stop_after_step is not None and step >= t.stop_after_step:
            print(f"stopping after step {step} (trainer.stop_after_step), without a final checkpoint", flush=True)
            return run_dir
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            save()
    if progress is not None:
        progress.close()
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


if __name__ == "__main__":
    main()
