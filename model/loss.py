"""The language-model loss over the output head, whole or in chunks of tokens.

The plain loss computes the logits of every token, (tokens, vocab) in float32 (a GPT-2 vocabulary makes them the
largest tensor of a step), then their cross-entropy, and keeps them for the backward. ``chunked_cross_entropy`` holds
the logits of at most ``chunk`` tokens at a time: for each chunk it computes the logits, their loss and, in training,
the gradients of the mean loss with respect to the chunk's hidden states and the head's weight (softmax − one-hot,
times the weight and times the hidden states), keeping only those. The backward then scales them by the incoming
gradient. The FLOPs are the plain path's (the backward's two products move into the forward); the memory for the
logits falls from O(tokens × vocab) to O(chunk × vocab). Roundings follow the plain path's: logits in the head's
compute dtype (bf16 under autocast), softmax in float32, its gradient cast back to the logits' dtype for the products.

With ``FUSED`` (the default), the chunk's pass from logits to loss and gradient on CUDA in training is one Triton
kernel (kernels/cross_entropy.py: the same float32 arithmetic, in another order; faster than what torch.compile makes
of it, and it keeps no float32 copy of the logits); elsewhere, and for the loss without gradients, it is PyTorch's.

The chunked path runs the head's three products on a vocabulary padded to a multiple of ``VOCAB_ALIGN`` (zero rows
of the weight, their logits set to −inf, so they add exactly nothing to the softmax and get a zero gradient): GPT-2's
50,257 classes make every row of the logits and of their gradient start at an address matrix-product kernels cannot
load in aligned 16-byte vectors; 50,304 can. The padding is internal: the parameter, its gradient and the
checkpoints keep the true vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.norms import at_least_fp32


VOCAB_ALIGN = 64  # classes the chunked path pads the head's weight to a multiple of (the module docstring says why)
FUSED = True      # the chunked loss's pass over the logits as one Triton kernel on CUDA (kernels/cross_entropy.py)


def _padded(weight: torch.Tensor) -> torch.Tensor:
    """The head's weight (vocab, d) with zero rows appended up to a multiple of VOCAB_ALIGN (itself when none are
    needed)."""
    extra = -weight.shape[0] % VOCAB_ALIGN
    return F.pad(weight, (0, 0, 0, extra)) if extra else weight


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """(summed cross-entropy, logits in float32, their log-sum-exp, the logits' own dtype) of one chunk of rows;
    ``weight`` padded (``_padded``) past the first ``vocab`` rows, whose logits are set to −inf."""
    logits = F.linear(hidden, weight)
    wide = at_least_fp32(logits)
    if wide.shape[1] > vocab:
        wide[:, vocab:] = float("-inf")  # exp(−inf) = 0: the padding adds nothing to the log-sum-exp or gradient
    lse = wide.logsumexp(dim=-1)
    return (lse - wide.gather(1, targets[:, None])[:, 0]).sum(), wide, lse, logits.dtype


def _logits_gradient(wide: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, n: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """The mean loss's gradient with respect to a chunk's logits, (softmax − one-hot) / n, computed in float32 from
    ``wide`` (float32 logits, −inf in the padding's columns: their softmax is 0) and cast to the logits' ``dtype``, as
    the plain backward casts it.

    Two spellings of the same float32 operations, so the same bits: eagerly, in place (the softmax overwrites
    ``wide``; the one-hot is a scatter of −1 into one element a row); under torch.compile, as one elementwise
    expression, which the compiler fuses with the log-sum-exp's pass into a single kernel that writes the gradient
    once in the logits' dtype (a scatter makes it write the float32 softmax first and read it back to cast it)."""
    if torch.compiler.is_compiling():
        softmax = (wide - lse[:, None]).exp()
        target = torch.arange(wide.shape[1], device=wide.device) == targets[:, None]
        return (torch.where(target, softmax - 1.0, softmax) / n).to(dtype)
    grad = (wide - lse[:, None]).exp_()
    grad.scatter_add_(1, targets[:, None], grad.new_full((targets.shape[0], 1), -1.0))
    return (grad / n).to(dtype)


def _chunk_loss_and_gradient(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int,
                             n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of a chunk, the mean loss's gradient with respect to its logits in their dtype);
    ``weight`` padded as for _chunk_loss. On CUDA with FUSED (not in float64) one Triton kernel reads the logits and
    writes the gradient (kernels/cross_entropy.py); elsewhere _chunk_loss and _logits_gradient."""
    if FUSED and fused_applies(hidden) and torch.float64 not in (hidden.dtype, weight.dtype):
        from kernels.cross_entropy import cross_entropy_rows

        rows, grad = cross_entropy_rows(F.linear(hidden, weight), targets, vocab, 1.0 / n)
        return rows.sum(), grad
    loss, wide, lse, dtype = _chunk_loss(hidden, weight, targets, vocab)
    return loss, _logits_gradient(wide, lse, targets, n, dtype)


def fused_applies(hidden: torch.Tensor) -> bool:
    """Whether the chunk's pass runs on the Triton kernel: CUDA tensors (the tests also run it on the CPU under Triton's
    interpreter by replacing this function)."""
    return hidden.is_cuda


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of F.linear(hidden, weight) against targets, the gradients computed chunk by chunk in the
    forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n, vocab = hidden.shape[0], weight.shape[0]
        padded = _padded(weight)
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(padded, dtype=torch.promote_types(weight.dtype, torch.float32))
        for start in range(0, n, chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            loss, grad = _chunk_loss_and_gradient(h, padded, t, vocab, n)
            total += loss
            grad_hidden[start:start + chunk] = grad @ padded
            grad_weight += grad.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight[:vocab].to(weight.dtype))
        return total / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), None, None


def cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                  chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits F.linear(hidden, weight) against ``targets`` (every target a class index).
    hidden (..., d), weight (vocab, d), targets (...) -> a 0-d tensor in float32 (float64 for float64 inputs).

    ``chunk``: tokens per chunk (the module docstring says what it saves); None computes all logits at once."""
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if chunk is None:
        return F.cross_entropy(at_least_fp32(F.linear(hidden, weight)), targets)
    if chunk < 1:
        raise ValueError(f"chunk must be a number of tokens >= 1, got {chunk}")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(hidden, weight, targets, chunk)
    n, padded = hidden.shape[0], _padded(weight)
    return sum(_chunk_loss(hidden[s:s + chunk], padded, targets[s:s + chunk], weight.shape[0])[0]
               for s in range(0, n, chunk)) / n
