"""A run trained on BOS-aligned windows is evaluated on inputs of the same form: validation windows and
prompts start with the end-of-text token; other runs' do not."""
from contextlib import nullcontext

import pytest
import torch

from conftest import compose_train
from evaluation.context import EvalContext
from evaluation.val_loss import loss_by_position


class Recorder(torch.nn.Module):
    """Stands in for the GPT: records its inputs, predicts uniformly."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.inputs = vocab, []

    def forward(self, x):
        self.inputs.append(x)
        return torch.zeros(*x.shape, self.vocab), None


@pytest.mark.parametrize("bos", [True, False])
def test_validation_windows_and_prompts_follow_the_training_layout(tiny_corpus, tmp_path, bos):
    run_cfg = compose_train([*tiny_corpus, f"data.bos_aligned={str(bos).lower()}"])
    ctx = EvalContext(model=Recorder(257), run_cfg=run_cfg, cfg=None, device=torch.device("cpu"),
                      autocast=nullcontext, out_dir=tmp_path)
    eot = ctx.tokenizer.eot_token
    loss_by_position(ctx, 64, batch_size=4, max_batches=2)
    first = torch.cat(ctx.model.inputs)[:, 0]
    assert first.numel() == 8
    assert (first == eot).all() if bos else not (first == eot).any()
    assert ctx.bos_prefix == ([eot] if bos else [])
