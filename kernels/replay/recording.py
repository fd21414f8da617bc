"""The recording call: the paired Python path (threshold.calls' paired_forward and paired_backward) run under a
Recorder, its two programs handed to the engine once the backward has run."""

from __future__ import annotations

import torch

from . import _recorded
from ..threshold.calls import paired_backward, paired_forward
from .record import Recorder, Refused


class RecordingPaired(torch.autograd.Function):
    """ThresholdAttentionFunction's paired path, recorded. Inputs q, k, v, lam, beta as the engine's entry takes
    them; ``key`` the kind of call being recorded."""

    @staticmethod
    def forward(ctx, q, k, v, lam, beta, options, record, skip, key):
        inputs = (q, k, v, lam, beta)
        with Recorder(inputs) as rec:
            outs = paired_forward(q, k, v, lam, beta, options, record, skip)
        ctx.options, ctx.key = options, key
        ctx.deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            ctx.fwd, ctx.refused = rec.program(outs), None
        except Refused as why:
            ctx.fwd, ctx.refused = None, str(why)
        ctx.save_for_backward(*inputs, *outs[1:])
        return outs[0]

    @staticmethod
    def backward(ctx, do):
        saved = ctx.saved_tensors
        q, k, v, lam, beta, rq1, rk1, rq2, rk2, rec = saved
        need_dlam, need_dbeta = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        inputs = (do, *saved)
        with Recorder(inputs) as recorder:
            grads = paired_backward(do, q, k, v, lam, beta, rq1, rk1, rq2, rk2, rec, ctx.options, need_dlam,
                                    need_dbeta, ctx.deterministic)
        refused = ctx.refused
        bwd = None
        if refused is None:
            try:
                bwd = recorder.program(grads)
            except Refused as why:
                refused = str(why)
        do_layout = (list(do.shape), list(do.stride()), 16 if do.data_ptr() % 16 == 0 else 1)
        _recorded(ctx.key, ctx.fwd, bwd, do_layout, refused)
        dq, dk, dv, dlam, dbeta = grads
        return dq, dk, dv, dlam if need_dlam else None, dbeta if need_dbeta else None, None, None, None, None
