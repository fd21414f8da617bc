"""What a run reports: metrics.jsonl (always), wandb (logger.wandb.mode online or offline) and a progress bar.

Every process measures (FSDP2 gathers λ and β from every rank); rank 0 writes. A record holds step, tokens,
loss, lr, grad_norm, tokens_per_s (over the steps since the last record), every per-layer scalar of the
attention (λ, learnable or warming-up β, ...), mfu (known GPUs, or trainer.peak_tflops), peak_memory_gb (CUDA),
val_loss at evaluation steps, and the attention diagnostics (``Diagnostics``) at their steps. The training losses
wait on the device until a record reads them (``UnreadLosses``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from model.checkpoint import METRICS
from training.config import ConfigError
from training.distributed import Distributed
from training.mfu import flops_per_token, peak_flops


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

    def close(self) -> None:
        self.file.close()


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
    """A wandb run in runs/<name>/wandb/ (offline: nothing leaves the machine; `wandb sync` uploads it later),
    with the resolved config; a resumed run continues the wandb run whose id its checkpoint holds."""

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
    """Every per-layer scalar the model reports (``GPT.attention_scalars``: λ, β, λ_raw, sigmoid's bias, the
    sink logit, SSMax's s, ...), as flat metrics <name>/<layer> (the mean over heads); β only where it
    changes while training (learnable, or during its warm-up), since a fixed β is in the config."""
    scalars = model.attention_scalars()
    moving_beta = any(getattr(getattr(b.attn, "beta", None), attr, None) is not None
                      for b in model.blocks for attr in ("raw", "scale"))
    out = {}
    for key, values in scalars.items():
        prefix = key.removesuffix("_per_layer")
        if prefix == "beta" and not moving_beta:
            continue
        for layer, value in enumerate(values):
            out[f"{prefix}/{layer}"] = sum(value) / len(value) if isinstance(value, list) else value
    return out


class Diagnostics:
    """Attention diagnostics while training (``logger.diagnostics_every`` steps, and the last step; 0 = off):
    ``analysis.diagnostics.attention_diagnostics`` on a probe batch fixed at the start, the first two
    validation windows, giving diag/<measure>/<layer> and diag/<measure>/mean, and diag_seconds (the
    call's time, so that its cost shows beside tokens_per_s).

    Rank 0 measures the bare model alone (under DDP the other processes wait at the next step's collective).
    Under FSDP2 every process holds only a shard of each block, and the probe calls the blocks' parts
    outside their forward (no all-gather runs there): the diagnostics are skipped, with one note at the
    start. A compiled model (trainer.compile) is probed eagerly (torch.compiler.set_stance), so the probe's
    batch of two and its eval mode add no compiled graphs. Under context parallelism the probe runs with the
    split turned off (whole windows on rank 0, no collective). The probe sees the model as it trains at that
    step (β during its warm-up included), like the validation loss logged beside it."""

    def __init__(self, cfg: DictConfig, d: Distributed, val_batches: list):
        self.every = int(cfg.logger.get("diagnostics_every", 0))
        self.last = int(cfg.trainer.max_steps)
        self.compiled = bool(cfg.trainer.compile)
        self.enabled = self.every > 0 and d.is_main and d.strategy != "fsdp2"
        if self.every > 0 and d.is_main and d.strategy == "fsdp2":
            print("logger.diagnostics_every: skipped under trainer.strategy=fsdp2 (each process holds a shard of "
                  "every block; run analysis.attention on a checkpoint instead)", flush=True)
        self.tokens = torch.cat([x for x, _ in val_batches])[:2] if self.enabled and val_batches else None
        self.enabled = self.enabled and self.tokens is not None

    def due(self, step: int) -> bool:
        return self.enabled and (step % self.every == 0 or step == self.last)

    def measure(self, model) -> dict:
        """The diag/* metrics of ``model`` (the bare GPT) on the probe batch, and diag_seconds."""
        from contextlib import nullcontext

        from analysis.diagnostics import attention_diagnostics

        start = time.perf_counter()
        context = model.context  # context parallelism gathers keys across processes; the probe runs here alone
        model.split_context(None)
        try:
            with torch.compiler.set_stance("force_eager") if self.compiled else nullcontext():
                out = attention_diagnostics(model, self.tokens)
        finally:
            model.split_context(context)
        out["diag_seconds"] = time.perf_counter() - start
        return out


class UnreadLosses:
    """The training losses of the steps since they were last read, kept on the device.

    Reading a loss waits for the GPU to finish the step, and the GPU then idles while the host prepares the next
    one; so a step's loss (and gradient norm) is read only where it is logged, and before a checkpoint, when every
    unread loss is checked at once. A non-finite loss stops the run there, naming the first step that had one; the
    last checkpoint saved is from before it."""

    def __init__(self):
        self.steps: list[int] = []
        self.losses: list[torch.Tensor] = []

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.steps.append(step)
        self.losses.append(loss)

    def check(self, d: Distributed) -> float | None:
        """Raise FloatingPointError if any unread loss (on any process) is not finite; else forget them and return
        the newest (this process's; None when there was none)."""
        if not self.losses:
            return None
        values = torch.stack(self.losses).cpu()  # one wait for the device
        steps, self.steps, self.losses = self.steps, [], []
        bad = (~torch.isfinite(values)).nonzero()
        if d.any(len(bad) > 0):
            where = (f"loss is {float(values[bad[0, 0]])} at step {steps[bad[0, 0]]}" if len(bad)
                     else f"the loss of another process is not finite by step {steps[-1]}")
            raise FloatingPointError(f"{where}; stopping, the last good checkpoint is kept")
        return float(values[-1])


class Reporter:
    """A run's records: measured on every process at logged steps, written by rank 0 to metrics.jsonl and
    wandb, and shown on its progress bar. Opening one writes into the run directory."""

    def __init__(self, cfg: DictConfig, d: Distributed, run_dir: Path, model, step: int, resumed: bool,
                 wandb_id: str | None):
        self.cfg, self.d, self.model = cfg, d, model
        self.metrics = MetricsLog(run_dir / METRICS, step if resumed else None) if d.is_main else None
        self.wandb = WandbLogger(cfg, run_dir, wandb_id) if d.is_main else None
        self.peak = peak_flops(cfg, d.device)
        self.token_flops = flops_per_token(model, int(cfg.model.seq_len))
        self.progress = None
        self.shown: dict[str, str] = {}  # the progress bar's latest values
        self.window_start, self.window_tokens = time.perf_counter(), 0

    @property
    def wandb_id(self) -> str | None:
        return None if self.wandb is None else self.wandb.run_id

    def start(self, step: int, name: str) -> None:
        """Show the progress bar (logger.progress) and start timing at optimiser step ``step``."""
        if self.cfg.logger.progress and self.d.is_main:
            from tqdm import tqdm
            self.progress = tqdm(total=self.cfg.trainer.max_steps, initial=step, desc=name, unit="step",
                                 dynamic_ncols=True)
        if self.d.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.d.device)
        self.window_start, self.window_tokens = time.perf_counter(), 0

    def measure(self, step: int, tokens: int, step_tokens: int, losses: UnreadLosses, lr: float,
                grad_norm: torch.Tensor) -> dict | None:
        """The record of a step that logger.log_every (or the last step) logs, else None. ``losses``: the loop's
        UnreadLosses, read (and checked) only here; ``grad_norm`` the step's, on the device. The loss logged is the
        mean over processes; tokens/s counts the time until the logged step's loss was on the host."""
        self.window_tokens += step_tokens
        if step % self.cfg.logger.log_every and step != self.cfg.trainer.max_steps:
            return None
        loss = self.d.mean(losses.check(self.d))
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        record = {"step": step, "tokens": tokens, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_s": self.window_tokens / elapsed, **logged_scalars(self.model)}
        if self.peak is not None:
            record["mfu"] = record["tokens_per_s"] * self.token_flops / (self.peak * self.d.world)
        if self.d.device.type == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.d.device) / 1e9
        self.window_start, self.window_tokens = time.perf_counter(), 0
        return record

    def write(self, record: dict | None) -> None:
        """Keep a record (rank 0) and advance the progress bar by one step."""
        if record is not None and self.d.is_main:
            self.metrics.write(record)
            self.wandb.log(record)
        if self.progress is None:
            return
        self.progress.update(1)
        if record is not None:  # a record without some of these (an evaluation between logged steps) keeps them
            for key, label, fmt in (("loss", "loss", ".3f"), ("tokens_per_s", "tok/s", ".0f"), ("mfu", "mfu", ".1%"),
                                    ("val_loss", "val", ".3f")):
                if key in record:
                    self.shown[label] = format(record[key], fmt)
            self.progress.set_postfix(self.shown)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.d.is_main:
            self.metrics.close()
            self.wandb.finish()
