"""Evaluate a trained run: python eval.py run_dir=runs/<name> tasks=[val_loss,passkey]

Loads the run's config and newest checkpoint (or ``checkpoint=``), runs the chosen tasks and writes
runs/<name>/eval/<task>.json, plots (PNG + PDF), and a markdown table runs/<name>/eval/results.md of
every task result saved there so far.
Tasks (evaluation/<module>.py, options in conf/eval.yaml):
    val_loss              loss and perplexity on the held-out split; loss against token position
    length_extrapolation  perplexity at 1×, 2×, 4×, 8× the training length, with and without NTK-aware RoPE
    passkey               passkey retrieval with 1, 2, 4 keys over lengths × depths (exact match and likelihood)
    zero_shot             HellaSwag, ARC-Easy/Challenge, OpenBookQA, PIQA, Winogrande via lm-evaluation-harness
    sample                text generated from a prompt (printed)
Bad input (no checkpoint, unknown task, a length the model cannot take) is one line `error: ...`, exit 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from evaluation import length, passkey, sample, val_loss, zero_shot
from evaluation.context import EvalContext, device_and_autocast
from model.checkpoint import load_run

TASKS = {"val_loss": val_loss, "length_extrapolation": length, "passkey": passkey, "zero_shot": zero_shot,
         "sample": sample}


def flatten(result: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) for every number and string of a nested result; lists are left out."""
    rows = []
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, f"{name}/")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            rows.append((name, value))
    return rows


def write_table(out_dir: Path, run_name: str) -> Path:
    """results.md: every task result saved in ``out_dir`` (this call's and earlier ones), with its step."""
    lines = [f"# Evaluation of {run_name}", "", "| task | step | metric | value |", "|---|---|---|---|"]
    for task in TASKS:
        path = out_dir / f"{task}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        step = result.pop("step", "?")
        for key, value in flatten(result):
            shown = f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")
            lines.append(f"| {task} | {step} | {key} | {shown} |")
    table = out_dir / "results.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def evaluate(cfg: DictConfig) -> Path:
    tasks = list(cfg.tasks) if isinstance(cfg.tasks, (list, ListConfig)) else [cfg.tasks]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task(s) {', '.join(map(str, unknown)) or '(none given)'}; "
                         f"choose from: {', '.join(TASKS)}")
    device, autocast = device_and_autocast(str(cfg.device), str(cfg.precision))
    model, run_cfg, step = load_run(cfg.run_dir, device, cfg.checkpoint)
    out_dir = Path(cfg.run_dir) / "eval"
    ctx = EvalContext(model, run_cfg, cfg, device, autocast, out_dir)
    for task in tasks:
        TASKS[task].check(ctx)
    out_dir.mkdir(exist_ok=True)
    for task in tasks:
        result = TASKS[task].run(ctx)
        (out_dir / f"{task}.json").write_text(json.dumps({"step": step, **result}, indent=1))
        summary = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in flatten(result)
                   if isinstance(v, float) or k.endswith("status")][:8]
        print(f"{task}: " + ", ".join(summary), flush=True)
    write_table(out_dir, Path(cfg.run_dir).name)
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
