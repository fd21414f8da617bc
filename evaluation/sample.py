"""sample: text generated from ``sample.prompt`` with the key/value cache (printed and saved)."""
from __future__ import annotations

import torch

from evaluation.context import EvalContext


def check(ctx: EvalContext) -> None:
    cfg = ctx.cfg.sample
    prompt = len(ctx.bos_prefix + ctx.tokenizer.encode_ordinary(str(cfg.prompt))) or 1
    if int(cfg.num_samples) < 1:
        raise ValueError(f"sample.num_samples must be >= 1, got {cfg.num_samples}")
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
