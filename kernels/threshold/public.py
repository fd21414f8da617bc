"""Drop-in wrappers with the names, signatures and semantics of the paper's public kernel code, so
its users can switch to these kernels. Tensors are (batch, heads, seq, head_dim); causal."""

from typing import Union

import torch

from .autograd import threshold_attention_triton
from .options import ThresholdOptions


def threshold_rela_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          beta: Union[float, torch.Tensor], relu_power: float = 2.0) -> torch.Tensor:
    """One view: o_i = sum_{j<=i} max(q_i . k_j - tau_i, 0)^relu_power v_j on q and k as given
    (no normalisation, no score scale), tau_i = beta sqrt(2 ln(i+1) / d)."""
    return threshold_attention_triton(q, k, v, beta=beta, options=ThresholdOptions(p=relu_power, normalize=False))


def differential_threshold_rela_triton(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor,
                                       k2: torch.Tensor, v: torch.Tensor,
                                       beta: Union[float, torch.Tensor],
                                       lambda_param: Union[float, torch.Tensor],
                                       relu_power: float = 2.0, normalize: bool = True,
                                       ) -> torch.Tensor:
    """TDA: o_i = sum_j (a1_ij - lambda a2_ij) v_j, lambda = clamp(lambda_param, 0, 1) (the gradient
    reaches lambda_param where 0 <= lambda_param <= 1, as torch.clamp's), q and k L2-normalised
    when ``normalize``."""
    if isinstance(lambda_param, torch.Tensor):
        lam = torch.clamp(lambda_param, 0.0, 1.0)
    else:
        lam = min(max(float(lambda_param), 0.0), 1.0)
    return threshold_attention_triton(q1, k1, v, q2, k2, lam=lam, beta=beta,
                                      options=ThresholdOptions(p=relu_power, normalize=normalize))
