"""zero_shot: the paper's zero-shot tasks through EleutherAI's lm-evaluation-harness (``pip install
lm_eval``), on our model through ``evaluation.harness.HarnessLM``.

Each task runs on its own: a task whose data the harness cannot obtain (no access to the hub, or
lm_eval not installed) is reported as not run, with the reason, and the others still run. Local task
configs (YAML) can be added with ``zero_shot.include_path``.
"""
from __future__ import annotations

from evaluation import options
from evaluation.context import EvalContext


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def check(ctx: EvalContext) -> None:
    options.texts(ctx.cfg, "zero_shot.tasks")
    options.integer(ctx.cfg, "zero_shot.limit", low=1, optional=True)
    options.integer(ctx.cfg, "zero_shot.max_length", low=2, high=ctx.model.max_seq_len, optional=True)
    options.integer(ctx.cfg, "zero_shot.batch_size", low=1)
    options.integer(ctx.cfg, "zero_shot.bootstrap_iters", low=0)
    options.integer(ctx.cfg, "zero_shot.seed")
    options.text(ctx.cfg, "zero_shot.include_path", optional=True)


def run(ctx: EvalContext) -> dict:
    cfg = ctx.cfg.zero_shot
    tasks = options.texts(ctx.cfg, "zero_shot.tasks")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        from evaluation.harness import HarnessLM
    except ImportError as exc:
        reason = f"lm-evaluation-harness is not installed (pip install lm_eval): {_reason(exc)}"
        return {task: {"status": "not run", "reason": reason} for task in tasks}
    lm = HarnessLM(ctx.model, ctx.tokenizer, max_length=cfg.max_length or ctx.train_len,
                   batch_size=int(cfg.batch_size), autocast=ctx.autocast, bos=ctx.bos_aligned)
    manager = TaskManager(include_path=cfg.include_path)
    results: dict[str, dict] = {}
    for task in tasks:
        try:
            out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=cfg.limit,
                                  num_fewshot=0, log_samples=False, bootstrap_iters=int(cfg.bootstrap_iters),
                                  random_seed=int(cfg.seed), numpy_random_seed=int(cfg.seed),
                                  torch_random_seed=int(cfg.seed), fewshot_random_seed=int(cfg.seed))
        except Exception as exc:  # the harness raises many kinds of errors for data it cannot load
            results[task] = {"status": "not run", "reason": _reason(exc)}
            print(f"zero_shot {task}: not run ({results[task]['reason']})", flush=True)
            continue
        metrics = out["results"].get(task, {})
        scores = {key.split(",")[0]: float(value) for key, value in metrics.items()
                  if isinstance(value, (int, float)) and "stderr" not in key}
        results[task] = {"status": "ok", **scores, "samples": int(out.get("n-samples", {}).get(task, {})
                                                              .get("effective", 0))}
        print(f"zero_shot {task}: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()), flush=True)
    return results
