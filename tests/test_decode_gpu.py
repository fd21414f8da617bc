"""Decoding on a GPU (run compiled: TRITON_INTERPRET=0): the one-token step captured in a CUDA graph gives exactly
the tokens of greedy decoding by full recomputation for every registered variant, the same bits as the eager step,
ragged batches decode each prompt as if alone, decoding under bf16 autocast, and the decoding kernels against
float64 at long contexts, with their page flags matching the float64 survivors."""
import pytest
import torch
from omegaconf import OmegaConf

from kernels.decode import softmax_decode, threshold_decode
from model.generate import Decoder
from model.gpt import GPT
from tests.test_eval_generate import LOW_THRESHOLD, VARIANTS, greedy_by_recomputation

pytestmark = pytest.mark.gpu
V = 97


def gpu_gpt(name: str, **attn) -> GPT:
    """Two layers of 4 heads of 16 (the decoding kernels take head dimensions from 16), long enough for several
    pages of the cache."""
    torch.manual_seed(0)
    model_cfg = OmegaConf.create(dict(n_layer=2, n_embd=64, n_head=4, mlp_ratio=4, norm_eps=1e-5, rope_base=10000.0,
                                      rope_ntk_factor=1.0, seq_len=64, max_seq_len=256))
    return GPT(model_cfg, OmegaConf.create({"name": name, **attn}), V).cuda().eval()


def decode_logits(model: GPT, prompt: torch.Tensor, steps: int, graphs: bool,
                  forced: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding through a Decoder (or, given ``forced`` (B, steps), feeding those tokens): (prompt and new
    tokens, the logits after the prompt and after each new token but the last (B, steps, V))."""
    decoder = Decoder(model, prompt.shape[0], prompt.shape[1] + steps, graphs=graphs)
    with torch.no_grad():
        logits = decoder.prefill(prompt)
        chosen, tokens = [logits.clone()], []
        for step in range(steps):
            tokens.append(logits.argmax(-1) if forced is None else forced[:, step])
            if step < steps - 1:
                logits = decoder.step(tokens[-1])
                chosen.append(logits.clone())
    assert (decoder.graph is not None) == graphs
    return torch.cat((prompt, torch.stack(tokens, dim=1)), dim=1), torch.stack(chosen, dim=1)


@pytest.mark.parametrize("name,attn", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_graph_decoding_gives_the_tokens_of_recomputing_the_prefix(name, attn):
    """fp32, a prompt of 60 tokens and 12 new ones (the cache's second page starts at 64): the graph's tokens are
    greedy recomputation's, its logits recomputation's within float tolerance and the eager step's on the same
    tokens to rounding; generate (graphs by default) gives the same tokens."""
    model = gpu_gpt(name, **attn)
    prompt = torch.randint(V, (3, 60), generator=torch.Generator().manual_seed(1)).cuda()
    out, logits = decode_logits(model, prompt, 12, graphs=True)
    _, eager_logits = decode_logits(model, prompt, 12, graphs=False, forced=out[:, 60:])
    want, want_logits = greedy_by_recomputation(model, prompt, 12)
    assert torch.equal(out, want)
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-4, atol=1e-5)  # (cuBLAS may differ in the last bits)
    assert torch.equal(model.generate(prompt, 12), want)


@pytest.mark.parametrize("name", ["softmax", "tda", "ssmax", "sigmoid"])
def test_ragged_batch_with_graphs_decodes_each_prompt_as_if_alone(name):
    model = gpu_gpt(name, **(LOW_THRESHOLD if name == "tda" else {}))
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(V, (1, n), generator=gen).cuda() for n in (70, 3, 64)]
    batch = torch.cat([torch.nn.functional.pad(p, (0, 70 - p.shape[1])) for p in prompts])
    out = model.generate(batch, 10, lengths=[70, 3, 64])
    for row, p in zip(out, prompts):
        alone = model.generate(p, 10)[0]
        assert torch.equal(row[:len(alone)], alone)


@pytest.mark.parametrize("name", ["tda", "softmax", "differential"])
def test_graphs_under_bf16_autocast_give_the_eager_tokens(name):
    """The step captured under autocast (without its weight-cast cache) computes what the eager step does on the
    same tokens, and what a bf16 recomputation of the prefix does, within bf16's rounding."""
    model = gpu_gpt(name, **(LOW_THRESHOLD if name == "tda" else {}))
    prompt = torch.randint(V, (2, 40), generator=torch.Generator().manual_seed(5)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, logits = decode_logits(model, prompt, 16, graphs=True)
        _, eager_logits = decode_logits(model, prompt, 16, graphs=False, forced=out[:, 40:])
        with torch.no_grad():
            full = model(out[:, :-1])[0][:, 39:]
    torch.testing.assert_close(logits, eager_logits, rtol=1e-2, atol=1e-2)  # a stale weight cast would be far off
    torch.testing.assert_close(logits, full, rtol=3e-2, atol=3e-2)


def _correlated(direction, B, T, g, strength, dtype):
    """strength · direction (1, heads, 1, d) plus noise of norm about 1, (B, heads, T, d) in ``dtype``."""
    noise = torch.randn(B, *direction.shape[1:2], T, direction.shape[-1], generator=g, device="cuda")
    return (strength * direction + noise / direction.shape[-1] ** 0.5).to(dtype)


@pytest.mark.parametrize("stages", [None, 1])  # the launcher's depth (3 pages in flight) and no pipelining
@pytest.mark.parametrize("views", [2, 1])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_threshold_kernel_at_long_contexts_against_float64(views, dtype, stages):
    """Paired TDA's layout (6 heads, q/k 64, v 128) or TRA's (12 of 64), 40k cache positions, rows at 40,000,
    9,000 and 31 keys; the output within the kernels' tolerance of float64 and the flags exactly the pages with a
    survivor, with the launcher's pipeline depth and with one page in flight."""
    g = torch.Generator(device="cuda").manual_seed(0)
    B, L = 3, 40_960
    H, d, dv = (6, 64, 128) if views == 2 else (12, 64, 64)
    positions = torch.tensor([39_999, 8_999, 30], device="cuda")
    directions = [torch.nn.functional.normalize(torch.randn(1, H, 1, d, generator=g, device="cuda"), dim=-1)
                  for _ in range(views)]
    qs = [_correlated(u, B, 1, g, 1.0, dtype)[:, :, 0] for u in directions]
    ks = [_correlated(u, B, L, g, 0.35, dtype) for u in directions]
    v = torch.randn(B, H, L, dv, generator=g, device="cuda").to(dtype)
    lam = torch.full((H,), 0.6, device="cuda") if views == 2 else None
    two = (qs[1], ks[1]) if views == 2 else (None, None)
    flags = torch.zeros(B, H, L // 64, dtype=torch.int8, device="cuda")
    out = threshold_decode(qs[0], ks[0], v, *two, positions=positions, lam=lam, beta=1.0, read_flags=flags,
                           stages=stages)
    ref = threshold_decode(qs[0].double(), ks[0].double(), v.double(),
                           *(t.double() if t is not None else None for t in two), positions=positions,
                           lam=lam.double() if lam is not None else None, beta=1.0)
    err = float((out.double() - ref).norm() / ref.norm())
    assert err < (1e-2 if dtype == torch.bfloat16 else 1e-4)
    # the pages with a survivor, in float64: s − τ > 0 for some visible key of some view; a page whose best key
    # sits within 1e-5 of τ may fall either way in the kernel's fp32 and is left out of the comparison
    margin = torch.full((B, H, L), float("-inf"), dtype=torch.float64, device="cuda")
    tau = (2 * torch.log1p(positions.double()) / d).sqrt()[:, None, None]
    for q, k in zip(qs, ks):
        qn = q.double() / q.double().norm(dim=-1, keepdim=True)
        kn = k.double() / k.double().norm(dim=-1, keepdim=True)
        margin = torch.maximum(margin, torch.einsum("bhd,bhld->bhl", qn, kn) - tau)
    margin = margin.masked_fill(torch.arange(L, device="cuda") > positions[:, None, None], float("-inf"))
    best = margin.view(B, H, -1, 64).amax(dim=-1)
    visited = torch.arange(L // 64, device="cuda") * 64 <= positions[:, None, None]
    want = torch.where(visited, 1 + (best > 0).to(torch.int8), torch.zeros((), dtype=torch.int8, device="cuda"))
    clear = best.abs() > 1e-5
    assert float(clear.double().mean()) > 0.99
    assert torch.equal(flags[clear], want[clear])
    assert 0.0 < float((flags == 2).sum()) / float((flags > 0).sum()) < 0.5  # pages are skipped, and not all


@pytest.mark.parametrize("stages", [None, 3])
@pytest.mark.parametrize("sink", [False, True])
def test_softmax_kernel_at_long_contexts_against_float64(sink, stages):
    g = torch.Generator(device="cuda").manual_seed(1)
    B, H, L, d = 2, 12, 33_000, 64
    positions = torch.tensor([32_999, 1_000], device="cuda")
    q = (2 * torch.randn(B, H, d, generator=g, device="cuda")).bfloat16()
    k, v = (torch.randn(B, H, L, d, generator=g, device="cuda").bfloat16() for _ in range(2))
    logits = torch.randn(H, generator=g, device="cuda") if sink else None
    out = softmax_decode(q, k, v, positions=positions, sink=logits, stages=stages)
    ref = softmax_decode(q.double(), k.double(), v.double(), positions=positions,
                         sink=logits.double() if sink else None)
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-2
