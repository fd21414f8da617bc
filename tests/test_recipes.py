"""The TDA/TRA recipe options of conf/attention/tda.yaml against float64 SPEC formulas written out here: β
warm-up (τ scaled by min(1, step/N), set through GPT.set_step, not saved, no recompile), per-head initial β
spread over a range, λ = clamp(λ_raw, 0, 1) with a straight-through gradient; each option's default is
today's computation."""
import pytest
import torch
from omegaconf import OmegaConf

from model.attention import build_attention
from model.gpt import GPT
from tests.threshold_float64 import naive_attention

C, H, T = 32, 4, 29
TDA = OmegaConf.load("conf/attention/tda.yaml")
TRA = OmegaConf.load("conf/attention/tra.yaml")
MODEL = OmegaConf.create(dict(n_layer=2, n_embd=C, n_head=H, mlp_ratio=2, norm_eps=1e-5, rope_base=10000.0,
                              rope_ntk_factor=1.0, seq_len=64, max_seq_len=128))


def module(base=TDA, **options):
    torch.manual_seed(0)
    attn = build_attention(MODEL, OmegaConf.merge(base, options), layer=0).double()
    with torch.no_grad():  # keys correlated with queries: a real share of scores survives τ
        for qn, kn in (("q_proj", "k_proj"), ("q2_proj", "k2_proj")):
            if hasattr(attn, kn):
                getattr(attn, kn).weight.copy_(getattr(attn, qn).weight + 0.05 * torch.randn(C, C))
    return attn


def projections(attn):
    torch.manual_seed(1)
    x = torch.randn(2, 1, C, dtype=torch.float64) + 0.4 * torch.randn(2, T, C, dtype=torch.float64)
    with torch.no_grad():
        return attn.project(x, torch.arange(T))


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("step,factor", [(0, 0.0), (3, 3 / 8), (8, 1.0), (50, 1.0)])
def test_beta_warmup_scales_tau_by_the_steps_taken(step, factor):
    """After ``step`` optimiser steps of an 8-step warm-up, TDA (β = 0.8) is SPEC's formula with
    β = 0.8·min(1, step/8); the same maps feed the analysis."""
    attn = module(beta=0.8, beta_warmup_steps=8)
    attn.beta.set_step(step)
    proj = projections(attn)
    beta, lam = torch.full((H // 2,), 0.8 * factor, dtype=torch.float64), torch.full((H // 2,), 0.5,
                                                                                    dtype=torch.float64)
    want = naive_attention(proj.q[0], proj.k[0], proj.v, proj.q[1], proj.k[1], lam=lam, beta=beta)
    assert rel_err(attn.mix(proj), want) < 1e-12
    maps = attn.maps(proj)
    view1 = naive_attention(proj.q[0], proj.k[0], torch.eye(T, dtype=torch.float64)[None, None].expand(2, H // 2, T, T),
                            beta=beta)
    assert rel_err(maps["view1"], view1) < 1e-12
    full = module(beta=0.8).maps(proj)["view1"]
    share = lambda w: float((w != 0).double().mean())  # noqa: E731
    assert share(maps["view1"]) > share(full) if factor < 1 else torch.equal(maps["view1"], full)


def test_beta_warmup_of_a_learnable_beta_chains_the_factor_into_its_gradient():
    """Learnable β per head with a 4-step warm-up, after one step: τ uses softplus(β_raw)/4, and β_raw's
    gradient is (1/4)·sigmoid(β_raw)·∂L/∂β_effective (float64, against the formula's own gradient)."""
    attn = module(beta_learnable=True, beta_init_range=[0.6, 1.2], beta_warmup_steps=4)
    attn.beta.set_step(1)
    proj = projections(attn)
    probe = torch.randn(2, H // 2, T, 2 * C // H, dtype=torch.float64)
    (attn.mix(proj) * probe).sum().backward()
    raw = attn.beta.raw.detach().double()
    effective = (torch.log1p(torch.exp(raw)) / 4).requires_grad_()
    want = naive_attention(proj.q[0], proj.k[0], proj.v, proj.q[1], proj.k[1],
                           lam=torch.full((H // 2,), 0.5, dtype=torch.float64), beta=effective)
    (want * probe).sum().backward()
    assert rel_err(attn.beta.raw.grad.double(), effective.grad * torch.sigmoid(raw) / 4) < 1e-9


def test_beta_warmup_is_a_buffer_outside_the_state_dict_and_off_by_default():
    """Default (beta_warmup_steps: 0): β stays the float of SPEC and set_step changes nothing. With a
    warm-up the factor is a non-persistent buffer: checkpoints hold the same keys, and a model built and
    loaded for evaluation or analysis (never told a step) runs at the full β."""
    plain, warm = module(), module(beta_warmup_steps=10)
    plain.beta.set_step(2)
    assert plain.beta() == 1.0 and isinstance(plain.beta(), float)
    assert set(plain.state_dict()) == set(warm.state_dict())
    warm.beta.set_step(2)
    assert float(warm.beta()) == pytest.approx(0.2)
    fresh = module(beta_warmup_steps=10)
    fresh.load_state_dict(warm.state_dict())
    assert float(fresh.beta()) == 1.0
    proj = projections(plain)
    assert torch.equal(fresh.mix(proj), plain.mix(proj))


def test_gpt_set_step_reaches_every_threshold_layer_and_tra():
    for base in (TDA, TRA):
        model = GPT(MODEL, OmegaConf.merge(base, {"beta": 0.5, "beta_warmup_steps": 4}), vocab_size=30)
        model.set_step(1)
        assert [float(b.attn.beta()) for b in model.blocks] == [0.125, 0.125]
        model.set_step(9)
        assert [float(b.attn.beta()) for b in model.blocks] == [0.5, 0.5]


def test_beta_warmup_needs_no_recompile():
    """The compiled block reads the factor from its buffer: stepping through the warm-up compiles once
    (torch.compile's graph capture with the eager backend, which guards like any backend)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = GPT(MODEL, OmegaConf.merge(TDA, {"beta_warmup_steps": 5}), vocab_size=30)
    for block in model.blocks:
        block.compile(backend="eager")
    idx = torch.randint(30, (2, 16), generator=torch.Generator().manual_seed(0))
    outputs = []
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        for step in (0, 2, 5, 6):
            model.set_step(step)
            outputs.append(model(idx)[0])
    torch._dynamo.reset()
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])
    assert torch.equal(outputs[2], outputs[3])      # from step 5 on: the full β


def test_beta_init_range_spreads_a_learnable_beta_over_the_heads():
    """[0.4, 1.0] over the 4 heads of TRA: 0.4, 0.6, 0.8, 1.0 (lo + (hi − lo)·h/(H − 1)); the output is SPEC's
    with those per-head β (float64)."""
    attn = module(TRA, beta_learnable=True, beta_init_range=[0.4, 1.0])
    beta = torch.tensor([0.4, 0.6, 0.8, 1.0], dtype=torch.float64)
    assert torch.allclose(attn.beta().double(), beta, atol=1e-6)  # β_raw is stored in float32
    proj = projections(attn)
    want = naive_attention(proj.q[0], proj.k[0], proj.v, beta=attn.beta().detach().double())
    assert rel_err(attn.mix(proj), want) < 1e-12
    with pytest.raises(ValueError, match="beta_init_range.*beta_learnable=true"):
        module(beta_init_range=[0.5, 1.0])
    with pytest.raises(ValueError, match=r"beta_init_range must be \[low, high\]"):
        module(beta_learnable=True, beta_init_range=[1.0, 0.5])
    with pytest.raises(ValueError, match="beta_warmup_steps must be an int >= 0"):
        module(beta_warmup_steps=-1)


@pytest.mark.parametrize("raw", [-0.3, 0.4, 1.7])
def test_lambda_clamp_st_forward_is_the_clamp_and_its_gradient_passes(raw):
    """λ = clamp(λ_raw, 0, 1) in the forward; ∂L/∂λ_raw = ∂L/∂λ everywhere, also where clamp's gradient
    is 0 (λ_raw outside [0, 1]); float64 against SPEC's formula with λ a leaf."""
    attn, plain = module(lambda_mode="clamp_st"), module()
    with torch.no_grad():
        attn.lam.raw.fill_(raw)
        plain.lam.raw.fill_(raw)
    proj = projections(attn)
    probe = torch.randn(2, H // 2, T, 2 * C // H, dtype=torch.float64)
    lam = torch.tensor([min(max(raw, 0.0), 1.0)], dtype=torch.float64, requires_grad=True)
    want = naive_attention(proj.q[0], proj.k[0], proj.v, proj.q[1], proj.k[1], lam=lam.expand(H // 2),
                           beta=torch.ones(H // 2, dtype=torch.float64))
    (want * probe).sum().backward()
    out = attn.mix(proj)
    assert rel_err(out, want) < 1e-12 and torch.equal(out, plain.mix(proj))
    (out * probe).sum().backward()
    (plain.mix(proj) * probe).sum().backward()
    assert abs(float(lam.grad)) > 1e-6
    assert float(attn.lam.raw.grad) == pytest.approx(float(lam.grad), rel=1e-9)
    assert float(plain.lam.raw.grad) == (pytest.approx(float(lam.grad), rel=1e-9) if 0 <= raw <= 1 else 0.0)
    assert attn.lam.raw_form()[1] == "clamp"   # decoding applies the same forward


def test_lambda_pushed_below_zero_returns_only_with_the_straight_through_gradient():
    """λ_raw = −0.2 and a loss asking for λ = 0.5: SGD brings clamp_st's λ back into (0, 1); clamp's
    λ_raw never moves (the dead zone of EXPERIMENT_NOTES' layer 0)."""
    for mode, moves in (("clamp_st", True), ("clamp", False)):
        attn = module(lambda_mode=mode)
        with torch.no_grad():
            attn.lam.raw.fill_(-0.2)
        optimizer = torch.optim.SGD([attn.lam.raw], lr=0.1)
        for _ in range(10):
            optimizer.zero_grad()
            ((attn.lam() - 0.5) ** 2).sum().backward()
            optimizer.step()
        assert (0 < float(attn.lam().detach()) < 1) is moves and (float(attn.lam.raw.detach()) == -0.2) is not moves
