"""The lm-evaluation-harness adapter: its log-likelihoods equal a direct computation, on a local toy task
run through the harness itself; rolling log-likelihood and generation through the adapter."""
import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness (pip install lm_eval) is not installed")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from data.tokenizer import get_tokenizer  # noqa: E402
from evaluation.harness import HarnessLM  # noqa: E402

ENC = get_tokenizer("bytes")
QUESTIONS = [
    {"question": "the sky is", "choices": ["blue", "green", "loud"], "label": 0},
    {"question": "two and two make", "choices": ["four", "five"], "label": 0},
    {"question": "the sea is", "choices": ["dry", "wet", "square", "tall"], "label": 1},
]
TASK_YAML = """task: toy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def model():
    from omegaconf import OmegaConf

    from model.gpt import GPT

    torch.manual_seed(0)
    cfg = OmegaConf.create(dict(n_layer=2, n_embd=32, n_head=4, mlp_ratio=4, norm_eps=1e-5, rope_base=10000.0,
                                rope_ntk_factor=1.0, seq_len=32, max_seq_len=64))
    return GPT(cfg, OmegaConf.create({"name": "tda", "beta": 0.4}), ENC.n_vocab).eval()


def direct(model, context: str, continuation: str) -> float:
    ctx, cont = ENC.encode_ordinary(context), ENC.encode_ordinary(continuation)
    with torch.no_grad():
        logits, _ = model(torch.tensor([ctx + cont[:-1]]))
    logp = logits[0].double().log_softmax(-1)[len(ctx) - 1:]
    return float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum())


def test_toy_task_through_the_harness_scores_with_our_log_likelihoods(model, tmp_path):
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tmp_path / "toy_choice.yaml").write_text(TASK_YAML.format(data=data))
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    out = lm_eval.simple_evaluate(model=HarnessLM(model, ENC, batch_size=4), tasks=["toy_choice"],
                                  task_manager=manager, log_samples=True, bootstrap_iters=0)
    samples = out["samples"]["toy_choice"]
    assert len(samples) == len(QUESTIONS)
    correct = 0
    for sample in samples:
        doc = sample["doc"]
        got = [resp[0][0] for resp in sample["resps"]]
        want = [direct(model, f"Q: {doc['question']}\nA:", f" {choice}") for choice in doc["choices"]]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
        correct += max(range(len(want)), key=want.__getitem__) == doc["label"]
    assert out["results"]["toy_choice"]["acc,none"] == pytest.approx(correct / len(QUESTIONS))


def request(kind: str, args: tuple) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def rolling_reference(model, tokens: list[int], window: int) -> float:
    """The harness's contract written out: the text after end-of-text is predicted in blocks of ``window``
    tokens, each token once, every block seeing the ``window`` tokens before its last prediction."""
    full = [ENC.eot_token] + tokens  # token i of the text is full[i + 1]
    total = 0.0
    for first in range(0, len(tokens), window):
        end = min(first + window, len(tokens))
        start = max(0, end - window)
        with torch.no_grad():
            logits, _ = model(torch.tensor([full[start:end]]))
        logp = logits[0].double().log_softmax(-1)
        total += sum(float(logp[i - start, full[i + 1]]) for i in range(first, end))
    return total


@pytest.mark.parametrize("window", [64, 16])
def test_rolling_log_likelihood_predicts_every_token_once_after_end_of_text(model, window):
    text = "the king walked to the sea " * (1 if window == 64 else 3)
    tokens = ENC.encode_ordinary(text)
    lm = HarnessLM(model, ENC, max_length=window)
    (got,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", (text,))])
    assert got == pytest.approx(rolling_reference(model, tokens, window), rel=1e-5)


def test_generate_until_is_greedy_and_cut_at_the_stop_string(model):
    lm = HarnessLM(model, ENC, max_length=64)
    context = "the sea "
    tokens = model.generate(torch.tensor([ENC.encode_ordinary(context)]), 10)[0, len(context):].tolist()
    full = ENC.decode(tokens, errors="replace")
    (plain,) = lm.generate_until([request("generate_until", (context, {"until": ["\u2603"], "max_gen_toks": 10}))])
    assert plain == full
    stop = full[3:5]
    (cut,) = lm.generate_until([request("generate_until", (context, {"until": [stop], "max_gen_toks": 10}))])
    assert cut == full[:full.find(stop)]
