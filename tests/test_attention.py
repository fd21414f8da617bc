"""Each attention variant against a naive materialised float64 implementation of SPEC."""
import math

import pytest
import torch
from omegaconf import OmegaConf

import kernels.threshold.reference as reference
import kernels.score_ops.blocked as blocked
from model.attention import ATTENTIONS, build_attention
from tests import naive

C, H, T = 32, 4, 37  # T is no multiple of any block size
SEQ_LEN = 64
SCALARS = ("bias", "sink", "scale")  # the per-head parameters of sigmoid, sink_softmax, ssmax


def model_cfg(**kw):
    base = dict(n_embd=C, n_head=H, rope_base=10000.0, rope_ntk_factor=1.0, seq_len=SEQ_LEN)
    return OmegaConf.create({**base, **kw})


def attn_cfg(name, **kw):
    return OmegaConf.create({"name": name, **kw})


def make(name, layer=1, **kw):
    torch.manual_seed(0)
    attn = build_attention(model_cfg(), attn_cfg(name, **kw), layer).double()
    with torch.no_grad():  # correlate keys with queries so that a real share of weights survives
        for qn, kn in (("q_proj", "k_proj"), ("q2_proj", "k2_proj")):
            if hasattr(attn, kn):
                getattr(attn, kn).weight.copy_(getattr(attn, qn).weight + 0.05 * torch.randn(C, C))
        for scalar in SCALARS:  # heads with different values, away from the initial ones
            if isinstance(getattr(attn, scalar, None), torch.nn.Parameter):
                getattr(attn, scalar).add_(0.3 * torch.randn(H, dtype=torch.float64))
    return attn


def inputs(batch=2, length=T):
    torch.manual_seed(1)
    common = torch.randn(batch, 1, C, dtype=torch.float64)
    return (common + 0.4 * torch.randn(batch, length, C, dtype=torch.float64)).requires_grad_()


def heads(x, n):
    B, T_, _ = x.shape
    return x.view(B, T_, n, -1).transpose(1, 2)


def merge(x):
    B, n, T_, d = x.shape
    return x.transpose(1, 2).reshape(B, T_, n * d)


def naive_forward(attn, x):
    """The module's computation, written from SPEC with materialised float64 maps."""
    pos = torch.arange(x.shape[1])
    rope = lambda t: attn.rope(t, pos)  # noqa: E731
    d = attn.head_dim
    q = rope(heads(x @ attn.q_proj.weight.T, H))
    k = rope(heads(x @ attn.k_proj.weight.T, H))
    name = attn.variant
    if name in ("softmax", "gated_softmax"):
        o = merge(naive.softmax_map(q, k) @ heads(x @ attn.v_proj.weight.T, H))
        if name == "gated_softmax":
            o = o * torch.sigmoid(x @ attn.gate_proj.weight.T)
    elif name == "differential":
        v = heads(x @ attn.v_proj.weight.T, H // 2)
        lam = (torch.exp(attn.lambda_q1 @ attn.lambda_k1) - torch.exp(attn.lambda_q2 @ attn.lambda_k2)
               + attn.lambda_init)
        o = (naive.softmax_map(q[:, 0::2], k[:, 0::2]) - lam * naive.softmax_map(q[:, 1::2], k[:, 1::2])) @ v
        o = merge(naive.rms_norm(o, attn.head_norm.weight, 1e-5) * (1 - attn.lambda_init))
    elif name == "tda":
        if attn.layout == "paired":
            v = heads(x @ attn.v_proj.weight.T, H // 2)
            q1, q2, k1, k2 = q[:, 0::2], q[:, 1::2], k[:, 0::2], k[:, 1::2]
        else:
            v = heads(x @ attn.v_proj.weight.T, H)
            q1, k1 = q, k
            q2 = rope(heads(x @ attn.q2_proj.weight.T, H))
            k2 = rope(heads(x @ attn.k2_proj.weight.T, H))
        lam, beta, p = attn.lam(), attn.beta(), attn.options["p"]
        lam = lam.reshape(-1, 1, 1) if lam.ndim else lam
        a = naive.threshold_map(q1, k1, beta, p) - lam * naive.threshold_map(q2, k2, beta, p)
        o = merge(naive.rms_norm(a @ v, attn.head_norm.weight, 1e-6))
    elif name == "tra":
        a = naive.threshold_map(q, k, attn.beta(), attn.options["p"])
        o = merge(naive.rms_norm(a @ heads(x @ attn.v_proj.weight.T, H), attn.head_norm.weight, 1e-6))
    elif name == "rela":
        a = naive.threshold_map(q, k, 0.0, 1.0, normalize=False, scale=1 / math.sqrt(d))
        o = merge(a @ heads(x @ attn.v_proj.weight.T, H))
        o = naive.rms_norm(o, attn.out_norm.norm.weight, 1e-5) * torch.sigmoid(attn.out_norm.gate * o)
    elif name in ("sigmoid", "softpick", "sink_softmax", "ssmax"):
        weights = {"sigmoid": lambda: naive.sigmoid_map(q, k, attn.bias),
                   "softpick": lambda: naive.softpick_map(q, k, attn.eps),
                   "sink_softmax": lambda: naive.sink_softmax_map(q, k, attn.sink),
                   "ssmax": lambda: naive.ssmax_map(q, k, attn.scale)}[name]()
        o = merge(weights @ heads(x @ attn.v_proj.weight.T, H))
    else:
        raise AssertionError(f"no naive implementation for {name}")
    return o @ attn.out_proj.weight.T


# Every registered variant with its defaults, then options that change the computation.
VARIANTS = [(name, {}) for name in ATTENTIONS] + [
    ("tda", {"layout": "extra_proj"}),
    ("tda", {"power": 1.0, "beta": 0.5, "lambda_mode": "sigmoid", "lambda_per_head": True}),
    ("tda", {"power": 3.0, "beta_learnable": True, "beta": 0.7, "lambda_mode": "reparam"}),
    ("tra", {"power": 1.0, "beta": 0.5}),
    ("softpick", {"eps": 0.5}),
]


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-300))


# (slab elements per key, sequence length): the default slab on odd lengths; blocks of a few rows
@pytest.mark.parametrize("slab,length", [(None, 1), (None, T), (None, 111), (5 * 2 * 2, 63)])
@pytest.mark.parametrize("name,options", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_matches_naive_float64(name, options, slab, length, monkeypatch):
    if slab is not None:
        monkeypatch.setattr(reference, "SLAB_ELEMENTS", slab * length)
        monkeypatch.setattr(blocked, "SLAB_ELEMENTS", slab * length)
    attn = make(name, **options)
    x = inputs(length=length)
    out = attn(x, torch.arange(length))
    ref = naive_forward(attn, x)
    assert rel_err(out, ref) < 1e-10
    probe = torch.randn_like(ref)
    params = [p for p in attn.parameters()]
    got = torch.autograd.grad((out * probe).sum(), [x] + params, allow_unused=True)
    want = torch.autograd.grad((ref * probe).sum(), [x] + params, allow_unused=True)
    # a gradient that is 0 in exact arithmetic (q's and k's with one key, whose softmax weight is 1) holds only
    # rounding residue on each side, so each error is measured against the largest gradient's norm as well
    scale = max(float(w.norm()) for w in want if w is not None)
    for (pname, _), g, w in zip([("x", None)] + list(attn.named_parameters()), got, want):
        assert (g is None) == (w is None), pname
        if w is not None:
            assert float((g - w).norm()) <= 1e-9 * float(w.norm()) + 1e-13 * scale, pname


@pytest.mark.parametrize("name", ["tda", "tra", "softpick"])
def test_sparse_inputs_have_a_real_share_of_survivors(name):
    attn = make(name)
    proj = attn.project(inputs(), torch.arange(T))
    maps = attn.maps(proj)
    causal = naive.causal_keep(T, T)
    for view in [k for k in maps if k.startswith("view")]:
        share = float((maps[view] != 0)[..., causal].double().mean())
        assert 0.05 < share < 0.95, (view, share)  # both branches of the rectifier are exercised


def test_tda_with_lambda_zero_is_tra_on_view_one():
    tda = make("tda", lambda_init=0.0)
    proj = tda.project(inputs(), torch.arange(T))
    maps = tda.maps(proj)
    tra_map = naive.threshold_map(proj.q[0], proj.k[0], 1.0, 2.0)
    assert torch.equal(maps["combined"], maps["view1"])
    assert rel_err(maps["combined"], tra_map) < 1e-12
    assert float((maps["view2"] != 0).double().mean()) > 0.05  # view 2 is active, only λ silences it


def test_rela_map_is_tra_kernel_with_beta_zero_p_one_unnormalised():
    rela = make("rela")
    proj = rela.project(inputs(), torch.arange(T))
    want = naive.threshold_map(proj.q[0], proj.k[0], 0.0, 1.0, normalize=False, scale=1 / math.sqrt(C // H))
    assert rel_err(rela.maps(proj)["combined"], want) < 1e-12


def test_tda_output_invariant_to_value_scale_up_to_eps():
    """Scaling v by 1e-3 scales TDA's raw output by 1e-3; the per-head RMSNorm (eps 1e-6) undoes it for
    every row whose scaled mean square is well above eps (an eps of 1e-5 would fail this)."""
    tda = make("tda")
    proj = tda.project(inputs(), torch.arange(T))
    from kernels import threshold_attention

    def raw_output():
        return threshold_attention(proj.q[0], proj.k[0], proj.v, proj.q[1], proj.k[1], lam=tda.lam(), beta=1.0)

    # values scaled so that the median row's raw mean square is 100, i.e. 1e-4 after the 1e-3 scaling
    proj.v = proj.v * (100.0 / raw_output().pow(2).mean(-1).median()).sqrt()
    raw = raw_output()
    scaled_ms = (raw * 1e-3).pow(2).mean(-1)  # (B, H, T)
    well_above_eps = scaled_ms > 1e-4
    assert float(well_above_eps.double().mean()) > 0.3
    out = tda.attend(proj)
    proj.v = proj.v * 1e-3
    scaled = tda.attend(proj)
    change = (scaled - out).norm(dim=-1) / out.norm(dim=-1)
    assert float(change[well_above_eps].detach().max()) < 1e-2  # at most eps / (2 * 1e-4) = 0.5%


@pytest.mark.parametrize("name,options", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_maps_times_values_reproduce_the_attention_output(name, options):
    attn = make(name, **options)
    proj = attn.project(inputs(), torch.arange(T))
    maps = attn.maps(proj, rows=(7, 30))
    assert maps["combined"].shape[-2:] == (23, 30)
    v = proj.v
    if v.shape[1] != maps["combined"].shape[1]:
        v = v.repeat_interleave(maps["combined"].shape[1] // v.shape[1], dim=1)
    assert rel_err(maps["combined"] @ v[:, :, :30], attn.mix(proj)[:, :, 7:30]) < 1e-10


def test_unknown_attention_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown attention 'nope'.*softmax"):
        build_attention(model_cfg(), attn_cfg("nope"), 0)


@pytest.mark.parametrize("name", ["tda", "differential"])
def test_paired_layout_needs_even_heads(name):
    with pytest.raises(ValueError, match="even model.n_head"):
        build_attention(model_cfg(n_embd=24, n_head=3), attn_cfg(name), 0)


def test_registry_has_every_variant():
    assert set(ATTENTIONS) >= {"softmax", "gated_softmax", "differential", "tda", "tra", "rela", "sigmoid",
                               "softpick", "sink_softmax", "ssmax"}


def test_length_dependent_scalars_start_where_spec_says():
    cfg = model_cfg(seq_len=200)
    sigmoid = build_attention(cfg, attn_cfg("sigmoid"), 0)
    assert torch.allclose(sigmoid.bias.double(), torch.full((H,), -math.log(200), dtype=torch.float64))
    ssmax = build_attention(cfg, attn_cfg("ssmax"), 0)
    assert torch.allclose(ssmax.scale.double() * math.log(200), torch.ones(H, dtype=torch.float64))
    assert torch.equal(build_attention(cfg, attn_cfg("sink_softmax"), 0).sink, torch.zeros(H))
    for name in ("sigmoid", "ssmax"):
        with pytest.raises(ValueError, match="model.seq_len >= 2"):
            build_attention(model_cfg(seq_len=1), attn_cfg(name), 0)


def test_ssmax_at_initialisation_is_softmax_at_the_training_length():
    """s_h · ln(seq_len) = 1: the row at position seq_len − 1 has softmax's weights; a row halfway, whose
    factor ln(i+1)/ln(seq_len) is below 1, does not (same projections: same seed)."""
    torch.manual_seed(0)
    ssmax = build_attention(model_cfg(seq_len=T), attn_cfg("ssmax"), 1).double()
    torch.manual_seed(0)
    softmax = build_attention(model_cfg(seq_len=T), attn_cfg("softmax"), 1).double()
    proj = softmax.project(inputs(), torch.arange(T))
    ours, theirs = ssmax.maps(proj)["combined"], softmax.maps(proj)["combined"]
    assert rel_err(ours[:, :, T - 1], theirs[:, :, T - 1]) < 1e-6
    assert rel_err(ours[:, :, T // 2], theirs[:, :, T // 2]) > 1e-3


def test_sink_softmax_with_a_vanishing_sink_is_softmax():
    """The extra sink key and channels change nothing but the denominator: with e^{s_h} = 0 the output
    and maps are softmax's (same projections: same seed)."""
    sink, softmax = make("sink_softmax"), make("softmax")
    with torch.no_grad():
        sink.sink.fill_(-1e4)
    x = inputs()
    assert rel_err(sink(x, torch.arange(T)), softmax(x, torch.arange(T))) < 1e-12
    proj = softmax.project(x, torch.arange(T))
    assert rel_err(sink.maps(proj)["combined"], softmax.maps(proj)["combined"]) < 1e-12


@pytest.mark.parametrize("head_dim", [7, 8, 60])
@pytest.mark.parametrize("queries", [63, 5, 1])  # the whole sequence; the last rows, as with a cache
def test_sdpa_with_sink_matches_the_formula(head_dim, queries):
    from kernels.sink_softmax.reference import sink_softmax_attention_reference

    gen = torch.Generator().manual_seed(head_dim)
    q, k, v = (torch.randn(2, 3, 63, head_dim, dtype=torch.float64, generator=gen) for _ in range(3))
    q = q[:, :, -queries:].clone().requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    sink = torch.randn(3, dtype=torch.float64, generator=gen).requires_grad_()
    out = sink_softmax_attention_reference(q, k, v, sink)
    ref = naive.sink_softmax_map(q, k, sink) @ v
    assert rel_err(out, ref) < 1e-12
    probe = torch.randn_like(ref)
    for g, w in zip(torch.autograd.grad((out * probe).sum(), (q, k, v, sink)),
                    torch.autograd.grad((ref * probe).sum(), (q, k, v, sink))):
        assert rel_err(g, w) < 1e-10


def test_softmax_asks_sdpa_for_cudnn_first_and_restores_the_order(monkeypatch):
    """The softmax path hands SDPA the order cuDNN, FlashAttention-2, memory-efficient, math (torch's own puts
    FlashAttention-2 first, which is slower on Hopper) for its call only: the process-wide order is left as found."""
    import model.attention.base as base
    from torch.nn.attention import SDPBackend

    before = torch._C._get_sdp_priority_order()
    seen = []
    real = base.F.scaled_dot_product_attention
    monkeypatch.setattr(base.F, "scaled_dot_product_attention",
                        lambda *a, **kw: seen.append(list(torch._C._get_sdp_priority_order())) or real(*a, **kw))
    q = torch.randn(1, 2, 5, 8)
    for n_queries in (5, 1, 3):   # the three calls: causal, one decoding query, lower-right mask
        base._sdpa(q[:, :, :n_queries], q, q)
    wanted = [int(b) for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                               SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)]
    assert len(seen) == 3 and all(order[:4] == wanted for order in seen)
    assert torch._C._get_sdp_priority_order() == before


@pytest.mark.parametrize("name,options", [("differential", {}), ("tda", {"lambda_mode": "reparam"})])
def test_lambda_is_float32_under_bf16_autocast(name, options):
    """λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init is computed in float32 even under bf16 autocast, as SPEC's scalars
    are: a matrix product of the vectors would be cast to bf16 by autocast, rounding the dots to 3 significant
    digits."""
    torch.manual_seed(0)
    cfg = OmegaConf.create(dict(n_embd=128, n_head=4, rope_base=10000.0, seq_len=64))
    attn = build_attention(cfg, OmegaConf.create({"name": name, **options}), 3)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(0.3 * torch.randn_like(p))   # vectors far enough from 0 that a bf16 rounding of their dots shows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn.lam()
    want = attn.double().lam()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)


def test_paired_tda_hands_q_and_k_whole_to_the_kernels(monkeypatch):
    """In the paired layout the module gives the kernels q and k whole (their views the projections' even and odd
    heads), so that their gradients come back whole; without them (context-parallel chunks) the views apart, with
    the same result."""
    import dataclasses

    import model.attention.threshold as threshold_module

    seen = []
    whole = threshold_module.threshold_attention_paired
    monkeypatch.setattr(threshold_module, "threshold_attention_paired",
                        lambda q, k, v, **kw: seen.append((q, k)) or whole(q, k, v, **kw))
    attn = make("tda")
    proj = attn.project(inputs(), torch.arange(T))
    out = attn.mix(proj)
    (q, k), = seen
    assert q.shape[1] == k.shape[1] == H
    for i, (qv, kv) in enumerate(zip(proj.q, proj.k)):
        assert torch.equal(q[:, i::2], qv) and torch.equal(k[:, i::2], kv)
    assert torch.equal(attn.mix(dataclasses.replace(proj, paired_qk=None)), out)
    assert len(seen) == 1
