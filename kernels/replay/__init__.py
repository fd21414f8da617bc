"""Host replay: the paired TDA forward+backward issued by a C++ engine, with no Python between the call and the
kernels.

An eager paired call spends most of its host time in Python (autograd.Function, the launch code, the checks, the
allocations' wrappers) although, for given input shapes, it does the same thing every time. ``paired`` therefore
records the call once per kind of input (record.py: every allocation, view, fill, reduction and every
kernel launch, with their sizes, strides and scalar arguments fixed) and from then on hands the inputs to
``native.paired``, which replays the forward's program and gives its output a C++ autograd node that replays the
backward's, patching only the tensors' addresses (kernel pointers, and each TMA map through
cuTensorMapReplaceAddress).

The kind of input (the key) is everything the recorded programs depend on: each input's sizes, strides, dtype,
device, 16-byte alignment and whether it requires a gradient, the options, whether tiles are skipped, the grad and
deterministic modes. The first call of a kind runs the Python path (compiling the kernels), the second records while it
runs it, later ones replay. A kind whose recording is refused (an operation or launch the engine does not know), and a
call asking for no gradient (the engine replays forward+backward pairs), stay on the Python path; ``status()`` says
why. The kernels' module switches (launch.GLUON_FORWARD_D128, gluon_forward.STAGES and the like) are read when
recording: ``clear()`` after changing one.

Off unless ``ENABLED`` is set (``SINK_FREE_REPLAY=1``); measured in BENCHMARKS.md ("The paired call replayed from
C++"). The engine is built with
torch.utils.cpp_extension the first time it is needed (a C++ compiler and ninja; about half a minute), against the
CUDA driver header that Triton ships, and loads libcuda itself.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..common import interpreting
from ..inputs import as_head_vector
from ..threshold.calls import check_paired, prepared
from ..threshold.tiles import skipping

ENABLED = os.environ.get("SINK_FREE_REPLAY", "0") == "1"

_native = None
_programs: dict[int, list] = {}  # registered program id -> its instructions (benchmarks.replay --parts prints them)
_state: dict[tuple, object] = {}  # key -> "seen" | "recording" | (forward id, backward id) | refusal text
MAX_KEYS = 256


def native():
    """The compiled engine (native.cpp), built on first use."""
    global _native
    if _native is None:
        import triton
        from torch.utils.cpp_extension import load

        here = os.path.dirname(os.path.abspath(__file__))
        include = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "include")
        _native = load(name="sink_free_replay", sources=[os.path.join(here, "native.cpp")],
                       extra_include_paths=[include], extra_ldflags=["-ldl"], verbose=False)
    return _native


def clear() -> None:
    """Forget every recorded kind of call (after changing a kernel's module switch); the next call of each kind
    records it again. (The engine keeps the programs it was given, a few KiB each.)"""
    _state.clear()


def status() -> dict:
    """Per key, "replayed", "seen", "recording" or the reason its recording was refused."""
    return {key: ("replayed" if isinstance(v, tuple) else v) for key, v in _state.items()}


def _meta(t) -> object:
    """What the key holds of one input: a tensor's metadata, a number's type and value (a bool is not a float to the
    checks), and for anything else a key matching nothing (the Python path's checks then name the bad input)."""
    if not isinstance(t, torch.Tensor):
        return (type(t), t) if isinstance(t, (bool, int, float)) else object()
    return (tuple(t.shape), t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0, t.requires_grad)


def key_of(q, k, v, lam, beta, options, skip_empty: Optional[bool]) -> tuple:
    """The kind of a paired call: everything its recorded programs depend on."""
    return (_meta(q), _meta(k), _meta(v), _meta(lam), _meta(beta), options, skipping(skip_empty),
            torch.is_grad_enabled(), torch.are_deterministic_algorithms_enabled())


def paired(q, k, v, lam, beta, options, skip_empty: Optional[bool]) -> Optional[torch.Tensor]:
    """threshold.paired_threshold_attention_triton's output through the engine, recording on the second call of a
    kind; None where the Python path must run (the first call of a kind, a refused kind, torch.compile tracing, a
    forward recorded whose backward has not run yet, replay off). A kind replayed was checked when first seen (the
    checks read only what the key holds), so a replayed call is not checked again."""
    if not ENABLED or torch.compiler.is_compiling() or not (q.is_cuda or interpreting()):
        return None  # (interpreted kernels launch through Triton's own path, so their recording is refused)
    key = key_of(q, k, v, lam, beta, options, skip_empty)
    state = _state.get(key)
    if isinstance(state, tuple):
        H = q.shape[1] // 2
        return native().paired(q, k, v, as_head_vector(lam, H, q.device), as_head_vector(beta, H, q.device), *state)
    if state is None:
        if len(_state) >= MAX_KEYS:
            _state.clear()
        _state[key] = "seen"
        return None
    if state != "seen":
        return None
    from .recording import RecordingPaired

    check_paired(q, k, v, lam, beta, options)
    lam_h, beta_h, record, skip = prepared(q, k, v, None, None, lam, beta, skip_empty, paired=True)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, lam_h, beta_h))):
        _state[key] = "no gradient asked for: the engine replays forward+backward pairs only"
        return None
    _state[key] = "recording"
    return RecordingPaired.apply(q, k, v, lam_h, beta_h, options, record, skip, key)


def _recorded(key: tuple, fwd: Optional[tuple], bwd: Optional[tuple], do_layout: Optional[tuple],
              refused: Optional[str]) -> None:
    """Where RecordingPaired leaves its programs (or why it could not make them); ``do_layout`` (sizes, strides,
    alignment) is the output gradient's, which the backward program copies any other into."""
    if refused is not None:
        _state[key] = refused
        return
    eng = native()
    ids = eng.register_program(*fwd), eng.register_program(*bwd, *do_layout)
    _programs.update(zip(ids, (fwd[2], bwd[2])))
    _state[key] = ids
