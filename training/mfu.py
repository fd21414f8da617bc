"""Model FLOPs utilisation: the training FLOPs a model needs per token, and the GPU's peak to divide by."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

# Peak dense bf16 tensor throughput (TFLOP/s) by GPU name, for MFU; trainer.peak_tflops overrides.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def peak_flops(cfg: DictConfig, device: torch.device) -> float | None:
    """Peak FLOP/s of one device: trainer.peak_tflops, else the table's entry for a known GPU, else None."""
    if cfg.trainer.get("peak_tflops"):
        return float(cfg.trainer.peak_tflops) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token, PaLM's convention: 6·(non-embedding parameters) + 12·layers·width·T."""
    n = model.num_parameters() - model.embed.weight.numel()
    return 6 * n + 12 * len(model.blocks) * model.embed.weight.shape[1] * seq_len
