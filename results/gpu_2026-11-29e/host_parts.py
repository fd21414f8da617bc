"""Host time (µs) of paired TDA's forward+backward at T=4096, part by part, while a sleep kernel keeps the GPU
busy, with the fused Gluon backward (the parts inside the call timed by wrapping the launches).

    PYTHONPATH=. python results/gpu_2026-11-29e/host_parts.py"""
import time
from collections import defaultdict

import torch
from kernels import bench, launch
from kernels.autograd import threshold_attention_triton
from kernels.validation import as_head_vector, check_inputs


def host_us(fn, calls=50):
    fn(); torch.cuda.synchronize()
    torch.cuda._sleep(3_000_000_000)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    us = (time.perf_counter() - t) / calls * 1e6
    torch.cuda.synchronize()
    return us


spent = defaultdict(float)
count = defaultdict(int)


class Timed:
    def __init__(self, name, kernel):
        self.name, self.kernel = name, kernel

    def __getitem__(self, grid):
        run = self.kernel[grid]

        def call(*a, **k):
            t = time.perf_counter()
            r = run(*a, **k)
            spent[self.name] += time.perf_counter() - t
            count[self.name] += 1
            return r
        return call


def timed_fn(module, name):
    f = getattr(module, name)

    def call(*a, **k):
        t = time.perf_counter()
        r = f(*a, **k)
        spent[name] += time.perf_counter() - t
        count[name] += 1
        return r
    setattr(module, name, call)


x = bench._tda_inputs(4, 4096, 6, 64, 128, torch.bfloat16, 2, 0.5)
q1, k1, v, q2, k2 = (x[n].detach() for n in ("q1", "k1", "v", "q2", "k2"))
lam, beta = x["lam"].detach(), torch.ones(6, device="cuda")
out, *saved = launch.forward(q1, k1, v, q2, k2, lam, beta, 2.0, True, 1.0, True)
do = torch.randn_like(out)
leaf = [x[n] for n in ("q1", "k1", "v", "q2", "k2")] + [x["lam"]]


def fb():
    for t in leaf:
        t.grad = None
    threshold_attention_triton(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], lam=x["lam"]).backward(do)


class Trivial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *a):
        ctx.save_for_backward(*[t for t in a if isinstance(t, torch.Tensor)])
        return a[0].new_empty(1).requires_grad_()

    @staticmethod
    def backward(ctx, g):
        return (None,) * 11


parts = {
    "check_inputs": lambda: check_inputs(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], x["lam"], 1.0, 2.0, True, 1.0, True),
    "as_head_vector(1.0)": lambda: as_head_vector(1.0, 6, q1.device),
    "as_head_vector(lam)": lambda: as_head_vector(x["lam"], 6, q1.device),
    "trivial autograd.Function fwd": lambda: Trivial.apply(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], x["lam"], beta, 2.0, True, 1.0, True),
    "trivial autograd.Function fwd+bwd": lambda: Trivial.apply(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], x["lam"], beta, 2.0, True, 1.0, True).sum().backward(),
    "torch.empty (B,H,T,d)": lambda: torch.empty(4, 6, 4096, 64, device="cuda", dtype=torch.bfloat16),
    "torch.zeros (6,)": lambda: torch.zeros(6, device="cuda"),
    "partials sum": lambda: saved[0].sum(dim=(0, 2)),
    "key_inverse_norms": lambda: launch.key_inverse_norms(k1, k2),
    "launch.forward": lambda: launch.forward(q1, k1, v, q2, k2, lam, beta, 2.0, True, 1.0, True),
    "launch.backward": lambda: launch.backward(do, q1, k1, v, q2, k2, *saved, lam, beta, 2.0, True, 1.0, True, True, False, False),
    "autograd forward": lambda: threshold_attention_triton(x["q1"], x["k1"], x["v"], x["q2"], x["k2"], lam=x["lam"]),
    "autograd forward+backward": fb,
    "sdpa cudnn fwd+bwd": None,
}
sm = [bench._projection(4, 4096, 12, 64, torch.bfloat16, 0.0) for _ in range(3)]
do_sm = torch.randn(4, 12, 4096, 64, device="cuda", dtype=torch.bfloat16)


def sdpa_fb():
    for t in sm:
        t.grad = None
    bench.causal_sdpa(*sm, torch.nn.attention.SDPBackend.CUDNN_ATTENTION).backward(do_sm)


parts["sdpa cudnn fwd+bwd"] = sdpa_fb
for name, fn in parts.items():
    print(f"{name:36s} {host_us(fn):8.1f} us", flush=True)

# inside the launches
from kernels import gluon_backward as gb  # noqa: E402

for kname in ("threshold_attention_fwd_kernel", "dq_finish_kernel", "inverse_norm_kernel"):
    setattr(launch, kname, Timed(kname, getattr(launch, kname)))
gb.paired_backward_kernel = Timed("gluon paired_backward_kernel", gb.paired_backward_kernel)
for fname in ("_row_inputs", "new_rows_like", "_common_constexprs", "_bind_cuda_context", "_gluon_backward",
              "gluon_backward_fits", "_new_output"):
    timed_fn(launch, fname)
timed_fn(gb, "descriptors")
spent.clear(); count.clear()
print(f"{'autograd forward+backward (timed)':36s} {host_us(fb, 50):8.1f} us")
for k in spent:
    print(f"   {k:34s} {spent[k] / count[k] * 1e6:8.1f} us x {count[k] / 51:.0f} per fwd+bwd")

