"""Context parallelism: each sequence split over the N processes of a context group (trainer.context_parallel=N).

Layout. A sequence of T tokens is cut into 2N chunks of L = T / 2N tokens; member r of the group holds chunks r and
2N − 1 − r, in that order (a zig-zag). Under a causal mask chunk c's queries see (c + 1)·L keys, so every member's two
chunks see (r + 1)·L + (2N − r)·L = (2N + 1)·L keys together: the attention work is the same on every member.

Attention. Each member computes q, k and v of its own 2L tokens at their absolute positions (RoPE, τ and SSMax's
ln(i + 1) all use them), then ``gather`` all-gathers the keys and values of the whole group (every tensor the
variant's attention reads: k, v, and both key views of the two-view variants) in one collective, whose backward
reduce-scatters (sums) their gradients back to the members that own them. Each local chunk c then attends with its L
queries to the gathered keys [0, (c + 1)·L) (``chunks``): the attention ops align query row i to key position
i + Tk − Tq, which is then exactly the query's absolute position, so every variant computes the rows of the
full-sequence attention (model/attention/base.py, ``_Attention.attend``).

Gradients. Each process's loss is the mean over its own tokens, and every process of every group holds as many
tokens, so the mean of the per-process losses is the mean over the global batch. Its gradient is the mean over
processes of each one's gradient: the part through a member's queries, MLPs and loss stays local; the part through
its keys and values, from every member's loss, reaches it through the reduce-scatter. DDP and FSDP2 average the
gradients over the whole world (data × context), which is that mean.

Processes: world = data_parallel × N, the N members of a group consecutive ranks (rank = data rank · N + member).
The data loader works per data-parallel rank: every member of a group reads the same rows, then keeps its chunks
(``shard``).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherFlat(torch.autograd.Function):
    """(S,) on every member -> (N, S), row j member j's; the backward sums each member's gradient of row r and
    hands member r the result (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, group: dist.ProcessGroup, size: int) -> torch.Tensor:
        ctx.group = group
        out = flat.new_empty(size * flat.numel())
        dist.all_gather_single(out, flat.contiguous(), group=group)
        return out.view(size, -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty(grad.shape[1])
        dist.reduce_scatter_single(out, grad.reshape(-1), group=ctx.group)
        return out, None, None


class ContextParallel:
    """This process's place in its context group: ``size`` members, this one ``index``, their process ``group``
    (whose collectives take tensors on ``device``)."""

    def __init__(self, size: int, index: int, group: dist.ProcessGroup, device: torch.device):
        if size < 2 or not 0 <= index < size:
            raise ValueError(f"a context group has at least 2 members and index in [0, size), got {index} of {size}")
        self.size, self.index, self.group, self.device = size, index, group, device

    @property
    def chunk_ids(self) -> tuple[int, int]:
        """The two chunks of the sequence this member holds, in local order."""
        return self.index, 2 * self.size - 1 - self.index

    def chunk_length(self, local: int) -> int:
        """L, from this member's ``local`` = 2L tokens of a sequence."""
        if local % 2:
            raise ValueError(f"a member holds two chunks of equal length, got {local} tokens")
        return local // 2

    def sequence_length(self, local: int) -> int:
        """T of the whole sequence, from this member's ``local`` tokens of it."""
        return local * self.size

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This member's chunks of a batch of whole sequences: (B, T, ...) -> (B, 2L, ...), T = 2N·L."""
        T = batch.shape[1]
        if T % (2 * self.size):
            raise ValueError(f"sequences of {T} tokens do not split into 2 x {self.size} equal chunks")
        L = T // (2 * self.size)
        return torch.cat([batch[:, c * L:(c + 1) * L] for c in self.chunk_ids], dim=1)

    def positions(self, local: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Absolute positions (2L,) of this member's tokens of a sequence."""
        L = self.chunk_length(local)
        return torch.cat([torch.arange(c * L, (c + 1) * L, device=device) for c in self.chunk_ids])

    def chunks(self, local: int) -> list[tuple[int, int, int]]:
        """(start, stop, keys) per local chunk: its queries are local rows [start, stop), and they see the keys at
        positions [0, keys) of the gathered sequence (the chunk's own last position + 1)."""
        L = self.chunk_length(local)
        return [(i * L, (i + 1) * L, (c + 1) * L) for i, c in enumerate(self.chunk_ids)]

    @torch.compiler.disable  # a collective with a hand-written backward: run eagerly inside compiled code
    def gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The whole sequence of each of this member's tensors (B, H, 2L, d) -> (B, H, T, d), positions in order;
        one all-gather for all of them (they share a dtype), its backward a reduce-scatter."""
        if len({t.dtype for t in tensors}) != 1:
            raise TypeError(f"gathered tensors must share a dtype, got {[t.dtype for t in tensors]}")
        flat = torch.cat([t.reshape(-1) for t in tensors])
        rows = _GatherFlat.apply(flat, self.group, self.size)  # (N, S): member j's tensors, flattened
        L = self.chunk_length(tensors[0].shape[2])
        out, offset = [], 0
        for t in tensors:
            members = rows[:, offset:offset + t.numel()].view(self.size, *t.shape)  # (N, B, H, 2L, d)
            offset += t.numel()
            # chunk c < N is member c's first; chunk c >= N is member 2N-1-c's second
            pieces = [members[c, :, :, :L] for c in range(self.size)]
            pieces += [members[2 * self.size - 1 - c, :, :, L:] for c in range(self.size, 2 * self.size)]
            out.append(torch.cat(pieces, dim=2))
        return out

    def mean(self, value: float) -> float:
        """The mean of a float over the members of this group."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return float(t) / self.size


def context_group(size: int, rank: int, device: torch.device) -> ContextParallel | None:
    """This process's context group of ``size`` consecutive ranks (None when size is 1); every process calls it,
    after the default process group has started."""
    if size == 1:
        return None
    group, _ = dist.new_subgroups(group_size=size)
    return ContextParallel(size, rank % size, group, device)
