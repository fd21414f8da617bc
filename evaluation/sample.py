"""sample: text generated from ``sample.prompt`` with the key/value cache (printed and saved)."""
from __future__ import annotations

import torch

from evaluation import options
from evaluation.context import EvalContext


def check(ctx: EvalContext) -> None:
    cfg = ctx.cfg.sample
    for key, low in (("sample.max_new_tokens", 1), ("sample.num_samples", 1), ("sample.seed", None)):
        options.integer(ctx.cfg, key, low=low)
    options.number(ctx.cfg, "sample.temperature", low=0.0)
    options.integer(ctx.cfg, "sample.top_k", low=1, optional=True)
    prompt = len(ctx.bos_prefix + ctx.tokenizer.encode_ordinary(options.text(ctx.cfg, "sample.prompt"))) or 1
    if prompt + int(cfg.max_new_tokens) > ctx.model.max_seq_len:
        raise ValueError(f"sample.prompt ({prompt} tokens) + sample.max_new_tokens={cfg.max_new_tokens} exceeds "
                         f"the model's max_seq_len={ctx.model.max_seq_len}")


def run(ctx: EvalContext) -> dict:
    cfg, enc = ctx.cfg.sample, ctx.tokenizer
    prompt = ctx.bos_prefix + enc.encode_ordinary(str(cfg.prompt)) or [enc.eot_token]
    generator = torch.Generator(device=ctx.device).manual_seed(int(cfg.seed))
    idx = torch.tensor([prompt] * int(cfg.num_samples), device=ctx.device)
    with ctx.autocast():
        out = ctx.model.generate(idx, int(cfg.max_new_tokens), temperature=float(cfg.temperature),
                                 top_k=cfg.top_k, generator=generator)
    texts = [enc.decode(row[len(prompt):].tolist(), errors="replace") for row in out]
    for i, text in enumerate(texts):
        print(f"--- sample {i} ---\n{cfg.prompt}{text}", flush=True)
    return {"prompt": str(cfg.prompt), "temperature": float(cfg.temperature), "texts": texts}
