"""The training loop: ``train(cfg)`` prepares a run (every check, nothing written), then opens its directory
and steps: forward/backward over micro-batches, clip, AdamW, log, evaluate, checkpoint."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from data.loader import TokenLoader, ensure_prepared, read_meta, validation_batches
from model.checkpoint import CONFIG, latest_checkpoint, run_name
from model.gpt import GPT
from training.checkpointing import load_initial_weights, restore, save
from training.config import (Batching, ConfigError, adopt_saved_settings, batching, build_checked_model,
                             check_resumed_config, check_run_dir, check_settings, compile_caveat, resolve_precision)
from training.distributed import Distributed, gradient_sync, restarted, setup_distributed, teardown, wrap_model
from training.faults import pause_point, stop_after_step
from training.metrics import Diagnostics, Reporter, UnreadLosses, import_wandb
from training.profiling import StepProfiler
from training.rng import seed_everything
from training.schedule import learning_rate
from training.signals import StopSignal


@dataclass
class Run:
    """A run made ready by ``prepare``: its place, settings, model, optimiser and data, at ``step``."""

    cfg: DictConfig
    d: Distributed
    dir: Path
    restarted: bool  # by torchrun after a failure: resumes by itself
    precision: str
    batching: Batching
    model: GPT  # unwrapped: parameters, λ and β, FLOPs
    train_model: torch.nn.Module  # wrapped for the strategy
    autocast: Callable
    optimizer: torch.optim.Optimizer
    loader: TokenLoader
    val_batches: list
    resumed_from: Path | None = None
    step: int = 0
    tokens: int = 0
    wandb_id: str | None = None


def train(cfg: DictConfig) -> Path:
    """Train as ``cfg`` says; returns the run directory."""
    d = setup_distributed(cfg)
    finished = False
    try:
        with StopSignal() as stop:
            run = prepare(cfg, d)
            reporter = open_run_dir(run)
            try:
                steps(run, reporter, stop)
            finally:
                reporter.close()
            finished = True
            return run.dir
    finally:
        teardown(d, finished)


def sweep_job() -> int | None:
    """This job's number in a Hydra sweep (-m), else None."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get().job.num
    return None


def prepare(cfg: DictConfig, d: Distributed) -> Run:
    """Check everything and build the model, optimiser and data (restored on resume); writes no run file."""
    name = run_name(cfg, sweep_job())
    run_dir = Path(cfg.runs_root) / name
    with open_dict(cfg):
        cfg.resume = bool(cfg.resume) or (restarted() and (run_dir / CONFIG).is_file())
    check_run_dir(cfg, run_dir)
    if cfg.resume and HydraConfig.initialized():  # the command line is known: keep what it leaves unset
        with open_dict(cfg):
            adopt_saved_settings(cfg, run_dir, HydraConfig.get().overrides.task)
    check_resumed_config(cfg, run_dir)
    if d.is_main:
        import_wandb(cfg)  # a missing package or a bad mode stops the run here
    check_settings(cfg)
    precision = resolve_precision(cfg, d.device)
    caveat = compile_caveat(cfg, d.device)
    if caveat and d.is_main:
        warnings.warn(caveat, stacklevel=2)
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    layout = batching(cfg, d.world, d.context_size)
    shard_dir = prepared_shards(cfg, d)
    with open_dict(cfg):
        cfg.name = name
        cfg.model.vocab_size = int(read_meta(shard_dir)["vocab_size"])
    seed_everything(int(cfg.seed))
    model = build_checked_model(cfg).to(d.device)
    if cfg.init_from:
        load_initial_weights(model, cfg.init_from)
    model.split_context(d.context)
    model.loss_chunk = cfg.trainer.loss_chunk
    train_model, autocast = wrap_model(model, cfg, d, precision)
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameter_groups(o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  fused=d.device.type == "cuda" and d.strategy != "fsdp2")
    seq_len, bos_aligned = int(cfg.model.seq_len), bool(cfg.data.bos_aligned)
    loader = TokenLoader(shard_dir, "train", layout.per_rank, seq_len, rank=d.data_rank, world_size=d.data_world,
                         seed=int(cfg.seed), bos_aligned=bos_aligned)
    try:
        val_batches = list(validation_batches(shard_dir, layout.micro, seq_len, cfg.trainer.eval_batches,
                                              bos_aligned=bos_aligned))
    except ValueError as exc:
        raise ConfigError(f"validation batches from {shard_dir} with model.seq_len={seq_len} and micro-batches "
                          f"of {layout.micro} sequences: {exc}") from exc
    run = Run(cfg, d, run_dir, restarted(), precision, layout, model, train_model, autocast, optimizer, loader,
              val_batches)
    if cfg.resume:
        resume(run)
    return run


def prepared_shards(cfg: DictConfig, d: Distributed) -> Path:
    """The shard folder of cfg.data; rank 0 makes the built-in corpus's on first use while the others wait."""
    shard_dir = ensure_prepared(cfg.data) if d.is_main else None
    d.barrier()
    return shard_dir if shard_dir is not None else ensure_prepared(cfg.data)


def resume(run: Run) -> None:
    """Restore the newest complete checkpoint (a torchrun restart before the first one starts afresh)."""
    path = latest_checkpoint(run.dir)
    if path is None and not run.restarted:
        every = run.cfg.trainer.checkpoint_every
        raise ConfigError(f"resume=true but {run.dir} has no complete checkpoint: the run stopped before its first "
                          f"(every trainer.checkpoint_every={every} steps), so there is nothing to continue; remove "
                          f"{run.dir} to start it again, or choose another name=")
    if path is not None:
        state = restore(path, run.d, run.train_model, run.optimizer, run.loader)
        run.resumed_from, run.step, run.tokens, run.wandb_id = path, state["step"], state["tokens"], state["wandb_id"]


def open_run_dir(run: Run) -> Reporter:
    """Write the run directory (rank 0): config.yaml, then metrics.jsonl and wandb's files; announce the run."""
    cfg, d = run.cfg, run.d
    if d.is_main:
        run.dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run.dir / CONFIG, resolve=True)
    reporter = Reporter(cfg, d, run.dir, run.model, run.step, bool(cfg.resume), run.wandb_id)
    start = (f"resuming at step {run.step}" if run.resumed_from else
             f"starting from the weights of {cfg.init_from}" if cfg.init_from else "from scratch")
    context = f", sequences split over {d.context_size} processes" if d.context else ""
    if d.is_main:
        print(f"run {run.dir}: {cfg.attention.name} attention, {run.model.num_parameters() / 1e6:.2f}M parameters, "
              f"{d.world} x {d.device.type} ({d.strategy}, {run.precision}{context}), {start}", flush=True)
    return reporter


def steps(run: Run, reporter: Reporter, stop: StopSignal) -> None:
    """Train from ``run.step`` to trainer.max_steps, or until a stop signal or the test's stop_after_step."""
    cfg, d, t = run.cfg, run.d, run.cfg.trainer
    step_tokens = t.batch_size * int(cfg.model.seq_len)
    diagnostics = Diagnostics(cfg, d, run.val_batches)
    profiler = StepProfiler(t.profile_steps, t.profile_skip, d.device, run.dir, d.is_main)
    losses = UnreadLosses()
    if t.cuda_graphs:
        fixed_gradients(run.model)
    reporter.start(run.step, run.dir.name)
    run.train_model.train()
    while run.step < t.max_steps:
        run.model.set_step(run.step)  # steps taken so far (the restored step on resume): β warm-up
        run.step += 1
        profiler.before_step(run.step)
        loss, grad_norm, lr = train_step(run)
        profiler.after_step()
        run.tokens += step_tokens
        losses.add(run.step, loss)
        record = reporter.measure(run.step, run.tokens, step_tokens, losses, lr, grad_norm)
        if run.step % t.eval_every == 0 or run.step == t.max_steps:
            record = record or {"step": run.step, "tokens": run.tokens}
            record["val_loss"] = evaluate(run)
        if diagnostics.due(run.step):
            record = record or {"step": run.step, "tokens": run.tokens}
            record.update(diagnostics.measure(run.model))
        reporter.write(record)
        if stop_after_step(cfg, d, run.step, run.restarted):
            return
        signalled = d.any(stop.received is not None)
        if run.step % t.checkpoint_every == 0 or run.step == t.max_steps or signalled:
            losses.check(d)  # never a checkpoint of weights a non-finite loss has reached
            save(run.dir, d, run.train_model, run.optimizer, run.loader,
                 {"step": run.step, "tokens": run.tokens, "wandb_id": reporter.wandb_id}, t.keep_last)
            pause_point("saved", run.step)
        if signalled:
            if d.is_main:
                print(f"received {stop.received or 'a stop signal'}: saved step {run.step}, exiting", flush=True)
            return


def train_step(run: Run) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimiser step over the global batch (gradients accumulated over micro-batches, reduced on the
    last): returns (this process's mean loss over its micro-batches and the gradient norm before clipping, both
    0-d tensors left on the device unread, and the learning rate)."""
    d, b = run.d, run.batching
    lr = learning_rate(run.step, run.cfg, run.cfg.trainer.max_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    x, y = own_tokens(run.loader.next_batch(), d)
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    graphs = run.cfg.trainer.cuda_graphs
    for i, (xm, ym) in enumerate(zip(x.split(b.micro), y.split(b.micro))):
        if graphs:  # the previous replay's outputs are consumed: the graphs may write over them
            torch.compiler.cudagraph_mark_step_begin()
        with gradient_sync(run.train_model, d, enabled=i == b.accumulation - 1):
            with run.autocast():
                _, loss = run.train_model(xm.to(d.device, non_blocking=True), ym.to(d.device, non_blocking=True))
            (loss / b.accumulation).backward()
        loss_sum += loss.detach()  # on the device: no wait for the GPU between micro-batches
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.grad_clip)
    pause_point("step", run.step)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=not graphs)  # CUDA graphs: the gradients' fixed buffers (fixed_gradients)
    return loss_sum / b.accumulation, grad_norm, lr


def fixed_gradients(model: torch.nn.Module) -> None:
    """Give every trainable parameter a zero gradient buffer of its own, for trainer.cuda_graphs. A gradient the
    backward's CUDA graph returned into an empty .grad would stay in the graph's memory and be overwritten by the
    next replay (the next micro-batch's); into an existing buffer it is added, and the buffer stays the parameter's."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def own_tokens(batch: tuple[torch.Tensor, torch.Tensor], d: Distributed) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's tokens of whole-sequence batches (x, y): its chunks under context parallelism."""
    return batch if d.context is None else (d.context.shard(batch[0]), d.context.shard(batch[1]))


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean loss over the fixed validation batches (the same on every process; split like the training batches
    within a context group)."""
    run.train_model.eval()
    total = 0.0
    for batch in run.val_batches:
        x, y = own_tokens(batch, run.d)
        if run.cfg.trainer.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with run.autocast():
            _, loss = run.train_model(x.to(run.d.device), y.to(run.d.device))
        total += float(loss)
    run.train_model.train()
    mean = total / len(run.val_batches)
    return mean if run.d.context is None else run.d.context.mean(mean)
