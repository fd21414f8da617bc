"""kernels.fast_launch: the first launch of a specialisation goes through Triton, later ones call the kept compiled
kernel with the same arguments in Triton's order; anything that may change Triton's specialisation goes through
Triton again. A stand-in kernel records what each path was given (there is no GPU launcher on a CPU)."""
import inspect

import pytest
import torch
from triton.runtime.jit import JITFunction

from kernels import fast_launch, gluon_support
from kernels.threshold import launch
from kernels.threshold.options import ThresholdOptions
from kernels.threshold.tiles import BackwardPlan


class Param:
    def __init__(self, name, default=inspect.Parameter.empty):
        self.name, self.default = name, default


class Compiled:
    function, packed_metadata = "function", "metadata"

    def __init__(self, calls):
        self.calls = calls

    def run(self, *a):
        self.calls.append(("direct",) + a)


class Kernel:
    """Signature (x, n, scale, WIDTH: constexpr, MODE: constexpr = 3)."""
    params = [Param("x"), Param("n"), Param("scale"), Param("WIDTH"), Param("MODE", 3)]

    def __init__(self):
        self.calls, self.compiled = [], []
        self.used_global_vals = {}  # as Triton records them: (name, id(scope)) -> (value at compile time, scope)

    def __getitem__(self, grid):
        def launch_(*args, **kwargs):
            self.calls.append(("triton", grid, args, kwargs))
            self.compiled.append(Compiled(self.calls))
            return self.compiled[-1]
        return launch_


def test_a_kept_kernel_is_called_directly_with_triton_order(fast_launch_on_gpu):
    k = Kernel()
    x = torch.zeros(8)
    first = fast_launch.launch(k, (5,), (x, 32, 0.5), dict(WIDTH=64, num_warps=4))
    second = fast_launch.launch(k, (7, 2), (x, 32, 0.25), dict(WIDTH=64, num_warps=4))
    assert first is second is k.compiled[0]
    assert [c[0] for c in k.calls] == ["triton", "direct"]
    # grid padded to three axes, the stream, the compiled handles, no launch metadata, then every parameter in the
    # signature's order, the constexprs (given, and defaults) last
    assert k.calls[1][:10] == ("direct", 7, 2, 1, 1234, "function", "metadata", None, None, None)
    assert k.calls[1][10:] == (x, 32, 0.25, 64, 3)


@pytest.mark.parametrize("change", ["int value", "alignment", "dtype", "constexpr", "option", "device"])
def test_what_may_change_the_specialisation_goes_through_triton(fast_launch_on_gpu, monkeypatch, change):
    k = Kernel()
    storage = torch.zeros(64, dtype=torch.bfloat16)
    x, n, kwargs = storage[:32], 32, dict(WIDTH=64, num_warps=4)
    fast_launch.launch(k, (1,), (x, n, 1.0), kwargs)
    if change == "int value":
        n = 33
    elif change == "alignment":
        x = storage[1:33]  # 2 bytes past a 16-byte boundary
    elif change == "dtype":
        x = x.float()
    elif change == "constexpr":
        kwargs = dict(WIDTH=32, num_warps=4)
    elif change == "option":
        kwargs = dict(WIDTH=64, num_warps=8)
    else:
        monkeypatch.setattr(fast_launch.torch.cuda, "current_device", lambda: 1)
    fast_launch.launch(k, (1,), (x, n, 1.0), kwargs)
    assert [c[0] for c in k.calls] == ["triton", "triton"]
    fast_launch.launch(k, (1,), (x, n, 3.0), kwargs)  # a float never changes it
    assert [c[0] for c in k.calls] == ["triton", "triton", "direct"]


def test_unknown_arguments_interpreter_and_hooks_always_take_triton(fast_launch_on_gpu, monkeypatch):
    k = Kernel()
    for _ in range(2):
        fast_launch.launch(k, (1,), (object(), 1, 1.0), dict(WIDTH=1))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for _ in range(2):
        fast_launch.launch(k, (1,), (torch.zeros(1), 1, 1.0), dict(WIDTH=1))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    chain = fast_launch.knobs.HookChain()
    chain.add(lambda *a: None)
    monkeypatch.setattr(fast_launch.knobs.runtime, "launch_exit_hook", chain)
    for _ in range(2):
        fast_launch.launch(k, (1,), (torch.zeros(1), 1, 1.0), dict(WIDTH=1))
    assert [c[0] for c in k.calls] == ["triton"] * 6
    chain.remove(chain.calls[0])  # an empty chain, as Triton starts with, is no hook
    for _ in range(2):
        fast_launch.launch(k, (1,), (torch.zeros(1), 1, 1.0), dict(WIDTH=1))
    assert [c[0] for c in k.calls] == ["triton"] * 7 + ["direct"]


def test_descriptors_are_keyed_by_block_shape_and_dtype(fast_launch_on_gpu):
    from triton.tools.tensor_descriptor import TensorDescriptor

    k = Kernel()
    t = torch.zeros(4, 64, dtype=torch.bfloat16)
    fast_launch.launch(k, (1,), (TensorDescriptor(t, [4, 64], [64, 1], [2, 64]), 1, 1.0), dict(WIDTH=1))
    fast_launch.launch(k, (1,), (TensorDescriptor(t.clone(), [4, 64], [64, 1], [2, 64]), 1, 1.0), dict(WIDTH=1))
    fast_launch.launch(k, (1,), (TensorDescriptor(t, [4, 64], [64, 1], [4, 64]), 1, 1.0), dict(WIDTH=1))
    fast_launch.launch(k, (1,), (TensorDescriptor(t.half(), [4, 64], [64, 1], [2, 64]), 1, 1.0), dict(WIDTH=1))
    assert [c[0] for c in k.calls] == ["triton", "direct", "triton", "triton"]


def test_the_store_starts_over_when_full(fast_launch_on_gpu, monkeypatch):
    monkeypatch.setattr(fast_launch, "MAX_KEPT", 3)
    k = Kernel()
    for n in (16, 17, 18, 19):
        fast_launch.launch(k, (1,), (torch.zeros(1), n, 1.0), dict(WIDTH=1))
    assert len(fast_launch._kept) == 1
    fast_launch.launch(k, (1,), (torch.zeros(1), 19, 1.0), dict(WIDTH=1))
    assert [c[0] for c in k.calls] == ["triton"] * 4 + ["direct"]


def test_the_launches_pass_every_parameter_in_triton_order(monkeypatch):
    """For every kernel launch.forward/backward make (interpreted here), the arguments and the kept constexpr tail are
    what binding them to the kernel's signature gives, as Triton's binder does before each launch."""
    seen = []
    original = fast_launch.launch

    def record(kernel, grid, args, kwargs):
        seen.append((kernel, args, kwargs))
        return original(kernel, grid, args, kwargs)

    monkeypatch.setattr(fast_launch, "launch", record)
    g = torch.Generator().manual_seed(0)
    q1, k1, q2, k2 = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(4))
    v = torch.randn(1, 2, 40, 32, generator=g)
    lam, beta = torch.full((2,), 0.5), torch.ones(2)
    out, *saved = launch.forward(q1, k1, v, q2, k2, lam, beta, ThresholdOptions())
    for atomic_dq in (True, False):
        launch.backward(torch.randn_like(out), q1, k1, v, q2, k2, *saved, lam, beta, ThresholdOptions(), True,
                        False, False, plan=BackwardPlan(atomic_dq=atomic_dq))
    assert {kernel.fn.__name__ for kernel, _, _ in seen} == {"inverse_norm_kernel", "threshold_attention_fwd_kernel",
                                                             "tile_lists_kernel", "dkdv_kernel", "dq_finish_kernel",
                                                             "dq_kernel", "head_sums_kernel"}
    for kernel, args, kwargs in seen:
        params = JITFunction(kernel.fn).params  # the compiled kernel's parameters (the interpreter's has none)
        names = [p.name for p in params]
        bound = inspect.signature(kernel.fn).bind(*args, **{n: v for n, v in kwargs.items() if n in names})
        bound.apply_defaults()
        assert list(bound.arguments) == names
        assert tuple(bound.arguments.values()) == (*args, *fast_launch.trailing_arguments(params, len(args), kwargs))


@pytest.mark.parametrize("lists", [False, True])
def test_the_fused_backward_launch_passes_every_parameter_in_order(monkeypatch, lists):
    """The same for the fused Gluon backward's launch (recorded, not run: it needs a Hopper GPU), over every query tile
    or those of the lists of occupied tiles (whose compaction launch is recorded first)."""
    pytest.importorskip("triton.experimental.gluon")
    if not gluon_support.gluon_available():
        pytest.skip("this Triton has no Gluon the fused backward compiles with")
    from kernels.threshold import gluon_backward as gb

    seen = []
    monkeypatch.setattr(fast_launch, "launch", lambda kernel, grid, args, kwargs: seen.append((kernel, args, kwargs)))
    q1, k1, q2, k2, do = (torch.randn(1, 2, 40, 64, dtype=torch.bfloat16) for _ in range(5))
    v = torch.randn(1, 2, 40, 128, dtype=torch.bfloat16)
    r = [torch.ones(1, 2, 40) for _ in range(4)]
    grads = [torch.empty_like(t) for t in (k1, k2, v)]
    dq = torch.zeros(2, 1, 2, 40, 64)
    tiles = launch.TileLists(torch.ones(1, 2, 1, 1, dtype=torch.uint8), 40, 40, True, None) if lists else None
    launch._gluon_backward(do, q1, k1, v, q2, k2, *r, torch.full((2,), 0.5), torch.ones(2), ThresholdOptions(),
                           True, False, *grads, dq[0], dq[1], tiles)
    assert [k.fn.__name__ for k, _, _ in seen[:-1]] == (["tile_lists_kernel"] if lists else [])
    (kernel, args, kwargs) = seen[-1]
    assert kernel is gb.paired_backward_kernel and kwargs["USE_LIST"] is lists
    names = [p.name for p in kernel.params]
    bound = inspect.signature(kernel.fn).bind(*args, **{n: v for n, v in kwargs.items() if n in names})
    bound.apply_defaults()
    assert list(bound.arguments) == names
    assert tuple(bound.arguments.values()) == (*args, *fast_launch.trailing_arguments(kernel.params, len(args), kwargs))


def test_a_changed_global_of_the_kernel_goes_through_triton(fast_launch_on_gpu):
    """Triton refuses to launch a kernel after a global it reads has changed; the kept kernel must not run then."""
    k = Kernel()
    scope = {"BLOCK": 64}
    k.used_global_vals = {("BLOCK", id(scope)): (64, scope)}
    for _ in range(2):
        fast_launch.launch(k, (1,), (torch.zeros(1), 1, 1.0), dict(WIDTH=1))
    scope["BLOCK"] = 128
    fast_launch.launch(k, (1,), (torch.zeros(1), 1, 1.0), dict(WIDTH=1))
    assert [c[0] for c in k.calls] == ["triton", "direct", "triton"]
