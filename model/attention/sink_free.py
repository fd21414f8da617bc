"""The sink-free baselines (SPEC §2): sigmoid attention, softpick, softmax with a learnable sink logit, and
scalable softmax (ssmax)."""
from __future__ import annotations

import math

import torch
from torch import nn

from kernels import (sigmoid_attention, sigmoid_attention_weights, sink_softmax_attention, softpick_attention,
                     softpick_attention_weights)
from kernels.decode import softmax_decode
from kernels.sigmoid.reference import RULE as SIGMOID_RULE
from kernels.softpick.reference import RULE as SOFTPICK_RULE
from model.attention.base import Projections, _Attention, _sdpa, _softmax_maps, register
from model.cache import LayerCache
from model.norms import at_least_fp32


_RULES = {"sigmoid": SIGMOID_RULE, "softpick": SOFTPICK_RULE}


def _rule_decode(rule: str, q: torch.Tensor, cache: LayerCache, positions: torch.Tensor, scale: float,
                 bias: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """One decoding step of a blocked-attention map (sigmoid, softpick), exact, in PyTorch: the map's weights
    (the op's reference Rule, the forward's own formulas) over the whole cache, each row's positions after
    its query masked; float32 (float64 for float64 inputs) with autocast off. q (B, H, 1, d) -> (B, H, 1, dv)."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    k, v = cache.k[0], cache.v
    with torch.autocast(q.device.type, enabled=False):
        x = (q.to(compute) @ k.to(compute).transpose(-1, -2)) * scale                     # (B, H, 1, L)
        keep = (torch.arange(k.shape[2], device=q.device)[None, :] <= positions[:, None])[:, None, None]
        w, _ = _RULES[rule].weights(x, keep, None if bias is None else bias.to(compute), eps)
        return (w @ v.to(compute)).to(q.dtype)


def _train_length(model_cfg, name: str) -> int:
    """model.seq_len, which sets the initial value of a length-dependent parameter (sigmoid, ssmax)."""
    length = int(model_cfg.seq_len)
    if length < 2:
        raise ValueError(f"attention '{name}' initialises from ln(model.seq_len): it needs model.seq_len >= 2, "
                         f"got {length}")
    return length


@register("sigmoid")
class SigmoidAttention(_Attention):
    """Sigmoid attention (Ramapuram et al. 2024): w_ij = σ(q_i·k_j/√d + b_h), no row normalisation and no
    output norm (SPEC §2). One learnable bias per head, initialised at −ln(model.seq_len) as the paper
    advises, so that a row of seq_len keys starts with weights summing to about one. Runs on the fused kernels
    (kernels/sigmoid/) for CUDA tensors, else on their exact blocked PyTorch reference."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        bias = -math.log(_train_length(model_cfg, attn_cfg.name))
        self.bias = nn.Parameter(torch.full((self.n_head,), bias))
        self.score_scale = 1.0 / math.sqrt(self.head_dim)

    def mix(self, proj):
        return sigmoid_attention(proj.q[0], proj.k[0], proj.v, self.bias, scale=self.score_scale)

    def decode_mix(self, q, cache, positions):
        return _rule_decode("sigmoid", q[0], cache, positions, self.score_scale, bias=self.bias)

    def maps(self, proj, rows=None):
        w = sigmoid_attention_weights(proj.q[0], proj.k[0], self.bias, scale=self.score_scale, rows=rows)
        return {"combined": w, "view1": w}

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"sigmoid_bias": self.bias}


@register("softpick")
class SoftpickAttention(_Attention):
    """Softpick (Zuhri et al. 2025): w_ij = relu(e^{x_ij} − 1) / (Σ_{j'≤i} |e^{x_ij'} − 1| + ε),
    x_ij = q_i·k_j/√d, in SPEC §2's overflow-safe form; no parameter of its own. ε (``attention.eps``)
    defaults to 1e-6, the value of the authors' training kernel (which adds it after the shift by the row
    maximum; SPEC adds ε in the unshifted formula, as here). Runs on the fused kernels (kernels/softpick/) for CUDA
    tensors, else on their exact blocked PyTorch reference."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        self.eps = float(attn_cfg.get("eps", 1e-6))
        if self.eps < 0:
            raise ValueError(f"attention.eps must be >= 0, got {self.eps}")
        self.score_scale = 1.0 / math.sqrt(self.head_dim)

    def mix(self, proj):
        return softpick_attention(proj.q[0], proj.k[0], proj.v, scale=self.score_scale, eps=self.eps)

    def decode_mix(self, q, cache, positions):
        return _rule_decode("softpick", q[0], cache, positions, self.score_scale, eps=self.eps)

    def maps(self, proj, rows=None):
        w = softpick_attention_weights(proj.q[0], proj.k[0], scale=self.score_scale, eps=self.eps, rows=rows)
        return {"combined": w, "view1": w}


@register("sink_softmax")
class SinkSoftmaxAttention(_Attention):
    """Softmax with a learnable attention sink (as in gpt-oss):
    w_ij = e^{x_ij} / (e^{s_h} + Σ_{j'≤i} e^{x_ij'}), x_ij = q_i·k_j/√d, one learnable logit s_h per head,
    initialised at 0 (where it is the "off-by-one" softmax), so a row's weights sum to less than one.
    Runs on the fused kernels (kernels/sink_softmax/) for CUDA tensors, else as one fused SDPA call with an extra
    sink key (kernels.sink_softmax_attention_reference): exact, with no T×T mask."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        self.sink = nn.Parameter(torch.zeros(self.n_head))

    def mix(self, proj):
        return sink_softmax_attention(proj.q[0], proj.k[0], proj.v, self.sink, scale=1.0 / math.sqrt(self.head_dim))

    def decode_mix(self, q, cache, positions):
        return softmax_decode(q[0][:, :, 0], cache.k[0], cache.v, positions=positions, sink=self.sink)[:, :, None]

    def maps(self, proj, rows=None):
        out = _softmax_maps(proj, self.head_dim, rows, sink=self.sink)
        out["combined"] = out["view1"]
        return out

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"sink_logit": self.sink}


@register("ssmax")
class ScalableSoftmaxAttention(_Attention):
    """Scalable-Softmax (Nakanishi 2025): w_ij = softmax_j(s_h · ln(i+1) · x_ij), x_ij = q_i·k_j/√d, i the
    query's absolute position (so i + 1 keys are visible; row 0 has one key and weight 1). One learnable
    s_h per head, initialised so that s_h · ln(model.seq_len) = 1 (plain softmax at the training length).
    Runs through torch's SDPA with each query row scaled by s_h · ln(i+1), the gradient reaching s_h
    through that product."""

    def __init__(self, model_cfg, attn_cfg, layer):
        super().__init__(model_cfg, attn_cfg, layer)
        length = _train_length(model_cfg, attn_cfg.name)
        self.scale = nn.Parameter(torch.full((self.n_head,), 1.0 / math.log(length)))

    def scaled_queries(self, proj: Projections) -> torch.Tensor:
        """q_i · s_h ln(i+1), (B, H, Tq, d), in float32 (float64 for float64 inputs); queries aligned to
        the end of the keys."""
        q = at_least_fp32(proj.q[0])
        Tq, Tk = q.shape[2], proj.k[0].shape[2]
        positions = torch.arange(Tk - Tq, Tk, device=q.device, dtype=q.dtype)
        factor = self.scale.to(q.dtype)[:, None] * torch.log1p(positions)   # (H, Tq)
        return q * factor[:, :, None]

    def mix(self, proj):
        return _sdpa(self.scaled_queries(proj).to(proj.q[0].dtype), proj.k[0], proj.v)

    def decode_mix(self, q, cache, positions):
        """The queries scaled by s_h ln(i + 1) at each row's own position i, as ``scaled_queries`` does."""
        row = at_least_fp32(q[0][:, :, 0])                                                  # (B, H, d)
        factor = self.scale.to(row.dtype)[None, :] * torch.log1p(positions.to(row.dtype))[:, None]  # (B, H)
        scaled = (row * factor[:, :, None]).to(q[0].dtype)
        return softmax_decode(scaled, cache.k[0], cache.v, positions=positions)[:, :, None]

    def maps(self, proj, rows=None):
        out = _softmax_maps(Projections([self.scaled_queries(proj)], proj.k, proj.v), self.head_dim, rows)
        out["combined"] = out["view1"]
        return out

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"ssmax_scale": self.scale}
