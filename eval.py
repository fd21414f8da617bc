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
Bad input (no run_dir=, no checkpoint, an unknown task or option, a value of the wrong kind, a length
nothing can run at) is one line `error: ...` naming the option, exit 2. Lengths that only some of a task's
settings cannot run at (a passkey prompt that does not fit, a multiple beyond the model's max_seq_len) are
skipped and named in the result's `skipped` instead.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from evaluation import length, options, passkey, sample, val_loss, zero_shot
from evaluation.context import EvalContext, device_and_autocast
from model.checkpoint import checkpoint_problem, load_run

CONF_DIR = Path(__file__).resolve().parent / "conf"

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


def _tasks(cfg: DictConfig) -> list[str]:
    tasks = options.value(cfg, "tasks")
    tasks = tasks if isinstance(tasks, list) else [tasks]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task(s) {', '.join(map(str, unknown)) or '(none given)'}; "
                         f"choose from: {', '.join(TASKS)} (e.g. tasks=[val_loss,passkey])")
    return tasks


def _run_dir(cfg: DictConfig) -> str:
    if OmegaConf.is_missing(cfg, "run_dir") or cfg.run_dir is None:
        raise ValueError("run_dir= is required: pass the folder of a trained run, e.g. python eval.py "
                         "run_dir=runs/<name> (train.py writes runs/<name>/)")
    return options.text(cfg, "run_dir")


def _checkpoint(cfg: DictConfig) -> str | None:
    path = options.text(cfg, "checkpoint", optional=True)
    if path is not None:
        if not Path(path).is_dir():
            raise ValueError(f"checkpoint={path}: no such folder (pass a checkpoint folder, e.g. "
                             f"checkpoint=runs/<name>/checkpoints/step_<N>, or leave it out for the newest)")
        problem = checkpoint_problem(Path(path))
        if problem is not None:
            raise ValueError(f"checkpoint={path}: not a usable checkpoint ({problem})")
    return path


def evaluate(cfg: DictConfig) -> Path:
    run_dir = _run_dir(cfg)
    tasks = _tasks(cfg)
    device, autocast = device_and_autocast(options.text(cfg, "device"), options.text(cfg, "precision"))
    options.integer(cfg, "batch_size", low=1)
    options.integer(cfg, "max_batches", low=1)
    model, run_cfg, step = load_run(run_dir, device, _checkpoint(cfg))
    out_dir = Path(run_dir) / "eval"
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
    write_table(out_dir, Path(run_dir).name)
    return out_dir


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        out_dir = evaluate(cfg)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"results in {out_dir}")


def check_command_line(argv: list[str]) -> str | None:
    """Why the command line's overrides do not compose with conf/eval.yaml (an unknown option, an override
    Hydra cannot parse), in one line; None when they do, or when Hydra's own options (--multirun, another
    config, --help, ...) are in play, which Hydra then handles itself."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        from hydra._internal.utils import get_args_parser  # Hydra's own command-line parser (not public API)

        args = get_args_parser().parse_args(argv)
    except (ImportError, AttributeError, SystemExit):
        return None  # another Hydra version, or arguments Hydra answers itself (usage, --version)
    if any(getattr(args, name, None) for name in ("multirun", "config_path", "config_name", "config_dir", "help",
                                                   "hydra_help", "shell_completion", "info", "experimental_rerun")):
        return None
    overrides = [o for o in args.overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name="eval", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        key = getattr(exc.__cause__, "full_key", None)
        if key and "not in struct" in str(exc.__cause__):
            return f"eval.py has no option {key}: {option_names(key)} (conf/eval.yaml)"
        return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return None


def option_names(key: str) -> str:
    """The options next to ``key``: those of its group (``passkey.foo``: passkey's), else the top level's."""
    cfg = OmegaConf.load(CONF_DIR / "eval.yaml")
    group = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(cfg, group) if group else cfg
    if not isinstance(node, DictConfig):
        node, group = cfg, ""
    names = [f"{group}.{k}" if group else k for k in node if k not in ("hydra", "defaults")]
    names = [f"{n}.*" if isinstance(OmegaConf.select(cfg, n), DictConfig) else n for n in names]
    return f"the {group + ' ' if group else ''}options are {', '.join(names)}"


if __name__ == "__main__":
    problem = check_command_line(sys.argv[1:])
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
