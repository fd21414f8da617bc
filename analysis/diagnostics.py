"""Attention diagnostics cheap enough to log every few hundred steps while training.

``attention_diagnostics(model, tokens)`` recomputes every layer's exact attention weights on a small fixed
probe batch (e.g. two validation windows of the training length; ``analysis.attention.held_out`` gives
the analysis's own held-out windows) the way the analysis does (``analysis.probe``: the block's norm, then
``attn.project`` and ``attn.maps``, in float32) and counts where they are non-zero with the analysis's own
counter (``analysis.metrics.LayerSupport``), so that the course over training ends where
``analysis.attention`` begins. Flat metric names, one per layer and their mean over layers:

    diag/empty_rows/<layer>        share of rows with no non-zero weight (a query that attends to nothing)
    diag/nonzeros_per_row/<layer>  non-zero weights per row, over every row (empty rows count 0)
    diag/tile_occupancy/<layer>    share of the causal TILE x TILE tiles of the map holding any non-zero weight
    diag/<measure>/mean            the mean over layers (every layer sees the same rows and tiles)

Why: a threshold variant (TDA, TRA) can switch a layer's attention off, row by row, during training, and
its λ can drift to 0; the analysis of the last checkpoint shows only where that ended. Softmax rows are
never empty and every causal tile is occupied.
"""
from __future__ import annotations

import torch
from torch import nn

from analysis.metrics import LayerSupport
from analysis.probe import DEFAULT_MAX_BYTES, LayerProbe, layers, row_blocks

PREFIX = "diag"
# Metric name -> the LayerSupport method that gives it.
MEASURES = {"empty_rows": LayerSupport.empty_share, "nonzeros_per_row": LayerSupport.nonzeros_per_row,
            "tile_occupancy": LayerSupport.tile_occupancy}


def layer_support(probe: LayerProbe, max_bytes: int = DEFAULT_MAX_BYTES) -> LayerSupport:
    """The non-zero counts of one layer's maps over every row of its probe (row blocks of ≤ max_bytes)."""
    support = LayerSupport(probe.proj.q[0].shape[2], probe.heads, device=probe.x.device)
    for start, stop, maps in row_blocks(probe, max_bytes):
        support.add(start, stop, maps)
    support.end_batch()
    return support


def attention_diagnostics(model: nn.Module, tokens: torch.Tensor,
                          max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, float]:
    """The diagnostics of the module docstring for ``model`` on the probe batch ``tokens``.

    model: the bare GPT (unwrap DDP's ``.module``; FSDP2-sharded parameters must be unsharded first, as
    the probe calls the blocks' parts outside their forward). tokens: integer ids (batch, length), on any
    device (moved to the model's), length ≤ model.max_seq_len. Runs in eval mode under no_grad, with
    autocast off and full-precision float32 matmuls (a threshold's zeros depend on scores near τ, as in
    analysis.attention), then restores the model's train/eval mode and the matmul precision. Uses no
    random numbers. Returns {"diag/<measure>/<layer>": value, "diag/<measure>/mean": value}."""
    if not hasattr(model, "blocks") or not hasattr(model, "embed"):
        raise TypeError(f"model must be the bare GPT (for DDP pass its .module), got {type(model).__name__}")
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    was_training, precision = model.training, torch.get_float32_matmul_precision()
    model.eval()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            per_layer = [layer_support(probe, max_bytes) for probe in layers(model, tokens)]
    finally:
        torch.set_float32_matmul_precision(precision)
        model.train(was_training)
    out: dict[str, float] = {}
    for measure, value in MEASURES.items():
        values = [value(s) for s in per_layer]
        out.update({f"{PREFIX}/{measure}/{layer}": v for layer, v in enumerate(values)})
        out[f"{PREFIX}/{measure}/mean"] = sum(values) / len(values)
    return out
