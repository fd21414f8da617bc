"""Evaluate a trained run: python eval.py run_dir=runs/<name> tasks=[val_loss]

Writes runs/<name>/eval/<task>.json, a markdown table runs/<name>/eval/results.md, and plots.
Tasks:
    val_loss   loss and perplexity on the held-out split; loss against token position (plot)
"""
from __future__ import annotations

import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from data.loader import ensure_prepared, validation_batches
from model.checkpoint import load_run


def device_and_autocast(cfg: DictConfig):
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision == "bf16":
        return device, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return device, nullcontext


@torch.no_grad()
def val_loss(model, run_cfg, cfg, device, autocast, out_dir: Path) -> dict:
    """Mean loss and perplexity over a fixed validation set, and the mean loss at each token position."""
    seq_len = int(cfg.seq_len or run_cfg.model.seq_len)
    if seq_len > model.max_seq_len:
        raise ValueError(f"seq_len={seq_len} exceeds the model's max_seq_len={model.max_seq_len}")
    batches = list(validation_batches(ensure_prepared(run_cfg.data), cfg.batch_size, seq_len, cfg.max_batches))
    per_position = torch.zeros(seq_len, dtype=torch.float64)
    count = 0
    for x, y in batches:
        with autocast():
            logits, _ = model(x.to(device))
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none")
        per_position += losses.double().sum(0).cpu()
        count += x.shape[0]
    per_position /= count
    loss = float(per_position.mean())
    result = {"loss": loss, "perplexity": math.exp(loss), "seq_len": seq_len, "sequences": count,
              "tokens": count * seq_len, "loss_by_position": per_position.tolist()}
    plot_loss_by_position(per_position, out_dir / "val_loss_by_position")
    return result


def plot_loss_by_position(per_position: torch.Tensor, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(per_position) + 1), per_position.numpy())
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("validation loss (nats)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(stem.with_suffix(f".{ext}"), dpi=150)
    plt.close(fig)


TASKS = {"val_loss": val_loss}


def write_table(results: dict, run_name: str, step: int, path: Path) -> None:
    lines = [f"# Evaluation of {run_name} (step {step})", "", "| task | metric | value |", "|---|---|---|"]
    for task, result in results.items():
        for key, value in result.items():
            if isinstance(value, (int, float)):
                lines.append(f"| {task} | {key} | {value:.4f} |" if isinstance(value, float)
                             else f"| {task} | {key} | {value} |")
    path.write_text("\n".join(lines) + "\n")


def evaluate(cfg: DictConfig) -> Path:
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; choose from: {', '.join(TASKS)}")
    device, autocast = device_and_autocast(cfg)
    model, run_cfg, step = load_run(cfg.run_dir, device, cfg.checkpoint)
    out_dir = Path(cfg.run_dir) / "eval"
    out_dir.mkdir(exist_ok=True)
    results = {}
    for task in cfg.tasks:
        results[task] = TASKS[task](model, run_cfg, cfg, device, autocast, out_dir)
        (out_dir / f"{task}.json").write_text(json.dumps({"step": step, **results[task]}, indent=1))
        print(f"{task}: " + ", ".join(f"{k}={v:.4f}" for k, v in results[task].items() if isinstance(v, float)))
    write_table(results, Path(cfg.run_dir).name, step, out_dir / "results.md")
    return out_dir


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        out_dir = evaluate(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"results in {out_dir}")


if __name__ == "__main__":
    main()
