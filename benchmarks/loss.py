"""GPU benchmark of the language-model loss's pass over one chunk of tokens, as model/loss.py's chunked loss runs it:
the logits of the chunk (the head's product), then each row's loss and the gradient (softmax − one-hot) / n.

    python -m benchmarks.loss                                # 8192 tokens, GPT-2's vocabulary, d = 768, bf16
    python -m benchmarks.loss --tokens 4096 16384 --vocab 32000

Rows, per token count (the same function, model.loss._chunk_loss_and_gradient, each way it can run):
  kernel          the pass on kernels/cross_entropy.py (model.loss.FUSED, the default on CUDA)
  compiled        the pass as PyTorch expressions under torch.compile (FUSED off; what compiled training ran before)
  eager           the same expressions eagerly
  head product    the logits alone, F.linear(hidden, weight), so the pass's own share can be read off
Each row but the last gives its loss's relative difference and its gradient's largest difference from a float64
computation from the same logits. The vocabulary is padded to a multiple of model.loss.VOCAB_ALIGN as the chunked loss
pads it. Times are medians of CUDA-event timings (triton.testing.do_bench).
"""
from __future__ import annotations

import argparse
from typing import Callable, Optional
from unittest.mock import patch

import torch
import torch.nn.functional as F

from benchmarks import timing
from model import loss as model_loss


def inputs(tokens: int, vocab: int, d: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """A chunk's hidden states (tokens, d), the head's weight padded as the chunked loss pads it, targets, and n, the
    step's token count the mean divides by (eight such chunks)."""
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(tokens, d, device=device, dtype=torch.float32, generator=g).to(dtype)
    weight = (torch.randn(vocab, d, device=device, dtype=torch.float32, generator=g) * d ** -0.5).to(dtype)
    targets = torch.randint(0, vocab, (tokens,), device=device, generator=g)
    return dict(hidden=hidden, weight=model_loss._padded(weight), targets=targets, vocab=vocab, n=8 * tokens)


def reference(x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, gradient of the mean loss with respect to the logits) in float64, from the logits as the head's
    product in the inputs' dtype gives them."""
    wide = F.linear(x["hidden"], x["weight"]).double()
    wide[:, x["vocab"]:] = float("-inf")
    lse = wide.logsumexp(-1)
    rows = torch.arange(len(x["targets"]), device=wide.device)
    grad = (wide - lse[:, None]).exp()
    grad[rows, x["targets"]] -= 1.0
    return (lse - wide[rows, x["targets"]]).sum(), grad / x["n"]


def methods(x: dict) -> dict[str, tuple[Callable[[], object], bool]]:
    """Name -> (the call, whether it runs with FUSED on); the head product returns the logits."""
    args = (x["hidden"], x["weight"], x["targets"], x["vocab"], x["n"])
    compiled = torch.compile(model_loss._chunk_loss_and_gradient, dynamic=False)
    return {
        "kernel": (lambda: model_loss._chunk_loss_and_gradient(*args), True),
        "compiled": (lambda: compiled(*args), False),
        "eager": (lambda: model_loss._chunk_loss_and_gradient(*args), False),
        "head product": (lambda: F.linear(x["hidden"], x["weight"]), False),
    }


def bench(tokens: int, vocab: int, d: int, dtype: torch.dtype, rep_ms: int, device: str = "cuda") -> list[dict]:
    """One row per method at this token count: ms, and (but for the head product) the loss's relative difference
    and the gradient's largest absolute difference from the float64 reference."""
    x = inputs(tokens, vocab, d, dtype, device)
    ref_loss, ref_grad = reference(x)
    rows = []
    for name, (call, on) in methods(x).items():
        with patch.object(model_loss, "FUSED", on):
            out = call()
            ms = timing.time_ms(call, [], rep_ms)
        row = dict(tokens=tokens, vocab=vocab, method=name, ms=ms, loss_err=None, grad_err=None)
        if name != "head product":
            loss, grad = out
            row["loss_err"] = abs(loss.double().item() - ref_loss.item()) / abs(ref_loss.item())
            row["grad_err"] = (grad.double() - ref_grad).abs().max().item()
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| tokens | vocabulary | method | ms | loss, relative difference | gradient, largest difference |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        errs = ["—" if r[k] is None else f"{r[k]:.1e}" for k in ("loss_err", "grad_err")]
        lines.append(f"| {r['tokens']} | {r['vocab']} | {r['method']} | {r['ms']:.3f} | {errs[0]} | {errs[1]} |")
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=_positive, nargs="+", default=[8192], help="tokens per chunk")
    parser.add_argument("--vocab", type=_positive, default=50257, help="classes (padded as the chunked loss pads them)")
    parser.add_argument("--d", type=_positive, default=768, help="width of the hidden states")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--rep-ms", type=_positive, default=300, help="timing window per measurement")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.loss needs a CUDA GPU")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    header = timing.run_header(args.dtype, f"d {args.d}")
    rows = []
    for tokens in args.tokens:
        rows += bench(tokens, args.vocab, args.d, dtype, args.rep_ms)
    print(header + "\n" + format_table(rows))


if __name__ == "__main__":
    main()
