"""Document boundaries inside packed windows, for models that keep attention within a document.

Every document in the shards is followed by the end-of-text token (EOT). Inside a window, a new
document starts at each EOT: the EOT opens the document after it, as it does at the start of a
BOS-aligned window, so the prediction "the document ends here" is made by the last token of the
document that ends. The first tokens of a window belong to segment 0 even when their document
started before the window (the model cannot see further back anyway).
"""

from __future__ import annotations

import torch


def document_ids(x: torch.Tensor, eot_token: int) -> torch.Tensor:
    """Segment index of every token of `x` (B, T): int64 (B, T), 0 for the first segment of each row
    and one more after each EOT boundary. Works on any device."""
    if x.ndim != 2:
        raise ValueError(f"x must have shape (batch, seq_len), got {tuple(x.shape)}")
    starts = x == eot_token
    starts[:, 0] = False  # a row's first token opens segment 0 whatever it is
    return torch.cumsum(starts.to(torch.int64), dim=1)


def positions_in_document(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position of every token inside its segment (int64, same shape as `doc_ids` (B, T)):
    0 at each segment's first token."""
    if doc_ids.ndim != 2:
        raise ValueError(f"doc_ids must have shape (batch, seq_len), got {tuple(doc_ids.shape)}")
    t = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    is_start = torch.ones_like(doc_ids, dtype=torch.bool)
    is_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    segment_start = torch.cummax(torch.where(is_start, t, torch.zeros_like(t)), dim=1).values
    return t - segment_start
